"""The closed sets of values a user chooses from, defined once: the configs validate them and the command line
offers them as choices (typer checks a Literal-typed option). Kept free of heavy imports, so that `--help` stays
fast. The loss units are laws/units.py's."""

from typing import Literal

Regime = Literal["single-pass", "converge"]
EvalSplit = Literal["validation", "test"]
Backend = Literal["local", "ray"]
Quantize = Literal["int8"]
Scale = Literal["cpu", "gpu"]
ExportFormat = Literal["csv", "parquet"]
