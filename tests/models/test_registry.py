from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from scalelab.errors import ConfigError
from scalelab.models import lstm, transformer
from scalelab.models.accounting import flops_per_token, logits, non_embedding_params, total_params
from scalelab.models.lstm import LSTMConfig
from scalelab.models.ngram import NgramConfig
from scalelab.models.registry import FAMILIES, family, presets
from scalelab.models.transformer import TransformerConfig

VOCAB = 64

# d_model 64, 2 layers, 1 head, d_ff 128. Per layer: attention 4 * 64^2 = 16384, SwiGLU 3 * 64 * 128 = 24576,
# two norms 128; plus a final norm 64: N = 2 * 41088 + 64 = 82240.
SMALL_TRANSFORMER = TransformerConfig(size="custom", d_model=64, n_layers=2, n_heads=1, d_ff=128)
SMALL_TRANSFORMER_N = 82_240
# One layer, embedding 16 -> hidden 32: 4 gates * (16 * 32 + 32 * 32 + 2 * 32) = 6400, projection 32 * 16 = 512.
SMALL_LSTM = LSTMConfig(size="custom", n_layers=1, d_hidden=32, d_embed=16)
SMALL_LSTM_N = 6_912


def build(config, vocab_size):
    return family(config.FAMILY).build(config, vocab_size)


def planned_flops(config, context_length, vocab_size=VOCAB):
    return family(config.FAMILY).flops_per_token(config.model_copy(update={"context_length": context_length}),
                                                 vocab_size)


def test_presets_list_each_family_by_its_shape_fields():
    assert presets("ngram") == {str(k): {"order": k} for k in range(2, 7)}
    assert presets("lstm")["1M"] == {"n_layers": 2, "d_hidden": 256, "d_embed": 256}
    assert presets("transformer")["1M"] == {"d_model": 128, "n_layers": 5, "n_heads": 2, "d_ff": 352}
    assert list(presets("lstm")) == list(lstm.PRESETS) and list(presets("transformer")) == list(transformer.PRESETS)


@pytest.mark.parametrize("name", ["ngram", "lstm", "transformer"])
def test_preset_fields_are_valid_config_fields(name):
    config = family(name).config
    for label, fields in presets(name).items():
        if name == "ngram":
            assert config(**fields).order == int(label)
        else:
            assert config(size="custom", **fields).shape == config(size=label).shape


def test_each_family_maps_to_its_config_and_builder():
    assert family("ngram").config is NgramConfig
    assert family("lstm").config is LSTMConfig and family("transformer").config is TransformerConfig
    assert isinstance(build(SMALL_LSTM, VOCAB), lstm.LSTMLanguageModel)
    assert isinstance(build(SMALL_TRANSFORMER, VOCAB), LlamaForCausalLM)


def test_every_registered_family_is_named_by_its_adapter():
    assert all(family(name).name == name for name in FAMILIES)
    with pytest.raises(ConfigError, match="unknown model family 'rnn'; families: ngram, lstm, transformer"):
        family("rnn")


def test_non_embedding_params_by_hand():
    assert non_embedding_params(build(SMALL_TRANSFORMER, VOCAB)) == SMALL_TRANSFORMER_N
    assert total_params(build(SMALL_TRANSFORMER, VOCAB)) == SMALL_TRANSFORMER_N + VOCAB * 64
    assert non_embedding_params(build(SMALL_LSTM, VOCAB)) == SMALL_LSTM_N
    assert total_params(build(SMALL_LSTM, VOCAB)) == SMALL_LSTM_N + VOCAB * 16


def test_an_untied_output_layer_is_not_counted_in_n():
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=1, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    assert non_embedding_params(model) == SMALL_TRANSFORMER_N
    assert total_params(model) == SMALL_TRANSFORMER_N + 2 * VOCAB * 64


def test_flops_per_token_by_hand():
    # The output layer now counts (Hoffmann et al. 2022, Appendix F; issue 14): 6N + 6 n_layers n_ctx d_model +
    # 6 d_model V = 6 * 82240 + 6 * 2 * 16 * 64 + 6 * 64 * 64
    assert planned_flops(SMALL_TRANSFORMER, 16) == 493_440 + 12_288 + 24_576
    assert flops_per_token(build(SMALL_TRANSFORMER, VOCAB), 16) == 493_440 + 12_288 + 24_576
    # An LSTM has no attention term; its tied output layer is d_embed x V: 6 * 6912 + 6 * 16 * 64
    assert planned_flops(SMALL_LSTM, 16) == flops_per_token(build(SMALL_LSTM, VOCAB), 512) == 41_472 + 6_144


def test_the_output_layer_costs_several_times_6n_at_a_small_preset():
    # 0.1M (d_model 64, N = 106,816) at an 8192-token vocabulary: 6 d_model V = 3,145,728 against 6N = 640,896.
    # Leaving the output layer out understated C about sixfold.
    config = TransformerConfig(size="0.1M")
    model = family("transformer").build(config, 8192)
    output = 6 * model.get_output_embeddings().weight.numel()
    assert output == 6 * 64 * 8192 == 3_145_728 and 6 * non_embedding_params(model) == 640_896
    assert planned_flops(config, 256, 8192) - planned_flops(config, 256, 1) == 6 * 64 * 8191


def test_flops_of_the_largest_presets_need_no_memory():
    assert planned_flops(TransformerConfig(size="125M"), 1024) > 6 * 100e6
    assert planned_flops(LSTMConfig(size="125M"), 1024) > 6 * 100e6


def test_logits_is_one_call_for_both_families():
    input_ids = torch.randint(0, VOCAB, (2, 8))
    for config in (SMALL_LSTM, SMALL_TRANSFORMER):
        model = build(config, VOCAB).eval()
        out = logits(model, input_ids)
        assert isinstance(out, torch.Tensor) and out.shape == (2, 8, VOCAB)
