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
    unknown = dist <= radius
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
