"""A daemon's stop is bounded: past its grace, or on a second signal, the process exits
with EXIT_STUCK after logging what was still running (real processes, real signals)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

from peerprog.app import EXIT_STUCK

SCRIPT = textwrap.dedent(
    """
    import asyncio, logging, signal, sys, time
    from peerprog.app import _bound_shutdown

    async def stuck_forever():
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                pass  # a bug: it ignores its cancellation

    async def main(how):
        logging.basicConfig(level=logging.INFO)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        task = asyncio.create_task(stuck_forever(), name="stuck-task")
        print("ready", flush=True)
        await stop.wait()
        _bound_shutdown(loop, 0.5 if how != "again" else 60)
        if how == "blocked":
            time.sleep(60)  # the loop itself blocked
        task.cancel()
        await asyncio.sleep(60)

    asyncio.run(main(sys.argv[1]))
    """
)


def run(how: str, signals: int) -> tuple[int, str, float]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, how],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    t0 = time.monotonic()
    for _ in range(signals):
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
    _, err = proc.communicate(timeout=30)
    return proc.returncode, err, time.monotonic() - t0


def test_a_stuck_task_is_named_and_the_process_exits() -> None:
    code, err, _ = run("task", 1)
    assert code == EXIT_STUCK
    assert "shutdown overran 0.5 s" in err
    assert "stuck-task: stuck_forever" in err
    assert "shutdown is stuck" in err


def test_a_blocked_loop_still_exits_with_every_threads_stack() -> None:
    code, err, _ = run("blocked", 1)
    assert code == EXIT_STUCK
    assert "shutdown is stuck" in err
    assert "Current thread" in err or "Thread 0x" in err  # faulthandler's dump
    assert "in main" in err


def test_a_second_signal_exits_at_once() -> None:
    code, err, took = run("again", 2)
    assert code == EXIT_STUCK
    assert "a second signal during shutdown" in err
    assert took < 20  # far below the 60 s grace
