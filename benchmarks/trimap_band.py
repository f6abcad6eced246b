"""How wide should the unknown band of a trimap made from a segmentation mask be? And how fast is it?

Masks are made from the synthetic set's alphas (mattecli/data/synthetic.py: soft edges, holes, a
semi-transparent veil and hair-like strands) the ways segmenters get them wrong:

- `cut`: alpha >= 0.5, a perfect binary segmenter;
- `no strands`: the cut opened by a disc 1% of the diagonal wide (segmenters drop hair);
- `grown`/`shrunk` S: the cut dilated / eroded by S% of the diagonal (edges off by a few pixels);
- `shifted` S: the cut moved by S% of the diagonal right and down (a misaligned mask).

For each band (a share of the diagonal, as `--band P%`) it reports, averaged over the samples: the
share of the strands' pixels inside the unknown band, the same for the other partial-alpha pixels
(0 < alpha < 1: soft edges, holes, and a semi-transparent veil no mask can locate), the alpha error
the trimap locks in (sum of |label - alpha| over known pixels, in SAD units of 1000 pixels: known
regions are copied into the result, so no model can undo it), and the band's share of the image
(more of it: more for the model to guess).

Then it times a 4K mask to a trimap against decoding that mask (PNG and JPEG), one thread.

    python benchmarks/trimap_band.py [--size 512] [--count 16]
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

BANDS = ("0.25%", "0.5%", "1%", "1.5%", "2%", "3%")


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


def score(alpha: np.ndarray, trimap: np.ndarray, strands: np.ndarray) -> tuple[float, float, float, float]:
    a = alpha.astype(np.float64) / 255
    partial = (alpha > 0) & (alpha < 255)
    unknown = trimap == 128
    known = ~unknown
    wrong = np.abs(trimap[known] / 255.0 - a[known]).sum() / 1000
    return unknown[strands].mean(), unknown[partial & ~strands].mean(), wrong, unknown.mean()


def strand_pixels(alpha: np.ndarray) -> np.ndarray:
    """The hair strands: partial pixels that a gray opening by a 5x5 disc removes (thin lines)."""
    opened = cv2.morphologyEx(alpha, cv2.MORPH_OPEN, disc(2))
    return (alpha > 0) & (alpha < 255) & (alpha.astype(int) - opened > 64)


def band_table(size: int, count: int) -> None:
    alphas = [make_alpha(size, np.random.default_rng(i)) for i in range(count)]
    kinds = list(masks_of(alphas[0]))
    results = {(k, b): [] for k in kinds for b in BANDS}
    for alpha in alphas:
        strands = strand_pixels(alpha)
        for kind, mask in masks_of(alpha).items():
            for band in BANDS:
                results[kind, band].append(score(alpha, trimap_from_mask(mask, band), strands))
    mean = {key: np.mean(values, axis=0) for key, values in results.items()}
    px = ", ".join(f"{b} = {float(b[:-1]) / 100 * np.hypot(size, size):.1f} px" for b in BANDS)
    print(f"{count} synthetic alphas of {size}x{size} (bands: {px})")
    titles = ("strand pixels inside the band", "other partial pixels (edges, holes, the veil) inside the band",
              "alpha error locked in by the known regions, SAD/1000 per image", "the band's share of the image")
    for column, title in enumerate(titles):
        print(f"\n{title}\n\n| mask | " + " | ".join(f"--band {b}" for b in BANDS) + " |")
        print("|---|" + "---|" * len(BANDS))
        for kind in kinds:
            cells = [f"{mean[kind, b][column]:.2f}" if column == 2 else f"{100 * mean[kind, b][column]:.0f}%"
                     for b in BANDS]
            print(f"| {kind} | " + " | ".join(cells) + " |")


def timing(repeats: int = 5) -> None:
    cv2.setNumThreads(1)
    square = make_alpha(2160, np.random.default_rng(0))
    soft = np.pad(square, ((0, 0), (840, 840)))
    masks = {"binary PNG": ((soft >= 128) * 255).astype(np.uint8), "soft PNG": soft, "JPEG": soft}
    print(f"\n3840x2160 masks, one thread, median of {repeats}:\n")
    print("| mask file | decode (read_mask) | trimap_from_mask | ratio |\n|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for kind, mask in masks.items():
            path = Path(tmp) / ("m.jpg" if kind == "JPEG" else f"{kind[:4]}.png")
            cv2.imwrite(str(path), mask, [cv2.IMWRITE_JPEG_QUALITY, 90] if kind == "JPEG" else [])
            decode = _median(lambda: read_mask(path), repeats)
            loaded = read_mask(path)[0]
            make = _median(lambda: trimap_from_mask(loaded), repeats)
            print(f"| {kind} | {1000 * decode:.0f} ms | {1000 * make:.0f} ms | {make / decode:.2f} |")


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
    parser.add_argument("--no-table", action="store_true")
    args = parser.parse_args()
    if not args.no_table:
        band_table(args.size, args.count)
    if not args.no_timing:
        timing()


if __name__ == "__main__":
    main()
