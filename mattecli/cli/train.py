"""`matte train` — not built yet (issue [Training])."""

import typer

from mattecli.cli._stub import not_built


def main(args: list[str] = typer.Argument(None, hidden=True)) -> None:
    """(not built yet: issue [Training])"""
    not_built("train", "[Training]")
