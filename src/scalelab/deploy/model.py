"""Every model family behind one incremental interface, for generation and serving.

`load_model(path)` reads an exported directory (`scalelab export`) or a finished run directory and returns a
`DeployedModel`: `prefill` reads a prompt and `step` one more token, each returning log-probabilities of the next
token and the state to continue from: the Transformer's KV cache, the LSTM's (h, c), the n-gram's last tokens.
Which ids a prompt becomes (a text follows the end-of-document token) is `Completion`'s to decide.
"""

from __future__ import annotations

import inspect
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from scalelab.data.tokenizer import Tokenizer
from scalelab.errors import ConfigError
from scalelab.io import read_json_object

Quantize = Literal["int8"]
# The n-gram model reads only its last order - 1 tokens, so it has no context limit of its own; this caps what a
# request may ask for.
NGRAM_CONTEXT = 8192


class DeployedModel(ABC):
    """A loaded model; `context_length` counts every token of a sequence, a leading end-of-document token
    included."""

    family: str
    context_length: int

    def __init__(self, name: str, tokenizer: Tokenizer):
        self.name = name
        self.tokenizer = tokenizer

    @property
    def eod_id(self) -> int:
        return self.tokenizer.eod_id

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @abstractmethod
    def prefill(self, ids: Sequence[int], every_position: bool = False) -> tuple[Any, torch.Tensor]:
        """Read `ids` -> (state, float32 log-probabilities of the token after each position: shape (len(ids), V)
        when `every_position`, else (V,) for the last)."""

    @abstractmethod
    def step(self, state: Any, token: int) -> tuple[Any, torch.Tensor]:
        """Read one more token -> (state, (V,) log-probabilities of the next)."""


class NeuralModel(DeployedModel):
    def __init__(self, name: str, tokenizer: Tokenizer, module: torch.nn.Module, context_length: int):
        super().__init__(name, tokenizer)
        self.module = module.eval()
        self.context_length = context_length

    @abstractmethod
    def _forward(self, ids: torch.Tensor, state: Any, every_position: bool) -> tuple[torch.Tensor, Any]:
        """(1, T) ids read on from `state` -> (logits, state): (T, V) logits when `every_position`, else (1, V)
        for the last position only; the output layer over a whole prompt is most of a small model's prefill."""

    @torch.inference_mode()
    def prefill(self, ids: Sequence[int], every_position: bool = False) -> tuple[Any, torch.Tensor]:
        logits, state = self._forward(torch.tensor([list(ids)]), None, every_position)
        return state, torch.log_softmax((logits if every_position else logits[-1]).float(), dim=-1)

    @torch.inference_mode()
    def step(self, state: Any, token: int) -> tuple[Any, torch.Tensor]:
        logits, state = self._forward(torch.tensor([[token]]), state, every_position=False)
        return state, torch.log_softmax(logits[-1].float(), dim=-1)


class TransformerModel(NeuralModel):
    family = "transformer"

    def __init__(self, name: str, tokenizer: Tokenizer, module: torch.nn.Module, context_length: int):
        super().__init__(name, tokenizer, module, context_length)
        # transformers 5.x renamed the KV-cache argument and output from `past_key_values` to `cache`.
        self.cache_name = "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"

    def _forward(self, ids: torch.Tensor, state: Any, every_position: bool) -> tuple[torch.Tensor, Any]:
        out = self.module(input_ids=ids, use_cache=True, logits_to_keep=0 if every_position else 1,
                          **{self.cache_name: state})
        return out.logits[0], getattr(out, self.cache_name)


class LSTMModel(NeuralModel):
    family = "lstm"

    def _forward(self, ids: torch.Tensor, state: Any, every_position: bool) -> tuple[torch.Tensor, Any]:
        logits, state = self.module.forward_from(ids, state, last_only=not every_position)
        return logits[0], state


class NgramModel(DeployedModel):
    family = "ngram"
    context_length = NGRAM_CONTEXT

    def __init__(self, name: str, tokenizer: Tokenizer, lm):
        super().__init__(name, tokenizer)
        self.lm = lm

    def _logprobs(self, context: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.log(self.lm.distribution(context)).astype(np.float32))

    def prefill(self, ids: Sequence[int], every_position: bool = False) -> tuple[Any, torch.Tensor]:
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


def load_model(path: Path, *, quantize: Quantize | None = None, name: str | None = None) -> DeployedModel:
    """The model of an exported directory or of a finished run directory, ready to generate on the CPU."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"{path} is not a directory; give an exported model (scalelab export) or a run")
    name = name or path.resolve().name
    if (path / "config.yaml").is_file():
        model = _from_run(path, name)
    elif (path / "config.json").is_file():
        model = _from_export(path, name)
    else:
        raise ConfigError(f"{path} holds neither an exported model (config.json) nor a run (config.yaml)")
    if quantize is not None:
        if not isinstance(model, NeuralModel):
            raise ConfigError(f"--quantize {quantize} applies to neural models, not the {model.family}")
        model.module = quantize_int8(model.module)
    return model


def quantize_int8(module: torch.nn.Module) -> torch.nn.Module:
    """Dynamic int8 quantisation of every Linear and LSTM: int8 weights, activations quantised per batch as they
    arrive, so it needs no calibration data. The token embedding stays fp32."""
    from torch.ao.quantization import quantize_dynamic

    if "fbgemm" in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = "fbgemm"
    with warnings.catch_warnings():
        # torch.ao.quantization is deprecated in favour of torchao, whose int8 kernels need torch.compile on the
        # CPU; the eager dynamic path remains the one that runs anywhere torch does.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor", category=UserWarning)
        return quantize_dynamic(module, {torch.nn.Linear, torch.nn.LSTM}, dtype=torch.qint8)


def _from_export(path: Path, name: str) -> DeployedModel:
    config = read_json_object(path / "config.json", "model config")
    tokenizer = Tokenizer.load(path / "tokenizer.json")
    family = config.get("family", "transformer" if "model_type" in config else None)
    if family == "transformer":
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # loading a local file takes no time worth a bar
        module = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        return TransformerModel(name, tokenizer, module, module.config.max_position_embeddings)
    if family == "lstm":
        from scalelab.deploy.export import load_lstm

        return LSTMModel(name, tokenizer, load_lstm(path), config["context_length"])
    if family == "ngram":
        from scalelab.models.ngram import KneserNeyLM

        return NgramModel(name, tokenizer, KneserNeyLM.load(path))
    raise ConfigError(f"{path / 'config.json'} names no model family scalelab exports")


def _from_run(path: Path, name: str) -> DeployedModel:
    from scalelab.data.store import TokenStore
    from scalelab.train import checkpoint
    from scalelab.train.run import build_model, finished_run_config

    config = finished_run_config(path)
    tokenizer = TokenStore.open(config.data).tokenizer
    if config.family == "ngram":
        from scalelab.models.ngram import KneserNeyLM

        return NgramModel(name, tokenizer, KneserNeyLM.load(path / "model"))
    module = build_model(config, tokenizer.vocab_size)
    checkpoint.load_weights(checkpoint.final(path, config.regime == "converge"), module)
    cls = TransformerModel if config.family == "transformer" else LSTMModel
    return cls(name, tokenizer, module, config.model_config_for_family.context_length)
