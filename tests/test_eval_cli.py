"""`matte eval` end to end on tiny folders and a tiny prepared split."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mattecli import metrics
from mattecli.cli import app
from mattecli.imageio import read_gray, write_png

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str):
    return CliRunner().invoke(app, ["eval", *map(str, args)])


def make_case(rng, shape=(24, 32)):
    gt = rng.integers(0, 256, shape).astype(np.uint8)
    pred = np.clip(gt.astype(int) + rng.integers(-40, 41, shape), 0, 255).astype(np.uint8)
    trimap = rng.choice(np.array([0, 128, 255], np.uint8), size=shape)
    return pred, gt, trimap


@pytest.fixture
def folders(tmp_path):
    rng = np.random.default_rng(0)
    cases = {}
    for name in ("a", "b", "c"):
        pred, gt, trimap = make_case(rng)
        cases[name] = (pred, gt, trimap)
        write_png(tmp_path / "pred" / f"{name}.png", pred)
        write_png(tmp_path / "gt" / f"{name}.png", gt)
        write_png(tmp_path / "trimap" / f"{name}.png", trimap)
    return tmp_path, cases


def args_for(root: Path, *extra):
    return ["--pred", root / "pred", "--gt", root / "gt", "--trimap", root / "trimap", "--workers", "1", *extra]


def test_json_csv_and_table(folders):
    root, cases = folders
    result = run(*args_for(root, "--json", root / "out.json", "--csv", root / "out.csv"))
    assert result.exit_code == 0, result.output
    assert "SAD" in result.stdout and "Conn" in result.stdout
    data = json.loads((root / "out.json").read_text())
    assert set(data) == {"count", "mean", "images"}
    assert data["count"] == 3
    assert list(data["mean"]) == ["sad", "mse", "grad", "conn"]
    assert [im["name"] for im in data["images"]] == ["a", "b", "c"]
    for image in data["images"]:
        assert list(image) == ["name", "sad", "mse", "grad", "conn"]
        expected = metrics.evaluate(*cases[image["name"]])
        for key in metrics.METRICS:
            assert image[key] == pytest.approx(expected[key], rel=1e-12)
    for key in metrics.METRICS:
        assert data["mean"][key] == pytest.approx(np.mean([im[key] for im in data["images"]]))
    # SAD in thousands: spot-check one image by hand
    pred, gt, trimap = cases["a"]
    by_hand = np.abs(pred.astype(int) - gt)[trimap == 128].sum() / 255 / 1000
    assert data["images"][0]["sad"] == pytest.approx(by_hand)
    rows = list(csv.DictReader((root / "out.csv").open()))
    assert [r["name"] for r in rows] == ["a", "b", "c"]
    assert float(rows[1]["conn"]) == pytest.approx(data["images"][1]["conn"], rel=1e-12)


@pytest.mark.parametrize("option", ["--json", "--csv"])
@pytest.mark.parametrize("target", ["-", "/dev/stdout"])
def test_dash_writes_to_stdout_alone_and_the_table_to_stderr(folders, option, target):
    """`--json -` wrote a file named "-" (and `--json /dev/stdout` put the table before the JSON), so
    `matte eval ... --json - | jq` had nothing, or a table, to read."""
    root, _ = folders
    other = "--csv" if option == "--json" else "--json"
    cmd = [sys.executable, "-m", "mattecli", "eval", *map(str, args_for(root))]
    res = subprocess.run([*cmd, option, target, other, root / "other"], capture_output=True, text=True, cwd=root)
    assert res.returncode == 0, res.stderr
    assert not (root / "-").exists() and "SAD" in res.stderr and (root / "other").is_file()
    if option == "--json":
        assert json.loads(res.stdout)["count"] == 3
    else:
        assert res.stdout.splitlines()[0] == "name,sad,mse,grad,conn" and len(res.stdout.splitlines()) == 4
    res = subprocess.run([*cmd, "--json", "-", "--csv", "-"], capture_output=True, text=True, cwd=root)
    assert res.returncode == 2 and res.stderr == ("matte: error: --json - --csv -: both on standard output would be "
                                                  "mixed; send one to a file\n")


def test_dash_with_stdout_closed_is_a_usage_error_before_any_image(folders):
    """`matte eval ... --json - >&-` evaluated every image, then failed with a traceback
    ("'NoneType' object has no attribute 'write'")."""
    import os

    root, _ = folders
    for option in ("--json", "--csv"):
        res = subprocess.run([sys.executable, "-m", "mattecli", "eval", *map(str, args_for(root)), option, "-"],
                             stdout=None, stderr=subprocess.PIPE, text=True, preexec_fn=lambda: os.close(1))
        assert res.returncode == 2 and res.stderr == f"matte: error: {option} -: standard output is closed\n"


def test_missing_counterpart_is_named_and_the_rest_evaluated(folders):
    root, _ = folders
    (root / "pred" / "b.png").unlink()
    write_png(root / "pred" / "extra.png", np.zeros((24, 32), np.uint8))
    result = run(*args_for(root, "--json", root / "out.json"))
    assert result.exit_code == 1
    assert "b: no prediction in" in result.stderr
    assert "extra: no ground truth in" in result.stderr and "no trimap in" in result.stderr
    data = json.loads((root / "out.json").read_text())
    assert data["count"] == 2 and [im["name"] for im in data["images"]] == ["a", "c"]
    assert {f["name"] for f in data["failed"]} == {"b", "extra"}
    # "2 image(s) not evaluated" of a 3-image folder with 2 evaluated: extra is a name, not an image
    assert result.stderr.splitlines()[-1] == ("matte eval: 2 name(s) not evaluated (each named above); "
                                              "2 image(s) evaluated")


def test_unreadable_file_is_named_and_nothing_left_gives_count_0(folders):
    root, _ = folders
    (root / "pred" / "a.png").write_bytes(b"not a png")
    for name in ("b", "c"):
        (root / "pred" / f"{name}.png").unlink()
    result = run(*args_for(root, "--json", root / "out.json", "--csv", root / "out.csv"))
    assert result.exit_code == 1
    assert any(l.startswith("matte eval: a:") and "cannot decode" in l for l in result.stderr.splitlines())
    data = json.loads((root / "out.json").read_text())
    assert data["count"] == 0 and data["images"] == [] and data["mean"]["sad"] is None
    assert (root / "out.csv").read_text() == "name,sad,mse,grad,conn\n"


def test_control_characters_in_a_name_are_escaped(folders):
    """A prediction named 'x\x1b]0;pwned\x07' reached the terminal as an escape sequence (rich drops the
    BEL, not the ESC), which then swallowed what followed."""
    root, _ = folders
    for folder in ("pred", "gt", "trimap"):
        (root / folder / "a.png").rename(root / folder / "x\x1b]0;pwned\x07.png")
    (root / "pred" / "x\x1b]0;pwned\x07.png").write_bytes(b"not a png")
    result = run(*args_for(root))
    assert result.exit_code == 1 and "\x1b" not in result.stderr
    assert "matte eval: x\\x1b]0;pwned\\x07: " in result.stderr


def test_a_name_that_is_not_utf8_is_written_escaped_in_the_csv(folders):
    """An upload named b'bad\\xff.png' (Python holds 'bad\\udcff'): eval --csv ended in a
    UnicodeEncodeError after all the work, and wrote no CSV; it is written as --json writes it."""
    import os

    root, _ = folders
    for folder in ("pred", "gt", "trimap"):
        os.rename(root / folder / "a.png", os.fsdecode(os.fsencode(root / folder) + b"/bad\xff.png"))
    result = run(*args_for(root, "--csv", root / "out.csv", "--json", root / "out.json"))
    assert result.exit_code == 0, result.output
    assert [line.split(",")[0] for line in (root / "out.csv").read_text(encoding="utf-8").splitlines()] == [
        "name", "b", "bad\\udcff", "c"]
    assert [im["name"] for im in json.loads((root / "out.json").read_text())["images"]] == ["b", "bad\udcff", "c"]


def test_the_json_report_is_readable_utf8_as_infers_is(folders):
    """eval's (and bench's, recipes') JSON was indented by 1 and escaped every non-ASCII name
    (\\u732b for 猫) where infer's report writes it as it is, indented by 2."""
    root, _ = folders
    for folder in ("pred", "gt", "trimap"):
        (root / folder / "a.png").rename(root / folder / "猫.png")
    assert run(*args_for(root, "--json", root / "out.json")).exit_code == 0
    text = (root / "out.json").read_text(encoding="utf-8")
    assert '"name": "猫"' in text and '\n  "count": 3' in text


def test_trimap_without_unknown_pixels_warns(folders):
    """A binary mask given as a trimap scored 0 on every metric without a word, lowering the mean."""
    root, cases = folders
    trimap = np.where(cases["a"][2] == 128, 255, cases["a"][2]).astype(np.uint8)
    write_png(root / "trimap" / "a.png", trimap)
    result = run(*args_for(root, "--json", root / "out.json"))
    assert result.exit_code == 0, result.output
    warning = next(l for l in result.stderr.splitlines() if "warning" in l)
    assert warning.endswith("a.png: trimap has no unknown pixel (128), so every metric is 0 for this image")
    trimap[trimap == 255] = 254
    write_png(root / "trimap" / "a.png", trimap)
    warning = next(l for l in run(*args_for(root)).stderr.splitlines() if "warning" in l)
    assert "values other than 0/128/255 (254)" in warning and warning.endswith(": it has no unknown pixel (128), "
                                                                                 "so every metric is 0 for this image")


def test_size_mismatch_is_named_and_skipped(folders):
    root, _ = folders
    write_png(root / "trimap" / "c.png", np.zeros((24, 31), np.uint8))
    result = run(*args_for(root, "--json", root / "out.json"))
    assert result.exit_code == 1
    line = next(l for l in result.stderr.splitlines() if l.startswith("matte eval: c:"))
    assert "sizes differ" in line and "trimap 31x24" in line
    assert json.loads((root / "out.json").read_text())["count"] == 2


def test_trimap_with_127_warns_and_keeps_exact_128(folders):
    root, cases = folders
    pred, gt, trimap = cases["a"]
    trimap = trimap.copy()
    trimap[0, :7] = 127
    write_png(root / "trimap" / "a.png", trimap)
    result = run(*args_for(root, "--json", root / "out.json"))
    assert result.exit_code == 0, result.output
    warning = next(l for l in result.stderr.splitlines() if "warning" in l)
    assert "a.png" in warning and "7 pixel(s)" in warning and "127" in warning
    image = json.loads((root / "out.json").read_text())["images"][0]
    assert image["sad"] == pytest.approx(np.abs(pred.astype(int) - gt)[trimap == 128].sum() / 255 / 1000)


def test_three_channel_ground_truth_uses_its_first_channel(folders):
    root, cases = folders
    pred, gt, trimap = cases["b"]
    rgb = np.stack([gt, 255 - gt, np.zeros_like(gt)], axis=2)
    write_png(root / "gt" / "b.png", rgb)
    result = run(*args_for(root, "--json", root / "out.json"))
    assert result.exit_code == 0, result.output
    image = json.loads((root / "out.json").read_text())["images"][1]
    assert image["sad"] == pytest.approx(metrics.sad(pred, gt, trimap), rel=1e-12)


@pytest.mark.parametrize("args, message", [
    (["--pred", "P", "--weights", "W.safetensors", "--gt", "G", "--trimap", "T"], "mutually exclusive"),
    ([], "give --pred"),
    (["--pred", "P"], "--pred needs --gt"),
    (["--weights", "W.safetensors"], "--weights needs --data"),
    # docs/commands/eval.md: an option of the other mode is a usage error, one line
    (["--weights", "W.safetensors", "--data", "D", "--gt", "G"], "--gt, --trimap and --images go with --pred"),
    (["--weights", "W.safetensors", "--data", "D", "--images", "I"], "--gt, --trimap and --images go with --pred"),
    (["--pred", "P", "--data", "D", "--trimap", "T"], "--data gives the ground truth, trimaps and images; do not "
                                                      "add --gt, --trimap or --images"),
    (["--pred", "P", "--gt", "G"], "--pred needs --gt DIR and --trimap DIR (or --data)"),
    (["--pred", "P", "--gt", "G", "--trimap", "T", "--workers", "0"], "--workers must be at least 1, not 0"),
])
def test_bad_usage_exits_2_with_one_line(args, message):
    result = run(*args)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.output


@pytest.mark.parametrize("extra,given", [
    (["--device", "cuda"], "--device"),
    (["--device", "auto"], "--device"),  # the default, but given: it says the user expects a model to run
    (["--backend", "onnx"], "--backend"),
    (["--save-pred", "S"], "--save-pred"),
    (["--save-pred", "S", "--device", "cpu", "--backend", "torch"], "--backend, --device, --save-pred"),
])
def test_an_option_of_a_model_run_is_refused_with_pred(folders, extra, given):
    """--device cuda (on a machine without one) and --backend onnx were taken without a word and
    changed nothing, while --save-pred was refused."""
    root, _ = folders
    result = run(*args_for(root, *extra))
    assert (result.exit_code, result.stderr) == (2, f"matte: error: {given}: with --weights only (with --pred the "
                                                    "predictions are files already: no model runs)\n")
    assert not (root / "S").exists()


def test_run_eval_refuses_an_option_of_a_model_run_with_pred_alike(folders):
    from mattecli.cli.eval import run_eval
    from mattecli.errors import UsageError

    root, _ = folders
    with pytest.raises(UsageError, match=r"^--device: with --weights only \(with --pred the predictions are files"):
        run_eval(pred=root / "pred", gt=root / "gt", trimap=root / "trimap", device="cuda", workers=1)
    assert run_eval(pred=root / "pred", gt=root / "gt", trimap=root / "trimap", workers=1) == 0


def test_a_report_of_no_images_is_a_usage_error(folders):
    """--report-worst is how many of the worst images the report shows (docs/commands/eval.md): 0,
    a page of no images, is refused before any image is evaluated."""
    root, _ = folders
    result = run(*args_for(root, "--report", root / "r", "--report-worst", "0"))
    assert (result.exit_code, result.stderr) == (2, "matte: error: --report-worst must be at least 1, not 0\n")
    assert not (root / "r").exists()


def test_missing_folder_exits_2(tmp_path):
    result = run("--pred", tmp_path / "nope", "--gt", tmp_path, "--trimap", tmp_path)
    assert result.exit_code == 2
    assert "no such folder" in result.stderr


def test_workers_in_processes_give_the_same_numbers(folders):
    root, _ = folders
    assert run(*args_for(root, "--json", root / "one.json")).exit_code == 0
    result = run("--pred", root / "pred", "--gt", root / "gt", "--trimap", root / "trimap",
                 "--workers", "2", "--json", root / "two.json")
    assert result.exit_code == 0, result.output
    assert json.loads((root / "one.json").read_text()) == json.loads((root / "two.json").read_text())


def test_a_worker_process_that_dies_is_one_line(folders, monkeypatch):
    """A worker killed (the out-of-memory killer), or one dying as it starts (under spawn, a user's
    script without an `if __name__ == "__main__":` guard): BrokenProcessPool's traceback, naming
    neither. Simulated by a sitecustomize that ends every worker process as it starts."""
    import os

    root, _ = folders
    (root / "site").mkdir()
    (root / "site" / "sitecustomize.py").write_text(
        "import os, sys\nif '--multiprocessing-fork' in sys.argv:\n    os._exit(9)\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(root / "site"), os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run([sys.executable, "-m", "mattecli", "eval", "--pred", root / "pred", "--gt", root / "gt",
                          "--trimap", root / "trimap", "--workers", "2"], capture_output=True, text=True)
    assert res.returncode == 1 and res.stderr.splitlines()[-1] == (
        "matte: error: a worker process ended abruptly (out of memory, or killed); run again with fewer "
        "--workers"), res.stderr


def test_an_output_file_another_program_holds_is_one_line(folders, monkeypatch, capsys):
    """On Windows a --csv open in a spreadsheet cannot be replaced: PermissionError's traceback,
    after the work. Simulated by an os.replace that refuses it."""
    import os

    from mattecli.cli import main

    root, _ = folders
    real = os.replace

    def held(src, dst, *args, **kwargs):
        if str(dst).endswith("m.csv"):
            raise PermissionError(13, "The process cannot access the file because it is being used by another "
                                      "process", str(dst))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", held)
    monkeypatch.setattr(sys, "argv", ["matte", "eval", *map(str, args_for(root, "--csv", root / "m.csv"))])
    with pytest.raises(SystemExit) as done:
        main()
    assert done.value.code == 1
    assert capsys.readouterr().err.splitlines()[-1] == (f"matte: error: {root / 'm.csv'}: The process cannot access "
                                                        "the file because it is being used by another process")
    assert sorted(p.name for p in root.iterdir()) == ["gt", "pred", "trimap"]  # and no temporary file


def test_report_shows_worst_first(folders):
    root, cases = folders
    pred, gt, trimap = cases["c"]
    write_png(root / "pred" / "c.png", 255 - gt)  # by far the worst
    rng = np.random.default_rng(5)
    for name in cases:
        write_png(root / "images" / f"{name}.jpg", rng.integers(0, 256, (24, 32, 3)).astype(np.uint8))
    result = run(*args_for(root, "--report", root / "report", "--report-worst", "2", "--images", root / "images"))
    assert result.exit_code == 0, result.output
    page = (root / "report" / "index.html").read_text()
    assert page.index("#1 c") < page.index("#2 ")
    assert "#3" not in page
    pngs = sorted(p.name for p in (root / "report" / "images").iterdir())
    assert "001_c_image.png" in pngs and "001_c_error.png" in pngs and len(pngs) == 10
    assert (read_gray(root / "report" / "images" / "001_c_prediction.png") == 255 - gt).all()
    assert (root / "report" / "contact_sheet.png").is_file()
    result = run(*args_for(root, "--report-worst", "2"))  # no page to show them on: it was taken without a word
    assert result.exit_code == 2 and result.output.strip() == ("matte: error: --report-worst goes with --report (how "
                                                               "many of the worst images its page shows)")


@pytest.mark.parametrize("bad, says", [("b", "empty file"), ("c", "31x24, its ground truth 32x24")])
def test_a_composite_that_cannot_be_shown_leaves_its_panel_out_of_the_report(folders, bad, says):
    """`--report` with `--images`: a composite that could not be read (cut off, damaged) stopped the
    run after the metrics with 'matte: error: ...' and no page, and one of another size than its
    ground truth (another photo's) was shown beside the matte without a word; each is named in a
    warning and the page is written without its panel."""
    root, cases = folders
    for name in cases:
        write_png(root / "images" / f"{name}.png", np.zeros((24, 32, 3), np.uint8))
    if bad == "b":
        (root / "images" / "b.png").write_bytes(b"")
    else:
        write_png(root / "images" / "c.png", np.zeros((24, 31, 3), np.uint8))
    result = run(*args_for(root, "--report", root / "report", "--images", root / "images"))
    assert result.exit_code == 0, result.output
    assert f"matte eval: warning: {root / 'images' / f'{bad}.png'}: {says}; the report shows {bad} without its " \
           "composite" in result.output
    pngs = [p.name for p in (root / "report" / "images").iterdir()]
    assert sorted(p[4:] for p in pngs if p.endswith("_image.png")) == [f"{n}_image.png" for n in "abc" if n != bad]
    assert len(pngs) == 14 and (root / "report" / "index.html").is_file()


def test_model_on_a_prepared_split(tmp_path):
    from mattecli.data.manifest import Sample, write_manifest
    from mattecli.models import build_model
    from mattecli.recipes import load_recipe
    from mattecli.weights import save_weights

    rng = np.random.default_rng(1)
    split = tmp_path / "test"
    samples = []
    for k in range(2):
        name = f"s_{k}"
        image = rng.integers(0, 256, (64, 96, 3)).astype(np.uint8)
        _, alpha, trimap = make_case(rng, (64, 96))
        write_png(split / "merged" / f"{name}.png", image)
        write_png(split / "alpha" / f"{name}.png", alpha)
        write_png(split / "trimap" / f"{name}.png", trimap)
        samples.append(Sample(name, image=split / "merged" / f"{name}.png",
                              alpha=split / "alpha" / f"{name}.png", trimap=split / "trimap" / f"{name}.png"))
    write_manifest(split, samples)
    recipe = load_recipe("indexnet-unet-maxunpool")
    weights = save_weights(build_model(recipe), recipe, tmp_path / "w.safetensors")

    result = run("--weights", weights, "--data", split, "--save-pred", tmp_path / "pred",
                 "--json", tmp_path / "model.json", "--report", tmp_path / "report", "--workers", "1")
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "model.json").read_text())
    assert data["count"] == 2
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == ["s_0.png", "s_1.png"]
    for image in data["images"]:
        pred = read_gray(tmp_path / "pred" / f"{image['name']}.png")
        trimap = read_gray(split / "trimap" / f"{image['name']}.png")
        assert (pred[trimap == 0] == 0).all() and (pred[trimap == 255] == 255).all()
        expected = metrics.evaluate(pred, read_gray(split / "alpha" / f"{image['name']}.png"), trimap)
        assert image["sad"] == pytest.approx(expected["sad"], rel=1e-12)
    # the saved predictions evaluated as files (with --data giving gt and trimaps) agree
    again = run("--pred", tmp_path / "pred", "--data", split, "--json", tmp_path / "files.json", "--workers", "1")
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "files.json").read_text()) == data
    assert (tmp_path / "report" / "index.html").read_text().count("class='entry'") == 2
    # the dataset root that `matte train --data` takes: named, with the split to give instead
    root = run("--weights", weights, "--data", tmp_path)
    assert root.exit_code == 2 and root.stderr.strip() == (
        f"matte: error: --data {tmp_path}: a prepared dataset with train/ and test/; give the split to "
        f"evaluate on, e.g. --data {split}")
    # --save-pred onto the ground truth: it overwrote each alpha with its prediction, scored against itself
    truth = {p: p.read_bytes() for p in (split / "alpha").iterdir()}
    onto = run("--weights", weights, "--data", split, "--save-pred", split / "alpha", "--workers", "1")
    assert onto.exit_code == 2 and onto.stderr.strip() == (
        f"matte: error: --save-pred {split / 'alpha'}: {split / 'alpha' / 's_0.png'} is an input of --data; "
        "save the predictions in another folder")
    assert {p: p.read_bytes() for p in (split / "alpha").iterdir()} == truth


@pytest.mark.parametrize("name", ["../../escaped", "/tmp/abs", "sub/../../escaped"])
def test_a_manifest_name_that_leaves_the_save_pred_folder_is_refused_before_any_image(tmp_path, name):
    """A manifest from someone else named a sample '../../escaped' (or an absolute path): eval
    --save-pred wrote that prediction outside the folder, wherever the name pointed."""
    from mattecli.data.manifest import Sample, write_manifest

    split = tmp_path / "data" / "test"
    _, alpha, trimap = make_case(np.random.default_rng(0))
    for folder, array in (("alpha", alpha), ("trimap", trimap), ("merged", np.dstack([alpha] * 3))):
        write_png(split / folder / "a.png", array)
    write_manifest(split, [Sample(name, image=split / "merged" / "a.png", alpha=split / "alpha" / "a.png",
                                  trimap=split / "trimap" / "a.png")])
    (tmp_path / "w.safetensors").write_bytes(b"never read: refused before the model loads")
    result = run("--weights", tmp_path / "w.safetensors", "--data", split, "--save-pred", tmp_path / "pred")
    assert result.exit_code == 2 and f"the manifest's sample name {name!r} would put its prediction outside" in \
        result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "pred").exists() and not (tmp_path / "escaped.png").exists()


def test_json_or_csv_onto_an_input_is_refused_before_any_image(folders, tmp_path):
    """`--csv data/test/manifest.csv` (a slip for m.csv) replaced the split's manifest with the
    metrics after the run, and `--json gt/a.png` a ground truth."""
    from mattecli.data.synthetic import prepare_synthetic

    root, _ = folders
    prepare_synthetic(tmp_path / "data", n_train=0, n_test=1, size=32)
    split = tmp_path / "data" / "test"
    cases = [(["--pred", split / "alpha", "--data", split, "--workers", "1"], "--csv", split / "manifest.csv"),
             (args_for(root), "--json", root / "gt" / "a.png"),
             (args_for(root), "--csv", root / "pred" / "b.png")]
    reasons = ["is an input of the evaluation; write it to another file",
               "an image's name; the report is JSON (name it .json)",
               "an image's name; the report is CSV (name it .csv)"]
    for (args, option, target), reason in zip(cases, reasons):
        before = target.read_bytes()
        result = run(*args, option, target)
        assert result.exit_code == 2 and result.stderr == f"matte: error: {option} {target}: {reason}\n"
        assert target.read_bytes() == before


def test_eval_outputs_onto_each_other_are_refused_before_any_image(folders, tmp_path):
    """`--json X --csv X` (the CSV replaced the JSON), `--json p/a.png --save-pred p` (a saved
    prediction replaced) and `--json R/index.html --report R` (the page replaced the JSON) ran to
    the end, exit 0, one output lost; only both on stdout was refused. The function form too."""
    from mattecli.cli.eval import run_eval
    from mattecli.errors import UsageError

    root, _ = folders
    same = tmp_path / "same.txt"
    cases = [(["--json", same, "--csv", same], f"--json {same} --csv {same}: the same file, so the CSV would "
                                               "replace the JSON; write them to two files"),
             (["--json", tmp_path / "p" / "a.png"], f"--json {tmp_path / 'p' / 'a.png'}: an image's name; the "
                                                    "report is JSON (name it .json)"),
             (["--report", tmp_path / "r", "--csv", tmp_path / "r" / "index.html"],
              f"--csv {tmp_path / 'r' / 'index.html'}: is the --report page; write it to another file")]
    for extra, message in cases:
        result = run(*args_for(root, *extra))
        assert (result.exit_code, result.stderr) == (2, f"matte: error: {message}\n")
    assert not same.exists() and not (tmp_path / "r").exists()
    with pytest.raises(UsageError, match="the same file"):
        run_eval(pred=root / "pred", gt=root / "gt", trimap=root / "trimap", json_out=same, csv_out=same)
    with pytest.raises(UsageError, match="--report-worst goes with --report"):
        run_eval(pred=root / "pred", gt=root / "gt", trimap=root / "trimap", report_worst=5)


def test_a_model_whose_output_is_not_finite_fails_each_image_in_one_line(tmp_path):
    """A diverged model (NaN weights) was the pipeline's ValueError traceback."""
    import torch

    from mattecli.data.synthetic import prepare_synthetic
    from mattecli.models import build_model
    from mattecli.recipes import load_recipe
    from mattecli.weights import save_weights

    prepare_synthetic(tmp_path / "data", n_train=0, n_test=2, size=64)
    recipe = load_recipe("demo-tcp")
    model = build_model(recipe)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    weights = save_weights(model, recipe, tmp_path / "nan.safetensors")
    result = run("--weights", weights, "--data", tmp_path / "data" / "test", "--device", "cpu", "--workers", "1")
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.stderr
    assert [l for l in result.stderr.splitlines() if "not finite" in l] == [
        f"matte eval: syn{k:04d}: the model's output is not finite (NaN or infinity) for this image" for k in (0, 1)]


def test_help_names_every_model_format_eval_runs():
    """--help said `.safetensors` only; eval.md (and load_pipeline) take .onnx and .engine too."""
    text = " ".join(run("--help").stdout.split())
    assert "Run this model (.safetensors, .onnx or .engine) on --data" in text


def test_importing_the_cli_stays_light():
    code = "import sys, mattecli.cli; print(sorted(m for m in ('torch', 'cv2', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": ""}, check=True)
    assert out.stdout.strip() == "[]"


def test_worst_n_keeps_the_largest_sad():
    from mattecli.evaluation import Result, WorstN

    worst = WorstN(2)
    offered = [worst(Result(name, metrics={"sad": sad})) for name, sad in
               [("a", 1.0), ("b", 5.0), ("c", 0.5), ("d", 3.0), ("e", 2.0)]]
    assert offered == [True, True, False, True, False]
    assert worst.names() == ["b", "d"]
    assert not worst(Result("f", error="unreadable"))


def test_an_image_the_model_runs_out_of_memory_on_fails_alone(tmp_path, monkeypatch):
    """Out of memory on one large test image (a RuntimeError, CPU or CUDA) was a traceback that lost
    every other result and the JSON; infer names the same failure and goes on."""
    from mattecli.data.synthetic import prepare_synthetic
    from mattecli.inference.pipeline import Pipeline
    from mattecli.models import build_model
    from mattecli.recipes import load_recipe
    from mattecli.weights import save_weights

    prepare_synthetic(tmp_path / "data", n_train=0, n_test=3, size=32)
    recipe = load_recipe("demo-tcp")
    weights = save_weights(build_model(recipe), recipe, tmp_path / "w.safetensors")
    real, calls = Pipeline.predict_whole, []

    def predict_whole(self, image, trimap):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 3230793728 bytes")
        return real(self, image, trimap)

    monkeypatch.setattr(Pipeline, "predict_whole", predict_whole)
    result = run("--weights", weights, "--data", tmp_path / "data" / "test", "--device", "cpu", "--workers", "1",
                 "--json", tmp_path / "m.json")
    assert result.exit_code == 1 and "Traceback" not in result.stderr, result.output
    assert "matte eval: syn0001: RuntimeError: DefaultCPUAllocator: can't allocate memory" in result.stderr
    assert json.loads((tmp_path / "m.json").read_text())["count"] == 2


def test_the_report_shows_a_cut_out_ground_truth_as_it_was_scored(folders):
    """A ground truth with its matte in an alpha channel (an RGBA cut-out) is scored by that alpha;
    the report's panel showed its red channel."""
    root, cases = folders
    _, gt, _ = cases["a"]
    rgb = np.random.default_rng(9).integers(0, 256, gt.shape + (3,)).astype(np.uint8)
    (root / "gt" / "a.png").unlink()
    write_png(root / "gt" / "a.png", np.dstack([rgb, gt]))
    result = run(*args_for(root, "--report", root / "report", "--report-worst", "3"))
    assert result.exit_code == 0, result.output
    shown = [p for p in (root / "report" / "images").iterdir() if "_a_ground" in p.name]
    assert len(shown) == 1 and (read_gray(shown[0]) == gt).all()
