"""What the runtime needs to open a TensorRT engine: the engine file's format and the TensorRT
import guard. The builder (`exporters/tensorrt.py`) writes files in this format; nothing here
imports `exporters`, so running an engine never needs the export tooling.

An engine file is `MAGIC` (8 bytes), the length of a JSON header (4 bytes, little endian), the
JSON (UTF-8), then the serialized engine. The JSON carries the recipe (hence the preprocessing)
and how the engine was built, so `TensorRTBackend` needs no `--recipe`.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from mattecli.errors import UsageError
from mattecli.files import write_bytes

MAGIC = b"MATTETRT"
FORMAT = "matte-engine/1"
NOT_INSTALLED = "TensorRT is not installed (pip install tensorrt on a machine with an NVIDIA GPU)"
NO_CUDA = "TensorRT needs an NVIDIA GPU with CUDA, and this machine has none (torch.cuda.is_available() is False)"
_HEADER_LEN = struct.Struct("<I")


def write_engine_file(path: str | Path, engine: bytes, meta: dict) -> Path:
    """Write `MAGIC + len + JSON meta + engine` atomically; -> `path`."""
    header = json.dumps(meta, sort_keys=True).encode()
    return write_bytes(path, MAGIC + _HEADER_LEN.pack(len(header)) + header + bytes(engine))


def read_engine_file(path: str | Path, header_only: bool = False) -> tuple[dict, bytes]:
    """-> (metadata, serialized engine) of a file written by `write_engine_file`; with `header_only`,
    (metadata, b"") without reading the engine (which may be hundreds of MB), only checking that it
    is there.

    Raises:
        UsageError: naming the file, when it is missing, has no matte header, a truncated one or
            one that is not a JSON object, or no engine bytes after it.
    """
    path = Path(path)
    start = len(MAGIC) + _HEADER_LEN.size
    try:
        with path.open("rb") as f:
            head = f.read(start)
            if not head.startswith(MAGIC):
                raise UsageError(f"{path}: not a matte engine (no {MAGIC.decode()} header; build it with "
                                 "`matte export --format trt`)")
            if len(head) < start:
                raise UsageError(f"{path}: truncated engine header")
            (size,) = _HEADER_LEN.unpack_from(head, len(MAGIC))
            header = f.read(size)
            engine = f.read(1) if header_only else f.read()
    except OSError as err:
        raise UsageError(f"{path}: cannot read the engine ({err.strerror})") from None
    if len(header) < size:
        raise UsageError(f"{path}: truncated engine header")
    try:
        meta = json.loads(header.decode())
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise UsageError(f"{path}: corrupt engine header (not JSON)") from None
    if not isinstance(meta, dict):  # a list or a number: .get on it was a traceback
        raise UsageError(f"{path}: corrupt engine header (not a JSON object)")
    if not engine:
        raise UsageError(f"{path}: the header is there but the engine bytes are missing (truncated file)")
    return meta, b"" if header_only else engine


def import_tensorrt():
    """The `tensorrt` module (10 or newer), or a one-line UsageError saying it is missing or too old."""
    try:
        import tensorrt as trt
    except ImportError:
        raise UsageError(NOT_INSTALLED) from None
    if tensorrt_version(trt) < (10, 0):  # named tensors, execute_async_v3 and explicit batch by default
        raise UsageError(f"TensorRT {trt.__version__} is too old: matte needs TensorRT 10 or newer")
    return trt


def tensorrt_version(trt) -> tuple[int, int]:
    """(major, minor) of a `tensorrt` module, e.g. (10, 13) for '10.13.0.35'."""
    parts = (str(trt.__version__).split(".") + ["0"])[:2]
    return tuple(int("".join(c for c in p if c.isdigit()) or 0) for p in parts)
