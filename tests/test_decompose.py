"""exporters/decompose.py: every export-form swap equals the module it replaces (DESIGN invariant 3:
to 1e-5 on random inputs of odd sizes), ties included."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from exporters.decompose import BinAvgPool, ExportMaxIndex, decompose, max_index_plain
from mattecli.models import build_model
from mattecli.models.a2u import A2UKernels, set_a2u_form
from mattecli.models.indexnet import MaxIndex, max_index
from mattecli.recipes import load_recipe


@pytest.mark.parametrize("shape", [(2, 3, 14, 10), (1, 5, 6, 22), (3, 1, 2, 2)])
def test_plain_max_index_equals_argmax_one_hot(shape):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))
    assert torch.equal(max_index_plain(x), max_index(x))


@pytest.mark.parametrize("levels", [2, 3])
def test_plain_max_index_keeps_the_first_of_tied_maxima(levels):
    """Few distinct values make ties in most cells; the first in raster order wins, as torch's argmax."""
    x = torch.randint(0, levels, (2, 4, 18, 26), generator=torch.Generator().manual_seed(levels)).float()
    assert torch.equal(max_index_plain(x), max_index(x))
    cells = torch.tensor([[5.0, 5.0], [5.0, 5.0]]), torch.tensor([[1.0, 3.0], [3.0, 0.0]]), \
        torch.tensor([[0.0, -1.0], [2.0, 2.0]]), torch.tensor([[-4.0, -4.0], [-4.0, -3.0]])
    want = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    for cell, onehot in zip(cells, want):
        got = max_index_plain(cell.view(1, 1, 2, 2)).flatten().tolist()
        assert got == onehot, (cell.tolist(), got)


@pytest.mark.parametrize("holistic", [False, True])
def test_export_max_index_module_equals_max_index(holistic):
    x = torch.randn(2, 6, 22, 30)
    want, got = MaxIndex(holistic)(x), ExportMaxIndex(holistic)(x)
    assert all(torch.equal(g, w) for g, w in zip(got, want))


@pytest.mark.parametrize("output_size", [6, (3, 5), (1, 4)])
@pytest.mark.parametrize("size", [(13, 7), (41, 23), (6, 6)])
def test_bin_pooling_equals_adaptive_pooling(output_size, size):
    x = torch.randn(2, 3, *size)
    torch.testing.assert_close(BinAvgPool(output_size)(x), nn.AdaptiveAvgPool2d(output_size)(x), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------
# Whole networks: the decomposed copy computes what the training form computes. A2U in float64, so
# the formulations are compared, not float32 rounding through dozens of layers of a random network;
# IndexNet's swap is exact, so float32 (float64 convolutions are very slow on a CPU).


def _network(name: str, *overrides: str, dtype=torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return build_model(load_recipe(name, list(overrides))).to(dtype).eval()


@pytest.mark.parametrize("name", ["indexnet-unet-maxunpool", "indexnet-hin-maxindex", "indexnet-unet-bilinear"])
def test_decomposed_indexnet_equals_original(name):
    model = _network(name, "model.width_mult=0.35")
    export = decompose(model)
    assert not any(isinstance(m, MaxIndex) for m in export.modules())
    assert any(isinstance(m, MaxIndex) for m in model.modules()), "decompose must not touch the caller's model"
    x = torch.randn(1, 4, 5 * 32, 3 * 32)  # odd multiples of the stride, non-square
    with torch.no_grad():
        torch.testing.assert_close(export(x), model(x), atol=1e-5, rtol=0)


# float64 convolutions are slow on a CPU: the default suite runs the released layout (demo-a2u);
# the static point-wise and hybrid generators are compared site by site in tests/test_a2u.py.
@pytest.mark.parametrize("name", ["demo-a2u", pytest.param("a2u-static-pw-cw", marks=pytest.mark.slow),
                                  pytest.param("a2u-hybrid-cs", marks=pytest.mark.slow)])
def test_decomposed_a2u_equals_the_unfold_form(name):
    model = set_a2u_form(_network(name, "model.width=0.25", dtype=torch.float64), "unfold")
    export = decompose(model)
    assert {m.form for m in export.a2u_sites()} == {"shift"}
    assert {m.form for m in model.a2u_sites()} == {"unfold"}, "decompose must not touch the caller's model"
    x = torch.randn(1, 4, 5 * 16, 3 * 16, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(export(x), model(x), atol=1e-5, rtol=0)


def test_decompose_swaps_adaptive_pooling_but_keeps_global_pooling():
    net = nn.Sequential(nn.AdaptiveAvgPool2d(6), nn.AdaptiveAvgPool2d(1), nn.Sequential(nn.AdaptiveAvgPool2d((2, 3))))
    export = decompose(net)
    assert isinstance(export[0], BinAvgPool) and isinstance(export[2][0], BinAvgPool)
    assert isinstance(export[1], nn.AdaptiveAvgPool2d)
    assert isinstance(net[0], nn.AdaptiveAvgPool2d)
    x = torch.randn(1, 2, 19, 27)
    torch.testing.assert_close(export[0](x), net[0](x), atol=1e-5, rtol=0)


def test_a2u_kernel_generators_have_no_live_adaptive_pooling_after_decompose():
    """The generators' `bconv_*` pools exist for the checkpoints' names; the forward pools itself."""
    export = decompose(_network("demo-a2u"))
    sites = [m for m in export.modules() if isinstance(m, A2UKernels)]
    assert sites and not any(isinstance(m, nn.AdaptiveAvgPool2d) and m.output_size not in (1, (1, 1))
                             for site in sites for m in site.modules())


def test_decompose_keeps_global_pooling_written_as_a_pair():
    """1x1 written (1, 1) is global pooling too: kept for ONNX's GlobalAveragePool, not swapped."""
    export = decompose(nn.Sequential(nn.AdaptiveAvgPool2d((1, 1)), nn.AdaptiveAvgPool2d((1, 2))))
    assert isinstance(export[0], nn.AdaptiveAvgPool2d) and isinstance(export[1], BinAvgPool)


def test_decompose_returns_an_eval_mode_copy_of_a_model_in_training():
    """A model handed over in training mode: the copy normalises with the running statistics and
    drops nothing (as `model.eval()` does); the caller's model stays in training mode."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.BatchNorm2d(2), nn.Dropout(0.5)).train()
    with torch.no_grad():
        net[0].running_mean.fill_(1.0)
        net[0].running_var.fill_(4.0)
    export = decompose(net)
    assert not any(m.training for m in export.modules())
    assert net.training and net[0].training
    x = torch.randn(2, 2, 3, 5)
    with torch.no_grad():
        # eval: (x - 1) / sqrt(4 + eps) with the default affine (weight 1, bias 0)
        torch.testing.assert_close(export(x), (x - 1) / (4 + 1e-5) ** 0.5, atol=1e-6, rtol=0)


@pytest.mark.parametrize("output_size", [(None, 4), (3, None)])
def test_adaptive_pooling_that_keeps_a_dimension_is_refused_when_decomposed(output_size):
    """`AdaptiveAvgPool2d((None, 4))` keeps the input's height: bin matrices need both output sizes, so
    the swap refuses it by name at decompose time, not with an error deep in a later export."""
    with pytest.raises(ValueError, match=r"adaptive pooling to \(.*None.*\) \(a kept dimension\) has no export form"):
        BinAvgPool(output_size)
    with pytest.raises(ValueError, match="has no export form"):
        decompose(nn.Sequential(nn.AdaptiveAvgPool2d(output_size)))
