"""Behaviour of tl_helpers.models: offline loading, predictions, clear errors."""

from __future__ import annotations

from urllib.error import URLError

import pytest
import torch
from PIL import Image
from skimage import data as skdata

from tl_helpers import models


@pytest.fixture(scope="module")
def lite0():
    return models.load_pretrained("efficientnet_lite0")


def test_lite0_loads_offline_in_eval_mode(lite0):
    assert not lite0.model.training
    assert len(lite0.categories) == 1000
    assert models.count_parameters(lite0.model) == 4_652_008


@pytest.mark.parametrize("photo, expected", [("coffee", {"espresso"}),
                                             ("chelsea", {"Egyptian cat", "tiger cat", "tabby"})])
def test_known_photo_gets_the_right_top1(lite0, photo, expected):
    image = Image.fromarray(getattr(skdata, photo)())
    with torch.no_grad():
        logits = lite0.model(lite0.transforms(image)[None])
    assert lite0.categories[int(logits.argmax())] in expected


def test_transforms_follow_image_size():
    pre = models.load_pretrained(image_size=96)
    out = pre.transforms(Image.new("RGB", (300, 200)))
    assert out.shape == (3, 96, 96) and out.dtype == torch.float32


def test_count_parameters_trainable_only():
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    net[0].weight.requires_grad_(False)
    assert models.count_parameters(net) == 23
    assert models.count_parameters(net, trainable_only=True) == 23 - 12


def test_torchvision_architecture_without_weights_needs_no_network():
    pre = models.load_pretrained("resnet18", weights=False)
    assert pre.model(torch.zeros(1, 3, 64, 64)).shape == (1, 1000)
    assert pre.source == "random initialisation"


def test_offline_torchvision_weights_raise_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise URLError("no network")

    import torchvision.models._api as weights_api  # where WeightsEnum.get_state_dict downloads from

    monkeypatch.setattr(weights_api, "load_state_dict_from_url", offline)
    with pytest.raises(models.OfflineWeightsError, match="efficientnet_lite0"):
        models.load_pretrained("resnet18")


def test_unknown_model_name_lists_the_choices():
    with pytest.raises(ValueError, match="efficientnet_lite0"):
        models.load_pretrained("resnet_does_not_exist")
