"""The swarm as real processes on loopback: one seed and N edges, each a ``peerprog daemon``
with its own config, store, API socket and log file.

The seed's upload and every edge's download are capped at the same rate; edges bootstrap
from the seed and find each other by peer exchange. Children run in their own session (a
Ctrl-C in the terminal reaches only the demo, which then stops them in order) and, on
Linux, die with the demo if it is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from peerprog.config import (
    ApiSection,
    Config,
    LimitsSection,
    NodeSection,
    PeersSection,
    TrustSection,
)

STOP_GRACE = 5.0
"""Seconds a daemon gets to exit after SIGTERM before it is killed."""


@dataclass(frozen=True)
class NodeSpec:
    """One node of the demo swarm."""

    name: str
    role: str
    """``seed`` or ``edge``."""
    port: int
    """The peer-protocol port; 0 lets the node pick one (edges: only the seed's must be
    known in advance)."""
    data_dir: Path
    socket: Path
    config: Path
    log: Path
    upload_bytes_per_s: int = 0
    download_bytes_per_s: int = 0
    bootstrap: tuple[str, ...] = ()
    trusted: tuple[str, ...] = ()
    api_tcp: str = ""
    """The API's TCP address (the web UI), or empty for none."""
    token: str = ""

    @property
    def ui_url(self) -> str:
        """The web UI's dashboard with the token in the fragment (``api_tcp`` set)."""
        return f"http://{self.api_tcp}/ui/#token={self.token}"

    @property
    def url(self) -> str:
        """The node's peer-protocol base URL (for a node with a fixed port)."""
        return f"http://127.0.0.1:{self.port}"


def free_port() -> int:
    """A TCP port on loopback that is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def config_for(spec: NodeSpec) -> Config:
    """The node's config."""
    return Config(
        node=NodeSection(
            name=spec.name, data_dir=str(spec.data_dir), listen=f"127.0.0.1:{spec.port}"
        ),
        api=ApiSection(socket=str(spec.socket), listen_tcp=spec.api_tcp, token=spec.token),
        trust=TrustSection(publishers=list(spec.trusted)),
        peers=PeersSection(
            bootstrap=list(spec.bootstrap), announce_interval=2.0, have_poll_interval=0.5
        ),
        limits=LimitsSection(
            upload_bytes_per_s=spec.upload_bytes_per_s,
            download_bytes_per_s=spec.download_bytes_per_s,
        ),
    )


def config_text(spec: NodeSpec) -> str:
    """The node's TOML config."""
    return config_for(spec).to_toml(f"peerprog demo: {spec.role} node")


def plan(
    workdir: Path,
    sockdir: Path,
    *,
    edges: int,
    rate: int,
    public_key: str,
    seed_store: Path,
) -> list[NodeSpec]:
    """The seed and ``edges`` edge nodes: ports, folders, caps; the seed first."""
    seed = NodeSpec(
        name="seed",
        role="seed",
        port=free_port(),
        data_dir=seed_store,
        socket=sockdir / "seed.sock",
        config=workdir / "seed.toml",
        log=workdir / "logs" / "seed.log",
        upload_bytes_per_s=rate,
        trusted=(public_key,),
    )
    specs = [seed]
    for i in range(1, edges + 1):
        name = f"edge-{i}"
        ui = i == 1  # the app's edge: its web UI shows the same delivery in a browser
        specs.append(
            NodeSpec(
                name=name,
                role="edge",
                port=0,
                data_dir=workdir / name / "store",
                socket=sockdir / f"{name}.sock",
                config=workdir / f"{name}.toml",
                log=workdir / "logs" / f"{name}.log",
                download_bytes_per_s=rate,
                bootstrap=(seed.url,),
                trusted=(public_key,),
                api_tcp=f"127.0.0.1:{free_port()}" if ui else "",
                token=secrets.token_urlsafe(18) if ui else "",
            )
        )
    return specs


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Ask Linux to SIGTERM this child when the demo process dies (PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


@dataclass
class Child:
    """A process the demo started, with its log file."""

    name: str
    log: Path
    proc: asyncio.subprocess.Process
    logfile: IO[bytes] = field(repr=False)

    @property
    def exited(self) -> int | None:
        """Its exit code, or None while it runs."""
        return self.proc.returncode

    def how_it_ended(self) -> str:
        """``exited with code N`` or ``was killed by signal N``."""
        code = self.proc.returncode
        if code is not None and code < 0:
            return f"was killed by signal {-code}"
        return f"exited with code {code}"

    def tail(self, lines: int = 8) -> str:
        """The last lines of its log."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.rstrip().splitlines()[-lines:])


class Processes:
    """Every child process of the demo; :meth:`stop_all` ends them, newest first."""

    def __init__(self) -> None:
        self.children: list[Child] = []

    async def start(
        self, name: str, argv: Sequence[str], log: Path, *, stdout_pipe: bool = False
    ) -> Child:
        """Start ``argv`` with its stderr (and stdout, unless piped) going to ``log``."""
        log.parent.mkdir(parents=True, exist_ok=True)
        logfile = open(log, "ab")  # noqa: SIM115 - closed in stop_all
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        preexec: Callable[[], None] | None = _die_with_parent if sys.platform == "linux" else None
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE if stdout_pipe else logfile,
            stderr=logfile,
            env=env,
            start_new_session=True,
            preexec_fn=preexec,
        )
        child = Child(name, log, proc, logfile)
        self.children.append(child)
        return child

    async def start_daemon(self, spec: NodeSpec) -> Child:
        """Write ``spec``'s config and start ``peerprog daemon`` with it."""
        spec.config.write_text(config_text(spec))
        spec.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "peerprog", "daemon", "--config", str(spec.config)]
        return await self.start(spec.name, argv, spec.log)

    def dead(self) -> list[Child]:
        """Children that exited on their own (with any code) before being stopped."""
        return [c for c in self.children if c.exited is not None]

    async def stop_all(self) -> int:
        """SIGTERM every running child, newest first, then SIGKILL any that lingers.

        Returns how many were still running."""
        running = [c for c in reversed(self.children) if c.exited is None]
        for c in running:
            with contextlib.suppress(ProcessLookupError):
                c.proc.send_signal(signal.SIGTERM)
        for c in running:
            try:
                await asyncio.wait_for(c.proc.wait(), STOP_GRACE)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    c.proc.kill()
                await c.proc.wait()
        for c in self.children:
            c.logfile.close()
        return len(running)
