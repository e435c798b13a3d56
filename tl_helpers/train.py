"""Training loops in plain PyTorch: one epoch, evaluation, ``fit`` with checkpoints, a head on cached features.

The usual two phases (see the chapters for the full recipe)::

    head, history = fit_head_on_features(X_train, y_train, X_val, y_val)   # phase 1, cached features
    replace_head(model, None, head=head); freeze(model); unfreeze(model, blocks=3)
    optimizer = torch.optim.AdamW(param_groups(model, head_lr=1e-3, backbone_lr=1e-4))
    history = fit(model, train_loader, val_loader, optimizer, epochs=5, phase="finetune",
                  history=history, checkpoint="checkpoints/finetune.pt", resume=True)

>>> from tl_helpers.train import History
>>> History([{"phase": "head", "epoch": 1, "val_acc": 0.75}]).best()["val_acc"]
0.75
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import random
import sys
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.optim.lr_scheduler import CyclicLR, OneCycleLR, ReduceLROnPlateau
from tqdm.auto import tqdm

from tl_helpers.files import atomic_write
from tl_helpers.models import format_table, train_mode
from tl_helpers.runtime import get_device

COLUMNS = ("phase", "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")
PER_BATCH_SCHEDULERS = (OneCycleLR, CyclicLR)


@dataclass
class History:
    """What happened during training: one row (a dict) per epoch.

    Keys: ``phase`` (e.g. "head", "finetune"), ``epoch`` (counted over the whole history, so phase 2
    continues the numbering of phase 1), ``train_loss``, ``train_acc``, ``val_loss``, ``val_acc``,
    ``lr`` (the largest learning rate of the optimizer at the start of the epoch), ``seconds``.

    >>> h = History([{"phase": "head", "epoch": 1, "val_acc": 0.5, "val_loss": 1.0},
    ...              {"phase": "head", "epoch": 2, "val_acc": 0.7, "val_loss": 1.2}])
    >>> h.column("val_acc"), h.best()["epoch"], h.best("val_loss")["epoch"]
    ([0.5, 0.7], 2, 1)
    >>> History.from_dict(h.to_dict()) == h
    True
    """

    rows: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)

    def append(self, row: dict) -> None:
        self.rows.append(dict(row))

    def column(self, name: str) -> list:
        """The values of one key, in epoch order (``None`` where a row lacks it)."""
        return [row.get(name) for row in self.rows]

    def phase(self, name: str) -> History:
        """The rows of one phase, as a new History."""
        return History([dict(r) for r in self.rows if r.get("phase") == name])

    def best(self, metric: str = "val_acc") -> dict:
        """The row with the best ``metric``: the highest, or the lowest for a name containing "loss"."""
        rows = [r for r in self.rows if isinstance(r.get(metric), (int, float)) and not math.isnan(r[metric])]
        if not rows:
            keys = sorted(self.rows[0]) if self.rows else []
            raise ValueError(f"No epoch has a value for '{metric}' (keys: {keys}).")
        pick = min if "loss" in metric else max
        return pick(rows, key=lambda r: r[metric])

    def to_dict(self) -> dict:
        return {"rows": [dict(r) for r in self.rows]}

    @classmethod
    def from_dict(cls, data: dict) -> History:
        return cls([dict(r) for r in data["rows"]])

    def table(self, digits: int = 3) -> str:
        """The history as a fixed-width text table (seconds left out, so the text is stable)."""
        rows = [{k: (round(v, digits) if isinstance(v, float) else v) for k, v in r.items() if k != "seconds"}
                for r in self.rows]
        return format_table(rows, total=False)


def _correct(logits: torch.Tensor, y: torch.Tensor) -> int:
    target = y.argmax(1) if y.ndim == 2 else y  # soft labels (mixup, ...): the strongest class
    return int((logits.argmax(1) == target).sum())


def _nan_error(loss: torch.Tensor, batch: int, x: torch.Tensor) -> FloatingPointError:
    bad_inputs = not torch.isfinite(x).all()
    hint = ("The inputs of that batch contain NaN or inf: check the data and the transforms."
            if bad_inputs else
            "Try a learning rate 10x lower (or run lr_range_test), gradient clipping "
            "(torch.nn.utils.clip_grad_norm_), and check the inputs (torch.isfinite(x).all()) and "
            "that the labels lie in 0..num_classes-1.")
    return FloatingPointError(f"The training loss became {float(loss.detach())} at batch {batch}; the weights are "
                              f"now unusable (reload the last checkpoint). {hint}")


def train_one_epoch(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer, loss_fn: Callable,
                    device: torch.device | str, scheduler=None, scaler: torch.amp.GradScaler | None = None,
                    max_grad_norm: float | None = None, accumulate: int = 1) -> tuple[float, float]:
    """One pass over ``loader``; returns (mean loss, accuracy) over the samples seen.

    The model is put in training mode with :func:`tl_helpers.models.train_mode`, so frozen BatchNorm
    layers stay in eval mode. ``scheduler`` is stepped after every batch (pass it only for per-batch
    schedulers such as OneCycleLR). With a ``scaler`` the forward pass runs under ``torch.autocast``
    (mixed precision, CUDA). Raises FloatingPointError as soon as the loss is NaN or infinite.

    ``accumulate=k`` splits every batch into ``k`` chunks and accumulates their gradients before the
    one optimizer step of the batch (each chunk's loss weighted by its share of the batch). The step is
    the whole batch's when no layer mixes the samples of a batch (BatchNorm in eval mode, as in the
    course's recipe), and the activations held for the backward pass are a chunk's: about ``1/k``
    of the memory, for the same amount of computation.
    """
    if accumulate < 1:
        raise ValueError(f"accumulate={accumulate}: give the number of chunks per batch, 1 or more.")
    device = torch.device(device)
    train_mode(model)
    channels_last = device.type == "cuda"
    total_loss, correct, seen = 0.0, 0, 0
    for i, (x, y) in enumerate(loader):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        optimizer.zero_grad(set_to_none=True)
        batch_loss = 0.0
        for xc, yc in zip(x.chunk(accumulate), y.chunk(accumulate)):   # accumulate=1: the batch itself
            with torch.autocast(device.type, enabled=scaler is not None):
                logits = model(xc)
                loss = loss_fn(logits, yc)
            if not torch.isfinite(loss):
                raise _nan_error(loss, i, xc)
            loss = loss * (len(yc) / len(y))   # chunk means, weighted, add up to the batch mean (x 1.0: exact)
            (scaler.scale(loss) if scaler is not None else loss).backward()
            batch_loss += float(loss.detach())
            correct += _correct(logits.detach(), yc)
        if scaler is not None:
            if max_grad_norm:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
        else:
            if max_grad_norm:
                nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total_loss += batch_loss * len(y)
        seen += len(y)
    if seen == 0:
        raise ValueError("The training loader gave no batch: is the dataset empty?")
    return total_loss / seen, correct / seen


@torch.no_grad()
def evaluate_loader(model: nn.Module, loader: Iterable, loss_fn: Callable,
                    device: torch.device | str) -> tuple[float, float]:
    """(mean loss, accuracy) of ``model`` over ``loader``, in eval mode without gradients.

    The model is left in eval mode.
    """
    device = torch.device(device)
    model.eval()
    total_loss, correct, seen = 0.0, 0, 0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            logits = model(x)
            loss = loss_fn(logits, y)
        total_loss += float(loss) * len(y)
        correct += _correct(logits, y)
        seen += len(y)
    if seen == 0:
        raise ValueError("The evaluation loader gave no batch: is the dataset empty?")
    return total_loss / seen, correct / seen


# ------------------------------------------------------------------------------------------------
# Checkpoints
# ------------------------------------------------------------------------------------------------

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


def _rng_state(train_loader) -> dict:
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
             "numpy": torch.from_numpy(keys.astype(np.int64)), "numpy_rest": [int(pos), int(has_gauss), float(cached)]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    generator = getattr(train_loader, "generator", None)
    if generator is not None:
        state["loader"] = generator.get_state()
    return state


def _set_rng_state(state: dict, train_loader) -> None:
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


# ------------------------------------------------------------------------------------------------
# fit
# ------------------------------------------------------------------------------------------------

def fit(model: nn.Module, train_loader: Iterable, val_loader: Iterable | None, optimizer: torch.optim.Optimizer,
        epochs: int, loss_fn: Callable | None = None, scheduler=None, device: torch.device | str | None = None,
        checkpoint: str | Path | None = None, resume: bool = False, patience: int | None = None,
        phase: str = "train", history: History | None = None, progress: bool = True,
        scheduler_per_batch: bool | None = None, max_grad_norm: float | None = None,
        restore_best: bool = False, accumulate: int = 1, settings: dict | None = None) -> History:
    """Train ``model`` for ``epochs`` epochs, validating after each; return the :class:`History`.

    An explicit loop: every epoch calls :func:`train_one_epoch` (which uses ``train_mode(model)``, so
    frozen BatchNorm layers stay frozen) then :func:`evaluate_loader` on ``val_loader`` (if any).

    - ``loss_fn``: default ``nn.CrossEntropyLoss()``.
    - ``scheduler``: OneCycleLR and CyclicLR are stepped after every batch, ReduceLROnPlateau after
      every epoch with the validation loss, any other scheduler after every epoch
      (``scheduler_per_batch`` overrides the rule).
    - ``checkpoint``: a path. The best epoch so far (highest ``val_acc``, or the latest without a
      ``val_loader``) is saved there atomically: weights, optimizer, scheduler, history. The state at
      the end of every epoch also goes to :func:`last_checkpoint_path` (``name.last.pt``).
    - ``resume=True``: continue from ``name.last.pt`` (or ``checkpoint``): model, optimizer,
      scheduler, history, random generators and epoch count. ``epochs`` is the total for the phase,
      so rerunning the same call after an interruption finishes the run, and rerunning it after it
      finished just loads the result. Only a run with the same settings is resumed: every checkpoint
      stores the run's settings (:func:`run_settings`: epochs, model, optimizer groups, scheduler,
      loss, the loaders' transforms, plus ``settings``) and their hash; when they differ, a one-line
      message says what changed and the run trains from scratch (so a changed ``epochs`` never
      restores a scheduler built for another number of steps).
    - ``settings``: extra settings that define the run (a recipe's fields, the model's name...),
      stored and compared with the derived ones.
    - ``patience``: stop when ``val_acc`` has not improved for that many epochs.
    - ``phase``: a name written in each row; pass ``history`` (phase 1's) to append phase 2 to it.
    - On CUDA: mixed precision (``torch.autocast`` + ``GradScaler``) and channels_last memory format.
    - ``restore_best=True``: load the best epoch's weights back into ``model`` at the end.
    - ``accumulate=k``: each batch in ``k`` chunks, gradients accumulated, one step per batch
      (:func:`train_one_epoch`): about ``1/k`` of the activation memory for the same step.

    At the end, ``model`` holds the weights of the last epoch trained (or the best, see above).
    """
    device = torch.device(device) if device is not None else get_device()
    loss_fn = loss_fn if loss_fn is not None else nn.CrossEntropyLoss()
    history = history if history is not None else History()
    cuda = device.type == "cuda"
    model.to(device)
    if cuda:
        model.to(memory_format=torch.channels_last)
    scaler = torch.amp.GradScaler("cuda") if cuda else None
    if scheduler_per_batch is None:
        scheduler_per_batch = isinstance(scheduler, PER_BATCH_SCHEDULERS)

    done, stopped, best_acc, since_best = 0, False, -math.inf, 0
    run = None
    if checkpoint is not None:
        run = run_settings(model, optimizer, epochs, train_loader, val_loader, loss_fn, scheduler, phase=phase,
                           patience=patience, max_grad_norm=max_grad_norm, accumulate=accumulate,
                           **(settings or {}))
    if resume:
        if checkpoint is None:
            raise ValueError("resume=True needs the checkpoint path to resume from.")
        candidates = [p for p in (last_checkpoint_path(checkpoint), Path(checkpoint)) if p.exists()]
        saved = torch.load(candidates[0], map_location="cpu", weights_only=True) if candidates else None
        if saved is not None and saved.get("phase", phase) != phase:
            raise ValueError(f"The checkpoint {candidates[0]} belongs to phase '{saved.get('phase')}', "
                             f"not '{phase}': give each phase its own checkpoint path.")
        if saved is not None and saved.get("settings_hash") != settings_hash(run):
            why = (settings_diff(saved["settings"], run) if isinstance(saved.get("settings"), dict)
                   else "it stores no settings (written by an older version)")
            print(f"Training from scratch: {candidates[0].name} was saved with other settings ({why}).",
                  file=sys.stderr)
            candidates = []
        del saved
        if candidates:
            state = load_checkpoint(candidates[0], model, optimizer, scheduler, map_location=device)
            history.rows[:] = History.from_dict(state["history"]).rows
            done, stopped = int(state.get("phase_epoch", 0)), bool(state.get("stopped", False))
            best_acc, since_best = float(state.get("best_val_acc", -math.inf)), int(state.get("since_best", 0))
            if scaler is not None and "scaler" in state:
                scaler.load_state_dict(state["scaler"])
            if "rng" in state:
                _set_rng_state(state["rng"], train_loader)

    best_state = None
    first_epoch = int(history.rows[-1]["epoch"]) if history.rows else 0

    bar = tqdm(range(done, epochs), desc=phase, disable=not progress, initial=done, total=epochs)
    for e in bar:
        if stopped:
            break
        start = time.perf_counter()
        lr = max(g["lr"] for g in optimizer.param_groups)
        try:
            train_loss, train_acc = train_one_epoch(model, train_loader, optimizer, loss_fn, device,
                                                    scheduler if scheduler_per_batch else None, scaler,
                                                    max_grad_norm, accumulate)
        except FloatingPointError as exc:
            bar.close()
            raise FloatingPointError(f"Phase '{phase}', epoch {e + 1} of {epochs}: {exc}") from None
        if val_loader is not None:
            val_loss, val_acc = evaluate_loader(model, val_loader, loss_fn, device)
        else:
            val_loss = val_acc = math.nan
        if scheduler is not None and not scheduler_per_batch:
            scheduler.step(val_loss) if isinstance(scheduler, ReduceLROnPlateau) else scheduler.step()
        history.append({"phase": phase, "epoch": first_epoch + e - done + 1, "train_loss": train_loss,
                        "train_acc": train_acc, "val_loss": val_loss, "val_acc": val_acc, "lr": lr,
                        "seconds": time.perf_counter() - start})
        improved = math.isnan(val_acc) or val_acc > best_acc
        if improved:
            best_acc, since_best = (val_acc if not math.isnan(val_acc) else best_acc), 0
        else:
            since_best += 1
        stopped = patience is not None and since_best >= patience
        extra = {"phase": phase, "phase_epoch": e + 1, "stopped": stopped, "best_val_acc": best_acc,
                 "since_best": since_best, "settings": run}
        if scaler is not None:
            extra["scaler"] = scaler.state_dict()
        if checkpoint is not None:
            if improved:
                save_checkpoint(checkpoint, model, optimizer, scheduler, history, **extra)
            save_checkpoint(last_checkpoint_path(checkpoint), model, optimizer, scheduler, history,
                            rng=_rng_state(train_loader), **extra)
        elif restore_best and improved:
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        bar.set_postfix(train_loss=f"{train_loss:.3f}", val_acc=f"{val_acc:.3f}")
    bar.close()

    if restore_best:
        if checkpoint is not None and Path(checkpoint).exists():
            load_checkpoint(checkpoint, model, map_location=device)
        elif best_state is not None:
            model.load_state_dict(best_state)
    return history


# ------------------------------------------------------------------------------------------------
# A head on cached features, and the learning-rate range test
# ------------------------------------------------------------------------------------------------

def fit_head_on_features(X_train: torch.Tensor, y_train: torch.Tensor, X_val: torch.Tensor | None = None,
                         y_val: torch.Tensor | None = None, num_classes: int | None = None, epochs: int = 100,
                         lr: float = 1e-2, weight_decay: float = 1e-4, batch_size: int | None = 64,
                         head: nn.Module | None = None, seed: int = 0,
                         label_smoothing: float = 0.0) -> tuple[nn.Module, History]:
    """Train a classification head on stored backbone features (phase 1 without the backbone).

    Each epoch through a frozen backbone recomputes the same features; computing them once
    (:func:`tl_helpers.data.extract_features`) and training the head on the tensors takes about a
    second for 100 epochs. AdamW, mini-batches of ``batch_size`` (``None``: the whole set each step),
    shuffled with ``seed``; ``head`` defaults to ``nn.Linear(features, num_classes)``. The global
    random state is left untouched. Returns the head (in eval mode, on the CPU) and a History with
    ``phase="head"``. Put the head on the model afterwards, e.g. ``replace_head(model, None, head)``.
    """
    X_train, y_train = X_train.float().cpu(), y_train.long().cpu()
    has_val = X_val is not None and y_val is not None
    if num_classes is None:
        num_classes = int(max(y_train.max(), y_val.max() if has_val else 0)) + 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = head if head is not None else nn.Linear(X_train.shape[1], num_classes)
        generator = torch.Generator().manual_seed(seed)
        optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
        loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        eval_loss = nn.CrossEntropyLoss()
        history = History()
        n = len(X_train)
        step = batch_size or n
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            head.train()
            order = torch.randperm(n, generator=generator)
            total, correct = 0.0, 0
            for i in range(0, n, step):
                idx = order[i:i + step]
                logits = head(X_train[idx])
                loss = loss_fn(logits, y_train[idx])
                if not torch.isfinite(loss):
                    raise _nan_error(loss, i // step, X_train[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(idx)
                correct += _correct(logits.detach(), y_train[idx])
            row = {"phase": "head", "epoch": epoch, "train_loss": total / n, "train_acc": correct / n,
                   "val_loss": math.nan, "val_acc": math.nan, "lr": lr}
            if has_val:
                head.eval()
                with torch.no_grad():
                    logits = head(X_val.float().cpu())
                    row["val_loss"] = float(eval_loss(logits, y_val.long().cpu()))
                    row["val_acc"] = _correct(logits, y_val.long().cpu()) / len(y_val)
            row["seconds"] = time.perf_counter() - start
            history.append(row)
    return head.eval(), history


def lr_range_test(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer | Callable,
                  loss_fn: Callable | None = None, start_lr: float = 1e-6, end_lr: float = 1.0,
                  steps: int = 50, device: torch.device | str | None = None, beta: float = 0.9,
                  diverge: float = 4.0) -> tuple[list[float], list[float]]:
    """The learning-rate range test (Smith 2015; fastai's ``lr_find``): train a few batches with an
    exponentially growing learning rate and record the loss.

    ``optimizer`` is an optimizer over the model's parameters, or a factory ``params -> optimizer``;
    every parameter group gets the same learning rate at each step. The test stops early once the
    smoothed loss exceeds ``diverge`` times its minimum (or is NaN). Losses are smoothed with an
    exponential moving average (``beta``, bias-corrected). Afterwards the model's weights, buffers
    (BatchNorm statistics), train/eval modes and the optimizer's state are restored, and so are the
    random generators (torch, CUDA, NumPy, Python's ``random`` and the loader's own generator), so the
    test changes neither the model nor the training that follows it. Returns (learning rates, smoothed
    losses).
    """
    device = torch.device(device) if device is not None else get_device()
    loss_fn = loss_fn if loss_fn is not None else nn.CrossEntropyLoss()
    model.to(device)
    saved_model = copy.deepcopy(model.state_dict())
    saved_modes = {m: m.training for m in model.modules()}
    if isinstance(optimizer, torch.optim.Optimizer):
        saved_opt = copy.deepcopy(optimizer.state_dict())
    else:
        optimizer, saved_opt = optimizer([p for p in model.parameters() if p.requires_grad]), None
    lrs, losses = [], []
    avg, best = 0.0, math.inf
    rng = _rng_state(loader)
    python_rng = random.getstate()
    train_mode(model)
    try:
        batches = iter(loader)
        for i in range(steps):
            lr = start_lr * (end_lr / start_lr) ** (i / max(steps - 1, 1))
            for g in optimizer.param_groups:
                g["lr"] = lr
            try:
                x, y = next(batches)
            except StopIteration:
                batches = iter(loader)
                x, y = next(batches)
            x, y = x.to(device), y.to(device)
            loss = loss_fn(model(x), y)
            if not torch.isfinite(loss):
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            avg = beta * avg + (1 - beta) * float(loss.detach())
            smooth = avg / (1 - beta ** (i + 1))
            lrs.append(lr)
            losses.append(smooth)
            best = min(best, smooth)
            if smooth > diverge * best:
                break
    finally:
        model.load_state_dict(saved_model)
        for m, mode in saved_modes.items():
            m.training = mode
        if saved_opt is not None:
            optimizer.load_state_dict(saved_opt)
        _set_rng_state(rng, loader)
        random.setstate(python_rng)
    return lrs, losses


def suggest_lr(lrs: list[float], losses: list[float], method: str = "steepest") -> float:
    """A learning rate read off a range test.

    ``"steepest"`` (default): where the smoothed loss falls fastest against log(lr), looking only
    at the rates *below* the one of the lowest loss (fastai's ``valley``-style reading, robust on short
    tests): the suggestion is always smaller than the minimum's rate. ``"min10"``: the learning rate of
    the lowest loss divided by 10 (the classic rule of thumb).

    >>> lrs = [1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    >>> losses = [2.0, 1.9, 1.4, 0.9, 0.8, 3.0]
    >>> suggest_lr(lrs, losses), suggest_lr(lrs, losses, "min10")
    (0.001, 0.01)
    >>> suggest_lr([1e-4, 1e-3, 1e-2, 1e-1], [2.0, 1.9, 1.0, 3.0])   # never the minimum's rate (1e-2)
    0.001
    """
    if len(lrs) != len(losses) or len(lrs) < 2:
        raise ValueError("suggest_lr() needs at least two (lr, loss) points: run a longer lr_range_test.")
    lo = int(np.argmin(losses))
    if method == "min10":
        return float(lrs[lo]) / 10
    if method != "steepest":
        raise ValueError(f"method must be 'steepest' or 'min10', not {method!r}")
    if lo < 1:
        raise ValueError(f"The loss is lowest at the first rate tried ({lrs[0]:.1e}), so no rate lies below its "
                         "minimum: run lr_range_test again with a smaller start_lr (e.g. 100x smaller).")
    slopes = np.gradient(np.asarray(losses[:lo + 1], float), np.log10(np.asarray(lrs[:lo + 1], float)))
    return float(lrs[int(np.argmin(slopes[:lo]))])   # slopes[lo] is the minimum itself: never suggested


# ------------------------------------------------------------------------------------------------
# The course's two-phase recipe
# ------------------------------------------------------------------------------------------------

@dataclass
class Recipe:
    """Every setting of the course's two-phase fine-tuning recipe, in one place.

    Phase 1 (``head``): a linear head trained on cached pooled features of the frozen backbone
    (AdamW, ``head_epochs`` passes, label smoothing). It is deliberately trained only *briefly*, so that
    phase 2 still gets gradients large enough to adapt the features; ``benchmarks/selection.json`` compares
    it with a head trained to convergence (100 epochs at 1e-2) on the validation parts of Clipart-8 splits
    5-9, never on the test parts that the benchmark reports. Phase 2 in two steps, BatchNorm in
    eval mode throughout (the pretrained statistics are kept): ``top`` trains the last ``top_stages``
    stages of :func:`tl_helpers.models.model_blocks` (the classifier, the head convolution and the
    last blocks) for ``top_epochs``; ``all`` trains every layer for ``all_epochs``, the head at
    ``finetune_head_lr`` and the backbone at ``backbone_lr`` (times ``lr_decay`` per stage towards the
    input when it is set). Each step uses AdamW with a one-cycle schedule. The model kept is the last
    epoch's (``restore_best=True``: the best validation epoch's; on 76 validation images that choice
    is mostly noise). Every batch of phase 2 is processed in ``accumulate`` chunks whose gradients add
    up to the batch's (BatchNorm is in eval mode, so this is the same step): with batches of 32 at
    128 px, two chunks keep chapter 05 inside 2 GB of memory.

    >>> Recipe().finetune_epochs
    7
    """

    head_epochs: int = 10
    head_lr: float = 1e-3
    head_weight_decay: float = 1e-4
    top_stages: int = 6
    top_epochs: int = 1
    all_epochs: int = 6
    finetune_head_lr: float = 1e-3
    backbone_lr: float = 2e-4
    lr_decay: float | None = None
    weight_decay: float = 0.01
    label_smoothing: float = 0.1
    restore_best: bool = False
    accumulate: int = 2
    seed: int = 0

    @property
    def finetune_epochs(self) -> int:
        return self.top_epochs + self.all_epochs


def one_cycle(optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int,
              pct_start: float = 0.3) -> OneCycleLR:
    """A one-cycle schedule peaking at each parameter group's current learning rate.

    >>> opt = torch.optim.SGD([{"params": [nn.Parameter(torch.zeros(1))], "lr": 0.1}])
    >>> sched = one_cycle(opt, epochs=2, steps_per_epoch=5)
    >>> round(opt.param_groups[0]["lr"], 4)  # starts at max_lr / 25
    0.004
    """
    return OneCycleLR(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups],
                      epochs=epochs, steps_per_epoch=steps_per_epoch, pct_start=pct_start)


def _tensors_hash(tensors) -> str:
    """A short hash of some tensors' shapes and values (the cached features phase 1 trains on)."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def two_phase(model: nn.Module, train_loader: Iterable, val_loader: Iterable,
              features: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
              recipe: Recipe | None = None, checkpoint: str | Path | None = None,
              device: torch.device | str | None = None, progress: bool = True,
              settings: dict | None = None) -> tuple[History, History]:
    """Fine-tune ``model`` with the course's recipe (:class:`Recipe`); return (phase 1, phase 2) histories.

    ``features`` are ``(X_train, y_train, X_val, y_val)``: pooled features of the frozen backbone
    for the training and validation images (eval preprocessing), from
    :func:`tl_helpers.data.extract_features`. Phase 1 trains a linear head on them
    (:func:`fit_head_on_features`) and puts it on the model in place of the old classifier; phase 2
    trains through the backbone on ``train_loader`` (augmented images), first the top stages, then
    all of them. With ``checkpoint`` each step of phase 2 is checkpointed by :func:`fit`
    (``name.top.pt``, then ``checkpoint``), and rerunning with the same path resumes or reloads
    instead of training again; the checkpoints store the recipe's fields, a hash of ``features``, the
    loaders' transforms (image size) and ``settings`` (e.g. the model's name), and a run with other
    settings trains from scratch (see :func:`fit`). At the end the model holds the weights the recipe keeps (the last
    epoch, or the best validation epoch with ``recipe.restore_best``), in eval mode, and so does
    ``checkpoint``.

    The same recipe, written out cell by cell, is chapter 05.
    """
    # Imported here: tl_helpers.models imports this module's neighbours, not the other way round.
    from tl_helpers.models import freeze, param_groups, replace_head, set_bn_eval, unfreeze

    recipe = recipe or Recipe()
    X_train, y_train, X_val, y_val = features
    head, head_history = fit_head_on_features(
        X_train, y_train, X_val, y_val, epochs=recipe.head_epochs, lr=recipe.head_lr,
        weight_decay=recipe.head_weight_decay, seed=recipe.seed, label_smoothing=recipe.label_smoothing)
    replace_head(model, None, head=head)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    steps = [("top", recipe.top_stages, recipe.top_epochs), ("all", None, recipe.all_epochs)]
    history = History()
    for phase, stages, epochs in steps:
        if epochs <= 0:
            continue
        freeze(model)
        unfreeze(model, blocks=stages)
        set_bn_eval(model)
        groups = param_groups(model, head_lr=recipe.finetune_head_lr, backbone_lr=recipe.backbone_lr,
                              decay=recipe.lr_decay, weight_decay=recipe.weight_decay)
        optimizer = torch.optim.AdamW(groups)
        scheduler = one_cycle(optimizer, epochs, len(train_loader))
        path = None
        if checkpoint is not None:
            path = Path(checkpoint) if phase == steps[-1][0] else Path(checkpoint).with_suffix(f".{phase}.pt")
        run = None
        if path is not None:
            run = {"recipe": asdict(recipe), "features": _tensors_hash(features), **(settings or {})}
        torch.manual_seed(recipe.seed)
        history = fit(model, train_loader, val_loader, optimizer, epochs, loss_fn=loss_fn, scheduler=scheduler,
                      device=device, checkpoint=path, resume=path is not None, phase=phase, history=history,
                      progress=progress, restore_best=recipe.restore_best, accumulate=recipe.accumulate,
                      settings=run)
    if checkpoint is not None and not recipe.restore_best:
        keep_last_epoch(checkpoint)
    model.eval()
    return head_history, history
