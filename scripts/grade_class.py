"""Hand the chapters out and grade a class with nbgrader.

    python scripts/grade_class.py assignments                       # every chapter -> build/nbgrader/release/
    python scripts/grade_class.py assignments 02 07                 # only chapters 02 and 07
    python scripts/grade_class.py grade SUBMISSIONS                 # autograde, feedback, gradebook CSV
    python scripts/grade_class.py grade SUBMISSIONS 02 --timeout 300

(``make assignments`` and ``make grade SUBMISSIONS=DIR`` call these.)

The notebooks in ``notebooks/`` are nbgrader *source* notebooks: every exercise is a solution cell (the answer
between ``### BEGIN SOLUTION`` and ``### END SOLUTION``) followed by a locked, autograded test cell with points,
whose ``check_...`` call is the one a learner sees. While nbgrader grades, a checker that finds a wrong answer
raises :class:`tl_helpers.checks.CheckFailed` after printing its hint, so nbgrader scores the cell 0 and the
feedback shows the hint. Lines between ``### BEGIN HIDDEN TESTS`` and ``### END HIDDEN TESTS`` are taken out of the
release and put back to grade.

Course folder (``build/nbgrader/`` unless ``--course``), in nbgrader's layout, with its own ``nbgrader_config.py``
so that ``nbgrader formgrader`` or any other nbgrader command works there too::

    source/<chapter>/<chapter>.ipynb       copied from notebooks/
    release/<chapter>/<chapter>.ipynb      what learners get (no solutions, no hidden tests, no outputs)
    submitted/<student>/<chapter>/...      copied from SUBMISSIONS (nbgrader's layout: SUBMISSIONS/<student>/<chapter>/)
    autograded/, feedback/<student>/<chapter>/<chapter>.html
    gradebook.db, grades.csv               one row per student x chapter x exercise

Grading is robust to what learners hand in: a blank submission scores 0; a test cell that was edited or deleted
is put back from the source before grading (nbgrader's checksums tell) and the row says so; a cell that raises or
runs past ``--timeout`` scores 0 and the rest of the notebook is still graded; a notebook nbgrader cannot grade at
all (its kernel died) is reported and the next one graded.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
COURSE = ROOT / "build" / "nbgrader"
COURSE_ID = "transfer-learning"
TIMEOUT_S = 600  # per cell, as `make test` gives nbval; a chapter's slowest cell takes about a minute
CSV_FIELDS = ("student", "chapter", "exercise", "points", "max_points", "status", "grading_seconds")
CONFIG = '''\
# Written by scripts/grade_class.py; nbgrader commands run in this folder read it.
c = get_config()  # noqa: F821
c.CourseDirectory.root = {root!r}
c.CourseDirectory.course_id = {course_id!r}
# Chapters run far longer than nbgrader's default 30 s a cell.
c.Execute.timeout = {timeout}
# The kernel of the Python that grades (the course's environment), whatever kernel name the notebook names.
c.Execute.kernel_name = "python3"
# A deleted test cell is put back (and graded) instead of silently missing from the grade.
c.OverwriteCells.add_missing_cells = True
'''


def chapters(selected: list[str] | None = None, notebooks: Path = NOTEBOOKS) -> list[Path]:
    """The chapter notebooks, all or those whose name starts with one of ``selected`` (e.g. ``["02", "07"]``).

    >>> [p.name for p in chapters(["02"])]
    ['02_feature_extraction.ipynb']
    """
    every = sorted(notebooks.glob("[0-9][0-9]_*.ipynb"))
    if not selected:
        return every
    chosen = [p for p in every if any(p.stem.startswith(s) for s in selected)]
    unknown = [s for s in selected if not any(p.stem.startswith(s) for p in every)]
    if unknown:
        raise SystemExit(f"No chapter starts with {', '.join(unknown)}; chapters: {', '.join(p.stem for p in every)}")
    return chosen


def write_config(course: Path, timeout: int = TIMEOUT_S) -> None:
    """Create the course folder and its ``nbgrader_config.py``."""
    course.mkdir(parents=True, exist_ok=True)
    (course / "nbgrader_config.py").write_text(
        CONFIG.format(root=str(course), course_id=COURSE_ID, timeout=int(timeout)))


def api(course: Path, timeout: int = TIMEOUT_S):
    """nbgrader's Python API on ``course`` (its config file written first)."""
    from nbgrader.apps import NbGraderAPI
    from nbgrader.coursedir import CourseDirectory
    from traitlets.config import Config
    from traitlets.config.loader import PyFileConfigLoader

    write_config(course, timeout)
    # nbgrader runs the `alembic` program to create its gradebook: the one installed beside this Python.
    bin_dir = str(Path(sys.executable).parent)
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    config = Config()
    config.merge(PyFileConfigLoader("nbgrader_config.py", path=str(course)).load_config())
    # nbgrader logs every preprocessor step; its warnings (a changed cell) are read back from the captured log.
    logging.getLogger("traitlets").setLevel(logging.ERROR)
    return NbGraderAPI(coursedir=CourseDirectory(config=config), config=config)


def _need(result: dict, what: str) -> None:
    if not result.get("success"):
        raise RuntimeError(f"nbgrader failed to {what}:\n{result.get('error', '')}\n{result.get('log', '')}")


def build_assignments(notebooks: list[Path], course: Path = COURSE, timeout: int = TIMEOUT_S) -> list[Path]:
    """``nbgrader generate_assignment`` for each chapter; returns the release notebooks."""
    grader = api(course, timeout)
    released = []
    for notebook in notebooks:
        source = course / "source" / notebook.stem
        if source.exists():
            shutil.rmtree(source)
        source.mkdir(parents=True)
        shutil.copy2(notebook, source / notebook.name)
        _need(grader.generate_assignment(notebook.stem, force=True, create=True), f"release {notebook.stem}")
        released.append(course / "release" / notebook.stem / notebook.name)
        print(f"released {released[-1]}")
    return released


@dataclass
class CellCheck:
    """What happened to one graded cell of a submission before grading."""
    grade_id: str
    problem: str  # "" (untouched), "edited" or "deleted"


def tampered_cells(submitted: Path, release: Path) -> list[CellCheck]:
    """Compare the graded (test) cells of a submission with the release, by nbgrader's checksums.

    nbgrader restores such cells before grading; this says which ones a learner changed or removed.
    """
    from nbgrader.utils import compute_checksum, is_grade, is_locked

    def graded(nb):
        return {c.metadata.nbgrader["grade_id"]: c for c in nb.cells
                if "nbgrader" in c.metadata and is_grade(c) and is_locked(c)}

    given = graded(nbformat.read(release, as_version=4))
    try:
        got = graded(nbformat.read(submitted, as_version=4))
    except Exception:  # not a notebook at all: every cell counts as deleted
        got = {}
    checks = []
    for grade_id, cell in given.items():
        if grade_id not in got:
            checks.append(CellCheck(grade_id, "deleted"))
        elif compute_checksum(got[grade_id]) != cell.metadata.nbgrader.get("checksum", compute_checksum(cell)):
            checks.append(CellCheck(grade_id, "edited"))
        else:
            checks.append(CellCheck(grade_id, ""))
    return checks


def _errors(autograded: Path) -> dict[str, str]:
    """{grade_id: 'ExceptionName: first line'} for the graded cells of an autograded notebook that raised."""
    errors = {}
    for cell in nbformat.read(autograded, as_version=4).cells:
        grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        for out in cell.get("outputs", []) if grade_id else []:
            if out.get("output_type") == "error":
                value = str(out.get("evalue", "")).strip().split("\n")[0]
                errors[grade_id] = f"{out.get('ename')}: {value}"[:160].rstrip(": ")
    return errors


def _reason(test_id: str, errors: dict[str, str]) -> str:
    """Why a test cell scored less than its points: the learner's answer cell first, then the test itself."""
    answer = errors.get(test_id.removesuffix("-check"), "")
    if answer.startswith("NotImplementedError"):
        return "not answered (the answer cell still raises NotImplementedError)"
    if answer:
        return f"the answer cell raised {answer}"
    return errors.get(test_id, "0 points")


def collect(submissions: Path, course: Path) -> list[tuple[str, str]]:
    """Copy ``submissions`` (``<student>/<chapter>/<chapter>.ipynb``) into the course; return (student, chapter) pairs."""
    if not submissions.is_dir():
        raise SystemExit(f"{submissions} is not a folder. Expected SUBMISSIONS/<student>/<chapter>/<chapter>.ipynb, "
                         "nbgrader's layout (what `nbgrader collect` or JupyterHub's exchange gives you).")
    target = course / "submitted"
    pairs = []
    for student in sorted(p for p in submissions.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for chapter in sorted(p for p in student.iterdir() if p.is_dir() and not p.name.startswith(".")):
            destination = target / student.name / chapter.name
            if destination.resolve() != chapter.resolve():
                if destination.exists():
                    shutil.rmtree(destination)
                shutil.copytree(chapter, destination)
            pairs.append((student.name, chapter.name))
    if not pairs:
        raise SystemExit(f"No submissions in {submissions}: expected {submissions}/<student>/<chapter>/<chapter>.ipynb")
    return pairs


def grade(submissions: Path, course: Path = COURSE, selected: list[str] | None = None,
          timeout: int = TIMEOUT_S, out_csv: Path | None = None) -> list[dict]:
    """Autograde every submission of the selected chapters, write feedback HTML and the gradebook CSV.

    Returns the CSV's rows (one per student x chapter x exercise).
    """
    from nbgrader.api import Gradebook, MissingEntry

    known = {p.stem: p for p in chapters()}
    wanted = {p.stem for p in chapters(selected)} if selected else set(known)
    found = collect(submissions, course)
    pairs = [(s, c) for s, c in found if c in wanted]
    unknown = sorted({c for _, c in found if c not in known})
    for chapter in unknown:
        print(f"skipped {chapter}: not a chapter of this course ({', '.join(sorted(known))})")
    grader = api(course, timeout)
    released = {c: course / "release" / c / f"{c}.ipynb" for _, c in pairs}
    missing = sorted(c for c, path in released.items() if not path.exists())
    if missing:
        build_assignments([known[c] for c in missing], course, timeout)
        grader = api(course, timeout)
    rows: list[dict] = []
    db = f"sqlite:///{course / 'gradebook.db'}"
    for student, chapter in pairs:
        submitted = course / "submitted" / student / chapter / f"{chapter}.ipynb"
        checks = {c.grade_id: c.problem for c in tampered_cells(submitted, released[chapter])}
        start = time.perf_counter()
        result = grader.autograde(chapter, student, force=True, create=True)
        seconds = round(time.perf_counter() - start, 1)
        if not result.get("success"):
            reason = (result.get("error") or "").strip().split("\n")[-1] or "nbgrader could not grade it"
            print(f"{student} / {chapter}: NOT GRADED ({reason}); see the log above, the other submissions go on")
            for grade_id in checks:
                rows.append(dict(student=student, chapter=chapter, exercise=grade_id, points=0, max_points="",
                                 status=f"not graded: {reason}"[:200], grading_seconds=seconds))
            continue
        feedback = grader.generate_feedback(chapter, student, force=True)
        if not feedback.get("success"):
            print(f"{student} / {chapter}: no feedback file ({feedback.get('error', '').strip()[-200:]})")
        errors = _errors(course / "autograded" / student / chapter / f"{chapter}.ipynb")
        with Gradebook(db, course_id=COURSE_ID) as gb:
            try:
                notebook = gb.find_submission_notebook(chapter, chapter, student)
            except MissingEntry:
                print(f"{student} / {chapter}: graded, but the gradebook has no entry for it")
                continue
            total = 0.0
            for g in sorted(notebook.grades, key=lambda g: g.name):
                score = float(g.score or 0.0)
                total += score
                if g.name.endswith("-written") or (g.auto_score is None and g.manual_score is None):
                    status = ["a written answer: grade it by hand (nbgrader formgrader in the course folder)"]
                else:
                    status = [("ok" if score == g.max_score else _reason(g.name, errors))]
                if checks.get(g.name):
                    status.append(f"test cell {checks[g.name]} by the learner; nbgrader restored it before grading")
                rows.append(dict(student=student, chapter=chapter, exercise=g.name, points=score,
                                 max_points=float(g.max_score), status="; ".join(status), grading_seconds=seconds))
            print(f"{student} / {chapter}: {total:g} / {notebook.max_score:g} points ({seconds:.0f} s to grade)")
    out_csv = out_csv or course / "grades.csv"
    with open(out_csv, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    print(f"gradebook: {out_csv}; feedback: {course / 'feedback'}/<student>/<chapter>/<chapter>.html")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--course", type=Path, default=COURSE, help="the nbgrader course folder (build/nbgrader)")
    parser.add_argument("--timeout", type=int, default=TIMEOUT_S, help="seconds a cell may run while grading")
    sub = parser.add_subparsers(dest="command", required=True)
    release = sub.add_parser("assignments", help="build the release notebooks with nbgrader generate_assignment")
    release.add_argument("chapters", nargs="*", help="chapter numbers or names (default: every chapter)")
    marks = sub.add_parser("grade", help="autograde a folder of submissions, write feedback and grades.csv")
    marks.add_argument("submissions", type=Path, help="SUBMISSIONS/<student>/<chapter>/<chapter>.ipynb")
    marks.add_argument("chapters", nargs="*", help="grade only these chapters (default: all found)")
    marks.add_argument("--csv", type=Path, default=None, help="where to write the gradebook (COURSE/grades.csv)")
    args = parser.parse_args(argv)
    course = args.course.resolve()
    if args.command == "assignments":
        build_assignments(chapters(args.chapters), course, args.timeout)
    else:
        grade(args.submissions.resolve(), course, args.chapters, args.timeout, args.csv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
