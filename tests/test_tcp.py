"""TCP: parameter counts (ResNet-34 encoder, textural path by formula), encoder names, shapes and
gradients on odd sizes, the second input, clipping, the tiled textural path, the receptive field,
ONNX parity, the loss and the noisy trimap, a few steps of the real training loop."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mattecli.data import trimap as tri
from mattecli.models import build_model
from mattecli.models.layers import count_parameters
from mattecli.models.resnet import BasicBlock
from mattecli.models.tcp import TEXTURAL_RADIUS, TCPConfig, TCPMatting
from mattecli.recipes import load_recipe
from mattecli.train.losses import tcp_loss

TCP_RECIPES = ["tcp", "tcp-baseline", "tcp-no-robust", "demo-tcp"]
TORCHVISION_RESNET34_NO_FC = 21_284_672  # sum of torchvision resnet34()'s parameters minus fc (513,000)
EXACT = {"tcp": 26_120_435, "tcp-no-robust": 26_120_435, "tcp-baseline": 26_069_841, "demo-tcp": 415_281}


def textural_count(w: int, source: int, ffu: str = "add") -> int:
    """The TCP's parameters from its layer list (convs without bias except the output)."""
    bn = 2 * w
    stem = 6 * w * 9 + bn
    blocks = 2 * (2 * (w * w * 9 + bn))
    ffu_part = source * w + bn + 1  # 1x1 projection, its BN, the scalar w_c
    refine = (2 * w if ffu == "concat" else w) * w * 9 + bn + w * 9 + 1
    return stem + blocks + ffu_part + refine


def seeded(cfg: TCPConfig, seed: int = 0) -> TCPMatting:
    """An eval model with random BN statistics (so no BN is the identity), residual branches
    switched on (the init zeroes their last BN), its two output convs scaled so that each path's
    raw output has unit spread (so alpha is not clipped everywhere)."""
    torch.manual_seed(seed)
    model = TCPMatting(cfg)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
        if isinstance(m, BasicBlock):
            m.convs.bn2.weight.data.uniform_(0.1, 0.3)
    model.eval()
    x = torch.randn(1, 6, 64, 64)
    with torch.no_grad():
        feats = model.encoder(x)
        model.decoder.head.weight /= model.decoder(feats).std()
        if cfg.textural:
            sem = model.textural.semantic(feats[cfg.ffu_layer])
            model.textural.refine[1].weight /= model.textural(x, sem).std()
    return model


# ----------------------------------------------------------------------------------------------
# Parameters and names


def test_encoder_is_resnet34_with_a_six_channel_stem():
    model = TCPMatting()
    assert count_parameters(model.encoder) == TORCHVISION_RESNET34_NO_FC + 3 * 64 * 49
    state = model.state_dict()
    assert state["encoder.conv1.weight"].shape == (64, 6, 7, 7)
    assert state["encoder.bn1.weight"].shape == (64,)
    assert state["encoder.layer1.block1.convs.conv1.weight"].shape == (64, 64, 3, 3)
    assert state["encoder.layer2.block1.proj_conv.weight"].shape == (128, 64, 1, 1)
    assert state["encoder.layer4.block3.convs.bn2.running_var"].shape == (512,)
    assert "encoder.layer4.block4.convs.conv1.weight" not in state  # 3, 4, 6, 3 blocks
    assert model.encoder_modules() == [model.encoder]


@pytest.mark.parametrize("cfg", [TCPConfig(), TCPConfig(ffu="concat"), TCPConfig(tcp_width=16, ffu_layer=2),
                                 TCPConfig(width=0.5, ffu_layer=0)])
def test_textural_path_count_follows_its_formula(cfg):
    model = TCPMatting(cfg)
    source = model.encoder.channels[cfg.ffu_layer]
    assert count_parameters(model.textural) == textural_count(cfg.tcp_width, source, cfg.ffu)
    baseline = TCPMatting(TCPConfig(width=cfg.width, textural=False))
    assert count_parameters(model) - count_parameters(baseline) == textural_count(cfg.tcp_width, source, cfg.ffu)


@pytest.mark.parametrize("name", TCP_RECIPES)
def test_recipe_parameter_counts(name):
    recipe = load_recipe(name)
    assert recipe.family == "tcp" and recipe.infer.trimap == "onehot" and recipe.infer.stride == 32
    assert count_parameters(build_model(recipe)) == EXACT[name]


def test_skip_convs_option():
    counts = [count_parameters(TCPMatting(TCPConfig(skip_convs=k, textural=False))) for k in (0, 1, 2)]
    # each skip conv is a 3x3 c -> c conv + BN on the skips of 256, 128, 64 and 64 channels
    per_conv = sum(c * c * 9 + 2 * c for c in (256, 128, 64, 64))
    assert counts[1] - counts[0] == per_conv and counts[2] - counts[1] == per_conv


def test_config_rejects_bad_values():
    for bad in (dict(ffu="mul"), dict(ffu_layer=5), dict(tcp_tile=10), dict(skip_convs=-1)):
        with pytest.raises(ValueError):
            TCPConfig(**bad)


# ----------------------------------------------------------------------------------------------
# Forward


@pytest.mark.parametrize("cfg", [TCPConfig(width=0.125, tcp_width=8), TCPConfig(width=0.125, tcp_width=8, ffu="concat"),
                                 TCPConfig(width=0.125, textural=False)])
def test_forward_backward_on_odd_multiples_of_the_stride(cfg):
    torch.manual_seed(0)
    model = TCPMatting(cfg).train()
    x = torch.randn(2, 6, 96, 160, requires_grad=True)
    x_tcp = torch.randn(2, 6, 96, 160, requires_grad=True)
    out = model(x, x_tcp)
    assert out.shape == (2, 1, 96, 160)
    assert out.min() < 0  # training output is the raw tanh, not clipped
    out.square().mean().backward()
    assert torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in model.parameters())
    assert (x_tcp.grad is not None and x_tcp.grad.abs().sum() > 0) == cfg.textural  # it feeds the TCP only
    with pytest.raises(ValueError, match="multiple of 32"):
        model(torch.randn(1, 6, 97, 160))


def test_eval_clips_and_odd_images_go_through_the_pipeline():
    from mattecli.inference.backends import TorchBackend
    from mattecli.inference.pipeline import Pipeline, prepare

    recipe = load_recipe("demo-tcp")
    model = seeded(recipe.model)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (97, 131, 3), dtype=np.uint8)
    trimap = rng.choice(np.array([0, 128, 255], np.uint8), (97, 131))
    x = torch.from_numpy(prepare(image, trimap, recipe.infer))
    assert x.shape == (1, 6, 128, 160)
    with torch.no_grad():
        out = model(x)
        model.training = True  # the top module only: BN stays in eval, the output is the raw tanh
        raw = model(x)
        model.training = False
    assert raw.min() < 0 and 0 <= out.min() and out.max() <= 1
    torch.testing.assert_close(out, raw.clamp(0, 1))
    alpha = Pipeline(TorchBackend(model, recipe), recipe.infer, recipe).run(image, trimap).alpha
    assert alpha.shape == (97, 131) and alpha.dtype == np.uint8


def test_second_input_defaults_to_the_first():
    model = seeded(TCPConfig(width=0.125, tcp_width=8))
    x = torch.randn(1, 6, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x, x))
        assert not torch.equal(model.train()(x), model(x, torch.randn_like(x)))


def test_ffu_projection_commutes_with_the_nearest_resize():
    """Projecting at the source resolution (ours) equals projecting the resized map, BN statistics included."""
    model = TCPMatting(TCPConfig(width=0.25, tcp_width=8)).train()
    source = torch.randn(2, 16, 5, 7)
    before = F.interpolate(model.textural.project(source), scale_factor=4.0, mode="nearest")
    after = model.textural.project(F.interpolate(source, scale_factor=4.0, mode="nearest"))
    torch.testing.assert_close(before, after, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# The textural path at full resolution: receptive field and tiles


def test_textural_receptive_field_radius():
    model = seeded(TCPConfig(width=0.125, tcp_width=8)).double()
    x = torch.randn(1, 6, 44, 44, dtype=torch.float64)
    sem = torch.zeros(1, 8, 11, 11, dtype=torch.float64)  # 1/4 resolution, resized inside
    moved = x.clone()
    moved[0, :, 20, 21] += 1.0
    with torch.no_grad():
        changed = (model.textural(moved, sem) - model.textural(x, sem)).abs()[0, 0] > 0
    rows, cols = np.nonzero(changed.numpy())
    r = TEXTURAL_RADIUS
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (20 - r, 20 + r, 21 - r, 21 + r)


@pytest.mark.parametrize("tile,ffu,layer", [(40, "add", 1), (17, "concat", 2), (64, "add", 0)])
def test_tiled_textural_path_equals_untiled(tile, ffu, layer):
    """Tiles (uneven at the right and bottom, not multiples of the FFU scale) give the untiled result."""
    model = seeded(TCPConfig(width=0.125, tcp_width=8, ffu=ffu, ffu_layer=layer))
    x, x_tcp = torch.randn(1, 6, 96, 160), torch.randn(1, 6, 96, 160)

    def both(model, x, x_tcp):
        sem = model.textural.semantic(model.encoder(x)[layer])
        model.tcp_tile = 0
        whole = model._textural(x_tcp, sem), model(x, x_tcp)
        model.tcp_tile = tile
        return whole, (model._textural(x_tcp, sem), model(x, x_tcp))

    with torch.inference_mode():
        (raw, alpha), (raw_tiled, alpha_tiled) = both(model, x, x_tcp)
        (raw64, _), (raw64_tiled, _) = both(model.double(), x.double(), x_tcp.double())
    # float32: convolutions of other sizes sum in another order; relative to the output's scale
    assert (raw_tiled - raw).abs().max() <= 2e-6 * raw.abs().max()
    torch.testing.assert_close(alpha_tiled, alpha, atol=1e-5, rtol=0)
    assert (raw64_tiled - raw64).abs().max() <= 1e-13 * raw64.abs().max()
    assert ((alpha > 0) & (alpha < 1)).float().mean() > 0.1  # not all clipped: the comparison means something


# ----------------------------------------------------------------------------------------------
# Export


def test_onnx_export_equals_torch_eval(tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model = seeded(TCPConfig(width=0.125, tcp_width=8, tcp_tile=32))  # tiling is off while exporting
    from exporters.onnx import to_onnx

    path = to_onnx(model, tmp_path / "tcp.onnx")  # traced at 96x160, dynamic H/W
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert ops <= {"Conv", "Relu", "MaxPool", "Resize", "Concat", "Add", "Mul", "Tanh", "Clip",
                   "BatchNormalization", "Constant", "Identity"}, ops
    assert {"Resize", "Tanh", "Clip"} <= ops
    session = ort.InferenceSession(str(path))
    for size in ((64, 96), (64, 64)):  # neither the traced size
        x = torch.randn(1, 6, *size)
        with torch.inference_mode():
            want = model(x).numpy()
        got = session.run(None, {"input": x.numpy()})[0]
        assert got.shape == want.shape and np.abs(got - want).max() < 1e-4


# ----------------------------------------------------------------------------------------------
# Loss and trimaps


def test_tcp_loss_background_term_excludes_pixels_at_or_above_theta():
    alpha = torch.tensor([0.0, 0.05, 0.1, 0.5, 1.0, 0.0]).view(1, 1, 1, 6)
    trimap = torch.tensor([128, 128, 128, 128, 128, 0], dtype=torch.uint8).view(1, 1, 1, 6)
    batch = {"alpha": alpha, "trimap": trimap}
    pred = alpha.clone()
    assert tcp_loss(pred, batch).item() == pytest.approx(0.0, abs=1e-5)
    # errors on alpha >= theta pixels (0.1, 0.5, 1.0) count in the alpha term only
    for i in (2, 3, 4):
        p = pred.clone()
        p[..., i] += 0.4
        assert tcp_loss(p, batch).item() == pytest.approx(0.9 * 0.4 / 5, abs=1e-5)
    # an error below theta counts in both: 0.9 * e / 5 (unknown) + 0.1 * e / 2 (two bg pixels)
    p = pred.clone()
    p[..., 1] += 0.4
    assert tcp_loss(p, batch).item() == pytest.approx(0.9 * 0.4 / 5 + 0.1 * 0.4 / 2, abs=1e-5)
    # the known pixel counts nowhere, even with alpha 0
    p = pred.clone()
    p[..., 5] += 0.4
    assert tcp_loss(p, batch).item() == pytest.approx(0.0, abs=1e-5)


def test_tcp_loss_background_term_skips_samples_without_background_pixels():
    alpha = torch.tensor([[0.0, 0.5], [0.5, 0.6]]).view(2, 1, 1, 2)
    batch = {"alpha": alpha, "trimap": torch.full((2, 1, 1, 2), 128, dtype=torch.uint8)}
    pred = alpha.clone()
    pred[0, ..., 0] += 0.4  # the only background pixel of the batch (sample 0)
    # alpha term: sample 0 mean 0.2, sample 1 mean 0 -> 0.1; background term: sample 0 alone -> 0.4
    assert tcp_loss(pred, batch).item() == pytest.approx(0.9 * 0.1 + 0.1 * 0.4, abs=1e-5)


def test_noisy_trimap_statistics():
    """n and p uniform over 0..3, erosion and dilation equally likely, kernels uniform over their ranges."""
    steps = [tri.draw_noise_steps(np.random.default_rng(i)) for i in range(4000)]
    n = np.bincount([len(s) for s in steps], minlength=4) / len(steps)
    assert n.shape == (4,) and np.all(np.abs(n - 0.25) < 0.03), n
    flat = [st for s in steps for st in s]
    p = np.bincount([st.iterations for st in flat], minlength=4) / len(flat)
    assert p.shape == (4,) and np.all(np.abs(p - 0.25) < 0.03), p
    dilate = [st.kernel for st in flat if st.op == "dilate"]
    erode = [st.kernel for st in flat if st.op == "erode"]
    assert abs(len(dilate) / len(flat) - 0.5) < 0.03
    assert (min(dilate), max(dilate), min(erode), max(erode)) == (1, 30, 1, 10)
    assert abs(np.mean(dilate) - 15.5) < 0.6 and abs(np.mean(erode) - 5.5) < 0.3


def test_noisy_trimap_keeps_known_labels_outside_the_moved_band():
    alpha = np.tile(np.clip((np.arange(80, dtype=np.float32) - 30) / 20, 0, 1), (12, 1))
    trimap = tri.eroded_trimap(alpha, 5, 5)
    for seed in range(30):
        noisy, steps = tri.noisy_trimap(trimap, alpha, np.random.default_rng(seed))
        assert set(np.unique(noisy)) <= {0, 128, 255}
        # a known pixel either keeps its label or became unknown (dilation); never fg <-> bg
        known = trimap != 128
        assert np.all((noisy[known] == trimap[known]) | (noisy[known] == 128))
        if not any(s.iterations for s in steps):
            assert np.array_equal(noisy, trimap)


# ----------------------------------------------------------------------------------------------
# Training through the real loop


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from mattecli.data.synthetic import prepare_synthetic

    out = tmp_path_factory.mktemp("synth")
    prepare_synthetic(out, n_train=4, n_test=1, size=96, seed=2)
    return out


@pytest.mark.parametrize("name,second", [("demo-tcp", True), ("tcp-no-robust", False)])
def test_training_steps_feed_the_second_trimap(synth, tmp_path, monkeypatch, name, second):
    from mattecli.train.loop import TrainOptions, train

    sets = ["train.iters=3", "train.batch_size=2", "data.crop_size=64", "data.val_every=0", "train.log_every=1",
            "train.warmup_iters=0", "model.width=0.125", "model.tcp_width=8", "train.pretrained=none"]
    recipe = load_recipe(name, sets)
    calls = []
    forward = TCPMatting.forward

    def spy(self, x, x_tcp=None):
        calls.append((x_tcp is not None, x_tcp is not None and not torch.equal(x, x_tcp)))
        return forward(self, x, x_tcp)

    monkeypatch.setattr(TCPMatting, "forward", spy)
    result = train(TrainOptions(recipe, synth, tmp_path / "run", progress=False))
    assert result.iterations == 3 and np.isfinite(result.last_loss)
    assert len(calls) == 3 and all(passed == second for passed, _ in calls)
    assert any(differs for _, differs in calls) == second  # the noisy trimap moved somewhere
    saved = json.loads((tmp_path / "run" / "recipe.json").read_text())
    assert saved["model"]["family"] == "tcp" and saved["train"]["loss"] == "tcp"
    assert (tmp_path / "run" / "last.safetensors").is_file()


@pytest.mark.slow
def test_demo_tcp_learns(synth, tmp_path):
    """demo-tcp through the real loop: the loss of the last iterations is well below the first's."""
    from mattecli.train.loop import TrainOptions, train

    recipe = load_recipe("demo-tcp", ["train.iters=150", "data.val_every=0", "train.log_every=1"])
    result = train(TrainOptions(recipe, synth, tmp_path / "run", progress=False))
    losses = [e["loss"] for e in result.history]
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10]), losses
