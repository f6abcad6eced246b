"""`matte bench`: median latency, images/s and peak memory per backend and input size."""

from __future__ import annotations

from pathlib import Path

import typer


def main(
    weights: Path = typer.Option(..., "--weights", help="A .safetensors weights file (ONNX graph and TensorRT engine "
                                 "are exported from it into a temporary folder), an .onnx graph or an .engine."),
    backends: str = typer.Option(None, "--backends", help="Comma-separated, any of torch, onnx, trt (default: "
                                 "torch,onnx for a .safetensors, onnx for an .onnx graph, trt for an engine)."),
    sizes: str = typer.Option("1920x1080,3840x2160", "--sizes", help="Comma-separated WIDTHxHEIGHT input sizes "
                              "(aligned to the model's stride by the inference pipeline, as in `matte infer`)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda[:N] (trt and --half need cuda)."),
    half: bool = typer.Option(False, "--half", help="FP16: autocast for torch, an FP16 ONNX graph for onnx, an FP16 "
                              "engine for trt. CUDA only."),
    repeat: int = typer.Option(5, "--repeat", min=1, help="Timed calls per backend and size (the median is reported)."),
    warmup: int = typer.Option(1, "--warmup", min=0, help="Untimed calls before the timed ones."),
    json_out: Path = typer.Option(None, "--json", help="Also write the rows (and what was timed) as JSON."),
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

    from mattecli.bench import check_request, default_backends, parse_backends, parse_sizes, run_bench
    from mattecli.progress import progress_bar

    names = parse_backends(backends) if backends is not None else default_backends(weights)
    size_list = parse_sizes(sizes)
    check_request(weights, names, device, half)  # usage errors before the progress bar starts
    err = Console(stderr=True)
    with progress_bar(console=err) as bar:
        task = bar.add_task("bench", total=len(names) * len(size_list))
        report = run_bench(weights, names, size_list, device=device, half=half, repeat=repeat, warmup=warmup,
                           json_path=json_out, log=bar.console.print, on_row=lambda row: bar.advance(task))
    table = Table(title=f"matte bench: {weights.name} on {device}{' (FP16)' if half else ''}, "
                        f"median of {repeat} after {warmup} warm-up")
    for col in ("backend", "size", "input", "median ms", "images/s", "peak memory MiB (before)"):
        table.add_column(col, justify="left" if col in ("backend", "size", "input") else "right")
    failed = [r for r in report["rows"] if "error" in r]
    for r in report["rows"]:
        if "error" in r:
            table.add_row(r["backend"], r["size"], "failed", "", "", "")
        else:
            table.add_row(r["backend"], r["size"], r["input"], f"{r['median_ms']:.1f}", f"{r['images_per_s']:.3f}",
                          f"{r['peak_memory_mib']:,.0f} ({r['base_memory_mib']:,.0f})")
    Console().print(table)
    good = [r for r in report["rows"] if "error" not in r]
    if good:
        print(f"memory: {good[0]['memory']}; timed: {report['timed']}")
    for r in failed:
        err.print(f"matte bench: {r['backend']} at {r['size']}: {r['error']}", markup=False, highlight=False,
                  soft_wrap=True)
    if failed:
        raise typer.Exit(1)
