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
            pixels = rng.integers(0, 256, size=(40 + 10 * i, 64, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / folder / f"drawing_{'abcdefgh'[i]}.png")


def test_build_survives_odd_files(tmp_path, build_script, monkeypatch):
    source, out = tmp_path / "src", tmp_path / "out"
    make_source(source)
    monkeypatch.setattr(build_script, "MAX_PIXELS", 80_000)     # stands in for the 169-megapixel file
    stats = build_script.build(source, out, {"first": "a", "second": "b"})
    assert stats["kept"] == 20 and stats["duplicates"] == 1 and stats["unreadable"] == 2
    for png in out.rglob("*.png"):
        with Image.open(png) as img:
            assert img.mode == "RGB" and img.size == (160, 160)
    corner = Image.open(out / "first" / "rgba.png").getpixel((0, 0))
    assert corner == (255, 255, 255), "transparent pixels are composited onto white"
    manifest = (out / "manifest.csv").read_text().splitlines()
    assert manifest[0] == "file,class,source,sha256,group,split" and len(manifest) == 21
    assert {line.rsplit(",", 1)[1] for line in manifest[1:]} == {"train", "val", "test"}


def test_build_leaves_pillows_global_limit_alone(tmp_path, build_script):
    limit = Image.MAX_IMAGE_PIXELS
    make_source(tmp_path / "src")
    build_script.build(tmp_path / "src", tmp_path / "out", {"first": "a", "second": "b"})
    assert Image.MAX_IMAGE_PIXELS == limit
