"""Synthetic matting data: procedural foregrounds and backgrounds in a prepared Adobe split's layout.

A foreground's alpha has what makes matting hard, in miniature: a soft anti-aliased silhouette,
thin hair-like strands leaving it, a semi-transparent region and holes. Backgrounds are smooth
gradients, noise or multi-scale texture. Every sample draws from its own generator seeded by
(seed, split, index), so equal seeds give identical files and adding samples changes none of the
earlier ones.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from mattecli.data.adobe import PrepareReport, adobe_blend, check_out, remove_stale_split_temps
from mattecli.data.manifest import Sample, write_manifest
from mattecli.data.trimap import grown_trimap
from mattecli.imageio import write_png
from mattecli.progress import track

BACKGROUND_KINDS = ("textured", "noisy", "smooth")


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    return np.mgrid[0:size, 0:size].astype(np.float32)


def _soft(signed_distance: np.ndarray, softness: float) -> np.ndarray:
    """Coverage of a shape from its signed distance (negative inside): a ramp `softness` px wide."""
    return np.clip(0.5 - signed_distance / softness, 0.0, 1.0)


def _blob_distance(size: int, rng: np.random.Generator, centre, radius: float):
    """Approximate signed distance to a star-shaped blob whose radius wobbles with the angle."""
    yy, xx = _grid(size)
    dy, dx = yy - centre[0], xx - centre[1]
    theta, rho = np.arctan2(dy, dx), np.hypot(dy, dx)
    wobble = np.ones_like(theta)
    for k in range(2, 6):
        wobble += rng.uniform(0, 0.08) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return rho - radius * wobble, theta, radius * wobble


def _strands(size: int, rng: np.random.Generator, centre, boundary_radius, count: int) -> np.ndarray:
    """Thin anti-aliased curves leaving the silhouette outward, as (size, size) float coverage."""
    canvas = np.zeros((size, size), np.uint8)
    shift = 4  # sub-pixel vertex precision for cv2's anti-aliased polylines
    for _ in range(count):
        angle = rng.uniform(0, 2 * np.pi)
        start = boundary_radius(angle) * rng.uniform(0.85, 1.0)
        point = np.array([centre[1] + start * np.cos(angle), centre[0] + start * np.sin(angle)])
        heading, length = angle, rng.uniform(0.05, 0.2) * size
        points = [point.copy()]
        for _ in range(12):
            heading += rng.normal(0, 0.15)
            point = point + (length / 12) * np.array([np.cos(heading), np.sin(heading)])
            points.append(point.copy())
        pts = np.round(np.array(points) * (1 << shift)).astype(np.int32)
        value = int(rng.integers(120, 256))
        cv2.polylines(canvas, [pts], False, value, 1, cv2.LINE_AA, shift)
    return canvas.astype(np.float32) / 255.0


def make_alpha(size: int, rng: np.random.Generator) -> np.ndarray:
    """A procedural (size, size) uint8 alpha with soft edges, strands, transparency and holes."""
    centre = rng.uniform(0.4, 0.6, size=2) * size
    radius = rng.uniform(0.2, 0.3) * size
    dist, theta, _ = _blob_distance(size, rng, centre, radius)
    alpha = _soft(dist, rng.uniform(1.0, 4.0))

    yy, xx = _grid(size)
    for _ in range(int(rng.integers(1, 3))):  # holes, inside the silhouette
        r = rng.uniform(0.03, 0.07) * size
        offset = rng.uniform(-0.4, 0.4, size=2) * radius
        hole = _soft(np.hypot(yy - centre[0] - offset[0], xx - centre[1] - offset[1]) - r, 2.0)
        alpha *= 1.0 - hole
    # A semi-transparent region (think of a veil): an ellipse scaling alpha by 0.3..0.7.
    ry, rx = rng.uniform(0.08, 0.15, size=2) * size
    offset = rng.uniform(-0.5, 0.5, size=2) * radius
    veil = _soft((np.hypot((yy - centre[0] - offset[0]) / ry, (xx - centre[1] - offset[1]) / rx) - 1)
                 * min(rx, ry), 3.0)
    alpha *= 1.0 - veil * (1.0 - rng.uniform(0.3, 0.7))

    # The strands start at the wobbling boundary: evaluate its radius at any angle from the grid.
    def boundary(angle: float) -> float:
        y = centre[0] + radius * np.sin(angle)
        x = centre[1] + radius * np.cos(angle)
        yi, xi = int(np.clip(y, 0, size - 1)), int(np.clip(x, 0, size - 1))
        return float(np.hypot(yi - centre[0], xi - centre[1]) - dist[yi, xi])

    strands = _strands(size, rng, centre, boundary, int(rng.integers(20, 60)))
    alpha = np.maximum(alpha, strands)
    return np.round(alpha * 255).astype(np.uint8)


def _value_noise(size: int, rng: np.random.Generator, cells: int) -> np.ndarray:
    grid = rng.random((cells, cells, 3)).astype(np.float32)
    return cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)


def make_foreground(size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size, 3) uint8 foreground colours: a base colour, smooth variation and fine texture."""
    base = rng.uniform(0.15, 0.85, size=3).astype(np.float32)
    colour = base + 0.25 * (_value_noise(size, rng, 4) - 0.5) + 0.08 * (_value_noise(size, rng, 32) - 0.5)
    return np.round(np.clip(colour, 0, 1) * 255).astype(np.uint8)


def make_background(size: int, rng: np.random.Generator, kind: str) -> np.ndarray:
    """(size, size, 3) uint8 background of one kind: textured, noisy or smooth."""
    if kind == "textured":
        img = sum(w * _value_noise(size, rng, c) for w, c in ((0.5, 4), (0.3, 16), (0.2, 64)))
    elif kind == "noisy":
        img = rng.uniform(0.2, 0.8, size=3) + rng.normal(0, 0.12, size=(size, size, 3))
    elif kind == "smooth":
        yy, xx = _grid(size)
        t = (np.cos(rng.uniform(0, np.pi)) * xx + np.sin(rng.uniform(0, np.pi)) * yy) / (2 * size)
        a, b = rng.uniform(0, 1, size=(2, 3))
        img = a + (b - a) * (t[..., None] + 0.5)
    else:
        raise ValueError(f"unknown background kind {kind!r}")
    return np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)


def write_sample(split_dir: Path, name: str, size: int, rng: np.random.Generator, kind: str,
                 merged: bool, trimap: bool) -> Sample:
    """Generate one sample and write its files (fg, alpha, bg, [merged], [trimap])."""
    alpha = make_alpha(size, rng)
    fg = make_foreground(size, rng)
    bg = make_background(size, rng, kind)
    paths = {"fg": split_dir / "fg" / f"{name}.png", "alpha": split_dir / "alpha" / f"{name}.png",
             "bg": split_dir / "bg" / f"{name}.png"}
    write_png(paths["fg"], fg)
    write_png(paths["alpha"], alpha)
    write_png(paths["bg"], bg)
    if merged:
        paths["image"] = write_png(split_dir / "merged" / f"{name}.png", adobe_blend(fg, bg, alpha))
    if trimap:
        radius = int(rng.integers(5, 16))
        band = grown_trimap(alpha / 255.0, radius)
        # a small image's band can cover its whole silhouette (--size 64: half the trimaps had no
        # foreground, and infer asked of each "is it the right trimap?"): narrowed until some is left
        while radius > 1 and not (band == 255).any():
            radius -= 1
            band = grown_trimap(alpha / 255.0, radius)
        paths["trimap"] = write_png(split_dir / "trimap" / f"{name}.png", band)
    return Sample(name=name, **paths)


def prepare_synthetic(out: Path, n_train: int = 16, n_test: int = 8, size: int = 320, seed: int = 0,
                      composite: bool = True) -> PrepareReport:
    """Write `out/train` (fg, alpha, bg [+ merged]) and `out/test` (merged, alpha, trimap, fg, bg).

    Args:
        out: output folder.
        n_train: training samples.
        n_test: test samples.
        size: image side.
        seed: equal seeds give identical files.
        composite: also write the training composites.

    Returns:
        A PrepareReport (no inputs, so never any errors).
    """
    out = Path(out)
    check_out(out, ["train", "test"])
    report = PrepareReport({}, {}, [], [])
    for split_id, (split, count) in enumerate((("train", n_train), ("test", n_test))):
        samples = []
        remove_stale_split_temps(out / split)  # what a killed run left
        with track(count, f"synthetic {split}") as bar:  # 16 samples of 320 px take seconds, 1000 minutes
            for i in range(count):
                rng = np.random.default_rng(np.random.SeedSequence([seed, split_id, i]))
                kind = BACKGROUND_KINDS[i % len(BACKGROUND_KINDS)]
                samples.append(write_sample(out / split, f"syn{i:04d}", size, rng, kind,
                                            merged=(split == "test" or composite), trimap=(split == "test")))
                bar.advance()
        report.manifests[split] = write_manifest(out / split, samples)
        report.counts[split] = count
    return report
