"""Data parallelism with PyTorch's own engine: ``torch.distributed``, DistributedDataParallel, ``torchrun``.

The pieces a training loop needs to run as N processes (one per GPU, or per CPU core): join the process group
torchrun describes (:func:`setup`), read a share of every batch (:func:`shard_loader`), wrap the model in DDP
after freezing (:func:`wrap`), reduce metrics over processes, evaluate on shards that count every image once
(:func:`evaluate_sharded`), let rank 0 alone print and write files. :func:`two_phase_ddp` runs the course's
recipe with them, and resumes from a snapshot after a restart; the program that torchrun starts is
:mod:`tl_helpers.distributed_main`::

    torchrun --standalone --nproc-per-node 2 --max-restarts 3 -m tl_helpers.distributed_main photos/ --out run/

N processes with batch ``B / N`` each take the step of one process with batch ``B`` when nothing in the forward
pass mixes the images of a batch (BatchNorm in eval mode, as the recipe keeps it) and dropout is off.
Without torchrun everything runs as one process, with the same code.

>>> from tl_helpers.distributed import Dist, backend_for
>>> Dist.single().world_size, backend_for("cpu"), backend_for("cuda")
(1, 'gloo', 'nccl')
"""

from __future__ import annotations

import contextlib
import datetime
import inspect
import itertools
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
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


def restart_count() -> int:
    """How many times torchrun has restarted the workers so far (``TORCHELASTIC_RESTART_COUNT``; 0 outside it).

    >>> restart_count() == int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    True
    """
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def restart_store_warning() -> str | None:
    """A warning when torchrun may restart these processes (``--max-restarts`` above 0) while sharing its
    rendezvous store with them (``TORCHELASTIC_USE_AGENT_STORE``, PyTorch's default since 2.5); ``None``
    otherwise.

    Why: the launcher keeps one store for every attempt, so the restarted processes can find the addresses of
    the processes that died and fail to connect ("Gloo connectFullMesh failed ... Connection refused").
    With PyTorch 2.14 and gloo every restart failed that way here; with ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``
    in the launcher's environment each attempt gets a fresh store and the restart works (pytorch/pytorch
    issue 135712 describes the same with nccl).

    >>> restart_store_warning() is None or "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in restart_store_warning()
    True
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    if int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) < 1:
        return None
    return ("torchrun may restart the processes (--max-restarts) but shares its store with them: a restarted "
            "process can then read the address of a dead one and fail to connect. Launch with "
            "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 in the environment (e.g. TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 "
            "torchrun ...) so that every attempt gets a fresh store.")


def _accepts(fn: Callable, name: str) -> bool:
    """Whether ``fn`` takes a keyword ``name`` (the installed PyTorch's signature decides)."""
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin without a signature
        return False


def init_kwargs(device: torch.device | str, timeout_s: float | None = None) -> dict:
    """The keyword arguments :func:`setup` passes to ``dist.init_process_group`` for ``device``.

    ``env://`` reads ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` (torchrun sets them). On
    CUDA the backend is nccl and, where the installed PyTorch accepts it, ``device_id`` binds the group to
    the process's GPU (connections are made eagerly and the GPU is never guessed). ``timeout_s``: how long a
    collective may wait for the slowest process before the job fails (PyTorch's default when ``None``).

    >>> init_kwargs("cpu", timeout_s=60)
    {'backend': 'gloo', 'init_method': 'env://', 'timeout': datetime.timedelta(seconds=60)}
    >>> init_kwargs("cuda:1")["device_id"] if _accepts(dist.init_process_group, "device_id") else torch.device("cuda:1")
    device(type='cuda', index=1)
    """
    device = torch.device(device)
    kwargs: dict = {"backend": backend_for(device), "init_method": "env://"}
    if timeout_s is not None:
        kwargs["timeout"] = datetime.timedelta(seconds=timeout_s)
    if device.type == "cuda" and _accepts(dist.init_process_group, "device_id"):
        kwargs["device_id"] = device
    return kwargs


def setup(device: str | None = None, timeout_s: float | None = None) -> Dist:
    """Join the process group described by the environment, and return where this process stands.

    torchrun sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` and
    ``MASTER_PORT`` for every process it starts. ``device``: ``"cpu"``, ``"cuda"``, or ``None`` for CUDA when
    there is a GPU. On CUDA each process takes the GPU of its local rank (one process per GPU) and the backend
    is nccl; on the CPU it is gloo (:func:`init_kwargs`). Outside torchrun this returns :meth:`Dist.single`
    without creating a group.
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
    if not dist.is_initialized():
        dist.init_process_group(**init_kwargs(dev, timeout_s))
    return Dist(rank, local_rank, world, local_world, dev, backend_for(dev))


def cleanup() -> None:
    """Leave the process group (a no-op when there is none)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group(device: str | None = None, timeout_s: float | None = None) -> Iterator[Dist]:
    """``with process_group() as d:`` joins the group (:func:`setup`) and always leaves it (:func:`cleanup`).

    On an error the process says which rank failed, on stderr, leaves the group and re-raises: torchrun then
    stops the other processes (which would otherwise wait in their next collective until the timeout) and
    either restarts them all (``--max-restarts``) or exits with an error.

    >>> with process_group("cpu") as d:
    ...     d.world_size
    1
    """
    d = setup(device, timeout_s)
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


def broadcast_object(obj, d: Dist, src: int = 0):
    """Rank ``src``'s ``obj`` (any picklable object) in every process; for one process, ``obj`` itself.

    >>> broadcast_object({"classes": ["a", "b"]}, Dist.single())
    {'classes': ['a', 'b']}
    """
    if not d.distributed:
        return obj
    box = [obj if d.rank == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj, d: Dist) -> list:
    """Every process's ``obj``, in rank order, in every process (``all_gather_object``).

    >>> gather_objects(3, Dist.single())
    [3]
    """
    if not d.distributed:
        return [obj]
    out: list = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out


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


def steps_per_epoch(n_train: int, global_batch: int, world_size: int) -> int:
    """Optimizer steps in one epoch of ``n_train`` images: each process gets ``ceil(n / world)`` of them
    (the ``DistributedSampler`` pads) in batches of ``global_batch / world``, the last one partial.

    >>> steps_per_epoch(301, 32, 1), steps_per_epoch(301, 32, 2), steps_per_epoch(301, 512, 16)
    (10, 10, 1)
    """
    per_process = math.ceil(n_train / world_size)
    return math.ceil(per_process / per_process_batch(global_batch, world_size))


def few_steps_warning(n_train: int, global_batch: int, world_size: int, epochs: int,
                      min_steps: int = 10) -> str | None:
    """A warning when ``global_batch`` over ``world_size`` processes leaves fewer than ``min_steps`` optimizer
    steps an epoch (``None`` when there are enough). Bigger batches mean fewer steps: with a one-cycle schedule
    and a few hundred images, a cluster-sized batch trains for a handful of steps in all.

    >>> print(few_steps_warning(301, 512, 16, epochs=7))  # doctest: +NORMALIZE_WHITESPACE
    A global batch of 512 over 16 processes leaves 1 optimizer step an epoch on 301 training images (7 in all over
    7 epochs), fewer than 10: few updates to learn from, and little room for the warm-up of the schedule. Use a
    global batch of 32 or less (16 x 2) here, or more data.
    >>> few_steps_warning(301, 32, 2, epochs=7) is None
    True
    """
    steps = steps_per_epoch(n_train, global_batch, world_size)
    if steps >= min_steps:
        return None
    largest = 0
    for per in range(1, global_batch // world_size + 1):    # the largest batch (a multiple of world) that is enough
        if steps_per_epoch(n_train, per * world_size, world_size) >= min_steps:
            largest = per * world_size
    advice = (f"Use a global batch of {largest} or less ({world_size} x {largest // world_size}) here, or more data."
              if largest else "Even one image a process gives fewer: use fewer processes or more data.")
    return (f"A global batch of {global_batch} over {world_size} processes leaves {steps} optimizer "
            f"step{'s' if steps != 1 else ''} an epoch on {n_train} training images ({steps * epochs} in all over "
            f"{epochs} epochs), fewer than {min_steps}: few updates to learn from, and little room for the warm-up "
            f"of the schedule. {advice}")


def loader_options(device: torch.device | str, workers: int | None = None, local_world_size: int = 1) -> dict:
    """DataLoader options for a process on ``device``: worker processes and pinned memory on CUDA.

    A GPU waits for data unless images are decoded and augmented in parallel (``num_workers``) and copied
    from page-locked memory (``pin_memory``, so ``.to(device, non_blocking=True)`` overlaps the copy).
    Default workers: on CUDA the cores divided among the processes of this machine, at most 8; on the CPU 0
    (the training itself needs the cores, and worker processes would compete with it).

    >>> loader_options("cpu")
    {'num_workers': 0, 'pin_memory': False}
    >>> loader_options("cuda", workers=4)
    {'num_workers': 4, 'pin_memory': True, 'persistent_workers': True}
    """
    cuda = torch.device(device).type == "cuda"
    if workers is None:
        workers = min(8, max(1, cores() // max(local_world_size, 1) - 1)) if cuda else 0
    options: dict = {"num_workers": workers, "pin_memory": cuda}
    if workers > 0:
        options["persistent_workers"] = True   # no new worker processes at every epoch
    return options


def shard_loader(dataset: Dataset, global_batch: int, d: Dist, train: bool = True, seed: int = 0,
                 **options) -> DataLoader:
    """A DataLoader over this process's share of ``dataset``, batches of ``global_batch / world_size``.

    A ``DistributedSampler`` deals the indices out like cards: after a shuffle that is the same in every
    process (``seed`` plus the epoch: call :func:`set_epoch` before each epoch, or every epoch repeats the
    first one's order), process ``r`` takes positions ``r, r + N, r + 2N...``. When the dataset does not
    divide evenly, a few indices are repeated so that every process gets as many batches: DDP needs every
    process to take part in every step. ``options`` go to the DataLoader (:func:`loader_options`).

    >>> loader = shard_loader(list(range(10)), 4, Dist(rank=1, world_size=2), train=False)
    >>> [b.tolist() for b in loader]
    [[1, 3], [5, 7], [9]]
    """
    sampler = DistributedSampler(dataset, num_replicas=d.world_size, rank=d.rank, shuffle=train, seed=seed)
    return DataLoader(dataset, batch_size=per_process_batch(global_batch, d.world_size), sampler=sampler, **options)


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


def unshard(parts: Sequence[Sequence], total: int) -> list:
    """Items that :func:`shard` dealt out (process ``r`` got ``r, r + N, ...``), put back in dataset order.

    >>> unshard([[0, 2, 4], [1, 3]], 5)
    [0, 1, 2, 3, 4]
    """
    out: list = [None] * total
    for r, part in enumerate(parts):
        out[r::len(parts)] = list(part)
    return out


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
    training_bn = [n for n, m in model.named_modules()
                   if isinstance(m, _BN) and not isinstance(m, nn.SyncBatchNorm) and m.training]
    if training_bn:
        problems.append(f"{len(training_bn)} BatchNorm layers are in training mode (e.g. {training_bn[0]}): each "
                        "process normalises with the statistics of its own share of the batch, so the step is no "
                        "longer that of the whole batch; call set_bn_eval(model) (the recipe), or use "
                        "nn.SyncBatchNorm.convert_sync_batchnorm on GPUs")
    return problems


def ddp_kwargs(model: nn.Module, d: Dist, ddp_init: Callable = DDP.__init__) -> dict:
    """The keyword arguments :func:`wrap` gives ``DistributedDataParallel`` for ``model`` on ``d.device``.

    - ``device_ids=[index]`` for a module on one GPU (``None`` on the CPU, as DDP requires).
    - Buffers: with BatchNorm in eval mode the running statistics never change, so there is nothing to copy
      from rank 0 before every forward pass. PyTorch 2.13 and later say so with ``forward_sync_buffers=False``
      (the constructor still copies rank 0's buffers once). Older releases only know ``broadcast_buffers``,
      whose ``False`` would also skip that first copy, so there the default is kept (a copy of the buffers at
      every forward pass: a few hundred kB for Lite0). ``ddp_init`` is the constructor whose signature decides.

    >>> net = set_bn_eval(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)))
    >>> ddp_kwargs(net, Dist(device=torch.device("cuda", 1)), ddp_init=lambda self, module, device_ids=None: None)
    {'device_ids': [1]}
    """
    kwargs: dict = {"device_ids": [d.device.index or 0] if d.device.type == "cuda" else None}
    bn_training = any(isinstance(m, _BN) and m.training for m in model.modules())
    if _accepts(ddp_init, "forward_sync_buffers"):
        kwargs["forward_sync_buffers"] = bn_training
    return kwargs


def wrap(model: nn.Module, d: Dist) -> nn.Module:
    """Move ``model`` to the process's device and wrap it in DDP (for one process: return it as is).

    What DDP needs from the recipe:

    - **Frozen parameters.** DDP synchronises the parameters that have ``requires_grad=True`` *when it is
      built*; frozen ones are simply left out. So freeze and unfreeze first, then wrap, and wrap again after
      changing what is trainable (as :func:`two_phase_ddp` does for each step of phase 2): a tensor unfrozen
      after wrapping would be trained on each process's own gradient, and the copies would drift apart.
    - **BatchNorm in eval mode.** Then ``N`` processes take the step of one big batch; in training mode a
      warning says why they do not (:func:`ddp_problems`). The buffers' handling is :func:`ddp_kwargs`.
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
    ddp = DDP(model, **ddp_kwargs(model, d))
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


def make_scaler(device: torch.device | str) -> torch.amp.GradScaler | None:
    """A ``GradScaler`` for mixed precision on CUDA (``None`` elsewhere), as :func:`tl_helpers.train.fit` uses.

    Under DDP each process scales its own loss by the same factor (the scalers start alike and skip a step
    together: an inf or NaN in the averaged gradient reaches every process).

    >>> make_scaler("cpu") is None
    True
    """
    return torch.amp.GradScaler("cuda") if torch.device(device).type == "cuda" else None


class AllReduceCounter:
    """Counts what DDP sends: a communication hook that counts the all-reduce calls and bytes, then does
    PyTorch's default all-reduce (the same averaging). ``install(ddp)`` once, right after wrapping.

    >>> AllReduceCounter().calls
    0
    """

    def __init__(self) -> None:
        self.calls = 0
        self.bytes = 0

    def install(self, ddp: DDP) -> AllReduceCounter:
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        def hook(state, bucket):
            self.calls += 1
            self.bytes += bucket.buffer().numel() * bucket.buffer().element_size()
            return allreduce_hook(state, bucket)

        ddp.register_comm_hook(None, hook)
        return self


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


def evaluate_sharded(model: nn.Module, dataset: Dataset, d: Dist, loss_fn=None, batch_size: int = 16,
                     **options) -> tuple[float, float]:
    """(loss, accuracy) over the whole ``dataset``, each process evaluating its :func:`shard`.

    Each process runs the plain model (:func:`unwrap`), *not* the DDP wrapper: the shards may have different
    numbers of batches, and a DDP forward pass can start a collective (a buffer broadcast) that would leave
    one process waiting for the other. Only the three sums (loss, correct, count) are all-reduced.
    """
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    part = shard(dataset, d)
    loader = DataLoader(part, batch_size=batch_size, **options)
    loss, acc = evaluate_loader(unwrap(model), loader, loss_fn, d.device) if len(part) else (0.0, 0.0)
    (loss_sum, correct, n) = all_reduce_sum([loss * len(part), acc * len(part), len(part)], d)
    return loss_sum / n, round(correct) / n


@torch.no_grad()
def predict_sharded(model: nn.Module, dataset: Dataset, d: Dist, batch_size: int = 32, **options) -> list[int]:
    """The predicted class of every item of ``dataset``, in dataset order, in every process: each process
    predicts its :func:`shard` with the plain model, then the shares are gathered."""
    net = unwrap(model).eval()
    part = shard(dataset, d)
    preds: list[int] = []
    for x, _ in DataLoader(part, batch_size=batch_size, **options):
        with torch.autocast(d.device.type, enabled=d.device.type == "cuda"):
            preds += net(x.to(d.device, non_blocking=True)).argmax(1).tolist()
    return unshard(gather_objects(preds, d), len(dataset))


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
            accumulate: int = 1, start: int = 0, scaler: torch.amp.GradScaler | None = None,
            on_epoch_end: Callable[[int, History], None] | None = None) -> History:
    """:func:`tl_helpers.train.fit`'s loop for several processes; every process calls it.

    ``model`` is wrapped (:func:`wrap`); ``train_loader`` comes from :func:`shard_loader`; ``scheduler`` is a
    per-batch one (one-cycle). Each epoch: a new shuffle (:func:`set_epoch`), one pass with
    :func:`tl_helpers.train.train_one_epoch` (DDP averages the gradients inside the last chunk's
    ``backward()``), the training loss and accuracy reduced over processes, validation on shards
    (:func:`evaluate_sharded`). Rank 0 alone shows the progress bar and writes ``checkpoint`` (the unwrapped
    model's weights, the optimizer and the history) at the end of every epoch; ``on_epoch_end(epoch, history)``
    then runs in every process (it may use collectives: :func:`two_phase_ddp` writes its snapshot there).
    ``start``: epochs of this phase already done (a resumed run). Each history row adds ``train_images`` and
    ``val_images`` (counted over all processes) and ``images_per_s``: training images of all processes per
    second of the slowest one. On CUDA the forward pass runs in mixed precision (``torch.autocast`` and the
    ``scaler``, :func:`make_scaler` by default). Every process returns the same history.
    """
    check_wrapped(model)
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    history = history if history is not None else History()
    first = int(history.rows[-1]["epoch"]) if history.rows else 0
    scaler = scaler if scaler is not None else make_scaler(d.device)
    n_val = int(all_reduce_sum([len(shard(val_set, d))], d)[0]) if val_set is not None else 0
    bar = tqdm(range(start, epochs), desc=phase, disable=not (progress and d.is_main), initial=start, total=epochs)
    for e in bar:
        epoch = first + e - start + 1            # counted over the whole history, as fit() does
        set_epoch(train_loader, epoch - 1)
        lr = max(g["lr"] for g in optimizer.param_groups)
        barrier(d)
        began = time.perf_counter()
        train_loss, train_acc = train_one_epoch(model, train_loader, optimizer, loss_fn, d.device, scheduler,
                                                scaler, accumulate=accumulate)
        seconds = all_reduce_max(time.perf_counter() - began, d)
        n_local = _samples_per_epoch(train_loader)
        train_loss, n = reduce_mean(train_loss, n_local, d)
        train_acc, _ = reduce_mean(train_acc, n_local, d)
        val_loss, val_acc = evaluate_sharded(model, val_set, d, loss_fn) if val_set is not None else (math.nan,) * 2
        history.append({"phase": phase, "epoch": epoch, "train_loss": train_loss, "train_acc": train_acc,
                        "val_loss": val_loss, "val_acc": val_acc, "lr": lr, "seconds": seconds,
                        "images_per_s": n / seconds, "train_images": n, "val_images": n_val})
        if checkpoint is not None and d.is_main:
            save_checkpoint(checkpoint, unwrap(model), optimizer, scheduler, history, phase=phase,
                            world_size=d.world_size)
        if on_epoch_end is not None:
            on_epoch_end(e + 1, history)
        barrier(d)  # nobody goes on (or reads a file) before rank 0 has written it
        bar.set_postfix(train_loss=f"{train_loss:.3f}", val_acc=f"{val_acc:.3f}")
    bar.close()
    return history


def median_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(median, low, high): the median of repeated timings and a distribution-free interval for it.

    The interval runs between two order statistics chosen with the binomial distribution (each timing is
    above the true median with probability 1/2), so it needs no assumption about the shape of the timings:
    a few slow steps (another program woke up) move it little. With 15 timings it runs from the 4th to the
    12th smallest (96.5 % coverage).

    >>> median_interval([5, 1, 4, 2, 3, 9, 8, 7, 6, 10, 11, 12, 13, 14, 15])
    (8.0, 4.0, 12.0)
    """
    from scipy import stats

    x = np.sort(np.asarray(values, dtype=float))
    n = len(x)
    if n < 6:
        raise ValueError(f"{n} timings are too few for an interval of the median: time at least 6 steps.")
    k = int(stats.binom.ppf((1 - confidence) / 2, n, 0.5))   # P(Binomial(n, 1/2) <= k) ~ (1 - confidence) / 2
    k = max(k, 1)
    return float(np.median(x)), float(x[k - 1]), float(x[n - k])


def step_times(model: nn.Module, loader: Iterable, d: Dist, steps: int = 15, warmup: int = 2,
               accumulate: int = 1, lr: float = 1e-4) -> list[float]:
    """Seconds of each of ``steps`` training steps (after ``warmup`` untimed ones), the slowest process's.

    Trains ``model`` itself (pass a copy to keep the original) with AdamW on every trainable parameter, one
    batch of ``loader`` a step through :func:`tl_helpers.train.train_one_epoch`: data loading, forward,
    backward with DDP's gradient averaging, optimizer step. Every step starts at a barrier, so a step's time
    is the slowest process's. Turn the times into images per second with the global batch, and compare
    medians (:func:`median_interval`): one timing is at the mercy of whatever else the machine does.

    >>> net = set_bn_eval(nn.Sequential(nn.Flatten(), nn.Linear(12, 3), nn.BatchNorm1d(3)))
    >>> data = [(torch.randn(4, 3, 2, 2), torch.tensor([0, 1, 2, 0]))] * 9
    >>> len(step_times(net, data, Dist.single(), steps=6))
    6
    """
    if len(loader) < warmup + steps:
        raise ValueError(f"The loader has {len(loader)} batches, fewer than warmup + steps = {warmup + steps}: "
                         "use a bigger dataset or fewer steps.")
    plain = unwrap(model)
    ddp = wrap(plain, d)
    optimizer = torch.optim.AdamW([p for p in plain.parameters() if p.requires_grad], lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    batches = iter(loader)
    if warmup:
        train_one_epoch(ddp, itertools.islice(batches, warmup), optimizer, loss_fn, d.device, accumulate=accumulate)
    times = []
    for batch in itertools.islice(batches, steps):
        barrier(d)
        began = time.perf_counter()
        train_one_epoch(ddp, [batch], optimizer, loss_fn, d.device, accumulate=accumulate)
        if d.device.type == "cuda":
            torch.cuda.synchronize(d.device)
        times.append(all_reduce_max(time.perf_counter() - began, d))
    return times


def check_steps(model: nn.Module, dataset: Dataset, global_batch: int, d: Dist, steps: int = 1,
                optimizer: str = "sgd", lr: float = 0.1, accumulate: int = 1) -> nn.Module:
    """``steps`` optimizer steps on the first ``steps * global_batch`` items of ``dataset``, shared by all
    processes; returns the (unwrapped) model after them.

    The equivalence test of data parallelism: with no randomness in the forward pass (BatchNorm in eval mode,
    dropout off: ``model.eval()``), the steps of ``N`` processes with ``global_batch / N`` items each are the
    steps of one process with all of them, whatever the optimizer (``"sgd"`` or ``"adamw"``) and with the
    batches processed in ``accumulate`` chunks. Step ``k`` uses items ``k * global_batch ...``, dealt out as
    by :func:`shard_loader`. The model stays in the mode it is in (``eval()`` for the test).
    """
    if len(dataset) < steps * global_batch:
        raise ValueError(f"{steps} steps of {global_batch} need {steps * global_batch} items; the dataset has "
                         f"{len(dataset)}.")
    data = Subset(dataset, range(steps * global_batch))
    ddp = wrap(model, d)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = (torch.optim.AdamW(params, lr=lr) if optimizer == "adamw" else
           torch.optim.SGD(params, lr=lr) if optimizer == "sgd" else None)
    if opt is None:
        raise ValueError(f"optimizer={optimizer!r}: choose 'sgd' or 'adamw'.")
    for k in range(steps):
        batch = Subset(data, range(k * global_batch, (k + 1) * global_batch))
        x, y = next(iter(shard_loader(batch, global_batch, d, train=False)))
        x, y = x.to(d.device), y.to(d.device)
        opt.zero_grad(set_to_none=True)
        chunks = list(zip(x.chunk(accumulate), y.chunk(accumulate)))
        for i, (xc, yc) in enumerate(chunks):   # as train_one_epoch: DDP averages after the last chunk only
            quiet = ddp.no_sync() if i < len(chunks) - 1 and isinstance(ddp, DDP) else contextlib.nullcontext()
            with quiet:
                (nn.functional.cross_entropy(ddp(xc), yc) * (len(yc) / len(y))).backward()
        opt.step()
    return unwrap(ddp)


# --------------------------------------------------------------------------------------------------
# The recipe for several processes, with snapshots to resume from
# --------------------------------------------------------------------------------------------------

def _snapshot_state(model: nn.Module, optimizer, scheduler, scaler, head_history: History, history: History,
                    phase: str, phase_epoch: int, d: Dist, settings: dict | None) -> dict:
    """What :func:`two_phase_ddp` saves after every epoch (the random generators of every process included)."""
    from tl_helpers.checkpoints import rng_state

    state = {"phase": phase, "phase_epoch": phase_epoch, "head_history": head_history.to_dict(),
             "history": history, "rng": gather_objects(rng_state(), d), "world_size": d.world_size,
             "settings": settings or {}}
    if scaler is not None:
        state["scaler"] = scaler.state_dict()
    return {"model": unwrap(model), "optimizer": optimizer, "scheduler": scheduler, **state}


def two_phase_ddp(model: nn.Module, train_set: Dataset, val_set: Dataset,
                  features: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None,
                  d: Dist, recipe: Recipe | None = None, global_batch: int = 32,
                  checkpoint: str | Path | None = None, progress: bool = True, snapshot: str | Path | None = None,
                  resume: dict | None = None, settings: dict | None = None, loader_kwargs: dict | None = None,
                  after_epoch: Callable[[str, History], None] | None = None) -> tuple[History, History]:
    """:func:`tl_helpers.recipe.two_phase` for several processes: the same recipe, the same steps.

    Phase 1 (a head on cached features) runs on rank 0 alone (``features`` is only needed there): it takes
    milliseconds, so splitting it would cost more in communication than it saves. Phase 2 runs everywhere:
    for each step (top stages, then all) the model is frozen and unfrozen as in the recipe, BatchNorm set to
    eval mode, the optimizer and one-cycle schedule built on the plain model, and the model wrapped again
    (:func:`wrap`, whose constructor hands rank 0's head to every process).

    ``snapshot``: a path (on storage every machine reads, for several machines) where rank 0 writes the whole
    state after phase 1 and after every epoch: weights, optimizer, schedule, scaler, histories, and the random
    generators of every process. ``resume``: such a snapshot, loaded (:func:`tl_helpers.distributed_main`
    does it when torchrun restarts the workers): phase 1 and the epochs already done are skipped, and with
    the same number of processes the run continues exactly where it stopped. ``settings`` are stored in the
    snapshot (what defines the run). ``after_epoch(phase, history)`` runs in every process after each snapshot
    (after phase 1 with phase 1's history, which only rank 0 holds; then after every epoch of phase 2).
    ``checkpoint``: the weights alone, after every epoch. Returns (phase 1, phase 2) histories; phase 1's is
    empty except on rank 0 (and after a resume, where it comes from the snapshot).
    """
    from tl_helpers.checkpoints import set_rng_state
    from tl_helpers.recipe import fit_head_on_features
    from tl_helpers.surgery import replace_head

    recipe = recipe or Recipe()
    num_classes = len(getattr(train_set, "classes", [])) or None
    head_history, history = History(), History()
    scaler = make_scaler(d.device)
    phases = finetune_phases(recipe)
    done_phase, done_epochs = -1, 0          # index of the phase in progress in `resume`, and its epochs done

    def save(plain_model, optimizer, scheduler, phase, phase_epoch):
        state = _snapshot_state(plain_model, optimizer, scheduler, scaler, head_history, history, phase,
                                phase_epoch, d, settings)
        if d.is_main and snapshot is not None:
            save_checkpoint(snapshot, **state)

    if resume is not None:
        replace_head(model, num_classes)
        model.load_state_dict(resume["model"])
        head_history = History.from_dict(resume["head_history"])
        history = History.from_dict(resume["history"])
        names = [p[0] for p in phases]
        if resume["phase"] != "head":
            done_phase, done_epochs = names.index(resume["phase"]), int(resume["phase_epoch"])
    elif d.is_main:
        if features is None:
            raise ValueError("Rank 0 needs the cached features (X_train, y_train, X_val, y_val) for phase 1.")
        X_train, y_train, X_val, y_val = features
        head, head_history = fit_head_on_features(
            X_train, y_train, X_val, y_val, num_classes=num_classes, epochs=recipe.head_epochs, lr=recipe.head_lr,
            weight_decay=recipe.head_weight_decay, seed=recipe.seed, label_smoothing=recipe.label_smoothing)
        replace_head(model, None, head=head)
    else:
        replace_head(model, num_classes)  # the right shape; DDP's constructor copies rank 0's weights into it
    if resume is None:
        save(model, None, None, "head", 0)  # rank 0's head; a restart from here skips phase 1
        if after_epoch is not None:
            barrier(d)
            after_epoch("head", head_history)
    if resume is not None and resume.get("rng") and len(resume["rng"]) == d.world_size:
        set_rng_state(resume["rng"][d.rank])   # the same number of processes: continue the same random draws
    elif resume is not None:
        torch.manual_seed(recipe.seed + d.rank + 1000 * (len(history) + 1))  # another world size: new draws
    else:
        torch.manual_seed(recipe.seed + d.rank)  # augmentation and dropout differ between processes, as they should
    loader = shard_loader(train_set, global_batch, d, train=True, seed=recipe.seed, **(loader_kwargs or {}))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    for i, (phase, stages, epochs) in enumerate(phases):
        if i < done_phase or (i == done_phase and done_epochs >= epochs):
            continue
        plain = unwrap(model).to(d.device)   # on its device first: a resumed optimizer state follows the weights
        optimizer, scheduler = prepare_phase(plain, recipe, stages, epochs, len(loader))
        start = 0
        if i == done_phase:
            optimizer.load_state_dict(resume["optimizer"])
            scheduler.load_state_dict(resume["scheduler"])
            if scaler is not None and "scaler" in resume:
                scaler.load_state_dict(resume["scaler"])
            start = done_epochs
        model = wrap(plain, d)

        def epoch_end(phase_epoch, hist, phase=phase, optimizer=optimizer, scheduler=scheduler):
            history.rows[:] = hist.rows
            save(model, optimizer, scheduler, phase, phase_epoch)
            if after_epoch is not None:
                barrier(d)             # the snapshot is on disk before anything else happens
                after_epoch(phase, hist)

        fit_ddp(model, loader, val_set, optimizer, epochs, d, loss_fn, scheduler, phase=phase, history=history,
                checkpoint=checkpoint, progress=progress, accumulate=recipe.accumulate, start=start,
                scaler=scaler, on_epoch_end=epoch_end)
    unwrap(model).eval()
    return head_history, history


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB (0 where the OS does not say)."""
    try:
        import resource
    except ImportError:  # Windows
        return 0.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10
