"""Shared pieces of the tests/test_infer_*.py files: a fake pipeline and small folders."""

from __future__ import annotations

import numpy as np

from mattecli.imageio import write_png


class FakePipeline:
    """Stands in for the model: alpha = a horizontal ramp in the unknown region, known regions
    copied. Counts calls; can raise an exception on the n-th call (to simulate a crash)."""

    def __init__(self, fail_on_call: int | None = None, exc: type[BaseException] = KeyboardInterrupt):
        self.calls = 0
        self.shapes = []
        self.fail_on_call, self.exc = fail_on_call, exc

    def run(self, image, trimap):
        self.calls += 1
        if self.fail_on_call is not None and self.calls == self.fail_on_call:
            raise self.exc()
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        self.shapes.append(image.shape[:2])
        ramp = np.linspace(20, 230, trimap.shape[1]).astype(np.uint8)[None, :].repeat(trimap.shape[0], 0)
        return np.where(trimap == 128, ramp, trimap).astype(np.uint8), "whole"


def make_pairs(folder, names, size=(24, 32), seed=0):
    """Write `{name}.png` images and `{name}_trimap.png` trimaps (0/128/255) into `folder`."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    h, w = size
    for name in names:
        write_png(folder / f"{name}.png", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        trimap = np.zeros((h, w), np.uint8)
        trimap[:, w // 3:] = 128
        trimap[:, 2 * w // 3:] = 255
        write_png(folder / f"{name}_trimap.png", trimap)
    return folder


def save_premultiplied_grey_tiff(path, grey: np.ndarray, alpha: np.ndarray):
    """A grey TIFF with associated (premultiplied) alpha, which Pillow opens as mode "La" and
    cannot convert. Pillow cannot write one: an LA TIFF has its ExtraSamples tag set to 1."""
    import struct

    from PIL import Image

    Image.merge("LA", [Image.fromarray(grey), Image.fromarray(alpha)]).save(path)
    data = bytearray(path.read_bytes())
    ifd = struct.unpack("<I", data[4:8])[0]  # Pillow writes little-endian ("II")
    for entry in range(ifd + 2, ifd + 2 + 12 * struct.unpack("<H", data[ifd:ifd + 2])[0], 12):
        if struct.unpack("<H", data[entry:entry + 2])[0] == 338:  # ExtraSamples: 2 unassociated, 1 associated
            data[entry + 8:entry + 10] = struct.pack("<H", 1)
    path.write_bytes(bytes(data))
    assert Image.open(path).mode == "La"
    return path
