"""Data parallelism (tl_helpers.distributed): real processes under torchrun with gloo on the CPU.

The central test: with BatchNorm in eval mode (and dropout off), 2 processes with 16 images each take the
same optimizer step as 1 process with 32. The launches use tiny images and few steps to stay quick.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from tl_helpers import distributed as D
from tl_helpers.checkpoints import load_checkpoint
from tl_helpers.checks import distributed as checks
from tl_helpers.data import clipart_splits, eval_transform
from tl_helpers.models import load_pretrained
from tl_helpers.surgery import freeze, replace_head, set_bn_eval, unfreeze


def torchrun(*args: str, nproc: int = 2, timeout: int = 240) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node N -m tl_helpers.distributed ARGS`` as a subprocess."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "tl_helpers.distributed", "--no-progress", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def lite0_eval() -> nn.Module:
    torch.manual_seed(0)
    return replace_head(load_pretrained().model, 8).eval()


# --- the equivalence: 2 x 16 = 1 x 32 ------------------------------------------------------------------

def test_two_processes_take_the_step_of_one_big_batch(tmp_path):
    out = tmp_path / "two.pt"
    proc = torchrun("--check-step", str(out), "--image-size", "64", "--batch-size", "32")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 processes (gloo, cpu), 1 thread each; batch 32 = 2 x 16" in proc.stdout
    two = replace_head(load_pretrained().model, 8)
    load_checkpoint(out, two)

    train = clipart_splits(eval_transform(64))["train"]
    before = lite0_eval()
    one = D.one_step(lite0_eval(), train, 32, D.Dist.single())   # the same code, one process, batch 32
    with torch.no_grad():
        step = max(float((a - b).abs().max()) for a, b in zip(one.parameters(), before.parameters()))
        diff = max(float((a - b).abs().max()) for a, b in zip(one.parameters(), two.parameters()))
    assert step > 1e-3, "the step itself is large enough for the comparison to mean something"
    assert diff < 1e-5 * max(step, 1.0), f"2 x 16 and 1 x 32 differ by {diff:.2e} (step {step:.2e})"


def test_bad_batch_fails_in_every_process_without_hanging():
    start = time.perf_counter()
    proc = torchrun("--check-step", "unused.pt", "--image-size", "32", "--batch-size", "33", timeout=120)
    assert proc.returncode != 0
    assert "does not split evenly over 2 processes" in proc.stderr
    assert "[rank 1/2] failed" in proc.stderr and "[rank 0/2] failed" in proc.stderr
    assert time.perf_counter() - start < 120


def test_recipe_runs_under_torchrun(tmp_path):
    ck, summary = tmp_path / "ddp.pt", tmp_path / "summary.json"
    proc = torchrun("--image-size", "32", "--head-epochs", "2", "--top-epochs", "1", "--all-epochs", "1",
                    "--checkpoint", str(ck), "--summary", str(summary))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(summary.read_text())
    rows = result["history"]["rows"]
    assert [r["phase"] for r in rows] == ["top", "all"] and result["world_size"] == 2
    assert all(round(r["images_per_s"] * r["seconds"]) == 302 for r in rows), "301 images, padded to 2 x 151"
    assert all(0.0 <= r["val_acc"] <= 1.0 for r in rows)
    assert len(result["head_history"]["rows"]) == 2, "phase 1 ran on rank 0"
    model = replace_head(load_pretrained().model, 8)
    state = load_checkpoint(ck, model)       # rank 0 saved the unwrapped model: no "module." prefixes
    assert state["world_size"] == 2 and state["phase"] == "all"
    assert proc.stdout.count("rank 0 saved ddp.pt") == 1


# --- in one process -----------------------------------------------------------------------------------

def test_shard_loader_covers_the_data_and_reshuffles_each_epoch():
    data = list(range(11))
    loaders = [D.shard_loader(data, 4, D.Dist(rank=r, world_size=2), train=True, seed=0) for r in range(2)]
    epoch0 = [sum((b.tolist() for b in loader), []) for loader in loaders]
    assert sorted(epoch0[0] + epoch0[1])[:11] == sorted(set(data)) and len(epoch0[0]) == len(epoch0[1]) == 6
    for loader in loaders:
        D.set_epoch(loader, 1)
    epoch1 = [sum((b.tolist() for b in loader), []) for loader in loaders]
    assert epoch1 != epoch0
    shards = [D.shard(data, D.Dist(rank=r, world_size=3)).indices for r in range(3)]
    assert sorted(sum(shards, [])) == data


def test_per_process_batch_and_threads():
    assert D.per_process_batch(32, 4) == 8
    with pytest.raises(ValueError, match="divisible by 3"):
        D.per_process_batch(32, 3)
    assert D.threads_per_process(2, available=2) == 1 and D.threads_per_process(1, available=16) == 16


def test_ddp_problems_name_bn_in_training_mode_and_frozen_models():
    net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    assert any("BatchNorm" in p for p in D.ddp_problems(net))
    assert D.ddp_problems(set_bn_eval(net)) == []
    assert any("no trainable parameter" in p for p in D.ddp_problems(freeze(net)))


@pytest.fixture
def group_of_one(monkeypatch):
    """A real gloo process group with one process (rank 0 of 1), left again afterwards."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "1",
                       "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(key, value)
    with D.process_group("cpu") as d:
        yield d
    assert not torch.distributed.is_initialized()


def test_wrap_syncs_only_trainable_parameters_and_notices_later_unfreezing(group_of_one):
    d = group_of_one
    net = set_bn_eval(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)))
    freeze(net, first=2)
    ddp = D.wrap(net, d)
    assert isinstance(ddp, DDP) and D.unwrap(ddp) is net
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    data = [(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))]
    D.fit_ddp(ddp, data, None, opt, 1, d, progress=False)       # frozen layers need no gradient: no error
    assert net[0].weight.grad is None
    unfreeze(net)
    with pytest.raises(RuntimeError, match="Wrap again"):
        D.fit_ddp(ddp, data, None, opt, 1, d, progress=False)


def test_metrics_are_reduced_over_the_group(group_of_one):
    assert D.all_reduce_sum([1.0, 2.0], group_of_one) == [1.0, 2.0]
    assert D.reduce_mean(0.25, 8, group_of_one) == (0.25, 8)


def test_process_group_is_left_on_error(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ZeroDivisionError):
        with D.process_group("cpu"):
            assert torch.distributed.is_initialized()
            1 / 0
    assert not torch.distributed.is_initialized()


# --- the exercises' checkers --------------------------------------------------------------------------

def ddp_gradients(model, x, y, world_size):
    """Reference answer of exercise 12.3."""
    import copy

    grads = None
    for r in range(world_size):
        m = copy.deepcopy(model)
        params = [p for p in m.parameters() if p.requires_grad]
        g = torch.autograd.grad(nn.functional.cross_entropy(m(x[r::world_size]), y[r::world_size]), params)
        grads = list(g) if grads is None else [a + b for a, b in zip(grads, g)]
    return [g / world_size for g in grads]


def test_checkers_accept_the_reference_answers(capsys):
    assert checks.check_per_process_batch(8, 1e-3, world_size=4, global_batch=32, recipe_lr=1e-3)
    assert checks.check_reduce_metrics(lambda rs: (sum(m * c for m, _, c in rs) / sum(c for *_, c in rs),
                                                   sum(k for _, k, _ in rs) / sum(c for *_, c in rs)))
    assert checks.check_ddp_gradients(ddp_gradients)
    assert capsys.readouterr().out.count("✅ Correct") == 3


@pytest.mark.parametrize("answer, hint", [
    ((32, 1e-3), "its share of the batch"),
    ((8, 4e-3), "DDP *averages*"),
    (("8", 1e-3), "images each process loads"),
])
def test_per_process_batch_checker_hints(answer, hint, capsys):
    assert not checks.check_per_process_batch(*answer, world_size=4, global_batch=32, recipe_lr=1e-3)
    assert hint in capsys.readouterr().out


def test_reduce_checker_hints(capsys):
    plain_loss = lambda rs: (sum(m for m, _, _ in rs) / len(rs), sum(k for _, k, _ in rs) / sum(c for *_, c in rs))  # noqa: E731
    plain_acc = lambda rs: (sum(m * c for m, _, c in rs) / sum(c for *_, c in rs), sum(k / c for _, k, c in rs) / len(rs))  # noqa: E731
    assert not checks.check_reduce_metrics(plain_loss)
    assert "sum(mean * count)" in capsys.readouterr().out
    assert not checks.check_reduce_metrics(plain_acc)
    assert "sum(correct) / sum(count)" in capsys.readouterr().out
    assert not checks.check_reduce_metrics(lambda rs: 0.5)
    assert "a pair" in capsys.readouterr().out


def test_ddp_gradients_checker_hints(capsys):
    summed = lambda m, x, y, w: [g * w for g in ddp_gradients(m, x, y, w)]  # noqa: E731
    assert not checks.check_ddp_gradients(summed)
    assert "divide the sum by world_size" in capsys.readouterr().out
    halves = lambda m, x, y, w: ddp_gradients(m, x[: len(x) // w], y[: len(y) // w], 1)  # noqa: E731
    assert not checks.check_ddp_gradients(halves)
    assert "x[r::world_size]" in capsys.readouterr().out

    def with_frozen(m, x, y, w):
        params = list(m.parameters())
        return list(torch.autograd.grad(nn.functional.cross_entropy(m(x), y),
                                        [p for p in params if p.requires_grad])) + [torch.zeros_like(params[0])]
    assert not checks.check_ddp_gradients(with_frozen)
    assert "requires_grad=False" in capsys.readouterr().out

    def stepping(m, x, y, w):
        grads = ddp_gradients(m, x, y, w)
        with torch.no_grad():
            for p, g in zip([p for p in m.parameters() if p.requires_grad], grads):
                p -= 0.1 * g
        return grads
    assert not checks.check_ddp_gradients(stepping)
    assert "changed the model's weights" in capsys.readouterr().out
