"""Interpolated modified Kneser-Ney n-gram language model over token ids, estimated as KenLM's `lmplz` does.

The model is fitted on one flat token stream (documents back to back, each ending in the end-of-document id),
counted as a single sequence: the end-of-document id is an ordinary token, n-grams may span documents, and there
is no `<s>` padding. Following Chen & Goodman (1998), an order-N model uses adjusted counts a(g):

    a(g) = raw count of g                              if g is an N-gram
    a(g) = number of distinct tokens x such that xg occurs  otherwise (continuation count)

and per order the discounts D1, D2, D3+ from that order's counts-of-counts t1..t4 of adjusted counts:

    Y = t1 / (t1 + 2 t2),  D1 = 1 - 2Y t2/t1,  D2 = 2 - 3Y t3/t2,  D3+ = 3 - 4Y t4/t3

(an order where some t_j is zero or some D_j falls outside (0, j) falls back to (0.5, 1.0, 1.5), as KenLM's
`--discount_fallback` does). With a(h.) = sum_w a(hw) and N_j(h.) the number of w with a(hw) = j (3 meaning 3+):

    p(w | h) = max(a(hw) - D(a(hw)), 0) / a(h.) + gamma(h) p(w | h')
    gamma(h) = (D1 N1(h.) + D2 N2(h.) + D3+ N3+(h.)) / a(h.)

where h' drops the first token of h; an unseen context (a(h.) = 0) backs off completely, and unigrams interpolate
with the uniform distribution over all `vocab_size` ids, so every next-token distribution sums to one.

Storage. A k-gram is identified by its index in the sorted table of order k. Its key packs the index of its
(k-1)-gram prefix with its last token, `prefix_index << bits | token`, so one uint64 holds an n-gram of any order
(bits = bit width of vocab_size - 1, the prefix index is below the number of tokens), keys sort in the
lexicographic order of the n-grams, and the k-grams sharing a context are one contiguous run. The tables hold
every distinct k-gram of the stream, so they are closed under prefixes and suffixes; a k-gram whose only
occurrence starts the stream has continuation count zero and adds no probability mass. Unigrams are dense arrays
indexed by token id. Per order the model keeps the sorted keys, each k-gram's discounted term
max(a - D(a), 0) / a(h.), and each (k-1)-gram's gamma as a context of order k (1 where it is not one).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TextIO

import numpy as np
from pydantic import Field

from scalelab import __version__
from scalelab.config import StrictModel, validate
from scalelab.errors import DataError
from scalelab.io import atomic_file

FORMAT_VERSION = 1
HEADER = "ngram.json"
ARRAYS = "ngram.npz"
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)
SENTENCE_MARKERS = ("<s>", "</s>", "<unk>")
ARPA_IMPOSSIBLE = -99.0
ARPA_CHUNK = 1 << 18


class NgramConfig(StrictModel):
    """An interpolated modified Kneser-Ney n-gram model."""

    order: int = Field(5, ge=2, le=6, description="Longest n-gram: the model conditions on order - 1 tokens.")


class KneserNeyLM:
    """A fitted model; build it with `fit` or `load`.

    `discounts[k - 1]` holds (D1, D2, D3+) of order k; `fallback_orders` lists the orders k (counted from 1) whose
    discounts could not be estimated and fell back to (0.5, 1.0, 1.5).
    """

    def __init__(self, order: int, vocab_size: int, discounts: np.ndarray, fallback_orders: list[int],
                 unigram: np.ndarray, keys: dict[int, np.ndarray], weights: dict[int, np.ndarray],
                 backoffs: dict[int, np.ndarray]):
        self.order = order
        self.vocab_size = vocab_size
        self.discounts = discounts
        self.fallback_orders = fallback_orders
        # (vocab_size,): interpolated unigram probabilities.
        self.unigram = unigram
        # keys[k], k = 2..order: sorted `prefix_index << bits | token` of every distinct k-gram.
        self.keys = keys
        # weights[k], k = 2..order: max(a - D(a), 0) / a(h.) of each k-gram.
        self.weights = weights
        # backoffs[k], k = 0..order-1: gamma of each k-gram as a context of order k + 1 (k = 0: the empty one).
        self.backoffs = backoffs
        self.bits = _bit_width(vocab_size)

    @classmethod
    def fit(cls, tokens: np.ndarray, order: int, vocab_size: int) -> KneserNeyLM:
        """Estimate a model from one flat token stream of ids below `vocab_size`."""
        order = validate(NgramConfig, {"order": order}, origin="n-gram config").order
        if not 1 <= vocab_size <= 1 << 32:
            raise DataError(f"vocab_size must be between 1 and 2**32 (got {vocab_size})")
        # The narrowest unsigned type holding every id keeps the stream small and ORs into uint64 keys.
        stream = _token_ids(tokens, vocab_size, "training tokens").astype(np.min_scalar_type(vocab_size - 1),
                                                                          copy=False)
        if stream.shape[0] < order:
            raise DataError(f"a {order}-gram model needs at least {order} training tokens (got {stream.shape[0]})")
        bits = _bit_width(vocab_size)
        if bits + int(stream.shape[0]).bit_length() > 64:
            raise DataError(f"{stream.shape[0]:,} tokens of a {vocab_size:,}-id vocabulary do not fit 64-bit keys")
        keys, adjusted = _count(stream, order, vocab_size, bits)

        discounts = np.empty((order, 3))
        fallback_orders = []
        backoffs, weights = {}, {}
        for k in range(1, order + 1):
            estimate = _estimate_discounts(adjusted[k])
            if estimate is None:
                fallback_orders.append(k)
                estimate = np.array(FALLBACK_DISCOUNTS)
            discounts[k - 1] = estimate
            # D(a) for a = 0, 1, 2, 3+.
            discount = np.concatenate([[0.0], estimate])[np.minimum(adjusted[k], 3)]
            kept = np.maximum(adjusted[k] - discount, 0.0)
            if k == 1:
                total = float(adjusted[1].sum())
                backoffs[0] = np.array([discount.sum() / total])
                unigram = kept / total + backoffs[0][0] / vocab_size
                continue
            context = (keys[k] >> np.uint64(bits)).astype(np.intp)
            n_contexts = adjusted[k - 1].shape[0]
            total = np.bincount(context, weights=adjusted[k], minlength=n_contexts)
            mass = np.bincount(context, weights=discount, minlength=n_contexts)
            seen = total > 0
            denominator = np.where(seen, total, 1.0)
            backoffs[k - 1] = np.where(seen, mass / denominator, 1.0)
            weights[k] = kept / denominator[context]
        return cls(order, vocab_size, discounts, fallback_orders, unigram, keys, weights, backoffs)

    @property
    def num_ngrams(self) -> dict[int, int]:
        """N-grams stored per order, as `to_arpa` lists them (all ids at order 1; no sentence markers)."""
        return {1: self.vocab_size, **{k: int(keys.shape[0]) for k, keys in self.keys.items()}}

    def logprobs(self, stream: np.ndarray) -> np.ndarray:
        """ln p(stream[i] | stream[max(0, i - order + 1):i]) for i = 1..len - 1, as float64 of length len - 1.

        Contexts are truncated at the start of the stream. All positions are scored at once: per order, the
        n-grams whose context was found at the order below are looked up together in the sorted keys.
        """
        ids = _token_ids(stream, self.vocab_size, "stream").astype(np.int64, copy=False)
        length = ids.shape[0]
        if length < 2:
            return np.zeros(0)
        words = ids.view(np.uint64)
        shift = np.uint64(self.bits)
        prob = self.unigram[ids[1:]]
        # Positions ending a context found at the order below (with a target after them), and its table index;
        # prob[e] belongs to the target at e + 1.
        ends = np.arange(length - 1)
        index = ids[:-1]
        for k in range(2, self.order + 1):
            if ends.shape[0] == 0:
                break
            prob[ends] *= self.backoffs[k - 1][index]
            query = (index.view(np.uint64) << shift) | words[ends + 1]
            # Sorted queries make searchsorted walk the table forwards, many times faster than random probes.
            by_key = np.argsort(query)
            query, ends = query[by_key], ends[by_key]
            table = self.keys[k]
            slot = np.minimum(np.searchsorted(table, query), table.shape[0] - 1)
            hit = table[slot] == query
            ends, slot = ends[hit], slot[hit]
            prob[ends] += self.weights[k][slot]
            ends, index = ends + 1, slot
            inside = ends < length - 1
            ends, index = ends[inside], index[inside]
        return np.log(prob)

    def distribution(self, context: np.ndarray) -> np.ndarray:
        """p(. | context), shape (vocab_size,); only the last order - 1 tokens of the context matter."""
        ids = _token_ids(context, self.vocab_size, "context").astype(np.int64, copy=False)[-(self.order - 1):]
        prob = self.unigram.copy()
        shift, mask = np.uint64(self.bits), np.uint64((1 << self.bits) - 1)
        for k in range(2, ids.shape[0] + 2):
            index = self._find(ids[ids.shape[0] - k + 1:])
            # A context missing from the tables is no suffix of any longer one either.
            if index is None:
                break
            prob *= self.backoffs[k - 1][index]
            table = self.keys[k]
            bounds = np.array([index, index + 1], dtype=np.uint64) << shift
            start, stop = np.searchsorted(table, bounds)
            prob[(table[start:stop] & mask).astype(np.intp)] += self.weights[k][start:stop]
        return prob

    def _find(self, gram: np.ndarray) -> int | None:
        """Table index of an n-gram of ids, or None where it never occurred in training."""
        index = int(gram[0])
        for k in range(2, gram.shape[0] + 1):
            key = np.uint64((index << self.bits) | int(gram[k - 1]))
            table = self.keys[k]
            slot = int(np.searchsorted(table, key))
            if slot == table.shape[0] or table[slot] != key:
                return None
            index = slot
        return index

    def save(self, directory: Path) -> None:
        """Write `ngram.npz` (arrays) and then `ngram.json` (header), each through a temporary file."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        arrays = {"unigram": self.unigram, **{f"keys{k}": v for k, v in self.keys.items()},
                  **{f"weights{k}": v for k, v in self.weights.items()},
                  **{f"backoffs{k}": v for k, v in self.backoffs.items()}}
        with atomic_file(directory / ARRAYS, "wb") as handle:
            np.savez(handle, **arrays)
        header = {"format": FORMAT_VERSION, "scalelab_version": __version__, "order": self.order,
                  "vocab_size": self.vocab_size, "discounts": self.discounts.tolist(),
                  "fallback_orders": self.fallback_orders, "num_ngrams": self.num_ngrams}
        with atomic_file(directory / HEADER, "w") as handle:
            handle.write(json.dumps(header, indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> KneserNeyLM:
        directory = Path(directory)
        if not (directory / HEADER).is_file() or not (directory / ARRAYS).is_file():
            raise DataError(f"{directory} holds no saved n-gram model ({HEADER} and {ARRAYS})")
        header = json.loads((directory / HEADER).read_text(encoding="utf-8"))
        if header.get("format") != FORMAT_VERSION:
            raise DataError(f"{directory} has n-gram format {header.get('format')!r}; this scalelab "
                            f"({__version__}) reads format {FORMAT_VERSION}")
        order = header["order"]
        with np.load(directory / ARRAYS) as arrays:
            return cls(order, header["vocab_size"], np.array(header["discounts"]), header["fallback_orders"],
                       arrays["unigram"], {k: arrays[f"keys{k}"] for k in range(2, order + 1)},
                       {k: arrays[f"weights{k}"] for k in range(2, order + 1)},
                       {k: arrays[f"backoffs{k}"] for k in range(order)})

    def to_arpa(self, path: Path, words: list[str] | None = None) -> None:
        """Write the model as an ARPA file: log10 interpolated probabilities, log10 backoffs (gamma).

        Every stored n-gram is listed with its interpolated probability p(w | h), and every n-gram that is a
        context with its gamma, so ARPA backoff semantics (p(w | h) = gamma(h) p(w | h') for an unlisted hw)
        give back exactly this model. All `vocab_size` ids are listed as unigrams, spelt `words[id]`
        (default `str(id)`). KenLM also expects the sentence markers, which ids never use:

            <s>    log10 p = -99, backoff 0: never predicted, and never a context when scoring with bos=False;
            </s>   log10 p = -99: a document ends with the ordinary end-of-document id, never with </s>;
            <unk>  log10 p = log10(gamma() / vocab_size), the probability of an id never seen in training, as
                   lmplz gives it; only a word outside `words` maps to it.

        So `kenlm.Model(path).full_scores(" ".join(words[i] for i in stream), bos=False, eos=False)` yields
        log10 p(stream[0]) and then log10 p(stream[i] | context) for i >= 1: dropping the first and multiplying by
        ln 10 reproduces `logprobs(stream)` (up to KenLM's float32 storage and the 8 decimals written here).
        """
        spelt = _spellings(words, self.vocab_size)
        shift = np.uint64(self.bits)
        counts = self.num_ngrams
        with atomic_file(Path(path), "w") as out:
            out.write("\\data\\\n")
            for k, count in counts.items():
                out.write(f"ngram {k}={count + (len(SENTENCE_MARKERS) if k == 1 else 0)}\n")
            interpolated, suffix = self.unigram, None
            for k in range(1, self.order + 1):
                out.write(f"\n\\{k}-grams:\n")
                if k == 1:
                    out.write(f"{ARPA_IMPOSSIBLE:.8f}\t<s>\t0.00000000\n{ARPA_IMPOSSIBLE:.8f}\t</s>\n"
                              f"{math.log10(self.backoffs[0][0] / self.vocab_size):.8f}\t<unk>\n")
                else:
                    prefix = (self.keys[k] >> shift).astype(np.intp)
                    last = self._last_token(self.keys[k])
                    # A k-gram's suffix is its prefix's suffix extended by its last token.
                    suffix = last if suffix is None else self._lookup(k - 1, suffix[prefix], last)
                    interpolated = self.weights[k] + self.backoffs[k - 1][prefix] * interpolated[suffix]
                for start in range(0, counts[k], ARPA_CHUNK):
                    rows = np.arange(start, min(start + ARPA_CHUNK, counts[k]))
                    _write_lines(out, interpolated[rows], self._spell(k, rows, spelt),
                                 self.backoffs[k][rows] if k < self.order else None)
            out.write("\n\\end\\\n")

    def _last_token(self, keys: np.ndarray) -> np.ndarray:
        return (keys & np.uint64((1 << self.bits) - 1)).astype(np.intp)

    def _lookup(self, k: int, prefix: np.ndarray, last: np.ndarray) -> np.ndarray:
        """Table indices of k-grams given by prefix index and last token; every one of them must be stored."""
        query = (prefix.astype(np.uint64) << np.uint64(self.bits)) | last.astype(np.uint64)
        by_key = np.argsort(query)
        slot = np.empty(query.shape[0], dtype=np.intp)
        slot[by_key] = np.searchsorted(self.keys[k], query[by_key])
        return slot

    def _spell(self, k: int, rows: np.ndarray, spelt: np.ndarray) -> np.ndarray:
        """The k-grams at `rows` as space-separated words."""
        tails = []
        for m in range(k, 1, -1):
            keys = self.keys[m][rows]
            tails.append(spelt[self._last_token(keys)])
            rows = (keys >> np.uint64(self.bits)).astype(np.intp)
        text = spelt[rows]
        for tail in reversed(tails):
            text = np.char.add(np.char.add(text, " "), tail)
        return text


def _bit_width(vocab_size: int) -> int:
    return max(1, (vocab_size - 1).bit_length())


def _token_ids(tokens: np.ndarray, vocab_size: int, what: str) -> np.ndarray:
    """`tokens` as a contiguous 1-D integer array (its dtype kept), checked to be ids of the vocabulary."""
    array = np.asarray(tokens)
    if array.size == 0:
        return np.zeros(0, dtype=np.int64)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise DataError(f"{what} must be a 1-D array of integer token ids (got {array.dtype} of shape {array.shape})")
    low, high = int(array.min()), int(array.max())
    if low < 0 or high >= vocab_size:
        raise DataError(f"{what} hold ids in [{low}, {high}], outside the vocabulary [0, {vocab_size})")
    return np.ascontiguousarray(array)


def _count(stream: np.ndarray, order: int, vocab_size: int, bits: int) -> tuple[dict[int, np.ndarray],
                                                                                dict[int, np.ndarray]]:
    """Sorted keys of the distinct k-grams of each order k >= 2, and adjusted counts of each order k >= 1.

    Order k is built from the ranks of order k - 1 at every position of the stream: `rank[i]` is the table index
    of the (k-1)-gram starting at i (for k = 2, the token itself), so the k-gram at i packs as
    `rank[i] << bits | stream[i + k - 1]`.
    """
    keys: dict[int, np.ndarray] = {}
    adjusted: dict[int, np.ndarray] = {}
    rank, lower_size = stream, vocab_size
    for k in range(2, order + 1):
        keys[k], adjusted[k - 1], rank = _next_order(stream, rank, k, bits, lower_size, top=k == order)
        lower_size = keys[k].shape[0]
    adjusted[order] = rank
    return keys, adjusted


def _next_order(stream: np.ndarray, rank: np.ndarray, k: int, bits: int, lower_size: int,
                top: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sorted distinct k-gram keys, the continuation counts of order k - 1, and then the ranks of order k at
    each position, or for the top order the raw counts of the k-grams.

    Sorting the keys gives the table, raw counts as run lengths, and the ranks by scattering run numbers back to
    positions; each distinct k-gram adds one left extension to its suffix, the (k-1)-gram starting one position
    later. A function of its own so that its position-sized temporaries are freed before the next order's.
    """
    m = stream.shape[0] - k + 1
    packed = rank[:m].astype(np.uint64)
    packed <<= np.uint64(bits)
    packed |= stream[k - 1:]
    by_key = np.argsort(packed)
    packed = packed[by_key]
    first = np.empty(m, dtype=bool)
    first[0] = True
    np.not_equal(packed[1:], packed[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    keys = packed[starts]
    continuation = np.bincount(rank[by_key[starts] + 1], minlength=lower_size)
    if top:
        return keys, continuation, np.diff(starts, append=m)
    del packed, starts
    run = np.cumsum(first, dtype=np.int64)
    run -= 1
    ranks = np.empty(m, dtype=np.int64)
    ranks[by_key] = run
    return keys, continuation, ranks


def _estimate_discounts(adjusted: np.ndarray) -> np.ndarray | None:
    """(D1, D2, D3+) from the counts-of-counts of one order's adjusted counts, or None where they are invalid."""
    t1, t2, t3, t4 = np.bincount(np.minimum(adjusted, 5), minlength=6)[1:5].astype(float)
    if min(t1, t2, t3, t4) == 0:
        return None
    y = t1 / (t1 + 2 * t2)
    discounts = np.array([1 - 2 * y * t2 / t1, 2 - 3 * y * t3 / t2, 3 - 4 * y * t4 / t3])
    if not np.all((discounts > 0) & (discounts < np.arange(1, 4))):
        return None
    return discounts


def _spellings(words: list[str] | None, vocab_size: int) -> np.ndarray:
    """ARPA spelling of each id; user words must be distinct single tokens other than the sentence markers."""
    if words is None:
        return np.arange(vocab_size).astype(str)
    if len(words) != vocab_size:
        raise DataError(f"ARPA export needs one word per id: {vocab_size:,} words, not {len(words):,}")
    bad = [word for word in words if word.split() != [word] or word in SENTENCE_MARKERS]
    if bad:
        raise DataError(f"ARPA words must be non-empty, free of whitespace and none of {', '.join(SENTENCE_MARKERS)}"
                        f" (got {bad[:5]!r})")
    if len(set(words)) != vocab_size:
        raise DataError("ARPA words must be distinct: two ids spelt alike could not be told apart")
    return np.array(words)


def _write_lines(out: TextIO, prob: np.ndarray, text: np.ndarray, backoff: np.ndarray | None) -> None:
    line = np.char.add(np.char.add(np.char.mod("%.8f", np.log10(prob)), "\t"), text)
    if backoff is not None:
        line = np.char.add(np.char.add(line, "\t"), np.char.mod("%.8f", np.log10(backoff)))
    out.write("\n".join(line.tolist()) + "\n")
