"""Figures, all with matplotlib.

Every function returns the matplotlib ``Figure`` so a notebook can show or save it.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
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
