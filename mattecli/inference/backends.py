"""Backends behind one small protocol (`Backend`): a `recipe` attribute, and `__call__(x) -> raw alpha`.

`x` is the aligned, normalised float32 (N, C, H, W) array the pipeline prepared; the result is the
network's raw (N, 1, H, W) float32 output. The backend follows from the file's suffix unless named.
Each backend imports its runtime inside `load`, so a missing runtime fails only when asked for.
"""

from __future__ import annotations

import functools
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from mattecli.errors import UsageError

if TYPE_CHECKING:
    from mattecli.recipes import Recipe

SUFFIX_TO_BACKEND = {".safetensors": "torch", ".onnx": "onnx", ".engine": "trt", ".plan": "trt"}
# The backends a model file can feed when what it lacks is exported from it (`matte bench`):
# weights give all three, an ONNX graph gives an engine, an engine only itself.
BACKENDS_FROM_SUFFIX = {".safetensors": ("torch", "onnx", "trt"), ".onnx": ("onnx", "trt"), ".engine": ("trt",),
                        ".plan": ("trt",)}


class Backend(Protocol):
    """What the pipeline needs of a backend."""

    recipe: Recipe
    half: bool  # runs in FP16: torch as asked (--half), an exported model as it was exported

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Aligned, normalised float32 (N, C, H, W) -> the network's raw (N, 1, H, W) float32 alpha."""
        ...


# --half: float16 (autocast keeps norms, softmax and reductions in float32; IndexNet asks for its
# index softmax in float16). Measured against bfloat16 on an H200 (benchmarks/device_check.sh;
# docs/benchmarks.md#gpu-figures): float16 was faster for all three released recipes (IndexNet 4K
# 89.5 against 100.7 ms) and closer to float32 (largest alpha difference at 4K 1-2 levels against 5-255).
HALF_DTYPE = "float16"


COMPILED_SHAPES = 8  # input shapes `--compile` compiles on CUDA; later shapes run eagerly


class CompiledPerShape:
    """`fn` under torch.compile with static shapes: the first `limit` input shapes it is called with
    each get a graph of their own (compiled at that first call), later shapes run `fn` eagerly.

    Static graphs let inductor choose layouts and fuse for one size (on an H200, IndexNet float16 at
    3840x2160: 23.9 ms against 57.4 ms for the dynamic graph and 48 ms eager;
    benchmarks/results/compile-static-h200-2026-11-30.log). A folder of photos from one camera
    compiles once; the bound keeps a folder of many sizes from compiling for every one of them.
    `backend`: torch.compile's (the tests use "eager", which compiles nothing).
    """

    def __init__(self, fn, limit: int = COMPILED_SHAPES, backend: str = "inductor"):
        import torch
        import torch._dynamo

        self.eager, self.limit = fn, limit
        self.compiled = torch.compile(fn, dynamic=False, backend=backend)
        self.shapes: set[tuple[int, ...]] = set()
        self._lock = threading.Lock()
        config = torch._dynamo.config  # one graph per shape: dynamo must keep `limit` of them
        name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
        setattr(config, name, max(getattr(config, name), limit))

    def __call__(self, x):
        shape = tuple(x.shape)
        with self._lock:
            if shape not in self.shapes and len(self.shapes) < self.limit:
                self.shapes.add(shape)
            compiled = shape in self.shapes
        return self.compiled(x) if compiled else self.eager(x)


class TorchBackend:
    """A PyTorch model in eval mode on a device.

    `forward` takes and returns torch tensors on the device (the pipeline's `ops` prepares them
    there); `__call__` takes and returns numpy arrays.

    Args:
        half: run under autocast in `half_dtype` (HALF_DTYPE unless a measurement asks for another),
            on a copy of the model whose convolutions hold their weights in it (`convolutions_in`).
            An output that is not finite is redone in float32 by the model as given, for that input
            (counted in `fallbacks`), so a half-precision overflow never reaches an alpha.
        compile: torch.compile the model. On CUDA with static shapes, one graph per input shape for
            the first COMPILED_SHAPES shapes (`CompiledPerShape`); on a CPU with dynamic height and
            width, one graph for every size. Measured on an H200 at 3840x2160 in float16: static
            graphs took 0.50x (IndexNet), 0.38x (TCP) and 0.71x (A2U) the eager time, the dynamic
            graph 1.20x (IndexNet); compiling IndexNet took 37 s static, 101 s dynamic. On a CPU a
            compilation takes minutes (IndexNet 103 s on 2 cores), so one for all sizes. Padding
            inputs up to size buckets was not taken: it would change the output near the border.
        channels_last: NHWC memory layout (`load` sets it for an eager --half pass on CUDA where the
            recipe's `infer.cuda_half_channels_last` says so; benchmarks/device_check.sh measures it).
        fold_bn: run a copy of `model` with every BatchNorm folded into the convolution before it
            (`models.layers.fold_batchnorm`; the caller's model is left as it is). `load` does this
            on CUDA, where the BatchNorms were 56% of IndexNet's float16 time at 4K
            (docs/benchmarks.md#gpu-figures); on a CPU the reference path keeps the authors' exact
            arithmetic.
    """

    name = "torch"  # as --backend names it

    def __init__(self, model, recipe, device: str = "cpu", half: bool = False, compile: bool = False,
                 channels_last: bool = False, fold_bn: bool = False, half_dtype: str = HALF_DTYPE):
        import copy

        import torch

        from mattecli.inference.pipeline import NUMPY, TorchOps

        self.device = torch.device(device)
        self.folded = 0
        if fold_bn:
            model = copy.deepcopy(model).eval()
            from mattecli.models.layers import fold_batchnorm

            self.folded = fold_batchnorm(model)
        self.model = to_device(model, self.device).eval()
        self.recipe = recipe
        self.half, self.channels_last = half, channels_last
        self.half_dtype = getattr(torch, half_dtype)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # one algorithm search per input shape, then the fastest
        run = self.model
        if half:  # a copy whose convolutions hold their weights in half precision: autocast's casts, once
            from mattecli.models.layers import convolutions_in

            run = copy.deepcopy(self.model)
            convolutions_in(run, self.half_dtype)
        if compile:
            run = CompiledPerShape(run) if self.device.type == "cuda" else torch.compile(run, dynamic=True)
        self.run = run
        # On CUDA the pipeline runs on the device; on a CPU numpy with OpenCV is the faster of the
        # two (measured at 4K, code ebadc0c: prepare 0.65 s against 1.7 s for torch on the same 2
        # cores; numpy's has since dropped to about 55 ms, docs/gpu.md) and shares the tensors'
        # memory, so the CPU keeps the reference path.
        self.ops = TorchOps(self.device) if self.device.type == "cuda" else NUMPY
        self._redone = threading.local()

    @property
    def fallbacks(self) -> int:
        """Passes redone in float32 by the calling thread: per thread, so that a pipeline shared by
        threads (the Python API's callers) names the image that was redone, not a neighbour's."""
        return getattr(self._redone, "count", 0)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", half: bool = False, compile: bool = False) -> "TorchBackend":
        from mattecli.weights import load_model

        exported = SUFFIX_TO_BACKEND.get(Path(path).suffix.lower(), "torch")
        if exported != "torch":  # safetensors would only say "header too large"
            raise UsageError(f"{path}: the torch backend runs a .safetensors weights file, and this is "
                             f"{'an ONNX graph' if exported == 'onnx' else 'a TensorRT engine'}: use --backend "
                             f"{exported} (or leave --backend out)")
        model, recipe = load_model(path)
        cuda = str(device).startswith("cuda")
        # channels_last where the recipe measured it faster, for the eager passes it was measured on
        nhwc = cuda and half and not compile and recipe.infer.cuda_half_channels_last
        return cls(model, recipe, device, half=half, compile=compile, fold_bn=cuda, channels_last=nhwc)

    def forward(self, x):
        """(N, C, H, W) float32 tensor on the device -> raw (N, 1, H, W) float32 tensor there."""
        import torch

        with torch.inference_mode():
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if not self.half:
                return self.run(x).float()
            with torch.autocast(self.device.type, dtype=self.half_dtype):
                out = self.run(x).float()
            if not bool(torch.isfinite(out).all()):
                self._redone.count = self.fallbacks + 1
                out = self.model(x).float()
            return out

    def __call__(self, x: np.ndarray) -> np.ndarray:
        import torch

        return self.forward(torch.from_numpy(x).to(self.device)).cpu().numpy()


def to_device(model, device):
    """`model.to(device)`, with a GPU that cannot take it (its memory held by another process, say)
    said in one line: torch raised its OutOfMemoryError or CUDA error as a traceback.

    Raises:
        UsageError: naming the device and torch's reason.
    """
    import torch

    try:
        return model.to(device)
    except RuntimeError as err:  # OutOfMemoryError is one, as are CUDA's own errors
        if torch.device(device).type != "cuda":
            raise
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        # no option named: the Python API's `device=` comes here too
        raise UsageError(f"the model could not be moved to {device}: the GPU's memory is held elsewhere or the GPU "
                         f"refused it ({reason})") from None


class TensorRTBackend:
    """A TensorRT engine file (`mattecli.inference.engine`'s format: matte header + engine).

    Buffers are torch CUDA tensors addressed by tensor name, so no pycuda is needed. Copies and
    `execute_async_v3` run on the backend's own CUDA stream (NVIDIA: the legacy default stream costs
    extra device synchronisations), synchronised before the result is read. Where TensorRT allows
    it (10.1+), the engine's scratch memory is a torch tensor too, sized by
    `update_device_memory_size_for_shapes` for the largest input so far (below the profile's
    maximum only for engines built with runtime activation resizing, TensorRT 10.10+), so torch's
    allocator and `torch.cuda.max_memory_allocated` see everything a call uses except the engine's
    weights. On 10.0 TensorRT allocates the scratch memory itself.
    """

    name = "trt"  # as --backend names it

    def __init__(self, engine_bytes: bytes, meta: dict, device: str = "cuda", source: str = "engine"):
        import torch

        from mattecli.inference.engine import import_tensorrt
        from mattecli.recipes import stored_recipe

        trt = import_tensorrt()
        self.trt, self.meta, self.source = trt, meta, source
        if "recipe" not in meta:
            raise UsageError(f"{source}: carries no recipe (not exported by matte)")
        self.recipe = stored_recipe(meta["recipe"], source, meta.get("format"))  # checked as other formats' are
        self.half = bool(meta.get("half"))  # the engine's precision, built in
        self.device = torch.device(device)
        with torch.cuda.device(self.device):
            self.stream = torch.cuda.Stream(self.device)
            self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            self.engine = self.runtime.deserialize_cuda_engine(engine_bytes)
            if self.engine is None:
                raise UsageError(f"{source}: TensorRT {trt.__version__} cannot load this engine (built with "
                                 f"TensorRT {meta.get('tensorrt', '?')}; engines are tied to the TensorRT "
                                 "version and GPU that built them: rebuild with `matte export --format trt`)")
            strategy = getattr(trt, "ExecutionContextAllocationStrategy", None)
            self.user_memory = strategy is not None and all(  # 10.1+; otherwise TensorRT allocates it
                hasattr(trt.IExecutionContext, m) for m in ("update_device_memory_size_for_shapes", "set_device_memory"))
            self.context = (self.engine.create_execution_context(strategy.USER_MANAGED) if self.user_memory
                            else self.engine.create_execution_context())
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise UsageError(f"{source}: expected one input and one output tensor, found {inputs} and {outputs}")
        self.input, self.output = inputs[0], outputs[0]
        self.dtypes = {n: self._torch_dtype(self.engine.get_tensor_dtype(n)) for n in (self.input, self.output)}
        self.scratch = None

    def _torch_dtype(self, dtype):
        import torch

        table = {self.trt.float32: torch.float32, self.trt.float16: torch.float16}
        if dtype not in table:
            raise UsageError(f"{self.source}: unsupported engine tensor type {dtype}")
        return table[dtype]

    @classmethod
    def load(cls, path: str | Path, device: str = "cuda") -> "TensorRTBackend":
        from mattecli.inference.engine import NO_CUDA, import_tensorrt, read_engine_file

        path = Path(path)
        if SUFFIX_TO_BACKEND.get(path.suffix.lower()) in ("torch", "onnx"):  # it said "TensorRT is not installed"
            raise UsageError(f"{path}: the trt backend runs a TensorRT engine; build one with `matte export "
                             f"--weights {path} --format trt --out MODEL.engine`")
        import_tensorrt()  # "not installed" before anything else
        if not device.startswith("cuda"):
            raise UsageError(f"{path}: a TensorRT engine runs on a GPU: use --device cuda (got --device {device})")
        import torch

        if not torch.cuda.is_available():
            raise UsageError(NO_CUDA)
        meta, engine = read_engine_file(path)
        return cls(engine, meta, device, source=str(path))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            inp = torch.from_numpy(np.ascontiguousarray(x)).to(self.device, self.dtypes[self.input])
            if not self.context.set_input_shape(self.input, tuple(inp.shape)):
                prof = self.meta.get("profile", {})
                raise ValueError(f"input {tuple(inp.shape)} is outside the engine's profile (H, W from "
                                 f"{prof.get('min')} to {prof.get('max')}); rebuild with other --min/--max-shape")
            out = torch.empty(tuple(self.context.get_tensor_shape(self.output)), dtype=self.dtypes[self.output],
                              device=self.device)
            self.context.set_tensor_address(self.input, inp.data_ptr())
            self.context.set_tensor_address(self.output, out.data_ptr())
            if self.user_memory:
                self._bind_scratch(tuple(inp.shape))
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError(f"{self.source}: TensorRT execution failed (see its log above)")
            self.stream.synchronize()
            return out.float().cpu().numpy()

    def _bind_scratch(self, shape: tuple) -> None:
        """Give the context scratch memory for the current input shape, grown when it needs more."""
        import torch

        size = self.context.update_device_memory_size_for_shapes()
        if size == 0:  # TensorRT's way of saying it failed
            raise RuntimeError(f"{self.source}: TensorRT could not size its scratch memory for input {shape}")
        if self.scratch is None or self.scratch.numel() < size:
            self.scratch = torch.empty(size, dtype=torch.uint8, device=self.device)
        self.context.set_device_memory(self.scratch.data_ptr(), self.scratch.numel())


class OnnxBackend:
    """An exported `.onnx` graph in ONNX Runtime; the recipe comes from the graph's metadata."""

    name = "onnx"  # as --backend names it

    def __init__(self, session, recipe, path: str | Path = "model.onnx", device: str = "cpu"):
        import onnxruntime as ort

        self.session = session
        self.recipe = recipe
        self.half = graph_is_half(session.get_modelmeta().custom_metadata_map)  # the graph's precision, built in
        self.path = Path(path)
        # The CPU arena is kept between calls. Shrinking it after every call handed its blocks to a
        # C heap that `load_pipeline` tunes to keep freed blocks (`reuse_freed_buffers`), and the
        # heap fragmented: the peak grew call after call (IndexNet's graph, tiles of about 1024x1024
        # of four shapes: 871 -> 2,324 bytes/pixel in 8 calls; A2U's at 1920x1088: 2.9 -> 4.8 GB in 3),
        # where the kept arena levels off at its first calls' size (872 flat; 2.9 -> 3.3 GB, same
        # speed; docs/benchmarks.md). On CUDA the GPU arena is still given back after every call:
        # the foreground estimation (PyTorch) shares the device.
        self.run_options = ort.RunOptions()
        if device.startswith("cuda"):
            gpu = device.split(":", 1)[1] if ":" in device else "0"
            self.run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", f"gpu:{gpu}")
        shape = session.get_inputs()[0].shape  # ints where fixed, names where dynamic
        self.fixed_size = tuple(shape[2:]) if all(isinstance(d, int) for d in shape[2:]) else None

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> "OnnxBackend":
        import onnxruntime as ort

        path = Path(path)
        if path.suffix.lower() == ".safetensors":
            raise UsageError(f"{path}: the onnx backend runs an exported model; make one with "
                             f"`matte export --weights {path} --format onnx --out MODEL.onnx`")
        providers = _onnx_providers(ort, device)  # outside the try: no onnxruntime-gpu is not a bad file
        try:
            options = ort.SessionOptions()
            # ONNX Runtime keeps a memory pattern per input shape, for good: a folder or a service of
            # mixed sizes grew by 0.6 MB per new shape (A2U demo, 121 sizes: +70 MB, +14 MB without;
            # no slower on a CPU). A dynamic graph is run at every size, so no pattern is kept.
            options.enable_mem_pattern = False
            session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as err:  # onnxruntime raises its own exception types, one per failure kind
            raise _not_loadable(path, err) from None
        return cls(session, onnx_recipe(session.get_modelmeta().custom_metadata_map, path), path, device)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.fixed_size is not None and tuple(x.shape[2:]) != self.fixed_size:
            h, w = self.fixed_size
            raise ValueError(f"{self.path.name} was exported for {w}x{h} input only, got "
                             f"{x.shape[3]}x{x.shape[2]} (WIDTHxHEIGHT; export it without --static)")
        inp, out = self.session.get_inputs()[0].name, self.session.get_outputs()[0].name
        return self.session.run([out], {inp: np.ascontiguousarray(x, dtype=np.float32)}, self.run_options)[0]


def _identity(path: Path) -> tuple[int, int]:
    """(modification time, size) of a file, so that a file replaced in between is parsed again; a
    missing file gives (0, 0), and parsing it then names the reason."""
    try:
        info = Path(path).stat()
    except OSError:
        return 0, 0
    return info.st_mtime_ns, info.st_size


@functools.lru_cache(maxsize=1)
def _parsed_onnx(path: str, mtime_ns: int, size: int):
    """An ONNX file parsed once for `read_onnx`'s callers (`matte bench` of a graph asks for its recipe,
    precision and static size: a graph of tens of MB is read and decoded once); keyed by `_identity`."""
    import onnx

    return onnx.load(path, load_external_data=False)


def check_onnx_file(path: Path) -> None:
    """What `OnnxBackend.load` would refuse about the file itself (not a graph, no recipe), read
    with `onnx` alone: an ONNX Runtime session made only for the check slowed the process's later
    sessions and host work (`matte bench --e2e` on a null graph: 1.9x the decode time, not 1.5x)."""
    onnx_recipe(onnx_metadata(path), path)


def read_onnx(path: Path):
    """The graph of an ONNX file (its protobuf, without external weights), parsed once while the
    file is unchanged; a file that is not one is a UsageError naming it and the reason."""
    try:
        return _parsed_onnx(str(path), *_identity(path))
    except Exception as err:  # protobuf's DecodeError, OSError and onnx's own types
        raise _not_loadable(path, err) from None


def onnx_metadata(path: Path) -> dict:
    """An ONNX file's metadata_props as a dict (`matte export` writes the recipe there)."""
    return {p.key: p.value for p in read_onnx(path).metadata_props}


def graph_is_half(meta: dict) -> bool:
    """Whether a graph's metadata (`matte export`'s "precision") says it runs in FP16."""
    return meta.get("precision") == "float16"


def exported_half(path: Path) -> bool:
    """Whether an exported model runs in FP16, from its metadata: an `.onnx` graph's precision, an
    engine's header; False for any other file (a weights file runs as asked)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".onnx":
        return graph_is_half(onnx_metadata(path))
    if SUFFIX_TO_BACKEND.get(suffix) == "trt":
        from mattecli.inference.engine import read_engine_file

        return bool(read_engine_file(path, header_only=True)[0].get("half"))
    return False


def static_onnx_size(path: Path):
    """The one input size (`Size`) of a graph exported with `--static`, or None: a dynamic graph,
    another kind of file, or one `onnx` cannot read (the backend's loading says why)."""
    from mattecli.sizes import Size

    try:
        dims = read_onnx(path).graph.input[0].type.tensor_type.shape.dim
    except Exception:  # noqa: BLE001 - not a graph: no size to offer
        return None
    h, w = (d.dim_value for d in dims[2:4]) if len(dims) == 4 else (0, 0)
    return Size(w, h) if h > 0 and w > 0 else None


def _not_loadable(path: Path, err: Exception) -> UsageError:
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return UsageError(f"{path}: not a loadable ONNX model ({reason})")


def onnx_recipe(meta: dict, path: Path):
    """The recipe `matte export` stores in a graph's metadata (key "recipe", JSON)."""
    from mattecli.recipes import stored_recipe

    if "recipe" not in meta:
        raise UsageError(f"{path}: no recipe in the ONNX metadata (export it with `matte export`)")
    return stored_recipe(meta["recipe"], path, meta.get("format"))


def _onnx_providers(ort, device: str) -> list:
    """CUDA (then CPU for the operators CUDA lacks) on a cuda device, else CPU."""
    if not device.startswith("cuda"):
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise UsageError(f"--device {device} with the onnx backend needs onnxruntime-gpu "
                         "(pip install -e '.[gpu]'); this onnxruntime has only "
                         f"{', '.join(ort.get_available_providers())}")
    index = int(device.split(":", 1)[1]) if ":" in device else 0
    return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]


BACKENDS = {backend.name: backend for backend in (TorchBackend, OnnxBackend, TensorRTBackend)}
BACKEND_NAMES = tuple(BACKENDS)


def implied_backend(weights: str | Path, backend: str | None = None) -> str | None:
    """The backend that will run a model file: `backend` as given, else the one its suffix implies
    (None for a suffix that implies none: refused when the model is loaded)."""
    return backend or SUFFIX_TO_BACKEND.get(Path(weights).suffix.lower())


def load_backend(path: str | Path, name: str | None = None, device: str = "cpu", half: bool = False,
                 compile: bool = False) -> Backend:
    """Open a model file with the named backend, or the one its suffix implies.

    `half` and `compile` are the torch backend's (an exported model carries its precision: export
    an FP16 graph or engine with `matte export --half`)."""
    path = Path(path)
    if not path.is_file():
        from mattecli.weights import no_weights_file

        raise no_weights_file(path)
    name = implied_backend(path, name)
    if name is None:
        from mattecli.weights import unknown_model_file

        raise unknown_model_file(path)
    if name not in BACKENDS:
        raise UsageError(f"--backend {name}: unknown backend (choose {', '.join(BACKENDS)})")
    from mattecli.devices import resolve_device

    device = resolve_device(device, backend=name)
    if half and name != "torch":
        try:
            already = exported_half(path)
        except UsageError:  # not a readable graph: said when it is opened, the flag first
            already = False
        raise UsageError("--half is for the torch backend (a .safetensors file); " + (
            f"{path.name} runs in FP16 already: leave out --half" if already else
            "an exported model has its precision built in: export it with `matte export --half`"))
    if compile and name != "torch":
        raise UsageError("--compile is for the torch backend (a .safetensors file): torch.compile compiles a PyTorch "
                         "model; an exported model is optimised by its own runtime (ONNX Runtime, TensorRT)")
    if name == "torch":
        return BACKENDS[name].load(path, device=device, half=half, compile=compile)
    return BACKENDS[name].load(path, device=device)
