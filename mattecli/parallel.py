"""Work inline or in a pool, one way everywhere: batch inference (threads decoding and encoding
beside the model), evaluation's metrics and data preparation (processes).

`pool(0)` runs each task at once in the calling thread behind the same `Executor` interface, so
callers have one code path. Processes always start with spawn: a parent that holds torch's or
OpenMP's threads cannot be forked safely, and spawn is what macOS and Windows use anyway.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from contextlib import contextmanager

WINDOWS_MAX_PROCESSES = 61  # concurrent.futures' limit there (63 handles less its own two)


class InlineExecutor(Executor):
    """The executor interface, running each task at once in the calling thread."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as err:  # noqa: BLE001 - delivered through the future, as a pool would
            future.set_exception(err)
        return future


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which a job scheduler or a container
    limits; every core where the platform does not say)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def executor(workers: int, processes: bool = False, initializer: Callable | None = None,
             name: str = "matte") -> Executor:
    """`workers` threads (named `name`) or spawned processes, or inline when `workers` is 0; the
    caller shuts it down (`pool` does that for a block)."""
    if workers <= 0:
        return InlineExecutor()
    if processes:
        if sys.platform == "win32":  # Windows waits on at most 63 handles: more is a ValueError there
            workers = min(workers, WINDOWS_MAX_PROCESSES)
        return _SpawnedPool(workers, mp_context=multiprocessing.get_context("spawn"),
                            initializer=_process_start, initargs=(initializer,))
    return ThreadPoolExecutor(workers, thread_name_prefix=name, initializer=initializer)


class _SpawnedPool(ProcessPoolExecutor):
    """Worker processes that leave Ctrl-C to their parent, from their first instruction on: a
    terminal's Ctrl-C reaches the whole process group, and a worker still importing (spawn imports
    the command anew) printed a 30-line traceback beside "matte: interrupted". The pool starts its
    processes in `submit`, so each starts with SIGINT blocked, a mask it keeps through exec, until
    `_process_start` ignores it; the parent stops its workers itself."""

    def submit(self, fn, /, *args, **kwargs):
        if not hasattr(signal, "pthread_sigmask"):  # Windows
            return super().submit(fn, *args, **kwargs)
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            return super().submit(fn, *args, **kwargs)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def _process_start(initializer: Callable | None) -> None:
    """In each worker process: a hang-up (the terminal closing) and Ctrl-C reach the whole process
    group; the parent handles them as it does SIGTERM and stops its workers, so a worker ignores them
    rather than dying with a write half done (the pool then broken before the parent could say why)."""
    if hasattr(signal, "SIGHUP"):  # none on Windows
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C pending since the start is dropped with it
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    if initializer is not None:
        initializer()


@contextmanager
def pool(workers: int, processes: bool = False, initializer: Callable | None = None) -> Iterator[Executor]:
    """`executor(...)` around a block. On leaving normally it waits for every task. On an exception
    (Ctrl-C included) tasks not yet started are cancelled, and worker processes are stopped at once
    rather than left to finish."""
    executor_ = executor(workers, processes, initializer)
    try:
        yield executor_
    except BaseException:
        for process in list((getattr(executor_, "_processes", None) or {}).values()):
            process.terminate()  # ProcessPoolExecutor has no public way to stop running tasks (3.14 adds one)
        executor_.shutdown(wait=True, cancel_futures=True)
        raise
    executor_.shutdown(wait=True)


def map_bounded(executor: Executor, fn: Callable, jobs: Iterable[tuple], limit: int) -> Iterator:
    """`fn(*job)` for every job on `executor`, at most `limit` in flight; yields results as they
    complete. `jobs` is read lazily, so a generator can do work of its own (run a model) while the
    pool works on what it yielded before."""
    pending: set[Future] = set()
    for job in jobs:
        pending.add(executor.submit(fn, *job))
        if len(pending) >= limit:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            yield from (future.result() for future in done)
    while pending:
        done, pending = wait(pending, return_when=FIRST_COMPLETED)
        yield from (future.result() for future in done)
