"""One evaluation for every family, on the dataset's fixed held-out split.

Which documents: the whole split, or, under a token budget, a seeded random sample of whole documents: the split's
documents ordered by a keyed hash of their content, taken in that order until the budget is reached. The sample is
the same for every run of a dataset, and adding documents to the split never swaps one sampled document for
another, only adds to the sample or pushes its tail out.

The per-document cap: no document may be more than MAX_DOCUMENT_SHARE of the scored tokens, so that one long file
cannot decide the loss. A longer document is scored on its first tokens only, as many as the largest cap that
keeps every share within bounds allows; its bytes are those of the kept tokens, exactly. With fewer documents than
1 / MAX_DOCUMENT_SHARE the bound cannot hold, and every document is cut to the shortest one's length (equal
shares, the smallest largest share there is).

The documents are scored as one stream behind a leading end-of-document token, so every scored token, each whole
document's closing end-of-document token included, is predicted exactly once:
- n-gram: from the previous order - 1 tokens of the stream;
- LSTM and Transformer: in consecutive non-overlapping windows of context_length tokens, each predicted from the
  tokens before it in its window (as in training, where windows also start cold).
A cut document is followed by an end-of-document token that is read but not scored, so the next document starts as
it would after a whole one.

Reported: mean negative log-likelihood per scored token (nats), perplexity, bits per byte = total NLL /
(ln 2 x UTF-8 bytes of the scored tokens), which compares models with different tokenizers, and the standard error
of the loss and of bits per byte from a bootstrap over documents. `EvalResult.to_dict()` also carries the
per-document totals under "documents" (split index, NLL in nats, scored tokens, bytes), so that later analyses can
resample the same held-out documents jointly across runs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from scalelab.data.split import mix64_array
from scalelab.data.store import TokenSplit, TokenStore
from scalelab.data.tokenizer import Tokenizer
from scalelab.errors import DataError
from scalelab.models.accounting import logits as model_logits

MAX_DOCUMENT_SHARE = 0.10
SAMPLE_SEED = 0
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class EvalSet:
    stream: np.ndarray  # leading end-of-document token + the documents' tokens (see the module docstring)
    starts: np.ndarray  # stream target position of each document's first scored token
    doc_tokens: np.ndarray  # scored tokens of each document
    doc_bytes: np.ndarray  # UTF-8 bytes of those tokens
    documents: np.ndarray  # each document's index in its split
    split: str

    @property
    def n_targets(self) -> int:
        """Positions of the stream that a model predicts, the unscored ones after cut documents included."""
        return int(self.stream.shape[0]) - 1

    @property
    def n_tokens(self) -> int:
        return int(self.doc_tokens.sum())

    @property
    def n_bytes(self) -> int:
        return int(self.doc_bytes.sum())

    @property
    def n_docs(self) -> int:
        return int(self.documents.shape[0])

    def per_document(self, nll: np.ndarray) -> np.ndarray:
        """Each document's total from the NLL of every target of the stream."""
        first = np.cumsum(self.doc_tokens) - self.doc_tokens  # where each document begins among scored targets
        scored = np.arange(self.n_tokens) + np.repeat(self.starts - first, self.doc_tokens)
        return np.add.reduceat(np.asarray(nll, dtype=np.float64)[scored], first)


@dataclass(frozen=True)
class EvalResult:
    nll: float
    perplexity: float
    bits_per_byte: float
    tokens: int
    bytes: int
    split: str
    nll_se: float
    bits_per_byte_se: float
    documents: dict[str, list[Any]]  # "index", "nll", "tokens", "bytes": one entry per document

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> dict[str, Any]:
        """to_dict() without the per-document results: what a learning curve logs at each evaluation."""
        return {key: value for key, value in self.to_dict().items() if key != "documents"}


def eval_set(store: TokenStore, split: str = "validation", max_tokens: int | None = None,
             max_share: float = MAX_DOCUMENT_SHARE) -> EvalSet:
    view = store.split(split)
    if view.n_docs == 0:
        raise DataError(f"{store.path} has an empty {split} split: nothing to evaluate on")
    lengths = np.diff(np.asarray(view.offsets, dtype=np.int64))
    chosen = _sample(view, lengths, max_tokens, max_share)
    kept = np.minimum(lengths[chosen], _cap(lengths[chosen], max_share))
    return _assemble(view, store.tokenizer, chosen, kept, kept == lengths[chosen])


def _sample(view: TokenSplit, lengths: np.ndarray, max_tokens: int | None, max_share: float) -> np.ndarray:
    """Indices (in stored order) of the documents to score: all, or the first in sampling order whose tokens,
    each counted up to the cap the budget implies, reach the budget."""
    if max_tokens is None or max_tokens >= view.n_tokens:
        return np.arange(view.n_docs)
    order = _sampling_order(np.asarray(view.doc_hashes()))
    counted = np.cumsum(np.minimum(lengths[order], max(1, math.floor(max_share * max_tokens))))
    return np.sort(order[:int(np.searchsorted(counted, max_tokens)) + 1])


def _sampling_order(doc_hashes: np.ndarray) -> np.ndarray:
    """Documents in a random order fixed by their content alone, so a document's place does not depend on which
    others exist. Two rounds of splitmix64's mix, so the order is unrelated to the single-round, seeded orders by
    which `prepare` assigns splits and orders documents within one."""
    key = mix64_array(mix64_array(doc_hashes.astype(np.uint64), SAMPLE_SEED), SAMPLE_SEED)
    return np.lexsort((np.arange(key.shape[0]), key))


def _cap(lengths: np.ndarray, max_share: float) -> int:
    """The largest per-document token count c with c <= share x sum(min(length, c)): every document then holds at
    most `share` of the scored tokens, and no document is cut more than that requires. share x sum(min(length, c))
    - c is concave in c and 0 at c = 0, so the c that satisfy it form an interval from 0, searched by bisection."""
    share = max(max_share, 1 / lengths.shape[0])  # fewer documents than 1 / max_share: equal shares at best

    def holds(cap: int) -> bool:
        # The slack lets an exact share (10 documents of equal length at 10 %) pass despite float rounding.
        return cap <= share * np.minimum(lengths, cap).sum() * (1 + 1e-12)

    low, high = 1, int(lengths.max())
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if holds(middle) else (low, middle - 1)
    return low


def _assemble(view: TokenSplit, tokenizer: Tokenizer, chosen: np.ndarray, kept: np.ndarray,
              whole_docs: np.ndarray) -> EvalSet:
    eod = np.array([tokenizer.eod_id], dtype=np.int64)
    pieces, starts, doc_bytes, position = [eod], [], [], 0
    sizes = None if whole_docs.all() else _token_bytes(tokenizer)
    for index, count, whole in zip(chosen.tolist(), kept.tolist(), whole_docs.tolist(), strict=True):
        begin = int(view.offsets[index])
        tokens = np.asarray(view.tokens[begin:begin + count], dtype=np.int64)
        pieces.extend([tokens] if whole else [tokens, eod])
        starts.append(position)
        doc_bytes.append(int(view.doc_bytes[index]) if whole else int(sizes[tokens].sum()))
        position += count + (0 if whole else 1)
    return EvalSet(np.concatenate(pieces), np.array(starts, dtype=np.int64), kept.astype(np.int64),
                   np.array(doc_bytes, dtype=np.int64), chosen.astype(np.int64), view.name)


def _token_bytes(tokenizer: Tokenizer) -> np.ndarray:
    """UTF-8 bytes behind each token id. Both tokenizers are byte-level: a vocabulary entry spells its bytes one
    stand-in character per byte, so a token prefix that ends inside a character still counts exactly (decoding it
    would not). Special tokens stand for no text."""
    sizes = np.zeros(tokenizer.vocab_size, dtype=np.int64)
    for token, index in tokenizer.hf.get_vocab(with_added_tokens=False).items():
        sizes[index] = len(token)
    return sizes


def result(nll: np.ndarray, data: EvalSet) -> EvalResult:
    """The scores from the NLL (nats) of each of the stream's n_targets targets."""
    doc_nll = data.per_document(nll)
    total = float(doc_nll.sum())
    mean = total / data.n_tokens
    nll_se, bpb_se = bootstrap_se(doc_nll, data.doc_tokens, data.doc_bytes)
    documents = {"index": data.documents.tolist(), "nll": doc_nll.tolist(), "tokens": data.doc_tokens.tolist(),
                 "bytes": data.doc_bytes.tolist()}
    return EvalResult(nll=mean, perplexity=math.exp(min(mean, 700.0)),
                      bits_per_byte=total / (math.log(2) * data.n_bytes), tokens=data.n_tokens,
                      bytes=data.n_bytes, split=data.split, nll_se=nll_se, bits_per_byte_se=bpb_se,
                      documents=documents)


def bootstrap_se(doc_nll: np.ndarray, doc_tokens: np.ndarray, doc_bytes: np.ndarray,
                 resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Standard errors of NLL per token and of bits per byte, by the nonparametric bootstrap over documents
    (Efron & Tibshirani 1993, ch. 6): documents, not tokens, are the independent units, and both scores are ratio
    estimators (sum of NLL over sum of tokens or bytes), recomputed on each resample."""
    totals = np.stack([doc_nll, doc_tokens, doc_bytes]).astype(np.float64)
    rng = np.random.default_rng(seed)
    n = totals.shape[1]
    per_chunk = max(1, 2**20 // n)  # resamples drawn at once, to bound memory on large held-out sets
    sums = np.concatenate([totals[:, rng.integers(0, n, size=(min(per_chunk, resamples - done), n))].sum(axis=-1)
                           for done in range(0, resamples, per_chunk)], axis=1)
    nll = sums[0] / sums[1]
    bpb = sums[0] / (math.log(2) * sums[2])
    return float(nll.std(ddof=1)), float(bpb.std(ddof=1))


@contextmanager
def _output_layer_in_fp32(model: torch.nn.Module, device_type: str) -> Iterator[None]:
    """Run the output layer outside autocast, on fp32 inputs: in bf16 (8 significant bits) logits of magnitude
    ~10 are off by up to ~0.03, and every log-probability with them."""
    layer = model.get_output_embeddings()
    autocast_off = ExitStack()

    # Eager, not traced: torch.compile cannot trace an autocast region opened in one hook and closed in another.
    @torch.compiler.disable
    def enter(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        autocast_off.enter_context(torch.autocast(device_type, enabled=False))
        return tuple(arg.float() for arg in args)

    @torch.compiler.disable
    def leave(module: torch.nn.Module, args: tuple[Any, ...], output: Any) -> None:
        autocast_off.close()

    handles = [layer.register_forward_pre_hook(enter), layer.register_forward_hook(leave)]
    try:
        yield
    finally:
        autocast_off.close()
        for handle in handles:
            handle.remove()


@torch.no_grad()
def neural_nll(model: torch.nn.Module, data: EvalSet, context_length: int, batch_size: int,
               device: torch.device, autocast_dtype: torch.dtype | None = None) -> np.ndarray:
    """NLL (nats) of each of the stream's targets, window by window; the model body under autocast, the output
    layer and log-softmax in fp32."""
    was_training = model.training
    model.eval()
    stream = torch.from_numpy(data.stream)
    starts = list(range(0, data.n_targets, context_length))
    nll = np.empty(data.n_targets, dtype=np.float64)
    fp32_head = _output_layer_in_fp32(model, device.type) if autocast_dtype is not None else nullcontext()
    with fp32_head:
        for first in range(0, len(starts), batch_size):
            chunk = starts[first:first + batch_size]
            lengths = [min(context_length, data.n_targets - s) for s in chunk]
            width = max(lengths)
            inputs = torch.zeros((len(chunk), width), dtype=torch.long)
            targets = torch.zeros((len(chunk), width), dtype=torch.long)  # padding: scored, then dropped
            for row, (s, n) in enumerate(zip(chunk, lengths, strict=True)):
                inputs[row, :n] = stream[s:s + n]
                targets[row, :n] = stream[s + 1:s + n + 1]
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                out = model_logits(model, inputs.to(device))
            losses = torch.nn.functional.cross_entropy(out.flatten(0, 1), targets.to(device).flatten(),
                                                       reduction="none").view(len(chunk), width)
            losses = losses.double().cpu().numpy()
            for row, (s, n) in enumerate(zip(chunk, lengths, strict=True)):
                nll[s:s + n] = losses[row, :n]
    model.train(was_training)
    return nll
