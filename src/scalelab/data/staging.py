"""Cleaned documents parked on disk between the two passes of `prepare`.

The first pass streams sources through cleaning, filtering and MinHash into one staging file per split;
selection (filters, deduplication) and tokenizer training then read the small per-document arrays, and the
second pass reads documents back in shuffled order to tokenize them. Memory stays bounded: only per-document
arrays (hash, filter flag, band hashes: about 130 bytes a document) are ever held in RAM.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scalelab.data.documents import Doc
from scalelab.data.split import SPLITS, SplitName


@dataclass(slots=True)
class StagedDoc:
    id: str
    source: str
    text: str
    clean_text: str  # after filters that edit text (C4 drops lines); `text` itself when nothing changed


class StagingArea:
    def __init__(self, directory: Path, num_bands: int):
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.num_bands = num_bands
        self._files = {(s, kind): (directory / f"{s}.{kind}").open("wb")
                       for s in SPLITS for kind in ("records", "offsets", "hashes", "bands", "passed")}
        self._position = dict.fromkeys(SPLITS, 0)
        self.documents = dict.fromkeys(SPLITS, 0)
        self.bytes = dict.fromkeys(SPLITS, 0)
        self._cache: dict[tuple[str, str], np.ndarray] = {}
        for split in SPLITS:
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
        self._files[split, "records"].write(record)
        self._position[split] += len(record)
        self._files[split, "offsets"].write(np.int64(self._position[split]).tobytes())
        self._files[split, "hashes"].write(np.uint64(doc_hash).tobytes())
        self._files[split, "bands"].write(bands.astype(np.uint64, copy=False).tobytes())
        self._files[split, "passed"].write(np.uint8(passed).tobytes())
        self.documents[split] += 1
        self.bytes[split] += header.get("cut", len(body))

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


def _parse(record: bytes) -> StagedDoc:
    header_bytes, _, body = record.partition(b"\n")
    header = json.loads(header_bytes)
    cut = header.get("cut")
    if cut is None:
        text = body.decode("utf-8")
        return StagedDoc(header["id"], header["source"], text, text)
    return StagedDoc(header["id"], header["source"], body[:cut].decode("utf-8"), body[cut:].decode("utf-8"))
