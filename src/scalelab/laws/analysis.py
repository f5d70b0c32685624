"""From study results (or a CSV of published points) to fitted laws, backtests and planner answers.

Points are grouped by family and variant. The form follows the design: repeated data (U < D) -> the
data-constrained law; several model sizes and several data sizes -> the joint L(N, D); otherwise L(D). A family
without a parameter count N (a non-parametric model, such as n-grams of several orders) is split by its size label:
each size is a curve of its own, never pooled into one L(D).

Runs marked unreliable (column `reliable` False: trained too few optimizer steps to measure data) are left out of
the fits unless asked for, and counted.

Where a family was trained at several sizes, its learning-curve envelope (the best loss over sizes at each D) gets an
L(D) fit of its own, as do the sizes one by one (Hestness et al. 2017, §3 and Fig. 1, whose learning curves are the
best model at each training-set size; Kaplan et al. 2020, §3.2, L(D) with early stopping). Each L(D) fit is read for
the regions of Hestness et al. (2017, Fig. 1): where the power law holds within noise, the small-data points before
it, and whether an irreducible floor is visible. Families are compared by the crossover of their L(D) curves.

The findings (`Analysis.sentences`) state no number without its bootstrap interval, and leave out a statement whose
interval is unbounded; a floor E the data do not identify is stated as a bound, never as a value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from scalelab.errors import ConfigError, DataError
from scalelab.laws import planner
from scalelab.laws.fit import RESAMPLING, Backtest, Documents, Fit, Floor, LawFitError, backtest, fit_law, floor
from scalelab.laws.units import UNITS, Unit

LOSS_COLUMN = {"nats": "loss", "bits_per_byte": "bits_per_byte"}
REQUIRED = ("D",)
NUMERIC = ("D", "N", "U", "loss", "bits_per_byte")
FAR = 1000  # an answer beyond FAR x the largest D measured is an extrapolation too far to state as a number
SE_COLUMN = {unit: f"{column}_se" for unit, column in LOSS_COLUMN.items()}  # a loss's standard error, when recorded
DOCUMENT_SIZE = {"nats": "tokens", "bits_per_byte": "bytes"}  # the denominator of the loss, per document
NOISE_Z = 2.0  # a residual beyond this many standard errors is not noise (about 95% two-sided)
MAD_SCALE = 1.4826  # the MAD of normal residuals times this is their standard deviation
MIN_DOCUMENTS = 2
NO_INTERVALS = ("no findings are stated: with no bootstrap resamples the fits have no intervals, and no number is "
                "stated without one (fit with bootstrap > 0)")


def documents_of(metrics: Any) -> dict[str, list] | None:
    """A run's per-document held-out results (eval.json): {"index", "nll", "tokens", "bytes"}, nats per document,
    tokens scored and UTF-8 bytes; None when the run recorded none. The one place that knows where they live."""
    if not isinstance(metrics, dict):
        return None
    evaluation = metrics.get("eval")
    found = evaluation.get("documents") if isinstance(evaluation, dict) else None
    if not isinstance(found, dict) or not {"index", "nll"} <= set(found):
        return None
    return found


def load_points(source: Path) -> Any:
    """A frame with one row per finished run: from a study directory (or spec), or a CSV (columns N, D, loss,
    and optionally U, bits_per_byte, family, variant, size). Rows are numbered from 1, a CSV's in file order after
    the header, so that an error can name them."""
    if source.suffix.lower() == ".csv":
        return checked_points(_read_csv(source), source)
    from scalelab.study.api import open_results

    with open_results(source) as store:
        return study_points(store.records(), source)


def study_points(records: list[Any], source: Path) -> Any:
    """A study's points from its results store's records: the finished runs, each with its per-document results
    where it has them."""
    from scalelab.study.results import records_frame

    runs = records_frame(records)
    return checked_points(_with_documents(runs[runs["status"] == "done"], records), source)


def checked_points(frame: Any, source: Path) -> Any:
    """`frame` with the columns a fit needs, or a DataError naming what is missing."""
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


def _with_documents(frame: Any, records: list[Any]) -> Any:
    """The frame with a `documents` column (each run's per-document results, or None), when any run has them."""
    found = {record.id: documents_of(record.metrics) for record in records}
    if not any(found.values()):
        return frame
    frame = frame.copy()
    frame["documents"] = [found.get(run) for run in frame["id"]]
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
class Regions:
    """The regions of a learning curve (Hestness et al. 2017, Fig. 1), read off an L(D) fit and the noise.

    The power-law region starts at the smallest D from which every residual of the fit (log loss) is within
    NOISE_Z standard errors; the points before it depart from the law beyond noise (the small-data region when they
    lie above it). The irreducible-error region is the floor's verdict (fit.floor)."""

    power_law_from: float | None  # None: the residuals exceed the noise at the largest D, so no region is established
    departing: list[float]  # the leading data sizes off the law, before the power-law region
    above: bool  # whether those points lie above the law on average (the small-data region)
    noise: str  # where the standard errors came from
    floor: Floor | None
    sentence: str

    def to_dict(self) -> dict[str, Any]:
        return {"power_law_from": self.power_law_from, "departing": self.departing, "small_data": self.above,
                "noise": self.noise, "floor": None if self.floor is None else self.floor.to_dict(),
                "sentence": self.sentence}


@dataclass(frozen=True)
class GroupAnalysis:
    """One (family, variant) group, or one size of a family without N: its law, backtest and planner answers, or
    why no law could be fitted."""

    family: str
    variant: str
    form: str  # the law chosen for the group's design (choose_form)
    points: int
    fit: Fit | None = None  # None when the law could not be fitted, and `error` says why
    error: str | None = None
    backtest: Backtest | None = None  # None with fewer than 4 distinct D, or when the backtest's fit failed
    answers: dict[str, AnyAnswer] = field(default_factory=dict)  # by question, in the order they were asked
    answers_error: str | None = None  # why a question could not be answered (the later ones were not asked)
    size: str | None = None  # the size label, when the family is split by size (no N: each size its own curve)
    excluded_unreliable: int = 0  # runs left out as unreliable
    floor: Floor | None = None  # the verdict on E; None without bootstrap draws
    regions: Regions | None = None  # for L(D) fits
    findings: list[str] = field(default_factory=list)  # what the analysis states about this group

    @property
    def name(self) -> str:
        """The curve's name: the family, and its size when the family is split by size ("ngram 3")."""
        return self.family if self.size is None else f"{self.family} {self.size}"

    def to_dict(self) -> dict[str, Any]:
        known = {"family": self.family, "variant": self.variant, "form": self.form, "points": self.points,
                 "size": self.size, "name": self.name, "excluded_unreliable": self.excluded_unreliable}
        if self.fit is None:
            return {**known, "error": self.error, "findings": list(self.findings)}
        answers: dict[str, Any] = {name: answer.to_dict() for name, answer in self.answers.items()}
        if self.answers_error is not None:
            answers["error"] = self.answers_error
        return {**known, "fit": self.fit.to_dict(),
                "observed": {"D": self.fit.X["D"].tolist(), "loss": self.fit.loss.tolist()},
                "backtest": None if self.backtest is None else self.backtest.to_dict(), "answers": answers,
                "floor": None if self.floor is None else self.floor.to_dict(),
                "regions": None if self.regions is None else self.regions.to_dict(),
                "findings": list(self.findings)}


@dataclass(frozen=True)
class Envelope:
    """A family trained at several sizes: at each D the best loss over sizes (the learning-curve envelope), its
    L(D) fit and regions, and each size's own L(D) fit."""

    family: str
    variant: str
    D: np.ndarray
    loss: np.ndarray  # the best size's loss at each D (mean over seeds)
    best: list[str]  # the size with the best loss at each D
    fit: Fit | None
    error: str | None
    per_size: dict[str, Fit | str]  # each size's L(D) fit, or why it has none
    regions: Regions | None
    floor: Floor | None
    findings: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, "variant": self.variant, "D": self.D.tolist(), "loss": self.loss.tolist(),
                "best": list(self.best), "fit": None if self.fit is None else self.fit.to_dict(), "error": self.error,
                "per_size": {size: fit if isinstance(fit, str) else fit.to_dict()
                             for size, fit in self.per_size.items()},
                "regions": None if self.regions is None else self.regions.to_dict(),
                "floor": None if self.floor is None else self.floor.to_dict(), "findings": list(self.findings)}


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
class FamilyCrossover:
    """Where two families' L(D) curves (envelopes where they have several sizes) cross, in one data variant."""

    variant: str
    a: str
    b: str
    answer: planner.Crossover

    def to_dict(self) -> dict[str, Any]:
        return {"variant": self.variant, "a": self.a, "b": self.b, **self.answer.to_dict()}


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
    envelopes: list[Envelope] = field(default_factory=list)
    crossovers: list[FamilyCrossover] = field(default_factory=list)
    excluded_unreliable: int = 0  # runs left out of every fit as unreliable
    include_unreliable: bool = False

    @property
    def fits(self) -> dict[tuple[str, str], Fit]:
        """The fitted laws by (name, variant); the name is the family, with its size when split by size."""
        return {(g.name, g.variant): g.fit for g in self.groups if g.fit is not None}

    @property
    def resampling(self) -> list[str]:
        """The bootstrap resamplings used, in words."""
        used = [g.fit.resampling for g in self.groups if g.fit is not None and len(g.fit.samples)]
        return [RESAMPLING[mode] for mode in dict.fromkeys(used)]

    def to_dict(self) -> dict[str, Any]:
        return {"unit": self.unit, "level": self.level, "epsilon": self.epsilon, "target": self.target,
                "groups": [g.to_dict() for g in self.groups], "multipliers": [m.to_dict() for m in self.multipliers],
                "sentences": list(self.sentences), "envelopes": [e.to_dict() for e in self.envelopes],
                "crossovers": [c.to_dict() for c in self.crossovers],
                "excluded_unreliable": self.excluded_unreliable, "include_unreliable": self.include_unreliable,
                "resampling": self.resampling}


def unreliable_rows(frame: Any) -> np.ndarray:
    """Rows marked unreliable (column `reliable` False); a frame without the column, or a missing value, is
    reliable."""
    if "reliable" not in frame.columns:
        return np.zeros(len(frame), dtype=bool)
    return np.array([value is not None and not (isinstance(value, float) and math.isnan(value)) and not bool(value)
                     for value in frame["reliable"].tolist()], dtype=bool)


def _split_by_size(group: Any) -> bool:
    """A family without model sizes N (a non-parametric model) but several size labels is several curves."""
    if "size" not in group.columns or group["size"].nunique() < 2:
        return False
    return "N" not in group.columns or group["N"].isna().all()


def _curves(frame: Any) -> list[tuple[str, str, str | None, Any]]:
    """(family, variant, size or None, rows) for every curve to fit, in a stable order."""
    out = []
    for (family, variant), group in frame.groupby(["family", "variant"], sort=True):
        if _split_by_size(group):
            for size, rows in group.groupby(group["size"].astype(str), sort=False):
                out.append((family, variant, size, rows))
            out[-group["size"].nunique():] = sorted(out[-group["size"].nunique():], key=lambda c: _size_key(c[2]))
        else:
            out.append((family, variant, None, group))
    return out


def _size_key(size: str) -> tuple[float, str]:
    try:
        return float(size), size
    except ValueError:
        return math.inf, size


def _documents(rows: Any, unit: Unit) -> Documents | None:
    """The rows' per-document results, aligned on the documents every row scored, or None when any row lacks them
    (then the bootstrap resamples points)."""
    if "documents" not in rows.columns:
        return None
    found = [documents_of({"eval": {"documents": d}}) for d in rows["documents"].tolist()]
    size = DOCUMENT_SIZE[unit]
    if not found or any(d is None or size not in d for d in found):
        return None
    shared = set(found[0]["index"])
    for d in found[1:]:
        shared &= set(d["index"])
    if len(shared) < MIN_DOCUMENTS:
        return None
    order = sorted(shared)
    nll, sizes = [], []
    for d in found:
        at = {index: i for i, index in enumerate(d["index"])}
        nll.append([d["nll"][at[i]] for i in order])
        sizes.append([d[size][at[i]] for i in order])
    try:
        return Documents(np.array(nll, dtype=float), np.array(sizes, dtype=float))
    except LawFitError:
        return None


def analyse(frame: Any, *, unit: Unit = "bits_per_byte", bootstrap: int = 200, seed: int = 0,
            target: float | None = None, epsilon: float = 0.01, level: float = 0.9,
            include_unreliable: bool = False) -> Analysis:
    """Fit every (family, variant) group (split by size where the family has no N) and answer the planning
    questions; `to_dict()` of the result is JSON. Runs marked unreliable are left out unless `include_unreliable`."""
    check_options(bootstrap=bootstrap, target=target, epsilon=epsilon, level=level)
    column = LOSS_COLUMN[unit]
    if column not in frame.columns:
        others = [u for u, c in LOSS_COLUMN.items() if c != column and c in frame.columns]
        raise ConfigError(f"--unit {unit}: the points have no {column!r} column; columns are "
                          f"{', '.join(map(str, frame.columns))}"
                          + "".join(f"; for {LOSS_COLUMN[u]!r} pass --unit {u}" for u in others))
    _check_points(frame, column)
    unreliable = unreliable_rows(frame)
    if include_unreliable:
        unreliable[:] = False
    marked = frame.assign(_unreliable=unreliable)
    groups = []
    for family, variant, size, rows in _curves(marked):
        left_out = int(rows["_unreliable"].sum())
        group = rows[~rows["_unreliable"].to_numpy(dtype=bool)].drop(columns="_unreliable")
        name = family if size is None else f"{family} {size}"
        form = choose_form(group) if len(group) else "data"
        known = {"family": family, "variant": variant, "form": form, "points": int(len(group)), "size": size,
                 "excluded_unreliable": left_out}
        label = f"the {name} ({variant})"
        try:
            if not len(group):
                raise LawFitError("no reliable runs")
            X, loss = _inputs(group, form), group[column].to_numpy(dtype=float)
            documents = _documents(group, unit)
            fit = fit_law(form, X, loss, unit=unit, bootstrap=bootstrap, seed=seed, level=level, documents=documents)
        except LawFitError as exc:
            groups.append(GroupAnalysis(**known, error=str(exc),
                                        findings=[f"{label}: no fit — {exc}"] + _left_out(label, left_out)))
            continue
        answers, answers_error = _answers(fit, form, group, target, epsilon, label)
        verdict = floor(fit)
        regions = _regions(fit, _log_se(group, unit, documents), label) if form == "data" else None
        findings = _findings(answers, verdict, fit, label) + ([regions.sentence] if regions and len(fit.samples)
                                                              else []) + _left_out(label, left_out)
        groups.append(GroupAnalysis(**known, fit=fit, backtest=_backtest(form, X, loss, unit, seed, bootstrap, level,
                                                                          documents),
                                    answers=answers, answers_error=answers_error, floor=verdict, regions=regions,
                                    findings=findings))
    if not any(g.fit is not None for g in groups):
        reasons = "; ".join(f"{g.name} ({g.variant}): {g.error}" for g in groups) or "no points"
        raise DataError(f"no law could be fitted — {reasons}")
    reliable = frame[~unreliable]
    envelopes = _envelopes(reliable, groups, unit, bootstrap, seed, level)
    multipliers = _multipliers(groups, reliable)
    crossovers = _crossovers(reliable, groups, envelopes)
    sentences = _sentences(groups, multipliers, envelopes, crossovers, epsilon, bootstrap, int(unreliable.sum()))
    return Analysis(unit=unit, level=level, epsilon=epsilon, target=target, groups=groups, multipliers=multipliers,
                    sentences=sentences, envelopes=envelopes, crossovers=crossovers,
                    excluded_unreliable=int(unreliable.sum()), include_unreliable=include_unreliable)


def _left_out(label: str, count: int) -> list[str]:
    if not count:
        return []
    return [f"{label}: {count} run{'s' if count > 1 else ''} marked unreliable (too few optimizer steps to measure "
            f"data) {'were' if count > 1 else 'was'} left out of the fit"]


def _log_se(rows: Any, unit: Unit, documents: Documents | None) -> tuple[np.ndarray | None, str]:
    """Each point's standard error of log loss, and where it came from; None without any."""
    loss = rows[LOSS_COLUMN[unit]].to_numpy(dtype=float)
    column = SE_COLUMN[unit]
    if column in rows.columns:
        se = rows[column].to_numpy(dtype=float)
        if np.isfinite(se).all() and (se > 0).all():
            return se / loss, "the recorded standard errors of the losses"
    if documents is not None:
        return documents.standard_errors(loss) / loss, "a bootstrap over held-out documents"
    return None, "the scatter of the residuals (median absolute deviation)"


def _regions(fit: Fit, noise: tuple[np.ndarray | None, str], label: str) -> Regions:
    """Hestness et al. (2017, Fig. 1) regions of an L(D) fit: the power-law region starts at the smallest data size
    from which a power law fitted to that size and the larger ones leaves every residual (log loss) within NOISE_Z
    standard errors; the sizes before it are the small-data region when they lie above that law. Refits need 4
    distinct sizes; with none that fits within noise, no power-law region is established."""
    se, source = noise
    sizes, loss = fit.X["D"], fit.loss
    if se is None:
        residual = np.log(loss) - np.log(fit.predict(fit.X))
        mad = float(np.median(np.abs(residual - np.median(residual))))
        # The residuals of a fit with p parameters are tighter than the noise by about sqrt((n - p) / n).
        dof = max(len(residual) - len(fit.params), 1) / len(residual)
        se = np.full(len(residual), max(MAD_SCALE * mad / math.sqrt(dof), 1e-4))
    verdict = floor(fit)
    distinct = np.unique(sizes)
    start, region_fit = None, None
    for k in range(max(len(distinct) - len(fit.params), 1)):
        keep = sizes >= distinct[k]
        try:
            candidate = fit if k == 0 else fit_law("data", {"D": sizes[keep]}, loss[keep], unit=fit.unit,
                                                   bootstrap=0)
        except LawFitError:
            break
        residual = np.log(loss[keep]) - np.log(candidate.predict({"D": sizes[keep]}))
        if (np.abs(residual) <= NOISE_Z * se[keep]).all():
            start, region_fit = float(distinct[k]), candidate
            break
    rule = f"{NOISE_Z:g} standard errors, from {source}"
    if start is None or region_fit is None:
        return Regions(power_law_from=None, departing=[], above=False, noise=source, floor=verdict, sentence=(
            f"{label}: no power law fits the measured points within noise ({rule}) down to the "
            f"{len(fit.params) + 1} largest data sizes, so no power-law region is established"))
    departing = [float(d) for d in distinct if d < start]
    early = sizes < start
    above = bool(departing) and bool((np.log(loss[early]) > np.log(region_fit.predict({"D": sizes[early]}))).mean()
                                     > 0.5)
    law = f"{label}: the power law holds within noise ({rule}) from {planner.format_tokens(start)} tokens on"
    if departing:
        kind = ("above it: the small-data region of Hestness et al. (2017)" if above
                else "off it by more than the noise")
        many = len(departing) > 1
        law += (f"; the {len(departing)} smaller data size{'s' if many else ''} "
                f"(up to {planner.format_tokens(departing[-1])}) {'lie' if many else 'lies'} {kind}")
    return Regions(power_law_from=start, departing=departing, above=above, noise=source, floor=verdict, sentence=law)


def _floor_sentence(verdict: Floor, unit: Unit, label: str) -> str:
    text = planner.UNIT_TEXT[unit]
    level = planner.format_percent(verdict.level)

    def loss(x: float) -> str:
        return planner.FORMAT["loss"](x)

    if not verdict.identified:
        return f"{label}: no floor is visible in the measured data (E < {loss(verdict.bound)} {text} at {level})"
    interval = f"{loss(verdict.value)} {text} ({loss(verdict.low)}-{loss(verdict.high)} at {level})"
    if verdict.approached:
        return f"{label}: an irreducible floor is visible: E = {interval}, and the measured losses approach it"
    return (f"{label}: the fitted floor is E = {interval}, but the measured losses are still well above it "
            f"(the power-law region, not yet the irreducible-error region)")


def _bounded(answer: planner.Answer) -> bool:
    values = (answer.value, answer.low, answer.high)
    return all(math.isfinite(v) for v in values)


def stated(answer: AnyAnswer, verdict: Floor | None, horizon: float = math.inf) -> str | None:
    """The answer's sentence as a finding, or None when the data do not support stating it: a number without a
    bounded interval (a token count whose interval reaches past `horizon` is as good as unbounded), or a statement
    that rests on an unidentified floor (or on a floor of 0)."""
    if isinstance(answer, planner.ComputeOptimal):
        parts = (answer.N, answer.D, answer.tokens_per_param)
        return answer.sentence() if all(_bounded(p) for p in parts) else None
    if isinstance(answer, planner.EpochsWorth):
        fresh = answer.fresh_equivalent
        if not (_bounded(answer) and _bounded(fresh)) or "{value}" not in answer.template:
            return None
        # The planner's sentence adds figures without intervals after ";": state the worth with its interval.
        head = answer.template.split(";")[0].replace("{value}", planner.FORMAT[answer.kind](answer.value))
        return (f"{head.replace('{interval}', answer.interval())}; those epochs are worth about "
                f"{planner.FORMAT[fresh.kind](fresh.value)}{fresh.interval()} of the unique tokens, fresh")
    if math.isinf(answer.value) and "never reaches" in answer.template:
        # Unreachable: the sentence states the floor, with its interval; only a floor the data identify.
        return answer.sentence() if verdict is not None and verdict.identified else None
    if math.isinf(answer.value) and "floor of 0" in answer.template:
        return None  # the floor's own sentence says what the data show about it
    if "{value}" not in answer.template:
        return answer.sentence()  # no estimated number in it
    if answer.kind == "count" and answer.high > horizon:
        return None
    return answer.sentence() if _bounded(answer) else None


def _findings(answers: dict[str, AnyAnswer], verdict: Floor | None, fit: Fit, label: str) -> list[str]:
    if not len(fit.samples):
        return []
    horizon = FAR * float(fit.X["D"].max())
    findings = [sentence for answer in answers.values()
                if (sentence := stated(answer, verdict, horizon)) is not None]
    if verdict is not None:
        findings.append(_floor_sentence(verdict, fit.unit, label))
    return findings


def _backtest(form: str, X, loss, unit: Unit, seed: int, bootstrap: int = 0, level: float = 0.9,
              documents: Documents | None = None) -> Backtest | None:
    if len(np.unique(X["D"])) < 4:
        return None
    try:
        return backtest(form, X, loss, by="D", holdout=0.25, unit=unit, bootstrap=bootstrap, seed=seed, level=level,
                        documents=documents)
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
        answers["saturation"] = _as_stated(planner.saturation(fit, epsilon, N=n, label=label), largest, epsilon,
                                           label)
        if form == "chinchilla":
            answers["compute_optimal"] = planner.compute_optimal(fit, 6 * n * largest * 10, label=label)
        if form.startswith("data_constrained"):
            answers["epochs_worth"] = planner.epochs_worth(fit, float(group["U"].min()), N=n, epsilon=epsilon,
                                                          label=label)
    except planner.PlannerError as exc:
        return answers, str(exc)
    return answers, None


def _as_stated(saturation: planner.Answer, largest: float, epsilon: float, label: str) -> planner.Answer:
    """The saturation answer as the analysis states it: a point beyond FAR x the largest D measured is no number
    to plan with, so its sentence says so instead, with no number but the horizon: that the curve shows no sign of
    saturating when its whole interval lies beyond the horizon, that the data do not settle it otherwise. The
    value and interval stay for those who want them."""
    horizon = FAR * largest
    if not saturation.value > horizon:
        return saturation
    step, far = planner.format_percent(epsilon), planner.format_tokens(horizon)
    if saturation.low > horizon:
        return replace(saturation, template=(
            f"{label} shows no sign of saturating in the data measured: a doubling keeps gaining over {step} far "
            f"beyond {far} tokens ({FAR:,}x the largest D measured), across the "
            f"{planner.format_percent(saturation.level)} interval"))
    return replace(saturation, template=(
        f"the data do not settle where a doubling stops gaining {step} for {label}: the fit puts it beyond {far} "
        f"tokens ({FAR:,}x the largest D measured), but its {planner.format_percent(saturation.level)} interval "
        f"reaches back inside that range"))


def _fresh(rows: Any) -> Any:
    return rows[(rows["U"] >= rows["D"]).to_numpy()]


def _envelopes(frame: Any, groups: list[GroupAnalysis], unit: Unit, bootstrap: int, seed: int,
               level: float) -> list[Envelope]:
    """The learning-curve envelope of each (family, variant) trained at several sizes, on fresh data (U >= D)."""
    column = LOSS_COLUMN[unit]
    out = []
    if "size" not in frame.columns:
        return out
    for (family, variant), rows in frame.groupby(["family", "variant"], sort=True):
        rows = _fresh(rows)
        if rows["size"].nunique() < 2:
            continue
        sizes = rows["size"].astype(str)
        means = rows.groupby([rows["D"], sizes])[column].mean()
        best = {float(D): str(means.loc[D].idxmin()) for D in means.index.get_level_values(0).unique()}
        keep = np.array([best[float(D)] == size for D, size in zip(rows["D"], sizes, strict=True)])
        chosen = rows[keep]
        D = np.array(sorted(best))
        label = f"the {family} ({variant}, best size at each D)"
        per_size: dict[str, Fit | str] = {}
        for size, part in rows.groupby(sizes, sort=False):
            split = next((g for g in groups if g.family == family and g.variant == variant and g.size == size), None)
            if split is not None:
                per_size[size] = split.fit if split.fit is not None else str(split.error)
                continue
            try:
                per_size[size] = fit_law("data", {"D": part["D"].to_numpy(dtype=float)},
                                         part[column].to_numpy(dtype=float), unit=unit, bootstrap=bootstrap,
                                         seed=seed, level=level, documents=_documents(part, unit))
            except LawFitError as exc:
                per_size[size] = str(exc)
        per_size = dict(sorted(per_size.items(), key=lambda item: _size_key(item[0])))
        envelope_loss = np.array([means.loc[(d, best[d])] for d in D])
        try:
            documents = _documents(chosen, unit)
            fit = fit_law("data", {"D": chosen["D"].to_numpy(dtype=float)}, chosen[column].to_numpy(dtype=float),
                          unit=unit, bootstrap=bootstrap, seed=seed, level=level, documents=documents)
        except LawFitError as exc:
            out.append(Envelope(family, variant, D, envelope_loss, [best[d] for d in D], None, str(exc), per_size,
                                None, None, [f"{label}: no fit of the envelope — {exc}"]))
            continue
        verdict = floor(fit)
        regions = _regions(fit, _log_se(chosen, unit, documents), label)
        findings = []
        if len(fit.samples):
            beta = fit.intervals["beta"]
            findings.append(f"{label}: the envelope falls as D^-{planner.FORMAT['number'](fit.params['beta'])} "
                            f"({planner.FORMAT['number'](beta[0])}-{planner.FORMAT['number'](beta[1])} at "
                            f"{planner.format_percent(level)})")
            findings.append(regions.sentence)
            if verdict is not None:
                findings.append(_floor_sentence(verdict, unit, label))
        out.append(Envelope(family, variant, D, envelope_loss, [best[d] for d in D], fit, None, per_size, regions,
                            verdict, findings))
    return out


def _multipliers(groups: list[GroupAnalysis], frame: Any) -> list[Multiplier]:
    """Effective-data multiplier of each variant against the curve's first variant (raw when present), for each
    family (and size, where the family is split by size)."""
    fits = {(g.name, g.variant): g for g in groups if g.fit is not None}
    out = []
    for name in sorted({n for n, _ in fits}):
        variants = sorted((v for n, v in fits if n == name), key=lambda v: (v != "raw", v))
        base = variants[0] if variants else None
        for other in variants[1:]:
            if fits[name, base].fit.form != "data" or fits[name, other].fit.form != "data":
                continue
            d = float(fits[name, other].fit.X["D"].max())
            answer = planner.effective_data_multiplier(fits[name, base].fit, fits[name, other].fit, d,
                                                       base_label=base, other_label=other)
            out.append(Multiplier(family=name, base=base, other=other, D=d, answer=answer))
    return out


def _crossovers(frame: Any, groups: list[GroupAnalysis], envelopes: list[Envelope]) -> list[FamilyCrossover]:
    """Where the L(D) curves of two families cross, per variant: the envelope where a family has several sizes,
    else its one L(D) fit."""
    curves: dict[str, dict[str, Fit]] = {}
    for envelope in envelopes:
        if envelope.fit is not None:
            curves.setdefault(envelope.variant, {})[envelope.family] = envelope.fit
    for g in groups:
        if g.fit is not None and g.fit.form == "data" and g.size is None:
            curves.setdefault(g.variant, {}).setdefault(g.family, g.fit)
    out = []
    for variant, fits in sorted(curves.items()):
        families = sorted(fits)
        for i, a in enumerate(families):
            for b in families[i + 1:]:
                D = np.concatenate([fits[a].X["D"], fits[b].X["D"]])
                try:
                    answer = planner.crossover(fits[a], fits[b], D_low=float(D.min()), D_high=float(D.max()),
                                               far=FAR, label_a=f"the {a} ({variant})", label_b=f"the {b} ({variant})")
                except planner.PlannerError:
                    continue
                out.append(FamilyCrossover(variant=variant, a=a, b=b, answer=answer))
    return out


def _crossover_sentence(item: FamilyCrossover) -> str | None:
    answer = item.answer
    if not len(answer.template) or math.isnan(answer.low):
        return None
    if answer.bounded:
        return answer.sentence()
    return (f"the data do not settle where the {item.a} and the {item.b} ({item.variant}) cross: the interval of "
            f"the crossover is open (up to {planner.format_tokens(answer.searched[1])} tokens, "
            f"{planner.FORMAT['number'](FAR)}x the largest D measured)")


def _sentences(groups: list[GroupAnalysis], multipliers: list[Multiplier], envelopes: list[Envelope],
               crossovers: list[FamilyCrossover], epsilon: float, bootstrap: int, left_out: int) -> list[str]:
    if not bootstrap:
        sentences = [NO_INTERVALS]
        sentences += [f for g in groups for f in g.findings]  # only the no-fit and left-out notes
        return sentences
    sentences = [f for g in groups for f in g.findings]
    sentences += [s for item in multipliers if (s := stated(item.answer, None)) is not None]
    sentences += [f for e in envelopes for f in e.findings]
    sentences += [s for item in crossovers if (s := _crossover_sentence(item)) is not None]
    floors = {(g.name, g.variant): g.answers["saturation"] for g in groups if "saturation" in g.answers}
    finite = {k: a for k, a in floors.items() if _bounded(a) and a.value > 0}
    if len(finite) > 1:
        first = min(finite, key=lambda k: finite[k].value)
        answer = finite[first]
        if all(answer.high < other.low for k, other in finite.items() if k != first):
            sentences.append(f"the {first[0]} ({first[1]}) saturates first: beyond about "
                             f"{planner.format_tokens(answer.value)} tokens{answer.interval()} a doubling gains "
                             f"under {planner.format_percent(epsilon)}")
    if left_out:
        sentences.append(f"{left_out} run{'s' if left_out > 1 else ''} marked unreliable (trained too few optimizer "
                         f"steps to measure data) {'were' if left_out > 1 else 'was'} left out of the fits; "
                         "include them with --include-unreliable")
    return sentences


__all__ = ["FAR", "LOSS_COLUMN", "UNITS", "Analysis", "Envelope", "FamilyCrossover", "GroupAnalysis", "Multiplier",
           "Regions", "analyse", "check_options", "choose_form", "documents_of", "load_points", "stated"]
