import re

import cv2
import numpy as np
import pytest
import torch

from mattecli.imageio import read_trimap, write_png
from mattecli.inference.backends import TorchBackend
from mattecli.inference.pipeline import Pipeline, prepare, restore
from mattecli.models import build_model
from mattecli.recipes import InferConfig, load_recipe


def demo_transcription(model, image, trimap):
    """IndexNet's demo.py `inference`, step by step as specs/indexnet_official.md lists it."""
    mean = np.array([0.485, 0.456, 0.406, 0]).reshape((1, 1, 4))
    std = np.array([0.229, 0.224, 0.225, 1]).reshape((1, 1, 4))
    x = np.concatenate((image, trimap[..., None]), axis=2).astype("float32")
    h, w = x.shape[:2]
    x = ((1.0 / 255) * x - mean) / std
    x = x.astype("float32")
    nh, nw = int(np.ceil(h / 32) * 32), int(np.ceil(w / 32) * 32)
    rgb = cv2.resize(x[:, :, :3], dsize=(nw, nh), interpolation=cv2.INTER_CUBIC)
    tri = cv2.resize(x[:, :, 3], dsize=(nw, nh), interpolation=cv2.INTER_NEAREST)
    x = np.concatenate((rgb, tri[..., None]), axis=2)
    with torch.no_grad():
        out = model(torch.from_numpy(np.expand_dims(x.transpose(2, 0, 1), 0))).squeeze().numpy()
    alpha = cv2.resize(out, dsize=(w, h), interpolation=cv2.INTER_CUBIC)
    alpha = np.clip(alpha, 0, 1) * 255.0
    mask = np.equal(trimap, 128).astype(np.float32)
    alpha = (1 - mask) * trimap + mask * alpha
    return alpha.astype(np.uint8)


def random_case(h, w, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    trimap = rng.choice(np.array([0, 128, 255], np.uint8), (h, w), p=[0.3, 0.4, 0.3])
    return image, trimap


def seeded_model(name="indexnet-m2o-nl-ctx"):
    torch.manual_seed(0)
    model = build_model(load_recipe(name)).eval()
    with torch.no_grad():  # push the head into [0, 1] so clipping does not hide differences
        model.pred[1].weight.mul_(0.05)
    return model


@pytest.mark.parametrize("size", [(97, 131), (64, 96), (33, 200)])
def test_pipeline_equals_the_authors_demo_bit_for_bit(size):
    model = seeded_model()
    recipe = load_recipe("indexnet-m2o-nl-ctx")
    image, trimap = random_case(*size)
    ours = Pipeline(TorchBackend(model, recipe), recipe.infer).run(image, trimap).alpha
    assert ours.shape == size and ours.dtype == np.uint8
    assert np.array_equal(ours, demo_transcription(model, image, trimap))
    assert np.array_equal(ours[trimap == 0], np.zeros((trimap == 0).sum(), np.uint8))
    assert (ours[trimap == 255] == 255).all()


def a2u_transcription(model, image, trimap):
    """A2U's test path step by step: data_generator.py ToTensor (phase "test"), then trainval.py
    `validate` (numpy reflect padding to 16 at the bottom and right, crop, clip, known regions)."""
    x = torch.from_numpy(image.transpose((2, 0, 1)).astype("float32")) / 255.
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    tri = torch.from_numpy(trimap.astype("float32")).unsqueeze(dim=0)
    x = torch.cat((x, tri / 255.), dim=0).numpy().transpose(1, 2, 0)
    h, w = trimap.shape
    nh, nw = np.ceil(np.asarray((h, w), dtype=np.float64) / 16) * 16
    x = np.pad(x, ((0, int(nh) - h), (0, int(nw) - w), (0, 0)), mode="reflect")
    with torch.no_grad():
        out = model(torch.from_numpy(np.expand_dims(x.transpose(2, 0, 1), axis=0))).squeeze().numpy()
    alpha = np.clip(out[:h, :w], 0, 1) * 255.
    mask = np.equal(trimap, 128).astype(np.float32)
    alpha = (1 - mask) * trimap.astype(np.float32) + mask * alpha
    return alpha.astype(np.uint8)


@pytest.mark.parametrize("size", [(37, 53), (48, 32)])
def test_pipeline_equals_a2us_test_code_bit_for_bit(size):
    """A2U normalised in float32 (its ToTensor); matte's table used IndexNet's float64 arithmetic
    and differed by 1-2 ulps on 591 of the 768 input values."""
    recipe = load_recipe("a2u-dynamic-cs-d-gn")
    torch.manual_seed(0)
    model = build_model(load_recipe("demo-a2u")).eval()
    image, trimap = random_case(*size, seed=1)
    x = torch.from_numpy(prepare(image, trimap, recipe.infer))
    ours = Pipeline(TorchBackend(model, recipe), recipe.infer).run(image, trimap).alpha
    theirs = a2u_transcription(model, image, trimap)
    assert np.array_equal(ours, theirs)
    # the input itself, bit for bit (the alpha's uint8 truncation could hide an ulp)
    h, w = size
    expected = (torch.from_numpy(image.transpose(2, 0, 1).astype("float32")) / 255.
                - torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    assert torch.equal(x[0, :3, :h, :w], expected)
    assert torch.equal(x[0, 3, :h, :w], torch.from_numpy(trimap.astype("float32")) / 255.)


def test_trimap_channel_is_trimap_over_255_in_float32():
    image, trimap = random_case(32, 32)
    x = prepare(image, trimap, InferConfig())
    assert x.shape == (1, 4, 32, 32) and x.dtype == np.float32
    assert x[0, 3][trimap == 128][0] == np.float32(128) * np.float32(1 / 255)


def test_pad_alignment_reflects_bottom_right_and_crops_back():
    cfg = InferConfig(align="pad", stride=16)
    image, trimap = random_case(21, 37)
    x = prepare(image, trimap, cfg)
    assert x.shape == (1, 4, 32, 48)
    assert np.array_equal(x[0, :, 21, :37], x[0, :, 19, :37])  # numpy reflect: edge not repeated
    assert np.array_equal(x[0, :, :21, 37], x[0, :, :21, 35])
    raw = np.full((32, 48), 0.5, np.float32)
    raw[:21, :37] = 0.25
    alpha = restore(raw, trimap, cfg)
    assert alpha.shape == (21, 37) and (alpha[trimap == 128] == 63).all()


def test_pad_alignment_of_images_smaller_than_the_padding():
    image, trimap = random_case(3, 5)
    assert prepare(image, trimap, InferConfig(align="pad", stride=32)).shape == (1, 4, 32, 32)


def test_onehot_trimap_encoding():
    image, trimap = random_case(16, 16)
    x = prepare(image, trimap, InferConfig(trimap="onehot", align="pad", stride=16))
    assert x.shape == (1, 6, 16, 16)
    assert np.array_equal(x[0, 3:].argmax(0), np.select([trimap == 0, trimap == 128], [0, 1], 2))


def test_restore_clips_copies_known_and_truncates():
    trimap = np.array([[0, 128, 255, 128]], np.uint8)
    raw = np.array([[0.7, 1.7, 0.1, 0.5039]], np.float32)
    alpha = restore(raw, trimap, InferConfig(align="pad"))
    assert alpha.tolist() == [[0, 255, 255, 128]]  # 0.5039 * 255 = 128.49 -> 128 (truncation)


def test_trimaps_in_the_wild(tmp_path):
    clean = np.array([[0, 128, 255]], np.uint8)
    write_png(tmp_path / "clean.png", clean)
    trimap, note = read_trimap(tmp_path / "clean.png")
    assert trimap.tolist() == clean.tolist() and note is None
    # gray with a little chroma noise (a colour-coded trimap is refused: tests/test_trimap.py)
    wild = np.array([[[10, 8, 8, 255], [102, 99, 99, 255], [200, 196, 196, 255], [84, 84, 84, 0], [170, 170, 170, 0]]],
                    np.uint8)
    write_png(tmp_path / "rgba.png", wild)
    trimap, note = read_trimap(tmp_path / "rgba.png")
    assert trimap.tolist() == [[0, 128, 255, 0, 255]] and "mapped" in note and "5 pixels" in note
    from PIL import Image
    Image.fromarray((np.array([[0, 128, 255]]) * 257).astype(np.uint16)).save(tmp_path / "t16.png")
    trimap, note = read_trimap(tmp_path / "t16.png")
    assert trimap.tolist() == [[0, 128, 255]] and note is None


def test_lemur_trimap_is_accepted(tmp_path):
    from tests.conftest import LEMUR

    trimap, note = read_trimap(LEMUR / "lemur_trimap.png")
    assert trimap.shape == (440, 680) and set(np.unique(trimap)) <= {0, 128, 255}
    assert (trimap == 128).any() and "mapped" in note


def test_run_tiles_only_when_needed():
    """`run` (whole or tiled, with how) and `predict_whole`."""
    from mattecli.inference.pipeline import Matte

    cfg = InferConfig(stride=8, bytes_per_pixel=100)
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (45, 37, 3), dtype=np.uint8)
    trimap = rng.choice(np.array([0, 128, 255], np.uint8), (45, 37))

    def backend(x):
        return x[:, :1] * 0.1 + 0.5  # a pointwise "network": tiles and whole agree away from seams

    pipeline = Pipeline(backend, cfg)
    result = pipeline.run(image, trimap)
    assert isinstance(result, Matte) and result.how == "whole" and result.alpha.dtype == np.uint8
    assert np.array_equal(result.alpha, pipeline.predict_whole(image, trimap))
    tiled = Pipeline(backend, cfg, max_bytes=(100 + 96) * 32 * 32).run(image, trimap)
    assert tiled.how.startswith("tiled: ") and tiled.alpha.shape == (45, 37)
    # the tile as run, clipped to the image: a 4-pixel-high strip was "N tiles of 32x32", a 40x30
    # image in one tile "1 tiles of 64x64"
    wide = rng.integers(0, 256, (4, 400, 3), dtype=np.uint8)
    pipeline = Pipeline(backend, cfg, max_bytes=(100 + 96) * 32 * 32)
    strip = pipeline.run(wide, np.full((4, 400), 128, np.uint8))
    assert re.fullmatch(r"tiled: \d+ tiles of 32x4", strip.how), strip.how
    band = np.zeros((4, 400), np.uint8)
    band[:, 2:10] = 128
    assert pipeline.run(wide, band).how == "tiled: 1 tile of 32x4"


def test_prepare_host_fits_the_pass_and_the_inputs_waiting_beside_it_at_the_ceiling():
    """A whole pass of a 45x41 image (aligned: 48x48 at stride 8) takes 48 * 48 * (100 + 96) bytes;
    each input prepared ahead holds 48 * 48 float32 values in each of the 4 (scalar) or 6 (onehot)
    input channels. Exactly at `max_bytes` it still fits; one byte under, it does not."""
    image = np.zeros((41, 45, 3), np.uint8)
    trimap = np.full((41, 45), 128, np.uint8)
    for encoding, channels in (("scalar", 4), ("onehot", 6)):
        cfg = InferConfig(stride=8, bytes_per_pixel=100, trimap=encoding)
        need = 48 * 48 * (100 + 96) + 2 * 48 * 48 * 4 * channels  # two inputs ahead
        assert Pipeline(None, cfg, max_bytes=need).prepare_host(image, trimap, ahead=2).shape == (1, channels, 48, 48)
        assert Pipeline(None, cfg, max_bytes=need - 1).prepare_host(image, trimap, ahead=2) is None


def test_freed_buffers_are_kept_for_the_next_image_under_glibc():
    # load_pipeline raises glibc's mmap/trim thresholds (and one arena): a 4K image's big arrays
    # reuse the previous image's pages instead of faulting in fresh ones (benchmarks/host_steps.py)
    import platform

    from mattecli.inference.pipeline import reuse_freed_buffers

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only (elsewhere a no-op)")
    assert reuse_freed_buffers() is True


def every_value_image(h=32, w=32):
    """(h, w, 3) uint8 holding every 8-bit value in each channel (channels shifted apart)."""
    v = np.arange(h * w).reshape(h, w)
    return np.stack([v % 256, (v + 85) % 256, (v + 170) % 256], axis=2).astype(np.uint8)


def test_unit_normalisation_is_the_demos_arithmetic_bit_for_bit():
    # IndexNet's demo: ((1.0 / 255) * float32 image - mean) / std, the scaling in float32 and the
    # rest in float64, then cast to float32. Dividing by 255 instead differs in the last bit for
    # 126 of the 256 values; the uint8 alpha of a whole pass can hide that, the input does not.
    image, trimap = every_value_image(), np.full((32, 32), 128, np.uint8)
    x = prepare(image, trimap, InferConfig())
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    expected = (((1.0 / 255) * image.astype(np.float32)) - mean) / std
    assert np.array_equal(x[0, :3], expected.astype(np.float32).transpose(2, 0, 1))


def test_pixel_normalisation_is_mmagics_arithmetic():
    # mmagic: (x - 255 mean) / (255 std) with its literal mean and std, in float32
    image, trimap = every_value_image(), np.full((32, 32), 128, np.uint8)
    x = prepare(image, trimap, InferConfig(align="pad", stride=32, normalise="pixel"))
    mean = np.array([123.675, 116.28, 103.53], np.float32)
    std = np.array([58.395, 57.12, 57.375], np.float32)
    expected = (image.astype(np.float32) - mean) / std
    assert np.array_equal(x[0, :3], expected.transpose(2, 0, 1))


def test_trimap_encoding_multiplies_by_one_over_255_at_every_value():
    # the demo multiplies by (1.0 / 255) in float32; x / 255 differs in the last bit at some values
    # (not at 0, 128, 255, but an API caller's trimap may hold any value)
    image = every_value_image()
    trimap = (np.arange(32 * 32).reshape(32, 32) % 256).astype(np.uint8)
    x = prepare(image, trimap, InferConfig())
    assert np.array_equal(x[0, 3], (1.0 / 255) * trimap.astype(np.float32))
    a2u = prepare(image, trimap, InferConfig(align="pad", stride=32, normalise="unit-float32"))
    assert np.array_equal(a2u[0, 3], trimap.astype(np.float32) / np.float32(255))  # A2U divides


@pytest.mark.parametrize("size", [(40, 20), (20, 40)])
def test_resize_down_refuses_a_side_under_the_stride(size):
    # resize-down rounds each side down to the stride: a side under it would become 0
    image, trimap = random_case(*size)
    with pytest.raises(ValueError, match=r"\d+x\d+ is under 32 pixels on a side, which a recipe that resizes"):
        prepare(image, trimap, InferConfig(align="resize-down", stride=32))


def test_mmagic_quantise_forces_only_0_and_255_and_rounds_half_to_even():
    from mattecli.inference.pipeline import quantise

    alpha = np.array([[100.5, 101.5, 7.0, 50.2, 60.7, 254.5]], np.float32)
    trimap = np.array([[128, 128, 255, 0, 200, 128]], np.uint8)
    # force: 255 -> 255 and 0 -> 0 only; 128 and any other value keep the (rounded) alpha
    forced = quantise(alpha, trimap, cfg=InferConfig(known="force", rounding="half-even"))
    assert forced.dtype == np.uint8 and forced.tolist() == [[100, 102, 255, 0, 61, 254]]
    # copy + half-even: every value but 128 copied from the trimap, the unknown ones rounded
    copied = quantise(alpha, trimap, cfg=InferConfig(known="copy", rounding="half-even"))
    assert copied.tolist() == [[100, 102, 255, 0, 200, 254]]
    # the authors' protocol: copy and truncate
    assert quantise(alpha, trimap, cfg=InferConfig()).tolist() == [[100, 101, 255, 0, 200, 254]]


def test_resize_down_restores_by_bicubic_not_nearest():
    from mattecli.inference.pipeline import unalign

    # 2 -> 4 columns, align_corners False, cubic a = -0.75, edges clamped: by hand, output
    # columns sample at -0.25, 0.25, 0.75, 1.25 with weights (-0.0352, 0.2617, 0.8789, -0.1055)
    # and mirrored: 0.2 * 1.1055 - 0.6 * 0.1055 = 0.15781, 0.2 * 0.7734 + 0.6 * 0.2266 = 0.29063
    raw = np.array([[[[0.2, 0.6], [0.2, 0.6]]]], np.float32)
    alpha = unalign(raw, 2, 4, InferConfig(align="resize-down", stride=2))
    expected = np.array([0.1578125, 0.290625, 0.509375, 0.6421875]) * 255
    np.testing.assert_allclose(alpha, np.stack([expected, expected]), rtol=0, atol=1e-3)
