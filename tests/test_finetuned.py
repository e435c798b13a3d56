"""finetune() on a tiny folder, the self-describing checkpoint, predict and evaluate (tl_helpers.finetuned)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from tl_helpers.checkpoints import save_checkpoint
from tl_helpers.finetuned import CheckpointError, FineTuned, TestReport, finetune, load_finetuned, recipe_for
from tl_helpers.imagefolder import DataError, scan_image_folder, write_example_folder
from tl_helpers.recipe import Recipe


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 3-class folder of 8 clip-art JPEGs a class (with the planted problems), fine-tuned for one epoch at 64 px."""
    root = tmp_path_factory.mktemp("own")
    folder, new = write_example_folder(root / "photos", classes=("birds", "fruit", "vehicles"), per_class=8,
                                       tiny_class=None)
    ft = finetune(folder, image_size=64, epochs=1, progress=False, verbose=False, cache=False)
    return ft, folder, new, root


def test_finetune_skips_bad_files_and_returns_a_described_model(tiny):
    ft, folder, _, _ = tiny
    assert ft.classes == ["birds", "fruit", "vehicles"] and ft.architecture == "efficientnet_lite0"
    assert ft.image_size == 64 and ft.mean == (0.5, 0.5, 0.5)
    assert ft.split["skipped"] == 2 and sum(ft.split["counts"].values()) == 25  # 24 + the byte-identical copy
    assert ft.recipe == dataclasses.replace(Recipe(), top_epochs=1, all_epochs=0)
    assert len(ft.head_history) == Recipe().head_epochs and len(ft.history) == 1
    assert len(ft.report.y_true) == ft.split["counts"]["test"]
    assert not ft.model.training


def test_recipe_for_keeps_the_course_recipe_and_changes_only_epochs():
    assert recipe_for() == Recipe()
    assert recipe_for(epochs=7) == Recipe()
    assert recipe_for(epochs=4, seed=2) == dataclasses.replace(Recipe(), all_epochs=3, seed=2)
    with pytest.raises(DataError, match="at least 1 epoch"):
        recipe_for(epochs=0)


def test_test_part_holds_no_training_file(tiny):
    ft, folder, _, _ = tiny
    report = scan_image_folder(folder, progress=False)
    from tl_helpers.finetuned import _sha256

    test_files = {report.root / f for f in ft.report.files}
    assert not {_sha256(p) for p in test_files} & set(ft.seen)


def test_save_and_load_give_the_same_model_and_description(tiny, tmp_path):
    ft, folder, new, _ = tiny
    path = ft.save(tmp_path / "model.pt")
    again = load_finetuned(path)
    assert (again.classes, again.architecture, again.image_size, again.mean, again.std, again.recipe) == \
        (ft.classes, ft.architecture, ft.image_size, ft.mean, ft.std, ft.recipe)
    assert again.report.to_dict() == ft.report.to_dict() and again.history == ft.history
    assert again.versions["torch"] == str(torch.__version__)
    x = torch.stack([ft.transform(img) for img in [__import__("PIL.Image").Image.open(p).convert("RGB") for p in new]])
    with torch.no_grad():
        assert torch.allclose(ft.model(x), again.model(x), atol=1e-6)
    state = torch.load(path, weights_only=True)  # plain data only: loadable without running code
    assert state["format"].startswith("tl_helpers.finetuned")


def test_loading_checks_architecture_classes_and_kind_of_file(tiny, tmp_path):
    ft, *_ = tiny
    path = ft.save(tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="efficientnet_lite0 with 3 classes, not a resnet18"):
        load_finetuned(path, architecture="resnet18")
    with pytest.raises(CheckpointError, match="not the 2 classes"):
        load_finetuned(path, classes=["birds", "fruit"])
    save_checkpoint(tmp_path / "fit.pt", nn.Linear(2, 2))
    with pytest.raises(CheckpointError, match="training checkpoint of fit"):
        load_finetuned(tmp_path / "fit.pt")
    (tmp_path / "photo.pt").write_bytes(b"\xff\xd8\xff\xe0 not a checkpoint")
    with pytest.raises(CheckpointError, match="not a model saved by FineTuned.save"):
        load_finetuned(tmp_path / "photo.pt")
    with pytest.raises(CheckpointError, match="ONNX file"):
        (tmp_path / "m.onnx").write_bytes(b"x")
        load_finetuned(tmp_path / "m.onnx")
    with pytest.raises(FileNotFoundError, match="No model file"):
        load_finetuned(tmp_path / "missing.pt")


def test_changed_weights_are_reported(tiny, tmp_path):
    ft, *_ = tiny
    path = ft.save(tmp_path / "model.pt")
    state = torch.load(path, weights_only=True)
    state["model"].pop("_fc.bias")
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_finetuned(path)


def test_predict_paths_folders_and_images_with_top_k(tiny):
    ft, _, new, _ = tiny
    from PIL import Image

    preds = ft.predict(new, top_k=3)
    assert [p.file for p in preds] == [str(p) for p in new]
    for p in preds:
        assert p.label in ft.classes and len(p.top) == 3 and p.top[0] == (p.label, p.probability)
        assert abs(sum(v for _, v in p.top) - 1) < 1e-3
    folder_preds = ft.predict(new[0].parent)
    assert [p.label for p in folder_preds] == [p.label for p in preds] and folder_preds[0].top == []
    image_pred = ft.predict(Image.open(new[0]))[0]
    assert image_pred.label == preds[0].label and abs(image_pred.probability - preds[0].probability) < 1e-4


def test_predict_names_a_bad_file_or_skips_it(tiny, tmp_path):
    ft, _, new, _ = tiny
    bad = tmp_path / "bad.jpg"
    bad.write_text("<html>")
    with pytest.raises(DataError, match="bad.jpg"):
        ft.predict([new[0], bad])
    preds = ft.predict([new[0], bad], skip_bad=True)
    assert preds[0].label is not None and preds[1].label is None and "text" in preds[1].error


def test_evaluate_on_the_training_folder_is_the_test_part_again(tiny):
    ft, folder, _, _ = tiny
    result = ft.evaluate(folder)
    assert sorted(result.files) == sorted(ft.report.files) and result.accuracy == ft.report.accuracy
    assert result.excluded == sum(ft.split["counts"].values()) - len(ft.report.files)
    everything = ft.evaluate(folder, exclude_seen=False)
    assert len(everything.y_true) == sum(ft.split["counts"].values()) and everything.excluded == 0


def test_evaluate_refuses_unknown_classes(tiny, tmp_path):
    ft, folder, _, _ = tiny
    other, _ = write_example_folder(tmp_path / "other", classes=("birds", "clothing"), per_class=3, tiny_class=None)
    with pytest.raises(DataError, match="does not know: clothing"):
        ft.evaluate(other)


def test_finetune_reports_bad_input_clearly(tmp_path):
    with pytest.raises(FileNotFoundError):
        finetune(tmp_path / "nope", progress=False)
    folder, _ = write_example_folder(tmp_path / "photos", classes=("birds", "fruit"), per_class=8)
    with pytest.raises(DataError, match="'flowers'"):
        finetune(folder, progress=False, verbose=False)
    report = scan_image_folder(folder, progress=False).without(["flowers"])
    with pytest.raises(DataError, match="Unknown model 'no_such_net'"):
        finetune(report, model="no_such_net", progress=False, verbose=False)
    with pytest.raises(DataError, match="too small"):
        finetune(report, image_size=8, progress=False, verbose=False)


def test_test_report_text_and_interval():
    r = TestReport(["cat", "dog"], [0] * 10 + [1] * 10, [0] * 9 + [1] * 11)
    low, high = r.interval
    assert r.accuracy == 0.95 and low < 0.95 <= high <= 1.0
    text = str(r)
    assert text.startswith("accuracy 95.0% on 20 test images (95% interval") and "confusion matrix" in text
    assert TestReport.from_dict(r.to_dict()) == r


def test_finetuned_repr_names_what_it_is(tiny):
    ft, *_ = tiny
    assert repr(ft).startswith("FineTuned(efficientnet_lite0, 3 classes ['birds', 'fruit', 'vehicles'], 64 px")
    assert isinstance(ft, FineTuned)
