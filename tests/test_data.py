"""Behaviour of tl_helpers.data: the shipped dataset, its split, transforms and the feature cache."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Subset

from tl_helpers import data


def test_dataset_is_shipped_complete_and_small():
    root = data.clipart_root()
    rows = data.read_manifest(root)
    assert len(rows) == 497
    assert sorted({r["class"] for r in rows}) == data.clipart_dataset().classes
    total = 0
    for row in rows:
        blob = (root / row["file"]).read_bytes()
        assert hashlib.sha256(blob).hexdigest() == row["sha256"], row["file"]
        total += len(blob)
    assert total < 10_000_000, "the dataset must stay under 10 MB"
    assert "CC0" in (root / "CREDITS.md").read_text()


def test_fixed_split_is_stratified_disjoint_and_complete():
    dataset = data.clipart_dataset()
    parts = data.split_indices(dataset)
    sets = {k: set(v) for k, v in parts.items()}
    assert not (sets["train"] & sets["val"] or sets["train"] & sets["test"] or sets["val"] & sets["test"])
    assert sum(len(s) for s in sets.values()) == len(dataset)
    overall = Counter(dataset.targets)
    test_counts = Counter(dataset.targets[i] for i in parts["test"])
    for c, n in overall.items():
        assert abs(test_counts[c] / len(parts["test"]) - n / len(dataset)) < 0.02


def test_seeded_split_is_deterministic_and_differs_between_seeds():
    dataset = data.clipart_dataset()
    a, b = data.split_indices(dataset, seed=3), data.split_indices(dataset, seed=3)
    assert a == b
    assert a["test"] != data.split_indices(dataset, seed=4)["test"]
    fixed = [len(data.split_indices(dataset)[k]) for k in data.SPLITS]
    assert all(abs(len(a[k]) - n) <= 3 for k, n in zip(data.SPLITS, fixed)), "whole groups: sizes may move by a few"


@pytest.mark.parametrize("seed", [None, *range(10)])
def test_no_near_duplicate_group_straddles_two_parts(seed):
    """The fixed split and seeds 0-9: every group of near-duplicates lies in one part, and 33 groups did not
    before groups existed (the plain stratified split), so the test would catch a return to it."""
    from tl_helpers.groups import straddling_groups

    dataset = data.clipart_dataset()
    groups = [int(g) for g in data.manifest_column(dataset, "group")]
    parts = data.split_indices(dataset, seed=seed)
    part_of = {i: k for k, idx in parts.items() for i in idx}
    assert straddling_groups([part_of[i] for i in range(len(dataset))], groups) == []
    assert len(set(groups)) < len(dataset) - 50, "the manifest groups near-duplicates"


def test_plain_stratified_split_would_leak_near_duplicates():
    from tl_helpers.groups import straddling_groups

    dataset = data.clipart_dataset()
    groups = [int(g) for g in data.manifest_column(dataset, "group")]
    parts = data.stratified_split(dataset.targets, seed=0)
    part_of = {i: k for k, idx in parts.items() for i in idx}
    assert len(straddling_groups([part_of[i] for i in range(len(dataset))], groups)) > 10


def test_manifest_split_matches_stratified_split_seed_0():
    dataset = data.clipart_dataset()
    assert data.split_indices(dataset) == data.split_indices(dataset, seed=0)


def test_clipart_splits_use_train_and_eval_transforms():
    splits = data.clipart_splits(data.eval_transform(32), data.train_transform(48))
    x, y = splits["train"][0]
    assert x.shape == (3, 48, 48) and isinstance(y, int)
    assert splits["test"][0][0].shape == (3, 32, 32)
    assert splits["val"].classes == splits["train"].classes


def test_bad_image_file_gives_a_clear_message(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not really a png")
    with pytest.raises(ValueError, match="broken.png.*delete it or replace it"):
        data.load_image(bad)


def test_loader_shuffles_repeatably():
    dataset = torch.utils.data.TensorDataset(torch.arange(20))
    first = [b[0].tolist() for b in data.make_loader(dataset, batch_size=5, train=True, seed=1)]
    again = [b[0].tolist() for b in data.make_loader(dataset, batch_size=5, train=True, seed=1)]
    assert first == again and first != [list(range(i, i + 5)) for i in range(0, 20, 5)]


class CountingNet(nn.Module):
    """A tiny backbone that counts how many batches it has seen."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.net(x)


def small_subset(size: int) -> Subset:
    return Subset(data.clipart_dataset(data.eval_transform(size)), list(range(0, 500, 50)))


def test_feature_cache_hits_on_rerun_and_misses_after_a_transform_change(tmp_path):
    torch.manual_seed(0)
    net = CountingNet()
    X1, y1 = data.extract_features(net, small_subset(32), cache=tmp_path, progress=False)
    assert X1.shape == (10, 4) and net.calls > 0
    net.calls = 0
    X2, y2 = data.extract_features(net, small_subset(32), cache=tmp_path, progress=False)
    assert net.calls == 0, "a rerun reads the cache"
    assert torch.equal(X1, X2) and torch.equal(y1, y2)
    data.extract_features(net, small_subset(40), cache=tmp_path, progress=False)
    assert net.calls > 0, "another transform recomputes"
    assert len(list(tmp_path.glob("*.pt"))) == 2


def test_feature_cache_misses_after_a_weight_change(tmp_path):
    net = CountingNet()
    data.extract_features(net, small_subset(32), cache=tmp_path, progress=False)
    with torch.no_grad():
        net.net[0].weight.add_(1.0)
    net.calls = 0
    data.extract_features(net, small_subset(32), cache=tmp_path, progress=False)
    assert net.calls > 0


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    from tl_helpers.runtime import cache_dir

    monkeypatch.setenv("TL_CACHE_DIR", str(tmp_path))
    assert cache_dir("features") == Path(tmp_path) / "features"
    assert (Path(tmp_path) / "features").is_dir()


def test_feature_cache_misses_for_another_structure_with_the_same_weights(tmp_path):
    """Average and max pooling have the same state_dict: the key must tell the two models apart."""
    torch.manual_seed(0)
    avg = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    top = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveMaxPool2d(1), nn.Flatten())
    top.load_state_dict(avg.state_dict())
    X_avg, _ = data.extract_features(avg, small_subset(32), cache=tmp_path, progress=False)
    X_max, _ = data.extract_features(top, small_subset(32), cache=tmp_path, progress=False)
    assert torch.equal(X_max, data.compute_features(top, small_subset(32), progress=False)[0])
    assert not torch.equal(X_avg, X_max) and len(list(tmp_path.glob("*.pt"))) == 2


def test_feature_cache_refuses_a_random_transform(tmp_path):
    from torchvision.transforms import v2

    augmenting = Subset(data.clipart_dataset(data.train_transform(32)), [0, 50])
    with pytest.raises(ValueError, match=r"random \(RandomResizedCrop, RandomHorizontalFlip\).*evaluation transform"):
        data.extract_features(CountingNet(), augmenting, cache=tmp_path, progress=False)
    jitter = v2.Compose([v2.RandomApply([v2.ColorJitter(0.3)], p=0.5), data.eval_transform(32)])
    with pytest.raises(ValueError, match="ColorJitter"):
        data.extract_features(CountingNet(), Subset(data.clipart_dataset(jitter), [0]), cache=tmp_path,
                              progress=False)
    assert not list(tmp_path.glob("*.pt"))
    X, _ = data.extract_features(CountingNet(), augmenting, cache=False, progress=False)   # unchanged
    assert X.shape == (2, 4)


PIXELS_UNDER = """
import sys, torch
from PIL import Image
from skimage import data
from tl_helpers.data import eval_transform, train_transform
img = Image.fromarray(data.chelsea())
torch.manual_seed(0)
out = [eval_transform(96)(img), eval_transform(96)(torch.as_tensor(data.coffee()).permute(2, 0, 1)),
       train_transform(96)(img)]
torch.save([t.as_subclass(torch.Tensor) for t in out], sys.argv[1])
"""


def test_preprocessing_gives_the_same_pixels_on_every_cpu(tmp_path):
    # Other CPUs run other ATen kernels; ATEN_CPU_CAPABILITY plays them on this one. torchvision's uint8
    # tensor resize differs by a level or two of 255 between its AVX2 and generic kernels; ours must not.
    import os
    import subprocess
    import sys

    outs = {}
    for capability in ("default", "avx2"):
        path = tmp_path / f"{capability}.pt"
        env = dict(os.environ, ATEN_CPU_CAPABILITY=capability, OMP_NUM_THREADS="1")
        subprocess.run([sys.executable, "-c", PIXELS_UNDER, str(path)], env=env, check=True)
        outs[capability] = torch.load(path, weights_only=True)
    for a, b in zip(outs["default"], outs["avx2"]):
        assert (a - b).abs().max().item() <= 1e-5
