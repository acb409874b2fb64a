"""The daemon: a node and its local API, run until SIGTERM or SIGINT.

The one place where :mod:`peerprog.node` and :mod:`peerprog.api` meet: the API sees the
node only through :class:`peerprog.api.view.NodeView`.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import logging
import os
import signal
import sys
import threading

from peerprog.api.server import ApiServer
from peerprog.config import Config
from peerprog.node import Node
from peerprog.node.datadir import DataDirLock

log = logging.getLogger("peerprog.node")

SHUTDOWN_GRACE = 30.0
"""Seconds a stop may take (its last step makes the records durable, and an fsync on a
busy disk can take seconds). Past them the daemon logs what is still running and exits
anyway with :data:`EXIT_STUCK`: the store is crash-safe, so nothing is lost."""
EXIT_STUCK = 70
"""Exit code of a daemon whose stop overran :data:`SHUTDOWN_GRACE`, or that was stopped by a
second signal."""


async def serve(config: Config, grace: float = SHUTDOWN_GRACE) -> None:
    """Run a node and its API until SIGTERM or SIGINT, then stop them within ``grace``
    seconds (a second signal exits at once).

    The node's ``data_dir`` is locked first (one daemon per folder); a start that fails
    leaves nothing behind.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    lock = DataDirLock(config.base_dir)
    lock.acquire()
    started = False
    watchdog: threading.Timer | None = None
    try:
        async with contextlib.AsyncExitStack() as stack:
            node = Node(config)
            await node.start()
            stack.push_async_callback(node.stop)
            api = ApiServer(node)
            await api.start()
            stack.push_async_callback(api.stop)
            started = True
            await stop.wait()
            log.info("shutting down")
            watchdog = _bound_shutdown(loop, grace)
            began = loop.time()
            await stack.aclose()
            log.info("stopped in %.2f s", loop.time() - began)
    finally:
        if watchdog is not None:
            watchdog.cancel()
        lock.release(failed=not started)


def _bound_shutdown(loop: asyncio.AbstractEventLoop, grace: float) -> threading.Timer:
    """From now on a second signal, or a stop overrunning ``grace``, exits the process;
    the returned watchdog is to be cancelled once the stop is done.

    The overrun is seen twice: by the loop, which logs the tasks still running, and by a
    thread, which also works while the loop itself is blocked and dumps every thread's
    stack before it exits."""

    def again() -> None:
        log.warning("a second signal during shutdown: exiting now")
        _exit()

    def tasks() -> None:
        stuck = [t for t in asyncio.all_tasks(loop) if t is not asyncio.current_task(loop)]
        log.error("shutdown overran %g s; %d tasks still running:", grace, len(stuck))
        for task in stuck:
            frames = task.get_stack(limit=8)
            where = " <- ".join(
                f"{f.f_code.co_name} ({os.path.basename(f.f_code.co_filename)}:{f.f_lineno})"
                for f in reversed(frames)
            )
            log.error("  %s: %s", task.get_name(), where or "(not started)")

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, again)
    loop.call_later(grace, tasks)
    watchdog = threading.Timer(grace + 1.0, _overran)
    watchdog.daemon = True
    watchdog.start()
    return watchdog


def _overran() -> None:
    log.error("shutdown is stuck; the stacks of every thread follow, then the daemon exits")
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    _exit()


def _exit() -> None:
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    os._exit(EXIT_STUCK)
