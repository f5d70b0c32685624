"""The human summary of a prepared dataset, built from its manifest alone."""

from __future__ import annotations

from typing import Any

from rich.table import Table


def _mb(n: float) -> str:
    return f"{n / 1e6:,.2f} MB"


def summary_tables(manifest: dict[str, Any]) -> list[Table]:
    stats = manifest["stats"]
    seconds = stats["seconds"]
    tok = manifest["tokenizer"]

    funnel = Table(title="Documents", show_header=True, header_style="bold")
    funnel.add_column("step")
    funnel.add_column("documents", justify="right")
    funnel.add_column("detail")
    sources = ", ".join(f"{s['name']} ({s['type']})" for s in manifest["sources"])
    funnel.add_row("read", f"{stats['documents_read']:,}", f"{_mb(stats['bytes_read'])} from {sources}")
    for reason, count in sorted(stats["skipped"].items()):
        example = (stats.get("skipped_examples", {}).get(reason) or [""])[0]
        funnel.add_row(f"skipped: {reason}", f"{count:,}", example)
    funnel.add_row("kept", f"{stats['documents_kept']:,}",
                   f"{stats['invalid_bytes_replaced']:,} invalid bytes replaced, "
                   f"{stats['control_chars_removed']:,} control characters removed")

    splits = Table(title=f"Splits ({tok['kind']} tokenizer, vocabulary {tok['vocab_size']:,})",
                   header_style="bold")
    for column in ("split", "documents", "bytes", "tokens", "bytes/token"):
        splits.add_column(column, justify="left" if column == "split" else "right")
    named = [(f"train ({v})", info) for v, info in manifest["train"].items()]
    named += list(manifest["held_out"].items())
    for name, info in named:
        bpt = info["bytes_per_token"]
        splits.add_row(name, f"{info['documents']:,}", _mb(info["bytes"]), f"{info['tokens']:,}",
                       f"{bpt:.3f}" if bpt else "-")

    timing = Table(title="Time", header_style="bold")
    timing.add_column("step")
    timing.add_column("seconds", justify="right")
    for step, value in seconds.items():
        timing.add_row(step, f"{value:.1f}")
    total = seconds.get("total") or 0
    if total:
        timing.add_row("throughput", f"{stats['bytes_read'] / 1e6 / total:.2f} MB/s "
                                     f"({stats.get('workers', 1)} worker(s))")
    return [funnel, splits, timing]
