"""Checkpoints and resume: save and load a run, the settings that identify it, its random generators.

``fit`` (``tl_helpers.train``) writes a checkpoint after every epoch with the run's settings
(:func:`run_settings`) and their hash; :func:`resumable` resumes only a run with the same settings.

>>> import tempfile
>>> from tl_helpers.checkpoints import load_checkpoint, save_checkpoint
>>> path = save_checkpoint(Path(tempfile.mkdtemp()) / "c.pt", nn.Linear(2, 2), settings={"epochs": 3})
>>> load_checkpoint(path)["settings"]
{'epochs': 3}
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from tl_helpers.files import atomic_write

if TYPE_CHECKING:
    from tl_helpers.train import History


def _plain(value):
    """``value`` as plain JSON types (what ``torch.load(weights_only=True)`` reads back); other objects by repr."""
    return json.loads(json.dumps(value, sort_keys=True, default=repr))


def settings_hash(settings: dict) -> str:
    """A short hash of a run's settings: two runs with the same hash trained the same way.

    >>> settings_hash({"epochs": 3, "lr": 1e-3}) == settings_hash({"lr": 1e-3, "epochs": 3})
    True
    >>> settings_hash({"epochs": 3}) == settings_hash({"epochs": 4})
    False
    """
    return hashlib.sha256(json.dumps(_plain(settings), sort_keys=True).encode()).hexdigest()[:16]


def _flat(settings: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def settings_diff(old: dict, new: dict) -> str:
    """What differs between two settings dicts, in one line (``key: old -> new``, nested keys dotted).

    >>> settings_diff({"epochs": 3, "recipe": {"lr": 0.1}}, {"epochs": 5, "recipe": {"lr": 0.1}})
    'epochs: 3 -> 5'
    """
    old, new = _flat(_plain(old)), _flat(_plain(new))

    def short(value) -> str:
        text = repr(value)
        return text if len(text) <= 40 else text[:37] + "..."

    parts = [f"{k}: {short(old.get(k, '(none)'))} -> {short(new.get(k, '(none)'))}"
             for k in sorted(set(old) | set(new)) if old.get(k, "(none)") != new.get(k, "(none)")]
    return "; ".join(parts[:4]) + (f"; and {len(parts) - 4} more" if len(parts) > 4 else "")


def _transform_of(loader) -> str | None:
    """repr of the transform of a loader's dataset (through Subsets), e.g. its image size and augmentation."""
    dataset = getattr(loader, "dataset", None)
    while dataset is not None and not hasattr(dataset, "transform") and hasattr(dataset, "dataset"):
        dataset = dataset.dataset
    transform = getattr(dataset, "transform", None)
    return None if transform is None else repr(transform)


def _loader_settings(loader) -> dict | None:
    if loader is None:
        return None
    dataset = getattr(loader, "dataset", None)
    return {"batch_size": getattr(loader, "batch_size", None),
            "samples": len(dataset) if hasattr(dataset, "__len__") else None,
            "transform": _transform_of(loader)}


def run_settings(model: nn.Module, optimizer: torch.optim.Optimizer, epochs: int, train_loader=None,
                 val_loader=None, loss_fn: Callable | None = None, scheduler=None, **extra) -> dict:
    """The settings of a training run that ``fit`` stores in its checkpoints (and compares on resume).

    Derived from the objects: the model's class and a hash of its structure (``repr``), the optimizer's
    class and groups (learning rates, weight decay, number of trainable values), the scheduler's class and
    step count, the loss (and its label smoothing), the loaders' batch size, size and transform (image
    size, augmentation), ``epochs``; plus the ``extra`` keys (e.g. a recipe's fields, the model's name).

    >>> net = nn.Linear(2, 2)
    >>> s = run_settings(net, torch.optim.SGD(net.parameters(), lr=0.1), epochs=3, model_name="tiny")
    >>> s["epochs"], s["model"], s["model_name"], s["optimizer"]["groups"][0]["lr"]
    (3, 'torch.nn.modules.linear.Linear', 'tiny', 0.1)
    """
    keys = ("name", "lr", "initial_lr", "max_lr", "weight_decay", "momentum", "betas")
    groups = [{k: g[k] for k in keys if k in g} | {"values": sum(p.numel() for p in g["params"])}
              for g in optimizer.param_groups]
    settings = {
        "epochs": int(epochs),
        "model": f"{type(model).__module__}.{type(model).__qualname__}",
        "model_structure": hashlib.sha256(repr(model).encode()).hexdigest()[:16],
        "optimizer": {"class": type(optimizer).__name__, "groups": groups},
        "scheduler": None if scheduler is None else {"class": type(scheduler).__name__,
                                                     "total_steps": getattr(scheduler, "total_steps", None)},
        "loss": None if loss_fn is None else {
            "class": getattr(loss_fn, "__qualname__", type(loss_fn).__name__),
            "label_smoothing": getattr(loss_fn, "label_smoothing", None)},
        "train_loader": _loader_settings(train_loader),
        "val_loader": _loader_settings(val_loader),
    }
    return _plain(settings | extra)

def save_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    scheduler=None, history: History | None = None, **extra) -> Path:
    """Save weights (and optionally optimizer, scheduler, history, any extra keys) to ``path``, atomically.

    The file is written by :func:`tl_helpers.files.atomic_write` (a temporary file, then renamed), so an
    interrupted save never leaves a damaged checkpoint. Everything stored loads with ``torch.load(weights_only=True)``. A ``settings``
    dict (``fit`` passes :func:`run_settings`) is stored with its hash, ``settings_hash``.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "tiny.pt"
    >>> _ = save_checkpoint(path, nn.Linear(2, 2), note="demo")
    >>> load_checkpoint(path, nn.Linear(2, 2))["note"]
    'demo'
    """
    state = {"model": model.state_dict()}
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        state["scheduler"] = scheduler.state_dict()
    if history is not None:
        state["history"] = history.to_dict()
    state.update(extra)
    if isinstance(state.get("settings"), dict):
        state["settings"] = _plain(state["settings"])
        state["settings_hash"] = settings_hash(state["settings"])
    return atomic_write(path, state)


def load_checkpoint(path: str | Path, model: nn.Module | None = None,
                    optimizer: torch.optim.Optimizer | None = None, scheduler=None,
                    map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``: no code is run).

    The given ``model``, ``optimizer`` and ``scheduler`` get their saved states; the whole saved
    dict (with any extra keys) is returned.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No checkpoint at {path}: train first (fit(..., checkpoint=...)) "
                                "or check the path.")
    state = torch.load(path, map_location=map_location, weights_only=True)
    if model is not None:
        model.load_state_dict(state["model"])
    if optimizer is not None and "optimizer" in state:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and "scheduler" in state:
        scheduler.load_state_dict(state["scheduler"])
    return state


def keep_last_epoch(checkpoint: str | Path) -> Path:
    """Make ``checkpoint`` hold the last epoch's state (``fit`` keeps the best validation epoch there).

    With a one-cycle schedule the last epoch is the model to keep; copy ``name.last.pt`` over the
    best-epoch file so that whoever loads ``checkpoint`` gets that model. Returns the path.
    """
    checkpoint = Path(checkpoint)
    shutil.copyfile(last_checkpoint_path(checkpoint), checkpoint)
    return checkpoint


def last_checkpoint_path(checkpoint: str | Path) -> Path:
    """Where ``fit`` keeps the end-of-latest-epoch state used by ``resume`` (``best.pt`` -> ``best.last.pt``)."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(f"{checkpoint.stem}.last{checkpoint.suffix or '.pt'}")


def rng_state(train_loader=None) -> dict:
    """Every random generator's state: torch, CUDA, NumPy, Python's ``random`` and ``train_loader``'s own
    generator (its shuffling), as tensors and numbers that ``torch.load(weights_only=True)`` reads back.

    >>> state = rng_state(); a = torch.rand(2); set_rng_state(state); torch.equal(a, torch.rand(2))
    True
    """
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
             "numpy": torch.from_numpy(keys.astype(np.int64)), "numpy_rest": [int(pos), int(has_gauss), float(cached)]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    generator = getattr(train_loader, "generator", None)
    if generator is not None:
        state["loader"] = generator.get_state()
    return state


def set_rng_state(state: dict, train_loader=None) -> None:
    """Put every generator back to ``state`` (from :func:`rng_state`), ``train_loader``'s included."""
    # load_checkpoint(map_location=cuda) moves every tensor to the GPU; generator states live on the CPU
    torch.set_rng_state(state["torch"].cpu())
    random.setstate((3, tuple(state["python"]), None))
    pos, has_gauss, cached = state["numpy_rest"]
    np.random.set_state(("MT19937", state["numpy"].cpu().numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    generator = getattr(train_loader, "generator", None)
    if generator is not None and "loader" in state:
        generator.set_state(state["loader"].cpu())


def resumable(checkpoint: str | Path, settings: dict, phase: str) -> Path | None:
    """The file a run with ``settings`` resumes from (``name.last.pt``, else ``checkpoint``), or None.

    None means: train from scratch, because there is no file yet, or because the file was saved with
    other settings (or with none, by an older version); then a one-line message on stderr says what
    differs. A file saved for another ``phase`` raises a ValueError (give each phase its own path).

    >>> import tempfile
    >>> resumable(Path(tempfile.mkdtemp()) / "none.pt", {"epochs": 1}, phase="train") is None
    True
    """
    candidates = [p for p in (last_checkpoint_path(checkpoint), Path(checkpoint)) if p.exists()]
    if not candidates:
        return None
    saved = torch.load(candidates[0], map_location="cpu", weights_only=True)
    if saved.get("phase", phase) != phase:
        raise ValueError(f"The checkpoint {candidates[0]} belongs to phase '{saved.get('phase')}', "
                         f"not '{phase}': give each phase its own checkpoint path.")
    if saved.get("settings_hash") != settings_hash(settings):
        why = (settings_diff(saved["settings"], settings) if isinstance(saved.get("settings"), dict)
               else "it stores no settings (written by an older version)")
        print(f"Training from scratch: {candidates[0].name} was saved with other settings ({why}).",
              file=sys.stderr)
        return None
    return candidates[0]
