"""inference/foreground.py: the PyTorch port of PyMatting's multi-level foreground estimation.

Everything but the sweep order is PyMatting's exactly: with a raster-order (Gauss-Seidel) sweep
put back in, the port equals `estimate_foreground_ml` to float rounding. The red-black sweep the
port runs differs by the amounts stated in docs/gpu.md "Foreground colours on the GPU", pinned here on the lemur
photo and a synthetic composite with known colours.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mattecli.imageio import read_gray, read_image
from mattecli.inference import foreground
from mattecli.inference.outputs import estimate_foreground

from .conftest import LEMUR

pymatting = pytest.importorskip("pymatting")


def _pymatting_uint8(image, alpha):
    fg = pymatting.estimate_foreground_ml(image.astype(np.float32) / 255, alpha.astype(np.float32) / 255)
    return (np.clip(fg, 0, 1) * 255 + 0.5).astype(np.uint8)


def _raster_level(img, a0, fb, sweeps, regularization, gradient_weight):
    """PyMatting's own sweep: pixels in raster order, each solved in place from its neighbours' latest values."""
    img, a, fb = img.double().numpy(), a0[0].double().numpy(), fb.double().numpy().copy()
    h, w = a.shape
    for _ in range(sweeps):
        for y in range(h):
            for x in range(w):
                a_0, a_1 = a[y, x], 1 - a[y, x]
                a00, a11, a01 = a_0 * a_0, a_1 * a_1, a_0 * a_1
                b0, b1 = a_0 * img[:, y, x], a_1 * img[:, y, x]
                for y2, x2 in ((y, max(x - 1, 0)), (y, min(x + 1, w - 1)), (max(y - 1, 0), x), (min(y + 1, h - 1), x)):
                    da = regularization + gradient_weight * abs(a_0 - a[y2, x2])
                    a00, a11 = a00 + da, a11 + da
                    b0, b1 = b0 + da * fb[:3, y2, x2], b1 + da * fb[3:, y2, x2]
                det = a00 * a11 - a01 * a01
                fb[:3, y, x] = np.clip((a11 * b0 - a01 * b1) / det, 0, 1)
                fb[3:, y, x] = np.clip((a00 * b1 - a01 * b0) / det, 0, 1)
    return torch.from_numpy(fb).float()


# (70, 9) and (9, 70): a level with one side over small_size and the other not takes the big levels'
# sweep count (PyMatting: the small levels' count only when both sides are within small_size)
@pytest.mark.parametrize("size", [(9, 13), (17, 6), (40, 33), (70, 9), (9, 70)])
def test_port_with_a_raster_sweep_is_pymatting(monkeypatch, size):
    """Levels, nearest resizes, mean-colour start, per-level sweep counts and the 2x2 solves are exact."""
    rng = np.random.default_rng(sum(size))
    image = rng.random((*size, 3), dtype=np.float32)
    alpha = rng.random(size, dtype=np.float32)
    alpha[alpha > 0.8], alpha[alpha < 0.2] = 1, 0  # known regions too, for the mean colours
    monkeypatch.setattr(foreground, "_solve_level", _raster_level)
    fg, bg = foreground.estimate_fb_ml(torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(alpha))
    want_fg, want_bg = pymatting.estimate_foreground_ml(image, alpha, return_background=True)
    np.testing.assert_allclose(fg.permute(1, 2, 0).numpy(), want_fg, atol=1e-5)
    np.testing.assert_allclose(bg.permute(1, 2, 0).numpy(), want_bg, atol=1e-5)


def test_the_start_colours_are_pymattings_means_over_alpha_above_0_9_and_below_0_1():
    """With no sweeps at all, every level keeps the start: F the mean colour where alpha > 0.9,
    B where alpha < 0.1 (alphas 0.85 and 0.15 belong to neither), as PyMatting's."""
    rng = np.random.default_rng(7)
    image = rng.random((6, 8, 3), dtype=np.float32)
    alpha = np.tile(np.array([0.0, 0.05, 0.15, 0.5, 0.85, 0.95, 1.0, 0.5], np.float32), (6, 1))
    fg, bg = foreground.estimate_fb_ml(torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(alpha),
                                       n_small_iterations=0, n_big_iterations=0)
    want_f, want_b = image[:, 5:7].reshape(-1, 3).mean(0), image[:, 0:2].reshape(-1, 3).mean(0)
    np.testing.assert_allclose(fg.permute(1, 2, 0).numpy(), np.broadcast_to(want_f, (6, 8, 3)), atol=1e-5)
    np.testing.assert_allclose(bg.permute(1, 2, 0).numpy(), np.broadcast_to(want_b, (6, 8, 3)), atol=1e-5)
    want_fg, want_bg = pymatting.estimate_foreground_ml(image, alpha, n_small_iterations=0, n_big_iterations=0,
                                                        return_background=True)
    np.testing.assert_allclose(fg.permute(1, 2, 0).numpy(), want_fg, atol=1e-5)
    np.testing.assert_allclose(bg.permute(1, 2, 0).numpy(), want_bg, atol=1e-5)


def test_alphas_of_exactly_0_9_and_0_1_belong_to_neither_start_colour():
    """PyMatting's start: F the mean where alpha > 0.9, B where alpha < 0.1, strictly; an alpha of
    exactly 0.9 (or 0.1) counts for neither."""
    rng = np.random.default_rng(3)
    image = rng.random((4, 6, 3), dtype=np.float32)
    alpha = np.tile(np.array([0.0, 0.1, 0.5, 0.9, 1.0, 0.5], np.float32), (4, 1))
    fg, bg = foreground.estimate_fb_ml(torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(alpha),
                                       n_small_iterations=0, n_big_iterations=0)
    np.testing.assert_allclose(fg[:, 0, 0].numpy(), image[:, 4].mean(0), atol=1e-5)
    np.testing.assert_allclose(bg[:, 0, 0].numpy(), image[:, 0].mean(0), atol=1e-5)
    want_fg, want_bg = pymatting.estimate_foreground_ml(image, alpha, n_small_iterations=0, n_big_iterations=0,
                                                        return_background=True)
    np.testing.assert_allclose(fg.permute(1, 2, 0).numpy(), want_fg, atol=1e-5)
    np.testing.assert_allclose(bg.permute(1, 2, 0).numpy(), want_bg, atol=1e-5)


# a last level of exactly small_size (32) on one side: still a small level, 10 sweeps, as PyMatting's `<=`
@pytest.mark.parametrize("size", [(32, 20), (20, 32)])
def test_a_level_of_exactly_small_size_takes_the_small_sweep_count(monkeypatch, size):
    rng = np.random.default_rng(5)
    image = rng.random((*size, 3), dtype=np.float32)
    alpha = rng.random(size, dtype=np.float32)
    counts = []

    def counting(img, a0, fb, sweeps, *rest):
        counts.append((tuple(a0.shape[-2:]), sweeps))
        return _raster_level(img, a0, fb, sweeps, *rest)

    monkeypatch.setattr(foreground, "_solve_level", counting)
    fg, bg = foreground.estimate_fb_ml(torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(alpha))
    assert counts[-1] == (size, 10)
    want_fg, want_bg = pymatting.estimate_foreground_ml(image, alpha, return_background=True)
    np.testing.assert_allclose(fg.permute(1, 2, 0).numpy(), want_fg, atol=1e-5)
    np.testing.assert_allclose(bg.permute(1, 2, 0).numpy(), want_bg, atol=1e-5)


@pytest.mark.parametrize("size", [(1, 7), (5, 1), (23, 64)])
def test_nearest_resize_is_pymatting(size):
    from pymatting.foreground.estimate_foreground_ml import _resize_nearest_multichannel

    src = np.random.default_rng(0).random((*size, 3), dtype=np.float32)
    for dst_size in [(1, 1), (3, 5), (size[0] * 2 + 1, size[1] + 3)]:
        want = np.empty((*dst_size, 3), np.float32)
        _resize_nearest_multichannel(want, src)
        got = foreground._nearest(torch.from_numpy(src).permute(2, 0, 1), *dst_size).permute(1, 2, 0).numpy()
        assert np.array_equal(got, want), dst_size


def _lemur_case():
    """The lemur photo under a soft alpha: its trimap blurred (sigma 4) — wide unknown band, hair-like edges."""
    import cv2

    image = read_image(LEMUR / "lemur.png")
    trimap = read_gray(LEMUR / "lemur_trimap.png").astype(np.float32) / 255
    alpha = np.clip(cv2.GaussianBlur(trimap, (0, 0), 4), 0, 1)
    return image, (alpha * 255 + 0.5).astype(np.uint8)


def _synthetic_case(h=301, w=417):
    """A composite with known foreground colours: an ellipse with a soft rim and thin stripes."""
    import cv2

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:h, :w]
    fg = np.stack([(np.sin(xx / 13) + 1) / 2, (np.cos(yy / 7) + 1) / 2, rng.random((h, w)) * 0.2 + 0.4], -1)
    bg = cv2.GaussianBlur(rng.random((h, w, 3)).astype(np.float32), (0, 0), 3)
    alpha = cv2.GaussianBlur(((xx - w / 2) ** 2 / (w / 3) ** 2 + (yy - h / 2) ** 2 / (h / 3) ** 2 < 1).astype(np.float32),
                             (0, 0), 5)
    alpha = np.clip(alpha + 0.4 * ((np.sin(xx / 2.5) > 0.6) & (alpha > 0.05) & (alpha < 0.6)), 0, 1)
    image = np.clip(alpha[..., None] * fg + (1 - alpha[..., None]) * bg, 0, 1)
    return (image * 255 + 0.5).astype(np.uint8), (alpha * 255 + 0.5).astype(np.uint8)


# Measured (docs/gpu.md "Foreground colours on the GPU"): lemur 2.79 / 0.94 / 10.8, synthetic 2.61 / 0.41 / 12.3.
@pytest.mark.parametrize("case", [_lemur_case, _synthetic_case])
def test_red_black_port_is_within_the_stated_tolerance_of_pymatting(case):
    """Over the pixels with 0 < alpha < 255 (of 255): mean |difference| <= 3.5, mean alpha-weighted
    (what a cut-out shows) <= 1.2, largest alpha-weighted <= 16."""
    image, alpha = case()
    got = foreground.estimate_foreground_torch(image, alpha, "cpu")
    diff = np.abs(got.astype(np.float64) - _pymatting_uint8(image, alpha))
    weighted = diff * alpha[..., None] / 255
    soft = (alpha > 0) & (alpha < 255)
    assert got.shape == image.shape and got.dtype == np.uint8
    assert diff[soft].mean() <= 3.5 and weighted[soft].mean() <= 1.2 and weighted.max() <= 16, \
        (diff[soft].mean(), weighted[soft].mean(), weighted.max())


def test_port_is_as_close_to_the_true_colours_as_pymatting():
    """On the composite the true foreground is known: the red-black order loses nothing in accuracy."""
    image, alpha = _synthetic_case()
    h, w = alpha.shape
    yy, xx = np.mgrid[:h, :w]
    rng = np.random.default_rng(0)
    truth = np.stack([(np.sin(xx / 13) + 1) / 2, (np.cos(yy / 7) + 1) / 2, rng.random((h, w)) * 0.2 + 0.4], -1) * 255
    soft = (alpha > 0) & (alpha < 255)

    def error(est):
        return (np.abs(est - truth) * alpha[..., None] / 255)[soft].mean()

    port, reference = error(foreground.estimate_foreground_torch(image, alpha)), error(_pymatting_uint8(image, alpha))
    assert port <= reference * 1.02, (port, reference)


def test_outputs_choose_the_port_only_on_cuda(monkeypatch):
    image, alpha = _synthetic_case(40, 50)
    calls = []
    monkeypatch.setattr(foreground, "estimate_foreground_torch", lambda *a: calls.append(a[2]) or a[0])
    estimate_foreground(image, alpha, "cpu")
    estimate_foreground(image, alpha, torch.device("cpu"))
    estimate_foreground(image, alpha)
    assert calls == []
    estimate_foreground(image, alpha, "cuda:1")
    assert calls == ["cuda:1"]


@pytest.mark.gpu
def test_cuda_port_equals_the_cpu_port():
    """On a GPU: the same numbers as on the CPU, to 2 levels (float reassociation). Its speed is a
    benchmark figure (benchmarks/device_check.sh, section foreground), not a timed test."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    image, alpha = _lemur_case()
    cpu, gpu = (foreground.estimate_foreground_torch(image, alpha, d) for d in ("cpu", "cuda"))
    diff = np.abs(cpu.astype(int) - gpu)
    assert diff.max() <= 2, f"largest difference {diff.max()} levels at {np.unravel_index(diff.argmax(), diff.shape)}"


@pytest.mark.gpu
def test_the_graphed_estimate_equals_the_eager_one_on_cuda():
    """The replayed CUDA graph runs the same kernels, on a contiguous copy of the input where the eager
    estimate reads a permuted view (a reduction may sum in another order): within 1 level, and again
    with new inputs."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    image, alpha = _lemur_case()
    graph = foreground.GraphedForeground(*alpha.shape, "cuda")
    for image, alpha in [(image, alpha), (image[::-1].copy(), alpha[::-1].copy())]:  # new inputs, one graph
        eager = foreground.estimate_foreground_torch(image, alpha, "cuda").astype(np.int16)
        assert np.abs(foreground.estimate_foreground_torch(image, alpha, "cuda", graph) - eager).max() <= 1


def test_a_graphed_estimate_needs_cuda():
    with pytest.raises(ValueError, match="^a CUDA graph needs a CUDA device, not cpu$"):
        foreground.GraphedForeground(8, 8, "cpu")


def test_a_one_pixel_image_is_its_own_foreground():
    """PyMatting's level count is 0 for a 1x1 image: `--save fg` and Matter.foreground raised
    ZeroDivisionError on a one-pixel image with a fractional alpha."""
    image = np.array([[[10, 200, 30]]], np.uint8)
    assert np.array_equal(estimate_foreground(image, np.array([[100]], np.uint8)), image)


def test_an_opaque_image_is_its_own_foreground_rounded_not_truncated():
    """Under alpha 255 the foreground is the image: the solve lands within a hair of each value,
    above or below, and the uint8 result rounds it (truncation lost a level on about half the pixels)."""
    image = np.random.default_rng(2).integers(0, 256, (24, 31, 3), dtype=np.uint8)
    got = foreground.estimate_foreground_torch(image, np.full((24, 31), 255, np.uint8), "cpu")
    assert np.array_equal(got, image)


def test_read_only_arrays_are_taken_without_a_warning():
    """Matter.foreground(image, np.asarray(Image.open("alpha.png"))) on CUDA: torch.from_numpy
    warned that the read-only alpha made a non-writable tensor (the CPU's PyMatting did not)."""
    import warnings

    image, alpha = _synthetic_case(20, 30)
    image.flags.writeable = alpha.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fg = foreground.estimate_foreground_torch(image, alpha, "cpu")
    assert fg.shape == image.shape and fg.dtype == np.uint8


def test_views_with_negative_strides_are_taken():
    """`Matter.foreground(image[:, ::-1], alpha[:, ::-1])` on CUDA: torch.from_numpy refused the
    views (PyMatting on a CPU takes them)."""
    image, alpha = _synthetic_case(20, 30)
    flipped = foreground.estimate_foreground_torch(image[:, ::-1], alpha[:, ::-1], "cpu")
    assert np.array_equal(flipped, foreground.estimate_foreground_torch(image[:, ::-1].copy(), alpha[:, ::-1].copy(),
                                                                         "cpu"))


def test_views_reversed_along_every_axis_are_taken():
    """`alpha[::-1, ::-1]` has no positive stride at all: it is copied as the one-axis flips are."""
    image, alpha = _synthetic_case(20, 30)
    turned = foreground.estimate_foreground_torch(image[::-1, ::-1], alpha[::-1, ::-1], "cpu")
    want = foreground.estimate_foreground_torch(image[::-1, ::-1].copy(), alpha[::-1, ::-1].copy(), "cpu")
    assert np.array_equal(turned, want)


@pytest.mark.parametrize("shape", [(1, 2), (2, 1)])
def test_on_two_pixels_the_red_black_sweep_is_the_raster_sweep(shape):
    """With two pixels, even x + y first then the odd one from its new neighbour is raster order
    exactly: the port's solve, with non-default regularization and gradient_weight, equals PyMatting's."""
    rng = np.random.default_rng(11)
    img = torch.from_numpy(rng.random((3, *shape), dtype=np.float32))
    a0 = torch.tensor([0.2, 0.7], dtype=torch.float32).view(1, *shape)
    fb = torch.from_numpy(rng.random((6, *shape), dtype=np.float32))
    for regularization, gradient_weight in [(1e-5, 1.0), (0.05, 0.3), (1e-3, 4.0)]:
        got = foreground._solve_level(img, a0, fb.clone(), 3, regularization, gradient_weight)
        want = _raster_level(img, a0, fb, 3, regularization, gradient_weight)
        np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5)
