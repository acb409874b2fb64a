"""The TCP listener's guard: a bearer token on every request, CORS for listed origins only.

The unix socket needs neither (its mode 0600 lets only the daemon's user in). On TCP, a
request must carry ``Authorization: Bearer <api.token>``; a browser request whose
``Origin`` is not in ``api.cors_origins`` is refused outright (403), and an allowed origin
gets the CORS headers it needs to read the answer, ``Peerprog-*`` headers included. A CORS
preflight (``OPTIONS``) from an allowed origin is answered without a token, as browsers
send none.
"""

from __future__ import annotations

import hmac
from collections.abc import Collection

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from peerprog.api.errors import OriginNotAllowed, Unauthorized

CORS_ORIGIN = web.RequestKey("cors_origin", str)

EXPOSED = (
    "ETag, Retry-After, Peerprog-Model-Id, Peerprog-Level, Peerprog-Levels-Total, "
    "Peerprog-Bytes-Received, Peerprog-Bytes-Total"
)


def bearer_ok(header: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``token`` (compared in constant time)."""
    if not header or not token:
        return False
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


def origin_allowed(origin: str, allowed: Collection[str]) -> bool:
    """Whether a browser ``Origin`` is one of ``api.cors_origins`` (``*``: any)."""
    return "*" in allowed or origin.rstrip("/") in {o.rstrip("/") for o in allowed}


def cors_headers(origin: str, *, preflight: bool) -> dict[str, str]:
    """The CORS headers granting ``origin`` (more of them for a preflight)."""
    headers = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
    if preflight:
        headers.update(
            {
                "Access-Control-Allow-Methods": "GET, HEAD, PUT, OPTIONS",
                "Access-Control-Allow-Headers": "Authorization, If-None-Match, Last-Event-ID",
                "Access-Control-Max-Age": "600",
            }
        )
    else:
        headers["Access-Control-Expose-Headers"] = EXPOSED
    return headers


def tcp_guard(token: str, origins: Collection[str]) -> Middleware:
    """The middleware of the TCP listener."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is not None:
            if not origin_allowed(origin, origins):
                raise OriginNotAllowed(f"origin {origin[:200]!r} is not in api.cors_origins")
            request[CORS_ORIGIN] = origin
            if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
                return web.Response(status=204, headers=cors_headers(origin, preflight=True))
        if not bearer_ok(request.headers.get("Authorization"), token):
            raise Unauthorized("this listener needs the header 'Authorization: Bearer <api.token>'")
        return await handler(request)

    return guard


async def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare`` signal: the CORS headers of an allowed origin, on every
    answer (errors too, so that the page can read them)."""
    origin = request.get(CORS_ORIGIN)
    if origin and "Access-Control-Allow-Origin" not in response.headers:
        response.headers.update(cors_headers(origin, preflight=False))
