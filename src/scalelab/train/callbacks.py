"""Things that hang on the training loop: metrics log, progress bar, TensorBoard."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scalelab.progress import steps_progress

if TYPE_CHECKING:
    from scalelab.train.trainer import Trainer


class Callback:
    def on_train_start(self, trainer: Trainer) -> None: ...

    def on_step(self, trainer: Trainer, metrics: dict[str, Any]) -> None: ...

    def on_eval(self, trainer: Trainer, metrics: dict[str, Any]) -> None: ...

    def on_train_end(self, trainer: Trainer) -> None: ...


class MetricsLog(Callback):
    """metrics.jsonl: one line per step and per evaluation. On resume, lines past the checkpoint are dropped,
    so the file reads as if the run had never stopped."""

    def __init__(self, path: Path):
        self.path = path

    def on_train_start(self, trainer: Trainer) -> None:
        kept = []
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                if line.strip() and json.loads(line)["step"] <= trainer.state.step:
                    kept.append(line)
        self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        self._handle = self.path.open("a", encoding="utf-8")

    def _write(self, record: dict[str, Any]) -> None:
        self._handle.write(json.dumps(record) + "\n")
        self._handle.flush()

    def on_step(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        self._write(metrics)

    def on_eval(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        self._write(metrics)

    def on_train_end(self, trainer: Trainer) -> None:
        self._handle.close()


class ProgressBar(Callback):
    def on_train_start(self, trainer: Trainer) -> None:
        self._progress = steps_progress()
        self._progress.start()
        self._task = self._progress.add_task("train", total=trainer.total_steps, completed=trainer.state.step,
                                             info="")

    def on_step(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        self._progress.update(self._task, completed=metrics["step"],
                              info=f"loss {metrics['loss']:.3f}  {metrics['tokens_per_s']:,.0f} tok/s")

    def on_eval(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        self._progress.console.print(f"step {metrics['step']}: held-out loss {metrics['eval']['nll']:.4f}, "
                                     f"{metrics['eval']['bits_per_byte']:.4f} bits/byte")

    def on_train_end(self, trainer: Trainer) -> None:
        self._progress.stop()


class TensorBoard(Callback):
    def __init__(self, directory: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            from scalelab.errors import ConfigError

            raise ConfigError("tensorboard logging needs the tensorboard package: pip install tensorboard") from exc
        self._writer = SummaryWriter(str(directory))

    def on_step(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        for key in ("loss", "lr", "grad_norm", "tokens_per_s"):
            self._writer.add_scalar(f"train/{key}", metrics[key], metrics["step"])

    def on_eval(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        for key in ("nll", "bits_per_byte"):
            self._writer.add_scalar(f"eval/{key}", metrics["eval"][key], metrics["step"])

    def on_train_end(self, trainer: Trainer) -> None:
        self._writer.close()
