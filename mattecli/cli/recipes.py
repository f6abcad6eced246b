"""`matte recipes` — not built on this branch (issue [Recipes])."""

import typer

from mattecli.cli._stub import not_built


def main(args: list[str] = typer.Argument(None, hidden=True)) -> None:
    """(not built on this branch: issue [Recipes])"""
    not_built("recipes", "[Recipes]")
