"""Training and evaluation throughput per model family and size, and the Trainer's overhead over a bare loop, on
one CPU thread.

    .venv/bin/python benchmarks/train_speed.py [--data datasets/stdlib] [--repeats 3] [--steps 10]

Throughput. LSTM and Transformer at 0.1M, 1M and 3M (context 256, batch 8 sequences): training tokens/s is
targets per optimizer step (forward, cross-entropy, backward, clip, AdamW step) over the mean time of `--steps`
steps that follow one warm-up step (the first step also allocates AdamW's state); evaluation tokens/s is one
`neural_nll` pass, batch 8, right after training, over the first whole validation documents within 24,576 tokens
(23,115 on stdlib). The n-gram: Kneser-Ney `fit` on the first 1M training tokens and `logprobs` over the
held-out splits tiled to 1M tokens, at orders 3 and 5.

Trainer overhead. For the Transformer at 0.1M and 1M, three variants train the same model (same seed, so the
same initial weights) on the same batches with the same AdamW groups (`build_optimizer`) and LR schedule
(`lr_factor` over the same total steps):
- bare: the batches are drawn with `WindowBatches` up front; each step sets the LR, then runs forward,
  cross-entropy, backward, clip, step and zero_grad, and nothing else;
- trainer: `Trainer.fit` with eval_every and checkpoint_every beyond the last step and no callbacks but the clock;
- trainer+log: the same with `MetricsLog`, which `train_run` always attaches on the main rank.
The Trainer is timed through its own hook, with nothing patched: a `StepClock` callback, last in the list, marks
the time (and the page-fault count) at `on_train_start` and at each `on_step`, so an interval covers one whole
iteration of `fit` (batch drawing, the step, the bookkeeping, the earlier callbacks and the previous step's
eval/checkpoint check). The final evaluation and checkpoint, which `fit` always runs after the last `on_step`,
fall outside every interval; they are reported apart. The bare loop marks the same after each zero_grad. Both
variants then cost the mean interval of the steps after the first, and overhead = trainer s/step / bare s/step
- 1, paired within a repeat; the median over repeats is reported. The losses of each Trainer run are compared
with the bare loop's as a check that the variants did the same work.

Every measurement runs in its own child, forked from a parent that never trains, with one torch thread and
deterministic algorithms (as `train_run` does on CPU by default). A step allocates a few hundred MB (the logits
alone are batch x context x vocabulary floats, 64 MB at a vocabulary of 8192), so its time depends on how many
fresh pages glibc's allocator hands out, and that depends on what the process did before: run one after the
other in one process behind the throughput runs, the Trainer's steps took under half the bare loop's page faults
and 25% less time, and the gap changed sign with what ran first. Forked, every measurement starts from the same
heap. Minor page faults per step are reported beside the times. The variants alternate within each repeat, in
reverse order on odd repeats, so drift in the load of a shared machine hits them alike. Figures are medians over
repeats.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers

from scalelab.data.store import TokenStore
from scalelab.models.ngram import KneserNeyLM
from scalelab.models.registry import flops_per_token, logits, non_embedding_params, total_params
from scalelab.train.batches import WindowBatches
from scalelab.train.callbacks import Callback, MetricsLog
from scalelab.train.config import TrainConfig
from scalelab.train.distributed import DistInfo
from scalelab.train.evaluate import EvalSet, eval_set, neural_nll, result
from scalelab.train.run import build_model
from scalelab.train.schedule import lr_factor
from scalelab.train.trainer import Trainer, build_optimizer

CONTEXT = 256
BATCH = 8
FAMILIES = ("lstm", "transformer")
SIZES = ("0.1M", "1M", "3M")
OVERHEAD_SIZES = ("0.1M", "1M")
OVERHEAD_VARIANTS = ("bare", "trainer", "trainer+log")
NGRAM_ORDERS = (3, 5)
NGRAM_TOKENS = 1_000_000
EVAL_TOKENS = 24_576
# The Trainer's final evaluation is not timed, so it scores as little as will do.
FINAL_EVAL_TOKENS = 2_048
# Large enough that no run reaches the end of an epoch, where the Trainer would reshuffle and the bare loop not.
TRAIN_VIEW_TOKENS = 1_000_000
TARGET_OVERHEAD_PCT = 5.0
CPU = torch.device("cpu")


def train_config(data: Path, family: str, size: str, total_steps: int) -> TrainConfig:
    beyond = total_steps + 1
    return TrainConfig(data=data, tokens=TRAIN_VIEW_TOKENS, family=family,
                       **{family: {"size": size, "context_length": CONTEXT}}, steps=total_steps, batch_size=BATCH,
                       eval_every=beyond, checkpoint_every=beyond, eval_batch_size=BATCH, device="cpu",
                       num_threads=1)


Mark = tuple[float, int]


def mark() -> Mark:
    return time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def per_step(marks: list[Mark]) -> tuple[float, float]:
    """(seconds, minor page faults) per step, the mean over the steps after the first; marks[0] is the start."""
    (first_time, first_faults), (last_time, last_faults) = marks[1], marks[-1]
    n_steps = len(marks) - 2
    return (last_time - first_time) / n_steps, (last_faults - first_faults) / n_steps


def isolated(function: Callable[..., Any], *args: Any) -> Any:
    """function(*args) in a child forked from this process, which holds the same heap before every fork."""
    with multiprocessing.get_context("fork").Pool(1, maxtasksperchild=1) as pool:
        return pool.apply(function, args)


def bare_loop(model: torch.nn.Module, config: TrainConfig, batches: list[torch.Tensor]) -> tuple[list[Mark],
                                                                                                  list[float]]:
    """(marks: the start and after each step, losses)."""
    optimizer = build_optimizer(model, config)
    losses = []
    marks = [mark()]
    for step, batch in enumerate(batches):
        for group in optimizer.param_groups:
            group["lr"] = config.optim.lr * lr_factor(step, len(batches), config.schedule)
        out = logits(model, batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(out.flatten(0, 1), batch[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        # Kept as tensors: reading a value each step is work the bare loop should not do.
        losses.append(loss.detach())
        marks.append(mark())
    return marks, [float(loss) for loss in losses]


def drawn_batches(batches: WindowBatches, n_steps: int) -> list[torch.Tensor]:
    order = batches.order(0)
    return [batches.batch(0, step, order) for step in range(n_steps)]


class StepClock(Callback):
    """Last in the callback list, so each mark follows everything `fit` does for that step."""

    def on_train_start(self, trainer: Trainer) -> None:
        self.marks = [mark()]
        self.losses: list[float] = []

    def on_step(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        self.marks.append(mark())
        self.losses.append(metrics["loss"])


def trainer_run(model: torch.nn.Module, batches: WindowBatches, config: TrainConfig, final_data: EvalSet,
                with_log: bool) -> tuple[list[Mark], list[float], float]:
    """(marks, losses, seconds of the final evaluation, checkpoint and on_train_end)."""
    def evaluate(module: torch.nn.Module):
        return result(neural_nll(module, final_data, CONTEXT, BATCH, CPU), final_data)

    clock = StepClock()
    with tempfile.TemporaryDirectory() as tmp:
        callbacks: list[Callback] = [MetricsLog(Path(tmp) / "metrics.jsonl")] if with_log else []
        trainer = Trainer(model, batches, config, evaluate, Path(tmp) / "checkpoints", CPU, DistInfo(),
                          [*callbacks, clock], flops_per_token(model, CONTEXT))
        trainer.fit()
        finished = time.perf_counter()
    return clock.marks, clock.losses, finished - clock.marks[-1][0]


def alternating(items: list[Any], repeat: int) -> list[Any]:
    return items if repeat % 2 == 0 else items[::-1]


def measure_neural(data: Path, family: str, size: str, steps: int) -> dict[str, Any]:
    store = TokenStore.open(data)
    held_out = eval_set(store, "validation", EVAL_TOKENS)
    config = train_config(data, family, size, steps + 1)
    model = build_model(config, store.tokenizer.vocab_size)
    marks, _ = bare_loop(model, config, drawn_batches(WindowBatches(store.subset(TRAIN_VIEW_TOKENS), CONTEXT, BATCH,
                                                                    config.seed), steps + 1))
    started = time.perf_counter()
    neural_nll(model, held_out, CONTEXT, BATCH, CPU)
    eval_seconds = time.perf_counter() - started
    train_seconds, faults = per_step(marks)
    return {"N": non_embedding_params(model), "params": total_params(model), "train_seconds_per_step": train_seconds,
            "train_faults_per_step": faults, "train_tokens_per_s": BATCH * CONTEXT / train_seconds,
            "eval_tokens": held_out.n_targets, "eval_seconds": eval_seconds,
            "eval_tokens_per_s": held_out.n_targets / eval_seconds}


def ngram_streams(store: TokenStore) -> tuple[np.ndarray, np.ndarray]:
    """(training tokens, scored tokens), copied out of the memory map so page-ins are not timed."""
    held_out = np.concatenate([store.split("validation").tokens, store.split("test").tokens])
    return np.array(store.subset(NGRAM_TOKENS).tokens), np.resize(held_out, NGRAM_TOKENS)


def measure_ngram(data: Path, order: int) -> dict[str, Any]:
    store = TokenStore.open(data)
    train, scored = ngram_streams(store)
    started = time.perf_counter()
    model = KneserNeyLM.fit(train, order, store.tokenizer.vocab_size)
    fit_seconds = time.perf_counter() - started
    started = time.perf_counter()
    logprobs = model.logprobs(scored)
    score_seconds = time.perf_counter() - started
    return {"train_tokens": int(train.shape[0]), "score_tokens": int(logprobs.shape[0]), "fit_seconds": fit_seconds,
            "fit_tokens_per_s": train.shape[0] / fit_seconds, "score_seconds": score_seconds,
            "score_tokens_per_s": logprobs.shape[0] / score_seconds}


def measure_overhead(data: Path, size: str, steps: int, variant: str) -> dict[str, Any]:
    store = TokenStore.open(data)
    config = train_config(data, "transformer", size, steps + 1)
    model = build_model(config, store.tokenizer.vocab_size)
    batches = WindowBatches(store.subset(TRAIN_VIEW_TOKENS), CONTEXT, BATCH, config.seed)
    if variant == "bare":
        marks, losses = bare_loop(model, config, drawn_batches(batches, steps + 1))
        final_seconds = None
    else:
        final_data = eval_set(store, "validation", FINAL_EVAL_TOKENS)
        marks, losses, final_seconds = trainer_run(model, batches, config, final_data, variant == "trainer+log")
    seconds, faults = per_step(marks)
    return {"seconds_per_step": seconds, "faults_per_step": faults, "losses": losses,
            "final_eval_checkpoint_s": final_seconds}


def medians(runs: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in keys}


def summarize_overhead(runs: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """runs: one {variant: measurement} per repeat."""
    step_keys = ("seconds_per_step", "faults_per_step")
    summary: dict[str, Any] = {"bare": medians([r["bare"] for r in runs], step_keys)}
    for variant in OVERHEAD_VARIANTS[1:]:
        pct = [100 * (r[variant]["seconds_per_step"] / r["bare"]["seconds_per_step"] - 1) for r in runs]
        summary[variant] = {
            **medians([r[variant] for r in runs], (*step_keys, "final_eval_checkpoint_s")),
            "overhead_pct_per_repeat": pct, "overhead_pct": statistics.median(pct),
            "max_loss_diff_vs_bare": max(abs(a - b) for r in runs
                                         for a, b in zip(r[variant]["losses"], r["bare"]["losses"], strict=True)),
        }
    return summary


def machine() -> dict[str, Any]:
    return {"cpu_count": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
            "torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
            "torch": torch.__version__, "transformers": transformers.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine()}


def print_table(report: dict[str, Any]) -> None:
    settings = report["settings"]
    print(f"\nthroughput, tokens/s (median of {settings['repeats']}; {settings['steps']} steps after a warm-up, "
          f"context {CONTEXT}, batch {BATCH}; eval on {report['throughput'][0]['runs'][0]['eval_tokens']:,} "
          "held-out tokens)")
    print(f"{'family':<12} {'size':>5} {'N':>10} {'params':>10} {'train tok/s':>12} {'faults/step':>12} "
          f"{'eval tok/s':>11}")
    for row in report["throughput"]:
        print(f"{row['family']:<12} {row['size']:>5} {row['N']:>10,} {row['params']:>10,} "
              f"{row['train_tokens_per_s']:>12,.0f} {row['train_faults_per_step']:>12,.0f} "
              f"{row['eval_tokens_per_s']:>11,.0f}")
    first = report["ngram"][0]["runs"][0]
    print(f"\nn-gram, tokens/s (median of {settings['repeats']}; fit on {first['train_tokens']:,} training tokens, "
          f"score {first['score_tokens']:,} held-out tokens)")
    print(f"{'order':>5} {'fit tok/s':>12} {'score tok/s':>12}")
    for row in report["ngram"]:
        print(f"{row['order']:>5} {row['fit_tokens_per_s']:>12,.0f} {row['score_tokens_per_s']:>12,.0f}")
    print(f"\ntrainer overhead, Transformer (medians of {settings['repeats']}; overhead = trainer / bare s/step - 1, "
          f"paired per repeat; target < {TARGET_OVERHEAD_PCT:.0f}%)")
    print(f"{'size':>5} {'variant':<12} {'s/step':>8} {'faults/step':>12} {'overhead':>9}  {'per repeat':<22} "
          f"{'final eval+ckpt s':>17} {'max |dloss|':>11}")
    for size, summary in report["overhead"].items():
        bare = summary["bare"]
        print(f"{size:>5} {'bare':<12} {bare['seconds_per_step']:>8.4f} {bare['faults_per_step']:>12,.0f}")
        for variant in OVERHEAD_VARIANTS[1:]:
            row = summary[variant]
            per_repeat = " ".join(f"{p:+.1f}" for p in row["overhead_pct_per_repeat"])
            print(f"{size:>5} {variant:<12} {row['seconds_per_step']:>8.4f} {row['faults_per_step']:>12,.0f} "
                  f"{row['overhead_pct']:>+8.1f}%  {per_repeat:<22} {row['final_eval_checkpoint_s']:>17.3f} "
                  f"{row['max_loss_diff_vs_bare']:>11.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("datasets/stdlib"), help="A prepared dataset.")
    parser.add_argument("--repeats", type=int, default=3, help="Measurements per case; medians are reported.")
    parser.add_argument("--steps", type=int, default=10, help="Timed training steps per run, after one warm-up.")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/train_speed.json"))
    args = parser.parse_args()
    if not (args.data / "manifest.json").is_file():
        parser.error(f"{args.data} is not a prepared dataset; make one with "
                     f"`.venv/bin/scalelab prepare --out {args.data} -q` or pass --data")
    if args.repeats < 1 or args.steps < 2:
        parser.error("--repeats must be at least 1 and --steps at least 2")

    # Set once here, before any fork, so every child inherits them.
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    neural_cases = [(family, size) for family in FAMILIES for size in SIZES]
    neural: dict[tuple[str, str], list[dict[str, Any]]] = {case: [] for case in neural_cases}
    ngram: dict[int, list[dict[str, Any]]] = {order: [] for order in NGRAM_ORDERS}
    overhead: dict[str, list[dict[str, dict[str, Any]]]] = {size: [] for size in OVERHEAD_SIZES}
    started = time.perf_counter()
    for repeat in range(args.repeats):
        print(f"repeat {repeat + 1}/{args.repeats} ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
        for family, size in alternating(neural_cases, repeat):
            neural[family, size].append(isolated(measure_neural, args.data, family, size, args.steps))
        for order in alternating(list(NGRAM_ORDERS), repeat):
            ngram[order].append(isolated(measure_ngram, args.data, order))
        for size in OVERHEAD_SIZES:
            overhead[size].append({variant: isolated(measure_overhead, args.data, size, args.steps, variant)
                                   for variant in alternating(list(OVERHEAD_VARIANTS), repeat)})
    total_seconds = time.perf_counter() - started
    report = {
        "machine": machine(),
        "settings": {"data": str(args.data), "repeats": args.repeats, "steps": args.steps, "context_length": CONTEXT,
                     "batch_size": BATCH, "deterministic": True, "train_view_tokens": TRAIN_VIEW_TOKENS,
                     "eval_token_budget": EVAL_TOKENS, "final_eval_token_budget": FINAL_EVAL_TOKENS},
        "throughput": [{"family": family, "size": size, "N": runs[0]["N"], "params": runs[0]["params"],
                        **medians(runs, ("train_seconds_per_step", "train_faults_per_step", "train_tokens_per_s",
                                         "eval_seconds", "eval_tokens_per_s")), "runs": runs}
                       for (family, size), runs in neural.items()],
        "ngram": [{"order": order, **medians(runs, ("fit_seconds", "fit_tokens_per_s", "score_seconds",
                                                    "score_tokens_per_s")), "runs": runs}
                  for order, runs in ngram.items()],
        "overhead": {size: {**summarize_overhead(runs), "runs": runs} for size, runs in overhead.items()},
        "target_overhead_pct": TARGET_OVERHEAD_PCT,
        "total_seconds": total_seconds,
    }
    print_table(report)
    print(f"\n{total_seconds:.0f} s in all")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
