"""Build the RGBA cut-outs shipped in ``tl_helpers/assets/cutouts/`` from Debian's ``openclipart-png``.

Segmentation needs a mask for every image, and drawing masks by hand is what makes segmentation data
expensive. Clip art with a transparent background carries its mask for free: the alpha channel says
which pixels belong to the drawing. ``tl_helpers.segmentation`` pastes these cut-outs onto photos and
noise, and the alpha channel becomes the foreground mask. Learners never need to run this script::

    apt-get install openclipart-png
    python scripts/build_cutouts.py            # writes tl_helpers/assets/cutouts/

What it does, deterministically (no random numbers; files in a fixed order):
  * visits the folders in ``FOLDERS`` in the order of the SHA-1 of each file's relative path (so the
    pick is spread over artists instead of taking the alphabetically first ones);
  * keeps a file only if it has real transparency: an alpha channel whose opaque part (alpha >= 128),
    once cropped to its bounding box, covers 20-92 % of the box, with few half-transparent pixels
    (soft shadows make poor masks), an aspect ratio of at most 2.5 and at least 48 px on its short side;
  * crops it to the bounding box of its alpha, shrinks it to at most ``MAX_SIDE`` px (aspect kept) and
    writes it as an RGBA PNG, at most ``PER_FOLDER`` per folder;
  * groups near-duplicates (``tl_helpers.groups.near_duplicate_groups``: close grayscale or edge hashes
    of the drawing, a close grayscale hash of its mask, or file names that say "variant")
    and splits whole groups into train / val / test, stratified by folder, so no drawing, recolouring
    or numbered variant sits in two parts;
  * writes ``manifest.csv`` (file, folder, source, sha256, group, split, foreground) and ``CREDITS.md``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import sys
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tl_helpers.groups import describe_groups, dhash, group_split, image_hashes, merge_groups, near_duplicate_groups  # noqa: E402

SOURCE = Path("/usr/share/openclipart/png")
FOLDERS = (
    "animals/birds", "animals/bugs", "animals/dinosaurs", "animals/fish", "animals/mammals",
    "buildings/homes", "containers", "electronics", "food/beverages", "food/desserts", "food/fruit",
    "food/vegetables", "office/telephone", "people/clothing", "plants/flowers", "plants/trees",
    "recreation/music", "recreation/sports", "recreation/toys", "transportation/boating",
    "transportation/vehicles",
)
PER_FOLDER = 8
MAX_SIDE = 96
MAX_PIXELS = 250_000_000           # the largest source file has 169 MP
MIN_SHORT_SIDE = 48                # in source pixels, after cropping to the alpha's bounding box
FILL = (0.20, 0.92)                # opaque fraction of the bounding box
MAX_SOFT = 0.15                    # half-transparent pixels (alpha 16..239) per opaque pixel
MAX_ASPECT = 2.5
SPLIT = {"val": 0.2, "test": 0.2}  # of the whole; the rest is train


def has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)


def load_cutout(path: Path) -> Image.Image | None:
    """The file as an RGBA cut-out cropped to its drawing and shrunk to ``MAX_SIDE``, or None if unfit."""
    with Image.open(path) as img:
        if img.width * img.height > MAX_PIXELS or not has_alpha(img):
            return None
        img.load()
        img.thumbnail((8 * MAX_SIDE, 8 * MAX_SIDE), Image.Resampling.BOX)  # cheap first cut
        rgba = img.convert("RGBA")
    alpha = np.asarray(rgba)[..., 3]
    box = Image.fromarray((alpha >= 128).astype(np.uint8) * 255).getbbox()
    if box is None:
        return None
    crop = rgba.crop(box)
    a = np.asarray(crop)[..., 3]
    opaque = (a >= 128).mean()
    soft = ((a >= 16) & (a < 240)).sum() / max((a >= 128).sum(), 1)
    w, h = crop.size
    if not (FILL[0] <= opaque <= FILL[1]) or soft > MAX_SOFT:
        return None
    if min(w, h) < MIN_SHORT_SIDE or max(w, h) > MAX_ASPECT * min(w, h):
        return None
    crop.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    return crop


def mask_hash(cutout: Image.Image) -> int:
    """Difference hash of the cut-out's mask (black drawing on white): recolourings share it."""
    a = np.asarray(cutout)[..., 3]
    return dhash(Image.fromarray(np.where(a >= 128, 0, 255).astype(np.uint8)))


def build(source: Path, out: Path) -> Counter:
    """Write the cut-outs, ``manifest.csv`` and ``CREDITS.md`` to ``out``; return counts."""
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # load_cutout checks the size itself
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return _build(source, out)
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def _build(source: Path, out: Path) -> Counter:
    stats: Counter = Counter()
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    rows, images, seen = [], [], set()
    for folder in FOLDERS:
        files = sorted((source / folder).rglob("*.png"),
                       key=lambda p: hashlib.sha1(str(p.relative_to(source)).encode()).hexdigest())
        kept = 0
        for src in files:
            if kept == PER_FOLDER:
                break
            try:
                cut = load_cutout(src)
            except Exception as exc:  # unreadable or truncated: count and go on
                stats["unreadable"] += 1
                print(f"skipped {src.relative_to(source)}: {exc}", file=sys.stderr)
                continue
            if cut is None:
                stats["unfit"] += 1
                continue
            key = hashlib.md5(cut.resize((16, 16), Image.Resampling.BILINEAR).tobytes()).hexdigest()
            if key in seen:
                stats["duplicates"] += 1
                continue
            seen.add(key)
            name = f"{folder.replace('/', '-')}-{src.stem.lower()}.png"
            buf = io.BytesIO()
            cut.save(buf, format="PNG", optimize=True)
            (out / name).write_bytes(buf.getvalue())
            fg = float((np.asarray(cut)[..., 3] >= 128).mean())
            rows.append({"file": name, "folder": folder, "source": str(src.relative_to(source)),
                         "sha256": hashlib.sha256(buf.getvalue()).hexdigest(), "foreground": f"{fg:.3f}"})
            images.append(cut)
            kept += 1
            stats["kept"] += 1
    labels = [FOLDERS.index(r["folder"]) for r in rows]
    stems = [Path(r["source"]).stem for r in rows]
    groups = merge_groups(near_duplicate_groups([image_hashes(im) for im in images], stems),
                          near_duplicate_groups([mask_hash(im) for im in images]))
    parts = group_split(labels, groups.tolist(), val=SPLIT["val"], test=SPLIT["test"], seed=0,
                        class_names=list(FOLDERS))
    for r, g, p in zip(rows, groups, parts):
        r["group"], r["split"] = int(g), str(p)
    with open(out / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["file", "folder", "source", "sha256", "group", "split",
                                               "foreground"])
        writer.writeheader()
        writer.writerows(sorted(rows, key=lambda r: r["file"]))
    per_split = Counter(parts.tolist())
    per_folder = Counter(r["folder"] for r in rows)
    (out / "CREDITS.md").write_text(CREDITS.format(
        n=len(rows), groups=describe_groups(groups.tolist()), max_side=MAX_SIDE,
        splits=", ".join(f"{k} {per_split[k]}" for k in ("train", "val", "test")),
        table="\n".join(f"| {f} | {per_folder[f]} |" for f in FOLDERS)))
    stats.update({f"split_{k}": v for k, v in per_split.items()})
    return stats


CREDITS = """# Cut-outs

{n} public-domain clip-art drawings with a transparent background, made by `scripts/build_cutouts.py`
from Debian's `openclipart-png` package (images from openclipart.org, released under the Creative Commons
CC0 1.0 public domain dedication; each source file's author is listed in the package's `.txt` files).
Each is cropped to its drawing and shrunk to at most {max_side} px, as an RGBA PNG: the alpha channel is
the drawing's mask. `tl_helpers.segmentation` pastes them onto backgrounds to make a segmentation data
set whose masks cost nothing. `manifest.csv` gives every file's source path, SHA-256, near-duplicate
group, split and foreground fraction.

Split ({splits}), whole near-duplicate groups at a time and stratified by folder, so no drawing, no
recolouring of it and no numbered variant sits in two parts. Near-duplicates: {groups}.

| source folder | cut-outs |
|---|---|
{table}

This derived data is also dedicated to the public domain (CC0 1.0).
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=SOURCE)
    parser.add_argument("--out", type=Path, default=ROOT / "tl_helpers" / "assets" / "cutouts")
    args = parser.parse_args()
    if not args.source.is_dir():
        sys.exit(f"{args.source} not found: install it with 'apt-get install openclipart-png'.")
    print(dict(build(args.source, args.out)))


if __name__ == "__main__":
    main()
