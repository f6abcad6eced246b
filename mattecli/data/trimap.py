"""Trimap generation from a ground-truth alpha (benchmark encoding: 0 bg, 128 unknown, 255 fg).

Alphas are float arrays in [0, 1]. "Definite" foreground / background is alpha within 1e-5 of 1 / 0,
far below one 8-bit step, so an 8-bit alpha divided by 255 gives exactly its 0 and 255 pixels.

- `grown_trimap`: IndexNet's rule (`dim` pipeline): the unknown region (0 < alpha < 1, plus the
  seam between touching fg and bg pixels) grown by a distance transform.
- `eroded_trimap`: GCA's rule (`gca`, `tcp`): definite fg and bg each eroded by an elliptical kernel.
- `noisy_trimap`: TCP's second, degraded trimap (random erosions/dilations of the unknown region).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

BG, UNKNOWN, FG = 0, 128, 255
_EPS = 1e-5


def definite_masks(alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fg, bg) boolean masks of the pixels whose alpha is exactly 1 / exactly 0."""
    return alpha >= 1 - _EPS, alpha <= _EPS


def _ellipse(size: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))


def _compose(fg: np.ndarray, bg: np.ndarray) -> np.ndarray:
    trimap = np.full(fg.shape, UNKNOWN, np.uint8)
    trimap[fg] = FG
    trimap[bg] = BG
    return trimap


def grown_trimap(alpha: np.ndarray, radius: float, seam: bool = True) -> np.ndarray:
    """Unknown = pixels within `radius` px (Euclidean) of a partial-alpha or fg/bg-seam pixel.

    Args:
        alpha: (H, W) float alpha in [0, 1].
        radius: growth in pixels (the `dim` pipeline draws 1..19).
        seam: also grow from hard fg/bg edges. The training pipelines pass False: IndexNet's
            `generate_trimap` and mmagic's `GenerateTrimapWithDistTransform` grow from partial
            alpha only.

    Returns:
        (H, W) uint8 trimap in 0/128/255.
    """
    fg, bg = definite_masks(alpha)
    seed = ~(fg | bg)
    if seam:
        # A hard edge (fg pixel next to a bg pixel) has no partial alpha but is still a boundary.
        cross = np.ones((3, 3), np.uint8)
        seed |= fg & (cv2.dilate(bg.astype(np.uint8), cross) > 0)
        seed |= bg & (cv2.dilate(fg.astype(np.uint8), cross) > 0)
    if not seed.any():
        return _compose(fg, bg)
    # distanceTransform measures the distance to the nearest zero pixel: the seed is the zero set.
    dist = cv2.distanceTransform((~seed).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    # The exact distances are square roots of whole numbers, but OpenCV's precise transform returns
    # them a few float32 ulps apart from one call to the next (a process's first calls differ from
    # its later ones, even on one thread): `dist <= radius` flipped pixels lying exactly `radius`
    # away, so a sample's trimap depended on what the process had computed before it (a resumed run
    # was not bit-equal to an uninterrupted one). Compared as whole squared distances instead.
    unknown = np.rint(np.square(dist, dtype=np.float64)) <= np.floor(radius * radius)
    return _compose(fg & ~unknown, bg & ~unknown)


def eroded_trimap(alpha: np.ndarray, fg_kernel: int, bg_kernel: int) -> np.ndarray:
    """Definite fg and bg eroded by elliptical kernels of the given sizes; the rest is unknown.

    Args:
        alpha: (H, W) float alpha in [0, 1].
        fg_kernel: kernel side for the foreground erosion (1 = no erosion).
        bg_kernel: kernel side for the background erosion.

    Returns:
        (H, W) uint8 trimap in 0/128/255.
    """
    fg, bg = definite_masks(alpha)
    fg = cv2.erode(fg.astype(np.uint8), _ellipse(fg_kernel)) > 0
    bg = cv2.erode(bg.astype(np.uint8), _ellipse(bg_kernel)) > 0
    return _compose(fg, bg)


def random_grown_trimap(alpha: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`dim` and `mmagic`: grow the partial-alpha region by a random 1..19 px (no seam, as the
    authors' `np.random.randint(1, 20)` and mmagic's `dist_thr=20`)."""
    return grown_trimap(alpha, int(rng.integers(1, 20)), seam=False)


def random_eroded_trimap(alpha: np.ndarray, rng: np.random.Generator, max_kernel: int) -> np.ndarray:
    """`gca` (max_kernel 29) and `tcp` (30): independent random kernels 1..max_kernel for fg and bg."""
    k_fg, k_bg = rng.integers(1, max_kernel + 1, size=2)
    return eroded_trimap(alpha, int(k_fg), int(k_bg))


@dataclass(frozen=True)
class NoiseStep:
    """One step of the TCP trimap degradation: `iterations` erosions or dilations of the unknown
    region with a `kernel` x `kernel` elliptical kernel."""

    op: str  # "dilate" | "erode"
    iterations: int
    kernel: int


def draw_noise_steps(rng: np.random.Generator) -> list[NoiseStep]:
    """TCP (specs/tcp.md): n in 0..3 steps, each p in 0..3 iterations, dilation kernel 1..30,
    erosion kernel 1..10; erosion or dilation with equal odds (the paper does not say; ours)."""
    steps = []
    for _ in range(int(rng.integers(0, 4))):
        op = "dilate" if rng.random() < 0.5 else "erode"
        iterations = int(rng.integers(0, 4))
        kernel = int(rng.integers(1, 31 if op == "dilate" else 11))
        steps.append(NoiseStep(op, iterations, kernel))
    return steps


def apply_noise_steps(trimap: np.ndarray, alpha: np.ndarray, steps: list[NoiseStep]) -> np.ndarray:
    """Degrade a trimap by eroding/dilating its unknown region.

    Pixels that leave the unknown region are labelled by thresholding the true alpha at 0.5 (our
    choice: the paper is silent), so erosion puts semi-transparent pixels on the wrong side — the kind
    of mistake a hurried user makes.
    """
    unknown = (trimap == UNKNOWN).astype(np.uint8)
    for step in steps:
        if step.iterations == 0:
            continue
        morph = cv2.dilate if step.op == "dilate" else cv2.erode
        unknown = morph(unknown, _ellipse(step.kernel), iterations=step.iterations)
    out = trimap.copy()
    left = (trimap == UNKNOWN) & (unknown == 0)
    out[left] = np.where(alpha[left] >= 0.5, FG, BG)
    out[unknown > 0] = UNKNOWN
    return out


def noisy_trimap(trimap: np.ndarray, alpha: np.ndarray, rng: np.random.Generator
                 ) -> tuple[np.ndarray, list[NoiseStep]]:
    """TCP's second trimap: `trimap` after random erosion/dilation steps; returns it and the steps."""
    steps = draw_noise_steps(rng)
    return apply_noise_steps(trimap, alpha, steps), steps


# --- From a segmentation mask (`matte trimap --masks`, `matte infer --masks`) ---------------------

# The unknown band's default half-width as a share of the image diagonal (2.2 px per 1% at 1080p is
# 22 px; 4K gets twice that). Chosen by benchmarks/trimap_band.py, see docs/trimaps.md.
DEFAULT_BAND = "1%"
DEFAULT_THRESHOLD = (0.5, 0.5)


@dataclass(frozen=True)
class MaskRule:
    """How a mask becomes a trimap: the band's half-width ("20" pixels or "1.5%" of the image
    diagonal) and the (lo, hi) probability thresholds (between them: unknown)."""

    band: str = DEFAULT_BAND
    threshold: tuple[float, float] = DEFAULT_THRESHOLD


def parse_band(text: str) -> str:
    """Check a `--band` value ("20": pixels, "1.5%": of the image diagonal) and return it tidied.

    Raises:
        ValueError: for anything else (negative, not a number).
    """
    text = str(text).strip()
    number = text[:-1] if text.endswith("%") else text
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"{text}: expected pixels (e.g. 20) or a share of the image diagonal (e.g. 1.5%)") from None
    if not np.isfinite(value) or value < 0 or (text.endswith("%") and value > 100):
        raise ValueError(f"{text}: must be pixels, 0 or more, or a share of the image diagonal from 0% to 100%")
    return text


def band_pixels(band: str | float, shape: tuple[int, int]) -> float:
    """The band's half-width in pixels for an image of `shape` (H, W); a share of the diagonal is
    at least one pixel (unless 0%), so a small image's edge is still unknown. A band wider than the
    image (`--band 1e20`, whose crop bounds overflowed OpenCV's C long) is cut to twice the diagonal,
    which already reaches every pixel, the chamfer distance's 2% over the Euclidean one included."""
    band = str(band).strip()
    diagonal = float(np.hypot(*shape[:2]))
    if band.endswith("%"):
        share = float(band[:-1]) / 100
        return max(share * diagonal, 1.0) if share > 0 else 0.0
    return min(float(band), 2 * diagonal + 2)


def parse_threshold(text: str) -> tuple[float, float]:
    """`"LO,HI"` probabilities in [0, 1] with LO <= HI (e.g. "0.1,0.9") -> (lo, hi).

    Raises:
        ValueError: for anything else.
    """
    parts = str(text).split(",")
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError:
        raise ValueError(f"{text}: expected LO,HI probabilities, e.g. 0.1,0.9") from None
    if not (0 <= lo <= hi <= 1):
        raise ValueError(f"{text}: need 0 <= LO <= HI <= 1 (probabilities, e.g. 0.1,0.9)")
    return lo, hi


def _check_threshold(threshold) -> tuple[float, float]:
    """`trimap_from_mask`'s (lo, hi), checked as `parse_threshold` checks `--threshold`."""
    try:
        lo, hi = (float(t) for t in threshold)
    except (TypeError, ValueError):
        raise ValueError(f"threshold {threshold!r}: expected (lo, hi) probabilities, e.g. (0.1, 0.9)") from None
    if not (0 <= lo <= hi <= 1):
        raise ValueError(f"threshold {threshold!r}: need 0 <= lo <= hi <= 1")
    return lo, hi


def _as_probability(mask: np.ndarray) -> np.ndarray:
    """uint8 0..255 / uint16 0..65535 / bool / float [0, 1] -> float32 [0, 1]."""
    if mask.dtype == bool:
        return mask.astype(np.float32)
    if mask.dtype == np.uint8:
        return mask.astype(np.float32) / 255
    if mask.dtype == np.uint16:
        return mask.astype(np.float32) / 65535
    return np.clip(mask.astype(np.float32), 0, 1)


def _bbox(region: np.ndarray) -> tuple[int, int, int, int] | None:
    rows, cols = np.flatnonzero(region.any(axis=1)), np.flatnonzero(region.any(axis=0))
    if rows.size == 0:
        return None
    return rows[0], rows[-1] + 1, cols[0], cols[-1] + 1


def _shrink(region: np.ndarray, radius: float) -> None:
    """Clear, in place, the pixels of a 0/255 uint8 `region` within `radius` of a pixel outside
    it. Outside the image counts as far away, so the image border makes no band.

    The distance is OpenCV's 5x5 chamfer distance, within 2% of the Euclidean one (its exact
    transform is about eight times slower), computed only where it can matter: on the region's
    bounding box cut to the outside's bounding box grown by the radius."""
    inside, outside = _bbox(region), _bbox(region == 0)
    if inside is None or outside is None:
        return
    grow = int(np.ceil(radius)) + 1
    h, w = region.shape
    y0, x0 = max(inside[0] - 1, outside[0] - grow, 0), max(inside[2] - 1, outside[2] - grow, 0)
    y1, x1 = min(inside[1] + 1, outside[1] + grow, h), min(inside[3] + 1, outside[3] + grow, w)
    crop = region[y0:y1, x0:x1]
    # distanceTransform gives each non-zero pixel its distance to the nearest zero pixel
    dist = cv2.distanceTransform(crop, cv2.DIST_L2, cv2.DIST_MASK_5)
    np.bitwise_and(crop, cv2.compare(dist, radius, cv2.CMP_GT), out=crop)


def _band_trimap(low: np.ndarray, high: np.ndarray, threshold: tuple[float, float], radius: float) -> np.ndarray:
    """The trimap of pixels whose lowest value is foreground and highest is background (both the
    same array at full resolution; a block's min and max on a reduced grid)."""
    lo, hi = threshold
    if low.size <= 1:  # OpenCV takes a 1x1 array for a scalar (a float64 4x1 result, or an error); no edge in it
        return np.where(_as_probability(low) >= hi, FG,
                        np.where(_as_probability(high) < lo, BG, UNKNOWN)).astype(np.uint8).reshape(low.shape)
    if low.dtype == np.uint8:  # the same cut as on probabilities, without a float copy of a 4K mask
        levels = _as_probability(np.arange(256, dtype=np.uint8))
        k_hi, k_lo = (int(np.searchsorted(levels >= t, True)) for t in (hi, lo))
        fg = cv2.threshold(low, k_hi - 1, 255, cv2.THRESH_BINARY)[1]  # low >= k_hi, as 0/255
        bg = cv2.threshold(high, k_lo - 1, 255, cv2.THRESH_BINARY_INV)[1]  # high < k_lo
    else:
        fg, bg = cv2.compare(low, hi, cv2.CMP_GE), cv2.compare(high, lo, cv2.CMP_LT)
    if radius > 0:
        _shrink(fg, radius)
        _shrink(bg, radius)
    # fg -> 255, bg -> 0, the rest -> 128, in vectorised byte operations
    return cv2.bitwise_or(fg, cv2.bitwise_and(cv2.bitwise_not(cv2.bitwise_or(fg, bg)), UNKNOWN))


def trimap_from_mask(mask: np.ndarray, band: str | float = DEFAULT_BAND,
                     threshold: tuple[float, float] = DEFAULT_THRESHOLD) -> np.ndarray:
    """A 0/128/255 trimap from a segmentation mask: an unknown band around the mask's edge.

    A pixel is foreground when its probability is >= hi, background when < lo, else unknown
    (with the default lo = hi = 0.5 the mask is simply cut at one half). The band is symmetric:
    foreground pixels within `band` px of a non-foreground pixel and background pixels within
    `band` px of a non-background pixel become unknown, so a disc of radius R gives an unknown ring
    from R - band to R + band, and a strand thinner than 2 * band becomes unknown entirely. The
    image border is not an edge. Distances are chamfer distances (within 2% of Euclidean).

    A wide band (16 px and more, as the default gives from about 1600x900 up) is measured on a
    grid of 2x2 blocks (4x4 from 32 px): a block is foreground only if all its pixels are (and
    background likewise), so thin parts and soft edges still fall in the band, and the band's
    limit lands between 2 px inside and factor + 1 px outside the asked width (a 44 px band at 4K:
    42 to 49 px, pinned by tests/test_trimap.py), for 16 times less work.

    Args:
        mask: (H, W) uint8 0..255, uint16, bool or float [0, 1] (probabilities); another integer
            type holding 0..255; an integer mask of 0/1 only is read as 0/255, as `matte trimap`
            reads 0/1 files.
        band: half-width in pixels (a number or "20"), or "1.5%" of the image diagonal.
        threshold: (lo, hi) probabilities, 0 <= lo <= hi <= 1.

    Returns:
        (H, W) uint8 trimap in 0/128/255.

    Raises:
        ValueError: a mask that is not single-channel or holds values out of range, a negative band
            or a threshold out of order.
    """
    import os

    from mattecli.imageio import array_values

    if isinstance(mask, (str, os.PathLike)):  # it said "got shape ()"
        raise ValueError(f"trimap_from_mask takes an array or a Pillow image, not a path ({mask}): read the file "
                         "first, e.g. np.asarray(Image.open(path))")
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise ValueError(f"trimap_from_mask expects a single-channel (H, W) mask, got shape {mask.shape}")
    mask = array_values(mask, "mask")
    try:
        band = parse_band(band)
    except ValueError as err:
        raise ValueError(f"band {err}") from None
    threshold = _check_threshold(threshold)
    if mask.dtype.kind in "iu" and mask.max(initial=0) == 1:  # 0/1 labels (mask.astype(np.uint8)), not 1/255
        mask = mask.astype(np.uint8) * np.uint8(255)
    if mask.dtype == bool:
        mask = mask.view(np.uint8) * np.uint8(255)
    elif mask.dtype != np.uint8:
        mask = _as_probability(mask)
    if mask.size == 0:
        return np.zeros(mask.shape, np.uint8)
    radius = band_pixels(band, mask.shape)
    factor = 4 if radius >= 32 else 2 if radius >= 16 else 1
    if factor == 1:
        return _band_trimap(mask, mask, threshold, radius)
    h, w = mask.shape
    block = np.ones((factor, factor), np.uint8)  # anchored top-left: pixel (0, 0) of each block gets its min/max
    low = cv2.erode(mask, block, anchor=(0, 0), borderType=cv2.BORDER_REPLICATE)[::factor, ::factor]
    high = cv2.dilate(mask, block, anchor=(0, 0), borderType=cv2.BORDER_REPLICATE)[::factor, ::factor]
    small = _band_trimap(np.ascontiguousarray(low), np.ascontiguousarray(high), threshold, radius / factor)
    full = cv2.resize(small, (small.shape[1] * factor, small.shape[0] * factor), interpolation=cv2.INTER_NEAREST)
    return np.ascontiguousarray(full[:h, :w])


def nothing_to_matte(trimap: np.ndarray, what: str = "trimap", mask_hint: str = "") -> str | None:
    """Why a trimap gives the model nothing to do (no unknown pixel), or None when it has work.
    `mask_hint` is added where it holds both 0 and 255 and nothing else: a binary mask, most likely."""
    if (trimap == UNKNOWN).any():
        return None
    if not (trimap == FG).any():
        return f"nothing to matte: the {what} has no foreground"
    if not (trimap == BG).any():
        return f"nothing to matte: the {what} is all foreground"
    return f"nothing to matte: the {what} has no unknown pixel" + (f" ({mask_hint})" if mask_hint else "")


def no_foreground(trimap: np.ndarray, what: str = "trimap") -> str | None:
    """A warning for a trimap with work to do but no foreground pixel (a mask of the background, or
    the wrong file, most likely), or None; `what` the file was (a trimap, or the mask it came from)."""
    if (trimap == FG).any():
        return None
    held = "only background and unknown" if (trimap == BG).any() else "all unknown"
    return f"no foreground pixel ({held}): is it the right {what}?"


def trimap_preview(image: np.ndarray, trimap: np.ndarray) -> np.ndarray:
    """The trimap drawn over an RGB image for checking by eye: the unknown band tinted magenta,
    the background dimmed to a third, the foreground as it is."""
    out = image.astype(np.float32)
    unknown, bg = trimap == UNKNOWN, trimap == BG
    out[bg] *= 1 / 3
    out[unknown] = 0.5 * out[unknown] + 0.5 * np.array([255, 0, 255], np.float32)
    return np.round(out).astype(np.uint8)


def trimap_from_alpha(alpha: np.ndarray, method: str, rng: np.random.Generator) -> np.ndarray:
    """A training pipeline's trimap for a uint8 alpha: "dist" (IndexNet's `dim`: the unknown region
    grown by a random 1..19 px) or "erode" (GCA's: fg and bg eroded by random 1..29 px kernels)."""
    a = alpha.astype(np.float64) / 255
    if method == "dist":
        return random_grown_trimap(a, rng)
    if method == "erode":
        return random_eroded_trimap(a, rng, 29)
    raise ValueError(f"unknown trimap method {method!r}: choose erode or dist")
