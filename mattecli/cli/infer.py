"""`matte infer` — not built on this branch (issue [Inference])."""

import typer

from mattecli.cli._stub import not_built


def main(args: list[str] = typer.Argument(None, hidden=True)) -> None:
    """(not built on this branch: issue [Inference])"""
    not_built("infer", "[Inference]")
