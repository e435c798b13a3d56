"""make bench cannot rot: every recipe runs one optimisation step on a tiny subset; the results writer works.

The recipes are the ones benchmarks/run.py runs (see benchmarks/recipes.py); here each gets 16 training
images at 64 px, batch size 8, one epoch per phase cut to one batch.
"""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import run
from pathlib import Path

from benchmarks.recipes import RECIPES, SMOKE, accuracy_of, correct_of, make_data

ROOT = Path(__file__).resolve().parents[1]

TINY = {"image_size": 64, "batch_size": 8, "limit": 16, "max_batches": 1, "device": "cpu"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a busy machine, OpenMP threads spin-waiting made these tiny steps 5x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny():
    return make_data(0, **TINY)


def test_tiny_data_mixes_classes(tiny):
    labels = {int(y) for _, y in tiny.train}
    assert len(tiny.train) == 16 and len(tiny.val) == 8 and len(tiny.test) == 8
    assert len(labels) >= 4
    assert tiny.num_classes == 8
    x, _ = tiny.train[0]
    assert x.shape == (3, 64, 64)


@pytest.mark.parametrize("name", list(RECIPES))
def test_recipe_runs_one_step(name, tiny):
    assert RECIPES[name].__doc__ and "Source" in RECIPES[name].__doc__, f"{name} must cite its source"
    torch.manual_seed(0)
    try:
        out = RECIPES[name](tiny, **SMOKE[name])
    except NotImplementedError as exc:
        pytest.skip(f"{name}: {exc}")
    model, info = out if isinstance(out, tuple) else (out, {})
    json.dumps(info)  # stored in the cell's JSON
    logits = model.eval()(torch.zeros(2, 3, 64, 64))
    assert logits.shape == (2, 8)
    assert torch.isfinite(logits).all()
    correct = correct_of(model, tiny)
    assert len(correct) == len(tiny.test) and set(correct) <= {0, 1}
    assert accuracy_of(model, tiny) == pytest.approx(100 * sum(correct) / len(correct))


def test_recipes_change_the_weights_they_claim_to_train(tiny):
    """One step of the Keras head phase moves the head only; the base (and its BN statistics) stays put."""
    from benchmarks.recipes import keras_guide
    from tl_helpers.models import load_pretrained

    ref = load_pretrained(image_size=64).model.state_dict()
    model = keras_guide(tiny, head_epochs=1, finetune_epochs=0)
    state = model.lite.state_dict()
    assert all(torch.equal(state[k], v) for k, v in ref.items() if not k.startswith("_fc"))


def test_cells_are_cached_and_resumed(tmp_path, monkeypatch):
    calls = []

    def fake(data, epochs: int = 3):
        """Source: a test."""
        calls.append(data.seed)
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(8))

    monkeypatch.setitem(run.RECIPES, "fake", fake)
    kwargs = {"image_size": 32, "batch_size": 8, "limit": 8}
    first = run.run_cell("fake", 0, tmp_path, data_kwargs=kwargs, log=lambda s: None)
    again = run.run_cell("fake", 0, tmp_path, data_kwargs=kwargs, log=lambda s: None)
    assert calls == [0] and again == first
    run.run_cell("fake", 0, tmp_path, data_kwargs=kwargs, overrides={"epochs": 1}, log=lambda s: None)
    assert calls == [0, 0]  # other settings: recomputed
    run.run_cell("fake", 0, tmp_path, force=True, data_kwargs=kwargs, overrides={"epochs": 1}, log=lambda s: None)
    assert calls == [0, 0, 0]
    assert set(first) >= {"acc", "seconds", "config", "machine", "date", "torch"}


def test_results_writer_on_fake_numbers(tmp_path):
    cells = {"linear_probe": [{"split": k, "acc": a, "seconds": 5.0} for k, a in enumerate([70, 72, 68, 74, 66])],
             "keras_guide": [{"split": k, "acc": 75.0 + k, "seconds": 150.0 + k} for k in range(5)],
             "two_phase": [{"split": 0, "acc": 90.0, "seconds": 100.0}],
             "scratch": []}
    complete, incomplete = run.summarize(cells, 5)
    assert set(complete) == {"linear_probe", "keras_guide"} and set(incomplete) == {"two_phase"}
    assert complete["linear_probe"]["mean"] == 70.0
    assert complete["linear_probe"]["std"] == pytest.approx(3.16, abs=0.01)  # sample std
    assert complete["keras_guide"]["seconds"] == 152.0
    assert complete["keras_guide"]["splits"] == [75.0, 76.0, 77.0, 78.0, 79.0]
    meas = {"phase1_speedup": 1234.5, "loop_overhead": 0.012, "backbone_epoch_s": 3.0, "cached_epoch_s": 0.002,
            "fit_s": 10.1, "bare_s": 10.0, "wall_overhead_min": 0.01, "wall_overhead_median": 0.02, "repeats": 10,
            "fixed_overhead_per_step_us": 150.0, "fixed_overhead_fraction": 0.0001}
    results = run.write_results(tmp_path, complete, incomplete, meas, "python -m benchmarks.run", 5,
                                machine_line="test machine")
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == results
    assert set(saved["clipart8"]) == {"linear_probe", "keras_guide"}
    assert saved["incomplete"]["two_phase"]["splits_done"] == [0]
    for key in ("mean", "std", "seconds", "splits"):
        assert key in saved["clipart8"]["keras_guide"]
    assert saved["phase1_speedup"] == 1234.5 and saved["loop_overhead"] == 0.012
    for key in ("machine", "command", "date", "torch"):
        assert saved[key]
    md = (tmp_path / "results.md").read_text()
    assert "| keras_guide | 77.0 | 1.6 | 152 | 75.0 / 76.0 / 77.0 / 78.0 / 79.0 |" in md
    assert "incomplete: 1/5 splits" in md
    assert "test machine" in md and "python -m benchmarks.run" in md
    assert md.index("keras_guide") < md.index("| linear_probe")  # sorted by mean


def test_paired_verdicts_follow_the_interval_not_the_means():
    """The one rule: ahead/behind only when the paired interval excludes zero, tie otherwise."""
    from tl_helpers.benchmark_results import comparison_table, paired_rows

    results = {"course_recipe": "two_phase", "clipart8": {
        "two_phase": {"mean": 76.0, "splits": [80.0, 78.0, 75.0, 73.0, 74.0]},
        "steady": {"mean": 73.0, "splits": [77.0, 75.0, 72.0, 70.0, 71.0]},      # 3 points below on every split
        "noisy": {"mean": 74.4, "splits": [86.0, 70.0, 80.0, 66.0, 70.0]},       # 1.6 below on average, all over
        "better": {"mean": 79.0, "splits": [83.0, 81.0, 78.0, 76.0, 77.0]}}}
    verdicts = {r["name"]: r["verdict"] for r in paired_rows(results)}
    assert verdicts == {"steady": "ahead", "noisy": "tie", "better": "behind"}
    assert "| noisy | +1.6 |" in comparison_table(results)


def test_readme_results_section_is_generated_from_results_json():
    from tl_helpers.benchmark_results import update_readme

    readme = (ROOT / "README.md").read_text()
    results = json.loads((ROOT / "benchmarks" / "results.json").read_text())
    assert update_readme(readme, results) == readme, "run `python -m benchmarks.run --readme` after make bench"


def test_selection_never_reads_a_reporting_split():
    from benchmarks.recipes import CANDIDATES, SELECTION_SPLITS

    assert not set(SELECTION_SPLITS) & set(range(run.DEFAULT_SPLITS))
    assert "brief_head" in CANDIDATES


def test_cli_rejects_unknown_recipe():
    with pytest.raises(SystemExit):
        run.main(["--recipes", "nope", "--no-measure"])


def test_best_entry_is_the_candidate_chosen_on_validation():
    """`best` runs the candidate that --select-best ranked first on validation parts of selection splits only."""
    from benchmarks.recipes import BEST, BEST_CANDIDATES, BEST_DESCRIPTIONS, SELECTION_SPLITS

    selection = json.loads((Path(__file__).resolve().parents[1] / "benchmarks" / "best_selection.json").read_text())
    assert selection["chosen"] == BEST and set(selection["candidates"]) <= set(BEST_CANDIDATES)
    assert set(selection["splits"]) <= set(SELECTION_SPLITS), "choices never look at the reporting splits 0-4"
    assert all("val_mean" in c and "test" not in json.dumps(c) for c in selection["candidates"].values())
    assert set(BEST_DESCRIPTIONS) == set(BEST_CANDIDATES), "every candidate says in words what it is"


@pytest.mark.parametrize("candidate", ["probe3_192_C0.1", "probe3_192+two_phase_128"])
def test_best_candidates_build_their_members(candidate, tiny):
    """Every kind of `best` candidate runs: a three-backbone probe alone, or averaged with a fine-tuned Lite0
    trained at a smaller size (its member resizes its input)."""
    from benchmarks.recipes import (ConcatFeatures, ProbabilityMean, Resized, _two_phase_defaults, best,
                                    best_overrides)

    settings = _two_phase_defaults() | best_overrides(candidate) | {"head_epochs": 1, "top_epochs": 1,
                                                                     "all_epochs": 1}
    if "finetune_size" in settings:
        settings["finetune_size"] = 32  # smaller than the tiny data's 64 px, as 128 is smaller than 192
    torch.manual_seed(0)
    model = best(tiny, **settings)
    members = list(model.members) if isinstance(model, ProbabilityMean) else [model]
    assert len(members) == (2 if "two_phase" in candidate else 1)
    probe = members[-1]
    assert isinstance(probe[0], ConcatFeatures) and len(probe[0].backbones) == 3
    assert probe[1].in_features == 1280 * 3  # Lite0, Lite1 and Lite2 all pool 1280 numbers
    if len(members) == 2:
        assert isinstance(members[0], Resized) and members[0].size == 32
    out = model.eval()(torch.zeros(2, 3, 64, 64))
    assert out.shape == (2, 8) and torch.isfinite(out).all()
    if len(members) == 2:  # the ensemble returns log-probabilities
        assert torch.allclose(out.exp().sum(1), torch.ones(2), atol=1e-4)


def test_at_size_keeps_the_split(tiny):
    """The fine-tuned member of an ensemble trains on the same images as the rest, only resized."""
    from benchmarks.recipes import at_size

    small = at_size(tiny, 32)
    assert small.train[0][0].shape == (3, 32, 32) and tiny.train[0][0].shape == (3, 64, 64)
    assert [y for _, y in small.val] == [y for _, y in tiny.val]
    assert small.test.indices == tiny.test.indices and small.seed == tiny.seed


def test_best_without_settings_runs_the_chosen_candidate(tiny):
    """The harness calls ``best(data)`` with no settings: that must be BEST's candidate, whatever keys it has."""
    from benchmarks.recipes import BEST, BEST_CANDIDATES, ProbabilityMean, best

    torch.manual_seed(0)
    model = best(tiny)
    assert model.eval()(torch.zeros(2, 3, 64, 64)).shape == (2, 8)
    two_members = BEST_CANDIDATES[BEST].get("probe_backbones") and BEST_CANDIDATES[BEST].get("finetune", True)
    assert isinstance(model, ProbabilityMean) == bool(two_members)
