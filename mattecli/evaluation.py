"""Evaluating folders of predictions (or a model on a prepared split) with the benchmark metrics.

The plain functions here are what `matte eval` calls: `match_folders` / `match_manifest` pair the
files by stem, `score` reads and checks one image and computes its metrics (it runs in worker
processes), `evaluate_files` scores prediction files and `evaluate_model` runs a model and scores
its predictions, both in parallel with a progress bar, and `summary` / `write_json` / `write_csv`
produce the outputs docs/commands/eval.md describes.
"""

from __future__ import annotations

import csv
import heapq
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mattecli.errors import InputError, UsageError, raise_if_stop
from mattecli.files import write_text
from mattecli.imageio import index_by_stem, list_images, missing_reason, read_alpha, read_gray, read_ground_truth
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
        raise UsageError(f"{folder}: {missing_reason(folder)} ({what})")
    found = index_by_stem(list_images(folder))
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
    ambiguous = {r.name for r in failures}  # named once, as match_folders names them (it said "no prediction" too)
    items = []
    for s in samples:
        if s.name in ambiguous:
            continue
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
    anti-aliased edge): only exactly 128 counts as unknown, so such a trimap changes the region;
    and when it has no unknown pixel at all (a binary mask given as a trimap): every metric is 0
    there, which would lower the mean without a word."""
    none = "" if (trimap == 128).any() else "no unknown pixel (128), so every metric is 0 for this image"
    odd = int(np.count_nonzero(~np.isin(trimap, TRIMAP_VALUES)))
    if not odd:
        return f"{path}: trimap has {none}" if none else None
    values = np.unique(trimap[~np.isin(trimap, TRIMAP_VALUES)])
    shown = ", ".join(str(v) for v in values[:6]) + (", ..." if len(values) > 6 else "")
    return (f"{path}: trimap has {odd} pixel(s) with values other than 0/128/255 ({shown}); "
            f"only exactly 128 counts as unknown" + (f": it has {none}" if none else ""))


def score(name: str, pred, gt: Path, trimap) -> Result:
    """Read (where given paths), check and evaluate one image; never raises for a bad input file.

    `pred` and `trimap` are paths or uint8 arrays (a model's output, an already read trimap).
    """
    from mattecli import metrics

    result = Result(name)
    try:
        p = read_alpha(pred) if isinstance(pred, (str, Path)) else pred
        g = read_ground_truth(gt)  # the first channel of a 3-channel one, the alpha of a cut-out
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
    from mattecli.parallel import usable_cores

    return usable_cores()


def evaluate_files(items: list[Item], workers: int = 1, console=None) -> list[Result]:
    """Score every item's prediction file, `workers` processes computing metrics (1: in this process).

    Bad inputs become results with an error. With a rich `console`, a progress bar and each
    warning and error as it comes; without one, nothing is shown (they stay in the results).

    Returns:
        one result per item, sorted by name.
    """
    results, _ = _score_all(((item.name, item.pred, item.gt, item.trimap) for item in items), len(items), workers,
                            "evaluating", console)
    return results


def evaluate_model(items: list[Item], pipeline, workers: int = 1, save_pred: Path | None = None,
                   worst: "WorstN | None" = None, console=None) -> tuple[list[Result], dict[str, np.ndarray]]:
    """Run `pipeline.predict_whole` on every item's image and trimap (in this process) and score the
    predictions, `workers` processes computing the metrics of earlier ones meanwhile (1: in turn).

    Args:
        items: images with their ground truth and trimap (`match_manifest`).
        pipeline: the model (`inference.pipeline.Pipeline`).
        workers: processes computing metrics.
        save_pred: a folder receiving the predictions as `{name}.png` (written atomically).
        worst: selects which predictions are kept in memory and returned (for the report).
        console: a rich console for a progress bar, warnings and errors; None shows nothing.

    Returns:
        the results sorted by name, and the kept predictions by name.
    """
    from mattecli.imageio import read_image, write_png

    def jobs():  # runs in this process, lazily, while the pool scores the predictions before
        for item in items:
            try:
                image, trimap = read_image(item.image), read_gray(item.trimap)
            except InputError as err:
                yield item.name, None, None, None, str(err)
                continue
            if image.shape[:2] != trimap.shape:
                yield item.name, None, None, None, f"sizes differ: image {_size(image)}, trimap {_size(trimap)}"
                continue
            try:
                pred = pipeline.predict_whole(image, trimap)
            except ValueError as err:  # a model output that is not finite (a diverged run): named, not a traceback
                yield item.name, None, None, None, str(err)
                continue
            except (RuntimeError, MemoryError) as err:  # out of memory on one large test image, as infer names it
                raise_if_stop(err)
                yield item.name, None, None, None, f"{type(err).__name__}: {err}"
                continue
            if save_pred is not None:
                write_png(Path(save_pred) / f"{item.name}.png", pred)
            yield item.name, pred, item.gt, item.trimap

    return _score_all(jobs(), len(items), workers, "predicting + evaluating", console, worst)


def _score_job(name: str, pred, gt, trimap, error: str | None = None) -> Result:
    """`score`, or pass through a failure found before scoring (e.g. an unreadable image)."""
    return Result(name, error=error) if error is not None else score(name, pred, gt, trimap)


def _score_all(jobs, total: int, workers: int, description: str, console,
               worst: "WorstN | None" = None) -> tuple[list[Result], dict[str, np.ndarray]]:
    """`_score_job` every job on a pool, showing progress; keeps the predictions `worst` selects."""
    from mattecli.parallel import map_bounded, pool
    from mattecli.progress import track

    results: list[Result] = []
    kept: dict[str, np.ndarray] = {}
    in_flight: dict[str, np.ndarray] = {}
    workers = min(workers, max(1, total))

    def submitted():  # remembers the predictions `worst` may keep until their metrics come back
        for job in jobs:
            if worst is not None and isinstance(job[1], np.ndarray):
                in_flight[job[0]] = job[1]
            yield job

    def take(result: Result) -> None:
        for warning in result.warnings:
            bar.print(f"matte eval: warning: {warning}")
        if result.error:
            bar.print(f"matte eval: {result.name}: {result.error}")
        results.append(result)
        pred = in_flight.pop(result.name, None)
        if pred is not None and worst is not None and worst(result):
            kept[result.name] = pred
            for name in set(kept) - set(worst.names()):
                del kept[name]
        bar.advance()

    with track(total, description, enabled=console is not None, console=console) as bar, \
            pool(workers if workers > 1 else 0, processes=True, initializer=_init_worker) as executor:
        for result in map_bounded(executor, _score_job, submitted(), limit=2 * workers if workers > 1 else 1):
            take(result)
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
    """The JSON layout docs/commands/eval.md describes: count, mean (papers' units) and per-image
    metrics; images that could not be evaluated are listed under "failed" with the reason."""
    good = [r for r in results if r.metrics is not None]
    mean = {m: (float(np.mean([r.metrics[m] for r in good])) if good else None) for m in METRICS}
    out = {"count": len(good), "mean": mean,
           "images": [{"name": r.name, **{m: r.metrics[m] for m in METRICS}} for r in good]}
    failed = [{"name": r.name, "reason": r.error} for r in results if r.error]
    if failed:
        out["failed"] = failed
    return out


def write_json(path: Path, data: dict) -> None:
    """Into `path` atomically, or to standard output for `-` (see `files.to_stdout`)."""
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_csv(path: Path, results: list[Result]) -> None:
    """One row per evaluated image: name, sad, mse, grad, conn (papers' units)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(("name",) + METRICS)
    for r in results:
        if r.metrics is not None:
            writer.writerow([r.name] + [repr(r.metrics[m]) for m in METRICS])
    write_text(path, buf.getvalue())


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

