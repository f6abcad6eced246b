"""Helper for subcommands that are not built yet: they say so in one line instead of pretending."""

import sys


def not_built(command: str, issue: str) -> None:
    print(f"matte {command}: not built yet (tracked in issue {issue})", file=sys.stderr)
    sys.exit(2)
