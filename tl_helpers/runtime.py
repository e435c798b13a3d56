"""Where the code runs and how to make it repeatable: device choice, seeding, the cache folder.

>>> from tl_helpers.runtime import get_device, seed_everything
>>> seed_everything(0)
>>> get_device().type in {"cpu", "cuda", "mps"}
True
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch


def get_device(prefer: str | None = None) -> torch.device:
    """Return the best available device: CUDA, then Apple's MPS, then the CPU.

    ``prefer`` ("cpu", "cuda", "mps") forces a choice; the environment variable ``TL_DEVICE`` does too.

    >>> get_device("cpu")
    device(type='cpu')
    """
    choice = prefer or os.environ.get("TL_DEVICE")
    if choice:
        return torch.device(choice)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and PyTorch (CPU and CUDA) so a run can be repeated.

    On the CPU two runs with the same seed give the same numbers; on a GPU some kernels stay
    non-deterministic unless ``torch.use_deterministic_algorithms(True)`` is also set.

    >>> seed_everything(1); a = torch.rand(1); seed_everything(1); bool(a == torch.rand(1))
    True
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def cache_dir(*parts: str) -> Path:
    """Return (and create) a folder under the course cache.

    The cache holds expensive results that are safe to delete: backbone features, checkpoints.
    It is ``$TL_CACHE_DIR`` if set, else ``~/.cache/tl_helpers``.

    >>> cache_dir("features").name
    'features'
    """
    root = Path(os.environ.get("TL_CACHE_DIR") or Path.home() / ".cache" / "tl_helpers")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
