import json
import os
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from mattecli.cli import app
from mattecli.imageio import read_gray, write_png

runner = CliRunner()


def matte(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def run_main(*args):
    """Through the real entry point (one-line errors and exit codes), in a subprocess."""
    return subprocess.run([sys.executable, "-m", "mattecli", *map(str, args)], capture_output=True, text=True)


def test_help_lists_every_subcommand_without_importing_torch():
    code = ("import sys; from mattecli.cli import app; "
            "assert 'torch' not in sys.modules and 'cv2' not in sys.modules, 'heavy import at start-up'")
    subprocess.run([sys.executable, "-c", code], check=True)
    out = run_main("--help").stdout
    for name in ("prepare-data", "train", "eval", "convert", "export", "infer", "trimap", "bench", "recipes"):
        assert name in out


@pytest.mark.parametrize("args,says", [
    (["infer", "--imgaes", "x"], "No such option: --imgaes (Possible options: --images, --masks, --trimaps) "
                                 "(see matte infer --help)"),
    (["trimap", "--masks", ".", "--out", "t", "--workers", "0"],
     "--workers must be at least 1, not 0"),  # as eval's own check; pydantic's words or click's, by typer's release
    (["eval", "--pred"], "Option '--pred' requires an argument. (see matte eval --help)"),  # click gives no context
    (["prepare-data", "synthetic", "--train", "x"], "(see matte prepare-data synthetic --help)"),
    (["prepare-data", "synthetic", "--out", "o", "--size", "100000"],  # was numpy's MemoryError traceback
     "--size must be from 32 to 4096, not 100000"),
    # numpy's "expected non-negative integer" traceback (trimap: every file failed with it)
    (["train", "--recipe", "demo-indexnet", "--data", ".", "--seed", "-1"],
     f"--seed must be from 0 to {2**64 - 1}, not -1"),
    (["prepare-data", "d646", "--root", ".", "--coco", ".", "--voc", ".", "--out", "o", "--seed", "-1"],
     f"--seed must be from 0 to {2**64 - 1}, not -1"),
    (["trimap", "--alphas", ".", "--out", "t", "--seed", "-1"],
     f"--seed must be from 0 to {2**64 - 1}, not -1"),
    (["trimap", "--masks", ".", "--out", "t", "--workers", "1.5"],  # not a whole number: typer's words
     "Invalid value for '--workers': Input should be a valid integer, unable to parse string as an integer "
     "(see matte trimap --help)"),
    (["bench", "--weights", "w.safetensors", "--e2e", "--workers", "-1"], "--workers must be at least 0, not -1"),
    (["bogus"], "No such command 'bogus'. (see matte --help)"),
    # another command's option: click's nearest name was "(Possible options: --device)"
    (["export", "--recipe", "x"], "No such option: --recipe (an option of matte convert and matte train) "
                                  "(see matte export --help)"),
    (["export", "--coco", "x"], "No such option: --coco (an option of matte prepare-data adobe and matte "
                                "prepare-data d646) (see matte export --help)"),
])
def test_a_mistake_in_the_command_line_is_one_line(args, says):
    """click printed these in three lines (usage, a hint, the error)."""
    code = f"import sys; sys.argv = ['matte', *{args!r}]; from mattecli.cli import main; main()"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and res.stderr.startswith("matte: error: ")
    assert res.stderr.rstrip().endswith(says), res.stderr


def test_a_bare_command_still_shows_its_help():
    for args in ([], ["prepare-data"]):
        res = run_main(*args)
        assert res.returncode == 2 and "Usage:" in res.stdout + res.stderr and "Commands" in res.stdout + res.stderr
        assert "matte: error" not in res.stderr  # the help as it is, not squashed into one error line


def test_the_runtime_never_imports_the_export_tooling():
    """`mattecli.inference` (what runs a model) must not depend on `exporters` (what writes one):
    every import statement in its modules, those inside functions included, is checked."""
    import ast
    from pathlib import Path

    import mattecli.inference

    package = Path(mattecli.inference.__file__).parent
    found = []
    for module in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(module.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{module.name}: {n}" for n in names if n.split(".")[0] == "exporters"]
    assert found == []
    code = ("import sys; import mattecli.inference.backends, mattecli.inference.batch, mattecli.inference.engine; "
            "assert not [m for m in sys.modules if m.split('.')[0] == 'exporters'], 'exporters imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_version_is_the_package_version():
    from mattecli import __version__

    res = run_main("--version")
    assert res.returncode == 0 and res.stdout.strip() == f"matte {__version__}"


def test_recipes_json_lists_counts():
    rows = json.loads(matte("recipes", "--json").stdout)
    by_name = {r["name"]: r for r in rows}
    assert by_name["indexnet-m2o-nl-ctx"]["params"] == 5_953_515
    assert by_name["indexnet-m2o-nl-ctx"]["family"] == "indexnet"
    assert all(r["description"] for r in rows)


def test_recipes_name_prints_one_recipe_whole_and_it_trains_as_printed(tmp_path):
    from mattecli.recipes import list_recipe_names, load_recipe

    for name in list_recipe_names():  # every recipe: base merged, defaults filled in, loads back the same
        text = matte("recipes", name).stdout
        assert text.startswith(f"# {name}, resolved from ")
        (tmp_path / f"{name}.yaml").write_text(text)
        assert load_recipe(tmp_path / f"{name}.yaml").to_dict() == load_recipe(name).to_dict()
    printed = json.loads(matte("recipes", "demo-tcp", "--json").stdout)
    assert printed == json.loads(load_recipe("demo-tcp").to_json())
    assert printed["model"]["tcp_width"] == 8  # from demo-tcp
    assert printed["model"]["ffu"] == load_recipe("tcp").model.ffu  # from its base
    res = run_main("recipes", "no-such-recipe")
    assert res.returncode == 2 and "unknown recipe 'no-such-recipe'" in res.stderr
    assert res.stderr.count("\n") == 1


def test_recipes_prints_the_recipe_a_model_file_carries(tmp_path):
    """`matte recipes best.safetensors` (or an .onnx, an .engine): what was this model built from."""
    import onnx
    import yaml
    from onnx import TensorProto, helper

    from mattecli.inference.engine import write_engine_file
    from mattecli.models import build_model
    from mattecli.recipes import load_recipe
    from mattecli.weights import save_weights

    recipe = load_recipe("demo-tcp", ["train.lr=0.003"])
    save_weights(build_model(recipe), recipe, tmp_path / "best.safetensors", {"selected_by": "sad 12.5 at 200"})
    text = matte("recipes", tmp_path / "best.safetensors").stdout
    assert text.startswith(f"# demo-tcp, carried by {tmp_path / 'best.safetensors'}; selected_by: sad 12.5 at 200\n")
    assert yaml.safe_load(text) == json.loads(recipe.to_json())
    as_json = matte("recipes", tmp_path / "best.safetensors", "--json")
    assert json.loads(as_json.stdout)["train"]["lr"] == 0.003  # the recipe alone: it loads back
    assert as_json.stderr == f"# demo-tcp, carried by {tmp_path / 'best.safetensors'}; selected_by: sad 12.5 at 200\n"
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph)
    helper.set_model_props(model, {"recipe": recipe.to_json(), "precision": "float16"})
    onnx.save(model, tmp_path / "m.onnx")
    assert matte("recipes", tmp_path / "m.onnx").stdout.startswith(
        f"# demo-tcp, carried by {tmp_path / 'm.onnx'}; precision: float16\n")
    write_engine_file(tmp_path / "m.engine", b"plan", {"recipe": json.loads(recipe.to_json()), "tensorrt": "10.9.0",
                                                        "half": True})
    assert yaml.safe_load(matte("recipes", tmp_path / "m.engine").stdout) == json.loads(recipe.to_json())
    helper.set_model_props(model, {})
    onnx.save(model, tmp_path / "bare.onnx")
    (tmp_path / "junk.onnx").write_text("junk")
    for path, says in (("bare.onnx", "carries no recipe (not exported by matte)"), ("missing.onnx", "no such file"),
                       ("junk.onnx", "not a loadable ONNX model"), ("junk.engine", "no such file")):
        res = run_main("recipes", tmp_path / path)
        assert res.returncode == 2 and res.stderr.startswith(f"matte: error: {tmp_path / path}: {says}"), res.stderr
    (tmp_path / "notes.txt").write_text("")
    res = run_main("recipes", tmp_path / "notes.txt")  # said "not a file" of a file
    assert res.returncode == 2
    assert (f"{tmp_path / 'notes.txt'}: not a recipe file (recipes end in .yaml, or .json as a run's "
            "recipe.json)") in res.stderr
    res = run_main("train", "--recipe", tmp_path / "best.safetensors", "--data", tmp_path)
    assert res.returncode == 2 and res.stderr == (
        f"matte: error: {tmp_path / 'best.safetensors'}: a model file, not a recipe; `matte recipes "
        f"{tmp_path / 'best.safetensors'} > recipe.yaml` writes the recipe it carries\n")


def test_recipes_escapes_the_control_characters_of_a_model_files_recipe_name(tmp_path):
    """A graph from someone else whose recipe is named 'x\x1b[2J' cleared the terminal of `matte recipes
    m.onnx`; a newline in the name (or in metadata shown beside it) ended the YAML comment, so the text
    after it became recipe lines in `matte recipes m.onnx > recipe.yaml`."""
    import onnx
    import yaml
    from onnx import TensorProto, helper

    from mattecli.recipes import load_recipe

    recipe = json.loads(load_recipe("demo-tcp").to_json())
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph)
    helper.set_model_props(model, {"recipe": json.dumps({**recipe, "name": "x\x1b[2J\ndata: {crop_size: 2}"}),
                                   "precision": "float32\x1b]0;pwned\x07"})
    onnx.save(model, tmp_path / "m.onnx")
    text = matte("recipes", tmp_path / "m.onnx").stdout
    assert text.splitlines()[0] == (f"# x\\x1b[2J\\ndata: {{crop_size: 2}}, carried by {tmp_path / 'm.onnx'}; "
                                    "precision: float32\\x1b]0;pwned\\x07")
    assert yaml.safe_load(text)["data"]["crop_size"] == recipe["data"]["crop_size"]


def test_usage_errors_are_one_line_exit_2(tmp_path):
    res = run_main("convert", tmp_path / "x.pth", "--from", "nope", "--out", tmp_path / "o.safetensors")
    assert res.returncode == 2 and res.stderr.strip().count("\n") == 0 and "unknown source" in res.stderr
    res = run_main("infer", "--weights", tmp_path / "missing.safetensors", "--images", tmp_path, "--out", tmp_path / "o")
    assert res.returncode == 2 and "no such weights file" in res.stderr and "Traceback" not in res.stderr


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from tests.test_weights import official_checkpoint

    tmp = tmp_path_factory.mktemp("w")
    official_checkpoint(tmp / "indexnet_matting.pth.tar", "indexnet-unet-maxunpool")
    res = matte("convert", tmp / "indexnet_matting.pth.tar", "--from", "indexnet-official", "--out", tmp / "w.safetensors")
    assert res.exit_code == 0, res.output
    assert "indexnet-unet-maxunpool" in res.stdout
    return tmp / "w.safetensors"


def make_folder(root, rng):
    images = root / "images"
    images.mkdir()
    for name, (h, w) in {"a photo": (45, 67), "b": (33, 40), "ünï": (64, 64)}.items():
        write_png(images / f"{name}.png", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        write_png(images / f"{name}_trimap.png", rng.choice(np.array([0, 102, 255], np.uint8), (h, w)))
    (images / "broken.png").write_bytes(b"\x89PNG not really")
    header = (images / "b.png").read_bytes()[:33]  # a real header, garbage after: OpenCV logged two lines of its own
    (images / "garbage.png").write_bytes(header + np.random.default_rng(1).bytes(300))
    write_png(images / "garbage_trimap.png", np.zeros((40, 33), np.uint8))
    write_png(images / "broken_trimap.png", np.zeros((4, 4), np.uint8))
    write_png(images / "lonely.png", np.zeros((8, 8, 3), np.uint8))
    write_png(images / "mismatch.png", np.zeros((8, 8, 3), np.uint8))
    write_png(images / "mismatch_trimap.png", np.zeros((9, 8), np.uint8))
    return images


def test_infer_over_a_folder_goes_on_past_bad_files(tmp_path, weights):
    images = make_folder(tmp_path, np.random.default_rng(0))
    out = tmp_path / "out"
    res = run_main("infer", "--weights", weights, "--images", images, "--out", out)
    assert res.returncode == 1, res.stderr
    written = sorted(p.name for p in out.iterdir())
    assert written == ["a photo.png", "b.png", "ünï.png"]
    alpha = read_gray(out / "a photo.png")
    trimap = np.asarray(read_gray(images / "a photo_trimap.png"))
    assert alpha.shape == (45, 67)
    assert (alpha[trimap == 0] == 0).all() and (alpha[trimap == 255] == 255).all()
    for needle in ("broken.png: cannot decode", "garbage.png: cannot decode", "lonely.png: no trimap", "9 but image",
                   "3 written", "4 failed"):
        assert needle in res.stderr + res.stdout
    assert all(line.startswith(("matte: ", "infer ")) for line in res.stderr.splitlines()), res.stderr
    assert "mapped with <85 background" in res.stderr  # the 102-gray trimaps were converted, and said so
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left

    before = (out / "b.png").stat().st_mtime_ns
    res = run_main("infer", "--weights", weights, "--images", images, "--out", out)
    assert "3 skipped" in res.stdout and (out / "b.png").stat().st_mtime_ns == before
    res = run_main("infer", "--weights", weights, "--images", images, "--out", out, "--overwrite")
    assert "3 written" in res.stdout


def test_infer_with_a_trimap_folder(tmp_path, weights):
    rng = np.random.default_rng(1)
    (tmp_path / "img").mkdir(); (tmp_path / "tri").mkdir()
    write_png(tmp_path / "img" / "x.png", rng.integers(0, 256, (40, 50, 3), dtype=np.uint8))
    write_png(tmp_path / "tri" / "x.png", rng.choice(np.array([0, 128, 255], np.uint8), (40, 50)))
    res = run_main("infer", "--weights", weights, "--images", tmp_path / "img", "--trimaps", tmp_path / "tri",
                   "--out", tmp_path / "out")
    assert res.returncode == 0, res.stderr
    assert read_gray(tmp_path / "out" / "x.png").shape == (40, 50)



def test_train_export_and_eval_refuse_an_unwritable_output_before_any_work(tmp_path, capsys, monkeypatch):
    # issue 19: a typo in --out must not cost a training run, a trace or a model run
    import mattecli.train.loop
    import exporters.export
    import mattecli.cli.eval as eval_cli

    def must_not_run(*args, **kwargs):
        raise AssertionError("work started before the output was checked")

    monkeypatch.setattr(mattecli.train.loop, "train", must_not_run)
    monkeypatch.setattr(exporters.export, "export", must_not_run)
    monkeypatch.setattr(eval_cli, "eval_model", must_not_run)
    monkeypatch.setattr(eval_cli, "eval_predictions", must_not_run)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    folders = [tmp_path / d for d in ("pred", "gt", "tri")]
    for d in folders:
        d.mkdir()
    runs = [
        (["train", "--recipe", "demo-indexnet", "--data", tmp_path, "--out", blocker / "run"], "--out"),
        (["export", "--weights", "w.safetensors", "--format", "onnx", "--out", blocker / "m.onnx"], "--out"),
        (["export", "--weights", "w.safetensors", "--format", "onnx", "--out", tmp_path], "is a folder"),
        (["eval", "--pred", folders[0], "--gt", folders[1], "--trimap", folders[2], "--json", blocker / "r.json"],
         "--json"),
        (["eval", "--pred", folders[0], "--gt", folders[1], "--trimap", folders[2], "--csv", tmp_path], "is a folder"),
        (["eval", "--weights", "w.safetensors", "--data", tmp_path, "--save-pred", blocker / "p"], "--save-pred"),
        (["eval", "--pred", folders[0], "--gt", folders[1], "--trimap", folders[2], "--report", blocker], "is a file"),
    ]
    before = sorted(tmp_path.rglob("*"))
    for args, message in runs:
        code, err = _in_process(args, capsys)
        assert code == 2 and message in err and err.count("\n") == 1, (args, code, err)
    assert sorted(tmp_path.rglob("*")) == before  # a refused run leaves nothing behind


def _in_process(args, capsys) -> tuple[int, str]:
    """`matte ARGS` run in this process: (exit code, stderr)."""
    from mattecli.cli import main

    old, sys.argv = sys.argv, ["matte", *map(str, args)]
    try:
        main()
        code = 0
    except SystemExit as done:
        code = done.code
    finally:
        sys.argv = old
    return code, capsys.readouterr().err


def test_an_output_below_a_broken_symbolic_link_is_one_usage_error_before_any_work(tmp_path, capsys):
    """OUT/... where OUT is a symbolic link to nothing passed the checks (no folder there to test),
    then failed with a FileExistsError traceback when the folder was made: after the whole run for
    eval --json and bench --json, "cannot write there (File exists)" for infer --out."""
    link = tmp_path / "results"
    link.symlink_to(tmp_path / "gone")
    folders = [tmp_path / d for d in ("pred", "gt", "tri")]
    for d in folders:
        d.mkdir()
    runs = [
        ["export", "--weights", "w.safetensors", "--out", link / "m.onnx"],
        ["eval", "--pred", folders[0], "--gt", folders[1], "--trimap", folders[2], "--json", link / "r.json"],
        ["bench", "--weights", "w.safetensors", "--json", link / "b.json"],
        ["convert", "w.pth", "--from", "indexnet-official", "--out", link / "c.safetensors"],
        ["prepare-data", "synthetic", "--out", link / "syn"],
        ["trimap", "--masks", folders[0], "--out", link],
        ["train", "--recipe", "demo-tcp", "--data", tmp_path, "--out", link / "run"],
    ]
    for args in runs:
        code, err = _in_process(args, capsys)
        assert code == 2 and err.endswith(f": {link} is a broken symbolic link (to {tmp_path / 'gone'})\n"), (args, err)
        assert err.count("\n") == 1, err
    assert not (tmp_path / "gone").exists()


@pytest.mark.slow  # torch.compile builds C++ kernels on a CPU: about half a minute for TCP's demo network
def test_infer_compile_writes_what_eager_writes_and_says_it_compiles(tmp_path):
    import torch

    from mattecli.models import build_model
    from mattecli.recipes import load_recipe
    from mattecli.weights import save_weights

    recipe = load_recipe("demo-tcp")
    torch.manual_seed(0)
    weights = save_weights(build_model(recipe), recipe, tmp_path / "w.safetensors")
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name, (h, w) in {"a": (120, 136), "b": (97, 161)}.items():
        write_png(images / f"{name}.png", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        write_png(images / f"{name}_trimap.png", rng.choice(np.array([0, 128, 255], np.uint8), (h, w)))
    eager = run_main("infer", "--weights", weights, "--images", images, "--out", tmp_path / "eager", "--device", "cpu")
    compiled = run_main("infer", "--weights", weights, "--images", images, "--out", tmp_path / "compiled",
                        "--device", "cpu", "--compile")
    assert eager.returncode == 0 and compiled.returncode == 0, compiled.stderr
    assert "--compile: the first image waits" in compiled.stderr and "--compile" not in eager.stderr
    for name in ("a", "b"):
        a, b = read_gray(tmp_path / "eager" / f"{name}.png"), read_gray(tmp_path / "compiled" / f"{name}.png")
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # float rounding, at most one level


def test_recipes_name_prints_a_description_in_any_language_as_written(tmp_path):
    """YAML's default escaped it: description: "\\xE9t\\xE9 \\u2014 fin"."""
    from mattecli.recipes import load_recipe

    (tmp_path / "mine.yaml").write_text("model: {family: tcp}\ndescription: été — fin\n", encoding="utf-8")
    text = matte("recipes", tmp_path / "mine.yaml").stdout
    assert "description: été — fin\n" in text
    (tmp_path / "again.yaml").write_text(text, encoding="utf-8")
    assert load_recipe(tmp_path / "again.yaml").description == "été — fin"


def test_a_redirected_stdout_in_a_code_page_gets_unicode_names_as_utf8(tmp_path):
    """Windows writes a redirected stdout in cp1252: a recipe named 猫.yaml (or `matte infer`'s
    '1 written to 猫out') was a UnicodeEncodeError traceback, and `matte recipes X > mine.yaml`
    wrote bytes the recipe loader refuses. Simulated with PYTHONIOENCODING."""
    from mattecli.recipes import load_recipe

    (tmp_path / "猫.yaml").write_text("model: {family: tcp}\ndescription: été — 猫\n", encoding="utf-8")
    env = {**os.environ, "PYTHONIOENCODING": "cp1252"}
    res = subprocess.run([sys.executable, "-m", "mattecli", "recipes", tmp_path / "猫.yaml"], capture_output=True,
                         env=env)
    assert res.returncode == 0, res.stderr.decode()
    (tmp_path / "again.yaml").write_bytes(res.stdout)
    assert load_recipe(tmp_path / "again.yaml").description == "été — 猫"


@pytest.mark.skipif(not __import__("os").path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_disk_under_stdout_is_one_line_not_a_traceback():
    with open("/dev/full", "w") as full:
        res = subprocess.run([sys.executable, "-m", "mattecli", "recipes"], stdout=full, stderr=subprocess.PIPE,
                             text=True)
    assert res.returncode == 1 and res.stderr == "matte: error: standard output: No space left on device\n", res.stderr


@pytest.mark.parametrize("args", [["recipes"], ["recipes", "--json"], ["recipes", "demo-tcp"], ["--version"]])
def test_a_reader_that_stops_reading_ends_matte_quietly(args):
    """`matte recipes | head -1`: rich and click exited 1 when the pipe closed, a script saw a
    failure; now quiet, 141 as a command SIGPIPE ends."""
    read, write = os.pipe()
    os.close(read)  # the reader is gone before matte writes
    res = subprocess.run([sys.executable, "-m", "mattecli", *args], stdout=write, stderr=subprocess.PIPE, text=True)
    os.close(write)
    assert (res.returncode, res.stderr) == (141, "")
    closed = subprocess.run([sys.executable, "-m", "mattecli", *args], stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: os.close(1))  # `>&-`: no stdout at all, as before
    assert (closed.returncode, closed.stderr) == (0, "")


def test_lines_printed_under_a_bar_on_a_terminal_stay_on_a_redirected_stdout(capsys):
    """`matte train > log` with the bar on the terminal (stderr): training's lines go to the log."""
    from rich.console import Console

    from mattecli.progress import progress_bar

    with progress_bar(console=Console(file=sys.stderr, force_terminal=True)) as bar:
        bar.add_task("train", total=2)
        print("iteration 1: loss 0.5")
    assert "iteration 1" in capsys.readouterr().out


def test_a_broken_pipe_that_reaches_the_entry_point_ends_quietly(monkeypatch, capsys):
    """main()'s BrokenPipeError handler sat after its OSError one, whose re-raise of an error without
    a file name made it dead: a BrokenPipeError that click did not turn into an exit was a traceback."""
    import mattecli.cli as cli

    def app():
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli, "app", app)
    monkeypatch.setattr(cli, "_drop_stdout", lambda: None)
    monkeypatch.setattr(sys, "argv", ["matte", "recipes"])
    with pytest.raises(SystemExit) as done:
        cli.main()
    assert done.value.code == 141 and capsys.readouterr().err == ""


def test_a_closed_pipe_ends_quietly_where_there_is_no_sigpipe(monkeypatch):
    """Windows has no signal.SIGPIPE: `matte recipes | more` stopped early ended in an
    AttributeError traceback raised while handling the BrokenPipeError."""
    import signal

    import mattecli.cli as cli

    monkeypatch.delattr(signal, "SIGPIPE")
    monkeypatch.setattr(cli, "_drop_stdout", lambda: None)
    with pytest.raises(SystemExit) as done:
        cli._pipe_closed()
    assert done.value.code == 141


def test_an_option_of_one_value_given_twice_says_which_counts(tmp_path, monkeypatch):
    """click kept the last value without a word: `--out a ... --out b` wrote into b. The last still
    counts (a wrapper may append an option to override its default), with a note on stderr."""
    monkeypatch.chdir(tmp_path)
    res = run_main("prepare-data", "synthetic", "--out", "a", "--out", "b", "--train", "1", "--test", "1",
                   "--size", "32", "--seed", "1", "--seed", "3", "--seed=2")  # thrice: one note
    assert res.returncode == 0, res.stderr
    notes = [line for line in res.stderr.splitlines() if "given more than once" in line]
    assert notes == ["matte: note: --out given more than once: the last counts (b)",
                     "matte: note: --seed given more than once: the last counts (2)"]
    assert (tmp_path / "b").is_dir() and not (tmp_path / "a").exists()
    res = run_main("trimap", "--masks", "none", "--out", "t", "--overwrite", "--overwrite")  # a flag: harmless
    assert res.returncode == 2 and res.stderr == "matte: error: --masks none: no such folder\n"
    res = run_main("infer", "--weights", "w.safetensors", "--images", ".", "--out", "o", "--save", "alpha",
                   "--save", "fg")  # a list: every value counts
    assert res.returncode == 2 and "more than once" not in res.stderr and "no such weights file" in res.stderr


def test_a_palette_cut_out_photo_is_read_without_pillows_two_line_warning(tmp_path, weights):
    """A palette PNG with transparency (a GIF-style cut-out) put Pillow's 'UserWarning: Palette images
    with Transparency expressed in bytes should be converted to RGBA images', in two lines naming no
    file, above infer's progress: matte converts it to RGBA itself."""
    from PIL import Image

    (tmp_path / "in").mkdir()
    photo = Image.fromarray(np.repeat(np.array([[0] * 16 + [1] * 16], np.uint8), 32, axis=0), "P")
    photo.putpalette([0, 0, 0, 200, 100, 50])
    photo.save(tmp_path / "in" / "a.png", transparency=bytes([0, 128]))
    trimap = np.full((32, 32), 128, np.uint8)
    trimap[:4] = 0
    write_png(tmp_path / "in" / "a_trimap.png", trimap)
    res = run_main("infer", "--weights", weights, "--images", tmp_path / "in", "--out", tmp_path / "out")
    assert res.returncode == 0 and "Warning" not in res.stderr, res.stderr
    assert read_gray(tmp_path / "out" / "a.png").shape == (32, 32)


def test_a_folder_option_says_why_the_path_is_no_folder(tmp_path):
    """A broken link or a loop given as a folder was "no such folder or file" (or "not a folder",
    or "no such folder" for a file): now the reason, in the same words wherever a folder is asked for."""
    from mattecli.imageio import missing_reason

    (tmp_path / "broken").symlink_to(tmp_path / "nothing")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "file.txt").write_text("x")
    os.mkfifo(tmp_path / "pipe")
    link = "a symbolic link that leads to no folder (broken, or a loop)"
    assert [missing_reason(tmp_path / name) for name in ("broken", "loop", "absent", "file.txt", "pipe")] == \
        [link, link, "no such folder", "a file, not a folder", "not a regular file (a device or a named pipe)"]
    assert missing_reason(tmp_path / "absent", "folder or file") == "no such folder or file"
    # where a file is wanted (imageio.check_file), the same reasons turned round
    assert [missing_reason(tmp_path / name, "file") for name in ("broken", "absent", ".", "pipe")] == \
        ["a symbolic link that leads to no file (broken, or a loop)", "no such file", "a folder, not an image file",
         "not a regular file (a device or a named pipe)"]
    for args, said in [(["infer", "--weights", tmp_path / "w.safetensors", "--images", tmp_path / "loop", "--out",
                         tmp_path / "o"],
                        f"--images {tmp_path / 'loop'}: a symbolic link that leads to no folder or file (broken, "
                        "or a loop)"),
                       (["trimap", "--masks", tmp_path / "broken", "--out", tmp_path / "t"],
                        f"--masks {tmp_path / 'broken'}: {link}"),
                       (["trimap", "--masks", tmp_path / "file.txt", "--out", tmp_path / "t"],
                        f"--masks {tmp_path / 'file.txt'}: a file, not a folder"),
                       (["eval", "--weights", tmp_path / "w.safetensors", "--data", tmp_path / "broken"],
                        f"{tmp_path / 'broken'}: {link} (--data)")]:
        res = run_main(*args)
        assert (res.returncode, res.stderr) == (2, f"matte: error: {said}\n"), args


def test_under_torchrun_a_usage_error_is_said_once_per_machine(tmp_path):
    """Every rank parses the same command line; each printed the same line (twice with
    --nproc_per_node 2). Local rank 0 says it; every rank exits 2."""
    args = [sys.executable, "-m", "mattecli", "train", "--recipe", "demo-indexnet", "--data", tmp_path / "none",
            "--out", tmp_path / "run"]
    said = {}
    for rank in ("0", "1"):
        env = {**os.environ, "RANK": rank, "LOCAL_RANK": rank}  # (no WORLD_SIZE: not refused for that)
        res = subprocess.run(args, capture_output=True, text=True, env=env)
        said[rank] = (res.returncode, res.stderr)
    assert said["0"][0] == said["1"][0] == 2
    assert said["0"][1].startswith(f"matte: error: --data {tmp_path / 'none'}: ") and said["0"][1].count("\n") == 1
    assert said["1"][1] == ""
