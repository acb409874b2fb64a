"""A static web seed that answers ``Range`` requests in one of several ways, for tests.

    python -m tests.integration.webseed --root STORE --port P --mode MODE [--log FILE]

Modes: ``range`` (206, as nginx or S3 do); ``whole`` (ignores ``Range``: 200 with the
whole file); ``gzip`` (every answer gzip-compressed, ranges included, though the client
asks for identity); ``short`` (the first answers of each level end half-way, the
connection closed); ``garbage`` (level bytes are random, of the right length);
``refuse`` (416 for every range). Names and manifests are served as they are (gzip-coded in
``gzip`` mode). With ``--log``, one line per request: ``METHOD PATH [RANGE]``.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import os
from pathlib import Path

from aiohttp import web

from peerprog.sendfile import parse_range

MODES = ("range", "whole", "gzip", "short", "garbage", "refuse")


def build(root: Path, mode: str, log: Path | None) -> web.Application:
    logfile = open(log, "a", buffering=1) if log else None  # noqa: SIM115 - lives with the app
    cut: dict[str, int] = {}

    async def serve(request: web.Request) -> web.StreamResponse:
        rel = request.match_info["path"]
        rng = request.headers.get("Range")
        if logfile is not None:
            logfile.write(f"{request.method} /{rel}{' ' + rng if rng else ''}\n")
        path = (root / rel).resolve()
        if not path.is_relative_to(root.resolve()) or not path.is_file():
            raise web.HTTPNotFound()
        data = path.read_bytes()
        is_level = "/levels/" in f"/{rel}"
        status, headers = 200, {"Content-Type": "application/octet-stream"}
        if is_level and rng is not None and mode != "whole":
            if mode == "refuse":
                raise web.HTTPRequestRangeNotSatisfiable()
            start, stop = parse_range(rng, len(data)) or (0, len(data))
            headers["Content-Range"] = f"bytes {start}-{stop - 1}/{len(data)}"
            data, status = data[start:stop], 206
        if is_level and mode == "garbage":
            data = os.urandom(len(data))
        if mode == "gzip":
            data = gzip.compress(data, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        if is_level and mode == "short" and cut.get(rel, 0) < 2:
            cut[rel] = cut.get(rel, 0) + 1
            resp = web.StreamResponse(status=status, headers=headers)
            resp.content_length = len(data)
            await resp.prepare(request)
            await resp.write(data[: len(data) // 2])
            assert request.transport is not None
            request.transport.close()  # the connection drops mid-answer
            return resp
        return web.Response(status=status, headers=headers, body=data)

    app = web.Application()
    app.router.add_get("/{path:.+}", serve)
    return app


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--mode", choices=MODES, required=True)
    ap.add_argument("--log", default="")
    args = ap.parse_args()
    app = build(Path(args.root), args.mode, Path(args.log) if args.log else None)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.port).start()
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
