"""Audit a split for near-duplicates across its parts: the closest cross-part pairs, listed and shown.

An audit that does not trust the groups: for every validation and test image it finds the most similar
images in the *other* parts (cosine similarity of EfficientNet-Lite0 pooled features at 128 px, whatever
the groups say), lists them with their similarity, and draws a contact sheet of the closest pairs for a
person to look at. A pair of the same drawing (a recolouring, a black-and-white version, a resize) that sits
in two parts is a leak the groups missed.

    python scripts/audit_split.py                       # the Clipart-8 manifest's fixed split
    python scripts/audit_split.py --seed 3              # the split split_indices(seed=3) draws
    python scripts/audit_split.py --manifest old.csv --sheet before.png   # an older manifest's split
    python scripts/audit_split.py --calibrate           # how the grouping thresholds were set

Prints a summary (how many held-out images have a cross-part neighbour above each similarity), then the
``--top`` closest cross-part pairs; ``--csv`` writes every held-out image's ``--k`` nearest cross-part
neighbours; ``--sheet`` writes the contact sheet (PNG) of the ``--top`` closest pairs.

``--calibrate`` prints, for the labelled pairs of ``scripts/clipart_labelled_pairs.csv`` (a person's verdict
on 377 candidate pairs of Clipart-8: the same drawing, a series by one artist, different drawings, junk),
the distances of each measure of ``tl_helpers.groups`` by label, and the same measures on photos (skimage's
and scikit-learn's sample photos: distinct crops and rotations, and simulated burst shots). The thresholds of
``tl_helpers.groups`` are the largest that join none of the pairs of different pictures, with a margin.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from build_clipart import PAIRS, lite0_features  # noqa: E402
from tl_helpers.data import clipart_root, stratified_split  # noqa: E402
from tl_helpers.groups import (EDGE_BITS, MAX_DHASH_DISTANCE, MAX_EDGE_DISTANCE, MIN_COSINE, dhash, edge_hash,  # noqa: E402
                               hamming_matrix, image_hashes, near_duplicate_groups)

THRESHOLDS = (0.95, 0.9, 0.85, 0.8, 0.75, 0.7)


def read_rows(manifest: Path) -> list[dict]:
    """The manifest's rows (file, class, group, split...), in file order."""
    with open(manifest, newline="") as f:
        return sorted(csv.DictReader(f), key=lambda r: r["file"])


def parts_of(rows: list[dict], seed: int | None) -> list[str]:
    """The manifest's own split (``seed=None``) or the split ``stratified_split`` draws with its groups."""
    if seed is None:
        return [r["split"] for r in rows]
    split = stratified_split([r["class"] for r in rows], seed=seed, groups=[int(r["group"]) for r in rows])
    part = {i: k for k, idx in split.items() for i in idx}
    return [part[i] for i in range(len(rows))]


def cross_part_neighbours(features: np.ndarray, parts: list[str], k: int) -> list[tuple[int, int, float]]:
    """(held-out index, other-part index, cosine) for the ``k`` nearest other-part images of every val/test image."""
    f = features / np.linalg.norm(features, axis=1, keepdims=True)
    sim = f @ f.T
    parts_arr = np.array(parts)
    out = []
    for i in np.nonzero(parts_arr != "train")[0]:
        other = np.nonzero(parts_arr != parts_arr[i])[0]
        best = other[np.argsort(-sim[i, other], kind="stable")[:k]]
        out += [(int(i), int(j), float(sim[i, j])) for j in best]
    return out


def closest_pairs(neighbours: list[tuple[int, int, float]], top: int) -> list[tuple[int, int, float]]:
    """The ``top`` most similar distinct cross-part pairs (each unordered pair once)."""
    seen, out = set(), []
    for i, j, s in sorted(neighbours, key=lambda t: -t[2]):
        key = (min(i, j), max(i, j))
        if key not in seen:
            seen.add(key)
            out.append((i, j, s))
    return out[:top]


def contact_sheet(pairs: list[tuple[Path, Path, str, str]], out: Path, size: int = 128, columns: int = 3) -> None:
    """A PNG of image pairs side by side: (left image, right image, caption line 1, caption line 2)."""
    cell_w, cell_h = 2 * size + 16, size + 30
    rows = max(1, (len(pairs) + columns - 1) // columns)
    sheet = Image.new("RGB", (columns * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    for n, (a, b, line1, line2) in enumerate(pairs):
        x, y = (n % columns) * cell_w, (n // columns) * cell_h
        for m, path in enumerate((a, b)):
            with Image.open(path) as img:
                sheet.paste(img.convert("RGB").resize((size, size)), (x + m * size, y))
        draw.rectangle([x, y, x + 2 * size - 1, y + size - 1], outline="grey")
        draw.text((x + 2, y + size + 2), line1[:46], fill="black")
        draw.text((x + 2, y + size + 15), line2[:46], fill="blue")
    sheet.save(out)


def audit(root: Path, manifest: Path, seed: int | None, k: int, top: int, sheet: Path | None,
          table: Path | None) -> dict:
    """Run the audit; print the summary and the closest pairs; return the numbers."""
    rows = read_rows(manifest)
    files = [root / r["file"] for r in rows]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        sys.exit(f"{len(missing)} files of {manifest.name} are not in {root}: {missing[:3]}")
    parts = parts_of(rows, seed)
    features = lite0_features(files, cache=None)
    neighbours = cross_part_neighbours(features, parts, k)
    groups = [int(r["group"]) for r in rows]
    nearest = {}
    for i, j, s in neighbours:
        nearest.setdefault(i, (j, s))
    print(f"{manifest.name}: {len(rows)} images, {len(set(groups))} groups; split "
          f"{'fixed (manifest)' if seed is None else f'seed {seed}'}: "
          + ", ".join(f"{p} {parts.count(p)}" for p in ("train", "val", "test")))
    counts = {t: sum(s >= t for _, s in nearest.values()) for t in THRESHOLDS}
    print("held-out images whose nearest image in another part has cosine >= t: "
          + ", ".join(f"{t}: {n}" for t, n in counts.items()))
    pairs = closest_pairs(neighbours, top)
    print(f"\nthe {len(pairs)} closest cross-part pairs (cosine, same class?, parts):")
    for i, j, s in pairs:
        same = "same class" if rows[i]["class"] == rows[j]["class"] else "other class"
        print(f"  {s:.3f}  {rows[i]['file']} ({parts[i]}) ~ {rows[j]['file']} ({parts[j]})  [{same}]")
    if table is not None:
        with open(table, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["held_out", "part", "neighbour", "neighbour_part", "cosine", "same_class"])
            for i, j, s in neighbours:
                writer.writerow([rows[i]["file"], parts[i], rows[j]["file"], parts[j], f"{s:.3f}",
                                 rows[i]["class"] == rows[j]["class"]])
    if sheet is not None:
        contact_sheet([(files[i], files[j], f"{s:.3f} {parts[i]} | {parts[j]}",
                        f"{Path(rows[i]['file']).stem[:21]} | {Path(rows[j]['file']).stem[:21]}")
                       for i, j, s in pairs], sheet)
        print(f"\ncontact sheet: {sheet}")
    return {"counts": counts, "pairs": [(rows[i]["file"], rows[j]["file"], round(s, 3)) for i, j, s in pairs]}


# --------------------------------------------------------------------------------------------------
# Calibration: the distances of each measure on labelled pairs and on photos
# --------------------------------------------------------------------------------------------------

def _photos() -> list[tuple[str, Image.Image]]:
    import skimage.data
    from sklearn.datasets import load_sample_images

    names = ["astronaut", "brick", "camera", "chelsea", "clock", "coffee", "coins", "colorwheel", "grass",
             "gravel", "horse", "hubble_deep_field", "immunohistochemistry", "logo", "moon", "page", "retina",
             "rocket", "text"]
    out = []
    for name in names:
        a = getattr(skimage.data, name)()
        out.append((name, Image.fromarray((a * 255).astype(np.uint8) if a.dtype == bool else a).convert("RGB")))
    return out + [(f"sklearn{k}", Image.fromarray(a)) for k, a in enumerate(load_sample_images().images)]


def distinct_pictures(photos: list[tuple[str, Image.Image]]) -> list[tuple[str, Image.Image]]:
    """Each photo, its four quarters and its quarter turn: pictures that are not near-duplicates."""
    out = []
    for name, img in photos:
        w, h = img.size
        out += [(name, img), (f"{name} rotated", img.rotate(90, expand=True))]
        out += [(f"{name} quarter {q}", img.crop((x, y, x + w // 2, y + h // 2)))
                for q, (x, y) in enumerate([(0, 0), (w // 2, 0), (0, h // 2), (w // 2, h // 2)])]
    return out


def burst(img: Image.Image, k: int, shift: float = 0.01) -> Image.Image:
    """A simulated next shot of a burst: moved by ``shift`` of the frame, 3 % brighter or darker, sensor
    noise, saved as JPEG (quality 85)."""
    rng = np.random.default_rng(k)
    w, h = img.size
    dx, dy = max(1, int(w * shift)), max(1, int(h * shift))
    out = img.crop((dx * (k % 2), dy * ((k + 1) % 2), w - dx * ((k + 1) % 2), h - dy * (k % 2))).resize((w, h))
    out = ImageEnhance.Brightness(out).enhance(1.0 + 0.03 * (k - 1))
    noisy = np.clip(np.asarray(out, dtype=np.float32) + rng.normal(0, 2, (h, w, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noisy).save(buf, "JPEG", quality=85)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _smallest(values: np.ndarray, names: list[str], n: int = 3) -> str:
    order = np.argsort(values, kind="stable")[:n]
    return ", ".join(f"{values[o]:g} ({names[o]})" for o in order)


def calibrate(root: Path, pairs_file: Path) -> None:
    """Print each measure's values on the labelled pairs and on photos (see the module docstring)."""
    with open(pairs_file, newline="") as f:
        labelled = [r for r in csv.DictReader(f) if (root / r["a"]).exists() and (root / r["b"]).exists()]
    files = sorted({r[c] for r in labelled for c in ("a", "b")})
    sources = {r["file"]: Path(r["source"]).stem for r in read_rows(root / "manifest.csv")}
    index = {f: i for i, f in enumerate(files)}
    images = [Image.open(root / f) for f in files]
    grey = hamming_matrix([dhash(im) for im in images])
    edges = hamming_matrix([edge_hash(im) for im in images], EDGE_BITS)
    feats = lite0_features([root / f for f in files], cache=None)
    feats = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    cosine = feats @ feats.T
    classes = [f.split("/")[0] for f in files]
    name_groups = near_duplicate_groups([0] * len(files), [sources.get(f, Path(f).stem) for f in files], classes,
                                        max_distance=-1, n_bits=1)
    print(f"{len(labelled)} labelled pairs of {pairs_file.name}:")
    for label in ("same", "series", "different"):
        rows = [r for r in labelled if r["label"] == label]
        ij = [(index[r["a"]], index[r["b"]]) for r in rows]
        names = [f"{Path(r['a']).stem[:18]}~{Path(r['b']).stem[:18]}" for r in rows]
        g = np.array([grey[i, j] for i, j in ij])
        e = np.array([edges[i, j] for i, j in ij])
        c = np.array([cosine[i, j] for i, j in ij])
        print(f"  {label} ({len(rows)} pairs)")
        if label == "same":
            pixels = (g <= MAX_DHASH_DISTANCE) | (e <= MAX_EDGE_DISTANCE) | (c >= MIN_COSINE)
            names = np.array([name_groups[i] == name_groups[j] for i, j in ij])
            print(f"    joined by dHash <= {MAX_DHASH_DISTANCE}: {np.sum(g <= MAX_DHASH_DISTANCE)}, edge hash <= "
                  f"{MAX_EDGE_DISTANCE}: {np.sum(e <= MAX_EDGE_DISTANCE)}, cosine >= {MIN_COSINE}: "
                  f"{np.sum(c >= MIN_COSINE)}, by any of these: {np.sum(pixels)}; by the names: {np.sum(names)}; "
                  f"by pixels or names: {np.sum(pixels | names)}; only by the person's label: {np.sum(~(pixels | names))}")
            for (i, j), hit in zip(ij, pixels | names):
                if not hit:
                    print(f"      {files[i]} ~ {files[j]}: dHash {grey[i, j]}, edge {edges[i, j]}, cosine {cosine[i, j]:.3f}")
        else:
            print(f"    smallest dHash distances: {_smallest(g, names)}")
            print(f"    smallest edge-hash distances: {_smallest(e, names)}")
            print(f"    largest cosines: {_smallest(-c, names).replace('-', '')}")
    photos = _photos()
    distinct = distinct_pictures(photos)
    hashes = [image_hashes(im) for _, im in distinct]
    names = [n for n, _ in distinct]
    iu = np.triu_indices(len(distinct), 1)
    pair_names = [f"{names[i]}~{names[j]}" for i, j in zip(*iu)]
    for label, matrix in (("dHash", hamming_matrix([h[0] for h in hashes])),
                          ("edge hash", hamming_matrix([h[1] for h in hashes], EDGE_BITS))):
        values = matrix[iu]
        print(f"{len(distinct)} distinct photo pictures, smallest {label} distances: "
              f"{_smallest(values, pair_names, 4)}")
    for shift in (0.005, 0.01, 0.02):
        worst = []
        for _, img in photos:
            first = image_hashes(img)
            worst.append(max(bin(first[0] ^ image_hashes(burst(img, k, shift))[0]).count("1") for k in range(3)))
        worst = np.array(worst)
        print(f"bursts moved by {shift:.1%}: {np.sum(worst <= MAX_DHASH_DISTANCE)} of {len(photos)} photos keep all "
              f"3 next shots within dHash {MAX_DHASH_DISTANCE} (largest distances {sorted(worst.tolist())[-3:]})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=clipart_root(), help="the dataset folder (default: Clipart-8)")
    parser.add_argument("--manifest", type=Path, help="the manifest to audit (default: ROOT/manifest.csv)")
    parser.add_argument("--seed", type=int, help="audit the split this seed draws (default: the manifest's split)")
    parser.add_argument("--k", type=int, default=3, help="nearest cross-part neighbours kept per held-out image")
    parser.add_argument("--top", type=int, default=30, help="closest pairs printed and drawn")
    parser.add_argument("--sheet", type=Path, help="write the contact sheet of the closest pairs here (PNG)")
    parser.add_argument("--csv", type=Path, help="write every held-out image's nearest neighbours here")
    parser.add_argument("--calibrate", action="store_true", help="print the measures on labelled pairs and photos")
    args = parser.parse_args()
    if args.calibrate:
        calibrate(args.root, PAIRS)
        return
    audit(args.root, args.manifest or args.root / "manifest.csv", args.seed, args.k, args.top, args.sheet, args.csv)


if __name__ == "__main__":
    main()
