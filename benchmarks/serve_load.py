"""The OpenAI-compatible server under load: throughput and latency with many concurrent clients, streaming time to
first chunk, and the refusal of requests beyond the admission limits.

    .venv/bin/python benchmarks/serve_load.py [--runs studies-out/demo/runs] [--family transformer]
        [--requests 200] [--concurrency 16] [--max-tokens 16] [--repeats 3]

Model: a finished run under --runs, by default the demo study's (`make demo`): the run of --family (default the
Transformer, 0.3M, context 128) with the most training tokens, a tie going to the raw data variant, loaded fp32.

Server: `create_app` (max_running 4, max_waiting 64, as `scalelab serve` defaults) under uvicorn on 127.0.0.1 in a
background thread of this process, which runs with one torch thread. The clients are a thread pool in the same
process, so they share its interpreter lock and the machine's cores with the server: the figures are what the
server gives with its clients beside it, a lower bound for the server alone.

Load. --requests completion requests (`/v1/completions` through the official `openai` client, max_retries 0),
--concurrency at a time, each with its own seed (0..requests-1) at temperature 1, --max-tokens tokens with the
end-of-document token's logit biased by -100 so each request does the same work, and a fixed prompt (16 tokens of
a Python snippet, tokenised by the server). Per request: latency from the call to the parsed answer (or, streaming,
to the stream's end), the HTTP status (200, or `APIStatusError.status_code`; a failure without a status is counted
by its exception type), completion tokens from the answer's usage. Throughput: 200 answers and their completion
tokens over the pass's wall time (first submission to last answer). Latency percentiles (p50/p90/p99, linear
interpolation) are over the 200 answers. The streaming variant sends the same requests with stream: true (usage
included) and times the first chunk as the first event out of the stream iterator, after the response headers.
Two warm-up requests (one plain, one streaming) precede the first pass. Each repeat runs both variants, in reverse
order on odd repeats; figures are medians over --repeats.

Overload. A second server with max_running 1 and max_waiting 2 (3 admitted at most) gets --overload-requests
(default 32) requests released together from a barrier, each --overload-tokens long (EOD suppressed) so the
admitted ones are still running as the rest arrive. Counted: 200s and 503s, and the median latency of each: a 503
must be immediate (no model work, Retry-After set), a 200 waits for its turn. Once per repeat.

Results: printed, and written with the machine's details to --out (default benchmarks/results/serve_load.json).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import fastapi
import numpy as np
import openai
import torch
import transformers
import uvicorn
from deploy_bench import EOD_BIAS, FAMILIES, add_runs_option, demo_runs, prompt_ids, write_results

from scalelab.deploy.model import DeployedModel, load_model
from scalelab.deploy.server import ServeConfig, create_app

VARIANTS = ("plain", "stream")
TIMEOUT_S = 120.0


@contextlib.contextmanager
def live_server(model: DeployedModel, config: ServeConfig) -> Iterator[tuple[str, fastapi.FastAPI]]:
    """(base URL of the API, app) of a uvicorn server on a free port, in a background thread."""
    app = create_app(model, config)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise SystemExit("the server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}/v1", app
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=TIMEOUT_S)


def request(api: openai.OpenAI, model: DeployedModel, prompt: str, max_tokens: int, seed: int,
            stream: bool) -> dict[str, Any]:
    """One completion -> {"status", "latency_s", "tokens", and streaming "first_chunk_s"}."""
    started = time.perf_counter()
    record: dict[str, Any] = {"seed": seed}
    try:
        kwargs = {"model": model.name, "prompt": prompt, "max_tokens": max_tokens, "temperature": 1.0,
                  "seed": seed, "logit_bias": {str(model.eod_id): EOD_BIAS}}
        if stream:
            tokens = 0
            first = None
            for chunk in api.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}):
                if first is None:
                    first = time.perf_counter() - started
                if chunk.usage is not None:
                    tokens = chunk.usage.completion_tokens
            record["first_chunk_s"] = first
        else:
            answer = api.completions.create(**kwargs)
            tokens = answer.usage.completion_tokens
        record.update(status=200, tokens=tokens)
    except openai.APIStatusError as exc:
        record.update(status=exc.status_code, retry_after=exc.response.headers.get("retry-after"))
    except openai.APIError as exc:  # no HTTP status: connection failure, timeout
        record.update(status=type(exc).__name__)
    record["latency_s"] = time.perf_counter() - started
    return record


def percentiles(values: list[float], points: tuple[int, ...] = (50, 90, 99)) -> dict[str, float | None]:
    return {f"p{p}": float(np.percentile(values, p)) if values else None for p in points}


def load_pass(base_url: str, model: DeployedModel, prompt: str, args: argparse.Namespace,
              stream: bool) -> dict[str, Any]:
    api = client(base_url)
    try:
        with ThreadPoolExecutor(args.concurrency, thread_name_prefix="client") as pool:
            started = time.perf_counter()
            records = list(pool.map(lambda seed: request(api, model, prompt, args.max_tokens, seed, stream),
                                    range(args.requests)))
            wall = time.perf_counter() - started
    finally:
        api.close()
    ok = [r for r in records if r["status"] == 200]
    tokens = sum(r["tokens"] for r in ok)
    summary: dict[str, Any] = {
        "wall_s": wall, "ok": len(ok), "non_200": len(records) - len(ok),
        "status_counts": {str(k): v for k, v in Counter(r["status"] for r in records).items()},
        "requests_per_s": len(ok) / wall, "tokens_per_s": tokens / wall, "completion_tokens": tokens,
        "latency_ms": {k: None if v is None else 1000 * v for k, v in
                       percentiles([r["latency_s"] for r in ok]).items()},
    }
    if stream:
        summary["first_chunk_ms"] = {k: None if v is None else 1000 * v for k, v in
                                     percentiles([r["first_chunk_s"] for r in ok], (50, 99)).items()}
    return summary


def overload_burst(base_url: str, model: DeployedModel, prompt: str, n_requests: int,
                   max_tokens: int) -> dict[str, Any]:
    api = client(base_url)
    barrier = threading.Barrier(n_requests)

    def fire(seed: int) -> dict[str, Any]:
        barrier.wait()
        return request(api, model, prompt, max_tokens, seed, stream=False)

    try:
        with ThreadPoolExecutor(n_requests, thread_name_prefix="burst") as pool:
            records = list(pool.map(fire, range(n_requests)))
    finally:
        api.close()
    by_status = Counter(r["status"] for r in records)

    def median_ms(status: int) -> float | None:
        latencies = [r["latency_s"] for r in records if r["status"] == status]
        return 1000 * statistics.median(latencies) if latencies else None

    return {"status_counts": {str(k): v for k, v in by_status.items()}, "ok": by_status[200],
            "refused": by_status[503], "ok_median_ms": median_ms(200), "refused_median_ms": median_ms(503),
            "refused_max_ms": max((1000 * r["latency_s"] for r in records if r["status"] == 503), default=None),
            "retry_after": sorted({r["retry_after"] for r in records if r["status"] == 503}, key=str)}


def median_of(passes: list[dict[str, Any]], get: Callable[[dict[str, Any]], float | None]) -> float | None:
    values = [v for v in map(get, passes) if v is not None]
    return statistics.median(values) if values else None


def summarize_load(passes: list[dict[str, Any]], stream: bool) -> dict[str, Any]:
    summary = {key: median_of(passes, lambda p, key=key: p[key])
               for key in ("wall_s", "requests_per_s", "tokens_per_s")}
    summary["non_200_total"] = sum(p["non_200"] for p in passes)
    summary["latency_ms"] = {k: median_of(passes, lambda p, k=k: p["latency_ms"][k]) for k in ("p50", "p90", "p99")}
    if stream:
        summary["first_chunk_ms"] = {k: median_of(passes, lambda p, k=k: p["first_chunk_ms"][k])
                                     for k in ("p50", "p99")}
    return {**summary, "passes": passes}


def machine() -> dict[str, Any]:
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "cpu_count": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "transformers": transformers.__version__, "openai": openai.__version__, "uvicorn": uvicorn.__version__,
            "fastapi": fastapi.__version__, "numpy": np.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "processor": platform.processor() or platform.machine()}


def fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def print_report(report: dict[str, Any]) -> None:
    s = report["settings"]
    print(f"\n{s['family']} {report['run']['model']} ({report['run']['run_id']}): {s['requests']} requests, "
          f"{s['concurrency']} at a time, {s['max_tokens']} tokens each, prompt {report['prompt_tokens']} tokens; "
          f"server max_running {s['max_running']}, max_waiting {s['max_waiting']}; medians of {s['repeats']} "
          "repeats")
    print(f"{'variant':<8} {'req/s':>7} {'tok/s':>7} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'non-200':>8} "
          f"{'first chunk p50 ms':>19} {'p99 ms':>7}")
    for name in VARIANTS:
        row = report["load"][name]
        latency = row["latency_ms"]
        chunk = row.get("first_chunk_ms", {})
        print(f"{name:<8} {fmt(row['requests_per_s']):>7} {fmt(row['tokens_per_s'], '.0f'):>7} "
              f"{fmt(latency['p50']):>8} {fmt(latency['p90']):>8} {fmt(latency['p99']):>8} "
              f"{row['non_200_total']:>8} {fmt(chunk.get('p50')):>19} {fmt(chunk.get('p99')):>7}")
    o = report["overload"]
    print(f"\noverload: {s['overload_requests']} requests at once, {s['overload_tokens']} tokens each, on "
          "max_running 1, max_waiting 2 (medians of the repeats)")
    print(f"  200: {fmt(o['ok'], '.0f')} (median latency {fmt(o['ok_median_ms'])} ms), 503: {fmt(o['refused'], '.0f')} "
          f"(median latency {fmt(o['refused_median_ms'])} ms, slowest {fmt(o['refused_max_ms'])} ms), "
          f"per repeat {[b['status_counts'] for b in o['bursts']]}, Retry-After {o['retry_after']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_runs_option(parser, "the run of --family with the most training tokens is served")
    parser.add_argument("--family", choices=FAMILIES, default="transformer")
    parser.add_argument("--requests", type=int, default=200, help="Requests per pass.")
    parser.add_argument("--concurrency", type=int, default=16, help="Requests in flight at once.")
    parser.add_argument("--max-tokens", type=int, default=16, help="Tokens generated per request.")
    parser.add_argument("--max-running", type=int, default=4, help="Server: requests generating at once.")
    parser.add_argument("--max-waiting", type=int, default=64, help="Server: requests waiting for a turn.")
    parser.add_argument("--repeats", type=int, default=3, help="Passes per variant; medians are reported.")
    parser.add_argument("--overload-requests", type=int, default=32, help="Requests in the overload burst.")
    parser.add_argument("--overload-tokens", type=int, default=100, help="Tokens per request in the burst.")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/serve_load.json"))
    args = parser.parse_args()
    if min(args.requests, args.concurrency, args.max_tokens, args.repeats, args.overload_requests,
           args.overload_tokens) < 1:
        parser.error("--requests, --concurrency, --max-tokens, --repeats and the --overload-* counts must be >= 1")
    run = demo_runs(args.runs, (args.family,))[args.family]

    torch.set_num_threads(1)
    model = load_model(Path(run["path"]))
    prompt = model.tokenizer.decode(prompt_ids(model.tokenizer))
    print(f"{args.family}: {run['run_id']} ({run['model']}, {run['tokens']:,} tokens, {run['variant']})",
          file=sys.stderr)
    started = time.perf_counter()
    passes: dict[str, list[dict[str, Any]]] = {name: [] for name in VARIANTS}
    config = ServeConfig(max_running=args.max_running, max_waiting=args.max_waiting)
    with live_server(model, config) as (base_url, app):
        api = client(base_url)
        warm = [request(api, model, prompt, args.max_tokens, 0, stream) for stream in (False, True)]
        prompt_tokens = api.completions.create(model=model.name, prompt=prompt, max_tokens=1).usage.prompt_tokens
        api.close()
        if any(r["status"] != 200 for r in warm):
            raise SystemExit(f"warm-up requests failed: {warm}")
        for repeat in range(args.repeats):
            print(f"repeat {repeat + 1}/{args.repeats} ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
            for name in (VARIANTS if repeat % 2 == 0 else VARIANTS[::-1]):
                passes[name].append({**load_pass(base_url, model, prompt, args, stream=name == "stream"),
                                     "admitted_after": app.state.scheduler.admitted})
    bursts = []
    with live_server(model, ServeConfig(max_running=1, max_waiting=2)) as (base_url, _):
        for _ in range(args.repeats):
            bursts.append(overload_burst(base_url, model, prompt, args.overload_requests, args.overload_tokens))

    overload = {key: median_of(bursts, lambda b, key=key: b[key])
                for key in ("ok", "refused", "ok_median_ms", "refused_median_ms", "refused_max_ms")}
    overload["retry_after"] = sorted({value for b in bursts for value in b["retry_after"]}, key=str)
    report = {
        "machine": machine(), "run": run, "prompt": prompt, "prompt_tokens": prompt_tokens,
        "settings": {"family": args.family, "requests": args.requests, "concurrency": args.concurrency,
                     "max_tokens": args.max_tokens, "max_running": args.max_running, "max_waiting": args.max_waiting,
                     "repeats": args.repeats, "temperature": 1.0, "eod_bias": EOD_BIAS,
                     "overload_requests": args.overload_requests, "overload_tokens": args.overload_tokens,
                     "overload_server": {"max_running": 1, "max_waiting": 2}},
        "load": {name: summarize_load(passes[name], stream=name == "stream") for name in VARIANTS},
        "overload": {**overload, "bursts": bursts},
        "total_seconds": time.perf_counter() - started,
    }
    print_report(report)
    write_results(report, args.out)


if __name__ == "__main__":
    main()
