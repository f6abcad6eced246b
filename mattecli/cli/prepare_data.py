"""`matte prepare-data` — not built yet (issue [Data])."""

import typer

from mattecli.cli._stub import not_built


def main(args: list[str] = typer.Argument(None, hidden=True)) -> None:
    """(not built yet: issue [Data])"""
    not_built("prepare-data", "[Data]")
