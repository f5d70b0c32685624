import json
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import run_cli, write_corpus

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
    assert manifest["config"]["split"] == {"validation": 0.2, "test": 0.15, "seed": 0}
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
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not list(tmp_path.glob(".ds.tmp-*")) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.1)  # well inside the run: it tokenizes ~1 MB after staging
    process.send_signal(signal.SIGKILL)
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
