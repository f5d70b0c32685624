import json
import re
import signal
import subprocess
import sys

import pytest
import yaml

from tests.conftest import run_cli, signal_when, write_corpus

SMALL = ["--set", "split.validation=0.1", "--set", "split.test=0.1", "--set", "tokenizer.vocab_size=300", "-q"]


def assert_user_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_prepare_and_info_end_to_end(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    out = tmp_path / "ds"
    result = run_cli("prepare", str(corpus), "--out", str(out), *SMALL)
    assert result.returncode == 0, result.stderr
    for heading in ("Documents", "Splits", "train (raw)", "validation", "throughput"):
        assert heading in result.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["funnel"]["cleaned"] == 80
    info = run_cli("info", str(out))
    assert info.returncode == 0 and manifest["fingerprint"] in info.stdout


def test_config_file_and_overrides(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    config = tmp_path / "prep.yaml"
    config.write_text(f"sources:\n  - path: {corpus}\nsplit:\n  validation: 0.2\n  test: 0.1\n"
                      "tokenizer:\n  kind: bytes\n")
    result = run_cli("prepare", "-c", str(config), "--out", str(tmp_path / "ds"), "--set", "split.test=0.15", "-q")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert manifest["config"]["split"] == {"validation": 0.2, "test": 0.15, "seed": 0, "min_tokens": 200_000,
                                           "max_fraction": 0.1}
    assert manifest["tokenizer"]["kind"] == "bytes"


@pytest.mark.parametrize(("args", "fragments"), [
    (["/no/such/path"], ["source not found: /no/such/path"]),
    (["--set", "split.validation=1.5"], ["split.validation", "less than 1"]),
    (["--set", "tokenizer.kind=wordpiece"], ["tokenizer.kind", "'bpe' or 'bytes'"]),
    (["--set", "tokenizer.vocab_sise=100"], ["tokenizer.vocab_sise: unknown field"]),
    (["--set", "workers=0"], ["workers"]),
    (["--set", "nonsense"], ["not of the form key.path=value"]),
    (["-c", "/no/such.yaml"], ["config file not found"]),
])
def test_bad_input_is_one_line_exit_2(tmp_path, args, fragments):
    assert_user_error(run_cli("prepare", *args, "--out", str(tmp_path / "ds"), "-q"), *fragments)


def test_bad_corpora_are_one_line_exit_2(tmp_path):
    unknown = tmp_path / "sheet.xlsx"
    unknown.write_bytes(b"PK")
    assert_user_error(run_cli("prepare", str(unknown), "-q", "--out", str(tmp_path / "a")), "unknown source type")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_user_error(run_cli("prepare", str(empty), "-q", "--out", str(tmp_path / "b")), "empty corpus")
    small = write_corpus(tmp_path / "small", n_docs=1)
    assert_user_error(run_cli("prepare", str(small), "-q", "--out", str(tmp_path / "c")), "corpus too small")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("sources: [unclosed\n")
    assert_user_error(run_cli("prepare", "-c", str(bad_yaml), "--out", str(tmp_path / "d")), "not valid YAML")
    assert_user_error(run_cli("info", str(tmp_path)), "not a prepared dataset")
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "keep.txt").write_text("mine")
    corpus = write_corpus(tmp_path / "corpus")
    assert_user_error(run_cli("prepare", str(corpus), "--out", str(tmp_path / "occupied"), *SMALL),
                      "is not a scalelab dataset")
    assert (tmp_path / "occupied" / "keep.txt").read_text() == "mine"


def test_strict_flag(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    (corpus / "data.jsonl").write_text('{"text": "fine"}\n{broken\n')
    ok = run_cli("prepare", str(corpus), "--out", str(tmp_path / "a"), *SMALL)
    assert ok.returncode == 0 and "invalid_json" in ok.stdout
    assert_user_error(run_cli("prepare", str(corpus), "--out", str(tmp_path / "b"), "--strict", *SMALL),
                      "invalid json", "data.jsonl:2")


def test_sigkill_mid_run_leaves_no_dataset_and_rerun_succeeds(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", n_docs=1500)
    out = tmp_path / "ds"
    args = [sys.executable, "-m", "scalelab", "prepare", str(corpus), "--out", str(out), *SMALL]
    process = subprocess.Popen(args, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Killed mid-way: its temporary directory holds tokenized shards but has not been renamed into place.
    signal_when(process, lambda: bool(list(tmp_path.glob(".ds.tmp-*/**/tokens.bin"))) and not out.exists(),
                signal.SIGKILL)
    process.wait()
    assert not out.exists()
    result = run_cli("prepare", str(corpus), "--out", str(out), *SMALL)
    assert result.returncode == 0, result.stderr
    assert not list(tmp_path.glob(".ds.tmp-*"))
    assert json.loads((out / "manifest.json").read_text())["funnel"]["cleaned"] == 1500


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.startswith("scalelab ")


def test_variants_and_data_report(tmp_path):
    from tests.conftest import write_mixed_corpus

    corpus = write_mixed_corpus(tmp_path / "corpus", n_good=60)
    out = tmp_path / "ds"
    result = run_cli("prepare", str(corpus), "--out", str(out), "--filters", "prose",
                     "--variants", "raw,filtered+dedup", *SMALL)
    assert result.returncode == 0, result.stderr
    assert "train (filtered+dedup)" in result.stdout and "gopher" in result.stdout
    report_path = tmp_path / "report.json"
    report = run_cli("data-report", str(out), "--json", str(report_path))
    assert report.returncode == 0, report.stderr
    for heading in ("funnel", "Examples dropped", "Diversity", "Mixture", "MinHash 14 bands"):
        assert heading in report.stdout
    data = json.loads(report_path.read_text())
    assert set(data["metrics"]) == {"train (raw)", "train (filtered+dedup)", "validation", "test"}
    assert data["metrics"]["train (filtered+dedup)"]["duplicates_exact"] == 0
    assert data["metrics"]["train (raw)"]["duplicates_exact"] > 0
    assert data["funnel"]["filtered"]
    assert_user_error(run_cli("prepare", str(corpus), "--out", str(tmp_path / "x"), "--variants", "filtered"),
                      "filtered variant needs quality filters")


TINY_TRANSFORMER = ["--set", "transformer.size=custom", "--set", "transformer.d_model=32", "--set",
                    "transformer.n_layers=1", "--set", "transformer.context_length=32", "--set", "steps=3",
                    "--set", "batch_size=4", "--set", "eval_tokens=300", "--set", "num_threads=1", "-q"]


def test_train_and_evaluate_every_family(prepared, tmp_path):
    for family, size in (("ngram", "3"), ("lstm", "0.1M"), ("transformer", None)):
        out = tmp_path / family
        args = ["train", "--data", str(prepared.path), "--tokens", "4k", "--family", family, "--out", str(out)]
        args += ["--size", size] if size else TINY_TRANSFORMER
        if family == "lstm":
            args += ["--set", "lstm.context_length=32", "--set", "steps=2", "-q"]
        result = run_cli(*args)
        assert result.returncode == 0, result.stderr
        assert "bits/byte" in result.stdout and (out / "eval.json").is_file()
        again = run_cli("evaluate", str(out), "--json")
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["bits_per_byte"] == pytest.approx(
            json.loads((out / "eval.json").read_text())["eval"]["bits_per_byte"], rel=1e-6)


def test_train_bad_input_is_one_line_exit_2(prepared, tmp_path):
    data = ["--data", str(prepared.path)]
    n = prepared.train().n_tokens
    assert_user_error(run_cli("train", *data, "--tokens", "1000", "--family", "rnn"), "family")
    assert_user_error(run_cli("train", *data, "--tokens", str(n + 1), "--family", "ngram",
                              "--out", str(tmp_path / "a")), f"has only {n:,}")
    assert_user_error(run_cli("train", *data, "--tokens", "1000", "--family", "transformer", "--size", "7M"),
                      "transformer: unknown transformer size '7M'", "125M")
    assert_user_error(run_cli("train", *data, "--tokens", "lots"), "not a token count")
    assert_user_error(run_cli("train", "--data", str(tmp_path), "--tokens", "1000"), "not a prepared dataset")
    out = tmp_path / "run"
    ok = run_cli("train", *data, "--tokens", "4000", "--family", "transformer", "--out", str(out), *TINY_TRANSFORMER)
    assert ok.returncode == 0, ok.stderr
    latest = (out / "checkpoints" / "latest").read_text().strip()
    (out / "checkpoints" / latest / "model.safetensors").write_bytes(b"not weights")
    assert_user_error(run_cli("evaluate", str(out)), "unreadable weights")
    assert_user_error(run_cli("train", *data, "--tokens", "5000", "--family", "transformer", "--out", str(out),
                              *TINY_TRANSFORMER), "holds another run")


@pytest.mark.parametrize("count", ["inf", "1e999", "-inf", "nan", "0", "-5", "0.4", "-2k", "1e999k"])
def test_counts_must_be_positive_finite_numbers(count):
    from scalelab.cli import _parse_count
    from scalelab.errors import ConfigError

    with pytest.raises(ConfigError, match=f"not a token count: {re.escape(repr(count))}"):
        _parse_count(count)
    assert _parse_count("2.5k") == 2500 and _parse_count("1_000") == 1000


def test_an_infinite_token_count_is_one_line_exit_2(prepared, tmp_path):
    assert_user_error(run_cli("train", "--data", str(prepared.path), "--tokens", "inf", "--family", "ngram",
                              "--out", str(tmp_path / "run")), "not a token count: 'inf'")


def test_evaluate_refuses_bad_options_and_damaged_runs(prepared, tmp_path):
    out = tmp_path / "run"
    ok = run_cli("train", "--data", str(prepared.path), "--tokens", "4k", "--family", "ngram", "--size", "2",
                 "--out", str(out), "-q")
    assert ok.returncode == 0, ok.stderr
    for count in ("1e999", "0", "-1"):
        assert_user_error(run_cli("evaluate", str(out), "--eval-tokens", count), "not a token count")
    assert_user_error(run_cli("evaluate", str(out), "--split", "train"), "--split", "'validation', 'test'")
    config = out / "config.yaml"
    config.write_text("data: [unclosed\n")
    assert_user_error(run_cli("evaluate", str(out)), str(config), "not valid YAML")
    assert_user_error(run_cli("train", "--data", str(prepared.path), "--tokens", "4k", "--family", "ngram",
                              "--size", "2", "--out", str(out)), str(config), "not valid YAML")
    config.write_text("- a list\n- not a mapping\n")
    assert_user_error(run_cli("evaluate", str(out)), str(config), "must hold a mapping")


def test_a_damaged_result_is_one_line_exit_2(prepared, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--data", str(prepared.path), "--tokens", "4k", "--family", "ngram", "--size", "2",
            "--out", str(out), "-q"]
    assert run_cli(*args).returncode == 0
    (out / "eval.json").write_text('{"eval": ')
    assert_user_error(run_cli(*args), str(out / "eval.json"), "not a readable run result")
    assert_user_error(run_cli("export", str(out), "--out", str(tmp_path / "model")), "not a readable run result")


def test_a_learning_rate_past_what_the_optimizer_can_hold_is_refused(prepared, tmp_path):
    assert_user_error(run_cli("train", "--data", str(prepared.path), "--tokens", "4k", "--family", "transformer",
                              "--out", str(tmp_path / "run"), "--set", "optim.lr=1e38", "-q"), "optim.lr")


def test_damaged_datasets_are_one_line_exit_2_and_info_verify_checks_content(prepared, tmp_path):
    import shutil

    dataset = shutil.copytree(prepared.path, tmp_path / "dataset")
    ok = run_cli("info", str(dataset), "--verify")
    assert ok.returncode == 0, ok.stderr
    assert "verified: every split and the tokenizer match the fingerprint" in ok.stdout
    tokens = dataset / "validation" / "tokens.bin"
    data = bytearray(tokens.read_bytes())
    data[10] ^= 0x01
    tokens.write_bytes(bytes(data))
    assert run_cli("info", str(dataset)).returncode == 0  # only the sizes are checked on open
    assert_user_error(run_cli("info", str(dataset), "--verify"), "validation", "does not match")
    with tokens.open("r+b") as handle:
        handle.truncate(len(data) - 2)
    assert_user_error(run_cli("train", "--data", str(dataset), "--tokens", "4k", "--family", "ngram", "--size", "2",
                              "--out", str(tmp_path / "run")),
                      f"dataset is corrupt: {tokens}: expected {len(data)} bytes, found {len(data) - 2}")
    for document in ("[]", "3"):
        (dataset / "manifest.json").write_text(document)
        assert_user_error(run_cli("info", str(dataset)), str(dataset / "manifest.json"), "not a dataset manifest")


def test_a_diverging_run_is_one_line_exit_2(prepared, tmp_path):
    out = tmp_path / "run"
    result = run_cli("train", "--data", str(prepared.path), "--tokens", "4000", "--family", "transformer",
                     "--out", str(out), *TINY_TRANSFORMER, "--set", "steps=2", "--set", "optim.lr=1e30")
    assert_user_error(result, "training diverged", "last good checkpoint")
    assert not (out / "eval.json").exists()


def test_unwritable_or_wrong_type_outputs_are_one_line_exit_2_before_any_work(prepared, tmp_path):
    from tests.report.test_report import make_study

    blocker = tmp_path / "file.txt"
    blocker.write_text("mine")
    folder = tmp_path / "folder"
    folder.mkdir()
    corpus = write_corpus(tmp_path / "corpus")
    points = tmp_path / "points.csv"
    points.write_text("D,loss\n" + "".join(f"{d},{1 + 30 * d ** -0.3}\n" for d in (1e4 * 2**k for k in range(8))))
    study = make_study(tmp_path, str(prepared.path))
    train = ["train", "--data", str(prepared.path), "--tokens", "1000", "--family", "ngram", "-q"]
    commands = {
        "prepare": (["prepare", str(corpus), *SMALL, "--out"], blocker, blocker / "ds"),
        "train": ([*train, "--out"], blocker, blocker / "run"),
        "fit": (["fit", str(points), "--unit", "nats", "--bootstrap", "5", "--json"], folder, blocker / "f.json"),
        "data-report": (["data-report", str(prepared.path), "--json"], folder, blocker / "r.json"),
        "study export": (["study", "export", str(study), "--out"], folder, blocker / "x.csv"),
        "report": (["report", str(study), "--bootstrap", "5", "--out"], blocker, blocker / "report"),
    }
    for name, (args, wrong_type, unwritable) in commands.items():
        for path in (wrong_type, unwritable):
            result = run_cli(*args, str(path))
            assert_user_error(result, str(wrong_type if path == wrong_type else blocker))
            assert result.stdout == "", name  # refused before the work, not after it
    assert blocker.read_text() == "mine" and not any(folder.iterdir())


def test_a_write_that_fails_after_the_checks_is_one_line_exit_2(tmp_path):
    points = tmp_path / "points.csv"
    points.write_text("D,loss\n" + "".join(f"{d},{1 + 30 * d ** -0.3}\n" for d in (1e4 * 2**k for k in range(8))))
    assert_user_error(run_cli("fit", str(points), "--unit", "nats", "--bootstrap", "5", "--json",
                              "/proc/scalelab-no-such-dir/fits.json"), "/proc")


def test_help_keeps_bracketed_text():
    """Under rich markup, `[default: the run's]` vanished from help, leaving 'validation or test .'."""
    from typer.testing import CliRunner

    from scalelab.cli import app

    runner = CliRunner()
    assert "validation or test [default: the run's]" in runner.invoke(app, ["evaluate", "--help"]).output
    assert "[default: torch's]" in runner.invoke(app, ["generate", "--help"]).output


@pytest.mark.parametrize(("args", "fragment"), [
    (["evaluate", "run", "--split", "train"], "'train' is not one of 'validation', 'test'"),
    (["train", "--regime", "forever"], "'forever' is not one of 'single-pass', 'converge'"),
    (["study", "run", "spec.yaml", "--backend", "k8s"], "'k8s' is not one of 'local', 'ray'"),
    (["study", "export", "study", "--format", "xml"], "'xml' is not one of 'csv', 'parquet'"),
    (["generate", "model", "--quantize", "int4"], "'int4' is not one of 'int8'"),
    (["demo", "--scale", "tpu"], "'tpu' is not one of 'cpu', 'gpu'"),
    (["train", "--no-such-flag"], "No such option: --no-such-flag"),
    (["study", "plan"], "Missing argument"),
])
def test_choices_and_usage_errors_are_one_line_exit_2(args, fragment):
    """The command line's choices are the configs' Literal types, checked by typer before any work."""
    assert_user_error(run_cli(*args), fragment, "--help")


def test_flags_win_over_set_which_wins_over_the_config_file(prepared, tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text(f"data: {prepared.path}\nfamily: ngram\ntokens: 1000\nngram: {{order: 2}}\n")
    out = tmp_path / "run"
    result = run_cli("train", "-c", str(config), "--set", "tokens=2000", "--set", "ngram.order=3", "--tokens", "3000",
                     "--out", str(out), "-q")
    assert result.returncode == 0, result.stderr
    recorded = yaml.safe_load((out / "config.yaml").read_text())
    assert recorded["tokens"] == 3000 and recorded["ngram"]["order"] == 3


def test_serve_and_generate_help_is_the_configs():
    from typer.testing import CliRunner

    from scalelab.cli import app
    from scalelab.deploy.params import SamplingParams, ServeConfig

    serve = " ".join(CliRunner().invoke(app, ["serve", "--help"]).output.split())
    assert ServeConfig.model_fields["max_body_bytes"].description in serve
    assert f"[default: {ServeConfig().max_body_bytes}]" in serve
    generate = " ".join(CliRunner().invoke(app, ["generate", "--help"]).output.split())
    assert SamplingParams.model_fields["top_p"].description in generate
    train = " ".join(CliRunner().invoke(app, ["train", "--help"]).output.split())
    assert "--set optim.lr=0.001" in train
