"""Metrics of tl_helpers.evaluate against scikit-learn and hand computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import metrics as sk
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tl_helpers.evaluate import (accuracy, bootstrap_ci, classification_report, confusion_matrix,
                                 expected_calibration_error, fit_temperature, misclassified, predict,
                                 reliability_curve, temperature_scale, topk_accuracy)

Y_TRUE = [0, 0, 1, 1, 2, 2, 2, 1, 0, 2]
Y_PRED = [0, 1, 1, 1, 2, 0, 2, 2, 0, 2]
CLASSES = ["cat", "dog", "bird"]


def test_metrics_equal_scikit_learn():
    assert accuracy(Y_TRUE, Y_PRED) == sk.accuracy_score(Y_TRUE, Y_PRED) == 0.7
    assert accuracy(torch.tensor(Y_TRUE), np.array(Y_PRED)) == 0.7
    assert np.array_equal(confusion_matrix(Y_TRUE, Y_PRED, 3), sk.confusion_matrix(Y_TRUE, Y_PRED))
    assert confusion_matrix([0], [0], 4).shape == (4, 4)  # classes absent from the data still get a row
    report = classification_report(Y_TRUE, Y_PRED, CLASSES)
    assert report == sk.classification_report(Y_TRUE, Y_PRED, target_names=CLASSES, digits=3)
    assert misclassified(torch.tensor(Y_PRED), torch.tensor(Y_TRUE)) == [1, 5, 7]


def test_topk_accuracy_equals_scikit_learn():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(5), size=40)
    y = rng.integers(0, 5, size=40)
    for k in (1, 2, 3):
        assert topk_accuracy(torch.tensor(probs), torch.tensor(y), k) == pytest.approx(
            sk.top_k_accuracy_score(y, probs, k=k, labels=range(5)))
    assert topk_accuracy(probs, y, k=1) == accuracy(y, probs.argmax(1))


def test_ece_equals_a_hand_computation():
    probs = torch.tensor([[0.95, 0.05],   # conf 0.95, right   -> bin (0.9, 1.0]
                          [0.85, 0.15],   # conf 0.85, wrong   -> bin (0.8, 0.9]
                          [0.15, 0.85],   # conf 0.85, right   -> bin (0.8, 0.9]
                          [0.42, 0.58],   # conf 0.58, wrong   -> bin (0.5, 0.6]
                          [0.55, 0.45]])  # conf 0.55, right   -> bin (0.5, 0.6]
    y = torch.tensor([0, 1, 1, 0, 0])
    # bin (0.9,1]: 1 sample, acc 1, conf 0.95 -> gap 0.05
    # bin (0.8,0.9]: 2 samples, acc 0.5, conf 0.85 -> gap 0.35
    # bin (0.5,0.6]: 2 samples, acc 0.5, conf 0.565 -> gap 0.065
    # (values right on a bin edge, like 0.6, are avoided: in float32 0.6 is 0.6000000238, bin (0.6, 0.7])
    hand = (1 * 0.05 + 2 * 0.35 + 2 * 0.065) / 5
    assert expected_calibration_error(probs, y, n_bins=10) == pytest.approx(hand, abs=1e-6)
    curve = reliability_curve(probs, y, n_bins=10)
    assert curve["counts"].tolist() == [0, 0, 0, 0, 0, 2, 0, 0, 2, 1]
    assert curve["accuracy"][8] == 0.5 and np.isnan(curve["accuracy"][0])
    assert curve["ece"] == pytest.approx(hand, abs=1e-6)


def test_perfect_calibration_has_zero_ece():
    probs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(probs, [0, 1]) == 0.0


def test_bootstrap_ci_contains_the_accuracy_and_is_seeded():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 8, size=126)
    pred = np.where(rng.random(126) < 0.8, y, (y + 1) % 8)
    acc, low, high = bootstrap_ci(y, pred, n=500)
    assert acc == accuracy(y, pred)
    assert low < acc < high and 0.05 < high - low < 0.25
    assert tuple(bootstrap_ci(y, pred, n=500)) == (acc, low, high)


def test_predict_is_in_eval_mode_without_gradients():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 3)).train()
    x, y = torch.randn(10, 4), torch.arange(10) % 3
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    probs, preds, labels = predict(net, loader)
    assert not net.training and not probs.requires_grad
    assert torch.allclose(probs, net(x).softmax(1)) and torch.equal(labels, y)
    assert torch.allclose(probs.sum(1), torch.ones(10)) and torch.equal(preds, probs.argmax(1))
    *_, logits = predict(net, loader, return_logits=True)
    assert torch.allclose(logits.softmax(1), probs)


def test_temperature_scaling():
    logits = torch.tensor([[3.0, 1.0, 0.0]])
    assert torch.allclose(temperature_scale(logits, 1.0), logits)
    assert torch.equal(temperature_scale(logits, 2.0).argmax(1), logits.argmax(1))
    with pytest.raises(ValueError):
        temperature_scale(logits, 0.0)
    torch.manual_seed(0)
    true_logits = torch.randn(500, 4) * 2
    labels = torch.distributions.Categorical(logits=true_logits).sample()
    assert fit_temperature(true_logits * 3, labels) == pytest.approx(3.0, rel=0.25)  # undoes the sharpening


def test_corrected_interval_is_the_nadeau_bengio_formula():
    """variance x (1/J + n_test/n_train), J - 1 degrees of freedom; wider than the plain t by that factor."""
    from scipy import stats

    from tl_helpers.evaluate import cv_test_train_ratio, interval, paired_difference

    d = np.array([2.0, 0.5, 3.0, 2.0, 1.0])
    ratio = cv_test_train_ratio(5)
    iv, plain = interval(d, test_train_ratio=ratio), interval(d)
    half = stats.t.ppf(0.975, 4) * d.std(ddof=1) * np.sqrt(1 / 5 + 0.25)
    assert iv.mean == pytest.approx(1.7) and iv.high - iv.mean == pytest.approx(half)
    assert iv.half_width / plain.half_width == pytest.approx(np.sqrt((1 / 5 + 0.25) * 5))   # 1.5x
    assert plain.verdict == "ahead" and iv.verdict == "tie" and "corrected" in iv.method
    assert paired_difference(d + 70, np.full(5, 70.0), test_train_ratio=ratio) == iv
    assert interval(d, level=0.99).half_width > plain.half_width
    assert iv.to_dict()["verdict"] == "tie" and tuple(iv) == (iv.mean, iv.low, iv.high)


def test_interval_says_what_is_wrong():
    from tl_helpers.evaluate import interval, paired_difference

    with pytest.raises(ValueError, match="non-empty"):
        interval([])
    with pytest.raises(ValueError, match="fraction"):
        interval([1.0, 2.0], level=95)
    with pytest.raises(ValueError, match="one value of each"):
        paired_difference([1.0, 2.0], [1.0])
    assert np.isnan(interval([3.0]).low)   # one value: no interval
