"""`matte eval` — not built yet (issue [Metrics])."""

import typer

from mattecli.cli._stub import CONTEXT_SETTINGS, not_built  # noqa: F401


def main(ctx: typer.Context) -> None:
    """(not built yet: issue [Metrics])"""
    not_built("eval", "[Metrics]")
