"""The yardstick: a plain HTTP download of the same model file over the same capped link.

A tiny aiohttp server on loopback sends the file through an upload token bucket (the
seed's cap) and the client reads it through a download bucket (an edge's cap), the same
:class:`peerprog.node.ratelimit.TokenBucket` the daemons use. It runs in the same event loop
as the demo, at the same time as the swarm, and is timed, not assumed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

from peerprog.node.ratelimit import TokenBucket, throttle
from peerprog_demo.swarm import free_port

PIECE = 16384


@dataclass
class PlainDownload:
    """Progress and outcome of the plain download; times are seconds since ``t0``."""

    path: Path
    total: int
    rate: int
    received: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    history: list[tuple[float, int]] = field(default_factory=list)

    @property
    def seconds(self) -> float | None:
        """How long the download took (None until it ends)."""
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at


async def _serve_file(request: web.Request) -> web.StreamResponse:
    path: Path = request.app["path"]
    bucket: TokenBucket = request.app["bucket"]
    resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    resp.content_length = path.stat().st_size
    await resp.prepare(request)
    try:
        with open(path, "rb") as f:
            while piece := f.read(PIECE):
                await throttle(bucket, len(piece))
                await resp.write(piece)
        await resp.write_eof()
    except ConnectionError:
        pass  # the demo stopped early; the client is gone
    return resp


async def plain_download(job: PlainDownload, out: Path, t0: float) -> PlainDownload:
    """Serve ``job.path`` on loopback, download it to ``out`` through the caps, time it.

    ``t0`` is the demo's start (``time.monotonic()``); progress is written into ``job``.
    """
    app = web.Application()
    app["path"] = job.path
    app["bucket"] = TokenBucket(job.rate)
    app.router.add_get("/model", _serve_file)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    download = TokenBucket(job.rate)
    try:
        async with aiohttp.ClientSession() as session:
            job.started_at = time.monotonic() - t0
            async with session.get(f"http://127.0.0.1:{port}/model") as resp:
                resp.raise_for_status()
                with open(out, "wb") as f:
                    async for piece in resp.content.iter_chunked(PIECE):
                        await throttle(download, len(piece))
                        f.write(piece)
                        job.received += len(piece)
                        job.history.append((time.monotonic() - t0, job.received))
            job.finished_at = time.monotonic() - t0
    finally:
        await runner.cleanup()
    return job
