"""Trimaps from masks (`trimap_from_mask`, `matte trimap`, `matte infer --masks`), trimaps read as
found (class-index, colour-coded), and the input-side checks of `matte infer` (folders, --out)."""

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mattecli.data.make_trimaps import TrimapJob, make_trimaps
from mattecli.data.trimap import (MaskRule, band_pixels, parse_band, parse_threshold, trimap_from_alpha,
                                  trimap_from_mask)
from mattecli.errors import InputError
from mattecli.imageio import read_gray, read_mask, read_trimap, write_png
from mattecli.inference.batch import find_pairs, infer_folder
from tests.infer_helpers import FakePipeline, make_pairs


def disc(size=201, radius=50.0, centre=None):
    c = (size - 1) / 2 if centre is None else centre
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - c, xx - c)
    return (r <= radius).astype(np.uint8) * 255, r


def matte(capsys, *args):
    """`matte ARGS` through the real entry point, in process: (exit code, stdout, stderr)."""
    from mattecli.cli import main

    old, sys.argv = sys.argv, ["matte", *map(str, args)]
    try:
        main()
        code = 0
    except SystemExit as done:
        code = done.code or 0
    finally:
        sys.argv = old
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --- the band --------------------------------------------------------------------------------------

@pytest.mark.parametrize("band", [4, 10, 15])
def test_a_discs_unknown_ring_is_the_band_on_each_side(band):
    mask, r = disc(radius=50)
    trimap = trimap_from_mask(mask, band=band)
    unknown = trimap == 128
    # every pixel within band - 1 of the edge is unknown, every pixel beyond band + 1 is known
    assert unknown[np.abs(r - 50) <= band - 1].all()
    assert not unknown[np.abs(r - 50) > band + 1].any()
    assert (trimap[r < 50 - band - 1] == 255).all() and (trimap[r > 50 + band + 1] == 0).all()
    width = unknown.sum() / (2 * np.pi * 50)  # the ring's mean width in pixels: 2 * band less the staircase
    assert 2 * band - 0.6 <= width <= 2 * band


@pytest.mark.parametrize("band, factor", [(20, 2), (44, 4)])
def test_wide_bands_measured_on_a_reduced_mask_stay_within_the_factor(band, factor):
    mask, r = disc(size=1001, radius=300)
    trimap = trimap_from_mask(mask, band=band)
    unknown = trimap == 128
    assert unknown[np.abs(r - 300) <= band - 2].all()
    assert not unknown[np.abs(r - 300) > band + factor + 1].any()
    width = unknown.sum() / (2 * np.pi * 300)
    assert 2 * band - 0.6 <= width <= 2 * band + factor
    strand = np.zeros((200, 200), np.uint8)
    strand[100:100 + factor + 1, :] = 255  # thin parts still become unknown
    assert (trimap_from_mask(strand, band=band)[100:100 + factor + 1] == 128).all()


@pytest.mark.parametrize("band, factor", [(15.9, 1), (16, 2), (31.9, 2), (32, 4)])
def test_the_reduced_grid_starts_at_16_and_32_pixels(band, factor):
    """2x2 blocks from a 16 px band, 4x4 from 32 px: the trimap is constant on the blocks of the
    grid it was measured on (anchored at the top-left), and not on the next coarser one."""
    mask, _ = disc(size=400, radius=120.3, centre=199.7)
    trimap = trimap_from_mask(mask, band=band)

    def blockwise_constant(f):
        blocks = trimap.reshape(400 // f, f, 400 // f, f)
        return bool((blocks == blocks[:, :1, :, :1]).all())

    assert blockwise_constant(factor) and not blockwise_constant(2 * factor)


def test_a_16bit_mask_is_read_over_65535():
    """65535 is probability 1 exactly: foreground even at a threshold of 1 (65535 / 65536 was not)."""
    mask = np.array([[0, 40000, 65534, 65535]], np.uint16)
    assert trimap_from_mask(mask, band=0, threshold=(1.0, 1.0)).tolist() == [[0, 0, 0, 255]]


def test_preview_dims_the_background_to_a_third_and_tints_the_band_half_magenta():
    from mattecli.data.trimap import trimap_preview

    image = np.array([[[200, 100, 50], [200, 100, 50], [200, 100, 50]]], np.uint8)
    trimap = np.array([[0, 128, 255]], np.uint8)
    # background: 200/3 = 66.67 -> 67, 100/3 = 33.3 -> 33, 50/3 = 16.67 -> 17 (rounded, not truncated);
    # unknown: half the pixel plus half of (255, 0, 255): 227.5 -> 228, 50, 152.5 -> 152 (half to even)
    assert trimap_preview(image, trimap).tolist() == [[[67, 33, 17], [228, 50, 152], [200, 100, 50]]]


def test_a_straight_edge_gets_band_pixels_on_each_side_and_the_border_no_band():
    mask = np.zeros((40, 60), np.uint8)
    mask[:, :30] = 255  # touches the top, bottom and left borders
    trimap = trimap_from_mask(mask, band=5)
    assert (trimap[:, 25:35] == 128).all() and (trimap[:, :25] == 255).all() and (trimap[:, 35:] == 0).all()


def test_full_and_empty_masks_have_no_band():
    assert (trimap_from_mask(np.full((9, 9), 255, np.uint8), band=3) == 255).all()
    assert (trimap_from_mask(np.zeros((9, 9), np.uint8), band=3) == 0).all()


def test_thin_strands_become_unknown_and_holes_get_a_band():
    mask = np.zeros((60, 60), np.uint8)
    mask[10:50, 10:50] = 255
    mask[25:35, 25:35] = 0  # a hole
    mask[54:57, :] = 255  # a 3-pixel strand
    trimap = trimap_from_mask(mask, band=3)
    assert (trimap[54:57, 5:55] == 128).all()
    assert (trimap[24:36, 24:36][[0, -1], :] == 128).all() and trimap[30, 30] == 0
    assert trimap[30, 18] == 255


def test_the_band_as_a_share_of_the_diagonal_doubles_from_1080p_to_4k():
    assert band_pixels("1%", (1080, 1920)) == pytest.approx(22.03, abs=0.01)
    assert band_pixels("1%", (2160, 3840)) == pytest.approx(2 * band_pixels("1%", (1080, 1920)))
    assert band_pixels("12", (2160, 3840)) == 12
    assert band_pixels("1%", (48, 64)) == 1 and band_pixels("0%", (48, 64)) == 0  # an edge is always unknown
    for bad in ("-1", "px", "120%", "nan"):
        with pytest.raises(ValueError):
            parse_band(bad)
    # the message said "between 0 and the image size", which parsing cannot know: a band wider than the
    # image is taken (all of it unknown), and the message says what is refused
    assert parse_band("1e9") == "1e9"
    # and is cut to the image: 1e20 overflowed OpenCV's C long in the crop bounds (a traceback)
    mask = np.zeros((20, 30), np.uint8)
    mask[5:15, 10:20] = 255
    for huge in ("1e9", "1e20", "1e300"):
        assert (trimap_from_mask(mask, band=huge) == 128).all()
    with pytest.raises(ValueError, match=r"^-1: must be pixels, 0 or more, or a share .* from 0% to 100%$"):
        parse_band("-1")


def test_masks_from_numpy_are_read_as_mask_files_are():
    """A uint8 0/1 mask (`mask.astype(np.uint8)`) gave an all-background trimap without a word,
    where `matte trimap` reads a 0/1 file as 0/255; an int64 0..255 soft mask was clipped to 0/1; a
    0..255 float mask cut at 0.5 lost its soft edge; a negative band or a threshold with lo > hi was
    taken as given."""
    mask, _ = disc(61, 20.0)
    expected = trimap_from_mask(mask, band=3)
    assert (expected == 128).any()
    for same in (mask // 255, (mask // 255).astype(np.int64), mask.astype(np.int64), mask[..., None], mask > 0,
                 (mask // 255).astype(np.uint16)):
        assert np.array_equal(trimap_from_mask(same, band=3), expected), same.dtype
    soft = np.tile(np.arange(256), (4, 1))  # int64 probabilities 0..255 along x
    assert np.array_equal(trimap_from_mask(soft, band=0, threshold=(0.2, 0.8)),
                          trimap_from_mask(soft.astype(np.uint8), band=0, threshold=(0.2, 0.8)))
    for bad, kwargs, match in [(mask.astype(np.float32), {}, "mask: float32 values from 0.0 to 255.0"),
                               (mask, {"band": -1}, "band -1: must be"),
                               (mask, {"threshold": (0.9, 0.1)}, "need 0 <= lo <= hi <= 1"),
                               (mask, {"threshold": 0.5}, "expected \\(lo, hi\\)")]:
        with pytest.raises(ValueError, match=match):
            trimap_from_mask(bad, **kwargs)


def test_soft_masks_between_the_thresholds_are_unknown():
    ramp = np.tile(np.arange(256, dtype=np.uint8), (4, 1))  # probabilities 0..1 along x
    trimap = trimap_from_mask(ramp, band=0, threshold=(0.2, 0.8))
    p = np.arange(256) / 255
    assert (trimap[0][p < 0.2] == 0).all() and (trimap[0][p >= 0.8] == 255).all()
    assert (trimap[0][(p >= 0.2) & (p < 0.8)] == 128).all()
    cut = trimap_from_mask(ramp, band=0)  # default: cut at one half
    assert set(np.unique(cut)) == {0, 255} and cut[0, 127] == 0 and cut[0, 128] == 255
    assert parse_threshold("0.1,0.9") == (0.1, 0.9)
    for bad in ("0.9,0.1", "0.5", "a,b", "0,2"):
        with pytest.raises(ValueError):
            parse_threshold(bad)


def test_a_band_wider_than_the_image_reaches_the_far_corner_in_a_direction_the_chamfer_overestimates():
    """A band wider than the image is cut to twice the diagonal, not to the diagonal: the chamfer
    distance runs up to 2% over the Euclidean one (about 1% along a 3:1 slope), so a cut at the
    diagonal would leave the far corner of a 600x200 mask, Euclidean 631 px from its only
    background pixel (diagonal 632), foreground under a band asked to cover everything."""
    mask = np.full((200, 600), 255, np.uint8)
    mask[0, 0] = 0
    assert band_pixels("1e20", mask.shape) >= 2 * np.hypot(200, 600)
    assert (trimap_from_mask(mask, band="1e20") == 128).all()


def test_equal_thresholds_are_a_cut_at_one_value():
    """LO <= HI, equality included: `--threshold 0.5,0.5` is the documented default (a cut at one half)."""
    for text, expected in [("0.5,0.5", (0.5, 0.5)), ("0,0", (0.0, 0.0)), ("1,1", (1.0, 1.0))]:
        assert parse_threshold(text) == expected
    mask, _ = disc(61, 20.0)
    assert np.array_equal(trimap_from_mask(mask, band=3, threshold=(0.5, 0.5)), trimap_from_mask(mask, band=3))


def test_trimap_from_mask_refuses_thresholds_outside_0_and_1():
    """`threshold` is checked as `--threshold` is: probabilities, 0 <= lo <= hi <= 1."""
    mask, _ = disc(21, 5.0)
    for bad in [(-0.1, 0.5), (-1, -1), (0.5, 1.5)]:
        with pytest.raises(ValueError, match="need 0 <= lo <= hi <= 1"):
            trimap_from_mask(mask, threshold=bad)
    for bad in ("-0.1,0.5", "0.5,1.5"):
        with pytest.raises(ValueError):
            parse_threshold(bad)


def test_a_one_pixel_mask_is_cut_at_the_thresholds_as_a_larger_one():
    """A 1x1 mask (no edge, its own code path) follows the rule: >= hi foreground, < lo background,
    the rest unknown; a value equal to hi is foreground, one equal to lo is not background."""
    cases = [(np.full((1, 1), 0.5, np.float32), (0.5, 0.5), 255), (np.full((1, 1), 255, np.uint8), (0.2, 1.0), 255),
             (np.full((1, 1), 0.2, np.float32), (0.2, 0.8), 128), (np.full((1, 1), 0.8, np.float32), (0.2, 0.8), 255),
             (np.full((1, 1), 0.1, np.float32), (0.2, 0.8), 0)]
    for mask, threshold, expected in cases:
        assert trimap_from_mask(mask, threshold=threshold).tolist() == [[expected]], (mask, threshold)
        # the same value over a 2x2 mask (the general path) gives the same label
        assert (trimap_from_mask(np.tile(mask, (2, 2)), threshold=threshold) == expected).all()


def test_a_band_from_0_to_100_percent_of_the_diagonal_is_taken():
    """`--band` takes a share of the diagonal "from 0% to 100%", both ends included, and 0 pixels."""
    for text in ("100%", "0%", "0", "100"):
        assert parse_band(text) == text
    assert band_pixels("100%", (30, 40)) == pytest.approx(50.0)
    with pytest.raises(ValueError, match="from 0% to 100%"):
        parse_band("100.5%")


def test_an_unknown_trimap_method_names_the_two_methods():
    """`trimap_from_alpha` knows `dist` and `erode` (`--method`) and says so for anything else."""
    with pytest.raises(ValueError, match=r"^unknown trimap method 'blur': choose erode or dist$"):
        trimap_from_alpha(np.zeros((4, 4), np.uint8), "blur", np.random.default_rng(0))


def test_a_band_that_is_not_a_number_says_what_is_expected():
    """`--band px`: the message names both forms, pixels and a share of the diagonal, with examples."""
    for bad in ("px", "20px", "%", "1.5 %%"):
        with pytest.raises(ValueError, match=r": expected pixels \(e\.g\. 20\) or a share of the image diagonal "
                                             r"\(e\.g\. 1\.5%\)$"):
            parse_band(bad)


def test_a_4k_mask_is_made_into_a_trimap():
    # its speed is a benchmark's (benchmarks/trimap_band.py), not a timed test's
    mask, _ = disc(size=2160, radius=700)
    mask = np.pad(mask, ((0, 0), (840, 840)))
    trimap = trimap_from_mask(mask)
    assert trimap.shape == (2160, 3840) and trimap.dtype == np.uint8
    assert set(np.unique(trimap)) == {0, 128, 255}
    assert trimap[1080, 1920] == 255 and trimap[0, 0] == 0  # the disc's centre and a far corner


# --- masks as found ---------------------------------------------------------------------------------

def test_an_opaque_cut_out_mask_is_read_by_its_colour_and_an_all_black_mask_gets_no_note(tmp_path):
    """read_mask: a cut-out's alpha is the mask only when it is not all opaque; otherwise the picture
    is read (grey here). Only a 0/1 mask is scaled to 0/255 with a note: an all-black one is as it is."""
    grey = np.array([[0, 90, 255]], np.uint8)
    rgba = np.dstack([grey, grey, grey, np.full_like(grey, 255)])
    Image.fromarray(rgba).save(tmp_path / "opaque.png")
    assert read_mask(tmp_path / "opaque.png")[0].tolist() == [[0, 90, 255]]
    Image.fromarray(np.zeros((2, 3), np.uint8)).save(tmp_path / "black.png")
    mask, note = read_mask(tmp_path / "black.png")
    assert mask.tolist() == [[0, 0, 0]] * 2 and note is None


def test_a_colour_palette_mask_is_a_label_map_where_every_index_but_0_is_foreground(tmp_path):
    """read_mask: a palette whose colours are not grey is read as labels, index 0 background, any
    other index (1 too) foreground, with a note."""
    labels = Image.fromarray(np.array([[0, 1, 2, 1]], np.uint8), "P")
    labels.putpalette([0, 0, 0, 200, 30, 30, 30, 200, 30])
    labels.save(tmp_path / "labels.png")
    mask, note = read_mask(tmp_path / "labels.png")
    assert mask.tolist() == [[0, 255, 255, 255]] and "read as labels" in note


def test_masks_as_found_read_to_the_same_mask(tmp_path):
    mask, _ = disc(size=64, radius=20)
    Image.fromarray(mask).save(tmp_path / "binary.png")
    Image.fromarray(np.dstack([np.full((64, 64, 3), 77, np.uint8), mask])).save(tmp_path / "cutout.png")
    Image.fromarray(mask.astype(np.uint16) * 257).save(tmp_path / "sixteen.png")
    Image.fromarray(mask // 255).save(tmp_path / "zero_one.png")
    labels = Image.fromarray((mask // 255) * 3, "P")
    labels.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [0] * 756)  # a VOC-like colour palette
    labels.save(tmp_path / "palette.png")
    Image.fromarray(np.dstack([mask, mask // 8, mask // 8])).save(tmp_path / "colour.png")
    Image.fromarray(mask).save(tmp_path / "noisy.jpg", quality=75)
    for name in ("binary.png", "cutout.png", "sixteen.png", "zero_one.png", "palette.png", "colour.png"):
        got, _ = read_mask(tmp_path / name)
        assert np.array_equal(got, mask), name
    assert "labels" in read_mask(tmp_path / "palette.png")[1] and "0/1" in read_mask(tmp_path / "zero_one.png")[1]
    assert "brightest channel" in read_mask(tmp_path / "colour.png")[1]
    noisy = trimap_from_mask(read_mask(tmp_path / "noisy.jpg")[0], band=4)
    assert np.array_equal(noisy, trimap_from_mask(mask, band=4))  # JPEG ringing stays inside the band


def test_wide_integer_masks_holding_8bit_values_are_read_as_those_values(tmp_path):
    """A segmenter's cv2.imwrite of a uint16 0/1 array, or a 32-bit integer TIFF of 0/1, was scaled as
    16-bit levels (1/65535 -> 0): all background, skipped as nothing to matte; 0..255 probabilities
    stored as uint16 lost their levels to the 0/1 rule. A mask in 16-bit levels is still scaled."""
    import cv2

    mask, _ = disc(size=64, radius=20)
    soft = cv2.GaussianBlur(mask, (0, 0), 3)
    cv2.imwrite(str(tmp_path / "u16_01.png"), (mask // 255).astype(np.uint16))
    Image.fromarray((mask // 255).astype(np.int32)).save(tmp_path / "i32_01.tif")
    cv2.imwrite(str(tmp_path / "u16_soft.png"), soft.astype(np.uint16))
    cv2.imwrite(str(tmp_path / "u16_levels.png"), soft.astype(np.uint16) * 257)
    for name in ("u16_01.png", "i32_01.tif"):
        got, note = read_mask(tmp_path / name)
        assert np.array_equal(got, mask) and "0/1 mask" in note, name
    got, note = read_mask(tmp_path / "u16_soft.png")
    assert np.array_equal(got, soft) and "values 0..255 only, read as 8-bit" in note
    got, note = read_mask(tmp_path / "u16_levels.png")
    assert np.array_equal(got, soft) and note is None


# --- trimaps as found (issue 19) -----------------------------------------------------------------

def test_a_grey_trimap_in_another_encoding_is_mapped_by_gca_thresholds_at_their_edges(tmp_path):
    """read_trimap's rule (GCA-Matting's): < 85 background, >= 170 foreground, otherwise unknown, so
    84 -> 0, 85 and 169 -> 128, 170 -> 255; the note counts the pixels not in 0/128/255. Only 0/1/2 and
    1/2/3 are class indices: a map of 0 and 4 is such a grey trimap (all background), not refused."""
    Image.fromarray(np.array([[84, 85, 169, 170, 0, 255, 128]], np.uint8)).save(tmp_path / "t.png")
    trimap, note = read_trimap(tmp_path / "t.png")
    assert trimap.tolist() == [[0, 128, 128, 255, 0, 255, 128]] and "(4 pixels of other values)" in note
    Image.fromarray(np.array([[0, 4, 4]], np.uint8)).save(tmp_path / "low.png")
    trimap, note = read_trimap(tmp_path / "low.png")
    assert trimap.tolist() == [[0, 0, 0]] and "(2 pixels of other values)" in note


@pytest.mark.parametrize("values, expected", [((0, 1, 2), (0, 128, 255)), ((2, 3, 1), (0, 128, 255))])
def test_class_index_trimaps_are_mapped_with_a_note(tmp_path, values, expected):
    Image.fromarray(np.array([values], np.uint8)).save(tmp_path / "t.png")
    trimap, note = read_trimap(tmp_path / "t.png")
    assert trimap.tolist() == [list(expected)] and "class-index" in note


@pytest.mark.parametrize("pixels, reason", [([[0, 1, 1]], "binary mask"), ([[1, 2, 2]], "ambiguous"),
                                            ([[0, 1, 2, 3]], "ambiguous"), ([[3, 3, 3]], "ambiguous"),
                                            ([[[255, 0, 0], [0, 0, 255], [0, 255, 0]]], "colour-coded")])
def test_colour_coded_and_ambiguous_trimaps_are_refused(tmp_path, pixels, reason):
    """read_trimap: class indices in neither 0/1/2 nor 1/2/3 order (0..3, one value alone) are refused."""
    Image.fromarray(np.array(pixels, np.uint8)).save(tmp_path / "t.png")
    with pytest.raises(InputError, match=reason):
        read_trimap(tmp_path / "t.png")


def test_a_colour_trimap_is_refused_only_past_1_percent_of_pixels_over_48_levels_apart(tmp_path):
    """docs/commands/infer.md: colour-coded trimaps (more than 1% of pixels with channels over 48
    levels apart) are refused; a grey one with chroma noise is read on its first channel."""
    rgb = np.zeros((10, 10, 3), np.uint8)
    rgb[..., 0], rgb[..., 1:] = 128, 80  # every pixel's channels exactly 48 apart
    Image.fromarray(rgb).save(tmp_path / "t48.png")
    assert read_trimap(tmp_path / "t48.png")[0].tolist() == [[128] * 10] * 10
    rgb[0, 0, 1:] = 79  # 1 pixel of 100, 49 apart: 1%, not more
    Image.fromarray(rgb).save(tmp_path / "t1.png")
    assert read_trimap(tmp_path / "t1.png")[0].tolist() == [[128] * 10] * 10
    rgb[0, 1, 1:] = 79  # 2%
    Image.fromarray(rgb).save(tmp_path / "t2.png")
    with pytest.raises(InputError, match="colour-coded"):
        read_trimap(tmp_path / "t2.png")


def test_16bit_trimaps_holding_8bit_codes_are_read_as_those_codes(tmp_path):
    """cv2.imwrite of a uint16 0/128/255 array: scaled as 16-bit levels to 0/0/1 and refused as
    "only the values [0, 1]"; a 16-bit 0/1/2 class-index trimap became all background, skipped as
    nothing to matte. A 16-bit trimap in 16-bit levels is still scaled."""
    import cv2

    trimap = np.zeros((20, 30), np.uint8)
    trimap[5:15, 5:25], trimap[8:12, 10:20] = 128, 255
    for name, wide in [("codes.png", trimap.astype(np.uint16)), ("classes.png", (trimap // 127).astype(np.uint16)),
                       ("levels.png", trimap.astype(np.uint16) * 257)]:
        cv2.imwrite(str(tmp_path / name), wide)
        assert np.array_equal(read_trimap(tmp_path / name)[0], trimap), name
    Image.fromarray(trimap.astype(np.int32)).save(tmp_path / "codes.tif")
    assert np.array_equal(read_trimap(tmp_path / "codes.tif")[0], trimap)


def test_a_trimap_with_nothing_to_matte_is_named_and_skipped_or_passed(tmp_path):
    images = make_pairs(tmp_path / "in", ["a", "b"])
    write_png(images / "b_trimap.png", np.full((24, 32), 255, np.uint8))
    fake = FakePipeline()
    report = infer_folder(fake, images, tmp_path / "out", progress=False)
    assert report.done == [str(images / "a.png")] and fake.calls == 1
    assert report.nothing == [(str(images / "b_trimap.png"), "nothing to matte: the trimap is all foreground; skipped")]
    report = infer_folder(fake, images, tmp_path / "out", progress=False, empty="pass")
    assert (read_gray(tmp_path / "out" / "b.png") == 255).all() and fake.calls == 1 and "written" in report.nothing[0][1]
    unknown_only = np.full((24, 32), 128, np.uint8)
    unknown_only[:, :4] = 0
    write_png(images / "a_trimap.png", unknown_only)
    report = infer_folder(fake, images, tmp_path / "out", progress=False, overwrite=True)
    assert report.warnings == [(str(images / "a_trimap.png"), "no foreground pixel (only background and unknown): "
                                                              "is it the right trimap?")]
    assert str(images / "a.png") in report.done
    # a 0/255 mask given as a trimap: the note says what it likely is
    write_png(images / "a_trimap.png", np.where(np.arange(32) < 16, 0, 255).astype(np.uint8)[None].repeat(24, 0))
    report = infer_folder(fake, images / "a.png", tmp_path / "out", progress=False, overwrite=True)
    assert report.nothing == [(str(images / "a_trimap.png"), "nothing to matte: the trimap has no unknown pixel (a "
                                                             "binary mask? pass masks with --masks); skipped")]


# --- matte trimap and infer --masks ------------------------------------------------------------------

def mask_folder(tmp_path, names=("a", "b"), size=(48, 64)):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    rng = np.random.default_rng(0)
    for i, name in enumerate(names):
        write_png(images / f"{name}.png", rng.integers(0, 256, (*size, 3), dtype=np.uint8))
        mask = np.zeros(size, np.uint8)
        mask[10:40, 8 + i:40 + i] = 255
        write_png(masks / (f"{name}_mask.png" if i % 2 else f"{name}.png"), mask)
    return images, masks


def test_on_the_fly_trimaps_equal_the_written_ones(tmp_path):
    images, masks = mask_folder(tmp_path)
    rule = MaskRule(band="3%", threshold=(0.3, 0.7))
    report = make_trimaps(masks, tmp_path / "trimaps", TrimapJob(rule=rule), progress=False)
    assert len(report.done) == 2 and not report.failed
    fake = FakePipeline()
    report = infer_folder(fake, images, tmp_path / "out", masks=masks, mask_rule=rule, save=("alpha", "trimap"),
                          progress=False)
    assert len(report.done) == 2 and not report.failed
    for name in ("a", "b"):
        written = read_gray(tmp_path / "trimaps" / f"{name}.png")
        assert np.array_equal(read_gray(tmp_path / "out" / "trimap" / f"{name}.png"), written)
        assert set(np.unique(written)) == {0, 128, 255}
        alpha = read_gray(tmp_path / "out" / f"{name}.png")
        assert np.array_equal(alpha == 255, written == 255) and np.array_equal(alpha == 0, written == 0)


def test_temporary_files_in_the_subfolders_of_a_recursive_run_are_removed_once_old(tmp_path):
    import os
    import time

    mask = np.zeros((40, 48), np.uint8)
    mask[10:30, 10:30] = 255
    write_png(tmp_path / "masks" / "x" / "a.png", mask)
    olds = [tmp_path / "trimaps" / "x" / ".a.k3j4.png.tmp", tmp_path / "preview" / "x" / ".a.p2q1.jpg.tmp"]
    for old in olds:
        old.parent.mkdir(parents=True)
        old.write_bytes(b"half")
        os.utime(old, (time.time() - 7200, time.time() - 7200))
    report = make_trimaps(tmp_path / "masks", tmp_path / "trimaps", TrimapJob(rule=MaskRule()), progress=False,
                          preview=tmp_path / "preview", recursive=True)
    assert len(report.done) == 1 and not any(old.exists() for old in olds)


def test_a_mask_that_makes_no_foreground_is_warned_of_as_infer_masks_does(tmp_path):
    """A label mask of 0/1 objects with a 255 void border read the object as background and the
    border as foreground... or here, a mask thinner than the band: `matte trimap` wrote a trimap
    with no foreground pixel without a word, where `matte infer --masks` warns."""
    mask = np.zeros((40, 48), np.uint8)
    mask[20, 5:40] = 255  # a one-pixel line: unknown entirely, no foreground left
    write_png(tmp_path / "masks" / "m.png", mask)
    report = make_trimaps(tmp_path / "masks", tmp_path / "trimaps", TrimapJob(rule=MaskRule(band="4")), progress=False)
    assert len(report.done) == 1 and report.warnings == [
        (str(tmp_path / "masks" / "m.png"), "no foreground pixel (only background and unknown): is it the right mask?")]


def test_masks_in_formats_matte_does_not_read_are_named_in_a_note(tmp_path):
    mask = np.zeros((40, 48), np.uint8)
    mask[10:30, 10:30] = 255
    write_png(tmp_path / "masks" / "m.png", mask)
    (tmp_path / "masks" / "n.avif").write_bytes(b"")
    report = make_trimaps(tmp_path / "masks", tmp_path / "trimaps", TrimapJob(rule=MaskRule()), progress=False)
    assert len(report.done) == 1 and report.notes == [
        f"1 file in a picture format matte does not read left out (e.g. {tmp_path / 'masks' / 'n.avif'}): convert "
        "to PNG, JPEG, TIFF, WebP or BMP to include them"]


def test_a_folder_of_pictures_matte_does_not_read_says_so(tmp_path, capsys, monkeypatch):
    """A folder of HEIC photos (or masks): "no image files here (.png, ...)", as if it were empty."""
    import mattecli.inference.pipeline

    monkeypatch.setattr(mattecli.inference.pipeline, "load_pipeline", lambda *a, **k: ModelMustNotRun())
    (tmp_path / "heic").mkdir()
    for name in ("IMG_1.HEIC", "IMG_2.HEIC", "list.txt"):
        (tmp_path / "heic" / name).write_bytes(b"")
    said = (f"{tmp_path / 'heic'}: no image files here (.png, .jpg, .jpeg, .bmp, .tif, .tiff, .webp); 2 files in a "
            "picture format matte does not read (e.g. IMG_1.HEIC): convert to one of these\n")
    code, _, err = matte(capsys, "infer", "--weights", "w.safetensors", "--images", tmp_path / "heic", "--out",
                         tmp_path / "o", "--max-memory", "none")
    assert code == 1 and err == "matte: error: " + said
    code, _, err = matte(capsys, "trimap", "--masks", tmp_path / "heic", "--out", tmp_path / "t")
    assert code == 1 and err == "matte: error: " + said


def test_a_full_disk_stops_making_trimaps_and_a_rerun_finishes(tmp_path, monkeypatch):
    """As in matte infer: once a trimap did not fit, every later mask was still read, made into a
    trimap and failed, one line each. Now none starts after the first full write."""
    import errno
    import os
    import time

    from mattecli.data import make_trimaps as module

    mask = np.zeros((40, 48), np.uint8)
    mask[10:30, 10:30] = 255
    for k in range(10):
        write_png(tmp_path / "masks" / f"m{k}.png", mask)
    real_write, written, failures = module.write_png, [], []

    def fills_up(path, *args, **kwargs):
        if len(written) >= 2:
            if failures:  # give the batch time to see the first failure: the worker runs on meanwhile
                time.sleep(1)
            failures.append(path)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        written.append(path)
        return real_write(path, *args, **kwargs)

    monkeypatch.setattr(module, "write_png", fills_up)
    report = make_trimaps(tmp_path / "masks", tmp_path / "trimaps", TrimapJob(rule=MaskRule()), progress=False,
                          workers=1)
    # the one worker may have started the next mask before the failure was seen
    assert len(report.done) == 2 and 1 <= len(report.failed) <= 2
    assert len(report.failed) + len(report.not_attempted) == 8
    assert all(why.endswith("No space left on device") for _, why in report.failed)
    monkeypatch.setattr(module, "write_png", real_write)
    again = make_trimaps(tmp_path / "masks", tmp_path / "trimaps", TrimapJob(rule=MaskRule()), progress=False)
    assert len(again.skipped) == 2 and len(again.done) == 8 and not again.failed


@pytest.mark.skipif(sys.platform != "linux", reason="Linux's 4096-byte path limit")
def test_the_default_workers_are_the_cores_this_process_may_use(tmp_path, monkeypatch):
    """Not os.cpu_count(), which counts cores a job scheduler or a container does not give."""
    import os

    from mattecli.data import make_trimaps as module

    mask = np.zeros((40, 48), np.uint8)
    mask[10:30, 10:30] = 255
    write_png(tmp_path / "masks" / "m.png", mask)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 5, 9}, raising=False)
    real, asked = module.executor, []
    monkeypatch.setattr(module, "executor", lambda workers, **kw: asked.append(workers) or real(1, **kw))
    report = make_trimaps(tmp_path / "masks", tmp_path / "trimaps", TrimapJob(rule=MaskRule()), progress=False)
    assert report.done == [str(tmp_path / "masks" / "m.png")] and asked == [3]


def test_a_trimap_path_over_the_system_limit_fails_that_mask_only(tmp_path):
    """As in matte infer: the first output path over 4096 bytes ended the run before any mask."""
    mask = np.zeros((40, 48), np.uint8)
    mask[10:30, 10:30] = 255
    deep = tmp_path / "masks" / "/".join(["d" * 250] * 15)
    for folder in (deep, tmp_path / "masks"):
        folder.mkdir(parents=True, exist_ok=True)
        write_png(folder / "a.png", mask)
    report = make_trimaps(tmp_path / "masks", tmp_path / ("o" * 200) / ("o" * 200), TrimapJob(rule=MaskRule()),
                          progress=False, recursive=True)
    assert report.done == [str(tmp_path / "masks" / "a.png")]
    [(mask_path, reason)] = report.failed
    assert mask_path == str(deep / "a.png") and reason.endswith("a.png: File name too long")


def test_masks_beside_the_images(tmp_path):
    images, masks = mask_folder(tmp_path)
    for m in masks.iterdir():
        m.rename(images / f"{m.stem.removesuffix('_mask')}_mask.png")
    report = infer_folder(FakePipeline(), images, tmp_path / "out", masks=images, progress=False)
    assert len(report.done) == 2 and not report.failed


def test_bad_masks_are_named_and_the_batch_goes_on(tmp_path):
    images, masks = mask_folder(tmp_path, names=("a", "b", "c", "d", "e"))
    write_png(masks / "b_mask.png", np.pad(np.full((40, 40), 255, np.uint8), ((4, 4), (12, 13))))  # another size
    (masks / "c.png").write_bytes(b"not a png")
    write_png(masks / "d_mask.png", np.zeros((48, 64), np.uint8))  # empty
    write_png(masks / "e.png", np.full((48, 64), 255, np.uint8))  # full
    report = infer_folder(FakePipeline(), images, tmp_path / "out", masks=masks, progress=False)
    assert report.done == [str(images / "a.png")]
    failed = dict(report.failed)
    assert "mask is 65x48 but image b.png is 64x48" in failed[str(masks / "b_mask.png")]
    assert "cannot decode" in failed[str(masks / "c.png")]
    nothing = dict(report.nothing)
    assert "the mask has no foreground" in nothing[str(masks / "d_mask.png")]
    assert "the mask is all foreground" in nothing[str(masks / "e.png")]

    report = make_trimaps(masks, tmp_path / "trimaps", TrimapJob(rule=MaskRule(), empty="pass"), progress=False)
    assert sorted(report.done) == [str(masks / n) for n in ("a.png", "b_mask.png", "d_mask.png", "e.png")]
    assert [p for p, _ in report.failed] == [str(masks / "c.png")] and len(report.nothing) == 2
    assert (read_gray(tmp_path / "trimaps" / "e.png") == 255).all()


def test_a_mask_of_a_mode_pillow_cannot_convert_is_named_in_one_line(tmp_path):
    """A grey TIFF with premultiplied alpha (mode La) failed with "ValueError: conversion from La to
    L not supported"."""
    from tests.infer_helpers import save_premultiplied_grey_tiff

    images, masks = mask_folder(tmp_path)
    (masks / "b_mask.png").unlink()
    save_premultiplied_grey_tiff(masks / "b_mask.tif", np.zeros((48, 64), np.uint8), np.zeros((48, 64), np.uint8))
    report = make_trimaps(masks, tmp_path / "trimaps", TrimapJob(rule=MaskRule()), progress=False)
    assert report.done == [str(masks / "a.png")] and report.failed == [
        (str(masks / "b_mask.tif"), "unsupported image mode La (Pillow cannot convert it to RGB); save it as RGB, "
                                    "RGBA, L or LA")]


def test_matte_trimap_reruns_finish_what_is_missing_and_previews(tmp_path, capsys):
    images, masks = mask_folder(tmp_path, names=("a", "b", "c"))
    code, out, err = matte(capsys, "trimap", "--masks", masks, "--out", tmp_path / "t", "--band", "4",
                           "--preview", tmp_path / "p", "--images", images)
    assert code == 0 and "3 written" in out, err
    preview = np.asarray(Image.open(tmp_path / "p" / "a.jpg"))
    assert preview.shape == (48, 64, 3)
    (tmp_path / "t" / "b.png").unlink()
    code, out, _ = matte(capsys, "trimap", "--masks", masks, "--out", tmp_path / "t", "--band", "4")
    assert code == 0 and "1 written" in out and "2 skipped" in out
    band4 = read_gray(tmp_path / "t" / "a.png")
    assert (band4 == 128).sum() == ((trimap_from_mask(read_mask(masks / "a.png")[0], band=4)) == 128).sum()


def test_a_preview_without_images_is_the_trimap_over_the_mask(tmp_path, capsys):
    """What trimap.md says --preview draws on when no --images are given (it did not say)."""
    from mattecli.data.trimap import trimap_preview

    _, masks = mask_folder(tmp_path, names=("a",))
    code, out, err = matte(capsys, "trimap", "--masks", masks, "--out", tmp_path / "t", "--preview", tmp_path / "p")
    assert code == 0 and "1 written" in out, err
    mask, trimap = read_gray(masks / "a.png"), read_gray(tmp_path / "t" / "a.png")
    expected = trimap_preview(np.repeat(mask[..., None], 3, axis=2), trimap).astype(int)
    preview = np.asarray(Image.open(tmp_path / "p" / "a.jpg")).astype(int)
    for region in (trimap == 0, trimap == 255):  # the mask's black and white, JPEG's ringing aside
        assert np.abs(preview[region].mean(0) - expected[region].mean(0)).max() < 12
    r, g, b = preview[trimap == 128].mean(0)  # the thin band: magenta, smeared by JPEG's chroma subsampling
    assert min(r, b) > g + 30


@pytest.mark.parametrize("args, message", [
    (["--band", "wide"], "--band wide"), (["--threshold", "0.9,0.1"], "--threshold"),
    (["--method", "erode"], "--method and --seed are for --alphas"), (["--empty", "maybe"], "--empty"),
    (["--seed", "3"], "--method and --seed are for --alphas"),
    # an unset variable (`--band "$BAND"`) is refused, not taken as the default
    (["--band", ""], "--band : expected pixels"), (["--threshold", ""], "--threshold : expected LO,HI"),
    (["--out-is-masks"], "is the --masks folder"),
])
def test_matte_trimap_usage_errors_exit_2_with_one_line(tmp_path, capsys, args, message):
    _, masks = mask_folder(tmp_path)
    out = masks if args == ["--out-is-masks"] else tmp_path / "t"
    args = [] if args == ["--out-is-masks"] else args
    code, _, err = matte(capsys, "trimap", "--masks", masks, "--out", out, *args)
    assert code == 2 and message in err and err.count("\n") == 1


@pytest.mark.parametrize("args, message", [
    ([], "give either --masks DIR or --alphas DIR"),
    (["--masks", "{m}", "--alphas", "{m}"], "give either --masks DIR or --alphas DIR"),
    (["--alphas", "{m}", "--band", "4"], "--band and --threshold are for --masks; with --alphas use --method "
                                         "and --seed"),
    (["--alphas", "{m}", "--threshold", "0.3,0.7"], "--band and --threshold are for --masks; with --alphas use "
                                                    "--method and --seed"),
    (["--alphas", "{m}", "--method", "blur"], "--method blur: choose dist or erode"),
])
def test_matte_trimap_neither_both_or_the_other_sources_options_exit_2(tmp_path, capsys, args, message):
    """docs/commands/trimap.md: neither or both of --masks / --alphas is a usage error (2, one
    line); --band and --threshold are for masks, --method (dist or erode) for alphas."""
    _, masks = mask_folder(tmp_path)
    args = [str(masks) if a == "{m}" else a for a in args]
    code, out, err = matte(capsys, "trimap", *args, "--out", tmp_path / "t")
    assert (code, out, err) == (2, "", f"matte: error: {message}\n")
    assert not (tmp_path / "t").exists()


def test_matte_trimap_redoes_existing_trimaps_with_overwrite_only(tmp_path, capsys):
    """CLI.md `[--overwrite]`: existing trimaps are skipped (a re-run finishes what is missing) unless
    --overwrite; a --preview that is a file is refused before any trimap, as --out is."""
    _, masks = mask_folder(tmp_path)
    code, out, err = matte(capsys, "trimap", "--masks", masks, "--out", tmp_path / "t")
    assert code == 0 and out.startswith("2 written"), err
    made = read_gray(tmp_path / "t" / "a.png")
    write_png(tmp_path / "t" / "a.png", np.zeros_like(made))
    code, out, err = matte(capsys, "trimap", "--masks", masks, "--out", tmp_path / "t")
    assert code == 0 and out.startswith("0 written") and not read_gray(tmp_path / "t" / "a.png").any(), err
    code, out, err = matte(capsys, "trimap", "--masks", masks, "--out", tmp_path / "t", "--overwrite")
    assert code == 0 and out.startswith("2 written"), err
    assert np.array_equal(read_gray(tmp_path / "t" / "a.png"), made)
    (tmp_path / "p").write_text("x")
    code, out, err = matte(capsys, "trimap", "--masks", masks, "--out", tmp_path / "t2", "--preview", tmp_path / "p")
    assert (code, out, err) == (2, "", f"matte: error: --preview {tmp_path / 'p'}: is a file, not a folder\n")
    assert not list((tmp_path / "t2").glob("*.png"))


def test_an_empty_path_is_a_usage_error_not_the_current_folder(tmp_path, capsys, monkeypatch):
    """`--out "$OUT"` with OUT unset: pathlib read "" as ".", and the trimaps were written into the
    current folder (`--images ""` read it)."""
    _, masks = mask_folder(tmp_path)
    monkeypatch.chdir(tmp_path)
    code, _, err = matte(capsys, "trimap", "--masks", masks, "--out", "")
    assert code == 2 and err == "matte: error: --out: an empty path (an unset variable?); write . for the current folder\n"
    code, _, err = matte(capsys, "infer", "--weights", "w.safetensors", "--images=", "--out", "o")
    assert code == 2 and err.startswith("matte: error: --images: an empty path")
    assert not list(tmp_path.glob("*.png"))


def test_alpha_trimaps_are_reproducible_by_seed(tmp_path, capsys):
    from mattecli.data.synthetic import make_alpha

    alphas = tmp_path / "alphas"
    for i in range(3):
        write_png(alphas / f"x{i}.png", make_alpha(96, np.random.default_rng(i)))
    for run, seed in (("s1", 1), ("s1b", 1), ("s2", 2)):
        code, _, err = matte(capsys, "trimap", "--alphas", alphas, "--out", tmp_path / run, "--method", "erode",
                             "--seed", seed, "--workers", 2)
        assert code == 0, err
    for i in range(3):
        t1, t1b = read_gray(tmp_path / "s1" / f"x{i}.png"), read_gray(tmp_path / "s1b" / f"x{i}.png")
        assert np.array_equal(t1, t1b)
        alpha = read_gray(alphas / f"x{i}.png")
        assert ((alpha > 0) & (alpha < 255) <= (t1 == 128)).all()  # every partial pixel is unknown
    import zlib

    expected = trimap_from_alpha(read_gray(alphas / "x0.png"), "erode",
                                 np.random.default_rng([1, zlib.crc32(b"x0")]))
    assert np.array_equal(read_gray(tmp_path / "s1" / "x0.png"), expected)
    assert any(not np.array_equal(read_gray(tmp_path / "s1" / f"x{i}.png"), read_gray(tmp_path / "s2" / f"x{i}.png"))
               for i in range(3))


def _rotated_png(path, array, orientation=6):
    """A PNG whose EXIF says: turn the stored pixels (orientation 6: 90 degrees clockwise) to show it."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(array).save(path, exif=exif.tobytes())


def test_a_masks_exif_orientation_is_applied_without_images(tmp_path):
    """A 30x20 mask stored turned (orientation 6) is a 20x30 picture: its trimap is the upright one."""
    masks = tmp_path / "masks"
    masks.mkdir()
    stored = np.zeros((20, 30), np.uint8)
    stored[:, 15:] = 255  # the right half, stored; upright (90 degrees clockwise) the bottom half
    _rotated_png(masks / "m.png", stored)
    report = make_trimaps(masks, tmp_path / "out", TrimapJob(rule=MaskRule(band="2")), progress=False)
    assert len(report.done) == 1, report.failed
    trimap = read_gray(tmp_path / "out" / "m.png")
    assert trimap.shape == (30, 20)
    assert (trimap[:12] == 0).all() and (trimap[18:] == 255).all() and (trimap[14:16] == 128).all()


def test_alpha_trimaps_keep_the_alpha_names_and_read_their_photos_unturned(tmp_path):
    """--alphas: a name ending in _mask is the alpha's own (no mask suffix to strip); alphas and
    their photos are read as stored (the benchmark convention), EXIF tag or not."""
    alphas, images = tmp_path / "alphas", tmp_path / "images"
    alphas.mkdir()
    images.mkdir()
    alpha = np.zeros((20, 30), np.uint8)
    alpha[:, 12:18] = 128
    alpha[:, 18:] = 255
    write_png(alphas / "hair_mask.png", alpha)
    _rotated_png(images / "hair_mask.png", np.zeros((20, 30, 3), np.uint8))
    report = make_trimaps(alphas, tmp_path / "out", TrimapJob(images=images), progress=False)
    assert report.failed == [] and len(report.done) == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["hair_mask.png"]


def test_empty_with_alphas_is_refused_not_ignored(tmp_path, capsys):
    """--empty says what to do with a mask that has nothing to matte; with --alphas it was taken and
    ignored (every alpha's trimap is written)."""
    write_png(tmp_path / "alphas" / "x.png", np.zeros((16, 16), np.uint8))
    code, _, err = matte(capsys, "trimap", "--alphas", tmp_path / "alphas", "--out", tmp_path / "t", "--empty", "pass")
    assert (code, err) == (2, "matte: error: --empty is for --masks; with --alphas every trimap is written\n")
    assert not (tmp_path / "t").exists()


def test_a_folder_where_a_trimap_goes_is_no_output(tmp_path, capsys):
    """A folder at OUT/a.png was counted as a trimap already written: skipped, exit 0, no trimap."""
    _, masks = mask_folder(tmp_path)
    (tmp_path / "t" / "a.png").mkdir(parents=True)
    code, out, err = matte(capsys, "trimap", "--masks", masks, "--out", tmp_path / "t")
    assert code == 1 and "1 written" in out and "0 skipped" in out
    assert f"matte: failed: {masks / 'a.png'}: {tmp_path / 't' / 'a.png'}: Is a directory\n" in err, err


# --- folders and --out (issue 19) ------------------------------------------------------------------

def test_out_inside_the_image_folder_is_never_read_as_input(tmp_path):
    images = tmp_path / "in"
    make_pairs(images, ["a", "b"])
    for name in ("a", "b"):  # photos as JPEG, so their alphas a.png, b.png land beside them
        Image.open(images / f"{name}.png").save(images / f"{name}.jpg", quality=95)
        (images / f"{name}.png").unlink()
    first = infer_folder(FakePipeline(), images, images, save=("alpha", "fg"), progress=False)
    assert len(first.done) == 2 and not first.failed
    second = infer_folder(FakePipeline(), images, images, save=("alpha", "fg"), progress=False, recursive=True)
    assert len(second.skipped) == 2 and not second.failed and not second.done
    fresh = make_pairs(tmp_path / "fresh", ["a", "b"])
    for recursive in (False, True):  # an output folder inside the input folder: neither walked nor noted
        third = infer_folder(FakePipeline(), fresh, fresh / "mattes", save=("alpha", "fg"), progress=False,
                             recursive=recursive)
        assert len(third.done) + len(third.skipped) == 2 and not third.failed and not third.notes, third


def test_subfolders_are_named_and_walked_with_recursive(tmp_path):
    root = tmp_path / "in"
    make_pairs(root / "day1", ["a"])
    make_pairs(root / "day2" / "deep", ["a"])  # the same stem in another folder is another image
    with pytest.raises(InputError, match="2 subfolders hold images .* --recursive"):
        find_pairs(root, None)
    report = infer_folder(FakePipeline(), root, tmp_path / "out", recursive=True, save=("alpha", "fg"),
                          progress=False)
    assert len(report.done) == 2 and not report.failed
    assert (tmp_path / "out" / "day1" / "a.png").exists() and (tmp_path / "out" / "day2" / "deep" / "a.png").exists()
    assert (tmp_path / "out" / "fg" / "day2" / "deep" / "a.png").exists()
    make_pairs(root, ["top"])
    report = infer_folder(FakePipeline(), root, tmp_path / "out2", progress=False)
    assert len(report.done) == 1 and any("--recursive" in n for n in report.notes)


def test_recursive_walks_a_folder_reached_twice_by_symlinks_once(tmp_path):
    """A symlink to a parent folder: --recursive followed it until the OS refused (40 levels) and
    matted the same photo 41 times, as OUT/sub/up/sub/up/.../a.png; a broken symlink was left out
    without a word."""
    root = make_pairs(tmp_path / "in", ["a"])
    (root / "sub").mkdir()
    (root / "sub" / "up").symlink_to(root)
    (root / "sub" / "b.png").symlink_to(root / "a.png")  # a linked file is an image of its own
    (root / "sub" / "b_trimap.png").symlink_to(root / "a_trimap.png")
    (root / "gone.png").symlink_to(tmp_path / "missing.png")
    report = infer_folder(FakePipeline(), root, tmp_path / "out", recursive=True, progress=False)
    assert sorted(report.done) == [str(root / "a.png"), str(root / "sub" / "b.png")]
    assert report.failed == [(str(root / "gone.png"), f"no trimap found (gone_trimap.* in {root}; "
                                                      "--trimaps names a folder of trimaps named like the images)")]


def refuse(monkeypatch, method: str, *names: str):
    """Paths named `names` raise PermissionError from `Path.METHOD`, as for a user without the right to
    enter them (the tests may run as root, who has every right)."""
    import pathlib

    real = getattr(pathlib.Path, method)

    def refused(self, *args, **kwargs):
        if self.name in names:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, method, refused)


def test_an_unreadable_subfolder_is_one_failure_and_a_recursive_batch_goes_on(tmp_path, monkeypatch, capsys):
    """`in/p -> /proc/1` under --recursive ended the whole batch ("in/p/cwd: Permission denied", exit 1,
    nothing written); a link into a folder one may not enter ended even a run without --recursive."""
    root = make_pairs(tmp_path / "in", ["a"])
    make_pairs(root / "locked", ["b"])
    make_pairs(root / "open", ["c"])
    (root / "stuck").symlink_to(root / "open")  # its stat is refused: a link into a folder one may not enter
    refuse(monkeypatch, "iterdir", "locked")
    refuse(monkeypatch, "is_dir", "stuck")
    left_out = "cannot be read (Permission denied); any images in it are left out"
    report = infer_folder(FakePipeline(), root, tmp_path / "out", recursive=True, progress=False)
    assert sorted(report.done) == [str(root / "a.png"), str(root / "open" / "c.png")]
    assert sorted(report.failed) == [(str(root / "locked"), left_out), (str(root / "stuck"), left_out)]
    shards = [find_pairs(root, None, (k, 2), recursive=True)[1] for k in (0, 1)]  # each failure in one shard
    assert sorted(shards[0] + shards[1]) == sorted(report.failed) and not shards[1]
    flat = infer_folder(FakePipeline(), root, tmp_path / "flat", progress=False)  # not walked: not a failure
    assert flat.done == [str(root / "a.png")] and not flat.failed

    masks = tmp_path / "masks"
    for name in ("x", "locked/y"):
        write_png(masks / f"{name}.png", np.pad(np.full((20, 20), 255, np.uint8), 10))
    code, out, err = matte(capsys, "trimap", "--masks", masks, "--out", tmp_path / "tri", "--recursive")
    assert code == 1 and f"matte: failed: {masks / 'locked'}: {left_out}" in err
    assert (tmp_path / "tri" / "x.png").is_file() and not (tmp_path / "tri" / "locked").exists()
    (masks / "x.png").unlink()  # nothing left it could read: one line, saying why
    code, out, err = matte(capsys, "trimap", "--masks", masks, "--out", tmp_path / "tri2", "--recursive")
    assert code != 0 and err.strip().splitlines() == [
        f"matte: error: {masks}: no image files it could read: {masks / 'locked'} {left_out}"]


class ModelMustNotRun:
    cfg = None

    def matte(self, image, trimap):
        raise AssertionError("the model ran before --out was checked")


def test_infer_out_that_is_a_file_or_read_only_is_refused_before_the_model_runs(tmp_path, capsys, monkeypatch):
    import os

    import mattecli.inference.pipeline

    monkeypatch.setattr(mattecli.inference.pipeline, "load_pipeline", lambda *a, **k: ModelMustNotRun())
    images = make_pairs(tmp_path / "in", ["a"])
    (tmp_path / "file").write_text("x")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    cases = [(tmp_path / "file", "is a file"),
             (tmp_path / "file" / "sub", f"{tmp_path / 'file'} is a file, not a folder")]  # as export --out says
    if os.geteuid() != 0:  # root writes anywhere
        cases += [(locked, "cannot write there"), (locked / "sub", "cannot write there")]
    for out, message in cases:
        code, _, err = matte(capsys, "infer", "--weights", "w.safetensors", "--images", images, "--out", out,
                             "--max-memory", "none")
        assert code == 2 and message in err and err.count("\n") == 1, (out, err)
    code, _, err = matte(capsys, "infer", "--weights", "w.safetensors", "--images", locked, "--out", tmp_path / "o",
                         "--max-memory", "none")
    assert code == 1 and "no image files" in err and err.count("\n") == 1
    locked.chmod(0o700)


def test_infer_output_subfolder_that_cannot_be_written_is_refused_before_the_model_runs(tmp_path, capsys,
                                                                                          monkeypatch):
    """OUT writable but OUT/fg not (made by another user's run, or mounted read-only): every image
    ran the model, then failed writing its foreground, and the exit code was 1."""
    import mattecli.imageio
    import mattecli.inference.pipeline

    monkeypatch.setattr(mattecli.inference.pipeline, "load_pipeline", lambda *a, **k: ModelMustNotRun())
    images = make_pairs(tmp_path / "in", ["a"])
    (tmp_path / "out" / "fg").mkdir(parents=True)
    real_make_new = mattecli.imageio.make_new

    def read_only_fg(path):  # root ignores chmod
        if Path(path).parent.name == "fg":
            raise OSError(30, "Read-only file system")
        return real_make_new(path)

    monkeypatch.setattr(mattecli.imageio, "make_new", read_only_fg)
    code, out, err = matte(capsys, "infer", "--weights", "w.safetensors", "--images", images, "--out",
                           tmp_path / "out", "--save", "alpha,fg", "--max-memory", "none")
    assert (code, out, err) == (2, "", f"matte: error: --out {tmp_path / 'out' / 'fg'}: cannot write there "
                                      "(Read-only file system)\n")


@pytest.mark.parametrize("args, message", [
    (["--trimaps", "T", "--masks", "M"], "give --trimaps or --masks, not both"),
    (["--band", "20"], "--band and --threshold make trimaps from --masks; add --masks DIR"),
    (["--threshold", "0.3,0.7"], "--band and --threshold make trimaps from --masks; add --masks DIR"),
    (["--empty", "maybe"], "--empty maybe: choose skip or pass"),
    (["--save", ","], "--save ,: choose from alpha, fg, rgba, composite, trimap"),
])
def test_infer_usage_errors_exit_2_with_one_line_before_the_model_runs(tmp_path, capsys, monkeypatch, args,
                                                                       message):
    """docs/commands/infer.md: `--trimaps` with `--masks` is a usage error (2, one line); --band and
    --threshold are "with --masks"; --empty is skip or pass; --save names at least one output."""
    import mattecli.inference.pipeline

    monkeypatch.setattr(mattecli.inference.pipeline, "load_pipeline", lambda *a, **k: ModelMustNotRun())
    images = make_pairs(tmp_path / "in", ["a"])
    code, out, err = matte(capsys, "infer", "--weights", "w.safetensors", "--images", images, "--out",
                           tmp_path / "out", "--max-memory", "none", *args)
    assert (code, out, err) == (2, "", f"matte: error: {message}\n")
    assert not (tmp_path / "out").exists()


def test_infer_refuses_missing_images_and_a_json_onto_its_trimap_before_the_model_runs(tmp_path, capsys, monkeypatch):
    """docs/commands/infer.md: `--images` neither a folder nor an image file is a usage error (2,
    one line, nothing made), and a --json "naming an input file is refused before any work": a
    --trimaps file named without an image suffix (which --json refuses anyway) is one."""
    import mattecli.inference.pipeline

    monkeypatch.setattr(mattecli.inference.pipeline, "load_pipeline", lambda *a, **k: ModelMustNotRun())
    images = make_pairs(tmp_path / "in", ["a"])
    (images / "a_trimap.png").rename(tmp_path / "tri")
    base = ["infer", "--weights", "w.safetensors", "--out", tmp_path / "out", "--max-memory", "none"]
    code, out, err = matte(capsys, *base, "--images", tmp_path / "nowhere")
    assert (code, out, err) == (2, "", f"matte: error: --images {tmp_path / 'nowhere'}: no such folder or file\n")
    before = (tmp_path / "tri").read_bytes()
    code, out, err = matte(capsys, *base, "--images", images / "a.png", "--trimaps", tmp_path / "tri",
                           "--json", tmp_path / "tri")
    assert (code, out, err) == (2, "", f"matte: error: --json {tmp_path / 'tri'}: is an input file; write the "
                                       "report to another file\n")
    assert (tmp_path / "tri").read_bytes() == before and not (tmp_path / "out").exists()


def test_infer_compile_reaches_the_pipeline_and_a_note_says_the_first_image_waits(tmp_path, capsys, monkeypatch):
    """docs/commands/infer.md: with --compile "the first image waits for the compilation (minutes)
    ..., a note says so"; without it, no note."""
    import mattecli.inference.pipeline

    asked = []

    def load(*args, **kwargs):
        asked.append(kwargs["compile"])
        return FakePipeline()

    monkeypatch.setattr(mattecli.inference.pipeline, "load_pipeline", load)
    images = make_pairs(tmp_path / "in", ["a"])
    for flags, out in (([], "eager"), (["--compile"], "compiled")):
        code, stdout, err = matte(capsys, "infer", "--weights", "w.safetensors", "--images", images, "--out",
                                  tmp_path / out, "--device", "cpu", "--max-memory", "none", *flags)
        assert code == 0 and stdout.startswith("1 written"), err
        assert ("matte: note: --compile: the first image waits" in err) == bool(flags), err
    assert asked == [False, True]


def test_infer_masks_band_and_threshold_make_the_trimaps_matte_trimap_makes(tmp_path, capsys, monkeypatch):
    """CLI.md: with --masks, trimaps are made "exactly as `matte trimap` makes them", --band and
    --threshold included (a soft patch of 0.39: unknown between 0.3 and 0.7, background at 0.5)."""
    import mattecli.inference.pipeline

    monkeypatch.setattr(mattecli.inference.pipeline, "load_pipeline", lambda *a, **k: FakePipeline())
    images, masks = mask_folder(tmp_path)
    soft = read_gray(masks / "a.png")
    soft[2:8, 50:60] = 100
    write_png(masks / "a.png", soft)
    rule = ["--band", "4", "--threshold", "0.3,0.7"]
    code, out, err = matte(capsys, "trimap", "--masks", masks, "--out", tmp_path / "t", *rule)
    assert code == 0, err
    code, out, err = matte(capsys, "infer", "--weights", "w.safetensors", "--images", images, "--masks", masks,
                           "--out", tmp_path / "o", "--save", "alpha,trimap", "--max-memory", "none", *rule)
    assert code == 0 and out.startswith("2 written"), err
    for name in ("a", "b"):
        made = read_gray(tmp_path / "t" / f"{name}.png")
        assert np.array_equal(read_gray(tmp_path / "o" / "trimap" / f"{name}.png"), made)
    assert (read_gray(tmp_path / "t" / "a.png")[2:8, 50:60] == 128).all()


def test_infer_shard_k_of_n_takes_images_k_k_plus_n_of_the_sorted_list(tmp_path, capsys, monkeypatch):
    """`--shard K/N` (its help; docs/commands/infer.md): the K-th, 0-based, of N slices of the input
    list sorted by path, images K, K+N, K+2N, ...: 1/3 of n0..n4 is n1 and n4."""
    import mattecli.inference.pipeline

    monkeypatch.setattr(mattecli.inference.pipeline, "load_pipeline", lambda *a, **k: FakePipeline())
    images = make_pairs(tmp_path / "in", [f"n{i}" for i in (3, 0, 4, 1, 2)])
    code, out, err = matte(capsys, "infer", "--weights", "w.safetensors", "--images", images, "--out", tmp_path / "o",
                           "--shard", "1/3", "--max-memory", "none")
    assert code == 0 and out.startswith("2 written"), err
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["n1.png", "n4.png"]


@pytest.mark.parametrize("flags, ceiling", [([], 4 * 2**30), (["--max-memory", "512MB"], 512 * 2**20),
                                            (["--max-memory", "none"], None)])
def test_infer_memory_ceiling_is_4gb_on_a_cpu_unless_given(tmp_path, capsys, monkeypatch, flags, ceiling):
    """docs/commands/infer.md: --max-memory "default 4GB on a CPU" (binary units), `none` for no
    ceiling: the ceiling the model is loaded with."""
    import mattecli.inference.pipeline
    from mattecli.errors import UsageError

    asked = []

    def load(*args, **kwargs):
        asked.append(kwargs["max_bytes"])
        raise UsageError("loaded")

    monkeypatch.setattr(mattecli.inference.pipeline, "load_pipeline", load)
    images = make_pairs(tmp_path / "in", ["a"])
    code, _, err = matte(capsys, "infer", "--weights", "w.safetensors", "--images", images, "--out", tmp_path / "o",
                         "--device", "cpu", *flags)
    assert (code, err, asked) == (2, "matte: error: loaded\n", [ceiling])


def test_an_unwritable_out_is_one_usage_error(tmp_path, monkeypatch):
    import mattecli.imageio
    from mattecli.errors import UsageError
    from mattecli.imageio import prepare_out_dir

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(mattecli.imageio, "make_new", refuse)  # what a read-only folder does (root ignores chmod)
    with pytest.raises(UsageError, match="--out .*: cannot write there \\(Permission denied\\)"):
        prepare_out_dir(tmp_path / "o")


def test_an_out_on_a_read_only_file_system_is_one_usage_error(tmp_path, monkeypatch):
    """There, removing the probe that could not be made fails too (EROFS, not "no such file"): it
    was 'matte: error: OUT/.matte-write-check.1f2e...: Read-only file system', exit 1."""
    import mattecli.files
    import mattecli.imageio
    from mattecli.errors import UsageError
    from mattecli.files import case_insensitive
    from mattecli.imageio import prepare_out_dir

    def read_only(path, *args, **kwargs):
        raise OSError(30, "Read-only file system", str(path))

    monkeypatch.setattr(mattecli.imageio, "make_new", read_only)
    monkeypatch.setattr(mattecli.files, "make_new", read_only)
    monkeypatch.setattr(Path, "unlink", read_only)
    with pytest.raises(UsageError, match="--out .*: cannot write there \\(Read-only file system\\)"):
        prepare_out_dir(tmp_path / "o")
    assert case_insensitive(tmp_path) is False


def test_matte_trimap_on_a_folder_without_masks_is_exit_1_with_one_line(tmp_path, capsys):
    (tmp_path / "masks" / "nested").mkdir(parents=True)
    write_png(tmp_path / "masks" / "nested" / "a.png", np.zeros((4, 4), np.uint8))
    code, _, err = matte(capsys, "trimap", "--masks", tmp_path / "masks", "--out", tmp_path / "t")
    assert code == 1 and "no image files" in err and "nested" in err and err.count("\n") == 1
    code, out, err = matte(capsys, "trimap", "--masks", tmp_path / "masks", "--out", tmp_path / "masks" / "t",
                           "--recursive", "--empty", "pass")
    assert code == 0 and "1 written" in out, err
    assert (read_gray(tmp_path / "masks" / "t" / "nested" / "a.png") == 0).all()
    code, out, err = matte(capsys, "trimap", "--masks", tmp_path / "masks", "--out", tmp_path / "masks" / "t",
                           "--recursive", "--empty", "pass")  # its own outputs, inside the mask folder, are not read
    assert code == 0 and "1 skipped" in out, err


def test_matte_trimap_on_photos_with_their_masks_beside_them(tmp_path, capsys):
    """The layout `matte infer --masks` reads (photo `a.png`, mask `a_mask.png`, one folder): the
    photos are not masks. A mask without a photo beside it (`c.png`) is still a mask."""
    images, masks = mask_folder(tmp_path, names=("a", "b"))
    for m in masks.iterdir():
        m.rename(images / f"{m.stem.removesuffix('_mask')}_mask.png")
    lone = np.zeros((48, 64), np.uint8)
    lone[5:30, 5:30] = 255
    write_png(images / "c.png", lone)
    code, out, err = matte(capsys, "trimap", "--masks", images, "--out", tmp_path / "t", "--band", "4")
    assert code == 0 and "3 written" in out, err
    assert "a.png: its {stem}_mask mask lies beside it, so it is taken as a photo, not a mask (and 1 more" in err
    for name in ("a", "b"):
        expected = trimap_from_mask(read_mask(images / f"{name}_mask.png")[0], band=4)
        assert np.array_equal(read_gray(tmp_path / "t" / f"{name}.png"), expected)
    assert np.array_equal(read_gray(tmp_path / "t" / "c.png"), trimap_from_mask(lone, band=4))
    # with the same folder as --images: previews over the photos; the mask without a photo is named
    code, out, err = matte(capsys, "trimap", "--masks", images, "--out", tmp_path / "t2", "--band", "4",
                           "--preview", tmp_path / "p", "--images", tmp_path / "images" / ".")  # spelt otherwise
    assert code == 1 and "2 written" in out and "c.png: no image named c.*" in err
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["a.jpg", "b.jpg"]


def test_a_one_pixel_or_empty_mask_gives_a_trimap_of_its_size():
    """OpenCV took a 1x1 array for a scalar: a 1x1 mask gave a 4x1 trimap (a float one an
    OpenCV error), and a 0x0 mask raised AttributeError."""
    for mask, expected in [(np.zeros((1, 1), np.uint8), 0), (np.full((1, 1), 200, np.uint8), 255),
                           (np.full((1, 1), 0.7, np.float32), 255), (np.ones((1, 1), bool), 255)]:
        assert trimap_from_mask(mask).tolist() == [[expected]]
    assert trimap_from_mask(np.full((1, 1), 0.5), threshold=(0.2, 0.8)).tolist() == [[128]]
    assert trimap_from_mask(np.zeros((0, 0), np.uint8)).shape == (0, 0)
    assert trimap_from_mask(np.zeros((0, 5), np.uint8), band=40).shape == (0, 5)


@pytest.mark.parametrize("shape, band", [((2, 2), 16), ((1, 2), 20), ((2, 1), 31), ((4, 4), 32), ((3, 3), 40),
                                         ((4, 1), 40)])
def test_a_mask_no_larger_than_one_block_of_a_wide_band(shape, band):
    """A band of 16 px and more runs on a grid of 2x2 (4x4) blocks: a mask of one block made a 1x1
    grid, which OpenCV took for a scalar: a float64 trimap, a traceback in `matte trimap` and an
    OpenCV error that ended `matte infer --masks` with the rest of the batch."""
    mask = np.zeros(shape, np.uint8)
    mask.flat[0] = 255
    trimap = trimap_from_mask(mask, band=band)
    assert trimap.dtype == np.uint8 and trimap.shape == shape and (trimap == 128).all()
    assert (trimap_from_mask(np.full(shape, 255, np.uint8), band=band) == 255).all()


def test_outputs_never_overwrite_the_photos(tmp_path):
    """`matte trimap --masks m --images p --out p --overwrite` wrote the trimap p/a.png over the
    photo p/a.png (without --overwrite it called the photo a trimap already made, and skipped it);
    --preview p did the same to a photo a.jpg."""
    mask = np.zeros((20, 30), np.uint8)
    mask[5:15, 5:20] = 255
    (tmp_path / "m").mkdir()
    write_png(tmp_path / "m" / "a.png", mask)
    photos = tmp_path / "p"
    photos.mkdir()
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(photos / "a.png")
    job = TrimapJob(rule=MaskRule(), images=photos)
    for overwrite in (True, False):
        report = make_trimaps(tmp_path / "m", photos, job, progress=False, overwrite=overwrite)
        assert report.failed == [(str(tmp_path / "m" / "a.png"),
                                  f"its output {photos / 'a.png'} would overwrite an input; choose another --out")]
        assert not report.skipped
    (photos / "a.png").rename(photos / "a.jpg")
    before = (photos / "a.jpg").read_bytes()
    report = make_trimaps(tmp_path / "m", tmp_path / "o", job, preview=photos, progress=False, overwrite=True)
    assert report.failed == [(str(tmp_path / "m" / "a.png"),
                              f"its output {photos / 'a.jpg'} would overwrite an input; choose another --preview")]
    assert (photos / "a.jpg").read_bytes() == before and [p.name for p in photos.iterdir()] == ["a.jpg"]


def test_mask_names_differing_only_in_case_on_a_case_insensitive_file_system(tmp_path, monkeypatch):
    """On macOS or Windows the trimaps of `Cat.png` and `cat.tif` are one file: both were reported
    written, the second replacing the first. Simulated: case_insensitive says so, as it does there."""
    import mattecli.data.make_trimaps as module

    masks = tmp_path / "masks"
    masks.mkdir()
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 4:12] = 255
    write_png(masks / "Cat.png", mask)
    Image.fromarray(mask).save(masks / "cat.tif")
    report = make_trimaps(masks, tmp_path / "t1", TrimapJob(rule=MaskRule()), progress=False)
    assert len(report.done) == 2 and not report.failed  # this file system tells them apart
    monkeypatch.setattr(module, "case_insensitive", lambda folder: True)
    report = make_trimaps(masks, tmp_path / "t2", TrimapJob(rule=MaskRule()), progress=False)
    assert len(report.done) == 1 and report.failed == [
        (str(masks / "cat.tif"), "another file gives the same name (Cat.png -> cat.png); this file system does not "
                                 "tell letter case apart")]


def test_a_mask_over_pillows_warning_size_is_named_without_its_two_line_warning(tmp_path):
    """A PNG whose header declares 9500x9500 (90 MP, over Pillow's 89 MP warning size; a 16K photo is
    133 MP) put Pillow's DecompressionBombWarning, two lines naming no file, among matte's lines."""
    import struct
    import zlib

    from tests.test_cli import run_main

    masks = tmp_path / "masks"
    masks.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(masks / "huge.png")
    data = (masks / "huge.png").read_bytes()
    ihdr = struct.pack(">II", 9500, 9500) + data[24:29]
    (masks / "huge.png").write_bytes(data[:16] + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)) + data[33:])
    done = run_main("trimap", "--masks", masks, "--out", tmp_path / "out")
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if not line.startswith("trimap ")]  # less the progress bar
    assert lines == [f"matte: failed: {masks / 'huge.png'}: cannot decode image (image file is truncated (0 bytes not "
                     "processed))"]


def test_a_damaged_exif_block_is_read_without_pillows_two_line_warning(tmp_path):
    """A JPEG whose EXIF block is cut short put Pillow's 'UserWarning: Corrupt EXIF data', in two lines
    naming no file, among matte's lines; the mask is read as stored, as one without a tag is."""
    from tests.test_cli import run_main

    masks = tmp_path / "masks"
    masks.mkdir()
    mask = np.zeros((20, 30), np.uint8)
    mask[:, 15:] = 255
    Image.fromarray(mask).save(masks / "m.jpg", exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x05\x01\x12")
    done = run_main("trimap", "--masks", masks, "--out", tmp_path / "out")
    assert done.returncode == 0 and [line for line in done.stderr.splitlines() if not line.startswith("trimap ")] == []
    assert read_gray(tmp_path / "out" / "m.png").shape == (20, 30)


def test_exif_tags_running_past_the_block_or_of_too_many_values_are_read_without_pillows_warnings(tmp_path):
    """A JPEG whose EXIF holds a tag whose data runs past the block's end (a description cut off), or
    an orientation of two values, put Pillow's 'UserWarning: Tag data larger than file. Skipping tag
    270' or 'Metadata Warning, tag 274 had too many entries', in two lines naming no file, among
    matte's lines; the orientation Pillow still reads is applied."""
    import struct

    from tests.test_cli import run_main

    masks = tmp_path / "masks"
    masks.mkdir()
    mask = np.zeros((20, 30), np.uint8)
    mask[:, 15:] = 255
    head = b"Exif\x00\x00MM\x00*\x00\x00\x00\x08"
    description = struct.pack(">HHII", 0x010E, 2, 100, 38)  # 100 characters, past the end
    orientation = struct.pack(">HHIHH", 0x0112, 3, 1, 6, 0)  # rotated 90 CW
    Image.fromarray(mask).save(masks / "long.jpg", exif=head + b"\x00\x02" + description + orientation + bytes(4))
    twice = struct.pack(">HHIHH", 0x0112, 3, 2, 6, 6)  # two values: the first is read
    Image.fromarray(mask).save(masks / "many.jpg", exif=head + b"\x00\x01" + twice + bytes(4))
    done = run_main("trimap", "--masks", masks, "--out", tmp_path / "out")
    assert done.returncode == 0 and [line for line in done.stderr.splitlines() if not line.startswith("trimap ")] == []
    assert read_gray(tmp_path / "out" / "long.png").shape == read_gray(tmp_path / "out" / "many.png").shape == (30, 20)


def test_an_undecodable_mask_is_named_once(tmp_path, capsys):
    """Pillow's reason ("cannot identify image file '/the/path'") named the file a second time."""
    (tmp_path / "masks").mkdir()
    (tmp_path / "masks" / "bad.png").write_bytes(b"not a png")
    code, _, err = matte(capsys, "trimap", "--masks", tmp_path / "masks", "--out", tmp_path / "t")
    assert code == 1 and f"matte: failed: {tmp_path / 'masks' / 'bad.png'}: cannot decode image (cannot identify " \
                          "image file)\n" in err and err.count("bad.png") == 1


def test_infer_walks_a_recursive_input_tree_once(tmp_path, capsys, monkeypatch):
    """The CLI's check for an empty --images listed the whole tree before the batch listed it again
    (on a tree of millions of files, a second walk); the check now stops at the first image."""
    import pathlib

    import mattecli.inference.pipeline
    import mattecli.inference.tiling

    monkeypatch.setattr(mattecli.inference.pipeline, "load_pipeline", lambda *a, **k: FakePipeline())
    monkeypatch.setattr(mattecli.inference.tiling, "default_max_bytes", lambda device: None)  # no model to size
    root = make_pairs(tmp_path / "in", ["a"])
    for sub in ("s1", "s2", "s2/deep"):
        make_pairs(root / sub, ["b"])
    walked, real = [], pathlib.Path.iterdir

    def counted(self):
        walked.append(self.relative_to(root).as_posix() if self.is_relative_to(root) else str(self))
        return real(self)

    monkeypatch.setattr(pathlib.Path, "iterdir", counted)
    code, out, err = matte(capsys, "infer", "--weights", __file__, "--images", root, "--out", tmp_path / "out",
                           "--recursive", "--device", "cpu")
    assert code == 0 and (tmp_path / "out" / "s2" / "deep" / "b.png").is_file(), err
    assert sorted(w for w in walked if w != ".") == ["s1", "s2", "s2/deep"]  # each subfolder listed once
    empty = tmp_path / "empty"
    make_pairs(empty / "locked", ["c"])
    refuse(monkeypatch, "iterdir", "locked")
    code, out, err = matte(capsys, "infer", "--weights", __file__, "--images", empty, "--out", tmp_path / "out2",
                           "--recursive", "--device", "cpu")
    assert code == 1 and err.strip().splitlines() == [
        f"matte: error: {empty}: no image files it could read: {empty / 'locked'} cannot be read (Permission denied); "
        "any images in it are left out"] and not (tmp_path / "out2").exists()


def test_json_reports_each_file_for_scripts(tmp_path, capsys, monkeypatch):
    """A script had only the summary line and `matte: failed: PATH: reason` lines on stderr
    (ambiguous where a path holds ': '); --json writes the report, `-` to stdout alone."""
    import json

    import mattecli.inference.pipeline
    import mattecli.inference.tiling

    masks = tmp_path / "masks"
    write_png(masks / "a: b.png", disc(60, 15)[0])
    (masks / "bad.png").write_bytes(b"not a png")
    code, out, err = matte(capsys, "trimap", "--masks", masks, "--out", tmp_path / "t", "--json", "-")
    report = json.loads(out)  # stdout holds the JSON alone; the summary went to stderr
    assert code == 1 and "1 written to" in err and report["counts"] == {"done": 1, "skipped": 0, "failed": 1,
                                                                         "nothing": 0, "not_attempted": 0}
    assert report["done"] == [str(masks / "a: b.png")] and report["failed"][0]["path"] == str(masks / "bad.png")
    assert report["failed"][0]["reason"].startswith("cannot decode image")
    code, out, err = matte(capsys, "trimap", "--masks", masks, "--out", tmp_path / "t", "--json", tmp_path / "r.json")
    assert code == 1 and out.startswith("0 written to") and json.loads((tmp_path / "r.json").read_text())[
        "skipped"] == [str(masks / "a: b.png")]
    # an image's name (every input and output of a batch is an image) or the weights: refused before any work
    before = (masks / "a: b.png").read_bytes()
    code, out, err = matte(capsys, "trimap", "--masks", masks, "--out", tmp_path / "t2", "--json", masks / "a: b.PNG")
    assert code == 2 and "an image's name" in err and (masks / "a: b.png").read_bytes() == before
    assert not (tmp_path / "t2").exists()
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"weights")
    code, out, err = matte(capsys, "infer", "--weights", weights, "--images", masks, "--out", tmp_path / "o",
                           "--json", weights)
    assert code == 2 and "is an input file" in err and weights.read_bytes() == b"weights"

    monkeypatch.setattr(mattecli.inference.pipeline, "load_pipeline", lambda *a, **k: FakePipeline())
    monkeypatch.setattr(mattecli.inference.tiling, "default_max_bytes", lambda device: None)
    root = make_pairs(tmp_path / "in", ["x", "y"])
    (root / "y_trimap.png").unlink()
    code, out, err = matte(capsys, "infer", "--weights", weights, "--images", root, "--out", tmp_path / "o",
                           "--device", "cpu", "--json", "-")
    report = json.loads(out)
    assert code == 1 and report["done"] == [str(root / "x.png")] and report["out"] == str(tmp_path / "o")
    assert [f["path"] for f in report["failed"]] == [str(root / "y.png")] and "no trimap found" in report["failed"][0][
        "reason"]


def test_an_alpha_trimap_with_nothing_to_matte_is_written_and_named(tmp_path, capsys):
    """A hard-edged alpha under --method dist (the authors' rule grows only partial values) gave a
    trimap with no unknown pixel without a word: every eval metric on it is 0."""
    hard = np.zeros((64, 64), np.uint8)
    hard[16:48, 16:48] = 255
    write_png(tmp_path / "alphas" / "hard.png", hard)
    code, out, err = matte(capsys, "trimap", "--alphas", tmp_path / "alphas", "--out", tmp_path / "t")
    assert code == 0 and "1 written" in out and set(np.unique(read_gray(tmp_path / "t" / "hard.png"))) == {0, 255}
    assert (f"{tmp_path / 'alphas' / 'hard.png'}: nothing to matte: the trimap of this alpha has no unknown pixel "
            "(no partial value, which is all --method dist grows; erode bands the edge); written as is") in err
    code, _, err = matte(capsys, "trimap", "--alphas", tmp_path / "alphas", "--out", tmp_path / "e",
                         "--method", "erode")
    assert code == 0 and "nothing to matte" not in err


def test_a_symlink_loop_among_the_masks_or_photos_is_one_failure(tmp_path):
    """`matte trimap --images`: a symlink loop among the masks or the photos (x.png -> x.png) was a
    RuntimeError traceback ("Symlink loop from ...") from Path.resolve that stopped the batch."""
    mask = np.zeros((40, 48), np.uint8)
    mask[10:30, 10:30] = 255
    for folder in ("masks", "photos"):
        write_png(tmp_path / folder / "a.png", mask)
        (tmp_path / folder / "loop.png").symlink_to("loop.png")
    job = TrimapJob(rule=MaskRule(), images=tmp_path / "photos")
    report = make_trimaps(tmp_path / "masks", tmp_path / "trimaps", job, progress=False, workers=1)
    assert len(report.done) == 1 and [path for path, _ in report.failed] == [str(tmp_path / "masks" / "loop.png")]


def test_make_trimaps_refuses_a_missing_source_folder_as_a_usage_error(tmp_path):
    """Called from Python as from `matte trimap`: a --masks (or --alphas) folder that is not there
    is a usage error naming the option and why, not a batch over nothing."""
    from mattecli.errors import UsageError

    with pytest.raises(UsageError, match=r"^--masks .*missing: no such folder$"):
        make_trimaps(tmp_path / "missing", tmp_path / "t", TrimapJob(rule=MaskRule()), progress=False)
    with pytest.raises(UsageError, match=r"^--alphas .*missing: no such folder$"):
        make_trimaps(tmp_path / "missing", tmp_path / "t", TrimapJob(), progress=False)
    assert not (tmp_path / "t").exists()


def test_one_photo_beside_its_mask_is_noted_without_and_more(tmp_path):
    """One photo with its `_mask` beside it: the note names it and says no "(and 0 more like it)"."""
    folder = tmp_path / "m"
    folder.mkdir()
    mask = np.zeros((32, 40), np.uint8)
    mask[8:24, 10:30] = 255
    write_png(folder / "a.png", np.stack([mask] * 3, -1))
    write_png(folder / "a_mask.png", mask)
    report = make_trimaps(folder, tmp_path / "t", TrimapJob(rule=MaskRule(band="2")), progress=False)
    assert [Path(p).name for p in report.done] == ["a_mask.png"]
    notes = [n for n in report.notes if "lies beside it" in n]
    assert len(notes) == 1 and notes[0].endswith("so it is taken as a photo, not a mask"), notes


def test_a_rerun_remakes_a_missing_preview_of_a_trimap_that_exists(tmp_path):
    """A mask is skipped only when all its outputs exist: with its preview gone, both are made again."""
    folder = tmp_path / "m"
    folder.mkdir()
    mask = np.zeros((32, 40), np.uint8)
    mask[8:24, 10:30] = 255
    write_png(folder / "a.png", mask)
    job = TrimapJob(rule=MaskRule(band="2"))
    first = make_trimaps(folder, tmp_path / "t", job, preview=tmp_path / "p", progress=False)
    assert len(first.done) == 1 and (tmp_path / "p" / "a.jpg").is_file()
    (tmp_path / "p" / "a.jpg").unlink()
    again = make_trimaps(folder, tmp_path / "t", job, preview=tmp_path / "p", progress=False)
    assert len(again.done) == 1 and again.skipped == [] and (tmp_path / "p" / "a.jpg").is_file()
    third = make_trimaps(folder, tmp_path / "t", job, preview=tmp_path / "p", progress=False)
    assert third.done == [] and len(third.skipped) == 1


def test_a_young_temporary_file_may_be_a_live_runs_and_is_kept(tmp_path):
    """Only temporaries older than an hour (STALE_TEMP_SECONDS) are removed: a young one may belong
    to another `matte trimap` writing into the same folder now."""
    mask = np.zeros((40, 48), np.uint8)
    mask[10:30, 10:30] = 255
    write_png(tmp_path / "masks" / "a.png", mask)
    young = tmp_path / "trimaps" / ".b.k3j4.png.tmp"
    young.parent.mkdir()
    young.write_bytes(b"half")
    report = make_trimaps(tmp_path / "masks", tmp_path / "trimaps", TrimapJob(rule=MaskRule()), progress=False)
    assert len(report.done) == 1 and young.exists()


def test_failures_are_listed_in_path_order(tmp_path):
    """Name clashes found while listing and files that fail while being made: one list, sorted by path."""
    masks = tmp_path / "masks"
    mask = np.zeros((40, 48), np.uint8)
    mask[10:30, 10:30] = 255
    write_png(masks / "z.png", mask)
    Image.fromarray(mask).save(masks / "z.tif")  # the same output name as z.png
    (masks / "b.png").write_bytes(b"not a png")
    report = make_trimaps(masks, tmp_path / "trimaps", TrimapJob(rule=MaskRule()), progress=False, workers=1)
    assert [Path(p).name for p, _ in report.failed] == ["b.png", "z.tif"], report.failed


def test_masks_photos_are_read_upright_by_their_exif_orientation(tmp_path):
    """--masks with --images: a photo stored 30 wide and 20 high with orientation 6 is shown 20 wide
    and 30 high; an untagged upright mask of that size fits it as it is (a note says the tags differ), and the
    preview is upright."""
    masks, images = tmp_path / "masks", tmp_path / "images"
    masks.mkdir()
    images.mkdir()
    upright = np.zeros((30, 20), np.uint8)
    upright[15:] = 255
    write_png(masks / "m.png", upright)
    _rotated_png(images / "m.png", np.zeros((20, 30, 3), np.uint8))
    report = make_trimaps(masks, tmp_path / "out", TrimapJob(rule=MaskRule(band="2"), images=images),
                          preview=tmp_path / "p", progress=False)
    assert report.failed == [] and len(report.done) == 1, report.failed
    assert any("only its own EXIF orientation (none) fits its size, used" in n for n in report.notes), report.notes
    assert np.array_equal(read_gray(tmp_path / "out" / "m.png"), trimap_from_mask(upright, band=2))
    assert Image.open(tmp_path / "p" / "m.jpg").size == (20, 30)
