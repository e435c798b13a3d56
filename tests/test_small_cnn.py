"""The small CNN and its transfer (copies, not shared tensors; frozen stays frozen), the training rule (early
stopping on validation, best weights kept, the frozen-prefix shortcut changes nothing), the probe and the
runner (results independent of the number of threads)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from tl_helpers import small_cnn
from tl_helpers.small_cnn import (LAYERS, Budget, Job, Target, accuracy, frozen_prefix, make_cnn, predict,
                                  probe_accuracy, run_jobs, train, transfer)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def data(n: int = 80, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Ten classes that a CNN can tell apart quickly: a bright square at a class-dependent place, plus noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 10
    x = 0.3 * torch.randn(n, 1, 28, 28, generator=g)
    for i, c in enumerate(y.tolist()):
        r, col = divmod(c, 5)
        x[i, 0, 4 + 10 * r:10 + 10 * r, 2 + 5 * col:6 + 5 * col] += 2.0
    return x, y


def test_make_cnn_shape_and_size():
    model = make_cnn()
    assert sum(p.numel() for p in model.parameters()) == 25_034
    assert [name for name, _ in model.named_children()] == [*LAYERS, "head"]
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


@pytest.mark.parametrize("k", [0, 1, 3, 4])
@pytest.mark.parametrize("freeze", [True, False])
def test_transfer_copies_the_first_k_layers(k, freeze):
    source = transfer(None, 0, False, seed=1)
    model = transfer(source, k, freeze, seed=2)
    for i, name in enumerate(LAYERS):
        mine, theirs = getattr(model, name), getattr(source, name)
        same = all(torch.equal(a, b) for a, b in zip(mine.state_dict().values(), theirs.state_dict().values()))
        assert same == (i < k), name
        assert all(p.requires_grad == (not (freeze and i < k)) for p in mine.parameters()), name
    assert model.head.weight.requires_grad
    assert not {id(p) for p in model.parameters()} & {id(p) for p in source.parameters()}, "no shared tensors"


def test_transfer_without_a_source_freezes_the_own_random_layers():
    model = transfer(None, 4, True, seed=3)
    reference = transfer(None, 0, False, seed=3)
    assert torch.equal(model.fc[1].weight, reference.fc[1].weight)
    assert frozen_prefix(model) == 4


def test_transfer_rejects_a_bad_k():
    with pytest.raises(ValueError, match="head never transfers"):
        transfer(make_cnn(), 5, True, seed=0)


def test_train_keeps_the_best_check_and_leaves_frozen_layers_alone():
    x, y = data()
    model = transfer(make_cnn(), 2, True, seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    budget = Budget(check_every=5, patience=3, max_steps=200)
    log = train(model, x[:60], y[:60], x[60:], y[60:], budget, seed=0)
    for name, p in model.named_parameters():
        moved = not torch.equal(p, before[name])
        assert moved == name.startswith(("conv3", "fc", "head")), name
    assert log.best_step % budget.check_every == 0 and log.best_step <= log.steps <= budget.max_steps
    assert log.best_val == max(v for _, v in log.curve)
    assert math.isclose(accuracy(model, x[60:], y[60:]), log.best_val), "the best check's weights are restored"
    assert log.hit_cap or log.steps - log.best_step == budget.patience * budget.check_every


def test_train_without_patience_runs_max_steps():
    x, y = data(40)
    log = train(make_cnn(), x, y, budget=Budget(patience=None, max_steps=7), seed=0)
    assert log.steps == 7 and log.hit_cap and log.curve == []


def test_the_frozen_prefix_shortcut_changes_nothing(monkeypatch):
    x, y = data()
    budget = Budget(check_every=5, patience=2, max_steps=30)
    source = transfer(None, 0, False, seed=8)
    fast = transfer(source, 3, True, seed=4)
    train(fast, x[:60], y[:60], x[60:], y[60:], budget, seed=4)
    monkeypatch.setattr(small_cnn, "frozen_prefix", lambda model: 0)      # every step through every layer
    slow = transfer(source, 3, True, seed=4)
    train(slow, x[:60], y[:60], x[60:], y[60:], budget, seed=4)
    for a, b in zip(fast.state_dict().values(), slow.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5)


def target() -> Target:
    x, y = data(120)
    return Target(x, y, x[80:100], y[80:100], x[100:], y[100:])


def test_run_jobs_does_not_depend_on_the_number_of_threads():
    source = transfer(None, 0, False, seed=9)
    jobs = [Job(None, 0, False, 0, np.arange(40)), Job(source, 4, True, 1, np.arange(40)),
            Job(source, 2, False, 2, np.arange(40), "l2-sp", 0.1, 0.01)]
    budget = Budget(check_every=5, patience=2, max_steps=40)
    one, two = run_jobs(jobs, target(), budget, workers=1), run_jobs(jobs, target(), budget, workers=2)
    for a, b in zip(one, two):
        assert (a.val, a.test, a.log.steps) == (b.val, b.test, b.log.steps)
        assert np.array_equal(a.predictions, b.predictions)
    assert math.isnan(one[0].distance) and one[1].distance == 0.0 and one[2].distance > 0.0


def test_l2_sp_keeps_the_copied_weights_closer_than_weight_decay():
    source = transfer(None, 0, False, seed=9)
    budget = Budget(check_every=10, patience=None, max_steps=30)
    runs = run_jobs([Job(source, 4, False, 0, np.arange(80), penalty, 1.0, 0.0)
                     for penalty in (None, "l2-sp", "weight decay")], target(), budget)
    plain, sp, wd = (r.distance for r in runs)
    assert sp < plain < wd


def test_run_jobs_rejects_an_unknown_penalty():
    with pytest.raises(ValueError, match="l2-sp"):
        run_jobs([Job(make_cnn(), 4, False, 0, np.arange(10), "l1", 0.1)], target(), Budget(max_steps=1))


def test_probe_chooses_c_on_validation():
    rng = np.random.default_rng(0)
    labels = {p: np.repeat(np.arange(3), 20) for p in ("train", "val", "test")}
    feats = {p: rng.normal(size=(60, 5)) + 2.0 * np.eye(3, 5)[labels[p]] for p in labels}
    out = probe_accuracy(feats, labels, Cs=(0.001, 1.0))
    assert out["C"] in (0.001, 1.0) and 0.6 < out["test"] <= 1.0 and 0.0 <= out["val"] <= 1.0


def test_predict_gives_classes():
    x, _ = data(5)
    assert predict(make_cnn(), x).dtype == torch.int64
    assert replace(Budget(), lr=0.1).lr == 0.1
