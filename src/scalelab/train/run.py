"""One run, end to end: data subset -> model -> training (or counting) -> held-out evaluation -> run directory.

A run directory holds `config.yaml` (the resolved config, with the run id and data fingerprint), `metrics.jsonl`,
`checkpoints/` (neural) or `model/` (n-gram), and `eval.json`, written last: a run with `eval.json` is done.
Calling `train_run` again on a finished run returns its result; on an interrupted one it resumes. The same
function serves the CLI, the study runner, Ray tasks and every `torchrun` rank.
"""

from __future__ import annotations

import ctypes
import math
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from scalelab.config import read_yaml, validate
from scalelab.data.store import TokenStore
from scalelab.errors import ConfigError, TrainingDiverged
from scalelab.io import check_writable_dir, read_json_object, write_json_atomic, write_text_atomic
from scalelab.train import checkpoint
from scalelab.train.batches import WindowBatches
from scalelab.train.callbacks import Callback, MetricsLog, ProgressBar, TensorBoard
from scalelab.train.config import TrainConfig
from scalelab.train.distributed import DistInfo, barrier, init_from_env
from scalelab.train.evaluate import EvalSet, eval_set, neural_nll, result
from scalelab.train.trainer import Trainer

_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
_M_MMAP_MAX = -4
CONFIG = "config.yaml"
EVAL = "eval.json"
METRICS = "metrics.jsonl"


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


def _setup_torch(config: TrainConfig) -> torch.device:
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


def _autocast_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    if config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def _prepare_run_dir(run_dir: Path, config: TrainConfig, run_id: str, data_fingerprint: str,
                     force: bool, dist: DistInfo) -> dict[str, Any] | None:
    """Return the finished result if there is one. Only the main rank inspects and writes the directory;
    the others read what it decided once it is done."""
    if dist.is_main:
        _claim_run_dir(run_dir, config, run_id, data_fingerprint, force)
    barrier(dist)
    if (run_dir / EVAL).is_file():
        return read_json_object(run_dir / EVAL, "run result")
    return None


def _claim_run_dir(run_dir: Path, config: TrainConfig, run_id: str, data_fingerprint: str, force: bool) -> None:
    """Refuse a directory that holds a different run; start one over when forced; record the config."""
    config_path = run_dir / CONFIG
    if config_path.is_file() and not force:
        recorded = read_yaml(config_path)
        if recorded.get("run_id") != run_id:
            raise ConfigError(f"{run_dir} holds another run ({recorded.get('run_id')}); choose another --out "
                              "or pass --force to start over")
        return
    if not config_path.is_file() and run_dir.exists() and any(not p.name.startswith(".") for p in run_dir.iterdir()):
        # Not even --force starts over here: clearing it would delete files scalelab did not write.
        raise ConfigError(f"{run_dir} exists and is not a scalelab run; choose another --out")
    if force:
        for name in (EVAL, METRICS):
            (run_dir / name).unlink(missing_ok=True)
        _clear_checkpoints(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    document = {"run_id": run_id, "data_fingerprint": data_fingerprint, **config.model_dump(mode="json")}
    write_text_atomic(config_path, yaml.safe_dump(document, sort_keys=False))


def _clear_checkpoints(run_dir: Path) -> None:
    import shutil

    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    shutil.rmtree(run_dir / "model", ignore_errors=True)


def train_run(config: TrainConfig, run_dir: Path, *, force: bool = False, show_progress: bool = True) -> dict[str, Any]:
    """Train and evaluate one run in `run_dir`; returns the contents of eval.json."""
    check_writable_dir(run_dir)
    store = TokenStore.open(config.data)
    view = train_view(store, config)
    run_id = config.run_id(view.fingerprint)
    device = _setup_torch(config)
    dist = init_from_env(device.type)
    finished = _prepare_run_dir(run_dir, config, run_id, view.fingerprint, force, dist)
    if finished is not None:
        return _finite(finished, run_dir, recorded=True)
    data = eval_set(store, config.eval_split, config.eval_tokens)
    started = time.perf_counter()
    if config.family == "ngram":
        outcome = _count_ngram(config, store, view, data, run_dir)
    else:
        outcome = _train_neural(config, store, view, data, run_dir, device, dist, show_progress)
    outcome.update({
        "run_id": run_id, "family": config.family, "variant": config.variant or store.variants[0],
        "D": config.tokens, "U": config.unique_tokens or config.tokens,
        "data_fingerprint": view.fingerprint, "wall_seconds": time.perf_counter() - started,
    })
    _finite(outcome, run_dir, recorded=False)
    if dist.is_main:
        write_json_atomic(run_dir / EVAL, outcome)
    barrier(dist)
    return outcome


def _finite(outcome: dict[str, Any], run_dir: Path, recorded: bool) -> dict[str, Any]:
    """A run whose held-out loss is NaN or infinite failed: its result is never written, nor read back as done."""
    nll = outcome["eval"]["nll"]
    if math.isfinite(nll):
        return outcome
    if recorded:
        raise TrainingDiverged(f"training diverged: {run_dir / EVAL} records a held-out loss of {nll}; start the "
                               "run over with --force and a lower learning rate")
    last = checkpoint.resolve(run_dir / "checkpoints")
    raise TrainingDiverged(f"training diverged: the final held-out loss is {nll}; last good checkpoint: "
                           f"{last if last else 'none'} (lower the learning rate or check the data)")


def _count_ngram(config: TrainConfig, store: TokenStore, view, data: EvalSet, run_dir: Path) -> dict[str, Any]:
    from scalelab.models.ngram import KneserNeyLM

    tokens = view[0:len(view)] if config.unique_tokens else view.tokens
    started = time.perf_counter()
    model = KneserNeyLM.fit(tokens, config.ngram.order, store.tokenizer.vocab_size)
    fit_seconds = time.perf_counter() - started
    model.save(run_dir / "model")
    evaluation = result(float(-model.logprobs(data.stream).sum()), data)
    return {"eval": evaluation.to_dict(), "N": None, "params": sum(model.num_ngrams.values()),
            "order": config.ngram.order, "tokens_seen": len(view), "epochs": 1.0, "flops": 0.0,
            "fit_seconds": fit_seconds, "tokens_per_s": len(view) / fit_seconds if fit_seconds else None}


def build_model(config: TrainConfig, vocab_size: int) -> torch.nn.Module:
    from scalelab.models.registry import build

    torch.manual_seed(config.seed)  # the same seed gives the same initial weights
    return build(config.model_config_for_family, vocab_size)


def _train_neural(config: TrainConfig, store: TokenStore, view, data: EvalSet, run_dir: Path,
                  device: torch.device, dist: DistInfo, show_progress: bool) -> dict[str, Any]:
    from scalelab.models.registry import flops_per_token, non_embedding_params, total_params

    model_config = config.model_config_for_family
    context_length = model_config.context_length
    model = build_model(config, store.tokenizer.vocab_size).to(device)
    autocast = _autocast_dtype(config, device)
    compiled = torch.compile(model) if config.compile else model
    batches = WindowBatches(view, context_length, config.batch_size, config.seed)

    def evaluate(module: torch.nn.Module):
        return result(neural_nll(compiled, data, batches.context_length, config.eval_batch_size, device,
                                 autocast), data)

    callbacks: list[Callback] = []
    if dist.is_main:
        callbacks.append(MetricsLog(run_dir / METRICS))
        if config.tensorboard:
            callbacks.append(TensorBoard(run_dir / "tensorboard"))
        if show_progress:
            callbacks.append(ProgressBar())
    trainer = Trainer(model, batches, config, evaluate, run_dir / "checkpoints", device, dist, callbacks,
                      flops_per_token(model, batches.context_length), autocast)
    trainer.resume()
    state = trainer.fit()
    barrier(dist)  # every rank sees the main rank's final checkpoints
    best = checkpoint.resolve(run_dir / "checkpoints", checkpoint.BEST)
    if config.regime == "converge" and best is not None and best.name != checkpoint.step_name(state.step):
        checkpoint.load_weights(best, model)
        final = evaluate(model)
    else:
        final = trainer.last_eval or evaluate(model)
    return {"eval": final.to_dict(), "N": non_embedding_params(model), "params": total_params(model),
            "tokens_seen": state.tokens, "steps": state.step, "epochs": state.tokens / batches.tokens_per_epoch,
            "best_step": state.best_step if config.regime == "converge" else state.step,
            "flops": flops_per_token(model, batches.context_length) * state.tokens,
            "context_length": batches.context_length, "world_size": dist.world_size,
            "device": device.type, "threads": torch.get_num_threads()}


def load_run_config(run_dir: Path) -> TrainConfig:
    path = run_dir / CONFIG
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a scalelab run (no {CONFIG})")
    document = read_yaml(path)
    document.pop("run_id", None)
    document.pop("data_fingerprint", None)
    return validate(TrainConfig, document, origin=str(path))


def finished_run_config(run_dir: Path) -> TrainConfig:
    """The config of a run that finished training; an unfinished one is the user's mistake to report."""
    config = load_run_config(run_dir)
    if not (run_dir / EVAL).is_file():
        raise ConfigError(f"{run_dir} has not finished training; give a finished run")
    return config


def evaluate_run(run_dir: Path, split: str | None = None, eval_tokens: int | None = None) -> dict[str, Any]:
    """Re-score a run's final model (the best checkpoint when it converged) on a held-out split."""
    config = load_run_config(run_dir)
    # Validated as the run's own eval_split and eval_tokens are: a held-out split, a positive budget.
    asked = {key: value for key, value in (("eval_split", split), ("eval_tokens", eval_tokens)) if value is not None}
    config = validate(TrainConfig, {**config.model_dump(mode="json"), **asked}, origin="evaluation options")
    store = TokenStore.open(config.data)
    data = eval_set(store, config.eval_split, config.eval_tokens)
    if config.family == "ngram":
        from scalelab.models.ngram import KneserNeyLM

        model = KneserNeyLM.load(run_dir / "model")
        return result(float(-model.logprobs(data.stream).sum()), data).to_dict()
    device = _setup_torch(config)
    model = build_model(config, store.tokenizer.vocab_size).to(device)
    checkpoint.load_weights(checkpoint.final(run_dir, config.regime == "converge"), model)
    context = min(config.model_config_for_family.context_length, len(train_view(store, config)) - 1)
    return result(neural_nll(model, data, context, config.eval_batch_size, device,
                             _autocast_dtype(config, device)), data).to_dict()
