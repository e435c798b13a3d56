"""Re-execute the chapters under other CPU kernels and thread counts, and compare with their stored outputs.

    python scripts/test_portable.py                                   # every chapter, both runs (make test-portable)
    python scripts/test_portable.py --runs default:1 notebooks/05_two_phase_fine_tuning.ipynb notebooks/06_evaluation.ipynb

A stored output that nbval compares must be the same on any CPU, thread count and BLAS. Another CPU rounds
differently because PyTorch picks other kernels for it (AVX-512 instead of AVX2, say) and splits its reductions
over another number of threads. ``ATEN_CPU_CAPABILITY`` (``default``, ``avx2``, ``avx512``) chooses PyTorch's
own kernels on this machine, ``ONEDNN_MAX_CPU_ISA`` and ``MKL_ENABLE_INSTRUCTIONS`` those of the convolution
and BLAS libraries inside it, and ``OMP_NUM_THREADS`` the threads, so one machine can play several. Each run is
``CAPABILITY:THREADS``; ``default`` plays a processor without AVX2 in all three libraries.

Every run executes copies of the notebooks in ``build/portable/<run>/`` (so chapter 05's checkpoint, written
there, is the one chapter 06 of the same run reads) with a fresh, empty feature cache (``TL_CACHE_DIR``):
nothing computed under one set of kernels is reused by another, and the stored notebooks are not touched.
The exit status is non-zero when a run fails; each run's failures are listed at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RUNS = ("default:1", "avx2:2")
CHAPTERS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
# What each capability means for PyTorch's kernels, oneDNN's (convolutions) and MKL's (matrix products). A
# library never uses instructions the processor lacks, so asking for more than this machine has is harmless.
LIBRARY_ISA = {
    "default": {"ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "avx512": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE", "MKL_ENABLE_INSTRUCTIONS": "AVX512"},
}


def parse_run(text: str) -> tuple[str, int]:
    """``"default:1"`` -> ``("default", 1)``: the CPU kernels and the thread count of one run.

    >>> parse_run("avx2:2")
    ('avx2', 2)
    """
    capability, _, threads = text.partition(":")
    if capability not in {"default", "avx2", "avx512"} or not threads.isdigit() or int(threads) < 1:
        raise SystemExit(f"error: run {text!r} is not CAPABILITY:THREADS with CAPABILITY default, avx2 or "
                         f"avx512 (e.g. default:1)")
    return capability, int(threads)


def nbval_command(notebooks: list[Path], extra: list[str]) -> list[str]:
    """The pytest command that executes ``notebooks`` and compares them (as ``make test`` does)."""
    return [sys.executable, "-m", "pytest", *map(str, notebooks), "--nbval", "--nbval-current-env",
            "--nbval-sanitize-with", str(ROOT / "tests" / "sanitize.cfg"), "--nbval-cell-timeout", "900",
            "-p", "no:cacheprovider", "-q", *extra]


def run_once(capability: str, threads: int, notebooks: list[Path], extra: list[str]) -> int:
    """Execute copies of ``notebooks`` under one CPU capability and thread count; pytest's exit status."""
    folder = ROOT / "build" / "portable" / f"{capability}-{threads}thread"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for path in {*CHAPTERS, *notebooks}:        # every chapter beside the ones run: chapter 00 lists them
        shutil.copy2(path, folder / path.name)
    with tempfile.TemporaryDirectory(prefix="tl-portable-cache-") as cache:
        env = dict(os.environ, ATEN_CPU_CAPABILITY=capability, OMP_NUM_THREADS=str(threads),
                   TL_CACHE_DIR=cache, OMP_WAIT_POLICY="PASSIVE", **LIBRARY_ISA[capability])
        print(f"== ATEN_CPU_CAPABILITY={capability} OMP_NUM_THREADS={threads}: {len(notebooks)} notebook(s), "
              f"empty feature cache, no checkpoints", flush=True)
        start = time.perf_counter()
        copies = [folder / path.name for path in notebooks]
        status = subprocess.call(nbval_command(copies, extra), cwd=ROOT, env=env)
        print(f"== {capability}:{threads} finished in {time.perf_counter() - start:.0f} s, exit status {status}",
              flush=True)
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every notebooks/NN_*.ipynb")
    parser.add_argument("--runs", nargs="+", default=list(DEFAULT_RUNS), metavar="CAPABILITY:THREADS",
                        help=f"default: {' '.join(DEFAULT_RUNS)}")
    parser.add_argument("--pytest-args", default="", help="extra pytest arguments, e.g. \"-x\"")
    args = parser.parse_args(argv)
    # `--runs default:1 notebooks/x.ipynb`: argparse gives the notebook to --runs (nargs="+"); take it back
    args.notebooks += [Path(text) for text in args.runs if text.endswith(".ipynb")]
    runs = [parse_run(text) for text in args.runs if not text.endswith(".ipynb")]
    notebooks = [p.resolve() for p in args.notebooks] or CHAPTERS
    missing = [str(p) for p in notebooks if not p.is_file()]
    if missing:
        raise SystemExit(f"error: no such notebook: {', '.join(missing)}")
    results = {f"{c}:{t}": run_once(c, t, notebooks, args.pytest_args.split()) for c, t in runs}
    print("portability:", ", ".join(f"{run} {'passed' if status == 0 else 'FAILED'}"
                                    for run, status in results.items()))
    return max(results.values())


if __name__ == "__main__":
    sys.exit(main())
