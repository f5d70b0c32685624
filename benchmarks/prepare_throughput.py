"""Throughput and peak memory of `scalelab prepare`, with one worker and with several, side by side.

    .venv/bin/python benchmarks/prepare_throughput.py                    # stdlib + 1 GB generated corpus
    .venv/bin/python benchmarks/prepare_throughput.py --gb 0.05 --repeats 3

Each run is `python -m scalelab prepare` in a fresh subprocess. Throughput is the manifest's bytes_read over
its total seconds (interpreter start-up and imports excluded). Peak RSS is reported twice: the largest single
process (main or worker, from getrusage in a wrapper that runs only that prepare), and the largest sum over the
process tree sampled every 0.2 s (which counts pages shared between processes once per process). MB = 1e6 bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import psutil

SEED = 1234
VOCAB_SIZE = 50_000
ZIPF_EXPONENT = 1.07
SHARD_BYTES = 64_000_000
DOCS_PER_CHUNK = 1_000
DOC_WORDS = (50, 3_500)  # log-uniform: about 300 bytes to 20 KB of text
# The byte buffer is written verbatim between JSON quotes, so newlines are already escaped.
SEPARATORS = [" ", ", ", ". ", "? ", ".\\n", ".\\n\\n"]
SEPARATOR_P = [0.845, 0.06, 0.065, 0.005, 0.02, 0.005]
SENTENCE_ENDS = [2, 3, 4, 5]
DOC_START, DOC_END = '{"text": "', '."}\n'
# getrusage reports the peak of the largest single process waited for, not a sum; in KiB on Linux.
WRAPPER = ("import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL); "
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)")
MAXRSS_BYTES = 1 if sys.platform == "darwin" else 1024


class Pieces:
    """Every byte string a corpus is assembled from, in one buffer, so a document is one gather."""

    def __init__(self, rng: np.random.Generator) -> None:
        # Frequent words tend to be short, as in English (frequency-weighted mean length about 4.5 letters).
        lengths = 2 + rng.binomial(12, 0.35, VOCAB_SIZE)
        lengths = lengths[np.argsort(lengths + rng.normal(0, 3, VOCAB_SIZE))]
        letters = np.frombuffer(b"etaoinshrdlcumwfgypbvkjxqz", dtype=np.uint8)
        weights = np.geomspace(1.0, 0.02, letters.size)
        lower = rng.choice(letters, lengths.sum(), p=weights / weights.sum())
        word_starts = np.cumsum(lengths) - lengths
        upper = lower.copy()
        upper[word_starts] -= 32
        extras = [s.encode() for s in [*SEPARATORS, DOC_START, DOC_END]]
        self.buffer = np.concatenate([lower, upper, np.frombuffer(b"".join(extras), dtype=np.uint8)])
        self.lengths = np.concatenate([lengths, lengths, [len(e) for e in extras]])
        self.starts = np.cumsum(self.lengths) - self.lengths
        self.upper = VOCAB_SIZE
        self.separator = 2 * VOCAB_SIZE
        self.doc_start = self.separator + len(SEPARATORS)
        self.doc_end = self.doc_start + 1
        zipf = 1.0 / np.arange(1, VOCAB_SIZE + 1) ** ZIPF_EXPONENT
        self.zipf = zipf / zipf.sum()

    def documents(self, rng: np.random.Generator, n_docs: int) -> tuple[np.ndarray, np.ndarray]:
        """JSON lines of `n_docs` documents, and the byte offset where each line ends."""
        n_words = np.exp(rng.uniform(*np.log(DOC_WORDS), n_docs)).astype(np.int64)
        last_word = np.cumsum(n_words) - 1
        first_word = last_word - n_words + 1
        words = rng.choice(VOCAB_SIZE, int(n_words.sum()), p=self.zipf)
        separators = rng.choice(len(SEPARATORS), words.size, p=SEPARATOR_P)
        capital = np.isin(np.roll(separators, 1), SENTENCE_ENDS)
        capital[first_word] = True
        words[capital] += self.upper
        separators += self.separator
        separators[last_word] = self.doc_end
        pieces = np.insert(np.stack([words, separators], axis=1).ravel(), 2 * first_word, self.doc_start)
        sizes = self.lengths[pieces]
        ends = np.cumsum(sizes)
        index = np.arange(ends[-1]) + np.repeat(self.starts[pieces] - (ends - sizes), sizes)
        return self.buffer[index], ends[np.flatnonzero(pieces == self.doc_end)]


def generated_corpus(workdir: Path, target_bytes: int) -> Path:
    """A directory of .jsonl shards totalling at most `target_bytes`, written once and reused."""
    root = workdir / f"generated-{target_bytes}"
    shards, marker = root / "shards", root / "corpus.json"
    if marker.is_file():
        recorded = json.loads(marker.read_text())["bytes"]
        if sum(p.stat().st_size for p in shards.glob("*.jsonl")) == recorded:
            return shards
    shutil.rmtree(root, ignore_errors=True)
    shards.mkdir(parents=True)
    rng = np.random.default_rng(SEED)
    pieces = Pieces(rng)
    written, n_shards, shard = 0, 0, None
    try:
        while True:
            data, doc_ends = pieces.documents(rng, DOCS_PER_CHUNK)
            # Cut at a document boundary so the corpus never exceeds the target.
            keep = int(np.searchsorted(doc_ends, target_bytes - written, side="right"))
            if keep == 0:
                break
            if shard is None or shard.tell() >= SHARD_BYTES:
                if shard is not None:
                    shard.close()
                shard = (shards / f"shard-{n_shards:05d}.jsonl").open("wb")
                n_shards += 1
            shard.write(data[:doc_ends[keep - 1]].tobytes())
            written += int(doc_ends[keep - 1])
            print(f"\rgenerating {shards}: {written / 1e6:,.0f} MB", end="", file=sys.stderr)
    finally:
        if shard is not None:
            shard.close()
    print(file=sys.stderr)
    marker.write_text(json.dumps({"bytes": written, "target_bytes": target_bytes, "seed": SEED}))
    return shards


def tree_peak_rss(proc: subprocess.Popen[str]) -> int:
    """Largest summed RSS of the wrapper's descendants while it runs."""
    wrapper = psutil.Process(proc.pid)
    peak = 0
    while True:
        # A process can end between being listed and being read; that sample is then skipped.
        with contextlib.suppress(psutil.Error):
            peak = max(peak, sum(child.memory_info().rss for child in wrapper.children(recursive=True)))
        try:
            proc.wait(timeout=0.2)
            return peak
        except subprocess.TimeoutExpired:
            pass


def measure(source: str, workers: int, workdir: Path, extra: list[str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(dir=workdir, prefix="out-") as tmp, tempfile.TemporaryFile() as errors:
        out = Path(tmp) / "dataset"
        command = [sys.executable, "-m", "scalelab", "prepare", source, "--workers", str(workers),
                   "--quiet", "--force", "--out", str(out), *extra]
        proc = subprocess.Popen([sys.executable, "-c", WRAPPER, *command], stdout=subprocess.PIPE,
                                stderr=errors, text=True)
        tree_peak = tree_peak_rss(proc)
        stdout, _ = proc.communicate()
        if proc.returncode != 0:
            errors.seek(0)
            sys.exit(f"failed: {' '.join(command)}\n{errors.read().decode(errors='replace')}")
        stats = json.loads((out / "manifest.json").read_text())["stats"]
    seconds = stats["seconds"]
    return {"bytes": stats["bytes_read"], "seconds": seconds,
            "mb_per_s": stats["bytes_read"] / seconds["total"] / 1e6,
            "peak_rss_mb": int(stdout) * MAXRSS_BYTES / 1e6, "tree_peak_rss_mb": tree_peak / 1e6}


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"bytes": runs[0]["bytes"],
            "seconds": {s: statistics.median(r["seconds"][s] for r in runs) for s in runs[0]["seconds"]},
            **{k: statistics.median(r[k] for r in runs) for k in ("mb_per_s", "peak_rss_mb", "tree_peak_rss_mb")}}


def machine() -> dict[str, Any]:
    return {"cpu_count": os.cpu_count(), "physical_cores": psutil.cpu_count(logical=False),
            "memory_gb": psutil.virtual_memory().total / 1e9, "python": platform.python_version(),
            "platform": platform.platform(), "processor": platform.processor() or platform.machine()}


def print_table(measurements: list[dict[str, Any]], speedups: dict[str, dict[str, float]]) -> None:
    stages = list(measurements[0]["seconds"])
    print(f"{'corpus':<10} {'MB':>8} {'workers':>7} " + " ".join(f"{s[:12]:>12}" for s in stages) +
          f" {'MB/s':>7} {'peak RSS':>9} {'tree RSS':>9}")
    for m in measurements:
        print(f"{m['corpus']:<10} {m['bytes'] / 1e6:>8.1f} {m['workers']:>7} " +
              " ".join(f"{m['seconds'][s]:>12.2f}" for s in stages) +
              f" {m['mb_per_s']:>7.2f} {m['peak_rss_mb']:>9.0f} {m['tree_peak_rss_mb']:>9.0f}")
    for corpus, ratios in speedups.items():
        print(f"speedup {corpus}: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, default=1.0, help="Size of the generated corpus (1 GB = 1e9 bytes).")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--corpora", nargs="+", choices=["stdlib", "generated"], default=["stdlib", "generated"])
    parser.add_argument("--repeats", type=int, default=1, help="Runs per setting; the median is reported.")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/scalelab-bench"),
                        help="Cache of the generated corpus, and scratch space for the prepared datasets.")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/prepare_throughput.json"))
    parser.add_argument("--prepare-args", default="",
                        help="Extra arguments for `scalelab prepare`, e.g. \"--filters code --variants raw,dedup\".")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)

    measurements, speedups = [], {}
    for corpus in args.corpora:
        source = str(generated_corpus(args.workdir, int(args.gb * 1e9))) if corpus == "generated" else corpus
        runs: dict[int, list[dict[str, Any]]] = {w: [] for w in args.workers}
        # Worker counts alternate within each repeat, so drift in machine load hits them alike.
        for repeat in range(args.repeats):
            for workers in args.workers:
                print(f"{corpus}: workers {workers}, run {repeat + 1}/{args.repeats}", file=sys.stderr)
                runs[workers].append(measure(source, workers, args.workdir, args.prepare_args.split()))
        medians = {w: median_of(r) for w, r in runs.items()}
        measurements += [{"corpus": corpus, "workers": w, **medians[w], "runs": runs[w]} for w in args.workers]
        base = args.workers[0]
        speedups[corpus] = {f"workers{w}/workers{base}": medians[w]["mb_per_s"] / medians[base]["mb_per_s"]
                            for w in args.workers[1:]}

    print_table(measurements, speedups)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"machine": machine(), "settings": {k: str(v) if isinstance(v, Path) else v
                                                 for k, v in vars(args).items()},
              "measurements": measurements, "speedup": speedups}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
