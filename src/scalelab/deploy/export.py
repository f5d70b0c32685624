"""Export a trained run for use outside scalelab.

- Transformer: a Hugging Face directory (config.json, model.safetensors, generation_config.json, tokenizer.json,
  tokenizer_config.json naming PreTrainedTokenizerFast) that `AutoModelForCausalLM`, `AutoTokenizer` and
  `pipeline("text-generation")` load offline.
- n-gram: model.arpa (token ids as words), tokenizer.json, config.json and scalelab's own arrays (ngram.npz,
  ngram.json), which `scalelab generate` and `scalelab serve` read.
- LSTM: model.safetensors, config.json (`scalelab.models.lstm.LSTMConfig` plus the vocabulary size) and
  tokenizer.json; load it with `scalelab.deploy.export.load_lstm(directory)`.
The directory is written beside its destination and renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from scalelab.data.store import TokenStore
from scalelab.data.tokenizer import EOD
from scalelab.train import checkpoint
from scalelab.train.run import build_model, finished_run_config


def export_run(run_dir: Path, out: Path) -> Path:
    """Export the run's final model (its best checkpoint when it converged) into `out`."""
    config = finished_run_config(run_dir)
    store = TokenStore.open(config.data)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if config.family == "ngram":
            from scalelab.models.ngram import KneserNeyLM

            model = KneserNeyLM.load(run_dir / "model")
            model.to_arpa(tmp / "model.arpa")
            model.save(tmp)  # scalelab's own arrays too: `scalelab generate` and `serve` sample from them
            _write_config(tmp, "ngram", store, order=model.order)
            store.tokenizer.save(tmp / "tokenizer.json")
        else:
            model = build_model(config, store.tokenizer.vocab_size)
            checkpoint.load_weights(checkpoint.final(run_dir, config.regime == "converge"), model)
            (_export_transformer if config.family == "transformer" else _export_lstm)(model, config, store, tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
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
    GenerationConfig(bos_token_id=eod, eos_token_id=eod, pad_token_id=eod,
                     max_length=config.transformer.context_length).save_pretrained(directory)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=store.tokenizer.hf, bos_token=EOD, eos_token=EOD,
                                        pad_token=EOD, model_max_length=config.transformer.context_length)
    tokenizer.save_pretrained(directory)
    settings = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
    settings["tokenizer_class"] = "PreTrainedTokenizerFast"  # older transformers releases need the class named
    (directory / "tokenizer_config.json").write_text(json.dumps(settings, indent=2), encoding="utf-8")


def _export_lstm(model: torch.nn.Module, config, store: TokenStore, directory: Path) -> None:
    from safetensors.torch import save_model

    save_model(model, str(directory / "model.safetensors"))
    _write_config(directory, "lstm", store, **config.lstm.model_dump(mode="json"))
    store.tokenizer.save(directory / "tokenizer.json")


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
