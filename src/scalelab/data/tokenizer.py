"""Tokenizers, both held as Hugging Face `tokenizers` objects and saved as `tokenizer.json`:

- `bpe`: byte-level BPE trained on the train split (no normaliser, so decode(encode(text)) == text);
- `bytes`: one token per UTF-8 byte (id == byte value) plus the special tokens, for tokenizer-free comparisons.

Both end every document with `<|endoftext|>`. Text that happens to spell a special token is encoded as plain
text, so a document can never inject a document boundary.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path
from typing import Literal

import numpy as np
import tokenizers
from pydantic import Field
from tokenizers import decoders, models, pre_tokenizers, trainers

from scalelab.config import StrictModel
from scalelab.errors import DataError

EOD = "<|endoftext|>"
SPECIAL_TOKENS = [EOD]


class TokenizerConfig(StrictModel):
    """Which tokenizer to build for a dataset."""

    kind: Literal["bpe", "bytes"] = Field("bpe", description="Byte-level BPE, or raw UTF-8 bytes.")
    vocab_size: int = Field(8192, ge=257 + len(SPECIAL_TOKENS), le=1 << 20,
                            description="BPE vocabulary size, special tokens included (ignored for bytes).")
    min_frequency: int = Field(2, ge=1, description="BPE: a pair must occur this often to be merged.")
    max_train_bytes: int = Field(200_000_000, gt=0,
                                 description="BPE trains on a hash-chosen sample of the train split of "
                                             "about this many bytes.")


@cache
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in character for each byte, as the ByteLevel pre-tokenizer uses."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


class Tokenizer:
    """A thin wrapper that fixes how scalelab encodes documents."""

    def __init__(self, hf: tokenizers.Tokenizer):
        hf.encode_special_tokens = True
        self.hf = hf
        eod = hf.token_to_id(EOD)
        if eod is None:
            raise DataError(f"tokenizer has no {EOD} token")
        self.eod_id: int = eod

    @classmethod
    def load(cls, path: Path) -> Tokenizer:
        try:
            return cls(tokenizers.Tokenizer.from_file(str(path)))
        except Exception as exc:  # tokenizers raises a bare Exception on a malformed file
            raise DataError(f"cannot load tokenizer {path}: {exc}") from None

    def save(self, path: Path) -> None:
        self.hf.save(str(path))

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    @property
    def dtype(self) -> type[np.unsignedinteger]:
        return np.uint16 if self.vocab_size <= 1 << 16 else np.uint32

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_docs(self, texts: list[str]) -> list[np.ndarray]:
        """Token ids of each document followed by the end-of-document token."""
        encodings = self.hf.encode_batch_fast(texts, add_special_tokens=False)
        return [np.array([*enc.ids, self.eod_id], dtype=self.dtype) for enc in encodings]

    def decode(self, ids: Iterable[int]) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=False)


def bytes_tokenizer() -> Tokenizer:
    vocab = {char: byte for byte, char in _bytes_to_unicode().items()}
    hf = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=[]))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens(SPECIAL_TOKENS)
    return Tokenizer(hf)


def train_bpe(texts: Iterator[str], config: TokenizerConfig, length: int | None = None) -> Tokenizer:
    hf = tokenizers.Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=config.vocab_size,
        min_frequency=config.min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator(texts, trainer=trainer, length=length)
    return Tokenizer(hf)


def build_tokenizer(config: TokenizerConfig, train_texts: Iterator[str], length: int | None = None) -> Tokenizer:
    if config.kind == "bytes":
        return bytes_tokenizer()
    return train_bpe(train_texts, config, length)


@cache
def load_cached(path: str) -> Tokenizer:
    """One tokenizer per worker process, loaded on first use."""
    return Tokenizer.load(Path(path))
