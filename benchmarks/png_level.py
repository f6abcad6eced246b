"""PNG size and encoding time at zlib level 1 (what matte writes) against Pillow's default 6.

The photo is the lemur tiled to --size as `matte bench --e2e` makes its inputs; the alpha is its
trimap blurred (sigma 3), a soft matte. Sizes are exact; times are one encode each, on this machine:

    PYTHONPATH=. python benchmarks/png_level.py --size 3840x2160
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="3840x2160", help="WIDTHxHEIGHT")
    args = parser.parse_args()

    import cv2
    from PIL import Image

    from mattecli.bench_e2e import make_inputs
    from mattecli.cli.parsing import parse_size
    from mattecli.imageio import PNG_LEVEL, read_image, read_trimap

    size = parse_size(args.size, "--size")
    with tempfile.TemporaryDirectory(prefix="png-level-") as tmp:
        make_inputs(Path(tmp), 1, size.width, size.height)
        photo = read_image(Path(tmp) / "e2e 000.png")
        trimap, _ = read_trimap(Path(tmp) / "e2e 000_trimap.png")
    alpha = cv2.GaussianBlur(trimap, (0, 0), 3)
    for name, array in (("RGB photo", photo), ("alpha", alpha)):
        for level in (PNG_LEVEL, 6):
            buffer, start = io.BytesIO(), time.perf_counter()
            Image.fromarray(array).save(buffer, format="PNG", compress_level=level)
            print(f"{name} {size.width}x{size.height}, level {level}: {buffer.tell() / 2**20:.2f} MiB, "
                  f"{time.perf_counter() - start:.2f} s", flush=True)


if __name__ == "__main__":
    main()
