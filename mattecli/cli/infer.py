"""`matte infer`: alpha mattes for a folder of images and trimaps."""

from __future__ import annotations

from pathlib import Path

import typer

SAVE_KINDS = ("alpha", "fg", "rgba", "composite")


def main(
    weights: Path = typer.Option(..., "--weights", help="A .safetensors weights file (or an exported model)."),
    images: Path = typer.Option(..., "--images", help="Folder of images (PNG, JPEG, ...)."),
    out: Path = typer.Option(..., "--out", help="Output folder: OUT/{stem}.png is the 8-bit alpha."),
    trimaps: Path = typer.Option(None, "--trimaps", help="Folder of trimaps named like the images "
                                 "(default: {stem}_trimap.* beside each image)."),
    backend: str = typer.Option(None, "--backend", help="torch|onnx|trt (default: from the weights file's suffix)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda[:N]."),
    save: str = typer.Option("alpha", "--save", help="Comma-separated outputs: alpha (more in issue [Production inference])."),
    background: str = typer.Option(None, "--background", help="Colour or image for --save composite."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo outputs that already exist."),
) -> None:
    """Write OUT/{stem}.png (8-bit alpha) for every image with a trimap. Trimaps in the benchmark
    encoding (0/128/255) are used as they are; others (hand-drawn, RGBA, 16-bit) are mapped with
    <85 background, >=170 foreground, otherwise unknown, and a note says so. Known trimap regions
    are copied into the alpha. Existing outputs are skipped unless --overwrite. A bad file is
    named with the reason and skipped; the exit code is 1 if any failed."""
    from mattecli.errors import UsageError
    from mattecli.inference.batch import infer_folder, print_report
    from mattecli.inference.pipeline import load_pipeline

    kinds = [k.strip() for k in save.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in SAVE_KINDS]
    if unknown or not kinds:
        raise UsageError(f"--save {save}: choose from {', '.join(SAVE_KINDS)}")
    if [k for k in kinds if k != "alpha"] or background:
        raise UsageError("--save fg/rgba/composite and --background are not built yet (issue [Production inference])")
    if not images.is_dir():
        raise UsageError(f"--images {images}: not a folder")
    pipeline = load_pipeline(weights, backend, device)
    report = infer_folder(pipeline, images, out, trimaps, overwrite=overwrite)
    print_report(report, out)
    if report.failed:
        raise typer.Exit(1)
