"""Peak activation memory of one forward pass per input pixel, for `recipes/*.yaml` infer.bytes_per_pixel.

Each measurement runs in a fresh subprocess and reads the peak resident set size (VmHWM)
before and after one float32 forward pass on CPU, after a small warm-up pass so that the weights
and the allocator's first arenas are not counted.

    PYTHONPATH=. python benchmarks/measure_memory.py --recipes indexnet-m2o-nl-ctx,indexnet-unet-maxunpool \
        --sizes 512x512,1024x1024
    PYTHONPATH=. python benchmarks/measure_memory.py --recipes tcp --sizes 2160x3840 --set model.tcp_tile=512

The input is aligned to the recipe's stride as the inference pipeline aligns it (bytes per aligned
pixel, which `--max-memory` uses) and has the channels of the recipe's trimap encoding (4 scalar,
6 one-hot); `--set` overrides recipe values as `matte train --set` does. The peak before the pass
(Python, torch, the weights) is printed too, so whole-process figures can be stated.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, sys
import numpy as np, torch
from mattecli.bench import peak_rss_mib
from mattecli.models import build_model
from mattecli.recipes import load_recipe
name, h, w, sets = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
recipe = load_recipe(name, sets)
h, w = -(-h // recipe.infer.stride) * recipe.infer.stride, -(-w // recipe.infer.stride) * recipe.infer.stride
channels = 6 if recipe.infer.trimap == "onehot" else 4
model = build_model(recipe).eval()
with torch.inference_mode():
    model(torch.zeros(1, channels, 64, 64))
    base = peak_rss_mib() * 2**20
    model(torch.from_numpy(np.random.default_rng(0).random((1, channels, h, w), dtype=np.float32)))
peak = peak_rss_mib() * 2**20
print((peak - base) / (h * w), base, peak, h, w)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default="indexnet-m2o-nl-ctx,indexnet-unet-maxunpool,indexnet-unet-maxunpool-w1.4")
    parser.add_argument("--sizes", default="512x512,1024x1024")
    parser.add_argument("--set", action="append", default=[], help="recipe override, e.g. model.tcp_tile=512")
    args = parser.parse_args()
    for name in args.recipes.split(","):
        for size in args.sizes.split(","):
            h, w = map(int, size.split("x"))
            run = subprocess.run([sys.executable, "-c", CHILD, name, str(h), str(w), json.dumps(args.set)],
                                 capture_output=True, text=True)
            if run.returncode:
                sys.exit(f"{name} {h}x{w}: the measuring process failed:\n{run.stderr[-2000:]}")
            per_pixel, base, peak, ah, aw = map(float, run.stdout.split())
            print(f"{name:32s} {h}x{w} (aligned {ah:.0f}x{aw:.0f}) {' '.join(args.set)}: {per_pixel:8.0f} bytes/pixel "
                  f"(peak RSS {peak / 2**30:.2f} GiB, {base / 2**30:.2f} GiB before the pass)")


if __name__ == "__main__":
    main()
