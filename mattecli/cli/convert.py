"""`matte convert` — not built on this branch (issue [Convert])."""

import typer

from mattecli.cli._stub import not_built


def main(args: list[str] = typer.Argument(None, hidden=True)) -> None:
    """(not built on this branch: issue [Convert])"""
    not_built("convert", "[Convert]")
