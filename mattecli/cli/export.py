"""`matte export` — not built yet (issue [Export])."""

import typer

from mattecli.cli._stub import CONTEXT_SETTINGS, not_built  # noqa: F401


def main(ctx: typer.Context) -> None:
    """(not built yet: issue [Export])"""
    not_built("export", "[Export]")
