"""The size of a neural model: a preset named by its approximate non-embedding parameter count (Kaplan et al.
2020), or 'custom' with the shape given field by field. The LSTM and the Transformer share this rule."""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

from pydantic import Field, model_validator

from scalelab.config import StrictModel


class SizedConfig(StrictModel):
    """Subclasses declare FAMILY, PRESETS (name -> shape, a NamedTuple whose fields are also config fields, None
    unless the size is custom), REQUIRED (the fields a custom shape cannot do without) and `custom_shape`."""

    FAMILY: ClassVar[str]
    PRESETS: ClassVar[dict[str, NamedTuple]]
    REQUIRED: ClassVar[tuple[str, ...]]

    size: str = Field("1M", description="Preset named by its approximate non-embedding parameter count (0.1M to "
                                        "125M), or 'custom' to set the shape fields.")

    @model_validator(mode="after")
    def _resolvable(self) -> Any:
        shape_fields = next(iter(self.PRESETS.values()))._fields
        given = [name for name in shape_fields if getattr(self, name) is not None]
        if self.size == "custom":
            missing = [name for name in self.REQUIRED if getattr(self, name) is None]
            if missing:
                raise ValueError(f"size 'custom' needs {' and '.join(missing)}")
            self.check_shape(self.shape)
        elif self.size not in self.PRESETS:
            raise ValueError(f"unknown {self.FAMILY} size {self.size!r}; presets: {', '.join(self.PRESETS)}, "
                             "or 'custom'")
        elif given:
            raise ValueError(f"{', '.join(given)} apply only with size 'custom'; preset {self.size!r} fixes the shape")
        return self

    def custom_shape(self) -> NamedTuple:
        raise NotImplementedError

    def check_shape(self, shape: NamedTuple) -> None:
        """Refuse a custom shape the model cannot take (raise ValueError)."""

    @property
    def shape(self) -> Any:
        return self.custom_shape() if self.size == "custom" else self.PRESETS[self.size]
