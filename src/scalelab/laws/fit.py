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

Intervals come from a nonparametric bootstrap (Efron & Tibshirani 1993, ch. 6 and 13), each resample refitted from
the full-data optimum and two starts near it rather than from the whole grid, percentile intervals over the refits.
Besiroglu et al. (2024) show why this matters: intervals as narrow as Hoffmann et al. reported would need far more
runs than they trained. What is resampled follows the design (`Fit.resampling` says which was used):

- "documents": every point was scored on the same held-out documents, so the held-out set is the error the points
  share. Each resample draws the documents with replacement once and applies that one weighting to every point's
  per-document NLL (a loss is sum(w nll) / sum(w tokens)), then refits. Where a design cell (the same N, D, U) holds
  several runs (seeds), the runs are resampled within their cell too ("documents and seeds").
- "points": without per-document results (a CSV, an older study), the points themselves are resampled with
  replacement (the pairs bootstrap of Besiroglu et al. 2024).

A points resample with too few distinct design points to identify the law (fewer than its parameter count + 1, or
fewer than 3 values of an input a power law is fitted in) is rejected and redrawn, and counted; a refit that fails
(no finite objective from any start) is dropped and counted, never replaced by the full-data optimum.

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

__all__ = ["Backtest", "Documents", "Fit", "Floor", "IsoFlopFit", "IsoFlopSlice", "LawFitError", "Unit", "backtest",
           "fit_law", "floor", "isoflop_fit"]

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
MAX_REDRAWS = 100  # a degenerate bootstrap resample is redrawn at most this many times before the refit counts failed
# A floor E below this share of the smallest measured loss cannot be told from no floor at all.
FLOOR_NEGLIGIBLE = 0.01
# The measured losses approach the floor when, at the best of them, the floor is at least this share of the loss: the
# local log-log slope -beta (L - E) / L has then fallen to half the power law's or less (Hestness et al. 2017, Fig. 1,
# the bend into the irreducible-error region).
FLOOR_BEND = 0.5
RESAMPLING = {"points": "points resampled with replacement (pairs bootstrap; Besiroglu et al. 2024)",
              "documents": "held-out documents resampled jointly across all points",
              "documents and seeds": "held-out documents resampled jointly across all points, and seeds within "
                                     "each design point"}


@dataclass(frozen=True, eq=False)
class Documents:
    """Per-document held-out results of every point, aligned: column j is the same document at every point.

    A point's loss under document weights w is its reported loss times sum(w nll) / sum(w size), relative to the
    same ratio with all weights 1, so the unweighted resample reproduces the reported loss exactly whatever its unit
    (size counts tokens for nats per token, bytes for bits per byte)."""

    nll: np.ndarray  # (n_points, n_documents), nats per document
    size: np.ndarray  # (n_points, n_documents), tokens (or bytes) scored per document

    def __post_init__(self) -> None:
        nll, size = np.asarray(self.nll, dtype=float), np.asarray(self.size, dtype=float)
        if nll.ndim != 2 or nll.shape != size.shape or nll.shape[1] < 2:
            raise LawFitError(f"per-document results need matching (points, documents) arrays with 2 or more "
                              f"documents, got {nll.shape} and {size.shape}")
        if not (np.isfinite(nll).all() and np.isfinite(size).all() and (size >= 0).all()
                and (size.sum(axis=1) > 0).all()):
            raise LawFitError("per-document results must be finite, with non-negative sizes scoring some tokens")
        object.__setattr__(self, "nll", nll)
        object.__setattr__(self, "size", size)

    def rows(self, keep: np.ndarray) -> Documents:
        return Documents(self.nll[keep], self.size[keep])

    def losses(self, loss: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """(n_resamples, n_points) losses under the document weights (n_resamples, n_documents)."""
        base = self.nll.sum(axis=1) / self.size.sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            return loss * (weights @ self.nll.T) / (weights @ self.size.T) / base

    def standard_errors(self, loss: np.ndarray, resamples: int = 200, seed: int = 0) -> np.ndarray:
        """Each point's bootstrap standard error over documents."""
        n = self.nll.shape[1]
        weights = np.random.default_rng(seed).multinomial(n, np.full(n, 1 / n), size=resamples).astype(float)
        return np.nanstd(self.losses(loss, weights), axis=0, ddof=1)


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
    resampling: str = "points"  # a key of RESAMPLING: what the bootstrap resampled
    bootstrap_failed: int = 0  # refits that failed (dropped: `samples` holds the others)
    bootstrap_rejected: int = 0  # degenerate resamples (too few distinct points) redrawn

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
                "r2": self.r2, "ranges": {name: [float(v.min()), float(v.max())] for name, v in self.X.items()},
                "resampling": self.resampling, "resampling_text": RESAMPLING[self.resampling],
                "bootstrap_failed": self.bootstrap_failed, "bootstrap_rejected": self.bootstrap_rejected}


@dataclass(frozen=True)
class Floor:
    """What the data say about the irreducible loss E (Hestness et al. 2017, Fig. 1, the irreducible-error region).

    identified: E's interval lies clear of 0 (its lower end, and the estimate, above FLOOR_NEGLIGIBLE of the smallest
    measured loss). approached: identified, and at the best measured loss the floor is at least FLOOR_BEND of it, so
    the curve has visibly bent towards it. A floor is *visible* only when both hold. bound: what an unidentified
    floor is stated as, E < bound: the interval's upper end, or FLOOR_NEGLIGIBLE of the smallest measured loss when
    that is higher, as an upper end such as 2e-10 reads as a measurement of a floor the data cannot resolve."""

    value: float
    low: float
    high: float
    level: float
    identified: bool
    approached: bool
    bound: float

    @property
    def visible(self) -> bool:
        return self.identified and self.approached

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value if self.identified else None, "low": self.low, "high": self.high,
                "level": self.level, "identified": self.identified, "approached": self.approached,
                "visible": self.visible, "bound": self.bound}


def floor(fit: Fit) -> Floor | None:
    """The verdict on the fit's floor E; None without bootstrap draws (no interval, so nothing can be said)."""
    if "E" not in fit.intervals:
        return None
    low, high = fit.intervals["E"]
    value, best = fit.params["E"], float(fit.loss.min())
    negligible = FLOOR_NEGLIGIBLE * best
    identified = bool(value > negligible and low > negligible)
    approached = bool(identified and value >= FLOOR_BEND * best)
    return Floor(value=value, low=low, high=high, level=fit.level, identified=identified, approached=approached,
                 bound=max(high, negligible))


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

    def with_loss(self, loss: np.ndarray) -> _Objective:
        """The same law and points with other losses (a resample of the held-out documents)."""
        other = object.__new__(_Objective)
        other.__dict__.update(self.__dict__)
        other.y = np.log(loss)
        return other

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
            grid: str = "default", documents: Documents | None = None) -> Fit:
    """Fit the law `form` (a key of FORMS) to losses at the points X (arrays named by the law's inputs: N
    parameters, D tokens trained on including repeats, U unique tokens).

    bootstrap: resamples for the intervals (0 for none). grid: "default" screens the grid of initialisations and
    optimises from its best few points; "full" optimises from every grid point (slow; for checking).
    documents: the points' per-document held-out results, for the document-level bootstrap (module docstring);
    without them the points are resampled.
    """
    # L-BFGS-B makes many tiny BLAS calls; BLAS threads spinning up for each made a 200-resample fit take 10 s
    # instead of 0.8 s on a busy 2-core machine.
    with threadpool_limits(limits=1, user_api="blas"):
        return _fit_law(form, X, loss, unit, huber_delta, bootstrap, level, seed, grid, documents)


class _Resampler:
    """Bootstrap weights over the points, and losses under resampled documents, as the design calls for."""

    def __init__(self, law: LawForm, X: Mapping[str, np.ndarray], loss: np.ndarray, documents: Documents | None,
                 rng: np.random.Generator):
        self.law, self.X, self.loss, self.rng = law, X, loss, rng
        n = len(loss)
        if documents is not None and documents.nll.shape[0] != n:
            raise LawFitError(f"per-document results cover {documents.nll.shape[0]} points, but there are {n}")
        self.documents = documents
        # Runs with the same inputs are one design cell: replicates, which differ by seed.
        design = np.column_stack([X[name] for name in law.inputs])
        _, self.cell, counts = np.unique(design, axis=0, return_inverse=True, return_counts=True)
        self.cell = self.cell.ravel()
        self.counts = counts[self.cell]
        self.order = np.argsort(self.cell, kind="stable")
        self.first = (np.cumsum(counts) - counts)[self.cell]
        self.seeds = bool((counts > 1).any())
        self.need = min(len(law.params) + 1, len(counts))
        self.need_values = {name: min(3, len(np.unique(X[name]))) for _, _, name in law.terms}
        self.mode = "points" if documents is None else "documents and seeds" if self.seeds else "documents"

    def weights(self) -> np.ndarray:
        n = len(self.loss)
        if self.documents is None:
            return np.bincount(self.rng.integers(0, n, n), minlength=n).astype(float)
        if not self.seeds:
            return np.ones(n)
        # Each cell's runs drawn with replacement from that cell: every design point stays.
        pick = self.order[self.first + (self.rng.random(n) * self.counts).astype(int)]
        return np.bincount(pick, minlength=n).astype(float)

    def degenerate(self, weights: np.ndarray) -> bool:
        drawn = weights > 0
        if len(np.unique(self.cell[drawn])) < self.need:
            return True
        return any(len(np.unique(self.X[name][drawn])) < count for name, count in self.need_values.items())

    def losses(self) -> np.ndarray | None:
        if self.documents is None:
            return None
        n = self.documents.nll.shape[1]
        counts = self.rng.multinomial(n, np.full(n, 1 / n)).astype(float)
        return self.documents.losses(self.loss, counts[None])[0]


def _fit_law(form: str, X: Mapping[str, np.ndarray], loss: np.ndarray, unit: Unit, huber_delta: float,
             bootstrap: int, level: float, seed: int, grid: str, documents: Documents | None) -> Fit:
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
    resampler = _Resampler(law, X, loss, documents, rng)
    draws, failed, rejected = [], 0, 0
    scales = np.where([name in EXPONENTS for name in law.params], theta, 1.0)
    for _ in range(bootstrap):
        for _ in range(MAX_REDRAWS):
            weights = resampler.weights()
            if not resampler.degenerate(weights):
                break
            rejected += 1
        else:
            failed += 1  # no usable resample: the design is too thin to bootstrap
            continue
        resampled = resampler.losses()
        target = objective
        if resampled is not None:
            if not (np.isfinite(resampled).all() and (resampled > 0).all()):
                failed += 1
                continue
            target = objective.with_loss(resampled)
        # A log-scaled parameter moves by N(0, s); an exponent is multiplied by exp(N(0, s)), to first order.
        nearby = theta + scales * rng.normal(0.0, NEARBY_SCALE, (BOOTSTRAP_NEARBY, len(theta)))
        refit, refit_value = _best(target, np.vstack([theta, nearby]), weights)
        if not np.isfinite(refit_value) or not np.isfinite(refit).all():
            failed += 1  # counted and dropped: never replaced by the full-data optimum
            continue
        draws.append(law.from_theta(refit))
    draws = np.array(draws, dtype=float).reshape(-1, len(law.params))

    params = law.from_theta(theta)
    tail = (1 - level) / 2
    intervals = {name: (float(np.quantile(draws[:, i], tail)), float(np.quantile(draws[:, i], 1 - tail)))
                 for i, name in enumerate(law.params)} if len(draws) else {}
    residual = law.log_loss(theta, objective.Z) - objective.y
    spread = ((objective.y - objective.y.mean()) ** 2).sum()
    return Fit(form=form, params={name: float(v) for name, v in zip(law.params, params, strict=True)},
               intervals=intervals, samples=draws, X=X, loss=loss, unit=unit, level=level, huber_delta=huber_delta,
               objective=objective.total(theta), rmse_log=float(np.sqrt(np.mean(residual**2))),
               r2=float(1 - (residual**2).sum() / spread) if spread > 0 else float("nan"),
               resampling=resampler.mode, bootstrap_failed=failed, bootstrap_rejected=rejected)


@dataclass(frozen=True, eq=False)
class Backtest:
    """A law fitted on the smallest values of `by`, judged on its predictions of the largest.

    Besides the error relative to the loss, the error relative to the reducible loss L - E (E the backtest fit's
    floor): a law can predict 1% of the total loss while missing most of what more data would still gain (Hoffmann
    et al. 2022 and Besiroglu et al. 2024 judge fits by what they extrapolate). With bootstrap draws, whether each
    held-out loss lies inside the fit's band at `level`, and the share that does (the coverage). The band is that of
    the fitted curve, so a coverage well below `level` says the law, not the noise, misses."""

    by: str
    fitted_on: int  # points fitted
    held_out: np.ndarray  # indices of the held-out points
    predicted: np.ndarray
    actual: np.ndarray
    abs_rel_error: np.ndarray  # |predicted - actual| / actual
    mean_abs_rel_error: float
    max_abs_rel_error: float
    E: float = float("nan")  # the backtest fit's floor
    reducible_abs_rel_error: np.ndarray | None = None  # |predicted - actual| / (actual - E); nan where actual <= E
    band_low: np.ndarray | None = None  # the fit's band at the held-out points (nan without draws)
    band_high: np.ndarray | None = None
    level: float = float("nan")
    resampling: str = "points"

    @property
    def inside(self) -> np.ndarray:
        if self.band_low is None or self.band_high is None:
            return np.zeros(len(self.actual), dtype=bool)
        return (self.band_low <= self.actual) & (self.actual <= self.band_high)

    @property
    def coverage(self) -> float:
        """The share of held-out points inside the band; nan without bootstrap draws."""
        if self.band_low is None or np.isnan(self.band_low).all():
            return float("nan")
        return float(self.inside.mean())

    @property
    def mean_reducible_abs_rel_error(self) -> float:
        return _nanstat(np.nanmean, self.reducible_abs_rel_error)

    @property
    def max_reducible_abs_rel_error(self) -> float:
        return _nanstat(np.nanmax, self.reducible_abs_rel_error)

    def to_dict(self) -> dict[str, Any]:
        def listed(values: np.ndarray | None) -> list[float | None] | None:
            return None if values is None else [None if np.isnan(v) else float(v) for v in values]

        return {"by": self.by, "fitted_on": self.fitted_on, "held_out": self.held_out.tolist(),
                "predicted": self.predicted.tolist(), "actual": self.actual.tolist(),
                "abs_rel_error": self.abs_rel_error.tolist(), "mean_abs_rel_error": self.mean_abs_rel_error,
                "max_abs_rel_error": self.max_abs_rel_error, "E": self.E,
                "reducible_abs_rel_error": listed(self.reducible_abs_rel_error),
                "mean_reducible_abs_rel_error": self.mean_reducible_abs_rel_error,
                "max_reducible_abs_rel_error": self.max_reducible_abs_rel_error,
                "band_low": listed(self.band_low), "band_high": listed(self.band_high),
                "inside_band": self.inside.tolist(), "coverage": self.coverage, "level": self.level,
                "resampling": self.resampling}


def _nanstat(stat: Any, values: np.ndarray | None) -> float:
    if values is None or np.isnan(values).all():
        return float("nan")
    return float(stat(values))


def backtest(form: str, X: Mapping[str, np.ndarray], loss: np.ndarray, *, by: str = "D",
             holdout: int | float = 0.25, documents: Documents | None = None, **fit_kwargs: Any) -> Backtest:
    """Hold out the points at the largest `holdout` distinct values of `by` (a count, or a fraction of the
    distinct values, at least one), fit `form` on the rest, and measure the errors of its predictions.
    fit_kwargs go to fit_law; bootstrap defaults to 0 here (no band, no coverage); pass a count for them."""
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
    fit = fit_law(form, {name: v[~held] for name, v in arrays.items()}, loss[~held],
                  documents=None if documents is None else documents.rows(~held), **fit_kwargs)
    at = {name: v[held] for name, v in arrays.items()}
    predicted = fit.predict(at)
    actual = loss[held]
    error = np.abs(predicted - actual) / actual
    E = fit.params["E"]
    with np.errstate(divide="ignore", invalid="ignore"):
        reducible = np.where(actual > E, np.abs(predicted - actual) / (actual - E), np.nan)
    band_low = band_high = np.full(len(actual), np.nan)
    if len(fit.samples):
        band_low, band_high = fit.predict_interval(at)
    return Backtest(by=by, fitted_on=int((~held).sum()), held_out=np.flatnonzero(held), predicted=predicted,
                    actual=actual, abs_rel_error=error, mean_abs_rel_error=float(error.mean()),
                    max_abs_rel_error=float(error.max()), E=E, reducible_abs_rel_error=reducible,
                    band_low=band_low, band_high=band_high, level=fit.level, resampling=fit.resampling)


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
