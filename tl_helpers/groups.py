"""Near-duplicate groups and group-aware splits: the same drawing or shot never lands in two parts.

A folder of images often holds one picture several times: a colour and a black-and-white version, a
recolouring, a re-save at another size, ``photo (1).jpg``, a burst of near-identical shots. If one copy
is in the training part and another in the test part, the test measures memory, not generalisation. So
images are first put into *groups*, and splits then move whole groups. Two images of one class join a
group when

* their pixels say so: the difference hashes of their grayscale images (:func:`dhash`) are close (a copy,
  a resize, a lighter or darker version, a burst shot), or their edge hashes (:func:`edge_hash`: where
  the outlines are, whatever their colours) are close (a recolouring, a black-and-white version);
* or their file names say so (:func:`name_key`): ``x``, ``x_bw``, ``x (1)``, ``x-copy``,
  ``bus1_bw_jarno_01`` and ``bus1_jarno_01``, ``lemon_half`` and ``lime_half``. A counter is part of the
  name: ``IMG_0001`` and ``IMG_0002`` are two shots, never one group because they share a prefix.

>>> from PIL import Image
>>> a = Image.new("L", (64, 64), 255); a.paste(0, (8, 8, 40, 40))
>>> b = a.point(lambda v: min(255, v + 30))          # the same drawing, lighter
>>> c = Image.new("L", (64, 64), 255); c.paste(0, (30, 4, 60, 60)); c.paste(255, (40, 14, 50, 50))
>>> hashes = [image_hashes(a), image_hashes(b), image_hashes(c)]
>>> near_duplicate_groups(hashes, ["box", "box_bw", "tree"]).tolist()
[0, 0, 1]
"""

from __future__ import annotations

import re
import warnings
from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageChops

# Thresholds, in bits of 256, set on 380 labelled pairs of Clipart-8 (scripts/audit_split.py --calibrate
# explains how): the largest distances with no pair of two different drawings below them, and no pair
# of distinct photos (crops of different scenes) either.
MAX_DHASH_DISTANCE = 24
MAX_EDGE_DISTANCE = 120
EDGE_BITS = 1024
MIN_COSINE = 0.88
MIN_SERIES_COSINE = 0.70  # drawings by one artist that look alike: a series (same template, pose or style)

# Words that mark a variant of the same picture, wherever they stand in the name.
VARIANT_WORDS = frozenset(
    "bw blackwhite grey gray greyscale grayscale mono monochrome outline outlined outlines lineart contour "
    "silhouette sketch colour color coloured colored colorful colourful shaded flat "
    "copy kopie copie copia duplicate dup edit edited crop cropped resized scaled rotated small large thumb "
    "thumbnail hires lowres mp portrait".split())
# Colour words: names that differ only in them are recolourings (``lemon_half`` / ``lime_half``), unless the
# name holds a counter (``red_car_001`` / ``blue_car_001`` are more likely two photos named by colour).
COLOUR_WORDS = frozenset(
    "red green blue yellow orange purple violet pink brown black white cyan magenta gold golden silver "
    "beige teal navy turquoise lime lemon peach cherry crimson scarlet".split())
_PATTERNS = [  # spellings made into one word before the name is cut into words
    (re.compile(r"(?<![a-z0-9])b[ _\-&]?(and[ _\-]?)?w(?![a-z0-9])"), " bw "),
    (re.compile(r"black[ _\-]*(and|n|&)?[ _\-]*white"), " bw "),
    (re.compile(r"line[ _\-]?art"), " lineart "),
    (re.compile(r"\(\d+\)"), " "),                      # "photo (1)": a browser's or file manager's copy
    (re.compile(r"(?<![a-z])(copy|kopie|copie|copia)[ _\-]*\d*(?![a-z0-9])"), " "),  # "photo copy 2", "- Copy"
]
TRUNCATED_LENGTH = 20  # names at least this long may have been cut short by a tool (openclipart: 24 characters)


def on_white(image: Image.Image) -> Image.Image:
    """``image`` as RGB, transparent parts composited onto white.

    >>> on_white(Image.new("RGBA", (2, 2), (255, 0, 0, 0))).getpixel((0, 0))
    (255, 255, 255)
    """
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def trim(image: Image.Image, tolerance: int = 24) -> Image.Image:
    """The square around the picture's content when it is small: a uniform border (the colour of all four
    corners) cut away.

    A drawing centred small on a white square and the same drawing filling it then hash alike. A picture
    whose content already fills three quarters of it (most drawings, and every photo, whose corners differ)
    is returned whole.

    >>> img = Image.new("RGB", (100, 100), "white"); img.paste((0, 0, 0), (40, 45, 60, 55))
    >>> trim(img).size
    (20, 20)
    """
    rgb = on_white(image)
    if max(rgb.size) > 1024:  # a big photo: hashes look at 128 pixels a side at most, so shrink it first
        rgb.thumbnail((1024, 1024), Image.Resampling.BOX)
    corners = [rgb.getpixel(xy) for xy in ((0, 0), (rgb.width - 1, 0), (0, rgb.height - 1),
                                           (rgb.width - 1, rgb.height - 1))]
    if max(max(abs(a - b) for a, b in zip(c, corners[0])) for c in corners) > tolerance:
        return rgb
    mask = ImageChops.difference(rgb, Image.new("RGB", rgb.size, corners[0])).convert("L")
    box = mask.point(lambda v: 255 if v > tolerance else 0).getbbox()
    if box is None:
        return rgb
    left, top, right, bottom = box
    side = max(right - left, bottom - top)
    if side >= 0.75 * min(rgb.size):  # the content fills the picture already: cutting would only shift it
        return rgb
    x, y = (left + right - side) // 2, (top + bottom - side) // 2
    square = Image.new("RGB", (side, side), corners[0])
    square.paste(rgb.crop((max(x, 0), max(y, 0), min(x + side, rgb.width), min(y + side, rgb.height))),
                 (max(-x, 0), max(-y, 0)))
    return square


def _to_int(bits: np.ndarray) -> int:
    return int("".join("1" if b else "0" for b in bits.ravel()), 2)


def dhash(image: Image.Image, size: int = 16) -> int:
    """Difference hash of an image: ``size * size`` bits, one per pair of horizontal neighbours.

    The image is flattened onto white (transparent parts count as background), cut to its content
    (:func:`trim`), turned to grayscale (so a colour drawing and its black-and-white version meet) and shrunk
    to ``size + 1`` by ``size``; each bit says whether a pixel is brighter than its right neighbour.

    >>> img = Image.new("RGB", (32, 32), "white"); img.paste((200, 0, 0), (4, 4, 12, 20))
    >>> bin(dhash(img) ^ dhash(img.resize((100, 100)))).count("1") <= MAX_DHASH_DISTANCE  # bits that differ
    True
    >>> dhash(img).bit_length() <= 256
    True
    """
    small = np.asarray(trim(image).convert("L").resize((size + 1, size), Image.Resampling.LANCZOS), dtype=np.int16)
    return _to_int(small[:, 1:] > small[:, :-1])


def edge_hash(image: Image.Image, size: int = 32) -> int:
    """Where the picture's strongest edges are, whatever their colours: ``size * size`` bits.

    The content (:func:`trim`) is shrunk to 128 x 128; the edge strength of each pixel is the largest
    colour difference to its right and lower neighbours (over R, G and B), summed over ``size x size``
    cells; a bit says whether its cell is among the quarter with the most edge. A recoloured drawing (a
    lemon made a lime), or its black-and-white outline, has its edges in the same places.

    >>> lemon = Image.new("RGB", (64, 64), "white")
    >>> lemon.paste((250, 220, 0), (8, 8, 40, 56)); lemon.paste((90, 60, 0), (24, 20, 56, 40))
    >>> lime = Image.new("RGB", (64, 64), "white")       # the same drawing, light and dark swapped
    >>> lime.paste((40, 120, 20), (8, 8, 40, 56)); lime.paste((190, 240, 150), (24, 20, 56, 40))
    >>> bits_apart = lambda a, b: bin(a ^ b).count("1")
    >>> bits_apart(edge_hash(lemon), edge_hash(lime)) <= MAX_EDGE_DISTANCE, bits_apart(dhash(lemon), dhash(lime))
    (True, 53)
    """
    a = np.asarray(trim(image).resize((128, 128), Image.Resampling.LANCZOS), dtype=np.float32)
    gx = np.abs(np.diff(a, axis=1))[:-1]
    gy = np.abs(np.diff(a, axis=0))[:, :-1]
    strength = np.sqrt(gx ** 2 + gy ** 2).max(axis=2)
    cells = np.asarray(Image.fromarray(strength).resize((size, size), Image.Resampling.BOX))
    return _to_int(cells > np.quantile(cells, 0.75))


def image_hashes(image: Image.Image) -> tuple[int, int]:
    """``(dhash(image), edge_hash(image))``: what :func:`near_duplicate_groups` compares."""
    return dhash(image), edge_hash(image)


def _words(stem: str) -> list[str]:
    name = stem.lower()
    for pattern, replacement in _PATTERNS:
        name = pattern.sub(replacement, name)
    return [w for w in re.split(r"[\W_]+", name) if w]


def _singular(word: str) -> str:
    return word[:-1] if len(word) >= 4 and word.isalpha() and word.endswith("s") and not word.endswith(("ss", "is", "us")) else word


def name_key(stem: str) -> str:
    """The words of a file name that say which picture it is: variant words dropped wherever they stand.

    Variant words (``bw``, ``outline``, ``copy``, ``(2)``..., :data:`VARIANT_WORDS`) are dropped, plurals made
    singular (``shoes`` -> ``shoe``), and colour words (:data:`COLOUR_WORDS`) dropped when the name holds no
    counter. Numbers stay: they tell shots and drawings apart.

    >>> name_key("bus1_bw_jarno_vasamaa_01"), name_key("bus1_jarno_vasamaa_01")
    ('bus1 jarno vasamaa 01', 'bus1 jarno vasamaa 01')
    >>> name_key("lemon_half_ganson"), name_key("Lime-Half ganson")
    ('half ganson', 'half ganson')
    >>> name_key("IMG_0001"), name_key("IMG_0001 (1)"), name_key("IMG_0001-copy"), name_key("IMG_0002")
    ('img 0001', 'img 0001', 'img 0001', 'img 0002')
    >>> name_key("red_car_001"), name_key("blue_car_001")
    ('red car 001', 'blue car 001')
    """
    words = _words(stem)
    kept = [_singular(w) for w in words if w not in VARIANT_WORDS] or words
    if not any(w.isdigit() for w in kept):
        kept = [w for w in kept if w not in COLOUR_WORDS] or kept
    return " ".join(kept)


def _truncated_pairs(keys: Sequence[str], stems: Sequence[str]) -> list[tuple[int, int]]:
    """Pairs of names that agree except for a last word cut short: ``tennis_shoe_jarno_vasama_`` and
    ``tennis_shoes_jarno_vasam_`` (only for names of at least ``TRUNCATED_LENGTH`` characters)."""
    by_head: dict[str, list[int]] = defaultdict(list)
    for i, (key, stem) in enumerate(zip(keys, stems)):
        words = key.split()
        if len(stem) >= TRUNCATED_LENGTH and len(words) >= 2 and words[-1].isalpha():
            by_head[" ".join(words[:-1])].append(i)
    pairs = []
    for members in by_head.values():
        for a, i in enumerate(members):
            for j in members[a + 1:]:
                x, y = sorted((keys[i].split()[-1], keys[j].split()[-1]), key=len)
                if len(x) >= 4 and y.startswith(x):
                    pairs.append((i, j))
    return pairs


def normalise_stem(stem: str) -> str:
    """Old name of :func:`name_key` (kept for code written against it)."""
    return name_key(stem)


def _bits(hashes: Sequence[int], n_bits: int) -> np.ndarray:
    """Hashes as a (len(hashes), n_bits) array of 0/1 float32, for Hamming distances by matrix product."""
    out = np.zeros((len(hashes), n_bits), dtype=np.float32)
    for i, h in enumerate(hashes):
        out[i] = [(h >> k) & 1 for k in range(n_bits)]
    return out


def hamming_matrix(hashes: Sequence[int], n_bits: int = 256) -> np.ndarray:
    """All pairwise Hamming distances between hashes, as an integer matrix.

    >>> hamming_matrix([0b1010, 0b1001, 0b1010], n_bits=4).tolist()
    [[0, 2, 0], [2, 0, 2], [0, 2, 0]]
    """
    b = _bits(hashes, n_bits)
    return np.rint(b @ (1 - b).T + (1 - b) @ b.T).astype(np.int32)


class DisjointSets:
    """Union-find over items 0..n-1 (path halving; the smaller root wins, so numbering is stable).

    >>> sets = DisjointSets(4)
    >>> sets.union(1, 3)
    >>> sets.numbered().tolist()
    [0, 1, 2, 1]
    """

    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self.parent[max(ri, rj)] = min(ri, rj)

    def join_equal(self, keys: Sequence) -> None:
        """Join every item with the first item that has the same key."""
        first: dict = {}
        for i, key in enumerate(keys):
            if key in first:
                self.union(first[key], i)
            else:
                first[key] = i

    def numbered(self) -> np.ndarray:
        """A group id per item: 0, 1, ... in order of first appearance."""
        number: dict[int, int] = {}
        return np.array([number.setdefault(self.find(i), len(number)) for i in range(len(self.parent))],
                        dtype=np.int64)


def _split_hashes(hashes: Sequence) -> tuple[list[int], list[int] | None]:
    """(dHashes, edge hashes or None) from a list of ints (dHashes) or of ``image_hashes`` pairs."""
    if len(hashes) and isinstance(hashes[0], (tuple, list)):
        return [int(h[0]) for h in hashes], [int(h[1]) for h in hashes]
    return [int(h) for h in hashes], None


def _close_pairs(items: np.ndarray, grey: list[int], edges: list[int] | None, features: np.ndarray | None,
                 artists: Sequence[str] | None, max_distance: int, n_bits: int, max_edge_distance: int,
                 min_cosine: float, min_series_cosine: float) -> list[tuple[int, int]]:
    """Pairs (i, j), i < j, of ``items`` that are close by any pixel measure (or a look-alike series)."""
    close = hamming_matrix([grey[i] for i in items], n_bits) <= max_distance
    if edges is not None:
        close |= hamming_matrix([edges[i] for i in items], EDGE_BITS) <= max_edge_distance
    if features is not None:
        f = features[items] / np.maximum(np.linalg.norm(features[items], axis=1, keepdims=True), 1e-12)
        cosine = f @ f.T
        close |= cosine >= min_cosine
        if artists is not None:
            who = np.array([artists[i] for i in items], dtype=object)
            close |= (cosine >= min_series_cosine) & (who[:, None] == who[None, :]) & (who != "")[:, None]
    return [(int(items[i]), int(items[j])) for i, j in zip(*np.nonzero(np.triu(close, k=1)))]


def near_duplicate_groups(hashes: Sequence, stems: Sequence[str] | None = None, labels: Sequence | None = None,
                          max_distance: int = MAX_DHASH_DISTANCE, n_bits: int = 256,
                          max_edge_distance: int = MAX_EDGE_DISTANCE, features: np.ndarray | None = None,
                          min_cosine: float = MIN_COSINE, artists: Sequence[str] | None = None,
                          min_series_cosine: float = MIN_SERIES_COSINE,
                          same_pairs: Sequence[tuple[int, int]] = ()) -> np.ndarray:
    """A group id per image (0, 1, ... in order of first appearance): images of one class that are the
    same picture by their pixels or by their names.

    ``hashes`` holds one :func:`image_hashes` pair per image (or a plain :func:`dhash` each, then only the
    grayscale hash is compared). Two images join when

    * their dHashes differ in at most ``max_distance`` bits (of ``n_bits``), or their edge hashes in at most
      ``max_edge_distance`` (of 1024), or, with ``features`` (one row per image, e.g. a backbone's pooled
      features), the cosine similarity of their rows is at least ``min_cosine``; with ``features`` and
      ``artists`` (one name per image, '' when unknown), two drawings of one artist whose cosine is at least
      ``min_series_cosine`` (a series that looks alike: the same template, pose or style);
    * with ``stems`` (file names without extension), their :func:`name_key` agree, or agree but for a last
      word cut short in a long name (``tennis_shoe_jarno_vasama_`` / ``tennis_shoes_jarno_vasam_``). A name
      with a counter stays itself: ``IMG_0001`` and ``IMG_0002`` join only if their pixels are close (a burst);
    * or ``(i, j)`` is in ``same_pairs`` (pairs a person has labelled as one picture).

    With ``labels``, only images of the same class are joined (and compared: memory grows with the
    largest class, not the whole folder).

    >>> near_duplicate_groups([0b0000, 0b0001, 0b1111], max_distance=1, n_bits=4).tolist()
    [0, 0, 1]
    >>> near_duplicate_groups([0, 15, 0], stems=["cat_bw", "cat", "cat"], labels=[0, 0, 1], max_distance=0,
    ...                       n_bits=4).tolist()
    [0, 0, 1]
    >>> near_duplicate_groups([0, 15], stems=["IMG_0001", "IMG_0002"], max_distance=0, n_bits=4).tolist()
    [0, 1]
    """
    n = len(hashes)
    sets = DisjointSets(n)
    label_list = list(labels) if labels is not None else [None] * n
    grey, edges = _split_hashes(hashes)
    feats = np.asarray(features, dtype=np.float64) if features is not None else None
    by_class: dict = defaultdict(list)
    for i, c in enumerate(label_list):
        by_class[c].append(i)
    for members in by_class.values():
        for i, j in _close_pairs(np.array(members), grey, edges, feats, artists, max_distance, n_bits,
                                 max_edge_distance, min_cosine, min_series_cosine):
            sets.union(i, j)
    if stems is not None:
        keys = [name_key(stem) for stem in stems]
        sets.join_equal(list(zip(keys, label_list)))
        for i, j in _truncated_pairs(keys, list(stems)):
            if label_list[i] == label_list[j]:
                sets.union(i, j)
    for i, j in same_pairs:
        sets.union(int(i), int(j))
    return sets.numbered()


def merge_groups(*groupings: Sequence[int]) -> np.ndarray:
    """Items joined when any of the groupings joins them; groups numbered in order of first appearance.

    >>> merge_groups(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 2])).tolist()
    [0, 0, 0, 1]
    """
    sets = DisjointSets(len(groupings[0]))
    for groups in groupings:
        sets.join_equal(np.asarray(groups).tolist())
    return sets.numbered()


def artist_groups(groups: Sequence[int], artists: Sequence[str], labels: Sequence | None = None) -> np.ndarray:
    """``groups`` coarsened so that all images of one artist (within one class) share a group.

    An empty artist name means "unknown": that image keeps its own group. This is the optional
    *artist-level* grouping: a series by one artist (same style, different drawings) is kept in one part.

    >>> artist_groups([0, 1, 2, 3], ["ann", "ann", "", ""]).tolist()
    [0, 0, 1, 2]
    """
    labels = list(labels) if labels is not None else [None] * len(groups)
    sets = DisjointSets(len(groups))
    sets.join_equal(np.asarray(groups).tolist())
    sets.join_equal([(a, c) if a else ("", i) for i, (a, c) in enumerate(zip(artists, labels))])
    return sets.numbered()


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _largest_groups(groups: np.ndarray, labels: np.ndarray, c, names: Sequence[str] | None) -> str:
    """The largest groups of class ``c`` as 'group 3 holds 12 images (a, b, c, ...)', for an error message."""
    out = []
    for g, n in Counter(groups[labels == c].tolist()).most_common(2):
        if n < 2:
            break
        members = ""
        if names is not None:
            first = [names[i] for i in np.nonzero((groups == g) & (labels == c))[0][:3]]
            members = f" ({', '.join(first)}{', ...' if n > 3 else ''})"
        out.append(f"group {g} holds {_plural(n, 'image')}{members}")
    return "; ".join(out)


def group_split(labels: Sequence[int], groups: Sequence[int], val: float = 0.15, test: float = 0.25,
                seed: int = 0, class_names: Sequence[str] | None = None,
                item_names: Sequence[str] | None = None) -> np.ndarray:
    """'train', 'val' or 'test' for every item: stratified by class as far as the groups allow, and
    no group in two parts (scikit-learn's ``StratifiedGroupKFold``, once for test, once for val).

    ``test`` and ``val`` are fractions of the whole; each fold count is rounded (0.25 -> 4 folds, one
    for test; 0.15 of the whole is 1/5 of the remaining 0.75), and which fold is held out is drawn with
    ``seed`` (scikit-learn places the largest group in the first fold whatever the seed, so taking the
    first fold would put it in every test part). ``val=0`` gives no validation part.
    Raises ``ValueError`` when there is a single class, or when a class has fewer groups (distinct
    pictures) than the parts asked for: the message names the class and its largest groups (with
    ``item_names``, e.g. file names, their first members).

    >>> labels = [0] * 12 + [1] * 12
    >>> groups = [i // 2 for i in range(24)]          # pairs of near-duplicates
    >>> parts = group_split(labels, groups, seed=0)
    >>> sorted(Counter(parts.tolist()).items())
    [('test', 6), ('train', 14), ('val', 4)]
    >>> all(len(set(parts[[g == k for g in groups]])) == 1 for k in set(groups))
    True
    """
    from sklearn.model_selection import StratifiedGroupKFold  # here, so that hashing images needs NumPy and Pillow only

    labels, groups = np.asarray(labels), np.asarray(groups)
    names = list(class_names) if class_names is not None else None
    name = (lambda c: names[c]) if names is not None else (lambda c: str(c))
    classes = sorted(set(labels.tolist()))
    if len(classes) < 2:
        only = name(classes[0]) if classes else "none"
        raise ValueError(f"Only one class ({only!r}): a classifier needs at least two classes. "
                         "Add a folder of images for each other class.")
    n_parts = 1 + (test > 0) + (val > 0)
    for c in classes:
        n_images = int((labels == c).sum())
        n_groups = len(set(groups[labels == c].tolist()))
        if n_groups >= n_parts:
            continue
        if n_groups == n_images:
            raise ValueError(f"Class {name(c)!r} has only {_plural(n_images, 'image')}, too few for a split into "
                             f"{n_parts} parts: add images to it, or remove the class folder.")
        raise ValueError(
            f"Class {name(c)!r} has {_plural(n_images, 'image')} but only {_plural(n_groups, 'distinct picture')} "
            f"once near-duplicates are grouped ({_largest_groups(groups, labels, c, item_names)}), too few for a "
            f"split into {n_parts} parts, as a group never straddles two parts. Images join a group when their "
            "pixels are nearly the same (copies, burst shots, recolourings) or their names say they are variants "
            "(x, x_bw, x (1), x-copy): add images of other scenes or drawings to the class, or remove the class "
            "folder.")
    parts = np.full(len(labels), "train", dtype=object)
    rest = np.arange(len(labels))
    rng = np.random.default_rng(seed)
    for part, fraction, of_whole in (("test", test, 1.0), ("val", val, 1.0 - test)):
        if fraction <= 0:
            continue
        n_splits = max(2, round(of_whole / fraction))
        with warnings.catch_warnings():  # "least populated class has only k members": expected for tiny classes
            warnings.simplefilter("ignore", UserWarning)
            folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
            # The held-out fold is drawn too: StratifiedGroupKFold places groups largest first and puts the
            # first into fold 0, so "always fold 0" would hold the largest group out at every seed.
            held = list(folds.split(rest, labels[rest], groups[rest]))[int(rng.integers(n_splits))][1]
        parts[rest[held]] = part
        rest = np.setdiff1d(rest, rest[held])
    return parts.astype(str)


def straddling_groups(parts: Sequence[str], groups: Sequence[int]) -> list[int]:
    """Groups that have members in more than one part (the empty list for a leak-free split).

    >>> straddling_groups(["train", "test", "train"], [0, 0, 1])
    [0]
    """
    seen: dict[int, set] = {}
    for part, group in zip(parts, groups):
        seen.setdefault(int(group), set()).add(str(part))
    return sorted(g for g, p in seen.items() if len(p) > 1)


def describe_groups(groups: Sequence[int]) -> str:
    """One line: how many items, how many groups, how many hold several items, the largest.

    >>> describe_groups([0, 0, 1, 2, 2, 2])
    '6 images in 3 groups; 2 groups hold near-duplicates; the largest has 3 images'
    >>> describe_groups([0, 1, 1])
    '3 images in 2 groups; 1 group holds near-duplicates; the largest has 2 images'
    """
    sizes = Counter(int(g) for g in groups)
    multi = sum(1 for s in sizes.values() if s > 1)
    return (f"{_plural(len(groups), 'image')} in {_plural(len(sizes), 'group')}; "
            f"{multi} {'group holds' if multi == 1 else 'groups hold'} near-duplicates; "
            f"the largest has {_plural(max(sizes.values()), 'image')}")
