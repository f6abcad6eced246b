"""`matte infer` — not built yet (issue [Infer]). Placeholder so the CLI package imports on this branch."""

import typer

from mattecli.cli._stub import not_built


def main(args: list[str] = typer.Argument(None, hidden=True)) -> None:
    """(not built yet: issue [Infer])"""
    not_built("infer", "[Infer]")
