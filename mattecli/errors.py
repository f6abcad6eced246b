"""Errors a user can act on: the CLI prints them on one line, without a traceback."""

import threading
from contextlib import contextmanager


class UsageError(Exception):
    """Bad usage: unknown recipe, missing folder, contradictory options (exit code 2)."""


class InputError(Exception):
    """One input (a file) is bad; a batch names it and goes on with the others."""

    def __init__(self, path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


# Signals that asked the running command to stop: the CLI's handlers (SIGINT, SIGTERM, SIGHUP) record
# one here, then raise KeyboardInterrupt, unless the main thread is inside `stop_deferred`.
STOP_SIGNALS: list[int] = []
_DEFERRED = [0]  # depth of `stop_deferred` blocks in the main thread


def stop_is_deferred() -> bool:
    """Whether a stop signal must only be recorded now (the handler's question)."""
    return _DEFERRED[0] > 0


@contextmanager
def stop_deferred():
    """Run a block that a KeyboardInterrupt must not enter: a stop signal arriving in it is recorded
    and raised when the block ends. numba compiles PyMatting's kernels at their first call through
    callbacks from LLVM: an interrupt raised in one was lost (the command ran on and exited 0) or left
    LLVM broken (a segmentation fault). Signals reach the main thread only; elsewhere this is a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _DEFERRED[0] += 1
    try:
        yield
    finally:
        _DEFERRED[0] -= 1
    if STOP_SIGNALS and not _DEFERRED[0]:
        raise KeyboardInterrupt


def stop_requested(err: BaseException) -> bool:
    """Whether `err` stands for a request to stop rather than a failure: a library can turn the
    KeyboardInterrupt of Ctrl-C or SIGTERM into an error of its own (safetensors made one a
    ValueError). Seen by a signal recorded in STOP_SIGNALS, or by a KeyboardInterrupt in the
    error's cause or context."""
    if STOP_SIGNALS:
        return True
    seen = err
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def raise_if_stop(err: BaseException) -> None:
    """A Ctrl-C or SIGTERM that a library turned into an error of its own stops the run, as it
    would have: it is not that input's failure, for a batch to record and go on."""
    if stop_requested(err):
        raise KeyboardInterrupt from err


def compile_failure(err: BaseException) -> str | None:
    """torch.compile's reason, in one line, when `err` is its failure to build a model (no C++
    compiler: Windows without MSVC, macOS without Xcode's tools); else None. Its errors come after
    minutes of trying and run to many lines."""
    import sys

    dynamo = sys.modules.get("torch._dynamo.exc")  # loaded once torch.compile has run
    if dynamo is None or not isinstance(err, dynamo.TorchDynamoException):
        return None
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


# control characters (C0, DEL, C1) as Python escapes them: \n, \t, \x1b, \x9b; and the
# bidirectional overrides and isolates, which show 'x\u202egnp.exe' as 'xexe.png'
_ESCAPES = {code: repr(chr(code))[1:-1] for code in (*range(0x20), *range(0x7F, 0xA0))}
_ESCAPES |= {code: f"\\u{code:04x}" for code in (0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))}


def printable(text: object) -> str:
    """`text` (a message, a file name) with its control characters escaped, for one line on a
    terminal or in a log: a file named by a stranger ('x\\x1b[2J.png', a name holding a newline and
    'matte: failed: ...') printed as it is clears the screen, retitles the window or forges lines."""
    return str(text).translate(_ESCAPES)
