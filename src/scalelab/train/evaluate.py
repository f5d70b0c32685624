"""One evaluation for every family, on the dataset's fixed held-out split.

The held-out documents (all, or the fewest first whole documents holding at least a token budget — always the
same ones) are
scored as one stream behind a leading end-of-document token, so every held-out token, each document's closing
end-of-document token included, is predicted exactly once:
- n-gram: from the previous order - 1 tokens of the stream;
- LSTM and Transformer: in consecutive non-overlapping windows of context_length tokens, each predicted from the
  tokens before it in its window (as in training, where windows also start cold).
Reported: mean negative log-likelihood per token (nats), perplexity, and bits per byte = total NLL /
(ln 2 x UTF-8 bytes of the scored documents), which compares models with different tokenizers.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from scalelab.data.store import TokenStore
from scalelab.errors import DataError
from scalelab.models.accounting import logits as model_logits


@dataclass(frozen=True)
class EvalSet:
    stream: np.ndarray  # leading end-of-document token + held-out tokens
    n_bytes: int
    n_docs: int
    split: str

    @property
    def n_targets(self) -> int:
        return int(self.stream.shape[0]) - 1


@dataclass(frozen=True)
class EvalResult:
    nll: float
    perplexity: float
    bits_per_byte: float
    tokens: int
    bytes: int
    split: str

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def eval_set(store: TokenStore, split: str = "validation", max_tokens: int | None = None) -> EvalSet:
    view = store.split(split)
    if view.n_docs == 0:
        raise DataError(f"{store.path} has an empty {split} split: nothing to evaluate on")
    n_docs = view.n_docs
    if max_tokens is not None and max_tokens < view.n_tokens:
        # Whole documents only, so the byte count is exact: the fewest that reach the budget.
        n_docs = int(np.searchsorted(view.offsets, max_tokens, side="left"))
    end = int(view.offsets[n_docs])
    stream = np.concatenate([[store.tokenizer.eod_id], np.asarray(view.tokens[:end], dtype=np.int64)])
    return EvalSet(stream, int(np.asarray(view.doc_bytes[:n_docs]).sum()), n_docs, split)


def result(total_nll: float, data: EvalSet) -> EvalResult:
    mean = total_nll / data.n_targets
    return EvalResult(nll=mean, perplexity=math.exp(min(mean, 700.0)),
                      bits_per_byte=total_nll / (math.log(2) * data.n_bytes), tokens=data.n_targets,
                      bytes=data.n_bytes, split=data.split)


@torch.no_grad()
def neural_nll(model: torch.nn.Module, data: EvalSet, context_length: int, batch_size: int,
               device: torch.device, autocast_dtype: torch.dtype | None = None) -> float:
    """Total NLL (nats) of the stream's targets, window by window."""
    was_training = model.training
    model.eval()
    stream = torch.from_numpy(data.stream)
    starts = list(range(0, data.n_targets, context_length))
    total = 0.0
    for first in range(0, len(starts), batch_size):
        chunk = starts[first:first + batch_size]
        lengths = [min(context_length, data.n_targets - s) for s in chunk]
        width = max(lengths)
        inputs = torch.zeros((len(chunk), width), dtype=torch.long)
        targets = torch.full((len(chunk), width), -100, dtype=torch.long)
        for row, (s, n) in enumerate(zip(chunk, lengths, strict=True)):
            inputs[row, :n] = stream[s:s + n]
            targets[row, :n] = stream[s + 1:s + n + 1]
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            out = model_logits(model, inputs.to(device))
        total += torch.nn.functional.cross_entropy(out.float().flatten(0, 1), targets.to(device).flatten(),
                                                   ignore_index=-100, reduction="sum").item()
    model.train(was_training)
    return total
