import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from scalelab.study.api import load_results, load_spec, run_study
from scalelab.study.results import ResultsStore
from tests.conftest import run_cli, signal_when
from tests.test_cli import assert_user_error


def write_spec(tmp_path: Path, prepared, name="s", **kwargs) -> Path:
    spec = {"name": name, "out": str(tmp_path / "out"), "dataset": {"path": str(prepared.path)},
            "families": {"ngram": {"sizes": [2, 3]}, "transformer": {"sizes": ["0.1M"]}},
            "data_sizes": [1500, 3000], "eval_tokens": 400,
            "train": {"transformer": {"context_length": 32}, "eval_batch_size": 64}, "resources": {"workers": 2}}
    spec.update(kwargs)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def store_of(path: Path) -> ResultsStore:
    return ResultsStore(load_spec(path).directory / "results.sqlite")


def test_study_run_status_export_and_rerun(prepared, tmp_path):
    path = write_spec(tmp_path, prepared)
    plan = run_cli("study", "plan", str(path))
    assert plan.returncode == 0, plan.stderr
    assert "6 runs" in plan.stdout and "estimated:" in plan.stdout
    assert not (tmp_path / "out").exists()
    result = run_cli("study", "run", str(path), "-q")
    assert result.returncode == 0, result.stderr
    assert "6 done" in result.stdout
    with store_of(path) as store:
        assert {r.attempts for r in store.records()} == {1}
        stamps = {r.id: r.finished_at for r in store.records()}
    again = run_cli("study", "run", str(path), "-q")
    assert again.returncode == 0 and "6 done" in again.stdout
    with store_of(path) as store:
        assert {r.id: r.finished_at for r in store.records()} == stamps  # nothing was repeated
    status = run_cli("study", "status", str(path))
    assert status.returncode == 0 and "6 runs" in status.stdout
    export = run_cli("study", "export", str(tmp_path / "out" / "s"), "--format", "csv")
    assert export.returncode == 0, export.stderr
    frame = load_results(tmp_path / "out" / "s")
    assert len(frame) == 6 and frame["bits_per_byte"].notna().all()
    assert set(frame["family"]) == {"ngram", "transformer"}
    assert (tmp_path / "out" / "s" / "results.csv").is_file()


# A long diverging run stops mid-way; a short one (2 steps) used to finish with a NaN evaluation, recorded done.
@pytest.mark.parametrize("duration", [{}, {"steps": 2, "eval_every": 1}])
def test_failure_is_recorded_and_the_study_goes_on(prepared, tmp_path, duration):
    path = write_spec(tmp_path, prepared, families={"ngram": {"sizes": [2]},
                                                    "transformer": {"sizes": ["0.1M"],
                                                                    "train": {"optim": {"lr": 1e30}, **duration}}},
                      data_sizes=[3000])
    counts = run_study(load_spec(path), workers=1, show_progress=False)
    assert counts["done"] == 1 and counts["failed"] == 1
    with store_of(path) as store:
        failed = store.records(status="failed")[0]
    assert "TrainingDiverged" in failed.error and failed.family == "transformer"
    status = run_cli("study", "status", str(path))
    assert "failed" in status.stdout and "training diverged" in status.stdout
    counts = run_study(load_spec(path), workers=1, retry_failed=True, show_progress=False)
    with store_of(path) as store:
        assert store.records(status="failed")[0].attempts == 2


def mid_run(runs: Path) -> bool:
    """A run has a checkpoint to resume from and has not finished."""
    return any(not (run / "eval.json").exists() for run in {p.parent.parent for p in runs.glob("*/checkpoints/latest")})


def test_sigkill_of_the_runner_loses_nothing(prepared, tmp_path):
    path = write_spec(tmp_path, prepared, families={"transformer": {"sizes": ["0.1M"]}},
                      data_sizes=[6000, 12000, 24000], resources={"workers": 1},
                      train={"transformer": {"context_length": 32}, "checkpoint_every": 2, "eval_every": 50,
                             "batch_size": 4})
    args = [sys.executable, "-m", "scalelab", "study", "run", str(path), "-q"]
    process = subprocess.Popen(args, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runs = load_spec(path).directory / "runs"
    # Killed once a run is done and another is mid-way, with a checkpoint to resume from.
    signal_when(process, lambda: bool(list(runs.glob("*/eval.json"))) and mid_run(runs), signal.SIGKILL)
    process.wait()
    from scalelab.study.api import status

    counts = status(path)["counts"]
    assert counts["running"] == 0 and counts["interrupted"] == 1  # its runner is dead: shown so, not as running
    result = run_cli("study", "run", str(path), "-q")
    assert result.returncode == 0, result.stderr
    with store_of(path) as store:
        records = store.records()
    assert len(records) == 3 and {r.status for r in records} == {"done"}
    assert sorted(r.attempts for r in records)[-1] == 2  # the interrupted run was claimed again, and resumed
    resumed = max(records, key=lambda r: r.attempts)
    metrics = (runs / resumed.id / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in metrics if '"loss"' in line]
    assert steps == list(range(1, len(steps) + 1))  # one line per step: nothing lost, nothing doubled


def test_ray_backend_runs_a_tiny_study(prepared, tmp_path):
    pytest.importorskip("ray")
    path = write_spec(tmp_path, prepared, families={"ngram": {"sizes": [2]}}, data_sizes=[1500, 3000],
                      resources={"backend": "ray", "num_cpus": 1})
    result = run_cli("study", "run", str(path), "-q")
    assert result.returncode == 0, result.stderr
    assert "2 done" in result.stdout


def test_invalid_specs_end_in_one_line(prepared, tmp_path):
    bad = write_spec(tmp_path, prepared, name="bad", families={"rnn": {"sizes": ["1M"]}})
    assert_user_error(run_cli("study", "plan", str(bad), "--no-probe"), "families.rnn")
    typo = write_spec(tmp_path, prepared, name="typo", seedz=[1])
    assert_user_error(run_cli("study", "run", str(typo)), "seedz: unknown field")
    big = write_spec(tmp_path, prepared, name="big", data_sizes=[10**9])
    assert_user_error(run_cli("study", "run", str(big)), "data_sizes")
    assert_user_error(run_cli("study", "status", str(tmp_path)), "no study results")


def test_ctrl_c_releases_runs_in_flight(prepared, tmp_path):
    path = write_spec(tmp_path, prepared, families={"transformer": {"sizes": ["0.1M"]}}, data_sizes=[24000],
                      resources={"workers": 1},
                      train={"transformer": {"context_length": 32}, "checkpoint_every": 2, "batch_size": 4})
    process = subprocess.Popen([sys.executable, "-m", "scalelab", "study", "run", str(path), "-q"],
                               start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # SIGINT to the whole process group is what a terminal's Ctrl-C sends.
    signal_when(process, lambda: mid_run(load_spec(path).directory / "runs"), signal.SIGINT)
    assert process.wait(timeout=60) == 130
    with store_of(path) as store:
        assert store.counts()["running"] == 0 and store.counts()["pending"] == 1
    assert run_cli("study", "run", str(path), "-q").returncode == 0
    with store_of(path) as store:
        assert store.counts()["done"] == 1


def test_status_shows_the_runs_of_a_dead_runner_as_interrupted(tmp_path):
    import os

    from scalelab.study.api import status
    from tests.study.test_results import HOST, row

    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()  # its pid now names no process: a runner killed with SIGKILL
    directory = tmp_path / "study"
    with ResultsStore(directory / "results.sqlite") as store:
        store.sync_plan([row(f"r{i}") for i in range(4)])
        store.claim("r0", ended.pid, HOST)
        store.claim("r1", os.getppid(), HOST)  # a live runner
        store.claim("r2", ended.pid, "elsewhere")  # cannot be checked from here: stays running
    info = status(directory)
    assert info["counts"] == {"pending": 1, "running": 2, "interrupted": 1, "done": 0, "failed": 0}
    shown = run_cli("study", "status", str(directory))
    assert shown.returncode == 0, shown.stderr
    assert "interrupted" in shown.stdout
    assert (f"interrupted transformer tiny raw D=20,000: its runner (pid {ended.pid} on {HOST}) is gone"
            in " ".join(shown.stdout.split()))


def test_status_of_a_missing_study_says_so(tmp_path):
    for missing in (tmp_path / "nowhere", tmp_path / "nowhere.yaml"):
        assert_user_error(run_cli("study", "status", str(missing)),
                          f"no study at {missing}: neither a study directory nor a spec")
