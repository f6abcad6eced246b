"""The `matte` command line: one module per subcommand, torch imported lazily inside commands."""

from __future__ import annotations

import codecs
import errno
import importlib
import os
import signal
import sys
import warnings
from contextlib import contextmanager
from typing import NoReturn

import typer

from mattecli import errors
from mattecli.errors import InputError, UsageError, printable, stop_requested

try:  # typer 0.2x carries its own copy of click
    from typer._click.exceptions import UsageError as _ClickUsageError
except ImportError:
    from click.exceptions import UsageError as _ClickUsageError
from typer.core import TyperCommand, TyperGroup


class _OneLineUsage(TyperGroup):
    """click shows a mistake in the command line (an unknown option, a value that does not parse)
    in three lines: the usage, a hint and the error. matte's errors are one line, the error, naming
    the command's --help. A bare command that shows its help (`matte prepare-data`) still does."""

    def parse_args(self, ctx, args):
        with _one_line_usage(ctx):
            return super().parse_args(ctx, args)

    def invoke(self, ctx):
        with _one_line_usage(ctx):  # a subcommand's own parsing happens inside its group's invoke
            return super().invoke(ctx)


class _OptionsOnce(TyperCommand):
    """click keeps the last value of an option given twice: `--out a ... --out b` wrote into b
    without a word. The last one still counts (a wrapper script may append an option to override
    its own default), but a note on stderr says so. Lists (--save, --set) and flags may repeat."""

    def parse_args(self, ctx, args):
        given, _, order = self.make_parser(ctx).parse_args(args=list(args))  # every occurrence, in order
        ctx.meta[_GIVEN] = given  # the values as typed, for a value out of its range (`_range_message`)
        seen, twice = set(), []
        for param in order:
            if param in seen and param not in twice and not (getattr(param, "multiple", False)
                                                             or getattr(param, "is_flag", False)):
                twice.append(param)
            seen.add(param)
        rest = super().parse_args(ctx, args)
        for param in twice:
            print(printable(f"matte: note: {param.opts[0]} given more than once: the last counts "
                            f"({ctx.params.get(param.name)})"), file=sys.stderr)
        return rest


@contextmanager
def _one_line_usage(ctx):
    try:
        yield
    except _ClickUsageError as err:
        if type(err).__name__ == "NoArgsIsHelpError":
            raise
        if err.ctx is not None:
            where = err.ctx.command_path
        else:  # some parse errors carry no context: the subcommand being parsed, if any
            where = " ".join(filter(None, (ctx.command_path, ctx.invoked_subcommand)))
        message = _range_message(err)
        if message is not None:  # as matte's own checks word it ("--workers must be at least 1, not 0")
            raise UsageError(message) from None
        message = err.format_message()
        if type(err).__name__ == "NoSuchOption":  # difflib's nearest name can mislead: export --recipe got --device
            owners = _commands_taking(err.option_name, ctx.find_root().command)
            if owners:
                owners = ", ".join(owners[:-1]) + " and " * (len(owners) > 1) + owners[-1]
                message = f"No such option: {err.option_name} (an option of {owners})"
        raise UsageError(f"{message} (see {where} --help)") from None


_GIVEN = "matte.given"


def _range_message(err) -> str | None:
    """An integer option outside its range, in words that do not change with typer's release
    (click's "0 is not in the range x>=1", pydantic's "Input should be greater than or equal to 1");
    None for any other mistake."""
    param = getattr(err, "param", None)
    if type(err).__name__ != "BadParameter" or param is None or err.ctx is None:
        return None
    low = getattr(param, "min", getattr(getattr(param, "type", None), "min", None))  # typer 0.2x, or click's
    high = getattr(param, "max", getattr(getattr(param, "type", None), "max", None))  # IntRange
    try:
        value = int(err.ctx.meta.get(_GIVEN, {}).get(param.name))
    except (TypeError, ValueError):  # not a whole number: a mistake of another kind
        return None
    if (low is None or value >= low) and (high is None or value <= high):
        return None
    name = param.opts[0]
    if high is None:
        return f"{name} must be at least {low}, not {value}"
    if low is None:
        return f"{name} must be at most {high}, not {value}"
    return f"{name} must be from {low} to {high}, not {value}"


def _commands_taking(option: str, group, path: str = "matte") -> list[str]:
    """The subcommands (`matte train`, `matte prepare-data adobe`) that take `option` as spelt."""
    found = []
    for name, command in sorted(group.commands.items()):
        if hasattr(command, "commands"):  # prepare-data's datasets
            found += _commands_taking(option, command, f"{path} {name}")
        elif any(option in param.opts + param.secondary_opts for param in command.params):
            found.append(f"{path} {name}")
    return found


app = typer.Typer(
    cls=_OneLineUsage,
    name="matte",
    help="Trimap-based deep image matting: IndexNet, A2U and TCP, from data to ONNX (and TensorRT, unverified).",
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
    ("trimap", "trimap"),
    ("recipes", "recipes"),
]


def _print_version(value: bool) -> None:
    if value:
        from mattecli import __version__

        print(f"matte {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                       help="Print matte's version and exit.")) -> None:
    """Trimap-based deep image matting: IndexNet, A2U and TCP, from data to ONNX (and TensorRT, unverified)."""


for _name, _module in COMMANDS:
    _mod = importlib.import_module(f"mattecli.cli.{_module}")
    if hasattr(_mod, "app"):  # a command with subcommands (prepare-data)
        for _info in _mod.app.registered_commands:
            _info.cls = _OptionsOnce if _info.cls in (None, TyperCommand) else _info.cls
        app.add_typer(_mod.app, name=_name)
    else:
        app.command(_name, cls=_OptionsOnce, context_settings=getattr(_mod, "CONTEXT_SETTINGS", None))(_mod.main)


def _started_with(err: BaseException | None, kind: type[BaseException]) -> bool:
    """Whether a chain of exceptions started with one of `kind` (Ctrl-C, a closed pipe)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, kind):
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return False


def _path_options(args: list[str]) -> set[str]:
    """The options of the command named in `args` that take a path (`--out`, `--images`, ...)."""
    import inspect

    module = dict(COMMANDS).get(args[0]) if args else None
    if module is None:
        return set()
    mod = importlib.import_module(f"mattecli.cli.{module}")
    callback = getattr(mod, "main", None)
    if hasattr(mod, "app"):  # prepare-data SOURCE
        callback = next((c.callback for c in mod.app.registered_commands if args[1:2] == [c.name]), None)
    if callback is None:
        return set()
    return {decl for p in inspect.signature(callback).parameters.values() if "Path" in str(p.annotation)
            for decl in getattr(p.default, "param_decls", None) or ()}


def refuse_empty_paths(args: list[str]) -> None:
    """pathlib reads "" as the current folder, so `--out "$OUT"` with OUT unset wrote into it and
    `--images ""` read it: an empty path is a usage error.

    Raises:
        UsageError: naming the option.
    """
    paths = _path_options(args)
    for i, arg in enumerate(args):
        name, eq, value = arg.partition("=")
        if name in paths and (value == "" if eq else args[i + 1:i + 2] == [""]):
            raise UsageError(f"{name}: an empty path (an unset variable?); write . for the current folder")


_NO_ROOM = {errno.ENOSPC, errno.EDQUOT}


def _drop_stdout() -> None:
    """Point stdout at /dev/null, so that flushing it at exit does not fail a second time."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _terminate(signum, frame) -> None:
    """SIGTERM (a scheduler pre-empting a job, `timeout`, torchrun stopping its workers) and SIGHUP
    (a closing terminal) end a command as Ctrl-C does, so that nothing half-written is left; each
    was an instant death that left temporary files for a later run to clear. Ctrl-C (SIGINT) is
    recorded too: a KeyboardInterrupt that a library swallows still stops the command."""
    errors.STOP_SIGNALS.append(signum)
    if not errors.stop_is_deferred():  # else raised when the deferred block ends
        raise KeyboardInterrupt


def _interrupted() -> NoReturn:
    if errors.STOP_SIGNALS and errors.STOP_SIGNALS[0] != signal.SIGINT:
        signum = errors.STOP_SIGNALS[0]
        hung_up = signum == getattr(signal, "SIGHUP", None)
        try:  # after a hang-up the terminal may be gone (EIO)
            print("matte: hung up" if hung_up else "matte: terminated", file=sys.stderr)
        except OSError:
            pass
        sys.exit(128 + signum)  # 143 (SIGTERM) or 129 (SIGHUP), as a shell reports a process the signal ended
    print("matte: interrupted", file=sys.stderr)
    sys.exit(130)


def _pipe_closed() -> NoReturn:
    """The reader of stdout went away (`matte recipes | head -1`): end quietly, as a command that
    SIGPIPE ends, with 141 (128 + SIGPIPE) and no traceback; stdout goes to /dev/null so that the
    flush at exit does not fail again."""
    _drop_stdout()
    sys.exit(141)  # 128 + SIGPIPE (13), spelt out: Windows has no signal.SIGPIPE


def _unicode_stdout() -> None:
    """Windows writes a redirected stdout in the locale's code page (cp1252), strictly: a file name
    such as 猫.png in `matte infer ... > log` was a UnicodeEncodeError traceback, and
    `matte recipes X > mine.yaml` wrote bytes that the recipe loader (UTF-8) refuses. Redirected,
    stdout is UTF-8, as matte's files are; on a terminal what it cannot show is escaped, as stderr is."""
    out = sys.stdout
    try:
        if out.isatty():
            out.reconfigure(errors="backslashreplace")
        elif codecs.lookup(out.encoding).name != "utf-8":
            out.reconfigure(encoding="utf-8")
    except (AttributeError, ValueError, LookupError):  # closed (`>&-`), replaced, or not a text file
        pass


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2; Ctrl-C says
    "matte: interrupted" and exits with 130; SIGTERM says "matte: terminated" and exits with 143, SIGHUP
    "matte: hung up" and 129."""
    errors.STOP_SIGNALS.clear()
    signal.signal(signal.SIGTERM, _terminate)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not where the shell ignores it (`cmd &`)
        signal.signal(signal.SIGINT, _terminate)
    # SIGHUP (the terminal or ssh session closing) the same, unless the command was started to
    # outlive it (`nohup` ignores it, and so does matte then)
    hangup = getattr(signal, "SIGHUP", None)  # none on Windows
    if hangup is not None and signal.getsignal(hangup) is signal.SIG_DFL:
        signal.signal(hangup, _terminate)
    _unicode_stdout()
    # Pillow warns of a possible decompression bomb over 89 MP (a 16K photo is 133 MP) in two lines
    # that name no file; the images it refuses, over twice that, are named by the readers
    warnings.filterwarnings("ignore", message=r"Image size \(\d+ pixels\) exceeds limit of \d+ pixels")
    # and of a damaged EXIF block, also in two lines that name no file: such a file is read with the
    # orientation tag Pillow could still read, or as stored when none, as a file without a tag is
    warnings.filterwarnings("ignore", message=r"(Possibly )?[Cc]orrupt EXIF")
    # (a tag whose data runs past the block's end, or of more values than it holds: the same damaged
    # EXIF, the same two lines; the tag is skipped, or its first value read)
    warnings.filterwarnings("ignore", message=r"Tag data larger than file|Metadata Warning, tag \d+ had too many")
    # and that a palette image with transparency "should be converted to RGBA images": matte converts
    # it (a palette cut-out's alpha is its matte), so the advice is for no one
    warnings.filterwarnings("ignore", message="Palette images with Transparency expressed in bytes")
    # OpenCV decodes PNGs first and, on a damaged one, logged lines such as "[ERROR:0@19.9] global
    # grfmt_png.cpp:297 readHeader IHDR chunk shall be first" that name no file; Pillow then decodes
    # it and the reader names the file with the reason. Read when cv2 is imported, later.
    os.environ.setdefault("OPENCV_LOG_LEVEL", "SILENT")
    try:
        refuse_empty_paths(sys.argv[1:])
        app()
    except (UsageError, InputError) as err:
        if stop_requested(err):  # a library turned the KeyboardInterrupt into its own error
            _interrupted()  # (safetensors while reading weights: "not a readable .safetensors file")
        # under torchrun every process parses the same command line: a usage error is said once per
        # machine, by local rank 0 (an input error may be one rank's own, and every rank says its own)
        if not (isinstance(err, UsageError) and os.environ.get("LOCAL_RANK", "0") != "0"):
            print(printable(f"matte: error: {err}"), file=sys.stderr)
        sys.exit(2 if isinstance(err, UsageError) else 1)
    except BrokenPipeError:  # before OSError, its base class, whose handler would re-raise it
        _pipe_closed()
    except OSError as err:
        if err.errno not in _NO_ROOM and not err.filename:
            raise
        # a full disk or quota, where no per-file handler caught it (stdout redirected to a full
        # disk, say), or a file the system would not let matte write (on Windows, the --csv that a
        # spreadsheet holds open): one line, not a traceback
        # no file name: a write to stdout (`> file` on a full disk; stderr could not say anything)
        where = f"{err.filename}: " if err.filename else "standard output: " if err.errno in _NO_ROOM else ""
        print(printable(f"matte: error: {where}{err.strerror or err}"), file=sys.stderr)
        if err.errno in _NO_ROOM:
            _drop_stdout()  # what is still buffered for stdout cannot be written either
        sys.exit(1)
    except RuntimeError as err:
        from concurrent.futures import BrokenExecutor

        # a worker process was killed (the out-of-memory killer, say) or died starting: one line,
        # not the traceback of BrokenProcessPool (eval, prepare-data) or of train's DataLoader
        if not (isinstance(err, BrokenExecutor) or str(err).startswith("DataLoader worker (pid")):
            raise
        print("matte: error: a worker process ended abruptly (out of memory, or killed); run again with "
              "fewer --workers", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:  # outside a command (while parsing, say)
        _interrupted()
    except SystemExit as done:
        # Typer turns a KeyboardInterrupt inside a command into a silent exit 130
        if done.code == 130 and _started_with(done, KeyboardInterrupt):
            _interrupted()
        # click and rich exit 1 when stdout's reader went away
        if done.code == 1 and _started_with(done, BrokenPipeError):
            _pipe_closed()
        # output still buffered fails here, not in the flush at exit (stdout is None when closed: `>&-`)
        if done.code in (0, None) and sys.stdout is not None:
            try:
                sys.stdout.flush()
            except BrokenPipeError:
                _pipe_closed()
        if errors.STOP_SIGNALS:  # the signal's KeyboardInterrupt was swallowed (raised in a __del__, as
            _interrupted()       # llvmlite's during numba's first compile): the command ran on, but exits as stopped
        raise
