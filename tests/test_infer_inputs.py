"""Inputs as found in the wild, through `infer_folder` (what `matte infer` runs)."""

import numpy as np
import pytest
from PIL import Image

from mattecli.errors import InputError, UsageError
from mattecli.imageio import read_gray, read_image
from mattecli.inference.batch import infer_folder
from tests.infer_helpers import FakePipeline

H, W = 20, 30


def trimap_png(path, h=H, w=W, exif_orientation=None):
    trimap = np.zeros((h, w), np.uint8)
    trimap[:, w // 3:] = 128
    trimap[:, 2 * w // 3:] = 255
    img = Image.fromarray(trimap)
    if exif_orientation:
        exif = img.getexif()
        exif[0x0112] = exif_orientation
        img.save(path, exif=exif)
    else:
        img.save(path)
    return trimap


def photo(h=H, w=W):
    yy, xx = np.mgrid[:h, :w]
    return np.stack([xx * 8, yy * 12, (xx + yy) * 4], axis=2).astype(np.uint8)


def run(folder, tmp_path, pipeline=None):
    pipeline = pipeline or FakePipeline()
    report = infer_folder(pipeline, folder, tmp_path / "out", progress=False)
    return report, pipeline


def test_16bit_rgba_gray_cmyk_and_progressive_inputs(tmp_path):
    import cv2

    folder = tmp_path / "in"
    folder.mkdir()
    rgb = photo()
    cv2.imwrite(str(folder / "sixteen.png"), (rgb[..., ::-1].astype(np.uint16) * 257))
    Image.fromarray(np.dstack([rgb, np.full((H, W), 7, np.uint8)]), "RGBA").save(folder / "rgba.png")
    Image.fromarray(rgb[..., 0]).save(folder / "gray.png")
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    Image.fromarray(rgb).save(folder / "progressive.jpg", quality=95, progressive=True)
    for stem in ("sixteen", "rgba", "gray", "cmyk", "progressive"):
        trimap_png(folder / f"{stem}_trimap.png")
    report, fake = run(folder, tmp_path)
    assert not report.failed and len(report.done) == 5
    assert fake.shapes == [(H, W)] * 5
    assert np.array_equal(read_image(folder / "sixteen.png"), rgb)  # 16-bit scaled, not truncated to garbage
    assert np.array_equal(read_image(folder / "rgba.png"), rgb)  # alpha dropped, colours kept
    assert np.array_equal(read_image(folder / "gray.png"), np.repeat(rgb[..., :1], 3, axis=2))
    for lossy in ("cmyk.jpg", "progressive.jpg"):
        assert np.abs(read_image(folder / lossy).astype(int) - rgb).mean() < 6, lossy


def test_a_multi_page_tiff_or_animated_webp_is_read_as_its_first_frame(tmp_path):
    rgb = photo()
    first, second = Image.fromarray(rgb), Image.fromarray(255 - rgb)
    first.save(tmp_path / "pages.tif", save_all=True, append_images=[second])
    first.save(tmp_path / "frames.webp", save_all=True, append_images=[second], lossless=True)
    for name in ("pages.tif", "frames.webp"):
        assert np.array_equal(read_image(tmp_path / name), rgb), name


def test_exif_orientation_applies_to_image_and_trimap_alike(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    img = Image.fromarray(photo())
    exif = img.getexif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90 degrees clockwise (portrait)
    img.save(folder / "turned.jpg", exif=exif, quality=95)
    trimap_png(folder / "turned_trimap.png", exif_orientation=6)
    report, fake = run(folder, tmp_path)
    assert not report.failed, report.failed
    assert fake.shapes == [(W, H)]  # as a viewer shows it
    alpha = read_gray(tmp_path / "out" / "turned.png")
    assert alpha.shape == (W, H)
    assert (alpha[: W // 3] == 0).all()  # the trimap's left third (background) is now on top


def tagged_photo(path, h=H, w=W, orientation=6):
    img = Image.fromarray(photo(h, w))
    exif = img.getexif()
    exif[0x0112] = orientation  # 6: stored landscape, shown rotated 90 degrees clockwise (portrait)
    img.save(path, exif=exif, quality=95)


@pytest.mark.parametrize("drawn_on", ["upright view", "stored pixels"])
def test_a_phone_photo_with_an_untagged_trimap_uses_the_one_orientation_that_fits(tmp_path, drawn_on):
    folder = tmp_path / "in"
    folder.mkdir()
    tagged_photo(folder / "turned.jpg")
    if drawn_on == "upright view":  # portrait, as the photo is shown; left third background
        trimap = trimap_png(folder / "turned_trimap.png", h=W, w=H)
    else:  # landscape, as the photo is stored: shown turned, its left third comes on top
        trimap = np.rot90(trimap_png(folder / "turned_trimap.png"), -1)
    report, fake = run(folder, tmp_path)
    assert not report.failed and fake.shapes == [(W, H)]
    assert any("only" in n and "fits its size, used" in n for n in report.notes), report.notes
    alpha = read_gray(tmp_path / "out" / "turned.png")
    assert np.array_equal(alpha == 0, trimap == 0) and np.array_equal(alpha == 255, trimap == 255)


def test_exif_orientations_that_disagree_on_a_square_image_are_refused_with_the_reason(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    tagged_photo(folder / "turned.jpg", h=W, w=W)
    trimap_png(folder / "turned_trimap.png", h=W, w=W)  # no orientation tag; both ways fit
    report, fake = run(folder, tmp_path)
    assert fake.calls == 0 and len(report.failed) == 1
    path, reason = report.failed[0]
    assert path.endswith("turned_trimap.png")
    assert "EXIF orientation" in reason and "rotated 90 CW" in reason and "none" in reason and "both fit" in reason


def test_trimap_of_another_size_names_both_sizes(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(photo()).save(folder / "x.png")
    trimap_png(folder / "x_trimap.png", h=H + 1)
    report, _ = run(folder, tmp_path)
    assert "trimap is 30x21 but image x.png is 30x20" in report.failed[0][1]


@pytest.mark.parametrize("content, reason", [(b"", "empty file"), (b"GIF89a garbage", "cannot decode")])
def test_empty_and_unreadable_files_are_named_and_the_rest_goes_on(tmp_path, content, reason):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "bad.png").write_bytes(content)
    trimap_png(folder / "bad_trimap.png")
    Image.fromarray(photo()).save(folder / "good one é.png")
    trimap_png(folder / "good one é_trimap.png")
    (folder / "bad trimap_trimap.png").write_bytes(content)  # a bad trimap too
    Image.fromarray(photo()).save(folder / "bad trimap.png")
    report, _ = run(folder, tmp_path)
    assert report.done == [str(folder / "good one é.png")]
    assert sorted(p.split("/")[-1] for p, _ in report.failed) == ["bad trimap_trimap.png", "bad.png"]
    assert all(reason in r for _, r in report.failed)
    assert (tmp_path / "out" / "good one é.png").is_file()


def test_wide_integer_float_and_1_bit_grey_files_scale_to_8_bits_rounded(tmp_path):
    """_to_uint8: 32-bit integers of 16-bit levels (max 65535, an exact edge) scale by 255/65535, floats
    are clipped to [0, 1] then x 255, both rounded to the nearest level (32768 -> 127.50 -> 128, 0.5 ->
    127.5 -> 128 half to even, 0.25 -> 63.75 -> 64); a 1-bit file's white is 255. By hand."""
    Image.fromarray(np.array([[0, 65535, 32768, 257]], np.int32)).save(tmp_path / "i32.tif")
    assert read_gray(tmp_path / "i32.tif").tolist() == [[0, 255, 128, 1]]
    Image.fromarray(np.array([[0, 0.5, 1.2, -0.2, 0.25]], np.float32)).save(tmp_path / "f.tif")
    assert read_gray(tmp_path / "f.tif").tolist() == [[0, 128, 255, 0, 64]]
    import cv2

    cv2.imwrite(str(tmp_path / "u16.png"), np.array([[0, 256, 255]], np.uint16))  # 256: not 8-bit values stored wide
    assert read_gray(tmp_path / "u16.png").tolist() == [[0, 1, 1]]
    Image.fromarray(np.array([[-1, 100]], np.int32)).save(tmp_path / "neg.tif")  # below 0: not 8-bit values either
    assert read_gray(tmp_path / "neg.tif").tolist() == [[0, 0]]
    Image.fromarray(np.array([[True, False]])).save(tmp_path / "bits.png")
    assert read_gray(tmp_path / "bits.png").tolist() == [[255, 0]]


def test_floats_beyond_1_5_are_refused_not_clipped_to_white(tmp_path):
    """array_values / float_problem: floats outside [-0.5, 1.5] are not [0, 1] values (a resampling's
    overshoot is); 2.0 is refused by the reader and the Python API alike."""
    from mattecli.imageio import array_values

    Image.fromarray(np.array([[0, 2.0]], np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(InputError, match="values from 0.0 to 2.0: floats are read as"):
        read_gray(tmp_path / "f.tif")
    with pytest.raises(ValueError, match="alpha: float32 values from 0.0 to 2.0"):
        array_values(np.array([0, 2.0], np.float32), "alpha")
    assert array_values(np.array([-0.5, 1.5], np.float32), "alpha").tolist() == [-0.5, 1.5]


def test_wide_integer_arrays_must_hold_8_bit_values():
    """array_values: an int64 array (np.where(m, 255, 0)) holds 8-bit values; 256 is out of 0..255."""
    from mattecli.imageio import array_values

    assert array_values(np.array([0, 255], np.int64), "mask").dtype == np.uint8
    with pytest.raises(ValueError, match="mask: int64 values from 0 to 256: expected 0..255"):
        array_values(np.array([0, 256], np.int64), "mask")


def test_each_exif_orientation_turns_the_stored_pixels_as_the_tag_says():
    """EXIF orientation (TIFF 6.0 tag 274) by hand on [[1, 2, 3], [4, 5, 6]]: 2 mirror left-right, 3 turn
    180, 4 flip top-bottom, 5 transpose, 6 turn 90 clockwise, 7 transverse, 8 turn 90 anticlockwise;
    what Pillow's ImageOps.exif_transpose shows. 1 and unknown tags leave it."""
    from PIL import ImageOps

    from mattecli.imageio import orient

    a = np.array([[1, 2, 3], [4, 5, 6]], np.uint8)
    want = {1: [[1, 2, 3], [4, 5, 6]], 2: [[3, 2, 1], [6, 5, 4]], 3: [[6, 5, 4], [3, 2, 1]],
            4: [[4, 5, 6], [1, 2, 3]], 5: [[1, 4], [2, 5], [3, 6]], 6: [[4, 1], [5, 2], [6, 3]],
            7: [[6, 3], [5, 2], [4, 1]], 8: [[3, 6], [2, 5], [1, 4]], 9: [[1, 2, 3], [4, 5, 6]]}
    for tag, expected in want.items():
        assert orient(a, tag).tolist() == expected, tag
        if tag <= 8:
            img = Image.fromarray(a)
            exif = img.getexif()
            exif[0x0112] = tag
            img.info["exif"] = exif.tobytes()
            assert np.asarray(ImageOps.exif_transpose(img)).tolist() == expected, tag


def test_an_exif_orientation_outside_1_to_8_is_read_as_none(tmp_path):
    """exif_orientation: the tag's values are 1..8 (TIFF 6.0); any other (9, 0) is no orientation (1)."""
    from mattecli.imageio import exif_orientation

    for tag in (9, 0, 6):
        img = Image.fromarray(photo())
        exif = img.getexif()
        exif[0x0112] = tag
        img.save(tmp_path / f"o{tag}.jpg", exif=exif)
    assert [exif_orientation(tmp_path / f"o{tag}.jpg") for tag in (9, 0, 6)] == [1, 1, 6]


def test_a_float_tiff_of_0_to_255_values_is_named_not_read_as_white(tmp_path):
    """A 32-bit float TIFF is read as [0, 1]: a trimap of 0.0/128.0/255.0 became a binary mask
    ("nothing to matte") and a photo of 0..255 floats a white image, without a word."""
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(photo()).save(folder / "a.png")
    Image.fromarray(trimap_png(tmp_path / "t.png").astype(np.float32)).save(folder / "a_trimap.tif")
    Image.fromarray(photo()[..., 0].astype(np.float32)).save(folder / "b.tif")
    trimap_png(folder / "b_trimap.png")
    Image.fromarray(photo()[..., 0].astype(np.float32) / 255).save(folder / "c.tif")  # [0, 1]: read as before
    trimap_png(folder / "c_trimap.png")
    report, _ = run(folder, tmp_path)
    assert report.done == [str(folder / "c.tif")]
    assert sorted((p.split("/")[-1], r) for p, r in report.failed) == [
        ("a_trimap.tif", "float32 values from 0.0 to 255.0: floats are read as [0, 1] (divide 0..255 values by 255, "
                         "undo a normalisation)"),
        ("b.tif", "float32 values from 0.0 to 232.0: floats are read as [0, 1] (divide 0..255 values by 255, "
                  "undo a normalisation)")]


def test_an_image_mode_pillow_cannot_convert_is_named_in_one_line(tmp_path):
    """A grey TIFF with premultiplied alpha (Pillow's mode La) failed with Pillow's own "conversion
    from La to L not supported"; a trimap of that mode was read by its premultiplied grey."""
    from tests.infer_helpers import save_premultiplied_grey_tiff

    folder = tmp_path / "in"
    folder.mkdir()
    opaque = np.full((H, W), 255, np.uint8)
    save_premultiplied_grey_tiff(folder / "a.tif", photo()[..., 0], opaque)
    trimap_png(folder / "a_trimap.png")
    Image.fromarray(photo()).save(folder / "b.png")
    save_premultiplied_grey_tiff(folder / "b_trimap.tif", trimap_png(tmp_path / "t.png"), opaque)
    Image.fromarray(photo()).save(folder / "c.png")
    trimap_png(folder / "c_trimap.png")
    report, _ = run(folder, tmp_path)
    assert report.done == [str(folder / "c.png")]
    reason = "unsupported image mode La (Pillow cannot convert it to RGB); save it as RGB, RGBA, L or LA"
    assert sorted((p.split("/")[-1], r) for p, r in report.failed) == [("a.tif", reason), ("b_trimap.tif", reason)]


def test_images_beyond_pillows_pixel_guard_are_named_not_fatal(tmp_path, monkeypatch):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(photo()).save(folder / "huge.png")
    trimap_png(folder / "huge_trimap.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 600 pixels is then a "decompression bomb"
    report, _ = run(folder, tmp_path)
    assert len(report.failed) == 1 and "too many pixels" in report.failed[0][1]


def test_a_name_of_invalid_utf8_bytes_is_read_not_a_crash(tmp_path):
    """A file uploaded as b'bad\\xff.png' (Python's name for it holds a lone surrogate) killed the
    whole process with a segmentation fault inside OpenCV's imread; run in a child for that reason."""
    import os
    import subprocess
    import sys

    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(photo()).save(os.fsdecode(bytes(folder) + b"/bad\xff.png"))
    trimap_png(os.fsdecode(bytes(folder) + b"/bad\xff_trimap.png"))
    code = ("import sys, numpy as np; from mattecli.imageio import read_image, read_trimap; "
            "from tests.test_infer_inputs import photo; import os; d = os.fsencode(sys.argv[1]); "
            "assert np.array_equal(read_image(os.fsdecode(d + b'/bad\\xff.png')), photo()); "
            "print(read_trimap(os.fsdecode(d + b'/bad\\xff_trimap.png'))[0].shape)")
    done = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == f"({H}, {W})"


def test_control_characters_in_names_are_escaped_in_every_line(tmp_path, capsys):
    """Uploaded names printed as they were: ESC[2J cleared the user's terminal, ESC]0;...BEL retitled
    it, and a newline forged a line of matte's own in a log."""
    from mattecli.inference.batch import print_report

    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("clear\x1b[2J", "forged\nmatte: note: all good", "title\x1b]0;pwned\x07"):
        (folder / f"{name}.png").write_bytes(b"not a png")
        trimap_png(folder / f"{name}_trimap.png")
    Image.fromarray(photo()).save(folder / "lone\x9b.png")  # C1 CSI, no trimap: the reason names it too
    (folder / "spoof\u202egnp.exe.png").write_bytes(b"not a png")  # shown as 'spoofexe.png' with the override
    trimap_png(folder / "spoof\u202egnp.exe_trimap.png")
    report, _ = run(folder, tmp_path)
    print_report(report, tmp_path / "out")
    err = capsys.readouterr().err
    assert not any(c in err for c in "\x1b\x07\x9b\u202e") and "spoof\\u202egnp.exe.png: cannot" in err
    assert len(err.splitlines()) == 5 and all(line.startswith("matte: failed: ") for line in err.splitlines())
    assert "forged\\nmatte: note: all good.png: cannot decode" in err and "lone\\x9b_trimap.* in" in err


def test_a_link_to_a_named_pipe_or_a_device_is_named_not_waited_on(tmp_path):
    """An upload folder holding x.png -> a named pipe: the PNG fast path opened it to read the header
    and the whole batch waited forever. Run in a child, with a time limit, for that reason."""
    import os
    import subprocess
    import sys

    folder = tmp_path / "in"
    folder.mkdir()
    os.mkfifo(tmp_path / "pipe")
    (folder / "x.png").symlink_to(tmp_path / "pipe")
    (folder / "z.png").symlink_to("/dev/zero")
    os.mkfifo(folder / "p.png")  # a named pipe itself, not a link to one: left out without a word
    Image.fromarray(photo()).save(folder / "ok.png")
    for stem in ("x", "z", "ok", "p"):
        trimap_png(folder / f"{stem}_trimap.png")
    code = ("import sys; from pathlib import Path; from tests.test_infer_inputs import run; "
            "report, _ = run(Path(sys.argv[1]), Path(sys.argv[2])); print(report.done, report.failed)")
    done = subprocess.run([sys.executable, "-c", code, str(folder), str(tmp_path)], capture_output=True, text=True,
                          timeout=60)
    reason = "not a regular file (a device or a named pipe)"
    failed = [(str(folder / name), reason) for name in ("p.png", "x.png", "z.png")]
    assert done.stdout.strip() == f"{[str(folder / 'ok.png')]} {failed}"
    # given by name: it said "no such folder or file"
    with pytest.raises(UsageError, match=r"^--images .*p.png: not a regular file \(a device or a named pipe\)$"):
        infer_folder(FakePipeline(), folder / "p.png", tmp_path / "o", progress=False)


def test_a_file_that_cannot_be_opened_is_not_called_undecodable(tmp_path, monkeypatch):
    """It said "cannot decode image ([Errno 13] Permission denied:)" (as a user without read access)."""
    from mattecli import imageio, png

    Image.fromarray(photo()).save(tmp_path / "a.png")
    real = open

    def refuse(path, *args, **kwargs):
        if str(path).endswith("a.png"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    for module in (imageio, png):  # as for a user without read access: PNG's fast path cannot open it either
        monkeypatch.setattr(module, "open", refuse, raising=False)
    with pytest.raises(InputError) as err:
        imageio.read_image(tmp_path / "a.png")
    assert str(err.value) == f"{tmp_path / 'a.png'}: cannot read (Permission denied)"


def test_a_single_image_file_with_its_trimap_beside_it_in_a_folder_or_as_a_file(tmp_path):
    from tests.infer_helpers import make_pairs

    folder = make_pairs(tmp_path / "in", ["a", "b"])
    whole = infer_folder(FakePipeline(), folder, tmp_path / "all", progress=False)
    assert len(whole.done) == 2
    expected = read_gray(tmp_path / "all" / "a.png")
    (tmp_path / "tri").mkdir()
    (folder / "a_trimap.png").replace(tmp_path / "tri" / "a.png")
    for trimaps in (tmp_path / "tri", tmp_path / "tri" / "a.png"):  # a folder, or the file itself
        out = tmp_path / f"out-{trimaps.name}"
        report = infer_folder(FakePipeline(), folder / "a.png", out, trimaps, progress=False)
        assert report.done == [str(folder / "a.png")] and not report.failed
        assert np.array_equal(read_gray(out / "a.png"), expected)
        assert sorted(p.name for p in out.iterdir()) == ["a.png"]  # only the one image
    # beside it: b's trimap sits next to b
    report = infer_folder(FakePipeline(), folder / "b.png", tmp_path / "out-b", progress=False)
    assert report.done == [str(folder / "b.png")]


def test_a_single_file_is_refused_in_one_line_when_it_cannot_pair(tmp_path):
    from mattecli.errors import UsageError
    from tests.infer_helpers import make_pairs

    folder = make_pairs(tmp_path / "in", ["a"])
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UsageError, match="not an image file"):
        infer_folder(FakePipeline(), tmp_path / "notes.txt", tmp_path / "out", progress=False)
    with pytest.raises(UsageError, match="a single file pairs with a single --images file"):
        infer_folder(FakePipeline(), folder, tmp_path / "out", folder / "a_trimap.png", progress=False)
    with pytest.raises(UsageError, match="no such folder or file"):
        infer_folder(FakePipeline(), tmp_path / "missing.png", tmp_path / "out", progress=False)
    (tmp_path / "empty").mkdir()
    report = infer_folder(FakePipeline(), folder / "a.png", tmp_path / "out", tmp_path / "empty", progress=False)
    assert report.failed and "no trimap found" in report.failed[0][1]
    # a file named like a trimap, given as the image, is that image (it was left out, and listing
    # its "folder" for subfolders raised NotADirectoryError)
    report = infer_folder(FakePipeline(), folder / "a_trimap.png", tmp_path / "out2", progress=False)
    assert report.failed == [(str(folder / "a_trimap.png"),
                              f"no trimap found (a_trimap_trimap.* in {folder}; "
                              "--trimaps names a folder of trimaps named like the images)")]


def test_a_missing_trimap_or_mask_is_named_as_what_was_looked_for_and_where(tmp_path):
    """README's quick start puts photos in photos/ and trimaps in trimaps/; forgetting --trimaps said
    'no trimap found (lemur.* or lemur_trimap.* in photos)', though lemur.* there is the photo itself
    and only lemur_trimap.* was looked for. Beside the images only `{stem}_trimap.*` (`_mask.*`) is
    named, with the option that names a folder; in a folder of trimaps both names are tried."""
    from mattecli.data.trimap import MaskRule
    from mattecli.inference.batch import infer_folder
    from tests.infer_helpers import FakePipeline, make_pairs

    photos = make_pairs(tmp_path / "photos", ["a"])
    (photos / "a_trimap.png").unlink()
    (tmp_path / "trimaps").mkdir()
    report = infer_folder(FakePipeline(), photos, tmp_path / "out", progress=False)
    assert report.failed == [(str(photos / "a.png"), f"no trimap found (a_trimap.* in {photos}; "
                                                     "--trimaps names a folder of trimaps named like the images)")]
    report = infer_folder(FakePipeline(), photos, tmp_path / "out", tmp_path / "trimaps", progress=False)
    assert report.failed == [(str(photos / "a.png"), f"no trimap found (a.* or a_trimap.* in {tmp_path / 'trimaps'})")]
    report = infer_folder(FakePipeline(), photos, tmp_path / "out", masks=photos, mask_rule=MaskRule(), progress=False)
    assert report.failed == [(str(photos / "a.png"), f"no mask found (a_mask.* in {photos}; "
                                                     "--masks names a folder of masks named like the images)")]

@pytest.mark.parametrize("prefix", [b"", b"Exif\x00\x00"])
def test_exif_orientation_of_a_png_is_found_before_or_after_the_pixels_without_decoding(tmp_path, monkeypatch,
                                                                                        prefix):
    """Pillow decodes a whole PNG to look for eXIf after IDAT; matte walks the chunk headers instead.
    The chunk holds a TIFF header, or, as some writers (Pillow's Exif.tobytes) put it, JPEG's
    "Exif\\0\\0" and then the header, which Pillow reads from 11 on: Pillow 10 read no orientation."""
    import io
    import struct
    import zlib

    from PIL import Image, ImageFile

    from mattecli.imageio import exif_orientation

    img = Image.fromarray(np.zeros((6, 10), np.uint8))
    exif = img.getexif()
    exif[0x0112] = 6
    before = tmp_path / "before.png"
    plain = io.BytesIO()
    img.save(plain, format="PNG")
    payload = prefix + exif.tobytes().removeprefix(b"Exif\x00\x00")
    chunk = struct.pack(">I", len(payload)) + b"eXIf" + payload + struct.pack(">I", zlib.crc32(b"eXIf" + payload))
    data = plain.getvalue()
    before.write_bytes(data[:33] + chunk + data[33:])  # just after IHDR
    after = tmp_path / "after.png"
    after.write_bytes(data[:-12] + chunk + data[-12:])  # just before IEND
    (tmp_path / "none.png").write_bytes(data)
    if not prefix:
        assert Image.open(after).getexif().get(0x0112) == 6  # what Pillow reads, decoding the pixels

    def no_decoding(self):
        raise AssertionError("the pixels were decoded to read the EXIF orientation")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    assert [exif_orientation(tmp_path / n) for n in ("before.png", "after.png", "none.png")] == [6, 6, 1]


def _with_gamma_chunk(path):
    """Insert a gAMA chunk (gamma 1/2.2) after the IHDR: a decoder that applied it would change pixels."""
    import struct
    import zlib

    data = path.read_bytes()
    body = b"gAMA" + struct.pack(">I", 45455)
    chunk = struct.pack(">I", 4) + body + struct.pack(">I", zlib.crc32(body))
    path.write_bytes(data[:33] + chunk + data[33:])


@pytest.mark.parametrize("kind", ["L", "RGB", "RGBA", "LA", "RGB-tRNS", "L-tRNS", "RGB-gAMA", "RGB-exif6",
                                  "I;16", "P"])
@pytest.mark.parametrize("opencv", ["installed", "before 4.11"])
def test_pngs_decoded_by_opencv_equal_what_pillow_decodes(tmp_path, kind, opencv, monkeypatch):
    """read_image and read_trimap decode 8-bit gray/RGB/RGBA PNGs with OpenCV (faster); the pixels
    are Pillow's, EXIF orientation included. 16-bit and palette files keep the Pillow path.
    OpenCV before 4.11 has no IMREAD_COLOR_RGB: every image was an AttributeError there."""
    import cv2

    import mattecli.imageio as imageio

    if opencv == "before 4.11":
        monkeypatch.delattr(cv2, "IMREAD_COLOR_RGB", raising=False)

    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (23, 37, 4), dtype=np.uint8)
    mode = kind.split("-")[0]
    path, options = tmp_path / f"{kind}.png", {}
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65536, (23, 37), dtype=np.uint16))
    elif mode == "P":
        img = Image.fromarray(rgba[..., :3]).convert("P", palette=Image.ADAPTIVE, colors=50)
    else:
        img = Image.fromarray(rgba if mode == "RGBA" else rgba[..., :3] if mode == "RGB" else rgba[..., 0]).convert(mode)
    if kind.endswith("tRNS"):
        options["transparency"] = tuple(rgba[0, 0, :3].tolist()) if mode == "RGB" else int(rgba[0, 0, 0])
    if kind.endswith("exif6"):
        exif = img.getexif()
        exif[0x0112] = 6
        options["exif"] = exif
    img.save(path, **options)
    if kind.endswith("gAMA"):
        _with_gamma_chunk(path)
    decoded = []
    real = imageio._decode_png
    monkeypatch.setattr(imageio, "_decode_png", lambda *a: decoded.append(out := real(*a)) or out)
    for apply_exif in (False, True):
        want = imageio.rgb_of(imageio._open(path, apply_exif))
        got = read_image(path, apply_exif=apply_exif)
        assert got.dtype == np.uint8 and got.flags.c_contiguous
        np.testing.assert_array_equal(got, want)
    assert (decoded[0] is not None) == (mode in ("L", "RGB", "RGBA", "LA"))
    if mode == "L":
        from mattecli.imageio import read_trimap, trimap_of

        for apply_exif in (False, True):
            want, want_note = trimap_of(imageio._open(path, apply_exif), path)
            got, note = read_trimap(path, apply_exif=apply_exif)
            np.testing.assert_array_equal(got, want)
            assert note == want_note


def test_a_truncated_png_is_refused_as_before(tmp_path, capfd):
    """... and without OpenCV's libpng printing "libpng error: Read Error" (no file named) on
    stderr first: a PNG still being uploaded into a folder a cron job mattes."""
    from mattecli.errors import InputError
    from mattecli.imageio import read_trimap

    path = tmp_path / "cut.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 300, 3), np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:90_000])  # half of it
    gray = tmp_path / "cut_trimap.png"
    trimap_png(gray, 200, 300)
    gray.write_bytes(gray.read_bytes()[:60])
    capfd.readouterr()
    for read in (read_image, read_trimap):
        with pytest.raises(InputError, match="cannot decode"):
            read(path if read is read_image else gray)
    assert capfd.readouterr().err == ""


def test_a_png_whose_header_fails_its_checksum_is_refused_without_libpngs_line(tmp_path, capfd):
    """A PNG whose IHDR chunk is damaged (its CRC does not match): OpenCV's libpng printed "libpng error:
    IHDR: CRC error" on stderr, naming no file, before Pillow refused it, naming the file."""
    from mattecli.imageio import read_trimap

    photo, trimap = tmp_path / "a.png", tmp_path / "a_trimap.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(photo)
    trimap_png(trimap, 20, 30)
    for path in (photo, trimap):
        data = bytearray(path.read_bytes())
        data[29] ^= 0xFF  # the first byte of IHDR's CRC
        path.write_bytes(bytes(data))
    capfd.readouterr()
    for read, path in ((read_image, photo), (read_trimap, trimap)):
        with pytest.raises(InputError, match="cannot decode"):
            read(path)
    assert capfd.readouterr().err == ""


def test_names_differing_only_in_case_on_a_case_insensitive_file_system(tmp_path, monkeypatch):
    """On macOS or Windows `Cat.png` and `cat.png` are one output: both were matted and reported
    written, the second replacing the first. Simulated: case_insensitive says so, as it does there;
    on this file system (case-sensitive) both are written, as before."""
    import mattecli.inference.batch as batch
    from mattecli.files import case_insensitive
    from tests.infer_helpers import make_pairs

    folder = make_pairs(tmp_path / "in", ["Cat", "cat"])
    assert not case_insensitive(tmp_path)
    report, _ = run(folder, tmp_path)
    assert len(report.done) == 2 and not report.failed
    monkeypatch.setattr(batch, "case_insensitive", lambda folder: True)
    report = infer_folder(FakePipeline(), folder, tmp_path / "out2", progress=False)
    assert len(report.done) == 1 and report.failed == [
        (str(folder / "cat.png"), "another image has the same name stem (Cat.png), letter case aside: this file "
                                  "system does not tell it apart; outputs are named by stem")]
    # shards agree on it: the second shard, which holds cat.png alone, names it too
    report = infer_folder(FakePipeline(), folder, tmp_path / "out3", shard=(1, 2), progress=False)
    assert report.done == [] and [path for path, _ in report.failed] == [str(folder / "cat.png")]


@pytest.mark.parametrize("kind", ["RGB", "L"])
def test_a_png_with_a_colour_profile_libpng_dislikes_is_read_without_its_warning(tmp_path, capfd, kind):
    """Web PNGs often embed a colour profile libpng finds wrong: it printed "libpng warning: iCCP: ..."
    on stderr once per image, naming no file. Neither decoder applies the profile: same pixels."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (30, 41, 3) if kind == "RGB" else (30, 41), dtype=np.uint8)
    path = tmp_path / "web.png"
    Image.fromarray(pixels).save(path, icc_profile=b"junk" * 10)  # libpng: "iCCP: too short"
    assert b"iCCP" in path.read_bytes()
    got = read_image(path) if kind == "RGB" else read_gray(path)
    assert np.array_equal(got, pixels)
    assert "libpng" not in capfd.readouterr().err


def test_reading_a_multi_frame_file_leaves_no_file_open(tmp_path):
    """Pillow keeps a multi-frame file (a multi-page TIFF, an APNG) open after load(): every read
    left its handle to the garbage collector, a ResourceWarning at each call of a service."""
    import gc
    import warnings

    frames = [Image.fromarray(np.full((20, 30, 3), 40 * i, np.uint8)) for i in range(3)]
    for name in ("multi.tif", "anim.png"):
        frames[0].save(tmp_path / name, save_all=True, append_images=frames[1:])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        for name in ("multi.tif", "anim.png"):
            assert read_image(tmp_path / name).shape == (20, 30, 3)
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_a_single_image_in_a_folder_that_cannot_be_listed_asks_for_its_trimap(tmp_path, monkeypatch):
    """A folder that can be entered but not listed (mode 0311, as another user): "u/in: Permission
    denied", exit 1, without a word on why matte lists it (to find the trimap beside the image)."""
    from mattecli.inference import batch

    Image.fromarray(photo()).save(tmp_path / "a.png")

    def unlistable(folder, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(folder))

    monkeypatch.setattr(batch, "list_images", unlistable)
    with pytest.raises(UsageError) as err:
        infer_folder(FakePipeline(), tmp_path / "a.png", tmp_path / "o", progress=False)
    assert str(err.value) == (f"--images {tmp_path / 'a.png'}: its folder cannot be listed to find the trimap beside "
                              "it (Permission denied); give it with --trimaps FILE")
