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


@pytest.mark.parametrize("name", ["resnet50", "efficientnet_b0", "efficientnet_v2_s", "convnext_tiny",
                                  "mobilenet_v3_small", "regnet_y_400mf", "vit_b_16", "swin_t"])
def test_torchvision_names_get_the_preprocessing_of_their_weights(name):
    """Resize, crop, interpolation, mean and std are the weights' own (``Weights.transforms()``, offline), for
    every family: resnet50 resizes to 232, efficientnet_b0 is bicubic, efficientnet_v2_s crops 384..."""
    from torchvision.models import get_model_weights
    from torchvision.transforms import v2

    preset = get_model_weights(name).DEFAULT.transforms()
    pre = models.load_pretrained(name, weights=False)
    resize = next(t for t in pre.transforms.transforms if isinstance(t, v2.Resize))
    crop = next(t for t in pre.transforms.transforms if isinstance(t, v2.CenterCrop))
    assert resize.size == list(preset.resize_size) and list(crop.size) == [preset.crop_size[0]] * 2
    assert resize.interpolation == preset.interpolation
    assert pre.mean == tuple(preset.mean) and pre.std == tuple(preset.std)
    image = Image.fromarray(skdata.chelsea())
    ours, theirs = pre.transforms(image), preset(image)
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max() < 1e-5   # the same pixels as torchvision's own preset


def test_the_old_fixed_preprocessing_is_not_what_resnet50_asks_for():
    """The wrong answer the helper gave before: 256 / 224 bilinear for every name."""
    pre = models.load_pretrained("resnet50", weights=False)
    assert pre.transforms(Image.new("RGB", (500, 400))).shape == (3, 224, 224)
    assert models.weights_preprocessing("resnet50")["resize_size"] == 232 != 256


def test_lite_models_keep_their_own_evaluation_size():
    assert [models.weights_preprocessing(n)["crop_size"] for n in models.LITE_MODELS] == [224, 240, 260]
    assert models.load_pretrained("efficientnet_lite1", weights=False).transforms(
        Image.new("RGB", (300, 300))).shape == (3, 240, 240)
    # an explicit image_size keeps the weights' ratio of resize to crop
    assert models.load_pretrained("resnet50", weights=False, image_size=112).transforms.transforms[1].size == [116]
