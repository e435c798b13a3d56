"""Export to TorchScript and ONNX, checked against PyTorch; the ONNX runner without PyTorch (tl_helpers.export)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tl_helpers.data import eval_transform
from tl_helpers.export import (OnnxClassifier, compare_with_pytorch, export, export_onnx, export_torchscript,
                               load_torchscript, onnx_preprocess, run_without_torch)
from tl_helpers.finetuned import FineTuned
from tl_helpers.imagefolder import DataError, write_example_folder
from tl_helpers.models import load_pretrained
from tl_helpers.surgery import replace_head


@pytest.fixture(scope="module")
def model_and_images(tmp_path_factory):
    """A Lite0 with ImageNet weights and a random 3-class head (export does not care how it was trained)."""
    torch.manual_seed(0)
    net = replace_head(load_pretrained().model, 3).eval()
    ft = FineTuned(net, ["birds", "fruit", "vehicles"], "efficientnet_lite0", 64, (0.5,) * 3, (0.5,) * 3)
    root = tmp_path_factory.mktemp("export")
    _, new = write_example_folder(root / "photos", classes=("birds", "fruit", "vehicles"), per_class=3,
                                  tiny_class=None, new_per_class=2)
    return ft, new, root


def test_numpy_preprocessing_matches_torchvision_exactly():
    from skimage import data

    for img in (Image.fromarray(data.coffee()), Image.fromarray(data.chelsea()), Image.new("RGB", (50, 90), "red")):
        ours = onnx_preprocess(img, 64, (0.5,) * 3, (0.5,) * 3)
        ref = eval_transform(64)(img).numpy()
        assert ours.shape == ref.shape == (3, 64, 64) and ours.dtype == np.float32
        assert np.abs(ours - ref).max() <= 1e-6  # both resize with Pillow: the same pixels


def test_onnx_export_matches_pytorch_and_carries_its_description(model_and_images):
    ft, new, root = model_and_images
    path = export_onnx(ft, root / "model.onnx")
    assert not (root / "model.onnx.data").exists()  # one self-contained file
    clf = OnnxClassifier(path)
    assert clf.classes == ft.classes and clf.description["image_size"] == 64
    result = compare_with_pytorch(ft, path, new)
    assert result["n"] == len(new) and result["max_prob_diff"] < 1e-4 and result["same_top1"] == 1.0
    assert result["max_prob_diff_own_preprocessing"] < 0.05
    batch = np.stack([onnx_preprocess(Image.open(p), 64, (0.5,) * 3, (0.5,) * 3) for p in new[:5]])
    assert clf.probabilities(batch).shape == (5, 3)  # any batch size: the batch axis is dynamic
    preds = clf.predict(new, top_k=2)
    assert [p.label for p in preds] == [p.label for p in ft.predict(new)]


def test_onnx_runs_in_a_process_where_torch_cannot_be_imported(model_and_images):
    ft, new, root = model_and_images
    path = root / "model.onnx"
    if not path.exists():
        export_onnx(ft, path)
    bad = root / "bad.jpg"
    bad.write_text("<html>")
    out = run_without_torch(path, [*new[:2], bad], top_k=2)
    assert out["torch_modules"] == [] and out["classes"] == ft.classes
    labels = [p["label"] for p in out["predictions"]]
    assert labels[:2] == [p.label for p in ft.predict(new[:2])] and labels[2] is None
    assert "text" in out["predictions"][2]["error"]


def test_torchscript_export_matches_pytorch_and_keeps_the_classes(model_and_images):
    ft, new, root = model_and_images
    path = export_torchscript(ft, root / "model.torchscript.pt")
    module, description = load_torchscript(path)
    assert description["classes"] == ft.classes and description["mean"] == [0.5, 0.5, 0.5]
    result = compare_with_pytorch(ft, path, new)
    assert result["format"] == "torchscript" and result["max_prob_diff"] < 1e-5 and result["same_top1"] == 1.0


def test_bad_export_requests_say_what_to_do(model_and_images, tmp_path):
    ft, *_ = model_and_images
    with pytest.raises(DataError, match="Unknown export format 'tflite'"):
        export(ft, tmp_path / "m.tflite", "tflite")
    with pytest.raises(FileNotFoundError, match="export one first"):
        OnnxClassifier(tmp_path / "missing.onnx")
    (tmp_path / "fake.onnx").write_bytes(b"not onnx")
    with pytest.raises(DataError, match="not an ONNX model"):
        OnnxClassifier(tmp_path / "fake.onnx")


def test_checker_onnx_probabilities_on_a_large_rotated_photo(model_and_images, capsys):
    from PIL import ImageOps

    from tl_helpers.checks.own_images import check_onnx_probabilities

    ft, new, root = model_and_images
    path = root / "model.onnx"
    if not path.exists():
        export_onnx(ft, path)

    def run(session, x):
        z = session.run(None, {session.get_inputs()[0].name: x})[0][0]
        e = np.exp(z - z.max())
        return e / e.sum()

    def reference(session, file, size, mean, std):
        image = ImageOps.exif_transpose(Image.open(file)).convert("RGB")
        return run(session, onnx_preprocess(image, size, mean, std)[None])

    def logits(session, file, size, mean, std):
        image = ImageOps.exif_transpose(Image.open(file)).convert("RGB")
        return session.run(None, {session.get_inputs()[0].name: onnx_preprocess(image, size, mean, std)[None]})[0][0]

    def no_normalise(session, file, size, mean, std):
        return reference(session, file, size, (0, 0, 0), (1, 1, 1))

    def squashed(session, file, size, mean, std):
        image = ImageOps.exif_transpose(Image.open(file)).convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        x = (np.asarray(image, dtype=np.float32) / 255 - np.float32(mean)) / np.float32(std)
        return run(session, x.transpose(2, 0, 1)[None].astype(np.float32))

    def orientation_ignored(session, file, size, mean, std):
        return run(session, onnx_preprocess(Image.open(file).convert("RGB"), size, mean, std)[None])

    def torchvision_preprocessing(session, file, size, mean, std):   # eval_transform: the same pixels
        image = ImageOps.exif_transpose(Image.open(file)).convert("RGB")
        return run(session, eval_transform(size, mean=mean, std=std)(image)[None].numpy())

    def reference_in_float64(session, file, size, mean, std):   # exactly right: no mistake may be matched by chance
        image = ImageOps.exif_transpose(Image.open(file)).convert("RGB")
        z = session.run(None, {session.get_inputs()[0].name: onnx_preprocess(image, size, mean, std)[None]})[0][0]
        e = np.exp(z.astype(np.float64) - z.max())
        return e / e.sum()

    assert check_onnx_probabilities(reference, path)
    assert "3000 x 2000 photo stored rotated" in capsys.readouterr().out
    assert check_onnx_probabilities(reference_in_float64, path), capsys.readouterr().out
    assert check_onnx_probabilities(torchvision_preprocessing, path)
    capsys.readouterr()
    for wrong, words in ((logits, "softmax"), (no_normalise, "subtract the mean"),
                         (squashed, "match the image squashed to a square"),
                         (orientation_ignored, "match the image orientation tag ignored")):
        assert not check_onnx_probabilities(wrong, path), wrong.__name__
        out = capsys.readouterr().out
        assert words in out, (wrong.__name__, out)
