import copy
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from scalelab.errors import ConfigError, DataError
from scalelab.laws import planner
from scalelab.laws.analysis import analyse, choose_form, load_points
from tests.conftest import run_cli
from tests.test_cli import assert_user_error


def law_points(E=1.2, B=30.0, beta=0.3, variant="raw", noise=0.005, seed=0):
    rng = np.random.default_rng(seed)
    D = np.geomspace(1e4, 1e7, 12)
    loss = (E + B * D ** -beta) * np.exp(rng.normal(0, noise, D.size))
    return pd.DataFrame({"family": "transformer", "variant": variant, "D": D, "U": D, "loss": loss,
                         "bits_per_byte": loss / np.log(2) / 3.5})


def test_forms_follow_the_design():
    frame = law_points()
    assert choose_form(frame) == "data"
    assert choose_form(frame.assign(N=np.repeat([1e6, 3e6, 1e7], 4))) == "chinchilla"
    assert choose_form(frame.assign(U=frame["D"] / 4)) == "data_constrained_D"


def test_analysis_recovers_the_law_and_answers(tmp_path):
    frame = pd.concat([law_points(), law_points(B=20.0, variant="filtered", seed=1)])
    result = analyse(frame, unit="nats", bootstrap=50)
    raw = next(g for g in result.groups if g.variant == "raw")
    assert raw.form == "data"
    assert raw.fit.params["beta"] == pytest.approx(0.3, rel=0.15)
    assert raw.backtest.mean_abs_rel_error < 0.02
    assert {"data_for_loss", "doubling_gain", "saturation"} <= set(raw.answers)
    multiplier = result.multipliers[0]
    assert multiplier.base == "filtered" or multiplier.other == "filtered"
    assert multiplier.answer.value > 1  # the filtered curve lies below the raw one
    assert any("is worth about" in s for s in result.sentences)
    json.dumps(result.to_dict())


def test_fit_cli_on_a_csv(tmp_path):
    path = tmp_path / "points.csv"
    law_points().to_csv(path, index=False)
    out = tmp_path / "fits.json"
    result = run_cli("fit", str(path), "--unit", "nats", "--bootstrap", "30", "--json", str(out))
    assert result.returncode == 0, result.stderr
    assert "data law, 12 points" in result.stdout and "backtest" in result.stdout
    assert "needs about" in result.stdout
    assert json.loads(out.read_text())["groups"][0]["fit"]["params"]["beta"] > 0
    plan = run_cli("plan-data", str(path), "--unit", "nats", "--target-loss", "1.5", "--bootstrap", "30")
    assert plan.returncode == 0 and "to reach 1.5 nats" in plan.stdout


def test_fit_cli_bad_inputs(tmp_path):
    few = tmp_path / "few.csv"
    law_points().head(2).to_csv(few, index=False)
    assert_user_error(run_cli("fit", str(few), "--unit", "nats"), "no law could be fitted", "2 point(s)")
    negative = tmp_path / "negative.csv"
    law_points().assign(loss=-1.0).to_csv(negative, index=False)
    assert_user_error(run_cli("fit", str(negative), "--unit", "nats"), "no law could be fitted")
    mixed = tmp_path / "mixed.csv"
    pd.concat([law_points(), law_points(variant="tiny").head(2)]).to_csv(mixed, index=False)
    result = run_cli("fit", str(mixed), "--unit", "nats", "--bootstrap", "20")
    assert result.returncode == 0 and "transformer (tiny): no fit" in result.stdout  # one bad group, others fit
    missing = tmp_path / "missing.csv"
    law_points().drop(columns=["D"]).to_csv(missing, index=False)
    assert_user_error(run_cli("fit", str(missing)), "missing column(s) D")
    assert_user_error(run_cli("fit", str(tmp_path / "absent.csv")), "no such CSV file")
    assert_user_error(run_cli("fit", str(few), "--unit", "furlongs"), "--unit")
    with pytest.raises(DataError):
        load_points(tmp_path / "absent.csv")


def test_fit_on_a_finished_study(prepared, tmp_path):
    from tests.study.test_runner import write_spec

    path = write_spec(tmp_path, prepared, families={"ngram": {"sizes": [2]}},
                      data_sizes=[1000, 2000, 4000, 8000, 16000])
    assert run_cli("study", "run", str(path), "-q").returncode == 0
    result = run_cli("fit", str(tmp_path / "out" / "s"), "--bootstrap", "20")
    assert result.returncode == 0, result.stderr
    assert "ngram (raw): data law, 5 points" in result.stdout


def test_bad_csv_cells_name_the_row_and_column(tmp_path):
    text = law_points().to_csv(index=False).splitlines()
    header = text[0].split(",")
    cells = text[4].split(",")
    cells[header.index("loss")] = "abc"
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join([*text[:4], ",".join(cells), *text[5:]]) + "\n")
    for command in (["fit", str(bad)], ["plan-data", str(bad), "--target-loss", "1.5"]):
        assert_user_error(run_cli(*command, "--unit", "nats", "--bootstrap", "5"),
                          "bad.csv: row 4, column loss: 'abc' is not a number")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_points_fail_naming_the_row_and_column(tmp_path, value):
    frame = law_points()
    frame.loc[3, "loss"] = value
    path = tmp_path / "points.csv"
    frame.to_csv(path, index=False)
    assert_user_error(run_cli("fit", str(path), "--unit", "nats", "--bootstrap", "5"),
                      "row 4", "column loss", "not a finite number")
    with pytest.raises(DataError, match="column D"):
        analyse(law_points().assign(D=value), unit="nats", bootstrap=0)


def test_a_missing_default_unit_column_suggests_nats(tmp_path):
    path = tmp_path / "nats.csv"
    law_points().drop(columns=["bits_per_byte"]).to_csv(path, index=False)
    assert_user_error(run_cli("fit", str(path), "--bootstrap", "5"), "no 'bits_per_byte' column", "--unit nats")
    neither = tmp_path / "neither.csv"
    law_points().drop(columns=["bits_per_byte", "loss"]).to_csv(neither, index=False)
    assert_user_error(run_cli("fit", str(neither)), "missing column(s) loss", "columns are family, variant, D, U")


@pytest.mark.parametrize(("option", "value", "fragment"), [
    ("--epsilon", "0", "epsilon"), ("--epsilon", "1", "epsilon"), ("--epsilon", "nan", "epsilon"),
    ("--target", "nan", "target"), ("--target", "inf", "target"), ("--target", "0", "target"),
    ("--target", "-1", "target"), ("--bootstrap", "-1", "bootstrap"),
])
def test_fit_refuses_out_of_range_options(tmp_path, option, value, fragment):
    path = tmp_path / "points.csv"
    law_points().to_csv(path, index=False)
    result = run_cli("fit", str(path), "--unit", "nats", "--bootstrap", "5", f"{option}={value}")
    assert_user_error(result, fragment, value)
    assert "no law could be fitted" not in result.stderr and result.stdout == ""


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_plan_data_refuses_a_target_loss_that_is_not_positive_and_finite(tmp_path, value):
    path = tmp_path / "points.csv"
    law_points().to_csv(path, index=False)
    result = run_cli("plan-data", str(path), "--unit", "nats", "--bootstrap", "5", f"--target-loss={value}")
    assert_user_error(result, "target", value)


def test_analyse_validates_its_options():
    frame = law_points()
    for options, fragment in (({"epsilon": 1.5}, "epsilon"), ({"target": float("nan")}, "target"),
                              ({"bootstrap": -2}, "bootstrap"), ({"level": 1.0}, "level")):
        with pytest.raises(ConfigError, match=fragment):
            analyse(frame, unit="nats", **options)


def test_sentences_state_the_epsilon_used():
    """Neither the saturation sentences nor the summary's own say 1% when the analysis was asked for 5%."""
    frame = pd.concat([law_points(), law_points(B=20.0, variant="filtered", seed=1),
                       law_points(E=0.01, variant="unsaturated", seed=2)])
    result = analyse(frame, unit="nats", bootstrap=30, epsilon=0.05)
    assert result.epsilon == 0.05 and result.to_dict()["epsilon"] == 0.05 and result.to_dict()["target"] is None
    saturating = [s for s in result.sentences if "saturat" in s or "doubling of the data lowers" in s]
    assert any(s.startswith("the transformer (unsaturated) shows no sign of saturating") and "gaining over 5% far"
               in s for s in saturating), saturating
    assert any("saturates first" in s and s.endswith("a doubling gains under 5%") for s in saturating), saturating
    assert any("by less than 5%" in s for s in saturating), saturating
    assert not [s for s in result.sentences if re.search(r"(?<![\d.])1%", s)]


def test_analyse_builds_its_answers_without_rewriting_the_planners_or_its_input():
    """A saturation point past the horizon is stated in words, in a new answer: the planner's stays as it was, the
    frame is untouched, and the JSON is built afresh each time."""
    frame = law_points(E=0.01)
    before = copy.deepcopy(frame)
    result = analyse(frame, unit="nats", bootstrap=30, epsilon=0.05)
    assert frame.equals(before)
    (group,) = result.groups
    stated = group.answers["saturation"]
    asked = planner.saturation(group.fit, 0.05, label="the transformer (raw)")
    assert stated.value == asked.value and "shows no sign of saturating" in stated.sentence()
    assert "shows no sign" not in asked.sentence() and stated.sentence() in result.sentences
    first = result.to_dict()
    first["groups"][0]["answers"]["saturation"]["sentence"] = "changed"
    assert result.to_dict()["groups"][0]["answers"]["saturation"]["sentence"] == stated.sentence()


def test_typer_checks_the_unit_against_its_one_definition(tmp_path):
    path = tmp_path / "points.csv"
    law_points().to_csv(path, index=False)
    for command in (["fit", str(path)], ["plan-data", str(path), "--target-loss", "1.5"], ["report", str(tmp_path)]):
        assert_user_error(run_cli(*command, "--unit", "furlongs"), "--unit",
                          "'furlongs' is not one of 'nats', 'bits_per_byte'")
    assert "nats|bits_per_byte" in run_cli("fit", "--help").stdout


def test_the_unit_is_defined_once():
    """One Literal names the units; the fits, the analysis, the report and the CLI import it."""
    import scalelab
    from scalelab.laws.units import UNITS

    root = Path(scalelab.__file__).parent
    defining = [p.relative_to(root).as_posix() for p in root.rglob("*.py")
                if re.search(r"^Unit\s*=", p.read_text(encoding="utf-8"), flags=re.M)]
    assert defining == ["laws/units.py"] and UNITS == ("nats", "bits_per_byte")
