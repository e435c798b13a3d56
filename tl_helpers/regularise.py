"""Regularising towards the source: the L2-SP penalty (Li, Grandvalet and Davoine, ICML 2018).

Fine-tuning starts from the source model's weights w_source. Plain weight decay pulls every weight
towards zero, that is away from what the source learnt; L2-SP pulls the transferred weights back towards
their starting point instead, and only the new layers (the head) towards zero:

    penalty = alpha / 2 * ||w_transferred - w_source||^2  +  beta / 2 * ||w_new||^2

Plain L2 regularisation is the same formula with a source of zeros. :func:`weight_distance` measures how far
training took the weights from the source.

>>> import torch
>>> from torch import nn
>>> from tl_helpers.regularise import l2_sp_penalty, source_snapshot
>>> net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 3))
>>> source = source_snapshot(net, ["0"])          # layer 0 was transferred, layer 1 is the new head
>>> l2_sp_penalty(net, source, alpha=0.1, beta=0.0).item()   # still at the source weights
0.0
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn


def source_snapshot(model: nn.Module, prefixes: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """Detached copies of the parameters whose names start with one of ``prefixes`` (all if None).

    Take it right after copying the source weights in, before training: it is w_source.

    >>> net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 3))
    >>> sorted(source_snapshot(net, ["0"]))
    ['0.bias', '0.weight']
    """
    chosen = None if prefixes is None else tuple(prefixes)
    out = {}
    for name, p in model.named_parameters():
        if chosen is None or any(name == c or name.startswith(c + ".") for c in chosen):
            out[name] = p.detach().clone()
    return out


def l2_sp_penalty(model: nn.Module, source: dict[str, torch.Tensor], alpha: float,
                  beta: float = 0.0) -> torch.Tensor:
    """``alpha/2 * sum ||w - w_source||^2`` over the parameters named in ``source``, plus
    ``beta/2 * sum ||w||^2`` over every other trainable parameter (the new layers).

    Add it to the loss before ``backward()``; its gradient on a transferred weight is
    ``alpha * (w - w_source)``. Frozen parameters (``requires_grad=False``) are left out. A name in
    ``source`` that the model lacks raises a KeyError naming it.

    >>> net = nn.Linear(1, 1, bias=False)
    >>> src = {"weight": torch.zeros(1, 1)}
    >>> with torch.no_grad():
    ...     _ = net.weight.fill_(2.0)
    >>> l2_sp_penalty(net, src, alpha=0.5).item()     # 0.5 / 2 * (2 - 0)^2
    1.0
    """
    params = dict(model.named_parameters())
    missing = [name for name in source if name not in params]
    if missing:
        raise KeyError(f"The source names parameters the model does not have: {missing[:3]}. Take the "
                       "snapshot from this model (source_snapshot(model, prefixes)) after copying the weights in.")
    ref = next(iter(params.values()), None)
    total = torch.zeros((), device=ref.device if ref is not None else "cpu")
    near, far = [], []
    for name, p in params.items():
        if not p.requires_grad:
            continue
        if name in source:
            near.append((p - source[name].to(p.device)).pow(2).sum())
        elif beta:
            far.append(p.pow(2).sum())
    if near:
        total = total + alpha / 2 * torch.stack(near).sum()
    if far:
        total = total + beta / 2 * torch.stack(far).sum()
    return total


def weight_distance(model: nn.Module, reference: dict[str, torch.Tensor]) -> float:
    """Euclidean distance ``||w - w_reference||`` over the parameters named in ``reference`` (all of them
    flattened into one vector): how far training took the transferred weights from where they started.

    >>> net = nn.Linear(2, 1)
    >>> ref = source_snapshot(net)
    >>> with torch.no_grad():
    ...     _ = net.weight.add_(torch.tensor([[3.0, 4.0]]))
    >>> round(weight_distance(net, ref), 4)  # float32 weights: 5 up to rounding
    5.0
    """
    params = dict(model.named_parameters())
    missing = [name for name in reference if name not in params]
    if missing:
        raise KeyError(f"The reference names parameters the model does not have: {missing[:3]}.")
    total = sum(float((params[name].detach() - w.to(params[name].device)).pow(2).sum()) for name, w in reference.items())
    return math.sqrt(total)
