from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from scalelab.config import validate
from scalelab.errors import ConfigError
from scalelab.models.registry import family
from scalelab.study.api import load_spec
from scalelab.study.ladder import batch_size, learning_rate
from scalelab.study.plan import plan, run_dir
from scalelab.study.results import ResultsStore
from scalelab.study.spec import GeometricGrid, StudySpec
from scalelab.train.run import train_view

STUDIES = Path(__file__).parent.parent.parent / "studies"


def spec_dict(prepared, **kwargs):
    base = {"name": "t", "dataset": {"path": str(prepared.path)},
            "families": {"ngram": {"sizes": [3]}, "transformer": {"sizes": ["0.1M"]}},
            "data_sizes": [1000, 4000], "eval_tokens": 500}
    base.update(kwargs)
    return base


def test_geometric_grid():
    assert GeometricGrid.model_validate({"from": 1000, "to": 8000}).sizes() == [1000, 2000, 4000, 8000]
    assert GeometricGrid.model_validate({"from": 1000, "to": 4000, "per_doubling": 2}).sizes() == \
        [1000, 1414, 2000, 2828, 4000]
    assert GeometricGrid.model_validate({"from": 1000, "to": 7000}).sizes()[-1] == 4000


def test_every_shipped_preset_loads():
    presets = sorted(STUDIES.glob("*.yaml"))
    assert {p.name for p in presets} >= {"demo.yaml", "gpu.yaml"}
    for path in presets:
        spec = load_spec(path)
        assert spec.grid() and spec.families
    demo = load_spec(STUDIES / "demo.yaml")
    assert len(demo.grid()) >= 6 and demo.grid()[-1] / demo.grid()[0] >= 100
    assert set(demo.families) == {"ngram", "lstm", "transformer"}


@pytest.mark.parametrize(("change", "fragment"), [
    ({"families": {"rnn": {"sizes": ["1M"]}}}, "families.rnn"),
    ({"data_sizes": {"from": 1000, "to": 10}}, "below `from`"),
    ({"data_sizes": []}, "data-size grid is empty"),
    ({"families": {"transformer": {"sizes": ["7M"]}}}, "unknown ['7M']"),
    ({"seedz": [1]}, "seedz: unknown field"),
])
def test_invalid_specs_name_the_field(prepared, change, fragment):
    with pytest.raises(ConfigError, match=None) as info:
        validate(StudySpec, spec_dict(prepared, **change))
    assert fragment in str(info.value)


def test_data_size_larger_than_the_variant(prepared):
    too_big = prepared.train().n_tokens + 1
    spec = validate(StudySpec, spec_dict(prepared, data_sizes=[1000, too_big]))
    with pytest.raises(ConfigError, match=f"data_sizes: {too_big:,} tokens asked of variant 'raw'"):
        plan(spec, prepared, probe=False)


def test_plan_expands_the_grid_with_ladder_hyperparameters(prepared, tmp_path):
    spec = validate(StudySpec, spec_dict(prepared, out=str(tmp_path), seeds=[0, 1], unique_tokens=[1000]))
    runs = plan(spec, prepared, probe=False, notes=lambda text: None)
    # (D=1000, D=4000, and D=4000 from U=1000) x Transformer x 2 seeds, + n-gram (no seed) at D=1000 and D=4000:
    # since issue 14 the n-gram's U < D run is skipped (it was 9 runs).
    assert len(runs) == 8 and len({r.id for r in runs}) == 8
    neural = [r for r in runs if r.family == "transformer"]
    assert {(r.D, r.U) for r in neural} == {(1000, 1000), (4000, 4000), (4000, 1000)}
    assert all(r.train_config().optim.lr == learning_rate("transformer", "0.1M") for r in neural)
    assert all(r.flops > 0 and run_dir(spec.directory, r.id).parent == tmp_path / "t" / "runs" for r in neural)
    assert not (tmp_path / "t").exists()  # planning trains and writes nothing


def test_a_planned_record_round_trips_through_the_store(prepared, tmp_path):
    spec = validate(StudySpec, spec_dict(prepared, out=str(tmp_path), unique_tokens=[1000]))
    runs = plan(spec, prepared, probe=True)
    assert {(r.status, r.attempts, r.metrics, r.runner_pid) for r in runs} == {("pending", 0, None, None)}
    assert all(r.train_tokens > 0 and r.flops >= 0 and r.estimated_seconds > 0 for r in runs)
    for run in runs:  # the config as JSON is the whole run: it validates back to a config of the same id
        config = run.train_config()
        assert config.run_id(train_view(prepared, config).fingerprint) == run.id
    with ResultsStore(tmp_path / "results.sqlite") as store:
        store.sync_plan(runs)
        # The store keeps all but the plan's cost, which is the plan's alone.
        stored = [replace(run, train_tokens=None, flops=None) for run in runs]
        assert [store.get(run.id) for run in runs] == stored
        assert store.records() == stored
        assert store.get(runs[0].id).train_config() == runs[0].train_config()


def test_run_ids_are_stable_and_sensitive(prepared):
    spec = validate(StudySpec, spec_dict(prepared))
    ids = [r.id for r in plan(spec, prepared, probe=False)]
    assert ids == [r.id for r in plan(spec, prepared, probe=False)]
    changed = validate(StudySpec, spec_dict(prepared, train={"optim": {"lr": 1e-4}}))
    changed_ids = [r.id for r in plan(changed, prepared, probe=False)]
    # The learning rate matters to the neural runs only; the n-gram runs keep their ids.
    assert [a == b for a, b in zip(ids, changed_ids, strict=True)] == [True, True, False, False]
    threads = validate(StudySpec, spec_dict(prepared, train={"num_threads": 2, "device": "cpu"}))
    assert [r.id for r in plan(threads, prepared, probe=False)] == ids


def test_ladder_rules():
    # Since issue 14 the batch shrinks down to 1 for min_steps (it stopped at 4, for 40 steps a pass).
    assert batch_size(5_000, 128) == 1 and batch_size(10_000_000, 256) == 32
    assert learning_rate("transformer", "0.1M") > learning_rate("transformer", "125M")


def test_probe_estimates_time(prepared):
    spec = validate(StudySpec, spec_dict(prepared, data_sizes=[2000]))
    runs = plan(spec, prepared, probe=True)
    assert all(r.estimated_seconds is not None and r.estimated_seconds > 0 for r in runs)


def test_demo_preset_dataset_matches_the_demo_command():
    demo = yaml.safe_load((STUDIES / "demo.yaml").read_text())
    assert demo["dataset"]["prepare"]["out"] == "datasets/stdlib"


def test_family_data_sizes_override_the_study_grid(prepared):
    spec = validate(StudySpec, spec_dict(prepared, families={"ngram": {"sizes": [2], "data_sizes": [500, 800]},
                                                             "transformer": {"sizes": ["0.1M"]}}))
    runs = plan(spec, prepared, probe=False)
    assert sorted(r.D for r in runs if r.family == "ngram") == [500, 800]
    assert sorted(r.D for r in runs if r.family == "transformer") == [1000, 4000]


# -- issue 14: every point trained enough, and recorded as what it saw -------------------------------------------

def test_the_ladder_reaches_min_steps_wherever_d_allows():
    from scalelab.study.ladder import BATCH_RANGE, MIN_STEPS
    from scalelab.train.duration import windows

    assert StudySpec.model_fields["min_steps"].default == MIN_STEPS and BATCH_RANGE[0] == 1
    for tokens in [2_000, 10_000, 51_201, 100_000, 1_000_000, 10_000_000]:
        for context in (128, 256):
            per_pass, _ = windows(tokens, context)
            steps = -(-per_pass // batch_size(tokens, context))
            # A pass holds per_pass windows, one step each at batch 1: min_steps unless D holds fewer windows.
            assert steps >= min(MIN_STEPS, per_pass)
            assert batch_size(tokens, context, min_steps=50) >= batch_size(tokens, context)


def test_runs_too_small_for_min_steps_are_planned_unreliable(prepared, tmp_path):
    notes = []
    spec = validate(StudySpec, spec_dict(prepared, families={"transformer": {"sizes": ["0.1M"]}},
                                         data_sizes=[200, 1000, 8000], min_steps=20,
                                         train={"transformer": {"context_length": 32}}))
    runs = {r.D: r for r in plan(spec, prepared, probe=False, notes=notes.append)}
    configs = {d: run.train_config() for d, run in runs.items()}
    # D=8000: 249 windows of 32 tokens, batch 12 -> 21 steps. D=1000: 31 windows, batch 1 -> 31 steps.
    assert (configs[8000].batch_size, configs[1000].batch_size) == (12, 1)
    assert all(c.min_steps == 20 and c.model.context_length == 32 for c in configs.values())
    # D=200: 6 windows make 6 steps even at batch 1; the context is not shrunk to make up the count.
    assert configs[200].batch_size == 1
    assert notes == ["unreliable: transformer 0.1M raw D=200: 6 optimizer steps, fewer than min_steps = 20: "
                     "D = 200 tokens make 6 windows of 32 tokens, 6 steps per pass at batch size 1"]
    # A D below one window trains on a shorter context, which is also marked.
    shrunk = family("transformer").unreliable(configs[200].model_copy(update={"tokens": 20}))
    assert shrunk == "D = 20 tokens hold less than one window of the context (32 tokens), which shrinks to 19"


def test_converge_reaches_min_steps_through_epochs(prepared):
    spec = validate(StudySpec, spec_dict(prepared, families={"transformer": {"sizes": ["0.1M"]}},
                                         data_sizes=[1000], regime="converge",
                                         train={"transformer": {"context_length": 32}}))
    (run,) = plan(spec, prepared, probe=False, notes=lambda text: None)
    config = run.train_config()
    # 31 windows at batch 1: 31 steps an epoch, 7 epochs for 200 steps; an early-stopping check every 31 steps.
    assert (config.batch_size, config.max_epochs, config.eval_every) == (1, 20, None)
    tiny_epochs = validate(StudySpec, spec_dict(prepared, families={"transformer": {"sizes": ["0.1M"]}},
                                                data_sizes=[200], regime="converge",
                                                train={"transformer": {"context_length": 32}}))
    (run,) = plan(tiny_epochs, prepared, probe=False, notes=lambda text: None)
    config = run.train_config()
    # 6 steps an epoch: 34 epochs reach 200 steps, and a check every 20 steps, not every 6.
    assert (config.batch_size, config.max_epochs, config.eval_every) == (1, 34, 20)
    assert family("transformer").unreliable(config) is None and (run.D, run.U) == (200, 200)


def test_ngram_runs_with_repeated_data_are_skipped_with_a_message(prepared):
    notes = []
    spec = validate(StudySpec, spec_dict(prepared, unique_tokens=[1000]))
    runs = plan(spec, prepared, probe=False, notes=notes.append)
    assert {(r.D, r.U) for r in runs if r.family == "ngram"} == {(1000, 1000), (4000, 4000)}
    assert {(r.D, r.U) for r in runs if r.family == "transformer"} == {(1000, 1000), (4000, 4000), (4000, 1000)}
    assert notes[0].startswith("ngram: skipped 1 run(s) with U < D: this family is fitted on unique tokens only")
    assert not family("ngram").repeats_data and family("transformer").repeats_data


def test_converge_studies_skip_repeated_data_runs(prepared):
    notes = []
    spec = validate(StudySpec, spec_dict(prepared, families={"transformer": {"sizes": ["0.1M"]}},
                                         unique_tokens=[1000], regime="converge"))
    runs = plan(spec, prepared, probe=False, notes=notes.append)
    assert sorted((r.D, r.U) for r in runs) == [(1000, 1000), (4000, 4000)]
    assert any("converge repeats the data until early stopping" in note for note in notes)


def test_fixed_epoch_repetition_is_planned_as_u_below_d(prepared):
    spec = validate(StudySpec, spec_dict(prepared, families={"transformer": {"sizes": ["0.1M"]}},
                                         data_sizes=[4000], unique_tokens=[1000], train={"epochs": 2}))
    runs = plan(spec, prepared, probe=False, notes=lambda text: None)
    # Two passes over D: the tokens seen are 2D, of which D (or U) are unique (Muennighoff et al. 2023).
    assert sorted((r.D, r.U) for r in runs) == [(8000, 1000), (8000, 4000)]
