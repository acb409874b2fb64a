"""Crashes: SIGKILL at random moments (a downloading edge, a publishing process) and a
disk that fills up mid-download.

After every kill the store is consistent (every manifest and chunk file verifies; names
point only at what they may), the restarted node takes up every chunk on disk that
verifies — recorded, or written before the kill and not yet recorded — and asks no source
for any of them again, and the model ends bit for bit. The quick
profile kills a few times; the long one (``--runslow``) 20 times each. The random seed is
printed so that a failure can be replayed (``PEERPROG_CRASH_SEED``).
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from peerprog.formats import read_model
from peerprog.store import Store
from peerprog.store.levels import chunk_offsets
from tests.faults.harness import (
    assert_bit_exact,
    check_store,
    hostile_peer,
    model_doc,
    transfer,
    wait_complete,
)
from tests.integration.cluster import (
    REFERENCE_MODEL,
    REFERENCE_NAME,
    Cluster,
    run_cli,
    wait_until,
)
from tests.storetools import on_disk

NAME = REFERENCE_NAME
RANGE = re.compile(r"^GET /p2p/v1/models/[0-9a-f]{64}/levels/(\d+) bytes=(\d+)-(\d+)$")


def crash_rng() -> random.Random:
    seed = int(os.environ.get("PEERPROG_CRASH_SEED", random.randrange(1 << 32)))
    print(f"crash seed: PEERPROG_CRASH_SEED={seed}")
    return random.Random(seed)


def chunks_asked(lines: list[str], spans: dict[tuple[int, int], int]) -> set[int]:
    """The chunks the requests in ``lines`` asked for; ``spans``: (level, offset) → chunk."""
    out = set()
    for line in lines:
        if m := RANGE.match(line):
            level, start, end = (int(g) for g in m.groups())
            out |= {i for (lv, off), i in spans.items() if lv == level and start <= off <= end}
    return out


def chunk_spans(store: Path, model_id: str) -> dict[tuple[int, int], int]:
    m = Store(store, create=False).load_manifest(model_id, None).manifest
    return {span: i for i, span in enumerate(chunk_offsets(m))}


def test_edge_killed_at_random_moments(tmp_path: Path, long_run: bool) -> None:
    kills = 20 if long_run else 3
    rng = crash_rng()
    with Cluster(tmp_path) as c:
        pub = c.publish()
        mid, total = pub["model_id"], pub["total_bytes"]
        spans = chunk_spans(c.seed_store, mid)
        # about 0.6 s of download per life: the kills land all along the levels
        rate = int(total / (0.6 * kills + 0.5))
        with hostile_peer(c, "honest") as src:
            edge = c.node("edge", want=[NAME], bootstrap=[src.url], download_bytes_per_s=rate)
            # every chunk on disk that verifies at a kill, recorded or not yet
            held: set[int] = set()
            unrecorded = 0
            for k in range(kills + 1):
                mark = len(src.served())
                c.start(edge)
                if held:
                    assert transfer(edge, mid)["chunks_from_disk"] == len(held), k
                if k == kills:
                    break
                time.sleep(rng.uniform(0.0, 1.2))
                c.stop(edge, signal.SIGKILL)
                time.sleep(0.3)  # requests sent before the kill reach the log
                again = chunks_asked(src.served()[mark:], spans) & held
                assert not again, f"life {k}: chunks on disk {sorted(again)} fetched again"
                report = check_store(edge.data_dir, {c.public_key})
                recorded = report.chunks.get(mid, set())
                assert held <= recorded, f"life {k}: chunks lost: {sorted(held - recorded)}"
                held = on_disk(edge.data_dir, mid)
                assert recorded <= held
                unrecorded += len(held - recorded)
                # a chunk write cut short, as a kill a moment earlier would have left it:
                # garbage in a chunk not on disk whole (and a record write cut short)
                folder = edge.data_dir / "models" / mid
                if (folder / "levels").is_dir():
                    unheld = sorted(set(range(len(spans))) - held)
                    if unheld:
                        i = rng.choice(unheld)
                        level, offset = next(s for s, j in spans.items() if j == i)
                        with open(folder / "levels" / str(level), "r+b") as f:
                            f.seek(offset)
                            f.write(os.urandom(rng.randrange(1, 1024)))
                    (folder / f".tmp-verified.{k}").write_bytes(os.urandom(64))
            wait_complete(edge, NAME, timeout=120)
            again = chunks_asked(src.served()[mark:], spans) & held
            assert not again, f"last life: chunks on disk {sorted(again)} fetched again"
            assert_bit_exact(edge, NAME, mid)
            t = transfer(edge, mid)
            assert t["chunks_from_disk"] == len(held)
            m = Store(edge.data_dir, create=False).load_manifest(mid, None).manifest
            kept = sum(m.chunks[i].length for i in held)
            assert sum(t["bytes_by_source"].values()) == total - kept
            print(f"chunks written but not recorded at a kill, not fetched again: {unrecorded}")
            report = check_store(edge.data_dir, {c.public_key})
            assert report.temporaries == 0
            assert "Traceback" not in c.logs(edge)


def publish_stage(store: Path, first: str, before: set[str]) -> str:
    """How far a killed publish got (reported on stdout): ``before`` are the model folders
    there before it started, ``first`` the id the name pointed at."""
    new = [p for p in (store / "models").iterdir() if p.name not in before]
    if (store / "names" / NAME).read_text().strip() != first:
        return "named"
    if not new:
        return "before staging"
    if any(p.name.startswith(".tmp-") for p in new):
        return "staged, not moved into place"
    return "in place, not named"


def test_publish_killed_at_random_moments(tmp_path: Path, long_run: bool) -> None:
    kills = 20 if long_run else 3
    rng = crash_rng()
    key = tmp_path / "k.pem"
    public = run_cli("keygen", str(key)).strip().splitlines()[-1]
    store = tmp_path / "store"
    args = [sys.executable, "-m", "peerprog", "publish", str(REFERENCE_MODEL), "--name", NAME]
    args += ["--key", str(key), "--store", str(store), "--chunk-size", "1024"]
    started = time.monotonic()
    subprocess.run(args, check=True, capture_output=True)
    full = time.monotonic() - started
    stages: dict[str, int] = {}
    for _ in range(kills):
        first = (store / "names" / NAME).read_text().strip()
        before = {p.name for p in (store / "models").iterdir()}
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3 * full, 1.05 * full))
        proc.kill()
        proc.wait()
        stage = publish_stage(store, first, before)
        stages[stage] = stages.get(stage, 0) + 1
        # every name points at a model whose chunks are all there and verify
        check_store(store, {public}, publisher=True)
    print(f"publish killed: {stages}")
    subprocess.run(args, check=True, capture_output=True)
    check_store(store, {public}, publisher=True)
    out = tmp_path / "out.safetensors"
    run_cli("reconstruct", "--store", str(store), NAME, "--level", "max", "--out", str(out))
    got, want = read_model(out), read_model(REFERENCE_MODEL)
    assert all(got[k].array.tobytes() == want[k].array.tobytes() for k in want)


# --- a disk that fills up ------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 320 KB tmpfs (root only; skipped when mounting is not permitted)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=320k,mode=0700", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.parametrize("full_for", [1.5, pytest.param(100.0, marks=pytest.mark.slow)])
def test_disk_full_mid_download_then_freed(
    tmp_path: Path, small_disk: Path, full_for: float
) -> None:
    """The store refuses writes for ``full_for`` seconds (100: long enough that, were the
    failures held against the seed, it would be dropped for good)."""
    with Cluster(tmp_path) as c:
        pub = c.publish()
        mid = pub["model_id"]
        seed = c.start(c.seed())
        edge = c.start(
            c.node(
                "edge",
                store=small_disk / "store",
                want=[NAME],
                bootstrap=[seed],
                download_bytes_per_s=1_000_000,
            )
        )
        wait_until(lambda: "No space left on device" in c.logs(edge), 60, "the disk to fill")
        status = edge.request("GET", "/v1/status").json()
        assert "No space left on device" in status["store_error"], status
        assert not model_doc(edge, NAME)["complete"]
        # a crash while the disk is full loses nothing verified and corrupts nothing
        c.stop(edge, signal.SIGKILL)
        recorded = check_store(edge.data_dir, {c.public_key}).chunks[mid]
        assert recorded
        verified = on_disk(edge.data_dir, mid)
        c.start(edge)
        # the chunks written but not recorded are recorded at start, unless the full disk
        # refuses that record too (then they are fetched again)
        found = transfer(edge, mid)["chunks_from_disk"]
        held = verified if found == len(verified) else recorded
        assert found == len(held)
        time.sleep(full_for)  # still full: it keeps trying, and keeps serving what it has
        assert edge.request("GET", f"/v1/models/{NAME}/best").status == 200
        subprocess.run(["mount", "-o", "remount,size=8m", str(small_disk)], check=True)
        wait_complete(edge, NAME, timeout=60)
        assert_bit_exact(edge, NAME, mid)
        t = transfer(edge, mid)
        assert t["chunks_from_disk"] == len(held)
        m = Store(edge.data_dir, create=False).load_manifest(mid, None).manifest
        assert sum(t["bytes_by_source"].values()) == pub["total_bytes"] - sum(
            m.chunks[i].length for i in held
        )
        assert edge.request("GET", "/v1/status").json()["store_error"] is None
        assert check_store(edge.data_dir, {c.public_key}).temporaries == 0
        assert "Traceback" not in c.logs(edge)
        # what it decoded outside the store while the disk was full goes with a clean stop
        spare = Path(tempfile.gettempdir()) / f"peerprog-decoded-{mid[:16]}-{edge.pid}"
        c.stop(edge)
        assert not spare.exists()
