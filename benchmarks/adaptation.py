"""`make bench` entry `adaptation`: chapter 09's grid of domain-adaptation runs, every arm on many seeds.

    .venv/bin/python -m benchmarks.adaptation                       # mnist->mnistm, seeds 0-9, resumable
    .venv/bin/python -m benchmarks.adaptation --pair synthetic->mnist --seeds 5
    .venv/bin/python -m benchmarks.adaptation --quick               # smoke run: 1 seed, 1 epoch, nothing written

Every arm of ``tl_helpers.adaptation.uda_arms``: the target-supervised upper bound, source only (source
batches only), and for each BatchNorm mode (``joint``: one BatchNorm batch of source and target, as tllib;
``separate``: two passes, as tlbook-code and DeepDA) the weight-0 control and CORAL, MMD and DANN at every
loss weight of the grid. Each run is scored by ``tl_helpers.adaptation.uda_cell``: label-free numbers
(source validation accuracy, proxy A-distances, DEV risk) and, for scoring only, target accuracies.
Settings: ``tl_helpers.adaptation.UDA_SETTINGS`` (``--pair`` changes the pair). The chapter reads the
results of its pair and recomputes any cell whose settings differ.

Writes ``benchmarks/adaptation_results.json`` (the chapter's pair, mnist->mnistm) or
``benchmarks/adaptation_selection.json`` (the other pair, where the chapter's selection rule was chosen)
after every seed. About 2.5 minutes a seed on two idle cores.
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

import torch  # noqa: E402

from tl_helpers.adaptation import UDA_SETTINGS, uda_grid  # noqa: E402
from tl_helpers.domains import domain_pair  # noqa: E402

HERE = Path(__file__).resolve().parent
FILES = {"mnist->mnistm": HERE / "adaptation_results.json", "synthetic->mnist": HERE / "adaptation_selection.json"}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pair", default=UDA_SETTINGS["pair"], choices=sorted(FILES))
    ap.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1 (default 10)")
    ap.add_argument("--quick", action="store_true", help="one seed, one epoch, two weights; writes nothing")
    args = ap.parse_args(argv)
    settings = {**UDA_SETTINGS, "pair": args.pair}
    if args.quick:
        settings.update(epochs=1, weights=[0, 1])
    torch.set_num_threads(settings["threads"])
    path = FILES[args.pair]
    res = json.loads(path.read_text()) if path.exists() and not args.quick else {}
    if res.get("settings") != settings:
        res = {"settings": settings, "cells": []}
    pair = domain_pair(settings["pair"], settings["n_source"], settings["n_target"], settings["data_seed"])
    for seed in range(1 if args.quick else args.seeds):
        start = time.perf_counter()
        cells = uda_grid(settings, [seed], store=res, pair=pair)
        done = {(c["seed"], c["method"], c["bn"], c["weight"]) for c in res["cells"]}
        res["cells"] += [c for c in cells if (c["seed"], c["method"], c["bn"], c["weight"]) not in done]
        best = max((c for c in cells if c["method"] not in ("target", "none")), key=lambda c: c["target_test"])
        print(f"seed {seed}: {len(cells)} arms in {time.perf_counter() - start:.0f} s; source only "
              f"{next(c['target_test'] for c in cells if c['method'] == 'none' and c['bn'] == 'source'):.3f}",
              flush=True)
        if args.quick:
            print(best)
            continue
        res.update(date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                   machine=f"{platform.machine()}, {os.cpu_count()} CPUs", torch=torch.__version__,
                   command="python -m benchmarks.adaptation " + " ".join(sys.argv[1:] if argv is None else argv))
        path.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
