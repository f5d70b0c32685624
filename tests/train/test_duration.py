"""The study plan costs a run with the same duration the trainer runs: steps, training tokens and FLOPs agree for
every way of giving a duration, including partial last batches of an epoch."""

import json

import pytest

from scalelab.models.registry import family
from scalelab.study.plan import estimate_seconds
from scalelab.train.duration import duration
from scalelab.train.run import train_run
from tests.train.test_run import tiny


@pytest.mark.parametrize("given", [{"steps": 7}, {"train_tokens": 3000, "steps": None}, {"epochs": 1.5, "steps": None}])
def test_the_plan_costs_what_the_trainer_runs(prepared, tmp_path, given, monkeypatch):
    config = tiny(prepared, "transformer", tokens=1700, batch_size=5, **given)
    cost = family("transformer").cost(config, config.tokens, prepared.tokenizer.vocab_size)
    outcome = train_run(config, tmp_path / "run", show_progress=False)
    assert cost.train_tokens == outcome["tokens_seen"]
    assert cost.flops == pytest.approx(outcome["flops"])
    assert duration(config, config.tokens, config.model.context_length).steps == outcome["steps"]
    # The time estimate is the same tokens over the measured speed.
    monkeypatch.setattr("scalelab.study.plan.probe_throughput", lambda *args: 1000.0)
    evaluations = family("transformer").evaluations * 2000 / 2500.0
    assert estimate_seconds(config, prepared, cost.train_tokens) == pytest.approx(
        outcome["tokens_seen"] / 1000.0 + evaluations, rel=0.01)


def test_a_duration_in_steps_or_tokens_changes_the_plan(prepared):
    by_epochs = tiny(prepared, "lstm", steps=None)
    by_steps = tiny(prepared, "lstm", steps=3)
    by_tokens = tiny(prepared, "lstm", steps=None, train_tokens=20 * by_epochs.tokens)
    vocab = prepared.tokenizer.vocab_size
    costs = [family("lstm").cost(c, c.tokens, vocab).train_tokens for c in (by_epochs, by_steps, by_tokens)]
    assert costs[1] == 3 * 4 * 32 and costs[1] < costs[0] < costs[2]
    assert json.dumps(costs)  # plain integers
