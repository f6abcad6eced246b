"""CUDA memory, memory traffic and float16 numerics of one forward pass, estimated without a GPU.

The model runs as `TorchBackend.forward` runs it on CUDA (BatchNorms folded, float16 autocast for
`--half`, channels_last where asked), but on fake CUDA tensors (`torch._subclasses.FakeTensorMode`):
shapes, dtypes and layouts are computed and no arithmetic is done. Every ATen call the model makes
goes through a dispatch mode that keeps the bytes of the tensors alive:

- peak: the most bytes alive at once above the input, what `torch.cuda.max_memory_allocated`
  counts in `benchmarks/device_check.py` (its steady-state figure, after cuDNN's first-call search).
  Not counted: cuDNN's workspaces and the caching allocator's rounding;
- traffic: bytes read and written by each call (its tensor arguments and new outputs; views move
  nothing), by operator. At the GPU's memory bandwidth this is a floor on the time of a pass whose
  kernels each read their inputs and write their outputs once, as eager PyTorch's do.

    python benchmarks/cuda_estimate.py --recipes indexnet-m2o-nl-ctx --sizes 3840x2160
    python benchmarks/cuda_estimate.py --precisions fp32,fp16,fp16-unfolded --top 8 --json est.json

`--parity` instead replays every call on real CPU tensors in the dtypes the fake CUDA run chose
(`Replay`), so float16 autocast's numerics can be compared with float32's without a GPU: the
device check's parity rows (the lemur photo, alpha levels over the unknown band), on a CPU.

    python benchmarks/cuda_estimate.py --parity --sizes 1920x1080 --precisions fp16

Both are estimates: docs/benchmarks.md compares them with what the H200 measured.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import sys
import weakref
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "benchmarks"))  # device_check's lemur photo, for --parity

RECIPES = ("indexnet-m2o-nl-ctx", "a2u-dynamic-cs-d-gn", "tcp")
PRECISIONS = ("fp32", "fp32-unfolded", "fp16", "fp16-unfolded", "fp16-channels-last", "fp16-a2u-unfold")
# memory bandwidth, bytes per second: the datasheets' figures
BANDWIDTH = {"H100 SXM": 3.35e12, "H200": 4.8e12}


def _after_each_call(callback):
    """A dispatch mode that runs each ATen call, then `callback(func, args, kwargs, out)`."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Mode(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            callback(func, args, kwargs or {}, out)
            return out

    return Mode()


class LiveBytes:
    """A dispatch mode that counts the bytes of the tensors alive and those each call moves.

    A storage is counted once however many views share it, from the call that made it until the
    last tensor on it is freed (a weakref finaliser per tensor)."""

    def __init__(self):
        self.mode = _after_each_call(self.record)
        self.live: dict[int, list] = {}  # storage -> [bytes, tensors on it]
        self.bytes = self.peak = 0
        self.at_peak = ""
        self.traffic: collections.Counter = collections.Counter()
        self.calls: collections.Counter = collections.Counter()

    def _release(self, key: int) -> None:
        entry = self.live[key]
        entry[1] -= 1
        if entry[1] == 0:
            self.bytes -= entry[0]
            del self.live[key]

    def record(self, func, args, kwargs, out) -> None:
        import torch
        from torch.utils._pytree import tree_flatten

        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        input_storages = {t.untyped_storage()._cdata for t in inputs}
        moved = 0
        for t in (t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)):
            key = t.untyped_storage()._cdata
            if key not in input_storages or func._schema.is_mutable:  # written, not a view
                moved += t.numel() * t.element_size()
            if key not in self.live:
                if key in input_storages:  # a view of the input or a parameter: counted as the base
                    continue
                self.live[key] = [t.untyped_storage().nbytes(), 0]
                self.bytes += self.live[key][0]
            self.live[key][1] += 1
            weakref.finalize(t, self._release, key)
        if moved:
            moved += sum(t.numel() * t.element_size() for t in inputs)
        name = func.overloadpacket.__name__
        self.traffic[name] += moved
        self.calls[name] += 1
        if self.bytes > self.peak:
            self.peak, self.at_peak = self.bytes, name


def _index(t, key):
    """Basic indexing (ints, slices, None, ...) as ATen view calls: Python's `[]` on a fake CUDA
    tensor asks for a CUDA device guard, which a CPU-only build of torch has not got."""
    import torch

    key = key if isinstance(key, tuple) else (key,)
    if Ellipsis in key:
        i = key.index(Ellipsis)
        named = sum(k is not None for k in key if k is not Ellipsis)
        key = key[:i] + (slice(None),) * (t.dim() - named) + key[i + 1:]
    dim = 0
    for k in key:
        if k is None:
            t, dim = t.unsqueeze(dim), dim + 1
        elif isinstance(k, int):
            t = t.select(dim, k)
        elif isinstance(k, slice):
            start, stop, step = k.indices(t.shape[dim])
            t, dim = torch.ops.aten.slice.Tensor(t, dim, start, max(stop, start), step), dim + 1
        else:
            raise TypeError(f"cuda_estimate: indexing by {type(k).__name__} is not handled")
    return t


def _python_methods_mode():
    import torch
    from torch.overrides import TorchFunctionMode

    class PythonMethods(TorchFunctionMode):
        """`[]`, `[] =` and `.contiguous()` of fake CUDA tensors through ATen calls."""

        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func is torch.Tensor.__getitem__:
                return _index(*args)
            if func is torch.Tensor.__setitem__:
                return torch.ops.aten.copy_.default(_index(args[0], args[1]), args[2])
            if func is torch.Tensor.contiguous:
                layout = (kwargs or {}).get("memory_format", args[1] if len(args) > 1 else torch.contiguous_format)
                t = args[0]
                return t if t.is_contiguous(memory_format=layout) else torch.ops.aten.clone.default(t, memory_format=layout)
            return func(*args, **(kwargs or {}))

    return PythonMethods()


@contextlib.contextmanager
def fake_cuda(model, half: bool = False, channels_last: bool = False):
    """Fake CUDA copies of `model`'s parameters and buffers (for `torch.func.functional_call`),
    laid out as `.to(device[, channels_last])` leaves them, with float16 CUDA autocast on if
    `half`, in inference mode, `[]` and `.contiguous()` made ATen calls."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    def fake(t):
        layout = torch.channels_last if channels_last and t.dim() == 4 else torch.contiguous_format
        # requires_grad as the model's: autocast keeps its float16 copies of such leaves to the end
        return torch.empty(t.shape, dtype=t.dtype, device="cuda", memory_format=layout).requires_grad_(t.requires_grad)

    autocast = (torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"))
    with FakeTensorMode():
        state = {k: fake(v) for k, v in [*model.named_parameters(), *model.named_buffers()]}
        # autocast on a fake CUDA device: torch.autocast refuses without a GPU, the switches do not
        torch.set_autocast_enabled("cuda", half)
        torch.set_autocast_dtype("cuda", torch.float16)
        try:
            with _python_methods_mode(), torch.inference_mode():
                yield state
        finally:
            torch.clear_autocast_cache()  # as leaving torch.autocast does
            torch.set_autocast_enabled("cuda", autocast[0])
            torch.set_autocast_dtype("cuda", autocast[1])


def run_fake(model, shape: tuple[int, ...], half: bool = False, channels_last: bool = False) -> LiveBytes:
    """One inference pass of `model` on a fake CUDA input of `shape`, as `TorchBackend.forward`
    runs it (float16 autocast if `half`, channels_last if asked, the output made float32)."""
    import torch

    live = LiveBytes()
    with fake_cuda(model, half, channels_last) as state:
        x = torch.empty(shape, device="cuda")
        with live.mode:
            y = x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
            out = torch.func.functional_call(model, state, (y,)).float()
            del y, out
    return live


class Replay:
    """A dispatch mode that runs every ATen call made on fake CUDA tensors again on real CPU
    tensors, in the dtypes the fake run chose: CUDA autocast's casts (which a CPU run would not
    make, or make by another policy) arrive here as calls of their own, so the CPU tensors take the
    float16 path of the GPU, operator by operator. Arithmetic is the CPU's (float16 operators there
    compute in float32 and round, as CUDA's do; float32 convolutions are not TF32), so the result
    approximates what the GPU computes; `benchmarks/device_check.sh`'s parity section measures it."""

    def __init__(self):
        self.mode = _after_each_call(self.run)
        self.twins: dict[int, object] = {}  # id(fake tensor) -> its CPU twin, while the fake one lives

    def bind(self, fake, real) -> None:
        if id(fake) not in self.twins:
            self.twins[id(fake)] = real
            weakref.finalize(fake, self.twins.pop, id(fake), None)

    def _real(self, x):
        import torch

        if isinstance(x, torch.Tensor):
            return self.twins[id(x)]
        if isinstance(x, torch.device) and x.type == "cuda" or x == "cuda":
            return torch.device("cpu")
        return x

    def run(self, func, args, kwargs, out) -> None:
        import torch
        from torch.utils._python_dispatch import _disable_current_modes
        from torch.utils._pytree import tree_flatten, tree_map

        real_args, real_kwargs = tree_map(self._real, (args, kwargs))
        with _disable_current_modes():  # the fake mode below must not see the CPU tensors
            real_out = func(*real_args, **real_kwargs)
        for fake, real in zip(tree_flatten(out)[0], tree_flatten(real_out)[0]):
            if isinstance(fake, torch.Tensor):
                self.bind(fake, real)


def replay(model, x, half: bool = False):
    """`model(x)` (x: a CPU tensor) as CUDA would compute it, float16 autocast if `half`, on the CPU."""
    import torch

    rep = Replay()
    reals = {k: v.detach() for k, v in [*model.named_parameters(), *model.named_buffers()]}
    with fake_cuda(model, half) as state:
        fake_x = torch.empty(x.shape, dtype=x.dtype, device="cuda")
        for k, fake in state.items():
            rep.bind(fake, reals[k])
        rep.bind(fake_x, x)
        with rep.mode:
            out = torch.func.functional_call(model, state, (fake_x,)).float()
            return rep.twins[id(out)]


def build(name: str, precision: str, sets=()):
    """(recipe, the module `TorchBackend.forward` runs) for `precision` (device_check's names), as
    on CUDA: seeded random weights, BatchNorms folded unless `-unfolded`, and for half precision
    the copy whose convolutions hold float16 weights. Built by `TorchBackend` itself on the CPU."""
    from device_check import seeded_backend

    backend, recipe = seeded_backend(name, "cpu", precision, sets, fold_bn=True)
    return recipe, backend.run


def parity(name: str, width: int, height: int, precision: str = "fp16") -> dict:
    """`precision` (replayed, half) against float32 (BatchNorms folded likewise), the whole pipeline
    on the lemur photo tiled to `width`x`height`, in alpha levels over the unknown band: the
    device check's parity rows, computed on a CPU."""
    import numpy as np
    import torch

    from device_check import lemur
    from mattecli.inference.pipeline import Pipeline

    image, trimap = lemur(height, width)
    unknown = trimap == 128
    alphas, raws = {}, {}
    for half in (False, True):
        recipe, model = build(name, precision.replace("fp16", "fp32", 1) if not half else precision)

        def backend(x, half=half, model=model):
            raws[half] = replay(model, torch.from_numpy(x), half).numpy()
            return raws[half]

        alphas[half] = Pipeline(backend, recipe.infer).run(image, trimap).alpha
    diff = np.abs(alphas[True].astype(np.int16) - alphas[False].astype(np.int16))[unknown]
    return {"recipe": name, "precision": precision, "size": f"{width}x{height}", "max_levels": int(diff.max()),
            "mean_levels": round(float(diff.mean()), 4), "share_within_1": round(float((diff <= 1).mean()), 6),
            # the network's output before the pipeline clips and quantises it, over the whole image
            "raw_max_difference": float(np.abs(raws[True] - raws[False]).max()),
            "raw_scale": float(np.abs(raws[False]).max())}


def estimate(name: str, width: int, height: int, precision: str, sets: list[str] = ()) -> dict:
    """One pass of recipe `name` at `width`x`height` in `precision` (device_check's names)."""
    recipe, model = build(name, precision, sets)
    stride = recipe.infer.stride
    h, w = -(-height // stride) * stride, -(-width // stride) * stride
    live = run_fake(model, (1, recipe.infer.input_channels, h, w), half=not precision.startswith("fp32"),
                    channels_last=precision.endswith("last"))
    traffic = sum(live.traffic.values())
    return {"recipe": name, "precision": precision, "size": f"{width}x{height}",
            "input": f"1x{recipe.infer.input_channels}x{h}x{w}",
            "peak_mib": round(live.peak / 2**20, 1), "bytes_per_pixel": round(live.peak / (h * w)),
            "peak_at": live.at_peak, "traffic_gb": round(traffic / 1e9, 2),
            "floor_ms": {gpu: round(1000 * traffic / bw, 2) for gpu, bw in BANDWIDTH.items()},
            "by_operator": [{"op": op, "calls": live.calls[op], "gb": round(b / 1e9, 3)}
                            for op, b in live.traffic.most_common() if b]}


def main() -> None:
    from mattecli.cli.parsing import parse_sizes

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--sizes", default="1920x1080,3840x2160")
    parser.add_argument("--precisions", default="fp32,fp16,fp16-unfolded,fp16-channels-last",
                        help=f"of {', '.join(PRECISIONS)} (device_check's names)")
    parser.add_argument("--set", action="append", default=[], help="recipe override, as `matte train --set`")
    parser.add_argument("--top", type=int, default=0, help="also print the N operators that move the most bytes")
    parser.add_argument("--parity", action="store_true",
                        help="instead: float16 against float32 on the lemur photo, each call replayed on the CPU")
    parser.add_argument("--json", type=Path, help="write every row here")
    args = parser.parse_args()
    rows = []
    if args.parity:
        for name in args.recipes.split(","):
            for precision in (p for p in args.precisions.split(",") if p.startswith("fp16")):
                for size in parse_sizes(args.sizes):
                    rows.append(parity(name, size.width, size.height, precision))
                    print(json.dumps(rows[-1]), flush=True)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))
        return
    for name in args.recipes.split(","):
        for precision in args.precisions.split(","):
            if precision.endswith("a2u-unfold") and not name.startswith("a2u"):
                continue
            for size in parse_sizes(args.sizes):
                try:
                    row = estimate(name, size.width, size.height, precision, args.set)
                except RuntimeError as err:  # an operator without a fake CUDA implementation here
                    print(f"{name:22} {precision:19} {size.width}x{size.height}: not estimated: {str(err).splitlines()[0]}")
                    continue
                rows.append(row)
                floor = ", ".join(f"{gpu} {ms} ms" for gpu, ms in row["floor_ms"].items())
                print(f"{name:22} {precision:19} {row['size']:>10}  peak {row['bytes_per_pixel']:5} B/px "
                      f"({row['peak_mib']:8.1f} MiB, at {row['peak_at']})  traffic {row['traffic_gb']:6.2f} GB "
                      f"(bandwidth floor: {floor})")
                for op in row["by_operator"][:args.top]:
                    print(f"    {op['op']:32} {op['calls']:4}x {op['gb']:8.3f} GB")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
