"""BitTorrent benchmark: a stock libtorrent client fetching a model's torrent from a
peerprog node (its peer port as a BEP 19 web seed) against the same client fetching it from
a stock libtorrent seeder (a BitTorrent peer), on the same capped link, in the same run.

The model: ``--mib`` MiB (default 128) of 8192×2048 bf16 weight matrices with per-row
scales (:func:`bench.size.make_model`), published with the automatic chunk size. A peerprog
seed daemon serves its store; a libtorrent session seeds the same level files (seed mode,
from the seed's store folder); a static nginx over the store is a third source (a mirror).
The link is capped at ``--cap`` MB/s (default 25): ``tc`` shapes what the three sources send
on loopback (root needed). The client is a fresh libtorrent session each time, given one
source only. Then, in each run, a peerprog edge (``[bittorrent]`` on) whose only source of
chunks is the libtorrent seeder (its manifest and torrent from an nginx mirror holding no
level) is timed from an app's request to every chunk verified and recorded, with the time
its level 0 was complete; the target compares it with the stock client's time from the
same seeder. Each source is
timed ``--runs`` times (default 3), the sources taking turns; medians are reported, with
every run, and the files checked against the store's.

    .venv/bin/python -m bench.bittorrent --write
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.baseline import Nginx
from bench.report import machine, table, write_section
from bench.size import make_model
from peerprog.api.client import Client
from peerprog.manifest import chunk_size_for
from peerprog.manifest.torrent import Torrent
from peerprog.store import Store
from peerprog.store.torrents import stored_torrent
from tests.bt import mirror_without_levels
from tests.integration.cluster import Cluster, Daemon

NAME = "bt"
SOURCES = ("libtorrent seeder", "peerprog node (web seed)", "nginx mirror (web seed)")
EDGE = "peerprog edge from the libtorrent seeder"


def lt_module() -> Any:
    import libtorrent

    return libtorrent


def session() -> Any:
    """A loopback libtorrent session (no DHT, LSD, UPnP, NAT-PMP)."""
    lt = lt_module()
    return lt.session(
        {
            "enable_dht": False,
            "enable_lsd": False,
            "enable_upnp": False,
            "enable_natpmp": False,
            "listen_interfaces": "127.0.0.1:0",
            "alert_mask": lt.alert_category.error | lt.alert_category.status,
        }
    )


class LinkCap:
    """Loopback traffic sent from ``ports`` shaped to ``rate`` bytes/s (Linux ``tc``: an
    HTB class the ports' packets go through; everything else passes a class of 100 Gbit/s),
    removed on exit. Needs root."""

    def __init__(self, ports: list[int], rate: int) -> None:
        self.ports, self.rate = ports, rate

    def __enter__(self) -> LinkCap:
        bits = self.rate * 8
        commands = [
            "qdisc add dev lo root handle 1: htb default 10",
            "class add dev lo parent 1: classid 1:10 htb rate 100gbit quantum 200000",
            f"class add dev lo parent 1: classid 1:20 htb rate {bits}bit quantum 200000",
        ]
        commands += [
            f"filter add dev lo protocol ip parent 1: prio 1 u32 match ip sport {port} 0xffff "
            "flowid 1:20"
            for port in self.ports
        ]
        try:
            for command in commands:
                subprocess.run(["tc", *command.split()], check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError) as e:
            self.__exit__()
            err = getattr(e, "stderr", b"") or b""
            raise SystemExit(
                f"cannot shape loopback with tc (root needed): {err.decode()}"
            ) from None
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["tc", "qdisc", "del", "dev", "lo", "root"], capture_output=True)


def add(ses: Any, torrent: Torrent, save: Path, *, seed: bool = False) -> Any:
    lt = lt_module()
    params = lt.add_torrent_params()
    params.ti = lt.torrent_info(torrent.to_bytes())
    params.save_path = str(save)
    if seed:
        params.flags |= lt.torrent_flags.seed_mode
    return ses.add_torrent(params)


def fetch(torrent: Torrent, save: Path, peer: int | None, timeout: float) -> float:
    """Seconds for a fresh client to have every piece of ``torrent`` on disk, from its web
    seeds, or from the BitTorrent peer at 127.0.0.1:``peer``."""
    lt = lt_module()
    ses = session()
    t0 = time.perf_counter()
    h = add(ses, torrent, save)
    if peer is not None:
        h.connect_peer(("127.0.0.1", peer))
    deadline = t0 + timeout
    while h.status().state != lt.torrent_status.seeding:
        if time.perf_counter() > deadline:
            raise RuntimeError(f"no complete download in {timeout} s: {h.status().progress:.2%}")
        ses.wait_for_alert(50)
        ses.pop_alerts()
    seconds = time.perf_counter() - t0
    h.flush_cache()
    ses.remove_torrent(h)
    return seconds


def edge_fetch(edge: Daemon, model_id: str) -> tuple[float, float]:
    """An app asks a running edge for the model: (seconds until it holds every chunk,
    seconds until its level 0 was complete)."""
    client = Client(edge.socket, timeout=600)
    t0, wall0 = time.perf_counter(), time.time()
    client.want(NAME)
    deadline = t0 + 600
    while not client.status(NAME).get("complete"):
        if time.perf_counter() > deadline:
            raise RuntimeError("the edge did not complete in 600 s")
        time.sleep(0.02)
    seconds = time.perf_counter() - t0
    t = edge.request("GET", "/v1/status").json()["transfers"][model_id]
    others = {k: v for k, v in t["bytes_by_source"].items() if k != "bittorrent" and v}
    if others:
        raise RuntimeError(f"the edge got bytes from other sources: {others}")
    return seconds, t["level_complete_at"]["0"] - wall0


def same_files(store: Store, model_id: str, levels: int, save: Path) -> bool:
    for n in range(levels):
        got = save / model_id / "levels" / str(n)
        want = store.level_path(model_id, n)
        if hashlib.sha256(got.read_bytes()).digest() != hashlib.sha256(want.read_bytes()).digest():
            return False
    return True


def run(root: Path, mib: int, cap: int, runs: int) -> dict[str, Any]:
    src = root / "src"
    src.mkdir()
    tensors = max(1, mib * (1 << 20) // (8192 * 2048 * 2))
    model_bytes = make_model(src / "model.safetensors", tensors)
    times: dict[str, list[float]] = {s: [] for s in (*SOURCES, EDGE)}
    level0_times: list[float] = []
    exact = True
    with Cluster(root / "cluster") as c:
        chunk = chunk_size_for(model_bytes)  # the automatic size
        doc = c.publish(src / "model.safetensors", name=NAME, chunk_size=chunk)
        mid = doc["model_id"]
        store = Store(c.seed_store, create=False)
        signed = store.load_manifest(mid, None)
        levels = signed.manifest.levels_total
        base = stored_torrent(store, signed)
        assert base is not None
        bare = dataclasses.replace(base, web_seeds=())
        node = c.start(c.seed())
        seeder = session()
        seeding = add(seeder, bare, c.seed_store / "models", seed=True)
        with Nginx(c.seed_store, root / "nginx") as web:
            sources = {
                SOURCES[0]: (bare, seeder.listen_port()),
                SOURCES[1]: (bare.with_web_seeds([f"{node.url}/p2p/v1/models/"]), None),
                SOURCES[2]: (bare.with_web_seeds([f"{web.url}/models/"]), None),
            }
            ports = [seeder.listen_port(), node.port, int(web.url.rsplit(":", 1)[1])]
            mirror = mirror_without_levels(c.seed_store, NAME, mid, root / "mirror")
            with LinkCap(ports, cap), Nginx(mirror, root / "nginx-mirror") as meta:
                for run_no in range(runs):
                    for name, (torrent, peer) in sources.items():
                        save = root / "client"
                        times[name].append(fetch(torrent, save, peer, 600))
                        exact = exact and same_files(store, mid, levels, save)
                        shutil.rmtree(save)
                    bt = {"enabled": True, "listen": "127.0.0.1:0", "dht": False}
                    bt["peers"] = [f"127.0.0.1:{seeder.listen_port()}"]
                    edge = c.start(
                        c.node(f"edge{run_no}", web_seeds=[meta.url], extra={"bittorrent": bt})
                    )
                    seconds, level0 = edge_fetch(edge, mid)
                    times[EDGE].append(seconds)
                    level0_times.append(level0)
                    exact = exact and same_files(store, mid, levels, edge.data_dir / "models")
                    c.stop(edge)
                    shutil.rmtree(edge.data_dir)
        seeder.remove_torrent(seeding)
        c.stop(node)
    med = {s: statistics.median(v) for s, v in times.items()}
    stream = signed.manifest.total_bytes
    return {
        "model_bytes": model_bytes,
        "stream_bytes": stream,
        "chunk_size": signed.manifest.chunk_size,
        "pieces": len(signed.manifest.chunks),
        "cap_MBps": cap / 1e6,
        "runs": runs,
        "seconds": med,
        "seconds_runs": times,
        "MBps": {s: stream / t / 1e6 for s, t in med.items()},
        "node_over_seeder": med[SOURCES[0]] / med[SOURCES[1]],
        "edge_over_client": med[EDGE] / med[SOURCES[0]],
        "edge_level0_s": statistics.median(level0_times),
        "edge_level0_runs": level0_times,
        "mirror_over_seeder": med[SOURCES[0]] / med[SOURCES[2]],
        "bit_exact": exact,
    }


def markdown(doc: dict[str, Any]) -> str:
    r = doc["result"]
    rows = []
    for s in SOURCES:
        runs = ", ".join(f"{t:.2f}" for t in r["seconds_runs"][s])
        rows.append([s, f"{r['seconds'][s]:.2f} s [{runs}]", f"{r['MBps'][s]:.1f} MB/s"])
    edge_runs = ", ".join(f"{t:.2f}" for t in r["seconds_runs"][EDGE])
    edge = r["edge_over_client"]
    rows.append(
        [
            f"{EDGE} (BitTorrent only; manifest and torrent from a mirror without levels)",
            f"{r['seconds'][EDGE]:.2f} s [{edge_runs}]; level 0 at {r['edge_level0_s']:.2f} s",
            f"{r['stream_bytes'] / r['seconds'][EDGE] / 1e6:.1f} MB/s",
        ]
    )
    ratio = r["node_over_seeder"]
    verdict = "met" if ratio >= 0.9 else "missed"
    return (
        "## BitTorrent: a stock libtorrent client fetching from a peerprog node\n\n"
        f"`python -m bench.bittorrent --write` (JSON in `bench/results/bittorrent.json`; machine: "
        f"{doc['machine']}). A {r['model_bytes'] / 2**20:.0f} MiB bf16 model, its stream "
        f"{r['stream_bytes'] / 1e6:.1f} MB in {r['pieces']} pieces of "
        f"{r['chunk_size'] // 1024} KiB; every source's uplink shaped to "
        f"{r['cap_MBps']:.0f} MB/s on loopback (`tc`), a fresh libtorrent 2.1.1 client given "
        f"one source at a time; medians of {r['runs']} runs, "
        "the sources taking turns; every download checked byte for byte "
        f"({'all exact' if r['bit_exact'] else 'NOT EXACT'}).\n\n"
        + table(["source", "time to every piece [runs]", "throughput"], rows)
        + f"\n\nFrom a peerprog node: **{ratio:.0%}** of what the client gets from a libtorrent "
        f"seeder on the same capped link (target ≥ 90%: {verdict}); from an nginx mirror of "
        f"the store: {r['mirror_over_seeder']:.0%}. A peerprog edge whose only source is "
        f"the libtorrent seeder: **{edge:.2f}×** the stock client's time from the same seeder "
        f"(target ≤ 1.3×: {'met' if edge <= 1.3 else 'missed'}), the app's request to every "
        "chunk verified and recorded.\n"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=128, help="model size in MiB (default 128)")
    ap.add_argument("--cap", type=float, default=25, help="client download cap, MB/s")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="pp-bt-", dir=args.dir))
    try:
        doc = {"machine": machine(), "result": run(root, args.mib, int(args.cap * 1e6), args.runs)}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(doc, indent=2))
    if args.write:
        Path("bench/results/bittorrent.json").write_text(json.dumps(doc, indent=2) + "\n")
        write_section("bittorrent", markdown(doc))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
