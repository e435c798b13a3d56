"""The learning-rate range test (Smith 2015; fastai's ``lr_find``) and reading a rate off it.

>>> from tl_helpers.lr_finder import suggest_lr
>>> suggest_lr([1e-4, 1e-3, 1e-2, 1e-1], [2.0, 1.5, 0.9, 3.0])
0.001
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import nn

from tl_helpers.checkpoints import rng_state, set_rng_state
from tl_helpers.runtime import get_device
from tl_helpers.surgery import train_mode


def smooth_centred(values: list[float], window: int = 3) -> list[float]:
    """A centred running mean over ``window`` points (fewer at the ends): smoothing without a lag.

    >>> smooth_centred([1.0, 2.0, 6.0, 4.0])
    [1.5, 3.0, 4.0, 5.0]
    """
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window={window}: give an odd number of points (1, 3, 5...).")
    half = window // 2
    return [float(np.mean(values[max(0, i - half):i + half + 1])) for i in range(len(values))]


def lr_range_test(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer | Callable,
                  loss_fn: Callable | None = None, start_lr: float = 1e-6, end_lr: float = 1.0,
                  steps: int = 50, device: torch.device | str | None = None, beta: float = 0.9,
                  diverge: float = 4.0, window: int = 3) -> tuple[list[float], list[float]]:
    """The learning-rate range test (Smith 2015; fastai's ``lr_find``): train a few batches with an
    exponentially growing learning rate and record the loss.

    ``optimizer`` is an optimizer over the model's parameters, or a factory ``params -> optimizer``;
    every parameter group gets the same learning rate at each step. The test stops early once the
    loss, smoothed by an exponential moving average (``beta``, bias-corrected, as fastai does), exceeds
    ``diverge`` times its minimum (or is NaN). Afterwards the model's weights, buffers (BatchNorm
    statistics), train/eval modes and the optimizer's state are restored, and so are the random generators
    (torch, CUDA, NumPy, Python's ``random`` and the loader's own generator), so the test changes neither
    the model nor the training that follows it.

    Returns (learning rates, losses smoothed by a *centred* running mean of ``window`` steps,
    :func:`smooth_centred`). The moving average only decides when to stop: it trails the raw loss (with
    ``beta=0.9`` each value is mostly the losses of the last several steps), and on a short test, where one
    step moves the rate by a third of a decade, that lag shifts the whole curve, its steepest point and its
    minimum included, towards higher rates. A centred mean has no lag.
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
    lrs, raw = [], []
    avg, best = 0.0, math.inf
    rng = rng_state(loader)
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
            raw.append(float(loss.detach()))
            best = min(best, smooth)
            if smooth > diverge * best:
                break
    finally:
        model.load_state_dict(saved_model)
        for m, mode in saved_modes.items():
            m.training = mode
        if saved_opt is not None:
            optimizer.load_state_dict(saved_opt)
        set_rng_state(rng, loader)
        random.setstate(python_rng)
    return lrs, smooth_centred(raw, window)


def suggest_lr(lrs: list[float], losses: list[float], method: str = "steepest") -> float:
    """A learning rate read off a range test.

    ``"steepest"`` (default): where the smoothed loss falls fastest against log(lr), looking only
    at the rates *below* the one of the lowest loss: fastai's ``steep`` suggestion ("when the slope is the
    steepest"), kept left of the minimum so that a noisy drop after it is never read; the suggestion is
    always smaller than the minimum's rate. (fastai's default, ``valley``, reads the longest downhill stretch
    instead, and Smith's test reads where accuracy stops improving.) ``"min10"``: the learning rate of the
    lowest loss divided by 10 (the classic rule of thumb). Read it as a sanity check on a rate: on a few
    noisy batches the suggestion moves by a factor of a few from run to run.

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
