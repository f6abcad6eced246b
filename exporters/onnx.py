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

from mattecli.files import atomic_write

MIN_OPSET = 17
FORMAT = "matte-onnx/1"
INPUT, OUTPUT = "input", "alpha"

# Operators TensorRT's ONNX parser supports (TensorRT 10/11, onnx-tensorrt's operators.md): those
# matte's graphs use, and a few common ones a new family may need (Tanh, Erf, Gemm, LayerNorm...).
# Deliberately absent: MaxUnpool, Im2Col/Col2Im (no TensorRT layer),
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
    is untouched), compacted (`compact`), checked against the operator allow-list, and written with
    metadata: `recipe` (the resolved recipe JSON that `mattecli.recipes.recipe_from_dict` rebuilds),
    `preprocessing` (mean, std, normalise, stride, align, trimap encoding, known, rounding), `precision`
    and `format`.

    Args:
        model: an IndexNet/A2U/... network (any mode; exported in eval mode).
        path: the .onnx file to write.
        opset: ONNX opset, at least 17.
        dynamic: batch, height and width dynamic (else fixed at `size` with batch 1).
        recipe: the model's Recipe; without it the file carries no recipe and matte's backends
            refuse it.
        half: an FP16 graph (`to_half`): float32 input and output, FP16 inside, normalisation,
            softmax and reductions in FP32 (for TensorRT's strongly typed mode).
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
    net = decompose(model)
    stride = getattr(net, "stride", recipe.infer.stride if recipe is not None else 32)
    if dynamic:
        trace_size = (3 * stride, 5 * stride)  # small, non-square, odd multiples: nothing to coincide
    else:
        if size[0] % stride or size[1] % stride:
            raise ValueError(f"static size {size[1]}x{size[0]} (WIDTHxHEIGHT) is not a multiple of the stride {stride}")
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
    graph = compact(onnx.load_from_string(buffer.getvalue()))
    if half:
        graph = to_half(graph)
    check_operators(graph)
    _set_metadata(graph, recipe, stride, half)
    onnx.checker.check_model(graph)
    return atomic_write(path, lambda tmp: onnx.save(graph, str(tmp)))


def compact(model):
    """The same graph with fewer nodes, in an order that keeps ONNX Runtime's memory low; in place.

    - Constant nodes become graph initializers (the tracer writes a Constant for every slice bound
      and axis: most of an A2U graph's nodes); equal integer values share one. TensorRT's parser
      reads initializers as weights, as it reads Constant nodes.
    - Identity nodes are dropped (their readers read the source), unless they make a graph output.
    - Nodes whose inputs are all initializers (shape arithmetic the tracer left, e.g. a Pad's pads)
      are evaluated into initializers.
    - A Slice of a Slice on other axes, both with initializer bounds, becomes one Slice (the
      tracer slices one axis at a time).
    - The nodes are listed in breadth-first topological order (each as early as its inputs allow).
      ONNX Runtime (core/graph/graph_viewer.cc) executes the post-order of a depth-first walk from
      the outputs that enters each node's inputs from the latest-listed producer first. In the
      tracer's order an accumulation `acc + tap * kernel` lists each product after the previous
      sum, so every product of a chain was made before the first sum and all were alive at once
      (A2U at 768x768: 3,516 bytes/pixel against PyTorch's 1,639). Breadth-first, the deeper sum
      is listed later, so it is entered first and each product is consumed as soon as it is made
      (1,596 bytes/pixel; docs/benchmarks.md).

    Args:
        model: an `onnx.ModelProto` without subgraphs (what `to_onnx` exports).

    Returns:
        `model`.
    """
    graph = model.graph
    _constants_to_initializers(graph)
    _drop_identities(graph)
    _fold_constants(graph, model.opset_import)
    _merge_slices(graph)
    _breadth_first(graph)
    return model


def _rename_inputs(graph, renames: dict) -> None:
    for node in graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]


def _constants_to_initializers(graph) -> None:
    """Each Constant node -> an initializer; equal integer values share one."""
    from onnx import TensorProto, numpy_helper

    # only integer values are shared (bounds, axes, shapes): `to_half` decides per float tensor from
    # its readers whether it stays float32, which sharing would entangle
    integer = (TensorProto.INT64, TensorProto.INT32)
    known = {(t.data_type, tuple(t.dims), t.raw_data): t.name for t in graph.initializer
             if t.data_type in integer and t.raw_data}
    renames, kept = {}, []
    for node in graph.node:
        value = next((a for a in node.attribute if a.name == "value"), None) if node.op_type == "Constant" else None
        if value is None or len(node.attribute) != 1:  # value_float etc. never come from the tracer: kept
            kept.append(node)
            continue
        tensor = numpy_helper.from_array(numpy_helper.to_array(value.t), node.output[0])
        key = (tensor.data_type, tuple(tensor.dims), tensor.raw_data)
        if tensor.data_type in integer and key in known:
            renames[node.output[0]] = known[key]
        else:
            known[key] = tensor.name
            graph.initializer.append(tensor)
    del graph.node[:]
    graph.node.extend(kept)
    _rename_inputs(graph, renames)


def _drop_identities(graph) -> None:
    outputs = {v.name for v in graph.output}
    renames = {}
    for node in graph.node:
        if node.op_type == "Identity" and node.output[0] not in outputs:
            renames[node.output[0]] = renames.get(node.input[0], node.input[0])
    kept = [n for n in graph.node if not (n.op_type == "Identity" and n.output[0] in renames)]
    del graph.node[:]
    graph.node.extend(kept)
    _rename_inputs(graph, renames)


def _merge_slices(graph) -> None:
    """Slice(Slice(x)) on distinct axes, bounds from initializers -> one Slice of x.

    The tracer shares a row slice between the taps of one row; each tap gets its own two-axis
    Slice instead, so that no row slice has to be held while a row's taps are made.
    """
    import numpy as np
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in graph.initializer}
    producer = {node.output[0]: node for node in graph.node if node.op_type == "Slice"}
    merged: dict[tuple, str] = {}

    def bounds(node):
        if len(node.input) != 5 or not all(name in inits for name in node.input[1:]):
            return None
        return [numpy_helper.to_array(inits[name]).astype(np.int64) for name in node.input[1:]]

    for node in graph.node:  # topological: an inner Slice is already merged when its reader comes
        inner = producer.get(node.input[0]) if node.op_type == "Slice" else None
        if inner is None:
            continue
        outer_b, inner_b = bounds(node), bounds(inner)
        if outer_b is None or inner_b is None or (outer_b[2] < 0).any() or (inner_b[2] < 0).any() \
                or set(outer_b[2].tolist()) & set(inner_b[2].tolist()):
            continue
        names = []
        for part, a, b in zip(("starts", "ends", "axes", "steps"), inner_b, outer_b):
            value = np.concatenate([a, b])
            key = (part, value.tobytes())
            if key not in merged:  # the taps of a window share their bounds
                tensor = numpy_helper.from_array(value, f"{node.output[0]}__{part}")
                graph.initializer.append(tensor)
                inits[tensor.name] = tensor
                merged[key] = tensor.name
            names.append(merged[key])
        node.CopyFrom(helper.make_node("Slice", [inner.input[0], *names], list(node.output), name=node.name))
    _drop_dead(graph)


def _drop_dead(graph) -> None:
    """Remove nodes whose outputs nothing reads (repeatedly), then unread initializers."""
    while True:
        read = {name for node in graph.node for name in node.input} | {v.name for v in graph.output}
        kept = [node for node in graph.node if any(name in read for name in node.output)]
        if len(kept) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(kept)
    unread = [t for t in graph.initializer if t.name not in read]
    for tensor in unread:
        graph.initializer.remove(tensor)


def _fold_constants(graph, opsets, limit: int = 4096) -> None:
    """Evaluate nodes whose inputs are all initializers (shape arithmetic the tracer left, e.g. a
    Pad's pads) into initializers, where the result has at most `limit` elements."""
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    inits = {t.name: t for t in graph.initializer}
    kept = []
    for node in graph.node:
        inputs = [name for name in node.input if name]
        if not inputs or not all(name in inits for name in inputs) or node.op_type.startswith("Random") \
                or any(a.type in (a.GRAPH, a.GRAPHS) for a in node.attribute):
            kept.append(node)
            continue
        single = helper.make_model(helper.make_graph(
            [node], "fold", [], [helper.make_tensor_value_info(o, 0, None) for o in node.output],
            initializer=[inits[name] for name in dict.fromkeys(inputs)]), opset_imports=list(opsets))
        values = ReferenceEvaluator(single).run(None, {})
        if any(v.size > limit for v in values):
            kept.append(node)
            continue
        for name, value in zip(node.output, values):
            tensor = numpy_helper.from_array(value, name)
            graph.initializer.append(tensor)
            inits[name] = tensor
    del graph.node[:]
    graph.node.extend(kept)


def _breadth_first(graph) -> None:
    """Kahn's algorithm with a first-in first-out queue, ties in the tracer's order."""
    from collections import deque

    producer = {name: i for i, node in enumerate(graph.node) for name in node.output}
    waiting = [len({producer[n] for n in node.input if n in producer}) for node in graph.node]
    readers: dict[int, list[int]] = {}
    for i, node in enumerate(graph.node):
        for j in sorted({producer[n] for n in node.input if n in producer}):
            readers.setdefault(j, []).append(i)
    ready = deque(i for i, count in enumerate(waiting) if count == 0)
    order = []
    while ready:
        i = ready.popleft()
        order.append(i)
        for j in readers.get(i, []):
            waiting[j] -= 1
            if waiting[j] == 0:
                ready.append(j)
    nodes = [graph.node[i] for i in order]
    del graph.node[:]
    graph.node.extend(nodes)


def _input_channels(net, recipe) -> int:
    if recipe is not None:  # RGB + the trimap's encoding
        return recipe.infer.input_channels
    import torch.nn as nn

    return next(m for m in net.modules() if isinstance(m, nn.Conv2d)).in_channels


def _set_metadata(graph, recipe, stride: int, half: bool = False) -> None:
    meta = {"format": FORMAT, "precision": "float16" if half else "float32"}
    if recipe is not None:
        cfg = recipe.infer
        meta["recipe"] = recipe.to_json()
        rgb = "(RGB - 255 mean)/(255 std)" if cfg.normalise == "pixel" else "(RGB/255 - mean)/std"
        tri = "trimap==0, ==128, ==255 as 3 channels" if cfg.trimap == "onehot" else "trimap/255"
        meta["preprocessing"] = json.dumps({
            "input": f"N,C,H,W float32: {rgb}, then {tri}; H, W multiples of stride",
            "mean": list(cfg.mean), "std": list(cfg.std), "stride": cfg.stride, "align": cfg.align,
            "trimap": cfg.trimap, "output": "raw alpha N,1,H,W: clip to [0, 1]",
            "normalise": cfg.normalise, "known": cfg.known, "rounding": cfg.rounding})
    else:
        meta["preprocessing"] = json.dumps({"stride": stride})
    del graph.metadata_props[:]
    for key, value in meta.items():
        graph.metadata_props.add(key=key, value=value)


# Kept in FP32 inside an FP16 graph: normalisation statistics and softmax (A2U's kernels) lose too
# much in half precision, and so do sums over whole images or many channels.
KEEP_FP32 = frozenset({"BatchNormalization", "InstanceNormalization", "GroupNormalization", "LayerNormalization",
                       "Softmax", "ReduceMean", "ReduceSum", "GlobalAveragePool"})


def to_half(model):
    """An FP16 copy of an FP32 graph, explicitly typed for TensorRT's strongly typed mode.

    Every float tensor becomes float16 (initializers, constants, casts), except: the graph's input
    and output stay float32 (a Cast after the one and before the other, so callers and metadata do
    not change); the operators in `KEEP_FP32` run in float32 between Casts, with their parameters;
    Resize's roi and scales stay float32 as the operator requires.

    Args:
        model: an `onnx.ModelProto` with float32 input and output.

    Returns:
        a new `onnx.ModelProto`.
    """
    import onnx

    model = onnx.shape_inference.infer_shapes(model)  # elem types of every intermediate value
    graph = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
    types.update({t.name: t.data_type for t in graph.initializer})
    stays_fp32 = _fp32_parameters(graph)
    _lower_constants(graph, stays_fp32)
    nodes = _with_fp32_islands(graph.node, types, stays_fp32)
    nodes = _with_fp32_edges(graph, nodes)
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]  # stale types; re-inferred below as the check of the conversion
    onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    return model


def _fp32_parameters(graph):
    """-> a predicate: is this tensor read only as a parameter of a `KEEP_FP32` operator (not its
    data input) or as Resize's roi/scales? Those stay float32."""
    consumers: dict[str, list] = {}
    for node in graph.node:
        for index, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node.op_type, index))

    def stays_fp32(name: str) -> bool:
        uses = consumers.get(name, [])
        return bool(uses) and all((op in KEEP_FP32 and i > 0) or (op == "Resize" and i in (1, 2)) for op, i in uses)
    return stays_fp32


def _lower_constants(graph, stays_fp32) -> None:
    """float32 -> float16 in place: initializers, Constant/ConstantOfShape values, Casts to float."""
    import numpy as np
    from onnx import TensorProto, numpy_helper

    def half_tensor(tensor):
        tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float16), tensor.name))

    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT and not stays_fp32(init.name):
            half_tensor(init)
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type in ("Constant", "ConstantOfShape") and attr.name == "value" \
                    and attr.t.data_type == TensorProto.FLOAT and not stays_fp32(node.output[0]):
                half_tensor(attr.t)
            elif node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT \
                    and not stays_fp32(node.output[0]):
                attr.i = TensorProto.FLOAT16


def _with_fp32_islands(nodes, types: dict, stays_fp32) -> list:
    """The node list with each `KEEP_FP32` operator between Casts: float data inputs up to float32,
    float outputs back down to float16 under their original names."""
    from onnx import TensorProto, helper

    f32, out = TensorProto.FLOAT, []
    for node in nodes:
        if node.op_type not in KEEP_FP32:
            out.append(node)
            continue
        for index, name in enumerate(node.input):
            if types.get(name) == f32 and not stays_fp32(name):
                out.append(helper.make_node("Cast", [name], [f"{name}__fp32_{node.name}"], to=f32))
                node.input[index] = f"{name}__fp32_{node.name}"
        out.append(node)
        for index, name in enumerate(node.output):
            if types.get(name) == f32:
                node.output[index] = f"{name}__fp32"
                out.append(helper.make_node("Cast", [node.output[index]], [name], to=TensorProto.FLOAT16))
    return out


def _with_fp32_edges(graph, nodes: list) -> list:
    """float32 at the graph's edges: each input cast down once on entry, each output cast up on exit."""
    from onnx import TensorProto, helper

    for value in graph.input:
        inside = f"{value.name}__fp16"
        for node in nodes:
            node.input[:] = [inside if n == value.name else n for n in node.input]
        nodes.insert(0, helper.make_node("Cast", [value.name], [inside], to=TensorProto.FLOAT16))
    for value in graph.output:
        inside = f"{value.name}__fp16"
        for node in nodes:
            node.output[:] = [inside if n == value.name else n for n in node.output]
            node.input[:] = [inside if n == value.name else n for n in node.input]
        nodes.append(helper.make_node("Cast", [inside], [value.name], to=TensorProto.FLOAT))
    return nodes
