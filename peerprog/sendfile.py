"""Send a byte range of a file as an aiohttp response body: by ``sendfile`` (no copy
through Python) when the event loop can, else in pieces; optionally paced by a token
bucket (see :mod:`peerprog.node.ratelimit`)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import BinaryIO

from aiohttp import web

PIECE = 1 << 20
"""Bytes sent at a time when paced or when ``sendfile`` is not available."""


async def send_range(
    request: web.Request,
    resp: web.StreamResponse,
    f: BinaryIO,
    offset: int,
    count: int,
    *,
    pace: Callable[[int], Awaitable[None]] | None = None,
    piece: int = PIECE,
) -> None:
    """Write ``count`` bytes of ``f`` from ``offset`` as the body of ``resp`` (prepared
    here, with its headers set by the caller) and end it. ``pace(n)`` is awaited before
    each piece of ``n`` bytes. ``ConnectionResetError`` if the peer leaves."""
    await resp.prepare(request)
    if request.method == "HEAD":  # headers only: a body would corrupt the connection
        await resp.write_eof()
        return
    loop = asyncio.get_running_loop()
    transport = request.transport
    if transport is None:
        raise ConnectionResetError("connection lost")
    # a transport without a socket (a reverse channel's stream) is written piece by piece
    use_sendfile = transport.get_extra_info("socket") is not None
    end = offset + count
    while offset < end:
        n = min(end - offset, piece) if pace is not None or not use_sendfile else end - offset
        if pace is not None:
            await pace(n)
        if transport.is_closing():
            raise ConnectionResetError("the connection is closing")
        if use_sendfile:
            try:
                await loop.sendfile(transport, f, offset, n)
                offset += n
                continue
            except NotImplementedError:  # e.g. uvloop, or a transport that cannot
                use_sendfile = False
                n = min(n, piece)
            except ConnectionError as e:  # a broken pipe: the peer left
                raise ConnectionResetError(str(e)) from None
            except RuntimeError:  # "Transport is closing": it left meanwhile
                if transport.is_closing():
                    raise ConnectionResetError("the connection closed") from None
                raise
        data = await asyncio.to_thread(os.pread, f.fileno(), n, offset)
        if not data:
            raise ConnectionResetError("the file is shorter than its answer")
        await resp.write(data)
        offset += len(data)
    await resp.write_eof()


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``Range: bytes=a-b`` (or ``a-``, ``-n``) of a ``size``-byte file as (start, stop);
    None without a header; :class:`web.HTTPRequestRangeNotSatisfiable` if it is malformed,
    several ranges, or outside the file."""
    if header is None:
        return None
    unit, _, spec = header.strip().partition("=")
    first, dash, last = spec.strip().partition("-")
    ok = unit.strip().lower() == "bytes" and bool(dash) and "," not in spec
    ok = ok and all(not x or (x.isascii() and x.isdigit() and len(x) <= 18) for x in (first, last))
    if not ok or (not first and not last):
        raise unsatisfiable(size)
    if not first:  # the last n bytes
        start, stop = max(0, size - int(last)), size
    else:
        start = int(first)
        stop = min(size, int(last) + 1) if last else size
    if start >= stop or start >= size:
        raise unsatisfiable(size)
    return start, stop


def unsatisfiable(size: int) -> web.HTTPRequestRangeNotSatisfiable:
    return web.HTTPRequestRangeNotSatisfiable(
        headers={"Content-Range": f"bytes */{size}"}, text="range not held"
    )
