"""Checkers for the exercises on segmentation: IoU by hand, IoU summaries (predict, then check), an encoder
ready for fine-tuning, boxes from masks.

>>> from tl_helpers.checks.segmentation import check_iou_per_image
>>> from tl_helpers.segmentation import iou
>>> ok = check_iou_per_image(iou)
✅ Correct: one IoU per image, 1.0 for two empty masks, right on all 5 hand-made cases and 20 random ones.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from tl_helpers.arrays import to_numpy
from tl_helpers.checks import Exercise, _as_number, _NotYet, _checker, _type_error

_BN = nn.modules.batchnorm._BatchNorm


def _masks(rows: list[str]) -> torch.Tensor:
    """A mask from strings of '#' (foreground) and '.' (background)."""
    return torch.tensor([[c == "#" for c in row] for row in rows])


def _iou_cases() -> tuple[torch.Tensor, torch.Tensor, np.ndarray, list[str]]:
    square = _masks(["##..", "##..", "....", "...."])
    shifted = _masks([".##.", ".##.", "....", "...."])
    empty = torch.zeros(4, 4, dtype=torch.bool)
    full = torch.ones(4, 4, dtype=torch.bool)
    preds = torch.stack([square, square, empty, square, full])
    targets = torch.stack([square, shifted, empty, empty, square])
    expected = np.array([1.0, 2 / 6, 1.0, 0.0, 4 / 16])
    names = ["identical masks", "two 2x2 squares overlapping by half", "two empty masks",
             "a prediction where the truth is empty", "an all-foreground prediction"]
    return preds, targets, expected, names


def _values(out, n: int) -> np.ndarray:
    out = to_numpy(out) if isinstance(out, torch.Tensor) else out
    if isinstance(out, (int, float, np.number)) or (isinstance(out, np.ndarray) and out.size == 1 and n > 1):
        raise _NotYet(f"your function returned a single number ({float(np.asarray(out)):.3f}) for a batch of {n} "
                      "masks", "compute the intersection and the union per image: sum over the pixel "
                      "dimensions only, e.g. (p & t).flatten(1).sum(1)")
    values = np.asarray(out, dtype=float).reshape(-1)
    if values.size != n:
        raise _NotYet(f"your function returned {values.size} values for {n} masks",
                      "return one IoU per image, in the order of the batch")
    return values


@_checker("write def my_iou(pred, target) that takes two (N, H, W) boolean tensors and returns N values.")
def check_iou_per_image(fn: Callable) -> str:
    """Does ``fn(pred, target)`` return the IoU of each pair of masks, with 1.0 for two empty masks?

    >>> ok = check_iou_per_image(lambda p, t: ((p & t).sum((1, 2)) / (p | t).sum((1, 2))).float())
    ❌ Not yet: two empty masks gave nan, expected 1.0 (the prediction is perfect). Hint: where the union is 0, return 1.0, e.g. torch.where(union > 0, inter / union.clamp(min=1), 1.0).
    """
    if not callable(fn):
        raise _type_error(fn, "a function my_iou(pred, target)", "define def my_iou(pred, target): ... and pass my_iou")
    preds, targets, expected, names = _iou_cases()
    got = _values(fn(preds.clone(), targets.clone()), len(preds))
    for g, e, name in zip(got, expected, names):
        if np.isnan(g):
            raise _NotYet(f"{name} gave nan, expected {e:.1f} (the prediction is perfect)",
                          "where the union is 0, return 1.0, e.g. torch.where(union > 0, inter / union.clamp(min=1), 1.0)")
        if abs(g - e) > 1e-6:
            hint = ("IoU is |A and B| / |A or B|: count the pixels that are foreground in both, divide by those "
                    "foreground in either")
            if name.startswith("two 2x2") and abs(g - 0.5) < 1e-6:
                hint = "0.5 is the Dice coefficient here (2|A and B| / (|A| + |B|)); IoU divides by the union"
            elif name.startswith("two 2x2") and abs(g - 12 / 16) < 1e-6:
                hint = ("0.75 is the pixel accuracy, which background pixels inflate; IoU only counts "
                        "foreground pixels")
            raise _NotYet(f"for {name} your IoU is {g:.3f}, expected {e:.3f}", hint)
    g = torch.Generator().manual_seed(0)
    p, t = torch.rand(20, 8, 8, generator=g) > 0.5, torch.rand(20, 8, 8, generator=g) > 0.6
    inter, union = (p & t).sum((1, 2)).double(), (p | t).sum((1, 2)).double()
    if not np.allclose(_values(fn(p, t), 20), (inter / union).numpy(), atol=1e-6):
        raise _NotYet("the hand-made cases pass but 20 random masks do not",
                      "sum over the pixels of each image (dimensions 1 and 2), not over the batch")
    return "one IoU per image, 1.0 for two empty masks, right on all 5 hand-made cases and 20 random ones."


PREDICTIONS = ("higher", "lower", "same")


@_checker("pass your prediction and three numbers: check_iou_summaries(prediction, per_image, dataset, voc, pred, truth).")
def check_iou_summaries(prediction, per_image, dataset, voc, pred, truth) -> str:
    """Predict, then check: the VOC-style mean IoU (background and foreground, each accumulated over the data
    set) against the per-image mean IoU of the foreground. ``prediction`` is "higher", "lower" or "same" (written
    first); ``per_image``, ``dataset`` (foreground, accumulated) and ``voc`` are the learner's numbers for the
    boolean masks ``pred`` and ``truth``, checked against :func:`tl_helpers.segmentation.iou` and
    :func:`tl_helpers.segmentation.dataset_iou`.

    >>> t = torch.zeros(2, 4, 4, dtype=torch.bool); t[0, :2, :2] = True; t[1, :1, :1] = True
    >>> p = t.clone(); p[1] = False
    >>> ok = check_iou_summaries("higher", 0.5, 0.8, 0.8821, p, t)
    ✅ Correct: per-image mean IoU 50.0%, data-set IoU of the foreground 80.0%, VOC-style mean IoU 88.2%; your prediction (higher) was right. The background, easy and large, lifts the two-class mean; summing over the data set first weighs large objects more, and here they were the better predicted.
    """
    from tl_helpers.segmentation import dataset_iou, iou

    if not isinstance(prediction, str) or prediction.strip().lower() not in PREDICTIONS:
        raise _NotYet(f"prediction is {prediction!r}", "write your prediction first: prediction = \"higher\", "
                      "\"lower\" or \"same\"")
    want = {"per_image": float(iou(pred, truth).mean()), "dataset": dataset_iou(pred, truth),
            "voc": dataset_iou(pred, truth, include_background=True)}
    got = {}
    for name, value in (("per_image", per_image), ("dataset", dataset), ("voc", voc)):
        got[name] = _as_number(value, f"{name}, a number", "compute it as a float, e.g. float(...)")
    hints = {"per_image": "one IoU per image (intersection / union of its pixels), then their mean",
             "dataset": "sum the intersections of all images and their unions, then divide once",
             "voc": "the data-set IoU of the foreground and that of the background (~pred & ~truth over "
                    "~pred | ~truth), then their mean"}
    for name in ("per_image", "dataset", "voc"):
        if abs(got[name] - want[name]) > 1e-4:
            mixed = [k for k in want if k != name and abs(got[name] - want[k]) <= 1e-4]
            extra = f" (that is the {mixed[0].replace('_', '-')} number)" if mixed else ""
            raise _NotYet(f"{name} = {got[name]:.4f}, expected {want[name]:.4f}{extra}", hints[name])
    difference = want["voc"] - want["per_image"]
    truth_word = "same" if abs(difference) < 0.01 else "higher" if difference > 0 else "lower"
    verdict = (f"your prediction ({prediction.strip().lower()}) was right" if prediction.strip().lower() == truth_word
               else f"you predicted {prediction.strip().lower()}; it came out {truth_word}")
    gap = want["dataset"] - want["per_image"]
    sizes = ("summing over the data set first weighs large objects more; here that changed little (the two foreground "
             "numbers are within a point)" if abs(gap) < 0.01 else
             "summing over the data set first weighs large objects more, and here they were "
             f"{'the better' if gap > 0 else 'the worse'} predicted")
    return (f"per-image mean IoU {want['per_image']:.1%}, data-set IoU of the foreground {want['dataset']:.1%}, "
            f"VOC-style mean IoU {want['voc']:.1%}; {verdict}. The background, easy and large, lifts the two-class "
            f"mean; {sizes}.")


@_checker("pass the segmenter and its optimizer: check_finetune_setup(net, optimizer).")
def check_finetune_setup(net: nn.Module, optimizer, encoder_lr: float = 3e-4, decoder_lr: float = 1e-3) -> str:
    """Is ``net`` (a Segmenter) ready to fine-tune: every parameter trainable, the *encoder's* BatchNorm
    kept in eval mode by :func:`tl_helpers.surgery.train_mode`, the decoder's BatchNorm learning, and
    ``optimizer`` training the encoder at ``encoder_lr`` and the decoder at ``decoder_lr``?

    >>> from tl_helpers.models import load_pretrained
    >>> from tl_helpers.segmentation import LiteEncoder, Segmenter, SkipDecoder
    >>> from tl_helpers.surgery import set_bn_eval
    >>> class Tail(nn.Module):
    ...     def __init__(self, encoder):
    ...         super().__init__()
    ...         self.encoder = encoder
    ...     def forward(self, x):
    ...         return self.encoder(x)[1:]
    >>> net = Segmenter(Tail(LiteEncoder(load_pretrained().model)), SkipDecoder([24, 40, 112, 320], (16, 24, 32), scale=4))
    >>> opt = torch.optim.AdamW([{"params": net.encoder.parameters(), "lr": 3e-4},
    ...                          {"params": net.decoder.parameters(), "lr": 1e-3}])
    >>> ok = check_finetune_setup(set_bn_eval(net.encoder) and net, opt)
    ✅ Correct: all 3,033,217 parameters train, the encoder at 0.0003 and the decoder at 0.001; train_mode(net) keeps the encoder's 48 BatchNorm layers in eval mode and lets the decoder's 3 learn.
    """
    from tl_helpers.surgery import train_mode

    if not isinstance(net, nn.Module) or not hasattr(net, "encoder") or not hasattr(net, "decoder"):
        raise _type_error(net, "the Segmenter (with .encoder and .decoder)", "pass net, the Segmenter you built")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise _type_error(optimizer, "a torch optimizer", "build it with torch.optim.AdamW([...groups...])")
    from tl_helpers.models import load_pretrained

    stem = next((m for m in net.encoder.modules() if isinstance(m, nn.Conv2d)), None)
    imagenet = load_pretrained("efficientnet_lite0").model._conv_stem.weight
    if stem is None or stem.weight.shape != imagenet.shape or not torch.allclose(stem.weight, imagenet):
        raise _NotYet("the encoder's first convolution does not hold EfficientNet-Lite0's ImageNet weights",
                      "build the encoder from a fresh pretrained model: LiteEncoder(load_pretrained(\"efficientnet_lite0\").model)")
    frozen = [n for n, p in net.named_parameters() if not p.requires_grad]
    if frozen:
        raise _NotYet(f"{len(frozen)} parameter tensors are frozen (e.g. {frozen[0]})",
                      "fine-tuning trains every layer: set requires_grad=True on all of net's parameters")
    train_mode(net)
    enc_bn = [m for m in net.encoder.modules() if isinstance(m, _BN)]
    dec_bn = [m for m in net.decoder.modules() if isinstance(m, _BN)]
    training = sum(m.training for m in enc_bn)
    net.eval()
    if training:
        raise _NotYet(f"after train_mode(net), {training} of the encoder's {len(enc_bn)} BatchNorm layers are in "
                      "training mode: each batch of 8 would be normalised with its own statistics, and the running "
                      "statistics would drift from ImageNet's (slowly: Lite0's momentum is 0.01)",
                      "call set_bn_eval(net.encoder): it puts them in eval mode and marks them so train_mode keeps them there")
    train_mode(net)
    learning = sum(m.training for m in dec_bn)
    net.eval()
    if dec_bn and learning < len(dec_bn):
        raise _NotYet("the decoder's BatchNorm layers stay in eval mode too, so they never learn their statistics",
                      "only the pretrained encoder's BatchNorm has statistics worth keeping: call set_bn_eval(net.encoder), "
                      "not set_bn_eval(net)")
    with torch.no_grad():
        try:
            out = net(torch.zeros(2, 3, 64, 64))
        except Exception as exc:  # noqa: BLE001 - any error of the learner's model is feedback
            raise _NotYet(f"a forward pass of 2 images of 64 x 64 failed ({type(exc).__name__}: {exc})",
                          "the decoder takes the maps at strides 4 to 32 (Tail drops the stride-2 map): "
                          "SkipDecoder(encoder.channels[1:], DECODER_WIDTHS, scale=4)") from None
    if tuple(out.shape) != (2, 1, 64, 64):
        raise _NotYet(f"2 images of 64 x 64 gave logits of shape {tuple(out.shape)}, not (2, 1, 64, 64)",
                      "one logit per pixel: widths for the 4 maps at strides 4 to 32 and scale=4")
    lr_of = {}
    for group in optimizer.param_groups:
        lr = float(group.get("max_lr", group.get("initial_lr", group["lr"])))
        for p in group["params"]:
            lr_of[id(p)] = lr
    for part, module, want in (("encoder", net.encoder, encoder_lr), ("decoder", net.decoder, decoder_lr)):
        params = list(module.parameters())
        missing = sum(id(p) not in lr_of for p in params)
        if missing:
            raise _NotYet(f"{missing} of the {part}'s {len(params)} parameter tensors are not in the optimizer",
                          f"give the optimizer one group with net.{part}.parameters()")
        wrong = {lr_of[id(p)] for p in params} - {want}
        if wrong:
            raise _NotYet(f"the {part} trains at {sorted(wrong)[0]:g}, expected {want:g}",
                          "the pretrained encoder moves slower than the new decoder: one group each, "
                          f"encoder lr {encoder_lr:g}, decoder lr {decoder_lr:g}")
    n = sum(p.numel() for p in net.parameters())
    return (f"all {n:,} parameters train, the encoder at {encoder_lr:g} and the decoder at {decoder_lr:g}; "
            f"train_mode(net) keeps the encoder's {len(enc_bn)} BatchNorm layers in eval mode and lets the "
            f"decoder's {len(dec_bn)} learn.")


def _box_cases() -> list[tuple[np.ndarray, tuple[int, int, int, int] | None, str]]:
    wide = np.zeros((6, 8), dtype=bool)
    wide[1:3, 2:7] = True                       # rows 1-2, columns 2-6
    two = np.zeros((6, 8), dtype=bool)
    two[0, 0] = True
    two[4:6, 5:7] = True
    corner = np.zeros((6, 8), dtype=bool)
    corner[5, 7] = True
    return [(wide, (2, 1, 7, 3), "a 5-wide, 2-high rectangle"),
            (two, (0, 0, 7, 6), "two separate blobs (one box around both)"),
            (corner, (7, 5, 8, 6), "a single pixel in the bottom-right corner"),
            (np.zeros((6, 8), dtype=bool), None, "an empty mask")]


def _check_box_cases(fn: Callable) -> None:
    """Raise _NotYet unless ``fn`` gets the hand-made masks' boxes right."""
    if not callable(fn):
        raise _type_error(fn, "a function mask_to_box(mask)", "define def mask_to_box(mask): ... and pass mask_to_box")
    for mask, expected, name in _box_cases():
        try:
            got = fn(mask.copy())
        except (ValueError, IndexError) as exc:
            if expected is None:
                raise _NotYet(f"an empty mask raised {type(exc).__name__} ({exc})",
                              "check whether the mask has any foreground first and return None if not") from None
            raise
        if expected is None:
            if got is not None:
                raise _NotYet(f"for an empty mask you returned {got!r}", "there is no object: return None")
            continue
        if got is None or len(tuple(got)) != 4:
            raise _NotYet(f"for {name} you returned {got!r}", "return a tuple of four numbers (x0, y0, x1, y1)")
        got = tuple(int(v) for v in got)
        x0, y0, x1, y1 = expected
        if got == (y0, x0, y1, x1):
            raise _NotYet(f"for {name} you returned {got}, rows and columns swapped",
                          "x counts columns (the second index of mask[y, x]), y counts rows")
        if got == (x0, y0, x1 - 1, y1 - 1):
            raise _NotYet(f"for {name} you returned {got}: the last pixel's coordinates",
                          "make x1 and y1 exclusive (one past the last pixel), so mask[y0:y1, x0:x1] holds the object "
                          "and the width is x1 - x0")
        if got != expected:
            raise _NotYet(f"for {name} you returned {got}, expected {expected}",
                          "x0, y0 are the smallest column and row with foreground, x1, y1 one past the largest")


@_checker("write def mask_to_box(mask) that takes an (H, W) boolean array and returns (x0, y0, x1, y1) or None.")
def check_mask_to_box(fn: Callable) -> str:
    """Does ``fn(mask)`` return the box (x0, y0, x1, y1) around the foreground, x1 and y1 exclusive
    (as ``PIL.Image.getbbox`` and slicing ``mask[y0:y1, x0:x1]``), and ``None`` for an empty mask?

    >>> def mask_to_box(mask):
    ...     ys, xs = np.nonzero(mask)
    ...     return None if len(xs) == 0 else (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    >>> ok = check_mask_to_box(mask_to_box)
    ✅ Correct: boxes (x0, y0, x1, y1) with exclusive ends, one box around several blobs, None for an empty mask.
    """
    _check_box_cases(fn)
    return "boxes (x0, y0, x1, y1) with exclusive ends, one box around several blobs, None for an empty mask."


@_checker("pass your function and your numbers: check_boxes(mask_to_box, box_ious, pred, truth).")
def check_boxes(mask_to_box: Callable, box_ious, pred, truth) -> str:
    """Does ``mask_to_box`` pass :func:`check_mask_to_box`'s cases, and are ``box_ious`` the box IoUs (one per
    image) between the boxes of the masks ``pred`` and ``truth`` (N, H, W)? Prints both means, box and mask.

    >>> from tl_helpers.segmentation import box_iou, mask_to_box
    >>> t = torch.zeros(2, 4, 4, dtype=torch.bool); t[:, 1:3, 1:3] = True; p = t.clone(); p[0, 1, 1] = False
    >>> ok = check_boxes(mask_to_box, [box_iou(mask_to_box(a), mask_to_box(b)) for a, b in zip(p, t)], p, t)
    ✅ Correct: boxes right on 4 hand-made masks, and your 2 box IoUs match: mean box IoU 100.0% against mean mask IoU 87.5%. A box forgives every error inside it (holes, ragged edges): it only measures where the object is and how big.
    """
    from tl_helpers.segmentation import box_iou, iou
    from tl_helpers.segmentation import mask_to_box as reference

    _check_box_cases(mask_to_box)
    p, t = to_numpy(torch.as_tensor(pred)).astype(bool), to_numpy(torch.as_tensor(truth)).astype(bool)
    want = np.array([box_iou(reference(a), reference(b)) for a, b in zip(p, t)])
    if isinstance(box_ious, (int, float, np.number)) or np.asarray(box_ious).size == 1 and len(want) > 1:
        raise _NotYet("box_ious is a single number", "give one box IoU per image, e.g. a list over zip(pred, truth)")
    got = np.asarray(box_ious, dtype=float).reshape(-1)
    if got.size != want.size:
        raise _NotYet(f"{got.size} box IoUs for {want.size} images", "one box IoU per image")
    if not np.allclose(got, want, atol=1e-6):
        k = int(np.argmax(np.abs(got - want)))
        raise _NotYet(f"image {k}: box IoU {got[k]:.3f}, expected {want[k]:.3f}",
                      "intersection: the overlap rectangle (max of the x0s to min of the x1s, likewise y); union: the "
                      "two areas minus the intersection; a missing prediction (empty mask) scores 0")
    mask = float(iou(torch.as_tensor(p), torch.as_tensor(t)).mean())
    return (f"boxes right on 4 hand-made masks, and your {len(got)} box IoUs match: mean box IoU {got.mean():.1%} "
            f"against mean mask IoU {mask:.1%}. A box forgives every error inside it (holes, ragged edges): it "
            "only measures where the object is and how big.")


EXERCISES: dict[str, Exercise] = {
    "11.1": Exercise("IoU per image, empty masks included", "11", check_iou_per_image),
    "11.2": Exercise("Predict, then check: per-image, data-set and VOC-style IoU", "11", check_iou_summaries),
    "11.3": Exercise("A segmenter ready to fine-tune: the encoder's BatchNorm in eval mode", "11", check_finetune_setup),
    "11.4": Exercise("From masks to boxes: box IoU against mask IoU", "11", check_boxes),
}
