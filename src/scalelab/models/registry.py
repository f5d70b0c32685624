"""The model families in one place: each family's config class, builder and size presets, and the accounting
that scaling laws need: N (non-embedding parameters) and training FLOPs per token.

N follows Kaplan et al. (2020) and Hoffmann et al. (2022): every parameter except the token embedding and an
untied output layer. The n-gram family is fitted to counts rather than built, so it has a config and presets here
but no builder.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn

from scalelab.config import StrictModel
from scalelab.models.lstm import PRESETS as LSTM_PRESETS
from scalelab.models.lstm import LSTMConfig, LSTMLanguageModel, build_lstm
from scalelab.models.ngram import NgramConfig
from scalelab.models.transformer import PRESETS as TRANSFORMER_PRESETS
from scalelab.models.transformer import TransformerConfig, build_transformer

Family = Literal["ngram", "lstm", "transformer"]
NeuralConfig = LSTMConfig | TransformerConfig

CONFIGS: dict[Family, type[StrictModel]] = {"ngram": NgramConfig, "lstm": LSTMConfig,
                                            "transformer": TransformerConfig}
BUILDERS: dict[type[StrictModel], Callable[[Any, int], nn.Module]] = {LSTMConfig: build_lstm,
                                                                      TransformerConfig: build_transformer}
NGRAM_ORDERS = range(2, 7)


def presets(family: Family) -> dict[str, dict[str, int]]:
    """Preset name -> the shape fields it stands for."""
    if family == "ngram":
        return {str(order): {"order": order} for order in NGRAM_ORDERS}
    table = LSTM_PRESETS if family == "lstm" else TRANSFORMER_PRESETS
    return {name: shape._asdict() for name, shape in table.items()}


def build(config: NeuralConfig, vocab_size: int) -> nn.Module:
    """A freshly initialised model of the config's family, on the current default device."""
    return BUILDERS[type(config)](config, vocab_size)


def total_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def non_embedding_params(model: nn.Module) -> int:
    """N: every parameter but the token embedding and the output layer (one tensor when tied, counted once)."""
    embedding = {id(p) for layer in (model.get_input_embeddings(), model.get_output_embeddings())
                 for p in layer.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in embedding)


def flops_per_token(model: nn.Module | NeuralConfig, context_length: int) -> float:
    """Training FLOPs per token: forward 2N + 2 n_layer n_ctx d_attn, backward twice that (Kaplan et al. 2020,
    Table 1), so C = 6N + 6 n_layer n_ctx d_attn, with d_attn = d_model for every shape built here.

    As there, embedding lookups and the output layer (2 d_model V forward) are left out. An LSTM's recurrence
    reads no window of past tokens, so its estimate is 6N: one multiply-add per weight per token forward and two
    backward, leaving out the gates' elementwise arithmetic (O(d_hidden) per layer, small next to O(d_hidden^2)).
    """
    if not isinstance(model, nn.Module):
        # No storage on the meta device: any preset is counted at once. Embeddings are not counted, so any
        # vocabulary will do.
        with torch.device("meta"):
            model = build(model, vocab_size=1)
    flops = 6.0 * non_embedding_params(model)
    if isinstance(model, LSTMLanguageModel):
        return flops
    config = model.config
    d_attn = config.num_attention_heads * config.head_dim
    return flops + 6.0 * config.num_hidden_layers * context_length * d_attn


def logits(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) token ids -> (B, T, V) logits for either family, also through a DDP or torch.compile wrapper."""
    out = model(input_ids)
    return out if isinstance(out, torch.Tensor) else out.logits
