"""The course's recipe (tl_helpers.recipe): phase 1 on features, both phases in one call, resumed or retrained."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from test_train import CPU, tiny_setup, without_seconds
from tl_helpers.checkpoints import load_checkpoint
from tl_helpers.recipe import Recipe, fit_head_on_features, two_phase


def test_fit_head_on_features_learns_and_leaves_global_rng_alone():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(200, 16, generator=g)
    y = (X[:, 0] > 0).long() + 2 * (X[:, 2] > 0).long()  # 4 linearly separable classes
    state = torch.get_rng_state()
    head, hist = fit_head_on_features(X[:150], y[:150], X[150:], y[150:], epochs=60, lr=0.05)
    assert torch.equal(torch.get_rng_state(), state)
    assert isinstance(head, nn.Linear) and head.out_features == 4 and not head.training
    assert len(hist) == 60 and set(hist.column("phase")) == {"head"}
    assert hist.rows[-1]["val_acc"] > 0.8 and hist.rows[-1]["train_acc"] > 0.9
    head2, hist2 = fit_head_on_features(X[:150], y[:150], X[150:], y[150:], epochs=60, lr=0.05)
    assert torch.equal(head.weight, head2.weight)


def _features(net: nn.Sequential, loader) -> tuple[torch.Tensor, torch.Tensor]:
    body = nn.Sequential(*list(net)[:-1]).eval()
    with torch.no_grad():
        pairs = [(body(x), y) for x, y in loader]
    return torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])


def test_two_phase_runs_both_phases_keeps_bn_statistics_and_reloads_from_its_checkpoint(tmp_path):
    net, loader, val = tiny_setup()
    features = (*_features(net, loader), *_features(net, val))
    stats = net[1].running_mean.clone()
    recipe = Recipe(head_epochs=5, top_stages=2, top_epochs=1, all_epochs=2)
    head_hist, hist = two_phase(net, loader, val, features, recipe, checkpoint=tmp_path / "best.pt",
                                device=CPU, progress=False)
    assert head_hist.column("phase") == ["head"] * 5
    assert hist.column("phase") == ["top", "all", "all"]
    assert torch.equal(net[1].running_mean, stats), "BatchNorm statistics must stay the pretrained ones"
    assert (tmp_path / "best.pt").exists() and (tmp_path / "best.top.pt").exists()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    saved = torch.load(tmp_path / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(saved[k], v) for k, v in before.items()), "the checkpoint holds the model kept"
    # Rerunning with the same checkpoint reloads the finished run instead of training again.
    _, again = two_phase(net, loader, val, features, recipe, checkpoint=tmp_path / "best.pt", device=CPU,
                         progress=False)
    assert without_seconds(again) == without_seconds(hist)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in before.items())


def test_two_phase_retrains_when_the_recipe_or_the_features_change(tmp_path, capsys):
    net, loader, val = tiny_setup()
    features = (*_features(net, loader), *_features(net, val))
    recipe = Recipe(head_epochs=2, top_stages=2, top_epochs=1, all_epochs=1)
    two_phase(net, loader, val, features, recipe, checkpoint=tmp_path / "best.pt", device=CPU, progress=False)
    state = load_checkpoint(tmp_path / "best.pt")
    assert state["settings"]["recipe"]["all_epochs"] == 1 and state["settings"]["phase"] == "all"
    capsys.readouterr()
    net, loader, val = tiny_setup()
    two_phase(net, loader, val, features, Recipe(head_epochs=2, top_stages=2, top_epochs=1, all_epochs=1,
                                                 backbone_lr=1e-3),
              checkpoint=tmp_path / "best.pt", device=CPU, progress=False)
    assert "recipe.backbone_lr: 0.0002 -> 0.001" in capsys.readouterr().err
    net, loader, val = tiny_setup()
    other = (features[0] + 1, *features[1:])
    two_phase(net, loader, val, other, recipe, checkpoint=tmp_path / "best.pt", device=CPU, progress=False,
              settings={"model_name": "tiny"})
    err = capsys.readouterr().err
    assert "features:" in err and "model_name" in err, err


@pytest.mark.parametrize("top_epochs, phase", [(1, "top"), (0, "head")])
def test_two_phase_with_empty_phases_checkpoints_the_last_phase_that_ran(tmp_path, top_epochs, phase):
    # finetuned.recipe_for(epochs=1) gives the first recipe: one top-stage epoch, no all-layer epoch; the second
    # fine-tunes nothing, so the checkpoint is the model with its trained head
    net, loader, val = tiny_setup()
    features = (*_features(net, loader), *_features(net, val))
    recipe = Recipe(head_epochs=2, top_stages=2, top_epochs=top_epochs, all_epochs=0)
    _, hist = two_phase(net, loader, val, features, recipe, checkpoint=tmp_path / "best.pt", device=CPU,
                        progress=False)
    assert hist.column("phase") == ["top"] * top_epochs
    saved = load_checkpoint(tmp_path / "best.pt")
    assert saved["settings"]["phase"] == phase
    assert all(torch.equal(saved["model"][k], v) for k, v in net.state_dict().items())
    # and the run reloads instead of training again
    _, again = two_phase(net, loader, val, features, recipe, checkpoint=tmp_path / "best.pt", device=CPU,
                         progress=False)
    assert without_seconds(again) == without_seconds(hist)


def test_recipe_defaults_are_the_choice_made_on_validation():
    """Recipe()'s defaults are the candidate --select-chapter chose on the fixed split's validation part."""
    import json
    from dataclasses import asdict
    from pathlib import Path

    from tl_helpers.recipe import Recipe

    chosen = json.loads((Path(__file__).resolve().parents[1] / "benchmarks" / "recipe_selection.json").read_text())
    assert asdict(Recipe()) == chosen["settings"]
    assert "test" not in json.dumps(chosen["scores"])
