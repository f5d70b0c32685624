"""The units a loss is fitted in: one definition for the fits, the analysis, the report and the CLI. Kept apart
from fit.py so that the CLI can name the choices without importing numpy and scipy."""

from typing import Literal, get_args

Unit = Literal["nats", "bits_per_byte"]
UNITS: tuple[Unit, ...] = get_args(Unit)
