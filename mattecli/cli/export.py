"""`matte export`: a weights file -> an ONNX graph or a TensorRT engine, optionally verified."""

from __future__ import annotations

from pathlib import Path

import typer

from mattecli.errors import printable


def main(
    ctx: typer.Context,
    weights: Path = typer.Option(..., "--weights", help="The .safetensors weights file (its recipe travels with it)."),
    format: str = typer.Option("onnx", "--format", help="onnx (a .onnx graph) or trt (a TensorRT engine; "
                                                        "unverified: it has never run on real hardware)."),
    out: Path = typer.Option(..., "--out", help="The file to write: .onnx for onnx, .engine (or .plan) for trt."),
    half: bool = typer.Option(False, "--half", help="FP16. onnx: an FP16 graph (float32 input and output; "
                              "normalisation, softmax and reductions kept in FP32). trt: an FP16 engine, from that "
                              "graph on TensorRT 10.12+ and 11, from the FP32 graph with the builder's FP16 flag on "
                              "10.0-10.11. --verify then allows 1e-2."),
    dynamic: bool = typer.Option(True, "--dynamic/--static", help="Dynamic batch, height and width (the default; "
                                 "trt: the --min-shape..--max-shape profile), or --static: a graph of batch 1 at "
                                 "--opt-shape only."),
    min_shape: str = typer.Option("320x320", "--min-shape", help="trt: smallest WIDTHxHEIGHT of the engine's "
                                  "profile (refused where unused: onnx, --static)."),
    opt_shape: str = typer.Option("1920x1088", "--opt-shape", help="WIDTHxHEIGHT the engine is tuned for; the size "
                                  "of a --static graph (refused for a dynamic onnx graph). Shapes are aligned to the "
                                  "model's stride as the pipeline aligns a photo of that size (1920x1080 -> "
                                  "1920x1088 at stride 32; down for a recipe that resizes down)."),
    max_shape: str = typer.Option("3840x2176", "--max-shape", help="trt: largest WIDTHxHEIGHT of the engine's "
                                  "profile (refused where unused: onnx, --static)."),
    opset: int = typer.Option(17, "--opset", help="ONNX opset (17 to 20)."),
    tf32: bool = typer.Option(False, "--tf32", help="trt: let an FP32 engine use TF32 (TensorRT's default; off "
                              "here so that FP32 means FP32)."),
    verify: bool = typer.Option(False, "--verify", help="Run the exported model against PyTorch on fresh inputs at "
                                "several sizes, print the errors, and exit 1 if any max-abs error exceeds 1e-4 "
                                "(1e-2 with --half) times the output's scale (max |PyTorch's output|, 1 at "
                                "least)."),
    verify_sizes: list[str] = typer.Option(None, "--verify-sizes", help="WIDTHxHEIGHT,... (or --verify-sizes once "
                                           "for each) for --verify (default: 3s x 5s, 11s x 7s for the model's "
                                           "stride s, and 1920x1088; a static graph: its size)."),
    device: str = typer.Option("auto", "--device", help="Where --verify runs both models: auto (cuda when "
                               "available, else cpu), cpu or cuda[:N] (trt: cuda, and the GPU the engine is "
                               "built on)."),
) -> None:
    """Export a model for deployment: ONNX (opset >= 17, only operators TensorRT's ONNX parser
    takes, recipe and preprocessing in the metadata) or a TensorRT engine built from it.

    The exported file runs with `matte infer --weights FILE` and `matte eval --weights FILE`
    through the same pipeline as the PyTorch model.
    """
    from exporters import export as exporting
    from mattecli.cli.parsing import options_given, parse_size, parse_sizes
    from mattecli.imageio import check_out_file
    from mattecli.progress import progress_bar, track

    shapes = tuple(parse_size(text, option)
                   for option, text in (("--min-shape", min_shape), ("--opt-shape", opt_shape), ("--max-shape", max_shape)))
    given = tuple(options_given(ctx, ("min_shape", "opt_shape", "max_shape")))
    # given twice, it kept only its last value (click's rule): the values are joined instead
    sizes = None if verify_sizes is None else parse_sizes(",".join(verify_sizes), "--verify-sizes")
    opts = exporting.ExportOptions(weights=weights, out=out, format=format, half=half, tf32=tf32, dynamic=dynamic,
                                   shapes=shapes, shapes_given=given, opset=opset, verify=verify, verify_sizes=sizes, device=device)
    check_out_file(out, "--out")  # before the model is loaded and traced
    exported = exporting.export(opts, log=lambda line: typer.echo(line, err=True), track=track)
    typer.echo(printable(exported.summary))  # it names the recipe the weights file carries: anyone's text
    if not verify:
        return
    sizes, tolerance = exporting.verify_sizes(exported, opts), opts.tolerance
    typer.echo(f"verify: {format} against PyTorch (FP32) on fresh inputs ({opts.device}), max-abs tolerance {tolerance:g} x max(1, max |ref|)")
    with progress_bar() as bar:
        task = bar.add_task("verify", total=len(sizes))
        results = exporting.verify_export(exported, opts, sizes, on_size=lambda _: bar.advance(task))
    # a size the model cannot take as it is is run as the pipeline would align a photo of that size
    labels = [f"{size} -> {r.width}x{r.height}" if (r.width, r.height) != (size.width, size.height) else str(size)
              for size, r in zip(sizes, results)]
    width = max(12, *map(len, labels))
    typer.echo(f"{'size (WxH)':>{width}} {'max abs':>10} {'mean abs':>10} {'max |ref|':>10}")
    for label, r in zip(labels, results):
        typer.echo(f"{label:>{width}} {r.max_abs:10.2e} {r.mean_abs:10.2e} {r.scale:10.3g}"
                   f"  {'ok' if r.ok else 'FAIL'}")
    failed = [r for r in results if not r.ok]
    if failed:
        typer.echo(f"verify: FAILED at {len(failed)} of {len(results)} sizes (max-abs above {tolerance:g} x max(1, max |ref|))", err=True)
        if getattr(exported.recipe.model, "index", None) in ("max", "holistic-max"):
            typer.echo("matte: note: this recipe unpools at max indices: where a pooled cell's values (nearly) tie, "
                       "another runtime's rounding can pick another position, and the output jumps there "
                       "(docs/deployment.md: what parity means per family)", err=True)
        raise typer.Exit(1)
    typer.echo(f"verify: ok at all {len(results)} sizes")

