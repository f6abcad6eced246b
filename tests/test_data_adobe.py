"""prepare-data adobe / d646 on a miniature dataset laid out as the real ones, checked pixel for pixel
against a plain per-pixel transcription of Adobe's composition rule (docs/commands/prepare-data.md)
written here."""

from __future__ import annotations

import math
import re
import os

import numpy as np
import pytest
from PIL import Image, ImageOps
from typer.testing import CliRunner

from mattecli.data.adobe import (ADOBE_PER_FG, adobe_background, adobe_blend, plan_jobs, prepare_adobe,
                                 prepare_d646)
from mattecli.data.manifest import read_manifest, write_manifest
from mattecli.errors import UsageError

TEST_FG = {"cat.png": (29, 23), "dog.png": (16, 20)}  # name -> (w, h)
TRAIN_FG = {"Adobe-licensed images": {"hair.jpg": (14, 11)}, "Other": {"net.jpg": (9, 12)}}
TRAIN_PER_FG = ADOBE_PER_FG["train"]


def _rand_rgb(rng, w, h):
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _alpha_rgb(rng, w, h):
    """A 3-channel alpha whose channels differ (only the first one counts), with 0, 255 and partials."""
    first = rng.choice([0, 255, 1, 128, 254, 77], size=(h, w)).astype(np.uint8)
    other = rng.integers(0, 256, size=(h, w, 2), dtype=np.uint8)
    return np.dstack([first, other])


def _save_exif_rotated_jpeg(path, array):
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees; OpenCV would apply it, Adobe's script does not
    Image.fromarray(array).save(path, exif=exif, quality=95)


def _background_sizes(w, h):
    """Backgrounds for one foreground: smaller (upscale), larger (crop only), and one whose
    ceil(bw * ratio) comes out one pixel larger than w (cat: w=29, bw=7)."""
    return [(7, 10), (5, 4), (w + 9, h + 5), (w, h), (3, 30)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("adobe")
    combined, coco, voc = root / "Combined_Dataset", root / "train2014", root / "VOC"
    coco.mkdir()
    voc.mkdir()

    def backgrounds(folder, prefix, fg_sizes, per_fg):
        names = []
        for i, (w, h) in enumerate(fg_sizes):
            sizes = _background_sizes(w, h)
            for k in range(per_fg):
                bw, bh = sizes[k % len(sizes)]
                name = f"{prefix}_{i:02d}{k:03d}.jpg"
                if k == 1:  # an EXIF-rotated JPEG
                    _save_exif_rotated_jpeg(folder / name, _rand_rgb(rng, bw, bh))
                elif k == 2:  # a grayscale JPEG (converted to RGB before resizing)
                    Image.fromarray(rng.integers(0, 256, (bh, bw), dtype=np.uint8)).save(folder / name)
                else:
                    Image.fromarray(_rand_rgb(rng, bw, bh)).save(folder / name, quality=90)
                names.append(name)
        return names

    test = combined / "Test_set"
    group = test / "Adobe-licensed images"
    for sub in ("fg", "alpha", "trimaps"):
        (group / sub).mkdir(parents=True)
    for name, (w, h) in TEST_FG.items():
        Image.fromarray(_rand_rgb(rng, w, h)).save(group / "fg" / name)
        Image.fromarray(_alpha_rgb(rng, w, h)).save(group / "alpha" / name)
        for k in range(20):
            Image.fromarray(rng.choice([0, 128, 255], size=(h, w)).astype(np.uint8)).save(
                group / "trimaps" / f"{name[:-4]}_{k}.png")
    bg_names = backgrounds(voc, "2008", TEST_FG.values(), 20)
    # CRLF line ends, as Adobe ships some of the names files
    (test / "test_fg_names.txt").write_bytes("".join(f"{n}\r\n" for n in TEST_FG).encode())
    (test / "test_bg_names.txt").write_bytes("".join(f"{n}\r\n" for n in bg_names).encode())

    train = combined / "Training_set"
    fg_names, sizes = [], []
    for group_name, fgs in TRAIN_FG.items():
        for sub in ("fg", "alpha"):
            (train / group_name / sub).mkdir(parents=True)
        for name, (w, h) in fgs.items():
            Image.fromarray(_rand_rgb(rng, w, h)).save(train / group_name / "fg" / name, quality=95)
            Image.fromarray(_alpha_rgb(rng, w, h)[..., 0]).save(train / group_name / "alpha" / name,
                                                                quality=95)
            fg_names.append(name)
            sizes.append((w, h))
    train_bgs = backgrounds(coco, "COCO_train2014", sizes, TRAIN_PER_FG)
    (train / "training_fg_names.txt").write_text("\n".join(fg_names) + "\n")
    (train / "training_bg_names.txt").write_text("\n".join(train_bgs) + "\n")
    return {"root": combined, "coco": coco, "voc": voc, "test_bgs": bg_names, "train_bgs": train_bgs,
            "train_fgs": fg_names}


def reference_composite(fg_path, alpha_path, bg_path) -> np.ndarray:
    """Adobe's rule transcribed pixel by pixel with Pillow, as plainly as possible."""
    fg = Image.open(fg_path)
    if fg.mode not in ("RGB", "RGBA"):
        fg = fg.convert("RGB")
    alpha = Image.open(alpha_path)
    w, h = fg.size
    bg = Image.open(bg_path)
    if bg.mode != "RGB":
        bg = bg.convert("RGB")
    bw, bh = bg.size
    wratio, hratio = w / bw, h / bh
    ratio = wratio if wratio > hratio else hratio
    if ratio > 1:
        bg = bg.resize((math.ceil(bw * ratio), math.ceil(bh * ratio)), Image.BICUBIC)
    bg = bg.crop((0, 0, w, h))
    F, B, A = fg.load(), bg.load(), alpha.load()
    out = np.zeros((h, w, 3), np.uint8)
    for y in range(h):
        for x in range(w):
            a = A[x, y]
            a = (a[0] if isinstance(a, tuple) else a) / 255
            if a >= 1:
                out[y, x] = F[x, y][:3]
            elif a > 0:
                out[y, x] = [int(a * F[x, y][c] + (1 - a) * B[x, y][c]) for c in range(3)]
            else:
                out[y, x] = B[x, y][:3]
    return out


def _read(path):
    return np.array(Image.open(path))


@pytest.fixture(scope="module")
def prepared(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    report = prepare_adobe(dataset["root"], dataset["coco"], dataset["voc"], out, "all", workers=2,
                           composite=True)
    return out, report


def test_fixture_exercises_the_traps(dataset):
    # The miniature set must contain the cases the rule is subtle about, or the comparison proves little.
    w, bw = TEST_FG["cat.png"][0], 7
    assert math.ceil(bw * (w / bw)) == w + 1
    rotated = Image.open(dataset["voc"] / dataset["test_bgs"][1])
    assert rotated.getexif().get(0x0112) == 6
    assert ImageOps.exif_transpose(rotated).size != rotated.size
    alpha = _read(dataset["root"] / "Test_set/Adobe-licensed images/alpha/cat.png")
    assert alpha.ndim == 3 and (alpha[..., 0] != alpha[..., 1]).any()


def test_test_split_is_pixel_identical_to_the_rule(dataset, prepared):
    out, report = prepared
    assert report.errors == []
    samples = read_manifest(out / "test")
    assert len(samples) == 20 * len(TEST_FG)
    group = dataset["root"] / "Test_set/Adobe-licensed images"
    for i, (name, (w, h)) in enumerate(TEST_FG.items()):
        stem = name[:-4]
        for k in range(20):
            s = samples[i * 20 + k]
            assert s.name == f"{stem}_{k}"
            ref = reference_composite(group / "fg" / name, group / "alpha" / name,
                                      dataset["voc"] / dataset["test_bgs"][i * 20 + k])
            np.testing.assert_array_equal(_read(s.image), ref, err_msg=s.name)
            alpha = _read(s.alpha)
            assert alpha.shape == (h, w)  # single channel: the first channel of Adobe's file
            np.testing.assert_array_equal(alpha, _read(group / "alpha" / name)[..., 0])
            assert s.trimap.read_bytes() == (group / "trimaps" / f"{stem}_{k}.png").read_bytes()
            bg = _read(s.bg)
            assert bg.shape == (h, w, 3)
            # the stored background is the one under the composite
            np.testing.assert_array_equal(adobe_blend(_read(s.fg), bg, alpha), ref)


def test_train_split_manifest_and_composites(dataset, prepared):
    out, _ = prepared
    samples = read_manifest(out / "train")
    assert len(samples) == TRAIN_PER_FG * len(dataset["train_fgs"])
    root = dataset["root"] / "Training_set"
    groups = {n: g for g, fgs in TRAIN_FG.items() for n in fgs}
    for i, name in enumerate(dataset["train_fgs"]):
        for k in (0, 1, 2, 99):
            s = samples[i * TRAIN_PER_FG + k]
            assert s.trimap is None and s.alpha.name == f"{name[:-4]}.png"
            ref = reference_composite(root / groups[name] / "fg" / name,
                                      root / groups[name] / "alpha" / name,
                                      dataset["coco"] / dataset["train_bgs"][i * TRAIN_PER_FG + k])
            np.testing.assert_array_equal(_read(s.image), ref, err_msg=s.name)
            np.testing.assert_array_equal(adobe_blend(_read(s.fg), _read(s.bg), _read(s.alpha)), ref)


def test_blend_matches_reference_on_every_alpha_value():
    rng = np.random.default_rng(1)
    alpha = np.tile(np.arange(256, dtype=np.uint8), (4, 1))
    fg = rng.integers(0, 256, (4, 256, 3), dtype=np.uint8)
    bg = rng.integers(0, 256, (4, 256, 3), dtype=np.uint8)
    ref = np.array([[[int(a / 255 * f[c] + (1 - a / 255) * b[c]) if 0 < a < 255 else
                      (f[c] if a == 255 else b[c]) for c in range(3)]
                     for a, f, b in zip(ra, rf, rb)] for ra, rf, rb in zip(alpha, fg, bg)], np.uint8)
    np.testing.assert_array_equal(adobe_blend(fg, bg, alpha), ref)
    # a formula that looks equivalent is not: the exact expression order matters on some pixels
    other = (bg + alpha[..., None] / 255 * (fg.astype(np.float64) - bg)).astype(np.uint8)
    assert (other != ref).any()


def test_background_upscale_size_uses_ceil():
    bg = np.zeros((10, 7, 3), np.uint8)
    assert adobe_background(bg, 29, 23).shape == (23, 29, 3)
    from PIL import Image as _Image
    big = _Image.fromarray(bg).resize((30, 42), _Image.BICUBIC)  # ceil(7 * 29/7) = 30, not 29
    assert big.size == (30, 42)


def test_rerun_skips_existing_and_restores_missing(dataset, prepared):
    out, _ = prepared
    merged = out / "test" / "merged" / "cat_3.png"
    before = merged.read_bytes()
    other = out / "test" / "merged" / "dog_5.png"
    stamp = other.stat().st_mtime_ns
    merged.unlink()
    (out / "test" / "merged" / ".cat_4.junk.png.tmp").write_bytes(b"left by a killed run")
    report = prepare_adobe(dataset["root"], dataset["coco"], dataset["voc"], out, "test", workers=1)
    assert report.errors == [] and report.counts["test"] == 40
    assert merged.read_bytes() == before
    assert other.stat().st_mtime_ns == stamp
    assert not list((out / "test" / "merged").glob(".*.tmp"))


def test_manifest_round_trip(prepared, tmp_path):
    out, _ = prepared
    samples = read_manifest(out / "test")
    copy = write_manifest(tmp_path / "m" / "manifest.csv", samples)

    def resolved(rows):
        return [(s.name, *(p and p.resolve() for p in (s.image, s.alpha, s.trimap, s.fg, s.bg)))
                for s in rows]

    assert resolved(read_manifest(copy)) == resolved(samples)
    assert "\\" not in (out / "test" / "manifest.csv").read_text()
    assert all(p is None or p.is_file() for s in samples for p in (s.image, s.alpha, s.trimap, s.fg, s.bg))


def test_a_manifest_saved_with_a_byte_order_mark_reads(tmp_path):
    """A manifest saved by a spreadsheet starts with a UTF-8 BOM: 'manifest lacks the column(s) name'."""
    (tmp_path / "manifest.csv").write_bytes(b"\xef\xbb\xbfname,image,alpha,trimap,fg,bg\r\na,,alpha/a.png,,,\r\n")
    assert [s.name for s in read_manifest(tmp_path)] == ["a"]


def test_a_manifest_that_is_not_utf8_or_not_csv_is_one_usage_line(tmp_path):
    """A manifest from elsewhere saved in a code page (or a field over csv's 128 KiB limit): eval --data
    and train ended in UnicodeDecodeError's (or csv.Error's) traceback."""
    (tmp_path / "manifest.csv").write_bytes(b"name,image,alpha\ncaf\xe9,merged/a.png,alpha/a.png\n")
    with pytest.raises(UsageError, match=re.escape(f"{tmp_path / 'manifest.csv'}: manifest is not UTF-8 text "
                                                   "(byte 0xe9 at offset 20)")):
        read_manifest(tmp_path)
    (tmp_path / "manifest.csv").write_text('name,image,alpha\n"' + "x" * 200000 + '",a,b\n')
    with pytest.raises(UsageError, match="manifest.csv: not readable as CSV \\(field larger than field limit"):
        read_manifest(tmp_path)



def test_a_manifest_without_a_name_or_alpha_column_names_every_missing_one(tmp_path):
    """name and alpha are the columns every split has: a manifest lacking them is one usage line
    listing all that are missing; an absent manifest says how to make one."""
    (tmp_path / "manifest.csv").write_text("name,image\na,merged/a.png\n")
    with pytest.raises(UsageError, match=r"manifest.csv: manifest lacks the column\(s\) alpha$"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.csv").write_text("image,trimap\nmerged/a.png,trimaps/a.png\n")
    with pytest.raises(UsageError, match=r"manifest.csv: manifest lacks the column\(s\) name, alpha$"):
        read_manifest(tmp_path)
    with pytest.raises(UsageError, match=re.escape(f"{tmp_path / 'none' / 'manifest.csv'}: no manifest.csv here "
                                                   "(prepare the data with `matte prepare-data`)")):
        read_manifest(tmp_path / "none")
    (tmp_path / "split" / "manifest.csv").mkdir(parents=True)  # a folder of the name is no manifest
    with pytest.raises(UsageError, match="no manifest.csv here"):
        read_manifest(tmp_path / "split")


def test_a_manifest_path_that_does_not_exist_is_a_folder_unless_it_ends_in_csv(tmp_path):
    """manifest_file: a folder (or a path not there yet, not ending in .csv, in any case) gets
    manifest.csv inside it; a .csv or .CSV path is the manifest itself."""
    from mattecli.data.manifest import manifest_file

    assert manifest_file(tmp_path) == tmp_path / "manifest.csv"
    assert manifest_file(tmp_path / "test") == tmp_path / "test" / "manifest.csv"
    assert manifest_file(tmp_path / "mine.csv") == tmp_path / "mine.csv"
    assert manifest_file(tmp_path / "MINE.CSV") == tmp_path / "MINE.CSV"
    path = write_manifest(tmp_path / "Split.CSV", [])
    assert path == tmp_path / "Split.CSV" and path.is_file()


def test_manifest_paths_are_relative_to_its_folder_and_names_kept_as_written(tmp_path):
    """Every row is read, each name as written (spaces and all), and each path joined to the
    manifest's own folder."""
    from mattecli.data.manifest import Sample, missing_files

    (tmp_path / "manifest.csv").write_text("name,image,alpha,trimap,fg,bg\n a ,,alpha/a.png,,,\nb,,alpha/b.png,,,\n")
    assert read_manifest(tmp_path / "manifest.csv") == [Sample(" a ", alpha=tmp_path / "alpha" / "a.png"),
                                                       Sample("b", alpha=tmp_path / "alpha" / "b.png")]
    samples = read_manifest(tmp_path)
    assert missing_files(samples, ("alpha",)) == [tmp_path / "alpha" / "a.png", tmp_path / "alpha" / "b.png"]


def _copy_dataset(dataset, tmp_path):
    import shutil

    root = tmp_path / "Combined_Dataset"
    shutil.copytree(dataset["root"], root)
    return root


def test_bad_inputs_are_named_and_the_batch_goes_on(dataset, tmp_path):
    root = _copy_dataset(dataset, tmp_path)
    group = root / "Test_set/Adobe-licensed images"
    # an alpha of another size, and a corrupt background for one composite of the other foreground
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(group / "alpha" / "cat.png")
    voc = tmp_path / "voc"
    import shutil
    shutil.copytree(dataset["voc"], voc)
    (voc / dataset["test_bgs"][20 + 4]).write_bytes(b"not a jpeg")
    # a corrupt trimap and one of another size: both were copied as they were, for matte eval to
    # trip over later
    (group / "trimaps" / "dog_7.png").write_bytes(b"not a png")
    Image.fromarray(np.zeros((6, 4), np.uint8)).save(group / "trimaps" / "dog_9.png")
    out = tmp_path / "out"
    report = prepare_adobe(root, dataset["coco"], voc, out, "test", workers=1)
    text = "\n".join(report.errors)
    assert "cat.png" in text and "5x5" in text
    assert f"{dataset['test_bgs'][24]}: cannot decode" in text and "dog_4" in text
    assert "dog_7.png: cannot decode" in text and "(sample dog_7)" in text
    w, h = TEST_FG["dog.png"]
    assert f"dog_9.png: trimap is 4x6 but its composite is {w}x{h} (sample dog_9)" in text
    names = [s.name for s in read_manifest(out / "test")]
    assert names == [f"dog_{k}" for k in range(20) if k not in (4, 7, 9)]
    assert not (out / "test" / "merged" / "dog_4.png").exists()
    assert not list(out.rglob("*.tmp"))


def test_a_split_needs_only_its_own_background_folder(dataset, tmp_path):
    """`--split test` (Composition-1k's evaluation) refused a --coco folder that was not on disk."""
    report = prepare_adobe(dataset["root"], tmp_path / "no-coco", dataset["voc"], tmp_path / "out", "test", workers=1)
    assert report.errors == [] and report.counts == {"test": 40}
    with pytest.raises(UsageError, match="--coco .*no-coco: no such folder"):
        prepare_adobe(dataset["root"], tmp_path / "no-coco", dataset["voc"], tmp_path / "out", "train", workers=1)
    with pytest.raises(UsageError, match="--voc .*no-voc: no such folder"):
        prepare_adobe(dataset["root"], dataset["coco"], tmp_path / "no-voc", tmp_path / "out", "all", workers=1)
    # and the option may be left out: the folder need not exist, so it was required for nothing
    from mattecli.cli.prepare_data import app

    result = CliRunner().invoke(app, ["adobe", "--root", str(dataset["root"]), "--voc", str(dataset["voc"]),
                                      "--out", str(tmp_path / "cli"), "--split", "test", "--workers", "1"])
    assert result.exit_code == 0 and "test: 40 samples" in result.output, result.output
    assert [p.name for p in sorted((tmp_path / "cli/test/merged").iterdir())] == sorted(
        p.name for p in (tmp_path / "out/test/merged").iterdir())
    with pytest.raises(UsageError, match=r"^the train split needs --coco \(COCO's train2014 image folder: the "
                                         r"training backgrounds\); --split test prepares the test split alone$"):
        prepare_adobe(dataset["root"], None, dataset["voc"], tmp_path / "out", "all", workers=1)
    with pytest.raises(UsageError, match=r"^the test split needs --voc \(VOC2012's JPEGImages folder: the test "
                                         r"backgrounds\)$"):  # --split test: no other split to suggest
        prepare_d646(tmp_path, dataset["coco"], None, tmp_path / "out", "test", workers=1)
    with pytest.raises(UsageError) as both:  # both missing: both named at once, not one per run
        prepare_adobe(dataset["root"], None, None, tmp_path / "out", "all", workers=1)
    assert str(both.value) == ("the train split needs --coco (COCO's train2014 image folder: the training "
                               "backgrounds); the test split needs --voc (VOC2012's JPEGImages folder: the test "
                               "backgrounds)")


def test_a_background_folder_holding_none_of_the_listed_names_is_one_line(dataset, tmp_path):
    """--coco naming COCO's parent folder (or train2017) failed every training sample on a line of
    its own, 43,100 lines for Composition-1k, and exited 1."""
    (tmp_path / "coco").mkdir()
    (tmp_path / "coco" / "train2014").symlink_to(dataset["coco"])
    with pytest.raises(UsageError, match=r"training_bg_names.txt: none of the 200 backgrounds it lists "
                                         r"\(e.g. COCO_train2014_00000.jpg\) is in .*coco or .*VOC \(--coco is"):
        prepare_adobe(dataset["root"], tmp_path / "coco", dataset["voc"], tmp_path / "out", "train", workers=1)
    assert not (tmp_path / "out" / "train").exists()


def test_cli_exit_codes(dataset, tmp_path):
    from mattecli.cli.prepare_data import app

    root = _copy_dataset(dataset, tmp_path)
    (root / "Test_set/Adobe-licensed images/fg/dog.png").unlink()
    args = ["adobe", "--root", str(root), "--coco", str(dataset["coco"]), "--voc", str(dataset["voc"]),
            "--out", str(tmp_path / "out"), "--split", "test", "--workers", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "dog.png: no such file" in result.output
    assert len(read_manifest(tmp_path / "out" / "test")) == 20


def test_usage_errors(dataset, tmp_path):
    with pytest.raises(UsageError, match="--root"):
        prepare_adobe(tmp_path / "nowhere", dataset["coco"], dataset["voc"], tmp_path / "o")
    (tmp_path / "unpacked").mkdir()  # the archive's folder, one above Combined_Dataset
    (tmp_path / "unpacked" / "Combined_Dataset").symlink_to(dataset["root"])
    with pytest.raises(UsageError,
                       match=r"--root .*unpacked: holds Combined_Dataset/; give --root .*unpacked/Combined_Dataset$"):
        prepare_adobe(tmp_path / "unpacked", dataset["coco"], dataset["voc"], tmp_path / "o")
    root = _copy_dataset(dataset, tmp_path)
    (root / "Test_set/test_fg_names.txt").unlink()
    with pytest.raises(UsageError, match="test_fg_names.txt"):
        prepare_adobe(root, dataset["coco"], dataset["voc"], tmp_path / "o", "test")
    (root / "Test_set/test_fg_names.txt").write_bytes(b"cat.png\r\ndog\xe9.png\r\n")  # was UnicodeDecodeError
    with pytest.raises(UsageError, match=r"test_fg_names.txt: names file is not UTF-8 text \(byte 0xe9 at offset 12\)"):
        prepare_adobe(root, dataset["coco"], dataset["voc"], tmp_path / "o", "test")
    for path in ("sub/dog.png", "../../dog.png", ".."):  # a names file edited by someone: was a ValueError traceback
        (root / "Test_set/test_fg_names.txt").write_text(f"cat.png\n{path}\n")
        with pytest.raises(UsageError, match=re.escape(f"test_fg_names.txt: '{path}' is a path; each line names a "
                                                       "file in its folder")):
            prepare_adobe(root, dataset["coco"], dataset["voc"], tmp_path / "o", "test")
    (root / "Test_set/test_fg_names.txt").write_text("cat.png\ndog.png\nextra.png\n")
    with pytest.raises(UsageError, match="40 background names, 60 needed"):
        prepare_adobe(root, dataset["coco"], dataset["voc"], tmp_path / "o", "test")
    with pytest.raises(UsageError, match="--split"):
        prepare_adobe(root, dataset["coco"], dataset["voc"], tmp_path / "o", "val")


def test_every_splits_names_files_are_checked_before_any_split_is_composed(dataset, tmp_path):
    """--split all with a short test_bg_names.txt composed the whole training split first (43,100
    composites, hours) and then stopped with a usage error that also hid the training failures."""
    root = _copy_dataset(dataset, tmp_path)
    names = (root / "Test_set/test_bg_names.txt").read_text().splitlines()
    (root / "Test_set/test_bg_names.txt").write_text("\n".join(names[:-1]) + "\n")
    with pytest.raises(UsageError, match=r"test_bg_names.txt: 39 background names, 40 needed"):
        prepare_adobe(root, dataset["coco"], dataset["voc"], tmp_path / "out", "all", workers=1)
    assert not (tmp_path / "out" / "train").exists()


def test_a_foreground_in_neither_group_names_both_folders(dataset, tmp_path):
    """A foreground of `Other` missing was reported at `Adobe-licensed images/fg/`, where it never was."""
    root = _copy_dataset(dataset, tmp_path)
    (root / "Training_set/Other/fg/net.jpg").unlink()
    report = prepare_adobe(root, dataset["coco"], dataset["voc"], tmp_path / "out", "train", workers=1)
    train = root / "Training_set"
    assert report.errors == [f"{train / 'Adobe-licensed images/fg/net.jpg'}: no such file, nor in {train / 'Other/fg'} "
                             f"(skipping {TRAIN_PER_FG} composites of net)"]
    assert report.counts == {"train": TRAIN_PER_FG}


def test_d646(dataset, tmp_path):
    rng = np.random.default_rng(3)
    root = tmp_path / "D646"
    for split, names in (("Train", ["a.png"]), ("Test", ["b.png", "c.png"])):
        for sub in ("FG", "GT"):
            (root / split / sub).mkdir(parents=True)
        for n in names:
            Image.fromarray(_rand_rgb(rng, 12, 10)).save(root / split / "FG" / n)
            Image.fromarray(_alpha_rgb(rng, 12, 10)).save(root / split / "GT" / n)
    # enough backgrounds: 80 train (COCO), 40 test (VOC) needed
    coco, voc = tmp_path / "coco", tmp_path / "voc"
    for folder, count in ((coco, 85), (voc, 45)):
        folder.mkdir()
        for i in range(count):
            Image.fromarray(_rand_rgb(rng, 8, 6)).save(folder / f"{i:04d}.jpg")
    out = tmp_path / "out"
    report = prepare_d646(root, coco, voc, out, "all", workers=1, seed=5)
    assert report.errors == [] and report.counts == {"train": 80, "test": 40}
    test = read_manifest(out / "test")
    assert all(s.trimap.is_file() and s.image.is_file() for s in test)
    assert set(np.unique(_read(test[0].trimap))) <= {0, 128, 255}
    record = __import__("json").loads((out / "test" / "trimaps.json").read_text())
    assert record["seed"] == 5 and len(record["radius"]) == 40
    bgs = (out / "test" / "bg_names.txt").read_text().split()
    assert len(set(bgs)) == 40
    s = test[0]
    np.testing.assert_array_equal(_read(s.image), reference_composite(
        root / "Test/FG/b.png", root / "Test/GT/b.png", voc / bgs[0]))
    # same seed, fresh output: same pairing and trimaps
    again = tmp_path / "again"
    prepare_d646(root, coco, voc, again, "test", workers=1, seed=5)
    assert (again / "test" / "bg_names.txt").read_text() == (out / "test" / "bg_names.txt").read_text()
    assert (again / "test/trimap/b_0.png").read_bytes() == (out / "test/trimap/b_0.png").read_bytes()
    assert "trimaps.json" in " ".join(report.notes)
    assert os.path.basename(str(report.manifests["test"])) == "manifest.csv"
    # another seed into the same --out: it reused the first draw and recorded the new seed
    with pytest.raises(UsageError, match=r"its train split was drawn with --seed 5; re-run with --seed 5"):
        prepare_d646(root, coco, voc, out, "all", workers=1, seed=6)
    assert __import__("json").loads((out / "test" / "trimaps.json").read_text())["seed"] == 5


def test_d646_stopped_after_its_draw_keeps_the_seed_of_it(dataset, tmp_path, monkeypatch):
    """Stopped after bg_names.txt and before seed.json: a re-run with another --seed finished the
    first draw and recorded the new seed in trimaps.json (what seed.json is there to refuse)."""
    import mattecli.data.adobe as adobe

    root = tmp_path / "D646"
    for sub in ("FG", "GT"):
        (root / "Test" / sub).mkdir(parents=True)
    Image.fromarray(_rand_rgb(np.random.default_rng(0), 12, 10)).save(root / "Test/FG/b.png")
    Image.fromarray(_alpha_rgb(np.random.default_rng(1), 12, 10)).save(root / "Test/GT/b.png")
    write = adobe.atomic_write

    def stopped_after_the_draw(path, writer):
        write(path, writer)
        if path.name == "bg_names.txt":
            raise KeyboardInterrupt

    monkeypatch.setattr(adobe, "atomic_write", stopped_after_the_draw)
    with pytest.raises(KeyboardInterrupt):
        prepare_d646(root, tmp_path / "coco", dataset["voc"], tmp_path / "out", "test", workers=1, seed=5)
    monkeypatch.setattr(adobe, "atomic_write", write)
    with pytest.raises(UsageError, match="its test split was drawn with --seed 5"):
        prepare_d646(root, tmp_path / "coco", dataset["voc"], tmp_path / "out", "test", workers=1, seed=6)


def test_d646_refused_for_too_few_backgrounds_binds_no_seed(dataset, tmp_path):
    """Too few backgrounds is a usage error before any draw, but it left seed.json behind: the
    re-run with the backgrounds fixed and another --seed was refused as 'drawn with --seed 0'."""
    root = tmp_path / "D646"
    for sub in ("FG", "GT"):
        (root / "Test" / sub).mkdir(parents=True)
    Image.fromarray(_rand_rgb(np.random.default_rng(0), 12, 10)).save(root / "Test/FG/b.png")
    Image.fromarray(_alpha_rgb(np.random.default_rng(1), 12, 10)).save(root / "Test/GT/b.png")
    voc = tmp_path / "voc"
    voc.mkdir()
    for i in range(19):  # 20 needed
        Image.fromarray(_rand_rgb(np.random.default_rng(i), 8, 6)).save(voc / f"{i:04d}.jpg")
    with pytest.raises(UsageError, match="19 images, 20 backgrounds needed"):
        prepare_d646(root, tmp_path / "coco", voc, tmp_path / "out", "test", workers=1, seed=0)
    assert not (tmp_path / "out" / "test" / "seed.json").exists()
    Image.fromarray(_rand_rgb(np.random.default_rng(19), 8, 6)).save(voc / "0019.jpg")
    report = prepare_d646(root, tmp_path / "coco", voc, tmp_path / "out", "test", workers=1, seed=3)
    assert report.counts == {"test": 20}
    assert __import__("json").loads((tmp_path / "out" / "test" / "seed.json").read_text()) == {"seed": 3}

def test_a_rerun_removes_the_temp_files_a_killed_run_left_in_the_split_folder(dataset, tmp_path):
    """Only the output folders under the split were cleared: a run killed while writing
    manifest.csv left its temp file beside it for good."""
    (tmp_path / "out" / "test" / "merged").mkdir(parents=True)
    stale = [tmp_path / "out/test/.manifest.x1.csv.tmp", tmp_path / "out/test/merged/.cat_0.y2.png.tmp"]
    for path in stale:
        path.write_text("half")
    prepare_adobe(dataset["root"], dataset["coco"], dataset["voc"], tmp_path / "out", "test", workers=1)
    assert not any(p.exists() for p in stale)
    from mattecli.data.synthetic import prepare_synthetic  # which cleared none

    for path in stale:
        path.write_text("half")
    prepare_synthetic(tmp_path / "out", n_train=0, n_test=1, size=32)
    assert not any(p.exists() for p in stale)


def test_a_split_whose_every_input_fails_gets_an_empty_manifest_in_its_folder(dataset, tmp_path):
    """Every test foreground missing: the manifest was written as a file named `OUT/test`, and the
    re-run after restoring the inputs died with NotADirectoryError."""
    import shutil

    root = _copy_dataset(dataset, tmp_path)
    fg = root / "Test_set/Adobe-licensed images/fg"
    shutil.move(fg, tmp_path / "fg")
    out = tmp_path / "out"
    report = prepare_adobe(root, dataset["coco"], dataset["voc"], out, "test", workers=1)
    assert len(report.errors) == 2 and report.manifests["test"] == out / "test" / "manifest.csv"
    assert read_manifest(out / "test") == []
    shutil.move(tmp_path / "fg", fg)
    report = prepare_adobe(root, dataset["coco"], dataset["voc"], out, "test", workers=1)
    assert report.errors == [] and len(read_manifest(out / "test")) == 40


def test_an_out_that_is_a_file_is_a_usage_error_before_any_work(dataset, tmp_path):
    """`--out` naming a file (or a split folder that is a file) was a NotADirectoryError traceback
    from the first worker that wrote there."""
    from mattecli.data.synthetic import prepare_synthetic

    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError, match="--out .*file is a file, not a folder"):
        prepare_adobe(dataset["root"], dataset["coco"], dataset["voc"], tmp_path / "file", "test")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "train").write_text("")
    with pytest.raises(UsageError, match="train is a file, not a folder"):
        prepare_synthetic(tmp_path / "out", n_train=1, n_test=1, size=32)
    assert not (tmp_path / "out" / "test").exists()


def _slow_write(path):
    import time

    from mattecli.files import atomic_write

    atomic_write(path, lambda tmp: (tmp.write_text("half"), time.sleep(60)))


def test_workers_stopped_by_ctrl_c_leave_no_temp_file(tmp_path):
    """Ctrl-C in `prepare-data adobe --workers 2` left the temp files of the writes under way (the
    pool terminates its workers, and SIGTERM skipped atomic_write's clean-up)."""
    import time

    from mattecli.data.adobe import _worker_signals
    from mattecli.parallel import pool

    with pytest.raises(KeyboardInterrupt):
        with pool(1, processes=True, initializer=_worker_signals) as executor:
            executor.submit(_slow_write, tmp_path / "a.png")
            deadline = time.monotonic() + 60
            while not list(tmp_path.glob(".*.tmp")) and time.monotonic() < deadline:
                time.sleep(0.05)
            raise KeyboardInterrupt
    assert not list(tmp_path.iterdir())


def test_text_files_are_written_as_utf8_whatever_the_locale(tmp_path):
    """On Windows open() writes in the locale's code page (cp1252): a manifest, names file or CSV
    holding 'café' or '猫' failed to write, or was written in bytes the readers (UTF-8) refuse.
    Python's EncodingWarning flags any text write that leaves the encoding to the locale."""
    import subprocess
    import sys

    script = ("from pathlib import Path\n"
              "from mattecli.data.adobe import _names_file, read_names\n"
              "from mattecli.data.manifest import Sample, read_manifest, write_manifest\n"
              "from mattecli.files import write_text\n"
              f"out = Path({str(tmp_path)!r})\n"
              "write_manifest(out, [Sample('猫 café', alpha=out / 'alpha' / '猫 café.png')])\n"
              "assert read_manifest(out)[0].alpha.name == '猫 café.png'\n"
              "_names_file(out / 'fg_names.txt', lambda: ['猫 café.png'])\n"
              "assert read_names(out / 'fg_names.txt') == ['猫 café.png']\n"
              "write_text(out / 'eval.csv', 'name\\n猫 café\\n')\n"
              "assert (out / 'eval.csv').read_bytes() == 'name\\n猫 café\\n'.encode()\n")
    run = subprocess.run([sys.executable, "-X", "warn_default_encoding", "-W", "error::EncodingWarning", "-c", script],
                         capture_output=True, text=True, encoding="utf-8")
    assert run.returncode == 0, run.stderr


def test_two_foregrounds_with_one_stem_are_refused_before_anything_is_written(dataset, tmp_path):
    """D646-style FG/a.jpg and FG/a.png (a converted copy left beside the original) both wrote their
    samples as a_0..a_79: 160 manifest rows of 80 names, one foreground's files paired with the
    other's backgrounds. Adobe's names files the same, and a name listed twice."""
    rng = np.random.default_rng(4)
    root = tmp_path / "D646"
    for sub in ("FG", "GT"):
        (root / "Test" / sub).mkdir(parents=True)
    for n in ("a.jpg", "a.png"):
        Image.fromarray(_rand_rgb(rng, 12, 10)).save(root / "Test" / "FG" / n)
        Image.fromarray(_alpha_rgb(rng, 12, 10)).save(root / "Test" / "GT" / n)
    with pytest.raises(UsageError, match=r"FG: foreground a.png and a.jpg share the stem 'a', which names its "
                                         r"samples and files: rename one"):
        prepare_d646(root, tmp_path / "coco", dataset["voc"], tmp_path / "out", "test", workers=1)
    assert not (tmp_path / "out" / "test" / "fg_names.txt").exists()  # a re-run lists the folder afresh
    names = root / "names.txt"
    names.write_text("a.png\na.png\n")
    with pytest.raises(UsageError, match="foreground a.png is listed twice"):
        plan_jobs(["a.png", "a.png"], ["x.jpg"] * 2, 1, [root / "Test" / "FG"], [root / "Test" / "GT"],
                  [dataset["voc"]], tmp_path / "o", merged=True, trimap_dir=None, names_file=names,
                  alpha_per_composite=True)


@pytest.mark.parametrize("name", [os.fsdecode(b"caf\xe9.png"), "two\nlines.png", " edge.png"])
def test_a_foreground_name_a_names_file_cannot_hold_is_one_line(dataset, tmp_path, name):
    """An upload named in Latin-1 was a UnicodeEncodeError traceback writing fg_names.txt; a name
    with a line break or edge spaces would be read back from it as other names by a re-run."""
    rng = np.random.default_rng(5)
    root = tmp_path / "D646"
    for sub in ("FG", "GT"):
        (root / "Test" / sub).mkdir(parents=True)
        Image.fromarray(_alpha_rgb(rng, 12, 10)).save(root / "Test" / sub / name, format="PNG")
    with pytest.raises(UsageError, match="fg_names.txt: cannot record the file name .* rename that file"):
        prepare_d646(root, tmp_path / "coco", dataset["voc"], tmp_path / "out", "test", workers=1)
    assert not (tmp_path / "out" / "test" / "fg_names.txt").exists()


def test_a_foreground_turned_by_its_exif_tag_says_so(dataset, tmp_path):
    """A phone photo as a foreground is stored landscape with an EXIF rotation; its alpha, made on the
    upright picture, is portrait. The failure said only that the sizes differ, while every viewer
    shows the two matching."""
    root = tmp_path / "D646"
    for sub in ("FG", "GT"):
        (root / "Test" / sub).mkdir(parents=True)
    photo = Image.fromarray(_rand_rgb(np.random.default_rng(5), 14, 10))  # 14 wide, 10 high
    exif = photo.getexif()
    exif[0x0112] = 6  # rotated 90 CW: shown 10 wide, 14 high
    photo.save(root / "Test" / "FG" / "p.jpg", exif=exif)
    Image.fromarray(np.zeros((14, 10), np.uint8)).save(root / "Test" / "GT" / "p.jpg")
    report = prepare_d646(root, tmp_path / "coco", dataset["voc"], tmp_path / "out", "test", workers=1)
    assert len(report.errors) == 1
    assert "alpha is 10x14 but its foreground" in report.errors[0]
    assert "(p.jpg's EXIF tag says 'rotated 90 CW', which is ignored here as Adobe's script ignores it: save the " \
           "file upright)" in report.errors[0]


def test_the_default_workers_are_the_cores_this_process_may_use(dataset, tmp_path, monkeypatch):
    """Not os.cpu_count(): a job scheduler or a container that gives the process 3 of a machine's
    64 cores started 64 worker processes."""
    from mattecli.data import adobe

    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 5, 9}, raising=False)
    real, asked = adobe.run_jobs, []

    def recorded(jobs, workers, label):
        asked.append(workers)
        return real(jobs, 1, label)  # one process is enough to check the rest

    monkeypatch.setattr(adobe, "run_jobs", recorded)
    report = prepare_adobe(dataset["root"], dataset["coco"], dataset["voc"], tmp_path / "out", "test")
    assert report.errors == [] and asked == [3]


def test_prepare_data_notes_go_to_stderr_as_every_commands_do(capsys):
    """They went to stdout as `note: ...`, beside the manifests' lines; infer, trimap and train
    print `matte: note: ...` on stderr."""
    from types import SimpleNamespace

    from mattecli.cli.prepare_data import _report

    _report(SimpleNamespace(manifests={"test": "o/test/manifest.csv"}, counts={"test": 3}, errors=[],
                            notes=["d646 test trimaps are generated (seed 0), not official: o/test/trimaps.json"]))
    out, err = capsys.readouterr()
    assert out == "test: 3 samples -> o/test/manifest.csv\n"
    assert err == "matte: note: d646 test trimaps are generated (seed 0), not official: o/test/trimaps.json\n"


def test_the_output_stem_drops_only_the_extension_as_adobes_script_does():
    """The script names a composite `im_name[:len(im_name)-4] + '_' + str(k)`: only the last dot goes."""
    from mattecli.data.adobe import stem_of

    assert stem_of("a.b.png") == "a.b" and stem_of("cat.jpg") == "cat" and stem_of("noext") == "noext"


def test_a_names_file_saved_with_a_byte_order_mark_reads(tmp_path):
    """Notepad saves UTF-8 with a BOM, which is not whitespace: the first name came out as '\\ufeffcat.png'."""
    from mattecli.data.adobe import read_names

    (tmp_path / "names.txt").write_bytes(b"\xef\xbb\xbfcat.png\r\ndog.png\r\n")
    assert read_names(tmp_path / "names.txt") == ["cat.png", "dog.png"]


def test_a_missing_background_fails_its_sample_alone_and_keeps_the_pairing(dataset, tmp_path):
    import shutil

    voc = tmp_path / "voc"
    shutil.copytree(dataset["voc"], voc)
    (voc / dataset["test_bgs"][20 + 4]).unlink()
    out = tmp_path / "out"
    report = prepare_adobe(dataset["root"], None, voc, out, "test", workers=1)
    assert len(report.errors) == 1
    assert dataset["test_bgs"][24] in report.errors[0] and "(sample dog_4)" in report.errors[0]
    assert [s.name for s in read_manifest(out / "test")][20:] == [f"dog_{k}" for k in range(20) if k != 4]
    group = dataset["root"] / "Test_set/Adobe-licensed images"
    np.testing.assert_array_equal(_read(out / "test/merged/dog_5.png"), reference_composite(
        group / "fg/dog.png", group / "alpha/dog.png", voc / dataset["test_bgs"][25]))


def test_a_rerun_leaves_the_foreground_and_alpha_files_it_finds_alone(dataset, tmp_path):
    out = tmp_path / "out"
    prepare_adobe(dataset["root"], None, dataset["voc"], out, "test", workers=1)
    (out / "test/bg/cat_3.png").unlink()
    kept = [out / "test/fg/cat.png", out / "test/alpha/cat_3.png"]
    before = [(p.stat().st_ino, p.stat().st_mtime_ns) for p in kept]
    report = prepare_adobe(dataset["root"], None, dataset["voc"], out, "test", workers=1)
    assert report.errors == [] and (out / "test/bg/cat_3.png").is_file()
    assert [(p.stat().st_ino, p.stat().st_mtime_ns) for p in kept] == before


def test_an_alpha_or_trimap_one_column_narrower_is_refused(dataset, tmp_path):
    """Same height, other width: a check of the heights alone let them through."""
    root = _copy_dataset(dataset, tmp_path)
    group = root / "Test_set/Adobe-licensed images"
    (cw, ch), (dw, dh) = TEST_FG["cat.png"], TEST_FG["dog.png"]
    Image.fromarray(np.zeros((ch, cw - 1), np.uint8)).save(group / "alpha" / "cat.png")
    Image.fromarray(np.zeros((dh, dw - 1), np.uint8)).save(group / "trimaps" / "dog_2.png")
    report = prepare_adobe(root, None, dataset["voc"], tmp_path / "out", "test", workers=1)
    text = "\n".join(report.errors)
    assert f"alpha is {cw - 1}x{ch} but its foreground" in text
    assert f"dog_2.png: trimap is {dw - 1}x{dh} but its composite is {dw}x{dh} (sample dog_2)" in text
    assert [s.name for s in read_manifest(tmp_path / "out/test")] == [f"dog_{k}" for k in range(20) if k != 2]


def test_one_worker_runs_in_this_process(dataset, tmp_path, monkeypatch):
    """`--workers 1` composes in the calling process (no pool of one spawned process)."""
    from mattecli.data import adobe

    real, pids = adobe.run_job, []
    monkeypatch.setattr(adobe, "run_job", lambda job: pids.append(os.getpid()) or real(job))
    report = prepare_adobe(dataset["root"], None, dataset["voc"], tmp_path / "out", "test", workers=1)
    assert report.counts == {"test": 40} and pids == [os.getpid()] * 2


def test_d646_skips_hidden_files_and_its_trimaps_keep_opaque_pixels_known(dataset, tmp_path):
    """A macOS copy leaves `._b.png` beside `b.png`: it is no foreground. A generated trimap is 255 where
    the alpha is 255 away from the edge, 0 where it is 0."""
    root = tmp_path / "D646"
    for sub in ("FG", "GT"):
        (root / "Test" / sub).mkdir(parents=True)
    alpha = np.zeros((40, 40), np.uint8)
    alpha[:, 20:] = 255
    Image.fromarray(_rand_rgb(np.random.default_rng(1), 40, 40)).save(root / "Test/FG/b.png")
    Image.fromarray(alpha).save(root / "Test/GT/b.png")
    (root / "Test/FG/._b.png").write_bytes(b"AppleDouble")
    voc = tmp_path / "voc"
    voc.mkdir()
    for i in range(20):
        Image.fromarray(_rand_rgb(np.random.default_rng(i), 8, 6)).save(voc / f"{i:04d}.jpg")
    out = tmp_path / "out"
    report = prepare_d646(root, None, voc, out, "test", workers=1)
    assert report.errors == [] and report.counts == {"test": 20}
    assert (out / "test/fg_names.txt").read_text() == "b.png\n"
    trimap = _read(out / "test/trimap/b_0.png")
    assert trimap.shape == (40, 40) and (trimap[:, 39] == 255).all() and (trimap[:, 0] == 0).all()


@pytest.mark.parametrize("tag", [5, 8])
def test_every_exif_tag_that_swaps_the_sides_is_named(dataset, tmp_path, tag):
    """Tags 5 to 8 turn the picture by 90 degrees (5 and 7 also mirror it), so each explains a
    width/height swap; the first of them was left out."""
    root = tmp_path / "D646"
    for sub in ("FG", "GT"):
        (root / "Test" / sub).mkdir(parents=True)
    photo = Image.fromarray(_rand_rgb(np.random.default_rng(5), 14, 10))
    exif = photo.getexif()
    exif[0x0112] = tag
    photo.save(root / "Test" / "FG" / "p.jpg", exif=exif)
    Image.fromarray(np.zeros((14, 10), np.uint8)).save(root / "Test" / "GT" / "p.jpg")
    report = prepare_d646(root, None, dataset["voc"], tmp_path / "out", "test", workers=1)
    assert len(report.errors) == 1 and "(p.jpg's EXIF tag says '" in report.errors[0]


def test_a_test_background_is_read_from_voc_before_coco(dataset, tmp_path):
    """Composition-1k's backgrounds are VOC's: a COCO file of the same name (a merged image folder) is not used."""
    coco = tmp_path / "coco"
    coco.mkdir()
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(coco / dataset["test_bgs"][0])
    out = tmp_path / "out"
    assert prepare_adobe(dataset["root"], coco, dataset["voc"], out, "test", workers=1).errors == []
    group = dataset["root"] / "Test_set/Adobe-licensed images"
    np.testing.assert_array_equal(_read(out / "test/merged/cat_0.png"), reference_composite(
        group / "fg/cat.png", group / "alpha/cat.png", dataset["voc"] / dataset["test_bgs"][0]))


def test_a_root_with_its_own_test_set_is_used_even_beside_a_nested_combined_dataset(dataset, tmp_path):
    """Only a --root holding neither Training_set/ nor Test_set/ is the folder above Adobe's archive."""
    import shutil

    root = _copy_dataset(dataset, tmp_path)
    shutil.rmtree(root / "Training_set")
    (root / "Combined_Dataset").mkdir()
    report = prepare_adobe(root, None, dataset["voc"], tmp_path / "out", "test", workers=1)
    assert report.errors == [] and report.counts == {"test": 40}
    with pytest.raises(UsageError, match="holds Combined_Dataset/; give --root"):
        prepare_adobe(tmp_path, None, dataset["voc"], tmp_path / "out", "test", workers=1)
