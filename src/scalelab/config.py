"""Typed configs: pydantic models loaded from YAML, with dotted overrides (`--set split.validation=0.05`).

Every command layers a config the same way, each layer over the one before (`layer`):

    the config's defaults  <  the YAML file (--config)  <  --set overrides  <  the command's own flags

so a flag such as `--tokens 2M` always wins, and `--set` adjusts a shared file for one run. Validation happens
once, here at the boundary; every problem found is reported together in one ConfigError.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from scalelab.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for every config: unknown fields are errors, so a typo never passes silently."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a", "b", "c"], value), the value read as YAML (numbers, bools, lists)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} is not of the form key.path=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return [part.strip() for part in key.split(".")], value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of `data` with each dotted override set, creating nested mappings as needed.

    A numeric part indexes a list: `sources.0.text_field=content`.
    """
    merged = copy.deepcopy(data)
    for item in overrides:
        path, value = parse_override(item)
        node: Any = merged
        for depth, part in enumerate(path[:-1]):
            node = _child(node, part, ".".join(path[: depth + 1]))
        _assign(node, path[-1], value, item)
    return merged


def _child(node: Any, part: str, where: str) -> Any:
    if isinstance(node, list):
        return node[_index(node, part, where)]
    child = node.get(part)
    if not isinstance(child, (dict, list)):
        child = {}
        node[part] = child
    return child


def _assign(node: Any, part: str, value: Any, item: str) -> None:
    if isinstance(node, list):
        node[_index(node, part, item)] = value
    else:
        node[part] = value


def _index(node: list[Any], part: str, where: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"override {where!r}: {part!r} is not an index of a list of {len(node)} item(s)")
    return int(part)


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level, not {type(data).__name__}")
    return data


def validate(model: type[M], data: dict[str, Any], *, origin: str = "config") -> M:
    """Build `model` from plain data; all validation problems become one ConfigError naming each field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid {origin}: {describe_validation_error(exc)}") from None


def describe_validation_error(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(top level)"
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown field"
        elif "input" in err and err["type"] not in ("missing",) and not isinstance(err["input"], dict):
            message = f"{message} (got {err['input']!r})"
        problems.append(f"{field}: {message}")
    return "; ".join(problems)


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`extra` over `base`, mapping by mapping; neither is modified."""
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def layer(path: Path | None = None, overrides: list[str] | None = None,
          flags: dict[str, Any] | None = None) -> dict[str, Any]:
    """The YAML file, then the dotted overrides, then the flags (nested mappings, None values left out): the
    data a config is validated from, its defaults filling whatever no layer gives."""
    data = read_yaml(path) if path is not None else {}
    data = apply_overrides(data, overrides or [])
    return deep_merge(data, _given(flags or {}))


def _given(flags: dict[str, Any]) -> dict[str, Any]:
    given = {}
    for key, value in flags.items():
        if isinstance(value, dict):
            value = _given(value)
        if value is not None and value != {}:
            given[key] = value
    return given


def load(model: type[M], path: Path | None = None, overrides: list[str] | None = None,
         flags: dict[str, Any] | None = None) -> M:
    """`model` from its layers: defaults < the YAML file < dotted overrides < flags."""
    return validate(model, layer(path, overrides, flags), origin=str(path) if path else "config")
