"""GPT-style decoder: Hugging Face's Llama (pre-RMSNorm, RoPE, SwiGLU, SDPA attention, no biases), so a trained
model saves with `save_pretrained`, reloads with `AutoModelForCausalLM` and samples with `generate`.

Sizes are named by their approximate non-embedding parameter count N (Kaplan et al. 2020). A preset fixes width
and depth only; `transformer_shape` derives heads and the SwiGLU hidden size from the width, for presets and
custom shapes alike.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from pydantic import Field

from scalelab.errors import ConfigError
from scalelab.models.size import SizedConfig

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM

HEAD_DIM = 64
SWIGLU_MULTIPLE = 32


class TransformerShape(NamedTuple):
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int


def transformer_shape(d_model: int, n_layers: int, n_heads: int | None = None,
                      d_ff: int | None = None) -> TransformerShape:
    """Heads of width 64 where the width allows; SwiGLU hidden size by LLaMA's rule unless given."""
    if n_heads is None:
        n_heads = max(1, d_model // HEAD_DIM)
    if d_ff is None:
        # SwiGLU has three matrices where a GELU MLP has two, so 2/3 of the usual 4 * d_model keeps the MLP's
        # cost; LLaMA rounds that up to a multiple for efficient kernels.
        d_ff = SWIGLU_MULTIPLE * -(-(8 * d_model // 3) // SWIGLU_MULTIPLE)
    return TransformerShape(d_model, n_layers, n_heads, d_ff)


# Widths are multiples of 64 so every head is 64 wide. Kaplan et al. (2020, Fig. 5) find that at fixed N the loss
# moves only a few percent across a wide range of d_model / n_layers; from 1M up the presets keep it between about
# 25 and 70 (at 0.3M it is 13, as 64 is the narrowest width with a 64-wide head).
PRESETS: dict[str, TransformerShape] = {
    name: transformer_shape(d_model, n_layers)
    for name, (d_model, n_layers) in {
        "0.1M": (64, 2),
        "0.3M": (64, 5),
        "1M": (128, 5),
        "3M": (192, 7),
        "10M": (320, 8),
        "25M": (512, 8),
        "50M": (640, 10),
        "125M": (896, 13),
    }.items()
}


class TransformerConfig(SizedConfig):
    """A decoder's size, named by a preset or given field by field, and the few settings that are not size."""

    FAMILY = "transformer"
    PRESETS = PRESETS
    REQUIRED = ("d_model", "n_layers")

    d_model: int | None = Field(None, gt=0, description="custom: width.")
    n_layers: int | None = Field(None, gt=0, description="custom: depth.")
    n_heads: int | None = Field(None, gt=0, description="custom: attention heads (default: d_model // 64, at least 1).")
    d_ff: int | None = Field(None, gt=0, description="custom: SwiGLU hidden size "
                                                     "(default: 8/3 d_model rounded up to a multiple of 32).")
    context_length: int = Field(256, gt=0, description="Longest sequence the model reads (its RoPE table length).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Attention dropout; Llama has no residual or embedding "
                                                            "dropout.")
    rope_theta: float = Field(10000.0, gt=0.0, description="RoPE base period.")

    def custom_shape(self) -> TransformerShape:
        return transformer_shape(self.d_model, self.n_layers, self.n_heads, self.d_ff)

    def check_shape(self, shape: TransformerShape) -> None:
        if shape.d_model % shape.n_heads:
            raise ValueError(f"d_model ({shape.d_model}) must be a multiple of n_heads ({shape.n_heads})")


def build_transformer(config: TransformerConfig, vocab_size: int) -> LlamaForCausalLM:
    """A freshly initialised decoder with tied input and output embeddings."""
    try:
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError as exc:
        raise ConfigError("the transformer family needs transformers: pip install 'transformers>=5'") from exc

    d_model, n_layers, n_heads, d_ff = config.shape
    hf_config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_heads,
        intermediate_size=d_ff,
        max_position_embeddings=config.context_length,
        rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
        attention_dropout=config.dropout,
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=True,
        # The caller's tokenizer owns the special tokens; Llama's defaults (1 and 2) would name arbitrary ones here.
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        # Training never reuses keys and values, so forward() keeps none; generate() still caches.
        use_cache=False,
        attn_implementation="sdpa",
    )
    model = LlamaForCausalLM(hf_config)
    model.generation_config.use_cache = True
    return model
