"""Real peerprog daemons on loopback, for integration tests and benchmarks.

    with Cluster(tmp_path) as c:
        c.publish()                                   # the reference model into the seed store
        seed = c.start(c.seed())
        edge = c.start(c.node("edge", want=["digits-cnn"], bootstrap=[seed],
                              download_bytes_per_s=200_000))
        client = edge.client()
        ...
        c.stop(edge, signal.SIGKILL)
        print(c.logs(edge))

Every node gets its own folder under ``root`` (config, store, log) and free loopback ports;
sockets live in a short temporary folder (unix socket paths are limited to 107 bytes).
Leaving the ``with`` block kills every daemon still running.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import IO, Any

from peerprog.api.client import Client, UnixHTTPConnection
from peerprog.config import parse_config
from peerprog.reference import digits

REFERENCE_MODEL = digits.model_path()
REFERENCE_NAME = digits.MODEL_NAME
TOKEN = "test-token-0123456789"
REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def run_cli(*args: str, timeout: float = 300, cwd: Path | None = None) -> str:
    """Run ``python -m peerprog ARGS``; its stdout, or AssertionError with its stderr."""
    proc = subprocess.run(
        [sys.executable, "-m", "peerprog", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )
    if proc.returncode != 0:
        raise AssertionError(f"peerprog {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc.stdout


def wait_until(check: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    """Poll ``check`` until it returns something true; TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


@dataclass(frozen=True)
class Answer:
    """A raw HTTP answer (``headers`` are looked up case-insensitively)."""

    status: int
    headers: Message
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Daemon:
    """One node of a cluster: its paths, ports and (once started) its process."""

    name: str
    root: Path
    config_path: Path
    data_dir: Path
    socket: Path
    port: int
    tcp_port: int | None = None
    token: str = ""
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(default=Path())
    _log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """The peer protocol's base URL (what other nodes bootstrap from)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def tcp_url(self) -> str:
        """The local API's TCP listener (for browser apps), if configured."""
        assert self.tcp_port is not None, f"{self.name} has no api.listen_tcp"
        return f"http://127.0.0.1:{self.tcp_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} is not started"
        return self.proc.pid

    def client(self, timeout: float = 30.0) -> Client:
        """A sync API client on this node's socket."""
        return Client(self.socket, timeout=timeout)

    def request(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str] | None = None,
        timeout: float = 60.0,
    ) -> Answer:
        """One raw HTTP request to the local API over the unix socket."""
        conn = UnixHTTPConnection(str(self.socket), timeout)
        try:
            conn.request(method, path, headers=dict(headers or {}))
            resp = conn.getresponse()
            return Answer(resp.status, resp.headers, resp.read())
        finally:
            conn.close()


class Cluster:
    """Daemons started as subprocesses, each configured in its own folder under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.key_path = self.root / "publisher.pem"
        self.seed_store = self.root / "seed-store"
        self.nodes: dict[str, Daemon] = {}
        self._public_key: str | None = None
        self._sockets = Path(tempfile.mkdtemp(prefix="pp-"))

    # --- publishing ------------------------------------------------------------------------

    @property
    def public_key(self) -> str:
        """The publisher key (``ed25519:...``), generated on first use."""
        if self._public_key is None:
            out = run_cli("keygen", str(self.key_path))
            self._public_key = out.strip().splitlines()[-1]
        return self._public_key

    def publish(
        self,
        source: Path = REFERENCE_MODEL,
        *,
        name: str = REFERENCE_NAME,
        store: Path | None = None,
        chunk_size: int = 16384,
        codec: str | None = None,
    ) -> dict[str, Any]:
        """``peerprog publish --json`` into ``store`` (default the seed store); its JSON."""
        args = ["publish", str(source), "--name", name, "--key", str(self.key_path)]
        args += ["--store", str(store or self.seed_store), "--chunk-size", str(chunk_size)]
        if codec:
            args += ["--codec", codec]
        self.public_key  # noqa: B018 - make sure the key exists
        doc: dict[str, Any] = json.loads(run_cli(*args, "--json"))
        return doc

    # --- nodes -----------------------------------------------------------------------------

    def node(
        self,
        name: str,
        *,
        store: Path | None = None,
        socket_path: Path | None = None,
        want: Sequence[str] = (),
        bootstrap: Iterable[Daemon | str] = (),
        web_seeds: Sequence[str] = (),
        upload_bytes_per_s: int = 0,
        download_bytes_per_s: int = 0,
        api_tcp: bool = False,
        cors_origins: Sequence[str] = (),
        trust: Sequence[str] | None = None,
        extra: Mapping[str, Mapping[str, object]] | None = None,
    ) -> Daemon:
        """Write the config of a new node (not started); ``extra`` adds or overrides keys."""
        if name in self.nodes:
            raise ValueError(f"node {name!r} exists already")
        root = self.root / name
        root.mkdir(parents=True, exist_ok=True)
        node = Daemon(
            name=name,
            root=root,
            config_path=root / "node.toml",
            data_dir=Path(store) if store else root / "store",
            socket=socket_path or self._sockets / f"{name}.sock",
            port=free_port(),
            tcp_port=free_port() if api_tcp else None,
            token=TOKEN if api_tcp else "",
            log_path=root / "daemon.log",
        )
        doc: dict[str, dict[str, object]] = {
            "node": {
                "name": name,
                "data_dir": str(node.data_dir),
                "listen": f"127.0.0.1:{node.port}",
            },
            "api": {"socket": str(node.socket)},
            "trust": {"publishers": list(trust) if trust is not None else [self.public_key]},
            "peers": {
                "bootstrap": [b.url if isinstance(b, Daemon) else b for b in bootstrap],
                "web_seeds": list(web_seeds),
                "announce_interval": 2.0,
                "have_poll_interval": 0.2,
            },
            "models": {"want": list(want)},
            "limits": {
                "upload_bytes_per_s": upload_bytes_per_s,
                "download_bytes_per_s": download_bytes_per_s,
            },
        }
        if api_tcp:
            doc["api"].update(
                listen_tcp=f"127.0.0.1:{node.tcp_port}",
                token=node.token,
                cors_origins=list(cors_origins),
            )
        for section, values in (extra or {}).items():
            doc.setdefault(section, {}).update(values)
        node.config_path.write_text(parse_config(doc).to_toml(f"test node {name}"))
        self.nodes[name] = node
        return node

    def seed(self, name: str = "seed", **kwargs: Any) -> Daemon:
        """A node serving the seed store (where :meth:`publish` writes)."""
        return self.node(name, store=self.seed_store, **kwargs)

    # --- processes -------------------------------------------------------------------------

    def start(self, node: Daemon, *, wait: bool = True, timeout: float = 30.0) -> Daemon:
        """Start ``node``'s daemon; with ``wait``, until its API socket answers."""
        assert not node.running, f"{node.name} is running already"
        node._log = open(node.log_path, "ab")  # noqa: SIM115 - closed in stop()
        # The daemons run the code of this checkout, whatever is installed (their cwd is
        # their folder, so without this an editable install of another checkout would win).
        path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}
        node.proc = subprocess.Popen(
            [sys.executable, "-m", "peerprog", "daemon", "--config", str(node.config_path)],
            stdout=node._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=node.root,
            env=env,
        )
        if wait:
            self.wait_ready(node, timeout)
        return node

    def wait_ready(self, node: Daemon, timeout: float = 30.0) -> None:
        """Wait until ``node``'s API socket (and TCP listener, if any) accepts connections
        (RuntimeError if it died)."""

        def ready() -> bool:
            if not node.running:
                raise RuntimeError(f"daemon {node.name} exited early:\n{self.logs(node)}")
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                try:
                    s.connect(str(node.socket))
                except OSError:
                    return False
            if node.tcp_port is not None:  # the TCP listener starts just after the socket
                try:
                    socket.create_connection(("127.0.0.1", node.tcp_port), timeout=1).close()
                except OSError:
                    return False
            return True

        wait_until(ready, timeout, f"the API socket of {node.name}")

    def stop(self, node: Daemon, sig: int = signal.SIGTERM, timeout: float = 45.0) -> int | None:
        """Send ``sig`` and wait for the exit; returns the exit code (None if not started).
        A daemon still alive after ``timeout`` is killed, and one that a SIGTERM did not stop
        cleanly (exit code not 0: its stop overran the daemon's grace) raises AssertionError
        with the end of its log."""
        if node.proc is None:
            return None
        if node.proc.poll() is None:
            node.proc.send_signal(sig)
            try:
                node.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait()
                raise AssertionError(
                    f"{node.name} ignored signal {sig} for {timeout:g} s:\n"
                    + self.logs(node)[-6000:]
                ) from None
            if sig == signal.SIGTERM and node.proc.returncode != 0:
                raise AssertionError(
                    f"{node.name} did not stop cleanly on SIGTERM "
                    f"(exit code {node.proc.returncode}):\n" + self.logs(node)[-6000:]
                )
        if node._log is not None:
            node._log.close()
            node._log = None
        return node.proc.returncode

    def logs(self, node: Daemon) -> str:
        """Everything ``node``'s daemon wrote so far (stdout and stderr)."""
        try:
            return node.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def close(self) -> None:
        """Kill every daemon still running and remove the socket folder."""
        for node in self.nodes.values():
            with contextlib.suppress(AssertionError, OSError):
                self.stop(node, signal.SIGKILL, timeout=5)
        shutil.rmtree(self._sockets, ignore_errors=True)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
