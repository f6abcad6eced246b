"""Data benchmarks: (a) Adobe composition, vectorised vs a per-pixel transcription of the rule, on
the same inputs (and checked equal); (b) training-pipeline samples/s in one process (= per
DataLoader worker) at 320 and 512 crops, on synthetic 800 px samples.

    python benchmarks/bench_data.py [--quick]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np


def per_pixel_composite(fg: np.ndarray, bg: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """The rule as Adobe's script states it, pixel by pixel (the bg already resized and cropped)."""
    h, w = alpha.shape
    out = bg.copy()
    for y in range(h):
        for x in range(w):
            a = int(alpha[y, x]) / 255
            if a >= 1:
                out[y, x] = fg[y, x]
            elif a > 0:
                for c in range(3):
                    out[y, x, c] = int(a * int(fg[y, x, c]) + (1 - a) * int(bg[y, x, c]))
    return out


def bench_composition(side: int, repeats: int) -> dict:
    from PIL import Image

    from mattecli.data.adobe import adobe_background, adobe_blend
    from mattecli.data.synthetic import make_alpha

    rng = np.random.default_rng(0)
    fg = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    alpha = make_alpha(side, rng)
    bg_small = rng.integers(0, 256, (side * 2 // 3, side // 2, 3), dtype=np.uint8)

    def vectorised():
        return adobe_blend(fg, adobe_background(bg_small, side, side), alpha)

    def reference():
        bh, bw = bg_small.shape[:2]
        r = max(side / bw, side / bh)
        bg = np.asarray(Image.fromarray(bg_small).resize((math.ceil(bw * r), math.ceil(bh * r)),
                                                         Image.BICUBIC))[:side, :side]
        return per_pixel_composite(fg, bg, alpha)

    assert np.array_equal(vectorised(), reference()), "vectorised composition differs from the rule"
    t0 = time.perf_counter()
    for _ in range(repeats):
        vectorised()
    fast = (time.perf_counter() - t0) / repeats
    t0 = time.perf_counter()
    reference()
    slow = time.perf_counter() - t0
    mpix = side * side / 1e6
    return {"side": side, "vectorised_mpix_s": mpix / fast, "per_pixel_mpix_s": mpix / slow,
            "ratio": slow / fast}


def bench_pipelines(crops: list[int], items: int) -> list[dict]:
    from mattecli.data.pipelines import PIPELINES, TrainingDataset
    from mattecli.data.synthetic import prepare_synthetic

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        prepare_synthetic(Path(tmp), n_train=6, n_test=0, size=800, seed=0)
        for crop in crops:
            for name in PIPELINES:
                ds = TrainingDataset(Path(tmp) / "train", name, crop, seed=0)
                ds[0]  # warm caches and lazy imports
                t0 = time.perf_counter()
                for i in range(items):
                    ds[i % len(ds)]
                rows.append({"pipeline": name, "crop": crop,
                             "samples_s": items / (time.perf_counter() - t0)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller inputs, fewer repeats")
    args = parser.parse_args()
    side = 256 if args.quick else 512
    comp = bench_composition(side, repeats=5 if args.quick else 20)
    print(f"composition {comp['side']}x{comp['side']}: vectorised {comp['vectorised_mpix_s']:.1f} "
          f"Mpx/s, per-pixel transcription {comp['per_pixel_mpix_s']:.3f} Mpx/s, "
          f"ratio {comp['ratio']:.0f}x (outputs identical)")
    print("pipeline  crop  samples/s per worker (800 px synthetic samples)")
    for row in bench_pipelines([320, 512], items=8 if args.quick else 30):
        print(f"{row['pipeline']:8s}  {row['crop']:4d}  {row['samples_s']:.1f}")


if __name__ == "__main__":
    main()
