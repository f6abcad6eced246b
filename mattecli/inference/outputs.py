"""What `matte infer --save` writes for one image: alpha, foreground colours, RGBA cut-out and
composite, each as an 8-bit PNG written atomically.

Layout under OUT (docs/commands/infer.md): `{stem}.png` (alpha, one channel), `fg/{stem}.png`
(estimated foreground colours, RGB), `rgba/{stem}.png` (foreground with *straight*, not
premultiplied, alpha), `composite/{stem}.png` (the foreground over `--background`, RGB),
`trimap/{stem}.png` (the trimap used, e.g. the one made from a mask with `--masks`).
"""

from __future__ import annotations

import os
import re
import threading
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mattecli.imageio import write_png

OUTPUT_KINDS = ("alpha", "fg", "rgba", "composite", "trimap")  # trimap: the one used (batch.py writes it)
_NEEDS_FOREGROUND = ("fg", "rgba", "composite")
RECORD_KEY = "matte:background"  # PNG text chunk of a composite: the background that made it


def output_paths(out: Path, stem: str, kinds) -> dict[str, Path]:
    """Where each requested output of the image `stem` goes under `out`."""
    return {kind: (out / f"{stem}.png" if kind == "alpha" else out / kind / f"{stem}.png") for kind in kinds}


def parse_color(text: str) -> tuple[int, int, int] | None:
    """`#00ff00`, `#0f0`, `0,255,0` or a CSS colour name (`green` is #008000, `lime` #00ff00; any
    case) -> (r, g, b); anything else -> None."""
    from PIL import ImageColor

    text = text.strip()
    if re.fullmatch(r"#[0-9a-fA-F]{6}", text):
        return tuple(int(text[i:i + 2], 16) for i in (1, 3, 5))
    if re.fullmatch(r"#[0-9a-fA-F]{3}", text):
        return tuple(int(c * 2, 16) for c in text[1:])
    parts = text.split(",")
    if len(parts) == 3 and all(re.fullmatch(r"\s*[0-9]+\s*", p) and int(p) <= 255 for p in parts):
        return tuple(int(p) for p in parts)
    if text.lower() in ImageColor.colormap:  # the 148 CSS Color Module Level 4 names
        return ImageColor.getrgb(text.lower())[:3]
    return None


@dataclass
class Background:
    """A composite background: a solid colour, or an image fitted to each photo.

    An image is fitted by *cover*: scaled (keeping its aspect ratio) by the smallest factor that
    covers the photo, then centre-cropped to the photo's size; area interpolation when shrinking,
    bicubic when enlarging. Fitted copies are cached per size, since batches repeat sizes.
    """

    color: tuple[int, int, int] | None = None
    image: np.ndarray | None = None
    path: str | None = None  # the image's file, so a batch never writes over it
    record: str = ""  # what made a composite, kept in it (`RECORD_KEY`): the colour, or the image's hash
    _fitted: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if not self.record and self.color is not None:
            self.record = "#%02x%02x%02x" % tuple(self.color)

    @classmethod
    def parse(cls, text: str) -> "Background":
        """A colour (`#00ff00`, `#0f0`, `0,255,0`, a CSS name such as `green`) or the path of an image.

        Raises:
            InputError: for an image that cannot be read (the CLI turns this into a usage error).
            ValueError: for text that is neither a colour nor an existing file.
        """
        from mattecli.imageio import check_file, read_image

        import hashlib

        color = parse_color(text)
        if color is not None:
            return cls(color=color)
        if not Path(text).is_file():
            if os.path.lexists(text):  # a folder, a broken link or a loop: said as the readers say it
                check_file(Path(text))
            raise ValueError(f"{text!r} is neither a colour (#00ff00, #0f0, 0,255,0, a CSS name like green) "
                             "nor an image file")
        image = read_image(text, apply_exif=True)
        # by content, not by name or time: a copied folder still matches, an edited file does not
        digest = hashlib.sha256(Path(text).read_bytes()).hexdigest()[:16]
        return cls(image=image, path=text, record=f"image sha256:{digest}")

    def fit(self, h: int, w: int) -> np.ndarray:
        """The background for an (h, w) photo: (h, w, 3) uint8, or (1, 1, 3) for a colour."""
        import cv2

        if self.image is None:
            return np.array(self.color, np.uint8).reshape(1, 1, 3)
        if (h, w) not in self._fitted:
            bh, bw = self.image.shape[:2]
            scale = max(h / bh, w / bw)
            sh, sw = max(h, round(bh * scale)), max(w, round(bw * scale))
            interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
            scaled = cv2.resize(self.image, (sw, sh), interpolation=interp) if (sh, sw) != (bh, bw) else self.image
            y0, x0 = (sh - h) // 2, (sw - w) // 2
            if len(self._fitted) > 8:  # bounded: mixed-size batches must not grow this forever
                self._fitted.clear()
            self._fitted[(h, w)] = np.ascontiguousarray(scaled[y0:y0 + h, x0:x0 + w])
        return self._fitted[(h, w)]


def is_current(kind: str, path: Path, background: "Background | None" = None) -> bool:
    """Whether the existing output `path` of `kind` is what this run would write from the same alpha.

    Every output exists or not, except a composite, which also depends on `--background`: it is
    current only when the background recorded in it (`RECORD_KEY`) is this run's. A composite
    without a record (written by an older matte) counts as made with another background.
    """
    if not path.is_file():  # a folder there is no output: the write fails, named, instead of a silent skip
        return False
    if kind != "composite":
        return True
    from mattecli.imageio import read_png_text

    return background is not None and read_png_text(path).get(RECORD_KEY) == background.record


def estimate_foreground(image: np.ndarray, alpha: np.ndarray, device=None, timer=None) -> np.ndarray:
    """Foreground colours F such that image ~ alpha * F + (1 - alpha) * B, as (H, W, 3) uint8.

    PyMatting's multi-level `estimate_foreground_ml` (Germer et al. 2020). Measured against the
    blur-fusion approximation (Forte & Pitie 2021) on a synthetic composite of the lemur photo
    (benchmarks/bench_foreground.py): ML's error is about half and its time is within 1.5x at 4K,
    so ML is used. Where alpha has no fractional pixel, F is the image itself; where alpha is 255,
    F is the image's pixel (image = F there exactly; the estimate's smoothing would change it).

    On a CUDA device the same method runs as the PyTorch port in `inference.foreground` (red-black
    sweeps instead of PyMatting's raster order; docs/gpu.md states the difference).
    Anywhere else PyMatting runs: on a CPU it is about 10x faster than the port (3840x2160 on 2
    cores: 2-4 s against 28-36 s).

    Args:
        image: (H, W, 3) uint8.
        alpha: (H, W) uint8.
        device: the device of the model (a string or torch.device); None means the CPU.
        timer: `matte bench --e2e`'s, timing the "foreground" stage: the estimate itself, not the
            wait for a turn at the GPU (two at a time) or at a numba that is not thread-safe.
    """
    from mattecli.inference.pipeline import stage

    fractional = (alpha > 0) & (alpha < 255)
    if not fractional.any() or alpha.size == 1:  # one pixel: no neighbour to tell F from B (PyMatting divided by 0)
        return image.copy()
    if _on_cuda(device):
        from mattecli.inference.foreground import estimate_foreground_torch

        with _CUDA_FOREGROUNDS, stage(timer, "foreground"):
            fg = estimate_foreground_torch(image, alpha, device)
    else:
        from pymatting import estimate_foreground_ml

        from mattecli.errors import stop_deferred

        with _numba_guard(), stop_deferred(), stage(timer, "foreground"):  # numba compiles at the first call
            fg = _to_uint8(estimate_foreground_ml(image.astype(np.float32) / np.float32(255),
                                                  alpha.astype(np.float32) / np.float32(255)))
    opaque = alpha == 255
    fg[opaque] = image[opaque]
    return fg


_NUMBA_WORKQUEUE = threading.Lock()
# GPU foregrounds at once: each holds about 480 bytes per pixel of GPU memory (4 GB at 3840x2160)
# beside the model, outside what --max-memory budgets, and `infer`'s writer threads (one per core on
# CUDA) would otherwise all start one; their kernels share one stream, so two should keep the GPU as
# busy (not yet measured on a GPU: the device check's e2e row with fg will say)
_CUDA_FOREGROUNDS = threading.BoundedSemaphore(2)


def _numba_guard():
    """One PyMatting call at a time unless numba's threading layer is known to be thread-safe.

    PyMatting's kernels are numba `parallel=True` functions. Where numba finds neither TBB nor
    OpenMP (macOS without libomp, say) it uses its "workqueue" layer, which aborts the whole
    process ("Concurrent access has been detected") when two threads launch parallel kernels at
    once, as `matte infer --workers N --save fg` does. The layer is chosen at the first launch, so
    calls wait on each other until numba says which one it chose.
    """
    import numba

    try:
        safe = numba.threading_layer() != "workqueue"
    except ValueError:  # no parallel kernel has run yet
        safe = False
    return nullcontext() if safe else _NUMBA_WORKQUEUE


def _on_cuda(device) -> bool:
    return device is not None and str(device).startswith("cuda")


def foreground_device(backend):
    """Where the foregrounds of a model's photos are estimated: the torch device its backend holds
    (the PyTorch port runs on a CUDA one), or None, PyMatting on the CPU: an ONNX Runtime backend
    holds no torch device, on CUDA too. `matte infer` and `Matter.foreground` both ask here."""
    return getattr(backend, "device", None)


def runs_pymatting(backend) -> bool:
    """Whether PyMatting estimates this backend's foregrounds (`estimate_foreground` at
    `foreground_device(backend)`): then numba's threading layer must start, and its kernels compile
    at the first import (`import_pymatting`)."""
    return not _on_cuda(foreground_device(backend))


def check_numba_threading_layer() -> None:
    """Raise UsageError when numba cannot start the threading layer NUMBA_THREADING_LAYER names.

    numba starts its layer at the first parallel kernel, so one it cannot load (`tbb` without the
    tbb package, a misspelt name) failed every PyMatting foreground, each image after its model
    pass and with numba's multi-line hint as the reason. Starting it here costs no kernel.
    """
    import numba

    try:
        from numba.np.ufunc.parallel import _launch_threads  # what the first parallel kernel calls
    except ImportError:  # another numba layout: the first foreground will say it
        return
    try:
        _launch_threads()
    except ValueError as err:
        from mattecli.errors import UsageError

        raise UsageError(f"NUMBA_THREADING_LAYER={numba.config.THREADING_LAYER}: numba cannot start it "
                         f"({' '.join(str(err).split())}); unset it or name an installed layer "
                         "(workqueue is always there)") from None


def import_pymatting(note, after: float = 2.0) -> None:
    """Import PyMatting, saying so through `note(text)` when that takes over `after` seconds.

    PyMatting's numba kernels compile when it is imported: about 40 s on 2 cores the first time,
    1 s once numba has cached them (once per installation). Imported by the first foreground, that
    was a silent pause of the first image. A stop signal in the import is raised when it ends
    (`errors.stop_deferred`: numba compiles through callbacks from LLVM)."""
    import importlib
    import sys

    if "pymatting" in sys.modules:
        return
    from mattecli.errors import stop_deferred

    timer = threading.Timer(after, note, ["PyMatting is compiling its foreground kernels (once per installation: "
                                          "about a minute; Ctrl-C takes effect when it ends)"])
    timer.daemon = True
    timer.start()
    try:
        with stop_deferred():
            importlib.import_module("pymatting")
    finally:
        timer.cancel()


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, 0, 1) * np.float32(255) + np.float32(0.5)).astype(np.uint8)


def to_rgba(fg: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Straight (not premultiplied) RGBA: the foreground colours with the alpha as fourth channel."""
    return np.concatenate([fg, alpha[..., None]], axis=2)


def composite(fg: np.ndarray, alpha: np.ndarray, background: np.ndarray) -> np.ndarray:
    """alpha * fg + (1 - alpha) * background, rounded to uint8 (background broadcasts)."""
    a = alpha.astype(np.float32)[..., None] / np.float32(255)
    out = a * fg.astype(np.float32) + (1 - a) * background.astype(np.float32)
    return (out + np.float32(0.5)).astype(np.uint8)


def write_outputs(paths: dict[str, Path], image: np.ndarray, alpha: np.ndarray,
                  background: Background | None = None, device=None, timer=None,
                  icc: bytes | None = None) -> None:
    """Write the requested outputs (keys of `paths`) of one image, each atomically.

    `icc`: the image's RGB colour profile, embedded in the colour outputs (fg, rgba, composite) so
    that they show the image's colours (a background is taken in the image's colour space).

    The alpha is written first, so that a run interrupted between outputs can reuse it.
    `device` is where the foreground is estimated (see `estimate_foreground`); `timer(stage)`, when
    given, times the "foreground" and "encode" stages (`matte bench --e2e`).

    Raises:
        ValueError: when a composite is asked for without a background.
    """
    from mattecli.inference.pipeline import stage

    if "alpha" in paths:
        with stage(timer, "encode"):
            write_png(paths["alpha"], alpha)
    if not any(kind in paths for kind in _NEEDS_FOREGROUND):
        return
    fg = estimate_foreground(image, alpha, device, timer)
    with stage(timer, "encode"):
        if "fg" in paths:
            write_png(paths["fg"], fg, icc=icc)
        if "rgba" in paths:
            write_png(paths["rgba"], to_rgba(fg, alpha), icc=icc)
        if "composite" in paths:
            if background is None:
                raise ValueError("a composite needs a background (--background)")
            write_png(paths["composite"], composite(fg, alpha, background.fit(*alpha.shape)),
                      text={RECORD_KEY: background.record}, icc=icc)
