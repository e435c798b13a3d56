"""How much is "style seen in training" worth? The probe with three levels of grouping.

* ``drawing``: the versions of one drawing share a group (copies, recolourings, black-and-white versions);
* ``series`` (the manifest's groups): also an artist's drawings that look alike (Lite0 cosine at least
  ``MIN_SERIES_COSINE``: ``tigre03`` / ``tigre05``, ``bee1`` / ``bee2``, a set of road signs);
* ``artist``: every drawing of an artist in a class (``tl_helpers.groups.artist_groups``), so no test drawing
  has a sibling by the same artist in training.

A stricter grouping takes away from training what resembles the test images. This script measures what
that costs a model, cheaply:

* the logistic-regression probe on cached EfficientNet-Lite0 pooled features at 128 px (as chapter 02 and
  the benchmark's ``linear_probe``: C chosen on the validation part from the benchmark's grid, ties to the
  smaller C, fitted on the training part), scored on the test part;
* on the splits ``stratified_split(seed=k)`` draws with each grouping, for the reporting seeds 0-4 and for
  seeds 0-19 (both groupings see the same seeds, so the differences are paired by seed);
* the mean differences (``series`` minus ``drawing``, ``artist`` minus ``series``) with a Student-t interval over seeds, and with the
  Nadeau-Bengio correction for resampled splits (variance times 1/J + n_test/n_train), since the splits
  re-use the same images.

The fine-tuning recipe's change is left to the benchmark's rerun (``make bench`` with artist-level groups).

    python scripts/measure_artist_groups.py
"""

from __future__ import annotations

import csv
import sys
import warnings
from pathlib import Path

import numpy as np
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from build_clipart import lite0_features, manifest_groups  # noqa: E402
from tl_helpers.data import clipart_root, stratified_split  # noqa: E402
from tl_helpers.groups import artist_groups, describe_groups  # noqa: E402

CS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)  # benchmarks.recipes.linear_probe's grid


def probe_accuracy(X: np.ndarray, y: np.ndarray, split: dict[str, list[int]]) -> float:
    """Test accuracy of the logistic-regression probe, C chosen on the validation part."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    tr, va, te = (np.array(split[k]) for k in ("train", "val", "test"))
    with threadpool_limits(limits=1, user_api="blas"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        val_acc = [float((LogisticRegression(C=C, max_iter=3000).fit(X[tr], y[tr]).predict(X[va]) == y[va]).mean())
                   for C in CS]
        best = CS[int(np.argmax(val_acc))]
        return float((LogisticRegression(C=best, max_iter=3000).fit(X[tr], y[tr]).predict(X[te]) == y[te]).mean())


def interval(diffs: np.ndarray, test_over_train: float, level: float = 0.95) -> dict:
    """Mean of paired differences with a t interval, plain and Nadeau-Bengio corrected."""
    j = len(diffs)
    t = stats.t.ppf(0.5 + level / 2, j - 1)
    var = diffs.var(ddof=1)
    plain = t * np.sqrt(var / j)
    corrected = t * np.sqrt(var * (1 / j + test_over_train))
    m = float(diffs.mean())
    return {"mean": m, "plain": (m - plain, m + plain), "nadeau_bengio": (m - corrected, m + corrected)}


def main() -> None:
    root = clipart_root()
    with open(root / "manifest.csv", newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: r["file"])
    labels = [r["class"] for r in rows]
    y = np.array([sorted(set(labels)).index(c) for c in labels])
    levels = {"drawing": manifest_groups(root, rows, series=False).tolist(),
              "series": [int(r["group"]) for r in rows]}
    levels["artist"] = artist_groups(levels["series"], [r["artist"] for r in rows], labels).tolist()
    for name, groups in levels.items():
        print(f"{name + ':':9s}", describe_groups(groups))
    X = lite0_features([root / r["file"] for r in rows], cache=None)
    acc = {name: [] for name in levels}
    ratios = []
    for seed in range(20):
        for name, groups in levels.items():
            split = stratified_split(labels, seed=seed, groups=groups)
            acc[name].append(probe_accuracy(X, y, split))
            ratios.append(len(split["test"]) / len(split["train"]))
        print(f"seed {seed:2d}: " + "  ".join(f"{name} {acc[name][-1]:.3f}" for name in levels))
    acc = {name: np.array(v) for name, v in acc.items()}
    ratio = float(np.mean(ratios))
    for seeds in (5, 20):
        print(f"\nseeds 0-{seeds - 1}: " + ", ".join(f"{name} {v[:seeds].mean():.1%}" for name, v in acc.items()))
        for a, b in (("series", "drawing"), ("artist", "series"), ("artist", "drawing")):
            iv = interval(acc[a][:seeds] - acc[b][:seeds], ratio)
            print(f"  {a} minus {b}: {iv['mean']:+.1%}, 95 % t interval {iv['plain'][0]:+.1%} to {iv['plain'][1]:+.1%}, "
                  f"Nadeau-Bengio {iv['nadeau_bengio'][0]:+.1%} to {iv['nadeau_bengio'][1]:+.1%}")


if __name__ == "__main__":
    main()
