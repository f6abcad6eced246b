"""The torch array path of the pipeline against the numpy reference (issue 13 item 1).

On a CPU, `TorchOps("cpu")` runs the very kernels a GPU runs for bicubic resizing
(torch's `upsample_bicubic2d`), so the comparison below is the one that matters on CUDA; the
`gpu`-marked tests repeat it on a GPU.
"""

import numpy as np
import pytest
import torch

from mattecli.inference.backends import TorchBackend
from mattecli.inference.pipeline import (NUMPY, REDONE_FP32, Pipeline, TorchOps, _nearest_indices, prepare,
                                         restore)
from mattecli.recipes import InferConfig

ODD_SIZES = [(97, 131), (33, 200), (5, 7), (64, 96)]
RESIZE = InferConfig(align="resize", stride=32)
PAD = InferConfig(align="pad", stride=32)
ONEHOT_PAD = InferConfig(align="pad", stride=32, trimap="onehot")
ONEHOT_RESIZE = InferConfig(align="resize", stride=32, trimap="onehot")


def case(h, w, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    trimap = rng.choice(np.array([0, 128, 255], np.uint8), (h, w), p=[0.3, 0.4, 0.3])
    return image, trimap


def torch_prepare(image, trimap, cfg, ops):
    return ops.download(prepare(ops.upload(image), ops.upload(trimap), cfg, ops))


@pytest.mark.parametrize("size", ODD_SIZES)
@pytest.mark.parametrize("cfg", [PAD, ONEHOT_PAD], ids=["pad-scalar", "pad-onehot"])
def test_pad_alignment_and_trimap_encodings_are_bit_identical(size, cfg):
    image, trimap = case(*size)
    ours = torch_prepare(image, trimap, cfg, TorchOps("cpu"))
    assert ours.dtype == np.float32 and ours.shape == prepare(image, trimap, cfg).shape
    assert np.array_equal(ours, prepare(image, trimap, cfg))


@pytest.mark.parametrize("size", [(1, 1), (1, 40), (40, 1)])
def test_a_one_pixel_side_is_padded_as_numpy_repeats_it_on_both_paths(size):
    # numpy's 'reflect' repeats a one-pixel side; the repeated-reflection loop once spun forever there
    image, trimap = case(*size)
    ref = prepare(image, trimap, PAD)
    expected = np.pad(trimap, ((0, -size[0] % 32), (0, -size[1] % 32)), mode="reflect") * np.float32(1 / 255)
    assert np.array_equal(ref[0, 3], expected)
    assert np.array_equal(torch_prepare(image, trimap, PAD, TorchOps("cpu")), ref)


@pytest.mark.parametrize("size", ODD_SIZES)
@pytest.mark.parametrize("cfg", [RESIZE, ONEHOT_RESIZE], ids=["resize-scalar", "resize-onehot"])
def test_resize_alignment_differs_only_in_the_bicubic_rounding(size, cfg):
    image, trimap = case(*size)
    ref = prepare(image, trimap, cfg)
    ours = torch_prepare(image, trimap, cfg, TorchOps("cpu"))
    c = ref.shape[1]
    # the trimap channels go through the same nearest-neighbour gather: identical
    assert np.array_equal(ours[:, 3:], ref[:, 3:])
    # the image channels: torch's bicubic against OpenCV's, the same cubic (a = -0.75) summed in
    # another order; measured at most 4e-4 on normalised values of magnitude up to 2.6
    assert c in (4, 6) and np.abs(ours[:, :3] - ref[:, :3]).max() < 1e-3


MMAGIC = InferConfig(align="resize-down", stride=32, normalise="pixel", known="force", rounding="half-even",
                     mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
MMAGIC_PAD = InferConfig(align="pad", stride=32, normalise="pixel", known="force", rounding="half-even")


@pytest.mark.parametrize("size", [(97, 131), (33, 200), (64, 96)])
@pytest.mark.parametrize("cfg", [MMAGIC, MMAGIC_PAD], ids=["mmagic", "mmagic-dimaug"])
def test_mmagic_protocol_is_bit_identical_on_both_paths(size, cfg):
    """mmagic's protocol resizes with torch on both paths, so nothing is left to differ."""
    image, trimap = case(*size)
    trimap[:4] = 100  # a value that is neither known nor 128: `known: force` leaves it to the model
    ops = TorchOps("cpu")
    x = prepare(image, trimap, cfg)
    assert np.array_equal(torch_prepare(image, trimap, cfg, ops), x)
    raw = np.random.default_rng(1).uniform(-0.2, 1.2, x.shape[2:]).astype(np.float32)
    ref = restore(raw, trimap, cfg)
    ours = ops.download(restore(ops.upload(raw), ops.upload(trimap), cfg, ops))
    assert np.array_equal(ours, ref)
    assert (ref[trimap == 255] == 255).all() and (ref[trimap == 0] == 0).all()


def test_the_torch_backend_keeps_the_numpy_path_on_a_cpu():
    assert TorchBackend(SmoothNet(), Recipe(RESIZE)).ops is NUMPY


def test_nearest_indices_equal_opencv():
    import cv2

    for src in list(range(1, 120)) + [1079, 1080, 2160, 3839]:
        dst = -(-src // 32) * 32
        row = np.arange(src, dtype=np.float32)[None].repeat(2, 0)
        expected = cv2.resize(row, (dst, 2), interpolation=cv2.INTER_NEAREST)[0].astype(np.int64)
        assert np.array_equal(_nearest_indices(src, dst), expected), (src, dst)


def level_difference(ours, ref, trimap):
    unknown = trimap == 128
    diff = np.abs(ours.astype(np.int16) - ref.astype(np.int16))
    assert (diff[~unknown] == 0).all()  # known pixels are copied from the trimap on both paths
    return diff[unknown]


def restore_both(size, cfg):
    """The same random raw output (beyond [0, 1], to exercise the clip) restored by the numpy and
    the torch path: (torch's alpha, numpy's alpha, trimap)."""
    h, w = size
    _, trimap = case(h, w, seed=1)
    ah, aw = -(-h // 32) * 32, -(-w // 32) * 32
    raw = np.random.default_rng(2).uniform(-0.1, 1.1, (1, 1, ah, aw)).astype(np.float32)
    ops = TorchOps("cpu")
    return ops.download(restore(ops.upload(raw), ops.upload(trimap), cfg, ops)), restore(raw, trimap, cfg), trimap


@pytest.mark.parametrize("size", ODD_SIZES)
def test_restore_resize_within_one_level(size):
    ours, ref, trimap = restore_both(size, RESIZE)
    diff = level_difference(ours, ref, trimap)
    # the bound: <= 1 level on >= 99.9% of unknown pixels; measured: never more than 1
    # level, and >= 99.88% identical on white-noise output (the worst case for bicubic rounding)
    assert (diff <= 1).mean() >= 0.999 and diff.max() <= 1 and (diff == 0).mean() >= 0.998


@pytest.mark.parametrize("size", ODD_SIZES)
def test_restore_pad_bit_identical(size):
    ours, ref, _ = restore_both(size, PAD)
    assert np.array_equal(ours, ref)


class SmoothNet(torch.nn.Module):
    """A deterministic stand-in network: a fixed blur of the channels, squashed to [0, 1]."""

    def __init__(self, channels=4):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(channels, 1, 5, padding=2)
        self.scale = 1.0

    def forward(self, x):
        return torch.sigmoid(self.conv(x) * self.scale)


class Recipe:
    def __init__(self, cfg):
        self.infer = cfg


def test_whole_pipeline_torch_against_numpy_with_a_model():
    """Alpha from the torch path (torch bicubic both ways) against the numpy path: at most one
    level apart on >= 99.9% of unknown pixels; the largest difference measured is 1 level."""
    net = SmoothNet()
    image, trimap = case(211, 337, seed=3)
    ref = Pipeline(TorchBackend(net, Recipe(RESIZE)), RESIZE).run(image, trimap).alpha  # numpy path on a CPU
    backend = TorchBackend(net, Recipe(RESIZE))
    backend.ops = TorchOps("cpu")  # what CUDA runs
    ours = Pipeline(backend, RESIZE).run(image, trimap).alpha
    diff = level_difference(ours, ref, trimap)
    assert (diff <= 1).mean() >= 0.999 and diff.max() <= 1


class CountingOps(TorchOps):
    """TorchOps on the CPU that records which thread pins an image or trimap (not the small tables
    and index vectors `constant` uploads) and which thread uploads one."""

    def __init__(self):
        super().__init__("cpu")
        self.calls = []

    def _record(self, kind, array):
        import threading

        if np.ndim(array) >= 2 and np.shape(array)[0] > 16:  # the tables are (channels, 256)
            self.calls.append((kind, threading.current_thread().name))

    def pin(self, array):
        self._record("pin", array)
        return super().pin(array)

    def upload(self, array):
        self._record("upload", array)
        return self.send(TorchOps.pin(self, array))


def test_device_ops_inputs_are_pinned_ahead_and_only_sent_in_the_models_thread():
    """On the H200, "upload + prepare" took 18.6 ms per 4K image in the model's thread while the GPU
    waited. With device ops, `prepare_host` (a worker's) now copies the image and trimap into
    page-locked memory; the model's thread only sends them and prepares on the device. Same alpha."""
    from mattecli.inference.pipeline import Pinned

    net = SmoothNet()
    image, trimap = case(97, 131, seed=5)
    backend = TorchBackend(net, Recipe(RESIZE))
    backend.ops = ops = CountingOps()
    pipeline = Pipeline(backend, RESIZE)
    expected = pipeline.run(image, trimap).alpha
    assert [c[0] for c in ops.calls] == ["upload", "upload"]  # no worker: the pass uploads both
    ops.calls.clear()
    prepared = pipeline.prepare_host(image, trimap, ahead=4)
    assert isinstance(prepared, Pinned)
    assert np.array_equal(prepared.image.numpy(), image) and np.array_equal(prepared.trimap.numpy(), trimap)
    ops.calls.clear()
    assert np.array_equal(pipeline.run(image, trimap, prepared).alpha, expected)
    assert ops.calls == []  # neither pinned nor uploaded again: sent as pinned
    # a ceiling the whole pass does not fit: tiles, prepared in their passes; one it fits: pinned,
    # however many wait (they wait in host memory, which --max-memory does not budget)
    from mattecli.inference.tiling import pass_bytes

    need = pass_bytes(97, 131, RESIZE, 100)
    assert Pipeline(backend, RESIZE, max_bytes=need - 1, bytes_per_pixel=100).prepare_host(image, trimap) is None
    fits = Pipeline(backend, RESIZE, max_bytes=need, bytes_per_pixel=100)
    assert isinstance(fits.prepare_host(image, trimap, ahead=64), Pinned)


def test_a_folder_on_device_ops_pins_in_the_workers_and_writes_what_a_run_without_workers_writes(tmp_path):
    from mattecli.imageio import read_gray, write_png
    from mattecli.inference.batch import infer_folder

    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        image, trimap = case(61 + 8 * i, 90, seed=i)
        write_png(folder / f"p{i}.png", image)
        write_png(folder / f"p{i}_trimap.png", trimap)
    outs = {}
    for workers in (0, 2):
        backend = TorchBackend(SmoothNet(), Recipe(RESIZE))
        backend.ops = ops = CountingOps()
        report = infer_folder(Pipeline(backend, RESIZE), folder, tmp_path / f"out{workers}", progress=False,
                              workers=workers)
        assert len(report.done) == 3 and not report.failed
        outs[workers] = [read_gray(tmp_path / f"out{workers}" / f"p{i}.png") for i in range(3)]
        if workers:
            assert len(ops.calls) == 6 and all(kind == "pin" and name.startswith("matte-io")
                                                for kind, name in ops.calls)
    assert all(np.array_equal(a, b) for a, b in zip(outs[0], outs[2]))


def test_pinning_ahead_is_timed_as_upload_and_prepare():
    """`bench --e2e` sums each stage over the images: the copy into page-locked memory that a worker
    now does was the first half of "upload + prepare", and is counted there still."""
    import contextlib
    import threading

    stages = []

    @contextlib.contextmanager
    def timer(name):
        stages.append((name, threading.current_thread().name))
        yield

    backend = TorchBackend(SmoothNet(), Recipe(RESIZE))
    backend.ops = TorchOps("cpu")
    pipeline = Pipeline(backend, RESIZE, timer=timer)
    image, trimap = case(40, 50, seed=2)
    worker = threading.Thread(target=lambda: stages.append(pipeline.prepare_host(image, trimap)), name="matte-io_0")
    worker.start()
    worker.join()
    prepared = stages.pop()
    pipeline.run(image, trimap, prepared)
    assert stages == [("upload + prepare", "matte-io_0"), ("upload + prepare", "MainThread"), ("model", "MainThread"),
                      ("restore + download", "MainThread")]


class HalfOverflow(SmoothNet):
    """Gives infinity whenever it runs under autocast, as an fp16 overflow would."""

    def forward(self, x):
        out = super().forward(x)
        return out * float("inf") if torch.is_autocast_enabled(x.device.type) else out


class WideOverflow(SmoothNet):
    """Overflows under autocast only for inputs wider than 64."""

    def forward(self, x):
        out = super().forward(x)
        return out * float("inf") if torch.is_autocast_enabled(x.device.type) and x.shape[-1] > 64 else out


def test_a_redone_pass_is_named_for_its_own_image_when_threads_share_the_pipeline():
    import threading

    pipeline = Pipeline(TorchBackend(WideOverflow(), Recipe(PAD), half=True), PAD)
    hows = {"narrow": [], "wide": []}

    def run(kind, w):
        image, trimap = case(40, w)
        for _ in range(40):
            hows[kind].append(pipeline.run(image, trimap).how)

    threads = [threading.Thread(target=run, args=("narrow", 50)), threading.Thread(target=run, args=("wide", 100))]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert set(hows["narrow"]) == {"whole"} and set(hows["wide"]) == {f"whole; {REDONE_FP32}"}


def test_half_output_not_finite_is_redone_in_fp32():
    image, trimap = case(40, 50)
    backend = TorchBackend(HalfOverflow(), Recipe(PAD), half=True)
    alpha, how = Pipeline(backend, PAD).run(image, trimap)
    expected = Pipeline(TorchBackend(SmoothNet(), Recipe(PAD)), PAD).run(image, trimap).alpha
    assert backend.fallbacks == 1 and how == f"whole; {REDONE_FP32}"
    assert np.array_equal(alpha, expected)


def test_a_non_finite_fp32_output_fails_the_image():
    net = SmoothNet()
    net.scale = float("nan")
    with pytest.raises(ValueError, match="not finite"):
        Pipeline(TorchBackend(net, Recipe(PAD)), PAD).run(*case(40, 50))


def test_numpy_ops_is_the_default():
    assert Pipeline(lambda x: x[:, 3:4], PAD).ops is NUMPY


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@CUDA
@pytest.mark.parametrize("cfg", [RESIZE, PAD, ONEHOT_PAD, MMAGIC], ids=["resize", "pad", "onehot", "mmagic"])
def test_cuda_prepare_and_restore_against_numpy(cfg):
    image, trimap = case(1080 + 7, 1920 - 3)
    ops = TorchOps("cuda")
    ours = torch_prepare(image, trimap, cfg, ops)
    ref = prepare(image, trimap, cfg)
    if cfg.align == "pad":
        assert np.array_equal(ours, ref)
    else:
        assert np.array_equal(ours[:, 3:], ref[:, 3:]) and np.abs(ours - ref).max() < 1e-3
    raw = np.random.default_rng(2).uniform(-0.1, 1.1, (1, 1) + ref.shape[2:]).astype(np.float32)
    alpha = ops.download(restore(ops.upload(raw), ops.upload(trimap), cfg, ops))
    diff = level_difference(alpha, restore(raw, trimap, cfg), trimap)
    assert (diff <= 1).mean() >= 0.999 and diff.max() <= 1


@pytest.mark.gpu
@CUDA
def test_cuda_half_pipeline_against_fp32():
    net = SmoothNet()
    image, trimap = case(517, 709, seed=4)
    fp32 = Pipeline(TorchBackend(net, Recipe(RESIZE), "cuda"), RESIZE).run(image, trimap).alpha
    fp16 = Pipeline(TorchBackend(net, Recipe(RESIZE), "cuda", half=True), RESIZE).run(image, trimap).alpha
    diff = level_difference(fp16, fp32, trimap)
    assert diff.max() <= 2 and (diff <= 1).mean() >= 0.999


@pytest.mark.slow  # torch.compile builds C++ kernels on a CPU: a minute or more on 2 busy cores
def test_compiled_backend_equals_eager_at_two_sizes_with_one_compilation():
    import torch._dynamo

    torch._dynamo.reset()
    net = SmoothNet()
    eager, compiled = TorchBackend(net, Recipe(PAD)), TorchBackend(net, Recipe(PAD), compile=True)
    rng = np.random.default_rng(0)
    for h, w in [(64, 96), (96, 160), (128, 64)]:
        x = rng.standard_normal((1, 4, h, w)).astype(np.float32)
        np.testing.assert_allclose(compiled(x), eager(x), atol=1e-5)
    # dynamic height and width: the three sizes share one graph
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1



def test_compiled_per_shape_gives_the_first_shapes_a_graph_each_and_runs_later_ones_eagerly():
    """`--compile` on CUDA: static graphs, one per input shape, for the first `limit` shapes; a shape
    seen again reuses its graph; a shape past the limit runs the model as given, compiling nothing.
    (dynamo's "eager" backend: the graphs are captured and counted, no kernels are built.)"""
    import torch._dynamo

    from mattecli.inference.backends import COMPILED_SHAPES, CompiledPerShape

    torch._dynamo.reset()
    with torch._dynamo.config.patch(recompile_limit=8):  # restored after
        _compile_per_shape(CompiledPerShape)
    assert COMPILED_SHAPES == 8  # the number the CLI's help and note state


def _compile_per_shape(CompiledPerShape):
    net = model = SmoothNet().eval()
    run = CompiledPerShape(model, limit=2, backend="eager")
    rng = np.random.default_rng(0)
    shapes = [(1, 4, 64, 96), (1, 4, 96, 160), (1, 4, 64, 96), (1, 4, 128, 64), (1, 4, 96, 160)]
    graphs = []
    with torch.inference_mode():
        for shape in shapes:
            x = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
            torch.testing.assert_close(run(x), net(x), rtol=0, atol=1e-6)
            graphs.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])
    assert run.shapes == {(1, 4, 64, 96), (1, 4, 96, 160)}
    assert graphs == [1, 2, 2, 2, 2]  # the third shape compiled nothing
    # dynamo must keep a graph per shape: its own limit is raised to at least `limit`
    CompiledPerShape(model, limit=12, backend="eager")
    assert torch._dynamo.config.recompile_limit == 12
    CompiledPerShape(model, limit=3, backend="eager")
    assert torch._dynamo.config.recompile_limit == 12  # never lowered


def test_compile_is_static_per_shape_on_cuda_and_dynamic_on_a_cpu(monkeypatch):
    """Which compilation `TorchBackend(compile=True)` picks, by device (torch.compile itself is only
    recorded here; the compiled passes are the tests above and, on CUDA, `pytest -m gpu`)."""
    import mattecli.inference.backends as backends

    seen = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: seen.append(kw) or fn)
    TorchBackend(SmoothNet(), Recipe(PAD), compile=True)
    assert seen == [{"dynamic": True}]
    monkeypatch.setattr(backends, "to_device", lambda model, device: model)  # no CUDA here: stay on the CPU
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)
    backend = TorchBackend(SmoothNet(), Recipe(PAD), "cuda", compile=True)
    assert isinstance(backend.run, backends.CompiledPerShape) and seen[-1] == {"dynamic": False, "backend": "inductor"}
    assert backend.run.eager is backend.model  # float32: the model itself, one graph per shape


@pytest.mark.parametrize("device, half, compile, expected", [
    ("cuda", True, False, True), ("cuda:1", True, False, True),  # eager --half on CUDA: as measured
    ("cuda", True, True, False),  # a compiled graph chooses its own layouts (measured in NCHW)
    ("cuda", False, False, False),  # float32: not measured in channels_last
    ("cpu", False, False, False)])
def test_load_takes_channels_last_where_the_recipe_measured_it_faster(device, half, compile, expected, monkeypatch):
    import mattecli.weights
    from mattecli.recipes import load_recipe

    tcp = load_recipe("tcp")
    assert tcp.infer.cuda_half_channels_last and tcp.infer.cuda_half_bytes_per_pixel
    for other in ("indexnet-m2o-nl-ctx", "a2u-dynamic-cs-d-gn"):  # slower in channels_last on the H200
        assert not load_recipe(other).infer.cuda_half_channels_last
    seen = {}
    monkeypatch.setattr(mattecli.weights, "load_model", lambda path: (SmoothNet(), tcp))
    monkeypatch.setattr(TorchBackend, "__init__", lambda self, model, recipe, device, **kw: seen.update(kw))
    TorchBackend.load("w.safetensors", device, half=half, compile=compile)
    assert seen["channels_last"] is expected and seen["fold_bn"] is device.startswith("cuda")
    seen.clear()
    monkeypatch.setattr(mattecli.weights, "load_model", lambda path: (SmoothNet(), load_recipe("indexnet-m2o-nl-ctx")))
    TorchBackend.load("w.safetensors", device, half=half, compile=compile)
    assert seen["channels_last"] is False


@pytest.mark.gpu
@pytest.mark.slow  # two cold inductor compilations: outside the device check's `pytest -m gpu` budget, whose
def test_cuda_compile_static_graphs_equal_eager_at_two_sizes():  # compiled parity covers IndexNet itself
    from exporters.verify import strict_fp32
    from mattecli.inference.backends import CompiledPerShape

    net = SmoothNet()
    eager = TorchBackend(net, Recipe(PAD), "cuda")
    compiled = TorchBackend(net, Recipe(PAD), "cuda", compile=True)
    assert isinstance(compiled.run, CompiledPerShape)
    rng = np.random.default_rng(0)
    with strict_fp32():  # no TF32: the two may pick other convolution algorithms
        for h, w in [(64, 96), (96, 160)]:
            x = rng.standard_normal((1, 4, h, w)).astype(np.float32)
            np.testing.assert_allclose(compiled(x), eager(x), atol=1e-3)
    assert len(compiled.run.shapes) == 2


@pytest.mark.slow  # a cold inductor compilation on 2 cores: IndexNet 103 s, TCP 32 s (A2U: 557 s, see below)
@pytest.mark.parametrize("name, backend", [("demo-indexnet", "inductor"), ("tcp", "inductor"),
                                           ("demo-a2u", "aot_eager")])
def test_each_family_compiles_once_for_photos_of_several_sizes(name, backend, monkeypatch):
    """`--compile` on the real networks (BatchNorms folded, as on CUDA): no graph break, the same
    output as eager to float rounding, and one graph for three sizes. A2U is traced by dynamo and
    AOTAutograd alone (`aot_eager`): inductor takes 9 minutes over its unrolled taps on 2 cores.

    The sizes are photo-like and the networks full width (demo-indexnet is the released IndexNet's
    architecture): on a CPU, a convolution whose output holds at most 20,480 values (PyTorch's
    choice between its CPU convolution kernels) guards the graph, so inputs small enough to cross
    that line at some layer compile again, once per side of it (demo-tcp, at 1/8 width, crosses
    it at stride 32 between 512x640 and 544x704)."""
    import functools

    import torch._dynamo

    from mattecli.models import build_model
    from mattecli.recipes import load_recipe

    if backend != "inductor":
        monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=backend))
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    recipe = load_recipe(name)
    torch.manual_seed(0)
    model = build_model(recipe).eval()
    eager = TorchBackend(model, recipe, fold_bn=True)
    compiled = TorchBackend(model, recipe, fold_bn=True, compile=True)
    rng = np.random.default_rng(0)
    for h, w in [(512, 640), (544, 704), (704, 544)]:
        x = rng.standard_normal((1, recipe.infer.input_channels, h, w)).astype(np.float32)
        expected = eager(x)
        np.testing.assert_allclose(compiled(x), expected, rtol=0, atol=1e-4 * max(1.0, np.abs(expected).max()))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    assert not torch._dynamo.utils.counters["graph_break"]

def test_fold_bn_runs_a_folded_copy_and_leaves_the_callers_model_alone(tmp_path):
    """TorchBackend(fold_bn=True) folds a copy (the training loop validates with its own model);
    `load` folds on CUDA only, so the CPU keeps the authors' arithmetic."""
    from mattecli.models import build_model
    from mattecli.recipes import load_recipe
    from mattecli.weights import save_weights

    recipe = load_recipe("demo-indexnet")
    torch.manual_seed(0)
    model = build_model(recipe).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    backend = TorchBackend(model, recipe, fold_bn=True)
    assert backend.folded == sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) > 0
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in backend.model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    x = np.random.default_rng(0).standard_normal((1, 4, 64, 96)).astype(np.float32)
    np.testing.assert_allclose(backend(x), TorchBackend(model, recipe)(x), rtol=0, atol=1e-5)
    weights = save_weights(model, recipe, tmp_path / "w.safetensors")
    assert TorchBackend.load(weights, "cpu").folded == 0


@pytest.mark.gpu
def test_loading_weights_on_cuda_folds_the_batchnorms(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from mattecli.models import build_model
    from mattecli.recipes import load_recipe
    from mattecli.weights import save_weights

    recipe = load_recipe("demo-tcp")
    weights = save_weights(build_model(recipe), recipe, tmp_path / "w.safetensors")
    backend = TorchBackend.load(weights, "cuda")
    assert backend.folded == 61 and not any(isinstance(m, torch.nn.BatchNorm2d) for m in backend.model.modules())


def test_size_keyed_constants_do_not_pile_up_over_a_long_run():
    """A service on CUDA sees photos of ever new sizes: the nearest-index vectors of each size
    were kept for good, so the device memory grew with every new height and width."""
    ops = TorchOps("cpu")
    for h in range(40, 340):
        image, trimap = case(h, h + 1)
        prepare(ops.upload(image), ops.upload(trimap), RESIZE, ops)
    assert len(ops._constants) <= TorchOps.CONSTANTS_KEPT
    image, trimap = case(97, 131)  # an evicted vector is made again, the same
    fresh = torch_prepare(image, trimap, RESIZE, TorchOps("cpu"))
    assert np.array_equal(torch_prepare(image, trimap, RESIZE, ops), fresh)


def test_constants_keep_exactly_the_ones_used_last():
    """CONSTANTS_KEPT (64) constants stay, the least recently used evicted first; a constant used
    again becomes the newest."""
    ops = TorchOps("cpu")
    assert TorchOps.CONSTANTS_KEPT == 64
    for k in range(69):
        ops.constant(("k", k), lambda: np.zeros(1, np.float32))
    assert list(ops._constants) == [("k", k) for k in range(5, 69)]
    ops.constant(("k", 5), lambda: np.zeros(1, np.float32))  # used again: now the newest
    ops.constant(("k", 999), lambda: np.zeros(1, np.float32))  # evicts ("k", 6), the oldest
    assert list(ops._constants) == [("k", k) for k in range(7, 69)] + [("k", 5), ("k", 999)]
