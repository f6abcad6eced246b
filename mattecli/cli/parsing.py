"""Command-line text -> typed values: the one place option values are parsed.

Library functions take what these return (bytes, `Size`, (K, N), backend names); only command
modules (and the benchmark scripts, which are command lines too) parse text. Every parser raises
`UsageError` naming the option, so the CLI prints one line and exits 2.
"""

from __future__ import annotations

import re

from mattecli.errors import UsageError
from mattecli.sizes import Size

# numpy's and torch's seeds are unsigned 64-bit: --seed -1 was numpy's "expected non-negative
# integer" traceback (and failed every file of `matte trimap`), 2**64 torch's overflow
SEED_MIN, SEED_MAX = 0, 2**64 - 1

_UNITS = {"": 1, "B": 1, "K": 2**10, "KB": 2**10, "KIB": 2**10, "M": 2**20, "MB": 2**20, "MIB": 2**20,
          "G": 2**30, "GB": 2**30, "GIB": 2**30, "T": 2**40, "TB": 2**40, "TIB": 2**40}


def options_given(ctx, names) -> list[str]:
    """The options among `names` (parameter names, `min_shape`) that the user gave, as they are
    written (`--min-shape`): for options that are refused where unused, never for their defaults."""
    # by the source's name: typer vendors click, so ParameterSource has no stable import path
    return [f"--{name.replace('_', '-')}" for name in names if ctx.get_parameter_source(name).name != "DEFAULT"]


def is_whole_number(text: str) -> bool:
    """ASCII digits only: `str.isdigit` also takes '²' (which `int` refuses) and other scripts' digits."""
    return text.isascii() and text.isdigit()


def comma_items(values: list[str]) -> list[str]:
    """The items of a comma-separated option given once or more: `--save alpha,fg` and `--save alpha
    --save fg` are both ["alpha", "fg"] (a second --save silently replaced the first, click's rule
    for an option given twice); stripped, empty items and duplicates dropped, order kept."""
    return list(dict.fromkeys(item.strip() for value in values for item in value.split(",") if item.strip()))


def parse_memory(text: str | None, option: str = "--max-memory") -> int | None:
    """`"4GB"`, `"512MiB"`, `"1.5G"` -> bytes (binary units: 1 GB = 2**30); `None`, `"none"` -> None.

    Raises:
        UsageError: on anything else, naming the accepted forms; on an empty value (`--max-memory
            "$MEM"` with MEM unset), which lifted the default ceiling without a word.
    """
    if text is not None and not text.strip():
        raise UsageError(f"{option}: an empty value (an unset variable?); write none for no ceiling")
    if text is None or text.strip().lower() in ("none", "off"):
        return None
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).upper() if match else None
    if match and float(match.group(1)) == 0 and (unit in _UNITS or not unit):  # not a silent "no ceiling"
        raise UsageError(f"{option} {text!r}: a ceiling of zero leaves no memory for any pass; write none for no "
                         "ceiling")
    if not match or unit not in _UNITS or float(match.group(1)) <= 0:
        raise UsageError(f"{option} {text!r}: expected a size like 4GB, 512MB or 1.5G (or none)")
    return int(float(match.group(1)) * _UNITS[unit])


def parse_sizes(text: str, option: str = "--sizes") -> list[Size]:
    """`"1920x1080, 3840x2160"` -> [Size(1920, 1080), Size(3840, 2160)]: WIDTHxHEIGHT, as people say
    (duplicates dropped, order kept, as `parse_backends` drops them).

    Raises:
        UsageError: naming the item that is not WIDTHxHEIGHT in pixels, or is larger than any image
            matte reads, or when none is given.
    """
    sizes = []
    for item in (part.strip() for part in text.split(",") if part.strip()):
        a, sep, b = item.lower().partition("x")
        if not sep or not is_whole_number(a) or not is_whole_number(b) or int(a) < 1 or int(b) < 1:
            raise UsageError(f"{option}: {item!r} is not WIDTHxHEIGHT in pixels (e.g. 1920x1080)")
        if int(a) * int(b) > (most := max_image_pixels()):  # was a traceback from the first allocation
            raise UsageError(f"{option}: {item!r} is {int(a) * int(b):,} pixels, more than any image matte reads "
                             f"({most:,}, Pillow's limit against decompression bombs)")
        sizes.append(Size(int(a), int(b)))
    if not sizes:
        raise UsageError(f"{option}: {text!r} names no size (WIDTHxHEIGHT, e.g. 1920x1080)")
    return list(dict.fromkeys(sizes))


def max_image_pixels() -> int:
    """The most pixels an image matte reads may have: above it Pillow refuses to decode a file (a
    DecompressionBombError, which matte reports as "too many pixels"), so no larger size is ever run."""
    from PIL import Image

    return 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else 2**31 - 1


def parse_size(text: str, option: str) -> Size:
    """One WIDTHxHEIGHT size (see `parse_sizes`)."""
    sizes = parse_sizes(text, option)
    if len(sizes) != 1:
        raise UsageError(f"{option} {text}: one WIDTHxHEIGHT, e.g. 1920x1088")
    return sizes[0]


def parse_shard(text: str | None, option: str = "--shard") -> tuple[int, int] | None:
    """`"K/N"` -> (K, N) with K 0-based (0 <= K < N), as SLURM array and Kubernetes indexed-job
    indices are; None -> None.

    Raises:
        UsageError: for anything else.
    """
    if text is None:
        return None
    parts = text.split("/")
    if len(parts) != 2 or not all(is_whole_number(p.strip()) for p in parts):
        raise UsageError(f"{option} {text}: expected K/N with whole numbers, e.g. 0/4 (K is 0-based)")
    k, n = int(parts[0]), int(parts[1])
    if n < 1:
        raise UsageError(f"{option} {text}: N, the number of shards, must be at least 1 (e.g. 0/4)")
    if k >= n:
        raise UsageError(f"{option} {text}: need 0 <= K < N (K is 0-based: 0/{n} .. {n - 1}/{n})")
    return k, n


def parse_backends(text: str, option: str = "--backends") -> list[str]:
    """`"torch,onnx"` -> ["torch", "onnx"] (duplicates dropped, order kept).

    Raises:
        UsageError: naming an unknown backend.
    """
    from mattecli.inference.backends import BACKEND_NAMES

    names = list(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    bad = [n for n in names if n not in BACKEND_NAMES]
    if bad or not names:  # as parse_sizes says of "": it was "unknown backend '(none)'"
        problem = f"unknown backend {bad[0]!r}" if bad else "names no backend"
        raise UsageError(f"{option} {text!r}: {problem}; choose from {', '.join(BACKEND_NAMES)}")
    return names
