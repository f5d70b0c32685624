"""Cleaned documents parked on disk between the two passes of `prepare`.

The first pass streams sources through cleaning, filtering and MinHash into one staging file per split, the
held-out ones as wide as split resolution may make them; `regroup` then moves the documents resolution leaves
out into train;
selection (filters, deduplication) and tokenizer training then read the small per-document arrays, and the
second pass reads documents back in shuffled order to tokenize them. Memory stays bounded: only per-document
arrays (hash, filter flag, band hashes: about 130 bytes a document) are ever held in RAM.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from scalelab.data.documents import Doc
from scalelab.data.split import HELD_OUT, SPLITS, SplitName


@dataclass(slots=True)
class StagedDoc:
    id: str
    source: str
    text: str
    clean_text: str  # after filters that edit text (C4 drops lines); `text` itself when nothing changed


KINDS = ("records", "offsets", "hashes", "bands", "passed")


class StagingArea:
    def __init__(self, directory: Path, num_bands: int):
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.num_bands = num_bands
        self._files: dict[tuple[SplitName, str], BinaryIO] = {}
        self._position = dict.fromkeys(SPLITS, 0)
        self.documents = dict.fromkeys(SPLITS, 0)
        self.bytes = dict.fromkeys(SPLITS, 0)
        self._cache: dict[tuple[str, str], np.ndarray] = {}
        for split in SPLITS:
            self._open(split, "wb")

    def _open(self, split: SplitName, mode: str) -> None:
        self._files.update({(split, kind): (self.directory / f"{split}.{kind}").open(mode) for kind in KINDS})
        if mode == "wb":
            self._files[split, "offsets"].write(np.int64(0).tobytes())

    def add(self, split: SplitName, doc: Doc, clean_text: str | None, doc_hash: int, bands: np.ndarray,
            passed: bool) -> None:
        """A record is a one-line JSON header, a newline, the UTF-8 text, then the edited text if any."""
        body = doc.text.encode("utf-8")
        header = {"id": doc.id, "source": doc.source}
        if clean_text is not None:
            header["cut"] = len(body)
            body += clean_text.encode("utf-8")
        record = json.dumps(header, ensure_ascii=False).encode() + b"\n" + body
        self._append(split, record, header.get("cut", len(body)), doc_hash, bands, passed)

    def _append(self, split: SplitName, record: bytes, text_bytes: int, doc_hash: int, bands: np.ndarray,
                passed: bool) -> None:
        self._files[split, "records"].write(record)
        self._position[split] += len(record)
        self._files[split, "offsets"].write(np.int64(self._position[split]).tobytes())
        self._files[split, "hashes"].write(np.uint64(doc_hash).tobytes())
        self._files[split, "bands"].write(bands.astype(np.uint64, copy=False).tobytes())
        self._files[split, "passed"].write(np.uint8(passed).tobytes())
        self.documents[split] += 1
        self.bytes[split] += text_bytes

    def regroup(self, split_of: Callable[[int], SplitName]) -> None:
        """Move every staged held-out document to `split_of(its hash)`; records are copied, not parsed again."""
        old = {}
        for split in HELD_OUT:
            old[split] = (self.offsets(split), self.hashes(split), self.bands(split), self.passed(split))
            for kind in KINDS:
                (self.directory / f"{split}.{kind}").rename(self.directory / f"{split}.{kind}.old")
            self._position[split] = self.documents[split] = self.bytes[split] = 0
        self._cache.clear()
        for split in SPLITS:
            self._open(split, "ab" if split == "train" else "wb")
        for split, (offsets, hashes, bands, passed) in old.items():
            with (self.directory / f"{split}.records.old").open("rb") as handle:
                for index, doc_hash in enumerate(hashes):
                    record = handle.read(int(offsets[index + 1] - offsets[index]))
                    self._append(split_of(int(doc_hash)), record, _text_bytes(record), int(doc_hash),
                                 bands[index], bool(passed[index]))
        self.finish()
        for path in self.directory.glob("*.old"):
            path.unlink()

    def finish(self) -> None:
        for handle in self._files.values():
            handle.close()

    def _array(self, split: SplitName, kind: str, dtype: type) -> np.ndarray:
        if (split, kind) not in self._cache:
            self._cache[split, kind] = np.fromfile(self.directory / f"{split}.{kind}", dtype=dtype)
        return self._cache[split, kind]

    def offsets(self, split: SplitName) -> np.ndarray:
        return self._array(split, "offsets", np.int64)

    def hashes(self, split: SplitName) -> np.ndarray:
        return self._array(split, "hashes", np.uint64)

    def bands(self, split: SplitName) -> np.ndarray:
        return self._array(split, "bands", np.uint64).reshape(-1, self.num_bands)

    def passed(self, split: SplitName) -> np.ndarray:
        return self._array(split, "passed", np.uint8).astype(bool)

    def read(self, split: SplitName, indices: np.ndarray) -> list[StagedDoc]:
        """Documents by index, read with positioned reads (no memory map to grow RSS)."""
        offsets = self.offsets(split)
        out = []
        fd = os.open(self.directory / f"{split}.records", os.O_RDONLY)
        try:
            for index in indices:
                start, end = int(offsets[index]), int(offsets[index + 1])
                out.append(_parse(os.pread(fd, end - start, start)))
        finally:
            os.close(fd)
        return out

    def iter_texts(self, split: SplitName, keep: np.ndarray) -> Iterator[str]:
        """Original texts of the documents where `keep` is true, streamed in file order."""
        offsets = self.offsets(split)
        with (self.directory / f"{split}.records").open("rb") as handle:
            for index in np.flatnonzero(keep):
                handle.seek(int(offsets[index]))
                yield _parse(handle.read(int(offsets[index + 1] - offsets[index]))).text


def _text_bytes(record: bytes) -> int:
    header_bytes, _, body = record.partition(b"\n")
    cut = json.loads(header_bytes).get("cut")
    return len(body) if cut is None else cut


def _parse(record: bytes) -> StagedDoc:
    header_bytes, _, body = record.partition(b"\n")
    header = json.loads(header_bytes)
    cut = header.get("cut")
    if cut is None:
        text = body.decode("utf-8")
        return StagedDoc(header["id"], header["source"], text, text)
    return StagedDoc(header["id"], header["source"], body[:cut].decode("utf-8"), body[cut:].decode("utf-8"))
