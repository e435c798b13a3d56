"""The course's recipe in one call: a folder of your images in, a tested, self-describing model out.

``finetune(folder)`` scans the folder (:mod:`tl_helpers.imagefolder`), splits it without a manifest
(stratified, near-duplicates in one part; or keeps the ``train/``/``valid/``/``test/`` split the folder
gives), decodes every image once at the size training needs, computes the frozen backbone's features,
trains the head on them (phase 1), fine-tunes through the network (phase 2:
:func:`tl_helpers.recipe.two_phase` with the course's :class:`tl_helpers.recipe.Recipe`) and tests the
result once on the test part. It returns a :class:`FineTuned`: the model with its classes, preprocessing,
recipe, augmentation, histories and test report. ``save``/``load_finetuned`` keep all of that in one
file, so a checkpoint says what it is.

    ft = finetune("my_photos/")                 # one subfolder per class
    print(ft.report)                            # accuracy with its 95 % interval, per class, confusion
    ft.predict(["new.jpg"], top_k=3)
    ft.save("model.pt"); ft = load_finetuned("model.pt")

>>> TestReport(["cat", "dog"], [0, 1, 1, 0], [0, 1, 0, 0]).accuracy
0.75
"""

from __future__ import annotations

import dataclasses
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision.transforms import v2

import tl_helpers
from tl_helpers.checkpoints import save_checkpoint
from tl_helpers.data import eval_transform, extract_features, make_loader, train_transform
from tl_helpers.evaluate import bootstrap_ci, classification_report, confusion_matrix
from tl_helpers.imagefolder import (DECODING, DataError, ImageCache, Prediction, ScanReport, describe_split,
                                    file_digest, read_images, reduced_image, scan_dataset, scan_image_folder,
                                    split_folder, top_predictions, training_side)
from tl_helpers.models import OfflineWeightsError, load_pretrained
from tl_helpers.recipe import Recipe, two_phase
from tl_helpers.runtime import get_device, seed_everything
from tl_helpers.surgery import replace_head
from tl_helpers.train import History

FORMAT = "tl_helpers.finetuned/1"
AUGMENTATION = {"flip": True, "balance": False}   # what a model saved before these settings existed was trained with


class CheckpointError(DataError):
    """The file is not a model saved by :meth:`FineTuned.save`, or not the model that was expected."""


# --------------------------------------------------------------------------------------------------
# The test report
# --------------------------------------------------------------------------------------------------

@dataclass
class TestReport:
    """Predictions on held-out images and what they say: accuracy with a 95 % bootstrap interval,
    scikit-learn's per-class report (precision, recall), the confusion matrix (row = true class), the
    most confused pairs and, with the probabilities (``probs``), the images with the largest losses.

    >>> r = TestReport(["cat", "dog"], [0, 1, 1, 0], [0, 1, 0, 0])
    >>> r.confusion.tolist(), r.interval[0] <= r.accuracy <= r.interval[1], r.most_confused()
    ([[2, 0], [1, 1]], True, [('dog', 'cat', 1)])
    """

    __test__ = False  # not a pytest test class, whatever its name

    classes: list[str]
    y_true: list[int]
    y_pred: list[int]
    files: list[str] = field(default_factory=list)
    excluded: int = 0
    probs: list[list[float]] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return float(np.mean(np.asarray(self.y_true) == np.asarray(self.y_pred)))

    @property
    def interval(self) -> tuple[float, float]:
        """95 % percentile-bootstrap interval of the accuracy (1000 resamples of the test images, seed 0)."""
        _, low, high = bootstrap_ci(self.y_true, self.y_pred, n=1000, alpha=0.05, seed=0)
        return low, high

    @property
    def confusion(self) -> np.ndarray:
        return confusion_matrix(self.y_true, self.y_pred, len(self.classes))

    @property
    def recalls(self) -> dict[str, float]:
        """Recall of each class present in the test part: the share of its images predicted as it.

        >>> TestReport(["cat", "dog"], [0, 0, 1, 1], [0, 0, 0, 1]).recalls
        {'cat': 1.0, 'dog': 0.5}
        """
        cm = self.confusion
        return {c: float(cm[i, i] / cm[i].sum()) for i, c in enumerate(self.classes) if cm[i].sum()}

    @property
    def balanced_accuracy(self) -> float:
        """The mean of the per-class recalls: what accuracy would be if every class had as many test images."""
        return float(np.mean(list(self.recalls.values())))

    def per_class(self, digits: int = 2) -> str:
        return classification_report(self.y_true, self.y_pred, self.classes, digits=digits)

    def most_confused(self, n: int = 5) -> list[tuple[str, str, int]]:
        """The ``n`` largest off-diagonal cells of the confusion matrix: (true class, predicted class, images)."""
        cm = self.confusion
        cells = [(int(cm[i, j]), i, j) for i in range(len(self.classes)) for j in range(len(self.classes))
                 if i != j and cm[i, j] > 0]
        cells.sort(key=lambda c: (-c[0], c[1], c[2]))
        return [(self.classes[i], self.classes[j], k) for k, i, j in cells[:n]]

    def losses(self) -> np.ndarray:
        """Cross-entropy of each test image, -log p(true class): large for confident mistakes."""
        if len(self.probs) != len(self.y_true):
            raise ValueError("This report has no probabilities (a model saved by an older version): evaluate "
                             "the model again to get them.")
        p = np.asarray(self.probs, dtype=np.float64)[np.arange(len(self.y_true)), self.y_true]
        return -np.log(np.clip(p, 1e-12, 1.0))

    def top_losses(self, n: int = 12) -> list[int]:
        """Indices of the ``n`` test images with the largest losses, largest first (ties by position)."""
        return [int(i) for i in np.argsort(-self.losses(), kind="stable")[:n]]

    def mistakes_figure(self, root: str | Path, n: int = 12, ncols: int = 6):
        """A contact sheet of the ``n`` largest losses: each image (read from ``root`` / its file) titled with
        its true class, the prediction and its probability, red when wrong. Returns the matplotlib Figure."""
        from tl_helpers.plots import image_grid

        picks = self.top_losses(n)
        images, titles, colours = [], [], []
        for i in picks:
            img, reason = reduced_image(Path(root) / self.files[i], 160)
            images.append(img if img is not None else Image.new("RGB", (160, 160), "lightgray"))
            p = self.probs[i][self.y_pred[i]]
            titles.append(f"{Path(self.files[i]).name[:18]}\ntrue {self.classes[self.y_true[i]]}\n"
                          f"said {self.classes[self.y_pred[i]]} {p:.2f}")
            colours.append("black" if self.y_true[i] == self.y_pred[i] else "red")
        fig = image_grid(images, titles, ncols=min(ncols, max(1, len(images))), size=1.9, title_colors=colours)
        fig.suptitle(f"the {len(picks)} largest losses (-log p of the true class), largest first", fontsize=9)
        fig.tight_layout()
        return fig

    def headline(self) -> str:
        low, high = self.interval
        return (f"accuracy {self.accuracy:.1%} on {len(self.y_true)} test images "
                f"(95% interval {low:.1%} to {high:.1%})")

    def __str__(self) -> str:
        width = max([len(c) for c in self.classes] + [17])
        cm = self.confusion
        corner = "true \\ predicted"
        rows = [f"{corner:<{width}s}  " + " ".join(f"{i:>4d}" for i in range(len(self.classes)))]
        rows += [f"{c:<{width}s}  " + " ".join(f"{v:>4d}" for v in cm[i]) + f"   ({i}: {c})"
                 for i, c in enumerate(self.classes)]
        confused = ", ".join(f"{t} -> {p} {k}" for t, p, k in self.most_confused()) or "none"
        return "\n".join([self.headline(), f"mean per-class recall {self.balanced_accuracy:.1%}", "",
                          self.per_class(), "confusion matrix (rows: true class):", *rows,
                          f"most confused (true -> predicted, images): {confused}"])

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TestReport:
        return cls(**data)


# --------------------------------------------------------------------------------------------------
# The fine-tuned model
# --------------------------------------------------------------------------------------------------

def _versions() -> dict[str, str]:
    import torchvision

    return {"torch": str(torch.__version__), "torchvision": str(torchvision.__version__),
            "tl_helpers": str(tl_helpers.__version__),
            "python": platform.python_version()}


_sha256 = file_digest   # the name older code and tests use


class Decoded:
    """The first step of the transforms ``finetune`` builds: it checks that the loader handed over an image
    decoded to at most ``side`` pixels on its shorter side (:func:`tl_helpers.imagefolder.reduced_image`), and
    names that decoding, so cached features and checkpoints are keyed by it too.

    >>> Decoded(192)(Image.new("RGB", (256, 192))).size
    (256, 192)
    """

    def __init__(self, side: int):
        self.side = int(side)

    def __call__(self, img: Image.Image) -> Image.Image:
        if min(img.size) > self.side:
            raise ValueError(f"An image of {img.size[0]} x {img.size[1]} reached a pipeline for images decoded to "
                             f"a shorter side of {self.side}: read files with ImageCache({self.side}).load or "
                             f"reduced_image(path, {self.side}).")
        return img

    def __repr__(self) -> str:
        return f"Decoded(shorter side <= {self.side}, {DECODING})"


def _load_reduced(path: str, side: int) -> Image.Image:
    """A dataset loader without a cache: every read decodes the file again at the reduced size."""
    img, reason = reduced_image(path, side)
    if img is None:
        raise DataError(f"Cannot use the image {path}: {reason}. Replace or delete the file, then run again.")
    return img


class _ReducedLoader:
    """``_load_reduced`` at one side, as a picklable callable (DataLoader workers may need to pickle it)."""

    def __init__(self, side: int):
        self.side = side

    def __call__(self, path: str) -> Image.Image:
        return _load_reduced(path, self.side)


def augmentation_transform(image_size: int, mean: Sequence[float], std: Sequence[float], flip: bool = True,
                           side: int | None = None) -> v2.Compose:
    """The course's training augmentation (:func:`tl_helpers.data.train_transform`: random resized crop and
    horizontal flip), without the flip when ``flip=False`` (text, digits, anything with a handedness), after a
    :class:`Decoded` check when ``side`` is given.

    >>> steps = [type(t).__name__ for t in augmentation_transform(64, (0.5,) * 3, (0.5,) * 3, flip=False).transforms]
    >>> "RandomResizedCrop" in steps, "RandomHorizontalFlip" in steps
    (True, False)
    """
    tf = train_transform(image_size, mean=mean, std=std)
    steps = [t for t in tf.transforms if flip or not isinstance(t, v2.RandomHorizontalFlip)]
    return v2.Compose(([Decoded(side)] if side else []) + steps)


@dataclass
class FineTuned:
    """A fine-tuned classifier and everything needed to use and trust it.

    ``model`` (eval mode), ``classes`` (index -> name), ``architecture`` (a :func:`load_pretrained`
    name), the preprocessing (``image_size``, ``mean``, ``std``; see :attr:`transform`), the ``recipe``
    that trained it, the histories of phase 1 (``head_history``) and phase 2 (``history``), the
    ``report`` on the test part, the ``split`` (settings and counts), ``seen`` (SHA-256 of the training
    and validation files, so :meth:`evaluate` never counts them), the ``augmentation`` it was trained
    with (``flip``, ``balance``) and the ``versions`` it was made with.
    """

    model: nn.Module
    classes: list[str]
    architecture: str
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    recipe: Recipe = field(default_factory=Recipe)
    head_history: History = field(default_factory=History)
    history: History = field(default_factory=History)
    report: TestReport | None = None
    split: dict = field(default_factory=dict)
    seen: list[str] = field(default_factory=list, repr=False)
    versions: dict = field(default_factory=_versions)
    augmentation: dict = field(default_factory=lambda: dict(AUGMENTATION))

    @property
    def transform(self):
        """The evaluation preprocessing: resize (shorter side), centre crop, scale to [0, 1], normalise."""
        return eval_transform(self.image_size, mean=self.mean, std=self.std)

    @property
    def side(self) -> int:
        """The shorter side files are decoded to before :attr:`transform` (:func:`training_side`)."""
        return training_side(self.image_size)

    @property
    def preprocessing(self) -> dict:
        return {"image_size": self.image_size, "mean": list(self.mean), "std": list(self.std),
                "decode": f"files decoded to a shorter side of {self.side} (JPEG at reduced scale, then Lanczos)",
                "resize": "shorter side to image_size (bilinear, antialiased), then centre crop",
                "pixels": "RGB in [0, 1], transparency composited onto white"}

    def __repr__(self) -> str:
        acc = f", test {self.report.headline()}" if self.report else ""
        return (f"FineTuned({self.architecture}, {len(self.classes)} classes {self.classes}, "
                f"{self.image_size} px{acc})")

    def _batches(self, images: Sequence[Image.Image], batch_size: int):
        """The preprocessed images in batches on the model's device; puts the model in eval mode."""
        device = next(self.model.parameters()).device
        self.model.eval()
        for i in range(0, len(images), batch_size):
            yield torch.stack([self.transform(img) for img in images[i:i + batch_size]]).to(device)

    @torch.no_grad()
    def logits(self, images: Sequence[Image.Image], batch_size: int = 32) -> torch.Tensor:
        """Raw class scores for PIL images, in batches (eval mode, no gradients)."""
        out = [self.model(batch).float().cpu() for batch in self._batches(images, batch_size)]
        return torch.cat(out) if out else torch.zeros(0, len(self.classes))

    def check_tta(self) -> None:
        """Refuse flip test-time augmentation for a model trained without flips (``flip=False``)."""
        if not self.augmentation.get("flip", True):
            raise DataError("This model was trained without flips (--no-flip: a mirrored image is not the same "
                            "class, e.g. text or digits), so flip test-time augmentation would average in an input "
                            "it never learnt: leave out --tta / tta=True.")

    @torch.no_grad()
    def probabilities(self, images: Sequence[Image.Image], batch_size: int = 32, tta: bool = False) -> np.ndarray:
        """Class probabilities for PIL images; with ``tta`` the mean of the input's and its mirror image's
        (flip test-time augmentation, the preprocessed tensor flipped left-right: two forward passes an image)."""
        if tta:
            self.check_tta()
        out = []
        for batch in self._batches(images, batch_size):
            p = self.model(batch).float().softmax(1)
            if tta:
                p = (p + self.model(batch.flip(3)).float().softmax(1)) / 2
            out.append(p.cpu())
        return torch.cat(out).double().numpy() if out else np.zeros((0, len(self.classes)))

    def _probabilities_of(self, paths: Sequence[Path], batch_size: int = 64, tta: bool = False,
                          cache: ImageCache | None = None, progress: bool = False) -> np.ndarray:
        """Probabilities of good image files, read as training read them, ``batch_size`` files at a time."""
        from tqdm.auto import tqdm

        rows = []
        for i in tqdm(range(0, len(paths), batch_size), desc="predicting", disable=not progress, leave=False):
            chunk = paths[i:i + batch_size]
            images = [cache.load(p) for p in chunk] if cache is not None else read_images(list(chunk), side=self.side)[1]
            rows.append(self.probabilities(images, batch_size, tta))
        return np.concatenate(rows) if rows else np.zeros((0, len(self.classes)))

    def predict(self, inputs, top_k: int = 1, batch_size: int = 32, skip_bad: bool = False, tta: bool = False,
                progress: bool = False) -> list[Prediction]:
        """Class and probability for each image: paths, folders (their image files) or PIL images.

        ``top_k`` > 1 also fills ``Prediction.top`` with the k most probable (class, probability) pairs.
        A file that cannot be read raises DataError naming it, or with ``skip_bad=True`` gets a
        Prediction with ``error`` set and no label. Files are read as training read them
        (:func:`tl_helpers.imagefolder.reduced_image`); ``tta=True`` averages each image with its mirror image.
        """
        from tqdm.auto import tqdm

        if tta:
            self.check_tta()
        names, images, bad = read_images(inputs, skip_bad, side=self.side)
        rows = [self.probabilities(images[i:i + batch_size], batch_size, tta)
                for i in tqdm(range(0, len(images), batch_size), desc="predicting", disable=not progress, leave=False)]
        probs = np.concatenate(rows) if rows else np.zeros((0, len(self.classes)))
        return top_predictions(names, probs, self.classes, top_k, bad)

    def evaluate(self, data, batch_size: int = 64, exclude_seen: bool = True, progress: bool = False,
                 tta: bool = False, cache: ImageCache | bool = True) -> TestReport:
        """Test the model on a folder (one subfolder per class, named like ``classes``, or a split layout)
        or a ScanReport.

        Files the model was trained or validated on (same bytes) are left out with ``exclude_seen`` and
        counted in ``TestReport.excluded``: evaluated on its own training folder, the model is tested on
        exactly the images ``finetune`` held out. Unknown class folders raise DataError. Images are read as
        training read them, through an :class:`ImageCache` (``cache=False``: none); ``tta`` as in :meth:`predict`.
        """
        if tta:
            self.check_tta()
        cache = ImageCache(self.side) if cache is True else (cache or None)
        report = data if isinstance(data, ScanReport) else scan_image_folder(data, progress=progress, cache=cache)
        unknown = [c for c in report.classes if c not in self.classes]
        if unknown:
            raise DataError(f"The folder has classes the model does not know: {', '.join(unknown)}. The model's "
                            f"classes are {', '.join(self.classes)}; rename or remove the other folders.")
        digests = report.digests or [file_digest(p) for p, _ in report.samples]
        seen = set(self.seen) if exclude_seen else set()
        keep = [(p, self.classes.index(report.classes[t])) for (p, t), d in zip(report.samples, digests)
                if d not in seen]
        excluded = len(report.samples) - len(keep)
        if not keep:
            raise DataError(f"All {excluded} good images of {report.root.name}/ were used to train or validate the "
                            "model: evaluate it on images it has not seen.")
        if cache is not None:
            cache.remember([p for p, _ in report.samples], digests)
        probs = self._probabilities_of([p for p, _ in keep], batch_size, tta, cache, progress)
        return TestReport(list(self.classes), [t for _, t in keep], probs.argmax(1).tolist(),
                          [report.relative(p) for p, _ in keep], excluded, np.round(probs, 6).tolist())

    def save(self, path: str | Path) -> Path:
        """Write the model with its description to ``path`` (atomically; loads with ``weights_only=True``)."""
        return save_checkpoint(
            path, self.model, format=FORMAT, architecture=self.architecture, classes=list(self.classes),
            preprocessing=self.preprocessing, recipe=dataclasses.asdict(self.recipe),
            history=self.history, head_history=self.head_history.to_dict(),
            report=self.report.to_dict() if self.report else None, split=dict(self.split), seen=list(self.seen),
            versions=dict(self.versions), augmentation=dict(self.augmentation))


def load_finetuned(path: str | Path, architecture: str | None = None, classes: Sequence[str] | None = None,
                   device: torch.device | str = "cpu") -> FineTuned:
    """Load a model written by :meth:`FineTuned.save`, rebuilt from its own description.

    With ``architecture`` and/or ``classes`` the file must hold that architecture and those classes
    (in that order); otherwise :class:`CheckpointError` says what the file holds instead. Any other file
    (a ``fit()`` checkpoint, an ONNX file, an image) raises CheckpointError saying what it is.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No model file at {path}: check the path, or train one with finetune() "
                                "(python -m tl_helpers finetune FOLDER --out model.pt).")
    if path.suffix.lower() == ".onnx":
        raise CheckpointError(f"{path.name} is an ONNX file: run it with tl_helpers.export.OnnxClassifier (or "
                              "python -m tl_helpers predict model.onnx IMAGES); load_finetuned reads the .pt file.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # not a zip/pickle file, or one with objects weights_only refuses
        raise CheckpointError(f"{path.name} is not a model saved by FineTuned.save() (PyTorch cannot read it as a "
                              "checkpoint): give the .pt file that finetune() or `python -m tl_helpers finetune` "
                              "wrote.") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        keys = sorted(map(str, state))[:6] if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path.name} is a PyTorch file without the description FineTuned.save() writes "
                              f"(it holds {keys}), e.g. a training checkpoint of fit(): load it with "
                              "tl_helpers.checkpoints.load_checkpoint(path, model) into a model you build yourself.")
    missing = [k for k in ("architecture", "classes", "model", "preprocessing", "recipe", "history", "head_history",
                           "versions") if k not in state]
    if missing:
        raise CheckpointError(f"{path.name} says it is a FineTuned model but lacks {', '.join(missing)}: the file was "
                              "changed or written by another program; save the model again with FineTuned.save().")
    held = f"{state['architecture']} with {len(state['classes'])} classes"
    if architecture is not None and architecture != state["architecture"]:
        raise CheckpointError(f"{path.name} holds an {held}, not a {architecture}: load it without "
                              "architecture=, or pick the file of the model you meant.")
    if classes is not None and list(classes) != list(state["classes"]):
        raise CheckpointError(f"{path.name} holds an {held} ({', '.join(state['classes'])}), not the "
                              f"{len(classes)} classes asked for ({', '.join(classes)}).")
    model = replace_head(load_pretrained(state["architecture"], weights=False).model, len(state["classes"]))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"The weights in {path.name} do not fit an {held}: the file was changed or written "
                              f"by another program ({str(exc).splitlines()[0]}).") from None
    pre = state["preprocessing"]
    report = TestReport.from_dict(state["report"]) if state.get("report") else None
    return FineTuned(model.to(device).eval(), list(state["classes"]), state["architecture"], int(pre["image_size"]),
                     tuple(pre["mean"]), tuple(pre["std"]), Recipe(**state["recipe"]),
                     History.from_dict(state["head_history"]), History.from_dict(state["history"]), report,
                     dict(state.get("split") or {}), list(state.get("seen") or []), dict(state["versions"]),
                     {**AUGMENTATION, **dict(state.get("augmentation") or {})})


# --------------------------------------------------------------------------------------------------
# finetune(): the recipe in one call
# --------------------------------------------------------------------------------------------------

def recipe_for(epochs: int | None = None, seed: int = 0, recipe: Recipe | None = None) -> Recipe:
    """The course's Recipe (or ``recipe``) with ``seed``, and ``epochs`` phase-2 epochs if given.

    Phase 2 of the recipe is 1 epoch on the top stages, then 6 on all layers (7 in all); ``epochs=n``
    keeps the first top-stage epoch and gives the other n - 1 to all layers (``epochs=1``: top stages only).

    >>> r = recipe_for(epochs=3)
    >>> r.top_epochs, r.all_epochs, r.finetune_epochs, r.head_epochs == Recipe().head_epochs
    (1, 2, 3, True)
    """
    recipe = dataclasses.replace(recipe or Recipe(), seed=seed)
    if epochs is None:
        return recipe
    if epochs < 1:
        raise DataError(f"epochs={epochs}: fine-tuning needs at least 1 epoch (the recipe's default is "
                        f"{Recipe().finetune_epochs}).")
    top = min(recipe.top_epochs, epochs)
    return dataclasses.replace(recipe, top_epochs=top, all_epochs=epochs - top)


def check_image_size(image_size: int) -> None:
    """Refuse an input size no pretrained network can use (before anything is scanned or loaded).

    >>> check_image_size(8)
    Traceback (most recent call last):
    ...
    tl_helpers.imagefolder.DataError: image_size=8 is too small for a pretrained network: ...
    """
    if image_size < 32:
        raise DataError(f"image_size={image_size} is too small for a pretrained network: use 64 or more "
                        "(the course uses 128).")


def class_weights(counts: Sequence[int]) -> torch.Tensor:
    """Loss weights inversely proportional to the class sizes, averaging 1 over the training images
    (scikit-learn's ``class_weight="balanced"``: n / (classes x n_c)).

    >>> [round(w, 3) for w in class_weights([30, 10]).tolist()]
    [0.667, 2.0]
    """
    n = torch.tensor([float(c) for c in counts])
    if (n <= 0).any():
        raise DataError("A class has no training image, so it cannot be weighed: add images or leave it out.")
    return n.sum() / (len(n) * n)


def finetune(data, *, model: str = "efficientnet_lite0", image_size: int = 128, epochs: int | None = None,
             recipe: Recipe | None = None, val: float = 0.15, test: float = 0.25, seed: int = 0,
             parts: dict[str, list[int]] | None = None, batch_size: int = 32, device: torch.device | str | None = None,
             cache=None, progress: bool = True, verbose: bool = True, flip: bool = True, balance: bool = False,
             checkpoint: str | Path | None = None, image_cache: bool | str | Path = True,
             num_workers: int = 0) -> FineTuned:
    """Fine-tune a pretrained ``model`` on ``data`` with the course's two-phase recipe; test it once.

    ``data`` is a folder (one subfolder per class, or a split layout: ``train/``, ``valid/``, ``test/``),
    a :class:`~tl_helpers.imagefolder.ScanReport`, or an ``ImageFolder``-like dataset. Unusable files are
    skipped (and counted). The good images are split by ``seed`` into ``val`` and ``test`` fractions
    (stratified, near-duplicates in one part; a split the folder gives is kept; ``parts`` gives your own
    indices into the report's samples instead). Then, with the course's :class:`~tl_helpers.recipe.Recipe`
    (``epochs`` changes only the number of phase-2 epochs, see :func:`recipe_for`): every image decoded once
    to the size training needs (``image_cache``: an :class:`~tl_helpers.imagefolder.ImageCache` in the course
    cache, or in the folder given; ``False`` decodes at every read), features of the frozen backbone
    (cached, keyed by weights, preprocessing and files), a head trained on them, then
    :func:`~tl_helpers.recipe.two_phase`. The validation part is measured after every epoch (the
    histories) and chooses only the epoch to keep (the recipe's ``restore_best``: the best validation epoch of
    the last phase that ran, ``all``, or ``top`` when there is no ``all`` epoch); the test part chooses nothing and is predicted once at the end
    (``FineTuned.report``).

    - ``flip=False`` trains without horizontal flips (text, digits, anything with a handedness).
    - ``balance=True`` weighs the loss inversely to the class sizes of the training part (:func:`class_weights`).
    - ``checkpoint``: a path for the training checkpoints of phase 2; rerunning the same call after an
      interruption resumes where it stopped (only with the same settings, see :func:`tl_helpers.train.fit`).
    - ``num_workers``: DataLoader worker processes for training (0: the images come from the cache in the
      main process, which is fastest once they are decoded; see ``benchmarks/large_photos.py``).
    """
    check_image_size(image_size)
    recipe = recipe_for(epochs, seed, recipe)
    side = training_side(image_size)
    images = (None if image_cache is False else
              ImageCache(side) if image_cache is True else ImageCache(side, image_cache))
    if isinstance(data, ScanReport):
        report = data
    elif isinstance(data, (str, Path)):
        report = scan_image_folder(data, progress=progress, cache=images)
    else:
        report = scan_dataset(data, progress=progress, cache=images)
    parts = parts if parts is not None else split_folder(report, val=val, test=test, seed=seed)
    if not parts.get("train") or not parts.get("test"):
        raise DataError("The split has an empty train or test part: give more images or other fractions.")
    if verbose:
        skipped = f"; {len(report.skipped)} unusable files skipped (report.summary() lists them)" if report.skipped else ""
        print(f"{len(report.samples)} images in {len(report.classes)} classes{skipped}")
        print(describe_split(report, parts))
    seed_everything(seed)
    try:
        pre = load_pretrained(model, image_size=image_size)
    except ValueError as exc:  # unknown model name
        raise DataError(str(exc)) from None
    except OfflineWeightsError as exc:
        raise DataError(str(exc)) from None
    digests = report.digests or [file_digest(p) for p, _ in report.samples]
    used = sorted(i for idx in parts.values() for i in idx)
    if images is not None:
        images.warm([report.samples[i][0] for i in used], [digests[i] for i in used], progress=progress)
    loader = images.load if images is not None else _ReducedLoader(side)
    device = torch.device(device) if device is not None else get_device()
    eval_tf = v2.Compose([Decoded(side), *eval_transform(image_size, mean=pre.mean, std=pre.std).transforms])
    train_tf = augmentation_transform(image_size, pre.mean, pre.std, flip=flip, side=side)
    plain = {k: report.dataset(eval_tf, idx, loader) for k, idx in parts.items()}
    net = replace_head(pre.model, None, head=nn.Identity())  # outputs the pooled features
    X_train, y_train = extract_features(net, plain["train"], cache=cache, device=device, progress=progress)
    X_val = y_val = val_loader = None
    if parts.get("val"):
        X_val, y_val = extract_features(net, plain["val"], cache=cache, device=device, progress=progress)
        val_loader = make_loader(plain["val"], batch_size=64)
    train_loader = make_loader(report.dataset(train_tf, parts["train"], loader), batch_size=batch_size, train=True,
                               seed=seed, num_workers=num_workers)
    train_counts = np.bincount([report.samples[i][1] for i in parts["train"]], minlength=len(report.classes))
    weights = class_weights(train_counts) if balance else None
    head_history, history = two_phase(net, train_loader, val_loader, (X_train, y_train, X_val, y_val), recipe,
                                      checkpoint=checkpoint, device=device, progress=progress, class_weights=weights,
                                      settings={"architecture": model, "classes": list(report.classes), "flip": flip})
    counts = {k: len(v) for k, v in parts.items()}
    split = {"seed": seed, "val": val, "test": test, "counts": counts, "folder": report.root.name,
             "skipped": len(report.skipped)}
    if report.given_split:
        split["given"] = dict(report.part_folders)
    ft = FineTuned(net.eval(), list(report.classes), model, image_size, tuple(pre.mean), tuple(pre.std), recipe,
                   head_history, history, None, split,
                   sorted({digests[i] for k in ("train", "val") for i in parts.get(k, [])}),
                   augmentation={"flip": flip, "balance": balance})
    test_paths = [report.samples[i][0] for i in parts["test"]]
    probs = ft._probabilities_of(test_paths, cache=images)
    ft.report = TestReport(list(report.classes), [report.samples[i][1] for i in parts["test"]], probs.argmax(1).tolist(),
                           [report.relative(p) for p in test_paths], 0, np.round(probs, 6).tolist())
    if verbose:
        print(f"test {ft.report.headline()}")
    return ft
