"""`matte bench`: median latency, images/s and peak memory per backend and input size."""

from __future__ import annotations

from pathlib import Path

import typer


def main(
    ctx: typer.Context,
    weights: Path = typer.Option(..., "--weights", help="A .safetensors weights file (ONNX graph and TensorRT engine "
                                 "are exported from it into a temporary folder), an .onnx graph or an .engine."),
    backends: list[str] = typer.Option(None, "--backends", help="Comma-separated (or --backends once for each), "
                                       "any of torch, onnx, trt (default: torch,onnx for a .safetensors, onnx for "
                                       "an .onnx graph, trt for an engine; with --e2e the one the file's suffix "
                                       "implies)."),
    sizes: list[str] = typer.Option(["1920x1080,3840x2160"], "--sizes", help="Comma-separated WIDTHxHEIGHT input "
                                    "sizes, or --sizes once for each (aligned to the model's stride by the "
                                    "inference pipeline, as in `matte infer`; default for a --static graph: its "
                                    "own size)."),
    device: str = typer.Option("auto", "--device", help="auto (cuda when available, else cpu), cpu or cuda[:N] "
                               "(trt and --half need cuda)."),
    half: bool = typer.Option(False, "--half", help="FP16: for torch as `matte infer --half` runs it, an FP16 "
                              "ONNX graph for onnx, an FP16 engine for trt. CUDA only."),
    repeat: int = typer.Option(5, "--repeat", min=1, help="Timed calls per backend and size (the median is reported)."),
    warmup: int = typer.Option(1, "--warmup", min=0, help="Untimed calls before the timed ones."),
    json_out: Path = typer.Option(None, "--json", help="Also write the rows (and what was timed) as JSON (`-`: to "
                                  "stdout, the table to stderr)."),
    e2e: bool = typer.Option(False, "--e2e", help="End to end: `matte infer`'s runner over generated image files of "
                             "each size, files on disk to files written, with each stage's time (decode, upload + "
                             "prepare, model, restore + download, foreground, encode). One backend."),
    save: list[str] = typer.Option(["alpha"], "--save", help="With --e2e: the outputs written, as `matte infer "
                                   "--save` writes them: any of alpha, fg, rgba, trimap (not composite, which needs "
                                   "--background)."),
    count: int = typer.Option(8, "--count", min=1, help="With --e2e: timed images per size."),
    workers: int = typer.Option(None, "--workers", min=0, help="With --e2e: as `matte infer --workers`."),
    compile: bool = typer.Option(False, "--compile", help="With --e2e: as `matte infer --compile`."),
    photos: str = typer.Option("png", "--photos", help="With --e2e: the generated photos' format, png or jpg "
                               "(quality 95, as cameras write; trimaps stay PNG)."),
) -> None:
    """Time each backend at each size: one table row per backend and size.

    Timed: one backend call on an input prepared by the inference pipeline (numpy in, raw alpha out;
    host-device copies included), after warm-up calls; the median over --repeat calls. Each row runs in
    a fresh process. Peak memory: on CPU the process's peak resident set size (with the peak before
    the first forward pass in brackets); on CUDA torch.cuda.max_memory_allocated (with what was
    allocated before the first call). A row that fails (e.g. out of memory) is named with its reason
    on stderr, the others still run, and the exit code is 1.
    """
    from rich.console import Console
    from rich.table import Table

    from mattecli.bench import check_request, default_backends, run_bench
    from mattecli.cli.parsing import options_given, parse_backends, parse_sizes
    from mattecli.devices import resolve_device
    from mattecli.errors import UsageError
    from mattecli.files import Inputs, check_stdout, to_stdout
    from mattecli.imageio import check_report_file
    from mattecli.progress import print_table, progress_bar

    _check_mode(ctx, e2e)
    # given twice, a list option kept only its last value (click's rule): the values are joined instead
    backends = None if backends is None else ",".join(backends)
    sizes, save = ",".join(sizes), ",".join(save)
    size_list = parse_sizes(sizes)
    if not options_given(ctx, ["sizes"]) and weights.suffix.lower() == ".onnx":
        from mattecli.inference.backends import static_onnx_size

        static = static_onnx_size(weights)  # a --static graph runs at its own size only: the defaults failed
        if static is not None:
            size_list = [static]
            Console(stderr=True).print(f"matte: note: {weights.name} is a static graph: timing its size, {static}",
                                       markup=False, highlight=False)
    if json_out is not None and not to_stdout(json_out):  # not after the whole run
        check_report_file(json_out, "--json")
        if json_out in Inputs([weights]):  # the report replaced the model file
            raise UsageError(f"--json {json_out}: is the --weights file; write the report to another file")
    check_stdout(json_out, "--json")
    device = resolve_device(device)
    if e2e:
        from mattecli.inference.backends import SUFFIX_TO_BACKEND

        names = parse_backends(backends) if backends else [SUFFIX_TO_BACKEND.get(weights.suffix.lower(), "torch")]
        return _e2e(weights, names, size_list, device, half, compile, save, count, workers, json_out, photos)
    names = parse_backends(backends) if backends is not None else default_backends(weights)
    check_request(weights, names, device, half, size_list)  # usage errors before the progress bar starts
    err = Console(stderr=True)
    with progress_bar(console=err) as bar:
        task = bar.add_task("bench", total=len(names) * len(size_list))
        report = run_bench(weights, names, size_list, device=device, half=half, repeat=repeat, warmup=warmup,
                           json_path=json_out, log=bar.console.print, on_row=lambda row: bar.advance(task))
    table = Table(title=f"matte bench: {weights.name} on {device}{' (FP16)' if report['half'] else ''}, "
                        f"median of {repeat} after {warmup} warm-up")
    for col in ("backend", "size", "input", "median ms", "images/s", "peak memory MiB (before)"):
        table.add_column(col, justify="left" if col in ("backend", "size", "input") else "right")
    failed = [r for r in report["rows"] if "error" in r]
    for r in report["rows"]:
        if "error" in r:
            table.add_row(r["backend"], r["size"], "failed", "", "", "")
        else:
            memory = ("not measured" if r["peak_memory_mib"] is None  # no /proc, no `resource` (Windows)
                      else f"{r['peak_memory_mib']:,.0f} ({r['base_memory_mib']:,.0f})")
            table.add_row(r["backend"], r["size"], r["input"], f"{r['median_ms']:.1f}", f"{r['images_per_s']:.3f}",
                          memory)
    out = err if to_stdout(json_out) else Console()  # --json -: stdout holds the JSON alone, for a pipe
    print_table(out, table)
    good = [r for r in report["rows"] if "error" not in r]
    if good:
        out.print(f"memory: {good[0]['memory']}; timed: {report['timed']}", markup=False, highlight=False,
                  soft_wrap=True)
    for r in failed:
        err.print(f"matte bench: {r['backend']} at {r['size']}: {r['error']}", markup=False, highlight=False,
                  soft_wrap=True)
    if failed:
        raise typer.Exit(1)


# options each mode reads; given to the other, they were silently ignored (a "--compile" model row was eager)
_E2E_ONLY = ("save", "count", "workers", "compile", "photos")
_MODEL_ROWS_ONLY = ("repeat", "warmup")


def _check_mode(ctx: typer.Context, e2e: bool) -> None:
    from mattecli.cli.parsing import options_given
    from mattecli.errors import UsageError

    given = options_given(ctx, _MODEL_ROWS_ONLY if e2e else _E2E_ONLY)
    if given and e2e:
        raise UsageError(f"{', '.join(given)}: for the model rows; --e2e times --count images per size after "
                         "four untimed ones")
    if given:
        raise UsageError(f"{', '.join(given)}: with --e2e only (the model rows time one backend call on a "
                         "prepared input)")


def _e2e(weights, names, size_list, device, half, compile, save, count, workers, json_out, photos) -> None:
    from rich.console import Console
    from rich.table import Table

    from mattecli.bench import check_request
    from mattecli.bench_e2e import PHOTO_FORMATS, STAGES, run_e2e
    from mattecli.cli.parsing import comma_items
    from mattecli.errors import UsageError
    from mattecli.files import to_stdout
    from mattecli.inference.outputs import OUTPUT_KINDS
    from mattecli.progress import print_table

    if len(names) != 1:
        raise UsageError("--e2e times one backend: name it with --backends (e.g. --backends torch)")
    kinds = comma_items([save])
    accepted = [k for k in OUTPUT_KINDS if k != "composite"]  # a composite needs a --background, which bench lacks
    if not kinds or any(k not in accepted for k in kinds):
        raise UsageError(f"--save {save}: with --e2e choose from {', '.join(accepted)} (composite needs "
                         "--background, which bench does not take)")
    if photos not in PHOTO_FORMATS:
        raise UsageError(f"--photos {photos}: choose from {', '.join(PHOTO_FORMATS)}")
    check_request(weights, names, device, half, size_list)
    err = Console(stderr=True)
    report = run_e2e(weights, size_list, backend=names[0], device=device, half=half, compile=compile,
                     save=kinds, count=count, workers=workers, photos=photos, json_path=json_out,
                     log=lambda line: err.print(line, markup=False, highlight=False))
    table = Table(title=f"matte bench --e2e: {weights.name} on {device}{' (FP16)' if report['half'] else ''}, "
                        f"--save {','.join(kinds)}, {report['workers']} worker{'s' * (report['workers'] != 1)}, "
                        f"{count} {photos.upper()} photo{'s' * (count != 1)} per size")
    short = {"upload + prepare": "prepare", "restore + download": "restore", "foreground": "fg"}
    for col in ("size", "img/s", "wall/decode", *[short.get(s, s) for s in STAGES]):
        table.add_column(col, justify="left" if col == "size" else "right")
    failed = [r for r in report["rows"] if "error" in r]
    for r in report["rows"]:
        if "error" in r:
            table.add_row(r["size"], "failed", *[""] * (1 + len(STAGES)))
        else:
            table.add_row(r["size"], f"{r['images_per_s']:.2f}", f"{r['wall_over_decode']:.2f}",
                          *[f"{r['stages'][s]['ms_per_image']:.0f}" for s in STAGES])
    out = err if to_stdout(json_out) else Console()  # --json -: stdout holds the JSON alone, for a pipe
    print_table(out, table)
    out.print("stage columns: ms per image (prepare: upload + prepare, restore: restore + download, fg: foreground); "
              "decode, foreground and encode run in the workers, overlapping the model, so stages add up to more "
              "than the wall time when overlap works; wall/decode: the run's wall time over decoding the same "
              "files one after the other", markup=False, highlight=False, soft_wrap=True)
    for r in failed:
        err.print(f"matte bench --e2e: {r['size']}: {r['error']}", markup=False, highlight=False, soft_wrap=True)
    if failed:
        raise typer.Exit(1)
