"""Which staged documents go into each train variant and each held-out split.

Train variants share one tokenizer and one held-out set, so their losses compare on identical bytes:
- `raw`: every cleaned train document;
- `filtered`: those that pass the quality filters (with the filters' line edits applied);
- `dedup`: raw with exact and near duplicates removed;
- `filtered+dedup`: filtered, then deduplicated.
Within a duplicate cluster the member that comes first in training order survives, so a deduplicated variant
keeps the first appearance a model would have seen anyway, and the choice never depends on input order.

The held-out splits are clean: documents failing the filters are dropped, then duplicates within the held-out
set, then every held-out document with an exact or near duplicate in the raw train split — which contains every
other variant — so no variant has seen a held-out document.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from scalelab.data.dedup import DedupConfig, LSHIndex, exact_labels, near_duplicate_labels, survivors
from scalelab.data.split import HELD_OUT, SPLITS, SplitName, mix64_array
from scalelab.data.staging import StagingArea
from scalelab.data.store import TokenStore
from scalelab.errors import DataError

VariantName = Literal["raw", "filtered", "dedup", "filtered+dedup"]
VARIANTS: tuple[VariantName, ...] = ("raw", "filtered", "dedup", "filtered+dedup")
TextChoice = Literal["original", "clean"]


def text_of(variant: VariantName) -> TextChoice:
    return "clean" if variant.startswith("filtered") else "original"


@dataclass
class Selection:
    """Boolean masks over each split's staged documents, and what removed the rest."""

    train: dict[str, np.ndarray]
    held_out: dict[SplitName, np.ndarray]
    removed: dict[str, int] = field(default_factory=dict)
    reference_matches: list[dict[str, Any]] = field(default_factory=list)


def dedup_mask(hashes: np.ndarray, bands: np.ndarray, priority: np.ndarray, config: DedupConfig) -> np.ndarray:
    keep = np.ones(hashes.shape[0], dtype=bool)
    if config.exact:
        keep &= survivors(exact_labels(hashes), priority, config.mode)
    if config.near:
        keep &= survivors(near_duplicate_labels(bands), priority, config.mode)
    return keep


def _dedup_within(mask: np.ndarray, hashes: np.ndarray, bands: np.ndarray, priority: np.ndarray,
                  config: DedupConfig) -> np.ndarray:
    """`mask` narrowed to the survivors of deduplicating the documents it selects."""
    chosen = np.flatnonzero(mask)
    result = np.zeros_like(mask)
    result[chosen[dedup_mask(hashes[chosen], bands[chosen], priority[chosen], config)]] = True
    return result


def select(staging: StagingArea, variants: list[VariantName], config: DedupConfig, shuffle_seed: int,
           filtering: bool) -> Selection:
    hashes = {s: staging.hashes(s) for s in SPLITS}
    bands = {s: staging.bands(s) for s in SPLITS}
    priority = {s: mix64_array(hashes[s], shuffle_seed) for s in SPLITS}
    passed = {s: staging.passed(s) if filtering else np.ones(hashes[s].shape[0], dtype=bool) for s in SPLITS}
    removed: dict[str, int] = {}

    reference_keep, matches = _reference_masks(staging, hashes, bands, config)
    for split in SPLITS:
        removed[f"{split}: duplicate of a reference dataset"] = int((~reference_keep[split]).sum())

    train_base = reference_keep["train"]
    train: dict[str, np.ndarray] = {}
    for variant in variants:
        base = train_base & passed["train"] if variant.startswith("filtered") else train_base
        deduplicate = variant.endswith("dedup") and (config.exact or config.near)
        train[variant] = (_dedup_within(base, hashes["train"], bands["train"], priority["train"], config)
                          if deduplicate else base)
        if deduplicate:
            removed[f"train ({variant}): duplicates"] = int(base.sum() - train[variant].sum())

    held_out = _held_out_masks(hashes, bands, priority, passed, reference_keep, config, removed)
    return Selection(train, held_out, {k: v for k, v in removed.items() if v}, matches)


def _held_out_masks(hashes, bands, priority, passed, reference_keep, config: DedupConfig,
                    removed: dict[str, int]) -> dict[SplitName, np.ndarray]:
    """Filter, deduplicate (validation and test together) and decontaminate the held-out splits."""
    names = list(HELD_OUT)
    sizes = [hashes[s].shape[0] for s in names]
    joined_hashes = np.concatenate([hashes[s] for s in names])
    joined_bands = np.concatenate([bands[s] for s in names])
    joined_priority = np.concatenate([priority[s] for s in names])
    base = np.concatenate([passed[s] & reference_keep[s] for s in names])
    removed["held-out: failed filters"] = int((~np.concatenate([passed[s] for s in names])).sum())
    keep = _dedup_within(base, joined_hashes, joined_bands, joined_priority, config)
    removed["held-out: duplicates within held-out"] = int(base.sum() - keep.sum())
    # Decontamination is not optional: both exact and near matches, whatever the variants' dedup settings.
    contaminated = LSHIndex.build(bands["train"], hashes["train"]).query(joined_bands, joined_hashes) >= 0
    removed["held-out: duplicate of a train document"] = int((keep & contaminated).sum())
    keep &= ~contaminated
    return dict(zip(names, np.split(keep, np.cumsum(sizes)[:-1]), strict=True))


def _reference_masks(staging: StagingArea, hashes, bands, config: DedupConfig):
    keep = {s: np.ones(hashes[s].shape[0], dtype=bool) for s in SPLITS}
    matches: list[dict[str, Any]] = []
    for path in config.reference:
        reference = TokenStore.open(path)
        theirs = {k: v for k, v in reference.manifest["minhash"].items() if k != "description"}
        if theirs != config.minhash.model_dump(mode="json"):
            raise DataError(f"reference dataset {path} was hashed with other MinHash settings ({theirs}); "
                            "its band hashes cannot be compared with these")
        views = [reference.split(name) for name in HELD_OUT] + [reference.train(v) for v in reference.variants]
        index = LSHIndex.build(np.concatenate([v.lsh_bands() for v in views]),
                               np.concatenate([v.doc_hashes() for v in views]))
        owners = [(view, record) for view in views for record in view.doc_records()]
        for split in SPLITS:
            hits = index.query(bands[split], hashes[split])
            found = np.flatnonzero(hits >= 0)
            keep[split][found] = False
            for doc, hit in zip(staging.read(split, found), hits[found], strict=True):
                view, record = owners[hit]
                matches.append({"split": split, "id": doc.id, "reference": str(path),
                                "reference_split": view.name, "reference_id": record["id"]})
    return keep, matches
