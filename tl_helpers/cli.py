"""The command line: fine-tune on a folder, predict, export, evaluate (``python -m tl_helpers ...``).

    python -m tl_helpers finetune photos/ --out model.pt
    python -m tl_helpers predict model.pt new_photos/ --top-k 3 --csv predictions.csv
    python -m tl_helpers export model.pt --format onnx
    python -m tl_helpers evaluate model.pt photos/

Exit codes: 0 done; 2 bad input (a wrong path, a folder without class subfolders, a file that is not
a model...): the message says what and what to do; 1 any other failure (``--debug`` shows the traceback).

>>> build_parser().parse_args(["predict", "model.pt", "a.jpg", "--top-k", "3"]).top_k
3
"""

from __future__ import annotations

import argparse
import csv
import sys
import textwrap
from pathlib import Path

from tl_helpers.imagefolder import DataError

BAD_INPUT = (DataError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)
EXAMPLES = """examples:
  python -m tl_helpers finetune photos/ --out model.pt          photos/cats/*.jpg, photos/dogs/*.jpg ...
  python -m tl_helpers predict model.pt new/ --top-k 3 --csv predictions.csv
  python -m tl_helpers export model.pt --format onnx            writes model.onnx, checked against PyTorch
  python -m tl_helpers predict model.onnx new/                  the same predictions, with onnxruntime
  python -m tl_helpers evaluate model.pt photos/                only images the model has not seen

exit codes: 0 done, 2 bad input (the message says what to do), 1 other failure (--debug for the traceback)
"""


def _wrap(text: str) -> str:
    return textwrap.fill(" ".join(text.split()), width=92)


def _shown(path: str | Path) -> str:
    """A path as the user would write it: relative to the current folder when it lies below it."""
    path = Path(path)
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------------

def cmd_finetune(args: argparse.Namespace) -> int:
    from tl_helpers.finetuned import finetune
    from tl_helpers.imagefolder import scan_image_folder

    report = scan_image_folder(args.folder, progress=args.progress)
    print(report.summary())
    print()
    if args.leave_out:
        report = report.without(args.leave_out)
        print(f"left out: {', '.join(args.leave_out)}")
    ft = finetune(report, model=args.model, image_size=args.image_size, epochs=args.epochs, seed=args.seed,
                  val=args.val, test=args.test, batch_size=args.batch_size, progress=args.progress)
    print()
    print(ft.history.table())
    print()
    print(ft.report)
    path = ft.save(args.out)
    print(f"\nwrote {_shown(path)} ({ft.architecture}, {len(ft.classes)} classes, {ft.image_size} px, "
          f"recipe with {ft.recipe.finetune_epochs} fine-tuning epochs)")
    return 0


def _load_any(path: str):
    """A FineTuned (.pt) or an OnnxClassifier (.onnx), by the file's suffix."""
    if Path(path).suffix.lower() == ".onnx":
        from tl_helpers.export import OnnxClassifier

        return OnnxClassifier(path)
    from tl_helpers.finetuned import load_finetuned

    return load_finetuned(path)


def cmd_predict(args: argparse.Namespace) -> int:
    model = _load_any(args.model)
    preds = model.predict(args.images, top_k=args.top_k, skip_bad=True)
    good = [p for p in preds if p.error is None]
    width = max(len(_shown(p.file)) for p in preds)
    print(f"{'file':<{width}s}  prediction")
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
    from tl_helpers.data import clipart_root
    from tl_helpers.export import compare_with_pytorch, export, run_without_torch
    from tl_helpers.finetuned import load_finetuned
    from tl_helpers.imagefolder import image_files

    ft = load_finetuned(args.model)
    suffix = ".onnx" if args.format == "onnx" else ".torchscript.pt"
    out = Path(args.out) if args.out else Path(args.model).with_suffix(suffix)
    path = export(ft, out, args.format)
    print(f"wrote {_shown(path)} ({args.format}, {path.stat().st_size / 1e6:.1f} MB)")
    if args.check:
        images = image_files(args.check)
        where = "your images"
    else:  # a few real images shipped with the package: one per class folder, whatever the model's classes
        images = [files[0] for folder in sorted(p for p in clipart_root().iterdir() if p.is_dir())
                  if (files := sorted(folder.glob("*.png")))]
        where = "packaged Clipart-8 images (--check IMAGES to use yours)"
    result = compare_with_pytorch(ft, path, images)
    print(f"checked on {result['n']} {where}: largest probability difference to PyTorch "
          f"{result['max_prob_diff']:.1e}, same top class on {result['same_top1']:.0%} of them")
    if args.format == "onnx":
        print(f"with its own NumPy preprocessing: largest difference {result['max_prob_diff_own_preprocessing']:.1e}, "
              f"same top class on {result['same_top1_own_preprocessing']:.0%}")
        alone = run_without_torch(path, images[:4])
        ok = not alone["torch_modules"] and alone["classes"] == ft.classes
        print(f"runs without PyTorch (onnxruntime in a fresh process): {'yes' if ok else 'NO'}")
        if not ok:
            return 1
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from tl_helpers.finetuned import load_finetuned
    from tl_helpers.imagefolder import scan_image_folder

    ft = load_finetuned(args.model)
    report = scan_image_folder(args.folder, progress=args.progress)
    if report.skipped or report.ignored:
        print(report.summary())
        print()
    if args.leave_out:
        report = report.without(args.leave_out)
        print(f"left out: {', '.join(args.leave_out)}")
    result = ft.evaluate(report, exclude_seen=not args.include_seen)
    if result.excluded:
        print(f"left out {result.excluded} images the model was trained or validated on "
              "(--include-seen counts them, and flatters the model)")
    print(result)
    return 0


# --------------------------------------------------------------------------------------------------
# The parser
# --------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m tl_helpers`` (each command's ``--help`` explains every option)."""
    from tl_helpers.recipe import Recipe

    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="python -m tl_helpers", formatter_class=formatter, epilog=EXAMPLES,
        description=_wrap("Fine-tune a pretrained network on your own folder of images with the course's two-phase "
                    "recipe, then predict, export and evaluate. Everything runs offline."))
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--no-progress", dest="progress", action="store_false",
                       help="hide the progress bars (e.g. in logs)")
        p.add_argument("--debug", action="store_true", help="show the full Python traceback of a failure")

    p = sub.add_parser("finetune", formatter_class=formatter, help="train a classifier on a folder of images",
                       description=_wrap("Scan FOLDER (one subfolder per class: FOLDER/cats/*.jpg, FOLDER/dogs/*.jpg), "
                                   "report unusable files, split the good ones into train/validation/test "
                                   "(stratified, near-duplicates kept in one part), fine-tune with the course's "
                                   "recipe, test once on the test part and save the model."),
                       epilog="example:\n  python -m tl_helpers finetune photos/ --out model.pt --epochs 7")
    p.add_argument("folder", help="folder with one subfolder of images per class")
    p.add_argument("--out", default="model.pt", metavar="FILE", help="where to save the model (default: model.pt)")
    p.add_argument("--epochs", type=int, default=None, metavar="N",
                   help=f"fine-tuning epochs through the network (default: the recipe's {Recipe().finetune_epochs}: "
                        "1 on the top layers, then all layers; 1 = top layers only)")
    p.add_argument("--image-size", type=int, default=128, metavar="PX", help="side of the square input in pixels (default: 128; "
                   "larger is slower and often better)")
    p.add_argument("--model", default="efficientnet_lite0", metavar="NAME",
                   help="pretrained network (default: efficientnet_lite0, offline; efficientnet_lite1/2 if their "
                        "weights package is installed; torchvision names need their weights file)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the split and the training (default: 0)")
    p.add_argument("--val", type=float, default=0.15, metavar="FRACTION", help="fraction of images for validation (default: 0.15)")
    p.add_argument("--test", type=float, default=0.25, metavar="FRACTION", help="fraction of images for the test (default: 0.25)")
    p.add_argument("--batch-size", type=int, default=32, metavar="N", help="images per training step (default: 32)")
    p.add_argument("--leave-out", nargs="+", metavar="CLASS", default=[],
                   help="class folders to ignore (e.g. one too small to split)")
    common(p)
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("predict", formatter_class=formatter, help="classify images with a saved model",
                       description=_wrap("Print the predicted class and its probability for each image (files that "
                                   "cannot be read are listed with the reason). MODEL is a .pt file from "
                                   "finetune or a .onnx file from export."),
                       epilog="example:\n  python -m tl_helpers predict model.pt new/ photo.jpg --top-k 3 --csv out.csv")
    p.add_argument("model", help="model file: .pt (from finetune) or .onnx (from export)")
    p.add_argument("images", nargs="+", help="image files and/or folders (searched recursively)")
    p.add_argument("--top-k", type=int, default=1, metavar="K", help="show the k most probable classes (default: 1)")
    p.add_argument("--csv", metavar="FILE", help="also write the predictions to this CSV file")
    common(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", formatter_class=formatter, help="export a saved model to ONNX or TorchScript",
                       description=_wrap("Write the model in a format that runs without the course's code: ONNX "
                                   "(onnxruntime, no PyTorch needed) or TorchScript (libtorch). The file is "
                                   "checked against the PyTorch model on real images."),
                       epilog="example:\n  python -m tl_helpers export model.pt --format onnx --check photos/cats")
    p.add_argument("model", help="model file from finetune (.pt)")
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx", help="default: onnx")
    p.add_argument("--out", metavar="FILE", help="output file (default: MODEL with .onnx or .torchscript.pt)")
    p.add_argument("--check", nargs="+", metavar="IMAGE",
                   help="images or folders to compare the export with PyTorch on (default: 8 packaged images)")
    common(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("evaluate", formatter_class=formatter, help="test a saved model on a folder",
                       description=_wrap("Accuracy with its 95% interval, per-class report and confusion matrix on "
                                   "FOLDER (one subfolder per class, named as the model's classes). Images the "
                                   "model was trained or validated on are left out, so on the training folder "
                                   "this is the test part again."),
                       epilog="example:\n  python -m tl_helpers evaluate model.pt holdout/")
    p.add_argument("model", help="model file from finetune (.pt)")
    p.add_argument("folder", help="folder with one subfolder of images per class")
    p.add_argument("--leave-out", nargs="+", metavar="CLASS", default=[],
                   help="class folders to ignore (e.g. one the model was not trained on)")
    p.add_argument("--include-seen", action="store_true",
                   help="also count images the model was trained or validated on (optimistic)")
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
        print("interrupted", file=sys.stderr)
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
