import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scalelab.config import validate
from scalelab.errors import ConfigError, TrainingDiverged
from scalelab.train import checkpoint
from scalelab.train.config import TrainConfig
from scalelab.train.run import evaluate_run, train_run
from tests.conftest import signal_when

GOLDEN = Path(__file__).parent.parent / "golden" / "train_losses.json"
TINY = {
    "transformer": {"size": "custom", "d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64, "context_length": 32},
    "lstm": {"size": "custom", "n_layers": 1, "d_hidden": 32, "d_embed": 32, "context_length": 32, "dropout": 0.1},
}


def tiny(prepared, family, **kwargs) -> TrainConfig:
    base = {"data": str(prepared.path), "tokens": 6000, "family": family, family: TINY.get(family, {}),
            "batch_size": 4, "steps": 8, "eval_tokens": 2000, "num_threads": 1, "seed": 0}
    base.update(kwargs)
    return TrainConfig.model_validate(base)


def losses(run_dir: Path) -> list[float]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [line["loss"] for line in lines if "loss" in line]


@pytest.mark.parametrize("family", ["transformer", "lstm"])
def test_golden_per_step_losses(prepared, tmp_path, family):
    train_run(tiny(prepared, family), tmp_path / family, show_progress=False)
    got = losses(tmp_path / family)
    if os.environ.get("SCALELAB_UPDATE_GOLDEN"):
        golden = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
        golden[family] = got
        GOLDEN.write_text(json.dumps(golden, indent=2) + "\n")
    expected = json.loads(GOLDEN.read_text())[family]
    # Same seed, data and deterministic kernels: the same losses. The tolerance only absorbs float
    # differences between CPU instruction sets (CI may run on another x86 model than the one that wrote them).
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert got[-1] < got[0]


def test_run_result_and_rerun_reuses_it(prepared, tmp_path):
    config = tiny(prepared, "transformer")
    first = train_run(config, tmp_path / "run", show_progress=False)
    for key in ("eval", "N", "flops", "tokens_seen", "run_id", "D", "U", "wall_seconds"):
        assert key in first
    assert first["eval"]["split"] == "validation" and first["eval"]["bits_per_byte"] > 0
    assert first["tokens_seen"] == 8 * 4 * 32
    assert first["flops"] > 6 * first["N"] * first["tokens_seen"]  # plus the attention term
    again = train_run(config, tmp_path / "run", show_progress=False)
    assert again == first
    rescored = evaluate_run(tmp_path / "run")
    assert rescored["nll"] == pytest.approx(first["eval"]["nll"], rel=1e-6)


def test_converge_keeps_the_best_checkpoint(prepared, tmp_path):
    config = tiny(prepared, "lstm", tokens=1000, regime="converge", steps=None, max_epochs=30, patience=2,
                  optim={"lr": 0.05}, schedule={"kind": "constant", "warmup_fraction": 0.0})
    outcome = train_run(config, tmp_path / "run", show_progress=False)
    evals = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
             if "eval" in line]
    best = min(evals, key=lambda e: e["eval"]["nll"])
    assert outcome["best_step"] == best["step"]
    # Selected on validation, reported on test (issue 14): the validation figures at the chosen checkpoint are
    # kept apart as selection_eval, and `scalelab evaluate` reproduces the reported ones.
    assert {e["eval"]["split"] for e in evals} == {"validation"}
    assert outcome["selection_eval"]["split"] == "validation" and outcome["eval"]["split"] == "test"
    assert outcome["selection_eval"]["nll"] == pytest.approx(best["eval"]["nll"], rel=1e-6)
    assert evaluate_run(tmp_path / "run")["nll"] == pytest.approx(outcome["eval"]["nll"], rel=1e-6)
    assert outcome["epochs"] > 1
    # L(D) on D unique tokens, however many epochs early stopping took (Kaplan et al. 2020).
    assert outcome["D"] == outcome["U"] == 1000
    assert outcome["epochs"] == pytest.approx(outcome["tokens_seen"] / (999 // 32 * 32))


def test_ngram_run(prepared, tmp_path):
    config = tiny(prepared, "ngram", ngram={"order": 3})
    outcome = train_run(config, tmp_path / "run", show_progress=False)
    assert outcome["eval"]["nll"] < torch.log(torch.tensor(float(prepared.tokenizer.vocab_size))).item()
    assert evaluate_run(tmp_path / "run")["nll"] == pytest.approx(outcome["eval"]["nll"])


def test_repeated_data_run(prepared, tmp_path):
    outcome = train_run(tiny(prepared, "transformer", tokens=4000, unique_tokens=1000, steps=None),
                        tmp_path / "run", show_progress=False)
    assert outcome["U"] == 1000 and outcome["D"] == 4000
    # One pass over the D repeated tokens is D / U = 4 epochs over the unique ones (Muennighoff et al. 2023); this
    # asserted 1.0 (passes over the repeated view) before issue 14.
    assert outcome["epochs"] == pytest.approx(4.0, abs=0.2)


def test_nan_loss_stops_with_a_clear_error(prepared, tmp_path, monkeypatch):
    import scalelab.models.accounting as accounting

    real = accounting.logits
    calls = []

    def poisoned(model, ids):
        out = real(model, ids)
        if model.training:
            calls.append(1)
        return out * float("nan") if len(calls) > 3 and model.training else out

    monkeypatch.setattr("scalelab.train.trainer.model_logits", poisoned)  # the trainer's own reference
    with pytest.raises(TrainingDiverged, match="loss became nan at step 4; last good checkpoint"):
        train_run(tiny(prepared, "transformer", checkpoint_every=2, eval_every=2), tmp_path / "run",
                  show_progress=False)
    assert (tmp_path / "run" / "checkpoints" / "step-00000002" / "state.json").is_file()


def non_finite_checkpoints(run_dir: Path) -> list[str]:
    from safetensors.torch import load_file

    return [path.name for path in (run_dir / "checkpoints").glob("step-*")
            if not all(torch.isfinite(t).all() for t in load_file(path / "model.safetensors").values())]


@pytest.mark.parametrize("steps", [2, 8])
def test_divergence_fails_the_run_and_never_saves_non_finite_weights(prepared, tmp_path, steps):
    # lr=1e30: the first step blows the weights up to ~1e30, the next one's gradients are NaN. A short run used to
    # finish with a NaN eval.json, a longer one to stop naming a checkpoint of NaN weights as the last good one.
    run_dir = tmp_path / "run"
    config = tiny(prepared, "transformer", steps=steps, eval_every=1, checkpoint_every=1, optim={"lr": 1e30})
    with pytest.raises(TrainingDiverged, match="last good checkpoint") as raised:
        train_run(config, run_dir, show_progress=False)
    assert not (run_dir / "eval.json").exists()
    assert non_finite_checkpoints(run_dir) == []
    last = checkpoint.resolve(run_dir / "checkpoints")
    assert f"last good checkpoint: {last if last else 'none'} " in str(raised.value)


def test_weights_that_become_non_finite_are_never_saved(prepared, tmp_path, monkeypatch):
    import scalelab.train.trainer as trainer

    real = trainer.build_optimizer

    def overflowing(model, config):
        # From the third step on, an update that overflows one weight while loss and gradients are still finite.
        optimizer = real(model, config)
        step, calls = optimizer.step, []

        def step_then_overflow(*args, **kwargs):
            step(*args, **kwargs)
            calls.append(1)
            if len(calls) >= 3:
                with torch.no_grad():
                    next(model.parameters()).view(-1)[0] = float("inf")

        optimizer.step = step_then_overflow
        return optimizer

    monkeypatch.setattr(trainer, "build_optimizer", overflowing)
    run_dir = tmp_path / "run"
    config = tiny(prepared, "transformer", eval_every=100, checkpoint_every=1)
    with pytest.raises(TrainingDiverged, match="weights became non-finite at step 3; last good checkpoint: .*"
                                               "step-00000002"):
        train_run(config, run_dir, show_progress=False)
    assert non_finite_checkpoints(run_dir) == [] and checkpoint.resolve(run_dir / "checkpoints").name == \
        "step-00000002"


def test_a_non_finite_evaluation_fails_the_run(prepared, tmp_path, monkeypatch):
    import scalelab.train.neural as neural

    monkeypatch.setattr(neural, "neural_nll", lambda model, data, *args, **kwargs: [float("nan")] * data.n_targets)
    with pytest.raises(TrainingDiverged, match="held-out loss became nan at step 2; last good checkpoint: none"):
        train_run(tiny(prepared, "transformer", steps=4, eval_every=2, checkpoint_every=2), tmp_path / "run",
                  show_progress=False)
    assert not (tmp_path / "run" / "eval.json").exists()
    assert not list((tmp_path / "run" / "checkpoints").glob("step-*"))


def test_a_recorded_non_finite_result_is_not_done(prepared, tmp_path):
    config = tiny(prepared, "ngram", ngram={"order": 2})
    outcome = train_run(config, tmp_path / "run", show_progress=False)
    outcome["eval"]["nll"] = float("nan")  # as a diverged run wrote it before non-finite results were refused
    (tmp_path / "run" / "eval.json").write_text(json.dumps(outcome))
    with pytest.raises(TrainingDiverged, match="eval.json records a held-out loss of nan"):
        train_run(config, tmp_path / "run", show_progress=False)


def _train_cli(prepared, run_dir: Path, steps: int, dropout: float = 0.1) -> list[str]:
    sets = [f"transformer.{k}={v}" for k, v in TINY["transformer"].items()]
    sets[-1] = "transformer.context_length=64"
    args = [sys.executable, "-m", "scalelab", "train", "--data", str(prepared.path), "--tokens", "20000",
            "--family", "transformer", "--out", str(run_dir), "-q", "--set", f"steps={steps}", "--set",
            "batch_size=8", "--set", "eval_tokens=500", "--set", "checkpoint_every=3", "--set", "eval_every=5",
            "--set", "num_threads=1", "--set", f"transformer.dropout={dropout}"]
    for item in sets:
        args += ["--set", item]
    return args


def test_resume_after_sigkill_matches_an_uninterrupted_run(prepared, tmp_path):
    steps = 120
    whole = subprocess.run(_train_cli(prepared, tmp_path / "whole", steps), capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr
    killed_dir = tmp_path / "killed"
    process = subprocess.Popen(_train_cli(prepared, killed_dir, steps), start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pointer = killed_dir / "checkpoints" / "latest"
    signal_when(process, lambda: pointer.exists() and pointer.read_text().strip() >= "step-00000009"
                and not (killed_dir / "eval.json").exists(), signal.SIGKILL)
    process.wait()
    resumed = subprocess.run(_train_cli(prepared, killed_dir, steps), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert losses(killed_dir) == losses(tmp_path / "whole")  # exactly, step for step
    assert json.loads((killed_dir / "eval.json").read_text())["eval"] == \
        json.loads((tmp_path / "whole" / "eval.json").read_text())["eval"]


def test_ddp_two_processes_match_one(prepared, tmp_path):
    # No dropout: its masks come from per-process RNG streams, which differ between one and two processes.
    single = subprocess.run(_train_cli(prepared, tmp_path / "single", 6, dropout=0.0), capture_output=True,
                            text=True)
    assert single.returncode == 0, single.stderr
    args = _train_cli(prepared, tmp_path / "ddp", 6, dropout=0.0)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    ddp = subprocess.run(launcher + args[1:], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert losses(tmp_path / "ddp") == pytest.approx(losses(tmp_path / "single"), rel=1e-5)
    assert json.loads((tmp_path / "ddp" / "eval.json").read_text())["world_size"] == 2


def test_gradient_accumulation_matches_one_big_batch(prepared, tmp_path):
    whole = train_run(tiny(prepared, "transformer", steps=4), tmp_path / "whole", show_progress=False)
    split = train_run(tiny(prepared, "transformer", steps=4, micro_batch_size=1), tmp_path / "split",
                      show_progress=False)
    assert losses(tmp_path / "split") == pytest.approx(losses(tmp_path / "whole"), rel=1e-5)
    assert split["eval"]["nll"] == pytest.approx(whole["eval"]["nll"], rel=1e-5)


def test_force_never_clears_a_directory_that_is_not_a_run(prepared, tmp_path):
    mine = tmp_path / "project"
    for name in ("checkpoints/keep.txt", "model/keep.txt", "eval.json", "metrics.jsonl"):
        (mine / name).parent.mkdir(parents=True, exist_ok=True)
        (mine / name).write_text("the user's")
    with pytest.raises(ConfigError, match="not a scalelab run"):
        train_run(tiny(prepared, "ngram", ngram={"order": 2}), mine, force=True, show_progress=False)
    assert sorted(p.relative_to(mine).as_posix() for p in mine.rglob("*") if p.is_file()) == \
        ["checkpoints/keep.txt", "eval.json", "metrics.jsonl", "model/keep.txt"]


# -- issue 14: what a run records about itself -------------------------------------------------------------------

def test_a_run_below_min_steps_is_marked_unreliable(prepared, tmp_path):
    # 600 tokens make 18 windows of 32: 5 steps at batch 4, against min_steps = 50.
    outcome = train_run(tiny(prepared, "transformer", tokens=600, steps=None, min_steps=50), tmp_path / "run",
                        show_progress=False)
    recorded = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert recorded["reliable"] is False and recorded["min_steps"] == 50 and outcome["steps"] == 5
    assert recorded["unreliable"].startswith("5 optimizer steps, fewer than min_steps = 50")
    enough = train_run(tiny(prepared, "transformer", tokens=600, steps=None, min_steps=5, batch_size=4),
                       tmp_path / "enough", show_progress=False)
    assert enough["reliable"] is True and enough["unreliable"] is None


def test_fixed_epochs_record_tokens_seen_as_d_over_u_unique(prepared, tmp_path):
    outcome = train_run(tiny(prepared, "transformer", tokens=1000, steps=None, epochs=2), tmp_path / "run",
                        show_progress=False)
    # Two passes: D counts the tokens seen, U the unique ones, so the fit treats it as repeated data.
    assert (outcome["D"], outcome["U"]) == (2000, 1000)
    assert outcome["epochs"] == pytest.approx(2.0)
    assert outcome["tokens_seen"] == 2 * (999 // 32) * 32


def test_an_ngram_is_refused_repeated_data(prepared, tmp_path):
    with pytest.raises(ConfigError, match=r"unique_tokens \(1000\) below tokens \(4000\): the ngram family is "
                                          r"fitted on unique tokens only"):
        validate(TrainConfig, {"data": str(prepared.path), "family": "ngram", "tokens": 4000, "unique_tokens": 1000})
    tiny(prepared, "ngram", tokens=4000, unique_tokens=4000)  # U = D is no repetition
    result = subprocess.run([sys.executable, "-m", "scalelab", "train", "--data", str(prepared.path), "--family",
                             "ngram", "--tokens", "4000", "--set", "unique_tokens=1000", "--out", str(tmp_path / "r")],
                            capture_output=True, text=True, timeout=300)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and "never on repeated data" in lines[0], result.stderr
    assert not (tmp_path / "r").exists()
