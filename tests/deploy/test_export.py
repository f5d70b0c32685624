import json
import shutil

import numpy as np
import torch

from scalelab.deploy.export import load_lstm
from scalelab.models.ngram import KneserNeyLM
from scalelab.train import checkpoint
from scalelab.train.run import build_model, load_run_config
from tests.conftest import run_cli
from tests.test_cli import assert_user_error


def reference_model(run_dir, prepared):
    config = load_run_config(run_dir)
    model = build_model(config, prepared.tokenizer.vocab_size)
    checkpoint.load_weights(checkpoint.resolve(run_dir / "checkpoints"), model)
    return model.eval()


def test_transformer_export_loads_in_plain_transformers(prepared, runs, exported):
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    out = exported["transformer"]
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert json.loads((out / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    ids = torch.tensor([tokenizer.encode("the data model loss")])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, reference_model(runs["transformer"], prepared)(ids).logits)
    generator = pipeline("text-generation", model=str(out), tokenizer=str(out))
    text = generator("the data", max_new_tokens=5, do_sample=False)[0]["generated_text"]
    assert text.startswith("the data")


def test_lstm_and_ngram_exports(prepared, runs, exported):
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(load_lstm(exported["lstm"])(ids), reference_model(runs["lstm"], prepared)(ids))
    out = exported["ngram"]
    assert (out / "model.arpa").read_text().startswith("\\data\\") and (out / "tokenizer.json").is_file()
    stream = np.array([5, 6, 7, 8, 9])
    np.testing.assert_array_equal(KneserNeyLM.load(out).logprobs(stream),
                                  KneserNeyLM.load(runs["ngram"] / "model").logprobs(stream))


def test_export_cli_refuses_unfinished_runs(runs, tmp_path):
    assert_user_error(run_cli("export", str(tmp_path), "--out", str(tmp_path / "x")), "is not a scalelab run")
    shutil.copy(runs["ngram"] / "config.yaml", tmp_path / "config.yaml")  # a run that never wrote eval.json
    assert_user_error(run_cli("export", str(tmp_path), "--out", str(tmp_path / "x")), "has not finished training")
