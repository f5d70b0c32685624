"""Learning-rate schedules as pure functions of the step, so resuming needs no scheduler state."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field

from scalelab.config import StrictModel


class ScheduleConfig(StrictModel):
    """Warmup, then cosine decay or warmup-stable-decay (WSD)."""

    kind: Literal["cosine", "wsd", "constant"] = Field("cosine", description="Shape after warmup.")
    warmup_fraction: float = Field(0.05, ge=0, lt=1, description="Share of steps spent warming up linearly.")
    decay_fraction: float = Field(0.2, gt=0, le=1, description="WSD: share of steps spent in the final decay.")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Final learning rate as a share of the peak.")


def lr_factor(step: int, total_steps: int, config: ScheduleConfig) -> float:
    """Multiplier of the peak learning rate for optimizer step `step` (0-based) of `total_steps`."""
    warmup = int(config.warmup_fraction * total_steps)
    if step < warmup:
        return (step + 1) / warmup
    if config.kind == "constant":
        return 1.0
    floor = config.min_lr_ratio
    if config.kind == "cosine":
        progress = (step - warmup) / max(1, total_steps - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    decay_start = total_steps - int(config.decay_fraction * total_steps)
    if step < decay_start:
        return 1.0
    progress = (step - decay_start) / max(1, total_steps - decay_start)
    return 1.0 - (1 - floor) * min(progress, 1.0)
