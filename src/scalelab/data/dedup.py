"""Exact and near-duplicate detection: MinHash signatures, LSH bands, clusters, and which copy survives.

Near duplicates follow FineWeb's recipe: text simplified as datatrove's `simplify_text` does, word 5-grams,
112 MinHash permutations split into 14 bands of 8 rows. Two documents are candidates when any band matches;
clusters are the connected components of that relation, labelled by their smallest member.

Signatures are computed for a batch of documents at once, with no Python loop per word or shingle: lowercase
and NFD per text (in C) -> map, delete and collapse characters over the batch's code points with one lookup
table (`bytes.translate` for an all-ASCII batch) -> hash each word with a polynomial prefix sum -> combine n
consecutive word (or character) hashes into a shingle hash -> permute with multiply-shift hashes and take each
document's minima with `np.minimum.reduceat`. Each signature depends on its own text only.
"""

from __future__ import annotations

import functools
import string
import sys
import unicodedata
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field
from scipy.sparse import coo_array
from scipy.sparse.csgraph import connected_components

from scalelab.config import StrictModel
from scalelab.data.split import mix64_array

DedupMode = Literal["keep_one", "drop_cluster"]

_SPACE = ord(" ")
_ZERO = ord("0")
# Code points the character map deletes; and one past the last code point, which ends every document
# in a batch (str cannot hold it, so it never comes from text).
_DELETED = np.uint32(2**32 - 1)
_END = np.uint32(sys.maxunicode + 1)
_END_BYTES = int(_END).to_bytes(4, "little")
# Ends each document in an all-ASCII batch, where no byte above 127 occurs.
_ASCII_END = 0xFF
# Minima start at the largest uint64, so a document without shingles has every signature entry at _EMPTY_ENTRY
# and every band at _NO_BAND, which matches nothing. A real band hashes to _NO_BAND with probability 2**-64,
# and would then only be missed as a candidate.
_EMPTY_ENTRY = np.uint32(2**32 - 1)
_NO_BAND = np.uint64(2**64 - 1)
# Odd, so invertible modulo 2**64: a word's hash is made independent of where it sits in the batch.
_WORD_BASE = 0x9E3779B97F4A7C15
_WORD_BASE_INV = pow(_WORD_BASE, -1, 2**64)
_POWER_SPLIT = 4096
# Characters of raw text per batch, and shingles x permutations per block of the permutation step. Small
# enough that a batch's per-character arrays (about 50 bytes per character) and a block's 8 MB of products
# stay in cache: on a 2 MB L2 / 32 MB L3 machine these were fastest. A longer document is a batch of its own.
_BATCH_CHARS = 1 << 18
_BLOCK_VALUES = 1 << 20


class MinHashConfig(StrictModel):
    """MinHash-LSH parameters; the defaults are FineWeb's."""

    shingle: Literal["word", "char"] = Field("word", description="Shingle unit: words or characters.")
    ngram: int = Field(5, ge=1, description="Units per shingle; a shorter document is one shingle of all of it.")
    num_bands: int = Field(14, ge=1, description="LSH bands; a pair sharing any band is a candidate.")
    rows_per_band: int = Field(8, ge=1, description="Signature entries hashed together into one band.")
    seed: int = Field(1, ge=0, description="Chooses the permutations; signatures compare only under one seed.")

    @property
    def num_perm(self) -> int:
        return self.num_bands * self.rows_per_band

    @property
    def threshold(self) -> float:
        """Jaccard similarity at which the chance of becoming a candidate rises fastest: (1/b)^(1/r)."""
        return (1 / self.num_bands) ** (1 / self.rows_per_band)

    def describe(self) -> str:
        return (f"MinHash {self.num_bands} bands x {self.rows_per_band} rows = {self.num_perm} permutations over "
                f"{self.shingle} {self.ngram}-grams; pairs above Jaccard ~{self.threshold:.2f} are likely caught")


class DedupConfig(StrictModel):
    """Which duplicates to find, and what to keep of each cluster."""

    exact: bool = Field(True, description="Cluster documents with equal content hashes.")
    near: bool = Field(True, description="Cluster near duplicates found by MinHash-LSH.")
    minhash: MinHashConfig = Field(default_factory=MinHashConfig, description="Near-duplicate parameters.")
    mode: DedupMode = Field("keep_one", description="keep_one: keep one member per cluster; "
                                                    "drop_cluster: drop every member of a cluster.")
    reference: list[Path] = Field(default_factory=list,
                                  description="Prepared datasets to deduplicate against: documents with an exact "
                                              "or near duplicate there are dropped and listed in "
                                              "reference_matches.jsonl.")


@functools.cache
def _char_map() -> np.ndarray:
    """Lookup table over code points (and _END): whitespace -> space, decimal digits -> "0", deletions -> _DELETED.

    Deleted: ASCII punctuation and symbols, Unicode punctuation (P*), combining marks (Mn, which after NFD
    are the diacritics), invisible format characters (Cf, e.g. zero-width spaces) and control characters.
    Built once per process (about 0.3 s).
    """
    table = np.arange(_END + 1, dtype=np.uint32)
    for code in range(sys.maxunicode + 1):
        char = chr(code)
        category = unicodedata.category(char)
        if char.isspace():
            table[code] = _SPACE
        elif category == "Nd":
            table[code] = _ZERO
        elif category[0] == "P" or category in ("Mn", "Cf", "Cc"):
            table[code] = _DELETED
    table[[ord(char) for char in string.punctuation]] = _DELETED
    return table


@functools.cache
def _ascii_tables() -> tuple[bytes, bytes]:
    """`bytes.translate` table and deletions that do to ASCII what lowercasing and `_char_map` do.

    NFD changes no ASCII character, so on an all-ASCII batch one C pass replaces the per-text work.
    """
    char_map = _char_map()
    table, delete = bytearray(range(256)), bytearray()
    for code in range(128):
        mapped = char_map[ord(chr(code).lower())]
        if mapped == _DELETED:
            delete.append(code)
        else:
            table[code] = mapped
    return bytes(table), bytes(delete)


def _normalized_code_points(texts: list[str]) -> np.ndarray:
    """Code points of each text normalised as `normalize_for_shingles` describes, each text followed by _END.

    Lowercasing and NFD run per text in C; mapping, deleting and collapsing run over the whole batch. An
    all-ASCII batch (the common case for code and much English) takes a byte-wide path, about twice as fast.
    """
    if all(text.isascii() for text in texts):
        table, delete = _ascii_tables()
        end = bytes([_ASCII_END])
        data = (end.join(text.encode("ascii") for text in texts) + end).translate(table, delete)
        chars = _collapse(np.frombuffer(data, dtype=np.uint8), _ASCII_END).astype(np.uint32)
        chars[chars == _ASCII_END] = _END
        return chars
    decomposed = [unicodedata.normalize("NFD", text.lower()).encode("utf-32-le", "surrogatepass")
                  for text in texts]
    chars = _char_map()[np.frombuffer(_END_BYTES.join(decomposed) + _END_BYTES, dtype="<u4")]
    return _collapse(chars[chars != _DELETED], _END)


def _collapse(chars: np.ndarray, end: int) -> np.ndarray:
    """Drop each text's leading, trailing and repeated spaces and its repeated zeros; texts end at `end`."""
    keep = np.empty(chars.size, dtype=bool)
    keep[0] = chars[0] != _SPACE
    previous, current = chars[:-1], chars[1:]
    np.logical_not(((current == _ZERO) & (previous == _ZERO))
                   | ((current == _SPACE) & ((previous == _SPACE) | (previous == end))), out=keep[1:])
    chars = chars[keep]
    trailing = (chars[:-1] == _SPACE) & (chars[1:] == end)
    return chars[np.append(~trailing, True)]


def normalize_for_shingles(text: str) -> str:
    """Lowercase, strip diacritics, delete punctuation, turn each run of digits into "0", collapse whitespace.

    The operations of datatrove's `simplify_text`, except that punctuation is deleted before whitespace
    is collapsed, so `a - b` gives `a b` rather than a double space.
    """
    return _normalized_code_points([text])[:-1].astype("<u4").tobytes().decode("utf-32-le", "surrogatepass")


def minhash_signatures(texts: list[str], config: MinHashConfig) -> np.ndarray:
    """(n, num_perm) uint32 MinHash signatures; a document without shingles has every entry at 2**32 - 1.

    Each signature depends on its own text only, so batching and worker count never change results.
    """
    tokenize = _word_tokens if config.shingle == "word" else _char_tokens
    # ASCII texts first, so that most batches are all-ASCII and take the byte-wide path.
    order = np.argsort([not text.isascii() for text in texts], kind="stable")
    ordered = [texts[i] for i in order]
    lengths = np.array([len(text) for text in ordered], dtype=np.int64)
    batch_of = (np.cumsum(lengths) - lengths) // _BATCH_CHARS
    bounds = np.append(np.flatnonzero(np.diff(batch_of, prepend=-1)), len(texts))
    multipliers = _permutation_multipliers(config)
    signatures = np.empty((len(texts), config.num_perm), dtype=np.uint32)
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        tokens, counts = tokenize(_normalized_code_points(ordered[start:stop]))
        shingles, shingle_counts = _shingle_hashes(tokens, counts, config.ngram)
        signatures[order[start:stop]] = _min_hashes(shingles, shingle_counts, multipliers)
    return signatures


def word_ngrams(texts: list[str], ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of each text's word n-grams, in order, and each text's word count; words as MinHash normalises
    them. A text of fewer than n words has no n-gram, so text i owns max(words[i] - n + 1, 0) hashes."""
    if not texts:
        return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64)
    words, counts = _word_tokens(_normalized_code_points(texts))
    shingles, num = _shingle_hashes(words, counts, ngram)
    return shingles[np.repeat(counts >= ngram, num)], counts


def _permutation_multipliers(config: MinHashConfig) -> np.ndarray:
    """(num_perm,) odd uint64 multipliers: x -> (a * x mod 2**64) >> 32 is one permutation of shingle hashes."""
    return mix64_array(np.arange(config.num_perm, dtype=np.uint64), config.seed) | np.uint64(1)


def _word_tokens(chars: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hash of every word (run of characters between spaces) in a normalised batch, and each text's word count.

    A word's hash is sum(char[i] * B**i) mod 2**64 over its characters, read off a prefix sum of
    char * B**position and shifted back to the word's own start with B**-start.
    """
    in_word = np.zeros(chars.size + 2, dtype=np.int8)
    in_word[1:-1] = (chars != _SPACE) & (chars != _END)
    edges = np.diff(in_word)
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    with np.errstate(over="ignore"):
        high, low = _power_tables(_WORD_BASE, chars.size)
        prefix = np.zeros(chars.size + 1, dtype=np.uint64)
        np.cumsum(chars * (high[:, None] * low).reshape(-1)[: chars.size], out=prefix[1:])
        high, low = _power_tables(_WORD_BASE_INV, chars.size)
        unshift = high[starts // _POWER_SPLIT] * low[starts % _POWER_SPLIT]
        words = (prefix[ends] - prefix[starts]) * unshift
    counts = np.diff(np.searchsorted(starts, np.flatnonzero(chars == _END)), prepend=0)
    return words, counts


def _char_tokens(chars: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Code point of every character in a normalised batch, and each text's character count."""
    end = chars == _END
    return chars[~end].astype(np.uint64), np.diff(np.flatnonzero(end), prepend=-1) - 1


def _power_tables(base: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(high, low) with base**i mod 2**64 = high[i // _POWER_SPLIT] * low[i % _POWER_SPLIT] for i < size.

    Two short cumulative products and a vectorised outer product are several times faster than one long
    cumulative product, whose multiplies form a dependency chain.
    """
    low = np.full(_POWER_SPLIT, base, dtype=np.uint64)
    high = np.full(size // _POWER_SPLIT + 1, pow(base, _POWER_SPLIT, 2**64), dtype=np.uint64)
    low[0] = high[0] = 1
    with np.errstate(over="ignore"):
        return np.cumprod(high, out=high), np.cumprod(low, out=low)


def _shingle_hashes(tokens: np.ndarray, counts: np.ndarray, ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """Mixed 64-bit hash of every n-gram of tokens within each document, and each document's shingle count.

    A document with fewer than n tokens has one shingle of all of them, and a document with none has none.
    An n-gram's hash is sum(token[k] * K_k) over its positions k (K_k odd and distinct, so order matters),
    passed through splitmix64 so that the multiply-shift permutations see well-spread input. Each document's
    tokens are followed by n - 1 zeros, so that every window is a contiguous slice and a short document's
    one window holds its own tokens and zeros only.
    """
    num = np.where(counts >= ngram, counts - ngram + 1, np.minimum(counts, 1))
    spans = counts + ngram - 1
    padded = np.zeros(spans.sum(), dtype=np.uint64)
    padded[np.arange(tokens.size) + np.repeat(np.arange(counts.size) * (ngram - 1), counts)] = tokens
    keys = mix64_array(np.arange(ngram, dtype=np.uint64), 0) | np.uint64(1)
    size = padded.size - ngram + 1
    with np.errstate(over="ignore"):
        windows = padded[:size] * keys[0]
        for k in range(1, ngram):
            windows += padded[k : k + size] * keys[k]
    first = np.repeat(np.cumsum(spans) - spans - (np.cumsum(num) - num), num) + np.arange(num.sum())
    return mix64_array(windows[first], 0), num


def _min_hashes(shingles: np.ndarray, counts: np.ndarray, multipliers: np.ndarray) -> np.ndarray:
    """(docs, perms) uint32: per document and permutation, the top 32 bits of min(a * x mod 2**64).

    Minimising the full 64-bit product and shifting once at the end gives the same top bits as shifting
    every product. Blocks of shingles bound memory; a document straddling blocks merges its partial minima.
    """
    num_perm = multipliers.size
    bounds = np.concatenate([[0], np.cumsum(counts)])
    minima = np.full((counts.size, num_perm), np.iinfo(np.uint64).max, dtype=np.uint64)
    block = max(_BLOCK_VALUES // num_perm, 1)
    buffer = np.empty((num_perm, block), dtype=np.uint64)
    column = multipliers[:, None]
    for start in range(0, shingles.size, block):
        stop = min(start + block, shingles.size)
        first_doc = np.searchsorted(bounds, start, side="right") - 1
        end_doc = np.searchsorted(bounds, stop, side="left")
        docs = np.arange(first_doc, end_doc)
        docs = docs[counts[docs] > 0]
        values = buffer[:, : stop - start]
        with np.errstate(over="ignore"):
            np.multiply(column, shingles[None, start:stop], out=values)
        partial = np.minimum.reduceat(values, np.maximum(bounds[docs], start) - start, axis=1)
        minima[docs] = np.minimum(minima[docs], partial.T)
    return (minima >> np.uint64(32)).astype(np.uint32)


def band_hashes(signatures: np.ndarray, config: MinHashConfig) -> np.ndarray:
    """(n, num_bands) uint64: each band's rows chained through splitmix64 into one value.

    Bands of a document without shingles are set to a reserved value that `near_duplicate_labels`,
    `candidate_pairs` and `LSHIndex` never match, so empty documents are not near duplicates of each other.
    """
    rows = signatures.reshape(len(signatures), config.num_bands, config.rows_per_band)
    bands = np.zeros(rows.shape[:2], dtype=np.uint64)
    for k in range(config.rows_per_band):
        bands = mix64_array(bands ^ rows[:, :, k], k)
    bands[(rows == _EMPTY_ENTRY).all(axis=2)] = _NO_BAND
    return bands


def near_duplicate_labels(bands: np.ndarray) -> np.ndarray:
    """(n,) int64 cluster label per document: the smallest index in its connected component of "shares a band".

    One band column is joined at a time, carrying the clusters found so far as edges to their smallest
    member, so memory stays O(n) whatever the number of bands.
    """
    n = len(bands)
    labels = np.arange(n, dtype=np.int64)
    for column in bands.T:
        order = np.argsort(column, kind="stable")
        ordered = column[order]
        same = (ordered[1:] == ordered[:-1]) & (ordered[1:] != _NO_BAND)
        if not same.any():
            continue
        rows = np.concatenate([order[1:][same], np.arange(n)])
        cols = np.concatenate([order[:-1][same], labels])
        graph = coo_array((np.ones(rows.size, dtype=np.int32), (rows, cols)), shape=(n, n))
        _, component = connected_components(graph, directed=False)
        labels = _smallest_member(component)
    return labels


def _smallest_member(groups: np.ndarray) -> np.ndarray:
    _, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
    return first[inverse].astype(np.int64)


def candidate_pairs(bands: np.ndarray) -> np.ndarray:
    """(k, 2) int64 unique pairs i < j that share at least one band, sorted.

    Quadratic in the size of each group of equal bands: meant for evaluation, not for a corpus full of copies.
    """
    n = len(bands)
    keys = []
    for column in bands.T:
        order = np.argsort(column, kind="stable")
        ordered = column[order]
        keep = ordered != _NO_BAND
        first, second = _pairs_within_runs(ordered[keep])
        left, right = order[keep][first], order[keep][second]
        keys.append(np.minimum(left, right) * n + np.maximum(left, right))
    unique = np.unique(np.concatenate(keys))
    return np.stack([unique // n, unique % n], axis=1).astype(np.int64)


def _pairs_within_runs(ordered: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions (p, q), p < q, of every pair of equal values in a sorted array."""
    size = ordered.size
    run_ends = np.append(np.flatnonzero(ordered[1:] != ordered[:-1]) + 1, size)
    later = np.repeat(run_ends, np.diff(run_ends, prepend=0)) - np.arange(size) - 1
    first = np.repeat(np.arange(size), later)
    step = np.arange(first.size) - np.repeat(np.cumsum(later) - later, later)
    return first, first + 1 + step


def exact_labels(doc_hashes: np.ndarray) -> np.ndarray:
    """(n,) int64 cluster label per document: the smallest index with the same content hash."""
    return _smallest_member(np.asarray(doc_hashes))


def survivors(labels: np.ndarray, priority: np.ndarray, mode: DedupMode) -> np.ndarray:
    """(n,) bool mask of documents to keep.

    keep_one keeps, in each cluster, the member of smallest priority (ties: smallest index); with a
    content-derived priority the kept texts do not depend on input order. drop_cluster keeps only
    documents alone in their cluster.
    """
    n = len(labels)
    if mode == "drop_cluster":
        _, inverse, sizes = np.unique(labels, return_inverse=True, return_counts=True)
        return sizes[inverse] == 1
    order = np.lexsort((np.arange(n), priority, labels))
    ordered = labels[order]
    first = np.ones(n, dtype=bool)
    first[1:] = ordered[1:] != ordered[:-1]
    keep = np.zeros(n, dtype=bool)
    keep[order[first]] = True
    return keep


class LSHIndex:
    """Reference documents' content hashes and bands, sorted per band, to deduplicate one set against another
    (e.g. training documents against held-out ones)."""

    def __init__(self, band_order: np.ndarray, sorted_bands: np.ndarray, hash_order: np.ndarray,
                 sorted_hashes: np.ndarray) -> None:
        self._band_order = band_order  # (num_bands, n) reference index of each sorted entry
        self._sorted_bands = sorted_bands  # (num_bands, n)
        self._hash_order = hash_order
        self._sorted_hashes = sorted_hashes

    @classmethod
    def build(cls, bands: np.ndarray, doc_hashes: np.ndarray) -> LSHIndex:
        columns = np.ascontiguousarray(bands.T)
        band_order = np.argsort(columns, axis=1, kind="stable")
        hashes = np.asarray(doc_hashes, dtype=np.uint64)
        hash_order = np.argsort(hashes, kind="stable")
        return cls(band_order, np.take_along_axis(columns, band_order, axis=1), hash_order, hashes[hash_order])

    def __len__(self) -> int:
        return self._hash_order.size

    def query(self, bands: np.ndarray, doc_hashes: np.ndarray) -> np.ndarray:
        """(n,) int64: for each query document, a matching reference index or -1.

        An exact content-hash match wins; otherwise the smallest reference index sharing any band.
        """
        size = len(self)
        exact = _lookup(self._sorted_hashes, self._hash_order, np.asarray(doc_hashes, dtype=np.uint64), size)
        near = np.full(len(bands), size, dtype=np.int64)
        for sorted_band, order, column in zip(self._sorted_bands, self._band_order, bands.T, strict=True):
            found = _lookup(sorted_band, order, column, size)
            near = np.minimum(near, np.where(column == _NO_BAND, size, found))
        match = np.where(exact < size, exact, near)
        return np.where(match < size, match, -1)


def _lookup(sorted_values: np.ndarray, order: np.ndarray, values: np.ndarray, missing: int) -> np.ndarray:
    """Smallest original index whose value equals each of `values` (stable sort order), else `missing`."""
    if not sorted_values.size:
        return np.full(values.size, missing, dtype=np.int64)
    position = np.minimum(np.searchsorted(sorted_values, values), sorted_values.size - 1)
    return np.where(sorted_values[position] == values, order[position], missing).astype(np.int64)
