"""`matte recipes` — not built yet (issue [Recipes]). Placeholder so the CLI package imports on this branch."""

import typer

from mattecli.cli._stub import not_built


def main(args: list[str] = typer.Argument(None, hidden=True)) -> None:
    """(not built yet: issue [Recipes])"""
    not_built("recipes", "[Recipes]")
