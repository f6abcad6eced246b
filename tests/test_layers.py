"""models/layers.py: folding BatchNorm into the convolution before it (the CUDA inference path)."""

import copy

import pytest
import torch
import torch.nn as nn

from mattecli.models import build_model
from mattecli.models.layers import BNAct, fold_batchnorm
from mattecli.recipes import load_recipe


def _with_running_stats(model: nn.Module) -> nn.Module:
    """Seeded BatchNorm statistics and affine parameters far from the identity, in eval mode, so a
    fold that dropped or misplaced any of them would change the output."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5, generator=g)
            m.running_var.uniform_(0.5, 2.0, generator=g)
            m.weight.data.uniform_(0.5, 1.5, generator=g)
            m.bias.data.uniform_(-0.2, 0.2, generator=g)
    return model.eval()


# one recipe of each family, plus the Sequential / named-pair layouts each builds on:
# IndexNet (MobileNetV2 Sequentials, index blocks, ASPP), A2U (BNAct with LeakyReLU, SplitBlock
# projections), TCP (ResNet-34 stem conv1/bn1 pair, BasicBlock projections, BNAct with ReLU)
@pytest.mark.parametrize("name,batchnorms", [("indexnet-m2o-nl-ctx", 88), ("a2u-dynamic-cs-d-gn", 58), ("tcp", 61)])
def test_every_batchnorm_folds_and_the_function_is_unchanged(name, batchnorms):
    recipe = load_recipe(name)
    torch.manual_seed(0)
    model = _with_running_stats(build_model(recipe))
    folded = copy.deepcopy(model)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == batchnorms
    assert fold_batchnorm(folded) == batchnorms
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(1, recipe.infer.input_channels, 96, 96, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want, got = model(x), folded(x)
    scale = want.abs().max()
    assert scale > 0.1
    assert (want - got).abs().max() <= 1e-3 * scale  # float rounding through a deep network (TCP: 6e-4)


def test_fold_keeps_the_activation_of_bnact_and_skips_what_is_not_a_conv_bn_pair():
    torch.manual_seed(0)
    seq = _with_running_stats(nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=True), BNAct(8, "leaky_relu", 0.2),  # folded, bias kept
        nn.Conv2d(8, 8, 1), nn.ReLU(), nn.BatchNorm2d(8),  # a BatchNorm after an activation: left
        nn.Conv2d(8, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)))  # folded: Identity
    trained = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))  # training mode: left alone
    x = torch.randn(2, 3, 9, 11)
    with torch.no_grad():
        want = seq(x)
        assert fold_batchnorm(seq) == 2 and fold_batchnorm(trained) == 0
        torch.testing.assert_close(seq(x), want, rtol=1e-5, atol=1e-6)
    assert isinstance(seq[4], nn.BatchNorm2d) and isinstance(seq[6], nn.Identity)
    assert seq[1].activation == "leaky_relu" and seq[1].slope == 0.2 and not isinstance(seq[1], nn.BatchNorm2d)
    assert isinstance(trained[1], nn.BatchNorm2d)


@pytest.mark.parametrize("name", ["indexnet-m2o-nl-ctx", "a2u-dynamic-cs-d-gn", "tcp"])
def test_half_precision_convolution_weights_give_autocasts_result_bit_for_bit(name):
    """`--half` runs a copy whose convolutions already hold their weights in half precision, so
    autocast does not cast them at every call: the output is the same bit for bit (here under CPU
    autocast in float16; on CUDA through benchmarks/cuda_estimate.py's replay, also bit for bit)."""
    from mattecli.inference.backends import TorchBackend
    from mattecli.models.layers import convolutions_in

    recipe = load_recipe(name)
    torch.manual_seed(0)
    model = build_model(recipe).eval()
    half = copy.deepcopy(model)
    assert convolutions_in(half, torch.float16) == sum(isinstance(m, nn.Conv2d) for m in model.modules())
    assert all(p.dtype == torch.float16 for m in half.modules() if isinstance(m, nn.Conv2d) for p in m.parameters())
    x = torch.randn(1, recipe.infer.input_channels, 64, 96)
    with torch.inference_mode():
        with torch.autocast("cpu", dtype=torch.float16):
            want = model(x).float()
            assert torch.equal(half(x).float(), want)
        backend = TorchBackend(model, recipe, "cpu", half=True)
        assert torch.equal(backend.forward(x), want)
        assert next(model.parameters()).dtype == torch.float32  # the model as given: the float32 redo's


def test_bnact_applies_its_own_negative_slope():
    """BNAct(…, "leaky_relu", 0.2) in eval with fresh statistics (mean 0, var 1, weight 1, bias 0):
    x / sqrt(1 + 1e-5), negatives times 0.2 (not LeakyReLU's default 0.01)."""
    bn = BNAct(2, "leaky_relu", 0.2).eval()
    x = torch.tensor([-1.0, 2.0]).view(1, 2, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(bn(x).flatten(), torch.tensor([-0.2, 2.0]) / (1 + 1e-5) ** 0.5)


def test_conv_norm_act_pads_a_dilated_kernel_to_keep_the_size():
    """Padding dilation * (kernel - 1) / 2 keeps an odd kernel's output the size of its input."""
    from mattecli.models.layers import conv_norm_act

    block = conv_norm_act(2, 3, 3, dilation=2)
    assert block[0].padding == (2, 2) and block[0].dilation == (2, 2)
    assert block(torch.randn(1, 2, 9, 7)).shape == (1, 3, 9, 7)
