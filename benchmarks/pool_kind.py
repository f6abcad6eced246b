"""Threads or processes for `matte infer --workers N`: the host work, measured both ways.

`matte infer` decodes each image and trimap in a worker, hands the arrays to the thread that runs the
model, and hands each alpha back to a worker to encode and write. This runs that host work alone
(no model) on --count generated photos of --size (`bench_e2e.make_inputs`), in a pool of --workers
threads and in a pool of as many spawned processes, alternating --rounds times:

- `decode`: read_image + read_trimap in the pool, every array delivered to the main thread (a
  process pickles them through a pipe, as ProcessPoolExecutor does);
- `encode`: each alpha sent to the pool, written as a PNG there.

Prints images/s of each stage for both kinds, and the ratio; `--json FILE` keeps the figures.

    python benchmarks/pool_kind.py --size 3840x2160 --count 12 --workers 2 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import wait
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mattecli.bench_e2e import make_inputs  # noqa: E402
from mattecli.cli.parsing import parse_sizes  # noqa: E402
from mattecli.imageio import read_image, read_trimap, write_png  # noqa: E402
from mattecli.parallel import executor  # noqa: E402


def decode(folder: str, i: int):
    image = read_image(Path(folder) / f"e2e {i:03d}.png", apply_exif=True)
    trimap, _ = read_trimap(Path(folder) / f"e2e {i:03d}_trimap.png", apply_exif=True)
    return image, trimap


def encode(folder: str, i: int, alpha) -> None:
    write_png(Path(folder) / f"out {i:03d}.png", alpha)


def run(kind: str, folder: Path, count: int, workers: int) -> dict[str, float]:
    """Images/s of decoding (arrays delivered here) and of encoding, on a warm pool of `kind`."""
    pool = executor(workers, processes=kind == "processes")
    try:
        wait([pool.submit(decode, str(folder), i) for i in range(workers)])  # start and warm every worker
        start = time.perf_counter()
        futures = [pool.submit(decode, str(folder), i) for i in range(count)]
        trimaps = [future.result()[1] for future in futures]  # in order, as infer takes them
        decoded = time.perf_counter()
        wait([pool.submit(encode, str(folder), i, trimap) for i, trimap in enumerate(trimaps)])
        encoded = time.perf_counter()
    finally:
        pool.shutdown(wait=True)
    return {"decode": count / (decoded - start), "encode": count / (encoded - decoded)}


def compare(folder: Path, count: int, workers: int, rounds: int) -> dict[str, list[dict[str, float]]]:
    """Each kind's figures over `rounds` runs, the kinds alternating, on the images in `folder`."""
    rows: dict[str, list[dict[str, float]]] = {"threads": [], "processes": []}
    for _ in range(rounds):
        for kind in rows:
            rows[kind].append(run(kind, folder, count, workers))
    return rows


def summary(rows: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Per stage: each kind's median images/s and threads / processes."""
    out = {}
    for stage in ("decode", "encode"):
        t, p = (statistics.median(row[stage] for row in rows[kind]) for kind in ("threads", "processes"))
        out[stage] = {"threads": round(t, 2), "processes": round(p, 2), "ratio": round(t / p, 2)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="3840x2160", help="WIDTHxHEIGHT of the generated photos")
    parser.add_argument("--count", type=int, default=12)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    size = parse_sizes(args.size)[0]
    with tempfile.TemporaryDirectory() as tmp:
        make_inputs(Path(tmp), args.count, size.width, size.height)
        rows = compare(Path(tmp), args.count, args.workers, args.rounds)
    print(f"{args.count} images of {size}, {args.workers} workers, {args.rounds} rounds alternating; images/s")
    print(f"{'stage':8} {'threads':>22} {'processes':>22} {'threads / processes':>20}")
    medians = summary(rows)
    for stage, median in medians.items():
        t, p = ([row[stage] for row in rows[kind]] for kind in ("threads", "processes"))
        print(f"{stage:8} {min(t):9.2f} - {max(t):<10.2f} {min(p):9.2f} - {max(p):<10.2f} {median['ratio']:19.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"size": str(size), "count": args.count, "workers": args.workers,
                                         "rows": rows, "median": medians}, indent=1) + "\n")


if __name__ == "__main__":
    main()
