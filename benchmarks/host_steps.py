"""Host work of `matte infer` per image, step by step: decode, prepare, restore, encode.

The steps are the ones `matte infer` runs around the model on the numpy path (ONNX Runtime,
TensorRT and the torch backend on a CPU), timed one image after the other on --count generated
photos of --size (`bench_e2e.make_inputs`: the lemur, tiled and mirrored so no two files are
equal). `restore` is given the trimap channel of the prepared input as its raw output, so the
model costs nothing. Each step's mean over the images is printed in ms of wall time and of the
process's CPU time (OpenCV uses every core for resizing), per recipe alignment.

Each configuration runs in its own process, because `inference.pipeline.reuse_freed_buffers` (what
`load_pipeline` calls) changes the C library's allocator for the whole process; `--compare-reuse`
runs each recipe with and without it, side by side:

    python benchmarks/host_steps.py --size 3840x2160 --count 6 --compare-reuse
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ("indexnet-m2o-nl-ctx", "a2u-dynamic-cs-d-gn", "tcp", "indexnet-mmagic")
STEPS = ("decode", "prepare", "restore", "encode")

CHILD = r"""
import json, sys, tempfile, time
from pathlib import Path
import numpy as np
from mattecli.bench_e2e import make_inputs
from mattecli.imageio import read_image, read_trimap, write_png
from mattecli.inference.pipeline import prepare, restore, reuse_freed_buffers
from mattecli.recipes import load_recipe

name, width, height, count, reuse = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1"
if reuse:
    reuse_freed_buffers()
cfg = load_recipe(name).infer
wall = dict.fromkeys(("decode", "prepare", "restore", "encode"), 0.0)
cpu = dict(wall)
with tempfile.TemporaryDirectory() as tmp:
    folder = Path(tmp)
    make_inputs(folder, count + 1, width, height)
    for i in range(count + 1):  # the first image warms up (OpenCV's thread pool, first allocations)
        marks = [(time.perf_counter(), time.process_time())]
        image = read_image(folder / f"e2e {i:03d}.png", apply_exif=True)
        trimap, _ = read_trimap(folder / f"e2e {i:03d}_trimap.png", apply_exif=True)
        marks.append((time.perf_counter(), time.process_time()))
        x = prepare(image, trimap, cfg)
        marks.append((time.perf_counter(), time.process_time()))
        alpha = restore(x[0, 3], trimap, cfg)
        marks.append((time.perf_counter(), time.process_time()))
        write_png(folder / f"out {i:03d}.png", alpha)
        marks.append((time.perf_counter(), time.process_time()))
        del x
        if i:
            for step, (a, b) in zip(wall, zip(marks, marks[1:])):
                wall[step] += b[0] - a[0]
                cpu[step] += b[1] - a[1]
print(json.dumps({"wall": {k: 1000 * v / count for k, v in wall.items()},
                  "cpu": {k: 1000 * v / count for k, v in cpu.items()}}))
"""


def measure(recipe: str, width: int, height: int, count: int, reuse: bool) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, recipe, str(width), str(height), str(count), str(int(reuse))],
                          capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    from mattecli.cli.parsing import parse_size

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="3840x2160", help="WIDTHxHEIGHT")
    parser.add_argument("--count", type=int, default=6, help="timed images per configuration")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--compare-reuse", action="store_true",
                        help="each recipe also without reuse_freed_buffers (matte infer calls it)")
    args = parser.parse_args()
    size = parse_size(args.size, "--size")
    modes = (True, False) if args.compare_reuse else (True,)
    print(f"{size} x {args.count} images; ms per image, wall (CPU)")
    print(f"{'recipe':24s} {'align':12s} {'reuse':5s} " + " ".join(f"{s:>15s}" for s in STEPS))
    for recipe in args.recipes.split(","):
        from mattecli.recipes import load_recipe

        align = load_recipe(recipe).infer.align
        for reuse in modes:
            r = measure(recipe, size.width, size.height, args.count, reuse)
            cells = " ".join(f"{r['wall'][s]:7.0f} ({r['cpu'][s]:4.0f})" for s in STEPS)
            print(f"{recipe:24s} {align:12s} {'yes' if reuse else 'no':5s} {cells}", flush=True)


if __name__ == "__main__":
    main()
