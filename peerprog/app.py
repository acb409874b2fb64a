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

log = logging.getLogger("peerprog.node")


async def serve(config: Config) -> None:
    """Run a node and its API until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    node = Node(config)
    api = ApiServer(node)
    async with contextlib.AsyncExitStack() as stack:
        await node.start()
        stack.push_async_callback(node.stop)
        await api.start()
        stack.push_async_callback(api.stop)
        await stop.wait()
        log.info("shutting down")
