"""A model family that exists only for the tests: a smoothed unigram model. Registered by one line in the registry
(`FAMILIES["unigram"] = "tests.families.dummy:UnigramFamily"`), it must plan, train, evaluate, export and generate
through scalelab's public commands with no other file touched."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field

from scalelab.config import StrictModel
from scalelab.deploy.export import deployed_tokenizer, write_config
from scalelab.deploy.model import DeployedModel
from scalelab.families.base import Cost, ModelFamily
from scalelab.train.evaluate import result

COUNTS = "unigram.npy"
SMOOTHING = {"add-1": 1.0, "add-0.1": 0.1}


class UnigramConfig(StrictModel):
    smoothing: float = Field(1.0, gt=0)


class UnigramModel(DeployedModel):
    family = "unigram"
    context_length = 1024

    def __init__(self, name, tokenizer, logprobs: torch.Tensor):
        super().__init__(name, tokenizer)
        self.logprobs = logprobs

    def prefill(self, ids, every_position=False):
        return None, self.logprobs.expand(len(ids), -1) if every_position else self.logprobs

    def step(self, state, token):
        return None, self.logprobs


def _logprobs(counts: np.ndarray, smoothing: float) -> np.ndarray:
    smoothed = counts + smoothing
    return np.log(smoothed / smoothed.sum())


class UnigramFamily(ModelFamily):
    name = "unigram"
    config = UnigramConfig
    evaluations = 1
    card_loading = "`unigram.npy` holds the token counts."

    def presets(self) -> dict[str, dict[str, Any]]:
        return {label: {"smoothing": value} for label, value in SMOOTHING.items()}

    def size_label(self, config: UnigramConfig) -> str:
        return next((label for label, value in SMOOTHING.items() if value == config.smoothing), "custom")

    def size_fields(self, size: str) -> dict[str, Any]:
        return self.presets()[size]

    def hyperparameters(self, size: str, tokens: int, context_length: int, *, min_steps: int = 200,
                        regime: str = "single-pass") -> dict[str, Any]:
        return {self.name: self.size_fields(size)}

    def parameters(self, outcome: dict[str, Any]) -> str:
        return f"{outcome['params']:,} counts"

    def cost(self, config, view_tokens: int, vocab_size: int) -> Cost:
        return Cost(view_tokens, 0.0)

    def throughput(self, store, config) -> float:
        return 1e8

    def train(self, job) -> dict[str, Any]:
        view = job.view
        counts = np.bincount(np.asarray(view[0:len(view)]), minlength=job.store.tokenizer.vocab_size)
        job.run.model_dir.mkdir(parents=True, exist_ok=True)
        np.save(job.run.model_dir / COUNTS, counts)
        evaluation = self.score(counts, job.config, job.data, job.device)
        return {"eval": evaluation.to_dict(), "N": None, "params": len(counts), "tokens_seen": len(view),
                "epochs": 1.0, "flops": 0.0}

    def load_trained(self, run, config, vocab_size: int) -> np.ndarray:
        return np.load(run.model_dir / COUNTS)

    def score(self, counts: np.ndarray, config, data, device):
        logprobs = _logprobs(counts, config.model.smoothing)
        return result(-logprobs[data.stream[1:]], data)  # the NLL of every target of the stream

    def deployed(self, counts: np.ndarray, config, tokenizer, name: str) -> UnigramModel:
        return UnigramModel(name, tokenizer, torch.from_numpy(_logprobs(counts, config.model.smoothing)).float())

    def export(self, counts: np.ndarray, config, store, directory: Path) -> None:
        np.save(directory / COUNTS, counts)
        write_config(directory, self.name, store, smoothing=config.model.smoothing)
        deployed_tokenizer(store).save(str(directory / "tokenizer.json"))

    def load_export(self, directory: Path, document: dict[str, Any], tokenizer, name: str) -> UnigramModel:
        logprobs = _logprobs(np.load(directory / COUNTS), document["smoothing"])
        return UnigramModel(name, tokenizer, torch.from_numpy(logprobs).float())
