"""`matte eval` — not built yet (issue [Metrics])."""

import typer

from mattecli.cli._stub import not_built


def main(args: list[str] = typer.Argument(None, hidden=True)) -> None:
    """(not built yet: issue [Metrics])"""
    not_built("eval", "[Metrics]")
