"""Quality-filter throughput on the stdlib corpus, one process, each preset side by side in the same run.

    .venv/bin/python benchmarks/filter_throughput.py [--repeats 3]

Documents are read and cleaned once, up front; only `apply_filters` is timed. MB = 1e6 bytes of cleaned text.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections import Counter
from pathlib import Path

from scalelab.data.clean import CleanStats, clean
from scalelab.data.documents import Doc, SourceConfig, SourceFingerprint, read_source
from scalelab.data.filters import FiltersConfig, apply_filters


def stdlib_docs() -> list[Doc]:
    stats = CleanStats()
    cleaned = (clean(raw, stats) for raw in read_source(SourceConfig(path="stdlib"), SourceFingerprint()))
    return [doc for doc in cleaned if isinstance(doc, Doc)]


def run(docs: list[Doc], preset: str) -> tuple[float, Counter[str]]:
    filters = FiltersConfig(preset=preset).build()
    started = time.perf_counter()
    verdicts = [apply_filters(doc, filters) for doc in docs]
    seconds = time.perf_counter() - started
    return seconds, Counter(v for v in verdicts if isinstance(v, str))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/filter_throughput.json"))
    args = parser.parse_args()

    docs = stdlib_docs()
    megabytes = sum(len(d.text.encode()) for d in docs) / 1e6
    results = {}
    for preset in ("code", "prose"):
        times, drops = [], Counter()
        for _ in range(args.repeats):
            seconds, drops = run(docs, preset)
            times.append(seconds)
        median = statistics.median(times)
        results[preset] = {"seconds": median, "mb_per_s": megabytes / median, "docs_per_s": len(docs) / median,
                           "dropped": sum(drops.values()), "drops": dict(drops.most_common())}
        print(f"{preset:<6} {megabytes:.1f} MB  {median:6.2f} s  {megabytes / median:6.1f} MB/s  "
              f"{len(docs) / median:8.0f} docs/s  dropped {sum(drops.values())}/{len(docs)}")
    report = {"machine": {"python": platform.python_version(), "platform": platform.platform()},
              "documents": len(docs), "megabytes": megabytes, "repeats": args.repeats, "presets": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
