"""Training loops in plain PyTorch: one epoch, evaluation, and ``fit`` (the loop plus progress, checkpoints,
resume and early stopping), with the :class:`History` of what happened and ``format_table`` to print it.

A phase of fine-tuning (``tl_helpers.recipe`` holds the course's whole recipe)::

    freeze(model); unfreeze(model, last=3)                     # tl_helpers.surgery
    optimizer = torch.optim.AdamW(param_groups(model, head_lr=1e-3, backbone_lr=1e-4))
    history = fit(model, train_loader, val_loader, optimizer, epochs=5, phase="finetune",
                  checkpoint="checkpoints/finetune.pt", resume=True)

>>> from tl_helpers.train import History
>>> History([{"phase": "head", "epoch": 1, "val_acc": 0.75}]).best()["val_acc"]
0.75
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.optim.lr_scheduler import CyclicLR, OneCycleLR, ReduceLROnPlateau
from tqdm.auto import tqdm

from tl_helpers.checkpoints import (last_checkpoint_path, load_checkpoint, resumable, rng_state, run_settings,
                                    save_checkpoint, set_rng_state)
from tl_helpers.runtime import get_device
from tl_helpers.surgery import train_mode

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
        """The history as a fixed-width text table (seconds left out, so the text is stable). Learning rates
        are printed in scientific notation: a one-cycle rate of 8e-6 rounded to 3 digits would read 0.

        >>> print(History([{"epoch": 1, "val_acc": 0.6711, "lr": 8e-06}]).table())
        epoch  val_acc       lr
            1    0.671  8.0e-06
        """
        def cell(k, v):
            if k == "lr" and isinstance(v, float):
                return f"{v:.1e}"
            return round(v, digits) if isinstance(v, float) else v

        rows = [{k: cell(k, v) for k, v in r.items() if k != "seconds"} for r in self.rows]
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

    The model is put in training mode with :func:`tl_helpers.surgery.train_mode`, so frozen BatchNorm
    layers stay in eval mode. ``scheduler`` is stepped after every batch (pass it only for per-batch
    schedulers such as OneCycleLR). With a ``scaler`` the forward pass runs under ``torch.autocast``
    (mixed precision, CUDA). Raises FloatingPointError as soon as the loss is NaN or infinite.

    ``accumulate=k`` splits every batch into ``k`` chunks and accumulates their gradients before the
    one optimizer step of the batch (each chunk's loss weighted by its share of the batch). The step is
    the whole batch's when no layer mixes the samples of a batch (BatchNorm in eval mode, as in the
    course's recipe) and nothing random runs; with dropout or drop-connect in training mode each chunk
    draws its own masks, so the step is the same only in distribution (a run with the same ``k`` is
    repeatable). The activations held for the backward pass are a chunk's: about ``1/k`` of the memory,
    for the same amount of computation. A DistributedDataParallel model accumulates the first ``k - 1``
    chunks inside its ``no_sync()``, so the gradients are averaged over the processes once per step, not
    once per chunk.
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
        chunks = list(zip(x.chunk(accumulate), y.chunk(accumulate)))   # accumulate=1: the batch itself
        for k, (xc, yc) in enumerate(chunks):
            # under DDP only the last chunk's backward averages the gradients over the processes (no_sync)
            quiet = model.no_sync() if k < len(chunks) - 1 and hasattr(model, "no_sync") else contextlib.nullcontext()
            with quiet:
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
      stores the run's settings (:func:`tl_helpers.checkpoints.run_settings`: epochs, model, optimizer groups, scheduler,
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
        source = resumable(checkpoint, run, phase)
        if source is not None:
            state = load_checkpoint(source, model, optimizer, scheduler, map_location=device)
            history.rows[:] = History.from_dict(state["history"]).rows
            done, stopped = int(state.get("phase_epoch", 0)), bool(state.get("stopped", False))
            best_acc, since_best = float(state.get("best_val_acc", -math.inf)), int(state.get("since_best", 0))
            if scaler is not None and "scaler" in state:
                scaler.load_state_dict(state["scaler"])
            if "rng" in state:
                set_rng_state(state["rng"], train_loader)

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
                            rng=rng_state(train_loader), **extra)
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


def format_table(rows: list[dict], total: bool = True) -> str:
    """Rows of dicts as a fixed-width text table (numbers right-aligned with thousands separators).

    With ``total=True`` a last line sums the numeric columns.

    >>> print(format_table([{"name": "a", "params": 1200}, {"name": "b", "params": 3}]))
    name  params
    a      1,200
    b          3
    total  1,203
    """
    if not rows:
        return "(empty table)"
    columns = list(rows[0])
    numeric = [c for c in columns if all(isinstance(r.get(c), (int, float)) for r in rows)]
    body = [dict(r) for r in rows]
    if total and numeric:
        body.append({c: sum(r[c] for r in rows) for c in numeric} | {columns[0]: "total"})

    def cell(value) -> str:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return str(value)
        return f"{value:,}" if isinstance(value, int) else f"{value:,.4g}"

    text = [[cell(r.get(c, "")) for c in columns] for r in body]
    widths = [max(len(c), *(len(t[i]) for t in text)) for i, c in enumerate(columns)]
    lines = []
    for values in [columns] + text:
        parts = [v.rjust(w) if c in numeric else v.ljust(w) for v, w, c in zip(values, widths, columns)]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)
