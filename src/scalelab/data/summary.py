"""Human-readable tables of a prepared dataset, built from its manifest (and, for metrics, a data report)."""

from __future__ import annotations

from typing import Any

from rich.table import Table


def _mb(n: float) -> str:
    return f"{n / 1e6:,.2f} MB"


def funnel_table(manifest: dict[str, Any]) -> Table:
    """read -> skipped -> cleaned -> dropped by each filter rule -> removed by deduplication -> kept per split."""
    stats, funnel = manifest["stats"], manifest["funnel"]
    table = Table(title="Documents: the funnel", header_style="bold")
    table.add_column("step")
    table.add_column("documents", justify="right")
    table.add_column("detail")
    sources = ", ".join(f"{s['name']} ({s['type']})" for s in manifest["sources"])
    table.add_row("read", f"{funnel['read']:,}", f"{_mb(stats['bytes_read'])} from {sources}")
    for reason, count in sorted(funnel["skipped"].items()):
        example = (stats["skipped_examples"].get(reason) or [""])[0]
        table.add_row(f"  skipped: {reason}", f"-{count:,}", example)
    table.add_row("cleaned", f"{funnel['cleaned']:,}",
                  f"{stats['invalid_bytes_replaced']:,} invalid bytes replaced, "
                  f"{stats['control_chars_removed']:,} control characters removed")
    for reason, info in funnel["filtered"].items():
        table.add_row(f"  filter {reason}", f"{info['documents']:,}",
                      f"{_mb(info['bytes'])}, kept in raw variants only")
    for rule, count in funnel.get("decontamination", {}).items():
        table.add_row(f"  contaminated: {rule}", f"{count:,}", "held-out documents the rule flags")
    for step, count in funnel["removed"].items():
        table.add_row(f"  removed: {step}", f"-{count:,}", "")
    for name, info in _views(manifest):
        table.add_row(f"kept: {name}", f"{info['documents']:,}", _mb(info["bytes"]))
    return table


def _views(manifest: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    named = [(f"train ({variant})", info) for variant, info in manifest["train"].items()]
    return named + list(manifest["held_out"].items())


def splits_table(manifest: dict[str, Any]) -> Table:
    tok = manifest["tokenizer"]
    table = Table(title=f"Splits ({tok['kind']} tokenizer, vocabulary {tok['vocab_size']:,})", header_style="bold")
    for column in ("split", "documents", "bytes", "tokens", "bytes/token"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for name, info in _views(manifest):
        bpt = info["bytes_per_token"]
        table.add_row(name, f"{info['documents']:,}", _mb(info["bytes"]), f"{info['tokens']:,}",
                      f"{bpt:.3f}" if bpt else "-")
    return table


def timing_table(manifest: dict[str, Any]) -> Table:
    stats = manifest["stats"]
    seconds = stats["seconds"]
    table = Table(title="Time", header_style="bold")
    table.add_column("step")
    table.add_column("seconds", justify="right")
    for step, value in seconds.items():
        table.add_row(step, f"{value:.1f}")
    if seconds.get("total"):
        table.add_row("throughput", f"{stats['bytes_read'] / 1e6 / seconds['total']:.2f} MB/s "
                                    f"({stats['workers']} worker{'s' if stats['workers'] > 1 else ''})")
    return table


def summary_tables(manifest: dict[str, Any]) -> list[Table]:
    return [funnel_table(manifest), splits_table(manifest), timing_table(manifest)]


def examples_table(manifest: dict[str, Any]) -> Table:
    table = Table(title="Examples dropped by each filter rule, and held-out documents overlapping train",
                  header_style="bold", show_lines=True)
    table.add_column("rule")
    table.add_column("document")
    table.add_column("excerpt", overflow="fold")
    for reason, examples in manifest["stats"]["filtered_examples"].items():
        for example in examples:
            table.add_row(reason, example["id"], example["excerpt"].replace("\n", "⏎ ")[:160])
    ngram = manifest["config"].get("decontaminate", {}).get("ngram")
    for example in manifest["stats"].get("contamination_examples", []):
        overlap = f" with train {example['train_id']}" if example["train_id"] else ""
        table.add_row(f"{ngram}-gram overlap ({example['split']})", example["id"],
                      f"{example['covered']:.1%} of its words in n-grams shared{overlap}")
    return table


METRIC_COLUMNS = [("tokens_measured", "tokens", "{:,}"), ("distinct_1", "distinct-1", "{:.4f}"),
                  ("distinct_2", "distinct-2", "{:.4f}"), ("distinct_3", "distinct-3", "{:.4f}"),
                  ("distinct_4", "distinct-4", "{:.4f}"), ("entropy_bits", "entropy (bits)", "{:.3f}"),
                  ("compression_ratio", "zstd ratio", "{:.2f}"), ("heaps_beta", "Heaps β", "{:.3f}"),
                  ("duplicates_exact", "exact dup", "{:.2%}"), ("duplicates_near", "near dup", "{:.2%}")]


def metrics_table(metrics: dict[str, dict[str, Any]]) -> Table:
    """One column per view, so the variants sit side by side."""
    table = Table(title="Diversity and quality metrics", header_style="bold")
    table.add_column("metric")
    for view in metrics:
        table.add_column(view, justify="right")
    for key, title, fmt in METRIC_COLUMNS:
        table.add_row(title, *(fmt.format(v[key]) if v.get(key) is not None else "-" for v in metrics.values()))
    return table


def mixture_table(metrics: dict[str, dict[str, Any]]) -> Table:
    table = Table(title="Mixture by source (share of tokens)", header_style="bold")
    table.add_column("view")
    sources = sorted({source for values in metrics.values() for source in values["mixture"]})
    for source in sources:
        table.add_column(source, justify="right")
    for view, values in metrics.items():
        table.add_row(view, *(f"{values['mixture'].get(s, {}).get('token_share', 0):.1%}" for s in sources))
    return table
