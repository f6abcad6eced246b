"""Folder-level inference: pair images with trimaps, run the pipeline, write outputs atomically,
skip what is done, name every failure with its reason and go on with the rest."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from mattecli.errors import InputError, UsageError
from mattecli.imageio import IMAGE_SUFFIXES, list_images, read_image, read_trimap, write_png

TRIMAP_SUFFIX = "_trimap"


@dataclass
class BatchReport:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    notes: list[str] = field(default_factory=list)


def find_pairs(images: Path, trimaps: Path | None) -> tuple[list[tuple[Path, Path]], list[tuple[str, str]]]:
    """(image, trimap) pairs by stem, and (path, reason) for images that have no usable trimap.

    Without a trimap folder, trimaps sit beside the images as `{stem}_trimap.{ext}`. With one,
    `{stem}.{ext}` or `{stem}_trimap.{ext}` in that folder.
    """
    if not images.is_dir():
        raise UsageError(f"--images {images}: not a folder")
    if trimaps is not None and not trimaps.is_dir():
        raise UsageError(f"--trimaps {trimaps}: not a folder")
    files = list_images(images)
    tri_files = list_images(trimaps) if trimaps is not None else [p for p in files if p.stem.endswith(TRIMAP_SUFFIX)]
    if trimaps is None:
        files = [p for p in files if not p.stem.endswith(TRIMAP_SUFFIX)]
    by_stem: dict[str, list[Path]] = {}
    for t in tri_files:
        by_stem.setdefault(t.stem, []).append(t)
    pairs, problems, seen = [], [], {}
    for img in files:
        if img.stem in seen:
            problems.append((str(img), f"another image has the same name stem ({seen[img.stem].name}); "
                                       "outputs are named by stem"))
            continue
        seen[img.stem] = img
        candidates = by_stem.get(img.stem if trimaps is not None else "", []) + by_stem.get(img.stem + TRIMAP_SUFFIX, [])
        candidates = [c for c in candidates if c != img]
        if not candidates:
            where = trimaps if trimaps is not None else images
            problems.append((str(img), f"no trimap found ({img.stem}.* or {img.stem}{TRIMAP_SUFFIX}.* in {where})"))
            continue
        pairs.append((img, candidates[0]))
    return pairs, problems


def infer_folder(pipeline, images: Path, out: Path, trimaps: Path | None = None, overwrite: bool = False,
                 progress: bool = True) -> BatchReport:
    """Write `out/{stem}.png` (8-bit alpha) for every image with a trimap."""
    pairs, problems = find_pairs(Path(images), Path(trimaps) if trimaps else None)
    report = BatchReport(failed=list(problems))
    inputs = {p.resolve() for pair in pairs for p in pair}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with _progress(progress, len(pairs)) as advance:
        for image_path, trimap_path in pairs:
            target = out / f"{image_path.stem}.png"
            try:
                if target.resolve() in inputs:
                    raise InputError(image_path, f"its output {target} would overwrite an input; choose another --out")
                if target.exists() and not overwrite:
                    report.skipped.append(str(image_path))
                    continue
                image = read_image(image_path)
                trimap, note = read_trimap(trimap_path)
                if note:
                    report.notes.append(note)
                if image.shape[:2] != trimap.shape:
                    raise InputError(trimap_path, f"trimap is {trimap.shape[1]}x{trimap.shape[0]} but image "
                                                  f"{image_path.name} is {image.shape[1]}x{image.shape[0]}")
                write_png(target, pipeline(image, trimap))
                report.done.append(str(image_path))
            except InputError as err:
                report.failed.append((str(err.path), err.reason))
            except (RuntimeError, ValueError, MemoryError) as err:  # e.g. out of memory on a huge image
                report.failed.append((str(image_path), f"{type(err).__name__}: {err}"))
            finally:
                advance()
    return report


class _progress:
    """A rich progress bar with ETA (or nothing), as a context manager giving `advance()`."""

    def __init__(self, enabled: bool, total: int):
        self.enabled, self.total, self.bar = enabled and total > 0, total, None

    def __enter__(self):
        if not self.enabled:
            return lambda: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                            transient=False, console=None)
        self.bar.start()
        task = self.bar.add_task("infer", total=self.total)
        return lambda: self.bar.advance(task)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()
        return False


def print_report(report: BatchReport, out: Path) -> None:
    for note in report.notes:
        print(f"matte: note: {note}", file=sys.stderr)
    for path, reason in report.failed:
        print(f"matte: failed: {path}: {reason}", file=sys.stderr)
    print(f"{len(report.done)} written to {out}, {len(report.skipped)} skipped (already present; "
          f"--overwrite to redo), {len(report.failed)} failed")
