"""Training-time composition and augmentation pipelines named by recipes.

| name                   | follows                                                   | reads per sample         |
| ---------------------- | --------------------------------------------------------- | ------------------------ |
| `dim`                  | IndexNet, `scripts/hldataset.py`                          | fg, alpha, bg            |
| `gca`                  | A2U `scripts/data_generator.py` (GCA-Matting's pipeline)  | fg, alpha (x2 if mixed), one bg |
| `tcp`, `tcp-clean`     | `gca` with TCP's trimaps, composed on the fly             | as `gca`                 |
| `tcp-composited`, `tcp-composited-clean` | TCP's paper: prepared composites + trimaps | image, alpha        |
| `mmagic`               | mmagic `configs/indexnet/indexnet_mobv2_1xb16-78k_comp1k.py` | image, fg, bg, alpha  |
| `mmagic-dimaug`        | mmagic `configs/indexnet/indexnet_mobv2-dimaug_1xb16-78k_comp1k.py` | image, fg, bg, alpha |

`image` is the composite `prepare-data --composite` writes (the `image` manifest column); the
pipelines that read it train on that file, as the papers and mmagic did, instead of composing.

`TrainingDataset(manifest, pipeline, crop_size, seed)` is a torch Dataset over a split's manifest.
Item `i` of epoch `e` draws every random number from
`numpy.random.default_rng(SeedSequence([seed, e, i]))`: a run is reproducible, and since a
DataLoader hands each index of an epoch to exactly one worker, workers never repeat each other's
augmentations (the IndexNet code forked one global numpy state into every worker). The stream does
not depend on the worker id, so results are also the same for any `num_workers`. Call
`set_epoch(e)` before each epoch (DataLoader workers must not be persistent for it to reach them).

Each item is a dict of tensors (H = W = crop_size):
    image   float32 (3, H, W)  RGB composite in [0, 1], *not* normalised
    fg, bg  float32 (3, H, W)  in [0, 1] (not from the `tcp-composited*` pipelines, whose loss
                               needs neither); composed pipelines: image = alpha fg + (1 - alpha) bg
    alpha   float32 (1, H, W)  in [0, 1]
    trimap  uint8   (1, H, W)  0 background, 128 unknown, 255 foreground — the benchmark encoding,
                               so training feeds it through the same encoder as inference does
    trimap2 uint8   (1, H, W)  `tcp` and `tcp-composited` only: the noisier trimap for the textural
                               path (the training loop passes it to the model as a second input)
    name    str
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch

from mattecli.data import trimap as tri
from mattecli.data.manifest import manifest_file, missing_files, read_manifest
from mattecli.errors import InputError, UsageError
from mattecli.imageio import read_gray, read_image


def _unit(x: np.ndarray) -> np.ndarray:
    """uint8 -> float32 in [0, 1]."""
    return x.astype(np.float32) / 255


def _resize(img: np.ndarray, size: tuple[int, int], interp=cv2.INTER_CUBIC) -> np.ndarray:
    """cv2.resize to (w, h); cubic results on floats are clipped back into [0, 1] (uint8 saturates)."""
    out = cv2.resize(img, size, interpolation=interp)
    return np.clip(out, 0, 1) if interp == cv2.INTER_CUBIC and out.dtype != np.uint8 else out


def fitting_window(unknown: np.ndarray, side: int, rng: np.random.Generator,
                   exclusive_end: bool = False, min_count: int = 1) -> tuple[int, int] | None:
    """Top-left of a side x side window centred on a random unknown pixel whose window fits.

    Every author draws the centre only among the unknown pixels whose whole window lies inside
    the image. IndexNet's centre is at offset ceil(side / 2) in the window and its centres run
    from there to h - ceil(side / 2) inclusive (hldataset.py:111-120): for an odd side that leaves
    out the window ending at the image's edge. A2U's and mmagic's (`exclusive_end=True`) centre is
    at offset side // 2 and their centres stop at h - side // 2 (exclusive), which for an even
    side leaves out that window.

    Args:
        unknown: (H, W) bool mask of the unknown region.
        side: window side.
        rng: the sample's generator.
        exclusive_end: A2U's and mmagic's range of centres.
        min_count: None is returned when fewer candidates than this exist (A2U: 10).

    Returns:
        (top, left), or None when there are too few candidates.
    """
    h, w = unknown.shape
    half = side // 2 if exclusive_end else (side + 1) // 2
    stop_h, stop_w = (h - half, w - half) if exclusive_end else (h - half + 1, w - half + 1)
    allowed = np.zeros_like(unknown, dtype=bool)
    allowed[half:max(stop_h, 0), half:max(stop_w, 0)] = True
    ys, xs = np.nonzero(unknown & allowed)
    if len(ys) < max(min_count, 1):
        return None
    k = int(rng.integers(len(ys)))
    return int(ys[k]) - half, int(xs[k]) - half


def clipped_window(unknown: np.ndarray, side: int, rng: np.random.Generator,
                   half: int | None = None) -> tuple[int, int] | None:
    """IndexNet's and mmagic's fallback: a window centred on any unknown pixel, moved inside.

    `half` is the centre's offset in the window: side // 2 by default (mmagic's), IndexNet's is
    ceil(side / 2) (hldataset.py:111), which differs for odd sides."""
    h, w = unknown.shape
    half = side // 2 if half is None else half
    ys, xs = np.nonzero(unknown)
    if len(ys) == 0:
        return None
    k = int(rng.integers(len(ys)))
    return (int(np.clip(ys[k] - half, 0, h - side)), int(np.clip(xs[k] - half, 0, w - side)))


def _random_window(h: int, w: int, side: int, rng: np.random.Generator) -> tuple[int, int]:
    return int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))


def _crop(arrays: list[np.ndarray], top: int, left: int, side: int) -> list[np.ndarray]:
    return [x[top:top + side, left:left + side] for x in arrays]


def _compose(fg: np.ndarray, bg: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha[..., None]
    return a * fg + (1 - a) * bg


@dataclass(frozen=True)
class Pipeline:
    """A named pipeline: `run(dataset, index, rng) -> arrays` and the manifest columns it reads."""

    run: Callable
    reads: tuple[str, ...]
    second_trimap: bool = False  # `trimap2`, the model's second input: a model must take one


class TrainingDataset(torch.utils.data.Dataset):
    """A manifest's samples through a named pipeline (see the module docstring for the items).

    Args:
        manifest: a split folder or its manifest.csv.
        pipeline: a name in `PIPELINES`.
        crop_size: side of the returned crops.
        seed: base seed of every random draw.
    """

    def __init__(self, manifest: str | Path, pipeline: str = "dim", crop_size: int = 320,
                 seed: int = 0):
        if pipeline not in PIPELINES:
            raise UsageError(f"unknown data pipeline {pipeline!r} (known: {', '.join(PIPELINES)})")
        self.samples = read_manifest(manifest)
        if not self.samples:  # it said "0 of 0 lack them, e.g. []"
            raise UsageError(f"{manifest_file(manifest)}: the manifest lists no samples")
        reads = PIPELINES[pipeline].reads
        lacking = [s.name for s in self.samples if any(getattr(s, c) is None for c in reads)]
        if lacking:
            hint = (" (prepare the split with `matte prepare-data ... --composite`)"
                    if "image" in reads else "")
            raise UsageError(f"{manifest}: the {pipeline} pipeline needs {', '.join(reads)} for every "
                             f"sample ({len(lacking)} of {len(self.samples)} lack them, e.g. "
                             f"{lacking[:1]}){hint}")
        missing = missing_files(self.samples, reads)
        if missing:
            raise UsageError(f"{manifest_file(manifest)}: {len(missing)} of the files it lists "
                             f"{'is' if len(missing) == 1 else 'are'} missing, e.g. {missing[0]}")
        self.pipeline, self.crop_size, self.seed, self.epoch = pipeline, crop_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's random stream (call before iterating each epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def rng(self, index: int) -> np.random.Generator:
        """The generator of sample `index` in the current epoch."""
        return np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, index]))

    def read(self, index: int, column: str) -> np.ndarray:
        """One file of a sample as uint8: (H, W) for `alpha`, RGB (H, W, 3) for the others."""
        path = getattr(self.samples[index], column)
        return read_gray(path) if column == "alpha" else read_image(path)

    def __getitem__(self, index: int) -> dict:
        arrays = PIPELINES[self.pipeline].run(self, index, self.rng(index))
        item = {"name": self.samples[index].name}
        for key, value in arrays.items():
            value = value[..., None] if value.ndim == 2 else value
            item[key] = torch.from_numpy(np.ascontiguousarray(value.transpose(2, 0, 1)))
        return item


def _read_together(ds: TrainingDataset, index: int, columns: tuple[str, ...]) -> list[np.ndarray]:
    """Files of one sample that lie pixel on pixel (fg, alpha, its composite and background), read
    in order; one of another size than the first is named. A hand-made manifest's alpha of another
    size was a broadcasting ValueError at the batch, or a crop of fg and alpha from two places."""
    arrays = [ds.read(index, c) for c in columns]
    h, w = arrays[0].shape[:2]
    for column, array in zip(columns[1:], arrays[1:]):
        if array.shape[:2] != (h, w):
            sample = ds.samples[index]
            raise InputError(getattr(sample, column), f"{column} is {array.shape[1]}x{array.shape[0]} but the "
                             f"sample's {columns[0]} {getattr(sample, columns[0])} is {w}x{h}")
    return arrays


def _flip(arrays: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """Horizontal flip with p = 0.5 (IndexNet's RandomFlip, mmagic's Flip)."""
    return [np.ascontiguousarray(x[:, ::-1]) for x in arrays] if rng.random() < 0.5 else arrays


# --------------------------------------------------------------------------------------------------
# dim: IndexNet (hldataset.py RandomCrop + RandomFlip, generate_trimap)


def crop_sizes(crop: int, short_side: int) -> list[int]:
    """IndexNet's candidate crop sides: floor(crop x {1, 1.5, 2}) strictly below the short side.

    Their code has no candidate when the short side equals `crop` (it crashes there); the window
    then is `crop` itself, which fits.
    """
    sizes = [int(math.floor(crop * s)) for s in (1.0, 1.5, 2.0)]
    return [s for s in sizes if s < short_side] or [crop]


def dim_pipeline(ds: TrainingDataset, index: int, rng: np.random.Generator) -> dict:
    """IndexNet: trimap grown from the alpha by 1..19 px; images whose short side is below the
    crop are resized to short side 500 (x crop / 320) first; a crop side from `crop_sizes`,
    centred on an unknown pixel whose window fits; resized to the crop (bicubic, trimap nearest);
    horizontal flip. Composed from the sample's own background, stored as cropped for it.

    Every resize works on the uint8 arrays, as theirs (hldataset.py:48-79): each bicubic result is
    rounded to 8 bits before the next step."""
    crop = ds.crop_size
    fg, alpha, bg = _read_together(ds, index, ("fg", "alpha", "bg"))
    trimap = tri.random_grown_trimap(_unit(alpha), rng)  # on the full image, before any resize (theirs)
    h, w = alpha.shape
    if min(h, w) < crop:
        # hldataset.py: s = (320 + 180) / min(h, w), sizes floored; scaled with the crop size
        s = (500 * crop / 320) / min(h, w)
        size = (int(math.floor(w * s)), int(math.floor(h * s)))
        fg, alpha, bg = (cv2.resize(x, size, interpolation=cv2.INTER_CUBIC) for x in (fg, alpha, bg))
        trimap = cv2.resize(trimap, size, interpolation=cv2.INTER_NEAREST)
        h, w = alpha.shape
    side = int(rng.choice(crop_sizes(crop, min(h, w))))
    unknown = trimap == tri.UNKNOWN
    # their code crashes on a crop without unknown pixels; a random window is ours
    top, left = (fitting_window(unknown, side, rng)
                 or clipped_window(unknown, side, rng, half=(side + 1) // 2)
                 or _random_window(h, w, side, rng))
    fg, alpha, bg, trimap = _crop([fg, alpha, bg, trimap], top, left, side)
    if side != crop:
        fg, alpha, bg = (cv2.resize(x, (crop, crop), interpolation=cv2.INTER_CUBIC) for x in (fg, alpha, bg))
        trimap = cv2.resize(trimap, (crop, crop), interpolation=cv2.INTER_NEAREST)
    fg, alpha, bg, trimap = _flip([fg, alpha, bg, trimap], rng)
    fg, alpha, bg = _unit(fg), _unit(alpha), _unit(bg)
    return {"image": _compose(fg, bg, alpha), "alpha": alpha, "fg": fg, "bg": bg, "trimap": trimap}


# --------------------------------------------------------------------------------------------------
# gca / tcp: A2U's data_generator.py (GCA-Matting's pipeline). Their transforms, in order:
# _composite_fg, RandomAffine, RandomHorizontalFlip, GenTrimap, RandomCrop, RandomJitter, Composite.
# Every geometric step is nearest-neighbour (theirs); only the background is resized bicubically.


def mix_foregrounds(fg1: np.ndarray, a1: np.ndarray, fg2: np.ndarray, a2: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """A2U `_composite_fg`: two foregrounds as one, alpha = 1 - (1 - a1)(1 - a2) and
    fg = (fg1 a1 + fg2 (1 - a1) a2) / (alpha + 1e-5), truncated to uint8; unchanged when the union
    would be opaque everywhere.

    Args:
        fg1, fg2: (H, W, 3) uint8 foregrounds of the same size.
        a1, a2: (H, W) float32 alphas in [0, 1].

    Returns:
        (fg uint8, alpha float32).
    """
    alpha = 1 - (1 - a1) * (1 - a2)
    if not (alpha < 1).any():
        return fg1, a1
    # float32 products in their order (fg2 (1 - a1), then a2): another order truncates a few
    # pixels one step differently
    fg = (fg1.astype(np.float32) * a1[..., None]
          + fg2.astype(np.float32) * (1 - a1[..., None]) * a2[..., None]) / (alpha[..., None] + 1e-5)
    return fg.astype(np.uint8), alpha.astype(np.float32)


def a2u_inverse_affine(h: int, w: int, angle: float, scale: tuple[float, float], shear: float,
                       flip: tuple[int, int]) -> np.ndarray:
    """The 2x3 map from output to input pixels of A2U's `RandomAffine` (use with WARP_INVERSE_MAP).

    Forward, about the centre (w / 2 + 0.5, h / 2 + 0.5): per-axis flip, per-axis scale, rotation by
    `angle`, shear (degrees), i.e. the linear part [[cos(a+s), -sin(a+s)], [sin a, cos a]] diag(sx fx,
    sy fy). Its inverse is diag(fx / sx, fy / sy) [[cos a, sin(a+s)], [-sin a, cos(a+s)]] / cos s.
    """
    a, s = math.radians(angle), math.radians(shear)
    rows = np.array([[math.cos(a), math.sin(a + s)], [-math.sin(a), math.cos(a + s)]]) / math.cos(s)
    linear = np.diag([flip[0] / scale[0], flip[1] / scale[1]]) @ rows
    centre = np.array([w * 0.5 + 0.5, h * 0.5 + 0.5])
    return np.hstack([linear, (centre - linear @ centre)[:, None]])


def random_affine_params(h: int, w: int, rng: np.random.Generator) -> dict:
    """A2U's draws: rotation +-30 deg only when the long side is >= 1024 (else 0), scale
    0.8..1.25 per axis, one shear angle +-10 deg, a flip per axis with p = 0.5 each."""
    return {"angle": float(rng.uniform(-30, 30)) if max(h, w) >= 1024 else 0.0,
            "scale": tuple(float(v) for v in rng.uniform(0.8, 1.25, size=2)),
            "shear": float(rng.uniform(-10, 10)),
            "flip": tuple(int(v) for v in np.where(rng.random(2) < 0.5, -1, 1))}


def hsv_jitter(fg: np.ndarray, alpha: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A2U/GCA `RandomJitter`: hue + an integer in [-40, 40) degrees; saturation and value each
    offset by u in [-(1.1 - m) / 10, (1.1 - m) / 10), m their mean over the alpha > 0 pixels,
    folded back into [0, 1] (|x|, and 2 - x above 1). Skipped when the alpha is all 0.

    Args:
        fg: (H, W, 3) float32 RGB in [0, 1].
        alpha: (H, W) alpha of the crop.

    Returns:
        The jittered foreground, float32 (the caller clips it, as their Composite does).
    """
    if not (alpha > 0).any():
        return fg
    hsv = cv2.cvtColor(fg, cv2.COLOR_RGB2HSV)  # float32: H in [0, 360), S and V in [0, 1]
    hsv[..., 0] = np.remainder(hsv[..., 0] + rng.integers(-40, 40), 360)
    for c in (1, 2):
        bound = (1.1 - float(hsv[..., c][alpha > 0].mean())) / 10
        channel = np.abs(hsv[..., c] + rng.uniform(-bound, bound))
        hsv[..., c] = np.where(channel > 1, 2 - channel, channel)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def a2u_crop(fg, alpha, trimap, bg, crop: int, rng: np.random.Generator):
    """A2U `RandomCrop`: the raw background upscaled (bicubic) only when smaller than the
    foreground; images not larger than the crop upscaled by 1.1 x crop / short side (nearest; the
    background bicubic by the same ratio); a crop x crop window centred on one of the unknown
    pixels whose window fits, or anywhere when fewer than 10 are; the background cropped at the
    same place; everything resized to the crop when the trimap has no unknown pixel at all."""
    h, w = trimap.shape
    hb, wb = bg.shape[:2]
    ratio = max(h / hb, w / wb)
    if ratio > 1:
        bg = cv2.resize(bg, (math.ceil(wb * ratio), math.ceil(hb * ratio)), interpolation=cv2.INTER_CUBIC)
        hb, wb = bg.shape[:2]
    if h < crop + 1 or w < crop + 1:
        ratio = 1.1 * crop / min(h, w)
        while h < crop + 1 or w < crop + 1:
            size = (int(w * ratio), int(h * ratio))
            fg, alpha, trimap = (cv2.resize(x, size, interpolation=cv2.INTER_NEAREST)
                                 for x in (fg, alpha, trimap))
            bg = cv2.resize(bg, (int(wb * ratio), int(hb * ratio)), interpolation=cv2.INTER_CUBIC)
            (h, w), (hb, wb) = trimap.shape, bg.shape[:2]
    unknown = trimap == tri.UNKNOWN
    if not unknown.any():
        size = (crop, crop)
        return ([cv2.resize(x, size, interpolation=cv2.INTER_NEAREST) for x in (fg, alpha, trimap)]
                + [cv2.resize(bg, size, interpolation=cv2.INTER_CUBIC)])
    top, left = (fitting_window(unknown, crop, rng, exclusive_end=True, min_count=10)
                 or _random_window(h, w, crop, rng))
    return _crop([fg, alpha, trimap, bg], top, left, crop)


def gca_pipeline(ds: TrainingDataset, index: int, rng: np.random.Generator, max_kernel: int = 29
                 ) -> dict:
    """A2U/GCA: with p = 0.5 a second foreground mixed in; with p = 0.25 resized to 640 x 640;
    random affine; horizontal flip; trimap by eroding fg and bg with kernels 1..max_kernel; crop
    around unknown pixels; HSV jitter; composed on a random background of the split, cropped at
    the foreground crop's place. Reads 3 files (5 when mixing)."""
    crop = ds.crop_size
    fg, alpha = _read_together(ds, index, ("fg", "alpha"))
    alpha = _unit(alpha)
    h, w = alpha.shape
    if rng.random() < 0.5:
        other = int(rng.integers(len(ds)))
        fg2, a2 = _read_together(ds, other, ("fg", "alpha"))
        fg2 = cv2.resize(fg2, (w, h), interpolation=cv2.INTER_NEAREST)
        a2 = cv2.resize(_unit(a2), (w, h), interpolation=cv2.INTER_NEAREST)
        fg, alpha = mix_foregrounds(fg, alpha, fg2, a2)
    if rng.random() < 0.25:
        fg, alpha = (cv2.resize(x, (640, 640), interpolation=cv2.INTER_NEAREST) for x in (fg, alpha))
        h, w = 640, 640
    matrix = a2u_inverse_affine(h, w, **random_affine_params(h, w, rng))
    fg, alpha = (cv2.warpAffine(x, matrix, (w, h), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP)
                 for x in (fg, alpha))
    if rng.random() < 0.5:  # RandomHorizontalFlip, after the affine's own per-axis flips
        fg, alpha = np.ascontiguousarray(fg[:, ::-1]), np.ascontiguousarray(alpha[:, ::-1])
    trimap = tri.random_eroded_trimap(alpha, rng, max_kernel)
    bg = ds.read(int(rng.integers(len(ds))), "bg")
    fg, alpha, trimap, bg = a2u_crop(fg, alpha, trimap, bg, crop, rng)
    fg = np.clip(hsv_jitter(_unit(np.ascontiguousarray(fg)), alpha, rng), 0, 1)
    alpha, bg = np.clip(alpha, 0, 1), _unit(bg)
    return {"image": _compose(fg, bg, alpha), "alpha": alpha, "fg": fg, "bg": bg, "trimap": trimap}


def tcp_pipeline(ds: TrainingDataset, index: int, rng: np.random.Generator) -> dict:
    """TCP composed on the fly (specs/tcp.md): `gca` with erosion kernels 1..30, plus the noisy
    second trimap."""
    arrays = gca_pipeline(ds, index, rng, max_kernel=30)
    arrays["trimap2"], _ = tri.noisy_trimap(arrays["trimap"], arrays["alpha"], rng)
    return arrays


def tcp_clean_pipeline(ds: TrainingDataset, index: int, rng: np.random.Generator) -> dict:
    """`tcp` without trimap robustness (the ablations): the first trimap and no second one."""
    return gca_pipeline(ds, index, rng, max_kernel=30)


# --------------------------------------------------------------------------------------------------
# tcp-composited: the TCP paper trains on the prepared composites and trimaps made from the alpha


def tcp_composited_pipeline(ds: TrainingDataset, index: int, rng: np.random.Generator,
                            robust: bool = True) -> dict:
    """TCP as the paper: the prepared composite, the SP trimap (fg and bg eroded by kernels 1..30)
    and, with `robust`, the noisier second trimap. The paper names no further augmentation; ours
    is the crop every pipeline makes: images whose short side is below the crop resized up to it
    (bicubic, trimap nearest), a window centred on an unknown pixel whose window fits, and a
    horizontal flip. Reads 2 files."""
    crop = ds.crop_size
    image, alpha = (_unit(x) for x in _read_together(ds, index, ("image", "alpha")))
    trimap = tri.random_eroded_trimap(alpha, rng, 30)
    h, w = alpha.shape
    if min(h, w) < crop:
        s = crop / min(h, w)
        size = (max(crop, round(w * s)), max(crop, round(h * s)))
        image, alpha = _resize(image, size), _resize(alpha, size)
        trimap = cv2.resize(trimap, size, interpolation=cv2.INTER_NEAREST)
        h, w = alpha.shape
    unknown = trimap == tri.UNKNOWN
    top, left = (fitting_window(unknown, crop, rng)
                 or clipped_window(unknown, crop, rng, half=(crop + 1) // 2)
                 or _random_window(h, w, crop, rng))
    image, alpha, trimap = _flip(_crop([image, alpha, trimap], top, left, crop), rng)
    arrays = {"image": image, "alpha": alpha, "trimap": trimap}
    if robust:
        arrays["trimap2"], _ = tri.noisy_trimap(trimap, alpha, rng)
    return arrays


def tcp_composited_clean_pipeline(ds: TrainingDataset, index: int, rng: np.random.Generator) -> dict:
    """`tcp-composited` without the second trimap (the ablation recipes)."""
    return tcp_composited_pipeline(ds, index, rng, robust=False)


# --------------------------------------------------------------------------------------------------
# mmagic: its two IndexNet configs, on uint8 arrays as mmcv's transforms run


def _mmagic_crop(arrays: list[np.ndarray], interps: list[int], crop: int,
                 rng: np.random.Generator) -> list[np.ndarray]:
    """mmagic `CropAroundUnknown` (crop_sizes = crop x {1, 1.5, 2}, unknown_source='alpha'): a
    side drawn from all three; images smaller than it upscaled by max(side / h, side / w) (sizes
    `max(int(h r), side)`); the window centred on a 0 < alpha < 255 pixel whose window fits, else
    on any such pixel moved inside, else at the top-left corner. The alpha is `arrays[0]`."""
    side = int(rng.choice([crop, crop * 3 // 2, crop * 2]))
    h, w = arrays[0].shape
    ratio = max(side / h, side / w)
    if ratio > 1:
        h, w = max(int(h * ratio), side), max(int(w * ratio), side)
        arrays = [cv2.resize(x, (w, h), interpolation=i) for x, i in zip(arrays, interps)]
    unknown = (arrays[0] > 0) & (arrays[0] < 255)
    top, left = (fitting_window(unknown, side, rng, exclusive_end=True)
                 or clipped_window(unknown, side, rng) or (0, 0))
    return _crop(arrays, top, left, side)


def _mmagic_read(ds: TrainingDataset, index: int) -> list[np.ndarray]:
    return _read_together(ds, index, ("alpha", "image", "fg", "bg"))


def _mmagic_item(alpha, image, fg, bg, trimap) -> dict:
    return {"image": _unit(image), "alpha": _unit(alpha), "fg": _unit(fg), "bg": _unit(bg),
            "trimap": trimap}


def mmagic_pipeline(ds: TrainingDataset, index: int, rng: np.random.Generator) -> dict:
    """mmagic's IndexNet config: `GenerateTrimapWithDistTransform(dist_thr=20)` on the full alpha,
    `CropAroundUnknown` (320/480/640, bicubic; trimap nearest), `Resize` to 320 x 320 (bicubic;
    trimap nearest), horizontal `Flip`. Reads the prepared composite, fg, bg and alpha."""
    crop = ds.crop_size
    alpha, image, fg, bg = _mmagic_read(ds, index)
    trimap = tri.random_grown_trimap(_unit(alpha), rng)
    cubic, nearest = cv2.INTER_CUBIC, cv2.INTER_NEAREST
    arrays = _mmagic_crop([alpha, image, fg, bg, trimap], [cubic] * 4 + [nearest], crop, rng)
    arrays = [cv2.resize(x, (crop, crop), interpolation=cubic) for x in arrays[:4]] + [
        cv2.resize(arrays[4], (crop, crop), interpolation=nearest)]
    return _mmagic_item(*_flip(arrays, rng))


def mmagic_dimaug_pipeline(ds: TrainingDataset, index: int, rng: np.random.Generator) -> dict:
    """mmagic's IndexNet DIM-augmentation config: `CropAroundUnknown` (320/480/640, bilinear when
    upscaling), horizontal `Flip`, `Resize` to 320 x 320 (bilinear), then `GenerateTrimap` with
    kernel_size=(1, 30): erosion and dilation by elliptical kernels drawn from 1..29, one iteration
    (fg where the eroded alpha is 255, bg where the dilated alpha is 0)."""
    crop = ds.crop_size
    alpha, image, fg, bg = _mmagic_read(ds, index)
    linear = cv2.INTER_LINEAR
    arrays = _flip(_mmagic_crop([alpha, image, fg, bg], [linear] * 4, crop, rng), rng)
    alpha, image, fg, bg = (cv2.resize(x, (crop, crop), interpolation=linear) for x in arrays)
    # eroding/dilating the 8-bit alpha and thresholding at 255 / 0 equals eroding the fg / bg masks
    trimap = tri.random_eroded_trimap(_unit(alpha), rng, 29)
    return _mmagic_item(alpha, image, fg, bg, trimap)


PIPELINES = {
    "dim": Pipeline(dim_pipeline, ("fg", "alpha", "bg")),
    "gca": Pipeline(gca_pipeline, ("fg", "alpha", "bg")),
    "tcp": Pipeline(tcp_pipeline, ("fg", "alpha", "bg"), second_trimap=True),
    "tcp-clean": Pipeline(tcp_clean_pipeline, ("fg", "alpha", "bg")),
    "tcp-composited": Pipeline(tcp_composited_pipeline, ("image", "alpha"), second_trimap=True),
    "tcp-composited-clean": Pipeline(tcp_composited_clean_pipeline, ("image", "alpha")),
    "mmagic": Pipeline(mmagic_pipeline, ("image", "fg", "alpha", "bg")),
    "mmagic-dimaug": Pipeline(mmagic_dimaug_pipeline, ("image", "fg", "alpha", "bg")),
}


def build_dataset(data_config, manifest: str | Path, seed: int = 0) -> TrainingDataset:
    """The training dataset a recipe's `data` section names (pipeline and crop size)."""
    return TrainingDataset(manifest, data_config.pipeline, data_config.crop_size, seed)
