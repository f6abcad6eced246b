"""The metrics against hand-computed cases, one per detail of specs/metrics.md, and against slow
literal re-statements of the MATLAB code on random small images."""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import pytest

from mattecli import metrics as M

U = 128


def unknown(shape):
    return np.full(shape, U, np.uint8)


# --- slow literal references of the MATLAB code (tiny images only) -----------------------------


def bwconncomp_colmajor(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """Components numbered as MATLAB finds them: scanning down columns, left to right; 4-conn."""
    h, w = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    comps = []
    for c in range(w):
        for r in range(h):
            if mask[r, c] and not seen[r, c]:
                comp, queue = [], deque([(r, c)])
                seen[r, c] = True
                while queue:
                    y, x = queue.popleft()
                    comp.append((y, x))
                    for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                        if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                            seen[ny, nx] = True
                            queue.append((ny, nx))
                comps.append(comp)
    return comps


def conn_reference(pred, gt, trimap):
    pred = pred.astype(np.float32) / np.float32(255)
    gt = gt.astype(np.float32) / np.float32(255)
    steps = [np.float32(k / 10) for k in range(11)]
    l_map = np.full(pred.shape, -1.0, np.float32)
    for ii in range(1, 11):
        comps = bwconncomp_colmajor((pred >= steps[ii]) & (gt >= steps[ii]))
        if not comps:
            continue
        sizes = [len(c) for c in comps]
        best = comps[sizes.index(max(sizes))]  # first maximum, like MATLAB's max
        omega = np.zeros(pred.shape, bool)
        for y, x in best:
            omega[y, x] = True
        l_map[(l_map == -1) & ~omega] = steps[ii - 1]
    l_map[l_map == -1] = 1

    def phi(x):
        d = x - l_map
        return 1 - d * (d >= np.float32(0.15))

    return float(np.abs(phi(pred) - phi(gt))[trimap == 128].sum(dtype=np.float64)) / 1000


def imfilter_conv_replicate(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """out(r, c) = sum_{a, b} img(r - a, c - b) k(a, b), a, b centred, edges replicated."""
    h = kernel.shape[0] // 2
    padded = np.pad(img, h, mode="edge")
    out = np.zeros(img.shape, np.float64)
    rows, cols = img.shape
    for a in range(-h, h + 1):
        for b in range(-h, h + 1):
            out += kernel[a + h, b + h] * padded[h - a:h - a + rows, h - b:h - b + cols]
    return out


def grad_reference(pred, gt, trimap, pad_mode="edge"):
    hx = M.gaussian_derivative_kernel(1.4)

    def amp(x):
        x = M.mat2gray(x)
        if pad_mode == "edge":
            gx, gy = imfilter_conv_replicate(x, hx), imfilter_conv_replicate(x, hx.T)
        else:  # the same sum with another border, to show that the border matters
            h = 4
            p = np.pad(x, h, mode=pad_mode)
            gx = sum(hx[a + h, b + h] * p[h - a:h - a + x.shape[0], h - b:h - b + x.shape[1]]
                     for a in range(-h, h + 1) for b in range(-h, h + 1))
            gy = sum(hx.T[a + h, b + h] * p[h - a:h - a + x.shape[0], h - b:h - b + x.shape[1]]
                     for a in range(-h, h + 1) for b in range(-h, h + 1))
        return np.sqrt(gx**2 + gy**2)

    err = (amp(pred).astype(np.float32) - amp(gt).astype(np.float32)) ** 2
    return float(err[trimap == 128].sum(dtype=np.float64)) / 1000


# --- SAD and MSE -------------------------------------------------------------------------------


def test_sad_casts_before_subtracting_uint8():
    pred = np.array([[0, 255]], np.uint8)
    gt = np.array([[255, 0]], np.uint8)
    # |0 - 255| + |255 - 0| = 510 -> 2.0 -> / 1000; uint8 arithmetic would give 1 + 255 = 256
    assert M.sad(pred, gt, unknown((1, 2))) == pytest.approx(2 / 1000, rel=1e-12)


def test_mse_normalises_by_unknown_count_and_is_not_rescaled():
    pred = np.array([[0, 51, 200, 7]], np.uint8)
    gt = np.array([[255, 0, 200, 0]], np.uint8)
    trimap = np.array([[128, 128, 128, 0]], np.uint8)
    expected = (1.0**2 + 0.2**2 + 0) / 3  # (255/255)^2 + (51/255)^2 + 0 over 3 unknown pixels
    assert M.mse(pred, gt, trimap) == pytest.approx(expected, rel=1e-12)


def test_only_exact_128_is_unknown():
    pred = np.array([[255, 255, 255, 255]], np.uint8)
    gt = np.zeros((1, 4), np.uint8)
    trimap = np.array([[128, 127, 129, 255]], np.uint8)
    assert M.sad(pred, gt, trimap) == pytest.approx(1 / 1000)
    assert M.mse(pred, gt, trimap) == pytest.approx(1.0)
    assert M.conn(pred, gt, trimap) == pytest.approx(M.conn(pred, gt, np.array([[128, 0, 0, 0]], np.uint8)))


def test_mse_without_unknown_pixels_is_zero_not_nan():
    z = np.zeros((2, 2), np.uint8)
    assert M.mse(z, z + 9, z) == 0.0


def test_three_channel_ground_truth_uses_first_channel():
    pred = np.zeros((2, 2), np.uint8)
    gt = np.zeros((2, 2, 3), np.uint8)
    gt[..., 0] = 255  # luma would be 76
    assert M.sad(pred, gt, unknown((2, 2))) == pytest.approx(4 / 1000)
    assert M.evaluate(pred, gt, unknown((2, 2)))["sad"] == pytest.approx(4 / 1000)


def test_size_mismatch_is_refused():
    with pytest.raises(ValueError, match="sizes differ"):
        M.sad(np.zeros((2, 3), np.uint8), np.zeros((3, 2), np.uint8), unknown((2, 3)))


# --- Conn --------------------------------------------------------------------------------------


def test_conn_tie_goes_to_the_first_component_in_column_major_order():
    # A = {(0,2), (0,3)} comes first row-major; B = {(1,0), (2,0)} comes first column-major.
    pred = np.array([[0, 0, 255, 255],
                     [255, 0, 0, 0],
                     [255, 0, 0, 0]], np.uint8)
    gt = pred.copy()
    gt[2, 0] = 229  # 0.898: B shrinks to one pixel from threshold 0.9 on
    # MATLAB: omega = B for t <= 0.8 (tie, B first), so B keeps l = -1 until t = 0.9 where A wins:
    # l(B) = 0.8. Pixel (2, 0): pred d = 0.2 -> phi 0.8; gt d = 0.098 < 0.15 -> phi 1. |.| = 0.2.
    # A row-major tie-break gives omega = A, l(B) = 0, |phi| = |0 - (1 - 229/255)| = 0.102.
    expected = (1 - (np.float32(1) - np.float32(0.8))) - 1
    assert M.conn(pred, gt, unknown(pred.shape)) == pytest.approx(abs(expected) / 1000, rel=1e-6)
    assert M.conn(pred, gt, unknown(pred.shape)) == pytest.approx(0.2 / 1000, rel=1e-6)
    levels = M.connectivity_levels(pred, gt)
    assert levels[1, 0] == levels[2, 0] == np.float32(0.8)
    assert levels[0, 2] == 0


def test_largest_component_tie_break_and_size():
    mask = np.array([[0, 0, 1, 1],
                     [1, 0, 0, 0],
                     [1, 0, 1, 0]], bool)
    omega = M.largest_component(mask)
    assert omega.sum() == 2 and omega[1, 0] and omega[2, 0]
    # same leftmost column: the one whose top pixel in that column is higher comes first
    mask = np.array([[0, 1, 0],
                     [0, 0, 0],
                     [1, 1, 0],
                     [0, 0, 0],
                     [0, 1, 1]], bool)
    omega = M.largest_component(mask)  # {(2,0),(2,1)} starts in column 0 -> first
    assert omega[2, 0] and omega[2, 1] and omega.sum() == 2
    assert M.largest_component(np.zeros((3, 3), bool)) is None
    # 4-connectivity: diagonal neighbours are separate components
    diag = np.eye(3, dtype=bool)
    assert M.largest_component(diag).sum() == 1


def test_conn_153_counts_at_threshold_0_6_in_single_precision():
    # pixel a: pred 153 (0.6), gt 255; pixel b: both 255; pixel c: both 0.
    pred = np.array([[153, 255, 0]], np.uint8)
    gt = np.array([[255, 255, 0]], np.uint8)
    # single precision: a is in the component up to t = 0.6, leaves at 0.7 -> l(a) = 0.6:
    # phi_pred = 1 (d = 0), phi_gt = 1 - 0.4 = 0.6 -> 0.4. A float64 comparison against
    # 0.6000000000000001 drops a at t = 0.6 -> l(a) = 0.5 -> |1 - 0.5| = 0.5.
    assert M.connectivity_levels(pred, gt)[0, 0] == np.float32(0.6)
    assert M.conn(pred, gt, unknown((1, 3))) == pytest.approx(0.4 / 1000, rel=1e-6)


def test_conn_unassigned_pixels_get_one_and_empty_intersection_is_skipped():
    pred = np.array([[255, 0]], np.uint8)
    gt = np.array([[255, 102]], np.uint8)
    # pixel 0 is the component at every threshold -> l = 1 -> d <= 0 -> phi 1 for both.
    # pixel 1 (pred 0): l = 0 at the first threshold; pred d = 0 -> phi 1; gt d = 0.4 -> 0.6.
    assert M.conn(pred, gt, unknown((1, 2))) == pytest.approx(0.4 / 1000, rel=1e-6)
    z = np.zeros((2, 2), np.uint8)  # empty at every threshold: l = 1 everywhere, error 0
    assert M.conn(z, z + 30, unknown((2, 2))) == 0.0
    assert (M.connectivity_levels(z, z) == 1).all()


def test_background_is_not_a_component():
    # A port labelling the background too would pick the 5 zero pixels as omega.
    pred = np.array([[255, 255, 0, 0, 0, 0, 0]], np.uint8)
    gt = np.array([[255, 204, 0, 0, 0, 0, 0]], np.uint8)
    # t <= 0.8: omega = both pixels; t = 0.9: omega = pixel 0 -> l(pixel 1) = 0.8.
    # pred d = 0.2 -> phi 0.8; gt d = 0 -> phi 1.
    assert M.conn(pred, gt, unknown(pred.shape)) == pytest.approx(0.2 / 1000, rel=1e-6)


@pytest.mark.parametrize("seed", range(6))
def test_conn_matches_literal_matlab_reference(seed):
    rng = np.random.default_rng(seed)
    shape = (rng.integers(5, 14), rng.integers(5, 14))
    base = rng.integers(0, 256, shape)
    pred = np.clip(base + rng.integers(-60, 61, shape), 0, 255).astype(np.uint8)
    gt = base.astype(np.uint8)
    if seed % 2:  # blocky values: many ties and exact threshold hits (51, 102, 153, 204)
        pred = (pred // 51 * 51).astype(np.uint8)
        gt = (gt // 51 * 51).astype(np.uint8)
    trimap = rng.choice(np.array([0, 128, 255], np.uint8), size=shape)
    assert M.conn(pred, gt, trimap) == pytest.approx(conn_reference(pred, gt, trimap), rel=1e-6, abs=1e-12)


# --- Grad --------------------------------------------------------------------------------------


def test_gaussian_derivative_kernel():
    hx = M.gaussian_derivative_kernel(1.4)
    assert hx.shape == (9, 9)  # halfsize = ceil(1.4 sqrt(-2 ln(sqrt(2 pi) 1.4 / 100))) = 4
    assert math.ceil(1.4 * math.sqrt(-2 * math.log(math.sqrt(2 * math.pi) * 1.4 * 1e-2))) == 4
    assert np.sum(hx**2) == pytest.approx(1.0)
    # rows: Gaussian (symmetric), columns: derivative (antisymmetric, negative on the right)
    np.testing.assert_allclose(hx, hx[::-1, :])
    np.testing.assert_allclose(hx, -hx[:, ::-1])
    assert hx[4, 5] < 0 < hx[4, 3]
    s = 1.4
    g = lambda u: math.exp(-u * u / (2 * s * s)) / (s * math.sqrt(2 * math.pi))
    dg = lambda u: -u * g(u) / s**2
    raw = np.array([[g(i) * dg(j) for j in range(-4, 5)] for i in range(-4, 5)])
    np.testing.assert_allclose(hx, raw / np.sqrt((raw**2).sum()), rtol=1e-12)


def test_gauss_gradient_is_a_convolution_with_replicated_borders():
    ramp = np.tile(np.arange(12, dtype=np.float64), (10, 1))  # grows to the right
    gx, gy = M.gauss_gradient(ramp)
    assert gx[5, 6] > 0  # convolution; correlation with hx would give a negative gx
    assert np.abs(gy).max() < 1e-12
    rng = np.random.default_rng(1)
    img = rng.random((11, 13))
    hx = M.gaussian_derivative_kernel()
    gx, gy = M.gauss_gradient(img)
    np.testing.assert_allclose(gx, imfilter_conv_replicate(img, hx), atol=1e-12)
    np.testing.assert_allclose(gy, imfilter_conv_replicate(img, hx.T), atol=1e-12)


def test_grad_border_replication_changes_the_number():
    # a step right next to the border: replicate, reflect and zero borders all disagree
    gt = np.zeros((6, 8), np.uint8)
    gt[:, :2] = 255
    pred = np.zeros((6, 8), np.uint8)
    pred[:, :3] = 255
    trimap = unknown(gt.shape)
    value = M.grad(pred, gt, trimap)
    assert value == pytest.approx(grad_reference(pred, gt, trimap, "edge"), rel=1e-6)
    assert value != pytest.approx(grad_reference(pred, gt, trimap, "symmetric"), rel=1e-3)
    assert value != pytest.approx(grad_reference(pred, gt, trimap, "constant"), rel=1e-3)


def test_mat2gray_min_max_and_constant_images():
    np.testing.assert_allclose(M.mat2gray(np.array([[10, 20, 30]], np.uint8)), [[0, 0.5, 1]])
    assert (M.mat2gray(np.zeros((2, 2), np.uint8)) == 0).all()
    assert (M.mat2gray(np.full((2, 2), 255, np.uint8)) == 1).all()  # clipped in its own scale
    assert (M.mat2gray(np.full((2, 2), 100, np.uint8)) == 1).all()
    assert (M.mat2gray(np.full((2, 2), 0.25)) == 0.25).all()


def test_grad_uses_min_max_not_255_and_constant_prediction_is_finite():
    gt = np.zeros((9, 9), np.uint8)
    gt[:, 4:] = 128  # max 128: mat2gray maps it to 1, / 255 would give 0.502
    trimap = unknown(gt.shape)
    for constant in (0, 255, 77):
        pred = np.full(gt.shape, constant, np.uint8)
        value = M.grad(pred, gt, trimap)
        assert np.isfinite(value)
        # the constant prediction has zero gradient, so the error is sum |grad gt~|^2
        expected = float((M.gradient_magnitude(gt).astype(np.float32) ** 2).sum(dtype=np.float64)) / 1000
        assert value == pytest.approx(expected, rel=1e-6)
    step = np.zeros((9, 9), np.float64)
    step[:, 4:] = 1.0
    assert M.gradient_magnitude(gt) == pytest.approx(M.gradient_magnitude(step * 255))
    assert M.grad(np.zeros_like(gt), gt, trimap) == pytest.approx(
        M.grad(np.zeros_like(gt), (step * 255).astype(np.uint8), trimap))


@pytest.mark.parametrize("seed", range(3))
def test_grad_matches_literal_reference(seed):
    rng = np.random.default_rng(10 + seed)
    shape = (rng.integers(6, 20), rng.integers(6, 20))
    pred = rng.integers(0, 256, shape).astype(np.uint8)
    gt = rng.integers(20, 200, shape).astype(np.uint8)
    trimap = rng.choice(np.array([0, 128, 255], np.uint8), size=shape)
    assert M.grad(pred, gt, trimap) == pytest.approx(grad_reference(pred, gt, trimap), rel=1e-6)


def test_evaluate_returns_all_four_in_papers_units():
    rng = np.random.default_rng(3)
    pred = rng.integers(0, 256, (32, 40)).astype(np.uint8)
    gt = rng.integers(0, 256, (32, 40)).astype(np.uint8)
    trimap = unknown((32, 40))
    out = M.evaluate(pred, gt, trimap)
    assert set(out) == set(M.METRICS)
    assert out["sad"] == pytest.approx(np.abs(pred.astype(int) - gt).sum() / 255 / 1000)
    assert out == M.evaluate(pred, np.repeat(gt[..., None], 3, axis=2), trimap)


def test_conn_many_tied_single_pixel_components_matches_reference():
    rng = np.random.default_rng(7)
    pred = np.zeros((9, 11), np.uint8)
    pred[::2, ::2] = 255  # isolated pixels: every component has size 1 at every threshold
    gt = np.where(pred > 0, rng.choice(np.array([153, 204, 255], np.uint8), pred.shape), 0).astype(np.uint8)
    trimap = unknown(pred.shape)
    assert M.conn(pred, gt, trimap) == pytest.approx(conn_reference(pred, gt, trimap), rel=1e-6)
    assert M.largest_component(pred > 0)[0, 0] and M.largest_component(pred > 0).sum() == 1


def test_conn_pixels_that_never_leave_the_component_get_level_one():
    # 115/255 = 0.451, 120/255 = 0.471: the pixel is the component at t = 0.1 .. 0.4; at 0.5 the
    # intersection is empty, so it stays unassigned and gets l = 1 (not 0): d < 0 -> phi = 1 for
    # both, error 0. With l = 0, phi would be 1 - 0.451 against 1 - 0.471 (error 5/255/1000).
    pred, gt = np.array([[115]], np.uint8), np.array([[120]], np.uint8)
    assert M.connectivity_levels(pred, gt).tolist() == [[1.0]]
    assert M.conn(pred, gt, unknown((1, 1))) == 0.0


def test_conn_levels_use_the_last_threshold_one():
    # thresholds 0:0.1:1 include 1: pixel 0 (both 255) is the component at t = 1 -> l = 1;
    # pixel 1 (240/255 = 0.94 >= 0.9) leaves it only at t = 1 -> l = 0.9; pixel 2 (0) lies
    # outside every component -> l = 0 (the first threshold).
    p = np.array([[255, 240, 0]], np.uint8)
    levels = M.connectivity_levels(p, p)
    assert levels.dtype == np.float32
    assert levels.tolist() == [[1.0, float(np.float32(0.9)), 0.0]]
    assert len(M.conn_thresholds()) == 11 and M.conn_thresholds()[-1] == np.float32(1)
