"""torch -> ONNX: opset >= 17, dynamic batch/height/width, operators TensorRT's parser takes, and the
recipe with its preprocessing in the graph's metadata (so the file alone is enough to run it).

The exporter is torch's TorchScript-based one (`dynamo=False`): the dynamo exporter needs
`onnxscript`, which matte does not depend on, and would have to prove the networks' stride checks
for symbolic sizes; the tracing exporter gives dynamic H/W here because every size-dependent value
in the export forms (`exporters/decompose.py`) is computed from `x.shape` in torch operations,
which tracing records as Shape/Gather arithmetic. Tests run each graph at sizes other than the
traced one.
"""

from __future__ import annotations

import io
import json
import warnings
from collections import Counter
from pathlib import Path

from mattecli.imageio import atomic_write

MIN_OPSET = 17
FORMAT = "matte-onnx/1"
INPUT, OUTPUT = "input", "alpha"

# What TensorRT's ONNX parser (TensorRT 10/11, operators.md of onnx-tensorrt) supports, and the
# graphs of every recipe need. Deliberately absent: MaxUnpool, Im2Col/Col2Im (no TensorRT layer),
# ArgMax/ArgMin and OneHot (IndexNet's max index is decomposed; TensorRT does not promise the
# first-occurrence tie rule), control flow (If, Loop, Scan), scatters and NonZero (data-dependent
# shapes). MaxPool is allowed with its single output only (checked below).
ALLOWED_OPS = frozenset({
    # arithmetic and activations
    "Add", "Sub", "Mul", "Div", "Neg", "Abs", "Sqrt", "Pow", "Exp", "Log", "Erf", "Max", "Min",
    "Clip", "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Softmax", "MatMul", "Gemm",
    # convolution, normalisation, pooling, resampling
    "Conv", "ConvTranspose", "BatchNormalization", "InstanceNormalization", "GroupNormalization",
    "LayerNormalization", "AveragePool", "MaxPool", "GlobalAveragePool", "GlobalMaxPool", "Resize",
    "DepthToSpace", "SpaceToDepth", "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin",
    # layout and shape arithmetic (dynamic H/W)
    "Pad", "Slice", "Split", "Concat", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten",
    "Expand", "Tile", "Gather", "Shape", "Constant", "ConstantOfShape", "Cast", "Identity", "Range",
    "Floor", "Ceil",
    # comparisons and selection (adaptive-pooling bins, max index)
    "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "And", "Or", "Not", "Where",
})


class UnsupportedOperatorError(ValueError):
    """An exported graph holds operators outside `ALLOWED_OPS` (or an opset below 17)."""


def check_operators(onnx_model_or_path) -> None:
    """Check a graph against `ALLOWED_OPS`: only listed operators of the default domain, MaxPool
    without its indices output, opset >= 17.

    Args:
        onnx_model_or_path: an `onnx.ModelProto` or the path of an .onnx file.

    Raises:
        UnsupportedOperatorError: naming every offending operator type and how often it occurs.
    """
    import onnx

    model = onnx_model_or_path
    source = "ONNX graph"
    if not isinstance(model, onnx.ModelProto):
        source = str(model)
        model = onnx.load(source, load_external_data=False)
    bad: Counter = Counter()
    for node in _all_nodes(model.graph):
        if node.domain not in ("", "ai.onnx") or node.op_type not in ALLOWED_OPS:
            bad[f"{node.domain + '.' if node.domain else ''}{node.op_type}"] += 1
        elif node.op_type == "MaxPool" and len(node.output) > 1 and node.output[1]:
            bad["MaxPool with indices output"] += 1
    problems = [f"{op} x{count}" for op, count in sorted(bad.items())]
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        problems.append(f"opset {opset} < {MIN_OPSET}")
    if problems:
        raise UnsupportedOperatorError(f"{source}: not accepted for TensorRT: {', '.join(problems)}")


def _all_nodes(graph):
    """Every node, including those of subgraphs (If/Loop bodies), so none hides from the check."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _all_nodes(sub)


def to_onnx(model, path, *, opset: int = MIN_OPSET, dynamic: bool = True, recipe=None, half: bool = False,
            size: tuple[int, int] = (1088, 1920)) -> Path:
    """Export a matting network to ONNX, atomically.

    The network is exported in its export form (`exporters.decompose.decompose`; the caller's model
    is untouched), checked against the operator allow-list, and written with metadata: `recipe`
    (the resolved recipe JSON that `mattecli.recipes.recipe_from_dict` rebuilds), `preprocessing`
    (mean, std, stride, align, trimap encoding) and `format`.

    Args:
        model: an IndexNet/A2U/... network (any mode; exported in eval mode).
        path: the .onnx file to write.
        opset: ONNX opset, at least 17.
        dynamic: batch, height and width dynamic (else fixed at `size` with batch 1).
        recipe: the model's Recipe; without it the file carries no recipe and matte's backends
            refuse it.
        half: an FP16 graph (not built yet: raises NotImplementedError).
        size: (height, width) of a static graph, a multiple of the stride.

    Returns:
        `path`.

    Raises:
        ValueError: opset below 17 or a static size off the stride.
        UnsupportedOperatorError: the graph needs an operator outside the allow-list.
    """
    import onnx
    import torch

    from exporters.decompose import decompose

    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset}: at least {MIN_OPSET} is needed")
    if half:
        raise NotImplementedError("FP16 ONNX export is not built yet")
    net = decompose(model)
    stride = getattr(net, "stride", recipe.infer.stride if recipe is not None else 32)
    if dynamic:
        trace_size = (3 * stride, 5 * stride)  # small, non-square, odd multiples: nothing to coincide
    else:
        if size[0] % stride or size[1] % stride:
            raise ValueError(f"static size {size[0]}x{size[1]} is not a multiple of the stride {stride}")
        trace_size = tuple(size)
    example = torch.zeros(1, _input_channels(net, recipe), *trace_size)
    axes = {0: "batch", 2: "height", 3: "width"}
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # the tracer warns about Python-level size checks (constant for the trace) and that this
        # exporter is the legacy one; neither changes the graph
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (example,), buffer, input_names=[INPUT], output_names=[OUTPUT],
                          dynamic_axes={INPUT: axes, OUTPUT: axes} if dynamic else None,
                          opset_version=opset, do_constant_folding=True, dynamo=False)
    graph = onnx.load_from_string(buffer.getvalue())
    check_operators(graph)
    _set_metadata(graph, recipe, stride)
    onnx.checker.check_model(graph)
    return atomic_write(path, lambda tmp: onnx.save(graph, str(tmp)))


def _input_channels(net, recipe) -> int:
    if recipe is not None:  # RGB + the trimap's encoding
        return 3 + (3 if recipe.infer.trimap == "onehot" else 1)
    import torch.nn as nn

    return next(m for m in net.modules() if isinstance(m, nn.Conv2d)).in_channels


def _set_metadata(graph, recipe, stride: int) -> None:
    meta = {"format": FORMAT}
    if recipe is not None:
        cfg = recipe.infer
        meta["recipe"] = recipe.to_json()
        meta["preprocessing"] = json.dumps({
            "input": "N,C,H,W float32: (RGB/255 - mean)/std, then the trimap channel(s); H, W multiples of stride",
            "mean": list(cfg.mean), "std": list(cfg.std), "stride": cfg.stride, "align": cfg.align,
            "trimap": cfg.trimap, "output": "raw alpha N,1,H,W: clip to [0, 1]"})
    else:
        meta["preprocessing"] = json.dumps({"stride": stride})
    del graph.metadata_props[:]
    for key, value in meta.items():
        graph.metadata_props.add(key=key, value=value)
