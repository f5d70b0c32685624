"""Per-run hyperparameters, derived in one place from the model size and the data size (a model ladder).

Every value here is a default: the study's `train:` and a family's `train:` override it. The rules aim at
sound small-scale runs on any D: at least `min_steps` optimizer steps (a study's `min_steps`, MIN_STEPS by default)
wherever the data allow, larger batches when there is data for them, and a learning rate that shrinks as the model
widens. Each family applies them in its adapter (`ModelFamily.hyperparameters`).

The steps come from a smaller batch, or in the converge regime from more epochs; never from a shorter context, as
the loss would then change with the context as well as with D. A single pass over D tokens can take no more than
D / context windows, one per step at batch size 1: below min_steps x context tokens the run cannot be trained
enough, and it is marked unreliable (`ModelFamily.unreliable`) instead of being passed off as a point on the curve.
"""

from __future__ import annotations

import math
from typing import Any

from scalelab.models.registry import family
from scalelab.train.config import TrainConfig
from scalelab.train.duration import windows

CONTEXT_LENGTH = 256
# A run of a few optimizer steps measures the optimizer, not the data: the runs that Kaplan et al. (2020) and
# Hoffmann et al. (2022) fit take thousands of steps. 200 is what a CPU study can afford at every D.
MIN_STEPS = 200
# Down to a single sequence per step, so the smallest D still reaches MIN_STEPS: small batches lose nothing at the
# high losses of short runs, where the critical batch size is small (McCandlish et al. 2018; Kaplan et al. 2020).
BATCH_RANGE = (1, 32)
# converge: evaluations (each one an early-stopping check) within the first min_steps steps, at most.
CONVERGE_CHECKS = 10
MAX_EPOCHS = TrainConfig.model_fields["max_epochs"].default
BASE_LR = 3e-3
BASE_WIDTH = 128
LR_RANGE = (3e-4, 6e-3)
SCHEDULE: dict[str, Any] = {"kind": "cosine", "warmup_fraction": 0.05, "min_lr_ratio": 0.1}


def learning_rate(name: str, size: str) -> float:
    """Peak LR ~ 1/sqrt(width), anchored at width 128 (wider models want smaller steps; muP-like in spirit)."""
    lr = BASE_LR * math.sqrt(BASE_WIDTH / family(name).width(size))
    return min(max(lr, LR_RANGE[0]), LR_RANGE[1])


def batch_size(tokens: int, context_length: int, min_steps: int = MIN_STEPS) -> int:
    """The largest batch within BATCH_RANGE sequences that still gives at least `min_steps` steps per pass over
    D = `tokens` (BATCH_RANGE's smallest when no batch does)."""
    return min(max(windows(tokens, context_length)[0] // min_steps, BATCH_RANGE[0]), BATCH_RANGE[1])


def converge_fields(tokens: int, context_length: int, batch: int, min_steps: int = MIN_STEPS) -> dict[str, Any]:
    """converge: enough epochs that early stopping may run `min_steps` steps when a pass holds fewer, and no
    early-stopping check more often than every min_steps / CONVERGE_CHECKS steps, so that tiny epochs do not stop
    the run on the first noisy evaluations (converge is Kaplan et al.'s and Hestness et al.'s (2017) early-stopped
    L(D), which means to find the best loss on D tokens, not the first plateau)."""
    steps_per_epoch = -(-windows(tokens, context_length)[0] // batch)
    fields: dict[str, Any] = {}
    if steps_per_epoch * MAX_EPOCHS < min_steps:
        fields["max_epochs"] = -(-min_steps // steps_per_epoch)
    check_every = -(-min_steps // CONVERGE_CHECKS)
    if steps_per_epoch < check_every:
        fields["eval_every"] = check_every
    return fields


def hyperparameters(name: str, size: str, tokens: int, context_length: int = CONTEXT_LENGTH, *,
                    min_steps: int = MIN_STEPS, regime: str = "single-pass") -> dict[str, Any]:
    """TrainConfig fields for one run of family `name` at `size` on `tokens` training tokens."""
    return family(name).hyperparameters(size, tokens, context_length, min_steps=min_steps, regime=regime)
