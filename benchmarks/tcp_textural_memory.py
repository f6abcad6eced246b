"""Peak memory and time of TCP's full-resolution textural path alone, whole vs in tiles.

`measure_memory.py` measures the whole network, whose peak the semantic path sets; this isolates
the textural path (given the semantic features at 1/4 resolution), to show how its memory grows
with the image and what `model.tcp_tile` bounds it to. Each run is a fresh process (peak RSS,
float32, eval, inference_mode) after a warm-up pass; the peak counts the path's inputs (the 6-channel
image, 24 bytes/pixel, and the projected features) and its output (4 bytes/pixel). Repeat a tile
side in `--tiles` to interleave timing runs.

    python benchmarks/tcp_textural_memory.py --size 3840x2176 --tiles 0,512,1024
"""

from __future__ import annotations

import argparse
import subprocess
import sys

CHILD = r"""
import sys, time
import torch
from mattecli.bench import peak_rss_mib
from mattecli.models import build_model
from mattecli.recipes import load_recipe
recipe, h, w, tile = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
model = build_model(load_recipe(recipe, [f"model.tcp_tile={tile}"])).eval()
s = model.textural.scale
channels = model.encoder.channels[model.cfg.ffu_layer]
with torch.inference_mode():
    model._textural(torch.zeros(1, 6, 64, 64), model.textural.semantic(torch.zeros(1, channels, 64 // s, 64 // s)))
    base = peak_rss_mib() * 2**20
    x = torch.rand(1, 6, h, w)
    sem = model.textural.semantic(torch.rand(1, channels, h // s, w // s))
    start = time.perf_counter()
    model._textural(x, sem)
    seconds = time.perf_counter() - start
peak = peak_rss_mib() * 2**20
print(peak - base, seconds)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="tcp")
    parser.add_argument("--size", default="3840x2176", help="WIDTHxHEIGHT, multiples of 32")
    parser.add_argument("--tiles", default="0,512,1024", help="tile sides in run order (0 = whole)")
    args = parser.parse_args()
    from mattecli.cli.parsing import parse_size

    size = parse_size(args.size, "--size")
    h, w = size.hw
    for tile in map(int, args.tiles.split(",")):
        run = subprocess.run([sys.executable, "-c", CHILD, args.recipe, str(h), str(w), str(tile)],
                             capture_output=True, text=True)
        if run.returncode:
            sys.exit(f"tile {tile}: the measuring process failed:\n{run.stderr[-2000:]}")
        extra, seconds = map(float, run.stdout.split())
        print(f"{args.recipe} textural path {size} tile {tile or 'whole':>5}: peak +{extra / 2**30:.2f} GiB "
              f"({extra / (h * w):.0f} bytes/pixel), {seconds:.1f} s")


if __name__ == "__main__":
    main()
