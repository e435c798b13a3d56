"""Checkers for the exercises on your own images: bad files, a split without leaks, ONNX without PyTorch.

>>> import tempfile
>>> from tl_helpers.imagefolder import check_image
>>> ok = check_find_bad_files(lambda folder: sorted(p for p in Path(folder).rglob("*.*") if check_image(p)[1]))
✅ Correct: ...
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from tl_helpers.checks import Exercise, _NotYet, _checker


def _bad_folder(root: Path) -> tuple[set[str], set[str]]:
    """A class folder with good images (PNG, CMYK JPEG) and bad files; returns (bad names, good names)."""
    rng = np.random.default_rng(0)
    folder = root / "cats"
    folder.mkdir(parents=True)
    for k in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"good_{k}.png")
    Image.new("CMYK", (40, 40), (0, 200, 0, 0)).save(folder / "cmyk.jpg")
    data = (folder / "good_0.png").read_bytes()
    (folder / "half.png").write_bytes(data[: len(data) // 2])
    (folder / "page.jpg").write_text("<html>not an image</html>")
    (folder / "empty.jpg").write_bytes(b"")
    return {"half.png", "page.jpg", "empty.jpg"}, {"good_0.png", "good_1.png", "good_2.png", "cmyk.jpg"}


@_checker("find_bad_files(folder) should return a list of the paths that cannot be decoded, and never raise.")
def check_find_bad_files(find_bad_files: Callable) -> str:
    """Does ``find_bad_files(folder)`` return exactly the files that cannot be decoded (searching subfolders)?"""
    with tempfile.TemporaryDirectory() as tmp:
        bad, good = _bad_folder(Path(tmp))
        answer = find_bad_files(Path(tmp))
        if isinstance(answer, (str, Path)) or not hasattr(answer, "__iter__"):
            raise _NotYet(f"expected a list of paths, got a {type(answer).__name__}",
                          "collect the bad paths in a list and return it")
        names = {Path(p).name for p in answer}
    if "half.png" not in names and {"page.jpg", "empty.jpg"} <= names:
        raise _NotYet("the truncated file half.png was not found",
                      "Image.open() reads only the header; call img.load() to decode the whole file")
    missed = sorted(bad - names)
    if missed:
        raise _NotYet(f"{', '.join(missed)} cannot be decoded but were not returned",
                      "open every file with an image extension and catch the errors Pillow raises "
                      "(UnidentifiedImageError, OSError)")
    flagged = sorted(names & good)
    if flagged:
        raise _NotYet(f"{', '.join(flagged)} can be used (CMYK converts to RGB) but were returned as bad",
                      "only a file that raises on open or load is bad")
    return "the truncated, text and empty files, and no good one (CMYK included)."


@_checker("leak_free_split(labels, groups, seed) should return (train indices, test indices).")
def check_leak_free_split(leak_free_split: Callable) -> str:
    """Does ``leak_free_split(labels, groups, seed)`` keep groups whole, every class on both sides, and repeat?"""
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(60), rng.integers(1, 4, size=60))   # 60 drawings, 1-3 copies each
    labels = groups % 3
    answer = leak_free_split(labels.tolist(), groups.tolist(), 0)
    if not (isinstance(answer, (tuple, list)) and len(answer) == 2):
        raise _NotYet("expected a pair (train indices, test indices)", "return train_idx, test_idx")
    train, test = (np.asarray(list(a), dtype=int) for a in answer)
    if len(set(train) | set(test)) != len(labels) or set(train) & set(test):
        raise _NotYet("every index must be in exactly one of the two parts",
                      "use the indices the splitter gives for one fold, without overlap")
    straddle = set(groups[train]) & set(groups[test])
    if straddle:
        raise _NotYet(f"{len(straddle)} groups have copies in both parts, so the test measures memory",
                      "split whole groups: sklearn's StratifiedGroupKFold (or GroupShuffleSplit) with groups=")
    if set(labels[test]) != {0, 1, 2} or set(labels[train]) != {0, 1, 2}:
        raise _NotYet("a class is missing from one part",
                      "stratify by class as well: StratifiedGroupKFold(n_splits=4, shuffle=True, random_state=seed)")
    share = len(test) / len(labels)
    if not 0.1 <= share <= 0.45:
        raise _NotYet(f"the test part holds {share:.0%} of the items", "aim for about a quarter (4 folds, one for test)")
    again = leak_free_split(labels.tolist(), groups.tolist(), 0)
    if sorted(np.asarray(list(again[1]), dtype=int).tolist()) != sorted(test.tolist()):
        raise _NotYet("the same seed gave another split", "pass the seed as random_state and shuffle=True")
    other = leak_free_split(labels.tolist(), groups.tolist(), 1)
    if sorted(np.asarray(list(other[1]), dtype=int).tolist()) == sorted(test.tolist()):
        raise _NotYet("seed 1 gives the same split as seed 0", "use the seed: random_state=seed")
    return f"whole groups, every class on both sides, {share:.0%} for test, the same split for the same seed."


@_checker("onnx_probabilities(session, image, image_size, mean, std) should return one probability per class.")
def check_onnx_probabilities(onnx_probabilities: Callable, onnx_path: str | Path, images: Sequence) -> str:
    """Does the learner's NumPy pipeline give the exported model's probabilities for PIL images?"""
    import onnxruntime as ort

    from tl_helpers.export import OnnxClassifier

    reference = OnnxClassifier(onnx_path)
    d = reference.description
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    pil = [Image.open(p).convert("RGB") if not isinstance(p, Image.Image) else p for p in images]
    worst = 0.0
    for img in pil:
        answer = np.asarray(onnx_probabilities(session, img, d["image_size"], d["mean"], d["std"]), dtype=float)
        answer = answer.reshape(-1)
        if answer.shape != (len(reference.classes),):
            raise _NotYet(f"expected {len(reference.classes)} probabilities, got shape {answer.shape}",
                          "feed a batch of one image, (1, 3, size, size), and return row 0 of the softmax")
        if abs(answer.sum() - 1) > 1e-3 or answer.min() < 0:
            raise _NotYet("the values do not sum to 1: these are logits",
                          "apply a softmax: exp(z - z.max()) / exp(z - z.max()).sum()")
        expected = reference.image_probabilities([img])[0]
        worst = max(worst, float(np.abs(answer - expected).max()))
    if worst > 0.02:
        raise _NotYet(f"the probabilities differ from the exported model's by up to {worst:.2f}",
                      "resize the shorter side to image_size, centre-crop, divide by 255, subtract the mean, "
                      "divide by the std, then channels first (transpose(2, 0, 1))")
    return f"the same probabilities as the model (within {worst:.0e}) with NumPy, Pillow and onnxruntime only."


EXERCISES: dict[str, Exercise] = {
    "07.1": Exercise("Find every file that cannot be decoded", "07", check_find_bad_files),
    "07.2": Exercise("A split that keeps near-duplicates together", "07", check_leak_free_split),
    "07.3": Exercise("Run the ONNX file with NumPy only", "07", check_onnx_probabilities),
}
