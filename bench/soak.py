"""Soak run: 8 edges, 3 models, peers joining and leaving at random for a set time.

One seed (upload capped) publishes three models; every edge wants all three and has its
own download cap (a bad network: 200 KB/s to 1.5 MB/s). For ``--duration`` seconds, at
random moments, a running edge leaves (SIGKILL or SIGTERM) or a stopped one comes back
(now and then with its store wiped: a new node joining); halfway through, a new version of
one model is published. Then every edge is started and must end with every model exact.

Reported: completion (per edge and model, bit for bit against the published files), bytes
received by source (seed, peer, web seed; summed over every life of every edge, sampled
every ``--every`` seconds), errors (error lines and tracebacks in the logs, daemons that
died on their own, chunks that failed verification), and memory over time (RSS of every
edge, and the seed's).

    .venv/bin/python bench/soak.py --duration 600 --write    # updates RELIABILITY.md

Not part of ``make test``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script

from bench.report import ROOT, machine, table, write_section
from peerprog.formats import parse_safetensors
from tests.integration.cluster import (
    REFERENCE_MODEL,
    REFERENCE_NAME,
    Cluster,
    Daemon,
)

RELIABILITY = ROOT / "RELIABILITY.md"
MB = 1 << 20


def synthetic_model(path: Path, n_weights: int, seed: int) -> Path:
    """A few float32 layers of normal weights, as .npz."""
    rng = np.random.default_rng(seed)
    rows = 512
    arrays = {}
    for i in range(max(1, n_weights // (rows * 512))):
        w = rng.standard_normal((rows, 512), dtype=np.float32) / np.float32(np.sqrt(512))
        arrays[f"layer{i}.weight"] = w
        arrays[f"layer{i}.bias"] = rng.standard_normal(rows, dtype=np.float32) * 0.01
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def tensors_digest(data: bytes) -> str:
    """A digest of a safetensors file's tensors (names, dtypes, shapes, bytes)."""
    tensors, _ = parse_safetensors(data)
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}:{t.dtype}:{t.array.shape}".encode())
        h.update(t.array.tobytes())
    return h.hexdigest()


def file_digest(path: Path) -> str:
    from peerprog.formats import encode_safetensors, read_model

    return tensors_digest(b"".join(bytes(b) for b in encode_safetensors(read_model(path))))


@dataclass
class Life:
    """What one run of an edge daemon received (the last sample before it ended)."""

    by_source: dict[str, int] = field(default_factory=dict)
    chunks_failed: int = 0
    banned: int = 0


@dataclass
class Edge:
    daemon: Daemon
    lives: list[Life] = field(default_factory=list)
    kills: int = 0
    terms: int = 0
    wipes: int = 0
    died: int = 0
    rss: list[tuple[float, int]] = field(default_factory=list)


def sample(edge: Edge, t: float) -> None:
    """Record the edge's RSS and the transfer counters of its current life."""
    d = edge.daemon
    if not d.running:
        return
    try:
        edge.rss.append((t, psutil.Process(d.pid).memory_info().rss))
        status = d.request("GET", "/v1/status", timeout=5).json()
    except (OSError, psutil.Error, ValueError):
        return
    life = edge.lives[-1]
    life.by_source = dict(status["bytes_received_by_source"])
    life.chunks_failed = sum(t["chunks_failed"] for t in status["transfers"].values())
    life.banned = sum(len(t["peers_banned"]) for t in status["transfers"].values())


def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="peerprog-soak-"))
    started = time.monotonic()
    with Cluster(root) as c:
        sources = {
            REFERENCE_NAME: REFERENCE_MODEL,
            "soak-a": synthetic_model(root / "soak-a.npz", 1_000_000, 1),
            "soak-b": synthetic_model(root / "soak-b.npz", 2_000_000, 2),
        }
        published = {n: c.publish(p, name=n, chunk_size=65536) for n, p in sources.items()}
        seed = c.start(c.seed(upload_bytes_per_s=args.seed_upload))
        seed_rss: list[tuple[float, int]] = []
        seed_lives = [0]  # bytes the seed process uploaded, per life (it restarts once)
        edges: list[Edge] = []
        for i in range(args.edges):
            others = [e.daemon for e in edges[-2:]]
            d = c.node(
                f"edge{i}",
                want=list(sources),
                bootstrap=[seed, *others],
                download_bytes_per_s=rng.randrange(200_000, 1_500_000),
            )
            edges.append(Edge(d, [Life()]))
            c.start(d)
        events: list[dict[str, Any]] = []
        republished = False
        deadline = time.monotonic() + args.duration
        next_sample = time.monotonic()
        next_event = time.monotonic() + rng.expovariate(1 / args.churn)
        while time.monotonic() < deadline:
            now = time.monotonic()
            t = round(now - started, 1)
            if now >= next_sample:
                for e in edges:
                    sample(e, t)
                seed_rss.append((t, psutil.Process(seed.pid).memory_info().rss))
                seed_lives[-1] = seed.request("GET", "/v1/status").json()["bytes_uploaded"]
                next_sample = now + args.every
            if not republished and now > deadline - args.duration / 2:
                # a new version: published into the seed's store, which the seed reads at
                # start (it is restarted, as a publisher would)
                doc = c.publish(sources["soak-a"], name="soak-a", chunk_size=65536)
                published["soak-a"] = doc
                republished = True
                seed_lives[-1] = seed.request("GET", "/v1/status").json()["bytes_uploaded"]
                c.stop(seed)
                seed_lives.append(0)
                c.start(seed)
                events.append({"t": t, "event": "publish soak-a", "version": doc["version"]})
            if now >= next_event:
                e = rng.choice(edges)
                if e.daemon.running:
                    sample(e, t)
                    sig = signal.SIGKILL if rng.random() < 0.5 else signal.SIGTERM
                    code = c.stop(e.daemon, sig)
                    if sig == signal.SIGKILL:
                        e.kills += 1
                    else:
                        e.terms += 1
                        if code != 0:
                            e.died += 1
                    events.append({"t": t, "event": f"{e.daemon.name} leaves ({sig.name})"})
                else:
                    if e.daemon.proc is not None and rng.random() < args.wipe:
                        shutil.rmtree(e.daemon.data_dir, ignore_errors=True)
                        e.wipes += 1
                        events.append({"t": t, "event": f"{e.daemon.name} joins anew"})
                    else:
                        events.append({"t": t, "event": f"{e.daemon.name} comes back"})
                    e.lives.append(Life())
                    c.start(e.daemon)
                next_event = now + rng.expovariate(1 / args.churn)
            for e in edges:  # a daemon that died on its own
                if e.daemon.proc is not None and not e.daemon.running and e.daemon._log:
                    e.died += 1
                    c.stop(e.daemon)
            time.sleep(0.2)
        # the end: everyone back, everyone must complete every model exactly
        for e in edges:
            if not e.daemon.running:
                e.lives.append(Life())
                c.start(e.daemon)
        expected = {n: file_digest(p) for n, p in sources.items()}
        finish = time.monotonic() + args.finish
        completion: dict[str, dict[str, Any]] = {}
        while True:
            pending = False
            for e in edges:
                done = completion.setdefault(e.daemon.name, {})
                for name in sources:
                    if done.get(name):
                        continue
                    doc = e.daemon.request("GET", f"/v1/models/{name}").json()
                    if doc.get("complete") and doc.get("model_id") == published[name]["model_id"]:
                        best = e.daemon.request("GET", f"/v1/models/{name}/best?min_level=max")
                        done[name] = tensors_digest(best.body) == expected[name]
                    else:
                        pending = True
            if not pending or time.monotonic() > finish:
                break
            time.sleep(0.5)
        t = round(time.monotonic() - started, 1)
        for e in edges:
            sample(e, t)
        logs = {e.daemon.name: c.logs(e.daemon) for e in edges}
        logs["seed"] = c.logs(seed)
        seed_lives[-1] = seed.request("GET", "/v1/status").json()["bytes_uploaded"]
    if args.keep:
        print(f"logs kept in {root}", file=sys.stderr)
    else:
        shutil.rmtree(root, ignore_errors=True)
    return report(args, edges, completion, logs, events, sum(seed_lives), seed_rss, published)


def report(
    args: argparse.Namespace,
    edges: list[Edge],
    completion: dict[str, dict[str, Any]],
    logs: dict[str, str],
    events: list[dict[str, Any]],
    seed_uploaded: int,
    seed_rss: list[tuple[float, int]],
    published: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    by_source: dict[str, int] = {}
    for e in edges:
        for life in e.lives:
            for k, v in life.by_source.items():
                by_source[k] = by_source.get(k, 0) + v
    bad = {
        name: [line for line in text.splitlines() if " ERROR " in line or "Traceback" in line]
        for name, text in logs.items()
    }
    error_lines = {name: len(lines) for name, lines in bad.items()}
    error_samples = sorted({line[24:200] for lines in bad.values() for line in lines})[:20]
    timeline = []
    step = max(args.every, args.duration / 12)
    t_end = max((t for e in edges for t, _ in e.rss), default=0.0)
    mark = 0.0
    while mark <= t_end + step:
        window = [rss for e in edges for t, rss in e.rss if mark - step < t <= mark]
        seed_w = [rss for t, rss in seed_rss if mark - step < t <= mark]
        if window:
            timeline.append(
                {
                    "t": round(mark),
                    "edges_rss_max_mb": round(max(window) / MB, 1),
                    "edges_rss_mean_mb": round(sum(window) / len(window) / MB, 1),
                    "seed_rss_mb": round(max(seed_w) / MB, 1) if seed_w else None,
                }
            )
        mark += step
    complete = sum(1 for d in completion.values() for ok in d.values() if ok)
    return {
        "machine": machine(),
        "duration_s": args.duration,
        "edges": args.edges,
        "models": {
            n: {"bytes": d["total_bytes"], "version": d["version"]} for n, d in published.items()
        },
        "seed_upload_cap": args.seed_upload,
        "churn_mean_s": args.churn,
        "sample_every_s": args.every,
        "leaves_sigkill": sum(e.kills for e in edges),
        "leaves_sigterm": sum(e.terms for e in edges),
        "joins_with_wiped_store": sum(e.wipes for e in edges),
        "lives": sum(len(e.lives) for e in edges),
        "completion": {
            "exact": complete,
            "of": len(edges) * len(published),
            "per_edge": completion,
        },
        "bytes_by_source": by_source,
        "seed_uploaded": seed_uploaded,
        "errors": {
            "error_log_lines": error_lines,
            "error_samples": error_samples,
            "daemons_died_on_their_own": sum(e.died for e in edges),
            "chunks_failed": sum(life.chunks_failed for e in edges for life in e.lives),
            "peers_banned": sum(life.banned for e in edges for life in e.lives),
        },
        "rss_max_mb": {
            e.daemon.name: round(max((r for _, r in e.rss), default=0) / MB, 1) for e in edges
        },
        "memory_over_time": timeline,
        "events": events,
    }


def markdown(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    models = ", ".join(
        f"{n} ({d['bytes'] / MB:.1f} MB, v{d['version']})" for n, d in doc["models"].items()
    )
    src = doc["bytes_by_source"]
    total = sum(src.values()) or 1
    errs = doc["errors"]
    sources: list[list[object]] = [
        [f"bytes received, source kind {k}", f"{v / MB:.1f} MB ({v / total:.0%})"]
        for k, v in src.items()
    ]
    lines = [
        f"Soak: {doc['edges']} edges, 3 models ({models}), {doc['duration_s']} s of churn "
        f"(an event every {doc['churn_mean_s']} s on average), seed upload capped at "
        f"{doc['seed_upload_cap'] / 1e6:.1f} MB/s; Python {m['python']}, {m['cpus']} CPUs, "
        f"commit {m['commit']}.",
        "",
        table(
            ["figure", "value"],
            [
                ["edge lives (starts)", doc["lives"]],
                ["left by SIGKILL / SIGTERM", f"{doc['leaves_sigkill']} / {doc['leaves_sigterm']}"],
                ["joined with a wiped store", doc["joins_with_wiped_store"]],
                [
                    "models exact at the end",
                    f"{doc['completion']['exact']} of {doc['completion']['of']}",
                ],
                *sources,
                ["bytes uploaded by the publisher's seed", f"{doc['seed_uploaded'] / MB:.1f} MB"],
                ["error lines in logs (all daemons)", sum(errs["error_log_lines"].values())],
                ["daemons that died on their own", errs["daemons_died_on_their_own"]],
                ["chunks that failed verification", errs["chunks_failed"]],
                ["largest edge RSS", f"{max(doc['rss_max_mb'].values())} MB"],
            ],
        ),
        "",
        "Bytes received are summed over every life of every edge from samples taken every "
        f"{doc['sample_every_s']:g} s (the last seconds of a life ended by SIGKILL are "
        "missing, as are chunks in flight at a kill, which the seed did upload). Source "
        "kinds are as the receiving node counts them: `seed` is a node that announced it "
        "holds the whole model since its start (the publisher's seed, and edges restarted "
        "after completing), `peer` any other node, including the seed before its announce "
        "is heard.",
        "",
        "Memory over time (RSS, MB; the last row includes every edge decoding its three "
        "models for the final bit-for-bit check):",
        "",
        table(
            ["t (s)", "edges, max", "edges, mean", "seed"],
            [
                [p["t"], p["edges_rss_max_mb"], p["edges_rss_mean_mb"], p["seed_rss_mb"]]
                for p in doc["memory_over_time"]
            ],
        ),
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=300.0, help="seconds of churn")
    ap.add_argument("--edges", type=int, default=8)
    ap.add_argument("--churn", type=float, default=4.0, help="mean seconds between events")
    ap.add_argument("--wipe", type=float, default=0.2, help="chance a returning edge is new")
    ap.add_argument("--seed-upload", type=int, default=2_000_000, help="bytes/s")
    ap.add_argument("--every", type=float, default=2.0, help="seconds between samples")
    ap.add_argument("--finish", type=float, default=180.0, help="seconds allowed at the end")
    ap.add_argument("--seed", type=int, default=1, help="random seed")
    ap.add_argument("--write", action="store_true", help="update RELIABILITY.md")
    ap.add_argument("--keep", action="store_true", help="keep the daemons' folders and logs")
    args = ap.parse_args()
    doc = run(args)
    print(json.dumps({k: v for k, v in doc.items() if k != "events"}, indent=2))
    if args.write:
        write_section("soak", markdown(doc), path=RELIABILITY)


if __name__ == "__main__":
    main()
