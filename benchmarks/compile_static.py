"""`--compile` on CUDA with static shapes against eager, one recipe at a time (needs a CUDA GPU).

    python benchmarks/compile_static.py indexnet-m2o-nl-ctx tcp a2u-dynamic-cs-d-gn --size 3840x2160

For each recipe (seeded weights, BatchNorms folded, float16 as `matte infer --half` runs it): the
eager pass's median time, then the same backend's model under torch.compile with static shapes
(what `CompiledPerShape` compiles for each input size): the first call's time (the compilation),
the median time of later passes, their peak memory per aligned input pixel (the input and the
weights included), and the 6 kernels
with the most device time. One JSON line per figure. Results on an H200:
benchmarks/results/compile-static-h200-2026-11-30.log (docs/benchmarks.md#compiled-with-static-shapes).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def measure(name: str, width: int, height: int) -> None:
    import numpy as np
    import torch
    from device_check import Clock, seeded_backend

    from mattecli.inference.backends import CompiledPerShape
    from mattecli.inference.random_input import fresh_input
    from mattecli.sizes import Size

    backend, recipe = seeded_backend(name, "cuda", "fp16")
    # the network input the pipeline makes of a photo of this size (aligned as the recipe aligns)
    x = torch.from_numpy(fresh_input(Size(width, height), recipe.infer, np.random.default_rng(0))).to("cuda")
    h, w = x.shape[2:]
    clock = Clock("cuda")

    def median_ms() -> float:
        return clock.median_ms(lambda: backend.forward(x), 10, 2)

    print(json.dumps({"recipe": name, "input": "x".join(map(str, x.shape)),
                      "eager_fp16_ms": round(median_ms(), 2)}), flush=True)
    backend.run = CompiledPerShape(backend.run)
    start = time.perf_counter()
    backend.forward(x)
    torch.cuda.synchronize()
    first = time.perf_counter() - start
    torch.cuda.reset_peak_memory_stats()
    ms = median_ms()
    peak = torch.cuda.max_memory_allocated()
    print(json.dumps({"recipe": name, "compiled": "static", "first_call_s": round(first, 1), "median_ms": round(ms, 2),
                      "peak_mib": round(peak / 2**20), "bytes_per_pixel": round(peak / (h * w))}), flush=True)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        backend.forward(x)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=6, max_name_column_width=110), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="+")
    parser.add_argument("--size", default="3840x2160", help="WIDTHxHEIGHT")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    for name in args.recipes:
        measure(name, width, height)


if __name__ == "__main__":
    main()
