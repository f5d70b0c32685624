"""The training loop for the neural families, apart from the model-specific step.

It draws batches by data position, accumulates gradients over micro-batches, clips, steps AdamW under a
step-indexed schedule, evaluates every k steps, keeps checkpoints, stops early when converging, and resumes
exactly: the model, optimizer, RNG state and data position all come back from the latest complete checkpoint.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from scalelab.errors import ScalelabError, TrainingDiverged
from scalelab.models.accounting import logits as model_logits
from scalelab.train import checkpoint
from scalelab.train.batches import WindowBatches
from scalelab.train.callbacks import Callback
from scalelab.train.checkpoint import TrainState
from scalelab.train.config import TrainConfig
from scalelab.train.distributed import DistInfo, all_reduce_sum
from scalelab.train.duration import duration
from scalelab.train.evaluate import EvalResult
from scalelab.train.schedule import lr_factor


class TrainingError(ScalelabError):
    """Training cannot go on: the data cannot be spread over the processes."""


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    # Decay matrices only: norms, biases and gains keep their scale (as in GPT-2 and LLaMA recipes).
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.optim.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.optim.lr, betas=(config.optim.beta1, config.optim.beta2),
                             foreach=False)


class Trainer:
    def __init__(self, model: torch.nn.Module, batches: WindowBatches, config: TrainConfig,
                 evaluate: Callable[[torch.nn.Module], EvalResult], checkpoint_dir: Path, device: torch.device,
                 dist: DistInfo, callbacks: list[Callback], flops_per_token: float,
                 autocast_dtype: torch.dtype | None = None):
        self.model = model
        self.batches = batches
        self.config = config
        self.evaluate = evaluate
        self.checkpoint_dir = checkpoint_dir
        self.device = device
        self.dist = dist
        self.callbacks = callbacks
        self.flops_per_token = flops_per_token
        self.autocast_dtype = autocast_dtype
        self.optimizer = build_optimizer(model, config)
        self.state = TrainState()
        self.total_steps = duration(config, len(batches.view), batches.context_length).steps
        self.eval_every = config.eval_every or (
            batches.steps_per_epoch if config.regime == "converge" else max(1, self.total_steps // 5))
        self.checkpoint_every = config.checkpoint_every or self.eval_every
        self.ddp = (DistributedDataParallel(model) if dist.enabled else None)
        self.last_eval: EvalResult | None = None

    # -- resume -------------------------------------------------------------------------------------------------
    def resume(self) -> bool:
        if self.dist.is_main and self.checkpoint_dir.is_dir():
            checkpoint.remove_leftovers(self.checkpoint_dir)
        path = checkpoint.resolve(self.checkpoint_dir)
        if path is None:
            return False
        checkpoint.load_weights(path, self.model)
        checkpoint.load_trainer(path, self.optimizer)
        self.state = checkpoint.load_state(path)
        return True

    # -- the loop -------------------------------------------------------------------------------------------------
    def fit(self) -> TrainState:
        for callback in self.callbacks:
            callback.on_train_start(self)
        order = self.batches.order(self.state.epoch)
        try:
            while self.state.step < self.total_steps and not self._should_stop():
                started = time.perf_counter()
                batch = self.batches.batch(self.state.epoch, self.state.step_in_epoch, order)
                loss, grad_norm, lr, n_targets = self._optimizer_step(batch)
                self._advance(n_targets)
                if self.state.step_in_epoch == 0:
                    order = self.batches.order(self.state.epoch)
                elapsed = time.perf_counter() - started
                metrics = {"step": self.state.step, "epoch": self.state.epoch, "tokens": self.state.tokens,
                           "loss": loss, "lr": lr, "grad_norm": grad_norm,
                           "tokens_per_s": n_targets / elapsed if elapsed > 0 else 0.0,
                           "flops": self.flops_per_token * self.state.tokens}
                for callback in self.callbacks:
                    callback.on_step(self, metrics)
                self._maybe_eval_and_checkpoint()
        finally:
            for callback in self.callbacks:
                callback.on_train_end(self)
        return self.state

    def _should_stop(self) -> bool:
        return (self.config.regime == "converge"
                and self.state.evals_without_improvement >= self.config.patience)

    def _advance(self, n_targets: int) -> None:
        self.state.step += 1
        self.state.tokens += n_targets
        self.state.step_in_epoch += 1
        if self.state.step_in_epoch >= self.batches.steps_per_epoch:
            self.state.epoch += 1
            self.state.step_in_epoch = 0

    def _optimizer_step(self, batch: torch.Tensor) -> tuple[float, float, float, int]:
        """Forward and backward over this rank's micro-batches, then one clipped AdamW step."""
        lr = self.config.optim.lr * lr_factor(self.state.step, self.total_steps, self.config.schedule)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        global_targets = batch.shape[0] * (batch.shape[1] - 1)
        mine = batch[self.dist.rank::self.dist.world_size]
        micro = self.config.micro_batch_size or max(1, mine.shape[0])
        chunks = list(torch.split(mine, micro)) if mine.shape[0] else []
        module = self.ddp or self.model
        loss_sum = torch.zeros((), dtype=torch.float64)
        for index, chunk in enumerate(chunks):
            chunk = chunk.to(self.device)
            sync = self.ddp is None or index == len(chunks) - 1
            with (nullcontext() if sync else self.ddp.no_sync()), \
                    torch.autocast(self.device.type, dtype=self.autocast_dtype,
                                   enabled=self.autocast_dtype is not None):
                out = model_logits(module, chunk[:, :-1])
                loss = torch.nn.functional.cross_entropy(out.float().flatten(0, 1), chunk[:, 1:].flatten(),
                                                         reduction="sum") / global_targets
            # DDP averages gradients over ranks; scaling by world size turns that average into the global sum.
            (loss * self.dist.world_size).backward()
            loss_sum += loss.detach().double().cpu()
        if not chunks and self.ddp is not None:
            raise TrainingError("a rank got no sequences: use a batch_size of at least the number of processes")
        loss_value = all_reduce_sum(loss_sum, self.dist).item()
        if not math.isfinite(loss_value):
            raise self._diverged(f"loss became {loss_value} at step {self.state.step + 1}")
        clip = self.config.optim.grad_clip
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip if clip > 0 else float("inf")))
        # A finite loss can still have non-finite gradients (weights blown up by a huge step); stepping on them
        # would turn every weight into NaN.
        if not math.isfinite(grad_norm):
            raise self._diverged(f"gradient norm became {grad_norm} at step {self.state.step + 1}")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_value, grad_norm, lr, global_targets

    def _diverged(self, what: str) -> TrainingDiverged:
        last = checkpoint.resolve(self.checkpoint_dir)
        return TrainingDiverged(f"training diverged: {what}; last good checkpoint: {last if last else 'none'} "
                                "(lower the learning rate or check the data)")

    # -- evaluation and checkpoints ---------------------------------------------------------------------------
    def _maybe_eval_and_checkpoint(self) -> None:
        done = self.state.step >= self.total_steps
        if self.state.step % self.eval_every == 0 or done:
            self._evaluate()
        if self.state.step % self.checkpoint_every == 0 or done or self._should_stop():
            self.save(checkpoint.LATEST)

    def _evaluate(self) -> None:
        result = self.evaluate(self.model)
        if not math.isfinite(result.nll):
            raise self._diverged(f"held-out loss became {result.nll} at step {self.state.step}")
        self.last_eval = result
        improved = result.nll < self.state.best_loss
        if improved:
            self.state.best_loss = result.nll
            self.state.best_step = self.state.step
            self.state.evals_without_improvement = 0
            if self.config.regime == "converge":
                self.save(checkpoint.BEST)
        else:
            self.state.evals_without_improvement += 1
        metrics = {"step": self.state.step, "tokens": self.state.tokens, "eval": result.summary(),
                   "improved": improved}
        for callback in self.callbacks:
            callback.on_eval(self, metrics)

    def save(self, pointer: str) -> None:
        """Save this step's checkpoint (once) and point `latest` or `best` at it; never non-finite weights."""
        # Checked on every rank (they hold the same weights), so all of them stop together.
        if not checkpoint.finite_weights(self.model):
            raise self._diverged(f"weights became non-finite at step {self.state.step}")
        if not self.dist.is_main:
            return
        name = checkpoint.step_name(self.state.step)
        checkpoint.save(self.checkpoint_dir, name, self.model, self.optimizer, self.state)
        checkpoint.mark(self.checkpoint_dir, pointer, name)
        checkpoint.prune(self.checkpoint_dir)
