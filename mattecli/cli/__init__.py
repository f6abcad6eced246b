"""The `matte` command line: one module per subcommand, torch imported lazily inside commands."""

from __future__ import annotations

import importlib
import sys

import typer

from mattecli.errors import InputError, UsageError

app = typer.Typer(
    name="matte",
    help="Trimap-based deep image matting: IndexNet, A2U and TCP, from data to TensorRT.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

# (command name, module in mattecli.cli); each module exposes `main` and a docstring-based help.
COMMANDS = [
    ("prepare-data", "prepare_data"),
    ("train", "train"),
    ("eval", "eval"),
    ("convert", "convert"),
    ("export", "export"),
    ("infer", "infer"),
    ("bench", "bench"),
    ("recipes", "recipes"),
]

for _name, _module in COMMANDS:
    _mod = importlib.import_module(f"mattecli.cli.{_module}")
    if hasattr(_mod, "app"):  # a command with subcommands (prepare-data)
        app.add_typer(_mod.app, name=_name)
    else:
        app.command(_name, context_settings=getattr(_mod, "CONTEXT_SETTINGS", None))(_mod.main)


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2."""
    try:
        app()
    except UsageError as err:
        print(f"matte: error: {err}", file=sys.stderr)
        sys.exit(2)
    except InputError as err:
        print(f"matte: error: {err}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("matte: interrupted", file=sys.stderr)
        sys.exit(130)
