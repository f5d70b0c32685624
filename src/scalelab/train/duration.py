"""How long a neural run trains: its optimizer steps and the training tokens they consume, from the config's
epochs, steps or train_tokens. The trainer runs exactly this many steps and the study plan costs them, so the two
can never disagree."""

from __future__ import annotations

import math
from dataclasses import dataclass

from scalelab.train.config import TrainConfig


@dataclass(frozen=True)
class Duration:
    steps: int
    tokens: int  # training targets over all the steps; early stopping (converge) can only shorten a run


def windows(view_tokens: int, context_length: int) -> tuple[int, int]:
    """(windows per epoch, context length) of a view cut as train/batches.py cuts it: windows of context + 1
    tokens every context tokens, the context shortened to fit a view smaller than one window."""
    context = min(context_length, view_tokens - 1)
    return (view_tokens - 1) // context, context


def duration(config: TrainConfig, view_tokens: int, context_length: int) -> Duration:
    per_epoch, context = windows(view_tokens, context_length)
    steps_per_epoch = -(-per_epoch // config.batch_size)
    if config.steps is not None:
        steps = config.steps
    elif config.train_tokens is not None:
        steps = max(1, math.ceil(config.train_tokens / (config.batch_size * context)))
    else:
        epochs = config.epochs or (config.max_epochs if config.regime == "converge" else 1.0)
        steps = max(1, math.ceil(epochs * steps_per_epoch))
    # Every epoch's last step takes the windows left over, which may be fewer than a batch.
    epochs_done, steps_left = divmod(steps, steps_per_epoch)
    targets = (epochs_done * per_epoch + min(steps_left * config.batch_size, per_epoch)) * context
    return Duration(steps, targets)
