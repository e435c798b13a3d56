"""`make bench`: every recipe on the same Clipart-8 splits, plus two speed measurements.

    .venv/bin/python -m benchmarks.run                      # all recipes, splits 0..4
    .venv/bin/python -m benchmarks.run --recipes linear_probe,keras_guide --splits 3
    .venv/bin/python -m benchmarks.run --quick              # smoke run: tiny data, one step, ~1 min
    make bench BENCH_ARGS="--recipes scratch --force"

For each recipe and split seed k (``clipart_splits(..., seed=k)``: stratified 60/15/25) the recipe
trains EfficientNet-Lite0 at 128 px (``train_transform(128)`` for training, ``eval_transform(128)`` for
val/test, batch size 32, torch threads = all cores) and returns a model; its test accuracy is measured
here, identically for every recipe (eval mode, plain eval transform, no TTA), with the wall seconds of
the recipe call (loading the weights and training, including its validation passes; not the test pass).

Each (recipe, split) result is cached as JSON in ``benchmarks/cache/clipart8/<recipe>/split<k>.json``
(git-ignored): an interrupted run resumes, and a rerun only computes missing cells. A cell is recomputed
when the recipe's settings (its keyword defaults), the image size or the batch size change, or with
``--force``. Edit a recipe's code without changing its defaults? Use ``--force --recipes NAME``.

Writes ``benchmarks/results.json`` and ``benchmarks/results.md`` (after every finished cell) from all
cached cells: recipes with every split done under ``clipart8``; the others under ``incomplete`` and
marked as such in the table. ``--quick`` writes under ``benchmarks/cache/quick/`` instead and never
touches the committed results.

Also measured (cached in ``cache/measurements.json``, ``--force`` or ``--remeasure`` to redo):
- ``phase1_speedup``: seconds per epoch of training a linear head through the frozen backbone
  (every image through Lite0 each epoch) divided by seconds per epoch on cached features.
- ``loop_overhead``: ``tl_helpers.train.fit`` against a bare PyTorch loop doing the same work,
  ``fit_time / bare_time - 1`` (minimum over interleaved repeats).
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

# A torch process with as many threads as cores, on a machine shared with other busy processes, spends
# most of its time in OpenMP's spin-waits: measured here, a Lite0 training step at 128 px took 10-16 s
# with 2 threads against 2.5-3 s with OMP_WAIT_POLICY=PASSIVE (or 1 thread). It must be set before torch
# loads, so only when run as a program (importing this module, e.g. in the tests, changes nothing).
if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks.recipes import (BATCH_SIZE, BEST, BEST_CANDIDATES, BEST_DESCRIPTIONS, CANDIDATES, CODE_VERSION, COURSE_RECIPE, IMAGE_SIZE, LR_SWEEP,
                                RECIPES, SELECTION_SPLITS, SMOKE, BenchData, _two_phase_defaults, accuracy_of,
                                best_overrides, correct_of, make_data, recipe_image_size)  # noqa: E402
from tl_helpers.benchmark_results import comparison_table, paired_rows, stale_note, update_readme  # noqa: E402
from tl_helpers.data import dataset_fingerprint  # noqa: E402
from tl_helpers.files import atomic_write  # noqa: E402
from tl_helpers.runtime import seed_everything  # noqa: E402

HERE = Path(__file__).resolve().parent
DATASET = "clipart8"
DEFAULT_SPLITS = 5


# ------------------------------------------------------------------------------------------------
# Machine description
# ------------------------------------------------------------------------------------------------

def machine() -> str:
    """One line: CPU model, core count, torch threads, OS, device."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    dev = "CUDA " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    return (f"{cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
            f"{platform.system()} {platform.release()}, {dev}")


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


# ------------------------------------------------------------------------------------------------
# Cells: one recipe on one split
# ------------------------------------------------------------------------------------------------

def recipe_settings(fn: Callable, overrides: dict | None = None, defaults: dict | None = None) -> dict:
    """The settings a recipe runs with: its keyword defaults and ``fn.default_settings()`` (or ``defaults``
    instead, when given), updated by ``overrides`` (JSON-able)."""
    params = inspect.signature(fn).parameters
    settings = {k: p.default for k, p in params.items()
                if p.default is not inspect.Parameter.empty and p.kind is not p.VAR_KEYWORD}
    if defaults is None:  # recipes configured by an object (the course's Recipe) or a chosen candidate
        defaults = fn.default_settings() if hasattr(fn, "default_settings") else {}
    settings.update(defaults)
    settings.update(overrides or {})
    return json.loads(json.dumps(settings, default=str))


def cell_path(cache: Path, recipe: str, split: int, tag: str | None = None) -> Path:
    """Where one cell is cached; ``tag`` names a variant of a recipe (a selection candidate, a sweep point)."""
    return cache / DATASET / (f"{recipe}@{tag}" if tag else recipe) / f"split{split}.json"


def cell_config(recipe: str, split: int, data_kwargs: dict, overrides: dict | None = None,
                defaults: dict | None = None) -> dict:
    data_kwargs = {"image_size": recipe_image_size(recipe)} | data_kwargs
    return {"recipe": recipe, "split": split, "dataset": dataset_fingerprint(), "code_version": CODE_VERSION,
            "image_size": data_kwargs.get("image_size", IMAGE_SIZE),
            "batch_size": data_kwargs.get("batch_size", BATCH_SIZE), "limit": data_kwargs.get("limit"),
            "max_batches": data_kwargs.get("max_batches"),
            "settings": recipe_settings(RECIPES[recipe], overrides, defaults)}


def load_cell(path: Path, config: dict) -> dict | None:
    """The cached result at ``path`` if it was computed with ``config``, else None."""
    try:
        cell = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return cell if cell.get("config") == config else None


def run_cell(recipe: str, split: int, cache: Path, force: bool = False, data_kwargs: dict | None = None,
             overrides: dict | None = None, log: Callable[[str], None] = print, tag: str | None = None,
             defaults: dict | None = None) -> dict:
    """Run ``recipe`` on split ``split`` (or read its cached result) and return the cell dict.

    ``defaults`` replaces the recipe's ``default_settings()`` in the cell's key (a `best` candidate is a
    whole set of settings, not an override of the chosen one's).

    Raises NotImplementedError when the recipe is not written yet (the course's hook).
    """
    data_kwargs = dict(data_kwargs or {})
    config = cell_config(recipe, split, data_kwargs, overrides, defaults)
    path = cell_path(cache, recipe, split, tag)
    if not force:
        cached = load_cell(path, config)
        if cached is not None:
            log(f"  {recipe:17s} {tag or ''} split {split}: val {cached.get('val_acc', float('nan')):5.1f} %  "
                f"{cached['seconds']:6.1f} s  (cached)")
            return cached
    data = make_data(split, **({"image_size": recipe_image_size(recipe)} | data_kwargs))
    seed_everything(split)
    start = time.perf_counter()
    out = RECIPES[recipe](data, **(overrides or {}))
    seconds = time.perf_counter() - start
    model, info = out if isinstance(out, tuple) else (out, {})
    acc = accuracy_of(model, data)
    val_acc = accuracy_of(model, data, "val")
    cell = {"recipe": recipe, "split": split, "acc": acc, "val_acc": val_acc, "seconds": seconds,
            "n_test": len(data.test), "correct": correct_of(model, data),
            "info": info, "config": config, "torch": torch.__version__, "machine": machine(), "date": _now()}
    atomic_write(path, json.dumps(cell, indent=1, default=str))
    log(f"  {recipe:17s} {tag or ''} split {split}: val {val_acc:5.1f} %  {seconds:6.1f} s")
    return cell


# ------------------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------------------

def summarize(cells: dict[str, list[dict]], n_splits: int) -> tuple[dict, dict]:
    """(complete, incomplete): per recipe mean/std (sample std, ddof=1) of accuracy and mean seconds."""
    complete, incomplete = {}, {}
    for recipe, rows in cells.items():
        rows = sorted(rows, key=lambda c: c["split"])
        accs = [round(c["acc"], 2) for c in rows]
        entry = {"mean": round(statistics.fmean(accs), 2) if accs else None,
                 "std": round(statistics.stdev(accs), 2) if len(accs) > 1 else 0.0,
                 "seconds": round(statistics.fmean(c["seconds"] for c in rows), 1) if rows else None,
                 "splits": accs,
                 "val_splits": [round(c["val_acc"], 2) for c in rows if "val_acc" in c],
                 "runs": sorted({f"torch {c.get('torch', '?')}, {str(c.get('date', '?'))[:10]}" for c in rows})}
        if len(rows) == n_splits:
            complete[recipe] = entry
        elif rows:
            incomplete[recipe] = entry | {"splits_done": [c["split"] for c in rows], "splits_wanted": n_splits}
    return complete, incomplete


def collect(cache: Path, recipes: list[str], n_splits: int, data_kwargs: dict | None = None,
            overrides: dict[str, dict] | None = None) -> dict[str, list]:
    """Every cached cell (with the current settings) of ``recipes`` on splits 0..n_splits-1."""
    out = {}
    for recipe in recipes:
        rows = []
        for split in range(n_splits):
            config = cell_config(recipe, split, data_kwargs or {}, (overrides or {}).get(recipe))
            cell = load_cell(cell_path(cache, recipe, split), config)
            if cell is not None:
                rows.append(cell)
        out[recipe] = rows
    return out


def write_results(out_dir: Path, complete: dict, incomplete: dict, measurements: dict, command: str,
                  n_splits: int, machine_line: str | None = None, image_size: int = IMAGE_SIZE,
                  batch_size: int = BATCH_SIZE) -> dict:
    """Write ``results.json`` and ``results.md`` into ``out_dir``; return the JSON dict."""
    results = {DATASET: complete, "course_recipe": COURSE_RECIPE}
    if incomplete:
        results["incomplete"] = incomplete
    if COURSE_RECIPE in complete:
        results["paired"] = paired_rows(results)
    if "best" in complete or "best" in incomplete:
        results["best_entry"] = {"candidate": BEST, "description": BEST_DESCRIPTIONS[BEST],
                                 "image_size": recipe_image_size("best"), "settings": best_overrides(BEST)}
    results["phase1_speedup"] = measurements.get("phase1_speedup")
    results["loop_overhead"] = measurements.get("loop_overhead")
    if measurements:
        results["measurements"] = measurements
    results.update({"dataset": dataset_fingerprint(), "splits": list(range(n_splits)), "image_size": image_size, "batch_size": batch_size,
                    "backbone": "efficientnet_lite0", "machine": machine_line or machine(),
                    "command": command, "date": _now(), "torch": torch.__version__})
    atomic_write(out_dir / "results.json", json.dumps(results, indent=1) + "\n")
    atomic_write(out_dir / "results.md", results_markdown(results))
    return results


def results_markdown(results: dict) -> str:
    """The results as a Markdown table with the machine, command and date."""
    n = len(results["splits"])
    lines = [f"# Benchmarks: Clipart-8, EfficientNet-Lite0, {results['image_size']} px",
             "",
             f"Test accuracy over {n} splits (seeds {results['splits'][0]}-{results['splits'][-1]}, about "
             f"60/15/25 train/val/test, stratified by class, near-duplicate groups never in two parts), mean ± "
             f"sample std; seconds: mean wall time of one split (loading the weights and training, validation "
             f"included; test pass excluded). No setting of any recipe was chosen on these test parts "
             f"(the protocol: benchmarks/README.md).",
             "",
             *([f"**Note.** {stale_note(results)}", ""] if stale_note(results) else []),
             "| recipe | mean (%) | std | seconds / split | per split (%) |",
             "|---|---:|---:|---:|---|"]
    rows = [(name, e, "") for name, e in results[DATASET].items()]
    rows += [(name, e, f" (incomplete: {len(e['splits'])}/{n} splits)")
             for name, e in results.get("incomplete", {}).items()]
    rows.sort(key=lambda r: -(r[1]["mean"] or 0))
    for name, e, note in rows:
        label = f"**{name}** (the course)" if name == COURSE_RECIPE else name
        if name == "best" and results.get("best_entry"):
            label += f" ({results['best_entry']['description']})"
        per = " / ".join(f"{a:.1f}" for a in e["splits"])
        lines.append(f"| {label}{note} | {e['mean']:.1f} | {e['std']:.1f} | {e['seconds']:.0f} | {per} |")
    lines.append("")
    if results.get("paired"):
        lines += ["Paired by split, the course's recipe against each other recipe: mean difference of test "
                  "accuracy and its 95 % t-interval over the splits. Ahead or behind only when the interval "
                  "excludes zero; tie otherwise.", "", comparison_table(results), ""]
    speed, over = results.get("phase1_speedup"), results.get("loop_overhead")
    m = results.get("measurements", {})
    if speed is not None:
        lines.append(f"- phase1_speedup: **{speed:.0f}x** (a linear-head epoch through the frozen backbone "
                     f"{m.get('backbone_epoch_s', float('nan')):.2f} s, on cached features "
                     f"{m.get('cached_epoch_s', float('nan')) * 1000:.2f} ms; target >= 10)")
    if over is not None:
        lines.append(f"- loop_overhead: **{over:+.3f}** (tl_helpers.train.fit against a bare PyTorch loop doing the "
                     f"same work, Lite0 fine-tuned at {results['image_size']} px: median over "
                     f"{m.get('repeats', '?')} back-to-back pairs of the process CPU-time ratio, minus 1, "
                     f"standard error {m.get('loop_overhead_sem') or float('nan'):.3f}; target <= 0.05). Wall time, noisier on a shared machine: median "
                     f"{m.get('wall_overhead_median', float('nan')):+.3f}, fastest runs "
                     f"{m.get('wall_overhead_min', float('nan')):+.3f}. Fixed cost of fit's bookkeeping: "
                     f"{m.get('fixed_overhead_per_step_us', float('nan')):.0f} us per step, "
                     f"{100 * m.get('fixed_overhead_fraction', float('nan')):.3f} % of a step")
    entries = [*results[DATASET].items(), *results.get("incomplete", {}).items()]
    runs = {r for _, e in entries for r in e.get("runs", [])}
    torch_line = f"- torch: {results['torch']}"
    if len(runs) > 1:  # cells kept from earlier runs (the cache): say which, and what compares
        torch_line += (" (this run). The cells come from more than one run: accuracies compare across runs, "
                       "seconds only within one (a machine shared with other jobs slows every recipe). "
                       "Runs per recipe: " + "; ".join(f"{name}: {' + '.join(e.get('runs', []))}"
                                                       for name, e in entries))
    lines += ["", f"- machine: {results['machine']}", torch_line,
              f"- command: `{results['command']}`", f"- date: {results['date']}", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Speed measurements
# ------------------------------------------------------------------------------------------------

def measure_phase1_speedup(data: BenchData, epochs: int = 3, feature_epochs: int = 100) -> dict:
    """Seconds per epoch of a linear head: through the frozen backbone vs on cached features.

    Both train ``nn.Linear(1280, 8)`` with AdamW (lr 1e-2), batch size 32, on the training split at the
    eval transform (the cached features are of that transform, so both see the same inputs). Through the
    backbone: the pretrained Lite0 frozen (BN in eval), every batch decoded, transformed and sent
    through it each epoch; one warm-up epoch, then the median of ``epochs``. On cached features:
    ``fit_head_on_features`` for ``feature_epochs`` epochs after a warm-up call; its median epoch time.
    Extracting the features once is not counted (it is what phase 1 pays once, a few seconds).
    """
    from tl_helpers.data import extract_features
    from tl_helpers.models import load_pretrained
    from tl_helpers.recipe import fit_head_on_features
    from tl_helpers.surgery import freeze, replace_head
    from tl_helpers.train import train_one_epoch

    model = replace_head(load_pretrained(image_size=data.image_size).model, data.num_classes)
    freeze(model)
    for p in model._fc.parameters():
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(model._fc.parameters(), lr=1e-2, weight_decay=1e-4)
    loader = torch.utils.data.DataLoader(data.train_eval, batch_size=data.batch_size, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    loss_fn = nn.CrossEntropyLoss()
    times = []
    for e in range(epochs + 1):
        start = time.perf_counter()
        train_one_epoch(model, loader, optimizer, loss_fn, data.device)
        if e:  # epoch 0 is the warm-up
            times.append(time.perf_counter() - start)
    backbone_epoch = statistics.median(times)

    head = model._fc
    model._fc = nn.Identity()
    X, y = extract_features(model, data.train_eval, cache=False, device=data.device, progress=False)
    model._fc = head
    fit_head_on_features(X, y, epochs=5, batch_size=data.batch_size, lr=1e-2)  # warm-up
    _, hist = fit_head_on_features(X, y, epochs=feature_epochs, batch_size=data.batch_size, lr=1e-2)
    cached_epoch = statistics.median(hist.column("seconds"))
    return {"phase1_speedup": round(backbone_epoch / cached_epoch, 1), "backbone_epoch_s": backbone_epoch,
            "cached_epoch_s": cached_epoch, "backbone_epochs_timed": epochs, "feature_epochs_timed": feature_epochs}


def _bare_loop(model: nn.Module, loader, optimizer, loss_fn, epochs: int, device) -> None:
    """The plain PyTorch training loop that ``fit`` wraps (no validation, no checkpoint)."""
    model.to(device)
    for _ in range(epochs):
        model.train()
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()


def _fixed_overhead_per_step(steps: int = 400, repeats: int = 5) -> float:
    """CPU seconds that ``fit`` adds to each optimisation step, measured where nothing else costs.

    A tiny model (``nn.Linear(16, 8)``, batches of 32) makes the step itself almost free, so the
    difference between ``fit`` and the bare loop is the loop's own bookkeeping (NaN check, loss and
    accuracy accumulation, modes, history). Minimum over interleaved repeats.
    """
    from tl_helpers.train import fit

    X, y = torch.randn(32 * steps // 2, 16), torch.randint(0, 8, (32 * steps // 2,))
    dataset = torch.utils.data.TensorDataset(X, y)

    def one(kind: str) -> float:
        torch.manual_seed(0)
        model = nn.Linear(16, 8)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        loader = torch.utils.data.DataLoader(dataset, batch_size=32, shuffle=True,
                                             generator=torch.Generator().manual_seed(0))
        start = time.process_time()
        if kind == "bare":
            _bare_loop(model, loader, optimizer, nn.CrossEntropyLoss(), 2, "cpu")
        else:
            fit(model, loader, None, optimizer, 2, loss_fn=nn.CrossEntropyLoss(), device="cpu", progress=False)
        return time.process_time() - start

    one("bare"), one("fit")
    times = {"bare": [], "fit": []}
    for r in range(repeats):
        for kind in (("bare", "fit") if r % 2 == 0 else ("fit", "bare")):
            times[kind].append(one(kind))
    return max(min(times["fit"]) - min(times["bare"]), 0.0) / steps


def measure_loop_overhead(data: BenchData, n_images: int = 64, epochs: int = 2, repeats: int = 10) -> dict:
    """``fit`` against a bare loop: same model, data, optimiser and epochs; ``fit/bare - 1``.

    The work: pretrained Lite0 with an 8-way head, every layer trained (the costly case ``fit`` is
    for), AdamW lr 1e-4, ``n_images`` training images pre-transformed to tensors (so image decoding
    stays out), batch size 32, ``epochs`` epochs, seeded shuffling. ``fit`` runs with
    ``val_loader=None``, no checkpoint, ``progress=False``. Before every run the weights, the optimiser
    and the random generators are reset. One warm-up run of each, then ``repeats`` pairs, interleaved
    (bare, fit, fit, bare, ...) so that busy phases of a shared machine hit both alike.

    Both the wall time and the process CPU time (all threads; with ``OMP_WAIT_POLICY=PASSIVE`` waiting
    threads sleep instead of spinning) of each run are recorded. ``loop_overhead`` is the median over
    pairs of the CPU-time ratio fit/bare, minus 1: on a machine shared with other busy processes the
    wall time of a run mostly measures the neighbours (pairs of identical work differ by +-15 % there),
    while CPU time counts only this process's work. The wall-time figures (median pair ratio, and the
    fastest runs) are reported too, and ``fixed_overhead_fraction`` cross-checks from below: the CPU
    time ``fit`` adds per step (measured on a tiny model, where it is all there is) over the CPU time of
    a bare Lite0 step.
    """
    from tl_helpers.models import load_pretrained
    from tl_helpers.surgery import replace_head
    from tl_helpers.train import fit

    model = replace_head(load_pretrained(image_size=data.image_size).model, data.num_classes).to(data.device)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    xs = torch.stack([data.train_eval[i][0] for i in range(min(n_images, len(data.train_eval)))])
    ys = torch.tensor([data.train_eval[i][1] for i in range(len(xs))])
    dataset = torch.utils.data.TensorDataset(xs, ys)
    loss_fn = nn.CrossEntropyLoss()

    def one(kind: str) -> tuple[float, float]:
        model.load_state_dict(init)
        seed_everything(0)
        loader = torch.utils.data.DataLoader(dataset, batch_size=data.batch_size, shuffle=True,
                                             generator=torch.Generator().manual_seed(0))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        start, cpu = time.perf_counter(), time.process_time()
        if kind == "bare":
            _bare_loop(model, loader, optimizer, loss_fn, epochs, data.device)
        else:
            fit(model, loader, None, optimizer, epochs, loss_fn=loss_fn, device=data.device, progress=False)
        if data.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start, time.process_time() - cpu

    one("bare"), one("fit")  # warm-up
    bare, fitted = [], []
    for r in range(repeats):
        order = ("bare", "fit") if r % 2 == 0 else ("fit", "bare")
        for kind in order:
            (bare if kind == "bare" else fitted).append(one(kind))
    cpu_ratios = [f[1] / b[1] for f, b in zip(fitted, bare)]
    wall_ratios = [f[0] / b[0] for f, b in zip(fitted, bare)]
    steps = epochs * math.ceil(len(xs) / data.batch_size)
    per_step = _fixed_overhead_per_step()
    bare_step_cpu = min(b[1] for b in bare) / steps
    return {"loop_overhead": round(statistics.median(cpu_ratios) - 1, 4),
            "loop_overhead_sem": round(statistics.stdev(cpu_ratios) / math.sqrt(len(cpu_ratios)), 4)
            if len(cpu_ratios) > 1 else None,
            "cpu_pair_ratios": cpu_ratios,
            "wall_overhead_median": round(statistics.median(wall_ratios) - 1, 4),
            "wall_overhead_min": round(min(f[0] for f in fitted) / min(b[0] for b in bare) - 1, 4),
            "wall_pair_ratios": wall_ratios,
            "fit_s": min(f[0] for f in fitted), "bare_s": min(b[0] for b in bare),
            "fit_cpu_s": min(f[1] for f in fitted), "bare_cpu_s": min(b[1] for b in bare),
            "fit_runs": fitted, "bare_runs": bare,
            "fixed_overhead_per_step_us": round(per_step * 1e6, 1),
            "bare_step_cpu_s": bare_step_cpu,
            "fixed_overhead_fraction": round(per_step / bare_step_cpu, 6),
            "repeats": repeats, "n_images": len(xs), "epochs": epochs, "batch_size": data.batch_size,
            "torch_threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}


def measurements(cache: Path, redo: bool, quick: bool, log: Callable[[str], None] = print) -> dict:
    path = cache / "measurements.json"
    if not redo:
        try:
            saved = json.loads(path.read_text())
            log(f"measurements (cached): phase1_speedup {saved['phase1_speedup']}, "
                f"loop_overhead {saved['loop_overhead']}")
            return saved
        except (OSError, ValueError, KeyError):
            pass
    data = make_data(0, **(QUICK_DATA if quick else {}))
    log("measuring phase1_speedup ...")
    out = measure_phase1_speedup(data, epochs=1 if quick else 3, feature_epochs=10 if quick else 100)
    log(f"  phase1_speedup {out['phase1_speedup']}x ({out['backbone_epoch_s']:.2f} s vs "
        f"{out['cached_epoch_s'] * 1000:.2f} ms per epoch)")
    log("measuring loop_overhead ...")
    lo = measure_loop_overhead(data, n_images=16 if quick else 64, epochs=1 if quick else 2,
                               repeats=1 if quick else 10)
    log(f"  loop_overhead {lo['loop_overhead']:+.4f} (CPU time, median of pairs; wall time: median "
        f"{lo['wall_overhead_median']:+.4f}, fastest runs {lo['wall_overhead_min']:+.4f}; fixed cost "
        f"{lo['fixed_overhead_per_step_us']:.0f} us/step = {lo['fixed_overhead_fraction']:.5f} of a step)")
    out |= lo
    out["machine"], out["date"] = machine(), _now()
    atomic_write(path, json.dumps(out, indent=1))
    return out


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------

# ------------------------------------------------------------------------------------------------
# Selection (validation parts of splits 5-9 only) and the backbone learning-rate sweep
# ------------------------------------------------------------------------------------------------

def select_recipe(cache: Path, candidates: dict[str, dict], splits=SELECTION_SPLITS, force: bool = False,
                  data_kwargs: dict | None = None, log: Callable[[str], None] = print) -> dict:
    """Run every candidate setting of the course's recipe on ``splits`` and rank them by mean VALIDATION
    accuracy. Test accuracy is neither printed nor stored in the summary: choosing must not see it."""
    summary = {}
    for name, overrides in candidates.items():
        log(f"candidate {name} {overrides}:")
        vals = [run_cell(COURSE_RECIPE, k, cache, force, data_kwargs, overrides, log, tag=f"select-{name}")["val_acc"]
                for k in splits]
        summary[name] = {"overrides": overrides, "val_splits": [round(v, 2) for v in vals],
                         "val_mean": round(statistics.fmean(vals), 2)}
    chosen = max(summary, key=lambda n: summary[n]["val_mean"])
    return {"splits": list(splits), "metric": "validation accuracy (%)", "candidates": summary, "chosen": chosen}


def select_best(cache: Path, candidates: dict[str, dict] = BEST_CANDIDATES, splits=SELECTION_SPLITS,
                force: bool = False, log: Callable[[str], None] = print) -> dict:
    """Rank the candidates of the `best` entry (input size and ``Recipe`` overrides) by mean VALIDATION
    accuracy on ``splits``, with each candidate's mean seconds a split (the entry must train in under 2
    minutes). Every ``Recipe`` field is passed explicitly, so a candidate runs with exactly its settings."""
    summary = {}
    for name, cand in candidates.items():
        log(f"best candidate {name} {cand}:")
        overrides = _two_phase_defaults() | best_overrides(name)
        cells = [run_cell("best", k, cache, force, {"image_size": cand["image_size"]}, overrides, log,
                          tag=f"select-{name}", defaults={}) for k in splits]
        vals = [c["val_acc"] for c in cells]
        summary[name] = {"candidate": cand, "val_splits": [round(v, 2) for v in vals],
                         "val_mean": round(statistics.fmean(vals), 2),
                         "seconds_mean": round(statistics.fmean(c["seconds"] for c in cells), 1)}
    within = [n for n in summary if summary[n]["seconds_mean"] < 120] or list(summary)
    chosen = max(within, key=lambda n: summary[n]["val_mean"])
    return {"splits": list(splits), "metric": "validation accuracy (%), the candidate's own test-time augmentation",
            "time_limit_s": 120, "candidates": summary, "chosen": chosen}


def lr_sweep(cache: Path, lrs=LR_SWEEP, n_splits: int = DEFAULT_SPLITS, force: bool = False,
             log: Callable[[str], None] = print) -> dict:
    """Test accuracy of one_phase and two_phase against the backbone learning rate, splits 0..n-1.

    A description of the recipe's sensitivity on the reporting splits, used for no choice."""
    out: dict[str, dict] = {}
    for recipe in ("one_phase", COURSE_RECIPE):
        out[recipe] = {}
        for lr in lrs:
            if lr == recipe_settings(RECIPES[recipe]).get("backbone_lr"):  # the main run's cells
                cells = [run_cell(recipe, k, cache, False, None, None, log) for k in range(n_splits)]
            else:
                cells = [run_cell(recipe, k, cache, force, None, {"backbone_lr": lr}, log, tag=f"lr{lr:g}")
                         for k in range(n_splits)]
            out[recipe][f"{lr:g}"] = [round(c["acc"], 2) for c in cells]
    return {"backbone_lrs": [f"{lr:g}" for lr in sorted(lrs)], "splits": list(range(n_splits)), "test_acc": out}


QUICK_DATA = {"image_size": 64, "batch_size": 8, "limit": 16, "max_batches": 2}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--splits", type=int, default=DEFAULT_SPLITS, help="split seeds 0..N-1 (default 5)")
    parser.add_argument("--recipes", default=",".join(RECIPES),
                        help=f"comma-separated subset, run in this order (default: {','.join(RECIPES)})")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1 split, 16 images at 64 px, 1 epoch per phase; results under cache/quick")
    parser.add_argument("--force", action="store_true", help="recompute cached cells and measurements")
    parser.add_argument("--remeasure", action="store_true", help="redo phase1_speedup and loop_overhead")
    parser.add_argument("--no-measure", action="store_true", help="skip phase1_speedup and loop_overhead")
    parser.add_argument("--measure-only", action="store_true",
                        help="(re)measure phase1_speedup and loop_overhead, rewrite the results, run no recipe")
    parser.add_argument("--cache", type=Path, default=HERE / "cache", help="cache folder (default benchmarks/cache)")
    parser.add_argument("--select", action="store_true",
                        help="rank the candidate settings of the course's recipe on the validation parts of "
                             "splits 5-9 (benchmarks/selection.json), run nothing else")
    parser.add_argument("--select-best", action="store_true",
                        help="rank the candidates of the `best` entry on the validation parts of splits 5-9 "
                             "(benchmarks/best_selection.json), run nothing else")
    parser.add_argument("--lr-sweep", action="store_true",
                        help="one_phase and two_phase against the backbone learning rate on splits 0-4 "
                             "(benchmarks/lr_sweep.json), run nothing else")
    parser.add_argument("--readme", action="store_true",
                        help="rewrite the results section of README.md from benchmarks/results.json, run nothing")
    args = parser.parse_args(argv)
    if args.readme:
        readme = HERE.parent / "README.md"
        atomic_write(readme, update_readme(readme.read_text(), json.loads((HERE / "results.json").read_text())))
        print(f"updated {readme}")
        return 0
    if args.select or args.lr_sweep or args.select_best:
        torch.set_num_threads(os.cpu_count() or 1)
        log = lambda s: print(s, flush=True)  # noqa: E731
        if args.select:
            chosen = select_recipe(args.cache, CANDIDATES, force=args.force, log=log)
            atomic_write(HERE / "selection.json", json.dumps(chosen | {"date": _now(), "machine": machine(),
                                                                         "torch": torch.__version__}, indent=1) + "\n")
            log(json.dumps(chosen, indent=1))
        if args.select_best:
            chosen = select_best(args.cache, force=args.force, log=log)
            atomic_write(HERE / "best_selection.json", json.dumps(chosen | {"date": _now(), "machine": machine(),
                                                                              "torch": torch.__version__}, indent=1) + "\n")
            log(json.dumps(chosen, indent=1))
        if args.lr_sweep:
            sweep = lr_sweep(args.cache, n_splits=args.splits, force=args.force, log=log)
            atomic_write(HERE / "lr_sweep.json", json.dumps(sweep | {"date": _now(), "machine": machine(),
                                                                       "torch": torch.__version__}, indent=1) + "\n")
            log(json.dumps(sweep, indent=1))
        return 0

    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        parser.error(f"unknown recipe(s) {unknown}; choose from {list(RECIPES)}")
    torch.set_num_threads(os.cpu_count() or 1)
    n_splits = 1 if args.quick else args.splits
    cache = args.cache / "quick" if args.quick else args.cache
    out_dir = cache if args.quick else HERE
    data_kwargs = QUICK_DATA if args.quick else {}
    command = "python -m benchmarks.run " + " ".join(argv if argv is not None else sys.argv[1:])
    log = lambda s: print(s, flush=True)  # noqa: E731
    log(f"benchmarks: {recipes} on splits 0..{n_splits - 1}; {machine()}; torch {torch.__version__}")

    meas = {}
    if not args.no_measure:
        meas = measurements(cache, args.force or args.remeasure or args.measure_only, args.quick, log)
    else:
        try:
            meas = json.loads((cache / "measurements.json").read_text())
        except (OSError, ValueError):
            meas = {}

    def write() -> dict:
        cells = collect(cache, list(RECIPES), n_splits, data_kwargs, SMOKE if args.quick else None)
        complete, incomplete = summarize(cells, n_splits)
        return write_results(out_dir, complete, incomplete, meas, command.strip(), n_splits,
                             image_size=data_kwargs.get("image_size", IMAGE_SIZE),
                             batch_size=data_kwargs.get("batch_size", BATCH_SIZE))

    skipped = []
    for recipe in ([] if args.measure_only else recipes):
        overrides = SMOKE[recipe] if args.quick else None
        log(f"{recipe}:")
        for split in range(n_splits):
            try:
                run_cell(recipe, split, cache, args.force, data_kwargs, overrides, log)
            except NotImplementedError as exc:
                log(f"  skipped {recipe}: {exc}")
                skipped.append(recipe)
                break
            write()
    results = write()
    log(f"\nwrote {out_dir / 'results.json'} and {out_dir / 'results.md'}")
    if skipped:
        log(f"skipped (not implemented): {skipped}")
    print(results_markdown(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
