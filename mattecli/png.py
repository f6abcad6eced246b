"""The PNG format where matte handles it itself: chunks found without decoding the pixels (an EXIF
orientation after them, a colour profile libpng would complain about, a header that says whether
OpenCV may decode the file), and the writer of every PNG matte makes (`imageio.write_png`).
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"

# zlib level 1, not Pillow's default 6, and every row filtered by PNG's Up filter (each byte less
# the one above it) rather than the best of five filters tried on each row (Pillow's way, and
# libpng's default): lossless either way. On a 3840x2160 photo (2-core CPU, benchmarks/png_level.py):
# RGB 0.11 s and 2.78 MiB, against 0.29 s and 2.76 MiB (Pillow, level 1) and 1.08 s and 2.31 MiB
# (Pillow, level 6); an alpha 0.022 s and 0.18 MiB, against 0.076 s / 0.18 MiB and 0.085 s / 0.12 MiB.
LEVEL = 1
STRIP_BYTES = 8 << 20  # rows filtered and deflated at a time: memory beside the array, not a copy of it


def find_chunk(path: str | Path, kind: bytes, before_pixels: bool = True) -> tuple[int, int] | None:
    """(offset, size with its header and CRC) of a PNG's first `kind` chunk, found by seeking from
    chunk header to chunk header without decoding; None when there is none (before the pixel data,
    IDAT, when `before_pixels`) or the file cannot be read."""
    try:
        with open(path, "rb") as f:
            if f.read(8) != SIGNATURE:
                return None
            while len(head := f.read(8)) == 8:
                length, found = int.from_bytes(head[:4], "big"), head[4:]
                if found == kind:
                    return f.tell() - 8, length + 12
                if found == b"IEND" or (before_pixels and found == b"IDAT"):
                    return None
                f.seek(length + 4, 1)  # the data and its CRC
    except OSError:
        return None
    return None


def chunk_data(path: str | Path, kind: bytes) -> bytes | None:
    """The payload of a PNG's first `kind` chunk (before or after the pixels), or None."""
    span = find_chunk(path, kind, before_pixels=False)
    if span is None:
        return None
    with open(path, "rb") as f:
        f.seek(span[0] + 8)
        return f.read(span[1] - 12)


def colour_type(path: str | Path) -> int | None:
    """The colour type of an 8-bit PNG from its header (0 gray, 2 RGB, 4 gray + alpha, 6 RGBA);
    None for anything else: another format or depth, a palette, a size Pillow would refuse as a
    decompression bomb, a file that cannot be opened, or one cut short (not ending in its IEND
    chunk: a file still being copied in), on which OpenCV's libpng printed "libpng error: Read
    Error", naming no file, before Pillow named it; or whose header fails its checksum ("libpng
    error: IHDR: CRC error")."""
    from PIL import Image

    if not Path(path).is_file():  # opening a named pipe (a link to one among the images) waited forever
        return None
    try:
        with open(path, "rb") as f:
            head = f.read(33)
            f.seek(-12, os.SEEK_END)
            tail = f.read(12)
    except OSError:  # also a file shorter than 12 bytes
        return None
    if len(head) < 33 or head[:8] != SIGNATURE or head[12:16] != b"IHDR" or head[24] != 8:
        return None
    if zlib.crc32(head[12:29]) != int.from_bytes(head[29:33], "big"):
        return None
    if tail[4:8] != b"IEND":
        return None
    pixels = int.from_bytes(head[16:20], "big") * int.from_bytes(head[20:24], "big")
    if Image.MAX_IMAGE_PIXELS and pixels > Image.MAX_IMAGE_PIXELS:
        return None
    return head[25] if head[25] in (0, 2, 4, 6) else None


def encode(array: np.ndarray, text: dict[str, str] | None = None, icc: bytes | None = None) -> bytes:
    """A uint8 gray (H, W), RGB or RGBA array as a PNG file in memory, with an iCCP chunk for the
    ICC profile `icc` and a text chunk for each item of `text` (tEXt when key and value are Latin-1,
    the PNG text encoding, else an uncompressed UTF-8 iTXt, as Pillow writes them), before the pixels."""
    if array.dtype != np.uint8:
        raise TypeError(f"write_png expects uint8, got {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    kind = {2: 0, 3: {3: 2, 4: 6}.get(array.shape[-1])}.get(array.ndim)  # the colour type: gray, RGB, RGBA
    if kind is None or 0 in array.shape:
        raise TypeError(f"write_png expects a non-empty (H, W), (H, W, 3) or (H, W, 4) array, got {array.shape}")
    height, width = array.shape[:2]
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, kind, 0, 0, 0])  # 8 bits, deflate,
    parts = [SIGNATURE, chunk(b"IHDR", header)]  # a filter type per row, no interlace
    if icc:  # profile name, its terminator, compression method 0 (deflate), the compressed profile
        parts.append(chunk(b"iCCP", b"ICC Profile\0\0" + zlib.compress(icc)))
    for key, value in (text or {}).items():
        try:
            parts.append(chunk(b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1")))
        except UnicodeEncodeError:  # keyword, then: not compressed, method 0, no language, no translated keyword
            parts.append(chunk(b"iTXt", key.encode("latin-1") + b"\0\0\0\0\0" + value.encode("utf-8")))
    parts += _pixels(array.reshape(height, -1))
    return b"".join(parts + [chunk(b"IEND", b"")])


def _pixels(rows: np.ndarray):
    """IDAT chunks of (H, bytes per row) pixels, every row Up-filtered (LEVEL's comment says why)
    and deflated a strip of rows at a time, so that a huge image needs no filtered copy of itself."""
    height, step = rows.shape[0], max(1, STRIP_BYTES // rows.shape[1])
    filtered = np.empty((min(step, height), rows.shape[1] + 1), np.uint8)
    filtered[:, 0] = 2  # filter type Up: each byte less the byte above it (the first row: less 0)
    deflate, previous = zlib.compressobj(LEVEL), np.zeros_like(rows[0])
    for top in range(0, height, step):
        strip, out = rows[top:top + step], filtered[:min(step, height - top)]
        np.subtract(strip[:1], previous, out=out[:1, 1:])
        np.subtract(strip[1:], strip[:-1], out=out[1:, 1:])
        previous = strip[-1]
        if packed := deflate.compress(out):  # releases the GIL, as the subtractions do
            yield chunk(b"IDAT", packed)
    yield chunk(b"IDAT", deflate.flush())


def chunk(kind: bytes, body: bytes) -> bytes:
    """A PNG chunk: length, type, data, CRC of type and data."""
    return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")
