"""The command line: fine-tune on a folder, predict, export, evaluate (``python -m tl_helpers ...``).

    python -m tl_helpers finetune photos/ --out model.pt
    python -m tl_helpers predict model.pt new_photos/ --top-k 3 --csv predictions.csv
    python -m tl_helpers export model.pt --format onnx
    python -m tl_helpers evaluate model.pt photos/ --mistakes mistakes.png

Exit codes: 0 done; 2 bad input (a wrong path, a folder without class subfolders, a file that is not
a model...): the message says what and what to do; 1 any other failure (an export that disagrees with
PyTorch, an interrupted run; ``--debug`` shows the traceback).

>>> build_parser().parse_args(["predict", "model.pt", "a.jpg", "--top-k", "3"]).top_k
3
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
import textwrap
from pathlib import Path

from tl_helpers.imagefolder import LAYOUTS, DataError

BAD_INPUT = (DataError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)
EXAMPLES = """examples:
  python -m tl_helpers finetune photos/ --out model.pt          photos/cats/*.jpg, photos/dogs/*.jpg ...
  python -m tl_helpers finetune photos/ --resume                continue a run that was interrupted
  python -m tl_helpers predict model.pt new/ --top-k 3 --csv predictions.csv
  python -m tl_helpers export model.pt --format onnx            writes model.onnx, checked against PyTorch
  python -m tl_helpers predict model.onnx new/                  the same predictions, with onnxruntime
  python -m tl_helpers evaluate model.pt photos/ --mistakes m.png   only images the model has not seen

exit codes: 0 done, 2 bad input (the message says what to do), 1 other failure (--debug for the traceback)
"""
TRAINING_MARKER = ".tl_helpers_training"
RECIPE_EPOCHS = 7   # tl_helpers.recipe.Recipe().finetune_epochs, for --help without importing PyTorch (a test checks it)


def _wrap(text: str) -> str:
    return textwrap.fill(" ".join(text.split()), width=92)


def _shown(path: str | Path) -> str:
    """A path as the user would write it: relative to the current folder when it lies below it."""
    path = Path(path)
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(path)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


# --------------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------------

def training_folder(out: str | Path) -> Path:
    """Where ``finetune`` keeps the checkpoints of a run until the model is saved: ``model.pt`` ->
    ``model.training/`` (``--resume`` continues from there).

    >>> training_folder("models/cats.pt").as_posix()
    'models/cats.training'
    """
    out = Path(out)
    return out.with_name(f"{out.stem}.training")


def _check_finetune_args(args: argparse.Namespace) -> None:
    """Refuse impossible settings before anything is scanned (a big folder takes minutes to scan) or PyTorch
    is imported (the same rules as ``finetuned.recipe_for`` and ``finetuned.check_image_size``)."""
    if args.epochs is not None and args.epochs < 1:
        raise DataError(f"--epochs {args.epochs}: fine-tuning needs at least 1 epoch (the recipe's default is "
                        f"{RECIPE_EPOCHS}).")
    if args.image_size < 32:
        raise DataError(f"--image-size {args.image_size} is too small for a pretrained network: use 64 or more "
                        "(the course uses 128).")
    if args.batch_size < 1:
        raise DataError(f"--batch-size {args.batch_size}: give 1 or more images per step (e.g. 32).")
    if not (0 <= args.val < 1 and 0 < args.test < 1 and args.val + args.test < 1):
        raise DataError(f"--val {args.val} --test {args.test}: give fractions with 0 <= val, 0 < test and "
                        "val + test < 1 (e.g. --val 0.15 --test 0.25).")


def cmd_finetune(args: argparse.Namespace) -> int:
    from tl_helpers.imagefolder import ImageCache, scan_image_folder, split_folder, training_side

    _check_finetune_args(args)
    run_dir = training_folder(args.out)
    if run_dir.exists() and not (run_dir / TRAINING_MARKER).exists():
        raise DataError(f"{_shown(run_dir)}/ exists and was not written by finetune: move it, or choose another "
                        "--out (its checkpoints go to OUT.training/).")
    if run_dir.exists() and not args.resume:
        shutil.rmtree(run_dir)            # an earlier run's checkpoints: this run starts from the beginning
    elif args.resume and not run_dir.exists():
        print(f"--resume: no checkpoints in {_shown(run_dir)}/, so training starts from the beginning.")
    images = ImageCache(training_side(args.image_size))
    report = scan_image_folder(args.folder, progress=args.progress, cache=images)
    print(report.summary())
    print()
    if args.leave_out:
        report = report.without(args.leave_out)
        print(f"left out: {', '.join(args.leave_out)}")
    parts = split_folder(report, val=args.val, test=args.test, seed=args.seed)   # refused before PyTorch loads
    from tl_helpers.finetuned import finetune

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / TRAINING_MARKER).write_text("checkpoints of python -m tl_helpers finetune; safe to delete\n")
    try:
        ft = finetune(report, model=args.model, image_size=args.image_size, epochs=args.epochs, seed=args.seed,
                      val=args.val, test=args.test, parts=parts, batch_size=args.batch_size, progress=args.progress,
                      flip=not args.no_flip, balance=args.balance, checkpoint=run_dir / "phase2.pt")
    except BaseException:
        if not any(run_dir.glob("*.pt")):      # nothing trained yet (e.g. the split was refused): leave no trace
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    print()
    print(ft.history.table())
    print()
    print(ft.report)
    path = ft.save(args.out)
    shutil.rmtree(run_dir, ignore_errors=True)
    augment = "flips" if ft.augmentation["flip"] else "no flips"
    balance = ", class-weighted loss" if ft.augmentation["balance"] else ""
    print(f"\nwrote {_shown(path)} ({ft.architecture}, {len(ft.classes)} classes, {ft.image_size} px, recipe with "
          f"{_plural(ft.recipe.finetune_epochs, 'fine-tuning epoch')}, {augment}{balance})")
    return 0


def _load_any(path: str):
    """A FineTuned (.pt) or an OnnxClassifier (.onnx), by the file's suffix."""
    if Path(path).suffix.lower() == ".onnx":
        from tl_helpers.export import OnnxClassifier

        return OnnxClassifier(path)
    from tl_helpers.finetuned import load_finetuned

    return load_finetuned(path)


def _preflight(images: list[str]) -> None:
    """Fail fast, before the model is loaded, when no input can be an image (each reason listed)."""
    from tl_helpers.imagefolder import header_problem, image_files

    files: list = []
    for item in images:
        files += [Path(item)] if not Path(item).exists() else image_files(item)
    problems = [(f, header_problem(f)) for f in files]
    if problems and all(reason for _, reason in problems):
        width = max(len(_shown(f)) for f, _ in problems)
        for f, reason in problems:
            print(f"{_shown(f):<{width}s}  skipped: {reason}")
    if not files or all(reason for _, reason in problems):
        raise DataError("None of the files could be read as an image" + (" (see the reasons above)." if files else
                                                                        ": the folders hold no image files."))


def cmd_predict(args: argparse.Namespace) -> int:
    _preflight(args.images)
    model = _load_any(args.model)
    preds = model.predict(args.images, top_k=args.top_k, skip_bad=True, tta=args.tta, progress=args.progress)
    good = [p for p in preds if p.error is None]
    width = max(len(_shown(p.file)) for p in preds)
    print(f"{'file':<{width}s}  prediction" + (" (flip TTA)" if args.tta else ""))
    for p in preds:
        if p.error:
            answer = f"skipped: {p.error}"
        elif p.top:
            answer = ", ".join(f"{c} {v:.3f}" for c, v in p.top)
        else:
            answer = f"{p.label} {p.probability:.3f}"
        print(f"{_shown(p.file):<{width}s}  {answer}")
    if args.csv:
        k = max(1, min(args.top_k, len(model.classes)))
        header = ["file", "class", "probability"] + [f"{n}_{i}" for i in range(2, k + 1)
                                                     for n in ("class", "probability")] + ["error"]
        with open(args.csv, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            for p in preds:
                pairs = p.top if p.top else ([(p.label, p.probability)] if p.error is None else [])
                cells = [v for pair in pairs for v in pair] + [""] * (2 * k - 2 * len(pairs))
                writer.writerow([_shown(p.file), *cells, p.error or ""])
        print(f"wrote {_shown(args.csv)} ({len(preds)} rows)")
    if not good:
        raise DataError("None of the files could be read as an image (see the reasons above).")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from tl_helpers.data import clipart_root
    from tl_helpers.export import compare_with_pytorch, export, export_problems, run_without_torch
    from tl_helpers.finetuned import load_finetuned
    from tl_helpers.imagefolder import image_files

    if not args.tolerance > 0:
        raise DataError(f"--tolerance {args.tolerance}: give a positive number, e.g. 1e-4.")
    ft = load_finetuned(args.model)
    suffix = ".onnx" if args.format == "onnx" else ".torchscript.pt"
    out = Path(args.out) if args.out else Path(args.model).with_suffix(suffix)
    steps = tqdm(total=3 if args.format == "onnx" else 2, desc="export", disable=not args.progress, leave=False)
    path = export(ft, out, args.format)
    steps.update()
    if args.check:
        images = image_files(args.check)
        where = "of your images"
    else:  # a few real images shipped with the package: one per class folder, whatever the model's classes
        images = [files[0] for folder in sorted(p for p in clipart_root().iterdir() if p.is_dir())
                  if (files := sorted(folder.glob("*.png")))]
        where = "packaged Clipart-8 images (--check IMAGES to use yours)"
    result = compare_with_pytorch(ft, path, images)
    steps.update()
    lines = [f"wrote {_shown(path)} ({args.format}, {path.stat().st_size / 1e6:.1f} MB)",
             f"checked on {result['n']} {where}: largest probability difference to PyTorch "
             f"{result['max_prob_diff']:.1e} (tolerance {args.tolerance:.0e}), same top class on "
             f"{result['same_top1']:.0%} of them"]
    ok = True
    if args.format == "onnx":
        lines.append(f"with its own NumPy preprocessing: largest difference "
                     f"{result['max_prob_diff_own_preprocessing']:.1e}, same top class on "
                     f"{result['same_top1_own_preprocessing']:.0%}")
        alone = run_without_torch(path, images[:4])
        steps.update()
        ok = not alone["torch_modules"] and alone["classes"] == ft.classes
        lines.append(f"runs without PyTorch (onnxruntime in a fresh process): {'yes' if ok else 'NO'}")
    steps.close()
    print("\n".join(lines))
    problems = export_problems(result, args.tolerance)
    if problems or not ok:
        print(f"failed: the exported file does not compute what the PyTorch model computes: "
              f"{'; '.join(problems) or 'it needs PyTorch'}. Do not ship it; export again (another --format, "
              f"or a newer onnx/onnxruntime), or report it with --debug output.", file=sys.stderr)
        return 1
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from tl_helpers.finetuned import load_finetuned
    from tl_helpers.imagefolder import ImageCache, scan_image_folder

    if args.top_losses < 1:
        raise DataError(f"--top-losses {args.top_losses}: give 1 or more images for the contact sheet.")
    ft = load_finetuned(args.model)
    if args.tta:
        ft.check_tta()
    images = ImageCache(ft.side)
    report = scan_image_folder(args.folder, progress=args.progress, cache=images)
    if report.skipped or report.ignored:
        print(report.summary())
        print()
    if args.leave_out:
        report = report.without(args.leave_out)
        print(f"left out: {', '.join(args.leave_out)}")
    result = ft.evaluate(report, exclude_seen=not args.include_seen, tta=args.tta, cache=images,
                         progress=args.progress)
    if result.excluded:
        print(f"left out {result.excluded} images the model was trained or validated on "
              "(--include-seen counts them, and flatters the model)")
    if args.tta:
        print("with flip test-time augmentation (each image and its mirror image, probabilities averaged)")
    print(result)
    if args.mistakes:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig = result.mistakes_figure(report.root, n=args.top_losses)
        Path(args.mistakes).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.mistakes, dpi=100)
        plt.close(fig)                                 # a program that runs on must not keep its figures
        print(f"wrote {_shown(args.mistakes)} (the {min(args.top_losses, len(result.y_true))} test images with the "
              "largest losses)")
    return 0


# --------------------------------------------------------------------------------------------------
# The parser
# --------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m tl_helpers`` (each command's ``--help`` explains every option)."""
    from tl_helpers.export import TOLERANCE

    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="python -m tl_helpers", formatter_class=formatter, epilog=EXAMPLES + "\n" + LAYOUTS,
        description=_wrap("Fine-tune a pretrained network on your own folder of images with the course's two-phase "
                    "recipe, then predict, export and evaluate. Everything runs offline."))
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--no-progress", dest="progress", action="store_false",
                       help="hide the progress bars (e.g. in logs)")
        p.add_argument("--debug", action="store_true", help="show the full Python traceback of a failure")

    p = sub.add_parser("finetune", formatter_class=formatter, help="train a classifier on a folder of images",
                       description=_wrap("Scan FOLDER (one subfolder per class, or a split you already have: see the "
                                   "layouts below), report unusable files and class sizes, split the good ones "
                                   "into train/validation/test (stratified, near-duplicates kept in one part) or "
                                   "keep the given split, decode every image once at the size training needs "
                                   "(cached), fine-tune with the course's recipe, test once on the test part and "
                                   "save the model. Checkpoints go to OUT.training/ while it trains (removed "
                                   "at the end): --resume continues an interrupted run from the last finished "
                                   "epoch."),
                       epilog="examples:\n  python -m tl_helpers finetune photos/ --out model.pt --epochs 7\n"
                              "  python -m tl_helpers finetune scans/ --no-flip --balance     text, imbalanced\n\n"
                              + LAYOUTS)
    p.add_argument("folder", help="folder of images: FOLDER/<class>/ or FOLDER/train|valid|test/<class>/")
    p.add_argument("--out", default="model.pt", metavar="FILE", help="where to save the model (default: model.pt)")
    p.add_argument("--epochs", type=int, default=None, metavar="N",
                   help=f"fine-tuning epochs through the network (default: the recipe's {RECIPE_EPOCHS}: "
                        "1 on the top layers, then all layers; 1 = top layers only)")
    p.add_argument("--image-size", type=int, default=128, metavar="PX", help="side of the square input in pixels (default: 128; "
                   "larger is slower and often better)")
    p.add_argument("--model", default="efficientnet_lite0", metavar="NAME",
                   help="pretrained network (default: efficientnet_lite0, offline; efficientnet_lite1/2 if their "
                        "weights package is installed; torchvision names need their weights file)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the split and the training (default: 0)")
    p.add_argument("--val", type=float, default=0.15, metavar="FRACTION",
                   help="fraction of images for validation (default: 0.15; of train/ when the folder gives "
                        "train/ but no validation part)")
    p.add_argument("--test", type=float, default=0.25, metavar="FRACTION",
                   help="fraction of images for the test (default: 0.25; of train/ when the folder gives no test/)")
    p.add_argument("--batch-size", type=int, default=32, metavar="N", help="images per training step (default: 32)")
    p.add_argument("--leave-out", nargs="+", metavar="CLASS", default=[],
                   help="class folders to ignore (e.g. one too small to split)")
    p.add_argument("--no-flip", action="store_true",
                   help="no horizontal flips in training (text, digits, arrows, anything with a handedness); "
                        "default: random flips")
    p.add_argument("--balance", action="store_true",
                   help="weigh the loss inversely to the class sizes (for imbalanced folders: the scan reports "
                        "the largest/smallest ratio; the test report's per-class recall shows the effect)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from OUT.training/ (only if every setting is the same; "
                        "otherwise it says what changed and starts again)")
    common(p)
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("predict", formatter_class=formatter, help="classify images with a saved model",
                       description=_wrap("Print the predicted class and its probability for each image (files that "
                                   "cannot be read are listed with the reason). MODEL is a .pt file from "
                                   "finetune or a .onnx file from export. A classifier always answers with one "
                                   "of its classes, even for an image of something else."),
                       epilog="example:\n  python -m tl_helpers predict model.pt new/ photo.jpg --top-k 3 --csv out.csv")
    p.add_argument("model", help="model file: .pt (from finetune) or .onnx (from export)")
    p.add_argument("images", nargs="+", help="image files and/or folders (searched recursively)")
    p.add_argument("--top-k", type=int, default=1, metavar="K", help="show the k most probable classes (default: 1)")
    p.add_argument("--csv", metavar="FILE", help="also write the predictions to this CSV file")
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation: average the probabilities of each image and its mirror image "
                        "(twice the computation; refused for a model trained with --no-flip)")
    common(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", formatter_class=formatter, help="export a saved model to ONNX or TorchScript",
                       description=_wrap("Write the model in a format that runs without the course's code: ONNX "
                                   "(onnxruntime, no PyTorch needed) or TorchScript (libtorch). The file is "
                                   "checked against the PyTorch model on real images: if its probabilities differ "
                                   "by more than the tolerance, or a top class differs, the command fails (exit "
                                   "code 1) with the numbers."),
                       epilog="example:\n  python -m tl_helpers export model.pt --format onnx --check photos/cats")
    p.add_argument("model", help="model file from finetune (.pt)")
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx", help="default: onnx")
    p.add_argument("--out", metavar="FILE", help="output file (default: MODEL with .onnx or .torchscript.pt)")
    p.add_argument("--check", nargs="+", metavar="IMAGE",
                   help="images or folders to compare the export with PyTorch on (default: 8 packaged images)")
    p.add_argument("--tolerance", type=float, default=TOLERANCE, metavar="X",
                   help=f"largest probability difference to PyTorch allowed on the same inputs (default: {TOLERANCE:g})")
    common(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("evaluate", formatter_class=formatter, help="test a saved model on a folder",
                       description=_wrap("Accuracy with its 95% interval, per-class recall, the confusion matrix and "
                                   "the most confused pairs on FOLDER (class subfolders named as the model's "
                                   "classes, or a split layout). Images the model was trained or validated on "
                                   "are left out, so on the training folder this is the test part again. "
                                   "--mistakes draws the test images with the largest losses."),
                       epilog="example:\n  python -m tl_helpers evaluate model.pt holdout/ --tta --mistakes mistakes.png"
                              "\n\n" + LAYOUTS)
    p.add_argument("model", help="model file from finetune (.pt)")
    p.add_argument("folder", help="folder of images: FOLDER/<class>/ or FOLDER/train|valid|test/<class>/")
    p.add_argument("--leave-out", nargs="+", metavar="CLASS", default=[],
                   help="class folders to ignore (e.g. one the model was not trained on)")
    p.add_argument("--include-seen", action="store_true",
                   help="also count images the model was trained or validated on (optimistic)")
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation: average each image's probabilities with its mirror image's")
    p.add_argument("--mistakes", metavar="PNG",
                   help="write a contact sheet of the test images with the largest losses to this file")
    p.add_argument("--top-losses", type=int, default=12, metavar="N",
                   help="how many images the contact sheet shows (default: 12)")
    common(p)
    p.set_defaults(func=cmd_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; return the exit code (0 done, 2 bad input, 1 other failure)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except BAD_INPUT as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = (f"; run the same command with --resume to continue from the last finished epoch "
                f"({_shown(training_folder(args.out))}/)" if args.command == "finetune" else "")
        print(f"interrupted{hint}", file=sys.stderr)
        return 1
    except Exception as exc:  # a failure that is not the input's fault: say so briefly
        if args.debug:
            raise
        print(f"failed: {type(exc).__name__}: {exc}\nRun again with --debug for the full traceback, and report it "
              "if the input looks right.", file=sys.stderr)
        return 1
    finally:
        sys.stdout.flush()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
