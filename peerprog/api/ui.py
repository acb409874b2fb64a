"""The web UI on the TCP listener: static files from the package, and the test split.

| request | answer |
| --- | --- |
| ``GET /ui`` | a redirect to ``/ui/`` |
| ``GET /ui/`` | the dashboard (``index.html``) |
| ``GET /ui/<file>`` | a file of :data:`peerprog.ui.STATIC_DIR` (one flat folder) |
| ``GET /ui/data/digits-test.json`` | the bundled test split of the digits CNN |

Only the files found in the folder when the app is built are served, looked up by name
(no path is ever joined with the request's), each with its content type. None needs the
token (:func:`peerprog.api.auth.is_ui_file`): they hold no data of the node. The pages
may load nothing but their own files and talk to nothing but this listener (the
``Content-Security-Policy`` below), and may not be framed.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from aiohttp import web

from peerprog.api.errors import ApiError
from peerprog.reference import digits
from peerprog.ui import STATIC_DIR

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
    ".png": "image/png",
}
"""The file types served; a file of another type in the folder is not."""

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; worker-src 'self'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

UI_FILES = web.AppKey("peerprog_ui_files", dict[str, Path])


class UnknownFile(ApiError):
    """No such file in the web UI (404)."""

    status = 404
    code = "not found"


def static_files(folder: Path = STATIC_DIR) -> dict[str, Path]:
    """The files that ``GET /ui/<name>`` serves, by name."""
    if not folder.is_dir():
        return {}
    return {
        p.name: p
        for p in sorted(folder.iterdir())
        if p.is_file() and p.suffix in CONTENT_TYPES and not p.name.startswith(".")
    }


def add_ui_routes(app: web.Application, folder: Path = STATIC_DIR) -> None:
    """Register the web UI's routes on the TCP listener's ``app``."""
    app[UI_FILES] = static_files(folder)
    app.router.add_get("/ui", redirect_to_index)
    app.router.add_get("/ui/", get_index)
    app.router.add_get("/ui/data/digits-test.json", get_digits_test)
    app.router.add_get("/ui/{file}", get_file)


async def redirect_to_index(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/ui/")


async def get_index(request: web.Request) -> web.StreamResponse:
    return serve(request, "index.html")


async def get_file(request: web.Request) -> web.StreamResponse:
    return serve(request, request.match_info["file"])


def serve(request: web.Request, name: str) -> web.StreamResponse:
    """The file ``name`` of the UI folder, or 404."""
    path = request.app[UI_FILES].get(name)
    if path is None:
        raise UnknownFile(f"the web UI has no file {name[:80]!r}")
    headers = {**SECURITY_HEADERS, "Content-Type": CONTENT_TYPES[path.suffix]}
    return web.FileResponse(path, headers=headers)


async def get_digits_test(request: web.Request) -> web.Response:
    return web.Response(
        body=digits_test_json(),
        headers={**SECURITY_HEADERS, "Content-Type": "application/json"},
    )


@functools.cache
def digits_test_json() -> bytes:
    """The bundled test split as JSON: ``images`` (N lists of 64 pixels, 0..16, row by
    row), ``labels`` (N classes), ``shape`` and ``pixel_max`` (the pixels are divided by
    it before the first layer, as :func:`peerprog.reference.digits.predict` does)."""
    x, y = digits.load_test_split()
    doc = {
        "name": digits.MODEL_NAME,
        "shape": list(x.shape[1:]),
        "pixel_max": 16,
        "labels": y.tolist(),
        "images": x.reshape(len(x), -1).tolist(),
    }
    return json.dumps(doc, separators=(",", ":")).encode()
