"""Per-run hyperparameters, derived in one place from the model size and the data size (a model ladder).

Every value here is a default: the study's `train:` and a family's `train:` override it. The rules aim at
sound small-scale runs on any D: enough optimizer steps even for a tiny subset, larger batches when there is
data for them, and a learning rate that shrinks as the model widens. Each family applies them in its adapter
(`ModelFamily.hyperparameters`).
"""

from __future__ import annotations

import math
from typing import Any

from scalelab.models.registry import family

CONTEXT_LENGTH = 256
MIN_STEPS_PER_EPOCH = 40
BATCH_RANGE = (4, 32)
BASE_LR = 3e-3
BASE_WIDTH = 128
LR_RANGE = (3e-4, 6e-3)
SCHEDULE: dict[str, Any] = {"kind": "cosine", "warmup_fraction": 0.05, "min_lr_ratio": 0.1}


def learning_rate(name: str, size: str) -> float:
    """Peak LR ~ 1/sqrt(width), anchored at width 128 (wider models want smaller steps; muP-like in spirit)."""
    lr = BASE_LR * math.sqrt(BASE_WIDTH / family(name).width(size))
    return min(max(lr, LR_RANGE[0]), LR_RANGE[1])


def batch_size(tokens: int, context_length: int) -> int:
    """At least MIN_STEPS_PER_EPOCH steps per pass where the data allows, within BATCH_RANGE sequences."""
    windows = max(1, (tokens - 1) // context_length)
    return min(max(windows // MIN_STEPS_PER_EPOCH, BATCH_RANGE[0]), BATCH_RANGE[1])


def hyperparameters(name: str, size: str, tokens: int, context_length: int = CONTEXT_LENGTH) -> dict[str, Any]:
    """TrainConfig fields for one run of family `name` at `size` on `tokens` training tokens."""
    return family(name).hyperparameters(size, tokens, context_length)
