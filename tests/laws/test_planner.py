import json
import math

import numpy as np
import pytest

from scalelab.laws import planner
from scalelab.laws.fit import Fit
from scalelab.laws.forms import FORMS
from scalelab.laws.planner import PlannerError

DATA = {"E": 1.5, "B": 400.0, "beta": 0.3}
HOFFMANN = {"E": 1.69, "A": 406.4, "alpha": 0.34, "B": 410.7, "beta": 0.28}
# Muennighoff et al. (2023)'s published fit, in nats.
MUENNIGHOFF = {"E": 1.87, "A": 521.0, "alpha": 0.353, "B": 1488.0, "beta": 0.353, "R_D": 15.4, "R_N": 5.3}


def make_fit(form, params, *, noise=0.05, draws=400, unit="nats", seed=0):
    """A fit with known parameters; its draws scatter each parameter by a factor exp(N(0, noise))."""
    point = np.array([params[name] for name in FORMS[form].params])
    samples = point * np.exp(np.random.default_rng(seed).normal(0.0, noise, (draws, len(point))))
    return Fit(form=form, params=dict(params), intervals={}, samples=samples, X={}, loss=np.empty(0), unit=unit,
               level=0.9, huber_delta=1e-3, objective=0.0, rmse_log=0.0, r2=1.0)


def width(answer):
    return answer.high - answer.low


def brackets(answer):
    return answer.low <= answer.value <= answer.high


def test_formatting():
    assert [planner.format_tokens(n) for n in (25_000, 4e7, 1.3e9, 2.1e12, 999_600, 640, 0.5)] == \
        ["25k", "40M", "1.3B", "2.1T", "1M", "640", "0.5"]
    assert [planner.format_bytes(n) for n in (640, 1.2e13, 5e9)] == ["640 B", "12 TB", "5 GB"]
    assert planner.format_flops(5.76e23) == "5.8e23 FLOPs"


def test_data_for_loss_closed_form():
    answer = planner.data_for_loss(make_fit("data", DATA, unit="bits_per_byte"), 2.0, label="the Transformer")
    assert answer.value == pytest.approx((400 / 0.5) ** (1 / 0.3), rel=1e-12)
    assert brackets(answer) and answer.low < answer.high
    assert answer.sentence() == ("to reach 2 bits per byte the Transformer needs about 4.8B tokens "
                                 f"({planner.format_tokens(answer.low)}-{planner.format_tokens(answer.high)})")


def test_intervals_widen_with_noisier_draws():
    for question in (lambda f: planner.data_for_loss(f, 2.0), lambda f: planner.doubling_gain(f, 1e8),
                     lambda f: planner.saturation(f)):
        exact, quiet, noisy = (question(make_fit("data", DATA, noise=s)) for s in (0.0, 0.01, 0.05))
        assert exact.low == exact.value == exact.high
        assert brackets(quiet) and brackets(noisy)
        assert 0 < width(quiet) < width(noisy)


def test_target_below_the_floor_never_reached():
    fit = make_fit("data", DATA)
    answer = planner.data_for_loss(fit, 1.4)
    assert math.isinf(answer.value) and math.isinf(answer.high)
    assert answer.sentence().startswith("the model never reaches 1.4 nats: its floor is 1.5 nats (")
    # Just above the floor, some draws' floors lie above the target: the interval is open above.
    near = planner.data_for_loss(fit, 1.52)
    assert math.isfinite(near.value) and math.isinf(near.high)
    assert near.sentence().endswith(" or more)")
    assert json.loads(json.dumps(answer.to_dict()))["value"] == math.inf


def test_chinchilla_answers_at_a_model_size():
    fit, N = make_fit("chinchilla", HOFFMANN), 1e9
    floor = 1.69 + 406.4 * N ** -0.34
    answer = planner.data_for_loss(fit, 2.2, N=N)
    assert answer.value == pytest.approx((410.7 / (2.2 - floor)) ** (1 / 0.28), rel=1e-12)
    assert fit.predict({"N": N, "D": answer.value}) == pytest.approx(2.2, rel=1e-12)
    assert "at 1B parameters" in answer.sentence()


def test_doubling_gain():
    fit, D = make_fit("data", DATA), 1e8
    absolute = planner.doubling_gain(fit, D, relative=False)
    assert absolute.value == pytest.approx(400 * D ** -0.3 * (1 - 2 ** -0.3), rel=1e-12)
    relative = planner.doubling_gain(fit, D)
    assert relative.value == pytest.approx(absolute.value / fit.predict({"D": D}), rel=1e-12)
    assert brackets(absolute) and brackets(relative)
    assert "from 100M to 200M tokens lowers the loss by about 9.7%" in relative.sentence()


def test_saturation():
    fit, k = make_fit("data", DATA), 1 - 2 ** -0.3
    absolute = planner.saturation(fit, 0.001, relative=False)
    assert absolute.value == pytest.approx((k * 400 / 0.001) ** (1 / 0.3), rel=1e-12)
    relative = planner.saturation(fit, 0.01)
    D = relative.value
    gain = fit.predict({"D": D}) - fit.predict({"D": 2 * D})
    assert gain == pytest.approx(0.01 * fit.predict({"D": D}), rel=1e-9)
    assert brackets(relative) and "one more doubling of the data lowers the loss by less than 1%" in \
        relative.sentence()
    # A doubling never gains more than k = 1 - 2^-beta of the loss, so a larger epsilon is met from the start.
    start = planner.saturation(fit, 0.2)
    assert start.value == 0 and "at any size" in start.sentence()


def test_compute_optimal_hoffmann():
    C = 5.76e23
    plan = planner.compute_optimal(make_fit("chinchilla", HOFFMANN), C)
    alpha, beta, A, B = 0.34, 0.28, 406.4, 410.7
    G = (alpha * A / (beta * B)) ** (1 / (alpha + beta))
    assert plan.a.value == pytest.approx(beta / (alpha + beta)) and plan.a.value == pytest.approx(0.45, abs=0.005)
    assert plan.b.value == pytest.approx(alpha / (alpha + beta)) and plan.b.value == pytest.approx(0.55, abs=0.005)
    assert plan.N.value == pytest.approx(G * (C / 6) ** plan.a.value, rel=1e-12)
    assert 1e10 <= plan.N.value < 1e11
    assert 6 * plan.N.value * plan.D.value == pytest.approx(C, rel=1e-12)
    assert plan.tokens_per_param.value == pytest.approx(plan.D.value / plan.N.value)
    # The optimum: moving along C = 6 N D either way costs loss.
    N = plan.N.value * np.array([0.8, 1.0, 1.25])
    loss = 1.69 + A * N ** -alpha + B * (C / (6 * N)) ** -beta
    assert loss[1] < loss[0] and loss[1] < loss[2]
    assert all(brackets(a) for a in (plan.N, plan.D, plan.a, plan.b, plan.tokens_per_param))
    assert plan.sentence().startswith("with 5.8e23 FLOPs, the model is compute-optimal at about 3")
    assert set(plan.to_dict()) == {"C", "N", "D", "a", "b", "tokens_per_param", "sentence"}


def test_effective_data_multiplier():
    base = make_fit("data", DATA)
    same = planner.effective_data_multiplier(base, base, 1e9)
    assert same.value == pytest.approx(1.0) and same.low == pytest.approx(1.0) and same.high == pytest.approx(1.0)
    better = make_fit("data", {"E": 1.5, "B": 300.0, "beta": 0.3}, seed=1)
    answer = planner.effective_data_multiplier(base, better, 1e9)
    assert answer.value == pytest.approx((400 / 300) ** (1 / 0.3), rel=1e-12)
    assert answer.value > 1 and brackets(answer)
    assert answer.sentence().startswith("at 1B tokens, one filtered token is worth about 2.6 raw tokens (")
    # Fits bootstrapped apart, with different numbers of draws, still give an interval.
    apart = planner.effective_data_multiplier(base, make_fit("data", {**DATA, "B": 300.0}, draws=150, seed=2), 1e9)
    assert apart.value == answer.value and brackets(apart)
    below = planner.effective_data_multiplier(base, make_fit("data", {**DATA, "E": 1.3}), 1e12)
    assert math.isinf(below.value) and "no amount of raw data matches it" in below.sentence()


def test_data_constrained_fresh_data_matches_the_form():
    # At N = 10B the model has excess parameters below ~200B unique tokens: the answers there come from bisection.
    fit, N = make_fit("data_constrained", MUENNIGHOFF), 1e10
    target = 2.6
    tokens = planner.data_for_loss(fit, target, N=N).value
    assert tokens < 1e11
    assert fit.predict({"N": N, "D": tokens, "U": tokens}) == pytest.approx(target, rel=1e-9)
    D = planner.saturation(fit, 0.05, N=N).value
    before, after = (fit.predict({"N": N, "D": d, "U": d}) for d in (D, 2 * D))
    assert before - after == pytest.approx(0.05 * before, rel=1e-9)
    gain = planner.doubling_gain(fit, 1e9, N=N)
    before, after = (fit.predict({"N": N, "D": d, "U": d}) for d in (1e9, 2e9))
    assert gain.value == pytest.approx((before - after) / before, rel=1e-12)
    fresh = make_fit("data_constrained_D", {k: MUENNIGHOFF[k] for k in ("E", "B", "beta", "R_D")})
    assert planner.data_for_loss(fresh, 2.0).value == pytest.approx((1488 / 0.13) ** (1 / 0.353), rel=1e-12)


@pytest.mark.parametrize(("form", "N"), [("data_constrained", 1e9), ("data_constrained_D", None)])
def test_epochs_worth_against_a_direct_scan(form, N):
    params = {k: MUENNIGHOFF[k] for k in FORMS[form].params}
    fit, U, epsilon = make_fit(form, params), 1e9, 0.01
    answer = planner.epochs_worth(fit, U, N=N, epsilon=epsilon)

    def loss(epochs):
        X = {"D": epochs * U, "U": np.full_like(epochs, U)} | ({"N": N} if N else {})
        return fit.predict(X)

    epochs = np.arange(1.0, 60.0, 0.001)
    gain = (loss(epochs) - loss(epochs + 1)) / loss(epochs)
    assert answer.value == pytest.approx(epochs[np.argmax(gain < epsilon)], abs=0.002)
    worth = 1 + 15.4 * (1 - math.exp(-(answer.value - 1) / 15.4))
    assert answer.fresh_equivalent.value == pytest.approx(worth, rel=1e-12)
    assert brackets(answer) and brackets(answer.fresh_equivalent)
    assert f"epochs are worth ~{planner._plain(worth)}x fresh tokens, so repeated tokens keep" in answer.sentence()
    assert "fresh_equivalent" in answer.to_dict()


def test_plan_cost():
    cost = planner.plan_cost(2e9, N=1e8, bytes_per_token=4.0, yield_fraction=0.25, peak_flops=1e15,
                             utilization=0.5, epochs=2)
    assert cost.corpus_bytes_to_collect == 2e9 * 4.0 / 0.25
    assert cost.stored_token_bytes == 4e9
    assert cost.train_flops == 6 * 1e8 * 2e9 * 2
    assert cost.accelerator_hours == pytest.approx(cost.train_flops / 5e14 / 3600)
    assert cost.sentence() == ("2B tokens means collecting about 32 GB of raw text and storing 4 GB of tokens; "
                               "training on them for 2 epochs takes 2.4e18 FLOPs, about 1.3 accelerator-hours")
    custom = planner.plan_cost(2e9, flops_per_token=7e8, bytes_per_token=4.0, throughput_flops=2e14)
    assert custom.train_flops == 7e8 * 2e9 and custom.accelerator_hours == pytest.approx(1.4e18 / 2e14 / 3600)
    data_only = planner.plan_cost(2e9, bytes_per_token=4.0)
    assert data_only.train_flops is None and data_only.accelerator_hours is None
    assert planner.plan_cost(2e9, N=1e8, bytes_per_token=4.0).accelerator_hours is None


@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({"peak_flops": 1e15}, "accelerator-hours need the FLOPs"),
    ({"N": 1e8, "flops_per_token": 6e8}, "N, flops_per_token: give one"),
    ({"N": 1e8, "peak_flops": 1e15, "throughput_flops": 4e14}, "throughput_flops, peak_flops: give one"),
    ({"yield_fraction": 1.5}, "yield_fraction=1.5"),
    ({"D": 0, "epochs": -1}, "D=0, epochs=-1: must be a positive number"),
])
def test_plan_cost_errors(kwargs, fragment):
    with pytest.raises(PlannerError, match=None) as info:
        planner.plan_cost(**{"D": 1e9, "bytes_per_token": 4.0, **kwargs})
    assert fragment in str(info.value)


@pytest.mark.parametrize(("ask", "fragment"), [
    (lambda: planner.data_for_loss(make_fit("model", {"E": 1.7, "A": 400.0, "alpha": 0.3}), 2.0), "L(N) says"),
    (lambda: planner.data_for_loss(make_fit("chinchilla", HOFFMANN), 2.0), "pass N"),
    (lambda: planner.saturation(make_fit("data", DATA), N=1e9), "leave N out"),
    (lambda: planner.compute_optimal(make_fit("data", DATA), 1e20), "needs a chinchilla fit"),
    (lambda: planner.epochs_worth(make_fit("chinchilla", HOFFMANN), 1e9, N=1e9), "needs a data-constrained fit"),
    (lambda: planner.effective_data_multiplier(make_fit("data", DATA), make_fit("chinchilla", HOFFMANN), 1e9),
     "other: effective_data_multiplier needs data laws"),
    (lambda: planner.effective_data_multiplier(make_fit("data", DATA), make_fit("data", DATA, unit="bits_per_byte"),
                                               1e9), "its loss is in bits_per_byte"),
    (lambda: planner.data_for_loss(make_fit("data", DATA), -1.0), "target=-1.0"),
    (lambda: planner.saturation(make_fit("data", DATA), 1.5), "a relative gain is below 1"),
])
def test_questions_the_fit_cannot_answer(ask, fragment):
    with pytest.raises(PlannerError) as info:
        ask()
    assert fragment in str(info.value)


def test_a_fit_without_draws_answers_without_an_interval():
    answer = planner.data_for_loss(make_fit("data", DATA, draws=0), 2.0)
    assert math.isnan(answer.low) and answer.sentence().endswith("needs about 4.8B tokens")
