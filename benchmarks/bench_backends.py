"""ONNX Runtime (and TensorRT on a GPU) against PyTorch eager, per model family, as ratios.

For each recipe, a seeded random model is saved as a weights file and `mattecli.bench.run_bench`
(what `matte bench` runs) times every backend at every size in one run: the ONNX graph and the
engine are exported from the same weights; each (backend, size) runs in a fresh process, one
after the other. Latency ratios are the backend's median over torch's (below 1: faster than
torch); memory is each row's peak (CPU: peak RSS of the process; CUDA: torch's peak allocation).

    python benchmarks/bench_backends.py                                   # CPU, 1920x1088
    python benchmarks/bench_backends.py --device cuda --backends torch,onnx,trt --half
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

DEFAULT_RECIPES = "indexnet-m2o-nl-ctx,a2u-dynamic-cs-d-gn"  # IndexNet's and A2U's released models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default=DEFAULT_RECIPES, help="comma-separated recipe names")
    parser.add_argument("--backends", default="torch,onnx", help="torch first: ratios are against it")
    parser.add_argument("--sizes", default="1920x1088")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--half", action="store_true")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write every row as JSON")
    args = parser.parse_args()

    import os

    import torch

    from mattecli.bench import run_bench
    from mattecli.cli.parsing import parse_backends, parse_sizes
    from mattecli.models import build_model
    from mattecli.recipes import load_recipe
    from mattecli.weights import save_weights

    backends, sizes = parse_backends(args.backends), parse_sizes(args.sizes)
    if backends[0] != "torch":
        parser.error("--backends must start with torch (the reference of the ratios)")
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, load average "
          f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}, median of {args.repeat} after {args.warmup} warm-up")
    all_rows = []
    with tempfile.TemporaryDirectory(prefix="bench-backends-") as tmp:
        for name in args.recipes.split(","):
            torch.manual_seed(0)
            recipe = load_recipe(name)
            weights = save_weights(build_model(recipe), recipe, Path(tmp) / f"{name}.safetensors")
            report = run_bench(weights, backends, sizes, device=args.device, half=args.half, repeat=args.repeat,
                               warmup=args.warmup, workdir=Path(tmp), log=lambda line: print("  " + line))
            torch_rows = {r["size"]: r for r in report["rows"] if r["backend"] == "torch"}
            for r in report["rows"]:
                ref = torch_rows[r["size"]]
                ratio = r["median_ms"] / ref["median_ms"]
                print(f"{name:24s} {r['backend']:5s} {r['size']:>9s} {r['median_ms']:9.0f} ms "
                      f"(min {r['min_ms']:.0f})  x{ratio:.2f} of torch  peak {r['peak_memory_mib']:6.0f} MiB "
                      f"(before {r['base_memory_mib']:.0f})")
                all_rows.append({"recipe": name, "latency_ratio_to_torch": round(ratio, 3), **r})
    if args.json:
        args.json.write_text(json.dumps(all_rows, indent=1))


if __name__ == "__main__":
    main()
