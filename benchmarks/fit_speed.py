"""Scaling-law fit speed: a chinchilla-form fit with bootstrap intervals, on one core.

    .venv/bin/python benchmarks/fit_speed.py [--repeats 3] [--out benchmarks/results/fit_speed.json]

Synthetic points from L = E + A/N^alpha + B/D^beta (the Besiroglu et al. 2024 estimates), N in [1e6, 1e9] and D in
[1e7, 1e10] log-uniform, 1% multiplicative noise. Each cell is `fit_law("chinchilla", ...)` timed end to end, the
median of --repeats runs; "point fit" is the same call with bootstrap=0. The headline is 250 points with 200
resamples (target: under 10 s). The process is pinned to one CPU and numerical libraries to one thread.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

TRUE = {"E": 1.82, "A": 482.0, "alpha": 0.3478, "B": 2085.0, "beta": 0.3658}
HEADLINE = (250, 200)
TARGET_S = 10.0


def points(n: int, seed: int = 0):
    import numpy as np

    from scalelab.laws.forms import FORMS

    rng = np.random.default_rng(seed)
    X = {"N": 10 ** rng.uniform(6, 9, n), "D": 10 ** rng.uniform(7, 10, n)}
    return X, FORMS["chinchilla"].predict(TRUE, X) * np.exp(rng.normal(0, 0.01, n))


def timed(n: int, bootstrap: int, repeats: int) -> float:
    from scalelab.laws.fit import fit_law

    X, loss = points(n)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fit_law("chinchilla", X, loss, bootstrap=bootstrap)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/fit_speed.json"))
    args = parser.parse_args()
    # One core: numerical libraries read their thread counts when numpy first loads, which is below.
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = "1"
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    import numpy as np

    cells = [(n, HEADLINE[1]) for n in (50, 250, 1000)] + [(HEADLINE[0], b) for b in (50, 500)]
    rows = []
    print(f"{'points':>7} {'resamples':>9} {'point fit s':>11} {'total s':>8} {'ms/resample':>11}")
    for n, bootstrap in sorted(cells, key=lambda c: (c[0] != HEADLINE[0], c)):
        point = timed(n, 0, args.repeats)
        total = timed(n, bootstrap, args.repeats)
        rows.append({"points": n, "resamples": bootstrap, "point_fit_s": point, "total_s": total,
                     "ms_per_resample": 1000 * (total - point) / bootstrap})
        print(f"{n:>7} {bootstrap:>9} {point:>11.3f} {total:>8.2f} {rows[-1]['ms_per_resample']:>11.2f}")
    headline = next(r for r in rows if (r["points"], r["resamples"]) == HEADLINE)
    print(f"chinchilla fit, {HEADLINE[0]} points, {HEADLINE[1]} resamples, one core: {headline['total_s']:.2f} s "
          f"(target < {TARGET_S:.0f} s: {'met' if headline['total_s'] < TARGET_S else 'missed'})")
    result = {
        "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "numpy": np.__version__},
        "form": "chinchilla", "true_params": TRUE, "noise": 0.01, "repeats": args.repeats,
        "headline": {**headline, "target_s": TARGET_S, "met": headline["total_s"] < TARGET_S},
        "cells": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
