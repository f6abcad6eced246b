"""`matte eval`: the Deep Image Matting metrics (SAD, MSE, Grad, Conn) of predictions or of a model."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import typer

from mattecli.errors import InputError, UsageError, printable

# what only a model run reads: with --pred no model runs, and `--device cuda` was taken without a word
MODEL_OPTIONS = ("backend", "device", "save_pred")


def main(
    ctx: typer.Context,
    pred: Optional[Path] = typer.Option(None, "--pred", help="Folder of predicted alpha mattes (matched to --gt and --trimap by file stem)."),
    gt: Optional[Path] = typer.Option(None, "--gt", help="Folder of ground-truth alpha mattes (a 3-channel file uses its first channel)."),
    trimap: Optional[Path] = typer.Option(None, "--trimap", help="Folder of trimaps; the unknown region is exactly trimap == 128."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Run this model (.safetensors, .onnx or .engine) on --data instead of reading --pred."),
    data: Optional[Path] = typer.Option(None, "--data", help="A prepared split (e.g. OUT/test, with manifest.csv): images, alphas and trimaps."),
    backend: Optional[str] = typer.Option(None, "--backend", help="With --weights: torch, onnx or trt (default: from the weights file's suffix)."),
    device: str = typer.Option("auto", "--device", help="Device for --weights: auto (cuda when available, else cpu), cpu or cuda[:N]."),
    save_pred: Optional[Path] = typer.Option(None, "--save-pred", help="With --weights: write the predictions to this folder as {name}.png."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write count, mean and per-image metrics as JSON (`-`: to stdout, the table to stderr)."),
    csv_out: Optional[Path] = typer.Option(None, "--csv", help="Write per-image metrics as CSV (name,sad,mse,grad,conn; `-`: to stdout, the table to stderr)."),
    workers: Optional[int] = typer.Option(
        None, "--workers", help="Processes computing metrics (default: every core this process may use)."),
    report: Optional[Path] = typer.Option(None, "--report", help="Write an HTML page of the worst images by SAD into this folder."),
    report_worst: int = typer.Option(20, "--report-worst", help="How many of the worst images the report shows."),
    images: Optional[Path] = typer.Option(None, "--images", help="With --pred --gt --trimap: folder of the composites, shown in the report (--data gives its own)."),
) -> None:
    """Evaluate alpha mattes with the official Deep Image Matting metrics.

    Either predictions in a folder (--pred with --gt and --trimap, or with --data) or a model run on
    a prepared split (--weights with --data). Prints the mean SAD/1000, MSE, Grad/1000 and Conn/1000
    (the units papers print); exit code 1 when some images could not be evaluated (each named).
    """
    from mattecli.cli.parsing import options_given

    try:
        code = run_eval(pred=pred, gt=gt, trimap=trimap, weights=weights, data=data, backend=backend, device=device,
                        save_pred=save_pred, json_out=json_out, csv_out=csv_out, workers=workers, report=report,
                        report_worst=report_worst, images=images, model_options=options_given(ctx, MODEL_OPTIONS),
                        report_worst_given=bool(options_given(ctx, ("report_worst",))))
    except UsageError as err:
        print(printable(f"matte: error: {err}"), file=sys.stderr)
        raise typer.Exit(2) from None
    raise typer.Exit(code)


@dataclass(frozen=True)
class EvalOutputs:
    """What to write besides the table: JSON summary, per-image CSV, HTML report of the worst N."""

    json: Path | None = None
    csv: Path | None = None
    report: Path | None = None
    report_worst: int = 20


def _check_options(*, pred, gt, trimap, weights, data, workers, report, report_worst, images,
                   model_options=(), report_worst_given=False) -> None:
    """`model_options`: those of MODEL_OPTIONS given, as written (`--save-pred`)."""
    if report is None and report_worst_given:  # was taken without a word
        raise UsageError("--report-worst goes with --report (how many of the worst images its page shows)")
    if pred is not None and weights is not None:
        raise UsageError("--pred and --weights are mutually exclusive (evaluate files, or run a model)")
    if pred is None and weights is None:
        raise UsageError("give --pred DIR with --gt DIR and --trimap DIR (or --data), or --weights FILE with --data DIR")
    if weights is not None:
        if data is None:
            raise UsageError("--weights needs --data (a prepared split with manifest.csv)")
        if gt is not None or trimap is not None or images is not None:
            raise UsageError("--gt, --trimap and --images go with --pred; with --weights the manifest gives them")
    else:
        if model_options:
            raise UsageError(f"{', '.join(model_options)}: with --weights only (with --pred the predictions are "
                             "files already: no model runs)")
        if data is not None and (gt is not None or trimap is not None or images is not None):
            raise UsageError("--data gives the ground truth, trimaps and images; do not add --gt, --trimap or --images")
        if data is None and (gt is None or trimap is None):
            raise UsageError("--pred needs --gt DIR and --trimap DIR (or --data)")
    if workers is not None and workers < 1:
        raise UsageError(f"--workers must be at least 1, not {workers}")
    if report_worst < 1:
        raise UsageError(f"--report-worst must be at least 1, not {report_worst}")
    if report is not None:
        blocked = next((p for p in (Path(report), *Path(report).parents) if p.exists() and not p.is_dir()), None)
        if blocked is not None:
            raise UsageError(f"--report {report}: {blocked} is a file; the report is a folder (index.html and "
                             "its images): name a folder")


def _check_outputs(*, save_pred, report, json_out, csv_out) -> None:
    """Every output place writable before any image is evaluated: a typo must not cost a model run."""
    from mattecli.files import Inputs, check_stdout, to_stdout
    from mattecli.imageio import check_out_dir, check_report_file

    for option, folder in (("--save-pred", save_pred), ("--report", report)):
        if folder is not None:
            check_out_dir(folder, option)
    if to_stdout(json_out) and to_stdout(csv_out):
        raise UsageError(f"--json {json_out} --csv {csv_out}: both on standard output would be mixed; "
                         "send one to a file")
    page = None if report is None else Path(report) / "index.html"
    for option, file, kind in (("--json", json_out, "JSON"), ("--csv", csv_out, "CSV")):
        if file is not None and not to_stdout(file):
            check_report_file(file, option, kind)
            if page is not None and Path(file) in Inputs([page]):
                raise UsageError(f"{option} {file}: is the --report page; write it to another file")
        check_stdout(file, option)
    if json_out is not None and csv_out is not None and not to_stdout(json_out) and Path(csv_out) in Inputs([json_out]):
        raise UsageError(f"--json {json_out} --csv {csv_out}: the same file, so the CSV would replace the JSON; "
                         "write them to two files")


def eval_predictions(pred: Path, *, gt: Path | None = None, trimap: Path | None = None, data: Path | None = None,
                     images: Path | None = None, workers: int | None = None,
                     outputs: EvalOutputs = EvalOutputs()) -> int:
    """`matte eval --pred`: score the prediction files against --gt/--trimap folders, or a split's manifest.

    Returns:
        the exit code: 0, or 1 when some images could not be evaluated (each named on stderr).
    """
    from rich.console import Console

    from mattecli import evaluation as ev

    errors = Console(stderr=True)
    if data is not None:
        items, failures = ev.match_manifest(_split(data), pred=pred)
    else:
        items, failures = ev.match_folders(pred, gt, trimap, images=images)
        if not items and not failures:
            raise UsageError(f"{pred}, {gt}, {trimap}: no images to evaluate")
    _refuse_overwriting_inputs(items, outputs, data=data)
    _print_failures(errors, failures)
    results = ev.evaluate_files(items, workers or ev.default_workers(), console=errors)
    return _finish(results + failures, items, {}, outputs, errors)


def eval_model(weights: Path, data: Path, *, backend: str | None = None, device: str = "cpu",
               save_pred: Path | None = None, workers: int | None = None,
               outputs: EvalOutputs = EvalOutputs()) -> int:
    """`matte eval --weights`: run the model on a prepared split (whole images, the papers'
    protocol) and score its predictions.

    Returns:
        the exit code: 0, or 1 when some images could not be evaluated (each named on stderr).
    """
    from rich.console import Console

    from mattecli import evaluation as ev
    from mattecli.devices import resolve_device
    from mattecli.inference.backends import implied_backend
    from mattecli.inference.pipeline import load_pipeline

    device = resolve_device(device, backend=implied_backend(weights, backend))  # one line before any work
    errors = Console(stderr=True)
    items, failures = ev.match_manifest(_split(data))
    _refuse_overwriting_inputs(items, outputs, None if save_pred is None else Path(save_pred), data)
    _print_failures(errors, failures)
    pipeline = load_pipeline(weights, backend, device)
    worst = ev.WorstN(outputs.report_worst) if outputs.report is not None else None
    results, kept = ev.evaluate_model(items, pipeline, workers or ev.default_workers(), save_pred=save_pred,
                                      worst=worst, console=errors)
    return _finish(results + failures, items, kept, outputs, errors)


def _refuse_overwriting_inputs(items, outputs: EvalOutputs, save_pred: Path | None = None,
                               data: Path | None = None) -> None:
    """Outputs onto inputs: --save-pred at the split's alpha/ folder overwrote the ground truth with
    the predictions, one file at a time, and scored each against itself; --json or --csv at the
    split's manifest.csv (or an image) replaced it after the run. And outputs outside --save-pred:
    a manifest's name column is free text, and '../../x' or '/abs/x' was written there."""
    import os

    from mattecli.files import Inputs, to_stdout

    inputs = Inputs([*(p for item in items for p in (item.pred, item.gt, item.trimap, item.image) if p is not None),
                     *([Path(data) / "manifest.csv"] if data is not None else [])])
    for item in items if save_pred is not None else ():
        target = save_pred / f"{item.name}.png"
        if not Path(os.path.normpath(target)).is_relative_to(os.path.normpath(save_pred)):
            raise UsageError(f"--save-pred {save_pred}: the manifest's sample name {item.name!r} would put its "
                             f"prediction outside the folder, at {os.path.normpath(target)}; rename the sample")
        if target in inputs:
            raise UsageError(f"--save-pred {save_pred}: {target} is an input of --data; save the predictions "
                             "in another folder")
    for option, file in (("--json", outputs.json), ("--csv", outputs.csv)):
        if file is not None and not to_stdout(file) and Path(file) in inputs:
            raise UsageError(f"{option} {file}: is an input of the evaluation; write it to another file")


def run_eval(*, pred=None, gt=None, trimap=None, weights=None, data=None, backend=None, device=None,
             save_pred=None, json_out=None, csv_out=None, workers=None, report=None, report_worst=20,
             images=None, model_options=None, report_worst_given=None) -> int:
    """The command as one function, options as on the command line (`main` calls it; `eval_predictions`
    and `eval_model` are the two modes; `device` None is the CPU); returns the exit code.
    `model_options` (the model's options given, as written) and `report_worst_given` are what the
    command line says was given; by default, the ones that are not None and a `report_worst` not 20."""
    if model_options is None:
        given = (("--backend", backend), ("--device", device), ("--save-pred", save_pred))
        model_options = [option for option, value in given if value is not None]
    _check_options(pred=pred, gt=gt, trimap=trimap, weights=weights, data=data, workers=workers, report=report,
                   report_worst=report_worst, images=images, model_options=model_options,
                   report_worst_given=report_worst != 20 if report_worst_given is None else report_worst_given)
    _check_outputs(save_pred=save_pred, report=report, json_out=json_out, csv_out=csv_out)
    outputs = EvalOutputs(json=json_out, csv=csv_out, report=report, report_worst=report_worst)
    if weights is not None:
        return eval_model(weights, data, backend=backend, device=device or "cpu", save_pred=save_pred,
                          workers=workers, outputs=outputs)
    return eval_predictions(pred, gt=gt, trimap=trimap, data=data, images=images, workers=workers, outputs=outputs)


def _split(data: Path) -> Path:
    from mattecli.imageio import missing_reason

    if not Path(data).is_dir():
        raise UsageError(f"{data}: {missing_reason(Path(data))} (--data)")
    test = Path(data) / "test"
    if not (Path(data) / "manifest.csv").is_file() and (test / "manifest.csv").is_file():
        # the folder `matte train --data` takes: its root, where eval wants one split
        raise UsageError(f"--data {data}: a prepared dataset with train/ and test/; give the split to "
                         f"evaluate on, e.g. --data {test}")
    return data


def _print_failures(errors, failures) -> None:
    for failure in failures:
        errors.print(printable(f"matte eval: {failure.name}: {failure.error}"), markup=False, highlight=False,
                     soft_wrap=True)


def _finish(results, items, kept: dict, outputs: EvalOutputs, errors) -> int:
    """The table, the files asked for, and the exit code."""
    from mattecli import evaluation as ev
    from mattecli.files import to_stdout

    results = sorted(results, key=lambda r: r.name)
    summary = ev.summary(results)
    # with --json - (or --csv -) stdout holds that alone, for a pipe; the table goes with the notes
    ev.print_table(summary, console=errors if to_stdout(outputs.json) or to_stdout(outputs.csv) else None)
    if outputs.json is not None:
        ev.write_json(outputs.json, summary)
    if outputs.csv is not None:
        ev.write_csv(outputs.csv, results)
    if outputs.report is not None:
        page = _write_report(outputs.report, results, items, kept, outputs.report_worst, errors)
        errors.print(f"report: {page}", markup=False, highlight=False, soft_wrap=True)
    failed = [r for r in results if r.error]
    if failed:
        # a failure may be a file without a counterpart (a prediction no sample names), not an image
        errors.print(f"matte eval: {len(failed)} name(s) not evaluated (each named above); "
                     f"{summary['count']} image(s) evaluated", markup=False, highlight=False, soft_wrap=True)
        return 1
    return 0


def _write_report(out_dir: Path, results, items, kept: dict, count: int, errors) -> Path:
    from mattecli.eval_report import ReportEntry, write_report
    from mattecli.imageio import read_alpha, read_gray, read_ground_truth, read_image

    by_name = {item.name: item for item in items}
    good = sorted((r for r in results if r.metrics is not None), key=lambda r: (-r.metrics["sad"], r.name))
    # with --weights only the predictions kept in memory (the worst N) can be shown
    good = [r for r in good if r.name in kept or by_name[r.name].pred is not None]
    entries = []
    for r in good[:count]:
        item = by_name[r.name]
        pred = kept[r.name] if r.name in kept else read_alpha(item.pred)
        gt = read_ground_truth(item.gt)  # as it was scored (a cut-out's alpha, not its red channel)
        # a composite is shown, not scored: one that cannot be read (cut off) stopped the run, with no
        # page, and one of another size (another photo's) was shown beside this matte without a word
        problem, image = None, None
        try:
            image = read_image(item.image) if item.image is not None else None
        except InputError as err:
            problem = str(err)
        if image is not None and image.shape[:2] != gt.shape:
            problem = (f"{item.image}: {image.shape[1]}x{image.shape[0]}, its ground truth {gt.shape[1]}x"
                       f"{gt.shape[0]}")
            image = None
        if problem:
            errors.print(printable(f"matte eval: warning: {problem}; the report shows {r.name} without its "
                                   "composite"), markup=False, highlight=False, soft_wrap=True)
        entries.append(ReportEntry(r.name, r.metrics, pred, gt, read_gray(item.trimap), image))
    return write_report(out_dir, entries, title="matte eval: worst images by SAD")
