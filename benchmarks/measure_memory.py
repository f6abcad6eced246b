"""Peak activation memory of one forward pass per input pixel, for `recipes/*.yaml` infer.bytes_per_pixel.

Each measurement runs in a fresh subprocess and reads the peak resident set size (VmHWM)
before and after one float32 forward pass on CPU, after a small warm-up pass so that the weights
and the allocator's first arenas are not counted.

    python benchmarks/measure_memory.py --recipes indexnet-m2o-nl-ctx,indexnet-unet-maxunpool \
        --sizes 512x512,1024x1024
    python benchmarks/measure_memory.py --recipes tcp --sizes 3840x2160 --set model.tcp_tile=512

`--onnx` also exports each recipe (its export form, `exporters/decompose.py`) and measures the
same pass in ONNX Runtime (`OnnxBackend`, as `matte infer` runs it), printing the ratio to
PyTorch's; the two run one after the other in one invocation:

    python benchmarks/measure_memory.py --recipes a2u-dynamic-cs-d-gn --sizes 768x768 --onnx

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
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys
import numpy as np, torch
from mattecli.bench import peak_rss_mib
from mattecli.models import build_model
from mattecli.recipes import load_recipe
name, h, w, sets = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
recipe = load_recipe(name, sets)
h, w = -(-h // recipe.infer.stride) * recipe.infer.stride, -(-w // recipe.infer.stride) * recipe.infer.stride
channels = recipe.infer.input_channels
if len(sys.argv) > 5:  # an exported graph in ONNX Runtime
    from mattecli.inference.backends import OnnxBackend
    run = OnnxBackend.load(sys.argv[5])
else:
    model = build_model(recipe).eval()
    run = lambda x: model(torch.from_numpy(x))
with torch.inference_mode():
    run(np.zeros((1, channels, 64, 64), np.float32))
    base = peak_rss_mib() * 2**20
    run(np.random.default_rng(0).random((1, channels, h, w), dtype=np.float32))
peak = peak_rss_mib() * 2**20
print((peak - base) / (h * w), base, peak, h, w)
"""


def main() -> None:
    from mattecli.cli.parsing import parse_sizes

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default="indexnet-m2o-nl-ctx,indexnet-unet-maxunpool,indexnet-unet-maxunpool-w1.4")
    parser.add_argument("--sizes", default="512x512,1024x1024", help="WIDTHxHEIGHT,...")
    parser.add_argument("--set", action="append", default=[], help="recipe override, e.g. model.tcp_tile=512")
    parser.add_argument("--onnx", action="store_true", help="also the exported graph in ONNX Runtime")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.recipes.split(","):
            graph = _export(name, args.set, Path(tmp)) if args.onnx else None
            for size in parse_sizes(args.sizes):
                h, w = size.hw
                torch_px = None
                for backend, extra in [("torch", [])] + ([("onnx", [str(graph)])] if graph else []):
                    run = subprocess.run([sys.executable, "-c", CHILD, name, str(h), str(w), json.dumps(args.set),
                                          *extra], capture_output=True, text=True)
                    if run.returncode:
                        sys.exit(f"{name} {size} {backend}: the measuring process failed:\n{run.stderr[-2000:]}")
                    per_pixel, base, peak, ah, aw = map(float, run.stdout.split())
                    torch_px = per_pixel if backend == "torch" else torch_px
                    ratio = f", {per_pixel / torch_px:.2f}x torch" if backend == "onnx" else ""
                    print(f"{name:32s} {size} (aligned {aw:.0f}x{ah:.0f}) {backend:5s} {' '.join(args.set)}: "
                          f"{per_pixel:8.0f} bytes/pixel{ratio} (peak RSS {peak / 2**30:.2f} GiB, "
                          f"{base / 2**30:.2f} GiB before the pass)", flush=True)


def _export(name: str, sets: list[str], folder: Path) -> Path:
    """The recipe's seeded random model exported as `matte export` does (dynamic H/W)."""
    import torch

    from exporters.onnx import to_onnx
    from mattecli.models import build_model
    from mattecli.recipes import load_recipe

    recipe = load_recipe(name, sets)
    torch.manual_seed(0)
    return Path(to_onnx(build_model(recipe).eval(), folder / f"{name}.onnx", recipe=recipe))


if __name__ == "__main__":
    main()
