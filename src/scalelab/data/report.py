"""The data report: what preparation kept and dropped, and how diverse each variant is."""

from __future__ import annotations

from typing import Any

from scalelab.data.dedup import near_duplicate_labels
from scalelab.data.metrics import split_metrics
from scalelab.data.store import TokenSplit, TokenStore


def _near_labels(view: TokenSplit, max_tokens: int):
    measured = view.subset(min(max_tokens, view.n_tokens)) if view.n_tokens else view
    return near_duplicate_labels(measured.lsh_bands())


def data_report(store: TokenStore, max_tokens: int = 5_000_000) -> dict[str, Any]:
    """Funnel, dropped examples and per-variant metrics (each on its first `max_tokens` tokens), JSON-ready."""
    views = {f"train ({v})": store.train(v) for v in store.variants}
    views.update({name: store.split(name) for name in store.manifest["held_out"]})
    metrics = {name: split_metrics(view, store.tokenizer, max_tokens=max_tokens,
                                   near_labels=_near_labels(view, max_tokens))
               for name, view in views.items() if view.n_tokens}
    manifest = store.manifest
    return {
        "dataset": str(store.path),
        "fingerprint": store.fingerprint,
        "funnel": manifest["funnel"],
        "skipped_examples": manifest["stats"]["skipped_examples"],
        "filtered_examples": manifest["stats"]["filtered_examples"],
        "contamination_examples": manifest["stats"].get("contamination_examples", []),
        "split": manifest.get("split"),
        "minhash": manifest["minhash"]["description"],
        "views": {name: {k: v for k, v in info.items() if k != "fingerprint"}
                  for name, info in [(f"train ({v})", i) for v, i in manifest["train"].items()]
                  + list(manifest["held_out"].items())},
        "metrics": metrics,
        "max_tokens": max_tokens,
    }
