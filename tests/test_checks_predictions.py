"""Predict-then-check checkers: the right predictions pass, and each typical wrong one gets its own hint."""

from __future__ import annotations

import pytest
from torch import nn

from tl_helpers.checks.predictions import check_output_predictions, check_size_predictions


def tiny_classifier() -> nn.Module:
    return nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(48, 1000))


def test_size_predictions_right(capsys):
    assert check_size_predictions(10248, 1572864)
    assert "10,248" in capsys.readouterr().out


@pytest.mark.parametrize("params, numbers, hint", [
    (10240, 1572864, "one bias per output"),
    (11520, 1572864, "not each input"),
    (999, 1572864, "a weight for every (input, output) pair"),
    (10248, 524288, "3 channels"),
    (10248, 49152, "32 of them"),
    (10248, 5, "batch x channels x height x width"),
    ("10248", 1572864, "store a number in my_linear_params"),
])
def test_size_predictions_wrong_get_their_own_hint(params, numbers, hint, capsys):
    assert not check_size_predictions(params, numbers)
    assert hint in capsys.readouterr().out


def test_output_predictions_right(capsys):
    assert check_output_predictions((3, 1000), 1, True, tiny_classifier())
    assert "Correct" in capsys.readouterr().out


@pytest.mark.parametrize("shape, row_sum, negative, hint", [
    ((1000,), 1.0, True, "one row of scores per image"),
    ((1, 1000), 1.0, True, "each of the 3 images separately"),
    ((3, 10), 1.0, True, "one column per ImageNet class"),
    ((3, 1000), 3.0, True, "they add up to 1"),
    ((3, 1000), 1.0, False, "only the softmax makes them positive"),
    ("3x1000", 1.0, True, "e.g. (2, 10)"),
])
def test_output_predictions_wrong_get_their_own_hint(shape, row_sum, negative, hint, capsys):
    assert not check_output_predictions(shape, row_sum, negative, tiny_classifier())
    assert hint in capsys.readouterr().out


def test_a_model_that_raises_is_the_learners_mistake(capsys):
    assert not check_output_predictions((3, 1000), 1.0, True, nn.Linear(2, 2))
    assert "raised RuntimeError" in capsys.readouterr().out
