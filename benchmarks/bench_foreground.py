"""Foreground colour estimation: PyMatting's multi-level method vs blur fusion, quality and speed.

A composite with known parts: F = the lemur photo, B = the photo flipped and blurred, alpha = a
soft ellipse with thin stripes (hair-like). Each method estimates F from the composite and alpha;
the error is measured where 0 < alpha < 1 (of 255), plain and weighted by alpha (what an RGBA
cut-out shows). Timings at the photo's size and at 3840x2160.

    PYTHONPATH=. python benchmarks/bench_foreground.py
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def blur_fusion(image: np.ndarray, alpha: np.ndarray, radius: int = 90) -> np.ndarray:
    """Forte & Pitie 2021, 'Approximate fast foreground colour estimation' (two passes: r, then 6)."""
    import cv2

    a = alpha[..., None]

    def step(fg, bg, r):
        blurred_a = cv2.blur(alpha, (r, r))[..., None]
        blurred_fg = cv2.blur(fg * a, (r, r)) / (blurred_a + 1e-5)
        blurred_bg = cv2.blur(bg * (1 - a), (r, r)) / (1 - blurred_a + 1e-5)
        out = blurred_fg + a * (image - a * blurred_fg - (1 - a) * blurred_bg)
        return np.clip(out, 0, 1), blurred_bg

    fg, bg = step(image, image, radius)
    return step(fg, bg, 6)[0]


def main() -> None:
    import cv2
    from pymatting import estimate_foreground_ml

    from mattecli.imageio import read_image

    fg = read_image(ROOT / "examples" / "lemur.png").astype(np.float32) / 255
    h, w = fg.shape[:2]
    bg = cv2.GaussianBlur(np.ascontiguousarray(fg[::-1, ::-1]), (0, 0), 5)
    yy, xx = np.mgrid[:h, :w]
    alpha = ((xx - w / 2) ** 2 / (w / 3) ** 2 + (yy - h / 2) ** 2 / (h / 3) ** 2 < 1).astype(np.float32)
    alpha = cv2.GaussianBlur(alpha, (0, 0), 6)
    stripes = (np.sin(xx / 3.0) > 0.7) & (cv2.GaussianBlur(alpha, (0, 0), 30) > 0.2) & (alpha < 0.5)
    alpha = np.clip(alpha + 0.5 * stripes, 0, 1).astype(np.float32)
    image = alpha[..., None] * fg + (1 - alpha[..., None]) * bg
    soft = (alpha > 0.01) & (alpha < 0.99)
    estimate_foreground_ml(image[:64, :64].copy(), alpha[:64, :64].copy())  # numba compile, not timed

    methods = {"pymatting ML": lambda i, a: estimate_foreground_ml(i, a),
               "blur fusion": blur_fusion, "copy image": lambda i, a: i}
    for name, method in methods.items():
        t = time.perf_counter()
        est = method(image, alpha)
        dt = time.perf_counter() - t
        err = np.abs(est - fg)
        print(f"{name:14s} {w}x{h}: {dt:6.3f} s; error where 0<alpha<1: mean {err[soft].mean() * 255:5.2f}/255, "
              f"alpha-weighted {(err * alpha[..., None])[soft].mean() * 255:5.2f}/255")
    image4k, alpha4k = cv2.resize(image, (3840, 2160)), cv2.resize(alpha, (3840, 2160))
    for name in ("pymatting ML", "blur fusion"):
        t = time.perf_counter()
        methods[name](image4k, alpha4k)
        print(f"{name:14s} 3840x2160: {time.perf_counter() - t:6.2f} s")


if __name__ == "__main__":
    main()
