"""`matte export`: a weights file -> an ONNX graph or a TensorRT engine, optionally verified."""

from __future__ import annotations

from pathlib import Path

import typer

FORMATS = ("onnx", "trt")
MIN_OPSET, MAX_OPSET = 17, 20  # = exporters.onnx.MIN_OPSET; torch's TorchScript exporter stops at 20


def main(
    weights: Path = typer.Option(..., "--weights", help="The .safetensors weights file (its recipe travels with it)."),
    format: str = typer.Option("onnx", "--format", help="onnx (a .onnx graph) or trt (a TensorRT engine)."),
    out: Path = typer.Option(..., "--out", help="The file to write (.onnx, or .engine for trt)."),
    half: bool = typer.Option(False, "--half", help="FP16: an FP16 graph (float32 input and output; normalisation, "
                              "softmax and reductions kept in FP32), or an engine built from it. --verify then "
                              "allows 1e-2."),
    dynamic: bool = typer.Option(False, "--dynamic", help="Dynamic batch, height and width (default for onnx: a "
                                 "static graph of batch 1 at --opt-shape; trt: implied unless min = opt = max)."),
    min_shape: str = typer.Option("320x320", "--min-shape", help="trt: smallest HxW of the engine's profile (the "
                                  "engine has dynamic H/W unless min = opt = max)."),
    opt_shape: str = typer.Option("1088x1920", "--opt-shape", help="HxW the engine is tuned for; the size of a "
                                  "static graph."),
    max_shape: str = typer.Option("2176x3840", "--max-shape", help="trt: largest HxW of the engine's profile."),
    opset: int = typer.Option(17, "--opset", help="ONNX opset (at least 17)."),
    verify: bool = typer.Option(False, "--verify", help="Run the exported model against PyTorch on fresh inputs at "
                                "several sizes, print the errors, and exit 1 if any max-abs error exceeds 1e-4 "
                                "(1e-2 with --half)."),
    verify_sizes: str = typer.Option(None, "--verify-sizes", help="HxW,HxW,... for --verify (default: 5s x 3s, "
                                     "7s x 11s for the model's stride s, and 1088x1920; a static graph: its size)."),
    device: str = typer.Option("auto", "--device", help="Where --verify runs both models: auto (cuda when "
                              "available, else cpu), cpu or cuda[:N]."),
) -> None:
    """Export a model for deployment: ONNX (opset >= 17, only operators TensorRT's ONNX parser
    takes, recipe and preprocessing in the metadata) or a TensorRT engine built from it.

    The exported file runs with `matte infer --weights FILE` and `matte eval --weights FILE`
    through the same pipeline as the PyTorch model.
    """
    from mattecli.devices import resolve_device

    device = resolve_device(device)
    code = run_export(weights=weights, format=format, out=out, half=half, dynamic=dynamic,
                      shapes=(min_shape, opt_shape, max_shape), opset=opset, verify=verify,
                      verify_sizes=verify_sizes, device=device)
    raise typer.Exit(code)


def parse_shape(option: str, text: str) -> tuple[int, int]:
    """'1088x1920' -> (1088, 1920); UsageError naming the option otherwise."""
    from exporters.verify import parse_sizes
    from mattecli.errors import UsageError

    try:
        sizes = parse_sizes(text)
    except ValueError as err:
        raise UsageError(f"{option}: {err}") from None
    if len(sizes) != 1:
        raise UsageError(f"{option} {text}: one HEIGHTxWIDTH, e.g. 1088x1920")
    return sizes[0]


def run_export(*, weights: Path, format: str = "onnx", out: Path, half: bool = False, dynamic: bool = False,
               shapes: tuple[str, str, str] = ("320x320", "1088x1920", "2176x3840"), opset: int = 17,
               verify: bool = False, verify_sizes: str | None = None, device: str = "cpu") -> int:
    """The command as a function: returns the exit code (0, or 1 when verification failed).

    Raises:
        UsageError: bad options, a missing or unreadable weights file, trt without TensorRT.
    """
    from mattecli.errors import UsageError

    if format not in FORMATS:
        raise UsageError(f"--format {format}: unknown format (choose {' or '.join(FORMATS)})")
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise UsageError(f"--opset {opset}: choose {MIN_OPSET} to {MAX_OPSET} (TensorRT-ready graphs need "
                         f"{MIN_OPSET} or later; torch's exporter writes up to {MAX_OPSET})")
    min_hw, opt_hw, max_hw = (parse_shape(o, s) for o, s in zip(("--min-shape", "--opt-shape", "--max-shape"), shapes))
    if format == "trt" and not (min_hw == opt_hw == max_hw):
        dynamic = True  # an engine's profile spans --min-shape..--max-shape, so its graph has dynamic H/W
    if dynamic:
        from exporters.tensorrt import check_profile

        check_profile(min_hw, opt_hw, max_hw)
    sizes = None
    if verify_sizes is not None:
        from exporters.verify import parse_sizes

        try:
            sizes = parse_sizes(verify_sizes)
        except ValueError as err:
            raise UsageError(f"--verify-sizes: {err}") from None

    from mattecli.weights import load_model

    model, recipe = load_model(weights)  # UsageError naming the file when missing or unreadable
    stride = recipe.infer.stride
    if sizes is not None and not dynamic:
        from mattecli.inference.pipeline import aligned_size

        other = [f"{h}x{w}" for h, w in sizes if aligned_size(h, w, stride) != opt_hw]
        if other:
            raise UsageError(f"--verify-sizes {','.join(other)}: a static graph runs at --opt-shape "
                             f"{opt_hw[0]}x{opt_hw[1]} only (add --dynamic)")
    for option, (h, w) in (("--opt-shape", opt_hw), ("--min-shape", min_hw), ("--max-shape", max_hw)):
        if (h % stride or w % stride) and (option == "--opt-shape" or dynamic):
            raise UsageError(f"{option} {h}x{w}: not a multiple of the model's stride {stride} "
                             f"(recipe {recipe.name})")
    out = Path(out)
    if format == "onnx":
        _write_onnx(model, recipe, out, opset=opset, dynamic=dynamic, half=half, size=opt_hw)
    else:
        _write_engine(model, recipe, out, opset=opset, dynamic=dynamic, half=half,
                      shapes=(min_hw, opt_hw, max_hw) if dynamic else (opt_hw,) * 3)
    if not verify:
        return 0
    if sizes is None:
        from exporters.verify import default_sizes

        if not dynamic:
            sizes = [opt_hw]
        elif format == "trt":  # an engine runs only inside its profile
            sizes = [(h, w) for h, w in default_sizes(stride)
                     if min_hw[0] <= h <= max_hw[0] and min_hw[1] <= w <= max_hw[1]] or [opt_hw]
        else:
            sizes = default_sizes(stride)
    return _verify(out, format, model, recipe, sizes, device, half)


def _write_onnx(model, recipe, out: Path, *, opset: int, dynamic: bool, half: bool, size) -> None:
    from exporters.onnx import to_onnx

    path = to_onnx(model, out, opset=opset, dynamic=dynamic, recipe=recipe, half=half, size=size)
    axes = "dynamic batch, height and width" if dynamic else f"static 1x{size[0]}x{size[1]}"
    typer.echo(f"wrote {path}: ONNX opset {opset}, {'FP16' if half else 'FP32'}, {axes}, recipe {recipe.name}, "
               f"{path.stat().st_size / 2**20:.1f} MiB")


def _write_engine(model, recipe, out: Path, *, opset: int, dynamic: bool, half: bool, shapes) -> None:
    import tempfile

    from exporters.onnx import to_onnx

    from exporters.tensorrt import fp16_graph_for, to_engine

    fp16_graph = fp16_graph_for(half)  # TensorRT 11: the FP16 graph; 10: the FP32 graph + FP16 flag
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.stem}.") as tmp:
        onnx_path = to_onnx(model, Path(tmp) / "model.onnx", opset=opset, dynamic=dynamic, recipe=recipe,
                            half=fp16_graph, size=shapes[1])
        min_hw, opt_hw, max_hw = shapes
        path = to_engine(onnx_path, out, half=half, min_shape=min_hw, opt_shape=opt_hw, max_shape=max_hw)
    typer.echo(f"wrote {path}: TensorRT engine ({'FP16' if half else 'FP32'}), recipe {recipe.name}, "
               f"shapes {'x'.join(map(str, min_hw))} .. {'x'.join(map(str, max_hw))}")


def _verify(path: Path, format: str, model, recipe, sizes, device: str, half: bool) -> int:
    from exporters.verify import HALF_TOLERANCE, TOLERANCE, verify
    from mattecli.inference.backends import TorchBackend, load_backend
    from mattecli.progress import progress_bar

    backend = load_backend(path, format, device)
    reference = TorchBackend(model, recipe, device)
    tolerance = HALF_TOLERANCE if half else TOLERANCE
    typer.echo(f"verify: {format} against PyTorch (FP32) on fresh inputs ({device}), max-abs tolerance {tolerance:g}")
    with progress_bar() as bar:
        task = bar.add_task("verify", total=len(sizes))
        results = verify(backend, reference, sizes, tolerance=tolerance, on_size=lambda _: bar.advance(task))
    typer.echo(f"{'size (HxW)':>12} {'max abs':>10} {'mean abs':>10} {'max |ref|':>10}")
    for r in results:
        typer.echo(f"{f'{r.height}x{r.width}':>12} {r.max_abs:10.2e} {r.mean_abs:10.2e} {r.scale:10.3g}"
                   f"  {'ok' if r.ok else 'FAIL'}")
    failed = [r for r in results if not r.ok]
    if failed:
        typer.echo(f"verify: FAILED at {len(failed)} of {len(results)} sizes (max-abs above {tolerance:g})", err=True)
        return 1
    typer.echo(f"verify: ok at all {len(results)} sizes")
    return 0
