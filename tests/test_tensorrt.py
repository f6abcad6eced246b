import importlib.util
import json
import sys
import types

import numpy as np
import pytest

from exporters import tensorrt as trt_export
from mattecli.errors import UsageError
from mattecli.inference.engine import MAGIC, NOT_INSTALLED, read_engine_file, tensorrt_version, write_engine_file
from tests.test_cli import run_main

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None


def test_engine_header_round_trip(tmp_path):
    meta = {"format": "matte-engine/1", "recipe": {"name": "demo-a2u", "infer": {"stride": 16}}, "half": True}
    engine = bytes(range(256)) * 3 + MAGIC  # arbitrary bytes, even the magic itself
    path = write_engine_file(tmp_path / "m.engine", engine, meta)
    assert path.read_bytes().startswith(MAGIC)
    assert read_engine_file(path) == (meta, engine)
    assert [p.name for p in tmp_path.iterdir()] == ["m.engine"]  # atomic: no temp left behind


@pytest.mark.parametrize("content, reason", [
    (b"\x00" * 64, "not a matte engine"),
    (MAGIC + b"\x01", "truncated engine header"),
    (MAGIC + (5).to_bytes(4, "little") + b"{nope" + b"engine", "corrupt engine header"),
    (MAGIC + (2).to_bytes(4, "little") + b"{}", "engine bytes are missing"),
    (MAGIC + (9).to_bytes(4, "little") + b"{}", "truncated engine header"),
    (MAGIC + (3).to_bytes(4, "little") + b"[1]" + b"engine", r"corrupt engine header \(not a JSON object\)"),
    (MAGIC + (4).to_bytes(4, "little") + b"null" + b"engine", r"corrupt engine header \(not a JSON object\)"),
    (MAGIC + (2).to_bytes(4, "little") + b"\xff\xfe" + b"engine", r"corrupt engine header \(not JSON\)"),  # not UTF-8
    (MAGIC + (50000).to_bytes(4, "little") + b"[" * 50000 + b"engine", r"corrupt engine header \(not JSON\)"),
    (b"MATTETRT" + (2).to_bytes(4, "little"), "truncated engine header"),  # the header says 2 bytes, none follow
    (b"\x00" * 64, r"not a matte engine \(no MATTETRT header; build it with `matte export --format trt`\)$"),
])
def test_engine_header_errors_name_the_file(tmp_path, content, reason):
    """A header that is JSON but not an object (`[1]`) was an AttributeError traceback in `matte
    bench` (`.get` on a list). The header alone is read as the whole file is."""
    path = tmp_path / "bad.engine"
    path.write_bytes(content)
    for header_only in (False, True):
        with pytest.raises(UsageError, match=reason) as err:
            read_engine_file(path, header_only=header_only)
        assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_the_engine_header_alone_is_read_without_the_engine(tmp_path):
    meta = {"recipe": {"name": "demo-a2u"}, "half": True}
    path = write_engine_file(tmp_path / "m.engine", b"\x01" * 4096, meta)
    assert read_engine_file(path, header_only=True) == (meta, b"")


def test_an_engine_file_is_the_8_byte_magic_a_little_endian_length_the_json_then_the_engine(tmp_path):
    """The format in engine.py's docstring, built by hand: `MATTETRT`, the JSON's length in 4 bytes,
    little endian, the JSON, then the serialized engine."""
    assert MAGIC == b"MATTETRT"
    header = b'{"half": true}'
    path = tmp_path / "m.engine"
    path.write_bytes(b"MATTETRT" + bytes([len(header), 0, 0, 0]) + header + b"ENGINE")
    assert read_engine_file(path) == ({"half": True}, b"ENGINE")


def test_an_engine_file_that_cannot_be_read_is_one_line(tmp_path):
    """A missing file, or a folder given for one: "cannot read the engine" with the reason, not a traceback."""
    for path, reason in ((tmp_path / "none.engine", "No such file or directory"), (tmp_path, "Is a directory")):
        with pytest.raises(UsageError, match=rf"^{path}: cannot read the engine \({reason}\)$"):
            read_engine_file(path)


def test_matte_bench_of_an_engine_whose_header_is_not_an_object_is_one_line(tmp_path):
    path = tmp_path / "bad.engine"
    path.write_bytes(MAGIC + (3).to_bytes(4, "little") + b"[1]" + b"engine")
    res = run_main("bench", "--weights", path, "--device", "cpu")
    assert (res.returncode, res.stderr) == (2, f"matte: error: {path}: corrupt engine header (not a JSON object)\n")


def fake_trt(version: str, fp16_flag: bool = True):
    flags = types.SimpleNamespace(**({"FP16": 1} if fp16_flag else {}))
    return types.SimpleNamespace(__version__=version, BuilderFlag=flags)


def test_tensorrt_versions_and_which_route_each_takes():
    assert tensorrt_version(fake_trt("10.13.0.35")) == (10, 13) and tensorrt_version(fake_trt("11.1")) == (11, 1)
    assert tensorrt_version(fake_trt("10.0.1.6")) == (10, 0) and tensorrt_version(fake_trt("11")) == (11, 0)
    # 10.0-10.11: weak typing (the FP16 flag); 10.12 deprecated it, 11 removed it: strongly typed
    assert not trt_export.needs_fp16_graph(fake_trt("10.0.1.6"))
    assert not trt_export.needs_fp16_graph(fake_trt("10.11.0.33"))
    assert trt_export.needs_fp16_graph(fake_trt("10.12.0.36"))
    assert trt_export.needs_fp16_graph(fake_trt("11.0.0"))
    assert trt_export.needs_fp16_graph(fake_trt("10.9", fp16_flag=False))  # flag gone: strongly typed only


def test_tensorrt_10_0_is_new_enough_and_a_minor_without_digits_is_0(monkeypatch):
    """matte needs TensorRT 10 or newer: 10.0 itself is taken; 9.x is too old. A version part with no
    digits counts as 0."""
    from mattecli.inference.engine import import_tensorrt

    assert tensorrt_version(fake_trt("11.dev")) == (11, 0)
    module = fake_trt("10.0.0.6")
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    assert import_tensorrt() is module
    monkeypatch.setitem(sys.modules, "tensorrt", fake_trt("9.3.0"))
    with pytest.raises(UsageError, match=r"^TensorRT 9.3.0 is too old: matte needs TensorRT 10 or newer$"):
        import_tensorrt()


def test_a_tensorrt_that_fails_to_import_is_reported_as_not_installed(monkeypatch):
    """An installed tensorrt whose import fails (its CUDA libraries missing: a plain ImportError, not
    ModuleNotFoundError) is the one NOT_INSTALLED line, not a traceback."""
    from mattecli.inference.engine import import_tensorrt

    class Broken:
        @staticmethod
        def find_spec(name, *_):
            if name == "tensorrt":
                raise ImportError("libnvinfer.so.10: cannot open shared object file")

    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    monkeypatch.setattr(sys, "meta_path", [Broken(), *sys.meta_path])
    with pytest.raises(UsageError) as err:
        import_tensorrt()
    assert str(err.value) == NOT_INSTALLED


def test_too_old_tensorrt_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", fake_trt("8.6.1"))
    with pytest.raises(UsageError, match="TensorRT 8.6.1 is too old: matte needs TensorRT 10 or newer"):
        trt_export.fp16_graph_for(False)


@pytest.mark.parametrize("version, half, fp16_graph", [
    ("10.11.0.33", True, False),  # TensorRT 10.0-10.11: the FP32 graph and the builder's FP16 flag
    ("10.13.0.35", True, True),   # 10.12+: the exporter's FP16 graph (the weak-typing API is deprecated)
    ("11.0.0", True, True),       # TensorRT 11: the exporter's FP16 graph
    ("11.0.0", False, False),
])
def test_export_and_bench_pick_the_graph_by_version(monkeypatch, version, half, fp16_graph):
    monkeypatch.setitem(sys.modules, "tensorrt", fake_trt(version))
    assert trt_export.fp16_graph_for(half) is fp16_graph


def test_fp16_graph_choice_says_tensorrt_is_missing_first(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails
    with pytest.raises(UsageError, match="TensorRT is not installed"):
        trt_export.fp16_graph_for(True)


class FakeTensor:
    def __init__(self, dtype):
        self.dtype = dtype


class FakeLayer:
    def __init__(self, kind, dtype):
        self.type, self.outputs, self.precision, self.output_types = kind, [FakeTensor(dtype)], None, {}

    num_outputs = property(lambda self: len(self.outputs))

    def get_output(self, i):
        return self.outputs[i]

    def set_output_type(self, i, dtype):
        self.output_types[i] = dtype


def test_fp16_builds_pin_normalisation_softmax_and_reduce_layers_to_fp32():
    trt = types.SimpleNamespace(
        LayerType=types.SimpleNamespace(NORMALIZATION="norm", SOFTMAX="softmax", REDUCE="reduce",
                                        CONVOLUTION="conv"),
        float32="f32", float16="f16")
    layers = [FakeLayer("conv", "f32"), FakeLayer("norm", "f32"), FakeLayer("softmax", "f32"),
              FakeLayer("reduce", "f32"), FakeLayer("reduce", "i64")]  # the last: shape arithmetic
    network = types.SimpleNamespace(num_layers=len(layers), get_layer=layers.__getitem__)
    assert trt_export._pin_fp32(trt, network) == 3
    assert [layer.precision for layer in layers] == [None, "f32", "f32", "f32", None]
    assert [layer.output_types for layer in layers] == [{}, {0: "f32"}, {0: "f32"}, {0: "f32"}, {}]


def tiny_onnx(path, channels=6, half=False, recipe=None):
    import onnx
    from onnx import TensorProto, helper

    elem = TensorProto.FLOAT16 if half else TensorProto.FLOAT
    x = helper.make_tensor_value_info("input", elem, [1, channels, "h", "w"])
    y = helper.make_tensor_value_info("alpha", elem, [1, 1, "h", "w"])
    w = helper.make_tensor("w", elem, [1, channels, 1, 1], [0.0] * channels)
    graph = helper.make_graph([helper.make_node("Conv", ["input", "w"], ["alpha"])], "g", [x], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    if recipe is not None:
        helper.set_model_props(model, {"recipe": json.dumps(recipe)})
    onnx.save(model, str(path))
    return path


def test_onnx_io_reads_channels_precision_and_metadata(tmp_path):
    channels, half, props = trt_export.onnx_io(tiny_onnx(tmp_path / "a.onnx", 6, recipe={"name": "x"}))
    assert (channels, half, json.loads(props["recipe"])) == (6, False, {"name": "x"})
    assert trt_export.onnx_io(tiny_onnx(tmp_path / "b.onnx", 4, half=True))[:2] == (4, True)
    (tmp_path / "c.onnx").write_bytes(b"garbage")
    with pytest.raises(UsageError, match="not a loadable ONNX model"):
        trt_export.onnx_io(tmp_path / "c.onnx")


def test_to_engine_checks_before_needing_tensorrt(tmp_path):
    with pytest.raises(UsageError, match="no such ONNX file"):
        trt_export.to_engine(tmp_path / "none.onnx", tmp_path / "m.engine")
    graph = tiny_onnx(tmp_path / "m.onnx")
    with pytest.raises(UsageError, match="min <= opt <= max"):
        trt_export.to_engine(graph, tmp_path / "m.engine", min_shape=(640, 640), opt_shape=(320, 320))
    with pytest.raises(UsageError, match=r"^--min-shape 32x0: expected WIDTHxHEIGHT with positive sides$"):
        trt_export.check_profile((0, 32), (64, 64), (64, 64))  # (height, width) inside; said "(0, 32): HxW"


def test_missing_tensorrt_is_one_line(tmp_path, monkeypatch):
    from mattecli.inference.backends import TensorRTBackend

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails as if not installed
    graph = tiny_onnx(tmp_path / "m.onnx")
    with pytest.raises(UsageError) as err:
        trt_export.to_engine(graph, tmp_path / "m.engine")
    assert str(err.value) == NOT_INSTALLED
    with pytest.raises(UsageError) as err:
        TensorRTBackend.load(write_engine_file(tmp_path / "m.engine", b"x", {"recipe": {}}), "cuda")
    assert str(err.value) == NOT_INSTALLED


@pytest.mark.skipif(HAVE_TRT, reason="checks the message shown where TensorRT is not installed")
def test_infer_and_eval_with_trt_backend_say_tensorrt_is_missing(tmp_path):
    from mattecli.data.manifest import Sample, write_manifest
    from tests.infer_helpers import make_pairs

    images = make_pairs(tmp_path / "images", ["a"])
    engine = write_engine_file(tmp_path / "m.engine", b"x", {"recipe": {}})
    split = tmp_path / "split"
    split.mkdir()
    write_manifest(split, [Sample("a", image=images / "a.png", alpha=images / "a_trimap.png",
                                  trimap=images / "a_trimap.png")])
    weights = tmp_path / "w.safetensors"  # the backend is asked for before the file is read
    weights.write_bytes(b"x")
    for command in (["infer", "--weights", engine, "--images", images, "--out", tmp_path / "out"],
                    ["eval", "--weights", engine, "--data", split, "--backend", "trt", "--workers", "1"]):
        res = run_main(*command)
        assert res.returncode == 2, res.stderr
        line = res.stderr.strip()
        assert "\n" not in line and line.endswith(f"error: {NOT_INSTALLED}"), command
    # a weights file given to the trt backend: what is wrong is the file, TensorRT or not (it said "not installed")
    res = run_main("infer", "--weights", weights, "--backend", "trt", "--images", images, "--out", tmp_path / "o")
    assert (res.returncode, res.stderr) == (2, f"matte: error: {weights}: the trt backend runs a TensorRT engine; "
                                               f"build one with `matte export --weights {weights} --format trt --out "
                                               "MODEL.engine`\n")


class FakeBuilder:
    """Just enough of TensorRT's builder API to follow `to_engine`'s choices on a CPU machine.

    The names are TensorRT's Python bindings' (checked against NVIDIA/TensorRT's pyCore.cpp at
    v10.0.0, v10.1.0, v10.10.0, v10.16, v11.0 and v11.1)."""

    def __init__(self, trt, layers):
        self.trt, self.layers, self.calls = trt, layers, trt.calls

    def create_network(self, flags):
        self.calls["network_flags"] = flags
        return types.SimpleNamespace(num_layers=len(self.layers), get_layer=self.layers.__getitem__)

    def create_builder_config(self):
        calls = self.calls
        calls.update(flags=[], cleared=[], preview={})

        class Config:
            set_flag = calls["flags"].append
            clear_flag = calls["cleared"].append
            set_preview_feature = staticmethod(lambda feature, enable: calls["preview"].update({feature: enable}))
            create_timing_cache = staticmethod(lambda data: {"cache": bytes(data)})
            set_timing_cache = staticmethod(lambda cache, ignore_mismatch: calls.update(cache_in=cache) or True)
            get_timing_cache = staticmethod(lambda: types.SimpleNamespace(serialize=lambda: b"timings"))

            @staticmethod
            def add_optimization_profile(profile):  # TensorRT: the profile's index, or -1 if invalid
                calls.setdefault("profiles", []).append(profile)
                return calls.get("profile_index", len(calls["profiles"]) - 1)
        return Config()

    def create_optimization_profile(self):
        profile = types.SimpleNamespace()
        profile.set_shape = lambda name, lo, opt, hi: setattr(profile, "shape", (name, lo, opt, hi))
        return profile

    def build_serialized_network(self, network, config):
        return b"serialized engine"


def fake_builder_trt(version, layers):
    trt = fake_trt(version, fp16_flag=version.startswith("10"))
    trt.calls = {}
    if version.startswith("10"):
        trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS = 2
    trt.BuilderFlag.TF32 = 6
    if tensorrt_version(trt) >= (10, 10):
        trt.PreviewFeature = types.SimpleNamespace(RUNTIME_ACTIVATION_RESIZE_10_10="resize")
    trt.LayerType = types.SimpleNamespace(NORMALIZATION="norm", SOFTMAX="softmax", REDUCE="reduce")
    trt.float32, trt.float16 = "f32", "f16"
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=5)
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    trt.Builder = lambda logger: FakeBuilder(trt, layers)
    trt.OnnxParser = lambda network, logger: types.SimpleNamespace(parse_from_file=lambda path: True, num_errors=0)
    return trt


@pytest.mark.parametrize("version, graph_half, half, tf32, strongly_typed, flags, cleared, pinned", [
    ("10.0.0", False, False, False, False, [], [6], 0),         # FP32: TF32 cleared
    ("10.0.0", False, False, True, False, [], [], 0),           # --tf32: TensorRT's default kept
    ("10.11.0", False, True, False, False, [1, 2], [], 1),      # weak typing: FP16 + OBEY, the softmax kept FP32
    ("10.11.0", True, True, False, True, [], [], 0),            # an FP16 graph builds strongly typed
    ("10.13.0", False, False, False, True, [], [6], 0),         # 10.12+: strongly typed, FP32 graph
    ("10.13.0", True, True, False, True, [], [], 0),            # 10.12+: FP16 from the FP16 graph
    ("11.0.0", True, True, False, True, [], [], 0),
    ("11.0.0", False, False, False, True, [], [6], 0),          # 11 is always strongly typed
])
def test_to_engine_choices_per_tensorrt_version(tmp_path, monkeypatch, version, graph_half, half, tf32,
                                                strongly_typed, flags, cleared, pinned):
    import torch

    layers = [FakeLayer("conv", "f32"), FakeLayer("softmax", "f32")]
    trt = fake_builder_trt(version, layers)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    recipe = {"name": "demo-a2u", "infer": {"stride": 16}}
    graph = tiny_onnx(tmp_path / "m.onnx", channels=4, half=graph_half, recipe=recipe)
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"old timings")
    engine = trt_export.to_engine(graph, tmp_path / "m.engine", half=half, tf32=tf32, min_shape=(64, 64),
                                  opt_shape=(128, 96), max_shape=(256, 256), timing_cache=cache)
    # the opt-in flag on 10.x only: 11 deprecates it (always strongly typed)
    assert trt.calls["network_flags"] == (1 << 5 if strongly_typed and version.startswith("10") else 0)
    assert trt.calls["flags"] == flags and trt.calls["cleared"] == cleared
    resizable = not version.startswith("10.0")  # RUNTIME_ACTIVATION_RESIZE_10_10 from 10.10
    assert trt.calls["preview"] == ({"resize": True} if resizable else {})
    assert trt.calls["profiles"][0].shape == ("input", (1, 4, 64, 64), (1, 4, 128, 96), (1, 4, 256, 256))
    assert trt.calls["cache_in"] == {"cache": b"old timings"} and cache.read_bytes() == b"timings"
    meta, data = read_engine_file(engine)
    assert data == b"serialized engine"
    assert meta["recipe"] == recipe and meta["channels"] == 4 and meta["tensorrt"] == version
    assert (meta["half"], meta["strongly_typed"], meta["fp32_pinned_layers"]) == (half, strongly_typed, pinned)
    assert (meta["tf32"], meta["activation_resize"]) == (tf32, resizable)
    assert meta["profile"] == {"min": [64, 64], "opt": [128, 96], "max": [256, 256]}


def test_a_profile_tensorrt_refuses_is_named(tmp_path, monkeypatch):
    import torch

    trt = fake_builder_trt("10.13.0", [])
    trt.calls["profile_index"] = -1
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    graph = tiny_onnx(tmp_path / "m.onnx", channels=4, recipe={"name": "x"})
    with pytest.raises(UsageError, match="refused the optimisation profile .WIDTHxHEIGHT min 64x64, opt 96x128, max 256x256"):
        trt_export.to_engine(graph, tmp_path / "m.engine", min_shape=(64, 64), opt_shape=(128, 96),
                             max_shape=(256, 256))
    assert not (tmp_path / "m.engine").exists()


def test_fp16_from_an_fp32_graph_is_refused_where_strongly_typed(tmp_path, monkeypatch):
    import torch

    monkeypatch.setitem(sys.modules, "tensorrt", fake_builder_trt("11.0.0", []))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    graph = tiny_onnx(tmp_path / "m.onnx", channels=4, recipe={"name": "x"})
    with pytest.raises(UsageError, match="builds FP16 only from an FP16 graph"):
        trt_export.to_engine(graph, tmp_path / "m.engine", half=True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UsageError, match="needs an NVIDIA GPU"):
        trt_export.to_engine(graph, tmp_path / "m.engine")


def test_build_engine_checks_tensorrt_and_cuda_before_exporting(tmp_path, monkeypatch):
    """The one engine builder (export and bench): nothing is exported where nothing can be built."""
    import torch

    import exporters.onnx

    exports = []
    monkeypatch.setattr(exporters.onnx, "to_onnx", lambda *a, **k: exports.append(k) or 1 / 0)
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(UsageError, match="TensorRT is not installed"):
        trt_export.build_engine(None, None, tmp_path / "m.engine")
    monkeypatch.setitem(sys.modules, "tensorrt", fake_builder_trt("10.13.0", []))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UsageError, match="needs an NVIDIA GPU"):
        trt_export.build_engine(None, None, tmp_path / "m.engine")
    assert exports == [] and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("version, half, fp16_graph", [("10.11.0", True, False), ("10.13.0", True, True),
                                                       ("11.1.0", False, False)])
def test_build_engine_exports_the_graph_the_version_needs(tmp_path, monkeypatch, version, half, fp16_graph):
    import torch

    import exporters.onnx

    exported = []

    def fake_to_onnx(model, path, *, opset, dynamic, recipe, half, size):  # the export itself is tested elsewhere
        exported.append({"model": model, "opset": opset, "dynamic": dynamic, "half": half, "size": size})
        return tiny_onnx(path, channels=4, half=half, recipe=recipe)

    monkeypatch.setattr(exporters.onnx, "to_onnx", fake_to_onnx)
    monkeypatch.setitem(sys.modules, "tensorrt", fake_builder_trt(version, [FakeLayer("softmax", "f32")]))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    recipe = {"name": "demo-a2u", "infer": {"stride": 16}}
    engine = trt_export.build_engine("net", recipe, tmp_path / "m.engine", half=half, opset=18,
                                     shapes=((32, 32), (64, 48), (96, 96)))
    assert exported == [{"model": "net", "opset": 18, "dynamic": True, "half": fp16_graph, "size": (64, 48)}]
    meta, _ = read_engine_file(engine)
    assert meta["half"] is half and meta["strongly_typed"] is (fp16_graph or version.startswith("11"))
    assert meta["profile"] == {"min": [32, 32], "opt": [64, 48], "max": [96, 96]}
    assert [p.name for p in tmp_path.iterdir()] == ["m.engine"]  # the temporary ONNX graph is gone


class FakeContext:
    def __init__(self, sizes):
        self.sizes, self.bound = list(sizes), []

    def update_device_memory_size_for_shapes(self):
        return self.sizes.pop(0)

    def set_device_memory(self, address, size):
        self.bound.append(size)


def test_scratch_memory_grows_with_the_input_and_a_failed_sizing_is_named():
    """`update_device_memory_size_for_shapes` returns the bytes the current shapes need, 0 on error."""
    import torch

    from mattecli.inference.backends import TensorRTBackend

    backend = object.__new__(TensorRTBackend)  # the sizing alone: no GPU here
    backend.device, backend.source, backend.scratch = torch.device("cpu"), "m.engine", None
    backend.context = FakeContext([4096, 1024, 8192, 0])
    for shape in ((1, 4, 64, 64), (1, 4, 32, 32), (1, 4, 96, 96)):
        backend._bind_scratch(shape)
    assert backend.context.bound == [4096, 4096, 8192]  # reused while large enough, grown when not
    with pytest.raises(RuntimeError, match=r"m.engine: TensorRT could not size its scratch memory for input "
                                           r"\(1, 4, 128, 128\)"):
        backend._bind_scratch((1, 4, 128, 128))


# --- on a machine with an NVIDIA GPU and TensorRT (the `gpu` marker; not run by default) ---

def _gpu_or_skip():
    pytest.importorskip("tensorrt")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")


def _seeded(recipe_name):
    import torch

    from mattecli.models import build_model
    from mattecli.recipes import load_recipe

    torch.manual_seed(0)
    recipe = load_recipe(recipe_name)
    return build_model(recipe).eval(), recipe


@pytest.mark.gpu
@pytest.mark.parametrize("recipe_name", ["demo-indexnet", "demo-a2u"])
@pytest.mark.parametrize("half, fp16_graph, tol", [
    (False, False, 1e-3),
    (True, False, 5e-2),  # TensorRT 10's FP16 flag on the FP32 graph (`matte export --half` on 10)
    (True, True, 5e-2),   # the exporter's FP16 graph, strongly typed (`matte export --half` on TensorRT 11)
])
def test_engine_matches_torch(tmp_path, recipe_name, half, fp16_graph, tol):
    _gpu_or_skip()
    from exporters.onnx import to_onnx
    from mattecli.inference.backends import TensorRTBackend, TorchBackend
    from mattecli.inference.pipeline import prepare

    if half and not fp16_graph and trt_export.needs_fp16_graph():
        pytest.skip("this TensorRT builds only strongly typed networks (no FP16 flag)")
    model, recipe = _seeded(recipe_name)
    graph = to_onnx(model, tmp_path / "m.onnx", recipe=recipe, half=fp16_graph)
    cache = tmp_path / "timing.cache"
    engine = trt_export.to_engine(graph, tmp_path / "m.engine", half=half, min_shape=(64, 64),
                                  opt_shape=(128, 160), max_shape=(256, 256), timing_cache=cache)
    assert cache.stat().st_size > 0
    meta, _ = read_engine_file(engine)
    assert meta["recipe"] == json.loads(json.dumps(recipe.to_dict())) and meta["half"] is half  # JSON: lists
    backend = TensorRTBackend.load(engine, "cuda")
    assert backend.recipe == recipe
    assert backend.stream.cuda_stream != 0  # its own stream, not the legacy default one
    assert backend.user_memory == (tensorrt_version(backend.trt) >= (10, 1))  # set_device_memory from 10.1
    reference = TorchBackend(model, recipe, "cuda")
    rng = np.random.default_rng(0)
    for h, w in ((97, 131), (160, 224)):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        trimap = rng.choice(np.array([0, 128, 255], np.uint8), (h, w))
        x = prepare(image, trimap, recipe.infer)
        ref, out = reference(x), backend(x)
        assert out.shape == ref.shape and out.dtype == np.float32
        assert np.abs(out - ref).max() <= tol * max(1.0, np.abs(ref).max()), (h, w)
    assert (backend.scratch is not None) == backend.user_memory  # 10.0: TensorRT allocates it itself
    with pytest.raises(ValueError, match="outside the engine's profile"):
        backend(np.zeros((1, x.shape[1], 512, 512), np.float32))
    # a second build reuses the timing cache
    trt_export.to_engine(graph, tmp_path / "m2.engine", half=half, min_shape=(64, 64), opt_shape=(128, 160),
                         max_shape=(256, 256), timing_cache=cache)


@pytest.mark.gpu
def test_infer_and_bench_with_an_engine(tmp_path):
    _gpu_or_skip()
    from exporters.onnx import to_onnx
    from mattecli.bench import run_bench
    from mattecli.imageio import read_gray
    from mattecli.weights import save_weights
    from tests.infer_helpers import make_pairs

    model, recipe = _seeded("demo-a2u")
    weights = save_weights(model, recipe, tmp_path / "w.safetensors")
    engine = trt_export.to_engine(to_onnx(model, tmp_path / "m.onnx", recipe=recipe), tmp_path / "m.engine",
                                  min_shape=(32, 32), opt_shape=(32, 48), max_shape=(64, 64))
    images = make_pairs(tmp_path / "images", ["a", "b"], size=(24, 32))
    for name, w in (("trt", engine), ("torch", weights)):
        res = run_main("infer", "--weights", w, "--device", "cuda", "--images", images, "--out", tmp_path / name)
        assert res.returncode == 0, res.stderr
    for stem in ("a", "b"):
        diff = read_gray(tmp_path / "trt" / f"{stem}.png").astype(int) - read_gray(tmp_path / "torch" / f"{stem}.png")
        assert np.abs(diff).max() <= 1
    import onnxruntime

    backends = ["torch", "onnx", "trt"] if "CUDAExecutionProvider" in onnxruntime.get_available_providers() \
        else ["torch", "trt"]  # onnx on cuda needs onnxruntime-gpu
    report = run_bench(weights, backends, [(48, 40)], device="cuda", repeat=2, warmup=1)
    assert [r["backend"] for r in report["rows"]] == backends
    assert all(r["memory"] == "torch.cuda.max_memory_allocated after the first call" and r["median_ms"] > 0
               for r in report["rows"])
    assert report["rows"][-1]["peak_memory_mib"] > 0  # the engine's I/O buffers at least


def test_engine_files_pick_the_tensorrt_backend(tmp_path):
    from mattecli.inference.backends import BACKENDS, SUFFIX_TO_BACKEND, TensorRTBackend, load_backend

    assert BACKENDS[SUFFIX_TO_BACKEND[".engine"]] is TensorRTBackend is BACKENDS[SUFFIX_TO_BACKEND[".plan"]]
    engine = write_engine_file(tmp_path / "m.engine", b"x", {"recipe": {}})
    with pytest.raises(UsageError, match="--backend tf: unknown backend"):
        load_backend(engine, "tf")


@pytest.mark.parametrize("meta, reason", [
    ({"half": False}, "m.engine: carries no recipe (not exported by matte)"),
    ({"recipe": "demo-a2u"}, "m.engine: the recipe in its metadata is not JSON"),
    ({"recipe": {"name": "x", "family": "nope"}}, "m.engine: the recipe in its metadata is not valid: "),
])
def test_the_trt_backend_checks_the_engines_recipe_as_other_formats_are(monkeypatch, meta, reason):
    """It read meta["recipe"] directly: a KeyError or AttributeError traceback, or an invalid recipe
    named as "recipe x" without the file (read without a GPU: the recipe is checked first)."""
    from mattecli.inference.backends import TensorRTBackend

    monkeypatch.setitem(sys.modules, "tensorrt", fake_trt("10.13.0.35"))
    with pytest.raises(UsageError) as err:
        TensorRTBackend(b"engine", meta, device="cpu", source="m.engine")
    assert str(err.value).startswith(reason) and "\n" not in str(err.value)


def test_onnx_input_without_a_fixed_channel_count_is_refused(tmp_path):
    """A symbolic C (dim_value 0) made a profile of 0 channels, which TensorRT refused without naming the input."""
    import onnx

    path = tiny_onnx(tmp_path / "m.onnx", channels=4, recipe={"name": "x"})
    model = onnx.load(str(path))
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "c"  # clears dim_value: a oneof
    onnx.save(model, str(path))
    with pytest.raises(UsageError, match=r"input 'input' must be \(N, C, H, W\) with a fixed C"):
        trt_export.onnx_io(path)


class KeepingBuilder(FakeBuilder):
    """TensorRT's timing cache and parser rules: `set_timing_cache(cache, ignore_mismatch=False)` returns
    False for a cache made on another device (True only when the mismatch is ignored), and the parser owns
    the weights its network refers to, so it must be alive when the network is built."""

    parsers = []

    def create_builder_config(self):
        config = super().create_builder_config()
        calls = self.calls

        def set_timing_cache(cache, ignore_mismatch):
            calls.setdefault("caches", []).append((cache, ignore_mismatch))
            return ignore_mismatch or cache == {"cache": b""}  # the file's cache: another GPU's
        config.set_timing_cache = set_timing_cache
        return config

    def build_serialized_network(self, network, config):
        self.calls["parser_alive"] = self.parsers[-1]() is not None
        return super().build_serialized_network(network, config)


def test_a_timing_cache_from_another_gpu_is_replaced_and_the_parser_outlives_the_build(tmp_path, monkeypatch,
                                                                                       capsys):
    import weakref

    import torch

    trt = fake_builder_trt("10.11.0", [FakeLayer("softmax", "f32")])

    class Parser:
        num_errors = 0

        def __init__(self, network, logger):
            KeepingBuilder.parsers.append(weakref.ref(self))

        def parse_from_file(self, path):
            return True
    trt.OnnxParser = Parser
    trt.Builder = lambda logger: KeepingBuilder(trt, [FakeLayer("softmax", "f32")])
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"another gpu's timings")
    graph = tiny_onnx(tmp_path / "m.onnx", channels=4, recipe={"name": "x"})
    engine = trt_export.to_engine(graph, tmp_path / "m.engine", half=True, tf32=True, timing_cache=cache)
    assert trt.calls["caches"] == [({"cache": b"another gpu's timings"}, False), ({"cache": b""}, False)]
    assert "timing cache not usable here; starting a new one" in capsys.readouterr().err
    assert trt.calls["parser_alive"]
    meta, _ = read_engine_file(engine)
    assert (meta["half"], meta["tf32"]) == (True, False)  # TF32 concerns FP32 engines only


def test_a_first_build_starts_its_timing_cache_quietly_and_a_damaged_one_is_replaced(tmp_path, monkeypatch, capsys):
    """No cache file yet: no note (nothing was unusable). A damaged file TensorRT's binding refuses with a
    TypeError: a note and a fresh cache. The recipe is the header's own field, not repeated in onnx_metadata."""
    import torch

    trt = fake_builder_trt("10.13.0", [])
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    graph = tiny_onnx(tmp_path / "m.onnx", channels=4, recipe={"name": "x"})
    cache = tmp_path / "timing.cache"
    engine = trt_export.to_engine(graph, tmp_path / "m.engine", timing_cache=cache)
    assert capsys.readouterr().err == "" and cache.read_bytes() == b"timings"
    assert "recipe" not in read_engine_file(engine)[0]["onnx_metadata"]
    real = FakeBuilder.create_builder_config

    def create_timing_cache(data):
        if data:
            raise TypeError("cannot deserialize the timing cache")
        return {"cache": b""}

    def refusing(self):
        config = real(self)
        config.create_timing_cache = create_timing_cache
        return config
    monkeypatch.setattr(FakeBuilder, "create_builder_config", refusing)
    cache.write_bytes(b"damaged")
    trt_export.to_engine(graph, tmp_path / "m.engine", timing_cache=cache)
    assert "timing cache not usable here; starting a new one" in capsys.readouterr().err
    assert trt.calls["cache_in"] == {"cache": b""}


def test_parser_errors_are_one_line(tmp_path, monkeypatch):
    import torch

    trt = fake_builder_trt("10.13.0", [])
    error = types.SimpleNamespace(node_name=lambda: "Conv_0", desc=lambda: "unsupported\nattribute")
    trt.OnnxParser = lambda network, logger: types.SimpleNamespace(parse_from_file=lambda path: False, num_errors=1,
                                                                   get_error=lambda i: error)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    graph = tiny_onnx(tmp_path / "m.onnx", channels=4, recipe={"name": "x"})
    with pytest.raises(UsageError) as err:
        trt_export.to_engine(graph, tmp_path / "m.engine")
    assert str(err.value).endswith("TensorRT's ONNX parser failed: node Conv_0: unsupported attribute")


def test_onnx_io_sees_fp16_weights_behind_fp32_inputs(tmp_path):
    """A graph with FP32 inputs and outputs (casts at its edges) and FP16 weights, without a precision
    property, is an FP16 graph."""
    import onnx

    path = tiny_onnx(tmp_path / "m.onnx", channels=4, half=True)
    model = onnx.load(str(path))
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    onnx.save(model, str(path))
    assert trt_export.onnx_io(path)[:2] == (4, True)
