"""Run a node as a daemon: start it (and the local API), stop cleanly on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from peerprog.node.config import Config
from peerprog.node.daemon import Node

log = logging.getLogger("peerprog.node")


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


async def serve(config: Config) -> None:
    """Run a node until SIGTERM or SIGINT."""
    node = Node(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await node.start()
    api = None
    try:
        from peerprog.api.server import ApiServer

        api = ApiServer(node)
        await api.start()
        await stop.wait()
        log.info("shutting down")
    finally:
        if api is not None:
            await api.stop()
        await node.stop()
