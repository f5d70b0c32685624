"""The n-gram family: interpolated modified Kneser-Ney (models/ngram.py), fitted to counts in one pass rather than
trained by steps; exported as ARPA plus scalelab's own arrays."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scalelab.data.store import TokenStore
from scalelab.data.tokenizer import Tokenizer
from scalelab.deploy.export import deployed_tokenizer, write_config
from scalelab.deploy.model import DeployedModel
from scalelab.families.base import Cost, ModelFamily
from scalelab.models.ngram import KneserNeyLM, NgramConfig
from scalelab.study import ladder
from scalelab.train.config import TrainConfig
from scalelab.train.evaluate import EvalResult, EvalSet, result

ORDERS = range(2, 7)
PROBE_TOKENS = 200_000
# The n-gram model reads only its last order - 1 tokens, so it has no context limit of its own; this caps what a
# request may ask for.
CONTEXT = 8192
# Counting has no optimizer, schedule or batches: only these fields decide an n-gram's result.
IDENTITY = ("variant", "tokens", "unique_tokens", "family", "eval_split", "eval_tokens", "model")


class NgramModel(DeployedModel):
    family = "ngram"
    context_length = CONTEXT

    def __init__(self, name: str, tokenizer: Tokenizer, lm: KneserNeyLM):
        super().__init__(name, tokenizer)
        self.lm = lm

    def _logprobs(self, context: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.log(self.lm.distribution(context)).astype(np.float32))

    def prefill(self, ids, every_position: bool = False) -> tuple[Any, torch.Tensor]:
        context = np.asarray(ids, dtype=np.int64)
        if every_position:
            rows = torch.stack([self._logprobs(context[:i + 1]) for i in range(len(context))])
        else:
            rows = self._logprobs(context)
        return self._keep(context), rows

    def step(self, state: Any, token: int) -> tuple[Any, torch.Tensor]:
        context = self._keep(np.append(state, token))
        return context, self._logprobs(context)

    def _keep(self, context: np.ndarray) -> np.ndarray:
        return context[-(self.lm.order - 1):]


class NgramFamily(ModelFamily):
    name = "ngram"
    config = NgramConfig
    evaluations = 1
    # Repeating the stream multiplies every count, and with them the counts of counts that set the Kneser-Ney
    # discounts: a tiled stream is not more data to a count model, only a wrong model.
    repeats_data = False
    card_tags = ("kneser-ney", "arpa")
    card_loading = """`model.arpa` is an ARPA file over token ids (the words are the ids `tokenizer.json` assigns),
which KenLM, SRILM or any ARPA reader loads."""

    def presets(self) -> dict[str, dict[str, Any]]:
        return {str(order): {"order": order} for order in ORDERS}

    def size_label(self, config: NgramConfig) -> str:
        return str(config.order)

    def size_fields(self, size: str) -> dict[str, Any]:
        return {"order": size}

    def hyperparameters(self, size: str, tokens: int, context_length: int, *, min_steps: int = ladder.MIN_STEPS,
                        regime: str = "single-pass") -> dict[str, Any]:
        return {self.name: {"order": int(size)}}

    def identity(self, content: dict[str, Any]) -> dict[str, Any]:
        return {key: content[key] for key in IDENTITY}

    def parameters(self, outcome: dict[str, Any]) -> str:
        return f"{outcome['params']:,} n-grams"

    def cost(self, config: TrainConfig, view_tokens: int, vocab_size: int) -> Cost:
        return Cost(config.unique_tokens or view_tokens, 0.0)

    def throughput(self, store: TokenStore, config: NgramConfig) -> float:
        """Tokens per second of fitting the dataset's first PROBE_TOKENS tokens."""
        train = store.train()
        tokens = np.asarray(train.tokens[: min(PROBE_TOKENS, train.n_tokens)])
        started = time.perf_counter()
        KneserNeyLM.fit(tokens, config.order, store.tokenizer.vocab_size)
        return len(tokens) / (time.perf_counter() - started)

    def train(self, job) -> dict[str, Any]:
        config = job.config
        # Only the U unique tokens are counted, never a repetition of them (TrainConfig refuses one already).
        unique = job.store.subset(config.unique_tokens or config.tokens, config.variant)
        started = time.perf_counter()
        model = KneserNeyLM.fit(unique[0:len(unique)], config.model.order, job.store.tokenizer.vocab_size)
        fit_seconds = time.perf_counter() - started
        model.save(job.run.model_dir)
        return {"eval": self.score(model, config, job.data, job.device).to_dict(), "N": None,
                "params": sum(model.num_ngrams.values()), "order": config.model.order, "tokens_seen": len(unique),
                "epochs": 1.0, "flops": 0.0, "fit_seconds": fit_seconds,
                "tokens_per_s": len(unique) / fit_seconds if fit_seconds else None}

    def load_trained(self, run, config: TrainConfig, vocab_size: int) -> KneserNeyLM:
        return KneserNeyLM.load(run.model_dir)

    def score(self, model: KneserNeyLM, config: TrainConfig, data: EvalSet, device: torch.device) -> EvalResult:
        return result(-model.logprobs(data.stream), data)

    def deployed(self, model: KneserNeyLM, config: TrainConfig, tokenizer: Tokenizer, name: str) -> NgramModel:
        return NgramModel(name, tokenizer, model)

    def export(self, model: KneserNeyLM, config: TrainConfig, store: TokenStore, directory: Path) -> None:
        model.to_arpa(directory / "model.arpa")
        model.save(directory)  # scalelab's own arrays too: `scalelab generate` and `serve` sample from them
        write_config(directory, self.name, store, order=model.order)
        deployed_tokenizer(store).save(str(directory / "tokenizer.json"))

    def load_export(self, directory: Path, document: dict[str, Any], tokenizer: Tokenizer, name: str) -> NgramModel:
        return NgramModel(name, tokenizer, KneserNeyLM.load(directory))
