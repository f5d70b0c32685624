"""Every model family behind one incremental interface, for generation and serving.

`load_model(path)` reads an exported directory (`scalelab export`) or a finished run directory and returns a
`DeployedModel`: `prefill` reads a prompt and `step` one more token, each returning log-probabilities of the next
token and the state to continue from: the Transformer's KV cache, the LSTM's (h, c), the n-gram's last tokens.
Which ids a prompt becomes (a text follows the end-of-document token) is `Completion`'s to decide.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from scalelab.choices import Quantize
from scalelab.data.store import TokenStore
from scalelab.data.tokenizer import Tokenizer
from scalelab.errors import ConfigError
from scalelab.io import read_json_object
from scalelab.models.registry import family, names
from scalelab.train.rundir import RunDir


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


def load_model(path: Path, *, quantize: Quantize | None = None, name: str | None = None) -> DeployedModel:
    """The model of an exported directory or of a finished run directory, ready to generate on the CPU."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"{path} is not a directory; give an exported model (scalelab export) or a run")
    name = name or path.resolve().name
    if RunDir(path).is_run():
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
    document = read_json_object(path / "config.json", "model config")
    tokenizer = Tokenizer.load(path / "tokenizer.json")
    for candidate in names():
        adapter = family(candidate)
        if adapter.reads_export(document):
            return adapter.load_export(path, document, tokenizer, name)
    raise ConfigError(f"{path / 'config.json'} names no model family scalelab exports")


def _from_run(path: Path, name: str) -> DeployedModel:
    run = RunDir(path)
    config = run.finished_config()
    tokenizer = TokenStore.open(config.data).tokenizer
    adapter = family(config.family)
    return adapter.deployed(adapter.load_trained(run, config, tokenizer.vocab_size), config, tokenizer, name)
