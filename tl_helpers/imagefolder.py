"""Your own images: scan a folder (one subfolder per class), report its problems, split it, load the good files.

A folder of your own photos is rarely clean: a download that stopped half-way, a text file saved as
``.jpg``, a ``Thumbs.db``, the same photo twice, a class with two pictures. ``scan_image_folder`` opens
every file once, never stops at the first bad one, and returns a :class:`ScanReport` that lists them all
with the reason; its ``dataset()`` is an ``ImageFolder``-compatible dataset of the good files only.
``split_folder`` then splits the good files into train/val/test without a manifest: stratified by class,
with near-duplicates (``tl_helpers.groups``) kept in one part.

>>> import tempfile
>>> from PIL import Image
>>> root = Path(tempfile.mkdtemp())
>>> for name in ("cat", "dog"):
...     (root / name).mkdir()
...     Image.new("RGB", (32, 32), name == "cat" and "orange" or "brown").save(root / name / "a.png")
>>> (root / "dog" / "notes.jpg").write_text("not an image")
12
>>> report = scan_image_folder(root, progress=False)
>>> report.counts, [s.path.name for s in report.skipped]
({'cat': 1, 'dog': 1}, ['notes.jpg'])
>>> report.dataset()[0][1], report.dataset().classes
(0, ['cat', 'dog'])

This module does not import PyTorch, so a program that only runs an exported ONNX model can use
``open_rgb`` without it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# torchvision.datasets.folder.IMG_EXTENSIONS: the files ImageFolder would load.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SPLITS = ("train", "val", "test")


class DataError(ValueError):
    """A problem with the images or files you gave: the message says what it is and what to do."""


# --------------------------------------------------------------------------------------------------
# Opening one image
# --------------------------------------------------------------------------------------------------

def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB version of a decoded image: transparency onto white, 16-bit and float images scaled to 8 bits."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        scale = 255.0 if img.mode == "F" and a.max() <= 1.0 else 1 / 257  # float in [0, 1], or 16-bit range
        img = Image.fromarray(np.clip(a * scale, 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return img.convert("RGB")


def _looks_like_text(path: Path) -> bool:
    head = path.read_bytes()[:512]
    return bool(head) and all(32 <= b < 127 or b in (9, 10, 13) for b in head)


def check_image(path: str | Path, draft: int | None = None) -> tuple[Image.Image | None, str | None]:
    """Open and fully decode one file: (RGB image, None), or (None, the reason it cannot be used).

    The whole file is decoded, so a truncated download is caught here and not half-way through
    training. Images larger than Pillow's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``)
    are refused before decoding. JPEG orientation tags (phone photos) are applied. With ``draft``
    a JPEG is decoded at reduced scale, at least ``draft`` pixels a side (much faster for big photos).

    >>> check_image("missing.png")
    (None, 'the file does not exist')
    """
    path = Path(path)
    if not path.is_file():
        return None, "the file does not exist"
    if path.stat().st_size == 0:
        return None, "empty file (0 bytes): copy it again or delete it"
    limit = Image.MAX_IMAGE_PIXELS
    too_large = ("too large: over Pillow's decompression-bomb limit of {:,} pixels (PIL.Image.MAX_IMAGE_PIXELS){}; "
                 "resize it, or raise that limit if you trust the file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if limit and img.width * img.height > limit:
                    return None, too_large.format(limit, f": {img.width} x {img.height}")
                if draft and img.format == "JPEG":
                    img.draft("RGB", (draft, draft))
                img.load()
                return _to_rgb(ImageOps.exif_transpose(img)), None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return None, too_large.format(limit or 0, "")
    except UnidentifiedImageError:
        if _looks_like_text(path):
            return None, "not an image: the file holds text (a renamed .txt or .html page?)"
        return None, "not an image Pillow can read (damaged, or another file type with an image extension)"
    except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt data
        return None, f"damaged: {exc}"


def open_rgb(path: str | Path) -> Image.Image:
    """Open an image file as RGB exactly as training saw it (see :func:`check_image`), or raise DataError.

    >>> open_rgb("missing.png")
    Traceback (most recent call last):
    ...
    tl_helpers.imagefolder.DataError: Cannot use the image missing.png: the file does not exist. ...
    """
    img, reason = check_image(path)
    if img is None:
        raise DataError(f"Cannot use the image {path}: {reason}. Replace or delete the file, then run again.")
    return img


def image_files(inputs) -> list:
    """Paths, PIL images and folders as a flat list; a folder becomes its image files (recursively, sorted).

    >>> image_files([Image.new("RGB", (4, 4))])[0].size
    (4, 4)
    """
    items = inputs if isinstance(inputs, (list, tuple)) else [inputs]
    out: list = []
    for item in items:
        if isinstance(item, Image.Image):
            out.append(item)
            continue
        path = Path(item)
        if path.is_dir():
            out += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS
                          and not any(part.startswith(".") for part in p.relative_to(path).parts))
        elif not path.exists():
            raise FileNotFoundError(f"{item} does not exist: check the path of the image or folder.")
        else:
            out.append(path)
    return out


@dataclass
class Prediction:
    """A classifier's answer for one image: the top class, its probability, and the ``top`` k pairs
    (when asked for); ``error`` says why a file could not be read (then there is no label)."""

    file: str
    label: str | None
    probability: float | None
    top: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None


def read_images(inputs, skip_bad: bool = False) -> tuple[list[str], list[Image.Image], dict[int, str]]:
    """(names, good RGB images, {position: reason} of bad files) for paths, folders and PIL images.

    A file that cannot be used raises DataError naming it, unless ``skip_bad``.

    >>> names, images, bad = read_images([Image.new("L", (4, 4)), "missing.png"], skip_bad=True)
    >>> names, images[0].mode, bad
    (['image 0', 'missing.png'], 'RGB', {1: 'the file does not exist'})
    """
    names, images, bad = [], [], {}
    items: list = []
    for item in inputs if isinstance(inputs, (list, tuple)) else [inputs]:
        missing = isinstance(item, (str, Path)) and not Path(item).exists()
        items += [Path(item)] if missing else image_files(item)   # a missing file is reported below
    if not items:
        raise DataError("No image given: pass image files, PIL images, or a folder that holds images.")
    for n, item in enumerate(items):
        if isinstance(item, Image.Image):
            names.append(f"image {n}")
            images.append(_to_rgb(item))
            continue
        img, reason = check_image(item)
        names.append(str(item))
        if img is None:
            if not skip_bad:
                raise DataError(f"Cannot use the image {item}: {reason}. Replace or delete the file.")
            bad[n] = reason
        else:
            images.append(img)
    return names, images, bad


def top_predictions(names: Sequence[str], probs: np.ndarray, classes: Sequence[str], top_k: int = 1,
                    bad: dict[int, str] | None = None) -> list[Prediction]:
    """Predictions from class probabilities (one row per good image; ``bad`` positions get their error).

    >>> top_predictions(["a.jpg"], np.array([[0.2, 0.8]]), ["cat", "dog"])
    [Prediction(file='a.jpg', label='dog', probability=0.8, top=[], error=None)]
    """
    bad = bad or {}
    k = max(1, min(top_k, len(classes)))
    out, row = [], 0
    for n, name in enumerate(names):
        if n in bad:
            out.append(Prediction(name, None, None, [], bad[n]))
            continue
        p = np.asarray(probs[row], dtype=np.float64)
        order = np.argsort(-p, kind="stable")[:k]
        top = [(classes[int(i)], round(float(p[i]), 4)) for i in order]
        out.append(Prediction(name, top[0][0], top[0][1], top if top_k > 1 else [], None))
        row += 1
    return out


# --------------------------------------------------------------------------------------------------
# The dataset of good files
# --------------------------------------------------------------------------------------------------

class ImageFiles:
    """A dataset of (image, class index) pairs from a list of files: torchvision ``ImageFolder``'s interface.

    It has ``root``, ``classes``, ``class_to_idx``, ``samples`` (= ``imgs``: (path, index) pairs),
    ``targets``, ``transform`` and ``loader``, so ``DataLoader``, ``Subset`` and
    :func:`tl_helpers.data.extract_features` use it as they use an ``ImageFolder``.

    >>> ds = ImageFiles("photos", [], ["cat", "dog"])
    >>> len(ds), ds.class_to_idx
    (0, {'cat': 0, 'dog': 1})
    """

    def __init__(self, root: str | Path, samples: Sequence[tuple[str | Path, int]], classes: Sequence[str],
                 transform: Callable | None = None, target_transform: Callable | None = None,
                 loader: Callable[[str], Image.Image] = open_rgb):
        self.root = str(root)
        self.classes = list(classes)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.samples = [(str(p), int(t)) for p, t in samples]
        self.imgs = self.samples
        self.targets = [t for _, t in self.samples]
        self.transform, self.target_transform, self.loader = transform, target_transform, loader

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        img = self.loader(path)
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target

    def __repr__(self) -> str:
        return f"ImageFiles({Path(self.root).name!r}: {len(self)} images, {len(self.classes)} classes)"


# --------------------------------------------------------------------------------------------------
# The scan
# --------------------------------------------------------------------------------------------------

@dataclass
class Skipped:
    """A file that will not be used, and why."""

    path: Path
    reason: str


@dataclass
class ScanReport:
    """What :func:`scan_image_folder` found: the good images and every problem, in one pass.

    ``samples`` are the good files as (path, class index); ``hashes`` their difference hashes
    (:func:`tl_helpers.groups.dhash`, for near-duplicate groups) and ``sizes`` their (width, height).
    ``skipped`` are image files that cannot be used (with the reason), ``ignored`` files that are not
    images by their extension or lie outside a class folder, ``duplicates`` groups of byte-identical
    files (``conflicts``: those whose copies sit in different classes), ``empty_classes`` class folders
    without a single good image (left out of ``classes``).
    """

    root: Path
    classes: list[str]
    samples: list[tuple[Path, int]]
    hashes: list[int]
    sizes: list[tuple[int, int]]
    skipped: list[Skipped] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)
    duplicates: list[list[Path]] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)
    min_per_class: int = 3

    @property
    def targets(self) -> list[int]:
        return [t for _, t in self.samples]

    @property
    def counts(self) -> dict[str, int]:
        """Good images per class, in class order."""
        n = Counter(self.targets)
        return {c: n[i] for i, c in enumerate(self.classes)}

    @property
    def small_classes(self) -> list[str]:
        """Classes with fewer than ``min_per_class`` good images: too few to have one in each part of a split."""
        return [c for c, n in self.counts.items() if n < self.min_per_class]

    @property
    def conflicts(self) -> list[list[Path]]:
        """Byte-identical files filed under different classes: one of the labels is wrong."""
        return [group for group in self.duplicates if len({self._class_of(p) for p in group}) > 1]

    def _class_of(self, path: Path) -> str:
        return path.relative_to(self.root).parts[0]

    def relative(self, path: Path) -> str:
        """``path`` relative to the scanned folder, with / separators (what the report prints)."""
        return Path(path).relative_to(self.root).as_posix()

    def dataset(self, transform: Callable | None = None, indices: Sequence[int] | None = None) -> ImageFiles:
        """An ``ImageFolder``-compatible dataset of the good files (or of those at ``indices``)."""
        chosen = self.samples if indices is None else [self.samples[i] for i in indices]
        return ImageFiles(self.root, chosen, self.classes, transform=transform)

    def without(self, classes: Sequence[str]) -> ScanReport:
        """The same report with ``classes`` left out (their images dropped, the other classes renumbered).

        >>> r = ScanReport(Path("x"), ["a", "b", "c"], [(Path("x/a/1"), 0), (Path("x/c/2"), 2)], [1, 2], [(1, 1)] * 2)
        >>> [(p.name, t) for p, t in r.without(["b"]).samples]
        [('1', 0), ('2', 1)]
        """
        unknown = [c for c in classes if c not in self.classes]
        if unknown:
            raise DataError(f"No class {', '.join(map(repr, unknown))} in {self.root.name}/: its classes are "
                            f"{', '.join(self.classes)}.")
        kept = [c for c in self.classes if c not in classes]
        keep = [i for i, (_, t) in enumerate(self.samples) if self.classes[t] in kept]
        return dataclasses.replace(
            self, classes=kept, samples=[(self.samples[i][0], kept.index(self.classes[self.samples[i][1]])) for i in keep],
            hashes=[self.hashes[i] for i in keep], sizes=[self.sizes[i] for i in keep])

    def summary(self, limit: int = 10) -> str:
        """The report as text: counts per class, then each kind of problem with the files (``limit`` shown)."""
        n_files = len(self.samples) + len(self.skipped)
        lines = [f"Scanned {self.root.name}/: {n_files} image files in {len(self.classes)} classes; "
                 f"{len(self.samples)} good, {len(self.skipped)} skipped, {len(self.ignored)} other files ignored."]
        width = max([len(c) for c in self.classes] + [5])
        for c, n in self.counts.items():
            flag = f"   <- fewer than {self.min_per_class}: too small to split" if n < self.min_per_class else ""
            lines.append(f"  {c:<{width}s} {n:5d}{flag}")

        def listing(title: str, items: list[str], advice: str) -> None:
            if not items:
                return
            lines.append(f"{title} ({len(items)}): {advice}")
            lines.extend(f"  {item}" for item in items[:limit])
            if len(items) > limit:
                lines.append(f"  ... and {len(items) - limit} more")

        listing("Skipped, cannot be used", [f"{self.relative(s.path)}: {s.reason}" for s in self.skipped],
                "training leaves them out")
        listing("Ignored, not images by their extension or outside a class folder",
                [self.relative(p) for p in self.ignored], f"images must end in {', '.join(IMAGE_EXTENSIONS)}")
        listing("Empty class folders", [f"{c}/" for c in self.empty_classes],
                "left out of the classes; add images or delete the folder")
        listing("Byte-identical files", [" = ".join(self.relative(p) for p in g) for g in self.duplicates],
                "kept, always in the same part of a split")
        listing("The same file in two classes", [" = ".join(self.relative(p) for p in g) for g in self.conflicts],
                "one label is wrong: keep the file in one class folder only")
        if self.small_classes:
            lines.append(f"Too small to split: {', '.join(self.small_classes)}. Add images (a few dozen a class "
                         "is a good start) or remove the folder.")
        if len(self.classes) == 1:
            lines.append(f"Only one class ({self.classes[0]!r}): a classifier needs two or more class folders.")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def _files(folder: Path) -> list[Path]:
    """Every file under ``folder``, recursively, sorted like ImageFolder (case-sensitive, by path)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        out += [Path(dirpath) / name for name in sorted(filenames)]
    return out


def scan_image_folder(path: str | Path, min_per_class: int = 3, progress: bool = True,
                      draft: int | None = 256) -> ScanReport:
    """Scan a folder of images with one subfolder per class (``ImageFolder`` layout), in one pass.

    Every file is opened and fully decoded (:func:`check_image`); bad files are collected with their
    reason, never raised, so one damaged photo costs a line in the report instead of a crash half-way
    through training. Hidden files (``.DS_Store``...) are skipped silently; files that are not images by
    their extension, and files directly in ``path``, are listed as ignored. Class folders whose files
    are all bad are left out of the classes. ``draft`` decodes big JPEGs at reduced size (faster);
    the difference hash only needs a small image. Raises FileNotFoundError / NotADirectoryError /
    DataError (no class folder at all) with a message saying what to do.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"The folder {path} does not exist: check the path (relative paths start "
                                f"from the current folder, {Path.cwd().name}/).")
    if not root.is_dir():
        raise NotADirectoryError(f"{path} is a file, not a folder: give the folder that holds one subfolder "
                                 "per class (e.g. photos/cats/*.jpg, photos/dogs/*.jpg).")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"{root.name}/ has no subfolders: put the images of each class in a subfolder named after "
                        "the class (e.g. photos/cats/*.jpg, photos/dogs/*.jpg).")
    ignored = [p for p in sorted(root.iterdir()) if p.is_file() and not p.name.startswith(".")]
    candidates: list[tuple[Path, str]] = []
    for folder in folders:
        for file in _files(folder):
            if any(part.startswith(".") for part in file.relative_to(root).parts):
                continue
            if file.suffix.lower() in IMAGE_EXTENSIONS:
                candidates.append((file, folder.name))
            else:
                ignored.append(file)
    report = _check_files(root, candidates, [f.name for f in folders], progress, draft)
    report.ignored = ignored + report.ignored
    report.min_per_class = min_per_class
    return report


def _check_files(root: Path, candidates: Sequence[tuple[Path, str]], class_order: Sequence[str], progress: bool,
                 draft: int | None) -> ScanReport:
    """Decode every (file, class name) candidate once; the ScanReport of what was found."""
    from tqdm.auto import tqdm

    from tl_helpers.groups import dhash

    good: dict[str, list[tuple[Path, int, tuple[int, int]]]] = defaultdict(list)
    skipped, by_digest = [], defaultdict(list)
    for file, cls in tqdm(candidates, desc="scanning", disable=not progress, leave=False):
        img, reason = check_image(file, draft=draft)
        if img is None:
            skipped.append(Skipped(file, reason))
            continue
        by_digest[hashlib.sha256(file.read_bytes()).hexdigest()].append(file)
        good[cls].append((file, dhash(img), img.size))
    classes = [c for c in class_order if good[c]]
    empty = [c for c in class_order if not good[c]]
    samples, hashes, sizes = [], [], []
    for index, cls in enumerate(classes):
        for file, h, size in good[cls]:
            samples.append((file, index))
            hashes.append(h)
            sizes.append(size)
    duplicates = sorted(sorted(files) for files in by_digest.values() if len(files) > 1)
    return ScanReport(root, classes, samples, hashes, sizes, skipped, [], duplicates, empty)


def scan_dataset(dataset, min_per_class: int = 3, progress: bool = True) -> ScanReport:
    """The ScanReport of an ``ImageFolder``-like dataset (``root``, ``samples``, ``classes``): its files checked.

    Classes keep the dataset's names; a class without a good file is left out (``empty_classes``).
    """
    if not all(hasattr(dataset, a) for a in ("root", "samples", "classes")):
        raise DataError(f"{type(dataset).__name__} is not an ImageFolder-like dataset (it needs root, samples and "
                        "classes): give the folder's path instead.")
    root = Path(dataset.root)
    candidates = [(Path(p), dataset.classes[t]) for p, t in dataset.samples]
    report = _check_files(root, candidates, list(dataset.classes), progress, draft=256)
    report.min_per_class = min_per_class
    return report


# --------------------------------------------------------------------------------------------------
# Splits without a manifest
# --------------------------------------------------------------------------------------------------

def folder_groups(report: ScanReport) -> np.ndarray:
    """Near-duplicate group id of every good image (close hashes or the same file name, within a class).

    >>> folder_groups(ScanReport(Path("x"), ["a"], [(Path("x/a/cat.png"), 0), (Path("x/a/cat_bw.png"), 0)],
    ...                          [0, 2 ** 200], [(8, 8)] * 2)).tolist()
    [0, 0]
    """
    from tl_helpers.groups import near_duplicate_groups

    return near_duplicate_groups(report.hashes, [Path(p).stem for p, _ in report.samples], report.targets)


def split_folder(report: ScanReport, val: float = 0.15, test: float = 0.25, seed: int = 0) -> dict[str, list[int]]:
    """Train/val/test indices into ``report.samples``, stratified by class, near-duplicates in one part.

    No manifest needed: the split is drawn from the files with ``seed`` (the same folder and seed give
    the same split). ``val`` and ``test`` are fractions of all images (``val=0``: no validation part).
    Raises DataError when the folder has fewer than two classes, or names the class that is too small
    for the parts asked.
    """
    from tl_helpers.groups import group_split

    if not report.samples:
        raise DataError(f"{report.root.name}/ has no usable image: see the scan report for why each file was skipped.")
    if len(report.classes) < 2:
        raise DataError(f"{report.root.name}/ has only one class ({report.classes[0]!r}): a classifier needs at "
                        "least two. Add a subfolder of images for each other class.")
    if not (0 <= val < 1 and 0 < test < 1 and val + test < 1):
        raise DataError(f"val={val} and test={test}: give fractions with 0 <= val, 0 < test and val + test < 1 "
                        "(e.g. val=0.15, test=0.25).")
    try:
        parts = group_split(report.targets, folder_groups(report), val=val, test=test, seed=seed,
                            class_names=report.classes)
    except ValueError as exc:
        raise DataError(str(exc)) from None
    return {k: [i for i, p in enumerate(parts) if p == k] for k in SPLITS}


def describe_split(report: ScanReport, parts: dict[str, list[int]]) -> str:
    """A small table: images per class in each part.

    >>> r = ScanReport(Path("x"), ["a", "b"], [(Path(f"x/{i}"), i % 2) for i in range(4)], [0] * 4, [(1, 1)] * 4)
    >>> print(describe_split(r, {"train": [0, 1], "val": [], "test": [2, 3]}))
    class  train  val  test
    a          1    0     1
    b          1    0     1
    total      2    0     2
    """
    width = max([len(c) for c in report.classes] + [5])
    lines = [f"{'class':<{width}s}  train  val  test"]
    for index, cls in enumerate(report.classes):
        n = [sum(report.samples[i][1] == index for i in parts.get(k, [])) for k in SPLITS]
        lines.append(f"{cls:<{width}s}  {n[0]:5d}  {n[1]:3d}  {n[2]:4d}")
    lines.append(f"{'total':<{width}s}  {len(parts.get('train', [])):5d}  {len(parts.get('val', [])):3d}  "
                 f"{len(parts.get('test', [])):4d}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# An example folder with the usual problems
# --------------------------------------------------------------------------------------------------

EXAMPLE_MARKER = ".tl_helpers_example"


def write_example_folder(dest: str | Path, classes: Sequence[str] = ("beverages", "birds", "fruit", "vehicles"),
                         per_class: int = 40, tiny_class: str | None = "flowers", tiny_size: int = 2,
                         problems: bool = True, new_per_class: int = 2) -> tuple[Path, list[Path]]:
    """Write a plain folder of JPEGs (one subfolder per class, no manifest) from the packaged Clipart-8.

    Each class gets ``per_class`` images, taken as whole near-duplicate groups (the manifest's ``group``),
    and ``tiny_class`` only ``tiny_size``. With ``problems`` a few files are planted as in real folders:
    a damaged (truncated) JPEG, a text file named ``.jpg``, a byte-identical copy and a ``notes.txt``.
    ``new_per_class`` images of each class from groups *not* in the folder are written to
    ``dest/../new/``, for predictions on images the model has never seen. ``dest`` is recreated;
    a folder this function did not write is never deleted. Returns (folder, new image paths).
    """
    import shutil

    from tl_helpers.data import clipart_root, read_manifest

    dest = Path(dest)
    new_dir = dest.parent / "new"
    for folder in (dest, new_dir):
        if folder.exists():
            if not (folder / EXAMPLE_MARKER).exists():
                raise DataError(f"{folder} exists and was not written by write_example_folder: choose another "
                                "destination (it is deleted and rewritten each time).")
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        (folder / EXAMPLE_MARKER).write_text("written by tl_helpers.imagefolder.write_example_folder\n")
    rows = sorted(read_manifest(), key=lambda r: (r["class"], int(r["group"]), r["file"]))
    new: list[Path] = []
    for cls in [*classes, *([tiny_class] if tiny_class else [])]:
        quota = tiny_size if cls == tiny_class else per_class
        by_group: dict[str, list[dict]] = defaultdict(list)
        for row in rows:
            if row["class"] == cls:
                by_group[row["group"]].append(row)
        if not by_group:
            raise DataError(f"Clipart-8 has no class {cls!r}.")
        taken, spare = [], []
        for group in by_group.values():
            (taken if len(taken) + len(group) <= quota else spare).extend(group)
        (dest / cls).mkdir()
        for row in taken:
            Image.open(clipart_root() / row["file"]).convert("RGB").save(
                dest / cls / (Path(row["file"]).stem + ".jpg"), quality=90)
        if cls != tiny_class:
            for row in spare[::max(1, len(spare) // new_per_class)][:new_per_class]:
                path = new_dir / (Path(row["file"]).stem + ".jpg")
                Image.open(clipart_root() / row["file"]).convert("RGB").save(path, quality=90)
                new.append(path)
    if problems:
        first = sorted((dest / classes[0]).glob("*.jpg"))
        data = first[0].read_bytes()
        (dest / classes[0] / f"{first[0].stem}_download.jpg").write_bytes(data[: len(data) // 2])  # truncated
        (dest / classes[-1] / "recipe.jpg").write_text("<html><body>Not an image: a web page saved as .jpg</body></html>")
        shutil.copyfile(first[1], dest / classes[0] / f"copy of {first[1].name}")
        (dest / "notes.txt").write_text("Photos for the classifier.\n")
    return dest, sorted(new)
