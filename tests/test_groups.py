"""Near-duplicate groups and group-aware splits (tl_helpers.groups)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from PIL import Image, ImageOps

from tl_helpers.groups import dhash, group_split, hamming_matrix, near_duplicate_groups, normalise_stem, straddling_groups


def drawing(seed: int) -> Image.Image:
    """A random blocky colour drawing on white, 64 px."""
    rng = np.random.default_rng(seed)
    img = np.full((64, 64, 3), 255, dtype=np.uint8)
    for _ in range(6):
        x, y = rng.integers(0, 48, size=2)
        img[y:y + 16, x:x + 16] = rng.integers(0, 200, size=3)
    return Image.fromarray(img)


def test_a_grayscale_and_a_resized_copy_are_near_duplicates_and_other_drawings_are_not():
    a = drawing(0)
    copies = [ImageOps.grayscale(a).convert("RGB"), a.resize((128, 128)), a.rotate(0)]
    others = [drawing(s) for s in range(1, 20)]
    d_copies = [int(hamming_matrix([dhash(a), dhash(c)])[0, 1]) for c in copies]
    d_others = [int(hamming_matrix([dhash(a), dhash(o)])[0, 1]) for o in others]
    assert max(d_copies) <= 12 < min(d_others), (d_copies, d_others)


def test_transparent_background_counts_as_white():
    rgba = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    rgba.paste((200, 0, 0, 255), (8, 8, 24, 24))
    on_white = Image.new("RGB", (32, 32), "white")
    on_white.paste((200, 0, 0), (8, 8, 24, 24))
    assert dhash(rgba) == dhash(on_white)


@pytest.mark.parametrize("stem, expected", [("apple_bw", "apple"), ("pear_02", "pear"), ("cat (1)", "cat"),
                                            ("lemon_simple_bw", "lemon_simple"), ("aircraft_jarno_vasamaa_", "aircraft_jarno_vasamaa")])
def test_normalise_stem(stem, expected):
    assert normalise_stem(stem) == expected


def test_groups_never_join_two_classes():
    g = near_duplicate_groups([0, 0, 0], stems=["a", "a", "a"], labels=[0, 0, 1], n_bits=4)
    assert g.tolist() == [0, 0, 1]


def synthetic(n_classes=4, per_class=30, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), per_class)
    groups = np.concatenate([c * 1000 + rng.integers(0, per_class // 2, per_class) for c in range(n_classes)])
    return labels, groups


@pytest.mark.parametrize("seed", range(10))
def test_group_split_keeps_each_group_in_one_part_and_stratifies(seed):
    labels, groups = synthetic(seed=seed)
    parts = group_split(labels, groups, seed=seed)
    assert straddling_groups(parts, groups) == []
    counts = Counter(parts.tolist())
    assert set(counts) == {"train", "val", "test"}
    for c in range(4):  # every class in every part
        assert set(parts[labels == c].tolist()) == {"train", "val", "test"}
    assert 0.15 <= counts["test"] / len(labels) <= 0.35


def test_group_split_is_deterministic_by_seed_and_seeds_differ():
    labels, groups = synthetic()
    a, b, c = (group_split(labels, groups, seed=s) for s in (3, 3, 4))
    assert (a == b).all() and not (a == c).all()


def test_one_class_is_refused_with_a_message():
    with pytest.raises(ValueError, match="Only one class .'cats'."):
        group_split([0] * 10, list(range(10)), class_names=["cats"])


def test_a_class_with_too_few_drawings_is_named():
    labels = [0] * 10 + [1] * 2
    groups = list(range(10)) + [50, 50]  # class 1: two copies of one drawing
    with pytest.raises(ValueError, match="Class 'dogs' has 1 distinct image"):
        group_split(labels, groups, class_names=["cats", "dogs"])
