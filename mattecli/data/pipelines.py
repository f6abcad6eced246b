"""Training-time composition and augmentation pipelines named by recipes: `dim`, `gca`, `tcp`.

`TrainingDataset(manifest, pipeline, crop_size, seed)` is a torch Dataset over a split's manifest
(rows need `fg`, `alpha` and `bg`). Item `i` of epoch `e` draws every random number from
`numpy.random.default_rng(SeedSequence([seed, e, i]))`: a run is reproducible, and since a
DataLoader hands each index of an epoch to exactly one worker, workers never repeat each other's
augmentations (the IndexNet code forked one global numpy state into every worker). The stream does
not depend on the worker id, so results are also the same for any `num_workers`. Call
`set_epoch(e)` before each epoch (DataLoader workers must not be persistent for it to reach them).

Each item is a dict of tensors (H = W = crop_size):
    image   float32 (3, H, W)  RGB composite in [0, 1], *not* normalised
    fg, bg  float32 (3, H, W)  in [0, 1]; image = alpha * fg + (1 - alpha) * bg
    alpha   float32 (1, H, W)  in [0, 1]
    trimap  uint8   (1, H, W)  0 background, 128 unknown, 255 foreground — the benchmark encoding,
                               so training feeds it through the same encoder as inference does
    trimap2 uint8   (1, H, W)  `tcp` only: the noisier trimap for the textural path (the training
                               loop passes it to the model as a second input; `tcp-clean` has none)
    name    str
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from mattecli.data import trimap as tri
from mattecli.data.manifest import read_manifest
from mattecli.errors import UsageError
from mattecli.imageio import read_gray, read_image


def _resize(img: np.ndarray, size: tuple[int, int], interp=cv2.INTER_CUBIC) -> np.ndarray:
    """cv2.resize to (w, h); cubic results are clipped back into [0, 1]."""
    out = cv2.resize(img, size, interpolation=interp)
    return np.clip(out, 0, 1) if interp == cv2.INTER_CUBIC and out.dtype != np.uint8 else out


def _crop_around_unknown(trimap: np.ndarray, side: int, rng: np.random.Generator) -> tuple[int, int]:
    """Top-left of a side x side window centred on a random unknown pixel, moved inside the image."""
    h, w = trimap.shape
    unknown = np.flatnonzero(trimap == tri.UNKNOWN)
    flat = unknown[rng.integers(len(unknown))] if len(unknown) else rng.integers(h * w)
    cy, cx = divmod(int(flat), w)
    top = int(np.clip(cy - side // 2, 0, h - side))
    left = int(np.clip(cx - side // 2, 0, w - side))
    return top, left


def _compose(fg: np.ndarray, bg: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha[..., None]
    return a * fg + (1 - a) * bg


class TrainingDataset(torch.utils.data.Dataset):
    """A manifest's samples through a named pipeline (see the module docstring for the items).

    Args:
        manifest: a split folder or its manifest.csv.
        pipeline: `dim`, `gca` or `tcp`.
        crop_size: side of the returned crops.
        seed: base seed of every random draw.
    """

    def __init__(self, manifest: str | Path, pipeline: str = "dim", crop_size: int = 320,
                 seed: int = 0):
        if pipeline not in PIPELINES:
            raise UsageError(f"unknown data pipeline {pipeline!r} (known: {', '.join(PIPELINES)})")
        self.samples = read_manifest(manifest)
        lacking = [s.name for s in self.samples if s.fg is None or s.bg is None]
        if lacking or not self.samples:
            raise UsageError(f"{manifest}: training needs fg, alpha and bg for every sample "
                             f"({len(lacking)} of {len(self.samples)} lack them, e.g. {lacking[:1]})")
        self.pipeline, self.crop_size, self.seed, self.epoch = pipeline, crop_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's random stream (call before iterating each epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def rng(self, index: int) -> np.random.Generator:
        """The generator of sample `index` in the current epoch."""
        return np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, index]))

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(fg, alpha, bg) of a sample as float32 in [0, 1]: (H, W, 3), (H, W), (H, W, 3)."""
        s = self.samples[index]
        fg, alpha, bg = read_image(s.fg), read_gray(s.alpha), read_image(s.bg)
        return fg.astype(np.float32) / 255, alpha.astype(np.float32) / 255, bg.astype(np.float32) / 255

    def __getitem__(self, index: int) -> dict:
        arrays = PIPELINES[self.pipeline](self, index, self.rng(index))
        item = {"name": self.samples[index].name}
        for key, value in arrays.items():
            value = value[..., None] if value.ndim == 2 else value
            item[key] = torch.from_numpy(np.ascontiguousarray(value.transpose(2, 0, 1)))
        return item


# --------------------------------------------------------------------------------------------------
# dim: IndexNet's pipeline


def dim_pipeline(ds: TrainingDataset, index: int, rng: np.random.Generator) -> dict:
    """IndexNet (specs/data.md): grown trimap, crop 1/1.5/2 x crop_size around an unknown pixel,
    resized to crop_size, random horizontal flip; composed from the sample's own background."""
    crop = ds.crop_size
    fg, alpha, bg = ds.load(index)
    h, w = alpha.shape
    if min(h, w) < crop:
        # The paper's "min side < 320 -> upscale to min side 500", scaled with the crop size.
        scale = round(500 * crop / 320) / min(h, w)
        size = (round(w * scale), round(h * scale))
        fg, alpha, bg = _resize(fg, size), _resize(alpha, size), _resize(bg, size)
        h, w = alpha.shape
    trimap = tri.random_grown_trimap(alpha, rng)
    side = min(int(crop * rng.choice([1.0, 1.5, 2.0])), h, w)
    top, left = _crop_around_unknown(trimap, side, rng)
    window = (slice(top, top + side), slice(left, left + side))
    fg, alpha, bg, trimap = fg[window], alpha[window], bg[window], trimap[window]
    if side != crop:
        fg, alpha, bg = (_resize(x, (crop, crop)) for x in (fg, alpha, bg))
        trimap = cv2.resize(trimap, (crop, crop), interpolation=cv2.INTER_NEAREST)
    if rng.random() < 0.5:
        fg, alpha, bg, trimap = (x[:, ::-1] for x in (fg, alpha, bg, trimap))
    return {"image": _compose(fg, bg, alpha), "alpha": alpha, "fg": fg, "bg": bg, "trimap": trimap}


# --------------------------------------------------------------------------------------------------
# gca / tcp: GCA-Matting's pipeline as A2U uses it


def _mix_foregrounds(fg1, a1, fg2, a2):
    """Two foregrounds as one: alpha = 1 - (1 - a1)(1 - a2), fg = (fg1 a1 + fg2 (1 - a1) a2) / alpha."""
    alpha = 1 - (1 - a1) * (1 - a2)
    weight = ((1 - a1) * a2)[..., None]
    safe = np.where(alpha > 0, alpha, 1)[..., None]
    fg = np.where((alpha > 0)[..., None], (fg1 * a1[..., None] + fg2 * weight) / safe, fg1)
    return fg.astype(np.float32), alpha.astype(np.float32)


def random_affine(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """2x3 matrix about the image centre: rotation +-30 deg (only for images whose long side is
    >= 1024), scale 0.8..1.25 per axis, shear +-10 deg, horizontal flip with p = 0.5."""
    angle = np.deg2rad(rng.uniform(-30, 30)) if max(h, w) >= 1024 else 0.0
    sx, sy = rng.uniform(0.8, 1.25, size=2)
    shear = np.tan(np.deg2rad(rng.uniform(-10, 10)))
    flip = -1.0 if rng.random() < 0.5 else 1.0
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    linear = rot @ np.array([[1, shear], [0, 1]]) @ np.diag([sx * flip, sy])
    centre = np.array([(w - 1) / 2, (h - 1) / 2])
    return np.hstack([linear, (centre - linear @ centre)[:, None]]).astype(np.float64)


def hsv_jitter(fg: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """GCA-style colour jitter: hue shifted by +-40 deg; saturation and value offset by an amount
    drawn so that their means stay inside [0, 1]."""
    hsv = cv2.cvtColor(fg, cv2.COLOR_RGB2HSV)  # float32: H in [0, 360), S and V in [0, 1]
    hsv[..., 0] = np.mod(hsv[..., 0] + rng.uniform(-40, 40), 360)
    for c in (1, 2):
        mean = float(hsv[..., c].mean())
        hsv[..., c] = np.clip(hsv[..., c] + rng.uniform(-mean, 1 - mean), 0, 1)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def gca_pipeline(ds: TrainingDataset, index: int, rng: np.random.Generator, max_kernel: int = 29
                 ) -> dict:
    """GCA/A2U (specs/data.md): foreground mixing, resize, affine, eroded trimap, crop with unknown
    pixels, HSV jitter, composed on a random background of the split."""
    crop = ds.crop_size
    fg, alpha, _ = ds.load(index)
    h, w = alpha.shape
    if rng.random() < 0.5:
        fg2, a2, _ = ds.load(int(rng.integers(len(ds))))
        fg2, a2 = _resize(fg2, (w, h), cv2.INTER_LINEAR), _resize(a2, (w, h), cv2.INTER_LINEAR)
        fg, alpha = _mix_foregrounds(fg, alpha, fg2, a2)
    if rng.random() < 0.25:
        fg, alpha = _resize(fg, (640, 640)), _resize(alpha, (640, 640))
        h, w = 640, 640
    matrix = random_affine(h, w, rng)
    fg = cv2.warpAffine(fg, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    alpha = cv2.warpAffine(alpha, matrix, (w, h), flags=cv2.INTER_LINEAR)
    trimap = tri.random_eroded_trimap(alpha, rng, max_kernel)
    if min(h, w) < crop:
        scale = crop / min(h, w)
        size = (max(crop, round(w * scale)), max(crop, round(h * scale)))
        fg, alpha = _resize(fg, size), _resize(alpha, size)
        trimap = cv2.resize(trimap, size, interpolation=cv2.INTER_NEAREST)
    top, left = _crop_around_unknown(trimap, crop, rng)
    window = (slice(top, top + crop), slice(left, left + crop))
    fg, alpha, trimap = fg[window], alpha[window], trimap[window]
    fg = hsv_jitter(np.ascontiguousarray(fg), rng)
    _, _, bg = ds.load(int(rng.integers(len(ds))))
    bg = _resize(bg, (crop, crop))
    return {"image": _compose(fg, bg, alpha), "alpha": alpha, "fg": fg, "bg": bg, "trimap": trimap}


def tcp_pipeline(ds: TrainingDataset, index: int, rng: np.random.Generator) -> dict:
    """TCP (specs/tcp.md): `gca` with erosion kernels 1..30, plus the noisy second trimap."""
    arrays = gca_pipeline(ds, index, rng, max_kernel=30)
    arrays["trimap2"], _ = tri.noisy_trimap(arrays["trimap"], arrays["alpha"], rng)
    return arrays


def tcp_clean_pipeline(ds: TrainingDataset, index: int, rng: np.random.Generator) -> dict:
    """TCP without trimap robustness (the `tcp-no-robust` ablation): `tcp`'s first trimap and no
    second one, so both paths of the model read the same trimap."""
    return gca_pipeline(ds, index, rng, max_kernel=30)


PIPELINES = {"dim": dim_pipeline, "gca": gca_pipeline, "tcp": tcp_pipeline, "tcp-clean": tcp_clean_pipeline}


def build_dataset(data_config, manifest: str | Path, seed: int = 0) -> TrainingDataset:
    """The training dataset a recipe's `data` section names (pipeline and crop size)."""
    return TrainingDataset(manifest, data_config.pipeline, data_config.crop_size, seed)
