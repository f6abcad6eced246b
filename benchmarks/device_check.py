"""The GPU figures in one run (docs/gpu.md; the targets in docs/benchmarks.md): `benchmarks/device_check.sh`
calls this (see its header).

    python benchmarks/device_check.py --out OUT            # on a CUDA machine: < 8 minutes on one H100
    python benchmarks/device_check.py --out OUT --cpu      # dry run on a CPU, tiny sizes (for the test)

For each released recipe (IndexNet, A2U, TCP), with seeded random weights (speed and memory do
not depend on the values; no weights file travels), in sections (--only):
- model: one forward pass on a prepared device tensor at each size, in float32 (cuDNN's convolutions
  in TF32, torch's default, as `matte infer` without --half runs), float16 (autocast,
  as `--half`), float16 without BatchNorm folding (what `matte infer` did before folding), float16
  with channels_last (and with --precisions: bfloat16, and for A2U float16 with its kernels applied
  by unfolding). Each row:
  time, and peak memory of the passes after the first (cuDNN's first-call search is reported
  apart) as bytes per aligned input pixel, what `--max-memory` needs (`infer.cuda_bytes_per_pixel`,
  `infer.cuda_half_bytes_per_pixel`);
- e2e: `bench --e2e` at 4K (IndexNet, --half) with --save alpha and with --save alpha,fg,
  --save alpha with half the workers, and --save alpha over JPEG photos;
- foreground: the GPU foreground estimation alone at 4K, and its difference from PyMatting's;
- parity: half precision (float16, bfloat16, float16 in channels_last) against float32 (TF32 off), the
  whole pipeline, on the lemur photo (examples/, CC0) tiled to 4K, in alpha levels over the unknown band;
- profile: IndexNet's CUDA kernels at 4K (OUT/profile.txt), float16 folded, unfolded and channels_last;
- graphs: model rows in float16 captured once as a CUDA graph and replayed (what launching some 600
  calls per pass costs), and the foreground estimate replayed as one CUDA graph; after the sections
  above, because a capture that fails may leave the CUDA context unusable for what follows;
- pool: `matte infer`'s host work (decode, encode) in a pool of threads against processes, one per
  core (no GPU: after the graphs, which answer a bigger question);
- compiled: float16 under torch.compile as `--compile` compiles it (last: compilation is the slowest
  part; a compilation starts only while --time-limit leaves it 90 s); then, time left, IndexNet
  compiled end to end (`bench --e2e --compile`, --save alpha) and against float32 (parity).
Everything goes into OUT/device_check.json, rewritten after each section, each model row and each e2e row (a run
that its timeout kills keeps what it measured); progress into the log (stdout). A section that fails is
recorded under "errors" (exit 1) and the sections after it still run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RECIPES = ("indexnet-m2o-nl-ctx", "a2u-dynamic-cs-d-gn", "tcp")
# bf16 and fp16-a2u-unfold (A2U's kernels by unfolding) only where --precisions names them: measured
# twice on the H200, both slower (bf16 also further from float32; the parity section still compares it)
PRECISIONS = ("fp32", "fp16", "fp16-unfolded", "fp16-channels-last", "fp16-graphs", "fp16-compiled")
# rows that only mean something for some recipes: A2U's kernels applied by unfolding (the training
# form) rather than by shifted taps (the eval default, chosen for its CPU memory)
ONLY_FOR = {"fp16-a2u-unfold": "a2u"}
# compiled rows: IndexNet first (its targets), then by compilation time, so that a budget spent on
# A2U's (557 s on the 2-core CPU against TCP's 32 s and IndexNet's 103 s) skips only A2U's
COMPILE_ORDER = ("indexnet-m2o-nl-ctx", "tcp", "a2u-dynamic-cs-d-gn")
SECTIONS = ("model", "e2e", "foreground", "parity", "profile", "graphs", "pool", "compiled")
# a first compiled call on the H200 (2026-11-30, static shapes, 3840x2160): IndexNet 37 s, TCP 15 s, A2U 58 s
# (dynamic shapes, before: IndexNet 101-152 s), plus the backend's building, warm-ups and timed passes
COMPILE_NEEDS_S = 90


def log(*parts) -> None:
    print(time.strftime("%H:%M:%S"), *parts, flush=True)


class Clock:
    """Wall time of device work: synchronises before reading the clock."""

    def __init__(self, device: str):
        import torch

        self.sync = (lambda: torch.cuda.synchronize(device)) if device.startswith("cuda") else (lambda: None)

    def median_ms(self, fn, repeat: int, warmup: int) -> float:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeat):
            self.sync()
            start = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - start)
        return 1000 * statistics.median(times)


def seeded_backend(name: str, device: str, precision: str, sets=(), fold_bn: bool | None = None):
    """(TorchBackend, recipe) of recipe `name` with seeded random weights, as `precision` asks.

    BatchNorms are folded as `matte infer` folds them (on CUDA) unless `fold_bn` says otherwise;
    "-unfolded" never folds (what folding gains). `sets`: recipe overrides (`matte train --set`)."""
    import torch

    from mattecli.inference.backends import HALF_DTYPE, TorchBackend
    from mattecli.models import build_model
    from mattecli.recipes import load_recipe

    recipe = load_recipe(name, list(sets))
    torch.manual_seed(0)
    model = build_model(recipe).eval()
    if precision.endswith("a2u-unfold"):
        from mattecli.models.a2u import set_a2u_form

        set_a2u_form(model, "unfold")
    fold_bn = device.startswith("cuda") if fold_bn is None else fold_bn
    backend = TorchBackend(model, recipe, device, half=not precision.startswith("fp32"),
                           compile=precision.endswith("compiled"), channels_last=precision.endswith("last"),
                           fold_bn=fold_bn and not precision.endswith("unfolded"),
                           half_dtype="bfloat16" if precision == "bf16" else HALF_DTYPE)
    return backend, recipe


def graphed(backend, x):
    """`backend`'s float16 pass on `x` captured once as a CUDA graph, -> a function that replays it.

    A measurement, not a `matte infer` path yet: an eager float16 pass makes some 600 ATen calls
    (IndexNet; benchmarks/cuda_estimate.py counts them), whose launching on the host may cost as
    much as the GPU's work at 1920x1080 once BatchNorms are folded. The replay launches them as one.
    """
    import torch

    static_x = x.clone()

    def body():
        with torch.inference_mode(), torch.autocast("cuda", dtype=backend.half_dtype, cache_enabled=False):
            return backend.run(static_x).float()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # cuDNN's search and the allocator's warm-up, outside the capture
        for _ in range(3):
            body()
    torch.cuda.current_stream().wait_stream(side)
    # The row's peak memory is the capture's and the replays': the warm-up's passes on the side stream
    # are not what a replay needs (their blocks stay cached apart from the graph's private pool).
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = body()

    def replay():
        static_x.copy_(x)
        graph.replay()
        return out

    return replay


def model_order(precisions) -> list[tuple[str, str]]:
    """(precision, recipe) in the order the model rows run: IndexNet in float16 first (the
    model-only targets, and the peak memory that budgets `--half`), then IndexNet in float32 (the
    other budget), then the rest by precision; compiled rows last, so that when the budget runs out
    only compilations are skipped."""
    order = [(p, n) for p in precisions if not p.endswith("compiled") for n in RECIPES]
    first = [row for row in (("fp16", RECIPES[0]), ("fp32", RECIPES[0])) if row in order]
    order = first + [row for row in order if row not in first]
    order += [(p, n) for p in precisions if p.endswith("compiled") for n in COMPILE_ORDER]
    return [(p, n) for p, n in order if n.startswith(ONLY_FOR.get(p, ""))]


def model_rows(device: str, sizes, repeat: int, warmup: int, deadline: float, precisions=PRECISIONS,
               keep=None, only=None) -> list[dict]:
    """Model-only figures: one forward pass on a prepared device tensor. "fp32" runs as `matte infer`
    without --half does: cuDNN's convolutions in TF32, torch's default on GPUs that have it.

    `keep(row)`, if given, takes each row as it is measured (the caller saves it: the outer timeout
    may kill the run mid-section) and nothing is returned. A recipe's rows start only before
    `deadline` (fp32's always), and a compiled row (each size a compilation of its own) likewise.
    `only(recipe, (width, height))`: the rows to run (default: all)."""
    import torch

    from mattecli.inference.random_input import fresh_input
    from mattecli.sizes import Size

    cuda = device.startswith("cuda")
    clock, rows = Clock(device), []
    add = keep or rows.append
    for precision, name in model_order(precisions):
        if only is not None and not any(only(name, size) for size in sizes):
            continue
        if time.time() > deadline and precision != "fp32":
            add({"recipe": name, "precision": precision, "skipped": "time budget spent"})
            continue
        try:
            backend, recipe = seeded_backend(name, device, precision)
        except Exception as err:  # noqa: BLE001 - a row that cannot run is reported, the rest go on
            add({"recipe": name, "precision": precision, "error": f"{type(err).__name__}: {err}"})
            continue
        for width, height in sizes:
            if only is not None and not only(name, (width, height)):
                continue
            row = {"recipe": name, "precision": precision, "size": f"{width}x{height}"}
            if precision.endswith("compiled") and time.time() > deadline:
                row["skipped"] = "time budget spent"
                add(row)
                continue
            if precision.endswith("graphs") and not cuda:
                row["skipped"] = "CUDA graphs need CUDA"
                add(row)
                continue
            try:
                x = torch.from_numpy(fresh_input(Size(width, height), recipe.infer, np.random.default_rng(0))).to(device)
                if cuda:
                    torch.cuda.synchronize(device)
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(device)
                    base = torch.cuda.memory_allocated(device)
                start = time.perf_counter()
                backend.forward(x)  # first call: cuDNN's search, compilation
                row["first_call_s"] = round(time.perf_counter() - start, 2)
                pixels = x.shape[2] * x.shape[3]
                if cuda:
                    # cuDNN's search in the first call tries algorithms with whatever workspace is
                    # free (an algorithm whose workspace cannot be had is skipped), so its peak says
                    # how much memory was free, not what a pass needs: the figure that budgets
                    # --max-memory is the peak of the passes after it
                    torch.cuda.synchronize(device)
                    row["first_call_peak_mib"] = round((torch.cuda.max_memory_allocated(device) - base) / 2**20, 1)
                    torch.cuda.reset_peak_memory_stats(device)
                call = graphed(backend, x) if precision.endswith("graphs") else partial(backend.forward, x)
                ms = clock.median_ms(call, repeat, warmup)
                row.update(input="x".join(map(str, x.shape)), median_ms=round(ms, 3),
                           images_per_s=round(1000 / ms, 2))
                if cuda:
                    peak = torch.cuda.max_memory_allocated(device) - base
                    row.update(peak_mib=round(peak / 2**20, 1), bytes_per_pixel=round(peak / pixels))
            except Exception as err:  # noqa: BLE001 - e.g. out of memory at 4K: reported, the rest go on
                row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
                if cuda:
                    torch.cuda.empty_cache()
            log(json.dumps(row))
            add(row)
        del backend
    return rows


def lemur(height: int, width: int):
    from mattecli.bench_e2e import make_inputs
    from mattecli.imageio import read_image, read_trimap

    folder = Path(f"/tmp/matte-device-check-{width}x{height}")
    make_inputs(folder, 1, width, height)
    return read_image(folder / "e2e 000.png"), read_trimap(folder / "e2e 000_trimap.png")[0]


def parity_rows(device: str, size, precisions=("fp16", "bf16"), recipes=RECIPES) -> list[dict]:
    """Half precision against float32, the whole pipeline, on the lemur photo tiled to `size`. The
    reference runs with TF32 off (cuDNN's convolutions use it by default): half against true float32."""
    import torch

    from exporters.verify import strict_fp32
    from mattecli.inference.pipeline import Pipeline

    image, trimap = lemur(size[1], size[0])
    unknown = trimap == 128
    if not unknown.any():  # a dry run's tiny crop of the photo may hold no band: compare everything
        unknown[:] = True
    rows = []
    for name in recipes:
        ref_backend, recipe = seeded_backend(name, device, "fp32")
        with strict_fp32():
            ref = Pipeline(ref_backend, recipe.infer).run(image, trimap).alpha
        for precision in precisions:
            backend, _ = seeded_backend(name, device, precision)
            alpha, how = Pipeline(backend, recipe.infer).run(image, trimap)
            diff = np.abs(alpha.astype(np.int16) - ref.astype(np.int16))[unknown]
            row = {"recipe": name, "precision": precision, "size": f"{size[0]}x{size[1]}", "how": how,
                   "max_levels": int(diff.max()), "mean_levels": round(float(diff.mean()), 4),
                   "share_within_1": round(float((diff <= 1).mean()), 6)}
            log(json.dumps(row))
            rows.append(row)
        del ref_backend
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return rows


def foreground_case(size):
    """(image, alpha) that the foreground rows estimate from: the lemur photo tiled to `size`, its
    trimap blurred into a soft band (the unknown band at 50%, blurred edges)."""
    import cv2

    image, trimap = lemur(size[1], size[0])
    return image, cv2.GaussianBlur(trimap, (0, 0), 3)


def foreground_rows(device: str, size, repeat: int) -> list[dict]:
    """Foreground estimation alone (`--save fg`'s extra work) on the lemur photo tiled to `size`.

    Time of the device's port (`inference.foreground`) from uint8 host arrays to a uint8 host array,
    and its difference from PyMatting's estimate on the CPU, in colour levels over the pixels whose
    alpha is fractional (elsewhere the foreground is the image itself or is not seen).
    """
    from mattecli.inference.foreground import estimate_foreground_torch

    image, alpha = foreground_case(size)
    clock = Clock(device)
    row = {"size": f"{size[0]}x{size[1]}", "device": device}
    ms = clock.median_ms(lambda: estimate_foreground_torch(image, alpha, device), repeat, 1)
    row.update(median_ms=round(ms, 2))
    fg = estimate_foreground_torch(image, alpha, device)
    try:
        from mattecli.inference.outputs import estimate_foreground

        start = time.perf_counter()
        ref = estimate_foreground(image, alpha)  # no device: PyMatting on the CPU, as `matte infer` there
        row["pymatting_cpu_s"] = round(time.perf_counter() - start, 2)
        soft = (alpha > 0) & (alpha < 255)
        diff = np.abs(fg.astype(np.int16) - ref.astype(np.int16))[soft]
        row.update(max_levels=int(diff.max()), mean_levels=round(float(diff.mean()), 4),
                   share_within_1=round(float((diff <= 1).mean()), 6), share_within_4=round(float((diff <= 4).mean()), 6))
    except ImportError as err:
        row["parity"] = f"not measured: {err}"
    log(json.dumps(row))
    return [row]


def graphed_foreground_rows(device: str, size, repeat: int) -> list[dict]:
    """The foreground estimate of `foreground_rows` replayed as one CUDA graph
    (`inference.foreground.GraphedForeground`), timed the same way, and its largest difference from
    the eager estimate: whether launching is what bounds the port. In the `graphs` section, after
    the figures the targets need: a capture that fails may leave the CUDA context unusable."""
    from mattecli.inference.foreground import GraphedForeground, estimate_foreground_torch

    image, alpha = foreground_case(size)
    row = {"size": f"{size[0]}x{size[1]}", "device": device}
    eager = estimate_foreground_torch(image, alpha, device)
    graph = GraphedForeground(*alpha.shape, device)
    row["median_ms"] = round(Clock(device).median_ms(lambda: estimate_foreground_torch(image, alpha, device, graph),
                                                     repeat, 1), 2)
    same = estimate_foreground_torch(image, alpha, device, graph)
    row["max_levels_from_eager"] = int(np.abs(same.astype(np.int16) - eager.astype(np.int16)).max())
    log(json.dumps(row))
    return [row]


def profile_rows(device: str, out: Path, size, precisions=("fp16", "fp16-unfolded", "fp16-channels-last")) -> list[dict]:
    """Where IndexNet's model time goes: torch.profiler's CUDA kernels of 3 passes at `size`,
    the top kernels by their own device time into OUT/profile.txt, and the share of the main kinds
    (normalisation and reduction, layout conversion, convolution, elementwise) into the JSON."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from mattecli.inference.random_input import fresh_input
    from mattecli.sizes import Size

    rows, text = [], []
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    for precision in precisions:
        backend, recipe = seeded_backend(RECIPES[0], device, precision)
        x = torch.from_numpy(fresh_input(Size(*size), recipe.infer, np.random.default_rng(0))).to(device)
        for _ in range(3):
            backend.forward(x)
        with profile(activities=activities) as prof:
            for _ in range(3):
                backend.forward(x)
            Clock(device).sync()
        events = prof.key_averages()

        def own(e):  # the event's own device time in microseconds, under either spelling of torch's versions
            return getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0) or 0

        kernels = [e for e in events if own(e) > 0 and not e.key.startswith(("aten::", "cuda", "Memcpy", "Memset"))]
        kernels = kernels or [e for e in events if own(e) > 0]
        total = sum(own(e) for e in kernels) or 1
        # first match wins: cuDNN's BatchNorm and layout kernels before the convolutions' words
        kinds = {"normalisation and reduction": ("bn_fw", "norm", "reduce", "softmax"),
                 "layout conversion": ("nchwtonhwc", "nhwctonchw"),
                 "convolution": ("conv", "gemm", "xmma", "nvjet", "implicit", "cutlass"),
                 "elementwise": ("elementwise", "vectorized", "unrolled", "triton")}
        share = {kind: 0.0 for kind in kinds}
        for e in kernels:
            name = e.key.lower()
            kind = next((k for k, words in kinds.items() if any(w in name for w in words)), None)
            if kind:
                share[kind] += own(e) / total
        top = sorted(kernels, key=own, reverse=True)[:25]
        row = {"recipe": RECIPES[0], "precision": precision, "size": f"{size[0]}x{size[1]}",
               "device_ms_per_pass": round(total / 3 / 1000, 3), "kernel_launches_per_pass": sum(e.count for e in kernels) // 3,
               "share": {k: round(v, 3) for k, v in share.items()},
               "top": [{"kernel": e.key[:120], "ms_per_pass": round(own(e) / 3 / 1000, 3), "calls_per_pass": e.count // 3}
                       for e in top[:10]]}
        text.append(f"== {RECIPES[0]} {precision} {size[0]}x{size[1]}: {row['device_ms_per_pass']} ms of kernels per pass")
        text += [f"{own(e) / 3 / 1000:9.3f} ms {e.count // 3:5d}x  {e.key[:150]}" for e in top]
        log(json.dumps({k: v for k, v in row.items() if k != "top"}))
        rows.append(row)
        del backend
    (out / "profile.txt").write_text("\n".join(text) + "\n")
    return rows


E2E_RUNS = ((("alpha",), None, "png"), (("alpha",), "fewer", "png"), (("alpha", "fg"), None, "png"),
            (("alpha",), None, "jpg"))  # (--save, workers (None: the default), photos)


def e2e_rows(device: str, size, count: int, keep=None, runs=E2E_RUNS, compile: bool = False) -> list[dict]:
    """`bench --e2e` with the default workers, --save alpha and alpha,fg; --save alpha with half
    the workers, so the CUDA default of one worker per core is a measured choice; and --save alpha
    over JPEG photos, what a folder of camera photos costs to decode. `keep`: as `model_rows`'
    (each run takes some 7 s at 4K on the H200, its inputs' writing included). `runs`: which of
    these; `compile`: as `--compile` (the `compiled` section's row)."""
    import tempfile

    from mattecli.bench_e2e import run_e2e
    from mattecli.parallel import usable_cores
    from mattecli.sizes import Size
    from mattecli.weights import save_weights

    import torch

    from mattecli.models import build_model
    from mattecli.recipes import load_recipe

    recipe = load_recipe(RECIPES[0])
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "indexnet.safetensors"
        save_weights(build_model(recipe), recipe, weights)
        fewer = max(2, usable_cores() // 2) if device.startswith("cuda") else 1
        for save, workers, photos in runs:
            workers = fewer if workers == "fewer" else workers
            report = run_e2e(weights, [Size(*size)], device=device, half=device.startswith("cuda"), save=save, count=count,
                             workers=workers, photos=photos, log=log, compile=compile)
            row = dict(report["rows"][0], save=",".join(save), workers=report["workers"], half=report["half"],
                       photos=photos, **({"compile": True} if compile else {}))
            log(json.dumps(row))
            (keep or rows.append)(row)
    return rows


def pool_rows(size, count: int, rounds: int) -> list[dict]:
    """`matte infer`'s host work (decode and hand over, encode) in a pool of one thread per core
    against one process per core (`benchmarks/pool_kind.py`): threads won 1.90x / 2.02x on the
    2-core CPU, but 16 threads decoding on the H200's host took 0.5 s per image each, more than one
    core's decode, and processes do not share the GIL."""
    import tempfile

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from pool_kind import compare, summary

    from mattecli.bench_e2e import make_inputs
    from mattecli.parallel import usable_cores

    workers = usable_cores()
    count = max(count, 2 * workers)
    with tempfile.TemporaryDirectory() as tmp:
        make_inputs(Path(tmp), count, *size)
        rows = compare(Path(tmp), count, workers, rounds)
    row = {"size": f"{size[0]}x{size[1]}", "count": count, "workers": workers, "rounds": rounds,
           "images_per_s": rows, "median": summary(rows)}
    log(json.dumps(row["median"]))
    return [row]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cpu", action="store_true", help="dry run on a CPU at tiny sizes")
    parser.add_argument("--budget", type=float, default=190, help="seconds for the eager model rows before skipping")
    parser.add_argument("--graphs-budget", type=float, default=40,
                        help="seconds for the CUDA graph rows (after the profile) before skipping")
    parser.add_argument("--compile-budget", type=float, default=90,
                        help="seconds for the compiled model rows (run last) before skipping")
    parser.add_argument("--time-limit", type=float,
                        help="seconds the whole run may take (device_check.sh's FIGURES_TIMEOUT): a compilation "
                             f"starts only with {COMPILE_NEEDS_S} s left, not to be cut off by the timeout")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections to run, in this order: {','.join(SECTIONS)}")
    parser.add_argument("--sizes", help="model rows' sizes, e.g. 3840x2160 (default 1920x1080,3840x2160)")
    parser.add_argument("--precisions", help=f"model rows' precisions (default {','.join(PRECISIONS)})")
    args = parser.parse_args(argv)
    sections = args.only.split(",")
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}: choose from {', '.join(SECTIONS)}")
    import torch

    from mattecli.cli.parsing import parse_sizes

    precisions, half_precisions = PRECISIONS, ("fp16", "bf16", "fp16-channels-last")
    if args.cpu:  # every code path once, at sizes a busy 2-core CPU runs in a minute; no compilation
        device, sizes, e2e_size, repeat, warmup, count = "cpu", [(96, 64)], (96, 64), 1, 0, 1
        precisions, half_precisions = ("fp32", "fp16"), ("fp16",)
    else:
        if not torch.cuda.is_available():
            print("device_check: CUDA is not available (use --cpu for a dry run)", file=sys.stderr)
            return 2
        device, sizes, e2e_size, repeat, warmup, count = "cuda", [(1920, 1080), (3840, 2160)], (3840, 2160), 10, 3, 16
    if args.sizes:
        sizes = [(size.width, size.height) for size in parse_sizes(args.sizes)]
    if args.precisions:
        precisions = tuple(args.precisions.split(","))
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    result = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu (dry run)",
              "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
              "recipes": list(RECIPES)}
    log("device:", result["device"], "torch", torch.__version__)
    path = args.out / "device_check.json"

    def save():  # after every section, so a run stopped by its timeout keeps what it measured
        result["seconds"] = round(time.time() - started, 1)
        tmp = path.with_name(path.name + ".tmp")  # renamed: a timeout's kill mid-write leaves the last whole file
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(path)

    def section(name: str, run, part_of: str | None = None) -> None:
        """Run one section into result[name] (a list of rows; a section that keeps its rows as they
        come returns none), then save. A section that
        raises (out of memory on a smaller GPU, a missing package) is logged and recorded under
        result["errors"], and the sections after it still run: one GPU session is all there is.
        `part_of`: the --only section that selects this one (default: its own name)."""
        if (part_of or name) not in sections:
            return
        try:
            rows = run()
            if rows:
                result.setdefault(name, []).extend(rows)
        except Exception as err:  # noqa: BLE001 - recorded, and the other sections go on
            import traceback

            traceback.print_exc()
            text = str(err).splitlines()[0][:300] if str(err) else ""
            result.setdefault("errors", {})[name] = f"{type(err).__name__}: {text}"
            log(f"section {name} failed: {result['errors'][name]}")
            if device == "cuda":
                torch.cuda.empty_cache()
        save()

    # the compiled rows come last, after everything the targets need: compilation is the slowest
    # and least certain part (IndexNet: 37 s static on the H200, 152 s dynamic), and a run stopped by its timeout still
    # has the rest
    compiled = tuple(p for p in precisions if p.endswith("compiled"))
    graphs = tuple(p for p in precisions if p.endswith("graphs"))
    eager = tuple(p for p in precisions if p not in compiled + graphs)
    result["model"] = []

    def keeper(name):  # each row on disk as it comes: the outer timeout may kill the run mid-section
        def keep(row):
            result.setdefault(name, []).append(row)
            save()
        return keep

    # the targets first (IndexNet float16 model-only and its peak memory, e2e at 4K, the
    # foreground at 4K), so that a run cut short still answers them
    section("model", lambda: model_rows(device, sizes, repeat, warmup, started + args.budget, eager,
                                        keeper("model")))
    section("e2e", lambda: e2e_rows(device, e2e_size, count, keeper("e2e")))
    section("foreground", lambda: foreground_rows(device, e2e_size, repeat))
    section("parity", lambda: parity_rows(device, sizes[-1], half_precisions))
    section("profile", lambda: profile_rows(device, args.out, sizes[-1], *([("fp32",)] if args.cpu else [])))
    if graphs:  # before the pool rows, which answer a smaller question
        section("graphs", lambda: model_rows(device, sizes, repeat, warmup, time.time() + args.graphs_budget,
                                             graphs, keeper("model")))
        if device.startswith("cuda"):
            section("foreground graphed", lambda: graphed_foreground_rows(device, e2e_size, repeat), part_of="graphs")
    section("pool", lambda: pool_rows(e2e_size, count, 1 if args.cpu else 2))
    if compiled:
        compile_until = time.time() + args.compile_budget  # the section's budget, counted from its start

        def compile_deadline() -> float:  # a compilation cut off by the outer timeout measures nothing
            if args.time_limit is None:
                return compile_until
            return min(compile_until, started + args.time_limit - COMPILE_NEEDS_S)

        # IndexNet at the largest size first (the targets), then, time left, IndexNet compiled end to
        # end (--save alpha: the 30 images/s target) and against float32 (what --compile changes in
        # the alpha), then the other compiled rows; each a compilation of its own
        def target(name, size):
            return name == COMPILE_ORDER[0] and size == tuple(sizes[-1])

        section("compiled", lambda: model_rows(device, sizes, repeat, warmup, compile_deadline(), compiled,
                                               keeper("model"), only=target))
        if time.time() < compile_deadline():
            section("compiled e2e", lambda: e2e_rows(device, e2e_size, count, keeper("e2e"), runs=E2E_RUNS[:1],
                                                     compile=True), part_of="compiled")
        if time.time() < compile_deadline():
            section("compiled parity", lambda: result.setdefault("parity", []).extend(
                parity_rows(device, sizes[-1], ("fp16-compiled",), recipes=RECIPES[:1])), part_of="compiled")
        section("compiled", lambda: model_rows(device, sizes, repeat, warmup, compile_deadline(), compiled,
                                               keeper("model"), only=lambda name, size: not target(name, size)))
    per_pixel = {}
    for row in result["model"]:
        if "bytes_per_pixel" in row and row["size"] == f"{sizes[-1][0]}x{sizes[-1][1]}":
            per_pixel.setdefault(row["recipe"], {})[row["precision"]] = row["bytes_per_pixel"]
    result["bytes_per_pixel"] = per_pixel  # -> recipes' infer.cuda_bytes_per_pixel / cuda_half_bytes_per_pixel
    save()
    log(f"wrote {path} in {result['seconds']} s" + (f"; failed sections: {', '.join(result['errors'])}"
                                                     if result.get("errors") else ""))
    return 1 if result.get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
