"""Comparing two models on the same test images: McNemar's exact test and a paired bootstrap.

Two accuracies measured on the same images are not independent: most images are easy (both right)
or hard (both wrong) for both models, and only the images where they *disagree* say which is better.
Pairing uses that; two separate intervals side by side ignore it and are far too wide.

>>> a = [1, 1, 1, 0, 1, 0]
>>> b = [1, 0, 1, 0, 0, 0]
>>> contingency_table(a, b).tolist()
[[2, 2], [0, 2]]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tl_helpers.evaluate import VERDICTS, Interval


def _correct(values) -> np.ndarray:
    """A 0/1 vector (list, array or tensor of bools or 0/1) as a NumPy bool array."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    x = np.asarray(values)
    if x.ndim != 1 or not np.isin(x, [0, 1]).all():
        raise ValueError("give one 0/1 (or True/False) entry per test image: 1 where the model is right")
    return x.astype(bool)


def contingency_table(correct_a: Sequence, correct_b: Sequence) -> np.ndarray:
    """2x2 counts: rows A right / A wrong, columns B right / B wrong (same images, same order).

    >>> contingency_table([1, 0, 1], [1, 1, 0]).tolist()
    [[1, 1], [1, 0]]
    """
    a, b = _correct(correct_a), _correct(correct_b)
    if len(a) != len(b):
        raise ValueError(f"{len(a)} and {len(b)} entries: both models must be scored on the same test images")
    return np.array([[np.sum(a & b), np.sum(a & ~b)], [np.sum(~a & b), np.sum(~a & ~b)]])


def mcnemar_exact(correct_a: Sequence, correct_b: Sequence) -> dict:
    """McNemar's exact test: are the discordant images (one model right, the other wrong) split 50/50?

    Only the ``b`` images where A alone is right and the ``c`` where B alone is right count; under
    "no difference" each discordant image is a fair coin, so the p-value is a two-sided binomial test
    of ``b`` out of ``b + c`` at 1/2 (``scipy.stats.binomtest``). Returns the table, ``b``, ``c``, the
    p-value, and the verdict for A at the 5 % level ("ahead", "behind" or "tie").

    >>> r = mcnemar_exact([1] * 20 + [0] * 2, [0] * 20 + [1] * 2)
    >>> r["b"], r["c"], round(r["p"], 5), r["verdict"]
    (20, 2, 0.00012, 'ahead')
    >>> mcnemar_exact([1, 0, 1], [0, 1, 1])["verdict"]
    'tie'
    """
    from scipy.stats import binomtest

    table = contingency_table(correct_a, correct_b)
    b, c = int(table[0, 1]), int(table[1, 0])
    p = 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5).pvalue)
    verdict = VERDICTS[1] if p >= 0.05 else (VERDICTS[0] if b > c else VERDICTS[2])   # ahead / tie / behind
    return {"table": table, "b": b, "c": c, "p": p, "verdict": verdict}


def paired_bootstrap(correct_a: Sequence, correct_b: Sequence, n: int = 5000, level: float = 0.95,
                     seed: int = 0) -> Interval:
    """Accuracy of A minus accuracy of B, with a percentile interval from resampling test images *in pairs*.

    Each resample draws image indices with replacement and uses both models' results on the same
    images, so what the two share cancels out. Returns an :class:`~tl_helpers.evaluate.Interval` (``n``: the
    number of images) whose ``verdict`` is "ahead" when the interval is above 0, "behind" when below, "tie"
    otherwise. It covers the test images' noise only: both models are fixed.

    >>> r = paired_bootstrap([1] * 90 + [0] * 10, [1] * 80 + [0] * 20, n=2000)
    >>> round(r.mean, 2), r.verdict
    (0.1, 'ahead')
    """

    a, b = _correct(correct_a).astype(float), _correct(correct_b).astype(float)
    if len(a) != len(b):
        raise ValueError(f"{len(a)} and {len(b)} entries: both models must be scored on the same test images")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(n, len(a)))
    diffs = a[idx].mean(axis=1) - b[idx].mean(axis=1)
    low, high = np.quantile(diffs, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(a.mean() - b.mean()), float(low), float(high), level, len(a),
                    f"paired percentile bootstrap ({n} resamples)")
