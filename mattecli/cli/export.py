"""`matte export` — not built yet (issue [Export])."""

import typer

from mattecli.cli._stub import not_built


def main(args: list[str] = typer.Argument(None, hidden=True)) -> None:
    """(not built yet: issue [Export])"""
    not_built("export", "[Export]")
