"""The study workflow as plain functions: what the `scalelab study` commands and Python users call."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml

from scalelab import config as cfg
from scalelab.data.store import TokenStore
from scalelab.errors import ConfigError
from scalelab.io import write_text_atomic
from scalelab.study.plan import plan, print_note
from scalelab.study.results import STATUSES, ResultsStore, RunRecord, runner_gone
from scalelab.study.runner import make_backend, run_all, threads_per_run
from scalelab.study.spec import StudySpec

SPEC = "study.yaml"
RESULTS = "results.sqlite"


def load_spec(path: Path, overrides: list[str] | None = None) -> StudySpec:
    return cfg.load(StudySpec, path, overrides)


def open_dataset(spec: StudySpec, show_progress: bool = True) -> TokenStore:
    """The study's dataset, prepared first when the spec gives a prepare config (reused when built)."""
    if spec.dataset.prepare is not None:
        from scalelab.data import prepare

        return prepare(spec.dataset.prepare, show_progress=show_progress)
    return TokenStore.open(spec.dataset.path)


def plan_study(spec: StudySpec, *, probe: bool = True, show_progress: bool = True) -> list[RunRecord]:
    return plan(spec, open_dataset(spec, show_progress), probe=probe,
                notes=print_note if show_progress else lambda note: None)


def run_study(spec: StudySpec, *, workers: int | None = None, backend: str | None = None,
              retry_failed: bool = False, show_progress: bool = True) -> dict[str, int]:
    """Run every run of the study that is not done yet; returns the final counts by status."""
    runs = plan_study(spec, show_progress=show_progress)
    directory = spec.directory
    directory.mkdir(parents=True, exist_ok=True)
    write_text_atomic(directory / SPEC, yaml.safe_dump(spec.model_dump(mode="json", by_alias=True), sort_keys=False))
    with ResultsStore(directory / RESULTS) as store:
        store.sync_plan(runs)
        store.recover()
        if retry_failed:
            store.retry_failed()
        todo = [r for r in runs if store.get(r.id).status == "pending"]
        with _progress(len(todo), show_progress) as report:
            run_all(runs, store, directory, make_backend(spec, workers, backend), threads_per_run(spec, workers),
                    report)
        return store.counts()


def _progress(total: int, enabled: bool):
    from contextlib import contextmanager

    from scalelab.progress import progress, stderr_console

    @contextmanager
    def bar():
        with progress("study runs", total=total, unit="runs", enabled=enabled) as advance:
            def report(run: RunRecord, outcome) -> None:
                advance(1)
                if not enabled:
                    return
                label = f"{run.family} {run.size} {run.variant} D={run.D:,}" + (f" U={run.U:,}" if run.U < run.D
                                                                                 else "")
                if outcome.error is None:
                    ev = outcome.metrics["eval"]
                    stderr_console.print(f"done   {label}: loss {ev['nll']:.4f}, {ev['bits_per_byte']:.4f} bits/byte")
                else:
                    stderr_console.print(f"[red]failed[/] {label}: {outcome.error.strip().splitlines()[-1]}")
            yield report

    return bar()


def study_directory(target: Path) -> Path:
    """A study directory, or the spec file naming one."""
    if not target.exists():
        raise ConfigError(f"no study at {target}: neither a study directory nor a spec")
    if target.is_dir():
        if not (target / RESULTS).is_file():
            raise ConfigError(f"{target} holds no study results ({RESULTS}); run `scalelab study run` first")
        return target
    return load_spec(target).directory


def open_results(target: Path) -> ResultsStore:
    directory = study_directory(target)
    if not (directory / RESULTS).is_file():
        raise ConfigError(f"{directory} holds no study results yet; run `scalelab study run` first")
    return ResultsStore(directory / RESULTS)


def load_results(target: str | Path):
    """One row per run, as a pandas DataFrame (from a study directory or its spec file)."""
    with open_results(Path(target)) as store:
        return store.frame()


def status(target: Path) -> dict[str, Any]:
    """Runs per status, with `interrupted` apart from `running`: rows whose runner on this host is gone."""
    with open_results(target) as store:
        records = store.records()
    gone = {r.id for r in records if runner_gone(r)}
    counts = dict.fromkeys([*STATUSES, "interrupted"], 0)
    for record in records:
        counts["interrupted" if record.id in gone else record.status] += 1
    now = time.time()
    spent = sum((r.finished_at or now) - r.started_at for r in records if r.started_at and r.status != "pending")
    left = sum(r.estimated_seconds or 0.0 for r in records if r.status in ("pending", "running"))
    failed = [(r.family, r.size, r.variant, r.D, (r.error or "").strip().splitlines()[-1:]) for r in records
              if r.status == "failed"]
    interrupted = [(r.family, r.size, r.variant, r.D, r.runner_pid, r.runner_host) for r in records if r.id in gone]
    return {"counts": counts, "seconds_spent": spent, "seconds_left_estimate": left, "failed": failed,
            "interrupted": interrupted, "total": len(records)}
