"""mattecli.parallel and progress.track: the one executor and the one progress wrapper."""

import os

import pytest

from mattecli.parallel import InlineExecutor, map_bounded, pool
from mattecli.progress import track


def _square_and_pid(x):
    return x * x, os.getpid()


def test_inline_threads_and_processes_give_the_same_results():
    for workers, processes in ((0, False), (2, False), (2, True)):
        with pool(workers, processes=processes) as executor:
            assert isinstance(executor, InlineExecutor) == (workers == 0)
            got = list(map_bounded(executor, _square_and_pid, ((x,) for x in range(7)), limit=3))
        assert sorted(r for r, _ in got) == [x * x for x in range(7)]
        assert ({pid for _, pid in got} == {os.getpid()}) == (not processes)


def test_jobs_are_read_lazily_within_the_limit():
    read = []

    def jobs():
        for x in range(6):
            read.append(x)
            yield (x,)

    with pool(0) as executor:
        for i, _ in enumerate(map_bounded(executor, _square_and_pid, jobs(), limit=1)):
            assert len(read) == i + 1  # inline with limit 1: one job read per result


def test_an_error_in_a_task_reaches_the_caller_and_the_pool_stops():
    with pytest.raises(ZeroDivisionError), pool(2, processes=True) as executor:
        list(map_bounded(executor, divmod, [(1, 0)], limit=2))


def test_track_without_a_bar_still_prints_to_its_console():
    lines = []

    class Console:
        def print(self, text, **_):
            lines.append(text)

    with track(0, "nothing", console=Console()) as bar:
        bar.advance()
        bar.print("a note")
    assert lines == ["a note"]


def test_track_advances_by_the_steps_given_and_shows_done_total_and_eta():
    """The bar is "what, bar, done/total, elapsed, ETA"; `advance(n)` moves it n steps."""
    import io

    from rich.console import Console

    out = io.StringIO()
    with track(5, "frames", console=Console(file=out, width=120)) as bar:
        bar.advance(3)
        assert bar.progress.tasks[0].completed == 3
    text = out.getvalue()
    assert "frames" in text and "3/5" in text and "ETA" in text


def test_lines_printed_through_a_tracker_are_escaped_and_not_markup(capsys):
    """Tracker.print writes the text as it is (rich markup is not read: a file named "[red]x" stays so),
    its control characters escaped (a file name holding a newline or ESC forges no line), above the
    bar on stderr, where the default bar draws."""
    with track(2, "files") as bar:
        bar.print("[red]a.png[/red]\nmatte: failed\x1b[2J")
    err = capsys.readouterr().err
    assert "[red]a.png[/red]\\nmatte: failed\\x1b[2J" in err


def test_a_process_pool_on_windows_is_capped_at_its_61_processes(monkeypatch):
    """`matte eval` (default: all cores) or `prepare-data --workers 64` on a Windows machine of 64+
    cores: ProcessPoolExecutor raised "max_workers must be <= 61", a traceback."""
    import sys

    from mattecli.parallel import executor

    monkeypatch.setattr(sys, "platform", "win32")
    pool_ = executor(64, processes=True)  # no process starts before a task is submitted
    try:
        assert pool_._max_workers == 61
    finally:
        pool_.shutdown()


def _hangup_disposition_and_mark():
    import signal

    return signal.getsignal(signal.SIGHUP) == signal.SIG_IGN, os.environ.get("MATTE_TEST_INITIALIZED")


def _mark_initialized():
    os.environ["MATTE_TEST_INITIALIZED"] = "yes"


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGHUP"), reason="no SIGHUP on Windows")
def test_worker_processes_leave_a_hang_up_to_the_parent_and_still_run_their_initializer():
    """A closing terminal sends SIGHUP to every process of the group: a worker died at once (a write
    half done, the pool broken) before the parent, which ends as on SIGTERM, could stop it."""
    with pool(1, processes=True, initializer=_mark_initialized) as executor:
        assert executor.submit(_hangup_disposition_and_mark).result() == (True, "yes")


def _ctrl_c_state():
    import signal

    return signal.getsignal(signal.SIGINT) == signal.SIG_IGN, signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, [])


@pytest.mark.skipif(not hasattr(__import__("signal"), "pthread_sigmask"), reason="no signal masks on Windows")
def test_worker_processes_leave_ctrl_c_to_the_parent_from_their_first_instruction():
    """A terminal's Ctrl-C reaches every process of the group: a worker still importing printed a
    30-line traceback beside "matte: interrupted" (matte eval --workers 2). Here the Ctrl-C comes
    while the worker starts: it must neither die nor keep SIGINT blocked once started."""
    import signal

    with pool(1, processes=True) as executor:
        future = executor.submit(_ctrl_c_state)
        assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, [])  # the parent's mask as it was
        for process in list(executor._processes.values()):
            os.kill(process.pid, signal.SIGINT)
        assert future.result(timeout=120) == (True, False)


def test_an_inline_task_that_raises_any_exception_delivers_it_through_its_future():
    """As a pool does: the caller meets the error at `result()`, not at `submit`."""
    future = InlineExecutor().submit(lambda: {}["missing"])
    assert isinstance(future.exception(), KeyError)


def test_thread_workers_run_the_initializer():
    import threading

    started = threading.local()
    with pool(2, initializer=lambda: setattr(started, "yes", True)) as executor:
        assert all(executor.submit(lambda: getattr(started, "yes", False)).result() for _ in range(4))


def test_leaving_the_block_normally_waits_for_every_task():
    import time

    done = []
    with pool(2) as executor:
        executor.submit(lambda: time.sleep(0.2) or done.append(1))
    assert done == [1]


def test_leaving_the_block_by_an_error_cancels_the_tasks_not_yet_started():
    import time

    ran = []
    with pytest.raises(RuntimeError), pool(1) as executor:
        executor.submit(time.sleep, 0.2)  # the one thread is busy with this one
        for x in range(3):
            executor.submit(ran.append, x)
        raise RuntimeError("stop")
    assert ran == []
