"""Cleaning: bytes to normalised text. UTF-8 with invalid bytes replaced, NFC, `\\n` newlines, no control
characters but tab and newline; binary files (NUL bytes) and empty documents are dropped."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass

from scalelab.data.documents import Doc, RawDoc, Skipped

# C0 controls except \t and \n (\r is normalised before this runs), DEL, and the C1 block.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_REPLACEMENT_BYTES = "\ufffd".encode()


@dataclass(slots=True)
class CleanStats:
    """What cleaning changed; merged across workers."""

    invalid_bytes_replaced: int = 0
    control_chars_removed: int = 0
    nfc_changed: int = 0

    def merge(self, other: CleanStats) -> None:
        self.invalid_bytes_replaced += other.invalid_bytes_replaced
        self.control_chars_removed += other.control_chars_removed
        self.nfc_changed += other.nfc_changed


def decode_utf8(data: bytes) -> tuple[str, int]:
    """Decode UTF-8, replacing invalid sequences with U+FFFD; returns the text and how many were replaced."""
    try:
        return data.decode("utf-8"), 0
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="replace")
        return text, text.count("\ufffd") - data.count(_REPLACEMENT_BYTES)


def normalize_text(text: str, stats: CleanStats) -> str:
    if text.startswith("\ufeff"):
        text = text[1:]
    if not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
        stats.nfc_changed += 1
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    text, removed = _CONTROL.subn("", text)
    stats.control_chars_removed += removed
    return text


def clean(raw: RawDoc, stats: CleanStats) -> Doc | Skipped:
    data = raw.data
    if isinstance(data, bytes):
        if b"\x00" in data:
            return Skipped(raw.id, raw.source, "binary", f"{raw.id}: contains NUL bytes")
        text, replaced = decode_utf8(data)
        stats.invalid_bytes_replaced += replaced
    else:
        text = data
    text = normalize_text(text, stats)
    if not text.strip():
        return Skipped(raw.id, raw.source, "empty", f"{raw.id}: no text after cleaning")
    return Doc(raw.id, text, raw.source)


def content_hash(text: str, salt: bytes = b"") -> int:
    """64-bit hash of the text with whitespace runs collapsed: the identity of a document's content.

    Identical documents (up to whitespace) hash alike, so they always land in the same split.
    """
    normalised = " ".join(text.split()).encode("utf-8")
    digest = hashlib.blake2b(normalised, digest_size=8, key=salt).digest()
    return int.from_bytes(digest, "little")
