"""The grayscale array datasets: shapes, class balance, determinism, the IDX reader and the loaders."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from tl_helpers.arrays import (DEBIAN_FASHION_MNIST, FASHION_CLASSES, array_loader, fashion_mnist, mnist_digits,
                               per_class_indices, read_idx, read_idx_pair, to_tensors)


@pytest.mark.parametrize("split,per_class", [("train", 600), ("test", 200)])
def test_shipped_fashion_mnist_shapes_and_balance(split, per_class):
    X, y = fashion_mnist(split)
    assert X.shape == (10 * per_class, 28, 28) and X.dtype == np.uint8
    assert y.dtype == np.int64 and np.bincount(y, minlength=10).tolist() == [per_class] * 10
    assert len(FASHION_CLASSES) == 10
    assert 0 < X.mean() < 255                        # real images, not blank


def test_shipped_train_and_test_share_no_image():
    Xtr, _ = fashion_mnist("train")
    Xte, _ = fashion_mnist("test")
    train_rows = {row.tobytes() for row in Xtr.reshape(len(Xtr), -1)}
    assert not any(row.tobytes() in train_rows for row in Xte.reshape(len(Xte), -1))


def test_mnist_digits_shape_and_balance():
    X, y = mnist_digits()
    assert X.shape == (5000, 28, 28) and X.dtype == np.uint8
    assert np.bincount(y).tolist() == [500] * 10


def test_per_class_indices_balanced_deterministic_and_exclusive():
    _, y = fashion_mnist("train")
    val = per_class_indices(y, 100, seed=7)
    a = per_class_indices(y, 10, seed=3, exclude=val)
    assert np.array_equal(a, per_class_indices(y, 10, seed=3, exclude=val))      # same seed, same draw
    assert not np.array_equal(a, per_class_indices(y, 10, seed=4, exclude=val))  # another seed, another draw
    assert np.bincount(y[a], minlength=10).tolist() == [10] * 10
    assert not set(a) & set(val)
    rest = per_class_indices(y, None, exclude=val)
    assert len(rest) == 5000 and not set(rest) & set(val)
    with pytest.raises(ValueError, match="fewer than"):
        per_class_indices(y, 601)


def test_read_idx_round_trip_and_errors(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    header = bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in images.shape)
    with gzip.open(tmp_path / "x-idx3-ubyte.gz", "wb") as f:
        f.write(header + images.tobytes())
    assert np.array_equal(read_idx(tmp_path / "x-idx3-ubyte.gz"), images)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(header + images.tobytes()[:-1])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "short")


def test_missing_full_dataset_names_the_offline_choice(tmp_path):
    with pytest.raises(FileNotFoundError, match="root=None"):
        fashion_mnist("train", root=tmp_path)
    with pytest.raises(ValueError, match="'train' or 'test'"):
        fashion_mnist("val")


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.exists(), reason="Debian's dataset-fashion-mnist is not installed")
def test_full_fashion_mnist_contains_the_shipped_subset():
    X, y = read_idx_pair(DEBIAN_FASHION_MNIST, "test")
    assert X.shape == (10000, 28, 28) and len(y) == 10000
    Xs, ys = fashion_mnist("test")
    assert np.array_equal(Xs[0], X[np.flatnonzero(y == ys[0])[0]])


def test_tensors_and_loader():
    X, y = fashion_mnist("test")
    x, t = to_tensors(X[:8], y[:8])
    assert x.shape == (8, 1, 28, 28) and x.dtype == torch.float32 and t.dtype == torch.int64
    assert -1.0 <= float(x.min()) and float(x.max()) <= 1.0
    batches = [yb.tolist() for _, yb in array_loader(X[:10], y[:10], batch_size=4, train=True, seed=1)]
    again = [yb.tolist() for _, yb in array_loader(X[:10], y[:10], batch_size=4, train=True, seed=1)]
    assert batches == again and [len(b) for b in batches] == [4, 4, 2]
    assert sorted(sum(batches, [])) == sorted(y[:10].tolist())
