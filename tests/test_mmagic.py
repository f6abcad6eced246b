"""OpenMMLab mmagic's IndexNet: checkpoint import, its inference protocol, its two recipes."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mattecli.errors import UsageError
from mattecli.inference.pipeline import Pipeline
from mattecli.models import build_model
from mattecli.models.layers import count_parameters
from mattecli.recipes import load_recipe
from mattecli.weights import import_mmagic, load_model, mmagic_indexnet_key, save_weights
from tests.test_cli import matte, run_main


def mmagic_names() -> list[str]:
    """mmagic's IndexNet state-dict names in registration order, transcribed from its module tree
    (IndexNetEncoder / IndexNetDecoder of the released config: mmcv ConvModule = conv + bn,
    DepthwiseSeparableConvModule = depthwise_conv + pointwise_conv)."""
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]

    def conv_module(prefix):
        return [f"{prefix}.conv.weight"] + [f"{prefix}.bn.{leaf}" for leaf in bn]

    def separable(prefix):
        return conv_module(f"{prefix}.depthwise_conv") + conv_module(f"{prefix}.pointwise_conv")

    names = conv_module("backbone.encoder.layers.0")
    for i, blocks in enumerate((1, 2, 3, 4, 3, 3, 1), start=1):  # inverted residual stages
        for j in range(blocks):
            p = f"backbone.encoder.layers.{i}.{j}.conv"
            names += separable(p) if i == 1 else conv_module(f"{p}.0") + separable(f"{p}.1")
    for k in range(5):  # m2o, nonlinear: per branch ConvModule(+BN, ReLU6) then a 1x1 ConvModule
        for b in range(4):
            p = f"backbone.encoder.index_layers.{k}.index_blocks.{b}"
            names += conv_module(f"{p}.0") + [f"{p}.1.conv.weight"]
    names += conv_module("backbone.encoder.dconv.convs.0")
    for c in (1, 2, 3):
        names += separable(f"backbone.encoder.dconv.convs.{c}")
    names += conv_module("backbone.encoder.dconv.convs.4.1") + conv_module("backbone.encoder.dconv.project.0")
    for k in range(7):
        names += conv_module(f"backbone.decoder.decoder_layers.{k}.conv")
    return names + conv_module("backbone.decoder.pred.0") + ["backbone.decoder.pred.1.weight"]


def mmagic_checkpoint(path, prefix="", extra=None, drop=()):
    """A checkpoint as mmengine saves one: meta (non-tensor bookkeeping), state_dict, optimizer."""
    torch.manual_seed(5)
    model = build_model(load_recipe("indexnet-mmagic"))
    for m in model.modules():  # non-trivial BN statistics, so a missed buffer would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2)
    ours = list(model.state_dict().values())
    state = {prefix + name: t.clone() for name, t in zip(mmagic_names(), ours) if name not in drop}
    state.update(extra or {})
    meta = {"epoch": 0, "iter": 78000, "cfg": "model = dict(type='IndexNet', ...)", "seed": 1234,
            "experiment_name": "indexnet_mobv2_1xb16-78k_comp1k", "mmengine_version": "0.7.0",
            "dataset_meta": {"classes": None}, "time": "20200618_173817"}
    optimizer = {"state": {0: {"step": torch.tensor(78000.0), "exp_avg": torch.zeros(3)}},
                 "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "params": [0]}]}
    torch.save({"meta": meta, "state_dict": state, "optimizer": optimizer}, path)
    return model.eval()


def test_the_key_map_is_a_rename_of_the_whole_network_in_order():
    model = build_model(load_recipe("indexnet-mmagic"))
    assert [mmagic_indexnet_key(n) for n in mmagic_names()] == list(model.state_dict())
    assert mmagic_indexnet_key("backbone.encoder.layers.9.0.conv.weird.weight") is None
    assert mmagic_indexnet_key("backbone.decoder.decoder_layers.0.conv.conv.weight") == "decoder_layer6.dconv.0.weight"


@pytest.mark.parametrize("name", ["indexnet-mmagic", "indexnet-mmagic-dimaug"])
def test_recipes_are_the_released_network(name):
    recipe = load_recipe(name)
    assert count_parameters(build_model(recipe)) == 5_953_515
    assert recipe.model == load_recipe("indexnet-m2o-nl-ctx").model
    t = recipe.train
    assert (t.iters, t.batch_size, t.lr, t.encoder_lr, t.milestones, t.gamma) == (78000, 16, 1e-2, 1e-4, (52000, 67600), 0.1)
    assert (recipe.data.val_every, t.loss, t.freeze_bn_scope, t.amp) == (2600, "mmagic", "index-encoder", False)
    assert recipe.data.pipeline == ("mmagic" if name == "indexnet-mmagic" else "mmagic-dimaug")
    assert recipe.infer.align == ("resize-down" if name == "indexnet-mmagic" else "pad")
    assert (recipe.infer.normalise, recipe.infer.known, recipe.infer.rounding) == ("pixel", "force", "half-even")


@pytest.mark.parametrize("prefix", ["", "module."])
def test_convert_round_trip_gives_the_same_outputs(tmp_path, prefix):
    src = tmp_path / "indexnet_mobv2_1x16_78k_comp1k_SAD-45.6_20200618_173817-26dd258d.pth"
    reference = mmagic_checkpoint(src, prefix)
    res = matte("convert", src, "--from", "mmagic", "--out", tmp_path / "w.safetensors")
    assert res.exit_code == 0, res.output
    assert "indexnet-mmagic" in res.stdout and "5,953,515" in res.stdout
    loaded, recipe = load_model(tmp_path / "w.safetensors")
    assert recipe == load_recipe("indexnet-mmagic")
    x = torch.randn(1, 4, 64, 96)
    with torch.no_grad():
        assert torch.equal(loaded(x), reference(x))
    for ours, theirs in zip(loaded.state_dict().values(), reference.state_dict().values()):
        assert torch.equal(ours, theirs)


def test_dimaug_recipe_is_chosen_with_recipe(tmp_path):
    mmagic_checkpoint(tmp_path / "c.pth")
    _, recipe = import_mmagic(tmp_path / "c.pth", "indexnet-mmagic-dimaug")
    assert recipe.name == "indexnet-mmagic-dimaug" and recipe.infer.align == "pad"


def test_missing_and_foreign_tensors_are_named(tmp_path):
    mmagic_checkpoint(tmp_path / "c.pth", extra={"backbone.refiner.conv.weight": torch.zeros(1)},
                      drop=["backbone.decoder.pred.1.weight"])
    with pytest.raises(UsageError) as err:
        import_mmagic(tmp_path / "c.pth")
    # no hint to give the --from given ("its tensors are those of --from mmagic")
    assert str(err.value) == f"{tmp_path / 'c.pth'}: 1 tensor(s) that are not mmagic IndexNet's: " \
                             "backbone.refiner.conv.weight"
    # a tensor the key map renames but the model has not, or of another shape: named as the file names it
    ckpt = torch.load(tmp_path / "c.pth", weights_only=True)
    del ckpt["state_dict"]["backbone.refiner.conv.weight"]
    ckpt["state_dict"]["backbone.encoder.layers.8.0.conv.0.conv.weight"] = torch.zeros(1)
    ckpt["state_dict"]["backbone.decoder.pred.1.weight"] = torch.zeros(2)
    torch.save(ckpt, tmp_path / "e.pth")
    with pytest.raises(UsageError) as err:
        import_mmagic(tmp_path / "e.pth")
    assert "not consumed: backbone.encoder.layers.8.0.conv.0.conv.weight;" in str(err.value)
    assert "shape mismatch, the file's vs the model's: backbone.decoder.pred.1.weight (2,) vs" in str(err.value)
    mmagic_checkpoint(tmp_path / "d.pth", drop=["backbone.decoder.pred.1.weight"])
    with pytest.raises(UsageError, match=r"pred\.1\.weight"):
        import_mmagic(tmp_path / "d.pth")


def test_preprocessor_buffers_are_checked_not_loaded(tmp_path):
    mean = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)
    mmagic_checkpoint(tmp_path / "c.pth", extra={"data_preprocessor.mean": mean, "data_preprocessor.std": std})
    import_mmagic(tmp_path / "c.pth")
    mmagic_checkpoint(tmp_path / "d.pth", extra={"data_preprocessor.mean": mean * 0 + 127.5})
    with pytest.raises(UsageError, match="data_preprocessor.mean"):
        import_mmagic(tmp_path / "d.pth")


def test_preprocessor_constants_a_level_off_are_refused(tmp_path):
    """The recipe normalises by mean/std x 255 (std 58.395, 57.12, 57.375 in RGB order, mmagic's
    MattorPreprocessor); the same numbers in BGR order are off by about 1 and must be refused, not taken
    as close enough."""
    std_bgr = torch.tensor([57.375, 57.12, 58.395]).view(3, 1, 1)
    mmagic_checkpoint(tmp_path / "c.pth", extra={"data_preprocessor.std": std_bgr})
    with pytest.raises(UsageError, match="data_preprocessor.std"):
        import_mmagic(tmp_path / "c.pth")


def test_a_linear_holistic_index_block_maps_to_the_bare_conv():
    """mmagic's linear HolisticIndexBlock is one ConvModule without norm (`index_block.conv`); ours is a
    bare Conv2d named `indexnet` (HolisticIndexBlock, models/indexnet.py), not a Sequential's `indexnet.0`.
    encoder.index_layers.i pools after layers 0, 2, 3, 4, 6, which name our index blocks."""
    assert mmagic_indexnet_key("backbone.encoder.index_layers.1.index_block.conv.weight") == "index2.indexnet.weight"
    assert mmagic_indexnet_key("encoder.index_layers.4.index_block.0.conv.weight") == "index6.indexnet.0.weight"
    assert mmagic_indexnet_key("encoder.index_layers.0.index_blocks.3.conv.weight") == "index0.indexnet4.0.weight"


def test_mmengine_bookkeeping_objects_are_read_without_running_them(tmp_path, monkeypatch):
    """A training-time checkpoint pickles mmengine objects (message_hub) and numpy values: they are
    read as inert stand-ins, never imported; the tensors still convert."""
    import sys
    import types

    calls = []

    class HistoryBuffer:  # pickled under mmengine's name; unpickling it normally would import mmengine
        def __init__(self):
            self.log = np.arange(3.0)

        def __setstate__(self, state):
            calls.append(state)

    module = types.ModuleType("fake_mmengine_history_buffer")
    HistoryBuffer.__module__, HistoryBuffer.__qualname__ = module.__name__, "HistoryBuffer"
    module.HistoryBuffer = HistoryBuffer
    monkeypatch.setitem(sys.modules, module.__name__, module)
    mmagic_checkpoint(tmp_path / "c.pth")
    ckpt = torch.load(tmp_path / "c.pth", weights_only=True)
    ckpt["message_hub"] = {"log_scalars": {"train/loss": HistoryBuffer()}}
    ckpt["meta"]["seed"] = np.int64(1234)
    torch.save(ckpt, tmp_path / "c.pth")
    monkeypatch.delitem(sys.modules, module.__name__)
    model, _ = import_mmagic(tmp_path / "c.pth")
    assert calls == [] and count_parameters(model) == 5_953_515


def test_pickled_code_inside_the_state_dict_is_refused(tmp_path):
    from tests.test_weights import Payload

    mmagic_checkpoint(tmp_path / "c.pth", extra={"backbone.x": Payload()})
    with pytest.raises(UsageError, match="not tensors"):
        import_mmagic(tmp_path / "c.pth")


def test_convert_given_other_files_says_what_they_are_in_one_line(tmp_path):
    from mattecli.imageio import write_png

    write_png(tmp_path / "photo.png", np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "notes.txt").write_text("not weights\n")
    (tmp_path / "cut.pth").write_bytes(b"PK\x03\x04" + b"\0" * 40)
    torch.save({"model": {"layer0.0.weight": torch.zeros(1)}, "optimizer": {}, "iteration": 300,
                "torch_rng": torch.get_rng_state(), "best_sad": 1.0}, tmp_path / "iter_00000300.pt")
    save_weights(build_model(load_recipe("indexnet-unet-bilinear")), load_recipe("indexnet-unet-bilinear"),
                 tmp_path / "w.safetensors")
    expected = {"photo.png": "not a PyTorch checkpoint", "notes.txt": "not a PyTorch checkpoint",
                "w.safetensors": "a matte weights file, which needs no conversion", ".": "a folder",
                "cut.pth": "damaged zip archive", "iter_00000300.pt": "matte training checkpoint (iteration 300)"}
    for name, said in expected.items():
        res = run_main("convert", tmp_path / name, "--from", "mmagic", "--out", tmp_path / "o.safetensors")
        assert res.returncode == 2 and said in res.stderr, res.stderr
        assert res.stderr.strip().count("\n") == 0 and "weights_only=False" not in res.stderr
    assert "--resume" in res.stderr and "last.safetensors" in res.stderr


def test_convert_help_lists_every_source():
    from mattecli.cli.convert import SOURCES
    from mattecli.weights import IMPORTERS

    assert list(SOURCES) == list(IMPORTERS)
    out = " ".join(matte("convert", "--help").stdout.split())
    for name in IMPORTERS:
        assert f"{name} =" in out


# ------------------------------------------------------------------------------------------------
# The inference protocol: mmagic's steps transcribed with torch, as base_mattor.py and
# mattor_preprocessor.py run them, against the recipe-driven pipeline


def toy_net():
    """A fixed conv net whose output spreads over and beyond [0, 1] (so clamping and rounding show)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv2d(8, 1, 3, padding=1))
    return net.eval()


def mmagic_predict(net, image_rgb, trimap, resize_method):
    """mmagic: (x - mean) / std on 0-255 RGB, trimap / 255; interp (down) or reflect pad to 32;
    restore; clamp; force trimap 0 and 255; x255; round; uint8."""
    x = torch.from_numpy(image_rgb).permute(2, 0, 1)[None].float()
    x = (x - torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)) / torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)
    t = torch.from_numpy(trimap)[None, None] / 255.0
    h, w = trimap.shape
    if resize_method == "interp":
        size = (h - h % 32, w - w % 32)
        if size != (h, w):
            x, t = F.interpolate(x, size=size, mode="bicubic"), F.interpolate(t, size=size, mode="nearest")
    else:
        ph, pw = 32 * ((h - 1) // 32 + 1) - h, 32 * ((w - 1) // 32 + 1) - w
        x, t = F.pad(x, (0, pw, 0, ph), "reflect"), F.pad(t, (0, pw, 0, ph), "reflect")
    with torch.no_grad():
        pa = net(torch.cat([x, t], dim=1))[0]
    pa = F.interpolate(pa[None], size=(h, w), mode="bicubic")[0] if resize_method == "interp" else pa[:, :h, :w]
    pa = pa[0].clamp(0, 1)
    tri = torch.from_numpy(trimap)
    pa[tri == 255] = 1
    pa[tri == 0] = 0
    return (pa * 255).round().to(torch.uint8).numpy()


@pytest.mark.parametrize("recipe,method", [("indexnet-mmagic", "interp"), ("indexnet-mmagic-dimaug", "pad")])
@pytest.mark.parametrize("h,w", [(75, 101), (33, 97), (64, 47)])
def test_the_pipeline_reproduces_mmagic_on_odd_sizes(recipe, method, h, w):
    rng = np.random.default_rng(h * w)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    trimap = rng.choice(np.array([0, 128, 255, 100, 200], np.uint8), (h, w))  # 100, 200: not forced
    net, seen = toy_net(), {}

    def backend(x):
        seen["ours"] = x
        with torch.no_grad():
            return net(torch.from_numpy(x)).numpy()

    def recording_net(x):
        seen["theirs"] = x.numpy()
        return net(x)

    # Warm-up: in about 1 run of 6 of this file, the first call of the net in the process gave
    # outputs up to 3e-5 away from the second call on the very same input (oneDNN's first
    # convolution of these shapes), moving 2 pixels by one level. Both sides run warm.
    mmagic_predict(net, image, trimap, method)
    ours = Pipeline(backend=backend, cfg=load_recipe(recipe).infer).predict_whole(image, trimap)
    theirs = mmagic_predict(recording_net, image, trimap, method)
    np.testing.assert_array_equal(seen["ours"], seen["theirs"])  # the network input, bit for bit
    np.testing.assert_array_equal(ours, theirs)
    assert ((ours > 0) & (ours < 255) & ((trimap == 100) | (trimap == 200))).any()  # predicted there


def test_resize_down_refuses_an_image_below_the_stride():
    with pytest.raises(ValueError, match="64x20 is under 32 pixels on a side"):
        Pipeline(backend=None, cfg=load_recipe("indexnet-mmagic").infer).predict_whole(
            np.zeros((20, 64, 3), np.uint8), np.zeros((20, 64), np.uint8))


# ------------------------------------------------------------------------------------------------
# Training: the loss and the frozen BatchNorms


def test_mmagic_loss_is_charbonnier_half_plus_composition_one_and_a_half():
    from mattecli.train.losses import LOSSES

    g = torch.Generator().manual_seed(1)
    n, h, w = 3, 16, 16
    batch = {k: torch.rand(n, c, h, w, generator=g) for k, c in (("fg", 3), ("bg", 3), ("image", 3), ("alpha", 1))}
    batch["trimap"] = torch.tensor([0, 128, 255], dtype=torch.uint8)[torch.randint(0, 3, (n, 1, h, w), generator=g)]
    batch["trimap"][2] = 255  # a sample with no unknown pixel counts as 0 in the batch mean, as in mmagic
    pred = torch.rand(n, 1, h, w, generator=g) * 1.4 - 0.2

    # mmagic: charbonnier sqrt(d^2 + 1e-12); mask_reduce_loss sample-wise: sum(loss * w) / (sum(w) + 1e-12) per
    # sample over (C, H, W), then the sum over samples / N; the weight expanded to 3 channels for the composition
    weight = (batch["trimap"] == 128).float()
    def masked(loss, wt):
        wt = wt.expand_as(loss)
        return ((loss * wt).sum(dim=[1, 2, 3]) / (wt.sum(dim=[1, 2, 3]) + 1e-12)).sum() / n
    alpha = masked(torch.sqrt((pred - batch["alpha"]) ** 2 + 1e-12), weight)
    merged = pred * batch["fg"] + (1.0 - pred) * batch["bg"]
    comp = masked(torch.sqrt((merged - batch["image"]) ** 2 + 1e-12), weight.expand(-1, 3, -1, -1))
    torch.testing.assert_close(LOSSES["mmagic"](pred, batch), 0.5 * alpha + 1.5 * comp, rtol=1e-6, atol=1e-7)


def test_index_encoder_scope_freezes_what_mmagic_freezes():
    from mattecli.train.loop import _freeze_encoder_bn

    model = build_model(load_recipe("indexnet-mmagic")).train()
    _freeze_encoder_bn(model, "index-encoder")
    frozen = {name.split(".")[0] for name, m in model.named_modules()
              if isinstance(m, torch.nn.BatchNorm2d) and not m.training}
    training = {name.split(".")[0] for name, m in model.named_modules()
                if isinstance(m, torch.nn.BatchNorm2d) and m.training}
    assert frozen == {f"layer{i}" for i in range(8)} | {f"index{s}" for s in (0, 2, 3, 4, 6)} | {"dconv_pp"}
    assert training == {f"decoder_layer{i}" for i in range(7)} | {"pred"}
    a2u = build_model(load_recipe("a2u-dynamic-cs-d-gn"))
    with pytest.raises(UsageError, match="index-encoder"):
        _freeze_encoder_bn(a2u, "index-encoder")


def test_pretrained_takes_mmagic_encoder_layout():
    from mattecli.train.pretrained import map_encoder

    source = mmagic_checkpoint_encoder()
    model = build_model(load_recipe("indexnet-mmagic"))
    info = map_encoder(model, "indexnet", source)
    assert info["ignored"] == [] and info["loaded"] == len(source)
    own = model.state_dict()
    assert torch.equal(own["layer1.0.conv.3.weight"], source["layers.1.0.conv.pointwise_conv.conv.weight"])
    assert torch.equal(own["layer0.0.weight"][:, :3], source["layers.0.conv.weight"])
    assert not own["layer0.0.weight"][:, 3].any()  # the trimap channel starts at zero


def mmagic_checkpoint_encoder() -> dict:
    """ImageNet MobileNetV2 in mmagic's IndexNetEncoder layout (`layers.*`), a 3-channel stem."""
    torch.manual_seed(2)
    model = build_model(load_recipe("indexnet-mmagic"))
    out = {}
    for name, tensor in zip(mmagic_names(), model.state_dict().values()):
        if name.startswith("backbone.encoder.layers.") and not name.endswith("num_batches_tracked"):
            out[name[len("backbone.encoder."):]] = torch.randn_like(tensor.float()).to(tensor.dtype)
    out["layers.0.conv.weight"] = out["layers.0.conv.weight"][:, :3].clone()
    return out


@pytest.mark.slow
def test_training_leaves_the_encoder_statistics_as_mmagic_does(tmp_path):
    """Two iterations of the recipe (on the `dim` pipeline: the mmagic pipelines live in data/):
    every encoder, index-block and ASPP running statistic stays, the decoder's move."""
    from typer.testing import CliRunner

    from mattecli.cli import app
    from mattecli.train.loop import TrainOptions, train

    res = CliRunner().invoke(app, ["prepare-data", "synthetic", "--out", str(tmp_path / "d"), "--train", "4",
                                   "--test", "1", "--size", "96", "--seed", "1"])
    assert res.exit_code == 0, res.output
    recipe = load_recipe("indexnet-mmagic", ["data.pipeline=dim", "data.crop_size=64", "data.val_every=0",
                                             "train.iters=2", "train.batch_size=2", "train.checkpoint_every=2"])
    train(TrainOptions(recipe, tmp_path / "d", tmp_path / "run", progress=False, seed=3, pretrained="none"))
    before = build_model(recipe).state_dict()  # running statistics start at 0 / 1 whatever the seed
    after, _ = load_model(tmp_path / "run" / "last.safetensors")
    moved = {k.split(".")[0] for k, v in after.state_dict().items()
             if k.endswith("running_mean") and not torch.equal(v, before[k])}
    assert moved == {f"decoder_layer{i}" for i in range(7)} | {"pred"}
