"""TCP listeners that cannot be held open by slow or greedy clients.

Every TCP listener of the daemon (the peer port, the API's optional TCP address) goes
through :class:`GuardedSite`. Each connection must deliver a request's whole header within
``header_timeout`` of its first byte (and of the connection's start), or it is closed —
the deadline nginx calls ``client_header_timeout``; an idle keep-alive connection is closed
after ``keepalive_timeout``. A remote address with ``max_per_address`` connections open
gets ``503`` and a close for any more, so a few hundred slow clients cannot use up the
daemon's open files. A port that cannot be bound is an :class:`InputError` naming the
config key.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from peerprog.config import LimitsSection
from peerprog.errors import InputError

BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 5\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 40\r\n\r\n"
    b"too many connections from your address\n"
)


@dataclass(frozen=True)
class ListenLimits:
    """What one listener allows each connection and each remote address."""

    header_timeout: float = 10.0
    """Seconds a request's header may take to arrive."""
    keepalive_timeout: float = 75.0
    """Seconds an idle keep-alive connection stays open."""
    max_per_address: int = 128
    """Most connections open at once from one remote address (0: no limit)."""


def listen_limits(limits: LimitsSection) -> ListenLimits:
    """The listeners' limits of a node config's ``[limits]``."""
    return ListenLimits(
        limits.header_timeout, limits.keepalive_timeout, limits.max_connections_per_address
    )


@dataclass
class _Connections:
    """The open connections of one listener, counted per remote address."""

    limits: ListenLimits
    per_address: dict[str, int] = field(default_factory=dict)
    refused: int = 0
    timed_out: int = 0

    def admit(self, address: str) -> bool:
        n = self.per_address.get(address, 0)
        if self.limits.max_per_address and n >= self.limits.max_per_address:
            self.refused += 1
            return False
        self.per_address[address] = n + 1
        return True

    def release(self, address: str) -> None:
        n = self.per_address.get(address, 0) - 1
        if n > 0:
            self.per_address[address] = n
        else:
            self.per_address.pop(address, None)


class _GuardedHandler(RequestHandler):
    """aiohttp's request handler with a header deadline and the per-address count."""

    def __init__(self, connections: _Connections, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._connections = connections
        self._address: str | None = None
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        if not self._connections.admit(address):
            assert isinstance(transport, asyncio.Transport)
            transport.write(BUSY)
            transport.close()
            return
        self._address = address
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._address is None:
            return
        parsed = self._request_count
        super().data_received(data)
        if self._request_count > parsed:
            self._disarm()
        elif self._current_request is None and self._deadline is None:
            self._arm()  # the first bytes of the next request's header

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._address is None:
            return
        self._disarm()
        self._connections.release(self._address)
        self._address = None
        super().connection_lost(exc)

    def _arm(self) -> None:
        timeout = self._connections.limits.header_timeout
        if timeout > 0:
            self._deadline = self._loop.call_later(timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self._current_request is None and self.transport is not None:
            self._connections.timed_out += 1
            self.transport.close()


class GuardedSite(web.BaseSite):
    """A TCP site of ``runner`` under ``limits``; ``key`` names the address's config key
    in the error raised by :meth:`start` when the address cannot be bound."""

    def __init__(
        self, runner: web.AppRunner, host: str, port: int, limits: ListenLimits, *, key: str
    ) -> None:
        super().__init__(runner)
        self._host, self._port, self._key = host, port, key
        self._connections = _Connections(limits)
        self.port: int | None = None
        """The bound port once started."""

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self.port or self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        kwargs = dict(server._kwargs)
        kwargs["keepalive_timeout"] = self._connections.limits.keepalive_timeout
        loop = asyncio.get_running_loop()
        connections = self._connections

        def factory() -> RequestHandler:
            return _GuardedHandler(connections, server, loop=loop, **kwargs)

        try:
            listener = await loop.create_server(factory, self._host, self._port, reuse_address=True)
        except OSError as e:
            where = f"{self._host}:{self._port}"
            why = os.strerror(e.errno) if e.errno else str(e)
            raise InputError(f"{self._key} = {where}: cannot listen ({why})") from None
        self._server = listener
        self.port = int(listener.sockets[0].getsockname()[1])
