"""Figures of tl_helpers.plots: each returns a Figure with the expected content."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from tl_helpers.plots import (confusion_matrix_plot, learning_curves, lr_finder_plot, prediction_grid,  # noqa: E402
                              reliability_diagram)
from tl_helpers.train import History  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def history(phase: str, n: int, start: int = 0) -> History:
    return History([{"phase": phase, "epoch": start + i + 1, "train_loss": 1.0 / (i + 1), "val_loss": 1.1 / (i + 1),
                     "train_acc": 0.5 + i / 20, "val_acc": 0.4 + i / 20, "lr": 1e-3, "seconds": 0.1}
                    for i in range(n)])


def dashed_vlines(ax) -> list[float]:
    return [line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() == "--"]


def test_learning_curves_marks_each_phase_boundary():
    h = history("head", 3)
    h.rows += history("finetune", 4, start=3).rows
    fig = learning_curves(h)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    for ax in fig.axes:
        assert dashed_vlines(ax) == [3.5]
        assert [t.get_text() for t in ax.texts] == ["head", "finetune"]
        assert len(ax.get_lines()) == 3  # train, validation, boundary
    two = learning_curves(history("head", 3), history("finetune", 4, start=3))
    assert dashed_vlines(two.axes[0]) == [3.5]
    assert learning_curves(h.to_dict()).axes[0].get_xlabel() == "epoch"


def test_learning_curves_without_validation_and_empty():
    h = History([{"phase": "head", "train_loss": 1.0, "train_acc": 0.5, "val_loss": float("nan"),
                  "val_acc": float("nan")}] * 2)
    assert len(learning_curves(h).axes[0].get_lines()) == 1
    with pytest.raises(ValueError):
        learning_curves(History())


def test_confusion_matrix_plot_annotations():
    cm = np.array([[5, 1], [2, 2]])
    texts = [t.get_text() for t in confusion_matrix_plot(cm, ["a", "b"]).axes[0].texts]
    assert texts == ["5", "1", "2", "2"]
    texts = [t.get_text() for t in confusion_matrix_plot(cm, ["a", "b"], normalize=True).axes[0].texts]
    assert texts == ["0.83", "0.17", "0.50", "0.50"]


def test_reliability_diagram_shows_the_ece():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    fig = reliability_diagram(probs, torch.tensor([0, 1, 1]), n_bins=10)
    assert "ECE" in fig.axes[0].get_title() and len(fig.axes) == 2


def test_prediction_grid_colours_and_tensors():
    images = torch.zeros(3, 3, 8, 8)
    fig = prediction_grid(images, [0, 1, 2], [0, 2, 2], ["a", "b", "c"], ncols=2, mean=[0.5] * 3, std=[0.5] * 3)
    titled = [ax for ax in fig.axes if ax.get_title()]
    assert [(ax.get_title(), ax.title.get_color()) for ax in titled] == [
        ("a / a", "green"), ("b / c", "red"), ("c / c", "green")]
    assert titled[0].get_images()[0].get_array().shape == (8, 8, 3)


def test_lr_finder_plot_marks_the_suggestion():
    fig = lr_finder_plot([1e-5, 1e-4, 1e-3, 1e-2], [2.3, 2.2, 1.5, 4.0], suggestion=1e-3)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and dashed_vlines(ax) == [1e-3]
    assert "1.0e-03" in ax.get_legend().get_texts()[0].get_text()
