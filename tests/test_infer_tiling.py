"""The memory ceiling: whole image when it fits, tiles over the unknown band otherwise."""

import numpy as np
import pytest

from mattecli.inference.pipeline import Pipeline
from mattecli.inference.tiling import (PREPARE_BYTES_PER_PIXEL, blend_tiles, pass_bytes,
                                       plan_tiles, tile_size)
from mattecli.recipes import InferConfig

CFG = InferConfig(align="pad", stride=16, bytes_per_pixel=1000)


def ceiling_for(side, cfg=CFG):
    return side * side * (cfg.bytes_per_pixel + PREPARE_BYTES_PER_PIXEL)


def pointwise_backend(x):
    """A 'model' whose output at a pixel depends on that pixel only: tiling must not change it."""
    return 1 / (1 + np.exp(-(x[:, :3].sum(1, keepdims=True) + x[:, 3:4])))


def band_case(h=150, w=170, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    trimap = np.zeros((h, w), np.uint8)
    trimap[30:120, 40:150] = 128
    trimap[60:90, 80:110] = 255
    return image, trimap


def test_tile_size_is_a_stride_multiple_within_the_ceiling():
    side = tile_size(ceiling_for(100), CFG)
    assert side == 96 and pass_bytes(side, side, CFG) <= ceiling_for(100)
    with pytest.raises(ValueError, match="too small"):
        tile_size(ceiling_for(40), CFG)


def test_tiles_cover_every_unknown_pixel_and_skip_known_regions():
    trimap = np.zeros((300, 400), np.uint8)
    trimap[10:20, 10:30] = 128  # a small band in one corner...
    trimap[250:290, 300:390] = 128  # ...and another in the opposite one
    tiles = plan_tiles(trimap, 64, 16)
    covered = np.zeros(trimap.shape, bool)
    for t in tiles:
        assert 0 <= t.y0 < t.y1 <= 300 and 0 <= t.x0 < t.x1 <= 400
        assert t.y1 - t.y0 <= 64 and t.x1 - t.x0 <= 64
        assert (trimap[t.y0:t.y1, t.x0:t.x1] == 128).any()  # no tile over known pixels only
        covered[t.y0:t.y1, t.x0:t.x1] = True
    assert covered[trimap == 128].all()
    assert len(tiles) < 12  # the grid over the bounding box has 42 windows; most hold no unknown pixel
    assert plan_tiles(np.zeros((50, 50), np.uint8), 64, 16) == []


def test_tiled_equals_whole_for_a_model_without_context():
    image, trimap = band_case()
    whole, how = Pipeline(pointwise_backend, CFG).run(image, trimap)
    assert how == "whole"
    tiled, how = Pipeline(pointwise_backend, CFG, max_bytes=ceiling_for(64)).run(image, trimap)
    assert how.startswith("tiled:") and "64x64" in how
    diff = np.abs(whole.astype(int) - tiled.astype(int))
    assert diff.max() <= 1  # blending weights sum to one: only float rounding before truncation
    assert np.array_equal(tiled[trimap != 128], trimap[trimap != 128])


def test_blend_ramps_hide_seams():
    """Two tiles predicting different constants: inside the overlap the blend moves monotonically."""
    from mattecli.inference.tiling import Tile

    trimap = np.full((32, 100), 128, np.uint8)
    image = np.zeros((32, 100, 3), np.uint8)
    tiles = [Tile(0, 0, 32, 64), Tile(0, 36, 32, 100)]
    values = iter([np.float32(0), np.float32(200)])
    out = blend_tiles(lambda im, tri: np.full(tri.shape, next(values), np.float32), image, trimap, tiles, 16)
    row = out[0]
    assert (row[:36] == 0).all() and (row[64:] == 200).all()
    assert (np.diff(row[36:64]) >= 0).all() and np.diff(row).max() < 30  # a ramp, not a step of 200


def test_no_unknown_pixels_means_no_model_pass():
    def fail(_):
        raise AssertionError("the model ran")

    trimap = np.zeros((200, 200), np.uint8)
    trimap[50:] = 255
    alpha, how = Pipeline(fail, CFG, max_bytes=ceiling_for(64)).run(np.zeros((200, 200, 3), np.uint8), trimap)
    assert how == "no unknown pixels" and np.array_equal(alpha, trimap)


def test_a_real_model_runs_tiled_close_to_the_whole_image():
    import torch

    from mattecli.imageio import read_image, read_trimap
    from mattecli.inference.backends import TorchBackend
    from mattecli.inference.pipeline import prepare
    from mattecli.models import build_model
    from mattecli.recipes import load_recipe
    from tests.conftest import LEMUR

    recipe = load_recipe("indexnet-m2o-nl-ctx")  # its random features are not mostly zero
    torch.manual_seed(0)
    model = build_model(recipe).eval()
    image = read_image(LEMUR / "lemur.png")[80:336, 160:544]
    trimap = read_trimap(LEMUR / "lemur_trimap.png")[0][80:336, 160:544]
    backend = TorchBackend(model, recipe)
    with torch.no_grad():  # a local-mean head scaled to a median of 0.5, so few pixels clip (see tiling_error.py)
        head = model.pred[-1].weight
        head.fill_(1.0 / head[0, 0].numel())
        raw = backend(prepare(image, trimap, recipe.infer))[0, 0]
        head.mul_(0.5 / float(np.median(raw[:256, :384][trimap == 128])))
    whole = Pipeline(backend, recipe.infer).predict_whole(image, trimap)
    tiled, how = Pipeline(backend, recipe.infer, max_bytes=ceiling_for(160, recipe.infer)).run(image, trimap)
    assert how.startswith("tiled:")
    unknown = trimap == 128
    assert ((whole[unknown] > 0) & (whole[unknown] < 255)).mean() > 0.2  # the comparison is not all clipped
    diff = np.abs(whole.astype(int) - tiled.astype(int))[unknown]
    assert diff.mean() < 3 and diff.max() < 64 and np.array_equal(whole[~unknown], tiled[~unknown])


class Bounded:
    """`pointwise_backend` on a device that holds at most `limit` input pixels per pass: larger
    passes fail as running out of memory does (torch's OutOfMemoryError, or ONNX Runtime's text)."""

    def __init__(self, limit: int, error):
        self.limit, self.error, self.sizes = limit, error, []

    def __call__(self, x):
        self.sizes.append(x.shape[2] * x.shape[3])
        if self.sizes[-1] > self.limit:
            raise self.error
        return pointwise_backend(x)


@pytest.mark.parametrize("error", [
    "torch", RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory for requested buffer"),
    MemoryError(), RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`")],
    ids=["torch", "onnxruntime", "numpy", "cublas"])
def test_a_pass_that_runs_out_of_memory_under_a_ceiling_is_redone_in_smaller_tiles(error):
    import torch

    error = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB") if error == "torch" else error
    image, trimap = band_case()
    expected, _ = Pipeline(pointwise_backend, CFG).run(image, trimap)
    backend = Bounded(96 * 96, error)  # the estimate allows the whole image; the device does not
    alpha, how = Pipeline(backend, CFG, max_bytes=ceiling_for(1000)).run(image, trimap)
    assert how.startswith("tiled:") and how.endswith("(a larger pass ran out of memory)"), how
    # the whole (padded) image first, then tiles under half its estimate (112x112: out of memory
    # at once), then under a quarter: four tiles of 80x80 that fit
    assert backend.sizes == [160 * 176, 112 * 112, 80 * 80, 80 * 80, 80 * 80, 80 * 80]
    assert np.abs(alpha.astype(int) - expected.astype(int)).max() <= 1
    # without a ceiling the whole image was asked for: its failure is the image's
    with pytest.raises(type(error)):
        Pipeline(Bounded(96 * 96, error), CFG).run(image, trimap)
    # other errors are not retried
    with pytest.raises(ValueError, match="not finite"):
        Pipeline(lambda x: pointwise_backend(x) * np.nan, CFG, max_bytes=ceiling_for(1000)).run(image, trimap)


def test_a_float32_redo_of_a_pass_that_then_ran_out_of_memory_is_not_noted_on_the_tiles():
    """The whole pass overflowed in half precision, its float32 redo ran out of memory, and the tiles
    that made the alpha ran in half precision without a redo: `how` must not say "redone in fp32"."""
    import torch

    from mattecli.inference.pipeline import REDONE_FP32

    class OverflowThenOutOfMemory(Bounded):
        fallbacks = 0

        def __call__(self, x):
            if x.shape[2] * x.shape[3] > self.limit:
                self.fallbacks += 1  # the half pass was not finite; its float32 redo runs out
            return super().__call__(x)

    image, trimap = band_case()
    backend = OverflowThenOutOfMemory(96 * 96, torch.OutOfMemoryError("CUDA out of memory"))
    _, how = Pipeline(backend, CFG, max_bytes=ceiling_for(1000)).run(image, trimap)
    assert how.startswith("tiled:") and REDONE_FP32 not in how, how


def test_running_out_of_memory_even_in_the_smallest_tiles_names_the_last_tile():
    image, trimap = band_case()
    with pytest.raises(ValueError, match=r"^out of memory even in tiles of 80x80$"):  # then below 64, the least
        Pipeline(Bounded(10, MemoryError()), CFG, max_bytes=ceiling_for(1000)).run(image, trimap)


def test_an_exported_graph_on_a_cpu_is_budgeted_by_its_onnx_runtime_figure():
    """ONNX Runtime runs TCP's graph untiled and A2U's point-wise taps in its own order: 1.3x and
    1.7x PyTorch's peak, over the CPU figure. The recipe's onnx figure budgets it where stated."""
    from mattecli.inference.tiling import model_bytes_per_pixel

    cfg = InferConfig(bytes_per_pixel=600, onnx_bytes_per_pixel=720, cuda_bytes_per_pixel=500)
    assert model_bytes_per_pixel(cfg, "cpu", backend="onnx")[0] == 720
    assert model_bytes_per_pixel(cfg, "cpu", backend="torch")[0] == 600
    assert model_bytes_per_pixel(cfg, "cpu")[0] == 600
    assert model_bytes_per_pixel(cfg, "cuda", backend="onnx")[0] == 500  # ONNX Runtime on CUDA: unmeasured
    plain = InferConfig(bytes_per_pixel=600)  # none stated: the CPU figure stands in
    per_pixel, source = model_bytes_per_pixel(plain, "cpu", backend="onnx")
    assert per_pixel == 600 and "infer.bytes_per_pixel" in source
    with pytest.raises(ValueError):
        InferConfig(onnx_bytes_per_pixel=-1)


def test_too_small_ceiling_names_the_smallest_tiles_need_rounded_up():
    # the smallest tile is 4 strides: 64x64 at stride 16, 4096 px * (1000 + 96) B = 4,489,216 B
    # = 4.28 MiB, said as 5 MiB (rounded up: a ceiling of 4 MiB would still be too small)
    with pytest.raises(ValueError, match=r"the smallest tile \(64x64\) needs about 5 MiB"):
        tile_size(2**20, CFG)


def test_window_starts_centre_a_narrow_band_and_spread_evenly_over_a_wide_one():
    from mattecli.inference.tiling import _starts

    # a band of 10 in a tile of 32: one window, centred (22 spare pixels, 11 before the band)
    assert _starts(40, 50, 200, 32, 8) == [29]
    # a band exactly one tile wide: that one window, on the band
    assert _starts(10, 42, 100, 32, 8) == [10]
    # 10..190 with tiles of 64 overlapping by >= 16: from 10 to 126 in ceil(116 / 48) = 3 steps,
    # rounded to the nearest pixel: 10 + 38.67, 10 + 77.33
    assert _starts(10, 190, 200, 64, 16) == [10, 49, 87, 126]


def test_ramps_rise_over_the_overlap_in_steps_of_one_over_n_plus_1():
    from mattecli.inference.tiling import _ramp

    # overlap 3 on both ends: 1/4, 2/4, 3/4 up and down again, never 0 or 1 inside the fade
    np.testing.assert_allclose(_ramp(10, 3, True, True), [.25, .5, .75, 1, 1, 1, 1, .75, .5, .25])
    np.testing.assert_allclose(_ramp(6, 3, False, True), [1, 1, 1, .75, .5, .25])
    # a window shorter than twice the overlap fades over half of it: n = 2, steps of 1/3
    np.testing.assert_allclose(_ramp(4, 3, True, True), [1 / 3, 2 / 3, 2 / 3, 1 / 3])


def test_band_box_is_widened_by_half_the_overlap_before_centring():
    # unknown rows and columns 40..60 (21 pixels); overlap 8 widens the box by 4 on each side
    # to 36..64 (29 pixels); one tile of 32 centred on it starts 3 // 2 = 1 pixel before: 35
    trimap = np.zeros((100, 100), np.uint8)
    trimap[40:61, 40:61] = 128
    tiles = plan_tiles(trimap, 32, 8)
    assert [(t.y0, t.x0, t.y1, t.x1) for t in tiles] == [(35, 35, 67, 67)]


def test_a_narrow_band_at_the_far_edge_gets_the_last_window_that_fits():
    from mattecli.inference.tiling import _starts

    # a band 90..98 of 100 centred in a tile of 32 would start at 78 and end past the image:
    # the window is pushed back to end at the image's edge, 100 - 32 = 68
    assert _starts(90, 98, 100, 32, 8) == [68]
    assert _starts(0, 5, 100, 32, 8) == [0]  # and at the near edge, to start at 0


@pytest.mark.parametrize("tile, overlap", [(64, 16), (32, 8), (48, 12)])
def test_adjacent_windows_overlap_by_at_least_the_overlap_and_cover_the_band(tile, overlap):
    """Every band width from one to four tiles: the windows cover [lo, hi), stay in the image and
    each overlaps the next by >= `overlap` (a step of `tile - overlap + 1` left one pixel short)."""
    from mattecli.inference.tiling import _starts

    size, lo = 400, 7
    for hi in range(lo + tile + 1, lo + 4 * tile):
        starts = _starts(lo, hi, size, tile, overlap)
        assert starts[0] <= lo and starts[-1] + tile >= hi and starts[-1] + tile <= size, (hi, starts)
        steps = np.diff(starts)
        assert (steps > 0).all() and (tile - steps >= overlap).all(), (hi, starts)


def test_windows_are_clipped_to_an_image_smaller_than_the_tile():
    # 40 rows and a tile of 64: the windows are 40 high, not 64 (plan_tiles: "clipped to the image")
    trimap = np.zeros((40, 300), np.uint8)
    trimap[10:30, 20:280] = 128
    tiles = plan_tiles(trimap, 64, 16)
    assert tiles and all(t.y0 == 0 and t.y1 == 40 for t in tiles)
    assert all(t.x1 <= 300 and t.x1 - t.x0 == 64 for t in tiles)


def test_blend_fades_a_tile_only_away_from_the_image_border():
    """Two tiles one above the other, predicting 0 and 90: the upper one, at the image's top, keeps
    weight 1 down to its faded end; the lower one rises in steps of 1/9 (overlap 8) from its first row."""
    from mattecli.inference.tiling import Tile

    trimap = np.full((44, 8), 128, np.uint8)
    image = np.zeros((44, 8, 3), np.uint8)
    values = iter([np.float32(0), np.float32(90)])
    out = blend_tiles(lambda im, tri: np.full(tri.shape, next(values), np.float32), image, trimap,
                      [Tile(0, 0, 40, 8), Tile(4, 0, 44, 8)], 8)
    # row 4: upper weight 1 (not faded at the image's top), lower 1/9: 90 * (1/9) / (10/9) = 9
    # row 32: upper 8/9 (its fade starts 8 rows before its end at 40), lower 1: 90 / (17/9) = 47.6
    np.testing.assert_allclose(out[:, 0][[0, 3, 4, 32, 40, 43]], [0, 0, 9, 90 * 9 / 17, 90, 90], rtol=1e-5)


def test_pixels_no_tile_covers_are_zero():
    import warnings

    from mattecli.inference.tiling import Tile

    trimap = np.full((20, 30), 128, np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no 0 / 0
        out = blend_tiles(lambda im, tri: np.full(tri.shape, 200, np.float32), np.zeros((20, 30, 3), np.uint8),
                          trimap, [Tile(0, 0, 20, 10)], 4)
    assert (out[:, :10] == 200).all() and (out[:, 10:] == 0).all()


def test_default_ceiling_is_4gb_on_a_cpu_and_90_percent_of_the_gpu_on_cuda(monkeypatch):
    """docs/python-api.md: `max_memory` defaults to 4 GB on a CPU, 90% of the GPU's memory on CUDA."""
    import types

    import torch

    from mattecli.inference.tiling import default_max_bytes

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: types.SimpleNamespace(total_memory=10**10))
    assert default_max_bytes("cpu") == 4 * 2**30
    assert default_max_bytes("cuda") == default_max_bytes("cuda:1") == 9 * 10**9


def test_cuda_without_a_measured_figure_is_budgeted_by_the_cpu_figure():
    from mattecli.inference.tiling import model_bytes_per_pixel

    per_pixel, source = model_bytes_per_pixel(InferConfig(bytes_per_pixel=600), "cuda", half=True)
    assert per_pixel == 600 and "cuda_half_bytes_per_pixel not measured" in source
    assert model_bytes_per_pixel(InferConfig(bytes_per_pixel=600, cuda_bytes_per_pixel=500), "cuda")[0] == 500


def test_compile_on_cuda_is_budgeted_by_the_compiled_figure_where_it_is_higher():
    from mattecli.inference.tiling import model_bytes_per_pixel

    cfg = InferConfig(bytes_per_pixel=2000, cuda_bytes_per_pixel=1850, cuda_half_bytes_per_pixel=950,
                      cuda_compiled_half_bytes_per_pixel=2300)
    per_pixel, source = model_bytes_per_pixel(cfg, "cuda", half=True, compiled=True)
    assert per_pixel == 2300 and "cuda_compiled_half_bytes_per_pixel" in source and "measured" in source
    per_pixel, source = model_bytes_per_pixel(cfg, "cuda:1", compiled=True)  # float32: twice, and said unmeasured
    assert per_pixel == 4600 and "not measured" in source
    assert model_bytes_per_pixel(cfg, "cuda", half=True)[0] == 950  # eager
    assert model_bytes_per_pixel(cfg, "cuda", half=True, backend="onnx", compiled=True)[0] == 950
    assert model_bytes_per_pixel(cfg, "cpu", compiled=True)[0] == 2000
    lower = InferConfig(bytes_per_pixel=2000, cuda_half_bytes_per_pixel=950, cuda_bytes_per_pixel=1850,
                        cuda_compiled_half_bytes_per_pixel=500)  # a compiled graph that needs less: eager's stands
    assert model_bytes_per_pixel(lower, "cuda", half=True, compiled=True)[0] == 950
    assert model_bytes_per_pixel(lower, "cuda", compiled=True)[0] == 1850  # 2 x 500 under 1,850


def test_released_recipes_state_the_compiled_figure_only_where_compiling_needs_more():
    from mattecli.recipes import load_recipe

    assert load_recipe("a2u-dynamic-cs-d-gn").infer.cuda_compiled_half_bytes_per_pixel == 2300
    assert load_recipe("a2u-static-pw-cw").infer.cuda_compiled_half_bytes_per_pixel == 0  # its CPU figure stands in
    assert load_recipe("indexnet-m2o-nl-ctx").infer.cuda_compiled_half_bytes_per_pixel == 0
    assert load_recipe("tcp").infer.cuda_compiled_half_bytes_per_pixel == 0
    with pytest.raises(ValueError):
        InferConfig(cuda_compiled_half_bytes_per_pixel=-1)
