"""Foreground estimation, straight RGBA, composites onto a colour or an image, and the CLI."""

import inspect
import os
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from mattecli.errors import InputError, UsageError
from mattecli.imageio import read_gray, read_image, write_png
from mattecli.inference.outputs import (Background, composite, estimate_foreground, output_paths, parse_color,
                                        to_rgba, write_outputs)


def soft_case(h=40, w=48):
    fg = np.zeros((h, w, 3), np.uint8)
    fg[:] = (200, 60, 30)
    yy = np.linspace(0, 1, h)[:, None, None]
    bg = (yy * (20, 220, 240) + (1 - yy) * (40, 120, 250)).repeat(w, 1).astype(np.float32)  # smooth, unlike fg
    alpha = np.clip(np.linspace(-0.5, 1.5, w), 0, 1)[None, :].repeat(h, 0).astype(np.float32)
    image = (alpha[..., None] * fg + (1 - alpha[..., None]) * bg + 0.5).astype(np.uint8)
    return image, (alpha * 255 + 0.5).astype(np.uint8), fg


def test_foreground_estimation_recovers_colours_under_soft_alpha():
    image, alpha, fg = soft_case()
    est = estimate_foreground(image, alpha)
    soft = (alpha > 25) & (alpha < 230)
    err_est = np.abs(est.astype(int) - fg)[soft].mean()
    err_copy = np.abs(image.astype(int) - fg)[soft].mean()
    assert est.shape == image.shape and est.dtype == np.uint8
    assert err_est < err_copy / 3, (err_est, err_copy)


def test_foreground_is_the_image_when_alpha_is_hard():
    image, _, _ = soft_case()
    alpha = np.where(np.arange(48)[None, :].repeat(40, 0) > 20, 255, 0).astype(np.uint8)
    assert np.array_equal(estimate_foreground(image, alpha), image)


def test_foreground_is_the_image_where_alpha_is_opaque():
    """image = F where alpha is 255, so a composite keeps the subject's own pixels; the estimate's
    smoothing changed them (by up to 33 levels on the lemur photo)."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    alpha = np.zeros((40, 48), np.uint8)
    alpha[:, 16:32] = np.linspace(1, 254, 16).astype(np.uint8)
    alpha[:, 32:] = 255
    fg = estimate_foreground(image, alpha)
    assert np.array_equal(fg[alpha == 255], image[alpha == 255])
    assert np.array_equal(composite(fg, alpha, np.zeros(3, np.uint8))[:, 32:], image[:, 32:])


def test_foreground_from_several_threads_survives_numbas_workqueue_layer():
    """`infer --workers N --save fg` estimates foregrounds on N threads. Where numba has neither TBB
    nor OpenMP it uses its workqueue layer, which aborted the whole process on the second thread."""
    code = """if True:
        import threading, numpy as np, numba
        from mattecli.inference.outputs import estimate_foreground
        image, alpha = np.full((60, 80, 3), 90, np.uint8), np.tile(np.arange(80, dtype=np.uint8) * 3, (60, 1))
        def run():
            numba.set_num_threads(1)  # as infer's writer threads do
            for _ in range(4):
                estimate_foreground(image, alpha)
        threads = [threading.Thread(target=run) for _ in range(3)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        print(numba.threading_layer())
    """
    env = {**os.environ, "NUMBA_THREADING_LAYER": "workqueue"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert (done.returncode, done.stdout.strip()) == (0, "workqueue"), done.stderr[-500:]


def test_at_most_two_gpu_foregrounds_run_at_once(monkeypatch):
    """Each GPU foreground holds ~480 B/px of GPU memory outside --max-memory's budget; infer's
    writer threads (one per core on CUDA) must not all start one."""
    import threading
    import time

    from mattecli.inference import foreground

    running, most, lock = [0], [0], threading.Lock()

    def estimate(image, alpha, device):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return image.copy()

    monkeypatch.setattr(foreground, "estimate_foreground_torch", estimate)
    image, alpha = np.zeros((4, 4, 3), np.uint8), np.full((4, 4), 128, np.uint8)
    threads = [threading.Thread(target=estimate_foreground, args=(image, alpha, "cuda")) for _ in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert most[0] == 2


def test_a_slow_pymatting_import_is_announced_and_a_cached_one_is_not(monkeypatch):
    """PyMatting's numba kernels compile when it is imported (about 40 s on 2 cores, the first time
    per installation): `matte infer --save fg` on a CPU sat on its first image without a word."""
    import importlib
    import importlib.abc
    import importlib.util
    import time

    from mattecli.inference.outputs import import_pymatting

    class Slow(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, name, path=None, target=None):
            return importlib.util.spec_from_loader(name, self) if name == "pymatting" else None

        def create_module(self, spec):
            return None

        def exec_module(self, module):
            time.sleep(0.5)  # compiling

    importlib.import_module("pymatting")  # the real one, which monkeypatch puts back after the test

    notes = []
    monkeypatch.delitem(sys.modules, "pymatting")
    monkeypatch.setattr(sys, "meta_path", [Slow(), *sys.meta_path])
    import_pymatting(notes.append, after=0.05)
    assert "pymatting" in sys.modules
    assert notes == ["PyMatting is compiling its foreground kernels (once per installation: about a minute; "
                     "Ctrl-C takes effect when it ends)"]
    import_pymatting(notes.append, after=0)  # imported: nothing to wait for, nothing said
    time.sleep(0.1)
    assert len(notes) == 1


def test_rgba_is_straight_not_premultiplied():
    fg = np.full((2, 2, 3), 200, np.uint8)
    alpha = np.array([[0, 64], [128, 255]], np.uint8)
    rgba = to_rgba(fg, alpha)
    assert rgba.shape == (2, 2, 4) and (rgba[..., :3] == 200).all() and np.array_equal(rgba[..., 3], alpha)


def test_composite_onto_a_colour():
    fg = np.full((1, 3, 3), 200, np.uint8)
    alpha = np.array([[0, 128, 255]], np.uint8)
    out = composite(fg, alpha, Background.parse("#00ff00").fit(1, 3))
    assert out.tolist() == [[[0, 255, 0], [100, 227, 100], [200, 200, 200]]]


@pytest.mark.parametrize("text, rgb", [("#00ff00", (0, 255, 0)), ("#0F0", (0, 255, 0)), ("10,20,30", (10, 20, 30)),
                                       ("green", (0, 128, 0)), ("Lime", (0, 255, 0)), (" rebeccapurple", (102, 51, 153)),
                                       ("greenish", None), ("#12345", None), ("1,2,300", None),
                                       ("1\u00b2,2,3", None), ("\u0662,2,3", None)])  # '²' was int()'s traceback
def test_colours(text, rgb):
    assert parse_color(text) == rgb


def test_background_image_covers_and_is_centre_cropped(tmp_path):
    bg = np.zeros((50, 100, 3), np.uint8)
    bg[:, :, 0] = np.arange(100)[None, :]  # a horizontal ramp shows the crop
    write_png(tmp_path / "bg.png", bg)
    fitted = Background.parse(str(tmp_path / "bg.png")).fit(40, 40)  # scale 0.8 -> 80x40, crop x 20..60
    assert fitted.shape == (40, 40, 3)
    assert abs(int(fitted[20, 0, 0]) - 25) <= 2 and abs(int(fitted[20, 39, 0]) - 74) <= 2
    enlarged = Background.parse(str(tmp_path / "bg.png")).fit(200, 100)  # scale 4 -> 400x200, crop x 150..250
    assert enlarged.shape == (200, 100, 3) and abs(int(enlarged[100, 50, 0]) - 50) <= 2
    with pytest.raises(ValueError, match="neither a colour"):
        Background.parse(str(tmp_path / "missing.png"))
    # a path that is there but no file: the reader's reason, not "neither a colour nor an image file"
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    (tmp_path / "folder.png").mkdir()
    for name, reason in (("loop.png", "a symbolic link that leads to no file"), ("folder.png", "a folder, not")):
        with pytest.raises(InputError, match=reason):
            Background.parse(str(tmp_path / name))


def test_output_layout():
    from pathlib import Path

    paths = output_paths(Path("o"), "a b", ("alpha", "fg", "rgba", "composite"))
    assert {k: str(v) for k, v in paths.items()} == {"alpha": "o/a b.png", "fg": "o/fg/a b.png",
                                                      "rgba": "o/rgba/a b.png", "composite": "o/composite/a b.png"}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from mattecli.models import build_model
    from mattecli.recipes import load_recipe
    from mattecli.weights import save_weights

    recipe = load_recipe("indexnet-unet-maxunpool")
    return save_weights(build_model(recipe), recipe, tmp_path_factory.mktemp("w") / "w.safetensors")


def test_cli_writes_every_output_with_an_image_background(tmp_path, weights):
    from tests.infer_helpers import make_pairs

    images = make_pairs(tmp_path / "in", ["a photo", "ß"], size=(40, 56))
    write_png(tmp_path / "bg.png", np.full((10, 10, 3), (0, 0, 255), np.uint8))
    cmd = [sys.executable, "-m", "mattecli", "infer", "--weights", weights, "--images", images, "--out",
           tmp_path / "out", "--save", "alpha,fg,rgba,composite", "--background", tmp_path / "bg.png"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    # stdout is the summary line alone, for scripts (`| tail -1`, `| head -1`); the bar is on stderr
    assert res.stdout.startswith("2 written") and res.stdout.count("\n") == 1, res.stdout
    assert "infer" in res.stderr
    alpha = read_gray(tmp_path / "out" / "ß.png")
    rgba = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(tmp_path / "out" / "rgba" / "ß.png"))
    comp = read_image(tmp_path / "out" / "composite" / "ß.png")
    assert rgba.shape == (40, 56, 4) and np.array_equal(rgba[..., 3], alpha)
    assert (comp[alpha == 0] == (0, 0, 255)).all()  # the blue background where alpha is 0
    assert read_image(tmp_path / "out" / "fg" / "ß.png").shape == (40, 56, 3)
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert "0 written" in res.stdout and "2 skipped" in res.stdout


def test_save_given_twice_writes_both(tmp_path, weights):
    """`--save alpha --save trimap` wrote the trimaps alone, without a word: click keeps the last
    value of an option given twice. Both are written, as with `--save alpha,trimap`."""
    from tests.infer_helpers import make_pairs

    images = make_pairs(tmp_path / "in", ["a"])
    res = subprocess.run([sys.executable, "-m", "mattecli", "infer", "--weights", weights, "--images", images,
                          "--out", tmp_path / "out", "--save", "alpha", "--save", "trimap"], capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stderr
    assert sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*.png")) == \
        ["a.png", "trimap/a.png"]
    assert np.array_equal(read_gray(tmp_path / "out" / "trimap" / "a.png"), read_gray(images / "a_trimap.png"))


@pytest.mark.parametrize("args, message", [
    (["--save", "composite"], "needs --background"),
    (["--background", "#fff"], "only used by --save composite"),
    (["--save", "alpha,mask"], "choose from"),
    (["--save", "alpha", "--save", "mask"], "--save alpha,mask: choose from"),
    (["--save", "composite", "--background", "nocolour"], "neither a colour"),
    (["--max-memory", "lots"], "--max-memory"),
    (["--max-memory", "1MB"], "error: --max-memory 1MB: a memory ceiling of 1 MiB is too small for this model"),
])
def test_contradictory_options_exit_2(tmp_path, weights, args, message):
    (tmp_path / "in").mkdir()
    res = subprocess.run([sys.executable, "-m", "mattecli", "infer", "--weights", weights, "--images",
                          tmp_path / "in", "--out", tmp_path / "out", *args], capture_output=True, text=True)
    assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr, res.stderr


def test_a_file_where_an_output_folder_goes_is_a_usage_error(tmp_path, weights):
    """OUT/fg a file: every image failed with "writing outputs: FileExistsError" after its model pass."""
    from tests.infer_helpers import make_pairs

    images = make_pairs(tmp_path / "in", ["a"])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "fg").write_text("x")
    res = subprocess.run([sys.executable, "-m", "mattecli", "infer", "--weights", weights, "--images", images,
                          "--out", tmp_path / "out", "--save", "alpha,fg"], capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr == (f"matte: error: --out {tmp_path / 'out'}: {tmp_path / 'out' / 'fg'} "
                                                  "is a file, where --save fg writes its folder\n")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["fg"]


@pytest.mark.parametrize("layer, reason", [("tbb", "Intel TBB is required"), ("bogus", "unknown to Numba")])
def test_a_threading_layer_numba_cannot_start_is_a_usage_error(tmp_path, weights, layer, reason):
    """NUMBA_THREADING_LAYER=tbb without the tbb package (or a misspelt layer): every image failed
    after its model pass, each with numba's four-line "HINT: ... pip install tbb" as its reason."""
    from tests.infer_helpers import make_pairs

    images = make_pairs(tmp_path / "in", ["a", "b"])
    env = {**os.environ, "NUMBA_THREADING_LAYER": layer}
    cmd = [sys.executable, "-m", "mattecli", "infer", "--weights", weights, "--images", images,
           "--out", tmp_path / "out", "--save", "alpha,fg"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert res.stderr.startswith(f"matte: error: NUMBA_THREADING_LAYER={layer}: ") and reason in res.stderr
    assert not (tmp_path / "out" / "a.png").exists()  # refused before the model ran
    res = subprocess.run(cmd[:-2], capture_output=True, text=True, env=env)  # alphas alone need no numba
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("holds, checked", [(None, True), ("cuda", False), ("cpu", True)])
def test_the_numba_check_runs_where_pymatting_will_estimate_the_foregrounds(tmp_path, monkeypatch, holds, checked):
    """On CUDA the torch backend's foregrounds run on the GPU (no numba); an ONNX Runtime model on
    CUDA holds no torch device, so PyMatting estimates them on the CPU: its threading layer was not
    checked, and a layer numba cannot start failed every image after its model pass. infer asks the
    loaded backend, as `Matter.foreground` and the batch do (it once decided by the file's suffix)."""
    import torch

    import mattecli.devices
    import mattecli.inference.outputs as outputs
    import mattecli.inference.pipeline as pipeline
    from mattecli.cli import app
    from mattecli.inference.backends import OnnxBackend

    def refused():
        raise UsageError("numba checked")

    backend = type("B", (), {} if holds is None else {"device": torch.device(holds)})()
    monkeypatch.setattr(mattecli.devices, "resolve_device", lambda device, backend=None: "cuda")
    monkeypatch.setattr(pipeline, "load_pipeline", lambda *a, **k: type("P", (), {"backend": backend})())
    monkeypatch.setattr(outputs, "check_numba_threading_layer", refused)
    (tmp_path / "in").mkdir()
    res = CliRunner().invoke(app, ["infer", "--weights", str(tmp_path / "m.onnx"), "--images", str(tmp_path / "in"),
                                   "--out", str(tmp_path / "out"), "--save", "alpha,fg", "--max-memory", "none"])
    assert (str(res.exception) == "numba checked") == checked, res.exception
    assert "self.device" not in inspect.getsource(OnnxBackend)  # the rule's premise: ONNX Runtime holds none


@pytest.mark.parametrize("save, checked", [("fg", True), ("rgba", True), ("composite", True),
                                           ("alpha,trimap", False)])
def test_the_numba_check_runs_for_each_output_pymatting_makes(tmp_path, monkeypatch, save, checked):
    """docs/commands/infer.md: `--save fg` (rgba, composite) with a NUMBA_THREADING_LAYER numba cannot
    start is a usage error before any image; an alpha or a trimap needs no foreground, nor numba."""
    import mattecli.inference.outputs as outputs
    import mattecli.inference.pipeline as pipeline
    from mattecli.cli import app

    def refused():
        raise UsageError("numba checked")

    monkeypatch.setattr(pipeline, "load_pipeline", lambda *a, **k: type("P", (), {"backend": None})())
    monkeypatch.setattr(outputs, "check_numba_threading_layer", refused)
    (tmp_path / "in").mkdir()
    background = ["--background", "#00ff00"] if save == "composite" else []
    res = CliRunner().invoke(app, ["infer", "--weights", str(tmp_path / "m.onnx"), "--images", str(tmp_path / "in"),
                                   "--out", str(tmp_path / "out"), "--device", "cpu", "--save", save,
                                   "--max-memory", "none", *background])
    assert (str(res.exception) == "numba checked") == checked, res.exception


def test_a_composite_is_current_only_for_the_background_recorded_in_it(tmp_path):
    from mattecli.inference.outputs import is_current

    fg, alpha = np.zeros((4, 4, 3), np.uint8), np.full((4, 4), 255, np.uint8)
    paths = {"composite": tmp_path / "composite" / "a.png"}
    write_outputs(paths, fg, alpha, Background.parse("#00ff00"))
    assert is_current("composite", paths["composite"], Background.parse("lime"))  # the same colour
    assert not is_current("composite", paths["composite"], Background.parse("#0000ff"))
    assert not is_current("composite", paths["composite"], None)  # no background: none recorded is this run's


def test_an_alpha_alone_estimates_no_foreground(tmp_path, monkeypatch):
    import mattecli.inference.outputs as outputs

    monkeypatch.setattr(outputs, "estimate_foreground", lambda *a, **k: pytest.fail("foreground estimated"))
    alpha = np.tile(np.linspace(0, 255, 8).astype(np.uint8), (8, 1))  # fractional: an estimate would run
    write_outputs({"alpha": tmp_path / "a.png"}, np.zeros((8, 8, 3), np.uint8), alpha)
    assert (read_gray(tmp_path / "a.png") == alpha).all()
