"""`matte export`: a weights file -> an ONNX graph or a TensorRT engine, optionally verified."""

from __future__ import annotations

from pathlib import Path

import typer

FORMATS = ("onnx", "trt")
MAX_OPSET = 20  # torch's TorchScript exporter stops at 20 (the least is exporters.onnx.MIN_OPSET)


def main(
    weights: Path = typer.Option(..., "--weights", help="The .safetensors weights file (its recipe travels with it)."),
    format: str = typer.Option("onnx", "--format", help="onnx (a .onnx graph) or trt (a TensorRT engine)."),
    out: Path = typer.Option(..., "--out", help="The file to write (.onnx, or .engine for trt)."),
    half: bool = typer.Option(False, "--half", help="FP16: an FP16 graph (float32 input and output; normalisation, "
                              "softmax and reductions kept in FP32), or an engine built from it. --verify then "
                              "allows 1e-2."),
    dynamic: bool = typer.Option(False, "--dynamic", help="Dynamic batch, height and width (default for onnx: a "
                                 "static graph of batch 1 at --opt-shape; trt: implied unless min = opt = max)."),
    min_shape: str = typer.Option("320x320", "--min-shape", help="trt: smallest WIDTHxHEIGHT of the engine's profile "
                                  "(the engine has dynamic H/W unless min = opt = max)."),
    opt_shape: str = typer.Option("1920x1088", "--opt-shape", help="WIDTHxHEIGHT the engine is tuned for; the size "
                                  "of a static graph (multiples of the model's stride: 1920x1088 for 1080p)."),
    max_shape: str = typer.Option("3840x2176", "--max-shape", help="trt: largest WIDTHxHEIGHT of the engine's "
                                  "profile."),
    opset: int = typer.Option(17, "--opset", help="ONNX opset (at least 17)."),
    verify: bool = typer.Option(False, "--verify", help="Run the exported model against PyTorch on fresh inputs at "
                                "several sizes, print the errors, and exit 1 if any max-abs error exceeds 1e-4 "
                                "(1e-2 with --half)."),
    verify_sizes: str = typer.Option(None, "--verify-sizes", help="WIDTHxHEIGHT,... for --verify (default: 3s x 5s, "
                                     "11s x 7s for the model's stride s, and 1920x1088; a static graph: its size)."),
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


def run_export(*, weights: Path, format: str = "onnx", out: Path, half: bool = False, dynamic: bool = False,
               shapes: tuple[str, str, str] = ("320x320", "1920x1088", "3840x2176"), opset: int = 17,
               verify: bool = False, verify_sizes: str | None = None, device: str = "cpu") -> int:
    """The command as a function: returns the exit code (0, or 1 when verification failed).

    Raises:
        UsageError: bad options, a missing or unreadable weights file, trt without TensorRT.
    """
    from exporters.onnx import MIN_OPSET
    from mattecli.cli.parsing import check_aligned, parse_size, parse_sizes
    from mattecli.errors import UsageError

    if format not in FORMATS:
        raise UsageError(f"--format {format}: unknown format (choose {' or '.join(FORMATS)})")
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise UsageError(f"--opset {opset}: choose {MIN_OPSET} to {MAX_OPSET} (TensorRT-ready graphs need "
                         f"{MIN_OPSET} or later; torch's exporter writes up to {MAX_OPSET})")
    options = ("--min-shape", "--opt-shape", "--max-shape")
    low, opt, high = (parse_size(text, option) for option, text in zip(options, shapes))
    if format == "trt" and not (low == opt == high):
        dynamic = True  # an engine's profile spans --min-shape..--max-shape, so its graph has dynamic H/W
    if dynamic:
        from exporters.tensorrt import check_profile

        check_profile(low.hw, opt.hw, high.hw)
    sizes = None if verify_sizes is None else parse_sizes(verify_sizes, "--verify-sizes")

    from mattecli.weights import load_model

    model, recipe = load_model(weights)  # UsageError naming the file when missing or unreadable
    stride = recipe.infer.stride
    if sizes is not None and not dynamic:
        other = [str(s) for s in sizes if s.aligned(stride) != opt]
        if other:
            raise UsageError(f"--verify-sizes {','.join(other)}: a static graph runs at --opt-shape "
                             f"{opt} only (add --dynamic)")
    for option, size in (("--opt-shape", opt), ("--min-shape", low), ("--max-shape", high)):
        if option == "--opt-shape" or dynamic:  # a static graph uses --opt-shape only
            check_aligned(size, stride, option)
    out = Path(out)
    if format == "onnx":
        _write_onnx(model, recipe, out, opset=opset, dynamic=dynamic, half=half, size=opt)
    else:
        _write_engine(model, recipe, out, opset=opset, dynamic=dynamic, half=half,
                      shapes=(low, opt, high) if dynamic else (opt,) * 3)
    if not verify:
        return 0
    if sizes is None:
        from exporters.verify import default_sizes

        if not dynamic:
            sizes = [opt]
        elif format == "trt":  # an engine runs only inside its profile
            sizes = [s for s in default_sizes(stride) if low.height <= s.height <= high.height
                     and low.width <= s.width <= high.width] or [opt]
        else:
            sizes = default_sizes(stride)
    return _verify(out, format, model, recipe, sizes, device, half)


def _write_onnx(model, recipe, out: Path, *, opset: int, dynamic: bool, half: bool, size) -> None:
    from exporters.onnx import to_onnx

    path = to_onnx(model, out, opset=opset, dynamic=dynamic, recipe=recipe, half=half, size=size.hw)
    axes = "dynamic batch, height and width" if dynamic else f"static batch 1 at {size}"
    typer.echo(f"wrote {path}: ONNX opset {opset}, {'FP16' if half else 'FP32'}, {axes}, recipe {recipe.name}, "
               f"{path.stat().st_size / 2**20:.1f} MiB")


def _write_engine(model, recipe, out: Path, *, opset: int, dynamic: bool, half: bool, shapes) -> None:
    import tempfile

    from exporters.onnx import to_onnx

    from exporters.tensorrt import fp16_graph_for, to_engine

    fp16_graph = fp16_graph_for(half)  # TensorRT 11: the FP16 graph; 10: the FP32 graph + FP16 flag
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.stem}.") as tmp:
        low, opt, high = shapes
        onnx_path = to_onnx(model, Path(tmp) / "model.onnx", opset=opset, dynamic=dynamic, recipe=recipe,
                            half=fp16_graph, size=opt.hw)
        path = to_engine(onnx_path, out, half=half, min_shape=low.hw, opt_shape=opt.hw, max_shape=high.hw)
    typer.echo(f"wrote {path}: TensorRT engine ({'FP16' if half else 'FP32'}), recipe {recipe.name}, "
               f"sizes {low} .. {high}")


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
    typer.echo(f"{'size (WxH)':>12} {'max abs':>10} {'mean abs':>10} {'max |ref|':>10}")
    for r in results:
        typer.echo(f"{f'{r.width}x{r.height}':>12} {r.max_abs:10.2e} {r.mean_abs:10.2e} {r.scale:10.3g}"
                   f"  {'ok' if r.ok else 'FAIL'}")
    failed = [r for r in results if not r.ok]
    if failed:
        typer.echo(f"verify: FAILED at {len(failed)} of {len(results)} sizes (max-abs above {tolerance:g})", err=True)
        return 1
    typer.echo(f"verify: ok at all {len(results)} sizes")
    return 0
