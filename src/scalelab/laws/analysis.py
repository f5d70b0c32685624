"""From study results (or a CSV of published points) to fitted laws, backtests and planner answers.

Points are grouped by family and variant. The form follows the design: repeated data (U < D) -> the
data-constrained law; several model sizes and several data sizes -> the joint L(N, D); otherwise L(D).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from scalelab.errors import ConfigError, DataError
from scalelab.laws import planner
from scalelab.laws.fit import Backtest, Fit, LawFitError, backtest, fit_law
from scalelab.laws.units import Unit

LOSS_COLUMN = {"nats": "loss", "bits_per_byte": "bits_per_byte"}
REQUIRED = ("D",)
NUMERIC = ("D", "N", "U", "loss", "bits_per_byte")
FAR = 1000  # an answer beyond FAR x the largest D measured is an extrapolation too far to state as a number


def load_points(source: Path) -> Any:
    """A frame with one row per finished run: from a study directory (or spec), or a CSV (columns N, D, loss,
    and optionally U, bits_per_byte, family, variant, size). Rows are numbered from 1, a CSV's in file order after
    the header, so that an error can name them."""
    if source.suffix.lower() == ".csv":
        frame = _read_csv(source)
    else:
        from scalelab.study.api import load_results

        frame = load_results(source)
        frame = frame[frame["status"] == "done"]
    missing = [c for c in REQUIRED if c not in frame.columns]
    if "loss" not in frame.columns and "bits_per_byte" not in frame.columns:
        missing.append("loss (or bits_per_byte)")
    if missing:
        raise DataError(f"{source}: missing column(s) {', '.join(missing)}; columns are {', '.join(frame.columns)}")
    for column, default in (("family", "model"), ("variant", "data"), ("U", None)):
        if column not in frame.columns:
            frame[column] = frame["D"] if column == "U" else default
    frame["U"] = frame["U"].fillna(frame["D"])
    frame.index = range(1, len(frame) + 1)
    return frame


def _read_csv(source: Path) -> Any:
    import pandas as pd

    if not source.is_file():
        raise DataError(f"no such CSV file: {source}")
    try:
        frame = pd.read_csv(source)
    except (ValueError, OSError) as exc:
        raise DataError(f"{source} is not a readable CSV: {exc}") from None
    for column in NUMERIC:
        if column not in frame.columns or pd.api.types.is_numeric_dtype(frame[column]):
            continue
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = (values.isna() & frame[column].notna()).to_numpy()
        if bad.any():
            row = int(np.argmax(bad))
            raise DataError(f"{source}: row {row + 1}, column {column}: {frame[column].iloc[row]!r} is not a number"
                            + (f" ({int(bad.sum())} rows in all)" if bad.sum() > 1 else ""))
        frame[column] = values
    return frame


def check_options(*, bootstrap: int = 200, target: float | None = None, epsilon: float = 0.01,
                  level: float = 0.9) -> None:
    """Refuse settings no fit or answer can use, all problems in one ConfigError. `analyse` calls it; a caller
    with slow work before `analyse` (loading a study) calls it first too."""
    problems = []
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, (int, np.integer)) or bootstrap < 0:
        problems.append(f"bootstrap must be a count of resamples, 0 or more (got {bootstrap!r})")
    if target is not None and not (math.isfinite(target) and target > 0):
        problems.append(f"the target loss must be a positive finite number (got {target})")
    if not 0 < epsilon < 1:  # false for NaN too
        problems.append(f"epsilon must lie strictly between 0 and 1 (got {epsilon})")
    if not 0 < level < 1:
        problems.append(f"level must lie strictly between 0 and 1 (got {level})")
    if problems:
        raise ConfigError("; ".join(problems))


def _check_points(frame: Any, column: str) -> None:
    """Every value a fit uses must be a finite number: dropping a point silently would fit other data than given.
    Rows are named by the frame's index (load_points numbers them from 1)."""
    for name in ("D", "U", column):
        if name not in frame.columns:
            continue
        bad = ~np.isfinite(frame[name].to_numpy(dtype=float))
        if bad.any():
            row = frame.iloc[int(np.argmax(bad))]
            raise DataError(f"row {row.name} ({row['family']} {row['variant']}, D={row['D']:g}), column {name}: "
                            f"{row[name]:g} is not a finite number"
                            + (f" ({int(bad.sum())} rows in all)" if bad.sum() > 1 else ""))


def choose_form(group: Any) -> str:
    repeated = bool((group["U"] < group["D"]).any())
    has_n = "N" in group.columns and group["N"].notna().all() and group["N"].nunique() > 1
    if repeated:
        return "data_constrained" if has_n else "data_constrained_D"
    return "chinchilla" if has_n and group["D"].nunique() > 1 else "data"


def _inputs(group: Any, form: str) -> dict[str, np.ndarray]:
    columns = {"data": ("D",), "chinchilla": ("N", "D"), "data_constrained": ("N", "D", "U"),
               "data_constrained_D": ("D", "U")}[form]
    return {c: group[c].to_numpy(dtype=float) for c in columns}


AnyAnswer = planner.Answer | planner.ComputeOptimal  # EpochsWorth is an Answer


@dataclass(frozen=True)
class GroupAnalysis:
    """One (family, variant) group: its law, backtest and planner answers, or why no law could be fitted."""

    family: str
    variant: str
    form: str  # the law chosen for the group's design (choose_form)
    points: int
    fit: Fit | None = None  # None when the law could not be fitted, and `error` says why
    error: str | None = None
    backtest: Backtest | None = None  # None with fewer than 4 distinct D, or when the backtest's fit failed
    answers: dict[str, AnyAnswer] = field(default_factory=dict)  # by question, in the order they were asked
    answers_error: str | None = None  # why a question could not be answered (the later ones were not asked)

    def to_dict(self) -> dict[str, Any]:
        known = {"family": self.family, "variant": self.variant, "form": self.form, "points": self.points}
        if self.fit is None:
            return {**known, "error": self.error}
        answers: dict[str, Any] = {name: answer.to_dict() for name, answer in self.answers.items()}
        if self.answers_error is not None:
            answers["error"] = self.answers_error
        return {**known, "fit": self.fit.to_dict(),
                "observed": {"D": self.fit.X["D"].tolist(), "loss": self.fit.loss.tolist()},
                "backtest": None if self.backtest is None else self.backtest.to_dict(), "answers": answers}


@dataclass(frozen=True)
class Multiplier:
    """How many `base` tokens one `other` token is worth at D, within one family."""

    family: str
    base: str
    other: str
    D: float
    answer: planner.Answer

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, "base": self.base, "other": self.other, "D": self.D, **self.answer.to_dict()}


@dataclass(frozen=True)
class Analysis:
    """What `analyse` found: every group's law and answers, the variants compared, and the findings in words."""

    unit: Unit
    level: float  # the intervals' coverage
    epsilon: float  # saturation: a doubling gains less than this share of the loss
    target: float | None  # the loss planned for; None: 5% below each group's best observed loss
    groups: list[GroupAnalysis]
    multipliers: list[Multiplier]
    sentences: list[str]

    @property
    def fits(self) -> dict[tuple[str, str], Fit]:
        """The fitted laws by (family, variant)."""
        return {(g.family, g.variant): g.fit for g in self.groups if g.fit is not None}

    def to_dict(self) -> dict[str, Any]:
        return {"unit": self.unit, "level": self.level, "epsilon": self.epsilon, "target": self.target,
                "groups": [g.to_dict() for g in self.groups], "multipliers": [m.to_dict() for m in self.multipliers],
                "sentences": list(self.sentences)}


def analyse(frame: Any, *, unit: Unit = "bits_per_byte", bootstrap: int = 200, seed: int = 0,
            target: float | None = None, epsilon: float = 0.01, level: float = 0.9) -> Analysis:
    """Fit every (family, variant) group and answer the planning questions; `to_dict()` of the result is JSON."""
    check_options(bootstrap=bootstrap, target=target, epsilon=epsilon, level=level)
    column = LOSS_COLUMN[unit]
    if column not in frame.columns:
        others = [u for u, c in LOSS_COLUMN.items() if c != column and c in frame.columns]
        raise ConfigError(f"--unit {unit}: the points have no {column!r} column; columns are "
                          f"{', '.join(map(str, frame.columns))}"
                          + "".join(f"; for {LOSS_COLUMN[u]!r} pass --unit {u}" for u in others))
    _check_points(frame, column)
    groups = []
    for (family, variant), group in frame.groupby(["family", "variant"], sort=True):
        form = choose_form(group)
        known = {"family": family, "variant": variant, "form": form, "points": int(len(group))}
        try:
            X, loss = _inputs(group, form), group[column].to_numpy(dtype=float)
            fit = fit_law(form, X, loss, unit=unit, bootstrap=bootstrap, seed=seed, level=level)
        except LawFitError as exc:
            groups.append(GroupAnalysis(**known, error=str(exc)))
            continue
        answers, answers_error = _answers(fit, form, group, target, epsilon, f"the {family} ({variant})")
        groups.append(GroupAnalysis(**known, fit=fit, backtest=_backtest(form, X, loss, unit, seed),
                                    answers=answers, answers_error=answers_error))
    fits = {(g.family, g.variant): g.fit for g in groups if g.fit is not None}
    if not fits:
        reasons = "; ".join(f"{g.family} ({g.variant}): {g.error}" for g in groups) or "no points"
        raise DataError(f"no law could be fitted — {reasons}")
    multipliers = _multipliers(fits, frame)
    return Analysis(unit=unit, level=level, epsilon=epsilon, target=target, groups=groups, multipliers=multipliers,
                    sentences=_sentences(groups, multipliers, epsilon))


def _backtest(form: str, X, loss, unit: Unit, seed: int) -> Backtest | None:
    if len(np.unique(X["D"])) < 4:
        return None
    try:
        return backtest(form, X, loss, by="D", holdout=0.25, unit=unit, bootstrap=0, seed=seed)
    except LawFitError:
        return None


def _answers(fit: Fit, form: str, group: Any, target: float | None, epsilon: float,
             label: str) -> tuple[dict[str, AnyAnswer], str | None]:
    """The planner's answers for one group, and why the rest are missing when a question could not be answered."""
    answers: dict[str, AnyAnswer] = {}
    n = float(group["N"].max()) if form in ("chinchilla", "data_constrained") else None
    largest = float(group["D"].max())
    goal = target if target is not None else float(group[LOSS_COLUMN[fit.unit]].min()) * 0.95
    try:
        answers["data_for_loss"] = planner.data_for_loss(fit, goal, N=n, label=label)
        answers["doubling_gain"] = planner.doubling_gain(fit, largest, N=n, label=label)
        answers["saturation"] = _as_stated(planner.saturation(fit, epsilon, N=n, label=label), fit, largest,
                                           epsilon, label)
        if form == "chinchilla":
            answers["compute_optimal"] = planner.compute_optimal(fit, 6 * n * largest * 10, label=label)
        if form.startswith("data_constrained"):
            answers["epochs_worth"] = planner.epochs_worth(fit, float(group["U"].min()), N=n, epsilon=epsilon,
                                                          label=label)
    except planner.PlannerError as exc:
        return answers, str(exc)
    return answers, None


def _as_stated(saturation: planner.Answer, fit: Fit, largest: float, epsilon: float, label: str) -> planner.Answer:
    """The saturation answer as the analysis states it: a point beyond FAR x the largest D measured is no number
    to plan with, so its sentence says so instead; the value and interval stay for those who want them."""
    horizon = FAR * largest
    if not saturation.value > horizon:
        return saturation
    return replace(saturation, template=(
        f"{label} shows no sign of saturating in the data measured: its fitted floor is near "
        f"{fit.params['E']:.3g}, so a doubling keeps gaining over {planner.format_percent(epsilon)} far beyond "
        f"{planner.format_tokens(horizon)} tokens"))


def _multipliers(fits: dict[tuple[str, str], Fit], frame: Any) -> list[Multiplier]:
    """Effective-data multiplier of each variant against the family's first variant (raw when present)."""
    out = []
    for family in sorted({f for f, _ in fits}):
        variants = sorted((v for f, v in fits if f == family), key=lambda v: (v != "raw", v))
        base = variants[0] if variants else None
        for other in variants[1:]:
            if fits[family, base].form != "data" or fits[family, other].form != "data":
                continue
            d = float(frame[(frame["family"] == family) & (frame["variant"] == other)]["D"].max())
            answer = planner.effective_data_multiplier(fits[family, base], fits[family, other], d,
                                                       base_label=base, other_label=other)
            out.append(Multiplier(family=family, base=base, other=other, D=d, answer=answer))
    return out


def _sentences(groups: list[GroupAnalysis], multipliers: list[Multiplier], epsilon: float) -> list[str]:
    sentences = []
    for group in groups:
        if group.fit is None:
            sentences.append(f"the {group.family} ({group.variant}): no fit — {group.error}")
            continue
        sentences += [answer.sentence() for answer in group.answers.values()]
    sentences += [item.answer.sentence() for item in multipliers]
    floors = {(g.family, g.variant): g.answers["saturation"].value for g in groups if "saturation" in g.answers}
    finite = {k: v for k, v in floors.items() if np.isfinite(v)}
    if len(finite) > 1:
        first = min(finite, key=finite.get)
        sentences.append(f"the {first[0]} ({first[1]}) saturates first: beyond about "
                         f"{planner.format_tokens(finite[first])} tokens a doubling gains under "
                         f"{planner.format_percent(epsilon)}")
    return sentences
