"""Checkers for the exercises on text: a truncation length, padding predicted then checked, max pooling,
layer-wise learning-rate decay.

>>> from tl_helpers.checks.text import check_max_length
>>> ok = check_max_length(5, [3, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5])
✅ Correct: 5 tokens keeps every text whole (0 of 20 truncated), and no shorter length does that for 95%.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from tl_helpers.checks import Exercise, _NotYet, _as_number, _checker, _first_wrong_prediction, _type_error


def _shortest_length(lengths: Sequence[int], keep: float) -> int:
    """The smallest L such that at most (1 - keep) of the texts are longer than L tokens."""
    lengths = np.sort(np.asarray(lengths))
    return int(lengths[math.ceil(keep * len(lengths)) - 1])


@_checker("pass a whole number of tokens, e.g. MAX_LENGTH = 24.")
def check_max_length(answer, lengths: Sequence[int], keep: float = 0.95) -> str:
    """Is ``answer`` the shortest max_length that leaves at least ``keep`` of the texts whole?

    ``lengths`` are the token counts of the training texts, special tokens included.

    >>> ok = check_max_length(3, [3, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5])
    ❌ Not yet: 3 tokens truncates 19 of the 20 texts (95%), more than 5%. Hint: sort the lengths and take the one 95% of the way up, or use np.percentile with method="higher".
    """
    value = _as_number(answer, "a number of tokens (an int)", "count tokens with len(tokenizer(text)['input_ids'])")
    if value != int(value) or value < 1:
        raise _NotYet(f"{answer!r} is not a positive whole number of tokens", "a length counts tokens: 1, 2, 3...")
    value = int(value)
    lengths = [int(v) for v in lengths]
    best = _shortest_length(lengths, keep)
    cut = sum(v > value for v in lengths)
    if value < best:
        raise _NotYet(f"{value} tokens truncates {cut} of the {len(lengths)} texts ({cut / len(lengths):.0%}), "
                      f"more than {1 - keep:.0%}",
                      f"sort the lengths and take the one {keep:.0%} of the way up, or use np.percentile "
                      "with method=\"higher\"")
    if value > best:
        raise _NotYet(f"{value} tokens works but is longer than needed: {best} already keeps {keep:.0%} whole",
                      "every padded position costs compute in every layer: take the shortest length that "
                      f"keeps {keep:.0%} of the texts whole")
    return (f"{value} tokens keeps every text whole ({cut} of {len(lengths)} truncated), and no shorter length "
            f"does that for {keep:.0%}." if cut == 0 else
            f"{value} tokens truncates {cut} of {len(lengths)} texts ({cut / len(lengths):.1%}), and no shorter "
            f"length keeps {keep:.0%} whole.")


def _mean_pool_reference(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1)


_MAX_POOL_HINT = ("set the padding positions to -inf before the max, e.g. "
                  "hidden.masked_fill(mask.unsqueeze(-1) == 0, float('-inf')).max(dim=1).values")


@_checker("write def my_max_pool(hidden, mask) returning a (batch, dim) tensor.")
def check_max_pool(fn: Callable) -> str:
    """Does ``fn(hidden, mask)`` take, for each text and each feature, the largest value over its real tokens?

    >>> ok = check_max_pool(lambda h, m: h.max(dim=1).values)
    ❌ Not yet: padding positions take part in your max: a padded position with a large value wins, so a short text padded to a long batch gets another vector than alone. Hint: set the padding positions to -inf before the max, e.g. hidden.masked_fill(mask.unsqueeze(-1) == 0, float('-inf')).max(dim=1).values.
    """
    if not callable(fn):
        raise _type_error(fn, "a function my_max_pool(hidden, mask)", "define def my_max_pool(hidden, mask): ...")
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 5, 4, generator=g) - 3.0             # real tokens: mostly negative values
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    hidden[1, 3:] = 5.0                                          # padding that would win an unmasked max
    out = fn(hidden.clone(), mask.clone())
    if not isinstance(out, torch.Tensor):
        raise _type_error(out, "a tensor", "return the pooled tensor, shape (batch, dim)")
    if tuple(out.shape) != (3, 4):
        raise _NotYet(f"the output has shape {tuple(out.shape)}, expected (3, 4) for 3 texts of 5 tokens and 4 "
                      "numbers a token", "take the max over the token dimension, dim=1, and keep .values")
    expected = hidden.masked_fill(mask.unsqueeze(-1) == 0, float("-inf")).max(dim=1).values
    if torch.allclose(out, expected, atol=1e-6):
        return "each text's vector holds, feature by feature, the largest value over its real tokens; padding never wins."
    if torch.allclose(out, hidden.max(dim=1).values, atol=1e-6):
        raise _NotYet("padding positions take part in your max: a padded position with a large value wins, so a short "
                      "text padded to a long batch gets another vector than alone", _MAX_POOL_HINT)
    if torch.allclose(out, (hidden * mask.unsqueeze(-1)).max(dim=1).values, atol=1e-6):
        raise _NotYet("multiplying by the mask turns padding into zeros, and a zero beats every negative value of "
                      "the real tokens", _MAX_POOL_HINT)
    if torch.allclose(out, _mean_pool_reference(hidden, mask), atol=1e-5):
        raise _NotYet("that is the mean of the real tokens, not their max", _MAX_POOL_HINT)
    raise _NotYet("the pooled vectors differ from the max over each text's real tokens", _MAX_POOL_HINT)


_PREDICTION_CHOICES = ("same", "different")


@_checker("store two words, 'same' or 'different': check_padding_predictions(my_masked_mean, my_plain_mean, "
          "body, tokenizer).")
def check_padding_predictions(my_masked_mean, my_plain_mean, body: nn.Module, tokenizer) -> str:
    """Predicted before running: is a short text's pooled vector the *same* alone and padded in a batch with a
    much longer text, (1) with the chapter's masked mean and (2) with a plain mean over every position?
    The checker embeds "a small dog" both ways with the frozen ``body`` (eval mode) and compares.
    """
    for name, value in (("my_masked_mean", my_masked_mean), ("my_plain_mean", my_plain_mean)):
        if value not in _PREDICTION_CHOICES:
            raise _NotYet(f"{name} should be 'same' or 'different', got {value!r}", f"store {name} = 'same' (or 'different')")
    short, long = "a small dog", "an animal that is kept in a house and that barks at strangers and at the postman"
    was_training = body.training
    body.eval()
    try:
        with torch.no_grad():
            alone = tokenizer([short], return_tensors="pt")
            batch = tokenizer([short, long], padding=True, return_tensors="pt")
            h_alone = body(input_ids=alone["input_ids"], attention_mask=alone["attention_mask"]).last_hidden_state
            h_batch = body(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state[:1]
    finally:
        body.train(was_training)
    m_alone, m_batch = alone["attention_mask"], batch["attention_mask"][:1]
    masked_gap = float((_mean_pool_reference(h_alone, m_alone) - _mean_pool_reference(h_batch, m_batch)).abs().max())
    plain_gap = float((h_alone.mean(1) - h_batch.mean(1)).abs().max())
    truth = {"my_masked_mean": "same" if masked_gap < 1e-3 else "different",
             "my_plain_mean": "same" if plain_gap < 1e-3 else "different"}
    n_pad = int((m_batch == 0).sum())
    # printed as comparisons, not values: the rounding differs from one CPU to the next
    facts = (f"the masked mean moves by less than 1e-3 (float rounding only: {masked_gap < 1e-3}) when {n_pad} "
             f"padding positions are added (attention gives padding zero weight and the mask leaves it out of the "
             f"average); the plain mean moves by more than 0.1 ({plain_gap > 0.1}), because it averages the {n_pad} "
             f"padding vectors in")
    _first_wrong_prediction([
        (my_masked_mean, truth["my_masked_mean"], "with the masked mean the vector is {truth}: {facts}",
         "the attention mask stops real tokens from attending to padding, and the masked mean skips "
         "padding positions: nothing of the padding reaches the vector"),
        (my_plain_mean, truth["my_plain_mean"], "with a plain mean the vector is {truth}: {facts}",
         "the transformer still computes a vector at every padding position; a plain mean averages "
         "them in, so the result depends on how much padding the batch needed")], facts)
    return f"{facts}. Padding is invisible only when the pooling respects the mask too."


def _tiny_classifier(layers: int) -> nn.Module:
    """A small random BERT wrapped like the chapter's TextClassifier (fast, offline)."""
    from transformers import BertConfig, BertModel

    from tl_helpers.text import TextClassifier

    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=16, max_position_embeddings=16)
    return TextClassifier(BertModel(config, add_pooling_layer=False), num_classes=3)


def _expected_lr(name: str, layers: int, lr: float, decay: float, head_lr: float) -> float:
    if name.startswith("head."):
        return head_lr
    if name.startswith("body.embeddings."):
        return lr * decay ** layers
    i = int(name.split(".")[3])  # body.encoder.layer.<i>.
    return lr * decay ** (layers - 1 - i)


@_checker("write def layerwise_optimizer(model, lr, decay, head_lr) that returns a torch.optim.AdamW.")
def check_layerwise_optimizer(fn: Callable) -> str:
    """Does ``fn(model, lr, decay, head_lr)`` give every parameter its layer-wise decayed learning rate?

    Head: ``head_lr``; top encoder layer: ``lr``; each layer below: times ``decay``; embeddings:
    ``lr * decay ** num_layers``. Tried on two small BERTs (2 and 3 layers).
    """
    if not callable(fn):
        raise _type_error(fn, "a function layerwise_optimizer(model, lr, decay, head_lr)",
                          "define def layerwise_optimizer(model, lr, decay, head_lr): ... and pass it")
    for layers, lr, decay, head_lr in ((2, 1e-4, 0.5, 1e-3), (3, 2e-4, 0.8, 2e-3)):
        model = _tiny_classifier(layers)
        opt = fn(model, lr=lr, decay=decay, head_lr=head_lr)
        if not isinstance(opt, torch.optim.Optimizer):
            raise _type_error(opt, "a torch optimizer", "return torch.optim.AdamW(groups)")
        lr_of = {}
        for group in opt.param_groups:
            for p in group["params"]:
                if id(p) in lr_of:
                    raise _NotYet("a parameter appears in two groups", "put each parameter in exactly one group")
                lr_of[id(p)] = group["lr"]
        for name, p in model.named_parameters():
            if id(p) not in lr_of:
                part = "the embeddings" if "embeddings" in name else "the head" if name.startswith("head") else name
                raise _NotYet(f"{name} is in no group: the optimizer would never train {part}",
                              "list the head, every model.body.encoder.layer[i] and model.body.embeddings")
        body = [(n, lr_of[id(p)]) for n, p in model.named_parameters() if n.startswith("body.")]
        if all(math.isclose(got, lr, rel_tol=1e-6) for _, got in body):
            raise _NotYet(f"every layer of the body gets the same rate, {lr:g}",
                          "each layer below the top one gets decay times the rate of the layer above, "
                          "the embeddings one step less than the lowest layer")
        reversed_lr = {n: lr if ".embeddings." in n + "." else lr * decay ** int(n.split(".")[3]) for n, _ in body}
        if all(math.isclose(got, reversed_lr[n], rel_tol=1e-6) for n, got in body):
            raise _NotYet("the layers nearest the input get the largest rates",
                          "the decay runs the wrong way: the top layer (nearest the head) gets lr, "
                          "layers nearer the input get less")
        for name, p in model.named_parameters():
            want, got = _expected_lr(name, layers, lr, decay, head_lr), lr_of[id(p)]
            if not math.isclose(got, want, rel_tol=1e-6):
                if name.startswith("body.embeddings.") and math.isclose(got, lr * decay ** (layers - 1), rel_tol=1e-6):
                    hint = "the embeddings sit one step below the lowest layer: lr * decay ** num_layers"
                elif name.startswith("head."):
                    hint = "the new head trains at head_lr"
                else:
                    hint = "head: head_lr; layer i of L: lr * decay ** (L - 1 - i); embeddings: lr * decay ** L"
                raise _NotYet(f"with {layers} layers, lr={lr:g}, decay={decay:g}, head_lr={head_lr:g}: {name} "
                              f"gets {got:.3g}, expected {want:.3g}", hint)
    return "the head moves fastest, each layer below moves `decay` times slower, the embeddings slowest."


EXERCISES: dict[str, Exercise] = {
    "10.1": Exercise("The shortest max_length that keeps 95 % of the texts whole", "10", check_max_length),
    "10.2": Exercise("Predict, then check: does padding change a text's vector?", "10", check_padding_predictions),
    "10.3": Exercise("Max pooling that ignores padding", "10", check_max_pool),
    "10.4": Exercise("An optimizer with layer-wise learning-rate decay", "10", check_layerwise_optimizer),
}
