"""The fault-injection harness: hostile peers as processes, a memory sampler, and the
checks every fault test ends with (the model is exact, the store is consistent).

    with Cluster(tmp_path) as c, hostile_peer(c, "drip") as bad:
        ...
        edge = c.start(c.node("edge", want=[NAME], bootstrap=[bad.url, seed]))
        with RssSampler(edge.pid) as rss:
            doc = wait_complete(edge, NAME)
        assert_bit_exact(edge, NAME, doc["model_id"])
        check_store(edge.data_dir, {c.public_key})
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from peerprog.errors import PeerprogError
from peerprog.formats import parse_safetensors, read_model
from peerprog.manifest import valid_model_id, valid_name, verify_chunk
from peerprog.manifest.torrent import parse_torrent
from peerprog.store import Store
from peerprog.store.atomic import TMP_PREFIX
from tests.integration.cluster import REFERENCE_MODEL, Cluster, Daemon, free_port, wait_until

MB = 1 << 20


@dataclass
class Hostile:
    """A hostile peer process (``python -m tests.faults.hostile``)."""

    mode: str
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def served(self) -> list[str]:
        """The requests it answered (``--log``), one ``METHOD PATH`` per line."""
        try:
            return self.log.read_text().splitlines()
        except FileNotFoundError:
            return []


@contextlib.contextmanager
def hostile_peer(
    c: Cluster,
    mode: str,
    *,
    store: Path | None = None,
    victim: Daemon | None = None,
    args: Sequence[str] = (),
    hidden: bool = False,
) -> Iterator[Hostile]:
    """Run a hostile peer serving ``store`` (default the seed store) until the block ends;
    ``hidden``: it announces an address no one can dial to ``victim`` and serves it over a
    reverse channel (its :attr:`Hostile.url` is then that address)."""
    port = free_port()
    log = c.root / f"hostile-{mode}-{port}.log"
    cmd = [sys.executable, "-m", "tests.faults.hostile", "--store", str(store or c.seed_store)]
    cmd += ["--port", str(port), "--mode", mode, "--log", str(log), *args]
    if victim is not None:
        cmd += ["--victim", victim.url]
    url = f"http://127.0.0.1:{port}"
    if hidden:
        url = f"http://127.0.0.1:{free_port()}"
        cmd += ["--hide", url]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"hostile peer {mode} exited with {proc.returncode}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_until(up, 20, f"the hostile peer ({mode})")
        yield Hostile(mode, url, proc, log)
    finally:
        proc.kill()
        proc.wait()


@dataclass
class RssSampler:
    """Samples a process's resident memory every ``every`` seconds in a thread."""

    pid: int
    every: float = 0.05
    samples: list[tuple[float, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> RssSampler:
        self._proc = psutil.Process(self.pid)
        self.start_rss = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        import time

        t0 = time.monotonic()
        while not self._stop.wait(self.every):
            try:
                self.samples.append((time.monotonic() - t0, self._proc.memory_info().rss))
            except psutil.Error:
                return

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @property
    def peak(self) -> int:
        return max([self.start_rss, *(rss for _, rss in self.samples)])

    def assert_bounded(self, model_bytes: int) -> None:
        """Growth during the run stays under twice the model plus 100 MB."""
        limit = 2 * model_bytes + 100 * MB
        growth = self.peak - self.start_rss
        assert growth < limit, f"RSS grew by {growth / MB:.1f} MB (limit {limit / MB:.1f} MB)"


# --- what every fault test checks at the end -----------------------------------------------


def model_doc(node: Daemon, name: str) -> dict[str, Any]:
    ans = node.request("GET", f"/v1/models/{name}")
    doc: dict[str, Any] = ans.json() if ans.status == 200 else {}
    return doc


def wait_complete(node: Daemon, name: str, timeout: float = 90) -> dict[str, Any]:
    """Wait until ``node`` holds every chunk of ``name``; its status JSON."""

    def done() -> dict[str, Any] | None:
        if not node.running:
            raise RuntimeError(f"{node.name} died")
        doc = model_doc(node, name)
        return doc if doc.get("complete") else None

    result: dict[str, Any] = wait_until(done, timeout, f"{node.name} to complete", every=0.1)
    return result


def transfer(node: Daemon, model_id: str) -> dict[str, Any]:
    """The node's per-model transfer metrics (``/v1/status``)."""
    doc: dict[str, Any] = node.request("GET", "/v1/status").json()["transfers"][model_id]
    return doc


def assert_bit_exact(
    node: Daemon, name: str, model_id: str, source: Path = REFERENCE_MODEL
) -> None:
    """The app's answer (``best?min_level=max``) is the published file, bit for bit."""
    want = read_model(source)
    answer = node.request("GET", f"/v1/models/{name}/best?min_level=max")
    assert answer.status == 200, answer.body[:300]
    assert answer.headers["Peerprog-Model-Id"] == model_id
    got, _ = parse_safetensors(answer.body)
    assert got.keys() == want.keys()
    for k in want:
        assert np.array_equal(got[k].array.view(np.uint8), want[k].array.view(np.uint8)), k


@dataclass(frozen=True)
class StoreReport:
    """What :func:`check_store` found."""

    chunks: dict[str, set[int]]
    """model id → the chunks its record names (every one verified)."""
    temporaries: int
    """``.tmp-*`` leftovers (allowed after a crash; removed when the store is opened)."""


MODEL_FILES = {"manifest.msgpack", "levels", "verified", "decoded", "published", "torrent"}


def check_store(
    root: Path, trusted: Collection[str] | None, *, publisher: bool = False
) -> StoreReport:
    """Assert the store at ``root`` is consistent: every manifest verifies, every torrent
    is its model's, every chunk the record names verifies, nothing but the layout (and
    ``.tmp-*`` leftovers) is there, and every name points at a model that holds its level 0
    (a ``publisher``'s store: every chunk)."""
    temporaries = 0
    chunks: dict[str, set[int]] = {}
    for entry in (root / "names").iterdir():
        if entry.name.startswith(TMP_PREFIX):
            temporaries += 1
            continue
        assert valid_name(entry.name), entry
    store = Store(root, create=False) if (root / "models").is_dir() else None
    if store is None:
        return StoreReport({}, temporaries)
    for folder in (root / "models").iterdir():
        if folder.name.startswith(TMP_PREFIX):  # a publish cut short: never named or served
            temporaries += 1
            continue
        assert valid_model_id(folder.name), folder
        names = {p.name for p in folder.iterdir()}
        extra = {n for n in names if n.startswith(TMP_PREFIX)}
        assert names - extra <= MODEL_FILES, names
        temporaries += len(extra)
        if "manifest.msgpack" not in names:
            continue  # a model whose manifest write was cut short: never served
        try:
            signed = store.load_manifest(folder.name, trusted)
        except PeerprogError as e:
            raise AssertionError(f"stored manifest {folder.name[:12]}… fails: {e}") from None
        torrent = store.read_torrent(folder.name)
        if torrent is not None:  # written atomically: whole, and the model's
            parse_torrent(torrent, signed.manifest, folder.name, signed.publisher)
        held = set(store.held(signed).indices())
        with store.open_files(signed) as files:
            for i in held:
                verify_chunk(signed.manifest, i, files.read_chunk(i))
        chunks[folder.name] = held
    for name, model_id in store.names().items():
        assert model_id in chunks, f"name {name} points at {model_id[:12]}…, which is absent"
        m = store.load_manifest(model_id, trusted).manifest
        need = range(len(m.chunks)) if publisher else m.levels[0].chunks
        missing = set(need) - chunks[model_id]
        assert not missing, f"name {name} points at {model_id[:12]}…, which lacks {missing}"
    return StoreReport(chunks, temporaries)
