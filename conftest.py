"""pytest configuration shared by the unit tests and nbval's notebook runs."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

_notebook_seconds: dict[str, float] = defaultdict(float)


def pytest_collectstart(collector):
    """nbval: never compare stderr (warnings carry machine-specific paths and timings)."""
    if collector.fspath and str(collector.fspath).endswith(".ipynb"):
        collector.skip_compare += ("stderr",)


def pytest_runtest_setup(item):
    item._tl_start = time.perf_counter()


def pytest_runtest_teardown(item):
    start = getattr(item, "_tl_start", None)
    if start is not None and str(item.fspath).endswith(".ipynb"):
        _notebook_seconds[Path(str(item.fspath)).name] += time.perf_counter() - start


def pytest_terminal_summary(terminalreporter):
    """Print each notebook's total execution time (the 2-minute laptop budget is per notebook)."""
    if _notebook_seconds:
        terminalreporter.section("notebook run times")
        for name, seconds in sorted(_notebook_seconds.items()):
            terminalreporter.write_line(f"{seconds:7.1f} s  {name}")
