import pytest

from scalelab.config import apply_overrides, load, parse_override
from scalelab.data import PrepareConfig
from scalelab.errors import ConfigError


def test_parse_override_reads_yaml_values():
    assert parse_override("a.b=3") == (["a", "b"], 3)
    assert parse_override("x=[1, 2]") == (["x"], [1, 2])
    assert parse_override("flag=true") == (["flag"], True)
    assert parse_override("name=hello world") == (["name"], "hello world")
    with pytest.raises(ConfigError):
        parse_override("=3")


def test_apply_overrides_nests_without_mutating():
    base = {"split": {"validation": 0.1}}
    merged = apply_overrides(base, ["split.test=0.2", "tokenizer.kind=bytes"])
    assert merged == {"split": {"validation": 0.1, "test": 0.2}, "tokenizer": {"kind": "bytes"}}
    assert base == {"split": {"validation": 0.1}}


def test_load_layers_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("sources: [{path: stdlib}]\nout: x\nsplit: {validation: 0.1}\n")
    config = load(PrepareConfig, path, ["split.validation=0.3"])
    assert config.split.validation == 0.3 and str(config.out) == "x"


def test_all_problems_reported_at_once():
    with pytest.raises(ConfigError) as info:
        load(PrepareConfig, None, ["out=x", "sources=[]", "split.validation=2", "bogus=1"])
    message = str(info.value)
    for field in ("sources", "split.validation", "bogus: unknown field"):
        assert field in message
    assert "\n" not in message


def test_shipped_example_configs_load():
    from pathlib import Path

    for path in sorted(Path(__file__).parent.parent.glob("examples/*.yaml")):
        config = load(PrepareConfig, path)
        assert config.sources


def test_overrides_index_lists():
    base = {"sources": [{"path": "a"}, {"path": "b"}]}
    merged = apply_overrides(base, ["sources.1.text_field=content"])
    assert merged["sources"][1] == {"path": "b", "text_field": "content"}
    with pytest.raises(ConfigError, match="not an index"):
        apply_overrides(base, ["sources.5.path=x"])


def test_layers_from_defaults_to_flags(tmp_path):
    """defaults < YAML < --set < flags: a flag always wins, --set adjusts the file."""
    from scalelab.config import layer

    path = tmp_path / "c.yaml"
    path.write_text("out: from-yaml\nworkers: 3\nsplit: {validation: 0.1, test: 0.1}\n")
    data = layer(path, ["out=from-set", "split.test=0.2"], {"out": "from-flag", "workers": None,
                                                             "split": {"validation": None}})
    assert data == {"out": "from-flag", "workers": 3, "split": {"validation": 0.1, "test": 0.2}}
    assert layer(path, ["workers=4"])["workers"] == 4


def test_the_layering_is_documented_where_it_lives():
    import scalelab.config

    assert "defaults  <  the YAML file (--config)  <  --set overrides  <  the command's own flags" in \
        scalelab.config.__doc__
