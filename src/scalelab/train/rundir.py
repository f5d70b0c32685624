"""A run directory: the one place that knows its layout.

    config.yaml     the resolved TrainConfig, with the run id and the data subset's fingerprint; its dataset path
                    is absolute, so the run opens from any working directory
    metrics.jsonl   one line per step and per evaluation (neural families)
    checkpoints/    complete checkpoints and the `latest` and `best` pointers (train/checkpoint.py)
    model/          a model fitted in one go rather than trained by steps (the n-gram's counts)
    tensorboard/    TensorBoard events, when asked for
    eval.json       the run's result, written last: a run with eval.json is finished

Everything that reads or writes a run goes through `RunDir`; the family adapters decide what a model is.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from scalelab.config import read_yaml, validate
from scalelab.errors import ConfigError
from scalelab.io import read_json_object, write_json_atomic, write_text_atomic
from scalelab.train import checkpoint
from scalelab.train.config import TrainConfig

RECORDED = ("run_id", "data_fingerprint")  # config.yaml's keys that are not TrainConfig fields


class RunDir:
    def __init__(self, path: Path | str):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    # -- the layout -----------------------------------------------------------------------------------------------
    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def eval_file(self) -> Path:
        return self.path / "eval.json"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    # -- state ----------------------------------------------------------------------------------------------------
    def is_run(self) -> bool:
        return self.config_file.is_file()

    def is_finished(self) -> bool:
        return self.eval_file.is_file()

    def recorded(self) -> dict[str, Any]:
        """config.yaml as written: the config plus the run id and data fingerprint."""
        if not self.is_run():
            raise ConfigError(f"{self.path} is not a scalelab run (no {self.config_file.name})")
        return read_yaml(self.config_file)

    def config(self) -> TrainConfig:
        document = self.recorded()
        for key in RECORDED:
            document.pop(key, None)
        return validate(TrainConfig, document, origin=str(self.config_file))

    def finished_config(self) -> TrainConfig:
        """The config of a run that finished training; an unfinished one is the user's mistake to report."""
        config = self.config()
        if not self.is_finished():
            raise ConfigError(f"{self.path} has not finished training; give a finished run")
        return config

    def result(self) -> dict[str, Any]:
        return read_json_object(self.eval_file, "run result")

    def final_checkpoint(self, config: TrainConfig) -> Path:
        """The checkpoint a finished run stands for: its best when it converged, else its latest."""
        return checkpoint.final(self.checkpoints, config.regime == "converge")

    def last_checkpoint(self) -> Path | None:
        return checkpoint.resolve(self.checkpoints)

    # -- writing --------------------------------------------------------------------------------------------------
    def claim(self, config: TrainConfig, run_id: str, data_fingerprint: str, force: bool) -> None:
        """Refuse a directory that holds a different run; start one over when forced; record the config."""
        if self.is_run() and not force:
            recorded = self.recorded().get("run_id")
            if recorded != run_id:
                raise ConfigError(f"{self.path} holds another run ({recorded}); choose another --out "
                                  "or pass --force to start over")
            return
        if not self.is_run() and self.path.exists() and any(not p.name.startswith(".") for p in self.path.iterdir()):
            # Not even --force starts over here: clearing it would delete files scalelab did not write.
            raise ConfigError(f"{self.path} exists and is not a scalelab run; choose another --out")
        if force:
            self._clear()
        self.path.mkdir(parents=True, exist_ok=True)
        document = {"run_id": run_id, "data_fingerprint": data_fingerprint, **config.model_dump(mode="json")}
        write_text_atomic(self.config_file, yaml.safe_dump(document, sort_keys=False))

    def write_result(self, outcome: dict[str, Any]) -> None:
        write_json_atomic(self.eval_file, outcome)

    def _clear(self) -> None:
        for path in (self.eval_file, self.metrics_file):
            path.unlink(missing_ok=True)
        for directory in (self.checkpoints, self.model_dir):
            shutil.rmtree(directory, ignore_errors=True)
