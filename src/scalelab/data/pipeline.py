"""`prepare`: sources -> clean -> split -> tokenizer -> TokenStore, streaming with bounded memory.

Pass 1 reads sources in this process, cleans and assigns splits in worker processes (in order, so the result
never depends on the number of workers), and parks cleaned text in a staging area. The tokenizer trains on the
train split. Pass 2 tokenizes each split in its shuffled order and writes the token arrays. Everything is
written into a temporary directory that is renamed into place only when complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from scalelab import __version__
from scalelab.config import StrictModel
from scalelab.data.clean import CleanStats, clean, content_hash
from scalelab.data.documents import RawDoc, Skipped, SourceConfig, SourceFingerprint, read_source, resolve_type
from scalelab.data.split import HELD_OUT, SPLITS, SplitConfig, SplitName, assign_split, mix64_array, shuffle_order
from scalelab.data.staging import StagingArea
from scalelab.data.store import FORMAT_VERSION, MANIFEST, TOKENIZER, SplitWriter, TokenStore, store_fingerprint
from scalelab.data.tokenizer import Tokenizer, TokenizerConfig, build_tokenizer, load_cached
from scalelab.errors import DataError
from scalelab.parallel import ordered_map
from scalelab.progress import progress, stderr_console

# Settings that change how the work is done but not what is written; they stay out of the fingerprint.
EXECUTION_FIELDS = {"out", "workers", "batch_bytes", "strict"}
TRAIN_VARIANT = "raw"
SAMPLE_SEED = 0x5CA1E


class PrepareConfig(StrictModel):
    """Everything `scalelab prepare` does, as one validated object."""

    sources: list[SourceConfig] = Field(min_length=1, description="Where the documents come from.")
    out: Path = Field(description="Dataset directory to write.")
    split: SplitConfig = Field(default_factory=SplitConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    shuffle_seed: int = Field(0, ge=0, description="Seed of the one shuffle that fixes the nested-subset order.")
    workers: int = Field(1, ge=1, le=256, description="Processes that clean and tokenize.")
    strict: bool = Field(False, description="Fail on the first unreadable file, invalid line or binary file.")
    batch_bytes: int = Field(4_000_000, gt=0, description="Text sent to a worker at a time.")

    def fingerprint(self) -> str:
        content = self.model_dump(mode="json", exclude=EXECUTION_FIELDS)
        return hashlib.blake2b(json.dumps(content, sort_keys=True).encode(), digest_size=16).hexdigest()


@dataclass
class RunStats:
    read: int = 0
    bytes_read: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    skipped_examples: dict[str, list[str]] = field(default_factory=dict)
    clean: CleanStats = field(default_factory=CleanStats)
    seconds: dict[str, float] = field(default_factory=dict)

    def skip(self, item: Skipped, strict: bool) -> None:
        if strict:
            raise DataError(f"{item.reason.replace('_', ' ')}: {item.detail or item.id} (--strict)")
        self.skipped[item.reason] += 1
        examples = self.skipped_examples.setdefault(item.reason, [])
        if len(examples) < 5:
            examples.append(item.detail or item.id)


def prepare(config: PrepareConfig, *, force: bool = False, show_progress: bool = True) -> TokenStore:
    """Prepare a dataset; an existing one with the same content config is reused unless `force`."""
    out = config.out
    existing = _existing(out, config, force)
    if existing is not None:
        stderr_console.print(f"[green]reusing[/] {out} (prepared with the same config; --force rebuilds it)")
        return existing
    for source in config.sources:
        resolve_type(source)  # fail on a missing path or unknown type before any work starts
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # --workers is the one parallelism knob
    tmp = _fresh_temp_dir(out)
    try:
        manifest = _prepare_into(tmp, config, show_progress)
        _commit(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return TokenStore(out, manifest)


def _existing(out: Path, config: PrepareConfig, force: bool) -> TokenStore | None:
    if not out.exists():
        return None
    if force:
        return None
    if not (out / MANIFEST).is_file():
        if out.is_dir() and not any(out.iterdir()):
            return None
        raise DataError(f"{out} exists and is not a scalelab dataset; choose another --out or remove it")
    store = TokenStore.open(out)
    if store.manifest.get("config_fingerprint") == config.fingerprint():
        return store
    raise DataError(f"{out} holds a dataset prepared with a different config; pass --force to replace it "
                    "or choose another --out")


def _fresh_temp_dir(out: Path) -> Path:
    """A temp directory beside `out` (same filesystem, so the final rename is atomic); stale ones go."""
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.tmp-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _commit(tmp: Path, out: Path) -> None:
    """Swap the finished directory into place; an old dataset is moved aside first, then deleted."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _prepare_into(tmp: Path, config: PrepareConfig, show_progress: bool) -> dict[str, Any]:
    started = time.perf_counter()
    stats = RunStats()
    staging = StagingArea(tmp / "staging")
    fingerprints = [SourceFingerprint() for _ in config.sources]

    tick = time.perf_counter()
    _stage_documents(config, staging, stats, fingerprints, show_progress)
    stats.seconds["read_clean_split"] = time.perf_counter() - tick
    _check_sizes(config, staging, stats)

    tick = time.perf_counter()
    tokenizer = _train_tokenizer(config, staging, show_progress)
    tokenizer.save(tmp / TOKENIZER)
    stats.seconds["tokenizer"] = time.perf_counter() - tick

    tick = time.perf_counter()
    infos = {}
    for split in SPLITS:
        directory = tmp / (f"train/{TRAIN_VARIANT}" if split == "train" else split)
        infos[split] = _write_split(split, directory, staging, tokenizer, tmp / TOKENIZER, config, show_progress)
    stats.seconds["tokenize"] = time.perf_counter() - tick
    shutil.rmtree(staging.directory)
    stats.seconds["total"] = time.perf_counter() - started

    manifest = _manifest(config, stats, fingerprints, tokenizer, infos, tmp)
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return manifest


def _raw_stream(config: PrepareConfig, stats: RunStats,
                fingerprints: list[SourceFingerprint]) -> Iterator[RawDoc]:
    for source, fingerprint in zip(config.sources, fingerprints, strict=True):
        for item in read_source(source, fingerprint):
            stats.read += 1
            if isinstance(item, Skipped):
                stats.skip(item, config.strict)
                continue
            stats.bytes_read += len(item.data) if isinstance(item.data, bytes) else len(item.data.encode())
            yield item


def _batches(items: Iterable[RawDoc], batch_bytes: int) -> Iterator[list[RawDoc]]:
    batch: list[RawDoc] = []
    size = 0
    for item in items:
        batch.append(item)
        size += len(item.data)
        if size >= batch_bytes:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


@dataclass
class CleanedBatch:
    kept: list[tuple[SplitName, int, Any]]
    skipped: list[Skipped]
    stats: CleanStats
    raw_bytes: int


def clean_batch(args: tuple[list[RawDoc], SplitConfig]) -> CleanedBatch:
    """Worker: clean documents, hash their content and assign each a split."""
    raw_docs, split_config = args
    stats = CleanStats()
    kept, skipped = [], []
    for raw in raw_docs:
        result = clean(raw, stats)
        if isinstance(result, Skipped):
            skipped.append(result)
            continue
        doc_hash = content_hash(result.text)
        kept.append((assign_split(doc_hash, split_config), doc_hash, result))
    raw_bytes = sum(len(r.data) for r in raw_docs)
    return CleanedBatch(kept, skipped, stats, raw_bytes)


def _stage_documents(config: PrepareConfig, staging: StagingArea, stats: RunStats,
                     fingerprints: list[SourceFingerprint], show_progress: bool) -> None:
    batches = ((batch, config.split) for batch in
               _batches(_raw_stream(config, stats, fingerprints), config.batch_bytes))
    with progress("read, clean, split", enabled=show_progress) as advance:
        for result in ordered_map(clean_batch, batches, config.workers):
            stats.clean.merge(result.stats)
            for item in result.skipped:
                stats.skip(item, config.strict)
            for split, doc_hash, doc in result.kept:
                staging.add(split, doc, doc_hash)
            advance(result.raw_bytes)
    staging.finish()


def _check_sizes(config: PrepareConfig, staging: StagingArea, stats: RunStats) -> None:
    kept = sum(staging.documents.values())
    names = ", ".join(s.path for s in config.sources)
    if kept == 0:
        dropped = ", ".join(f"{reason} {n}" for reason, n in stats.skipped.most_common()) or "none"
        raise DataError(f"empty corpus: no usable documents in {names} ({stats.read} read; skipped: {dropped})")
    wanted = {"train": 1.0, "validation": config.split.validation, "test": config.split.test}
    empty = [s for s in SPLITS if wanted[s] > 0 and staging.documents[s] == 0]
    if empty:
        counts = ", ".join(f"{s} {staging.documents[s]}" for s in SPLITS)
        raise DataError(f"corpus too small for the requested splits: {kept} documents gave {counts}; "
                        f"{' and '.join(empty)} would be empty (add documents or change split.validation/"
                        "split.test)")


def _train_tokenizer(config: PrepareConfig, staging: StagingArea, show_progress: bool) -> Tokenizer:
    hashes = staging.hashes("train")
    fraction = min(1.0, config.tokenizer.max_train_bytes / max(staging.bytes["train"], 1))
    if fraction >= 1.0:
        keep = np.ones(hashes.shape, dtype=bool)
    else:
        keep = mix64_array(hashes, SAMPLE_SEED) < np.uint64(int(fraction * 2**64))
    label = (f"train {config.tokenizer.kind} tokenizer" +
             (f" (vocab {config.tokenizer.vocab_size})" if config.tokenizer.kind == "bpe" else ""))
    with progress(label, unit="steps", enabled=show_progress) as advance:
        tokenizer = build_tokenizer(config.tokenizer, staging.iter_texts("train", keep), int(keep.sum()))
        advance(1)
    return tokenizer


@dataclass
class TokenizeTask:
    tokenizer_path: str
    headers: list[dict[str, str]]
    texts: list[str]
    hashes: np.ndarray
    sizes: list[int]


def tokenize_batch(task: TokenizeTask) -> tuple[TokenizeTask, list[np.ndarray]]:
    """Worker: token ids (with end-of-document) of each text."""
    tokens = load_cached(task.tokenizer_path).encode_docs(task.texts)
    task.texts = []  # not sent back: the caller needs only the byte counts
    return task, tokens


def _tokenize_tasks(split: SplitName, staging: StagingArea, order: np.ndarray, hashes: np.ndarray,
                    tokenizer_path: Path, batch_bytes: int) -> Iterator[TokenizeTask]:
    offsets = staging.offsets(split)
    sizes = np.diff(offsets)[order]
    start = 0
    while start < order.size:
        end = start + max(1, int(np.searchsorted(np.cumsum(sizes[start:start + 100_000]), batch_bytes)) + 1)
        indices = order[start:end]
        records = staging.read(split, indices)
        texts = [text for _, text in records]
        yield TokenizeTask(str(tokenizer_path), [header for header, _ in records], texts, hashes[indices],
                           [len(text.encode("utf-8")) for text in texts])
        start = end


def _write_split(split: SplitName, directory: Path, staging: StagingArea, tokenizer: Tokenizer,
                 tokenizer_path: Path, config: PrepareConfig, show_progress: bool) -> dict[str, Any]:
    hashes = staging.hashes(split)
    order = shuffle_order(hashes, config.shuffle_seed)
    writer = SplitWriter(directory, tokenizer.dtype)
    tasks = _tokenize_tasks(split, staging, order, hashes, tokenizer_path, config.batch_bytes)
    with progress(f"tokenize {split}", total=staging.bytes[split], enabled=show_progress) as advance:
        for task, tokens in ordered_map(tokenize_batch, tasks, config.workers):
            for header, doc_tokens, doc_hash, n_bytes in zip(task.headers, tokens, task.hashes, task.sizes,
                                                              strict=True):
                writer.append(doc_tokens, n_bytes, int(doc_hash), header["id"], header["source"])
            advance(sum(task.sizes))
    return writer.close()


def _manifest(config: PrepareConfig, stats: RunStats, fingerprints: list[SourceFingerprint],
              tokenizer: Tokenizer, infos: dict[str, dict[str, Any]], tmp: Path) -> dict[str, Any]:
    split_infos = {("train/" + TRAIN_VARIANT if s == "train" else s): infos[s] for s in SPLITS}
    return {
        "format": FORMAT_VERSION,
        "scalelab_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "fingerprint": store_fingerprint(tmp / TOKENIZER, split_infos),
        "config_fingerprint": config.fingerprint(),
        "config": config.model_dump(mode="json"),
        "sources": [{"path": s.path, "type": resolve_type(s), "name": s.label, **f.summary()}
                    for s, f in zip(config.sources, fingerprints, strict=True)],
        "tokenizer": {"kind": config.tokenizer.kind, "vocab_size": tokenizer.vocab_size,
                      "eod_id": tokenizer.eod_id, "dtype": np.dtype(tokenizer.dtype).name},
        "held_out": {s: infos[s] for s in HELD_OUT},
        "train": {TRAIN_VARIANT: infos["train"]},
        "stats": {
            "documents_read": stats.read,
            "bytes_read": stats.bytes_read,
            "documents_kept": sum(infos[s]["documents"] for s in SPLITS),
            "skipped": dict(stats.skipped),
            "skipped_examples": stats.skipped_examples,
            "invalid_bytes_replaced": stats.clean.invalid_bytes_replaced,
            "control_chars_removed": stats.clean.control_chars_removed,
            "nfc_changed": stats.clean.nfc_changed,
            "seconds": {k: round(v, 3) for k, v in stats.seconds.items()},
            "workers": config.workers,
        },
    }
