"""Evaluating folders of predictions (or a model on a prepared split) with the benchmark metrics.

The plain functions here are what `matte eval` calls: `match_folders` / `match_manifest` pair the
files by stem, `score` reads and checks one image and computes its metrics (it runs in worker
processes), `evaluate` runs them (and a model, if given) in parallel with a progress bar, and
`summary` / `write_json` / `write_csv` produce the outputs CLI.md specifies.
"""

from __future__ import annotations

import csv
import heapq
import io
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mattecli.errors import InputError, UsageError
from mattecli.files import atomic_write
from mattecli.imageio import list_images, read_gray
from mattecli.metrics import METRICS

TRIMAP_VALUES = (0, 128, 255)


@dataclass(frozen=True)
class Item:
    """One image to evaluate: where its prediction, ground truth and trimap are."""

    name: str
    gt: Path
    trimap: Path
    pred: Path | None = None  # None when a model predicts it
    image: Path | None = None  # the composite, for reports and for running a model


@dataclass
class Result:
    """The outcome for one image: metrics, or the reason it could not be evaluated."""

    name: str
    metrics: dict[str, float] | None = None
    error: str | None = None
    warnings: list[str] = field(default_factory=list)


# --- pairing -----------------------------------------------------------------------------------


def _by_stem(folder: Path, what: str) -> tuple[dict[str, Path], list[Result]]:
    if not folder.is_dir():
        raise UsageError(f"{folder}: no such folder ({what})")
    found: dict[str, list[Path]] = {}
    for path in list_images(folder):
        found.setdefault(path.stem, []).append(path)
    unique = {stem: paths[0] for stem, paths in found.items() if len(paths) == 1}
    clashes = [Result(stem, error=f"several {what} files with this stem: "
                      + ", ".join(p.name for p in paths))
               for stem, paths in found.items() if len(paths) > 1]
    return unique, clashes


def match_folders(pred: Path, gt: Path, trimap: Path,
                  images: Path | None = None) -> tuple[list[Item], list[Result]]:
    """Pair files of the three folders by stem. Returns the complete items and a failure for every
    stem that lacks a counterpart (or is ambiguous), naming what is missing."""
    folders = {"prediction": Path(pred), "ground truth": Path(gt), "trimap": Path(trimap)}
    maps, failures = {}, []
    for what, folder in folders.items():
        maps[what], clashes = _by_stem(folder, what)
        failures += clashes
    image_map = _by_stem(Path(images), "image")[0] if images else {}
    failed = {r.name for r in failures}
    items = []
    for stem in sorted(set().union(*maps.values()) - failed):
        missing = [f"no {what} in {folders[what]}" for what in folders if stem not in maps[what]]
        if missing:
            failures.append(Result(stem, error="; ".join(missing)))
            continue
        items.append(Item(stem, gt=maps["ground truth"][stem], trimap=maps["trimap"][stem],
                          pred=maps["prediction"][stem], image=image_map.get(stem)))
    return items, sorted(failures, key=lambda r: r.name)


def match_manifest(data: Path, pred: Path | None = None) -> tuple[list[Item], list[Result]]:
    """Items of a prepared split (its manifest gives image, alpha and trimap); with `pred`, each
    sample's prediction is `pred/{name}.*`."""
    from mattecli.data.manifest import read_manifest

    samples = read_manifest(data)
    if not samples:
        raise UsageError(f"{data}: the manifest lists no samples")
    preds, failures = _by_stem(Path(pred), "prediction") if pred is not None else ({}, [])
    items = []
    for s in samples:
        missing = [c for c in ("alpha", "trimap") if getattr(s, c) is None]
        if pred is None and s.image is None:
            missing.append("image")
        if pred is not None and s.name not in preds:
            failures.append(Result(s.name, error=f"no prediction in {pred}"))
            continue
        if missing:
            failures.append(Result(s.name, error=f"the manifest gives no {', '.join(missing)}"))
            continue
        items.append(Item(s.name, gt=s.alpha, trimap=s.trimap, pred=preds.get(s.name), image=s.image))
    names = {s.name for s in samples}
    failures += [Result(stem, error="prediction without a sample in the manifest")
                 for stem in sorted(set(preds) - names)]
    return items, failures


# --- one image ---------------------------------------------------------------------------------


def _size(a: np.ndarray) -> str:
    return f"{a.shape[1]}x{a.shape[0]}"


def trimap_warning(trimap: np.ndarray, path) -> str | None:
    """A warning naming the file when a trimap holds values other than 0/128/255 (a 127, an
    anti-aliased edge): only exactly 128 counts as unknown, so such a trimap changes the region."""
    odd = int(np.count_nonzero(~np.isin(trimap, TRIMAP_VALUES)))
    if not odd:
        return None
    values = np.unique(trimap[~np.isin(trimap, TRIMAP_VALUES)])
    shown = ", ".join(str(v) for v in values[:6]) + (", ..." if len(values) > 6 else "")
    return (f"{path}: trimap has {odd} pixel(s) with values other than 0/128/255 ({shown}); "
            f"only exactly 128 counts as unknown")


def score(name: str, pred, gt: Path, trimap) -> Result:
    """Read (where given paths), check and evaluate one image; never raises for a bad input file.

    `pred` and `trimap` are paths or uint8 arrays (a model's output, an already read trimap).
    """
    from mattecli import metrics

    result = Result(name)
    try:
        p = read_gray(pred) if isinstance(pred, (str, Path)) else pred
        g = read_gray(gt)  # the first channel of a 3-channel ground truth
        t = read_gray(trimap) if isinstance(trimap, (str, Path)) else trimap
    except InputError as err:
        result.error = str(err)
        return result
    if not p.shape == g.shape == t.shape:
        result.error = (f"sizes differ: prediction {_size(p)}, ground truth {_size(g)}, "
                        f"trimap {_size(t)}")
        return result
    warning = trimap_warning(t, trimap if isinstance(trimap, (str, Path)) else f"{name} trimap")
    if warning:
        result.warnings.append(warning)
    result.metrics = metrics.evaluate(p, g, t)
    return result


def _init_worker() -> None:
    import cv2

    cv2.setNumThreads(1)  # one image per process; the processes use the cores


# --- running many ------------------------------------------------------------------------------


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


class _Runner:
    """Runs `score` inline (workers=1) or in a process pool, with a bounded number in flight."""

    def __init__(self, workers: int):
        self.workers = workers
        self.pool = None
        if workers > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # spawn: the parent may hold torch/OpenMP threads, which fork does not survive well
            self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=_init_worker)
        self.pending = set()

    def submit(self, *args) -> list[Result]:
        """Queue one job; returns the results that completed meanwhile (inline: this one)."""
        if self.pool is None:
            return [score(*args)]
        self.pending.add(self.pool.submit(score, *args))
        if len(self.pending) < 2 * self.workers:
            return []
        return self._collect(wait_all=False)

    def _collect(self, wait_all: bool) -> list[Result]:
        from concurrent.futures import FIRST_COMPLETED, wait

        results = []
        while self.pending:
            done, self.pending = wait(self.pending, return_when=FIRST_COMPLETED)
            results += [future.result() for future in done]
            if not wait_all:
                break
        return results

    def finish(self) -> list[Result]:
        """Wait for every queued job."""
        if self.pool is None:
            return []
        results = self._collect(wait_all=True)
        self.pool.shutdown()
        return results

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)


def _progress(total: int, description: str, console=None):
    from mattecli.progress import progress_bar

    progress = progress_bar(console=console)
    return progress, progress.add_task(description, total=total)


def _report_line(console, result: Result) -> None:
    for warning in result.warnings:
        console.print(f"matte eval: warning: {warning}", markup=False, highlight=False, soft_wrap=True)
    if result.error:
        console.print(f"matte eval: {result.name}: {result.error}", markup=False, highlight=False, soft_wrap=True)


def evaluate(items: list[Item], workers: int = 1, pipeline=None, save_pred: Path | None = None,
             worst: "WorstN | None" = None, console=None,
             quiet: bool = False) -> tuple[list[Result], dict[str, np.ndarray]]:
    """Evaluate every item, `workers` processes computing metrics, with a progress bar.

    Without `pipeline`, the predictions are the items' files. With one, this process runs
    `pipeline.predict` on each item's image and trimap while the workers score the previous
    predictions; `save_pred` then receives them as `{name}.png` (written atomically), and `worst`
    selects which predictions are kept in memory and returned (for the report). Bad inputs become
    results with an error; warnings and errors are printed as they come.

    `quiet` is for callers inside a loop of their own (training's validation): everything runs in
    this process (`workers` is ignored), with no progress bar and nothing printed; warnings and
    errors stay in the results.
    """
    from contextlib import nullcontext

    from mattecli.imageio import read_image, write_png

    results: list[Result] = []
    in_flight: dict[str, np.ndarray] = {}
    kept: dict[str, np.ndarray] = {}
    runner = _Runner(1 if quiet else min(workers, max(1, len(items))))
    progress = task = None
    if not quiet:
        from rich.console import Console

        progress, task = _progress(len(items), "predicting + evaluating" if pipeline else "evaluating",
                                   console or Console(stderr=True))

    def take(done: Iterable[Result]) -> None:
        for result in done:
            if progress is not None:
                _report_line(progress.console, result)
            results.append(result)
            pred = in_flight.pop(result.name, None)
            if pred is not None and worst is not None and worst(result):
                kept[result.name] = pred
                for name in set(kept) - set(worst.names()):
                    del kept[name]
            if progress is not None:
                progress.advance(task)

    try:
        with progress or nullcontext():
            for item in items:
                if pipeline is None:
                    take(runner.submit(item.name, item.pred, item.gt, item.trimap))
                    continue
                try:
                    image = read_image(item.image)
                    trimap = read_gray(item.trimap)
                except InputError as err:
                    take([Result(item.name, error=str(err))])
                    continue
                if image.shape[:2] != trimap.shape:
                    take([Result(item.name, error=f"sizes differ: image {_size(image)}, trimap {_size(trimap)}")])
                    continue
                pred = pipeline.predict_whole(image, trimap)
                if save_pred is not None:
                    write_png(Path(save_pred) / f"{item.name}.png", pred)
                if worst is not None:
                    in_flight[item.name] = pred
                take(runner.submit(item.name, pred, item.gt, item.trimap))
            take(runner.finish())
    finally:
        runner.close()
    return sorted(results, key=lambda r: r.name), kept


class WorstN:
    """Keeps the names of the N results with the largest SAD seen so far."""

    def __init__(self, n: int):
        self.n = n
        self.heap: list[tuple[float, str]] = []

    def __call__(self, result: Result) -> bool:
        """Offer a result; true when it is (for now) among the N worst."""
        if result.metrics is None or self.n <= 0:
            return False
        entry = (result.metrics["sad"], result.name)
        if len(self.heap) < self.n:
            heapq.heappush(self.heap, entry)
            return True
        if entry > self.heap[0]:
            heapq.heapreplace(self.heap, entry)
            return True
        return False

    def names(self) -> list[str]:
        return [name for _, name in sorted(self.heap, reverse=True)]


# --- outputs -----------------------------------------------------------------------------------


def summary(results: list[Result]) -> dict:
    """The JSON layout of CLI.md: count, mean (papers' units) and per-image metrics; images that
    could not be evaluated are listed under "failed" with the reason."""
    good = [r for r in results if r.metrics is not None]
    mean = {m: (float(np.mean([r.metrics[m] for r in good])) if good else None) for m in METRICS}
    out = {"count": len(good), "mean": mean,
           "images": [{"name": r.name, **{m: r.metrics[m] for m in METRICS}} for r in good]}
    failed = [{"name": r.name, "reason": r.error} for r in results if r.error]
    if failed:
        out["failed"] = failed
    return out


def write_json(path: Path, data: dict) -> Path:
    text = json.dumps(data, indent=1) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def write_csv(path: Path, results: list[Result]) -> Path:
    """One row per evaluated image: name, sad, mse, grad, conn (papers' units)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(("name",) + METRICS)
    for r in results:
        if r.metrics is not None:
            writer.writerow([r.name] + [repr(r.metrics[m]) for m in METRICS])
    text = buf.getvalue()
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def print_table(data: dict, console=None) -> None:
    """The mean metrics in the papers' units, as a rich table."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title=f"Deep Image Matting metrics, mean over {data['count']} image(s)")
    for column in ("SAD", "MSE", "Grad", "Conn"):
        table.add_column(column, justify="right")
    mean = data["mean"]
    if data["count"]:
        table.add_row(f"{mean['sad']:.2f}", f"{mean['mse']:.4f}", f"{mean['grad']:.2f}", f"{mean['conn']:.2f}")
    else:
        table.add_row("-", "-", "-", "-")
    console.print(table)
    console.print("units: SAD/1000, MSE as is, Grad/1000, Conn/1000 (as in the papers)", style="dim")

