"""Interactive explorers (ipywidgets): move a slider, watch the model, the predictions or the calibration change.

Each explorer wraps a plain function that a notebook also calls statically, so the chapter reads well
in the book and under nbval. The slider callbacks write the Output widget's ``outputs`` directly
instead of printing inside ``with output:`` (what ``interact`` and ``interactive_output`` do):
printed output would also reach the cell's own outputs in a headless run (nbval), and the notebook
would stop matching its stored outputs. The figures are closed after rendering, for the same reason.

>>> from torch import nn
>>> from tl_helpers.widgets import unfreeze_explorer
>>> ui = unfreeze_explorer(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), blocks=1)
>>> ui.children[0].value, ui.children[1].outputs[0]["data"]["text/plain"].splitlines()[0]
(1, 'top 1 of 3 blocks unfrozen: 10 of 30 parameters trainable (33.3%)')
"""

from __future__ import annotations

import base64
import copy
import html
import io
from collections.abc import Sequence

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from tl_helpers.evaluate import expected_calibration_error, temperature_scale
from tl_helpers.plots import prediction_grid, reliability_diagram
from tl_helpers.surgery import freeze, model_blocks, trainable_table, unfreeze
from tl_helpers.train import format_table


def _text_output(text: str) -> dict:
    """A display_data output showing ``text`` as preformatted HTML (plain text for other front ends)."""
    return {"output_type": "display_data", "metadata": {},
            "data": {"text/plain": text, "text/html": f"<pre>{html.escape(text)}</pre>"}}


def _figure_output(fig: Figure, dpi: int = 80) -> dict:
    """A display_data output holding ``fig`` as a PNG; the figure is closed so it is not shown twice."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return {"output_type": "display_data", "metadata": {},
            "data": {"image/png": base64.b64encode(buffer.getvalue()).decode("ascii"), "text/plain": "<Figure>"}}


def unfreeze_summary(model: nn.Module, blocks: int) -> str:
    """Text of what training the top ``blocks`` stages of :func:`model_blocks` means: a headline and a table.

    Works on a copy; ``model`` is not changed.

    >>> print(unfreeze_summary(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1)), 1))
    top 1 of 2 blocks unfrozen: 3 of 9 parameters trainable (33.3%)
    name   params  trainable  frozen
    0           6          0       6
    1           3          3       0
    total       9          3       6
    """
    work = unfreeze(freeze(copy.deepcopy(model)), last=blocks) if blocks else freeze(copy.deepcopy(model))
    return _summary(work, blocks)


def _summary(model: nn.Module, blocks: int) -> str:
    rows = trainable_table(model)
    total = sum(r["params"] for r in rows)
    trainable = sum(r["trainable"] for r in rows)
    head = (f"top {blocks} of {len(rows)} blocks unfrozen: {trainable:,} of {total:,} parameters trainable "
            f"({trainable / max(total, 1):.1%})")
    return head + "\n" + format_table(rows)


def unfreeze_explorer(model: nn.Module, blocks: int = 2) -> widgets.VBox:
    """A slider "unfrozen blocks" (0 to all stages of :func:`model_blocks`) and the live trainable table.

    The model is copied once; the learner's model is never changed. The static equivalent is
    ``print(unfreeze_summary(model, k))``, or ``freeze``, ``unfreeze(model, last=k)`` and
    ``format_table(trainable_table(model))``. Returns the widget (a notebook cell displays it).
    """
    work = freeze(copy.deepcopy(model))
    n_stages = len(model_blocks(work))
    slider = widgets.IntSlider(value=min(max(blocks, 0), n_stages), min=0, max=n_stages,
                               description="unfrozen blocks", style={"description_width": "initial"})
    out = widgets.Output()

    def update(change=None) -> None:
        k = slider.value
        freeze(work)
        if k:
            unfreeze(work, last=k)
        out.outputs = (_text_output(_summary(work, k)),)

    slider.observe(update, names="value")
    update()
    return widgets.VBox([slider, out])


def prediction_browser(images: Sequence, y_true, y_pred, classes: Sequence[str], per_page: int = 12,
                       ncols: int = 6, mean: Sequence[float] | None = None,
                       std: Sequence[float] | None = None) -> widgets.VBox:
    """Browse predictions page by page: a "show" menu (all / misclassified / one true class) and a page slider.

    ``images`` are PIL images, HWC arrays or CHW tensors (give ``mean``/``std`` for normalised
    tensors). Each page is :func:`tl_helpers.plots.prediction_grid` of the chosen images, the static
    call to put after the widget. Returns the widget.
    """
    y_true = [int(v) for v in (y_true.tolist() if isinstance(y_true, torch.Tensor) else y_true)]
    y_pred = [int(v) for v in (y_pred.tolist() if isinstance(y_pred, torch.Tensor) else y_pred)]
    if not len(images) == len(y_true) == len(y_pred):
        raise ValueError(f"prediction_browser() needs as many images ({len(images)}), labels ({len(y_true)}) "
                         f"and predictions ({len(y_pred)}).")
    choices = ["all", "misclassified"] + [f"true class: {c}" for c in classes]
    show = widgets.Dropdown(options=choices, value="all", description="show")
    page = widgets.IntSlider(value=1, min=1, max=1, description="page")
    out = widgets.Output()

    def selected() -> list[int]:
        if show.value == "all":
            return list(range(len(y_true)))
        if show.value == "misclassified":
            return [i for i, (t, p) in enumerate(zip(y_true, y_pred)) if t != p]
        cls = list(classes).index(show.value.removeprefix("true class: "))
        return [i for i, t in enumerate(y_true) if t == cls]

    def update(change=None) -> None:
        idx = selected()
        pages = max(1, -(-len(idx) // per_page))
        if page.max != pages:
            page.max = pages  # may clip page.value, which calls update again: render only once
        chunk = idx[(page.value - 1) * per_page: page.value * per_page]
        wrong = sum(y_true[i] != y_pred[i] for i in idx)
        head = f"{show.value}: {len(idx)} images, {wrong} misclassified; page {page.value} of {pages}"
        if not chunk:
            out.outputs = (_text_output(head + "\n(nothing to show)"),)
            return
        fig = prediction_grid([images[i] for i in chunk], [y_true[i] for i in chunk], [y_pred[i] for i in chunk],
                              classes, ncols=ncols, mean=mean, std=std)
        out.outputs = (_text_output(head), _figure_output(fig))

    def on_show(change) -> None:
        if page.value != 1:
            page.value = 1  # the page observer renders
        else:
            update()

    show.observe(on_show, names="value")
    page.observe(update, names="value")
    update()
    return widgets.VBox([widgets.HBox([show, page]), out])


def calibration_summary(logits, y_true, T: float, n_bins: int = 10) -> str:
    """One line: ECE and accuracy at temperature ``T``, against T = 1.

    >>> calibration_summary(torch.tensor([[4.0, 0.0], [0.0, 4.0], [4.0, 0.0]]), [0, 1, 1], 2.0)
    'T = 2.00: ECE 0.214 (0.315 at T = 1), mean confidence 0.88, accuracy 66.7% (T never changes it)'
    """
    logits = torch.as_tensor(logits, dtype=torch.float32)
    probs = temperature_scale(logits, T).softmax(dim=1)
    labels = torch.as_tensor(np.asarray(y_true)).long()
    acc = float((probs.argmax(dim=1) == labels).float().mean())
    base = expected_calibration_error(logits.softmax(dim=1), labels, n_bins)
    ece = expected_calibration_error(probs, labels, n_bins)
    return (f"T = {T:.2f}: ECE {ece:.3f} ({base:.3f} at T = 1), mean confidence "
            f"{float(probs.max(dim=1).values.mean()):.2f}, accuracy {acc:.1%} (T never changes it)")


def temperature_explorer(logits, y_true, T: float = 1.0, n_bins: int = 10, t_max: float = 5.0) -> widgets.VBox:
    """A temperature slider and the live reliability diagram of ``softmax(logits / T)``.

    The static equivalent at one temperature: ``reliability_diagram(temperature_scale(logits, T)
    .softmax(dim=1), y_true)`` (and :func:`calibration_summary`). Returns the widget.
    """
    logits = torch.as_tensor(logits, dtype=torch.float32).detach().cpu()
    labels = torch.as_tensor(np.asarray(y_true)).long()
    slider = widgets.FloatSlider(value=T, min=0.25, max=t_max, step=0.05, description="temperature T",
                                 readout_format=".2f", continuous_update=False,
                                 style={"description_width": "initial"})
    out = widgets.Output()

    def update(change=None) -> None:
        t = slider.value
        fig = reliability_diagram(temperature_scale(logits, t).softmax(dim=1), labels, n_bins)
        out.outputs = (_text_output(calibration_summary(logits, labels, t, n_bins)), _figure_output(fig))

    slider.observe(update, names="value")
    update()
    return widgets.VBox([slider, out])
