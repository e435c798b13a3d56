"""Near-duplicate groups and group-aware splits: the same drawing never lands in two parts.

A dataset scraped from folders often holds one picture several times: a colour and a black-and-white
version, ``_01``/``_02`` variants, a re-save. If one copy is in the training part and another in the test
part, the test measures memory, not generalisation. So images are first put into *groups* (close
perceptual hashes, or the same file name once suffixes are stripped) and splits then move whole groups.

>>> from PIL import Image
>>> a = Image.new("L", (64, 64), 255); a.paste(0, (8, 8, 40, 40))
>>> b = a.point(lambda v: min(255, v + 30))          # the same drawing, lighter
>>> c = Image.new("L", (64, 64), 255); c.paste(0, (30, 4, 60, 60))
>>> hashes = [dhash(a), dhash(b), dhash(c)]
>>> near_duplicate_groups(hashes, ["box", "box_bw", "tree"]).tolist()
[0, 0, 1]
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from collections.abc import Sequence

import numpy as np
from PIL import Image
from sklearn.model_selection import StratifiedGroupKFold

# Suffixes that mark a variant of the same drawing: "_bw", "-outline", "_colour", " copy", "_01", "(2)".
_VARIANT = re.compile(
    r"([ _\-.]*(bw|b_w|black_?and_?white|black_?white|grey|gray|grayscale|greyscale|outline|outlined|"
    r"line|lineart|colou?r|colou?red|silhouette|copy|small|large|thumb)|[ _\-.]*\(?\d+\)?|[ _\-.]+)$"
)


def dhash(image: Image.Image, size: int = 16) -> int:
    """Difference hash of an image: ``size * size`` bits, one per pair of horizontal neighbours.

    The image is flattened onto white (transparent parts count as background), turned to grayscale
    (so a colour drawing and its black-and-white version meet) and shrunk to ``size + 1`` by ``size``;
    each bit says whether a pixel is brighter than its right neighbour.

    >>> img = Image.new("RGB", (32, 32), "white")
    >>> dhash(img) == dhash(img.resize((100, 100)))
    True
    >>> dhash(img).bit_length() <= 256
    True
    """
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    small = np.asarray(image.convert("L").resize((size + 1, size), Image.Resampling.LANCZOS), dtype=np.int16)
    bits = (small[:, 1:] > small[:, :-1]).ravel()
    return int("".join("1" if b else "0" for b in bits), 2)


def normalise_stem(stem: str) -> str:
    """A file name without the suffixes that mark variants of one drawing.

    >>> normalise_stem("orange_juice_box_bw")
    'orange_juice_box'
    >>> normalise_stem("ladybug-outline_02")
    'ladybug'
    >>> normalise_stem("T-Shirt (3)")
    't-shirt'
    """
    name = stem.lower().strip()
    while True:
        shorter = _VARIANT.sub("", name)
        if shorter == name or not shorter:
            return name
        name = shorter


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


def near_duplicate_groups(hashes: Sequence[int], stems: Sequence[str] | None = None,
                          labels: Sequence | None = None, max_distance: int = 12,
                          n_bits: int = 256) -> np.ndarray:
    """A group id per image: images join a group when their hashes differ in at most ``max_distance``
    bits, or their normalised file names (``normalise_stem``) agree. With ``labels``, only images of the
    same class are joined. Groups are numbered 0, 1, ... in order of first appearance.

    >>> near_duplicate_groups([0b0000, 0b0001, 0b1111], max_distance=1, n_bits=4).tolist()
    [0, 0, 1]
    >>> near_duplicate_groups([0, 15, 0], stems=["cat_1", "cat_2", "dog"], labels=[0, 0, 1], n_bits=4).tolist()
    [0, 0, 1]
    """
    sets = DisjointSets(len(hashes))
    same_class = (np.asarray(labels)[:, None] == np.asarray(labels)[None, :]) if labels is not None else True
    close = (hamming_matrix(hashes, n_bits) <= max_distance) & same_class
    for i, j in zip(*np.nonzero(np.triu(close, k=1))):
        sets.union(int(i), int(j))
    if stems is not None:
        keys = [(normalise_stem(stem), labels[i] if labels is not None else None) for i, stem in enumerate(stems)]
        sets.join_equal(keys)
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


def group_split(labels: Sequence[int], groups: Sequence[int], val: float = 0.15, test: float = 0.25,
                seed: int = 0, class_names: Sequence[str] | None = None) -> np.ndarray:
    """'train', 'val' or 'test' for every item: stratified by class as far as the groups allow, and
    no group in two parts (scikit-learn's ``StratifiedGroupKFold``, once for test, once for val).

    ``test`` and ``val`` are fractions of the whole; each fold count is rounded (0.25 -> 4 folds, one
    for test; 0.15 of the whole is 1/5 of the remaining 0.75). ``val=0`` gives no validation part.
    Raises ``ValueError`` when there is a single class, or when a class has fewer groups (distinct
    drawings) than the parts asked for, naming the class.

    >>> labels = [0] * 12 + [1] * 12
    >>> groups = [i // 2 for i in range(24)]          # pairs of near-duplicates
    >>> parts = group_split(labels, groups, seed=0)
    >>> sorted(Counter(parts.tolist()).items())
    [('test', 6), ('train', 14), ('val', 4)]
    >>> all(len(set(parts[[g == k for g in groups]])) == 1 for k in set(groups))
    True
    """
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
        n_groups = len(set(groups[labels == c].tolist()))
        if n_groups < n_parts:
            raise ValueError(
                f"Class {name(c)!r} has {n_groups} distinct image(s) once near-duplicates are grouped, "
                f"too few for a split into {n_parts} parts: add images to it, or remove the class folder.")
    parts = np.full(len(labels), "train", dtype=object)
    rest = np.arange(len(labels))
    for part, fraction, of_whole in (("test", test, 1.0), ("val", val, 1.0 - test)):
        if fraction <= 0:
            continue
        n_splits = max(2, round(of_whole / fraction))
        with warnings.catch_warnings():  # "least populated class has only k members": expected for tiny classes
            warnings.simplefilter("ignore", UserWarning)
            folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
            _, held = next(folds.split(rest, labels[rest], groups[rest]))
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
    """
    sizes = Counter(int(g) for g in groups)
    multi = sum(1 for s in sizes.values() if s > 1)
    return (f"{len(groups)} images in {len(sizes)} groups; {multi} groups hold near-duplicates; "
            f"the largest has {max(sizes.values())} images")
