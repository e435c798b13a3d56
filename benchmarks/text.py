"""`make bench` entry `text`: chapter 10's labels-per-class comparison, fine-tuning chosen on validation.

    .venv/bin/python -m benchmarks.text                 # draws 0-4, resumes where it stopped
    .venv/bin/python -m benchmarks.text --draws 3       # fewer draws
    .venv/bin/python -m benchmarks.text --quick         # smoke run: one draw of 5 a class, few steps, nothing written

For every point (5 and 20 labelled texts a class, and all 180) and every draw: TF-IDF plus logistic
regression, the frozen all-MiniLM-L6-v2 with a logistic-regression probe, and the encoder fine-tuned, each
with its settings chosen on the point's own validation part (as many texts a class as the point trains on,
at most the 45 of the validation split): C for the two probes, the body's learning rate and the number of
steps (the checkpoint of a run scored at 25, 50 and 100 steps, and 200 with all labels) for fine-tuning. Only the chosen setting
is scored on the test split. Settings: ``tl_helpers.text.LABELS_PER_CLASS_SETTINGS``; the cell code is
``tl_helpers.text.labels_per_class_cell``, the same the chapter calls when its parameters differ from these.

Writes ``benchmarks/text_results.json`` after every cell (keyed by the settings: a changed setting starts
afresh) and ``benchmarks/text_results.md``. Fine-tuning 22.6 M parameters is the cost: about 20 minutes a
draw of the three points on 2 cores (2-4 minutes a cell at 5 and 20 a class, about 13 at all).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # see benchmarks/run.py: spin-waits on shared cores

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tl_helpers.evaluate import paired_difference  # noqa: E402
from tl_helpers.text import (LABELS_PER_CLASS_SETTINGS, embed_texts, labels_per_class_cell, load_text_model,  # noqa: E402
                             load_text_set, text_splits)

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "text_results.json"
METHODS = ("TF-IDF", "frozen", "fine-tuned")


def load(path: Path = RESULTS) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def markdown(res: dict) -> str:
    s = res["settings"]
    lines = ["# Chapter 10: TF-IDF, frozen and fine-tuned by labels a class (`python -m benchmarks.text`)", "",
             f"{res['date']}, {res['machine']}, torch {res['torch']}, {s['threads']} threads, `{res['command']}`.",
             f"Each method's settings chosen on the point's own validation part; fine-tuning's body learning rate "
             f"from {s['lrs']} and its steps from {s['checkpoints']}. Test accuracy (%), mean over the draws, "
             "and the paired difference fine-tuned - frozen with its 95 % t-interval.", "",
             "| labels a class | draws | TF-IDF | frozen | fine-tuned | fine-tuned - frozen | chosen (lr, steps) |",
             "|---|---|---|---|---|---|---|"]
    for point in s["points"]:
        cells = [c for c in res["cells"] if c["point"] == point]
        if not cells:
            continue
        acc = {m: [100 * c[m]["test"] for c in cells] for m in METHODS}
        diff = paired_difference(acc["fine-tuned"], acc["frozen"]) if len(cells) > 1 else None
        d = (f"{diff['mean']:+.1f} ({diff['low']:+.1f} to {diff['high']:+.1f}), {diff['verdict']}" if diff else "-")
        chosen = ", ".join(f"({c['fine-tuned']['lr']:g}, {c['fine-tuned']['steps']})" for c in cells)
        lines.append(f"| {point} | {len(cells)} | " + " | ".join(f"{np.mean(acc[m]):.1f}" for m in METHODS)
                     + f" | {d} | {chosen} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--draws", type=int, default=5, help="draws 0..N-1 of every point (default 5)")
    ap.add_argument("--points", default=None, help="comma-separated subset of the points, e.g. 5,20")
    ap.add_argument("--first-draw", type=int, default=0, help="start at this draw (to run draws in parallel processes)")
    ap.add_argument("--results", type=Path, default=RESULTS, help="the JSON file to resume and write (default %(default)s)")
    ap.add_argument("--merge", type=Path, default=None,
                    help="fold in the cells of another results file made with the same settings, and stop")
    ap.add_argument("--quick", action="store_true", help="one draw at 5 a class with 2 and 4 steps; writes nothing")
    args = ap.parse_args(argv)
    settings = dict(LABELS_PER_CLASS_SETTINGS)
    if args.quick:
        settings.update(checkpoints={"5": [2, 4]}, lrs=[2e-5, 2e-4])
    torch.set_num_threads(settings["threads"])
    parts = text_splits(load_text_set(settings["text_set"]), seed=settings["split_seed"])
    tokenizer, body = load_text_model()
    embeddings = {name: embed_texts(body, tokenizer, part.texts, pooling="mean", max_length=settings["max_length"])
                  for name, part in parts.items()}
    res = load(args.results)
    if args.quick or res.get("settings") != settings:
        res = {"settings": settings, "cells": []}
    if args.merge:
        other = load(args.merge)
        if other.get("settings") != res["settings"]:
            raise SystemExit(f"{args.merge} was made with other settings: nothing merged")
        have = {(c["point"], c["draw"]) for c in res["cells"]}
        res["cells"] += [c for c in other["cells"] if (c["point"], c["draw"]) not in have]
        res["cells"].sort(key=lambda c: (settings["points"].index(c["point"]), c["draw"]))
        res["command"] += f"; cells merged from {args.merge.name} (`{other['command']}`)"
        args.results.write_text(json.dumps(res, indent=1) + "\n")
        args.results.with_suffix(".md").write_text(markdown(res))
        return
    points = args.points.split(",") if args.points else settings["points"]
    draws = range(1) if args.quick else range(args.first_draw, args.draws)
    todo = [(d, p) for d in draws for p in (["5"] if args.quick else points)]
    for draw, point in todo:
        if any(c["point"] == point and c["draw"] == draw for c in res["cells"]):
            continue
        start = time.perf_counter()
        cell = labels_per_class_cell(parts, embeddings, body, tokenizer, point, draw, settings)
        res["cells"].append(cell)
        ft = cell["fine-tuned"]
        print(f"{point:>4s} a class, draw {draw}: TF-IDF {cell['TF-IDF']['test']:.3f}, frozen {cell['frozen']['test']:.3f}, "
              f"fine-tuned {ft['test']:.3f} (lr {ft['lr']:g}, {ft['steps']} steps, val {ft['val']:.3f}) "
              f"in {time.perf_counter() - start:.0f} s", flush=True)
        if args.quick:
            continue
        res["cells"].sort(key=lambda c: (settings["points"].index(c["point"]), c["draw"]))
        res.update(date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                   machine=f"{platform.machine()}, {os.cpu_count()} CPUs", torch=torch.__version__,
                   command="python -m benchmarks.text " + " ".join(sys.argv[1:] if argv is None else argv))
        args.results.write_text(json.dumps(res, indent=1) + "\n")
        args.results.with_suffix(".md").write_text(markdown(res))


if __name__ == "__main__":
    main()
