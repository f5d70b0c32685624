"""Checkpoints written atomically: a complete directory appears under its final name, or nothing does.

A checkpoint directory (`step-00000100`) holds `model.safetensors` (weights), `trainer.pt` (optimizer and RNG
states) and `state.json` (step, tokens, data position, early-stopping record). It is written under a temporary
name and renamed into place; the pointer files `latest` and `best` name complete ones and are themselves
replaced atomically, and older directories are pruned only after the pointers moved on. A run killed at any
moment therefore resumes from a checkpoint that was fully written.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

from scalelab.errors import ScalelabError
from scalelab.io import fresh_sibling_dir, write_text_atomic

LATEST = "latest"
BEST = "best"


class CheckpointError(ScalelabError):
    """A checkpoint is missing, incomplete or corrupt."""


@dataclass
class TrainState:
    step: int = 0                # optimizer steps taken
    epoch: int = 0               # data position: epoch and step within it
    step_in_epoch: int = 0
    tokens: int = 0              # training tokens consumed (targets)
    best_loss: float = float("inf")
    best_step: int = -1
    evals_without_improvement: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def step_name(step: int) -> str:
    return f"step-{step:08d}"


def finite_weights(model: torch.nn.Module) -> bool:
    return bool(torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all())


def save(directory: Path, name: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
         state: TrainState) -> Path:
    final = directory / name
    if (final / "state.json").is_file():
        return final  # this step is saved already (as best and latest at once)
    tmp = fresh_sibling_dir(final)
    save_model(model, str(tmp / "model.safetensors"))
    torch.save({"optimizer": optimizer.state_dict() if optimizer else None,
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
               tmp / "trainer.pt")
    # state.json last: its presence marks the directory as complete.
    (tmp / "state.json").write_text(json.dumps(state.to_dict(), indent=2), encoding="utf-8")
    _fsync_dir(tmp)
    os.replace(tmp, final)
    return final


def _fsync_dir(directory: Path) -> None:
    for path in directory.iterdir():
        with path.open("rb") as handle:
            os.fsync(handle.fileno())


def mark(directory: Path, pointer: str, name: str) -> None:
    write_text_atomic(directory / pointer, name + "\n")


def remove_leftovers(directory: Path) -> None:
    """Delete what interrupted writes left behind; call only while no other process is writing here."""
    for leftover in directory.glob(".*.tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)


def resolve(directory: Path, pointer: str = LATEST) -> Path | None:
    """The complete checkpoint a pointer names, or None."""
    file = directory / pointer
    if not file.is_file():
        return None
    path = directory / file.read_text(encoding="utf-8").strip()
    return path if (path / "state.json").is_file() else None


def final(directory: Path, converged: bool) -> Path:
    """The checkpoint a finished run stands for: its best when it converged, else its latest."""
    path = (resolve(directory, BEST) if converged else None) or resolve(directory)
    if path is None:
        raise CheckpointError(f"{directory.parent} has no complete checkpoint")
    return path


def prune(directory: Path, pointers: tuple[str, ...] = (LATEST, BEST)) -> None:
    """Remove step directories no pointer names."""
    keep = {p.name for p in (resolve(directory, pointer) for pointer in pointers) if p is not None}
    for path in directory.glob("step-*"):
        if path.name not in keep:
            shutil.rmtree(path, ignore_errors=True)


def load_state(path: Path) -> TrainState:
    try:
        return TrainState(**json.loads((path / "state.json").read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {path} has an unreadable state.json: {exc}") from None


def load_weights(path: Path, model: torch.nn.Module) -> None:
    try:
        missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=False)
    except Exception as exc:  # safetensors raises its own untyped errors on a damaged file
        raise CheckpointError(f"checkpoint {path} has unreadable weights: {exc}") from None
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {path} does not fit this model (missing {sorted(missing)[:3]}, "
                              f"unexpected {sorted(unexpected)[:3]})")


def load_trainer(path: Path, optimizer: torch.optim.Optimizer) -> None:
    try:
        blob = torch.load(path / "trainer.pt", weights_only=True)
    except Exception as exc:  # torch.load raises many types on a damaged file
        raise CheckpointError(f"checkpoint {path} has an unreadable trainer.pt: {exc}") from None
    optimizer.load_state_dict(blob["optimizer"])
    torch.set_rng_state(blob["torch_rng"])
    if blob["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(blob["cuda_rng"])
