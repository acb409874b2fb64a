"""Size benchmark: a synthetic LLM-shaped bf16 model of a few GiB, one seed and one edge on
loopback, against a plain static download of the same file in the same run.

The model: ``--gib`` GiB (default 2) of 8192×2048 bfloat16 weight matrices (32 MiB each),
each row with its own scale (log-normal, σ = 1), as trained weight matrices have. Measured
(``--runs`` times, default 3; medians):

* ``peerprog publish`` (once): seconds, MB/s of source, peak RSS (its own, from wait4);
* the plain downloads (:mod:`bench.baseline`): nginx (``sendfile on``) → ``curl`` to a file,
  then ``sync`` (what a user gets), and → ``curl`` to /dev/null (the network's limit);
* an app's request to a fresh edge (``PUT /v1/models/<name>``) → the model complete;
* ``best?min_level=max`` to a file (``Client.best_path``, fsynced) right after;
* the edges' peak RSS (VmHWM), and that every file is bit-exact.

Prints JSON; ``--write`` also updates the size section of BENCHMARKS.md. Everything is made
in a temporary folder (``--dir``) that is removed at the end.

    .venv/bin/python -m bench.size --write            # 2 GiB
    .venv/bin/python -m bench.size --gib 14 --write   # 14 GiB
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.baseline import Nginx, cpu_seconds, curl_files
from bench.report import machine, table, write_section
from peerprog.api.client import Client
from tests.integration.cluster import Cluster, wait_until

NAME = "llm"
ROWS, COLS = 8192, 2048
GIB = 1 << 30


def make_model(path: Path, tensors: int, seed: int = 0) -> int:
    """Write the synthetic model as safetensors, one tensor at a time; returns its size."""
    rng = np.random.default_rng(seed)
    per = ROWS * COLS * 2
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    for k in range(tensors):
        header[f"layers.{k // 4}.w{k % 4}"] = {
            "dtype": "BF16",
            "shape": [ROWS, COLS],
            "data_offsets": [k * per, (k + 1) * per],
        }
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for _ in range(tensors):
            scale = np.exp(rng.standard_normal(ROWS, dtype=np.float32)) * 0.02
            w = rng.standard_normal((ROWS, COLS), dtype=np.float32) * scale[:, None]
            bits = w.view(np.uint32)
            bits += 0x7FFF + ((bits >> 16) & 1)  # round to nearest even, as torch does
            f.write((bits >> 16).astype(np.uint16).tobytes())
    return path.stat().st_size


def run_measured(args: list[str]) -> tuple[float, int, str]:
    """Run a command; (seconds, its peak RSS in bytes, its stdout)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    out = proc.stdout.read().decode() if proc.stdout else ""
    err = proc.stderr.read().decode() if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"{args[:4]} exited {proc.returncode}: {err[-2000:]}")
    return seconds, usage.ru_maxrss * 1024, out


def vm_hwm(pid: int) -> int:
    """A live process's peak resident set, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for {pid}")


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    return h.hexdigest()


def tensor_digest(path: Path) -> str:
    """SHA-256 of a safetensors file's data section (the tensors' bytes)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        f.seek(8 + n)
        h = hashlib.sha256()
        while block := f.read(1 << 24):
            h.update(block)
    return h.hexdigest()


def run(root: Path, tensors: int, runs: int) -> dict[str, Any]:
    """Publish once; then ``runs`` times each: the plain downloads, and a fresh edge's
    request → complete → ``best?min_level=max`` to a file. Times are medians."""
    src_dir = root / "src"
    src_dir.mkdir()
    model = src_dir / "model.safetensors"
    size = make_model(model, tensors)
    want = tensor_digest(model)
    synced, null = [], []
    with Nginx(src_dir, root / "nginx") as web:
        for _ in range(runs):
            out = root / "plain"
            synced.append(curl_files(web.url, [model.name], out)["synced_s"])
            shutil.rmtree(out)
            null.append(curl_files(web.url, [model.name], None)["curl_s"])
    complete, best, exact = [], [], True
    edge_cpu, seed_cpu = [], []
    with Cluster(root / "cluster") as c:
        key = c.key_path
        c.public_key  # noqa: B018 - make the key
        args = [sys.executable, "-m", "peerprog", "publish", str(model), "--name", NAME]
        args += ["--key", str(key), "--store", str(c.seed_store), "--json"]
        publish_s, publish_rss, out_json = run_measured(args)
        pub = json.loads(out_json)
        seed = c.start(c.seed())
        edge_rss = 0
        for i in range(runs):
            edge = c.start(c.node(f"edge{i}", bootstrap=[seed]))
            client = Client(edge.socket, timeout=600)
            cpu0 = cpu_seconds(edge.pid), cpu_seconds(seed.pid)
            t0 = time.perf_counter()
            client.want(NAME)

            def done(client: Client = client) -> bool:
                return bool(client.status(NAME).get("complete"))

            wait_until(done, 3600, "the edge to complete", every=0.02)
            complete.append(time.perf_counter() - t0)
            edge_cpu.append(cpu_seconds(edge.pid) - cpu0[0])
            seed_cpu.append(cpu_seconds(seed.pid) - cpu0[1])
            best_out = root / "best.safetensors"
            t0 = time.perf_counter()
            got = client.best_path(NAME, best_out, min_level="max", wait=3600)
            best.append(time.perf_counter() - t0)
            exact = exact and got.exact and tensor_digest(best_out) == want
            del got
            best_out.unlink()
            edge_rss = max(edge_rss, vm_hwm(edge.pid))
            status = edge.request("GET", "/v1/status").json()
            c.stop(edge)
            shutil.rmtree(edge.data_dir, ignore_errors=True)  # its store and decoded level
        seed_rss = vm_hwm(seed.pid)
        c.stop(seed)
    synced_s, null_s = statistics.median(synced), statistics.median(null)
    complete_s, best_s = statistics.median(complete), statistics.median(best)
    return {
        "model_bytes": size,
        "tensors": tensors,
        "runs": runs,
        "stream_bytes": pub["total_bytes"],
        "levels": [lv["bytes"] for lv in pub["levels"]],
        "plain_synced_s": synced_s,
        "plain_synced_runs": synced,
        "plain_null_s": null_s,
        "plain_null_runs": null,
        "publish_s": publish_s,
        "publish_MBps": size / publish_s / 1e6,
        "publish_peak_rss": publish_rss,
        "publish_rss_over_model": publish_rss / size,
        "request_to_complete_s": complete_s,
        "request_to_complete_runs": complete,
        "complete_over_synced": complete_s / synced_s,
        "complete_over_null": complete_s / null_s,
        "wire_MBps": pub["total_bytes"] / complete_s / 1e6,
        "plain_null_MBps": size / null_s / 1e6,
        "wire_over_null": (pub["total_bytes"] / complete_s) / (size / null_s),
        "edge_cpu_s_per_GB": statistics.median(edge_cpu) / (pub["total_bytes"] / 1e9),
        "seed_cpu_s_per_GB": statistics.median(seed_cpu) / (pub["total_bytes"] / 1e9),
        "best_to_file_s": best_s,
        "best_to_file_runs": best,
        "best_over_synced": best_s / synced_s,
        "best_over_null": best_s / null_s,
        "edge_peak_rss": edge_rss,
        "edge_rss_over_model": edge_rss / size,
        "seed_peak_rss": seed_rss,
        "bit_exact": exact,
        "edge_store_error": status["store_error"],
    }


def markdown(doc: dict[str, Any], args: argparse.Namespace) -> str:
    r = doc["result"]
    size = r["model_bytes"]
    budget = 0.25 * size + 512 * 2**20
    gib = size / GIB

    def mib(n: float) -> str:
        return f"{n / 2**20:,.0f} MiB"

    rows = [
        [
            "plain download: nginx → curl to a file, synced",
            f"{r['plain_synced_s']:.2f} s",
            "1.0×",
            "",
        ],
        [
            "plain download: nginx → curl to /dev/null",
            f"{r['plain_null_s']:.2f} s",
            f"{r['plain_null_s'] / r['plain_synced_s']:.2f}×",
            "",
        ],
        [
            "`peerprog publish`",
            f"{r['publish_s']:.1f} s ({r['publish_MBps']:.0f} MB/s)",
            "",
            f"≥ 200 MB/s: {'met' if r['publish_MBps'] >= 200 else 'missed'}",
        ],
        [
            "publish peak RSS",
            mib(r["publish_peak_rss"]),
            f"{r['publish_rss_over_model']:.3f}× the model",
            f"≤ {mib(budget)}: {'met' if r['publish_peak_rss'] <= budget else 'missed'}",
        ],
        [
            "app's request to a running edge → complete",
            f"{r['request_to_complete_s']:.2f} s",
            f"{r['complete_over_synced']:.2f}× ({r['complete_over_null']:.2f}× /dev/null)",
            f"≤ 1.0×: {'met' if r['complete_over_synced'] <= 1.0 else 'missed'}",
        ],
        [
            "its wire throughput (stream bytes / that time)",
            f"{r['wire_MBps']:.0f} MB/s",
            f"{r['wire_over_null']:.0%} of /dev/null's {r['plain_null_MBps']:.0f} MB/s",
            f"≥ 90%: {'met' if r['wire_over_null'] >= 0.9 else 'missed'}",
        ],
        [
            "CPU per GB of stream: edge / seed",
            f"{r['edge_cpu_s_per_GB']:.2f} / {r['seed_cpu_s_per_GB']:.2f} s",
            "",
            "",
        ],
        [
            "then `best?min_level=max` to a file (fsynced)",
            f"{r['best_to_file_s']:.2f} s",
            f"{r['best_over_synced']:.2f}× ({r['best_over_null']:.2f}× /dev/null)",
            f"≤ 1.3×: {'met' if r['best_over_synced'] <= 1.3 else 'missed'}",
        ],
        [
            "edge daemon peak RSS",
            mib(r["edge_peak_rss"]),
            f"{r['edge_rss_over_model']:.3f}× the model",
            f"≤ {mib(budget)}: {'met' if r['edge_peak_rss'] <= budget else 'missed'}",
        ],
        ["delivered bit-exact", str(r["bit_exact"]), "", ""],
    ]
    cmd = "python -m bench.size" + (f" --gib {args.gib:g}" if args.gib != 2 else "")
    return (
        f"## Model size: a {gib:.1f} GiB bf16 model, one seed and one edge on loopback\n\n"
        f"`{cmd} --write` — {r['tensors']} tensors of {ROWS}×{COLS} bf16 with per-row scales; "
        f"stream {r['stream_bytes'] / size:.1%} of the file; times are medians of "
        f"{r['runs']} runs (a fresh edge each), ratios against the plain download to a "
        f"file, synced. Machine: {doc['machine']}.\n\n"
        + table(["step", "measured", "vs", "target"], rows)
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gib", type=float, default=2.0, help="model size in GiB (default 2)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (to look at logs)")
    ap.add_argument("--dir", default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--runs", type=int, default=3, help="runs to take the medians of")
    ap.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="pp-size-", dir=args.dir))
    try:
        tensors = max(1, round(args.gib * GIB / (ROWS * COLS * 2)))
        doc = {"machine": machine(), "result": run(root, tensors, args.runs)}
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(doc, indent=2))
    if args.write:
        section = "size" if args.gib == 2 else f"size-{args.gib:g}"
        write_section(section, markdown(doc, args))


if __name__ == "__main__":
    main()
