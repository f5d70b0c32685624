"""Issue 14, items 3-6 on the analysis side: the envelope and the regions of Hestness et al. (2017), crossovers,
a bootstrap that rejects degenerate resamples, counts failed refits and resamples held-out documents, floors stated
only when identified, backtests against the reducible loss, orders kept apart and unreliable runs left out."""

import json
import re

import numpy as np
import pandas as pd
import pytest

from scalelab.laws import fit as fit_module
from scalelab.laws import planner
from scalelab.laws.analysis import analyse
from scalelab.laws.fit import Documents, backtest, fit_law, floor

D = np.geomspace(1e4, 1e7, 10)


def curve(E, B, beta, D=D, noise=0.003, seed=0):
    rng = np.random.default_rng(seed)
    return (E + B * D ** -beta) * np.exp(rng.normal(0, noise, len(D)))


def frame(family, loss, D=D, **columns):
    return pd.DataFrame({"family": family, "variant": "raw", "D": D, "U": D, "loss": loss, **columns})


def test_the_bootstrap_rejects_degenerate_resamples():
    """Five data sizes for a three-parameter law: a resample with fewer than four distinct D is redrawn, counted."""
    X = {"D": D[:5]}
    fit = fit_law("data", X, curve(1.0, 30, 0.3, D[:5]), bootstrap=60, seed=1)
    assert fit.bootstrap_rejected > 0 and fit.bootstrap_failed == 0 and len(fit.samples) == 60
    assert fit.to_dict()["bootstrap_rejected"] == fit.bootstrap_rejected and fit.resampling == "points"


def test_failed_refits_are_counted_and_dropped_not_replaced(monkeypatch):
    X, loss = {"D": D}, curve(1.0, 30, 0.3)
    real = fit_module._best
    calls = {"n": 0}

    def failing(objective, starts, weights):
        calls["n"] += 1
        if calls["n"] > 1 and calls["n"] % 2:  # the full-data fit succeeds; every other refit fails
            return starts[0], np.inf
        return real(objective, starts, weights)

    monkeypatch.setattr(fit_module, "_best", failing)
    fit = fit_law("data", X, loss, bootstrap=20)
    assert fit.bootstrap_failed == 10 and len(fit.samples) == 10
    theta = np.array([fit.params[name] for name in ("E", "B", "beta")])
    assert not any(np.allclose(row, theta) for row in fit.samples)  # no full-data optimum posing as a refit


def documents(n_docs=40, seed=0, E=1.0, B=30.0, beta=0.3):
    """Per-document NLL: each document has its own difficulty, shared by every point (the common held-out set)."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(200, 2000, n_docs).astype(float)
    difficulty = np.exp(rng.normal(0, 0.3, n_docs))
    loss = E + B * D ** -beta
    nll = loss[:, None] * difficulty[None, :] * tokens[None, :]
    return Documents(nll, np.tile(tokens, (len(D), 1))), nll.sum(1) / tokens.sum()


def test_document_level_resampling_is_used_and_stated():
    docs, loss = documents()
    fit = fit_law("data", {"D": D}, loss, bootstrap=40, documents=docs)
    assert fit.resampling == "documents" and "documents" in fit.to_dict()["resampling_text"]
    # The held-out set moves every point together: E and B move, the shape (beta) stays.
    assert fit.intervals["E"][1] - fit.intervals["E"][0] > 1e-3
    assert fit.intervals["beta"][0] == pytest.approx(0.3, abs=0.02)
    seeds = Documents(np.vstack([docs.nll, docs.nll * 1.01]), np.vstack([docs.size, docs.size]))
    twice = fit_law("data", {"D": np.concatenate([D, D])}, np.concatenate([loss, loss * 1.01]), bootstrap=10,
                    documents=seeds)
    assert twice.resampling == "documents and seeds"


def test_analysis_resamples_documents_when_runs_have_them():
    docs, loss = documents()
    per_run = [{"index": list(range(docs.nll.shape[1])), "nll": list(row), "tokens": list(size),
                "bytes": list(size * 3)}
               for row, size in zip(docs.nll, docs.size, strict=True)]
    with_docs = frame("transformer", loss).assign(documents=per_run)
    (group,) = analyse(with_docs, unit="nats", bootstrap=20).groups
    assert group.fit.resampling == "documents" and group.to_dict()["fit"]["resampling"] == "documents"
    (plain,) = analyse(frame("transformer", loss), unit="nats", bootstrap=20).groups
    assert plain.fit.resampling == "points"


def test_an_unidentified_floor_is_stated_as_a_bound_never_as_a_value():
    result = analyse(frame("transformer", curve(0.0 + 1e-9, 30, 0.3)), unit="nats", bootstrap=40)
    (group,) = result.groups
    assert not group.floor.identified
    assert any(re.search(r"no floor is visible in the measured data \(E < [\d.]+ nats at 90%\)", s)
               for s in result.sentences), result.sentences
    text = json.dumps(result.to_dict()["sentences"]) + json.dumps([g["findings"] for g in result.to_dict()["groups"]])
    assert not re.search(r"\de-\d", text), text
    # Nor as a bound too fine for the data to resolve, such as 0.00000000001: at least 1% of the best loss.
    (bound,) = {float(m) for s in result.sentences for m in re.findall(r"E < ([\d.]+) nats", s)}
    assert bound == pytest.approx(group.floor.bound, rel=1e-2) and bound >= 0.01 * group.fit.loss.min() * 0.99


def test_a_visible_floor_is_stated_with_its_interval():
    result = analyse(frame("transformer", curve(2.0, 10, 0.5)), unit="nats", bootstrap=40)
    assert result.groups[0].floor.visible
    assert any(re.search(r"an irreducible floor is visible: E = [\d.]+ nats \([\d.]+-[\d.]+ at 90%\)", s)
               for s in result.sentences), result.sentences


def test_every_stated_number_has_its_interval():
    """No finding states an estimate without an interval; with no bootstrap, nothing is stated but that."""
    result = analyse(frame("transformer", curve(1.0, 30, 0.3)), unit="nats", bootstrap=0)
    assert result.sentences[0].startswith("no findings are stated")
    result = analyse(frame("transformer", curve(1.0, 30, 0.3)), unit="nats", bootstrap=40)
    for sentence in result.sentences:
        if "needs about" in sentence or "lowers the loss by about" in sentence or "beyond about" in sentence:
            assert re.search(r"\([^()]*\d[^()]*-[^()]*\d[^()]*\)", sentence), sentence
        assert "or more)" not in sentence  # an unbounded interval is not stated


def test_backtests_report_the_reducible_error_and_the_coverage():
    loss = curve(1.0, 30, 0.3)
    result = backtest("data", {"D": D}, loss, bootstrap=40)
    reducible = np.abs(result.predicted - result.actual) / (result.actual - result.E)
    assert result.reducible_abs_rel_error == pytest.approx(reducible)
    assert result.mean_reducible_abs_rel_error > result.mean_abs_rel_error  # L - E is the smaller denominator
    assert 0 <= result.coverage <= 1 and len(result.inside) == len(result.actual)
    record = result.to_dict()
    assert {"mean_reducible_abs_rel_error", "coverage", "inside_band", "band_low"} <= set(record)
    assert np.isnan(backtest("data", {"D": D}, loss).coverage)  # no draws, no band


def test_orders_of_a_family_without_n_are_separate_curves():
    orders = pd.concat([frame("ngram", curve(1.0, 10, 0.2, seed=1), size="2"),
                        frame("ngram", curve(0.5, 40, 0.3, seed=2), size="3")])
    result = analyse(orders, unit="nats", bootstrap=10)
    assert [(g.name, g.size, g.points) for g in result.groups] == [("ngram 2", "2", 10), ("ngram 3", "3", 10)]
    assert result.groups[1].fit.params["beta"] == pytest.approx(0.3, rel=0.1)
    assert result.to_dict()["groups"][0]["name"] == "ngram 2"


def test_unreliable_runs_are_left_out_and_said_so():
    reliable = [False, False] + [True] * 7 + [None]  # missing counts as reliable
    points = frame("transformer", curve(1.0, 30, 0.3), reliable=reliable)
    result = analyse(points, unit="nats", bootstrap=10)
    (group,) = result.groups
    assert group.points == 8 and group.excluded_unreliable == 2 and result.excluded_unreliable == 2
    assert group.fit.X["D"].min() == D[2]
    assert any("2 runs marked unreliable" in s and "left out" in s for s in result.sentences)
    assert analyse(points, unit="nats", bootstrap=10, include_unreliable=True).groups[0].points == 10


def test_the_envelope_takes_the_best_size_at_each_d_and_is_fitted():
    """A small model wins below the crossing of its curve with a large one's at D* = 40^(1/0.3): the envelope
    switches there, and its L(D) follows the large model beyond."""
    small = 1.5 + 20 * D ** -0.3
    large = 1.0 + 40 * D ** -0.3
    points = pd.concat([frame("transformer", small, N=1e6, size="small"),
                        frame("transformer", large, N=1e7, size="large"),
                        frame("transformer", small + 0.5, N=1e5, size="tiny")])
    result = analyse(points, unit="nats", bootstrap=20)
    assert result.groups[0].form == "chinchilla"  # the joint law stays
    (envelope,) = result.envelopes
    switch = 40 ** (1 / 0.3)
    assert envelope.best == ["small" if d < switch else "large" for d in D]
    assert envelope.loss == pytest.approx(np.minimum(small, large))
    assert set(envelope.per_size) == {"small", "large", "tiny"}
    assert envelope.per_size["large"].params["beta"] == pytest.approx(0.3, rel=0.05)
    assert envelope.fit is not None and envelope.regions is not None
    assert any("best size at each D" in s for s in result.sentences)
    json.dumps(result.to_dict())


def test_regions_find_the_small_data_points_above_the_power_law():
    loss = 1.0 + 30 * D ** -0.3
    loss[:2] = loss[:2] * 1.3  # the smallest two sizes sit well above the law (e.g. near the best-guess error)
    se = 0.002 * loss
    (group,) = analyse(frame("transformer", loss, loss_se=se), unit="nats", bootstrap=10).groups
    assert group.regions.power_law_from == D[2] and group.regions.departing == list(D[:2])
    assert group.regions.above and "small-data region" in group.regions.sentence
    assert group.regions.noise == "the recorded standard errors of the losses"


def test_a_crossover_is_recovered_with_its_interval():
    a = frame("transformer", curve(1.0, 40, 0.3, seed=3))
    b = frame("lstm", curve(1.5, 20, 0.3, seed=4))
    result = analyse(pd.concat([a, b]), unit="nats", bootstrap=60)
    (item,) = result.crossovers
    answer = item.answer
    truth = 40 ** (1 / 0.3)
    assert answer.winner == "the transformer (raw)" and answer.value == pytest.approx(truth, rel=0.25)
    assert answer.low <= truth <= answer.high and answer.bounded
    assert any("overtakes the lstm (raw) from about" in s for s in result.sentences), result.sentences


def test_no_crossover_in_or_near_the_measured_range():
    a, b = fit_law("data", {"D": D}, curve(1.0, 20, 0.3, seed=5), bootstrap=30), \
        fit_law("data", {"D": D}, curve(1.2, 40, 0.3, seed=6), bootstrap=30)
    answer = planner.crossover(a, b, D_low=D[0], D_high=D[-1], far=1000, label_a="a", label_b="b")
    assert answer.winner == "a" and answer.value == D[0] and answer.bounded
    assert "no crossover lies in or near the measured range" in answer.sentence()


def test_the_floor_verdict_needs_draws():
    assert floor(fit_law("data", {"D": D}, curve(1.0, 30, 0.3), bootstrap=0)) is None


def test_a_token_count_whose_interval_runs_past_the_horizon_is_not_stated():
    """An interval such as 220k-4e216 tokens is finite in arithmetic only: it says nothing."""
    from scalelab.laws.analysis import stated

    answer = planner.Answer(value=4e6, low=2.2e5, high=4.1e216, level=0.9, kind="count",
                            template="beyond about {value} tokens{interval} a doubling gains under 1%")
    assert stated(answer, None) is not None
    assert stated(answer, None, horizon=640e6) is None
    assert stated(planner.Answer(value=4e6, low=2.2e5, high=9e6, level=0.9, kind="count",
                                 template=answer.template), None, horizon=640e6) is not None
