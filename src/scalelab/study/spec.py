"""A data-scaling study, declared once: which data, which variants, which model families and sizes, which data
sizes, how many seeds, how to train and evaluate, and with what resources."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from scalelab.choices import Backend, EvalSplit, Regime
from scalelab.config import StrictModel
from scalelab.data.pipeline import PrepareConfig
from scalelab.models import registry


class DatasetSpec(StrictModel):
    """A prepared dataset, or a prepare config to build it first (reused when already built)."""

    path: Path | None = Field(None, description="A prepared dataset directory.")
    prepare: PrepareConfig | None = Field(None, description="Prepare this first; its `out` is the dataset.")

    @model_validator(mode="after")
    def _one_of(self) -> DatasetSpec:
        if (self.path is None) == (self.prepare is None):
            raise ValueError("give exactly one of dataset.path and dataset.prepare")
        return self

    @property
    def directory(self) -> Path:
        return self.path if self.path is not None else self.prepare.out


class GeometricGrid(StrictModel):
    """Data sizes from `from_` to `to` (inclusive, when on the grid), `per_doubling` points per doubling."""

    from_: int = Field(alias="from", gt=1)
    to: int = Field(gt=1)
    per_doubling: float = Field(1.0, gt=0, le=8)

    model_config = {**StrictModel.model_config, "populate_by_name": True}

    @model_validator(mode="after")
    def _ordered(self) -> GeometricGrid:
        if self.to < self.from_:
            raise ValueError(f"`to` ({self.to}) is below `from` ({self.from_})")
        return self

    def sizes(self) -> list[int]:
        steps = int(math.floor(math.log2(self.to / self.from_) * self.per_doubling + 1e-9))
        return sorted({round(self.from_ * 2 ** (k / self.per_doubling)) for k in range(steps + 1)})


def _checked_grid(value: list[int] | GeometricGrid) -> list[int] | GeometricGrid:
    sizes = value if isinstance(value, list) else value.sizes()
    if not sizes:
        raise ValueError("the data-size grid is empty")
    if any(d < 2 for d in sizes):
        raise ValueError("data sizes must be at least 2 tokens")
    return value


class FamilySpec(StrictModel):
    """Sizes of one model family, and training settings that apply to it alone."""

    sizes: list[str] = Field(min_length=1, description="Size presets (n-gram: orders).")
    variants: list[str] | None = Field(None, description="Train variants for this family (default: the study's).")
    data_sizes: list[int] | GeometricGrid | None = Field(
        None, description="D values for this family (default: the study's); e.g. more for the cheap n-gram.")
    train: dict[str, Any] = Field(default_factory=dict, description="TrainConfig fields for this family "
                                                                    "(override the ladder), e.g. optim.lr.")

    @field_validator("sizes", mode="before")
    @classmethod
    def _as_strings(cls, value: Any) -> Any:
        return [str(v) for v in value] if isinstance(value, list) else value

    @field_validator("data_sizes")
    @classmethod
    def _non_empty_grid(cls, value: list[int] | GeometricGrid | None) -> list[int] | GeometricGrid | None:
        return value if value is None else _checked_grid(value)


class Resources(StrictModel):
    workers: int = Field(1, ge=1, description="Runs at once on this machine (local backend).")
    threads_per_run: int | None = Field(None, ge=1, description="torch CPU threads per run "
                                                                "(default: cores / workers).")
    backend: Backend = "local"
    ray_address: str | None = Field(None, description="Ray cluster address; default: start a local Ray.")
    num_cpus: float = Field(1, gt=0, description="Ray: CPUs a run asks for.")
    num_gpus: float = Field(0, ge=0, description="Ray: GPUs a run asks for.")


class StudySpec(StrictModel):
    """Everything `scalelab study` needs: plan, run, inspect."""

    name: str = Field(description="Names the study directory under `out`.")
    out: Path = Field(Path("studies-out"), description="Where study directories live.")
    dataset: DatasetSpec
    variants: list[str] = Field(default_factory=lambda: ["raw"], min_length=1, description="Train variants.")
    families: dict[registry.FamilyName, FamilySpec] = Field(min_length=1, description=f"Model families "
                                                                      f"({', '.join(registry.FAMILIES)}) and their "
                                                                      "sizes.")
    data_sizes: list[int] | GeometricGrid = Field(description="D values: a list, or {from, to, per_doubling}.")
    unique_tokens: list[int] | None = Field(None, description="Data-constrained runs: for each U here and each "
                                                              "D >= U, D tokens drawn by repeating the first U.")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    regime: Regime = "single-pass"
    min_steps: int = Field(200, ge=1, description="Optimizer steps every neural run should reach, through a smaller "
                                                  "batch or, when converging, more epochs; a run whose D cannot "
                                                  "reach them is marked unreliable.")
    eval_tokens: int | None = Field(50_000, gt=0, description="Held-out token budget per evaluation, met by a "
                                                              "seeded random sample of whole documents "
                                                              "(none: the whole split).")
    eval_split: EvalSplit = "validation"
    train: dict[str, Any] = Field(default_factory=dict, description="TrainConfig fields for every run.")
    resources: Resources = Field(default_factory=Resources)

    @field_validator("data_sizes")
    @classmethod
    def _non_empty_grid(cls, value: list[int] | GeometricGrid) -> list[int] | GeometricGrid:
        return _checked_grid(value)

    @model_validator(mode="after")
    def _known_sizes(self) -> StudySpec:
        for family, spec in self.families.items():
            known = registry.presets(family)
            unknown = [s for s in spec.sizes if s not in known]
            if unknown:
                raise ValueError(f"families.{family}.sizes: unknown {unknown}; presets: {', '.join(known)}")
        return self

    @property
    def directory(self) -> Path:
        return self.out / self.name

    def grid(self, family: str | None = None) -> list[int]:
        sizes = self.data_sizes
        if family is not None and self.families[family].data_sizes is not None:
            sizes = self.families[family].data_sizes
        return sorted(set(sizes if isinstance(sizes, list) else sizes.sizes()))
