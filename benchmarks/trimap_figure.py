"""The picture of a trimap made from a mask in docs/trimaps.md: image, mask, trimap, alpha, side by side.

The mask stands in for a segmenter's: the example trimap's foreground plus the half of its unknown
region nearer to the foreground (a hard cut through the hair, as a binary segmenter makes). The
trimap is `trimap_from_mask` with the default band. The repository ships no trained weights, so the
alpha comes from pymatting's closed-form matting on that trimap (with `matte infer --weights W
--masks ...` a model's alpha takes its place).

    python benchmarks/trimap_figure.py [--out docs/trimap_from_mask.jpg]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw

from mattecli.data.trimap import trimap_from_mask
from mattecli.files import atomic_write
from mattecli.imageio import read_image, read_trimap

ROOT = Path(__file__).resolve().parents[1]


def mask_from_trimap(trimap: np.ndarray) -> np.ndarray:
    """Foreground plus the unknown pixels nearer to the foreground than to the background."""
    to_fg = cv2.distanceTransform((trimap != 255).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    to_bg = cv2.distanceTransform((trimap != 0).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return np.where((trimap == 255) | ((trimap == 128) & (to_fg < to_bg)), 255, 0).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "trimap_from_mask.jpg")
    parser.add_argument("--width", type=int, default=340, help="width of each panel")
    args = parser.parse_args()

    from pymatting import estimate_alpha_cf

    image = read_image(ROOT / "examples" / "lemur.png")
    mask = mask_from_trimap(read_trimap(ROOT / "examples" / "lemur_trimap.png")[0])
    trimap = trimap_from_mask(mask)
    alpha = estimate_alpha_cf(image / 255.0, trimap / 255.0)
    alpha = np.round(np.clip(alpha, 0, 1) * 255).astype(np.uint8)
    panels = [image, mask, trimap, alpha]
    h, w = image.shape[:2]
    size = (args.width, round(h * args.width / w))
    label_h = 22
    sheet = Image.new("RGB", (size[0] * 4, size[1] + label_h), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (panel, label) in enumerate(zip(panels, ("image", "mask", "trimap (matte trimap)", "alpha"))):
        sheet.paste(Image.fromarray(panel).convert("RGB").resize(size, Image.LANCZOS), (i * size[0], label_h))
        draw.text((i * size[0] + 6, 5), label, fill="black")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out, lambda tmp: sheet.save(tmp, format="JPEG", quality=88))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
