"""`matte prepare-data` — not built yet (issue [Data])."""

import typer

from mattecli.cli._stub import CONTEXT_SETTINGS, not_built  # noqa: F401


def main(ctx: typer.Context) -> None:
    """(not built yet: issue [Data])"""
    not_built("prepare-data", "[Data]")
