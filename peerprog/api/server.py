"""The local API server: the aiohttp apps, their sockets, and their life cycle.

``ApiServer(node)``, ``await start()``, ``await stop()``. It listens on the unix socket of
``api.socket`` and, when ``api.listen_tcp`` is set, on that loopback address too (token and
CORS checks: :mod:`.auth`; the web UI: :mod:`.ui`). It learns of new levels through
``node.level_listeners``.
Every error is answered as JSON ``{"error", "detail"}``; an unexpected exception is logged
as our bug and answered 500, never with a traceback.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from peerprog.api.auth import add_cors_headers, add_ticket_routes, tcp_guard
from peerprog.api.context import ApiContext
from peerprog.api.errors import ApiError
from peerprog.api.routes import CTX, add_routes
from peerprog.api.socketfile import bind_unix_socket, remove_socket
from peerprog.api.ui import add_ui_routes
from peerprog.api.view import NodeView
from peerprog.config import split_host_port
from peerprog.listen import GuardedSite, listen_limits

log = logging.getLogger("peerprog.api")
SHUTDOWN_TIMEOUT = 2.0
"""Seconds given to answers still being written when the server stops."""

_HTTP_CODES = {404: "not found", 405: "method not allowed", 413: "request too large"}


@web.middleware
async def answer_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error as JSON ``{"error", "detail"}``; our bugs logged and answered 500."""
    try:
        return await handler(request)
    except ApiError as e:
        return web.json_response(e.to_json(), status=e.status, headers=e.headers())
    except web.HTTPException as e:
        if e.status < 400:
            raise
        code = _HTTP_CODES.get(e.status, (e.reason or "error").lower())
        detail = f"no endpoint {request.method} {request.path[:200]}"
        if e.status == 405:
            detail = f"{request.method} is not allowed on {request.path[:200]}"
        elif e.status not in _HTTP_CODES:
            detail = e.text or code
        headers = {"Allow": e.headers["Allow"]} if "Allow" in e.headers else None
        return web.json_response(
            {"error": code, "detail": detail}, status=e.status, headers=headers
        )
    except (asyncio.CancelledError, ConnectionError):
        raise
    except Exception:
        log.exception("bug while answering %s %s", request.method, request.path[:200])
        doc = {
            "error": "internal error",
            "detail": "the daemon met an unexpected error (see its log)",
        }
        return web.json_response(doc, status=500)


def build_app(
    ctx: ApiContext, *, token: str | None = None, cors_origins: list[str] | None = None
) -> web.Application:
    """The API app; with ``token``, the TCP listener's: bearer token and CORS checks, event
    stream tickets, and the web UI under ``/ui/``."""
    middlewares: list[Middleware] = [answer_errors]
    if token is not None:
        middlewares.append(tcp_guard(token, cors_origins or []))
    app = web.Application(middlewares=middlewares, client_max_size=64 * 1024)
    app[CTX] = ctx
    add_routes(app)
    if token is not None:
        add_ticket_routes(app)
        add_ui_routes(app)
        app.on_response_prepare.append(add_cors_headers)
    return app


class ApiServer:
    """The local API of one node."""

    def __init__(self, node: NodeView) -> None:
        self.node = node
        self.ctx = ApiContext(node)
        self.socket_path = Path(node.config.api.socket)
        self.tcp_port: int | None = None
        """The TCP listener's port once started (None without ``api.listen_tcp``)."""
        self._runners: list[web.AppRunner] = []
        self._inode: int | None = None

    async def start(self) -> None:
        """Listen on the unix socket (and the TCP address if configured).

        Raises :class:`peerprog.errors.InputError` if another daemon serves the socket.
        """
        api = self.node.config.api
        sock, self._inode = await asyncio.to_thread(
            bind_unix_socket, self.socket_path, api.socket_group
        )
        self.node.level_listeners.append(self.ctx.on_level)
        served = False
        try:
            runner = await self._runner(build_app(self.ctx))
            await web.SockSite(runner, sock).start()
            served = True  # from here on the runner closes the socket
            mode = f"group {api.socket_group}, mode 0660" if api.socket_group else "mode 0600"
            log.info("local API on unix:%s (%s)", self.socket_path, mode)
            if api.listen_tcp:
                host, port = split_host_port(api.listen_tcp, "api.listen_tcp")
                runner = await self._runner(
                    build_app(self.ctx, token=api.token, cors_origins=list(api.cors_origins))
                )
                limits = listen_limits(self.node.config.limits)
                site = GuardedSite(runner, host, port, limits, key="api.listen_tcp")
                await site.start()
                self.tcp_port = site.port
                log.info("local API on http://%s:%d (bearer token required)", host, self.tcp_port)
        except BaseException:
            if not served:
                sock.close()
            await self.stop()
            raise

    async def _runner(self, app: web.Application) -> web.AppRunner:
        runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=SHUTDOWN_TIMEOUT
        )
        await runner.setup()
        self._runners.append(runner)
        return runner

    async def stop(self) -> None:
        """End long-polls and event streams, close the listeners, remove the socket."""
        self.ctx.notifier.close()
        if self.ctx.on_level in self.node.level_listeners:
            self.node.level_listeners.remove(self.ctx.on_level)
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        if self._inode is not None:
            remove_socket(self.socket_path, self._inode)
            self._inode = None
