"""Tiled vs whole-image alpha on a real photo: how much does the memory-bounded strategy change?

The lemur photo (examples/lemur.png, CC0) and its hand-drawn trimap are upscaled (bicubic image,
nearest trimap) by --scale; a seeded random model of --recipe runs once over the whole image and
once with a memory ceiling that forces tiles of --tile pixels. Reports SAD (sum of absolute alpha
differences in [0, 1], / 1000, the papers' unit) and the largest difference (of 255) over the
unknown region, and both timings.

    python benchmarks/tiling_error.py --scale 2 --tile 512

A random model is not a trained one: trained weights use context differently (a trained network
may lean more on far context), so treat the figure as a check of the mechanics (no seams, known
regions exact), not as a promise about trained accuracy.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def centre_head(model, backend, cfg, image, trimap) -> None:
    """Make a random model's output informative: its last conv (1 -> 1 channel) becomes a local mean,
    scaled so that the median raw output over the unknown region is 0.5. A plain random head puts
    nearly every unknown pixel below 0 or above 1, where clipping would hide any tiling difference.
    Calibrated on a 4x smaller copy, which is cheap and has the same statistics."""
    import cv2
    import torch

    from mattecli.inference.pipeline import prepare

    small_image = cv2.resize(image, (image.shape[1] // 4, image.shape[0] // 4), interpolation=cv2.INTER_AREA)
    small_trimap = cv2.resize(trimap, (trimap.shape[1] // 4, trimap.shape[0] // 4), interpolation=cv2.INTER_NEAREST)
    head = model.pred[-1].weight
    with torch.no_grad():
        head.fill_(1.0 / head[0, 0].numel())
        raw = backend(prepare(small_image, small_trimap, cfg))[0, 0]
        unknown = cv2.resize(small_trimap, raw.shape[::-1], interpolation=cv2.INTER_NEAREST) == 128
        head.mul_(0.5 / float(np.median(raw[unknown])))


def main() -> None:
    import cv2
    import torch

    from mattecli.imageio import read_image, read_trimap
    from mattecli.inference.backends import TorchBackend
    from mattecli.inference.pipeline import Pipeline
    from mattecli.inference.tiling import PREPARE_BYTES_PER_PIXEL
    from mattecli.models import build_model
    from mattecli.recipes import load_recipe

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="indexnet-m2o-nl-ctx")
    parser.add_argument("--scale", type=float, default=2.0)
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    image = read_image(ROOT / "examples" / "lemur.png")
    trimap, _ = read_trimap(ROOT / "examples" / "lemur_trimap.png")
    h, w = round(trimap.shape[0] * args.scale), round(trimap.shape[1] * args.scale)
    image = cv2.resize(image, (w, h), interpolation=cv2.INTER_CUBIC)
    trimap = cv2.resize(trimap, (w, h), interpolation=cv2.INTER_NEAREST)

    recipe = load_recipe(args.recipe)
    torch.manual_seed(args.seed)
    model = build_model(recipe).eval()
    backend = TorchBackend(model, recipe)
    centre_head(model, backend, recipe.infer, image, trimap)
    whole = Pipeline(backend, recipe.infer)
    ceiling = args.tile * args.tile * (recipe.infer.bytes_per_pixel + PREPARE_BYTES_PER_PIXEL)
    tiled = Pipeline(backend, recipe.infer, max_bytes=ceiling)

    t0 = time.perf_counter()
    a_whole, how_whole = whole.run(image, trimap)
    t1 = time.perf_counter()
    a_tiled, how_tiled = tiled.run(image, trimap)
    t2 = time.perf_counter()
    unknown = trimap == 128
    diff = np.abs(a_whole.astype(np.int32) - a_tiled.astype(np.int32))[unknown]
    print(f"{args.recipe}, lemur x{args.scale} = {w}x{h}, {unknown.sum()} unknown pixels, seed {args.seed}")
    print(f"whole: {how_whole}, {t1 - t0:.1f} s; {how_tiled} (ceiling {ceiling / 2**20:.0f} MiB), {t2 - t1:.1f} s")
    soft = (a_whole[unknown] > 0) & (a_whole[unknown] < 255)
    print(f"whole-image alpha over the unknown region: mean {a_whole[unknown].mean():.1f}/255, "
          f"{soft.mean():.1%} of it strictly between 0 and 255 (the rest is clipped)")
    print(f"tiled vs whole over the unknown region: SAD {diff.sum() / 255 / 1000:.3f}, "
          f"mean {diff.mean():.3f}/255, max {diff.max()}/255, known pixels equal: "
          f"{np.array_equal(a_whole[~unknown], a_tiled[~unknown])}")


if __name__ == "__main__":
    main()
