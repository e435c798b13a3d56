"""Measure each chapter against the laptop budget: wall time and peak memory of its kernel.

    python scripts/measure_notebooks.py                 # every notebooks/NN_*.ipynb
    python scripts/measure_notebooks.py notebooks/02_feature_extraction.ipynb
    python scripts/measure_notebooks.py --limit-mb 2048   # Linux as root: under a hard 2 GB memory limit
    python scripts/measure_notebooks.py --write            # and store each executed notebook (its outputs)

Each notebook runs in a fresh process (nbclient, default parameters; outputs discarded unless ``--write``), so the figures are
what a learner's first run costs: wall seconds including kernel start, and the peak resident memory of the
kernel process (the largest child of that process). The budget is 120 s and 2 GB on 2 CPU cores. Run it on an
otherwise idle machine; the numbers go in the closing notes, not in assertions.

Peak resident memory counts the pages of shared libraries the process touched. PyTorch's CUDA wheels (what
pip installs on Linux x86-64) map about 400 MB of such pages on import, even on a CPU-only machine; the
CPU wheels that laptops get do not. ``--limit-mb`` is the stricter test: the notebook, the kernel and the
nbclient process that drives it run in a memory cgroup (v1 or v2) capped at that size, where library pages
can be dropped and re-read but anonymous memory cannot; the run fails if the kernel is killed for memory,
and the cgroup's own peak is reported.
"""

from __future__ import annotations

import argparse
import json
import os
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
kernelspec = dict(nb.metadata.get("kernelspec", {}))
start = time.perf_counter()
NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": sys.argv[2]}}).execute()
seconds = time.perf_counter() - start
if sys.argv[3] == "write":
    nb.metadata["kernelspec"] = kernelspec      # the kernel the notebook names, not the one that ran it here
    nbformat.write(nb, path)
peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"seconds": seconds, "kernel_peak_mb": peak_kb / 1024}))
"""


def make_cgroup(limit_mb: int) -> tuple[Path, str]:
    """A fresh memory cgroup capped at ``limit_mb`` (Linux, root): (its folder, cgroup version)."""
    name = f"tl-measure-{os.getpid()}"
    v2 = Path("/sys/fs/cgroup/cgroup.controllers")
    if v2.exists():
        folder = Path("/sys/fs/cgroup") / name
        folder.mkdir()
        (folder / "memory.max").write_text(str(limit_mb * 2**20))
        if (folder / "memory.swap.max").exists():
            (folder / "memory.swap.max").write_text("0")
        return folder, "v2"
    folder = Path("/sys/fs/cgroup/memory") / name
    folder.mkdir()
    (folder / "memory.limit_in_bytes").write_text(str(limit_mb * 2**20))
    return folder, "v1"


def cgroup_peak_mb(folder: Path, version: str) -> float | None:
    peak = folder / ("memory.peak" if version == "v2" else "memory.max_usage_in_bytes")
    return int(peak.read_text()) / 2**20 if peak.exists() else None


def measure(path: Path, limit_mb: int | None = None, write: bool = False) -> dict:
    """Run one notebook in a fresh process; return its wall time and the kernel's peak memory.

    With ``limit_mb``, the process and its kernel run in a memory cgroup of that size (see the module text).
    With ``write``, the executed notebook is saved over ``path`` (the course commits its notebooks executed).
    """
    cgroup = make_cgroup(limit_mb) if limit_mb else None
    procs = (cgroup[0] / "cgroup.procs") if cgroup else None
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-c", CHILD, str(path), str(path.parent), "write" if write else "-"],
                              capture_output=True, text=True,
                              preexec_fn=(lambda: procs.write_text(str(os.getpid()))) if procs else None)
        if proc.returncode != 0:
            raise RuntimeError(f"{path.name} failed{f' under {limit_mb} MB' if limit_mb else ''}:\n"
                               f"{proc.stderr[-2000:]}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        result["total_seconds"] = time.perf_counter() - start
        if cgroup:
            result["cgroup_peak_mb"] = cgroup_peak_mb(*cgroup)
    finally:
        if cgroup:
            cgroup[0].rmdir()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every notebooks/NN_*.ipynb")
    parser.add_argument("--limit-mb", type=int, help="run each notebook in a memory cgroup of this size")
    parser.add_argument("--write", action="store_true", help="save each executed notebook in place")
    args = parser.parse_args()
    paths = args.notebooks or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    print(f"{'notebook':40s} {'seconds':>8s} {'peak MB':>8s} {'cgroup MB':>9s}  "
          f"budget ({BUDGET_SECONDS} s, {BUDGET_MB} MB)")
    over = 0
    for path in paths:
        r = measure(path, args.limit_mb, args.write)
        ok = r["total_seconds"] <= BUDGET_SECONDS and (r.get("cgroup_peak_mb") or r["kernel_peak_mb"]) <= BUDGET_MB
        over += not ok
        cg = f"{r['cgroup_peak_mb']:9.0f}" if r.get("cgroup_peak_mb") else f"{'-':>9s}"
        print(f"{path.name:40s} {r['total_seconds']:8.1f} {r['kernel_peak_mb']:8.0f} {cg}  "
              f"{'ok' if ok else 'OVER'}", flush=True)
    sys.exit(1 if over else 0)


if __name__ == "__main__":
    main()
