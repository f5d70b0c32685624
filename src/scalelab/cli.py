"""The `scalelab` command. Each command is a thin layer over the library; errors end in one line, exit 2."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from scalelab import __version__
from scalelab.choices import Backend, EvalSplit, ExportFormat, Quantize, Regime, Scale
from scalelab.deploy.params import GENERATE_DEFAULTS, SamplingParams, ServeConfig
from scalelab.errors import ScalelabError
from scalelab.laws.units import Unit
from scalelab.models import registry
from scalelab.progress import stderr_console

if TYPE_CHECKING:
    from scalelab.laws.analysis import Analysis

app = typer.Typer(
    name="scalelab",
    help="How much data, and which data, does a language model need? Prepare corpora, train, fit scaling laws.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # Help is plain text: under rich markup, bracketed text such as [default: ...] would vanish.
    rich_markup_mode=None,
)
console = Console()

DEFAULT_DATASETS = Path("datasets")

ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file.")]


def _set_option(example: str) -> Any:
    return Annotated[list[str] | None, typer.Option(
        "--set", "-s", help=f"Set a config field, over --config and under this command's own flags: --set {example} "
                            "(repeatable).")]


PrepareSet = _set_option("split.validation=0.05")
TrainSet = _set_option("optim.lr=0.001")
StudySet = _set_option("seeds=[0,1,2]")


def _version(value: bool) -> None:
    if value:
        console.print(f"scalelab {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    """scalelab: data-scaling experiments for language models."""


def _prepare_config(sources: list[str], out: Path | None, config: Path | None, overrides: list[str],
                    workers: int | None, strict: bool, filters: str | None = None,
                    variants: str | None = None) -> Any:
    from scalelab import config as cfg
    from scalelab.data import PrepareConfig

    merged = cfg.layer(config, overrides, {
        "sources": [{"path": s} for s in sources] or None, "workers": workers, "strict": strict or None,
        "variants": [v.strip() for v in variants.split(",")] if variants else None,
        "filters": {"preset": filters}, "out": str(out) if out is not None else None})
    merged.setdefault("sources", [{"path": "stdlib"}])
    if "out" not in merged:
        first = cfg.validate(PrepareConfig, {**merged, "out": "."}).sources[0]
        merged["out"] = str(DEFAULT_DATASETS / first.label)
    return cfg.validate(PrepareConfig, merged, origin=str(config) if config else "config")


FiltersOption = Annotated[str | None, typer.Option(
    "--filters", help="Quality filter preset: none, prose or code (same as --set filters.preset=...).")]
VariantsOption = Annotated[str | None, typer.Option(
    "--variants", help="Train variants, comma-separated: raw, filtered, dedup, filtered+dedup [default: raw].")]


def print_summary(manifest: dict[str, Any], path: Path) -> None:
    from scalelab.data.summary import summary_tables

    for table in summary_tables(manifest):
        console.print(table)
    console.print(manifest["minhash"]["description"])
    console.print(f"dataset: [bold]{path}[/]  fingerprint {manifest['fingerprint']}")


@app.command()
def prepare(
    sources: Annotated[list[str] | None, typer.Argument(
        help="Directories, .txt/.jsonl[.gz|.zst]/.parquet files, saved Hugging Face datasets, or `stdlib` "
             "(the default: this Python's standard library).")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Dataset directory [default: datasets/NAME].")] = None,
    config: ConfigOption = None,
    overrides: PrepareSet = None,
    workers: Annotated[int | None, typer.Option(
        "--workers", "-w", help="Processes for cleaning and tokenizing.")] = None,
    strict: Annotated[bool, typer.Option(
        "--strict", help="Fail on unreadable files, invalid lines, binary files.")] = False,
    filters: FiltersOption = None,
    variants: VariantsOption = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if an identical dataset exists.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Read, clean, split and tokenize a corpus into a dataset of nested token subsets."""
    from scalelab.data import prepare as run_prepare

    resolved = _prepare_config(sources or [], out, config, overrides or [], workers, strict, filters, variants)
    store = run_prepare(resolved, force=force, show_progress=not quiet)
    print_summary(store.manifest, store.path)


@app.command()
def info(
    dataset: Annotated[Path, typer.Argument(help="A prepared dataset directory.")],
    verify: Annotated[bool, typer.Option(
        "--verify", help="Re-hash every split and the tokenizer against the manifest's fingerprint.")] = False,
) -> None:
    """Print the summary of a prepared dataset."""
    from scalelab.data import TokenStore
    from scalelab.errors import DataError

    store = TokenStore.open(dataset)
    print_summary(store.manifest, store.path)
    if verify:
        differing = store.verify()
        if differing:
            raise DataError(f"dataset is corrupt: {', '.join(differing)} in {store.path} does not match the "
                            "fingerprint recorded when it was prepared; prepare it again")
        console.print("verified: every split and the tokenizer match the fingerprint")


@app.command("data-report")
def data_report(
    dataset: Annotated[Path, typer.Argument(help="A prepared dataset directory.")],
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the report as JSON here.")] = None,
    max_tokens: Annotated[int, typer.Option(
        "--max-tokens", help="Measure each view on its first N tokens (equal-size prefixes compare).")] = 5_000_000,
) -> None:
    """Explain a dataset: the funnel, examples dropped by each rule, and diversity metrics per variant."""
    from scalelab.data import TokenStore
    from scalelab.data.report import data_report as build_report
    from scalelab.data.summary import examples_table, funnel_table, metrics_table, mixture_table, splits_table
    from scalelab.io import check_writable_file, write_json_atomic

    if json_out is not None:
        check_writable_file(json_out)
    store = TokenStore.open(dataset)
    report = build_report(store, max_tokens=max_tokens)
    console.print(f"{store.manifest['minhash']['description']}")
    for table in (funnel_table(store.manifest), examples_table(store.manifest), splits_table(store.manifest),
                  metrics_table(report["metrics"]), mixture_table(report["metrics"])):
        console.print(table)
    if json_out is not None:
        write_json_atomic(json_out, report)
        console.print(f"wrote {json_out}")


def _train_config(data: Path | None, variant: str | None, tokens: str | None, family: str | None,
                  size: str | None, regime: str | None, config: Path | None, overrides: list[str]) -> Any:
    from scalelab import config as cfg
    from scalelab.train.config import TrainConfig

    merged = cfg.layer(config, overrides, {
        "data": str(data) if data else None, "variant": variant, "family": family, "regime": regime,
        "tokens": _parse_count(tokens) if tokens else None})
    if size is not None:
        chosen = merged.get("family", registry.DEFAULT)
        merged = cfg.deep_merge(merged, {chosen: registry.family(chosen).size_fields(size)})
    return cfg.validate(TrainConfig, merged, origin=str(config) if config else "config")


def _parse_count(text: str) -> int:
    """`2000000`, `2M`, `500k`, `1.5e6` -> a positive integer count."""
    from scalelab.errors import ConfigError

    units = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9}
    raw = text.strip().lower().replace("_", "").replace(",", "")
    number, unit = (raw[:-1], units[raw[-1]]) if raw[-1:] in units else (raw, 1.0)
    try:
        value = float(number) * unit
    except ValueError:
        value = math.nan
    # float() reads "inf", "nan" and "1e999" (as inf); none of them, nor anything under one, counts tokens.
    if not math.isfinite(value) or value < 1:
        raise ConfigError(f"not a token count: {text!r} (a positive number such as 2000000, 2M or 500k)")
    return int(value)


def print_eval(outcome: dict[str, Any], title: str) -> None:
    from rich.table import Table

    table = Table(title=title, header_style="bold")
    for column in ("split", "tokens", "loss (nats/token)", "perplexity", "bits/byte"):
        table.add_column(column, justify="right")
    ev = outcome.get("eval", outcome)

    def with_error(key: str) -> str:
        # Results recorded before evaluations carried a standard error have none to show.
        error = ev.get(f"{key}_se")
        return f"{ev[key]:.4f}" + (f" ± {error:.4f}" if error is not None else "")

    table.add_row(ev["split"], f"{ev['tokens']:,}", with_error("nll"), f"{ev['perplexity']:.2f}",
                  with_error("bits_per_byte"))
    console.print(table)


@app.command()
def train(
    data: Annotated[Path | None, typer.Option("--data", "-d", help="A prepared dataset directory.")] = None,
    tokens: Annotated[str | None, typer.Option(
        "--tokens", "-D", help="D: train on the first D tokens (2M, 500k).")] = None,
    family: Annotated[str | None, typer.Option(
        "--family", "-f", help=f"Model family: {', '.join(registry.FAMILIES)} [default: {registry.DEFAULT}].")] = None,
    size: Annotated[str | None, typer.Option(
        "--size", help="Model size preset (e.g. 1M, 10M); for ngram, the order (2-6).")] = None,
    variant: Annotated[str | None, typer.Option("--variant", help="Train variant of the dataset.")] = None,
    regime: Annotated[Regime | None, typer.Option(
        "--regime", help="single-pass: the D tokens once; converge: repeat them until held-out loss stops improving.")
    ] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Run directory [default: runs/FAMILY-SIZE-D].")] = None,
    config: ConfigOption = None,
    overrides: TrainSet = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Start over even if the run directory holds this run.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Train one model on D tokens of a dataset and evaluate it on the held-out split (resumes if interrupted)."""
    from scalelab.train.run import train_run

    resolved = _train_config(data, variant, tokens, family, size, regime, config, overrides or [])
    model_size = registry.family(resolved.family).size_label(resolved.model)
    run_dir = out or Path("runs") / f"{resolved.family}-{model_size}-{resolved.tokens}"
    outcome = train_run(resolved, run_dir, force=force, show_progress=not quiet)
    print_eval(outcome, f"{resolved.family} {model_size} on {resolved.tokens:,} tokens")
    n = outcome.get("N")
    console.print(f"run: [bold]{run_dir}[/]  id {outcome['run_id']}" + (f"  N = {n:,}" if n else "") +
                  f"  {outcome['wall_seconds']:.1f} s")


@app.command()
def evaluate(
    run: Annotated[Path, typer.Argument(help="A run directory written by `scalelab train`.")],
    split: Annotated[EvalSplit | None, typer.Option("--split", help="validation or test [default: the run's].")] = None,
    eval_tokens: Annotated[str | None, typer.Option("--eval-tokens", help="Held-out token budget.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Re-score a trained run on a held-out split."""
    import json

    from scalelab.train.run import evaluate_run

    outcome = evaluate_run(run, split, _parse_count(eval_tokens) if eval_tokens else None)
    if json_out:
        console.print_json(json.dumps(outcome))
    else:
        print_eval(outcome, f"evaluation of {run}")


study_app = typer.Typer(help="Declarative data-scaling studies: plan, run (resumable), status, export.",
                        no_args_is_help=True)
app.add_typer(study_app, name="study")
StudyArgument = Annotated[Path, typer.Argument(help="A study spec (YAML).")]
StudyTarget = Annotated[Path, typer.Argument(help="A study spec (YAML) or a study directory.")]


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


@study_app.command("plan")
def study_plan(
    spec_path: StudyArgument,
    overrides: StudySet = None,
    probe: Annotated[bool, typer.Option("--probe/--no-probe", help="Time a few steps per model to estimate "
                                                                   "wall time.")] = True,
) -> None:
    """Print the runs a study implies, with tokens, FLOPs and estimated time. Trains nothing."""
    from rich.table import Table

    from scalelab.study.api import load_spec, plan_study

    spec = load_spec(spec_path, overrides or [])
    runs = plan_study(spec, probe=probe)
    table = Table(title=f"study {spec.name}: {len(runs)} runs", header_style="bold")
    for column in ("family", "size", "variant", "D", "U", "seed", "lr", "batch", "train tokens", "FLOPs",
                   "est. time", "run id"):
        table.add_column(column, justify="left" if column in ("family", "variant", "run id") else "right")
    for run in runs:
        trained = run.flops > 0  # a model counted in one pass has no learning rate, batches or FLOPs
        config = run.train_config()
        table.add_row(run.family, run.size, run.variant, f"{run.D:,}", f"{run.U:,}", str(run.seed),
                      f"{config.optim.lr:.2g}" if trained else "-", str(config.batch_size) if trained else "-",
                      f"{run.train_tokens:,}", f"{run.flops:.2e}" if trained else "-",
                      _duration(run.estimated_seconds), run.id[:8])
    console.print(table)
    workers = spec.resources.workers
    if probe:
        total = sum(r.estimated_seconds for r in runs)
        console.print(f"estimated: {_duration(total)} of single-run time, about {_duration(total / workers)} "
                      f"with {workers} worker{'s' if workers > 1 else ''}")
    console.print(f"total: {sum(r.train_tokens for r in runs):,} training tokens, {sum(r.flops for r in runs):.2e} "
                  f"FLOPs; results go to {spec.directory}")


@study_app.command("run")
def study_run(
    spec_path: StudyArgument,
    overrides: StudySet = None,
    workers: Annotated[int | None, typer.Option("--workers", "-w", help="Runs at once (local backend).")] = None,
    backend: Annotated[Backend | None, typer.Option(
        "--backend", help="Where runs execute [default: the spec's resources.backend].")] = None,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Run failed runs again.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Run what the study is missing; finished runs are never repeated, interrupted ones resume."""
    from scalelab.study.api import load_spec, run_study

    spec = load_spec(spec_path, overrides or [])
    counts = run_study(spec, workers=workers, backend=backend, retry_failed=retry_failed, show_progress=not quiet)
    console.print(", ".join(f"{n} {status}" for status, n in counts.items()) + f"  ({spec.directory})")
    if counts.get("failed"):
        console.print("see `scalelab study status` for the errors; --retry-failed runs them again")


@study_app.command("status")
def study_status(target: StudyTarget) -> None:
    """Runs done, running, interrupted (their runner is gone), pending and failed; time spent and left."""
    from rich.table import Table

    from scalelab.study.api import status

    info = status(target)
    states = ("done", "running", "interrupted", "pending", "failed")
    table = Table(title=f"{info['total']} runs", header_style="bold")
    for column in (*states, "time spent", "time left (est., one worker)"):
        table.add_column(column, justify="right")
    counts = info["counts"]
    table.add_row(*(str(counts[s]) for s in states), _duration(info["seconds_spent"]),
                  _duration(info["seconds_left_estimate"]))
    console.print(table)
    for family, size, variant, d, pid, host in info["interrupted"]:
        console.print(f"[yellow]interrupted[/] {family} {size} {variant} D={d:,}: its runner (pid {pid} on {host}) "
                      "is gone; `scalelab study run` resumes it", highlight=False)
    for family, size, variant, d, error in info["failed"]:
        console.print(f"[red]failed[/] {family} {size} {variant} D={d:,}: {' '.join(error)}")


@study_app.command("export")
def study_export(
    target: StudyTarget,
    fmt: Annotated[ExportFormat, typer.Option("--format", help="File format.")] = "csv",
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="File to write [default: STUDY_DIR/results.FORMAT].")] = None,
) -> None:
    """Write one row per run (config, status, metrics) as CSV or Parquet."""
    from scalelab.study.api import open_results, study_directory

    path = out or study_directory(target) / f"results.{fmt}"
    with open_results(target) as store:
        store.export(path, fmt)
    console.print(f"wrote {path}")


FitSource = Annotated[Path, typer.Argument(help="A study directory (or its spec), or a CSV with columns D, loss "
                                             "(or bits_per_byte) and optionally N, U, family, variant.")]


UnitOption = Annotated[Unit, typer.Option("--unit", help="The loss the laws are fitted to.")]


def print_fits(analysis: Analysis) -> None:
    from rich.table import Table

    from scalelab.laws.fit import RESAMPLING

    for group in analysis.groups:
        title = f"{group.name} ({group.variant}): {group.form} law, {group.points} points"
        if group.excluded_unreliable:
            title += f" ({group.excluded_unreliable} unreliable left out)"
        if group.fit is None:
            console.print(f"[bold]{title}[/]: no fit — {group.error}")
            continue
        fit = group.fit
        table = Table(title=title, header_style="bold")
        for column in ("parameter", "value", f"{round(100 * analysis.level)}% interval"):
            table.add_column(column, justify="right")
        for name, value in fit.params.items():
            low, high = fit.intervals.get(name, (math.nan, math.nan))
            if name == "E" and (group.floor is None or not group.floor.identified):
                # An unidentified floor is a bound, never a value such as 2e-10.
                shown = "not identified" if group.floor is None else f"< {group.floor.bound:.4g}"
                table.add_row(name, shown, f"0 – {group.floor.bound:.4g}" if group.floor is not None else "–")
                continue
            table.add_row(name, f"{value:.4g}", f"{low:.4g} – {high:.4g}")
        console.print(table)
        quality = f"fit: rmse of log loss {fit.rmse_log:.4f}, R² {fit.r2:.4f}"
        if len(fit.samples) or fit.bootstrap_failed:
            quality += (f"; bootstrap: {RESAMPLING[fit.resampling]}, {len(fit.samples)} refits"
                        + (f", {fit.bootstrap_failed} failed and dropped" if fit.bootstrap_failed else "")
                        + (f", {fit.bootstrap_rejected} degenerate resamples redrawn" if fit.bootstrap_rejected
                           else ""))
        backtest = group.backtest
        if backtest is not None:
            quality += (f"; backtest (fit on {backtest.fitted_on} smaller D, predict {len(backtest.actual)} "
                        f"larger): mean error {100 * backtest.mean_abs_rel_error:.2f}%, "
                        f"max {100 * backtest.max_abs_rel_error:.2f}%")
            if math.isfinite(backtest.mean_reducible_abs_rel_error):
                quality += f", {100 * backtest.mean_reducible_abs_rel_error:.1f}% of the reducible loss L - E"
            if math.isfinite(backtest.coverage):
                quality += (f", {100 * backtest.coverage:.0f}% of held-out points inside the "
                            f"{round(100 * backtest.level)}% band")
        console.print(quality)
    console.print("[bold]What the fits say[/]")
    for sentence in analysis.sentences:
        console.print(f"- {sentence}")


@app.command()
def fit(
    source: FitSource,
    unit: UnitOption = "bits_per_byte",
    bootstrap: Annotated[int, typer.Option("--bootstrap", help="Bootstrap resamples for intervals.")] = 200,
    target: Annotated[float | None, typer.Option(
        "--target", help="Loss to plan for [default: 5% below the best observed].")] = None,
    epsilon: Annotated[float, typer.Option(
        "--epsilon", help="Saturation: a doubling gains less than this share.")] = 0.01,
    json_out: Annotated[Path | None, typer.Option(
        "--json", help="Also write the fits and answers as JSON here.")] = None,
    include_unreliable: Annotated[bool, typer.Option(
        "--include-unreliable", help="Also fit runs marked unreliable (too few optimizer steps).")] = False,
) -> None:
    """Fit scaling laws to a study's results (or a CSV), with intervals, backtests and planner answers."""
    from scalelab.io import check_writable_file, write_json_atomic
    from scalelab.laws.analysis import analyse, check_options, load_points

    check_options(bootstrap=bootstrap, target=target, epsilon=epsilon)
    if json_out is not None:
        check_writable_file(json_out)
    analysis = analyse(load_points(source), unit=unit, bootstrap=bootstrap, target=target, epsilon=epsilon,
                       include_unreliable=include_unreliable)
    print_fits(analysis)
    if json_out is not None:
        write_json_atomic(json_out, analysis.to_dict())
        console.print(f"wrote {json_out}")


@app.command("plan-data")
def plan_data(
    source: FitSource,
    target_loss: Annotated[float, typer.Option("--target-loss", help="The loss to reach, in --unit.")],
    unit: UnitOption = "bits_per_byte",
    family: Annotated[str | None, typer.Option("--family", help="Only this model family.")] = None,
    variant: Annotated[str | None, typer.Option("--variant", help="Only this data variant.")] = None,
    bootstrap: Annotated[int, typer.Option("--bootstrap", help="Bootstrap resamples for intervals.")] = 200,
) -> None:
    """How much data each fitted model needs to reach a target loss, with an interval."""
    from scalelab.errors import DataError
    from scalelab.laws.analysis import analyse, check_options, load_points

    check_options(bootstrap=bootstrap, target=target_loss)
    points = load_points(source)
    if family is not None:
        points = points[points["family"] == family]
    if variant is not None:
        points = points[points["variant"] == variant]
    if points.empty:
        raise DataError(f"no finished runs match family={family!r} variant={variant!r} in {source}")
    analysis = analyse(points, unit=unit, bootstrap=bootstrap, target=target_loss)
    from scalelab.laws.analysis import stated

    for group in analysis.groups:
        answer = group.answers.get("data_for_loss")
        if answer is None:
            console.print(f"- the {group.name} ({group.variant}): {group.error or group.answers_error}")
            continue
        # The answer as a finding: with its interval, or why the data do not bound it.
        sentence = stated(answer, group.floor) if bootstrap else answer.sentence()
        console.print(f"- {sentence}" if sentence is not None else
                      f"- the {group.name} ({group.variant}): the data do not bound the tokens needed to reach "
                      f"{target_loss:g}: the interval is open"
                      + "".join(f"; {f}" for f in group.findings if "floor" in f))


@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="A finished run directory.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write: new, empty, or an earlier export.")],
    force: Annotated[bool, typer.Option("--force", help="Replace an earlier scalelab export in --out (a directory "
                                                        "holding anything else is always refused).")] = False,
) -> None:
    """Export a trained model: Transformer -> Hugging Face directory; n-gram -> ARPA; LSTM -> safetensors."""
    from scalelab.deploy.export import export_run

    console.print(f"exported to [bold]{export_run(run, out, force=force)}[/]")


ModelDir = Annotated[Path, typer.Argument(help="An exported model (scalelab export) or a finished run directory.")]
QuantizeOption = Annotated[Quantize | None, typer.Option(
    "--quantize", help="int8: dynamic int8 quantisation of the Linear and LSTM layers (neural models, CPU).")]
ThreadsOption = Annotated[int | None, typer.Option("--threads", help="torch CPU threads [default: torch's].")]


def _load_for_inference(model_dir: Path, quantize: Quantize | None, threads: int | None, name: str | None = None):
    import torch

    from scalelab.deploy.model import load_model
    from scalelab.errors import ConfigError

    if threads is not None:
        if threads < 1:
            raise ConfigError(f"--threads must be at least 1 (got {threads})")
        torch.set_num_threads(threads)
    return load_model(model_dir, quantize=quantize, name=name)


def _described(model: Any, name: str) -> str:
    """A config field's description: the help of the flag that sets it."""
    return model.model_fields[name].description


def _default(model: Any, name: str) -> Any:
    return model.model_fields[name].default


@app.command()
def generate(
    model_dir: ModelDir,
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="Text to continue [default: a new document].")] = "",
    max_tokens: Annotated[int, typer.Option(
        "--max-tokens", "-m", help=_described(SamplingParams, "max_tokens"))] = GENERATE_DEFAULTS["max_tokens"],
    temperature: Annotated[float, typer.Option(
        "--temperature", "-t", help=_described(SamplingParams, "temperature"))] = GENERATE_DEFAULTS["temperature"],
    top_p: Annotated[float, typer.Option(
        "--top-p", help=_described(SamplingParams, "top_p"))] = GENERATE_DEFAULTS["top_p"],
    seed: Annotated[int | None, typer.Option("--seed", help=_described(SamplingParams, "seed"))] = None,
    stop: Annotated[list[str] | None, typer.Option(
        "--stop", help=f"{_described(SamplingParams, 'stop')} Repeatable.")] = None,
    num: Annotated[int, typer.Option("--num", "-n", help="Samples to draw.")] = 1,
    quantize: QuantizeOption = None,
    threads: ThreadsOption = None,
) -> None:
    """Sample text from a trained model of any family, streaming it to the terminal as it is generated."""
    import time

    from scalelab.config import validate
    from scalelab.deploy.completion import Completion
    from scalelab.deploy.sampling import make_generator
    from scalelab.errors import ConfigError

    if num < 1:
        raise ConfigError(f"--num must be at least 1 (got {num})")
    params = validate(SamplingParams, {"max_tokens": max_tokens, "temperature": temperature, "top_p": top_p,
                                       "seed": seed, "stop": stop or []}, origin="sampling options")
    model = _load_for_inference(model_dir, quantize, threads)
    generator = make_generator(seed)
    for sample in range(num):
        completion = Completion(model, prompt, params, generator)
        started = time.perf_counter()
        sys.stdout.write(prompt)
        for pieces in completion:
            sys.stdout.write("".join(piece.text for piece in pieces))
            sys.stdout.flush()
        elapsed = time.perf_counter() - started
        sys.stdout.write("\n")
        stderr_console.print(f"{model.family} {model.name}: {completion.completion_tokens} tokens in {elapsed:.2f} s, "
                  f"{completion.completion_tokens / max(elapsed, 1e-9):.1f} tokens/s, finished: "
                  f"{completion.finish_reason}", style="dim", highlight=False, markup=False, soft_wrap=True)
        if sample < num - 1:
            sys.stdout.write("\n")


@app.command()
def serve(
    model_dir: ModelDir,
    host: Annotated[str, typer.Option("--host", help=_described(ServeConfig, "host"))] = _default(ServeConfig, "host"),
    port: Annotated[int, typer.Option("--port", help=_described(ServeConfig, "port"))] = _default(ServeConfig, "port"),
    api_key: Annotated[str | None, typer.Option(
        "--api-key", help=f"{_described(ServeConfig, 'api_key')} SCALELAB_API_KEY gives the default.")] = None,
    model_name: Annotated[str | None, typer.Option(
        "--model-name", help="The model id clients ask for [default: the directory's name].")] = None,
    max_running: Annotated[int, typer.Option(
        "--max-running", help=_described(ServeConfig, "max_running"))] = _default(ServeConfig, "max_running"),
    max_waiting: Annotated[int, typer.Option(
        "--max-waiting", help=_described(ServeConfig, "max_waiting"))] = _default(ServeConfig, "max_waiting"),
    max_body_bytes: Annotated[int, typer.Option(
        "--max-body-bytes", help=_described(ServeConfig, "max_body_bytes"))] = _default(ServeConfig, "max_body_bytes"),
    quantize: QuantizeOption = None,
    threads: ThreadsOption = None,
) -> None:
    """Serve a model over an OpenAI-compatible HTTP API: /v1/completions (streaming, logprobs, echo),
    /v1/models, /health."""
    from scalelab.config import validate
    from scalelab.deploy.server import serve as run_server

    if api_key is None:
        # Read here rather than by click, which takes an empty variable for an unset one: that would serve
        # without a key where a key was meant, so ServeConfig refuses it instead.
        api_key = os.environ.get("SCALELAB_API_KEY")
    config = validate(ServeConfig, {"host": host, "port": port, "api_key": api_key, "max_running": max_running,
                                    "max_waiting": max_waiting, "max_body_bytes": max_body_bytes},
                      origin="serve options")
    model = _load_for_inference(model_dir, quantize, threads, name=model_name)
    if host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        stderr_console.print(f"warning: serving on {host} without --api-key: anyone who reaches this "
                                   "machine can use the model", style="yellow", markup=False)
    run_server(model, config, on_ready=lambda url: console.print(
        f"serving [bold]{model.name}[/] ({model.family}, context {model.context_length} tokens) at {url}",
        highlight=False))


@app.command()
def report(
    study: Annotated[Path, typer.Argument(help="A study directory (or its spec).")],
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Report directory [default: STUDY_DIR/report].")] = None,
    unit: UnitOption = "bits_per_byte",
    bootstrap: Annotated[int, typer.Option("--bootstrap", help="Bootstrap resamples for intervals.")] = 200,
) -> None:
    """Write a self-contained HTML report of a study: plots, fitted laws, findings, runs, data, environment."""
    from scalelab.report import write_report
    from scalelab.study.api import study_directory

    index = write_report(study_directory(study), out, unit=unit, bootstrap=bootstrap)
    console.print(f"report: [bold]{index}[/]")


@app.command()
def demo(
    scale: Annotated[Scale, typer.Option("--scale", help="cpu: minutes on 2 cores; gpu: larger models.")] = "cpu",
    workers: Annotated[int | None, typer.Option(
        "--workers", "-w", help="Runs at once [default: the preset's].")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """The main job on the built-in corpus (this Python's standard library): prepare it with raw and
    filtered+dedup variants, run the demo study (three model families, data sizes over two orders of
    magnitude), fit the scaling laws, write the report and state what the fits say. Finished work is reused."""
    import time

    from scalelab.demo import demo_spec, export_best, run_demo

    started = time.perf_counter()
    spec = demo_spec(scale)
    index, analysis = run_demo(spec, workers=workers, show_progress=not quiet)
    print_fits(analysis)
    exported = export_best(spec)
    console.print(f"demo finished in {time.perf_counter() - started:.0f} s; results: {spec.directory}")
    console.print(f"report: [bold]{index}[/] (open it in a browser)")
    if exported is not None:
        model_dir, run = exported
        console.print(f"the best Transformer ({run['size']}, {run['D']:,} tokens of {run['variant']} data, "
                      f"{run['bits_per_byte']:.3f} bits/byte) is exported as a Hugging Face model to {model_dir}; "
                      f"try:\n  scalelab generate {model_dir} --prompt 'def '\n  scalelab serve {model_dir}",
                      highlight=False, soft_wrap=True)


# click's UsageError, which typer does not re-export (and which newer typer releases vendor): its BadParameter is one.
USAGE_ERROR = next(cls for cls in typer.BadParameter.__mro__ if cls.__name__ == "UsageError")


def main() -> None:
    """Run the command; a user's mistake, whether click finds it in the arguments or scalelab in the input, ends in
    one line on stderr and exit status 2."""
    try:
        status = app(standalone_mode=False)
    except USAGE_ERROR as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # no arguments at all: the help is the answer
            exc.show()
            sys.exit(exc.exit_code)
        command = exc.ctx.command_path if exc.ctx else "scalelab"
        _fail(f"{exc.format_message().replace('Value error, ', '')} (see {command} --help)")
    except ScalelabError as exc:
        _fail(str(exc))
    except (KeyboardInterrupt, typer.Abort):
        stderr_console.print("interrupted")
        sys.exit(130)
    if isinstance(status, int) and status:
        sys.exit(status)


def _fail(message: str) -> None:
    stderr_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True, markup=True)
    sys.exit(2)
