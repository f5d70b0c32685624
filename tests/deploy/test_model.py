import numpy as np
import pytest
import torch

from scalelab.deploy.model import load_model
from scalelab.errors import ConfigError
from scalelab.models.ngram import KneserNeyLM
from tests.deploy.conftest import FAMILIES

SEQUENCE = [0, 5, 17, 9, 33, 2, 41, 8, 12]


@pytest.mark.parametrize("family", FAMILIES)
def test_incremental_steps_equal_reading_the_whole_sequence(models, family):
    """The KV cache (Transformer), carried state (LSTM) and kept context (n-gram) give the same next-token
    log-probabilities as reading the whole sequence at once."""
    model = models[family]
    _, every = model.prefill(SEQUENCE, every_position=True)
    state, last = model.prefill(SEQUENCE[:3])
    rows = [last]
    for token in SEQUENCE[3:]:
        state, last = model.step(state, token)
        rows.append(last)
    torch.testing.assert_close(torch.stack(rows), every[2:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(every.exp().sum(-1), torch.ones(len(SEQUENCE)), atol=1e-4, rtol=0)


def test_ngram_rows_are_the_estimators_logprobs(models, exported):
    _, every = models["ngram"].prefill(SEQUENCE, every_position=True)
    picked = every[np.arange(len(SEQUENCE) - 1), SEQUENCE[1:]].double().numpy()
    np.testing.assert_allclose(picked, KneserNeyLM.load(exported["ngram"]).logprobs(np.array(SEQUENCE)), rtol=1e-5)


@pytest.mark.parametrize("family", ["transformer", "lstm"])
def test_a_run_directory_loads_as_its_export(models, runs, family):
    from_run = load_model(runs[family])
    assert from_run.context_length == models[family].context_length
    torch.testing.assert_close(from_run.prefill(SEQUENCE)[1], models[family].prefill(SEQUENCE)[1])


@pytest.mark.parametrize("family", ["transformer", "lstm"])
def test_int8_stays_close_to_fp32(exported, models, family):
    quantized = load_model(exported[family], quantize="int8")
    assert any("quantized" in type(module).__module__ for module in quantized.module.modules())
    fp32, int8 = models[family].prefill(SEQUENCE)[1], quantized.prefill(SEQUENCE)[1]
    assert (fp32.exp() - int8.exp()).abs().sum() < 0.1  # total variation between the two distributions


def test_loading_refuses_what_it_cannot_serve(exported, tmp_path):
    with pytest.raises(ConfigError, match="neural models"):
        load_model(exported["ngram"], quantize="int8")
    with pytest.raises(ConfigError, match="neither an exported model"):
        load_model(tmp_path)
    with pytest.raises(ConfigError, match="not a directory"):
        load_model(tmp_path / "missing")
