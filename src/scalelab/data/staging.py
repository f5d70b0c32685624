"""Cleaned documents parked on disk between the two passes of `prepare`.

The first pass streams sources through cleaning into one staging file per split; the tokenizer then trains
on the train staging file, and the second pass reads documents back in shuffled order to tokenize them.
Memory stays bounded: only per-document offsets and hashes (16 bytes a document) are ever held in RAM.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from scalelab.data.documents import Doc
from scalelab.data.split import SPLITS, SplitName


class StagingArea:
    def __init__(self, directory: Path):
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self._records = {s: (directory / f"{s}.records").open("wb") for s in SPLITS}
        self._offsets = {s: (directory / f"{s}.offsets").open("wb") for s in SPLITS}
        self._hashes = {s: (directory / f"{s}.hashes").open("wb") for s in SPLITS}
        self._position = dict.fromkeys(SPLITS, 0)
        self.documents = dict.fromkeys(SPLITS, 0)
        self.bytes = dict.fromkeys(SPLITS, 0)
        self._offset_cache: dict[str, np.ndarray] = {}
        for split in SPLITS:
            self._offsets[split].write(np.int64(0).tobytes())

    def add(self, split: SplitName, doc: Doc, doc_hash: int) -> None:
        """A record is a one-line JSON header (id, source), a newline, then the UTF-8 text."""
        header = json.dumps({"id": doc.id, "source": doc.source}, ensure_ascii=False).encode()
        body = doc.text.encode("utf-8")
        record = header + b"\n" + body
        self._records[split].write(record)
        self._position[split] += len(record)
        self._offsets[split].write(np.int64(self._position[split]).tobytes())
        self._hashes[split].write(np.uint64(doc_hash).tobytes())
        self.documents[split] += 1
        self.bytes[split] += len(body)

    def finish(self) -> None:
        for handles in (self._records, self._offsets, self._hashes):
            for handle in handles.values():
                handle.close()

    def hashes(self, split: SplitName) -> np.ndarray:
        return np.fromfile(self.directory / f"{split}.hashes", dtype=np.uint64)

    def read(self, split: SplitName, indices: np.ndarray) -> list[tuple[dict[str, str], str]]:
        """(header, text) of the given documents, read with positioned reads (no memory map to grow RSS)."""
        offsets = self.offsets(split)
        out = []
        fd = os.open(self.directory / f"{split}.records", os.O_RDONLY)
        try:
            for index in indices:
                start, end = int(offsets[index]), int(offsets[index + 1])
                record = os.pread(fd, end - start, start)
                header, _, body = record.partition(b"\n")
                out.append((json.loads(header), body.decode("utf-8")))
        finally:
            os.close(fd)
        return out

    def offsets(self, split: SplitName) -> np.ndarray:
        if split not in self._offset_cache:
            self._offset_cache[split] = np.fromfile(self.directory / f"{split}.offsets", dtype=np.int64)
        return self._offset_cache[split]

    def iter_texts(self, split: SplitName, keep: np.ndarray) -> Iterator[str]:
        """Texts of the documents where `keep` is true, streamed in file order."""
        offsets = self.offsets(split)
        with (self.directory / f"{split}.records").open("rb") as handle:
            for index in np.flatnonzero(keep):
                handle.seek(int(offsets[index]))
                record = handle.read(int(offsets[index + 1] - offsets[index]))
                yield record.partition(b"\n")[2].decode("utf-8")
