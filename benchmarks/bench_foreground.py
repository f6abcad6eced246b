"""Foreground colour estimation: PyMatting's multi-level method, its PyTorch port (on any device)
and blur fusion, quality and speed.

A composite with known parts: F = the lemur photo, B = the photo flipped and blurred, alpha = a
soft ellipse with thin stripes (hair-like). Each method estimates F from the composite and alpha;
the error is measured where 0 < alpha < 1 (of 255), plain and weighted by alpha (what an RGBA
cut-out shows). Timings at the photo's size and at 3840x2160 (the port: median of 5 after a
warm-up, synchronised on CUDA).

    python benchmarks/bench_foreground.py                 # CPU: all methods
    python benchmarks/bench_foreground.py --device cuda   # the port on the GPU (+ PyMatting for parity)

`--json FILE` also writes the figures as JSON (benchmarks/device_check.sh uses `run_port`).
"""

from __future__ import annotations

import argparse
import json
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


def synthetic_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, alpha, true foreground), float32 in [0, 1], at the lemur photo's size."""
    import cv2

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
    return image, alpha, fg


def _errors(est: np.ndarray, fg: np.ndarray, alpha: np.ndarray) -> tuple[float, float]:
    """Mean |error| and mean alpha-weighted |error| where 0 < alpha < 1, in levels of 255."""
    soft = (alpha > 0.01) & (alpha < 0.99)
    err = np.abs(est - fg)
    return float(err[soft].mean() * 255), float((err * alpha[..., None])[soft].mean() * 255)


def run_port(device: str = "cuda", repeats: int = 5) -> dict:
    """The PyTorch port on `device`: seconds at the photo's size and at 3840x2160, its error against
    the true foreground, and (with PyMatting installed) its largest and mean difference from PyMatting."""
    import cv2
    import torch

    from mattecli.inference.foreground import estimate_foreground_torch

    image, alpha, fg = synthetic_case()
    image8, alpha8 = (image * 255 + 0.5).astype(np.uint8), (alpha * 255 + 0.5).astype(np.uint8)

    def seconds(img, a) -> float:
        estimate_foreground_torch(img, a, device)  # warm-up (allocator, kernels)
        times = []
        for _ in range(repeats):
            if device.startswith("cuda"):
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            estimate_foreground_torch(img, a, device)  # returns on the host: synchronised
            times.append(time.perf_counter() - start)
        return float(np.median(times))

    est = estimate_foreground_torch(image8, alpha8, device).astype(np.float32) / 255
    h, w = alpha.shape
    result = {"device": device, "name": torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu",
              f"seconds_{w}x{h}": seconds(image8, alpha8),
              "seconds_3840x2160": seconds(cv2.resize(image8, (3840, 2160)), cv2.resize(alpha8, (3840, 2160)))}
    result["error_vs_truth"], result["weighted_error_vs_truth"] = _errors(est, fg, alpha)
    try:
        from pymatting import estimate_foreground_ml
    except ImportError:
        return result
    ref = (np.clip(estimate_foreground_ml(image8 / np.float32(255), alpha8 / np.float32(255)), 0, 1) * 255 + 0.5)
    diff = np.abs(est * 255 - ref.astype(np.uint8))
    soft = (alpha8 > 0) & (alpha8 < 255)
    result["vs_pymatting_max"], result["vs_pymatting_mean_soft"] = float(diff.max()), float(diff[soft].mean())
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (every method) or cuda[:N] (the PyTorch port)")
    parser.add_argument("--json", type=Path, help="also write the port's figures here")
    args = parser.parse_args(argv)
    if args.device != "cpu":
        result = run_port(args.device)
        print(json.dumps(result, indent=1))
        if args.json:
            args.json.write_text(json.dumps(result, indent=1) + "\n")
        return

    import cv2
    from pymatting import estimate_foreground_ml

    from mattecli.inference.foreground import estimate_foreground_torch

    image, alpha, fg = synthetic_case()
    h, w = alpha.shape
    estimate_foreground_ml(image[:64, :64].copy(), alpha[:64, :64].copy())  # numba compile, not timed

    def port(i, a):
        u8 = estimate_foreground_torch((i * 255 + 0.5).astype(np.uint8), (a * 255 + 0.5).astype(np.uint8), "cpu")
        return u8.astype(np.float32) / 255

    methods = {"pymatting ML": lambda i, a: estimate_foreground_ml(i, a), "torch port": port,
               "blur fusion": blur_fusion, "copy image": lambda i, a: i}
    for name, method in methods.items():
        t = time.perf_counter()
        est = method(image, alpha)
        dt = time.perf_counter() - t
        err, weighted = _errors(est, fg, alpha)
        print(f"{name:14s} {w}x{h}: {dt:6.3f} s; error where 0<alpha<1: mean {err:5.2f}/255, "
              f"alpha-weighted {weighted:5.2f}/255")
    image4k, alpha4k = cv2.resize(image, (3840, 2160)), cv2.resize(alpha, (3840, 2160))
    for name in ("pymatting ML", "torch port", "blur fusion"):
        t = time.perf_counter()
        methods[name](image4k, alpha4k)
        print(f"{name:14s} 3840x2160: {time.perf_counter() - t:6.2f} s")
    if args.json:
        args.json.write_text(json.dumps(run_port("cpu", repeats=1), indent=1) + "\n")


if __name__ == "__main__":
    main()
