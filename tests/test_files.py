"""mattecli.files: atomic writes with the usual permissions, for every kind of output."""

import os
import stat

import numpy as np
import pytest

from mattecli.data.manifest import Sample, read_manifest, write_manifest
from mattecli.files import atomic_write, describe, remove_stale_temps
from mattecli.imageio import write_png


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_manifest_gets_the_permissions_of_every_other_output(tmp_path):
    """manifest.csv used its own temp file + rename and stayed 0600 (mkstemp's mode)."""
    umask = os.umask(0o022)
    try:
        png = write_png(tmp_path / "split" / "alpha" / "a.png", np.zeros((2, 2), np.uint8))
        manifest = write_manifest(tmp_path / "split", [Sample("a", alpha=png)])
    finally:
        os.umask(umask)
    assert manifest.name == "manifest.csv" and _mode(manifest) == _mode(png) == 0o644
    assert read_manifest(tmp_path / "split") == [Sample("a", alpha=png)]
    assert manifest.read_bytes() == b"name,image,alpha,trimap,fg,bg\r\na,,alpha/a.png,,,\r\n"
    assert [p.name for p in (tmp_path / "split").iterdir() if p.name.startswith(".")] == []


def test_the_umask_is_read_without_being_set(tmp_path, monkeypatch):
    """Importing mattecli.files set the umask to 0 for a moment (a file another thread of a web
    service made then got mode 0666), and kept the value it read then."""
    import importlib

    import mattecli.files

    umask = os.umask(0o027)
    try:
        monkeypatch.setattr(os, "umask", lambda mask: pytest.fail("os.umask called"))
        files = importlib.reload(mattecli.files)
        files.atomic_write(tmp_path / "out.txt", lambda tmp: tmp.write_text("x"))
    finally:
        monkeypatch.undo()
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "out.txt").stat().st_mode) == 0o640


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "report.json"
    path.write_text("old")

    def fail(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, fail)
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_a_read_only_file_system_names_the_output_not_its_temporary_file(tmp_path, monkeypatch):
    """An output folder remounted read-only mid-run: each image failed naming '.a.52n_krop.png.tmp'
    (and removing the temporary file that was not made failed too, on that file system)."""
    import errno
    from pathlib import Path

    import mattecli.files

    def read_only(path, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", path)

    monkeypatch.setattr(mattecli.files, "make_new", read_only)
    monkeypatch.setattr(Path, "unlink", read_only)
    with pytest.raises(OSError) as caught:
        atomic_write(tmp_path / "a.png", lambda tmp: tmp.write_text("new"))
    assert (caught.value.errno, caught.value.filename) == (errno.EROFS, str(tmp_path / "a.png"))
    assert describe(caught.value) == f"{tmp_path / 'a.png'}: Read-only file system"


def test_ctrl_c_right_after_the_temp_file_is_made_leaves_no_temp(tmp_path, monkeypatch):
    """SIGINT between mkstemp and the write (seen in CI as test_ctrl_c_in_prepare_data leaving a
    .tmp file): the interrupt propagates, the old file stays, no temp is left."""
    import mattecli.files

    path = tmp_path / "a.png"
    path.write_text("old")

    def interrupted_chmod(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(mattecli.files.os, "chmod", interrupted_chmod)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, lambda tmp: tmp.write_text("new"))
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_ctrl_c_while_the_temp_file_is_made_leaves_no_temp(tmp_path, monkeypatch):
    """SIGTERM inside tempfile.mkstemp, after it made the file and before it returned the name (seen
    under load as test_sigterm_ends_a_command_as_ctrl_c_does leaving .syn0000.gx0b2o2r.png.tmp): the
    name is now chosen first, so the cleanup covers the moment the file is made."""
    import mattecli.files

    path = tmp_path / "a.png"
    made = mattecli.files.make_new

    def made_then_interrupted(tmp):
        made(tmp)
        assert tmp.parent == tmp_path and tmp.name.startswith(".a.") and tmp.name.endswith(".png.tmp")
        raise KeyboardInterrupt

    monkeypatch.setattr(mattecli.files, "make_new", made_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, lambda tmp: tmp.write_text("new"))
    assert not list(tmp_path.iterdir())


def test_probe_files_are_removed_also_when_interrupted(tmp_path, monkeypatch):
    """The write check of --out and the letter-case probe make a file and remove it, whatever happens."""
    import mattecli.files
    import mattecli.imageio
    from mattecli.files import case_insensitive
    from mattecli.imageio import prepare_out_dir

    assert case_insensitive(tmp_path) is False and prepare_out_dir(tmp_path / "o") == tmp_path / "o"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"] and not list((tmp_path / "o").iterdir())
    made = mattecli.files.make_new

    def made_then_interrupted(tmp):
        made(tmp)
        raise KeyboardInterrupt

    for module in (mattecli.files, mattecli.imageio):
        monkeypatch.setattr(module, "make_new", made_then_interrupted)
    for probe in (lambda: case_insensitive(tmp_path), lambda: prepare_out_dir(tmp_path / "o")):
        with pytest.raises(KeyboardInterrupt):
            probe()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["o"] and not list((tmp_path / "o").iterdir())


def test_a_fifo_or_a_device_is_written_in_place_not_replaced(tmp_path):
    """`matte eval --json /dev/stdout` as root renamed a file over /dev/stdout (and /dev/null);
    a FIFO, like them not a regular file, is written in place and stays a FIFO."""
    import threading

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()), daemon=True)
    reader.start()
    atomic_write(fifo, lambda tmp: tmp.write_text("{}"))
    reader.join(10)
    assert got == ["{}"] and stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo"]
    atomic_write("/dev/null", lambda tmp: tmp.write_text("x"))  # no temp file made in /dev
    assert stat.S_ISCHR(os.lstat("/dev/null").st_mode)


def test_a_link_to_a_device_or_a_fifo_named_like_an_output_is_replaced_not_written_through(tmp_path):
    """An output folder holding x.png -> /dev/null (planted among uploads, where --out is their folder):
    matte infer wrote the alpha through the link, into /dev/null (or onto a disk, as root), and counted
    it written; a link to a FIFO failed the image. A link is replaced, as one to a regular file is."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").symlink_to("/dev/null")
    (out / "b.png").symlink_to(fifo)
    for name in ("a.png", "b.png"):
        atomic_write(out / name, lambda tmp: tmp.write_text("alpha"))
        assert not (out / name).is_symlink() and (out / name).read_text() == "alpha", name
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_remove_stale_temps_spares_young_ones(tmp_path):
    old, young = tmp_path / ".a.png.tmp", tmp_path / ".b.png.tmp"
    old.write_text(""), young.write_text("")
    os.utime(old, (1, 1))
    assert remove_stale_temps(tmp_path, older_than=3600) == 1 and not old.exists() and young.exists()


def test_weights_files_get_the_usual_permissions(tmp_path):
    """safetensors' save_file replaces the file it writes with a 0600 one, so every weights file
    matte wrote (train, convert) was unreadable to the rest of a group or a serving user."""
    from mattecli.models import build_model
    from mattecli.recipes import load_recipe
    from mattecli.weights import save_weights

    recipe = load_recipe("demo-tcp")
    umask = os.umask(0o022)
    try:
        weights = save_weights(build_model(recipe), recipe, tmp_path / "w.safetensors")
    finally:
        os.umask(umask)
    assert _mode(weights) == 0o644


def test_a_file_system_without_inode_numbers_does_not_make_every_output_an_input(tmp_path, monkeypatch):
    """os.stat's st_ino identifies a file only when it is not 0 (Python's docs: some file systems,
    on Windows above all, report 0): with identity compared by (device, inode), any existing output
    there was 'one of the inputs', so a re-run into the same --out failed every image."""
    from pathlib import Path

    from mattecli.files import Inputs

    real = Path.stat

    def no_inodes(self, *args, **kwargs):
        st = real(self, *args, **kwargs)
        return os.stat_result((st.st_mode, 0, st.st_dev, *tuple(st)[3:]))

    monkeypatch.setattr(Path, "stat", no_inodes)
    (tmp_path / "photo.png").write_bytes(b"x")
    (tmp_path / "out.png").write_bytes(b"y")
    inputs = Inputs([tmp_path / "photo.png"])
    assert tmp_path / "photo.png" in inputs and tmp_path / "out.png" not in inputs


def test_an_input_reached_by_another_name_is_still_an_input(tmp_path):
    """A hard link (as a case-insensitive file system's A.PNG for a.png) is the same file: an
    output there would replace the input."""
    from mattecli.files import Inputs

    (tmp_path / "a.png").write_bytes(b"photo")
    os.link(tmp_path / "a.png", tmp_path / "other.png")
    inputs = Inputs([tmp_path / "a.png"])
    assert tmp_path / "other.png" in inputs and tmp_path / "a.png" in inputs
    (tmp_path / "b.png").write_bytes(b"photo")
    assert tmp_path / "b.png" not in inputs


def test_a_long_name_in_a_multibyte_script_gets_a_temporary_name_that_fits(tmp_path):
    """File names are limited in bytes (255), not characters: 'é' is two bytes in UTF-8."""
    path = tmp_path / ("é" * 125 + ".png")  # 254 bytes: a name that fits
    atomic_write(path, lambda tmp: tmp.write_bytes(b"x"))
    assert path.read_bytes() == b"x" and [p.name for p in tmp_path.iterdir()] == [path.name]
