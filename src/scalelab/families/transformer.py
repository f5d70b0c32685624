"""The Transformer family: Hugging Face's Llama (models/transformer.py), exported as a Hugging Face directory."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import torch

from scalelab.data.store import TokenStore
from scalelab.data.tokenizer import EOD, Tokenizer
from scalelab.deploy.export import deployed_tokenizer
from scalelab.deploy.model import NeuralModel
from scalelab.families.base import NeuralFamily
from scalelab.models.transformer import TransformerConfig, build_transformer
from scalelab.train.config import TrainConfig


class TransformerModel(NeuralModel):
    family = "transformer"

    def __init__(self, name: str, tokenizer: Tokenizer, module: torch.nn.Module, context_length: int):
        super().__init__(name, tokenizer, module, context_length)
        # transformers 5.x renamed the KV-cache argument and output from `past_key_values` to `cache`.
        self.cache_name = "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"

    def _forward(self, ids: torch.Tensor, state: Any, every_position: bool) -> tuple[torch.Tensor, Any]:
        out = self.module(input_ids=ids, use_cache=True, logits_to_keep=0 if every_position else 1,
                          **{self.cache_name: state})
        return out.logits[0], getattr(out, self.cache_name)


class TransformerFamily(NeuralFamily):
    name = "transformer"
    config = TransformerConfig
    card_library = "transformers"
    card_tags = ("llama",)
    card_loading = """```python
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

model = AutoModelForCausalLM.from_pretrained("path/to/model")
tokenizer = AutoTokenizer.from_pretrained("path/to/model")
print(pipeline("text-generation", model="path/to/model")("def main():", max_new_tokens=40)[0]["generated_text"])
```"""

    def build(self, config: TransformerConfig, vocab_size: int) -> torch.nn.Module:
        return build_transformer(config, vocab_size)

    def width(self, size: str) -> int:
        return TransformerConfig.PRESETS[size].d_model

    def deployed(self, model: torch.nn.Module, config: TrainConfig, tokenizer: Tokenizer,
                 name: str) -> TransformerModel:
        return TransformerModel(name, tokenizer, model, config.model.context_length)

    def export(self, model: torch.nn.Module, config: TrainConfig, store: TokenStore, directory: Path) -> None:
        from transformers import GenerationConfig, PreTrainedTokenizerFast
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # one small local file: a bar would only clutter the output

        eod = store.tokenizer.eod_id
        # The end-of-document token starts, ends and pads every sequence: it is the only special token trained.
        model.config.bos_token_id = model.config.eos_token_id = model.config.pad_token_id = eod
        model.config.use_cache = True
        model.save_pretrained(directory, safe_serialization=True)
        # transformers 5 writes RoPE's period only under rope_parameters, which 4.x does not read: 4.x would load
        # a model with a non-default period silently wrong. 5.x keeps rope_parameters and drops the top-level key.
        _edit_json(directory / "config.json", rope_theta=config.model.rope_theta)
        # No max_length: generate() warns whenever a caller's max_new_tokens meets one. The context length is in
        # config.json (max_position_embeddings) and tokenizer_config.json (model_max_length).
        GenerationConfig(bos_token_id=eod, eos_token_id=eod, pad_token_id=eod).save_pretrained(directory)
        # split_special_tokens: a text that spells the end-of-document token stays text, as scalelab encodes it.
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=deployed_tokenizer(store), bos_token=EOD,
                                            eos_token=EOD, pad_token=EOD,
                                            model_max_length=config.model.context_length, split_special_tokens=True)
        tokenizer.save_pretrained(directory)
        _edit_json(directory / "tokenizer_config.json",
                   # older transformers releases need the class named
                   tokenizer_class="PreTrainedTokenizerFast",
                   # What the post-processor does, said where transformers (which rebuilds the post-processor
                   # from it) and lm-evaluation-harness look.
                   add_bos_token=True, add_eos_token=False,
                   # transformers 4.x would also return token_type_ids, which generate(**inputs) refuses for Llama.
                   model_input_names=["input_ids", "attention_mask"])

    def reads_export(self, document: dict[str, Any]) -> bool:
        return "model_type" in document  # a Hugging Face config.json

    def load_export(self, directory: Path, document: dict[str, Any], tokenizer: Tokenizer,
                    name: str) -> TransformerModel:
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # loading a local file takes no time worth a bar
        module = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
        return TransformerModel(name, tokenizer, module, module.config.max_position_embeddings)


def _edit_json(path: Path, **fields: Any) -> None:
    document = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps({**document, **fields}, indent=2), encoding="utf-8")
