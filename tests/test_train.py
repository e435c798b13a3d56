"""Training loops of tl_helpers.train: frozen layers stay frozen, checkpoints resume exactly, NaN is caught."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tl_helpers.models import freeze, set_bn_eval, train_mode
from tl_helpers.train import (History, evaluate_loader, fit, fit_head_on_features, last_checkpoint_path,
                              load_checkpoint, lr_range_test, save_checkpoint, settings_hash, suggest_lr,
                              train_one_epoch)

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
    freeze(net, blocks=2)  # Conv2d + BatchNorm2d
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


class Interrupted(Exception):
    """Stands for a kernel restart or Ctrl-C in the middle of training."""


class InterruptAt:
    """A loader that raises Interrupted when epoch ``epoch`` (counted from 1) starts."""

    def __init__(self, loader, epoch: int):
        self.loader, self.epoch, self.started = loader, epoch, 0
        self.generator, self.dataset, self.batch_size = loader.generator, loader.dataset, loader.batch_size

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        self.started += 1
        if self.started == self.epoch:
            raise Interrupted()
        return iter(self.loader)


def one_cycle_run(epochs, interrupt_at=None, **kw):
    net, loader, val = tiny_setup()
    if interrupt_at is not None:
        loader = InterruptAt(loader, interrupt_at)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=epochs * len(loader))
    return fit(net, loader, val, opt, epochs, scheduler=sched, device=CPU, progress=False, **kw), net, sched


def test_resume_equals_an_uninterrupted_run(tmp_path):
    straight, net_a, _ = one_cycle_run(4)
    ckpt = tmp_path / "best.pt"
    with pytest.raises(Interrupted):
        one_cycle_run(4, interrupt_at=3, checkpoint=ckpt)   # epochs 1 and 2 done and checkpointed
    assert ckpt.exists() and last_checkpoint_path(ckpt).exists()
    assert load_checkpoint(last_checkpoint_path(ckpt))["phase_epoch"] == 2
    torch.manual_seed(123)  # a new session: the global random state is elsewhere
    resumed, net_b, _ = one_cycle_run(4, checkpoint=ckpt, resume=True)
    assert len(resumed) == 4
    for a, b in zip(without_seconds(straight), without_seconds(resumed)):
        assert a.keys() == b.keys()
        for k in a:
            if isinstance(a[k], float):
                assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-7), k
            else:
                assert a[k] == b[k], k
    for (k, a), b in zip(net_a.state_dict().items(), net_b.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), k
    again, _, _ = one_cycle_run(4, checkpoint=ckpt, resume=True)  # finished: rerunning only loads
    assert len(again) == 4
    state = load_checkpoint(ckpt)
    assert state["best_val_acc"] == max(straight.column("val_acc"))
    assert len(state["history"]["rows"]) == [r["val_acc"] for r in straight.rows].index(state["best_val_acc"]) + 1


def test_checkpoints_store_their_settings_and_hash(tmp_path, capsys):
    ckpt = tmp_path / "c.pt"
    first, net_a, _ = one_cycle_run(2, checkpoint=ckpt, settings={"image_size": 32, "model_name": "tiny"})
    for path in (ckpt, last_checkpoint_path(ckpt)):
        state = load_checkpoint(path)
        settings = state["settings"]
        assert settings["image_size"] == 32 and settings["model_name"] == "tiny" and settings["epochs"] == 2
        assert settings["scheduler"] == {"class": "OneCycleLR", "total_steps": 8}
        assert settings["model"] == "torch.nn.modules.container.Sequential"
        assert state["settings_hash"] == settings_hash(settings)
    # the same settings: reloaded, silently, without a single batch of training
    again, net_b, _ = one_cycle_run(2, checkpoint=ckpt, resume=True, settings={"image_size": 32, "model_name": "tiny"})
    assert capsys.readouterr().err == ""
    assert without_seconds(again) == without_seconds(first)
    assert all(torch.equal(a, b) for a, b in zip(net_a.state_dict().values(), net_b.state_dict().values()))


def test_a_changed_setting_retrains_and_says_what_changed(tmp_path, capsys):
    ckpt = tmp_path / "c.pt"
    one_cycle_run(2, checkpoint=ckpt, settings={"image_size": 32})
    capsys.readouterr()
    net, loader, val = tiny_setup()
    counting = InterruptAt(loader, epoch=0)   # never interrupts; counts the epochs it serves
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=2 * len(loader))
    fit(net, counting, val, opt, 2, scheduler=sched, device=CPU, progress=False, checkpoint=ckpt, resume=True,
        settings={"image_size": 48})
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Training from scratch" in err and "image_size: 32 -> 48" in err, err
    assert counting.started == 2, "both epochs trained again"
    assert load_checkpoint(ckpt)["settings"]["image_size"] == 48


def test_a_changed_epochs_does_not_restore_the_old_scheduler(tmp_path, capsys):
    ckpt = tmp_path / "c.pt"
    one_cycle_run(2, checkpoint=ckpt)
    capsys.readouterr()
    longer, net_a, sched_a = one_cycle_run(3, checkpoint=ckpt, resume=True)
    assert "epochs: 2 -> 3" in capsys.readouterr().err
    fresh, net_b, sched_b = one_cycle_run(3)
    assert sched_a.total_steps == 12 and sched_a.last_epoch == sched_b.last_epoch == 12
    assert without_seconds(longer) == without_seconds(fresh)
    assert all(torch.equal(a, b) for a, b in zip(net_a.state_dict().values(), net_b.state_dict().values()))


def test_a_checkpoint_without_settings_is_not_reloaded(tmp_path, capsys):
    net, loader, val = tiny_setup()
    save_checkpoint(tmp_path / "old.pt", net, phase="train", phase_epoch=2)   # as older versions wrote them
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    hist = fit(net, loader, val, opt, 1, device=CPU, progress=False, checkpoint=tmp_path / "old.pt", resume=True)
    assert len(hist) == 1 and "stores no settings" in capsys.readouterr().err


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


def test_save_and_load_checkpoint_roundtrip(tmp_path):
    net, _, _ = tiny_setup()
    opt = torch.optim.Adam(net.parameters())
    hist = History([{"phase": "head", "epoch": 1, "val_acc": 0.5}])
    save_checkpoint(tmp_path / "sub" / "c.pt", net, opt, history=hist, classes=["a", "b"])
    other, _, _ = tiny_setup(seed=1)
    state = load_checkpoint(tmp_path / "sub" / "c.pt", other, torch.optim.Adam(other.parameters()))
    assert state["classes"] == ["a", "b"] and History.from_dict(state["history"]) == hist
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), other.state_dict().values()))
    assert not list(tmp_path.glob("**/*.tmp"))
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")


def test_fit_head_on_features_learns_and_leaves_global_rng_alone():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(200, 16, generator=g)
    y = (X[:, 0] > 0).long() + 2 * (X[:, 2] > 0).long()  # 4 linearly separable classes
    state = torch.get_rng_state()
    head, hist = fit_head_on_features(X[:150], y[:150], X[150:], y[150:], epochs=60, lr=0.05)
    assert torch.equal(torch.get_rng_state(), state)
    assert isinstance(head, nn.Linear) and head.out_features == 4 and not head.training
    assert len(hist) == 60 and set(hist.column("phase")) == {"head"}
    assert hist.rows[-1]["val_acc"] > 0.8 and hist.rows[-1]["train_acc"] > 0.9
    head2, hist2 = fit_head_on_features(X[:150], y[:150], X[150:], y[150:], epochs=60, lr=0.05)
    assert torch.equal(head.weight, head2.weight)


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


def test_history_best_uses_min_for_losses():
    h = History([{"val_loss": 0.3, "val_acc": 0.5}, {"val_loss": 0.2, "val_acc": 0.4},
                 {"val_loss": math.nan, "val_acc": math.nan}])
    assert h.best()["val_acc"] == 0.5 and h.best("val_loss")["val_loss"] == 0.2
    with pytest.raises(ValueError):
        History().best()


def _features(net: nn.Sequential, loader) -> tuple[torch.Tensor, torch.Tensor]:
    body = nn.Sequential(*list(net)[:-1]).eval()
    with torch.no_grad():
        pairs = [(body(x), y) for x, y in loader]
    return torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])


def test_two_phase_runs_both_phases_keeps_bn_statistics_and_reloads_from_its_checkpoint(tmp_path):
    from tl_helpers.train import Recipe, two_phase

    net, loader, val = tiny_setup()
    features = (*_features(net, loader), *_features(net, val))
    stats = net[1].running_mean.clone()
    recipe = Recipe(head_epochs=5, top_stages=2, top_epochs=1, all_epochs=2)
    head_hist, hist = two_phase(net, loader, val, features, recipe, checkpoint=tmp_path / "best.pt",
                                device=CPU, progress=False)
    assert head_hist.column("phase") == ["head"] * 5
    assert hist.column("phase") == ["top", "all", "all"]
    assert torch.equal(net[1].running_mean, stats), "BatchNorm statistics must stay the pretrained ones"
    assert (tmp_path / "best.pt").exists() and (tmp_path / "best.top.pt").exists()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    saved = torch.load(tmp_path / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(saved[k], v) for k, v in before.items()), "the checkpoint holds the model kept"
    # Rerunning with the same checkpoint reloads the finished run instead of training again.
    _, again = two_phase(net, loader, val, features, recipe, checkpoint=tmp_path / "best.pt", device=CPU,
                         progress=False)
    assert without_seconds(again) == without_seconds(hist)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in before.items())


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


def test_two_phase_retrains_when_the_recipe_or_the_features_change(tmp_path, capsys):
    from tl_helpers.train import Recipe, two_phase

    net, loader, val = tiny_setup()
    features = (*_features(net, loader), *_features(net, val))
    recipe = Recipe(head_epochs=2, top_stages=2, top_epochs=1, all_epochs=1)
    two_phase(net, loader, val, features, recipe, checkpoint=tmp_path / "best.pt", device=CPU, progress=False)
    state = load_checkpoint(tmp_path / "best.pt")
    assert state["settings"]["recipe"]["all_epochs"] == 1 and state["settings"]["phase"] == "all"
    capsys.readouterr()
    net, loader, val = tiny_setup()
    two_phase(net, loader, val, features, Recipe(head_epochs=2, top_stages=2, top_epochs=1, all_epochs=1,
                                                 backbone_lr=1e-3),
              checkpoint=tmp_path / "best.pt", device=CPU, progress=False)
    assert "recipe.backbone_lr: 0.0002 -> 0.001" in capsys.readouterr().err
    net, loader, val = tiny_setup()
    other = (features[0] + 1, *features[1:])
    two_phase(net, loader, val, other, recipe, checkpoint=tmp_path / "best.pt", device=CPU, progress=False,
              settings={"model_name": "tiny"})
    err = capsys.readouterr().err
    assert "features:" in err and "model_name" in err, err
