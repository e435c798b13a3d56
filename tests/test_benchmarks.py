"""make bench cannot rot: every recipe runs one optimisation step on a tiny subset; the results writer works;
the folds and the nested selection keep every choice away from the test parts.

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


pytestmark = pytest.mark.usefixtures("one_torch_thread")


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
    json.dumps({k: v for k, v in info.items() if k != "models"})  # stored in the cell's JSON (models are scored)
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


def _fake_cell(fold: int, acc: float, seconds: float = 5.0) -> dict:
    return {"fold": fold, "acc": acc, "val_acc": acc, "seconds": seconds, "n_train": 300, "n_val": 100, "n_test": 100}


def test_results_writer_on_fake_numbers(tmp_path):
    cells = {"linear_probe": [_fake_cell(k, a) for k, a in enumerate([70, 72, 68, 74, 66])],
             "keras_guide": [_fake_cell(k, 75.0 + k, 150.0 + k) for k in range(5)],
             "two_phase": [_fake_cell(0, 90.0, 100.0) | {"chosen": "x@last", "selection_seconds": 800.0}],
             "scratch": []}
    complete, incomplete = run.summarize(cells, 5, ratio=0.25)
    assert set(complete) == {"linear_probe", "keras_guide"} and set(incomplete) == {"two_phase"}
    assert complete["linear_probe"]["mean"] == 70.0
    assert complete["linear_probe"]["std"] == pytest.approx(3.16, abs=0.01)  # sample std
    # corrected t: 2.776 * 3.162 * sqrt(1/5 + 1/4) = 5.89 points each side (the plain t-interval: 3.93)
    assert complete["linear_probe"]["low"] == pytest.approx(64.11, abs=0.01)
    assert complete["keras_guide"]["seconds"] == 152.0
    assert complete["keras_guide"]["splits"] == [75.0, 76.0, 77.0, 78.0, 79.0]
    assert incomplete["two_phase"]["chosen"] == ["x@last"]
    meas = {"phase1_speedup": 1234.5, "loop_overhead": 0.012, "backbone_epoch_s": 3.0, "cached_epoch_s": 0.002,
            "fit_s": 10.1, "bare_s": 10.0, "wall_overhead_min": 0.01, "wall_overhead_median": 0.02, "repeats": 10,
            "fixed_overhead_per_step_us": 150.0, "fixed_overhead_fraction": 0.0001}
    results = run.write_results(tmp_path, cells, {}, meas, "python -m benchmarks.run", 5, machine_line="test machine")
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == results
    assert set(saved["clipart8"]) == {"linear_probe", "keras_guide"}
    assert saved["incomplete"]["two_phase"]["splits_done"] == [0]
    assert saved["design"]["test_train_ratio"] == pytest.approx(0.25) and saved["design"]["folds"] == 5
    for key in ("mean", "std", "low", "high", "seconds", "splits"):
        assert key in saved["clipart8"]["keras_guide"]
    assert saved["phase1_speedup"] == 1234.5 and saved["loop_overhead"] == 0.012
    for key in ("machine", "command", "date", "torch"):
        assert saved[key]
    md = (tmp_path / "results.md").read_text()
    assert "| keras_guide | 77.0 | 74.1 to 79.9 | 152 | 75.0 / 76.0 / 77.0 / 78.0 / 79.0 |" in md
    assert "incomplete: 1/5 folds" in md
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


def test_folds_test_each_image_once_and_keep_groups_whole():
    """The reporting design: the five test parts are disjoint and hold every image; within a fold train, val
    and test are disjoint, and no near-duplicate group straddles two parts."""
    from tl_helpers.data import clipart_dataset, manifest_column, split_indices

    ds = clipart_dataset()
    groups = manifest_column(ds, "group")
    tested = []
    for fold in range(run.DEFAULT_FOLDS):
        parts = split_indices(ds, fold=fold)
        sets = {k: set(v) for k, v in parts.items()}
        assert not (sets["train"] & sets["val"] or sets["train"] & sets["test"] or sets["val"] & sets["test"])
        assert sum(map(len, sets.values())) == len(ds)
        part_of_group = {}
        for part, idx in parts.items():
            for i in idx:
                assert part_of_group.setdefault(groups[i], part) == part, f"group {groups[i]} straddles fold {fold}"
        tested += parts["test"]
    assert sorted(tested) == list(range(len(ds)))


def test_grid_is_declared_and_holds_the_old_settings_as_a_candidate():
    from benchmarks.recipes import ARMS, GRID
    from tl_helpers.recipe import Recipe

    assert len(GRID) == 8 and all(set(s) == set(vars(Recipe())) for s in GRID.values())
    c748b77 = {"head_epochs": 10, "top_epochs": 1, "all_epochs": 6, "backbone_lr": 2e-4, "finetune_head_lr": 1e-3,
               "lr_decay": None}
    assert any(all(s[k] == v for k, v in c748b77.items()) for s in GRID.values())
    for field in ("head_epochs", "backbone_lr", "top_epochs", "finetune_head_lr", "lr_decay"):
        values = [s[field] for s in GRID.values()]
        assert len(set(values)) == 2 and all(values.count(v) == 4 for v in set(values)), field
    assert sum(ARMS["two_phase"](s) for s in GRID.values()) == sum(ARMS["one_phase"](s) for s in GRID.values()) == 4


def test_nested_selection_reads_validation_only(tmp_path, monkeypatch):
    """The chosen candidate is the one with the best validation score, whatever the test parts say: a
    candidate that is best on test but worst on validation is never chosen."""
    grid = {"a": {"head_epochs": 10}, "b": {"head_epochs": 10}, "c": {"head_epochs": 0}}
    cells = {"a": {"fold": 0, "acc": 99.0, "val_acc": 50.0, "info": {"val_correct_by_epoch": [[1, 0, 0, 0]] * 2}},
             "b": {"fold": 0, "acc": 10.0, "val_acc": 75.0,
                   "info": {"val_correct_by_epoch": [[1, 0, 1, 0], [1, 1, 1, 0]]}},
             "c": {"fold": 0, "acc": 50.0, "val_acc": 100.0, "info": {"val_correct_by_epoch": [[1, 1, 1, 1]]}}}
    for c in cells.values():
        c.update(correct=[1], val_correct=[1], seconds=1.0, n_train=3, n_val=4, n_test=1, variants={})
    cells["b"]["variants"]["best"] = dict(cells["b"], acc=11.0)
    entry = run.select_arm("two_phase", cells, grid)
    assert entry["chosen"] == "b@last" and entry["acc"] == 10.0   # c is the other arm; a is best on test only
    assert entry["scores"] == {"a@last": 25.0, "a@best": 25.0, "b@last": 75.0, "b@best": 50.0}
    assert entry["selection_seconds"] == 2.0
    assert run.select_arm("one_phase", cells, grid)["chosen"] == "c@last"
    assert run.select_arm("two_phase", {"a": cells["a"]}, grid) is None   # b not run yet: no entry


def test_validation_recorder_keeps_the_best_epoch_of_the_last_phase(tiny):
    """The grid's two_phase run returns its last-epoch model, the model of its best validation epoch, and
    which validation images each epoch got right; the best model scores the recorded best accuracy."""
    from benchmarks.recipes import GRID, two_phase_recipe

    settings = next(iter(GRID.values())) | {"head_epochs": 1, "top_epochs": 1, "all_epochs": 2}
    torch.manual_seed(0)
    model, info = two_phase_recipe(tiny, **settings)
    epochs = info["val_correct_by_epoch"]
    assert len(epochs) == 2 and all(len(e) == len(tiny.val) for e in epochs)   # the "all" phase's epochs
    assert correct_of(model, tiny, "val") == epochs[-1]
    best = info["models"]["best"]
    k = info["best_epoch"] - 1
    assert sum(epochs[k]) == max(sum(e) for e in epochs) and correct_of(best, tiny, "val") == epochs[k]


def test_cli_rejects_unknown_recipe():
    with pytest.raises(SystemExit):
        run.main(["--recipes", "nope", "--no-measure"])


def test_best_candidates_are_described_and_fit_the_time_limit_by_design():
    from benchmarks.recipes import BEST_CANDIDATES, BEST_DESCRIPTIONS

    assert set(BEST_DESCRIPTIONS) == set(BEST_CANDIDATES), "every candidate says in words what it is"
    assert not any(c.get("tta") for c in BEST_CANDIDATES.values())


@pytest.mark.parametrize("candidate", ["probe3_192_C0.1", "probe3_192+two_phase_128"])
def test_best_candidates_build_their_members(candidate, tiny):
    """Every kind of `best` candidate runs: a three-backbone probe alone, or averaged with a fine-tuned Lite0
    trained at a smaller size (its member resizes its input)."""
    from benchmarks.recipes import GRID, ConcatFeatures, ProbabilityMean, Resized, best, best_overrides

    settings = best_overrides(candidate, next(iter(GRID.values()))) | {"head_epochs": 1, "top_epochs": 1,
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


def test_best_without_settings_says_what_to_pass(tiny):
    from benchmarks.recipes import best

    with pytest.raises(ValueError, match="BEST_CANDIDATES"):
        best(tiny)


def test_the_notebooks_fixed_split_is_a_valid_bench_data():
    """--select-chapter runs the grid on the manifest's fixed split (fold None): its loader needs a seed."""
    fixed = make_data(None, **TINY)
    assert fixed.seed == 0 and len(next(iter(fixed.train_loader()))[1]) == TINY["batch_size"]
