"""Instant feedback for the exercises: ``check_<name>(answer, ...)`` prints a verdict and returns a bool.

A checker tests what your answer *does* (it runs your model, your function, your numbers), never how
the code looks. It prints ``✅ Correct: ...`` or ``❌ Not yet: <what is wrong>. Hint: <hint>`` and
returns True or False, whatever you pass it: a wrong answer, or an error raised by your code, is a
"Not yet". Only a bug in the checker's own code raises (please report it). While nbgrader grades a notebook
(``nbgrader autograde`` or ``validate``, which set ``NBGRADER_EXECUTION``), a "Not yet" also raises
:class:`CheckFailed` after printing the same message: nbgrader scores a test cell by whether it raises. A checker leaves the random
generators (torch, NumPy, Python) as it found them, so checking does not change your later results.
``EXERCISES`` lists every exercise by id (chapter.number) with its title, chapter and checker.

>>> from tl_helpers.checks import EXERCISES, check_output_shape
>>> ok = check_output_shape((16, 5))
✅ Correct: 16 images in, one row of 5 class scores each.
>>> ok = check_output_shape((16, 1000))
❌ Not yet: (16, 1000) has 1000 columns, the 1000 ImageNet classes: that is the old head. Hint: the new head ends in nn.Linear(1280, 5), so each image gets 5 scores.
>>> EXERCISES["04.1"].checker is check_output_shape
True
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import os
import random
import sys
import sysconfig
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tl_helpers.arrays import to_numpy

_BN = nn.modules.batchnorm._BatchNorm


GRADING_MODES = ("autograde", "validate")


class CheckFailed(AssertionError):
    """A wrong answer while nbgrader grades the notebook (see :func:`grading`); the message is the feedback."""


def grading() -> bool:
    """True while nbgrader executes the notebook to grade it: it sets ``NBGRADER_EXECUTION`` to
    ``autograde`` or ``validate``. Checkers then raise :class:`CheckFailed` on a wrong answer.

    >>> import os; "NBGRADER_EXECUTION" in os.environ or grading()
    False
    """
    return os.environ.get("NBGRADER_EXECUTION", "") in GRADING_MODES


def _not_yet(message: str) -> bool:
    """Print a "Not yet" verdict; return False, or raise CheckFailed while nbgrader grades."""
    print(message)
    if grading():
        raise CheckFailed(message)
    return False


class _NotYet(Exception):
    """Raised inside a checker to stop at the first problem: what is wrong, and a hint."""

    def __init__(self, what: str, hint: str):
        super().__init__(what)
        self.what, self.hint = what.rstrip(". "), hint.rstrip(". ") + "."


class _LearnerError(Exception):
    """An exception raised by the learner's code or objects while a checker ran them (see _learner_code)."""

    def __init__(self, original: Exception):
        super().__init__(str(original))
        self.original = original


@contextlib.contextmanager
def _learner_code() -> Iterator[None]:
    """Run the learner's code or objects (their function, model, transform...) inside this block: an
    exception raised there is the learner's mistake, reported as "Not yet", not a bug of the checker."""
    try:
        yield
    except (_NotYet, NotImplementedError, _LearnerError):
        raise
    except Exception as exc:
        raise _LearnerError(exc) from exc


_PACKAGE = str(Path(__file__).resolve().parents[1])
_LIBRARIES = tuple({str(Path(p).resolve()) for p in (
    *(sysconfig.get_paths().get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")),
    sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix) if p})


def _is_learner_file(filename: str) -> bool:
    """Code written by the learner: a notebook cell, a doctest, a script of theirs; not tl_helpers nor a library."""
    if filename.startswith("<"):
        return filename.startswith(("<doctest", "<ipython-input"))
    path = str(Path(filename).resolve())
    return not path.startswith(_PACKAGE) and not path.startswith(_LIBRARIES)


def _raised_by_learner(exc: BaseException) -> bool:
    """Did ``exc`` go through the learner's code (a frame of a learner file below the checker)?"""
    tb = exc.__traceback__
    while tb is not None:
        if _is_learner_file(tb.tb_frame.f_code.co_filename):
            return True
        tb = tb.tb_next
    return False


def _checker(on_error: str) -> Callable:
    """Turn ``fn`` (which returns the success message or raises _NotYet) into a checker.

    A checker prints, returns a bool and raises only for its own bugs. "Not yet" comes from: the
    ``_NotYet`` the checker raises on purpose (wrong values, types or shapes); ``NotImplementedError``
    (an unfinished exercise); and any exception raised by the learner's code, inside a
    :func:`_learner_code` block or in a frame of the learner's own files, reported with ``on_error`` as
    the hint. Any other exception is a bug in the checker and propagates. The checker runs inside
    ``torch.random.fork_rng()``, and the NumPy and Python generators are restored afterwards, so
    checking an answer does not change the learner's later random draws.
    """
    def wrap(fn: Callable[..., str]) -> Callable[..., bool]:
        @functools.wraps(fn)
        def checker(*args, **kwargs) -> bool:
            numpy_state, python_state = np.random.get_state(), random.getstate()
            try:
                with torch.random.fork_rng():
                    message = fn(*args, **kwargs)
            except _NotYet as exc:
                return _not_yet(f"❌ Not yet: {exc.what}. Hint: {exc.hint}")
            except NotImplementedError:
                return _not_yet("❌ Not yet: your code still raises NotImplementedError, the exercise is not done. "
                                "Hint: replace `raise NotImplementedError()` by your solution.")
            except Exception as exc:
                original = exc.original if isinstance(exc, _LearnerError) else exc
                if not isinstance(exc, _LearnerError) and not _raised_by_learner(exc):
                    raise  # a bug in the checker itself: say so loudly
                return _not_yet(f"❌ Not yet: checking your answer raised {type(original).__name__}: "
                                f"{str(original).rstrip('. ')}. Hint: {on_error}")
            finally:
                np.random.set_state(numpy_state)
                random.setstate(python_state)
            print(f"✅ Correct: {message}")
            return True
        return checker
    return wrap


def _first_wrong_prediction(predictions: Sequence[tuple[object, object, str, str]], facts: str) -> None:
    """Raise _NotYet at the first ``(predicted, truth, message, hint)`` whose prediction is not the truth;
    ``message`` may name ``{truth}`` and ``{facts}``.

    >>> _first_wrong_prediction([("same", "same", "it is {truth}", "")], facts="")  # all held: nothing raised
    """
    for predicted, truth, message, hint in predictions:
        if predicted != truth:
            raise _NotYet(message.format(truth=truth, facts=facts), hint)


def _type_error(answer, expected: str, hint: str) -> _NotYet:
    """The message for an answer of a completely different kind than the one asked for."""
    shown = repr(answer)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return _NotYet(f"expected {expected}, got a {type(answer).__name__} ({shown})", hint)


def _as_number(answer, expected: str, hint: str) -> float:
    """``answer`` as a float (a Python/NumPy number or a one-element tensor), else _NotYet."""
    if isinstance(answer, bool) or isinstance(answer, str):
        raise _type_error(answer, expected, hint)
    if isinstance(answer, torch.Tensor) and answer.numel() == 1:
        return float(answer.item())
    if isinstance(answer, (int, float, np.number)) or (isinstance(answer, np.ndarray) and answer.size == 1):
        return float(answer)
    raise _type_error(answer, expected, hint)


def _as_int_tuple(answer, expected: str, hint: str) -> tuple[int, ...]:
    """``answer`` (tuple, list, torch.Size) as a tuple of ints, else _NotYet."""
    if isinstance(answer, (tuple, list, torch.Size)) and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in answer):
        return tuple(int(v) for v in answer)
    raise _type_error(answer, expected, hint)


def _as_model(model, hint: str) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise _type_error(model, "a PyTorch model (an nn.Module)", hint)
    return model


def _n(tensors) -> int:
    return sum(p.numel() for p in tensors)


def _fresh_lite0(num_classes: int | None = None) -> nn.Module:
    """EfficientNet-Lite0's architecture with random weights (no file read), head optionally replaced."""
    from tl_helpers.models import load_pretrained
    from tl_helpers.surgery import replace_head

    model = load_pretrained("efficientnet_lite0", weights=False).model
    return replace_head(model, num_classes) if num_classes else model


# --------------------------------------------------------------------------------------------------
# Setup and tour
# --------------------------------------------------------------------------------------------------

@_checker("count with sum(p.numel() for p in model.parameters()).")
def check_parameter_count(answer, model: nn.Module) -> str:
    """Is ``answer`` the number of parameters (single numbers, not tensors) of ``model``?

    >>> ok = check_parameter_count(22, nn.Linear(10, 2))
    ✅ Correct: the model has 22 parameters.
    >>> ok = check_parameter_count(2, nn.Linear(10, 2))
    ❌ Not yet: 2 is the number of parameter *tensors* (weight, bias...), not of the numbers inside them. Hint: add up p.numel() over model.parameters().
    """
    value = _as_number(answer, "a whole number (int)", "count with sum(p.numel() for p in model.parameters())")
    params = list(model.parameters())
    total = _n(params)
    if value == total:
        return f"the model has {total:,} parameters."
    if value == len(params):
        raise _NotYet(f"{int(value)} is the number of parameter *tensors* (weight, bias...), not of the numbers "
                      "inside them", "add up p.numel() over model.parameters()")
    trainable = _n(p for p in params if p.requires_grad)
    if value == trainable:
        raise _NotYet(f"{int(value):,} counts only the trainable parameters; {total - trainable:,} are frozen",
                      "count every parameter, with or without requires_grad")
    buffers = _n(model.buffers())
    if buffers and value == total + buffers:
        raise _NotYet(f"{int(value):,} includes the {buffers:,} buffer values (BatchNorm running statistics)",
                      "buffers are not learned: count model.parameters() only")
    raise _NotYet(f"{value:,.0f} is not the parameter count ({'too many' if value > total else 'too few'})",
                  "sum(p.numel() for p in model.parameters()) counts every weight and bias")


@_checker("your function should take a seed and return a tensor, e.g. def f(seed): ... return torch.randn(4, 3).")
def check_reproducible(fn: Callable) -> str:
    """Does ``fn(seed)`` return the same random numbers for the same seed, and others for another seed?

    >>> from tl_helpers.runtime import seed_everything
    >>> def draw(seed):
    ...     seed_everything(seed)
    ...     return torch.randn(3)
    >>> ok = check_reproducible(draw)
    ✅ Correct: the same seed gives the same numbers, another seed other numbers.
    >>> ok = check_reproducible(lambda seed: torch.randn(3))
    ❌ Not yet: two calls with seed 0 returned different numbers. Hint: seed inside the function, before drawing: seed_everything(seed) or torch.manual_seed(seed).
    """
    if not callable(fn):
        raise _type_error(fn, "a function of one argument, the seed", "define def draw(seed): ... and pass draw")

    def as_array(value) -> np.ndarray:
        return to_numpy(value).astype(float)

    with _learner_code():
        first = as_array(fn(0))
        torch.rand(7), np.random.rand(7)  # move the global generators on, as other cells would
        again = as_array(fn(0))
        other = as_array(fn(1))
    if first.shape != again.shape or not np.array_equal(first, again):
        raise _NotYet("two calls with seed 0 returned different numbers",
                      "seed inside the function, before drawing: seed_everything(seed) or torch.manual_seed(seed)")
    if first.shape == other.shape and np.array_equal(first, other):
        raise _NotYet("seeds 0 and 1 returned the same numbers, so the seed is not used",
                      "pass the function's seed argument on to seed_everything(seed)")
    return "the same seed gives the same numbers, another seed other numbers."


# --------------------------------------------------------------------------------------------------
# Pretrained models
# --------------------------------------------------------------------------------------------------

@_checker("pass the transform itself (a callable that takes a PIL image and returns a tensor).")
def check_preprocessing(transform: Callable, image_size: int = 224) -> str:
    """Does ``transform`` prepare an image the way EfficientNet-Lite expects at ``image_size``?

    Checked on probe images: the output is a float tensor (3, image_size, image_size), white pixels
    become 1 and black pixels -1 (mean = std = 0.5), the result is the same every time (no
    random augmentation), and the geometry is ImageNet evaluation's: the short side resized to
    256/224 of ``image_size``, then the centre cropped (a wavy, non-square probe image tells a squashing
    ``Resize((224, 224))`` and a crop without the margin, ``Resize(224)``, from the right answer).

    >>> from tl_helpers.data import eval_transform
    >>> ok = check_preprocessing(eval_transform(224, resize_size=256))
    ✅ Correct: (3, 224, 224) floats, white -> 1.0, black -> -1.0, short side to 256 then the centre 224, the same every call.
    """
    from PIL import Image

    if not callable(transform):
        raise _type_error(transform, "a transform (a callable)",
                          "build it with v2.Compose([...]) or eval_transform(...)")
    white = Image.new("RGB", (300, 200), (255, 255, 255))
    black = Image.new("RGB", (300, 200), (0, 0, 0))
    with _learner_code():
        out = transform(white)
    if not isinstance(out, torch.Tensor):
        raise _NotYet(f"the transform returns a {type(out).__name__}, not a tensor",
                      "end with v2.ToImage(), v2.ToDtype(torch.float32, scale=True) and v2.Normalize(...)")
    if tuple(out.shape) != (3, image_size, image_size):
        hint = (f"resize the short side (v2.Resize({round(image_size * 256 / 224)})), then "
                f"v2.CenterCrop({image_size})")
        raise _NotYet(f"the output has shape {tuple(out.shape)}, the model expects (3, {image_size}, {image_size})",
                      hint)
    if not out.is_floating_point():
        raise _NotYet(f"the output is {out.dtype}, not floating point", "add v2.ToDtype(torch.float32, scale=True)")
    w = float(out.mean())
    with _learner_code():
        b = float(transform(black).mean())
    if float(out.max() - out.min()) > 0.5:
        raise _NotYet("a plain white photo comes out with borders of another value: the crop is larger than the "
                      "resized image, so it is padded", f"resize first (v2.Resize({round(image_size * 256 / 224)})), "
                      f"then v2.CenterCrop({image_size})")
    if w > 10:
        raise _NotYet(f"a white image gives values around {w:.0f}: the pixels were not scaled to [0, 1]",
                      "v2.ToDtype(torch.float32, scale=True) divides by 255")
    if abs(w - 1.0) < 1e-3 and abs(b) < 1e-3:
        raise _NotYet("white -> 1, black -> 0: the pixels are in [0, 1] but not normalised",
                      "add v2.Normalize(mean=[0.5] * 3, std=[0.5] * 3), the statistics the Lite weights "
                      "were trained with")
    if not (abs(w - 1.0) < 1e-3 and abs(b + 1.0) < 1e-3):
        imagenet = abs(b - float(np.mean([-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225]))) < 1e-2
        what = ("white -> {:.2f}, black -> {:.2f}: those are ImageNet's mean and std".format(w, b) if imagenet
                else f"white -> {w:.2f}, black -> {b:.2f}, expected 1.0 and -1.0")
        raise _NotYet(what, "the Lite models were trained on (x - 0.5) / 0.5: use mean = std = (0.5, 0.5, 0.5), "
                            "i.e. pre.mean and pre.std")
    checker = Image.fromarray((np.indices((200, 300)).sum(axis=0) % 2 * 255).astype(np.uint8)).convert("RGB")
    with _learner_code():
        deterministic = all(torch.equal(transform(checker), transform(checker)) for _ in range(3))
    if not deterministic:
        raise _NotYet("two calls on the same image give different tensors: the transform is random",
                      "evaluation needs a deterministic transform: CenterCrop, no RandomResizedCrop or flips")
    resize = round(image_size * 256 / 224)
    wavy = _wavy_image()
    with _learner_code():
        out = transform(wavy)
    gaps = {name: float((out - ref(wavy)).abs().mean()) for name, ref in _geometries(image_size, resize).items()}
    if gaps["right"] > 0.05:
        closest = min(gaps, key=gaps.get)
        if closest == "squash":
            raise _NotYet("the image is squashed to a square: Resize((h, w)) changes the drawing's proportions "
                          "(the mistake of article 003)",
                          f"resize the short side only, v2.Resize({resize}), then v2.CenterCrop({image_size})")
        if closest == "no_margin":
            raise _NotYet(f"the short side is resized to {image_size} and cropped to {image_size}: ImageNet "
                          f"evaluation, which the weights were measured with, resizes to {resize} first and "
                          f"keeps the centre {image_size} (a crop of 224/256)",
                          f"v2.Resize({resize}) then v2.CenterCrop({image_size})")
        raise _NotYet("the output's pixels are not those of a resize and centre crop (mean gap "
                      f"{gaps['right']:.2f} on a test pattern)",
                      f"v2.Resize({resize}), v2.CenterCrop({image_size}), then convert and normalise")
    return (f"(3, {image_size}, {image_size}) floats, white -> 1.0, black -> -1.0, short side to {resize} then "
            f"the centre {image_size}, the same every call.")


def _wavy_image(width: int = 300, height: int = 200) -> Image.Image:
    """A smooth, non-square test pattern whose waves shift visibly under any other scaling or crop, while
    the choice of interpolation (bilinear, bicubic, Pillow or tensor) changes it very little."""
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width].astype(float)
    wave = 0.5 + 0.25 * np.sin(2 * np.pi * x / 37) + 0.2 * np.sin(2 * np.pi * y / 29) + 0.05 * np.cos(x / 90)
    rgb = np.stack([wave, wave[::-1], 1 - wave], axis=-1)
    return Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8))


def _geometries(image_size: int, resize: int) -> dict[str, Callable]:
    """The right evaluation geometry and the two usual wrong ones, as Lite-normalised transforms."""
    from torchvision.transforms import v2

    def make(*steps):
        return v2.Compose([*steps, v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                           v2.Normalize([0.5] * 3, [0.5] * 3)])

    return {"right": make(v2.Resize(resize, antialias=True), v2.CenterCrop(image_size)),
            "squash": make(v2.Resize((image_size, image_size), antialias=True)),
            "no_margin": make(v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size))}


def _tiny_bn_model() -> nn.Module:
    """A small CNN with BatchNorm and Dropout, in training mode, to test functions on."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Dropout(0.5), nn.Linear(4, 3))
    return model.train()


@_checker("your function should be predict(model, x) and return a tensor of probabilities, one row per image.")
def check_predict(predict: Callable) -> str:
    """Does ``predict(model, x)`` give safe inference probabilities?

    Tested on a small CNN left in training mode: the result must be softmax probabilities of the
    eval-mode model, without gradients, the same on every call, and the BatchNorm statistics unchanged.

    >>> def predict(model, x):
    ...     model.eval()
    ...     with torch.no_grad():
    ...         return model(x).softmax(dim=1)
    >>> ok = check_predict(predict)
    ✅ Correct: eval mode (no dropout, fixed BatchNorm statistics), no gradients, probabilities that sum to 1.
    """
    if not callable(predict):
        raise _type_error(predict, "a function predict(model, x)", "define def predict(model, x): ... and pass predict")
    model = _tiny_bn_model()
    x = torch.randn(8, 3, 10, 10, generator=torch.Generator().manual_seed(1))
    bn = model[1]
    before = bn.running_mean.clone()
    with _learner_code():
        out = predict(model, x)
    if not isinstance(out, torch.Tensor):
        raise _NotYet(f"predict returned a {type(out).__name__}, not a tensor", "return the softmax of the logits")
    if tuple(out.shape) != (8, 3):
        raise _NotYet(f"for 8 images and 3 classes the result has shape {tuple(out.shape)}, expected (8, 3)",
                      "return one row of class probabilities per image")
    if not torch.equal(bn.running_mean, before):
        raise _NotYet("predict changed the BatchNorm running statistics: the model was still in training mode",
                      "call model.eval() before the forward pass")
    if out.requires_grad:
        raise _NotYet("the result still tracks gradients (requires_grad=True), which wastes memory",
                      "wrap the forward pass in `with torch.no_grad():` (or torch.inference_mode())")
    with _learner_code():
        again = predict(model.train(), x)
    if not torch.allclose(out, again):
        raise _NotYet("two calls on the same images gave different results: dropout was active",
                      "call model.eval() inside predict, every time")
    if bool((out < 0).any()) or not torch.allclose(out.sum(dim=1), torch.ones(8), atol=1e-4):
        raise _NotYet("the rows do not sum to 1: these are logits, not probabilities", "apply .softmax(dim=1)")
    with torch.no_grad():
        expected = model.eval()(x).softmax(dim=1)
    if not torch.allclose(out, expected, atol=1e-5):
        raise _NotYet("the probabilities differ from softmax(model(x)) in eval mode",
                      "apply softmax over the classes, dim=1, to the model's output")
    return "eval mode (no dropout, fixed BatchNorm statistics), no gradients, probabilities that sum to 1."


# --------------------------------------------------------------------------------------------------
# Feature extraction
# --------------------------------------------------------------------------------------------------

@_checker("pass the model whose head you replaced; calling it on a batch should give one vector per image.")
def check_feature_extractor(backbone: nn.Module, num_features: int = 1280) -> str:
    """Does ``backbone`` turn a batch of images into one pooled ``num_features`` vector per image?

    >>> model = _fresh_lite0()
    >>> model._fc = nn.Identity()
    >>> ok = check_feature_extractor(model)
    ✅ Correct: 2 images in, 2 x 1280 features out: a feature extractor.
    """
    backbone = _as_model(backbone, "pass the model itself, after model._fc = nn.Identity()")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with _learner_code(), torch.no_grad():
        out = backbone.eval()(x)
    shape = tuple(out.shape)
    if shape == (2, 1000):
        raise _NotYet("the model still outputs the 1000 ImageNet class scores",
                      "replace the classification layer: model._fc = nn.Identity()")
    if len(shape) == 4:
        raise _NotYet(f"the output {shape} is a feature *map*, not one vector per image",
                      "keep the model's pooling: call the model with its head replaced by nn.Identity(), "
                      "not model.extract_features")
    if shape != (2, num_features):
        raise _NotYet(f"2 images gave an output of shape {shape}, expected (2, {num_features})",
                      "replace only the last Linear layer (model._fc) by nn.Identity()")
    return f"2 images in, 2 x {num_features} features out: a feature extractor."


def _predict_labels(probe, X: torch.Tensor) -> np.ndarray:
    """Class predictions of a scikit-learn estimator, an nn.Module or a function, on features ``X``."""
    if hasattr(probe, "predict") and not isinstance(probe, nn.Module):
        return np.asarray(probe.predict(to_numpy(X))).reshape(-1)
    if isinstance(probe, nn.Module):
        probe.eval()
    with torch.no_grad():
        out = probe(torch.as_tensor(X, dtype=torch.float32))
    out = out.detach().cpu() if isinstance(out, torch.Tensor) else torch.as_tensor(np.asarray(out))
    return (out.argmax(dim=1) if out.dim() == 2 else out).numpy().reshape(-1)


@_checker("pass a fitted classifier: a scikit-learn model (with .predict) or a PyTorch module giving logits.")
def check_probe_accuracy(probe, X, y, margin: float = 0.15) -> str:
    """Does the linear probe ``probe`` classify the features ``X`` far better than chance?

    The checker predicts ``X`` itself and compares with always guessing the most frequent class
    of ``y``; the probe passes ``margin`` (15 points) above that.

    >>> X, y = torch.randn(60, 4), torch.arange(60) % 3
    >>> X[:, 0] += 4 * y
    >>> from sklearn.linear_model import LogisticRegression
    >>> ok = check_probe_accuracy(LogisticRegression().fit(X.numpy(), y.numpy()), X, y)  # doctest: +ELLIPSIS
    ✅ Correct: ...
    """
    labels = to_numpy(y).reshape(-1)
    if probe is None or isinstance(probe, (int, float, str)):
        raise _type_error(probe, "the fitted probe (a classifier), not its score",
                          "pass the classifier; the checker computes the accuracy itself")
    with _learner_code():
        pred = _predict_labels(probe, X)
    if len(pred) != len(labels):
        raise _NotYet(f"the probe gave {len(pred)} predictions for {len(labels)} labels",
                      "pass the features and labels of the same images")
    acc = float((pred == labels).mean())
    chance = float(np.bincount(labels.astype(int)).max() / len(labels))
    if acc < chance + margin:
        raise _NotYet(f"the probe gets {acc:.0%}, hardly better than always guessing the most frequent class "
                      f"({chance:.0%})", "fit it on the *training* features first (probe.fit(X_train, y_train)), "
                                        "with features from the pretrained model in eval mode")
    return f"{acc:.0%} on {len(labels)} images, where guessing gets {chance:.0%}."


@_checker("give the indices of the k nearest images as a list of ints (or a tensor).")
def check_nearest_neighbours(answer, query: torch.Tensor, bank: torch.Tensor, k: int = 5) -> str:
    """Are ``answer`` the indices (any order) of the ``k`` rows of ``bank`` most cosine-similar to ``query``?

    >>> bank = torch.eye(4) + 0.1
    >>> ok = check_nearest_neighbours([2], bank[2], bank, k=1)
    ✅ Correct: the 1 images most similar to the query (cosine similarity).
    """
    hint = "normalise the features (F.normalize), take similarities = bank @ query, then .topk(k).indices"
    if isinstance(answer, torch.Tensor):
        answer = answer.detach().cpu().reshape(-1).tolist()
    if isinstance(answer, np.ndarray):
        answer = answer.reshape(-1).tolist()
    idx = _as_int_tuple(answer, f"a list of {k} indices", hint)
    query = torch.as_tensor(query, dtype=torch.float32).reshape(-1)
    bank = torch.as_tensor(bank, dtype=torch.float32)
    if len(idx) != k:
        raise _NotYet(f"you gave {len(idx)} indices, the exercise asks for {k}", f"take .topk({k})")
    if len(set(idx)) != k:
        raise _NotYet("some indices appear twice", hint)
    if min(idx) < 0 or max(idx) >= len(bank):
        raise _NotYet(f"indices must lie between 0 and {len(bank) - 1}", hint)
    sims = torch.nn.functional.normalize(bank, dim=1) @ torch.nn.functional.normalize(query, dim=0)
    best = set(sims.topk(k).indices.tolist())
    kth = float(sims.topk(k).values[-1])
    if set(idx) == best or all(float(sims[i]) >= kth - 1e-6 for i in idx):
        return f"the {k} images most similar to the query (cosine similarity)."
    if set(idx) == set(sims.topk(k, largest=False).indices.tolist()):
        raise _NotYet("these are the *least* similar images", "sort by similarity in descending order (topk does)")
    euclid = set(torch.cdist(query[None], bank)[0].topk(k, largest=False).indices.tolist())
    if set(idx) == euclid:
        raise _NotYet("these are the nearest by Euclidean distance on raw features, which favours short vectors",
                      hint)
    right = len(set(idx) & best)
    raise _NotYet(f"{right} of your {k} indices are among the {k} most similar images", hint)


# --------------------------------------------------------------------------------------------------
# Freezing
# --------------------------------------------------------------------------------------------------

def _trainable_names(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def _expected_last_stages(model: nn.Module, n: int) -> tuple[set[str], list[str]]:
    """Names of the parameters in the last ``n`` stages of model_blocks, and those stage names."""
    from tl_helpers.surgery import model_blocks

    stages = model_blocks(model)
    keep = stages[len(stages) - n:] if n else []
    ids = {id(p) for _, s in keep for p in s.parameters()}
    return {name for name, p in model.named_parameters() if id(p) in ids}, [name for name, _ in keep]


def _compare_trainable(model: nn.Module, expected: set[str], what: str, hint: str) -> None:
    """_NotYet unless exactly the parameters named in ``expected`` are trainable."""
    trainable = _trainable_names(model)
    params = dict(model.named_parameters())
    if trainable == expected:
        return
    if trainable == set(params):
        raise _NotYet(f"all {_n(params.values()):,} parameters are still trainable", hint)
    if not trainable:
        raise _NotYet(f"nothing is trainable, not even {what}", "set requires_grad back to True for " + what)
    extra, missing = sorted(trainable - expected), sorted(expected - trainable)
    parts = []
    if missing:
        parts.append(f"{len(missing)} tensors of {what} are frozen (e.g. {missing[0]})")
    if extra:
        parts.append(f"{len(extra)} tensors that should be frozen are trainable (e.g. {extra[0]})")
    raise _NotYet("; ".join(parts), hint)


@_checker("pass the model after freezing it, e.g. the model whose parameters you set requires_grad=False.")
def check_head_only_trainable(model: nn.Module) -> str:
    """Is exactly the classification head of ``model`` trainable, and everything else frozen?

    >>> from tl_helpers.surgery import freeze
    >>> model = _fresh_lite0(5)
    >>> _ = freeze(model, modules="_blocks"); _ = freeze(model, modules=["_conv_stem", "_bn0", "_conv_head", "_bn1"])
    >>> ok = check_head_only_trainable(model)
    ✅ Correct: only the head is trainable: 6,405 of 3,377,413 parameters.
    """
    from tl_helpers.surgery import get_head

    model = _as_model(model, "pass the model itself")
    with _learner_code():
        name, head = get_head(model)
    ids = {id(p) for p in head.parameters()}
    expected = {n for n, p in model.named_parameters() if id(p) in ids}
    _compare_trainable(model, expected, f"the head ({name})",
                       "freeze everything (p.requires_grad = False for all parameters), then unfreeze the head")
    trainable = _n(p for p in model.parameters() if p.requires_grad)
    return f"only the head is trainable: {trainable:,} of {_n(model.parameters()):,} parameters."


@_checker("pass the model after freezing it.")
def check_last_blocks_trainable(model: nn.Module, n: int = 2) -> str:
    """Are exactly the last ``n`` stages of ``model_blocks(model)`` trainable, and the others frozen?

    >>> from tl_helpers.surgery import freeze, model_blocks
    >>> model = _fresh_lite0(5)
    >>> _ = freeze(model, first=len(model_blocks(model)) - 2)
    >>> ok = check_last_blocks_trainable(model, n=2)
    ✅ Correct: head_conv and classifier are trainable, 418,565 of 3,377,413 parameters (12.4%).
    """
    model = _as_model(model, "pass the model itself")
    with _learner_code():
        expected, names = _expected_last_stages(model, n)
    _compare_trainable(model, expected, f"the last {n} blocks ({', '.join(names)})",
                       f"freeze the first len(blocks) - {n} entries of model_blocks(model): "
                       f"for name, block in blocks[:-{n}]: set requires_grad=False on block.parameters()")
    trainable, total = _n(p for p in model.parameters() if p.requires_grad), _n(model.parameters())
    return (f"{' and '.join(names) if n <= 2 else ', '.join(names)} are trainable, "
            f"{trainable:,} of {total:,} parameters ({trainable / total:.1%}).")


def _frozen_start_model(frozen: int = 0) -> nn.Module:
    """A small CNN whose block ``frozen`` (0 or 1) is frozen (requires_grad=False only): for train-mode functions."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()),
        nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4), nn.ReLU()),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.5), nn.Linear(4, 3))
    for p in model[frozen].parameters():
        p.requires_grad_(False)
    return model.eval()


@_checker("your function should take the model, switch it to training mode and return nothing or the model.")
def check_frozen_bn_mode(fn: Callable) -> str:
    """Does ``fn(model)`` prepare training while the BatchNorm layers of frozen blocks stay fixed?

    Tested on two small CNNs, one with its first block frozen (requires_grad=False), one with its second:
    after ``fn(model)`` and a forward pass, the frozen block's BatchNorm statistics must be unchanged, while
    the model is in training mode (dropout active) and the *trainable* BatchNorm still trains (training
    mode, statistics updated). So neither "every BatchNorm in eval" nor an answer that names one block
    (``model[0].eval()``) passes.

    >>> def train_keep_frozen_bn(model):
    ...     model.train()
    ...     for m in model.modules():
    ...         if isinstance(m, nn.BatchNorm2d) and not any(p.requires_grad for p in m.parameters()):
    ...             m.eval()
    >>> ok = check_frozen_bn_mode(train_keep_frozen_bn)
    ✅ Correct: the frozen BatchNorm kept its statistics, the trainable one still trains, and dropout is on.
    """
    if not callable(fn):
        raise _type_error(fn, "a function that takes the model", "define def f(model): ... and pass f")
    x = torch.randn(8, 3, 12, 12, generator=torch.Generator().manual_seed(2)) * 3 + 1
    for frozen in (0, 1):
        model = _frozen_start_model(frozen)
        frozen_bn, free_bn = model[frozen][1], model[1 - frozen][1]
        before = (frozen_bn.running_mean.clone(), frozen_bn.running_var.clone())
        free_before = free_bn.running_mean.clone()
        with _learner_code():
            fn(model)
            model(x)
        where = "first" if frozen == 0 else "second"
        if not model.training or not model[4].training:
            raise _NotYet("the model is not in training mode: dropout is off, so it would not train as intended",
                          "start with model.train(), then put only the frozen BatchNorm layers back with .eval()")
        if not (torch.equal(before[0], frozen_bn.running_mean) and torch.equal(before[1], frozen_bn.running_var)):
            raise _NotYet(f"with the {where} block frozen, a forward pass changed the running statistics of its "
                          "BatchNorm", "requires_grad=False does not stop BatchNorm from updating in training "
                          "mode: call .eval() on every BatchNorm layer whose parameters are frozen, after model.train()"
                          " (find them by their parameters, not by their position)")
        if not free_bn.training or torch.equal(free_before, free_bn.running_mean):
            raise _NotYet(f"with the {where} block frozen, the trainable block's BatchNorm is in eval mode too: its "
                          "statistics no longer adapt to the new data",
                          "put in eval mode only the BatchNorm layers whose parameters have requires_grad=False")
    return "the frozen BatchNorm kept its statistics, the trainable one still trains, and dropout is on."


# --------------------------------------------------------------------------------------------------
# Replacing the head
# --------------------------------------------------------------------------------------------------

@_checker("give the shape as a tuple, e.g. (8, 3), or logits.shape.")
def check_output_shape(answer, batch_size: int = 16, num_classes: int = 5, num_features: int = 1280) -> str:
    """Is ``answer`` the shape of the logits for ``batch_size`` images and a ``num_classes`` head?"""
    shape = _as_int_tuple(answer, "a shape such as (8, 3)", "write it as a tuple (rows, columns) or use logits.shape")
    expected = (batch_size, num_classes)
    if shape == expected:
        return f"{batch_size} images in, one row of {num_classes} class scores each."
    hint = f"the new head ends in nn.Linear({num_features}, {num_classes}), so each image gets {num_classes} scores"
    if shape == (batch_size, 1000):
        raise _NotYet(f"{shape} has 1000 columns, the 1000 ImageNet classes: that is the old head", hint)
    if shape == (num_classes, batch_size):
        raise _NotYet(f"{shape} is transposed", "rows are images (the batch), columns are classes")
    if shape == (batch_size, num_features):
        raise _NotYet(f"{shape} is the shape of the pooled features that go *into* the head", hint)
    if shape == (batch_size,):
        raise _NotYet(f"{shape} is the shape of the labels (or of logits.argmax(1)), not of the logits", hint)
    raise _NotYet(f"{shape} is not the shape of the logits", hint)


@_checker("pass the model after replacing its head.")
def check_new_head(model: nn.Module, num_classes: int = 5, dropout: float = 0.2) -> str:
    """Does ``model`` end in a new trainable head for ``num_classes`` classes behind dropout ``dropout``?

    Dropout counts once along the path from the pooled features to the logits: EfficientNet-Lite
    already has ``model._dropout`` (p=0.2) before ``model._fc``; a Dropout inside the new head adds to it.

    >>> model = _fresh_lite0()
    >>> model._dropout = nn.Identity()
    >>> model._fc = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, 5))
    >>> ok = check_new_head(model)
    ✅ Correct: logits of shape (2, 5), dropout 0.2 before the new Linear(1280, 5).
    """
    from tl_helpers.surgery import get_head

    model = _as_model(model, "pass the model itself")
    with _learner_code():
        name, head = get_head(model)
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise _NotYet(f"the head ({name}) has no nn.Linear layer", f"use nn.Sequential(nn.Dropout({dropout}), "
                                                                  f"nn.Linear(in_features, {num_classes}))")
    last = linears[-1]
    if last.out_features != num_classes:
        raise _NotYet(f"the head's last layer has {last.out_features} outputs, expected {num_classes}",
                      f"nn.Linear(in_features, {num_classes})")
    if not all(p.requires_grad for p in last.parameters()):
        raise _NotYet("the new head is frozen (requires_grad=False)", "replace the head *after* freezing the backbone")
    was_training = model.training
    model.eval()
    with _learner_code(), torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    model.train(was_training)
    if tuple(out.shape) != (2, num_classes):
        raise _NotYet(f"the model outputs {tuple(out.shape)} for 2 images, expected (2, {num_classes})",
                      "the head must be the model's last layer")
    drops = [m.p for m in head.modules() if isinstance(m, nn.Dropout)]
    outer = getattr(model, "_dropout", None)
    if isinstance(outer, nn.Dropout) and name == "_fc":
        drops.append(outer.p)
    keep = math.prod(1 - p for p in drops)
    if not drops or abs((1 - keep) - dropout) > 1e-6:
        if len([p for p in drops if p > 0]) > 1:
            raise _NotYet(f"dropout is applied {len(drops)} times (p = {', '.join(str(p) for p in drops)}): "
                          f"{1 - keep:.2f} of the features are dropped in all",
                          "EfficientNet-Lite already has model._dropout (p=0.2) before model._fc: set "
                          "model._dropout = nn.Identity() when your head brings its own dropout")
        raise _NotYet(f"the dropout before the new layer is {1 - keep:g}, expected {dropout}",
                      f"nn.Sequential(nn.Dropout({dropout}), nn.Linear(in_features, {num_classes}))")
    return (f"logits of shape (2, {num_classes}), dropout {dropout} before the new "
            f"Linear({last.in_features}, {num_classes}).")


@_checker("pass the optimizer and the model: check_optimizer_params(optimizer, model).")
def check_optimizer_params(optimizer, model: nn.Module) -> str:
    """Does ``optimizer`` update every trainable parameter of ``model``, and nothing outside it?

    The classic bug: the optimizer is built, then the head is replaced. It keeps updating the old
    head's tensors and never touches the new head.

    >>> model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    >>> stale = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> model[1] = nn.Linear(4, 3)
    >>> ok = check_optimizer_params(stale, model)
    ❌ Not yet: the optimizer never updates 2 trainable tensors (1.weight, 1.bias) and holds 2 tensors that are no longer in the model (the old head?). Hint: build the optimizer *after* replacing the head (and after freezing): torch.optim.AdamW(p for p in model.parameters() if p.requires_grad).
    """
    hint = ("build the optimizer *after* replacing the head (and after freezing): "
            "torch.optim.AdamW(p for p in model.parameters() if p.requires_grad)")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise _type_error(optimizer, "a torch.optim optimizer", hint)
    model = _as_model(model, "pass the model as the second argument")
    in_opt = {id(p) for g in optimizer.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    by_id = {id(p): n for n, p in named.items()}
    missing = [n for n, p in named.items() if p.requires_grad and id(p) not in in_opt]
    stale = [i for i in in_opt if i not in by_id]
    parts = []
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        parts.append(f"the optimizer never updates {len(missing)} trainable tensors ({shown})")
    if stale:
        parts.append(f"holds {len(stale)} tensors that are no longer in the model (the old head?)")
    if parts:
        raise _NotYet(" and ".join(parts), hint)
    frozen = [n for n, p in named.items() if not p.requires_grad and id(p) in in_opt]
    note = (f" ({len(frozen)} frozen tensors are in it too: harmless, since a tensor without a gradient is skipped "
            "and gets no optimizer state, but passing only the trainable ones says what you mean)") if frozen else ""
    n_train = sum(1 for p in named.values() if p.requires_grad)
    return f"the optimizer updates all {n_train} trainable tensors of the model, the new head included{note}."


# --------------------------------------------------------------------------------------------------
# Two-phase fine-tuning
# --------------------------------------------------------------------------------------------------

@_checker("your function should be unfreeze_top(model, k) and change the model in place.")
def check_unfreeze_top(fn: Callable) -> str:
    """Does ``fn(model, k)`` make exactly the last ``k`` stages of ``model_blocks`` trainable?

    Tested on a frozen EfficientNet-Lite0 (random weights, 8-class head) for k = 0, 1, 3 and 5.

    >>> from tl_helpers.surgery import freeze, unfreeze
    >>> ok = check_unfreeze_top(lambda model, k: unfreeze(model, last=k))
    ✅ Correct: unfreeze_top(model, k) trains exactly the top k blocks for k = 0, 1, 3, 5.
    """
    from tl_helpers.surgery import freeze, model_blocks

    if not callable(fn):
        raise _type_error(fn, "a function unfreeze_top(model, k)", "define def unfreeze_top(model, k): ...")
    base = freeze(_fresh_lite0(8))
    for k in (0, 1, 3, 5):
        model = copy.deepcopy(base)
        with _learner_code():
            fn(model, k)
        expected, names = _expected_last_stages(model, k)
        trainable = _trainable_names(model)
        if trainable != expected:
            stages = [name for name, stage in model_blocks(model) if any(p.requires_grad for p in stage.parameters())]
            got = ", ".join(stages[:3] + (["..."] if len(stages) > 4 else []) + stages[3:][-1:]) or "none"
            raise _NotYet(f"with k={k}, {len(stages)} stages are trainable ({got}); expected {k} "
                          f"({', '.join(names) or 'none'})", "loop over model_blocks(model)[len(blocks) - k:] "
                          "(careful: [-0:] is the whole list) and set requires_grad=True on their parameters")
    return "unfreeze_top(model, k) trains exactly the top k blocks for k = 0, 1, 3, 5."


def _group_lr(group: dict) -> float:
    """A parameter group's headline learning rate (a one-cycle schedule's peak if one is attached)."""
    return float(group.get("max_lr", group.get("initial_lr", group["lr"])))


@_checker("pass the optimizer and the model: check_param_groups(optimizer, model).")
def check_param_groups(optimizer, model: nn.Module, head_lr: float = 1e-3, backbone_lr: float = 1e-4) -> str:
    """Does ``optimizer`` train the head at ``head_lr`` and the rest of the trainable model at ``backbone_lr``?

    >>> from tl_helpers.surgery import param_groups
    >>> net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> ok = check_param_groups(torch.optim.AdamW(param_groups(net, 1e-3, 1e-4)), net)
    ✅ Correct: head at 0.001, backbone at 0.0001 (10x slower), every trainable tensor in one group.
    """
    from tl_helpers.surgery import get_head

    hint = (f"two groups: torch.optim.AdamW([{{'params': head_params, 'lr': {head_lr:g}}}, "
            f"{{'params': backbone_params, 'lr': {backbone_lr:g}}}])")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise _type_error(optimizer, "a torch.optim optimizer", hint)
    model = _as_model(model, "pass the model as the second argument")
    with _learner_code():
        head_ids = {id(p) for p in get_head(model)[1].parameters()}
    lr_of = {id(p): _group_lr(g) for g in optimizer.param_groups for p in g["params"]}
    trainable = [p for p in model.parameters() if p.requires_grad]
    missing = [p for p in trainable if id(p) not in lr_of]
    if missing:
        raise _NotYet(f"{len(missing)} trainable tensors are in no parameter group", hint)
    head_lrs = {lr_of[id(p)] for p in trainable if id(p) in head_ids}
    body_lrs = {lr_of[id(p)] for p in trainable if id(p) not in head_ids}
    if len(optimizer.param_groups) == 1 or (len(head_lrs | body_lrs) == 1):
        raise _NotYet(f"every parameter has the same learning rate ({next(iter(head_lrs | body_lrs)):g})",
                      "discriminative learning rates: the pretrained backbone should move 10x slower than the "
                      "new head; " + hint)
    if not body_lrs:
        raise _NotYet("only the head is trainable, so there is nothing to discriminate",
                      "unfreeze (part of) the backbone first, then build the optimizer")
    if head_lrs != {head_lr}:
        if head_lrs == {backbone_lr} and body_lrs == {head_lr}:
            raise _NotYet("the two learning rates are swapped: the head learns slower than the backbone", hint)
        got = ", ".join(f"{v:g}" for v in sorted(head_lrs))
        raise _NotYet(f"the head's learning rate is {got}, expected {head_lr:g}", hint)
    if body_lrs != {backbone_lr}:
        raise _NotYet(f"the backbone's learning rates are {', '.join(f'{v:g}' for v in sorted(body_lrs))}, "
                      f"expected {backbone_lr:g}", hint)
    return (f"head at {head_lr:g}, backbone at {backbone_lr:g} ({head_lr / backbone_lr:.0f}x slower), "
            "every trainable tensor in one group.")


@_checker("give one learning rate as a number, e.g. 3e-4.")
def check_lr_choice(answer, lrs: Sequence[float], losses: Sequence[float]) -> str:
    """Is ``answer`` a sensible learning rate to read off the range test (``lrs``, ``losses``)?

    Accepted: rates *below* the one of the lowest loss, from a third of the rate where the loss falls
    fastest (``suggest_lr``, which looks only below the minimum) up to the larger of three times that rate
    and a third of the minimum's (the "minimum / 10" rule of thumb with a factor 3 of slack). A rate at or
    above the minimum's is refused, however close the steepest point lies to it.

    >>> lrs = [10 ** (e / 4) for e in range(-24, 1)]
    >>> losses = [2.0 - 1.5 / (1 + math.exp(-(math.log10(lr) + 3.5) * 2)) + (lr > 0.05) * 5 * lr for lr in lrs]
    >>> ok = check_lr_choice(1e-3, lrs, losses)  # doctest: +ELLIPSIS
    ✅ Correct: ...
    >>> ok = check_lr_choice(1.0, lrs, losses)  # doctest: +ELLIPSIS
    ❌ Not yet: ...
    """
    from tl_helpers.lr_finder import suggest_lr

    lr = _as_number(answer, "a learning rate (a positive number)", "e.g. 3e-4")
    lrs, losses = [float(v) for v in lrs], [float(v) for v in losses]
    if lr <= 0:
        if -10 < lr < 0:
            raise _NotYet(f"{lr:g} looks like the *exponent* of a learning rate", f"give the rate itself: 1e{lr:g}")
        raise _NotYet("a learning rate must be positive", "read it off the x axis of the range test")
    lo = int(np.argmin(losses))
    if lo == 0:
        raise _NotYet("the loss is lowest at the very first rate of this range test, so there is nothing below "
                      "its minimum to read", "run lr_range_test again with a smaller start_lr")
    lr_min, steep = lrs[lo], suggest_lr(lrs, losses)
    if lr < lr_min and min(steep / 3, lr_min / 30) <= lr <= max(steep * 3, lr_min / 3):
        return (f"{lr:.2g} is where the loss still falls fast (steepest at {steep:.1g}, lowest loss at "
                f"{lr_min:.1g}).")
    if lr > lr_min:
        raise _NotYet(f"at {lr:.2g} the loss is already rising again (its minimum is at {lr_min:.1g})",
                      "training there diverges: pick a rate about 10x below the minimum")
    if lr > lr_min / 3:
        raise _NotYet(f"{lr:.2g} is (almost) at the loss minimum ({lr_min:.1g}), right at the edge of divergence",
                      "take about a tenth of it, or where the curve is steepest")
    raise _NotYet(f"{lr:.2g} is so small that the loss has hardly started to fall (steepest at {steep:.1g})",
                  "a too-small rate wastes epochs: move right to where the curve drops fastest")


# --------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------

def _np_labels(y) -> np.ndarray:
    return to_numpy(y).reshape(-1)


@_checker("give the ECE as one number between 0 and 1.")
def check_ece(answer, probs, labels, n_bins: int = 10) -> str:
    """Is ``answer`` the expected calibration error of ``probs`` (N x C) against ``labels`` (``n_bins`` bins)?

    >>> probs = torch.tensor([[0.9, 0.1], [0.3, 0.7]])
    >>> ok = check_ece(0.3, probs, [0, 0], n_bins=2)
    ✅ Correct: ECE = 0.300: confidence and accuracy differ by 30.0 points on average.
    """
    from tl_helpers.evaluate import reliability_curve

    value = _as_number(answer, "one number (a float)", "sum over bins of (bin size / N) * |accuracy - confidence|")
    curve = reliability_curve(probs, labels, n_bins)
    ece = curve["ece"]
    p = to_numpy(probs).astype(float)
    y = _np_labels(labels).astype(int)
    conf, right = p.max(1), (p.argmax(1) == y).astype(float)
    left_closed = np.clip(np.floor(conf * n_bins).astype(int), 0, n_bins - 1)  # bins [lo, hi): also fine
    ece_left = sum(abs(right[left_closed == b].mean() - conf[left_closed == b].mean()) * (left_closed == b).mean()
                   for b in range(n_bins) if (left_closed == b).any())
    if abs(value - ece) <= 1e-3 or abs(value - ece_left) <= 1e-3:
        return f"ECE = {value:.3f}: confidence and accuracy differ by {100 * value:.1f} points on average."
    hint = "ECE = sum over bins of (bin size / N) * |accuracy(bin) - mean confidence(bin)|"
    if abs(value - 100 * ece) <= 0.1:
        raise _NotYet(f"{value:g} is a percentage", f"give the fraction: {value:g} / 100")
    filled = curve["counts"] > 0
    unweighted = float(np.abs(curve["accuracy"][filled] - curve["confidence"][filled]).mean())
    if abs(value - unweighted) <= 1e-3:
        raise _NotYet("you averaged the bins' gaps without weighting them by their size", hint)
    overall = abs(float(right.mean()) - float(conf.mean()))
    if abs(value - overall) <= 1e-3:
        raise _NotYet("that is |accuracy - mean confidence| over all images at once: over- and under-confident "
                      "images cancel out", "compute the gap bin by bin, then take the weighted average")
    raise _NotYet(f"{value:.4f} is not the ECE of these predictions", hint)


@_checker("give the interval as a pair (low, high) of fractions, e.g. (0.72, 0.86).")
def check_bootstrap_ci(answer, correct, level: float = 0.95, tolerance: float = 0.025) -> str:
    """Is ``answer`` = (low, high) a percentile bootstrap ``level`` interval for the accuracy?

    ``correct`` holds 1 for every right prediction and 0 for every wrong one. The checker draws its own
    10,000 resamples; your bounds may differ by ``tolerance`` (resampling noise).

    >>> correct = [1] * 100 + [0] * 26
    >>> ok = check_bootstrap_ci((0.72, 0.86), correct)
    ✅ Correct: accuracy 0.794, 95% interval about [0.722, 0.857]: 13 points wide.
    """
    hint = ("resample the 0/1 'correct' vector with replacement (same size) 1,000+ times, take each mean, "
            "then np.quantile(means, [0.025, 0.975])")
    if not isinstance(answer, (tuple, list, np.ndarray, torch.Tensor)) or len(answer) != 2:
        raise _type_error(answer, "a pair (low, high)", hint)
    low, high = (_as_number(v, "numbers", hint) for v in answer)
    c = _np_labels(correct).astype(float)
    acc = float(c.mean())
    rng = np.random.default_rng(0)
    means = c[rng.integers(0, len(c), size=(10_000, len(c)))].mean(axis=1)
    alpha = 1 - level
    ref_low, ref_high = (float(v) for v in np.quantile(means, [alpha / 2, 1 - alpha / 2]))
    if high > 1.5 and low > 1.5:
        raise _NotYet("these look like percentages", "give fractions between 0 and 1")
    if low > high:
        raise _NotYet("low is above high", "write the interval as (low, high)")
    if not low <= acc <= high:
        raise _NotYet(f"the interval does not contain the accuracy itself ({acc:.3f})", hint)
    width, ref_width = high - low, ref_high - ref_low
    if width > 2.5 * ref_width:
        raise _NotYet(f"the interval is {width:.2f} wide, far wider than the bootstrap's {ref_width:.2f}: it looks "
                      "like the spread of single images, not of the accuracy", hint)
    if width < 0.5 * ref_width:
        raise _NotYet(f"the interval is only {width:.3f} wide, the bootstrap's is {ref_width:.3f}",
                      f"a {level:.0%} interval drops {alpha / 2:.1%} at each end, no more; " + hint)
    if abs(low - ref_low) > tolerance or abs(high - ref_high) > tolerance:
        raise _NotYet(f"({low:.3f}, {high:.3f}) is off: the bootstrap gives about ({ref_low:.3f}, {ref_high:.3f})",
                      hint)
    return (f"accuracy {acc:.3f}, {level:.0%} interval about [{ref_low:.3f}, {ref_high:.3f}]: "
            f"{100 * ref_width:.0f} points wide.")


@_checker("give the temperature as one positive number, e.g. 1.5.")
def check_temperature(T, logits, labels, n_bins: int = 10) -> str:
    """Does dividing ``logits`` by ``T`` lower the expected calibration error on (``logits``, ``labels``)?

    >>> logits = torch.tensor([[4.0, 0.0], [0.0, 4.0], [4.0, 0.0], [0.0, 4.0], [4.0, 0.0]])
    >>> ok = check_temperature(3.0, logits, [0, 1, 0, 0, 0])
    ✅ Correct: T = 3 lowers the ECE from 0.182 to 0.009 (the accuracy stays the same).
    """
    from tl_helpers.evaluate import expected_calibration_error

    t = _as_number(T, "a temperature (one positive number)", "T > 1 softens the probabilities, T < 1 sharpens them")
    if t <= 0:
        raise _NotYet(f"T = {t:g}: a temperature must be positive", "try values between 0.5 and 5")
    logits = torch.as_tensor(logits, dtype=torch.float32)
    before = expected_calibration_error(logits.softmax(dim=1), labels, n_bins)
    after = expected_calibration_error((logits / t).softmax(dim=1), labels, n_bins)
    if after < before - 1e-4:
        return f"T = {t:.3g} lowers the ECE from {before:.3f} to {after:.3f} (the accuracy stays the same)."
    probs = logits.softmax(dim=1)
    acc = float((probs.argmax(1).numpy() == _np_labels(labels)).mean())
    over = float(probs.max(1).values.mean()) > acc
    direction = ("the model is over-confident (mean confidence above accuracy): soften with T > 1" if over
                 else "the model is under-confident (mean confidence below accuracy): sharpen with T < 1")
    raise _NotYet(f"T = {t:.3g} does not lower the ECE ({before:.3f} -> {after:.3f})", direction)


@_checker("give one number: trainable parameters divided by labelled training images.")
def check_params_per_label(answer, num_classes: int = 8, labels_per_class: int = 5) -> str:
    """Is ``answer`` the number of trainable parameters *per labelled image* when fine-tuning all of
    EfficientNet-Lite0 (with a ``num_classes`` head) on ``labels_per_class`` images per class?

    The number explains why a linear probe beats fine-tuning with 5 labels a class.

    >>> ok = check_params_per_label(3_381_256 / 40)
    ✅ Correct: fine-tuning fits 84,531 parameters per labelled image, the linear probe 256: 330x fewer, so it cannot memorise 40 images the way the whole network can.
    """
    value = _as_number(answer, "one number", "count_parameters(model) / (num_classes * labels_per_class)")
    n_images = num_classes * labels_per_class
    full = _n(_fresh_lite0(num_classes).parameters())
    probe = 1280 * num_classes + num_classes
    expected = full / n_images
    if abs(value - expected) <= 0.02 * expected:
        return (f"fine-tuning fits {expected:,.0f} parameters per labelled image, the linear probe "
                f"{probe / n_images:,.0f}: {full / probe:.0f}x fewer, so it cannot memorise {n_images} images "
                "the way the whole network can.")
    hint = (f"count_parameters(model) with the new {num_classes}-class head, divided by the {n_images} "
            "labelled training images")
    imagenet = _n(_fresh_lite0().parameters())
    if abs(value - imagenet / n_images) <= 0.02 * imagenet / n_images:
        raise _NotYet("that counts the 1000-class ImageNet head",
                      f"replace the head by a new one with {num_classes} classes first")
    if abs(value - probe / n_images) <= 0.02 * probe / n_images:
        raise _NotYet("that is the linear probe's number; the exercise asks for full fine-tuning", hint)
    if abs(value - full) <= 0.02 * full:
        raise _NotYet(f"{value:,.0f} is the number of parameters", f"divide by the {n_images} labelled images")
    if abs(value - full / labels_per_class) <= 0.02 * full / labels_per_class:
        raise _NotYet(f"you divided by {labels_per_class}, the labels of one class",
                      f"there are {num_classes} x {labels_per_class} = {n_images} labelled images in all")
    raise _NotYet(f"{value:,.0f} is not it", hint)


# --------------------------------------------------------------------------------------------------
# The catalogue
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Exercise:
    """One exercise: its title, the chapter it ends (notebook number), and its checker."""

    title: str
    chapter: str
    checker: Callable[..., bool]


EXERCISES: dict[str, Exercise] = {
    "00.2": Exercise("Count the parameters of a model", "00", check_parameter_count),
    "00.3": Exercise("A random draw you can repeat", "00", check_reproducible),
    "01.2": Exercise("Preprocessing for EfficientNet-Lite: size, mean and std", "01", check_preprocessing),
    "01.3": Exercise("A safe predict(): what model.eval() changes", "01", check_predict),
    "02.1": Exercise("Turn a classifier into a feature extractor", "02", check_feature_extractor),
    "02.2": Exercise("A linear probe far above chance", "02", check_probe_accuracy),
    "02.3": Exercise("Nearest neighbours in feature space", "02", check_nearest_neighbours),
    "03.1": Exercise("Freeze everything but the head", "03", check_head_only_trainable),
    "03.2": Exercise("Freeze all but the last two blocks", "03", check_last_blocks_trainable),
    "03.3": Exercise("Training mode that keeps frozen BatchNorm frozen", "03", check_frozen_bn_mode),
    "04.1": Exercise("The shape of the new logits", "04", check_output_shape),
    "04.2": Exercise("A 5-class head with dropout 0.2", "04", check_new_head),
    "04.3": Exercise("The stale-optimizer bug", "04", check_optimizer_params),
    "05.1": Exercise("Unfreeze the top k blocks", "05", check_unfreeze_top),
    "05.2": Exercise("Discriminative learning rates", "05", check_param_groups),
    "05.3": Exercise("Read a learning rate off a range test", "05", check_lr_choice),
    "06.1": Exercise("Expected calibration error by hand", "06", check_ece),
    "06.2": Exercise("A bootstrap confidence interval", "06", check_bootstrap_ci),
    "06.3": Exercise("A temperature that lowers the ECE", "06", check_temperature),
    "06.4": Exercise("Why a probe beats fine-tuning at 5 labels, in one number", "06", check_params_per_label),
}


# Later chapters keep their checkers in a module of their own (tl_helpers.checks.<topic>), each with an
# EXERCISES dict of its own; they join the catalogue here, so EXERCISES lists every exercise of the course.
from tl_helpers.checks import (adaptation, distributed, own_images, predictions, segmentation,  # noqa: E402
                               text, what_transfers)

for _topic in (predictions, own_images, what_transfers, adaptation, text, segmentation, distributed):
    EXERCISES.update(_topic.EXERCISES)
