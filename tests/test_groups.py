"""Near-duplicate groups and group-aware splits (tl_helpers.groups)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from PIL import Image, ImageOps

import importlib.util
from pathlib import Path

from tl_helpers.groups import (MAX_DHASH_DISTANCE, artist_groups, dhash, group_split, hamming_matrix, image_hashes,
                               name_key, near_duplicate_groups, straddling_groups)

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


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


@pytest.mark.parametrize("stem, expected", [
    ("apple_bw", "apple"), ("pear_02", "pear 02"), ("cat (1)", "cat"), ("lemon_simple_bw", "simple"),
    ("bus1_bw_jarno_vasamaa_01", "bus1 jarno vasamaa 01"), ("coffee_bw_ganson", "coffee ganson"),
    ("b_w_tiger_susan_pa", "tiger susan pa"), ("color_tiger_susan_pa", "tiger susan pa"),
    ("IMG_1234 - Copy (2)", "img 1234"), ("IMG_1234 copy 2", "img 1234"), ("IMG_1234_edited", "img 1234"),
    ("tennis_shoes", "tennis shoe"), ("red_car_001", "red car 001")])
def test_name_key(stem, expected):
    assert name_key(stem) == expected


def by_names(stems):
    """Groups from the names alone (no two hashes are close)."""
    return near_duplicate_groups([0] * len(stems), stems, max_distance=-1, n_bits=1).tolist()


@pytest.mark.parametrize("a, b", [
    ("x", "x_bw"), ("x", "x (1)"), ("x", "x-copy"), ("x", "X Copy 2"), ("x", "x_outline"),
    ("bus1_bw_jarno_vasamaa_01", "bus1_jarno_vasamaa_01"), ("coffee_bw_ganson", "coffee_ganson"),
    ("lemon_half_ganson", "lime_half_ganson"), ("blue_fedora", "red_fedora"), ("orange_simple_bw", "peach_simple_bw"),
    ("magnolia-white_patricia__01", "magnolia_white_patricia__01"), ("IMG_0001", "IMG_0001 (1)"),
    ("PXL_20240101_120000123", "PXL_20240101_120000123.MP"), ("DSC_1234", "DSC_1234-edited"),
    ("tennis_shoe_jarno_vasama_", "tennis_shoes_jarno_vasam_")])            # plural, and a name cut at 24 letters
def test_names_that_say_variant_share_a_group(a, b):
    assert by_names([a, b]) == [0, 0]


@pytest.mark.parametrize("names", [
    [f"IMG_{k:04d}" for k in range(1, 31)], [f"DSC_{k}" for k in range(1234, 1264)],
    [f"PXL_20240101_1200{k:02d}123" for k in range(30)], [f"cat.{k}" for k in range(1, 31)],
    [f"Abyssinian_{k}" for k in range(1, 31)], [f"P10100{k:02d}" for k in range(1, 31)],
    [f"IMG_20240101_1200{k:02d}" for k in range(30)], ["red_car_001", "blue_car_001"],
    ["tigre03_architetto_franc_01", "tigre05_architetto_franc_01"], ["hummer_01", "hummer_02"],
    ["cat", "caterpillar"], ["grape_01", "grapes_02"]])
def test_a_shared_prefix_with_a_counter_is_no_group(names):
    assert by_names(names) == list(range(len(names)))


def photo(name: str) -> Image.Image:
    import skimage.data

    return Image.fromarray(getattr(skimage.data, name)()).convert("RGB")


@pytest.fixture(scope="module")
def audit_script():
    spec = importlib.util.spec_from_file_location("audit_split", SCRIPTS / "audit_split.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_burst_shots_group_and_distinct_photos_with_consecutive_numbers_do_not(audit_script):
    """IMG_0101-0104: one scene shot four times (moved by 1 %, exposure and noise changed, JPEG); IMG_0201-0212:
    twelve distinct pictures (quarters of three photos) with consecutive numbers."""
    scene = photo("astronaut")
    shots = [scene] + [audit_script.burst(scene, k, shift=0.01) for k in range(3)]
    distinct = [im for _, im in audit_script.distinct_pictures([(n, photo(n)) for n in ("chelsea", "coffee", "rocket")])
                if _ not in ("chelsea", "coffee", "rocket")][:12]
    images = shots + distinct
    stems = [f"IMG_{101 + k:04d}" for k in range(len(shots))] + [f"IMG_{201 + k:04d}" for k in range(len(distinct))]
    groups = near_duplicate_groups([image_hashes(im) for im in images], stems)
    assert len(set(groups[:4].tolist())) == 1, "the burst is one group"
    assert len(set(groups[4:].tolist())) == len(distinct) and groups[0] not in groups[4:], "distinct photos stay apart"


def recoloured(img: Image.Image) -> Image.Image:
    """The drawing with every colour inverted (dark blocks become light), the white background kept."""
    a = np.asarray(img)
    white = (a == 255).all(axis=2, keepdims=True)
    return Image.fromarray(np.where(white, a, 230 - a // 2).astype(np.uint8))


def outline(img: Image.Image) -> Image.Image:
    """A black-and-white line version: black where the colour changes, white elsewhere."""
    a = np.asarray(img, dtype=np.int16)
    edge = (np.abs(np.diff(a, axis=0, prepend=a[:1])).max(2) + np.abs(np.diff(a, axis=1, prepend=a[:, :1])).max(2)) > 30
    return Image.fromarray(np.where(edge, 0, 255).astype(np.uint8)).convert("RGB")


def test_recolourings_and_outlines_group_by_their_edges():
    drawings = [drawing(s).resize((128, 128), Image.Resampling.NEAREST) for s in (2, 0, 1, 3, 4, 5)]
    images = [drawings[0], recoloured(drawings[0]), outline(drawings[0])] + drawings[1:]
    groups = near_duplicate_groups([image_hashes(im) for im in images], [f"file_{k}" for k in range(len(images))])
    assert groups.tolist()[:3] == [0, 0, 0], "a recolouring and an outline are the same drawing"
    assert len(set(groups.tolist())) == 1 + len(drawings) - 1, "other drawings stay apart"
    grey = hamming_matrix([dhash(images[0]), dhash(images[1])])[0, 1]
    assert grey > MAX_DHASH_DISTANCE, "the grayscale hash alone misses this recolouring"


FAR = [0, (1 << 256) - 1, int("01" * 128, 2)]  # three dHashes 128 or 256 bits apart


def test_features_join_pairs_above_the_cosine_threshold():
    features = np.array([[1.0, 0.0], [0.95, 0.31], [0.0, 1.0]])      # cosines 0.95 and 0.31 to the first
    groups = near_duplicate_groups(FAR, features=features, min_cosine=0.9)
    assert groups.tolist() == [0, 0, 1]


def test_labelled_pairs_are_joined():
    groups = near_duplicate_groups(FAR, same_pairs=[(0, 2)])
    assert groups.tolist() == [0, 1, 0]


def test_artist_groups_join_an_artists_drawings_within_a_class_only():
    groups = artist_groups([0, 1, 2, 3, 4], ["ann", "ann", "ann", "", ""], labels=["cat", "cat", "dog", "cat", "cat"])
    assert groups.tolist() == [0, 0, 1, 2, 3]


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


def test_a_class_with_too_few_drawings_is_named_with_its_group():
    labels = [0] * 10 + [1] * 5
    groups = list(range(10)) + [50, 50, 50, 50, 51]  # class 1: a burst of four shots and one other photo
    names = [f"cats/IMG_{k}.jpg" for k in range(10)] + [f"dogs/IMG_{k}.jpg" for k in range(5)]
    with pytest.raises(ValueError, match=r"Class 'dogs' has 5 images but only 2 distinct pictures .*group 50 holds 4 "
                                         r"images \(dogs/IMG_0.jpg, dogs/IMG_1.jpg, dogs/IMG_2.jpg, ...\)"):
        group_split(labels, groups, class_names=["cats", "dogs"], item_names=names)
    with pytest.raises(ValueError, match="Class 'dogs' has only 1 image, too few"):
        group_split([0] * 10 + [1], list(range(11)), class_names=["cats", "dogs"])


def test_a_camera_folder_splits_and_a_class_of_one_burst_is_named(tmp_path, audit_script):
    """photos/<class>/IMG_xxxx.jpg as a phone names them: distinct photos are distinct groups, a burst is one group,
    and a class that holds only one burst gets an error that names the burst's files."""
    from tl_helpers.imagefolder import DataError, folder_groups, scan_image_folder, split_folder

    pictures = [im for name, im in audit_script.distinct_pictures([(n, photo(n)) for n in ("chelsea", "coffee",
                                                                                          "astronaut", "camera")])
                if "quarter" in name]
    for cls, chunk in (("cats", pictures[:8]), ("dogs", pictures[8:16])):
        (tmp_path / cls).mkdir()
        for k, im in enumerate(chunk):
            im.save(tmp_path / cls / f"IMG_{k + 1:04d}.jpg", quality=90)
    scene = photo("rocket")
    (tmp_path / "birds").mkdir()
    for k, im in enumerate([scene] + [audit_script.burst(scene, k) for k in range(3)]):
        im.save(tmp_path / "birds" / f"IMG_{101 + k:04d}.jpg", quality=90)
    report = scan_image_folder(tmp_path, progress=False)
    groups = folder_groups(report)
    per_class = {c: len(set(groups[[t == i for t in report.targets]].tolist())) for i, c in enumerate(report.classes)}
    assert per_class == {"birds": 1, "cats": 8, "dogs": 8}
    with pytest.raises(DataError, match=r"Class 'birds' has 4 images but only 1 distinct picture .*group \d+ holds 4 "
                                        r"images \(birds/IMG_0101.jpg, birds/IMG_0102.jpg, birds/IMG_0103.jpg, ...\)"):
        split_folder(report)
    parts = split_folder(report.without(["birds"]))
    assert sorted(map(len, parts.values())) == [2, 4, 10]
