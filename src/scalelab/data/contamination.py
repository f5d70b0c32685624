"""Held-out documents that share long passages with training documents: n-gram containment.

MinHash (dedup.py) compares whole documents, so a held-out file that copies a third of a training file stays
below its Jaccard threshold. Containment catches it, as the large-model papers measured contamination:
- Brown et al. 2020 (GPT-3, Appendix C): exact 13-gram matches with the training data, ignoring 13-grams that
  occur in more than 10 training documents, which are boilerplate rather than leaked text;
- Chowdhery et al. 2022 (PaLM, §8): an example is contaminated when a large share of its n-grams occurs in
  training data;
- Touvron et al. 2023 (Llama 2, Appendix A.6): the share of an example's tokens covered by n-gram matches,
  with a threshold on that share.
Here a held-out document is contaminated when the share of its words covered by a matching n-gram exceeds
`threshold`.

The unit is the word as MinHash normalises it (lowercased, punctuation deleted, digit runs collapsed): the
split is decided before the tokenizer's tokens exist, and a word unit makes n mean the same for every
tokenizer. Memory is bounded by the held-out set, which is small: its n-grams are kept as sorted unique
64-bit hashes with, for each, the number of distinct train documents holding it (and the first one, to name
an example); train documents are streamed in batches.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import Field

from scalelab.config import StrictModel
from scalelab.data.dedup import word_ngrams

# Characters of text hashed at a time: a few MB of per-character arrays.
_BATCH_CHARS = 1 << 20


class DecontaminateConfig(StrictModel):
    """N-gram containment between held-out and train documents."""

    ngram: int = Field(13, ge=1, description="Words per n-gram (GPT-3 used 13).")
    max_train_docs: int = Field(10, ge=1, description="Ignore n-grams found in more train documents than this "
                                                      "(boilerplate; GPT-3 used 10).")
    # 0.1 catches the stdlib's test/test_asyncio/test_ssl.py: 13 % of its words lie in passages shared with
    # test_asyncio/functional.py, and it made 88 % of a 5-gram's drop in held-out loss between 2.56M and 5.12M
    # training tokens; no stdlib held-out document has between 8 % and 11 %. Llama 2 (App. A.6) called a
    # sample "clean" below 20 %; small models that memorise n-grams need the stricter bound.
    threshold: float = Field(0.1, ge=0.0, le=1.0, description="A held-out document is contaminated when more "
                                                              "than this share of its words is covered by "
                                                              "matches; 1 turns the rule off.")
    action: Literal["drop", "cut"] = Field("drop", description="drop: remove contaminated documents from the "
                                                               "held-out set; cut: remove the train documents "
                                                               "they overlap instead.")


@dataclass
class HeldOutGrams:
    """The held-out documents' n-grams: `index` maps each (document, position) n-gram into `unique`."""

    unique: np.ndarray  # sorted distinct n-gram hashes
    index: np.ndarray  # per n-gram of every document, in order: its place in `unique`
    grams: np.ndarray  # n-grams of each document
    words: np.ndarray  # words of each document

    @property
    def starts(self) -> np.ndarray:
        """Where each document's n-grams start in `index`."""
        return np.cumsum(self.grams) - self.grams


@dataclass
class TrainCounts:
    """For each held-out n-gram: how many distinct train documents hold it, and the first of them (or -1)."""

    documents: np.ndarray
    first: np.ndarray


def batches(texts: Iterable[str], chars: int = _BATCH_CHARS) -> Iterator[list[str]]:
    batch: list[str] = []
    size = 0
    for text in texts:
        batch.append(text)
        size += len(text)
        if size >= chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def held_out_grams(texts: Iterable[str], config: DecontaminateConfig) -> HeldOutGrams:
    hashes, words = [], []
    for batch in batches(texts):
        batch_hashes, batch_words = word_ngrams(batch, config.ngram)
        hashes.append(batch_hashes)
        words.append(batch_words)
    flat = np.concatenate(hashes) if hashes else np.zeros(0, dtype=np.uint64)
    words_array = np.concatenate(words) if words else np.zeros(0, dtype=np.int64)
    unique, index = np.unique(flat, return_inverse=True)
    return HeldOutGrams(unique, index, np.maximum(words_array - config.ngram + 1, 0), words_array)


def count_train(grams: HeldOutGrams, train_texts: Iterable[str], config: DecontaminateConfig) -> TrainCounts:
    """Stream train texts (numbered in order) and count, per held-out n-gram, the train documents holding it."""
    size = grams.unique.size
    counts = TrainCounts(np.zeros(size, dtype=np.int64), np.full(size, -1, dtype=np.int64))
    first_doc = 0
    for batch in batches(train_texts):
        docs, places = _hits(grams.unique, batch, config.ngram)
        pairs = np.unique(docs * size + places)  # each train document counts once per n-gram
        docs, places = pairs // size + first_doc, pairs % size
        counts.documents += np.bincount(places, minlength=size)
        unseen = counts.first[places] < 0
        # pairs are sorted by document, so the first occurrence of each place is its earliest document
        new_places, at = np.unique(places[unseen], return_index=True)
        counts.first[new_places] = docs[unseen][at]
        first_doc += len(batch)
    return counts


def _hits(unique: np.ndarray, texts: list[str], ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """(document within the batch, place in `unique`) of every n-gram of `texts` that is in `unique`."""
    hashes, words = word_ngrams(texts, ngram)
    owners = np.repeat(np.arange(len(texts)), np.maximum(words - ngram + 1, 0))
    if not unique.size:
        return owners[:0], owners[:0]
    places = np.minimum(np.searchsorted(unique, hashes), unique.size - 1)
    found = unique[places] == hashes
    return owners[found], places[found]


def matched(counts: TrainCounts, config: DecontaminateConfig) -> np.ndarray:
    """Held-out n-grams that count as leaked: in at least one train document, and in no more than
    `max_train_docs` of them."""
    return (counts.documents >= 1) & (counts.documents <= config.max_train_docs)


def covered_shares(grams: HeldOutGrams, leaked: np.ndarray, ngram: int) -> np.ndarray:
    """Share of each held-out document's words that lie inside some leaked n-gram (0 for an empty document)."""
    starts = np.flatnonzero(leaked[grams.index])
    word_offsets = np.cumsum(grams.words) - grams.words
    owner = np.repeat(np.arange(grams.words.size), grams.grams)[starts]
    first_word = word_offsets[owner] + starts - grams.starts[owner]
    edges = np.zeros(int(grams.words.sum()) + 1, dtype=np.int64)
    np.add.at(edges, first_word, 1)
    np.add.at(edges, first_word + ngram, -1)
    covered = np.cumsum(edges[:-1]) > 0
    owners = np.repeat(np.arange(grams.words.size), grams.words)
    per_doc = np.bincount(owners, weights=covered, minlength=grams.words.size)
    return per_doc / np.maximum(grams.words, 1)


def main_source(grams: HeldOutGrams, start: int, counts: TrainCounts, leaked: np.ndarray, doc: int) -> int:
    """The train document (by stream number) that first holds most of a held-out document's leaked n-grams;
    `start` is where the document's n-grams start (`grams.starts[doc]`)."""
    places = grams.index[start:start + int(grams.grams[doc])]
    firsts = counts.first[places[leaked[places]]]
    if not firsts.size:
        return -1
    values, times = np.unique(firsts, return_counts=True)
    return int(values[np.argmax(times)])


def overlapping_train(unique: np.ndarray, train_texts: Iterable[str], ngram: int) -> np.ndarray:
    """(train documents,) bool: which streamed train texts hold any of the n-grams `unique` (sorted)."""
    flags = []
    for batch in batches(train_texts):
        docs, _ = _hits(unique, batch, ngram)
        hit = np.zeros(len(batch), dtype=bool)
        hit[docs] = True
        flags.append(hit)
    return np.concatenate(flags) if flags else np.zeros(0, dtype=bool)
