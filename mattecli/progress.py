"""The progress bar every long-running command shows: what, bar, done/total, elapsed, ETA."""

from __future__ import annotations


def progress_bar(*extra_columns, console=None):
    """A rich `Progress` with matte's columns; `extra_columns` go after the count (e.g. loss)."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), *extra_columns,
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console,
                    transient=False)
