"""Nested selection: choosing a recipe's settings inside one fold, from its validation part only.

Each fold of the benchmark's cross-validation has a training part, a validation part and a test part.
A candidate (a set of settings and a rule for which epoch to keep) is trained on the training part and
scored on the validation part; the fold keeps the candidate with the highest score, and only then is that
candidate's model scored on the test part. So no choice ever sees an image that a reported test part holds
(Cawley & Talbot, "On Over-fitting in Model Selection and Subsequent Selection Bias in Performance
Evaluation", JMLR 2010).

Scores are accuracies on validation images the candidate did not choose anything on:

- ``last``: the model after the last epoch, scored on the whole validation part;
- ``best``: the model at the epoch with the best validation accuracy. Picking that epoch on the same images
  would flatter it (a maximum over epochs), so it is *cross-fitted*: the epoch is picked on one half of the
  validation images (even positions) and scored on the other half (odd positions), then the other way
  round; the score is the accuracy over both halves.

Ties go to the first candidate in the declared order.

>>> candidate_scores({"info": {"val_correct_by_epoch": [[1, 1, 1, 1], [1, 0, 1, 0]]}})   # the last epoch fell back
{'last': 0.5, 'best': 1.0}
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


def crossfit_accuracy(correct_by_epoch: Sequence[Sequence[int]]) -> float:
    """Accuracy of "keep the epoch with the best validation accuracy", with the epoch picked on one half of
    the validation images and scored on the other half, both ways round (halves: even and odd positions).

    ``correct_by_epoch[e][i]`` is 1 when epoch ``e`` got validation image ``i`` right. The first best epoch
    wins a tie, as in ``fit(restore_best=True)``.

    >>> crossfit_accuracy([[0, 0, 1, 0], [1, 1, 1, 1]])
    1.0
    >>> crossfit_accuracy([[1, 0, 1, 0], [0, 1, 0, 1]])   # each half picks the epoch that fails the other half
    0.0
    """
    c = np.asarray(correct_by_epoch, dtype=float)
    if c.ndim != 2 or c.shape[1] < 2:
        raise ValueError("give one 0/1 row per epoch, with at least two validation images")
    halves = (np.arange(c.shape[1]) % 2 == 0, np.arange(c.shape[1]) % 2 == 1)
    right = 0.0
    for pick, score in (halves, halves[::-1]):
        epoch = int(np.argmax(c[:, pick].mean(axis=1)))
        right += c[epoch, score].sum()
    return float(right / c.shape[1])


def candidate_scores(cell: dict) -> dict[str, float]:
    """``{rule: validation score}`` of one training run (a cell whose ``info`` holds ``val_correct_by_epoch``),
    for the rules ``last`` and ``best`` (see the module's docstring)."""
    epochs = cell["info"]["val_correct_by_epoch"]
    return {"last": float(np.mean(epochs[-1])), "best": crossfit_accuracy(epochs)}


def choose(scores: dict[str, float], allowed: Iterable[str] | None = None) -> str:
    """The candidate with the highest score among ``allowed`` (default: all); ties to the first one listed.

    >>> choose({"a": 0.7, "b": 0.8, "c": 0.8})
    'b'
    >>> choose({"a": 0.7, "b": 0.8}, allowed=["a"])
    'a'
    """
    names = [n for n in scores if allowed is None or n in set(allowed)]
    if not names:
        raise ValueError("no candidate to choose from")
    return max(names, key=lambda n: (scores[n], -names.index(n)))
