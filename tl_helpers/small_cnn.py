"""A small CNN, the transfer of its first k layers, and one training rule for every arm of a comparison.

Chapter 08 and ``benchmarks/fashion.py`` both run their experiments with this module, so a number in the
benchmark and the same number in the chapter come from the same code. The pieces:

- :func:`make_cnn`: three conv blocks, a hidden layer ``fc`` and a ``head`` (25,034 parameters at the defaults);
- :func:`transfer`: a fresh, seeded CNN whose first ``k`` layers are copies of a source's, frozen or not;
- :class:`Budget` and :func:`train`: Adam on shuffled batches, validation accuracy checked every
  ``check_every`` steps (at least an epoch apart), stop after ``patience`` checks without improvement, keep
  the best check's weights.
  The same rule for every arm, so each trains to convergence on validation, however fast it gets there;
- :func:`predict` and :func:`accuracy`;
- :func:`probe_accuracy`: the frozen-feature arm with a converged classifier, a logistic regression whose C
  is chosen on validation;
- :class:`Target`, :class:`Job`, :func:`run_jobs`: many runs (arms x seeds) at once, over a thread pool.

>>> import torch
>>> from tl_helpers.small_cnn import LAYERS, make_cnn, transfer
>>> source = make_cnn()
>>> model = transfer(source, k=2, freeze=True, seed=0)
>>> [name for name in LAYERS if not any(p.requires_grad for p in getattr(model, name).parameters())]
['conv1', 'conv2']
>>> torch.equal(model.conv1[0].weight, source.conv1[0].weight), model.conv1[0].weight is source.conv1[0].weight
(True, False)
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tl_helpers.regularise import l2_sp_penalty, source_snapshot, weight_distance
from tl_helpers.runtime import seed_everything

LAYERS = ("conv1", "conv2", "conv3", "fc")
"""The layers that can transfer, from the input up; the ``head`` after them is always new."""


def make_cnn(num_classes: int = 10, width: int = 8, hidden: int = 64) -> nn.Sequential:
    """Three conv blocks (28 -> 14 -> 7 -> 3 pixels, ``width``, 2x and 4x channels), ``fc`` and a linear ``head``.

    No BatchNorm and no dropout: "frozen" simply means ``requires_grad=False``, and a frozen layer computes
    the same thing in training and evaluation.

    >>> sum(p.numel() for p in make_cnn().parameters())
    25034
    >>> make_cnn()(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    """
    def block(c_in: int, c_out: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
    return nn.Sequential(OrderedDict(
        conv1=block(1, width), conv2=block(width, 2 * width), conv3=block(2 * width, 4 * width),
        fc=nn.Sequential(nn.Flatten(), nn.Linear(4 * width * 3 * 3, hidden), nn.ReLU()),
        head=nn.Linear(hidden, num_classes)))


def transfer(source: nn.Module | None, k: int, freeze: bool, seed: int, **cnn_args) -> nn.Sequential:
    """A fresh CNN (initialised with ``seed``) whose first ``k`` layers of :data:`LAYERS` hold copies of the
    source's weights (``load_state_dict``: copies, not shared tensors), frozen when ``freeze``.

    ``k = 0`` is training from scratch. ``source=None`` with ``k > 0`` copies nothing: the first ``k`` layers
    keep their own random initialisation (frozen, when ``freeze``: random features, the no-source control of
    a frozen transfer). ``cnn_args`` go to :func:`make_cnn`.

    >>> scratch = transfer(None, 0, False, seed=3)
    >>> all(p.requires_grad for p in scratch.parameters())
    True
    """
    if not 0 <= k <= len(LAYERS):
        raise ValueError(f"k={k}: copy between 0 and {len(LAYERS)} layers ({', '.join(LAYERS)}); the head never transfers.")
    seed_everything(seed)
    model = make_cnn(**cnn_args)
    for name in LAYERS[:k]:
        if source is not None:
            getattr(model, name).load_state_dict(getattr(source, name).state_dict())
        if freeze:
            getattr(model, name).requires_grad_(False)
    return model


@dataclass(frozen=True)
class Budget:
    """The training rule, the same for every arm: Adam at ``lr`` on batches of ``batch_size``; validation
    accuracy every ``check_every`` steps, or once an epoch when an epoch is longer (with thousands of labelled
    images, 25 steps would not even show every image once between two checks); stop after ``patience`` checks without a new best, or at
    ``max_steps``; the weights of the best check are kept. ``patience=None`` (or no validation data):
    exactly ``max_steps`` steps, last weights kept.

    The learning rate was chosen on validation (``python -m benchmarks.fashion --select``).
    """
    lr: float = 2e-3
    batch_size: int = 32
    check_every: int = 25
    patience: int | None = 4
    max_steps: int = 20_000


@dataclass
class TrainLog:
    """What :func:`train` did: steps taken, the best check (step and validation accuracy), every check's
    validation accuracy (``curve``: (step, accuracy) pairs) and whether it stopped at ``max_steps``."""
    steps: int
    best_step: int
    best_val: float
    curve: list[tuple[int, float]] = field(default_factory=list)
    hit_cap: bool = False


def frozen_prefix(model: nn.Sequential) -> int:
    """How many leading children of ``model`` have parameters, none of them trainable (a frozen prefix).

    >>> net = make_cnn(); _ = net.conv1.requires_grad_(False)
    >>> frozen_prefix(net), frozen_prefix(make_cnn())
    (1, 0)
    """
    count = 0
    for child in model.children():
        params = list(child.parameters())
        if not params or any(p.requires_grad for p in params):
            break
        count += 1
    return count


@torch.no_grad()
def _outputs(module: nn.Module, x: torch.Tensor, chunk: int = 1000) -> torch.Tensor:
    module.eval()
    if x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return torch.cat([module(c) for c in x.split(chunk)])


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, chunk: int = 1000) -> torch.Tensor:
    """Predicted classes (int64) of ``model`` in evaluation mode, ``chunk`` images at a time.

    >>> predict(make_cnn(), torch.zeros(3, 1, 28, 28)).shape
    torch.Size([3])
    """
    return _outputs(model, x, chunk).argmax(1)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of ``x`` that ``model`` classifies as ``y``.

    >>> 0.0 <= accuracy(make_cnn(), torch.zeros(4, 1, 28, 28), torch.arange(4)) <= 1.0
    True
    """
    return float((predict(model, x) == y).float().mean())


def train(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, x_val: torch.Tensor | None = None,
          y_val: torch.Tensor | None = None, budget: Budget = Budget(), seed: int = 0,
          penalty: Callable[[nn.Module], torch.Tensor] | None = None) -> TrainLog:
    """Train ``model`` on (x, y) under ``budget``; at the end it holds the best check's weights.

    Each step takes the next ``batch_size`` images of a shuffled order (a new order, drawn with ``seed``,
    each time the images run out) and adds ``penalty(model)`` to the loss if given. Leading frozen layers
    (:func:`frozen_prefix`) compute the same thing at every step, so their outputs are computed once,
    for ``x`` and ``x_val``, and only the layers above them run in the loop: same result, far cheaper.

    >>> x, y = torch.randn(64, 1, 28, 28), torch.arange(64) % 10
    >>> log = train(make_cnn(), x, y, x, y, Budget(check_every=5, patience=2, max_steps=40), seed=0)
    >>> log.steps <= 40 and log.best_step % 5 == 0 and 0.0 <= log.best_val <= 1.0
    True
    """
    k = frozen_prefix(model)
    prefix, net = model[:k], model[k:]
    model.to(memory_format=torch.channels_last)
    checks = x_val is not None and budget.patience is not None
    x = _outputs(prefix, x) if k else x.contiguous(memory_format=torch.channels_last)
    if checks:
        x_val = _outputs(prefix, x_val) if k else x_val.contiguous(memory_format=torch.channels_last)
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=budget.lr)
    g = torch.Generator().manual_seed(seed)
    batch = min(budget.batch_size, len(y))
    order, pos = torch.randperm(len(y), generator=g), 0
    log = TrainLog(steps=0, best_step=0, best_val=-math.inf)
    best_state, since_best = None, 0
    every = max(budget.check_every, math.ceil(len(y) / batch))      # at least one epoch between two checks
    while log.steps < budget.max_steps:
        net.train()
        if pos + batch > len(y):
            order, pos = torch.randperm(len(y), generator=g), 0
        idx = order[pos:pos + batch]
        pos += batch
        loss = F.cross_entropy(net(x[idx]), y[idx])
        if penalty is not None:
            loss = loss + penalty(model)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        log.steps += 1
        if checks and log.steps % every == 0:
            val = float((_outputs(net, x_val).argmax(1) == y_val).float().mean())
            log.curve.append((log.steps, val))
            if val > log.best_val:
                log.best_step, log.best_val, since_best = log.steps, val, 0
                best_state = copy.deepcopy(net.state_dict())
            else:
                since_best += 1
                if since_best >= budget.patience:
                    break
    log.hit_cap = log.steps >= budget.max_steps
    if best_state is not None:
        net.load_state_dict(best_state)
    else:
        log.best_step = log.steps
    return log


def probe_accuracy(features: dict[str, np.ndarray], labels: dict[str, np.ndarray],
                   Cs: Sequence[float] = (0.01, 0.1, 1.0, 10.0)) -> dict:
    """A linear probe trained to convergence: standardised features, L2 logistic regression (L-BFGS), its C
    chosen by accuracy on ``"val"``; returns the chosen C and the accuracy on ``"val"`` and ``"test"``.

    ``features`` and ``labels`` map ``"train"``, ``"val"`` and ``"test"`` to arrays (features n x d).

    >>> rng = np.random.default_rng(0)
    >>> parts = {p: rng.normal(size=(40, 3)) + np.repeat([[0, 0, 0], [3, 3, 3]], 20, axis=0) for p in ("train", "val", "test")}
    >>> out = probe_accuracy(parts, {p: np.repeat([0, 1], 20) for p in parts})
    >>> out["test"] > 0.9
    True
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    scaler = StandardScaler().fit(features["train"])
    scaled = {part: scaler.transform(f) for part, f in features.items()}
    best = None
    with threadpool_limits(1):          # one BLAS thread: on problems this small more threads only slow it down
        for C in Cs:
            clf = LogisticRegression(C=C, max_iter=5000).fit(scaled["train"], labels["train"])
            val = float(clf.score(scaled["val"], labels["val"]))
            if best is None or val > best[1]:
                best = (C, val, clf)
        C, val, clf = best
        return {"C": C, "val": val, "test": float(clf.score(scaled["test"], labels["test"]))}


@dataclass
class Target:
    """The target task as tensors: the labelled ``pool`` that training images are drawn from, the
    ``val`` part (every choice, including when to stop) and the ``test`` part (only measured)."""
    x_pool: torch.Tensor
    y_pool: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


@dataclass
class Job:
    """One run: ``k`` layers of ``source`` copied (frozen or fine-tuned), seeded with ``seed``, trained on
    the pool images ``train_idx``; ``penalty`` is None, ``"l2-sp"`` (pull the copied weights towards the
    source's) or ``"weight decay"`` (towards zero), with strength ``alpha`` (and ``beta`` on the new layers)."""
    source: nn.Module | None
    k: int
    freeze: bool
    seed: int
    train_idx: np.ndarray
    penalty: str | None = None
    alpha: float = 0.0
    beta: float = 0.0


@dataclass
class Run:
    """The outcome of a :class:`Job`: validation and test accuracy, the test predictions, the training log,
    the distance of the copied weights from the source's after training (``nan`` when nothing was copied),
    and the trained model."""
    val: float
    test: float
    predictions: np.ndarray
    log: TrainLog
    distance: float
    model: nn.Module


def _penalty(job: Job, model: nn.Module, copied: dict[str, torch.Tensor]):
    if job.penalty is None:
        return None
    if job.penalty == "l2-sp":
        reference = copied
    elif job.penalty == "weight decay":
        reference = {name: torch.zeros_like(w) for name, w in copied.items()}
    else:
        raise ValueError(f"penalty={job.penalty!r}: use None, 'l2-sp' or 'weight decay'.")
    return lambda m: l2_sp_penalty(m, reference, job.alpha, job.beta)


def run_jobs(jobs: Sequence[Job], target: Target, budget: Budget, workers: int = 1, **cnn_args) -> list[Run]:
    """Run every job under the same ``budget``; ``workers`` threads train several at once.

    The models are built one after the other in this thread (their seeded initialisation uses the global
    random generator), then trained in parallel: each run has its own generator for its batches and
    PyTorch releases Python's lock inside its operations, so two threads use two cores. The results do
    not depend on ``workers``.

    >>> x, y = torch.randn(60, 1, 28, 28), torch.arange(60) % 10
    >>> target = Target(x, y, x[:20], y[:20], x[20:], y[20:])
    >>> jobs = [Job(None, 0, False, seed, np.arange(40)) for seed in (0, 1)]
    >>> runs = run_jobs(jobs, target, Budget(check_every=5, patience=1, max_steps=10), workers=2)
    >>> [len(r.predictions) for r in runs], [math.isnan(r.distance) for r in runs]
    ([40, 40], [True, True])
    """
    built = []
    for job in jobs:
        model = transfer(job.source, job.k, job.freeze, job.seed, **cnn_args)
        copied = source_snapshot(model, LAYERS[:job.k]) if job.k and job.source is not None else {}
        built.append((job, model, copied))

    def one(item) -> Run:
        job, model, copied = item
        idx = torch.as_tensor(job.train_idx)
        log = train(model, target.x_pool[idx], target.y_pool[idx], target.x_val, target.y_val, budget, job.seed,
                    _penalty(job, model, copied))
        preds = predict(model, target.x_test)
        return Run(val=float((predict(model, target.x_val) == target.y_val).float().mean()),
                   test=float((preds == target.y_test).float().mean()), predictions=preds.numpy().astype(np.int8),
                   log=log, distance=weight_distance(model, copied) if copied else math.nan, model=model)

    if workers <= 1:
        return [one(item) for item in built]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, built))
