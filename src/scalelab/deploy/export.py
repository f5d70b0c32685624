"""Export a trained run for use outside scalelab.

- Transformer: a Hugging Face directory (config.json, model.safetensors, generation_config.json, tokenizer.json,
  tokenizer_config.json naming PreTrainedTokenizerFast) that `AutoModelForCausalLM`, `AutoTokenizer` and
  `pipeline("text-generation")` load offline.
- n-gram: model.arpa (token ids as words), tokenizer.json, config.json and scalelab's own arrays (ngram.npz,
  ngram.json), which `scalelab generate` and `scalelab serve` read.
- LSTM: model.safetensors, config.json (`scalelab.models.lstm.LSTMConfig` plus the vocabulary size) and
  tokenizer.json; load it with `scalelab.deploy.export.load_lstm(directory)`.
Every export also holds a model card (README.md: Hugging Face front matter, then where the model came from and
how it scores) and a marker, .scalelab-export.json, naming the run and every file written. The directory is
written beside its destination and renamed into place. Export never deletes what it did not write: it takes a new
or empty directory, and replaces only a marked export holding nothing else, and only when forced.
"""

from __future__ import annotations

import json
from pathlib import Path

import tokenizers
import torch
import yaml
from tokenizers.processors import TemplateProcessing

from scalelab import __version__
from scalelab.data.store import TokenStore
from scalelab.data.tokenizer import EOD
from scalelab.errors import ConfigError
from scalelab.io import check_replaceable, publish_directory, read_json_object
from scalelab.train import checkpoint
from scalelab.train.config import TrainConfig
from scalelab.train.run import EVAL, build_model, finished_run_config

MARKER = ".scalelab-export.json"


def export_run(run_dir: Path, out: Path, *, force: bool = False) -> Path:
    """Export the run's final model (its best checkpoint when it converged) into `out`, a new or empty directory;
    with `force`, an earlier export there is replaced. Returns the absolute directory."""
    config = finished_run_config(run_dir)
    out = Path(out).resolve()  # `--out .` has no name to put a sibling beside, and a link must not be swapped
    run_dir = Path(run_dir).resolve()
    if out == run_dir or run_dir in out.parents:
        raise ConfigError(f"--out {out} is the run directory or inside it; export to a directory of its own")
    check_replaceable(out, MARKER, "export", force=force)
    outcome = read_json_object(run_dir / EVAL, "run result")
    store = TokenStore.open(config.data)

    def build(directory: Path) -> None:
        if config.family == "ngram":
            from scalelab.models.ngram import KneserNeyLM

            model = KneserNeyLM.load(run_dir / "model")
            model.to_arpa(directory / "model.arpa")
            model.save(directory)  # scalelab's own arrays too: `scalelab generate` and `serve` sample from them
            _write_config(directory, "ngram", store, order=model.order)
            _deployed_tokenizer(store).save(str(directory / "tokenizer.json"))
        else:
            model = build_model(config, store.tokenizer.vocab_size)
            checkpoint.load_weights(checkpoint.final(run_dir, config.regime == "converge"), model)
            (_export_transformer if config.family == "transformer" else _export_lstm)(model, config, store, directory)
        _write_card(directory, config, store, outcome)

    publish_directory(out, build, MARKER, {"scalelab_version": __version__, "run_id": outcome["run_id"],
                                           "family": outcome["family"], "run_dir": str(run_dir)})
    return out


def _export_transformer(model: torch.nn.Module, config, store: TokenStore, directory: Path) -> None:
    from transformers import GenerationConfig, PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one small local file: a bar would only clutter the output

    eod = store.tokenizer.eod_id
    # The end-of-document token starts, ends and pads every sequence: it is the only special token trained.
    model.config.bos_token_id = model.config.eos_token_id = model.config.pad_token_id = eod
    model.config.use_cache = True
    model.save_pretrained(directory, safe_serialization=True)
    # transformers 5 writes RoPE's period only under rope_parameters, which 4.x does not read: 4.x would load a
    # model with a non-default period silently wrong. 5.x keeps rope_parameters and drops the top-level key.
    hf_config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    hf_config["rope_theta"] = config.transformer.rope_theta
    (directory / "config.json").write_text(json.dumps(hf_config, indent=2), encoding="utf-8")
    # No max_length: generate() warns whenever a caller's max_new_tokens meets one. The context length is in
    # config.json (max_position_embeddings) and tokenizer_config.json (model_max_length).
    GenerationConfig(bos_token_id=eod, eos_token_id=eod, pad_token_id=eod).save_pretrained(directory)
    # split_special_tokens: a text that spells the end-of-document token stays text, as scalelab encodes it.
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=_deployed_tokenizer(store), bos_token=EOD, eos_token=EOD,
                                        pad_token=EOD, model_max_length=config.transformer.context_length,
                                        split_special_tokens=True)
    tokenizer.save_pretrained(directory)
    settings = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
    settings["tokenizer_class"] = "PreTrainedTokenizerFast"  # older transformers releases need the class named
    # What the post-processor does, said where transformers (which rebuilds the post-processor from it) and
    # lm-evaluation-harness look.
    settings["add_bos_token"], settings["add_eos_token"] = True, False
    # transformers 4.x would also return token_type_ids, which generate(**inputs) refuses for Llama.
    settings["model_input_names"] = ["input_ids", "attention_mask"]
    (directory / "tokenizer_config.json").write_text(json.dumps(settings, indent=2), encoding="utf-8")


def _export_lstm(model: torch.nn.Module, config, store: TokenStore, directory: Path) -> None:
    from safetensors.torch import save_model

    save_model(model, str(directory / "model.safetensors"))
    _write_config(directory, "lstm", store, **config.lstm.model_dump(mode="json"))
    _deployed_tokenizer(store).save(str(directory / "tokenizer.json"))


LOADING = {
    "transformer": """```python
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

model = AutoModelForCausalLM.from_pretrained("path/to/model")
tokenizer = AutoTokenizer.from_pretrained("path/to/model")
print(pipeline("text-generation", model="path/to/model")("def main():", max_new_tokens=40)[0]["generated_text"])
```""",
    "lstm": """```python
from scalelab.deploy.export import load_lstm

model = load_lstm("path/to/model")  # a torch module: token ids (batch, time) -> logits (batch, time, vocabulary)
```""",
    "ngram": """`model.arpa` is an ARPA file over token ids (the words are the ids `tokenizer.json` assigns),
which KenLM, SRILM or any ARPA reader loads.""",
}
CARD_TAGS = {"transformer": ["llama"], "lstm": [], "ngram": ["kneser-ney", "arpa"]}


def _write_card(directory: Path, config: TrainConfig, store: TokenStore, outcome: dict) -> None:
    """README.md: front matter for the Hugging Face Hub, then where the model came from and how it scores."""
    family = config.family
    front_matter = {"library_name": "transformers" if family == "transformer" else "scalelab",
                    "pipeline_tag": "text-generation", "tags": ["scalelab", family, *CARD_TAGS[family]]}
    size = f"order {config.ngram.order}" if family == "ngram" else config.model_config_for_family.size
    parameters = (f"{outcome['params']:,} n-grams" if family == "ngram" else
                  f"N = {outcome['N']:,} non-embedding parameters, {outcome['params']:,} in all")
    repeated = f", drawn by repeating the first {outcome['U']:,}" if outcome["U"] != outcome["D"] else ""
    scores = outcome["eval"]
    facts = [
        ("run id", f"`{outcome['run_id']}`"),
        ("family", family),
        ("size", f"{size} ({parameters})"),
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
        f"# A {family} trained on {outcome['D']:,} tokens by scalelab",
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
        LOADING[family],
        "",
        "`scalelab generate path/to/model --prompt TEXT` samples from it and `scalelab serve path/to/model` serves "
        "it with an OpenAI-compatible API.",
        "",
    ])
    (directory / "README.md").write_text(card, encoding="utf-8")


def _deployed_tokenizer(store: TokenStore) -> tokenizers.Tokenizer:
    """The dataset's tokenizer, with a post-processor that puts the end-of-document token before a text, as
    before every training document and as `scalelab generate` and `serve` read a prompt: so transformers, vLLM
    and lm-evaluation-harness, which encode with the tokenizer's special tokens, condition on a prompt alike."""
    hf = tokenizers.Tokenizer.from_str(store.tokenizer.hf.to_str())  # a copy: the dataset's stays as it was
    hf.post_processor = TemplateProcessing(single=f"{EOD} $A", pair=f"{EOD} $A {EOD} $B:1",
                                           special_tokens=[(EOD, store.tokenizer.eod_id)])
    return hf


def _write_config(directory: Path, family: str, store: TokenStore, **fields) -> None:
    document = {"family": family, "vocab_size": store.tokenizer.vocab_size, "eod_id": store.tokenizer.eod_id,
                **fields}
    (directory / "config.json").write_text(json.dumps(document, indent=2), encoding="utf-8")


def load_lstm(directory: Path) -> torch.nn.Module:
    """The LSTM of an exported directory, in eval mode."""
    from safetensors.torch import load_model

    from scalelab.models.lstm import LSTMConfig, build_lstm

    document = json.loads((Path(directory) / "config.json").read_text(encoding="utf-8"))
    vocab_size = document.pop("vocab_size")
    document.pop("family")
    document.pop("eod_id")
    model = build_lstm(LSTMConfig.model_validate(document), vocab_size)
    load_model(model, str(Path(directory) / "model.safetensors"))
    return model.eval()
