"""The main job: prepare the built-in corpus, run the demo study, fit the laws, write the report, and export the
best Transformer so it can be sampled and served at once."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from scalelab.choices import Scale
from scalelab.report import Report, build_report
from scalelab.study.api import load_results, load_spec, run_study
from scalelab.study.plan import RUNS
from scalelab.study.spec import StudySpec

PRESETS: dict[str, str] = {"cpu": "demo.yaml", "gpu": "demo-gpu.yaml"}


def demo_spec(scale: Scale = "cpu") -> StudySpec:
    return load_spec(Path(str(resources.files("scalelab") / "presets" / PRESETS[scale])))


def run_demo(spec: StudySpec, *, workers: int | None = None, show_progress: bool = True) -> Report:
    """Everything `scalelab demo` does (the study prepares its dataset first); returns the report's index.html
    and the analysis behind it."""
    run_study(spec, workers=workers, show_progress=show_progress)
    return build_report(spec.directory)


def export_best(spec: StudySpec, family: str = "transformer") -> tuple[Path, dict[str, Any]] | None:
    """Export the study's finished run of `family` with the lowest held-out loss to STUDY_DIR/model; returns the
    directory and the run's row, or None when the study has no such run."""
    from scalelab.deploy.export import export_run

    runs = load_results(spec.directory)
    done = runs[(runs["status"] == "done") & (runs["family"] == family)]
    if done.empty:
        return None
    best = done.loc[done["loss"].astype(float).idxmin()]
    # A rerun replaces the export an earlier one wrote; a directory holding anything else is still refused.
    return export_run(spec.directory / RUNS / best["id"], spec.directory / "model", force=True), best.to_dict()
