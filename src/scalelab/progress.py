"""Progress bars for long steps, drawn on stderr so stdout stays clean for results."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

stderr_console = Console(stderr=True)


@contextmanager
def progress(description: str, total: float | None = None, *, unit: str = "bytes",
             enabled: bool = True) -> Iterator[Callable[[float], None]]:
    """Yield `advance(amount)`; `unit="bytes"` shows sizes and speed, anything else a count."""
    if not enabled:
        yield lambda amount: None
        return
    amount_columns = ([DownloadColumn(), TransferSpeedColumn()] if unit == "bytes"
                      else [MofNCompleteColumn(), TextColumn(unit)])
    columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), *amount_columns,
               TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=stderr_console, transient=False) as bar:
        task = bar.add_task(description, total=total)
        yield lambda amount: bar.advance(task, amount)


def steps_progress() -> Progress:
    """The training bar: steps done of the total, a free-text `info` field (loss, speed), elapsed and left."""
    return Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=stderr_console)
