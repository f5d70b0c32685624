"""One run, end to end: data subset -> model -> training (or counting) -> held-out evaluation -> run directory.

The run directory's layout is `RunDir`'s (train/rundir.py); what training a model means is its family's
(`ModelFamily.train`). eval.json is written last: a run with it is done. Besides the family's part (`eval`, N,
params, tokens_seen, epochs, ...) it records what the run measures: D and U (`ModelFamily.data_seen`), and
whether the run can be trusted as a point on a curve (`reliable`, and the reason in `unreliable` when not).
Calling `train_run` again on a finished run returns its result; on an interrupted one it resumes. The same
function serves the CLI, the study runner, Ray tasks and every `torchrun` rank.
"""

from __future__ import annotations

import ctypes
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from scalelab.config import validate
from scalelab.data.store import TokenStore
from scalelab.errors import ConfigError, TrainingDiverged
from scalelab.io import check_writable_dir
from scalelab.models.registry import family
from scalelab.train.batches import TokenView
from scalelab.train.config import TrainConfig
from scalelab.train.distributed import DistInfo, barrier, init_from_env
from scalelab.train.evaluate import EvalSet, eval_set
from scalelab.train.rundir import RunDir

_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
_M_MMAP_MAX = -4


def train_view(store: TokenStore, config: TrainConfig):
    if config.unique_tokens is not None:
        return store.repeated(config.unique_tokens, config.tokens, config.variant)
    return store.subset(config.tokens, config.variant)


def keep_freed_memory() -> None:
    """Stop glibc returning large freed blocks to the OS.

    Each CPU step allocates and frees several batch x context x vocabulary tensors (logits and their gradients);
    by default glibc maps every block over 32 MB afresh and unmaps it when freed, so each step pays for ~10^5
    page faults of zeroed memory: 20-40% of a small model's step time here (benchmarks/train_speed.py). Keeping
    freed memory in the heap trades holding the peak for that time. Elsewhere than glibc this does nothing.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_MAX, 0)
        libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
    except (OSError, AttributeError):
        return


def setup_torch(config: TrainConfig) -> torch.device:
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    wants_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    if wants_cuda and not torch.cuda.is_available():
        raise ConfigError("device: cuda was asked for but torch sees no CUDA device")
    device = torch.device("cuda" if wants_cuda else "cpu")
    if device.type == "cpu":
        keep_freed_memory()
        if config.deterministic:
            torch.use_deterministic_algorithms(True)
    return device


def autocast_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    if config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


@dataclass(frozen=True)
class Job:
    """Everything a family's `train` needs for one run."""

    config: TrainConfig
    run: RunDir
    store: TokenStore
    view: TokenView  # the training view: a nested subset, or a repetition of one
    data: EvalSet  # the split evaluated during training (`TrainConfig.monitor_split`)
    device: torch.device
    dist: DistInfo
    show_progress: bool


def _prepare_run_dir(run: RunDir, config: TrainConfig, run_id: str, data_fingerprint: str,
                     force: bool, dist: DistInfo) -> dict[str, Any] | None:
    """Return the finished result if there is one. Only the main rank inspects and writes the directory;
    the others read what it decided once it is done."""
    if dist.is_main:
        # The dataset's absolute path goes into config.yaml, so that the run opens from any working directory.
        run.claim(config.model_copy(update={"data": config.data.resolve()}), run_id, data_fingerprint, force)
    barrier(dist)
    return run.result() if run.is_finished() else None


def train_run(config: TrainConfig, run_dir: Path, *, force: bool = False, show_progress: bool = True) -> dict[str, Any]:
    """Train and evaluate one run in `run_dir`; returns the contents of eval.json."""
    check_writable_dir(run_dir)
    run = RunDir(run_dir)
    store = TokenStore.open(config.data)
    view = train_view(store, config)
    run_id = config.run_id(view.fingerprint)
    device = setup_torch(config)
    dist = init_from_env(device.type)
    finished = _prepare_run_dir(run, config, run_id, view.fingerprint, force, dist)
    if finished is not None:
        return _finite(finished, run, recorded=True)
    data = eval_set(store, config.monitor_split, config.eval_tokens)
    adapter = family(config.family)
    started = time.perf_counter()
    outcome = adapter.train(Job(config, run, store, view, data, device, dist, show_progress))
    d, u = adapter.data_seen(config)
    reason = adapter.unreliable(config)
    outcome.update({
        "run_id": run_id, "family": config.family, "variant": config.variant or store.variants[0],
        "D": d, "U": u, "min_steps": config.min_steps, "reliable": reason is None, "unreliable": reason,
        "data_fingerprint": view.fingerprint, "wall_seconds": time.perf_counter() - started,
    })
    _finite(outcome, run, recorded=False)
    if dist.is_main:
        run.write_result(outcome)
    barrier(dist)
    return outcome


def _finite(outcome: dict[str, Any], run: RunDir, recorded: bool) -> dict[str, Any]:
    """A run whose held-out loss is NaN or infinite failed: its result is never written, nor read back as done."""
    nll = outcome["eval"]["nll"]
    if math.isfinite(nll):
        return outcome
    if recorded:
        raise TrainingDiverged(f"training diverged: {run.eval_file} records a held-out loss of {nll}; start the "
                               "run over with --force and a lower learning rate")
    last = run.last_checkpoint()
    raise TrainingDiverged(f"training diverged: the final held-out loss is {nll}; last good checkpoint: "
                           f"{last if last else 'none'} (lower the learning rate or check the data)")


def evaluate_run(run_dir: Path, split: str | None = None, eval_tokens: int | None = None) -> dict[str, Any]:
    """Re-score a run's final model (the best checkpoint when it converged) on a held-out split: by default the
    split its reported figures are on (test, when it converged)."""
    run = RunDir(run_dir)
    config = run.config()
    split = split or config.report_split
    # Validated as the run's own eval_split and eval_tokens are: a held-out split, a positive budget.
    asked = {key: value for key, value in (("eval_split", split), ("eval_tokens", eval_tokens)) if value is not None}
    config = validate(TrainConfig, {**config.model_dump(mode="json"), **asked}, origin="evaluation options")
    store = TokenStore.open(config.data)
    data = eval_set(store, split, config.eval_tokens)
    adapter = family(config.family)
    device = setup_torch(config)
    model = adapter.load_trained(run, config, store.tokenizer.vocab_size)
    return adapter.score(model, config, data, device).to_dict()
