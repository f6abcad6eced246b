"""How wide should the unknown band of a trimap made from a segmentation mask be? And how fast is it?

Masks are made from the synthetic set's alphas (mattecli/data/synthetic.py: soft edges, holes, a
semi-transparent veil and hair-like strands) the ways segmenters get them wrong:

- `cut`: alpha >= 0.5, a perfect binary segmenter;
- `no strands`: the cut opened by a disc 1% of the diagonal wide (segmenters drop hair);
- `grown`/`shrunk` S: the cut dilated / eroded by S% of the diagonal (edges off by a few pixels);
- `shifted` S: the cut moved by S% of the diagonal right and down (a misaligned mask).

For each band (a share of the diagonal, as `--band P%`) it reports, over the samples: `covered`,
the share of partial-alpha pixels (0 < alpha < 1, the ones a matting model must find) inside the
unknown band; `wrong`, the alpha error the trimap locks in (sum of |label - alpha| over known
pixels, in SAD units of 1000 pixels; known regions are copied into the result, so no model can undo
it); `unknown`, the band's share of the image (more of it: more for the model to guess, slower tiles).

Then it times a 4K mask to a trimap against decoding that mask (PNG and JPEG), one thread.

    PYTHONPATH=. python benchmarks/trimap_band.py [--size 512] [--count 16]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from mattecli.data.synthetic import make_alpha
from mattecli.data.trimap import trimap_from_mask
from mattecli.imageio import read_mask

BANDS = ("0.25%", "0.5%", "0.75%", "1%", "1.5%", "2%", "3%")


def disc(radius: float) -> np.ndarray:
    side = 2 * int(round(radius)) + 1
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (side, side))


def masks_of(alpha: np.ndarray) -> dict[str, np.ndarray]:
    diag = float(np.hypot(*alpha.shape))
    cut = (alpha >= 128).astype(np.uint8) * 255
    px = lambda share: max(1, int(round(share / 100 * diag)))  # noqa: E731
    out = {"cut": cut, "no strands": cv2.morphologyEx(cut, cv2.MORPH_OPEN, disc(px(1.0) / 2))}
    for share in (0.25, 0.5):
        out[f"grown {share}%"] = cv2.dilate(cut, disc(px(share)))
        out[f"shrunk {share}%"] = cv2.erode(cut, disc(px(share)))
        s = px(share)
        out[f"shifted {share}%"] = np.pad(cut, ((s, 0), (s, 0)))[: cut.shape[0], : cut.shape[1]]
    return out


def score(alpha: np.ndarray, trimap: np.ndarray) -> tuple[float, float, float]:
    a = alpha.astype(np.float64) / 255
    partial = (alpha > 0) & (alpha < 255)
    unknown = trimap == 128
    known = ~unknown
    wrong = np.abs(trimap[known] / 255.0 - a[known]).sum() / 1000
    return unknown[partial].mean(), wrong, unknown.mean()


def band_table(size: int, count: int) -> None:
    alphas = [make_alpha(size, np.random.default_rng(i)) for i in range(count)]
    kinds = list(masks_of(alphas[0]))
    results = {(k, b): [] for k in kinds for b in BANDS}
    for alpha in alphas:
        for kind, mask in masks_of(alpha).items():
            for band in BANDS:
                results[kind, band].append(score(alpha, trimap_from_mask(mask, band)))
    px = ", ".join(f"{b} = {float(b[:-1]) / 100 * np.hypot(size, size):.1f} px" for b in BANDS)
    print(f"{count} synthetic alphas of {size}x{size} (bands: {px})\n")
    print("| mask | " + " | ".join(f"--band {b}" for b in BANDS) + " |")
    print("|---|" + "---|" * len(BANDS))
    for kind in kinds:
        cells = []
        for band in BANDS:
            covered, wrong, unknown = np.mean(results[kind, band], axis=0)
            cells.append(f"{100 * covered:.1f}% / {wrong:.2f} / {100 * unknown:.1f}%")
        print(f"| {kind} | " + " | ".join(cells) + " |")
    print("\ncells: covered (share of partial-alpha pixels in the band) / wrong (SAD/1000 locked in by the "
          "known regions, per image) / unknown (share of the image)")


def timing(repeats: int = 5) -> None:
    cv2.setNumThreads(1)
    square = make_alpha(2160, np.random.default_rng(0))
    mask = np.pad((square >= 128).astype(np.uint8) * 255, ((0, 0), (840, 840)))
    with tempfile.TemporaryDirectory() as tmp:
        cv2.imwrite(str(Path(tmp) / "m.png"), mask)
        cv2.imwrite(str(Path(tmp) / "m.jpg"), mask, [cv2.IMWRITE_JPEG_QUALITY, 90])
        decode = {s: _median(lambda s=s: read_mask(Path(tmp) / f"m.{s}"), repeats) for s in ("png", "jpg")}
    make = _median(lambda: trimap_from_mask(mask), repeats)
    print(f"\n3840x2160 mask, one thread, median of {repeats}: trimap_from_mask {1000 * make:.0f} ms; "
          f"decoding it {1000 * decode['png']:.0f} ms (PNG), {1000 * decode['jpg']:.0f} ms (JPEG); "
          f"ratio {make / decode['png']:.2f} (PNG), {make / decode['jpg']:.2f} (JPEG)")


def _median(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--count", type=int, default=16)
    parser.add_argument("--no-timing", action="store_true")
    args = parser.parse_args()
    band_table(args.size, args.count)
    if not args.no_timing:
        timing()


if __name__ == "__main__":
    main()
