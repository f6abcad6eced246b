"""The Python API (`mattecli.load`, `Matter.predict`, `Matter.foreground`, `trimap_from_mask`):
byte for byte what `matte infer` writes for the same files, and `import mattecli` stays light."""

import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

import mattecli
from mattecli.imageio import read_gray, read_image, write_png
from tests.test_cli import run_main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    import torch

    from mattecli.models import build_model
    from mattecli.recipes import load_recipe
    from mattecli.weights import save_weights

    torch.manual_seed(0)
    recipe = load_recipe("demo-a2u")
    return save_weights(build_model(recipe), recipe, tmp_path_factory.mktemp("w") / "w.safetensors")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """The lemur, cut to 221x143 (odd, not a multiple of the stride), with its hand-drawn trimap
    (RGBA, unknown = gray 102: mapped by the in-the-wild rule, with a note)."""
    folder = tmp_path_factory.mktemp("photos")
    image = Image.open(EXAMPLES / "lemur.png").crop((230, 100, 451, 243))
    trimap = Image.open(EXAMPLES / "lemur_trimap.png").crop((230, 100, 451, 243))
    image.save(folder / "lemur.png")
    trimap.save(folder / "lemur_trimap.png")
    return folder


def test_import_is_light_and_the_public_names_are_few():
    code = ("import sys, mattecli; heavy = {'torch', 'cv2', 'onnxruntime'} & set(sys.modules); "
            "assert not heavy, heavy; print(sorted(mattecli.__all__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['Matter', '__version__', 'load', 'trimap_from_mask']"
    with pytest.raises(AttributeError):
        mattecli.no_such_name  # noqa: B018
    assert {"load", "Matter", "trimap_from_mask"} <= set(dir(mattecli))  # lazy, but offered for completion


@pytest.mark.parametrize("max_memory", [None, "20MB"], ids=["whole", "tiled"])
def test_predict_equals_matte_infer_byte_for_byte(weights, photos, tmp_path, max_memory):
    out = tmp_path / "out"
    args = ["infer", "--weights", weights, "--images", photos, "--out", out, "--device", "cpu", "--save", "alpha,fg"]
    res = run_main(*args, *(["--max-memory", max_memory] if max_memory else []))
    assert res.returncode == 0, res.stderr
    assert ("tiles" in res.stderr) == (max_memory is not None)  # the tiled case really tiles

    matter = mattecli.load(weights, device="cpu", **({"max_memory": max_memory} if max_memory else {}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        alpha = matter.predict(Image.open(photos / "lemur.png"), Image.open(photos / "lemur_trimap.png"))
    assert any("mapped with <85 background" in str(w.message) for w in caught)  # the note infer prints
    assert alpha.dtype == np.uint8 and alpha.shape == (143, 221)
    assert np.array_equal(alpha, read_gray(out / "lemur.png"))
    assert 0 < ((alpha > 0) & (alpha < 255)).sum()  # a real matte, not only the copied known regions
    fg = matter.foreground(read_image(photos / "lemur.png"), alpha)
    assert np.array_equal(fg, read_image(out / "fg" / "lemur.png"))


def test_foregrounds_are_estimated_where_matte_infer_estimates_them(monkeypatch):
    """Beside an ONNX graph on CUDA, `matte infer --save fg` runs PyMatting (ONNX Runtime holds no
    torch device); Matter.foreground chose by the device string and ran the PyTorch port, whose
    estimate differs (red-black sweeps), so the API and infer gave other foregrounds."""
    import torch

    from mattecli.api import Matter
    from mattecli.inference import outputs

    seen = []
    monkeypatch.setattr(outputs, "estimate_foreground", lambda image, alpha, device: seen.append(device) or image)
    monkeypatch.setattr(outputs, "check_numba_threading_layer", lambda: seen.append("numba checked"))
    image, alpha = np.zeros((4, 5, 3), np.uint8), np.full((4, 5), 128, np.uint8)

    class Onnx:  # what OnnxBackend holds: no torch device
        pass

    class Torch:
        device = torch.device("cuda", 1)

    Matter(type("P", (), {"backend": Onnx()})(), "cuda").foreground(image, alpha)
    assert seen == ["numba checked", None]
    seen.clear()
    Matter(type("P", (), {"backend": Torch()})(), "cuda:1").foreground(image, alpha)
    assert seen == [torch.device("cuda", 1)]


def test_numpy_arrays_give_what_pillow_images_give(weights, photos):
    matter = mattecli.load(weights, device="cpu")
    image = Image.open(photos / "lemur.png")
    trimap = np.asarray(Image.open(photos / "lemur_trimap.png"))[..., 0]  # gray 102 unknown
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from_pil = matter.predict(image, Image.open(photos / "lemur_trimap.png"))
        from_rgba_array = matter.predict(np.asarray(image), trimap)
        from_float = matter.predict(np.asarray(image.convert("RGB"), np.float64) / 255, trimap)
    assert np.array_equal(from_pil, from_rgba_array) and np.array_equal(from_pil, from_float)



def test_arrays_of_other_dtypes_are_read_as_numpy_makes_them_or_refused(weights):
    """np.where(mask, 255, 0) is int64: read as the 8-bit values it holds, not as 16-bit (which
    made a 0/128/255 trimap "only the values [0, 1]" and an image near black). Floats far outside
    [0, 1] (0..255 floats, normalised ones) were clipped into a white image without a word."""
    matter = mattecli.load(weights, device="cpu")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    trimap = np.zeros((40, 50), np.uint8)
    trimap[10:30, 10:40], trimap[15:25, 15:35] = 128, 255
    expected = matter.predict(image, trimap)
    assert np.array_equal(matter.predict(image.astype(np.int64), np.where(trimap == 255, 255, np.where(trimap == 128, 128, 0))),
                          expected)
    assert np.array_equal(matter.predict(image.astype(np.int32), trimap.astype(np.int16)), expected)
    for bad, match in [(image.astype(np.float32), "float32 values from 0.0 to 25[0-9].0: floats are read as \\[0, 1\\]"),
                       (image / 127.5 - 1, "float64 values from -1.0 to 1.0: floats are read as \\[0, 1\\]"),
                       (np.full((40, 50, 3), np.nan), "float64 array holds NaN or infinite"),
                       (image.astype(np.int64) * 2, "int64 values from 0 to 5[0-9][0-9]: expected 0..255")]:
        with pytest.raises(ValueError, match="^image: " + match):
            matter.predict(bad, trimap)
    with pytest.raises(ValueError, match="^trimap: float64 values from 0.0 to 255.0"):
        matter.predict(image, trimap.astype(np.float64))
    slightly_over = np.clip(image / 255 * 1.1 - 0.05, -0.05, 1.05)  # a bicubic resize's overshoot: clipped
    matter.predict(slightly_over, trimap)
    # Image.fromarray of a float32 array is a Pillow image of mode F: checked as the array is
    with pytest.raises(ValueError, match="^trimap: float32 values from 0.0 to 255.0"):
        matter.predict(image, Image.fromarray(trimap.astype(np.float32)))
    assert np.array_equal(matter.predict(Image.fromarray(image[..., 0].astype(np.float32) / 255), trimap),
                          matter.predict(image[..., 0], trimap))
    # and of an int32 array mode I, which was read as 16-bit: the trimap "only 0 and 1", the image near black
    int_trimap = Image.fromarray(trimap.astype(np.int32))
    assert int_trimap.mode == "I" and np.array_equal(matter.predict(image, int_trimap), expected)
    assert np.array_equal(matter.predict(Image.fromarray(image[..., 0].astype(np.int32)), trimap),
                          matter.predict(image[..., 0], trimap))
    wide = Image.fromarray((image[..., 0].astype(np.int32) * 257))  # 16-bit values: scaled, as a file's are
    assert np.array_equal(matter.predict(wide, trimap), matter.predict(image[..., 0], trimap))


def test_paths_give_what_pillow_images_give(weights, photos, tmp_path):
    matter = mattecli.load(weights, device="cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from_paths = matter.predict(photos / "lemur.png", str(photos / "lemur_trimap.png"))
    assert any(str(photos / "lemur_trimap.png") in str(w.message) for w in caught)  # the note names the file
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from_pil = matter.predict(Image.open(photos / "lemur.png"), Image.open(photos / "lemur_trimap.png"))
    assert np.array_equal(from_paths, from_pil)
    assert np.array_equal(matter.foreground(photos / "lemur.png", from_paths),
                          matter.foreground(Image.open(photos / "lemur.png"), from_pil))
    missing, junk = tmp_path / "missing.png", tmp_path / "junk.png"
    junk.write_bytes(b"not a png")
    with pytest.raises(ValueError, match=f"^{missing}: no such file$"):
        matter.predict(missing, photos / "lemur_trimap.png")
    with pytest.raises(ValueError, match=f"^{tmp_path}: a folder, not an image file$"):  # was "no such file"
        matter.predict(photos / "lemur.png", tmp_path)
    with pytest.raises(ValueError, match=f"^{junk}: cannot decode image"):
        matter.predict(photos / "lemur.png", junk)
    with pytest.raises(ValueError, match=f"^{junk}: cannot decode image"):
        matter.foreground(junk, from_paths)

def test_a_trimap_whose_exif_tag_differs_is_fitted_as_matte_infer_fits_it(weights, photos, tmp_path):
    """A trimap drawn upright but saved with a stale orientation tag: matte infer uses the
    orientation that fits the image (with a note); predict turned it by its tag and raised
    "image is 221x143 but trimap is 143x221"."""
    matter = mattecli.load(weights, device="cpu")
    trimap = Image.open(photos / "lemur_trimap.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 CW
    trimap.save(tmp_path / "stale.png", exif=exif)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        expected = matter.predict(photos / "lemur.png", photos / "lemur_trimap.png")
        from_path = matter.predict(photos / "lemur.png", tmp_path / "stale.png")
        from_pil = matter.predict(Image.open(photos / "lemur.png"), Image.open(tmp_path / "stale.png"))
    assert np.array_equal(from_path, expected) and np.array_equal(from_pil, expected)
    assert any("only the image's EXIF orientation (none) fits its size, used" in str(w.message) for w in caught)
    # an array has no tag: it is taken as the image is shown, even when both orientations would fit
    Image.open(photos / "lemur.png").crop((0, 0, 143, 143)).save(tmp_path / "square.png", exif=exif)
    upright = np.asarray(Image.open(tmp_path / "stale.png"))[:143, :143, 0]
    shown = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "square.png")).convert("RGB"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert np.array_equal(matter.predict(tmp_path / "square.png", upright), matter.predict(shown, upright))


def test_a_trimap_with_nothing_to_matte_is_its_own_alpha_with_a_warning(weights):
    """A binary mask passed as the trimap (a bool array, say) came back as the alpha without a
    word, where matte infer says "a binary mask? pass masks with --masks"."""
    matter = mattecli.load(weights, device="cpu")
    trimap = np.zeros((40, 50), np.uint8)
    trimap[10:30, 10:40] = 255
    with pytest.warns(UserWarning, match=r"no unknown pixel \(a binary mask\? make a trimap of it with "
                                         r"mattecli.trimap_from_mask\); the trimap is returned as the alpha"):
        assert np.array_equal(matter.predict(np.zeros((40, 50, 3), np.uint8), trimap > 0), trimap)
    with pytest.warns(UserWarning, match=r"^nothing to matte: the trimap has no foreground; the trimap is returned"):
        assert not matter.predict(np.zeros((40, 50, 3), np.uint8), np.zeros((40, 50), np.uint8)).any()
    # work to do but no foreground pixel: matte infer warns "is it the right trimap?"; predict said nothing
    for held, trimap in (("only background and unknown", np.where(trimap > 0, 128, 0).astype(np.uint8)),
                         ("all unknown", np.full((40, 50), 128, np.uint8))):
        with pytest.warns(UserWarning, match=rf"^no foreground pixel \({held}\): is it the right trimap\?$"):
            matter.predict(np.zeros((40, 50, 3), np.uint8), trimap)


def test_load_takes_a_torch_device_and_refuses_other_types(weights):
    """`device=torch.device("cpu")` and `device=1` were AttributeErrors (`.strip`), and `device=0`
    quietly meant "auto"."""
    import torch

    assert mattecli.load(weights, device=torch.device("cpu")).device == "cpu"
    for bad in (0, 1, 1.0):
        with pytest.raises(ValueError, match=rf"^device {bad!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'"):
            mattecli.load(weights, device=bad)
    with pytest.raises(ValueError, match=r"the trt backend runs a TensorRT engine; build one with `matte export"):
        mattecli.load(weights, device="cpu", backend="trt")  # it said "TensorRT is not installed"


def test_a_failed_torch_compile_is_one_value_error(weights, monkeypatch):
    """compile=True without a C++ compiler: predict raised torch's InductorError of many lines after
    minutes; matte infer says it in one line."""
    from torch._dynamo.exc import TorchDynamoException

    from mattecli.inference.pipeline import Pipeline

    def run(self, image, trimap, prepared=None):
        raise TorchDynamoException("InvalidCxxCompiler: No working C++ compiler found\n\nSet TORCHDYNAMO_VERBOSE=1")

    matter = mattecli.load(weights, device="cpu")
    monkeypatch.setattr(Pipeline, "run", run)
    trimap = np.full((40, 50), 128, np.uint8)
    trimap[:, :10] = 255
    with pytest.raises(ValueError, match=r"^compile=True: torch.compile could not build the model "
                                         r"\(InvalidCxxCompiler: No working C\+\+ compiler found\); load without "
                                         r"compile=True$"):
        matter.predict(np.zeros((40, 50, 3), np.uint8), trimap)


def test_a_path_where_an_array_is_wanted_says_so(weights, tmp_path):
    matter = mattecli.load(weights, device="cpu")
    with pytest.raises(ValueError, match=r"^alpha a.png: a path; pass the \(H, W\) uint8 array `predict` returned"):
        matter.foreground(np.zeros((40, 50, 3), np.uint8), "a.png")  # it said "got <U5 ()"
    with pytest.raises(ValueError, match=r"^trimap_from_mask takes an array or a Pillow image, not a path \(m.png\)"):
        mattecli.trimap_from_mask("m.png")


def test_a_binary_mask_as_the_trimap_names_the_api_remedy_too(weights):
    matter = mattecli.load(weights, device="cpu")
    with pytest.raises(ValueError, match=r"a 0/1 binary mask\? matte infer --masks, or mattecli.trimap_from_mask, "
                                         r"makes a trimap of one"):
        matter.predict(np.zeros((40, 50, 3), np.uint8), np.eye(40, 50, dtype=np.uint8))


def test_bad_inputs_are_value_errors_with_the_reason(weights, tmp_path):
    matter = mattecli.load(weights, device="cpu")
    image = np.zeros((40, 50, 3), np.uint8)
    with pytest.raises(ValueError, match="image is 50x40 but trimap is 50x41"):
        matter.predict(image, np.full((41, 50), 128, np.uint8))
    colour = np.zeros((40, 50, 3), np.uint8)
    colour[:20, :, 0] = 255  # red and blue regions: a colour-coded trimap
    colour[20:, :, 2] = 255
    with pytest.raises(ValueError, match="colour-coded"):
        matter.predict(image, colour)
    with pytest.raises(ValueError, match="expected"):
        matter.predict(np.zeros((40, 50, 2), np.uint8), np.zeros((40, 50), np.uint8))
    for junk in (None, b"\x89PNG...", {"image": 1}):  # said "got shape ()"
        with pytest.raises(ValueError, match="^image: expected a Pillow image, a numpy array or a file path, got "):
            matter.predict(junk, np.zeros((40, 50), np.uint8))
    # named as the argument, not as the command line's --device
    with pytest.raises(ValueError, match="^device gpu: expected auto, cpu, cuda or cuda:N$"):
        mattecli.load(weights, device="gpu")
    with pytest.raises(ValueError, match="^backend 'tensorrt': unknown backend \\(choose torch, onnx, trt\\)$"):
        mattecli.load(weights, device="cpu", backend="tensorrt")
    with pytest.raises(ValueError, match="no such weights file"):
        mattecli.load(tmp_path / "missing.safetensors")
    run = tmp_path / "run"  # a training run's folder, not a file in it: was "no such weights file"
    run.mkdir()
    (run / "last.safetensors").write_bytes(Path(weights).read_bytes())
    with pytest.raises(ValueError, match=f"^{run}: a folder, not a weights file; name the file \\(last.safetensors in it\\)$"):
        mattecli.load(run)
    # refused at load as `matte infer` refuses them, not taken silently (half ran CPU autocast; a
    # ceiling of 0, -1 or 100 bytes failed every predict; 1.5e9 raised AttributeError)
    with pytest.raises(ValueError, match="^half needs a CUDA device"):
        mattecli.load(weights, device="cpu", half=True)
    for bad, match in [(0, "a ceiling of zero"), (-1, "a ceiling of zero"), (100, "^max_memory 100: a memory "
                       "ceiling of 100 bytes is too small"), ("", "an empty value"), (True, "bytes as an int"),
                       (float("nan"), "^max_memory nan: expected bytes"), (float("inf"), "^max_memory inf: expected bytes")]:
        with pytest.raises(ValueError, match=match):
            mattecli.load(weights, device="cpu", max_memory=bad)
    assert mattecli.load(weights, device="cpu", max_memory=1.5e9).pipeline.max_bytes == 1_500_000_000
    with pytest.raises(ValueError, match="uint8"):
        matter.foreground(image, np.zeros((40, 50), np.float32))


def test_a_cut_off_upload_opened_by_pillow_is_a_value_error(weights, tmp_path):
    """A web service's `Image.open(upload)` decodes lazily: a truncated upload raised Pillow's OSError
    from inside predict and foreground, not the ValueError they document for an unreadable image."""
    import io

    matter = mattecli.load(weights, device="cpu")
    path = tmp_path / "cut.png"
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:-30])
    trimap = np.full((40, 50), 128, np.uint8)
    with pytest.raises(ValueError, match=r"^image: cannot decode image \(image file is truncated"):
        matter.predict(Image.open(io.BytesIO(path.read_bytes())), trimap)
    with pytest.raises(ValueError, match=f"^{path}: cannot decode image"):
        matter.predict(Image.open(path), trimap)
    with pytest.raises(ValueError, match=r"^trimap: cannot decode image"):
        matter.predict(np.zeros((40, 50, 3), np.uint8), Image.open(io.BytesIO(path.read_bytes())))
    with pytest.raises(ValueError, match=r"^image: cannot decode image"):
        matter.foreground(Image.open(io.BytesIO(path.read_bytes())), np.zeros((40, 50), np.uint8))


def test_an_image_mode_pillow_cannot_convert_is_one_value_error(weights, tmp_path):
    """A Pillow image of mode La (grey, premultiplied alpha) raised Pillow's "conversion from La to L
    not supported"; as a trimap it was read by its premultiplied grey."""
    from tests.infer_helpers import save_premultiplied_grey_tiff

    matter = mattecli.load(weights, device="cpu")
    grey, trimap = np.full((40, 50), 90, np.uint8), np.full((40, 50), 128, np.uint8)
    la = Image.merge("LA", [Image.fromarray(grey)] * 2).convert("La")
    reason = "unsupported image mode La (Pillow cannot convert it to RGB); save it as RGB, RGBA, L or LA"
    with pytest.raises(ValueError, match=f"^image: {re.escape(reason)}$"):
        matter.predict(la, trimap)
    with pytest.raises(ValueError, match=f"^trimap: {re.escape(reason)}$"):
        matter.predict(grey, Image.merge("LA", [Image.fromarray(trimap)] * 2).convert("La"))
    with pytest.raises(ValueError, match=f"^image: {re.escape(reason)}$"):
        matter.foreground(la, trimap)
    path = save_premultiplied_grey_tiff(tmp_path / "la.tif", grey, np.full((40, 50), 255, np.uint8))
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))}: {re.escape(reason)}$"):
        matter.predict(path, trimap)


def test_an_exported_graph_loads_the_same_way(weights, photos, tmp_path):
    res = run_main("export", "--weights", weights, "--format", "onnx", "--out", tmp_path / "m.onnx")
    assert res.returncode == 0, res.stderr
    matter = mattecli.load(tmp_path / "m.onnx", device="cpu")
    assert repr(matter) == "Matter(recipe='demo-a2u', device='cpu')"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_alpha = matter.predict(Image.open(photos / "lemur.png"), Image.open(photos / "lemur_trimap.png"))
        torch_alpha = mattecli.load(weights, device="cpu").predict(Image.open(photos / "lemur.png"),
                                                                   Image.open(photos / "lemur_trimap.png"))
    assert np.abs(onnx_alpha.astype(int) - torch_alpha.astype(int)).max() <= 1


def test_trimap_from_mask_is_the_command_line_one():
    from mattecli.data.trimap import trimap_from_mask

    mask = np.zeros((120, 160), np.uint8)
    mask[30:90, 40:120] = 255
    ours = mattecli.trimap_from_mask(mask, band="5")
    assert mattecli.trimap_from_mask is trimap_from_mask
    assert set(np.unique(ours)) == {0, 128, 255} and (ours[55:65, 75:85] == 255).all()


@pytest.mark.filterwarnings("ignore:no foreground pixel")  # all-unknown trimaps, on purpose
def test_write_png_round_trips_what_predict_returns(weights, tmp_path):
    alpha = mattecli.load(weights, device="cpu").predict(np.full((33, 47, 3), 90, np.uint8),
                                                         np.full((33, 47), 128, np.uint8))
    assert np.array_equal(read_gray(write_png(tmp_path / "a.png", alpha)), alpha)


def test_a_loaded_model_sent_to_another_process_says_to_load_it_there(weights):
    """`Pool.map(matter.predict, ...)` under spawn (macOS, Windows) pickles the model: it failed
    with "cannot pickle '_thread._local' object"."""
    import pickle

    matter = mattecli.load(weights, device="cpu")
    with pytest.raises(TypeError, match=r"^a loaded model cannot be sent to another process: call mattecli.load "
                                        r"in each worker process"):
        pickle.dumps(matter.predict)


@pytest.mark.filterwarnings("ignore:no foreground pixel")  # all-unknown trimaps, on purpose
def test_one_loaded_model_serves_many_threads(weights):
    """A web service calls one Matter from request threads: results are the sequential ones, and the
    backend (a TensorRT context, its scratch memory) is never entered twice at once."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    matter = mattecli.load(weights, device="cpu", max_memory=None)
    backend, inside, overlaps = matter.pipeline.backend, [0], []
    real_call = backend.__call__

    def call(x):  # a backend that is slow enough for calls to overlap, and counts when they do
        inside[0] += 1
        overlaps.append(inside[0] > 1)
        time.sleep(0.02)
        try:
            return real_call(x)
        finally:
            inside[0] -= 1

    matter.pipeline.backend = type("Slow", (), {"__call__": staticmethod(call), "device": backend.device})()
    rng = np.random.default_rng(0)
    cases = [(rng.integers(0, 256, (h, 40, 3), np.uint8), np.full((h, 40), 128, np.uint8)) for h in (32, 48, 64)]
    sequential = [matter.predict(*case) for case in cases]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(lambda case: matter.predict(*case), cases * 4))
    assert all(np.array_equal(a, b) for a, b in zip(sequential * 4, threaded))
    assert not any(overlaps), f"{sum(overlaps)} model calls overlapped another"


@pytest.mark.parametrize("layer, reason", [("tbb", "Intel TBB is required"), ("bogus", "unknown to Numba")])
def test_a_threading_layer_numba_cannot_start_is_a_value_error_naming_it(weights, layer, reason):
    """NUMBA_THREADING_LAYER=tbb without the tbb package (or a misspelt layer): `foreground` raised
    numba's multi-line "HINT: ... pip install tbb" from inside PyMatting; `matte infer` says it in one line."""
    import os

    code = ("import numpy as np, mattecli\n"
            f"matter = mattecli.load({str(weights)!r}, device='cpu')\n"
            "try:\n"
            "    matter.foreground(np.zeros((20, 30, 3), np.uint8), np.full((20, 30), 128, np.uint8))\n"
            "except ValueError as err:\n"
            "    print(err)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "NUMBA_THREADING_LAYER": layer})
    assert res.returncode == 0 and res.stdout.count("\n") == 1, res.stdout + res.stderr
    assert res.stdout.startswith(f"NUMBA_THREADING_LAYER={layer}: numba cannot start it") and reason in res.stdout


def test_a_pillow_images_exif_orientation_outside_1_to_8_is_taken_as_upright():
    """A damaged tag (0, 9) means no turn, as `matte infer` reads such files; an array has none."""
    from mattecli.api import _orientation

    for value, expected in [(6, 6), (8, 8), (0, 1), (9, 1)]:
        image = Image.new("L", (4, 3))
        image.getexif()[0x0112] = value
        assert _orientation(image) == expected, value
    assert _orientation(Image.new("L", (4, 3))) == 1
    assert _orientation(np.zeros((3, 4), np.uint8)) is None


def test_a_16bit_colour_array_is_scaled_to_8_bits_as_a_16bit_grey_one():
    """docs/python-api.md: uint16 images are scaled to 8 bits, RGB as well as grey (65535 -> 255)."""
    from mattecli.api import _as_pil

    rgb = np.zeros((3, 4, 3), np.uint16)
    rgb[0], rgb[1] = 65535, 257 * 100
    pil = _as_pil(rgb, "image")
    assert pil.mode == "RGB" and np.array_equal(np.asarray(pil)[:, 0, 0], [255, 100, 0])
    grey = _as_pil(rgb[..., 0].copy(), "trimap")  # grey stays 16-bit here (Pillow's I;16), scaled when read
    assert np.asarray(grey).dtype == np.uint16


def test_a_pathlib_path_where_an_array_is_wanted_says_so_too(weights, tmp_path):
    matter = mattecli.load(weights, device="cpu")
    with pytest.raises(ValueError, match=r"^alpha .*a.png: a path; pass the \(H, W\) uint8 array `predict` returned"):
        matter.foreground(np.zeros((40, 50, 3), np.uint8), tmp_path / "a.png")
