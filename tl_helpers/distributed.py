"""Data parallelism with PyTorch's own engine: ``torch.distributed``, DistributedDataParallel, ``torchrun``.

The course's recipe (:class:`tl_helpers.recipe.Recipe`) runs unchanged under ``torchrun``; only the launch
and a few lines around the loop change (chapter 12 lists them)::

    torchrun --standalone --nproc-per-node 2 -m tl_helpers.distributed --all-epochs 6

Every process runs this module's :func:`main`: it joins the process group torchrun describes in the
environment (gloo on the CPU, nccl on CUDA, one process per GPU), reads its share of every batch through a
``DistributedSampler``, wraps the model in ``DistributedDataParallel`` (which averages the gradients, so
``N`` processes with batch ``B / N`` take the step of one process with batch ``B`` when BatchNorm is in eval
mode), reduces the metrics over all processes, and lets rank 0 alone print, draw progress bars and write
checkpoints. Without torchrun it runs as one process, with the same code.

>>> from tl_helpers.distributed import Dist, backend_for
>>> Dist.single().world_size, backend_for("cpu"), backend_for("cuda")
(1, 'gloo', 'nccl')
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import itertools
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from tqdm.auto import tqdm

from tl_helpers.checkpoints import save_checkpoint
from tl_helpers.recipe import Recipe, finetune_phases, prepare_phase
from tl_helpers.surgery import set_bn_eval
from tl_helpers.train import History, evaluate_loader, train_one_epoch

_BN = nn.modules.batchnorm._BatchNorm


# --------------------------------------------------------------------------------------------------
# The process group
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Dist:
    """Where this process stands: its rank among ``world_size`` processes, its device and backend.

    ``backend=None`` means one process and no process group (a plain ``python`` run): every collective
    below is then a no-op, so the same code runs with and without torchrun.

    >>> d = Dist.single()
    >>> d.is_main, d.rank, d.device
    (True, 0, device(type='cpu'))
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that prints, draws progress bars and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when a process group exists (even a group of one): collectives and DDP are used."""
        return self.backend is not None

    @classmethod
    def single(cls, device: torch.device | str = "cpu") -> Dist:
        """One process, no process group."""
        return cls(device=torch.device(device))


def backend_for(device: torch.device | str) -> str:
    """The collective backend for a device: ``nccl`` for CUDA GPUs, ``gloo`` for the CPU.

    >>> backend_for(torch.device("cpu"))
    'gloo'
    """
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def cores() -> int:
    """CPU cores this process may use (the affinity mask where the OS has one, else ``os.cpu_count()``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def threads_per_process(local_world_size: int | None = None, available: int | None = None) -> int:
    """CPU threads for each of ``local_world_size`` processes sharing this machine's cores (at least 1).

    Two processes on two cores get one thread each: more threads than cores make the processes fight
    for them (PyTorch's threads spin while they wait), and everything slows down.

    >>> threads_per_process(2, available=2), threads_per_process(1, available=2), threads_per_process(4, available=2)
    (1, 2, 1)
    """
    n = local_world_size if local_world_size is not None else int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, (available or cores()) // max(n, 1))


def launched() -> bool:
    """True inside a process started by torchrun (or anything else that sets RANK and WORLD_SIZE).

    >>> launched() == ("RANK" in os.environ and "WORLD_SIZE" in os.environ)
    True
    """
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup(device: str | None = None) -> Dist:
    """Join the process group described by the environment, and return where this process stands.

    torchrun sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` and
    ``MASTER_PORT`` for every process it starts; ``init_process_group`` reads them (``init_method="env://"``).
    ``device``: ``"cpu"``, ``"cuda"``, or ``None`` for CUDA when there is a GPU. On CUDA each process takes
    the GPU of its local rank (one process per GPU) and the backend is nccl; on the CPU it is gloo.
    Outside torchrun this returns :meth:`Dist.single` without creating a group.
    """
    want = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if not launched():
        return Dist.single(want)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    if want == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"Process {rank} wants GPU {local_rank}, but this machine has "
                               f"{torch.cuda.device_count()}: start at most one process per GPU "
                               "(torchrun --nproc-per-node <number of GPUs>).")
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device(want)
    backend = backend_for(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend, init_method="env://",
                                device_id=dev if dev.type == "cuda" else None)
    return Dist(rank, local_rank, world, local_world, dev, backend)


def cleanup() -> None:
    """Leave the process group (a no-op when there is none)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group(device: str | None = None) -> Iterator[Dist]:
    """``with process_group() as d:`` joins the group (:func:`setup`) and always leaves it (:func:`cleanup`).

    On an error the process says which rank failed, on stderr, leaves the group and re-raises: torchrun then
    stops the other processes (which would otherwise wait forever in their next collective) and exits with
    an error, instead of hanging.

    >>> with process_group("cpu") as d:
    ...     d.world_size
    1
    """
    d = setup(device)
    try:
        yield d
    except BaseException as exc:
        if d.distributed:
            print(f"[rank {d.rank}/{d.world_size}] failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        raise
    finally:
        cleanup()


def barrier(d: Dist) -> None:
    """Wait until every process gets here (a no-op for one process)."""
    if d.distributed:
        dist.barrier()


# --------------------------------------------------------------------------------------------------
# Data: each process reads its own share
# --------------------------------------------------------------------------------------------------

def per_process_batch(global_batch: int, world_size: int) -> int:
    """The batch each process loads so that together they make ``global_batch``.

    >>> per_process_batch(32, 2)
    16
    >>> per_process_batch(32, 3)
    Traceback (most recent call last):
    ...
    ValueError: A global batch of 32 does not split evenly over 3 processes: choose a batch divisible by 3 (e.g. 30 or 33), or another number of processes.
    """
    if global_batch % world_size:
        lo, hi = global_batch - global_batch % world_size, global_batch + world_size - global_batch % world_size
        raise ValueError(f"A global batch of {global_batch} does not split evenly over {world_size} processes: "
                         f"choose a batch divisible by {world_size} (e.g. {lo} or {hi}), or another number "
                         "of processes.")
    return global_batch // world_size


def shard_loader(dataset: Dataset, global_batch: int, d: Dist, train: bool = True, seed: int = 0) -> DataLoader:
    """A DataLoader over this process's share of ``dataset``, batches of ``global_batch / world_size``.

    A ``DistributedSampler`` deals the indices out like cards: after a shuffle that is the same in every
    process (``seed`` plus the epoch: call :func:`set_epoch` before each epoch, or every epoch repeats the
    first one's order), process ``r`` takes positions ``r, r + N, r + 2N...``. When the dataset does not
    divide evenly, a few indices are repeated so that every process gets as many batches: DDP needs every
    process to take part in every step.

    >>> loader = shard_loader(list(range(10)), 4, Dist(rank=1, world_size=2), train=False)
    >>> [b.tolist() for b in loader]
    [[1, 3], [5, 7], [9]]
    """
    sampler = DistributedSampler(dataset, num_replicas=d.world_size, rank=d.rank, shuffle=train, seed=seed)
    return DataLoader(dataset, batch_size=per_process_batch(global_batch, d.world_size), sampler=sampler)


def set_epoch(loader: Iterable, epoch: int) -> None:
    """Tell the loader's ``DistributedSampler`` (if it has one) which epoch starts: a new shuffle for each."""
    sampler = getattr(loader, "sampler", None)
    if isinstance(sampler, DistributedSampler):
        sampler.set_epoch(epoch)


def shard(dataset: Dataset, d: Dist) -> Subset:
    """This process's share of ``dataset`` for evaluation: items ``rank, rank + N, ...``, none repeated.

    Unlike ``DistributedSampler`` nothing is padded, so summing over processes counts every item once.

    >>> shard(list(range(7)), Dist(rank=2, world_size=3)).indices
    [2, 5]
    """
    return Subset(dataset, list(range(d.rank, len(dataset), d.world_size)))


# --------------------------------------------------------------------------------------------------
# The model: DDP around it, with the recipe's frozen parameters and BatchNorm in eval mode
# --------------------------------------------------------------------------------------------------

def ddp_problems(model: nn.Module) -> list[str]:
    """What would go wrong if ``model`` were wrapped in DDP now (an empty list: nothing).

    - No trainable parameter: DDP has nothing to synchronise (phase 1 on cached features needs no DDP).
    - A BatchNorm in training mode: each process would normalise with the statistics of its own share of
      the batch, so N processes no longer take the step of one big batch (keep BatchNorm in eval mode as
      the recipe does, or on GPUs convert it with ``nn.SyncBatchNorm.convert_sync_batchnorm``).

    >>> ddp_problems(set_bn_eval(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))))
    []
    >>> len(ddp_problems(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))))
    1
    """
    problems = []
    if not any(p.requires_grad for p in model.parameters()):
        problems.append("the model has no trainable parameter, so DDP has nothing to synchronise: unfreeze "
                        "something first (a head on cached features trains in one process, without DDP)")
    training_bn = [n for n, m in model.named_modules() if isinstance(m, _BN) and m.training]
    if training_bn:
        problems.append(f"{len(training_bn)} BatchNorm layers are in training mode (e.g. {training_bn[0]}): each "
                        "process normalises with the statistics of its own share of the batch, so the step is no "
                        "longer that of the whole batch; call set_bn_eval(model) (the recipe), or use "
                        "nn.SyncBatchNorm.convert_sync_batchnorm on GPUs")
    return problems


def wrap(model: nn.Module, d: Dist) -> nn.Module:
    """Move ``model`` to the process's device and wrap it in DDP (for one process: return it as is).

    What DDP needs from the recipe:

    - **Frozen parameters.** DDP synchronises the parameters that have ``requires_grad=True`` *when it is
      built*; frozen ones are simply left out. So freeze and unfreeze first, then wrap, and wrap again after
      changing what is trainable (as :func:`fit_ddp` does for each step of phase 2): a tensor unfrozen after
      wrapping would be trained on each process's own gradient, and the copies would drift apart.
    - **BatchNorm in eval mode.** Its running statistics never change, so there are no buffers to copy
      from rank 0 at every forward pass (``forward_sync_buffers=False``); in training mode a warning says why
      the step then differs from one process's (:func:`ddp_problems`).
    - **The same start.** DDP's constructor copies rank 0's parameters and buffers to every process, so
      a head trained by rank 0 alone reaches all of them.
    """
    model.to(d.device)
    if not d.distributed:
        return model
    problems = ddp_problems(model)
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(f"Cannot wrap the model in DDP: {problems[0]}.")
    for problem in problems:
        warnings.warn(f"DDP: {problem}.", stacklevel=2)
    bn_training = any(isinstance(m, _BN) and m.training for m in model.modules())
    ddp = DDP(model, device_ids=[d.device.index] if d.device.type == "cuda" else None,
              forward_sync_buffers=bn_training)
    ddp._tl_trainable = frozenset(id(p) for p in model.parameters() if p.requires_grad)
    return ddp


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (what to save, evaluate or put in another wrapper).

    >>> net = nn.Linear(2, 2)
    >>> unwrap(net) is net
    True
    """
    return model.module if isinstance(model, DDP) else model


def check_wrapped(model: nn.Module) -> None:
    """Raise if parameters were frozen or unfrozen after ``model`` was wrapped by :func:`wrap`."""
    expected = getattr(model, "_tl_trainable", None)
    if expected is None:
        return
    now = frozenset(id(p) for p in unwrap(model).parameters() if p.requires_grad)
    if now != expected:
        raise RuntimeError(
            f"{len(now - expected)} parameter tensors became trainable and {len(expected - now)} frozen after the "
            "model was wrapped in DDP, which synchronises only the tensors trainable when it was built. Wrap "
            "again after freezing or unfreezing: model = wrap(unwrap(model), d).")


# --------------------------------------------------------------------------------------------------
# Metrics reduced over processes
# --------------------------------------------------------------------------------------------------

def all_reduce_sum(values: Sequence[float], d: Dist) -> list[float]:
    """Add ``values`` up over all processes (every process gets the sums); for one process, a copy.

    >>> all_reduce_sum([1.0, 2.5], Dist.single())
    [1.0, 2.5]
    """
    if not d.distributed:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64,
                     device=d.device if d.backend == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def all_reduce_max(value: float, d: Dist) -> float:
    """The largest ``value`` over all processes (e.g. the slowest process's time)."""
    if not d.distributed:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=d.device if d.backend == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def reduce_mean(mean: float, count: int, d: Dist) -> tuple[float, int]:
    """(mean over all processes, total count) from each process's (mean, count): weighted, exact.

    Averaging the processes' means would weight a process with fewer samples as much as the others.

    >>> reduce_mean(0.5, 4, Dist.single())
    (0.5, 4)
    """
    total, n = all_reduce_sum([mean * count, count], d)
    return (total / n if n else math.nan), int(round(n))


def evaluate_sharded(model: nn.Module, dataset: Dataset, d: Dist, loss_fn=None,
                     batch_size: int = 16) -> tuple[float, float]:
    """(loss, accuracy) over the whole ``dataset``, each process evaluating its :func:`shard`.

    Runs the model *inside* the wrapper: a DDP forward pass can start a collective, and the shards may
    have different numbers of batches, which would leave one process waiting for the other forever.
    """
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    part = shard(dataset, d)
    loader = DataLoader(part, batch_size=batch_size)
    loss, acc = evaluate_loader(unwrap(model), loader, loss_fn, d.device) if len(part) else (0.0, 0.0)
    (loss_sum, correct, n) = all_reduce_sum([loss * len(part), acc * len(part), len(part)], d)
    return loss_sum / n, round(correct) / n


# --------------------------------------------------------------------------------------------------
# Training: the recipe's loop, run by every process
# --------------------------------------------------------------------------------------------------

def _samples_per_epoch(loader: Iterable) -> int:
    """How many samples one pass over ``loader`` gives (its sampler's length, padding included)."""
    sampler = getattr(loader, "sampler", None)
    if sampler is not None and hasattr(sampler, "__len__"):
        return len(sampler)
    return sum(len(batch[1]) for batch in loader)  # a list of (x, y) batches


def fit_ddp(model: nn.Module, train_loader: DataLoader, val_set: Dataset | None, optimizer: torch.optim.Optimizer,
            epochs: int, d: Dist, loss_fn=None, scheduler=None, phase: str = "train",
            history: History | None = None, checkpoint: str | Path | None = None, progress: bool = True,
            accumulate: int = 1) -> History:
    """:func:`tl_helpers.train.fit`'s loop for several processes; every process calls it.

    ``model`` is wrapped (:func:`wrap`); ``train_loader`` comes from :func:`shard_loader`; ``scheduler`` is a
    per-batch one (one-cycle). Each epoch: a new shuffle (:func:`set_epoch`), one pass with
    :func:`tl_helpers.train.train_one_epoch` (DDP averages the gradients inside ``backward()``), the
    training loss and accuracy reduced over processes, validation on shards (:func:`evaluate_sharded`).
    Rank 0 alone shows the progress bar and writes ``checkpoint`` (the unwrapped model's weights, the
    optimizer and the history) at the end of every epoch. Each history row adds ``train_images`` and
    ``val_images`` (counted over all processes) and ``images_per_s``: training images of all processes per
    second of the slowest one. On CUDA the forward pass runs in mixed precision (``torch.autocast`` and a
    ``GradScaler``), as in :func:`tl_helpers.train.fit`. Every process returns the same history.
    """
    check_wrapped(model)
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    history = history if history is not None else History()
    first = int(history.rows[-1]["epoch"]) if history.rows else 0
    scaler = torch.amp.GradScaler("cuda") if d.device.type == "cuda" else None   # mixed precision on GPUs, as fit()
    n_val = int(all_reduce_sum([len(shard(val_set, d))], d)[0]) if val_set is not None else 0
    bar = tqdm(range(epochs), desc=phase, disable=not (progress and d.is_main))
    for e in bar:
        set_epoch(train_loader, first + e)
        lr = max(g["lr"] for g in optimizer.param_groups)
        barrier(d)
        start = time.perf_counter()
        train_loss, train_acc = train_one_epoch(model, train_loader, optimizer, loss_fn, d.device, scheduler,
                                                scaler, accumulate=accumulate)
        seconds = all_reduce_max(time.perf_counter() - start, d)
        n_local = _samples_per_epoch(train_loader)
        train_loss, n = reduce_mean(train_loss, n_local, d)
        train_acc, _ = reduce_mean(train_acc, n_local, d)
        val_loss, val_acc = evaluate_sharded(model, val_set, d, loss_fn) if val_set is not None else (math.nan,) * 2
        history.append({"phase": phase, "epoch": first + e + 1, "train_loss": train_loss, "train_acc": train_acc,
                        "val_loss": val_loss, "val_acc": val_acc, "lr": lr, "seconds": seconds,
                        "images_per_s": n / seconds, "train_images": n, "val_images": n_val})
        if checkpoint is not None and d.is_main:
            save_checkpoint(checkpoint, unwrap(model), optimizer, scheduler, history, phase=phase,
                            world_size=d.world_size)
        barrier(d)  # nobody goes on (or reads the file) before rank 0 has written it
        bar.set_postfix(train_loss=f"{train_loss:.3f}", val_acc=f"{val_acc:.3f}")
    bar.close()
    return history


def measure_throughput(model: nn.Module, loader: Iterable, d: Dist, steps: int = 3, warmup: int = 1,
                       accumulate: int = 1, lr: float = 1e-4) -> float:
    """Training images per second of all processes together: ``steps`` optimizer steps after ``warmup``.

    Trains ``model`` itself (pass a copy to keep the original) with AdamW on every trainable parameter,
    through :func:`tl_helpers.train.train_one_epoch` on the first batches of ``loader``: forward, backward
    (with DDP's gradient averaging), optimizer step, data loading included. The time is the slowest
    process's.

    >>> net = set_bn_eval(nn.Sequential(nn.Flatten(), nn.Linear(12, 3), nn.BatchNorm1d(3)))
    >>> data = [(torch.randn(4, 3, 2, 2), torch.tensor([0, 1, 2, 0]))] * 3
    >>> measure_throughput(net, data, Dist.single(), steps=2) > 0
    True
    """
    if len(loader) < warmup + steps:
        raise ValueError(f"The loader has {len(loader)} batches, fewer than warmup + steps = {warmup + steps}.")
    plain = unwrap(model)
    ddp = wrap(plain, d)
    optimizer = torch.optim.AdamW([p for p in plain.parameters() if p.requires_grad], lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    batches = iter(loader)
    if warmup:
        train_one_epoch(ddp, itertools.islice(batches, warmup), optimizer, loss_fn, d.device, accumulate=accumulate)
    timed = list(itertools.islice(batches, steps))
    barrier(d)
    start = time.perf_counter()
    train_one_epoch(ddp, timed, optimizer, loss_fn, d.device, accumulate=accumulate)
    seconds = all_reduce_max(time.perf_counter() - start, d)
    (images,) = all_reduce_sum([sum(len(y) for _, y in timed)], d)
    return images / seconds


def one_step(model: nn.Module, dataset: Dataset, global_batch: int, d: Dist, lr: float = 0.1) -> nn.Module:
    """One plain SGD step on the first ``global_batch`` items of ``dataset``, shared by all processes.

    The equivalence test of data parallelism: with no randomness in the forward pass (BatchNorm in eval
    mode, dropout off: ``model.eval()``), the step of ``N`` processes with ``global_batch / N`` items each is
    the step of one process with all of them. Returns the (unwrapped) model after the step.
    """
    loader = shard_loader(Subset(dataset, range(global_batch)), global_batch, d, train=False)
    ddp = wrap(model, d)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    x, y = next(iter(loader))
    x, y = x.to(d.device), y.to(d.device)
    optimizer.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(ddp(x), y).backward()
    optimizer.step()
    return unwrap(ddp)


def two_phase_ddp(model: nn.Module, train_set: Dataset, val_set: Dataset,
                  features: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None,
                  d: Dist, recipe: Recipe | None = None, global_batch: int = 32,
                  checkpoint: str | Path | None = None, progress: bool = True) -> tuple[History, History]:
    """:func:`tl_helpers.recipe.two_phase` for several processes: the same recipe, the same steps.

    Phase 1 (a head on cached features) runs on rank 0 alone (``features`` is only needed there): it takes
    milliseconds, so splitting it would cost more in communication than it saves, and the features were
    computed once, ahead of time. Phase 2 runs everywhere: for each step (top stages, then all) the model is
    frozen and unfrozen as in the recipe, BatchNorm set to eval mode, the optimizer and one-cycle schedule
    built on the plain model, and the model wrapped again (:func:`wrap`, whose constructor hands rank 0's
    head to every process). Returns (phase 1, phase 2) histories; phase 1's is empty except on rank 0.
    """
    from tl_helpers.recipe import fit_head_on_features
    from tl_helpers.surgery import replace_head

    recipe = recipe or Recipe()
    num_classes = len(getattr(train_set, "classes", [])) or None
    head_history = History()
    if d.is_main:
        if features is None:
            raise ValueError("Rank 0 needs the cached features (X_train, y_train, X_val, y_val) for phase 1.")
        X_train, y_train, X_val, y_val = features
        head, head_history = fit_head_on_features(
            X_train, y_train, X_val, y_val, num_classes=num_classes, epochs=recipe.head_epochs, lr=recipe.head_lr,
            weight_decay=recipe.head_weight_decay, seed=recipe.seed, label_smoothing=recipe.label_smoothing)
        replace_head(model, None, head=head)
    else:
        replace_head(model, num_classes)  # the right shape; DDP's constructor copies rank 0's weights into it
    torch.manual_seed(recipe.seed + d.rank)  # augmentation and dropout differ between processes, as they should
    loader = shard_loader(train_set, global_batch, d, train=True, seed=recipe.seed)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    history = History()
    for phase, stages, epochs in finetune_phases(recipe):
        plain = unwrap(model)
        optimizer, scheduler = prepare_phase(plain, recipe, stages, epochs, len(loader))
        model = wrap(plain, d)
        history = fit_ddp(model, loader, val_set, optimizer, epochs, d, loss_fn, scheduler, phase=phase,
                          history=history, checkpoint=checkpoint, progress=progress, accumulate=recipe.accumulate)
    unwrap(model).eval()
    return head_history, history


# --------------------------------------------------------------------------------------------------
# The command line: what every process started by torchrun runs
# --------------------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    defaults = Recipe()
    p = argparse.ArgumentParser(
        prog="torchrun --standalone --nproc-per-node N -m tl_helpers.distributed",
        description="The course's two-phase fine-tuning on Clipart-8 with DistributedDataParallel. Phase 1 "
                    "(a head on cached features) runs on rank 0, phase 2 on every process.")
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32, help="global batch, split over the processes")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda if there is a GPU")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads per process (default: the cores divided by the processes on this machine)")
    for f in fields(Recipe):
        if f.name in ("seed",) or isinstance(getattr(defaults, f.name), bool):
            continue
        kind = float if f.name == "lr_decay" or isinstance(getattr(defaults, f.name), float) else int
        p.add_argument("--" + f.name.replace("_", "-"), type=kind, default=getattr(defaults, f.name))
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--checkpoint", default=None, help="where rank 0 saves the model after every epoch")
    p.add_argument("--summary", default=None, help="a JSON file where rank 0 writes the histories and numbers")
    p.add_argument("--throughput-steps", type=int, default=0,
                   help="first measure training images/s over this many steps (on a copy of the model)")
    p.add_argument("--check-step", default=None, metavar="FILE",
                   help="instead of training: one SGD step on the first --batch-size training images "
                        "(model in eval mode), rank 0 saves the weights to FILE")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _recipe(args: argparse.Namespace) -> Recipe:
    return Recipe(**{f.name: getattr(args, f.name) for f in fields(Recipe) if hasattr(args, f.name)})


def run(args: argparse.Namespace, d: Dist) -> dict:
    """Everything one process does for :func:`main`; returns rank 0's summary (other ranks: an empty dict)."""
    from tl_helpers.data import clipart_splits, eval_transform, extract_features, train_transform
    from tl_helpers.models import load_pretrained
    from tl_helpers.surgery import replace_head

    torch.set_num_threads(args.threads or threads_per_process(d.local_world_size))
    say = print if d.is_main else (lambda *a, **k: None)
    say(f"{d.world_size} process{'es' if d.world_size > 1 else ''} ({d.backend or 'no process group'}, "
        f"{d.device.type}), {torch.get_num_threads()} thread{'s' if torch.get_num_threads() > 1 else ''} each; "
        f"batch {args.batch_size} = {d.world_size} x {per_process_batch(args.batch_size, d.world_size)}", flush=True)
    torch.manual_seed(args.seed)
    pre = load_pretrained(args.model)
    plain = clipart_splits(eval_transform(args.image_size, mean=pre.mean, std=pre.std))
    summary: dict = {"world_size": d.world_size, "threads": torch.get_num_threads(), "device": d.device.type,
                     "backend": d.backend, "batch_size": args.batch_size}

    if args.check_step:
        model = replace_head(pre.model, len(plain["train"].classes)).eval()
        one_step(model, plain["train"], args.batch_size, d)
        if d.is_main:
            save_checkpoint(args.check_step, model, world_size=d.world_size)
            say(f"one step on {args.batch_size} images; rank 0 saved the weights")
        return summary if d.is_main else {}

    features = None
    if d.is_main:  # phase 1's input: features of the frozen backbone, computed once and cached on disk
        backbone = copy.deepcopy(pre.model)
        replace_head(backbone, None, head=nn.Identity())
        features = (*extract_features(backbone, plain["train"], progress=False),
                    *extract_features(backbone, plain["val"], progress=False))
        del backbone
    augmented = clipart_splits(eval_transform(args.image_size, mean=pre.mean, std=pre.std),
                               train_transform(args.image_size, mean=pre.mean, std=pre.std))
    recipe = _recipe(args)
    model = pre.model
    if args.throughput_steps:
        probe = replace_head(copy.deepcopy(model), len(plain["train"].classes))
        set_bn_eval(probe)
        loader = shard_loader(augmented["train"], args.batch_size, d, train=True, seed=args.seed)
        summary["images_per_s"] = measure_throughput(probe, loader, d, steps=args.throughput_steps,
                                                     accumulate=recipe.accumulate)
        del probe
        say(f"throughput: {summary['images_per_s']:.1f} images/s", flush=True)
    head_history, history = two_phase_ddp(model, augmented["train"], plain["val"], features, d, recipe,
                                          args.batch_size, args.checkpoint, progress=not args.no_progress)
    if d.is_main:
        head = head_history.rows[-1] if head_history.rows else {}
        say(f"phase 1 on rank 0: {len(head_history)} epochs on cached features, val acc {head.get('val_acc', 0):.1%}")
        for row in history.rows:
            say(f"phase 2 {row['phase']} epoch {row['epoch']}: train acc {row['train_acc']:.1%} "
                f"({row['train_images']} images), val acc {row['val_acc']:.1%} "
                f"({row['val_images']} images, all processes)")
        if args.checkpoint:
            say(f"rank 0 saved {Path(args.checkpoint).name}")
    peak_mb = all_reduce_max(_peak_rss_mb(), d)
    if d.is_main:
        summary.update(recipe=asdict(recipe), head_history=head_history.to_dict(), history=history.to_dict(),
                       peak_rss_mb=peak_mb)
        return summary
    return {}


def _peak_rss_mb() -> float:
    """Peak resident memory of this process in MB (0 where the OS does not say)."""
    try:
        import resource
    except ImportError:  # Windows
        return 0.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``torchrun ... -m tl_helpers.distributed`` (and of ``python -m tl_helpers.distributed``)."""
    args = _parser().parse_args(argv)
    with process_group(args.device) as d:
        per_process_batch(args.batch_size, d.world_size)  # fail early, in every process, with a clear message
        summary = run(args, d)
        if d.is_main and args.summary:
            path = Path(args.summary)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    from torch.distributed.elastic.multiprocessing.errors import record

    sys.exit(record(main)())
