"""The course's fine-tuning recipe: its settings (:class:`Recipe`), a one-cycle schedule, phase 1 on cached
features (:func:`fit_head_on_features`) and both phases in one call (:func:`two_phase`).

Chapter 05 writes the recipe out cell by cell before :func:`two_phase` runs it in one call.

>>> from tl_helpers.recipe import Recipe
>>> Recipe().top_stages, Recipe().finetune_epochs
(6, 7)
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.optim.lr_scheduler import OneCycleLR

from tl_helpers.checkpoints import keep_last_epoch, save_checkpoint
from tl_helpers.runtime import get_device
from tl_helpers.surgery import freeze, param_groups, replace_head, set_bn_eval, unfreeze
from tl_helpers.train import History, _correct, _nan_error, fit


def fit_head_on_features(X_train: torch.Tensor, y_train: torch.Tensor, X_val: torch.Tensor | None = None,
                         y_val: torch.Tensor | None = None, num_classes: int | None = None, epochs: int = 100,
                         lr: float = 1e-2, weight_decay: float = 1e-4, batch_size: int | None = 64,
                         head: nn.Module | None = None, seed: int = 0, label_smoothing: float = 0.0,
                         class_weights: torch.Tensor | None = None) -> tuple[nn.Module, History]:
    """Train a classification head on stored backbone features (phase 1 without the backbone).

    Each epoch through a frozen backbone recomputes the same features; computing them once
    (:func:`tl_helpers.data.extract_features`) and training the head on the tensors takes about a
    second for 100 epochs. AdamW, mini-batches of ``batch_size`` (``None``: the whole set each step),
    shuffled with ``seed``; ``head`` defaults to ``nn.Linear(features, num_classes)``. The global
    random state is left untouched. Returns the head (in eval mode, on the CPU) and a History with
    ``phase="head"``. Put the head on the model afterwards, e.g. ``replace_head(model, None, head)``.
    ``val_loss`` is the training loss (with ``label_smoothing``) on the validation features, as ``fit``
    computes it, so the two phases' validation losses can share one curve. ``class_weights`` (one per
    class) weigh the loss, e.g. inversely to the class sizes for an imbalanced folder.
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
        loss_fn = nn.CrossEntropyLoss(weight=class_weights, label_smoothing=label_smoothing)
        eval_loss = loss_fn   # the validation loss is the training loss, as in fit(): one curve across phases
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


@dataclass
class Recipe:
    """Every setting of the course's two-phase fine-tuning recipe, in one place.

    Phase 1 (``head``): a linear head trained on cached pooled features of the frozen backbone (AdamW,
    ``head_epochs`` passes, label smoothing), only briefly: it gives phase 2 a sensible starting head. Phase 2 in
    two steps, BatchNorm in eval mode throughout (the pretrained statistics are kept): ``top`` trains the last
    ``top_stages`` stages of :func:`tl_helpers.surgery.model_blocks` (the classifier, the head convolution and the
    last blocks) for ``top_epochs``; ``all`` trains every layer for ``all_epochs``, the head at
    ``finetune_head_lr`` and the backbone at ``backbone_lr`` (times ``lr_decay`` per stage towards the input when
    it is set). Each step uses AdamW with a one-cycle schedule. ``restore_best=True`` keeps each step's epoch with
    the best validation accuracy (with one top epoch: the best epoch of ``all``), ``False`` its last epoch.

    The defaults were chosen on the validation part of the notebooks' fixed Clipart-8 split, among the grid that
    ``make bench`` searches inside each of its folds (``benchmarks/recipe_selection.json``; no test accuracy was
    computed): the settings of commit c748b77 kept at their best validation epoch. That selection ran before the
    data set's last regrouping (498 images), so some of its validation images are in today's test part; rerun
    ``python -m benchmarks.run --select-chapter`` to redo it on the current split. Every batch of phase 2 is
    processed in ``accumulate`` chunks whose gradients add up to the batch's (BatchNorm is in eval mode, so no
    layer mixes the images; dropout and drop-connect draw other masks per chunk, so the step is the same in
    distribution): with batches of 32 at 128 px, two chunks keep chapter 05 inside 2 GB of memory.

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
    restore_best: bool = True
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


def finetune_phases(recipe: Recipe) -> list[tuple[str, int | None, int]]:
    """The phases after the head's, as ``(name, stages to train, epochs)``, those with no epochs left out.

    >>> finetune_phases(Recipe(top_stages=6, top_epochs=1, all_epochs=6))
    [('top', 6, 1), ('all', None, 6)]
    """
    steps = [("top", recipe.top_stages, recipe.top_epochs), ("all", None, recipe.all_epochs)]
    return [step for step in steps if step[2] > 0]


def prepare_phase(model: nn.Module, recipe: Recipe, stages: int | None, epochs: int,
                  steps_per_epoch: int) -> tuple[torch.optim.Optimizer, OneCycleLR]:
    """Set ``model`` up for one fine-tuning phase: everything frozen but the last ``stages`` stages (``None``:
    nothing frozen), BatchNorm in eval mode, AdamW over :func:`param_groups` at the recipe's rates and a
    one-cycle schedule. Returns the optimiser and scheduler (what :func:`two_phase` and the distributed
    recipe share).

    >>> from tl_helpers.models import load_pretrained
    >>> model = replace_head(load_pretrained().model, 8)
    >>> optimizer, scheduler = prepare_phase(model, Recipe(), stages=None, epochs=1, steps_per_epoch=2)
    >>> all(p.requires_grad for p in model.parameters()), model._bn0.training
    (True, False)
    """
    freeze(model)
    unfreeze(model, last=stages)
    set_bn_eval(model)
    groups = param_groups(model, head_lr=recipe.finetune_head_lr, backbone_lr=recipe.backbone_lr,
                          decay=recipe.lr_decay, weight_decay=recipe.weight_decay)
    optimizer = torch.optim.AdamW(groups)
    return optimizer, one_cycle(optimizer, epochs, steps_per_epoch)


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
              settings: dict | None = None, class_weights: torch.Tensor | None = None) -> tuple[History, History]:
    """Fine-tune ``model`` with the course's recipe (:class:`Recipe`); return (phase 1, phase 2) histories.

    ``features`` are ``(X_train, y_train, X_val, y_val)``: pooled features of the frozen backbone
    for the training and validation images (eval preprocessing), from
    :func:`tl_helpers.data.extract_features`. Phase 1 trains a linear head on them
    (:func:`fit_head_on_features`) and puts it on the model in place of the old classifier; phase 2
    trains through the backbone on ``train_loader`` (augmented images), first the top stages, then
    all of them. With ``checkpoint`` each step of phase 2 is checkpointed by :func:`fit`
    (``name.top.pt``, then ``checkpoint``; the last phase run always writes ``checkpoint``), and rerunning with the same path resumes or reloads
    instead of training again; the checkpoints store the recipe's fields, a hash of ``features``, the
    loaders' transforms (image size) and ``settings`` (e.g. the model's name), and a run with other
    settings trains from scratch (see :func:`fit`). At the end the model holds the weights the recipe keeps (the last
    epoch, or the best validation epoch with ``recipe.restore_best``), in eval mode, and so does
    ``checkpoint``. ``class_weights`` (one per class) weigh the loss of both phases (and are part of the
    checkpoints' settings).

    The same recipe, written out cell by cell, is chapter 05.
    """
    recipe = recipe or Recipe()
    X_train, y_train, X_val, y_val = features
    head, head_history = fit_head_on_features(
        X_train, y_train, X_val, y_val, epochs=recipe.head_epochs, lr=recipe.head_lr,
        weight_decay=recipe.head_weight_decay, seed=recipe.seed, label_smoothing=recipe.label_smoothing,
        class_weights=class_weights)
    replace_head(model, None, head=head)
    loss_fn = nn.CrossEntropyLoss(weight=class_weights, label_smoothing=recipe.label_smoothing).to(
        torch.device(device) if device is not None else get_device())   # the weights live where the logits are
    history = History()
    phases = finetune_phases(recipe)
    run = None
    if checkpoint is not None:
        run = {"recipe": asdict(recipe), "features": _tensors_hash(features), **(settings or {})}
        if class_weights is not None:
            run["class_weights"] = [round(float(w), 6) for w in class_weights]
    for i, (phase, stages, epochs) in enumerate(phases):
        optimizer, scheduler = prepare_phase(model, recipe, stages, epochs, len(train_loader))
        path = None
        if checkpoint is not None:   # the last phase writes `checkpoint` itself, earlier ones `name.phase.pt`
            path = Path(checkpoint) if i == len(phases) - 1 else Path(checkpoint).with_suffix(f".{phase}.pt")
        torch.manual_seed(recipe.seed)
        history = fit(model, train_loader, val_loader, optimizer, epochs, loss_fn=loss_fn, scheduler=scheduler,
                      device=device, checkpoint=path, resume=path is not None, phase=phase, history=history,
                      progress=progress, restore_best=recipe.restore_best, accumulate=recipe.accumulate,
                      settings=run)
    if checkpoint is not None and not phases:      # head only: nothing went through fit, save what we have
        save_checkpoint(checkpoint, model, history=history, settings={**run, "phase": "head"})
    elif checkpoint is not None and not recipe.restore_best:
        keep_last_epoch(checkpoint)
    model.eval()
    return head_history, history
