"""Predictions and metrics.

>>> import torch
>>> from tl_helpers.evaluate import topk_predictions
>>> logits = torch.tensor([[0.0, 2.0, 1.0]])
>>> topk_predictions(logits, ["a", "b", "c"], k=2)[0]
[('b', 0.6652), ('c', 0.2447)]
"""

from __future__ import annotations

import torch


def topk_predictions(logits: torch.Tensor, categories: list[str], k: int = 5,
                     decimals: int = 4) -> list[list[tuple[str, float]]]:
    """For each row of ``logits``, the ``k`` most probable classes as (name, probability) pairs."""
    probs = logits.softmax(dim=1)
    values, indices = probs.topk(k, dim=1)
    return [[(categories[int(i)], round(float(v), decimals)) for v, i in zip(vs, ids)]
            for vs, ids in zip(values, indices)]
