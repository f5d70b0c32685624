"""Training batches drawn from a memory-mapped token view without copying it.

The view (a subset, or a repetition of one) is cut into windows of context_length + 1 tokens starting every
context_length tokens, so consecutive windows share one token and every token but the first is a target once
per epoch. Each epoch visits every window once, in an order fixed by (seed, epoch): the data position of a run
is just (epoch, step in epoch), which makes resuming exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from scalelab.errors import DataError
from scalelab.train.duration import windows


class TokenView(Protocol):
    n_tokens: int
    fingerprint: str

    def __getitem__(self, index: slice) -> np.ndarray: ...


@dataclass
class WindowBatches:
    view: TokenView
    context_length: int
    batch_size: int
    seed: int

    def __post_init__(self) -> None:
        n = len(self.view)
        if n < 2:
            raise DataError(f"a training view needs at least 2 tokens (got {n})")
        self.num_windows, self.context_length = windows(n, self.context_length)

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.num_windows // self.batch_size)

    @property
    def tokens_per_epoch(self) -> int:
        return self.num_windows * self.context_length

    def order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_windows)

    def batch(self, epoch: int, step: int, order: np.ndarray | None = None) -> torch.Tensor:
        """Windows of one optimizer step, shape (B, T + 1); the last step of an epoch may be smaller."""
        order = self.order(epoch) if order is None else order
        starts = order[step * self.batch_size:(step + 1) * self.batch_size] * self.context_length
        rows = [np.asarray(self.view[int(s):int(s) + self.context_length + 1], dtype=np.int64) for s in starts]
        return torch.from_numpy(np.stack(rows))
