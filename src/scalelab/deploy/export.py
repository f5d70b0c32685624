"""Export a trained run for use outside scalelab.

- Transformer: a Hugging Face directory (config.json, model.safetensors, generation_config.json, tokenizer.json,
  tokenizer_config.json naming PreTrainedTokenizerFast) that `AutoModelForCausalLM`, `AutoTokenizer` and
  `pipeline("text-generation")` load offline.
- n-gram: model.arpa (token ids as words), tokenizer.json, config.json and scalelab's own arrays (ngram.npz,
  ngram.json), which `scalelab generate` and `scalelab serve` read.
- LSTM: model.safetensors, config.json (`scalelab.models.lstm.LSTMConfig` plus the vocabulary size) and
  tokenizer.json; load it with `scalelab.families.lstm.load_lstm(directory)`.
What each family writes is its adapter's (`ModelFamily.export`); the card and the marker are written here.
Every export also holds a model card (README.md: Hugging Face front matter, then where the model came from and
how it scores) and a marker, .scalelab-export.json, naming the run and every file written. The directory is
written beside its destination and renamed into place. Export never deletes what it did not write: it takes a new
or empty directory, and replaces only a marked export holding nothing else, and only when forced.
"""

from __future__ import annotations

import json
from pathlib import Path

import tokenizers
import yaml
from tokenizers.processors import TemplateProcessing

from scalelab import __version__
from scalelab.data.store import TokenStore
from scalelab.data.tokenizer import EOD
from scalelab.errors import ConfigError
from scalelab.io import check_replaceable, publish_directory
from scalelab.models.registry import family
from scalelab.train.config import TrainConfig
from scalelab.train.rundir import RunDir

MARKER = ".scalelab-export.json"


def export_run(run_dir: Path, out: Path, *, force: bool = False) -> Path:
    """Export the run's final model (its best checkpoint when it converged) into `out`, a new or empty directory;
    with `force`, an earlier export there is replaced. Returns the absolute directory."""
    run = RunDir(run_dir)
    config = run.finished_config()
    out = Path(out).resolve()  # `--out .` has no name to put a sibling beside, and a link must not be swapped
    run_dir = run.path.resolve()
    if out == run_dir or run_dir in out.parents:
        raise ConfigError(f"--out {out} is the run directory or inside it; export to a directory of its own")
    check_replaceable(out, MARKER, "export", force=force)
    outcome = run.result()
    store = TokenStore.open(config.data)
    adapter = family(config.family)

    def build(directory: Path) -> None:
        adapter.export(adapter.load_trained(run, config, store.tokenizer.vocab_size), config, store, directory)
        _write_card(directory, config, store, outcome)

    publish_directory(out, build, MARKER, {"scalelab_version": __version__, "run_id": outcome["run_id"],
                                           "family": outcome["family"], "run_dir": str(run_dir)})
    return out


def _write_card(directory: Path, config: TrainConfig, store: TokenStore, outcome: dict) -> None:
    """README.md: front matter for the Hugging Face Hub, then where the model came from and how it scores."""
    adapter = family(config.family)
    front_matter = {"library_name": adapter.card_library, "pipeline_tag": "text-generation",
                    "tags": ["scalelab", adapter.name, *adapter.card_tags]}
    repeated = f", drawn by repeating the first {outcome['U']:,}" if outcome["U"] != outcome["D"] else ""
    scores = outcome["eval"]
    facts = [
        ("run id", f"`{outcome['run_id']}`"),
        ("family", adapter.name),
        ("size", f"{adapter.size_label(config.model)} ({adapter.parameters(outcome)})"),
        ("dataset", f"`{store.path}`, fingerprint `{store.fingerprint}`"),
        ("training data", f"D = {outcome['D']:,} tokens of variant `{outcome['variant']}`{repeated} "
                          f"(subset fingerprint `{outcome['data_fingerprint']}`)"),
        ("held-out score", f"{scores['bits_per_byte']:.4f} bits per byte; loss {scores['nll']:.4f} nats per token "
                           f"(perplexity {scores['perplexity']:.2f}) on {scores['tokens']:,} tokens of the "
                           f"{scores['split']} split"),
        ("written by", f"scalelab {__version__}"),
    ]
    card = "\n".join([
        f"---\n{yaml.safe_dump(front_matter, sort_keys=False)}---",
        f"# A {adapter.name} trained on {outcome['D']:,} tokens by scalelab",
        "",
        "One run of a data-scaling study: trained on a nested subset of a prepared dataset and scored on its "
        "held-out bytes.",
        "",
        "| | |",
        "|---|---|",
        *(f"| {name} | {value} |" for name, value in facts),
        "",
        "## How to load it",
        "",
        adapter.card_loading,
        "",
        "`scalelab generate path/to/model --prompt TEXT` samples from it and `scalelab serve path/to/model` serves "
        "it with an OpenAI-compatible API.",
        "",
    ])
    (directory / "README.md").write_text(card, encoding="utf-8")


def deployed_tokenizer(store: TokenStore) -> tokenizers.Tokenizer:
    """The dataset's tokenizer, with a post-processor that puts the end-of-document token before a text, as
    before every training document and as `scalelab generate` and `serve` read a prompt: so transformers, vLLM
    and lm-evaluation-harness, which encode with the tokenizer's special tokens, condition on a prompt alike."""
    hf = tokenizers.Tokenizer.from_str(store.tokenizer.hf.to_str())  # a copy: the dataset's stays as it was
    hf.post_processor = TemplateProcessing(single=f"{EOD} $A", pair=f"{EOD} $A {EOD} $B:1",
                                           special_tokens=[(EOD, store.tokenizer.eod_id)])
    return hf


def write_config(directory: Path, name: str, store: TokenStore, **fields) -> None:
    document = {"family": name, "vocab_size": store.tokenizer.vocab_size, "eod_id": store.tokenizer.eod_id,
                **fields}
    (directory / "config.json").write_text(json.dumps(document, indent=2), encoding="utf-8")
