"""The one inference path: every consumer of a model (eval, infer, bench, export --verify) uses it.

`prepare` turns an RGB image and a benchmark trimap into the aligned, normalised float32 tensor a
backend sees; `restore` turns the backend's raw alpha back into an 8-bit matte of the original
size. How to align (resize as IndexNet's demo does, or reflect-pad as A2U's) and how to encode the
trimap come from the recipe's `infer` section, which travels inside every weights file.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mattecli.recipes import InferConfig


def aligned_size(h: int, w: int, stride: int) -> tuple[int, int]:
    return -(-h // stride) * stride, -(-w // stride) * stride


def _normalise(image: np.ndarray, cfg: InferConfig) -> np.ndarray:
    if cfg.normalise == "pixel":  # mmagic: (x - 255 mean) / (255 std), float32 throughout
        mean = np.asarray(cfg.mean, dtype=np.float64) * 255
        std = np.asarray(cfg.std, dtype=np.float64) * 255
        return (image.astype(np.float32) - mean.astype(np.float32)) / std.astype(np.float32)
    # The authors scale in float32 (a python float times a float32 array), then subtract and
    # divide in float64, then cast back: reproduced step by step so the input is bit-identical.
    scaled = image.astype(np.float32) * np.float32(1.0 / 255)
    return ((scaled - np.asarray(cfg.mean)) / np.asarray(cfg.std)).astype(np.float32)


def _encode_trimap(trimap: np.ndarray, cfg: InferConfig) -> np.ndarray:
    if cfg.trimap == "onehot":  # background, unknown, foreground
        return np.stack([trimap == 0, trimap == 128, trimap == 255], axis=2).astype(np.float32)
    if cfg.normalise == "pixel":  # mmagic divides (uint8 / 255.0 in float32)
        return (trimap.astype(np.float32) / np.float32(255))[..., None]
    # trimap / 255 as the authors compute it (float32; 128 -> 0.50196..., not 0.5)
    return (trimap.astype(np.float32) * np.float32(1.0 / 255))[..., None]


def prepare(image: np.ndarray, trimap: np.ndarray, cfg: InferConfig) -> np.ndarray:
    """(H, W, 3) uint8 RGB + (H, W) uint8 trimap (0/128/255) -> (1, C, H', W') float32, aligned."""
    import cv2

    h, w = trimap.shape
    rgb = _normalise(image, cfg)
    tri = _encode_trimap(trimap, cfg)
    ah, aw = aligned_size(h, w, cfg.stride)
    if cfg.align == "resize-down":
        ah, aw = _aligned_down(h, w, cfg.stride)
    if (ah, aw) != (h, w):
        if cfg.align == "resize-down":  # mmagic: torch bicubic (image), nearest (trimap), no antialias
            rgb = _torch_resize(rgb, ah, aw, "bicubic")
            tri = _torch_resize(tri, ah, aw, "nearest")
        elif cfg.align == "resize":
            rgb = cv2.resize(rgb, (aw, ah), interpolation=cv2.INTER_CUBIC)
            tri = cv2.resize(tri, (aw, ah), interpolation=cv2.INTER_NEAREST)
            tri = tri[..., None] if tri.ndim == 2 else tri
        elif cfg.align == "pad":  # bottom/right, numpy 'reflect' (the edge is not repeated)
            pad = ((0, ah - h), (0, aw - w), (0, 0))
            rgb, tri = _reflect_pad(rgb, pad), _reflect_pad(tri, pad)
        else:
            raise ValueError(f"unknown alignment {cfg.align!r}")
    x = np.concatenate([rgb, tri], axis=2)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def _aligned_down(h: int, w: int, stride: int) -> tuple[int, int]:
    if h < stride or w < stride:
        raise ValueError(f"image is {w}x{h}: align resize-down needs at least {stride} pixels on each side")
    return h - h % stride, w - w % stride


def _torch_resize(x: np.ndarray, h: int, w: int, mode: str) -> np.ndarray:
    """(H, W[, C]) float32 -> (h, w[, C]) with torch's interpolate (align_corners False), as mmagic
    resizes; torch's bicubic differs from OpenCV's at the borders and in rounding."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(x if x.ndim == 3 else x[..., None])).permute(2, 0, 1)[None]
    out = F.interpolate(t, size=(h, w), mode=mode).numpy()[0].transpose(1, 2, 0)
    return out if x.ndim == 3 else out[..., 0]


def _reflect_pad(x: np.ndarray, pad) -> np.ndarray:
    # numpy's reflect needs pad < size; images smaller than the padding reflect repeatedly
    while any(p[1] >= s for p, s in zip(pad, x.shape) if p[1]):
        step = tuple((0, min(p[1], s - 1)) for p, s in zip(pad, x.shape))
        x = np.pad(x, step, mode="reflect")
        pad = tuple((0, p[1] - st[1]) for p, st in zip(pad, step))
    return np.pad(x, pad, mode="reflect")


def unalign(raw: np.ndarray, h: int, w: int, cfg: InferConfig) -> np.ndarray:
    """Raw (H', W') network output -> (h, w) float32 alpha * 255, alignment undone, clipped."""
    import cv2

    raw = np.asarray(raw, dtype=np.float32).reshape(raw.shape[-2:])
    if cfg.align == "resize-down":
        alpha = _torch_resize(raw, h, w, "bicubic") if raw.shape != (h, w) else raw
    elif cfg.align == "resize":
        alpha = cv2.resize(raw, (w, h), interpolation=cv2.INTER_CUBIC) if raw.shape != (h, w) else raw
    else:
        alpha = raw[:h, :w]
    return np.clip(alpha, 0, 1) * np.float32(255)


def finish(alpha: np.ndarray, trimap: np.ndarray, cfg: InferConfig | None = None) -> np.ndarray:
    """Float alpha * 255 -> uint8: known trimap regions copied, truncated (the papers' protocols);
    with the recipe's `known: force` and `rounding: half-even`, mmagic's postprocess instead."""
    if cfg is not None and (cfg.known, cfg.rounding) != ("copy", "truncate"):
        alpha = alpha.copy()
        if cfg.known == "force":  # only exact 0 and 255 are known; other values keep the prediction
            alpha[trimap == 255], alpha[trimap == 0] = 255, 0
        else:
            alpha = np.where(trimap == 128, alpha, trimap.astype(np.float32))
        return (np.rint(alpha) if cfg.rounding == "half-even" else alpha).astype(np.uint8)
    unknown = (trimap == 128).astype(np.float32)
    alpha = (1 - unknown) * trimap + unknown * alpha
    return alpha.astype(np.uint8)


def restore(raw: np.ndarray, trimap: np.ndarray, cfg: InferConfig) -> np.ndarray:
    """Raw (H', W') network output -> (H, W) uint8 alpha: undo the alignment, clip to [0, 1],
    copy the known trimap regions, truncate to 8 bits (as the papers' protocols do)."""
    h, w = trimap.shape
    return finish(unalign(raw, h, w, cfg), trimap, cfg)


@dataclass
class Pipeline:
    """A backend (callable on an aligned float32 NCHW array, returning raw alpha) plus the recipe's
    inference configuration.

    `max_bytes` is the memory ceiling of one model pass (None: no ceiling, always the whole image);
    images whose pass would exceed it are run as tiles over the unknown band (see `tiling`).
    """

    backend: object
    cfg: InferConfig
    recipe: object = None
    max_bytes: int | None = None

    def __call__(self, image: np.ndarray, trimap: np.ndarray) -> np.ndarray:
        return self.matte(image, trimap)[0]

    def predict(self, image: np.ndarray, trimap: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB, (H, W) uint8 trimap -> (H, W) uint8 alpha, in one whole-image pass."""
        _check_sizes(image, trimap)
        return finish(self._predict_float(image, trimap), trimap, self.cfg)

    def _predict_float(self, image: np.ndarray, trimap: np.ndarray) -> np.ndarray:
        h, w = trimap.shape
        raw = self.backend(prepare(image, trimap, self.cfg))
        return unalign(raw[0, 0], h, w, self.cfg)

    def matte(self, image: np.ndarray, trimap: np.ndarray) -> tuple[np.ndarray, str]:
        """The alpha and how it was computed ("whole", "tiled: N tiles of SxS", "no unknown pixels").

        The whole image when its pass fits `max_bytes`; otherwise tiles over the unknown band.

        Raises:
            ValueError: on mismatched sizes, or a ceiling too small for even the smallest tile.
        """
        from mattecli.inference import tiling

        _check_sizes(image, trimap)
        h, w = trimap.shape
        if self.max_bytes is None or tiling.pass_bytes(h, w, self.cfg) <= self.max_bytes:
            return self.predict(image, trimap), "whole"
        side = tiling.tile_size(self.max_bytes, self.cfg)
        overlap = side // tiling.OVERLAP_FRACTION
        tiles = tiling.plan_tiles(trimap, side, overlap)
        if not tiles:  # nothing to estimate: the trimap is the alpha
            return trimap.copy(), "no unknown pixels"
        alpha = tiling.blend_tiles(self._predict_float, image, trimap, tiles, overlap)
        return finish(alpha, trimap, self.cfg), f"tiled: {len(tiles)} tiles of {side}x{side}"


def _check_sizes(image: np.ndarray, trimap: np.ndarray) -> None:
    if image.shape[:2] != trimap.shape:
        raise ValueError(f"image is {image.shape[1]}x{image.shape[0]} but trimap is "
                         f"{trimap.shape[1]}x{trimap.shape[0]}")


def load_pipeline(weights, backend: str | None = None, device: str = "cpu",
                  max_bytes: int | None = None) -> Pipeline:
    """Build the pipeline for a weights file (`.safetensors`; exported models via their backend).

    Args:
        weights: the model file.
        backend: torch|onnx|trt, or None for the one the file's suffix implies.
        device: cpu or cuda[:N].
        max_bytes: memory ceiling of one model pass (None: always the whole image).
    """
    from mattecli.inference.backends import load_backend

    be = load_backend(weights, backend, device)
    return Pipeline(backend=be, cfg=be.recipe.infer, recipe=be.recipe, max_bytes=max_bytes)


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
