"""--device auto everywhere, one line for an unknown device, --half/--max-memory refusals,
`bench --e2e`, and the GPU check's dry run (issue 13 items 3, 5, 7, 8)."""

import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from mattecli.devices import resolve_device
from mattecli.errors import UsageError

ROOT = Path(__file__).resolve().parent.parent


def test_resolve_device():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == resolve_device(None) == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("gpu", "cuda0", "cuda:x", "mps:0"):
        with pytest.raises(UsageError, match="expected auto, cpu, cuda or cuda:N"):
            resolve_device(bad)
    # a Mac user's first guess is told it is not there, and what to use
    with pytest.raises(UsageError, match=r"^--device mps: expected auto, cpu, cuda or cuda:N \(Apple GPUs, mps, are "
                                         r"not supported: use cpu\)$"):
        resolve_device("mps")


def test_auto_is_the_cpu_for_an_onnx_model_where_onnx_runtime_cannot_use_the_gpu(monkeypatch, tmp_path):
    """A GPU host with the plain onnxruntime (what matte installs): `matte infer --weights m.onnx`
    failed by default, asking for onnxruntime-gpu, and `mattecli.load("m.onnx")` called the
    graph "not a loadable ONNX model"."""
    import onnxruntime

    from mattecli.inference.backends import OnnxBackend

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert resolve_device("auto", backend="onnx") == "cpu"
    assert resolve_device("auto", backend="torch") == resolve_device("auto") == "cuda"
    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert resolve_device("auto", backend="onnx") == "cuda"
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    graph = tmp_path / "m.onnx"
    graph.write_bytes(b"not even a graph")
    with pytest.raises(UsageError, match=r"^--device cuda with the onnx backend needs onnxruntime-gpu"):
        OnnxBackend.load(graph, device="cuda")  # the reason, not "not a loadable ONNX model"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_cuda_without_a_gpu_is_one_line():
    with pytest.raises(UsageError, match="CUDA is not available"):
        resolve_device("cuda:0")


def test_device_names_ignore_case_and_surrounding_spaces_and_messages_quote_what_was_typed(monkeypatch):
    """`--device` is checked after `.strip().lower()`: " CPU " is the cpu, "CUDA:1" is cuda:1; a refusal
    quotes the user's own text, not the normalised name."""
    assert resolve_device(" CPU ") == "cpu"
    with pytest.raises(UsageError, match=r"^--device GPU: expected auto"):
        resolve_device("GPU")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UsageError, match=r"^--device CUDA:0: CUDA is not available on this machine$"):
        resolve_device("CUDA:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device(" CUDA:1\n") == "cuda:1"


def test_cpu_takes_no_index():
    """Only auto, cpu, cuda and cuda:N are devices: "cpu:0" is refused like any other name."""
    with pytest.raises(UsageError, match=r"^--device cpu:0: expected auto, cpu, cuda or cuda:N$"):
        resolve_device("cpu:0")


def test_a_cuda_index_is_checked_against_the_gpus_numbered_from_0(monkeypatch):
    """cuda is cuda:0; cuda:N must be under torch.cuda.device_count() (two GPUs: cuda:0 and cuda:1),
    and N may have several digits; the name is returned as given, index and all."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda") == "cuda"  # the one GPU, number 0
    assert resolve_device("cuda:0") == "cuda:0"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(UsageError, match=r"^--device cuda:2: this machine has 2 CUDA device\(s\), numbered from 0$"):
        resolve_device("cuda:2")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 12)
    assert resolve_device("cuda:10") == "cuda:10"


def test_no_device_is_auto_and_auto_is_the_gpu_where_there_is_one(monkeypatch):
    """`device=None` (the Python API's default) means auto: the GPU when torch sees one."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device(None) == resolve_device("auto") == "cuda"


def test_auto_for_onnx_without_a_gpu_is_the_cpu_whatever_onnx_runtime_lists(monkeypatch):
    """auto is "cuda" for an .onnx model only where there is a GPU *and* onnxruntime can use it:
    onnxruntime-gpu listing its CUDA provider on a machine without a GPU still means the cpu."""
    import onnxruntime

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert resolve_device("auto", backend="onnx") == "cpu"


def test_mps_with_an_index_gets_the_apple_hint_too():
    """mps:N, like mps, is told Apple GPUs are not supported and to use cpu."""
    with pytest.raises(UsageError, match=r"^--device mps:1: expected auto, cpu, cuda or cuda:N \(Apple GPUs, mps, are "
                                         r"not supported: use cpu\)$"):
        resolve_device("mps:1")


def run_cli(monkeypatch, capsys, *args):
    """`python -m mattecli ARGS` in this process: (exit code, stderr)."""
    from mattecli.cli import main

    monkeypatch.setattr(sys, "argv", ["matte", *map(str, args)])
    with pytest.raises(SystemExit) as done:
        main()
    return done.value.code, capsys.readouterr().err


@pytest.mark.parametrize("command", [
    ["infer", "--weights", "w.safetensors", "--images", ".", "--out", "o"],
    ["eval", "--weights", "w.safetensors", "--data", "d"],
    ["bench", "--weights", "w.safetensors"],
    ["export", "--weights", "w.safetensors", "--format", "onnx", "--out", "m.onnx"],
    ["train", "--recipe", "demo-indexnet", "--data", "d"],
], ids=lambda c: c[0])
def test_an_unknown_device_is_one_line_on_every_command(command, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    code, err = run_cli(monkeypatch, capsys, *command, "--device", "gpu")
    assert code == 2
    assert err.startswith("matte") and err.endswith("error: --device gpu: expected auto, cpu, cuda or cuda:N\n")
    assert err.count("\n") == 1



@pytest.mark.parametrize("command", ["infer", "train"])
def test_a_gpu_that_cannot_take_the_model_is_one_line(command, monkeypatch, capsys, tmp_path):
    """A GPU whose memory another process holds: moving the model there raised torch's
    OutOfMemoryError as a traceback from matte infer (and train)."""
    from mattecli.models import build_model
    from mattecli.recipes import load_recipe
    from mattecli.weights import save_weights

    recipe = load_recipe("demo-indexnet")
    weights = save_weights(build_model(recipe), recipe, tmp_path / "w.safetensors")
    for module in ("mattecli.devices", "mattecli.cli.infer"):  # as on a machine with a GPU
        monkeypatch.setattr(f"{module}.resolve_device", lambda text, option="--device", backend=None: "cuda",
                            raising=False)
    real_to = torch.nn.Module.to

    def to(self, *args, **kwargs):
        if args and str(args[0]).startswith("cuda"):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a total "
                                         "capacity of 79.19 GiB of which 3.81 MiB is free.")
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", to)
    if command == "infer":
        args = ["infer", "--weights", weights, "--images", tmp_path, "--out", tmp_path / "o", "--max-memory", "4GB"]
    else:
        from mattecli.data.synthetic import prepare_synthetic

        prepare_synthetic(tmp_path / "d", n_train=2, n_test=0, size=64, seed=0)
        capsys.readouterr()  # its progress bar: only what train says counts
        args = ["train", "--recipe", "demo-indexnet", "--data", tmp_path / "d", "--out", tmp_path / "run"]
    code, err = run_cli(monkeypatch, capsys, *args, "--device", "cuda")
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("matte") and "error: the model could not be moved to cuda" in err
    assert "CUDA out of memory. Tried to allocate" in err


@pytest.mark.parametrize("flags, message", [
    (["--max-memory", "0"], "--max-memory '0': a ceiling of zero"),
    (["--max-memory", "0GB"], "--max-memory '0GB': a ceiling of zero"),
    (["--half", "--device", "cpu"], "--half needs a CUDA device"),
])
def test_infer_refusals(flags, message, monkeypatch, capsys, tmp_path):
    code, err = run_cli(monkeypatch, capsys, "infer", "--weights", tmp_path / "w.safetensors", "--images", tmp_path,
                        "--out", tmp_path / "o", *flags)
    assert code == 2 and err.startswith(f"matte: error: {message}") and err.count("\n") == 1


def test_half_and_compile_are_for_the_torch_backend(tmp_path):
    from mattecli.inference.backends import load_backend

    graph = tmp_path / "m.onnx"
    graph.write_bytes(b"")
    with pytest.raises(UsageError, match="--half is for the torch backend .*: export it with `matte export --half`$"):
        load_backend(graph, None, "cpu", half=True)
    junk = tmp_path / "junk.onnx"  # not a graph: the flag is refused first, the file when it is opened
    junk.write_bytes(b"not a graph")
    with pytest.raises(UsageError, match="^--half is for the torch backend .*: export it with `matte export --half`$"):
        load_backend(junk, None, "cpu", half=True)
    # --compile was told "an exported model has its precision built in: export it with `matte export --half`"
    compile_reason = ("--compile is for the torch backend (a .safetensors file): torch.compile compiles a PyTorch "
                      "model; an exported model is optimised by its own runtime (ONNX Runtime, TensorRT)")
    with pytest.raises(UsageError) as refused:
        load_backend(graph, None, "cpu", compile=True)
    assert str(refused.value) == compile_reason
    import mattecli

    with pytest.raises(ValueError) as refused:
        mattecli.load(graph, "cpu", compile=True)
    assert str(refused.value) == compile_reason
    onnx = pytest.importorskip("onnx")
    fp16 = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []))
    onnx.helper.set_model_props(fp16, {"precision": "float16"})  # what `matte export --half` writes
    onnx.save(fp16, tmp_path / "m16.onnx")
    with pytest.raises(UsageError) as refused:  # it said to export with --half, which made this graph
        load_backend(tmp_path / "m16.onnx", None, "cpu", half=True)
    assert str(refused.value) == ("--half is for the torch backend (a .safetensors file); m16.onnx runs in FP16 "
                                  "already: leave out --half")


@pytest.fixture(scope="module")
def null_graph(tmp_path_factory):
    """An ONNX graph that returns the trimap channel: a model that costs nothing."""
    from exporters.onnx import to_onnx
    from mattecli.recipes import load_recipe

    class Null(torch.nn.Module):
        def forward(self, x):
            return x[:, 3:4] * 1.0

    return to_onnx(Null(), tmp_path_factory.mktemp("null") / "null.onnx", recipe=load_recipe("indexnet-m2o-nl-ctx"))


def test_bench_checks_a_graph_without_a_session_of_its_own(null_graph, monkeypatch):
    """bench's up-front check of an .onnx file made an ONNX Runtime session only to read the recipe;
    that session slowed the run it was checking (bench --e2e on this graph at 3840x2160, CPU-2: 1.9x
    the decode time instead of 1.5x, docs/benchmarks.md). The file is now read with onnx alone."""
    import onnxruntime

    from mattecli.bench import check_request

    def no_session(*args, **kwargs):
        raise AssertionError("an ONNX Runtime session was made for the check")

    monkeypatch.setattr(onnxruntime, "InferenceSession", no_session)
    check_request(null_graph, ["onnx"], "cpu", False)


def test_bench_e2e_reports_every_stage(null_graph, tmp_path):
    from mattecli.bench_e2e import STAGES, run_e2e
    from mattecli.sizes import Size

    report = run_e2e(null_graph, [Size(97, 65)], count=2, workers=2, save=("alpha", "fg"), json_path=tmp_path / "e.json")
    row = report["rows"][0]
    assert json.loads((tmp_path / "e.json").read_text()) == report
    assert row["size"] == "97x65" and row["images"] == 2 and row["images_per_s"] > 0
    assert set(row["stages"]) == set(STAGES)
    # every stage ran (the generated photo crop has fractional alpha, so foreground runs too)
    assert all(row["stages"][s]["total_s"] > 0 for s in STAGES)
    assert row["wall_over_decode"] == pytest.approx(row["wall_s"] / row["decode_s"], rel=1e-2)


def test_bench_e2e_times_jpeg_photos(null_graph, tmp_path, monkeypatch):
    """--photos jpg: the photos a camera writes (the decode a folder of them costs), trimaps PNG."""
    import mattecli.bench_e2e as bench_e2e
    import mattecli.inference.batch as batch
    from mattecli.sizes import Size

    read, formats = batch.read_image, []
    monkeypatch.setattr(batch, "read_image", lambda path, **kw: formats.append(Path(path).suffix) or read(path, **kw))
    report = bench_e2e.run_e2e(null_graph, [Size(97, 65)], count=2, workers=0, photos="jpg")
    assert report["photos"] == "jpg" and report["rows"][0]["images"] == 2 and set(formats) == {".jpg"}
    folder = tmp_path / "made"
    bench_e2e.make_inputs(folder, 1, 97, 65, "jpg")
    assert sorted(p.name for p in folder.iterdir()) == ["e2e 000.jpg", "e2e 000_trimap.png"]
    assert Image.open(folder / "e2e 000.jpg").format == "JPEG"


def test_bench_e2e_cli(null_graph, monkeypatch, capsys, tmp_path):
    from mattecli.cli import main

    monkeypatch.setattr(sys, "argv", ["matte", "bench", "--weights", str(null_graph), "--e2e", "--sizes", "64x48",
                                      "--count", "1", "--device", "cpu", "--json", str(tmp_path / "e.json")])
    with pytest.raises(SystemExit) as done:
        main()
    assert done.value.code in (0, None)
    out = capsys.readouterr().out
    assert "matte bench --e2e: null.onnx on cpu" in out and "64x48" in out
    assert json.loads((tmp_path / "e.json").read_text())["rows"][0]["size"] == "64x48"


@pytest.mark.slow  # the GPU check's dry run: every code path at tiny sizes, a few minutes on a busy 2-core CPU
def test_device_check_dry_run(tmp_path):
    env = {"OUT": str(tmp_path), "PYTHON": sys.executable, "PATH": "/usr/bin:/bin"}
    subprocess.run(["bash", str(ROOT / "benchmarks" / "device_check.sh"), "--cpu"], env=env, check=True, timeout=900)
    result = json.loads((tmp_path / "device_check.json").read_text())
    assert {r["recipe"] for r in result["model"]} == {"indexnet-m2o-nl-ctx", "a2u-dynamic-cs-d-gn", "tcp"}
    assert all("median_ms" in r for r in result["model"])
    assert [(r["save"], r["workers"], r["photos"]) for r in result["e2e"]] == [
        ("alpha", 0, "png"), ("alpha", 1, "png"), ("alpha,fg", 0, "png"), ("alpha", 0, "jpg")]
    assert all(r["max_levels"] >= 0 for r in result["parity"])
    assert result["foreground"][0]["median_ms"] > 0 and result["foreground"][0]["max_levels"] >= 0
    assert "device_check.py: exit 0" in (tmp_path / "device_check.log").read_text()
    assert "| end to end, 3840x2160, --save alpha |" in (tmp_path / "device_report.md").read_text()



def _device_report():
    import importlib.util

    spec = importlib.util.spec_from_file_location("device_report", ROOT / "benchmarks" / "device_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_device_report_states_the_targets_from_the_h200_check():
    """The report a GPU session pastes from: issue 13's targets, read from the stored H200 check."""
    report = _device_report()
    full = json.loads((ROOT / "benchmarks/results/device_check-h200-2026-11-27-full.json").read_text())
    text = report.report(full)
    assert ("| IndexNet float16 model-only, 1920x1080 | >= 300 images/s | 44.3 images/s; "
            "fastest float16 row: fp16-compiled, 51.57 | no |") in text
    assert "| end to end, 3840x2160, --save alpha | >= 30 images/s | 6.95 images/s (16 workers) | no |" in text
    assert "| foreground, 3840x2160 | <= 50 ms | 48.26 ms | yes |" in text
    assert "| indexnet-m2o-nl-ctx | 3840x2160 | 113.1 (8.84) | 89.5 (11.2) |" in text
    assert "| indexnet-m2o-nl-ctx | 3840x2160 | torch.compile (fp16-compiled against fp16) | 1.34x |" in text
    assert "- tcp fp16-compiled : time budget spent" in text
    # the full check counted cuDNN's first-call search in its peaks: no recipe values are suggested from it
    assert "first call included" in text and "suggest" not in text


def test_device_report_suggests_the_recipe_memory_figures_from_steady_peaks(tmp_path):
    """The rerun measured steady-state peaks; the recipes' figures are those plus about 15%, rounded
    up to 50 (docs/benchmarks.md): IndexNet 1,280 / 1,043 B -> 1,500 / 1,200, TCP 383 -> 450."""
    report = _device_report()
    assert [report.suggested(b) for b in (1280, 1043, 1616, 1286, 510, 383)] == [1500, 1200, 1900, 1500, 600, 450]
    # the check of 2026-11-30 (BatchNorms folded), from which the recipes' figures now come
    source = ROOT / "benchmarks/results/device_check-h200-2026-11-30-full.json"
    assert report.main([str(source), "--out", str(tmp_path / "r.md")]) == 0
    text = (tmp_path / "r.md").read_text()
    assert "| indexnet-m2o-nl-ctx | 1500 -> 1500 | 1100 -> 1100 |" in text
    assert "| a2u-dynamic-cs-d-gn | 1850 -> 1850 | 950 -> 950 |" in text
    assert "| tcp | 750 -> 750 | 450 -> 450 |" in text
    assert "| IndexNet float16 3840x2160, one pass | < 8 GB (7,629 MiB) | 7,619 MiB (steady state) | yes |" in text
    assert ("| IndexNet float16 model-only, 1920x1080 | >= 300 images/s | 76.18 images/s; fastest float16 row: "
            "fp16-graphs, 80.65 | no |") in text
    old = ROOT / "benchmarks/results/device_check-h200-2026-11-27-memory.json"  # before folding
    assert report.main([str(old), "--out", str(tmp_path / "old.md")]) == 0
    text = (tmp_path / "old.md").read_text()
    assert "| IndexNet float16 3840x2160, one pass | < 8 GB (7,629 MiB) | 8,313 MiB (steady state) | no |" in text
    assert "| IndexNet float16 model-only, 1920x1080 | >= 300 images/s | not measured | not measured |" in text


def _device_check():
    import importlib.util

    spec = importlib.util.spec_from_file_location("device_check", ROOT / "benchmarks" / "device_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_device_check_records_a_failing_section_and_runs_the_next(tmp_path, monkeypatch):
    """One GPU session is all the device check gets: a section that raised (out of memory on a
    smaller GPU, say) ended the run, and the sections after it were never measured."""
    check = _device_check()

    def out_of_memory(*args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore")

    monkeypatch.setattr(check, "parity_rows", out_of_memory)
    monkeypatch.setattr(check, "foreground_rows", lambda *args: [{"size": "96x64", "median_ms": 1.0}])
    assert check.main(["--out", str(tmp_path), "--cpu", "--only", "parity,foreground"]) == 1
    result = json.loads((tmp_path / "device_check.json").read_text())
    assert result["errors"] == {"parity": "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"}
    assert result["foreground"] == [{"size": "96x64", "median_ms": 1.0}]
    assert [p.name for p in tmp_path.iterdir()] == ["device_check.json"]  # renamed into place, no temp left


def test_device_check_keeps_each_model_row_on_disk_as_it_is_measured(tmp_path, monkeypatch):
    """The outer `timeout` kills device_check.py at 350 s: the model rows were written only when the
    whole section ended, so a run killed in it lost every figure it had measured. Now each row is
    saved as it comes, and IndexNet in float16 (issue 13's targets) comes first, compiled rows last."""
    check = _device_check()
    assert check.model_order(("fp32", "fp16", "bf16", "fp16-compiled"))[:3] == [
        ("fp16", "indexnet-m2o-nl-ctx"), ("fp32", "indexnet-m2o-nl-ctx"), ("fp32", "a2u-dynamic-cs-d-gn")]
    assert check.model_order(check.PRECISIONS)[-3:] == [("fp16-compiled", n) for n in check.COMPILE_ORDER]
    assert check.SECTIONS.index("e2e") < check.SECTIONS.index("parity")
    on_disk = []

    def seeded_backend(name, device, precision):  # what the JSON holds when each backend is built
        path = tmp_path / "device_check.json"
        on_disk.append([row["recipe"] for row in json.loads(path.read_text())["model"]] if path.exists() else None)
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(check, "seeded_backend", seeded_backend)
    assert check.main(["--out", str(tmp_path), "--cpu", "--only", "model", "--precisions", "fp16"]) == 0
    assert on_disk == [None, ["indexnet-m2o-nl-ctx"], ["indexnet-m2o-nl-ctx", "a2u-dynamic-cs-d-gn"]]
    rows = json.loads((tmp_path / "device_check.json").read_text())["model"]
    assert [row["error"] for row in rows] == ["RuntimeError: CUDA error: an illegal memory access was encountered"] * 3


def test_device_check_captures_cuda_graphs_after_the_figures_the_targets_need(tmp_path, monkeypatch):
    """The float16 CUDA-graph rows (never run yet) were model rows, before the e2e, foreground and
    parity sections: a capture that fails can leave the CUDA context unusable, and every section
    after it with it. They are a section of their own now, after the profile, before compilation."""
    check, calls = _device_check(), []
    assert check.SECTIONS.index("profile") < check.SECTIONS.index("graphs") < check.SECTIONS.index("compiled")
    monkeypatch.setattr(check, "model_rows", lambda *args, **kwargs: calls.append(args[5]) or [])
    assert check.main(["--out", str(tmp_path), "--cpu", "--only", "model,graphs",
                       "--precisions", "fp16,fp16-graphs,fp16-compiled"]) == 0
    assert calls == [("fp16",), ("fp16-graphs",)]


def test_a_compilation_starts_only_with_the_time_it_needs_left(tmp_path, monkeypatch):
    """IndexNet's first compiled call took 152 s on the H200; the compiled rows come last, and one
    started with less left was cut off by device_check.sh's timeout, measuring nothing."""
    check, deadlines = _device_check(), []
    monkeypatch.setattr(check, "model_rows", lambda *args, **kwargs: deadlines.append(args[4]) or [])
    monkeypatch.setattr(check, "e2e_rows", lambda *args, **kwargs: [])  # the compiled tail: its own test
    monkeypatch.setattr(check, "parity_rows", lambda *args, **kwargs: [])
    start = time.time()
    assert check.main(["--out", str(tmp_path), "--cpu", "--only", "compiled", "--precisions", "fp16-compiled",
                       "--time-limit", "350", "--compile-budget", "600"]) == 0
    assert start + 350 - check.COMPILE_NEEDS_S - 5 < deadlines[0] <= time.time() + 350 - check.COMPILE_NEEDS_S
    assert len(deadlines) == 2  # IndexNet at the largest size first, the other compiled rows after
    assert check.main(["--out", str(tmp_path), "--cpu", "--only", "compiled", "--precisions", "fp16-compiled",
                       "--compile-budget", "90"]) == 0  # without a limit: the budget alone
    assert time.time() + 85 < deadlines[2] <= time.time() + 90


def test_the_compile_budget_counts_from_the_sections_start_not_from_each_step(tmp_path, monkeypatch):
    """`compile_deadline()` added --compile-budget to the time of each call: every step of the
    compiled section got a fresh budget, so a budget of 1 s let four steps of 2 s each run."""
    from types import SimpleNamespace

    check, now, steps = _device_check(), [1000.0], []

    def step(name):
        def run(*args, **kwargs):
            steps.append(name)
            now[0] += 2.0
            return []
        return run

    monkeypatch.setattr(check, "time", SimpleNamespace(time=lambda: now[0], perf_counter=time.perf_counter,
                                                       strftime=time.strftime))
    for name in ("model_rows", "e2e_rows", "parity_rows"):
        monkeypatch.setattr(check, name, step(name))
    assert check.main(["--out", str(tmp_path), "--cpu", "--only", "compiled", "--precisions", "fp16-compiled",
                       "--compile-budget", "1"]) == 0
    # IndexNet's target row starts within the budget; after its 2 s nothing more is started but
    # the remaining model rows, which model_rows itself skips past the deadline it is given
    assert steps == ["model_rows", "model_rows"]
    steps.clear()
    assert check.main(["--out", str(tmp_path), "--cpu", "--only", "compiled", "--precisions", "fp16-compiled",
                       "--compile-budget", "3"]) == 0
    assert steps == ["model_rows", "e2e_rows", "model_rows"]  # the parity would start 4 s in: past 3


def test_the_compiled_section_ends_with_indexnet_end_to_end_and_its_parity_while_time_is_left(tmp_path, monkeypatch):
    """On the H200 the compiled graphs halved IndexNet's pass (static shapes), but nothing measured
    `--compile` end to end (the 30 images/s target) or against float32. The compiled section now
    ends with both, for IndexNet, each only while the compile deadline leaves time; their rows go
    where the e2e and parity rows go, and the report marks the compiled one."""
    check, calls = _device_check(), []

    def model_rows(*args, only=None, **kwargs):
        picked = [(n, size) for n in check.RECIPES for size in args[1] if only is None or only(n, size)]
        calls.append(("model", args[5], "target" if picked == [("indexnet-m2o-nl-ctx", (96, 64))] else "rest"))

    monkeypatch.setattr(check, "model_rows", model_rows)

    def e2e_rows(device, size, count, keep=None, runs=check.E2E_RUNS, compile=False):
        calls.append(("e2e", runs, compile))
        keep({"size": "3840x2160", "images_per_s": 31.0, "wall_over_decode": 0.9, "save": "alpha", "workers": 16,
              "photos": "png", "compile": True, "stages": {}})

    def parity_rows(device, size, precisions=("fp16",), recipes=check.RECIPES):
        calls.append(("parity", precisions, recipes))
        return [{"recipe": recipes[0], "precision": precisions[0], "how": "whole", "max_levels": 1,
                 "mean_levels": 0.01, "share_within_1": 1.0}]

    monkeypatch.setattr(check, "e2e_rows", e2e_rows)
    monkeypatch.setattr(check, "parity_rows", parity_rows)
    assert check.main(["--out", str(tmp_path), "--cpu", "--only", "compiled", "--precisions", "fp16-compiled",
                       "--compile-budget", "600"]) == 0
    assert calls == [("model", ("fp16-compiled",), "target"), ("e2e", check.E2E_RUNS[:1], True),
                     ("parity", ("fp16-compiled",), ("indexnet-m2o-nl-ctx",)), ("model", ("fp16-compiled",), "rest")]
    assert check.E2E_RUNS[0] == (("alpha",), None, "png")
    result = json.loads((tmp_path / "device_check.json").read_text())
    assert result["e2e"][0]["compile"] is True and result["parity"][0]["precision"] == "fp16-compiled"
    report = _device_report()
    assert report.main([str(tmp_path / "device_check.json"), "--out", str(tmp_path / "r.md")]) == 0
    text = (tmp_path / "r.md").read_text()
    assert ("| end to end, 3840x2160, --save alpha | >= 30 images/s | eager not measured; --compile: 31.00 "
            "| yes |") in text
    assert "| 3840x2160 | png | alpha (--compile) | 16 | 31.00 |" in text
    calls.clear()  # no time left after the compiled rows: neither runs
    monkeypatch.setattr(check, "COMPILE_NEEDS_S", 10**6)
    assert check.main(["--out", str(tmp_path), "--cpu", "--only", "compiled", "--precisions", "fp16-compiled",
                       "--time-limit", "300"]) == 0
    assert calls == [("model", ("fp16-compiled",), "target"), ("model", ("fp16-compiled",), "rest")]
    calls.clear()  # nor without the compiled section
    assert check.main(["--out", str(tmp_path), "--cpu", "--only", "model", "--precisions", "fp16,fp16-compiled"]) == 0
    assert calls == [("model", ("fp16",), "rest")]


def test_the_parity_section_compares_channels_last_too_on_cuda(tmp_path, monkeypatch):
    """TCP's --half passes now run in channels_last (faster on the H200); its alpha against float32
    was never measured in that layout. (CUDA faked: only the section's arguments are looked at.)"""
    check, seen = _device_check(), []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "a fake GPU")
    monkeypatch.setattr(check, "parity_rows", lambda device, size, precisions: seen.append((device, size, precisions)))
    assert check.main(["--out", str(tmp_path), "--only", "parity"]) == 0
    assert seen == [("cuda", (3840, 2160), ("fp16", "bf16", "fp16-channels-last"))]


def test_the_graphed_foreground_is_captured_with_the_graphs_after_the_targets_figures(tmp_path, monkeypatch):
    """The foreground port is likely bound by launching (some 4,000 ATen calls): the check replays it
    as one CUDA graph, in the `graphs` section (a failed capture may spoil the CUDA context, so not
    in the foreground section, before parity and profile); the report puts it beside the eager time."""
    check, calls = _device_check(), []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "a fake GPU")
    monkeypatch.setattr(check, "model_rows", lambda *args, **kwargs: calls.append(("model", args[5])))
    monkeypatch.setattr(check, "foreground_rows", lambda device, size, repeat: calls.append("foreground") or [
        {"size": "3840x2160", "device": device, "median_ms": 73.7}])
    monkeypatch.setattr(check, "graphed_foreground_rows", lambda device, size, repeat: calls.append("graphed") or [
        {"size": "3840x2160", "device": device, "median_ms": 12.5, "max_levels_from_eager": 0}])
    assert check.main(["--out", str(tmp_path), "--only", "foreground,graphs"]) == 0
    assert calls == ["foreground", ("model", ("fp16-graphs",)), "graphed"]
    report = _device_report()
    assert report.main([str(tmp_path / "device_check.json"), "--out", str(tmp_path / "r.md")]) == 0
    assert ("3840x2160 on cuda: 73.7 ms; replayed as one CUDA graph: 12.5 ms (largest difference from the eager "
            "estimate: 0 levels).") in (tmp_path / "r.md").read_text()
    calls.clear()
    assert check.main(["--out", str(tmp_path), "--only", "foreground"]) == 0  # not without the graphs section
    assert calls == ["foreground"]


def test_model_rows_run_only_the_rows_asked_for_and_no_compilation_past_the_deadline(monkeypatch):
    """Static shapes make each size a compilation of its own: the deadline is checked before each,
    not only before a recipe's first."""
    check, built = _device_check(), []

    class Backend:
        def forward(self, x):
            return x[:, :1]

    def seeded_backend(name, device, precision):
        built.append((name, precision))
        from mattecli.recipes import load_recipe

        return Backend(), load_recipe(name)

    monkeypatch.setattr(check, "seeded_backend", seeded_backend)
    sizes = [(96, 64), (64, 32)]
    rows = check.model_rows("cpu", sizes, 1, 0, time.time() + 600, ("fp16-compiled",),
                            only=lambda name, size: name == "tcp" or size == (64, 32))
    assert [(r["recipe"], r["size"]) for r in rows] == [
        ("indexnet-m2o-nl-ctx", "64x32"), ("tcp", "96x64"), ("tcp", "64x32"), ("a2u-dynamic-cs-d-gn", "64x32")]
    assert all("median_ms" in r for r in rows)
    rows = check.model_rows("cpu", sizes, 1, 0, time.time() + 600, ("fp16",), only=lambda name, size: False)
    assert rows == [] and len(built) == 3  # nothing asked for: no backend built

    from types import SimpleNamespace

    times = iter([0.0, 0.0, 10.0])  # the deadline (5) passes between the first size and the second
    monkeypatch.setattr(check, "time", SimpleNamespace(time=lambda: next(times, 10.0), perf_counter=time.perf_counter,
                                                       strftime=time.strftime))
    rows = check.model_rows("cpu", sizes, 1, 0, 5.0, ("fp16-compiled",), only=lambda name, size: name == "tcp")
    assert [r.get("skipped") for r in rows] == [None, "time budget spent"]


def test_the_parity_reference_is_float32_without_tf32(monkeypatch):
    """cuDNN runs float32 convolutions in TF32 by default: "half against float32" was half against TF32."""
    from collections import namedtuple

    check, seen, Run = _device_check(), [], namedtuple("Run", "alpha how")

    class Recording:
        def __init__(self, backend, cfg):
            pass

        def run(self, image, trimap):
            seen.append(torch.backends.cudnn.allow_tf32)
            return Run(np.zeros(trimap.shape, np.uint8), "whole")

    import mattecli.inference.pipeline as pipeline

    monkeypatch.setattr(pipeline, "Pipeline", Recording)
    monkeypatch.setattr(check, "seeded_backend", lambda name, device, precision: (None, SimpleNamespace(infer=None)))
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    rows = check.parity_rows("cpu", (96, 64), ("fp16",))
    assert seen == [False, True] * len(check.RECIPES) and torch.backends.cudnn.allow_tf32
    assert [row["max_levels"] for row in rows] == [0] * len(check.RECIPES)


def test_device_check_measures_the_host_pool_as_threads_and_as_processes(tmp_path):
    """`matte infer`'s pool is threads on the reasoning that decoding and encoding release the GIL;
    issue 13 asks for whichever measures faster. The `pool` section runs the same host work (decode
    and hand the arrays over, encode and write) in threads and in spawned processes, one per core,
    and the report shows both."""
    check = _device_check()
    # after the graphs (the pool uses no GPU and answers a smaller question), before compilation
    assert check.SECTIONS.index("graphs") < check.SECTIONS.index("pool") < check.SECTIONS.index("compiled")
    assert check.main(["--out", str(tmp_path), "--cpu", "--only", "pool"]) == 0
    row, = json.loads((tmp_path / "device_check.json").read_text())["pool"]
    assert (row["size"], row["rounds"], row["count"] >= 2 * row["workers"]) == ("96x64", 1, True)
    for stage in ("decode", "encode"):
        runs = {kind: row["images_per_s"][kind][0][stage] for kind in ("threads", "processes")}
        assert all(value > 0 for value in runs.values())
        assert row["median"][stage] == {"threads": round(runs["threads"], 2), "processes": round(runs["processes"], 2),
                                        "ratio": round(runs["threads"] / runs["processes"], 2)}
    text = _device_report().report(json.loads((tmp_path / "device_check.json").read_text()))
    assert f"| decode | {row['median']['decode']['threads']:g} | {row['median']['decode']['processes']:g} |" in text


def test_device_check_keeps_each_e2e_row_on_disk_as_it_is_measured(tmp_path, monkeypatch):
    """The same for the e2e section: four runs of some 25 s each at 4K, the first issue 13's target."""
    import mattecli.bench_e2e

    check, path, on_disk = _device_check(), tmp_path / "device_check.json", []

    def run_e2e(weights, sizes, save, photos, **kwargs):
        on_disk.append(len(json.loads(path.read_text()).get("e2e", [])) if path.exists() else None)
        return {"rows": [{"size": "96x64", "images_per_s": 1.0}], "workers": 0, "half": False}

    monkeypatch.setattr(mattecli.bench_e2e, "run_e2e", run_e2e)
    assert check.main(["--out", str(tmp_path), "--cpu", "--only", "e2e"]) == 0
    assert on_disk == [None, 1, 2, 3]
    assert [(row["save"], row["photos"]) for row in json.loads(path.read_text())["e2e"]] == [
        ("alpha", "png"), ("alpha", "png"), ("alpha,fg", "png"), ("alpha", "jpg")]


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@CUDA
@pytest.mark.parametrize("half", [False, True], ids=["fp32", "fp16"])
def test_infer_folder_on_cuda_writes_what_the_cpu_writes(half, tmp_path):
    """The whole runner on the GPU path (prepare and restore on the device, workers per core)
    against the CPU's numpy path, same seeded model: within a level on the unknown band."""
    from mattecli.imageio import read_gray
    from mattecli.inference.batch import default_workers, infer_folder
    from mattecli.inference.pipeline import load_pipeline
    from mattecli.models import build_model
    from mattecli.recipes import load_recipe
    from mattecli.weights import save_weights
    from tests.infer_helpers import make_pairs

    recipe = load_recipe("indexnet-m2o-nl-ctx")
    torch.manual_seed(0)
    weights = save_weights(build_model(recipe), recipe, tmp_path / "w.safetensors")
    images = make_pairs(tmp_path / "in", ["a", "b", "c"], size=(97, 131))
    outs = {}
    for device in ("cpu", "cuda"):
        pipeline = load_pipeline(weights, None, device, half=half and device == "cuda")
        report = infer_folder(pipeline, images, tmp_path / device, progress=False, workers=default_workers(device),
                              save=["alpha", "fg"])
        assert len(report.done) == 3 and not report.failed
        outs[device] = {n: read_gray(tmp_path / device / f"{n}.png") for n in "abc"}
    for n in "abc":
        diff = np.abs(outs["cuda"][n].astype(int) - outs["cpu"][n].astype(int))
        assert (diff <= 1).mean() >= 0.999 and diff.max() <= (3 if half else 1)


@pytest.mark.gpu
@CUDA
def test_max_memory_tiles_on_cuda_from_the_recipe_figure():
    from mattecli.inference.backends import TorchBackend
    from mattecli.inference.pipeline import Pipeline
    from mattecli.inference.tiling import model_bytes_per_pixel, pass_bytes
    from mattecli.models import build_model
    from mattecli.recipes import load_recipe

    recipe = load_recipe("indexnet-m2o-nl-ctx")
    per_pixel, source = model_bytes_per_pixel(recipe.infer, "cuda", half=True)
    assert per_pixel > 0 and "cuda" in source
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    trimap = np.zeros((300, 400), np.uint8)
    trimap[100:200, 100:300] = 128
    torch.manual_seed(0)
    pipeline = Pipeline(TorchBackend(build_model(recipe), recipe, "cuda"), recipe.infer,
                        max_bytes=pass_bytes(300, 400, recipe.infer, per_pixel) // 2, bytes_per_pixel=per_pixel)
    alpha, how = pipeline.run(image, trimap)
    assert how.startswith("tiled") and alpha.shape == (300, 400) and alpha.dtype == np.uint8


def test_bench_e2e_names_a_failing_size_and_times_the_others(tmp_path, monkeypatch, capsys):
    """A size the model cannot run (a static graph's other sizes) ended the run with a RuntimeError
    traceback naming a generated file; it is now a failed row, as in the model rows, and exit 1."""
    from exporters.onnx import to_onnx
    from mattecli.cli import main
    from mattecli.recipes import load_recipe

    class Null(torch.nn.Module):
        def forward(self, x):
            return x[:, 3:4] * 1.0

    graph = to_onnx(Null(), tmp_path / "static.onnx", recipe=load_recipe("indexnet-m2o-nl-ctx"), dynamic=False,
                    size=(64, 64))
    monkeypatch.setattr(sys, "argv", ["matte", "bench", "--weights", str(graph), "--e2e", "--sizes", "96x64,64x64",
                                      "--count", "1", "--device", "cpu", "--json", str(tmp_path / "e.json")])
    with pytest.raises(SystemExit) as done:
        main()
    err = capsys.readouterr().err
    assert done.value.code == 1 and "matte bench --e2e: 96x64: 1 of 1 images failed: " in err, err
    assert "exported for 64x64 input only" in err and "Traceback" not in err
    rows = json.loads((tmp_path / "e.json").read_text())["rows"]
    assert [r["size"] for r in rows] == ["96x64", "64x64"] and "error" in rows[0] and rows[1]["images_per_s"] > 0


def test_onnx_runtime_runs_on_the_gpu_the_device_names():
    """docs/commands/infer.md: --device cuda (torch's first GPU) or cuda:N; ONNX Runtime gets CUDA on that
    device_id, then the CPU for the operators CUDA lacks; a cpu device gets the CPU alone."""
    from mattecli.inference.backends import _onnx_providers

    ort = SimpleNamespace(get_available_providers=lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert _onnx_providers(ort, "cuda") == [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
    assert _onnx_providers(ort, "cuda:1") == [("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]
    assert _onnx_providers(ort, "cpu") == ["CPUExecutionProvider"]
