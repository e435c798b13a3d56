"""Predict-then-check exercises: write down what you expect *before* running anything; the checker
computes the truth itself and says which of your predictions held, and why.

>>> ok = check_size_predictions(10248, 1572864)
✅ Correct: nn.Linear(1280, 8) has 1280 x 8 weights + 8 biases = 10,248 parameters; a batch of 32 RGB images at 128 px holds 32 x 3 x 128 x 128 = 1,572,864 numbers.
>>> ok = check_size_predictions(10240, 1572864)
❌ Not yet: 10240 is 1280 x 8, the weights only. Hint: a Linear layer also has one bias per output: + 8.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from tl_helpers.checks import Exercise, _learner_code, _NotYet, _checker


def _as_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
        raise _NotYet(f"{name} should be a whole number, got {value!r}", f"store a number in {name}, e.g. 1000")
    return int(value)


@_checker("store two whole numbers: check_size_predictions(my_linear_params, my_batch_numbers).")
def check_size_predictions(my_linear_params, my_batch_numbers) -> str:
    """Predicted by arithmetic: the parameters of ``nn.Linear(1280, 8)`` and the numbers in a batch of 32
    RGB images at 128 px. The truth is counted with PyTorch."""
    linear = nn.Linear(1280, 8)
    params_true = sum(p.numel() for p in linear.parameters())
    batch_true = torch.zeros(32, 3, 128, 128).numel()
    params, numbers = _as_int(my_linear_params, "my_linear_params"), _as_int(my_batch_numbers, "my_batch_numbers")
    if params != params_true:
        if params == 1280 * 8:
            raise _NotYet(f"{params} is 1280 x 8, the weights only",
                          "a Linear layer also has one bias per output: + 8")
        if params == 1280 * 8 + 1280:
            raise _NotYet(f"{params} counts one bias per input", "a bias belongs to each output (8), not each input")
        raise _NotYet(f"{params} is not the number of parameters of nn.Linear(1280, 8)",
                      "a weight for every (input, output) pair, plus one bias per output")
    if numbers != batch_true:
        if numbers == 32 * 128 * 128:
            raise _NotYet(f"{numbers} leaves out the colour channels", "an RGB image has 3 channels: x 3")
        if numbers == 3 * 128 * 128:
            raise _NotYet(f"{numbers} is one image", "the batch holds 32 of them")
        raise _NotYet(f"{numbers} is not the number of values in a (32, 3, 128, 128) tensor",
                      "multiply batch x channels x height x width")
    return (f"nn.Linear(1280, 8) has 1280 x 8 weights + 8 biases = {params_true:,} parameters; a batch of 32 RGB "
            f"images at 128 px holds 32 x 3 x 128 x 128 = {batch_true:,} numbers.")


@_checker("store a tuple, a number and True/False: check_output_predictions(my_shape, my_row_sum, "
          "my_any_negative, pre.model).")
def check_output_predictions(my_shape, my_row_sum, my_any_negative, model: nn.Module) -> str:
    """Predicted before running: for a batch of 3 images of 224 x 224, the shape of ``model(x)``, the sum of
    each row of ``model(x).softmax(dim=1)``, and whether any logit is negative. The checker runs ``model``
    (in eval mode, without gradients) on such a batch to get the truth.

    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 224 * 224, 1000))
    >>> ok = check_output_predictions((3, 1000), 1.0, True, net)
    ✅ Correct: ...
    """
    x = torch.rand(3, 3, 224, 224)
    with _learner_code(), torch.no_grad():
        was_training = model.training
        logits = model.eval()(x)
        model.train(was_training)
    shape, row_sums, any_negative = tuple(logits.shape), logits.softmax(dim=1).sum(dim=1), bool((logits < 0).any())
    try:
        predicted_shape = tuple(int(d) for d in my_shape)
    except (TypeError, ValueError):
        raise _NotYet(f"my_shape should be a tuple of sizes, got {my_shape!r}", "e.g. (2, 10)") from None
    if predicted_shape != shape:
        if predicted_shape == shape[1:]:
            raise _NotYet(f"{predicted_shape} forgets the batch dimension",
                          f"one row of scores per image: ({shape[0]}, {shape[1]})")
        if predicted_shape[:1] == (1,):
            raise _NotYet(f"{predicted_shape} has one row", "the model answers each of the 3 images separately")
        raise _NotYet(f"the output has shape {shape}, not {predicted_shape}",
                      "one row per image, one column per ImageNet class")
    if not isinstance(my_row_sum, (int, float)) or isinstance(my_row_sum, bool):
        raise _NotYet(f"my_row_sum should be a number, got {my_row_sum!r}", "what do probabilities add up to?")
    if not math.isclose(float(my_row_sum), float(row_sums[0]), abs_tol=1e-3):
        raise _NotYet(f"each row of the softmax sums to {float(row_sums[0]):.3f}, not {my_row_sum}",
                      "softmax turns a row of scores into probabilities over the classes: they add up to 1")
    if not isinstance(my_any_negative, bool):
        raise _NotYet(f"my_any_negative should be True or False, got {my_any_negative!r}", "store True or False")
    if my_any_negative != any_negative:
        raise _NotYet(f"the logits {'do' if any_negative else 'do not'} contain negative numbers",
                      "logits are raw scores of a Linear layer, any real number; only the softmax makes them "
                      "positive")
    return (f"the output is {shape} (one row of {shape[1]} scores per image); each softmax row sums to 1; "
            f"logits are unbounded scores, {'some' if any_negative else 'none'} negative here.")


EXERCISES: dict[str, Exercise] = {
    "00.1": Exercise("Predict, then check: sizes of a layer and a batch", "00", check_size_predictions),
    "01.1": Exercise("Predict, then check: what comes out of the network", "01", check_output_predictions),
}
