"""The LR range test (tl_helpers.lr_finder): it changes neither the model nor the training after it, and the
suggestion lies below the loss minimum."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from test_train import CPU, tiny_setup, without_seconds
from tl_helpers.lr_finder import lr_range_test, suggest_lr
from tl_helpers.train import fit


def test_lr_range_test_restores_the_model_and_suggests_a_rate():
    net, loader, _ = tiny_setup()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.eval()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    lrs, losses = lr_range_test(net, loader, opt, start_lr=1e-4, end_lr=10, steps=30, device=CPU)
    assert 2 <= len(lrs) == len(losses) <= 30
    assert lrs == sorted(lrs) and lrs[0] == pytest.approx(1e-4)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    assert not net.training and opt.param_groups[0]["lr"] == 0.01 and not opt.state
    lr = suggest_lr(lrs, losses)
    assert lrs[0] <= lr <= lrs[-1]
    assert suggest_lr(lrs, losses, "min10") == pytest.approx(lrs[int(np.argmin(losses))] / 10)
    lrs2, _ = lr_range_test(net, loader, lambda ps: torch.optim.Adam(ps), steps=5, device=CPU)
    assert len(lrs2) >= 2


def test_suggest_lr_looks_only_below_the_loss_minimum():
    lrs = [1e-5, 1e-4, 1e-3, 1e-2, 1e-1]
    losses = [2.0, 1.95, 1.9, 1.0, 3.0]   # the loss falls fastest into its minimum (chapter 05's shape)
    assert suggest_lr(lrs, losses) == 1e-3 < lrs[int(np.argmin(losses))]
    with pytest.raises(ValueError, match="smaller start_lr"):
        suggest_lr(lrs, [0.5, 1.0, 2.0, 3.0, 4.0])


def test_training_after_an_lr_range_test_equals_training_without_it():
    def train(range_test_first: bool):
        net, loader, val = tiny_setup()
        net = nn.Sequential(*net[:-1], nn.Dropout(0.3), net[-1])   # dropout draws from the global generator
        torch.manual_seed(1)
        np.random.seed(1)
        random.seed(1)
        if range_test_first:
            lr_range_test(net, loader, lambda ps: torch.optim.SGD(ps, lr=0.1), steps=6, device=CPU)
        opt = torch.optim.SGD(net.parameters(), lr=0.05)
        hist = fit(net, loader, val, opt, 2, device=CPU, progress=False)
        return net.state_dict(), without_seconds(hist), (torch.rand(1), np.random.rand(), random.random())

    (a, hist_a, draws_a), (b, hist_b, draws_b) = train(False), train(True)
    assert hist_a == hist_b and draws_a == draws_b
    assert all(torch.equal(a[k], b[k]) for k in a), "bit for bit"


def test_returned_curve_has_no_lag_where_a_moving_average_would():
    """On a short test (16 steps over 5 decades) a bias-corrected moving average (beta 0.9) trails the loss
    and moves the steepest point to a higher rate; the centred mean that lr_range_test returns does not."""
    import math

    from tl_helpers.lr_finder import smooth_centred, suggest_lr

    lrs = [1e-5 * 10 ** (5 * i / 15) for i in range(16)]
    # a loss that falls fastest at 1e-3 (index 6) and turns up after 1e-2
    raw = [2.0 - math.tanh(2.5 * (math.log10(lr) + 3)) + max(0.0, math.log10(lr) + 2) ** 2 for lr in lrs]
    avg, ema = 0.0, []
    for i, loss in enumerate(raw):
        avg = 0.9 * avg + 0.1 * loss
        ema.append(avg / (1 - 0.9 ** (i + 1)))
    truth = suggest_lr(lrs, raw)
    assert suggest_lr(lrs, smooth_centred(raw)) == truth
    assert suggest_lr(lrs, ema) > 2 * truth      # the old, lagging curve pointed at a rate several times higher
