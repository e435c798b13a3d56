"""The project's own files agree with each other: dependencies, notebooks, set-up commands."""

from __future__ import annotations

import json
import re
try:
    import tomllib  # novermin (guarded: Python 3.10 takes the fallback below)
except ModuleNotFoundError:  # Python 3.10: the same parser, as vendored by pip (tomllib is tomli since 3.11)
    from pip._vendor import tomli as tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"pytorch": "torch"}  # conda-forge name -> PyPI name
NOT_RUNTIME = {"python", "pip"}


def requirement_name(spec: str) -> str:
    return re.split(r"[<>=!~ \[]", spec.strip(), maxsplit=1)[0].lower().replace("_", "-")


def pyproject_requirements() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        specs += extra
    return {requirement_name(s): s.replace(" ", "") for s in specs}


def environment_requirements() -> dict[str, str]:
    """Dependencies listed in environment.yml (conda and pip sections), without the project itself."""
    out = {}
    for line in (ROOT / "environment.yml").read_text().splitlines():
        m = re.match(r"^\s+-\s+(?!-)([A-Za-z0-9_.\-\[\]<>=!~ ,]+?)\s*$", line)
        if not m or m.group(1).endswith(":"):
            continue
        spec = m.group(1)
        name = CONDA_NAMES.get(requirement_name(spec), requirement_name(spec))
        if name not in NOT_RUNTIME and name != "conda-forge":
            out[name] = spec.replace(" ", "").replace(requirement_name(spec), name, 1)
    return out


def test_environment_yml_lists_the_same_dependencies_as_pyproject():
    py, env = pyproject_requirements(), environment_requirements()
    assert set(py) == set(env), f"only in pyproject: {set(py) - set(env)}; only in environment.yml: {set(env) - set(py)}"
    for name, spec in py.items():
        assert spec == env[name], f"{name}: pyproject says {spec}, environment.yml says {env[name]}"


def test_environment_yml_installs_the_course_package():
    text = (ROOT / "environment.yml").read_text()
    assert "conda-forge" in text and re.search(r"^\s+- -e \.\s*$", text, re.M)


def notebooks() -> list[Path]:
    return sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_every_chapter_follows_the_course_structure():
    assert len(notebooks()) >= 3
    for path in notebooks():
        nb = json.loads(path.read_text())
        cells = nb["cells"]
        first = "".join(cells[0]["source"])
        assert cells[0]["cell_type"] == "markdown" and first.startswith(f"# {path.name[:2]} · "), path.name
        assert "**Objectives.**" in first and "**Prerequisites.**" in first, path.name
        tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, f"{path.name}: exactly one cell tagged 'parameters'"
        prose = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
        assert "## Summary" in prose and "## Exercises" in prose, path.name


def test_notebooks_are_committed_executed_without_errors_or_machine_paths():
    for path in notebooks():
        nb = json.loads(path.read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert all(c.get("execution_count") for c in code), f"{path.name}: run every cell before committing"
        for cell in code:
            tags = cell.get("metadata", {}).get("tags", [])
            for out in cell.get("outputs", []):
                assert out["output_type"] != "error" or "raises-exception" in tags, path.name
                text = json.dumps(out.get("text", "")) + json.dumps(out.get("data", {}).get("text/plain", ""))
                assert not re.search(r"/(root|tmp|work|home/\w+)/", text), f"{path.name}: machine path in output"


def test_ci_runs_make_test():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    makefile = (ROOT / "Makefile").read_text()
    for target in ("setup:", "lab:", "test:"):
        assert re.search(rf"^{target}", makefile, re.M), target


def test_lab_never_asks_for_news_offline():
    """The set-up installs a JupyterLab settings override: no news prompt, no update check (offline course)."""
    overrides = json.loads((ROOT / "jupyter" / "overrides.json").read_text())
    notification = overrides["@jupyterlab/apputils-extension:notification"]
    assert notification == {"fetchNews": "false", "checkForUpdates": False}
    makefile = (ROOT / "Makefile").read_text()
    assert "cp jupyter/overrides.json $(VENV)/share/jupyter/lab/settings/overrides.json" in makefile


def test_notebooks_name_the_kernel_that_make_lab_registers():
    """A learner opening a chapter from another Jupyter gets the course's environment, not a bare python3."""
    kernel = re.search(r"^KERNEL := (\S+)", (ROOT / "Makefile").read_text(), re.M).group(1)
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        spec = json.loads(path.read_text())["metadata"]["kernelspec"]
        assert spec["name"] == kernel, f"{path.name} names kernel {spec['name']!r}, make lab registers {kernel!r}"
        assert spec["display_name"] == "Python (transfer-learning course)", path.name
