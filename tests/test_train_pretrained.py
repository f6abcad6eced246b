"""`--pretrained`: torchvision-format MobileNetV2 / ResNet-34 state dicts into the encoders.

The torchvision layouts are written out here from the known architectures (torchvision is not a
dependency), and the expected place of every tensor is derived independently of the maps under test.
"""

from collections import OrderedDict

import pytest
import torch
import torch.nn as nn

from mattecli.errors import UsageError
from mattecli.models import build_model
from mattecli.models.layers import BNAct
from mattecli.models.resnet import make_stage
from mattecli.recipes import load_recipe
from mattecli.train.pretrained import (
    a2u_resnet34_key,
    encoder_keys,
    load_pretrained_encoder,
    map_encoder,
    mobilenetv2_key,
    tcp_resnet34_key,
)

MOBILENET_BLOCKS = [(stage, b) for stage, n in enumerate((1, 2, 3, 4, 3, 3, 1), start=1) for b in range(n)]


def mobilenet_checkpoint(model, name_in_block) -> tuple[dict, dict]:
    """A MobileNetV2 ImageNet checkpoint for an IndexNet encoder, random tensors of its shapes, and
    which checkpoint name each encoder key should be filled from: `features.0.*` for the stem,
    `features.{N}.{name_in_block(N, rest)}` for block N (IndexNet's `layerS.B.rest`), plus the
    tensors a matting encoder does not use (the last conv, the classifier)."""
    ckpt = {"features.0.0.weight": torch.randn(32, 3, 3, 3), "features.18.0.weight": torch.randn(1280, 320, 1, 1),
            "classifier.1.weight": torch.randn(1000, 1280)}
    expected = {}
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked") or not key.startswith("layer") or key == "layer0.0.weight":
            continue
        layer, rest = key.split(".", 1)
        if layer == "layer0":
            name = "features.0." + rest
        else:
            block, rest = rest.split(".", 1)
            feature = MOBILENET_BLOCKS.index((int(layer[5:]), int(block))) + 1
            name = f"features.{feature}.{name_in_block(feature, rest)}"
        ckpt[name] = torch.randn_like(value.float()).to(value.dtype)
        expected[key] = name
    return ckpt, expected



def torchvision_resnet34(seed: int = 0) -> dict:
    """Every tensor of torchvision's `resnet34()` state dict, with its shape, filled with noise."""
    g = torch.Generator().manual_seed(seed)
    sd = OrderedDict()

    def conv(name, cout, cin, k):
        sd[name + ".weight"] = torch.randn(cout, cin, k, k, generator=g)

    def bn(name, c):
        sd[name + ".weight"] = torch.randn(c, generator=g)
        sd[name + ".bias"] = torch.randn(c, generator=g)
        sd[name + ".running_mean"] = torch.randn(c, generator=g)
        sd[name + ".running_var"] = torch.rand(c, generator=g) + 0.5
        sd[name + ".num_batches_tracked"] = torch.tensor(0)

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    cin = 64
    for stage, (blocks, c) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512)), start=1):
        for i in range(blocks):
            p = f"layer{stage}.{i}."
            conv(p + "conv1", c, cin if i == 0 else c, 3)
            bn(p + "bn1", c)
            conv(p + "conv2", c, c, 3)
            bn(p + "bn2", c)
            if i == 0 and stage > 1:
                conv(p + "downsample.0", c, cin, 1)
                bn(p + "downsample.1", c)
        cin = c
    sd["fc.weight"] = torch.randn(1000, 512, generator=g)
    sd["fc.bias"] = torch.randn(1000, generator=g)
    return sd


def test_resnet34_layout_has_torchvision_size():
    sd = torchvision_resnet34()
    params = sum(v.numel() for k, v in sd.items() if not k.endswith(("running_mean", "running_var", "tracked")))
    assert params == 21_797_672  # torchvision resnet34: 21.8M parameters
    assert len(sd) == 218  # its state dict's entry count


# torchvision's names inside a basic block, from ours (written independently of the maps)
BLOCK = {"convs.conv1": "conv1", "convs.bn1": "bn1", "convs.conv2": "conv2", "convs.bn2": "bn2",
         "proj_conv": "downsample.0", "proj_bn": "downsample.1"}
SPLIT = {"layer1.conv1": "conv1", "layer1.bn1": "bn1", "layer2.conv2": "conv2", "layer2.bn2": "bn2",
         "proj_conv": "downsample.0", "proj_bn": "downsample.1"}


def _inner(rest: str, table: dict) -> str:
    module, leaf = rest.rsplit(".", 1)
    return f"{table[module]}.{leaf}"


def a2u_expected_source(key: str) -> str:
    """The torchvision key that must land in A2U encoder tensor `key`."""
    top, rest = key.split(".", 1)
    if top == "layer0":
        return {"0": "conv1", "1": "bn1"}[rest.split(".")[0]] + "." + rest.split(".", 1)[1]
    if top == "layer1":
        block, rest = rest.split(".", 1)
        return f"layer1.{int(block[5:]) - 1}." + _inner(rest, BLOCK)
    stage, part = top[5], top[7]
    if part == "1":
        return f"layer{stage}.0." + _inner(rest, SPLIT)
    block, rest = rest.split(".", 1)
    return f"layer{stage}.{int(block[5:])}." + _inner(rest, BLOCK)


def test_a2u_resnet34_every_encoder_tensor_lands(tmp_path):
    recipe = load_recipe("a2u-dynamic-cs-d-gn")
    model = build_model(recipe)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tv = torchvision_resnet34()
    torch.save(tv, tmp_path / "resnet34.pth")
    info = load_pretrained_encoder(model, recipe, tmp_path / "resnet34.pth")
    state = model.state_dict()
    keys = encoder_keys(model)
    assert len(keys) == 125  # stem 5, 11 blocks x 10 (layer3 keeps 4 of 6), 2 projections x 5
    for key in keys:
        source = tv[a2u_expected_source(key)]
        if key == "layer0.0.weight":
            assert state[key].shape == (64, 4, 7, 7)
            assert torch.equal(state[key][:, :3], source) and (state[key][:, 3] == 0).all()
        else:
            assert torch.equal(state[key], source), key
    # the A2U kernel generators and the decoder are untouched
    for key in ("layer2_1.bilinear.bconv_U.1.weight", "bilinear0.bconv_U.1.weight", "pred.1.weight",
                "dconv_pp.aspp1.atrous_conv.0.weight"):
        assert torch.equal(state[key], before[key]), key
    ignored = set(info["ignored"])
    assert {"fc.weight", "layer3.4.conv1.weight", "layer3.5.bn2.bias", "layer4.0.downsample.0.weight"} <= ignored
    assert not any(k.startswith(("layer1.", "layer2.")) for k in ignored)


def test_a2u_key_map_examples():
    assert a2u_resnet34_key("layer2.0.conv1.weight") == "layer2_1.layer1.conv1.weight"
    assert a2u_resnet34_key("layer3.0.downsample.1.running_var") == "layer3_1.proj_bn.running_var"
    assert a2u_resnet34_key("layer3.3.bn2.bias") == "layer3_2.block3.convs.bn2.bias"
    assert a2u_resnet34_key("layer1.0.conv2.weight") == "layer1.block1.convs.conv2.weight"
    assert a2u_resnet34_key("layer4.1.conv1.weight") is None and a2u_resnet34_key("fc.bias") is None


class TCPStandIn(nn.Module):
    """TCP's encoder layout (models/tcp.py lands in another branch): a 6-channel 7x7 stem, BNAct,
    ResNet-34 stages of relu BasicBlocks named block1.., plus a decoder that is not encoder."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.conv1 = nn.Conv2d(6, 64, 7, 2, 3, bias=False)
        self.encoder.bn1 = BNAct(64, "relu")
        cin = 64
        for stage, (blocks, c) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512)), start=1):
            stage_module = make_stage(cin, c, blocks, stride=1 if stage == 1 else 2, activation="relu", first=1)
            setattr(self.encoder, f"layer{stage}", stage_module)
            cin = c
        self.decoder = nn.Conv2d(512, 1, 3, 1, 1)

    def encoder_modules(self):
        return [self.encoder]


def tcp_models():
    """The stand-in, and the real TCP model (default options) once the family exists."""
    from mattecli.models import FAMILIES

    models = [TCPStandIn]
    if "tcp" in FAMILIES:
        config, network = FAMILIES["tcp"]
        models.append(lambda: network(config()))
    return models


def tcp_expected_source(key: str) -> str:
    rest = key[len("encoder."):]
    if rest.startswith(("conv1.", "bn1.")):
        return rest
    layer, block, rest = rest.split(".", 2)
    return f"{layer}.{int(block[5:]) - 1}." + _inner(rest, BLOCK)


@pytest.mark.parametrize("make_model", tcp_models())
def test_tcp_resnet34_every_encoder_tensor_lands(make_model):
    model = make_model()
    decoder_before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("encoder.")}
    tv = torchvision_resnet34(seed=1)
    info = map_encoder(model, "tcp", tv)
    state = model.state_dict()
    keys = encoder_keys(model)
    assert len(keys) == 180  # all of ResNet-34 but fc and the 36 BN step counters
    for key in keys:
        source = tv[tcp_expected_source(key)]
        if key == "encoder.conv1.weight":
            assert state[key].shape == (64, 6, 7, 7)
            assert torch.equal(state[key][:, :3], source) and (state[key][:, 3:] == 0).all()
        else:
            assert torch.equal(state[key], source), key
    assert sorted(info["ignored"]) == ["fc.bias", "fc.weight"]
    for key, value in decoder_before.items():
        assert torch.equal(state[key], value), key
    assert tcp_resnet34_key("layer2.0.downsample.0.weight") == "encoder.layer2.block1.proj_conv.weight"


def test_strict_coverage_and_shape_errors():
    tv = torchvision_resnet34()
    del tv["layer2.1.conv2.weight"]
    with pytest.raises(UsageError, match=r"r34\.pth: not a ResNet-34 state dict in the torchvision layout; 1 encoder tensors "
                                         r"not filled: layer2_2\.block1\.convs\.conv2\.weight"):
        map_encoder(build_model(load_recipe("a2u-baseline-nearest")), "a2u", tv, where="r34.pth")
    with pytest.raises(UsageError, match=r"conv1\.weight has shape \(64, 3, 7, 7\), the encoder's layer0\.0\.weight \(16, 4, 7, 7\)"):
        map_encoder(build_model(load_recipe("demo-a2u")), "a2u", torchvision_resnet34())
    with pytest.raises(UsageError, match="no ImageNet encoder map for the nosuch family"):
        map_encoder(TCPStandIn(), "nosuch", {})


def test_pretrained_mobilenetv2_is_mapped(tmp_path):
    assert mobilenetv2_key("features.1.conv.1.weight") == "layer1.0.conv.3.weight"
    assert mobilenetv2_key("features.17.conv.3.running_var") == "layer7.0.conv.7.running_var"
    assert mobilenetv2_key("features.18.0.weight") is None and mobilenetv2_key("classifier.1.bias") is None
    recipe = load_recipe("indexnet-m2o-nl-ctx")
    model = build_model(recipe)
    # a torchvision-layout state dict, written from torchvision's layout independently of the map
    t1 = {"conv.0": "conv.0.0", "conv.1": "conv.0.1", "conv.3": "conv.1", "conv.4": "conv.2"}
    t6 = {"conv.0": "conv.0.0", "conv.1": "conv.0.1", "conv.3": "conv.1.0", "conv.4": "conv.1.1",
          "conv.6": "conv.2", "conv.7": "conv.3"}

    def torchvision_name(feature, rest):
        conv, index, leaf = rest.split(".")
        return (t1 if feature == 1 else t6)[f"{conv}.{index}"] + "." + leaf

    tv, expected = mobilenet_checkpoint(model, torchvision_name)
    torch.save(tv, tmp_path / "mobilenet_v2.pth")
    info = load_pretrained_encoder(model, recipe, tmp_path / "mobilenet_v2.pth")
    assert sorted(info["ignored"]) == ["classifier.1.weight", "features.18.0.weight"]
    state = model.state_dict()
    w = state["layer0.0.weight"]
    assert torch.equal(w[:, :3], tv["features.0.0.weight"]) and (w[:, 3] == 0).all()
    assert set(expected) | {"layer0.0.weight"} == set(encoder_keys(model))
    for key, name in expected.items():
        assert torch.equal(state[key], tv[name]), key


def test_pretrained_csail_flat_mobilenetv2_as_hlmobilenetv2_loads_it(tmp_path):
    """The checkpoint IndexNet's code initialises from (hlmobilenetv2.py:59-60, CORRESP_NAME): flat
    `features.N.conv.K` keys, the same K as IndexNet's blocks; its stem gets a zero trimap channel."""
    recipe = load_recipe("indexnet-m2o-nl-ctx")
    model = build_model(recipe)
    csail, expected = mobilenet_checkpoint(model, lambda feature, rest: rest)  # the same K in both layouts
    assert "features.1.conv.1.weight" in csail and "features.2.conv.7.running_var" in csail  # the flat layout
    torch.save({"state_dict": {"module." + k: v for k, v in csail.items()}}, tmp_path / "mobilenet_v2.pth.tar")
    info = load_pretrained_encoder(model, recipe, tmp_path / "mobilenet_v2.pth.tar")
    assert info["layout"] == "CSAIL flat MobileNetV2"
    assert sorted(info["ignored"]) == ["classifier.1.weight", "features.18.0.weight"]
    state = model.state_dict()
    assert torch.equal(state["layer0.0.weight"][:, :3], csail["features.0.0.weight"])
    assert (state["layer0.0.weight"][:, 3] == 0).all()
    for key, name in expected.items():
        assert torch.equal(state[key], csail[name]), key


def abn_resnet34(tv: dict) -> dict:
    """The InPlace-ABN ResNet-34 the A2U code loads (resnet.py:29-210), in its exact key layout,
    holding the tensors of a torchvision-layout dict: `module.modN.blockB.convs.convK`, `proj_*`."""
    out = {}
    for name, value in tv.items():
        if name.endswith("num_batches_tracked"):
            continue
        if name.startswith(("conv1.", "bn1.")):
            new = "mod1." + name
        elif name.startswith("fc."):
            new = "classifier." + name
        else:
            stage, block, rest = name.split(".", 2)
            rest = {"conv1": "convs.conv1", "bn1": "convs.bn1", "conv2": "convs.conv2", "bn2": "convs.bn2",
                    "downsample": "proj"}[rest.split(".")[0]] + "." + rest.split(".", 1)[1]
            rest = rest.replace("proj.0.", "proj_conv.").replace("proj.1.", "proj_bn.")
            new = f"mod{int(stage[5:]) + 1}.block{int(block) + 1}.{rest}"
        out["module." + new] = value
    return out


def test_pretrained_a2u_inplace_abn_resnet34_as_resnet_py_loads_it(tmp_path):
    """The same tensors through torchvision's layout and through the authors' InPlace-ABN layout land
    in the same places; InPlace-ABN's scale |w| + 1e-5 becomes our BatchNorm weight."""
    recipe = load_recipe("a2u-dynamic-cs-d-gn")
    tv = torchvision_resnet34(seed=4)
    abn = abn_resnet34(tv)
    assert "module.mod3.block1.proj_bn.running_var" in abn and "module.mod4.block6.convs.conv2.weight" in abn
    torch.save({"state_dict": abn}, tmp_path / "resnet34.pth.tar")
    via_tv, via_abn = build_model(recipe), build_model(recipe)
    map_encoder(via_tv, "a2u", tv)
    info = load_pretrained_encoder(via_abn, recipe, tmp_path / "resnet34.pth.tar")
    assert info["layout"] == "InPlace-ABN ResNet-34"
    assert all(k.startswith(("mod4.block5", "mod4.block6", "mod5", "classifier")) for k in info["ignored"])
    a, b = via_tv.state_dict(), via_abn.state_dict()
    bn_weights = {k[: -len("running_mean")] + "weight" for k in a if k.endswith("running_mean")}
    for key in encoder_keys(via_tv):
        want = a[key].abs() + 1e-5 if key in bn_weights else a[key]
        assert torch.equal(b[key], want), key


def test_a_matte_weights_file_as_pretrained_says_what_pretrained_takes(tmp_path):
    """A run's best.safetensors given to --pretrained (to fine-tune) was refused in convert's words:
    'a matte weights file, which needs no conversion (infer, eval, export and bench take it)'."""
    from mattecli.weights import save_weights

    recipe = load_recipe("demo-tcp")
    save_weights(build_model(recipe), recipe, tmp_path / "best.safetensors")
    with pytest.raises(UsageError, match=r"best.safetensors: a matte weights file \(a whole demo-tcp model\), "
                                         r"not an ImageNet encoder: --pretrained takes torchvision's"):
        load_pretrained_encoder(build_model(recipe), recipe, tmp_path / "best.safetensors")
