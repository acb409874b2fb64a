"""The TCP listener's guard: a bearer token on every request, CORS for listed origins only.

The unix socket needs neither (its mode 0600 lets only the daemon's user in). On TCP, a
request must carry ``Authorization: Bearer <api.token>``; a browser request whose
``Origin`` is not in ``api.cors_origins`` is refused outright (403), and an allowed origin
gets the CORS headers it needs to read the answer, ``Peerprog-*`` headers included. A CORS
preflight (``OPTIONS``) from an allowed origin is answered without a token, as browsers
send none.

Two exceptions, both for the web UI the listener serves itself (:mod:`.ui`):

* the UI's own origin (``http://<Host>`` when the page was loaded by an IP literal or
  ``localhost``) is not a cross origin: its ``POST``/``PUT`` requests carry an ``Origin``
  that is let through, still with the token, and get no CORS headers (none are needed);
* ``EventSource`` cannot send headers, so an event stream may be opened with a *ticket*
  instead: ``POST /v1/tickets`` (with the token) answers ``{"ticket", "expires_in"}``,
  and ``GET /v1/models/<name>/events?ticket=<ticket>`` is let in once, within
  :data:`TICKET_TTL` seconds (:class:`TicketBook`).

The static files under ``/ui/`` need no token: they hold no data, and everything the pages
show they read from the API with the token.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
import time
from collections.abc import Collection

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from peerprog.api.errors import OriginNotAllowed, Unauthorized

CORS_ORIGIN = web.RequestKey("cors_origin", str)
TICKET_TTL = 60
"""Seconds a ticket stays good for (it is good for one event stream)."""
MAX_TICKETS = 256
"""Tickets outstanding at most; issuing one more drops the oldest."""
TICKET_ROUTE = "/v1/models/{name}/events"
"""The only route a ticket opens."""
UI_PREFIX = "/ui"

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


def same_origin(origin: str, host: str | None) -> bool:
    """Whether ``origin`` is the listener's own (a page it served, e.g. the web UI).

    That is ``http://<Host>``, and only when the ``Host`` is an IP literal or ``localhost``:
    a page reached by any other name may be a DNS-rebinding attacker's, whose name merely
    resolves to the loopback address.
    """
    if not host or origin.rstrip("/") != f"http://{host}":
        return False
    name, sep, port = host.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()):
        return False
    if name == "localhost":
        return True
    try:
        ipaddress.ip_address(name.removeprefix("[").removesuffix("]"))
    except ValueError:
        return False
    return True


class TicketBook:
    """Short-lived, single-use tickets that stand for the token where a browser cannot send
    a header (``EventSource``). Pure: every method takes ``now`` (seconds, monotonic)."""

    def __init__(self, ttl: float = TICKET_TTL, limit: int = MAX_TICKETS) -> None:
        self.ttl = ttl
        self.limit = limit
        self._expiry: dict[str, float] = {}  # ticket -> when it stops being good, oldest first

    def __len__(self) -> int:
        return len(self._expiry)

    def issue(self, now: float) -> str:
        """A new ticket, good once until ``now + ttl``."""
        self._prune(now)
        while len(self._expiry) >= self.limit:
            del self._expiry[next(iter(self._expiry))]
        ticket = secrets.token_urlsafe(24)
        self._expiry[ticket] = now + self.ttl
        return ticket

    def redeem(self, ticket: str, now: float) -> bool:
        """Whether ``ticket`` is good now; a good ticket is used up.

        Every outstanding ticket is compared, in constant time, so the answer's timing
        tells nothing of how much of a guess was right.
        """
        self._prune(now)
        given = ticket.encode()
        found = None
        for known in self._expiry:
            if hmac.compare_digest(given, known.encode()):
                found = known
        if found is None:
            return False
        del self._expiry[found]
        return True

    def _prune(self, now: float) -> None:
        for ticket, expiry in list(self._expiry.items()):
            if expiry <= now:
                del self._expiry[ticket]


TICKETS = web.AppKey("peerprog_tickets", TicketBook)


async def post_ticket(request: web.Request) -> web.Response:
    """``POST /v1/tickets``: a ticket for one event stream (the guard checked the token)."""
    book = request.app[TICKETS]
    ticket = book.issue(time.monotonic())
    return web.json_response(
        {"ticket": ticket, "expires_in": int(book.ttl)}, headers={"Cache-Control": "no-store"}
    )


def add_ticket_routes(app: web.Application) -> None:
    """``POST /v1/tickets`` on the TCP listener's app (the unix socket needs none)."""
    app[TICKETS] = TicketBook()
    app.router.add_post("/v1/tickets", post_ticket)


def ticket_ok(request: web.Request) -> bool:
    """Whether ``request`` opens an event stream with a good ticket (using it up)."""
    ticket = request.query.get("ticket")
    if ticket is None or request.method != "GET" or TICKETS not in request.app:
        return False
    route = request.match_info.route.resource
    if route is None or route.canonical != TICKET_ROUTE:
        return False
    return request.app[TICKETS].redeem(ticket, time.monotonic())


def is_ui_file(request: web.Request) -> bool:
    """Whether ``request`` asks for a static file of the web UI (no token needed)."""
    path = request.path
    return request.method in ("GET", "HEAD") and (
        path == UI_PREFIX or path.startswith(UI_PREFIX + "/")
    )


def cors_headers(origin: str, *, preflight: bool) -> dict[str, str]:
    """The CORS headers granting ``origin`` (more of them for a preflight)."""
    headers = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
    if preflight:
        headers.update(
            {
                "Access-Control-Allow-Methods": "GET, HEAD, PUT, POST, DELETE, OPTIONS",
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
        if origin is not None and not same_origin(origin, request.headers.get("Host")):
            if not origin_allowed(origin, origins):
                raise OriginNotAllowed(f"origin {origin[:200]!r} is not in api.cors_origins")
            request[CORS_ORIGIN] = origin
            if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
                return web.Response(status=204, headers=cors_headers(origin, preflight=True))
        if is_ui_file(request):
            return await handler(request)
        if not bearer_ok(request.headers.get("Authorization"), token) and not ticket_ok(request):
            raise Unauthorized("this listener needs the header 'Authorization: Bearer <api.token>'")
        return await handler(request)

    return guard


async def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare`` signal: the CORS headers of an allowed origin, on every
    answer (errors too, so that the page can read them)."""
    origin = request.get(CORS_ORIGIN)
    if origin and "Access-Control-Allow-Origin" not in response.headers:
        response.headers.update(cors_headers(origin, preflight=False))
