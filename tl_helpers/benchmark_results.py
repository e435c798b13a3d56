"""The committed benchmark results (``benchmarks/results.json``) and the words they allow.

One rule decides the words everywhere (README, chapter 05, ``benchmarks/results.md``): the course's recipe
is "ahead" of another only when the 95 % interval of the paired difference over the folds lies above zero,
"behind" only when it lies below, and "tie" otherwise (``tl_helpers.evaluate.verdict``). The folds of a
cross-validation share most of their training images, so the interval is the corrected resampled t
(``evaluate.paired_difference`` with the design's ``test_train_ratio``). The sentences are generated from
the JSON, so text and numbers cannot drift apart.

>>> results = {"course_recipe": "two_phase", "clipart8": {
...     "two_phase": {"mean": 78.0, "splits": [80, 78, 76, 79, 77]},
...     "linear_probe": {"mean": 72.0, "splits": [75, 71, 70, 73, 71]}}}
>>> rows = paired_rows(results)
>>> rows[0]["name"], rows[0]["verdict"], round(rows[0]["mean"], 1)
('linear_probe', 'ahead', 6.0)
>>> comparison_sentence(rows[0], "two_phase")
'two_phase is ahead of linear_probe: +6.0 points, 95 % interval +5.1 to +6.9 over 5 paired folds'
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
    """A warning when the results were computed on another version of the dataset (other files or groups,
    hence other folds) than the shipped one, else None."""
    from tl_helpers.data import dataset_fingerprint

    if results.get("dataset") == dataset_fingerprint():
        return None
    return ("These figures come from another version of the dataset (other files or near-duplicate groups, "
            "hence other splits) than the one shipped now. They await a rerun of `make bench` on the current "
            "splits.")


def correction_ratio(results: dict) -> float | None:
    """``n_test / n_train`` of the results' design, for the corrected t (``None``: independent splits, plain t).

    >>> correction_ratio({"design": {"test_train_ratio": 0.25}}), correction_ratio({})
    (0.25, None)
    """
    return (results.get("design") or {}).get("test_train_ratio")


def paired_rows(results: dict, course: str | None = None) -> list[dict]:
    """The course's recipe against every other complete recipe, paired by fold: name, mean difference
    (points), 95 % interval over the folds (``evaluate.paired_difference``, corrected for the folds' shared
    images when the design says so) and verdict, best-placed first."""
    course = course or results.get("course_recipe", "two_phase")
    table = results[DATASET]
    if course not in table:  # a run still in progress: nothing to pair with yet
        return []
    mine = table[course]["splits"]
    ratio = correction_ratio(results)
    rows = []
    for name, entry in table.items():
        if name == course or len(entry["splits"]) != len(mine):
            continue
        rows.append({"name": name, **paired_difference(mine, entry["splits"], test_train_ratio=ratio).to_dict()})
    return sorted(rows, key=lambda r: r["mean"])


def comparison_sentence(row: dict, course: str = "two_phase", unit: str = "fold") -> str:
    """One generated sentence for one paired comparison, with its verdict word (``unit``: what one paired
    result is, ``design_unit(results)``)."""
    words = {"ahead": "is ahead of", "behind": "is behind", "tie": "ties with"}[row["verdict"]]
    return (f"{course} {words} {row['name']}: {row['mean']:+.1f} points, 95 % interval "
            f"{row['low']:+.1f} to {row['high']:+.1f} over {row['n']} paired {unit}s")


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
    "one_phase": "the same recipe without phase 1 (a random head; settings chosen the same way)",
    "keras_guide": "Keras transfer-learning guide",
    "linear_probe": "linear probe on frozen features (chapter 02)",
    "fastai_fine_tune": "fastai `fine_tune`",
    "pytorch_tutorial": "PyTorch transfer-learning tutorial",
    "scratch_resnet18": "ResNet-18 from random weights",
    "scratch": "the same network (Lite0) from random weights",
    "best": "best found in 2 min per split",
}


def recipe_label(name: str, results: dict) -> str:
    """How tables name a recipe: ``LABELS``, and for ``best`` what the chosen candidate is (from the JSON).

    >>> recipe_label("best", {"best_entry": {"description": "a probe"}})
    'best found in 2 min per split: a probe'
    """
    label = LABELS.get(name, name)
    if name == "best" and results.get("best_entry"):
        label += f": {results['best_entry']['description']}"
    return label
README_BEGIN = "<!-- bench:begin (generated from benchmarks/results.json by `python -m benchmarks.run --readme`) -->"
README_END = "<!-- bench:end -->"


CV_SUMMARY = ("Grouped, stratified {n}-fold cross-validation: every image is tested once, by the fold that holds it "
              "out; each fold learns from the other images (training and validation parts), and every setting an "
              "entry chooses is chosen on the fold's validation part. Intervals are the corrected resampled t over "
              "the folds (their training parts overlap, so a plain t-interval is too narrow).")


def design_summary(results: dict) -> str:
    """The sentence that says how the results were made: the design's own ``summary`` when the file holds one
    (results of an older protocol say what it was), else the nested cross-validation of ``make bench``.

    >>> design_summary({"splits": [0, 1], "design": {"summary": "Two random splits."}})
    'Two random splits.'
    """
    return (results.get("design") or {}).get("summary") or CV_SUMMARY.format(n=len(results["splits"]))


def design_unit(results: dict) -> str:
    """What one result of the design is called: ``fold`` (cross-validation) or e.g. ``split``."""
    return (results.get("design") or {}).get("unit", "fold")


def readme_block(results: dict) -> str:
    """The README's results section: every entry's mean and 95 % interval over the folds, then the paired
    verdicts."""
    course = results.get("course_recipe", "two_phase")
    table = results[DATASET]
    n = len(results["splits"])
    lines = [README_BEGIN, ""]
    note = stale_note(results)
    if note:
        lines += [f"**Note.** {note}", ""]
    unit = design_unit(results)
    lines += [design_summary(results), "",
              f"| recipe | test accuracy, mean (95 % interval) over the {unit}s |", "|---|---|"]
    for name, entry in sorted(table.items(), key=lambda kv: -kv[1]["mean"]):
        iv = f" ({entry['low']:.1f} to {entry['high']:.1f})" if entry.get("low") is not None else ""
        lines.append(f"| {recipe_label(name, results)} | {entry['mean']:.1f} %{iv} |")
    rows = paired_rows(results, course)
    words = {v: [r["name"] for r in rows if r["verdict"] == v] for v in ("ahead", "tie", "behind")}
    lead = {"ahead": "ahead of", "tie": "ties with", "behind": "behind"}
    summary = "; ".join(f"{lead[v]} {', '.join(names)}" for v, names in words.items() if names)
    lines += ["", f"Paired by {unit} ({n} {unit}s), the course's recipe is {summary}. A recipe is called ahead or "
              "behind only when the 95 % interval of the paired difference excludes zero:", "",
              comparison_table(results, course), "", README_END]
    return "\n".join(lines)


def update_readme(readme: str, results: dict) -> str:
    """``readme`` with the text between the bench markers replaced by ``readme_block(results)``."""
    start, end = readme.index(README_BEGIN), readme.index(README_END) + len(README_END)
    return readme[:start] + readme_block(results) + readme[end:]
