"""The course's data: the Clipart dataset, its fixed split, transforms, loaders and cached features.

>>> from tl_helpers.data import clipart_splits, eval_transform
>>> splits = clipart_splits(eval_transform(128))
>>> len(splits["train"]), len(splits["val"]), len(splits["test"])
(298, 74, 125)
>>> splits["train"].classes[:3]
['beverages', 'birds', 'bugs']
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import datasets
from torchvision.transforms import v2
from tqdm.auto import tqdm

from tl_helpers.files import atomic_write
from tl_helpers.groups import group_split

SPLITS = ("train", "val", "test")


def clipart_root(name: str = "clipart8") -> Path:
    """Folder of a Clipart dataset shipped inside the package (ImageFolder layout)."""
    return Path(str(resources.files("tl_helpers") / "assets" / name))


def load_image(path: str | Path) -> Image.Image:
    """Open an image file as RGB, with an error that says which file and what to do.

    >>> load_image(clipart_root() / "birds" / "nonexistent.png")
    Traceback (most recent call last):
    ...
    FileNotFoundError: ...
    """
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError:
        raise
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ValueError(
            f"Cannot read the image {path} ({exc}). The file is damaged or not an image: "
            "delete it or replace it, then run the cell again."
        ) from exc


def stratified_split(labels: Sequence[int | str], seed: int = 0, val: float = 0.15,
                     test: float = 0.25, groups: Sequence[int] | None = None) -> dict[str, list[int]]:
    """Split indices into train/val/test with every class in about the same proportions.

    With ``groups`` (one group id per item, e.g. from ``tl_helpers.groups.near_duplicate_groups``), a group
    never straddles two parts: near-duplicates stay together (``tl_helpers.groups.group_split``). The same
    inputs and ``seed`` always give the same split; the three parts are disjoint.

    >>> parts = stratified_split(["a"] * 8 + ["b"] * 8, seed=0, val=0.25, test=0.25)
    >>> [len(parts[k]) for k in ("train", "val", "test")]
    [8, 4, 4]
    """
    if groups is not None:
        codes = {c: i for i, c in enumerate(sorted(set(labels)))}
        parts = group_split([codes[c] for c in labels], groups, val=val, test=test, seed=seed,
                            class_names=[str(c) for c in codes])
        return {k: [i for i, p in enumerate(parts) if p == k] for k in SPLITS}
    idx = list(range(len(labels)))
    rest, test_idx = train_test_split(idx, test_size=test, stratify=labels, random_state=seed)
    rest_labels = [labels[i] for i in rest]
    train_idx, val_idx = train_test_split(rest, test_size=val / (1 - test), stratify=rest_labels,
                                          random_state=seed)
    return {"train": sorted(train_idx), "val": sorted(val_idx), "test": sorted(test_idx)}


def cv_split(labels: Sequence[int | str], groups: Sequence[int], fold: int, folds: int = 5, seed: int = 0,
             val: float = 0.25) -> dict[str, list[int]]:
    """Part ``fold`` of grouped, stratified ``folds``-fold cross-validation, as train/val/test indices.

    The items are dealt into ``folds`` parts of whole groups with the classes in about the same
    proportions (scikit-learn's ``StratifiedGroupKFold``, shuffled with ``seed``); fold ``f`` tests on part
    ``f``, so the test parts of the folds are disjoint and together hold every item once. The rest is split
    the same way into train and val (about ``val`` of it: 1/4 gives 60/20/20 overall), also whole groups,
    and everything a method chooses (epochs, rates, C) is chosen on that val part: nested inside the fold,
    never on a test part.

    >>> labels = [i % 2 for i in range(40)]
    >>> parts = [cv_split(labels, groups=list(range(40)), fold=f) for f in range(5)]
    >>> [len(p["train"]) for p in parts], [len(p["val"]) for p in parts], [len(p["test"]) for p in parts]
    ([24, 24, 24, 24, 24], [8, 8, 8, 8, 8], [8, 8, 8, 8, 8])
    >>> sorted(i for p in parts for i in p["test"]) == list(range(40))
    True
    """
    import numpy as np
    from sklearn.model_selection import StratifiedGroupKFold

    if not 0 <= fold < folds:
        raise ValueError(f"fold={fold}: give a fold between 0 and {folds - 1} ({folds}-fold cross-validation).")
    if not 0 < val < 1:
        raise ValueError(f"val={val}: give the validation share of each fold's learning part, e.g. 0.25.")
    y, g = np.asarray(labels), np.asarray(groups)
    outer = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    learn, test = list(outer.split(np.zeros(len(y)), y, g))[fold]
    inner = StratifiedGroupKFold(n_splits=max(2, round(1 / val)), shuffle=True, random_state=seed * 1000 + fold)
    train, val_idx = next(inner.split(np.zeros(len(learn)), y[learn], g[learn]))
    return {"train": sorted(int(i) for i in learn[train]), "val": sorted(int(i) for i in learn[val_idx]),
            "test": sorted(int(i) for i in test)}


def read_manifest(root: Path | None = None) -> list[dict[str, str]]:
    """Rows of the dataset's ``manifest.csv``: file, class, source, sha256, group, split."""
    root = root or clipart_root()
    with open(root / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def dataset_fingerprint(root: Path | None = None) -> str:
    """A short hash of the manifest's files and near-duplicate groups: results computed on another version
    of the dataset (other files, other groups, hence other splits) can be told apart and never reused.

    >>> len(dataset_fingerprint())
    12
    """
    rows = read_manifest(root)
    text = "\n".join(f"{r['file']},{r.get('group', '')}" for r in rows)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def clipart_dataset(transform: Callable | None = None, root: Path | None = None) -> datasets.ImageFolder:
    """The whole Clipart dataset as a torchvision ``ImageFolder`` (classes sorted by name)."""
    root = root or clipart_root()
    return datasets.ImageFolder(str(root), transform=transform, loader=load_image)


def manifest_column(dataset: datasets.ImageFolder, column: str) -> list[str]:
    """One column of the manifest (``split``, ``group``...) in the dataset's own sample order."""
    root = Path(dataset.root)
    value_of = {row["file"]: row[column] for row in read_manifest(root)}
    return [value_of[Path(path).relative_to(root).as_posix()] for path, _ in dataset.samples]


def split_indices(dataset: datasets.ImageFolder, seed: int | None = None,
                  fold: int | None = None, folds: int = 5) -> dict[str, list[int]]:
    """Train/val/test indices into ``dataset``, with near-duplicates (the manifest's ``group``) never in two parts.

    ``seed=None`` gives the fixed split stored in the manifest (the one the notebooks use);
    an integer draws a new split of whole groups, stratified by class, for repeating an experiment.
    ``fold=f`` gives fold ``f`` of the grouped ``folds``-fold cross-validation that ``make bench`` reports
    (:func:`cv_split`, shuffled with ``seed`` or 0): the folds' test parts are disjoint.
    """
    if fold is not None:
        groups = [int(g) for g in manifest_column(dataset, "group")]
        return cv_split(dataset.targets, groups, fold, folds=folds, seed=seed or 0)
    if seed is not None:
        groups = [int(g) for g in manifest_column(dataset, "group")]
        return stratified_split(dataset.targets, seed=seed, groups=groups)
    parts: dict[str, list[int]] = {k: [] for k in SPLITS}
    for i, part in enumerate(manifest_column(dataset, "split")):
        parts[part].append(i)
    return parts


def clipart_splits(eval_tf: Callable, train_tf: Callable | None = None, seed: int | None = None,
                   root: Path | None = None, fold: int | None = None) -> dict[str, Subset]:
    """The Clipart dataset split three ways: ``train`` uses ``train_tf`` (or ``eval_tf``), the rest ``eval_tf``.

    ``seed`` and ``fold`` choose the split as in :func:`split_indices` (default: the fixed split of the
    manifest). Each part is a ``Subset`` with ``.classes`` and ``.targets`` added for convenience.
    """
    train_set = clipart_dataset(train_tf or eval_tf, root)
    eval_set = clipart_dataset(eval_tf, root) if train_tf is not None else train_set
    parts = split_indices(train_set, seed, fold)
    out = {}
    for name, idx in parts.items():
        subset = Subset(train_set if name == "train" else eval_set, idx)
        subset.classes = train_set.classes
        subset.targets = [train_set.targets[i] for i in idx]
        out[name] = subset
    return out


def eval_transform(image_size: int = 224, resize_size: int | None = None,
                   mean: Sequence[float] = (0.5, 0.5, 0.5), std: Sequence[float] = (0.5, 0.5, 0.5),
                   interpolation: v2.InterpolationMode = v2.InterpolationMode.BILINEAR) -> v2.Compose:
    """Evaluation preprocessing: resize the short side, centre-crop, scale to [0, 1] floats, normalise.

    With ``resize_size=None`` the image is resized straight to ``image_size`` (the Clipart images are
    square already). The default mean/std fit EfficientNet-Lite; pass ``Pretrained.mean/std`` otherwise
    (``load_pretrained`` builds the whole transform the weights ask for, ``interpolation`` included).

    A PIL image is resized and cropped by Pillow, as torchvision's own presets do, and a tensor in float32:
    both give the same pixels on every CPU. (torchvision's resize of a *uint8 tensor* has a fast path for
    AVX2 processors whose rounding differs by a level or two of 255 from other processors', so a model
    would see other inputs, and print other numbers, on a learner's laptop.)

    >>> eval_transform(64)(torch.zeros(3, 80, 80, dtype=torch.uint8)).shape
    torch.Size([3, 64, 64])
    """
    return v2.Compose([
        v2.ToDtype(torch.float32, scale=True),   # tensors only: a PIL image passes through to Pillow's resize
        v2.Resize(resize_size or image_size, interpolation=interpolation, antialias=True),
        v2.CenterCrop(image_size),
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(mean), list(std)),
    ])


def train_transform(image_size: int = 224, mean: Sequence[float] = (0.5, 0.5, 0.5),
                    std: Sequence[float] = (0.5, 0.5, 0.5), scale: tuple[float, float] = (0.6, 1.0)) -> v2.Compose:
    """Training preprocessing with augmentation: random resized crop and horizontal flip.

    Resizing happens on the PIL image (or a float tensor), as in :func:`eval_transform`.

    >>> train_transform(64)(torch.zeros(3, 80, 80, dtype=torch.uint8)).shape
    torch.Size([3, 64, 64])
    """
    return v2.Compose([
        v2.ToDtype(torch.float32, scale=True),   # tensors only: a PIL image passes through to Pillow's resize
        v2.RandomResizedCrop(image_size, scale=scale, antialias=True),
        v2.RandomHorizontalFlip(),
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(mean), list(std)),
    ])


def make_loader(dataset: Dataset, batch_size: int = 32, train: bool = False, num_workers: int = 0,
                seed: int = 0) -> DataLoader:
    """A DataLoader: shuffled (with a seeded generator) for training, in order for evaluation.

    ``num_workers=0`` is the default because the data is small and worker processes are a common
    source of errors on Windows and in notebooks.
    """
    generator = torch.Generator().manual_seed(seed) if train else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=train, num_workers=num_workers,
                      generator=generator, drop_last=False)


def _samples_of(dataset: Dataset) -> tuple[list, Callable | None]:
    """(list of (path, label), transform) of an ImageFolder or a Subset of one."""
    if isinstance(dataset, Subset):
        samples, tf = _samples_of(dataset.dataset)
        return [samples[i] for i in dataset.indices], tf
    return list(dataset.samples), dataset.transform


# Transforms that draw at random (augmentation), besides every class whose name starts with "Random".
AUGMENTING = ("ColorJitter", "RandAugment", "AutoAugment", "TrivialAugmentWide", "AugMix", "ElasticTransform",
              "ScaleJitter", "GaussianNoise")


def random_transforms(transform: Callable | None) -> list[str]:
    """The random (augmenting) steps of ``transform``, found by walking its Compose (and RandomApply...).

    >>> random_transforms(train_transform(64))
    ['RandomResizedCrop', 'RandomHorizontalFlip']
    >>> random_transforms(eval_transform(64))
    []
    """
    found: list[str] = []

    def walk(t) -> None:
        name = type(t).__name__
        sigma = getattr(t, "sigma", None)
        blur = name == "GaussianBlur" and sigma is not None and len(set(sigma)) > 1
        if name.startswith("Random") or name in AUGMENTING or blur:
            found.append(name)
        for child in getattr(t, "transforms", None) or []:
            walk(child)

    if transform is not None:
        walk(transform)
    return found


def _fingerprint(model: nn.Module, dataset: Dataset) -> str:
    """Key of the feature cache: the model's class, structure and weights, the transform and the image files."""
    h = hashlib.sha256()
    h.update(f"{type(model).__module__}.{type(model).__qualname__}\n{model!r}".encode())
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    samples, tf = _samples_of(dataset)
    h.update(repr(tf).encode())
    for path, label in samples:
        stat = Path(path).stat()
        h.update(f"{Path(path).name}|{label}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


@torch.no_grad()
def compute_features(backbone: nn.Module, dataset: Dataset, batch_size: int = 32,
                     device: torch.device | str = "cpu", progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``backbone`` (in eval mode) over ``dataset``; return (features, labels) on the CPU."""
    backbone.eval().to(device)
    feats, labels = [], []
    for x, y in tqdm(make_loader(dataset, batch_size), desc="features", disable=not progress, leave=False):
        feats.append(backbone(x.to(device)).flatten(1).cpu())
        labels.append(y)
    return torch.cat(feats), torch.cat(labels)


def extract_features(backbone: nn.Module, dataset: Dataset, cache: Path | str | None = None,
                     batch_size: int = 32, device: torch.device | str = "cpu",
                     progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled backbone features for every image of ``dataset``, cached on disk.

    The cache file is named by a hash of the backbone's class, structure (``repr``) and weights, the
    dataset's transform and its image files, so a rerun reads the features back in milliseconds and any
    change (another model or head, other weights, another resolution, an edited image) recomputes them.
    ``cache`` is a folder (default: the course cache); pass ``cache=False`` to skip it. A cached
    dataset's transform must be deterministic: a random (augmenting) one raises a ValueError, since the
    cache would freeze one random draw. ``backbone`` should output one vector per image, e.g. a classifier
    whose head was replaced by ``nn.Identity()``.

    >>> from tl_helpers.models import load_pretrained
    >>> pre = load_pretrained()
    >>> pre.model._fc = nn.Identity()
    >>> X, y = extract_features(pre.model, clipart_splits(eval_transform(128))["val"])
    >>> X.shape
    torch.Size([74, 1280])
    """
    if cache is False:
        return compute_features(backbone, dataset, batch_size, device, progress)
    augmenting = random_transforms(_samples_of(dataset)[1])
    if augmenting:
        raise ValueError(
            f"The dataset's transform is random ({', '.join(augmenting)}): cached features would freeze one "
            "random draw of each image, and augmentation only helps when the images go through the network "
            "again every epoch (fine-tuning). Extract features with the evaluation transform, e.g. "
            "clipart_splits(eval_transform(image_size, mean=pre.mean, std=pre.std)).")
    if cache is None:
        from tl_helpers.runtime import cache_dir
        cache = cache_dir("features")
    path = Path(cache) / f"{_fingerprint(backbone, dataset)}.pt"
    if path.exists():
        saved = torch.load(path, weights_only=True)
        return saved["features"], saved["labels"]
    feats, labels = compute_features(backbone, dataset, batch_size, device, progress)
    atomic_write(path, {"features": feats, "labels": labels})   # a crash never leaves a half-written file
    return feats, labels
