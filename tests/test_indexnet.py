import json

import pytest
import torch
import torch.nn.functional as F

from mattecli.models import build_model
from mattecli.models.indexnet import (IndexNetConfig, IndexNetMatting, indexed_pool, indexed_upsample,
                                      max_index)
from mattecli.models.layers import count_parameters
from mattecli.models.mobilenetv2 import InvertedResidual
from mattecli.recipes import list_recipe_names, load_recipe

# The authors' code, output stride 32, ASPP, 5x5 decoder (specs/indexnet.md)
PARAMS = {
    "indexnet-hin-lin": 3_758_251, "indexnet-hin-lin-ctx": 3_773_227,
    "indexnet-hin-nl": 4_015_563, "indexnet-hin-nl-ctx": 4_791_243,
    "indexnet-o2o-lin": 3_758_251, "indexnet-o2o-lin-ctx": 3_773_227,
    "indexnet-o2o-nl": 3_761_995, "indexnet-o2o-nl-ctx": 3_776_971,
    "indexnet-m2o-lin": 4_270_379, "indexnet-m2o-lin-ctx": 5_821_739,
    "indexnet-m2o-nl": 4_402_155, "indexnet-m2o-nl-ctx": 5_953_515,
    "indexnet-mmagic": 5_953_515, "indexnet-mmagic-dimaug": 5_953_515,  # mmagic: the same network
    "indexnet-unet-maxunpool": 3_753_259, "indexnet-unet-maxunpool-w1.4": 7_254_215,
    # parameter-free baselines: the network without index blocks
    "indexnet-hin-maxindex": 3_753_259, "indexnet-unet-bilinear": 3_753_259,
}
INDEXNET_RECIPES = [n for n in list_recipe_names() if n.startswith("indexnet-")]


def test_every_indexnet_recipe_has_a_count():
    assert sorted(PARAMS) == sorted(INDEXNET_RECIPES)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_trainable_parameters_equal_the_authors_code(name):
    assert count_parameters(build_model(load_recipe(name))) == PARAMS[name]


@pytest.mark.parametrize("listing", ["indexnet_official_keys_m2o_nl_ctx.json", "indexnet_official_keys_hin_nl_ctx.json"])
def test_state_dict_layout_equals_the_released_checkpoint(shared_specs, listing):
    spec = json.loads((shared_specs / listing).read_text())
    model = build_model(load_recipe(spec["variant"]))
    ours = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert ours == [(e["name"], e["shape"]) for e in spec["keys"]]
    assert count_parameters(model) == spec["counts"]["parameters"]


def test_indexed_pooling_with_one_hot_indices_is_max_pooling():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 10)
    idx = max_index(x)
    assert torch.equal(idx.sum(dim=(2, 3)), torch.full((2, 3), 15.0))  # one hit per 2x2 cell
    assert torch.equal(indexed_pool(x, idx), F.max_pool2d(x, 2))


def test_indexed_pooling_with_uniform_indices_is_average_pooling():
    x = torch.randn(2, 3, 6, 10)
    assert torch.allclose(indexed_pool(x, torch.full_like(x, 0.25)), F.avg_pool2d(x, 2), atol=1e-7)


def test_indexed_upsampling_with_ones_is_nearest_and_with_one_hot_is_max_unpooling():
    y = torch.randn(2, 3, 3, 5)
    assert torch.equal(indexed_upsample(y, torch.ones(2, 3, 6, 10)), F.interpolate(y, scale_factor=2, mode="nearest"))
    x = torch.randn(2, 3, 6, 10)
    pooled, where = F.max_pool2d(x, 2, return_indices=True)
    assert torch.equal(indexed_upsample(pooled, max_index(x)), F.max_unpool2d(pooled, where, 2, output_size=x.shape[2:]))


def test_max_index_breaks_ties_like_max_pooling():
    x = torch.zeros(1, 1, 2, 4)
    x[0, 0, 1, 0] = x[0, 0, 1, 1] = 1.0  # tie in the first cell; all-equal second cell
    _, where = F.max_pool2d(x, 2, return_indices=True)
    onehot = max_index(x)
    assert onehot.flatten().nonzero().flatten().tolist() == sorted(where.flatten().tolist())


def test_index_normalisation_softmax_of_sigmoid():
    model = IndexNetMatting(IndexNetConfig(index="m2o")).eval()
    x = torch.randn(1, 32, 8, 8)
    idx_en, idx_de = model.index0(x)
    cells = F.pixel_unshuffle(idx_en, 2).view(1, 32, 4, 4, 4)
    assert torch.allclose(cells.sum(dim=2), torch.ones(1, 32, 4, 4))
    assert idx_en.min() > 0.109 and idx_en.max() < 0.476  # softmax of values in (0, 1)
    sig = F.pixel_unshuffle(idx_de, 2).view(1, 32, 4, 4, 4)
    assert torch.allclose(torch.softmax(sig, dim=2), cells)
    # branch k lands at sub-pixel (k // 2, k % 2): indexnet2 -> top-right
    logits2 = model.index0.indexnet2(x)
    assert torch.allclose(idx_de[:, :, 0::2, 1::2], torch.sigmoid(logits2))


def test_inverted_residual_pads_its_input_not_the_depthwise_conv():
    torch.manual_seed(0)
    block = InvertedResidual(8, 8, 6).eval()
    for m in block.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1); m.bias.data.uniform_(0.5, 1)
    x = torch.randn(1, 8, 5, 7)
    conv = block.conv
    # transcription: zero-pad the input, then every layer with padding 0
    expected = x + conv[7](conv[6](conv[5](conv[4](conv[3](conv[2](conv[1](conv[0](F.pad(x, (1, 1, 1, 1))))))))))
    assert torch.allclose(block(x), expected, atol=1e-6)
    # padding inside the depthwise conv instead differs on the border
    inner = conv[2](conv[1](conv[0](x)))
    wrong = x + conv[7](conv[6](conv[5](conv[4](F.conv2d(inner, conv[3].weight, padding=1, groups=conv[3].groups)))))
    assert not torch.allclose(block(x)[..., 0, :], wrong[..., 0, :], atol=1e-3)


@pytest.mark.parametrize("name", INDEXNET_RECIPES)
def test_forward_backward_on_non_square_input(name):
    torch.manual_seed(0)
    model = build_model(load_recipe(name)).train()
    x = torch.randn(2, 4, 64, 96)
    out = model(x)
    assert out.shape == (2, 1, 64, 96)
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.layer0[0].weight.grad.abs().sum() > 0  # gradients reach the stem through the index pooling


def test_input_must_be_aligned():
    with pytest.raises(ValueError, match="multiple of 32"):
        IndexNetMatting().eval()(torch.zeros(1, 4, 64, 97))


def test_golden_output_of_a_seeded_model():
    torch.manual_seed(1234)
    model = build_model(load_recipe("indexnet-m2o-nl-ctx")).eval()
    x = torch.randn(1, 4, 64, 96, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        out = model(x)
    # recorded with torch 2.13.0 (CPU); a change here means the architecture or init changed
    got = [round(v, 4) for v in (out.mean().item(), out.std().item(), out[0, 0, 10, 20].item(), out[0, 0, 40, 70].item())]
    assert got == pytest.approx(GOLDEN, rel=1e-3, abs=1e-4)


GOLDEN = [-0.4718, 0.6383, -0.2807, -0.3636]


@pytest.mark.gpu
def test_index_maps_stay_float16_under_cuda_autocast():
    """CUDA's autocast runs a plain softmax in float32; the index maps, the pooled features and the
    skips must stay float16 so that a --half pass moves half the bytes (docs/benchmarks.md#gpu-figures)."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from mattecli.models.indexnet import _normalise

    logits = torch.randn(1, 8, 4, 6, 6, device="cuda", dtype=torch.float16)
    with torch.autocast("cuda", dtype=torch.float16):
        idx_en, idx_de = _normalise(logits)
    assert idx_en.dtype == idx_de.dtype == torch.float16
    want = torch.softmax(torch.sigmoid(logits.float()), dim=2)
    torch.testing.assert_close(idx_en.float(), torch.nn.functional.pixel_shuffle(want.reshape(1, 32, 6, 6), 2),
                               rtol=0, atol=2e-3)
