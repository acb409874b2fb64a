"""Many-tensor benchmark: a safetensors file of ``--tensors`` small tensors (and
``--empty`` empty ones, a dimension of 0), as a mixture-of-experts checkpoint has, timed
through publish, manifest parsing and the decoded-level build.

Each step runs in its own child process, so that its peak RSS (``ru_maxrss``) is its own;
``rss_base_mb`` is a child's peak after its imports, before any work. Steps:

* ``make``: write the file (header by hand, data streamed: a 1 GiB file needs no 1 GiB of
  memory); tensors are ``(rows, 64)`` with ``--bytes`` spread evenly over them, values
  normal(0, 0.05) as bfloat16 (or float32 with ``--dtype f32``); empty tensors ``(0, 16)``;
* ``publish``: :func:`peerprog.store.publish.publish_file` into a fresh store;
* ``parse``: the stored envelope opened (signature verified) and its body parsed
  (:func:`peerprog.manifest.model.parse_body` alone, timed apart);
* ``build``: :func:`peerprog.store.build_level` of the last level from scratch, and a
  check that its data section is the source's, bit for bit.

Each step also reports ``gc_seconds``, the time its cyclic garbage collections took.

Prints JSON. Everything is made in a temporary folder under ``--dir`` (default /tmp),
removed at the end. ``--created`` and ``--key-seed`` fix the manifest's time and key so
that the model id is reproducible (to check that a change keeps manifests identical).

    .venv/bin/python -m bench.many_tensors --tensors 32000
    .venv/bin/python -m bench.many_tensors --tensors 0 --empty 20000
    .venv/bin/python -m bench.many_tensors --tensors 100000 --bytes 1073741824
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import hashlib
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

COLS = 64
BLOCK = 1 << 24  # bytes of data generated at a time


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _elements(args: argparse.Namespace) -> int:
    """Elements per non-empty tensor (a whole number of rows of COLS)."""
    item = 2 if args.dtype == "bf16" else 4
    per = max(COLS, int(args.bytes) // max(int(args.tensors), 1) // item)
    return per // COLS * COLS


def make(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Write the model file; returns its description."""
    st, item = ("BF16", 2) if args.dtype == "bf16" else ("F32", 4)
    numel = _elements(args)
    per = numel * item
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    # interleave empty tensors among the others, as an MoE file would
    total = args.tensors + args.empty
    every = total // args.empty if args.empty else 0
    k = e = 0
    for i in range(total):
        if args.empty and e < args.empty and (i % every == every - 1 or k >= args.tensors):
            header[f"layers.{i // 64}.experts.{i % 64}.empty"] = {
                "dtype": st,
                "shape": [0, 16],
                "data_offsets": [offset, offset],
            }
            e += 1
        else:
            header[f"layers.{i // 64}.experts.{i % 64}.w"] = {
                "dtype": st,
                "shape": [numel // COLS, COLS],
                "data_offsets": [offset, offset + per],
            }
            offset += per
            k += 1
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    rng = np.random.default_rng(0)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        left = offset
        while left:
            n = min(left, BLOCK) // item
            x = (rng.standard_normal(n, np.float32) * np.float32(0.05)).astype(np.float32)
            data = (x.view(np.uint32) >> np.uint32(16)).astype(np.uint16) if item == 2 else x
            f.write(data.tobytes())
            left -= n * item
    return {"file_bytes": path.stat().st_size, "data_bytes": offset, "elements_each": numel}


def _key(seed: int | None) -> Any:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if seed is None:
        return Ed25519PrivateKey.generate()
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(str(seed).encode()).digest())


_gc_seconds = 0.0
_gc_start = 0.0


def _gc_timer(phase: str, info: dict[str, Any]) -> None:
    global _gc_seconds, _gc_start
    if phase == "start":
        _gc_start = time.perf_counter()
    else:
        _gc_seconds += time.perf_counter() - _gc_start


def step(name: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One step, in this (child) process."""
    gc.callbacks.append(_gc_timer)
    from peerprog.manifest import open_envelope
    from peerprog.manifest.canonical import unpack
    from peerprog.manifest.model import parse_body
    from peerprog.store import Store, build_level
    from peerprog.store.publish import publish_file

    model = work / "model.safetensors"
    store_dir = work / "store"
    out: dict[str, Any] = {"rss_base_mb": round(_peak_mb(), 1)}
    prof = cProfile.Profile() if args.profile else None
    if name == "make":
        t0 = time.perf_counter()
        out.update(make(model, args))
    elif name == "publish":
        key = _key(args.key_seed)
        if args.created is not None:
            real_time = time.time
            time.time = lambda: float(args.created)
        t0 = time.perf_counter()
        if prof:
            prof.enable()
        res = publish_file(model, name="many", key=key, store=Store(store_dir))
        if prof:
            prof.disable()
        if args.created is not None:
            time.time = real_time
        out.update(
            model_id=res.signed.model_id,
            levels=len(res.levels),
            chunks=len(res.signed.manifest.chunks),
            total_bytes=res.total_bytes,
            envelope_bytes=len(res.signed.envelope),
        )
    elif name == "parse":
        store = Store(store_dir)
        (mid,) = store.model_ids()
        envelope = store.read_manifest_bytes(mid)
        assert envelope is not None
        body = unpack(envelope, "envelope")["body"]
        t0 = time.perf_counter()
        if prof:
            prof.enable()
        m = parse_body(body)
        if prof:
            prof.disable()
        out["parse_body_s"] = round(time.perf_counter() - t0, 3)
        out["tensors"] = len(m.tensors)
        del m  # (one manifest at a time in memory)
        t1 = time.perf_counter()
        open_envelope(envelope, None, expect_id=mid)
        out["open_envelope_s"] = round(time.perf_counter() - t1, 3)
    elif name == "build":
        store = Store(store_dir)
        (mid,) = store.model_ids()
        signed = store.load_manifest(mid, None)
        dest = work / "decoded.safetensors"
        t0 = time.perf_counter()
        if prof:
            prof.enable()
        with store.open_files(signed) as files:
            held = files.recorded()
            last = len(signed.manifest.levels) - 1
            size = build_level(signed.manifest, mid, files, held, last, dest)
        if prof:
            prof.disable()
        elapsed = time.perf_counter() - t0
        out["exact"] = _data_digest(dest) == _data_digest(model)
        out["decoded_bytes"] = size
        dest.unlink()
        out["seconds"] = round(elapsed, 3)
    else:
        raise SystemExit(f"unknown step {name}")
    out.setdefault("seconds", round(time.perf_counter() - t0, 3))
    out["gc_seconds"] = round(_gc_seconds, 3)
    out["rss_peak_mb"] = round(_peak_mb(), 1)
    if prof:
        prof.dump_stats(str(Path(args.profile) / f"{name}.prof"))
    return out


def _data_digest(path: Path) -> str:
    """SHA-256 of a safetensors file's data section."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        (hlen,) = struct.unpack("<Q", f.read(8))
        f.seek(8 + hlen)
        while block := f.read(1 << 24):
            h.update(block)
    return h.hexdigest()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tensors", type=int, default=32000, help="small tensors (default 32000)")
    p.add_argument("--empty", type=int, default=0, help="empty tensors (a 0 dimension)")
    p.add_argument(
        "--bytes", type=int, default=None, help="data bytes in all (default 2 KiB a tensor)"
    )
    p.add_argument("--dtype", choices=("bf16", "f32"), default="bf16")
    p.add_argument("--steps", default="make,publish,parse,build", help="comma-separated")
    p.add_argument("--dir", default=tempfile.gettempdir(), help="where the temporary folder goes")
    p.add_argument("--created", type=int, default=None, help="fix the manifest's created time")
    p.add_argument("--key-seed", type=int, default=None, help="derive the key from this seed")
    p.add_argument("--profile", default=None, help="write <step>.prof (cProfile) to this folder")
    p.add_argument("--step", default=None, help=argparse.SUPPRESS)  # the child's own step
    p.add_argument("--work", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.bytes is None:
        args.bytes = 2048 * args.tensors if args.dtype == "bf16" else 4096 * args.tensors
    if args.step:
        print(json.dumps(step(args.step, Path(args.work), args)))
        return
    if args.tensors + args.empty == 0:
        raise SystemExit("no tensors")
    work = Path(tempfile.mkdtemp(prefix="many-tensors-", dir=args.dir))
    report: dict[str, Any] = {
        "tensors": args.tensors,
        "empty": args.empty,
        "bytes": args.bytes,
        "dtype": args.dtype,
    }
    try:
        for name in args.steps.split(","):
            cmd = [sys.executable, "-m", "bench.many_tensors", *sys.argv[1:]]
            cmd += ["--step", name, "--work", str(work)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode:
                sys.stderr.write(done.stderr)
                raise SystemExit(f"step {name} failed")
            report[name] = json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    main()
