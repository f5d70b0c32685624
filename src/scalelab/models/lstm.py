"""LSTM language model: embedding -> dropout -> stacked LSTM -> dropout -> output layer tied to the embedding.

The recurrent baseline that Kaplan et al. (2020, Fig. 7) set against Transformers of equal non-embedding size N.
Each training window of context_length tokens is read from a zero state, as a Transformer reads it, so the two
families see the same context.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from pydantic import Field
from torch import nn

from scalelab.models.size import SizedConfig

# (h, c), each (n_layers, B, d_hidden), as nn.LSTM takes and returns it.
LSTMState = tuple[torch.Tensor, torch.Tensor]


class LSTMShape(NamedTuple):
    n_layers: int
    d_hidden: int
    d_embed: int


# Two layers up to 10M, then three and four, which keeps the widest at 2048; d_embed == d_hidden, so no projection.
PRESETS: dict[str, LSTMShape] = {
    name: LSTMShape(n_layers, d_hidden, d_hidden)
    for name, (n_layers, d_hidden) in {
        "0.1M": (2, 80),
        "0.3M": (2, 128),
        "1M": (2, 256),
        "3M": (2, 448),
        "10M": (2, 768),
        "25M": (3, 1024),
        "50M": (4, 1280),
        "125M": (4, 2048),
    }.items()
}


class LSTMConfig(SizedConfig):
    """An LSTM's size, named by a preset or given field by field, and its regularisation."""

    FAMILY = "lstm"
    PRESETS = PRESETS
    REQUIRED = ("n_layers", "d_hidden")

    n_layers: int | None = Field(None, gt=0, description="custom: stacked LSTM layers.")
    d_hidden: int | None = Field(None, gt=0, description="custom: hidden state width.")
    d_embed: int | None = Field(None, gt=0, description="custom: embedding width (default: d_hidden); a different "
                                                        "width adds a projection before the tied output layer.")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout on the embeddings, between LSTM layers and "
                                                            "before the output layer.")
    context_length: int = Field(256, gt=0, description="Training window (truncated BPTT length); the state is not "
                                                       "carried across windows.")

    def custom_shape(self) -> LSTMShape:
        return LSTMShape(self.n_layers, self.d_hidden, self.d_embed or self.d_hidden)


class LSTMLanguageModel(nn.Module):
    def __init__(self, vocab_size: int, n_layers: int, d_hidden: int, d_embed: int, dropout: float):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_embed)
        self.drop = nn.Dropout(dropout)
        # nn.LSTM's own dropout acts between layers only (and warns when there is a single layer).
        self.lstm = nn.LSTM(d_embed, d_hidden, n_layers, batch_first=True, dropout=dropout if n_layers > 1 else 0.0)
        self.proj = nn.Linear(d_hidden, d_embed, bias=False) if d_hidden != d_embed else nn.Identity()
        self.head = nn.Linear(d_embed, vocab_size, bias=False)
        self.head.weight = self.embed.weight

        # Tied, the embedding's scale is the initial logits' scale: nn.Embedding's N(0, 1) would start far from
        # uniform predictions. This range is PyTorch's word_language_model example's.
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)
        # Forget-gate bias 1, so gradients reach early tokens from the start (Jozefowicz et al. 2015).
        # PyTorch stacks the gates as input, forget, cell, output.
        for name, param in self.lstm.named_parameters():
            if name.startswith("bias_ih"):
                nn.init.ones_(param[d_hidden:2 * d_hidden])

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.forward_from(input_ids)[0]

    def forward_from(self, input_ids: torch.Tensor, state: LSTMState | None = None, last_only: bool = False
                     ) -> tuple[torch.Tensor, LSTMState]:
        """(B, T) ids read on from `state` (None: the zero state) -> (B, T, V) logits, or (B, 1, V) for the last
        position when `last_only`, and the state after them; generation carries the state forward one token at a
        time instead of re-reading the window."""
        x = self.drop(self.embed(input_ids))  # (B, T, E)
        h, state = self.lstm(x, state)  # (B, T, H)
        if last_only:
            h = h[:, -1:]
        return self.head(self.proj(self.drop(h))), state

    # Hugging Face's accessor names, so parameter accounting treats both families alike.
    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed

    def get_output_embeddings(self) -> nn.Linear:
        return self.head


def build_lstm(config: LSTMConfig, vocab_size: int) -> LSTMLanguageModel:
    return LSTMLanguageModel(vocab_size, *config.shape, dropout=config.dropout)
