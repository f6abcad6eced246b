"""Reading images as they are found in the wild, and writing them atomically (`files.atomic_write`).

Every reader returns uint8 numpy arrays (the trimap and mask readers with a note) and raises
`InputError(path, reason)` for a file that is missing, empty, unreadable or of an unusable kind,
so a batch can name it and go on.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from mattecli import png
from mattecli.errors import InputError
from mattecli.files import discard, fresh_name, make_new, write_bytes

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# Picture formats matte does not decode (a phone's HEIC, a camera's raw files): a folder's files of
# these types are counted in a note, not left out without a word
UNREAD_SUFFIXES = (".heic", ".heif", ".avif", ".gif", ".jxl", ".jp2", ".dng", ".cr2", ".cr3", ".nef", ".arw",
                   ".raf", ".orf", ".rw2", ".psd", ".exr", ".tga", ".ppm", ".pgm", ".pbm", ".pnm", ".ico", ".jfif")


EXIF_ORIENTATION_TAG = 0x0112
EXIF_ORIENTATIONS = {1: "none", 2: "mirrored", 3: "rotated 180", 4: "flipped", 5: "mirrored and rotated 90 CW",
                     6: "rotated 90 CW", 7: "mirrored and rotated 90 CCW", 8: "rotated 90 CCW"}


def exif_orientation(path: str | Path) -> int:
    """The EXIF orientation tag of an image file (1, no rotation, when absent or unreadable)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            if img.format == "PNG":
                # Pillow decodes a whole PNG to look for an eXIf chunk after the pixels (70 ms at 4K,
                # twice per image in `matte infer`); walking the chunk headers finds it without decoding.
                # The chunk holds a TIFF header; some writers put JPEG's "Exif\0\0" before it (Pillow's
                # own Exif.tobytes does), which Pillow < 11 refused: such a photo was read unrotated
                data = img.info.get("exif") or png.chunk_data(path, b"eXIf") or b""
                while data.startswith(b"Exif\x00\x00"):  # Pillow adds one more to a chunk before the pixels
                    data = data[6:]
                exif = Image.Exif()
                exif.load(data)
            else:
                exif = img.getexif()
            value = exif.get(EXIF_ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 - the reader reports unreadable files; here they simply have no tag
        return 1
    return value if value in EXIF_ORIENTATIONS else 1


def _decode_png(path: Path, colour_types: tuple[int, ...], flags: int, apply_exif: bool) -> np.ndarray | None:
    """An 8-bit PNG of one of `colour_types` decoded by OpenCV (`flags`), EXIF orientation applied
    if asked; None where the Pillow path must read it.

    PNG is lossless, so the two decoders (OpenCV's libpng, Pillow's own zlib decoder) give the same
    pixels (tests/test_infer_inputs.py compares them kind by kind), and OpenCV's is faster: 115
    against 169 ms for a 3840x2160 RGB photo and 11 against 24 ms for its trimap on the 2-core CPU;
    decoding is what `matte infer`'s workers spend most of their time on. A file OpenCV cannot
    decode goes to Pillow, which says why.
    """
    import cv2

    if png.colour_type(path) not in colour_types:
        return None
    if not utf8_name(path):
        return None  # OpenCV's imread crashes the process (segmentation fault) on such a name; Pillow reads it
    profile = png.find_chunk(path, b"iCCP")
    if profile is None:
        array = cv2.imread(str(path), flags | cv2.IMREAD_IGNORE_ORIENTATION)
    else:
        # libpng checks an embedded colour profile and prints what it dislikes ("libpng warning: iCCP:
        # known incorrect sRGB profile", common in web PNGs) on stderr, naming no file, once per image.
        # Neither decoder applies the profile, so OpenCV decodes the file without that chunk: same pixels.
        start, size = profile
        try:
            data = Path(path).read_bytes()
        except OSError:
            return None
        array = cv2.imdecode(np.frombuffer(data[:start] + data[start + size:], np.uint8),
                             flags | cv2.IMREAD_IGNORE_ORIENTATION)
    if array is None:
        return None
    return orient(array, exif_orientation(path)) if apply_exif else array


def utf8_name(path: str | Path) -> bool:
    """Whether a path (or a file name) is valid UTF-8: a POSIX name of other bytes (an upload named in Latin-1)
    reaches Python with lone surrogates in it (surrogateescape)."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_file(path: Path) -> None:
    """Raise InputError saying why `path` is not a regular file to read (`missing_reason`)."""
    if not path.is_file():
        raise InputError(path, missing_reason(path, "file"))


def missing_reason(path: Path, wanted: str = "folder") -> str:
    """Why `path` is not the `wanted` ("file", "folder", or "folder or file" where either may be
    given): a symbolic link that leads nowhere, nothing there, the other kind, or a device or named
    pipe."""
    if path.is_symlink() and not path.exists():
        return f"a symbolic link that leads to no {wanted} (broken, or a loop)"
    if not path.exists():
        return f"no such {wanted}"
    if path.is_dir() and "folder" not in wanted:
        return "a folder, not an image file"
    if path.is_file() and "file" not in wanted:
        return "a file, not a folder"
    return "not a regular file (a device or a named pipe)"


def _open(path: Path, apply_exif: bool = False):
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    check_file(path)
    if path.stat().st_size == 0:
        raise InputError(path, "empty file")
    try:
        f = open(path, "rb")
    except OSError as err:  # permission denied, say: not a decoder's failure ("cannot decode image ([Errno 13] ...")
        raise InputError(path, f"cannot read ({err.strerror or type(err).__name__})") from None
    try:  # from a file object closed here: Pillow keeps a multi-frame file (and one failing to decode) open
        with f:  # until the collector runs, a ResourceWarning at every call of a service
            img = Image.open(f)
            img.load()
        if apply_exif:
            img = ImageOps.exif_transpose(img)
    except Image.DecompressionBombError as err:  # Pillow's guard against decompression bombs
        raise InputError(path, f"too many pixels to decode safely ({err})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        # Pillow's "cannot identify image file '/the/path'": the line names the file already
        # (of the file object it was given: "<_io.BufferedReader name='/the/path'>")
        reason = re.sub(r" <_io\.\w+ name=.*>", "", str(err).replace(f" {str(path)!r}", ""))
        raise InputError(path, f"cannot decode image ({reason})") from None
    problem = unsupported_mode(img)
    if problem:
        raise InputError(path, problem)
    if img.mode == "F":  # a float TIFF is read as [0, 1]: one of 0..255 values read as white, without a word
        problem = float_problem(np.asarray(img))
        if problem:
            raise InputError(path, problem)
    return img


def unsupported_mode(img) -> str | None:
    """Why a Pillow image's mode cannot be read, or None. Pillow cannot convert some modes at all
    (La, grey with premultiplied alpha, which a TIFF with associated alpha opens as): the readers
    failed with Pillow's "conversion from La to L not supported". Tried on one pixel."""
    try:
        img.crop((0, 0, 1, 1)).convert("RGB")
    except ValueError:
        return (f"unsupported image mode {img.mode} (Pillow cannot convert it to RGB); save it as RGB, RGBA, "
                "L or LA")
    return None


def _to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """16-bit and 32-bit integer images are scaled to 8 bits; floats are taken as [0, 1]."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if arr.dtype.kind in "ui":
        top = 65535 if (mode.startswith("I;16") or arr.max(initial=0) <= 65535) else 2**32 - 1
        return np.round(arr.astype(np.float64) * (255.0 / top)).astype(np.uint8)
    return np.round(np.clip(arr.astype(np.float64), 0, 1) * 255).astype(np.uint8)


def array_values(arr: np.ndarray, what: str) -> np.ndarray:
    """An array handed to the Python API, checked before it is read like a file's pixels: uint8,
    uint16, bool and float as they are; other integer types (the int64 that `np.where(m, 255, 0)`
    makes) as the 8-bit values they hold, not as 16-bit.

    Raises:
        ValueError: naming `what`, for integers outside 0..255, NaN or infinite floats, and floats
            outside [-0.5, 1.5]: 0..255 or normalised floats, which clipping to [0, 1] would turn
            into a white or black image without a word (a resampling's overshoot is clipped).
    """
    if arr.dtype.kind in "iu" and arr.dtype not in (np.uint8, np.uint16) and arr.size:
        low, high = int(arr.min()), int(arr.max())
        if low < 0 or high > 255:
            raise ValueError(f"{what}: {arr.dtype} values from {low} to {high}: expected 0..255 (8-bit values; "
                             "pass uint16 for 16-bit)")
        return arr.astype(np.uint8)
    problem = float_problem(arr)
    if problem:
        raise ValueError(f"{what}: {problem}")
    return arr


def float_problem(arr: np.ndarray) -> str | None:
    """Why float pixels cannot be read as [0, 1] (NaN, 0..255 or normalised values), or None."""
    if arr.dtype.kind != "f" or not arr.size:
        return None
    if not np.isfinite(arr).all():
        return f"{arr.dtype} array holds NaN or infinite values"
    low, high = float(arr.min()), float(arr.max())
    if low < -0.5 or high > 1.5:
        return (f"{arr.dtype} values from {low:.1f} to {high:.1f}: floats are read as [0, 1] (divide 0..255 values "
                "by 255, undo a normalisation)")
    return None


def read_image(path: str | Path, apply_exif: bool = False) -> np.ndarray:
    """An RGB uint8 (H, W, 3) image: gray, palette, CMYK and 16-bit inputs converted, alpha dropped.

    By default EXIF orientation is not applied (the benchmark's convention, kept by `eval`:
    Adobe's and the authors' scripts read with Pillow, which ignores it). `matte infer` passes
    `apply_exif=True` to see the photo as a viewer shows it.
    """
    import cv2

    rgb = getattr(cv2, "IMREAD_COLOR_RGB", None)  # OpenCV 4.11+; before it, imread decodes to BGR only
    fast = _decode_png(Path(path), (0, 2, 4, 6), cv2.IMREAD_COLOR if rgb is None else rgb, apply_exif)
    if fast is not None and rgb is None:
        fast = cv2.cvtColor(fast, cv2.COLOR_BGR2RGB)
    return fast if fast is not None else rgb_of(_open(Path(path), apply_exif))


def rgb_of(img) -> np.ndarray:
    """A Pillow image as `read_image` returns a file's: (H, W, 3) uint8 RGB."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        gray = _to_uint8(np.array(img), img.mode)
        return np.repeat(gray[..., None], 3, axis=2)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8).copy()


def read_gray(path: str | Path, apply_exif: bool = False) -> np.ndarray:
    """A single-channel uint8 (H, W) map: the *first* channel of a multi-channel file (as the
    benchmark's scripts index it), 16-bit scaled to 8 bits (unless no value is above 255: 8-bit
    values stored wide); EXIF orientation as in `read_image`."""
    return _first_channel(_open(Path(path), apply_exif))


def read_ground_truth(path: str | Path) -> np.ndarray:
    """A ground-truth alpha as (H, W) uint8: `read_gray`'s first channel (a 3-channel alpha, as
    Adobe ships them), except in a cut-out (grey or RGB + alpha) whose alpha channel is not fully
    opaque: that alpha channel is the matte (its first channel, a colour, was scored)."""
    img = _as_channels(_open(Path(path)))
    arr = np.array(img)
    alpha = _cutout_alpha(arr, img.mode)
    return alpha if alpha is not None else _gray_uint8(arr if arr.ndim == 2 else arr[..., 0], img.mode)


def _cutout_alpha(arr: np.ndarray, mode: str) -> np.ndarray | None:
    """The matte of a cut-out: the alpha channel of a grey + alpha or RGBA array, as uint8, when it
    is not all opaque; None for anything else (`read_alpha` and `read_ground_truth` read cut-outs so)."""
    if arr.ndim != 3 or arr.shape[2] not in (2, 4):
        return None
    alpha = _to_uint8(arr[..., -1], mode)
    return np.ascontiguousarray(alpha) if (alpha != 255).any() else None


def _as_channels(img):
    """A Pillow image whose channels are grey, RGB or RGBA, as the readers index them: a palette
    expanded, and the other colour spaces converted to RGB. Their own channels are not RGB's: a grey
    CMYK JPEG or TIFF read by its first channel (cyan) came out inverted, as a ground truth or a
    trimap, and a grey YCbCr or LAB TIFF was refused as a colour matte by `read_alpha`."""
    if img.mode == "P":
        return img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        return img.convert("RGB")
    return img


def _first_channel(img) -> np.ndarray:
    img = _as_channels(img)
    arr = np.array(img)
    if arr.ndim == 3:
        arr = arr[..., 0]
    return _gray_uint8(arr, img.mode)


def _gray_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """A single-channel map as uint8: 8-bit values stored wide as they are (`_holds_8bit`), anything
    else scaled (`_to_uint8`)."""
    return np.ascontiguousarray(arr.astype(np.uint8) if _holds_8bit(arr) else _to_uint8(arr, mode))


def _holds_8bit(arr: np.ndarray) -> bool:
    """Whether a 16- or 32-bit integer map holds only 0..255: 8-bit values stored wide (cv2.imwrite
    of a uint16 array of an 8-bit matte or trimap), read as such; scaled as 16-bit levels they were
    1/257 of themselves (a matte scored near 0, a 0/128/255 trimap 0/0/1). A real 16-bit matte with
    any foreground is far above 255."""
    return arr.dtype.kind in "ui" and arr.dtype.itemsize > 1 and arr.size > 0 and arr.min() >= 0 and arr.max() <= 255


def read_alpha(path: str | Path) -> np.ndarray:
    """A predicted alpha matte as (H, W) uint8, read by a rule that never scores a colour image:

    - single-channel (8- or 16-bit grey): as it is;
    - RGBA or grey + alpha whose alpha channel is not fully opaque: the alpha channel is the matte
      (`matte infer --save rgba` writes foreground colours with the matte as alpha);
    - 16- or 32-bit grey holding only 0..255: 8-bit values stored wide, read as such;
    - otherwise (RGB, or RGBA/grey + alpha that is fully opaque): the colour channels must be equal,
      a grey matte stored as colour; a colour image (a composite, a photo) is refused, an opaque
      RGBA one too (an all-foreground `--save rgba` cannot be told from a photo saved with an alpha
      channel, which tools often write).

    Raises:
        InputError: for a colour image, naming what it is, and for unreadable files.
    """
    img = _as_channels(_open(Path(path)))
    arr = np.array(img)
    if arr.ndim == 2:
        return _gray_uint8(arr, img.mode)
    alpha = _cutout_alpha(arr, img.mode)
    if alpha is not None:
        return alpha
    arr = _to_uint8(arr, img.mode)
    if arr.shape[2] in (2, 4):  # grey + alpha, RGBA, all opaque: the colour channels must be a grey matte
        arr = arr[..., :-1]
    if arr.shape[2] == 1 or ((arr[..., 1:] == arr[..., :1]).all()):
        return np.ascontiguousarray(arr[..., 0])
    kind = "RGBA with an opaque alpha channel" if img.mode in ("RGBA", "LA", "PA") else img.mode
    raise InputError(path, f"a colour image ({kind} with unequal channels), not an alpha matte: a prediction is "
                           "single-channel, grey stored as RGB, or RGBA with the matte as alpha (point --pred at "
                           "the alpha mattes, e.g. matte infer's OUT/ rather than OUT/composite)")


def read_trimap(path: str | Path, apply_exif: bool = False) -> tuple[np.ndarray, str | None]:
    """A trimap in the benchmark encoding (0 background, 128 unknown, 255 foreground).

    A trimap already in that encoding is returned unchanged. Class-index trimaps are mapped: values
    0/1/2 in the benchmark's order (background, unknown, foreground), 1/2/3 in the Oxford-IIIT Pet
    order (foreground, background, unknown). Any other gray trimap (hand-drawn ones use 102 or 127
    for unknown, anti-aliased edges, ...) is mapped with GCA-Matting's rule on the first channel:
    < 85 background, >= 170 foreground, otherwise unknown. The returned note says what was done.

    Raises:
        InputError: a colour-coded trimap (its colours have no agreed meaning) or a class-index
            one whose order is ambiguous (0/1 only: a binary mask; 1/2 only; 0..3).
    """
    import cv2

    path = Path(path)
    gray = _decode_png(path, (0,), cv2.IMREAD_UNCHANGED, apply_exif)  # 8-bit gray: the usual trimap
    return _trimap_of_gray(gray, path) if gray is not None else trimap_of(_open(path, apply_exif), path)


def trimap_of(img, path) -> tuple[np.ndarray, str | None]:
    """A Pillow image read as `read_trimap` reads a file (`path` names it in notes and errors)."""
    if img.mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr") and not _is_gray(img, tolerance=48, share=0.01):
        raise InputError(path, "trimap is colour-coded (its channels differ); matte reads gray trimaps "
                               "(0 background, 128 unknown, 255 foreground): save it so")
    # a 16- or 32-bit trimap holding only 0..255 (cv2.imwrite of a uint16 array: 0/128/255 or class
    # indices) is read as those codes by `_first_channel`
    return _trimap_of_gray(_first_channel(img), path)


def _trimap_of_gray(raw: np.ndarray, path) -> tuple[np.ndarray, str | None]:
    """A single-channel uint8 trimap in any of the encodings `read_trimap` accepts, mapped to 0/128/255."""
    values = _values(raw)
    if np.isin(values, (0, 128, 255)).all():
        return raw, None
    if values[-1] <= 3:
        return _class_index_trimap(path, raw, set(values.tolist()))
    trimap = np.full(raw.shape, 128, np.uint8)
    trimap[raw < 85] = 0
    trimap[raw >= 170] = 255
    odd = int((~np.isin(raw, (0, 128, 255))).sum())
    note = (f"{path}: trimap not in 0/128/255 encoding ({odd} pixels of other values); mapped with "
            f"<85 background, >=170 foreground, otherwise unknown")
    return trimap, note


def _values(raw: np.ndarray) -> np.ndarray:
    """The sorted distinct values of a uint8 map, from OpenCV's histogram: np.unique's time at 4K
    was 27 ms, a quarter of the image's decoding, on every trimap `matte infer` reads."""
    import cv2

    return np.flatnonzero(cv2.calcHist([raw], [0], None, [256], [0, 256]).ravel()).astype(np.uint8)


# value -> trimap value, for the class-index encodings recognised (see read_trimap)
_CLASS_ORDERS = {"0/1/2 (background, unknown, foreground)": {0: 0, 1: 128, 2: 255},
                 "1/2/3 (Oxford-IIIT Pet: foreground, background, unknown)": {1: 255, 2: 0, 3: 128}}


def _class_index_trimap(path: Path, raw: np.ndarray, values: set) -> tuple[np.ndarray, str]:
    if values <= {0, 1, 2} and 2 in values and 0 in values:
        order = next(iter(_CLASS_ORDERS))
    elif values <= {1, 2, 3} and 3 in values and len(values) > 1:
        order = list(_CLASS_ORDERS)[1]
    else:
        hint = (" (a 0/1 binary mask? matte infer --masks, or mattecli.trimap_from_mask, makes a trimap of one)"
                if values <= {0, 1} else "")
        raise InputError(path, f"trimap holds only the values {sorted(values)}: a class-index trimap whose "
                               f"order is ambiguous{hint}; save it as 0/128/255")
    lut = np.zeros(256, np.uint8)
    for value, mapped in _CLASS_ORDERS[order].items():
        lut[value] = mapped
    return lut[raw], f"{path}: class-index trimap, read as values {order}"


def _is_gray(img, tolerance: int = 0, share: float = 0.0) -> bool:
    """Whether a colour-mode image is gray: at most `share` of its pixels have channels more than
    `tolerance` apart (JPEG's chroma noise on a gray picture stays within a few levels)."""
    rgb = np.asarray(img.convert("RGB") if img.mode != "RGB" else img)
    spread = rgb.max(axis=2) - rgb.min(axis=2)  # uint8 is safe: max >= min
    return bool((spread > tolerance).mean() <= share)


def read_mask(path: str | Path, apply_exif: bool = False) -> tuple[np.ndarray, str | None]:
    """A segmentation mask as found, as (H, W) uint8 probabilities 0..255, and a note when it was
    read by a rule the user may want to know about.

    A cut-out (RGBA, LA, or a palette with transparency) whose alpha is not all opaque: its alpha.
    Palette files: their gray levels when the palette is gray, else a label map (index 0
    background, any other index foreground). 16- and 32-bit integers: scaled to 8 bits, unless no
    value is above 255 (8-bit values stored wide). Colour (RGB whose channels
    differ, such as a red overlay on black): the brightest channel. Values 0/1 only: scaled to 0/255.
    """
    path = Path(path)
    img = _open(path, apply_exif)
    note = None
    has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
    alpha = np.asarray(img.convert("RGBA"))[..., 3] if has_alpha else None
    if alpha is not None and (alpha < 255).any():
        mask = alpha
    elif img.mode == "P" and not _is_gray(img):
        mask = np.where(np.asarray(img) > 0, 255, 0).astype(np.uint8)
        note = f"{path}: palette mask read as labels (index 0 background, any other index foreground)"
    elif img.mode.startswith("I"):  # 16- or 32-bit integers
        wide = np.array(img)
        if _holds_8bit(wide):  # 0/1, 0/255 or 0..255 probabilities: scaled by 65535, a 0/1 mask was all background
            mask = wide.astype(np.uint8)
            if mask.max(initial=0) > 1:
                note = f"{path}: {img.mode} mask holding values 0..255 only, read as 8-bit"
        else:
            mask = _to_uint8(wide, img.mode)
    elif img.mode == "F":
        mask = _to_uint8(np.array(img), img.mode)
    elif img.mode == "L":
        mask = np.asarray(img)
    else:
        rgb = np.asarray(img.convert("RGB"))
        mask = rgb.max(axis=2)
        if not ((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()):
            note = f"{path}: colour mask, read by its brightest channel"
    if mask.max(initial=0) == 1:
        mask = mask * np.uint8(255)
        note = f"{path}: 0/1 mask, read as 0/255"
    return np.ascontiguousarray(mask), note


def orient(array: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1..8) to a stored array, as a viewer (and Pillow's
    `ImageOps.exif_transpose`) shows it."""
    steps = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
             5: lambda a: a.swapaxes(0, 1), 6: lambda a: np.rot90(a, -1), 7: lambda a: np.rot90(a, 2).swapaxes(0, 1),
             8: lambda a: np.rot90(a, 1)}
    return np.ascontiguousarray(steps[orientation](array)) if orientation in steps else array


def fit_orientation(stored: np.ndarray, path: Path, own: int, image_orientation: int, shape: tuple[int, int],
                    image_name: str, what: str = "trimap") -> tuple[np.ndarray, str | None]:
    """A trimap (or mask) as stored, turned to match an image shown upright with shape `shape`.

    Its own EXIF tag is used when it agrees with the image's. When the tags differ, the trimap was
    drawn either on the upright view (its own tag) or on the image's stored pixels (the image's
    tag): when only one of the two fits the image's size it is used, with a note; when both fit,
    which way it was drawn is a guess, and it is refused.

    Raises:
        InputError: the tags disagree and both or neither orientation fits, or the size differs.
    """
    mine = orient(stored, own)
    if own == image_orientation:
        fits = [mine] if mine.shape[:2] == shape else []
    else:
        theirs = orient(stored, image_orientation)
        fits = [a for a in (mine, theirs) if a.shape[:2] == shape]
        if len(fits) == 2:
            raise InputError(path, f"EXIF orientation disagrees with the image's ({image_name}: "
                                   f"{EXIF_ORIENTATIONS[image_orientation]}; {what}: {EXIF_ORIENTATIONS[own]}) and "
                                   f"both fit its size, so it is unclear which way the {what} was drawn; save both "
                                   "with the same orientation")
        if len(fits) == 1:
            how = (f"its own EXIF orientation ({EXIF_ORIENTATIONS[own]})" if fits[0] is mine else
                   f"the image's EXIF orientation ({EXIF_ORIENTATIONS[image_orientation]})")
            return fits[0], f"{path}: EXIF orientation differs from {image_name}'s; only {how} fits its size, used"
    if not fits:
        h, w = mine.shape[:2]
        raise InputError(path, f"{what} is {w}x{h} but image {image_name} is {shape[1]}x{shape[0]}")
    return fits[0], None


def write_png(path: str | Path, array: np.ndarray, text: dict[str, str] | None = None,
              icc: bytes | None = None) -> Path:
    """Write a uint8 gray (H, W), RGB or RGBA array as PNG, atomically, with optional tEXt chunks
    (`text`, read back by `read_png_text`) and ICC colour profile (`icc`, see `rgb_icc_profile`)."""
    return write_bytes(path, png.encode(array, text, icc))


def rgb_icc_profile(path: str | Path) -> bytes | None:
    """The ICC colour profile embedded in an image file when it describes RGB colours (a phone's
    Display P3, Adobe RGB), for colour outputs made from its pixels; None without one, for a gray
    or CMYK profile (the pixels are read as RGB), a profile that does not parse, or a file that
    cannot be opened. Reads the header only."""
    import io

    from PIL import Image

    try:
        with Image.open(path) as image:
            icc = image.info.get("icc_profile")
    except (OSError, ValueError):
        return None
    if not (isinstance(icc, bytes) and icc[16:20] == b"RGB "):  # the profile's colour space
        return None
    try:  # a damaged profile copied into the outputs made every reader warn of it (libpng: "iCCP: ...")
        from PIL import ImageCms

        ImageCms.ImageCmsProfile(io.BytesIO(icc))
    except ImportError:  # a Pillow built without littlecms: kept unchecked
        return icc
    except OSError:
        return None
    return icc


def read_png_text(path: str | Path) -> dict[str, str]:
    """The text chunks written before a PNG's pixels (as `write_png` writes them), without decoding
    the pixels; {} for a file that cannot be read as PNG."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return {k: v for k, v in image.info.items() if isinstance(v, str)}
    except (OSError, ValueError):
        return {}


def relative_name(path: Path, root: Path) -> str:
    """A file's name for pairing and for its outputs: its path under `root` without the suffix
    ("x" for root/x.jpg, "sub/x" for root/sub/x.jpg with --recursive)."""
    return Path(path).relative_to(root).with_suffix("").as_posix()


def index_by_stem(paths, root: Path | None = None) -> dict[str, list[Path]]:
    """Files by name stem (`a.png` and `a.jpg` both under "a"), in the order given: the one way
    inputs are paired (images with trimaps, predictions with ground truth, masks with photos);
    each caller decides what several files with one stem mean. With `root`, by `relative_name`
    under it (files of subfolders keep their folder: "sub/a")."""
    index: dict[str, list[Path]] = {}
    for path in paths:
        key = Path(path).stem if root is None else relative_name(path, root)
        index.setdefault(key, []).append(Path(path))
    return index


def list_images(folder: str | Path, recursive: bool = False, skip: tuple[Path, ...] = (),
                unreadable: list[tuple[Path, str]] | None = None, others: list[Path] | None = None) -> list[Path]:
    """Image files of a folder, sorted by path; with `recursive`, of its subfolders too (hidden
    ones and the folders in `skip`, e.g. an output folder inside the input folder, left out).

    A subfolder that cannot be read (or an entry that cannot be looked at, e.g. a link into a folder
    this user may not enter) is left out and added to `unreadable` as (path, reason) when that list
    is given, so that a batch goes on without it; otherwise its OSError is raised. An entry with an
    image suffix that cannot be looked at is listed: reading it names the reason. `folder` itself
    must be readable. Files of a picture format matte does not read (`UNREAD_SUFFIXES`) are added
    to `others` when it is given."""
    return sorted(_walk_images(Path(folder), recursive, skip, unreadable, others))


def has_images(folder: str | Path, recursive: bool = False, unreadable: list[tuple[Path, str]] | None = None,
               others: list[Path] | None = None) -> bool:
    """Whether `list_images` would list anything: the walk stops at the first image, so a check
    before a batch does not walk a large tree a second time. When there is none, `unreadable`
    and `others` hold what `list_images` would have added to them."""
    return next(_walk_images(Path(folder), recursive, (), unreadable, others), None) is not None


def _walk_images(folder: Path, recursive: bool, skip: tuple[Path, ...], unreadable: list[tuple[Path, str]] | None,
                 others: list[Path] | None = None):
    """`list_images`'s walk, yielding each image file as it is found (unsorted)."""
    skip_resolved = {Path(s).resolve() for s in skip}
    seen = {folder.resolve()}  # a folder reached twice (a symlink to a parent: a loop) is walked once
    todo = [folder]

    def left_out(path: Path, err: OSError) -> None:
        if unreadable is None:
            raise err
        unreadable.append((path, f"cannot be read ({err.strerror or err}); any images in it are left out"))

    while todo:
        here = todo.pop()
        try:
            entries = sorted(here.iterdir())  # sorted: which of two links to one folder is walked does not vary
        except OSError as err:
            if here == folder:
                raise
            left_out(here, err)
            continue
        for p in entries:
            if p.name.startswith("."):
                continue
            image = p.suffix.lower() in IMAGE_SUFFIXES
            try:
                is_dir = p.is_dir()
            except OSError as err:
                if image:
                    yield p
                elif recursive:
                    left_out(p, err)
                continue
            if is_dir:
                if recursive and p.resolve() not in skip_resolved | seen:
                    seen.add(p.resolve())
                    todo.append(p)
            elif image:  # a broken link or a named pipe too: the reader names it
                yield p
            elif others is not None and p.suffix.lower() in UNREAD_SUFFIXES:
                others.append(p)


def subfolders_with_images(folder: str | Path, skip: tuple[Path, ...] = ()) -> list[Path]:
    """The immediate subfolders of `folder` (less those in `skip`) that hold an image file at any
    depth, for telling a user what a non-recursive listing left out; each walk stops at its first
    image (`has_images`: what `--recursive` would find there)."""
    skip_resolved = {Path(s).resolve() for s in skip}

    def is_folder(path: Path) -> bool:
        try:
            return path.is_dir()
        except OSError:  # e.g. a link into a folder this user may not enter
            return False

    def holds_images(path: Path) -> bool:
        try:
            return has_images(path, recursive=True, unreadable=[])
        except OSError:  # the subfolder itself cannot be read: nothing in it to point at
            return False

    return [d for d in sorted(Path(folder).iterdir()) if is_folder(d) and not d.name.startswith(".")
            and d.resolve() not in skip_resolved and holds_images(d)]


def prepare_out_dir(out: str | Path, option: str = "--out") -> Path:
    """Create an output folder and check that files can be written in it, before any work is done.

    Raises:
        UsageError: `out` is a file, or cannot be created, or is not writable.
    """
    from mattecli.errors import UsageError

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{option} {out}: is a file, not a folder")
    check_out_dir(out, option)  # a broken symbolic link on the way: mkdir said only "File exists"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"{option} {out}: cannot write there ({err.strerror or err})") from None
    _probe_write(out, out, option)
    return out


def _probe_write(folder: Path, out: Path, option: str) -> None:
    """Create and remove a temporary file in `folder`; a failure is a UsageError naming `option`
    and `out` (the path the user gave, `folder` or below it)."""
    from mattecli.errors import UsageError

    probe = fresh_name(folder, ".matte-write-check.")
    try:
        make_new(probe)
    except OSError as err:
        raise UsageError(f"{option} {out}: cannot write there ({err.strerror or err})") from None
    finally:
        discard(probe)


def check_out_dir(out: str | Path, option: str = "--out", given: Path | None = None) -> Path:
    """Check that the folder `out` could be made and written, without making it (a run refused
    later for another reason leaves nothing behind): its nearest existing ancestor must be a
    writable folder.

    Raises:
        UsageError: naming the option, the path as given (`given`, else `out`) and the reason.
    """
    from mattecli.errors import UsageError

    out = Path(out)
    existing = next(p for p in (out.absolute(), *out.absolute().parents) if p.exists() or p.is_symlink())
    if not existing.exists():  # a symbolic link to nothing: making the folder raised FileExistsError at the end
        raise UsageError(f"{option} {given or out}: {existing} is a broken symbolic link (to {os.readlink(existing)})")
    if not existing.is_dir():
        raise UsageError(f"{option} {given or out}: {existing} is a file, not a folder")
    _probe_write(existing, given or out, option)
    return out


def check_report_file(path: str | Path, option: str, kind: str = "JSON") -> Path:
    """`check_out_file` for a report (`--json`, `--csv`), which is never named as an image: every
    input and output of a batch is one, and `--json masks/a.png` replaced a mask (`--json
    pred/a.png` a saved prediction)."""
    from mattecli.errors import UsageError

    if Path(path).suffix.lower() in IMAGE_SUFFIXES:
        raise UsageError(f"{option} {path}: an image's name; the report is {kind} (name it .{kind.lower()})")
    return check_out_file(path, option)


def check_out_file(path: str | Path, option: str = "--out") -> Path:
    """Check that the file `path` could be written (see `check_out_dir`), without writing it.

    Raises:
        UsageError: `path` is a folder, or its folder could not be made or written.
    """
    from mattecli.errors import UsageError

    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{option} {path}: is a folder, not a file")
    check_out_dir(path.parent, option, given=path)  # the message names the file, as given
    return path
