"""`matte prepare-data`: composite and describe datasets (adobe, d646, synthetic) as manifests."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from mattecli.cli.parsing import SEED_MAX, SEED_MIN
from mattecli.errors import printable

app = typer.Typer(help="Prepare matting datasets: composites, ground truth and manifest.csv per split.",
                  no_args_is_help=True, add_completion=False, rich_markup_mode=None)

SPLIT = typer.Option("all", "--split", help="Which split to prepare: train, test or all.")
WORKERS = typer.Option(None, "--workers", min=1, help="Worker processes (default: every core this process may use).")
COMPOSITE = typer.Option(False, "--composite",
                         help="Also write the training composites to train/merged/ (the test split "
                              "always has them).")
COCO = typer.Option(None, "--coco", help="COCO train2014 image folder (training backgrounds; not needed with "
                                           "--split test).")
VOC = typer.Option(None, "--voc", help="VOC2012 JPEGImages folder (test backgrounds; not needed with --split train).")
OUT = typer.Option(..., "--out", help="Output folder; splits are written to OUT/train and OUT/test.")


def _report(report) -> None:
    """Print where things went; failures on stderr, one per line; exit 1 when any input failed."""
    for split, path in report.manifests.items():
        print(f"{split}: {report.counts[split]} samples -> {path}")
    for note in report.notes:  # on stderr, as every command's notes: stdout holds what was written
        print(printable(f"matte: note: {note}"), file=sys.stderr)
    for error in report.errors:
        print(printable(f"matte prepare-data: {error}"), file=sys.stderr)
    if report.errors:
        print(f"matte prepare-data: {len(report.errors)} input(s) failed; the others were written "
              f"(re-run to retry, existing outputs are skipped)", file=sys.stderr)
        raise typer.Exit(1)


@app.command("adobe")
def adobe(root: Path = typer.Option(..., "--root", help="The unpacked Combined_Dataset folder."),
          coco: Path = COCO, voc: Path = VOC, out: Path = OUT, split: str = SPLIT,
          workers: int = WORKERS, composite: bool = COMPOSITE) -> None:
    """Adobe Deep Image Matting: Composition-1k test (1000 composites, pixel-identical to Adobe's
    Composition_code.py) and the 431 x 100 training samples."""
    from mattecli.data.adobe import prepare_adobe

    _report(prepare_adobe(root, coco, voc, out, split, workers, composite))


@app.command("d646")
def d646(root: Path = typer.Option(..., "--root", help="Distinctions-646 folder (Train/{FG,GT}, "
                                                       "Test/{FG,GT})."),
         coco: Path = COCO, voc: Path = VOC, out: Path = OUT, split: str = SPLIT,
         workers: int = WORKERS, composite: bool = COMPOSITE,
         seed: int = typer.Option(0, "--seed", min=SEED_MIN, max=SEED_MAX, help="Seed for the background draw and the generated "
                                                    "test trimaps (recorded in OUT/test/trimaps.json).")
         ) -> None:
    """Distinctions-646: 596 train fg x 80 COCO, 50 test fg x 20 VOC, Adobe's composition rule;
    test trimaps generated with a recorded seed."""
    from mattecli.data.adobe import prepare_d646

    _report(prepare_d646(root, coco, voc, out, split, workers, composite, seed))


@app.command("synthetic")
def synthetic(out: Path = OUT,
              train: int = typer.Option(16, "--train", min=0, help="Training samples."),
              test: int = typer.Option(8, "--test", min=0, help="Test samples."),
              # a 4096 px sample takes 1.3 GB and 20 s; 100000 px was numpy's MemoryError traceback
              size: int = typer.Option(320, "--size", min=32, max=4096, help="Image side in pixels (32 to 4096)."),
              seed: int = typer.Option(0, "--seed", min=SEED_MIN, max=SEED_MAX, help="Seed; equal seeds give identical files."),
              composite: bool = typer.Option(True, "--composite/--no-composite",
                                             help="Write train/merged/ too.")) -> None:
    """Procedural foregrounds (soft edges, hair strands, transparency, holes) on textured, noisy
    and smooth backgrounds, in the layout of a prepared Adobe split."""
    from mattecli.data.synthetic import prepare_synthetic

    _report(prepare_synthetic(out, train, test, size, seed, composite))
