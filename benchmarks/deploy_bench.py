"""What the deployment benchmarks share: the demo study's trained models they measure, the prompt, and how the
results are written."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

FAMILIES = ("transformer", "lstm", "ngram")
PROMPT_SNIPPET = ('def read_config(path):\n    """Return the settings in path as a dict."""\n'
                  '    with open(path) as f:\n        return json.load(f)\n')
PROMPT_TOKENS = 16
EOD_BIAS = -100.0  # on the end-of-document token's logit, so every generation runs to full length


def add_runs_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--runs", type=Path, default=Path("studies-out/demo/runs"),
                        help=f"A study's runs directory; {what}.")


def write_results(report: dict[str, Any], out: Path) -> None:
    print(f"\n{report['total_seconds']:.0f} s in all")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


def prompt_ids(tokenizer) -> list[int]:
    return tokenizer.encode(PROMPT_SNIPPET)[:PROMPT_TOKENS]


def demo_runs(runs_dir: Path, families: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """find_runs, or an exit telling the user to run the demo first."""
    if not runs_dir.is_dir():
        raise SystemExit(f"{runs_dir} does not exist: run `make demo` first (or pass --runs DIR)")
    runs = find_runs(runs_dir, families)
    if missing := [family for family in families if family not in runs]:
        raise SystemExit(f"no finished {' or '.join(missing)} run under {runs_dir}: run `make demo` first")
    return runs


def find_runs(runs_dir: Path, families: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """family -> the finished run under runs_dir with the most training tokens (a tie: the raw variant, then the
    larger run id): {"path", "run_id", "tokens", "variant", "model"}."""
    best: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {}
    for config_path in sorted(runs_dir.glob("*/config.yaml")):
        if not (config_path.parent / "eval.json").is_file():
            continue  # unfinished
        config = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
        family = config.get("family")
        if family not in families:
            continue
        section = config.get(family) or {}
        run = {"path": str(config_path.parent), "run_id": config_path.parent.name, "tokens": int(config["tokens"]),
               "variant": config.get("variant"),
               "model": f"order {section.get('order')}" if family == "ngram" else
               f"{section.get('size')}, context {section.get('context_length')}"}
        key = (run["tokens"], run["variant"] == "raw", run["run_id"])
        if family not in best or key > best[family][0]:
            best[family] = (key, run)
    return {family: best[family][1] for family in families if family in best}
