"""The interactive explorers: they build headless, their callbacks re-render, nothing leaks into the
cell's own output (so nbval keeps passing), and the learner's model is never changed."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import nbformat
import pytest
import torch
from nbformat.v4 import new_code_cell, new_notebook
from torch import nn

from tl_helpers.widgets import (calibration_summary, prediction_browser, temperature_explorer, unfreeze_explorer,
                                unfreeze_summary)


@pytest.fixture(autouse=True)
def no_figures_before():
    """Each test starts with no open figure, so that its own check (``plt.get_fignums() == []``) sees only what
    the widget left open, whatever ran before it."""
    plt.close("all")


def small_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 3))


def texts(ui):
    return [o["data"]["text/plain"] for o in ui.children[-1].outputs]


def test_unfreeze_explorer_updates_and_leaves_the_model_alone(capsys):
    model = small_model()
    ui = unfreeze_explorer(model, blocks=1)
    slider = ui.children[0]
    assert (slider.min, slider.max, slider.value) == (0, 6, 1)
    assert texts(ui)[0].startswith("top 1 of 6 blocks unfrozen: 15 of ")
    slider.value = 6
    assert texts(ui)[0].startswith("top 6 of 6 blocks unfrozen: ") and "(100.0%)" in texts(ui)[0]
    slider.value = 0
    assert "unfrozen: 0 of" in texts(ui)[0]
    assert all(p.requires_grad for p in model.parameters()) and model[1].training
    assert texts(ui)[0] == unfreeze_summary(model, 0)  # the widget shows exactly the static call
    assert capsys.readouterr().out == "" and plt.get_fignums() == []


def test_unfreeze_explorer_on_efficientnet_lite0():
    from tl_helpers.models import load_pretrained

    ui = unfreeze_explorer(load_pretrained(weights=False).model)
    assert ui.children[0].max == 19
    ui.children[0].value = 3
    assert "blocks.15" in texts(ui)[0] and "top 3 of 19 blocks" in texts(ui)[0]


def test_prediction_browser_filters_and_pages(capsys):
    images = [torch.rand(3, 16, 16) for _ in range(30)]
    y_true = [i % 3 for i in range(30)]
    y_pred = [0 if i < 10 else i % 3 for i in range(30)]
    ui = prediction_browser(images, y_true, torch.tensor(y_pred), ["cat", "dog", "owl"], per_page=8)
    show, page = ui.children[0].children
    out = ui.children[1]
    assert texts(ui)[0] == "all: 30 images, 6 misclassified; page 1 of 4"
    assert "image/png" in out.outputs[1]["data"]
    page.value = 4
    assert texts(ui)[0].endswith("page 4 of 4")
    show.value = "misclassified"
    assert texts(ui)[0] == "misclassified: 6 images, 6 misclassified; page 1 of 1" and page.value == 1
    show.value = "true class: owl"
    assert texts(ui)[0].startswith("true class: owl: 10 images")
    assert capsys.readouterr().out == "" and plt.get_fignums() == []


def test_prediction_browser_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="as many images"):
        prediction_browser([torch.rand(3, 4, 4)], [0, 1], [0, 1], ["a", "b"])


def test_temperature_explorer_changes_the_ece(capsys):
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (100,), generator=g)
    logits = torch.randn(100, 4, generator=g)
    logits[torch.arange(100), y] += 2.0
    logits *= 4  # overconfident
    ui = temperature_explorer(logits, y)
    slider = ui.children[0]
    first = texts(ui)[0]
    assert first == calibration_summary(logits, y, 1.0)
    slider.value = 3.0
    assert texts(ui)[0] == calibration_summary(logits, y, 3.0) != first
    assert "image/png" in ui.children[1].outputs[1]["data"]
    assert capsys.readouterr().out == "" and plt.get_fignums() == []


WIDGET_NOTEBOOK = [
    "import torch\nfrom torch import nn\nfrom tl_helpers.widgets import unfreeze_explorer, prediction_browser, "
    "temperature_explorer, unfreeze_summary\ntorch.manual_seed(0)\n"
    "model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 3))\n"
    "logits, y = torch.randn(40, 3) * 3, torch.arange(40) % 3",
    "unfreeze_explorer(model, blocks=2)",
    "print(unfreeze_summary(model, 2))",
    "prediction_browser([torch.rand(3, 8, 8) for _ in range(40)], y, logits.argmax(1), ['a', 'b', 'c'])",
    "temperature_explorer(logits, y)",
    "print('after the widgets')",
]


FIXTURE = Path(__file__).resolve().parent / "notebooks" / "widgets.ipynb"


def write_fixture(path: Path = FIXTURE) -> None:
    """Execute ``WIDGET_NOTEBOOK`` with nbconvert (which stores the widget state, as JupyterLab does) and save it:
    ``python tests/test_widgets.py`` after changing the widgets or the cells above."""
    from nbconvert.preprocessors import ExecutePreprocessor

    nb = new_notebook(cells=[new_code_cell(src) for src in WIDGET_NOTEBOOK])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path.parent.mkdir(exist_ok=True)
    ExecutePreprocessor(timeout=300, kernel_name="python3").preprocess(nb, {"metadata": {"path": str(path.parent)}})
    nbformat.write(nb, path)


def test_the_widget_notebook_stores_the_widgets_and_nothing_else():
    """The committed fixture, executed by nbconvert, shows each widget as a widget and nothing else. `make test`
    runs nbval on it like a chapter (``pytest tests --nbval``: nbval does not know about Output widgets, so
    stored and rerun outputs must still agree); it was once a test that executed the notebook twice (30 s)."""
    nb = nbformat.read(FIXTURE, as_version=4)
    assert [cell.source for cell in nb.cells] == WIDGET_NOTEBOOK, "the fixture is stale: python tests/test_widgets.py"
    for index in (1, 3, 4):  # each widget cell shows the widget and nothing else
        outputs = nb.cells[index].outputs
        assert len(outputs) == 1 and "application/vnd.jupyter.widget-view+json" in outputs[0]["data"]
    assert nb.cells[5].outputs[0]["text"] == "after the widgets\n"
    assert nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"], "the widget state is stored"


if __name__ == "__main__":
    write_fixture()
    print(f"wrote {FIXTURE.relative_to(Path.cwd()) if FIXTURE.is_relative_to(Path.cwd()) else FIXTURE.name}")
