"""The training loop (tl_helpers.train): frozen layers stay frozen, histories continue, NaN is caught."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tl_helpers.surgery import freeze, set_bn_eval, train_mode
from tl_helpers.train import History, evaluate_loader, fit, train_one_epoch

CPU = torch.device("cpu")


def tiny_setup(seed: int = 0, batch_norm: bool = True):
    """A small conv net, a learnable 2-class problem and a seeded, shuffled loader."""
    torch.manual_seed(seed)
    X = torch.randn(64, 3, 8, 8)
    y = (X[:, 0].mean((1, 2)) > 0).long()
    norm = nn.BatchNorm2d(4) if batch_norm else nn.Identity()
    net = nn.Sequential(nn.Conv2d(3, 4, 3), norm, nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 2))
    loader = DataLoader(TensorDataset(X, y), batch_size=16, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    val = DataLoader(TensorDataset(X[:32], y[:32]), batch_size=16)
    return net, loader, val


def without_seconds(history: History) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history.rows]


def test_frozen_weights_and_batchnorm_statistics_stay_identical():
    net, loader, val = tiny_setup()
    train_mode(net)(next(iter(loader))[0] + 1)  # move the BN statistics away from their init first
    freeze(net, first=2)  # Conv2d + BatchNorm2d
    frozen = {k: v.clone() for k, v in net.state_dict().items() if k.startswith(("0.", "1."))}
    head = net[4].weight.clone()
    optimizer = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    fit(net, loader, val, optimizer, 2, device=CPU, progress=False)
    net.train()  # a learner calling train() by habit between phases
    train_one_epoch(net, loader, optimizer, nn.CrossEntropyLoss(), CPU)
    for key, value in frozen.items():
        assert torch.equal(net.state_dict()[key], value), key
    assert "1.running_mean" in frozen and "1.num_batches_tracked" in frozen
    assert not torch.equal(net[4].weight, head)


def test_fit_history_rows_and_phases_continue():
    net, loader, val = tiny_setup()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    hist = fit(net, loader, val, opt, 2, device=CPU, phase="head", progress=False)
    assert set(hist.rows[0]) == {"phase", "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"}
    fit(net, loader, val, opt, 3, device=CPU, phase="finetune", history=hist, progress=False)
    assert hist.column("phase") == ["head"] * 2 + ["finetune"] * 3
    assert hist.column("epoch") == [1, 2, 3, 4, 5]
    assert hist.best()["val_acc"] == max(hist.column("val_acc"))
    assert hist.rows[-1]["train_loss"] < hist.rows[0]["train_loss"]
    assert History.from_dict(hist.to_dict()) == hist
    assert len(hist.phase("finetune")) == 3
    assert "finetune" in hist.table()


def test_early_stopping_with_patience(tmp_path):
    net, loader, val = tiny_setup()
    set_bn_eval(net)  # with lr=0 and fixed BatchNorm statistics nothing can improve
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    hist = fit(net, loader, val, opt, 10, device=CPU, patience=2, progress=False, checkpoint=tmp_path / "c.pt")
    assert len(hist) == 3
    again = fit(net, loader, val, opt, 10, device=CPU, patience=2, progress=False,
                checkpoint=tmp_path / "c.pt", resume=True)
    assert len(again) == 3  # a stopped run stays stopped


def test_restore_best_without_checkpoint():
    net, loader, val = tiny_setup()
    opt = torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9)
    hist = fit(net, loader, val, opt, 4, device=CPU, progress=False, restore_best=True)
    _, acc = evaluate_loader(net, val, nn.CrossEntropyLoss(), CPU)
    assert acc == pytest.approx(hist.best()["val_acc"])


def test_nan_inputs_raise_a_helpful_error():
    net, loader, val = tiny_setup()
    X, y = loader.dataset.tensors
    X = X.clone()
    X[5, 0, 0, 0] = float("nan")
    bad = DataLoader(TensorDataset(X, y), batch_size=16)
    with pytest.raises(FloatingPointError, match="inputs .* NaN"):
        fit(net, bad, val, torch.optim.SGD(net.parameters(), lr=0.1), 1, device=CPU, progress=False)


def test_exploding_learning_rate_raises_a_helpful_error():
    net, loader, val = tiny_setup(batch_norm=False)
    net = nn.Sequential(*net[:-1], nn.Linear(4 * 36, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(net.parameters(), lr=1e6, momentum=0.9)
    with pytest.raises(FloatingPointError, match="learning rate"):
        fit(net, loader, val, opt, 5, device=CPU, progress=False)


def test_history_best_uses_min_for_losses():
    h = History([{"val_loss": 0.3, "val_acc": 0.5}, {"val_loss": 0.2, "val_acc": 0.4},
                 {"val_loss": math.nan, "val_acc": math.nan}])
    assert h.best()["val_acc"] == 0.5 and h.best("val_loss")["val_loss"] == 0.2
    with pytest.raises(ValueError):
        History().best()


def test_gradient_accumulation_takes_the_same_steps_with_batchnorm_in_eval_mode():
    runs = []
    for accumulate in (1, 2, 4):
        net, loader, val = tiny_setup()
        set_bn_eval(net)  # no layer mixes the samples of a batch: the chunks' gradients add up to the batch's
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        hist = fit(net, loader, val, opt, 2, device=CPU, progress=False, accumulate=accumulate)
        runs.append((net.state_dict(), hist))
    (ref, ref_hist), *others = runs
    for state, hist in others:
        for key, value in ref.items():
            assert torch.allclose(state[key].float(), value.float(), atol=1e-5), key
        assert hist.column("train_acc") == ref_hist.column("train_acc")
        assert np.allclose(hist.column("train_loss"), ref_hist.column("train_loss"), atol=1e-5)
    net, loader, _ = tiny_setup()
    with pytest.raises(ValueError, match="accumulate"):
        fit(net, loader, None, torch.optim.SGD(net.parameters(), lr=0.1), 1, device=CPU, progress=False, accumulate=0)
