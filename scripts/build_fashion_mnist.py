"""Build the class-balanced Fashion-MNIST subset shipped in ``tl_helpers/assets/fashion_mnist/``.

    python scripts/build_fashion_mnist.py                       # from Debian's dataset-fashion-mnist
    python scripts/build_fashion_mnist.py --source DIR --train-per-class 600 --test-per-class 200

Reads the four IDX files of Fashion-MNIST (``train-images-idx3-ubyte.gz``... as Debian's
``dataset-fashion-mnist`` installs them under ``/usr/share/datasets/fashion-mnist``; plain or gzipped),
keeps the first ``--train-per-class`` images of every class of the official training set and the first
``--test-per-class`` of every class of the official test set (file order, so the result is
deterministic and the official train/test separation is kept), and writes ``fashion_mnist.npz``
(uint8 images 28x28, int64 labels, compressed) with ``CREDITS.md``. Fashion-MNIST: Zalando Research,
MIT licence, https://github.com/zalandoresearch/fashion-mnist.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tl_helpers.arrays import FASHION_CLASSES, read_idx_pair  # noqa: E402

DEBIAN = Path("/usr/share/datasets/fashion-mnist")
OUT = ROOT / "tl_helpers" / "assets" / "fashion_mnist"

CREDITS = """# Fashion-MNIST subset

A class-balanced subset of Fashion-MNIST (Xiao, Rasul and Vollgraf, 2017, "Fashion-MNIST: a Novel Image
Dataset for Benchmarking Machine Learning Algorithms", arXiv:1708.07747), Zalando Research, MIT licence,
https://github.com/zalandoresearch/fashion-mnist. Copied from Debian's `dataset-fashion-mnist` package by
`scripts/build_fashion_mnist.py`: the first {train} images of each class of the official training set and
the first {test} of each class of the official test set, in file order.

`fashion_mnist.npz`: `train_images` ({n_train}, 28, 28) uint8, `train_labels` ({n_train},) int64,
`test_images` ({n_test}, 28, 28) uint8, `test_labels` ({n_test},) int64. Classes 0-9: {classes}.
SHA-256 of the file: {sha}.
"""


def first_per_class(labels: np.ndarray, n: int) -> np.ndarray:
    """Indices of the first ``n`` samples of every class, in file order (fails if a class has fewer)."""
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) < n:
            raise ValueError(f"class {c} has only {len(idx)} samples, fewer than {n}")
        keep.append(idx[:n])
    return np.sort(np.concatenate(keep))


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like ``np.savez_compressed``, but byte-for-byte reproducible (fixed file dates inside the zip)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buffer.getvalue(), compresslevel=9)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEBIAN, help="folder with the four IDX files")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--train-per-class", type=int, default=600)
    parser.add_argument("--test-per-class", type=int, default=200)
    args = parser.parse_args(argv)
    if not args.source.exists():
        sys.exit(f"{args.source} does not exist: install Debian's dataset-fashion-mnist "
                 "(apt-get install dataset-fashion-mnist) or pass --source with the IDX files.")
    parts = {}
    for split, n in (("train", args.train_per_class), ("test", args.test_per_class)):
        images, labels = read_idx_pair(args.source, split)
        keep = first_per_class(labels, n)
        parts[f"{split}_images"], parts[f"{split}_labels"] = images[keep], labels[keep].astype(np.int64)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "fashion_mnist.npz"
    save_npz(path, parts)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    (args.out / "CREDITS.md").write_text(CREDITS.format(
        train=args.train_per_class, test=args.test_per_class, n_train=len(parts["train_labels"]),
        n_test=len(parts["test_labels"]), classes=", ".join(FASHION_CLASSES), sha=sha))
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} "
          f"({path.stat().st_size / 1e6:.1f} MB): {len(parts['train_labels'])} train, "
          f"{len(parts['test_labels'])} test images; sha256 {sha[:16]}")


if __name__ == "__main__":
    main()
