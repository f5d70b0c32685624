"""Near-duplicate detection: scalelab.data.dedup against datasketch, side by side on the same documents.

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python benchmarks/dedup_vs_datasketch.py                 # 20k generated docs + the stdlib
    .venv/bin/python benchmarks/dedup_vs_datasketch.py --docs 2000 --corpora generated

Both sides use the same parameters (112 permutations as 14 bands x 8 rows, word 5-grams, a document shorter
than 5 words as one shingle) and the same normalisation (`normalize_for_shingles`). datasketch gets its
fastest documented path: `MinHash.generator` over each document's shingles (encoded), then a
`MinHashLSH(num_perm=112, params=(14, 8))` filled in an insertion session and queried with every document.
scalelab runs `minhash_signatures`, `band_hashes` and `candidate_pairs`. Timings include normalisation and
shingling, run on one core, and take the best of --repeats. MB = 1e6 bytes of UTF-8 input.

Each corpus gets planted near duplicates: copies of random documents with a random 0-12% of their words
replaced. Recall is over the planted pairs whose true word-5-gram Jaccard (brute force, Python sets) is at
least 0.8: the fraction that are candidates (share a band). Precision is over all candidate pairs: the
fraction whose true Jaccard is at least 0.5. Documents that normalise to nothing are left out of both sides.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import sysconfig
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from datasketch import MinHash, MinHashLSH

from scalelab.data.dedup import (
    MinHashConfig,
    band_hashes,
    candidate_pairs,
    minhash_signatures,
    near_duplicate_labels,
    normalize_for_shingles,
)

SEED = 1234
CONFIG = MinHashConfig()
VOCAB_SIZE = 50_000
ZIPF_EXPONENT = 1.07
DOC_BYTES = (1_000, 10_000)  # log-uniform
SEPARATORS = np.array([" ", " ", " ", " ", " ", " ", " ", " ", ", ", ". ", ".\n", "\n\n"])
PLANTED_FRACTION = 0.12
EDIT_FRACTION = (0.0, 0.12)


def generated_documents(rng: np.random.Generator, n_docs: int) -> list[str]:
    """Zipf-distributed pseudo-words with punctuation and line breaks, 1-10 KB per document."""
    letters = np.array(list("etaoinshrdlcumwfgypbvkjxqz"))
    weights = np.geomspace(1.0, 0.02, letters.size)
    lengths = 2 + rng.binomial(10, 0.3, VOCAB_SIZE)
    vocabulary = ["".join(rng.choice(letters, size, p=weights / weights.sum())) for size in lengths]
    zipf = 1.0 / np.arange(1, VOCAB_SIZE + 1) ** ZIPF_EXPONENT
    n_words = (np.exp(rng.uniform(*np.log(DOC_BYTES), n_docs)) / 6).astype(np.int64)
    words = rng.choice(VOCAB_SIZE, int(n_words.sum()), p=zipf / zipf.sum())
    separators = rng.choice(SEPARATORS, words.size)
    pieces = [w + s for w, s in zip([vocabulary[i] for i in words], separators.tolist(), strict=True)]
    bounds = np.concatenate([[0], np.cumsum(n_words)])
    return ["".join(pieces[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def stdlib_documents() -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts)
    return [p.read_text(encoding="utf-8", errors="replace") for p in files]


def plant(rng: np.random.Generator, texts: list[str], n_planted: int) -> tuple[list[str], np.ndarray]:
    """Append edited copies of random documents; returns all texts and the (source, copy) index pairs."""
    sources = rng.choice(len(texts), n_planted, replace=False)
    copies = []
    for source in sources:
        words = np.array(texts[source].split())
        where = rng.random(words.size) < rng.uniform(*EDIT_FRACTION)
        words[where] = rng.choice(words, int(where.sum()))
        copies.append(" ".join(words.tolist()))
    pairs = np.stack([sources, len(texts) + np.arange(n_planted)], axis=1)
    return texts + copies, pairs


def shingles(text: str) -> list[str]:
    words = normalize_for_shingles(text).split()
    n = CONFIG.ngram
    return [" ".join(words[i:i + n]) for i in range(max(len(words) - n + 1, 1))] if words else []


class Truth:
    """Brute-force Jaccard of word 5-gram sets, computed on demand and cached per document."""

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts
        self.sets: dict[int, set[str]] = {}

    def jaccard(self, i: int, j: int) -> float:
        a, b = (self.sets.setdefault(k, set(shingles(self.texts[k]))) for k in (i, j))
        return len(a & b) / len(a | b)


def run_scalelab(texts: list[str]) -> tuple[dict[str, float], np.ndarray]:
    start = time.perf_counter()
    signatures = minhash_signatures(texts, CONFIG)
    signed = time.perf_counter()
    bands = band_hashes(signatures, CONFIG)
    pairs = candidate_pairs(bands)
    done = time.perf_counter()
    near_duplicate_labels(bands)
    clustered = time.perf_counter()
    return {"signatures_s": signed - start, "lsh_s": done - signed, "clusters_s": clustered - done}, pairs


def run_datasketch(texts: list[str]) -> tuple[dict[str, float], np.ndarray]:
    start = time.perf_counter()
    encoded = ([s.encode() for s in shingles(text)] for text in texts)
    minhashes = list(MinHash.generator(encoded, num_perm=CONFIG.num_perm, seed=CONFIG.seed))
    signed = time.perf_counter()
    lsh = MinHashLSH(num_perm=CONFIG.num_perm, params=(CONFIG.num_bands, CONFIG.rows_per_band))
    with lsh.insertion_session() as session:
        for key, minhash in enumerate(minhashes):
            session.insert(key, minhash, check_duplication=False)
    found = {(min(i, j), max(i, j)) for i, minhash in enumerate(minhashes) for j in lsh.query(minhash) if j != i}
    done = time.perf_counter()
    pairs = np.array(sorted(found), dtype=np.int64).reshape(-1, 2)
    return {"signatures_s": signed - start, "lsh_s": done - signed}, pairs


def best_of(repeats: int, run: Callable[[list[str]], tuple[dict[str, float], np.ndarray]],
            texts: list[str]) -> tuple[dict[str, float], np.ndarray]:
    runs = [run(texts) for _ in range(repeats)]
    seconds = {key: min(r[0][key] for r in runs) for key in runs[0][0]}
    return seconds, runs[0][1]


def quality(pairs: np.ndarray, planted: np.ndarray, truth: Truth) -> dict[str, Any]:
    found = {tuple(p) for p in pairs.tolist()}
    similar = [(int(a), int(b)) for a, b in planted if truth.jaccard(a, b) >= 0.8]
    candidate_jaccard = np.array([truth.jaccard(i, j) for i, j in found])
    return {"candidates": len(found), "planted_pairs_ge_0.8": len(similar),
            "recall_at_0.8": float(np.mean([(min(p), max(p)) in found for p in similar])),
            "precision_at_0.5": float(np.mean(candidate_jaccard >= 0.5)) if found else 1.0}


def compare(name: str, texts: list[str], planted: np.ndarray, repeats: int) -> dict[str, Any]:
    mb = sum(len(t.encode()) for t in texts) / 1e6
    truth = Truth(texts)
    result: dict[str, Any] = {"corpus": name, "docs": len(texts), "mb": mb, "planted_pairs": len(planted)}
    for method, run in (("scalelab", run_scalelab), ("datasketch", run_datasketch)):
        seconds, pairs = best_of(repeats, run, texts)
        total = seconds["signatures_s"] + seconds["lsh_s"]
        result[method] = {**seconds, "total_s": total, "docs_per_s": len(texts) / total, "mb_per_s": mb / total,
                          "signatures_mb_per_s": mb / seconds["signatures_s"], **quality(pairs, planted, truth)}
    ours, theirs = result["scalelab"], result["datasketch"]
    result["speedup"] = {"signatures": theirs["signatures_s"] / ours["signatures_s"],
                         "total": theirs["total_s"] / ours["total_s"]}
    return result


def print_table(results: list[dict[str, Any]]) -> None:
    header = (f"{'corpus':<10} {'method':<10} {'docs':>6} {'MB':>6} {'sig s':>6} {'lsh s':>6} {'docs/s':>7} "
              f"{'MB/s':>6} {'sig MB/s':>8} {'cands':>6} {'recall':>6} {'prec':>6} {'speedup':>7}")
    print(header)
    for r in results:
        for method in ("scalelab", "datasketch"):
            m = r[method]
            speedup = f"{r['speedup']['total']:.1f}x" if method == "scalelab" else ""
            print(f"{r['corpus']:<10} {method:<10} {r['docs']:>6} {r['mb']:>6.1f} {m['signatures_s']:>6.2f} "
                  f"{m['lsh_s']:>6.2f} {m['docs_per_s']:>7.0f} {m['mb_per_s']:>6.1f} {m['signatures_mb_per_s']:>8.1f} "
                  f"{m['candidates']:>6} {m['recall_at_0.8']:>6.3f} {m['precision_at_0.5']:>6.3f} {speedup:>7}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=20_000, help="Generated documents, planted copies included.")
    parser.add_argument("--corpora", nargs="+", choices=["generated", "stdlib"], default=["generated", "stdlib"])
    parser.add_argument("--repeats", type=int, default=3, help="Runs per method; the fastest is reported.")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/dedup_vs_datasketch.json"))
    args = parser.parse_args()

    rng = np.random.default_rng(SEED)
    minhash_signatures(["warm up the character table"], CONFIG)
    results = []
    for corpus in args.corpora:
        if corpus == "generated":
            n_planted = int(args.docs * PLANTED_FRACTION)
            base = generated_documents(rng, args.docs - n_planted)
        else:
            base = [text for text in stdlib_documents() if normalize_for_shingles(text)]
            n_planted = int(len(base) * PLANTED_FRACTION)
        texts, planted = plant(rng, base, n_planted)
        print(f"{corpus}: {len(texts)} documents, {n_planted} planted copies", file=sys.stderr)
        results.append(compare(corpus, texts, planted, args.repeats))

    print_table(results)
    report = {"machine": {"cpus": psutil.cpu_count(), "physical_cores": psutil.cpu_count(logical=False),
                          "python": platform.python_version(), "numpy": np.__version__,
                          "datasketch": version("datasketch"), "processor": platform.processor() or platform.machine()},
              "params": {"description": CONFIG.describe(), **CONFIG.model_dump()},
              "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
