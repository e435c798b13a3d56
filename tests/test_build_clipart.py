"""The dataset build script survives the odd files that openclipart-png contains."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "build_clipart.py"


@pytest.fixture(scope="module")
def build_script():
    spec = importlib.util.spec_from_file_location("build_clipart", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_source(root: Path) -> None:
    """A fake openclipart tree: RGBA, palette with transparency, grayscale, LA, a duplicate, junk."""
    (root / "a" / "sub").mkdir(parents=True)
    (root / "b").mkdir()
    rgba = Image.new("RGBA", (400, 200), (255, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (100, 50, 300, 150))
    rgba.save(root / "a" / "rgba.png")
    rgba.save(root / "a" / "sub" / "rgba_copy.png")            # exact duplicate, in a subfolder
    pal = Image.new("P", (50, 80), 1)
    pal.putpalette([255, 255, 255, 0, 128, 0] + [0] * 762)
    pal.info["transparency"] = 0
    pal.save(root / "b" / "palette.png", transparency=0)
    Image.new("L", (120, 90), 40).save(root / "b" / "gray.png")
    Image.new("LA", (60, 60), (200, 128)).save(root / "b" / "la.png")
    Image.new("RGB", (300, 300), (10, 200, 10)).save(root / "b" / "huge.png")
    (root / "b" / "broken.png").write_bytes(b"\x89PNG not really")
    rng = np.random.default_rng(0)
    for folder in ("a", "b"):  # enough distinct drawings (not near-duplicates) for a split of whole groups
        for i in range(8):
            pixels = np.full((64, 64, 3), 255, dtype=np.uint8)
            for _ in range(6):  # random coloured blocks: no two drawings alike
                x, y = rng.integers(0, 48, size=2)
                pixels[y:y + 16, x:x + 16] = rng.integers(0, 200, size=3)
            Image.fromarray(pixels).save(root / folder / f"drawing_{'abcdefgh'[i]}.png")


def test_build_survives_odd_files(tmp_path, build_script, monkeypatch):
    source, out = tmp_path / "src", tmp_path / "out"
    make_source(source)
    monkeypatch.setattr(build_script, "MAX_PIXELS", 80_000)     # stands in for the 169-megapixel file
    stats = build_script.build(source, out, {"first": "a", "second": "b"}, features=False)
    assert stats["kept"] == 20 and stats["duplicates"] == 1 and stats["unreadable"] == 2
    for png in out.rglob("*.png"):
        with Image.open(png) as img:
            assert img.mode == "RGB" and img.size == (160, 160)
    corner = Image.open(out / "first" / "rgba.png").getpixel((0, 0))
    assert corner == (255, 255, 255), "transparent pixels are composited onto white"
    manifest = (out / "manifest.csv").read_text().splitlines()
    assert manifest[0] == "file,class,source,sha256,artist,group,split" and len(manifest) == 21
    assert {line.rsplit(",", 1)[1] for line in manifest[1:]} == {"train", "val", "test"}


def test_build_leaves_pillows_global_limit_alone(tmp_path, build_script):
    limit = Image.MAX_IMAGE_PIXELS
    make_source(tmp_path / "src")
    build_script.build(tmp_path / "src", tmp_path / "out", {"first": "a", "second": "b"}, features=False)
    assert Image.MAX_IMAGE_PIXELS == limit


def test_junk_is_left_out_and_variants_share_a_group(tmp_path, build_script, monkeypatch):
    source, out = tmp_path / "src", tmp_path / "out"
    make_source(source)
    drawing = Image.open(source / "a" / "drawing_a.png")
    drawing.convert("L").save(source / "a" / "drawing_a_bw.png")             # its black-and-white version
    Image.new("RGB", (50, 30), (250, 250, 250)).save(source / "a" / "placeholder.png")
    monkeypatch.setattr(build_script, "JUNK", {"a/placeholder.png": "a placeholder"})
    stats = build_script.build(source, out, {"first": "a", "second": "b"}, features=False)
    assert stats["junk"] == 1 and not (out / "first" / "placeholder.png").exists()
    rows = {r["file"]: r for r in build_script.csv.DictReader(open(out / "manifest.csv"))}
    assert rows["first/drawing_a.png"]["group"] == rows["first/drawing_a_bw.png"]["group"]
    assert rows["first/drawing_b.png"]["group"] != rows["first/drawing_c.png"]["group"]


def test_artist_names_are_normalised(build_script):
    names = ["Architetto Francesco Rollandin", "Rollandin Francesco", "Jean-Victor Balin (balin_j@epita.fr)",
             "Jean-Victor Balin", "Nicu Buculei and Nathan Eady", "Nicu Buculei", ""]
    assert build_script.normalise_artists(names) == [
        "architetto francesco rollandin", "architetto francesco rollandin", "jean-victor balin",
        "jean-victor balin", "nicu buculei and nathan eady", "nicu buculei", ""]


AUDITED = [  # pairs of one drawing that the independent audit of issue 30 found in two parts (Lite0 cosine)
    ("vehicles/hummer_07_c388aa.png", "vehicles/hummer_07.png"),
    ("vehicles/1989_chevrolet_celebrit_01.png", "vehicles/_chevrolet_celebirt_.png"),
    ("fruit/lime_half_ganson.png", "fruit/lemon_half_ganson.png"),
    ("fruit/orange_simple_bw.png", "fruit/peach_simple_bw.png"),
    ("vehicles/bus1_bw_jarno_vasamaa_01.png", "vehicles/bus1_jarno_vasamaa_01.png"),
    ("vehicles/bus2_bw_jarno_vasamaa_01.png", "vehicles/bus2_jarno_vasamaa_01.png"),
    ("beverages/coffee_ganson.png", "beverages/coffee_bw_ganson.png"),
    ("clothing/tennis_shoes_jarno_vasam_.png", "clothing/tennis_shoe_jarno_vasama_.png"),
    ("clothing/pantyhose_rollandin_fra2.png", "clothing/pantyhose_rollandin_fr_.png"),
    ("flowers/magnolia-white_patricia__01.png", "flowers/magnolia_white_patricia__01.png"),
    ("fruit/lemon_whole_ganson.png", "fruit/lime_whole_ganson.png"),
    ("fruit/lemon_wedge_ganson.png", "fruit/lime_wedge_ganson.png"),
    ("bugs/bee1_mimooh_01.png", "bugs/bee2_mimooh_01.png"),
    ("mammals/tigre03_architetto_franc_01.png", "mammals/tigre05_architetto_franc_01.png"),
    ("mammals/dog_04_drawn_with_strai_01.png", "mammals/dog_06_drawn_with_strai_01.png"),
]


def shipped_manifest() -> dict[str, dict]:
    from tl_helpers.data import read_manifest

    return {r["file"]: r for r in read_manifest()}


def test_the_shipped_groups_hold_the_audited_pairs_and_every_pair_labelled_same():
    rows = shipped_manifest()
    for a, b in AUDITED:
        assert rows[a]["group"] == rows[b]["group"], (a, b)
    with open(SCRIPT.parent / "clipart_labelled_pairs.csv", newline="") as f:
        same = [(r["a"], r["b"]) for r in __import__("csv").DictReader(f) if r["label"] == "same"]
    assert len(same) > 100
    apart = [(a, b) for a, b in same if a in rows and b in rows and rows[a]["group"] != rows[b]["group"]]
    assert apart == []


def test_junk_is_not_shipped(build_script):
    rows = shipped_manifest()
    sources = {r["source"] for r in rows.values()}
    assert not sources & set(build_script.JUNK)
    assert "birds/duck_yellow_ii_kurt_cagl_.png" not in rows and len(rows) == 497
