"""The labels-per-class protocol: how accuracy grows with the number of labelled images per class.

One protocol for every chapter that draws a learning curve, so their numbers can be compared:

- draw ``k`` images per class from the **training part only** (never validation or test), with the
  draw's own seed (``seed + draw``), all of a class that has fewer than ``k``;
- train whatever is being measured on those images;
- score it on the fixed, leak-free **test part**;
- repeat for ``draws`` draws; every strategy sees the same draws, so two strategies can be compared
  pairwise, draw by draw.

>>> sel = per_class_indices([0, 0, 0, 1, 1, 1, 1], k=2, seed=0)
>>> len(sel), sorted({[0, 0, 0, 1, 1, 1, 1][i] for i in sel})
(4, [0, 1])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

ALL = "all"


def per_class_indices(targets: Sequence[int], k: int | str, seed: int = 0) -> list[int]:
    """Sorted positions of ``k`` random items per class in ``targets`` (all of a class with fewer; ``"all"``: all).

    >>> per_class_indices([0, 1, 0, 1, 2], k=1, seed=3)
    [1, 2, 4]
    >>> per_class_indices([0, 1, 0, 1, 2], k="all")
    [0, 1, 2, 3, 4]
    """
    y = np.asarray(targets)
    if k == ALL:
        return list(range(len(y)))
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k = {k!r}: give a positive number of labels per class, or 'all'")
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(np.flatnonzero(y == c), size=min(int(k), int((y == c).sum())), replace=False)
              for c in np.unique(y)]
    return sorted(int(i) for i in np.concatenate(chosen))


def labels_per_class_curve(score: Callable[[list[int], int], float], targets: Sequence[int],
                           ks: Sequence[int | str], draws: int = 3, seed: int = 0) -> dict:
    """``{k: [score(indices, draw_seed) for each draw]}`` with the protocol above.

    ``score(indices, draw_seed)`` trains on the training items at ``indices`` (positions into
    ``targets``, the training part's labels) and returns the test accuracy. Draw ``d`` uses the seed
    ``seed + d`` for the subset (and passes it on, for the training's own randomness). With ``k="all"``
    every draw uses the whole training part; only the training seed changes.

    >>> curve = labels_per_class_curve(lambda idx, s: len(idx) / 10, [0] * 5 + [1] * 5, [1, 3, "all"], draws=2)
    >>> curve
    {1: [0.2, 0.2], 3: [0.6, 0.6], 'all': [1.0, 1.0]}
    """
    return {k: [float(score(per_class_indices(targets, k, seed + d), seed + d)) for d in range(draws)]
            for k in ks}


def summarise(curve: dict, level: float = 0.95) -> dict:
    """``{k: Interval}``: the mean over draws and its t-interval (``evaluate.interval``).

    All draws are scored on the same test part, so the interval covers what changes from draw to draw
    (which images, the training's randomness) for this test part, not the test part's own noise.

    >>> {k: [round(v, 3) for v in m] for k, m in summarise({5: [0.5, 0.6, 0.7]}).items()}
    {5: [0.6, 0.352, 0.848]}
    """
    from tl_helpers.evaluate import interval

    return {k: interval(v, level) for k, v in curve.items()}


def paired_gaps(curve_a: dict, curve_b: dict, level: float = 0.95) -> dict:
    """``{k: paired_difference(a, b)}`` (an ``Interval``) for every ``k`` of two curves drawn on the same draws.

    >>> gaps = paired_gaps({5: [0.6, 0.7, 0.65]}, {5: [0.2, 0.25, 0.3]})
    >>> round(gaps[5].mean, 2), gaps[5].verdict
    (0.4, 'ahead')
    """
    from tl_helpers.evaluate import paired_difference

    missing = set(curve_a) ^ set(curve_b)
    if missing:
        raise ValueError(f"the two curves differ in their points {sorted(map(str, missing))}: draw both on the same ks")
    return {k: paired_difference(curve_a[k], curve_b[k], level) for k in curve_a}
