"""PNG size and encoding time of what matte writes against Pillow's encoder at levels 1 and 6.

matte writes PNGs at zlib level 1, every row filtered by PNG's Up filter (`mattecli/png.py`);
Pillow (and libpng by default) tries five filters on each row and keeps the best. The photo is the
lemur tiled to --size as `matte bench --e2e` makes its inputs; the alpha is its trimap blurred
(sigma 3), a soft matte. Sizes are exact; times are the best of --repeat encodes into memory (the
file write is the same for all), on this machine; every file is decoded and compared:

    python benchmarks/png_level.py --size 3840x2160
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
    parser.add_argument("--repeat", type=int, default=3, help="encodes of each, the best kept")
    args = parser.parse_args()

    import cv2
    import numpy as np
    from PIL import Image

    from mattecli.bench_e2e import make_inputs
    from mattecli.cli.parsing import parse_size
    from mattecli import png
    from mattecli.imageio import read_image, read_trimap

    size = parse_size(args.size, "--size")
    with tempfile.TemporaryDirectory(prefix="png-level-") as tmp:
        make_inputs(Path(tmp), 1, size.width, size.height)
        photo = read_image(Path(tmp) / "e2e 000.png")
        trimap, _ = read_trimap(Path(tmp) / "e2e 000_trimap.png")
    alpha = cv2.GaussianBlur(trimap, (0, 0), 3)

    def pillow(level):
        def encode(array):
            buffer = io.BytesIO()
            Image.fromarray(array).save(buffer, format="PNG", compress_level=level)
            return buffer.getvalue()
        return encode

    writers = ((f"matte (level {png.LEVEL}, Up filter)", png.encode),
               (f"Pillow level {png.LEVEL}", pillow(png.LEVEL)), ("Pillow level 6 (its default)", pillow(6)))
    for name, array in (("RGB photo", photo), ("alpha", alpha)):
        for label, encode in writers:
            times = []
            for _ in range(args.repeat):
                start = time.perf_counter()
                data = encode(array)
                times.append(time.perf_counter() - start)
            decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
            same = np.array_equal(decoded if decoded.ndim == 2 else decoded[..., ::-1], array)
            print(f"{name} {size.width}x{size.height}, {label}: {len(data) / 2**20:.2f} MiB, {min(times):.3f} s"
                  + ("" if same else " (DECODES TO OTHER PIXELS)"), flush=True)


if __name__ == "__main__":
    main()
