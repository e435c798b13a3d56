"""Checkers for the domain-adaptation exercises: a CORAL loss, BatchNorm predicted then checked, a
gradient-reversal function, AdaBN.

Each runs the learner's function on small random inputs and compares it with the definition.

>>> import torch
>>> from tl_helpers.adaptation import coral
>>> ok = check_coral(coral)
✅ Correct: your loss matches ||C_s - C_t||²_F / (4d²) on batches of several sizes, and is 0 for equal covariances.
>>> EXERCISES["09.1"].checker is check_coral
True
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from tl_helpers.checks import Exercise, _NotYet, _as_number, _checker, _first_wrong_prediction

_BN = nn.modules.batchnorm._BatchNorm


def _features(n: int, d: int, seed: int, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) * scale + shift


def _cov(x: torch.Tensor) -> torch.Tensor:
    c = x - x.mean(0, keepdim=True)
    return c.T @ c / (len(x) - 1)


def _coral_ref(s: torch.Tensor, t: torch.Tensor) -> float:
    d = s.shape[1]
    return float(((_cov(s) - _cov(t)) ** 2).sum() / (4 * d * d))


@_checker("your function should take two n x d tensors (source and target features) and return a number.")
def check_coral(fn) -> str:
    """Does ``fn(source, target)`` compute Deep CORAL's loss ``||C_s - C_t||_F^2 / (4 d^2)``?

    >>> ok = check_coral(lambda s, t: torch.tensor(0.0))
    ❌ Not yet: your loss is zero for batches whose covariances differ. Hint: compare the two d x d covariance matrices: (C_s - C_t) squared, summed, over 4 d².
    """
    hint = "return a number (a one-element tensor), e.g. ((cs - ct) ** 2).sum() / (4 * d * d)"
    cases = [(_features(64, 8, 2), _features(64, 8, 3, 0.5)),
             (_features(40, 5, 0, 1.0, 2.0), _features(30, 5, 1, 2.0, -1.0))]
    for s, t in cases:
        d = s.shape[1]
        got = _as_number(fn(s.clone(), t.clone()), "a number", hint)
        want = _coral_ref(s, t)
        if math.isclose(got, want, rel_tol=1e-3):
            continue
        if abs(got) < 1e-9:
            raise _NotYet("your loss is zero for batches whose covariances differ",
                          "compare the two d x d covariance matrices: (C_s - C_t) squared, summed, over 4 d²")
        gram = float(((s.T @ s / (len(s) - 1) - t.T @ t / (len(t) - 1)) ** 2).sum() / (4 * d * d))
        if math.isclose(got, gram, rel_tol=1e-3):
            raise _NotYet("your covariances are not centred: the means leak into the loss",
                          "subtract each batch's column means before x.T @ x (or use torch.cov(x.T))")
        diff2 = want * 4 * d * d
        if math.isclose(got, diff2, rel_tol=1e-3):
            raise _NotYet("the loss is right up to a constant: it is 4 d² too large",
                          "divide the squared Frobenius norm by 4 d² (4 * d * d), as Deep CORAL does")
        if math.isclose(got, math.sqrt(diff2) / (4 * d * d), rel_tol=1e-3):
            raise _NotYet("you used the Frobenius norm, not its square",
                          "square the differences and sum them: ((cs - ct) ** 2).sum()")
        rows = len(s) == len(t) and s.shape[0] != d
        if rows and math.isclose(got, float(((torch.cov(s) - torch.cov(t)) ** 2).sum() / (4 * d * d)), rel_tol=1e-3):
            raise _NotYet("your covariance is n x n (between images), not d x d (between features)",
                          "torch.cov wants variables in rows: torch.cov(x.T), a d x d matrix")
        raise _NotYet(f"for batches of {len(s)} and {len(t)} rows of {d} features your loss is {got:.4g}, "
                      f"CORAL's is {want:.4g}",
                      "C = centred.T @ centred / (n - 1) for each batch; loss = ((C_s - C_t) ** 2).sum() / (4 d²)")
    s = cases[0][0]
    same = _as_number(fn(s.clone(), s.clone() + 5.0), "a number", hint)
    if abs(same) > 1e-6:
        raise _NotYet(f"a batch and the same batch shifted by 5 give {same:.4g}, not 0",
                      "CORAL compares covariances, which a shift does not change: centre each batch")
    return ("your loss matches ||C_s - C_t||²_F / (4d²) on batches of several sizes, and is 0 for "
            "equal covariances.")


@_checker("your function should take a tensor x and a number coeff, and return a tensor shaped like x.")
def check_gradient_reversal(fn) -> str:
    """Is ``fn(x, coeff)`` the identity forward, with the gradient multiplied by ``-coeff`` backward?

    >>> ok = check_gradient_reversal(lambda x, c: x)
    ❌ Not yet: the gradient comes back unchanged (+1 x the incoming one). Hint: write a torch.autograd.Function whose backward returns -coeff * grad (and None for coeff).
    """
    g = torch.Generator().manual_seed(0)
    weights = torch.randn(4, 3, generator=g)
    for coeff in (0.5, 2.0, 1.0):
        x = torch.randn(4, 3, generator=g, requires_grad=True)
        y = fn(x, coeff)
        if not isinstance(y, torch.Tensor):
            raise _NotYet(f"your function returned a {type(y).__name__}, not a tensor",
                          "return the tensor itself: SomeFunction.apply(x, coeff)")
        if y.shape != x.shape or not torch.allclose(y, x):
            raise _NotYet("the forward pass changes the values",
                          "forward must return x unchanged (x.view_as(x)); only the backward pass flips the sign")
        if not y.requires_grad:
            raise _NotYet("no gradient flows back to x: the output is cut from the graph (detach or no_grad)",
                          "do not detach: return x.view_as(x) from a torch.autograd.Function's forward")
        (y * weights).sum().backward()
        ratio = (x.grad / weights).mean().item()
        if math.isclose(ratio, -coeff, rel_tol=1e-4):
            continue
        if math.isclose(ratio, 1.0, rel_tol=1e-4):
            raise _NotYet("the gradient comes back unchanged (+1 x the incoming one)",
                          "write a torch.autograd.Function whose backward returns -coeff * grad (and None for coeff)")
        if math.isclose(ratio, coeff, rel_tol=1e-4):
            raise _NotYet(f"with coeff={coeff} the gradient is scaled by +{coeff}: the sign is not flipped",
                          "return minus coeff times the gradient: -ctx.coeff * grad")
        if math.isclose(ratio, -1.0, rel_tol=1e-4):
            raise _NotYet(f"with coeff={coeff} the gradient is flipped but not scaled",
                          "store coeff in forward (ctx.coeff = coeff) and multiply: -ctx.coeff * grad")
        raise _NotYet(f"with coeff={coeff} the gradient is multiplied by {ratio:.3g}, not by {-coeff}",
                      "backward returns -coeff * grad")
    return "identity forward, gradient times -coeff backward, for several coeff."


def _bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2))


@_checker("your function should take (model, target_images) and return the model.")
def check_adabn(fn) -> str:
    """Does ``fn(model, target_images)`` set every BatchNorm's statistics to the target's, and nothing else?

    >>> from tl_helpers.adaptation import adabn
    >>> ok = check_adabn(lambda m, x: adabn(m, x))
    ✅ Correct: every BatchNorm layer now holds the target's mean and variance, no weight moved, eval mode.
    """
    net = _bn_net()
    net.train()
    with torch.no_grad():
        for _ in range(5):
            net(torch.rand(32, 3, 8, 8))                     # "source" statistics
    net.eval()
    g = torch.Generator().manual_seed(1)
    target = torch.randn(300, 3, 8, 8, generator=g) * 2 + 3
    before = copy.deepcopy(net.state_dict())
    reference = copy.deepcopy(net)
    for m in reference.modules():
        if isinstance(m, _BN):
            m.reset_running_stats()
            m.momentum = None
    reference.train()
    with torch.no_grad():
        reference(target)
    reference.eval()

    out = fn(net, target.clone())
    if out is None:
        raise _NotYet("your function returned None", "return the model at the end (return model)")
    if not isinstance(out, nn.Module):
        raise _NotYet(f"your function returned a {type(out).__name__}, not the model", "return model")
    state = out.state_dict()
    for name, value in before.items():
        if "running" in name or "num_batches" in name:
            continue
        if not torch.equal(value, state[name]):
            raise _NotYet(f"the weights changed ({name})",
                          "AdaBN trains nothing: run the target images through the model under torch.no_grad()")
    bn = [m for m in out.modules() if isinstance(m, _BN)]
    ref = [m for m in reference.modules() if isinstance(m, _BN)]
    unchanged = all(torch.equal(before[k], state[k]) for k in before if "running" in k)
    if unchanged:
        raise _NotYet("the running statistics did not change",
                      "BatchNorm only updates them in train mode: call model.train() before the forward passes")
    for mine, want in zip(bn, ref):
        if not (torch.allclose(mine.running_mean, want.running_mean, atol=0.1, rtol=0.1)
                and torch.allclose(mine.running_var, want.running_var, atol=0.1, rtol=0.1)):
            raise _NotYet("the running statistics moved, but they are a blend of the old (source) ones and the target's",
                          "with the default momentum=0.1 each batch moves them only 10 %: call m.reset_running_stats() "
                          "and set m.momentum = None (a plain average over all batches) first")
    if out.training:
        raise _NotYet("the model is still in train mode",
                      "finish with model.eval(), so that predictions use the new statistics")
    return "every BatchNorm layer now holds the target's mean and variance, no weight moved, eval mode."


_COMPARISONS = ("higher", "same", "lower")


def _compare(a: float, b: float, tolerance: float) -> str:
    return "same" if abs(a - b) <= tolerance else ("higher" if a > b else "lower")


@_checker("store two words, each 'higher', 'same' or 'lower': check_batchnorm_predictions(my_one_batch, "
          "my_mixed_batch, source_model, pair).")
def check_batchnorm_predictions(my_one_batch, my_mixed_batch, model: nn.Module, pair: dict,
                                tolerance: float = 0.03) -> str:
    """Predicted before running, against AdaBN (the source-only ``model`` with the statistics of the
    target training images): the target test accuracy when the model runs in *training mode*, so that every
    BatchNorm normalises with the statistics of the batch it is given, (1) on all target test images in
    one batch, (2) on one batch of the target test images and as many source validation images. "same"
    means within ``tolerance`` (3 points). The checker runs all three on copies; ``model`` is untouched.
    """
    from tl_helpers.adaptation import adabn

    for name, value in (("my_one_batch", my_one_batch), ("my_mixed_batch", my_mixed_batch)):
        if value not in _COMPARISONS:
            raise _NotYet(f"{name} should be 'higher', 'same' or 'lower', got {value!r}",
                          f"store {name} = 'same' (or 'higher', or 'lower')")
    X, y = pair["target_test"]
    Xs = pair["source_val"][0][:len(X)]
    with torch.no_grad():
        adapted = adabn(copy.deepcopy(model), pair["target_train"][0])
        acc_adabn = float((adapted(X).argmax(1) == y).float().mean())
        one = copy.deepcopy(model).train()
        acc_one = float((one(X).argmax(1) == y).float().mean())
        mixed = copy.deepcopy(model).train()
        acc_mixed = float((mixed(torch.cat([X, Xs]))[:len(X)].argmax(1) == y).float().mean())
    truth = {"my_one_batch": _compare(acc_one, acc_adabn, tolerance),
             "my_mixed_batch": _compare(acc_mixed, acc_adabn, tolerance)}
    facts = (f"AdaBN {acc_adabn:.1%}; training mode on the target test batch {acc_one:.1%}; on the batch mixed "
             f"with source images {acc_mixed:.1%}")
    _first_wrong_prediction([
        (my_one_batch, truth["my_one_batch"], "on the target batch alone it is {truth} ({facts})",
         "in training mode BatchNorm uses the batch's own mean and variance: a batch of target images "
         "gives target statistics, which is what AdaBN stores (from other target images)"),
        (my_mixed_batch, truth["my_mixed_batch"], "on the mixed batch it is {truth} ({facts})",
         "half source, half target: the batch statistics sit between the two domains, like the "
         "running statistics of a network trained on mixed batches")], facts)
    return (f"{facts}. A BatchNorm in training mode is AdaBN on whatever batch it is given: results that depend "
            "on the batch's company are why predictions use eval mode and stored statistics.")


EXERCISES: dict[str, Exercise] = {
    "09.1": Exercise("Deep CORAL's loss by hand", "09", check_coral),
    "09.2": Exercise("Predict, then check: BatchNorm in training mode on target batches", "09",
                     check_batchnorm_predictions),
    "09.3": Exercise("A gradient-reversal function", "09", check_gradient_reversal),
    "09.4": Exercise("AdaBN by hand", "09", check_adabn),
}
