"""Benchmark of the local API's ``best``: latency and daemon memory, for a ~100 MB model.

In one run: a float32 model of about ``--mb`` MB is written as a safetensors file and
published into a store; a daemon serves that store. Then:

* disk: ``safetensors.numpy.load_file`` of the file (page cache warm), best of ``--repeat``;
* best: ``Client.best`` over the unix socket (numpy arrays mapping the received file),
  once the exact level's decoded file exists;
* memory: the daemon's RSS while idle, while ``--clients`` clients read ``best`` at once
  as soon as the daemon starts (the decode to disk included), and again once the decoded
  file exists (the cost of the clients alone). Clients read and discard, so only the
  daemon's memory is measured.

Targets: best latency ≤ 2× the disk read; memory growth with the clients ≤ 1.5× one copy
of the model. Prints JSON; ``--write`` also updates the "Local API" section of
BENCHMARKS.md (between ``<!-- bench:api -->`` and ``<!-- /bench:api -->``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from peerprog.api.client import Client  # noqa: E402
from peerprog.codec import RawTensor  # noqa: E402
from peerprog.formats import write_safetensors  # noqa: E402
from tests.integration.cluster import Cluster  # noqa: E402

NAME = "bench-model"
BEGIN, END = "<!-- bench:api -->", "<!-- /bench:api -->"
MB = 1_000_000


def make_model(mb: float, seed: int = 0) -> dict[str, RawTensor]:
    """Float32 weights like a network's (normal, small), in 8 MB matrices plus biases."""
    rng = np.random.default_rng(seed)
    tensors: dict[str, RawTensor] = {}
    n_layers = max(1, round(mb * MB / (1024 * 2048 * 4)))
    for i in range(n_layers):
        w = rng.standard_normal((1024, 2048), dtype=np.float32) * np.float32(0.02)
        tensors[f"layers.{i}.weight"] = RawTensor("float32", w)
        b = rng.standard_normal(1024, dtype=np.float32) * np.float32(0.01)
        tensors[f"layers.{i}.bias"] = RawTensor("float32", b)
    return tensors


class RssSampler:
    """Samples a process's RSS every few milliseconds in a thread; keeps the peak."""

    def __init__(self, pid: int, every: float = 0.005) -> None:
        import psutil

        self.proc = psutil.Process(pid)
        self.every = every
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        return int(self.proc.memory_info().rss)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.every)

    def __enter__(self) -> RssSampler:
        self.peak = self.rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


async def read_best_many(socket: Path, clients: int) -> list[int]:
    """``clients`` concurrent ``best`` requests, each read in 1 MiB pieces and discarded."""
    import aiohttp

    async def one(session: aiohttp.ClientSession) -> int:
        got = 0
        async with session.get(f"http://localhost/v1/models/{NAME}/best") as resp:
            assert resp.status == 200, resp.status
            async for piece in resp.content.iter_chunked(1 << 20):
                got += len(piece)
        return got

    connector = aiohttp.UnixConnector(path=str(socket), limit=0)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        return list(await asyncio.gather(*(one(session) for _ in range(clients))))


def settle(sampler: RssSampler, seconds: float = 1.0) -> int:
    time.sleep(seconds)
    return sampler.rss()


def timed(fn: Any, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def run(mb: float, clients: int, repeat: int) -> dict[str, Any]:
    import safetensors.numpy

    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp, Cluster(Path(tmp)) as c:
        tensors = make_model(mb)
        model_bytes = sum(t.nbytes for t in tensors.values())
        src = Path(tmp) / "model.safetensors"
        file_bytes = write_safetensors(src, tensors)
        del tensors
        published = c.publish(src, name=NAME, chunk_size=256 * 1024)
        seed = c.start(c.seed())
        client = Client(seed.socket, timeout=600)
        sampler = RssSampler(seed.pid)
        idle = settle(sampler)

        # 1. clients at once as the daemon starts (the decode to disk is part of it)
        with RssSampler(seed.pid) as cold:
            t0 = time.perf_counter()
            sizes = asyncio.run(read_best_many(seed.socket, clients))
            cold_burst_s = time.perf_counter() - t0
        assert set(sizes) == {sizes[0]}
        built = settle(sampler)

        # 2. latency: best (warm) vs the same file from disk (page cache warm)
        src.read_bytes()
        disk = timed(lambda: safetensors.numpy.load_file(src), repeat)
        best = timed(lambda: client.best(NAME), repeat)
        first = client.best(NAME)
        assert first.exact and first.level == first.levels_total - 1

        # 3. clients at once with the decoded file built (the clients' own cost)
        with RssSampler(seed.pid) as warm:
            t0 = time.perf_counter()
            asyncio.run(read_best_many(seed.socket, clients))
            warm_burst_s = time.perf_counter() - t0
        status = client.node_status()
        assert c.stop(seed) == 0

    disk_s = min(disk)
    best_s = min(best)
    warm_growth = warm.peak - built
    cold_growth = cold.peak - idle
    return {
        "model": {
            "tensors": len(first.tensors),
            "model_bytes": model_bytes,
            "file_bytes": file_bytes,
            "published_bytes": published["total_bytes"],
            "levels": len(published["levels"]),
        },
        "latency_s": {
            "disk_load_file": round(disk_s, 4),
            "disk_load_file_median": round(statistics.median(disk), 4),
            "best": round(best_s, 4),
            "best_median": round(statistics.median(best), 4),
            "best_over_disk": round(best_s / disk_s, 2),
            "best_throughput_mb_s": round(file_bytes / best_s / MB, 1),
        },
        "daemon_rss_bytes": {
            "idle": idle,
            "decoded_built": built,
            "decoded_over_model": round((built - idle) / model_bytes, 2),
            "cold_burst_peak": cold.peak,
            "cold_burst_growth_over_model": round(cold_growth / model_bytes, 2),
            "warm_burst_peak": warm.peak,
            "warm_burst_growth": warm_growth,
            "warm_burst_growth_over_model": round(warm_growth / model_bytes, 2),
        },
        "clients": clients,
        "burst_s": {"cold": round(cold_burst_s, 2), "warm": round(warm_burst_s, 2)},
        "burst_mb_s": round(clients * file_bytes / warm_burst_s / MB, 1),
        "decoded_builds": status["api"]["snapshots_built"],
        "targets": {
            "latency_le_2x_disk": best_s <= 2 * disk_s,
            "warm_growth_le_1_5x_model": warm_growth <= 1.5 * model_bytes,
            "cold_growth_le_1_5x_model": cold_growth <= 1.5 * model_bytes,
        },
    }


def markdown(doc: dict[str, Any]) -> str:
    m, lat, rss = doc["model"], doc["latency_s"], doc["daemon_rss_bytes"]
    size = m["model_bytes"] / MB

    def ok(flag: bool) -> str:
        return "yes" if flag else "**no**"

    t = doc["targets"]
    return "\n".join(
        [
            "## Local API",
            "",
            f"`python bench/api.py` — `best` of a {size:.0f} MB float32 model "
            f"({m['tensors']} tensors, {m['levels']} levels) from a daemon on the same "
            "machine, against reading the same safetensors file from disk (page cache warm). "
            f"{doc['clients']} clients read at once; they discard what they read, so only "
            "the daemon's memory is measured.",
            "",
            "| measure | value | target | met |",
            "| --- | --- | --- | --- |",
            f"| `safetensors.numpy.load_file` (disk) | {lat['disk_load_file'] * 1000:.0f} ms | | |",
            f"| `Client.best` (decoded file built) | {lat['best'] * 1000:.0f} ms "
            f"({lat['best_throughput_mb_s']:.0f} MB/s) | | |",
            f"| best / disk | {lat['best_over_disk']:.2f}× | ≤ 2× | "
            f"{ok(t['latency_le_2x_disk'])} |",
            f"| daemon RSS growth, {doc['clients']} clients, decoded file built | "
            f"{rss['warm_burst_growth'] / MB:.0f} MB = "
            f"{rss['warm_burst_growth_over_model']:.2f}× the model | ≤ 1.5× | "
            f"{ok(t['warm_growth_le_1_5x_model'])} |",
            f"| daemon RSS growth from idle, {doc['clients']} clients, first request "
            f"(decode and build included) | "
            f"{rss['cold_burst_growth_over_model']:.2f}× the model | ≤ 1.5× | "
            f"{ok(t['cold_growth_le_1_5x_model'])} |",
            f"| daemon RSS after the build, over idle | "
            f"{rss['decoded_over_model']:.2f}× the model | | |",
            f"| {doc['clients']} clients × {size:.0f} MB | {doc['burst_s']['warm']:.1f} s "
            f"({doc['burst_mb_s']:.0f} MB/s) | | |",
            "",
            "Each level is decoded once, tensor by tensor, into a safetensors file on disk; "
            "every `best` answer is that file sent by `sendfile`, so clients cost the daemon "
            "almost nothing and the decode holds about one tensor at a time. `Client.best` "
            "reads the answer into a file and maps it.",
            "",
        ]
    )


def write_section(path: Path, section: str) -> None:
    """Replace (or add) this benchmark's section of BENCHMARKS.md."""
    block = f"{BEGIN}\n{section}{END}\n"
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        text = head + block + tail.lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=100.0, help="model size in MB")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()
    doc = run(args.mb, args.clients, args.repeat)
    print(json.dumps(doc, indent=2))
    if args.write:
        write_section(ROOT / "BENCHMARKS.md", markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
