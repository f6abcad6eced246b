"""Throughput of `matte infer`'s folder runner against a naive one-image-at-a-time loop.

Both run side by side in one process on the same inputs and the same pipeline: --count copies of
the lemur photo (examples/lemur.png, CC0) tiled to --size (and its trimap alike, mirrored
differently per copy so the files differ), with a seeded random model of --recipe, writing
--save outputs. The naive loop decodes, runs the model, estimates the foreground and encodes, one
step after the other; `infer_folder` decodes and encodes in a bounded thread pool while the model
runs. Each runs --repeat times, alternating, and the best time of each is reported.

    python benchmarks/bench_infer.py --size 3840x2160 --count 3

On a CPU the model dominates (it shares the cores with the I/O threads), so expect a modest
ratio; with the model on a GPU the CPU-side decoding and encoding are what overlapping hides.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def make_inputs(folder: Path, count: int, h: int, w: int) -> None:
    from mattecli.imageio import read_image, read_trimap, write_png

    image = read_image(ROOT / "examples" / "lemur.png")
    trimap, _ = read_trimap(ROOT / "examples" / "lemur_trimap.png")
    reps = (-(-h // image.shape[0]), -(-w // image.shape[1]))
    big_image = np.tile(image, reps + (1,))[:h, :w]
    big_trimap = np.tile(trimap, reps)[:h, :w]
    for i in range(count):
        flip = [slice(None), slice(None)]
        if i % 2:
            flip[1] = slice(None, None, -1)
        if i % 4 >= 2:
            flip[0] = slice(None, None, -1)
        write_png(folder / f"lemur {i:03d}.png", np.ascontiguousarray(big_image[tuple(flip)]))
        write_png(folder / f"lemur {i:03d}_trimap.png", np.ascontiguousarray(big_trimap[tuple(flip)]))


def naive(pipeline, images: Path, out: Path, save, background) -> int:
    from mattecli.imageio import list_images, read_image, read_trimap
    from mattecli.inference.outputs import output_paths, write_outputs

    n = 0
    for path in list_images(images):
        if path.stem.endswith("_trimap"):
            continue
        image = read_image(path, apply_exif=True)
        trimap, _ = read_trimap(path.with_name(path.stem + "_trimap.png"), apply_exif=True)
        alpha, _ = pipeline.run(image, trimap)
        write_outputs(output_paths(out, path.stem, save), image, alpha, background)
        n += 1
    return n


def main() -> None:
    import torch

    from mattecli.inference.backends import TorchBackend
    from mattecli.inference.batch import infer_folder
    from mattecli.inference.outputs import Background
    from mattecli.inference.pipeline import Pipeline
    from mattecli.cli.parsing import parse_memory
    from mattecli.models import build_model
    from mattecli.recipes import load_recipe

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="indexnet-unet-maxunpool")
    parser.add_argument("--size", default="3840x2160", help="WxH")
    parser.add_argument("--count", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--save", default="alpha,fg,rgba,composite")
    parser.add_argument("--max-memory", default="none", help="as matte infer's (none: whole-image passes)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the model's device)")
    args = parser.parse_args()
    w, h = map(int, args.size.split("x"))
    save = tuple(args.save.split(","))

    recipe = load_recipe(args.recipe)
    torch.manual_seed(0)
    model = build_model(recipe).eval()
    pipeline = Pipeline(TorchBackend(model, recipe, args.device), recipe.infer,
                        max_bytes=parse_memory(args.max_memory))
    background = Background.parse("#00ff00")
    work = Path(tempfile.mkdtemp(prefix="bench_infer_"))
    try:
        images = work / "images"
        images.mkdir()
        make_inputs(images, args.count, h, w)
        make_inputs_warm = work / "warm"
        make_inputs_warm.mkdir()
        make_inputs(make_inputs_warm, 1, 64, 96)
        naive(pipeline, make_inputs_warm, work / "warm_out", save, background)  # numba compile, allocator warm-up
        best = {"naive loop": float("inf"), "infer_folder": float("inf")}
        for _ in range(args.repeat):
            for name in best:
                out = work / f"out_{name.replace(' ', '_')}"
                shutil.rmtree(out, ignore_errors=True)
                t = time.perf_counter()
                if name == "naive loop":
                    done = naive(pipeline, images, out, save, background)
                else:
                    report = infer_folder(pipeline, images, out, save=save, background=background,
                                          progress=False, workers=args.workers)
                    done = len(report.done)
                    assert not report.failed, report.failed
                best[name] = min(best[name], time.perf_counter() - t)
                assert done == args.count
        print(f"{args.count} images {w}x{h}, {args.recipe} (seeded random), save {args.save}, "
              f"max-memory {args.max_memory}, device {args.device}, torch threads {torch.get_num_threads()}, "
              f"workers {args.workers}")
        for name, seconds in best.items():
            print(f"{name:13s}: {seconds:7.1f} s, {args.count / seconds:.3f} images/s")
        print(f"ratio infer_folder / naive: {best['naive loop'] / best['infer_folder']:.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
