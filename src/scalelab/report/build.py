"""The study report: one self-contained directory a person opens from disk.

`build_report` gathers what a study measured (runs, learning curves, the dataset's funnel and metrics), fits its
laws once through `scalelab.laws.analysis.analyse`, draws the figures (plots.py) from that analysis' fits and
writes the page (html.py), the figures as PNG files and everything behind the page as `results.json`. The
directory is built beside its destination and renamed into place, so a failure leaves the previous report, or
none, never half of one.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import platform
from collections import Counter
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from scalelab import __version__
from scalelab.errors import ScalelabError
from scalelab.io import check_replaceable, publish_directory
from scalelab.laws.analysis import LOSS_COLUMN, Analysis, analyse, study_points, unreliable_rows
from scalelab.laws.forms import FORMS
from scalelab.laws.planner import format_tokens
from scalelab.laws.units import Unit
from scalelab.report import html, plots
from scalelab.study.api import open_results, study_directory
from scalelab.study.plan import run_dir
from scalelab.study.results import RunRecord, records_frame
from scalelab.train.rundir import RunDir

__all__ = ["MARKER", "Report", "build_report", "write_report"]

MARKER = ".scalelab-report.json"
SEED = 0  # the bootstrap's seed: a report remade from the same study states the same intervals
# The data metrics read each view's first tokens up to the most any run trained on, and at most this many: on fewer,
# variants that differ later in their order (the demo's duplicates) would measure the same.
DATA_MAX_TOKENS = 5_000_000
PACKAGES = ("scalelab", "torch", "transformers", "numpy", "scipy", "matplotlib")
UNIT_LABEL = {"bits_per_byte": "held-out bits per byte", "nats": "held-out loss, nats per token"}
UNIT_TITLE = {"bits_per_byte": "bits per byte", "nats": "loss in nats per token"}
OTHER_UNIT: dict[str, Unit] = {"bits_per_byte": "nats", "nats": "bits_per_byte"}


class Report(NamedTuple):
    index: Path  # the report's index.html
    analysis: Analysis  # the fits, backtests and answers the report states


def write_report(study_dir: Path, out: Path | None = None, *, unit: Unit = "bits_per_byte",
                 bootstrap: int = 200) -> Path:
    """Write the report of the study in `study_dir` (see `build_report`); returns the path of index.html."""
    return build_report(study_dir, out, unit=unit, bootstrap=bootstrap).index


def build_report(study_dir: Path, out: Path | None = None, *, unit: Unit = "bits_per_byte",
                 bootstrap: int = 200) -> Report:
    """Write the report of the study in `study_dir` to `out` (default STUDY_DIR/report/): index.html, which opens
    from disk with no network, the figures as PNG files, and results.json (the analysis, the runs, the data report
    and the environment; non-finite numbers, such as an interval open above, are written as null). Laws are fitted
    in `unit` with `bootstrap` resamples. Returns index.html's path and the analysis, for a caller that states its
    findings too."""
    study_dir = study_directory(Path(study_dir))
    out = Path(out) if out is not None else study_dir / "report"
    # A report is remade whenever asked: an earlier one is replaced, but never a directory it did not write.
    check_replaceable(out, MARKER, "report", force=True)
    with open_results(study_dir) as store:
        records = store.records()  # read once: the runs table, the points and the environment all come from them
    runs = records_frame(records)
    points = study_points(records, study_dir)
    analysis = analyse(points, unit=unit, bootstrap=bootstrap, seed=SEED)
    data = _data(records, min(DATA_MAX_TOKENS, int(points["D"].max())))
    results = {"study": study_dir.name, "analysis": analysis.to_dict(), "runs": _rows(runs), "data": data,
               "environment": _environment(records)}
    results = _jsonable(results)

    def build(directory: Path) -> None:
        figures = _figures(study_dir, points, runs, analysis)
        for figure in figures:
            (directory / figure.png).write_bytes(figure.png_bytes)
        (directory / "index.html").write_text(html.page(results, figures), encoding="utf-8")
        (directory / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False, allow_nan=False)
                                                + "\n", encoding="utf-8")

    publish_directory(out, build, MARKER, {"scalelab_version": __version__, "study": str(study_dir)})
    return Report(out / "index.html", analysis)


def _group(points: Any, family: str, variant: str, size: str | None = None, analysis: Analysis | None = None) -> Any:
    """A group's points as `analyse` fitted them, in the same order, so that backtest indices refer to them: one
    size's when the family was split by size, without the runs it left out as unreliable."""
    rows = points[(points["family"] == family) & (points["variant"] == variant)]
    if size is not None:
        rows = rows[rows["size"].astype(str) == size]
    if analysis is not None and not analysis.include_unreliable and "reliable" in rows.columns:
        rows = rows[~unreliable_rows(rows)]
    return rows.reset_index(drop=True)


def _series(points: Any, analysis: Analysis, unit: Unit) -> dict[str, list[plots.Series]]:
    """Each group's points split into curves along D: one per model size when the law has N, one per U when data
    repeats (fresh data, U >= D, is one curve). Fits and backtests are attached when `unit` is the fitted one."""
    fitted = unit == analysis.unit
    column = LOSS_COLUMN[unit]
    panels: dict[str, list[plots.Series]] = {}
    for entry in analysis.groups:
        family, variant = entry.name, entry.variant
        group = _group(points, entry.family, variant, entry.size, analysis)
        held = np.zeros(len(group), dtype=bool)
        predicted = np.full(len(group), np.nan)
        if fitted and entry.backtest is not None:
            held[entry.backtest.held_out] = True
            predicted[entry.backtest.held_out] = entry.backtest.predicted
        inputs = FORMS[entry.form].inputs
        repeated = (group["U"] < group["D"]).to_numpy()
        sizes = group["size"].astype(str) if "N" in inputs else None
        keys = [(sizes.iloc[i] if sizes is not None else None, float(group["U"].iloc[i]) if repeated[i] else None)
                for i in range(len(group))]
        for marker, key in zip(itertools.cycle(plots.MARKERS), dict.fromkeys(keys)):
            rows = np.array([k == key for k in keys])
            size, U = key
            fixed = {}
            if size is not None:
                fixed["N"] = float(group["N"][rows].iloc[0])
            if U is not None:
                fixed["U"] = U
            label = " · ".join([variant] + ([size] if size else []) + ([f"U={format_tokens(U)}"] if U else []))
            panels.setdefault(family, []).append(plots.Series(
                label=label, variant=variant, D=group["D"][rows].to_numpy(dtype=float),
                loss=group[column][rows].to_numpy(dtype=float), fit=entry.fit if fitted else None,
                fixed=fixed, held_out=held[rows], predicted=predicted[rows], marker=marker))
    return panels


def _comparisons(points: Any, analysis: Analysis) -> list[plots.Comparison]:
    column = LOSS_COLUMN[analysis.unit]
    fits = analysis.fits
    comparisons = []
    for item in analysis.multipliers:
        family, base, other, answer = item.family, item.base, item.other, item.answer
        entries = {g.variant: g for g in analysis.groups if g.name == family}
        means = [_group(points, entries[v].family, v, entries[v].size, analysis).groupby("D")[column].mean()
                 for v in (base, other)]
        shared = means[0].index.intersection(means[1].index)
        note = (f"effective-data multiplier at {format_tokens(item.D)}: {answer.value:.2f}× "
                f"({answer.low:.2f}–{answer.high:.2f})")
        comparisons.append(plots.Comparison(
            family=family, base=base, other=other, D=shared.to_numpy(dtype=float),
            ratio=(means[1][shared] / means[0][shared]).to_numpy(dtype=float), base_fit=fits[family, base],
            other_fit=fits[family, other], note=note))
    return comparisons


def _learning_runs(study_dir: Path, runs: Any) -> dict[str, list[plots.Run]]:
    """The finished runs that logged steps (the neural ones), from each run directory's metrics log, by family."""
    panels: dict[str, list[plots.Run]] = {}
    for row in runs[runs["status"] == "done"].itertuples():
        path = RunDir(run_dir(study_dir, row.id)).metrics_file
        if not path.is_file():
            continue
        steps, evals = [], []
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            if "eval" in record:
                evals.append((record["tokens"], record["eval"]["nll"]))
            elif "loss" in record:
                steps.append((record["tokens"], record["loss"]))
        if steps:
            step, ev = np.array(steps, dtype=float), np.array(evals, dtype=float).reshape(-1, 2)
            panels.setdefault(row.family, []).append(plots.Run(
                variant=row.variant, D=int(row.D), tokens=step[:, 0], loss=step[:, 1], eval_tokens=ev[:, 0],
                eval_loss=ev[:, 1]))
    return panels


def _figures(study_dir: Path, points: Any, runs: Any, analysis: Analysis) -> list[html.Plot]:
    unit = analysis.unit
    other = OTHER_UNIT[unit]
    colors = plots.variant_colors(sorted(points["variant"].unique(), key=lambda v: (v != "raw", v)))
    fitted = _series(points, analysis, unit)
    drawn = [
        ("scaling", "scaling", f"Held-out {UNIT_TITLE[unit]} against training data: the fitted laws",
         plots.scaling(fitted, colors, title=f"Held-out {UNIT_TITLE[unit]} against D, with the fitted laws",
                       y_label=f"{UNIT_LABEL[unit]} (log scale)")),
        ("scaling", f"scaling-{other.replace('_', '-')}", f"Held-out {UNIT_TITLE[other]} against training data",
         plots.scaling(_series(points, analysis, other), colors,
                       title=f"Held-out {UNIT_TITLE[other]} against D, observed",
                       y_label=f"{UNIT_LABEL[other]} (log scale)")),
    ]
    comparisons = _comparisons(points, analysis)
    repeated = {family: kept for family, series in fitted.items()
                if (kept := [s for s in series if "U" in s.fixed])}
    if comparisons or repeated:
        figure = plots.variants(comparisons, repeated, colors, y_label=f"{UNIT_LABEL[unit]} (log scale)")
        drawn.append(("variants", "variants", figure.get_suptitle(), figure))
    learning = _learning_runs(study_dir, runs)
    if learning:
        drawn.append(("learning-curves", "learning-curves", "Learning curves", plots.learning_curves(learning)))
    return [html.Plot(section=section, id=f"fig-{name}", title=title, svg=plots.svg(figure, f"fig-{name}"),
                      png=f"{name}.png", png_bytes=plots.png(figure)) for section, name, title, figure in drawn]


def _rows(runs: Any) -> list[dict[str, Any]]:
    """The runs table, missing values (NA for runs not done) as None."""
    import pandas as pd

    columns = ["id", "status", "family", "size", "variant", "D", "U", "seed", "loss", "perplexity", "bits_per_byte",
               "tokens_seen", "epochs", "flops", "N", "params", "wall_seconds", "error"]
    # Standard errors of the losses and the reliability mark, where the study recorded them.
    columns += [c for c in ("loss_se", "bits_per_byte_se", "reliable") if c in runs.columns]
    return [{c: None if pd.isna(value) else value for c, value in row.items()}
            for row in runs[columns].to_dict("records")]


def _data(records: list[RunRecord], max_tokens: int) -> dict[str, Any]:
    """The data report of the dataset the runs trained on, or why there is none (a study copied without its
    dataset still gets a report)."""
    from scalelab.data.report import data_report
    from scalelab.data.store import TokenStore

    paths = list(dict.fromkeys(str(r.config["data"]) for r in records if r.config.get("data")))
    if not paths:
        return {"error": "the runs name no dataset"}
    try:
        report = data_report(TokenStore.open(paths[0]), max_tokens=max_tokens)
    except ScalelabError as exc:
        return {"dataset": paths[0], "error": str(exc)}
    return {**report, "other_datasets": paths[1:]}


def _environment(records: list[RunRecord]) -> dict[str, Any]:
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    finished = [r for r in records if r.status == "done" and r.metrics]
    # n-gram runs record no device: they are counted with numpy, on the CPU.
    devices = Counter(f"{r.metrics.get('device', 'cpu')} × {r.metrics.get('world_size', 1)}" for r in finished)
    started = [r.started_at for r in finished if r.started_at]
    ended = [r.finished_at for r in finished if r.finished_at]
    return {
        "python": platform.python_version(), "packages": versions, "platform": platform.platform(),
        "cpu": _cpu(), "cpu_count": os.cpu_count(), "gpu": _gpus(),
        "run_devices": dict(devices),
        "runs_wall_seconds": sum(float(r.metrics.get("wall_seconds") or 0.0) for r in finished),
        "study_elapsed_seconds": max(ended) - min(started) if started and ended else None,
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _cpu() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _gpus() -> list[str]:
    import torch

    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def _jsonable(value: Any) -> Any:
    """Strict JSON: numpy scalars as Python numbers, tuples as lists, and non-finite floats as null, which
    JSON cannot spell (and browsers' JSON.parse rejects as Infinity or NaN)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
