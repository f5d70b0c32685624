"""What a model family is, in one interface: its config and size labels, how the study ladder sizes a run, what a
run costs, how it trains, how its final model loads and scores, and how it is exported and served.

`ModelFamily` is the contract; `NeuralFamily` implements it for models trained by gradient steps (LSTM,
Transformer), which differ only in how a model is built, served and exported.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from scalelab.config import StrictModel
from scalelab.models.accounting import flops_per_token, logits
from scalelab.models.size import SizedConfig
from scalelab.study import ladder
from scalelab.train.duration import duration, windows

if TYPE_CHECKING:
    from scalelab.data.store import TokenStore
    from scalelab.data.tokenizer import Tokenizer
    from scalelab.deploy.model import DeployedModel
    from scalelab.train.config import TrainConfig
    from scalelab.train.evaluate import EvalResult, EvalSet
    from scalelab.train.run import Job
    from scalelab.train.rundir import RunDir


@dataclass(frozen=True)
class Cost:
    train_tokens: int  # what the run reads: tokens counted, or training targets over every step
    flops: float  # training FLOPs (0 for a model that is counted, not trained)


class ModelFamily(ABC):
    name: ClassVar[str]
    config: ClassVar[type[StrictModel]]  # this family's section of a TrainConfig, under the key `name`
    evaluations: ClassVar[int]  # held-out evaluations one run makes, for time estimates
    # The model card: the Hugging Face library that loads an export, its tags, and how to load it (Markdown).
    card_library: ClassVar[str] = "scalelab"
    card_tags: ClassVar[tuple[str, ...]] = ()
    card_loading: ClassVar[str]
    # Whether a run may see its tokens more than once (unique_tokens < tokens). A model counted from its data in
    # one pass cannot: repeating the stream only multiplies its counts. Such a family is refused repeated data,
    # and studies skip its runs with U < D.
    repeats_data: ClassVar[bool] = True

    # -- sizes ----------------------------------------------------------------------------------------------------
    @abstractmethod
    def presets(self) -> dict[str, dict[str, Any]]:
        """Size label -> the config fields it stands for."""

    @abstractmethod
    def size_label(self, config: Any) -> str:
        """The label a study and a run directory name this config's size by."""

    @abstractmethod
    def size_fields(self, size: str) -> dict[str, Any]:
        """The fields of this family's config that a size label (a preset, or `--size` on the command line) sets."""

    @abstractmethod
    def hyperparameters(self, size: str, tokens: int, context_length: int, *, min_steps: int = ladder.MIN_STEPS,
                        regime: str = "single-pass") -> dict[str, Any]:
        """TrainConfig fields for one study run at `size` on `tokens` training tokens (study/ladder.py's rules),
        aiming at `min_steps` optimizer steps under `regime`."""

    def identity(self, content: dict[str, Any]) -> dict[str, Any]:
        """The TrainConfig fields (JSON) that decide this family's result; the rest do not enter the run id."""
        return content

    def parameters(self, outcome: dict[str, Any]) -> str:
        """The model's size for people, from its run result."""
        return f"N = {outcome['N']:,} non-embedding parameters, {outcome['params']:,} in all"

    # -- what a run measures --------------------------------------------------------------------------------------
    def data_seen(self, config: TrainConfig) -> tuple[int, int]:
        """(D, U) of a run: the tokens it is trained on, repeats counted, and the unique tokens among them. Here the
        config's own: D tokens, drawn from U unique ones when `unique_tokens` is set."""
        return config.tokens, config.unique_tokens or config.tokens

    def unreliable(self, config: TrainConfig) -> str | None:
        """Why a run of `config` measures something other than its data (too little training to mean anything),
        or None when it can be trusted as a point on a curve."""
        return None

    # -- cost -----------------------------------------------------------------------------------------------------
    @abstractmethod
    def cost(self, config: TrainConfig, view_tokens: int, vocab_size: int) -> Cost:
        """What a run of `config` on a training view of `view_tokens` tokens, over a vocabulary of `vocab_size`,
        reads and computes."""

    @abstractmethod
    def throughput(self, store: TokenStore, config: Any) -> float:
        """Training tokens per second on this machine with one thread, measured briefly."""

    # -- a run ----------------------------------------------------------------------------------------------------
    @abstractmethod
    def train(self, job: Job) -> dict[str, Any]:
        """Train (or fit) the job's model and score it; returns the run result's family part (eval, N, ...)."""

    @abstractmethod
    def load_trained(self, run: RunDir, config: TrainConfig, vocab_size: int) -> Any:
        """The final model of a run (its best checkpoint when it converged)."""

    @abstractmethod
    def score(self, model: Any, config: TrainConfig, data: EvalSet, device: torch.device) -> EvalResult:
        """The held-out score of a loaded model."""

    # -- deployment -----------------------------------------------------------------------------------------------
    @abstractmethod
    def deployed(self, model: Any, config: TrainConfig, tokenizer: Tokenizer, name: str) -> DeployedModel:
        """A loaded run's model behind the incremental interface that generation and serving use."""

    @abstractmethod
    def export(self, model: Any, config: TrainConfig, store: TokenStore, directory: Path) -> None:
        """Write the model, its config and tokenizer into `directory` (export.py adds the card and marker)."""

    def reads_export(self, document: dict[str, Any]) -> bool:
        """Whether an exported directory's config.json is this family's."""
        return document.get("family") == self.name

    @abstractmethod
    def load_export(self, directory: Path, document: dict[str, Any], tokenizer: Tokenizer,
                    name: str) -> DeployedModel:
        """The model of an exported directory, ready to generate on the CPU."""


class NeuralFamily(ModelFamily):
    """A family of torch modules trained by the shared trainer, evaluated window by window, checkpointed."""

    config: ClassVar[type[SizedConfig]]
    evaluations = 5  # about five per run (train/trainer.py's default interval)

    @abstractmethod
    def build(self, config: Any, vocab_size: int) -> torch.nn.Module:
        """A freshly initialised model on the current default device."""

    @abstractmethod
    def width(self, size: str) -> int:
        """The model width the ladder scales the learning rate by."""

    def presets(self) -> dict[str, dict[str, Any]]:
        return {name: shape._asdict() for name, shape in self.config.PRESETS.items()}

    def size_label(self, config: SizedConfig) -> str:
        return config.size

    def size_fields(self, size: str) -> dict[str, Any]:
        return {"size": size}

    def hyperparameters(self, size: str, tokens: int, context_length: int, *, min_steps: int = ladder.MIN_STEPS,
                        regime: str = "single-pass") -> dict[str, Any]:
        # The study's context is kept even when D holds less than one window of it: the run then trains on a
        # shorter one (train/duration.py's `windows`), and `unreliable` says so, rather than the config hiding it.
        batch = ladder.batch_size(tokens, context_length, min_steps)
        return {self.name: {**self.size_fields(size), "context_length": context_length},
                "batch_size": batch,
                **(ladder.converge_fields(tokens, context_length, batch, min_steps) if regime == "converge" else {}),
                "optim": {"lr": ladder.learning_rate(self.name, size)},
                "schedule": ladder.SCHEDULE}

    def data_seen(self, config: TrainConfig) -> tuple[int, int]:
        """converge: D = U = the unique tokens, however many epochs early stopping takes; this is Kaplan et al.'s
        (2020) and Hestness et al.'s (2017) L(D), measured at the best held-out loss on D tokens. A fixed duration
        (single-pass, `epochs`, `steps` or `train_tokens`): D = the tokens the steps pass over, repeats counted, and
        U = the unique tokens among them, so a run that sees its data more than once has U < D and is fitted by the
        data-constrained law of Muennighoff et al. (2023), never as if its repeated tokens were fresh."""
        unique = config.unique_tokens or config.tokens
        if config.regime == "converge":
            return unique, unique
        per_epoch, context = windows(config.tokens, config.model.context_length)
        passes = duration(config, config.tokens, config.model.context_length).tokens / (per_epoch * context)
        seen = max(1, round(passes * config.tokens))
        return seen, min(unique, seen)

    def unreliable(self, config: TrainConfig) -> str | None:
        """A run is unreliable when its context had to shrink below the configured one (D holds less than one
        window), or when it has fewer than `min_steps` optimizer steps: a handful of steps measures the optimizer,
        not the data (Kaplan et al. 2020 and Hoffmann et al. 2022 fit runs of thousands of steps). The context is
        never shrunk to make up the steps, as the loss would then change with the context as well as with D."""
        model = config.model
        per_epoch, context = windows(config.tokens, model.context_length)
        if context < model.context_length:
            return (f"D = {config.tokens:,} tokens hold less than one window of the context ({model.context_length} "
                    f"tokens), which shrinks to {context}")
        if config.min_steps is None:
            return None
        steps = duration(config, config.tokens, model.context_length).steps
        if steps >= config.min_steps:
            return None
        return (f"{steps} optimizer steps, fewer than min_steps = {config.min_steps}: D = {config.tokens:,} tokens "
                f"make {per_epoch} windows of {context} tokens, {-(-per_epoch // config.batch_size)} steps per pass "
                f"at batch size {config.batch_size}")

    def flops_per_token(self, config: SizedConfig, vocab_size: int) -> float:
        """Training FLOPs per token for this config over a vocabulary of `vocab_size` (the output layer counts),
        counted on the meta device: no memory, any size."""
        with torch.device("meta"):
            model = self.build(config, vocab_size=vocab_size)
        return flops_per_token(model, config.context_length)

    def cost(self, config: TrainConfig, view_tokens: int, vocab_size: int) -> Cost:
        model = config.model
        planned = duration(config, view_tokens, model.context_length)
        _, context = windows(view_tokens, model.context_length)
        per_token = self.flops_per_token(model.model_copy(update={"context_length": context}), vocab_size)
        return Cost(planned.tokens, per_token * planned.tokens)

    def throughput(self, store: TokenStore, config: SizedConfig) -> float:
        """A few timed AdamW steps on 8 windows of the dataset's first tokens; the first warms up, the fastest of
        the rest counts."""
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            model = self.build(config, store.tokenizer.vocab_size)
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
            train = store.train()
            context = min(config.context_length, train.n_tokens - 2)
            tokens = torch.from_numpy(np.asarray(train.tokens[: 8 * (context + 1)], dtype=np.int64))
            batch = tokens.view(8, context + 1)
            timings = []
            for _ in range(3):
                started = time.perf_counter()
                out = logits(model, batch[:, :-1])
                torch.nn.functional.cross_entropy(out.flatten(0, 1), batch[:, 1:].flatten()).backward()
                optimizer.step()
                optimizer.zero_grad()
                timings.append(time.perf_counter() - started)
            return 8 * context / min(timings[1:])
        finally:
            torch.set_num_threads(threads)

    def new_model(self, config: TrainConfig, vocab_size: int) -> torch.nn.Module:
        torch.manual_seed(config.seed)  # the same seed gives the same initial weights
        return self.build(config.model, vocab_size)

    def train(self, job: Job) -> dict[str, Any]:
        from scalelab.train.neural import train_neural

        return train_neural(self.new_model(job.config, job.store.tokenizer.vocab_size), job)

    def load_trained(self, run: RunDir, config: TrainConfig, vocab_size: int) -> torch.nn.Module:
        from scalelab.train import checkpoint

        model = self.new_model(config, vocab_size)
        checkpoint.load_weights(run.final_checkpoint(config), model)
        return model

    def score(self, model: torch.nn.Module, config: TrainConfig, data: EvalSet, device: torch.device) -> EvalResult:
        from scalelab.train.evaluate import neural_nll, result
        from scalelab.train.run import autocast_dtype

        _, context = windows(config.tokens, config.model.context_length)
        return result(neural_nll(model.to(device), data, context, config.eval_batch_size, device,
                                 autocast_dtype(config, device)), data)
