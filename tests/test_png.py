"""The PNG writer of every file matte makes (`mattecli/png.py`); the chunk readers are tested with
the image readers that use them (tests/test_infer_inputs.py)."""

import zlib

import numpy as np
import pytest

from mattecli.imageio import read_png_text, write_png


@pytest.mark.parametrize("shape", [(37, 53), (37, 53, 1), (37, 53, 3), (37, 53, 4), (1, 1), (200, 3, 3)])
def test_the_writer_round_trips_through_pillow_and_libpng_with_its_chunks(shape, tmp_path, monkeypatch):
    """matte writes PNGs itself (Up filter, zlib level 1: 2.7x Pillow's speed for RGB at 4K): the
    pixels come back from Pillow and from OpenCV's libpng across strips of a few rows, every row
    carries filter type 2, and the ICC profile and text chunks read back (iTXt for UTF-8)."""
    import cv2
    from PIL import Image, ImageCms

    import mattecli.png

    monkeypatch.setattr(mattecli.png, "STRIP_BYTES", 100)  # a few rows a strip
    pixels = np.random.default_rng(list(shape)).integers(0, 256, shape, dtype=np.uint8)
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    text = {"matte:background": "#00ff00", "note": "日本 é"}
    path = write_png(tmp_path / "x.png", pixels, text=text, icc=icc)
    want = pixels[..., 0] if shape[2:] == (1,) else pixels
    with Image.open(path) as image:
        assert image.mode == ({2: "L"}.get(want.ndim) or {3: "RGB", 4: "RGBA"}[want.shape[2]])
        assert np.array_equal(np.asarray(image), want) and image.info["icc_profile"] == icc
    libpng = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if want.ndim == 3:
        libpng = cv2.cvtColor(libpng, cv2.COLOR_BGR2RGB if want.shape[2] == 3 else cv2.COLOR_BGRA2RGBA)
    assert np.array_equal(libpng, want)
    assert read_png_text(path) == text
    data, chunks, offset = path.read_bytes(), [], 8
    while offset < len(data):
        length = int.from_bytes(data[offset:offset + 4], "big")
        chunks.append((data[offset + 4:offset + 8], data[offset + 8:offset + 8 + length]))
        offset += 12 + length
    kinds = [kind for kind, _ in chunks]
    assert kinds[:4] == [b"IHDR", b"iCCP", b"tEXt", b"iTXt"] and kinds[-1] == b"IEND"
    raw = np.frombuffer(zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT")), np.uint8)
    assert set(raw.reshape(shape[0], -1)[:, 0]) == {2}


@pytest.mark.parametrize("array", [np.zeros((4, 5), np.float32), np.zeros((4, 5, 2), np.uint8), np.zeros((0, 5), np.uint8),
                                   np.zeros((4, 5, 3, 1), np.uint8)], ids=["float", "two channels", "empty", "4-D"])
def test_the_writer_refuses_what_is_not_an_8_bit_image_and_writes_nothing(array, tmp_path):
    with pytest.raises(TypeError, match="^write_png expects"):
        write_png(tmp_path / "x.png", array)
    assert list(tmp_path.iterdir()) == []


def test_a_chunk_is_found_whole_with_its_header_and_crc(tmp_path):
    """find_chunk: (offset, 4-byte length + 4-byte type + data + 4-byte CRC); chunk_data: the data
    alone. A PNG's IHDR chunk (8 + 13 + 4 bytes) follows its 8-byte signature: iCCP starts at 33."""
    from mattecli.png import chunk_data, find_chunk

    icc = b"not a real profile, bytes only"
    body = b"ICC Profile\0\0" + zlib.compress(icc)
    path = write_png(tmp_path / "x.png", np.zeros((2, 3), np.uint8), icc=icc)
    start, size = find_chunk(path, b"iCCP")
    data = path.read_bytes()
    assert (start, size) == (33, 12 + len(body)) and data[start + size + 4:start + size + 8] == b"IDAT"
    assert chunk_data(path, b"iCCP") == body
    assert find_chunk(path, b"eXIf") is None and chunk_data(path, b"eXIf") is None
