"""Where an evaluation's standard errors show: `train`'s table and the study's results frame."""

import pandas as pd
import pytest

from scalelab import cli
from scalelab.study.results import ResultsStore, RunRecord

EVAL = {"nll": 3.5, "perplexity": 33.12, "bits_per_byte": 1.2, "tokens": 2000, "bytes": 8000, "split": "validation",
        "nll_se": 0.0123, "bits_per_byte_se": 0.0045, "documents": {"index": [0], "nll": [7000.0], "tokens": [2000],
                                                                    "bytes": [8000]}}
BEFORE_ERRORS = {key: EVAL[key] for key in ("nll", "perplexity", "bits_per_byte", "tokens", "bytes", "split")}


def table(outcome):
    with cli.console.capture() as captured:
        cli.print_eval(outcome, "a run")
    return captured.get()


def test_the_table_shows_each_loss_with_its_standard_error():
    shown = table({"eval": EVAL})
    assert "3.5000 ± 0.0123" in shown and "1.2000 ± 0.0045" in shown and "33.12" in shown


def test_a_result_recorded_without_errors_still_shows():
    shown = table(BEFORE_ERRORS)
    assert "3.5000" in shown and "±" not in shown


@pytest.fixture
def results(tmp_path):
    with ResultsStore(tmp_path / "results.sqlite") as store:
        store.sync_plan([RunRecord(id=run_id, config={"family": "transformer", "tokens": 100}, family="transformer",
                                   size="tiny", variant="raw", D=100, U=100, seed=0, estimated_seconds=1.0)
                         for run_id in ("new", "old")])
        for run_id, evaluation in (("new", EVAL), ("old", BEFORE_ERRORS)):
            store.claim(run_id, 1, "host")
            store.finish(run_id, {"eval": evaluation, "tokens_seen": 100, "wall_seconds": 1.0})
        yield store


def test_the_results_frame_carries_the_standard_errors(results):
    frame = results.frame().set_index("id")
    assert frame.loc["new", "loss_se"] == 0.0123 and frame.loc["new", "bits_per_byte_se"] == 0.0045
    assert pd.isna(frame.loc["old", "loss_se"]) and pd.isna(frame.loc["old", "bits_per_byte_se"])
