"""The LSTM family (models/lstm.py), exported as safetensors weights with scalelab's config.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

from scalelab.data.store import TokenStore
from scalelab.data.tokenizer import Tokenizer
from scalelab.deploy.export import deployed_tokenizer, write_config
from scalelab.deploy.model import NeuralModel
from scalelab.families.base import NeuralFamily
from scalelab.models.lstm import LSTMConfig, build_lstm
from scalelab.train.config import TrainConfig


class LSTMModel(NeuralModel):
    family = "lstm"

    def _forward(self, ids: torch.Tensor, state: Any, every_position: bool) -> tuple[torch.Tensor, Any]:
        logits, state = self.module.forward_from(ids, state, last_only=not every_position)
        return logits[0], state


class LSTMFamily(NeuralFamily):
    name = "lstm"
    config = LSTMConfig
    card_loading = """```python
from scalelab.families.lstm import load_lstm

model = load_lstm("path/to/model")  # a torch module: token ids (batch, time) -> logits (batch, time, vocabulary)
```"""

    def build(self, config: LSTMConfig, vocab_size: int) -> torch.nn.Module:
        return build_lstm(config, vocab_size)

    def width(self, size: str) -> int:
        return LSTMConfig.PRESETS[size].d_hidden

    def deployed(self, model: torch.nn.Module, config: TrainConfig, tokenizer: Tokenizer, name: str) -> LSTMModel:
        return LSTMModel(name, tokenizer, model, config.model.context_length)

    def export(self, model: torch.nn.Module, config: TrainConfig, store: TokenStore, directory: Path) -> None:
        save_model(model, str(directory / "model.safetensors"))
        write_config(directory, self.name, store, **config.model.model_dump(mode="json"))
        deployed_tokenizer(store).save(str(directory / "tokenizer.json"))

    def load_export(self, directory: Path, document: dict[str, Any], tokenizer: Tokenizer, name: str) -> LSTMModel:
        return LSTMModel(name, tokenizer, load_lstm(directory), document["context_length"])


def load_lstm(directory: Path) -> torch.nn.Module:
    """The LSTM of an exported directory, in eval mode."""
    document = json.loads((Path(directory) / "config.json").read_text(encoding="utf-8"))
    fields = {key: value for key, value in document.items() if key in LSTMConfig.model_fields}
    model = build_lstm(LSTMConfig.model_validate(fields), document["vocab_size"])
    load_model(model, str(Path(directory) / "model.safetensors"))
    return model.eval()
