"""Size benchmark: a synthetic LLM-shaped bf16 model of a few GiB, one seed and one edge on
loopback, against a plain static download of the same file in the same run.

The model: ``--gib`` GiB (default 2) of 8192×2048 bfloat16 weight matrices (32 MiB each),
each row with its own scale (log-normal, σ = 1), as trained weight matrices have. Measured:

* ``peerprog publish``: seconds, MB/s of source, peak RSS (the process's own, from wait4);
* the plain download: ``curl`` of the file from ``python -m http.server``, to a file;
* an app's request to a running edge (``PUT /v1/models/<name>``) → the model complete;
* ``best?min_level=max`` to a file (``Client.best_path``) right after;
* the edge daemon's peak RSS (VmHWM), and that the file is bit-exact.

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
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.report import machine, table, write_section
from peerprog.api.client import Client
from tests.integration.cluster import Cluster, free_port, wait_until

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


def plain_download(folder: Path, name: str, out: Path) -> float:
    """Seconds for curl to fetch ``folder/name`` from ``python -m http.server`` to ``out``."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}/{name}"
        wait_until(
            lambda: subprocess.run(["curl", "-sfI", url], capture_output=True).returncode == 0,
            30,
            "http.server",
        )
        t0 = time.perf_counter()
        subprocess.run(["curl", "-sf", "-o", str(out), url], check=True)
        return time.perf_counter() - t0
    finally:
        server.terminate()
        server.wait()


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


def run(root: Path, tensors: int) -> dict[str, Any]:
    src_dir = root / "src"
    src_dir.mkdir()
    model = src_dir / "model.safetensors"
    size = make_model(model, tensors)
    want = tensor_digest(model)
    plain_out = root / "plain.safetensors"
    plain_s = plain_download(src_dir, model.name, plain_out)
    plain_out.unlink()
    with Cluster(root / "cluster") as c:
        key = c.key_path
        c.public_key  # noqa: B018 - make the key
        args = [sys.executable, "-m", "peerprog", "publish", str(model), "--name", NAME]
        args += ["--key", str(key), "--store", str(c.seed_store), "--json"]
        publish_s, publish_rss, out = run_measured(args)
        pub = json.loads(out)
        seed = c.start(c.seed())
        edge = c.start(c.node("edge", bootstrap=[seed]))
        client = Client(edge.socket, timeout=600)
        t0 = time.perf_counter()
        client.want(NAME)

        def complete() -> bool:
            doc = client.status(NAME)
            return bool(doc.get("complete"))

        wait_until(complete, 3600, "the edge to complete", every=0.02)
        complete_s = time.perf_counter() - t0
        best_out = root / "best.safetensors"
        t0 = time.perf_counter()
        best = client.best_path(NAME, best_out, min_level="max", wait=3600)
        best_s = time.perf_counter() - t0
        exact = best.exact and tensor_digest(best_out) == want
        del best
        best_out.unlink()
        edge_rss = vm_hwm(edge.pid)
        seed_rss = vm_hwm(seed.pid)
        status = edge.request("GET", "/v1/status").json()
        c.stop(edge)
        c.stop(seed)
    return {
        "model_bytes": size,
        "tensors": tensors,
        "chunk_size": None,
        "stream_bytes": pub["total_bytes"],
        "levels": [lv["bytes"] for lv in pub["levels"]],
        "plain_download_s": plain_s,
        "publish_s": publish_s,
        "publish_MBps": size / publish_s / 1e6,
        "publish_peak_rss": publish_rss,
        "publish_rss_over_model": publish_rss / size,
        "request_to_complete_s": complete_s,
        "complete_over_plain": complete_s / plain_s,
        "best_to_file_s": best_s,
        "best_over_plain": best_s / plain_s,
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
            "plain download (curl ← `python -m http.server`)",
            f"{r['plain_download_s']:.2f} s",
            "1.0×",
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
            f"{r['complete_over_plain']:.2f}×",
            f"≤ 1.5×: {'met' if r['complete_over_plain'] <= 1.5 else 'missed'}",
        ],
        [
            "`best?min_level=max` to a file",
            f"{r['best_to_file_s']:.2f} s",
            f"{r['best_over_plain']:.2f}×",
            f"≤ 1.5×: {'met' if r['best_over_plain'] <= 1.5 else 'missed'}",
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
        f"stream {r['stream_bytes'] / size:.1%} of the file. Machine: {doc['machine']}.\n\n"
        + table(["step", "measured", "vs", "target"], rows)
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gib", type=float, default=2.0, help="model size in GiB (default 2)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (to look at logs)")
    ap.add_argument("--dir", default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="pp-size-", dir=args.dir))
    try:
        tensors = max(1, round(args.gib * GIB / (ROWS * COLS * 2)))
        doc = {"machine": machine(), "result": run(root, tensors)}
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(doc, indent=2))
    if args.write:
        section = "size" if args.gib == 2 else f"size-{args.gib:g}"
        write_section(section, markdown(doc, args))


if __name__ == "__main__":
    main()
