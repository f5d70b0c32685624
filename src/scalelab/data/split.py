"""Held-out splits chosen by content, not position.

Each document's hash, mixed with the split seed, gives it a position in [0, 1): validation takes [0, v), test
[v, v + t), train the rest. The fractions v and t are resolved once per corpus (see `resolve_fractions`) and
recorded in the manifest; a document's split is then a function of its content hash and that resolved config,
so with the resolved config fixed (pass its fractions with `min_tokens: 0`), adding documents never moves
another across splits, and identical documents always share a split. The same hash, mixed with a seed, orders
documents within a split, so the order is stable as a corpus grows.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from scalelab.config import StrictModel

SplitName = Literal["train", "validation", "test"]
HELD_OUT: tuple[SplitName, ...] = ("validation", "test")
SPLITS: tuple[SplitName, ...] = ("train", "validation", "test")
_MASK = (1 << 64) - 1
# Resolved fractions are rounded up to this step, so the manifest records short numbers.
_FRACTION_STEP = 1e-4


class SplitConfig(StrictModel):
    """Fractions of documents held out, chosen by a hash of their content, and the least each must hold."""

    validation: float = Field(0.05, ge=0.0, lt=1.0, description="Fraction of documents for validation "
                                                                "(at least; see min_tokens).")
    test: float = Field(0.05, ge=0.0, lt=1.0, description="Fraction of documents for test (at least).")
    min_tokens: int = Field(200_000, ge=0, description="Each held-out split is widened until it holds this many "
                                                       "tokens after deduplication and decontamination, ...")
    max_fraction: float = Field(0.10, gt=0.0, lt=0.5, description="... but never past this fraction.")
    seed: int = Field(0, ge=0, description="Changes which documents are held out.")

    @model_validator(mode="after")
    def _leave_training_data(self) -> SplitConfig:
        widest = self.widest()
        if widest.validation + widest.test >= 1.0:
            raise ValueError(f"validation + test, each widened to max_fraction when min_tokens is set, must be "
                             f"below 1 (got {widest.validation + widest.test:g})")
        return self

    def widest(self) -> SplitConfig:
        """The largest fractions resolution can give: every document outside them is train whatever the corpus.

        A fraction of 0 asks for no such split and stays 0."""
        if not self.min_tokens:
            return self
        return self.model_copy(update={name: max(getattr(self, name), self.max_fraction) if getattr(self, name)
                                       else 0.0 for name in HELD_OUT})

    def resolved(self, validation: float, test: float) -> SplitConfig:
        """These fractions, fixed: the config that reproduces a resolved split on any corpus."""
        return self.model_copy(update={"validation": validation, "test": test, "min_tokens": 0})


def resolve_fractions(config: SplitConfig, positions: np.ndarray, tokens: np.ndarray) -> SplitConfig:
    """The narrowest fractions, at least the configured ones and at most `max_fraction`, that give each held-out
    split `min_tokens`, from the positions and token counts of the documents a held-out split would keep
    (discarded documents count 0 tokens). Validation is resolved first, then test starts where it ends."""
    if config.widest() == config:
        return config.resolved(config.validation, config.test)
    order = np.argsort(positions, kind="stable")
    positions, cumulative = positions[order], np.cumsum(tokens[order])
    validation = _fraction(config.validation, 0.0, positions, cumulative, config)
    test = _fraction(config.test, validation, positions, cumulative, config)
    return config.resolved(validation, test)


def _fraction(wanted: float, start: float, positions: np.ndarray, cumulative: np.ndarray,
              config: SplitConfig) -> float:
    if not wanted:
        return 0.0
    first = int(np.searchsorted(positions, start))
    before = cumulative[first - 1] if first else 0
    reach = int(np.searchsorted(cumulative, before + config.min_tokens))
    if reach == positions.size:
        return max(wanted, config.max_fraction)
    # One step past the document that reaches min_tokens, so that it falls inside.
    needed = (math.floor((positions[reach] - start) / _FRACTION_STEP) + 1) * _FRACTION_STEP
    return round(max(wanted, min(needed, config.max_fraction)), 6)


def position(doc_hash: int, seed: int) -> float:
    """Where a document falls in [0, 1) for the split rule."""
    return mix64(doc_hash, seed + 1) / 2.0**64


def positions(doc_hashes: np.ndarray, seed: int) -> np.ndarray:
    """Vectorised `position` (as float64, so only a rule's boundaries are compared through it)."""
    return mix64_array(doc_hashes, seed + 1).astype(np.float64) / 2.0**64


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
    where = position(doc_hash, config.seed)
    if where < config.validation:
        return "validation"
    if where < config.validation + config.test:
        return "test"
    return "train"


def shuffle_order(doc_hashes: np.ndarray, seed: int) -> np.ndarray:
    """A permutation of documents, seeded and stable: each document's place depends on its content only."""
    return np.argsort(mix64_array(doc_hashes, seed), kind="stable")
