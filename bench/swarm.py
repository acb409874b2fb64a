"""Swarm benchmark: real daemons on loopback against plain HTTP, measured in the same run.

1. One edge from one seed, no caps: an app's request to a running edge until the model is
   exact, against plain downloads of the same number of bytes in the same run (nginx,
   ``sendfile on``, and ``curl`` to /dev/null and to a file then ``sync``), and the CPU
   seconds per GB the edge and the seed spend; medians of ``--repeat`` runs of each.
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
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench.baseline import Nginx, aiohttp_null, cpu_seconds, curl_files
from bench.codec import synthetic
from bench.report import machine, table, write_section
from peerprog.formats import write_safetensors
from peerprog.node.ratelimit import TokenBucket, throttle
from tests.integration.cluster import Cluster, Daemon, free_port, wait_until

NAME = "bench-model"


async def http_download(path: Path, clients: int, upload_cap: int) -> float:
    """Seconds for ``clients`` concurrent plain HTTP downloads of ``path`` read by clients in
    this process, with a shared ``upload_cap`` (bytes/s) on the server, like the seed's."""
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


def _hidden(hidden: bool) -> dict[str, dict[str, object]] | None:
    """Config of an edge that announces an address nothing listens on."""
    return {"node": {"public_url": f"http://127.0.0.1:{free_port()}"}} if hidden else None


def swarm_run(
    root: Path,
    model: Path,
    edges: int,
    upload_cap: int,
    *,
    asked: bool = False,
    chunk_size: int = 256 * 1024,
    undiallable: int = 0,
) -> dict[str, Any]:
    """Edges started together, wanting the model from the start; or, ``asked``, running
    edges that an app then asks for it (then also the time from the request to the model
    complete, and the CPU seconds the edges and the seed used meanwhile). The first
    ``undiallable`` edges announce an address nothing listens on (as behind a NAT)."""
    with Cluster(root) as c:
        pub = c.publish(model, name=NAME, chunk_size=chunk_size)
        seed = c.start(c.seed(upload_bytes_per_s=upload_cap))
        want = [] if asked else [NAME]
        nodes = [
            c.start(
                c.node(f"edge{i}", want=want, bootstrap=[seed], extra=_hidden(i < undiallable)),
                wait=False,
            )
            for i in range(edges)
        ]
        for n in nodes:
            c.wait_ready(n)
        cpu0 = [cpu_seconds(n.pid) for n in (seed, *nodes)]
        asked_at = time.perf_counter()
        if asked:
            for n in nodes:
                assert n.request("PUT", f"/v1/models/{NAME}").status in (200, 202)
        for n in nodes:
            wait_complete(n, 600)
        request_s = time.perf_counter() - asked_at
        cpu = [cpu_seconds(n.pid) - c0 for n, c0 in zip((seed, *nodes), cpu0, strict=True)]
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
        channel_bytes = [
            n.request("GET", "/v1/status").json()["channels"]["bytes_sent"]
            for n in nodes[:undiallable]
        ]
        return {
            "edges": edges,
            "undiallable": undiallable,
            "undiallable_sent_bytes": sum(channel_bytes),
            "upload_cap": upload_cap,
            "total_bytes": pub["total_bytes"],
            "source_bytes": pub["source_bytes"],
            "level0_bytes": pub["levels"][0]["bytes"],
            "seed_upload_bytes": seed_up,
            "seed_upload_over_model": seed_up / pub["total_bytes"],
            "all_exact_s": max(e["exact_at"] for e in per_edge) - t0,
            "request_to_complete_s": request_s,
            "seed_cpu_s": cpu[0],
            "edges_cpu_s": sum(cpu[1:]),
            "per_edge": per_edge,
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--weights", type=int, default=12_000_000, help="synthetic model size")
    ap.add_argument("--cap", type=int, default=20_000_000, help="seed upload cap, bytes/s")
    ap.add_argument("--edges", default="1,2,4,8")
    ap.add_argument("--repeat", type=int, default=3, help="runs of the uncapped case")
    ap.add_argument("--chunk-kib", type=int, default=256, help="chunk size of the uncapped case")
    ap.add_argument(
        "--reach",
        type=int,
        default=0,
        metavar="K",
        help="only the NAT case: 1 edge, 8 edges, 8 edges of which K cannot be dialled",
    )
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    if args.reach:
        reach(args)
        return
    with tempfile.TemporaryDirectory(prefix="pp-bench-") as tmp:
        root = Path(tmp)
        model = root / "model.safetensors"
        write_safetensors(model, synthetic(args.weights))
        chunk = args.chunk_kib * 1024
        runs = [
            swarm_run(root / f"uncapped{i}", model, 1, 0, asked=True, chunk_size=chunk)
            for i in range(args.repeat)
        ]
        total = runs[0]["total_bytes"]
        docs = root / "docs"  # plain downloads of a file the size of the encoded model
        docs.mkdir()
        same = docs / "same-bytes.bin"
        same.write_bytes(os.urandom(total))
        null, synced, aio = [], [], []
        with Nginx(docs, root / "nginx") as web:
            for _ in range(args.repeat):
                null.append(curl_files(web.url, [same.name], None)["curl_s"])
                aio.append(aiohttp_null(f"{web.url}/{same.name}"))
                out = root / "plain"
                synced.append(curl_files(web.url, [same.name], out)["synced_s"])
                shutil.rmtree(out)
        med = statistics.median
        request_s = med(r["request_to_complete_s"] for r in runs)
        transfer_s = med(r["per_edge"][0]["exact_s"] for r in runs)
        gb = total / 1e9
        throughput = {
            "bytes": total,
            "chunk_size": chunk,
            "runs": args.repeat,
            "request_to_complete_s_each": [r["request_to_complete_s"] for r in runs],
            "transfer_s_each": [r["per_edge"][0]["exact_s"] for r in runs],
            "curl_null_s_each": null,
            "curl_synced_s_each": synced,
            "aiohttp_null_s_each": aio,
            "aiohttp_null_s": med(aio),
            "request_to_complete_s": request_s,
            "transfer_s": transfer_s,
            "curl_null_s": med(null),
            "curl_synced_s": med(synced),
            "transfer_over_null": med(null) / transfer_s,
            "request_over_null": med(null) / request_s,
            "request_over_synced": request_s / med(synced),
            "edge_cpu_s_per_GB": med(r["edges_cpu_s"] for r in runs) / gb,
            "seed_cpu_s_per_GB": med(r["seed_cpu_s"] for r in runs) / gb,
        }
        same.unlink()
        same = root / "same-bytes.bin"
        same.write_bytes(b"\0" * total)
        capped = []
        for n in (int(x) for x in args.edges.split(",")):
            run = swarm_run(root / f"capped{n}", model, n, args.cap)
            run["client_server_s"] = asyncio.run(http_download(same, n, args.cap))
            capped.append(run)
    doc = {"machine": machine(), "throughput": throughput, "capped": capped}
    print(json.dumps(doc, indent=2))
    if args.write:
        write_section("swarm", markdown(doc, args))


def reach(args: argparse.Namespace) -> None:
    """Seed capped, 8 edges all diallable vs ``args.reach`` of them not, and one edge alone;
    ``args.repeat`` rounds, each case once per round; medians."""
    cases = [(1, 0), (8, 0), (8, args.reach)]
    runs: dict[tuple[int, int], list[dict[str, Any]]] = {k: [] for k in cases}
    with tempfile.TemporaryDirectory(prefix="pp-bench-") as tmp:
        root = Path(tmp)
        model = root / "model.safetensors"
        write_safetensors(model, synthetic(args.weights))
        for r in range(args.repeat):
            for edges, hidden in cases:
                where = root / f"reach{r}-{edges}-{hidden}"
                runs[(edges, hidden)].append(
                    swarm_run(where, model, edges, args.cap, undiallable=hidden)
                )
    med = statistics.median
    one = med(x["per_edge"][0]["exact_s"] for x in runs[(1, 0)])
    doc: dict[str, Any] = {"machine": machine(), "one_edge_exact_s": one, "cases": []}
    for (edges, hidden), xs in runs.items():
        doc["cases"].append(
            {
                "edges": edges,
                "undiallable": hidden,
                "all_exact_s_each": [x["all_exact_s"] for x in xs],
                "all_exact_s": med(x["all_exact_s"] for x in xs),
                "all_exact_over_one": med(x["all_exact_s"] for x in xs) / one,
                "seed_upload_over_model": med(x["seed_upload_over_model"] for x in xs),
                "undiallable_sent_over_model": med(
                    x["undiallable_sent_bytes"] / x["total_bytes"] for x in xs
                ),
                "total_bytes": xs[0]["total_bytes"],
            }
        )
    print(json.dumps(doc, indent=2))
    if args.write:
        write_section("reach", reach_markdown(doc, args))


def reach_markdown(doc: dict[str, Any], args: argparse.Namespace) -> str:
    rows = [
        [
            c["edges"],
            c["undiallable"],
            f"{c['all_exact_s']:.2f}",
            f"{c['all_exact_over_one']:.2f}×",
            f"{c['seed_upload_over_model']:.2f}×",
            f"{c['undiallable_sent_over_model']:.2f}×" if c["undiallable"] else "",
        ]
        for c in doc["cases"]
    ]
    total = doc["cases"][0]["total_bytes"]
    return "\n".join(
        [
            "## Edges behind a NAT: uploading over reverse channels\n",
            f"Reproduce: `.venv/bin/python -m bench.swarm --reach {args.reach} --repeat "
            f"{args.repeat} --write` (machine: {doc['machine']}). Real daemons on loopback, "
            f"a synthetic model of {total / 1e6:.1f} MB encoded (chunks of 256 KiB), seed "
            f"upload capped at {args.cap / 1e6:.0f} MB/s; an undiallable edge announces an "
            "address nothing listens on, finds out by its peers' dial-back and serves them "
            f"over reverse channels. Medians of {args.repeat} rounds (each case once per "
            "round); times from the first edge's first chunk request to the last edge's "
            f"exact model, against one edge alone ({doc['one_edge_exact_s']:.2f} s):\n",
            table(
                [
                    "edges",
                    "undiallable",
                    "all exact (s)",
                    "× one edge",
                    "seed upload / model",
                    "undiallable edges' channel upload / model",
                ],
                rows,
            ),
        ]
    )


def markdown(doc: dict[str, Any], args: argparse.Namespace) -> str:
    th = doc["throughput"]
    extra = f" --chunk-kib {args.chunk_kib}" if args.chunk_kib != 256 else ""
    cmd = f"`.venv/bin/python -m bench.swarm{extra} --write`"
    parts = [
        "## Swarm: daemons on loopback vs plain HTTP\n",
        f"Reproduce: {cmd} (machine: {doc['machine']}). A synthetic model of "
        f"{args.weights:,} float32 weights ({th['bytes'] / 1e6:.1f} MB encoded); times "
        "of the capped runs from an edge's first chunk request to its last level (daemon "
        "metrics, chunks of 256 KiB).\n",
        "**One edge from one seed, no caps** "
        f"(chunks of {th['chunk_size'] // 1024} KiB): an app asks a running edge for the model; "
        "the edge's transfer (its first chunk request to exact, daemon metrics) and the app's "
        "request → complete, against plain downloads of the same number of bytes in the "
        "same run (nginx with `sendfile on`, `curl` to /dev/null and to a file then `sync`); "
        f"medians of {th['runs']} runs each:\n",
        table(
            ["", "seconds", "MB/s", "vs curl to /dev/null (throughput)", "vs curl synced"],
            [
                [
                    "peerprog: the edge's transfer",
                    f"{th['transfer_s']:.3f}",
                    f"{th['bytes'] / th['transfer_s'] / 1e6:.0f}",
                    f"{th['transfer_over_null']:.0%}",
                    "",
                ],
                [
                    "peerprog: the app's request → complete",
                    f"{th['request_to_complete_s']:.3f}",
                    f"{th['bytes'] / th['request_to_complete_s'] / 1e6:.0f}",
                    f"{th['request_over_null']:.0%}",
                    f"{th['request_over_synced']:.2f}×",
                ],
                [
                    "nginx → curl to /dev/null",
                    f"{th['curl_null_s']:.3f}",
                    f"{th['bytes'] / th['curl_null_s'] / 1e6:.0f}",
                    "100%",
                    "",
                ],
                [
                    "nginx → an aiohttp client (peerprog's transport), bytes dropped",
                    f"{th['aiohttp_null_s']:.3f}",
                    f"{th['bytes'] / th['aiohttp_null_s'] / 1e6:.0f}",
                    f"{th['curl_null_s'] / th['aiohttp_null_s']:.0%}",
                    "",
                ],
                [
                    "nginx → curl to a file, synced",
                    f"{th['curl_synced_s']:.3f}",
                    f"{th['bytes'] / th['curl_synced_s'] / 1e6:.0f}",
                    "",
                    "1.00×",
                ],
            ],
        )
        + f"\n\nCPU per GB delivered: the edge {th['edge_cpu_s_per_GB']:.2f} s, the seed "
        f"{th['seed_cpu_s_per_GB']:.2f} s (user + system, from the app's request to "
        "complete).\n",
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
