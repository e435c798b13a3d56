"""Figures, all with matplotlib.

Every function returns the matplotlib ``Figure`` so a notebook can show or save it.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image


def show_topk(images: Sequence[Image.Image], predictions: Sequence[Sequence[tuple[str, float]]],
              titles: Sequence[str] | None = None) -> Figure:
    """Each image beside a horizontal bar chart of its top-k (class, probability) predictions.

    >>> img = Image.new("RGB", (8, 8))
    >>> fig = show_topk([img], [[("a", 0.7), ("b", 0.2)]])
    >>> len(fig.axes)
    2
    """
    n = len(images)
    fig, axes = plt.subplots(n, 2, figsize=(8, 2.2 * n), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 1.6]})
    for row, (img, preds) in enumerate(zip(images, predictions)):
        ax_img, ax_bar = axes[row]
        ax_img.imshow(img)
        ax_img.set_axis_off()
        if titles:
            ax_img.set_title(titles[row], fontsize=10)
        names = [name for name, _ in preds][::-1]
        probs = [p for _, p in preds][::-1]
        ax_bar.barh(names, probs, color="tab:blue")
        ax_bar.set_xlim(0, 1)
        ax_bar.set_xlabel("probability")
        for y, p in enumerate(probs):
            ax_bar.text(min(p + 0.02, 0.85), y, f"{p:.2f}", va="center", fontsize=9)
    fig.tight_layout()
    return fig


def image_grid(images: Sequence[Image.Image | np.ndarray], titles: Sequence[str] | None = None,
               ncols: int = 6, size: float = 1.6, title_colors: Sequence[str] | None = None) -> Figure:
    """A grid of images with optional titles (and title colours, e.g. green/red for right/wrong).

    >>> fig = image_grid([Image.new("RGB", (8, 8))] * 3, ["x", "y", "z"], ncols=2)
    >>> len(fig.axes)
    4
    """
    n = len(images)
    nrows = max(1, -(-n // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows * 1.15), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i < n:
            ax.imshow(images[i])
            if titles:
                color = title_colors[i] if title_colors else "black"
                ax.set_title(titles[i], fontsize=8, color=color)
    fig.tight_layout()
    return fig


def _rows(histories) -> list[dict]:
    """Rows of History objects, their ``to_dict()``, or lists of row dicts, concatenated in order."""
    rows, seen = [], set()
    for h in histories:
        if id(h) in seen:
            continue
        seen.add(id(h))
        if hasattr(h, "rows"):
            rows += list(h.rows)
        elif isinstance(h, dict):
            rows += list(h["rows"])
        else:
            rows += list(h)
    return rows


def learning_curves(*histories, title: str | None = None) -> Figure:
    """Loss and accuracy, train and validation, of one or more training phases on one figure.

    Pass one History holding several phases (``fit(..., history=phase1)``), or several Histories
    in order. A dashed vertical line marks each change of phase, labelled with the new phase's name.

    >>> from tl_helpers.train import History
    >>> rows = [{"phase": p, "epoch": i + 1, "train_loss": 1 / (i + 1), "val_loss": 1.2 / (i + 1),
    ...          "train_acc": i / 4, "val_acc": i / 5} for i, p in enumerate(["head"] * 2 + ["finetune"] * 2)]
    >>> fig = learning_curves(History(rows))
    >>> len(fig.axes), [t.get_text() for t in fig.axes[0].texts]
    (2, ['head', 'finetune'])
    """
    rows = _rows(histories)
    if not rows:
        raise ValueError("learning_curves() got no epochs: pass the History returned by fit().")
    x = np.arange(1, len(rows) + 1)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.6))

    def col(key):
        return np.array([np.nan if r.get(key) is None else r[key] for r in rows], dtype=float)

    style = "o-" if len(rows) <= 40 else "-"
    for ax, metric, label in ((ax_loss, "loss", "loss"), (ax_acc, "acc", "accuracy")):
        ax.plot(x, col(f"train_{metric}"), style, ms=3, color="tab:blue", label=f"train {label}")
        if not np.all(np.isnan(col(f"val_{metric}"))):
            ax.plot(x, col(f"val_{metric}"), style, ms=3, color="tab:orange", label=f"validation {label}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        phases = [r.get("phase", "") for r in rows]
        starts = [i for i in range(len(rows)) if i == 0 or phases[i] != phases[i - 1]]
        for i in starts:
            if i > 0:
                ax.axvline(i + 0.5, color="gray", ls="--", lw=1)
            if len(starts) > 1 or phases[i]:
                ax.text(i + 0.6, 0.98, phases[i], transform=ax.get_xaxis_transform(), va="top",
                        fontsize=9, color="dimgray")
    ax_acc.set_ylim(top=1.02)
    ax_loss.legend(loc="center right", fontsize=8)
    ax_acc.legend(loc="lower right", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def confusion_matrix_plot(cm, classes: Sequence[str], normalize: bool = False) -> Figure:
    """The confusion matrix as an annotated heat map (rows: true class, columns: predicted).

    ``normalize=True`` divides each row by its count, so the diagonal is each class's recall.

    >>> fig = confusion_matrix_plot(np.array([[3, 1], [0, 4]]), ["cat", "dog"], normalize=True)
    >>> fig.axes[0].get_ylabel()
    'true class'
    """
    cm = np.asarray(cm, dtype=float)
    if normalize:
        cm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    n = len(classes)
    size = max(4.0, 0.55 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    im = ax.imshow(cm, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    threshold = cm.max() / 2 if cm.size else 0
    for i in range(n):
        for j in range(n):
            text = f"{cm[i, j]:.2f}" if normalize else f"{int(cm[i, j])}"
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="white" if cm[i, j] > threshold else "black")
    ax.set_title("confusion matrix" + (" (each row sums to 1)" if normalize else ""))
    fig.tight_layout()
    return fig


def reliability_diagram(probs, y_true, n_bins: int = 10) -> Figure:
    """Accuracy against confidence per bin, with the diagonal of perfect calibration and the ECE.

    Bars below the diagonal: the model is overconfident there; the hatched part of each bin is the
    gap between its accuracy and its mean confidence. A lower panel shows how many
    samples fall in each bin.

    >>> fig = reliability_diagram(np.array([[0.9, 0.1], [0.3, 0.7]]), [0, 0], n_bins=5)
    >>> fig.axes[0].get_title()
    'reliability (ECE = 0.400)'
    """
    from tl_helpers.evaluate import reliability_curve

    curve = reliability_curve(probs, y_true, n_bins)
    edges = curve["edges"]
    centers, width = (edges[:-1] + edges[1:]) / 2, edges[1] - edges[0]
    fig, (ax, ax_count) = plt.subplots(2, 1, figsize=(4.5, 5.2), sharex=True,
                                       gridspec_kw={"height_ratios": [3, 1]})
    acc = np.nan_to_num(curve["accuracy"])
    ax.bar(centers, acc, width=width * 0.95, color="tab:blue", edgecolor="black", label="accuracy")
    gap = np.where(curve["counts"] > 0, np.nan_to_num(curve["confidence"]) - acc, 0)
    # hatched, not filled: where accuracy exceeds confidence the gap lies over the blue bar
    ax.bar(centers, gap, bottom=acc, width=width * 0.95, facecolor="none", edgecolor="tab:red", hatch="///",
           lw=0, label="gap to the mean confidence")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability (ECE = {curve['ece']:.3f})")
    ax.legend(loc="upper left", fontsize=8)
    ax_count.bar(centers, curve["counts"], width=width * 0.95, color="gray")
    ax_count.set_xlabel("confidence (top-class probability)")
    ax_count.set_ylabel("samples")
    fig.tight_layout()
    return fig


def _to_image(img, mean=None, std=None):
    """A PIL image, HWC array, or CHW tensor (optionally normalised) as something imshow accepts."""
    if isinstance(img, torch.Tensor):
        img = img.detach().cpu().float()
        if img.ndim == 3 and img.shape[0] in (1, 3):
            if mean is not None and std is not None:
                img = img * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
            img = img.permute(1, 2, 0)
        img = img.numpy()
        if img.ndim == 3 and img.shape[2] == 1:
            img = img[..., 0]
        return np.clip(img, 0, 1)
    return img


def prediction_grid(images, y_true, y_pred, classes: Sequence[str], ncols: int = 6,
                    mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> Figure:
    """Images titled "true / predicted", green when right and red when wrong.

    ``images`` are PIL images, HWC arrays, or CHW tensors; for normalised tensors give the ``mean``
    and ``std`` used by the transform so the colours come back.

    >>> fig = prediction_grid([Image.new("RGB", (8, 8))] * 2, [0, 1], [0, 0], ["cat", "dog"], ncols=2)
    >>> [(ax.get_title(), ax.title.get_color()) for ax in fig.axes]
    [('cat / cat', 'green'), ('dog / cat', 'red')]
    """
    y_true = [int(v) for v in y_true]
    y_pred = [int(v) for v in y_pred]
    titles = [f"{classes[t]} / {classes[p]}" for t, p in zip(y_true, y_pred)]
    colors = ["green" if t == p else "red" for t, p in zip(y_true, y_pred)]
    pictures = [_to_image(img, mean, std) for img in images]
    return image_grid(pictures, titles, ncols=min(ncols, max(len(pictures), 1)), size=1.8, title_colors=colors)


def lr_finder_plot(lrs: Sequence[float], losses: Sequence[float], suggestion: float | None = None) -> Figure:
    """Smoothed loss against learning rate (log scale), with the suggested learning rate marked.

    >>> fig = lr_finder_plot([1e-4, 1e-3, 1e-2], [2.0, 1.5, 3.0], suggestion=1e-3)
    >>> fig.axes[0].get_xscale()
    'log'
    """
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.plot(lrs, losses, color="tab:blue")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("smoothed training loss")
    if suggestion is not None:
        ax.axvline(suggestion, color="tab:red", ls="--", lw=1, label=f"suggested lr = {suggestion:.1e}")
        ax.legend(fontsize=8)
    finite = np.asarray(losses, dtype=float)
    finite = finite[np.isfinite(finite)]
    if finite.size:
        low = finite.min()
        ax.set_ylim(low - 0.05 * abs(low), min(finite.max(), low + 4 * (finite[0] - low + 1e-8) + 0.1))
    ax.grid(alpha=0.3, which="both")
    ax.set_title("learning-rate range test")
    fig.tight_layout()
    return fig


def sweep_plot(xs: Sequence[float], curves: dict[str, Sequence[tuple[float, float, float]]],
               difference: Sequence[tuple[float, float, float]] | None = None, xlabel: str = "",
               ylabel: str = "test accuracy (%)", difference_label: str = "difference (points)") -> Figure:
    """Means with their intervals against a setting on a log axis, one line per curve; with ``difference``
    (mean, low, high per x, e.g. a paired difference) a second panel with a zero line.

    >>> fig = sweep_plot([1e-4, 1e-3], {"a": [(70, 65, 75), (60, 50, 70)]}, [(1, -2, 4), (9, 3, 15)])
    >>> len(fig.axes), fig.axes[0].get_xscale()
    (2, 'log')
    """
    panels = 2 if difference is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.4), squeeze=False)
    ax = axes[0, 0]
    for k, (name, points) in enumerate(curves.items()):
        m, lo, hi = (np.array(v, dtype=float) for v in zip(*points))
        shift = 1 + 0.04 * (k - (len(curves) - 1) / 2)               # side by side, not on top of each other
        ax.errorbar(np.asarray(xs) * shift, m, yerr=[m - lo, hi - m], marker="o", capsize=3, label=name)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    if difference is not None:
        ax = axes[0, 1]
        m, lo, hi = (np.array(v, dtype=float) for v in zip(*difference))
        ax.errorbar(xs, m, yerr=[m - lo, hi - m], marker="o", capsize=3, color="tab:green")
        ax.axhline(0, color="black", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(difference_label)
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig
