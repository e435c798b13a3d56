"""Checkers for the exercises on your own images: what the model sees of a phone photo (predict, then check),
bad files, a split without leaks, ONNX without PyTorch on a large rotated photo.

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

from tl_helpers.checks import Exercise, _learner_code, _NotYet, _checker


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


# --------------------------------------------------------------------------------------------------
# Predict, then check: what the network sees of a phone photo
# --------------------------------------------------------------------------------------------------

def _phone_photo(folder: Path, size: tuple[int, int] = (400, 300)) -> Path:
    """A portrait shot stored as phones store it: landscape pixels plus an EXIF tag "rotate 90 degrees
    clockwise to display". Shown upright it is ``size[1]`` wide and ``size[0]`` tall, red along its top."""
    upright = Image.new("RGB", (size[1], size[0]), "white")
    upright.paste((220, 30, 30), (0, 0, size[1], size[0] // 3))               # a red band along the top third
    stored = upright.transpose(Image.Transpose.ROTATE_90)                      # undone by orientation 6
    exif = stored.getexif()
    exif[0x0112] = 6
    path = folder / "IMG_0001.jpg"
    stored.save(path, quality=95, exif=exif)
    return path


@_checker("store a tuple, a number and True/False: check_crop_predictions(my_shape, my_share_cut, my_upright).")
def check_crop_predictions(my_shape, my_share_cut, my_upright, image_size: int = 128) -> str:
    """Predicted before running: a phone's portrait photo (stored landscape, 4 x 3, with an EXIF tag
    "rotate 90 degrees") through the chapter's evaluation preprocessing at ``image_size``: the tensor's
    shape, the share of the photo the centre crop cuts away, and whether the network sees it upright.
    The checker runs the pipeline (``reduced_image``, then ``eval_transform``) on such a photo."""
    from tl_helpers.data import eval_transform
    from tl_helpers.imagefolder import reduced_image, training_side

    with tempfile.TemporaryDirectory() as tmp:
        img, _ = reduced_image(_phone_photo(Path(tmp)), training_side(image_size))
    x = eval_transform(image_size)(img)
    w, h = img.size
    share = 1 - min(w, h) / max(w, h)
    red_top = float(x[0, :4].mean() - x[1, :4].mean()) > 0.5        # red channel well above green on top rows
    try:
        shape = tuple(int(d) for d in my_shape)
    except (TypeError, ValueError):
        raise _NotYet(f"my_shape should be a tuple of sizes, got {my_shape!r}", "e.g. (3, 64, 64)") from None
    if shape != tuple(x.shape):
        if sorted(shape) == sorted(x.shape):
            raise _NotYet(f"{shape} puts the channels last", "PyTorch tensors of images are (channels, height, width)")
        if len(shape) == 4:
            raise _NotYet(f"{shape} has a batch dimension", "the transform makes one image's tensor; the loader "
                          "stacks them into batches")
        if len(shape) == 3 and shape[1] != shape[2]:
            raise _NotYet(f"{shape} is not square", "the centre crop makes a square of image_size x image_size")
        raise _NotYet(f"the tensor has shape {tuple(x.shape)}, not {shape}", "3 colour channels, then the crop's size")
    if isinstance(my_share_cut, bool) or not isinstance(my_share_cut, (int, float)):
        raise _NotYet(f"my_share_cut should be a number between 0 and 1, got {my_share_cut!r}", "e.g. 0.1")
    if not abs(float(my_share_cut) - share) <= 0.03:
        hint = ("the shorter side is resized to image_size, so the longer one keeps its proportion and is then "
                "cut to image_size: what is left is 3000 / 4000 of the long side")
        if float(my_share_cut) == 0:
            hint = "nothing is squashed: the crop keeps a square, so part of the long side is lost; " + hint
        raise _NotYet(f"the crop cuts away {share:.0%} of the photo, not {float(my_share_cut):.0%}", hint)
    if not isinstance(my_upright, bool):
        raise _NotYet(f"my_upright should be True or False, got {my_upright!r}", "store True or False")
    if my_upright != red_top:
        raise _NotYet(f"the network {'does' if red_top else 'does not'} see the photo upright",
                      "the images are read with ImageOps.exif_transpose, which applies the phone's orientation tag")
    return (f"the network gets a {tuple(x.shape)} tensor; the centre crop keeps the middle {1 - share:.0%} of the "
            f"long side and cuts away {share:.0%} of the photo (top and bottom of a portrait shot: heads and feet "
            "go first); the EXIF orientation is applied, so the network sees the photo as the phone showed it.")


# --------------------------------------------------------------------------------------------------
# ONNX with NumPy only, on photos that catch the usual mistakes
# --------------------------------------------------------------------------------------------------

def _check_photos(folder: Path) -> list[Path]:
    """Three test images for the ONNX exercise: a large landscape photo stored rotated (EXIF orientation 6),
    with one drawing in its centre square and others at its sides, which a centre crop removes; the same
    scene as a portrait without a tag; and a square drawing."""
    from skimage import data

    from tl_helpers.data import clipart_root

    art = sorted(p for p in clipart_root().rglob("*.png"))
    centre, left, right = (Image.open(art[k]).convert("RGB") for k in (len(art) // 3, 7, len(art) - 5))
    scene = Image.fromarray(data.coffee()).resize((3000, 2000), Image.Resampling.BILINEAR)
    scene.paste(centre.resize((1600, 1600)), (700, 200))
    scene.paste(left.resize((500, 500)), (50, 750))
    scene.paste(right.resize((500, 500)), (2450, 750))
    stored = scene.transpose(Image.Transpose.ROTATE_90)            # orientation 6 turns it back to landscape
    exif = stored.getexif()
    exif[0x0112] = 6
    stored.save(folder / "rotated_landscape.jpg", quality=92, exif=exif)
    scene.transpose(Image.Transpose.ROTATE_270).save(folder / "portrait.jpg", quality=92)
    centre.save(folder / "drawing.png")
    return [folder / "rotated_landscape.jpg", folder / "portrait.jpg", folder / "drawing.png"]


def _pipeline(image: Image.Image, size: int, mean, std, squash: bool = False) -> np.ndarray:
    """The evaluation preprocessing in Pillow and NumPy (or with the image squashed to a square), as a batch of one."""
    from tl_helpers.export import onnx_preprocess

    if squash:
        arr = np.asarray(image.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
        arr = (arr - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
        return arr.transpose(2, 0, 1)[None].astype(np.float32)
    return onnx_preprocess(image, size, mean, std)[None]


@_checker("onnx_probabilities(session, path, image_size, mean, std) should return one probability per class.")
def check_onnx_probabilities(onnx_probabilities: Callable, onnx_path: str | Path) -> str:
    """Does the learner's NumPy pipeline give the exported model's probabilities for image files?

    The checker writes its own images: a 3000 x 2000 photo stored rotated with an EXIF orientation tag,
    the same scene as a portrait, and a square drawing. Its references are the right pipeline (orientation
    applied, shorter side resized, centre crop) in Pillow and NumPy, and the usual mistakes (squashed to a
    square, orientation ignored) run through the same ONNX session; an answer is right when it is closest
    to the right pipeline and within 0.02 of it.
    """
    import onnxruntime as ort
    from PIL import ImageOps

    from tl_helpers.data import eval_transform
    from tl_helpers.export import OnnxClassifier

    d = OnnxClassifier(onnx_path).description
    size, mean, std = d["image_size"], d["mean"], d["std"]
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def probs(batch: np.ndarray) -> np.ndarray:
        z = session.run(None, {name: batch.astype(np.float32)})[0][0].astype(np.float64)
        e = np.exp(z - z.max())
        return e / e.sum()

    worst, worst_torch, separated = 0.0, 0.0, 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for path in _check_photos(Path(tmp)):
            with Image.open(path) as raw:
                raw.load()
                upright = ImageOps.exif_transpose(raw).convert("RGB")
                unturned = raw.convert("RGB")
            right = probs(_pipeline(upright, size, mean, std))
            wrong = {"squashed to a square": probs(_pipeline(upright, size, mean, std, squash=True)),
                     "orientation tag ignored": probs(_pipeline(unturned, size, mean, std))}
            with _learner_code():
                answer = onnx_probabilities(session, path, size, mean, std)
            answer = np.asarray(answer, dtype=float).reshape(-1)
            if answer.shape != right.shape:
                raise _NotYet(f"expected {len(right)} probabilities, got shape {answer.shape}",
                              "feed a batch of one image, (1, 3, size, size), and return row 0 of the softmax")
            if abs(answer.sum() - 1) > 1e-3 or answer.min() < 0:
                raise _NotYet("the values do not sum to 1: these are logits",
                              "apply a softmax: exp(z - z.max()) / exp(z - z.max()).sum()")
            gap = float(np.abs(answer - right).max())
            for mistake, p in wrong.items():
                distance, revealed = float(np.abs(answer - p).max()), float(np.abs(p - right).max())
                separated = max(separated, revealed)
                if revealed < 1e-4:                    # this image cannot show the mistake (e.g. no tag to ignore)
                    continue
                if distance <= min(0.005, 0.1 * gap):     # the answer is that mistake, made (nearly) exactly
                    hints = {"squashed to a square": "keep the proportions: resize the shorter side to image_size, "
                                                     "then cut the centre square (the sides of a photo are lost, "
                                                     "nothing is squashed)",
                             "orientation tag ignored": "phones store portrait shots rotated, with an EXIF tag: "
                                                        "apply it with PIL.ImageOps.exif_transpose(image)"}
                    raise _NotYet(f"on {path.name} your probabilities match the image {mistake}", hints[mistake])
            if gap > 0.02:
                raise _NotYet(f"on {path.name} the probabilities differ from the exported model's by up to {gap:.2f}",
                              "open the file, apply the EXIF orientation, resize the shorter side to image_size "
                              "(bilinear), centre-crop, divide by 255, subtract the mean, divide by the std, then "
                              "channels first (transpose(2, 0, 1)) and a batch of one")
            worst = max(worst, gap)
            torch_batch = eval_transform(size, mean=mean, std=std)(upright)[None].numpy()
            worst_torch = max(worst_torch, float(np.abs(answer - probs(torch_batch)).max()))
    close = "1e-4" if worst < 1e-4 else f"{worst:.0e}"
    close_torch = "below 1e-4" if worst_torch < 1e-4 else f"{worst_torch:.0e}"
    teeth = ("squashing the photo or ignoring its rotation would have failed" if separated > 0.05 else
             "this model barely reacts to squashing or rotation, so those mistakes could pass unnoticed")
    return (f"within {close} of a Pillow and NumPy reference on a 3000 x 2000 photo stored rotated, a portrait and a "
            f"drawing ({teeth}), and {close_torch} from the course's eval_transform, which resizes with Pillow too.")


EXERCISES: dict[str, Exercise] = {
    "07.1": Exercise("Predict, then check: what the network sees of a phone photo", "07", check_crop_predictions),
    "07.2": Exercise("Find every file that cannot be decoded", "07", check_find_bad_files),
    "07.3": Exercise("A split that keeps near-duplicates together", "07", check_leak_free_split),
    "07.4": Exercise("Run the ONNX file with NumPy only, on a large rotated photo", "07", check_onnx_probabilities),
}
