"""Checkers for the exercises on what transfers: copying layers, paired intervals, a prediction checked
against the chapter's own runs, a decoupled L2-SP step.

>>> from tl_helpers.checks.what_transfers import check_copy_first_k
>>> def copy_first_k(source, target, k):
...     for (_, s), (_, t) in list(zip(source.named_children(), target.named_children()))[:k]:
...         t.load_state_dict(s.state_dict())
...     return target
>>> ok = check_copy_first_k(copy_first_k)
✅ Correct: the first k layers hold copies of the source's weights, the others are untouched, for k = 0, 2 and 4.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from tl_helpers.checks import Exercise, _NotYet, _checker, _type_error


def _tiny_net(seed: int) -> nn.Sequential:
    """A five-layer network with named children, like the chapter's CNN but smaller."""
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict(
        conv1=nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
        conv2=nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
        conv3=nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
        fc=nn.Sequential(nn.Flatten(), nn.Linear(4, 5), nn.ReLU()),
        head=nn.Linear(5, 3)))


def _same(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@_checker("write def copy_first_k(source, target, k) that copies weights with load_state_dict and returns target.")
def check_copy_first_k(fn: Callable) -> str:
    """Does ``fn(source, target, k)`` copy the first k layers' weights of source into target, and only those?"""
    if not callable(fn):
        raise _type_error(fn, "a function copy_first_k(source, target, k)",
                          "define def copy_first_k(source, target, k): ... and pass copy_first_k")
    for k in (0, 2, 4):
        source, target = _tiny_net(1), _tiny_net(2)
        before = copy.deepcopy(target)
        out = fn(source, target, k)
        result = out if isinstance(out, nn.Module) else target
        names = [n for n, _ in result.named_children()]
        for i, name in enumerate(names):
            got, src, old = (getattr(m, name) for m in (result, source, before))
            if i < k and not _same(got, src):
                raise _NotYet(f"with k = {k}, layer '{name}' (number {i + 1}) does not hold the source's weights",
                              "copy the first k children in order: zip(source.named_children(), "
                              "target.named_children()), then [:k]")
            if i >= k and not _same(got, old):
                what = "every layer is copied" if k == 0 else f"layer '{name}' (number {i + 1}) changed too"
                raise _NotYet(f"with k = {k}, {what}; only the first {k} may change",
                              "stop after k layers (slice [:k]; careful with off-by-one and k = 0)")
        shared = {id(p) for p in source.parameters()} & {id(p) for p in result.parameters()}
        if shared:
            raise _NotYet("the target shares parameter tensors with the source (the same objects), so training "
                          "the target would also change the source model",
                          "copy the values with target_layer.load_state_dict(source_layer.state_dict()) "
                          "instead of assigning the source's modules")
    return "the first k layers hold copies of the source's weights, the others are untouched, for k = 0, 2 and 4."


def _reference_pull(model: nn.Module, source: dict, lr: float, alpha: float, beta: float) -> dict:
    out = {}
    for n, p in model.named_parameters():
        if not p.requires_grad:
            out[n] = p.detach().clone()
        elif n in source:
            out[n] = p.detach() - lr * alpha * (p.detach() - source[n])
        else:
            out[n] = p.detach() - lr * beta * p.detach()
    return out


@_checker("write def pull_towards_source(model, source, lr, alpha, beta) that changes the weights in place "
          "inside torch.no_grad().")
def check_pull_towards_source(fn: Callable) -> str:
    """Does ``fn(model, source, lr, alpha, beta)`` take the decoupled L2-SP step on every trainable weight?"""
    if not callable(fn):
        raise _type_error(fn, "a function pull_towards_source(model, source, lr, alpha, beta)",
                          "define def pull_towards_source(model, source, lr, alpha, beta): ... and pass it")
    model = _tiny_net(3)
    model.conv1.requires_grad_(False)                    # a frozen layer: it must not move
    g = torch.Generator().manual_seed(4)
    source = {n: p.detach() + 0.1 * torch.randn(p.shape, generator=g)
              for n, p in model.named_parameters() if not n.startswith("head")}
    lr, alpha, beta = 0.1, 0.5, 0.2
    want = _reference_pull(model, source, lr, alpha, beta)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    fn(model, source, lr, alpha, beta)
    got = {n: p.detach() for n, p in model.named_parameters()}
    if all(torch.equal(got[n], before[n]) for n in got):
        raise _NotYet("no weight changed", "update the parameters in place: p.sub_(...) or p -= ..., "
                      "inside torch.no_grad()")
    if any(not torch.equal(got[n], before[n]) for n in got if n.startswith("conv1")):
        raise _NotYet("a frozen layer (requires_grad=False) moved", "skip parameters with requires_grad False")
    name = "conv2.0.weight"
    step = got[name] - before[name]
    towards = -lr * alpha * (before[name] - source[name])
    if torch.allclose(step, -towards, atol=1e-6):
        raise _NotYet("the transferred weights move away from the source", "the step is "
                      "w <- w - lr * alpha * (w - w_source): mind the sign")
    if torch.allclose(step, -lr * alpha * before[name], atol=1e-6):
        raise _NotYet("the transferred weights shrink towards zero: that is plain weight decay",
                      "pull them towards source[name]: w <- w - lr * alpha * (w - w_source)")
    if not torch.allclose(got[name], want[name], atol=1e-6):
        raise _NotYet("a transferred weight did not get w - lr * alpha * (w - w_source)",
                      "use lr * alpha for the parameters whose name is in source")
    head = "head.weight"
    if torch.equal(got[head], before[head]):
        raise _NotYet("the new head did not move", "the parameters not in source decay towards zero: "
                      "w <- w - lr * beta * w")
    if not torch.allclose(got[head], want[head], atol=1e-6):
        raise _NotYet("the new head did not get w - lr * beta * w", "use beta, not alpha, for the new layers")
    bad = [n for n in got if not torch.allclose(got[n], want[n], atol=1e-6)]
    if bad:
        raise _NotYet(f"{bad[0]} is not where the step should put it", "apply the rule to every trainable parameter")
    return "transferred weights move lr * alpha of the way back to the source, the new head decays, frozen ones stay."


_VERDICTS = ("ahead", "tie", "behind")


def _verdict_word(value, name: str) -> str:
    word = str(value).strip().lower() if isinstance(value, str) else None
    if word not in _VERDICTS:
        raise _NotYet(f"{name} holds {value!r}", f"use one of the words {', '.join(map(repr, _VERDICTS))}")
    return word


@_checker("store my_frozen_verdicts (four words) and my_finetuned_verdict (one word), each 'ahead', 'tie' or "
          "'behind', then call check_layer_prediction(my_frozen_verdicts, my_finetuned_verdict, results, labels).")
def check_layer_prediction(my_frozen_verdicts, my_finetuned_verdict, results: dict, labels: str = "10") -> str:
    """Predicted before looking: at ``labels`` labels a class, the verdict of each frozen copy of the source's
    layers against scratch (``AnB k - scratch``, k = 1..4) and of fine-tuning all four (``AnB+ 4 - scratch``).
    The truth is ``results["comparisons"]["layers"]``: the paired comparisons of a run of Yosinski's sweep (the
    chapter builds it from its own runs), keyed ``"<labels>: AnB <k> - scratch"``.

    >>> res = {"comparisons": {"layers": {**{f"10: AnB {k} - scratch": {"mean": -1.0 * k, "ci95": [-k - 1.0, -k + 1.5],
    ...        "verdict": "tie" if k < 2 else "behind"} for k in range(1, 5)},
    ...        "10: AnB+ 4 - scratch": {"mean": 0.5, "ci95": [-0.5, 1.5], "verdict": "tie"}}}}
    >>> ok = check_layer_prediction(["tie", "behind", "behind", "behind"], "tie", res)  # doctest: +ELLIPSIS
    ✅ Correct: all five predictions held at 10 labels a class...
    >>> ok = check_layer_prediction(["tie"] * 4, "ahead", res)  # doctest: +ELLIPSIS
    ❌ Not yet: 4 of your 5 predictions did not hold at 10 labels a class:...
    """
    if isinstance(my_frozen_verdicts, str) or not hasattr(my_frozen_verdicts, "__len__") or len(my_frozen_verdicts) != 4:
        raise _NotYet(f"my_frozen_verdicts should be a list of four words (k = 1, 2, 3, 4), got {my_frozen_verdicts!r}",
                      "e.g. my_frozen_verdicts = ['tie', 'tie', 'tie', 'behind']")
    frozen = [_verdict_word(v, f"my_frozen_verdicts[{i}]") for i, v in enumerate(my_frozen_verdicts)]
    finetuned = _verdict_word(my_finetuned_verdict, "my_finetuned_verdict")
    layers = results["comparisons"]["layers"]
    keys = [f"{labels}: AnB {k} - scratch" for k in range(1, 5)] + [f"{labels}: AnB+ 4 - scratch"]
    names = [f"frozen k = {k}" for k in range(1, 5)] + ["fine-tuned k = 4"]
    wrong, lines = 0, []
    for name, key, said in zip(names, keys, frozen + [finetuned]):
        c = layers[key]
        held = said == c["verdict"]
        wrong += not held
        lines.append(f"{name}: you said {said}, the runs say {c['verdict']} "
                     f"({c['mean']:+.1f} points [{c['ci95'][0]:+.1f}, {c['ci95'][1]:+.1f}])" + ("" if held else " <-"))
    detail = "; ".join(lines)
    if wrong:
        raise _NotYet(f"{wrong} of your 5 predictions did not hold at {labels} labels a class: {detail}",
                      "frozen layers cannot adapt, and the higher a layer the more it is specific to the source's "
                      "classes; a verdict is 'ahead' or 'behind' only when the interval excludes zero")
    return f"all five predictions held at {labels} labels a class: {detail}."


def _reference_interval(a, b, level: float) -> tuple[float, float, float]:
    from scipy import stats

    d = np.asarray(a, float) - np.asarray(b, float)
    half = stats.t.ppf(0.5 + level / 2, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    return float(d.mean()), float(d.mean() - half), float(d.mean() + half)


@_checker("write def paired_interval(a, b, level=0.95) returning (mean difference, low, high).")
def check_paired_interval(fn: Callable) -> str:
    """Does ``fn(a, b, level)`` give the paired t-interval of the mean difference a - b?"""
    if not callable(fn):
        raise _type_error(fn, "a function paired_interval(a, b, level)",
                          "define def paired_interval(a, b, level=0.95): ... and pass paired_interval")
    rng = np.random.default_rng(0)
    common = rng.normal(0.7, 0.05, 5)                    # each seed's own difficulty, shared by a and b
    a, b = common + rng.normal(0.02, 0.01, 5), common + rng.normal(0.0, 0.01, 5)
    got = fn(list(a), list(b), 0.95)
    if not isinstance(got, (tuple, list)) or len(got) != 3:
        raise _type_error(got, "a tuple (mean difference, low, high)", "return mean, mean - half, mean + half")
    mean, low, high = (float(v) for v in got)
    want = _reference_interval(a, b, 0.95)
    d = a - b
    if not math.isclose(mean, want[0], abs_tol=1e-9):
        raise _NotYet(f"the mean difference is {mean:.4f}, expected {want[0]:.4f}", "it is mean(a - b)")
    half = (high - low) / 2
    sem1, sem0 = d.std(ddof=1) / math.sqrt(5), d.std(ddof=0) / math.sqrt(5)
    from scipy import stats
    t4 = stats.t.ppf(0.975, 4)
    if math.isclose(half, 1.96 * sem1, rel_tol=1e-3):
        raise _NotYet("the interval uses 1.96, the normal distribution's quantile",
                      "with 5 seeds use Student's t with n - 1 = 4 degrees of freedom: scipy.stats.t.ppf(0.975, 4)")
    if math.isclose(half, t4 * sem0, rel_tol=1e-3):
        raise _NotYet("the standard deviation divides by n", "use the sample standard deviation, ddof=1")
    unpaired = t4 * math.sqrt(a.var(ddof=1) / 5 + b.var(ddof=1) / 5)
    if half > 2 * (want[2] - want[0]) and math.isclose(half, unpaired, rel_tol=0.2):
        raise _NotYet("the interval treats a and b as independent samples, so each seed's own difficulty "
                      "widens it", "pair them: compute d = a - b per seed, then the interval of mean(d)")
    if not (math.isclose(low, want[1], abs_tol=1e-6) and math.isclose(high, want[2], abs_tol=1e-6)):
        raise _NotYet(f"got ({low:.4f}, {high:.4f}), expected ({want[1]:.4f}, {want[2]:.4f})",
                      "mean(d) -/+ t.ppf(0.5 + level / 2, n - 1) * d.std(ddof=1) / sqrt(n)")
    got99 = fn(list(a), list(b), 0.99)
    want99 = _reference_interval(a, b, 0.99)
    if not math.isclose(float(got99[2]), want99[2], abs_tol=1e-6):
        raise _NotYet("the interval ignores the level argument", "use t.ppf(0.5 + level / 2, n - 1)")
    return f"mean difference {mean:.4f}, 95 % interval ({low:.4f}, {high:.4f}), paired over 5 seeds."


EXERCISES: dict[str, Exercise] = {
    "08.1": Exercise("Copy the first k layers", "08", check_copy_first_k),
    "08.2": Exercise("A paired t-interval over seeds", "08", check_paired_interval),
    "08.3": Exercise("Predict, then check: Yosinski's sweep", "08", check_layer_prediction),
    "08.4": Exercise("L2-SP as a decoupled step", "08", check_pull_towards_source),
}
