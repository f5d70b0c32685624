"""Documents and the sources they are read from.

Every source is read as a stream of `RawDoc` (undecoded file bytes, or text a structured format already decoded)
or `Skipped` (a record that could not be read, with the reason). Cleaning turns a RawDoc into a `Doc`.
Sources never hold a corpus in memory: files and records are yielded one at a time.
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import io
import json
import os
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from scalelab.config import StrictModel
from scalelab.errors import DataError

SourceType = Literal["auto", "dir", "txt", "jsonl", "parquet", "hf", "stdlib"]
TxtUnit = Literal["file", "paragraph", "line"]
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz", ".jsonl.zst", ".ndjson.zst")


@dataclass(slots=True)
class Doc:
    """One cleaned document."""

    id: str
    text: str
    source: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class RawDoc:
    """A document as read: `data` is bytes from a file, or str from a structured record."""

    id: str
    data: bytes | str
    source: str


@dataclass(slots=True)
class Skipped:
    """A record that was not turned into a document, and why."""

    id: str
    source: str
    reason: str
    detail: str = ""


class SourceConfig(StrictModel):
    """Where documents come from."""

    path: str = Field(description="A directory, a file, a saved Hugging Face dataset, or `stdlib`.")
    type: SourceType = Field("auto", description="How to read `path`; `auto` decides from the path.")
    name: str | None = Field(None, description="Label recorded with every document; defaults to the path's name.")
    include: list[str] = Field(default_factory=lambda: ["*"],
                               description="Directory sources: glob patterns (on the relative path) to read.")
    exclude: list[str] = Field(default_factory=list, description="Directory sources: glob patterns to skip.")
    text_field: str = Field("text", description="jsonl, parquet and Hugging Face sources: the text column.")
    id_field: str | None = Field(None, description="Column holding a document id; default: file and row number.")
    txt_unit: TxtUnit | None = Field(
        None, description="What one document is in a text file: the whole file, each blank-line-separated "
                          "paragraph, or each line. Default: `file` inside directories, `paragraph` for a "
                          "single .txt source.")
    hf_split: str = Field("train", description="Hugging Face DatasetDict: which split to read.")

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if self.path == "stdlib":
            return "stdlib"
        return Path(self.path).name or self.path


@dataclass(slots=True)
class SourceFingerprint:
    """Cheap identity of what a source held when read: names, sizes and modification times of its files."""

    hasher: Any = field(default_factory=lambda: hashlib.blake2b(digest_size=16))
    files: int = 0
    bytes: int = 0

    def add(self, name: str, stat: os.stat_result) -> None:
        self.hasher.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        self.files += 1
        self.bytes += stat.st_size

    def summary(self) -> dict[str, Any]:
        return {"fingerprint": self.hasher.hexdigest(), "files": self.files, "bytes": self.bytes}


def resolve_type(source: SourceConfig) -> SourceType:
    if source.type != "auto":
        return source.type
    if source.path == "stdlib":
        return "stdlib"
    path = Path(source.path)
    if not path.exists():
        raise DataError(f"source not found: {source.path}")
    if path.is_dir():
        is_saved_dataset = (path / "dataset_dict.json").exists() or (path / "state.json").exists()
        return "hf" if is_saved_dataset else "dir"
    kind = _file_type(path.name)
    if kind is None:
        raise DataError(f"unknown source type for {source.path}: expected a directory, .txt, .jsonl[.gz|.zst], "
                        ".parquet or `stdlib`; set `type:` to read it another way")
    return kind


def _file_type(name: str) -> SourceType | None:
    lower = name.lower()
    if lower.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if lower.endswith(".parquet"):
        return "parquet"
    if lower.endswith(".txt"):
        return "txt"
    return None


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def read_source(source: SourceConfig, fingerprint: SourceFingerprint) -> Iterator[RawDoc | Skipped]:
    """Stream one source's documents, recording what was read into `fingerprint`."""
    kind = resolve_type(source)
    path = Path(source.path)
    if kind != "stdlib" and not path.exists():
        raise DataError(f"source not found: {source.path}")
    label = source.label
    if kind == "stdlib":
        fingerprint.hasher.update(f"python {sys.version}\n".encode())
        yield from _read_dir(stdlib_root(), label, ["*.py"], ["site-packages/*", "dist-packages/*"],
                             source, fingerprint)
    elif kind == "dir":
        if not path.is_dir():
            raise DataError(f"source {source.path} is not a directory")
        yield from _read_dir(path, label, source.include, source.exclude, source, fingerprint)
    elif kind == "hf":
        for file in _walk(path):
            fingerprint.add(file.relative_to(path).as_posix(), file.stat())
        yield from _read_hf(path, label, source)
    else:
        fingerprint.add(path.name, path.stat())
        yield from _read_file(path, path.name, kind, label, source)


def _read_dir(root: Path, label: str, include: list[str], exclude: list[str], source: SourceConfig,
              fingerprint: SourceFingerprint) -> Iterator[RawDoc | Skipped]:
    for path in _walk(root):
        rel = path.relative_to(root).as_posix()
        if not any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(path.name, p) for p in include):
            continue
        if any(fnmatch.fnmatch(rel, p) for p in exclude):
            continue
        try:
            stat = path.stat()
        except OSError as exc:
            yield Skipped(rel, label, "unreadable", f"{rel}: {exc.strerror}")
            continue
        fingerprint.add(rel, stat)
        kind = _file_type(path.name)
        if kind in ("jsonl", "parquet"):
            yield from _read_file(path, rel, kind, label, source)
        else:
            yield from _read_text_file(path, rel, label, source.txt_unit or "file")


def _walk(root: Path) -> Iterator[Path]:
    """Every regular file below root, in a stable (sorted) order, skipping caches and hidden folders."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not d.startswith("."))
        for name in sorted(filenames):
            yield Path(dirpath) / name


def _read_file(path: Path, rel: str, kind: SourceType, label: str,
               source: SourceConfig) -> Iterator[RawDoc | Skipped]:
    if kind == "txt":
        yield from _read_text_file(path, rel, label, source.txt_unit or "paragraph")
    elif kind == "jsonl":
        yield from _read_jsonl(path, rel, label, source)
    elif kind == "parquet":
        yield from _read_parquet(path, rel, label, source)
    else:
        raise DataError(f"source type {kind!r} cannot read the file {path}")


def _read_text_file(path: Path, rel: str, label: str, unit: TxtUnit) -> Iterator[RawDoc | Skipped]:
    try:
        if unit == "file":
            yield RawDoc(rel, path.read_bytes(), label)
            return
        with path.open("rb") as handle:
            yield from _units(handle, rel, label, unit)
    except OSError as exc:
        yield Skipped(rel, label, "unreadable", f"{rel}: {exc.strerror or exc}")


def _units(handle: io.BufferedReader, rel: str, label: str, unit: TxtUnit) -> Iterator[RawDoc]:
    """Stream paragraphs (runs of non-blank lines) or lines of a text file as documents."""
    buffer: list[bytes] = []
    count = 0
    for line in handle:
        if unit == "line":
            if line.strip():
                count += 1
                yield RawDoc(f"{rel}:{count}", line.rstrip(b"\r\n"), label)
            continue
        if line.strip():
            buffer.append(line)
        elif buffer:
            count += 1
            yield RawDoc(f"{rel}:{count}", b"".join(buffer), label)
            buffer = []
    if buffer:
        yield RawDoc(f"{rel}:{count + 1}", b"".join(buffer), label)


def _open_text(path: Path) -> io.TextIOBase:
    lower = path.name.lower()
    if lower.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace")
    if lower.endswith(".zst"):
        import zstandard

        reader = zstandard.ZstdDecompressor().stream_reader(path.open("rb"))
        return io.TextIOWrapper(reader, encoding="utf-8", errors="replace")
    return path.open("r", encoding="utf-8", errors="replace")


def _read_jsonl(path: Path, rel: str, label: str, source: SourceConfig) -> Iterator[RawDoc | Skipped]:
    try:
        with _open_text(path) as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                yield _record_to_doc(line, number, rel, label, source)
    except (OSError, EOFError, ValueError) as exc:
        # A truncated or corrupt compressed stream ends the file, not the run.
        yield Skipped(rel, label, "unreadable", f"{rel}: {exc}")


def _record_to_doc(line: str, number: int, rel: str, label: str, source: SourceConfig) -> RawDoc | Skipped:
    doc_id = f"{rel}:{number}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        return Skipped(doc_id, label, "invalid_json", f"{doc_id}: {exc.msg}")
    if not isinstance(record, dict):
        return Skipped(doc_id, label, "invalid_json", f"{doc_id}: a line must hold a JSON object")
    return _row_to_doc(record, doc_id, label, source)


def _row_to_doc(row: dict[str, Any], doc_id: str, label: str, source: SourceConfig) -> RawDoc | Skipped:
    text = row.get(source.text_field)
    if not isinstance(text, str):
        found = "missing" if text is None else f"a {type(text).__name__}"
        return Skipped(doc_id, label, "missing_text",
                       f"{doc_id}: text field {source.text_field!r} is {found}")
    if source.id_field and row.get(source.id_field) is not None:
        doc_id = str(row[source.id_field])
    return RawDoc(doc_id, text, label)


def _read_parquet(path: Path, rel: str, label: str, source: SourceConfig) -> Iterator[RawDoc | Skipped]:
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except (OSError, ValueError) as exc:
        yield Skipped(rel, label, "unreadable", f"{rel}: {exc}")
        return
    columns = [c for c in (source.text_field, source.id_field) if c]
    missing = [c for c in columns if c not in table.schema_arrow.names]
    if missing:
        raise DataError(f"{path}: no column {missing[0]!r}; columns are {', '.join(table.schema_arrow.names)}")
    number = 0
    for batch in table.iter_batches(columns=columns, batch_size=1024):
        for row in batch.to_pylist():
            number += 1
            yield _row_to_doc(row, f"{rel}:{number}", label, source)


def _read_hf(path: Path, label: str, source: SourceConfig) -> Iterator[RawDoc | Skipped]:
    import datasets

    try:
        if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
            dataset = datasets.load_from_disk(str(path))
        else:
            dataset = datasets.load_dataset(str(path))
    except (OSError, ValueError, FileNotFoundError) as exc:
        raise DataError(f"cannot load the Hugging Face dataset at {path}: {exc}") from None
    if isinstance(dataset, (datasets.DatasetDict, dict)):
        if source.hf_split not in dataset:
            raise DataError(f"{path} has no split {source.hf_split!r}; splits are {', '.join(dataset)} "
                            "(set hf_split)")
        dataset = dataset[source.hf_split]
    if source.text_field not in dataset.column_names:
        raise DataError(f"{path}: no column {source.text_field!r}; columns are {', '.join(dataset.column_names)}")
    for number, row in enumerate(dataset, start=1):
        yield _row_to_doc(row, f"{path.name}:{number}", label, source)
