"""Write the student edition of the course: the notebooks with the exercise solutions taken out.

    python scripts/make_student.py                     # notebooks/*.ipynb -> build/student/
    python scripts/make_student.py --out /tmp/student notebooks/03_freezing.ipynb

The notebooks in ``notebooks/`` are the instructor edition. Solutions are marked as nbgrader marks
them, so instructors who use nbgrader can use the notebooks as they are:

- in a code cell, the lines from ``### BEGIN SOLUTION`` to ``### END SOLUTION`` become
  ``# YOUR CODE HERE`` / ``raise NotImplementedError()`` (indented like the markers);
- in a Markdown cell, the lines from ``<!-- BEGIN SOLUTION -->`` to ``<!-- END SOLUTION -->``
  (any line that reads BEGIN/END SOLUTION, as in nbgrader) become ``YOUR ANSWER HERE``;
- a cell whose nbgrader metadata says ``solution: true`` but has no markers is replaced whole;
- lines from ``### BEGIN HIDDEN TESTS`` to ``### END HIDDEN TESTS`` are dropped.

A code cell that had a solution loses its outputs and is tagged ``raises-exception``, so nbval
accepts the ``NotImplementedError`` it now raises. So does each exercise's test cell (nbgrader's
``grade: true``, the ``check_...`` call after the solution cell): it has nothing to check yet, and may
raise a ``NameError``. This edition keeps the outputs of every other cell (figures, tables), which
nbgrader's release (``make assignments``) clears: learners read the chapter with its results. Everything else is copied unchanged, outputs included, together with the other
files next to the notebooks (images, data), except caches: ``checkpoints/`` holds the instructor's own
trained models, and a student's chapter 05 would silently reload them instead of training.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
CODE_STUB = ("# YOUR CODE HERE", "raise NotImplementedError()")
TEXT_STUB = "YOUR ANSWER HERE"
RAISES_TAG = "raises-exception"
SKIP_COPY = {".ipynb_checkpoints", "__pycache__", "checkpoints"}  # caches, not course material
# A marker is a line that reads BEGIN/END SOLUTION, as a comment (#, //) or an HTML comment.
_MARKER = r"^\s*(?:#+|//|<!--)?\s*{word}\s*(?:-->)?\s*$"
BEGIN = re.compile(_MARKER.format(word="BEGIN SOLUTION"))
END = re.compile(_MARKER.format(word="END SOLUTION"))
BEGIN_HIDDEN = re.compile(_MARKER.format(word="BEGIN HIDDEN TESTS"))
END_HIDDEN = re.compile(_MARKER.format(word="END HIDDEN TESTS"))


class SolutionMarkerError(ValueError):
    """A BEGIN/END marker without its partner, or nested markers."""


def replace_regions(source: str, begin: re.Pattern, end: re.Pattern, stub: tuple[str, ...],
                    where: str = "cell") -> tuple[str, int]:
    """``source`` with every ``begin``...``end`` region replaced by ``stub`` (indented like ``begin``).

    Returns (new source, number of regions). Unbalanced or nested markers raise SolutionMarkerError.

    >>> replace_regions("x = 1\\n    ### BEGIN SOLUTION\\n    y = 2\\n    ### END SOLUTION", BEGIN, END, CODE_STUB)
    ('x = 1\\n    # YOUR CODE HERE\\n    raise NotImplementedError()', 1)
    """
    out: list[str] = []
    inside, count = False, 0
    for number, line in enumerate(source.split("\n"), start=1):
        if begin.match(line):
            if inside:
                raise SolutionMarkerError(f"{where}, line {number}: BEGIN inside another BEGIN/END region.")
            inside, count = True, count + 1
            indent = line[: len(line) - len(line.lstrip())]
            out += [indent + s for s in stub]
        elif end.match(line):
            if not inside:
                raise SolutionMarkerError(f"{where}, line {number}: END without a BEGIN above it.")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise SolutionMarkerError(f"{where}: BEGIN without an END.")
    return "\n".join(out), count


def _is_nbgrader_solution(cell) -> bool:
    return bool(cell.get("metadata", {}).get("nbgrader", {}).get("solution", False))


def _is_nbgrader_test(cell) -> bool:
    """An autograded test cell: graded, not a solution (it checks the answer of the cell above)."""
    meta = cell.get("metadata", {}).get("nbgrader", {})
    return bool(meta.get("grade", False)) and not meta.get("solution", False)


def student_cell(cell, where: str = "cell") -> bool:
    """Turn one instructor cell into its student version, in place. True if a solution was removed."""
    if cell.cell_type not in ("code", "markdown"):
        return False
    source = cell.source if isinstance(cell.source, str) else "".join(cell.source)
    source, _ = replace_regions(source, BEGIN_HIDDEN, END_HIDDEN, (), where)
    if cell.cell_type == "code":
        source, count = replace_regions(source, BEGIN, END, CODE_STUB, where)
        if not count and _is_nbgrader_solution(cell):
            source, count = "\n".join(CODE_STUB), 1
    else:
        source, count = replace_regions(source, BEGIN, END, (TEXT_STUB,), where)
        if not count and _is_nbgrader_solution(cell):
            source, count = TEXT_STUB, 1
    cell.source = source
    if cell.cell_type == "code" and _is_nbgrader_test(cell):
        cell.outputs = []
        cell.execution_count = None
        cell.metadata["tags"] = sorted(set(cell.metadata.get("tags", [])) | {RAISES_TAG})
        return False
    if count and cell.cell_type == "code":
        cell.outputs = []
        cell.execution_count = None
        tags = list(cell.metadata.get("tags", []))
        if RAISES_TAG not in tags:
            tags.append(RAISES_TAG)
        cell.metadata["tags"] = tags
    return bool(count)


def student_notebook(nb: nbformat.NotebookNode, name: str = "notebook") -> int:
    """Remove every solution of ``nb`` in place; return how many cells had one."""
    return sum(student_cell(cell, f"{name}, cell {i}") for i, cell in enumerate(nb.cells))


def build_student(notebooks: list[Path], out: Path, copy_files: bool = True) -> dict[str, int]:
    """Write the student edition of ``notebooks`` into ``out``; return {notebook name: solutions removed}.

    Old notebooks in ``out`` are deleted first. With ``copy_files`` the other files and folders next to
    the notebooks (images...) are copied too, caches (``checkpoints/``) not.
    """
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.ipynb"):
        old.unlink()
    removed: dict[str, int] = {}
    for path in sorted(notebooks):
        nb = nbformat.read(path, as_version=4)
        removed[path.name] = student_notebook(nb, path.name)
        nbformat.write(nb, out / path.name)
    if copy_files:
        for folder in sorted({p.parent for p in notebooks}):
            for item in folder.iterdir():
                if item.suffix == ".ipynb" or item.name in SKIP_COPY or item.name.startswith("."):
                    continue
                target = out / item.name
                if item.is_dir():
                    shutil.copytree(item, target, dirs_exist_ok=True,
                                    ignore=shutil.ignore_patterns(*SKIP_COPY))
                else:
                    shutil.copy2(item, target)
    return removed


def _shown(path: Path) -> str:
    """A path relative to the repository when it is inside it (never print machine paths)."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return path.name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path,
                        help="instructor notebooks (default: notebooks/[0-9][0-9]_*.ipynb)")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "student", help="output folder")
    parser.add_argument("--no-copy", action="store_true", help="copy only the notebooks, not the files beside them")
    args = parser.parse_args(argv)
    notebooks = args.notebooks or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        print("No notebooks found: run this from the course repository.", file=sys.stderr)
        return 1
    try:
        removed = build_student(notebooks, args.out, copy_files=not args.no_copy)
    except SolutionMarkerError as exc:
        print(f"Cannot build the student edition: {exc} Fix the markers and run again.", file=sys.stderr)
        return 1
    for name, count in removed.items():
        print(f"{name}: {count} solution{'s' if count != 1 else ''} removed")
    print(f"Student edition written to {_shown(args.out)}/ ({len(removed)} notebooks).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
