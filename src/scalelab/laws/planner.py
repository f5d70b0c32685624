"""Plain answers to data-planning questions, read off fitted scaling laws.

Every answer is a point estimate from the fit's parameters and a percentile interval at the fit's level over its
bootstrap draws. Each question is solved for all parameter sets at once: arrays whose first entry is the point
estimate and whose others are the draws, in closed form wherever one exists. A draw for which the question has
no finite answer (a target below that draw's floor) counts as infinite, so an interval may be open above.

For the data-constrained forms, D in the fresh-data questions counts unique tokens seen once (U = D).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from scalelab.errors import ScalelabError
from scalelab.laws.forms import FORMS

if TYPE_CHECKING:
    from scalelab.laws.fit import Fit

UNIT_TEXT = {"nats": "nats", "bits_per_byte": "bits per byte"}
BISECTION_STEPS = 100


class PlannerError(ScalelabError):
    """A question the fit cannot answer: the wrong form for it, or an input out of range."""


# ---------------------------------------------------------------------------------------------------------------
# Numbers for people


def _plain(x: float, digits: int = 2) -> str:
    """`digits` significant figures in plain notation with thousands separators: 0.052, 3.1, 40, 1,200."""
    if not math.isfinite(x):
        return str(x)
    if x == 0:
        return "0"
    rounded = float(f"{x:.{digits}g}")
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(rounded))))
    text = f"{rounded:,.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _scaled(n: float, units: tuple[tuple[float, str], ...]) -> str:
    """Two significant figures in the largest unit that fits; `units` run from large to 1. Past a thousand of the
    largest unit (an extrapolation far outside any data), scientific notation reads better."""
    if not math.isfinite(n):
        return str(n)
    if abs(n) >= 1000 * units[0][0]:
        mantissa, exponent = f"{n:.1e}".split("e")
        return f"{mantissa}e{int(exponent)}{units[-1][1]}"
    # Round before picking the unit, so that 999,600 reads "1M", not "1,000k".
    rounded = float(f"{n:.2g}")
    scale, suffix = next(((s, u) for s, u in units if abs(rounded) >= s), units[-1])
    return f"{_plain(rounded / scale)}{suffix}"


def format_tokens(n: float) -> str:
    """A count for people, two significant figures: 25k, 40M, 1.3B, 2.1T."""
    return _scaled(n, ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k"), (1, "")))


def format_bytes(n: float) -> str:
    """Bytes in decimal units, two significant figures: 640 B, 12 GB, 3.5 TB."""
    return _scaled(n, ((1e18, " EB"), (1e15, " PB"), (1e12, " TB"), (1e9, " GB"), (1e6, " MB"), (1e3, " kB"),
                       (1, " B")))


def format_percent(fraction: float) -> str:
    """A share as a percentage, two significant figures: 0.01 reads 1%, 0.052 reads 5.2%."""
    return f"{_plain(100 * fraction)}%"


def format_flops(n: float) -> str:
    """Floating-point operations, as people write them: 5.8e23 FLOPs."""
    mantissa, exponent = f"{n:.1e}".split("e")
    return f"{mantissa}e{int(exponent)} FLOPs"


# ---------------------------------------------------------------------------------------------------------------
# Answers

Kind = Literal["count", "percent", "multiple", "number", "loss"]
FORMAT: dict[str, Callable[[float], str]] = {
    "count": format_tokens,
    "percent": format_percent,
    "multiple": lambda x: f"{_plain(x)}x",
    "number": _plain,
    "loss": lambda x: _plain(x, 3),
}


@dataclass(frozen=True)
class Answer:
    """One number answering a planning question, with its interval over the fit's bootstrap draws."""

    value: float  # from the fit's point estimate; math.inf when the question has no finite answer
    low: float  # the interval's ends: percentiles of the draws' answers (nan when the fit has no draws)
    high: float
    level: float  # the interval's coverage, the fit's level
    kind: Kind  # how the numbers read: count "40M", percent "3.1%", multiple "2.4x", number, loss
    template: str  # the sentence, with {value} and {interval} where the numbers go

    def interval(self) -> str:
        """' (25M-70M)', ' (25M or more)' when open above, or '' without draws."""
        if math.isnan(self.low) or math.isnan(self.high):
            return ""
        show = FORMAT[self.kind]
        if math.isinf(self.high):
            return f" ({show(self.low)} or more)"
        return f" ({show(self.low)}-{show(self.high)})"

    def sentence(self) -> str:
        return self.template.replace("{value}", FORMAT[self.kind](self.value)).replace("{interval}", self.interval())

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "low": self.low, "high": self.high, "level": self.level, "kind": self.kind,
                "sentence": self.sentence()}


@dataclass(frozen=True)
class EpochsWorth(Answer):
    """The epochs beyond which repeating U unique tokens stops paying, and what those epochs are worth."""

    fresh_equivalent: Answer  # how many fresh tokens the repeated ones are worth, as a multiple of U

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "fresh_equivalent": self.fresh_equivalent.to_dict()}


@dataclass(frozen=True)
class ComputeOptimal:
    """The loss-minimising split of a compute budget C = 6 N D between parameters and tokens."""

    C: float  # the budget in FLOPs
    N: Answer  # parameters
    D: Answer  # tokens
    a: Answer  # N_opt grows as C^a
    b: Answer  # D_opt grows as C^b
    tokens_per_param: Answer
    label: str

    def sentence(self) -> str:
        return (f"with {format_flops(self.C)}, {self.label} is compute-optimal at about "
                f"{format_tokens(self.N.value)} parameters{self.N.interval()} trained on "
                f"{format_tokens(self.D.value)} tokens{self.D.interval()}, "
                f"{_plain(self.tokens_per_param.value)} tokens per parameter{self.tokens_per_param.interval()}")

    def to_dict(self) -> dict[str, Any]:
        return {"C": self.C, "N": self.N.to_dict(), "D": self.D.to_dict(), "a": self.a.to_dict(),
                "b": self.b.to_dict(), "tokens_per_param": self.tokens_per_param.to_dict(),
                "sentence": self.sentence()}


def _answer(values: np.ndarray, level: float, kind: Kind, template: str) -> Answer:
    low, high = _interval(values[1:], level)
    return Answer(float(values[0]), low, high, level, kind, template)


def _interval(draws: np.ndarray, level: float) -> tuple[float, float]:
    if draws.size == 0:
        return math.nan, math.nan
    # Order statistics, not interpolation: an infinite draw would turn an interpolated percentile into nan.
    # Taking the outer neighbours errs on the side of a slightly wider interval.
    low = np.quantile(draws, (1 - level) / 2, method="lower")
    high = np.quantile(draws, (1 + level) / 2, method="higher")
    return float(low), float(high)


# ---------------------------------------------------------------------------------------------------------------
# A fit as arrays over its parameter sets


def _parameters(fit: Fit) -> dict[str, np.ndarray]:
    """Each parameter as an array: the point estimate first, then the bootstrap draws."""
    if fit.form not in FORMS:
        raise PlannerError(f"form: unknown form {fit.form!r}; known: {', '.join(FORMS)}")
    names = FORMS[fit.form].params
    point = np.array([[fit.params[name] for name in names]], dtype=float)
    table = np.vstack([point, np.asarray(fit.samples, dtype=float).reshape(-1, len(names))])
    return {name: table[:, i] for i, name in enumerate(names)}


def _G(p: dict[str, np.ndarray]) -> np.ndarray:
    """G of Hoffmann et al. (2022, Appendix D): N_opt = G (C/6)^a, D_opt = G^-1 (C/6)^b."""
    return (p["alpha"] * p["A"] / (p["beta"] * p["B"])) ** (1 / (p["alpha"] + p["beta"]))


def _effective_params(p: dict[str, np.ndarray], N: float, U: np.ndarray | float) -> np.ndarray:
    """N' as in forms.py: parameters beyond N_opt(U), the compute-optimal size for U unique tokens, are worth
    less and less, with decay constant R_N."""
    n_opt = (p["alpha"] * p["A"] / (p["beta"] * p["B"])) ** (1 / p["alpha"]) * U ** (p["beta"] / p["alpha"])
    U_N = np.minimum(N, n_opt)
    return U_N * (1 + p["R_N"] * (1 - np.exp(-(N / U_N - 1) / p["R_N"])))


def _repeated(epochs: np.ndarray, R_D: np.ndarray) -> np.ndarray:
    """D' / U: what `epochs` passes over U unique tokens are worth, as a multiple of U fresh tokens."""
    return 1 + R_D * (1 - np.exp(-(epochs - 1) / R_D))


@dataclass(frozen=True)
class _Curve:
    """A fit's loss against fresh tokens D at a fixed model size, for every parameter set at once:

        L(D) = floor + excess(D) + B D^-beta

    `excess` is the data-constrained law's penalty for parameters that D unique tokens cannot use; it is zero from
    D = `full` on (zero everywhere for the other forms), so the power law alone answers every question whose
    answer lies there, and bisection refines the rest.
    """

    p: dict[str, np.ndarray]
    floor: np.ndarray
    N: float | None
    constrained: bool

    @property
    def B(self) -> np.ndarray:
        return self.p["B"]

    @property
    def beta(self) -> np.ndarray:
        return self.p["beta"]

    @property
    def full(self) -> np.ndarray:
        if not self.constrained:
            return np.zeros_like(self.floor)
        # N_opt(D) = N solved for D: from there on the model has no excess parameters.
        p = self.p
        return self.N ** (p["alpha"] / p["beta"]) * (p["beta"] * p["B"] / (p["alpha"] * p["A"])) ** (1 / p["beta"])

    def excess(self, D: np.ndarray | float) -> np.ndarray:
        if not self.constrained:
            return np.zeros_like(self.floor)
        p = self.p
        return p["A"] * (_effective_params(p, self.N, D) ** -p["alpha"] - self.N ** -p["alpha"])

    def loss(self, D: np.ndarray | float) -> np.ndarray:
        return self.floor + self.excess(D) + self.B * np.asarray(D, dtype=float) ** -self.beta

    def refine(self, closed: np.ndarray, crossing: Callable[[np.ndarray], np.ndarray], low: np.ndarray) -> np.ndarray:
        """`closed` where it lies where there is no excess, else the root of the decreasing `crossing` in
        [low, full]."""
        inside = closed < self.full
        if not inside.any():
            return closed
        root = _bisect_log(crossing, np.where(inside, low, 1.0), np.where(inside, self.full, 1.0))
        return np.where(inside, root, closed)


def _curve(fit: Fit, N: float | None) -> _Curve:
    p = _parameters(fit)
    if fit.form == "model":
        raise PlannerError("form: a model-size law L(N) says nothing about data; fit L(D) or L(N, D)")
    joint = fit.form in ("chinchilla", "data_constrained")
    if joint and N is None:
        raise PlannerError(f"N: a {fit.form} fit answers at a given model size; pass N")
    if not joint and N is not None:
        raise PlannerError(f"N: a {fit.form} fit has no model size; leave N out")
    if joint:
        _require_positive(N=N)
        return _Curve(p, p["E"] + p["A"] * N ** -p["alpha"], N, fit.form == "data_constrained")
    return _Curve(p, p["E"], None, False)


def _bisect_log(crossing: Callable[[np.ndarray], np.ndarray], low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Elementwise, where the decreasing `crossing` turns negative between `low` and `high`, by bisection in log
    space (the answers span orders of magnitude)."""
    lo, hi = np.log(low), np.log(high)
    for _ in range(BISECTION_STEPS):
        mid = (lo + hi) / 2
        above = crossing(np.exp(mid)) >= 0
        lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
    return np.exp((lo + hi) / 2)


def _require_positive(**values: float | None) -> None:
    bad = [f"{name}={value}" for name, value in values.items()
           if value is not None and not (math.isfinite(value) and value > 0)]
    if bad:
        raise PlannerError(f"{', '.join(bad)}: must be a positive number")


def _at(N: float | None) -> str:
    return "" if N is None else f" at {format_tokens(N)} parameters"


def _loss_text(loss: float, unit: str) -> str:
    return f"{_plain(loss, 3)} {UNIT_TEXT[unit]}"


# ---------------------------------------------------------------------------------------------------------------
# Questions


def data_for_loss(fit: Fit, target: float, *, N: float | None = None, label: str = "the model") -> Answer:
    """The tokens D with L(D) = target (at model size N for the joint forms); infinite when target is at or below
    the floor, the loss with unlimited data."""
    _require_positive(target=target)
    curve = _curve(fit, N)
    reachable = target > curve.floor
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        closed = np.where(reachable, (curve.B / (target - curve.floor)) ** (1 / curve.beta), np.inf)
    tokens = curve.refine(closed, lambda D: curve.loss(D) - target, closed)
    goal = _loss_text(target, fit.unit)
    if reachable[0]:
        template = f"to reach {goal}{_at(N)} {label} needs about {{value}} tokens{{interval}}"
        return _answer(tokens, fit.level, "count", template)
    floor = _answer(curve.floor, fit.level, "loss", "")
    template = (f"{label}{_at(N)} never reaches {goal}: its floor is "
                f"{_loss_text(floor.value, fit.unit)}{floor.interval()}")
    return _answer(tokens, fit.level, "count", template)


def doubling_gain(fit: Fit, D: float, *, N: float | None = None, relative: bool = True,
                  label: str = "the model") -> Answer:
    """L(D) - L(2D): what doubling the data from D buys, as a fraction of L(D) when relative."""
    _require_positive(D=D)
    curve = _curve(fit, N)
    before, after = curve.loss(D), curve.loss(2 * D)
    gain = (before - after) / before if relative else before - after
    amount = "{value}" if relative else f"{{value}} {UNIT_TEXT[fit.unit]}"
    template = (f"for {label}{_at(N)}, doubling the data from {format_tokens(D)} to {format_tokens(2 * D)} tokens "
                f"lowers the loss by about {amount}{{interval}}")
    return _answer(gain, fit.level, "percent" if relative else "loss", template)


def saturation(fit: Fit, epsilon: float = 0.01, *, N: float | None = None, relative: bool = True,
               label: str = "the model") -> Answer:
    """The D beyond which one more doubling of the data lowers the loss by less than epsilon (relative: less than
    epsilon L(D)).

    With k = 1 - 2^-beta, a doubling gains k B D^-beta, so the absolute threshold is (k B / epsilon)^(1/beta).
    Relative to L(D) = c + B D^-beta it gains k / (1 + c D^beta / B), which falls below epsilon beyond
    (B (k - epsilon) / (epsilon c))^(1/beta): from the start (D = 0) when epsilon >= k, never when c = 0.
    """
    _require_positive(epsilon=epsilon)
    if relative and epsilon >= 1:
        raise PlannerError(f"epsilon={epsilon}: a relative gain is below 1; pass a fraction such as 0.01")
    curve = _curve(fit, N)
    k = 1 - 2.0 ** -curve.beta
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if relative:
            closed = np.where(k > epsilon,
                              (curve.B * (k - epsilon) / (epsilon * curve.floor)) ** (1 / curve.beta), 0.0)
        else:
            closed = (k * curve.B / epsilon) ** (1 / curve.beta)

    def crossing(D: np.ndarray) -> np.ndarray:
        before, after = curve.loss(D), curve.loss(2 * D)
        return before - after - (epsilon * before if relative else epsilon)

    # Excess parameters only add to a doubling's gain, so the absolute threshold lies at or above the power law's;
    # they also add to the loss, so the relative one may lie on either side.
    tokens = curve.refine(closed, crossing, np.ones_like(closed) if relative else closed)
    step = format_percent(epsilon) if relative else _plain(epsilon)
    step += "" if relative else f" {UNIT_TEXT[fit.unit]}"
    if tokens[0] == 0:
        template = f"for {label}{_at(N)}, no doubling of the data lowers the loss by {step} or more, at any size"
    elif math.isinf(tokens[0]):
        template = (f"for {label}{_at(N)}, every doubling of the data lowers the loss by at least {step}: "
                    f"with a floor of 0 it never saturates")
    else:
        template = (f"for {label}{_at(N)}, beyond about {{value}} tokens{{interval}} one more doubling of the data "
                    f"lowers the loss by less than {step}")
    return _answer(tokens, fit.level, "count", template)


def compute_optimal(fit: Fit, C: float, label: str = "the model") -> ComputeOptimal:
    """The split of C = 6 N D FLOPs that minimises L(N, D) (Hoffmann et al. 2022, Appendix D, eq. 4):
    N_opt = G (C/6)^a and D_opt = G^-1 (C/6)^b, with G = (alpha A / (beta B))^(1/(alpha+beta)),
    a = beta / (alpha+beta) and b = alpha / (alpha+beta)."""
    if fit.form != "chinchilla":
        raise PlannerError(f"form: compute_optimal needs a chinchilla fit L(N, D), not a {fit.form} fit")
    _require_positive(C=C)
    p = _parameters(fit)
    a = p["beta"] / (p["alpha"] + p["beta"])
    b = p["alpha"] / (p["alpha"] + p["beta"])
    G = _G(p)
    N, D = G * (C / 6) ** a, (C / 6) ** b / G
    budget = f"with {format_flops(C)}, {label}"
    return ComputeOptimal(
        C=C,
        N=_answer(N, fit.level, "count", f"{budget} is compute-optimal at about {{value}} parameters{{interval}}"),
        D=_answer(D, fit.level, "count", f"{budget} is compute-optimal on about {{value}} tokens{{interval}}"),
        a=_answer(a, fit.level, "number", f"for {label}, the compute-optimal size grows as C^{{value}}{{interval}}"),
        b=_answer(b, fit.level, "number", f"for {label}, the compute-optimal data grows as C^{{value}}{{interval}}"),
        tokens_per_param=_answer(D / N, fit.level, "number",
                                 f"{budget} is compute-optimal at about {{value}} tokens per parameter{{interval}}"),
        label=label)


def epochs_worth(fit: Fit, U: float, *, N: float | None = None, epsilon: float = 0.01,
                 label: str = "the model") -> EpochsWorth:
    """With U unique tokens, the number of epochs beyond which one more epoch lowers the loss by less than epsilon
    of itself, from D' = U + U R_D (1 - exp(-R / R_D)) with R = epochs - 1.

    No closed form: each parameter set is solved by bisection. The relative gain of an epoch falls as epochs grow
    (log L is convex in R), and an epoch gains at most beta B U^-beta exp(-R / R_D), which brackets the root.
    """
    if fit.form not in ("data_constrained", "data_constrained_D"):
        raise PlannerError(f"form: epochs_worth needs a data-constrained fit, not a {fit.form} fit")
    _require_positive(U=U, epsilon=epsilon)
    if epsilon >= 1:
        raise PlannerError(f"epsilon={epsilon}: a relative gain is below 1; pass a fraction such as 0.01")
    curve = _curve(fit, N)
    B, beta, R_D = curve.B, curve.beta, curve.p["R_D"]
    # Every epoch sees the same U unique tokens, so the model term is fixed: N' depends on U, not on epochs.
    fixed = curve.floor + curve.excess(U)

    def loss(epochs: np.ndarray) -> np.ndarray:
        return fixed + B * (U * _repeated(epochs, R_D)) ** -beta

    def crossing(epochs: np.ndarray) -> np.ndarray:
        return (1 - epsilon) * loss(epochs) - loss(epochs + 1)

    limit = fixed + B * (U * (1 + R_D)) ** -beta
    high = 2 + R_D * np.log(np.maximum(beta * B * U ** -beta / (epsilon * limit), 1.0))
    epochs = _bisect_log(crossing, np.ones_like(high), high)
    worth = _repeated(epochs, R_D)
    step, unique, e = format_percent(epsilon), format_tokens(U), epochs[0]
    fresh_equivalent = _answer(worth, fit.level, "multiple",
                               f"{_plain(e)} epochs over {unique} unique tokens are worth ~{{value}} fresh tokens"
                               f"{{interval}}")
    if e < 1.05:
        template = f"with {unique} unique tokens, {label}{_at(N)} gains less than {step} from a second epoch"
    else:
        template = (f"with {unique} unique tokens, {label}{_at(N)} gains less than {step} per extra epoch beyond "
                    f"about {{value}} epochs{{interval}}; {_plain(e)} epochs are worth ~{_plain(worth[0])}x fresh "
                    f"tokens, so repeated tokens keep {_plain(100 * worth[0] / e)}% of the value of fresh ones")
    low, high_ = _interval(epochs[1:], fit.level)
    return EpochsWorth(float(e), low, high_, fit.level, "number", template, fresh_equivalent)


def effective_data_multiplier(base: Fit, other: Fit, D: float, *, base_label: str = "raw",
                              other_label: str = "filtered") -> Answer:
    """How many `base` tokens one `other` token is worth at D: D_base / D, where L_base(D_base) = L_other(D).
    Infinite when L_other(D) is at or below base's floor: no amount of base data matches it."""
    problems = [f"{name}: effective_data_multiplier needs data laws L(D), not a {fit.form} fit"
                for name, fit in (("base", base), ("other", other)) if fit.form not in ("data", "data_constrained_D")]
    if base.unit != other.unit:
        problems.append(f"other: its loss is in {other.unit}, base's in {base.unit}")
    if problems:
        raise PlannerError("; ".join(problems))
    _require_positive(D=D)
    b, o = _paired(_parameters(base), _parameters(other))
    loss = o["E"] + o["B"] * D ** -o["beta"]
    reachable = loss > b["E"]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        multiplier = np.where(reachable, (b["B"] / (loss - b["E"])) ** (1 / b["beta"]) / D, np.inf)
    at = f"at {format_tokens(D)} tokens"
    if reachable[0]:
        template = f"{at}, one {other_label} token is worth about {{value}} {base_label} tokens{{interval}}"
    else:
        floor = _answer(b["E"], base.level, "loss", "")
        template = (f"{at}, {other_label} data reaches {_loss_text(loss[0], base.unit)}, below the floor of "
                    f"{base_label} data, {_loss_text(floor.value, base.unit)}{floor.interval()}: no amount of "
                    f"{base_label} data matches it")
    return _answer(multiplier, base.level, "number", template)


CROSSOVER_GRID = 512  # log-spaced D at which two curves are compared, per parameter set


@dataclass(frozen=True)
class Crossover(Answer):
    """The D from which `winner` has the lower loss than `loser` for good (value), with an interval over the
    paired bootstrap draws of both fits. value is the lower end of the range searched when the winner is better
    throughout it, and infinite when it is not better at its top (no crossover in or near the measured range)."""

    winner: str = ""
    loser: str = ""
    searched: tuple[float, float] = (math.nan, math.nan)  # the range of D searched
    bounded: bool = False  # whether the statement's interval is finite, so that it may be stated as a finding

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "winner": self.winner, "loser": self.loser, "searched": list(self.searched),
                "bounded": self.bounded}


def crossover(a: Fit, b: Fit, *, D_low: float, D_high: float, far: float, label_a: str = "A",
              label_b: str = "B") -> Crossover:
    """From which D the fitted L(D) of one curve lies below the other's for good: the crossover of two learning
    curves (e.g. two families' envelopes; Hestness et al. 2017 compare model classes by their curves).

    The curves are compared on a log grid from D_low (the smallest D measured) to `far` x D_high (the largest); the
    winner is the curve lower at the top of that range by the point estimate. Each parameter set's crossover is the
    smallest grid D from which the winner stays lower: D_low when it is lower throughout, infinite when it is not
    lower at the top. The interval comes from the two fits' draws paired (as in effective_data_multiplier).
    """
    problems = [f"{name}: crossover needs data laws L(D), not a {fit.form} fit"
                for name, fit in (("a", a), ("b", b)) if fit.form != "data"]
    if a.unit != b.unit:
        problems.append(f"b: its loss is in {b.unit}, a's in {a.unit}")
    if problems:
        raise PlannerError("; ".join(problems))
    _require_positive(D_low=D_low, D_high=D_high, far=far)
    top = far * D_high
    grid = np.geomspace(D_low, top, CROSSOVER_GRID)
    pa, pb = _paired(_parameters(a), _parameters(b))

    def losses(p: dict[str, np.ndarray]) -> np.ndarray:
        return p["E"][:, None] + p["B"][:, None] * grid[None, :] ** -p["beta"][:, None]

    diff = losses(pa) - losses(pb)  # < 0 where a is lower
    a_wins = bool(diff[0, -1] < 0)
    winner, loser = (label_a, label_b) if a_wins else (label_b, label_a)
    lower = diff < 0 if a_wins else diff > 0
    # The first grid index from which the winner stays lower to the top: after the last index where it is not.
    not_lower = ~lower
    last = np.where(not_lower.any(axis=1), CROSSOVER_GRID - 1 - np.argmax(not_lower[:, ::-1], axis=1), -1)
    values = np.where(last == CROSSOVER_GRID - 1, np.inf, grid[np.minimum(last + 1, CROSSOVER_GRID - 1)])
    low, high = _interval(values[1:], a.level)
    value = float(values[0])
    horizon = f"{format_tokens(top)} tokens, {_plain(far)}x the largest D measured"
    if value <= D_low:
        template = (f"{winner} has a lower loss than {loser} throughout the measured range and up to {horizon} "
                    f"in the fitted laws: no crossover lies in or near the measured range")
        bounded = not math.isnan(high) and high <= D_low
    else:
        template = (f"{winner} overtakes {loser} from about {{value}} tokens{{interval}} of training data, "
                    f"and stays ahead up to {horizon}")
        bounded = math.isfinite(high) and not math.isnan(low)
    return Crossover(value, low, high, a.level, "count", template, winner=winner, loser=loser,
                     searched=(float(D_low), float(top)), bounded=bounded)


def _paired(base: dict[str, np.ndarray], other: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """Both fits' parameter arrays with draws side by side: as they are when the counts match, else resampled."""
    n_base, n_other = len(base["E"]) - 1, len(other["E"]) - 1
    if n_base == n_other:
        return base, other
    # Draws of fits bootstrapped apart have no pairing: join them at random, seeded so that answers repeat.
    rng = np.random.default_rng(0)
    n = max(n_base, n_other) if min(n_base, n_other) > 0 else 0

    def take(p: dict[str, np.ndarray], count: int) -> dict[str, np.ndarray]:
        rows = np.concatenate([[0], 1 + rng.integers(count, size=n)])
        return {name: values[rows] for name, values in p.items()}

    return take(base, n_base), take(other, n_other)


@dataclass(frozen=True)
class PlanCost:
    """What training on D tokens takes: the text to collect, the tokens to store, the compute."""

    tokens: float
    epochs: float
    corpus_bytes_to_collect: float  # raw text read before filtering and dedup
    stored_token_bytes: float
    train_flops: float | None  # None when no model size or FLOPs per token was given
    accelerator_hours: float | None  # None when no throughput or peak FLOP/s was given

    def sentence(self) -> str:
        text = (f"{format_tokens(self.tokens)} tokens means collecting about "
                f"{format_bytes(self.corpus_bytes_to_collect)} of raw text and storing "
                f"{format_bytes(self.stored_token_bytes)} of tokens")
        if self.train_flops is not None:
            passes = f"{_plain(self.epochs)} epoch{'' if self.epochs == 1 else 's'}"
            text += f"; training on them for {passes} takes {format_flops(self.train_flops)}"
        if self.accelerator_hours is not None:
            text += f", about {_plain(self.accelerator_hours)} accelerator-hours"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "epochs": self.epochs, "corpus_bytes_to_collect": self.corpus_bytes_to_collect,
                "stored_token_bytes": self.stored_token_bytes, "train_flops": self.train_flops,
                "accelerator_hours": self.accelerator_hours, "sentence": self.sentence()}


def plan_cost(D: float, *, N: float | None = None, bytes_per_token: float, yield_fraction: float = 1.0,
              token_bytes: int = 2, flops_per_token: float | None = None, throughput_flops: float | None = None,
              peak_flops: float | None = None, utilization: float = 0.4, epochs: float = 1.0) -> PlanCost:
    """The cost of training on D unique tokens for `epochs` passes.

    Raw text to collect is D * bytes_per_token / yield_fraction, where yield_fraction is the share of read bytes
    that filtering and dedup keep; stored tokens take D * token_bytes. Training takes (flops_per_token or 6 N) *
    D * epochs FLOPs and FLOPs / (throughput_flops or peak_flops * utilization) / 3600 accelerator-hours.

    Compute is optional: without N or flops_per_token there are no FLOPs, and without throughput_flops or
    peak_flops no hours, so a data-only plan needs neither. Hardware without a way to count FLOPs is an error,
    as is either quantity given two ways (N and flops_per_token, throughput_flops and peak_flops).
    """
    _require_positive(D=D, N=N, bytes_per_token=bytes_per_token, yield_fraction=yield_fraction,
                      token_bytes=token_bytes, flops_per_token=flops_per_token, throughput_flops=throughput_flops,
                      peak_flops=peak_flops, utilization=utilization, epochs=epochs)
    problems = []
    if yield_fraction > 1:
        problems.append(f"yield_fraction={yield_fraction}: kept bytes cannot exceed read bytes")
    if utilization > 1:
        problems.append(f"utilization={utilization}: a share of peak, at most 1")
    if N is not None and flops_per_token is not None:
        problems.append("N, flops_per_token: give one (FLOPs per token is 6 N when only N is given)")
    if throughput_flops is not None and peak_flops is not None:
        problems.append("throughput_flops, peak_flops: give one (throughput is peak_flops * utilization)")
    hardware = throughput_flops is not None or peak_flops is not None
    if hardware and N is None and flops_per_token is None:
        problems.append("N: accelerator-hours need the FLOPs, from N or flops_per_token")
    if problems:
        raise PlannerError("; ".join(problems))
    # Every value given is positive by now, so `or` picks the one given.
    per_token = flops_per_token or (6 * N if N is not None else None)
    flops = per_token * D * epochs if per_token is not None else None
    speed = throughput_flops or (peak_flops * utilization if peak_flops is not None else None)
    return PlanCost(tokens=D, epochs=epochs, corpus_bytes_to_collect=D * bytes_per_token / yield_fraction,
                    stored_token_bytes=D * token_bytes, train_flops=flops,
                    accelerator_hours=None if flops is None or speed is None else flops / speed / 3600)
