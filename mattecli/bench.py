"""`matte bench`: median latency, images/s and peak memory of each backend at each input size.

What is timed: one backend call on an input prepared by `inference.pipeline.prepare` (the one
preprocessing path, for the seeded random image and trimap `export --verify` uses, of the
requested size, aligned to the recipe's stride): numpy float32 in, raw alpha as numpy out, so on a GPU the host-device copies
are included; preparing the input and restoring the alpha are not. Warm-up calls come first and
are not timed.

Each (backend, size) row runs in a fresh Python process, so its peak memory is its own:
- CPU: the process's peak resident set size (VmHWM), beside the peak before the first
  forward pass (Python, libraries, weights): the difference is what the passes added.
- CUDA: `torch.cuda.max_memory_allocated()` over the row's calls (reset after loading), beside
  what was allocated before the first call: torch counts its weights and activations; TensorRT
  its input/output buffers and its scratch memory (when TensorRT >= 10.1 lets torch allocate
  it), not the engine's own weights.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from mattecli.errors import UsageError, printable
from mattecli.sizes import Size
TIMED = ("one backend call on a pipeline-prepared input (numpy in, numpy out; host-device copies "
         "included), after warm-up calls; each backend and size in a fresh process")
ROW_MARK = "MATTE_BENCH_ROW "
PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def default_backends(weights: Path) -> list[str]:
    """The backends `bench` times when none are named: torch and onnx for weights, the file's own otherwise."""
    from mattecli.inference.backends import SUFFIX_TO_BACKEND

    own = SUFFIX_TO_BACKEND.get(Path(weights).suffix.lower(), "torch")
    return ["torch", "onnx"] if own == "torch" else [own]


def check_request(weights: Path, backends: list[str], device: str, half: bool, sizes=()) -> bool:
    """Refuse, in one line, what cannot run: missing or unsuitable file, a size the model cannot
    take, device, --half, TensorRT; -> whether the model runs in FP16 (`half`, or an exported
    model's own precision)."""
    from mattecli.weights import no_weights_file, unknown_model_file

    if not weights.is_file():
        raise no_weights_file(weights)
    from mattecli.devices import resolve_device
    from mattecli.inference.backends import BACKENDS_FROM_SUFFIX, SUFFIX_TO_BACKEND, exported_half

    suffix = weights.suffix.lower()
    usable = BACKENDS_FROM_SUFFIX
    if suffix not in usable:
        raise unknown_model_file(weights)
    for name in backends:
        if name not in usable[suffix]:
            raise UsageError(f"{weights}: the {name} backend needs a .safetensors weights file "
                             f"(a {suffix} file serves {', '.join(usable[suffix])})")
    if suffix == ".safetensors":  # no recipe, tensors that do not fit it: one usage error, not a failed row per size
        from mattecli.weights import check_weights

        check_weights(weights)
    elif suffix == ".onnx" and "onnx" in backends:  # the same for a graph
        from mattecli.inference.backends import check_onnx_file

        check_onnx_file(weights)
    if sizes:
        from mattecli.recipes import carried_recipe

        _aligned(sizes, carried_recipe(weights)[0].infer)
    own, built_half = SUFFIX_TO_BACKEND[suffix], exported_half(weights)
    if half and own != "torch" and own in backends and not built_half:  # its rows would run FP32
        raise UsageError(f"--half: {weights.name} is an FP32 model and an exported model runs in the precision it "
                         "was exported in: export it with `matte export --half`")
    device = resolve_device(device)
    if half and not device.startswith("cuda"):
        raise UsageError("--half needs --device cuda (FP16 on a CPU is not a fast path in torch or ONNX Runtime)")
    if "trt" in backends:
        from mattecli.inference.engine import import_tensorrt

        import_tensorrt()
        if not device.startswith("cuda"):
            raise UsageError("the trt backend runs on a GPU: use --device cuda")
    return half or built_half  # an FP32 graph or engine with `half` was refused above


def _aligned(sizes: list[Size], cfg) -> list[Size]:
    """Each size as the pipeline aligns a photo of that size for the model (`cfg`: its recipe's
    infer): up to the stride, or down for a recipe that resizes down, which cannot run a side
    under the stride (a UsageError naming --sizes, not a failed row)."""
    try:
        return [cfg.aligned(size) for size in sizes]
    except ValueError as err:
        raise UsageError(f"--sizes {err}") from None


def _profile(sizes: list[Size], cfg):
    """TensorRT profile (H, W) covering every benchmarked size once aligned as the pipeline aligns it."""
    shapes = [size.hw for size in _aligned(sizes, cfg)]
    low = (min(s[0] for s in shapes), min(s[1] for s in shapes))
    high = (max(s[0] for s in shapes), max(s[1] for s in shapes))
    return low, shapes[0], high


def prepare_models(weights: Path, backends: list[str], sizes, half: bool, workdir: Path, log=print) -> dict:
    """-> {backend: model file} for the requested backends, exporting what a .safetensors lacks:
    an ONNX graph (`to_onnx`; the FP16 graph with `half`) for onnx, and for trt an engine built
    as `matte export --format trt` builds it (`exporters.tensorrt.build_engine`)."""
    suffix = weights.suffix.lower()
    if suffix in (".engine", ".plan"):
        return {"trt": weights}
    graphs: dict[bool, Path] = {}
    loaded = []

    def model_and_recipe():
        from mattecli.weights import load_model

        loaded[:] = loaded or [load_model(weights)]
        return loaded[0]

    def graph(fp16: bool) -> Path:
        if suffix == ".onnx":
            return weights
        if fp16 not in graphs:
            from exporters.onnx import to_onnx

            model, recipe = model_and_recipe()
            log(f"exporting {weights.name} to ONNX{' (FP16)' if fp16 else ''}")
            try:
                graphs[fp16] = to_onnx(model, workdir / f"model{'-fp16' if fp16 else ''}.onnx", recipe=recipe,
                                       half=fp16)
            except (NotImplementedError, ValueError) as err:  # FP16 not available, operator outside the list
                raise UsageError(f"{weights}: ONNX export failed: {err}") from None
        return graphs[fp16]

    files = {}
    for name in backends:
        if name == "torch":
            files[name] = weights
        elif name == "onnx":
            files[name] = graph(half)
        else:
            files[name] = _engine(weights, model_and_recipe, sizes, half, workdir, log)
    return files


def _engine(weights: Path, model_and_recipe, sizes, half: bool, workdir: Path, log) -> Path:
    """The TensorRT engine of an .onnx graph (`to_engine`) or of a weights file (`build_engine`, as
    `matte export --format trt` builds), with a profile covering `sizes`, timing cache in `workdir`."""
    from exporters.tensorrt import build_engine, onnx_io, to_engine

    path, cache = workdir / "model.engine", workdir / "timing.cache"
    from_graph = weights.suffix.lower() == ".onnx"
    model, recipe = (None, None) if from_graph else model_and_recipe()
    if from_graph:
        from mattecli.recipes import carried_recipe

        onnx_io(weights)  # the graph's own checks (an input named "input", (N, C, H, W)) before its recipe's
    shapes = _profile(sizes, (carried_recipe(weights)[0] if from_graph else recipe).infer)
    log(f"building a TensorRT engine ({'FP16' if half else 'FP32'}, H x W profile {shapes[0]} .. {shapes[2]})")
    if from_graph:
        return to_engine(weights, path, half=half, min_shape=shapes[0], opt_shape=shapes[1], max_shape=shapes[2],
                         timing_cache=cache)
    return build_engine(model, recipe, path, half=half, shapes=shapes, timing_cache=cache)


def run_row(model_file: Path, backend: str, size: Size, device: str, half: bool, repeat: int, warmup: int) -> dict:
    """Measure one (backend, size) in a fresh Python process; -> the row dict (see `measure`), or
    {"backend", "size", "error"} when that process failed (e.g. out of memory at that size)."""
    args = json.dumps({"model": str(model_file), "backend": backend, "size": [size.width, size.height], "device": device,
                       "half": half, "repeat": repeat, "warmup": warmup})
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_ROOT), env.get("PYTHONPATH")) if p)
    res = subprocess.run([sys.executable, "-m", "mattecli.bench", args], capture_output=True, text=True, env=env)
    rows = [line[len(ROW_MARK):] for line in res.stdout.splitlines() if line.startswith(ROW_MARK)]
    if res.returncode == 0 and rows:
        return json.loads(rows[-1])
    lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
    reason = lines[-1].removeprefix("matte: error: ") if lines else f"exit code {res.returncode}"
    return {"backend": backend, "size": str(size), "error": reason}


def peak_rss_mib() -> float | None:
    """Peak resident set size of this process so far, in MiB; None where neither /proc nor the
    `resource` module is there (Windows): every CPU row failed there with "No module named 'resource'"."""
    # /proc's VmHWM belongs to this process's own address space; ru_maxrss would also carry the
    # parent's peak across fork + exec (Linux keeps the larger), i.e. the bench parent's, with its
    # torch, model and ONNX export.
    try:
        with open("/proc/self/status", encoding="utf-8") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def measure(model_file: str, backend: str, size: Size, device: str, half: bool, repeat: int, warmup: int) -> dict:
    """Time `repeat` backend calls at `size` after `warmup` calls, in this process.

    Meant to run in a fresh process (`run_row`): the peak memory it reports is the process's.
    """
    import time

    import numpy as np

    from mattecli.inference.backends import load_backend
    from mattecli.inference.random_input import fresh_input

    # torch: the backend `matte infer --half` runs (autocast on a copy whose convolutions hold their
    # weights in FP16); an exported model carries its precision
    be = load_backend(model_file, backend, device, half=half and backend == "torch")
    x = fresh_input(size, be.recipe.infer, np.random.default_rng(0))
    cuda = device.startswith("cuda")
    if cuda:
        import torch

        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device) / 2**20
    else:
        base = peak_rss_mib()
    times = []
    for i in range(warmup + repeat):
        start = time.perf_counter()
        be(x)
        if i >= warmup:
            times.append(time.perf_counter() - start)
        if cuda and i == 0 and warmup + repeat > 1:
            # cuDNN's first-call search tries algorithms with whatever workspace is free: its peak
            # says how much memory was free, not what a pass needs (80 GB against 10 GB, IndexNet
            # float32 at 4K on the H200). The peak reported is that of the calls after it.
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else peak_rss_mib()
    median = float(np.median(times))
    return {
        "backend": backend, "size": str(size), "input": "x".join(map(str, x.shape)),
        "device": device, "half": be.half, "repeat": repeat, "warmup": warmup,  # the precision it ran in
        # six significant digits, not three decimals: a sub-millisecond call (a tiny graph) would
        # otherwise lose up to 0.5% to rounding and disagree with images_per_s
        "median_ms": float(f"{median * 1000:.6g}"), "min_ms": float(f"{min(times) * 1000:.6g}"),
        "images_per_s": round(1 / median, 4),
        "peak_memory_mib": None if peak is None else round(peak, 1),
        "base_memory_mib": None if base is None else round(base, 1),
        "memory": "torch.cuda.max_memory_allocated after the first call" if cuda else "peak RSS of the process",
    }


def run_bench(weights, backends, sizes, *, device: str = "cpu", half: bool = False, repeat: int = 5,
              warmup: int = 1, json_path=None, workdir=None, log=None, on_row=None) -> dict:
    """Benchmark `backends` at `sizes` for a model file; -> the report (also written to `json_path`).

    Args:
        weights: a .safetensors weights file (ONNX graph and engine are exported from it into
            `workdir`, a temporary folder by default), an .onnx graph, or an .engine.
        backends: names from `inference.backends.BACKEND_NAMES`; None or empty: `default_backends(weights)`.
        sizes: input sizes (`Size`).
        device: cpu or cuda[:N].
        half: FP16 (CUDA only): `matte infer --half`'s torch backend, an FP16 graph for onnx, FP16 engine for trt.
            An exported model runs in its own precision (refused with `half` where that is FP32).
        repeat, warmup: timed and untimed calls per row.
        json_path: where to write the report as JSON, atomically (`-`: standard output).
        log: called with a line of progress text (export and build steps).
        on_row: called with each row as it completes.

    Returns:
        {"weights", "device", "half", "repeat", "warmup", "timed", "rows"}; "half" is the precision
        the model ran in (`half`, or an FP16 graph's or engine's own), in each row that backend's. A
        row whose process failed holds only backend, size and error, and the others still run.

    Raises:
        UsageError: a missing or unsuitable file, unknown backend, CUDA or TensorRT missing, an
            export or engine build failing.
    """
    weights = Path(weights)
    backends = list(backends) if backends else default_backends(weights)
    if repeat < 1 or warmup < 0:
        raise UsageError(f"--repeat must be >= 1 and --warmup >= 0 (got {repeat}, {warmup})")
    half_models = check_request(weights, backends, device, half, sizes)
    log = log or (lambda line: print(line, file=sys.stderr))
    rows = []
    with tempfile.TemporaryDirectory(prefix="matte-bench-") as tmp:
        files = prepare_models(weights, backends, sizes, half, Path(workdir or tmp), log=log)
        for name in backends:
            for size in sizes:
                row = run_row(files[name], name, size, device, half, repeat, warmup)
                rows.append(row)
                if on_row:
                    on_row(row)
    report = {"weights": str(weights), "device": device, "half": half_models, "repeat": repeat, "warmup": warmup,
              "timed": TIMED, "rows": rows}
    if json_path:
        from mattecli.files import write_text

        write_text(json_path, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return report


def _child_main(argv: list[str]) -> int:
    args = json.loads(argv[0])
    try:
        row = measure(args["model"], args["backend"], Size(*args["size"]), args["device"], args["half"],
                      args["repeat"], args["warmup"])
    except (UsageError, ValueError) as err:
        print(printable(f"matte: error: {err}"), file=sys.stderr)
        return 2
    print(ROW_MARK + json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
