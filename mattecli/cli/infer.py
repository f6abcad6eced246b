"""`matte infer`: alpha mattes, cut-outs and composites for a folder of images and trimaps."""

from __future__ import annotations

from pathlib import Path

import typer


def main(
    weights: Path = typer.Option(..., "--weights", help="A .safetensors weights file (or an exported model)."),
    images: Path = typer.Option(..., "--images", help="Folder of images (PNG, JPEG, TIFF, WebP, BMP), or one image "
                                "file."),
    out: Path = typer.Option(..., "--out", help="Output folder: OUT/{stem}.png is the 8-bit alpha; "
                             "OUT/fg/, OUT/rgba/, OUT/composite/, OUT/trimap/ hold the other --save outputs."),
    trimaps: Path = typer.Option(None, "--trimaps", help="Folder of trimaps named like the images, or one trimap "
                                 "file for one --images file "
                                 "(default: {stem}_trimap.* beside each image)."),
    masks: Path = typer.Option(None, "--masks", help="Instead of trimaps: a folder of segmentation masks named like "
                               "the images ({stem}.* or {stem}_mask.*; the image folder for masks beside them); "
                               "trimaps are made from them exactly as matte trimap makes them."),
    band: str = typer.Option(None, "--band", help="With --masks: the unknown band's half-width, pixels (20) or a "
                             "share of the image diagonal (1.5%); default 1%, as matte trimap."),
    threshold: str = typer.Option(None, "--threshold", help="With --masks: LO,HI mask probabilities; between them "
                                  "unknown (default 0.5,0.5), as matte trimap."),
    empty: str = typer.Option("skip", "--empty", help="An image whose trimap has no unknown pixel (nothing to "
                              "matte): skip (default) or pass (its trimap written as the alpha). Named either way."),
    recursive: bool = typer.Option(False, "--recursive", help="Walk subfolders of --images (and of --trimaps / "
                                   "--masks at the same relative paths); outputs mirror the tree. Links to folders "
                                   "are followed, each folder walked once."),
    backend: str = typer.Option(None, "--backend", help="torch|onnx|trt (default: from the weights file's suffix)."),
    device: str = typer.Option("auto", "--device", help="auto (cuda when available, else cpu), cpu or cuda[:N]. "
                               "On CUDA the torch backend prepares and restores on the GPU too."),
    half: bool = typer.Option(False, "--half", help="Torch backend on CUDA: half precision (autocast; norms and "
                              "softmax stay float32). An image whose output is not finite is redone in float32."),
    compile: bool = typer.Option(False, "--compile", help="Torch backend: torch.compile the model. On CUDA one "
                                 "graph per input size, for the first 8 sizes (later sizes run uncompiled); on a CPU "
                                 "one graph for every size."),
    save: list[str] = typer.Option(["alpha"], "--save", help="Comma-separated outputs (or --save once for each), "
                                   "any of: alpha (OUT/{stem}.png), fg (estimated foreground colours, "
                                   "OUT/fg/{stem}.png), rgba (foreground + straight alpha, OUT/rgba/{stem}.png), "
                                   "composite (foreground over --background, OUT/composite/{stem}.png), trimap "
                                   "(the trimap used, OUT/trimap/{stem}.png). Only the listed outputs are written."),
    background: str = typer.Option(None, "--background", help="For composite: a colour (#00ff00, #0f0, 0,255,0 or "
                                   "a CSS name: green, lime, ...) or an image, scaled to cover each photo (aspect "
                                   "kept) and centre-cropped. Changing it and re-running redoes only the "
                                   "composites, from the alphas already written."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo outputs that already exist (default: an image "
                                   "whose requested outputs all exist is skipped)."),
    shard: str = typer.Option(None, "--shard", help="K/N: process only the K-th of N slices of the input list "
                              "sorted by path (images K, K+N, K+2N, ...). K is 0-based: 0/4 .. 3/4."),
    max_memory: str = typer.Option(None, "--max-memory", help="Memory ceiling of one model pass (e.g. 4GB, 512MB; "
                                   "none: no ceiling; 0 is refused; default 4GB on cpu, on cuda 90% of the GPU's "
                                   "memory): host memory on cpu, GPU memory on cuda, "
                                   "estimated from the recipe's bytes per pixel for that device and precision. An "
                                   "image whose estimated pass exceeds it runs as tiles over the trimap's unknown "
                                   "band, known regions copied."),
    workers: int = typer.Option(None, "--workers", min=0, help="Threads decoding inputs, estimating foregrounds and "
                                "encoding outputs while the model runs; 0: in turn with the model. Default: every "
                                "core with --device cuda, 0 on cpu (docs/commands/infer.md, \"Throughput\")."),
    json_out: Path = typer.Option(None, "--json", help="Also write the report as JSON: counts, and each file done, "
                                  "skipped or failed (with the reason), notes (`-`: to stdout, the summary line to "
                                  "stderr)."),
) -> None:
    """Write OUT/{stem}.png (8-bit alpha), and what --save asks for, for every image with a trimap.

    Trimaps in the benchmark encoding (0/128/255) are used as they are; class-index ones (0/1/2,
    or 1/2/3 as the Oxford-IIIT Pet set) are mapped; other gray ones (hand-drawn, RGBA, 16-bit) are
    mapped with <85 background, >=170 foreground, otherwise unknown; a note says so. Colour-coded
    trimaps are refused. Known trimap regions are copied into the alpha. EXIF orientation is
    applied to the image; a trimap whose tag differs is used in the one orientation that fits the
    image's size, and refused when both fit. Outputs are written atomically; an image is skipped
    when all its requested outputs exist (a composite: made with this --background), unless
    --overwrite, so a re-run after a crash or Ctrl-C finishes only what is missing, and a re-run
    with another --background redoes only the composites. A bad file is named with the reason and
    skipped; the exit code is 1 if any failed.
    """
    from mattecli.cli.parsing import comma_items, parse_memory, parse_shard
    from mattecli.cli.trimap import EMPTY_CHOICES, parsed_option
    from mattecli.data.trimap import DEFAULT_BAND, DEFAULT_THRESHOLD, MaskRule, parse_band, parse_threshold
    from mattecli.devices import resolve_device
    from mattecli.errors import InputError, UsageError
    from mattecli.imageio import check_out_dir, has_images, missing_reason, prepare_out_dir
    from mattecli.inference.backends import implied_backend
    from mattecli.inference.batch import check_json_out, default_workers, infer_folder, no_images, print_report
    from mattecli.inference.outputs import (OUTPUT_KINDS, Background, check_numba_threading_layer, import_pymatting,
                                            runs_pymatting)
    from mattecli.inference.pipeline import load_pipeline
    from mattecli.inference.tiling import default_max_bytes

    kinds = comma_items(save)
    unknown = [k for k in kinds if k not in OUTPUT_KINDS]
    if unknown or not kinds:
        raise UsageError(f"--save {','.join(save)}: choose from {', '.join(OUTPUT_KINDS)}")
    if "composite" in kinds and not background:
        raise UsageError("--save composite needs --background (a colour like #00ff00, or an image)")
    if background and "composite" not in kinds:
        raise UsageError("--background is only used by --save composite; add composite to --save")
    if not images.exists():
        raise UsageError(f"--images {images}: {missing_reason(images, 'folder or file')}")
    if masks is not None and trimaps is not None:
        raise UsageError("give --trimaps or --masks, not both")
    if masks is None and (band is not None or threshold is not None):
        raise UsageError("--band and --threshold make trimaps from --masks; add --masks DIR")
    if empty not in EMPTY_CHOICES:
        raise UsageError(f"--empty {empty}: choose skip or pass")
    rule = MaskRule(parsed_option("--band", parse_band, band, DEFAULT_BAND),
                    parsed_option("--threshold", parse_threshold, threshold, DEFAULT_THRESHOLD))
    shard_kn = parse_shard(shard)
    bg = None
    if background:
        try:
            bg = Background.parse(background)
        except (ValueError, InputError) as err:
            raise UsageError(f"--background {err}") from None
    # before the model runs; a report that would replace the weights or a file given as input is refused
    check_json_out(json_out, [p for p in (weights, images, trimaps, bg and getattr(bg, "path", None)) if p])
    device = resolve_device(device, backend=implied_backend(weights, backend))  # auto: where that backend runs
    max_bytes = parse_memory(max_memory) if max_memory is not None else default_max_bytes(device)
    pipeline = load_pipeline(weights, backend, device, max_bytes=max_bytes, half=half, compile=compile,
                             options=("--half", f"--max-memory {max_memory or '(default)'}"))
    # where PyMatting will estimate the foregrounds, its threading layer is checked before any model pass
    if any(k in ("fg", "rgba", "composite") for k in kinds) and runs_pymatting(getattr(pipeline, "backend", None)):
        check_numba_threading_layer()
        import_pymatting(lambda text: typer.echo(f"matte: note: {text}", err=True))
    if compile and device.startswith("cuda"):  # else the first image's progress would look stuck for minutes
        from mattecli.inference.backends import COMPILED_SHAPES

        typer.echo(f"matte: note: --compile: each new input size waits while torch.compile builds a graph for it "
                   f"(about a minute), for the first {COMPILED_SHAPES} sizes; later sizes run uncompiled", err=True)
    elif compile:
        typer.echo("matte: note: --compile: the first image waits while torch.compile builds the model (minutes); "
                   "later images, of any size, reuse it", err=True)
    if max_bytes is not None and device.startswith("cuda") and "not measured" in pipeline.bytes_source:
        typer.echo(f"matte: note: --max-memory on {device}: {pipeline.bytes_per_pixel} bytes/pixel from "
                   f"{pipeline.bytes_source}", err=True)
    unreadable, others = [], []  # subfolders left out: failures of the batch, unless nothing else is there
    if images.is_dir() and not has_images(images, recursive, unreadable, others):  # stops at the first image
        raise no_images(images, recursive, unreadable=unreadable, others=others)
    prepare_out_dir(out)  # before the model runs: a read-only --out must not cost a run
    for kind in kinds:  # likewise a file where an output folder goes, or one that cannot be written (another
        if kind != "alpha" and (out / kind).exists():  # user's run made it): each would fail every image
            if not (out / kind).is_dir():
                raise UsageError(f"--out {out}: {out / kind} is a file, where --save {kind} writes its folder")
            check_out_dir(out / kind)
    if workers is None:
        workers = default_workers(device)
    report = infer_folder(pipeline, images, out, trimaps, overwrite=overwrite, save=kinds, background=bg,
                          shard=shard_kn, workers=workers, masks=masks, mask_rule=rule, empty=empty,
                          recursive=recursive)
    print_report(report, out, json_out)
    if report.failed:
        raise typer.Exit(1)
