"""The student edition (scripts/make_student.py): solutions out, stubs in, the rest untouched.

The full nbval run of the student edition re-executes every chapter, so it is `make test-student`,
not part of `make test`; here a small fixture notebook goes through nbval instead.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _load_script():
    spec = importlib.util.spec_from_file_location("make_student", ROOT / "scripts" / "make_student.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_student = _load_script()


def _code(source, outputs=(), count=None, tags=(), nbgrader=None):
    cell = new_code_cell(source, outputs=list(outputs), execution_count=count)
    if tags:
        cell.metadata["tags"] = list(tags)
    if nbgrader:
        cell.metadata["nbgrader"] = nbgrader
    return cell


def fixture_notebook() -> nbformat.NotebookNode:
    """A small executed 'instructor' notebook with every kind of solution the script handles."""
    stream = lambda text: new_output("stream", name="stdout", text=text)  # noqa: E731
    cells = [
        new_markdown_cell("# 99 · Fixture\nA chapter with exercises."),
        _code("x = 20\nprint(x + 1)", [stream("21\n")], 1),
        new_markdown_cell("## Exercises\n**1.** Compute the answer."),
        _code("### BEGIN SOLUTION\nanswer = 2 * x + 2  # secret-one\n### END SOLUTION\nprint(answer)",
              [stream("42\n")], 2, nbgrader={"solution": True, "grade": False, "grade_id": "ex1",
                                             "locked": False, "schema_version": 3}),
        new_markdown_cell("**2.** Why?\n\n<!-- BEGIN SOLUTION -->\nBecause secret-two.\n<!-- END SOLUTION -->"),
        _code("def double(v):\n    ### BEGIN SOLUTION\n    return 2 * v  # secret-three\n    ### END SOLUTION\n\n"
              "print(double(3))\n### BEGIN HIDDEN TESTS\nassert double(4) == 8  # secret-four\n### END HIDDEN TESTS",
              [stream("6\n")], 3),
        _code("print('secret-five')", [stream("secret-five\n")], 4,
              nbgrader={"solution": True, "grade": False, "grade_id": "ex3", "locked": False, "schema_version": 3}),
        new_markdown_cell("BEGIN SOLUTION is what an instructor writes (this prose line is not a marker)."),
        _code("print('after the exercises')", [stream("after the exercises\n")], 5),
    ]
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def build(tmp_path, nb) -> nbformat.NotebookNode:
    src = tmp_path / "src"
    src.mkdir()
    nbformat.write(nb, src / "99_fixture.ipynb")
    (src / "checkpoints").mkdir()
    (src / "checkpoints" / "model.pt").write_bytes(b"weights")
    (src / "figure.png").write_bytes(b"png")
    out = tmp_path / "student"
    assert make_student.main([str(src / "99_fixture.ipynb"), "--out", str(out)]) == 0
    return nbformat.read(out / "99_fixture.ipynb", as_version=4)


def test_solutions_are_replaced_by_stubs(tmp_path):
    student = build(tmp_path, fixture_notebook())
    text = json.dumps(student)
    for secret in ("secret-one", "secret-two", "secret-three", "secret-four", "secret-five", "2 * v"):
        assert secret not in text, secret
    cells = student.cells
    assert cells[3].source == "# YOUR CODE HERE\nraise NotImplementedError()\nprint(answer)"
    assert cells[4].source == "**2.** Why?\n\nYOUR ANSWER HERE"
    assert "def double(v):\n    # YOUR CODE HERE\n    raise NotImplementedError()\n" in cells[5].source
    assert "HIDDEN TESTS" not in cells[5].source
    assert cells[6].source == "# YOUR CODE HERE\nraise NotImplementedError()"  # nbgrader solution cell, no markers
    assert cells[7].source.startswith("BEGIN SOLUTION is what")  # prose is not a marker


def test_solution_cells_are_cleared_and_tagged_the_rest_untouched(tmp_path):
    original = fixture_notebook()
    student = build(tmp_path, original)
    for i in (3, 5, 6):
        cell = student.cells[i]
        assert cell.outputs == [] and cell.execution_count is None
        assert "raises-exception" in cell.metadata["tags"]
    for i in (0, 1, 2, 7, 8):
        assert student.cells[i] == original.cells[i]
    assert student.cells[3].metadata["nbgrader"]["grade_id"] == "ex1"  # nbgrader metadata kept
    assert (tmp_path / "student" / "figure.png").read_bytes() == b"png"  # files beside the notebooks come along
    assert not (tmp_path / "student" / "checkpoints").exists()  # the instructor's trained models do not


@pytest.mark.parametrize("source", ["### BEGIN SOLUTION\nx = 1", "x = 1\n### END SOLUTION",
                                    "### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION"])
def test_broken_markers_are_an_error_that_names_the_cell(tmp_path, capsys, source):
    nb = new_notebook(cells=[new_markdown_cell("# t"), _code(source)])
    nbformat.write(nb, tmp_path / "00_t.ipynb")
    assert make_student.main([str(tmp_path / "00_t.ipynb"), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "00_t.ipynb, cell 1" in err and "Fix the markers" in err


def _nbval(*paths: Path) -> subprocess.CompletedProcess:
    """nbval on ``paths`` (one folder) in one pytest process, each cell's result on its own line (``-rA``)."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval", "--nbval-current-env", "-p", "no:cacheprovider", "-q", "-rA",
         "--rootdir", str(paths[0].parent), *map(str, paths)],
        capture_output=True, text=True, cwd=paths[0].parent, timeout=300)


def test_student_fixture_passes_nbval_thanks_to_the_tag(tmp_path):
    """The exercise cells raise NotImplementedError, which nbval accepts because of raises-exception."""
    student = build(tmp_path, fixture_notebook())
    for cell in student.cells:  # control: without the tag the same notebook fails
        cell.metadata.pop("tags", None)
    nbformat.write(student, tmp_path / "student" / "untagged.ipynb")
    result = _nbval(tmp_path / "student" / "99_fixture.ipynb", tmp_path / "student" / "untagged.ipynb")
    lines = result.stdout.splitlines()
    tagged = [l for l in lines if "99_fixture.ipynb::" in l and l.split()[0] in ("PASSED", "FAILED")]
    assert [l.split()[0] for l in tagged] == ["PASSED"] * 5, result.stdout[-3000:]  # the five code cells
    assert any(l.startswith("FAILED") and "untagged.ipynb::" in l for l in lines) and "NotImplementedError" in result.stdout


@pytest.mark.skipif(not NOTEBOOKS, reason="no chapters yet")
def test_real_notebooks_lose_every_solution_and_nothing_else(tmp_path):
    out = tmp_path / "student"
    removed = make_student.build_student(NOTEBOOKS, out, copy_files=False)
    assert sorted(removed) == [p.name for p in NOTEBOOKS]
    for path in NOTEBOOKS:
        instructor = nbformat.read(path, as_version=4)
        student = nbformat.read(out / path.name, as_version=4)
        assert len(student.cells) == len(instructor.cells)
        everything = "\n".join(cell.source for cell in student.cells)
        assert not any(make_student.BEGIN.match(l) or make_student.END.match(l) for l in everything.splitlines())
        for before, after in zip(instructor.cells, student.cells):
            regions, outside = _solution_regions(before.source)
            meta = before.get("metadata", {}).get("nbgrader", {})
            if meta.get("grade") and not meta.get("solution"):  # a test cell: nothing to check yet, may raise
                assert after.outputs == [] and "raises-exception" in after.metadata["tags"]
                assert not any(r.strip() in after.source for r in regions), f"{path.name}: a hidden test survived"
                continue
            if not regions and not meta.get("solution"):
                assert after == before, f"{path.name}: a cell without a solution changed"
                continue
            kept = {line.strip() for line in after.source.splitlines()}
            for region in regions:
                assert region.strip() not in everything, f"{path.name}: a solution survived"
                for line in region.splitlines():
                    line = line.strip()
                    assert len(line) < 4 or line in outside or line not in kept, (path.name, line)
            if before.cell_type == "code":
                assert "raise NotImplementedError()" in after.source and after.outputs == []
                assert "raises-exception" in after.metadata["tags"]


def _solution_regions(source: str) -> tuple[list[str], set[str]]:
    """(texts between BEGIN and END markers, stripped lines outside them) of one cell."""
    regions, outside, current = [], set(), None
    for line in source.splitlines():
        if make_student.BEGIN.match(line) or make_student.BEGIN_HIDDEN.match(line):
            current = []
        elif make_student.END.match(line) or make_student.END_HIDDEN.match(line):
            regions.append("\n".join(current or []))
            current = None
        elif current is not None:
            current.append(line)
        else:
            outside.add(line.strip())
    return [r for r in regions if r.strip()], outside
