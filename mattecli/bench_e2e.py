"""`matte bench --e2e`: images/s of `matte infer`'s folder runner, from files on disk to files written.

Inputs are generated files of the requested size (the lemur photo in examples/, CC0, tiled to the
size and mirrored differently per copy so no two files are equal, with its trimap alike), so the
codecs see photographic content: the photos as PNG, or as JPEG (`photos="jpg"`, quality 95, what
cameras write), the trimaps as PNG. The runner is `inference.batch.infer_folder` itself, with the
same pipeline, workers and outputs `matte infer` would use; WARM_IMAGES untimed images first, with
the same workers, warm the model up (cuDNN's algorithm search, torch.compile) and let the process
grow to its working set: until it has, every big array faults in fresh pages (on the 2-core CPU the
first four 4K images prepared in 190-430 ms, the next in 41 ms), which a long folder run amortises
and an 8-image benchmark would not.

Each stage's time is summed over the images: decode, foreground and encode run in the worker
threads, overlapping each other and the model, so the stages add up to more than the wall time
whenever overlap works; model and restore + download run in the calling thread (on CUDA each ends
with a device synchronisation, so its time is its own), and so does upload + prepare, except its
part that the workers do ahead of the model (`Pipeline.prepare_host`: the whole preparation with
numpy, the copy into page-locked memory on CUDA), which is counted in the same stage.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from mattecli.parallel import pool, usable_cores
from mattecli.recipes import shipped

WARM_IMAGES = 4
PHOTO_FORMATS = ("png", "jpg")
STAGES = ("decode", "upload + prepare", "model", "restore + download", "foreground", "encode")
EXAMPLES = shipped("examples")


class StageClock:
    """`clock(stage)`: a context manager adding the stage's wall time to `totals` (thread-safe).

    `sync`, when given, is called at the end of every calling-thread stage (e.g.
    torch.cuda.synchronize), so work queued on a device is charged to the stage that queued it.
    """

    CALLING_THREAD = ("upload + prepare", "model", "restore + download")

    def __init__(self, sync=None):
        self.totals = dict.fromkeys(STAGES, 0.0)
        self.cpu = dict.fromkeys(STAGES, 0.0)  # CPU time of the timing thread (its own work, whatever the load)
        self.counts = dict.fromkeys(STAGES, 0)
        self.sync = sync
        self.lock = threading.Lock()

    def __call__(self, stage: str):
        clock = self

        class _Timed:
            def __enter__(self):
                self.start, self.cpu_start = time.perf_counter(), time.thread_time()

            def __exit__(self, *exc):
                if clock.sync is not None and stage in clock.CALLING_THREAD:
                    clock.sync()
                elapsed = time.perf_counter() - self.start
                cpu = time.thread_time() - self.cpu_start
                with clock.lock:
                    clock.cpu[stage] = clock.cpu.get(stage, 0.0) + cpu
                    clock.totals[stage] = clock.totals.get(stage, 0.0) + elapsed
                    clock.counts[stage] = clock.counts.get(stage, 0) + 1
                return False

        return _Timed()


def make_inputs(folder: Path, count: int, width: int, height: int, photos: str = "png") -> None:
    """`count` image/trimap pairs of width x height in `folder`, named `e2e NNN.{photos}` and
    `e2e NNN_trimap.png`."""
    from PIL import Image

    from mattecli.imageio import read_image, read_trimap

    image = read_image(EXAMPLES / "lemur.png")
    trimap, _ = read_trimap(EXAMPLES / "lemur_trimap.png")
    # tiled around a pixel of the unknown band, so that even a small size holds part of it (an image
    # with nothing to matte would be skipped, and time nothing)
    h, w = trimap.shape
    reps = (-(-height // h) + 2, -(-width // w) + 2)
    ys, xs = np.nonzero(trimap == 128)
    top, left = (ys[len(ys) // 2] - height // 2) % h, (xs[len(xs) // 2] - width // 2) % w
    window = (slice(top, top + height), slice(left, left + width))
    big_image, big_trimap = np.tile(image, reps + (1,))[window], np.tile(trimap, reps)[window]
    folder.mkdir(parents=True, exist_ok=True)

    def write_pair(i: int) -> None:
        flip = (slice(None, None, -1 if i % 4 >= 2 else 1), slice(None, None, -1 if i % 2 else 1))
        photo, trimap = (Image.fromarray(np.ascontiguousarray(a[flip])) for a in (big_image, big_trimap))
        # written as other programs write them (Pillow, libpng: a filter chosen per row), not by
        # matte's own PNG writer, whose files decode faster (docs/benchmarks.md, "PNG compression")
        photo.save(folder / f"e2e {i:03d}.{photos}", **({"quality": 95} if photos == "jpg" else {"compress_level": 1}))
        trimap.save(folder / f"e2e {i:03d}_trimap.png", compress_level=1)

    # PNG encoding releases the GIL: on the 16 cores of a GPU machine the 4K inputs took 20 s one by one
    with pool(min(count, usable_cores())) as executor:
        list(executor.map(write_pair, range(count)))


def run_e2e(weights, sizes, *, backend: str | None = None, device: str = "cpu", half: bool = False,
            compile: bool = False, save=("alpha",), count: int = 8, workers: int | None = None,
            photos: str = "png", json_path=None, log=None) -> dict:
    """Time `infer_folder` over `count` generated images per size; -> the report (also to `json_path`).

    Args:
        weights: any model file `matte infer` takes.
        sizes: `Size`s (width, height).
        backend, device, half, compile: as for `matte infer` (device already resolved).
        save: output kinds, as `matte infer --save`.
        count: timed images per size (WARM_IMAGES more, untimed, warm up first).
        workers: the runner's worker threads (default: `default_workers(device)`, as `matte infer`).
        photos: the photos' file format, "png" or "jpg" (quality 95); trimaps are PNG.
        json_path: where to write the report as JSON, atomically (`-`: standard output).
        log: called with a line of progress text.

    Returns:
        {"weights", "device", "half" (the precision the model ran in: `half`, or an exported
        model's own), "compile", "save", "workers", "rows"}; each row has size,
        images, wall_s, images_per_s, decode_s (the inputs' decoding alone, measured serially
        beforehand), wall_over_decode, and per-stage {"total_s", "ms_per_image"}.
    """
    from mattecli.imageio import read_image, read_trimap
    from mattecli.inference.batch import default_workers, infer_folder
    from mattecli.inference.pipeline import load_pipeline

    log = log or (lambda line: None)
    workers = default_workers(device) if workers is None else workers
    pipeline = load_pipeline(weights, backend, device, max_bytes=None, half=half, compile=compile)
    sync = None
    if device.startswith("cuda"):
        import torch

        sync = lambda: torch.cuda.synchronize(device)  # noqa: E731
    rows = []
    with tempfile.TemporaryDirectory(prefix="matte-e2e-") as tmp:
        for size in sizes:
            width, height = size.width, size.height
            folder, warm = Path(tmp) / f"in-{width}x{height}", Path(tmp) / f"warm-{width}x{height}"
            log(f"writing {count + WARM_IMAGES} inputs of {width}x{height}")
            make_inputs(folder, count, width, height, photos)
            make_inputs(warm, WARM_IMAGES, width, height, photos)
            infer_folder(pipeline, warm, Path(tmp) / "out-warm", save=list(save), progress=False, workers=workers)
            start = time.perf_counter()  # the decoding alone, one image after the other: the target's yardstick
            for i in range(count):
                read_image(folder / f"e2e {i:03d}.{photos}", apply_exif=True)
                read_trimap(folder / f"e2e {i:03d}_trimap.png", apply_exif=True)
            decode_s = time.perf_counter() - start
            log(f"running {count} image{'s' * (count != 1)} of {width}x{height} "
                f"({workers} worker{'s' * (workers != 1)})")
            clock = StageClock(sync)
            pipeline.timer = clock
            start = time.perf_counter()
            report = infer_folder(pipeline, folder, Path(tmp) / f"out-{width}x{height}", save=list(save),
                                  progress=False, workers=workers, timer=clock)
            wall = time.perf_counter() - start
            pipeline.timer = None
            if report.failed:  # a row that says why (the generated file's name says nothing), as model rows do
                rows.append({"size": f"{width}x{height}", "error": f"{len(report.failed)} of {count} images "
                             f"failed: {report.failed[0][1]}"})
                continue
            rows.append({
                "size": f"{width}x{height}", "images": count, "wall_s": float(f"{wall:.6g}"),
                "images_per_s": float(f"{count / wall:.6g}"), "decode_s": float(f"{decode_s:.6g}"),
                "wall_over_decode": round(wall / decode_s, 3),
                "stages": {name: {"total_s": round(clock.totals[name], 4),
                                  "ms_per_image": round(1000 * clock.totals[name] / count, 2),
                                  "cpu_ms_per_image": round(1000 * clock.cpu[name] / count, 2)} for name in STAGES},
            })
    report = {"weights": str(weights), "device": device, "half": pipeline.backend.half, "compile": compile,
              "save": list(save), "workers": workers, "photos": photos,
              "timed": "matte infer's folder runner, files on disk to files written, after "
                       f"{WARM_IMAGES} untimed images; stage times summed over the images (worker stages overlap)",
              "rows": rows}
    if json_path:
        from mattecli.files import write_text

        write_text(json_path, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return report
