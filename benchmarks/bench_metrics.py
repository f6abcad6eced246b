"""How fast are the metrics? Seconds per megapixel for each, and a Composition-1k-sized run.

    python benchmarks/bench_metrics.py [--size 1500x1000] [--repeats 5] [--images 16]

Per-metric timings are single-process medians on a synthetic matte (a soft blob with hair-like
strands, a prediction with blur and noise, a trimap with a ~10% unknown band). The end-to-end line
writes `--images` such triples as PNG files and runs `evaluation.evaluate_files` over them with all cores
(decoding included), then extrapolates to the 1000 images of Composition-1k.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mattecli import evaluation, metrics  # noqa: E402
from mattecli.cli.parsing import parse_size  # noqa: E402
from mattecli.imageio import write_png  # noqa: E402


def synthetic(h: int, w: int, seed: int = 0):
    import cv2

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    r = np.hypot((yy - h / 2) / (h * 0.35), (xx - w / 2) / (w * 0.3))
    angle = np.arctan2(yy - h / 2, xx - w / 2)
    edge = 1 + 0.08 * np.sin(angle * 37) + 0.04 * np.sin(angle * 113)  # strands
    alpha = np.clip((edge - r) * 25 + 0.5, 0, 1)
    gt = np.round(alpha * 255).astype(np.uint8)
    pred = cv2.GaussianBlur(alpha, (0, 0), 2.0) + rng.normal(0, 0.03, alpha.shape).astype(np.float32)
    pred = np.round(np.clip(pred, 0, 1) * 255).astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (25, 25))
    fg = cv2.erode((gt == 255).astype(np.uint8), kernel)
    bg = cv2.erode((gt == 0).astype(np.uint8), kernel)
    trimap = np.full(gt.shape, 128, np.uint8)
    trimap[fg == 1] = 255
    trimap[bg == 1] = 0
    return pred, gt, trimap


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1500x1000", help="WIDTHxHEIGHT of the synthetic images")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--images", type=int, default=16, help="images in the end-to-end run (0: skip)")
    parser.add_argument("--workers", type=int, default=evaluation.default_workers())
    args = parser.parse_args()
    import cv2

    cv2.setNumThreads(1)  # per-metric figures are for one core, as each worker process runs
    size = parse_size(args.size, "--size")  # WIDTHxHEIGHT, as everywhere in matte
    h, w = size.height, size.width
    mp = h * w / 1e6
    pred, gt, trimap = synthetic(h, w)
    print(f"{w}x{h} ({mp:.2f} MP), unknown region {100 * (trimap == 128).mean():.1f}%, "
          f"{args.workers} worker(s)")

    total = 0.0
    print(f"{'metric':8}{'s/image':>10}{'s/MP':>10}")
    for name in metrics.METRICS:
        fn = getattr(metrics, name)
        fn(pred, gt, trimap)  # warm-up
        seconds = median_time(lambda: fn(pred, gt, trimap), args.repeats)
        total += seconds
        print(f"{name:8}{seconds:10.4f}{seconds / mp:10.4f}")
    print(f"{'all four':8}{total:10.4f}{total / mp:10.4f}")
    print(f"Composition-1k (1000 images of this size), metrics only: {1000 * total / 60:.1f} min on one "
          f"core, {1000 * total / args.workers / 60:.1f} min on {args.workers}")

    if args.images:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            for k in range(args.images):
                p, g, t = synthetic(h, w, seed=k)
                write_png(root / "pred" / f"{k:04d}.png", p)
                write_png(root / "gt" / f"{k:04d}.png", g)
                write_png(root / "trimap" / f"{k:04d}.png", t)
            items, _ = evaluation.match_folders(root / "pred", root / "gt", root / "trimap")
            start = time.perf_counter()
            evaluation.evaluate_files(items, workers=args.workers)
            seconds = time.perf_counter() - start
        per_image = seconds / args.images
        print(f"end to end (PNG decoding, checks, all four metrics, {args.workers} process(es)): "
              f"{per_image:.3f} s/image wall -> Composition-1k extrapolated: {1000 * per_image / 60:.1f} min")


if __name__ == "__main__":
    main()
