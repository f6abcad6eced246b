"""ONNX -> TensorRT engine (the engine file's format lives in `mattecli.inference.engine`).

Which route a build takes, by TensorRT version (`tensorrt.__version__`, and the API present):

- TensorRT 10.0 - 10.11, FP32 ONNX graph: a weakly typed network; with `half`, the builder's
  `BuilderFlag.FP16` plus `OBEY_PRECISION_CONSTRAINTS`, and every normalisation, softmax and
  reduce layer (GroupNorm, which the ONNX graph carries as InstanceNormalization, A2U's kernel
  softmax, global pooling) pinned to FP32; the builder may keep any other layer in FP32 where that
  is faster. (BatchNorm in eval mode is folded into the convolutions at export.)
- TensorRT 10.12+ and 11: strongly typed. 10.12 deprecated the FP16 flag, the precision
  constraints and per-layer precisions ("superseded by strong typing"; the layer calls warn) and 11
  removed them, so the precision is the ONNX graph's own and `half` needs the FP16 graph from
  `to_onnx(half=True)`, which keeps normalisation, softmax and reductions in FP32 itself.
  `needs_fp16_graph()` tells the exporter. An FP16 graph builds strongly typed on any version.

FP32 engines are built with TF32 off (TensorRT enables it by default, and an FP32 engine then
misses `--verify`'s 1e-4 on Ampere and newer) unless `tf32` asks for it. Where TensorRT has
`PreviewFeature.RUNTIME_ACTIVATION_RESIZE_10_10` (10.10+), it is enabled, so the backend's scratch
memory can follow each input's shape instead of the profile's largest.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from mattecli.errors import UsageError
from mattecli.files import atomic_write
from mattecli.inference.engine import FORMAT, NO_CUDA, import_tensorrt, tensorrt_version, write_engine_file

INPUT, OUTPUT = "input", "alpha"  # = exporters.onnx's tensor names
STRONGLY_TYPED_FROM = (10, 12)  # the weak-typing API is deprecated from here (removed in 11)


def needs_fp16_graph(trt=None) -> bool:
    """True where FP16 must come from the ONNX graph (`to_onnx(half=True)`) rather than from a builder
    flag: TensorRT 10.12+ (the flag deprecated) and 11 (removed)."""
    trt = trt or import_tensorrt()
    return tensorrt_version(trt) >= STRONGLY_TYPED_FROM or not hasattr(trt.BuilderFlag, "FP16")


def fp16_graph_for(half: bool) -> bool:
    """Whether an FP16 engine is built from the FP16 ONNX graph (TensorRT 10.12+) rather than from
    the FP32 graph and the FP16 flag (10.0 - 10.11). Raises the one-line "not installed" error
    first, before any export work."""
    trt = import_tensorrt()
    return half and needs_fp16_graph(trt)


def require_cuda() -> None:
    """One-line UsageError where torch sees no CUDA device (TensorRT builds and runs only there)."""
    import torch

    if not torch.cuda.is_available():
        raise UsageError(NO_CUDA)


def onnx_io(onnx_path: Path) -> tuple[int, bool, dict]:
    """-> (input channels, whether the graph holds FP16 tensors, metadata_props) of an ONNX file."""
    import onnx

    from mattecli.inference.backends import read_onnx

    model = read_onnx(onnx_path)
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
    """One-line UsageError unless each shape, (height, width) here, has two positive sides and
    min <= opt <= max on both sides (the command line names them WIDTHxHEIGHT)."""
    for name, shape in (("min", min_shape), ("opt", opt_shape), ("max", max_shape)):
        if len(shape) != 2 or any(int(s) <= 0 for s in shape):
            raise UsageError(f"--{name}-shape {'x'.join(map(str, shape[::-1]))}: expected WIDTHxHEIGHT with "
                             "positive sides")
    if not all(a <= b <= c for a, b, c in zip(min_shape, opt_shape, max_shape)):
        given = ", ".join(f"--{name}-shape {w}x{h}" for name, (h, w) in
                          zip(("min", "opt", "max"), (min_shape, opt_shape, max_shape)))
        raise UsageError(f"{given}: need min <= opt <= max in both width and height")


def _parser_error(err) -> str:
    node = err.node_name() if hasattr(err, "node_name") else err.node()  # node_name() from 10.x
    return f"node {node}: {err.desc()}".replace("\n", " ")


def _pin_fp32(trt, network) -> int:
    """Pin normalisation, softmax and reduce layers to FP32 (weakly typed FP16 builds, 10.0 - 10.11).

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


def _parse(trt, builder, logger, onnx_path: Path, strongly_typed: bool):
    """-> the network TensorRT's ONNX parser makes of the file; every parser error in one line."""
    flags = 0
    if strongly_typed and tensorrt_version(trt) < (11, 0):
        # 10.x: opt in; 11 is always strongly typed and deprecates the flag (ignored there)
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)  # explicit batch is the only mode since 10.0
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # from the file: external weights resolve
        errors = "; ".join(_parser_error(parser.get_error(i)) for i in range(parser.num_errors))
        raise UsageError(f"{onnx_path}: TensorRT's ONNX parser failed: {errors or 'no detail given'}")
    return network, parser  # the parser owns weights the network refers to: keep it alive


def _add_profile(builder, config, channels: int, shapes) -> None:
    """One optimisation profile, batch 1, H x W from shapes[0] to shapes[2], tuned for shapes[1]."""
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT, *((1, channels, *hw) for hw in shapes))
    if config.add_optimization_profile(profile) < 0:  # -1: TensorRT found the profile invalid
        low, opt, high = ("x".join(map(str, hw[::-1])) for hw in shapes)
        raise UsageError(f"TensorRT refused the optimisation profile (WIDTHxHEIGHT min {low}, opt {opt}, max {high}, "
                         f"{channels} channels, batch 1)")


def _precision(trt, config, network, *, weak_fp16: bool, fp32: bool, tf32: bool) -> int:
    """Set the builder's precision flags; -> how many layers were pinned to FP32."""
    if fp32 and not tf32:  # TF32 is on by default; an FP32 engine should compute in FP32
        config.clear_flag(trt.BuilderFlag.TF32)
    if not weak_fp16:
        return 0
    config.set_flag(trt.BuilderFlag.FP16)
    config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    return _pin_fp32(trt, network)


def _activation_resize(trt, config) -> bool:
    """Enable runtime activation resizing where this TensorRT has it (10.10+): without it
    `update_device_memory_size_for_shapes` cannot shrink scratch memory below the profile's maximum."""
    feature = getattr(getattr(trt, "PreviewFeature", None), "RUNTIME_ACTIVATION_RESIZE_10_10", None)
    if feature is None:
        return False
    config.set_preview_feature(feature, True)
    return True


def _use_timing_cache(config, cache_path: Path | None) -> None:
    """Load kernel timings from `cache_path` where usable, else start an empty cache."""
    data = cache_path.read_bytes() if cache_path and cache_path.is_file() else b""
    try:
        cache = config.create_timing_cache(data) if data else None
    except (RuntimeError, TypeError, ValueError):
        cache = None
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        if data:  # written by another TensorRT version or GPU, or damaged: replaced after the build
            print(f"matte: note: {cache_path}: timing cache not usable here; starting a new one", file=sys.stderr)
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)


def _check_source(trt, onnx_path: Path, props: dict, half: bool, graph_half: bool) -> bool:
    """-> whether the network is built strongly typed; a UsageError where the graph cannot give
    what is asked (no recipe; FP16 from an FP32 graph where TensorRT is strongly typed)."""
    if "recipe" not in props:
        raise UsageError(f"{onnx_path}: no recipe in the ONNX metadata (export it with `matte export`)")
    strongly_typed = needs_fp16_graph(trt) or graph_half
    if half and strongly_typed and not graph_half:
        raise UsageError(f"{onnx_path}: TensorRT {trt.__version__} builds FP16 only from an FP16 graph "
                         "(strong typing): export it with --half first")
    return strongly_typed


def to_engine(onnx_path, path, *, half: bool = False, tf32: bool = False, min_shape=(320, 320),
              opt_shape=(1088, 1920), max_shape=(2176, 3840), timing_cache=None) -> Path:
    """Build a TensorRT engine from an ONNX graph written by `exporters.onnx.to_onnx`.

    Args:
        onnx_path: the ONNX file (input `input` (N, C, H, W), output `alpha`, recipe in metadata).
        path: where to write the engine file (matte header + serialized engine), atomically.
        half: FP16 kernels (see the module docstring for how each TensorRT version gets them).
        tf32: let an FP32 engine use TF32 (TensorRT's default; off here so FP32 means FP32).
        min_shape, opt_shape, max_shape: (H, W) of the optimisation profile; batch is 1. Inputs are
            stride-aligned by the pipeline, so give aligned sizes (e.g. 1088x1920 for 1080p).
        timing_cache: a file to load kernel timings from (if present) and save them back to, so a
            rebuild skips the tactic search; None keeps them in memory only.

    Raises:
        UsageError: TensorRT missing, no CUDA, an unreadable ONNX file, parser errors (all listed),
            FP16 requested from an FP32 graph where TensorRT is strongly typed, an invalid profile,
            or a failed build.
    """
    onnx_path, path = Path(onnx_path), Path(path)
    if not onnx_path.is_file():
        raise UsageError(f"{onnx_path}: no such ONNX file")
    shapes = (tuple(min_shape), tuple(opt_shape), tuple(max_shape))
    check_profile(*shapes)
    trt = import_tensorrt()
    require_cuda()
    channels, graph_half, props = onnx_io(onnx_path)
    strongly_typed = _check_source(trt, onnx_path, props, half, graph_half)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, _parser = _parse(trt, builder, logger, onnx_path, strongly_typed)
    config = builder.create_builder_config()
    _add_profile(builder, config, channels, shapes)
    fp16 = bool(half or graph_half)  # an FP16 graph builds an FP16 engine either way
    pinned = _precision(trt, config, network, weak_fp16=half and not strongly_typed, fp32=not fp16, tf32=tf32)
    resizable = _activation_resize(trt, config)
    cache_path = Path(timing_cache) if timing_cache else None
    _use_timing_cache(config, cache_path)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise UsageError(f"{onnx_path}: TensorRT could not build an engine (see its log above)")
    if cache_path:  # saved for the next build, also where the old one was not usable here
        timings = bytes(memoryview(config.get_timing_cache().serialize()))
        atomic_write(cache_path, lambda tmp: Path(tmp).write_bytes(timings))
    meta = {
        "format": FORMAT,
        "recipe": json.loads(props["recipe"]),
        "onnx_metadata": {k: v for k, v in props.items() if k != "recipe"},  # preprocessing, precision
        "tensorrt": str(trt.__version__),
        "half": fp16,
        "tf32": bool(tf32 and not fp16),
        "strongly_typed": bool(strongly_typed),
        "fp32_pinned_layers": pinned,
        "activation_resize": resizable,
        "channels": channels,
        "profile": {"min": list(shapes[0]), "opt": list(shapes[1]), "max": list(shapes[2])},
        "input": INPUT,
        "output": OUTPUT,
    }
    return write_engine_file(path, bytes(memoryview(plan)), meta)


def build_engine(model, recipe, path, *, half: bool = False, tf32: bool = False, shapes=((320, 320), (1088, 1920),
                 (2176, 3840)), dynamic: bool = True, opset: int = 17, timing_cache=None) -> Path:
    """A PyTorch model -> a TensorRT engine file: the one way `matte export` and `matte bench` build.

    Exports the ONNX graph TensorRT's route needs (FP16 on 10.12+ with `half`, else FP32; see the
    module docstring) into a temporary folder beside `path`, then builds with `to_engine`.
    TensorRT and CUDA are checked before any export work.

    Args:
        model, recipe: the network and its Recipe (as `mattecli.weights.load_model` returns them).
        path: the engine file to write.
        half, tf32, timing_cache: as for `to_engine`.
        shapes: (min, opt, max) (H, W) of the profile, multiples of the model's stride.
        dynamic: export the graph with dynamic H/W (needed unless min = opt = max).
        opset: ONNX opset of the intermediate graph.

    Returns:
        `path`.
    """
    from exporters.onnx import to_onnx

    fp16_graph = fp16_graph_for(half)
    require_cuda()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.stem}.") as tmp:
        onnx_path = to_onnx(model, Path(tmp) / "model.onnx", opset=opset, dynamic=dynamic, recipe=recipe,
                            half=fp16_graph, size=shapes[1])
        return to_engine(onnx_path, path, half=half, tf32=tf32, min_shape=shapes[0], opt_shape=shapes[1],
                         max_shape=shapes[2], timing_cache=timing_cache)
