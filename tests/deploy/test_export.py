import json
import logging
import os
import shutil

import numpy as np
import pytest
import torch
import yaml

from scalelab import __version__
from scalelab.families.lstm import load_lstm
from scalelab.models.ngram import KneserNeyLM
from scalelab.models.registry import family
from scalelab.train import checkpoint
from scalelab.train.rundir import RunDir
from tests.conftest import run_cli
from tests.deploy.conftest import CONTEXT, FAMILIES, ROPE_THETA
from tests.test_cli import assert_user_error

MARKER = ".scalelab-export.json"  # the name is the contract: other tools may look for it


def reference_model(run_dir, prepared):
    config = RunDir(run_dir).config()
    model = family(config.family).new_model(config, prepared.tokenizer.vocab_size)
    checkpoint.load_weights(checkpoint.resolve(run_dir / "checkpoints"), model)
    return model.eval()


def test_transformer_export_loads_in_plain_transformers(prepared, runs, exported, caplog):
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    out = exported["transformer"]
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert json.loads((out / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    ids = torch.tensor([tokenizer.encode("the data model loss")])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, reference_model(runs["transformer"], prepared)(ids).logits)
    generator = pipeline("text-generation", model=str(out), tokenizer=str(out))
    hf_logger = logging.getLogger("transformers")  # it does not propagate to the root logger caplog watches
    hf_logger.addHandler(caplog.handler)
    try:
        text = generator("the data", max_new_tokens=5, do_sample=False)[0]["generated_text"]
    finally:
        hf_logger.removeHandler(caplog.handler)
    assert text.startswith("the data")
    assert "max_length" not in caplog.text  # a max_length in generation_config.json is warned about on every call


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


def test_transformer_config_conveys_context_and_rope_theta_to_every_transformers(exported):
    out = exported["transformer"]
    config = json.loads((out / "config.json").read_text())
    # transformers 4.x reads only the top-level key; 5.x reads rope_parameters.
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"] == ROPE_THETA
    assert config["max_position_embeddings"] == CONTEXT
    assert json.loads((out / "tokenizer_config.json").read_text())["model_max_length"] == CONTEXT
    assert "max_length" not in json.loads((out / "generation_config.json").read_text())


@pytest.mark.parametrize("family", FAMILIES)
def test_every_export_has_a_model_card(prepared, runs, exported, family):
    _, front_matter, body = (exported[family] / "README.md").read_text(encoding="utf-8").split("---\n", 2)
    metadata = yaml.safe_load(front_matter)
    assert metadata["library_name"] == ("transformers" if family == "transformer" else "scalelab")
    assert metadata["pipeline_tag"] == "text-generation" and {"scalelab", family} <= set(metadata["tags"])
    result = json.loads((runs[family] / "eval.json").read_text())
    for fact in (result["run_id"], family, str(prepared.path), prepared.fingerprint, result["data_fingerprint"],
                 f"{result['D']:,}", result["variant"], f"{result['eval']['bits_per_byte']:.4f}",
                 f"{result['eval']['nll']:.4f}", f"scalelab {__version__}"):
        assert fact in body, fact
    assert ("AutoModelForCausalLM" if family == "transformer" else "scalelab generate") in body


def exported_files(directory):
    return {path.relative_to(directory).as_posix(): path.read_bytes() for path in directory.rglob("*")
            if path.is_file()}


def test_export_never_writes_into_the_run_directory(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["ngram"], run)
    before = exported_files(run)
    for out in (run, run / "model", run / "export"):
        assert_user_error(run_cli("export", str(run), "--out", str(out), "--force"), "run directory")
    assert exported_files(run) == before


def test_export_refuses_what_scalelab_did_not_write(runs, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    for force in ((), ("--force",)):
        assert_user_error(run_cli("export", str(runs["ngram"]), "--out", str(mine), *force),
                          str(mine), "not a scalelab export")
        assert_user_error(run_cli("export", str(runs["ngram"]), "--out", ".", *force, cwd=mine),
                          "not a scalelab export")
    assert_user_error(run_cli("export", str(runs["ngram"]), "--out", str(mine / "notes.txt")), "is a file")
    assert exported_files(mine) == {"notes.txt": b"keep me"}


def test_reexport_needs_force_and_replaces_only_the_export(runs, tmp_path):
    out = tmp_path / "model"
    out.mkdir()  # an empty directory holds nothing to lose
    assert run_cli("export", str(runs["ngram"]), "--out", str(out)).returncode == 0
    marker = json.loads((out / MARKER).read_text())
    run_id = json.loads((runs["ngram"] / "eval.json").read_text())["run_id"]
    assert (marker["run_id"], marker["family"], marker["scalelab_version"]) == (run_id, "ngram", __version__)
    assert_user_error(run_cli("export", str(runs["lstm"]), "--out", str(out)), "already holds", "--force")
    (out / "notes.txt").write_text("added later")
    assert_user_error(run_cli("export", str(runs["lstm"]), "--out", str(out), "--force"), "notes.txt")
    (out / "notes.txt").unlink()
    result = run_cli("export", str(runs["lstm"]), "--out", str(out), "--force")
    assert result.returncode == 0, result.stderr
    assert json.loads((out / MARKER).read_text())["family"] == "lstm" and not (out / "model.arpa").exists()
    assert [path.name for path in tmp_path.iterdir()] == ["model"]  # no temporary or set-aside directory is left


@pytest.mark.parametrize("family", FAMILIES)
def test_every_exported_tokenizer_starts_a_text_with_the_eod_token(exported, family):
    """As scalelab reads a prompt: as the start of a document, after the token every training document follows."""
    import tokenizers

    from scalelab.data.tokenizer import EOD

    tokenizer = tokenizers.Tokenizer.from_file(str(exported[family] / "tokenizer.json"))
    plain = tokenizer.encode("the data", add_special_tokens=False).ids
    assert tokenizer.encode("the data").ids == [tokenizer.token_to_id(EOD), *plain]


def test_transformers_reads_a_prompt_as_scalelab_does(exported, models):
    """One end-of-document token, then the text, even a text that spells the token."""
    from transformers import AutoTokenizer, pipeline

    from scalelab.data.tokenizer import EOD
    from scalelab.deploy.completion import Completion
    from scalelab.deploy.params import SamplingParams
    from scalelab.deploy.sampling import make_generator

    out, model = exported["transformer"], models["transformer"]
    assert json.loads((out / "tokenizer_config.json").read_text())["add_bos_token"] is True
    tokenizer = AutoTokenizer.from_pretrained(out)
    generator = pipeline("text-generation", model=str(out))
    read = []
    generator.model.register_forward_pre_hook(
        lambda _, args, kwargs: read.append(kwargs["input_ids"][0].tolist()), with_kwargs=True)
    for text in ("the data", EOD + "the data", ""):
        scalelab = Completion(model, text, SamplingParams(), make_generator(0)).prompt_ids
        assert scalelab.count(model.eod_id) == 1 and scalelab[0] == model.eod_id
        assert tokenizer(text).input_ids == scalelab
        read.clear()
        generator(text, max_new_tokens=1, do_sample=False)
        assert read[0] == scalelab, text


@pytest.mark.parametrize("family", FAMILIES)
def test_exports_are_readable_by_other_users(runs, tmp_path, family):
    """A server running as another user must read an export: files 0644 and folders 0755 under umask 022."""
    from scalelab.deploy.export import export_run

    previous = os.umask(0o022)
    try:
        out = export_run(runs[family], tmp_path / family)
    finally:
        os.umask(previous)
    modes = {p.relative_to(out).as_posix(): oct(p.stat().st_mode & 0o777) for p in [out, *out.rglob("*")]}
    assert {mode for name, mode in modes.items() if (out / name).is_dir()} == {"0o755"}, modes
    assert {mode for name, mode in modes.items() if (out / name).is_file()} == {"0o644"}, modes
