import json
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scalelab.data.metrics import (
    compression_ratio,
    distinct_n,
    duplicate_fractions,
    heaps_law,
    source_mixture,
    split_metrics,
    unigram_entropy,
)
from scalelab.errors import DataError

KEYS = {"distinct_1", "distinct_2", "distinct_3", "distinct_4", "entropy_bits", "compression_ratio", "heaps_k",
        "heaps_beta", "duplicates_exact", "duplicates_near", "mixture", "tokens_measured"}


def slow_distinct(docs: list[list[int]], n: int) -> float:
    grams = [tuple(doc[i:i + n]) for doc in docs for i in range(len(doc) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def test_distinct_1_of_a_tiled_range():
    assert distinct_n(np.tile(np.arange(100), 4), 1) == 0.25


def test_distinct_2_of_a_de_bruijn_sequence():
    # Every bigram over {0, 1, 2} exactly once, while unigrams repeat.
    tokens = np.array([0, 0, 1, 0, 2, 1, 1, 2, 2, 0])
    assert distinct_n(tokens, 2) == 1.0
    assert distinct_n(tokens, 1) == pytest.approx(0.3)


def test_offsets_keep_ngrams_inside_documents():
    tokens = np.array([1, 2, 3, 1, 2, 3])
    assert distinct_n(tokens, 2) == pytest.approx(3 / 5)  # 12 23 31 12 23
    assert distinct_n(tokens, 2, np.array([0, 3, 6])) == pytest.approx(2 / 4)  # 12 23 | 12 23
    assert distinct_n(np.array([1, 2, 3]), 2, np.array([0, 1, 3])) == 1.0  # [1] is too short for a bigram
    assert distinct_n(np.array([1, 2]), 2, np.array([0, 1, 2])) == 0.0
    assert distinct_n(np.array([1]), 2) == 0.0


docs_strategy = st.integers(1, 4).flatmap(lambda n: st.tuples(
    st.just(n),
    st.sampled_from([3, 300, 1 << 40]).flatmap(  # 1 << 40 ids do not pack, so those n-grams are hashed
        lambda top: st.lists(st.lists(st.integers(0, top), max_size=12), min_size=1, max_size=6))))


@settings(max_examples=200, deadline=None)
@given(docs_strategy)
def test_distinct_n_matches_a_set_of_tuples(case):
    n, docs = case
    tokens = np.array([t for doc in docs for t in doc], dtype=np.uint64)
    offsets = np.cumsum([0] + [len(doc) for doc in docs])
    assert distinct_n(tokens, n, offsets) == slow_distinct(docs, n)
    assert distinct_n(tokens, n) == slow_distinct([tokens.tolist()], n)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=5, max_size=60))
def test_distinct_n_is_a_share_that_never_falls_as_n_grows(ids):
    # Within one stream a repeated (n+1)-gram repeats its n-gram prefix, so repetition can only thin out.
    # Not so with offsets: a document of exactly n tokens adds a distinct n-gram but no (n+1)-gram.
    tokens = np.array(ids)
    shares = [distinct_n(tokens, n) for n in range(1, 6)]
    assert all(0 < share <= 1 for share in shares)
    assert shares == sorted(shares)


@pytest.mark.parametrize("bits", [0, 1, 3, 8])
def test_entropy_of_a_uniform_stream_is_exactly_its_bits(bits):
    tokens = np.random.default_rng(bits).permutation(np.repeat(np.arange(1 << bits), 3))
    assert unigram_entropy(tokens, vocab_size=1 << bits) == bits


def test_entropy_of_a_constant_stream_is_zero_and_ids_must_fit_the_vocabulary():
    assert unigram_entropy(np.full(50, 7, dtype=np.uint16)) == 0.0
    assert unigram_entropy(np.zeros(0, dtype=np.uint16)) == 0.0
    with pytest.raises(ValueError, match="outside the vocabulary of 4"):
        unigram_entropy(np.array([0, 4]), vocab_size=4)


def test_compression_ratio_separates_redundant_from_random_bytes():
    assert compression_ratio([b"a" * 10_000] * 10) > 100
    assert compression_ratio([os.urandom(4096) for _ in range(16)]) == pytest.approx(1.0, abs=0.01)
    assert compression_ratio([]) == 0.0


def test_compression_ratio_sees_repetition_across_chunks():
    block = os.urandom(1 << 16)
    assert compression_ratio([block, block]) == pytest.approx(2.0, rel=0.01)


@pytest.mark.parametrize("beta", [0.4, 0.5, 0.7])
def test_heaps_law_recovers_the_growth_exponent(beta):
    # The k-th new id appears at position ceil(k^(1/beta)), so V(n) = ceil(n^beta); the rest repeat id 0.
    length = 1_000_000
    firsts = np.unique(np.ceil(np.arange(int(length**beta) + 1) ** (1 / beta)).astype(np.int64))
    firsts = firsts[firsts < length]
    tokens = np.zeros(length, dtype=np.int64)
    tokens[firsts] = np.arange(firsts.shape[0])
    fit = heaps_law(tokens)
    assert fit.beta == pytest.approx(beta, abs=0.02)
    # Rounding up to whole ids inflates the small-n points, which pulls k above 1 and beta slightly below.
    assert fit.k == pytest.approx(1.0, rel=0.25)
    assert fit.r2 > 0.99
    assert fit.points[0] == (1, 1) and fit.points[-1] == (length, firsts.shape[0])
    ns, vs = zip(*fit.points, strict=True)
    assert list(ns) == sorted(set(ns)) and list(vs) == sorted(vs)


def test_heaps_law_of_a_constant_stream_and_too_short_streams():
    fit = heaps_law(np.full(1000, 3))
    assert fit.beta == pytest.approx(0.0, abs=1e-9) and fit.k == pytest.approx(1.0) and fit.r2 == 1.0
    with pytest.raises(ValueError, match="at least 2 tokens"):
        heaps_law(np.array([1]))


def test_duplicate_fractions_count_members_beyond_the_first():
    hashes = np.array([5, 7, 5, 9, 7, 5], dtype=np.uint64)  # the 3rd, 5th and 6th repeat an earlier hash
    labels = np.array([0, 0, 1, 2, 3, 3])  # clusters {0, 1} and {4, 5} each have one extra member
    assert duplicate_fractions(hashes) == {"exact": 0.5, "near": None}
    assert duplicate_fractions(hashes, labels) == {"exact": 0.5, "near": pytest.approx(2 / 6)}
    assert duplicate_fractions(np.zeros(0, dtype=np.uint64)) == {"exact": 0.0, "near": None}
    with pytest.raises(ValueError, match="5 entries for 6 documents"):
        duplicate_fractions(hashes, labels[:5])


def test_source_mixture_counts_and_shares():
    records = [{"id": "1", "source": "a"}, {"id": "2", "source": "b"}, {"id": "3", "source": "a"}]
    mixture = source_mixture(records, np.array([10, 30, 60]))
    assert mixture == {"a": {"documents": 2, "tokens": 70, "token_share": pytest.approx(0.7)},
                       "b": {"documents": 1, "tokens": 30, "token_share": pytest.approx(0.3)}}
    assert sum(share["token_share"] for share in mixture.values()) == pytest.approx(1.0)


def test_split_metrics_of_a_prepared_split(prepared):
    train, tokenizer = prepared.train(), prepared.tokenizer
    metrics = split_metrics(train, tokenizer)
    assert set(metrics) == KEYS
    json.dumps(metrics)
    distinct = [metrics[f"distinct_{n}"] for n in range(1, 5)]
    assert all(0 < share <= 1 for share in distinct)
    assert 0 < metrics["entropy_bits"] <= np.log2(tokenizer.vocab_size)
    assert metrics["compression_ratio"] > 1
    assert 0 < metrics["heaps_beta"] <= 1 and metrics["heaps_k"] > 0
    assert 0 <= metrics["duplicates_exact"] < 1 and metrics["duplicates_near"] is None
    assert sum(s["token_share"] for s in metrics["mixture"].values()) == pytest.approx(1.0)
    assert sum(s["documents"] for s in metrics["mixture"].values()) == train.n_docs
    assert metrics["tokens_measured"] == train.n_tokens


def test_split_metrics_of_a_budget_are_those_of_the_prefix(prepared):
    train, tokenizer = prepared.train(), prepared.tokenizer
    budget = train.n_tokens // 3
    prefix = train.subset(budget)
    metrics = split_metrics(train, tokenizer, max_tokens=budget)
    assert metrics == split_metrics(prefix, tokenizer)
    assert metrics["tokens_measured"] == budget
    assert metrics["distinct_3"] == distinct_n(train.tokens[:budget], 3, prefix.offsets)
    assert metrics != split_metrics(train, tokenizer)


def test_split_metrics_near_labels_and_bad_inputs(prepared):
    train, tokenizer = prepared.train(), prepared.tokenizer
    prefix = train.subset(train.n_tokens // 2)
    labels = np.arange(train.n_docs)
    labels[1] = labels[0]  # one near-duplicate pair inside the prefix ...
    labels[-1] = labels[-2]  # ... and one beyond it
    metrics = split_metrics(prefix, tokenizer, near_labels=labels)
    assert metrics["duplicates_near"] == pytest.approx(1 / prefix.n_docs)
    with pytest.raises(DataError, match="span"):
        split_metrics(prefix, tokenizer, near_labels=labels[:2])
    with pytest.raises(DataError, match="at least 2"):
        split_metrics(train, tokenizer, max_tokens=1)
