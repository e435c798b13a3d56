"""tl_helpers.segmentation: encoder maps, decoder shapes, Dice/IoU on hand-made masks, deterministic data;
and the chapter's checkers (reference answers pass, typical wrong answers fail with their own hint)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from torch import nn

from tl_helpers.checks import segmentation as seg_checks
from tl_helpers.models import load_pretrained
from tl_helpers.segmentation import (PHOTOS, CompositeDataset, LiteEncoder, Segmenter, SkipDecoder,
                                     box_iou, calibrate_batchnorm, cutouts_root, dataset_iou, dice,
                                     downsampling_ends, encode, iou, load_cutouts, make_composites, mask_to_box,
                                     soft_dice_loss, t_interval)
from tl_helpers.surgery import set_bn_eval


@pytest.fixture(scope="module")
def lite0():
    return load_pretrained("efficientnet_lite0").model


# --- encoder -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [96, 128])
def test_encoder_maps_have_lite0_channels_at_strides_2_to_32(lite0, size):
    maps = LiteEncoder(lite0).eval()(torch.zeros(2, 3, size, size))
    assert [m.shape[1] for m in maps] == [16, 24, 40, 112, 320]
    assert [m.shape[2] for m in maps] == [size // s for s in (2, 4, 8, 16, 32)]
    assert all(m.shape[0] == 2 and m.shape[2] == m.shape[3] for m in maps)


def test_encoder_keeps_the_map_before_each_downsampling(lite0):
    assert downsampling_ends(lite0) == [0, 2, 4, 10, 15]
    enc = LiteEncoder(lite0).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        h = lite0._swish(lite0._bn0(lite0._conv_stem(x)))
        for block in lite0._blocks:
            h = block(h)
        assert torch.allclose(enc(x)[-1], h, atol=1e-5)       # the last map is the classifier's last block


def test_encoder_shares_the_models_weights(lite0):
    enc = LiteEncoder(lite0)
    model_params = {id(p) for p in lite0.parameters()}
    assert all(id(p) in model_params for p in enc.parameters())
    assert enc.channels == [16, 24, 40, 112, 320]


def test_encoder_rejects_other_models():
    with pytest.raises(ValueError, match="EfficientNet-Lite"):
        LiteEncoder(nn.Linear(2, 2))


def test_calibrate_batchnorm_changes_statistics_not_weights():
    torch.manual_seed(0)
    enc = LiteEncoder(load_pretrained(weights=False).model)
    weights = {k: v.clone() for k, v in enc.state_dict().items() if "running" not in k and "num_batches" not in k}
    calibrate_batchnorm(enc, torch.randn(8, 3, 64, 64), batch_size=4)
    assert not enc.training
    assert all(torch.equal(v, enc.state_dict()[k]) for k, v in weights.items())
    bn = enc.stem[1]
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
    with torch.no_grad():
        deepest = enc(torch.randn(4, 3, 64, 64))[-1]
    assert 0.05 < float(deepest.std()) < 50       # neither vanished nor exploded


def test_calibrate_batchnorm_runs_without_drop_connect():
    """Drop-connect (random) is off while calibrating: two calibrations under other random seeds agree."""
    images = torch.randn(8, 3, 64, 64)
    stats = []
    for seed in (1, 2):
        torch.manual_seed(0)
        enc = LiteEncoder(load_pretrained(weights=False).model)
        torch.manual_seed(seed)
        calibrate_batchnorm(enc, images, batch_size=4)
        stats.append(torch.cat([m.running_var for m in enc.modules() if isinstance(m, nn.BatchNorm2d)]))
    assert torch.equal(stats[0], stats[1])


# --- decoder -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [96, 128])
def test_decoder_outputs_one_logit_per_pixel(lite0, size):
    maps = LiteEncoder(lite0).eval()(torch.zeros(2, 3, size, size))
    assert SkipDecoder()(maps).shape == (2, 1, size, size)
    assert SkipDecoder([24, 40, 112, 320], (16, 24, 32), scale=4)(maps[1:]).shape == (2, 1, size, size)
    assert SkipDecoder(out_channels=3)(maps).shape == (2, 3, size, size)


def test_decoder_widths_must_match_maps():
    with pytest.raises(ValueError, match="widths"):
        SkipDecoder([24, 40, 112, 320], (16, 24))


def test_segmenter_trains_end_to_end(lite0):
    net = Segmenter(LiteEncoder(load_pretrained(weights=False).model), SkipDecoder())
    loss = soft_dice_loss(net(torch.randn(2, 3, 64, 64)), torch.ones(2, 1, 64, 64))
    loss.backward()
    assert net.encoder.stem[0].weight.grad is not None and net.decoder.head.weight.grad is not None


def test_encode_matches_one_big_batch(lite0):
    enc = LiteEncoder(lite0)
    x = torch.randn(5, 3, 64, 64)
    small = encode(enc, x, batch_size=2)
    with torch.no_grad():
        big = enc.eval()(x)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-4) for a, b in zip(small, big))


# --- metrics -----------------------------------------------------------------------------------------

def masks(*rows_list):
    return torch.stack([torch.tensor([[c == "#" for c in row] for row in rows]) for rows in rows_list])


def test_iou_and_dice_on_hand_made_masks():
    a = masks(["##..", "##..", "....", "...."])
    b = masks([".##.", ".##.", "....", "...."])
    assert torch.allclose(iou(a, b), torch.tensor([2 / 6]))           # 2 shared pixels, 6 in the union
    assert torch.allclose(dice(a, b), torch.tensor([2 * 2 / 8]))      # 2|A and B| / (|A| + |B|)
    assert iou(a, a).item() == 1.0 and dice(a, a).item() == 1.0
    c = masks(["....", "....", "..##", "..##"])
    assert iou(a, c).item() == 0.0 and dice(a, c).item() == 0.0


def test_empty_masks_score_one_and_missing_objects_zero():
    empty = torch.zeros(1, 4, 4, dtype=torch.bool)
    some = masks(["#...", "....", "....", "...."])
    assert iou(empty, empty).item() == 1.0 and dice(empty, empty).item() == 1.0
    assert iou(empty, some).item() == 0.0 and iou(some, empty).item() == 0.0


def test_metrics_are_per_image_and_accept_numpy():
    a = masks(["##", ".."], ["##", "##"])
    b = masks(["#.", ".."], ["##", "##"])
    assert iou(a, b).tolist() == [0.5, 1.0]
    assert torch.allclose(dice(a.numpy(), b.numpy()), torch.tensor([2 / 3, 1.0]))
    d, i = dice(a, b), iou(a, b)
    assert torch.allclose(d, 2 * i / (1 + i))
    with pytest.raises(ValueError, match="shapes"):
        iou(a, b[:, :1])


def test_t_interval():
    mean, low, high = t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and low < 2.0 < high
    assert high - mean == pytest.approx(4.303 * 1 / np.sqrt(3), rel=1e-3)   # t(0.975, df=2) = 4.303
    with pytest.raises(ValueError, match="two"):
        t_interval([1.0])


# --- data --------------------------------------------------------------------------------------------

def test_dataset_is_deterministic_by_seed():
    a_img, a_mask = make_composites(6, "train", 48, seed=3)
    b_img, b_mask = make_composites(6, "train", 48, seed=3)
    c_img, _ = make_composites(6, "train", 48, seed=4)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_mask, b_mask)
    assert not np.array_equal(a_img, c_img)
    first, _ = make_composites(3, "train", 48, seed=3)
    assert np.array_equal(first, a_img[:3])


def test_dataset_items_and_masks():
    data = CompositeDataset(8, "val", size=64, seed=0)
    x, y = data[0]
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32 and y.shape == (1, 64, 64)
    assert set(torch.unique(data.y).tolist()) <= {0.0, 1.0}
    fg = data.masks.reshape(8, -1).mean(1)
    assert (fg > 0.01).all() and (fg < 0.9).all()
    assert -1.0 - 1e-6 <= float(data.x.min()) and float(data.x.max()) <= 1.0 + 1e-6


def test_splits_share_no_cutout_group_and_no_photo():
    with open(cutouts_root() / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    split_of_group: dict[str, set] = {}
    for r in rows:
        split_of_group.setdefault(r["group"], set()).add(r["split"])
    assert all(len(s) == 1 for s in split_of_group.values())
    assert {len(load_cutouts(s)) for s in ("train", "val", "test")} and len(load_cutouts("train")) > 50
    assert not (set(PHOTOS["train"]) & set(PHOTOS["val"])) and not (set(PHOTOS["train"]) & set(PHOTOS["test"]))
    assert not (set(PHOTOS["val"]) & set(PHOTOS["test"]))
    with pytest.raises(ValueError, match="split"):
        load_cutouts("training")


# --- checkers ----------------------------------------------------------------------------------------

def run(checker, *args, capsys):
    ok = checker(*args)
    return ok, capsys.readouterr().out


def test_check_iou_reference_and_wrong_answers(capsys):
    assert run(seg_checks.check_iou_per_image, iou, capsys=capsys)[0]
    def whole_batch(p, t):
        return (p & t).sum() / (p | t).sum()
    def no_empty_case(p, t):
        return (p & t).sum((1, 2)) / (p | t).sum((1, 2))
    def dice_instead(p, t):
        return dice(p, t)
    def pixel_accuracy(p, t):
        return torch.where((p | t).flatten(1).any(1), (p == t).flatten(1).float().mean(1), 1.0)
    for wrong, hint in ((whole_batch, "per image"), (no_empty_case, "union is 0"),
                        (dice_instead, "Dice coefficient"), (pixel_accuracy, "pixel accuracy"),
                        ("iou", "define def my_iou")):
        ok, out = run(seg_checks.check_iou_per_image, wrong, capsys=capsys)
        assert not ok and hint in out, out


class Tail(nn.Module):
    """The encoder without its stride-2 map (as in chapter 11)."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, x):
        return self.encoder(x)[1:]


def finetune_net(weights: bool = True, scale: int = 4):
    torch.manual_seed(0)
    return Segmenter(Tail(LiteEncoder(load_pretrained(weights=weights).model)),
                     SkipDecoder([24, 40, 112, 320], (16, 24, 32), scale=scale))


def optimizer_for(net, enc_lr=3e-4, dec_lr=1e-3, skip_decoder=False):
    groups = [{"params": net.encoder.parameters(), "lr": enc_lr}]
    if not skip_decoder:
        groups.append({"params": net.decoder.parameters(), "lr": dec_lr})
    return torch.optim.AdamW(groups)


def test_check_finetune_setup_reference_and_wrong_answers(capsys):
    net = finetune_net()
    set_bn_eval(net.encoder)
    assert run(seg_checks.check_finetune_setup, net, optimizer_for(net), capsys=capsys)[0]
    cases = []
    bn_train = finetune_net()
    cases.append((bn_train, optimizer_for(bn_train), "set_bn_eval(net.encoder)"))
    all_eval = set_bn_eval(finetune_net())
    cases.append((all_eval, optimizer_for(all_eval), "not set_bn_eval(net)"))
    swapped = set_bn_eval(finetune_net().encoder) and None
    swapped_net = finetune_net()
    set_bn_eval(swapped_net.encoder)
    cases.append((swapped_net, optimizer_for(swapped_net, 1e-3, 3e-4), "moves slower"))
    missing = finetune_net()
    set_bn_eval(missing.encoder)
    cases.append((missing, optimizer_for(missing, skip_decoder=True), "not in the optimizer"))
    frozen = finetune_net()
    set_bn_eval(frozen.encoder)
    for p in frozen.encoder.parameters():
        p.requires_grad_(False)
    cases.append((frozen, optimizer_for(frozen), "requires_grad=True"))
    random = finetune_net(weights=False)
    set_bn_eval(random.encoder)
    cases.append((random, optimizer_for(random), "ImageNet weights"))
    wrong_scale = finetune_net(scale=2)
    set_bn_eval(wrong_scale.encoder)
    cases.append((wrong_scale, optimizer_for(wrong_scale), "one logit per pixel"))
    assert swapped is None
    for net, opt, hint in cases:
        ok, out = run(seg_checks.check_finetune_setup, net, opt, capsys=capsys)
        assert not ok and hint in out, out


def test_check_mask_to_box_reference_and_wrong_answers(capsys):
    def reference(mask):
        ys, xs = np.nonzero(mask)
        return None if len(xs) == 0 else (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    assert run(seg_checks.check_mask_to_box, reference, capsys=capsys)[0]
    def swapped(mask):
        box = reference(mask)
        return None if box is None else (box[1], box[0], box[3], box[2])
    def inclusive(mask):
        box = reference(mask)
        return None if box is None else (box[0], box[1], box[2] - 1, box[3] - 1)
    def crashes(mask):
        ys, xs = np.nonzero(mask)
        return (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    def zero_box(mask):
        return reference(mask) or (0, 0, 0, 0)
    for wrong, hint in ((swapped, "rows and columns swapped"), (inclusive, "exclusive"),
                        (crashes, "return None if not"), (zero_box, "return None"), (42, "define def mask_to_box")):
        ok, out = run(seg_checks.check_mask_to_box, wrong, capsys=capsys)
        assert not ok and hint in out, out


def test_check_iou_summaries_reference_and_wrong_answers(capsys):
    torch.manual_seed(0)
    truth = torch.rand(6, 8, 8) > 0.7
    pred = truth ^ (torch.rand(6, 8, 8) > 0.85)
    pred[0] = False                                  # one missed object
    per_image = iou(pred, truth).mean().item()
    dataset, voc = dataset_iou(pred, truth), dataset_iou(pred, truth, include_background=True)
    ok, out = run(seg_checks.check_iou_summaries, "higher", per_image, dataset, voc, pred, truth, capsys=capsys)
    assert ok and "your prediction (higher) was right" in out, out
    ok, out = run(seg_checks.check_iou_summaries, "lower", per_image, dataset, voc, pred, truth, capsys=capsys)
    assert ok and "you predicted lower; it came out higher" in out, out
    for args, hint in ((("maybe", per_image, dataset, voc), "write your prediction first"),
                       (("same", dataset, dataset, voc), "that is the dataset number"),
                       (("same", per_image, dataset, dataset), "the data-set IoU of the foreground and that of the"),
                       (("same", per_image, "0.5", voc), "a number")):
        ok, out = run(seg_checks.check_iou_summaries, *args, pred, truth, capsys=capsys)
        assert not ok and hint in out, out


def test_dataset_iou_and_dice_ranking_of_means():
    a, b = torch.tensor([0.5, 0.5]), torch.tensor([1.0, 0.05])
    dice_of = lambda v: 2 * v / (1 + v)  # noqa: E731
    assert a.mean() < b.mean() and dice_of(a).mean() > dice_of(b).mean(), "the means rank differently"
    big = torch.zeros(2, 10, 10, dtype=torch.bool); big[0] = True; big[1, 0, 0] = True
    found = big.clone(); found[1] = False            # the large object found, the one-pixel object missed
    assert iou(found, big).mean().item() == 0.5 and dataset_iou(found, big) == 100 / 101


def test_check_boxes_reference_and_wrong_answers(capsys):
    torch.manual_seed(0)
    truth = torch.zeros(3, 8, 8, dtype=torch.bool); truth[:, 2:6, 1:5] = True
    pred = truth.clone(); pred[0, 2, 1] = False; pred[1] = False; pred[2, 0, 7] = True
    right = [box_iou(mask_to_box(p), mask_to_box(t)) for p, t in zip(pred, truth)]
    ok, out = run(seg_checks.check_boxes, mask_to_box, right, pred, truth, capsys=capsys)
    assert ok and "mean box IoU" in out, out
    wrong = [box_iou(mask_to_box(p), mask_to_box(t)) if p.any() else 1.0 for p, t in zip(pred, truth)]
    for fn, ious, hint in ((mask_to_box, wrong, "image 1"), (mask_to_box, sum(right), "one box IoU per image"),
                           (mask_to_box, right[:2], "2 box IoUs for 3 images"),
                           (lambda m: (0, 0, 0, 0), right, "x0, y0 are the smallest column")):
        ok, out = run(seg_checks.check_boxes, fn, ious, pred, truth, capsys=capsys)
        assert not ok and hint in out, out


def test_exercise_ids():
    assert list(seg_checks.EXERCISES) == ["11.1", "11.2", "11.3", "11.4"]
    assert all(e.chapter == "11" for e in seg_checks.EXERCISES.values())
