"""Checkers for the exercises on data parallelism (torchrun and DistributedDataParallel).

>>> from tl_helpers.checks.distributed import EXERCISES, check_steps_per_epoch
>>> ok = check_steps_per_epoch(7, 7)
✅ Correct: 7 optimizer steps in all (1 an epoch); your prediction was right. A batch of 512 on 298 images leaves the one-cycle schedule 7 steps, where one process with a batch of 32 takes 70: keep the global batch, add processes to go faster, not to take bigger batches (distributed_main warns below 10 steps an epoch).
>>> EXERCISES["12.1"].checker is check_steps_per_epoch
True
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from torch import nn

from tl_helpers.checks import Exercise, _as_number, _NotYet, _checker, _type_error


@_checker("pass two whole numbers: check_steps_per_epoch(prediction, steps, n_train=298, global_batch=512, "
          "world_size=16).")
def check_steps_per_epoch(prediction, steps, n_train: int = 298, global_batch: int = 512, world_size: int = 16,
                          epochs: int = 7) -> str:
    """Predict, then check: how many optimizer steps does phase 2 take in all (``epochs`` epochs) when
    ``world_size`` processes share a global batch of ``global_batch`` over ``n_train`` images? ``prediction`` is
    the guess written down first, ``steps`` the number computed afterwards; the checker checks ``steps`` and
    says how far the guess was.

    >>> ok = check_steps_per_epoch(70, 70)
    ❌ Not yet: 70 is the steps of one process with a batch of 32 (10 an epoch). Hint: each process gets ceil(298 / 16) = 19 images an epoch, in batches of 512 / 16 = 32: that is 1 step an epoch, times the 7 epochs.
    """
    from tl_helpers.distributed import steps_per_epoch

    per_epoch = steps_per_epoch(n_train, global_batch, world_size)
    want = per_epoch * epochs
    per_process, batch = math.ceil(n_train / world_size), global_batch // world_size
    hint = (f"each process gets ceil({n_train} / {world_size}) = {per_process} images an epoch, in batches of "
            f"{global_batch} / {world_size} = {batch}: that is {per_epoch} step{'s' if per_epoch != 1 else ''} an "
            f"epoch, times the {epochs} epochs")
    guess = _as_number(prediction, "your prediction, a whole number of steps", "write your guess first, e.g. prediction = 50")
    got = _as_number(steps, "the number of steps, a whole number", hint)
    if got != int(got) or got < 0:
        raise _NotYet(f"{got:g} is not a whole number of optimizer steps", hint)
    if got != want:
        one_process = steps_per_epoch(n_train, batch, 1) * epochs
        if got == one_process:
            raise _NotYet(f"{int(got)} is the steps of one process with a batch of {batch} "
                          f"({one_process // epochs} an epoch)", hint)
        if got == per_epoch:
            raise _NotYet(f"{int(got)} is the steps of one epoch", f"multiply by the {epochs} epochs")
        raise _NotYet(f"{int(got)} steps, expected {want}", hint)
    verdict = ("your prediction was right" if guess == want else
               f"you predicted {int(guess) if guess == int(guess) else guess}")
    return (f"{want} optimizer steps in all ({per_epoch} an epoch); {verdict}. A batch of {global_batch} on "
            f"{n_train} images leaves the one-cycle schedule {want} steps, where one process with a batch of "
            f"{batch} takes {steps_per_epoch(n_train, batch, 1) * epochs}: keep the global batch, add processes "
            "to go faster, not to take bigger batches (distributed_main warns below 10 steps an epoch).")


def _shards(n: int, world: int) -> list[tuple[float, int, int]]:
    """Made-up per-process results (mean loss, correct, count) over shards of unequal size."""
    g = torch.Generator().manual_seed(n + world)
    sizes = [n // world + (1 if r < n % world else 0) for r in range(world)]
    sizes[-1] = max(1, sizes[-1] // 3)  # one process got much less data: plain averages go wrong
    out = []
    for size in sizes:
        correct = int(torch.randint(0, size + 1, (1,), generator=g))
        loss = float(torch.rand(1, generator=g) * 2)
        out.append((loss, correct, size))
    return out


@_checker("reduce(results) gets a list of (mean_loss, correct, count), one per process, and returns "
          "(mean_loss, accuracy).")
def check_reduce_metrics(reduce: Callable) -> str:
    """Does ``reduce(results)`` combine per-process (mean loss, correct, count) into the global mean and accuracy?

    >>> def plain_average(results):
    ...     return (sum(r[0] for r in results) / len(results), sum(r[1] / r[2] for r in results) / len(results))
    >>> ok = check_reduce_metrics(plain_average)
    ❌ Not yet: with 2 processes holding [38, 12] images, the plain average of their mean losses (0.9368) is not the mean over all images (0.6132). Hint: weight each process by its number of images: sum(mean * count) / sum(count).
    """
    if not callable(reduce):
        raise _type_error(reduce, "a function reduce(results)", "define def reduce(results): ... and pass reduce")
    for n, world in ((76, 2), (101, 3), (301, 4)):
        results = _shards(n, world)
        total = sum(c for _, _, c in results)
        want_loss = sum(m * c for m, _, c in results) / total
        want_acc = sum(k for _, k, _ in results) / total
        got = reduce([tuple(r) for r in results])
        if not (isinstance(got, (tuple, list)) and len(got) == 2):
            raise _type_error(got, "a pair (mean_loss, accuracy)", "return mean_loss, accuracy")
        loss = _as_number(got[0], "the mean loss (a number)", "return a float, e.g. total_loss / total_count")
        acc = _as_number(got[1], "the accuracy (a number)", "return a float between 0 and 1")
        if acc > 1.0 + 1e-9:
            raise _NotYet(f"an accuracy of {acc:g} is above 1", "divide the correct answers by the number of images")
        plain_loss = sum(m for m, _, _ in results) / world
        plain_acc = sum(k / c for _, k, c in results) / world
        if abs(loss - want_loss) > 1e-9:
            if abs(loss - plain_loss) < 1e-9:
                raise _NotYet(f"with {world} processes holding {[c for _, _, c in results]} images, the plain average "
                              f"of their mean losses ({loss:.4f}) is not the mean over all images ({want_loss:.4f})",
                              "weight each process by its number of images: sum(mean * count) / sum(count)")
            raise _NotYet(f"mean loss {loss:.4f}, expected {want_loss:.4f} (world of {world}, counts "
                          f"{[c for _, _, c in results]})", "a mean loss times its count is that process's total loss")
        if abs(acc - want_acc) > 1e-9:
            hint = "add up the correct answers and the counts first, then divide: sum(correct) / sum(count)"
            if abs(acc - plain_acc) < 1e-9:
                raise _NotYet(f"the plain average of the processes' accuracies ({acc:.4f}) is not the accuracy over "
                              f"all images ({want_acc:.4f}) when the processes hold {[c for _, _, c in results]} "
                              "images", hint + "; weight each process by its number of images")
            raise _NotYet(f"accuracy {acc:.4f}, expected {want_acc:.4f}", hint)
    return ("every image counts once, whichever process saw it: what dist.all_reduce of (loss sum, correct, count) "
            "followed by one division gives.")


def _tiny_model(bn_train: bool) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3))
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.2, 0.2)
        model[1].running_var.uniform_(0.5, 1.5)
    model.eval()
    if bn_train:
        model[1].train()
    model[0].weight.requires_grad_(False)  # a frozen layer: no gradient to average
    return model


def _full_batch_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    m = copy.deepcopy(model)
    params = [p for p in m.parameters() if p.requires_grad]
    return list(torch.autograd.grad(nn.functional.cross_entropy(m(x), y), params))


@_checker("ddp_gradients(model, x, y, world_size) returns a list of gradients, one per trainable parameter.")
def check_ddp_gradients(ddp_gradients: Callable) -> str:
    """Does ``ddp_gradients(model, x, y, world_size)`` give what DDP would: each process's gradient on its
    share (process r: items r, r + N, ...), averaged, one tensor per trainable parameter?

    >>> def summed(model, x, y, world_size):
    ...     grads = None
    ...     for r in range(world_size):
    ...         m = copy.deepcopy(model)
    ...         ps = [p for p in m.parameters() if p.requires_grad]
    ...         g = torch.autograd.grad(nn.functional.cross_entropy(m(x[r::world_size]), y[r::world_size]), ps)
    ...         grads = list(g) if grads is None else [a + b for a, b in zip(grads, g)]
    ...     return grads
    >>> ok = check_ddp_gradients(summed)  # doctest: +ELLIPSIS
    ❌ Not yet: your gradients are 2 times the full batch's: ...
    """
    if not callable(ddp_gradients):
        raise _type_error(ddp_gradients, "a function ddp_gradients(model, x, y, world_size)",
                          "define def ddp_gradients(model, x, y, world_size): ... and pass it")
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(12, 3, 6, 6, generator=g), torch.randint(0, 3, (12,), generator=g)
    for world in (2, 3, 4):
        model = _tiny_model(bn_train=False)
        before = [p.detach().clone() for p in model.parameters()]
        got = ddp_gradients(model, x, y, world)
        if not isinstance(got, (list, tuple)) or not all(isinstance(t, torch.Tensor) for t in got):
            raise _type_error(got, "a list of gradient tensors", "return one tensor per trainable parameter")
        want = _full_batch_grads(model, x, y)
        if len(got) != len(want):
            n_all = len(list(model.parameters()))
            raise _NotYet(f"{len(got)} gradients for {len(want)} trainable parameters ({n_all} in all, one frozen)",
                          "like DDP, leave out the parameters with requires_grad=False")
        if any(not torch.equal(a, p) for a, p in zip(before, model.parameters())):
            raise _NotYet("your function changed the model's weights",
                          "compute gradients only (on copies, or with torch.autograd.grad), take no optimizer step")
        for a, b in zip(got, want):
            if a.shape != b.shape:
                raise _NotYet(f"a gradient of shape {tuple(a.shape)} where {tuple(b.shape)} was expected",
                              "return the gradients in the order of model.parameters() (trainable ones only)")
        if all(torch.allclose(a, b, atol=1e-6, rtol=1e-4) for a, b in zip(got, want)):
            continue
        ratio = sum(float((a * b).sum()) for a, b in zip(got, want)) / sum(float((b * b).sum()) for b in want)
        if abs(ratio - world) < 0.05 * world:
            raise _NotYet(f"your gradients are {world} times the full batch's: the processes' gradients were added up",
                          "DDP averages: divide the sum by world_size (each process's loss is already a mean)")
        raise _NotYet(f"with {world} processes your gradients differ from the full batch's (largest difference "
                      f"{max(float((a - b).abs().max()) for a, b in zip(got, want)):.2e})",
                      "process r takes x[r::world_size]; compute each shard's mean loss and its gradient, then "
                      "average the gradients over the processes")
    return ("averaging the shards' gradients gives the full batch's gradient (BatchNorm in eval mode, equal shards): "
            "that is all DDP's all-reduce does.")


EXERCISES: dict[str, Exercise] = {
    "12.1": Exercise("Predict, then check: optimizer steps of a cluster-sized batch", "12", check_steps_per_epoch),
    "12.2": Exercise("Metrics over processes that hold unequal shares", "12", check_reduce_metrics),
    "12.3": Exercise("DDP's gradient, simulated in one process", "12", check_ddp_gradients),
}
