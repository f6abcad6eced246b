"""Errors a user can act on: the CLI prints them on one line, without a traceback."""


class UsageError(Exception):
    """Bad usage: unknown recipe, missing folder, contradictory options (exit code 2)."""


class InputError(Exception):
    """One input (a file) is bad; a batch names it and goes on with the others."""

    def __init__(self, path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
