"""Hostile peers for fault tests: a real HTTP server speaking the peer protocol, badly.

    python -m tests.faults.hostile --store DIR --port P --mode MODE

It serves the models of a published store under ``/p2p/v1/`` like an honest peer, except:

* ``corrupt``: every answer has one bit flipped;
* ``oversize``: every answer is longer than the range asked for;
* ``drip``: chunks are sent a few bytes at a time, very slowly;
* ``silent``: accepts connections and never answers;
* ``liar``: claims (``have``) every chunk but answers 404 for them;
* ``garbage``: ``have`` and ``announce`` answers are random bytes, truncated msgpack;
* ``flood``: announces thousands of fake peers and models to the victim (``--victim URL``)
  and answers the victim's own announces with as many;
* ``squat``: claims the store's names for 200 fake versions (ids that are no manifest's
  hash), newer than the real ones; their manifests never come, or come as garbage;
* ``honest``: serves like a peer should (to count what a victim asks for, with ``--log``);
* ``hub``: a peer the victim (a node no one can dial) opens its reverse channel to: it says
  it cannot dial the victim back, and over each channel the victim opens it sends one
  kind of garbage in turn (a malformed frame, a message over the size limit, a flood of
  streams of junk requests and of requests it never reads the answer of).

With ``--hide URL --victim V`` the peer announces ``URL`` (an address nothing listens on,
as a node behind a NAT would) to the victim and serves the victim over a reverse channel
it holds to it (``CHANNEL <what>`` lines in the log), in whatever mode it runs.

With ``--log FILE`` every request is appended to FILE as ``METHOD PATH [RANGE]`` (flushed
at once, so a test can read it while the victim runs).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
from pathlib import Path

import aiohttp
from aiohttp import ClientSession, web
from aiohttp.typedefs import Handler

from peerprog.manifest.canonical import pack
from peerprog.node.mux import DATA, MESSAGE_MAX, WS_MAX_MSG_SIZE, Channel, server_protocols
from peerprog.sendfile import parse_range
from peerprog.store import Store
from peerprog.swarm import Bitfield

MODES = (
    "corrupt",
    "oversize",
    "drip",
    "silent",
    "liar",
    "garbage",
    "flood",
    "squat",
    "honest",
    "hub",
)


def fake_announce(rng: random.Random, node: str, url: str) -> bytes:
    """An announce naming 1000 fake models and 1000 fake peers."""
    models = [
        {
            "name": f"fake-{rng.randrange(10**6)}",
            "model_id": rng.randbytes(32).hex(),
            "version": rng.randrange(1000),
        }
        for _ in range(1000)
    ]
    peers = [
        {"node": f"p{i}", "url": f"http://127.0.0.{rng.randrange(2, 250)}:{i + 1}"}
        for i in range(1000)
    ]
    return pack({"node": node, "url": url, "models": models, "peers": peers})


def build(store: Store, mode: str, url: str, log: Path | None = None) -> web.Application:
    logfile = open(log, "a", buffering=1) if log else None  # noqa: SIM115 - lives with the app

    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        if logfile is not None:
            rng = request.headers.get("Range", "")
            logfile.write(f"{request.method} {request.path}{' ' + rng if rng else ''}\n")
        return await handler(request)

    app = web.Application(middlewares=[record])
    rng = random.Random(1)
    fakes = [rng.randbytes(32).hex() for _ in range(200)]

    def model(request: web.Request) -> str:
        mid = request.match_info["mid"]
        if mode in ("flood", "squat") or not store.has_manifest(mid):  # they hold no model
            raise web.HTTPNotFound()
        return mid

    async def silent_wait() -> None:
        await asyncio.sleep(3600)

    async def name(request: web.Request) -> web.StreamResponse:
        if mode == "silent":
            await silent_wait()
        mid = store.resolve(request.match_info["name"])
        if mid is None or mode == "flood":
            raise web.HTTPNotFound()
        if mode == "garbage":  # 64 characters, but no model id: a path to climb out
            return web.Response(text=("../" * 22)[:64])
        if mode == "squat":
            return web.Response(text=fakes[0])
        return web.Response(text=mid)

    async def manifest(request: web.Request) -> web.StreamResponse:
        if mode == "silent":
            await silent_wait()
        if mode == "squat" and request.match_info["mid"] in fakes:
            if fakes.index(request.match_info["mid"]) % 2:
                await silent_wait()
            return web.Response(body=store.read_manifest_bytes(next(iter(store.names().values()))))
        return web.Response(body=store.read_manifest_bytes(model(request)))

    async def have(request: web.Request) -> web.StreamResponse:
        if mode == "silent":
            await silent_wait()
        mid = model(request)
        n = len(store.load_manifest(mid, None).manifest.chunks)
        if mode == "garbage":
            return web.Response(body=os.urandom(random.randrange(1, 64)))
        return web.Response(body=pack({"count": n, "bitfield": Bitfield.full(n).to_bytes()}))

    async def level(request: web.Request) -> web.StreamResponse:
        mid = model(request)
        path = store.level_path(mid, int(request.match_info["level"]))
        if not path.is_file() or mode == "liar":
            raise web.HTTPNotFound()
        size = path.stat().st_size
        span = parse_range(request.headers.get("Range"), size) or (0, size)
        with open(path, "rb") as f:
            f.seek(span[0])
            data = f.read(span[1] - span[0])
        if mode == "silent":
            await silent_wait()
        status = 206 if "Range" in request.headers else 200
        headers = {"Content-Range": f"bytes {span[0]}-{span[1] - 1}/{size}"}
        if mode == "corrupt":
            b = bytearray(data)
            b[len(b) // 2] ^= 0x01
            return web.Response(status=status, headers=headers, body=bytes(b))
        if mode == "oversize":
            return web.Response(status=status, body=data + os.urandom(len(data) + 4096))
        if mode == "drip":
            resp = web.StreamResponse(status=status, headers=headers)
            resp.content_length = len(data)
            await resp.prepare(request)
            for i in range(0, len(data), 8):
                await resp.write(data[i : i + 8])
                await asyncio.sleep(0.5)
            return resp
        return web.Response(status=status, headers=headers, body=data)

    async def announce(request: web.Request) -> web.StreamResponse:
        await request.read()
        if mode == "silent":
            await silent_wait()
        if mode == "garbage":
            return web.Response(body=pack({"node": "x", "url": url, "models": [{}]})[:-3])
        if mode == "flood":
            return web.Response(body=fake_announce(rng, "flood", url))
        if mode == "squat":
            models = [
                {"name": n, "model_id": f, "version": 1000 + i}
                for n in store.names()
                for i, f in enumerate(fakes)
            ]
            return web.Response(body=pack({"node": "squat", "url": url, "models": models}))
        if mode == "hub":  # "I could not dial you back": the victim opens its channel here
            return web.Response(
                body=pack(
                    {"node": "hub", "url": url, "models": [], "peers": [], "dial_back": False}
                )
            )
        return web.Response(body=pack({"node": "hostile", "url": url, "models": [], "peers": []}))

    hub_rounds = 0

    async def node(request: web.Request) -> web.StreamResponse:
        return web.Response(body=pack({"node": mode, "url": url, "models": [], "peers": []}))

    async def channel(request: web.Request) -> web.StreamResponse:
        """``hub``: take the victim's reverse channel and abuse it, one way per channel."""
        nonlocal hub_rounds
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        kind = hub_rounds % 3
        hub_rounds += 1
        if logfile is not None:
            logfile.write(f"HUB {kind}\n")
        if kind == 0:
            await ws.send_bytes(b"\x00\x01")  # shorter than a frame head
        elif kind == 1:
            await ws.send_bytes(b"\x00\x00\x00\x01\x00" + b"x" * (2 * MESSAGE_MAX))
        else:
            head = "GET /p2p/v1/models/{}/levels/0 HTTP/1.1\r\nHost: x\r\n\r\n"
            for sid in range(1, 400):
                junk = b"\x00\xff junk \r\n\r\n" if sid % 2 else head.format("0" * 64).encode()
                await ws.send_bytes(sid.to_bytes(4, "big") + bytes([DATA]) + junk)
        async for _ in ws:  # never read the answers: the victim's queue fills up
            await asyncio.sleep(3600)
        return ws

    app.router.add_get("/p2p/v1/node", node)
    if mode == "hub":
        app.router.add_get("/p2p/v1/channel", channel)
    app.router.add_get("/p2p/v1/names/{name}", name)
    app.router.add_get("/p2p/v1/models/{mid}/manifest.msgpack", manifest)
    app.router.add_get("/p2p/v1/models/{mid}/have", have)
    app.router.add_get("/p2p/v1/models/{mid}/levels/{level}", level)
    app.router.add_post("/p2p/v1/announce", announce)
    return app


async def flood(victim: str, url: str, rounds: int, log: Path | None) -> None:
    """Announce thousands of fake peers and models to ``victim`` (``PUSH <status>`` lines
    in the log)."""
    rng = random.Random(0)
    async with ClientSession() as s:
        for r in range(rounds):
            body = fake_announce(rng, f"flood{r}", f"http://127.0.0.1:{40000 + r}")
            async with s.post(victim.rstrip("/") + "/p2p/v1/announce", data=body) as resp:
                await resp.read()
            if log is not None:
                with open(log, "a") as f:
                    f.write(f"PUSH {resp.status}\n")


async def hide(runner: web.AppRunner, victim: str, url: str, log: Path | None) -> None:
    """Announce ``url`` to the victim and serve it over a reverse channel, again whenever
    the channel closes or is refused."""

    def note(what: str) -> None:
        if log is not None:
            with open(log, "a") as f:
                f.write(f"CHANNEL {what}\n")

    hello = pack({"node": "hidden", "url": url, "models": [], "peers": [], "reachable": False})
    async with ClientSession() as s:
        while True:
            try:
                async with s.post(victim + "/p2p/v1/announce", data=hello) as resp:
                    await resp.read()
                async with s.ws_connect(
                    victim + "/p2p/v1/channel",
                    headers={"Peerprog-Node": url},
                    max_msg_size=WS_MAX_MSG_SIZE,
                ) as ws:
                    note("open")
                    await Channel(ws, serve=server_protocols(runner)).run()
                    note("closed")
            except aiohttp.WSServerHandshakeError as e:
                note(str(e.status))
            except (aiohttp.ClientError, OSError) as e:
                note(type(e).__name__)
            await asyncio.sleep(0.5)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--mode", choices=MODES, required=True)
    ap.add_argument("--victim", default="")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--log", default="")
    ap.add_argument("--hide", default="", help="announce this URL; serve over a reverse channel")
    args = ap.parse_args()
    url = args.hide or f"http://127.0.0.1:{args.port}"
    store = Store(Path(args.store), create=False)
    log = Path(args.log) if args.log else None
    runner = web.AppRunner(build(store, args.mode, url, log))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.port).start()
    if args.hide:
        await hide(runner, args.victim.rstrip("/"), url, log)
    if args.mode == "flood" and args.victim:
        await flood(args.victim, url, args.rounds, log)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
