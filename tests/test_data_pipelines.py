"""Training pipelines (dim, gca, tcp), trimap generators and the synthetic dataset."""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np
import pytest
from PIL import Image
import torch

from mattecli.data import trimap as tri
from mattecli.data.manifest import read_manifest, write_manifest
from mattecli.data import pipelines
from mattecli.data.pipelines import (PIPELINES, TrainingDataset, build_dataset, clipped_window,
                                     crop_sizes, fitting_window)
from mattecli.data.synthetic import prepare_synthetic
from mattecli.errors import UsageError
from mattecli.recipes import DataConfig

CROP = 64


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    prepare_synthetic(out, n_train=4, n_test=2, size=160, seed=3)
    return out


# ---------------------------------------------------------------------------- synthetic dataset


def test_synthetic_layout(synth):
    train, test = read_manifest(synth / "train"), read_manifest(synth / "test")
    assert len(train) == 4 and len(test) == 2
    assert all(s.fg and s.bg and s.alpha and s.image and s.trimap is None for s in train)
    assert all(s.fg and s.bg and s.alpha and s.image and s.trimap for s in test)
    from PIL import Image

    alpha = np.array(Image.open(test[0].alpha))
    assert alpha.shape == (160, 160)
    assert (alpha == 0).any() and (alpha == 255).any() and ((alpha > 0) & (alpha < 255)).mean() > 0.02
    assert set(np.unique(np.array(Image.open(test[0].trimap)))) == {0, 128, 255}


def test_synthetic_is_deterministic(synth, tmp_path):
    prepare_synthetic(tmp_path / "a", n_train=4, n_test=2, size=160, seed=3)
    prepare_synthetic(tmp_path / "b", n_train=4, n_test=2, size=160, seed=4)
    files = sorted(p.relative_to(synth) for p in synth.rglob("*.png"))
    assert len(files) == 4 * 4 + 2 * 5
    assert all((tmp_path / "a" / f).read_bytes() == (synth / f).read_bytes() for f in files)
    assert sum((tmp_path / "b" / f).read_bytes() != (synth / f).read_bytes() for f in files) == len(files)


def test_a_small_synthetic_test_trimap_keeps_some_foreground(tmp_path):
    """At --size 64 the 5..15 px band covered the whole silhouette of 4 of 8 test images, so their
    trimaps had no foreground and infer warned of each; the band narrows until some is left (a
    first draw that leaves some is kept: the demo's 160 px data are unchanged)."""
    from PIL import Image

    prepare_synthetic(tmp_path, n_train=0, n_test=8, size=64, seed=0)
    trimaps = [np.array(Image.open(s.trimap)) for s in read_manifest(tmp_path / "test")]
    assert len(trimaps) == 8 and all({0, 128, 255} <= set(np.unique(t)) for t in trimaps)


# ---------------------------------------------------------------------------- pipelines

COMPOSED = {"dim", "gca", "tcp", "tcp-clean"}  # image = alpha fg + (1 - alpha) bg exactly
SECOND_TRIMAP = {"tcp", "tcp-composited"}
NO_FG_BG = {"tcp-composited", "tcp-composited-clean"}


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_pipeline_items(synth, name):
    ds = TrainingDataset(synth / "train", name, CROP, seed=0)
    item = ds[1]
    keys = {"name", "image", "alpha", "trimap"} | ({"trimap2"} if name in SECOND_TRIMAP else set())
    keys |= set() if name in NO_FG_BG else {"fg", "bg"}
    assert set(item) == keys
    for key, channels in (("image", 3), ("fg", 3), ("bg", 3), ("alpha", 1)):
        if key in keys:
            assert item[key].shape == (channels, CROP, CROP) and item[key].dtype == torch.float32
            assert 0 <= item[key].min() and item[key].max() <= 1
    for key in keys & {"trimap", "trimap2"}:
        assert item[key].shape == (1, CROP, CROP) and item[key].dtype == torch.uint8
        assert set(item[key].unique().tolist()) <= {0, 128, 255}
    assert (item["trimap"] == 128).any()  # the crop is centred on unknown pixels
    a = item["alpha"]
    if name in COMPOSED:
        torch.testing.assert_close(item["image"], a * item["fg"] + (1 - a) * item["bg"])
    elif "fg" in keys:  # mmagic: the prepared composite, resized like fg and bg
        assert (item["image"] - (a * item["fg"] + (1 - a) * item["bg"])).abs().mean() < 0.01
    # definite trimap regions agree with the alpha (nearest-resized trimaps may move an edge pixel)
    fg, bg = item["trimap"][0] == 255, item["trimap"][0] == 0
    for region, agrees in ((fg, a[0] > 0.99), (bg, a[0] < 0.01)):
        assert agrees[region].sum() >= 0.98 * region.sum()


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_pipeline_reproducible_and_varied(synth, tmp_path, name):
    # the same sample listed twice: equal files must still get different augmentations
    rows = read_manifest(synth / "train")
    write_manifest(tmp_path / "manifest.csv", [rows[0], rows[0], rows[1]])
    a, b = TrainingDataset(tmp_path, name, CROP, seed=7), TrainingDataset(tmp_path, name, CROP, seed=7)
    x, y = a[0], b[0]
    assert all(torch.equal(x[k], y[k]) for k in x if k != "name")
    assert not torch.equal(a[0]["image"], a[1]["image"])  # another index (another worker's share)
    b.set_epoch(1)
    assert not torch.equal(x["image"], b[0]["image"])  # another epoch
    assert not torch.equal(x["image"], TrainingDataset(tmp_path, name, CROP, seed=8)[0]["image"])


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_pipelines_read_only_the_files_a_sample_uses(synth, monkeypatch, name):
    opened = []
    for reader in ("read_image", "read_gray"):
        real = getattr(pipelines, reader)
        monkeypatch.setattr(pipelines, reader, lambda path, real=real: opened.append(path) or real(path))
    ds = TrainingDataset(synth / "train", name, CROP, seed=0)
    rows = ds.samples
    for index in range(len(ds)):
        opened.clear()
        ds[index]
        own = {getattr(rows[index], c) for c in PIPELINES[name].reads}
        if name in COMPOSED - {"dim"}:  # A2U: the sample's fg and alpha, maybe a second pair, one bg
            assert len(opened) in (3, 5) and {rows[index].fg, rows[index].alpha} <= set(opened)
            assert sum(p in {r.bg for r in rows} for p in opened) == 1
            assert not any(p == r.image for p in opened for r in rows)
        else:
            assert sorted(opened) == sorted(own)


def _record_crops(monkeypatch):
    """Wrap the pipelines' one cropping step: (input arrays, top, left, side) of every crop."""
    calls = []
    real = pipelines._crop

    def crop(arrays, top, left, side):
        calls.append(([np.array(a) for a in arrays], top, left, side))
        return real(arrays, top, left, side)

    monkeypatch.setattr(pipelines, "_crop", crop)
    return calls


@pytest.mark.parametrize("name,unknown_of", [
    ("dim", lambda arrays: arrays[3] == 128),
    ("tcp-composited", lambda arrays: arrays[2] == 128),
    ("mmagic", lambda arrays: (arrays[0] > 0) & (arrays[0] < 255)),  # mmagic: from the alpha
    ("mmagic-dimaug", lambda arrays: (arrays[0] > 0) & (arrays[0] < 255)),
    ("gca", lambda arrays: arrays[2] == 128),
])
def test_crop_window_fits_and_is_centred_on_an_unknown_pixel(synth, monkeypatch, name, unknown_of):
    calls = _record_crops(monkeypatch)
    ds = TrainingDataset(synth / "train", name, CROP, seed=0)
    for epoch in range(6):
        ds.set_epoch(epoch)
        for index in range(len(ds)):
            ds[index]
    sides = set()
    for arrays, top, left, side in calls:
        h, w = arrays[0].shape[:2]
        assert 0 <= top and top + side <= h and 0 <= left and left + side <= w
        assert unknown_of(arrays)[top + side // 2, left + side // 2]
        sides.add(side)
    if name.startswith("mmagic"):  # all three sides, whatever the image size (160 here)
        assert sides == {CROP, CROP * 3 // 2, CROP * 2}
    elif name == "dim":  # IndexNet: only sides below the short side (160): 64, 96, 128
        assert sides == {CROP, CROP * 3 // 2, CROP * 2}
    else:
        assert sides == {CROP}


def test_fitting_window_rules():
    rng = np.random.default_rng(0)
    for trial in range(200):
        h, w, side = (int(v) for v in rng.integers(8, 40, size=3))
        side = min(side, h, w)
        unknown = rng.random((h, w)) < 0.05
        for exclusive in (False, True):
            window = fitting_window(unknown, side, rng, exclusive_end=exclusive)
            if window is None:
                continue
            top, left = window
            half = side // 2 if exclusive else (side + 1) // 2  # IndexNet's centre: ceil(side / 2)
            assert 0 <= top <= h - side and 0 <= left <= w - side
            assert unknown[top + half, left + half]
    # the last window that fits: IndexNet's range includes it, A2U's and mmagic's do not
    unknown = np.zeros((10, 10), bool)
    unknown[7, 7] = True
    assert fitting_window(unknown, 6, rng) == (4, 4)
    assert fitting_window(unknown, 6, rng, exclusive_end=True) is None
    assert clipped_window(unknown, 6, rng) == (4, 4)
    unknown[:] = False
    unknown[9, 0] = True
    assert fitting_window(unknown, 6, rng) is None and clipped_window(unknown, 6, rng) == (4, 0)
    many = np.zeros((30, 30), bool)
    many[15, 5:14] = True  # 9 candidates: A2U wants 10 or it crops anywhere
    assert fitting_window(many, 10, rng, exclusive_end=True, min_count=10) is None
    many[15, 14] = True
    assert fitting_window(many, 10, rng, exclusive_end=True, min_count=10) is not None


def _indexnet_window(unknown, side):
    """hldataset.py:111-128 for a mask with one unknown pixel: the centre offset is ceil(side / 2);
    centres in [c, h - c] are taken as they are, any other is moved inside."""
    h, w = unknown.shape
    c = -(-side // 2)
    (y,), (x,) = np.nonzero(unknown)
    if c <= y <= h - c and c <= x <= w - c:
        return y - c, x - c
    top, left = min(max(y - c, 0), h), min(max(x - c, 0), w)
    return (h - side if top + side > h else top), (w - side if left + side > w else left)


@pytest.mark.parametrize("side", [5, 6])
def test_dim_window_follows_indexnet_for_odd_and_even_sides(side):
    rng = np.random.default_rng(0)
    for y in range(12):
        for x in range(11):
            unknown = np.zeros((12, 11), bool)
            unknown[y, x] = True
            got = (pipelines.fitting_window(unknown, side, rng)
                   or pipelines.clipped_window(unknown, side, rng, half=(side + 1) // 2))
            assert got == _indexnet_window(unknown, side), (y, x)


def test_indexnet_crop_sizes():
    # hldataset.py: floor(320 x {1, 1.5, 2}) strictly below the short side
    assert crop_sizes(320, 700) == [320, 480, 640]
    assert crop_sizes(320, 640) == [320, 480]
    assert crop_sizes(320, 500) == [320, 480]
    assert crop_sizes(320, 480) == [320]
    assert crop_sizes(320, 320) == [320]  # their code has no candidate here; the crop fits


class _ArrayDataset:
    """Just what a pipeline function uses of a TrainingDataset, over in-memory uint8 arrays."""

    def __init__(self, rows, crop):
        self.rows, self.crop_size = rows, crop

    def __len__(self):
        return len(self.rows)

    def read(self, index, column):
        return self.rows[index][column]


def _soft_disc(h, w, radius, ramp=6.0):
    yy, xx = np.mgrid[0:h, 0:w]
    d = np.hypot(yy - h / 2, xx - w / 2) - radius
    return (np.clip(0.5 - d / ramp, 0, 1) * 255).round().astype(np.uint8)


def test_dim_resizes_short_sides_below_the_crop_to_500(monkeypatch):
    calls = _record_crops(monkeypatch)
    h, w = 150, 230  # short side below 320
    rng = np.random.default_rng(1)
    row = {"fg": rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "alpha": _soft_disc(h, w, 50),
           "bg": rng.integers(0, 256, (h, w, 3), dtype=np.uint8)}
    pipelines.dim_pipeline(_ArrayDataset([row], 320), 0, np.random.default_rng(0))
    arrays, _, _, side = calls[0]
    # s = 500 / 150, sizes floored: 500 x floor(230 * 500 / 150) = 766
    assert arrays[0].shape[:2] == (500, 766) and side in (320, 480)


def _indexnet_resize(arrays, size):
    """hldataset.py resize_image_alpha: bicubic on the uint8 fg, alpha and bg, which stay uint8
    (rounded and saturated)."""
    return [cv2.resize(x, size, interpolation=cv2.INTER_CUBIC) for x in arrays]


def test_dim_resizes_the_uint8_arrays_as_indexnet(monkeypatch):
    """A transcription of IndexNet's RandomCrop (hldataset.py:97-137) on the window matte drew:
    their arrays are uint8 throughout, so each bicubic resize rounds to 8 bits."""
    calls = _record_crops(monkeypatch)
    h, w = 150, 230  # short side below 320: resized to 500 first, then crops of 320 or 480
    rng = np.random.default_rng(1)
    row = {"fg": rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "alpha": _soft_disc(h, w, 50),
           "bg": rng.integers(0, 256, (h, w, 3), dtype=np.uint8)}
    s = (320 + 180) / min(h, w)
    big = _indexnet_resize([row[k] for k in ("fg", "alpha", "bg")],
                           (int(np.floor(w * s)), int(np.floor(h * s))))
    sides = set()
    for seed in range(8):
        calls.clear()
        out = pipelines.dim_pipeline(_ArrayDataset([row], 320), 0, np.random.default_rng(seed))
        _, top, left, side = calls[0]
        sides.add(side)
        theirs = [x[top:top + side, left:left + side] for x in big]
        if side != 320:
            theirs = _indexnet_resize(theirs, (320, 320))
        got = [np.round(out[k] * 255).astype(np.uint8) for k in ("fg", "alpha", "bg")]
        flipped = [np.ascontiguousarray(x[:, ::-1]) for x in theirs]
        assert any(all(np.array_equal(g, t) for g, t in zip(got, want)) for want in (theirs, flipped))
    assert sides == {320, 480}


def test_gca_background_is_cropped_at_the_foreground_crop_never_squashed(monkeypatch):
    """A background larger than the foreground (also after its 640 x 640 resize) comes out as a
    window of itself at the foreground crop's place, not resized; a smaller one is upscaled."""
    crop, h, w = 64, 120, 100
    yy, xx = np.mgrid[0:700, 0:720]
    bg = np.stack([xx % 256, yy % 256, xx // 256 * 16 + yy // 256], axis=-1).astype(np.uint8)
    rows = [{"fg": np.full((h, w, 3), 128, np.uint8), "alpha": _soft_disc(h, w, 30), "bg": bg}]
    ds = _ArrayDataset(rows, crop)
    calls = _record_crops(monkeypatch)
    for seed in range(20):
        calls.clear()
        out = pipelines.gca_pipeline(ds, 0, np.random.default_rng(seed))
        got = np.round(out["bg"] * 255).astype(int)
        _, top, left, _ = calls[-1]
        np.testing.assert_array_equal(got, bg[top:top + crop, left:left + crop])
    # a background smaller than the foreground is upscaled by max(h / hb, w / wb), aspect kept
    small = bg[:60, :80]
    rows[0]["bg"] = small
    fg, alpha, trimap, out_bg = pipelines.a2u_crop(
        rows[0]["fg"], rows[0]["alpha"] / 255, tri.eroded_trimap(rows[0]["alpha"] / 255, 3, 3),
        small, crop, np.random.default_rng(0))
    assert out_bg.shape == (crop, crop, 3) and fg.shape == (crop, crop, 3)
    calls.clear()
    pipelines.a2u_crop(rows[0]["fg"], rows[0]["alpha"] / 255,
                       tri.eroded_trimap(rows[0]["alpha"] / 255, 3, 3), small, crop,
                       np.random.default_rng(0))
    arrays = calls[-1][0]
    assert arrays[3].shape[:2] == (120, 160)  # ratio 2: 60 x 80 -> 120 x 160 (ceil), not 120 x 100


def _hsv(rgb):
    return cv2.cvtColor(rgb.astype(np.float32), cv2.COLOR_RGB2HSV)


def test_hsv_jitter_offsets_within_the_authors_bounds():
    rng = np.random.default_rng(0)
    fg = np.ascontiguousarray(rng.uniform(0.3, 0.7, (24, 24, 3)).astype(np.float32))
    alpha = np.ones((24, 24), np.float32)
    before = _hsv(fg)
    hue, offsets = [], {1: [], 2: []}
    for seed in range(300):
        after = _hsv(pipelines.hsv_jitter(fg, alpha, np.random.default_rng(seed)))
        shift = np.remainder(after[..., 0] - before[..., 0] + 180, 360) - 180
        hue.append(float(np.median(shift)))
        for c in (1, 2):
            offsets[c].append(float(np.median(after[..., c] - before[..., c])))
    assert min(hue) >= -40.01 and max(hue) <= 39.01 and max(hue) - min(hue) > 70
    for c in (1, 2):
        bound = (1.1 - before[..., c].mean()) / 10
        assert max(np.abs(offsets[c])) <= bound + 1e-3  # GCA/A2U: +-(1.1 - mean) / 10
        assert max(np.abs(offsets[c])) >= 0.9 * bound  # and the whole range is used
    assert pipelines.hsv_jitter(fg, np.zeros_like(alpha), rng) is fg  # all-transparent: skipped


def test_a2u_affine_matches_a_transcription_of_their_matrix():
    def theirs(center, angle, scale, shear, flip):  # data_generator.py _get_inverse_affine_matrix
        angle, shear = np.deg2rad(angle), np.deg2rad(shear)
        sx, sy = 1.0 / scale[0] * flip[0], 1.0 / scale[1] * flip[1]
        d = np.cos(angle + shear) * np.cos(angle) + np.sin(angle + shear) * np.sin(angle)
        m = [np.cos(angle) * sx, np.sin(angle + shear) * sx, 0,
             -np.sin(angle) * sy, np.cos(angle + shear) * sy, 0]
        m = [v / d for v in m]
        m[2] += m[0] * -center[0] + m[1] * -center[1] + center[0]
        m[5] += m[3] * -center[0] + m[4] * -center[1] + center[1]
        return np.array(m).reshape(2, 3)

    rng = np.random.default_rng(0)
    flips = set()
    for _ in range(200):
        h, w = (int(v) for v in rng.integers(50, 2000, size=2))
        p = pipelines.random_affine_params(h, w, rng)
        assert (p["angle"] == 0) == (max(h, w) < 1024) and -30 <= p["angle"] <= 30
        assert all(0.8 <= s <= 1.25 for s in p["scale"]) and -10 <= p["shear"] <= 10
        flips.add(p["flip"])
        np.testing.assert_allclose(pipelines.a2u_inverse_affine(h, w, **p),
                                   theirs((w * 0.5 + 0.5, h * 0.5 + 0.5), **p), atol=1e-12)
    assert flips == {(1, 1), (-1, 1), (1, -1), (-1, -1)}  # vertical flips too


def test_mix_foregrounds_as_a2u():
    rng = np.random.default_rng(2)  # a case where another order of the products truncates differently
    fg1, fg2 = (rng.integers(0, 256, (300, 200, 3), dtype=np.uint8) for _ in range(2))
    a1, a2 = (rng.integers(0, 256, (300, 200)).astype(np.float32) / 255 for _ in range(2))
    fg, alpha = pipelines.mix_foregrounds(fg1, a1, fg2, a2)
    # data_generator.py:533-539 in float32, in its order of operations, then truncated
    union = 1 - (1 - a1) * (1 - a2)
    want = (fg1.astype(np.float32) * a1[..., None]
            + fg2.astype(np.float32) * (1 - a1[..., None]) * a2[..., None]) / (union[..., None] + 1e-5)
    np.testing.assert_array_equal(alpha, union)
    assert fg.dtype == np.uint8
    np.testing.assert_array_equal(fg, want.astype(np.uint8))
    opaque = np.ones_like(a1)  # the union is opaque everywhere: nothing mixed
    assert pipelines.mix_foregrounds(fg1, opaque, fg2, a2)[0] is fg1


def test_mmagic_dimaug_trimap_is_made_after_the_resize(synth):
    ds = TrainingDataset(synth / "train", "mmagic-dimaug", CROP, seed=3)
    for index in range(len(ds)):
        item = ds[index]
        alpha, trimap = item["alpha"][0], item["trimap"][0]
        # GenerateTrimap on the final 8-bit alpha: fg only where it is 255, bg only where 0
        assert (alpha[trimap == 255] == 1).all() and (alpha[trimap == 0] == 0).all()
        assert ((alpha > 0) & (alpha < 1) <= (trimap == 128)).all()


def test_composited_pipelines_need_the_composites(synth, tmp_path):
    rows = read_manifest(synth / "train")
    write_manifest(tmp_path / "manifest.csv", [dataclasses.replace(r, image=None) for r in rows])
    for name in ("mmagic", "mmagic-dimaug", "tcp-composited"):
        with pytest.raises(UsageError, match="--composite"):
            TrainingDataset(tmp_path, name)
    assert len(TrainingDataset(tmp_path, "gca")) == len(rows)


def test_dataloader_workers_do_not_change_the_stream(synth):
    ds = TrainingDataset(synth / "train", "gca", CROP, seed=5)
    ds.set_epoch(2)

    def batches(workers):
        loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=workers)
        return [b["image"] for b in loader]

    for one, two in zip(batches(0), batches(2)):
        assert torch.equal(one, two)


def test_dataset_usage_errors(synth, tmp_path):
    with pytest.raises(UsageError, match="unknown data pipeline"):
        TrainingDataset(synth / "train", "nope")
    rows = read_manifest(synth / "test")
    write_manifest(tmp_path / "manifest.csv", [rows[0].__class__(name="x", alpha=rows[0].alpha)])
    with pytest.raises(UsageError, match="needs fg, alpha, bg"):
        TrainingDataset(tmp_path, "dim")
    write_manifest(tmp_path / "manifest.csv", [])  # `prepare-data synthetic --train 0`
    with pytest.raises(UsageError, match="manifest.csv: the manifest lists no samples$"):
        TrainingDataset(tmp_path, "dim")
    assert build_dataset(DataConfig(pipeline="tcp", crop_size=CROP), synth / "train").pipeline == "tcp"


def test_a_manifest_listing_missing_files_is_refused_before_training(synth, tmp_path):
    """A missing training file stopped the run at the first batch that drew it (exit 1, a run
    folder left behind without a checkpoint)."""
    rows = read_manifest(synth / "train")
    gone = tmp_path / "gone.png"
    write_manifest(tmp_path / "manifest.csv", [rows[0], dataclasses.replace(rows[1], bg=gone)])
    with pytest.raises(UsageError, match=f"manifest.csv: 1 of the files it lists is missing, e.g. {gone}$"):
        TrainingDataset(tmp_path, "dim")
    assert len(TrainingDataset(tmp_path, "tcp-composited")) == 2  # reads image and alpha only


def test_a_folder_where_a_listed_file_should_be_is_missing(tmp_path):
    """missing_files: a file a manifest lists is there when a file is there; a folder of its name is
    no training file (it stopped the run at the first batch that read it)."""
    from mattecli.data.manifest import Sample, missing_files

    (tmp_path / "alpha.png").write_bytes(b"x")
    (tmp_path / "bg.png").mkdir()
    samples = [Sample("a", alpha=tmp_path / "alpha.png", bg=tmp_path / "bg.png", fg=tmp_path / "fg.png")]
    assert missing_files(samples, ("alpha", "fg", "bg")) == [tmp_path / "fg.png", tmp_path / "bg.png"]
    assert missing_files(samples, ("alpha", "image")) == []  # an empty column is no file to check


def test_a_manifest_write_that_fails_keeps_the_old_manifest(tmp_path):
    """write_manifest writes atomically: one stopped half way (here a row it cannot write) leaves the
    manifest that was there, not a truncated one, and no temporary file."""
    from mattecli.data.manifest import Sample

    path = write_manifest(tmp_path / "manifest.csv", [Sample("a", alpha=tmp_path / "alpha" / "a.png")])
    before = path.read_bytes()
    with pytest.raises(TypeError):
        write_manifest(path, [Sample("b", alpha=tmp_path / "alpha" / "b.png"), Sample("c", alpha=3)])
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["manifest.csv"]

# ---------------------------------------------------------------------------- trimaps


def _step_alpha(width=60, ramp=0):
    """Left half 0, right half 1, with an optional linear ramp of `ramp` pixels between."""
    x = np.arange(width, dtype=np.float32)
    row = np.clip((x - (width / 2 - ramp / 2)) / max(ramp, 1), 0, 1) if ramp else (x >= width / 2)
    return np.tile(row.astype(np.float32), (20, 1))


def test_grown_trimap_width():
    alpha = _step_alpha()
    for radius in (1, 5, 12):
        trimap = tri.grown_trimap(alpha, radius)
        unknown_cols = np.flatnonzero((trimap == 128).all(axis=0))
        # the seam is the two columns either side of the edge; each grows by `radius`
        assert len(unknown_cols) == 2 + 2 * radius
        assert (trimap[:, : 30 - 1 - radius] == 0).all() and (trimap[:, 30 + 1 + radius:] == 255).all()


def test_grown_trimap_ignores_the_last_bits_of_opencvs_distances(monkeypatch):
    """cv2's precise distance transform returns the same distance a few ulps apart from call to
    call (a process's first calls differ from its later ones); `dist <= radius` flipped the pixels
    exactly `radius` away, so a training sample's trimap depended on the calls before it."""
    alpha = np.zeros((41, 41), np.float32)
    alpha[20, 20] = 0.5  # one unknown pixel: pixels at 5 px (e.g. (20, 25), (23, 24)) lie exactly on the band
    exact = tri.grown_trimap(alpha, 5, seam=False)
    assert exact[20, 25] == exact[23, 24] == 128 and exact[20, 26] == 0
    real = cv2.distanceTransform
    for direction in (np.inf, -np.inf):
        monkeypatch.setattr(tri.cv2, "distanceTransform",
                            lambda *a: np.nextafter(real(*a), np.float32(direction)).astype(np.float32))
        np.testing.assert_array_equal(tri.grown_trimap(alpha, 5, seam=False), exact)
        np.testing.assert_array_equal(tri.grown_trimap(alpha, 2.5, seam=False) == 128,
                                      np.hypot(*np.mgrid[-20:21, -20:21]) <= 2.5)


def test_eroded_trimap_kernels():
    alpha = _step_alpha(ramp=4)
    base = tri.eroded_trimap(alpha, 1, 1)
    np.testing.assert_array_equal(base == 128, (alpha > 0) & (alpha < 1))
    wider = tri.eroded_trimap(alpha, 9, 5)
    grown = (wider == 128).sum(axis=1)[10] - (base == 128).sum(axis=1)[10]
    assert grown == 9 // 2 + 5 // 2


def test_definite_alpha_is_exactly_0_or_1_of_an_8bit_alpha():
    """1/255 and 254/255 are partial alpha (unknown), only 0 and 255 are definite bg / fg."""
    fg, bg = tri.definite_masks(np.array([0, 1, 2, 253, 254, 255], np.float64) / 255)
    assert fg.tolist() == [False] * 5 + [True] and bg.tolist() == [True] + [False] * 5


def test_random_trimaps_draw_the_authors_ranges(monkeypatch):
    """`dim`: radius np.random.randint(1, 20), 1..19; GCA: fg and bg kernels each 1..29, TCP 1..30
    (both ends included); `matte trimap --alphas --method erode` is GCA's."""
    radii, kernels = set(), set()
    monkeypatch.setattr(tri, "grown_trimap", lambda a, radius, seam: radii.add((radius, seam)))
    monkeypatch.setattr(tri, "eroded_trimap", lambda a, k_fg, k_bg: kernels.update((k_fg, k_bg)))
    rng = np.random.default_rng(0)
    for _ in range(400):
        tri.random_grown_trimap(None, rng)
        tri.random_eroded_trimap(None, rng, 30)
    assert radii == {(r, False) for r in range(1, 20)} and kernels == set(range(1, 31))
    kernels.clear()
    for _ in range(400):
        tri.trimap_from_alpha(np.zeros((2, 2), np.uint8), "erode", rng)
    assert kernels == set(range(1, 30))


def test_noise_labels_a_pixel_of_alpha_one_half_leaving_the_unknown_region_foreground():
    """Alpha >= 0.5 -> 255, below -> 0, for the pixels an erosion takes out of the unknown region."""
    alpha = np.array([[0.0, 0.49, 0.5, 0.5, 0.51, 1.0]], np.float32)
    trimap = np.array([[0, 128, 128, 128, 128, 255]], np.uint8)
    out = tri.apply_noise_steps(trimap, alpha, [tri.NoiseStep("erode", 3, 3)])
    assert out.tolist() == [[0, 0, 255, 255, 255, 255]]


def test_noise_step_ranges():
    steps = [tri.draw_noise_steps(np.random.default_rng(i)) for i in range(3000)]
    assert {len(s) for s in steps} == {0, 1, 2, 3}
    flat = [st for s in steps for st in s]
    assert {st.iterations for st in flat} == {0, 1, 2, 3}
    dil = {st.kernel for st in flat if st.op == "dilate"}
    ero = {st.kernel for st in flat if st.op == "erode"}
    assert dil == set(range(1, 31)) and ero == set(range(1, 11))


def test_noisy_trimap_moves_the_unknown_region():
    alpha = _step_alpha(ramp=10)
    trimap = tri.eroded_trimap(alpha, 3, 3)
    unknown = (trimap == 128).sum()
    assert np.array_equal(tri.apply_noise_steps(trimap, alpha, []), trimap)
    assert np.array_equal(tri.apply_noise_steps(trimap, alpha, [tri.NoiseStep("erode", 0, 9)]), trimap)
    dilated = tri.apply_noise_steps(trimap, alpha, [tri.NoiseStep("dilate", 2, 5)])
    assert (dilated == 128).sum() > unknown and ((trimap == 128) <= (dilated == 128)).all()
    eroded = tri.apply_noise_steps(trimap, alpha, [tri.NoiseStep("erode", 1, 7)])
    assert (eroded == 128).sum() < unknown
    left = (trimap == 128) & (eroded != 128)
    np.testing.assert_array_equal(eroded[left], np.where(alpha[left] >= 0.5, 255, 0))
    # the tcp pipeline draws from these ranges: some items' second trimap differs from the first
    rng = np.random.default_rng(0)
    assert sum(not np.array_equal(tri.noisy_trimap(trimap, alpha, rng)[0], trimap) for _ in range(50)) > 10


def test_grown_trimap_keeps_a_pixel_just_past_a_fractional_radius():
    """Unknown = within `radius` px (Euclidean): at radius 2.9 the pixels at squared distance 0..8
    around one partial pixel (1 + 4 + 4 + 4 + 8 + 4 = 25 of them) are unknown, the ones 3 px away are not."""
    alpha = np.zeros((11, 11), np.float32)
    alpha[5, 5] = 0.5
    trimap = tri.grown_trimap(alpha, 2.9, seam=False)
    assert (trimap == 128).sum() == 25
    assert trimap[5, 8] == trimap[8, 5] == 0 and trimap[7, 7] == 128  # 3 px away; 2 * sqrt(2) = 2.83 px


def test_eroded_trimap_erodes_with_an_ellipse_not_a_square():
    """GCA's elliptical kernel: OpenCV's 5x5 ellipse is 17 pixels (rows 1..3 full, rows 0 and 4 only
    their middle pixel), so a single background pixel in foreground makes 16 unknown pixels around it
    under a 5 px fg kernel (a square would make 24; bg kernel 1 = no erosion)."""
    alpha = np.ones((11, 11), np.float32)
    alpha[5, 5] = 0.0
    trimap = tri.eroded_trimap(alpha, 5, 1)
    assert trimap[5, 5] == 0 and (trimap == 128).sum() == 16
    assert trimap[3, 4] == trimap[3, 6] == trimap[7, 4] == trimap[7, 6] == 255  # 2 rows, 1 column away: fg
    assert trimap[3, 5] == trimap[4, 3] == trimap[6, 7] == trimap[5, 3] == 128


def test_synthetic_with_no_test_samples_writes_an_empty_test_manifest(tmp_path):
    """`--test 0` wrote the test manifest as a file named `OUT/test`."""
    report = prepare_synthetic(tmp_path / "s", n_train=1, n_test=0, size=32)
    assert report.manifests["test"] == tmp_path / "s" / "test" / "manifest.csv"
    assert read_manifest(tmp_path / "s" / "test") == []


def test_synthetic_shows_a_progress_bar(tmp_path, capsys):
    """prepare-data synthetic showed nothing until it ended (minutes for --train 1000), where every
    other long command draws a progress bar on stderr."""
    prepare_synthetic(tmp_path / "s", n_train=2, n_test=1, size=32)
    err = capsys.readouterr().err
    assert "synthetic train" in err and "2/2" in err and "synthetic test" in err


@pytest.mark.parametrize("pipeline", ["dim", "gca", "tcp-composited", "mmagic"])
def test_a_sample_whose_alpha_has_another_size_is_named(synth, tmp_path, pipeline):
    """A hand-made manifest's alpha of another size than its foreground: a broadcasting ValueError
    traceback at the batch (gca, tcp), or, for dim, fg and alpha cropped from two places unsaid."""
    import shutil

    from mattecli.errors import InputError

    data = tmp_path / "train"
    shutil.copytree(synth / "train", data)
    alpha = read_manifest(data)[0].alpha
    Image.fromarray(np.zeros((150, 140), np.uint8)).save(alpha)
    ds = TrainingDataset(data, pipeline, crop_size=64)
    # named as the odd one, or as the one read first (mmagic reads the alpha first)
    with pytest.raises(InputError, match=rf"({alpha}: alpha is 140x150 but the sample's \w+ .* is 160x160|"
                                         rf"is 160x160 but the sample's alpha {alpha} is 140x150)"):
        ds[0]


# ---------------------------------------------------------------------------- mutation-testing gaps


def test_fitting_window_reaches_the_top_left_window():
    """The first centre of both ranges is the window's own centre offset: IndexNet's start at
    ceil(side / 2) (hldataset.py:111-120), mmagic's at side // 2 (random_choose_unknown's
    `mask[delta_h:h - delta_h]`), so an unknown pixel there gives the window at (0, 0), and one a
    row or column before it fits no window."""
    rng = np.random.default_rng(0)
    for side in (5, 6):
        for exclusive, half in ((False, (side + 1) // 2), (True, side // 2)):
            unknown = np.zeros((12, 13), bool)
            unknown[half, half] = True
            assert fitting_window(unknown, side, rng, exclusive_end=exclusive) == (0, 0)
            for y, x in ((half - 1, half), (half, half - 1)):
                unknown[:] = False
                unknown[y, x] = True
                assert fitting_window(unknown, side, rng, exclusive_end=exclusive) is None


def test_clipped_window_centres_at_side_floor_half_by_default():
    """mmagic's random_choose_unknown: top = clip(centre - crop // 2, 0, h - crop); for an odd side
    that is floor(side / 2), IndexNet's ceil(side / 2) only when asked for (hldataset.py:111)."""
    rng = np.random.default_rng(0)
    unknown = np.zeros((10, 11), bool)
    unknown[4, 6] = True
    assert clipped_window(unknown, 5, rng) == (2, 4)
    assert clipped_window(unknown, 5, rng, half=3) == (1, 3)
    unknown[:] = False
    unknown[9, 10] = True  # moved inside: the last window, h - side and w - side
    assert clipped_window(unknown, 5, rng) == (5, 6)


def test_random_window_draws_every_position_including_the_last():
    """A2U/GCA RandomCrop's fallback: left_top = (randint(0, h - crop + 1), randint(0, w - crop + 1)),
    i.e. every top in 0..h - crop and left in 0..w - crop, the last window included."""
    rng = np.random.default_rng(0)
    tops, lefts = set(), set()
    for _ in range(400):
        top, left = pipelines._random_window(7, 9, 4, rng)
        tops.add(top)
        lefts.add(left)
    assert tops == set(range(4)) and lefts == set(range(6))


def test_flip_is_horizontal_with_probability_one_half():
    """IndexNet's RandomFlip and mmagic's Flip(flip_ratio=0.5): a horizontal flip, half the time."""
    x = np.arange(12, dtype=np.uint8).reshape(3, 4)
    flipped = 0
    for seed in range(2000):
        (out,) = pipelines._flip([x], np.random.default_rng(seed))
        assert np.array_equal(out, x) or np.array_equal(out, x[:, ::-1])
        flipped += not np.array_equal(out, x)
    assert 0.46 < flipped / 2000 < 0.54  # binomial sd 0.011


def test_tcp_composited_upscaled_image_stays_in_unit_range():
    """An image whose short side is below the crop is upscaled bicubically, which overshoots at
    hard edges; the item's image is documented in [0, 1] (module docstring), so it is clipped."""
    h, w = 40, 50
    yy, xx = np.mgrid[0:h, 0:w]
    checker = (((yy // 2 + xx // 2) % 2) * 255).astype(np.uint8)
    row = {"image": np.repeat(checker[..., None], 3, axis=2), "alpha": _soft_disc(h, w, 12)}
    out = pipelines.tcp_composited_pipeline(_ArrayDataset([row], 64), 0, np.random.default_rng(0))
    assert out["image"].shape == (64, 64, 3) and out["image"].dtype == np.float32
    assert out["image"].min() == 0 and out["image"].max() == 1


def test_dim_does_not_resize_an_image_whose_short_side_equals_the_crop(monkeypatch):
    """IndexNet (hldataset.py, specs/data.md): only images whose short side is *below* the crop are
    upscaled to short side 500 (x crop / 320); one of exactly the crop side is cropped as it is."""
    calls = _record_crops(monkeypatch)
    h, w = 32, 40
    rng = np.random.default_rng(1)
    row = {"fg": rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "alpha": _soft_disc(h, w, 10),
           "bg": rng.integers(0, 256, (h, w, 3), dtype=np.uint8)}
    pipelines.dim_pipeline(_ArrayDataset([row], 32), 0, np.random.default_rng(0))
    arrays, _, _, side = calls[0]
    assert arrays[0].shape[:2] == (h, w) and side == 32


def test_dim_upscales_the_trimap_nearest():
    """specs/data.md (dim): the trimap is resized nearest, also by the upscale of short sides below
    the crop to 500, so it keeps the three labels 0, 128 and 255 only."""
    h, w = 150, 230
    rng = np.random.default_rng(1)
    row = {"fg": rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "alpha": _soft_disc(h, w, 50),
           "bg": rng.integers(0, 256, (h, w, 3), dtype=np.uint8)}
    for seed in range(3):
        out = pipelines.dim_pipeline(_ArrayDataset([row], 320), 0, np.random.default_rng(seed))
        assert set(np.unique(out["trimap"]).tolist()) <= {0, 128, 255}


def test_dim_fallback_window_uses_indexnets_centre_offset(monkeypatch):
    """IndexNet (hldataset.py:111-128): when no window centred on an unknown pixel fits, the window
    around one is moved inside, its centre at offset ceil(side / 2), which differs for odd sides."""
    calls = _record_crops(monkeypatch)
    h = w = 70
    trimap = np.zeros((h, w), np.uint8)
    trimap[2, 30] = 128  # too close to the top for any window: the fallback
    monkeypatch.setattr(pipelines.tri, "random_grown_trimap", lambda alpha, rng: trimap.copy())
    rng = np.random.default_rng(1)
    row = {"fg": rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "alpha": _soft_disc(h, w, 20),
           "bg": rng.integers(0, 256, (h, w, 3), dtype=np.uint8)}
    sides = set()
    for seed in range(12):
        calls.clear()
        pipelines.dim_pipeline(_ArrayDataset([row], 33), 0, np.random.default_rng(seed))
        _, top, left, side = calls[0]
        sides.add(side)
        assert (top, left) == _indexnet_window(trimap == 128, side)
    assert sides & {33, 49}  # odd sides drawn


def test_random_affine_draws_span_the_authors_ranges():
    """specs/data.md (gca, A2U's RandomAffine): rotation in +-30 deg from a long side of 1024 on (none
    below), scale 0.8..1.25 per axis, shear +-10 deg, a flip per axis with p = 0.5: the draws fill
    each whole range, not only stay inside it."""
    rng = np.random.default_rng(0)
    draws = [pipelines.random_affine_params(700, 1024, rng) for _ in range(1000)]
    angles = [p["angle"] for p in draws]
    shears = [p["shear"] for p in draws]
    assert -30 <= min(angles) < -28 and 28 < max(angles) <= 30
    assert -10 <= min(shears) < -9.5 and 9.5 < max(shears) <= 10
    for axis in (0, 1):
        scales = [p["scale"][axis] for p in draws]
        assert 0.8 <= min(scales) < 0.82 and 1.23 < max(scales) <= 1.25
        flipped = sum(p["flip"][axis] == -1 for p in draws) / len(draws)
        assert 0.45 < flipped < 0.55  # binomial sd 0.016
    assert all(pipelines.random_affine_params(1023, 700, rng)["angle"] == 0 for _ in range(20))


def test_hsv_jitter_bounds_come_from_the_visible_pixels_only():
    """A2U/GCA RandomJitter: the saturation and value offsets are bounded by (1.1 - m) / 10 with m
    the channel's mean over the alpha > 0 pixels only, not over the whole crop."""
    fg = np.zeros((16, 16, 3), np.float32)
    fg[:, :8] = (0.9, 0.1, 0.1)  # visible: S = (0.9 - 0.1) / 0.9 = 8 / 9, V = 0.9
    fg[:, 8:] = (0.1, 0.09, 0.09)  # transparent: S = V = 0.1 (a whole-crop mean allows about 0.06)
    alpha = np.zeros((16, 16), np.float32)
    alpha[:, :8] = 1
    before = _hsv(fg)[:, :8]
    offsets = {1: [], 2: []}
    for seed in range(200):
        after = _hsv(pipelines.hsv_jitter(fg, alpha, np.random.default_rng(seed)))[:, :8]
        for c in (1, 2):
            offsets[c].append(float(np.median(after[..., c] - before[..., c])))
    for c, mean in ((1, 8 / 9), (2, 0.9)):
        bound = (1.1 - mean) / 10
        assert bound * 0.9 <= max(np.abs(offsets[c])) <= bound + 1e-3


def test_hsv_jitter_folds_saturation_and_value_back_into_the_unit_range():
    """A2U/GCA RandomJitter: a jittered S or V below 0 is taken as |x|, one above 1 as 2 - x, so a
    channel at 1 moved by u comes back as 1 - |u| and the foreground stays a colour in [0, 1]."""
    fg = np.zeros((8, 8, 3), np.float32)
    fg[:4] = (1.0, 0.5, 0.5)  # V = 1
    fg[4:] = (0.004, 0.002, 0.002)  # V = 0.004
    alpha = np.ones((8, 8), np.float32)
    bound = (1.1 - 0.502) / 10  # V's mean is 0.502 (S is 0.5 everywhere)
    for seed in range(60):
        out = pipelines.hsv_jitter(fg, alpha, np.random.default_rng(seed))
        assert -1e-6 <= out.min() and out.max() <= 1 + 1e-6
        v = _hsv(out)[..., 2]
        assert (v[:4] >= 1 - bound - 1e-4).all() and (v[4:] <= 0.004 + bound + 1e-4).all()


def _a2u_crop_inputs(monkeypatch, h, w, bg_shape, crop):
    """The arrays a2u_crop hands to its crop (fg, alpha, trimap, bg) for a soft disc of h x w."""
    calls = _record_crops(monkeypatch)
    alpha = _soft_disc(h, w, min(h, w) / 3) / 255
    fg = np.full((h, w, 3), 100, np.uint8)
    bg = np.zeros((*bg_shape, 3), np.uint8)
    pipelines.a2u_crop(fg, alpha, tri.eroded_trimap(alpha, 3, 3), bg, crop, np.random.default_rng(0))
    return calls[-1][0]


def test_a2u_background_upscale_rounds_its_size_up(monkeypatch):
    """Adobe's compose script, which A2U's RandomCrop follows: a background smaller than the
    foreground is resized by r = max(h / hb, w / wb) to (ceil(wb r), ceil(hb r)), so it is never
    a pixel short of the foreground."""
    arrays = _a2u_crop_inputs(monkeypatch, 120, 100, (70, 90), 64)
    r = max(120 / 70, 100 / 90)
    assert arrays[3].shape[:2] == (math.ceil(70 * r), math.ceil(90 * r)) == (120, 155)


def test_a2u_upscales_an_image_no_larger_than_the_crop(monkeypatch):
    """A2U/GCA RandomCrop: `if h < crop + 1 or w < crop + 1` the images are resized (nearest) by
    1.1 x crop / min(h, w), sizes truncated: a 64 x 80 image and a crop of 64 give 70 x 88."""
    arrays = _a2u_crop_inputs(monkeypatch, 64, 80, (200, 200), 64)
    assert arrays[0].shape[:2] == arrays[2].shape == (70, 88)


def test_a2u_upscale_is_nearest_and_the_background_bicubic(monkeypatch):
    """A2U/GCA RandomCrop: the small image's fg, alpha and trimap are upscaled nearest, the
    background bicubically by the same ratio (1.1 x crop / min(h, w), sizes truncated)."""
    calls = _record_crops(monkeypatch)
    h, w, crop = 64, 80, 64
    rng = np.random.default_rng(0)
    alpha = _soft_disc(h, w, 20) / 255
    fg = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    bg = rng.integers(0, 256, (90, 100, 3), dtype=np.uint8)
    trimap = tri.eroded_trimap(alpha, 3, 3)
    pipelines.a2u_crop(fg, alpha, trimap, bg, crop, np.random.default_rng(0))
    got_fg, got_alpha, got_trimap, got_bg = calls[-1][0]
    nearest = [cv2.resize(x, (88, 70), interpolation=cv2.INTER_NEAREST) for x in (fg, alpha, trimap)]
    for got, want in zip((got_fg, got_alpha, got_trimap), nearest):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got_bg, cv2.resize(bg, (110, 99), interpolation=cv2.INTER_CUBIC))


def test_a2u_crop_without_unknown_pixels_resizes_nearest(monkeypatch):
    """A2U/GCA RandomCrop: a trimap with no unknown pixel gets the whole image resized to the crop,
    fg, alpha and trimap nearest, the background bicubic."""
    h, w, crop = 100, 120, 64
    rng = np.random.default_rng(0)
    fg = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    alpha = np.ones((h, w), np.float32)
    trimap = np.full((h, w), 255, np.uint8)
    bg = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    out = pipelines.a2u_crop(fg, alpha, trimap, bg, crop, np.random.default_rng(0))
    np.testing.assert_array_equal(out[0], cv2.resize(fg, (crop, crop), interpolation=cv2.INTER_NEAREST))
    np.testing.assert_array_equal(out[3], cv2.resize(bg, (crop, crop), interpolation=cv2.INTER_CUBIC))
    assert out[1].shape == out[2].shape == (crop, crop)


@pytest.fixture(scope="module")
def gca_trace():
    """400 runs of `gca` on two small in-memory samples, recording what each step was given."""
    rng = np.random.default_rng(5)
    alpha0 = np.zeros((40, 48), np.uint8)
    alpha0[8:32, 10:30], alpha0[14:26, 16:24] = 128, 255  # three values, asymmetric
    rows = [{"fg": rng.integers(0, 256, (40, 48, 3), dtype=np.uint8), "alpha": alpha0,
             "bg": rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)},
            {"fg": rng.integers(0, 256, (20, 30, 3), dtype=np.uint8), "alpha": _soft_disc(20, 30, 6),
             "bg": rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)}]
    ds, runs = _ArrayDataset(rows, 32), []
    real_read, real_mix, real_warp = ds.read, pipelines.mix_foregrounds, cv2.warpAffine
    real_trimap = pipelines.tri.random_eroded_trimap
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ds, "read", lambda i, c: runs[-1]["reads"].append((i, c)) or real_read(i, c))
        mp.setattr(pipelines, "mix_foregrounds",
                   lambda *a: runs[-1].update(mix=[np.array(x) for x in a]) or real_mix(*a))

        def warp(x, m, size, flags):
            out = real_warp(x, m, size, flags=flags)
            runs[-1]["warp"].append((np.array(x), out.copy(), flags))
            return out

        mp.setattr(pipelines.cv2, "warpAffine", warp)
        mp.setattr(pipelines.tri, "random_eroded_trimap",
                   lambda a, r, k: runs[-1].update(trimap_alpha=np.array(a), max_kernel=k) or real_trimap(a, r, k))
        for seed in range(400):
            runs.append({"reads": [], "warp": []})
            pipelines.gca_pipeline(ds, 0, np.random.default_rng(seed))
    return rows, runs


def test_gca_mixes_a_second_foreground_half_the_time_resized_nearest(gca_trace):
    """specs/data.md (gca): with p = 0.5 a second foreground is mixed in; A2U's _composite_fg
    resizes it to the first one's size nearest."""
    rows, runs = gca_trace
    mixed = [r for r in runs if "mix" in r]
    assert 0.43 < len(mixed) / len(runs) < 0.57
    for run in mixed:
        fg1, a1, fg2, a2 = run["mix"]
        other = [i for i, c in run["reads"] if c == "fg"][1]
        np.testing.assert_array_equal(fg2, cv2.resize(rows[other]["fg"], (48, 40), interpolation=cv2.INTER_NEAREST))


def test_gca_resizes_to_640_a_quarter_of_the_time_and_warps_nearest(gca_trace):
    """specs/data.md (gca): with p = 0.25 fg and alpha are resized to 640 x 640 before the random
    affine, which A2U warps nearest (no alpha value that was not there appears, but 0 at borders)."""
    rows, runs = gca_trace
    big = [r for r in runs if r["warp"][0][0].shape[:2] == (640, 640)]
    assert all(r["warp"][0][0].shape[:2] in ((640, 640), (40, 48)) for r in runs)
    assert 0.19 < len(big) / len(runs) < 0.31
    for run in runs:
        if "mix" not in run:  # the alpha is the sample's own: values 0, 128 and 255 only
            assert set(np.unique(np.round(run["trimap_alpha"] * 255)).tolist()) <= {0, 128, 255}


def test_gca_flips_horizontally_half_the_time_after_the_affine(gca_trace):
    """A2U's RandomHorizontalFlip (p = 0.5) follows RandomAffine: the trimap is made from the warped
    alpha, mirrored in about half the runs."""
    _, runs = gca_trace
    flipped = 0
    for run in runs:
        warped, got = run["warp"][1][1], run["trimap_alpha"]
        assert np.array_equal(got, warped) or np.array_equal(got, warped[:, ::-1])
        flipped += not np.array_equal(got, warped)
    assert 0.43 < flipped / len(runs) < 0.57


def test_gca_composes_on_a_random_background_of_the_split(gca_trace):
    """specs/data.md (gca): composite with a random background (A2U), not the sample's own: with two
    samples, sample 0 gets sample 1's background about half the time; kernels 1..29."""
    _, runs = gca_trace
    bgs = [i for run in runs for i, c in run["reads"] if c == "bg"]
    assert len(bgs) == len(runs) and 0.43 < bgs.count(1) / len(runs) < 0.57
    assert {run["max_kernel"] for run in runs} == {29}


def test_a2u_crop_window_needs_ten_fitting_unknown_pixels(monkeypatch):
    """A2U's RandomCrop: the window is centred (offset crop // 2, odd crops too) on one of the
    unknown pixels whose window fits, when there are at least 10; with fewer it is anywhere."""
    calls = _record_crops(monkeypatch)
    h = w = 80
    crop = 33
    fg, alpha, bg = np.zeros((h, w, 3), np.uint8), np.full((h, w), 0.5, np.float32), np.zeros((h, w, 3), np.uint8)
    trimap = np.zeros((h, w), np.uint8)
    trimap[40, 30:39] = 128  # 9 candidates
    lonely = []
    for seed in range(20):
        pipelines.a2u_crop(fg, alpha, trimap, bg, crop, np.random.default_rng(seed))
        _, top, left, _ = calls[-1]
        lonely.append(trimap[top + crop // 2, left + crop // 2] == 128)
    assert not all(lonely)
    trimap[40, 39] = 128  # 10 candidates
    for seed in range(20):
        pipelines.a2u_crop(fg, alpha, trimap, bg, crop, np.random.default_rng(seed))
        _, top, left, _ = calls[-1]
        assert trimap[top + crop // 2, left + crop // 2] == 128


@pytest.mark.parametrize("name,kernel", [("gca", 29), ("tcp", 30), ("tcp-clean", 30), ("tcp-composited", 30),
                                         ("tcp-composited-clean", 30), ("mmagic-dimaug", 29)])
def test_eroded_trimap_kernel_range_per_pipeline(synth, monkeypatch, name, kernel):
    """Erosion kernels 1..29 for gca (specs/data.md) and mmagic's GenerateTrimap kernel_size=(1, 30),
    1..30 for every TCP pipeline (specs/tcp.md: the SP trimap erodes fg and bg by kernels 1..30)."""
    seen = []
    real = pipelines.tri.random_eroded_trimap
    monkeypatch.setattr(pipelines.tri, "random_eroded_trimap", lambda a, r, k: seen.append(k) or real(a, r, k))
    TrainingDataset(synth / "train", name, CROP, seed=0)[0]
    assert seen == [kernel]


def test_tcp_composited_upscales_bicubic_with_the_trimap_nearest(monkeypatch):
    """tcp-composited (module docstring): a short side below the crop is resized up to it, image
    and alpha bicubic (clipped to [0, 1]), the trimap nearest, before the window is cut."""
    calls = _record_crops(monkeypatch)
    h, w, crop = 40, 50, 64
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    alpha = _soft_disc(h, w, 12)
    trimap = tri.eroded_trimap(alpha / 255, 3, 3)
    monkeypatch.setattr(pipelines.tri, "random_eroded_trimap", lambda a, r, k: trimap.copy())
    pipelines.tcp_composited_pipeline(_ArrayDataset([{"image": image, "alpha": alpha}], crop), 0,
                                      np.random.default_rng(0))
    got_image, got_alpha, got_trimap = calls[0][0]
    size = (80, 64)  # s = 64 / 40: 50 x 1.6 = 80
    cubic = [np.clip(cv2.resize(x.astype(np.float32) / 255, size, interpolation=cv2.INTER_CUBIC), 0, 1)
             for x in (image, alpha)]
    np.testing.assert_array_equal(got_image, cubic[0])
    np.testing.assert_array_equal(got_alpha, cubic[1])
    np.testing.assert_array_equal(got_trimap, cv2.resize(trimap, size, interpolation=cv2.INTER_NEAREST))


def test_tcp_composited_fallback_window_uses_the_ceil_centre_offset(monkeypatch):
    """tcp-composited cuts its window as dim does (IndexNet, hldataset.py:111-128): with no
    fitting window, the one around an unknown pixel is moved inside, centre offset ceil(side / 2)."""
    calls = _record_crops(monkeypatch)
    h = w = 70
    trimap = np.zeros((h, w), np.uint8)
    trimap[2, 30] = 128
    monkeypatch.setattr(pipelines.tri, "random_eroded_trimap", lambda a, r, k: trimap.copy())
    row = {"image": np.zeros((h, w, 3), np.uint8), "alpha": _soft_disc(h, w, 20)}
    pipelines.tcp_composited_pipeline(_ArrayDataset([row], 33), 0, np.random.default_rng(0))
    _, top, left, side = calls[0]
    assert side == 33 and (top, left) == _indexnet_window(trimap == 128, 33) == (0, 13)


MMAGIC_PIPELINES = {"mmagic": pipelines.mmagic_pipeline, "mmagic-dimaug": pipelines.mmagic_dimaug_pipeline}


def _disc_row(h: int, w: int, radius: int, seed: int) -> dict:
    """A sample row: a soft disc's alpha and random image, foreground and background."""
    rng = np.random.default_rng(seed)
    image, fg, bg = (rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(3))
    return {"alpha": _soft_disc(h, w, radius), "image": image, "fg": fg, "bg": bg}


def test_mmagic_crop_around_unknown_upscales_as_mmagic(monkeypatch):
    """mmagic CropAroundUnknown: r = max(side / h, side / w); when r > 1 every array is resized to
    (max(int(h r), side), max(int(w r), side)) (h x w; the max catches 47 x 48/47 = 47.999...), the
    alpha cubic and, in the mmagic pipeline, the trimap nearest (labels 0, 128, 255 kept)."""
    calls = _record_crops(monkeypatch)
    h, w = 47, 60
    row = _disc_row(h, w, 15, seed=2)
    alpha = row["alpha"]
    sides = set()
    for seed in range(12):
        calls.clear()
        pipelines.mmagic_pipeline(_ArrayDataset([row], 32), 0, np.random.default_rng(seed))
        arrays, _, _, side = calls[0]
        sides.add(side)
        r = max(side / h, side / w)
        want = (max(int(h * r), side), max(int(w * r), side)) if r > 1 else (h, w)
        assert arrays[0].shape == want and arrays[1].shape[:2] == want
        if r > 1:
            np.testing.assert_array_equal(arrays[0], cv2.resize(alpha, want[::-1], interpolation=cv2.INTER_CUBIC))
        assert set(np.unique(arrays[4]).tolist()) <= {0, 128, 255}
    assert sides == {32, 48, 64}


def test_mmagic_crop_without_unknown_pixels_is_the_top_left_window(monkeypatch):
    """mmagic random_choose_unknown: no 0 < alpha < 255 pixel at all leaves the centre at
    (crop // 2, crop // 2), i.e. the window at the top-left corner."""
    calls = _record_crops(monkeypatch)
    alpha = np.zeros((90, 100), np.uint8)
    alpha[40:, 50:] = 255
    for seed in range(5):
        pipelines._mmagic_crop([alpha], [cv2.INTER_LINEAR], 32, np.random.default_rng(seed))
        assert calls[-1][1:3] == (0, 0)


def test_mmagic_crop_centres_are_mmagics_range(monkeypatch):
    """mmagic random_choose_unknown: candidate centres lie in [side // 2, h - side // 2), the
    exclusive end (A2U's too), not IndexNet's inclusive range."""
    seen = []
    real = pipelines.fitting_window
    monkeypatch.setattr(pipelines, "fitting_window", lambda *a, **k: seen.append(k) or real(*a, **k))
    pipelines._mmagic_crop([_soft_disc(90, 100, 30)], [cv2.INTER_LINEAR], 32, np.random.default_rng(0))
    assert seen == [{"exclusive_end": True}]


def test_dataset_items_are_channel_first_of_the_pipeline_arrays(synth, monkeypatch):
    """Module docstring: items are (C, H, W) tensors of the pipeline's (H, W, C) arrays, (1, H, W)
    for the (H, W) ones."""
    image = np.arange(4 * 6 * 3, dtype=np.float32).reshape(4, 6, 3)
    trimap = np.arange(24, dtype=np.uint8).reshape(4, 6)
    monkeypatch.setitem(PIPELINES, "dim", dataclasses.replace(
        PIPELINES["dim"], run=lambda ds, i, rng: {"image": image, "trimap": trimap}))
    item = TrainingDataset(synth / "train", "dim", CROP)[0]
    assert item["image"].shape == (3, 4, 6) and item["trimap"].shape == (1, 4, 6)
    assert item["image"][2, 1, 5] == image[1, 5, 2] and item["trimap"][0, 3, 1] == trimap[3, 1]


def test_second_trimap_flag_matches_the_items(synth):
    """A pipeline whose items carry `trimap2` says so (the training loop feeds the model a second
    input only then): tcp and tcp-composited (specs/tcp.md)."""
    for name, pipeline in PIPELINES.items():
        item = TrainingDataset(synth / "train", name, CROP, seed=0)[0]
        assert pipeline.second_trimap == ("trimap2" in item), name
    assert {n for n, p in PIPELINES.items() if p.second_trimap} == {"tcp", "tcp-composited"}


def test_item_stream_is_the_documented_seed_sequence(synth):
    """Module docstring: item i of epoch e draws from default_rng(SeedSequence([seed, e, i]))."""
    ds = TrainingDataset(synth / "train", "dim", CROP, seed=11)
    ds.set_epoch(3)
    want = np.random.default_rng(np.random.SeedSequence([11, 3, 2])).random(4)
    np.testing.assert_array_equal(ds.rng(2).random(4), want)


def test_synthetic_soft_edge_is_centred_on_the_boundary():
    """synthetic._soft: coverage from a signed distance is a ramp `softness` px wide centred on the
    boundary: 1/2 on it, 1 from softness / 2 inside, 0 from softness / 2 outside."""
    from mattecli.data.synthetic import _soft

    d = np.array([-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0])
    np.testing.assert_allclose(_soft(d, 4.0), [1, 1, 0.75, 0.5, 0.25, 0, 0])


def test_synthetic_foreground_saturates_instead_of_wrapping(monkeypatch):
    """make_foreground: base + noise above 1 is clipped to 255, not wrapped around by the uint8 cast
    (base 0.15..0.85 plus up to 0.125 + 0.04 of noise can exceed 1)."""
    from mattecli.data import synthetic

    monkeypatch.setattr(synthetic, "_value_noise", lambda size, rng, cells: np.ones((size, size, 3), np.float32))
    for seed in range(20):
        base = np.random.default_rng(seed).uniform(0.15, 0.85, size=3)
        fg = synthetic.make_foreground(4, np.random.default_rng(seed))
        want = np.round(np.minimum(base + 0.25 * 0.5 + 0.08 * 0.5, 1) * 255)
        np.testing.assert_array_equal(fg[0, 0], want)


def test_synthetic_sample_streams_and_background_kinds(tmp_path):
    """synthetic module docstring: sample i of split s (train 0, test 1) draws from
    default_rng(SeedSequence([seed, s, i])), and the background kinds cycle textured, noisy, smooth."""
    from mattecli.data import synthetic

    synthetic.prepare_synthetic(tmp_path / "s", n_train=2, n_test=1, size=24, seed=5)
    for split, split_id, i in (("train", 0, 1), ("test", 1, 0)):
        kind = synthetic.BACKGROUND_KINDS[i]
        sample = synthetic.write_sample(tmp_path / "again", "x", 24, np.random.default_rng(
            np.random.SeedSequence([5, split_id, i])), kind, merged=True, trimap=split == "test")
        for column in ("fg", "alpha", "bg", "image"):
            got = tmp_path / "s" / split / column.replace("image", "merged") / f"syn{i:04d}.png"
            assert np.array_equal(np.array(Image.open(got)), np.array(Image.open(getattr(sample, column))))
    assert synthetic.BACKGROUND_KINDS == ("textured", "noisy", "smooth")


def test_tcp_composited_flips_horizontally_half_the_time(monkeypatch):
    """tcp-composited (module docstring): the crop every pipeline makes, then a horizontal flip with
    p = 0.5 (the augmentation dim and mmagic share)."""
    calls = _record_crops(monkeypatch)
    h = w = 48
    rng = np.random.default_rng(6)
    row = {"image": rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "alpha": _soft_disc(h, w, 14)}
    flipped = 0
    for seed in range(200):
        calls.clear()
        out = pipelines.tcp_composited_pipeline(_ArrayDataset([row], 32), 0, np.random.default_rng(seed))
        arrays, top, left, side = calls[0]
        window = arrays[0][top:top + side, left:left + side]
        assert np.array_equal(out["image"], window) or np.array_equal(out["image"], window[:, ::-1])
        flipped += not np.array_equal(out["image"], window)
    assert 0.4 < flipped / 200 < 0.6  # binomial sd 0.035


@pytest.mark.parametrize("name", ["tcp", "tcp-composited"])
def test_second_trimap_labels_released_pixels_from_the_crops_alpha(synth, name):
    """specs/tcp.md: the second trimap erodes or dilates the unknown region of the first; a pixel
    eroded out of it is labelled from the item's own alpha (foreground from 1/2 up, else background)."""
    ds = TrainingDataset(synth / "train", name, CROP, seed=1)
    released = 0
    for epoch in range(4):
        ds.set_epoch(epoch)
        for index in range(len(ds)):
            item = ds[index]
            t, t2, a = item["trimap"][0], item["trimap2"][0], item["alpha"][0]
            left = (t == 128) & (t2 != 128)
            released += int(left.sum())
            assert torch.equal(t2[left], torch.where(a[left] >= 0.5, 255, 0).to(torch.uint8))
    assert released > 0


@pytest.mark.parametrize("name", ["mmagic", "mmagic-dimaug"])
def test_mmagic_pipelines_resize_the_window_to_the_crop_and_flip_half_the_time(monkeypatch, name):
    """mmagic's IndexNet configs: the window is resized to the crop, `Resize` bicubic in the IndexNet
    config and bilinear in the DIM-augmentation one, then Flip(direction='horizontal', flip_ratio=0.5)."""
    calls = _record_crops(monkeypatch)
    h = w = 40
    row = _disc_row(h, w, 12, seed=8)
    run = MMAGIC_PIPELINES[name]
    flipped = resized = 0
    for seed in range(200):
        calls.clear()
        out = run(_ArrayDataset([row], 8), 0, np.random.default_rng(seed))
        arrays, top, left, side = calls[0]
        window = arrays[1][top:top + side, left:left + side]
        interp = cv2.INTER_CUBIC if name == "mmagic" else cv2.INTER_LINEAR
        want = cv2.resize(window, (8, 8), interpolation=interp)
        got = np.round(out["image"] * 255).astype(np.uint8)
        assert np.array_equal(got, want) or np.array_equal(got, want[:, ::-1])
        flipped += not np.array_equal(got, want)
        resized += side != 8
    assert 0.4 < flipped / 200 < 0.6 and resized
