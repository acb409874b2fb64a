"""Swarm benchmark: real daemons on loopback against plain HTTP, measured in the same run.

1. One edge from one seed, no caps: an app's request to a running edge until the model is
   exact, against a plain HTTP download of the same bytes from a static server (aiohttp,
   sendfile); the median of ``--repeat`` runs of each.
2. Seed upload capped, N = 1, 2, 4, 8 edges: time to level 0 and to exact on every edge,
   the seed's upload bytes; beside it the client-server baseline (N plain HTTP downloads of
   the same bytes sharing the same capped upload).
3. Time to a usable model (level 0) vs to the exact model on a capped link (from run 2, N=1).

Prints JSON; ``--write`` also updates the swarm section of BENCHMARKS.md.

    .venv/bin/python -m bench.swarm --write
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench.codec import synthetic
from bench.report import machine, table, write_section
from peerprog.formats import write_safetensors
from peerprog.node.ratelimit import TokenBucket, throttle
from tests.integration.cluster import Cluster, Daemon, free_port, wait_until

NAME = "bench-model"


async def http_download(path: Path, clients: int, upload_cap: int) -> float:
    """Seconds for ``clients`` concurrent plain HTTP downloads of ``path``; a shared
    ``upload_cap`` (bytes/s, 0 = none) on the server, like the seed's. One uncapped
    download is ``curl`` writing the file (as peerprog writes and verifies what it gets);
    several are read by clients in this process."""
    bucket = TokenBucket(upload_cap)

    async def serve(request: web.Request) -> web.StreamResponse:
        if bucket.unlimited:
            return web.FileResponse(path)
        resp = web.StreamResponse()
        resp.content_length = path.stat().st_size
        await resp.prepare(request)
        with open(path, "rb") as f:
            while piece := f.read(65536):
                await throttle(bucket, len(piece))
                await resp.write(piece)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/model", serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()

    async def one(session: aiohttp.ClientSession) -> int:
        n = 0
        async with session.get(f"http://127.0.0.1:{port}/model") as resp:
            async for piece in resp.content.iter_chunked(1 << 20):
                n += len(piece)
        return n

    try:
        if clients == 1 and bucket.unlimited:  # what a user does: curl it to a file
            out = path.with_suffix(".curl")
            t0 = time.perf_counter()
            curl = await asyncio.create_subprocess_exec(
                "curl", "-sf", "-o", str(out), f"http://127.0.0.1:{port}/model"
            )
            assert await curl.wait() == 0
            elapsed = time.perf_counter() - t0
            sizes = [out.stat().st_size]
            out.unlink()
        else:
            async with aiohttp.ClientSession() as session:
                t0 = time.perf_counter()
                sizes = await asyncio.gather(*(one(session) for _ in range(clients)))
                elapsed = time.perf_counter() - t0
    finally:
        await runner.cleanup()
    assert all(s == path.stat().st_size for s in sizes)
    return elapsed


def transfers(node: Daemon, model_id: str) -> dict[str, Any]:
    doc: dict[str, Any] = node.request("GET", "/v1/status").json()["transfers"][model_id]
    return doc


def wait_complete(node: Daemon, timeout: float) -> None:
    def done() -> bool:
        ans = node.request("GET", f"/v1/models/{NAME}")
        return ans.status == 200 and bool(ans.json().get("complete"))

    wait_until(done, timeout, f"{node.name} to complete", every=0.1)


def swarm_run(
    root: Path, model: Path, edges: int, upload_cap: int, *, asked: bool = False
) -> dict[str, Any]:
    """Edges started together, wanting the model from the start; or, ``asked``, running
    edges that an app then asks for it."""
    with Cluster(root) as c:
        pub = c.publish(model, name=NAME, chunk_size=256 * 1024)
        seed = c.start(c.seed(upload_bytes_per_s=upload_cap))
        want = [] if asked else [NAME]
        nodes = [
            c.start(c.node(f"edge{i}", want=want, bootstrap=[seed]), wait=False)
            for i in range(edges)
        ]
        for n in nodes:
            c.wait_ready(n)
        if asked:
            for n in nodes:
                assert n.request("PUT", f"/v1/models/{NAME}").status in (200, 202)
        for n in nodes:
            wait_complete(n, 600)
        last = str(len(pub["levels"]) - 1)
        per_edge = []
        for n in nodes:
            t = transfers(n, pub["model_id"])
            start = t["first_request_at"]["0"]
            per_edge.append(
                {
                    "start": start,
                    "level0_s": t["level_complete_at"]["0"] - start,
                    "exact_s": t["level_complete_at"][last] - start,
                    "exact_at": t["level_complete_at"][last],
                    "bytes_by_source": t["bytes_by_source"],
                }
            )
        seed_up = seed.request("GET", "/v1/status").json()["bytes_uploaded"]
        t0 = min(e["start"] for e in per_edge)
        return {
            "edges": edges,
            "upload_cap": upload_cap,
            "total_bytes": pub["total_bytes"],
            "source_bytes": pub["source_bytes"],
            "level0_bytes": pub["levels"][0]["bytes"],
            "seed_upload_bytes": seed_up,
            "seed_upload_over_model": seed_up / pub["total_bytes"],
            "all_exact_s": max(e["exact_at"] for e in per_edge) - t0,
            "per_edge": per_edge,
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--weights", type=int, default=12_000_000, help="synthetic model size")
    ap.add_argument("--cap", type=int, default=20_000_000, help="seed upload cap, bytes/s")
    ap.add_argument("--edges", default="1,2,4,8")
    ap.add_argument("--repeat", type=int, default=3, help="runs of the uncapped case")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="pp-bench-") as tmp:
        root = Path(tmp)
        model = root / "model.safetensors"
        write_safetensors(model, synthetic(args.weights))
        # plain HTTP of a file the size of the encoded model ("the same bytes")
        runs = [
            swarm_run(root / f"uncapped{i}", model, 1, 0, asked=True) for i in range(args.repeat)
        ]
        total = runs[0]["total_bytes"]
        same = root / "same-bytes.bin"
        same.write_bytes(b"\0" * total)
        http = [asyncio.run(http_download(same, 1, 0)) for _ in range(args.repeat)]
        each = [r["per_edge"][0]["exact_s"] for r in runs]
        edge_s = statistics.median(each)
        http_s = statistics.median(http)
        throughput = {
            "bytes": total,
            "runs": args.repeat,
            "peerprog_s_each": each,
            "http_s_each": http,
            "peerprog_s": edge_s,
            "peerprog_MB_per_s": total / edge_s / 1e6,
            "http_s": http_s,
            "http_MB_per_s": total / http_s / 1e6,
            "ratio": http_s / edge_s,
        }
        capped = []
        for n in (int(x) for x in args.edges.split(",")):
            run = swarm_run(root / f"capped{n}", model, n, args.cap)
            run["client_server_s"] = asyncio.run(http_download(same, n, args.cap))
            capped.append(run)
    doc = {"machine": machine(), "throughput": throughput, "capped": capped}
    print(json.dumps(doc, indent=2))
    if args.write:
        write_section("swarm", markdown(doc, args))


def markdown(doc: dict[str, Any], args: argparse.Namespace) -> str:
    th = doc["throughput"]
    cmd = "`.venv/bin/python -m bench.swarm --write`"
    parts = [
        "## Swarm: daemons on loopback vs plain HTTP\n",
        f"Reproduce: {cmd} (machine: {doc['machine']}). A synthetic model of "
        f"{args.weights:,} float32 weights ({th['bytes'] / 1e6:.1f} MB encoded, "
        "chunks of 256 KiB); times from an edge's first chunk request to its last level "
        "(daemon metrics).\n",
        "**One edge from one seed, no caps**: an app asks a running edge for the model "
        "(timed from the edge's first chunk request to exact), vs a plain HTTP download "
        "(`curl`) of the same number of bytes from an aiohttp static server in the same "
        f"run; medians of {th['runs']} runs each:\n",
        table(
            ["", "seconds", "MB/s"],
            [
                ["peerprog edge", f"{th['peerprog_s']:.2f}", f"{th['peerprog_MB_per_s']:.0f}"],
                ["plain HTTP", f"{th['http_s']:.2f}", f"{th['http_MB_per_s']:.0f}"],
            ],
        )
        + f"\n\npeerprog reaches {th['ratio']:.0%} of plain HTTP throughput.\n",
        f"**Seed upload capped at {args.cap / 1e6:.0f} MB/s**, N edges started together; "
        "client–server baseline: N plain HTTP downloads of the same bytes sharing the same "
        "capped upload:\n",
    ]
    rows = []
    one = doc["capped"][0]["per_edge"][0]["exact_s"]
    for r in doc["capped"]:
        lv0 = [e["level0_s"] for e in r["per_edge"]]
        ex = [e["exact_s"] for e in r["per_edge"]]
        rows.append(
            [
                r["edges"],
                f"{min(lv0):.2f}–{max(lv0):.2f}",
                f"{min(ex):.2f}–{max(ex):.2f}",
                f"{r['all_exact_s']:.2f} ({r['all_exact_s'] / one:.2f}×)",
                f"{r['seed_upload_over_model']:.2f}×",
                f"{r['client_server_s']:.2f}",
            ]
        )
    parts.append(
        table(
            [
                "edges",
                "level 0 per edge (s)",
                "exact per edge (s)",
                "all exact (× one edge)",
                "seed upload / model",
                "client–server all done (s)",
            ],
            rows,
        )
    )
    r1 = doc["capped"][0]["per_edge"][0]
    parts.append(
        f"\nOn the capped link (N = 1), level 0 ({doc['capped'][0]['level0_bytes'] / 1e6:.1f} MB) "
        f"arrives after {r1['level0_s']:.2f} s, {r1['level0_s'] / r1['exact_s']:.0%} of the "
        f"{r1['exact_s']:.2f} s to the exact model.\n"
    )
    return "\n".join(parts)


if __name__ == "__main__":
    main()
