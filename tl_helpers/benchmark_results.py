"""The committed benchmark results (``benchmarks/results.json``) and the words they allow.

One rule decides the words everywhere (README, chapter 05, ``benchmarks/results.md``): the course's recipe
is "ahead" of another only when the 95 % interval of the paired difference over the splits lies above zero,
"behind" only when it lies below, and "tie" otherwise (``tl_helpers.evaluate.verdict``). The sentences are
generated from the JSON, so text and numbers cannot drift apart.

>>> results = {"course_recipe": "two_phase", "clipart8": {
...     "two_phase": {"mean": 78.0, "splits": [80, 78, 76, 79, 77]},
...     "linear_probe": {"mean": 72.0, "splits": [75, 71, 70, 73, 71]}}}
>>> rows = paired_rows(results)
>>> rows[0]["name"], rows[0]["verdict"], round(rows[0]["mean"], 1)
('linear_probe', 'ahead', 6.0)
>>> comparison_sentence(rows[0], "two_phase")
'two_phase is ahead of linear_probe: +6.0 points, 95 % interval +5.1 to +6.9 over 5 paired splits'
"""

from __future__ import annotations

import json
from pathlib import Path

from tl_helpers.evaluate import paired_difference

DATASET = "clipart8"
RESULTS = Path("benchmarks") / "results.json"


def _find_results(name: str, start: Path | None = None) -> Path:
    """``benchmarks/<name>`` in the course folder, looked for from ``start`` (default: the working folder,
    e.g. ``notebooks/``) upwards, so it is found from the notebooks and from the repository root."""
    here = (start or Path.cwd()).resolve()
    relative = RESULTS.parent / name
    for folder in (here, *here.parents):
        if (folder / relative).is_file():
            return folder / relative
    raise FileNotFoundError(f"{relative} not found above {here.name or here}: run the notebooks from the course "
                            "folder (the one with benchmarks/ in it), or run `make bench` to produce it.")


def load_results(path: str | Path | None = None, name: str = RESULTS.name, start: Path | None = None) -> dict:
    """The committed benchmark results as a dict: the one way chapters read them (see ``benchmarks/README.md``).

    ``path`` names the file; by default ``benchmarks/<name>`` (``results.json``, or e.g.
    ``fashion_results.json``) is looked for from ``start`` (default: the working folder) upwards, so the
    same call works in ``notebooks/`` and at the repository root.

    >>> "clipart8" in load_results()
    True
    """
    return json.loads(Path(path or _find_results(name, start)).read_text())


def stale_note(results: dict) -> str | None:
    """A warning when the results were computed on other splits than the shipped dataset's, else None."""
    from tl_helpers.data import dataset_fingerprint

    if results.get("dataset") == dataset_fingerprint():
        return None
    return ("These figures come from splits made before near-duplicate groups existed, where some test images "
            "had a twin (a colour or black-and-white version, a numbered variant) in the training part, which "
            "flatters every recipe. They await a rerun of `make bench` on the current, leak-free splits.")


def paired_rows(results: dict, course: str | None = None) -> list[dict]:
    """The course's recipe against every other complete recipe, paired by split: name, mean difference
    (points), 95 % t-interval over the splits and verdict, best-placed first."""
    course = course or results.get("course_recipe", "two_phase")
    table = results[DATASET]
    if course not in table:  # a run still in progress: nothing to pair with yet
        return []
    mine = table[course]["splits"]
    rows = []
    for name, entry in table.items():
        if name == course or len(entry["splits"]) != len(mine):
            continue
        rows.append({"name": name, **paired_difference(mine, entry["splits"])})
    return sorted(rows, key=lambda r: r["mean"])


def comparison_sentence(row: dict, course: str = "two_phase") -> str:
    """One generated sentence for one paired comparison, with its verdict word."""
    words = {"ahead": "is ahead of", "behind": "is behind", "tie": "ties with"}[row["verdict"]]
    return (f"{course} {words} {row['name']}: {row['mean']:+.1f} points, 95 % interval "
            f"{row['low']:+.1f} to {row['high']:+.1f} over {row['n']} paired splits")


def comparison_table(results: dict, course: str | None = None) -> str:
    """The paired comparisons as a Markdown table (for the README, results.md and chapter 05)."""
    course = course or results.get("course_recipe", "two_phase")
    lines = [f"| {course} minus ... | mean difference (points) | 95 % interval | verdict |",
             "|---|---:|---|---|"]
    for r in paired_rows(results, course):
        lines.append(f"| {r['name']} | {r['mean']:+.1f} | {r['low']:+.1f} to {r['high']:+.1f} | {r['verdict']} |")
    return "\n".join(lines)


LABELS = {
    "two_phase": "this course: two-phase fine-tuning (chapter 05)",
    "one_phase": "one-phase fine-tuning (same settings, no phase 1)",
    "keras_guide": "Keras transfer-learning guide",
    "linear_probe": "linear probe on frozen features (chapter 02)",
    "fastai_fine_tune": "fastai `fine_tune`",
    "pytorch_tutorial": "PyTorch transfer-learning tutorial",
    "scratch_resnet18": "ResNet-18 from random weights",
    "scratch": "the same network (Lite0) from random weights",
    "best": "best found in 2 min a split",
}


def recipe_label(name: str, results: dict) -> str:
    """How tables name a recipe: ``LABELS``, and for ``best`` what the chosen candidate is (from the JSON).

    >>> recipe_label("best", {"best_entry": {"description": "a probe"}})
    'best found in 2 min a split: a probe'
    """
    label = LABELS.get(name, name)
    if name == "best" and results.get("best_entry"):
        label += f": {results['best_entry']['description']}"
    return label
README_BEGIN = "<!-- bench:begin (generated from benchmarks/results.json by `python -m benchmarks.run --readme`) -->"
README_END = "<!-- bench:end -->"


def readme_block(results: dict) -> str:
    """The README's results section: every recipe's mean and spread, then the paired verdicts."""
    course = results.get("course_recipe", "two_phase")
    table = results[DATASET]
    n = len(results["splits"])
    lines = [README_BEGIN, ""]
    note = stale_note(results)
    if note:
        lines += [f"**Note.** {note}", ""]
    lines += ["| recipe | test accuracy, mean ± std over the splits |", "|---|---|"]
    for name, entry in sorted(table.items(), key=lambda kv: -kv[1]["mean"]):
        lines.append(f"| {recipe_label(name, results)} | {entry['mean']:.1f} ± {entry['std']:.1f} % |")
    rows = paired_rows(results, course)
    words = {v: [r["name"] for r in rows if r["verdict"] == v] for v in ("ahead", "tie", "behind")}
    summary = "; ".join(f"{v} of {', '.join(names)}" if v != "tie" else f"ties with {', '.join(names)}"
                        for v, names in words.items() if names)
    lines += ["", f"Paired by split ({n} splits), the course's recipe is {summary}. A recipe is called ahead or "
              "behind only when the 95 % t-interval of the paired difference excludes zero:", "",
              comparison_table(results, course), "", README_END]
    return "\n".join(lines)


def update_readme(readme: str, results: dict) -> str:
    """``readme`` with the text between the bench markers replaced by ``readme_block(results)``."""
    start, end = readme.index(README_BEGIN), readme.index(README_END) + len(README_END)
    return readme[:start] + readme_block(results) + readme[end:]
