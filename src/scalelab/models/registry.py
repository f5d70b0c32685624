"""The model families, by name. Each is one adapter module under `scalelab/families/` (a `ModelFamily`: its
config, sizes, cost, training, loading, scoring, export and serving); adding a family is that module and one line
in FAMILIES. Nothing else in scalelab branches on a family's name: it asks the family's adapter.

Adapters are imported when first asked for, as they reach into every layer (training, deployment) that this
table sits below.
"""

from __future__ import annotations

import importlib
from functools import cache
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import AfterValidator

from scalelab.errors import ConfigError

if TYPE_CHECKING:
    from scalelab.families.base import ModelFamily

FAMILIES: dict[str, str] = {
    "ngram": "scalelab.families.ngram:NgramFamily",
    "lstm": "scalelab.families.lstm:LSTMFamily",
    "transformer": "scalelab.families.transformer:TransformerFamily",
}
DEFAULT = "transformer"


def names() -> list[str]:
    return list(FAMILIES)


def unknown(name: object) -> str:
    return f"unknown model family {name!r}; families: {', '.join(FAMILIES)}"


def _registered(name: str) -> str:
    if name not in FAMILIES:
        raise ValueError(unknown(name))
    return name


# A config field naming a family: any name registered when the config is validated.
FamilyName = Annotated[str, AfterValidator(_registered)]


def family(name: str) -> ModelFamily:
    if name not in FAMILIES:
        raise ConfigError(unknown(name))
    return _adapter(FAMILIES[name])


@cache
def _adapter(location: str) -> ModelFamily:
    module, _, attribute = location.partition(":")
    return getattr(importlib.import_module(module), attribute)()


def family_of(config: Any) -> ModelFamily:
    """The family whose config `config` is."""
    for name in FAMILIES:
        if isinstance(config, family(name).config):
            return family(name)
    raise ConfigError(f"{type(config).__name__} is no model family's config")


def presets(name: str) -> dict[str, dict[str, Any]]:
    """Size label -> the config fields it stands for."""
    return family(name).presets()
