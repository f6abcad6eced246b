"""matte from Python: load a model file once, then matte images held in memory.

    import mattecli
    matter = mattecli.load("indexnet.safetensors", device="auto")   # or an .onnx / .engine file
    alpha = matter.predict(image, trimap)    # PIL images, numpy arrays or paths -> (H, W) uint8
    fg = matter.foreground(image, alpha)     # (H, W, 3) uint8 foreground colours

`predict` reads its inputs by the rules `matte infer` applies to files (the same image
conversions, the same trimap encodings, EXIF orientation of Pillow images applied) and runs the
same pipeline (alignment, restoration, tiles under the memory ceiling), so it gives, byte for
byte, what `matte infer` writes for the same files.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

    from mattecli.inference.pipeline import Pipeline
    from mattecli.recipes import Recipe

ImageLike = Union["Image.Image", np.ndarray, str, Path]
_DEFAULT = "default"


class Matter:
    """A loaded model with the inference pipeline its recipe asks for. Make one with `load`."""

    def __init__(self, pipeline: Pipeline, device: str):
        self.pipeline = pipeline
        self.device = device

    @property
    def recipe(self) -> Recipe:
        """The recipe the model file carries (family, options, inference protocol)."""
        return self.pipeline.recipe

    def predict(self, image: ImageLike, trimap: ImageLike) -> np.ndarray:
        """The alpha matte of `image` under `trimap`.

        Args:
            image: a Pillow image or a numpy array: (H, W, 3) RGB, (H, W, 4) RGBA (alpha dropped),
                (H, W) grey; uint8, uint16 (scaled to 8 bits), float in [0, 1] (0..255 floats are
                refused), or another integer type holding 0..255 (int64 from `np.where`). Or an
                image file's path, read as `Image.open(path)` would be.
            trimap: a Pillow image, a numpy array or a path, of the same size: 0/128/255, a class-index
                trimap (0/1/2, or 1/2/3), or a hand-drawn grey one (< 85 background, >= 170
                foreground, otherwise unknown), read as `matte infer` reads trimap files. A note
                (`UserWarning`) says when one was mapped.

        Returns:
            (H, W) uint8 alpha; a trimap with no unknown pixel is returned as the alpha (what
            `matte infer --empty pass` writes), with a `UserWarning` that says so.

        Raises:
            ValueError: the sizes differ, or an input is not an image (e.g. a colour-coded trimap),
                or a path is not a readable image file (the message names it); with compile=True,
                torch.compile could not build the model (e.g. no C++ compiler).
        """
        from mattecli.errors import InputError
        from mattecli.imageio import fit_orientation, orient, rgb_of, trimap_of

        try:
            rgb = rgb_of(_as_pil(image, "image"))
            stored = _as_pil(trimap, "trimap", apply_exif=False)
            tri, note = trimap_of(stored, _name(trimap, "trimap"))
            own, theirs = _orientation(trimap), _orientation(image) or 1
            if own is None or own == theirs:  # an array is taken as the image is shown
                tri, turned = orient(tri, own or 1), None
            else:  # a stale tag on either side: the orientation that fits, as matte infer does
                image_name = Path(image).name if isinstance(image, (str, os.PathLike)) else "image"
                tri, turned = fit_orientation(tri, _name(trimap, "trimap"), own, theirs, rgb.shape[:2], image_name)
        except InputError as err:  # a file is named in the message; an array is no file
            raise ValueError(str(err) if isinstance(err.path, Path) else err.reason) from None
        for message in (note, turned):
            if message:
                warnings.warn(message, stacklevel=2)
        if rgb.shape[:2] != tri.shape:
            raise ValueError(f"image is {rgb.shape[1]}x{rgb.shape[0]} but trimap is {tri.shape[1]}x{tri.shape[0]}")
        from mattecli.data.trimap import no_foreground, nothing_to_matte

        if not (tri == 128).any():  # said, as matte infer says it: a binary mask passed as the trimap, most likely
            reason = nothing_to_matte(tri, mask_hint="a binary mask? make a trimap of it with "
                                                     "mattecli.trimap_from_mask")
            warnings.warn(f"{reason}; the trimap is returned as the alpha", stacklevel=2)
            return tri.copy()
        if warning := no_foreground(tri):  # as matte infer warns
            warnings.warn(warning, stacklevel=2)
        try:
            return self.pipeline.run(rgb, tri).alpha
        except RuntimeError as err:  # torch's many-line InductorError, minutes in: one line, as matte infer says it
            from mattecli.errors import compile_failure

            if (reason := compile_failure(err)) is None:
                raise
            raise ValueError(f"compile=True: torch.compile could not build the model ({reason}); load without "
                             "compile=True") from None

    def foreground(self, image: ImageLike, alpha: np.ndarray) -> np.ndarray:
        """Estimated foreground colours F (image ~ alpha F + (1 - alpha) B), as `--save fg` writes
        them: PyMatting's multi-level method on a CPU, its PyTorch port on a CUDA device (PyMatting
        beside an exported ONNX graph, whose runtime holds no torch device, on CUDA too).

        Args:
            image: as for `predict` (a path too).
            alpha: (H, W) uint8, e.g. what `predict` returned.

        Returns:
            (H, W, 3) uint8.

        Raises:
            ValueError: the image is not readable, the alpha is not (H, W) uint8 of its size, or
                NUMBA_THREADING_LAYER names a layer numba cannot start (PyMatting needs one).
        """
        from mattecli.errors import InputError, UsageError
        from mattecli.imageio import rgb_of
        from mattecli.inference.outputs import (check_numba_threading_layer, estimate_foreground, foreground_device,
                                                runs_pymatting)

        try:
            rgb = rgb_of(_as_pil(image, "image"))
        except InputError as err:
            raise ValueError(str(err)) from None
        if isinstance(alpha, (str, os.PathLike)):  # it said "got <U17 ()"
            raise ValueError(f"alpha {alpha}: a path; pass the (H, W) uint8 array `predict` returned (or the file "
                             "read as one)")
        alpha = np.asarray(alpha)
        if alpha.dtype != np.uint8 or alpha.shape != rgb.shape[:2]:
            raise ValueError(f"alpha must be (H, W) uint8 of the image's size {rgb.shape[1]}x{rgb.shape[0]}, got "
                             f"{alpha.dtype} {alpha.shape}")
        if runs_pymatting(self.pipeline.backend):  # a layer numba cannot start: in one line, as by infer
            try:
                check_numba_threading_layer()
            except UsageError as err:
                raise ValueError(str(err)) from None
        return estimate_foreground(rgb, alpha, foreground_device(self.pipeline.backend))

    def __repr__(self) -> str:
        return f"Matter(recipe={self.recipe.name!r}, device={self.device!r})"

    def __reduce__(self):
        # `Pool.map(matter.predict, ...)` under spawn (macOS's and Windows' default) pickles the
        # model for every worker; it failed with "cannot pickle '_thread._local' object"
        raise TypeError("a loaded model cannot be sent to another process: call mattecli.load in each "
                        "worker process (a Pool's initializer, say)")


def load(weights: str | Path, device: str = "auto", *, backend: str | None = None, half: bool = False,
         compile: bool = False, max_memory: str | int | None = _DEFAULT) -> Matter:
    """Load a model file for `predict` and `foreground`.

    Args:
        weights: a `.safetensors` weights file (its recipe travels with it), an exported `.onnx`
            graph or a TensorRT `.engine`.
        device: "auto" (CUDA when available, else the CPU), "cpu", "cuda" or "cuda:N" (or a
            `torch.device`).
        backend: "torch", "onnx" or "trt"; default: the one the file's suffix implies.
        half: the torch backend's half precision on CUDA (an output that is not finite is redone
            in float32).
        compile: torch.compile the model. On CUDA one graph per input size (static shapes), for the
            first 8 sizes, each compiled by the first `predict` of that size (about a minute); later
            sizes run uncompiled. On a CPU one graph for every size (dynamic height and width),
            compiled by the first `predict` (minutes).
        max_memory: memory ceiling of one model pass, as `matte infer --max-memory` takes it
            ("4GB", bytes as an int, or None for no ceiling); default as `matte infer`'s: 4 GB on a
            CPU, 90% of the GPU's memory on CUDA. Larger images run as tiles over the unknown band.

    Raises:
        ValueError: an unknown device, backend or file type, options the backend cannot take,
            half off CUDA, or a max_memory of zero or too small for the model's smallest tile.
    """
    from mattecli.devices import resolve_device
    from mattecli.errors import InputError, UsageError
    from mattecli.inference.backends import BACKENDS, implied_backend
    from mattecli.inference.pipeline import load_pipeline
    from mattecli.inference.tiling import default_max_bytes

    if type(device).__module__ == "torch" and type(device).__name__ == "device":  # torch.device("cuda", 1)
        device = str(device)
    if device is not None and not isinstance(device, str):  # 1 was an AttributeError, 0 taken as "auto"
        raise ValueError(f"device {device!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N' (or a torch.device)")
    try:
        device = resolve_device(device, option="device", backend=implied_backend(weights, backend))
        if backend is not None and backend not in BACKENDS:  # as device: not named --backend
            raise ValueError(f"backend {backend!r}: unknown backend (choose {', '.join(BACKENDS)})")
        if max_memory == _DEFAULT:
            max_bytes = default_max_bytes(device)
        elif max_memory is None:
            max_bytes = None
        elif isinstance(max_memory, bool) or not isinstance(max_memory, (int, float, str)):
            raise ValueError(f"max_memory {max_memory!r}: expected bytes as an int, a size like '4GB', or None")
        elif isinstance(max_memory, str):
            from mattecli.cli.parsing import parse_memory

            max_bytes = parse_memory(max_memory, "max_memory")
        elif max_memory != max_memory or max_memory == float("inf"):  # NaN, inf: int() raised its own words
            raise ValueError(f"max_memory {max_memory!r}: expected bytes as an int, a size like '4GB', or None "
                             "for no ceiling")
        elif max_memory <= 0:  # as parse_memory says of --max-memory 0: not a silent "no ceiling"
            raise ValueError(f"max_memory {max_memory!r}: a ceiling of zero leaves no memory for any pass; pass "
                             "None for no ceiling")
        else:
            max_bytes = int(max_memory)
        pipeline = load_pipeline(weights, backend, device, max_bytes=max_bytes, half=half, compile=compile,
                                 options=("half", f"max_memory {max_memory}"))  # as matte infer
    except (UsageError, InputError) as err:
        raise ValueError(str(err)) from None
    return Matter(pipeline, device)


def _orientation(x) -> int | None:
    """The EXIF orientation (1..8) of a Pillow image or a file as given; None for an array."""
    from PIL import Image

    from mattecli.imageio import EXIF_ORIENTATION_TAG, EXIF_ORIENTATIONS, exif_orientation

    if isinstance(x, (str, os.PathLike)):
        return exif_orientation(x)
    if isinstance(x, Image.Image):
        value = x.getexif().get(EXIF_ORIENTATION_TAG, 1)
        return value if value in EXIF_ORIENTATIONS else 1
    return None


def _name(x: ImageLike, what: str):
    """What an input is called in notes and errors: its path, or `what` for an image in memory."""
    return Path(x) if isinstance(x, (str, os.PathLike)) else what


def _as_pil(x: ImageLike, what: str, apply_exif: bool = True):
    """A Pillow image (EXIF orientation applied, as `matte infer` applies it to files, unless
    `apply_exif` is False), a file opened as one, or a numpy array made into one, so that all are
    converted by the same rules as files. Raises InputError (naming the file) for a path that is
    not a readable image."""
    from PIL import Image, ImageOps

    if isinstance(x, (str, os.PathLike)):
        from mattecli.imageio import _open

        return _open(Path(x), apply_exif=apply_exif)
    if isinstance(x, Image.Image):
        from mattecli.imageio import unsupported_mode

        try:  # `Image.open(upload)` decodes lazily: a cut-off upload raised Pillow's OSError from deep inside
            x.load()
        except (OSError, ValueError, SyntaxError) as err:
            raise ValueError(f"{getattr(x, 'filename', '') or what}: cannot decode image ({err})") from None
        problem = unsupported_mode(x)
        if problem:
            raise ValueError(f"{what}: {problem}")
        if x.mode == "F":  # Image.fromarray of a float32 array: checked as that array would be
            from mattecli.imageio import array_values

            array_values(np.asarray(x), what)
        if x.mode == "I" and x.format is None:  # made in memory, not opened (older Pillow opens 16-bit PNGs as
            # I): Image.fromarray of an int32/int64 array (a mask made by np.where, say), whose 0..255 are the
            # 8-bit values they are in that array; wider ones stay 16-bit
            values = np.asarray(x)
            if values.size and 0 <= values.min() and values.max() <= 255:
                x = Image.fromarray(values.astype(np.uint8))
        return ImageOps.exif_transpose(x) if apply_exif else x
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":  # None, bytes (a file's content), a dict: np.asarray wraps them, shape ()
        raise ValueError(f"{what}: expected a Pillow image, a numpy array or a file path, got {type(x).__name__}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ValueError(f"{what}: expected (H, W), (H, W, 3) or (H, W, 4), got shape {arr.shape}")
    from mattecli.imageio import _to_uint8, array_values

    arr = array_values(arr, what)
    if arr.dtype != np.uint8 and not (arr.dtype == np.uint16 and arr.ndim == 2):  # 16-bit grey: Pillow's I;16
        arr = _to_uint8(arr, "")  # floats as [0, 1], 16-bit scaled, as files are
    return Image.fromarray(np.ascontiguousarray(arr))
