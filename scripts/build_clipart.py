"""Build the Clipart dataset shipped in ``tl_helpers/assets/`` from Debian's ``openclipart-png``.

The images are public domain (CC0) clip art. This script is how the shipped copy was made; learners
never need to run it. On Debian or Ubuntu::

    apt-get install openclipart-png openclipart-svg   # the SVGs only for the artists' names
    python scripts/build_clipart.py            # writes tl_helpers/assets/clipart8/

What it does, per category folder (subfolders and symlinks included):
  * opens every PNG, whatever its mode (RGBA, LA, palette with transparency, grayscale),
    composites it on white, shrinks it to at most 160 px (aspect kept) and centres it on a
    160 x 160 white square, so every transform sees the whole object;
  * survives the 169-megapixel file and unreadable files (skipped and counted, never a crash);
  * leaves out the files of ``JUNK`` (placeholders such as a picture of the words "Linked Image Not
    Found", and pictures that show nothing of their class), each with its reason;
  * drops duplicates: two images whose 16x16 RGB thumbnails have the same MD5 are the same picture,
    the first one met (sorted by path) is kept, across all classes;
  * groups near-duplicates that survive that, within one class, with ``tl_helpers.groups.near_duplicate_groups``
    (the function that also groups a learner's own folders): close grayscale difference hashes (a copy, a
    resize), close edge hashes (a recolouring, a black-and-white version), a cosine similarity of
    EfficientNet-Lite0 pooled features (128 px) of at least ``MIN_COSINE`` (``MIN_SERIES_COSINE`` for two
    drawings by one artist: a series that looks alike), the same file name once variant
    and colour words are dropped (``bus1_bw_jarno_01`` / ``bus1_jarno_01``, ``lemon_half`` / ``lime_half``),
    and the pairs a person labelled "same" in ``scripts/clipart_labelled_pairs.csv`` (which also set the
    thresholds: ``python scripts/audit_split.py --calibrate``);
  * records each drawing's artist (the ``dc:creator`` of the matching file of ``openclipart-svg``; empty
    when unknown), for the series rule above and the optional artist-level groups
    (``tl_helpers.groups.artist_groups``);
  * writes an ImageFolder layout ``<class>/<name>.png``, a ``manifest.csv`` (file, class, source path,
    SHA-256 of the written file, artist, group, split) and ``CREDITS.md``.

The split is stratified by class and fixed (seed 0): about 60 % train, 15 % val, 25 % test, whole groups
at a time, computed by ``tl_helpers.data.stratified_split`` so that the notebooks and this script agree.

    python scripts/build_clipart.py --regroup  # recompute artists, groups and split of the shipped images only
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import re
import sys
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tl_helpers.data import stratified_split  # noqa: E402
from tl_helpers.groups import MIN_COSINE, MIN_SERIES_COSINE, describe_groups, image_hashes, near_duplicate_groups, on_white  # noqa: E402

SOURCE = Path("/usr/share/openclipart/png")
SVG_SOURCE = Path("/usr/share/openclipart/svg")
PAIRS = ROOT / "scripts" / "clipart_labelled_pairs.csv"
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
# Source files left out, with the reason (found by looking at every image whose nearest neighbour in
# Lite0 feature space lies in another class, and at the closest pairs of scripts/audit_split.py).
JUNK = {
    "animals/birds/duck_yellow_ii_kurt_cagl_.png": 'a placeholder: the words "Linked Image Not Found"',
    "animals/birds/penguin/tux_didier_fabert_01.png": 'a placeholder: the words "Linked Image Not Found"',
    "animals/birds/mirjam_meijer_mirjam_mei_01.png": "flowers and a butterfly, no bird",
    "animals/mammals/housecats/cat_scrathing_post_benji_01.png": "a cat's scratching post, no animal",
    "transportation/vehicles/lighthouse_01.png": "a lighthouse, not a vehicle",
    "food/fruit/turkey_platter_01_with_fruit_and_vegitables_01.png":
        "a roast turkey, the drawing of birds/turkey_on_platter_01 with a garnish: one drawing in two classes",
}


def load_thumbnail(path: Path) -> Image.Image:
    """Open one source file; return it as a MAX_SIDE x MAX_SIDE RGB square, centred on white."""
    with Image.open(path) as img:
        if img.width * img.height > MAX_PIXELS:
            raise ValueError(f"{img.width}x{img.height} is over {MAX_PIXELS} pixels")
        img.load()
        img.thumbnail((4 * MAX_SIDE, 4 * MAX_SIDE), Image.Resampling.BOX)  # cheap first cut
        rgb = on_white(img)
    rgb.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    square = Image.new("RGB", (MAX_SIDE, MAX_SIDE), (255, 255, 255))
    square.paste(rgb, ((MAX_SIDE - rgb.width) // 2, (MAX_SIDE - rgb.height) // 2))
    return square


def fingerprint(img: Image.Image) -> str:
    """MD5 of a 16x16 RGB resize: equal for exact and near-exact duplicates."""
    return hashlib.md5(img.resize((16, 16), Image.Resampling.BILINEAR).tobytes()).hexdigest()


def build(source: Path, out: Path, classes: dict[str, str], features: bool = True) -> Counter:
    """Write the dataset to ``out``; return counts of kept, duplicate and unreadable files."""
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # our own check in load_thumbnail replaces Pillow's bomb guard
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return _build(source, out, classes, features)
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def _build(source: Path, out: Path, classes: dict[str, str], features: bool) -> Counter:
    stats: Counter = Counter()
    seen: set[str] = set()
    rows = []
    for name, folder in sorted(classes.items()):
        (out / name).mkdir(parents=True, exist_ok=True)
        for src in sorted((source / folder).rglob("*.png")):
            if src.relative_to(source).as_posix() in JUNK:
                stats["junk"] += 1
                continue
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
    write_manifest(out, rows, classes, features)
    return stats


def lite0_features(paths: list[Path], image_size: int = 128, cache: Path | bool | None = False) -> np.ndarray:
    """EfficientNet-Lite0 pooled features (1280 numbers) of image files at ``image_size`` px, one row per file."""
    from torch import nn

    from tl_helpers.data import eval_transform, extract_features
    from tl_helpers.imagefolder import ImageFiles
    from tl_helpers.models import load_pretrained

    pre = load_pretrained("efficientnet_lite0")
    pre.model._fc = nn.Identity()
    files = ImageFiles(Path(paths[0]).parent if paths else ".", [(p, 0) for p in paths], ["all"],
                       transform=eval_transform(image_size, mean=pre.mean, std=pre.std))
    features, _ = extract_features(pre.model, files, cache=cache, progress=False)
    return features.numpy()


def svg_artist(source: Path, svg_source: Path = SVG_SOURCE) -> str:
    """The ``dc:creator`` of the SVG that the PNG ``source`` (relative path) was rendered from, or ''."""
    svg = svg_source / Path(source).with_suffix(".svg")
    if not svg.is_file():
        return ""
    found = re.search(r"<dc:creator>\s*<cc:Agent[^>]*>\s*<dc:title>(.*?)</dc:title>", svg.read_text(errors="replace"),
                      re.S)
    return found.group(1).strip() if found else ""


def normalise_artists(names: list[str]) -> list[str]:
    """One spelling per artist: lower case, no e-mail or parenthesis, and a name whose words all appear in
    a longer one (``Rollandin Francesco`` in ``Architetto Francesco Rollandin``) takes the longer one,
    unless that one credits several people (``Nicu Buculei and Nathan Eady`` stays a name of its own).

    >>> normalise_artists(["Rollandin Francesco", "Architetto Francesco Rollandin", "PeterM", "peterm", ""])
    ['architetto francesco rollandin', 'architetto francesco rollandin', 'peterm', 'peterm', '']
    >>> normalise_artists(["Nicu Buculei", "Nicu Buculei and Nathan Eady"])
    ['nicu buculei', 'nicu buculei and nathan eady']
    """
    clean = [" ".join(re.sub(r"\(.*?\)|\S+@\S+", " ", n.lower()).split()) for n in names]
    words = {c: set(re.findall(r"\w+", c)) for c in set(clean) if c}
    several = {c for c in words if re.search(r"\band\b|&|,", c)}
    longer = {}
    for c, w in words.items():
        supersets = [d for d, v in words.items() if d != c and d not in several and len(w) >= 2 and w < v]
        longer[c] = max(supersets, key=len) if supersets else c
    return [longer.get(c, c) for c in clean]


def labelled_pairs(files: list[str], path: Path = PAIRS) -> list[tuple[int, int]]:
    """Index pairs of ``files`` (``class/name.png``) that a person labelled "same" in ``path``."""
    if not path.is_file():
        return []
    index = {f: i for i, f in enumerate(files)}
    with open(path, newline="") as f:
        return [(index[r["a"]], index[r["b"]]) for r in csv.DictReader(f)
                if r["label"] == "same" and r["a"] in index and r["b"] in index]


def manifest_groups(out: Path, rows: list[dict], features: bool = True, series: bool = True) -> np.ndarray:
    """Near-duplicate group of every row (``tl_helpers.groups.near_duplicate_groups``, within its class);
    ``series=False`` leaves out the rule for an artist's look-alike series."""
    hashes = []
    for r in rows:
        with Image.open(out / r["file"]) as img:
            hashes.append(image_hashes(img))
    stems = [Path(r["source"]).stem for r in rows]  # hummer_07_c388aa.png was hummers/hummer_07.png
    feats = lite0_features([out / r["file"] for r in rows]) if features else None
    return near_duplicate_groups(hashes, stems, [r["class"] for r in rows], features=feats, min_cosine=MIN_COSINE,
                                 artists=[r.get("artist", "") for r in rows] if series else None,
                                 min_series_cosine=MIN_SERIES_COSINE,
                                 same_pairs=labelled_pairs([r["file"] for r in rows]))


def write_manifest(out: Path, rows: list[dict], classes: dict[str, str], features: bool = True,
                   svg_source: Path = SVG_SOURCE) -> str:
    """Group near-duplicates, split whole groups, write ``manifest.csv`` and ``CREDITS.md``; describe the groups."""
    rows.sort(key=lambda r: r["file"])  # ImageFolder's order, so split_indices(seed=0) gives this split
    labels = [r["class"] for r in rows]
    if svg_source.is_dir():
        for r, artist in zip(rows, normalise_artists([svg_artist(r["source"], svg_source) for r in rows])):
            r["artist"] = artist
    groups = manifest_groups(out, rows, features)
    split = stratified_split(labels, seed=0, groups=groups.tolist())
    for r, g in zip(rows, groups):
        r["group"] = int(g)
        r.setdefault("artist", "")
    for part, idx in split.items():
        for i in idx:
            rows[i]["split"] = part
    with open(out / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["file", "class", "source", "sha256", "artist", "group", "split"])
        writer.writeheader()
        writer.writerows(rows)
    counts = Counter(labels)
    summary = describe_groups(groups.tolist())
    (out / "CREDITS.md").write_text(CREDITS.format(
        n=len(rows), groups=summary, junk=len(JUNK), min_cosine=MIN_COSINE, min_series_cosine=MIN_SERIES_COSINE,
        table="\n".join(f"| {c} | {classes[c]} | {counts[c]} |" for c in sorted(counts))))
    return summary


def regroup(out: Path, classes: dict[str, str], features: bool = True) -> str:
    """Recompute artists, groups and split of an existing build (the images are left as they are; files
    listed in ``JUNK`` are deleted)."""
    with open(out / "manifest.csv", newline="") as f:
        rows = [{k: v for k, v in row.items() if k in ("file", "class", "source", "sha256", "artist")}
                for row in csv.DictReader(f)]
    for r in [r for r in rows if r["source"] in JUNK]:
        (out / r["file"]).unlink(missing_ok=True)
        rows.remove(r)
    return write_manifest(out, rows, classes, features)


CREDITS = """# Clipart-8

{n} public-domain clip-art images in 8 classes, made by `scripts/build_clipart.py` from Debian's
`openclipart-png` package (images from openclipart.org, released under the Creative Commons CC0 1.0
public domain dedication; each drawing's author is named in the metadata of the matching file of the
`openclipart-svg` package, and in `manifest.csv`'s `artist` column). Composited onto white, shrunk to at
most 160 px and centred on a 160 x 160 white square, duplicates removed, {junk} unusable source files left
out (placeholders such as a picture of the words "Linked Image Not Found", and pictures that show nothing
of their class: the list and reasons are in the script). `manifest.csv` gives every file's source path,
SHA-256, artist, near-duplicate group and split (stratified by class, seed 0: about 60 % train, 15 % val,
25 % test, whole groups at a time, so no drawing has a copy in another part).

Near-duplicates: {groups}. A group joins, within one class, the versions of one drawing: a colour drawing
and its black-and-white version, recolourings, resized copies (close grayscale difference hashes or edge
hashes, or a cosine similarity of at least {min_cosine} between EfficientNet-Lite0 features), every image
whose file name is the same once variant and colour words such as `bw`, `outline` or `lemon`/`lime` are
dropped, and pairs a person labelled as the same drawing (`scripts/clipart_labelled_pairs.csv`). It also
joins a series by one artist that looks alike (cosine at least {min_series_cosine}: the same template, pose
or style, such as a set of road signs or five tigers); an artist's other drawings may sit in other parts.
`tl_helpers.groups.artist_groups` joins all of an artist's drawings of a class, from the `artist` column,
for a stricter split.

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
                        help="only recompute artists, near-duplicate groups and the split of the images already in "
                             "--out (and delete the files listed in JUNK)")
    parser.add_argument("--no-features", action="store_true",
                        help="group without the Lite0 feature similarity (hashes, names and labelled pairs only)")
    args = parser.parse_args()
    if args.regroup:
        print(regroup(args.out, CLIPART8, features=not args.no_features))
        return
    if not args.source.is_dir():
        sys.exit(f"{args.source} not found: install it with 'apt-get install openclipart-png'.")
    stats = build(args.source, args.out, CLIPART8, features=not args.no_features)
    print(dict(stats))


if __name__ == "__main__":
    main()
