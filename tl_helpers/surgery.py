"""Model surgery for fine-tuning: a model's stages, freezing (with BatchNorm done right), heads, and
parameter groups with their own learning rates.

>>> from torch import nn
>>> from tl_helpers.surgery import freeze, trainable_table, unfreeze
>>> net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
>>> [row["trainable"] for row in trainable_table(unfreeze(freeze(net), last=1))]
[0, 0, 10]
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision import models as tv_models

_BN = nn.modules.batchnorm._BatchNorm
FAMILIES = ("EfficientNet-Lite (efficientnet_lite0/1/2: head `_fc`)", "torchvision ResNet (head `fc`)",
            "torchvision MobileNet/EfficientNet/ConvNeXt (head `classifier[-1]`)",
            "torchvision ViT (head `heads.head`)", "an nn.Sequential ending in nn.Linear")


class _Stage(nn.Module):
    """A named group of existing modules and parameters (shared, not copied) seen as one stage."""

    def __init__(self, modules: dict[str, nn.Module], params: dict[str, nn.Parameter] | None = None):
        super().__init__()
        for name, module in modules.items():
            self.add_module(name, module)
        for name, param in (params or {}).items():
            self.register_parameter(name, param)

    def forward(self, x):  # pragma: no cover - a stage is for freezing and counting, not for calling
        raise NotImplementedError("A stage of model_blocks() groups modules; call the model instead.")


def _unknown(model: nn.Module, what: str) -> ValueError:
    return ValueError(
        f"{what} does not know the model {type(model).__name__}. Supported families: "
        f"{'; '.join(FAMILIES)}. For another model, replace the head by hand "
        "(e.g. model.my_head = nn.Linear(in_features, num_classes)) and pass the modules to freeze "
        "explicitly: freeze(model, modules=[...])."
    )


def model_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model as an ordered list of (name, stage), from the input to the output layer.

    "Freeze the first k blocks" means the first k entries of this list. Every parameter of the model
    belongs to exactly one stage. EfficientNet-Lite: ``stem``, ``blocks.0`` ... ``blocks.15``,
    ``head_conv``, ``classifier``; ResNet: ``stem``, ``layer1`` ... ``layer4``, ``fc``; torchvision
    MobileNet/EfficientNet/ConvNeXt: ``features.0`` ..., ``classifier``; ViT: ``conv_proj`` (with the
    class token and position embedding), ``encoder.layers.0`` ..., ``encoder.ln``, ``heads``; an
    ``nn.Sequential``: its children. Any other model raises a ValueError.

    >>> [name for name, _ in model_blocks(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Linear(4, 2)))]
    ['0', '1', '2']
    """
    if hasattr(model, "_blocks") and hasattr(model, "_conv_stem") and hasattr(model, "_fc"):
        return ([("stem", nn.Sequential(model._conv_stem, model._bn0))]
                + [(f"blocks.{i}", b) for i, b in enumerate(model._blocks)]
                + [("head_conv", nn.Sequential(model._conv_head, model._bn1)), ("classifier", model._fc)])
    if isinstance(model, tv_models.ResNet) or all(hasattr(model, a) for a in ("conv1", "bn1", "layer4", "fc")):
        return ([("stem", nn.Sequential(model.conv1, model.bn1))]
                + [(f"layer{i}", getattr(model, f"layer{i}")) for i in range(1, 5)] + [("fc", model.fc)])
    if isinstance(model, tv_models.VisionTransformer):
        enc = model.encoder
        stem = _Stage({"conv_proj": model.conv_proj},
                      {"class_token": model.class_token, "pos_embedding": enc.pos_embedding})
        return ([("conv_proj", stem)]
                + [(f"encoder.layers.{i}", layer) for i, layer in enumerate(enc.layers)]
                + [("encoder.ln", enc.ln), ("heads", model.heads)])
    features, classifier = getattr(model, "features", None), getattr(model, "classifier", None)
    if isinstance(features, nn.Sequential) and isinstance(classifier, nn.Module):
        return [(f"features.{n}", m) for n, m in features.named_children()] + [("classifier", classifier)]
    if isinstance(model, nn.Sequential):
        return list(model.named_children())
    raise _unknown(model, "model_blocks()")


def _select(model: nn.Module, modules, first: int | None, last: int | None) -> list[nn.Module]:
    """The modules named by ``modules`` (module, name or list of them) and/or the ``first`` or ``last`` stages."""
    chosen: list[nn.Module] = []
    if modules is not None:
        items = modules if isinstance(modules, (list, tuple)) else [modules]
        if any(isinstance(m, int) for m in items):
            raise TypeError(f"modules={modules!r}: to count stages, say from which end: first=k (from the input) "
                            "or last=k (from the head), e.g. freeze(model, first=3).")
        chosen += [model.get_submodule(m) if isinstance(m, str) else m for m in items]
    if first is not None and last is not None:
        raise ValueError(f"first={first} and last={last}: give one of them (first counts stages from the input, "
                         "last from the head).")
    if first is not None or last is not None:
        stages = [stage for _, stage in model_blocks(model)]
        k, name = (first, "first") if first is not None else (last, "last")
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= len(stages):
            raise ValueError(f"{name}={k!r}, but the model has {len(stages)} stages: give a whole number from 0 to "
                             f"{len(stages)} (see model_blocks(model)).")
        chosen += stages[:k] if first is not None else stages[len(stages) - k:]
    if modules is None and first is None and last is None:
        chosen = [model]
    return chosen


def freeze(model: nn.Module, modules=None, *, first: int | None = None, last: int | None = None,
           bn_eval: bool = True) -> nn.Module:
    """Stop training part of a model: ``requires_grad=False`` on its parameters, BatchNorm frozen too.

    The part is ``modules`` (a module, a dotted name, or a list of them), or stages of
    :func:`model_blocks`: ``first=k`` the k nearest the input (the usual "freeze the bottom k"),
    ``last=k`` the k nearest the head; with none of them, the whole model. A frozen BatchNorm still *changes* in training mode: its running mean and variance follow each
    batch even without gradients. With ``bn_eval=True`` (the default) every BatchNorm in the frozen
    part is put in eval mode and marked (``_tl_frozen = True``) so that :func:`train_mode` keeps it
    there and its statistics never change. Works in place and returns the model.

    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))
    >>> _ = freeze(net, first=2)
    >>> net[0].weight.requires_grad, net[1].training, train_mode(net)[1].training
    (False, False, False)
    """
    for part in _select(model, modules, first, last):
        for p in part.parameters():
            p.requires_grad_(False)
        if bn_eval:
            for m in part.modules():
                if isinstance(m, _BN):
                    m._tl_frozen = True
                    m.eval()
    return model


def unfreeze(model: nn.Module, modules=None, *, first: int | None = None, last: int | None = None) -> nn.Module:
    """Train part of a model again: the reverse of :func:`freeze`.

    ``last=k`` means the k stages of :func:`model_blocks` nearest the head (the usual "unfreeze the top
    k"), ``first=k`` the k nearest the input, ``modules`` those modules; no argument unfreezes the
    whole model. BatchNorm marks are removed and
    those layers follow the model's mode again (call :func:`set_bn_eval` afterwards to keep every
    BatchNorm in inference mode, the Keras recipe).

    >>> net = freeze(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)))
    >>> _ = unfreeze(net, last=1)
    >>> net[0].weight.requires_grad, net[1].weight.requires_grad
    (False, True)
    """
    for part in _select(model, modules, first, last):
        for p in part.parameters():
            p.requires_grad_(True)
        for m in part.modules():
            if isinstance(m, _BN) and getattr(m, "_tl_frozen", False):
                del m._tl_frozen
                m.train(model.training)
    return model


def train_mode(model: nn.Module) -> nn.Module:
    """``model.train()``, then every BatchNorm marked by :func:`freeze` or :func:`set_bn_eval` back to eval.

    Why: ``model.train()`` sets *every* submodule to training mode, including the BatchNorm layers
    you froze, and a BatchNorm in training mode normalises with the batch statistics and updates its
    running mean and variance even when its parameters have ``requires_grad=False``. The "frozen"
    backbone then drifts (pytorch/tutorials#449). Call ``train_mode(model)`` wherever you would call
    ``model.train()``; :func:`tl_helpers.train.fit` does.

    >>> net = set_bn_eval(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)))
    >>> net.train()[1].training, train_mode(net)[1].training
    (True, False)
    """
    model.train()
    for m in model.modules():
        if getattr(m, "_tl_frozen", False):
            m.eval()
    return model


def set_bn_eval(model: nn.Module) -> nn.Module:
    """Every BatchNorm in eval mode, for good: the "BatchNorm in inference mode" recipe of Keras.

    The layers keep their ``requires_grad`` (their scale and shift can still learn) but normalise with
    the pretrained running statistics and never update them. They are marked like frozen ones, so
    :func:`train_mode` (and ``fit``) keep them in eval mode; :func:`unfreeze` removes the mark.

    >>> set_bn_eval(nn.Sequential(nn.BatchNorm1d(2)))[0].training
    False
    """
    for m in model.modules():
        if isinstance(m, _BN):
            m._tl_frozen = True
            m.eval()
    return model


def get_head(model: nn.Module) -> tuple[str, nn.Module]:
    """(dotted name, module) of the model's final classification layer.

    EfficientNet-Lite ``_fc``, ResNet ``fc``, MobileNet/EfficientNet/ConvNeXt ``classifier.<last>``,
    ViT ``heads.head``, an ``nn.Sequential`` its last child if that is an ``nn.Linear``.

    >>> from tl_helpers.models import load_pretrained
    >>> get_head(load_pretrained("resnet18", weights=False).model)
    ('fc', Linear(in_features=512, out_features=1000, bias=True))
    """
    if hasattr(model, "_blocks") and hasattr(model, "_fc"):
        return "_fc", model._fc
    if isinstance(model, tv_models.ResNet) or all(hasattr(model, a) for a in ("conv1", "layer4", "fc")):
        return "fc", model.fc
    if isinstance(model, tv_models.VisionTransformer):
        return "heads.head", model.heads.head
    classifier = getattr(model, "classifier", None)
    if isinstance(getattr(model, "features", None), nn.Sequential) and classifier is not None:
        if isinstance(classifier, nn.Sequential):
            name = list(classifier._modules)[-1]
            return f"classifier.{name}", classifier[-1]
        return "classifier", classifier
    if isinstance(model, nn.Sequential) and len(model) and isinstance(model[-1], (nn.Linear, nn.Identity)):
        return list(model._modules)[-1], model[-1]
    raise _unknown(model, "get_head()")


def make_head(in_features: int, num_classes: int, hidden: int | list[int] | None = None,
              dropout: float = 0.0) -> nn.Module:
    """A classification head: Linear; Dropout + Linear; or an MLP with ReLU (``hidden`` sizes).

    >>> make_head(1280, 8, dropout=0.2)
    Sequential(
      (0): Dropout(p=0.2, inplace=False)
      (1): Linear(in_features=1280, out_features=8, bias=True)
    )
    >>> make_head(16, 3, hidden=8)(torch.zeros(2, 16)).shape
    torch.Size([2, 3])
    """
    sizes = [hidden] if isinstance(hidden, int) else list(hidden or [])
    layers: list[nn.Module] = []
    width = in_features
    for h in sizes:
        if dropout:
            layers.append(nn.Dropout(dropout))
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(width, num_classes))
    return layers[0] if len(layers) == 1 else nn.Sequential(*layers)


def replace_head(model: nn.Module, num_classes: int | None, head: nn.Module | None = None) -> nn.Module:
    """Put a new classification layer on ``model`` (in place) and return the model.

    ``head=None``: a new ``nn.Linear(in_features, num_classes)``; a given module is used as is
    (``head=nn.Identity()`` makes the model output its pooled features). The new head goes on the
    device of the old one. Unsupported models raise a ValueError naming the supported families.

    >>> from tl_helpers.models import load_pretrained
    >>> model = replace_head(load_pretrained("resnet18", weights=False).model, 8)
    >>> model(torch.zeros(1, 3, 32, 32)).shape
    torch.Size([1, 8])
    """
    name, old = get_head(model)
    in_features = getattr(old, "in_features", None)
    if head is None:
        if in_features is None:
            raise ValueError(f"The current head '{name}' ({type(old).__name__}) does not say its input "
                             "size; pass head=nn.Linear(in_features, num_classes) yourself.")
        if num_classes is None:
            raise ValueError("replace_head() needs num_classes when no head is given.")
        head = nn.Linear(in_features, num_classes)
    elif isinstance(head, nn.Identity) and in_features is not None:
        head.in_features = in_features  # so a later replace_head(model, n) still knows the size
    ref = next(old.parameters(), None)
    if ref is not None:
        head = head.to(ref.device)
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, head)
    return model


def _no_decay(p: torch.Tensor) -> bool:
    """BatchNorm/LayerNorm scales and shifts and every bias: the 1-D parameters, kept out of weight decay."""
    return p.ndim <= 1


def param_groups(model: nn.Module, head_lr: float, backbone_lr: float, decay: float | None = None,
                 weight_decay: float = 0.0) -> list[dict]:
    """Optimizer parameter groups with discriminative learning rates.

    The last stage of :func:`model_blocks` (the classifier) is the head and gets ``head_lr``. The other
    stages get ``backbone_lr``; with ``decay`` (e.g. 0.7) the stage just below the head gets
    ``backbone_lr``, the next one ``backbone_lr * decay``, then ``* decay**2``... so layers near the
    input, which hold the most generic features, move least. Only trainable parameters are included
    (freeze first, then build the optimizer); empty groups are dropped. Each group has a ``name``.

    With ``weight_decay`` > 0 each group is split in two: its weight matrices and convolution kernels
    decay, while its BatchNorm scales/shifts and biases (the 1-D parameters) go to a twin group named
    ``<name>.no_decay`` with weight decay 0. Pulling a BatchNorm scale or a bias towards zero is no
    regulariser, it only fights the pretrained values (the convention of timm and fastai). Every group
    carries its ``weight_decay`` explicitly, so the default ``weight_decay=0.0`` switches weight decay off
    even in ``torch.optim.AdamW`` (whose own default is 0.01): pass the value you want.

    >>> net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.Linear(4, 2))
    >>> [(g["name"], g["lr"]) for g in param_groups(net, 1e-2, 1e-3, decay=0.5)]
    [('head', 0.01), ('2', 0.001), ('0', 0.0005)]
    >>> [(g["name"], g["weight_decay"]) for g in param_groups(net, 1e-2, 1e-3, weight_decay=0.01)]
    [('head', 0.01), ('head.no_decay', 0.0), ('backbone', 0.01), ('backbone.no_decay', 0.0)]
    """
    stages = model_blocks(model)
    named = [("head", [p for p in stages[-1][1].parameters() if p.requires_grad], head_lr)]
    backbone = [(n, [p for p in s.parameters() if p.requires_grad]) for n, s in stages[:-1]]
    backbone = [(n, ps) for n, ps in backbone if ps][::-1]  # nearest to the head first
    if decay is None:
        named.append(("backbone", [p for _, ps in backbone[::-1] for p in ps], backbone_lr))
    else:
        named += [(n, ps, backbone_lr * decay ** distance) for distance, (n, ps) in enumerate(backbone)]
    groups = []
    for name, params, lr in named:
        if weight_decay > 0:
            groups.append({"params": [p for p in params if not _no_decay(p)], "lr": lr,
                           "weight_decay": weight_decay, "name": name})
            groups.append({"params": [p for p in params if _no_decay(p)], "lr": lr, "weight_decay": 0.0,
                           "name": f"{name}.no_decay"})
        else:
            groups.append({"params": params, "lr": lr, "weight_decay": 0.0, "name": name})
    return [g for g in groups if g["params"]]


def trainable_table(model: nn.Module) -> list[dict]:
    """One row per stage of :func:`model_blocks`: name, params, trainable, frozen (parameter counts).

    >>> trainable_table(freeze(nn.Sequential(nn.Linear(2, 2))))
    [{'name': '0', 'params': 6, 'trainable': 0, 'frozen': 6}]
    """
    rows = []
    for name, stage in model_blocks(model):
        total = sum(p.numel() for p in stage.parameters())
        trainable = sum(p.numel() for p in stage.parameters() if p.requires_grad)
        rows.append({"name": name, "params": total, "trainable": trainable, "frozen": total - trainable})
    return rows
