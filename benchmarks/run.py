"""`make bench`: every recipe on the same folds of Clipart-8, plus two speed measurements.

    .venv/bin/python -m benchmarks.run                      # all recipes, folds 0..4
    .venv/bin/python -m benchmarks.run --recipes linear_probe,keras_guide --folds 3
    .venv/bin/python -m benchmarks.run --quick              # smoke run: tiny data, one step, ~1 min
    make bench BENCH_ARGS="--recipes scratch --force"

The design (benchmarks/README.md, "Protocol"): grouped, stratified 5-fold cross-validation. Fold k tests on
part k of the images (the five test parts are disjoint; near-duplicate groups never straddle parts); the
other four parts are split into a training and a validation part (``make_data(k)``: about 60/20/20). Every
recipe trains on the training part and chooses whatever it chooses (epochs, C...) on the validation part;
its test accuracy is measured here, identically for every recipe (eval mode, plain eval transform, no TTA),
with the wall seconds of the recipe call (loading the weights and training, including its validation passes;
not the test pass).

Three entries are *chosen inside each fold* (nested selection, ``benchmarks/nested.py``): ``two_phase`` (the
course's recipe) and ``one_phase`` (the same without phase 1) among the training runs of ``GRID``, each kept
at its last or best validation epoch, and ``best`` among ``BEST_CANDIDATES``, by validation accuracy only.

Each (recipe, fold, variant) result is cached as JSON in ``benchmarks/cache/clipart8/<recipe>[@tag]/fold<k>.json``:
an interrupted run resumes, and a rerun only computes missing cells. A cell is recomputed when the recipe's
settings (its keyword defaults, or the grid point's), the image size, the batch size, the dataset's groups or
``CODE_VERSION`` change, or with ``--force``. Edit a recipe's code without changing its defaults? Use
``--force --recipes NAME``.

Writes ``benchmarks/results.json`` and ``benchmarks/results.md`` (after every finished cell) from all
cached cells: entries with every fold done under ``clipart8``; the others under ``incomplete`` and
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

from benchmarks.nested import candidate_scores, choose  # noqa: E402
from benchmarks.recipes import (ARMS, BATCH_SIZE, BEST_CANDIDATES, BEST_DESCRIPTION, BEST_DESCRIPTIONS,  # noqa: E402
                                CODE_VERSION, COURSE_RECIPE, FOLDS, GRID, IMAGE_SIZE, RECIPES, RULES, SELECTED,
                                SMOKE, BenchData, accuracy_of, best_overrides, candidate_image_size, correct_of,
                                make_data)
from tl_helpers.benchmark_results import comparison_table, paired_rows, stale_note, update_readme  # noqa: E402
from tl_helpers.data import dataset_fingerprint  # noqa: E402
from tl_helpers.evaluate import interval  # noqa: E402
from tl_helpers.files import atomic_write  # noqa: E402
from tl_helpers.runtime import seed_everything  # noqa: E402

HERE = Path(__file__).resolve().parent
DATASET = "clipart8"
DEFAULT_FOLDS = FOLDS
FIXED = "fixed"  # the cell name of the manifest's fixed split (the notebooks' split), for --select-chapter


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
# Cells: one recipe (one grid point, one candidate) on one fold
# ------------------------------------------------------------------------------------------------

def recipe_settings(fn: Callable, overrides: dict | None = None, defaults: dict | None = None) -> dict:
    """The settings a recipe runs with: its keyword defaults and ``fn.default_settings()`` (or ``defaults``
    instead, when given), updated by ``overrides`` (JSON-able)."""
    params = inspect.signature(fn).parameters
    settings = {k: p.default for k, p in params.items()
                if p.default is not inspect.Parameter.empty and p.kind is not p.VAR_KEYWORD}
    if defaults is None:  # recipes configured by an object (the course's Recipe)
        defaults = fn.default_settings() if hasattr(fn, "default_settings") else {}
    settings.update(defaults)
    settings.update(overrides or {})
    return json.loads(json.dumps(settings, default=str))


def fold_name(fold: int | None) -> str:
    """``fold3``, or ``fixed`` for the manifest's fixed split."""
    return FIXED if fold is None else f"fold{fold}"


def cell_path(cache: Path, recipe: str, fold: int | None, tag: str | None = None) -> Path:
    """Where one cell is cached; ``tag`` names a variant of a recipe (a grid point, a `best` candidate)."""
    return cache / DATASET / (f"{recipe}@{tag}" if tag else recipe) / f"{fold_name(fold)}.json"


def cell_config(recipe: str, fold: int | None, data_kwargs: dict, overrides: dict | None = None,
                defaults: dict | None = None) -> dict:
    return {"recipe": recipe, "fold": fold, "folds": FOLDS, "dataset": dataset_fingerprint(),
            "code_version": CODE_VERSION,
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


def _scores(model: nn.Module, data: BenchData) -> dict:
    """Test and validation accuracy of ``model`` and which images it gets right."""
    correct, val_correct = correct_of(model, data), correct_of(model, data, "val")
    return {"acc": 100.0 * sum(correct) / len(correct), "val_acc": 100.0 * sum(val_correct) / len(val_correct),
            "correct": correct, "val_correct": val_correct}


def run_cell(recipe: str, fold: int | None, cache: Path, force: bool = False, data_kwargs: dict | None = None,
             overrides: dict | None = None, log: Callable[[str], None] = print, tag: str | None = None,
             defaults: dict | None = None) -> dict:
    """Run ``recipe`` on fold ``fold`` (or read its cached result) and return the cell dict.

    ``defaults`` replaces the recipe's ``default_settings()`` in the cell's key (a grid point or a `best`
    candidate is a whole set of settings, so the key never depends on ``Recipe``'s defaults). A recipe that
    returns ``(model, info)`` with ``info["models"]`` (e.g. the same run kept at its best validation epoch)
    gets each of those scored too, under ``variants``.
    """
    data_kwargs = dict(data_kwargs or {})
    config = cell_config(recipe, fold, data_kwargs, overrides, defaults)
    path = cell_path(cache, recipe, fold, tag)
    if not force:
        cached = load_cell(path, config)
        if cached is not None:
            log(f"  {recipe:17s} {tag or ''} {fold_name(fold)}: val {cached.get('val_acc', float('nan')):5.1f} %  "
                f"{cached['seconds']:6.1f} s  (cached)")
            return cached
    data = make_data(fold, **data_kwargs)
    seed_everything(0 if fold is None else fold)
    start, cpu = time.perf_counter(), time.process_time()
    out = RECIPES[recipe](data, **(overrides or {}))
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    model, info = out if isinstance(out, tuple) else (out, {})
    info = dict(info)
    variants = info.pop("models", {})
    cell = {"recipe": recipe, "fold": fold, **_scores(model, data), "seconds": seconds, "cpu_seconds": cpu_seconds,
            "n_train": len(data.train), "n_val": len(data.val), "n_test": len(data.test),
            "variants": {name: _scores(m, data) for name, m in variants.items()},
            "info": info, "config": config, "torch": torch.__version__, "machine": machine(), "date": _now()}
    atomic_write(path, json.dumps(cell, indent=1, default=str))
    log(f"  {recipe:17s} {tag or ''} {fold_name(fold)}: val {cell['val_acc']:5.1f} %  {seconds:6.1f} s")
    return cell


# ------------------------------------------------------------------------------------------------
# Nested selection inside a fold: the course's grid and the `best` candidates
# ------------------------------------------------------------------------------------------------

def grid_cells(fold: int | None, cache: Path, force: bool = False, data_kwargs: dict | None = None,
               log: Callable[[str], None] = print, run: bool = True,
               grid: dict[str, dict] = GRID) -> dict[str, dict]:
    """Every grid point of the course's recipe trained on fold ``fold`` (run, or read back; ``run=False``
    only reads back, leaving out the points not done yet)."""
    out = {}
    for name, settings in grid.items():
        s = settings | (SMOKE[COURSE_RECIPE] if (data_kwargs or {}).get("max_batches") else {})
        if run:
            out[name] = run_cell(COURSE_RECIPE, fold, cache, force, data_kwargs, s, log, tag=f"grid-{name}",
                                 defaults={})
        else:
            cell = load_cell(cell_path(cache, COURSE_RECIPE, fold, f"grid-{name}"),
                             cell_config(COURSE_RECIPE, fold, data_kwargs or {}, s, {}))
            if cell is not None:
                out[name] = cell
    return out


def grid_scores(cells: dict[str, dict]) -> dict[str, float]:
    """``{"<grid point>@<rule>": validation score}`` in the declared order (last before best)."""
    return {f"{name}@{rule}": score for name, cell in cells.items()
            for rule, score in candidate_scores(cell).items() if rule in RULES}


def select_arm(arm: str, cells: dict[str, dict], grid: dict[str, dict] = GRID) -> dict | None:
    """The entry ``arm`` (two_phase or one_phase) on one fold: the grid candidate of that arm with the best
    validation score, as a cell (its test result, its training seconds) with the choice and every score.
    None while a grid point of the arm is missing."""
    names = [n for n in grid if ARMS[arm](grid[n])]
    if any(n not in cells for n in names):
        return None
    scores = grid_scores({n: cells[n] for n in names})
    chosen = choose(scores)
    name, rule = chosen.split("@")
    cell = cells[name]
    result = cell["variants"].get(rule, cell) if rule != "last" else cell
    return {"recipe": arm, "fold": cell["fold"], "acc": result["acc"], "val_acc": result["val_acc"],
            "correct": result["correct"], "val_correct": result["val_correct"], "seconds": cell["seconds"],
            "cpu_seconds": cell.get("cpu_seconds"), "selection_seconds": sum(cells[n]["seconds"] for n in names),
            "selection_cpu_seconds": _sum_or_none(cells[n].get("cpu_seconds") for n in names), "n_train": cell["n_train"],
            "n_val": cell["n_val"], "n_test": cell["n_test"], "chosen": chosen,
            "settings": grid[name] | {"restore_best": rule == "best"},
            "scores": {k: round(100 * v, 2) for k, v in scores.items()},
            "torch": cell.get("torch"), "date": cell.get("date")}


def best_cells(fold: int, course: dict, cache: Path, force: bool = False, log: Callable[[str], None] = print,
               quick: dict | None = None, run: bool = True) -> dict[str, dict]:
    """Every `best` candidate on fold ``fold``; ``course`` is the fold's chosen two_phase settings (the
    ensemble's fine-tuned member)."""
    out = {}
    for name in BEST_CANDIDATES:
        data_kwargs = {"image_size": candidate_image_size(name)} | (quick or {})
        overrides = best_overrides(name, course)
        if quick:
            overrides |= {k: 1 for k in ("head_epochs", "top_epochs", "all_epochs") if k in overrides}
            if "finetune_size" in overrides:
                overrides["finetune_size"] = data_kwargs["image_size"] // 2
        if run:
            out[name] = run_cell("best", fold, cache, force, data_kwargs, overrides, log, tag=f"cand-{name}",
                                 defaults={})
        else:
            cell = load_cell(cell_path(cache, "best", fold, f"cand-{name}"),
                             cell_config("best", fold, data_kwargs, overrides, {}))
            if cell is not None:
                out[name] = cell
    return out


def _sum_or_none(values) -> float | None:
    """The sum, or None when a value is missing (cells made before CPU time was recorded)."""
    values = list(values)
    return None if any(v is None for v in values) else float(sum(values))


def select_best(cells: dict[str, dict]) -> dict | None:
    """The entry ``best`` on one fold: the candidate with the highest validation accuracy (ties to the first
    listed), as a cell with the choice and every candidate's validation accuracy. None while one is missing."""
    if any(n not in cells for n in BEST_CANDIDATES):
        return None
    scores = {n: cells[n]["val_acc"] / 100 for n in BEST_CANDIDATES}
    chosen = choose(scores)
    cell = cells[chosen]
    return {"recipe": "best", "fold": cell["fold"], "acc": cell["acc"], "val_acc": cell["val_acc"],
            "correct": cell["correct"], "val_correct": cell["val_correct"], "seconds": cell["seconds"],
            "cpu_seconds": cell.get("cpu_seconds"), "selection_seconds": sum(c["seconds"] for c in cells.values()),
            "selection_cpu_seconds": _sum_or_none(c.get("cpu_seconds") for c in cells.values()), "n_train": cell["n_train"],
            "n_val": cell["n_val"], "n_test": cell["n_test"], "chosen": chosen,
            "scores": {k: round(100 * v, 2) for k, v in scores.items()},
            "torch": cell.get("torch"), "date": cell.get("date")}


# ------------------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------------------

def summarize(cells: dict[str, list[dict]], n_folds: int, ratio: float | None = None) -> tuple[dict, dict]:
    """(complete, incomplete): per entry the mean accuracy over the folds with its 95 % interval (corrected
    t with ``ratio`` = n_test / n_train), the sample std (ddof=1), the per-fold accuracies and choices, and
    the mean seconds."""
    complete, incomplete = {}, {}
    for recipe, rows in cells.items():
        rows = sorted(rows, key=lambda c: c["fold"])
        accs = [round(c["acc"], 2) for c in rows]
        iv = interval(accs, test_train_ratio=ratio) if len(accs) > 1 else None
        entry = {"mean": round(statistics.fmean(accs), 2) if accs else None,
                 "std": round(statistics.stdev(accs), 2) if len(accs) > 1 else 0.0,
                 "low": round(iv.low, 2) if iv else None, "high": round(iv.high, 2) if iv else None,
                 "seconds": round(statistics.fmean(c["seconds"] for c in rows), 1) if rows else None,
                 "splits": accs,
                 "val_splits": [round(c["val_acc"], 2) for c in rows if "val_acc" in c],
                 "runs": sorted({f"torch {c.get('torch', '?')}, {str(c.get('date', '?'))[:10]}" for c in rows})}
        cpu = [c.get("cpu_seconds") for c in rows]
        if rows and None not in cpu:   # CPU time of the process (all threads): what the load does not inflate
            entry["cpu_seconds"] = round(statistics.fmean(cpu), 1)
        if any("chosen" in c for c in rows):
            entry["chosen"] = [c["chosen"] for c in rows]
            entry["selection_seconds"] = round(statistics.fmean(c["selection_seconds"] for c in rows), 1)
            sel_cpu = [c.get("selection_cpu_seconds") for c in rows]
            if None not in sel_cpu:
                entry["selection_cpu_seconds"] = round(statistics.fmean(sel_cpu), 1)
        if len(rows) == n_folds:
            complete[recipe] = entry
        elif rows:
            incomplete[recipe] = entry | {"splits_done": [c["fold"] for c in rows], "splits_wanted": n_folds}
    return complete, incomplete


def collect(cache: Path, recipes: list[str], n_folds: int, data_kwargs: dict | None = None,
            quick: bool = False) -> tuple[dict[str, list], dict]:
    """Every cached cell (with the current settings) of ``recipes`` on folds 0..n_folds-1, the selected
    entries built from the grid and candidate cells; and the per-fold selections."""
    out: dict[str, list] = {}
    selection: dict[str, dict] = {}
    data_kwargs = data_kwargs or {}
    for recipe in recipes:
        if recipe == COURSE_RECIPE:
            for arm in ARMS:
                out[arm] = []
            for fold in range(n_folds):
                cells = grid_cells(fold, cache, data_kwargs=data_kwargs, run=False)
                for arm in ARMS:
                    entry = select_arm(arm, cells)
                    if entry is not None:
                        out[arm].append(entry)
                        selection.setdefault(arm, {})[fold_name(fold)] = {
                            k: entry[k] for k in ("chosen", "scores", "settings")}
        elif recipe == "best":
            out["best"] = []
            for fold in range(n_folds):
                course = next((c["settings"] for c in out.get(COURSE_RECIPE, []) if c["fold"] == fold), None)
                if course is None:
                    continue
                entry = select_best(best_cells(fold, course, cache, quick=data_kwargs if quick else None, run=False))
                if entry is not None:
                    out["best"].append(entry)
                    selection.setdefault("best", {})[fold_name(fold)] = {k: entry[k] for k in ("chosen", "scores")}
        else:
            rows = []
            for fold in range(n_folds):
                config = cell_config(recipe, fold, data_kwargs, SMOKE[recipe] if quick else None)
                cell = load_cell(cell_path(cache, recipe, fold), config)
                if cell is not None:
                    rows.append(cell)
            out[recipe] = rows
    return out, selection


def design(cells: dict[str, list]) -> dict:
    """The reporting design, with the mean sizes of the folds' parts (for the corrected t)."""
    rows = [c for entry in cells.values() for c in entry]
    n_test = statistics.fmean(c["n_test"] for c in rows) if rows else None
    n_learn = statistics.fmean(c["n_train"] + c["n_val"] for c in rows) if rows else None
    return {"kind": f"grouped, stratified {FOLDS}-fold cross-validation; settings chosen inside each fold on its "
                    "validation part (nested)",
            "folds": FOLDS, "n_train": round(n_learn, 1) if n_learn else None,
            "n_test": round(n_test, 1) if n_test else None,
            "test_train_ratio": round(n_test / n_learn, 4) if rows else 1 / (FOLDS - 1),
            "interval": "95 % corrected resampled t over the folds (Nadeau & Bengio 2003; for k-fold "
                        "cross-validation as in Bouckaert & Frank 2004): variance x (1/k + n_test/n_train), "
                        "k - 1 degrees of freedom"}


def write_results(out_dir: Path, cells: dict[str, list], selection: dict, measurements: dict, command: str,
                  n_folds: int, machine_line: str | None = None, image_size: int = IMAGE_SIZE,
                  batch_size: int = BATCH_SIZE) -> dict:
    """Write ``results.json`` and ``results.md`` into ``out_dir``; return the JSON dict."""
    plan = design(cells)
    complete, incomplete = summarize(cells, n_folds, plan["test_train_ratio"])
    results = {DATASET: complete, "course_recipe": COURSE_RECIPE, "design": plan}
    if incomplete:
        results["incomplete"] = incomplete
    if COURSE_RECIPE in complete:
        results["paired"] = paired_rows(results)
    if "best" in complete or "best" in incomplete:
        results["best_entry"] = {"description": BEST_DESCRIPTION, "candidates": BEST_DESCRIPTIONS}
    results["selection"] = selection
    results["grid"] = GRID
    results["phase1_speedup"] = measurements.get("phase1_speedup")
    results["loop_overhead"] = measurements.get("loop_overhead")
    if measurements:
        results["measurements"] = measurements
    results.update({"dataset": dataset_fingerprint(), "splits": list(range(n_folds)), "image_size": image_size,
                    "batch_size": batch_size, "backbone": "efficientnet_lite0", "machine": machine_line or machine(),
                    "command": command, "date": _now(), "torch": torch.__version__})
    atomic_write(out_dir / "results.json", json.dumps(results, indent=1) + "\n")
    atomic_write(out_dir / "results.md", results_markdown(results))
    return results


def results_markdown(results: dict) -> str:
    """The results as a Markdown table with the machine, command and date."""
    n = len(results["splits"])
    plan = results.get("design", {})
    unit = plan.get("unit", "fold")
    lines = [f"# Benchmarks: Clipart-8, EfficientNet-Lite0, {results['image_size']} px",
             "",
             plan.get("summary") or (
                 f"Test accuracy over the {n} folds of grouped, stratified {plan.get('folds', n)}-fold cross-validation "
                 f"(each image is tested once; each fold learns from the other four parts, split about 3:1 into "
                 f"training and validation; near-duplicate groups never in two parts): mean, its 95 % interval "
                 f"(corrected resampled t, n_test/n_train {plan.get('test_train_ratio', float('nan')):.3f}) and the "
                 f"accuracy of each fold; seconds: mean wall time of one fold (loading the weights and training, "
                 f"validation included; test pass excluded). Every setting that an entry chooses (the course's "
                 f"recipe, one-phase fine-tuning and best among their candidates, the probe's C, the tutorial's "
                 f"epoch) is chosen inside each fold on its validation part, never on a test part (the protocol: "
                 f"benchmarks/README.md)."),
             "",
             *([f"**Note.** {stale_note(results)}", ""] if stale_note(results) else []),
             f"| recipe | mean (%) | 95 % interval | seconds / {unit} | per {unit} (%) |",
             "|---|---:|---|---:|---|"]
    rows = [(name, e, "") for name, e in results[DATASET].items()]
    rows += [(name, e, f" (incomplete: {len(e['splits'])}/{n} folds)")
             for name, e in results.get("incomplete", {}).items()]
    rows.sort(key=lambda r: -(r[1]["mean"] or 0))
    for name, e, note in rows:
        label = f"**{name}** (the course)" if name == COURSE_RECIPE else name
        if name == "best" and results.get("best_entry"):
            label += f" ({results['best_entry']['description']})"
        per = " / ".join(f"{a:.1f}" for a in e["splits"])
        iv = f"{e['low']:.1f} to {e['high']:.1f}" if e.get("low") is not None else "-"
        lines.append(f"| {label}{note} | {e['mean']:.1f} | {iv} | {e['seconds']:.0f} | {per} |")
    lines.append("")
    chosen = {name: e for name, e in results[DATASET].items() if e.get("chosen")}
    if chosen:
        lines += ["Chosen inside each fold on its validation part (seconds: the whole selection, a fold):", ""]
        for name, e in chosen.items():
            lines.append(f"- {name} ({e.get('selection_seconds', float('nan')):.0f} s): " + "; ".join(
                f"fold {k}: {c}" for k, c in enumerate(e["chosen"])))
        lines.append("")
    if results.get("paired"):
        lines += [f"Paired by {unit}, the course's recipe against each other entry: mean difference of test "
                  f"accuracy and its 95 % corrected interval over the {unit}s. Ahead or behind only when the interval "
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


QUICK_DATA = {"image_size": 64, "batch_size": 8, "limit": 16, "max_batches": 2}


def select_chapter(cache: Path, force: bool = False, log: Callable[[str], None] = print) -> dict:
    """The course recipe's settings for the notebooks: the two_phase arm of the grid (the runs with a phase 1)
    on the manifest's fixed split (the chapters' split), chosen on its validation part by the same rule as inside
    every fold."""
    arm = {name: settings for name, settings in GRID.items() if ARMS[COURSE_RECIPE](settings)}   # Recipe has a phase 1
    cells = grid_cells(None, cache, force, log=log, grid=arm)
    entry = select_arm(COURSE_RECIPE, cells, arm)
    return {"split": "the manifest's fixed split (the notebooks')", "metric": "validation accuracy (%); "
            "best-epoch rules cross-fitted on two halves of the validation part (benchmarks/nested.py)",
            "chosen": entry["chosen"], "settings": entry["settings"], "scores": entry["scores"],
            "seconds": {n: round(c["seconds"], 1) for n, c in cells.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folds", type=int, default=DEFAULT_FOLDS,
                        help=f"folds 0..N-1 of the {FOLDS}-fold cross-validation (default {DEFAULT_FOLDS})")
    parser.add_argument("--recipes", default=",".join(RECIPES),
                        help=f"comma-separated subset, run in this order (default: {','.join(RECIPES)})")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1 fold, 16 images at 64 px, 1 epoch per phase; results under cache/quick")
    parser.add_argument("--force", action="store_true", help="recompute cached cells and measurements")
    parser.add_argument("--remeasure", action="store_true", help="redo phase1_speedup and loop_overhead")
    parser.add_argument("--no-measure", action="store_true", help="skip phase1_speedup and loop_overhead")
    parser.add_argument("--measure-only", action="store_true",
                        help="(re)measure phase1_speedup and loop_overhead, rewrite the results, run no recipe")
    parser.add_argument("--cache", type=Path, default=HERE / "cache", help="cache folder (default benchmarks/cache)")
    parser.add_argument("--select-chapter", action="store_true",
                        help="run the course recipe's grid on the notebooks' fixed split and choose its settings "
                             "on that split's validation part (benchmarks/recipe_selection.json), run nothing else")
    parser.add_argument("--readme", action="store_true",
                        help="rewrite the results section of README.md from benchmarks/results.json, run nothing")
    args = parser.parse_args(argv)
    if args.readme:
        readme = HERE.parent / "README.md"
        atomic_write(readme, update_readme(readme.read_text(), json.loads((HERE / "results.json").read_text())))
        print(f"updated {readme}")
        return 0
    log = lambda s: print(s, flush=True)  # noqa: E731
    if args.select_chapter:
        torch.set_num_threads(os.cpu_count() or 1)
        chosen = select_chapter(args.cache, force=args.force, log=log)
        atomic_write(HERE / "recipe_selection.json", json.dumps(chosen | {"date": _now(), "machine": machine(),
                                                                           "torch": torch.__version__}, indent=1) + "\n")
        log(json.dumps(chosen, indent=1))
        return 0

    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        parser.error(f"unknown recipe(s) {unknown}; choose from {list(RECIPES)}")
    torch.set_num_threads(os.cpu_count() or 1)
    n_folds = 1 if args.quick else args.folds
    cache = args.cache / "quick" if args.quick else args.cache
    out_dir = cache if args.quick else HERE
    data_kwargs = QUICK_DATA if args.quick else {}
    command = "python -m benchmarks.run " + " ".join(argv if argv is not None else sys.argv[1:])
    log(f"benchmarks: {recipes} on folds 0..{n_folds - 1}; {machine()}; torch {torch.__version__}")

    meas = {}
    if not args.no_measure:
        meas = measurements(cache, args.force or args.remeasure or args.measure_only, args.quick, log)
    else:
        try:
            meas = json.loads((cache / "measurements.json").read_text())
        except (OSError, ValueError):
            meas = {}

    def write() -> dict:
        cells, selection = collect(cache, list(RECIPES), n_folds, data_kwargs, quick=args.quick)
        return write_results(out_dir, cells, selection, meas, command.strip(), n_folds,
                             image_size=data_kwargs.get("image_size", IMAGE_SIZE),
                             batch_size=data_kwargs.get("batch_size", BATCH_SIZE))

    for recipe in ([] if args.measure_only else recipes):
        log(f"{recipe}:")
        for fold in range(n_folds):
            if recipe == COURSE_RECIPE:
                grid_cells(fold, cache, args.force, data_kwargs, log)
            elif recipe == "best":
                course = select_arm(COURSE_RECIPE, grid_cells(fold, cache, data_kwargs=data_kwargs, run=False))
                if course is None:
                    log(f"  best {fold_name(fold)}: waits for the course's grid on this fold (run two_phase first)")
                    continue
                best_cells(fold, course["settings"], cache, args.force, log, quick=data_kwargs or None)
            else:
                run_cell(recipe, fold, cache, args.force, data_kwargs, SMOKE[recipe] if args.quick else None, log)
            write()
    results = write()
    log(f"\nwrote {out_dir / 'results.json'} and {out_dir / 'results.md'}")
    print(results_markdown(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
