"""Held-out splits chosen by content, not position.

A document's split is a function of its content hash alone: adding documents never moves another across
splits, and identical documents always share a split. The same hash, mixed with a seed, orders documents
within a split, so the order is stable as a corpus grows.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from scalelab.config import StrictModel

SplitName = Literal["train", "validation", "test"]
HELD_OUT: tuple[SplitName, ...] = ("validation", "test")
SPLITS: tuple[SplitName, ...] = ("train", "validation", "test")
_MASK = (1 << 64) - 1


class SplitConfig(StrictModel):
    """Fractions of documents held out, chosen by a hash of their content."""

    validation: float = Field(0.02, ge=0.0, lt=1.0, description="Fraction of documents for validation.")
    test: float = Field(0.02, ge=0.0, lt=1.0, description="Fraction of documents for test.")
    seed: int = Field(0, ge=0, description="Changes which documents are held out.")

    @model_validator(mode="after")
    def _leave_training_data(self) -> SplitConfig:
        if self.validation + self.test >= 1.0:
            raise ValueError(f"validation + test must be below 1 (got {self.validation + self.test:g})")
        return self


def mix64(value: int, seed: int) -> int:
    """splitmix64 finaliser of value ^ seed: a cheap, well-spread 64-bit mix."""
    z = (value ^ (seed * 0x9E3779B97F4A7C15)) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def mix64_array(values: np.ndarray, seed: int) -> np.ndarray:
    """Vectorised `mix64` over a uint64 array (wrapping arithmetic is the point)."""
    with np.errstate(over="ignore"):
        z = values.astype(np.uint64) ^ np.uint64((seed * 0x9E3779B97F4A7C15) & _MASK)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def assign_split(doc_hash: int, config: SplitConfig) -> SplitName:
    position = mix64(doc_hash, config.seed + 1) / 2.0**64
    if position < config.validation:
        return "validation"
    if position < config.validation + config.test:
        return "test"
    return "train"


def shuffle_order(doc_hashes: np.ndarray, seed: int) -> np.ndarray:
    """A permutation of documents, seeded and stable: each document's place depends on its content only."""
    return np.argsort(mix64_array(doc_hashes, seed), kind="stable")
