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

from collections.abc import Iterable

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
    ``momentum=None`` (a plain cumulative average). No weight changes; the model is returned in eval
    mode, in place.

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
    model.train()
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
