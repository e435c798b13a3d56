"""Predictions and metrics.

>>> import torch
>>> from tl_helpers.evaluate import topk_predictions
>>> logits = torch.tensor([[0.0, 2.0, 1.0]])
>>> topk_predictions(logits, ["a", "b", "c"], k=2)[0]
[('b', 0.6652), ('c', 0.2447)]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from sklearn import metrics as sk_metrics
from torch import nn

from tl_helpers.arrays import to_numpy


def topk_predictions(logits: torch.Tensor, categories: list[str], k: int = 5,
                     decimals: int = 4) -> list[list[tuple[str, float]]]:
    """For each row of ``logits``, the ``k`` most probable classes as (name, probability) pairs."""
    probs = logits.softmax(dim=1)
    values, indices = probs.topk(k, dim=1)
    return [[(categories[int(i)], round(float(v), decimals)) for v, i in zip(vs, ids)]
            for vs, ids in zip(values, indices)]


@torch.no_grad()
def predict(model: nn.Module, loader: Iterable, device: torch.device | str | None = None,
            return_logits: bool = False) -> tuple[torch.Tensor, ...]:
    """Run ``model`` over ``loader`` in eval mode without gradients: (probs, preds, labels) on the CPU.

    ``device`` defaults to the device the model's parameters are on. ``return_logits=True`` adds the
    raw logits as a fourth tensor (for temperature scaling). The model is left in eval mode.

    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> loader = DataLoader(TensorDataset(torch.zeros(5, 3), torch.tensor([0, 1, 0, 1, 1])), batch_size=2)
    >>> probs, preds, labels = predict(nn.Linear(3, 2), loader)
    >>> probs.shape, preds.shape, labels.tolist()
    (torch.Size([5, 2]), torch.Size([5]), [0, 1, 0, 1, 1])
    """
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    model.to(device).eval()
    logits, labels = [], []
    for x, y in loader:
        logits.append(model(x.to(device)).float().cpu())
        labels.append(y.cpu())
    logits_t, labels_t = torch.cat(logits), torch.cat(labels)
    probs = logits_t.softmax(dim=1)
    out = (probs, probs.argmax(dim=1), labels_t)
    return out + (logits_t,) if return_logits else out


def accuracy(y_true, y_pred) -> float:
    """Fraction of predictions equal to the labels.

    >>> accuracy([0, 1, 2, 2], [0, 1, 1, 2])
    0.75
    """
    y_true, y_pred = to_numpy(y_true), to_numpy(y_pred)
    if len(y_true) != len(y_pred) or len(y_true) == 0:
        raise ValueError(f"accuracy() needs two non-empty sequences of equal length, got {len(y_true)} "
                         f"and {len(y_pred)}.")
    return float((y_true == y_pred).mean())


def topk_accuracy(probs, y_true, k: int = 5) -> float:
    """Fraction of samples whose label is among the ``k`` highest scores (probabilities or logits).

    >>> topk_accuracy(torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.3, 0.6]]), [1, 0], k=2)
    0.5
    """
    probs = torch.as_tensor(to_numpy(probs))
    y_true = torch.as_tensor(to_numpy(y_true)).long()
    k = min(k, probs.shape[1])
    top = probs.topk(k, dim=1).indices
    return int((top == y_true[:, None]).any(dim=1).sum()) / len(y_true)


def classification_report(y_true, y_pred, classes: Sequence[str], digits: int = 3) -> str:
    """scikit-learn's per-class precision / recall / F1 report, as text, with the class names.

    >>> print(classification_report([0, 1, 1], [0, 1, 0], ["cat", "dog"], digits=2).splitlines()[2])
             cat       0.50      1.00      0.67         1
    """
    return sk_metrics.classification_report(to_numpy(y_true), to_numpy(y_pred), labels=list(range(len(classes))),
                                            target_names=list(classes), digits=digits, zero_division=0)


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """Counts: row = true class, column = predicted class (scikit-learn's convention).

    >>> confusion_matrix([0, 1, 1], [0, 1, 0], 3).tolist()
    [[1, 0, 0], [1, 1, 0], [0, 0, 0]]
    """
    return sk_metrics.confusion_matrix(to_numpy(y_true), to_numpy(y_pred), labels=list(range(num_classes)))


def misclassified(preds, labels) -> list[int]:
    """Indices of the wrong predictions.

    >>> misclassified(torch.tensor([0, 2, 1]), torch.tensor([0, 1, 1]))
    [1]
    """
    return [int(i) for i in np.flatnonzero(to_numpy(preds) != to_numpy(labels))]


def reliability_curve(probs, y_true, n_bins: int = 10) -> dict:
    """Confidence against accuracy in ``n_bins`` equal-width bins of the top-class probability.

    Bins are (0, 1/n], (1/n, 2/n], ... Returns a dict of NumPy arrays ``edges`` (n_bins + 1),
    ``confidence`` and ``accuracy`` (mean per bin, NaN for an empty bin), ``counts``, and the
    scalar ``ece`` (see :func:`expected_calibration_error`).

    >>> curve = reliability_curve(torch.tensor([[0.9, 0.1], [0.3, 0.7]]), [0, 0], n_bins=2)
    >>> curve["counts"].tolist(), curve["accuracy"].tolist()
    ([0, 2], [nan, 0.5])
    """
    probs = to_numpy(probs).astype(float)
    y_true = to_numpy(y_true)
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    correct = (pred == y_true).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.searchsorted(edges[1:-1], conf, side="left"), 0, n_bins - 1)
    counts = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.bincount(bins, weights=correct, minlength=n_bins) / counts
        mean_conf = np.bincount(bins, weights=conf, minlength=n_bins) / counts
    gaps = np.where(counts > 0, np.abs(acc - mean_conf), 0.0)
    ece = float((counts * gaps).sum() / max(len(conf), 1))
    return {"edges": edges, "confidence": mean_conf, "accuracy": acc, "counts": counts, "ece": ece}


def expected_calibration_error(probs, y_true, n_bins: int = 10) -> float:
    """ECE: the average gap between confidence and accuracy, bins weighted by their size.

    ECE = sum over bins of |B|/N * |accuracy(B) - mean confidence(B)| (Guo et al., 2017), with the
    top-class probability as confidence and ``n_bins`` equal-width bins. 0 is perfect calibration.

    >>> round(expected_calibration_error(torch.tensor([[0.9, 0.1], [0.3, 0.7]]), [0, 0], n_bins=2), 4)
    0.3
    """
    return reliability_curve(probs, y_true, n_bins)["ece"]


def bootstrap_ci(y_true, y_pred, n: int = 1000, alpha: float = 0.05, seed: int = 0) -> Interval:
    """The accuracy and its percentile bootstrap interval, as an :class:`Interval` (unpacks as acc, low, high).

    The test set is resampled with replacement ``n`` times; the interval holds the central
    1 - ``alpha`` of the resampled accuracies. It covers the test images' sampling noise only (one trained
    model, one test set). On 126 test images it is about +-8 points wide at 80 %: differences of a few
    points between recipes are noise.

    >>> acc, low, high = bootstrap_ci([0, 1] * 50, [0, 1] * 40 + [1, 0] * 10)
    >>> acc, low <= acc <= high
    (0.8, True)
    """
    correct = (to_numpy(y_true) == to_numpy(y_pred)).astype(float)
    rng = np.random.default_rng(seed)
    samples = correct[rng.integers(0, len(correct), size=(n, len(correct)))].mean(axis=1)
    low, high = np.quantile(samples, [alpha / 2, 1 - alpha / 2])
    return Interval(float(correct.mean()), float(low), float(high), 1 - alpha, len(correct),
                    f"percentile bootstrap ({n} resamples)")


VERDICTS = ("ahead", "tie", "behind")


def verdict(low: float, high: float) -> str:
    """The one rule for words: "ahead" when the whole interval of a difference is above 0, "behind"
    when it is below, "tie" otherwise.

    >>> verdict(0.4, 3.1), verdict(-2.0, 1.5), verdict(-4.0, -0.2)
    ('ahead', 'tie', 'behind')
    """
    if low > 0:
        return "ahead"
    if high < 0:
        return "behind"
    return "tie"


@dataclass(frozen=True)
class Interval:
    """A mean (or a mean difference) with its interval: the one result type of the course's statistics.

    ``level`` is the confidence level (0.95: a 95 % interval), ``n`` the number of measurements (seeds,
    splits, folds, draws or images) and ``method`` how the interval was made. ``verdict`` applies the one
    rule for words (:func:`verdict`) to a difference. It unpacks as ``mean, low, high`` and reads like a
    dict too (``iv["low"]``).

    >>> iv = Interval(2.0, 0.5, 3.5, n=5)
    >>> mean, low, high = iv
    >>> iv.verdict, iv.half_width, iv["verdict"]
    ('ahead', 1.5, 'ahead')
    """

    mean: float
    low: float
    high: float
    level: float = 0.95
    n: int = 0
    method: str = "t"

    def __iter__(self):
        return iter((self.mean, self.low, self.high))

    def __getitem__(self, key: str):
        if key not in {"mean", "low", "high", "level", "n", "method", "verdict", "half_width"}:
            raise KeyError(key)
        return getattr(self, key)

    @property
    def verdict(self) -> str:
        return verdict(self.low, self.high)

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def scaled(self, factor: float) -> "Interval":
        """The same interval in other units (e.g. ``factor=100`` for percentage points)."""
        return replace(self, mean=self.mean * factor, low=self.low * factor, high=self.high * factor)

    def to_dict(self) -> dict:
        """A JSON-able dict (for results files), with the verdict."""
        return {**asdict(self), "verdict": self.verdict}


def cv_test_train_ratio(folds: int) -> float:
    """``n_test / n_train`` of k-fold cross-validation: 1 / (k - 1) (each fold tests on 1 part, learns on k - 1).

    >>> cv_test_train_ratio(5)
    0.25
    """
    if folds < 2:
        raise ValueError(f"folds={folds}: cross-validation needs at least 2 folds.")
    return 1 / (folds - 1)


def interval(values: Sequence[float], level: float = 0.95, test_train_ratio: float | None = None) -> Interval:
    """The mean of a few repeated measurements (seeds, splits, folds, draws) and its Student-t interval.

    The measurements are treated as independent: ``n - 1`` degrees of freedom, half-width ``t * s / sqrt(n)``
    (with 5 values, 2.78 standard errors). That holds for seeds or draws scored on one fixed test set (the
    interval then covers what changes between seeds, not the test set's own sampling noise).

    Splits of one data set are not independent: their training parts overlap, so their results move
    together and ``s`` underestimates the spread (Nadeau & Bengio, "Inference for the Generalization Error",
    Machine Learning 2003). Give ``test_train_ratio`` = ``n_test / n_train`` of each split for their
    corrected resampled t: the variance is ``s**2 * (1 / n + n_test / n_train)`` instead of ``s**2 / n``, still with
    ``n - 1`` degrees of freedom. For k-fold cross-validation the ratio is ``1 / (k - 1)``
    (:func:`cv_test_train_ratio`; Bouckaert & Frank 2004 use the same correction for repeated k-fold).

    >>> iv = interval([70.0, 72.0, 74.0])
    >>> [round(v, 2) for v in iv], iv.n, iv.method
    ([72.0, 67.03, 76.97], 3, 't')
    >>> [round(v, 2) for v in interval([70.0, 72.0, 74.0], test_train_ratio=0.25)]
    [72.0, 65.43, 78.57]
    """
    from scipy import stats

    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError("interval() needs a non-empty sequence of numbers (one per seed, split, fold or draw).")
    if not 0 < level < 1:
        raise ValueError(f"level={level}: give the confidence level as a fraction, e.g. 0.95.")
    mean, n = float(x.mean()), len(x)
    method = "t" if test_train_ratio is None else f"corrected t (n_test/n_train {test_train_ratio:.3g})"
    if n < 2:
        return Interval(mean, float("nan"), float("nan"), level, n, method)
    factor = 1 / n + (test_train_ratio or 0.0)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * x.std(ddof=1) * np.sqrt(factor))
    return Interval(mean, mean - half, mean + half, level, n, method)


def mean_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): :func:`interval` as a plain tuple (for code that indexes it).

    >>> [round(v, 2) for v in mean_interval([70.0, 72.0, 74.0])]
    [72.0, 67.03, 76.97]
    """
    return tuple(interval(values, level))


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = 0.95,
                      test_train_ratio: float | None = None) -> Interval:
    """``a - b`` measured in pairs (the same splits, folds or seeds for both): the :func:`interval` of the
    differences, whose ``verdict`` is the word for ``a`` against ``b``.

    Pairing removes what the two share (an easy split is easy for both), so the interval is narrower
    than the two intervals side by side. Over the folds of a cross-validation pass ``test_train_ratio``
    (the corrected t; see :func:`interval`).

    >>> d = paired_difference([80, 74, 77, 71, 76], [78, 73, 77, 70, 74])
    >>> round(d.mean, 1), d.verdict, d.n
    (1.2, 'ahead', 5)
    >>> paired_difference([80, 74, 77, 71, 76], [78, 73, 77, 70, 74], test_train_ratio=0.25).verdict
    'tie'
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"{len(a)} and {len(b)} values: a paired difference needs one value of each per split.")
    return interval(a - b, level, test_train_ratio)


def temperature_scale(logits: torch.Tensor, T: float) -> torch.Tensor:
    """Logits divided by the temperature ``T`` (T > 1 softens, T < 1 sharpens; the argmax is unchanged).

    Apply ``.softmax(dim=1)`` for the calibrated probabilities; find ``T`` with :func:`fit_temperature`.

    >>> temperature_scale(torch.tensor([[2.0, 0.0]]), 2.0)
    tensor([[1., 0.]])
    """
    if T <= 0:
        raise ValueError(f"The temperature must be positive, got {T}.")
    return torch.as_tensor(logits) / T


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 100) -> float:
    """The temperature that minimises the negative log-likelihood of ``labels`` (fit it on the
    validation set, never on the test set). Guo et al. (2017), "On Calibration of Modern Neural Networks".

    >>> logits = torch.tensor([[4.0, 0.0], [0.0, 4.0], [4.0, 0.0], [0.0, 4.0]])
    >>> fit_temperature(logits, torch.tensor([0, 1, 1, 0])) > 1   # overconfident: soften
    True
    """
    logits = torch.as_tensor(logits).detach().float().cpu()
    labels = torch.as_tensor(labels).long().cpu()
    log_t = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter)

    def closure():
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp())
