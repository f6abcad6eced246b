"""Folder runs: skipping and resuming, interruption, shards, never writing over inputs."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mattecli.imageio import read_gray
from mattecli.inference.batch import find_pairs, infer_folder
from tests.infer_helpers import FakePipeline, make_pairs

ALL = ("alpha", "fg", "rgba", "composite")


@pytest.fixture
def green():
    from mattecli.inference.outputs import Background

    return Background.parse("#00ff00")


@pytest.mark.parametrize("workers", [0, 2])
def test_every_requested_output_is_written(tmp_path, green, workers):
    images = make_pairs(tmp_path / "in", ["a", "b c", "ünï"])
    report = infer_folder(FakePipeline(), images, tmp_path / "out", save=ALL, background=green, progress=False,
                          workers=workers)
    assert sorted(report.done) and not report.failed and not report.skipped
    for stem in ("a", "b c", "ünï"):
        for path in (f"{stem}.png", f"fg/{stem}.png", f"rgba/{stem}.png", f"composite/{stem}.png"):
            assert (tmp_path / "out" / path).is_file(), path
    assert not list((tmp_path / "out").rglob(".*"))  # no temporary files left


def test_colour_outputs_carry_the_images_rgb_colour_profile(tmp_path, green):
    """A phone's Display P3 photo: fg, rgba and composite without its profile showed other colours."""
    from PIL import Image, ImageCms

    images = make_pairs(tmp_path / "in", ["p3", "grey"])
    rgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()  # any RGB profile
    Image.open(images / "p3.png").save(images / "p3.png", icc_profile=rgb)
    gray = bytearray(rgb)
    gray[16:20] = b"GRAY"  # a grey photo's profile does not describe the RGB outputs
    Image.open(images / "grey.png").convert("L").save(images / "grey.png", icc_profile=bytes(gray))
    infer_folder(FakePipeline(), images, tmp_path / "out", save=ALL, background=green, progress=False)
    for kind in ("fg", "rgba", "composite"):
        assert Image.open(tmp_path / "out" / kind / "p3.png").info.get("icc_profile") == rgb, kind
        assert "icc_profile" not in Image.open(tmp_path / "out" / kind / "grey.png").info, kind
    assert "icc_profile" not in Image.open(tmp_path / "out" / "p3.png").info  # an alpha has no colours
    # a damaged RGB profile (an upload's, cut or made up) was copied as it was: every reader of the
    # outputs warned of it (libpng: "iCCP: profile 'ICC Profile': ...: tag count too large")
    damaged = rgb[:20] + b"\xff" * (len(rgb) - 20)
    Image.open(images / "p3.png").save(images / "p3.png", icc_profile=damaged)
    infer_folder(FakePipeline(), images, tmp_path / "out2", save=ALL, background=green, progress=False)
    for kind in ("fg", "rgba", "composite"):
        assert "icc_profile" not in Image.open(tmp_path / "out2" / kind / "p3.png").info, kind


def test_an_item_is_done_only_when_all_its_outputs_exist(tmp_path, green):
    images = make_pairs(tmp_path / "in", ["a", "b", "c"])
    out = tmp_path / "out"
    infer_folder(FakePipeline(), images, out, save=("alpha",), progress=False)
    fake = FakePipeline()  # alpha exists for all; fg asked for now: every item is redone...
    report = infer_folder(fake, images, out, save=("alpha", "fg"), progress=False)
    assert len(report.done) == 3 and fake.calls == 0  # ...reusing the alpha on disk, not the model
    (out / "fg" / "b.png").unlink()
    before = (out / "fg" / "a.png").stat().st_mtime_ns
    report = infer_folder(FakePipeline(), images, out, save=("alpha", "fg"), progress=False)
    assert report.done == [str(images / "b.png")] and len(report.skipped) == 2
    assert (out / "fg" / "a.png").stat().st_mtime_ns == before
    report = infer_folder(FakePipeline(), images, out, save=("alpha", "fg"), overwrite=True, progress=False)
    assert len(report.done) == 3


def test_changing_the_background_recomputes_only_the_composites_from_the_alpha(tmp_path, green):
    """Issue 19: a re-run with another --background used to skip every image (and --overwrite reran
    the model). The composite records its background; a different one redoes only the composite."""
    from PIL import Image

    from mattecli.imageio import read_image, read_png_text
    from mattecli.inference.outputs import RECORD_KEY, Background

    images = make_pairs(tmp_path / "in", ["a", "b"])
    out = tmp_path / "out"
    infer_folder(FakePipeline(), images, out, save=ALL, background=green, progress=False)
    assert read_png_text(out / "composite" / "a.png") == {RECORD_KEY: "#00ff00"}
    kept = {p: p.stat().st_mtime_ns for p in out.rglob("*.png") if p.parent.name != "composite"}
    fake, red = FakePipeline(), Background.parse("red")
    report = infer_folder(fake, images, out, save=ALL, background=red, progress=False)
    assert len(report.done) == 2 and fake.calls == 0  # from the alphas on disk, not the model
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # alpha, fg, rgba untouched
    alpha = read_gray(out / "a.png")
    assert (read_image(out / "composite" / "a.png")[alpha == 0] == (255, 0, 0)).all()
    assert read_png_text(out / "composite" / "a.png") == {RECORD_KEY: "#ff0000"}
    report = infer_folder(FakePipeline(), images, out, save=ALL, background=Background.parse("#F00"),
                          progress=False)  # the same colour, spelled otherwise
    assert len(report.skipped) == 2 and not report.done
    # a composite without a record (an older matte's) is redone; so is one after a background image edit
    Image.open(out / "composite" / "b.png").save(out / "composite" / "b.png")
    report = infer_folder(FakePipeline(), images, out, save=ALL, background=red, progress=False)
    assert report.done == [str(images / "b.png")]
    bg = tmp_path / "bg.png"
    Image.new("RGB", (8, 8), (0, 0, 255)).save(bg)
    infer_folder(FakePipeline(), images, out, save=ALL, background=Background.parse(str(bg)), progress=False)
    assert len(infer_folder(FakePipeline(), images, out, save=ALL, background=Background.parse(str(bg)),
                            progress=False).skipped) == 2
    Image.new("RGB", (8, 8), (0, 0, 254)).save(bg)
    fake = FakePipeline()
    report = infer_folder(fake, images, out, save=ALL, background=Background.parse(str(bg)), progress=False)
    assert len(report.done) == 2 and fake.calls == 0


def test_an_unreadable_alpha_on_disk_is_replaced_when_the_model_reruns(tmp_path, green):
    images = make_pairs(tmp_path / "in", ["a"])
    out = tmp_path / "out"
    infer_folder(FakePipeline(), images, out, save=("alpha",), progress=False)
    (out / "a.png").write_bytes(b"not a png")
    fake = FakePipeline()
    report = infer_folder(fake, images, out, save=("alpha", "fg"), progress=False)
    assert report.done and fake.calls == 1
    assert read_gray(out / "a.png").shape == (24, 32)


def test_an_alpha_on_disk_from_another_trimap_is_not_finished_with_this_runs(tmp_path):
    """`infer --masks --band 3% --save alpha,trimap`, trimap/x.png deleted, then a re-run with
    --band 20: the alpha of the first band was kept and the second band's trimap written beside it
    (12,043 known pixels where the two disagreed). An alpha whose known regions contradict this
    run's trimap fails the image, named; one that agrees is finished as before."""
    import numpy as np

    from mattecli.imageio import write_png

    images = make_pairs(tmp_path / "in", ["a", "b"])
    out = tmp_path / "out"
    infer_folder(FakePipeline(), images, out, save=("alpha", "trimap"), progress=False)
    for name in ("a", "b"):
        (out / "trimap" / f"{name}.png").unlink()
    narrower = read_gray(images / "a_trimap.png").copy()
    left = np.arange(narrower.shape[1])[None, :] < 16
    narrower[(narrower == 128) & left] = 255  # unknown pixels now foreground: the alpha's ramp contradicts them
    write_png(images / "a_trimap.png", narrower)
    fake = FakePipeline()
    report = infer_folder(fake, images, out, save=("alpha", "trimap"), progress=False)
    assert report.failed == [(str(out / "a.png"), "made from another trimap than this run's (its known regions "
                                                  "differ), and other outputs of the image are missing: --overwrite "
                                                  "redoes the image")]
    assert report.done == [str(images / "b.png")] and fake.calls == 0 and not (out / "trimap" / "a.png").exists()
    report = infer_folder(fake, images, out, save=("alpha", "trimap"), progress=False, overwrite=True)
    assert len(report.done) == 2 and np.array_equal(read_gray(out / "trimap" / "a.png"), narrower)


@pytest.mark.parametrize("workers", [0, 2])
def test_ctrl_c_leaves_only_whole_files_and_a_rerun_finishes(tmp_path, workers):
    images = make_pairs(tmp_path / "in", [f"img{i}" for i in range(6)])
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        infer_folder(FakePipeline(fail_on_call=4), images, out, progress=False, workers=workers)
    written = sorted(p.name for p in out.iterdir())
    assert written == ["img0.png", "img1.png", "img2.png"]  # finished writes kept, nothing partial
    assert all(read_gray(out / name).shape == (24, 32) for name in written)
    fake = FakePipeline()
    report = infer_folder(fake, images, out, progress=False)
    assert len(report.skipped) == 3 and len(report.done) == 3 and fake.calls == 3


@pytest.mark.parametrize("how", ["context", "signal"])
def test_an_interrupt_a_library_turned_into_its_own_error_stops_the_run(tmp_path, monkeypatch, how):
    """A Ctrl-C or SIGTERM that a library re-raised as its own error (safetensors makes one a
    ValueError) was recorded as that image's failure, and the batch went on (exit 1, not 130/143).
    Seen by the interrupt in the error's context, or by the SIGTERM the CLI's handler recorded
    (a library in another language leaves no context)."""
    from mattecli import errors

    images = make_pairs(tmp_path / "in", ["a", "b", "c"])
    monkeypatch.setattr(errors, "STOP_SIGNALS", [])

    class Converting(FakePipeline):
        def run(self, image, trimap, prepared=None):
            if self.calls == 1 and how == "signal":
                errors.STOP_SIGNALS.append(15)
                raise ValueError("could not read the tensor")
            if self.calls == 1:
                try:
                    raise KeyboardInterrupt
                except KeyboardInterrupt:
                    raise ValueError("could not read the tensor") from None  # the context still says why
            return super().run(image, trimap)

    fake = Converting()
    with pytest.raises(KeyboardInterrupt):
        infer_folder(fake, images, tmp_path / "out", progress=False)
    assert fake.calls == 1  # c was not run


def test_a_crash_mid_write_leaves_no_partial_file(tmp_path, monkeypatch):
    images = make_pairs(tmp_path / "in", ["a"])

    def dying_write(self, data):
        with open(self, "wb") as f:
            f.write(data[:10])
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_bytes", dying_write)  # how write_png writes its file
    with pytest.raises(KeyboardInterrupt):
        infer_folder(FakePipeline(), images, tmp_path / "out", progress=False)
    assert list((tmp_path / "out").iterdir()) == []
    monkeypatch.undo()
    report = infer_folder(FakePipeline(), images, tmp_path / "out", progress=False)
    assert len(report.done) == 1


def test_a_name_near_the_length_limit_is_written(tmp_path):
    """A 250-byte stem (its outputs' names fit in 255 bytes) failed after its model pass with "File
    name too long": the temporary name adds 13 bytes to the output's."""
    stem = "é" * 125  # 250 bytes in UTF-8
    images = make_pairs(tmp_path / "in", ["a"])
    (tmp_path / "trimaps").mkdir()
    (images / "a.png").rename(images / f"{stem}.png")
    (images / "a_trimap.png").rename(tmp_path / "trimaps" / f"{stem}.png")
    report = infer_folder(FakePipeline(), images, tmp_path / "out", tmp_path / "trimaps", save=("alpha", "fg"),
                          progress=False)
    assert report.done == [str(images / f"{stem}.png")] and not report.failed
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == sorted(["fg", f"{stem}.png", f"{stem}.png"])


def test_a_full_disk_names_the_output_that_did_not_fit(tmp_path, monkeypatch):
    """A full disk was 'writing outputs: OSError: [Errno 28] No space left on device', naming no
    file; a read-only file system named the hidden temporary file ('.a.x1y2z3.png.tmp')."""
    import errno

    images = make_pairs(tmp_path / "in", ["a", "b"])
    real_write = Path.write_bytes

    def full_for_fg(self, data):
        if self.parent.name == "fg":
            raise OSError(errno.ENOSPC, "No space left on device")  # as a file's write() raises it
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", full_for_fg)  # how write_png writes its file
    out = tmp_path / "out"
    report = infer_folder(FakePipeline(), images, out, save=("alpha", "fg"), progress=False)
    assert report.failed == [(str(images / f"{s}.png"), f"writing outputs: {out / 'fg' / s}.png: No space left on "
                                                        "device") for s in "ab"]
    assert sorted(p.name for p in out.rglob("*")) == ["a.png", "b.png", "fg"]  # the alphas, reused by a re-run


def test_pictures_in_formats_matte_does_not_read_are_named_in_a_note(tmp_path):
    """A folder of phone photos, some saved as HEIC: those were left out without a word, the
    summary counting only the others."""
    images = make_pairs(tmp_path / "in", ["a"])
    for name in ("IMG_2.HEIC", "IMG_2_trimap.png", "logo.gif", "notes.txt", "scan.dng", "render.tga"):
        (images / name).write_bytes(b"")
    (images / "sub").mkdir()
    (images / "sub" / "deep.heic").write_bytes(b"")
    report = infer_folder(FakePipeline(), images, tmp_path / "out", progress=False)
    assert report.done == [str(images / "a.png")]
    assert (f"4 files in a picture format matte does not read left out (e.g. {images / 'IMG_2.HEIC'}): convert to PNG, "
            "JPEG, TIFF, WebP or BMP to include them") in report.notes
    recursive = infer_folder(FakePipeline(), images, tmp_path / "out2", progress=False, recursive=True)
    assert any(note.startswith("5 files in a picture format") for note in recursive.notes)
    later_shard = infer_folder(FakePipeline(), images, tmp_path / "out3", progress=False, shard=(1, 2))
    assert not any("picture format" in note for note in later_shard.notes)  # said once, in shard 0


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("code", ["ENOSPC", "EDQUOT"])
def test_a_full_disk_stops_the_batch_and_a_rerun_finishes_it(tmp_path, monkeypatch, capsys, workers, code):
    """Once the disk was full, every remaining image still ran the model, only to fail writing (a
    folder of thousands: thousands of model passes and failure lines). Now nothing new starts after
    the first write that finds it full; what is already computed is still written (it may fit), the
    rest is reported as not attempted, and running again once there is room finishes the batch."""
    import errno

    from mattecli.inference import batch

    if not hasattr(errno, code):
        pytest.skip(f"no {code} here")
    names = [f"p{k}" for k in range(12)]
    images = make_pairs(tmp_path / "in", names)
    out = tmp_path / "out"
    real_write, written = batch._write, []

    def fills_up(item, *args):
        if len(written) >= 2:
            raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)), str(out / item.image_path.name))
        written.append(item.image_path.name)
        return real_write(item, *args)

    monkeypatch.setattr(batch, "_write", fills_up)
    pipeline = FakePipeline()
    report = batch.infer_folder(pipeline, images, out, progress=False, workers=workers)
    assert report.done == [str(images / f"{n}.png") for n in names[:2]]
    assert report.failed and all(why.startswith("writing outputs: ") for _, why in report.failed)
    assert len(report.failed) <= 1 + max(2, workers)  # the first full write, and those already computed
    tried = report.done + [path for path, _ in report.failed]
    assert pipeline.calls == len(tried) < len(names)
    assert sorted(tried + report.not_attempted) == sorted(str(images / f"{n}.png") for n in names)
    batch.print_report(report, out)
    err = capsys.readouterr().err
    assert f"matte: stopped: the disk is full; {len(report.not_attempted)} inputs not attempted" in err

    monkeypatch.setattr(batch, "_write", real_write)  # room again
    again = batch.infer_folder(FakePipeline(), images, out, progress=False, workers=workers)
    assert len(again.skipped) == 2 and len(again.done) == 10 and not again.failed and not again.not_attempted


@pytest.mark.skipif(sys.platform != "linux", reason="Linux's 4096-byte path limit")
def test_an_output_path_over_the_system_limit_fails_that_image_only(tmp_path):
    """A deep --recursive tree under a deep --out: the first output path over 4096 bytes ended the
    whole run, before any image ("matte: error: ...x.png: File name too long", exit 1)."""
    deep = tmp_path / "in" / "/".join(["d" * 250] * 15)  # ~3.8 KB: the input's own paths fit
    make_pairs(deep, ["x"])
    make_pairs(tmp_path / "in", ["a"])
    out = tmp_path / ("o" * 200) / ("o" * 200)
    report = infer_folder(FakePipeline(), tmp_path / "in", out, recursive=True, progress=False)
    assert report.done == [str(tmp_path / "in" / "a.png")]
    [(image, reason)] = report.failed
    assert image == str(deep / "x.png") and reason.endswith("x.png: File name too long")


@pytest.mark.parametrize("workers", [0, 2])
def test_an_input_the_system_cannot_read_fails_that_image_only(tmp_path, monkeypatch, workers):
    """A system error reading one input (a stale NFS handle, a disk error, a file a mover script took
    between the listing and the read) ended the whole run: 'matte: error: in/b.png: Stale file handle'."""
    import errno

    import mattecli.inference.batch as batch

    images = make_pairs(tmp_path / "in", ["a", "b", "c"])
    real_read = batch.read_image

    def stale_b(path, **kwargs):
        if Path(path).name == "b.png":
            raise OSError(errno.ESTALE, "Stale file handle", str(path))
        return real_read(path, **kwargs)

    monkeypatch.setattr(batch, "read_image", stale_b)
    report = infer_folder(FakePipeline(), images, tmp_path / "out", progress=False, workers=workers)
    assert sorted(report.done) == [str(images / "a.png"), str(images / "c.png")]
    assert report.failed == [(str(images / "b.png"), "Stale file handle")]


def test_shards_split_the_sorted_list_deterministically(tmp_path):
    images = make_pairs(tmp_path / "in", [f"n{i:02d}" for i in range(10)])
    (images / "zz_lonely.png").write_bytes((images / "n00.png").read_bytes())  # a failure belongs to one shard
    everything, problems = find_pairs(images, None)
    shards = [find_pairs(images, None, (k, 3)) for k in range(3)]
    assert sorted(p for pairs, _ in shards for p in pairs) == sorted(everything)
    assert sum(len(pr) for _, pr in shards) == len(problems) == 1
    assert [len(pairs) + len(pr) for pairs, pr in shards] == [4, 4, 3]  # sizes differ by at most one
    assert shards[0][0][0][0].name == "n00.png" and shards[1][0][0][0].name == "n01.png"  # 0-based, strided
    assert find_pairs(images, None, (1, 3)) == shards[1]


def test_bad_shard_exits_2_with_one_line(tmp_path):
    res = subprocess.run([sys.executable, "-m", "mattecli", "infer", "--weights", tmp_path / "w.safetensors",
                          "--images", tmp_path, "--out", tmp_path / "o", "--shard", "4/4"],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "0-based" in res.stderr and res.stderr.count("\n") == 1


def test_outputs_never_overwrite_inputs(tmp_path):
    images = make_pairs(tmp_path / "in", ["a"])
    original = (images / "a.png").read_bytes()
    report = infer_folder(FakePipeline(), images, images, progress=False)  # --out = the image folder
    assert report.failed and "would overwrite an input" in report.failed[0][1]
    assert (images / "a.png").read_bytes() == original


def test_an_output_that_is_an_input_by_another_name_is_refused(tmp_path):
    """On a case-insensitive file system (macOS) the alpha a.png of the input a.PNG is that input,
    and writing it with --out equal to --images replaced the photo. Paths differ there, so the file
    is compared too; here a hard link stands for it: OUT/a.png is the photo under another name."""
    images = make_pairs(tmp_path / "in", ["a"])
    (images / "a.png").rename(images / "a.PNG")
    (tmp_path / "o").mkdir()
    os.link(images / "a.PNG", tmp_path / "o" / "a.png")
    report = infer_folder(FakePipeline(), images, tmp_path / "o", progress=False)
    assert report.failed and "would overwrite an input" in report.failed[0][1] and not report.done
    assert os.path.samefile(images / "a.PNG", tmp_path / "o" / "a.png")


def test_decoding_ahead_is_bounded(tmp_path, monkeypatch):
    import time

    import mattecli.inference.batch as batch

    images = make_pairs(tmp_path / "in", [f"i{i}" for i in range(12)])
    loaded = []
    real_load = batch._load
    monkeypatch.setattr(batch, "_load", lambda item, overwrite, **kw: loaded.append(1) or real_load(item, overwrite, **kw))

    class Slow(FakePipeline):
        ahead = 0

        def run(self, image, trimap):
            time.sleep(0.02)  # a slow model: decoding would run far ahead if nothing bounded it
            Slow.ahead = max(Slow.ahead, len(loaded) - self.calls)
            return super().run(image, trimap)

    report = infer_folder(Slow(), images, tmp_path / "out", progress=False, prefetch=2, workers=4)
    assert len(report.done) == 12
    assert 1 <= Slow.ahead <= 3  # the item being run + at most `prefetch` decoded ahead


def test_temporary_files_of_a_killed_run_are_removed_once_old(tmp_path):
    import os
    import time

    images = make_pairs(tmp_path / "in", ["a"])
    out = tmp_path / "out"
    (out / "fg").mkdir(parents=True)
    old, young = out / "fg" / ".a.k3j4.png.tmp", out / ".b.x9y8.png.tmp"
    old.write_bytes(b"half")
    young.write_bytes(b"half")  # may belong to another shard writing right now
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    infer_folder(FakePipeline(), images, out, save=("alpha", "fg"), progress=False)
    assert not old.exists() and young.exists()


def test_temporary_files_in_the_subfolders_of_a_recursive_run_are_removed_once_old(tmp_path):
    import os
    import time

    images = tmp_path / "in"
    make_pairs(images / "x" / "y", ["a"])
    out = tmp_path / "out"
    olds = [out / "x" / "y" / ".a.k3j4.png.tmp", out / "rgba" / "x" / "y" / ".a.p2q1.png.tmp"]
    for old in olds:
        old.parent.mkdir(parents=True)
        old.write_bytes(b"half")
        os.utime(old, (time.time() - 7200, time.time() - 7200))
    infer_folder(FakePipeline(), images, out, save=("alpha", "rgba"), progress=False, recursive=True)
    assert not any(old.exists() for old in olds)


@pytest.mark.parametrize("max_bytes", [None, 200 * 200 * 100])
def test_inputs_prepared_in_the_workers_give_the_alpha_of_the_model_thread(tmp_path, max_bytes):
    # issue 13: on the numpy path the worker that decodes an image also prepares its network input,
    # beside the model; the alpha is the one `Pipeline.run` makes alone, whole or tiled
    import threading

    import numpy as np

    from mattecli.imageio import read_image, read_trimap
    from mattecli.inference.pipeline import Pipeline
    from mattecli.recipes import InferConfig

    class Network:  # a numpy backend whose output depends on the image, the trimap and the alignment
        def __call__(self, x):
            return 1 / (1 + np.exp(-(x[:, :1] - x[:, 2:3] + 2 * x[:, 3:4] - 1)))

    threads = set()

    class Spy(Pipeline):
        def prepare_host(self, image, trimap, ahead=0):
            threads.add(threading.current_thread().name)
            return super().prepare_host(image, trimap, ahead)

    cfg = InferConfig(align="resize", stride=32, bytes_per_pixel=100)
    images = make_pairs(tmp_path / "in", ["a", "b", "c"], size=(150, 301))
    for workers in (0, 2):
        pipeline = Spy(backend=Network(), cfg=cfg, max_bytes=max_bytes, bytes_per_pixel=100)
        report = infer_folder(pipeline, images, tmp_path / f"out{workers}", progress=False, workers=workers)
        assert len(report.done) == 3 and not report.failed
        if max_bytes is not None:
            assert len(report.tiled) == 3  # too big for a whole pass: prepared per tile, in the model's thread
    assert any(name.startswith("matte-io") for name in threads)
    plain = Pipeline(backend=Network(), cfg=cfg, max_bytes=max_bytes, bytes_per_pixel=100)
    for stem in ("a", "b", "c"):
        image = read_image(images / f"{stem}.png", apply_exif=True)
        trimap, _ = read_trimap(images / f"{stem}_trimap.png")
        expected = plain.run(image, trimap).alpha
        assert np.array_equal(read_gray(tmp_path / "out0" / f"{stem}.png"), expected)
        assert np.array_equal(read_gray(tmp_path / "out2" / f"{stem}.png"), expected)


def test_inputs_are_prepared_ahead_only_when_they_fit_beside_the_pass():
    # --max-memory budgets one pass; inputs prepared ahead by the workers must fit beside it
    import numpy as np

    from mattecli.inference import tiling
    from mattecli.inference.pipeline import Pipeline
    from mattecli.recipes import InferConfig

    cfg = InferConfig(align="resize", stride=32, bytes_per_pixel=100)
    image, trimap = np.zeros((64, 96, 3), np.uint8), np.full((64, 96), 128, np.uint8)
    one_pass = tiling.pass_bytes(64, 96, cfg)
    one_input = 64 * 96 * 4 * 4
    tight = Pipeline(backend=None, cfg=cfg, max_bytes=one_pass + one_input)
    assert tight.prepare_host(image, trimap, ahead=1).shape == (1, 4, 64, 96)
    assert tight.prepare_host(image, trimap, ahead=2) is None  # prepared in its own pass instead
    assert Pipeline(backend=None, cfg=cfg).prepare_host(image, trimap, ahead=8) is not None  # no ceiling


def test_a_folder_where_an_output_goes_is_not_taken_for_the_output(tmp_path):
    """A folder named OUT/a.png counted a.png as done: it was skipped, without a word, on every run."""
    images = make_pairs(tmp_path / "in", ["a", "b"])
    out = tmp_path / "out"
    (out / "a.png").mkdir(parents=True)
    report = infer_folder(FakePipeline(), images, out, save=("alpha",), progress=False)
    assert report.done == [str(images / "b.png")] and not report.skipped
    assert report.failed == [(str(images / "a.png"), f"writing outputs: {out / 'a.png'} is a folder")]


def test_a_model_refusal_is_said_as_written(tmp_path):
    """matte's own ValueErrors are sentences ('m.onnx was exported for 1920x1088 input only, ...'); the
    failure line said 'ValueError: ...' before them; a library's RuntimeError keeps its type's name."""
    import functools

    images = make_pairs(tmp_path / "in", ["a", "b"])
    said = "m.onnx was exported for 1920x1088 input only, got 32x24"
    fake = FakePipeline(fail_on_call=1, exc=functools.partial(ValueError, said))
    report = infer_folder(fake, images, tmp_path / "out", save=("alpha",), progress=False)
    assert report.failed == [(str(images / "a.png"), said)] and report.done == [str(images / "b.png")]
    fake = FakePipeline(fail_on_call=1, exc=functools.partial(RuntimeError, "CUDA error: misaligned address"))
    report = infer_folder(fake, images, tmp_path / "out2", save=("alpha",), progress=False)
    assert report.failed == [(str(images / "a.png"), "RuntimeError: CUDA error: misaligned address")]


def test_a_compile_that_cannot_build_is_one_usage_error_at_the_first_image(tmp_path):
    """--compile without a C++ compiler (Windows without MSVC, macOS without Xcode's tools): every
    image failed in turn, each after minutes of compiling, with a message of four lines."""
    from torch._dynamo.exc import TorchDynamoException
    from torch._inductor import exc

    from mattecli.errors import UsageError

    def failure():
        try:
            cause = exc.InvalidCxxCompiler("/nonexistent/c++")
        except TypeError:  # torch 2.11: InvalidCxxCompiler() takes no argument (and words it otherwise)
            cause = exc.InvalidCxxCompiler()
        if hasattr(exc, "InductorError"):
            return exc.InductorError(cause, None)
        return TorchDynamoException(f"InvalidCxxCompiler: {cause}")  # torch 2.6: raised as a dynamo error

    images = make_pairs(tmp_path / "in", ["a", "b"])
    fake = FakePipeline(fail_on_call=1, exc=failure)
    with pytest.raises(UsageError) as caught:
        infer_folder(fake, images, tmp_path / "out", save=("alpha",), progress=False)
    reason = str(failure()).strip().splitlines()[0]
    assert reason.startswith("InvalidCxxCompiler: ")
    assert str(caught.value) == f"--compile: torch.compile could not build the model ({reason}); run without --compile"
    assert fake.calls == 1


def test_a_missing_trimap_in_a_recursive_run_names_the_subfolder_searched(tmp_path):
    """With --recursive the trimap of day1/x.png is looked for in TRIMAPS/day1, and the error said TRIMAPS."""
    import numpy as np
    from PIL import Image

    (tmp_path / "in" / "day1").mkdir(parents=True)
    (tmp_path / "tri" / "day1").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "in" / "day1" / "x.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "tri" / "x.png")  # not where it belongs
    pairs, problems = find_pairs(tmp_path / "in", tmp_path / "tri", recursive=True)
    assert not pairs
    assert problems[0][1].endswith(f"in {tmp_path / 'tri' / 'day1'})")


def test_maps_beside_their_photos_are_never_taken_for_photos(tmp_path):
    """The default layout (a_trimap.png beside a.png) run with --trimaps or --masks: each map was
    taken as a photo and failed for want of a trimap (exit 1); a mask beside its photo likewise."""
    import shutil

    images = make_pairs(tmp_path / "in", ["a", "b"])
    shutil.copy(images / "b_trimap.png", images / "b_mask.png")
    (tmp_path / "tri").mkdir()
    for name in ("a", "b"):
        shutil.copy(images / f"{name}_trimap.png", tmp_path / "tri" / f"{name}.png")
    maps = []
    pairs, problems = find_pairs(images, tmp_path / "tri", maps=maps)
    assert [(i.name, t.parent.name) for i, t in pairs] == [("a.png", "tri"), ("b.png", "tri")] and not problems
    assert sorted(m.name for m in maps) == ["a_trimap.png", "b_mask.png", "b_trimap.png"]
    maps = []
    pairs, problems = find_pairs(images, None, maps=maps)  # beside: the _trimap files pair, the mask is left out
    assert [(i.name, t.name) for i, t in pairs] == [("a.png", "a_trimap.png"), ("b.png", "b_trimap.png")]
    assert not problems and [m.name for m in maps] == ["b_mask.png"]
    pairs, problems = find_pairs(images, tmp_path / "tri", suffix="_mask", option="--masks")
    assert [i.name for i, _ in pairs] == ["a.png", "b.png"] and not problems
    (images / "c_trimap.png").write_bytes((images / "a_trimap.png").read_bytes())  # no photo c: still an image
    pairs, problems = find_pairs(images, tmp_path / "tri")
    assert problems == [(str(images / "c_trimap.png"), problems[0][1])]
    report = infer_folder(FakePipeline(), images, tmp_path / "out", trimaps=tmp_path / "tri", progress=False)
    assert sorted(report.done) == [str(images / "a.png"), str(images / "b.png")]
    assert any(note.startswith(f"{images / 'a_trimap.png'}: left out, as the trimap of the photo beside it "
                               f"(this run reads the trimaps in --trimaps {tmp_path / 'tri'}) (and 2 more")
               for note in report.notes)


def test_an_image_with_several_trimaps_fails_naming_them(tmp_path):
    """a.bmp and a.png in --trimaps (or a.png and a_trimap.png): the first by name was taken without a
    word (exit 0, perhaps the wrong trimap), where eval refuses such a stem."""
    import shutil

    images = make_pairs(tmp_path / "in", ["a", "b", "c"])
    (tmp_path / "tri").mkdir()
    for name in ("a", "b", "c"):
        shutil.copy(images / f"{name}_trimap.png", tmp_path / "tri" / f"{name}.png")
    shutil.copy(images / "a_trimap.png", tmp_path / "tri" / "a.bmp")
    shutil.copy(images / "b_trimap.png", tmp_path / "tri" / "b_trimap.png")
    shutil.copy(images / "c_trimap.png", images / "c_trimap.bmp")  # beside: two c_trimap files
    pairs, problems = find_pairs(images, tmp_path / "tri")
    assert [i.name for i, _ in pairs] == ["c.png"]
    assert problems == [(str(images / "a.png"), "several trimaps for it (a.bmp, a.png); keep one"),
                        (str(images / "b.png"), "several trimaps for it (b.png, b_trimap.png); keep one")]
    pairs, problems = find_pairs(images, None)
    assert [i.name for i, _ in pairs] == ["a.png", "b.png"]
    assert problems == [(str(images / "c.png"), "several trimaps for it (c_trimap.bmp, c_trimap.png); keep one")]


def test_a_symbolic_link_loop_among_the_inputs_fails_alone(tmp_path):
    """loop.png -> loop.png: Path.resolve's RuntimeError ("Symlink loop") was a traceback that stopped
    the whole batch before anything was written."""
    import shutil

    images = make_pairs(tmp_path / "in", ["a"])
    (tmp_path / "tri").mkdir()
    shutil.copy(images / "a_trimap.png", tmp_path / "tri" / "a.png")
    shutil.copy(images / "a_trimap.png", tmp_path / "tri" / "loop.png")
    (images / "loop.png").symlink_to("loop.png")
    report = infer_folder(FakePipeline(), images, tmp_path / "out", trimaps=tmp_path / "tri", progress=False)
    assert report.done == [str(images / "a.png")]
    assert report.failed == [(str(images / "loop.png"), "a symbolic link that leads to no file (broken, or a loop)")]


def test_a_stop_whose_interrupt_was_lost_ends_the_batch_between_images(tmp_path, monkeypatch):
    """SIGTERM's KeyboardInterrupt raised inside a __del__ (numba's first compile, for --save fg) is
    ignored by Python: the batch went on to its end. The recorded signal stops it at the next image."""
    from mattecli import errors

    images = make_pairs(tmp_path / "in", ["a", "b", "c"])
    monkeypatch.setattr(errors, "STOP_SIGNALS", [])

    class Signalled(FakePipeline):
        def run(self, image, trimap, prepared=None):
            errors.STOP_SIGNALS.append(15)  # the handler ran; its interrupt went nowhere
            return super().run(image, trimap)

    with pytest.raises(KeyboardInterrupt):
        infer_folder(Signalled(), images, tmp_path / "out", progress=False, workers=0)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png"]  # the image under way was finished


def test_a_single_image_and_trimap_file_belong_to_shard_0_only(tmp_path):
    """`--shard K/N` splits the work disjointly and completely: one image given as a file (with its
    trimap as a file) is one item, done by exactly one shard, the first."""
    images = make_pairs(tmp_path / "in", ["a"])
    pair = (images / "a.png", images / "a_trimap.png")
    assert find_pairs(*pair) == ([pair], [])
    shards = [find_pairs(*pair, shard=(k, 3)) for k in range(3)]
    assert shards == [([pair], []), ([], []), ([], [])]


def test_two_images_with_one_stem_fail_one_of_them_naming_the_other(tmp_path):
    """Outputs are named by stem: a.png and a.jpg would write one a.png, so the second is a named
    failure, not a silent overwrite of the first's outputs."""
    from PIL import Image

    images = make_pairs(tmp_path / "in", ["a"])
    Image.open(images / "a.png").save(images / "a.jpg")
    pairs, problems = find_pairs(images, None)
    assert pairs == [(images / "a.jpg", images / "a_trimap.png")]
    assert problems == [(str(images / "a.png"),
                         "another image has the same name stem (a.jpg); outputs are named by stem")]


def test_an_alpha_on_disk_of_another_size_is_not_reused(tmp_path):
    """An alpha left by a run on another version of the photo (another size) cannot finish this
    image's other outputs: the model runs again and replaces it, and the batch goes on."""
    from mattecli.imageio import write_png

    images = make_pairs(tmp_path / "in", ["a", "b"])
    out = tmp_path / "out"
    write_png(out / "a.png", np.zeros((10, 10), np.uint8))
    fake = FakePipeline()
    report = infer_folder(fake, images, out, save=("alpha", "fg"), progress=False)
    assert sorted(report.done) == [str(images / "a.png"), str(images / "b.png")] and not report.failed
    assert fake.calls == 2 and read_gray(out / "a.png").shape == (24, 32)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_write_failing_for_another_reason_than_a_full_disk_fails_that_image_only(tmp_path, workers):
    """Only a full disk stops the batch; an output that cannot be written for its own reason (a
    folder where the file goes) is that image's named failure, and the rest are written."""
    images = make_pairs(tmp_path / "in", ["a", "b", "c", "d"])
    out = tmp_path / "out"
    (out / "fg" / "a.png").mkdir(parents=True)  # a folder where a's foreground goes
    report = infer_folder(FakePipeline(), images, out, save=("alpha", "fg"), progress=False, workers=workers,
                          prefetch=1)
    assert [path for path, _ in report.failed] == [str(images / "a.png")]
    assert "is a folder" in report.failed[0][1]
    assert sorted(report.done) == [str(images / f"{s}.png") for s in "bcd"] and not report.not_attempted


def test_the_json_report_counts_each_kind_of_outcome(tmp_path):
    """--json's counts are the lengths of its lists: done, skipped, failed, nothing, not_attempted."""
    import json

    from mattecli.inference.batch import BatchReport, print_report, report_json

    report = BatchReport(done=["d1"], skipped=["s1", "s2"], failed=[("f1", "r"), ("f2", "r"), ("f3", "r")],
                         nothing=[(f"n{i}", "r") for i in range(4)], not_attempted=[f"x{i}" for i in range(5)])
    counts = {"done": 1, "skipped": 2, "failed": 3, "nothing": 4, "not_attempted": 5}
    assert report_json(report, tmp_path)["counts"] == counts
    print_report(report, tmp_path, tmp_path / "report.json")
    written = json.loads((tmp_path / "report.json").read_text())
    assert written["counts"] == counts and written["failed"][2] == {"path": "f3", "reason": "r"}
    assert written["not_attempted"] == report.not_attempted and written["out"] == str(tmp_path)


def test_at_most_five_notes_are_shown_then_a_count_of_the_rest(tmp_path, capsys):
    from mattecli.inference.batch import BatchReport, print_report

    print_report(BatchReport(notes=[f"n{i}" for i in range(5)]), tmp_path)
    err = capsys.readouterr().err
    assert err.splitlines() == [f"matte: note: n{i}" for i in range(5)]  # five: all shown, nothing more
    print_report(BatchReport(notes=[f"n{i}" for i in range(7)]), tmp_path)
    err = capsys.readouterr().err
    assert err.splitlines() == [f"matte: note: n{i}" for i in range(5)] + ["matte: note: ... and 2 more like these"]


def test_json_report_onto_an_input_is_refused_before_any_work(tmp_path):
    from mattecli.errors import UsageError
    from mattecli.inference.batch import check_json_out

    images = make_pairs(tmp_path / "in", ["a"])
    with pytest.raises(UsageError, match="is an input file"):
        check_json_out(images / "a.json", [images / "a.json", images / "a.png"])
    check_json_out(tmp_path / "report.json", [images / "a.png"])  # any other file is fine
