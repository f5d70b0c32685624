"""One tiny trained and exported model of each family per session, shared by the deploy tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from scalelab.deploy.export import export_run
from scalelab.deploy.model import DeployedModel, load_model
from scalelab.train.run import train_run
from tests.train.test_run import TINY, tiny

FAMILIES = ("transformer", "lstm", "ngram")
CONTEXT = 64
ROPE_THETA = 500.0  # not the default, so an export that loses it cannot match the trained model
SHAPES = {"transformer": {"transformer": {**TINY["transformer"], "context_length": CONTEXT, "rope_theta": ROPE_THETA}},
          "lstm": {"lstm": {**TINY["lstm"], "context_length": CONTEXT}},
          "ngram": {"ngram": {"order": 3}}}


@pytest.fixture(scope="session")
def runs(prepared, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    for family in FAMILIES:
        train_run(tiny(prepared, family, steps=30, **SHAPES[family]), root / family, show_progress=False)
    return {family: root / family for family in FAMILIES}


@pytest.fixture(scope="session")
def exported(runs, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exported")
    return {family: export_run(run_dir, root / family) for family, run_dir in runs.items()}


@pytest.fixture(scope="session")
def models(exported) -> dict[str, DeployedModel]:
    return {family: load_model(path) for family, path in exported.items()}
