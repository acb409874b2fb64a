"""The daemon: a node and its local API, run until SIGTERM or SIGINT.

The one place where :mod:`peerprog.node` and :mod:`peerprog.api` meet: the API sees the
node only through :class:`peerprog.api.view.NodeView`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from peerprog.api.server import ApiServer
from peerprog.config import Config
from peerprog.node import Node
from peerprog.node.datadir import DataDirLock

log = logging.getLogger("peerprog.node")


async def serve(config: Config) -> None:
    """Run a node and its API until SIGTERM or SIGINT.

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
    finally:
        lock.release(failed=not started)
