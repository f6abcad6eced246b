"""Writing any file atomically, clearing what a killed writer left behind, and never writing over
an input.

Every output matte writes (images, weights, checkpoints, ONNX graphs, engines, manifests, reports)
goes through `atomic_write`: a crash or Ctrl-C leaves the old file or the new one, never half of
one, and the file gets the permissions any other program's output would (0666 less the umask).
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
import sys
from pathlib import Path


def _umask() -> int:
    """The process's umask, read where Linux shows it: os.umask can only read it by setting it,
    which for that moment gives a file any other thread of the program creates mode 0666, and at
    import time it was read once, missing a program's later os.umask."""
    try:
        with open("/proc/self/status", encoding="utf-8") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)  # elsewhere (macOS, Linux before 4.7): the only way
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write) -> Path:
    """Call `write(tmp_path)` then rename over `path`: a crash leaves the old file or the new one.

    A device, a FIFO or a path under /dev or /proc (`--json /dev/stdout`, `/dev/null`) is written
    in place: renaming over it replaced /dev/stdout, or /dev/null, with a regular file when run as
    root, and failed for anyone else."""
    path = Path(path)
    if special_file(path):
        write(path)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = fresh_name(path.parent, _temp_prefix(path), path.suffix + ".tmp")
    try:  # from the moment the file is made: a Ctrl-C during close or chmod left it (seen in CI)
        make_new(tmp)
        write(tmp)
        # made 0600 (a writer that makes the file anew, as safetensors' save_file does, makes it 0600 too):
        # outputs get the usual permissions, set after the write
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as err:
        discard(tmp)
        if isinstance(err, OSError) and err.errno is not None and (
                err.filename is None or os.fspath(err.filename) == os.fspath(tmp)):
            raise _naming(err, path) from err  # named by a temporary name no one knows, or (a full disk) by none
        raise
    return path


def fresh_name(folder: Path, prefix: str, suffix: str = "") -> Path:
    """`folder/{prefix}{64 random bits}{suffix}`: a name no file has, for a temporary file.

    The name comes before the file (`make_new`), so that the caller's cleanup can cover the moment
    the file is made: `tempfile.mkstemp` makes the file and then returns its name, and a Ctrl-C or
    SIGTERM in between (in its own Python code) left the file behind (seen in CI, under load)."""
    return Path(folder) / f"{prefix}{secrets.token_hex(8)}{suffix}"


def discard(path: Path) -> None:
    """Remove the temporary file `path` if it is there. A read-only file system refuses even to look
    (EROFS, not "no such file"): the error to report is the one that made the file fail, and a probe
    of a read-only --out was 'matte: error: OUT/.matte-write-check.1f2e...: Read-only file system',
    exit 1, instead of the usage error naming --out."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def make_new(path: Path) -> None:
    """Make `path` as a new empty file, readable by its owner only; FileExistsError if it exists."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600))


_NAME_MAX = 255  # bytes in one file name (Linux, macOS; on Windows 255 characters)


def _temp_prefix(path: Path) -> str:
    """`.{stem}.`, the stem cut short so that the temporary name (`fresh_name`'s random part, the
    suffix and `.tmp` added) fits in a file name: an output whose own name fits, a 250-byte stem,
    failed with "File name too long" for its temporary name."""
    room = _NAME_MAX - len(os.fsencode(fresh_name(Path(), "..", f"{path.suffix}.tmp").name))
    stem = path.stem
    while len(os.fsencode(stem)) > room:
        stem = stem[:-1]
    return f".{stem}."


def _naming(err: OSError, path: Path) -> OSError:
    """`err` (of the same class: a full disk stays ENOSPC) naming the output `path`, not its temporary file."""
    return OSError(err.errno, err.strerror or os.strerror(err.errno), str(path))


def disk_full(err: BaseException | None) -> bool:
    """Whether `err` is a write that found the disk, or the user's quota, full: a batch stops there
    (every later output would fail too)."""
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def describe(err: BaseException) -> str:
    """An error for one line of a batch's report: `PATH: reason` for a system error that names its
    file (a full disk, a read-only file system: `atomic_write` names the output), else its class and
    message."""
    if isinstance(err, OSError) and err.filename and err.strerror:
        return f"{err.filename}: {err.strerror}"
    return f"{type(err).__name__}: {err}"


def to_stdout(path: str | Path | None) -> bool:
    """Whether an output file option (`--json`, `--csv`) names standard output: `-`, as in most
    Unix tools (it wrote a file named "-"), or /dev/stdout. Where it does, what else the command
    prints goes to stderr, so that the output can be piped (`--json - | jq`)."""
    return path is not None and str(path) in ("-", "/dev/stdout")


def check_stdout(path: str | Path | None, option: str) -> None:
    """Refuse `-` (or /dev/stdout) where there is no standard output (`>&-`), before the work:
    the write at the end failed with a traceback."""
    if to_stdout(path) and sys.stdout is None:
        from mattecli.errors import UsageError

        raise UsageError(f"{option} {path}: standard output is closed")


def write_bytes(path: str | Path, data) -> Path:
    """Write `data` (bytes, or a buffer such as a BytesIO's) into the file atomically. Writers that
    serialise in memory go through it, so a full disk is Python's OSError naming the file, which
    every command reports in one line (safetensors' and torch's own file writers raise their own)."""
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def write_text(path: str | Path, text: str) -> None:
    """Write `text` to standard output when `to_stdout(path)`, else into the file atomically, as
    UTF-8 (not the locale's code page, as Windows would: a CSV of unicode names failed there).
    A name that is not valid UTF-8 (b'bad\\xff.png', which Python holds as 'bad\\udcff.png') is
    written as JSON writes it, 'bad\\udcff': it was a UnicodeEncodeError after all the work."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if to_stdout(path):
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def special_file(path: str | Path) -> bool:
    """Whether `path` is an existing device, FIFO or file under /dev or /proc (written in place).

    A symbolic link elsewhere is not, whatever it points to: it is replaced, as a link to a regular
    file is. A link named like an output among a folder's outputs (x.png -> /dev/null, or a disk)
    had the output written through it: lost, or onto the device, and counted as written."""
    path = Path(path)
    try:
        mode = os.lstat(path).st_mode
    except OSError:  # not there yet (or unreadable): an ordinary new file
        return False
    if path.absolute().parts[1:2] in (("dev",), ("proc",)):  # /dev/stdout is a link, to /proc/self/fd/1
        return True
    return not (stat.S_ISREG(mode) or stat.S_ISLNK(mode))


def remove_stale_temps(folder: str | Path, pattern: str = ".*.tmp", older_than: float = 0.0) -> int:
    """Delete the temporary files `atomic_write` leaves when its process is killed mid-write
    (SIGKILL, power loss); only those older than `older_than` seconds, so a live writer sharing the
    folder keeps its own. Returns how many were removed."""
    import time

    folder, now, removed = Path(folder), time.time(), 0
    if not folder.is_dir():
        return 0
    for tmp in folder.glob(pattern):
        try:
            if now - tmp.stat().st_mtime >= older_than:
                tmp.unlink()
                removed += 1
        except OSError:  # vanished meanwhile (renamed by its writer, or removed by another run)
            pass
    return removed


def case_insensitive(folder: str | Path) -> bool:
    """Whether names in the existing `folder` ignore letter case (macOS's and Windows' file systems
    by default), where the outputs of `Cat.jpg` and `cat.png` are one file: a probe file is looked
    up under its name in capitals. A folder not made yet is asked of its nearest existing parent."""
    folder = Path(folder).absolute()
    folder = next((p for p in (folder, *folder.parents) if p.is_dir()), folder)
    probe = fresh_name(folder, ".matte-case-", ".tmp")
    try:
        make_new(probe)
        return (probe.parent / probe.name.upper()).exists()
    except OSError:  # a folder matte cannot write to fails later, where it is named
        return False
    finally:
        discard(probe)


class Inputs:
    """The files a command reads, so that an output that would replace one is refused: compared by
    path and by file identity, because on a case-insensitive file system (macOS, Windows) the
    output a.png is the input a.PNG though their paths differ."""

    def __init__(self, paths):
        # realpath, not Path.resolve: a symlink loop among the inputs was a RuntimeError traceback that
        # stopped the batch; the loop itself fails when read, named with its reason
        self.paths = {Path(os.path.realpath(p)) for p in paths}
        self.ids = {_file_id(p) for p in self.paths} - {None}

    def __contains__(self, target) -> bool:
        target = Path(target)
        return Path(os.path.realpath(target)) in self.paths or _file_id(target) in self.ids


def _file_id(path: Path) -> tuple[int, int] | None:
    """(device, inode) of an existing file; None where there is none, or where the file system
    gives no inode number (st_ino 0, which os.stat allows: it would make every file the same)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if st.st_ino else None
