import json

import numpy as np
import pytest

from scalelab.errors import ScalelabError
from scalelab.laws.fit import LawFitError, backtest, fit_law, isoflop_fit
from scalelab.laws.forms import FORMS

from .test_forms import PARAMS

# Largest relative error allowed per parameter when fitting 1%-noise points from the designs below: about 3.5
# standard deviations of the error over 30 noise draws (measured per form; e.g. chinchilla E 2.4%, A 11%, alpha
# 2.3%, B 11%, beta 2.0%; data_constrained R_D 6.5%, R_N 8.3%). Coefficients A and B trade off against E and the
# exponents, so they are the loosest.
TOLERANCE = {"E": 0.08, "A": 0.5, "B": 0.5, "alpha": 0.1, "beta": 0.1, "R_D": 0.25, "R_N": 0.35}


def design(name: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """40-60 points over three orders of magnitude; 100 for the 7-parameter law, with 1 to 64 epochs and model
    sizes on both sides of N_opt(U) so that R_D and R_N are identifiable."""
    if name == "data":
        return {"D": np.geomspace(1e6, 1e9, 40)}
    if name == "model":
        return {"N": np.geomspace(1e6, 1e9, 40)}
    if name == "chinchilla":
        N, D = np.meshgrid(np.geomspace(1e6, 1e9, 6), np.geomspace(1e7, 1e10, 10))
        return {"N": N.ravel(), "D": D.ravel()}
    n = 100 if name == "data_constrained" else 50
    U = 10 ** rng.uniform(7, 9, n)
    X = {"U": U, "D": U * 2.0 ** rng.integers(0, 7, n)}
    if name == "data_constrained":
        X["N"] = 10 ** rng.uniform(6, 9, n)
    return X


def synthetic(name: str, seed: int = 0, noise: float = 0.01) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    X = design(name, rng)
    loss = FORMS[name].predict(PARAMS[name], X)
    return X, loss * np.exp(rng.normal(0.0, noise, loss.shape))


@pytest.mark.parametrize("name", sorted(FORMS))
def test_recovers_known_parameters_from_noisy_points(name):
    X, loss = synthetic(name, seed=1)
    fit = fit_law(name, X, loss, bootstrap=0)
    for param, true in PARAMS[name].items():
        assert fit.params[param] == pytest.approx(true, rel=TOLERANCE[param]), param
    assert fit.rmse_log < 0.015
    assert fit.r2 > 0.99


@pytest.mark.parametrize("name", sorted(FORMS))
def test_recovers_parameters_exactly_without_noise(name):
    X, loss = synthetic(name, noise=0.0)
    fit = fit_law(name, X, loss, bootstrap=0)
    assert fit.params == pytest.approx(PARAMS[name], rel=1e-6)
    assert fit.objective < 1e-12


def test_default_grid_finds_the_optimum_of_the_full_grid():
    X, loss = synthetic("data", seed=2)
    default = fit_law("data", X, loss, bootstrap=0)
    full = fit_law("data", X, loss, bootstrap=0, grid="full")
    assert default.objective == pytest.approx(full.objective, rel=1e-6)
    assert default.params == pytest.approx(full.params, rel=1e-4)


def test_bootstrap_intervals_cover_the_truth_at_about_the_nominal_rate():
    draws, covered = 40, {name: 0 for name in PARAMS["data"]}
    for seed in range(draws):
        X, loss = synthetic("data", seed=seed)
        fit = fit_law("data", X, loss, bootstrap=30, level=0.9, seed=seed)
        for name, (low, high) in fit.intervals.items():
            covered[name] += low <= PARAMS["data"][name] <= high
    for name, count in covered.items():
        assert 0.7 <= count / draws <= 1.0, (name, count)


def test_intervals_and_prediction_bands_come_from_the_bootstrap_draws():
    X, loss = synthetic("chinchilla", seed=3)
    fit = fit_law("chinchilla", X, loss, bootstrap=40, level=0.8)
    assert fit.samples.shape == (40, 5)
    for i, name in enumerate(FORMS["chinchilla"].params):
        low, high = fit.intervals[name]
        assert low < fit.params[name] < high
        assert (low, high) == pytest.approx(tuple(np.quantile(fit.samples[:, i], [0.1, 0.9])))
    at = {"N": np.array([1e9, 1e10]), "D": np.array([1e10, 1e11])}
    low, high = fit.predict_interval(at)
    assert np.all(low < fit.predict(at)) and np.all(fit.predict(at) < high)
    narrow_low, narrow_high = fit.predict_interval(at, level=0.5)
    assert np.all(high - low > narrow_high - narrow_low)
    assert (high - low)[1] > (high - low)[0]  # further out, less certain


def test_a_fit_without_bootstrap_has_no_intervals():
    X, loss = synthetic("data")
    fit = fit_law("data", X, loss, bootstrap=0)
    assert fit.intervals == {} and fit.samples.shape == (0, 3)
    with pytest.raises(LawFitError, match="bootstrap > 0"):
        fit.predict_interval({"D": 1e10})


def test_fit_is_deterministic_for_a_seed():
    X, loss = synthetic("data_constrained_D", seed=4)
    first = fit_law("data_constrained_D", X, loss, bootstrap=10, seed=7)
    again = fit_law("data_constrained_D", X, loss, bootstrap=10, seed=7)
    other = fit_law("data_constrained_D", X, loss, bootstrap=10, seed=8)
    assert first.params == again.params
    np.testing.assert_array_equal(first.samples, again.samples)
    assert not np.array_equal(first.samples, other.samples)
    assert first.params == other.params


def test_to_dict_is_json_ready_and_unit_is_a_label():
    X, loss = synthetic("data", seed=5)
    fit = fit_law("data", X, loss, unit="bits_per_byte", bootstrap=5)
    record = json.loads(json.dumps(fit.to_dict()))
    assert record["unit"] == "bits_per_byte" and record["n_points"] == 40 and record["n_bootstrap"] == 5
    assert set(record["params"]) == set(record["intervals"]) == {"E", "B", "beta"}
    assert {"objective", "rmse_log", "r2", "level", "huber_delta"} <= set(record)
    assert record["ranges"]["D"] == [1e6, pytest.approx(1e9)]
    assert fit_law("data", X, loss, bootstrap=0).params == fit.params


GOOD = synthetic("chinchilla")


@pytest.mark.parametrize(("form", "X", "loss", "match"), [
    ("data", {"D": [1e6, 1e7]}, [3.0, 2.5], "2 point.*needs at least 4"),
    ("data", {"D": np.geomspace(1e6, 1e9, 6)}, [3.0, 2.8, -2.6, 2.5, 2.4, 2.3], r"loss must be positive.*index 2"),
    ("data", {"D": np.geomspace(1e6, 1e9, 6)}, [3.0, 2.8, np.nan, 2.5, 2.4, 2.3], "loss is not finite.*index 2"),
    ("data", {"D": np.full(6, 1e7)}, np.linspace(3, 2, 6), "D takes 1 distinct value"),
    ("chinchilla", {"N": np.full(60, 1e8), "D": GOOD[0]["D"]}, GOOD[1], "N takes 1 distinct.*fit 'data'"),
    ("chinchilla", {"N": GOOD[0]["N"]}, GOOD[1], "input D is missing"),
    ("chinchilla", {"N": GOOD[0]["N"][:-1], "D": GOOD[0]["D"]}, GOOD[1], r"N has shape \(59,\)"),
    ("data", {"D": np.r_[0.0, np.geomspace(1e6, 1e9, 5)]}, np.linspace(3, 2, 6), "D must be positive"),
    ("data_constrained", {"N": np.full(8, 1e8), "D": np.geomspace(1e8, 1e9, 8), "U": np.full(8, 1e8)},
     np.linspace(3, 2, 8), "fit 'data_constrained_D'"),
    ("data_constrained_D", {"D": np.geomspace(1e8, 1e9, 6), "U": np.geomspace(1e8, 1e9, 6)}, np.linspace(3, 2, 6),
     "no point repeats data"),
    ("kaplan", {"D": [1.0]}, [1.0], "unknown law form 'kaplan'"),
])
def test_bad_inputs_fail_naming_the_problem(form, X, loss, match):
    with pytest.raises(LawFitError, match=match) as caught:
        fit_law(form, X, loss, bootstrap=0)
    assert isinstance(caught.value, ScalelabError)


def test_every_problem_is_reported_at_once():
    with pytest.raises(LawFitError) as caught:
        fit_law("data", {"D": [1e6, np.inf]}, [-1.0, 2.0], bootstrap=0)
    message = str(caught.value)
    assert "D is not finite" in message and "loss must be positive" in message and "needs at least 4" in message


@pytest.mark.parametrize(("settings", "match"), [
    ({"unit": "bits"}, "unit must be one of nats, bits_per_byte"),
    ({"huber_delta": 0.0}, "huber_delta must be positive"),
    ({"bootstrap": -1}, "bootstrap must be a count"),
    ({"level": 1.0}, "level must lie strictly between 0 and 1"),
    ({"grid": "coarse"}, "grid must be one of default, full"),
])
def test_bad_settings_fail_naming_the_setting(settings, match):
    X, loss = synthetic("data")
    with pytest.raises(LawFitError, match=match):
        fit_law("data", X, loss, **settings)


def test_backtest_on_law_generated_points_has_small_errors():
    X, loss = synthetic("data", seed=6, noise=0.005)
    result = backtest("data", X, loss, by="D", holdout=0.25)
    assert result.fitted_on == 30 and len(result.held_out) == 10
    np.testing.assert_array_equal(result.held_out, np.arange(30, 40))  # the largest D
    np.testing.assert_array_equal(result.actual, loss[30:])
    assert result.mean_abs_rel_error < 0.02
    assert result.max_abs_rel_error == pytest.approx(result.abs_rel_error.max())
    assert json.loads(json.dumps(result.to_dict()))["held_out"] == list(range(30, 40))


def test_backtest_flags_a_curve_that_keeps_falling_below_the_apparent_floor():
    D = np.geomspace(1e6, 1e9, 40)
    p = PARAMS["data"]
    bend = 1e8
    loss = p["E"] + p["B"] * D ** -p["beta"] - 0.2 * np.log(np.maximum(D / bend, 1.0))
    result = backtest("data", {"D": D}, loss, by="D", holdout=0.25)
    assert result.mean_abs_rel_error > 0.05


def test_backtest_holdout_is_a_count_or_a_fraction_of_distinct_values():
    N, D = np.meshgrid(np.geomspace(1e6, 1e9, 6), np.geomspace(1e7, 1e10, 10))
    X = {"N": N.ravel(), "D": D.ravel()}
    loss = FORMS["chinchilla"].predict(PARAMS["chinchilla"], X)
    assert len(backtest("chinchilla", X, loss, by="N", holdout=1).held_out) == 10
    assert len(backtest("chinchilla", X, loss, by="D", holdout=0.01).held_out) == 6  # at least one value
    for holdout, match in ((10, "hold out 10 of the 10 distinct values"), (1.5, "strictly between 0 and 1"),
                           (True, "a count or a fraction")):
        with pytest.raises(LawFitError, match=match):
            backtest("chinchilla", X, loss, by="D", holdout=holdout)
    with pytest.raises(LawFitError, match="cannot backtest by 'U'"):
        backtest("chinchilla", X, loss, by="U")


def isoflop_runs(noise: float = 0.002, flops_jitter: float = 0.0):
    """Five IsoFLOP slices from the chinchilla law, nine model sizes each around the compute-optimal one."""
    p = PARAMS["chinchilla"]
    a = p["beta"] / (p["alpha"] + p["beta"])
    G = (p["alpha"] * p["A"] / (p["beta"] * p["B"])) ** (1 / (p["alpha"] + p["beta"]))
    rng = np.random.default_rng(0)
    N, C = [], []
    for compute in np.geomspace(1e17, 1e21, 5):
        sizes = G * (compute / 6) ** a * np.geomspace(1 / 8, 8, 9)
        N.extend(sizes)
        C.extend([compute] * len(sizes))
    N, C = np.array(N), np.array(C)
    D = C / (6 * N) * np.exp(rng.normal(0, flops_jitter, len(N)))
    loss = FORMS["chinchilla"].predict(p, {"N": N, "D": D}) * np.exp(rng.normal(0, noise, len(N)))
    return N, D, loss, C, a


def test_isoflop_fit_recovers_the_compute_optimal_exponents():
    N, D, loss, C, a = isoflop_runs(flops_jitter=0.02)  # 6ND within a few % of the slice budget
    result = isoflop_fit(N, D, loss)
    assert len(result.slices) == 5 and all(s.used for s in result.slices)
    assert result.a == pytest.approx(a, abs=0.01)
    assert result.b == pytest.approx(1 - a, abs=0.01)
    np.testing.assert_allclose(6 * result.n_opt(C[::9]) * result.d_opt(C[::9]), C[::9], rtol=0.05)
    given = isoflop_fit(N, D, loss, flops=C)
    assert given.a == pytest.approx(a, abs=0.01)
    assert json.loads(json.dumps(given.to_dict()))["a"] == given.a


def test_isoflop_fit_needs_two_usable_slices():
    N, D, loss, budget, _ = isoflop_runs()
    smallest, largest = budget == budget.min(), budget == budget.max()
    with pytest.raises(LawFitError, match="at least 2 usable slices, found 1 of 1"):
        isoflop_fit(N[smallest], D[smallest], loss[smallest])
    edge = smallest | (largest & (np.median(N[largest]) < N))  # the largest slice's minimum is outside its sizes
    with pytest.raises(LawFitError, match="outside the sampled model sizes"):
        isoflop_fit(N[edge], D[edge], loss[edge])
    with pytest.raises(LawFitError, match="loss must be finite and positive"):
        isoflop_fit(N, D, -loss)


def test_isoflop_fit_reports_the_slices_it_could_not_use():
    N, D, loss, budget, a = isoflop_runs()
    keep = (budget > budget.min()) | (np.median(N[budget == budget.min()]) < N)
    result = isoflop_fit(N[keep], D[keep], loss[keep])
    assert [s.used for s in result.slices] == [False, True, True, True, True]
    assert "outside the sampled model sizes" in result.slices[0].note
    assert result.a == pytest.approx(a, abs=0.01)
    assert json.loads(json.dumps(result.to_dict()))["slices"][0]["N_opt"] is None
