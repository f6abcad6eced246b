"""`matte trimap`: 0/128/255 trimaps from segmentation masks, or from ground-truth alphas."""

from __future__ import annotations

from pathlib import Path

import typer

from mattecli.cli.parsing import SEED_MAX, SEED_MIN

EMPTY_CHOICES = ("skip", "pass")


def main(
    masks: Path = typer.Option(None, "--masks", help="Folder of segmentation masks ({stem}.* or {stem}_mask.*): "
                               "binary, soft probabilities, RGBA cut-outs (their alpha), 16-bit, palette, JPEG. A "
                               "file with a {stem}_mask file beside it is its photo, not a mask."),
    alphas: Path = typer.Option(None, "--alphas", help="Folder of ground-truth alphas (instead of --masks): "
                                "evaluation trimaps made as the training pipelines make them."),
    out: Path = typer.Option(..., "--out", help="Output folder: OUT/{stem}.png, 0 background, 128 unknown, "
                             "255 foreground, the mask's size."),
    band: str = typer.Option(None, "--band", help="Half-width of the unknown band around the mask's edge: pixels "
                             "(20) or a share of the image diagonal (1.5%). Default 1% (22 px at 1080p, 44 at 4K)."),
    threshold: str = typer.Option(None, "--threshold", help="LO,HI: a mask probability >= HI is foreground, < LO "
                                  "background, between them unknown (default 0.5,0.5: cut at one half)."),
    method: str = typer.Option(None, "--method", help="With --alphas: dist (the unknown region grown by a random "
                               "1..19 px, IndexNet's) or erode (fg and bg eroded by random 1..29 px kernels, "
                               "GCA's). Default dist."),
    seed: int = typer.Option(None, "--seed", min=SEED_MIN, max=SEED_MAX, help="With --alphas: the random seed (default 0); each file's draw "
                             "depends only on the seed and its name."),
    preview: Path = typer.Option(None, "--preview", help="Folder for {stem}.jpg previews: the trimap over the "
                                 "image (unknown tinted magenta, background dimmed)."),
    images: Path = typer.Option(None, "--images", help="The photos, matched by stem: previews are drawn over them "
                                "and each mask (alpha) must fit its photo's size (masks: EXIF as matte infer)."),
    empty: str = typer.Option(None, "--empty", help="With --masks: a mask with nothing to matte (no foreground, or all "
                              "foreground): skip (default) or pass (write its all-known trimap). Named either way."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo trimaps that exist (default: skip them)."),
    workers: int = typer.Option(None, "--workers", min=1, help="Files processed at once (default: every core this "
                                "process may use)."),
    recursive: bool = typer.Option(False, "--recursive", help="Walk subfolders (and --images' at the same relative "
                                   "paths); outputs mirror the tree. Links to folders are followed, each folder walked "
                                   "once."),
    json_out: Path = typer.Option(None, "--json", help="Also write the report as JSON: counts, and each file done, "
                                  "skipped or failed (with the reason), notes (`-`: to stdout, the summary line to "
                                  "stderr)."),
) -> None:
    """Write OUT/{stem}.png, a 0/128/255 trimap, for every mask in --masks (or alpha in --alphas).

    From a mask: pixels at least --band away from its edge are known (foreground inside, background
    outside), the rest unknown; thin parts narrower than twice the band become unknown; the image
    border is not an edge. matte infer --masks makes the same trimaps on the fly. Outputs are
    written atomically and existing ones skipped unless --overwrite, so a re-run finishes what is
    missing. A bad file is named with the reason and skipped; the exit code is 1 if any failed.
    """
    from mattecli.data.make_trimaps import METHODS, TrimapJob, make_trimaps
    from mattecli.data.trimap import DEFAULT_BAND, DEFAULT_THRESHOLD, MaskRule, parse_band, parse_threshold
    from mattecli.errors import UsageError
    from mattecli.imageio import prepare_out_dir
    from mattecli.inference.batch import check_json_out, print_report

    if (masks is None) == (alphas is None):
        raise UsageError("give either --masks DIR or --alphas DIR")
    if empty is not None and empty not in EMPTY_CHOICES:
        raise UsageError(f"--empty {empty}: choose skip or pass")
    if masks is not None:
        if method is not None or seed is not None:
            raise UsageError("--method and --seed are for --alphas; with --masks use --band and --threshold")
        rule = MaskRule(parsed_option("--band", parse_band, band, DEFAULT_BAND),
                        parsed_option("--threshold", parse_threshold, threshold, DEFAULT_THRESHOLD))
        job = TrimapJob(rule=rule, images=images, empty=empty or "skip")
    else:
        if band is not None or threshold is not None:
            raise UsageError("--band and --threshold are for --masks; with --alphas use --method and --seed")
        if empty is not None:  # it was taken and ignored: an alpha's trimap is written whatever it holds
            raise UsageError("--empty is for --masks; with --alphas every trimap is written")
        if (method or "dist") not in METHODS:
            raise UsageError(f"--method {method}: choose {' or '.join(METHODS)}")
        job = TrimapJob(method=method or "dist", seed=seed or 0, images=images)
    check_json_out(json_out, [])  # every input of trimap is an image, which check_json_out refuses
    prepare_out_dir(out)
    if preview is not None:
        prepare_out_dir(preview, "--preview")
    report = make_trimaps(masks or alphas, out, job, preview=preview, overwrite=overwrite, workers=workers,
                          recursive=recursive)
    print_report(report, out, json_out)
    if report.failed:
        raise typer.Exit(1)


def parsed_option(option: str, parse, text, default):
    """`parse(text)`, or `default` when the option was not given; a bad value is a usage error."""
    from mattecli.errors import UsageError

    if text is None:
        return default
    try:
        return parse(text)
    except ValueError as err:
        raise UsageError(f"{option} {err}") from None
