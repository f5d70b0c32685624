"""`prepare`: sources -> clean -> filter -> split -> dedup -> tokenizer -> TokenStore, with bounded memory.

Pass 1 reads sources in this process; worker processes clean, filter, MinHash and assign splits (in order, so
the result never depends on the number of workers); cleaned text is parked in a staging area. Held-out splits
are staged as wide as `split.max_fraction` allows, so the documents staged as train are train whatever the
resolution, and the tokenizer trains on them. Selection then decides which documents each train variant and
held-out split keeps (see variants.py): deduplication from small per-document arrays, decontamination by
streaming texts. The split fractions are resolved from the held-out tokens that selection keeps (split.py);
the documents they leave out move to train and selection runs again on the final splits. Pass 2 tokenizes
each split in its shuffled order and writes every variant's token arrays. Everything is written into a
temporary directory that is renamed into place only when complete.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from pydantic import Field, field_validator, model_validator

from scalelab import __version__
from scalelab.config import StrictModel
from scalelab.data.clean import CleanStats, clean, content_hash
from scalelab.data.contamination import DecontaminateConfig, batches
from scalelab.data.dedup import DedupConfig, band_hashes, minhash_signatures
from scalelab.data.documents import RawDoc, Skipped, SourceConfig, SourceFingerprint, read_source, resolve_type
from scalelab.data.filters import FiltersConfig, apply_filters
from scalelab.data.split import (
    HELD_OUT,
    SPLITS,
    SplitConfig,
    SplitName,
    assign_split,
    mix64_array,
    positions,
    resolve_fractions,
    shuffle_order,
)
from scalelab.data.staging import StagedDoc, StagingArea
from scalelab.data.store import FORMAT_VERSION, MANIFEST, TOKENIZER, SplitWriter, TokenStore, store_fingerprint
from scalelab.data.tokenizer import Tokenizer, TokenizerConfig, build_tokenizer, load_cached
from scalelab.data.variants import Selection, VariantName, held_out_texts, select, text_of
from scalelab.errors import DataError
from scalelab.io import check_writable_dir, fresh_sibling_dir, replace_dir, writing
from scalelab.parallel import ordered_map, single_threaded_tokenizers
from scalelab.progress import progress, stderr_console

# Settings that change how the work is done but not what is written; they stay out of the fingerprint.
EXECUTION_FIELDS = {"out", "workers", "batch_bytes", "strict"}
SAMPLE_SEED = 0x5CA1E
EXAMPLES_PER_REASON = 3
CONTAMINATION_EXAMPLES = 10
EXCERPT_CHARS = 240


class PrepareConfig(StrictModel):
    """Everything `scalelab prepare` does, as one validated object."""

    sources: list[SourceConfig] = Field(min_length=1, description="Where the documents come from.")
    out: Path = Field(description="Dataset directory to write.")
    split: SplitConfig = Field(default_factory=SplitConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    filters: FiltersConfig = Field(default_factory=FiltersConfig,
                                   description="Quality filters; `preset: prose` or `code` turns them on.")
    dedup: DedupConfig = Field(default_factory=DedupConfig, description="Exact and MinHash near deduplication.")
    decontaminate: DecontaminateConfig = Field(default_factory=DecontaminateConfig,
                                               description="N-gram overlap between held-out and train documents.")
    variants: list[VariantName] = Field(default_factory=lambda: ["raw"],
                                        description="Train variants to write, sharing tokenizer and held-out set.")
    shuffle_seed: int = Field(0, ge=0, description="Seed of the one shuffle that fixes the nested-subset order.")
    workers: int = Field(1, ge=1, le=256, description="Processes that clean, filter, hash and tokenize.")
    strict: bool = Field(False, description="Fail on the first unreadable file, invalid line or binary file.")
    batch_bytes: int = Field(4_000_000, gt=0, description="Text sent to a worker at a time.")

    @field_validator("variants")
    @classmethod
    def _distinct_variants(cls, value: list[VariantName]) -> list[VariantName]:
        if not value:
            raise ValueError("name at least one train variant")
        if len(set(value)) != len(value):
            raise ValueError(f"variants repeat: {value}")
        return value

    @model_validator(mode="after")
    def _filtered_variants_need_filters(self) -> PrepareConfig:
        if any(v.startswith("filtered") for v in self.variants) and not self.filters.build():
            raise ValueError("a filtered variant needs quality filters: set filters.preset to prose or code")
        return self

    def fingerprint(self) -> str:
        content = self.model_dump(mode="json", exclude=EXECUTION_FIELDS)
        return hashlib.blake2b(json.dumps(content, sort_keys=True).encode(), digest_size=16).hexdigest()


@dataclass
class RunStats:
    read: int = 0
    bytes_read: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    skipped_examples: dict[str, list[str]] = field(default_factory=dict)
    filtered: Counter[str] = field(default_factory=Counter)
    filtered_bytes: Counter[str] = field(default_factory=Counter)
    filtered_examples: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    clean: CleanStats = field(default_factory=CleanStats)
    seconds: dict[str, float] = field(default_factory=dict)

    def skip(self, item: Skipped, strict: bool) -> None:
        if strict:
            raise DataError(f"{item.reason.replace('_', ' ')}: {item.detail or item.id} (--strict)")
        self.skipped[item.reason] += 1
        examples = self.skipped_examples.setdefault(item.reason, [])
        if len(examples) < EXAMPLES_PER_REASON:
            examples.append(item.detail or item.id)

    def drop(self, reason: str, doc_id: str, text: str) -> None:
        self.filtered[reason] += 1
        self.filtered_bytes[reason] += len(text.encode("utf-8"))
        examples = self.filtered_examples.setdefault(reason, [])
        if len(examples) < EXAMPLES_PER_REASON:
            examples.append({"id": doc_id, "excerpt": text[:EXCERPT_CHARS]})


def prepare(config: PrepareConfig, *, force: bool = False, show_progress: bool = True) -> TokenStore:
    """Prepare a dataset; an existing one with the same content config is reused unless `force`."""
    out = config.out
    check_writable_dir(out)
    existing = _existing(out, config, force)
    if existing is not None:
        stderr_console.print(f"[green]reusing[/] {out} (prepared with the same config; --force rebuilds it)")
        return existing
    for source in config.sources:
        resolve_type(source)  # fail on a missing path or unknown type before any work starts
    single_threaded_tokenizers()  # --workers is the one parallelism knob
    with writing(out):
        tmp = fresh_sibling_dir(out)
    try:
        manifest = _prepare_into(tmp, config, show_progress)
        with writing(out):
            replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return TokenStore(out, manifest)


def _existing(out: Path, config: PrepareConfig, force: bool) -> TokenStore | None:
    if not out.exists():
        return None
    if not (out / MANIFEST).is_file():
        if out.is_dir() and not any(out.iterdir()):
            return None
        # Not even --force replaces it: the swap would delete files scalelab did not write.
        raise DataError(f"{out} exists and is not a scalelab dataset; choose another --out or remove it")
    if force:
        return None
    store = TokenStore.open(out)
    if store.manifest.get("config_fingerprint") == config.fingerprint():
        return store
    raise DataError(f"{out} holds a dataset prepared with a different config; pass --force to replace it "
                    "or choose another --out")


def _prepare_into(tmp: Path, config: PrepareConfig, show_progress: bool) -> dict[str, Any]:
    started = time.perf_counter()
    stats = RunStats()
    staging = StagingArea(tmp / "staging", config.dedup.minhash.num_bands)
    fingerprints = [SourceFingerprint() for _ in config.sources]

    tick = time.perf_counter()
    _stage_documents(config, staging, stats, fingerprints, show_progress)
    stats.seconds["read_clean_filter_hash"] = time.perf_counter() - tick
    _check_corpus(config, staging, stats)

    tick = time.perf_counter()
    tokenizer = _train_tokenizer(config, staging, show_progress)
    tokenizer.save(tmp / TOKENIZER)
    stats.seconds["tokenizer"] = time.perf_counter() - tick

    tick = time.perf_counter()
    selection, split = _select_and_resolve(config, staging, tmp / TOKENIZER)
    _check_selection(config, selection)
    stats.seconds["select"] = time.perf_counter() - tick

    tick = time.perf_counter()
    infos = _write_splits(tmp, staging, selection, tokenizer, config, show_progress)
    stats.seconds["tokenize"] = time.perf_counter() - tick
    shutil.rmtree(staging.directory)
    for name, rows in (("reference_matches", selection.reference_matches),
                       ("contamination", selection.decontamination["documents"])):
        if rows:
            lines = (json.dumps(row, ensure_ascii=False) for row in rows)
            (tmp / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    stats.seconds["total"] = time.perf_counter() - started

    manifest = _manifest(config, split, stats, fingerprints, tokenizer, infos, selection, staging, tmp)
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


class KeptDocument(NamedTuple):
    split: SplitName
    doc_hash: int
    doc: Any
    edited: str | None  # the text after the filters' line edits, when they changed it
    reason: str | None  # the filter rule that drops it, if any


@dataclass
class StagedBatch:
    """A worker's output: the documents kept after cleaning, their MinHash bands, and what was skipped."""

    kept: list[KeptDocument]
    bands: np.ndarray
    skipped: list[Skipped]
    stats: CleanStats
    raw_bytes: int


@cache
def _filters(filters_json: str) -> list:
    return FiltersConfig.model_validate_json(filters_json).build()


def stage_batch(args: tuple[list[RawDoc], PrepareConfig]) -> StagedBatch:
    """Worker: clean, hash, assign a split, run the quality filters and MinHash each document."""
    raw_docs, config = args
    filters = _filters(config.filters.model_dump_json())
    widest = config.split.widest()
    stats = CleanStats()
    kept, skipped = [], []
    for raw in raw_docs:
        doc = clean(raw, stats)
        if isinstance(doc, Skipped):
            skipped.append(doc)
            continue
        doc_hash = content_hash(doc.text)
        verdict = apply_filters(doc, filters) if filters else doc
        reason = verdict if isinstance(verdict, str) else None
        edited = verdict.text if not isinstance(verdict, str) and verdict.text != doc.text else None
        kept.append(KeptDocument(assign_split(doc_hash, widest), doc_hash, doc, edited, reason))
    signatures = minhash_signatures([item.doc.text for item in kept], config.dedup.minhash)
    # Input bytes are counted here, in the workers, to keep encoding text off the single reading process.
    raw_bytes = sum(len(r.data) if isinstance(r.data, bytes) else len(r.data.encode("utf-8")) for r in raw_docs)
    return StagedBatch(kept, band_hashes(signatures, config.dedup.minhash), skipped, stats, raw_bytes)


def _stage_documents(config: PrepareConfig, staging: StagingArea, stats: RunStats,
                     fingerprints: list[SourceFingerprint], show_progress: bool) -> None:
    batches = ((batch, config) for batch in
               _batches(_raw_stream(config, stats, fingerprints), config.batch_bytes))
    with progress("read, clean, filter, hash", enabled=show_progress) as advance:
        for result in ordered_map(stage_batch, batches, config.workers):
            stats.clean.merge(result.stats)
            for item in result.skipped:
                stats.skip(item, config.strict)
            for (split, doc_hash, doc, edited, reason), bands in zip(result.kept, result.bands, strict=True):
                if reason is not None:
                    stats.drop(reason, doc.id, doc.text)
                staging.add(split, doc, edited, doc_hash, bands, passed=reason is None)
            stats.bytes_read += result.raw_bytes
            advance(result.raw_bytes)
    staging.finish()


def _check_corpus(config: PrepareConfig, staging: StagingArea, stats: RunStats) -> None:
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


def _select_and_resolve(config: PrepareConfig, staging: StagingArea,
                        tokenizer_path: Path) -> tuple[Selection, SplitConfig]:
    """Select on the widest held-out splits, resolve the fractions from the tokens kept there, move the
    documents the resolved splits leave out to train, and select again."""
    def run() -> Selection:
        return select(staging, config.variants, config.dedup, config.decontaminate, config.shuffle_seed,
                      bool(config.filters.build()))

    selection = run()
    widest = config.split.widest()
    if widest == config.split:
        return selection, config.split.resolved(config.split.validation, config.split.test)
    hashes = np.concatenate([staging.hashes(s) for s in HELD_OUT])
    kept = np.concatenate([selection.held_out[s] for s in HELD_OUT])
    tokens = np.zeros(hashes.size, dtype=np.int64)
    tokens[kept] = _token_counts(config, staging, selection, tokenizer_path)
    split = resolve_fractions(config.split, positions(hashes, config.split.seed), tokens)
    if (split.validation, split.test) == (widest.validation, widest.test):
        return selection, split
    staging.regroup(lambda doc_hash: assign_split(doc_hash, split))
    return run(), split


def count_tokens(task: tuple[str, list[str]]) -> np.ndarray:
    """Worker: tokens (end-of-document included) of each text."""
    path, texts = task
    return np.array([tokens.size for tokens in load_cached(path).encode_docs(texts)], dtype=np.int64)


def _token_counts(config: PrepareConfig, staging: StagingArea, selection: Selection,
                  tokenizer_path: Path) -> np.ndarray:
    """Tokens of each document the held-out splits keep, in staging order."""
    chosen = {s: np.flatnonzero(selection.held_out[s]) for s in HELD_OUT}
    tasks = ((str(tokenizer_path), batch) for batch in batches(held_out_texts(staging, chosen), config.batch_bytes))
    counts = list(ordered_map(count_tokens, tasks, config.workers))
    return np.concatenate(counts) if counts else np.zeros(0, dtype=np.int64)


def _check_selection(config: PrepareConfig, selection: Selection) -> None:
    wanted = {"validation": config.split.validation, "test": config.split.test}
    empty = [f"train variant {v!r}" for v, mask in selection.train.items() if not mask.any()]
    empty += [s for s, mask in selection.held_out.items() if wanted[s] > 0 and not mask.any()]
    if empty:
        removed = "; ".join(f"{k} {v}" for k, v in selection.removed.items()) or "nothing removed"
        raise DataError(f"no documents left for {', '.join(empty)} after filtering and deduplication "
                        f"({removed}); relax the filters or add documents")


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
class Output:
    """One split directory being written, the staged documents it keeps, and which text it takes."""

    writer: SplitWriter
    mask: np.ndarray
    clean_text: bool


@dataclass
class TokenizeTask:
    tokenizer_path: str
    docs: list[StagedDoc]
    indices: np.ndarray
    texts: list[str] = field(default_factory=list)


def tokenize_batch(task: TokenizeTask) -> tuple[TokenizeTask, list[np.ndarray]]:
    """Worker: token ids (with end-of-document) of each text."""
    tokens = load_cached(task.tokenizer_path).encode_docs(task.texts)
    task.texts = []  # not sent back: the caller still has the documents
    return task, tokens


def _versions(doc: StagedDoc, index: int, outputs: list[Output]) -> list[bool]:
    """Which texts of a document to tokenize, in a fixed order: the original (False), the edited one (True)."""
    edited = doc.clean_text != doc.text
    return sorted({output.clean_text and edited for output in outputs if output.mask[index]})


def _tasks(split: SplitName, staging: StagingArea, order: np.ndarray, outputs: list[Output],
           tokenizer_path: Path, batch_bytes: int) -> Iterator[TokenizeTask]:
    """Batches of documents in shuffled order, each text that some output needs listed once."""
    sizes = np.diff(staging.offsets(split))[order]
    start = 0
    while start < order.size:
        end = start + max(1, int(np.searchsorted(np.cumsum(sizes[start:start + 100_000]), batch_bytes)) + 1)
        indices = order[start:end]
        docs = staging.read(split, indices)
        task = TokenizeTask(str(tokenizer_path), docs, indices)
        for index, doc in zip(indices, docs, strict=True):
            task.texts.extend(doc.clean_text if clean else doc.text for clean in _versions(doc, index, outputs))
        yield task
        start = end


def _write_split(split: SplitName, staging: StagingArea, outputs: list[Output], tokenizer_path: Path,
                 config: PrepareConfig, show_progress: bool) -> None:
    union = np.logical_or.reduce([o.mask for o in outputs])
    hashes, bands = staging.hashes(split), staging.bands(split)
    order = shuffle_order(hashes, config.shuffle_seed)
    order = order[union[order]]
    record_sizes = np.diff(staging.offsets(split))
    total = int(record_sizes[order].sum())
    tasks = _tasks(split, staging, order, outputs, tokenizer_path, config.batch_bytes)
    with progress(f"tokenize {split}", total=total, enabled=show_progress) as advance:
        for task, tokens in ordered_map(tokenize_batch, tasks, config.workers):
            position = 0
            for index, doc in zip(task.indices, task.docs, strict=True):
                versions = _versions(doc, index, outputs)
                encoded = dict(zip(versions, tokens[position:position + len(versions)], strict=True))
                position += len(versions)
                for output in outputs:
                    if output.mask[index]:
                        clean = output.clean_text and doc.clean_text != doc.text
                        text = doc.clean_text if clean else doc.text
                        output.writer.append(encoded[clean], len(text.encode("utf-8")), int(hashes[index]),
                                             bands[index], doc.id, doc.source)
            advance(int(record_sizes[task.indices].sum()))


def _write_splits(tmp: Path, staging: StagingArea, selection: Selection, tokenizer: Tokenizer,
                  config: PrepareConfig, show_progress: bool) -> dict[str, dict[str, Any]]:
    """Write every train variant in one pass over the train split, then each held-out split."""
    plan: dict[SplitName, dict[str, Output]] = {"train": {
        f"train/{variant}": Output(SplitWriter(tmp / "train" / variant, tokenizer.dtype), mask,
                                   clean_text=text_of(variant) == "clean")
        for variant, mask in selection.train.items()}}
    for split in HELD_OUT:
        plan[split] = {split: Output(SplitWriter(tmp / split, tokenizer.dtype), selection.held_out[split],
                                     clean_text=True)}
    infos = {}
    for split, outputs in plan.items():
        _write_split(split, staging, list(outputs.values()), tmp / TOKENIZER, config, show_progress)
        infos.update({name: output.writer.close() for name, output in outputs.items()})
    return infos


def _funnel(stats: RunStats, staging: StagingArea, selection: Selection) -> dict[str, Any]:
    return {
        "read": stats.read,
        "skipped": dict(stats.skipped),
        "cleaned": sum(staging.documents.values()),
        "filtered": {reason: {"documents": n, "bytes": stats.filtered_bytes[reason]}
                     for reason, n in stats.filtered.most_common()},
        "staged": dict(staging.documents),
        "removed": selection.removed,
        "decontamination": selection.decontamination["flagged"],
        "reference_matches": len(selection.reference_matches),
    }


def _manifest(config: PrepareConfig, split: SplitConfig, stats: RunStats, fingerprints: list[SourceFingerprint],
              tokenizer: Tokenizer, infos: dict[str, dict[str, Any]], selection: Selection,
              staging: StagingArea, tmp: Path) -> dict[str, Any]:
    return {
        "format": FORMAT_VERSION,
        "scalelab_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "fingerprint": store_fingerprint(tmp / TOKENIZER, infos),
        "config_fingerprint": config.fingerprint(),
        "config": config.model_dump(mode="json"),
        "sources": [{"path": s.path, "type": resolve_type(s), "name": s.label, **f.summary()}
                    for s, f in zip(config.sources, fingerprints, strict=True)],
        "tokenizer": {"kind": config.tokenizer.kind, "vocab_size": tokenizer.vocab_size,
                      "eod_id": tokenizer.eod_id, "dtype": np.dtype(tokenizer.dtype).name},
        "minhash": config.dedup.minhash.model_dump(mode="json") | {"description": config.dedup.minhash.describe()},
        "split": split.model_dump(mode="json"),  # the resolved split: these fractions reproduce it on any corpus
        "held_out": {s: infos[s] for s in HELD_OUT},
        "train": {v: infos[f"train/{v}"] for v in config.variants},
        "funnel": _funnel(stats, staging, selection),
        "stats": {
            "documents_read": stats.read,
            "bytes_read": stats.bytes_read,
            "documents_cleaned": sum(staging.documents.values()),
            "skipped": dict(stats.skipped),
            "skipped_examples": stats.skipped_examples,
            "filtered_examples": stats.filtered_examples,
            "contamination_examples": selection.decontamination["documents"][:CONTAMINATION_EXAMPLES],
            "invalid_bytes_replaced": stats.clean.invalid_bytes_replaced,
            "control_chars_removed": stats.clean.control_chars_removed,
            "nfc_changed": stats.clean.nfc_changed,
            "seconds": {k: round(v, 3) for k, v in stats.seconds.items()},
            "workers": config.workers,
        },
    }
