"""tl_helpers.benchmark_results: one loader for the committed results, found from the notebooks and the root."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tl_helpers.benchmark_results import load_results

ROOT = Path(__file__).resolve().parents[1]


def test_load_results_finds_the_same_file_from_the_root_and_from_notebooks(monkeypatch):
    expected = json.loads((ROOT / "benchmarks" / "results.json").read_text())
    assert load_results(start=ROOT) == expected
    assert load_results(start=ROOT / "notebooks") == expected
    monkeypatch.chdir(ROOT / "notebooks")
    assert load_results() == expected
    assert load_results(ROOT / "benchmarks" / "results.json") == expected


def test_load_results_reads_the_other_results_files_by_name(tmp_path):
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "fashion_results.json").write_text('{"fashion": 1}')
    (tmp_path / "notebooks").mkdir()
    assert load_results(name="fashion_results.json", start=tmp_path / "notebooks") == {"fashion": 1}
    with pytest.raises(FileNotFoundError, match="make bench"):
        load_results(start=tmp_path / "notebooks")
