"""The adaptation building blocks behave as their papers define them, and the chapter's checkers
accept the reference answers and turn down typical wrong ones, each with its own hint."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from tl_helpers.adaptation import (GradientReversal, adabn, coral, covariance, dann_coeff, grad_reverse, mmd,
                                   proxy_a_distance)
from tl_helpers.checks import adaptation as checks


def gaussian(n=300, d=8, shift=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) + shift


# --- MMD -------------------------------------------------------------------------------------------

def test_mmd_is_small_for_one_distribution_and_grows_with_a_mean_shift():
    same = mmd(gaussian(seed=0), gaussian(seed=1)).item()
    values = [mmd(gaussian(seed=0), gaussian(seed=1, shift=s)).item() for s in (0.25, 0.5, 1.0, 2.0)]
    assert 0 <= same < 0.05
    assert values[0] > same and all(b > a for a, b in zip(values, values[1:]))
    assert values[-1] > 20 * same


def test_mmd_is_zero_for_identical_batches_and_symmetric():
    a, b = gaussian(seed=0), gaussian(seed=1, shift=1.0)
    assert abs(mmd(a, a).item()) < 1e-6
    assert mmd(a, b).item() == pytest.approx(mmd(b, a).item(), rel=1e-5)


def test_mmd_has_a_gradient_that_pulls_the_target_towards_the_source():
    a, b = gaussian(seed=0), gaussian(seed=1, shift=1.0).requires_grad_()
    mmd(a, b).backward()
    assert b.grad.mean().item() > 0          # moving b down (towards a) lowers the loss


def test_mmd_rejects_unflattened_features():
    with pytest.raises(ValueError, match="flatten"):
        mmd(torch.zeros(4, 2, 3), torch.zeros(4, 2, 3))


# --- gradient reversal ---------------------------------------------------------------------------------

@pytest.mark.parametrize("coeff", [0.0, 0.3, 1.0, 5.0])
def test_gradient_reversal_is_identity_forward_and_flips_and_scales_the_gradient(coeff):
    x = torch.randn(5, 3, requires_grad=True)
    w = torch.randn(5, 3)
    y = grad_reverse(x, coeff)
    assert torch.equal(y, x)
    (y * w).sum().backward()
    assert torch.allclose(x.grad, -coeff * w)


def test_gradient_reversal_layer_uses_its_current_coefficient():
    layer = GradientReversal(1.0)
    layer.coeff = 0.25
    x = torch.ones(3, requires_grad=True)
    layer(x).sum().backward()
    assert torch.allclose(x.grad, torch.full((3,), -0.25))
    assert "coeff=0.25" in repr(layer)


def test_dann_coefficient_ramps_from_zero_to_one():
    values = [dann_coeff(p) for p in np.linspace(0, 1, 11)]
    assert values[0] == 0.0 and values[-1] > 0.99
    assert all(b > a for a, b in zip(values, values[1:]))


# --- CORAL -----------------------------------------------------------------------------------------------

def test_coral_is_zero_for_equal_covariances_whatever_the_means():
    a = gaussian(seed=0)
    assert coral(a, a + 3.0).item() == pytest.approx(0.0, abs=1e-6)
    assert coral(a, 2 * a).item() > 10 * coral(a, gaussian(seed=1)).item()


def test_coral_matches_its_formula():
    a, b = gaussian(seed=0, d=4), gaussian(seed=1, d=4) * 2
    expected = ((np.cov(a.numpy(), rowvar=False) - np.cov(b.numpy(), rowvar=False)) ** 2).sum() / (4 * 16)
    assert coral(a, b).item() == pytest.approx(expected, rel=1e-4)
    assert torch.allclose(covariance(a), torch.from_numpy(np.cov(a.numpy(), rowvar=False)).float(), atol=1e-5)


# --- AdaBN ------------------------------------------------------------------------------------------------

def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 5), nn.BatchNorm1d(5), nn.Linear(5, 2))


def test_adabn_changes_only_the_batchnorm_running_statistics():
    net = small_net()
    net.train()
    net(torch.randn(64, 3, 8, 8))                       # some "source" statistics
    before = copy.deepcopy(net.state_dict())
    target = torch.randn(200, 3, 8, 8) * 3 + 2
    adabn(net, target, batch_size=50)
    after = net.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"1.running_mean", "1.running_var", "1.num_batches_tracked",
                       "5.running_mean", "5.running_var", "5.num_batches_tracked"}
    assert not net.training
    assert net[1].momentum == 0.1                      # restored
    # the running mean is the target's mean over all batches, not a blend with the old one
    expected = net[0](target).mean(dim=(0, 2, 3))
    assert torch.allclose(net[1].running_mean, expected, atol=1e-4)


def test_adabn_measures_the_statistics_with_dropout_off():
    net = nn.Sequential(nn.Linear(4, 6), nn.Dropout(0.5), nn.BatchNorm1d(6))
    target = torch.randn(300, 4) + 2
    adabn(net, target, batch_size=300)                  # one batch: the exact mean and (unbiased) variance
    expected = net[0](target).detach()                  # what the BatchNorm sees in eval mode: no dropout
    assert torch.allclose(net[2].running_mean, expected.mean(0), atol=1e-5)
    assert torch.allclose(net[2].running_var, expected.var(0), atol=1e-4)


def test_adabn_accepts_a_loader_of_pairs_and_complains_without_batchnorm():
    net = small_net()
    loader = [(torch.randn(10, 3, 8, 8), torch.zeros(10)) for _ in range(3)]
    adabn(net, loader)
    assert net[1].num_batches_tracked.item() == 3
    with pytest.raises(ValueError, match="no BatchNorm"):
        adabn(nn.Linear(2, 2), torch.randn(4, 2))
    with pytest.raises(ValueError, match="no target batch"):
        adabn(small_net(), [])


# --- proxy A-distance ----------------------------------------------------------------------------

def test_proxy_a_distance_is_near_zero_for_one_distribution_and_near_two_for_separable_ones():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(500, 6)), rng.normal(size=(500, 6))
    assert abs(proxy_a_distance(a, b)) < 0.25
    assert proxy_a_distance(a, b + 4) > 1.9
    mid = proxy_a_distance(a, b + 0.5)
    assert 0.25 < mid < 1.9


def test_proxy_a_distance_takes_tensors_and_checks_shapes():
    a = torch.randn(100, 3)
    assert isinstance(proxy_a_distance(a, a + 5), float)
    with pytest.raises(ValueError, match="n x d"):
        proxy_a_distance(np.zeros((10, 3)), np.zeros((10, 4)))


# --- checkers -----------------------------------------------------------------------------------------

def coral_ref(s, t):
    d = s.shape[1]
    cs = torch.cov(s.T)
    ct = torch.cov(t.T)
    return ((cs - ct) ** 2).sum() / (4 * d * d)


def coral_uncentred(s, t):
    d = s.shape[1]
    return ((s.T @ s / (len(s) - 1) - t.T @ t / (len(t) - 1)) ** 2).sum() / (4 * d * d)


def coral_unscaled(s, t):
    return ((torch.cov(s.T) - torch.cov(t.T)) ** 2).sum()


def coral_norm(s, t):
    d = s.shape[1]
    return torch.linalg.norm(torch.cov(s.T) - torch.cov(t.T)) / (4 * d * d)


def coral_gram(s, t):
    d = s.shape[1]
    return ((torch.cov(s) - torch.cov(t)) ** 2).sum() / (4 * d * d)


def test_check_coral_accepts_the_reference(capsys):
    assert checks.check_coral(coral_ref)
    assert "✅" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, hint", [
    (coral_uncentred, "subtract"),
    (coral_unscaled, "4 d"),
    (coral_norm, "square"),
    (coral_gram, "d x d"),
    (lambda s, t: torch.tensor(0.0), "zero"),
    (lambda s, t: "coral", "number"),
])
def test_check_coral_turns_down_wrong_answers(wrong, hint, capsys):
    assert not checks.check_coral(wrong)
    out = capsys.readouterr().out
    assert "❌ Not yet" in out and hint in out


class ReverseRef(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, coeff):
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.coeff * grad, None


class ReverseNoSign(ReverseRef):
    @staticmethod
    def backward(ctx, grad):
        return ctx.coeff * grad, None


class ReverseNoScale(ReverseRef):
    @staticmethod
    def backward(ctx, grad):
        return -grad, None


def test_check_gradient_reversal_accepts_the_reference(capsys):
    assert checks.check_gradient_reversal(lambda x, c: ReverseRef.apply(x, c))
    assert "✅" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, hint", [
    (lambda x, c: ReverseNoSign.apply(x, c), "minus"),
    (lambda x, c: ReverseNoScale.apply(x, c), "coeff"),
    (lambda x, c: -c * x, "forward"),
    (lambda x, c: x.detach(), "detach"),
    (lambda x, c: x, "unchanged"),
])
def test_check_gradient_reversal_turns_down_wrong_answers(wrong, hint, capsys):
    assert not checks.check_gradient_reversal(wrong)
    out = capsys.readouterr().out
    assert "❌ Not yet" in out and hint in out


def adabn_ref(model, images):
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        for chunk in images.split(100):
            model(chunk)
    model.eval()
    return model


def adabn_momentum(model, images):
    model.train()
    with torch.no_grad():
        for chunk in images.split(100):
            model(chunk)
    model.eval()
    return model


def adabn_eval(model, images):
    model.eval()
    with torch.no_grad():
        model(images)
    return model


def adabn_trains(model, images):
    adabn_ref(model, images)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
    return model


def adabn_left_training(model, images):
    adabn_ref(model, images)
    model.train()
    return model


def test_check_adabn_accepts_the_reference_and_the_helper(capsys):
    assert checks.check_adabn(adabn_ref)
    assert checks.check_adabn(lambda m, x: adabn(m, x))
    assert capsys.readouterr().out.count("✅") == 2


@pytest.mark.parametrize("wrong, hint", [
    (adabn_momentum, "momentum"),
    (adabn_eval, "train mode"),
    (adabn_trains, "weights"),
    (adabn_left_training, "eval"),
    (lambda m, x: None, "return"),
])
def test_check_adabn_turns_down_wrong_answers(wrong, hint, capsys):
    assert not checks.check_adabn(wrong)
    out = capsys.readouterr().out
    assert "❌ Not yet" in out and hint in out


def test_exercises_are_listed_with_their_checkers():
    assert list(checks.EXERCISES) == ["09.1", "09.2", "09.3", "09.4"]
    assert checks.EXERCISES["09.2"].checker is checks.check_batchnorm_predictions
    assert checks.EXERCISES["09.1"].checker is checks.check_coral


# --- the training loop, its BatchNorm modes and the grid -------------------------------------------------

@pytest.fixture(scope="module")
def tiny_pair():
    from tl_helpers.domains import domain_pair
    return domain_pair("mnist->mnistm", n_source=160, n_target=200, seed=0)


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_train_uda_is_seeded_and_its_modes_differ(tiny_pair):
    from tl_helpers.adaptation import train_uda
    a = train_uda(tiny_pair, "none", 0, "source", seed=1, epochs=1, batch_size=32)
    b = train_uda(tiny_pair, "none", 0, "source", seed=1, epochs=1, batch_size=32)
    assert _same(a, b) and not a.training
    joint = train_uda(tiny_pair, "none", 0, "joint", seed=1, epochs=1, batch_size=32)
    separate = train_uda(tiny_pair, "none", 0, "separate", seed=1, epochs=1, batch_size=32)
    # the target batches reach BatchNorm: its running statistics differ from source only's
    bn = "features.1.running_mean"
    assert not torch.equal(a.state_dict()[bn], joint.state_dict()[bn])
    assert not torch.equal(joint.state_dict()[bn], separate.state_dict()[bn])


def test_train_uda_never_reads_the_target_labels(tiny_pair):
    from tl_helpers.adaptation import train_uda
    shuffled = dict(tiny_pair)
    X, y = tiny_pair["target_train"]
    shuffled["target_train"] = (X, y.flip(0))
    for method in ("mmd", "dann"):
        a = train_uda(tiny_pair, method, 1.0, "joint", seed=0, epochs=1, batch_size=32)
        b = train_uda(shuffled, method, 1.0, "joint", seed=0, epochs=1, batch_size=32)
        assert _same(a, b)


def test_train_uda_weight_zero_is_the_same_run_for_every_method(tiny_pair):
    from tl_helpers.adaptation import train_uda
    a = train_uda(tiny_pair, "coral", 0.0, "separate", seed=2, epochs=1, batch_size=32)
    b = train_uda(tiny_pair, "none", 0.0, "separate", seed=2, epochs=1, batch_size=32)
    assert _same(a, b)
    c = train_uda(tiny_pair, "coral", 10.0, "separate", seed=2, epochs=1, batch_size=32)
    assert not _same(a, c)


def test_train_uda_errors_name_the_fix(tiny_pair):
    from tl_helpers.adaptation import alignment_loss, train_uda
    with pytest.raises(ValueError, match="nothing to align"):
        train_uda(tiny_pair, "mmd", 1.0, "source")
    with pytest.raises(ValueError, match="unknown bn"):
        train_uda(tiny_pair, "mmd", 1.0, "shared")
    with pytest.raises(ValueError, match="unknown method"):
        alignment_loss("tca", torch.zeros(4, 2), torch.zeros(4, 2))


def test_dev_risk_is_finite_and_grows_with_a_worse_model(tiny_pair):
    from tl_helpers.adaptation import dev_risk, train_uda
    trained = train_uda(tiny_pair, "none", 0, "joint", seed=0, epochs=2, batch_size=32)
    untrained = train_uda(tiny_pair, "none", 0, "joint", seed=0, epochs=0, batch_size=32)
    Xs, Xt = tiny_pair["source_train"][0], tiny_pair["target_train"][0]
    good, bad = dev_risk(trained, Xs, tiny_pair["source_val"], Xt), dev_risk(untrained, Xs, tiny_pair["source_val"], Xt)
    assert np.isfinite(good) and np.isfinite(bad) and good < bad


def test_uda_grid_reads_a_matching_store_and_ignores_another(tiny_pair, monkeypatch):
    from tl_helpers import adaptation
    calls = []

    def fake_cell(pair, settings, seed, method, bn, weight):
        calls.append((seed, method, bn, weight))
        return {"seed": seed, "method": method, "bn": bn, "weight": weight, "target_test": 0.5}

    monkeypatch.setattr(adaptation, "uda_cell", fake_cell)
    settings = {**adaptation.UDA_SETTINGS, "weights": [0, 1], "methods": ["mmd"], "bn_modes": ["joint"]}
    cells = adaptation.uda_grid(settings, [0], pair=tiny_pair)
    assert len(calls) == len(cells) == 4
    store = {"settings": settings, "cells": cells}
    calls.clear()
    assert adaptation.uda_grid(settings, [0], store=store, pair=tiny_pair) == cells and not calls
    other = {**settings, "epochs": settings["epochs"] + 1}          # a changed setting recomputes
    adaptation.uda_grid(other, [0], store=store, pair=tiny_pair)
    assert len(calls) == 4


def test_check_batchnorm_predictions(tiny_pair, capsys):
    from tl_helpers.adaptation import train_uda
    model = train_uda(tiny_pair, "none", 0, "source", seed=0, epochs=2, batch_size=32)
    before = copy.deepcopy(model.state_dict())
    answers = [(a, b) for a in ("higher", "same", "lower") for b in ("higher", "same", "lower")]
    verdicts = [checks.check_batchnorm_predictions(a, b, model, tiny_pair) for a, b in answers]
    out = capsys.readouterr().out
    assert sum(verdicts) == 1 and "AdaBN" in out                     # exactly one pair of answers is right
    assert not checks.check_batchnorm_predictions("bigger", "same", model, tiny_pair)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()) and not model.training


def test_uda_cell_scores_a_run_with_and_without_target_labels(tiny_pair):
    from tl_helpers.adaptation import UDA_SETTINGS, uda_cell
    cell = uda_cell(tiny_pair, {**UDA_SETTINGS, "epochs": 1, "batch_size": 32}, 0, "coral", "separate", 1.0)
    assert {"source_val", "target_test", "target_test_adabn", "pad", "pad_own", "dev"} <= set(cell)
    assert all(0 <= cell[k] <= 1 for k in ("source_val", "target_val", "target_test", "target_test_adabn"))


def test_the_stored_grids_match_the_chapter_settings():
    """benchmarks/adaptation_*.json hold every arm of every seed with today's settings: change a setting and this
    fails until `make bench-adaptation` has rerun the grid (the chapter would otherwise train it, slowly)."""
    import json
    from pathlib import Path

    from tl_helpers.adaptation import UDA_SETTINGS, uda_arms
    root = Path(__file__).resolve().parents[1] / "benchmarks"
    # the seeds chapter 09 reads by default (N_SEEDS = 10), and the 5 of the pair where its rule was chosen
    for name, pair, seeds in (("adaptation_results.json", "mnist->mnistm", 10),
                              ("adaptation_selection.json", "synthetic->mnist", 5)):
        stored = json.loads((root / name).read_text())
        assert stored["settings"] == {**UDA_SETTINGS, "pair": pair}, f"{name}: rerun python -m benchmarks.adaptation"
        have = {(c["seed"], c["method"], c["bn"], c["weight"]) for c in stored["cells"]}
        assert have == {(s, *arm) for s in range(seeds) for arm in uda_arms(stored["settings"])}
