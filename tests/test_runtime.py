"""Behaviour of tl_helpers.runtime."""

import torch

from tl_helpers.runtime import get_device, seed_everything


def test_seed_everything_repeats_random_numbers():
    seed_everything(7)
    a = (torch.rand(3), torch.randn(2))
    seed_everything(7)
    b = (torch.rand(3), torch.randn(2))
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_get_device_honours_a_preference(monkeypatch):
    assert get_device("cpu").type == "cpu"
    monkeypatch.setenv("TL_DEVICE", "cpu")
    assert get_device().type == "cpu"
