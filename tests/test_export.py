"""exporters/onnx.py, exporters/verify.py, OnnxBackend and `matte export`: the allow-list for every
recipe, ONNX Runtime parity for every family at sizes other than the traced one, metadata, the CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from exporters.onnx import ALLOWED_OPS, UnsupportedOperatorError, check_operators, to_onnx  # noqa: E402
from mattecli.cli import app  # noqa: E402
from exporters.verify import TOLERANCE, Parity, default_sizes, verify  # noqa: E402
from mattecli.sizes import Size  # noqa: E402
from mattecli.errors import UsageError  # noqa: E402
from mattecli.inference.backends import OnnxBackend, TorchBackend, load_backend  # noqa: E402
from mattecli.inference.pipeline import load_pipeline  # noqa: E402
from mattecli.models import FAMILIES, build_model  # noqa: E402
from mattecli.recipes import list_recipe_names, load_recipe  # noqa: E402
from mattecli.weights import save_weights  # noqa: E402

ALL_RECIPES = list_recipe_names()  # recipes/*.yaml: a recipe added later is covered with no edit here


def structural_key(name: str) -> tuple:
    """Recipes with equal keys export to graphs of the same operator types (the slow sweep checks
    this claim): widths, kernel sizes and channel-wise/-shared encodings change only tensor shapes.
    A family without an entry here counts as one structure until it gets one."""
    recipe = load_recipe(name)
    m = recipe.model
    if recipe.family == "indexnet":  # learned index blocks: Conv/Sigmoid/Softmax whatever their layout
        kinds = {"holistic": "learned", "o2o": "learned", "m2o": "learned", "max": "max", "none": "max"}
        return ("indexnet", kinds.get(m.index, m.index))
    if recipe.family == "a2u":
        if m.upsample != "a2u":
            return ("a2u", "baseline")
        return ("a2u", m.kernel, m.paired_down, m.group_norm)
    if recipe.family == "tcp":  # the SP-only baseline has no fusion (no w_c Mul); concat fuses otherwise
        return ("tcp", m.textural, m.ffu if m.textural else None)
    return (recipe.family,)


def _representatives() -> set[str]:
    groups: dict[tuple, list[str]] = {}
    for name in ALL_RECIPES:
        groups.setdefault(structural_key(name), []).append(name)
    # the demo recipe of a structure where there is one (smallest to export), else the first by name
    return {min(names, key=lambda n: (not n.startswith("demo-"), n)) for names in groups.values()}


REPRESENTATIVES = sorted(_representatives())
# Narrower copies export several times faster; width changes tensor shapes, not operator types.
NARROW = {"a2u": ("model.width=0.25",), "tcp": ("model.width=0.125", "model.tcp_width=8")}


def _random_model(name: str, *overrides: str):
    torch.manual_seed(0)
    recipe = load_recipe(name, list(overrides))
    return build_model(recipe).eval(), recipe


def _drawn_batch_norm(model):
    """The model with every BatchNorm's statistics and affine drawn at random (running variance
    0.5-2, scale 0.5-1.5): freshly built ones hold mean 0, variance 1, scale 1, bias 0, which folding
    into the convolutions leaves as they were, so a fault in the folding could not show."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 1.5 + 0.5)
                if m.weight is not None:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model


def _ops(path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


# ----------------------------------------------------------------------------------------------
# The allow-list


def _graph(nodes, opset=17):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    return helper.make_model(helper.make_graph(nodes, "g", [x], [y]), ir_version=8,
                             opset_imports=[helper.make_opsetid("", opset)])


def test_check_operators_names_every_offending_operator():
    from onnx import helper

    model = _graph([helper.make_node("MaxPool", ["x"], ["p", "i"], kernel_shape=[2, 2], strides=[2, 2]),
                    helper.make_node("MaxUnpool", ["p", "i"], ["u"], kernel_shape=[2, 2], strides=[2, 2]),
                    helper.make_node("ArgMax", ["u"], ["a"]), helper.make_node("ArgMax", ["x"], ["b"]),
                    helper.make_node("Relu", ["x"], ["y"])])
    with pytest.raises(UnsupportedOperatorError) as err:
        check_operators(model)
    message = str(err.value)
    assert "ArgMax x2" in message and "MaxUnpool x1" in message and "MaxPool with indices output x1" in message
    assert "Relu" not in message


def test_check_operators_accepts_plain_graphs_and_refuses_old_opsets(tmp_path):
    from onnx import helper

    good = _graph([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2])])
    check_operators(good)
    onnx.save(good, str(tmp_path / "g.onnx"))
    check_operators(tmp_path / "g.onnx")  # a path works too
    with pytest.raises(UnsupportedOperatorError, match="opset 13 < 17"):
        check_operators(_graph([helper.make_node("Relu", ["x"], ["y"])], opset=13))
    assert not {"MaxUnpool", "Im2Col", "Col2Im", "ArgMax", "OneHot"} & ALLOWED_OPS


def test_the_raw_max_index_network_is_refused_and_the_export_form_accepted(tmp_path):
    """Without decompose, IndexNet's max index exports as ArgMax + OneHot: the check must catch it."""
    import io
    import warnings

    model, recipe = _random_model("indexnet-unet-maxunpool", "model.width_mult=0.35")
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 4, 64, 64),), buffer, opset_version=17, dynamo=False)
    with pytest.raises(UnsupportedOperatorError, match="ArgMax"):
        check_operators(onnx.load_from_string(buffer.getvalue()))
    path = to_onnx(model, tmp_path / "m.onnx", recipe=recipe)
    assert not {"ArgMax", "OneHot"} & _ops(path)


# A2U graphs take 10-40 s each to export on a loaded 2-core CPU (the shift form unrolls every
# tap: 150-1,600 nodes after compaction), so the default suite keeps three A2U structures that
# between them run every A2U code path (dynamic kernels + paired downsampling + GroupNorm; static
# U/V/P + strided reduction + max pooling; the baseline's interpolation); the others run with
# -m slow, as does the full sweep.
DEFAULT_A2U = {"demo-a2u", "a2u-static-cs", "a2u-baseline-bilinear"}


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.slow if n.startswith("a2u-") and n not in DEFAULT_A2U else ())
    for n in REPRESENTATIVES])
def test_one_recipe_per_structure_exports_within_the_allow_list(name, tmp_path):
    """The default suite's share of the sweep below: one recipe per structural key, narrowed."""
    model, recipe = _random_model(name, *NARROW.get(load_recipe(name).family, ()))
    path = to_onnx(model, tmp_path / f"{name}.onnx", recipe=recipe)
    check_operators(path)


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL_RECIPES)
def test_every_recipe_exports_within_the_allow_list(name, tmp_path):
    """Dynamic H/W export of each recipe as it is (6 minutes for 30 recipes on a loaded 2-core CPU):
    to_onnx checks the graph itself; checked again here from the file, with the opset."""
    model, recipe = _random_model(name)
    path = to_onnx(model, tmp_path / f"{name}.onnx", recipe=recipe)
    check_operators(path)
    graph = onnx.load(str(path))
    assert graph.opset_import[0].version >= 17


@pytest.mark.slow
def test_recipes_of_one_structure_export_the_same_operators(tmp_path):
    """The claim behind the default suite's choice of one recipe per structural key."""
    by_key: dict[tuple, dict[str, set]] = {}
    for name in ALL_RECIPES:
        model, recipe = _random_model(name)
        ops = _ops(to_onnx(model, tmp_path / f"{name}.onnx", recipe=recipe))
        by_key.setdefault(structural_key(name), {})[name] = ops
    for key, graphs in by_key.items():
        first = next(iter(graphs.values()))
        assert all(ops == first for ops in graphs.values()), (key, {n: sorted(o ^ first) for n, o in graphs.items()})


# ----------------------------------------------------------------------------------------------
# ONNX Runtime parity, every family


def _family_recipe(family: str) -> str:
    names = [n for n in ALL_RECIPES if load_recipe(n).family == family]
    return next((n for n in names if n.startswith("demo-")), names[0])


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def exported(request, tmp_path_factory):
    """(model, recipe, .onnx path, OnnxBackend) of a seeded random model of each family, exported
    dynamic (one ONNX Runtime session: creating one for A2U's graph takes seconds)."""
    name = _family_recipe(request.param)
    model, recipe = _random_model(name)
    path = to_onnx(model, tmp_path_factory.mktemp(request.param) / f"{name}.onnx", recipe=recipe)
    return model, recipe, path, OnnxBackend.load(path)


@pytest.mark.parametrize("name", ["demo-indexnet", "demo-tcp"])
def test_batch_norms_with_drawn_statistics_are_folded_into_the_graph_faithfully(name, tmp_path):
    """The exporter folds every BatchNorm into its convolution (the graph holds none); freshly built
    ones are the identity, so the tests above could not see a fault there. Drawn statistics, compared
    as `--verify` compares (1e-4 per unit of the output's scale), at a size other than the traced one."""
    from exporters.verify import TOLERANCE

    model, recipe = _random_model(name)
    _drawn_batch_norm(model)
    path = to_onnx(model, tmp_path / f"{name}.onnx", recipe=recipe)
    assert "BatchNormalization" not in _ops(path)
    s = recipe.infer.stride
    x = torch.randn(1, recipe.infer.input_channels, 7 * s, 3 * s, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = model(x).numpy()
    got = OnnxBackend.load(path)(x.numpy())
    assert np.abs(got - want).max() <= TOLERANCE * max(1.0, float(np.abs(want).max()))


def test_onnxruntime_equals_pytorch_at_other_sizes_and_batches(exported):
    """Traced at 3s x 5s; run at non-square odd multiples of the stride both ways round, a square
    size and batch 2 (dynamic N, H, W), against the PyTorch model's own forward."""
    model, recipe, path, backend = exported
    s = recipe.infer.stride
    for n, h, w in ((1, 7 * s, 3 * s), (2, 3 * s, 5 * s), (1, 4 * s, 4 * s)):
        x = torch.randn(n, recipe.infer.input_channels, h, w,
                        generator=torch.Generator().manual_seed(h * w))
        with torch.no_grad():
            want = model(x).numpy()
        got = backend(x.numpy())
        assert got.shape == want.shape == (n, 1, h, w)
        assert np.abs(got - want).max() <= TOLERANCE, (n, h, w, np.abs(got - want).max())


def test_graph_metadata_rebuilds_the_recipe(exported):
    model, recipe, path, backend = exported
    graph = onnx.load(str(path))
    meta = {p.key: p.value for p in graph.metadata_props}
    assert meta["format"] == "matte-onnx/1"
    assert json.loads(meta["recipe"]) == json.loads(recipe.to_json())
    pre = json.loads(meta["preprocessing"])
    cfg = recipe.infer
    assert (pre["mean"], pre["std"], pre["stride"], pre["align"], pre["trimap"]) == \
        (list(cfg.mean), list(cfg.std), cfg.stride, cfg.align, cfg.trimap)
    assert [i.name for i in graph.graph.input] == ["input"] and [o.name for o in graph.graph.output] == ["alpha"]
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["batch", "", "height", "width"]
    assert graph.opset_import[0].version == 17
    assert backend.recipe == recipe


def test_verify_passes_onnx_and_catches_a_wrong_backend(exported):
    model, recipe, path, backend = exported
    reference = TorchBackend(model, recipe)
    s = recipe.infer.stride
    sizes = [Size(5 * s - 3, 2 * s + 5)]  # not a multiple of the stride: the pipeline aligns it
    results = verify(backend, reference, sizes)
    assert [(r.height, r.width) for r in results] == [(3 * s, 5 * s)]
    assert all(r.ok for r in results) and results[0].scale > 0, results

    class Off:  # an "exported model" off by twice the tolerance where the output is largest
        recipe = reference.recipe

        def __call__(self, x):
            out = reference(x)
            out.flat[np.abs(out).argmax()] += 2e-4 * max(1.0, float(np.abs(out).max()))
            return out

    assert not any(r.ok for r in verify(Off(), reference, sizes))


def test_verify_catches_a_wrong_constant_in_the_graph(exported, tmp_path):
    """The tolerance scales with the output, and stays strict: one convolution's weights 0.1% off
    in the written graph (an export that rounded or mis-folded a constant) fails every family."""
    from onnx import numpy_helper

    model, recipe, path, backend = exported
    graph = onnx.load(str(path))
    initializers = {t.name: t for t in graph.graph.initializer}
    first = initializers[next(n.input[1] for n in graph.graph.node if n.op_type == "Conv" and n.input[1] in initializers)]
    first.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(first) * np.float32(1.001), first.name))
    onnx.save(graph, str(tmp_path / "wrong.onnx"))
    s = recipe.infer.stride
    results = verify(OnnxBackend.load(tmp_path / "wrong.onnx"), TorchBackend(model, recipe), [Size(5 * s, 3 * s)])
    assert not any(r.ok for r in results), results


def test_half_graph_is_fp16_inside_with_fp32_islands_and_close_to_pytorch(exported):
    """to_half on the exported graph: FP16 weights and activations, float32 input/output, the
    normalisation / softmax / reductions fed and run in FP32; ONNX Runtime within HALF_TOLERANCE."""
    import onnxruntime as ort
    from onnx import TensorProto

    from exporters.onnx import KEEP_FP32, to_half
    from exporters.verify import HALF_TOLERANCE

    model, recipe, path, _ = exported
    half = onnx.shape_inference.infer_shapes(to_half(onnx.load(str(path))))
    graph = half.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
    types.update({t.name: t.data_type for t in graph.initializer})
    assert types["input"] == types["alpha"] == TensorProto.FLOAT
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert convs and all(types[n.input[1]] == TensorProto.FLOAT16 and types[n.output[0]] == TensorProto.FLOAT16
                         for n in convs)
    kept = [n for n in graph.node if n.op_type in KEEP_FP32]
    assert all(types[n.input[0]] == types[n.output[0]] == TensorProto.FLOAT for n in kept)
    if recipe.family != "tcp":  # TCP's graph has no softmax, pooling or reduction: nothing to keep
        assert kept and {"Softmax", "GlobalAveragePool"} <= {n.op_type for n in kept}
    check_operators(half)
    session = ort.InferenceSession(half.SerializeToString(), providers=["CPUExecutionProvider"])
    s = recipe.infer.stride
    x = torch.randn(1, recipe.infer.input_channels, 5 * s, 3 * s,
                    generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = model(x).numpy()
    got = session.run(None, {"input": x.numpy()})[0]
    assert got.dtype == np.float32 and got.shape == want.shape
    assert 0 < np.abs(got - want).max() <= HALF_TOLERANCE, np.abs(got - want).max()


def test_to_onnx_leaves_the_model_alone_and_writes_atomically(tmp_path):
    model, recipe = _random_model("indexnet-hin-maxindex", "model.width_mult=0.35")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    path = to_onnx(model, tmp_path / "sub" / "m.onnx", recipe=recipe)
    assert path == tmp_path / "sub" / "m.onnx" and path.is_file()
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.onnx"]  # no temporary left behind
    assert type(model.index0).__name__ == "MaxIndex" and not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="opset 16"):
        to_onnx(model, tmp_path / "x.onnx", opset=16, recipe=recipe)


def test_static_export_is_fixed_and_says_so_at_other_sizes(tmp_path):
    model, recipe = _random_model("indexnet-unet-bilinear", "model.width_mult=0.35")
    path = to_onnx(model, tmp_path / "s.onnx", dynamic=False, recipe=recipe, size=(64, 96))
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 4, 64, 96]
    from mattecli.inference.backends import static_onnx_size

    assert static_onnx_size(path) == Size(96, 64)  # WIDTHxHEIGHT: 64 rows of 96
    backend = OnnxBackend.load(path)
    x = np.random.default_rng(0).normal(size=(1, 4, 64, 96)).astype(np.float32)
    with torch.no_grad():
        assert np.abs(backend(x) - model(torch.from_numpy(x)).numpy()).max() <= TOLERANCE
    with pytest.raises(ValueError, match=r"exported for 96x64 input only, got 64x96 \(WIDTHxHEIGHT"):
        backend(np.zeros((1, 4, 96, 64), np.float32))
    with pytest.raises(ValueError, match="not a multiple of the stride"):
        to_onnx(model, tmp_path / "t.onnx", dynamic=False, recipe=recipe, size=(100, 96))


def test_onnx_backend_errors_are_one_line(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a graph")
    with pytest.raises(UsageError, match="junk.onnx: not a loadable ONNX model"):
        load_backend(junk)
    from onnx import helper

    bare = tmp_path / "bare.onnx"
    onnx.save(_graph([helper.make_node("Relu", ["x"], ["y"])]), str(bare))
    with pytest.raises(UsageError, match="bare.onnx: no recipe in the ONNX metadata"):
        load_backend(bare)
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"")
    with pytest.raises(UsageError, match="w.safetensors: the onnx backend runs an exported model"):
        load_backend(weights, "onnx")


def test_default_sizes():
    assert Size(1920, 1088) in default_sizes(32) and all(s.height % 16 == 0 == s.width % 16 for s in default_sizes(16))
    assert Parity(32, 32, 2e-4, 0, 1).ok is False and Parity(32, 32, 1e-4, 0, 1).ok is True
    # the raw output of seeded (untrained) demo-a2u at 1920x1088: 2.5e-4 at a scale of 7.9 failed an absolute 1e-4
    assert Parity(1088, 1920, 2.53e-4, 1.2e-5, 7.93).ok is True and Parity(1088, 1920, 8e-4, 0, 7.93).ok is False
    assert Parity(32, 32, 2e-4, 0, 0.5).ok is False  # a small output is held to 1e-4 itself, not to less


def test_default_sizes_are_non_square_both_ways_round_and_1080p():
    """verify.default_sizes: 3 strides wide by 5 high, 11 by 7, and 1920x1088 (Size is WIDTHxHEIGHT)."""
    assert default_sizes(32) == [Size(96, 160), Size(352, 224), Size(1920, 1088)]
    assert default_sizes(16)[:2] == [Size(48, 80), Size(176, 112)]


def test_the_reference_runs_with_tf32_off_and_the_settings_come_back():
    """verify.strict_fp32: TF32 off in torch's CUDA convolutions and matmuls for the reference (cuDNN allows
    it by default), the caller's settings back afterwards, also after an error."""
    from exporters.verify import strict_fp32

    backends = torch.backends
    saved = backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32
    try:
        backends.cudnn.allow_tf32 = backends.cuda.matmul.allow_tf32 = True
        with pytest.raises(KeyError), strict_fp32():
            assert (backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32) == (False, False)
            raise KeyError("stop")
        assert (backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32) == (True, True)
    finally:
        backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32 = saved


def test_verify_reads_the_error_against_the_references_scale_at_the_given_tolerance():
    """verify: each size's Parity is the aligned input's height and width, the max-abs error, and the scale of
    the reference (PyTorch's max |output|, not the backend's), allowed `tolerance` per unit of that scale."""
    class Const:
        recipe = load_recipe("demo-indexnet")

        def __init__(self, value):
            self.value = value

        def __call__(self, x):
            return np.full((x.shape[0], 1, *x.shape[2:]), self.value, np.float64)

    (r,) = verify(Const(2.5), Const(2.0), [Size(96, 64)])
    assert (r.height, r.width, r.max_abs, r.mean_abs, r.scale) == (64, 96, 0.5, 0.5, 2.0)
    assert not r.ok and r.allowed == pytest.approx(2e-4)
    (r,) = verify(Const(2.5), Const(2.0), [Size(96, 64)], tolerance=0.25)
    assert r.ok and r.allowed == 0.5


def test_the_tolerance_is_per_unit_of_the_outputs_scale_and_at_least_absolute():
    """verify.py: max-abs per unit of max |output|, 1 at least: an output under 1 (a trained matte, or all
    zeros) is held to TOLERANCE absolute, not to a fraction of it; the bound itself passes."""
    assert [Parity(32, 32, 0.9e-4, 0, scale).ok for scale in (0.0, 0.5, 1.0)] == [True, True, True]
    assert Parity(32, 32, 0.9e-4, 0, 0.5).allowed == TOLERANCE == 1e-4
    assert Parity(32, 32, 3e-4, 0, 4.0).allowed == pytest.approx(4e-4) and Parity(32, 32, 4e-4, 0, 4.0).ok
    assert Parity(32, 32, 1e-2, 0, 1.0, tolerance=1e-2).ok and not Parity(32, 32, 1.1e-2, 0, 1.0, tolerance=1e-2).ok


# ----------------------------------------------------------------------------------------------
# Compaction (exporters.onnx.compact)


class _Downsample(torch.nn.Module):
    """A2U's 36-tap downsampling alone, with kernels made from its input."""

    def forward(self, x):
        from mattecli.models.a2u import downsample_shift

        return downsample_shift(x, torch.softmax(x[:, :, ::2, ::2], 1), 3)


def _raw_export(module, path, channels=36):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(1, channels, 10, 14),), str(path), input_names=["x"],
                          output_names=["y"], dynamic_axes={name: {0: "n", 2: "h", 3: "w"} for name in "xy"},
                          opset_version=17, dynamo=False)
    return onnx.load(str(path))


def _most_products_alive(graph) -> int:
    """The most Mul outputs alive at once when the graph runs in ONNX Runtime's order: the post-order
    of a depth-first walk from the outputs that enters the latest-listed producer first
    (onnxruntime/core/graph/graph_viewer.cc); a value dies after its last reader."""
    index = {name: i for i, node in enumerate(graph.node) for name in node.output}
    order, seen = [], set()

    def visit(i):
        seen.add(i)
        for j in sorted({index[n] for n in graph.node[i].input if n in index}, reverse=True):
            if j not in seen:
                visit(j)
        order.append(i)

    for out in graph.output:
        visit(index[out.name])
    last = {name: step for step, i in enumerate(order) for name in graph.node[i].input}
    alive, most = set(), 0
    for step, i in enumerate(order):
        if graph.node[i].op_type == "Mul":
            alive.add(graph.node[i].output[0])
        alive = {name for name in alive if last.get(name, -1) > step}
        most = max(most, len(alive))
    return most


def test_compact_graph_computes_the_same_with_fewer_nodes_and_one_product_at_a_time(tmp_path):
    import onnxruntime as ort

    from exporters.onnx import compact

    raw = _raw_export(_Downsample(), tmp_path / "raw.onnx")
    small = compact(onnx.load(str(tmp_path / "raw.onnx")))
    onnx.checker.check_model(small)  # nodes still in topological order
    kinds = [node.op_type for node in small.graph.node]
    assert "Constant" not in kinds and "Identity" not in kinds
    assert kinds.count("Mul") == 36 and kinds.count("Slice") == 36 + 1  # one per tap, and the kernels' ::2, ::2
    assert len(small.graph.node) < len(raw.graph.node) / 2
    assert _most_products_alive(raw.graph) >= 30  # as exported: every product before the first sum
    assert _most_products_alive(small.graph) <= 2
    x = np.random.default_rng(0).standard_normal((2, 36, 18, 22)).astype(np.float32)  # another size, batch 2
    run = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
           for m in (raw, small)]
    np.testing.assert_array_equal(run[0], run[1])
    with torch.no_grad():
        np.testing.assert_allclose(run[1], _Downsample()(torch.from_numpy(x)).numpy(), atol=1e-5, rtol=0)


def test_compact_shares_integer_constants_only(tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    from exporters.onnx import compact

    def const(name, value):
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.array(value), name))

    nodes = [const("a1", [1, 2]), const("a2", [1, 2]), const("f1", [0.5]), const("f2", [0.5]),
             helper.make_node("Reshape", ["x", "a1"], ["r1"]), helper.make_node("Reshape", ["r1", "a2"], ["r2"]),
             helper.make_node("Mul", ["r2", "f1"], ["m"]), helper.make_node("Identity", ["m"], ["i"]),
             helper.make_node("Mul", ["i", "f2"], ["y"])]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    model = compact(helper.make_model(helper.make_graph(nodes, "g", [x], [y]), ir_version=8,
                                      opset_imports=[helper.make_opsetid("", 17)]))
    assert [n.op_type for n in model.graph.node] == ["Reshape", "Reshape", "Mul", "Mul"]
    assert sorted(t.name for t in model.graph.initializer) == ["a1", "f1", "f2"]
    assert [list(n.input) for n in model.graph.node] == [["x", "a1"], ["r1", "a1"], ["r2", "f1"], ["m", "f2"]]


def test_compact_lists_nodes_breadth_first_and_drops_chained_identities():
    """compact: Kahn's order with a first-in first-out queue, ties in the given order (two chains a, b from
    the input: a1, b1, a2, b2); Identity nodes dropped, a chain of two too, their readers reading the source."""
    from onnx import TensorProto, helper

    from exporters.onnx import compact

    nodes = [helper.make_node("Relu", ["x"], ["a1"], name="a1"), helper.make_node("Identity", ["a1"], ["i1"]),
             helper.make_node("Identity", ["i1"], ["i2"]), helper.make_node("Relu", ["i2"], ["a2"], name="a2"),
             helper.make_node("Neg", ["x"], ["b1"], name="b1"), helper.make_node("Neg", ["b1"], ["b2"], name="b2"),
             helper.make_node("Add", ["a2", "b2"], ["y"], name="y")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = compact(helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 17)]))
    onnx.checker.check_model(model)
    assert [n.name for n in model.graph.node] == ["a1", "b1", "a2", "b2", "y"]
    assert list(model.graph.node[2].input) == ["a1"]


def test_compact_merges_slices_on_other_axes_only():
    """compact: Slice(Slice(x)) becomes one Slice where the two cut distinct axes; two cuts of one axis stay
    two (x[:, :, 1:5][:, :, 1:3] is x[:, :, 2:4]; one Slice holding the axis twice is not a valid graph)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from exporters.onnx import compact

    def ints(name, values):
        return numpy_helper.from_array(np.array(values, np.int64), name)

    inits = [ints("s1", [1]), ints("e1", [5]), ints("a2", [2]), ints("one", [1]), ints("e2", [3]), ints("a3", [3])]
    x = np.arange(2 * 6 * 6, dtype=np.float32).reshape(1, 2, 6, 6)
    for axis, want in (("a2", x[:, :, 2:4]), ("a3", x[:, :, 1:5, 1:3])):
        nodes = [helper.make_node("Slice", ["x", "s1", "e1", "a2", "one"], ["t"]),
                 helper.make_node("Slice", ["t", "s1", "e2", axis, "one"], ["y"])]
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6, 6])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
        model = compact(helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 17)]))
        assert len(model.graph.node) == (2 if axis == "a2" else 1)
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        np.testing.assert_array_equal(session.run(None, {"x": x})[0], want)


def test_the_graph_is_budgeted_by_its_onnx_runtime_figure_and_the_weights_by_pytorchs(exported):
    """`--max-memory` for the graph uses what ONNX Runtime needs (measured per recipe), for the
    weights file what PyTorch needs; the figure travels in the graph's recipe."""
    _, recipe, path, _ = exported
    cfg = recipe.infer
    if recipe.family == "tcp":  # demo-tcp: its graph runs the textural path untiled, above the CPU figure
        assert cfg.onnx_bytes_per_pixel > cfg.bytes_per_pixel
    pipeline = load_pipeline(path)
    assert pipeline.bytes_per_pixel == (cfg.onnx_bytes_per_pixel or cfg.bytes_per_pixel)
    # the figure's origin travels with it, for `matte infer`'s note on an unmeasured one
    assert pipeline.bytes_source.startswith("recipe infer.onnx_bytes_per_pixel" if cfg.onnx_bytes_per_pixel
                                            else "recipe infer.bytes_per_pixel (CPU, measured)")


# ----------------------------------------------------------------------------------------------
# The same pipeline for torch and onnx; the command line


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A weights file of a small IndexNet (the max-pooling baseline, so the decomposed max index runs)."""
    model, recipe = _random_model("indexnet-unet-maxunpool", "model.width_mult=0.35")
    return save_weights(model, recipe, tmp_path_factory.mktemp("w") / "m.safetensors")


def run_main(*args):
    return subprocess.run([sys.executable, "-m", "mattecli", *map(str, args)], capture_output=True, text=True)


def test_infer_pipeline_with_onnx_equals_torch(weights, tmp_path):
    """The ONNX file runs through the same pipeline (resize alignment of an odd-sized photo, restore,
    known regions) and gives the torch pipeline's matte, to a level at most where rounding flips."""
    model, recipe = load_pipeline(weights).backend.model, load_pipeline(weights).recipe
    path = to_onnx(model, tmp_path / "m.onnx", recipe=recipe)
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (75, 101, 3), dtype=np.uint8)
    trimap = rng.choice(np.array([0, 128, 255], np.uint8), (75, 101))
    with_torch, with_onnx = load_pipeline(weights).predict_whole(image, trimap), load_pipeline(path).predict_whole(image, trimap)
    assert with_onnx.shape == (75, 101)
    assert np.abs(with_torch.astype(int) - with_onnx.astype(int)).max() <= 1


def test_cli_export_verify_then_infer_and_eval_with_onnx(weights, tmp_path):
    out = tmp_path / "m.onnx"
    res = run_main("export", "--weights", weights, "--format", "onnx", "--dynamic", "--verify",  # the default, accepted
                   "--verify-sizes", "96x160,224x96", "--out", out)
    assert res.returncode == 0, res.stderr
    assert "96x160" in res.stdout and "224x96" in res.stdout and "verify: ok at all 2 sizes" in res.stdout
    assert out.is_file() and not {"ArgMax", "OneHot"} & _ops(out)

    from mattecli.cli.eval import run_eval
    from mattecli.data.synthetic import prepare_synthetic

    prepare_synthetic(tmp_path / "data", n_train=0, n_test=2, size=64, seed=0, composite=False)
    test = tmp_path / "data" / "test"
    scores = {}
    for backend, file in (("torch", weights), ("onnx", out)):
        assert run_eval(weights=file, backend=backend, data=test, json_out=tmp_path / f"{backend}.json", workers=1) == 0
        scores[backend] = json.loads((tmp_path / f"{backend}.json").read_text())["mean"]
    assert scores["onnx"] == pytest.approx(scores["torch"], abs=2e-3)
    res = CliRunner().invoke(app, ["infer", "--weights", str(out), "--images", str(test / "merged"),
                                   "--trimaps", str(test / "trimap"), "--out", str(tmp_path / "mattes")])
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "mattes").glob("*.png"))) == 2


def test_cli_verify_fails_above_the_tolerance(weights, tmp_path, monkeypatch):
    """Exit 1 and FAIL when the exported graph differs: a backend that drifts by 1e-3."""
    from mattecli.inference import backends

    class Drifting(OnnxBackend):
        def __call__(self, x):
            return super().__call__(x) + np.float32(1e-3)

    monkeypatch.setitem(backends.BACKENDS, "onnx", Drifting)
    res = CliRunner().invoke(app, ["export", "--weights", str(weights), "--dynamic", "--verify",
                                   "--verify-sizes", "64x96", "--out", str(tmp_path / "m.onnx")])
    assert res.exit_code == 1 and "FAIL" in res.output
    # this recipe unpools at max indices: the failure says why such a recipe can fail (ties flip)
    assert "matte: note: this recipe unpools at max indices: where a pooled cell's values (nearly) tie" in res.stderr


@pytest.mark.parametrize("verify", [False, True])
def test_cli_export_prints_the_summary_and_with_verify_a_row_per_size(tmp_path, monkeypatch, verify):
    """The summary on stdout; without --verify nothing runs against PyTorch; with it, a row per size
    (a size the pipeline aligns shown as asked -> run), ok or FAIL against 1e-4 x max(1, max |ref|)
    (--verify's help), and exit 1 saying how many sizes failed. The export itself is faked."""
    import exporters.export as exporting

    recipe = type("Recipe", (), {"model": type("Model", (), {"index": None})()})()
    exported = exporting.Exported(tmp_path / "m.onnx", None, recipe, True, (), summary="wrote m.onnx")

    def sizes(exported, opts):
        assert verify, "verification sizes asked for without --verify"
        return [Size(64, 32), Size(97, 95), Size(128, 64)]

    def verify_export(exported, opts, sizes, on_size):
        assert verify, "verified without --verify"
        # 5e-5 <= 1e-4 x 1: ok; 3e-4 > 1e-4 x 2.0: FAIL; 1e-5: ok
        return [Parity(32, 64, 5e-5, 1e-6, 0.5), Parity(96, 96, 3e-4, 2e-5, 2.0), Parity(64, 128, 1e-5, 1e-7, 1.0)]

    monkeypatch.setattr(exporting, "export", lambda opts, log, track: exported)
    monkeypatch.setattr(exporting, "verify_sizes", sizes)
    monkeypatch.setattr(exporting, "verify_export", verify_export)
    res = CliRunner().invoke(app, ["export", "--weights", str(tmp_path / "w.safetensors"),
                                   "--out", str(tmp_path / "m.onnx"), *(["--verify"] if verify else [])])
    lines = res.stdout.splitlines()
    assert lines[0] == "wrote m.onnx"
    if not verify:
        assert (res.exit_code, lines, res.stderr) == (0, ["wrote m.onnx"], "")
        return
    rows = [line.split() for line in lines if line.strip().startswith(("64x32", "97x95", "128x64"))]
    assert rows == [["64x32", "5.00e-05", "1.00e-06", "0.5", "ok"],
                    ["97x95", "->", "96x96", "3.00e-04", "2.00e-05", "2", "FAIL"],
                    ["128x64", "1.00e-05", "1.00e-07", "1", "ok"]]
    assert res.exit_code == 1 and "verify: ok" not in res.stdout
    assert "verify: FAILED at 1 of 3 sizes (max-abs above 0.0001 x max(1, max |ref|))" in res.stderr


@pytest.mark.parametrize("args, message", [
    (["--weights", "{tmp}/missing.safetensors"], "missing.safetensors: no such weights file"),
    (["--format", "tflite"], "--format tflite: unknown format"),
    # was "not a readable .safetensors file (Error while deserializing header: header too large)"
    (["--weights", "{tmp}/m.onnx", "--out", "{tmp}/n.onnx"], "m.onnx: an exported .onnx model; export from the "
                                                              ".safetensors weights file it came from"),
    (["--opt-shape", "1920by1088"], "--opt-shape: '1920by1088' is not WIDTHxHEIGHT"),
    (["--verify", "--verify-sizes", "64x"], "--verify-sizes: '64x' is not WIDTHxHEIGHT"),
    (["--verify", "--verify-sizes", "64x", "--verify-sizes", "64x64"], "--verify-sizes: '64x' is not WIDTHxHEIGHT"),
    (["--opset", "13"], "--opset 13: choose 17 to 20"),
    (["--opset", "21"], "--opset 21: choose 17 to 20"),
    (["--static", "--verify", "--verify-sizes", "64x64"], "--verify-sizes 64x64: a static graph runs at --opt-shape"),
    # WIDTHxHEIGHT as given, not (H, W) tuples: "got (480, 640), (320, 320), (2176, 3840)"
    (["--format", "trt", "--out", "{tmp}/m.engine", "--min-shape", "640x480", "--opt-shape", "320x320"],
     "--min-shape 640x480, --opt-shape 320x320, --max-shape 3840x2176: need min <= opt <= max in both width and height"),
    (["--out", "{tmp}/m.engine"], "m.engine: a .engine file is not what --format onnx writes (use .onnx, or "
                                  "--format trt)"),
    (["--format", "trt", "--out", "{tmp}/m.onnx"], "a .onnx file is not what --format trt writes (use .engine or "
                                                    ".plan, or --format onnx)"),
    (["--out", "{tmp}/m.safetensors"], "a .safetensors file is not what --format onnx writes"),
    # wrote a graph that `matte infer/bench --weights model` then refused: "unknown model file type"
    (["--out", "{tmp}/model"], "--out {tmp}/model: no suffix; name the graph .onnx (matte infer, eval and bench"),
    (["--out", "{tmp}/model.bin"], "model.bin: a .bin file; name the graph .onnx"),
    (["--format", "trt", "--out", "{tmp}/model"], "model: no suffix; name the engine .engine or .plan"),
    # TensorRT-profile sizes were accepted with onnx and silently ignored
    (["--min-shape", "320x320", "--max-shape", "1920x1088"], "--min-shape, --max-shape: not used by this export "
                                                             "(a dynamic ONNX graph runs at any size"),
    (["--opt-shape", "640x320"], "--opt-shape: not used by this export (a dynamic ONNX graph"),
    (["--static", "--opt-shape", "640x320", "--max-shape", "1920x1088"], "--max-shape: not used by this export "
                                                                          "(a --static graph has one size"),
    (["--format", "trt", "--out", "{tmp}/m.engine", "--static", "--min-shape", "320x320"], "--min-shape: not used"),
    (["--device", "gpu"], "--device gpu: expected auto, cpu, cuda or cuda:N"),
    (["--device", "cuda:x"], "--device cuda:x: expected auto, cpu, cuda or cuda:N"),
    (["--tf32"], "--tf32 is for --format trt"),
    (["--verify-sizes", "64x64"], "--verify-sizes is for --verify"),
    # a dry run's --out /dev/null wrote nothing to read back: "/dev/null: no such weights file" after the export
    (["--verify", "--out", "/dev/null"], "--out /dev/null: not a regular file, and --verify runs the model from"),  # was exported and not verified, without a word
    # refused before any engine is built (a build takes minutes), TensorRT installed or not
    (["--format", "trt", "--out", "{tmp}/m.engine", "--verify"], "--verify of a TensorRT engine runs it on a GPU"),
])
def test_cli_export_usage_errors_are_one_line(weights, tmp_path, args, message):
    """In process (the entry point turns a UsageError into one line and exit 2: checked once below)."""
    base = {"--weights": str(weights), "--out": str(tmp_path / "m.onnx")}
    given = [a.replace("{tmp}", str(tmp_path)) for a in args]
    for key, value in base.items():
        if key not in given:
            given += [key, value]
    res = CliRunner().invoke(app, ["export", *given])
    assert isinstance(res.exception, UsageError), res.output
    assert message.replace("{tmp}", str(tmp_path)) in str(res.exception) and "\n" not in str(res.exception)
    assert list(tmp_path.iterdir()) == []


def test_export_to_a_device_needs_no_suffix(weights):
    """A dry run (`--out /dev/null`) is written in place: the suffix rule is for files infer reads back."""
    from exporters.export import ExportOptions, check_options

    check_options(ExportOptions(weights=weights, out=Path("/dev/null")))


def test_cli_export_missing_weights_through_the_entry_point(tmp_path):
    res = run_main("export", "--weights", tmp_path / "missing.safetensors", "--out", tmp_path / "m.onnx")
    assert res.returncode == 2 and "missing.safetensors: no such weights file" in res.stderr
    assert res.stderr.strip().count("\n") == 0 and "Traceback" not in res.stderr


def test_cli_trt_without_tensorrt_is_one_line(weights, tmp_path):
    res = run_main("export", "--weights", weights, "--format", "trt", "--out", tmp_path / "m.engine")
    if res.returncode == 0:
        pytest.skip("TensorRT is installed here")
    assert res.returncode == 2 and res.stderr.strip().count("\n") == 0 and "Traceback" not in res.stderr
    assert not (tmp_path / "m.engine").exists()
    assert [p.name for p in tmp_path.iterdir()] == [], "the temporary ONNX file must be removed"


def test_exported_file_suffix_picks_the_onnx_backend(weights, tmp_path):
    model, recipe = load_pipeline(weights).backend.model, load_pipeline(weights).recipe
    path = to_onnx(model, tmp_path / "m.onnx", recipe=recipe)
    assert isinstance(load_backend(path), OnnxBackend)
    assert isinstance(load_backend(Path(weights)), TorchBackend)


def test_backend_torch_runs_a_weights_file_of_any_other_suffix(weights, tmp_path):
    """docs/commands/infer.md: --backend is torch, onnx or trt, by default from the suffix; named, torch
    opens a weights file whatever its name (only an ONNX graph's or an engine's suffix is refused)."""
    import shutil

    from mattecli.inference.backends import implied_backend

    renamed = Path(shutil.copy(weights, tmp_path / "m.weights"))
    assert implied_backend(renamed) is None and implied_backend(renamed, "torch") == "torch"
    assert isinstance(load_backend(renamed, "torch"), TorchBackend)
    graph = tmp_path / "m.ONNX"  # a suffix in any case, as every command takes it: refused before it is read
    graph.write_bytes(b"not read")
    with pytest.raises(UsageError, match="this is an ONNX graph: use --backend onnx"):
        load_backend(graph, "torch")


@pytest.mark.parametrize("shapes, dynamic_hw, profile", [
    (["--min-shape", "320x320", "--opt-shape", "640x320", "--max-shape", "960x640"], True,  # the form
     ((320, 320), (320, 640), (640, 960))),
    (["--min-shape", "640x320", "--opt-shape", "640x320", "--max-shape", "640x320"], False,  # min = opt = max
     ((320, 640),) * 3),
    (["--static", "--opt-shape", "640x320"], False, ((320, 640),) * 3),  # --static: the opt shape only
    (["--min-shape", "300x300", "--opt-shape", "1920x1080", "--max-shape", "3840x2160"], True,  # aligned up
     ((320, 320), (1088, 1920), (2176, 3840))),
])
def test_cli_trt_profile_decides_the_graph(weights, tmp_path, monkeypatch, shapes, dynamic_hw, profile):
    """`--format trt` with a min..max profile builds from a dynamic graph; shapes are aligned to the stride."""
    import onnx

    import exporters.tensorrt as tensorrt

    seen = {}

    def fake_to_engine(onnx_path, path, *, half, tf32, min_shape, opt_shape, max_shape, timing_cache=None):
        dims = onnx.load(str(onnx_path)).graph.input[0].type.tensor_type.shape.dim
        seen.update(hw=[d.dim_value for d in dims[2:]], shapes=(min_shape, opt_shape, max_shape))
        Path(path).write_bytes(b"engine")
        return Path(path)

    monkeypatch.setattr(tensorrt, "to_engine", fake_to_engine)
    monkeypatch.setattr(tensorrt, "fp16_graph_for", lambda half: False)
    monkeypatch.setattr(tensorrt, "require_cuda", lambda: None)
    res = CliRunner().invoke(app, ["export", "--weights", str(weights), "--format", "trt",
                                   "--out", str(tmp_path / "m.engine"), *shapes])
    assert res.exit_code == 0, res.output
    assert (seen["hw"] == [0, 0]) == dynamic_hw  # dim_value 0: a named, dynamic axis
    assert seen["shapes"] == profile  # the engine's profile in array order (H, W)
    assert ("aligned up to 1920x1088" in res.output) == ("1920x1080" in shapes)


def test_cli_trt_builds_on_the_device_asked_for(weights, tmp_path, monkeypatch):
    """TensorRT builds on the current CUDA device: `--device cuda:1` makes GPU 1 current for the build."""
    import contextlib

    import torch

    import exporters.tensorrt as tensorrt
    import mattecli.devices

    current, seen = ["cuda:0"], {}

    @contextlib.contextmanager
    def device(where):
        before, current[0] = current[0], str(where)
        yield
        current[0] = before

    def fake_to_engine(onnx_path, path, **kwargs):
        seen["built on"] = current[0]
        Path(path).write_bytes(b"engine")
        return Path(path)

    monkeypatch.setattr(tensorrt, "to_engine", fake_to_engine)
    monkeypatch.setattr(tensorrt, "fp16_graph_for", lambda half: False)
    monkeypatch.setattr(tensorrt, "require_cuda", lambda: None)
    monkeypatch.setattr(mattecli.devices, "resolve_device", lambda text, option="--device", backend=None: text)
    monkeypatch.setattr(torch.cuda, "device", device)
    res = CliRunner().invoke(app, ["export", "--weights", str(weights), "--format", "trt", "--device", "cuda:1",
                                   "--out", str(tmp_path / "m.engine")])
    assert res.exit_code == 0, res.output
    assert seen["built on"] == "cuda:1" and current[0] == "cuda:0"


def test_cli_export_is_dynamic_by_default_and_static_sizes_are_aligned(weights, tmp_path):
    res = CliRunner().invoke(app, ["export", "--weights", str(weights), "--out", str(tmp_path / "d.onnx")])
    assert res.exit_code == 0, res.output
    dims = onnx.load(str(tmp_path / "d.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["batch", "", "height", "width"] and "dynamic batch" in res.output
    assert re.search(r"export ONNX \(FP32\) .* 1/1", res.output)  # a progress bar: it takes seconds (none before)
    res = CliRunner().invoke(app, ["export", "--weights", str(weights), "--static", "--opt-shape", "90x100",
                                   "--out", str(tmp_path / "s.onnx")])
    assert res.exit_code == 0, res.output
    assert "matte: note: --opt-shape 90x100 aligned up to 96x128 (WIDTHxHEIGHT, a multiple of the model's stride 32" \
        in res.output
    dims = onnx.load(str(tmp_path / "s.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 4, 128, 96] and "static batch 1 at 96x128" in res.output


def test_a_static_graph_of_a_resize_down_recipe_runs_the_photo_size_it_was_exported_for(tmp_path):
    """indexnet-mmagic aligns photos down (397x263 -> 384x256), but --opt-shape was aligned up
    (416x288): `matte infer` refused the very photo size the graph was exported for, and --verify,
    run at the graph's own size, passed."""
    import numpy as np

    from mattecli.inference.backends import OnnxBackend
    from mattecli.inference.pipeline import Pipeline

    model, recipe = _random_model("indexnet-unet-maxunpool", "model.width_mult=0.35", "infer.align=resize-down")
    weights = save_weights(model, recipe, tmp_path / "mm.safetensors")
    res = CliRunner().invoke(app, ["export", "--weights", str(weights), "--static", "--opt-shape", "97x63",
                                   "--out", str(tmp_path / "s.onnx")])
    assert res.exit_code == 0, res.output
    assert ("note: --opt-shape 97x63 aligned down to 96x32 (WIDTHxHEIGHT, a multiple of the model's stride 32, as "
            "the inference pipeline aligns its inputs: this recipe resizes them down)") in res.output
    backend = OnnxBackend.load(tmp_path / "s.onnx")
    rng = np.random.default_rng(0)
    alpha = Pipeline(backend, recipe.infer, recipe).run(rng.integers(0, 256, (63, 97, 3), dtype=np.uint8),
                                                        np.full((63, 97), 128, np.uint8)).alpha
    assert alpha.shape == (63, 97)
    res = CliRunner().invoke(app, ["export", "--weights", str(weights), "--static", "--opt-shape", "97x20",
                                   "--out", str(tmp_path / "t.onnx")])
    assert str(res.exception) == ("--opt-shape 97x20 is under 32 pixels on a side, which a recipe that resizes its "
                                  "inputs down to the stride cannot run")
    # a dynamic graph's --verify-sizes too: a traceback (ValueError) after the graph was written
    res = run_main("export", "--weights", weights, "--verify", "--verify-sizes", "16x16", "--out", tmp_path / "d.onnx")
    assert res.returncode == 2 and not (tmp_path / "d.onnx").exists()
    assert res.stderr == ("matte: error: --verify-sizes 16x16 is under 32 pixels on a side, which a recipe that "
                          "resizes its inputs down to the stride cannot run\n")
    # each size is run as the pipeline aligns it, and the table says so (it showed only 64x32)
    res = run_main("export", "--weights", weights, "--verify", "--verify-sizes", "97x63,64x32",
                   "--out", tmp_path / "d.onnx")
    assert res.returncode == 0, res.stderr
    rows = [line.split()[:3] for line in res.stdout.splitlines() if line.strip().startswith(("97x63", "64x32"))]
    assert [row[:3] if row[1] == "->" else row[:1] for row in rows] == [["97x63", "->", "96x32"], ["64x32"]]


def test_the_torch_backend_names_an_exported_file_in_one_line(tmp_path):
    for name, kind, backend in (("m.onnx", "an ONNX graph", "onnx"), ("m.engine", "a TensorRT engine", "trt")):
        (tmp_path / name).write_bytes(b"not weights")
        with pytest.raises(UsageError) as err:
            load_backend(tmp_path / name, "torch")
        assert str(err.value) == (f"{tmp_path / name}: the torch backend runs a .safetensors weights file, and this "
                                  f"is {kind}: use --backend {backend} (or leave --backend out)")


PEAKS_OVER_CALLS = """
import resource, sys
import numpy as np
from mattecli.inference.pipeline import load_pipeline

def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

backend = load_pipeline(sys.argv[1]).backend  # tunes the C heap as matte infer does
x = np.random.default_rng(0).random((1, backend.recipe.infer.input_channels, 768, 768), np.float32)
base, peaks = peak(), []
for h, w in [(768, 768), (768, 480), (480, 768), (640, 768)] * 2:  # a folder's tiles and sizes
    backend(x[:, :, :h, :w].copy())
    peaks.append(peak() - base)
print(*peaks)
"""


def test_onnx_backends_memory_levels_off_over_calls_of_mixed_sizes(tmp_path):
    """ONNX Runtime's CPU arena was shrunk after every call, into the C heap that load_pipeline
    tunes to keep freed blocks; the heap fragmented and the peak grew call after call (this loop:
    469, 659 after the first four calls, 1,237 MiB after eight; IndexNet's released graph at 1024:
    871 -> 2,324 bytes/pixel, over its budget). Kept, the arena levels off once it has seen each
    size (463, 523, 524)."""
    torch.manual_seed(0)
    recipe = load_recipe("demo-indexnet")
    path = to_onnx(build_model(recipe).eval(), tmp_path / "m.onnx", recipe=recipe)
    res = subprocess.run([sys.executable, "-c", PEAKS_OVER_CALLS, str(path)], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert res.returncode == 0, res.stderr
    peaks = [int(v) // 1024 for v in res.stdout.split()]  # MiB above the process before the first call
    # each size is seen once in the first four calls; after them the arena has what it needs
    assert peaks[-1] <= 1.1 * peaks[3], peaks


def test_onnx_backend_keeps_no_memory_pattern_per_input_size(weights, tmp_path):
    """A long `matte infer` or a service fed photos of mixed sizes grew by about 0.6 MB per new
    input size: ONNX Runtime kept a memory pattern for each shape it had seen."""
    model, recipe = load_pipeline(weights).backend.model, load_pipeline(weights).recipe
    backend = load_backend(to_onnx(model, tmp_path / "m.onnx", recipe=recipe))
    assert backend.session.get_session_options().enable_mem_pattern is False


def test_verify_sizes_an_engine_cannot_run_are_refused_before_building_it():
    """Unverified on TensorRT (not installable here): a size outside a dynamic engine's profile
    would have failed each verify row after minutes of building."""
    from exporters.export import _check_verify_sizes
    from mattecli.recipes import load_recipe
    from mattecli.sizes import Size

    cfg = load_recipe("demo-indexnet").infer
    profile = (Size(64, 64), Size(128, 96), Size(256, 192))
    _check_verify_sizes([Size(64, 64), Size(250, 190)], cfg, profile, True, True, True)
    with pytest.raises(UsageError, match=r"^--verify-sizes 300x100: outside the engine's profile, 64x64 \.\. 256x192"):
        _check_verify_sizes([Size(100, 100), Size(300, 100)], cfg, profile, True, True, True)
    _check_verify_sizes([Size(300, 100)], cfg, profile, True, False, True)  # an ONNX graph runs any size
    with pytest.raises(UsageError, match=r"^--verify-sizes 64x64: a static graph runs at --opt-shape 128x96 only"):
        _check_verify_sizes([Size(127, 95), Size(64, 64)], cfg, profile, False, False, True)


def test_verify_allows_1e_4_or_1e_2_with_half_per_unit_of_scale():
    """docs/commands/export.md: `--verify` exits 1 above 1e-4 (1e-2 with `--half`) times the output's scale
    (at least 1): an FP16 graph 1.5e-2 off at scale 1 fails, 0.9e-2 off passes; FP32 0.9e-4 passes, 1.1e-4 fails."""
    from exporters.export import ExportOptions
    from exporters.verify import HALF_TOLERANCE

    assert [ExportOptions(Path("w"), Path("o"), half=half).tolerance for half in (False, True)] == [1e-4, 1e-2]
    assert [Parity(32, 32, err, 0, 1.0, tolerance=HALF_TOLERANCE).ok for err in (0.9e-2, 1.5e-2)] == [True, False]
    assert [Parity(32, 32, err, 0, 1.0).ok for err in (0.9e-4, 1.1e-4)] == [True, False]


@pytest.mark.parametrize("op", ["BatchNormalization", "Softmax", "ReduceMean", "ReduceSum", "GlobalAveragePool",
                                "LayerNormalization", "InstanceNormalization"])
def test_half_keeps_each_norm_softmax_and_reduction_in_fp32_with_its_parameters(op):
    """to_half (docs/deployment.md, --half): FP16 weights and activations, but each normalisation, softmax and
    reduction fed and run in FP32 with its parameters (scale, bias, statistics) in FP32; Resize's scales
    stay float32 as the operator requires; input and output float32."""
    from onnx import TensorProto, helper, numpy_helper

    from exporters.onnx import to_half

    f32 = TensorProto.FLOAT
    inits = [numpy_helper.from_array(np.full((1, 2, 1, 1), 0.5, np.float32), "w"),
             numpy_helper.from_array(np.array([], np.float32), "roi"),
             numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")]
    params = {"BatchNormalization": [np.ones(2), np.zeros(2), np.zeros(2), np.ones(2)],
              "LayerNormalization": [np.ones(4), np.zeros(4)], "InstanceNormalization": [np.ones(2), np.zeros(2)],
              "ReduceSum": [np.array([1], np.int64)]}.get(op, [])
    names = [f"p{i}" for i in range(len(params))]
    inits += [numpy_helper.from_array(p if p.dtype == np.int64 else p.astype(np.float32), n)
              for n, p in zip(names, params)]
    attrs = {"axes": [1]} if op == "ReduceMean" else {}
    nodes = [helper.make_node("Mul", ["x", "w"], ["m"]), helper.make_node(op, ["m", *names], ["n"], **attrs),
             helper.make_node("Resize", ["n", "roi", "scales"], ["y"], mode="nearest")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", f32, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info("y", f32, None)], initializer=inits)
    half = onnx.shape_inference.infer_shapes(to_half(helper.make_model(
        graph, ir_version=8, opset_imports=[helper.make_opsetid("", 17)])))
    values = [*half.graph.value_info, *half.graph.input, *half.graph.output]
    types = {v.name: v.type.tensor_type.elem_type for v in values}
    types.update({t.name: t.data_type for t in half.graph.initializer})
    assert types["x"] == types["y"] == f32 and types["w"] == TensorProto.FLOAT16
    assert types["roi"] == types["scales"] == f32
    kept = next(n for n in half.graph.node if n.op_type == op)
    param = TensorProto.INT64 if op == "ReduceSum" else f32  # ReduceSum's axes input: int64
    assert [types[name] for name in kept.input] == [f32] + [param] * len(names)
    assert types[kept.output[0]] == f32
    mul, resize = (next(n for n in half.graph.node if n.op_type == t) for t in ("Mul", "Resize"))
    assert types[mul.output[0]] == types[resize.input[0]] == TensorProto.FLOAT16


def test_metadata_says_the_precision_and_the_input_in_words(tmp_path):
    """docs/deployment.md: `precision` is float32 or float16 (--half); `input` says in words how RGB is
    normalised (unit: RGB/255 - mean; pixel: RGB - 255 mean) and the trimap encoded (trimap/255, or 3 channels)."""
    from onnx import helper

    from exporters.onnx import _set_metadata

    net = torch.nn.Sequential(torch.nn.Conv2d(4, 1, 1)).eval()
    for half in (False, True):
        path = to_onnx(net, tmp_path / f"{half}.onnx", half=half)
        meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
        assert meta["precision"] == ("float16" if half else "float32")
    for name, words in (("demo-indexnet", ("RGB/255 - mean", "trimap/255")), ("tcp", ("RGB/255 - mean", "3 channels")),
                        ("indexnet-mmagic", ("RGB - 255 mean", "trimap/255"))):
        graph = helper.make_graph([], "g", [], [])
        _set_metadata(graph, load_recipe(name), 32)
        meta = {p.key: p.value for p in graph.metadata_props}
        text = json.loads(meta["preprocessing"])["input"]
        assert all(w in text for w in words) and not ("3 channels" in text and "trimap/255" in text), (name, text)


def test_a_weights_file_on_the_cpu_runs_its_batchnorms_unfolded(weights):
    """docs/architecture.md: TorchBackend folds the BatchNorms into the convolutions on CUDA only; on the
    CPU the loaded model keeps them (the reference path, bit for bit the unfolded model)."""
    backend = TorchBackend.load(weights, "cpu")
    assert backend.folded == 0
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in backend.model.modules())


def test_both_ends_of_the_opset_range_are_accepted(tmp_path):
    """docs: --opset 17 to 20 (torch's TorchScript exporter writes up to 20)."""
    from exporters.export import ExportOptions, check_options

    for opset in (17, 20):
        check_options(ExportOptions(weights=Path("m.safetensors"), out=tmp_path / "m.onnx", opset=opset))


def test_verify_runs_the_default_sizes_an_engine_can_run_else_its_opt_shape():
    """Defaults for stride 32: 96x160, 352x224, 1920x1088; an engine runs those inside its profile, and its
    opt shape where none is; a static graph runs its one size."""
    from types import SimpleNamespace

    from exporters.export import Exported, ExportOptions, verify_sizes
    from mattecli.sizes import Size

    recipe = SimpleNamespace(infer=SimpleNamespace(stride=32))
    trt, onnx_ = (ExportOptions(Path("m.safetensors"), Path("m." + f), format=f) for f in ("trt", "onnx"))
    narrow = (Size(320, 320), Size(640, 640), Size(960, 960))  # none of the defaults fits
    wide = (Size(64, 64), Size(320, 320), Size(1920, 1088))
    assert verify_sizes(Exported(Path("m.engine"), None, recipe, True, narrow), trt) == [Size(640, 640)]
    assert verify_sizes(Exported(Path("m.engine"), None, recipe, True, wide), trt) == [
        Size(96, 160), Size(352, 224), Size(1920, 1088)]
    assert verify_sizes(Exported(Path("m.onnx"), None, recipe, True, narrow), onnx_) == [
        Size(96, 160), Size(352, 224), Size(1920, 1088)]
    assert verify_sizes(Exported(Path("m.onnx"), None, recipe, False, narrow), onnx_) == [Size(640, 640)]


def test_only_the_shapes_in_use_are_noted_when_aligned():
    """A --static graph's min and max are copies of --opt-shape: one note, for --opt-shape, not three."""
    from exporters.export import _align_shapes
    from mattecli.recipes import load_recipe
    from mattecli.sizes import Size

    notes = []
    shapes = _align_shapes((Size(90, 100),) * 3, load_recipe("demo-indexnet").infer, (False, True, False),
                           notes.append)
    assert shapes == (Size(96, 128),) * 3  # stride 32, aligned up
    assert len(notes) == 1 and notes[0].startswith("matte: note: --opt-shape 90x100 aligned up to 96x128 ")


def test_cli_trt_summary_says_tf32_for_an_fp32_engine_only(weights, tmp_path, monkeypatch):
    """TF32 is an FP32 engine's setting (exporters.tensorrt: `tf32` lets an FP32 engine use it)."""
    import exporters.tensorrt as tensorrt

    built = []

    def fake_build_engine(model, recipe, path, **kwargs):
        built.append(kwargs["tf32"])
        Path(path).write_bytes(b"engine")
        return Path(path)

    monkeypatch.setattr(tensorrt, "build_engine", fake_build_engine)
    monkeypatch.setattr(tensorrt, "fp16_graph_for", lambda half: False)
    for extra, says in (([], ": TensorRT engine (FP32, TF32), "), (["--half"], ": TensorRT engine (FP16), ")):
        res = CliRunner().invoke(app, ["export", "--weights", str(weights), "--format", "trt", "--tf32", *extra,
                                       "--out", str(tmp_path / "m.engine")])
        assert res.exit_code == 0 and says in res.output, res.output
    assert built == [True, True]  # passed on as asked: to_engine applies it to FP32 engines only
