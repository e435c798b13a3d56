"""Checkpoints and resume (tl_helpers.checkpoints): an interrupted run resumes exactly, a checkpoint knows its
settings, and a run with other settings (epochs included) trains from scratch and says why."""

from __future__ import annotations

import pytest
import torch

from test_train import CPU, tiny_setup, without_seconds
from tl_helpers.checkpoints import last_checkpoint_path, load_checkpoint, save_checkpoint, settings_hash
from tl_helpers.train import History, fit


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
