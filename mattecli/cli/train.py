"""`matte train` — not built yet (issue [Training])."""

import typer

from mattecli.cli._stub import CONTEXT_SETTINGS, not_built  # noqa: F401


def main(ctx: typer.Context) -> None:
    """(not built yet: issue [Training])"""
    not_built("train", "[Training]")
