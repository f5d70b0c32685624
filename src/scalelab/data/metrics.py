"""Diversity and quality metrics of a token stream, for any split, variant or subset.

- distinct-n: distinct n-grams over all n-grams (lexical diversity; 1 means nothing repeats);
- unigram entropy: bits per token of the token-frequency distribution;
- compression ratio: raw UTF-8 bytes over zstd-compressed bytes (redundancy; boilerplate compresses well);
- Heaps' law: vocabulary growth V(n) = k * n^beta (how fast new token types keep appearing);
- duplicate fractions: exact (same content hash) and near (same near-duplicate cluster);
- source mixture: documents and tokens per source.

Everything is vectorised with numpy, so 5M tokens take seconds. `split_metrics` measures a prefix of a split:
train documents are stored shuffled, so a prefix is a fair sample, and subsets of a variant measured with the
same budget see the same tokens.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import zstandard

from scalelab.data.split import mix64_array
from scalelab.data.store import TokenSplit
from scalelab.data.tokenizer import Tokenizer
from scalelab.errors import DataError


def _ngram_keys(tokens: np.ndarray, n: int) -> np.ndarray:
    """One uint64 per n-gram start: the ids packed side by side when they fit in 64 bits, else a hash."""
    ids = tokens.astype(np.uint64)
    count = ids.shape[0] - n + 1
    bits = max(int(ids.max()).bit_length(), 1)
    keys = np.zeros(count, dtype=np.uint64)
    if n * bits <= 64:
        for j in range(n):
            keys = (keys << np.uint64(bits)) | ids[j:j + count]
    else:
        for j in range(n):
            # A bijective mixer, so hashing step by step only collides by chance (~2^-64 per pair).
            keys = mix64_array(keys + ids[j:j + count], 0)
    return keys


def _count_distinct(values: np.ndarray) -> int:
    # Sorting and counting changes is ~50x faster than np.unique on millions of uint64 keys (numpy 2.x).
    ordered = np.sort(values)
    return int(ordered.shape[0] and 1 + np.count_nonzero(ordered[1:] != ordered[:-1]))


def distinct_n(tokens: np.ndarray, n: int, offsets: np.ndarray | None = None) -> float:
    """Distinct n-grams over total n-grams, in (0, 1]; 0.0 when the stream holds no n-gram.

    With `offsets` (document starts, then the end of the stream) an n-gram never spans two documents.
    """
    if n < 1:
        raise ValueError(f"distinct_n needs n >= 1 (got {n})")
    length = int(tokens.shape[0])
    if length < n:
        return 0.0
    keys = _ngram_keys(tokens, n)
    if offsets is not None:
        doc_end = np.repeat(offsets[1:], np.diff(offsets))
        starts = np.arange(keys.shape[0])
        keys = keys[starts + n <= doc_end[: keys.shape[0]]]
    if keys.shape[0] == 0:
        return 0.0
    return _count_distinct(keys) / keys.shape[0]


def unigram_entropy(tokens: np.ndarray, vocab_size: int | None = None) -> float:
    """Shannon entropy of the token frequencies, in bits per token (0.0 for an empty stream).

    `vocab_size`, when given, is checked against the ids: an id beyond it means the wrong tokenizer.
    """
    counts = np.bincount(tokens.astype(np.intp, copy=False), minlength=vocab_size or 0)
    if vocab_size is not None and counts.shape[0] > vocab_size:
        raise ValueError(f"token id {counts.shape[0] - 1} is outside the vocabulary of {vocab_size}")
    counts = counts[counts > 0]
    total = counts.sum()
    return float((counts / total * np.log2(total / counts)).sum()) if total else 0.0


def compression_ratio(chunks: Iterable[bytes], level: int = 3) -> float:
    """Raw bytes over zstd-compressed bytes, compressing as one stream (0.0 for no bytes).

    One stream rather than chunk by chunk, so repetition across documents counts as redundancy.
    """
    compressor = zstandard.ZstdCompressor(level=level).compressobj()
    raw = compressed = 0
    for chunk in chunks:
        raw += len(chunk)
        compressed += len(compressor.compress(chunk))
    compressed += len(compressor.flush())
    return raw / compressed if raw else 0.0


@dataclass(frozen=True)
class HeapsFit:
    """Vocabulary growth V(n) = k * n^beta, fitted by least squares in log-log space."""

    k: float
    beta: float
    points: list[tuple[int, int]]
    """(tokens read, distinct ids seen) at geometrically spaced n."""
    r2: float
    """Coefficient of determination of the log-log fit."""


def heaps_law(tokens: np.ndarray, num_points: int = 20) -> HeapsFit:
    """Distinct ids among the first n tokens, at `num_points` geometrically spaced n up to the whole stream."""
    length = int(tokens.shape[0])
    if length < 2:
        raise ValueError(f"Heaps' law needs at least 2 tokens to fit (got {length})")
    _, first_seen = np.unique(tokens, return_index=True)
    first_seen.sort()
    ns = np.unique(np.round(np.geomspace(1, length, num_points)).astype(np.int64))
    # The k-th distinct id first appears at first_seen[k], so V(n) counts first sightings before n.
    vocab = np.searchsorted(first_seen, ns, side="left")
    log_n, log_v = np.log(ns), np.log(vocab)
    beta, log_k = np.polyfit(log_n, log_v, 1)
    residual = float(((log_v - (beta * log_n + log_k)) ** 2).sum())
    total = float(((log_v - log_v.mean()) ** 2).sum())
    # A constant vocabulary is fitted exactly by beta = 0.
    r2 = 1.0 - residual / total if total > 0 else 1.0
    points = [(int(n), int(v)) for n, v in zip(ns, vocab, strict=True)]
    return HeapsFit(k=float(np.exp(log_k)), beta=float(beta), points=points, r2=r2)


def duplicate_fractions(doc_hashes: np.ndarray, near_labels: np.ndarray | None = None) -> dict[str, float | None]:
    """Shares of documents that repeat an earlier one.

    "exact": documents whose hash an earlier document already had. "near": documents in a near-duplicate
    cluster (`near_labels`: a cluster id per document) other than the cluster's first member; None without
    labels. Both are (documents - distinct values) / documents.
    """
    if near_labels is not None and near_labels.shape != doc_hashes.shape:
        raise ValueError(f"near_labels has {near_labels.shape[0]} entries for {doc_hashes.shape[0]} documents")
    return {"exact": _repeated_share(doc_hashes),
            "near": None if near_labels is None else _repeated_share(near_labels)}


def _repeated_share(values: np.ndarray) -> float:
    return 1.0 - _count_distinct(values) / values.shape[0] if values.shape[0] else 0.0


def source_mixture(records: list[dict[str, str]], doc_tokens: np.ndarray) -> dict[str, dict[str, float]]:
    """Per source: documents, tokens, and share of all tokens."""
    names, which = np.unique([record["source"] for record in records], return_inverse=True)
    docs = np.bincount(which, minlength=names.shape[0])
    tokens = np.bincount(which, weights=doc_tokens, minlength=names.shape[0])
    total = float(tokens.sum())
    return {str(name): {"documents": int(d), "tokens": int(t), "token_share": float(t) / total if total else 0.0}
            for name, d, t in zip(names, docs, tokens, strict=True)}


def split_metrics(split: TokenSplit, tokenizer: Tokenizer, *, max_tokens: int = 5_000_000,
                  near_labels: np.ndarray | None = None) -> dict[str, Any]:
    """Every metric above on the first `max_tokens` tokens of `split`, as a JSON-able dict.

    `near_labels`: a near-duplicate cluster id per document of the split's directory, in stored order; only
    the documents in the measured prefix are used (as with doc_hash.bin).
    """
    view = split.subset(max_tokens) if split.n_tokens > max_tokens else split
    tokens, offsets, n_docs = view.tokens, view.offsets, view.n_docs
    if view.n_tokens < 2:
        raise DataError(f"{split.name} has {view.n_tokens} token(s); its metrics need at least 2")
    if near_labels is not None and near_labels.shape[0] < n_docs:
        raise DataError(f"near_labels has {near_labels.shape[0]:,} entries but the first {view.n_tokens:,} "
                        f"tokens of {split.name} span {n_docs:,} documents")
    # The end-of-document token is a boundary marker, not text.
    texts = (tokenizer.decode(doc[doc != tokenizer.eod_id]).encode("utf-8") for doc in view.documents())
    duplicates = duplicate_fractions(view.doc_hashes(), None if near_labels is None else near_labels[:n_docs])
    heaps = heaps_law(tokens)
    return {
        **{f"distinct_{n}": distinct_n(tokens, n, offsets) for n in range(1, 5)},
        "entropy_bits": unigram_entropy(tokens, tokenizer.vocab_size),
        "compression_ratio": compression_ratio(texts),
        "heaps_k": heaps.k,
        "heaps_beta": heaps.beta,
        "duplicates_exact": duplicates["exact"],
        "duplicates_near": duplicates["near"],
        "mixture": source_mixture(view.doc_records(), np.diff(offsets)),
        "tokens_measured": view.n_tokens,
    }
