"""What scaling laws count of a neural model: N (non-embedding parameters), its total parameters, training FLOPs
per token, and the one call that reads logits from any of them.

N follows Kaplan et al. (2020): every parameter except the token embedding and an untied output layer. Hoffmann
et al. (2022) count every parameter instead, embeddings included: that is `total_params`, which a run records as
`params` beside N, so a fit can use either convention.
"""

from __future__ import annotations

import torch
from torch import nn


def total_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def non_embedding_params(model: nn.Module) -> int:
    """N: every parameter but the token embedding and the output layer (one tensor when tied, counted once)."""
    embedding = {id(p) for layer in (model.get_input_embeddings(), model.get_output_embeddings())
                 for p in layer.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in embedding)


def attention_width(model: nn.Module) -> int:
    """n_layer x d_attn summed over the attention layers of a Hugging Face decoder; 0 for a model without
    attention, such as an LSTM, whose recurrence reads no window of past tokens."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "num_attention_heads"):
        return 0
    return config.num_hidden_layers * config.num_attention_heads * config.head_dim


def output_layer_width(model: nn.Module) -> int:
    """d_model x V: the multiply-adds of the output layer (the unembedding) per token, tied or not."""
    return model.get_output_embeddings().weight.numel()


def flops_per_token(model: nn.Module, context_length: int) -> float:
    """Training FLOPs per token: forward 2N + 2 n_layer n_ctx d_attn + 2 d_model V, backward twice that, so
    C = 6N + 6 n_layer n_ctx d_attn + 6 d_model V.

    The first two terms are Kaplan et al. (2020, Table 1). Kaplan leave out the output layer; Hoffmann et al.
    (2022, Appendix F) count it, and so does this: at small widths and a real vocabulary it costs several times
    6N per token, so leaving it out would understate the compute of exactly the models a small study trains.
    Embedding lookups remain uncounted (no multiply-adds). For an LSTM the recurrent part is 6N: one multiply-add
    per weight per token forward and two backward, leaving out the gates' elementwise arithmetic (O(d_hidden) per
    layer, small next to O(d_hidden^2)).
    """
    return (6.0 * non_embedding_params(model) + 6.0 * context_length * attention_width(model)
            + 6.0 * output_layer_width(model))


def logits(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) token ids -> (B, T, V) logits for any neural family, also through a DDP or torch.compile wrapper."""
    out = model(input_ids)
    return out if isinstance(out, torch.Tensor) else out.logits
