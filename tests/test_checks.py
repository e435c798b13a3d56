"""Every exercise checker: the reference solution passes, typical wrong answers fail with a helpful
message, and nothing ever raises (not even for an answer of the wrong type)."""

from __future__ import annotations

import math
import random
from collections import Counter

import numpy as np
import pytest
import torch
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression
from torch import nn

from tl_helpers import checks
from tl_helpers.data import eval_transform, train_transform
from tl_helpers.evaluate import bootstrap_ci, expected_calibration_error, fit_temperature
from tl_helpers.lr_finder import suggest_lr
from tl_helpers.models import IMAGENET_MEAN, IMAGENET_STD
from tl_helpers.runtime import get_device, seed_everything
from tl_helpers.surgery import freeze, model_blocks, param_groups, unfreeze


def lite0(num_classes=None):
    return checks._fresh_lite0(num_classes)


# --- data shared by several cases -------------------------------------------------------------------

def blobs(n=90, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    X = torch.randn(n, 6, generator=g)
    X[:, 0] += 4 * y
    return X, y


def bank_and_query():
    g = torch.Generator().manual_seed(0)
    bank = torch.randn(40, 8, generator=g) * torch.linspace(0.2, 5, 40)[:, None]  # very different lengths
    return bank[0] + 0.1 * torch.randn(8, generator=g), bank


def range_test():
    lrs = [10 ** (e / 5) for e in range(-30, 1)]
    losses = [2.0 - 1.5 / (1 + math.exp(-(math.log10(lr) + 3.0) * 2.5)) + (lr > 0.03) * 8 * lr for lr in lrs]
    return lrs, losses


def overconfident(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    logits = torch.randn(n, 4, generator=g)
    right = torch.rand(n, generator=g) < 0.6
    target = torch.where(right, y, (y + 1) % 4)
    logits[torch.arange(n), target] += 6.0  # about 60 % accurate, ~99 % confident
    return logits, y


# --- reference answers and wrong answers, by exercise id ---------------------------------------------

def predict_ref(model, x):
    model.eval()
    with torch.no_grad():
        return model(x).softmax(dim=1)


def predict_no_eval(model, x):
    with torch.no_grad():
        return model(x).softmax(dim=1)


def predict_logits(model, x):
    model.eval()
    with torch.no_grad():
        return model(x)


def tiny_imagenet_classifier():
    """Any network with 1000 outputs will do for the predict-then-check exercise: the checker runs it."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(48, 1000))


def draw(seed):
    seed_everything(seed)
    return torch.randn(4, 3)


def train_keep_frozen_bn(model):
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters()):
            m.eval()


def all_bn_eval(model):
    """A wrong answer to 03.3: every BatchNorm in eval mode, the trainable ones too."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def squash_224():
    """A wrong answer to 01.2: the squashing resize of article 003."""
    from torchvision.transforms import v2
    return v2.Compose([v2.Resize((224, 224)), v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize([0.5] * 3, [0.5] * 3)])


def head_only():
    model = lite0(5)
    for p in model.parameters():
        p.requires_grad = False
    for p in model._fc.parameters():
        p.requires_grad = True
    return model


def last_two(n_frozen_from_end=2):
    model = lite0(5)
    freeze(model, first=len(model_blocks(model)) - n_frozen_from_end)
    return model


def new_head(dropout_inside=0.2, keep_outer=False, classes=5):
    model = lite0()
    if not keep_outer:
        model._dropout = nn.Identity()
    model._fc = nn.Sequential(nn.Dropout(dropout_inside), nn.Linear(1280, classes))
    return model


def lite_own_dropout():
    model = lite0()
    model._fc = nn.Linear(1280, 5)  # Lite's own _dropout (p=0.2) stays before it
    return model


def fresh_optimizer():
    model = lite0()
    model._fc = nn.Linear(1280, 5)
    return torch.optim.AdamW(model.parameters(), lr=1e-3), model


def stale_optimizer():
    model = lite0()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model._fc = nn.Linear(1280, 5)
    return optimizer, model


def unfreeze_ref(model, k):
    unfreeze(model, last=k)


def unfreeze_minus_zero_bug(model, k):
    for _, block in model_blocks(model)[-k:]:
        for p in block.parameters():
            p.requires_grad = True


def groups_model():
    model = lite0(8)
    freeze(model, first=10)
    return model


def ece_unweighted(probs, labels, bins=10):
    from tl_helpers.evaluate import reliability_curve
    c = reliability_curve(probs, labels, bins)
    filled = c["counts"] > 0
    return float(np.abs(c["accuracy"][filled] - c["confidence"][filled]).mean())


def correct_vector():
    return np.array([1] * 100 + [0] * 26)


def ci_ref():
    c = correct_vector()
    _, low, high = bootstrap_ci(c, np.ones_like(c))
    return low, high


def ci_from_sd():
    c = correct_vector()
    return c.mean() - 1.96 * c.std(), c.mean() + 1.96 * c.std()


PROBS = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.45, 0.55], [0.6, 0.4], [0.97, 0.03]])
LABELS = [0, 1, 1, 0, 0, 0]


CASES = {
    # id: (reference call, [typical wrong calls], [for each wrong call, words of ITS OWN message])
    "00.1": (lambda: checks.predictions.check_size_predictions(10248, 1572864),
             [lambda: checks.predictions.check_size_predictions(10240, 1572864),
              lambda: checks.predictions.check_size_predictions(10248, 524288)],
             ["the weights only", "leaves out the colour channels"]),
    "00.2": (lambda: checks.check_parameter_count(22, nn.Linear(10, 2)),
             [lambda: checks.check_parameter_count(2, nn.Linear(10, 2))], ["number of parameter *tensors*"]),
    "00.3": (lambda: checks.check_reproducible(draw),
             [lambda: checks.check_reproducible(lambda seed: torch.randn(3)),
              lambda: checks.check_reproducible(lambda seed: torch.zeros(3))],
             ["two calls with seed 0 returned different numbers", "seeds 0 and 1 returned the same numbers"]),
    "01.1": (lambda: checks.predictions.check_output_predictions((3, 1000), 1.0, True, tiny_imagenet_classifier()),
             [lambda: checks.predictions.check_output_predictions((1000,), 1.0, True, tiny_imagenet_classifier()),
              lambda: checks.predictions.check_output_predictions((3, 1000), 1.0, False, tiny_imagenet_classifier())],
             ["forgets the batch dimension", "only the softmax makes them positive"]),
    "01.2": (lambda: checks.check_preprocessing(eval_transform(224, resize_size=256)),
             [lambda: checks.check_preprocessing(eval_transform(224, 256, IMAGENET_MEAN, IMAGENET_STD)),
              lambda: checks.check_preprocessing(eval_transform(224, 256, (0, 0, 0), (1, 1, 1))),
              lambda: checks.check_preprocessing(train_transform(224)),
              lambda: checks.check_preprocessing(eval_transform(128)),
              lambda: checks.check_preprocessing(squash_224()),
              lambda: checks.check_preprocessing(eval_transform(224, resize_size=224))],
             ["those are ImageNet's mean and std", "in [0, 1] but not normalised", "the transform is random",
              "the model expects (3, 224, 224)", "squashed to a square", "resizes to 256 first"]),
    "01.3": (lambda: checks.check_predict(predict_ref),
             [lambda: checks.check_predict(predict_no_eval), lambda: checks.check_predict(predict_logits)],
             ["the model was still in training mode", "these are logits, not probabilities"]),
    "02.1": (lambda: checks.check_feature_extractor(_identity_head(lite0())),
             [lambda: checks.check_feature_extractor(lite0())], ["still outputs the 1000 ImageNet class scores"]),
    "02.2": (lambda: checks.check_probe_accuracy(LogisticRegression(max_iter=500).fit(*blobs()), *blobs(seed=1)),
             [lambda: checks.check_probe_accuracy(DummyClassifier().fit(*blobs()), *blobs(seed=1))],
             ["hardly better than always guessing the most frequent class"]),
    "02.3": (lambda: checks.check_nearest_neighbours(_cosine_topk(*bank_and_query()), *bank_and_query()),
             [lambda: checks.check_nearest_neighbours(_euclid_topk(*bank_and_query()), *bank_and_query()),
              lambda: checks.check_nearest_neighbours([39, 38, 37, 36, 35], *bank_and_query())],
             ["nearest by Euclidean distance on raw features", "1 of your 5 indices are among the 5 most similar"]),
    "03.1": (lambda: checks.check_head_only_trainable(head_only()),
             [lambda: checks.check_head_only_trainable(lite0(5))], ["parameters are still trainable"]),
    "03.2": (lambda: checks.check_last_blocks_trainable(last_two(), n=2),
             [lambda: checks.check_last_blocks_trainable(last_two(1), n=2),
              lambda: checks.check_last_blocks_trainable(lite0(5), n=2)],
             ["tensors of the last 2 blocks (head_conv, classifier) are frozen", "parameters are still trainable"]),
    "03.3": (lambda: checks.check_frozen_bn_mode(train_keep_frozen_bn),
             [lambda: checks.check_frozen_bn_mode(lambda m: m.train()),
              lambda: checks.check_frozen_bn_mode(lambda m: m.eval()),
              lambda: checks.check_frozen_bn_mode(all_bn_eval),
              lambda: checks.check_frozen_bn_mode(lambda m: m.train() and m[0].eval())],
             ["changed the running statistics of its BatchNorm", "the model is not in training mode",
              "the trainable block's BatchNorm is in eval mode too", "changed the running statistics of its BatchNorm"]),
    "04.1": (lambda: checks.check_output_shape(torch.Size([16, 5])),
             [lambda: checks.check_output_shape((16, 1000)), lambda: checks.check_output_shape((5, 16))],
             ["the 1000 ImageNet classes: that is the old head", "is transposed"]),
    "04.2": (lambda: checks.check_new_head(new_head()) and checks.check_new_head(lite_own_dropout()),
             [lambda: checks.check_new_head(new_head(keep_outer=True)),
              lambda: checks.check_new_head(new_head(dropout_inside=0.5)),
              lambda: checks.check_new_head(new_head(classes=1000))],
             ["dropout is applied 2 times", "the dropout before the new layer is 0.5, expected 0.2",
              "the head's last layer has 1000 outputs, expected 5"]),
    "04.3": (lambda: checks.check_optimizer_params(*fresh_optimizer()),
             [lambda: checks.check_optimizer_params(*stale_optimizer())],
             ["never updates 2 trainable tensors (_fc.weight, _fc.bias)"]),
    "05.1": (lambda: checks.check_unfreeze_top(unfreeze_ref),
             [lambda: checks.check_unfreeze_top(unfreeze_minus_zero_bug)], ["with k=0, 19 stages are trainable"]),
    "05.2": (lambda: checks.check_param_groups(torch.optim.AdamW(param_groups(groups_model_shared(), 1e-3, 1e-4)),
                                               groups_model_shared()),
             [lambda: checks.check_param_groups(torch.optim.AdamW(
                  [p for p in groups_model_shared().parameters() if p.requires_grad], lr=1e-3),
                  groups_model_shared()),
              lambda: checks.check_param_groups(torch.optim.AdamW(param_groups(groups_model_shared(), 1e-4, 1e-3)),
                                                groups_model_shared())],
             ["every parameter has the same learning rate", "the two learning rates are swapped"]),
    "05.3": (lambda: checks.check_lr_choice(suggest_lr(*range_test()), *range_test()),
             [lambda: checks.check_lr_choice(range_test()[0][int(np.argmin(range_test()[1]))], *range_test()),
              lambda: checks.check_lr_choice(1.0, *range_test()),
              lambda: checks.check_lr_choice(1e-6, *range_test())],
             ["(almost) at the loss minimum", "the loss is already rising again",
              "so small that the loss has hardly started to fall"]),
    "06.1": (lambda: checks.check_ece(expected_calibration_error(PROBS, LABELS), PROBS, LABELS),
             [lambda: checks.check_ece(ece_unweighted(PROBS, LABELS), PROBS, LABELS),
              lambda: checks.check_ece(100 * expected_calibration_error(PROBS, LABELS), PROBS, LABELS)],
             ["without weighting them by their size", "is a percentage"]),
    "06.2": (lambda: checks.check_bootstrap_ci(ci_ref(), correct_vector()),
             [lambda: checks.check_bootstrap_ci(ci_from_sd(), correct_vector()),
              lambda: checks.check_bootstrap_ci((79.4, 86.0), correct_vector())],
             ["it looks like the spread of single images", "these look like percentages"]),
    "06.3": (lambda: checks.check_temperature(fit_temperature(*overconfident()), *overconfident()),
             [lambda: checks.check_temperature(0.5, *overconfident())],
             ["the model is over-confident (mean confidence above accuracy): soften with T > 1"]),
    "06.4": (lambda: checks.check_params_per_label(3_381_256 / 40),
             [lambda: checks.check_params_per_label(4_652_008 / 40),
              lambda: checks.check_params_per_label(3_381_256)],
             ["counts the 1000-class ImageNet head", "is the number of parameters"]),
}

_SHARED = {}


def groups_model_shared():
    """One model for a whole 05.2 case: the optimizer and the checker must see the same tensors."""
    return _SHARED.setdefault("model", groups_model())


def _identity_head(model):
    model._fc = nn.Identity()
    return model


def _cosine_topk(query, bank, k=5):
    sims = nn.functional.normalize(bank, dim=1) @ nn.functional.normalize(query, dim=0)
    return sims.topk(k).indices.tolist()


def _euclid_topk(query, bank, k=5):
    idx = torch.cdist(query[None], bank)[0].topk(k, largest=False).indices.tolist()
    assert set(idx) != set(_cosine_topk(query, bank, k)), "the fixture must tell the two apart"
    return idx


# --- the tests --------------------------------------------------------------------------------------

def test_every_exercise_has_cases_and_every_chapter_three_exercises():
    """Chapters 00-06 have their cases here; later chapters test their checkers in their own test files."""
    assert set(CASES) == {k for k, ex in checks.EXERCISES.items() if ex.chapter <= "06"}
    per_chapter = Counter(ex.chapter for ex in checks.EXERCISES.values())
    assert set(per_chapter) == {f"{n:02d}" for n in range(13)}
    assert min(per_chapter.values()) >= 3
    for ex_id, ex in checks.EXERCISES.items():
        assert ex_id.startswith(ex.chapter + ".") and ex.title and ex.checker.__name__.startswith("check_")
        assert ex.checker.__doc__, f"{ex.checker.__name__} needs a docstring"


@pytest.mark.parametrize("ex_id", sorted(CASES))
def test_reference_passes(ex_id, capsys):
    _SHARED.clear()
    reference, _, _ = CASES[ex_id]
    assert reference() is True
    out = capsys.readouterr().out
    assert out.startswith("✅ Correct: ") and "❌" not in out


@pytest.mark.parametrize("ex_id", sorted(CASES))
def test_typical_wrong_answers_fail_helpfully(ex_id, capsys):
    """Each typical wrong answer gets its own diagnosis, not merely "Not yet"."""
    _SHARED.clear()
    _, wrongs, own_words = CASES[ex_id]
    assert len(own_words) == len(wrongs), "one expected message per wrong answer"
    for wrong, words in zip(wrongs, own_words):
        assert wrong() is False
        out = capsys.readouterr().out.strip()
        assert out.startswith("❌ Not yet: ") and "Hint: " in out and out.count("\n") == 0, out
        what, hint = out.removeprefix("❌ Not yet: ").split(". Hint: ", 1)
        assert len(what) > 15 and len(hint) > 15, out
        assert "AssertionError" not in out and "Traceback" not in out and "raised" not in what, out
        assert words in out, (words, out)


@pytest.mark.parametrize("ex_id", sorted(CASES))
def test_a_totally_wrong_type_prints_instead_of_raising(ex_id, capsys):
    checker = checks.EXERCISES[ex_id].checker
    extra = {"02.2": blobs(), "02.3": bank_and_query(), "04.3": (nn.Linear(2, 2),), "05.2": (nn.Linear(2, 2),),
             "05.3": range_test(), "06.1": (PROBS, LABELS), "06.2": (correct_vector(),),
             "06.3": overconfident(), "00.2": (nn.Linear(2, 2),), "00.1": (1572864,),
             "01.1": (1.0, True, tiny_imagenet_classifier())}.get(ex_id, ())
    for answer in ("banana", None, 3.5j):
        assert checker(answer, *extra) is False
        out = capsys.readouterr().out
        assert out.startswith("❌ Not yet: ") and "Hint: " in out, out


def test_a_crash_in_the_learners_code_is_reported_not_raised(capsys):
    def broken(model, x):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")
    assert checks.check_predict(broken) is False
    out = capsys.readouterr().out
    assert "RuntimeError: mat1 and mat2 shapes cannot be multiplied" in out and "Hint: " in out


def test_a_bug_in_the_checkers_own_code_propagates(monkeypatch):
    """Only the learner's mistakes become "Not yet": an exception from the checker's own code is a bug."""
    monkeypatch.setattr(checks, "_as_number", float)   # a checker bug: float() takes one argument
    with pytest.raises(TypeError):
        checks.check_parameter_count(22, nn.Linear(10, 2))


def test_a_learners_model_that_fails_inside_torch_is_reported(capsys):
    wrong = nn.Sequential(nn.Flatten(), nn.Linear(5, 3))   # fails in torch's code, not the learner's
    assert checks.check_feature_extractor(wrong) is False
    out = capsys.readouterr().out
    assert out.startswith("❌ Not yet: checking your answer raised RuntimeError") and "Hint: " in out


def test_checking_leaves_the_random_generators_alone(capsys):
    """A checker runs in torch.random.fork_rng() and restores NumPy and random: the learner's later draws
    are those they would get without checking (check_predict seeds torch, check_reproducible draws)."""
    def draws():
        return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]

    seed_everything(5)
    expected = draws()
    seed_everything(5)
    assert checks.check_predict(predict_ref) and checks.check_reproducible(draw)
    assert checks.check_lr_choice(1.0, *range_test()) is False
    assert draws() == expected


def test_an_unfinished_exercise_says_so(capsys):
    def unfinished(model, x):
        # YOUR CODE HERE
        raise NotImplementedError()
    assert checks.check_predict(unfinished) is False
    assert "still raises NotImplementedError" in capsys.readouterr().out


def test_lr_choice_accepts_only_rates_below_the_loss_minimum(capsys):
    lrs = [1e-5, 1e-4, 1e-3, 1e-2, 1e-1]
    losses = [2.0, 1.95, 1.9, 1.0, 3.0]   # steepest fall right into the minimum, as in chapter 05
    assert checks.check_lr_choice(1e-3, lrs, losses) is True
    assert checks.check_lr_choice(1e-2, lrs, losses) is False   # the minimum's own rate
    assert "at the loss minimum" in capsys.readouterr().out
    assert checks.check_lr_choice(2e-3, [1e-3, 1e-2], [1.0, 2.0]) is False
    assert "lowest at the very first rate" in capsys.readouterr().out


def test_specific_diagnoses(capsys):
    checks.check_new_head(new_head(keep_outer=True))
    assert "applied 2 times" in capsys.readouterr().out
    checks.check_optimizer_params(*stale_optimizer())
    out = capsys.readouterr().out
    assert "never updates 2 trainable tensors (_fc.weight, _fc.bias)" in out and "no longer in the model" in out
    checks.check_preprocessing(eval_transform(224, 256, IMAGENET_MEAN, IMAGENET_STD))
    assert "ImageNet's mean and std" in capsys.readouterr().out
    checks.check_ece(ece_unweighted(PROBS, LABELS), PROBS, LABELS)
    assert "without weighting them by their size" in capsys.readouterr().out
    checks.check_params_per_label(4_652_008 / 40)
    assert "1000-class ImageNet head" in capsys.readouterr().out
