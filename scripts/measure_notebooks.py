"""Measure each chapter against the laptop budget: wall time and peak memory of its kernel.

    python scripts/measure_notebooks.py                 # every notebooks/NN_*.ipynb
    python scripts/measure_notebooks.py notebooks/02_feature_extraction.ipynb

Each notebook runs in a fresh process (nbclient, default parameters, outputs discarded), so the figures are
what a learner's first run costs: wall seconds including kernel start, and the peak resident memory of the
kernel process (the largest child of that process). The budget is 120 s and 2 GB on 2 CPU cores. Run it on an
otherwise idle machine; the numbers go in the closing notes, not in assertions.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGET_SECONDS, BUDGET_MB = 120, 2048

CHILD = r"""
import json, resource, sys, time
import nbformat
from nbclient import NotebookClient
path = sys.argv[1]
nb = nbformat.read(path, as_version=4)
start = time.perf_counter()
NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": sys.argv[2]}}).execute()
seconds = time.perf_counter() - start
peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"seconds": seconds, "kernel_peak_mb": peak_kb / 1024}))
"""


def measure(path: Path) -> dict:
    """Run one notebook in a fresh process; return its wall time and the kernel's peak memory."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, str(path), str(path.parent)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{path.name} failed:\n{proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["total_seconds"] = time.perf_counter() - start
    return result


def main() -> None:
    paths = [Path(p) for p in sys.argv[1:]] or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    print(f"{'notebook':40s} {'seconds':>8s} {'peak MB':>8s}  budget ({BUDGET_SECONDS} s, {BUDGET_MB} MB)")
    over = 0
    for path in paths:
        r = measure(path)
        ok = r["total_seconds"] <= BUDGET_SECONDS and r["kernel_peak_mb"] <= BUDGET_MB
        over += not ok
        print(f"{path.name:40s} {r['total_seconds']:8.1f} {r['kernel_peak_mb']:8.0f}  {'ok' if ok else 'OVER'}")
    sys.exit(1 if over else 0)


if __name__ == "__main__":
    main()
