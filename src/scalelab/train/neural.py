"""Training a neural family's model: the trainer, its callbacks, and the final held-out evaluation."""

from __future__ import annotations

from typing import Any

import torch

from scalelab.models.accounting import flops_per_token, non_embedding_params, total_params
from scalelab.models.registry import family
from scalelab.train import checkpoint
from scalelab.train.batches import WindowBatches
from scalelab.train.callbacks import Callback, MetricsLog, ProgressBar, TensorBoard
from scalelab.train.distributed import barrier
from scalelab.train.evaluate import eval_set, neural_nll, result
from scalelab.train.run import Job, autocast_dtype
from scalelab.train.trainer import Trainer


def train_neural(model: torch.nn.Module, job: Job) -> dict[str, Any]:
    """Train `model` (freshly initialised) on the job's view, resuming from the run's latest checkpoint."""
    config, device, dist, data = job.config, job.device, job.dist, job.data
    model = model.to(device)
    autocast = autocast_dtype(config, device)
    compiled = torch.compile(model) if config.compile else model
    batches = WindowBatches(job.view, config.model.context_length, config.batch_size, config.seed)

    def evaluate(module: torch.nn.Module):
        return result(neural_nll(compiled, data, batches.context_length, config.eval_batch_size, device,
                                 autocast), data)

    callbacks: list[Callback] = []
    if dist.is_main:
        callbacks.append(MetricsLog(job.run.metrics_file))
        if config.tensorboard:
            callbacks.append(TensorBoard(job.run.tensorboard))
        if job.show_progress:
            callbacks.append(ProgressBar())
    per_token = flops_per_token(model, batches.context_length)
    trainer = Trainer(model, batches, config, evaluate, job.run.checkpoints, device, dist, callbacks, per_token,
                      autocast)
    trainer.resume()
    state = trainer.fit()
    barrier(dist)  # every rank sees the main rank's final checkpoints
    best = checkpoint.resolve(job.run.checkpoints, checkpoint.BEST)
    if config.regime == "converge" and best is not None and best.name != checkpoint.step_name(state.step):
        checkpoint.load_weights(best, model)
        final = evaluate(model)
    else:
        final = trainer.last_eval or evaluate(model)
    selected: dict[str, Any] = {}
    if config.regime == "converge":
        # The checkpoint was chosen for its validation loss, which the choice biases down: the reported figures
        # are the test split's, which no choice was made on (the practice of held-out early stopping).
        test = eval_set(job.store, config.report_split, config.eval_tokens)
        selected = {"selection_eval": final.to_dict()}
        final = family(config.family).score(model, config, test, device)
    # Epochs count passes over the U unique tokens, as Muennighoff et al. (2023) count them: one pass over a view
    # of D tokens repeated from U is D / U epochs.
    unique = config.unique_tokens or config.tokens
    return {"eval": final.to_dict(), **selected, "N": non_embedding_params(model), "params": total_params(model),
            "tokens_seen": state.tokens, "steps": state.step,
            "epochs": state.tokens / batches.tokens_per_epoch * len(job.view) / unique,
            "best_step": state.best_step if config.regime == "converge" else state.step,
            "flops": per_token * state.tokens, "context_length": batches.context_length,
            "world_size": dist.world_size, "device": device.type, "threads": torch.get_num_threads()}
