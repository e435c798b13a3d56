"""Scanning a folder of one's own images (tl_helpers.imagefolder): the bad-input matrix, splits, the dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS

from tl_helpers.data import extract_features, make_loader
from tl_helpers.imagefolder import (IMAGE_EXTENSIONS, DataError, ImageFiles, check_image, describe_split, read_images,
                                    scan_dataset, scan_image_folder, split_folder, write_example_folder)


def drawing(seed: int, size: int = 48) -> Image.Image:
    """A random blocky colour drawing on white (different seeds are not near-duplicates)."""
    rng = np.random.default_rng(seed)
    img = np.full((size, size, 3), 255, dtype=np.uint8)
    for _ in range(6):
        x, y = rng.integers(0, size - 12, size=2)
        img[y:y + 12, x:x + 12] = rng.integers(0, 200, size=3)
    return Image.fromarray(img)


def name(k: int) -> str:
    """A distinct file stem per k that no variant rule merges ("img_1", "img_2" all normalise to "img")."""
    return "img_" + "".join(chr(97 + int(d)) for d in str(k))


def make_folder(root, classes: dict[str, int], start: int = 0):
    """root/<class>/<name(k)>.png with distinct drawings; returns root."""
    seed = start
    for cls, n in classes.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for k in range(n):
            drawing(seed).save(root / cls / f"{name(k)}.png")
            seed += 1
    return root


def test_extensions_are_torchvisions():
    assert set(IMAGE_EXTENSIONS) == set(IMG_EXTENSIONS)


def test_a_clean_folder_scans_like_imagefolder(tmp_path):
    root = make_folder(tmp_path, {"cats": 4, "dogs": 3})
    report = scan_image_folder(root, progress=False)
    assert report.classes == ["cats", "dogs"] and report.counts == {"cats": 4, "dogs": 3}
    assert not report.skipped and not report.ignored and not report.duplicates
    ds = report.dataset()
    assert len(ds) == 7 and ds.targets == [0] * 4 + [1] * 3 and ds.class_to_idx == {"cats": 0, "dogs": 1}
    img, label = ds[5]
    assert img.mode == "RGB" and label == 1


# --- the bad-input matrix: each case ends in a usable report or a clear error -------------------------

def write_truncated(path):
    drawing(99, 64).save(path.with_suffix(".tmp.png"))
    data = path.with_suffix(".tmp.png").read_bytes()
    path.with_suffix(".tmp.png").unlink()
    path.write_bytes(data[: len(data) // 2])


BAD_FILES = {
    "truncated.png": (write_truncated, "damaged"),
    "empty.jpg": (lambda p: p.write_bytes(b""), "empty file"),
    "notes.jpg": (lambda p: p.write_text("shopping list: milk, eggs"), "holds text"),
    "random.png": (lambda p: p.write_bytes(bytes(range(256)) * 4), "not an image"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_each_bad_file_is_skipped_with_its_reason_and_the_rest_is_used(tmp_path, name):
    root = make_folder(tmp_path, {"a": 3, "b": 3})
    write, reason = BAD_FILES[name]
    write(root / "a" / name)
    report = scan_image_folder(root, progress=False)
    assert [(s.path.name, reason in s.reason) for s in report.skipped] == [(name, True)]
    assert report.counts == {"a": 3, "b": 3}
    assert f"a/{name}" in report.summary() and "1 skipped" in report.summary()


def test_all_bad_files_are_found_in_one_pass(tmp_path):
    root = make_folder(tmp_path, {"a": 3, "b": 3})
    for name, (write, _) in BAD_FILES.items():
        write(root / "b" / name)
    report = scan_image_folder(root, progress=False)
    assert sorted(s.path.name for s in report.skipped) == sorted(BAD_FILES)
    assert len(report.dataset()) == 6


@pytest.mark.parametrize("mode", ["CMYK", "I;16", "P+transparency", "LA", "RGBA"])
def test_unusual_modes_become_rgb(tmp_path, mode):
    root = make_folder(tmp_path, {"a": 2, "b": 2})
    base = drawing(7)
    if mode == "CMYK":
        img, name = base.convert("CMYK"), "x.jpg"
    elif mode == "I;16":
        img, name = Image.fromarray((np.asarray(base.convert("L"), dtype=np.uint16) * 257)), "x.png"
        assert img.mode == "I;16"
    elif mode == "P+transparency":
        img, name = base.convert("P"), "x.png"
        img.info["transparency"] = 0
    else:
        img, name = base.convert(mode), "x.png"
    img.save(root / "a" / name)
    report = scan_image_folder(root, progress=False)
    assert not report.skipped and report.counts["a"] == 3
    rgb, reason = check_image(root / "a" / name)
    assert reason is None and rgb.mode == "RGB"
    if mode == "I;16":  # 16-bit values scaled to 8 bits, not clipped to white
        assert np.abs(np.asarray(rgb)[..., 0].astype(int) - np.asarray(base.convert("L"))).max() <= 1


def test_an_image_over_the_decompression_bomb_limit_is_refused_before_decoding(tmp_path, monkeypatch):
    root = make_folder(tmp_path, {"a": 2, "b": 2})
    Image.new("RGB", (200, 100), "white").save(root / "a" / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # 200 x 100 = 20,000 pixels
    report = scan_image_folder(root, progress=False)
    assert [s.path.name for s in report.skipped] == ["huge.png"]
    assert "decompression-bomb limit" in report.skipped[0].reason and "MAX_IMAGE_PIXELS" in report.skipped[0].reason


def test_empty_class_folder_is_left_out_and_reported(tmp_path):
    root = make_folder(tmp_path, {"a": 3, "b": 3})
    (root / "c").mkdir()
    report = scan_image_folder(root, progress=False)
    assert report.classes == ["a", "b"] and report.empty_classes == ["c"]
    assert "c/" in report.summary()


def test_a_class_with_only_bad_files_counts_as_empty(tmp_path):
    root = make_folder(tmp_path, {"a": 3, "b": 3})
    (root / "c").mkdir()
    (root / "c" / "x.jpg").write_text("text")
    report = scan_image_folder(root, progress=False)
    assert report.empty_classes == ["c"] and len(report.skipped) == 1


def test_one_class_scans_but_cannot_be_split(tmp_path):
    root = make_folder(tmp_path, {"only": 6})
    report = scan_image_folder(root, progress=False)
    assert "Only one class" in report.summary()
    with pytest.raises(DataError, match="only one class .*'only'.*at least two"):
        split_folder(report)


def test_a_class_with_one_image_is_named_by_the_split_error(tmp_path):
    root = make_folder(tmp_path, {"big": 10, "tiny": 1, "other": 10})
    report = scan_image_folder(root, progress=False)
    assert report.small_classes == ["tiny"]
    with pytest.raises(DataError, match="'tiny'.*add images"):
        split_folder(report)
    parts = split_folder(report.without(["tiny"]))
    assert sum(map(len, parts.values())) == 20


def test_non_ascii_class_and_file_names(tmp_path):
    root = make_folder(tmp_path, {"chats_été": 3, "狗": 3})
    drawing(50).save(root / "狗" / "小狗 ü.png")
    report = scan_image_folder(root, progress=False)
    assert report.counts == {"chats_été": 3, "狗": 4}
    assert "狗" in report.summary() and report.dataset()[6][0].size == (48, 48)


def test_a_path_that_does_not_exist_or_is_a_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        scan_image_folder(tmp_path / "nope", progress=False)
    (tmp_path / "f.jpg").write_bytes(b"x")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        scan_image_folder(tmp_path / "f.jpg", progress=False)


def test_a_folder_of_loose_images_says_to_make_class_folders(tmp_path):
    drawing(1).save(tmp_path / "a.png")
    with pytest.raises(DataError, match="no subfolders.*subfolder named after"):
        scan_image_folder(tmp_path, progress=False)


def test_other_files_are_ignored_and_hidden_ones_silently(tmp_path):
    root = make_folder(tmp_path, {"a": 2, "b": 2})
    (root / "README.md").write_text("x")
    (root / "a" / "labels.csv").write_text("x")
    (root / "a" / ".DS_Store").write_bytes(b"\0")
    (root / ".git").mkdir()
    report = scan_image_folder(root, progress=False)
    assert sorted(report.relative(p) for p in report.ignored) == ["README.md", "a/labels.csv"]


def test_duplicates_and_the_same_file_in_two_classes(tmp_path):
    root = make_folder(tmp_path, {"a": 3, "b": 3})
    (root / "a" / "copy.png").write_bytes((root / "a" / f"{name(0)}.png").read_bytes())
    (root / "b" / "stray.png").write_bytes((root / "a" / f"{name(1)}.png").read_bytes())
    report = scan_image_folder(root, progress=False)
    assert len(report.duplicates) == 2
    assert [[report.relative(p) for p in g] for g in report.conflicts] == [[f"a/{name(1)}.png", "b/stray.png"]]
    assert "one label is wrong" in report.summary()


# --- splits -----------------------------------------------------------------------------------------

def test_split_is_stratified_reproducible_and_keeps_near_duplicates_together(tmp_path):
    root = make_folder(tmp_path, {"a": 16, "b": 12})
    for k in range(4):  # grayscale versions of four drawings: near-duplicates by hash and by name
        Image.open(root / "a" / f"{name(k)}.png").convert("L").save(root / "a" / f"{name(k)}_bw.png")
    report = scan_image_folder(root, progress=False)
    parts = split_folder(report, seed=3)
    assert parts == split_folder(report, seed=3) and parts != split_folder(report, seed=4)
    assert sorted(i for p in parts.values() for i in p) == list(range(len(report.samples)))
    part_of = {report.relative(report.samples[i][0]): k for k, idx in parts.items() for i in idx}
    assert all(part_of[f"a/{name(k)}.png"] == part_of[f"a/{name(k)}_bw.png"] for k in range(4))
    for k in ("train", "val", "test"):
        assert {report.samples[i][1] for i in parts[k]} == {0, 1}


def test_split_fractions_are_checked(tmp_path):
    report = scan_image_folder(make_folder(tmp_path, {"a": 8, "b": 8}), progress=False)
    with pytest.raises(DataError, match="fractions"):
        split_folder(report, val=0.5, test=0.6)


# --- the dataset works where an ImageFolder does ---------------------------------------------------

def test_dataset_of_good_files_feeds_loaders_and_feature_extraction(tmp_path):
    import torch
    from torch import nn

    from tl_helpers.data import eval_transform

    root = make_folder(tmp_path, {"a": 3, "b": 2})
    (root / "a" / "bad.jpg").write_text("no")
    ds = scan_image_folder(root, progress=False).dataset(eval_transform(32))
    x, y = next(iter(make_loader(ds, batch_size=8)))
    assert x.shape == (5, 3, 32, 32) and y.tolist() == [0, 0, 0, 1, 1]
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    X, labels = extract_features(net, ds, cache=tmp_path / "cache", progress=False)
    assert X.shape == (5, 4) and torch.equal(labels, torch.tensor([0, 0, 0, 1, 1]))


def test_scan_dataset_checks_an_imagefolders_files(tmp_path):
    from torchvision.datasets import ImageFolder

    root = make_folder(tmp_path, {"a": 3, "b": 3})
    write_truncated(root / "b" / "half.png")
    report = scan_dataset(ImageFolder(str(root)), progress=False)
    assert report.counts == {"a": 3, "b": 3} and [s.path.name for s in report.skipped] == ["half.png"]
    with pytest.raises(DataError, match="ImageFolder-like"):
        scan_dataset([1, 2, 3])


def test_read_images_reports_bad_inputs_or_names_them(tmp_path):
    drawing(0).save(tmp_path / "ok.png")
    (tmp_path / "bad.jpg").write_text("no")
    names, images, bad = read_images([tmp_path], skip_bad=True)
    assert [n.rsplit("/", 1)[-1] for n in names] == ["bad.jpg", "ok.png"] and len(images) == 1 and 0 in bad
    with pytest.raises(DataError, match="bad.jpg"):
        read_images([tmp_path / "bad.jpg"])
    with pytest.raises(DataError, match="No image"):
        read_images([])


def test_example_folder_has_the_planted_problems_and_never_deletes_a_foreign_folder(tmp_path):
    folder, new = write_example_folder(tmp_path / "photos", classes=("birds", "fruit"), per_class=6)
    report = scan_image_folder(folder, progress=False)
    assert report.counts == {"birds": 7, "flowers": 2, "fruit": 6}  # birds: 6 and a byte-identical copy
    assert sorted(s.path.name for s in report.skipped)[1] == "recipe.jpg" and len(report.skipped) == 2
    assert report.small_classes == ["flowers"] and len(report.duplicates) == 1 and len(new) == 4
    assert not {p.name for p in new} & {p.name for p, _ in report.samples}
    write_example_folder(tmp_path / "photos", classes=("birds", "fruit"), per_class=6)  # rewrites its own
    (tmp_path / "mine").mkdir()
    with pytest.raises(DataError, match="not written by"):
        write_example_folder(tmp_path / "mine")
    assert isinstance(report.dataset(), ImageFiles)


# --- the exercise checkers of the chapter (tl_helpers.checks.own_images) -----------------------------

def test_checker_find_bad_files_reference_passes_and_wrong_answers_get_their_hint(capsys):
    from pathlib import Path

    from PIL import UnidentifiedImageError

    from tl_helpers.checks.own_images import check_find_bad_files

    def reference(folder):
        bad = []
        for p in sorted(Path(folder).rglob("*")):
            if p.suffix.lower() in IMAGE_EXTENSIONS:
                try:
                    with Image.open(p) as img:
                        img.load()
                except (UnidentifiedImageError, OSError):
                    bad.append(p)
        return bad

    def header_only(folder):
        bad = []
        for p in sorted(Path(folder).rglob("*.*")):
            try:
                Image.open(p)
            except (UnidentifiedImageError, OSError):
                bad.append(p)
        return bad

    assert check_find_bad_files(reference)
    assert not check_find_bad_files(header_only) and "img.load()" in capsys.readouterr().out
    assert not check_find_bad_files(lambda f: sorted(Path(f).rglob("*.*"))) and "CMYK" in capsys.readouterr().out
    assert not check_find_bad_files(lambda f: []) and "catch the errors" in capsys.readouterr().out
    assert not check_find_bad_files(lambda f: 1 / 0) and "ZeroDivisionError" in capsys.readouterr().out


def test_checker_leak_free_split(capsys):
    from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold, train_test_split

    from tl_helpers.checks.own_images import check_leak_free_split

    def reference(labels, groups, seed):
        folds = StratifiedGroupKFold(n_splits=4, shuffle=True, random_state=seed)
        return next(folds.split(labels, labels, groups))

    def plain(labels, groups, seed):
        return train_test_split(range(len(labels)), test_size=0.25, stratify=labels, random_state=seed)

    def fixed(labels, groups, seed):
        return reference(labels, groups, 0)

    def group_shuffle(labels, groups, seed):
        return next(GroupShuffleSplit(n_splits=1, test_size=0.03, random_state=seed).split(labels, labels, groups))

    assert check_leak_free_split(reference)
    assert not check_leak_free_split(plain) and "StratifiedGroupKFold" in capsys.readouterr().out
    assert not check_leak_free_split(fixed) and "random_state=seed" in capsys.readouterr().out
    assert not check_leak_free_split(group_shuffle) and "missing" in capsys.readouterr().out
    assert not check_leak_free_split(lambda *a: [1, 2, 3]) and "pair" in capsys.readouterr().out


# --- folder layouts people already have: train/ valid/ test/ ------------------------------------------

def make_split_folder(root, parts: dict[str, dict[str, int]]):
    """root/<part>/<class>/<name(seed)>.png: every drawing and every file name distinct across the whole folder."""
    seed = 1000
    for part, classes in parts.items():
        for cls, n in classes.items():
            (root / part / cls).mkdir(parents=True, exist_ok=True)
            for _ in range(n):
                drawing(seed).save(root / part / cls / f"{name(seed)}.png")
                seed += 1
    return root


def test_a_train_valid_folder_is_the_given_split_and_the_test_part_is_drawn_from_train(tmp_path):
    root = make_split_folder(tmp_path / "tv", {"train": {"cats": 12, "dogs": 12}, "valid": {"cats": 4, "dogs": 4}})
    report = scan_image_folder(root, progress=False)
    assert report.classes == ["cats", "dogs"] and report.given_split and report.part_folders == {"train": "train",
                                                                                                 "val": "valid"}
    assert report.part_counts() == {"train": {"cats": 12, "dogs": 12}, "val": {"cats": 4, "dogs": 4}}
    text = report.summary()
    assert "Laid out as a split (train/, valid/): used as given; the test part drawn from train/." in text
    assert "train" not in report.classes and "valid" not in report.classes
    parts = split_folder(report, seed=0)
    assert sorted(report.relative(report.samples[i][0]).split("/")[0] for i in parts["val"]) == ["valid"] * 8
    assert {report.relative(report.samples[i][0]).split("/")[0] for i in parts["train"] + parts["test"]} == {"train"}
    assert len(parts["test"]) == 6 and {report.samples[i][1] for i in parts["test"]} == {0, 1}   # a quarter of train/
    assert "val = valid/" in describe_split(report, parts) and "test drawn from train/" in describe_split(report, parts)


def test_a_train_val_test_folder_is_used_exactly_as_given(tmp_path):
    root = make_split_folder(tmp_path / "tvt", {"Train": {"a": 5, "b": 5}, "validation": {"a": 2, "b": 2},
                                                "test": {"a": 3, "b": 3}})
    report = scan_image_folder(root, progress=False)
    parts = split_folder(report, seed=1)
    folder_of = {k: {report.relative(report.samples[i][0]).split("/")[0] for i in idx} for k, idx in parts.items()}
    assert folder_of == {"train": {"Train"}, "val": {"validation"}, "test": {"test"}}
    assert [len(parts[k]) for k in ("train", "val", "test")] == [10, 4, 6] and split_folder(report, seed=2) == parts


def test_a_class_missing_from_a_part_is_named(tmp_path):
    root = make_split_folder(tmp_path / "tv", {"train": {"cats": 6, "dogs": 6, "owls": 6}, "valid": {"cats": 3, "owls": 3}})
    report = scan_image_folder(root, progress=False)
    assert report.missing_from_parts == [("dogs", "val")] and report.small_classes == ["dogs"]
    assert "Missing from a part: dogs has no image in valid/" in report.summary()
    with pytest.raises(DataError, match=r"Class 'dogs' has no usable image in tv/valid/.*valid/dogs/.*--leave-out dogs"):
        split_folder(report)
    assert sum(map(len, split_folder(report.without(["dogs"])).values())) == 18
    only_valid = make_split_folder(tmp_path / "ov", {"train": {"cats": 6, "dogs": 6}, "valid": {"cats": 2, "dogs": 2,
                                                                                                 "owls": 2}})
    with pytest.raises(DataError, match="'owls' has no usable image in ov/train/"):
        split_folder(scan_image_folder(only_valid, progress=False))


@pytest.mark.parametrize("case, message", [
    ("mixed", r"mixes parts of a split \(train/\) with other folders \(cats/\)"),
    ("images_in_part", r"tv/train/ holds no class subfolders.*If 'train' is a class, rename that folder"),
    ("part_as_class", r"tv/train/valid/: a part name used as a class"),
    ("parts_in_classes", r"tv/cats/test/: a part of a split inside a class folder.*tv/test/cats/"),
    ("two_val", r"has val/ and valid/: both name the val part"),
])
def test_layout_mixups_get_a_clear_message(tmp_path, case, message):
    root = tmp_path / "tv"
    if case == "mixed":
        make_split_folder(root, {"train": {"cats": 3}})
        make_folder(root, {"cats": 3})
    elif case == "images_in_part":
        make_folder(root, {"train": 3, "valid": 3})        # two classes that happen to be called train and valid
    elif case == "part_as_class":
        make_split_folder(root, {"train": {"cats": 3, "valid": 3}})
    elif case == "parts_in_classes":
        make_folder(root / "cats", {"train": 3, "test": 2})
        make_folder(root / "dogs", {"train": 3, "test": 2}, start=50)
    else:
        make_split_folder(root, {"train": {"a": 3}, "val": {"a": 1}, "valid": {"a": 1}})
    with pytest.raises(DataError, match=message):
        scan_image_folder(root, progress=False)


def test_a_folder_without_train_scans_but_cannot_be_split(tmp_path):
    root = make_split_folder(tmp_path / "t", {"test": {"a": 3, "b": 3}})
    report = scan_image_folder(root, progress=False)
    assert report.part_folders == {"test": "test"} and report.counts == {"a": 3, "b": 3}
    with pytest.raises(DataError, match="has test/ but no train/"):
        split_folder(report)


def test_near_duplicates_across_given_parts_are_reported(tmp_path):
    root = make_split_folder(tmp_path / "tv", {"train": {"a": 6, "b": 6}, "valid": {"a": 2, "b": 2}})
    Image.open(root / "train" / "a" / f"{name(1000)}.png").convert("L").save(root / "valid" / "a" / "copy_bw.png")
    (root / "valid" / "b" / "same.png").write_bytes((root / "train" / "b" / f"{name(1006)}.png").read_bytes())
    (root / "train" / "b" / "twice.png").write_bytes((root / "train" / "b" / f"{name(1007)}.png").read_bytes())
    report = scan_image_folder(root, progress=False)
    summary = report.summary()
    assert f"train/b/{name(1006)}.png = valid/b/same.png   <- in two parts of the split: move one copy" in summary
    assert summary.endswith(f"train/b/{name(1007)}.png = train/b/twice.png")
    text = describe_split(report, split_folder(report))
    assert "warning: 2 group(s) of near-duplicates have images in two parts" in text and "valid/a/copy_bw.png" in text


def test_the_scan_reports_class_imbalance(tmp_path):
    report = scan_image_folder(make_folder(tmp_path, {"cats": 12, "dogs": 3}), progress=False)
    assert report.imbalance == 4.0
    assert "Class sizes: largest/smallest 4.0 (cats 12, dogs 3): imbalanced. balance=True (--balance)" in report.summary()
    even = scan_image_folder(make_folder(tmp_path / "even", {"cats": 3, "dogs": 3}), progress=False)
    assert "largest/smallest 1.0" in even.summary() and "imbalanced" not in even.summary()


# --- large photos: decoded once, at the size training needs ------------------------------------------

def photo(size=(1200, 900), seed=0) -> Image.Image:
    """A real photo (scikit-image's astronaut), cropped at random and resized: not noise."""
    from skimage import data

    rng = np.random.default_rng(seed)
    img = Image.fromarray(data.astronaut())
    x, y = rng.integers(0, 128, size=2)
    return img.crop((x, y, x + 384, y + 288)).resize(size, Image.Resampling.BICUBIC)


def test_reduced_image_decodes_big_jpegs_small_and_applies_the_orientation(tmp_path):
    from tl_helpers.imagefolder import reduced_image, training_side

    photo((2000, 1500)).save(tmp_path / "big.jpg", quality=90)
    img, reason = reduced_image(tmp_path / "big.jpg", training_side(128))
    assert reason is None and img.size == (256, 192)
    rotated = photo((1600, 1200), seed=1)
    exif = rotated.getexif()
    exif[0x0112] = 6                                      # "rotate 90 degrees clockwise to display"
    rotated.save(tmp_path / "phone.jpg", quality=90, exif=exif)
    img, _ = reduced_image(tmp_path / "phone.jpg", 150)
    assert img.size == (150, 200) and img.info["original_size"] == (1200, 1600)   # portrait, as the phone showed it
    small = reduced_image(tmp_path / "phone.jpg", None)[0]
    assert small.size == (1200, 1600)


def test_image_cache_decodes_once_per_file_and_size_and_is_safe_to_delete(tmp_path, monkeypatch):
    import tl_helpers.imagefolder as imf

    photo().save(tmp_path / "a.jpg", quality=90)
    calls = []
    real = imf.reduced_image
    monkeypatch.setattr(imf, "reduced_image", lambda p, side: calls.append((Path(p).name, side)) or real(p, side))
    cache = imf.ImageCache(150, tmp_path / "cache")
    first = cache.load(tmp_path / "a.jpg")
    again = cache.load(tmp_path / "a.jpg")
    assert first.size == again.size == (200, 150) and np.array_equal(np.asarray(first), np.asarray(again))
    assert calls == [("a.jpg", 150)]                                            # decoded once
    assert imf.ImageCache(100, tmp_path / "cache").load(tmp_path / "a.jpg").size == (133, 100)
    assert calls[-1] == ("a.jpg", 100) and len(list((tmp_path / "cache").glob("*.npy"))) == 2   # never reused
    entry = cache.entry(imf.file_digest(tmp_path / "a.jpg"))
    np.save(entry, np.zeros((300, 400, 3), dtype=np.uint8))                     # wrong size under this name
    assert cache.load(tmp_path / "a.jpg").size == (200, 150) and len(calls) == 3
    entry.write_bytes(b"\x93NUMPY damaged")
    assert cache.load(tmp_path / "a.jpg").size == (200, 150) and len(calls) == 4
    import shutil
    shutil.rmtree(tmp_path / "cache")                                          # safe to delete
    assert cache.load(tmp_path / "a.jpg").size == (200, 150) and len(calls) == 5
    photo(seed=3).save(tmp_path / "a.jpg", quality=90)                          # edited: another hash
    cache = imf.ImageCache(150, tmp_path / "cache")
    cache.load(tmp_path / "a.jpg")
    assert len(calls) == 6 and len(list((tmp_path / "cache").glob("*.npy"))) == 2


def test_the_scan_fills_the_cache_with_the_pixels_training_reads(tmp_path, monkeypatch):
    import tl_helpers.imagefolder as imf

    root = tmp_path / "photos"
    for cls, seeds in (("a", (0, 1, 2)), ("b", (3, 4, 5))):
        (root / cls).mkdir(parents=True)
        for s in seeds:
            photo((1600, 1200), seed=s).save(root / cls / f"p{s}.jpg", quality=90)
    cache = imf.ImageCache(192, tmp_path / "cache")
    report = imf.scan_image_folder(root, progress=False, cache=cache, workers=2)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 6 and report.sizes == [(1600, 1200)] * 6
    fresh = {p: imf.reduced_image(p, 192)[0] for p, _ in report.samples}
    monkeypatch.setattr(imf, "reduced_image", lambda *a: pytest.fail("decoded a second time"))
    assert cache.warm([p for p, _ in report.samples], report.digests) == 0
    for p, _ in report.samples:
        assert np.array_equal(np.asarray(cache.load(p)), np.asarray(fresh[p]))


def test_read_images_at_a_side_shrinks_files_and_pil_images_alike(tmp_path):
    big = photo((800, 600))
    big.save(tmp_path / "a.png")
    names, images, bad = read_images([tmp_path / "a.png", big], side=150)
    assert [im.size for im in images] == [(200, 150), (200, 150)] and not bad
    assert np.array_equal(np.asarray(images[0]), np.asarray(images[1]))


def test_header_problem_is_fast_and_names_what_is_wrong(tmp_path):
    from tl_helpers.imagefolder import header_problem

    drawing(0).save(tmp_path / "ok.png")
    (tmp_path / "page.jpg").write_text("<html>")
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert header_problem(tmp_path / "ok.png") is None
    assert "text" in header_problem(tmp_path / "page.jpg") and "empty" in header_problem(tmp_path / "empty.jpg")


def test_checker_crop_predictions(capsys):
    from tl_helpers.checks.own_images import check_crop_predictions

    assert check_crop_predictions((3, 128, 128), 0.25, True)
    assert "cuts away 25% of the photo" in capsys.readouterr().out
    for answer, words in ((((128, 128, 3), 0.25, True), "channels last"), (((1, 3, 128, 128), 0.25, True), "batch"),
                          (((3, 128, 170), 0.25, True), "not square"), (((3, 128, 128), 0.0, True), "squashed"),
                          (((3, 128, 128), 0.5, True), "3000 / 4000"), (((3, 128, 128), 0.25, False), "exif_transpose"),
                          (("banana", 0.25, True), "tuple of sizes"), (((3, 128, 128), "a quarter", True), "a number")):
        assert not check_crop_predictions(*answer), answer
        assert words in capsys.readouterr().out, answer
    assert check_crop_predictions((3, 64, 64), 0.26, True, image_size=64)
