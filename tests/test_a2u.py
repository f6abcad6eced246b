"""A2U: the operator's two forms against a literal loop, the network's variants, the key listings
of the authors' checkpoints, the importer, parameter counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mattecli.models import build_model
from mattecli.models.a2u import (A2UConfig, A2UKernels, A2UMatting, adaptive_avg_pool_bins, downsample_shift,
                                 downsample_unfold, set_a2u_form, upsample_shift, upsample_unfold)
from mattecli.models.layers import count_parameters
from mattecli.recipes import load_recipe

SPECS = Path("/work/shared/specs")
A2U_RECIPES = ["a2u-baseline-nearest", "a2u-baseline-bilinear", "a2u-static-cw", "a2u-static-cs",
               "a2u-static-pw-cw", "a2u-hybrid-cw", "a2u-hybrid-cs", "a2u-dynamic-cw", "a2u-dynamic-cs",
               "a2u-dynamic-cs-d", "a2u-dynamic-cs-d-gn", "a2u-dynamic-cw-d-gn", "demo-a2u"]
BASELINE = 8_049_003


# ----------------------------------------------------------------------------------------------
# The operator


def loop_upsample(m, kernels, k):
    """out[Y, X] = sum_t w_t[Y, X] * m[Y//2 + dy - k//2, X//2 + dx - k//2], zero outside."""
    n, c, h, w = m.shape
    out = torch.zeros(n, c, 2 * h, 2 * w, dtype=torch.float64)
    for y in range(2 * h):
        for x in range(2 * w):
            for t in range(k * k):
                sy, sx = y // 2 + t // k - k // 2, x // 2 + t % k - k // 2
                if 0 <= sy < h and 0 <= sx < w:
                    out[:, :, y, x] += kernels[:, t, y, x, None] * m[:, :, sy, sx]
    return out


def loop_downsample(m, kernels, k):
    """out[p, q] = sum_t w_t[p, q] * m[2p - (k-1) + dy, 2q - (k-1) + dx] over a 2k x 2k window."""
    n, c, hh, ww = m.shape
    h, w = kernels.shape[2:]
    out = torch.zeros(n, c, h, w, dtype=torch.float64)
    for p in range(h):
        for q in range(w):
            for t in range(4 * k * k):
                sy, sx = 2 * p - (k - 1) + t // (2 * k), 2 * q - (k - 1) + t % (2 * k)
                if 0 <= sy < hh and 0 <= sx < ww:
                    out[:, :, p, q] += kernels[:, t, p, q, None] * m[:, :, sy, sx]
    return out


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("size", [(5, 7), (6, 3)])
def test_upsample_forms_equal_loop(k, size):
    g = torch.Generator().manual_seed(k)
    m = torch.randn(2, 3, *size, generator=g)
    kernels = torch.softmax(torch.randn(2, k * k, 2 * size[0], 2 * size[1], generator=g), 1)
    want = loop_upsample(m.double(), kernels.double(), k)
    for form in (upsample_unfold, upsample_shift):
        torch.testing.assert_close(form(m, kernels, k).double(), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("size", [(9, 11), (8, 5)])
def test_downsample_forms_equal_loop(k, size):
    g = torch.Generator().manual_seed(10 + k)
    m = torch.randn(2, 3, *size, generator=g)
    out_size = ((size[0] + 1) // 2, (size[1] + 1) // 2)
    kernels = torch.softmax(torch.randn(2, 4 * k * k, *out_size, generator=g), 1)
    want = loop_downsample(m.double(), kernels.double(), k)
    for form in (downsample_unfold, downsample_shift):
        torch.testing.assert_close(form(m, kernels, k).double(), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("size", [(6, 6), (13, 7), (40, 23), (5, 9)])
def test_bin_matrix_pooling_equals_adaptive_pooling(size):
    x = torch.randn(2, 3, *size)
    torch.testing.assert_close(adaptive_avg_pool_bins(x, 6), F.adaptive_avg_pool2d(x, 6), atol=1e-6, rtol=0)


@pytest.mark.parametrize("cfg", [
    A2UConfig(),
    A2UConfig(encoding="cw"),
    A2UConfig(kernel="static", encoding="cw", pointwise=True, paired_down=False, group_norm=False, k_en=5),
    A2UConfig(kernel="hybrid", encoding="cs", paired_down=False, group_norm=False, k_en=5, k_up=5),
    A2UConfig(k_up=1),
])
def test_kernel_generator_forms_equal(cfg):
    """Kernels and up/down results of one A2U site agree between the unfold and shift forms."""
    torch.manual_seed(0)
    site = A2UKernels(64, cfg, cfg.paired_down).eval()
    x = torch.randn(2, 64, 22, 18)
    m = torch.randn(2, 5, 11, 9)
    results = {}
    for form in ("unfold", "shift"):
        site.form = form
        with torch.no_grad():
            up, down = site(x)
            results[form] = [up, site.upsample(m, up)]
            if down is not None:
                results[form] += [down, site.downsample(x, down)]
    for a, b in zip(results["unfold"], results["shift"]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    k = cfg.k_up
    assert results["shift"][0].shape == (2, k * k, 22, 18)
    torch.testing.assert_close(results["shift"][0].sum(1), torch.ones(2, 22, 18)) if k > 1 else None
