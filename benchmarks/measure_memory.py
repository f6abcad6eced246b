"""Peak activation memory of one forward pass per input pixel, for `recipes/*.yaml` infer.bytes_per_pixel.

Each measurement runs in a fresh subprocess and reads the peak resident set size (ru_maxrss)
before and after one float32 forward pass on CPU, after a small warm-up pass so that the weights
and the allocator's first arenas are not counted.

    PYTHONPATH=. python benchmarks/measure_memory.py --recipes indexnet-m2o-nl-ctx,indexnet-unet-maxunpool \
        --sizes 512x512,1024x1024
"""

from __future__ import annotations

import argparse
import subprocess
import sys

CHILD = r"""
import resource, sys
import numpy as np, torch
from mattecli.models import build_model
from mattecli.recipes import load_recipe
name, h, w = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
model = build_model(load_recipe(name)).eval()
with torch.inference_mode():
    model(torch.zeros(1, 4, 64, 64))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model(torch.from_numpy(np.random.default_rng(0).random((1, 4, h, w), dtype=np.float32)))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((peak - base) * 1024 / (h * w))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default="indexnet-m2o-nl-ctx,indexnet-unet-maxunpool,indexnet-unet-maxunpool-w1.4")
    parser.add_argument("--sizes", default="512x512,1024x1024")
    args = parser.parse_args()
    for name in args.recipes.split(","):
        for size in args.sizes.split(","):
            h, w = map(int, size.split("x"))
            out = subprocess.run([sys.executable, "-c", CHILD, name, str(h), str(w)], check=True,
                                 capture_output=True, text=True).stdout
            print(f"{name:32s} {h}x{w}: {float(out):8.0f} bytes/pixel")


if __name__ == "__main__":
    main()
