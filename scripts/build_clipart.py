"""Build the Clipart dataset shipped in ``tl_helpers/assets/`` from Debian's ``openclipart-png``.

The images are public domain (CC0) clip art. This script is how the shipped copy was made; learners
never need to run it. On Debian or Ubuntu::

    apt-get install openclipart-png
    python scripts/build_clipart.py            # writes tl_helpers/assets/clipart8/

What it does, per category folder (subfolders and symlinks included):
  * opens every PNG, whatever its mode (RGBA, LA, palette with transparency, grayscale),
    composites it on white, shrinks it to at most 160 px (aspect kept) and centres it on a
    160 x 160 white square, so every transform sees the whole object;
  * survives the 169-megapixel file and unreadable files (skipped and counted, never a crash);
  * drops duplicates: two images whose 16x16 RGB thumbnails have the same MD5 are the same picture,
    the first one met (sorted by path) is kept, across all classes;
  * groups near-duplicates that survive that: a colour drawing and its black-and-white version, numbered
    variants, an artist's series (``tl_helpers.groups``: grayscale difference hashes within 12 of 256 bits,
    or the same file name once ``_bw``/``_01``-style suffixes are stripped, within one class);
  * writes an ImageFolder layout ``<class>/<name>.png``, a ``manifest.csv`` (file, class, source path,
    SHA-256 of the written file, group, split) and ``CREDITS.md``.

The split is stratified by class and fixed (seed 0): about 60 % train, 15 % val, 25 % test, whole groups
at a time, computed by ``tl_helpers.data.stratified_split`` so that the notebooks and this script agree.

    python scripts/build_clipart.py --regroup  # recompute groups and split of the shipped images only
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

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tl_helpers.data import stratified_split  # noqa: E402
from tl_helpers.groups import describe_groups, dhash, near_duplicate_groups  # noqa: E402

SOURCE = Path("/usr/share/openclipart/png")
CLIPART8 = {  # class name -> source folder (relative to SOURCE)
    "beverages": "food/beverages",
    "birds": "animals/birds",
    "bugs": "animals/bugs",
    "clothing": "people/clothing",
    "flowers": "plants/flowers",
    "fruit": "food/fruit",
    "mammals": "animals/mammals",
    "vehicles": "transportation/vehicles",
}
MAX_SIDE = 160
MAX_PIXELS = 250_000_000  # the largest source file has 169 MP; anything bigger is skipped


def to_rgb_on_white(img: Image.Image) -> Image.Image:
    """Return ``img`` as RGB, transparent parts composited onto white."""
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("LA", "La", "PA"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, img).convert("RGB")
    return img.convert("RGB")


def load_thumbnail(path: Path) -> Image.Image:
    """Open one source file; return it as a MAX_SIDE x MAX_SIDE RGB square, centred on white."""
    with Image.open(path) as img:
        if img.width * img.height > MAX_PIXELS:
            raise ValueError(f"{img.width}x{img.height} is over {MAX_PIXELS} pixels")
        img.load()
        img.thumbnail((4 * MAX_SIDE, 4 * MAX_SIDE), Image.Resampling.BOX)  # cheap first cut
        rgb = to_rgb_on_white(img)
    rgb.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    square = Image.new("RGB", (MAX_SIDE, MAX_SIDE), (255, 255, 255))
    square.paste(rgb, ((MAX_SIDE - rgb.width) // 2, (MAX_SIDE - rgb.height) // 2))
    return square


def fingerprint(img: Image.Image) -> str:
    """MD5 of a 16x16 RGB resize: equal for exact and near-exact duplicates."""
    return hashlib.md5(img.resize((16, 16), Image.Resampling.BILINEAR).tobytes()).hexdigest()


def build(source: Path, out: Path, classes: dict[str, str]) -> Counter:
    """Write the dataset to ``out``; return counts of kept, duplicate and unreadable files."""
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # our own check in load_thumbnail replaces Pillow's bomb guard
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return _build(source, out, classes)
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def _build(source: Path, out: Path, classes: dict[str, str]) -> Counter:
    stats: Counter = Counter()
    seen: set[str] = set()
    rows = []
    for name, folder in sorted(classes.items()):
        (out / name).mkdir(parents=True, exist_ok=True)
        for src in sorted((source / folder).rglob("*.png")):
            try:
                thumb = load_thumbnail(src)
            except Exception as exc:  # unreadable, truncated or absurdly large: count and go on
                stats["unreadable"] += 1
                print(f"skipped {src}: {exc}", file=sys.stderr)
                continue
            key = fingerprint(thumb)
            if key in seen:
                stats["duplicates"] += 1
                continue
            seen.add(key)
            buf = io.BytesIO()
            thumb.save(buf, format="PNG", optimize=True)
            data = buf.getvalue()
            rel = f"{name}/{src.stem}.png"
            if (out / rel).exists() and any(r["file"] == rel for r in rows):
                rel = f"{name}/{src.stem}_{key[:6]}.png"
            (out / rel).write_bytes(data)
            rows.append({"file": rel, "class": name, "source": str(src.relative_to(source)),
                         "sha256": hashlib.sha256(data).hexdigest()})
            stats["kept"] += 1
    write_manifest(out, rows, classes)
    return stats


def write_manifest(out: Path, rows: list[dict], classes: dict[str, str]) -> str:
    """Group near-duplicates, split whole groups, write ``manifest.csv`` and ``CREDITS.md``; describe the groups."""
    rows.sort(key=lambda r: r["file"])  # ImageFolder's order, so split_indices(seed=0) gives this split
    labels = [r["class"] for r in rows]
    hashes = []
    for r in rows:
        with Image.open(out / r["file"]) as img:
            hashes.append(dhash(img))
    groups = near_duplicate_groups(hashes, [Path(r["file"]).stem for r in rows], labels)
    split = stratified_split(labels, seed=0, groups=groups.tolist())
    for r, g in zip(rows, groups):
        r["group"] = int(g)
    for part, idx in split.items():
        for i in idx:
            rows[i]["split"] = part
    with open(out / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["file", "class", "source", "sha256", "group", "split"])
        writer.writeheader()
        writer.writerows(rows)
    counts = Counter(labels)
    summary = describe_groups(groups.tolist())
    (out / "CREDITS.md").write_text(CREDITS.format(
        n=len(rows), groups=summary,
        table="\n".join(f"| {c} | {classes[c]} | {counts[c]} |" for c in sorted(counts))))
    return summary


def regroup(out: Path, classes: dict[str, str]) -> str:
    """Recompute groups and split of an existing build (the images are left as they are)."""
    with open(out / "manifest.csv", newline="") as f:
        rows = [{k: v for k, v in row.items() if k in ("file", "class", "source", "sha256")} for row in csv.DictReader(f)]
    return write_manifest(out, rows, classes)


CREDITS = """# Clipart-8

{n} public-domain clip-art images in 8 classes, made by `scripts/build_clipart.py` from Debian's
`openclipart-png` package (images from openclipart.org, released under the Creative Commons CC0 1.0
public domain dedication; each source file's author is listed in the package's `.txt` files).
Composited onto white, shrunk to at most 160 px and centred on a 160 x 160 white square,
duplicates removed. `manifest.csv` gives every
file's source path, SHA-256, near-duplicate group and split (stratified by class, seed 0: about 60 % train,
15 % val, 25 % test, whole groups at a time, so no drawing has a copy in another part).

Near-duplicates: {groups}. A group joins a colour drawing and its black-and-white version, numbered
variants and recolourings (grayscale difference hashes within 12 of 256 bits), and every image whose file
name is the same once suffixes such as `_bw` or `_01` are stripped, which also keeps an artist's numbered
series (seven horses by one artist, say) together.

| class | source folder | images |
|---|---|---|
{table}

This derived dataset is also dedicated to the public domain (CC0 1.0).
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=SOURCE)
    parser.add_argument("--out", type=Path, default=ROOT / "tl_helpers" / "assets" / "clipart8")
    parser.add_argument("--regroup", action="store_true",
                        help="only recompute near-duplicate groups and the split of the images already in --out")
    args = parser.parse_args()
    if args.regroup:
        print(regroup(args.out, CLIPART8))
        return
    if not args.source.is_dir():
        sys.exit(f"{args.source} not found: install it with 'apt-get install openclipart-png'.")
    stats = build(args.source, args.out, CLIPART8)
    print(dict(stats))


if __name__ == "__main__":
    main()
