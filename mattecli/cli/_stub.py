"""Helper for subcommands that are not built yet: they say so in one line instead of pretending."""

import sys

# accept any options, so the command can say it is not built rather than reject them
CONTEXT_SETTINGS = {"allow_extra_args": True, "ignore_unknown_options": True}


def not_built(command: str, issue: str) -> None:
    print(f"matte {command}: not built yet (tracked in issue {issue})", file=sys.stderr)
    sys.exit(2)
