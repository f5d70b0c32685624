import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from scalelab.config import validate
from scalelab.deploy.params import InvalidRequest, SamplingParams
from scalelab.deploy.sampling import Sampler, make_generator
from scalelab.errors import ConfigError

PROBS = torch.tensor([0.4, 0.3, 0.2, 0.1])
LOGPROBS = PROBS.log()


def draws(n: int, seed: int = 0, **params) -> list[int]:
    sampler = Sampler(SamplingParams(**params), vocab_size=4, generator=make_generator(seed))
    return [sampler.choose(LOGPROBS) for _ in range(n)]


def test_temperature_zero_is_greedy():
    assert set(draws(50, temperature=0.0)) == {0}


def test_temperature_one_follows_the_model():
    counts = torch.bincount(torch.tensor(draws(4000)), minlength=4) / 4000
    torch.testing.assert_close(counts, PROBS, atol=0.03, rtol=0)


def test_top_p_keeps_the_smallest_set_reaching_it():
    # 0.4 < 0.5, so the second token is needed to reach 0.5; the rest never appear, and the two keep their ratio.
    got = torch.tensor(draws(4000, top_p=0.5))
    assert set(got.tolist()) == {0, 1}
    assert abs((got == 0).float().mean().item() - 0.4 / 0.7) < 0.03
    assert set(draws(200, top_p=0.4)) == {0}


def test_seed_reproduces_and_differs():
    assert draws(30, seed=7) == draws(30, seed=7)
    assert draws(30, seed=7) != draws(30, seed=8)


def test_logit_bias_and_penalties():
    assert set(draws(50, logit_bias={3: 100.0})) == {3}
    # A token already chosen loses 2 nats of presence each time: greedy choice walks through the vocabulary.
    assert draws(3, temperature=0.0, presence_penalty=2.0) == [0, 1, 2]
    with pytest.raises(InvalidRequest, match="outside the vocabulary"):
        draws(1, logit_bias={4: 1.0})


@given(st.floats(0.05, 2.0), st.floats(0.05, 1.0), st.integers(0, 2**31))
def test_any_valid_parameters_pick_a_token_in_the_nucleus(temperature, top_p, seed):
    token = draws(1, seed=seed, temperature=temperature, top_p=top_p)[0]
    scaled = torch.softmax(LOGPROBS / temperature, -1)
    before = scaled[:token].sum().item()  # PROBS is sorted, so the tokens before `token` are the likelier ones
    assert before < top_p + 1e-6 and math.isfinite(before)


@pytest.mark.parametrize("field, value, fragment", [
    ("temperature", 2.5, "temperature"), ("top_p", 0.0, "top_p"), ("max_tokens", -1, "max_tokens"),
    ("logprobs", 6, "logprobs"), ("stop", ["a", "b", "c", "d", "e"], "stop"), ("stop", [""], "empty"),
    ("logit_bias", {1: 101.0}, "logit_bias"),
    ("seed", 2**64, "seed"), ("seed", -1, "seed"),
    # A JSON true is no number: lax validation would read it as 1.
    ("max_tokens", True, "max_tokens"), ("seed", True, "seed"), ("logprobs", True, "logprobs"),
    ("temperature", True, "temperature"), ("logit_bias", {1: True}, "logit_bias"), ("echo", "yes", "echo"),
    ("stop", ["a\ud800"], "lone surrogate"),
])
def test_out_of_range_parameters_are_refused(field, value, fragment):
    with pytest.raises(ConfigError, match=fragment):
        validate(SamplingParams, {field: value})


def test_every_seed_torch_takes_is_accepted():
    for seed in (0, 2**63, 2**64 - 1):
        draws(1, seed=validate(SamplingParams, {"seed": seed}).seed)
