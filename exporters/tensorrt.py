"""ONNX -> TensorRT engine, and the engine file's small metadata header.

An engine file written here is `MAGIC` (8 bytes), the length of a JSON header (4 bytes, little
endian), the JSON (UTF-8), then the serialized engine. The JSON carries the recipe (hence the
preprocessing) and how the engine was built, so `TensorRTBackend` needs no `--recipe`.

TensorRT versions (detected by the major of `trt.__version__` and by attribute presence):

- TensorRT 10, FP32 ONNX: a plain network; with `half`, `BuilderFlag.FP16` plus
  `OBEY_PRECISION_CONSTRAINTS`, and every normalisation, softmax and reduce layer (GroupNorm, which
  the ONNX graph carries as InstanceNormalization, A2U's kernel softmax, global pooling) pinned to
  FP32. (BatchNorm in eval mode is folded into the convolutions at export.)
- TensorRT 10, FP16 ONNX (`to_onnx(half=True)`, what `matte export --format trt --half` builds
  from): strongly typed, like 11.
- TensorRT 11: strongly typed only (the weak-typing flags and per-layer precisions are gone); the
  precision is the ONNX graph's own, so `half` needs the FP16 graph from `to_onnx(half=True)`,
  which keeps normalisation and softmax in FP32 itself. `needs_fp16_graph()` tells the exporter.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

from mattecli.errors import UsageError
from mattecli.imageio import atomic_write

MAGIC = b"MATTETRT"
FORMAT = "matte-engine/1"
INPUT, OUTPUT = "input", "alpha"
NOT_INSTALLED = "TensorRT is not installed (pip install tensorrt on a machine with an NVIDIA GPU)"
NO_CUDA = "TensorRT needs an NVIDIA GPU with CUDA, and this machine has none (torch.cuda.is_available() is False)"
_HEADER_LEN = struct.Struct("<I")


def write_engine_file(path: str | Path, engine: bytes, meta: dict) -> Path:
    """Write `MAGIC + len + JSON meta + engine` atomically."""
    header = json.dumps(meta, sort_keys=True).encode()
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(MAGIC + _HEADER_LEN.pack(len(header))
                                                                + header + bytes(engine)))


def read_engine_file(path: str | Path) -> tuple[dict, bytes]:
    """-> (metadata, serialized engine) of a file written by `to_engine`.

    Raises:
        UsageError: naming the file, when it is missing, has no matte header or a truncated one.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UsageError(f"{path}: cannot read the engine ({err.strerror})") from None
    if not data.startswith(MAGIC):
        raise UsageError(f"{path}: not a matte engine (no {MAGIC.decode()} header; build it with "
                         "`matte export --format trt`)")
    start = len(MAGIC) + _HEADER_LEN.size
    if len(data) < start:
        raise UsageError(f"{path}: truncated engine header")
    (size,) = _HEADER_LEN.unpack_from(data, len(MAGIC))
    try:
        meta = json.loads(data[start:start + size].decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UsageError(f"{path}: corrupt engine header (not JSON)") from None
    engine = data[start + size:]
    if not engine:
        raise UsageError(f"{path}: the header is there but the engine bytes are missing (truncated file)")
    return meta, engine


def import_tensorrt():
    """The `tensorrt` module (10 or newer), or a one-line UsageError saying it is missing or too old."""
    try:
        import tensorrt as trt
    except ImportError:
        raise UsageError(NOT_INSTALLED) from None
    if major_version(trt) < 10:  # named tensors, execute_async_v3 and explicit batch by default
        raise UsageError(f"TensorRT {trt.__version__} is too old: matte needs TensorRT 10 or newer")
    return trt


def major_version(trt) -> int:
    return int(str(trt.__version__).split(".")[0])


def needs_fp16_graph(trt=None) -> bool:
    """True where the installed TensorRT builds only strongly typed networks (11+): FP16 must then
    come from the ONNX graph (`to_onnx(half=True)`) rather than from a builder flag."""
    trt = trt or import_tensorrt()
    return major_version(trt) >= 11 or not hasattr(trt.BuilderFlag, "FP16")


def fp16_graph_for(half: bool) -> bool:
    """Whether an FP16 engine is built from the FP16 ONNX graph: only where TensorRT is strongly typed
    only (11+). TensorRT 10 builds it from the FP32 graph with its FP16 flag, normalisation and softmax
    pinned to FP32, which leaves it free to keep any other layer in FP32 where that is faster.
    Raises the one-line "not installed" error first, before any export work."""
    trt = import_tensorrt()
    return half and needs_fp16_graph(trt)


def onnx_io(onnx_path: Path) -> tuple[int, bool, dict]:
    """-> (input channels, whether the graph holds FP16 tensors, metadata_props) of an ONNX file."""
    import onnx

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as err:  # onnx raises DecodeError, OSError, ... for a bad file
        raise UsageError(f"{onnx_path}: not a readable ONNX model ({err})") from None
    inputs = {i.name: i for i in model.graph.input}
    if INPUT not in inputs:
        raise UsageError(f"{onnx_path}: no input tensor named '{INPUT}' (export it with `matte export`)")
    dims = inputs[INPUT].type.tensor_type.shape.dim
    if len(dims) != 4 or not dims[1].dim_value:
        raise UsageError(f"{onnx_path}: input '{INPUT}' must be (N, C, H, W) with a fixed C")
    fp16 = onnx.TensorProto.FLOAT16
    props = {p.key: p.value for p in model.metadata_props}
    half = (props.get("precision") == "float16" or any(t.data_type == fp16 for t in model.graph.initializer)
            or any(v.type.tensor_type.elem_type == fp16 for v in list(model.graph.input) + list(model.graph.output)))
    return dims[1].dim_value, half, props


def check_profile(min_shape, opt_shape, max_shape) -> None:
    """One-line UsageError unless each shape is a positive HxW and min <= opt <= max on both sides."""
    for name, shape in (("min", min_shape), ("opt", opt_shape), ("max", max_shape)):
        if len(shape) != 2 or any(int(s) <= 0 for s in shape):
            raise UsageError(f"--{name}-shape {shape}: expected HxW with positive sides")
    if not all(a <= b <= c for a, b, c in zip(min_shape, opt_shape, max_shape)):
        raise UsageError(f"shapes must satisfy min <= opt <= max in both H and W, got {min_shape}, "
                         f"{opt_shape}, {max_shape}")


def _parser_error(err) -> str:
    node = err.node_name() if hasattr(err, "node_name") else err.node()  # node_name() from 10.x
    return f"node {node}: {err.desc()}".replace("\n", " ")


def _pin_fp32(trt, network) -> int:
    """Pin normalisation, softmax and reduce layers to FP32 (weakly typed FP16 builds only).

    Returns how many layers were pinned. Layers whose outputs are not float (shape arithmetic)
    are left alone: a precision on them is meaningless and the builder rejects it.
    """
    kinds = {getattr(trt.LayerType, k) for k in ("NORMALIZATION", "SOFTMAX", "REDUCE") if hasattr(trt.LayerType, k)}
    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type not in kinds:
            continue
        outputs = [layer.get_output(j) for j in range(layer.num_outputs)]
        if not all(t.dtype in (trt.float32, trt.float16) for t in outputs):
            continue
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            layer.set_output_type(j, trt.float32)
        pinned += 1
    return pinned


def to_engine(onnx_path, path, *, half: bool = False, min_shape=(320, 320), opt_shape=(1088, 1920),
              max_shape=(2176, 3840), timing_cache=None) -> Path:
    """Build a TensorRT engine from an ONNX graph written by `exporters.onnx.to_onnx`.

    Args:
        onnx_path: the ONNX file (input `input` (N, C, H, W), output `alpha`, recipe in metadata).
        path: where to write the engine file (matte header + serialized engine), atomically.
        half: FP16 kernels (see the module docstring for how each TensorRT version gets them).
        min_shape, opt_shape, max_shape: (H, W) of the optimisation profile; batch is 1. Inputs are
            stride-aligned by the pipeline, so give aligned sizes (e.g. 1088x1920 for 1080p).
        timing_cache: a file to load kernel timings from (if present) and save them back to, so a
            rebuild skips the tactic search; None keeps them in memory only.

    Raises:
        UsageError: TensorRT missing, no CUDA, an unreadable ONNX file, parser errors (all listed),
            FP16 requested from an FP32 graph on TensorRT 11, or a failed build.
    """
    onnx_path, path = Path(onnx_path), Path(path)
    if not onnx_path.is_file():
        raise UsageError(f"{onnx_path}: no such ONNX file")
    check_profile(min_shape, opt_shape, max_shape)
    trt = import_tensorrt()
    import torch

    if not torch.cuda.is_available():
        raise UsageError(NO_CUDA)
    channels, graph_half, props = onnx_io(onnx_path)
    if "recipe" not in props:
        raise UsageError(f"{onnx_path}: no recipe in the ONNX metadata (export it with `matte export`)")
    strongly_typed = needs_fp16_graph(trt) or graph_half
    if half and strongly_typed and not graph_half:
        raise UsageError(f"{onnx_path}: TensorRT {trt.__version__} builds only strongly typed networks, so FP16 "
                         "must come from the graph: export it with --half first")

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        # 10.x: opt in; 11.x: accepted and ignored (always strongly typed)
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)  # explicit batch is the only mode since 10.0
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # from the file: external weights resolve
        errors = "; ".join(_parser_error(parser.get_error(i)) for i in range(parser.num_errors))
        raise UsageError(f"{onnx_path}: TensorRT's ONNX parser failed: {errors or 'no detail given'}")

    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT, (1, channels, *min_shape), (1, channels, *opt_shape), (1, channels, *max_shape))
    config.add_optimization_profile(profile)
    pinned = 0
    if half and not strongly_typed:  # TensorRT 10 weak typing: FP16 allowed, selected layers kept FP32
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        pinned = _pin_fp32(trt, network)

    cache_path = Path(timing_cache) if timing_cache else None
    cache_bytes = cache_path.read_bytes() if cache_path and cache_path.is_file() else b""
    try:
        cache = config.create_timing_cache(cache_bytes) if cache_bytes else None
    except (RuntimeError, TypeError, ValueError):
        cache = None
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        if cache_bytes:  # written by another TensorRT version or GPU, or damaged: replaced after the build
            print(f"note: {cache_path}: timing cache not usable here; starting a new one", file=sys.stderr)
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise UsageError(f"{onnx_path}: TensorRT could not build an engine (see its log above)")
    if cache_path:
        timings = bytes(memoryview(config.get_timing_cache().serialize()))
        atomic_write(cache_path, lambda tmp: Path(tmp).write_bytes(timings))
    meta = {
        "format": FORMAT,
        "recipe": json.loads(props["recipe"]),
        "onnx_metadata": {k: v for k, v in props.items() if k != "recipe"},  # preprocessing, precision
        "tensorrt": str(trt.__version__),
        "half": bool(half or graph_half),  # an FP16 graph builds an FP16 engine either way
        "strongly_typed": bool(strongly_typed),
        "fp32_pinned_layers": pinned,
        "channels": channels,
        "profile": {"min": list(min_shape), "opt": list(opt_shape), "max": list(max_shape)},
        "input": INPUT,
        "output": OUTPUT,
    }
    return write_engine_file(path, bytes(memoryview(plan)), meta)
