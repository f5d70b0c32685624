import shutil

import pytest
import yaml

from scalelab.errors import ConfigError
from scalelab.train.run import train_run
from scalelab.train.rundir import RunDir
from tests.conftest import run_cli
from tests.train.test_run import tiny


@pytest.fixture(scope="module")
def finished(prepared, tmp_path_factory):
    run = RunDir(tmp_path_factory.mktemp("rundir") / "run")
    train_run(tiny(prepared, "ngram", ngram={"order": 2}), run.path, show_progress=False)
    return run


def test_the_layout_is_the_run_directory_s(finished):
    assert finished.is_run() and finished.is_finished()
    assert finished.config_file.is_file() and finished.eval_file.is_file() and finished.model_dir.is_dir()
    assert finished.result()["run_id"] == finished.recorded()["run_id"]
    assert finished.finished_config().family == "ngram"


def test_the_dataset_is_recorded_by_absolute_path(finished, prepared):
    assert yaml.safe_load(finished.config_file.read_text())["data"] == str(prepared.path.resolve())


def test_a_run_opens_from_another_working_directory(prepared, tmp_path):
    """Trained with a relative --data from one directory, evaluated from another: the dataset is still found."""
    home = tmp_path / "project"
    home.mkdir()
    shutil.copytree(prepared.path, home / "datasets" / "tiny")
    trained = run_cli("train", "--data", "datasets/tiny", "--family", "ngram", "--size", "2", "--tokens", "4000",
                      "--out", "runs/ngram", "-q", cwd=home)
    assert trained.returncode == 0, trained.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    scored = run_cli("evaluate", str(home / "runs" / "ngram"), "--json", cwd=elsewhere)
    assert scored.returncode == 0, scored.stderr
    assert '"nll"' in scored.stdout


def test_an_unfinished_run_is_refused_where_a_finished_one_is_needed(finished, tmp_path):
    shutil.copytree(finished.path, tmp_path / "copy")
    unfinished = RunDir(tmp_path / "copy")
    unfinished.eval_file.unlink()
    with pytest.raises(ConfigError, match="has not finished training"):
        unfinished.finished_config()
    with pytest.raises(ConfigError, match="is not a scalelab run"):
        RunDir(tmp_path).config()
