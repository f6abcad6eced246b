"""`matte trimap` over a folder: trimaps from segmentation masks or from ground-truth alphas.

Every file is its own task on a thread pool (decoding, the distance transforms and encoding release
the GIL), written atomically; a file whose outputs exist is skipped unless `overwrite`, so a re-run
finishes what is missing. Bad files are named with the reason and the batch goes on.
"""

from __future__ import annotations

import os
import zlib
from concurrent.futures import as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mattecli.errors import InputError, UsageError
from mattecli.files import Inputs, atomic_write, case_insensitive, describe, disk_full, remove_stale_temps
from mattecli.imageio import (exif_orientation, fit_orientation, index_by_stem, list_images, missing_reason, orient,
                              read_gray, read_image, read_mask, relative_name, write_png)
from mattecli.inference.batch import (MASK_SUFFIX, STALE_TEMP_SECONDS, BatchReport, claim_output_name, no_images,
                                      unread_note)
from mattecli.parallel import executor, usable_cores
from mattecli.progress import track

METHODS = ("dist", "erode")


@dataclass(frozen=True)
class TrimapJob:
    """What to make: from `masks` with `rule` (a `MaskRule`), or from `alphas` with `method`/`seed`."""

    rule: object = None  # MaskRule for masks; None for alphas
    method: str = "dist"
    seed: int = 0
    images: Path | None = None  # photos matched by name: previews drawn over them, sizes checked
    empty: str = "skip"  # "skip" | "pass": a mask with nothing to matte


def make_trimaps(source: Path, out: Path, job: TrimapJob, preview: Path | None = None, overwrite: bool = False,
                 workers: int | None = None, progress: bool = True, recursive: bool = False) -> BatchReport:
    """Write OUT/{name}.png, a 0/128/255 trimap, for every mask (or alpha) in `source`.

    Args:
        source: folder of masks (`{name}.png` or `{name}_mask.png`) or of alphas.
        out: output folder (created).
        job: how trimaps are made (see `TrimapJob`).
        preview: folder for `{name}.jpg` previews (`data.trimap.trimap_preview`), or None.
        overwrite: redo outputs that exist.
        workers: threads (default: every CPU core).
        progress: show a progress bar.
        recursive: walk subfolders of `source` (and of `job.images`); outputs mirror the tree.

    Returns:
        The report: done, skipped, failed with reasons, nothing to matte, notes.
    """
    source, out = Path(source), Path(out)
    option = "--masks" if job.rule is not None else "--alphas"
    if not source.is_dir():
        raise UsageError(f"{option} {source}: {missing_reason(source)}")
    if job.images is not None and not Path(job.images).is_dir():
        raise UsageError(f"--images {job.images}: {missing_reason(Path(job.images))}")
    for folder, name in ((out, "--out"), (preview, "--preview")):
        if folder is not None and Path(folder).resolve() == source.resolve():
            raise UsageError(f"{name} {folder}: is the {option} folder; outputs would mix with the inputs (or "
                             "overwrite them): choose another folder")
    unreadable: list[tuple[Path, str]] = []  # subfolders left out: failures of the batch
    others: list[Path] = []  # pictures in formats matte does not read: a note
    files = list_images(source, recursive, _inside(source, out, preview), unreadable, others)
    if not files:
        raise no_images(source, recursive, unreadable=unreadable, others=others)
    photos_beside = _photos_beside_masks(files, source) if job.rule is not None else []
    skip = set(photos_beside)
    files = [f for f in files if f not in skip]
    photos, candidates = {}, []
    if job.images is not None:
        # in one folder with the masks, a mask is no photo (not even its own); realpath, not Path.resolve:
        # a symlink loop among them was a RuntimeError traceback, where reading it names it
        masks = {os.path.realpath(f) for f in files}
        candidates = [f for f in list_images(job.images, recursive, unreadable=unreadable)
                      if os.path.realpath(f) not in masks]
        photos = {name: found[0] for name, found in index_by_stem(candidates, job.images).items()}
    inputs = Inputs(files + candidates)  # e.g. --out or --preview given the --images folder
    report, todo, seen = BatchReport(failed=[(str(path), reason) for path, reason in unreadable]), [], {}
    fold = case_insensitive(out)  # Cat.png and cat.tif: one output there, the second replaced the first
    folders = {Path(f) for f in (out, preview) if f is not None}  # and their subfolders, with --recursive
    if note := unread_note(others):
        report.notes.append(note)
    if photos_beside:
        more = f" (and {len(photos_beside) - 1} more like it)" if len(photos_beside) > 1 else ""
        report.notes.append(f"{photos_beside[0]}: its {{stem}}{MASK_SUFFIX} mask lies beside it, so it is taken as "
                            f"a photo, not a mask{more}")
    for path in files:
        name = relative_name(path, source)
        if job.rule is not None and name.endswith(MASK_SUFFIX):
            name = name[: -len(MASK_SUFFIX)]
        if taken := claim_output_name(seen, name, path, fold):
            case = "" if taken[1] == name else "; this file system does not tell letter case apart"
            report.failed.append((str(path), f"another file gives the same name ({taken[0].name} -> {name}.png){case}"))
            continue
        targets = [out / f"{name}.png"] + ([Path(preview) / f"{name}.jpg"] if preview is not None else [])
        try:
            clash = [t for t in targets if t in inputs]
            done = not overwrite and all(t.is_file() for t in targets)  # a folder there is no output: named
        except OSError as err:  # e.g. a path over the system's limit (a deep tree under a deep --out): it ended the run
            report.failed.append((str(path), f"its output {describe(err)}"))
            continue
        folders.update(t.parent for t in targets)
        if clash:
            report.failed.append((str(path), f"its output {clash[0]} would overwrite an input; choose another "
                                             f"{'--preview' if clash[0] != targets[0] else '--out'}"))
        elif done:
            report.skipped.append(str(path))
        elif job.images is not None and name not in photos:
            report.failed.append((str(path), f"no image named {name}.* in --images {job.images}"))
        else:
            todo.append((path, name, targets, photos.get(name)))
    for folder in sorted(folders):  # left by a killed run; young ones may belong to a live one
        remove_stale_temps(folder, ".*.tmp", older_than=STALE_TEMP_SECONDS)
    workers = workers or usable_cores()
    pool = executor(workers, name="matte-trimap")
    try:
        with track(len(todo), "trimap", enabled=progress) as bar:
            futures = {pool.submit(_one, path, name, targets, photo, job): path for path, name, targets, photo in todo}
            for future in as_completed(futures):
                path = futures[future]
                if future.cancelled():  # after a full disk: not started
                    report.not_attempted.append(str(path))
                    continue
                try:
                    outcome, notes, warning = future.result()
                    report.notes.extend(notes)
                    if warning:
                        report.warnings.append((str(path), warning))
                    if outcome is None:
                        report.done.append(str(path))
                    else:
                        report.nothing.append((str(path), outcome))
                        if outcome.endswith("as is"):
                            report.done.append(str(path))
                except InputError as err:
                    report.failed.append((str(err.path), err.reason))
                except (OSError, ValueError, MemoryError) as err:  # e.g. disk full
                    report.failed.append((str(path), describe(err)))
                    if disk_full(err):  # every later output would fail too: start none
                        for other in futures:
                            other.cancel()
                bar.advance()
    finally:  # on Ctrl-C the files being written finish (atomically); the rest are not started
        pool.shutdown(wait=True, cancel_futures=True)
    report.failed.sort()
    report.not_attempted.sort()
    return report


def _photos_beside_masks(files: list[Path], source: Path) -> list[Path]:
    """The files that have a `{stem}_mask` file beside them: photos in a folder that holds each
    photo's mask beside it (the layout `matte infer --masks` reads), so not masks themselves."""
    names = {relative_name(f, source) for f in files}
    return [f for f in files if relative_name(f, source) + MASK_SUFFIX in names]


def _inside(source: Path, *folders: Path | None) -> tuple[Path, ...]:
    """The output folders that lie inside `source` (a recursive walk must not read them)."""
    root = source.resolve()
    return tuple(f for f in folders if f is not None and root in Path(f).resolve().parents)


def _one(path: Path, name: str, targets: list[Path], photo: Path | None, job: TrimapJob):
    """Make and write one trimap (and its preview): (None or the nothing-to-matte reason, notes,
    None or a warning)."""
    from mattecli.data.trimap import (no_foreground, nothing_to_matte, trimap_from_alpha, trimap_from_mask,
                                      trimap_preview)

    notes, image, nothing, warning = [], None, None, None
    if job.rule is None:  # a dataset's alpha: the benchmark convention, EXIF ignored
        base = read_gray(path)
        rng = np.random.default_rng([job.seed, zlib.crc32(name.encode())])  # per file: any order, same result
        trimap = trimap_from_alpha(base, job.method, rng)
        hint = "no partial value, which is all --method dist grows; erode bands the edge" if job.method == "dist" \
            else ""
        if (nothing := nothing_to_matte(trimap, "trimap of this alpha", hint)) is not None:  # every metric 0 on it
            nothing += "; written as is"
        if photo is not None:
            image = read_image(photo)
            if image.shape[:2] != base.shape:
                raise InputError(path, f"alpha is {base.shape[1]}x{base.shape[0]} but image {photo.name} is "
                                       f"{image.shape[1]}x{image.shape[0]}")
    else:
        stored, note = read_mask(path)
        notes += [note] if note else []
        if photo is not None:
            image = read_image(photo, apply_exif=True)
            base, note = fit_orientation(stored, path, exif_orientation(path), exif_orientation(photo),
                                         image.shape[:2], photo.name, "mask")
            notes += [note] if note else []
        else:
            base = orient(stored, exif_orientation(path))
        trimap = trimap_from_mask(base, job.rule.band, job.rule.threshold)
        nothing = nothing_to_matte(trimap, "mask")
        if nothing is not None and job.empty == "skip":
            return f"{nothing}; skipped", notes, None
        if nothing is not None:
            nothing += "; written as is"
        else:  # as `matte infer --masks` warns: a mask of the background, labels read the wrong way round
            warning = no_foreground(trimap, "mask")
    write_png(targets[0], trimap)
    if len(targets) > 1:
        from PIL import Image

        under = image if image is not None else np.repeat(base[..., None], 3, axis=2)
        drawn = Image.fromarray(trimap_preview(under, trimap))
        atomic_write(targets[1], lambda tmp: drawn.save(tmp, format="JPEG", quality=90))
    return nothing, notes, warning
