from __future__ import annotations

import pytest
import torch

from scalelab.config import validate
from scalelab.errors import ConfigError
from scalelab.models.accounting import non_embedding_params, total_params
from scalelab.models.lstm import PRESETS, LSTMConfig, build_lstm
from tests.models.conftest import nominal

VOCAB = 64


def expected_n(n_layers: int, d_hidden: int, d_embed: int) -> int:
    """Four gates per layer, each with input and recurrent weights and two biases; a projection if widths differ."""
    first = 4 * (d_embed * d_hidden + d_hidden**2 + 2 * d_hidden)
    rest = (n_layers - 1) * 4 * (2 * d_hidden**2 + 2 * d_hidden)
    return first + rest + (d_hidden * d_embed if d_hidden != d_embed else 0)


def test_every_preset_is_near_its_nominal_size_and_sizes_increase():
    counts = []
    for name, shape in PRESETS.items():
        with torch.device("meta"):
            model = build_lstm(LSTMConfig(size=name), VOCAB)
        n = non_embedding_params(model)
        assert abs(n / nominal(name) - 1) <= 0.35, (name, n)
        assert n == expected_n(*shape)
        counts.append(n)
    assert counts == sorted(counts)


@pytest.mark.parametrize("config", [LSTMConfig(size="1M"), LSTMConfig(size="3M"),
                                    LSTMConfig(size="custom", n_layers=1, d_hidden=96, d_embed=32)])
def test_real_build_counts_what_the_formula_says(config):
    model = build_lstm(config, VOCAB)
    assert non_embedding_params(model) == expected_n(*config.shape)
    assert total_params(model) == non_embedding_params(model) + VOCAB * config.shape.d_embed


def test_output_layer_shares_the_embedding_storage():
    model = build_lstm(LSTMConfig(size="custom", n_layers=2, d_hidden=48, d_embed=16), VOCAB)
    assert model.head.weight is model.embed.weight
    assert model.head.weight.data_ptr() == model.embed.weight.data_ptr()
    assert "head.weight" not in dict(model.named_parameters())


def test_logits_have_one_row_per_position_and_ignore_future_tokens():
    torch.manual_seed(0)
    model = build_lstm(LSTMConfig(size="custom", n_layers=2, d_hidden=32, d_embed=16), VOCAB).eval()
    input_ids = torch.randint(0, VOCAB, (3, 12))
    changed = input_ids.clone()
    changed[:, 8] = (changed[:, 8] + 1) % VOCAB
    with torch.no_grad():
        before, after = model(input_ids), model(changed)
    assert before.shape == (3, 12, VOCAB)
    torch.testing.assert_close(before[:, :8], after[:, :8])
    assert not torch.allclose(before[:, 8:], after[:, 8:])


def test_dropout_acts_in_training_only():
    model = build_lstm(LSTMConfig(size="custom", n_layers=2, d_hidden=32, dropout=0.5), VOCAB)
    input_ids = torch.randint(0, VOCAB, (2, 8))
    assert not torch.equal(model(input_ids), model(input_ids))
    model.eval()
    assert torch.equal(model(input_ids), model(input_ids))


def test_unknown_preset_names_the_presets():
    with pytest.raises(ConfigError) as info:
        validate(LSTMConfig, {"size": "7M"})
    assert "'7M'" in str(info.value) and all(name in str(info.value) for name in PRESETS)


def test_shape_fields_need_size_custom_and_custom_needs_a_shape():
    with pytest.raises(ConfigError, match="n_layers apply only with size 'custom'"):
        validate(LSTMConfig, {"size": "1M", "n_layers": 3})
    with pytest.raises(ConfigError, match="needs n_layers and d_hidden"):
        validate(LSTMConfig, {"size": "custom"})
    assert LSTMConfig(size="custom", n_layers=1, d_hidden=40).shape == (1, 40, 40)
