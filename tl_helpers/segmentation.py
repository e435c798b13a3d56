"""Dense prediction with a pretrained backbone: composite data with free masks, the Lite encoder's
multi-scale feature maps, a light U-Net-style decoder (:class:`SkipDecoder`), IoU and Dice per image and over a
data set, boxes from masks, and mask overlays.

>>> from tl_helpers.segmentation import CompositeDataset, LiteEncoder, SkipDecoder
>>> from tl_helpers.models import load_pretrained
>>> data = CompositeDataset(4, split="val", size=64, seed=0)
>>> x, m = data[0]
>>> tuple(x.shape), tuple(m.shape)
((3, 64, 64), (1, 64, 64))
>>> encoder = LiteEncoder(load_pretrained("efficientnet_lite0").model)
>>> [tuple(f.shape[1:]) for f in encoder(x[None])]
[(16, 32, 32), (24, 16, 16), (40, 8, 8), (112, 4, 4), (320, 2, 2)]
>>> SkipDecoder(encoder.channels)(encoder(x[None])).shape
torch.Size([1, 1, 64, 64])
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from tl_helpers.evaluate import mean_interval

SPLITS = ("train", "val", "test")
LITE_MEAN = (0.5, 0.5, 0.5)   # what the Lite encoders expect (tl_helpers.models.LITE_MEAN/STD)
LITE_STD = (0.5, 0.5, 0.5)

# Background photos from scikit-image, a disjoint set for each split, so no test image shows a photo
# (or a cut-out: see the cut-outs' manifest) that training saw.
PHOTOS = {
    "train": ("astronaut", "coffee", "rocket", "immunohistochemistry", "brick", "grass", "camera", "page"),
    "val": ("chelsea", "hubble_deep_field", "gravel", "moon"),
    "test": ("stereo_motorcycle", "retina", "coins", "clock"),
}
BACKGROUNDS = ("photo", "plain", "noise")


# --------------------------------------------------------------------------------------------------
# Data: cut-outs with an alpha channel, pasted onto backgrounds; the alpha is the mask.
# --------------------------------------------------------------------------------------------------

def cutouts_root() -> Path:
    """Folder of the RGBA cut-outs shipped with the package (made by ``scripts/build_cutouts.py``)."""
    return Path(str(resources.files("tl_helpers") / "assets" / "cutouts"))


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: choose one of {', '.join(SPLITS)}.")


def load_cutouts(split: str = "train", root: Path | None = None) -> list[np.ndarray]:
    """The cut-outs of one split as RGBA uint8 arrays (H, W, 4), in file-name order.

    >>> cuts = load_cutouts("val")
    >>> len(cuts) > 20, cuts[0].dtype, cuts[0].shape[2]
    (True, dtype('uint8'), 4)
    """
    _check_split(split)
    root = root or cutouts_root()
    manifest = root / "manifest.csv"
    if not manifest.exists():
        raise FileNotFoundError(f"{manifest} is missing: reinstall the course package (pip install -e .), "
                                "or rebuild the cut-outs with scripts/build_cutouts.py.")
    with open(manifest, newline="") as f:
        files = [row["file"] for row in csv.DictReader(f) if row["split"] == split]
    out = []
    for name in sorted(files):
        with Image.open(root / name) as img:
            out.append(np.asarray(img.convert("RGBA")))
    return out


def load_photos(split: str = "train") -> list[np.ndarray]:
    """The background photos of one split (scikit-image's sample data, offline) as RGB uint8 arrays.

    >>> [p.shape[2] for p in load_photos("test")]
    [3, 3, 3, 3]
    """
    _check_split(split)
    from skimage import data as skdata

    photos = []
    for name in PHOTOS[split]:
        img = getattr(skdata, name)()
        if isinstance(img, tuple):       # stereo_motorcycle: (left, right, disparity)
            img = img[0]
        img = np.asarray(img)
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        photos.append(img[..., :3].astype(np.uint8))
    return photos


def _background(rng: np.random.Generator, photos: Sequence[np.ndarray], size: int, kind: str) -> np.ndarray:
    """A size x size RGB float array in [0, 255]: a tinted photo crop, a plain colour, or smooth noise."""
    if kind == "photo":
        photo = photos[rng.integers(len(photos))]
        h, w = photo.shape[:2]
        side = int(rng.integers(min(h, w) // 4, min(h, w) + 1))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = Image.fromarray(photo[top:top + side, left:left + side]).resize((size, size), Image.Resampling.BILINEAR)
        out = np.asarray(crop, dtype=np.float32) * rng.uniform(0.6, 1.2, size=3)
        return out[:, ::-1] if rng.random() < 0.5 else out
    colour = rng.uniform(0, 255, size=3)
    if kind == "plain":
        return np.broadcast_to(colour, (size, size, 3)).astype(np.float32) + rng.normal(0, 3, (size, size, 3))
    coarse = rng.normal(0, 1, (int(rng.integers(2, 9)),) * 2 + (3,))
    smooth = np.stack([np.asarray(Image.fromarray(coarse[..., c].astype(np.float32)).resize(
        (size, size), Image.Resampling.BICUBIC)) for c in range(3)], axis=2)
    return colour + 60 * smooth + rng.normal(0, rng.uniform(2, 25), (size, size, 3))


def make_composite(rng: np.random.Generator, cutouts: Sequence[np.ndarray], photos: Sequence[np.ndarray],
                   size: int = 96, background: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One image and its mask: 1 or 2 cut-outs pasted on a background at random places and scales.

    The background is a photo crop (60 %), a plain colour (20 %) or smooth noise (20 %), unless
    ``background`` names one. Each cut-out is scaled so its longer side is 30-80 % of ``size``, maybe
    mirrored, and may stick out of the image by up to a fifth of its size. The image is alpha-blended;
    the mask is where a cut-out's alpha is at least 128. Returns (uint8 (size, size, 3), bool (size, size)).

    >>> img, mask = make_composite(np.random.default_rng(0), load_cutouts("val"), load_photos("val"), 48)
    >>> img.shape, img.dtype, mask.shape, bool(0 < mask.mean() < 1)
    ((48, 48, 3), dtype('uint8'), (48, 48), True)
    """
    kind = background or BACKGROUNDS[rng.choice(3, p=[0.6, 0.2, 0.2])]
    canvas = _background(rng, photos, size, kind)
    mask = np.zeros((size, size), dtype=bool)
    for _ in range(1 if rng.random() < 0.7 else 2):
        cut = Image.fromarray(cutouts[rng.integers(len(cutouts))])
        longer = max(2, round(size * rng.uniform(0.3, 0.8)))
        scale = longer / max(cut.size)
        w, h = max(2, round(cut.width * scale)), max(2, round(cut.height * scale))
        rgba = np.asarray(cut.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)
        if rng.random() < 0.5:
            rgba = rgba[:, ::-1]
        left = int(rng.integers(-w // 5, size - w + w // 5 + 1))
        top = int(rng.integers(-h // 5, size - h + h // 5 + 1))
        # the part of the cut-out that lands inside the canvas
        y0, x0, y1, x1 = max(top, 0), max(left, 0), min(top + h, size), min(left + w, size)
        piece = rgba[y0 - top:y1 - top, x0 - left:x1 - left]
        alpha = piece[..., 3:] / 255.0
        canvas[y0:y1, x0:x1] = alpha * piece[..., :3] + (1 - alpha) * canvas[y0:y1, x0:x1]
        mask[y0:y1, x0:x1] |= piece[..., 3] >= 128
    return np.clip(canvas, 0, 255).round().astype(np.uint8), mask


def make_composites(n: int, split: str = "train", size: int = 96,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` composites of one split: (uint8 images (n, size, size, 3), bool masks (n, size, size)).

    Deterministic: the same (n, split, size, seed) always gives the same arrays, and the first k images
    of a larger set are the k images of a smaller one. Each split uses its own cut-outs and photos.

    >>> a, _ = make_composites(3, "val", 32, seed=1); b, _ = make_composites(2, "val", 32, seed=1)
    >>> bool((a[:2] == b).all())
    True
    """
    _check_split(split)
    cutouts, photos = load_cutouts(split), load_photos(split)
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    masks = np.empty((n, size, size), dtype=bool)
    for i in range(n):
        images[i], masks[i] = make_composite(rng, cutouts, photos, size)
    return images, masks


class CompositeDataset(Dataset):
    """``n`` composite images of a split with their masks, made once in memory (see :func:`make_composites`).

    An item is (float image (3, size, size) normalised with ``mean``/``std``, float mask (1, size, size)
    of 0 and 1). ``images`` (uint8, N x H x W x 3) and ``masks`` (bool, N x H x W) hold the raw arrays.

    >>> data = CompositeDataset(2, "test", size=32)
    >>> len(data), data.images.shape, float(data[0][1].max())
    (2, (2, 32, 32, 3), 1.0)
    """

    def __init__(self, n: int, split: str = "train", size: int = 96, seed: int = 0,
                 mean: Sequence[float] = LITE_MEAN, std: Sequence[float] = LITE_STD):
        self.split, self.size, self.seed = split, size, seed
        self.images, self.masks = make_composites(n, split, size, seed)
        self.mean, self.std = tuple(mean), tuple(std)
        x = torch.from_numpy(self.images).permute(0, 3, 1, 2).float() / 255
        self.x = (x - torch.tensor(self.mean)[:, None, None]) / torch.tensor(self.std)[:, None, None]
        self.y = torch.from_numpy(self.masks)[:, None].float()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


# --------------------------------------------------------------------------------------------------
# The encoder: the classifier's feature maps at every scale.
# --------------------------------------------------------------------------------------------------

def downsampling_ends(model: nn.Module) -> list[int]:
    """Indices of the Lite blocks whose output is the last map at its resolution (the next block
    downsamples, or it is the last block). For Lite0: blocks 0, 2, 4, 10 and 15.

    >>> from tl_helpers.models import load_pretrained
    >>> downsampling_ends(load_pretrained("efficientnet_lite0", weights=False).model)
    [0, 2, 4, 10, 15]
    """
    if not all(hasattr(model, a) for a in ("_conv_stem", "_bn0", "_blocks")):
        raise ValueError(f"{type(model).__name__} is not an EfficientNet-Lite model (no _conv_stem/_bn0/_blocks): "
                         "load one with tl_helpers.models.load_pretrained('efficientnet_lite0').")
    strides = [int(np.prod(b._block_args.stride)) if isinstance(b._block_args.stride, (list, tuple))
               else int(b._block_args.stride) for b in model._blocks]
    last = len(strides) - 1
    return [i for i in range(len(strides)) if i == last or strides[i + 1] > 1]


class LiteEncoder(nn.Module):
    """An EfficientNet-Lite classifier as a segmentation encoder: returns the feature map just before
    each downsampling (strides 2, 4, 8, 16, 32; for Lite0 16, 24, 40, 112 and 320 channels).

    It *shares* the model's stem and blocks (no copy): training the encoder trains the model. The
    classifier's last 1x1 convolution and ``_fc`` are not used. As in the model's own forward pass,
    drop-connect (stochastic depth) is active in training mode.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.keep = downsampling_ends(model)
        self.stem = nn.Sequential(model._conv_stem, model._bn0, model._swish)
        self.blocks = model._blocks
        self.drop_connect_rate = float(model._global_params.drop_connect_rate or 0.0)
        self.channels = [int(model._blocks[i]._block_args.output_filters) for i in self.keep]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        maps = []
        for i, block in enumerate(self.blocks):
            x = block(x, drop_connect_rate=self.drop_connect_rate * i / len(self.blocks))
            if i in self.keep:
                maps.append(x)
        return maps


# --------------------------------------------------------------------------------------------------
# The decoder: upsample, concatenate the skip, convolve.
# --------------------------------------------------------------------------------------------------

class UpBlock(nn.Module):
    """Upsample ``x`` to the skip's size, concatenate the skip, then 3x3 convolution, BatchNorm, ReLU.

    >>> UpBlock(8, 4, 6)(torch.zeros(1, 8, 3, 3), torch.zeros(1, 4, 6, 6)).shape
    torch.Size([1, 6, 6, 6])
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels + skip_channels, out_channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return F.relu(self.bn(self.conv(torch.cat([x, skip], dim=1))))


class SkipDecoder(nn.Module):
    """A light U-Net-style decoder over the encoder's maps (finest first, as :class:`LiteEncoder` returns them).

    U-Net's idea (upsample, concatenate the skip connection from the encoder, convolve), built lighter than
    Ronneberger et al.'s U-Net or segmentation_models_pytorch's ``Unet``: one 3x3 convolution per level
    instead of two, a 1x1 "lateral" convolution on the deepest map (as in a feature pyramid network), and
    logits at the finest map's resolution, upsampled bilinearly (as smp's ``FPN`` head does), not computed at
    full resolution. The deepest map goes to ``widths[-1]`` channels; then, from deep to fine, each
    :class:`UpBlock` upsamples, concatenates the next skip and convolves to ``widths[k]``; a 1x1 convolution
    gives ``out_channels`` logits at the finest map's stride, upsampled by ``scale`` to the input size (with
    Lite's five maps and ``scale=2``: stride 2; chapter 11 leaves out the stride-2 map and uses ``scale=4``).

    >>> dec = SkipDecoder([4, 8], widths=(6,))
    >>> dec([torch.zeros(2, 4, 8, 8), torch.zeros(2, 8, 4, 4)]).shape
    torch.Size([2, 1, 16, 16])
    """

    def __init__(self, channels: Sequence[int] = (16, 24, 40, 112, 320),
                 widths: Sequence[int] = (16, 24, 32, 48), out_channels: int = 1, scale: int = 2):
        super().__init__()
        channels = list(channels)
        if len(widths) != len(channels) - 1:
            raise ValueError(f"{len(channels)} encoder maps need {len(channels) - 1} widths, got {len(widths)}.")
        self.lateral = nn.Conv2d(channels[-1], widths[-1], 1)
        ins = [widths[-1]] + list(widths[:0:-1])                # what arrives from below at each level
        self.ups = nn.ModuleList(UpBlock(i, s, o) for i, s, o in zip(ins, channels[-2::-1], widths[::-1]))
        self.head = nn.Conv2d(widths[0], out_channels, 1)
        self.scale = scale

    def forward(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        x = self.lateral(maps[-1])
        for up, skip in zip(self.ups, list(maps[-2::-1])):
            x = up(x, skip)
        x = self.head(x)
        return F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)


class Segmenter(nn.Module):
    """Encoder then decoder: images in, mask logits (N, 1, H, W) out.

    >>> net = Segmenter(nn.Identity(), lambda x: x.mean(1, keepdim=True))
    >>> net(torch.ones(1, 3, 4, 4)).shape
    torch.Size([1, 1, 4, 4])
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


@torch.no_grad()
def encode(encoder: nn.Module, images: torch.Tensor, batch_size: int = 64) -> list[torch.Tensor]:
    """The encoder's maps for every image (in eval mode, no gradients), concatenated over batches.

    The frozen encoder gives the same maps at every epoch, so compute them once and train the decoder
    on them: chapter 02's cached features, one tensor per scale.

    >>> [m.shape for m in encode(lambda x: [x, x[:, :, ::2, ::2]], torch.zeros(5, 1, 4, 4), batch_size=2)]
    [torch.Size([5, 1, 4, 4]), torch.Size([5, 1, 2, 2])]
    """
    if isinstance(encoder, nn.Module):
        encoder.eval()
    parts = [encoder(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
    return [torch.cat([p[k] for p in parts]) for k in range(len(parts[0]))]


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> nn.Module:
    """Re-estimate every BatchNorm's running mean and variance on ``images``; weights are untouched.

    A network with random weights has the running statistics of a fresh BatchNorm (mean 0, variance 1),
    which match nothing: in eval mode its activations shrink or grow layer after layer. Measuring the
    statistics on some (unlabelled) images gives it a fair start. The statistics are the exact average
    over all batches (``momentum=None``). Only the BatchNorm layers are put in training mode: dropout and
    EfficientNet's drop-connect stay off, so the statistics are those of the network that eval mode runs.
    The model is left in eval mode.

    >>> net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    >>> y = calibrate_batchnorm(net, 5 + torch.randn(8, 1, 4, 4))(5 + torch.randn(8, 1, 4, 4))
    >>> abs(float(y.mean().detach())) < 0.5, net.training
    (True, False)
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    for i in range(0, len(images), batch_size):
        model(images[i:i + batch_size])
    for m, momentum in zip(bns, momenta):
        m.momentum = momentum
    return model.eval()


def weights_fingerprint(model: nn.Module) -> str:
    """A short hash of a model's weights and buffers, to key caches of its outputs.

    >>> len(weights_fingerprint(nn.Linear(2, 2)))
    16
    """
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------------------
# Metrics and losses
# --------------------------------------------------------------------------------------------------

def _binary(masks) -> torch.Tensor:
    masks = torch.as_tensor(np.asarray(masks)) if not isinstance(masks, torch.Tensor) else masks
    return masks.bool().flatten(1) if masks.ndim > 1 else masks.bool()[None]


def iou(pred, target) -> torch.Tensor:
    """Intersection over union of binary masks, one value per image (batch first; 1.0 when both are empty).

    Their mean over a data set weighs every image alike; benchmarks sum over the data set first
    (:func:`dataset_iou`). Per image, Dice = 2 IoU / (1 + IoU) ranks two predictions as IoU does; for means
    over several images it need not: IoUs (0.5, 0.5) have the lower mean IoU (0.500 < 0.525) but the higher
    mean Dice (0.667 > 0.548) than IoUs (1.0, 0.05).

    >>> a = torch.tensor([[[1, 1], [0, 0]]]); b = torch.tensor([[[1, 0], [0, 0]]])
    >>> iou(a, b)
    tensor([0.5000])
    """
    p, t = _binary(pred), _binary(target)
    if p.shape != t.shape:
        raise ValueError(f"Masks of different shapes: {tuple(p.shape)} and {tuple(t.shape)}.")
    inter, union = (p & t).sum(1).float(), (p | t).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def dataset_iou(pred, target, include_background: bool = False) -> float:
    """IoU over the whole data set: intersections and unions summed over all images first, then divided.

    Benchmarks score segmentation this way (Pascal VOC, torchvision's segmentation references and Keras'
    ``MeanIoU`` accumulate a confusion matrix over the data set), so a large object weighs more than a small
    one; the mean of per-image IoUs (:func:`iou`) weighs every image alike. The two are different numbers
    and are not comparable. ``include_background=True`` gives the mean over the two classes (background and
    foreground) of their data-set IoUs: VOC's mean IoU for a two-class problem.

    >>> a = torch.tensor([[[1, 1], [0, 0]], [[1, 0], [0, 0]]]); b = torch.tensor([[[1, 0], [0, 0]], [[1, 0], [0, 0]]])
    >>> iou(a, b).mean().item(), dataset_iou(a, b), round(dataset_iou(a, b, include_background=True), 4)
    (0.75, 0.6666666666666666, 0.75)
    """
    p, t = _binary(pred), _binary(target)
    if p.shape != t.shape:
        raise ValueError(f"Masks of different shapes: {tuple(p.shape)} and {tuple(t.shape)}.")
    foreground = float((p & t).sum()) / max(float((p | t).sum()), 1.0)
    if not include_background:
        return foreground
    background = float((~p & ~t).sum()) / max(float((~p | ~t).sum()), 1.0)
    return (foreground + background) / 2


def mask_to_box(mask) -> tuple[int, int, int, int] | None:
    """The smallest box (x0, y0, x1, y1) around a mask's foreground, x1 and y1 exclusive (as ``mask[y0:y1,
    x0:x1]`` slices it); ``None`` for an empty mask.

    >>> m = np.zeros((4, 5), dtype=bool); m[1:3, 2:4] = True
    >>> mask_to_box(m), mask_to_box(np.zeros((2, 2), dtype=bool))
    ((2, 1, 4, 3), None)
    """
    ys, xs = np.nonzero(np.asarray(mask))
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def box_iou(a: tuple[int, int, int, int] | None, b: tuple[int, int, int, int] | None) -> float:
    """IoU of two boxes (x0, y0, x1, y1), exclusive ends; 1.0 when both are missing, 0.0 when one is.

    >>> box_iou((0, 0, 2, 2), (1, 0, 3, 2)), box_iou(None, None), box_iou((0, 0, 1, 1), None)
    (0.3333333333333333, 1.0, 0.0)
    """
    if a is None or b is None:
        return 1.0 if a is None and b is None else 0.0
    w = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def dice(pred, target) -> torch.Tensor:
    """Dice coefficient (F1 of the pixels) of binary masks, one value per image (1.0 when both are empty).

    Dice = 2|A and B| / (|A| + |B|) = 2 IoU / (1 + IoU) for each image, so one image's two scores rank
    predictions alike; their *means* over a data set need not (see :func:`iou`).

    >>> a = torch.tensor([[[1, 1], [0, 0]]]); b = torch.tensor([[[1, 0], [0, 0]]])
    >>> dice(a, b)
    tensor([0.6667])
    """
    p, t = _binary(pred), _binary(target)
    if p.shape != t.shape:
        raise ValueError(f"Masks of different shapes: {tuple(p.shape)} and {tuple(t.shape)}.")
    inter, total = (p & t).sum(1).float(), (p.sum(1) + t.sum(1)).float()
    return torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total))


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - Dice computed on probabilities (differentiable), averaged over the batch.

    >>> round(float(soft_dice_loss(torch.full((1, 1, 2, 2), 20.0), torch.ones(1, 1, 2, 2))), 4)
    0.0
    """
    p, t = torch.sigmoid(logits).flatten(1), target.flatten(1)
    return (1 - (2 * (p * t).sum(1) + eps) / (p.sum(1) + t.sum(1) + eps)).mean()


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): Student-t confidence interval of the mean of a few values (seeds, splits).

    With 3 values the half-width is 4.3 standard errors: few seeds give wide intervals, honestly.

    >>> t_interval([1.0, 2.0, 3.0])
    (2.0, -0.48..., 4.48...)
    """
    if len(values) < 2:
        raise ValueError("A t-interval needs at least two values (run at least two seeds).")
    return mean_interval(values, confidence)


# --------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------

def overlay(image: np.ndarray, mask: np.ndarray, color: Sequence[float] = (1.0, 0.1, 0.6),
            alpha: float = 0.5) -> np.ndarray:
    """``image`` (H, W, 3; uint8 or floats in [0, 1]) with ``mask`` tinted in ``color``: floats in [0, 1].

    >>> overlay(np.zeros((2, 2, 3), np.uint8), np.eye(2, dtype=bool))[0, 0]
    array([0.5 , 0.05, 0.3 ])
    """
    img = np.asarray(image, dtype=float)
    img = img / 255 if img.max() > 1 else img
    out = img.copy()
    m = np.asarray(mask, dtype=bool)
    out[m] = (1 - alpha) * img[m] + alpha * np.asarray(color, dtype=float)
    return out


def _contour(ax, mask: np.ndarray, color: str) -> None:
    if mask.any() and not mask.all():
        ax.contour(mask.astype(float), levels=[0.5], colors=[color], linewidths=1.2)


def mask_overlay_grid(images: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                      preds: Sequence[np.ndarray] | None = None, titles: Sequence[str] | None = None,
                      ncols: int = 6, size: float = 1.7) -> Figure:
    """Images with their masks: the prediction tinted (magenta), the true mask's outline in yellow.

    Without ``preds`` the true mask itself is tinted. Returns the Figure.

    >>> fig = mask_overlay_grid([np.zeros((8, 8, 3), np.uint8)] * 2, [np.eye(8, dtype=bool)] * 2, titles=["a", "b"])
    >>> [ax.get_title() for ax in fig.axes[:2]]
    ['a', 'b']
    """
    n = len(images)
    ncols = min(ncols, max(n, 1))
    nrows = max(1, -(-n // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows * 1.12), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= n:
            continue
        truth = np.asarray(masks[i], dtype=bool)
        shown = truth if preds is None else np.asarray(preds[i], dtype=bool)
        ax.imshow(overlay(images[i], shown))
        if preds is not None:
            _contour(ax, truth, "yellow")
        if titles:
            ax.set_title(titles[i], fontsize=8)
    fig.tight_layout()
    return fig
