from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from scalelab.config import validate
from scalelab.errors import ConfigError
from scalelab.models.accounting import non_embedding_params, total_params
from scalelab.models.transformer import PRESETS, TransformerConfig, build_transformer
from tests.models.conftest import nominal

VOCAB = 64


def expected_n(d_model: int, n_layers: int, d_ff: int) -> int:
    """Per layer: q, k, v, o (4 d^2), SwiGLU's gate, up and down (3 d d_ff), two RMSNorm gains; one final norm."""
    return n_layers * (4 * d_model**2 + 3 * d_model * d_ff + 2 * d_model) + d_model


def tiny(**fields) -> TransformerConfig:
    return TransformerConfig(size="custom", d_model=64, n_layers=2, context_length=32, **fields)


def test_every_preset_is_near_its_nominal_size_and_sizes_increase():
    counts = []
    for name, shape in PRESETS.items():
        with torch.device("meta"):
            model = build_transformer(TransformerConfig(size=name), VOCAB)
        n = non_embedding_params(model)
        assert abs(n / nominal(name) - 1) <= 0.35, (name, n)
        assert n == expected_n(shape.d_model, shape.n_layers, shape.d_ff)
        assert model.config.head_dim == 64 and shape.d_model == 64 * shape.n_heads
        assert shape.d_ff % 32 == 0 and abs(shape.d_ff / shape.d_model - 8 / 3) < 0.4
        counts.append(n)
    assert counts == sorted(counts)


@pytest.mark.parametrize("name", ["1M", "3M", "10M"])
def test_real_build_counts_what_the_formula_says(name):
    shape = PRESETS[name]
    model = build_transformer(TransformerConfig(size=name), VOCAB)
    assert non_embedding_params(model) == expected_n(shape.d_model, shape.n_layers, shape.d_ff)
    assert total_params(model) == non_embedding_params(model) + VOCAB * shape.d_model


def test_config_reaches_the_llama_config():
    model = build_transformer(tiny(dropout=0.1, rope_theta=500.0), VOCAB)
    config = model.config
    assert (config.vocab_size, config.max_position_embeddings, config.attention_dropout) == (VOCAB, 32, 0.1)
    assert config.rope_parameters["rope_theta"] == 500.0
    assert config._attn_implementation == "sdpa"
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert not [name for name, _ in model.named_parameters() if name.endswith("bias")]


def test_reloaded_from_save_pretrained_gives_the_same_logits(tmp_path: Path):
    torch.manual_seed(0)
    model = build_transformer(tiny(), VOCAB).eval()
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    input_ids = torch.randint(0, VOCAB, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids).logits, model(input_ids).logits)


def test_greedy_generate_extends_the_prompt_with_the_argmax_token():
    torch.manual_seed(0)
    model = build_transformer(tiny(), VOCAB).eval()
    prompt = torch.randint(0, VOCAB, (1, 5))
    out = model.generate(prompt, max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 9)
    assert torch.equal(out[:, :5], prompt)
    with torch.no_grad():
        assert out[0, 5] == model(prompt).logits[0, -1].argmax()


def test_a_future_token_does_not_change_earlier_logits():
    torch.manual_seed(0)
    model = build_transformer(tiny(), VOCAB).eval()
    input_ids = torch.randint(0, VOCAB, (1, 12))
    changed = input_ids.clone()
    changed[0, 8] = (changed[0, 8] + 1) % VOCAB
    with torch.no_grad():
        before, after = model(input_ids).logits, model(changed).logits
    torch.testing.assert_close(before[:, :8], after[:, :8])
    assert not torch.allclose(before[:, 8:], after[:, 8:])


def test_unknown_preset_names_the_presets():
    with pytest.raises(ConfigError) as info:
        validate(TransformerConfig, {"size": "7M"})
    assert "'7M'" in str(info.value) and all(name in str(info.value) for name in PRESETS)


def test_shape_fields_need_size_custom_and_custom_needs_a_shape():
    with pytest.raises(ConfigError, match="d_model apply only with size 'custom'"):
        validate(TransformerConfig, {"size": "1M", "d_model": 256})
    with pytest.raises(ConfigError, match="needs n_layers"):
        validate(TransformerConfig, {"size": "custom", "d_model": 256})
    with pytest.raises(ConfigError, match="multiple of n_heads"):
        validate(TransformerConfig, {"size": "custom", "d_model": 100, "n_layers": 1, "n_heads": 3})


def test_custom_shape_derives_heads_and_ffn_width():
    assert TransformerConfig(size="custom", d_model=256, n_layers=3).shape == (256, 3, 4, 704)
    assert TransformerConfig(size="custom", d_model=48, n_layers=1).shape.n_heads == 1
