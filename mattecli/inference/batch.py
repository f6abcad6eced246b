"""Folder-level inference: pair images with trimaps, run the pipeline, write outputs atomically,
skip what is done, name every failure with its reason and go on with the rest.

With `workers > 0`, decoding, foreground estimation and encoding run in a thread pool while the
model (and, on its device, preparing and restoring) runs in the calling thread (PIL, OpenCV, numba
and torch release the GIL in their heavy loops); with 0 they run in turn with the model. Both sides are bounded
(`prefetch` decoded items waiting for the model, `prefetch` items waiting to be written), so memory
stays bounded whatever the folder's size.
"""

from __future__ import annotations

import functools
import json
import sys
import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mattecli import errors
from mattecli.errors import InputError, UsageError, compile_failure, printable, raise_if_stop
from mattecli.files import (Inputs, case_insensitive, check_stdout, describe, disk_full, remove_stale_temps, to_stdout,
                            write_text)
from mattecli.imageio import (IMAGE_SUFFIXES, check_report_file, exif_orientation, fit_orientation, index_by_stem,
                              list_images, missing_reason, read_gray, read_image, read_mask, read_trimap, relative_name,
                              subfolders_with_images)
from mattecli.inference.pipeline import REDONE_FP32, stage
from mattecli.parallel import executor, usable_cores
from mattecli.progress import track

TRIMAP_SUFFIX = "_trimap"
MASK_SUFFIX = "_mask"
STALE_TEMP_SECONDS = 3600  # a temporary output this old belongs to no live writer


@dataclass
class BatchReport:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    notes: list[str] = field(default_factory=list)
    tiled: list[tuple[str, str]] = field(default_factory=list)  # (path, how), images run as tiles
    nothing: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): no unknown pixel
    warnings: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): done, but look at it
    # images left once a write found the disk full (each would have run the model only to fail)
    not_attempted: list[str] = field(default_factory=list)


OUTPUT_FOLDERS = ("fg", "rgba", "composite", "trimap")  # the non-alpha outputs' subfolders of --out


def find_pairs(images: Path, trimaps: Path | None, shard: tuple[int, int] | None = None, *,
               suffix: str = TRIMAP_SUFFIX, option: str = "--trimaps", recursive: bool = False,
               out: Path | None = None, others: list[Path] | None = None, maps: list[Path] | None = None
               ) -> tuple[list[tuple[Path, Path]], list[tuple[str, str]]]:
    """(image, trimap) pairs by stem, and (path, reason) for images that have no usable trimap.

    Without a trimap folder (or with the image folder itself), trimaps sit beside the images as
    `{stem}{suffix}.{ext}`. With one, `{stem}.{ext}` or `{stem}{suffix}.{ext}` in that folder (at the
    same relative path with `recursive`). An image with several such files fails, naming them (which
    one was meant is not guessed). With `shard=(K, N)` only the images `sorted_images[K::N]`
    are considered (a strided slice of the list sorted by path: every image, and every failure,
    belongs to exactly one shard, and shard sizes differ by at most one). Masks pair the same way
    (`suffix="_mask"`). Files that are outputs of this run (under `out` when it is inside `images`)
    are never inputs.

    `images` may also be one image file: its trimap is then `trimaps` when that is a file, else
    found as above (in `trimaps`, or beside the image). Files of `images` in a picture format matte
    does not read are added to `others` when it is given. A `{stem}_trimap` or `{stem}_mask` file
    beside its photo `{stem}.*` is that photo's map, never an image; those not paired here (maps of
    the other kind, or all of them when `trimaps` is another folder) are added to `maps` when given.

    Raises:
        UsageError: a folder or file is missing; a trimap file without a single image file.
        InputError: `images` holds no image file (saying what its subfolders hold).
    """
    single = images.is_file()
    if single and images.suffix.lower() not in IMAGE_SUFFIXES:
        raise UsageError(f"--images {images}: not an image file ({', '.join(IMAGE_SUFFIXES)})")
    if not single and not images.is_dir():
        raise UsageError(f"--images {images}: {missing_reason(images, 'folder or file')}")
    if trimaps is not None and trimaps.is_file():
        if not single:
            raise UsageError(f"{option} {trimaps}: a single file pairs with a single --images file")
        return ([(images, trimaps)] if shard is None or shard[0] == 0 else []), []
    if trimaps is not None and not trimaps.is_dir():
        raise UsageError(f"{option} {trimaps}: {missing_reason(trimaps, 'folder or file')}")
    root = image_root(images)
    beside = trimaps is None or trimaps.resolve() == root.resolve()
    unreadable: list[tuple[Path, str]] = []  # subfolders left out, each failed once (in shard 0)
    files = [images] if single else _input_images(images, recursive, out, unreadable, others)
    if beside:
        try:
            beside_files = list_images(root) if single else files
        except OSError as err:  # a folder that can be entered but not listed: "u/in: Permission denied", exit 1
            raise UsageError(f"--images {images}: its folder cannot be listed to find the {suffix.strip('_')} "
                             f"beside it ({err.strerror or err}); give it with {option} FILE") from None
        tri_files = [p for p in beside_files if p.stem.endswith(suffix)]
        files = [p for p in files if single or not p.stem.endswith(suffix)]  # a file named by hand is the image
    else:
        tri_files = list_images(trimaps, recursive, unreadable=unreadable)
    if not single and (beside_maps := _maps_beside_photos(files, root)):
        # e.g. the default layout's a_trimap.png beside a.png, in a run given --trimaps or --masks:
        # taken as a photo, it failed for want of a trimap of its own
        left_out = set(beside_maps)
        files = [f for f in files if f not in left_out]
        if maps is not None:
            maps.extend(beside_maps)
    if not files:
        raise no_images(images, recursive, out, unreadable, others or ())
    maps_root = root if beside else trimaps
    by_name = index_by_stem(tri_files, maps_root)
    pairs, problems, seen = [], [], {}
    fold = out is not None and case_insensitive(out)  # Cat.jpg and cat.png: one output there
    for img in files:  # duplicates are found over the whole list, so shards agree on them
        name = relative_name(img, root)
        if taken := claim_output_name(seen, name, img, fold):
            case = "" if taken[1] == name else ", letter case aside: this file system does not tell it apart"
            problems.append((img, f"another image has the same name stem ({taken[0].name}){case}; "
                                  "outputs are named by stem"))
            continue
        candidates = by_name.get(name if not beside else "", []) + by_name.get(name + suffix, [])
        candidates = [c for c in candidates if c != img]
        if not candidates:
            # with --recursive the trimap is looked for at the image's relative folder, so name that one
            kind = suffix.strip("_")
            if beside:  # only `{stem}{suffix}.*` is looked for there: `{stem}.*` is the image itself
                problems.append((img, f"no {kind} found ({img.stem}{suffix}.* in {img.parent}; "
                                      f"{option} names a folder of {kind}s named like the images)"))
                continue
            where = trimaps / img.parent.relative_to(root)
            problems.append((img, f"no {kind} found ({img.stem}.* or {img.stem}{suffix}.* in {where})"))
            continue
        if len(candidates) > 1:  # a.bmp and a.png, or a.png and a_trimap.png: which was meant is not ours to guess
            names = ", ".join(str(c.relative_to(maps_root)) if c.is_relative_to(maps_root) else str(c)
                              for c in candidates)
            problems.append((img, f"several {suffix.strip('_')}s for it ({names}); keep one"))
            continue
        pairs.append((img, candidates[0]))
    if shard is not None:
        mine = set(files[shard[0]::shard[1]])
        pairs = [p for p in pairs if p[0] in mine]
        problems = [p for p in problems if p[0] in mine]
    if shard is None or shard[0] == 0:
        problems += unreadable
    return pairs, [(str(path), reason) for path, reason in problems]


def claim_output_name(seen: dict, name: str, path: Path, fold: bool) -> tuple[Path, str] | None:
    """Record `path` as the input whose outputs are named `name`; if another input has that name
    already (letter case aside where the output folder does not tell case apart: `fold`), return
    that input and its name instead. `seen` is the record, one per batch."""
    key = name.casefold() if fold else name
    if key in seen:
        return seen[key]
    seen[key] = path, name
    return None


def image_root(images: Path) -> Path:
    """The folder that output names are relative to: `--images` itself, or a single image's folder."""
    return images.parent if images.is_file() else images


def _output_folders(images: Path, out: Path | None) -> tuple[Path, ...]:
    """The folders under `images` that hold only outputs of a run writing into `out`."""
    if out is None:
        return ()
    out_root, root = out.resolve(), images.resolve()
    if not (out_root == root or root in out_root.parents):
        return ()
    return tuple(out_root / kind for kind in OUTPUT_FOLDERS) + ((out_root,) if out_root != root else ())


def _maps_beside_photos(files: list[Path], root: Path) -> list[Path]:
    """The `{stem}_trimap` and `{stem}_mask` files whose photo `{stem}.*` is among `files`."""
    names = {relative_name(f, root) for f in files}
    return [f for f in files for suffix in (TRIMAP_SUFFIX, MASK_SUFFIX)
            if f.stem.endswith(suffix) and relative_name(f, root)[:-len(suffix)] in names]


def _input_images(images: Path, recursive: bool, out: Path | None,
                  unreadable: list[tuple[Path, str]] | None = None, others: list[Path] | None = None) -> list[Path]:
    """The image files under `images`, less the outputs of a run writing into `out`: when `out` is
    inside `images` its output subfolders are skipped, and when it is the image folder itself an
    alpha `{stem}.png` beside an image `{stem}.jpg` (say) is that image's output, not an input."""
    skip = _output_folders(images, out)
    files = list_images(images, recursive, skip, unreadable, others)
    if not skip:
        return files
    out_root = out.resolve()
    by_stem: dict[Path, list[Path]] = {}
    for f in files:
        by_stem.setdefault(f.with_suffix(""), []).append(f)
    return [f for f in files if not (f.suffix == ".png" and len(by_stem[f.with_suffix("")]) > 1
                                     and _is_under(f, out_root))]


def _is_under(path: Path, root: Path) -> bool:
    parent = path.parent.resolve()
    return parent == root or root in parent.parents


def no_images(images: Path, recursive: bool, out: Path | None = None,
              unreadable: list[tuple[Path, str]] = (), others: list[Path] = ()) -> InputError:
    """The error for an input folder without image files, saying what its subfolders hold (or
    which of them could not be read: `list_images`'s `unreadable`), and what pictures it holds in
    formats matte does not read (`others`)."""
    if unreadable:
        path, reason = unreadable[0]
        more = f" (and {len(unreadable) - 1} more like it)" if len(unreadable) > 1 else ""
        return InputError(images, f"no image files it could read: {path} {reason}{more}")
    held = f"; {_unread(others)} (e.g. {others[0].name}): convert to one of these" if others else ""
    return InputError(images, "no image files here (" + ", ".join(IMAGE_SUFFIXES) + ")" + held
                      + _subfolder_hint(images, recursive, out))


def _subfolder_hint(images: Path, recursive: bool, out: Path | None = None) -> str:
    if recursive:
        return ""
    subs = subfolders_with_images(images, _output_folders(images, out))
    if not subs:
        return ""
    names = ", ".join(d.name for d in subs[:3]) + (", ..." if len(subs) > 3 else "")
    held = "1 subfolder holds" if len(subs) == 1 else f"{len(subs)} subfolders hold"
    return f"; {held} images ({names}): --recursive to include them"


def _unread(others: list[Path]) -> str:
    return ("1 file" if len(others) == 1 else f"{len(others)} files") + " in a picture format matte does not read"


def maps_note(maps: list[Path], masks, trimaps) -> str | None:
    """The note for the maps beside their photos that this run does not use."""
    if not maps:
        return None
    reads = (f"the masks in --masks {masks}" if masks is not None else f"the trimaps in --trimaps {trimaps}"
             if trimaps is not None else f"the {{stem}}{TRIMAP_SUFFIX} files")
    kind = "mask" if maps[0].stem.endswith(MASK_SUFFIX) else "trimap"
    more = f" (and {len(maps) - 1} more like it)" if len(maps) > 1 else ""
    return f"{maps[0]}: left out, as the {kind} of the photo beside it (this run reads {reads}){more}"


def unread_note(others: list[Path]) -> str | None:
    """A note for the files of a picture format matte does not read, which a batch leaves out."""
    if not others:
        return None
    return f"{_unread(others)} left out (e.g. {others[0]}): convert to PNG, JPEG, TIFF, WebP or BMP to include them"


def subfolder_note(images: Path, recursive: bool, out: Path | None = None) -> str | None:
    """A note for subfolders of images that a non-recursive run leaves out, or None."""
    hint = _subfolder_hint(images, recursive, out)
    return f"{images}: not searched{hint}" if hint else None


@dataclass
class _Item:
    image_path: Path
    trimap_path: Path
    targets: dict  # kind -> Path, the outputs to write
    alpha_path: Path | None = None  # an alpha already written is reused from here (unless overwrite)
    mask_rule: object = None  # a data.trimap.MaskRule when the second file is a mask


def default_workers(device: str) -> int:
    """`--workers` when not given (docs/commands/infer.md, "Throughput").

    CUDA: every core the process may use (at least 2): the model and its preparing and restoring
    are on the GPU, so decoding, foreground estimation and encoding are the host's whole work, and
    they scale with threads. CPU: 0, in turn with the model, which already uses every core; a
    model that leaves cores idle (an exported graph on a small model) gains from `--workers 2`.
    """
    if not str(device).startswith("cuda"):
        return 0
    return max(2, usable_cores())


def infer_folder(pipeline, images: Path, out: Path, trimaps: Path | None = None, overwrite: bool = False,
                 progress: bool = True, save=("alpha",), background=None, shard: tuple[int, int] | None = None,
                 workers: int = 2, prefetch: int | None = None, timer=None, masks: Path | None = None,
                 mask_rule=None, empty: str = "skip", recursive: bool = False) -> BatchReport:
    """Write the requested outputs (`save`, see `outputs.OUTPUT_KINDS`) for every image with a trimap.

    An image is done when all its requested outputs exist and are current (`outputs.is_current`: a
    composite made with another background is not); it is skipped then, unless `overwrite`. Otherwise
    only its missing or stale outputs are written, from its existing alpha when there is one (the
    model does not run again), e.g. after changing `--background`.

    Args:
        pipeline: a `Pipeline` (or anything with `run(image, trimap) -> (alpha, how)`).
        images: folder of images, or one image file.
        out: output folder (created).
        trimaps: folder of trimaps (or one trimap file for one image file), or None for
            `{stem}_trimap.*` beside the images.
        overwrite: redo outputs that exist.
        progress: show a progress bar with ETA.
        save: output kinds to write.
        background: an `outputs.Background`, required for "composite".
        shard: (K, N), 0-based: process only `sorted_images[K::N]`.
        workers: threads decoding inputs, estimating foregrounds and encoding outputs while the
            model runs; 0 runs them in turn with the model in the calling thread.
        prefetch: items decoded ahead of the model, and items queued for writing (the memory
            bound); default max(2, workers), so that every worker has an item.
        timer: `timer(stage)` -> a context manager around each decode, foreground and encode (in
            the workers; `matte bench --e2e`); None: not timed. The pipeline's own stages are
            timed by its `timer` attribute, which the caller sets.
        masks: folder of segmentation masks (instead of trimaps; the image folder itself for
            `{stem}_mask.*` beside the images): trimaps are made from them with `mask_rule`
            (a `data.trimap.MaskRule`), exactly as `matte trimap` makes them.
        empty: what to do with an image whose trimap has no unknown pixel ("nothing to matte"):
            "skip" it, or "pass" the trimap through as its alpha; either way it is reported.
        recursive: walk subfolders of `images`; outputs mirror the tree (OUT/sub/{stem}.png).

    Returns:
        The report: done, skipped, failed with reasons, notes.
    """
    from mattecli.data.trimap import no_foreground
    from mattecli.inference.outputs import foreground_device

    report, todo = _plan(Path(images), Path(out), trimaps=trimaps, masks=masks, mask_rule=mask_rule, shard=shard,
                         recursive=recursive, save=save, background=background, overwrite=overwrite)

    device = foreground_device(getattr(pipeline, "backend", None))
    prefetch = prefetch or max(2, workers)
    # Threads, not processes: decoding, encoding, numba and torch release the GIL in their heavy
    # loops, and a process would pickle every 4K image across; threads measured 1.90x (decoding) and
    # 2.02x (encoding) faster on 2 cores (benchmarks/pool_kind.py, docs/benchmarks.md).
    pool = executor(workers, name="matte-io")
    # the workers also prepare the network input, beside the model (in turn with it, nothing gains)
    prepare = getattr(pipeline, "prepare_host", None) if workers else None
    load = functools.partial(_load, timer=timer, prepare=prepare and functools.partial(prepare, ahead=prefetch))
    reads: deque[tuple[_Item, Future]] = deque()
    writes: deque[tuple[_Item, Future]] = deque()
    queue = iter(todo)
    try:
        with track(len(todo), "infer", enabled=progress) as bar:
            advance = bar.advance

            def fill_reads():
                while len(reads) < prefetch:
                    item = next(queue, None)
                    if item is None:
                        return
                    reads.append((item, pool.submit(load, item, overwrite)))

            def drain_writes(limit):
                nonlocal full
                while len(writes) > limit:
                    item, future = writes.popleft()
                    if disk_full(_record(report, item, future)):
                        full = True
                    advance()

            full = False  # a write found the disk (or the user's quota) full: nothing new is started
            fill_reads()
            while reads and not full:
                if errors.STOP_SIGNALS:  # a stop whose KeyboardInterrupt was lost (raised in a __del__, as
                    raise KeyboardInterrupt  # llvmlite's in numba's first compile): it stops here, between images
                item, future = reads.popleft()
                fill_reads()  # keep decoding ahead while the model runs
                try:
                    image, trimap, alpha, notes, nothing, prepared = future.result()
                    report.notes.extend(notes)
                    if nothing and empty == "skip":
                        report.nothing.append((str(item.trimap_path), f"{nothing}; skipped"))
                        advance()
                        continue
                    if nothing:
                        report.nothing.append((str(item.trimap_path), f"{nothing}; the trimap written as the alpha"))
                        alpha = trimap  # what the model's output becomes anyway once known regions are copied
                    elif warning := no_foreground(trimap, "trimap" if item.mask_rule is None else "mask"):
                        report.warnings.append((str(item.trimap_path), warning))
                    if alpha is None:
                        alpha, how = pipeline.run(image, trimap, prepared) if prepared is not None else \
                            pipeline.run(image, trimap)
                        if item.alpha_path is not None:  # a new alpha replaces an unusable one on disk
                            item.targets.setdefault("alpha", item.alpha_path)
                        if how.startswith("tiled"):
                            report.tiled.append((str(item.image_path), how.split(";")[0]))
                        if REDONE_FP32 in how:
                            report.notes.append(f"{item.image_path}: {REDONE_FP32}")
                except InputError as err:
                    raise_if_stop(err)
                    report.failed.append((str(err.path), err.reason))
                    advance()
                    continue
                except (OSError, RuntimeError, ValueError, MemoryError) as err:  # e.g. out of memory on a huge image
                    raise_if_stop(err)
                    _refuse_failed_compile(err)
                    report.failed.append(_failure(item, err))
                    advance()
                    continue
                writes.append((item, pool.submit(_write, item, image, alpha, background, trimap, device, timer)))
                drain_writes(prefetch)
            drain_writes(0)  # results already computed are still written: each may fit
            report.not_attempted = [str(item.image_path) for item, _ in reads] + [str(i.image_path) for i in queue]
    finally:
        # On Ctrl-C or a crash: decoding ahead is dropped, but results the model has already paid
        # for are still written (at most `prefetch`; each write is atomic, a second Ctrl-C stops them).
        for _, future in reads:
            future.cancel()
        pool.shutdown(wait=True)
    return report


def _plan(images: Path, out: Path, *, trimaps, masks, mask_rule, shard, recursive, save, background,
          overwrite) -> tuple[BatchReport, list[_Item]]:
    """The pairs of this shard, each either to do (with the outputs it lacks), skipped (all current)
    or failed (unpaired, or an output that would overwrite an input); OUT made, stale temps cleared."""
    from mattecli.data.trimap import MaskRule
    from mattecli.inference.outputs import is_current, output_paths

    others: list[Path] = []
    maps: list[Path] = []
    if masks is not None:
        mask_rule = mask_rule or MaskRule()
        pairs, problems = find_pairs(images, Path(masks), shard, suffix=MASK_SUFFIX, option="--masks",
                                     recursive=recursive, out=out, others=others, maps=maps)
    else:
        mask_rule = None
        pairs, problems = find_pairs(images, Path(trimaps) if trimaps else None, shard, recursive=recursive, out=out,
                                     others=others, maps=maps)
    report = BatchReport(failed=list(problems))
    notes = [] if images.is_file() else [subfolder_note(images, recursive, out)]
    if shard is None or shard[0] == 0:  # said once for the shards, as unreadable folders are
        notes.append(unread_note(others))
        notes.append(maps_note(maps, masks, trimaps))
    report.notes.extend(note for note in notes if note)
    inputs = [p for pair in pairs for p in pair]
    if background is not None and getattr(background, "path", None) is not None:
        inputs.append(Path(background.path))
    inputs = Inputs(inputs)
    out.mkdir(parents=True, exist_ok=True)
    todo, folders = [], {out}
    for image_path, trimap_path in pairs:
        targets = output_paths(out, relative_name(image_path, image_root(images)), save)
        try:
            clash = [t for t in targets.values() if t in inputs]
            stale = {} if clash else {kind: t for kind, t in targets.items()
                                      if overwrite or not is_current(kind, t, background)}
        except OSError as err:  # e.g. a path over the system's limit (a deep tree under a deep --out): it ended the run
            report.failed.append((str(image_path), f"its output {describe(err)}"))
            continue
        folders.update(t.parent for t in targets.values())
        if clash:
            report.failed.append((str(image_path), f"its output {clash[0]} would overwrite an input; "
                                                   "choose another --out"))
        elif stale:
            todo.append(_Item(image_path, trimap_path, stale, targets.get("alpha"), mask_rule))
        else:
            report.skipped.append(str(image_path))
    _remove_stale_temps(folders)
    return report, todo


def _load(item: _Item, overwrite: bool, timer=None, prepare=None):
    """Decode one item: (image, trimap, existing alpha or None, notes, why there is nothing to matte
    or None, prepared network input or None). Runs in a worker thread (in the calling one with no workers).

    With a `mask_rule` the item's second file is a mask, made into a trimap here. With `prepare`
    (`Pipeline.prepare_host`) the network input is made here too, beside the model, when the model
    will run (no alpha to reuse, something to matte)."""
    mask_rule = item.mask_rule
    what = "trimap" if mask_rule is None else "mask"
    with stage(timer, "decode"):
        image = read_image(item.image_path, apply_exif=True)
        stored, note = (read_trimap if mask_rule is None else read_mask)(item.trimap_path)
    notes = [note] if note else []
    trimap, note = fit_orientation(stored, item.trimap_path, exif_orientation(item.trimap_path),
                                   exif_orientation(item.image_path), image.shape[:2], item.image_path.name, what)
    notes += [note] if note else []
    if mask_rule is not None:
        from mattecli.data.trimap import trimap_from_mask

        trimap = trimap_from_mask(trimap, mask_rule.band, mask_rule.threshold)
    alpha = None
    existing = item.alpha_path
    if existing is not None and not overwrite and existing.exists():
        try:  # finish an interrupted item: its alpha is already written
            alpha = read_gray(existing)
        except InputError:
            alpha = None
        if alpha is not None and alpha.shape != trimap.shape:
            alpha = None
        if alpha is not None and ((alpha[trimap == 0] != 0).any() or (alpha[trimap == 255] != 255).any()):
            # matte copies the known regions into every alpha it writes: this one came from another trimap
            # (another --band or --threshold, an edited trimap or mask), and the outputs still to write
            # beside it (the trimap, a foreground) would not match it
            raise InputError(existing, f"made from another {what} than this run's (its known regions differ), and "
                                       "other outputs of the image are missing: --overwrite redoes the image")
    nothing = _nothing_to_matte(trimap, mask_rule is not None)
    prepared = None
    if prepare is not None and alpha is None and not nothing:
        prepared = prepare(image, trimap)
    return image, trimap, alpha, notes, nothing, prepared


def _nothing_to_matte(trimap: np.ndarray, from_mask: bool) -> str | None:
    from mattecli.data.trimap import nothing_to_matte

    if from_mask:
        return nothing_to_matte(trimap, "mask")
    return nothing_to_matte(trimap, mask_hint="a binary mask? pass masks with --masks")


def _write(item: _Item, image: np.ndarray, alpha: np.ndarray, background, trimap: np.ndarray, device=None,
           timer=None) -> None:
    from mattecli.imageio import rgb_icc_profile, write_png
    from mattecli.inference.outputs import write_outputs

    if any(kind != "alpha" for kind in item.targets) and threading.current_thread() is not threading.main_thread():
        import numba

        # The model already uses every core; a parallel foreground estimation beside it would
        # oversubscribe them (numba's thread count is per calling thread, so this stays local).
        numba.set_num_threads(1)
    colour = any(kind not in ("alpha", "trimap") for kind in item.targets)
    icc = rgb_icc_profile(item.image_path) if colour else None
    write_outputs({k: p for k, p in item.targets.items() if k != "trimap"}, image, alpha, background, device,
                  timer=timer, icc=icc)
    if "trimap" in item.targets:
        write_png(item.targets["trimap"], trimap)


def _failure(item: _Item, err: Exception) -> tuple[str, str]:
    """(path, reason) for an image whose input could not be read or whose model pass failed."""
    if isinstance(err, OSError) and err.filename and err.strerror:
        # an input the system would not read (a stale NFS handle, a disk error, a file removed between
        # the listing and the read): it ended the whole run, at whichever image it was
        return str(err.filename), err.strerror
    # matte's own ValueErrors are sentences for the user ("... was exported for 1920x1088 input only");
    # a library's RuntimeError is named by its type
    return str(item.image_path), str(err) if isinstance(err, ValueError) else f"{type(err).__name__}: {err}"


def _refuse_failed_compile(err: Exception) -> None:
    """--compile where torch.compile cannot build the model (no C++ compiler: Windows without MSVC,
    macOS without Xcode's tools) failed each image in turn, each after minutes of trying, with a
    message of several lines: it is one usage error, at the first image."""
    if (reason := compile_failure(err)) is not None:
        raise UsageError(f"--compile: torch.compile could not build the model ({reason}); run without "
                         "--compile") from None


def _record(report: BatchReport, item: _Item, future: Future) -> Exception | None:
    """The outcome of one item's writes, into `report`; -> the error, if any."""
    try:
        future.result()
        report.done.append(str(item.image_path))
        return None
    except InputError as err:
        report.failed.append((str(err.path), err.reason))
        return err
    except IsADirectoryError as err:  # the rename onto a folder: name the folder, not the temp file
        report.failed.append((str(item.image_path), f"writing outputs: {err.filename2 or err.filename} is a folder"))
        return err
    except (OSError, RuntimeError, ValueError, MemoryError) as err:  # e.g. disk full
        report.failed.append((str(item.image_path), f"writing outputs: {describe(err)}"))
        return err


def _remove_stale_temps(folders) -> None:
    """In every folder this run writes into (subfolders too, with --recursive): young temporary
    files may belong to another shard writing into the same folder, so only old ones are removed."""
    for folder in sorted(folders):
        remove_stale_temps(folder, ".*.png.tmp", older_than=STALE_TEMP_SECONDS)


MAX_NOTES = 5


def report_json(report: BatchReport, out: Path) -> dict:
    """What `--json` writes: the counts, then every file by what became of it, with its reason."""
    def reasons(items: list[tuple[str, str]], key: str = "reason") -> list[dict]:
        return [{"path": path, key: why} for path, why in items]

    return {"out": str(out),
            "counts": {"done": len(report.done), "skipped": len(report.skipped), "failed": len(report.failed),
                       "nothing": len(report.nothing), "not_attempted": len(report.not_attempted)},
            "done": report.done, "skipped": report.skipped, "failed": reasons(report.failed),
            "nothing": reasons(report.nothing), "not_attempted": report.not_attempted,
            "warnings": reasons(report.warnings),
            "tiled": reasons(report.tiled, "how"), "notes": report.notes}


def check_json_out(json_out: Path | None, inputs: list[Path]) -> None:
    """`--json`'s checks before any work: the file can be written, is not one of `inputs` (the
    weights, say) nor named as an image (every input and output of a batch is one: `--json
    masks/a.png` replaced a mask), and standard output is open where it names it."""
    if json_out is not None and not to_stdout(json_out):
        check_report_file(json_out, "--json")
        if json_out in Inputs(inputs):
            raise UsageError(f"--json {json_out}: is an input file; write the report to another file")
    check_stdout(json_out, "--json")


def print_report(report: BatchReport, out: Path, json_out: Path | None = None) -> None:
    """Notes (at most MAX_NOTES, then a count) and every failure on stderr; the summary on stdout,
    or on stderr when `json_out` is standard output (`-`), which then holds the JSON report alone."""

    def say(line: str) -> None:  # file names come from strangers: no control character reaches the terminal
        print(printable(line), file=sys.stderr)

    for note in report.notes[:MAX_NOTES]:
        say(f"matte: note: {note}")
    if len(report.notes) > MAX_NOTES:
        say(f"matte: note: ... and {len(report.notes) - MAX_NOTES} more like these")
    if report.tiled:
        say(f"matte: note: {len(report.tiled)} images exceeded the memory ceiling (or ran out of memory) and ran "
            f"as tiles over the unknown band (e.g. {report.tiled[0][0]}: {report.tiled[0][1]})")
    for path, reason in report.nothing:
        say(f"matte: {path}: {reason}")
    for path, reason in report.warnings:
        say(f"matte: warning: {path}: {reason}")
    for path, reason in report.failed:
        say(f"matte: failed: {path}: {reason}")
    if report.not_attempted:
        say(f"matte: stopped: the disk is full; {len(report.not_attempted)} inputs not attempted (e.g. "
            f"{report.not_attempted[0]}): free space and run the same command again (what was written is kept "
            "and skipped)")
    nothing = f", {len(report.nothing)} with nothing to matte" if report.nothing else ""
    stopped = f", {len(report.not_attempted)} not attempted (disk full)" if report.not_attempted else ""
    print(printable(f"{len(report.done)} written to {out}, {len(report.skipped)} skipped (already present; "
                    f"--overwrite to redo), {len(report.failed)} failed{nothing}{stopped}"),
          file=sys.stderr if to_stdout(json_out) else sys.stdout)
    if json_out is not None:
        write_text(json_out, json.dumps(report_json(report, out), indent=2, ensure_ascii=False) + "\n")
