"""Kneser-Ney n-gram estimation time and peak memory, and scoring throughput, on one core.

    .venv/bin/python benchmarks/ngram_speed.py [--source auto|stdlib|zipf] [--repeats 1]

Training streams are the first 1M tokens of the stdlib train split and the whole split tiled to 10M (it holds
~8.4M tokens, so 1.6M of the 10M repeat); scoring streams are its validation and test splits tiled to 1M tokens.
Without datasets/stdlib (or with --source zipf), streams are i.i.d. Zipfian ids of a vocabulary of 8192, a harder
case with far more distinct n-grams. Peak memory is tracemalloc's peak (numpy and Python allocations) during
`fit`, over what was allocated before it.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import tracemalloc
from pathlib import Path

import numpy as np

from scalelab.data import TokenStore
from scalelab.models.ngram import KneserNeyLM

STDLIB = Path("datasets/stdlib")
ZIPF_VOCAB = 8192
TRAIN_SIZES = (1_000_000, 10_000_000)
ORDERS = (3, 5)
SCORE_TOKENS = 1_000_000
TARGET_FIT_SECONDS = 60.0  # 5-gram, 10M tokens
TARGET_SCORE_RATE = 1e6  # tokens/s


def zipf_stream(n_tokens: int, seed: int) -> np.ndarray:
    weights = 1.0 / np.arange(1, ZIPF_VOCAB + 1)
    return np.random.default_rng(seed).choice(ZIPF_VOCAB, size=n_tokens, p=weights / weights.sum()).astype(np.uint16)


def streams(source: str) -> tuple[str, int, dict[int, np.ndarray], np.ndarray]:
    """(source name, vocab_size, training stream per size, scoring stream)."""
    if source == "stdlib":
        store = TokenStore.open(STDLIB)
        train = np.asarray(store.train().tokens)
        held_out = np.concatenate([store.split("validation").tokens, store.split("test").tokens])
        return ("stdlib", store.tokenizer.vocab_size, {n: np.resize(train, n) for n in TRAIN_SIZES},
                np.resize(held_out, SCORE_TOKENS))
    longest = zipf_stream(max(TRAIN_SIZES), seed=0)
    return "zipf", ZIPF_VOCAB, {n: longest[:n] for n in TRAIN_SIZES}, zipf_stream(SCORE_TOKENS, seed=1)


def timed_fit(tokens: np.ndarray, order: int, vocab_size: int) -> tuple[KneserNeyLM, float, float]:
    tracemalloc.start()
    started = time.perf_counter()
    model = KneserNeyLM.fit(tokens, order, vocab_size)
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return model, seconds, peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", choices=["auto", "stdlib", "zipf"], default="auto")
    parser.add_argument("--repeats", type=int, default=1, help="Fits and scorings per case; the fastest counts.")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ngram_speed.json"))
    args = parser.parse_args()

    source = args.source if args.source != "auto" else ("stdlib" if (STDLIB / "manifest.json").is_file() else "zipf")
    name, vocab_size, train, held_out = streams(source)
    print(f"source {name}, vocabulary {vocab_size}, scoring {held_out.shape[0]:,} tokens, {args.repeats} repeat(s)")
    print(f"{'tokens':>11} {'order':>5} {'fit s':>7} {'peak MiB':>9} {'n-grams':>11} "
          f"{'score s':>8} {'tokens/s':>11} {'nll':>6}")
    runs = []
    for n_tokens, tokens in train.items():
        for order in ORDERS:
            fits = [timed_fit(tokens, order, vocab_size) for _ in range(args.repeats)]
            model = fits[0][0]
            fit_seconds, peak_mib = min(f[1] for f in fits), max(f[2] for f in fits)
            score_seconds = float("inf")
            for _ in range(args.repeats):
                started = time.perf_counter()
                logprobs = model.logprobs(held_out)
                score_seconds = min(score_seconds, time.perf_counter() - started)
            run = {"train_tokens": n_tokens, "order": order, "fit_seconds": fit_seconds, "fit_peak_mib": peak_mib,
                   "num_ngrams": model.num_ngrams, "fallback_orders": model.fallback_orders,
                   "score_tokens": int(logprobs.shape[0]), "score_seconds": score_seconds,
                   "score_tokens_per_s": logprobs.shape[0] / score_seconds, "held_out_nll": -float(logprobs.mean())}
            runs.append(run)
            print(f"{n_tokens:>11,} {order:>5} {fit_seconds:>7.2f} {peak_mib:>9.0f} "
                  f"{sum(model.num_ngrams.values()):>11,} {score_seconds:>8.3f} "
                  f"{run['score_tokens_per_s']:>11,.0f} {run['held_out_nll']:>6.3f}")

    largest = next(r for r in runs if r["train_tokens"] == max(TRAIN_SIZES) and r["order"] == max(ORDERS))
    targets = {"fit_5gram_10M_under_s": TARGET_FIT_SECONDS,
               "fit_met": largest["fit_seconds"] < TARGET_FIT_SECONDS,
               "score_tokens_per_s_at_least": TARGET_SCORE_RATE,
               "score_met": largest["score_tokens_per_s"] >= TARGET_SCORE_RATE}
    print(f"targets: 5-gram on {max(TRAIN_SIZES):,} tokens in {largest['fit_seconds']:.1f} s "
          f"(< {TARGET_FIT_SECONDS:.0f} s: {targets['fit_met']}); scoring {largest['score_tokens_per_s']:,.0f} "
          f"tokens/s (>= {TARGET_SCORE_RATE:,.0f}: {targets['score_met']})")
    report = {"machine": {"python": platform.python_version(), "numpy": np.__version__,
                          "platform": platform.platform()},
              "source": name, "vocab_size": vocab_size, "repeats": args.repeats, "runs": runs, "targets": targets}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
