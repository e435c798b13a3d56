"""Build the WordNet-8 text set shipped in ``tl_helpers/assets/wordnet_glosses/`` from Debian's WordNet.

Each example is the definition ("gloss") of a WordNet noun, labelled by the lexicographer file its
synset belongs to (WordNet's 26 broad noun categories, "supersenses"). This script is how the shipped
copy was made; learners never need to run it. On Debian or Ubuntu::

    apt-get install wordnet-base
    python scripts/build_wordnet_glosses.py         # writes tl_helpers/assets/wordnet_glosses/

What it does:
  * reads ``data.noun`` (one synset a line: offset, lexicographer file number, words, pointers, then
    ``| gloss``), keeps the synsets of 8 well-separated categories (animal, artifact, body, food,
    location, person, plant, substance);
  * keeps the definition part of each gloss (the text before the first ``;``: WordNet appends quoted
    usage examples, which often contain the word itself);
  * keeps short definitions (4 to 20 words) and drops near-duplicates: two definitions whose sets of
    lower-cased words overlap by 80 % or more (Jaccard) are the same text for our purposes, and every
    copy of a text found in two categories is dropped, since its label is ambiguous;
  * draws ``PER_CLASS`` definitions a category with a seeded generator from the candidates sorted by
    synset offset, so the build is deterministic, then checks the drawn set for near-duplicates again;
  * writes ``glosses.csv`` (text, label, synset offset, first lemma) sorted by label and offset,
    ``LICENSE.txt`` (WordNet 3.0's licence, which must accompany every copy) and ``README.md``.

The splits are not stored: ``tl_helpers.text.gloss_splits`` computes them (stratified, seeded).
"""

from __future__ import annotations

import argparse
import csv
import math
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SOURCE = Path("/usr/share/wordnet/data.noun")
OUT = ROOT / "tl_helpers" / "assets" / "wordnet_glosses"
# lexicographer file number -> class name (WordNet's lexnames: 05 noun.animal, 06 noun.artifact, ...)
CATEGORIES = {5: "animal", 6: "artifact", 8: "body", 13: "food", 15: "location", 18: "person",
              20: "plant", 27: "substance"}
PER_CLASS = 300
MIN_WORDS, MAX_WORDS = 4, 20
JACCARD = 0.8
SEED = 0
WORD = re.compile(r"[a-z0-9]+")


def parse_line(line: str) -> tuple[str, int, str, str] | None:
    """(offset, lexicographer file number, first lemma, definition) of one ``data.noun`` line, or None.

    >>> parse_line("02084071 05 n 01 dog 0 000 | a member of the genus Canis; \\"the dog barked\\"  ")
    ('02084071', 5, 'dog', 'a member of the genus Canis')
    >>> parse_line("  1 This software and database is provided") is None
    True
    """
    if line.startswith(" ") or "|" not in line:
        return None  # the licence header
    head, gloss = line.split("|", 1)
    fields = head.split()
    offset, lexfile, lemma = fields[0], int(fields[1]), fields[4].replace("_", " ")
    definition = gloss.strip().split(";")[0].strip()
    return offset, lexfile, lemma, definition


def word_set(text: str) -> frozenset[str]:
    """Lower-cased words of ``text``, the key of near-duplicate detection.

    >>> sorted(word_set("A dog, a Dog!"))
    ['a', 'dog']
    """
    return frozenset(WORD.findall(text.lower()))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    """Overlap of two word sets: |a & b| / |a | b|.

    >>> jaccard(frozenset("ab"), frozenset("bc"))
    0.3333333333333333
    """
    return len(a & b) / max(len(a | b), 1)


def drop_near_duplicates(rows: list[dict], threshold: float = JACCARD) -> list[dict]:
    """Keep the first of every group of rows whose word sets overlap by ``threshold`` or more.

    Prefix filtering keeps this fast: with each word set sorted rarest word first, two sets with a
    Jaccard overlap of ``threshold`` or more share a word among their first ``n - ceil(threshold * n) + 1``.

    >>> [r["text"] for r in drop_near_duplicates([{"text": "a small dog"}, {"text": "a small dog!"},
    ...                                           {"text": "a big cat"}])]
    ['a small dog', 'a big cat']
    """
    sets = [word_set(r["text"]) for r in rows]
    frequency: dict[str, int] = defaultdict(int)
    for words in sets:
        for w in words:
            frequency[w] += 1
    kept: list[dict] = []
    by_word: dict[str, list[int]] = defaultdict(list)  # inverted index of the kept rows' prefixes
    for row, words in zip(rows, sets):
        ordered = sorted(words, key=lambda w: (frequency[w], w))
        prefix = ordered[: len(ordered) - math.ceil(threshold * len(ordered)) + 1]
        candidates = {i for w in prefix for i in by_word[w]}
        if any(jaccard(words, kept[i]["words"]) >= threshold for i in candidates):
            continue
        for w in prefix:
            by_word[w].append(len(kept))
        kept.append({**row, "words": words})
    return kept


def read_candidates(source: Path) -> list[dict]:
    """Every usable definition of the chosen categories, sorted by synset offset."""
    rows, labels_of = [], defaultdict(set)
    with open(source, encoding="utf-8") as f:
        for line in f:
            parsed = parse_line(line)
            if parsed is None:
                continue
            offset, lexfile, lemma, text = parsed
            key = " ".join(WORD.findall(text.lower()))
            labels_of[key].add(lexfile)
            if lexfile in CATEGORIES and MIN_WORDS <= len(text.split()) <= MAX_WORDS:
                rows.append({"text": text, "label": CATEGORIES[lexfile], "synset": offset, "lemma": lemma,
                             "key": key})
    # a text that defines synsets in two categories has no single label: drop every copy
    rows = [r for r in rows if len(labels_of[r["key"]]) == 1]
    return drop_near_duplicates(rows)


def licence_text(source: Path) -> str:
    """The licence header of ``data.noun`` (numbered lines), as plain text."""
    lines = []
    with open(source, encoding="utf-8") as f:
        for line in f:
            if not line.startswith("  "):
                break
            lines.append(re.sub(r"^\s+\d+ ?", "", line.rstrip()))
    return "\n".join(lines).strip() + "\n"


README = """# WordNet-8: noun definitions labelled by category

{total} definitions of English nouns from WordNet 3.0, {per_class} in each of 8 categories (WordNet's
lexicographer files, the "supersenses" of nouns): {classes}.

Made by `scripts/build_wordnet_glosses.py` from Debian's `wordnet-base` (`/usr/share/wordnet/data.noun`):
definitions of 4 to {max_words} words, usage examples removed, texts found in two categories dropped,
near-duplicates (word-set overlap of {jaccard:.0%} or more) dropped, then {per_class} drawn a category with seed {seed}.

`glosses.csv` columns: `text` (the definition), `label` (the category), `synset` (the WordNet 3.0 synset
offset in `data.noun`), `lemma` (the synset's first word, not part of the input).

Source: WordNet 3.0, Princeton University, https://wordnet.princeton.edu/ (George A. Miller, 1995,
"WordNet: A Lexical Database for English", Communications of the ACM 38(11): 39-41).
Licence: the WordNet 3.0 licence in `LICENSE.txt` (use, copy, modify and distribute for any purpose,
keeping the copyright notice).
"""


def build(source: Path = SOURCE, out: Path = OUT, per_class: int = PER_CLASS, seed: int = SEED) -> list[dict]:
    """Write the data set to ``out`` and return its rows."""
    if not source.exists():
        sys.exit(f"{source} not found: install WordNet with `apt-get install wordnet-base`.")
    candidates = read_candidates(source)
    rng = np.random.default_rng(seed)
    chosen = []
    for label in sorted(CATEGORIES.values()):
        pool = [r for r in candidates if r["label"] == label]
        if len(pool) < per_class:
            sys.exit(f"only {len(pool)} usable definitions of {label}, fewer than {per_class}")
        idx = sorted(rng.choice(len(pool), size=per_class, replace=False))
        chosen += [pool[i] for i in idx]
    assert len(drop_near_duplicates(chosen)) == len(chosen)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "glosses.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label", "synset", "lemma"], lineterminator="\n")
        writer.writeheader()
        for r in chosen:
            writer.writerow({k: r[k] for k in ("text", "label", "synset", "lemma")})
    (out / "LICENSE.txt").write_text(licence_text(source), encoding="utf-8")
    classes = sorted(CATEGORIES.values())
    (out / "README.md").write_text(README.format(total=len(chosen), per_class=per_class, classes=", ".join(classes),
                                                 max_words=MAX_WORDS, jaccard=JACCARD, seed=seed), encoding="utf-8")
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", type=Path, default=SOURCE)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--per-class", type=int, default=PER_CLASS)
    args = parser.parse_args()
    rows = build(args.source, args.out, args.per_class)
    counts = defaultdict(int)
    for r in rows:
        counts[r["label"]] += 1
    print(f"{len(rows)} definitions written to {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}:",
          dict(counts))


if __name__ == "__main__":
    main()
