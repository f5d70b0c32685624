"""The demo pipeline end to end at a reduced size: the same code path as `scalelab demo`, on a small dataset."""

from pathlib import Path

from scalelab.config import validate
from scalelab.demo import demo_spec, export_best, run_demo
from scalelab.deploy.model import load_model
from scalelab.study.api import load_results
from scalelab.study.spec import StudySpec


def test_demo_pipeline_at_a_reduced_size(prepared, tmp_path):
    spec = validate(StudySpec, {
        "name": "mini", "out": str(tmp_path), "dataset": {"path": str(prepared.path)},
        "families": {"ngram": {"sizes": [2]}, "transformer": {"sizes": ["0.1M"]}},
        "data_sizes": [800, 1600, 3200, 6400, 12800], "eval_tokens": 400,
        "train": {"transformer": {"context_length": 32}}, "resources": {"workers": 2}})
    index, analysis = run_demo(spec, show_progress=False)
    page = index.read_text(encoding="utf-8")
    assert index == tmp_path / "mini" / "report" / "index.html"
    assert {g.family for g in analysis.groups} == {"ngram", "transformer"}
    assert analysis.sentences and analysis.sentences[0][1:20] in page  # the page capitalises sentences
    model_dir, run = export_best(spec)
    transformers = load_results(spec.directory).query("family == 'transformer'")
    assert run["loss"] == transformers["loss"].min() and model_dir == tmp_path / "mini" / "model"
    assert load_model(model_dir).family == "transformer"
    assert export_best(spec)[0] == model_dir  # a rerun of the demo replaces its own export


def test_demo_presets_load():
    cpu, gpu = demo_spec("cpu"), demo_spec("gpu")
    assert cpu.dataset.prepare == gpu.dataset.prepare  # one prepared corpus serves both scales
    assert set(cpu.families) == {"ngram", "lstm", "transformer"}
    assert gpu.train["device"] == "cuda"


def test_the_studies_folder_is_the_shipped_presets():
    """One copy of the presets: `studies/` in the repository is a link to those the package ships."""
    from importlib import resources

    root = Path(__file__).resolve().parents[1]
    shipped = Path(str(resources.files("scalelab") / "presets"))
    assert (root / "studies").resolve() == shipped.resolve()
    assert sorted(p.name for p in shipped.glob("*.yaml")) == ["demo-gpu.yaml", "demo.yaml", "gpu.yaml"]


def test_make_demo_installs_no_test_tools():
    """`make demo` installs scalelab's runtime alone: pytest, Ray and the other tools are `make test`'s."""
    import re

    import tomllib

    root = Path(__file__).parent.parent
    project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    runtime = {re.split(r"[<>=!~\[ ]", spec, maxsplit=1)[0].lower() for spec in project["dependencies"]}
    tools = {re.split(r"[<>=!~\[ ]", spec, maxsplit=1)[0].lower() for spec in project["optional-dependencies"]["dev"]}
    assert runtime.isdisjoint(tools) and {"pytest", "ray"} <= tools
    makefile = (root / "Makefile").read_text(encoding="utf-8")
    demo_stamp = re.search(r"^demo: (\S+)$", makefile, re.M).group(1)
    recipe = re.search(rf"^{re.escape(demo_stamp)}:.*\n((?:\t.*\n)+)", makefile, re.M).group(1)
    assert "pip install --quiet -e ." in recipe and "[dev]" not in recipe
    assert re.search(r"^test: \$\(DEV_STAMP\)$", makefile, re.M)
