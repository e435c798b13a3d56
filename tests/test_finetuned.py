"""finetune() on a tiny folder, the self-describing checkpoint, predict and evaluate (tl_helpers.finetuned)."""

from __future__ import annotations

import dataclasses

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from torch import nn

from tl_helpers.checkpoints import save_checkpoint
from tl_helpers.finetuned import CheckpointError, FineTuned, TestReport, finetune, load_finetuned, recipe_for
from tl_helpers.imagefolder import DataError, scan_image_folder, split_folder, write_example_folder
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


# --- what a fastai user expects: flips as a choice, imbalance, interpretation, TTA, resume -------------

def test_flip_is_a_choice_recorded_in_the_model_and_tta_is_refused_without_it(tiny, tmp_path):
    from PIL import Image

    from tl_helpers.finetuned import augmentation_transform

    names = [type(t).__name__ for t in augmentation_transform(64, (0.5,) * 3, (0.5,) * 3, flip=False).transforms]
    assert "RandomHorizontalFlip" not in names and "RandomResizedCrop" in names
    ft, folder, new, _ = tiny
    assert ft.augmentation == {"flip": True, "balance": False}
    no_flip = dataclasses.replace(ft, augmentation={"flip": False, "balance": False})
    again = load_finetuned(no_flip.save(tmp_path / "m.pt"))
    assert again.augmentation == {"flip": False, "balance": False}
    with pytest.raises(DataError, match="trained without flips"):
        again.predict(new[:1], tta=True)
    with pytest.raises(DataError, match="trained without flips"):
        again.evaluate(folder, tta=True)


def test_tta_averages_an_image_with_its_mirror(tiny):
    from PIL import Image, ImageOps

    ft, _, new, _ = tiny
    img = Image.open(new[0]).convert("RGB")
    symmetric = Image.new("RGB", (2 * img.width, img.height))
    symmetric.paste(img, (0, 0))
    symmetric.paste(ImageOps.mirror(img), (img.width, 0))     # its own mirror image: TTA changes nothing
    p, p_tta = ft.probabilities([symmetric]), ft.probabilities([symmetric], tta=True)
    assert np.allclose(p, p_tta, atol=1e-5)
    a, a_tta = ft.probabilities([img]), ft.probabilities([img], tta=True)
    mirrored = ft.probabilities([ImageOps.mirror(img)])
    assert np.allclose(a_tta, (a + mirrored) / 2, atol=1e-5) and not np.allclose(a, a_tta, atol=1e-4)
    preds = ft.predict(new, tta=True, top_k=3)
    assert all(abs(sum(v for _, v in p.top) - 1) < 1e-3 for p in preds)


def test_the_test_report_has_recalls_confused_pairs_and_top_losses(tiny, tmp_path):
    ft, folder, _, _ = tiny
    r = ft.report
    assert len(r.probs) == len(r.y_true) and np.allclose(np.sum(r.probs, axis=1), 1, atol=1e-4)
    assert np.asarray(r.probs).argmax(1).tolist() == r.y_pred
    losses = r.losses()
    order = r.top_losses(5)
    assert list(losses[order]) == sorted(losses, reverse=True)[:5]
    assert set(r.recalls) == set(ft.classes) and abs(r.balanced_accuracy - np.mean(list(r.recalls.values()))) < 1e-12
    text = str(r)
    assert "mean per-class recall" in text and "most confused (true -> predicted, images):" in text
    fig = r.mistakes_figure(folder, n=4)
    assert len([ax for ax in fig.axes if ax.images]) == 4
    fig.savefig(tmp_path / "m.png")
    plt.close(fig)
    report = TestReport(["a", "b", "c"], [0, 0, 0, 1, 1, 2], [1, 1, 2, 0, 1, 2])
    assert report.most_confused() == [("a", "b", 2), ("a", "c", 1), ("b", "a", 1)]
    assert report.recalls == {"a": 0.0, "b": 0.5, "c": 1.0} and report.balanced_accuracy == 0.5
    with pytest.raises(ValueError, match="no probabilities"):
        report.losses()


def test_evaluate_reproduces_the_finetune_report_with_and_without_tta(tiny):
    ft, folder, _, _ = tiny
    again = ft.evaluate(folder)
    assert again.excluded == sum(ft.split["counts"].values()) - len(ft.report.files)
    assert dataclasses.replace(again, excluded=0) == ft.report and str(again) == str(ft.report)
    with_tta = ft.evaluate(folder, tta=True)
    assert with_tta.files == ft.report.files and with_tta.probs != ft.report.probs


def test_balance_weighs_the_loss_by_the_training_class_sizes(tmp_path):
    from tl_helpers.checkpoints import load_checkpoint
    from tl_helpers.finetuned import class_weights

    assert [round(w, 3) for w in class_weights([30, 10]).tolist()] == [0.667, 2.0]
    with pytest.raises(DataError, match="no training image"):
        class_weights([3, 0])
    folder, _ = write_example_folder(tmp_path / "photos", classes=("birds", "fruit"), per_class=12, tiny_class=None,
                                     problems=False)
    for extra in sorted((folder / "fruit").glob("*.jpg"))[4:]:
        extra.unlink()                                            # 12 birds, 4 fruit: imbalanced 3:1
    report = scan_image_folder(folder, progress=False)
    ft = finetune(report, image_size=64, epochs=1, progress=False, verbose=False, cache=False, balance=True,
                  checkpoint=tmp_path / "run" / "c.pt")
    weights = load_checkpoint(tmp_path / "run" / "c.pt")["settings"]["class_weights"]
    train = [report.samples[i][1] for i in split_folder(report, seed=0)["train"]]
    n_birds, n_fruit = train.count(0), train.count(1)
    assert n_birds > n_fruit and ft.augmentation["balance"]
    assert weights == pytest.approx([len(train) / (2 * n_birds), len(train) / (2 * n_fruit)], rel=1e-5)


def test_an_interrupted_finetune_resumes_to_the_same_model(tmp_path, epochs):
    folder, _ = write_example_folder(tmp_path / "photos", classes=("birds", "fruit"), per_class=8, tiny_class=None,
                                     problems=False)
    report = scan_image_folder(folder, progress=False)
    kwargs = dict(image_size=64, epochs=3, progress=False, verbose=False, cache=tmp_path / "features")
    whole = finetune(report, checkpoint=tmp_path / "whole" / "c.pt", **kwargs)
    epochs.calls, epochs.stop_at = 0, 3                     # Ctrl-C in the third epoch
    with pytest.raises(KeyboardInterrupt):
        finetune(report, checkpoint=tmp_path / "cut" / "c.pt", **kwargs)
    epochs.stop_at = None
    resumed = finetune(report, checkpoint=tmp_path / "cut" / "c.pt", **kwargs)
    assert epochs.calls == 4                                # only the interrupted epoch was trained again
    assert resumed.history.column("train_loss") == whole.history.column("train_loss")
    for a, b in zip(whole.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    assert resumed.report.to_dict() == whole.report.to_dict()
