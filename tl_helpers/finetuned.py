"""The course's recipe in one call: a folder of your images in, a tested, self-describing model out.

``finetune(folder)`` scans the folder (:mod:`tl_helpers.imagefolder`), splits it without a manifest
(stratified, near-duplicates in one part), computes the frozen backbone's features, trains the head on
them (phase 1), fine-tunes through the network (phase 2: :func:`tl_helpers.recipe.two_phase` with the
course's :class:`tl_helpers.recipe.Recipe`) and tests the result once on the test part. It returns a
:class:`FineTuned`: the model with its classes, preprocessing, recipe, histories and test report.
``save``/``load_finetuned`` keep all of that in one file, so a checkpoint says what it is.

    ft = finetune("my_photos/")                 # one subfolder per class
    print(ft.report)                            # accuracy with its 95 % interval, per class, confusion
    ft.predict(["new.jpg"], top_k=3)
    ft.save("model.pt"); ft = load_finetuned("model.pt")

>>> TestReport(["cat", "dog"], [0, 1, 1, 0], [0, 1, 0, 0]).accuracy
0.75
"""

from __future__ import annotations

import dataclasses
import hashlib
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

import tl_helpers
from tl_helpers.checkpoints import save_checkpoint
from tl_helpers.data import eval_transform, extract_features, make_loader, train_transform
from tl_helpers.evaluate import bootstrap_ci, classification_report, confusion_matrix
from tl_helpers.imagefolder import (DataError, Prediction, ScanReport, check_image, describe_split, read_images,
                                    scan_dataset, scan_image_folder, split_folder, top_predictions)
from tl_helpers.models import OfflineWeightsError, load_pretrained
from tl_helpers.recipe import Recipe, two_phase
from tl_helpers.runtime import get_device, seed_everything
from tl_helpers.surgery import replace_head
from tl_helpers.train import History

FORMAT = "tl_helpers.finetuned/1"


class CheckpointError(DataError):
    """The file is not a model saved by :meth:`FineTuned.save`, or not the model that was expected."""


# --------------------------------------------------------------------------------------------------
# The test report
# --------------------------------------------------------------------------------------------------

@dataclass
class TestReport:
    """Predictions on held-out images and what they say: accuracy with a 95 % bootstrap interval,
    scikit-learn's per-class report, the confusion matrix (row = true class).

    >>> r = TestReport(["cat", "dog"], [0, 1, 1, 0], [0, 1, 0, 0])
    >>> r.confusion.tolist(), r.interval[0] <= r.accuracy <= r.interval[1]
    ([[2, 0], [1, 1]], True)
    """

    __test__ = False  # not a pytest test class, whatever its name

    classes: list[str]
    y_true: list[int]
    y_pred: list[int]
    files: list[str] = field(default_factory=list)
    excluded: int = 0

    @property
    def accuracy(self) -> float:
        return float(np.mean(np.asarray(self.y_true) == np.asarray(self.y_pred)))

    @property
    def interval(self) -> tuple[float, float]:
        """95 % percentile-bootstrap interval of the accuracy (1000 resamples, seed 0)."""
        _, low, high = bootstrap_ci(self.y_true, self.y_pred, n=1000, alpha=0.05, seed=0)
        return low, high

    @property
    def confusion(self) -> np.ndarray:
        return confusion_matrix(self.y_true, self.y_pred, len(self.classes))

    def per_class(self, digits: int = 2) -> str:
        return classification_report(self.y_true, self.y_pred, self.classes, digits=digits)

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
        return "\n".join([self.headline(), "", self.per_class(), "confusion matrix (rows: true class):", *rows])

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


def _sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass
class FineTuned:
    """A fine-tuned classifier and everything needed to use and trust it.

    ``model`` (eval mode), ``classes`` (index -> name), ``architecture`` (a :func:`load_pretrained`
    name), the preprocessing (``image_size``, ``mean``, ``std``; see :attr:`transform`), the ``recipe``
    that trained it, the histories of phase 1 (``head_history``) and phase 2 (``history``), the
    ``report`` on the test part, the ``split`` (settings and counts), ``seen`` (SHA-256 of the training
    and validation files, so :meth:`evaluate` never counts them) and the ``versions`` it was made with.
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

    @property
    def transform(self):
        """The evaluation preprocessing: resize (shorter side), centre crop, scale to [0, 1], normalise."""
        return eval_transform(self.image_size, mean=self.mean, std=self.std)

    @property
    def preprocessing(self) -> dict:
        return {"image_size": self.image_size, "mean": list(self.mean), "std": list(self.std),
                "resize": "shorter side to image_size (bilinear, antialiased), then centre crop",
                "pixels": "RGB in [0, 1], transparency composited onto white"}

    def __repr__(self) -> str:
        acc = f", test {self.report.headline()}" if self.report else ""
        return (f"FineTuned({self.architecture}, {len(self.classes)} classes {self.classes}, "
                f"{self.image_size} px{acc})")

    @torch.no_grad()
    def logits(self, images: Sequence[Image.Image], batch_size: int = 32) -> torch.Tensor:
        """Raw class scores for PIL images, in batches (eval mode, no gradients)."""
        device = next(self.model.parameters()).device
        self.model.eval()
        tf = self.transform
        out = []
        for i in range(0, len(images), batch_size):
            batch = torch.stack([tf(img) for img in images[i:i + batch_size]]).to(device)
            out.append(self.model(batch).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, len(self.classes))

    def _labels_of(self, paths: Sequence[Path], batch_size: int = 64) -> list[int]:
        """Predicted class indices of good image files, reading ``batch_size`` files at a time."""
        preds = []
        for i in range(0, len(paths), batch_size):
            preds += self.logits([check_image(p)[0] for p in paths[i:i + batch_size]], batch_size).argmax(1).tolist()
        return preds

    def predict(self, inputs, top_k: int = 1, batch_size: int = 32, skip_bad: bool = False) -> list[Prediction]:
        """Class and probability for each image: paths, folders (their image files) or PIL images.

        ``top_k`` > 1 also fills ``Prediction.top`` with the k most probable (class, probability) pairs.
        A file that cannot be read raises DataError naming it, or with ``skip_bad=True`` gets a
        Prediction with ``error`` set and no label. Images are read as training read them
        (:func:`tl_helpers.imagefolder.check_image`).
        """
        names, images, bad = read_images(inputs, skip_bad)
        probs = self.logits(images, batch_size).softmax(1).numpy()
        return top_predictions(names, probs, self.classes, top_k, bad)

    def evaluate(self, data, batch_size: int = 64, exclude_seen: bool = True, progress: bool = False) -> TestReport:
        """Test the model on a folder (one subfolder per class, named like ``classes``) or a ScanReport.

        Files the model was trained or validated on (same bytes) are left out with ``exclude_seen`` and
        counted in ``TestReport.excluded``: evaluated on its own training folder, the model is tested on
        exactly the images ``finetune`` held out. Unknown class folders raise DataError.
        """
        report = data if isinstance(data, ScanReport) else scan_image_folder(data, progress=progress)
        unknown = [c for c in report.classes if c not in self.classes]
        if unknown:
            raise DataError(f"The folder has classes the model does not know: {', '.join(unknown)}. The model's "
                            f"classes are {', '.join(self.classes)}; rename or remove the other folders.")
        seen = set(self.seen) if exclude_seen else set()
        keep = [(p, self.classes.index(report.classes[t])) for p, t in report.samples if _sha256(p) not in seen]
        excluded = len(report.samples) - len(keep)
        if not keep:
            raise DataError(f"All {excluded} good images of {report.root.name}/ were used to train or validate the "
                            "model: evaluate it on images it has not seen.")
        preds = self._labels_of([p for p, _ in keep], batch_size)
        return TestReport(list(self.classes), [t for _, t in keep], preds,
                          [report.relative(p) for p, _ in keep], excluded)

    def save(self, path: str | Path) -> Path:
        """Write the model with its description to ``path`` (atomically; loads with ``weights_only=True``)."""
        return save_checkpoint(
            path, self.model, format=FORMAT, architecture=self.architecture, classes=list(self.classes),
            preprocessing=self.preprocessing, recipe=dataclasses.asdict(self.recipe),
            history=self.history, head_history=self.head_history.to_dict(),
            report=self.report.to_dict() if self.report else None, split=dict(self.split), seen=list(self.seen),
            versions=dict(self.versions))


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
    except Exception as exc:  # not a zip/pickle file, or one with objects weights_only refuses
        raise CheckpointError(f"{path.name} is not a model saved by FineTuned.save() ({type(exc).__name__}): give "
                              "the .pt file that finetune() or `python -m tl_helpers finetune` wrote.") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        keys = sorted(state)[:6] if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path.name} is a PyTorch file without the description FineTuned.save() writes "
                              f"(it holds {keys}), e.g. a training checkpoint of fit(): load it with "
                              "tl_helpers.checkpoints.load_checkpoint(path, model) into a model you build yourself.")
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
                     dict(state.get("split") or {}), list(state.get("seen") or []), dict(state["versions"]))


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


def finetune(data, *, model: str = "efficientnet_lite0", image_size: int = 128, epochs: int | None = None,
             recipe: Recipe | None = None, val: float = 0.15, test: float = 0.25, seed: int = 0,
             parts: dict[str, list[int]] | None = None, batch_size: int = 32, device: torch.device | str | None = None,
             cache=None, progress: bool = True, verbose: bool = True) -> FineTuned:
    """Fine-tune a pretrained ``model`` on ``data`` with the course's two-phase recipe; test it once.

    ``data`` is a folder with one subfolder per class, a :class:`~tl_helpers.imagefolder.ScanReport`,
    or an ``ImageFolder``-like dataset. Unusable files are skipped (and counted). The good images are
    split by ``seed`` into ``val`` and ``test`` fractions (stratified, near-duplicates in one part;
    ``parts`` gives your own indices into the report's samples instead). Then, with the course's
    :class:`~tl_helpers.recipe.Recipe` (``epochs`` changes only the number of phase-2 epochs, see
    :func:`recipe_for`): features of the frozen backbone (cached, keyed by weights, preprocessing and
    files), a head trained on them, then :func:`~tl_helpers.recipe.two_phase`; choices use the
    validation part only, and the test part is predicted once at the end (``FineTuned.report``).
    """
    report = data if isinstance(data, ScanReport) else (
        scan_image_folder(data, progress=progress) if isinstance(data, (str, Path)) else scan_dataset(data, progress=progress))
    if image_size < 32:
        raise DataError(f"image_size={image_size} is too small for a pretrained network: use 64 or more "
                        "(the course uses 128).")
    parts = parts if parts is not None else split_folder(report, val=val, test=test, seed=seed)
    if not parts.get("train") or not parts.get("test"):
        raise DataError("The split has an empty train or test part: give more images or other fractions.")
    recipe = recipe_for(epochs, seed, recipe)
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
    device = torch.device(device) if device is not None else get_device()
    eval_tf = eval_transform(image_size, mean=pre.mean, std=pre.std)
    train_tf = train_transform(image_size, mean=pre.mean, std=pre.std)
    plain = {k: report.dataset(eval_tf, idx) for k, idx in parts.items()}
    net = replace_head(pre.model, None, head=nn.Identity())  # outputs the pooled features
    X_train, y_train = extract_features(net, plain["train"], cache=cache, device=device, progress=progress)
    X_val = y_val = val_loader = None
    if parts.get("val"):
        X_val, y_val = extract_features(net, plain["val"], cache=cache, device=device, progress=progress)
        val_loader = make_loader(plain["val"], batch_size=64)
    train_loader = make_loader(report.dataset(train_tf, parts["train"]), batch_size=batch_size, train=True,
                               seed=seed)
    head_history, history = two_phase(net, train_loader, val_loader, (X_train, y_train, X_val, y_val), recipe,
                                      device=device, progress=progress)
    counts = {k: len(v) for k, v in parts.items()}
    ft = FineTuned(net.eval(), list(report.classes), model, image_size, tuple(pre.mean), tuple(pre.std), recipe,
                   head_history, history, None,
                   {"seed": seed, "val": val, "test": test, "counts": counts, "folder": report.root.name,
                    "skipped": len(report.skipped)},
                   sorted({_sha256(report.samples[i][0]) for k in ("train", "val") for i in parts.get(k, [])}))
    ft.report = TestReport(list(report.classes), [report.samples[i][1] for i in parts["test"]],
                           ft._labels_of([report.samples[i][0] for i in parts["test"]]),
                           [report.relative(report.samples[i][0]) for i in parts["test"]])
    if verbose:
        print(f"test {ft.report.headline()}")
    return ft
