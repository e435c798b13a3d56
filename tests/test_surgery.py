"""Model surgery (tl_helpers.surgery): stages, freezing with BatchNorm, heads, parameter groups."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tl_helpers.models import count_parameters, load_pretrained
from tl_helpers.surgery import (freeze, get_head, make_head, model_blocks, param_groups, replace_head, set_bn_eval,
                                train_mode, trainable_table, unfreeze)
from tl_helpers.train import format_table


def tiny_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3))


@pytest.mark.parametrize("name, size, n", [
    ("efficientnet_lite0", 64, 2), ("resnet18", 32, 2), ("mobilenet_v3_small", 32, 2),
    ("efficientnet_b0", 32, 2), ("vit_b_16", 224, 1),
])
def test_replace_head_gives_num_classes_outputs(name, size, n):
    model = load_pretrained(name, weights=False).model
    assert replace_head(model, 8) is model
    with torch.no_grad():
        assert model(torch.zeros(n, 3, size, size)).shape == (n, 8)
    stages = model_blocks(model)
    ids = [id(p) for _, stage in stages for p in stage.parameters()]
    assert len(ids) == len(set(ids)), "a parameter is in two stages"
    assert sum(p.numel() for _, s in stages for p in s.parameters()) == count_parameters(model)


def test_model_blocks_efficientnet_lite_names():
    names = [n for n, _ in model_blocks(load_pretrained("efficientnet_lite0", weights=False).model)]
    assert names == ["stem"] + [f"blocks.{i}" for i in range(16)] + ["head_conv", "classifier"]


def test_identity_head_makes_a_feature_extractor_and_can_be_replaced_again():
    model = load_pretrained("efficientnet_lite0", weights=False).model
    replace_head(model, None, head=nn.Identity())
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 1280)
    replace_head(model, 5)
    assert get_head(model)[1].out_features == 5


def test_given_head_is_used_as_is():
    model = load_pretrained("resnet18", weights=False).model
    head = make_head(512, 4, hidden=16, dropout=0.1)
    replace_head(model, 4, head=head)
    assert model.fc is head


def test_unknown_model_raises_a_helpful_error():
    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(2, 2)

    for fn in (get_head, model_blocks, lambda m: replace_head(m, 3)):
        with pytest.raises(ValueError) as info:
            fn(Custom())
        message = str(info.value)
        for family in ("EfficientNet-Lite", "ResNet", "MobileNet", "ViT", "by hand"):
            assert family in message


def test_freeze_marks_batchnorm_and_train_mode_keeps_it_in_eval():
    net = tiny_net()
    freeze(net, first=2)
    assert not net[0].weight.requires_grad and not net[1].weight.requires_grad
    assert net[4].weight.requires_grad
    net.train()  # the pitfall: plain train() switches the frozen BatchNorm back to training mode
    assert net[1].training
    train_mode(net)
    assert net.training and not net[1].training


def test_frozen_batchnorm_statistics_do_not_move_under_train_mode():
    net = freeze(tiny_net())
    before = net[1].running_mean.clone()
    train_mode(net)(torch.randn(8, 3, 8, 8) + 3)
    assert torch.equal(net[1].running_mean, before)


def test_bn_eval_false_shows_the_pitfall():
    net = freeze(tiny_net(), bn_eval=False)
    before = net[1].running_mean.clone()
    train_mode(net)(torch.randn(8, 3, 8, 8) + 3)
    assert not torch.equal(net[1].running_mean, before)


def test_freeze_by_module_name_and_module_list():
    net = freeze(tiny_net(), modules="4")
    assert not net[4].weight.requires_grad and net[0].weight.requires_grad
    net = tiny_net()
    freeze(net, modules=[net[0], "4"])
    assert not net[0].weight.requires_grad and net[1].weight.requires_grad and not net[4].weight.requires_grad


def test_first_and_last_count_stages_from_the_input_and_from_the_head():
    net = freeze(tiny_net(), last=1)          # the head only
    assert not net[4].weight.requires_grad and net[0].weight.requires_grad
    net = unfreeze(freeze(tiny_net()), first=2)   # the two stages nearest the input
    assert net[0].weight.requires_grad and net[1].weight.requires_grad and not net[4].weight.requires_grad
    with pytest.raises(ValueError, match="give one of them"):
        freeze(tiny_net(), first=1, last=1)
    with pytest.raises(TypeError, match="first=k"):
        freeze(tiny_net(), 2)   # a bare number is ambiguous: first= or last= must say which end


def test_unfreeze_top_k_and_marks_removed():
    net = freeze(tiny_net())
    unfreeze(net, last=4)  # stages 1..4: BatchNorm, ReLU, Flatten, Linear
    assert not net[0].weight.requires_grad
    assert net[1].weight.requires_grad and net[4].weight.requires_grad
    assert not hasattr(net[1], "_tl_frozen")
    assert train_mode(net)[1].training
    with pytest.raises(ValueError, match="last=99, but the model has 5 stages"):
        unfreeze(net, last=99)


def test_set_bn_eval_survives_train_mode_and_keeps_parameters_trainable():
    net = set_bn_eval(tiny_net())
    assert net[1].weight.requires_grad
    assert not train_mode(net)[1].training


def test_param_groups_head_lr_and_no_frozen_parameters():
    model = load_pretrained("efficientnet_lite0", weights=False).model
    replace_head(model, 8)
    freeze(model)
    unfreeze(model, last=3)
    groups = param_groups(model, head_lr=1e-3, backbone_lr=1e-4, decay=0.5, weight_decay=0.01)
    assert groups[0]["name"] == "head" and groups[0]["lr"] == 1e-3
    head = {id(p) for g in groups[:2] for p in g["params"]}
    assert head == {id(p) for p in model._fc.parameters()}
    assert [g["name"] for g in groups] == ["head", "head.no_decay", "head_conv", "head_conv.no_decay",
                                           "blocks.15", "blocks.15.no_decay"]
    assert [g["lr"] for g in groups[2:]] == pytest.approx([1e-4, 1e-4, 5e-5, 5e-5])
    for g in groups:  # BatchNorm scales/shifts and biases never decay; weights and kernels do
        assert all(p.ndim <= 1 for p in g["params"]) == g["name"].endswith(".no_decay")
        assert g["weight_decay"] == (0.0 if g["name"].endswith(".no_decay") else 0.01)
    grouped = [p for g in groups for p in g["params"]]
    assert all(p.requires_grad for p in grouped)
    assert len(grouped) == len([p for p in model.parameters() if p.requires_grad])
    torch.optim.AdamW(groups)  # accepted as is


def test_param_groups_without_decay_is_head_and_backbone():
    net = unfreeze(freeze(tiny_net()), last=4)
    groups = param_groups(net, 1e-2, 1e-3)
    assert [(g["name"], g["lr"]) for g in groups] == [("head", 1e-2), ("backbone", 1e-3)]


def test_make_head_variants():
    assert isinstance(make_head(10, 3), nn.Linear)
    assert [type(m) for m in make_head(10, 3, dropout=0.5)] == [nn.Dropout, nn.Linear]
    mlp = make_head(10, 3, hidden=[8, 4])
    assert mlp(torch.zeros(2, 10)).shape == (2, 3)


def test_trainable_table_and_format_table_are_stable():
    rows = trainable_table(freeze(tiny_net(), first=2))
    assert rows[0] == {"name": "0", "params": 112, "trainable": 0, "frozen": 112}
    assert format_table(rows) == (
        "name   params  trainable  frozen\n"
        "0         112          0     112\n"
        "1           8          0       8\n"
        "2           0          0       0\n"
        "3           0          0       0\n"
        "4         435        435       0\n"
        "total     555        435     120"
    )
