"""The L2-SP penalty (zero at the source, gradient alpha * (w - w_source)), the distance from the source weights,
and the checkers of its chapter (copying layers, the paired t-interval, the prediction checked against the
chapter's sweep, the decoupled L2-SP step)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from tl_helpers.checks import what_transfers as wt
from tl_helpers.regularise import l2_sp_penalty, source_snapshot, weight_distance


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


def test_zero_at_the_source_weights():
    model = net()
    source = source_snapshot(model, ["0"])
    assert sorted(source) == ["0.bias", "0.weight"]
    assert float(l2_sp_penalty(model, source, alpha=1.0).detach()) == 0.0


def test_gradient_is_alpha_times_distance_and_head_gets_beta():
    model = net()
    source = source_snapshot(model, ["0"])
    with torch.no_grad():
        model[0].weight.add_(0.5)
    alpha, beta = 0.3, 0.1
    penalty = l2_sp_penalty(model, source, alpha, beta)
    penalty.backward()
    assert torch.allclose(model[0].weight.grad, alpha * (model[0].weight - source["0.weight"]))
    assert torch.allclose(model[2].weight.grad, beta * model[2].weight)
    expected = alpha / 2 * 0.25 * model[0].weight.numel() + beta / 2 * sum(
        float((p ** 2).sum().detach()) for p in model[2].parameters())
    assert math.isclose(float(penalty.detach()), expected, rel_tol=1e-5)


def test_a_source_of_zeros_is_plain_weight_decay_and_frozen_is_skipped():
    model = net()
    zeros = {k: torch.zeros_like(v) for k, v in source_snapshot(model).items()}
    l2 = sum(float((p ** 2).sum().detach()) for p in model.parameters())
    assert math.isclose(float(l2_sp_penalty(model, zeros, alpha=2.0).detach()), l2, rel_tol=1e-5)
    model[0].requires_grad_(False)
    frozen_part = sum(float((p ** 2).sum().detach()) for p in model[0].parameters())
    assert math.isclose(float(l2_sp_penalty(model, zeros, alpha=2.0).detach()), l2 - frozen_part, rel_tol=1e-5)


def test_snapshot_is_a_copy_and_unknown_names_fail():
    model = net()
    source = source_snapshot(model, ["0"])
    with torch.no_grad():
        model[0].weight.add_(1.0)
    assert float(l2_sp_penalty(model, source, alpha=1.0).detach()) > 0
    with pytest.raises(KeyError, match="does not have"):
        l2_sp_penalty(model, {"5.weight": torch.zeros(1)}, alpha=1.0)


# --- the chapter's checkers: reference solutions pass, typical mistakes fail with their own hint ------

def copy_first_k(source, target, k):
    for (_, s), (_, t) in list(zip(source.named_children(), target.named_children()))[:k]:
        t.load_state_dict(s.state_dict())
    return target


def copy_one_too_many(source, target, k):
    return copy_first_k(source, target, k + 1)


def share_modules(source, target, k):
    for name, module in list(source.named_children())[:k]:
        setattr(target, name, module)
    return target


def pull_towards_source(model, source, lr, alpha, beta):
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad:
                p -= lr * (alpha * (p - source[n]) if n in source else beta * p)


def pull_frozen_too(model, source, lr, alpha, beta):
    with torch.no_grad():
        for n, p in model.named_parameters():
            p -= lr * (alpha * (p - source[n]) if n in source else beta * p)


def pull_to_zero(model, source, lr, alpha, beta):
    pull_towards_source(model, {k: torch.zeros_like(v) for k, v in source.items()}, lr, alpha, beta)


def pull_away(model, source, lr, alpha, beta):
    pull_towards_source(model, source, -lr, alpha, -beta)


def no_head(model, source, lr, alpha, beta):
    pull_towards_source(model, source, lr, alpha, 0.0)


def outside_no_grad(model, source, lr, alpha, beta):
    for n, p in model.named_parameters():
        if p.requires_grad and n in source:
            p -= lr * alpha * (p - source[n])


def paired_interval(a, b, level=0.95):
    from scipy import stats
    d = np.asarray(a) - np.asarray(b)
    half = stats.t.ppf(0.5 + level / 2, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    return d.mean(), d.mean() - half, d.mean() + half


def z_interval(a, b, level=0.95):
    d = np.asarray(a) - np.asarray(b)
    half = 1.96 * d.std(ddof=1) / math.sqrt(len(d))
    return d.mean(), d.mean() - half, d.mean() + half


def unpaired_interval(a, b, level=0.95):
    from scipy import stats
    a, b = np.asarray(a), np.asarray(b)
    half = stats.t.ppf(0.975, len(a) - 1) * math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    m = a.mean() - b.mean()
    return m, m - half, m + half


@pytest.mark.parametrize("checker,answer,expected", [
    (wt.check_copy_first_k, copy_first_k, "Correct"),
    (wt.check_copy_first_k, copy_one_too_many, "only the first"),
    (wt.check_copy_first_k, share_modules, "shares parameter tensors"),
    (wt.check_copy_first_k, 3, "expected a function"),
    (wt.check_pull_towards_source, pull_towards_source, "Correct"),
    (wt.check_pull_towards_source, pull_frozen_too, "frozen layer"),
    (wt.check_pull_towards_source, pull_to_zero, "plain weight decay"),
    (wt.check_pull_towards_source, pull_away, "away from the source"),
    (wt.check_pull_towards_source, no_head, "head did not move"),
    (wt.check_pull_towards_source, outside_no_grad, "torch.no_grad"),
    (wt.check_pull_towards_source, lambda *args: None, "no weight changed"),
    (wt.check_paired_interval, paired_interval, "Correct"),
    (wt.check_paired_interval, z_interval, "1.96"),
    (wt.check_paired_interval, unpaired_interval, "independent samples"),
    (wt.check_paired_interval, lambda a, b, level=0.95: paired_interval(a, b, 0.95), "ignores the level"),
    (wt.check_paired_interval, lambda a, b, level=0.95: 0.1, "expected a tuple"),
])
def test_checkers(checker, answer, expected, capsys):
    ok = checker(answer)
    out = capsys.readouterr().out
    assert expected in out, out
    assert ok == (expected == "Correct")


def test_weight_distance_is_the_euclidean_norm_of_the_change():
    model = net()
    source = source_snapshot(model, ["0"])
    assert weight_distance(model, source) == 0.0
    with torch.no_grad():
        model[0].weight.add_(1.0)                       # 12 weights, each 1 away
        model[2].weight.add_(5.0)                       # not in the reference: ignored
    assert math.isclose(weight_distance(model, source), math.sqrt(12), rel_tol=1e-6)
    with pytest.raises(KeyError, match="does not have"):
        weight_distance(model, {"9.weight": torch.zeros(1)})


def _results(verdicts: dict[str, str]) -> dict:
    layers = {f"10: {name} - scratch": {"mean": {"ahead": 2.0, "tie": 0.1, "behind": -3.0}[v],
                                        "ci95": [-1.0, 1.0], "verdict": v} for name, v in verdicts.items()}
    return {"comparisons": {"layers": layers}}


TRUTH = {"AnB 1": "tie", "AnB 2": "tie", "AnB 3": "behind", "AnB 4": "behind", "AnB+ 4": "ahead"}


@pytest.mark.parametrize("frozen, finetuned, expected", [
    (["tie", "tie", "behind", "behind"], "ahead", "Correct"),
    (["tie", "tie", "tie", "behind"], "ahead", "1 of your 5 predictions did not hold"),
    (["Tie ", "tie", "behind", "behind"], "AHEAD", "Correct"),          # case and spaces do not matter
    (["tie", "tie", "behind"], "ahead", "a list of four words"),
    ("tie", "ahead", "a list of four words"),
    (["tie", "tie", "behind", "worse"], "ahead", "use one of the words"),
    (["tie", "tie", "behind", "behind"], 1, "use one of the words"),
])
def test_prediction_checker(frozen, finetuned, expected, capsys):
    ok = wt.check_layer_prediction(frozen, finetuned, _results(TRUTH), labels="10")
    out = capsys.readouterr().out
    assert expected in out, out
    assert ok == (expected == "Correct")


def test_exercise_ids():
    assert sorted(wt.EXERCISES) == ["08.1", "08.2", "08.3", "08.4"]
    assert all(e.chapter == "08" for e in wt.EXERCISES.values())
