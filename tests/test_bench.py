import dataclasses
import importlib.util
import json

import pytest

from mattecli.bench import default_backends, run_bench
from mattecli.sizes import Size
from mattecli.errors import UsageError
from tests.test_cli import run_main

ROW_FIELDS = {"backend", "size", "input", "device", "half", "repeat", "warmup", "median_ms", "min_ms",
              "images_per_s", "peak_memory_mib", "base_memory_mib", "memory"}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    import torch

    from mattecli.models import build_model
    from mattecli.recipes import load_recipe
    from mattecli.weights import save_weights

    torch.manual_seed(0)
    recipe = load_recipe("demo-a2u")
    return save_weights(build_model(recipe), recipe, tmp_path_factory.mktemp("w") / "a2u.safetensors")


@pytest.fixture
def one_thread(monkeypatch):
    # each row is a child process; one OpenMP thread keeps a tiny forward fast on a loaded machine
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def check_rows(rows, backends, sizes, inputs):
    assert [(r["backend"], r["size"]) for r in rows] == [(b, s) for b in backends for s in sizes]
    for r in rows:
        assert set(r) == ROW_FIELDS
        assert 0 < r["min_ms"] <= r["median_ms"]
        assert r["images_per_s"] == pytest.approx(1000 / r["median_ms"], rel=1e-3)
        # Python, runtime and a model (a CUDA build of torch loads more: 659 MiB with torch 2.11+cu130)
        assert 1024 > r["peak_memory_mib"] >= r["base_memory_mib"] > 50
        assert r["memory"] == "peak RSS of the process" and r["warmup"] == 0 and r["repeat"] == 2
    assert [r["input"] for r in rows] == inputs * len(backends)


def test_bench_rows_and_json(tmp_path, weights, one_thread):
    import numpy as np

    out = tmp_path / "report" / "bench.json"
    seen = []
    ballast = np.ones(2**26)  # 512 MiB resident in this process: no row may count it as its own
    report = run_bench(weights, ["torch"], [Size(40, 30), Size(50, 36)], repeat=2, warmup=0, json_path=out,
                       on_row=seen.append, log=lambda line: None)
    del ballast
    assert seen == report["rows"]
    # demo-a2u aligns by padding to a stride of 16; 4 channels (RGB + scalar trimap)
    check_rows(report["rows"], ["torch"], ["40x30", "50x36"], ["1x4x32x48", "1x4x48x64"])
    assert json.loads(out.read_text()) == report
    assert [p.name for p in out.parent.iterdir()] == ["bench.json"]  # written atomically, no temp left


def test_bench_an_onnx_file(tmp_path):
    """Without --backends an .onnx file is timed with the onnx backend (torch needs weights)."""
    from mattecli.recipes import load_recipe
    from tests.test_tensorrt import tiny_onnx

    graph = tiny_onnx(tmp_path / "one-conv.onnx", channels=4, recipe=load_recipe("demo-a2u").to_dict())
    report = run_bench(graph, None, [Size(50, 36)], repeat=2, warmup=0, log=lambda line: None)
    check_rows(report["rows"], ["onnx"], ["50x36"], ["1x4x48x64"])
    assert default_backends(graph) == ["onnx"] and default_backends(tmp_path / "m.engine") == ["trt"]
    assert default_backends(tmp_path / "w.safetensors") == ["torch", "onnx"]


@pytest.mark.slow  # the ONNX export and session start take ~20 s on a loaded 2-core machine
def test_bench_onnx_from_safetensors(tmp_path, weights, one_thread):
    logged = []
    report = run_bench(weights, ["torch", "onnx"], [Size(40, 30)], repeat=2, warmup=0, log=logged.append)
    check_rows(report["rows"], ["torch", "onnx"], ["40x30"], ["1x4x32x48"])
    assert logged == ["exporting a2u.safetensors to ONNX"]


@pytest.mark.parametrize("args, message", [
    (["--backends", "torch,tf"], "unknown backend 'tf'"),
    (["--sizes", "1920by1080"], "WIDTHxHEIGHT"),
    (["--half"], "--half needs --device cuda"),
    # each was silently ignored: a "--compile" row timed the eager model
    (["--compile", "--count", "2", "--sizes", "32x32", "--backends", "torch"], "--count, --compile: with --e2e only"),
    (["--photos", "jpg"], "--photos: with --e2e only"),
    (["--save", "fg", "--sizes", "32x32", "--backends", "torch", "--repeat", "1"], "--save: with --e2e only"),
    # a list option given twice kept its last value without a word: the values are joined
    (["--sizes", "bad", "--sizes", "32x32"], "--sizes: 'bad' is not WIDTHxHEIGHT"),
    (["--e2e", "--backends", "torch", "--backends", "onnx", "--sizes", "32x32"], "--e2e times one backend"),
    # it listed "alpha, fg, rgba" and took trimap too
    (["--e2e", "--save", "alpha", "--save", "composite", "--sizes", "32x32", "--backends", "torch"],
     "matte: error: --save alpha,composite: with --e2e choose from alpha, fg, rgba, trimap (composite needs "
     "--background, which bench does not take)"),
    (["--e2e", "--photos", "gif", "--sizes", "32x32", "--backends", "torch"], "--photos gif: choose from png, jpg"),
    (["--e2e", "--repeat", "9", "--sizes", "32x32", "--count", "1"],
     "--repeat: for the model rows; --e2e times --count images"),
    (["--backends", "trt"], "use --device cuda" if importlib.util.find_spec("tensorrt")
     else "TensorRT is not installed (pip install tensorrt on a machine with an NVIDIA GPU)"),
])
def test_bench_usage_errors_are_one_line(weights, args, message):
    res = run_main("bench", "--weights", weights, *args)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr and res.stderr.strip().count("\n") == 0, res.stderr


@pytest.mark.parametrize("e2e", [[], ["--e2e"]])
def test_bench_checks_json_before_timing(tmp_path, weights, e2e):
    """--json naming a folder failed with a traceback at the end of the whole run."""
    res = run_main("bench", "--weights", weights, "--sizes", "32x32", "--json", tmp_path, *e2e)
    assert res.returncode == 2 and f"--json {tmp_path}: is a folder, not a file" in res.stderr, res.stderr
    assert res.stderr.strip().count("\n") == 0 and not res.stdout


@pytest.mark.parametrize("e2e", [[], ["--e2e"]])
def test_bench_json_dash_is_stdout_alone(tmp_path, weights, one_thread, e2e):
    """`--json -` wrote a file named "-"; now stdout holds the JSON alone (the table goes to stderr),
    so `matte bench ... --json - | jq` works."""
    import subprocess
    import sys

    timing = ["--count", "1"] if e2e else ["--repeat", "1", "--warmup", "0"]
    res = subprocess.run([sys.executable, "-m", "mattecli", "bench", "--weights", str(weights), "--backends", "torch",
                          "--sizes", "24x20", "--device", "cpu", "--json", "-", *timing, *e2e],
                         capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert [r["size"] for r in json.loads(res.stdout)["rows"]] == ["24x20"] and "24x20" in res.stderr
    assert list(tmp_path.iterdir()) == []


def test_bench_json_dash_with_stdout_closed_is_a_usage_error(weights):
    """`--json - >&-` timed every row, then failed with a traceback."""
    import os
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "mattecli", "bench", "--weights", str(weights), "--sizes", "24x20",
                          "--json", "-"], stderr=subprocess.PIPE, text=True, preexec_fn=lambda: os.close(1))
    assert res.returncode == 2 and res.stderr == "matte: error: --json -: standard output is closed\n"


@pytest.mark.parametrize("e2e", [[], ["--e2e"]])
def test_bench_json_onto_the_weights_file_is_refused(tmp_path, weights, e2e):
    """`--json w.safetensors` (a slip for w.json) replaced the model with the report after the run."""
    before = weights.read_bytes()
    res = run_main("bench", "--weights", weights, "--sizes", "24x20", "--json", weights, *e2e)
    assert res.returncode == 2 and res.stderr == (f"matte: error: --json {weights}: is the --weights file; write the "
                                                  "report to another file\n")
    assert weights.read_bytes() == before


def test_bench_refuses_weights_without_a_recipe_before_any_row(tmp_path):
    """It ran every row, each failing with the same reason, and exited 1 (or 2 after a progress bar)."""
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, tmp_path / "foreign.safetensors")
    res = run_main("bench", "--weights", tmp_path / "foreign.safetensors", "--backends", "torch", "--sizes", "32x32")
    assert res.returncode == 2 and "foreign.safetensors: no recipe in the metadata" in res.stderr, res.stderr
    assert res.stderr.strip().count("\n") == 0 and not res.stdout
    # an ONNX graph not exported by matte, or not a graph at all: was a failed row per size, exit 1
    import onnx
    from onnx import TensorProto, helper

    io = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 4, None, None]) for name in ("input", "alpha")]
    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["alpha"])], "g", io[:1], io[1:])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "foreign.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a graph")
    for name, reason in (("foreign.onnx", "no recipe in the ONNX metadata"), ("junk.onnx", "not a loadable ONNX model")):
        res = run_main("bench", "--weights", tmp_path / name, "--sizes", "32x32,48x48")
        assert res.returncode == 2 and f"{name}: {reason}" in res.stderr, res.stderr
        assert res.stderr.strip().count("\n") == 0 and not res.stdout


def test_bench_refuses_missing_and_unsuitable_files(tmp_path):
    res = run_main("bench", "--weights", tmp_path / "none.safetensors")
    assert res.returncode == 2 and "no such weights file" in res.stderr and "Traceback" not in res.stderr
    graph = tmp_path / "m.onnx"
    graph.write_bytes(b"not used")
    with pytest.raises(UsageError, match="torch backend needs a .safetensors"):
        run_bench(graph, ["torch"], [Size(32, 32)])


def test_a_failing_row_is_named_and_the_others_still_run(tmp_path, weights, one_thread):
    # a graph exported for 32x32 only fails at 48x32 (a file no row can load is a usage error, above)
    graph = tmp_path / "static.onnx"
    res = run_main("export", "--weights", weights, "--static", "--opt-shape", "32x32", "--out", graph)
    assert res.returncode == 0, res.stderr
    res = run_main("bench", "--weights", graph, "--sizes", "48x32,32x32,64x32", "--repeat", "1")  # onnx: its own
    assert res.returncode == 1
    failures = [line for line in res.stderr.splitlines() if line.startswith("matte bench:")]
    assert [line.split(":")[1] for line in failures] == [" onnx at 48x32", " onnx at 64x32"], res.stderr
    assert all("was exported for 32x32 input only" in line for line in failures), res.stderr
    assert res.stdout.count("failed") == 2 and "32x32 │ 1x4x32x32" in res.stdout
    # without --sizes a static graph is timed at its own size (the default 1920x1080 and 3840x2160
    # rows both failed, exit 1)
    res = run_main("bench", "--weights", graph, "--repeat", "1")
    assert res.returncode == 0, res.stderr
    assert "matte: note: static.onnx is a static graph: timing its size, 32x32" in res.stderr
    assert "32x32 │ 1x4x32x32" in res.stdout and "1920x1080" not in res.stdout


def test_half_rows_time_the_backend_that_infer_half_runs(weights, monkeypatch):
    """`bench --half` timed the float32 model under an outer autocast, which casts every convolution
    weight at every call; `matte infer --half` runs `TorchBackend(half=True)`, whose convolutions hold
    their weights in FP16 (and whose non-finite output is redone in float32). A row times the latter."""
    from mattecli import bench
    from mattecli.inference import backends

    loaded = []
    real = backends.load_backend
    monkeypatch.setattr(backends, "load_backend", lambda *a, **k: loaded.append(real(*a, **k)) or loaded[-1])
    # on a CPU only to see which backend is built (the command refuses --half there)
    row = bench.measure(str(weights), "torch", Size(40, 30), "cpu", True, 1, 0)
    assert row["half"] is True and loaded[0].half is True
    bench.measure(str(weights), "torch", Size(40, 30), "cpu", False, 1, 0)
    assert loaded[1].half is False


def test_cpu_rows_run_where_peak_memory_cannot_be_read(tmp_path, weights, one_thread, monkeypatch):
    """Windows has neither /proc nor Python's `resource` module: every CPU row failed with
    "No module named 'resource'". Simulated in every process (a sitecustomize on PYTHONPATH)."""
    import os

    (tmp_path / "sitecustomize.py").write_text(
        "import builtins, sys\n"
        "sys.modules['resource'] = None  # import resource: ImportError\n"
        "_open = builtins.open\n"
        "def _no_proc(file, *args, **kwargs):\n"
        "    if str(file).startswith('/proc/'):\n"
        "        raise FileNotFoundError(2, 'No such file or directory', str(file))\n"
        "    return _open(file, *args, **kwargs)\n"
        "builtins.open = _no_proc\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    res = run_main("bench", "--weights", weights, "--backends", "torch", "--sizes", "32x32", "--repeat", "1",
                   "--json", tmp_path / "bench.json")
    assert res.returncode == 0, res.stderr
    row = json.loads((tmp_path / "bench.json").read_text())["rows"][0]
    assert (row["peak_memory_mib"], row["base_memory_mib"]) == (None, None) and row["median_ms"] > 0
    assert "not measured" in res.stdout


def test_bench_of_a_graph_parses_it_once(tmp_path, monkeypatch):
    """`matte bench --weights g.onnx` read the graph for its static size, then again to check it;
    a file replaced in between is read anew."""
    import onnx

    from mattecli.inference.backends import check_onnx_file, static_onnx_size
    from mattecli.recipes import load_recipe
    from tests.test_tensorrt import tiny_onnx

    graph = tiny_onnx(tmp_path / "g.onnx", channels=4, recipe=load_recipe("demo-a2u").to_dict())
    parsed, real = [], onnx.load
    monkeypatch.setattr(onnx, "load", lambda *a, **k: parsed.append(a[0]) or real(*a, **k))
    assert static_onnx_size(graph) is None and check_onnx_file(graph) is None and len(parsed) == 1
    tiny_onnx(graph, channels=6, recipe=load_recipe("demo-a2u").to_dict())  # another graph, same name
    assert static_onnx_size(graph) is None and len(parsed) == 2
    graph.write_bytes(b"not a graph")
    with pytest.raises(UsageError, match="not a loadable ONNX model"):
        check_onnx_file(graph)


@pytest.fixture(scope="module")
def tcp_graphs(tmp_path_factory):
    """demo-tcp's FP32 and FP16 graphs, as `matte export` writes them."""
    import torch

    from exporters.onnx import to_onnx
    from mattecli.models import build_model
    from mattecli.recipes import load_recipe

    torch.manual_seed(0)
    recipe, folder = load_recipe("demo-tcp"), tmp_path_factory.mktemp("tcp")
    model = build_model(recipe).eval()
    return {half: to_onnx(model, folder / f"tcp{'-fp16' if half else ''}.onnx", recipe=recipe, half=half)
            for half in (False, True)}


@pytest.mark.parametrize("e2e", [[], ["--e2e", "--count", "1"]])
def test_an_fp16_graph_is_reported_as_fp16(tcp_graphs, one_thread, e2e):
    """"half" copied the --half flag: an FP16 graph benched without it (the only way: --half is for
    the torch backend) said "half": false, and the table's title did not say FP16."""
    timing = [] if e2e else ["--repeat", "1", "--warmup", "0"]
    res = run_main("bench", "--weights", tcp_graphs[True], "--sizes", "48x32", "--device", "cpu", "--json", "-",
                   *timing, *e2e)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["half"] is True and all(r["half"] is True for r in report["rows"] if not e2e)
    title = "matte bench --e2e: tcp-fp16.onnx on cpu (FP16), " if e2e else "matte bench: tcp-fp16.onnx on cpu (FP16), "
    assert title in res.stderr, res.stderr
    res = run_main("bench", "--weights", tcp_graphs[False], "--sizes", "48x32", "--device", "cpu", "--json", "-",
                   *timing, *e2e)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["half"] is False and all(r["half"] is False for r in report["rows"] if not e2e)
    assert "(FP16)" not in res.stderr


def test_half_with_an_fp32_graph_is_refused(tcp_graphs):
    """Its onnx rows would run the graph's FP32 under a report saying FP16."""
    from mattecli.bench import check_request

    name = tcp_graphs[False].name
    with pytest.raises(UsageError) as refused:
        check_request(tcp_graphs[False], ["onnx"], "cpu", True)
    assert str(refused.value) == (f"--half: {name} is an FP32 model and an exported model runs in the precision it "
                                  "was exported in: export it with `matte export --half`")


def test_a_size_named_twice_is_timed_once(tcp_graphs, one_thread):
    """--sizes 48x32,64x32,48x32 timed 48x32 twice (--backends drops a repeated name)."""
    res = run_main("bench", "--weights", tcp_graphs[False], "--sizes", "48x32,64x32", "--sizes", "48X32",
                   "--repeat", "1", "--warmup", "0", "--device", "cpu", "--json", "-")
    assert res.returncode == 0, res.stderr
    assert [r["size"] for r in json.loads(res.stdout)["rows"]] == ["48x32", "64x32"]


@pytest.mark.parametrize("backends", [[], ["--backends", "torch"]])
@pytest.mark.parametrize("broken", ["missing", "misshapen"])
def test_weights_whose_tensors_do_not_fit_are_a_usage_error(tmp_path, weights, backends, broken):
    """With --backends torch a weights file that cannot be loaded was a failed row and exit 1 (its
    header alone was checked); without, a usage error. Both are the usage error, before any row."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(weights), framework="pt") as f:
        meta, state = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    name = sorted(k for k in state if k.endswith(".weight"))[0]
    shape = tuple(state[name].shape)
    if broken == "missing":
        del state[name]
        reason = f"1 model tensor(s) not filled: {name}"
    else:
        state[name] = state[name][:1].clone()
        reason = f"shape mismatch, the file's vs the model's: {name} {(1, *shape[1:])} vs {shape}"
    save_file(state, tmp_path / "broken.safetensors", metadata=meta)
    res = run_main("bench", "--weights", tmp_path / "broken.safetensors", "--sizes", "32x32", *backends)
    assert res.returncode == 2 and not res.stdout, res.stderr
    assert res.stderr == f"matte: error: {tmp_path / 'broken.safetensors'}: {reason}\n"


@pytest.fixture(scope="module")
def resize_down(tmp_path_factory):
    """A small IndexNet whose recipe aligns photos down to the stride (32), as indexnet-mmagic's."""
    import torch

    from mattecli.models import build_model
    from mattecli.recipes import load_recipe
    from mattecli.weights import save_weights

    torch.manual_seed(0)
    recipe = load_recipe("demo-indexnet", ["infer.align=resize-down"])
    return save_weights(build_model(recipe), recipe, tmp_path_factory.mktemp("w") / "down.safetensors")


@pytest.mark.parametrize("e2e", [[], ["--e2e", "--count", "1"]])
def test_a_size_a_resize_down_recipe_cannot_run_is_a_usage_error(resize_down, e2e):
    """Was a failed row (exit 1) after the rows before it had been timed."""
    res = run_main("bench", "--weights", resize_down, "--backends", "torch", "--sizes", "64x64,16x40",
                   "--device", "cpu", *e2e)
    assert res.returncode == 2
    assert res.stderr == ("matte: error: --sizes 16x40 is under 32 pixels on a side, which a recipe that resizes its "
                          "inputs down to the stride cannot run\n")


def test_an_engine_profile_covers_the_sizes_as_the_pipeline_aligns_them(resize_down):
    """Unverified on TensorRT (not installable here): for a recipe that resizes down, the profile was
    aligned up (1088x1920) while the input timed was aligned down (1056x1920): every row outside it."""
    from mattecli.bench import _profile
    from mattecli.recipes import carried_recipe

    down = carried_recipe(resize_down)[0].infer
    assert _profile([Size(1920, 1080), Size(100, 70)], down) == ((64, 96), (1056, 1920), (1056, 1920))
    up = dataclasses.replace(down, align="resize")
    assert _profile([Size(1920, 1080), Size(100, 70)], up) == ((96, 128), (1088, 1920), (1088, 1920))


def test_a_table_written_to_a_file_keeps_every_value_whole():
    """`matte bench ... > log`: rich gave a console that is not a terminal 80 columns and cut the
    values that did not fit to an ellipsis ("3840x2…", "wall/d…" in the e2e table)."""
    import io

    from rich.console import Console
    from rich.table import Table

    from mattecli.progress import print_table

    table = Table(title="t")
    for col in ("size", "img/s", "wall/decode", "decode", "prepare", "model", "restore", "fg", "encode", "more"):
        table.add_column(col)
    table.add_row("3840x2160", "4.78", "2.12", "237", "95", "14", "52", "0", "52", "a-long-value-" * 3)
    out = io.StringIO()
    print_table(Console(file=out, width=80), table)
    text = out.getvalue()
    assert "…" not in text and "3840x2160" in text and "wall/decode" in text and "a-long-value-" * 3 in text
    assert max(map(len, text.splitlines())) > 80


@pytest.mark.parametrize("width, layout", [(100, "frame"), (75, "spaces"), (60, "rows")])
def test_a_table_on_a_narrow_terminal_keeps_every_value_whole(width, layout):
    """On a 60-column terminal rich folded the e2e table's cells mid-number ("3840 / x216 / 0",
    "123 / 45"): a frame of spaces is tried, then each row as "header  value" lines."""
    import io

    from rich.console import Console
    from rich.table import Table

    from mattecli.progress import print_table

    table = Table(title="t")
    for col in ("size", "img/s", "wall/decode", "decode", "prepare", "model", "restore", "fg", "encode"):
        table.add_column(col, justify="left" if col == "size" else "right")
    table.add_row("3840x2160", "0.52", "1.25", "240", "12345", "1234567", "80", "3100", "660")
    out = io.StringIO()
    print_table(Console(file=out, width=width, force_terminal=True, color_system=None), table)
    lines = out.getvalue().splitlines()
    assert max(map(len, lines)) <= width
    if layout == "rows":
        assert lines == ["t", "3840x2160", "  img/s        0.52", "  wall/decode  1.25", "  decode       240",
                         "  prepare      12345", "  model        1234567", "  restore      80", "  fg           3100",
                         "  encode       660"]
    else:
        values = "3840x2160 0.52 1.25 240 12345 1234567 80 3100 660".split()
        assert lines[-2 if layout == "frame" else -1].replace("│", " ").split() == values
        assert ("┃" in out.getvalue()) == (layout == "frame")


@pytest.mark.parametrize("width, line", [
    # 9 columns, 62 characters of cells: framed (two-space padding, ten rules) 90 wide
    (90, "│ 3840x2160 │  0.52 │        1.25 │    240 │   12345 │ 1234567 │      80 │ 3100 │    660 │"),
    # a frame of spaces two apart: 62 + 8 * 2 = 78
    (78, "3840x2160   0.52         1.25     240    12345  1234567       80  3100     660"),
    (89, "3840x2160   0.52         1.25     240    12345  1234567       80  3100     660"),
    # one apart: 70
    (77, "3840x2160  0.52        1.25    240   12345 1234567      80 3100    660"),
])
def test_a_table_that_just_fits_a_terminal_keeps_the_roomier_layout(width, line):
    """print_table keeps the frame while the table is as wide as the terminal or narrower, then columns
    two apart while they fit, and only then one apart."""
    import io

    from rich.console import Console
    from rich.table import Table

    from mattecli.progress import print_table

    table = Table()
    for col in ("size", "img/s", "wall/decode", "decode", "prepare", "model", "restore", "fg", "encode"):
        table.add_column(col, justify="left" if col == "size" else "right")
    table.add_row("3840x2160", "0.52", "1.25", "240", "12345", "1234567", "80", "3100", "660")
    out = io.StringIO()
    print_table(Console(file=out, width=width, force_terminal=True, color_system=None), table)
    assert line in [text.rstrip() for text in out.getvalue().splitlines()]


def test_a_table_printed_as_rows_aligns_the_values_and_skips_empty_ones():
    """The row layout: each row's first cell, then "  header  value" with the headers (not the first
    column's) padded to the longest; an empty value gets no line; no title, no title line."""
    import io

    from rich.console import Console
    from rich.table import Table

    from mattecli.progress import print_table

    table = Table()
    for col in ("a-very-long-first-header", "x", "yy"):
        table.add_column(col)
    table.add_row("r1", "1", "")
    table.add_row("r2", "", "22")
    out = io.StringIO()
    print_table(Console(file=out, width=12, force_terminal=True, color_system=None), table)
    assert out.getvalue().splitlines() == ["r1", "  x   1", "r2", "  yy  22"]


def test_the_timing_input_is_a_noisy_colour_image_and_a_three_level_trimap_of_the_size(monkeypatch):
    """fresh_input: a random image (smooth colour fields plus noise) and a blocky 0/128/255 trimap of
    `size` (WIDTHxHEIGHT), handed to `pipeline.prepare`, whose aligned input comes back."""
    import numpy as np

    from mattecli.inference import pipeline
    from mattecli.inference.random_input import fresh_input
    from mattecli.recipes import load_recipe

    seen = {}

    def prepare(image, trimap, cfg):
        seen.update(image=image, trimap=trimap)
        return "prepared"

    monkeypatch.setattr(pipeline, "prepare", prepare)
    cfg = load_recipe("demo-a2u").infer
    assert fresh_input(Size(480, 320), cfg, np.random.default_rng(0)) == "prepared"
    image, trimap = seen["image"], seen["trimap"]
    assert image.shape == (320, 480, 3) and image.dtype == np.uint8
    assert trimap.shape == (320, 480) and trimap.dtype == np.uint8
    assert set(np.unique(trimap).tolist()) == {0, 128, 255}  # nearest: no level between the three
    pixels = image.astype(float)
    assert pixels.std() > 40  # colour fields over the whole 0-255 range, not a flat image
    assert np.abs(pixels[..., 0] - pixels[..., 1]).mean() > 20  # colour, not grey
    second = np.abs(pixels[:, 2:] - 2 * pixels[:, 1:-1] + pixels[:, :-2]).mean()
    assert second > 10  # noise: a smooth field alone has no second difference but at its knots
    # the noise is clipped to 0-255, not wrapped round (a dark pixel made bright)
    blur = sum(pixels[1 + dy:319 + dy, 1 + dx:479 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)) / 9
    assert np.abs(pixels[1:-1, 1:-1] - blur).max() < 128


def test_the_timing_input_is_the_aligned_network_input():
    """What bench times and export --verify compares is prepare's output: (1, channels, H', W') with
    the sides aligned up to the stride (demo-a2u: stride 16, so 50x30 is 64x32)."""
    import numpy as np

    from mattecli.inference.random_input import fresh_input
    from mattecli.recipes import load_recipe

    cfg = load_recipe("demo-a2u").infer
    assert cfg.stride == 16
    x = fresh_input(Size(50, 30), cfg, np.random.default_rng(0))
    assert x.shape == (1, cfg.input_channels, 32, 64) and x.dtype == np.float32
    again = fresh_input(Size(50, 30), cfg, np.random.default_rng(0))
    assert np.array_equal(x, again)  # seeded: the same input for the same generator state


def test_measure_reports_the_median_and_fastest_of_the_timed_calls_after_warmup(monkeypatch):
    """`--repeat` timed calls after `--warmup` untimed ones; the median is reported (docs/commands/bench.md),
    images/s is its inverse, min_ms the fastest call, in six significant digits. Calls of 100 ms (warm-up),
    3.1234567, 1.2345678 and 8 ms: median 3.12346 ms, min 1.23457 ms, 320.1581 images/s."""
    import time

    from mattecli import bench
    from mattecli.inference import backends
    from mattecli.recipes import load_recipe

    clock = [0.0]
    durations = iter([0.1, 0.0031234567, 0.0012345678, 0.008])

    class FakeBackend:
        recipe, half = load_recipe("demo-a2u"), False

        def __call__(self, x):
            clock[0] += next(durations)

    monkeypatch.setattr(backends, "load_backend", lambda *a, **k: FakeBackend())
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    row = bench.measure("w.safetensors", "torch", Size(40, 30), "cpu", False, 3, 1)
    assert (row["median_ms"], row["min_ms"], row["images_per_s"]) == (3.12346, 1.23457, 320.1581)
    assert (row["repeat"], row["warmup"], row["input"], row["half"]) == (3, 1, "1x4x32x48", False)
    assert row["memory"] == "peak RSS of the process"


def test_peak_memory_is_vmhwm_in_mib_else_ru_maxrss_in_the_platforms_unit(monkeypatch):
    """/proc/self/status's VmHWM (kB) in MiB; without /proc, `resource`'s ru_maxrss: KiB on Linux,
    bytes on macOS; neither (Windows): None."""
    import io
    import resource
    import sys

    from mattecli import bench

    monkeypatch.setattr(bench, "open", lambda *a, **k: io.StringIO("Name:\tpython\nVmHWM:\t  204800 kB\n"),
                        raising=False)
    assert bench.peak_rss_mib() == 200.0

    def no_proc(*args, **kwargs):
        raise FileNotFoundError("/proc/self/status")

    monkeypatch.setattr(bench, "open", no_proc, raising=False)
    monkeypatch.setattr(resource, "getrusage", lambda who: type("Usage", (), {"ru_maxrss": 3 * 2**20}))
    monkeypatch.setattr(sys, "platform", "linux")
    assert bench.peak_rss_mib() == 3 * 1024  # KiB
    monkeypatch.setattr(sys, "platform", "darwin")
    assert bench.peak_rss_mib() == 3.0  # bytes
    monkeypatch.setitem(sys.modules, "resource", None)
    assert bench.peak_rss_mib() is None


def test_a_failed_row_gives_the_last_line_its_process_wrote_without_the_error_prefix(tmp_path, monkeypatch):
    """A row's process that fails: the row holds backend, size and its reason, the last line on its
    stderr (after any warning a library printed first) without "matte: error: "."""
    import os

    from mattecli.bench import run_row

    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.stderr.write('SomeWarning: printed first\\n')\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    row = run_row(tmp_path / "none.onnx", "onnx", Size(32, 24), "cpu", False, 1, 0)
    assert row == {"backend": "onnx", "size": "32x24", "error": f"{tmp_path / 'none.onnx'}: no such weights file"}


def test_half_with_an_fp16_graph_is_checked_for_cuda_not_refused_as_fp32(tcp_graphs):
    """An FP16 graph with --half runs in FP16: not the FP32 refusal, but --half's own need of CUDA."""
    from mattecli.bench import check_request

    with pytest.raises(UsageError, match=r"^--half needs --device cuda"):
        check_request(tcp_graphs[True], ["onnx"], "cpu", True)
    assert check_request(tcp_graphs[True], ["onnx"], "cpu", False) is True  # its own precision


def test_repeat_under_one_or_negative_warmup_is_a_usage_error(weights):
    """At least one timed call (a median of nothing is no figure); warm-up 0 or more."""
    for repeat, warmup in ((0, 1), (1, -1)):
        with pytest.raises(UsageError, match=rf"^--repeat must be >= 1 and --warmup >= 0 \(got {repeat}, {warmup}\)$"):
            run_bench(weights, ["torch"], [Size(32, 32)], repeat=repeat, warmup=warmup)


def test_an_engine_file_is_timed_as_it_is_under_either_suffix(tmp_path):
    """`.engine` or `.plan` (docs/commands/export.md): the file itself is the trt backend's model, nothing built."""
    from mattecli.bench import prepare_models

    for name in ("m.engine", "m.plan", "M.PLAN"):
        assert prepare_models(tmp_path / name, ["trt"], [Size(32, 32)], False, tmp_path) == {"trt": tmp_path / name}
    assert list(tmp_path.iterdir()) == []


def test_half_exports_the_fp16_graph_for_the_onnx_rows(tmp_path, weights, monkeypatch):
    """`--half` times an FP16 graph for onnx (exported once, as `matte export --half` would), torch the file."""
    import exporters.onnx
    import mattecli.weights
    from mattecli.bench import prepare_models

    exported, lines = [], []
    monkeypatch.setattr(mattecli.weights, "load_model", lambda path: ("model", "recipe"))  # no model to build
    monkeypatch.setattr(exporters.onnx, "to_onnx",
                        lambda model, path, recipe, half: exported.append((path, half)) or path)
    files = prepare_models(weights, ["torch", "onnx"], [Size(32, 32)], True, tmp_path, log=lines.append)
    assert files == {"torch": weights, "onnx": tmp_path / "model-fp16.onnx"}
    assert exported == [(tmp_path / "model-fp16.onnx", True)]
    assert lines == [f"exporting {weights.name} to ONNX (FP16)"]


def test_only_the_torch_backend_is_loaded_with_half(monkeypatch):
    """`--half` is applied by the torch backend (`matte infer --half`'s); an exported graph or engine runs
    in the precision it was exported in, so its backend is not asked for FP16."""
    from mattecli import bench
    from mattecli.inference import backends
    from mattecli.recipes import load_recipe

    asked = []

    class FakeBackend:
        recipe, half = load_recipe("demo-a2u"), False

        def __call__(self, x):
            pass

    def load_backend(model, backend, device, half):
        asked.append((backend, half))
        return FakeBackend()

    monkeypatch.setattr(backends, "load_backend", load_backend)
    for backend in ("torch", "onnx", "trt"):
        bench.measure("m", backend, Size(40, 30), "cpu", True, 1, 0)
    assert asked == [("torch", True), ("onnx", False), ("trt", False)]


def test_a_missing_model_file_is_named_before_any_check_of_its_kind(tmp_path):
    """A --weights path that is no file is refused as such first: not as an unknown suffix (a run's
    folder), nor as TensorRT missing (an engine)."""
    from mattecli.bench import check_request

    run = tmp_path / "run"
    run.mkdir()
    (run / "last.safetensors").write_bytes(b"")
    cases = [(tmp_path / "none.engine", ["trt"], f"{tmp_path / 'none.engine'}: no such weights file"),
             (tmp_path / "none.onnx", ["onnx"], f"{tmp_path / 'none.onnx'}: no such weights file"),
             (run, ["torch"], f"{run}: a folder, not a weights file; name the file (last.safetensors in it)")]
    for path, backends, message in cases:
        with pytest.raises(UsageError) as refused:
            check_request(path, backends, "cpu", False)
        assert str(refused.value) == message


def test_the_default_backends_go_by_the_suffix_in_any_case(tmp_path):
    """Without --backends: torch and onnx for weights, the file's own backend for a graph or an engine,
    its suffix read in any case, as `check_request` reads it (W.ONNX was given torch, then refused)."""
    assert default_backends(tmp_path / "W.ONNX") == ["onnx"]
    assert default_backends(tmp_path / "M.Engine") == default_backends(tmp_path / "m.PLAN") == ["trt"]
    assert default_backends(tmp_path / "W.SafeTensors") == ["torch", "onnx"]
