"""Whole image or tiles: how one image is run under a memory ceiling.

The model's memory grows with the number of input pixels (`recipe.infer.bytes_per_pixel`, measured
by `benchmarks/measure_memory.py`). An image whose aligned size fits the ceiling is run whole,
exactly as the authors' protocol does. A larger one is run as square tiles, each a multiple of the
model's stride and as large as the ceiling allows, laid only over the unknown band of the trimap:
a tile that holds no unknown pixel is never run, and known regions are copied from the trimap.
Neighbouring tiles overlap by a quarter of the tile and are blended with linear ramps, so no seam
falls where only one tile saw the context.

Global context is, by design, limited to one tile: a model with image-level pooling (the ASPP of
IndexNet's released recipes pools its whole map; A2U's GroupNorm normalises over it) sees less of the
image than in a whole pass.
docs/benchmarks.md states the measured difference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mattecli.sizes import aligned_size

# Memory of one pass besides the network's activations, per aligned input pixel: the normalised
# float32 image and its resized copy and the network input (prepare: 40-48 bytes), and the raw
# output and its restored copies; an upper bound. Inputs prepared ahead by `matte infer`'s workers
# are counted apart (`Pipeline.prepare_host`).
PREPARE_BYTES_PER_PIXEL = 96
MIN_TILE_STRIDES = 4  # a tile smaller than 4 strides has almost no context left
OVERLAP_FRACTION = 4  # overlap = tile // 4

DEFAULT_CPU_CEILING = 4 * 2**30  # `--max-memory` on a CPU when not given


def default_max_bytes(device: str) -> int:
    """`--max-memory` when not given: 4 GB on a CPU; on CUDA 90% of the GPU's memory (4 GB would
    tile IndexNet at 4K on a GPU of 80 GB)."""
    if not str(device).startswith("cuda"):
        return DEFAULT_CPU_CEILING
    import torch

    return int(0.9 * torch.cuda.get_device_properties(device).total_memory)


def model_bytes_per_pixel(cfg, device: str = "cpu", half: bool = False, backend: str = "torch",
                          compiled: bool = False) -> tuple[int, str]:
    """The model's peak memory per input pixel on `device` with `backend`, and where the figure
    comes from.

    CPU: `bytes_per_pixel` (peak RSS, benchmarks/measure_memory.py); an exported graph in ONNX
    Runtime (`backend` "onnx"): `onnx_bytes_per_pixel` where the recipe has it. CUDA:
    `cuda_bytes_per_pixel` / `cuda_half_bytes_per_pixel` (torch.cuda.max_memory_allocated,
    benchmarks/device_check.sh) where the recipe has them; otherwise the CPU figure, which the
    float32 CUDA pass stays near (the same activations) and a half-precision pass stays under.
    `compiled` (torch.compile on CUDA): `cuda_compiled_half_bytes_per_pixel` where it is above
    that, twice it in float32 (twice the bytes per activation; not measured).
    """
    if not str(device).startswith("cuda"):
        if backend == "onnx" and getattr(cfg, "onnx_bytes_per_pixel", 0):
            return cfg.onnx_bytes_per_pixel, "recipe infer.onnx_bytes_per_pixel (ONNX Runtime on a CPU, measured)"
        return cfg.bytes_per_pixel, "recipe infer.bytes_per_pixel (CPU, measured)"
    key = "cuda_half_bytes_per_pixel" if half else "cuda_bytes_per_pixel"
    measured = getattr(cfg, key, 0)
    if measured:
        figure, source = measured, f"recipe infer.{key} (measured on a GPU)"
    else:
        figure, source = cfg.bytes_per_pixel, f"recipe infer.bytes_per_pixel (CPU figure: {key} not measured yet)"
    compiled_half = getattr(cfg, "cuda_compiled_half_bytes_per_pixel", 0) if compiled and backend == "torch" else 0
    if compiled_half and compiled_half * (1 if half else 2) > figure:
        if half:
            return compiled_half, "recipe infer.cuda_compiled_half_bytes_per_pixel (--compile; measured on a GPU)"
        return 2 * compiled_half, ("twice recipe infer.cuda_compiled_half_bytes_per_pixel (--compile in float32 "
                                   "is not measured: twice the float16 figure stands in)")
    return figure, source


def pass_bytes(h: int, w: int, cfg, per_pixel: int | None = None) -> int:
    """Estimated peak memory of one model pass over an (h, w) input, after stride alignment
    (`per_pixel`: the model's bytes per pixel, default the recipe's CPU figure)."""
    ah, aw = aligned_size(h, w, cfg.stride)
    return ah * aw * ((per_pixel or cfg.bytes_per_pixel) + PREPARE_BYTES_PER_PIXEL)


def tile_size(max_bytes: int, cfg, per_pixel: int | None = None) -> int:
    """The largest square tile side (a multiple of the stride) whose pass fits `max_bytes`.

    Raises:
        ValueError: when not even a tile of MIN_TILE_STRIDES strides fits.
    """
    per_pixel = per_pixel or cfg.bytes_per_pixel
    side = int((max_bytes / (per_pixel + PREPARE_BYTES_PER_PIXEL)) ** 0.5) // cfg.stride * cfg.stride
    smallest = MIN_TILE_STRIDES * cfg.stride
    if side < smallest:
        need = pass_bytes(smallest, smallest, cfg, per_pixel)
        ceiling = f"{max_bytes / 2**20:.0f} MiB" if max_bytes >= 2**20 else f"{max_bytes:,} bytes"  # 1KB: not "0 MiB"
        raise ValueError(f"a memory ceiling of {ceiling} is too small for this model: "
                         f"the smallest tile ({smallest}x{smallest}) needs about {-(-need // 2**20)} MiB")  # rounded up
    return side


@dataclass(frozen=True)
class Tile:
    """A window `[y0:y1, x0:x1]` of the image."""

    y0: int
    x0: int
    y1: int
    x1: int


def _starts(lo: int, hi: int, size: int, tile: int, overlap: int) -> list[int]:
    """Origins of windows of `tile` inside [0, size) covering [lo, hi), evenly spread, adjacent
    windows overlapping by at least `overlap`."""
    if tile >= size:
        return [0]
    if hi - lo <= tile:  # one window, centred on the band so it sees context on both sides
        return [min(max(0, lo - (tile - (hi - lo)) // 2), size - tile)]
    first, last = min(lo, size - tile), hi - tile
    n = -(-(last - first) // (tile - overlap)) + 1
    return sorted({first + round(i * (last - first) / (n - 1)) for i in range(n)})


def plan_tiles(trimap: np.ndarray, tile: int, overlap: int) -> list[Tile]:
    """Square windows of side `tile` (clipped to the image) covering every unknown pixel (128).

    Windows are laid on a regular grid over the bounding box of the unknown band, widened by half
    the overlap on each side so that band pixels near the box's edge still get context; windows holding no unknown
    pixel are dropped.
    """
    h, w = trimap.shape
    unknown = trimap == 128
    rows, cols = np.flatnonzero(unknown.any(1)), np.flatnonzero(unknown.any(0))
    if rows.size == 0:
        return []
    y_lo, y_hi = max(0, rows[0] - overlap // 2), min(h, rows[-1] + 1 + overlap // 2)
    x_lo, x_hi = max(0, cols[0] - overlap // 2), min(w, cols[-1] + 1 + overlap // 2)
    # summed-area table: count unknown pixels in any window in O(1)
    sat = np.pad(unknown.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    tiles = []
    for y0 in _starts(y_lo, y_hi, h, tile, overlap):
        for x0 in _starts(x_lo, x_hi, w, tile, overlap):
            y1, x1 = min(h, y0 + tile), min(w, x0 + tile)
            if sat[y1, x1] - sat[y0, x1] - sat[y1, x0] + sat[y0, x0] > 0:
                tiles.append(Tile(y0, x0, y1, x1))
    return tiles


def _ramp(length: int, overlap: int, fade_start: bool, fade_end: bool) -> np.ndarray:
    ramp = np.ones(length, np.float32)
    n = min(overlap, length // 2)
    if n > 0:
        steps = (np.arange(n, dtype=np.float32) + 1) / (n + 1)
        if fade_start:
            ramp[:n] = steps
        if fade_end:
            ramp[length - n:] = steps[::-1]
    return ramp


def blend_tiles(predict, image: np.ndarray, trimap: np.ndarray, tiles: list[Tile], overlap: int) -> np.ndarray:
    """Run `predict(image_tile, trimap_tile) -> float alpha * 255` on each tile and blend.

    Each tile's weight ramps linearly from the tile's edge over `overlap` pixels, except along the
    image's own border, where no neighbour can take over. Pixels no tile covered are 0 (they are
    known pixels; the caller copies the trimap there).
    """
    h, w = trimap.shape
    acc = np.zeros((h, w), np.float32)
    weight = np.zeros((h, w), np.float32)
    for t in tiles:
        pred = predict(image[t.y0:t.y1, t.x0:t.x1], trimap[t.y0:t.y1, t.x0:t.x1])
        wy = _ramp(t.y1 - t.y0, overlap, t.y0 > 0, t.y1 < h)
        wx = _ramp(t.x1 - t.x0, overlap, t.x0 > 0, t.x1 < w)
        tile_weight = wy[:, None] * wx[None, :]
        acc[t.y0:t.y1, t.x0:t.x1] += pred * tile_weight
        weight[t.y0:t.y1, t.x0:t.x1] += tile_weight
    np.divide(acc, weight, out=acc, where=weight > 0)
    return acc
