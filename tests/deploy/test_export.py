import torch

from scalelab.deploy.export import export_run, load_lstm
from scalelab.train import checkpoint
from scalelab.train.run import build_model, load_run_config, train_run
from tests.train.test_run import tiny


def trained(prepared, tmp_path, family, **kwargs):
    run_dir = tmp_path / family
    train_run(tiny(prepared, family, **kwargs), run_dir, show_progress=False)
    return run_dir


def reference_model(run_dir, prepared):
    config = load_run_config(run_dir)
    model = build_model(config, prepared.tokenizer.vocab_size)
    checkpoint.load_weights(checkpoint.resolve(run_dir / "checkpoints"), model)
    return model.eval()


def test_transformer_export_loads_in_plain_transformers(prepared, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    run_dir = trained(prepared, tmp_path, "transformer")
    out = export_run(run_dir, tmp_path / "hf")
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = torch.tensor([tokenizer.encode("the data model loss")])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, reference_model(run_dir, prepared)(ids).logits)
    generator = pipeline("text-generation", model=str(out), tokenizer=str(out))
    text = generator("the data", max_new_tokens=5, do_sample=False)[0]["generated_text"]
    assert text.startswith("the data")


def test_lstm_and_ngram_exports(prepared, tmp_path):
    lstm_dir = trained(prepared, tmp_path, "lstm")
    out = export_run(lstm_dir, tmp_path / "lstm-out")
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(load_lstm(out)(ids), reference_model(lstm_dir, prepared)(ids))
    ngram = export_run(trained(prepared, tmp_path, "ngram", ngram={"order": 3}), tmp_path / "ngram-out")
    assert (ngram / "model.arpa").read_text().startswith("\\data\\") and (ngram / "tokenizer.json").is_file()


def test_export_cli_refuses_unfinished_runs(prepared, tmp_path):
    from tests.conftest import run_cli
    from tests.test_cli import assert_user_error

    assert_user_error(run_cli("export", str(tmp_path), "--out", str(tmp_path / "x")), "is not a scalelab run")
