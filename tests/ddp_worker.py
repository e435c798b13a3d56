"""A program that tests/test_distributed.py starts under torchrun: the equivalence checks of data parallelism.

    torchrun --standalone --nproc-per-node 2 tests/ddp_worker.py steps OUT.pt adamw 3 2 float64
    torchrun --standalone --nproc-per-node 2 tests/ddp_worker.py recipe OUT.pt

``steps``: :func:`tl_helpers.distributed.check_steps` (optimizer, number of steps, chunks per batch, dtype)
on the first images of :func:`fashion_tensors`; ``recipe``: :func:`tl_helpers.distributed.two_phase_ddp` with
:func:`small_recipe`. Rank 0 saves the weights at the end; the test runs the same thing in one process
(``check_steps`` with one process, and :func:`tl_helpers.recipe.two_phase`) and compares. The model is
EfficientNet-Lite0 with dropout and drop-connect off and BatchNorm in eval mode: nothing random in the
forward pass, so any difference is rounding.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from tl_helpers import distributed as D
from tl_helpers.arrays import fashion_mnist
from tl_helpers.models import load_pretrained
from tl_helpers.recipe import Recipe
from tl_helpers.surgery import replace_head, set_bn_eval

CLASSES = {1: "trouser", 5: "sandal", 7: "sneaker", 8: "bag"}
GLOBAL_BATCH = 16


def fashion_tensors(per_class: int, offset: int = 0, size: int = 32) -> TensorDataset:
    """``per_class`` Fashion-MNIST images of each of 4 classes as Lite0 inputs (3 x size x size, in [-1, 1]),
    classes interleaved; ``offset`` skips that many images of each class. The dataset has ``.classes``."""
    X, y = fashion_mnist("train")
    rows = [[int(i) for i in (y == c).nonzero()[0][offset:offset + per_class]] for c in CLASSES]
    order = [rows[c][k] for k in range(per_class) for c in range(len(CLASSES))]
    x = torch.from_numpy(X[order]).float()[:, None] / 255
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    labels = torch.tensor([list(CLASSES).index(int(y[i])) for i in order])
    data = TensorDataset((x - 0.5) / 0.5, labels)
    data.classes = list(CLASSES.values())
    return data


def deterministic_lite0(num_classes: int | None = len(CLASSES)) -> torch.nn.Module:
    """Lite0 with ImageNet weights, a seeded new head, no dropout, no drop-connect, BatchNorm in eval mode."""
    torch.manual_seed(0)
    model = load_pretrained().model
    if num_classes is not None:
        replace_head(model, num_classes)
    model._dropout.p = 0.0
    model._global_params = model._global_params._replace(drop_connect_rate=None)
    return set_bn_eval(model)


def small_recipe() -> Recipe:
    """The recipe, short: 2 head epochs, 1 on the top stages, 1 on all, batches in 2 chunks."""
    return Recipe(head_epochs=2, top_epochs=1, all_epochs=1, accumulate=2)


def learning_rate(optimizer: str) -> float:
    """The step size of each optimizer in the checks: large enough for a step far above rounding."""
    return 1e-3 if optimizer == "adamw" else 0.1


def features(model: torch.nn.Module, data: TensorDataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features of the model without its head (what phase 1 trains on)."""
    import copy

    from tl_helpers.data import compute_features

    backbone = replace_head(copy.deepcopy(model), None, head=torch.nn.Identity())
    return compute_features(backbone, data, progress=False)


def main(argv: list[str]) -> int:
    mode, out = argv[0], argv[1]
    torch.set_num_threads(1)
    with D.process_group("cpu") as d:
        if mode == "steps":
            optimizer, steps, accumulate, dtype = argv[2], int(argv[3]), int(argv[4]), getattr(torch, argv[5])
            model = deterministic_lite0().eval().to(dtype)
            data = fashion_tensors(16)
            data = TensorDataset(data.tensors[0].to(dtype), data.tensors[1])
            D.check_steps(model, data, GLOBAL_BATCH, d, steps=steps, optimizer=optimizer, lr=learning_rate(optimizer),
                          accumulate=accumulate)
        elif mode == "recipe":
            model = deterministic_lite0(num_classes=None)
            train, val = fashion_tensors(24), fashion_tensors(6, offset=24)
            feats = (*features(model, train), *features(model, val)) if d.is_main else None
            D.two_phase_ddp(model, train, val, feats, d, small_recipe(), GLOBAL_BATCH, progress=False)
        else:
            raise ValueError(f"unknown mode {mode!r}")
        if d.is_main:
            torch.save(D.unwrap(model).state_dict(), out)
        D.barrier(d)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
