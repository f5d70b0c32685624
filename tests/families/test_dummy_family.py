"""Adding a family is one module and one registry line: a unigram model defined in tests/families/dummy.py goes
through scalelab's public commands (study plan, train, evaluate, export, generate) with no other file touched."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from scalelab import cli
from scalelab.cli import app
from scalelab.models import registry
from tests.conftest import run_cli


@pytest.fixture
def unigram(monkeypatch):
    monkeypatch.setitem(registry.FAMILIES, "unigram", "tests.families.dummy:UnigramFamily")
    monkeypatch.setattr(cli.console, "width", 200)  # whole table rows


def invoke(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_a_family_added_in_one_module_runs_through_every_command(unigram, prepared, tmp_path):
    spec = {"name": "uni", "out": str(tmp_path / "studies"), "dataset": {"path": str(prepared.path)},
            "families": {"unigram": {"sizes": ["add-1", "add-0.1"]}}, "data_sizes": [2000, 4000],
            "eval_tokens": 2000}
    (tmp_path / "uni.yaml").write_text(yaml.safe_dump(spec))
    plan = invoke("study", "plan", str(tmp_path / "uni.yaml"))
    assert "4 runs" in plan and plan.count("unigram") >= 4 and "add-0.1" in plan

    run = tmp_path / "run"
    invoke("train", "--data", str(prepared.path), "--family", "unigram", "--size", "add-0.1", "--tokens", "4000",
           "--out", str(run), "-q", "--set", "eval_tokens=2000")
    recorded = yaml.safe_load((run / "config.yaml").read_text())
    assert recorded["family"] == "unigram" and recorded["unigram"] == {"smoothing": 0.1}
    outcome = json.loads((run / "eval.json").read_text())
    assert outcome["family"] == "unigram" and outcome["params"] == prepared.tokenizer.vocab_size

    scored = json.loads(invoke("evaluate", str(run), "--json"))
    assert scored["nll"] == pytest.approx(outcome["eval"]["nll"])

    exported = tmp_path / "export"
    invoke("export", str(run), "--out", str(exported))
    assert json.loads((exported / "config.json").read_text())["family"] == "unigram"
    assert "# A unigram trained on 4,000 tokens" in (exported / "README.md").read_text()
    for model in (run, exported):
        invoke("generate", str(model), "--prompt", "the", "--max-tokens", "5", "--seed", "0")


def test_an_unregistered_family_is_refused_by_name(prepared, tmp_path):
    result = run_cli("train", "--data", str(prepared.path), "--family", "unigram", "--tokens", "4000", "--out",
                     str(tmp_path / "run"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "unknown model family 'unigram'; families: ngram, lstm, transformer" in result.stderr
