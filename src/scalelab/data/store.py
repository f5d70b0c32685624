"""TokenStore: a prepared dataset on disk, and zero-copy views of its splits.

Layout of a dataset directory:

    manifest.json                 counts, bytes, tokens, tokenizer, resolved config, fingerprints, version
    tokenizer.json                Hugging Face `tokenizers` file
    contamination.jsonl           held-out documents n-gram decontamination flagged (if any), with covered shares
    validation/, test/            held-out splits
    train/<variant>/              one directory per train variant (e.g. `raw`)

Each split directory holds flat little-endian arrays, memory-mapped on open:
    tokens.bin     uint16 (vocabulary <= 65536) or uint32; each document ends with the end-of-document token
    offsets.bin    int64, n_docs + 1 token offsets of document starts
    doc_bytes.bin  int64, UTF-8 bytes of each document's cleaned text (for bits per byte)
    doc_hash.bin   uint64, content hash of each document (see clean.content_hash)
    lsh_bands.bin  uint64, n_docs x num_bands MinHash band hashes of each document (see dedup.py)
    docs.jsonl     {"id", "source"} of each document, in order

Train documents are stored in a seeded shuffled order, so the first n tokens are a fair sample and every
smaller subset is a prefix of every larger one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from scalelab import __version__
from scalelab.data.tokenizer import Tokenizer
from scalelab.errors import DataError
from scalelab.io import read_json_object

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.json"


def _digest(*parts: str) -> str:
    return hashlib.blake2b("\0".join(parts).encode(), digest_size=16).hexdigest()


def _memmap(path: Path, dtype: Any) -> np.ndarray:
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


@dataclass(frozen=True)
class TokenSplit:
    """A split, or a prefix of one, as views of memory-mapped arrays: nothing is copied.

    `subset(n)` keeps the first n tokens; its fingerprint depends only on the root split's fingerprint and n,
    so `s.subset(a).subset(b)` and `s.subset(b)` are the same data with the same fingerprint.
    """

    name: str
    tokens: np.ndarray
    offsets: np.ndarray
    doc_bytes: np.ndarray
    root_fingerprint: str
    directory: Path
    is_subset: bool = False

    @property
    def fingerprint(self) -> str:
        if not self.is_subset:
            return self.root_fingerprint
        return _digest(self.root_fingerprint, str(self.n_tokens))

    @property
    def n_tokens(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def n_docs(self) -> int:
        """Documents that start within this view (the last may be cut short in a subset)."""
        return int(self.offsets.shape[0]) - 1

    @property
    def n_bytes(self) -> float:
        """UTF-8 bytes of the text behind these tokens; a document cut by a subset counts pro rata."""
        if self.n_docs == 0:
            return 0.0
        full = float(self.doc_bytes[: self.n_docs - 1].sum())
        last_start, last_end = int(self.offsets[-2]), int(self.offsets[-1])
        last_len = self._full_doc_tokens(self.n_docs - 1)
        return full + float(self.doc_bytes[self.n_docs - 1]) * (last_end - last_start) / last_len

    def _full_doc_tokens(self, index: int) -> int:
        # offsets of a subset are clipped; the untruncated length of the last document is on disk.
        full_offsets = _memmap(self.directory / "offsets.bin", np.int64)
        return int(full_offsets[index + 1] - full_offsets[index])

    def __len__(self) -> int:
        return self.n_tokens

    def __getitem__(self, index: slice) -> np.ndarray:
        return self.tokens[index]

    def subset(self, n_tokens: int) -> TokenSplit:
        if n_tokens <= 0:
            raise DataError(f"a subset needs a positive number of tokens (got {n_tokens})")
        if n_tokens > self.n_tokens:
            raise DataError(f"asked for {n_tokens:,} tokens but {self.name} has only {self.n_tokens:,}")
        n_docs = int(np.searchsorted(self.offsets, n_tokens, side="left"))
        offsets = np.append(self.offsets[:n_docs], np.int64(n_tokens))
        return TokenSplit(self.name, self.tokens[:n_tokens], offsets, self.doc_bytes[:n_docs],
                          self.root_fingerprint, self.directory, is_subset=True)

    def repeat(self, total_tokens: int) -> RepeatedTokens:
        """This view's tokens cycled to `total_tokens`: D tokens from U = n_tokens unique ones, D/U epochs."""
        if total_tokens < self.n_tokens:
            raise DataError(f"a repetition needs at least the {self.n_tokens:,} unique tokens (got {total_tokens:,})")
        return RepeatedTokens(self, total_tokens)

    def doc_hashes(self) -> np.ndarray:
        return _memmap(self.directory / "doc_hash.bin", np.uint64)[: self.n_docs]

    def lsh_bands(self) -> np.ndarray:
        """MinHash band hashes of the documents in this view, shape (n_docs, num_bands)."""
        flat = _memmap(self.directory / "lsh_bands.bin", np.uint64)
        n_total = _memmap(self.directory / "offsets.bin", np.int64).shape[0] - 1
        return flat.reshape(n_total, -1)[: self.n_docs] if n_total else flat.reshape(0, 0)

    def documents(self) -> Iterator[np.ndarray]:
        """Each document's tokens (end-of-document token included), in stored order."""
        for start, end in zip(self.offsets[:-1], self.offsets[1:], strict=True):
            yield self.tokens[int(start):int(end)]

    def doc_records(self) -> list[dict[str, str]]:
        """Ids and sources of the documents in this view, read from docs.jsonl."""
        with (self.directory / "docs.jsonl").open(encoding="utf-8") as handle:
            return [json.loads(line) for _, line in zip(range(self.n_docs), handle, strict=False)]


@dataclass(frozen=True)
class RepeatedTokens:
    """A data-constrained view: the U unique tokens of `unique` repeated to D = n_tokens in total.

    Nothing is copied; slicing wraps around. With U fixed, a shorter repetition is a prefix of a longer one.
    """

    unique: TokenSplit
    n_tokens: int

    @property
    def unique_tokens(self) -> int:
        return self.unique.n_tokens

    @property
    def epochs(self) -> float:
        return self.n_tokens / self.unique_tokens

    @property
    def fingerprint(self) -> str:
        return _digest(self.unique.fingerprint, "repeat", str(self.n_tokens))

    def __len__(self) -> int:
        return self.n_tokens

    def __getitem__(self, index: slice) -> np.ndarray:
        start, stop, step = index.indices(self.n_tokens)
        if step != 1:
            raise DataError("repeated tokens support contiguous slices only")
        positions = np.arange(start, stop) % self.unique_tokens
        return np.asarray(self.unique.tokens)[positions]


class TokenStore:
    """A prepared dataset, opened lazily: arrays are memory-mapped when a split is first asked for."""

    def __init__(self, path: Path, manifest: dict[str, Any]):
        self.path = path
        self.manifest = manifest

    @classmethod
    def open(cls, path: str | Path) -> TokenStore:
        path = Path(path)
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            raise DataError(f"{path} is not a prepared dataset (no {MANIFEST}); run `scalelab prepare` first")
        manifest = read_json_object(manifest_path, "dataset manifest")
        if manifest.get("format") != FORMAT_VERSION:
            raise DataError(f"{path} has dataset format {manifest.get('format')!r}; this scalelab "
                            f"({__version__}) reads format {FORMAT_VERSION}; prepare it again")
        store = cls(path, manifest)
        store._check_sizes()
        return store

    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]

    def _splits(self) -> dict[str, dict[str, Any]]:
        """Every split directory (train variants and held-out splits) -> its manifest entry."""
        return {**{f"train/{variant}": info for variant, info in self.manifest["train"].items()},
                **self.manifest["held_out"]}

    def _check_sizes(self) -> None:
        """A truncated or overlong array would be read as a different dataset: compare each with the manifest."""
        token_size = np.dtype(self.manifest["tokenizer"]["dtype"]).itemsize
        band_size = 8 * self.manifest["minhash"]["num_bands"]
        for name, info in self._splits().items():
            n_docs = info["documents"]
            expected = {"tokens.bin": info["tokens"] * token_size, "offsets.bin": (n_docs + 1) * 8,
                        "doc_bytes.bin": n_docs * 8, "doc_hash.bin": n_docs * 8, "lsh_bands.bin": n_docs * band_size}
            for file, size in expected.items():
                path = self.path / name / file
                found = path.stat().st_size if path.is_file() else None
                if found != size:
                    raise DataError(f"dataset is corrupt: {path}: expected {size} bytes, found "
                                    f"{'none' if found is None else found}")

    def verify(self) -> list[str]:
        """Re-hash the arrays and the tokenizer against the manifest's fingerprints; returns what differs
        (split names, `tokenizer.json`), empty when the dataset is intact. Reads every token."""
        dtype = np.dtype(self.manifest["tokenizer"]["dtype"])
        splits = self._splits()
        differing = [name for name, info in splits.items()
                     if split_fingerprint(self.path / name, dtype) != info["fingerprint"]]
        # With the recorded split fingerprints, only the tokenizer's digest can move the dataset's.
        tokenizer = self.path / TOKENIZER
        if not tokenizer.is_file() or store_fingerprint(tokenizer, splits) != self.fingerprint:
            differing.append(TOKENIZER)
        return differing

    @property
    def variants(self) -> list[str]:
        return list(self.manifest["train"])

    @cached_property
    def tokenizer(self) -> Tokenizer:
        return Tokenizer.load(self.path / TOKENIZER)

    def train(self, variant: str | None = None) -> TokenSplit:
        variant = variant or self.variants[0]
        if variant not in self.manifest["train"]:
            raise DataError(f"{self.path} has no train variant {variant!r}; variants: {', '.join(self.variants)}")
        return self._open_split(f"train/{variant}", self.manifest["train"][variant])

    def split(self, name: str) -> TokenSplit:
        if name == "train":
            return self.train()
        if name not in self.manifest["held_out"]:
            raise DataError(f"{self.path} has no split {name!r}; splits: train, {', '.join(self.manifest['held_out'])}")
        return self._open_split(name, self.manifest["held_out"][name])

    def subset(self, n_tokens: int, variant: str | None = None) -> TokenSplit:
        """The first n_tokens of a train variant's shuffled documents."""
        return self.train(variant).subset(n_tokens)

    def repeated(self, unique_tokens: int, total_tokens: int, variant: str | None = None) -> RepeatedTokens:
        """D = total_tokens drawn from the first U = unique_tokens of a train variant, repeated D/U times."""
        return self.subset(unique_tokens, variant).repeat(total_tokens)

    def _open_split(self, name: str, info: dict[str, Any]) -> TokenSplit:
        directory = self.path / name
        dtype = np.dtype(self.manifest["tokenizer"]["dtype"])
        try:
            return TokenSplit(
                name=name,
                tokens=_memmap(directory / "tokens.bin", dtype),
                offsets=_memmap(directory / "offsets.bin", np.int64),
                doc_bytes=_memmap(directory / "doc_bytes.bin", np.int64),
                root_fingerprint=info["fingerprint"],
                directory=directory,
            )
        except OSError as exc:
            raise DataError(f"{directory} is incomplete: {exc}") from None


class SplitWriter:
    """Appends documents to one split directory, fingerprinting tokens and boundaries as they are written."""

    def __init__(self, directory: Path, dtype: Any):
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.dtype = np.dtype(dtype)
        self._tokens = (directory / "tokens.bin").open("wb")
        self._offsets = (directory / "offsets.bin").open("wb")
        self._bytes = (directory / "doc_bytes.bin").open("wb")
        self._hashes = (directory / "doc_hash.bin").open("wb")
        self._bands = (directory / "lsh_bands.bin").open("wb")
        self._docs = (directory / "docs.jsonl").open("w", encoding="utf-8")
        self.n_tokens = 0
        self.n_docs = 0
        self.n_bytes = 0
        start = np.int64(0).tobytes()
        self._offsets.write(start)
        self._hasher = SplitHasher(start)

    def append(self, tokens: np.ndarray, n_bytes: int, doc_hash: int, bands: np.ndarray, doc_id: str,
               source: str) -> None:
        data = tokens.astype(self.dtype, copy=False).tobytes()
        self.n_tokens += int(tokens.shape[0])
        self.n_docs += 1
        self.n_bytes += n_bytes
        end = np.int64(self.n_tokens).tobytes()
        self._tokens.write(data)
        self._offsets.write(end)
        self._hasher.document(data, end)
        self._bytes.write(np.int64(n_bytes).tobytes())
        self._hashes.write(np.uint64(doc_hash).tobytes())
        self._bands.write(bands.astype(np.uint64, copy=False).tobytes())
        self._docs.write(json.dumps({"id": doc_id, "source": source}, ensure_ascii=False) + "\n")

    def close(self) -> dict[str, Any]:
        for handle in (self._tokens, self._offsets, self._bytes, self._hashes, self._bands, self._docs):
            handle.close()
        return {
            "documents": self.n_docs,
            "bytes": self.n_bytes,
            "tokens": self.n_tokens,
            "bytes_per_token": round(self.n_bytes / self.n_tokens, 4) if self.n_tokens else None,
            "fingerprint": self._hasher.hexdigest(),
        }


class SplitHasher:
    """A split's content fingerprint: blake2b over the bytes of offsets.bin and tokens.bin interleaved (the first
    offset, then each document's tokens and the offset that ends it), so tokens and document boundaries count."""

    def __init__(self, first_offset: bytes):
        self._hasher = hashlib.blake2b(digest_size=16)
        self._hasher.update(first_offset)

    def document(self, tokens: bytes, end_offset: bytes) -> None:
        self._hasher.update(tokens)
        self._hasher.update(end_offset)

    def hexdigest(self) -> str:
        return self._hasher.hexdigest()


def split_fingerprint(directory: Path, dtype: Any) -> str:
    """The fingerprint of the split written in `directory`, recomputed from its files."""
    tokens, offsets = _memmap(directory / "tokens.bin", dtype), _memmap(directory / "offsets.bin", np.int64)
    hasher = SplitHasher(offsets[:1].tobytes())
    for start, end in zip(offsets[:-1], offsets[1:], strict=True):
        hasher.document(tokens[start:end].tobytes(), end.tobytes())
    return hasher.hexdigest()


def store_fingerprint(tokenizer_path: Path, split_infos: dict[str, dict[str, Any]]) -> str:
    tokenizer_digest = hashlib.blake2b(tokenizer_path.read_bytes(), digest_size=16).hexdigest()
    parts = [tokenizer_digest] + [f"{name}={info['fingerprint']}" for name, info in sorted(split_infos.items())]
    return _digest(*parts)
