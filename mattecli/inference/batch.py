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
import sys
import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mattecli.errors import InputError, UsageError
from mattecli.imageio import (EXIF_ORIENTATIONS, exif_orientation, index_by_stem, list_images, read_gray, read_image,
                              read_trimap, remove_stale_temps)
from mattecli.inference.pipeline import REDONE_FP32, stage
from mattecli.parallel import executor
from mattecli.progress import track

TRIMAP_SUFFIX = "_trimap"
STALE_TEMP_SECONDS = 3600  # a temporary output this old belongs to no live writer


@dataclass
class BatchReport:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    notes: list[str] = field(default_factory=list)
    tiled: list[tuple[str, str]] = field(default_factory=list)  # (path, how), images run as tiles


def parse_shard(text):  # deprecated: moved to mattecli.cli.parsing; remove after the merge
    from mattecli.cli.parsing import parse_shard as parse

    return parse(text)


def find_pairs(images: Path, trimaps: Path | None,
               shard: tuple[int, int] | None = None) -> tuple[list[tuple[Path, Path]], list[tuple[str, str]]]:
    """(image, trimap) pairs by stem, and (path, reason) for images that have no usable trimap.

    Without a trimap folder, trimaps sit beside the images as `{stem}_trimap.{ext}`. With one,
    `{stem}.{ext}` or `{stem}_trimap.{ext}` in that folder. With `shard=(K, N)` only the images
    `sorted_images[K::N]` are considered (a strided slice of the list sorted by file name: every
    image, and every failure, belongs to exactly one shard, and shard sizes differ by at most one).
    """
    if not images.is_dir():
        raise UsageError(f"--images {images}: not a folder")
    if trimaps is not None and not trimaps.is_dir():
        raise UsageError(f"--trimaps {trimaps}: not a folder")
    files = list_images(images)
    tri_files = list_images(trimaps) if trimaps is not None else [p for p in files if p.stem.endswith(TRIMAP_SUFFIX)]
    if trimaps is None:
        files = [p for p in files if not p.stem.endswith(TRIMAP_SUFFIX)]
    by_stem = index_by_stem(tri_files)
    pairs, problems, seen = [], [], {}
    for img in files:  # duplicates are found over the whole list, so shards agree on them
        if img.stem in seen:
            problems.append((img, f"another image has the same name stem ({seen[img.stem].name}); "
                                  "outputs are named by stem"))
            continue
        seen[img.stem] = img
        candidates = by_stem.get(img.stem if trimaps is not None else "", []) + by_stem.get(img.stem + TRIMAP_SUFFIX, [])
        candidates = [c for c in candidates if c != img]
        if not candidates:
            where = trimaps if trimaps is not None else images
            problems.append((img, f"no trimap found ({img.stem}.* or {img.stem}{TRIMAP_SUFFIX}.* in {where})"))
            continue
        pairs.append((img, candidates[0]))
    if shard is not None:
        mine = set(files[shard[0]::shard[1]])
        pairs = [p for p in pairs if p[0] in mine]
        problems = [p for p in problems if p[0] in mine]
    return pairs, [(str(path), reason) for path, reason in problems]


@dataclass
class _Item:
    image_path: Path
    trimap_path: Path
    targets: dict  # kind -> Path, the outputs to write
    alpha_path: Path | None = None  # an alpha already written is reused from here (unless overwrite)


def default_workers(device: str) -> int:
    """`--workers` when not given (README "Throughput").

    CUDA: every core the process may use (at least 2): the model and its preparing and restoring
    are on the GPU, so decoding, foreground estimation and encoding are the host's whole work, and
    they scale with threads. CPU: 0, in turn with the model, which already uses every core; a
    model that leaves cores idle (an exported graph on a small model) gains from `--workers 2`.
    """
    import os

    if not str(device).startswith("cuda"):
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(2, cores)


def infer_folder(pipeline, images: Path, out: Path, trimaps: Path | None = None, overwrite: bool = False,
                 progress: bool = True, save=("alpha",), background=None, shard: tuple[int, int] | None = None,
                 workers: int = 2, prefetch: int | None = None, timer=None) -> BatchReport:
    """Write the requested outputs (`save`, see `outputs.OUTPUT_KINDS`) for every image with a trimap.

    An image is done when all its requested outputs exist and are current (`outputs.is_current`: a
    composite made with another background is not); it is skipped then, unless `overwrite`. Otherwise
    only its missing or stale outputs are written, from its existing alpha when there is one (the
    model does not run again), e.g. after changing `--background`.

    Args:
        pipeline: a `Pipeline` (or anything with `run(image, trimap) -> (alpha, how)`).
        images: folder of images.
        out: output folder (created).
        trimaps: folder of trimaps, or None for `{stem}_trimap.*` beside the images.
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
            the workers) and each pipeline stage (`matte bench --e2e`); None: not timed.

    Returns:
        The report: done, skipped, failed with reasons, notes.
    """
    from mattecli.inference.outputs import is_current, output_paths

    pairs, problems = find_pairs(Path(images), Path(trimaps) if trimaps else None, shard)
    report = BatchReport(failed=list(problems))
    inputs = {p.resolve() for pair in pairs for p in pair}
    if background is not None and getattr(background, "path", None) is not None:
        inputs.add(Path(background.path).resolve())
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(out, save)
    todo = []
    for image_path, trimap_path in pairs:
        targets = output_paths(out, image_path.stem, save)
        clash = [t for t in targets.values() if t.resolve() in inputs]
        if clash:
            report.failed.append((str(image_path), f"its output {clash[0]} would overwrite an input; "
                                                   "choose another --out"))
        else:
            stale = {kind: t for kind, t in targets.items() if overwrite or not is_current(kind, t, background)}
            if stale:
                todo.append(_Item(image_path, trimap_path, stale, targets.get("alpha")))
            else:
                report.skipped.append(str(image_path))

    device = getattr(getattr(pipeline, "backend", None), "device", None)  # the foreground runs there too
    prefetch = prefetch or max(2, workers)
    # Threads, not processes: decoding, encoding, numba and torch release the GIL in their heavy
    # loops, and a process would pickle every 4K image across (see README "Throughput").
    pool = executor(workers, name="matte-io")
    load = functools.partial(_load, timer=timer) if timer is not None else _load
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
                while len(writes) > limit:
                    item, future = writes.popleft()
                    _record(report, item, future)
                    advance()

            fill_reads()
            while reads:
                item, future = reads.popleft()
                fill_reads()  # keep decoding ahead while the model runs
                try:
                    image, trimap, alpha, notes = future.result()
                    report.notes.extend(notes)
                    if alpha is None:
                        alpha, how = pipeline.run(image, trimap)
                        if item.alpha_path is not None:  # a new alpha replaces an unusable one on disk
                            item.targets.setdefault("alpha", item.alpha_path)
                        if how.startswith("tiled"):
                            report.tiled.append((str(item.image_path), how.split(";")[0]))
                        if REDONE_FP32 in how:
                            report.notes.append(f"{item.image_path}: {REDONE_FP32}")
                except InputError as err:
                    report.failed.append((str(err.path), err.reason))
                    advance()
                    continue
                except (RuntimeError, ValueError, MemoryError) as err:  # e.g. out of memory on a huge image
                    report.failed.append((str(item.image_path), f"{type(err).__name__}: {err}"))
                    advance()
                    continue
                writes.append((item, pool.submit(_write, item, image, alpha, background, device, timer)))
                drain_writes(prefetch)
            drain_writes(0)
    finally:
        # On Ctrl-C or a crash: decoding ahead is dropped, but results the model has already paid
        # for are still written (at most `prefetch`; each write is atomic, a second Ctrl-C stops them).
        for _, future in reads:
            future.cancel()
        pool.shutdown(wait=True)
    return report


def _load(item: _Item, overwrite: bool, timer=None):
    """Decode one item: (image, trimap, existing alpha or None, notes). Runs in a worker thread."""
    with stage(timer, "decode"):
        image = read_image(item.image_path, apply_exif=True)
        trimap, note = read_trimap(item.trimap_path, apply_exif=True)
    o_image, o_trimap = exif_orientation(item.image_path), exif_orientation(item.trimap_path)
    if o_image != o_trimap:
        raise InputError(item.trimap_path, f"EXIF orientation disagrees with the image's ({item.image_path.name}: "
                                           f"{EXIF_ORIENTATIONS[o_image]}; trimap: {EXIF_ORIENTATIONS[o_trimap]}), so "
                                           "it is unclear which way the trimap was drawn; save both with the same "
                                           "orientation")
    if image.shape[:2] != trimap.shape:
        raise InputError(item.trimap_path, f"trimap is {trimap.shape[1]}x{trimap.shape[0]} but image "
                                           f"{item.image_path.name} is {image.shape[1]}x{image.shape[0]}")
    alpha = None
    existing = item.alpha_path
    if existing is not None and not overwrite and existing.exists():
        try:  # finish an interrupted item: its alpha is already written
            alpha = read_gray(existing)
        except InputError:
            alpha = None
        if alpha is not None and alpha.shape != trimap.shape:
            alpha = None
    return image, trimap, alpha, [note] if note else []


def _write(item: _Item, image: np.ndarray, alpha: np.ndarray, background, device=None, timer=None) -> None:
    from mattecli.inference.outputs import write_outputs

    if any(kind != "alpha" for kind in item.targets) and threading.current_thread() is not threading.main_thread():
        import numba

        # The model already uses every core; a parallel foreground estimation beside it would
        # oversubscribe them (numba's thread count is per calling thread, so this stays local).
        numba.set_num_threads(1)
    write_outputs(item.targets, image, alpha, background, device, timer=timer)


def _record(report: BatchReport, item: _Item, future: Future) -> None:
    try:
        future.result()
        report.done.append(str(item.image_path))
    except InputError as err:
        report.failed.append((str(err.path), err.reason))
    except (OSError, RuntimeError, ValueError, MemoryError) as err:  # e.g. disk full
        report.failed.append((str(item.image_path), f"writing outputs: {type(err).__name__}: {err}"))


def _remove_stale_temps(out: Path, save) -> None:
    """Young temporary files may belong to another shard writing into the same folder, so only
    old ones are removed."""
    for folder in [out] + [out / kind for kind in save if kind != "alpha"]:
        remove_stale_temps(folder, ".*.png.tmp", older_than=STALE_TEMP_SECONDS)


MAX_NOTES = 5


def print_report(report: BatchReport, out: Path) -> None:
    """Notes (at most MAX_NOTES, then a count) and every failure on stderr; the summary on stdout."""
    for note in report.notes[:MAX_NOTES]:
        print(f"matte: note: {note}", file=sys.stderr)
    if len(report.notes) > MAX_NOTES:
        print(f"matte: note: ... and {len(report.notes) - MAX_NOTES} more like these", file=sys.stderr)
    if report.tiled:
        print(f"matte: note: {len(report.tiled)} images exceeded the memory ceiling and ran as tiles over the "
              f"unknown band (e.g. {report.tiled[0][0]}: {report.tiled[0][1]})", file=sys.stderr)
    for path, reason in report.failed:
        print(f"matte: failed: {path}: {reason}", file=sys.stderr)
    print(f"{len(report.done)} written to {out}, {len(report.skipped)} skipped (already present; "
          f"--overwrite to redo), {len(report.failed)} failed")
