"""Study runner overhead and parallel throughput, each comparison side by side in the same run.

    .venv/bin/python benchmarks/study_overhead.py [--data datasets/stdlib] [--runs 40] [--repeats 3]

1. Overhead per run: the same many tiny n-gram runs executed by calling `train_run` directly in a loop, and by
   `run_study` (planning, the results store's transactions, the worker process, the run lock) with one worker.
   Overhead per run = (study time - direct time) / runs. Fresh directories each time, so nothing is reused.
2. Throughput: a study of small Transformer runs with --workers 1 and with --workers 2 (one thread per run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from scalelab.study.api import load_spec, plan_study, run_study
from scalelab.train.run import train_run


def spec_file(directory: Path, data: Path, name: str, families: dict, sizes: list[int], workers: int) -> Path:
    import yaml

    spec = {"name": name, "out": str(directory / "out"), "dataset": {"path": str(data)}, "families": families,
            "data_sizes": sizes, "eval_tokens": 2000, "resources": {"workers": workers, "threads_per_run": 1},
            "train": {"transformer": {"context_length": 64}, "eval_batch_size": 64}}
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def overhead(data: Path, runs: int) -> dict[str, float]:
    sizes = [2000 + 500 * k for k in range(runs)]
    families = {"ngram": {"sizes": [2]}}
    with tempfile.TemporaryDirectory() as tmp:
        spec = load_spec(spec_file(Path(tmp), data, "direct", families, sizes, 1))
        planned = plan_study(spec, probe=False, show_progress=False)
        started = time.perf_counter()
        for run in planned:
            train_run(run.config, Path(tmp) / "direct" / run.run_id, show_progress=False)
        direct = time.perf_counter() - started
        study = load_spec(spec_file(Path(tmp), data, "study", families, sizes, 1))
        started = time.perf_counter()
        run_study(study, workers=1, show_progress=False)
        via_study = time.perf_counter() - started
    return {"runs": runs, "direct_s": direct, "study_s": via_study,
            "overhead_per_run_ms": 1000 * (via_study - direct) / runs}


def throughput(data: Path, workers: int, runs: int) -> float:
    sizes = [8000 + 2000 * k for k in range(runs)]
    with tempfile.TemporaryDirectory() as tmp:
        spec = load_spec(spec_file(Path(tmp), data, "tp", {"transformer": {"sizes": ["0.1M"]}}, sizes, workers))
        started = time.perf_counter()
        run_study(spec, workers=workers, show_progress=False)
        return runs / (time.perf_counter() - started) * 60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("datasets/stdlib"))
    parser.add_argument("--runs", type=int, default=40, help="Tiny runs in the overhead study.")
    parser.add_argument("--neural-runs", type=int, default=6, help="Transformer runs in the throughput study.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/study_overhead.json"))
    args = parser.parse_args()
    if not (args.data / "manifest.json").is_file():
        raise SystemExit(f"{args.data} is not a prepared dataset: run `scalelab prepare --out {args.data}` first")

    overheads = [overhead(args.data, args.runs) for _ in range(args.repeats)]
    speeds: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(args.repeats):
        for workers in (1, 2):  # alternated, so drift in machine load hits both alike
            speeds[workers].append(throughput(args.data, workers, args.neural_runs))
    result = {
        "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "overhead": {"runs": args.runs,
                     "direct_s": statistics.median(o["direct_s"] for o in overheads),
                     "study_s": statistics.median(o["study_s"] for o in overheads),
                     "overhead_per_run_ms": statistics.median(o["overhead_per_run_ms"] for o in overheads),
                     "repeats": overheads},
        "throughput_runs_per_min": {str(w): statistics.median(v) for w, v in speeds.items()},
        "throughput_repeats": {str(w): v for w, v in speeds.items()},
    }
    result["workers2_over_workers1"] = (result["throughput_runs_per_min"]["2"] /
                                        result["throughput_runs_per_min"]["1"])
    o = result["overhead"]
    print(f"{args.runs} tiny runs: direct {o['direct_s']:.2f} s, via the study runner {o['study_s']:.2f} s: "
          f"{o['overhead_per_run_ms']:.0f} ms overhead per run")
    print(f"{args.neural_runs} Transformer runs: {result['throughput_runs_per_min']['1']:.1f} runs/min with 1 "
          f"worker, {result['throughput_runs_per_min']['2']:.1f} with 2 (x{result['workers2_over_workers1']:.2f})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
