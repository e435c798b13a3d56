"""Unsupervised domain adaptation: the pieces that make source and target features alike.

- ``grad_reverse`` / ``GradientReversal``: identity forward, gradient times ``-coeff`` backward (DANN);
- ``mmd``: multi-kernel Gaussian maximum mean discrepancy between two feature batches (DAN);
- ``coral``: distance between the feature covariances of two batches (Deep CORAL);
- ``adabn``: recompute every BatchNorm layer's running statistics on target data (AdaBN);
- ``proxy_a_distance``: how well a linear classifier tells the two domains apart, as a distance in [0, 2].

>>> import torch
>>> _ = torch.manual_seed(0); a, b = torch.randn(200, 4), torch.randn(200, 4)
>>> mmd(a, b).item() < mmd(a, b + 1).item()
True
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import nn

from tl_helpers.arrays import to_numpy

_BN = nn.modules.batchnorm._BatchNorm


class _ReverseGrad(torch.autograd.Function):
    """Identity on the way forward; multiplies the incoming gradient by ``-coeff`` on the way back."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, coeff: float) -> torch.Tensor:
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.coeff * grad, None


def grad_reverse(x: torch.Tensor, coeff: float = 1.0) -> torch.Tensor:
    """``x`` unchanged, but the gradient that flows back through it is multiplied by ``-coeff``.

    Placed between a feature extractor and a domain classifier, it makes one backward pass train the
    classifier to *tell* the domains apart and the features to *hide* the domain (DANN).

    >>> x = torch.ones(3, requires_grad=True)
    >>> grad_reverse(x, 0.5).sum().backward()
    >>> x.grad
    tensor([-0.5000, -0.5000, -0.5000])
    """
    return _ReverseGrad.apply(x, coeff)


class GradientReversal(nn.Module):
    """``grad_reverse`` as a layer; change ``coeff`` during training (DANN ramps it from 0 to 1).

    >>> layer = GradientReversal(2.0)
    >>> x = torch.ones(2, requires_grad=True); layer(x).sum().backward(); x.grad
    tensor([-2., -2.])
    """

    def __init__(self, coeff: float = 1.0):
        super().__init__()
        self.coeff = coeff

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return grad_reverse(x, self.coeff)

    def extra_repr(self) -> str:
        return f"coeff={self.coeff}"


def dann_coeff(progress: float, gamma: float = 10.0) -> float:
    """DANN's schedule for the reversal strength: ``2 / (1 + exp(-gamma p)) - 1``, from 0 to almost 1.

    ``progress`` is the fraction of training done (0 to 1). Starting at 0 keeps the noisy domain signal of
    a random network from disturbing the first steps.

    >>> dann_coeff(0.0), round(dann_coeff(1.0), 4)
    (0.0, 0.9999)
    """
    return float(2.0 / (1.0 + np.exp(-gamma * progress)) - 1.0)


def _check_pair(source: torch.Tensor, target: torch.Tensor, what: str) -> None:
    if source.dim() != 2 or target.dim() != 2 or source.shape[1] != target.shape[1]:
        raise ValueError(f"{what} compares two batches of feature vectors (n x d and m x d), got shapes "
                         f"{tuple(source.shape)} and {tuple(target.shape)}: flatten the features first "
                         "(x.flatten(1)).")
    if len(source) < 2 or len(target) < 2:
        raise ValueError(f"{what} needs at least 2 rows in each batch, got {len(source)} and {len(target)}.")


def mmd(source: torch.Tensor, target: torch.Tensor, kernel_mul: float = 2.0, kernel_num: int = 5,
        bandwidth: float | None = None) -> torch.Tensor:
    """Squared maximum mean discrepancy with a sum of ``kernel_num`` Gaussian kernels (as in DAN).

    The kernels' bandwidths are ``bandwidth * kernel_mul**k`` for k centred on 0, where ``bandwidth``
    defaults to the mean squared distance between all pairs of rows (the median heuristic's cousin),
    computed without gradient. The estimate is the biased (V-statistic) one: ``mean k(s, s') +
    mean k(t, t') - 2 mean k(s, t)``, always >= 0 and of order ``1/n`` for two samples of one distribution.

    >>> g = torch.Generator().manual_seed(0)
    >>> s, t = torch.randn(300, 8, generator=g), torch.randn(300, 8, generator=g)
    >>> mmd(s, t).item() < 0.05, mmd(s, t + 0.5).item() > 0.2     # ~0.03 and ~0.28: a shift shows
    (True, True)
    """
    _check_pair(source, target, "mmd")
    n = len(source)
    joint = torch.cat([source, target])
    dist = torch.cdist(joint, joint).pow(2)
    if bandwidth is None:
        m = len(joint)
        bandwidth = dist.detach().sum().item() / (m * m - m)
    bandwidth = max(float(bandwidth), 1e-12)
    scales = [bandwidth * kernel_mul ** (k - kernel_num // 2) for k in range(kernel_num)]
    kernel = sum(torch.exp(-dist / s) for s in scales)
    return kernel[:n, :n].mean() + kernel[n:, n:].mean() - 2 * kernel[:n, n:].mean()


def covariance(x: torch.Tensor) -> torch.Tensor:
    """The ``d x d`` covariance of the rows of ``x`` (centred, divided by n - 1).

    >>> covariance(torch.tensor([[1.0, 2.0], [3.0, 6.0]]))
    tensor([[2., 4.],
            [4., 8.]])
    """
    centred = x - x.mean(dim=0, keepdim=True)
    return centred.T @ centred / (len(x) - 1)


def coral(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Deep CORAL's loss: ``||C_s - C_t||_F^2 / (4 d^2)``, the gap between the features' covariances.

    Zero when the two batches have the same covariance, whatever their means.

    >>> x = torch.tensor([[0.0, 1.0], [2.0, 3.0], [4.0, 2.0]])
    >>> coral(x, x + 10).item()
    0.0
    >>> coral(x, 2 * x).item()
    10.6875
    """
    _check_pair(source, target, "coral")
    d = source.shape[1]
    return (covariance(source) - covariance(target)).pow(2).sum() / (4 * d * d)


@torch.no_grad()
def adabn(model: nn.Module, batches: Iterable[torch.Tensor] | torch.Tensor, batch_size: int = 256) -> nn.Module:
    """AdaBN: replace every BatchNorm layer's running mean and variance by those of the target data.

    The statistics are reset, then averaged over all of ``batches`` (a tensor of images, split into
    ``batch_size`` chunks, or any iterable of image tensors or ``(images, labels)`` pairs) with
    ``momentum=None`` (a plain cumulative average). Only the BatchNorm layers run in training mode, so
    dropout or drop-connect elsewhere in the network stays off while the statistics are measured. No
    weight changes; the model is returned in eval mode, in place.

    >>> net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    >>> _ = adabn(net, torch.randn(500, 2) + 3)
    >>> net.training, net[1].num_batches_tracked.item()
    (False, 2)
    """
    norms = [m for m in model.modules() if isinstance(m, _BN)]
    if not norms:
        raise ValueError("adabn found no BatchNorm layer in the model: AdaBN only changes BatchNorm "
                         "statistics, so there is nothing to adapt.")
    if isinstance(batches, torch.Tensor):
        batches = batches.split(batch_size)
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.eval()
    for m in norms:
        m.train()
    try:
        seen = 0
        for batch in batches:
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            model(images)
            seen += 1
    finally:
        for m, momentum in zip(norms, saved):
            m.momentum = momentum
        model.eval()
    if not seen:
        raise ValueError("adabn got no target batch: pass target images (a tensor or a loader).")
    return model


def proxy_a_distance(source: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor,
                     seed: int = 0, C: float = 1.0) -> float:
    """Proxy A-distance ``2 (1 - 2 err)``: ``err`` is the test error of a linear domain classifier.

    A logistic regression learns to tell source rows from target rows on half of each (balanced to the
    smaller domain) and is scored on the other half. Near 0: the domains look alike to a linear probe;
    near 2: they are separable. (Ben-David et al. 2007; Ganin et al. 2016 use it on DANN's features.)

    >>> rng = np.random.default_rng(0)
    >>> a, b = rng.normal(size=(400, 5)), rng.normal(size=(400, 5))
    >>> abs(proxy_a_distance(a, b)) < 0.2, proxy_a_distance(a, b + 5)
    (True, 2.0)
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    xs, xt = to_numpy(source), to_numpy(target)
    if xs.ndim != 2 or xt.ndim != 2 or xs.shape[1] != xt.shape[1]:
        raise ValueError(f"proxy_a_distance compares two n x d feature arrays, got {xs.shape} and {xt.shape}.")
    rng = np.random.default_rng(seed)
    n = min(len(xs), len(xt))
    if n < 10:
        raise ValueError(f"proxy_a_distance needs at least 10 rows per domain, got {n}.")
    xs, xt = xs[rng.permutation(len(xs))[:n]], xt[rng.permutation(len(xt))[:n]]
    half = n // 2
    X_fit = np.concatenate([xs[:half], xt[:half]])
    y_fit = np.r_[np.zeros(half), np.ones(half)]
    X_test = np.concatenate([xs[half:], xt[half:]])
    y_test = np.r_[np.zeros(n - half), np.ones(n - half)]
    scaler = StandardScaler().fit(X_fit)
    clf = LogisticRegression(C=C, max_iter=1000).fit(scaler.transform(X_fit), y_fit)
    err = float((clf.predict(scaler.transform(X_test)) != y_test).mean())
    return 2.0 * (1.0 - 2.0 * err)


# --------------------------------------------------------------------------------------------------
# Training with an alignment loss, and how BatchNorm sees the target
# --------------------------------------------------------------------------------------------------

METHODS = ("none", "coral", "mmd", "dann")
# How the batches meet BatchNorm while training:
#   "source":   source batches only (classic source only; the target is never seen);
#   "joint":    source and target batches concatenated, one BatchNorm batch (tllib's training loops);
#   "separate": source and target through the network in two passes, each normalised by its own batch
#               statistics (tlbook-code and DeepDA); the running statistics then mix the two domains.
BN_MODES = ("source", "joint", "separate")


class DigitNet(nn.Module):
    """The domain-adaptation chapter's small CNN: two convolutions and a feature layer, each followed by
    BatchNorm, and a linear classifier. ``features`` and ``classifier`` are separate modules because the
    alignment losses act on the features.

    >>> DigitNet()(torch.zeros(2, 3, 28, 28)).shape
    torch.Size([2, 10])
    """

    def __init__(self, width: int = 16, features: int = 64, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 5), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),              # 28 -> 12
            nn.Conv2d(width, 2 * width, 5), nn.BatchNorm2d(2 * width), nn.ReLU(), nn.MaxPool2d(2),  # 12 -> 4
            nn.Flatten(), nn.Linear(2 * width * 16, features), nn.BatchNorm1d(features), nn.ReLU())
        self.classifier = nn.Linear(features, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def domain_discriminator(features: int = 64) -> nn.Module:
    """DANN's domain classifier on the features: one hidden layer, one logit (target = 1)."""
    return nn.Sequential(nn.Linear(features, features), nn.ReLU(), nn.Linear(features, 1))


def alignment_loss(method: str, fs: torch.Tensor, ft: torch.Tensor, discriminator: nn.Module | None = None,
                   progress: float = 1.0) -> torch.Tensor:
    """The term ``method`` adds to the classification loss, on source features ``fs`` and target features ``ft``.

    ``"coral"``: :func:`coral`; ``"mmd"``: :func:`mmd`; ``"dann"``: the domain classifier's cross-entropy
    behind a gradient reversal of strength ``dann_coeff(progress)``; ``"none"``: zero.

    >>> a, b = torch.randn(8, 4), torch.randn(8, 4)
    >>> alignment_loss("none", a, b).item() == 0, alignment_loss("coral", a, b).item() == coral(a, b).item()
    (True, True)
    """
    if method == "none":
        return fs.sum() * 0.0
    if method == "coral":
        return coral(fs, ft)
    if method == "mmd":
        return mmd(fs, ft)
    if method == "dann":
        f = grad_reverse(torch.cat([fs, ft]), dann_coeff(progress))
        domain = torch.cat([torch.zeros(len(fs)), torch.ones(len(ft))])      # 0 = source, 1 = target
        return nn.functional.binary_cross_entropy_with_logits(discriminator(f).squeeze(1), domain)
    raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")


def train_uda(pair: dict, method: str = "none", weight: float = 0.0, bn: str = "joint", seed: int = 0,
              epochs: int = 3, width: int = 16, batch_size: int = 64, lr: float = 2e-3,
              supervised_target: bool = False) -> DigitNet:
    """Train a :class:`DigitNet` on ``pair`` (``tl_helpers.domains.domain_pair``): source cross-entropy plus
    ``weight`` times ``method``'s alignment loss, with the batches meeting BatchNorm as ``bn`` says
    (:data:`BN_MODES`). Adam at ``lr``, ``epochs`` passes over the source training images.

    ``weight=0`` with ``bn="joint"`` or ``"separate"`` is the control that isolates the loss: the same
    batches, the same BatchNorm, no alignment. The seed fixes the initial weights (the discriminator is
    always built, so every method starts from the same network) and the batch order. The target labels are
    never read, except with ``supervised_target=True``: the upper bound, trained on the labelled target
    training images as if they were the source (``bn="source"``). Returns the model in eval mode.

    >>> from tl_helpers.domains import domain_pair
    >>> pair = domain_pair("mnist->mnistm", n_source=200, n_target=200)
    >>> train_uda(pair, "mmd", weight=1.0, epochs=1).training
    False
    """
    if bn not in BN_MODES:
        raise ValueError(f"unknown bn={bn!r}; choose one of {BN_MODES}")
    if bn == "source" and weight:
        raise ValueError("bn='source' never shows the target to the network, so there is nothing to align: use "
                         "bn='joint' or bn='separate' with a weight > 0.")
    torch.manual_seed(seed)
    model = DigitNet(width)
    discriminator = domain_discriminator(model.classifier.in_features)
    params = list(model.parameters()) + (list(discriminator.parameters()) if method == "dann" else [])
    optimizer = torch.optim.Adam(params, lr=lr)
    Xs, ys = pair["target_train"] if supervised_target else pair["source_train"]
    Xt = pair["target_train"][0]                      # target images only: the labels are never read
    g = torch.Generator().manual_seed(seed)
    steps_per_epoch = len(Xs) // batch_size
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(Xs), generator=g)
        target_order = torch.randint(len(Xt), (len(Xs),), generator=g)
        for i in range(steps_per_epoch):
            batch = order[i * batch_size:(i + 1) * batch_size]
            xs, y = Xs[batch], ys[batch]
            if bn == "source":
                loss = nn.functional.cross_entropy(model(xs), y)
            else:
                xt = Xt[target_order[i * batch_size:(i + 1) * batch_size]]
                if bn == "joint":
                    f = model.features(torch.cat([xs, xt]))
                    fs, ft = f[:len(xs)], f[len(xs):]
                else:
                    fs, ft = model.features(xs), model.features(xt)
                progress = (epoch * steps_per_epoch + i) / (epochs * steps_per_epoch)
                loss = nn.functional.cross_entropy(model.classifier(fs), y)
                if weight:
                    loss = loss + weight * alignment_loss(method, fs, ft, discriminator, progress)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    """Share of ``images`` that ``model`` (in eval mode) labels right.

    >>> head = nn.Linear(4, 2)
    >>> _ = nn.init.zeros_(head.weight), head.bias.data.copy_(torch.tensor([1.0, 0.0]))  # always says class 0
    >>> accuracy(nn.Sequential(nn.Flatten(), head), torch.zeros(3, 4), torch.zeros(3, dtype=torch.long))
    1.0
    """
    model.eval()
    right = sum(int((model(x).argmax(1) == y).sum()) for x, y in zip(images.split(batch_size), labels.split(batch_size)))
    return right / len(labels)


@torch.no_grad()
def features_of(model: nn.Module, images: torch.Tensor, statistics: torch.Tensor | None = None) -> np.ndarray:
    """``model.features`` of ``images`` (eval mode) as an array; with ``statistics``, through a copy of the
    model whose BatchNorm statistics are those of the ``statistics`` images (AdaBN), the model untouched."""
    import copy

    if statistics is not None:
        model = adabn(copy.deepcopy(model), statistics)
    return model.eval().features(images).numpy()


def dev_risk(model: nn.Module, source_train: torch.Tensor, source_val: tuple[torch.Tensor, torch.Tensor],
             target: torch.Tensor, n: int = 1000, C: float = 1.0) -> float:
    """Deep embedded validation (You et al. 2019): the source validation loss reweighted towards the target.

    A logistic regression tells source-training features from target features (``n`` of each, standardised);
    its odds on each source-validation image estimate the density ratio ``w = p_T / p_S``; the risk is the mean of
    ``w * loss`` with DEV's control variate (``- eta * (mean w - 1)``, ``eta = cov(w * loss, w) / var(w)``), which
    cancels part of the weights' noise. Lower is better; it needs no target label. It is only as good as the
    density ratio: where the domains are nearly separable, a few source images carry all the weight.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    fs, ft = features_of(model, source_train[:n]), features_of(model, target[:n])
    X = np.concatenate([fs, ft])
    scaler = StandardScaler().fit(X)
    clf = LogisticRegression(C=C, max_iter=1000).fit(scaler.transform(X), np.r_[np.zeros(len(fs)), np.ones(len(ft))])
    xv, yv = source_val
    p = clf.predict_proba(scaler.transform(features_of(model, xv)))[:, 1].clip(1e-6, 1 - 1e-6)
    w = (len(fs) / len(ft)) * p / (1 - p)
    with torch.no_grad():
        loss = nn.functional.cross_entropy(model.eval()(xv), yv, reduction="none").numpy()
    weighted = w * loss
    var = w.var(ddof=1)
    eta = -np.cov(weighted, w)[0, 1] / var if var > 0 else 0.0
    return float(weighted.mean() + eta * w.mean() - eta)


# --------------------------------------------------------------------------------------------------
# The chapter's grid: every method, weight, BatchNorm mode and seed, each run scored once
# --------------------------------------------------------------------------------------------------

# Chapter 09's settings (benchmarks/adaptation_results.json is keyed by them).
UDA_SETTINGS = {"pair": "mnist->mnistm", "n_source": 2000, "n_target": 2500, "data_seed": 0, "epochs": 3,
                "width": 16, "batch_size": 64, "lr": 2e-3, "methods": ["coral", "mmd", "dann"],
                "weights": [0, 0.1, 1, 10, 100], "bn_modes": ["joint", "separate"], "threads": 2}


def uda_arms(settings: dict | None = None) -> list[tuple[str, str, float]]:
    """Every (method, bn, weight) the grid trains: the target-supervised upper bound (``"target"``), source
    only, the weight-0 control of each BatchNorm mode, and each method at each non-zero weight.

    >>> arms = uda_arms({"methods": ["mmd"], "weights": [0, 1], "bn_modes": ["joint"]})
    >>> arms
    [('target', 'source', 0), ('none', 'source', 0), ('none', 'joint', 0), ('mmd', 'joint', 1)]
    """
    s = {**UDA_SETTINGS, **(settings or {})}
    arms = [("target", "source", 0), ("none", "source", 0)] + [("none", bn, 0) for bn in s["bn_modes"]]
    return arms + [(m, bn, w) for bn in s["bn_modes"] for m in s["methods"] for w in s["weights"] if w]


def uda_cell(pair: dict, settings: dict, seed: int, method: str, bn: str, weight: float) -> dict:
    """Train one arm of the grid (:func:`train_uda`) and measure it without and with target labels.

    Label-free: ``source_val`` (accuracy on the source validation part), ``pad`` (proxy A-distance between
    source-validation and target-training features, as the model runs), ``pad_own`` (the same, each domain
    through its own BatchNorm statistics), ``dev`` (:func:`dev_risk`). With target labels, for scoring only:
    ``target_val``, ``target_test``, and ``target_test_adabn`` (the target test with the target's own
    BatchNorm statistics, AdaBN on the trained model).
    """
    import copy
    import time

    start = time.perf_counter()
    s = settings
    model = train_uda(pair, "none" if method == "target" else method, weight, bn, seed, s["epochs"], s["width"],
                      s["batch_size"], s["lr"], supervised_target=method == "target")
    Xs, Xt = pair["source_train"][0], pair["target_train"][0]
    xv = pair["source_val"][0]
    target_stats = adabn(copy.deepcopy(model), Xt)
    source_stats = adabn(copy.deepcopy(model), Xs)
    return {
        "seed": seed, "method": method, "bn": bn, "weight": weight,
        "source_val": accuracy(model, *pair["source_val"]),
        "target_val": accuracy(model, *pair["target_val"]),
        "target_test": accuracy(model, *pair["target_test"]),
        "target_test_adabn": accuracy(target_stats, *pair["target_test"]),
        "pad": proxy_a_distance(features_of(model, xv), features_of(model, Xt[:len(xv)])),
        "pad_own": proxy_a_distance(features_of(source_stats, xv), features_of(target_stats, Xt[:len(xv)])),
        "dev": dev_risk(model, Xs, pair["source_val"], Xt),
        "seconds": round(time.perf_counter() - start, 2),
    }


def uda_grid(settings: dict, seeds, store: dict | None = None, pair: dict | None = None,
             progress: Callable[[str], None] | None = None) -> list[dict]:
    """Every arm of :func:`uda_arms` for every seed: read from ``store`` (a results dict with the same
    ``settings``, e.g. ``benchmarks/adaptation_results.json``) where it holds the cell, trained otherwise.

    A store made with other settings is ignored, so changed settings never reuse old results.
    ``progress`` (e.g. ``print``) hears about every cell that is trained.
    """
    from tl_helpers.domains import domain_pair

    held = {}
    if store and store.get("settings") == settings:
        held = {(c["seed"], c["method"], c["bn"], c["weight"]): c for c in store["cells"]}
    cells = []
    for seed in seeds:
        for method, bn, weight in uda_arms(settings):
            key = (seed, method, bn, weight)
            if key not in held:
                if pair is None:
                    pair = domain_pair(settings["pair"], settings["n_source"], settings["n_target"],
                                       settings["data_seed"])
                if progress:
                    progress(f"training seed {seed}: {method}, bn={bn}, weight {weight}")
                held[key] = uda_cell(pair, settings, seed, method, bn, weight)
            cells.append(held[key])
    return cells
