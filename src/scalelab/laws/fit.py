"""Fitting scaling laws to measured losses: parametric fits with bootstrap intervals, backtests, IsoFLOP fits.

`fit_law` is Approach 3 of Hoffmann et al. (2022, §3.3, eq. (3)): minimise the sum over points of
Huber_delta(log L_pred - log L_obs), log L_pred written as a log-sum-exp (forms.py), with L-BFGS-B started from a
grid of initialisations (their Appendix D.2), keeping the best minimum. Besiroglu et al. (2024, "Chinchilla
Scaling: A replication attempt") found the original fit stopped before converging because of the objective's
scale, so the optimiser here sees the objective divided by delta and the number of points (same minimiser,
gradients of order one) and runs to tight tolerances. Two further changes keep it fast without changing the
answer: the optimiser works on coefficients centred at the mean log input (a - alpha * mean log N instead of a,
which decorrelates a from alpha), and the "default" grid is screened by its objective values in one vectorised
pass, with L-BFGS-B run from the best few starts only ("full" runs it from every start, as in the papers).

Intervals come from a nonparametric bootstrap: points resampled with replacement (seeded), each resample refitted
from the full-data optimum and two starts near it rather than from the whole grid, percentile intervals over the
refits. Besiroglu et al. show why this matters: intervals as narrow as Hoffmann et al. reported would need far more
runs than they trained.

`isoflop_fit` is Approach 2 (Hoffmann et al. 2022, §3.2): a parabola of loss against log N on each IsoFLOP slice,
its minimum N_opt(C), then N_opt ∝ C^a and D_opt ∝ C^b by least squares in log space.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import minimize
from threadpoolctl import threadpool_limits

from scalelab.laws.forms import EXPONENTS, FORMS, LawFitError, LawForm
from scalelab.laws.units import UNITS, Unit

__all__ = ["Backtest", "Fit", "IsoFlopFit", "IsoFlopSlice", "LawFitError", "Unit", "backtest", "fit_law",
           "isoflop_fit"]

GRIDS = ("default", "full")
SCREENED_STARTS = 8  # "default" grid: L-BFGS-B from this many of the best grid points
BOOTSTRAP_NEARBY = 2  # bootstrap: starts near the full-data optimum, besides the optimum itself
NEARBY_SCALE = 0.1  # ... each natural parameter multiplied by exp(N(0, NEARBY_SCALE))
LBFGS_OPTIONS = {"maxiter": 1000, "ftol": 1e-13, "gtol": 1e-9}
SCREEN_CHUNK = 200_000  # grid points x data points evaluated at once while screening
ONE_VALUE_HINTS = {("chinchilla", "N"): "; with one model size fit 'data'",
                   ("chinchilla", "D"): "; with one data size fit 'model'",
                   ("data_constrained", "N"): "; with one model size fit 'data_constrained_D'"}
SLICE_TOLERANCE = 0.1  # runs whose compute is within 10% of a slice's smallest share that IsoFLOP slice


@dataclass(frozen=True, eq=False)
class Fit:
    """A fitted law: point estimates, bootstrap draws and intervals, and fit quality on log loss."""

    form: str
    params: dict[str, float]
    intervals: dict[str, tuple[float, float]]  # bootstrap percentile intervals at `level`; empty without bootstrap
    samples: np.ndarray  # (n_bootstrap, n_params) bootstrap draws, columns in the form's params order
    X: dict[str, np.ndarray]  # the points fitted
    loss: np.ndarray
    unit: Unit  # a label only: the maths is the same in nats and in bits per byte
    level: float
    huber_delta: float
    objective: float  # sum of Huber losses of the log residuals at the optimum
    rmse_log: float
    r2: float  # of log loss

    @property
    def law(self) -> LawForm:
        return FORMS[self.form]

    def predict(self, X: Mapping[str, np.ndarray | float]) -> np.ndarray:
        return self.law.predict(self.params, X)

    def predict_interval(self, X: Mapping[str, np.ndarray | float],
                         level: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Percentile interval of the predicted loss over the bootstrap draws (at `level`, default the fit's)."""
        level = self.level if level is None else level
        if not len(self.samples):
            raise LawFitError("this fit has no bootstrap draws: fit with bootstrap > 0 for intervals")
        if not 0 < level < 1:
            raise LawFitError(f"level must lie strictly between 0 and 1, got {level}")
        draws = self.law.predict(self.samples, X)
        low, high = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2], axis=0)
        return low, high

    def to_dict(self) -> dict[str, Any]:
        return {"form": self.form, "unit": self.unit, "params": self.params,
                "intervals": {name: list(bounds) for name, bounds in self.intervals.items()},
                "level": self.level, "n_points": len(self.loss), "n_bootstrap": len(self.samples),
                "huber_delta": self.huber_delta, "objective": self.objective, "rmse_log": self.rmse_log,
                "r2": self.r2, "ranges": {name: [float(v.min()), float(v.max())] for name, v in self.X.items()}}


class _Objective:
    """The scaled Huber objective of one law on one set of points, for any weighting of the points (a bootstrap
    resample is a weighting: how often each point was drawn).

    The optimiser's variable is phi, theta with every coefficient centred: theta = M @ phi, where the row of a
    coefficient a adds mean(log N) * alpha, so phi holds a - alpha * mean(log N)."""

    def __init__(self, law: LawForm, X: Mapping[str, np.ndarray], loss: np.ndarray, delta: float):
        self.law, self.delta = law, delta
        self.Z = law.design(X)
        self.y = np.log(loss)
        p = len(law.params)
        self.M = np.eye(p)
        for coef, exponent, name in law.terms:
            self.M[law.params.index(coef), law.params.index(exponent)] = self.Z[name].mean()
        self.bounds = law.bounds()

    def huber(self, residual: np.ndarray) -> np.ndarray:
        size = np.abs(residual)
        return np.where(size <= self.delta, 0.5 * residual**2, self.delta * (size - 0.5 * self.delta))

    def total(self, theta: np.ndarray) -> float:
        """The unscaled objective on all points, as reported."""
        return float(self.huber(self.law.log_loss(theta, self.Z) - self.y).sum())

    def scaled(self, phi: np.ndarray, weights: np.ndarray) -> tuple[float, np.ndarray]:
        f, J = self.law.log_loss(self.M @ phi, self.Z, jac=True)
        r = f - self.y
        size = np.abs(r)
        h = np.where(size <= self.delta, 0.5 * r * r / self.delta, size - 0.5 * self.delta)
        slope = np.clip(r / self.delta, -1.0, 1.0) * weights
        norm = weights.sum()
        return float(h @ weights) / norm, self.M.T @ (slope @ J) / norm

    def screen(self, thetas: np.ndarray) -> np.ndarray:
        """The objective (all points, equal weights) at each row of thetas, vectorised in chunks."""
        step = max(1, SCREEN_CHUNK // len(self.y))
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            values = [self.huber(self.law.log_loss(thetas[i:i + step], self.Z) - self.y).sum(axis=-1)
                      for i in range(0, len(thetas), step)]
        return np.nan_to_num(np.concatenate(values), nan=np.inf)

    def minimise(self, theta: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, float]:
        phi = np.linalg.solve(self.M, theta)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            result = minimize(self.scaled, phi, args=(weights,), jac=True, method="L-BFGS-B", bounds=self.bounds,
                              options=LBFGS_OPTIONS)
        value = float(result.fun) if np.isfinite(result.fun) else np.inf
        return self.M @ result.x, value

    def clip(self, theta: np.ndarray) -> np.ndarray:
        low = [-np.inf if b[0] is None else b[0] for b in self.bounds]
        high = [np.inf if b[1] is None else b[1] for b in self.bounds]
        return np.clip(theta, low, high)


def _best(objective: _Objective, starts: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, float]:
    best, best_value = starts[0], np.inf
    for start in starts:
        theta, value = objective.minimise(objective.clip(start), weights)
        if value < best_value:
            best, best_value = theta, value
    return best, best_value


def _validated(form: str, X: Mapping[str, Any], loss: Any) -> tuple[LawForm, dict[str, np.ndarray], np.ndarray]:
    """The law and the points as float arrays, or one LawFitError naming every problem found."""
    if form not in FORMS:
        raise LawFitError(f"unknown law form {form!r}; choose one of {', '.join(FORMS)}")
    law = FORMS[form]
    problems = []
    loss = np.asarray(loss, dtype=float)
    if loss.ndim != 1:
        raise LawFitError(f"cannot fit the {form!r} law: loss must be one value per point, got shape {loss.shape}")
    arrays = {}
    for name in law.inputs:
        if name not in X:
            problems.append(f"input {name} is missing (the law needs {', '.join(law.inputs)})")
            continue
        values = np.asarray(X[name], dtype=float)
        if values.shape != loss.shape:
            problems.append(f"{name} has shape {values.shape} but loss has {loss.shape}")
            continue
        arrays[name] = values
    for name, values in [("loss", loss), *arrays.items()]:
        bad = ~np.isfinite(values)
        if bad.any():
            problems.append(f"{name} is not finite (NaN or infinite) at {int(bad.sum())} point(s), first at "
                            f"index {int(np.argmax(bad))}")
        non_positive = np.isfinite(values) & (values <= 0)
        if non_positive.any():
            problems.append(f"{name} must be positive but is {values[non_positive][0]:g} at index "
                            f"{int(np.argmax(non_positive))} ({int(non_positive.sum())} point(s) in all)")
    needed = len(law.params) + 1
    if len(loss) < needed:
        problems.append(f"{len(loss)} point(s), but the law has {len(law.params)} parameters and needs at "
                        f"least {needed}")
    for _, _, name in law.terms:
        if name in arrays:
            distinct = len(np.unique(arrays[name][np.isfinite(arrays[name])]))
            if distinct < 3:
                hint = ONE_VALUE_HINTS.get((form, name), "")
                problems.append(f"{name} takes {distinct} distinct value(s): a power law in {name} needs at least 3 "
                                f"to separate E from its coefficient and exponent{hint}")
    if "U" in arrays and "D" in arrays and not (arrays["U"] < arrays["D"]).any():
        problems.append("no point repeats data (U >= D everywhere), so R_D cannot be estimated; fit "
                        "'chinchilla' or 'data' instead")
    if problems:
        raise LawFitError(f"cannot fit the {form!r} law: " + "; ".join(problems))
    return law, arrays, loss


def _check_settings(unit: str, huber_delta: float, bootstrap: int, level: float, grid: str) -> None:
    problems = []
    if unit not in UNITS:
        problems.append(f"unit must be one of {', '.join(UNITS)}, got {unit!r}")
    if not huber_delta > 0:
        problems.append(f"huber_delta must be positive, got {huber_delta}")
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, (int, np.integer)) or bootstrap < 0:
        problems.append(f"bootstrap must be a count >= 0, got {bootstrap!r}")
    if not 0 < level < 1:
        problems.append(f"level must lie strictly between 0 and 1, got {level}")
    if grid not in GRIDS:
        problems.append(f"grid must be one of {', '.join(GRIDS)}, got {grid!r}")
    if problems:
        raise LawFitError("; ".join(problems))


def fit_law(form: str, X: Mapping[str, np.ndarray], loss: np.ndarray, *, unit: Unit = "nats",
            huber_delta: float = 1e-3, bootstrap: int = 200, level: float = 0.9, seed: int = 0,
            grid: str = "default") -> Fit:
    """Fit the law `form` (a key of FORMS) to losses at the points X (arrays named by the law's inputs: N
    parameters, D tokens trained on including repeats, U unique tokens).

    bootstrap: resamples for the intervals (0 for none). grid: "default" screens the grid of initialisations and
    optimises from its best few points; "full" optimises from every grid point (slow; for checking).
    """
    # L-BFGS-B makes many tiny BLAS calls; BLAS threads spinning up for each made a 200-resample fit take 10 s
    # instead of 0.8 s on a busy 2-core machine.
    with threadpool_limits(limits=1, user_api="blas"):
        return _fit_law(form, X, loss, unit, huber_delta, bootstrap, level, seed, grid)


def _fit_law(form: str, X: Mapping[str, np.ndarray], loss: np.ndarray, unit: Unit, huber_delta: float,
             bootstrap: int, level: float, seed: int, grid: str) -> Fit:
    _check_settings(unit, huber_delta, bootstrap, level, grid)
    law, X, loss = _validated(form, X, loss)
    objective = _Objective(law, X, loss, huber_delta)
    starts = law.grid()
    if grid == "default":
        starts = starts[np.argsort(objective.screen(starts), kind="stable")[:SCREENED_STARTS]]
    everywhere = np.ones(len(loss))
    theta, value = _best(objective, starts, everywhere)
    if not np.isfinite(value):
        raise LawFitError(f"the {form!r} law could not be fitted: the objective is not finite at any start")

    rng = np.random.default_rng(seed)
    draws = np.empty((bootstrap, len(law.params)))
    scales = np.where([name in EXPONENTS for name in law.params], theta, 1.0)
    for b in range(bootstrap):
        weights = np.bincount(rng.integers(0, len(loss), len(loss)), minlength=len(loss)).astype(float)
        # A log-scaled parameter moves by N(0, s); an exponent is multiplied by exp(N(0, s)), to first order.
        nearby = theta + scales * rng.normal(0.0, NEARBY_SCALE, (BOOTSTRAP_NEARBY, len(theta)))
        draws[b] = law.from_theta(_best(objective, np.vstack([theta, nearby]), weights)[0])

    params = law.from_theta(theta)
    tail = (1 - level) / 2
    intervals = {name: (float(np.quantile(draws[:, i], tail)), float(np.quantile(draws[:, i], 1 - tail)))
                 for i, name in enumerate(law.params)} if bootstrap else {}
    residual = law.log_loss(theta, objective.Z) - objective.y
    spread = ((objective.y - objective.y.mean()) ** 2).sum()
    return Fit(form=form, params={name: float(v) for name, v in zip(law.params, params, strict=True)},
               intervals=intervals, samples=draws, X=X, loss=loss, unit=unit, level=level, huber_delta=huber_delta,
               objective=objective.total(theta), rmse_log=float(np.sqrt(np.mean(residual**2))),
               r2=float(1 - (residual**2).sum() / spread) if spread > 0 else float("nan"))


@dataclass(frozen=True, eq=False)
class Backtest:
    """A law fitted on the smallest values of `by`, judged on its predictions of the largest."""

    by: str
    fitted_on: int  # points fitted
    held_out: np.ndarray  # indices of the held-out points
    predicted: np.ndarray
    actual: np.ndarray
    abs_rel_error: np.ndarray  # |predicted - actual| / actual
    mean_abs_rel_error: float
    max_abs_rel_error: float

    def to_dict(self) -> dict[str, Any]:
        return {"by": self.by, "fitted_on": self.fitted_on, "held_out": self.held_out.tolist(),
                "predicted": self.predicted.tolist(), "actual": self.actual.tolist(),
                "abs_rel_error": self.abs_rel_error.tolist(), "mean_abs_rel_error": self.mean_abs_rel_error,
                "max_abs_rel_error": self.max_abs_rel_error}


def backtest(form: str, X: Mapping[str, np.ndarray], loss: np.ndarray, *, by: str = "D",
             holdout: int | float = 0.25, **fit_kwargs: Any) -> Backtest:
    """Hold out the points at the largest `holdout` distinct values of `by` (a count, or a fraction of the
    distinct values, at least one), fit `form` on the rest, and measure the errors of its predictions.
    fit_kwargs go to fit_law; bootstrap defaults to 0 here, since only the point fit predicts."""
    law, arrays, loss = _validated(form, X, loss)
    if by not in law.inputs:
        raise LawFitError(f"cannot backtest by {by!r}: the {form!r} law's inputs are {', '.join(law.inputs)}")
    distinct = np.unique(arrays[by])
    if isinstance(holdout, bool) or not isinstance(holdout, (int, float, np.integer, np.floating)):
        raise LawFitError(f"holdout must be a count or a fraction, got {holdout!r}")
    if isinstance(holdout, (int, np.integer)):
        count = int(holdout)
    elif 0 < holdout < 1:
        count = max(1, math.ceil(holdout * len(distinct)))
    else:
        raise LawFitError(f"a fractional holdout must lie strictly between 0 and 1, got {holdout}")
    if not 1 <= count < len(distinct):
        raise LawFitError(f"cannot hold out {count} of the {len(distinct)} distinct values of {by}: "
                          "at least one must be held out and at least one kept")
    held = arrays[by] >= distinct[-count]
    fit_kwargs.setdefault("bootstrap", 0)
    fit = fit_law(form, {name: v[~held] for name, v in arrays.items()}, loss[~held], **fit_kwargs)
    predicted = fit.predict({name: v[held] for name, v in arrays.items()})
    actual = loss[held]
    error = np.abs(predicted - actual) / actual
    return Backtest(by=by, fitted_on=int((~held).sum()), held_out=np.flatnonzero(held), predicted=predicted,
                    actual=actual, abs_rel_error=error, mean_abs_rel_error=float(error.mean()),
                    max_abs_rel_error=float(error.max()))


@dataclass(frozen=True)
class IsoFlopSlice:
    """The runs sharing one compute budget, and the minimum of the parabola through their losses."""

    C: float  # geometric mean compute of the slice's runs
    n_runs: int
    used: bool  # whether the slice entered the fit of the exponents
    note: str  # why not, when unused
    N_opt: float = float("nan")
    D_opt: float = float("nan")
    loss_opt: float = float("nan")


@dataclass(frozen=True)
class IsoFlopFit:
    """N_opt = coefficients["N"] * C^a and D_opt = coefficients["D"] * C^b, fitted over IsoFLOP slices."""

    slices: tuple[IsoFlopSlice, ...]
    a: float
    b: float
    coefficients: dict[str, float]

    def n_opt(self, C: np.ndarray | float) -> np.ndarray:
        return self.coefficients["N"] * np.asarray(C, dtype=float) ** self.a

    def d_opt(self, C: np.ndarray | float) -> np.ndarray:
        return self.coefficients["D"] * np.asarray(C, dtype=float) ** self.b

    def to_dict(self) -> dict[str, Any]:
        slices = [{k: None if isinstance(v, float) and math.isnan(v) else v for k, v in vars(s).items()}
                  for s in self.slices]
        return {"a": self.a, "b": self.b, "coefficients": self.coefficients, "slices": slices}


def _slice(C: np.ndarray, N: np.ndarray, D: np.ndarray, loss: np.ndarray) -> IsoFlopSlice:
    compute = float(np.exp(np.log(C).mean()))
    x = np.log(N)
    if len(np.unique(x)) < 3:
        return IsoFlopSlice(compute, len(C), False, f"{len(np.unique(x))} distinct model size(s); a parabola needs 3")
    c2, c1, c0 = np.polyfit(x, loss, 2)
    if c2 <= 0:
        return IsoFlopSlice(compute, len(C), False, "loss is not convex in log N here: no minimum")
    best = -c1 / (2 * c2)
    if not x.min() <= best <= x.max():
        return IsoFlopSlice(compute, len(C), False, "the parabola's minimum lies outside the sampled model sizes")
    # log D against log N on the slice, read at the minimum: exact when C = 6ND, and honest when C is given.
    slope, intercept = np.polyfit(x, np.log(D), 1)
    return IsoFlopSlice(compute, len(C), True, "", N_opt=float(np.exp(best)),
                        D_opt=float(np.exp(intercept + slope * best)), loss_opt=float(c0 + c1 * best + c2 * best**2))


def isoflop_fit(N: np.ndarray, D: np.ndarray, loss: np.ndarray, *, flops: np.ndarray | None = None) -> IsoFlopFit:
    """Approach 2: group runs into IsoFLOP slices by compute (`flops`, or 6ND), take each slice's loss-minimising
    N from a parabola in log N, and fit N_opt ∝ C^a and D_opt ∝ C^b. Runs within SLICE_TOLERANCE of a slice's
    smallest compute share it; a slice needs 3 model sizes and a minimum inside them."""
    N, D, loss = (np.asarray(v, dtype=float) for v in (N, D, loss))
    C = 6 * N * D if flops is None else np.asarray(flops, dtype=float)
    problems = [f"{name} has shape {v.shape} but N has {N.shape}" for name, v in
                (("D", D), ("loss", loss), ("flops", C)) if v.shape != N.shape]
    if N.ndim != 1:
        problems.append(f"N must be one value per run, got shape {N.shape}")
    if problems:
        raise LawFitError("cannot fit IsoFLOP profiles: " + "; ".join(problems))
    for name, v in (("N", N), ("D", D), ("loss", loss), ("flops", C)):
        if not (np.isfinite(v) & (v > 0)).all():
            problems.append(f"{name} must be finite and positive at every run")
    if problems:
        raise LawFitError("cannot fit IsoFLOP profiles: " + "; ".join(problems))
    order = np.argsort(C, kind="stable")
    groups, start = [], 0
    for i in range(1, len(order) + 1):
        if i == len(order) or C[order[i]] > C[order[start]] * (1 + SLICE_TOLERANCE):
            groups.append(order[start:i])
            start = i
    slices = tuple(_slice(C[g], N[g], D[g], loss[g]) for g in groups)
    used = [s for s in slices if s.used]
    if len(used) < 2:
        notes = "; ".join(f"C={s.C:.3g}: {s.note}" for s in slices if not s.used)
        raise LawFitError(f"IsoFLOP fit needs at least 2 usable slices, found {len(used)} of {len(slices)}"
                          + (f" ({notes})" if notes else ""))
    log_c = np.log([s.C for s in used])
    a, log_k_n = np.polyfit(log_c, np.log([s.N_opt for s in used]), 1)
    b, log_k_d = np.polyfit(log_c, np.log([s.D_opt for s in used]), 1)
    return IsoFlopFit(slices=slices, a=float(a), b=float(b),
                      coefficients={"N": float(np.exp(log_k_n)), "D": float(np.exp(log_k_d))})
