"""Your own images: scan a folder, report its problems, split it, load the good files fast.

A folder of your own photos is rarely clean: a download that stopped half-way, a text file saved as
``.jpg``, a ``Thumbs.db``, the same photo twice, a class with two pictures. ``scan_image_folder`` opens
every file once, never stops at the first bad one, and returns a :class:`ScanReport` that lists them all
with the reason; its ``dataset()`` is an ``ImageFolder``-compatible dataset of the good files only.
``split_folder`` then splits the good files into train/val/test without a manifest: stratified by class,
with near-duplicates (``tl_helpers.groups``) kept in one part.

Two layouts are read (see :data:`LAYOUTS`): one subfolder per class (``photos/cats/*.jpg``), or a split
you already have, fastai's and Keras's usual layout (``photos/train/cats/*.jpg``, ``photos/valid/cats/``,
optionally ``photos/test/cats/``), which is then used as given. Big photos are decoded once to the size
training needs and kept in an :class:`ImageCache` (keyed by the file's SHA-256 and that size).

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
import math
import os
import threading
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# torchvision.datasets.folder.IMG_EXTENSIONS: the files ImageFolder would load.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SPLITS = ("train", "val", "test")
# Folder names that mark the parts of a split you already have (case-insensitive), and the part each one is.
PART_FOLDERS = {"train": "train", "valid": "val", "val": "val", "validation": "val", "test": "test"}
LAYOUTS = """folder layouts:
  FOLDER/<class>/*.jpg                  one subfolder per class: the split into train, validation and test
                                        is drawn (stratified, near-duplicates kept in one part)
  FOLDER/train/<class>/*.jpg            a split you already have (fastai's and Keras's layout): used as
  FOLDER/valid/<class>/*.jpg            given; 'val' or 'validation' also name the validation part, test/
  FOLDER/test/<class>/*.jpg             is optional. A missing validation or test part is drawn from
                                        train/ (the --val and --test fractions, of train/). Every class
                                        needs images in every part; part names are never read as classes.
"""
SCAN_DRAFT = 256        # the scan decodes JPEGs at reduced scale, at least this many pixels a side
WORKERS = min(8, os.cpu_count() or 1)   # threads that decode files (Pillow and hashlib release the GIL)


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
    from tl_helpers.groups import on_white

    return on_white(img)


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
    with warnings.catch_warnings():   # the size check below reports it; no warning on top
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return _check_image(path, draft)


def _check_image(path: str | Path, draft: int | None = None) -> tuple[Image.Image | None, str | None]:
    """:func:`check_image` without touching the warning filters (what the decoding threads call)."""
    path = Path(path)
    if not path.is_file():
        return None, "the file does not exist"
    if path.stat().st_size == 0:
        return None, "empty file (0 bytes): copy it again or delete it"
    limit = Image.MAX_IMAGE_PIXELS
    too_large = ("too large: over Pillow's decompression-bomb limit of {:,} pixels (PIL.Image.MAX_IMAGE_PIXELS){}; "
                 "resize it, or raise that limit if you trust the file")
    try:
        with Image.open(path) as img:
            if limit and img.width * img.height > limit:
                return None, too_large.format(limit, f": {img.width} x {img.height}")
            size = img.size if img.getexif().get(0x0112, 1) < 5 else img.size[::-1]   # as displayed
            if draft and img.format == "JPEG":
                img.draft("RGB", (draft, draft))
            img.load()
            out = _to_rgb(ImageOps.exif_transpose(img))
            out.info["original_size"] = size          # the file's own size, whatever the reduced decoding
            return out, None
    except Image.DecompressionBombError:
        return None, too_large.format(limit or 0, "")
    except UnidentifiedImageError:
        if _looks_like_text(path):
            return None, "not an image: the file holds text (a renamed .txt or .html page?)"
        return None, "not an image Pillow can read (damaged, or another file type with an image extension)"
    except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt data
        return None, f"damaged: {exc}"


def header_problem(path: str | Path) -> str | None:
    """Why a file is certainly not a usable image, from its header alone (fast: nothing is decoded), or None.

    A file that passes can still fail when decoded (a truncated download): :func:`check_image` says so.

    >>> header_problem("missing.png")
    'the file does not exist'
    """
    path = Path(path)
    if not path.is_file():
        return "the file does not exist"
    if path.stat().st_size == 0:
        return "empty file (0 bytes): copy it again or delete it"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            Image.open(path).close()
    except UnidentifiedImageError:
        return ("not an image: the file holds text (a renamed .txt or .html page?)" if _looks_like_text(path) else
                "not an image Pillow can read (damaged, or another file type with an image extension)")
    except Image.DecompressionBombError:
        return f"too large: over Pillow's decompression-bomb limit of {Image.MAX_IMAGE_PIXELS or 0:,} pixels"
    except (OSError, ValueError, SyntaxError) as exc:
        return f"damaged: {exc}"
    return None


def open_rgb(path: str | Path) -> Image.Image:
    """Open an image file as RGB at full size (see :func:`check_image`), or raise DataError.

    >>> open_rgb("missing.png")
    Traceback (most recent call last):
    ...
    tl_helpers.imagefolder.DataError: Cannot use the image missing.png: the file does not exist. ...
    """
    img, reason = check_image(path)
    if img is None:
        raise DataError(f"Cannot use the image {path}: {reason}. Replace or delete the file, then run again.")
    return img


# --------------------------------------------------------------------------------------------------
# Decoding once, at the size training needs
# --------------------------------------------------------------------------------------------------

DECODING = "r1"   # version of the reduced decoding below: part of every cache key, so a change never reuses old files


def training_side(image_size: int) -> int:
    """The shorter side, in pixels, an image is decoded to for a network input of ``image_size``.

    Training crops between 60 % and 100 % of the area (``RandomResizedCrop``), so the smallest crop is
    about 0.67 of a side: 1.5 x ``image_size`` keeps every crop at or above the network's resolution, and a
    12-megapixel photo shrinks to a few hundred pixels a side.

    >>> training_side(128), training_side(96)
    (192, 144)
    """
    return int(math.ceil(1.5 * image_size))


def shrink(img: Image.Image, side: int | None) -> Image.Image:
    """``img`` with its shorter side reduced to ``side`` (Lanczos, aspect kept); smaller images unchanged.

    >>> shrink(Image.new("RGB", (400, 300)), 150).size, shrink(Image.new("RGB", (40, 30)), 150).size
    ((200, 150), (40, 30))
    """
    if side is None or min(img.size) <= side:
        return img
    w, h = img.size
    size = (side, max(1, round(h * side / w))) if w <= h else (max(1, round(w * side / h)), side)
    return img.resize(size, Image.Resampling.LANCZOS)


def reduced_image(path: str | Path, side: int | None) -> tuple[Image.Image | None, str | None]:
    """A file decoded for a network that needs a shorter side of ``side`` pixels: (RGB image, None) or
    (None, reason). JPEGs are decoded at reduced scale (at least ``max(side, 256)`` pixels a side, which is
    also what the scan decodes), then shrunk to ``side`` (:func:`shrink`); ``side=None`` decodes at full size.
    Training, the test report, ``predict`` and ``evaluate`` all read files this way.

    >>> reduced_image("missing.jpg", 192)
    (None, 'the file does not exist')
    """
    if side is None:
        return _check_image(path)
    img, reason = _check_image(path, draft=max(side, SCAN_DRAFT))
    return (shrink(img, side), None) if img is not None else (None, reason)


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes, in hex: what identifies an image in the cache and in a model's ``seen`` list."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _cache_root() -> Path:
    """The course cache (``$TL_CACHE_DIR``, else ``~/.cache/tl_helpers``), as ``tl_helpers.runtime.cache_dir``
    finds it, without importing PyTorch (this module must not)."""
    return Path(os.environ.get("TL_CACHE_DIR") or Path.home() / ".cache" / "tl_helpers")


class ImageCache:
    """Images decoded once at the size training needs, kept on disk as small arrays.

    A 12-megapixel JPEG takes about a quarter of a second to decode; training reads every image once an
    epoch, and evaluation once more. The cache decodes each file once with :func:`reduced_image` (shorter
    side ``side``) and stores the pixels as ``<sha256 of the file>-<side>-r1.npy`` under ``folder``
    (default: ``images/`` in the course cache), so:

    - an edited file has another hash and is decoded again; a copy of a file shares its entry;
    - another ``side`` (another ``image_size``) never reads these entries: the side is in the name,
      and a stored array whose shorter side is not ``side`` (or the image's own, if smaller) is decoded again;
    - the folder is safe to delete at any time: a missing or damaged entry is decoded again.

    Entries are written atomically (a temporary file, then renamed). :meth:`warm` decodes many files in
    threads (Pillow decodes with the GIL released), :meth:`load` is the loader of a dataset.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> Image.new("RGB", (800, 600), "teal").save(folder / "a.jpg")
    >>> cache = ImageCache(150, folder / "cache")
    >>> cache.load(folder / "a.jpg").size, len(list((folder / "cache").iterdir()))
    ((200, 150), 1)
    """

    def __init__(self, side: int, folder: str | Path | None = None):
        if side < 1:
            raise ValueError(f"side={side}: give the shorter side in pixels, e.g. training_side(128).")
        self.side = int(side)
        self.folder = Path(folder) if folder is not None else _cache_root() / "images"
        self._digests: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"ImageCache(side={self.side}, folder={self.folder.name}/)"

    def remember(self, paths: Iterable[str | Path], digests: Iterable[str]) -> None:
        """Tell the cache the SHA-256 of files it will be asked for (the scan has them), so it need not hash them again."""
        self._digests.update({str(p): d for p, d in zip(paths, digests)})

    def entry(self, digest: str) -> Path:
        """Where the decoded pixels of the file with this SHA-256 are kept for this side."""
        return self.folder / f"{digest}-{self.side}-{DECODING}.npy"

    def _read(self, entry: Path) -> Image.Image | None:
        try:
            arr = np.load(entry, allow_pickle=False)
        except (OSError, ValueError, EOFError):   # missing, or damaged (e.g. a disk filled up)
            return None
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3 or min(arr.shape[:2]) > self.side:
            return None
        return Image.fromarray(arr, "RGB")

    def _write(self, entry: Path, img: Image.Image) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_name(f"{entry.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            with open(tmp, "wb") as f:
                np.save(f, np.asarray(img, dtype=np.uint8), allow_pickle=False)
            os.replace(tmp, entry)
        finally:
            tmp.unlink(missing_ok=True)

    def get(self, path: str | Path, digest: str | None = None) -> tuple[Image.Image | None, str | None]:
        """(RGB image with shorter side at most ``side``, None), decoded now or read back; or (None, reason)."""
        digest = digest or self._digests.get(str(path))
        if digest is None:
            if not Path(path).is_file():
                return None, "the file does not exist"
            digest = file_digest(path)
        entry = self.entry(digest)
        img = self._read(entry) if entry.exists() else None
        if img is not None:
            return img, None
        img, reason = reduced_image(path, self.side)
        if img is not None:
            self._write(entry, img)
        return img, reason

    def load(self, path: str | Path) -> Image.Image:
        """The image of ``path`` for training (a dataset's ``loader``), or DataError naming the file."""
        img, reason = self.get(path)
        if img is None:
            raise DataError(f"Cannot use the image {path}: {reason}. Replace or delete the file, then run again.")
        return img

    def warm(self, paths: Sequence[str | Path], digests: Sequence[str] | None = None, workers: int | None = None,
             progress: bool = False) -> int:
        """Decode every file not in the cache yet, ``workers`` threads at a time; returns how many were decoded."""
        from tqdm.auto import tqdm

        if digests is not None:
            self.remember(paths, digests)
        missing = [p for p in paths if not self.entry(self._digests.get(str(p)) or file_digest(p)).exists()]
        with warnings.catch_warnings(), ThreadPoolExecutor(max_workers=workers or WORKERS) as pool:
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            for _ in tqdm(pool.map(self.get, missing), total=len(missing), desc="decoding", disable=not progress,
                          leave=False):
                pass
        return len(missing)


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


def read_images(inputs, skip_bad: bool = False, side: int | None = None,
                workers: int | None = None) -> tuple[list[str], list[Image.Image], dict[int, str]]:
    """(names, good RGB images, {position: reason} of bad files) for paths, folders and PIL images.

    With ``side`` every image is reduced to that shorter side first, as training read it
    (:func:`reduced_image`; PIL images by :func:`shrink`). Files are decoded ``workers`` threads at a time.
    A file that cannot be used raises DataError naming it, unless ``skip_bad``.

    >>> names, images, bad = read_images([Image.new("L", (4, 4)), "missing.png"], skip_bad=True)
    >>> names, images[0].mode, bad
    (['image 0', 'missing.png'], 'RGB', {1: 'the file does not exist'})
    """
    items: list = []
    for item in inputs if isinstance(inputs, (list, tuple)) else [inputs]:
        missing = isinstance(item, (str, Path)) and not Path(item).exists()
        items += [Path(item)] if missing else image_files(item)   # a missing file is reported below
    if not items:
        raise DataError("No image given: pass image files, PIL images, or a folder that holds images.")

    def read(item) -> tuple[Image.Image | None, str | None]:
        if isinstance(item, Image.Image):
            return shrink(_to_rgb(item), side), None
        return reduced_image(item, side)

    with warnings.catch_warnings(), ThreadPoolExecutor(max_workers=workers or WORKERS) as pool:
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        decoded = list(pool.map(read, items))
    names, images, bad = [], [], {}
    for n, (item, (img, reason)) in enumerate(zip(items, decoded)):
        names.append(f"image {n}" if isinstance(item, Image.Image) else str(item))
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

    ``samples`` are the good files as (path, class index); ``hashes`` their perceptual hashes
    (:func:`tl_helpers.groups.image_hashes`: grayscale and edge hashes, for near-duplicate groups), ``sizes``
    their (width, height) as displayed (EXIF orientation applied; the full size, even where the scan decoded a
    reduced JPEG) and ``digests`` the SHA-256 of their bytes. ``skipped`` are image files that cannot be used
    (with the reason), ``ignored`` files that are not images by their extension or lie outside a class folder,
    ``duplicates`` groups of byte-identical files (``conflicts``: those whose copies sit in different
    classes), ``empty_classes`` class folders without a single good image (left out of ``classes``).
    For a folder laid out as a split you already have (``train/``, ``valid/``, ``test/``), ``parts``
    gives the part of each sample ("train", "val", "test") and ``part_folders`` the folder of each part.
    """

    root: Path
    classes: list[str]
    samples: list[tuple[Path, int]]
    hashes: list[tuple[int, int]]
    sizes: list[tuple[int, int]]
    skipped: list[Skipped] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)
    duplicates: list[list[Path]] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)
    min_per_class: int = 3
    digests: list[str] = field(default_factory=list)
    parts: list[str] | None = None
    part_folders: dict[str, str] = field(default_factory=dict)

    @property
    def targets(self) -> list[int]:
        return [t for _, t in self.samples]

    @property
    def counts(self) -> dict[str, int]:
        """Good images per class, in class order."""
        n = Counter(self.targets)
        return {c: n[i] for i, c in enumerate(self.classes)}

    @property
    def given_split(self) -> bool:
        """True when the folder is laid out as a split (``train/``, ``valid/``...) that is used as given."""
        return self.parts is not None

    def part_counts(self) -> dict[str, dict[str, int]]:
        """Good images per class in each given part ({} for a folder of class subfolders).

        >>> r = ScanReport(Path("x"), ["a", "b"], [(Path("x/train/a/1"), 0), (Path("x/valid/b/2"), 1)], [0, 0],
        ...                [(1, 1)] * 2, parts=["train", "val"], part_folders={"train": "train", "val": "valid"})
        >>> r.part_counts()
        {'train': {'a': 1, 'b': 0}, 'val': {'a': 0, 'b': 1}}
        """
        if self.parts is None:
            return {}
        out = {part: dict.fromkeys(self.classes, 0) for part in SPLITS if part in self.part_folders}
        for (_, t), part in zip(self.samples, self.parts):
            out[part][self.classes[t]] += 1
        return out

    @property
    def missing_from_parts(self) -> list[tuple[str, str]]:
        """(class, part) pairs of a given split where the class has no good image in that part."""
        return [(c, part) for part, counts in self.part_counts().items() for c, n in counts.items() if n == 0]

    @property
    def small_classes(self) -> list[str]:
        """Classes that cannot be split: fewer than ``min_per_class`` good images (one for each part of a
        drawn split), or, in a given split, no image in one of its parts."""
        if self.parts is not None:
            missing = {c for c, _ in self.missing_from_parts}
            return [c for c in self.classes if c in missing]
        return [c for c, n in self.counts.items() if n < self.min_per_class]

    def training_counts(self) -> dict[str, int]:
        """Good images per class that training can see (the ``train`` part of a given split, else all), for the
        classes that can be split (not :attr:`small_classes`)."""
        small = set(self.small_classes)
        return {c: n for c, n in self.part_counts().get("train", self.counts).items() if c not in small}

    @property
    def imbalance(self) -> float:
        """Largest class over smallest class (in :meth:`training_counts`; ``inf`` when a class has none).

        >>> r = ScanReport(Path("x"), ["a", "b", "c"], [(Path("x/a/1"), 0)] * 8 + [(Path("x/b/1"), 1)] * 4
        ...                + [(Path("x/c/1"), 2)], [0] * 13, [(1, 1)] * 13)
        >>> r.imbalance, r.small_classes          # c (1 image) cannot be split, so it is not counted
        (2.0, ['c'])
        """
        n = list(self.training_counts().values())
        if not n:
            return 1.0
        return math.inf if min(n) == 0 else max(n) / min(n)

    @property
    def conflicts(self) -> list[list[Path]]:
        """Byte-identical files filed under different classes: one of the labels is wrong."""
        cls = {Path(p): t for p, t in self.samples}
        return [group for group in self.duplicates if len({cls.get(Path(p)) for p in group}) > 1]

    def relative(self, path: Path) -> str:
        """``path`` relative to the scanned folder, with / separators (what the report prints)."""
        return Path(path).relative_to(self.root).as_posix()

    def dataset(self, transform: Callable | None = None, indices: Sequence[int] | None = None,
                loader: Callable[[str], Image.Image] | None = None) -> ImageFiles:
        """An ``ImageFolder``-compatible dataset of the good files (or of those at ``indices``); ``loader``
        reads a file (default :func:`open_rgb`, full size; an :class:`ImageCache`'s ``load`` for training)."""
        chosen = self.samples if indices is None else [self.samples[i] for i in indices]
        return ImageFiles(self.root, chosen, self.classes, transform=transform, loader=loader or open_rgb)

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

        def pick(values):
            return [values[i] for i in keep] if values else values

        return dataclasses.replace(
            self, classes=kept, samples=[(self.samples[i][0], kept.index(self.classes[self.samples[i][1]])) for i in keep],
            hashes=pick(self.hashes), sizes=pick(self.sizes), digests=pick(self.digests),
            parts=None if self.parts is None else pick(self.parts))

    def _class_table(self) -> list[str]:
        width = max([len(c) for c in self.classes] + [5])
        if self.parts is None:
            return [f"  {c:<{width}s} {n:5d}" + (f"   <- fewer than {self.min_per_class}: too small to split"
                                                  if n < self.min_per_class else "")
                    for c, n in self.counts.items()]
        table = self.part_counts()
        names = {part: self.part_folders[part] + "/" for part in table}
        cols = [max(len(names[part]), 5) for part in table]
        lines = [f"  {'class':<{width}s} " + " ".join(f"{names[part]:>{w}s}" for part, w in zip(table, cols))]
        for c in self.classes:
            missing = [names[part] for part in table if table[part][c] == 0]
            lines.append(f"  {c:<{width}s} " + " ".join(f"{table[part][c]:>{w}d}" for part, w in zip(table, cols))
                         + (f"   <- none in {', '.join(missing)}" if missing else ""))
        return lines

    def summary(self, limit: int = 10) -> str:
        """The report as text: counts per class, then each kind of problem with the files (``limit`` shown)."""
        n_files = len(self.samples) + len(self.skipped)
        lines = [f"Scanned {self.root.name}/: {n_files} image files in {len(self.classes)} classes; "
                 f"{len(self.samples)} good, {len(self.skipped)} skipped, {len(self.ignored)} other files ignored."]
        if self.parts is not None:
            given = ", ".join(f"{self.part_folders[p]}/" for p in SPLITS if p in self.part_folders)
            drawn = [p for p in ("val", "test") if p not in self.part_folders]
            lines.append(f"Laid out as a split ({given}): used as given" + (
                f"; the {' and '.join('validation' if p == 'val' else p for p in drawn)} part drawn from "
                f"{self.part_folders.get('train', 'train')}/" if drawn and "train" in self.part_folders else "") + ".")
        lines += self._class_table()
        counts = self.training_counts()
        if len(counts) > 1 and min(counts.values()) > 0:
            big = max(counts, key=counts.get)
            small = min((c for c in counts if c != big), key=counts.get)
            where = " in train/" if self.parts is not None else ""
            line = (f"Class sizes{where}: largest/smallest {self.imbalance:.1f} ({big} {counts[big]}, "
                    f"{small} {counts[small]})")
            if self.imbalance >= 2:
                line += (": imbalanced. balance=True (--balance) weighs the loss by class; the test report's "
                         "per-class recall shows what it changes")
            lines.append(line + ".")

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
        part_of = dict(zip((Path(p) for p, _ in self.samples), self.parts or []))

        def copies(group: list[Path]) -> str:
            text = " = ".join(self.relative(p) for p in group)
            spread = {part_of.get(Path(p)) for p in group}
            return text + ("   <- in two parts of the split: move one copy" if len(spread) > 1 else "")

        listing("Byte-identical files", [copies(g) for g in self.duplicates],
                "kept, always in the same part of a split" if self.parts is None else
                "kept; copies in two parts of a given split make its test easier than new images")
        listing("The same file in two classes", [" = ".join(self.relative(p) for p in g) for g in self.conflicts],
                "one label is wrong: keep the file in one class folder only")
        if self.parts is not None and self.missing_from_parts:
            missing = [f"{c} has no image in {self.part_folders[part]}/" for c, part in self.missing_from_parts]
            lines.append(f"Missing from a part: {'; '.join(missing)}. Every class needs images in every part: add "
                         "some, or leave the class out.")
        elif self.small_classes:
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


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _given_parts(root: Path, folders: Sequence[Path]) -> dict[str, Path]:
    """{part: folder} when ``root`` is laid out as a split (train/, valid/...), {} for class folders.

    Raises DataError for the mix-ups: part folders beside class folders, two folders for one part, a class
    folder that holds parts (``cats/train/``), a part without class folders, a class named like a part.
    """
    named = {f: PART_FOLDERS[f.name.lower()] for f in folders if f.name.lower() in PART_FOLDERS}
    rule = ("train, valid, val, validation and test name the parts of a split and are never read as classes "
            "(see --help for the layouts)")
    if not named:
        for f in folders:
            inner = [d.name for d in _subfolders(f) if d.name.lower() in PART_FOLDERS]
            if inner:
                raise DataError(f"{root.name}/{f.name}/{inner[0]}/: a part of a split inside a class folder. The "
                                f"split layout is {root.name}/{inner[0]}/{f.name}/ (parts outside, classes inside): "
                                f"move the folders, or rename {inner[0]}/ if it is not a part; {rule}.")
        return {}
    others = [f for f in folders if f not in named]
    if others:
        raise DataError(f"{root.name}/ mixes parts of a split ({', '.join(f.name + '/' for f in named)}) with other "
                        f"folders ({', '.join(f.name + '/' for f in others[:5])}): put every class folder inside "
                        f"each part ({root.name}/train/<class>/, {root.name}/valid/<class>/), or rename a class "
                        f"folder called {next(iter(named)).name!r}; {rule}.")
    by_part: dict[str, list[Path]] = defaultdict(list)
    for f, part in named.items():
        by_part[part].append(f)
    for part, fs in by_part.items():
        if len(fs) > 1:
            raise DataError(f"{root.name}/ has {' and '.join(f.name + '/' for f in fs)}: both name the {part} part. "
                            "Keep one (merge them, or rename the other).")
    for part, (f,) in by_part.items():
        classes = _subfolders(f)
        if not classes:
            raise DataError(f"{root.name}/{f.name}/ holds no class subfolders: in a split layout each part has one "
                            f"subfolder per class ({root.name}/{f.name}/cats/*.jpg). If {f.name!r} is a class, "
                            f"rename that folder: {rule}.")
        inner = [c.name for c in classes if c.name.lower() in PART_FOLDERS]
        if inner:
            raise DataError(f"{root.name}/{f.name}/{inner[0]}/: a part name used as a class. Move the class folders "
                            f"up one level, or rename {inner[0]}/; {rule}.")
    return {part: fs[0] for part, fs in sorted(by_part.items(), key=lambda kv: SPLITS.index(kv[0]))}


def scan_image_folder(path: str | Path, min_per_class: int = 3, progress: bool = True,
                      draft: int | None = SCAN_DRAFT, cache: ImageCache | None = None,
                      workers: int | None = None) -> ScanReport:
    """Scan a folder of images, in one pass: one subfolder per class (``ImageFolder`` layout), or a split
    you already have (``train/<class>/``, ``valid/<class>/``, optional ``test/<class>/``; :data:`LAYOUTS`).

    Every file is opened and fully decoded (:func:`check_image`), ``workers`` threads at a time; bad
    files are collected with their reason, never raised, so one damaged photo costs a line in the report
    instead of a crash half-way through training. Hidden files (``.DS_Store``...) are skipped silently;
    files that are not images by their extension, and files outside a class folder, are listed as
    ignored. Class folders whose files are all bad are left out of the classes. ``draft`` decodes big
    JPEGs at reduced size (faster); the difference hash only needs a small image. With ``cache`` (an
    :class:`ImageCache` of side 256 or less) the decoded images are also stored at the cache's size, so
    training does not decode them again. Raises FileNotFoundError / NotADirectoryError / DataError (no
    class folder at all, a layout mix-up) with a message saying what to do.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"The folder {path} does not exist: check the path (relative paths start "
                                f"from the current folder, {Path.cwd().name}/).")
    if not root.is_dir():
        raise NotADirectoryError(f"{path} is a file, not a folder: give the folder that holds one subfolder "
                                 "per class (e.g. photos/cats/*.jpg, photos/dogs/*.jpg).")
    folders = _subfolders(root)
    if not folders:
        raise DataError(f"{root.name}/ has no subfolders: put the images of each class in a subfolder named after "
                        "the class (e.g. photos/cats/*.jpg, photos/dogs/*.jpg).")
    given = _given_parts(root, folders)
    ignored = [p for p in sorted(root.iterdir()) if p.is_file() and not p.name.startswith(".")]
    candidates: list[tuple[Path, str, str | None]] = []
    class_names: set[str] = set()
    for part, part_folder in (given.items() if given else [(None, root)]):
        if part is not None:
            ignored += [p for p in sorted(part_folder.iterdir()) if p.is_file() and not p.name.startswith(".")]
        for folder in _subfolders(part_folder):
            class_names.add(folder.name)
            for file in _files(folder):
                if any(s.startswith(".") for s in file.relative_to(root).parts):
                    continue
                if file.suffix.lower() in IMAGE_EXTENSIONS:
                    candidates.append((file, folder.name, part))
                else:
                    ignored.append(file)
    report = _check_files(root, candidates, sorted(class_names), progress, draft, cache, workers)
    report.ignored = ignored + report.ignored
    report.min_per_class = min_per_class
    if given:
        report.part_folders = {part: f.name for part, f in given.items()}
    return report


def _check_files(root: Path, candidates: Sequence[tuple[Path, str, str | None]], class_order: Sequence[str],
                 progress: bool, draft: int | None, cache: ImageCache | None = None,
                 workers: int | None = None) -> ScanReport:
    """Decode every (file, class name, part) candidate once, in threads; the ScanReport of what was found."""
    from tqdm.auto import tqdm

    from tl_helpers.groups import image_hashes

    keep = cache if cache is not None and draft == SCAN_DRAFT and cache.side <= SCAN_DRAFT else None

    def check(candidate):
        file = candidate[0]
        img, reason = _check_image(file, draft=draft)
        if img is None:
            return None, reason, None
        digest = file_digest(file)
        if keep is not None and not keep.entry(digest).exists():   # the pixels training needs, from this decode
            keep._write(keep.entry(digest), shrink(img, keep.side))
        return (image_hashes(img), img.info.get("original_size", img.size)), None, digest

    good: dict[str, list[tuple[Path, int, tuple[int, int], str, str | None]]] = defaultdict(list)
    skipped, by_digest = [], defaultdict(list)
    with warnings.catch_warnings(), ThreadPoolExecutor(max_workers=workers or WORKERS) as pool:
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)   # check_image reports those files
        results = tqdm(pool.map(check, candidates), total=len(candidates), desc="scanning", disable=not progress,
                       leave=False)
        for (file, cls, part), (found, reason, digest) in zip(candidates, results):
            if found is None:
                skipped.append(Skipped(file, reason))
                continue
            by_digest[digest].append(file)
            good[cls].append((file, found[0], found[1], digest, part))
    classes = [c for c in class_order if good[c]]
    empty = [c for c in class_order if not good[c]]
    samples, hashes, sizes, digests, parts = [], [], [], [], []
    for index, cls in enumerate(classes):
        for file, h, size, digest, part in good[cls]:
            samples.append((file, index))
            hashes.append(h)
            sizes.append(size)
            digests.append(digest)
            parts.append(part)
    if cache is not None:
        cache.remember([p for p, _ in samples], digests)
    duplicates = sorted(sorted(files) for files in by_digest.values() if len(files) > 1)
    given = any(p is not None for p in parts)
    return ScanReport(root, classes, samples, hashes, sizes, skipped, [], duplicates, empty, digests=digests,
                      parts=parts if given else None)


def scan_dataset(dataset, min_per_class: int = 3, progress: bool = True, cache: ImageCache | None = None) -> ScanReport:
    """The ScanReport of an ``ImageFolder``-like dataset (``root``, ``samples``, ``classes``): its files checked.

    Classes keep the dataset's names; a class without a good file is left out (``empty_classes``).
    """
    if not all(hasattr(dataset, a) for a in ("root", "samples", "classes")):
        raise DataError(f"{type(dataset).__name__} is not an ImageFolder-like dataset (it needs root, samples and "
                        "classes): give the folder's path instead.")
    root = Path(dataset.root)
    candidates = [(Path(p), dataset.classes[t], None) for p, t in dataset.samples]
    report = _check_files(root, candidates, list(dataset.classes), progress, SCAN_DRAFT, cache)
    report.min_per_class = min_per_class
    return report


# --------------------------------------------------------------------------------------------------
# Splits without a manifest
# --------------------------------------------------------------------------------------------------

def folder_groups(report: ScanReport) -> np.ndarray:
    """Near-duplicate group id of every good image, within its class (:func:`tl_helpers.groups.near_duplicate_groups`:
    close grayscale or edge hashes, such as burst shots and recolourings, or names that say "variant":
    ``x`` / ``x_bw`` / ``x (1)`` / ``x-copy``; ``IMG_0001`` and ``IMG_0002`` are two pictures).

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
    A folder laid out as a split (``train/``, ``valid/``, ``test/``: ``report.given_split``) keeps its
    parts; a validation or test part it lacks is drawn from ``train/``, ``val`` and ``test`` being then
    fractions of ``train/``. Raises DataError when the folder has fewer than two classes, or names the
    class that is too small for the parts asked, or missing from a part of the given split.
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
    if report.parts is None:
        labels, groups, index = report.targets, folder_groups(report), list(range(len(report.samples)))
        draw = {"val": val, "test": test}
        out: dict[str, list[int]] = {k: [] for k in SPLITS}
    else:
        if "train" not in report.part_folders:
            have = ", ".join(f"{f}/" for f in report.part_folders.values())
            raise DataError(f"{report.root.name}/ has {have} but no train/: add {report.root.name}/train/<class>/ "
                            "with the training images.")
        if report.missing_from_parts:
            cls, part = report.missing_from_parts[0]
            folder = report.part_folders[part]
            raise DataError(f"Class {cls!r} has no usable image in {report.root.name}/{folder}/, a part of the split "
                            f"the folder gives: add images to {report.root.name}/{folder}/{cls}/, or leave the class "
                            f"out (without(['{cls}']), --leave-out {cls}).")
        out = {k: [i for i, p in enumerate(report.parts) if p == k] for k in SPLITS}
        draw = {k: f for k, f in (("val", val), ("test", test)) if k not in report.part_folders}
        index = out["train"]
        labels = [report.targets[i] for i in index]
        groups = folder_groups(report)[index]
        out["train"] = []
    try:
        drawn = group_split(labels, groups, val=draw.get("val", 0.0), test=draw.get("test", 0.0), seed=seed,
                            class_names=report.classes,
                            item_names=[report.relative(report.samples[i][0]) for i in index]) if draw else \
            np.full(len(index), "train")
    except ValueError as exc:
        where = f" (in {report.root.name}/{report.part_folders['train']}/)" if report.parts is not None else ""
        raise DataError(f"{exc}{where}") from None
    for i, part in zip(index, drawn):
        out[str(part)].append(i)
    return {k: sorted(v) for k, v in out.items()}


def split_leaks(report: ScanReport, parts: dict[str, list[int]]) -> list[list[str]]:
    """Near-duplicate groups (:func:`folder_groups`) with images in more than one part, as lists of relative
    paths: none for a drawn split; a split given by the folder may have some, which make its test easier."""
    from tl_helpers.groups import straddling_groups

    groups = folder_groups(report)
    where = np.full(len(report.samples), "none", dtype=object)
    for k, idx in parts.items():
        where[idx] = k
    return [[report.relative(report.samples[i][0]) for i in np.flatnonzero(groups == g)]
            for g in straddling_groups(where, groups)]


def describe_split(report: ScanReport, parts: dict[str, list[int]]) -> str:
    """A small table: images per class in each part (and, for a split the folder gives, where each part came
    from and any near-duplicates that straddle two parts).

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
    if report.parts is not None:
        train = report.part_folders.get("train", "train")
        source = [f"{k} = {report.part_folders[k]}/" if k in report.part_folders else f"{k} drawn from {train}/"
                  for k in SPLITS if parts.get(k)]
        lines.append(f"split given by the folder: {', '.join(source)}")
        leaks = split_leaks(report, parts)
        if leaks:
            lines.append(f"warning: {len(leaks)} group(s) of near-duplicates have images in two parts, e.g. "
                         f"{' ~ '.join(leaks[0][:3])}: the test measures some memory; move each group into one part.")
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
