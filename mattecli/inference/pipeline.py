"""The one inference path: every consumer of a model (eval, infer, bench, export --verify) uses it.

`prepare` turns an RGB image and a benchmark trimap into the aligned, normalised float32 tensor a
backend sees; `restore` turns the backend's raw alpha back into an 8-bit matte of the original
size. How to align (resize as IndexNet's demo does, or reflect-pad as A2U's) and how to encode the
trimap come from the recipe's `infer` section, which travels inside every weights file.

The steps are written once over an array library (`NumpyOps`, `TorchOps`): numpy with OpenCV
(the reference, for ONNX Runtime and TensorRT) or torch on the backend's device (so on a GPU only
uint8 crosses the bus). Only what truly differs between the libraries is passed in: bicubic
resize, reflect padding, table look-up (into a given output), an empty network input, copying
the known trimap pixels, upload and download. Normalisation and trimap encoding are table
look-ups and nearest-neighbour resizing is a gather with the indices OpenCV computes, so both
libraries give the same bits; only bicubic resizing differs (OpenCV's kernel against torch's, the
same cubic with a = -0.75 summed in another order). The torch backend uses the torch path on CUDA
only: on a CPU, numpy with OpenCV is faster and is the authors' arithmetic.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from mattecli.recipes import InferConfig
from mattecli.sizes import Size, aligned_size

if TYPE_CHECKING:
    from mattecli.inference.backends import Backend
    from mattecli.recipes import Recipe


class NumpyOps:
    """numpy + OpenCV: the reference implementation of the primitives."""

    xp = np
    float32, uint8 = np.float32, np.uint8

    def upload(self, array: np.ndarray) -> np.ndarray:
        return array

    def download(self, array: np.ndarray) -> np.ndarray:
        return array

    def astype(self, array, dtype):
        return array.astype(dtype, copy=False)

    def empty(self, shape):
        return np.empty(shape, np.float32)

    def resize_bicubic(self, x, h: int, w: int, out=None):
        """(H, W) or planar (C, H, W) float32 -> (h, w) or (C, h, w), OpenCV's INTER_CUBIC (a = -0.75),
        into `out` when given.

        A planar view of an interleaved (H, W, C) array (what `lookup` gives without `out`) is
        resized in one call as it lies in memory, as the authors resize their (H, W, 3) image, and
        then split into the planes: OpenCV's one-channel and three-channel kernels can differ in
        the last bit (at 9x17, not at 3840x2160), so resizing plane by plane would not be their
        arithmetic."""
        import cv2

        if x.ndim == 2:
            return cv2.resize(x, (w, h), dst=out, interpolation=cv2.INTER_CUBIC)
        interleaved = x.transpose(1, 2, 0)
        if interleaved.flags.c_contiguous and x.shape[0] <= 4:
            resized = cv2.resize(interleaved, (w, h), interpolation=cv2.INTER_CUBIC).reshape(h, w, -1)
            if out is None:
                return resized.transpose(2, 0, 1)
            if x.shape[0] == 1:
                out[0] = resized[..., 0]
            else:
                cv2.split(resized, list(out))  # writes into the planes: a third of numpy's strided copy
            return out
        out = np.empty((x.shape[0], h, w), np.float32) if out is None else out
        for plane, dst in zip(x, out):
            cv2.resize(np.ascontiguousarray(plane), (w, h), dst=dst, interpolation=cv2.INTER_CUBIC)
        return out

    def lookup(self, tables, image, out=None):
        """tables (C, 256) float32 and image (H, W, C) uint8 (or one (H, W) plane for every table)
        -> planar (C, H, W) float32, `tables[c][image[..., c]]`, by OpenCV's LUT (a third of numpy's
        gather time at 4K).

        Without `out`, a planar view of one interleaved array (for `resize_bicubic`); with `out`,
        written plane by plane into it, so that no interleaved-to-planar copy follows."""
        import cv2

        if out is None and image.ndim == 3:
            interleaved = cv2.LUT(image, np.ascontiguousarray(tables.T).reshape(256, 1, -1))
            return interleaved.reshape(image.shape).transpose(2, 0, 1)
        out = np.empty((len(tables),) + image.shape[:2], np.float32) if out is None else out
        planes = cv2.split(image) if image.ndim == 3 else [image] * len(tables)
        for table, plane, dst in zip(tables, planes, out):
            cv2.LUT(plane, np.ascontiguousarray(table), dst=dst)
        return out

    def keep_known(self, alpha, trimap):
        """uint8 alpha with the known pixels (trimap not 128) set to the trimap's value, in place."""
        np.copyto(alpha, trimap, where=trimap != 128)
        return alpha

    def reflect_pad(self, x, ph: int, pw: int):
        """Pad (H, W) or (H, W, C) by ph rows at the bottom and pw columns at the right, numpy's 'reflect'."""
        return _reflect_pad(x, ((0, ph), (0, pw)) + ((0, 0),) * (x.ndim - 2))

    def resize_torch(self, x, h: int, w: int, mode: str):
        """(H, W) or planar (C, H, W) float32 -> (h, w) or (C, h, w) with torch's `interpolate`
        (align_corners False, no antialias), as mmagic resizes: run by torch on the CPU."""
        import torch

        return _interpolate(torch.from_numpy(np.ascontiguousarray(x)), h, w, mode).numpy()


class TorchOps:
    """torch on a device (CUDA; on a CPU it runs the same kernels, which is how it is tested).
    Uploads go through pinned memory with non-blocking copies; the only download of a whole image
    is the finished uint8 alpha (or a tile's float alpha).
    """

    # Constants kept on the device: the tables, and the nearest-index vectors of the sizes seen
    # last. Those are keyed by size, so a service fed photos of ever new sizes would otherwise
    # keep one pair per size for good.
    CONSTANTS_KEPT = 64

    def __init__(self, device="cpu"):
        import torch

        self.torch = self.xp = torch
        self.device = torch.device(device)
        self.float32, self.uint8 = torch.float32, torch.uint8
        self._constants: dict = {}  # oldest first
        self._constants_lock = threading.Lock()  # the API's threads prepare concurrently

    def pin(self, array: np.ndarray):
        """The array as a host tensor in page-locked memory (on a CPU device: shared, as it is), the
        host's half of an upload: a worker thread does it ahead of the model (`Pipeline.prepare_host`)."""
        tensor = self.torch.from_numpy(np.ascontiguousarray(array))
        return tensor if self.device.type == "cpu" else tensor.pin_memory()

    def send(self, pinned):
        """A `pin`ned tensor to the device, without waiting for the copy: the device's half."""
        return pinned if self.device.type == "cpu" else pinned.to(self.device, non_blocking=True)

    def upload(self, array: np.ndarray):
        return self.send(self.pin(array))

    def constant(self, key, make):
        """A small constant (look-up table, index vector) uploaded once per device, while it is
        among the CONSTANTS_KEPT used last."""
        with self._constants_lock:
            value = self._constants.pop(key, None)
            if value is None:
                value = self.upload(make())
            self._constants[key] = value  # now the newest
            while len(self._constants) > self.CONSTANTS_KEPT:
                del self._constants[next(iter(self._constants))]
            return value

    def download(self, tensor) -> np.ndarray:
        return tensor.cpu().numpy()

    def astype(self, tensor, dtype):
        return tensor.to(dtype)

    def empty(self, shape):
        return self.torch.empty(shape, dtype=self.float32, device=self.device)

    def keep_known(self, alpha, trimap):
        return self.torch.where(trimap == 128, alpha, trimap)

    def resize_bicubic(self, x, h: int, w: int, out=None):
        return _into(out, self.resize_torch(x, h, w, "bicubic"))

    def resize_torch(self, x, h: int, w: int, mode: str):
        return _interpolate(x, h, w, mode)

    def reflect_pad(self, x, ph: int, pw: int):
        import torch.nn.functional as F

        planar = x[None] if x.ndim == 2 else x.permute(2, 0, 1)
        # numpy reflects a one-pixel side by repeating it; torch refuses: repeat it here
        if ph and planar.shape[1] == 1:
            planar, ph = planar.repeat(1, ph + 1, 1), 0
        if pw and planar.shape[2] == 1:
            planar, pw = planar.repeat(1, 1, pw + 1), 0
        while ph or pw:  # torch's reflect, like numpy's, needs pad < size: repeat for tiny images
            step_h, step_w = min(ph, planar.shape[1] - 1), min(pw, planar.shape[2] - 1)
            planar = F.pad(planar[None], (0, step_w, 0, step_h), mode="reflect")[0]
            ph, pw = ph - step_h, pw - step_w
        return planar[0] if x.ndim == 2 else planar.permute(1, 2, 0)

    def lookup(self, tables, image, out=None):
        planes = image.unbind(-1) if image.ndim == 3 else [image] * len(tables)
        return _into(out, self.torch.stack([table[plane.long()] for table, plane in zip(tables, planes)], 0))


def _into(out, tensor):
    """`tensor`, copied into `out` when one is given (torch's kernels have no destination argument)."""
    return tensor if out is None else out.copy_(tensor)


NUMPY = NumpyOps()


def _interpolate(x, h: int, w: int, mode: str):
    """A (H, W) or planar (C, H, W) tensor resized by torch's `interpolate` ("bicubic" with
    align_corners False, or "nearest")."""
    import torch.nn.functional as F

    planes = x[None, None] if x.ndim == 2 else x[None]
    out = F.interpolate(planes, size=(h, w), mode=mode, align_corners=False if mode == "bicubic" else None)
    return out[0, 0] if x.ndim == 2 else out[0]


def _constant(ops, key, make):
    return ops.constant(key, make) if hasattr(ops, "constant") else make()


@functools.lru_cache(maxsize=16)
def _rgb_table(mean: tuple, std: tuple, normalise: str = "unit") -> np.ndarray:
    # A uint8 channel has 256 values, so normalisation is a (3, 256) table, a gather instead of
    # arithmetic over the whole image, computed as the authors' code computes it (bit-identical to
    # IndexNet's, A2U's and mmagic's).
    values = np.arange(256, dtype=np.float32)
    if normalise == "pixel":  # mmagic: (x - 255 mean) / (255 std), in float32 throughout
        mean32 = (np.asarray(mean, np.float64) * 255).astype(np.float32)[:, None]
        std32 = (np.asarray(std, np.float64) * 255).astype(np.float32)[:, None]
        return (values[None, :] - mean32) / std32
    if normalise == "unit-float32":  # A2U (data_generator.py ToTensor): x / 255, - mean, / std, float32 tensors
        mean32, std32 = np.asarray(mean, np.float32)[:, None], np.asarray(std, np.float32)[:, None]
        return ((values / np.float32(255))[None, :] - mean32) / std32
    # The authors scale in float32 (a python float times a float32 array), then subtract and
    # divide in float64, then cast back.
    scaled = values * np.float32(1.0 / 255)
    table = (scaled[None, :] - np.asarray(mean)[:, None]) / np.asarray(std)[:, None]
    return table.astype(np.float32)


def _normalise(image, cfg: InferConfig, ops=NUMPY, out=None):
    """(H, W, 3) uint8 -> planar (3, H, W) float32 (into `out` when given)."""
    table = _constant(ops, ("rgb", cfg.mean, cfg.std, cfg.normalise),
                      lambda: _rgb_table(tuple(cfg.mean), tuple(cfg.std), cfg.normalise))
    return ops.lookup(table, image, out)


def _trimap_tables(encoding: str, normalise: str = "unit") -> np.ndarray:
    """(C, 256) float32: the trimap's encoding as look-up tables, one per network input channel."""
    values = np.arange(256, dtype=np.float32)
    if encoding == "onehot":  # background, unknown, foreground
        return np.stack([values == 0, values == 128, values == 255]).astype(np.float32)
    if normalise in ("pixel", "unit-float32"):  # mmagic and A2U divide (trimap / 255.0 in float32)
        return (values / np.float32(255))[None]
    return (values * np.float32(1.0 / 255))[None]  # the authors multiply: 128 -> 0.50196..., not 0.5


def _encode_trimap(trimap, cfg: InferConfig, ops=NUMPY, out=None):
    """(H, W) uint8 -> planar (C, H, W) float32 (into `out` when given)."""
    tables = _constant(ops, ("trimap", cfg.trimap, cfg.normalise), lambda: _trimap_tables(cfg.trimap, cfg.normalise))
    return ops.lookup(tables, trimap, out)


def _nearest_indices(src: int, dst: int) -> np.ndarray:
    """The source index of each of `dst` outputs, as OpenCV's INTER_NEAREST computes it (in double)."""
    return np.minimum(np.floor(np.arange(dst) * (1.0 / (dst / src))).astype(np.int64), src - 1)


def prepare(image, trimap, cfg: InferConfig, ops=NUMPY):
    """(H, W, 3) uint8 RGB + (H, W) uint8 trimap (0/128/255) -> (1, C, H', W') float32, aligned.

    With `ops` a `TorchOps`, image and trimap are uint8 tensors on its device (see `upload`) and so
    is the result. The steps write into the one network input, plane by plane: no interleaved
    float image and no joining copy (half the time of `prepare` at 4K).
    """
    h, w = trimap.shape
    ah, aw = cfg.aligned(Size(w, h)).hw
    out = ops.empty((1, cfg.input_channels, ah, aw))
    rgb_out, tri_out = out[0, :3], out[0, 3:]
    if (ah, aw) == (h, w):
        _normalise(image, cfg, ops, rgb_out)
        _encode_trimap(trimap, cfg, ops, tri_out)
    elif cfg.align == "resize-down":  # mmagic: torch bicubic (image), nearest (trimap), no antialias
        rgb_out[:] = ops.resize_torch(_normalise(image, cfg, ops), ah, aw, "bicubic")
        tri_out[:] = ops.resize_torch(_encode_trimap(trimap, cfg, ops), ah, aw, "nearest")
    elif cfg.align == "resize":  # bicubic image, nearest trimap (IndexNet's demo)
        ops.resize_bicubic(_normalise(image, cfg, ops), ah, aw, out=rgb_out)
        # nearest picks trimap values, so it is taken on the uint8 trimap before encoding: same bits
        if ah != h:
            trimap = trimap[_constant(ops, ("nearest", h, ah), lambda: _nearest_indices(h, ah))]
        if aw != w:
            trimap = trimap[:, _constant(ops, ("nearest", w, aw), lambda: _nearest_indices(w, aw))]
        _encode_trimap(trimap, cfg, ops, tri_out)
    elif cfg.align == "pad":  # bottom/right, numpy 'reflect' (the edge is not repeated)
        # reflection moves pixels, so it is applied to the uint8 inputs before encoding: same bits
        _normalise(ops.reflect_pad(image, ah - h, aw - w), cfg, ops, rgb_out)
        _encode_trimap(ops.reflect_pad(trimap, ah - h, aw - w), cfg, ops, tri_out)
    else:
        raise ValueError(f"unknown alignment {cfg.align!r}")
    return out


def _reflect_pad(x: np.ndarray, pad) -> np.ndarray:
    # numpy's reflect needs pad < size; images smaller than the padding reflect repeatedly
    while any(p[1] >= s > 1 for p, s in zip(pad, x.shape)):  # numpy repeats a one-pixel side itself
        step = tuple((0, min(p[1], s - 1)) for p, s in zip(pad, x.shape))
        x = np.pad(x, step, mode="reflect")
        pad = tuple((0, p[1] - st[1]) for p, st in zip(pad, step))
    return np.pad(x, pad, mode="reflect")


def unalign(raw, h: int, w: int, cfg: InferConfig, ops=NUMPY):
    """Raw (H', W') network output -> (h, w) float32 alpha * 255, alignment undone, clipped."""
    raw = ops.astype(raw, ops.float32).reshape(raw.shape[-2:])
    if cfg.align in ("resize", "resize-down") and tuple(raw.shape) != (h, w):
        alpha = ops.resize_torch(raw, h, w, "bicubic") if cfg.align == "resize-down" else ops.resize_bicubic(raw, h, w)
        out = alpha  # a new array: clipped in place
    else:
        alpha, out = raw[:h, :w], None  # the caller's output stays as it is
    alpha = ops.xp.clip(alpha, 0, 1, out=out)
    alpha *= 255.0  # 255 is exact in float32: the same bits as float32(255)
    return alpha


def quantise(alpha, trimap, ops=NUMPY, cfg: InferConfig | None = None):
    """Float alpha * 255 -> the 8-bit matte, as the papers' protocols make it: the known trimap
    regions copied from the trimap, then truncated (not rounded) to uint8. Each of two recipe
    options leaves that path: `known: force` sets only the pixels whose trimap is 0 or 255 (any
    other value keeps the alpha; `copy` copies every value but 128), `rounding: half-even` rounds
    half to even; both together are mmagic's postprocess."""
    xp = ops.xp
    if cfg is None or (cfg.known != "force" and cfg.rounding != "half-even"):
        # Truncate, then copy the known regions from the trimap, in uint8: the bits of the authors'
        # (1 - unknown) * trimap + unknown * alpha, and a non-finite alpha (the pipeline refuses
        # one) could not reach a known pixel. A quarter of the float where-then-cast time at 4K.
        return ops.keep_known(ops.astype(alpha, ops.uint8), trimap)
    if cfg.known == "force":
        alpha = xp.where(trimap == 255, 255.0, xp.where(trimap == 0, 0.0, alpha))
    else:
        # where() equals the authors' (1 - unknown) * trimap + unknown * alpha bit for bit, and a
        # non-finite alpha cannot leak into a known pixel through 0 * NaN
        alpha = xp.where(trimap == 128, alpha, ops.astype(trimap, ops.float32))
    if cfg is not None and cfg.rounding == "half-even":
        alpha = xp.round(alpha)  # numpy's and torch's round both go half to even, as np.rint
    return ops.astype(alpha, ops.uint8)


def restore(raw, trimap, cfg: InferConfig, ops=NUMPY):
    """Raw (H', W') network output -> (H, W) uint8 alpha: undo the alignment, clip to [0, 1],
    copy the known trimap regions, truncate to 8 bits (as the papers' protocols do)."""
    h, w = trimap.shape
    return quantise(unalign(raw, h, w, cfg, ops), trimap, ops, cfg)


class Pinned(NamedTuple):
    """An image and its trimap already in page-locked host memory (`TorchOps.pin`), made by a worker
    thread ahead of the model: `Pipeline.prepare_host`'s result for a backend with device ops."""

    image: object
    trimap: object


class Matte(NamedTuple):
    """What `Pipeline.run` returns: the 8-bit alpha and how it was computed."""

    alpha: np.ndarray  # (H, W) uint8
    # "whole", "tiled: N tiles of WxH" (the largest, as run; + " (a larger pass ran out of memory)" where one
    # did) or "no unknown pixels", maybe + "; redone in fp32 (...)"
    how: str


@dataclass
class Pipeline:
    """A backend plus the recipe's inference configuration: `run` turns an image and its trimap
    into an alpha matte.

    A backend with an `ops` attribute (`TorchOps`) gets the whole pipeline on its device: uint8
    image and trimap are uploaded, prepared, run through `backend.forward` and restored there, and
    only the uint8 alpha comes back. Any other backend gets numpy arrays.

    `max_bytes` is the memory ceiling of one model pass (None: no ceiling, always the whole image);
    images whose pass would exceed it are run as tiles over the unknown band (see `tiling`), the
    model's memory per pixel being `bytes_per_pixel` (None: the recipe's), whose origin
    `bytes_source` names (`tiling.model_bytes_per_pixel`'s words; `load_pipeline` sets both).
    `timer(stage)`, when set, is a context manager around each stage ("upload + prepare", "model",
    "restore + download"), for `matte bench --e2e`.
    """

    backend: Backend
    cfg: InferConfig
    recipe: Recipe | None = None
    max_bytes: int | None = None
    bytes_per_pixel: int | None = None
    bytes_source: str = ""
    timer: object = None
    # One model call at a time: a TensorRT context and its scratch memory, and the half-precision
    # fallback count, are per backend, and a web service calls one loaded model from many threads.
    # Preparing and restoring stay concurrent; concurrent passes would only share the same cores.
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def ops(self):
        return getattr(self.backend, "ops", NUMPY)

    def _stage(self, name: str):
        return stage(self.timer, name)

    def prepare_host(self, image: np.ndarray, trimap: np.ndarray, ahead: int = 0) -> np.ndarray | Pinned | None:
        """The host's part of a whole-image pass, done here, so that a worker thread can do it while
        the model runs on the previous image (`batch.infer_folder`); pass it to `run`. With numpy
        ops: the network input. With device ops: the image and trimap copied into page-locked
        memory (`Pinned`), which the model's thread then only sends to the device and prepares
        there (on the H200 its "upload + prepare" took 18.6 ms per 3840x2160 image, beside a
        48 ms model pass, while the GPU waited).

        None where it belongs elsewhere: an image is prepared in its pass (or tile by tile) when
        its pass and `ahead` more inputs waiting beside it would not fit `max_bytes` (pinned
        inputs wait in host memory, which `max_bytes` does not budget: only the pass counts).
        """
        if image.shape[:2] != trimap.shape:
            return None
        if self.ops is not NUMPY:
            if not self._whole(*trimap.shape):
                return None
            with self._stage("upload + prepare"):  # the host's half of the upload, timed as the stage it was part of
                return Pinned(self.ops.pin(image), self.ops.pin(trimap))
        if not self._whole(*trimap.shape, ahead):
            return None
        with self._stage("upload + prepare"):
            return prepare(image, trimap, self.cfg)

    def _whole(self, h: int, w: int, inputs_ahead: int = 0) -> bool:
        """Whether an (h, w) image runs as one pass under `max_bytes`, with `inputs_ahead` prepared
        inputs of its size held besides."""
        from mattecli.inference import tiling

        if self.max_bytes is None:
            return True
        ah, aw = aligned_size(h, w, self.cfg.stride)
        waiting = inputs_ahead * ah * aw * 4 * self.cfg.input_channels
        return tiling.pass_bytes(h, w, self.cfg, self.bytes_per_pixel) + waiting <= self.max_bytes

    def predict_whole(self, image: np.ndarray, trimap: np.ndarray, prepared=None) -> np.ndarray:
        """(H, W, 3) uint8 RGB, (H, W) uint8 trimap -> (H, W) uint8 alpha, in one whole-image pass
        whatever `max_bytes` says (the authors' protocol, which `matte eval --weights` follows).
        `prepared`: the network input from `prepare_host`, if it was made already."""
        _check_sizes(image, trimap)
        ops = self.ops
        if prepared is not None and ops is NUMPY:
            x, trimap_d = prepared, trimap
        else:
            with self._stage("upload + prepare"):
                if isinstance(prepared, Pinned):  # pinned by a worker: only the device's half here
                    image_d, trimap_d = ops.send(prepared.image), ops.send(prepared.trimap)
                else:
                    image_d, trimap_d = ops.upload(image), ops.upload(trimap)
                x = prepare(image_d, trimap_d, self.cfg, ops)
        raw = self._forward(x, ops)
        with self._stage("restore + download"):
            return ops.download(restore(raw, trimap_d, self.cfg, ops))

    def _forward(self, x, ops):
        with self._stage("model"), self._lock:
            raw = self.backend(x) if ops is NUMPY else self.backend.forward(x)
            if not bool(ops.xp.isfinite(raw).all()):  # never a NaN alpha: the image fails, named
                raise ValueError("the model's output is not finite (NaN or infinity) for this image")
        return raw

    def _predict_float(self, image: np.ndarray, trimap: np.ndarray) -> np.ndarray:
        """One tile: numpy in, float alpha * 255 (numpy) out, for `tiling.blend_tiles`."""
        h, w = trimap.shape
        ops = self.ops
        raw = self._forward(prepare(ops.upload(image), ops.upload(trimap), self.cfg, ops), ops)
        return ops.download(unalign(raw, h, w, self.cfg, ops))

    def run(self, image: np.ndarray, trimap: np.ndarray, prepared=None) -> Matte:
        """(H, W, 3) uint8 RGB, (H, W) uint8 trimap -> the alpha and how it was computed, with
        "; redone in fp32 (...)" appended when a half-precision pass gave non-finite values.

        The whole image when its pass fits `max_bytes`; otherwise tiles over the unknown band.
        Under a ceiling, a pass that runs out of memory all the same (the bytes per pixel are an
        estimate; cuDNN's workspaces vary) is not the image's failure: it is redone in tiles
        under half the memory that pass was estimated to need, halving again while one runs
        out, and `how` says so.
        `prepared`: the network input from `prepare_host`, if it was made already.

        Raises:
            ValueError: on mismatched sizes, a ceiling too small for even the smallest tile, or a
                model output that is not finite.
        """
        from mattecli.inference import tiling

        _check_sizes(image, trimap)
        h, w = trimap.shape
        redone = getattr(self.backend, "fallbacks", 0)
        budget = self.max_bytes  # below the ceiling once a pass has run out of memory
        if self._whole(h, w):
            try:
                return self._matte(self.predict_whole(image, trimap, prepared), "whole", redone)
            except Exception as err:  # noqa: BLE001 - only running out of memory is handled
                if self.max_bytes is None or not out_of_memory(err):
                    raise
            budget = min(self.max_bytes, tiling.pass_bytes(h, w, self.cfg, self.bytes_per_pixel)) // 2
        side = None
        while True:
            ran_out = budget < self.max_bytes
            if ran_out:  # outside the handler: the exception no longer holds the failed pass's tensors
                release_cached_memory(self.ops)
            try:
                side = tiling.tile_size(budget, self.cfg, self.bytes_per_pixel)
            except ValueError:
                if side is None:
                    raise
                raise ValueError(f"out of memory even in tiles of {side}x{side}") from None
            overlap = side // tiling.OVERLAP_FRACTION
            tiles = tiling.plan_tiles(trimap, side, overlap)
            if not tiles:  # nothing to estimate: the trimap is the alpha
                return Matte(trimap.copy(), "no unknown pixels")
            redone = getattr(self.backend, "fallbacks", 0)  # a failed larger pass's redo is not this result's
            try:
                blended = tiling.blend_tiles(self._predict_float, image, trimap, tiles, overlap)
                break
            except Exception as err:  # noqa: BLE001 - only running out of memory is handled
                if not out_of_memory(err):
                    raise
            budget //= 2  # tile_size refuses a ceiling below the smallest tile
        tile_w, tile_h = max(t.x1 - t.x0 for t in tiles), max(t.y1 - t.y0 for t in tiles)  # as run: clipped
        how = f"tiled: {len(tiles)} tile{'s' if len(tiles) > 1 else ''} of {tile_w}x{tile_h}" + (
            f" ({RAN_OUT})" if ran_out else "")
        return self._matte(quantise(blended, trimap, cfg=self.cfg), how, redone)

    def _matte(self, alpha, how: str, redone: int) -> Matte:
        if getattr(self.backend, "fallbacks", 0) > redone:
            how += f"; {REDONE_FP32}"
        return Matte(alpha, how)


RAN_OUT = "a larger pass ran out of memory"


def out_of_memory(err: BaseException) -> bool:
    """Whether `err` is an allocation that failed: torch's (CUDA or CPU), numpy's or ONNX Runtime's,
    whose errors are not MemoryErrors but say so, and a CUDA library's (cuBLAS, cuDNN, cuFFT) that
    allocates outside torch's caching allocator: torch raises its *_ALLOC_FAILED status as a plain
    RuntimeError ("CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"), typically when
    the allocator's cache holds the memory that emptying it before the retry gives back."""
    if isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError":
        return True
    text = str(err).lower()
    return any(words in text for words in ("out of memory", "failed to allocate memory", "can't allocate memory",
                                           "alloc_failed"))


def release_cached_memory(ops) -> None:
    """Hand the memory cached by torch's CUDA allocator back, so that the next pass can have it."""
    if isinstance(ops, TorchOps) and ops.device.type == "cuda":
        ops.torch.cuda.empty_cache()


def stage(timer, name: str):
    """`timer(name)` (a context manager timing one stage), or a no-op without a timer."""
    import contextlib

    return timer(name) if timer is not None else contextlib.nullcontext()


REDONE_FP32 = "redone in fp32 (the half-precision output was not finite)"


def _check_sizes(image: np.ndarray, trimap: np.ndarray) -> None:
    if image.shape[:2] != trimap.shape:
        raise ValueError(f"image is {image.shape[1]}x{image.shape[0]} but trimap is "
                         f"{trimap.shape[1]}x{trimap.shape[0]}")


def reuse_freed_buffers() -> bool:
    """Let this process reuse the memory of one image's big arrays for the next image's.

    glibc returns every block above 32 MiB to the kernel on free and maps fresh, zeroed pages for
    the next one; at 4K each image allocates a dozen such arrays (the 133 MB network input among
    them), and faulting their pages in cost about as much as the arithmetic: `prepare` took 90 ms
    instead of 46 ms on the 2-core CPU (benchmarks/host_steps.py --compare-reuse). Raising glibc's
    mmap and trim thresholds to 1 GiB keeps freed blocks in the heap, and one arena for all
    threads keeps the worker threads' blocks there too (a thread's own arena maps any block over
    64 MiB afresh): the process's footprint stays near its peak (which is what `--max-memory`
    budgets) instead of shrinking between images. Called by `load_pipeline`, before a backend
    starts threads of its own. A no-op (False) where the C library is not glibc.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows)
        return False
    m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8  # glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, 1 << 30)) and bool(mallopt(m_trim_threshold, 1 << 30)) \
        and bool(mallopt(m_arena_max, 1))


def load_pipeline(weights, backend: str | None = None, device: str = "cpu", max_bytes: int | None = None,
                  half: bool = False, compile: bool = False, options: tuple[str, str] = ("--half", "--max-memory"),
                  ) -> Pipeline:
    """Build the pipeline for a weights file (`.safetensors`; exported models via their backend).

    Args:
        weights: the model file.
        backend: torch|onnx|trt, or None for the one the file's suffix implies.
        device: cpu or cuda[:N] (already resolved, see `mattecli.devices.resolve_device`).
        max_bytes: memory ceiling of one model pass (None: always the whole image).
        half, compile: the torch backend's half precision and torch.compile (see `TorchBackend`).
        options: how the caller's user names `half`, and the ceiling as they gave it, for the
            messages ("--max-memory 1MB", "max_memory 100").

    Raises:
        UsageError: half off CUDA, or a ceiling that not even the smallest tile fits (refused
            here, before any image, rather than at every one).
    """
    from mattecli.errors import UsageError
    from mattecli.inference.backends import load_backend
    from mattecli.inference.tiling import model_bytes_per_pixel, tile_size

    if half and not str(device).startswith("cuda"):
        raise UsageError(f"{options[0]} needs a CUDA device (half precision on a CPU is not a fast path)")
    reuse_freed_buffers()
    be = load_backend(weights, backend, device, half=half, compile=compile)
    per_pixel, source = model_bytes_per_pixel(be.recipe.infer, device, half, be.name, compiled=compile)
    pipeline = Pipeline(backend=be, cfg=be.recipe.infer, recipe=be.recipe, max_bytes=max_bytes,
                        bytes_per_pixel=per_pixel, bytes_source=source)
    if max_bytes is not None:
        try:
            tile_size(max_bytes, pipeline.cfg, pipeline.bytes_per_pixel)
        except ValueError as err:
            raise UsageError(f"{options[1]}: {err}") from None
    return pipeline


def encode_batch(image, trimap, cfg: InferConfig):
    """The training-time twin of `prepare`, on torch tensors already cropped to the stride:
    image (N, 3, H, W) in [0, 1], trimap (N, 1, H, W) uint8 0/128/255 -> network input."""
    import torch

    mean = torch.tensor(cfg.mean, dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std, dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
    rgb = (image - mean) / std
    if cfg.trimap == "onehot":
        tri = torch.cat([trimap == 0, trimap == 128, trimap == 255], dim=1).to(image.dtype)
    else:
        tri = trimap.to(image.dtype) * (1.0 / 255)
    return torch.cat([rgb, tri], dim=1)
