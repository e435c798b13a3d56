"""The command line (python -m tl_helpers): a full round trip on a tiny folder, and bad input -> exit 2, no traceback."""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tl_helpers.checkpoints import save_checkpoint
from tl_helpers.cli import main
from tl_helpers.imagefolder import write_example_folder


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny folder with the bad-input matrix planted, fine-tuned through the CLI for one epoch at 64 px."""
    root = tmp_path_factory.mktemp("cli")
    folder, new = write_example_folder(root / "photos", classes=("birds", "fruit", "vehicles"), per_class=8,
                                       tiny_class=None)
    birds = folder / "birds"
    (birds / "zero.jpg").write_bytes(b"")
    Image.open(new[0]).convert("CMYK").save(birds / "cmyk.jpg")  # sources: images not in the folder
    gray = np.asarray(Image.open(new[2]).convert("L"), dtype=np.uint16) * 257
    Image.fromarray(gray).save(folder / "fruit" / "sixteen_bit.png")
    palette = Image.open(new[4]).convert("P")
    palette.info["transparency"] = 0
    palette.save(folder / "vehicles" / "palette.png")
    (folder / "vehicles" / "empty_dir").mkdir()
    return root, folder, new


@pytest.fixture(scope="module")
def finetuned(trained, tmp_path_factory):
    root, folder, new = trained
    mp = pytest.MonkeyPatch()
    mp.setenv("TL_CACHE_DIR", str(root / "cache"))
    code = main(["finetune", str(folder), "--out", str(root / "model.pt"), "--epochs", "1", "--image-size", "64",
                 "--no-progress"])
    mp.undo()
    assert code == 0
    return root / "model.pt"


def test_finetune_reports_every_planted_problem_and_writes_the_model(trained, finetuned, capsys, monkeypatch):
    root, folder, _ = trained
    monkeypatch.setenv("TL_CACHE_DIR", str(root / "cache"))
    code, out, err = run(capsys, "finetune", folder, "--out", root / "again.pt", "--epochs", "1",
                         "--image-size", "64", "--no-progress")
    assert code == 0 and "Traceback" not in out + err
    for expected in ("3 skipped", "zero.jpg: empty file", "recipe.jpg: not an image", "_download.jpg: damaged",
                     "notes.txt", "Byte-identical files (1)", "accuracy", "confusion matrix", "wrote "):
        assert expected in out, expected
    assert "cmyk.jpg" not in out and "sixteen_bit.png" not in out and "palette.png" not in out  # all usable
    assert (root / "again.pt").exists()


def test_round_trip_predict_export_onnx_predict_again(trained, finetuned, capsys, tmp_path):
    root, folder, new = trained
    code, out, err = run(capsys, "predict", finetuned, *new, "--top-k", "2", "--csv", tmp_path / "pt.csv")
    assert code == 0, err
    code, out, err = run(capsys, "export", finetuned, "--format", "onnx", "--out", tmp_path / "model.onnx",
                         "--check", *new)
    assert code == 0, err
    assert "largest probability difference to PyTorch" in out and "runs without PyTorch (onnxruntime in a fresh " \
        "process): yes" in out
    code, out, err = run(capsys, "predict", tmp_path / "model.onnx", *new, "--top-k", "2", "--csv", tmp_path / "onnx.csv")
    assert code == 0, err
    rows = [list(csv.DictReader(open(tmp_path / name, encoding="utf-8"))) for name in ("pt.csv", "onnx.csv")]
    assert [r["class"] for r in rows[0]] == [r["class"] for r in rows[1]]
    assert {r["class"] for r in rows[0]} <= {"birds", "fruit", "vehicles"} and len(rows[0]) == len(new)
    assert max(abs(float(a["probability"]) - float(b["probability"])) for a, b in zip(*rows)) < 0.01
    assert list(rows[0][0]) == ["file", "class", "probability", "class_2", "probability_2", "error"]


def test_export_torchscript_and_evaluate(trained, finetuned, capsys, tmp_path):
    root, folder, new = trained
    code, out, err = run(capsys, "export", finetuned, "--format", "torchscript", "--out", tmp_path / "m.ts.pt")
    assert code == 0 and "packaged Clipart-8 images" in out and (tmp_path / "m.ts.pt").exists()
    code, out, err = run(capsys, "evaluate", finetuned, folder)
    assert code == 0 and "left out" in out and "accuracy" in out and "95% interval" in out


@pytest.mark.parametrize("case", ["missing", "file", "no_subfolders", "one_class", "tiny_class", "bad_epochs",
                                  "bad_size", "bad_model"])
def test_bad_finetune_input_exits_2_with_a_message(case, tmp_path, capsys):
    folder = tmp_path / "photos"
    extra = []
    if case == "file":
        folder = tmp_path / "photo.jpg"
        folder.write_bytes(b"x")
    elif case == "no_subfolders":
        folder.mkdir()
        Image.new("RGB", (8, 8)).save(folder / "a.png")
    elif case != "missing":
        classes = ("birds",) if case == "one_class" else ("birds", "fruit")
        write_example_folder(folder, classes=classes, per_class=8, tiny_class="flowers" if case == "tiny_class" else None)
        extra = {"bad_epochs": ["--epochs", "0"], "bad_size": ["--image-size", "8"],
                 "bad_model": ["--model", "no_such_net"]}.get(case, [])
    code, out, err = run(capsys, "finetune", folder, "--out", tmp_path / "m.pt", "--no-progress", *extra)
    expected = {"missing": "does not exist", "file": "not a folder", "no_subfolders": "no subfolders",
                "one_class": "only one class", "tiny_class": "'flowers'", "bad_epochs": "at least 1 epoch",
                "bad_size": "too small", "bad_model": "Unknown model"}[case]
    assert code == 2 and err.startswith("error: ") and expected in err and "Traceback" not in out + err
    assert not (tmp_path / "m.pt").exists()


def test_bad_model_files_and_images_exit_2(trained, finetuned, capsys, tmp_path):
    root, folder, new = trained
    (tmp_path / "notes.pt").write_text("hello")
    save_checkpoint(tmp_path / "fit.pt", __import__("torch").nn.Linear(2, 2))
    (tmp_path / "bad.jpg").write_text("<html>")
    cases = [(["predict", tmp_path / "notes.pt", new[0]], "not a model saved by FineTuned.save"),
             (["predict", tmp_path / "fit.pt", new[0]], "training checkpoint of fit"),
             (["predict", tmp_path / "missing.pt", new[0]], "No model file"),
             (["predict", finetuned, tmp_path / "bad.jpg", tmp_path / "nope.jpg"], "None of the files"),
             (["export", tmp_path / "notes.pt"], "not a model saved"),
             (["evaluate", finetuned, tmp_path / "nope"], "does not exist")]
    for argv, expected in cases:
        code, out, err = run(capsys, *argv)
        assert code == 2 and expected in err and "Traceback" not in out + err, (argv, err)
    code, out, err = run(capsys, "predict", finetuned, tmp_path / "bad.jpg", new[0])
    assert code == 0 and "skipped: not an image" in out


def test_evaluate_a_folder_with_an_unknown_class(trained, finetuned, capsys, tmp_path):
    other, _ = write_example_folder(tmp_path / "other", classes=("birds", "clothing"), per_class=8, tiny_class=None)
    code, out, err = run(capsys, "evaluate", finetuned, other)
    assert code == 2 and "does not know: clothing" in err
    code, out, err = run(capsys, "evaluate", finetuned, other, "--leave-out", "clothing", "--include-seen")
    assert code == 0 and "accuracy" in out


def test_unexpected_failures_exit_1_without_a_traceback_unless_debug(monkeypatch, capsys, tmp_path):
    import tl_helpers.finetuned

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(tl_helpers.finetuned, "finetune", broken)
    folder, _ = write_example_folder(tmp_path / "photos", classes=("birds", "fruit"), per_class=8, tiny_class=None)
    code, out, err = run(capsys, "finetune", folder, "--no-progress")
    assert code == 1 and "failed: RuntimeError: disk on fire" in err and "--debug" in err and "Traceback" not in err
    with pytest.raises(RuntimeError):
        main(["finetune", str(folder), "--no-progress", "--debug"])


def test_the_module_entry_point_help_and_exit_codes(tmp_path):
    done = subprocess.run([sys.executable, "-m", "tl_helpers", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "finetune" in done.stdout and "exit codes" in done.stdout
    done = subprocess.run([sys.executable, "-m", "tl_helpers", "finetune", str(tmp_path / "nope")],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "does not exist" in done.stderr and "Traceback" not in done.stderr
    done = subprocess.run([sys.executable, "-m", "tl_helpers", "export", "m.pt", "--format", "tflite"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "invalid choice" in done.stderr


def test_every_option_has_help():
    from tl_helpers.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        assert p.description and "example" in p.epilog, name
        for action in p._actions:
            assert action.help, (name, action.dest)


# --- issue 25: layouts, --epochs 0 before the scan, --no-progress everywhere, failing exports, TTA, resume ---

def test_help_documents_the_folder_layouts_and_the_new_options(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "FOLDER/train/<class>/*.jpg" in out and "FOLDER/valid/<class>/*.jpg" in out and "--resume" in out
    for command, options in (("finetune", ("--no-flip", "--balance", "--resume", "FOLDER/<class>/*.jpg")),
                             ("predict", ("--tta",)), ("evaluate", ("--tta", "--mistakes", "FOLDER/test/<class>")),
                             ("export", ("--tolerance", "exit"))):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        assert all(o in text for o in options), (command, options)


def test_impossible_settings_are_refused_before_the_scan(monkeypatch, capsys, tmp_path):
    import tl_helpers.imagefolder

    monkeypatch.setattr(tl_helpers.imagefolder, "scan_image_folder", lambda *a, **k: pytest.fail("scanned"))
    for extra, expected in ((["--epochs", "0"], "at least 1 epoch"), (["--image-size", "8"], "too small"),
                            (["--batch-size", "0"], "--batch-size 0"), (["--test", "0"], "fractions")):
        code, out, err = run(capsys, "finetune", tmp_path / "not_scanned", "--no-progress", *extra)
        assert code == 2 and expected in err and "does not exist" not in err, (extra, err)


def test_no_progress_hides_every_bar_and_the_bars_show_without_it(trained, finetuned, capsys, tmp_path):
    root, folder, new = trained
    commands = [["predict", finetuned, *new], ["evaluate", finetuned, folder],
                ["export", finetuned, "--format", "torchscript", "--out", tmp_path / "m.ts.pt"]]
    for argv in commands:
        code, out, err = run(capsys, *argv, "--no-progress")
        assert code == 0 and err == "", (argv[0], err)
        code, out, err = run(capsys, *argv)
        assert code == 0 and any(bar in err for bar in ("predicting", "export", "scanning")), (argv[0], err)


def test_predict_fails_fast_before_loading_the_model_when_nothing_is_an_image(monkeypatch, capsys, tmp_path):
    import tl_helpers.cli

    monkeypatch.setattr(tl_helpers.cli, "_load_any", lambda path: pytest.fail("loaded the model"))
    (tmp_path / "notes.jpg").write_text("shopping list")
    code, out, err = run(capsys, "predict", tmp_path / "model.pt", tmp_path / "notes.jpg", tmp_path / "nope.jpg")
    assert code == 2 and "None of the files" in err and "notes.jpg  skipped: not an image" in out
    assert "does not exist" in out


def test_export_that_disagrees_with_pytorch_exits_1_with_the_numbers(trained, finetuned, capsys, tmp_path, monkeypatch):
    import copy

    import torch

    import tl_helpers.export

    real = tl_helpers.export.export

    def broken_export(ft, out, fmt="onnx"):   # an exporter that gets one layer wrong
        other = copy.deepcopy(ft)
        with torch.no_grad():
            other.model._fc.bias += torch.tensor([3.0, -3.0, 0.0])
        return real(other, out, fmt)

    monkeypatch.setattr(tl_helpers.export, "export", broken_export)
    code, out, err = run(capsys, "export", finetuned, "--format", "torchscript", "--out", tmp_path / "bad.ts.pt",
                         "--no-progress")
    assert code == 1 and "largest probability difference to PyTorch" in out
    assert "failed: the exported file does not compute what the PyTorch model computes" in err
    assert "> tolerance 1.0e-04" in err and "Traceback" not in err
    monkeypatch.undo()
    code, out, err = run(capsys, "export", finetuned, "--format", "torchscript", "--out", tmp_path / "ok.ts.pt",
                         "--tolerance", "1e-4", "--no-progress")
    assert code == 0 and err == ""


def test_evaluate_with_tta_writes_the_confused_pairs_and_the_mistakes_sheet(trained, finetuned, capsys, tmp_path):
    root, folder, new = trained
    code, out, err = run(capsys, "evaluate", finetuned, folder, "--no-progress")
    assert code == 0 and "most confused (true -> predicted, images):" in out and "mean per-class recall" in out
    code, out_tta, err = run(capsys, "evaluate", finetuned, folder, "--tta", "--mistakes", tmp_path / "m.png",
                             "--top-losses", "4", "--no-progress")
    assert code == 0 and "with flip test-time augmentation" in out_tta and (tmp_path / "m.png").stat().st_size > 1000
    assert "wrote " in out_tta and "the 4 test images with the largest losses" in out_tta
    code, out, err = run(capsys, "predict", finetuned, *new, "--tta", "--no-progress")
    assert code == 0 and "prediction (flip TTA)" in out


def test_a_train_valid_folder_no_flip_balance_and_an_interrupted_run_resumed(capsys, tmp_path, monkeypatch, epochs):
    import shutil

    from tl_helpers.finetuned import load_finetuned

    flat, _ = write_example_folder(tmp_path / "flat", classes=("birds", "fruit"), per_class=12, tiny_class=None,
                                   problems=False)
    folder = tmp_path / "tv"
    for cls in ("birds", "fruit"):
        files = sorted((flat / cls).glob("*.jpg"))
        for part, chosen in (("train", files[:9]), ("valid", files[9:])):
            (folder / part / cls).mkdir(parents=True)
            for f in chosen:
                shutil.copy(f, folder / part / cls / f.name)
    monkeypatch.setenv("TL_CACHE_DIR", str(tmp_path / "cache"))
    epochs.stop_at = 2                                  # Ctrl-C in the second epoch
    argv = ["finetune", folder, "--out", tmp_path / "m.pt", "--epochs", "2", "--image-size", "64", "--no-flip",
            "--balance", "--no-progress"]
    code, out, err = run(capsys, *argv)
    assert code == 1 and "--resume" in err and (tmp_path / "m.training").is_dir() and not (tmp_path / "m.pt").exists()
    assert "Laid out as a split (train/, valid/): used as given; the test part drawn from train/." in out
    epochs.stop_at = None
    code, out, err = run(capsys, *argv, "--resume")
    assert code == 0 and epochs.calls == 3, err                      # the first epoch was not trained again
    assert "val = valid/, test drawn from train/" in out and "no flips, class-weighted loss" in out
    assert not (tmp_path / "m.training").exists()
    ft = load_finetuned(tmp_path / "m.pt")
    assert ft.augmentation == {"flip": False, "balance": True} and ft.split["given"] == {"train": "train", "val": "valid"}
    assert ft.split["counts"]["val"] == 6 and len(ft.history) == 2
    code, out, err = run(capsys, "predict", tmp_path / "m.pt", folder / "valid", "--tta")
    assert code == 2 and "trained without flips" in err


def test_the_help_knows_the_recipes_epochs_and_cheap_commands_never_import_torch(tmp_path):
    from tl_helpers.cli import RECIPE_EPOCHS
    from tl_helpers.recipe import Recipe

    assert RECIPE_EPOCHS == Recipe().finetune_epochs
    code = ("import sys; from tl_helpers.cli import main; "
            "code = main(sys.argv[1:]); print('torch' in sys.modules); sys.exit(code)")
    (tmp_path / "a.jpg").write_text("not a photo")
    write_example_folder(tmp_path / "photos", classes=("birds", "fruit"), per_class=8)     # with a 2-image class
    for argv, rc in ((["predict", "model.pt", str(tmp_path / "a.jpg"), "nope.jpg"], 2),
                     (["finetune", str(tmp_path / "photos"), "--out", str(tmp_path / "m.pt"), "--no-progress"], 2),
                     (["finetune", str(tmp_path / "nope"), "--epochs", "0"], 2)):
        done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True)
        assert done.returncode == rc and done.stdout.strip().endswith("False"), (argv, done.stdout, done.stderr)
    assert not (tmp_path / "m.training").exists()
