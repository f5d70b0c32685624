"""Generation speed of every model family on the CPU with one torch thread: fp32 against dynamic int8 (speed and
held-out loss), and what the Transformer's KV cache buys over re-reading the whole sequence each step; and fp32
against int8 speed of larger, untrained Transformers.

    .venv/bin/python benchmarks/generation_speed.py [--runs studies-out/demo/runs] [--family transformer]
        [--tokens 100] [--repeats 5] [--samples 3] [--eval-tokens 20000] [--sizes 3M,25M]

Models: the finished runs (config.yaml and eval.json) under --runs, by default the demo study's (`make demo`); per
family the run with the most training tokens, a tie going to the raw data variant (there: the Transformer 0.3M
and the LSTM 0.1M, context 128, and the 5-gram). --family restricts to one family.

A generation. The prompt is the first 16 tokens of a fixed Python snippet (the model reads the document-start
token before it). `Completion`, the loop `scalelab generate` and the server run, samples --tokens tokens at
temperature 1 with top-p 1 and the end-of-document token's logit biased by -100, so every generation runs to full
length. Time to first token: from the Completion's construction to its first step's pieces (prefill of prompt,
sampling of the first token, its text). Decode tokens/s: the tokens after the first over the time from the first
step's pieces to the last. Overall tokens/s: all tokens over the whole time.

Variants. Transformer and LSTM: fp32 and int8 (`load_model(quantize="int8")`: dynamic int8 quantisation of every
Linear and LSTM layer; the embedding stays fp32), both loaded once. The n-gram has no int8: it is timed alone. For
the Transformer, two bare loops on the fp32 model with the same sampler, seed and EOD bias: kv-cache (prefill, then
`step` per token: Completion's model calls without its text handling) and no-cache (`prefill` of the whole
sequence so far for every token, as a model without a cache must). Cache ratio = kv-cache decode tokens/s /
no-cache decode tokens/s; the two loops' tokens are compared as a check that they did the same work (they can
part only where fp32 rounding flips a sample).

Repeats. Each variant generates once untimed first (warm-up). Then every repeat runs --samples generations per
variant, seeds 0..samples-1, the same seeds for every variant; a repeat's time to first token is the median over
its samples and its tokens/s the samples' tokens over their summed time. Within a repeat the variants alternate
in a fixed order, reversed on odd repeats, so drift in the load of a shared machine hits them alike. The int8 and
cache ratios are taken per repeat, between variants measured side by side; every figure reported is the median
over --repeats.

Held-out loss of int8: `neural_nll` (batch 8, the model's context) on the first whole validation documents within
--eval-tokens tokens, fp32 and int8 modules, once each (deterministic); nll in nats/token, bits per byte, the
int8 - fp32 deltas and each pass's time. The run's own eval.json figure is shown beside them: at the demo's
--eval-tokens (20000) the fp32 nll should match it.

Untrained sizes (--sizes, default "3M,25M"; "" for none). Whether int8 pays depends on the matrices' size: on the
demo's models it slows the 0.3M Transformer (int8 / fp32 about x0.7) yet speeds the 0.1M LSTM (about x1.4): at
such sizes per-layer costs (quantising each activation as it arrives) weigh as much as the matrix products int8
makes cheaper, which dominate only once the matrices are large. Speed depends on the shapes, not on what the
weights have learnt, so larger presets need no training to time: each is built freshly initialised
(`build_transformer`, seed 0, context 256, the selected Transformer run's tokenizer, vocabulary 8192), its int8
copy made with `quantize_int8` as `load_model` does, and both timed exactly as the trained fp32 and int8 above
(same prompt, tokens, seeds, alternation and ratios). No held-out loss and no KV-cache comparison for them: an
untrained model's loss says nothing about int8's effect on a trained one, and the cache's benefit is measured on
the trained Transformer.

Results: printed, and written with the machine's details to --out (default benchmarks/results/generation_speed.json).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from deploy_bench import (
    EOD_BIAS,
    FAMILIES,
    PROMPT_SNIPPET,
    PROMPT_TOKENS,
    add_runs_option,
    demo_runs,
    find_runs,
    prompt_ids,
    write_results,
)

from scalelab.data.store import TokenStore
from scalelab.data.tokenizer import Tokenizer
from scalelab.deploy.completion import Completion
from scalelab.deploy.model import DeployedModel, TransformerModel, load_model, quantize_int8
from scalelab.deploy.sampling import Sampler, SamplingParams, make_generator
from scalelab.models.transformer import PRESETS, TransformerConfig, build_transformer
from scalelab.train.evaluate import eval_set, neural_nll, result
from scalelab.train.run import load_run_config

NEURAL = ("transformer", "lstm")
EVAL_BATCH = 8
CPU = torch.device("cpu")
SIZE_CONTEXT = 256  # context of the untrained --sizes models


def sampling(model: DeployedModel, tokens: int, seed: int) -> SamplingParams:
    return SamplingParams(max_tokens=tokens, temperature=1.0, top_p=1.0, seed=seed,
                          logit_bias={model.eod_id: EOD_BIAS})


def timed_completion(model: DeployedModel, prompt: list[int], tokens: int, seed: int) -> dict[str, Any]:
    started = time.perf_counter()
    # Ids are read as given: put the end-of-document token first, as a text prompt's would be.
    completion = Completion(model, [model.eod_id, *prompt], sampling(model, tokens, seed), make_generator(seed))
    marks = [time.perf_counter() for _ in completion]
    return {"tokens": completion.completion_tokens, "finish_reason": completion.finish_reason,
            "ttft_s": marks[0] - started, "decode_s": marks[-1] - marks[0], "total_s": marks[-1] - started}


@torch.inference_mode()
def timed_loop(model: DeployedModel, prompt: list[int], tokens: int, seed: int, cached: bool) -> dict[str, Any]:
    """The bare sampling loop, reading on from the KV cache (cached) or re-reading every token so far."""
    sampler = Sampler(sampling(model, tokens, seed), model.vocab_size, make_generator(seed))
    ids = [model.eod_id, *prompt]
    started = time.perf_counter()
    state, logprobs = model.prefill(ids)
    ids.append(sampler.choose(logprobs))
    first = time.perf_counter()
    for _ in range(tokens - 1):
        state, logprobs = model.step(state, ids[-1]) if cached else model.prefill(ids)
        ids.append(sampler.choose(logprobs))
    done = time.perf_counter()
    return {"tokens": tokens, "ttft_s": first - started, "decode_s": done - first, "total_s": done - started,
            "ids": ids[len(prompt) + 1:]}


def summarize_samples(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """One repeat of one variant."""
    tokens = sum(s["tokens"] for s in samples)
    return {"ttft_s": statistics.median(s["ttft_s"] for s in samples),
            "decode_tokens_per_s": sum(s["tokens"] - 1 for s in samples) / sum(s["decode_s"] for s in samples),
            "tokens_per_s": tokens / sum(s["total_s"] for s in samples), "tokens": tokens,
            "full_length": all(s.get("finish_reason", "length") == "length" for s in samples)}


def held_out_loss(run_dir: Path, models: dict[str, DeployedModel], eval_tokens: int) -> dict[str, Any]:
    config = load_run_config(run_dir)
    data = eval_set(TokenStore.open(config.data), "validation", eval_tokens)
    losses: dict[str, Any] = {}
    for variant, model in models.items():
        started = time.perf_counter()
        nll = neural_nll(model.module, data, context_length=model.context_length, batch_size=EVAL_BATCH,
                         device=CPU)
        losses[variant] = {**result(nll, data).to_dict(), "seconds": time.perf_counter() - started}
    losses["int8_minus_fp32"] = {key: losses["int8"][key] - losses["fp32"][key] for key in ("nll", "bits_per_byte")}
    run_eval = json.loads((run_dir / "eval.json").read_text(encoding="utf-8"))["eval"]
    losses["run_eval"] = {key: run_eval.get(key) for key in ("nll", "bits_per_byte", "tokens", "split")}
    return losses


def generation_prompt(model: DeployedModel, label: str, tokens: int) -> list[int]:
    prompt = prompt_ids(model.tokenizer)
    if len(prompt) + tokens > model.context_length - 1:
        raise SystemExit(f"--tokens {tokens} does not fit the {label}'s context of {model.context_length} "
                         f"with a {len(prompt)}-token prompt and the document-start token")
    return prompt


def completion_variants(models: dict[str, DeployedModel], prompt: list[int],
                        tokens: int) -> dict[str, Callable[[int], dict[str, Any]]]:
    return {name: (lambda seed, model=model: timed_completion(model, prompt, tokens, seed))
            for name, model in models.items()}


def run_repeats(label: str, variants: dict[str, Callable[[int], dict[str, Any]]],
                args: argparse.Namespace) -> list[dict[str, list[dict[str, Any]]]]:
    """A warm-up per variant, then per repeat every variant's samples, the variants alternating in an order
    reversed on odd repeats."""
    for measure in variants.values():
        measure(0)  # warm-up
    repeats = []
    order = list(variants)
    for repeat in range(args.repeats):
        print(f"  {label}: repeat {repeat + 1}/{args.repeats}", file=sys.stderr)
        samples: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
        for seed in range(args.samples):
            for name in (order if repeat % 2 == 0 else order[::-1]):
                samples[name].append(variants[name](seed))
        repeats.append(samples)
    return repeats


def summarize_repeats(raw: list[dict[str, list[dict[str, Any]]]]) -> list[dict[str, dict[str, Any]]]:
    return [{name: summarize_samples(runs) for name, runs in samples.items()} for samples in raw]


def variant_medians(repeats: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    def median(name: str, key: str) -> float:
        return statistics.median(r[name][key] for r in repeats)

    return {name: {"ttft_ms": 1000 * median(name, "ttft_s"),
                   "decode_tokens_per_s": median(name, "decode_tokens_per_s"),
                   "tokens_per_s": median(name, "tokens_per_s"),
                   "full_length": all(r[name]["full_length"] for r in repeats)} for name in repeats[0]}


def ratio(repeats: list[dict[str, dict[str, Any]]], numerator: str, denominator: str, key: str) -> dict[str, Any]:
    per_repeat = [r[numerator][key] / r[denominator][key] for r in repeats]
    return {"median": statistics.median(per_repeat), "per_repeat": per_repeat}


def int8_ratios(repeats: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    return {key: ratio(repeats, "int8", "fp32", key) for key in ("decode_tokens_per_s", "tokens_per_s", "ttft_s")}


def benchmark_family(family: str, run: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    run_dir = Path(run["path"])
    fp32 = load_model(run_dir)
    # The n-gram has no precision to choose: its one variant is "-".
    models = {"fp32": fp32, "int8": load_model(run_dir, quantize="int8")} if family in NEURAL else {"-": fp32}
    prompt = generation_prompt(fp32, family, args.tokens)
    variants = completion_variants(models, prompt, args.tokens)
    if family == "transformer":
        variants["kv-cache"] = lambda seed: timed_loop(fp32, prompt, args.tokens, seed, cached=True)
        variants["no-cache"] = lambda seed: timed_loop(fp32, prompt, args.tokens, seed, cached=False)
    raw = run_repeats(family, variants, args)
    repeats = summarize_repeats(raw)

    report: dict[str, Any] = {"run": run, "prompt_tokens": len(prompt), "generated_tokens": args.tokens,
                              "variants": variant_medians(repeats)}
    if "int8" in models:
        report["int8_over_fp32"] = int8_ratios(repeats)
        report["loss"] = held_out_loss(run_dir, models, args.eval_tokens)
    if family == "transformer":
        report["cache_over_no_cache"] = {key: ratio(repeats, "kv-cache", "no-cache", key)
                                         for key in ("decode_tokens_per_s", "tokens_per_s")}
        cache_checks = [a["ids"] == b["ids"] for samples in raw
                        for a, b in zip(samples["kv-cache"], samples["no-cache"], strict=True)]
        report["cache_same_tokens"] = f"{sum(cache_checks)}/{len(cache_checks)}"
    report["repeats"] = repeats
    return report


def size_tokenizer(runs_dir: Path, runs: dict[str, dict[str, Any]]) -> tuple[Tokenizer, str]:
    """The tokenizer of the selected Transformer run (looked up on its own when --family chose another)."""
    run = runs.get("transformer") or find_runs(runs_dir, ("transformer",)).get("transformer")
    if run is None:
        raise SystemExit(f"--sizes takes its tokenizer from a finished transformer run; none under {runs_dir}")
    return TokenStore.open(load_run_config(Path(run["path"])).data).tokenizer, run["run_id"]


def benchmark_size(size: str, tokenizer: Tokenizer, args: argparse.Namespace) -> dict[str, Any]:
    """fp32 against int8 speed of a freshly initialised Transformer preset: no held-out loss (untrained)."""
    torch.manual_seed(0)
    module = build_transformer(TransformerConfig(size=size, context_length=SIZE_CONTEXT), tokenizer.vocab_size)
    label = f"transformer-{size}-untrained"
    models = {"fp32": TransformerModel(label, tokenizer, module, SIZE_CONTEXT),
              "int8": TransformerModel(label, tokenizer, quantize_int8(copy.deepcopy(module)), SIZE_CONTEXT)}
    prompt = generation_prompt(models["fp32"], f"untrained {size} transformer", args.tokens)
    raw = run_repeats(f"transformer {size} (untrained)", completion_variants(models, prompt, args.tokens), args)
    repeats = summarize_repeats(raw)
    embedding = module.get_input_embeddings().weight.numel()  # tied with the output layer
    return {"model": {"size": size, "context_length": SIZE_CONTEXT, "trained": False,
                      "parameters": sum(p.numel() for p in module.parameters()),
                      "non_embedding_parameters": sum(p.numel() for p in module.parameters()) - embedding},
            "prompt_tokens": len(prompt), "generated_tokens": args.tokens, "variants": variant_medians(repeats),
            "int8_over_fp32": int8_ratios(repeats), "loss": None, "repeats": repeats}


def machine() -> dict[str, Any]:
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "cpu_count": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
            "torch_threads": torch.get_num_threads(), "quantized_engine": torch.backends.quantized.engine,
            "torch": torch.__version__, "transformers": transformers.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine()}


def print_rows(family: str, model: str, variants: dict[str, dict[str, Any]]) -> None:
    for name, figures in variants.items():
        print(f"{family:<12} {model:<18} {name:<9} {figures['ttft_ms']:>8.2f} "
              f"{figures['decode_tokens_per_s']:>13,.0f} {figures['tokens_per_s']:>14,.0f}"
              + ("" if figures["full_length"] else "  (some ended early)"))


def print_int8_speed(label: str, speed: dict[str, Any]) -> None:
    per_repeat = " ".join(f"{x:.2f}" for x in speed["decode_tokens_per_s"]["per_repeat"])
    print(f"\n{label} int8 / fp32: decode x{speed['decode_tokens_per_s']['median']:.2f} (per repeat "
          f"{per_repeat}), overall x{speed['tokens_per_s']['median']:.2f}, TTFT x{speed['ttft_s']['median']:.2f}")


def print_loss(loss: dict[str, Any]) -> None:
    print(f"  held-out loss on {loss['fp32']['tokens']:,} validation tokens: nll {loss['fp32']['nll']:.4f} "
          f"-> {loss['int8']['nll']:.4f} ({loss['int8_minus_fp32']['nll']:+.4f} nats/token), bits/byte "
          f"{loss['fp32']['bits_per_byte']:.4f} -> {loss['int8']['bits_per_byte']:.4f} "
          f"({loss['int8_minus_fp32']['bits_per_byte']:+.4f}); eval pass {loss['fp32']['seconds']:.2f} s "
          f"-> {loss['int8']['seconds']:.2f} s")
    print(f"  (the run's eval.json: nll {loss['run_eval']['nll']:.4f} on {loss['run_eval']['tokens']:,} "
          f"{loss['run_eval']['split']} tokens)")


def print_cache(family: str, row: dict[str, Any]) -> None:
    cache = row["cache_over_no_cache"]
    per_repeat = " ".join(f"{x:.2f}" for x in cache["decode_tokens_per_s"]["per_repeat"])
    print(f"\n{family} KV cache / no cache: decode x{cache['decode_tokens_per_s']['median']:.2f} (per repeat "
          f"{per_repeat}), overall x{cache['tokens_per_s']['median']:.2f}; same tokens in "
          f"{row['cache_same_tokens']} samples")


def print_size(row: dict[str, Any]) -> None:
    model = row["model"]
    print_int8_speed(f"transformer {model['size']} (untrained, context {model['context_length']})",
                     row["int8_over_fp32"])
    print(f"  {model['parameters']:,} parameters ({model['non_embedding_parameters']:,} non-embedding); "
          "no held-out loss: untrained, so int8's effect on loss says nothing here")


def print_report(report: dict[str, Any]) -> None:
    settings = report["settings"]
    print(f"\ngeneration, one torch thread ({settings['tokens']} tokens after a {PROMPT_TOKENS}-token prompt, "
          f"temperature 1, EOD suppressed; medians of {settings['repeats']} repeats x {settings['samples']} "
          "samples)")
    print(f"{'family':<12} {'model':<18} {'variant':<9} {'TTFT ms':>8} {'decode tok/s':>13} {'overall tok/s':>14}")
    for family, row in report["families"].items():
        print_rows(family, row["run"]["model"], row["variants"])
    for size, row in report["sizes"].items():
        print_rows("transformer", f"{size}, untrained", row["variants"])
    for family, row in report["families"].items():
        if "int8_over_fp32" in row:
            print_int8_speed(family, row["int8_over_fp32"])
            print_loss(row["loss"])
        if "cache_over_no_cache" in row:
            print_cache(family, row)
    for row in report["sizes"].values():
        print_size(row)


def parse_sizes(text: str) -> list[str]:
    sizes = [size.strip() for size in text.split(",") if size.strip()]
    if unknown := [size for size in sizes if size not in PRESETS]:
        raise argparse.ArgumentTypeError(f"unknown transformer preset {', '.join(unknown)}; presets: "
                                         f"{', '.join(PRESETS)}")
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_runs_option(parser, "per family the run with the most training tokens is used")
    parser.add_argument("--family", choices=FAMILIES, help="Benchmark this family only.")
    parser.add_argument("--tokens", type=int, default=100, help="Tokens generated per sample.")
    parser.add_argument("--repeats", type=int, default=5, help="Repeats per variant; medians are reported.")
    parser.add_argument("--samples", type=int, default=3, help="Generations per variant in each repeat.")
    parser.add_argument("--eval-tokens", type=int, default=20_000, help="Validation tokens for the int8 loss check.")
    parser.add_argument("--sizes", type=parse_sizes, default="3M,25M",
                        help="Comma-separated Transformer presets also timed untrained, fp32 against int8 "
                             "(\"\" for none).")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/generation_speed.json"))
    args = parser.parse_args()
    if args.tokens < 2 or args.repeats < 1 or args.samples < 1 or args.eval_tokens < 1:
        parser.error("--tokens must be at least 2, and --repeats, --samples and --eval-tokens at least 1")
    runs = demo_runs(args.runs, (args.family,) if args.family else FAMILIES)

    torch.set_num_threads(1)
    started = time.perf_counter()
    results = {}
    for family, run in runs.items():
        print(f"{family}: {run['run_id']} ({run['model']}, {run['tokens']:,} tokens, {run['variant']})",
              file=sys.stderr)
        results[family] = benchmark_family(family, run, args)
    sizes: dict[str, Any] = {}
    if args.sizes:
        tokenizer, tokenizer_run = size_tokenizer(args.runs, runs)
        for size in args.sizes:
            print(f"transformer {size}: untrained, context {SIZE_CONTEXT}, tokenizer of {tokenizer_run}",
                  file=sys.stderr)
            sizes[size] = {**benchmark_size(size, tokenizer, args), "tokenizer_run": tokenizer_run}
    report = {"machine": machine(),
              "settings": {"runs": str(args.runs), "tokens": args.tokens, "repeats": args.repeats,
                           "samples": args.samples, "eval_tokens": args.eval_tokens, "prompt": PROMPT_SNIPPET,
                           "prompt_tokens": PROMPT_TOKENS, "temperature": 1.0, "eod_bias": EOD_BIAS,
                           "sizes": args.sizes, "size_context_length": SIZE_CONTEXT},
              "families": results, "sizes": sizes, "total_seconds": time.perf_counter() - started}
    print_report(report)
    write_results(report, args.out)


if __name__ == "__main__":
    main()
