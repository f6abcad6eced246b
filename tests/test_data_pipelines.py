"""Training pipelines (dim, gca, tcp), trimap generators and the synthetic dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mattecli.data import trimap as tri
from mattecli.data.manifest import read_manifest, write_manifest
from mattecli.data.pipelines import PIPELINES, TrainingDataset, build_dataset
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


# ---------------------------------------------------------------------------- pipelines


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_pipeline_items(synth, name):
    ds = TrainingDataset(synth / "train", name, CROP, seed=0)
    item = ds[1]
    keys = {"name", "image", "alpha", "fg", "bg", "trimap"} | ({"trimap2"} if name == "tcp" else set())
    assert set(item) == keys
    for key, channels in (("image", 3), ("fg", 3), ("bg", 3), ("alpha", 1)):
        assert item[key].shape == (channels, CROP, CROP) and item[key].dtype == torch.float32
        assert 0 <= item[key].min() and item[key].max() <= 1
    for key in keys & {"trimap", "trimap2"}:
        assert item[key].shape == (1, CROP, CROP) and item[key].dtype == torch.uint8
        assert set(item[key].unique().tolist()) <= {0, 128, 255}
    assert (item["trimap"] == 128).any()  # the crop is centred on unknown pixels
    a = item["alpha"]
    torch.testing.assert_close(item["image"], a * item["fg"] + (1 - a) * item["bg"])
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
    with pytest.raises(UsageError, match="fg, alpha and bg"):
        TrainingDataset(tmp_path, "dim")
    assert build_dataset(DataConfig(pipeline="tcp", crop_size=CROP), synth / "train").pipeline == "tcp"


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


def test_eroded_trimap_kernels():
    alpha = _step_alpha(ramp=4)
    base = tri.eroded_trimap(alpha, 1, 1)
    np.testing.assert_array_equal(base == 128, (alpha > 0) & (alpha < 1))
    wider = tri.eroded_trimap(alpha, 9, 5)
    grown = (wider == 128).sum(axis=1)[10] - (base == 128).sum(axis=1)[10]
    assert grown == 9 // 2 + 5 // 2


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
