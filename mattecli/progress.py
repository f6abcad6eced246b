"""The progress bar every long-running command shows: what, bar, done/total, elapsed, ETA."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from mattecli.errors import printable


def progress_bar(*extra_columns, console=None):
    """A rich `Progress` with matte's columns, on stderr unless `console` says otherwise;
    `extra_columns` go after the count (e.g. loss)."""
    import sys

    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    # stderr by default: stdout holds a command's result (infer's summary line, export's "wrote"),
    # which scripts read, and rich writes the finished bar there too when stdout is not a terminal.
    # Lines printed to stdout while the bar runs are drawn above it only when stdout is a terminal
    # too: `matte train > log` keeps them in the log.
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), *extra_columns,
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                    console=console or Console(stderr=True), transient=False,
                    redirect_stdout=bool(getattr(sys.stdout, "isatty", lambda: False)()))


def print_table(console, table) -> None:
    """Print a rich table with every value whole. Written to a file or a pipe (no terminal: rich
    assumes 80 columns), the table is as wide as its widest row; it cut values to an ellipsis
    ("3840x2…" in `matte bench ... > log`). On a terminal too narrow for it, a lighter frame is tried,
    then each row is printed as a block of "header  value" lines: folding cells split numbers
    mid-digit ("3840 / x216 / 0").
    """
    import io

    from rich import box
    from rich.console import Console

    def width() -> int:
        return Console(width=100_000, file=io.StringIO()).measure(table).maximum

    for column in table.columns:
        column.overflow = "fold"
    if not console.is_terminal:
        console.width = max(console.width, width())
    elif width() > console.width:  # a frame of spaces: columns two apart, then one
        table.box, table.show_edge, table.pad_edge, table.collapse_padding = box.SIMPLE_HEAD, False, False, True
        for padding in ((0, 1), (0, 0)):
            table.padding = padding
            if width() <= console.width:
                break
        else:
            _print_rows(console, table)
            return
    console.print(table)


def _print_rows(console, table) -> None:
    headers = [str(column.header) for column in table.columns]
    rows = list(zip(*(column.cells for column in table.columns)))
    label = max(map(len, headers[1:]), default=0)
    lines = [str(table.title)] if table.title else []
    for row in rows:
        lines.append(f"{row[0]}")
        lines += [f"  {header:<{label}}  {value}" for header, value in zip(headers[1:], row[1:]) if str(value)]
    for line in lines:
        console.print(line, markup=False, highlight=False, soft_wrap=True)


class Tracker:
    """What `track` yields: `advance(n)` the bar, `print(text)` a line above it (or to the console)."""

    def __init__(self, progress=None, task=None, console=None):
        self.progress, self.task, self.console = progress, task, console

    def advance(self, n: int = 1) -> None:
        if self.progress is not None:
            self.progress.advance(self.task, n)

    def print(self, text: str) -> None:
        console = self.progress.console if self.progress is not None else self.console
        if console is not None:
            console.print(printable(text), markup=False, highlight=False, soft_wrap=True)


@contextmanager
def track(total: int, description: str, enabled: bool = True, console=None) -> Iterator[Tracker]:
    """A progress bar of `total` steps around a block (none when not `enabled` or `total` is 0).

    Args:
        total: steps the block will `advance`.
        description: the text left of the bar.
        enabled: False shows nothing (lines still go to `console` if one is given).
        console: the rich console to draw on (default: one on stderr).
    """
    if not enabled or total <= 0:
        yield Tracker(console=console)
        return
    with progress_bar(console=console) as progress:
        yield Tracker(progress, progress.add_task(description, total=total))
