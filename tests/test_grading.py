"""Grading with nbgrader: the chapters are nbgrader source notebooks, checkers raise while nbgrader grades, and
`scripts/grade_class.py` turns a folder of submissions into a gradebook.

The end-to-end test grades one short chapter (four made-up students); `make test-grading` grades every chapter
(GRADING_CHAPTERS=all), which re-executes each chapter four times (once for each made-up learner).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
GRADING_CHAPTERS = os.environ.get("GRADING_CHAPTERS", "02")


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _meta(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem[:2] for p in NOTEBOOKS])
def test_every_exercise_is_a_solution_cell_then_a_locked_test_cell_with_points(path):
    nb = nbformat.read(path, as_version=4)
    cells = nb.cells
    solutions = [i for i, c in enumerate(cells) if _meta(c).get("solution") and c.cell_type == "code"]
    for i, cell in enumerate(cells):  # written answers: nbgrader refuses a solution region in any other cell
        if cell.cell_type == "markdown" and "BEGIN SOLUTION" in cell.source:
            meta = _meta(cell)
            assert meta.get("solution") and meta.get("grade") and meta.get("points", 0) > 0, \
                f"{path.name} cell {i}: a written answer is a manually graded nbgrader cell (solution and grade)"
            assert meta["grade_id"].endswith("-written")
    assert len(solutions) >= 3, f"{path.name}: at least three exercises"
    ids = [_meta(c)["grade_id"] for c in cells if _meta(c)]
    assert len(ids) == len(set(ids)), f"{path.name}: grade ids repeat: {ids}"
    hidden = 0
    for i in solutions:
        solution, test = cells[i], cells[i + 1]
        assert solution.cell_type == "code" and "### BEGIN SOLUTION" in solution.source, f"{path.name} cell {i}"
        assert solution.metadata.get("jupyter", {}).get("source_hidden"), f"{path.name} cell {i}: store it collapsed"
        assert "check_" not in solution.source, f"{path.name} cell {i}: the check belongs in the test cell below"
        meta = _meta(test)
        assert meta.get("grade") and meta.get("locked") and not meta.get("solution"), \
            f"{path.name} cell {i + 1}: the cell after a solution is its locked, graded test"
        assert meta.get("points", 0) > 0 and meta["grade_id"] == _meta(solution)["grade_id"] + "-check"
        assert re.search(r"\bcheck_\w+\(", test.source), f"{path.name} cell {i + 1}: grade with the learner's checker"
        hidden += "### BEGIN HIDDEN TESTS" in test.source
    assert hidden >= 1, f"{path.name}: at least one hidden test, so the visible check is not all there is"


def test_checkers_raise_while_nbgrader_grades_and_print_the_same_hint(monkeypatch, capsys):
    from tl_helpers.checks import CheckFailed, check_parameter_count
    from torch import nn

    layer = nn.Linear(3, 2)
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    assert check_parameter_count(2, layer) is False
    hint = capsys.readouterr().out
    assert hint.startswith("❌ Not yet")
    for mode in ("autograde", "validate"):
        monkeypatch.setenv("NBGRADER_EXECUTION", mode)
        with pytest.raises(CheckFailed) as failed:
            check_parameter_count(2, layer)
        assert capsys.readouterr().out == hint and str(failed.value) == hint.strip()
        assert check_parameter_count(8, layer) is True  # a right answer never raises
        assert capsys.readouterr().out.startswith("✅ Correct")


def test_student_edition_lets_test_cells_fail(tmp_path):
    make_student = _load("make_student")
    nb = nbformat.v4.new_notebook()
    solution = nbformat.v4.new_code_cell("### BEGIN SOLUTION\nx = 8\n### END SOLUTION")
    solution.metadata["nbgrader"] = {"grade": False, "grade_id": "ex-1", "locked": False, "solution": True,
                                     "schema_version": 3}
    test = nbformat.v4.new_code_cell("_ = check(x)\n### BEGIN HIDDEN TESTS\nassert x == 8\n### END HIDDEN TESTS",
                                     execution_count=3, outputs=[nbformat.v4.new_output("stream", text="✅")])
    test.metadata["nbgrader"] = {"grade": True, "grade_id": "ex-1-check", "locked": True, "points": 1,
                                 "solution": False, "schema_version": 3}
    nb.cells = [solution, test]
    make_student.student_notebook(nb)
    assert "raises-exception" in test.metadata["tags"] and test.outputs == [] and test.execution_count is None
    assert "HIDDEN" not in test.source and "check(x)" in test.source


def test_tampered_cells_are_found_by_checksum(tmp_path):
    grade_class = _load("grade_class")
    from nbgrader.utils import compute_checksum

    def notebook(test_source: str | None):
        nb = nbformat.v4.new_notebook()
        if test_source is not None:
            cell = nbformat.v4.new_code_cell(test_source)
            cell.metadata["nbgrader"] = {"grade": True, "grade_id": "ex-1-check", "locked": True, "points": 1,
                                         "solution": False, "schema_version": 3}
            cell.metadata["nbgrader"]["checksum"] = compute_checksum(cell)
            nb.cells = [cell]
        return nb

    release = tmp_path / "release.ipynb"
    nbformat.write(notebook("_ = check(x)"), release)
    for name, source, problem in [("same", "_ = check(x)", ""), ("edited", "print('fine')", "edited"),
                                  ("deleted", None, "deleted")]:
        nbformat.write(notebook(source), tmp_path / f"{name}.ipynb")
        checks = grade_class.tampered_cells(tmp_path / f"{name}.ipynb", release)
        assert [(c.grade_id, c.problem) for c in checks] == [("ex-1-check", problem)]
    (tmp_path / "junk.ipynb").write_text("not a notebook")
    assert grade_class.tampered_cells(tmp_path / "junk.ipynb", release)[0].problem == "deleted"


def _submission(course: Path, chapter: str, out: Path, student: str, answers: dict[str, str],
                edit: str | None = None) -> None:
    """A learner's notebook: the release with some solution cells filled in (and perhaps a test cell edited)."""
    nb = nbformat.read(course / "release" / chapter / f"{chapter}.ipynb", as_version=4)
    for cell in nb.cells:
        grade_id = _meta(cell).get("grade_id")
        if grade_id in answers:
            cell.source = answers[grade_id]
        if grade_id is not None and grade_id == edit:
            cell.source = "print('all good, trust me')"
    folder = out / student / chapter
    folder.mkdir(parents=True)
    nbformat.write(nb, folder / f"{chapter}.ipynb")


CHAPTERS = [p for p in NOTEBOOKS if GRADING_CHAPTERS == "all" or p.stem[:2] in GRADING_CHAPTERS.split(",")]


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem[:2] for p in CHAPTERS])
def test_a_class_is_graded(path, tmp_path):
    """Trains (re-executes the chapter once per student): the solved source scores full marks, the blank release 0,
    a partly right submission the points of its right exercises only, and an edited test cell is flagged (and
    graded as the source wrote it)."""
    grade_class = _load("grade_class")
    course, subs, chapter = tmp_path / "course", tmp_path / "submissions", path.stem
    # nbgrader refuses to release a chapter whose cells break its rules: release every chapter once, here
    grade_class.build_assignments(NOTEBOOKS if path == CHAPTERS[0] else [path], course)
    release = nbformat.read(course / "release" / chapter / f"{chapter}.ipynb", as_version=4)
    assert "### BEGIN SOLUTION" not in json.dumps(release) and "HIDDEN TESTS" not in json.dumps(release)
    source = nbformat.read(path, as_version=4)
    solutions = {_meta(c)["grade_id"]: c.source for c in source.cells
                 if _meta(c).get("solution") and c.cell_type == "code"}
    first, *rest = sorted(solutions)
    _submission(course, chapter, subs, "full", solutions)
    _submission(course, chapter, subs, "blank", {})
    _submission(course, chapter, subs, "partly", {first: solutions[first]})
    _submission(course, chapter, subs, "edited", {}, edit=rest[0] + "-check")
    rows = grade_class.grade(subs, course)
    with open(course / "grades.csv") as f:
        assert list(csv.DictReader(f)) == [{k: str(v) for k, v in r.items()} for r in rows]
    points = {(r["student"], r["exercise"]): (float(r["points"]), float(r["max_points"] or 0)) for r in rows}
    status = {(r["student"], r["exercise"]): r["status"] for r in rows}
    tests = [f"{g}-check" for g in sorted(solutions)]
    assert all(points[("full", t)][0] == points[("full", t)][1] > 0 for t in tests), rows
    assert all(points[("blank", t)][0] == 0 for t in tests), rows
    assert points[("partly", tests[0])][0] == points[("partly", tests[0])][1]
    assert all(points[("partly", t)][0] == 0 for t in tests[1:])
    assert "edited" in status[("edited", rest[0] + "-check")] and points[("edited", rest[0] + "-check")][0] == 0
    assert "edited" not in status[("blank", rest[0] + "-check")]
    for student in ("full", "blank", "partly", "edited"):
        assert (course / "feedback" / student / chapter / f"{chapter}.html").exists()
