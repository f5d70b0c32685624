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
other variant — so no variant has seen a held-out document; and then every held-out document whose words are
covered by n-grams it shares with train documents beyond a threshold (contamination.py), unless the
decontamination action is `cut`, which removes those train documents from every variant instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from scalelab.data import contamination
from scalelab.data.contamination import DecontaminateConfig
from scalelab.data.dedup import DedupConfig, LSHIndex, exact_labels, near_duplicate_labels, survivors
from scalelab.data.split import HELD_OUT, SPLITS, SplitName, mix64_array
from scalelab.data.staging import StagingArea
from scalelab.data.store import TokenStore
from scalelab.errors import DataError

VariantName = Literal["raw", "filtered", "dedup", "filtered+dedup"]
VARIANTS: tuple[VariantName, ...] = ("raw", "filtered", "dedup", "filtered+dedup")
TextChoice = Literal["original", "clean"]
_READ_CHUNK = 1000


def text_of(variant: VariantName) -> TextChoice:
    return "clean" if variant.startswith("filtered") else "original"


@dataclass
class Selection:
    """Boolean masks over each split's staged documents, and what removed the rest."""

    train: dict[str, np.ndarray]
    held_out: dict[SplitName, np.ndarray]
    removed: dict[str, int] = field(default_factory=dict)
    reference_matches: list[dict[str, Any]] = field(default_factory=list)
    decontamination: dict[str, Any] = field(default_factory=dict)


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


def select(staging: StagingArea, variants: list[VariantName], config: DedupConfig,
           decontaminate: DecontaminateConfig, shuffle_seed: int, filtering: bool) -> Selection:
    hashes = {s: staging.hashes(s) for s in SPLITS}
    bands = {s: staging.bands(s) for s in SPLITS}
    priority = {s: mix64_array(hashes[s], shuffle_seed) for s in SPLITS}
    passed = {s: staging.passed(s) if filtering else np.ones(hashes[s].shape[0], dtype=bool) for s in SPLITS}
    removed: dict[str, int] = {}

    reference_keep, matches = _reference_masks(staging, hashes, bands, config)
    for split in SPLITS:
        removed[f"{split}: duplicate of a reference dataset"] = int((~reference_keep[split]).sum())

    held_out, cut, report = _held_out_masks(staging, hashes, bands, priority, passed, reference_keep, config,
                                            decontaminate, removed)
    removed["train: shares passages with a held-out document"] = int((reference_keep["train"] & cut).sum())
    train_base = reference_keep["train"] & ~cut
    train: dict[str, np.ndarray] = {}
    for variant in variants:
        base = train_base & passed["train"] if variant.startswith("filtered") else train_base
        deduplicate = variant.endswith("dedup") and (config.exact or config.near)
        train[variant] = (_dedup_within(base, hashes["train"], bands["train"], priority["train"], config)
                          if deduplicate else base)
        if deduplicate:
            removed[f"train ({variant}): duplicates"] = int(base.sum() - train[variant].sum())
    return Selection(train, held_out, {k: v for k, v in removed.items() if v}, matches, report)


def _held_out_masks(staging: StagingArea, hashes, bands, priority, passed, reference_keep, config: DedupConfig,
                    decontaminate: DecontaminateConfig,
                    removed: dict[str, int]) -> tuple[dict[SplitName, np.ndarray], np.ndarray, dict[str, Any]]:
    """Filter, deduplicate (validation and test together) and decontaminate the held-out splits; also the train
    documents to cut, and how many documents each decontamination rule flags, with examples."""
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
    near = LSHIndex.build(bands["train"], hashes["train"]).query(joined_bands, joined_hashes) >= 0
    chosen = {s: np.flatnonzero(m) for s, m in zip(names, np.split(keep, np.cumsum(sizes)[:-1]), strict=True)}
    overlaps = _overlaps(staging, chosen, ~near[keep], decontaminate)
    leaked = np.zeros_like(keep)
    leaked[keep] = overlaps.flags
    report = {"flagged": {"near duplicate (MinHash)": int((keep & near).sum()),
                          f"{decontaminate.ngram}-gram overlap": int(leaked.sum()),
                          "both": int((leaked & near).sum())},
              "documents": overlaps.flagged}
    removed["held-out: duplicate of a train document"] = int((keep & near).sum())
    keep &= ~near
    if decontaminate.action == "drop":
        removed["held-out: n-gram overlap with train"] = int((keep & leaked).sum())
        keep &= ~leaked
    return dict(zip(names, np.split(keep, np.cumsum(sizes)[:-1]), strict=True)), overlaps.cut, report


def held_out_texts(staging: StagingArea, chosen: dict[SplitName, np.ndarray]) -> Iterator[str]:
    """Held-out texts as the held-out splits store them (after the filters' line edits), read in chunks."""
    for split, indices in chosen.items():
        for start in range(0, indices.size, _READ_CHUNK):
            yield from (doc.clean_text for doc in staging.read(split, indices[start:start + _READ_CHUNK]))


@dataclass
class Overlaps:
    flags: np.ndarray  # per held-out document examined: contaminated
    cut: np.ndarray  # per staged train document: to cut (action `cut` only)
    flagged: list[dict[str, Any]]  # each contaminated document, largest covered share first


def _overlaps(staging: StagingArea, chosen: dict[SplitName, np.ndarray], kept: np.ndarray,
              config: DecontaminateConfig) -> Overlaps:
    """N-gram containment of these held-out documents in the train split: per document, whether it is flagged;
    which train documents to cut (when the action is `cut`, for flagged documents `kept` keeps in the held-out
    set); each flagged document with its covered share and the train document it overlaps most."""
    train_count = staging.hashes("train").shape[0]
    everything = np.ones(train_count, dtype=bool)
    grams = contamination.held_out_grams(held_out_texts(staging, chosen), config)
    counts = contamination.count_train(grams, staging.iter_texts("train", everything), config)
    leaked = contamination.matched(counts, config)
    shares = contamination.covered_shares(grams, leaked, config.ngram)
    flags = shares > config.threshold
    cut = np.zeros(train_count, dtype=bool)
    if config.action == "cut" and (flags & kept).any():
        dirty = np.zeros(grams.unique.size, dtype=bool)
        owners = np.repeat(np.arange(flags.size), grams.grams)
        dirty[grams.index[(flags & kept)[owners]]] = True
        cut = contamination.overlapping_train(grams.unique[dirty & leaked],
                                              staging.iter_texts("train", everything), config.ngram)
    places = [(split, int(index)) for split, indices in chosen.items() for index in indices]
    starts = grams.starts
    flagged = [_flagged(staging, places[doc], int(starts[doc]), grams, counts, leaked, shares, int(doc))
               for doc in np.argsort(-shares, kind="stable") if flags[doc]]
    return Overlaps(flags, cut, flagged)


def _flagged(staging: StagingArea, place: tuple[SplitName, int], start: int, grams: contamination.HeldOutGrams,
             counts: contamination.TrainCounts, leaked: np.ndarray, shares: np.ndarray, doc: int) -> dict[str, Any]:
    split, index = place
    source = contamination.main_source(grams, start, counts, leaked, doc)
    return {"split": split, "id": staging.read(split, np.array([index]))[0].id,
            "covered": round(float(shares[doc]), 4),
            "train_id": staging.read("train", np.array([source]))[0].id if source >= 0 else None}


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
