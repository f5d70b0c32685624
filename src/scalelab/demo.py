"""The main job: prepare the built-in corpus, run the demo study, fit the laws, write the report."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from scalelab.report import write_report
from scalelab.study.api import load_spec, run_study
from scalelab.study.spec import StudySpec

Scale = Literal["cpu", "gpu"]
PRESETS: dict[str, str] = {"cpu": "demo.yaml", "gpu": "demo-gpu.yaml"}


def demo_spec(scale: Scale = "cpu") -> StudySpec:
    return load_spec(Path(str(resources.files("scalelab") / "presets" / PRESETS[scale])))


def run_demo(spec: StudySpec, *, workers: int | None = None, show_progress: bool = True) -> tuple[Path, dict[str, Any]]:
    """Everything `scalelab demo` does (the study prepares its dataset first); returns the report's index.html
    and the analysis behind it."""
    run_study(spec, workers=workers, show_progress=show_progress)
    index = write_report(spec.directory)
    analysis = json.loads((index.parent / "results.json").read_text(encoding="utf-8"))["analysis"]
    return index, analysis
