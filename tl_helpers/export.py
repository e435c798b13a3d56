"""Export a fine-tuned model for deployment (TorchScript, ONNX) and check each file against PyTorch.

ONNX is a file format for the network's computation graph and weights that many runtimes execute:
onnxruntime (C++, C#, Java, JavaScript, Python, phones), TensorRT, OpenVINO... A server or an app can
then run the model without Python or PyTorch. :class:`OnnxClassifier` runs an exported file with
onnxruntime, NumPy and Pillow only; the classes and the preprocessing travel inside the ``.onnx`` file
(its metadata), so the file alone is enough.

    path = export_onnx(ft, "model.onnx")           # ft: a tl_helpers.finetuned.FineTuned
    OnnxClassifier(path).predict(["photo.jpg"])

This module imports PyTorch only inside the export functions, so ``OnnxClassifier`` works in a
program that has no PyTorch (:func:`run_without_torch` checks exactly that, in a subprocess).

>>> onnx_preprocess(Image.new("RGB", (60, 40)), 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)).shape
(3, 32, 32)
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from tl_helpers.imagefolder import DataError, Prediction, read_images, top_predictions, training_side

FORMATS = ("onnx", "torchscript")
META_KEY = "tl_helpers"
TOLERANCE = 1e-4   # largest probability difference to PyTorch, on the same input tensors, that an export may show


def description(ft) -> dict:
    """What an exported file carries besides the network: classes, architecture, preprocessing (image size,
    mean, std, the side files are decoded to), the augmentation it was trained with, versions. ``export_onnx``
    stores it as the ONNX metadata ``tl_helpers`` (JSON), ``export_torchscript`` as an extra file."""
    return {"classes": list(ft.classes), "architecture": ft.architecture, "image_size": ft.image_size,
            "mean": list(ft.mean), "std": list(ft.std), "versions": dict(ft.versions),
            "decode_side": training_side(ft.image_size), "augmentation": dict(getattr(ft, "augmentation", {}))}


def _example(ft, batch: int = 2):
    import torch

    return torch.zeros(batch, 3, ft.image_size, ft.image_size)


def export_torchscript(ft, path: str | Path) -> Path:
    """Trace the model into a TorchScript file (loads with ``torch.jit.load``, no Python class needed).

    The classes and preprocessing are stored in the file (``_extra_files["tl_helpers.json"]``).
    PyTorch 2.14 marks TorchScript as deprecated (its successor is ``torch.export``); it still runs
    in C++ (libtorch) and on phones, and those warnings are silenced here.
    """
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = ft.model.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, _example(ft).to(next(model.parameters()).device))
        torch.jit.save(traced, str(path), _extra_files={f"{META_KEY}.json": json.dumps(description(ft))})
    return path


def load_torchscript(path: str | Path):
    """(TorchScript module, description dict) of a file written by :func:`export_torchscript`."""
    import torch

    extra = {f"{META_KEY}.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return module.eval(), json.loads(extra[f"{META_KEY}.json"] or "{}")


def export_onnx(ft, path: str | Path, opset: int = 18) -> Path:
    """Export the model to one self-contained ONNX file with a variable batch size.

    Uses PyTorch's ``torch.export``-based exporter (``dynamo=True``, needs ``onnxscript``), weights
    inside the file (no ``.onnx.data`` beside it), the classes and preprocessing as metadata
    (``metadata_props["tl_helpers"]``, JSON); the graph is checked with ``onnx.checker``.
    """
    import onnx
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = ft.model.eval().cpu()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (_example(ft),), str(path), dynamo=True, external_data=False, opset_version=opset,
                          input_names=["images"], output_names=["logits"],
                          dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, {META_KEY: json.dumps(description(ft))})
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return path


def export(ft, path: str | Path, format: str = "onnx") -> Path:
    """Export ``ft`` to ``path`` as ``"onnx"`` or ``"torchscript"``."""
    if format not in FORMATS:
        raise DataError(f"Unknown export format {format!r}: choose one of {', '.join(FORMATS)}.")
    return export_onnx(ft, path) if format == "onnx" else export_torchscript(ft, path)


# --------------------------------------------------------------------------------------------------
# Running an ONNX file without PyTorch
# --------------------------------------------------------------------------------------------------

def onnx_preprocess(img: Image.Image, image_size: int, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """The evaluation preprocessing in NumPy and Pillow: (3, size, size) float32, channels first.

    Shorter side resized to ``image_size`` (bilinear, antialiased), centre crop, [0, 1], normalised: the
    same steps as :func:`tl_helpers.data.eval_transform`, whose pixels it matches exactly (both resize with
    Pillow).
    """
    w, h = img.size
    new_w, new_h = (image_size, int(image_size * h / w)) if w <= h else (int(image_size * w / h), image_size)
    arr = np.asarray(img.convert("RGB").resize((new_w, new_h), Image.Resampling.BILINEAR), dtype=np.float32)
    top, left = int(round((new_h - image_size) / 2.0)), int(round((new_w - image_size) / 2.0))
    arr = arr[top:top + image_size, left:left + image_size] / 255.0
    arr = (arr - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class OnnxClassifier:
    """An exported ``.onnx`` classifier run by onnxruntime, with its own classes and preprocessing.

    ``predict`` takes the same inputs as ``FineTuned.predict`` (paths, folders, PIL images) and gives
    the same :class:`~tl_helpers.imagefolder.Prediction` list; ``probabilities`` takes arrays.
    """

    def __init__(self, path: str | Path, threads: int | None = None):
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"No ONNX file at {path}: export one first (python -m tl_helpers export "
                                    "model.pt --format onnx).")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for files it cannot parse
            raise DataError(f"{path.name} is not an ONNX model onnxruntime can load ({type(exc).__name__}): "
                            "export it again with export_onnx.") from None
        meta = self.session.get_modelmeta().custom_metadata_map.get(META_KEY)
        if meta is None:
            raise DataError(f"{path.name} has no '{META_KEY}' metadata (classes, preprocessing): it was not "
                            "written by export_onnx; export the model with tl_helpers.")
        self.description = json.loads(meta)
        self.classes = list(self.description["classes"])
        self.input_name = self.session.get_inputs()[0].name

    @property
    def side(self) -> int:
        """The shorter side files are decoded to before :meth:`preprocess`, as in training."""
        return int(self.description.get("decode_side") or training_side(self.description["image_size"]))

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities for a (N, 3, H, W) float32 batch already preprocessed."""
        logits = self.session.run(None, {self.input_name: np.asarray(batch, dtype=np.float32)})[0]
        return _softmax(logits.astype(np.float64))

    def preprocess(self, images: Sequence[Image.Image]) -> np.ndarray:
        """A (N, 3, size, size) float32 batch of PIL images, with the file's own preprocessing."""
        d = self.description
        return np.stack([onnx_preprocess(img, d["image_size"], d["mean"], d["std"]) for img in images])

    def _check_tta(self) -> None:
        if not self.description.get("augmentation", {}).get("flip", True):
            raise DataError("This model was trained without flips (--no-flip), so flip test-time augmentation "
                            "would average in an input it never learnt: leave out --tta / tta=True.")

    def image_probabilities(self, images: Sequence[Image.Image], batch_size: int = 32, tta: bool = False,
                            progress: bool = False) -> np.ndarray:
        """Class probabilities of PIL images, ``batch_size`` at a time; ``tta`` averages each with its mirror image."""
        from tqdm.auto import tqdm

        if tta:
            self._check_tta()
        rows = []
        for i in tqdm(range(0, len(images), batch_size), desc="predicting", disable=not progress, leave=False):
            batch = self.preprocess(images[i:i + batch_size])
            p = self.probabilities(batch)
            if tta:
                p = (p + self.probabilities(np.ascontiguousarray(batch[..., ::-1]))) / 2
            rows.append(p)
        return np.concatenate(rows) if rows else np.zeros((0, len(self.classes)))

    def predict(self, inputs, top_k: int = 1, batch_size: int = 32, skip_bad: bool = False, tta: bool = False,
                progress: bool = False) -> list[Prediction]:
        """Class and probability per image (paths, folders, PIL images), like ``FineTuned.predict``."""
        if tta:
            self._check_tta()
        names, images, bad = read_images(inputs, skip_bad, side=self.side)
        probs = self.image_probabilities(images, batch_size, tta, progress)
        return top_predictions(names, probs, self.classes, top_k, bad)


_NO_TORCH = """
import json, sys
sys.modules["torch"] = None            # any 'import torch' now fails: prove the runner does not need it
from tl_helpers.export import OnnxClassifier
clf = OnnxClassifier(sys.argv[1], threads=1)
preds = clf.predict(sys.argv[3:], top_k=int(sys.argv[2]), skip_bad=True)
loaded = sorted(m for m, v in sys.modules.items() if v is not None and m.split(".")[0] == "torch")
print(json.dumps({"classes": clf.classes, "torch_modules": loaded,
                  "predictions": [p.__dict__ for p in preds]}))
"""


def run_without_torch(onnx_path: str | Path, images: Sequence[str | Path], top_k: int = 1,
                      timeout: float = 120) -> dict:
    """Run the ONNX file on image files in a fresh Python process in which PyTorch cannot be imported.

    Returns ``{"classes": [...], "torch_modules": [...], "predictions": [Prediction dicts]}``;
    ``torch_modules`` lists any torch module loaded (none, if the runner is truly PyTorch-free).
    """
    args = [sys.executable, "-c", _NO_TORCH, str(onnx_path), str(top_k), *map(str, images)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"The PyTorch-free ONNX run failed: {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------------
# Checks against PyTorch
# --------------------------------------------------------------------------------------------------

def compare_with_pytorch(ft, exported: str | Path, images, batch_size: int = 32) -> dict:
    """How far an exported file's probabilities are from the PyTorch model's, on the same images.

    ``images`` are paths, folders or PIL images, read as training read them. The same preprocessed tensors
    go into both models (for ONNX also the file's own NumPy preprocessing, as deployed). Returns
    ``max_prob_diff`` (the largest absolute difference of any class probability), ``same_top1`` (fraction
    of images with the same top class) and ``n``; for ONNX also ``max_prob_diff_own_preprocessing``
    (the same pixels as ``eval_transform``'s, so only float rounding is left).
    """
    import torch

    _, pil, _ = read_images(images, skip_bad=True, side=training_side(ft.image_size))
    exported = Path(exported)
    tensors = torch.stack([ft.transform(img) for img in pil])
    with torch.no_grad():
        reference = ft.model.eval().cpu()(tensors).softmax(1).numpy().astype(np.float64)
    out: dict = {"format": "onnx" if exported.suffix.lower() == ".onnx" else "torchscript", "n": len(pil)}
    if out["format"] == "onnx":
        clf = OnnxClassifier(exported)
        probs = np.concatenate([clf.probabilities(tensors[i:i + batch_size].numpy())
                                for i in range(0, len(pil), batch_size)])
        own = clf.image_probabilities(pil, batch_size)
        out["max_prob_diff_own_preprocessing"] = float(np.abs(own - reference).max())
        out["same_top1_own_preprocessing"] = float(np.mean(own.argmax(1) == reference.argmax(1)))
    else:
        module, _ = load_torchscript(exported)
        with torch.no_grad():
            probs = module(tensors).softmax(1).numpy().astype(np.float64)
    out["max_prob_diff"] = float(np.abs(probs - reference).max())
    out["same_top1"] = float(np.mean(probs.argmax(1) == reference.argmax(1)))
    return out


def export_problems(result: dict, tolerance: float = TOLERANCE) -> list[str]:
    """What is wrong with an export, from :func:`compare_with_pytorch`'s ``result`` (empty: nothing).

    On the same input tensors an export must give PyTorch's probabilities to within ``tolerance`` and the
    same top class on every image; otherwise it computes something else (a wrong opset, an operator
    exported differently, a changed file) and must not be shipped.

    >>> export_problems({"n": 8, "max_prob_diff": 3e-7, "same_top1": 1.0})
    []
    >>> export_problems({"n": 8, "max_prob_diff": 0.2, "same_top1": 0.75})
    ['largest probability difference to PyTorch 2.0e-01 > tolerance 1.0e-04', 'top class differs on 2 of 8 images']
    """
    problems = []
    if not result["max_prob_diff"] <= tolerance:      # also catches NaN
        problems.append(f"largest probability difference to PyTorch {result['max_prob_diff']:.1e} > tolerance "
                        f"{tolerance:.1e}")
    wrong = round((1 - result["same_top1"]) * result["n"])
    if wrong:
        problems.append(f"top class differs on {wrong} of {result['n']} images")
    return problems
