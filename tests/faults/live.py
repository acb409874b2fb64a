"""A real :class:`~peerprog.node.Node` and its local API in the test's event loop,
for fuzzing the peer protocol and the API with hypothesis (no subprocess per example).

The node holds a complete published model (``tiny``), wants a name nobody offers
(``later``), and bootstraps from a port nobody listens on. :func:`tree` snapshots a folder
so a test can check that nothing outside the store was touched.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from peerprog.api.server import ApiServer
from peerprog.config import parse_config
from peerprog.manifest import SignedManifest
from peerprog.node import Node
from tests.integration.cluster import free_port
from tests.unit.samples import PUB
from tests.unit.test_api_support import publish_sample


@dataclass
class Live:
    node: Node
    api: ApiServer
    signed: SignedManifest
    root: Path
    data_dir: Path

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.node.port}"

    def store_level(self, level: int) -> bytes:
        """A level file's bytes, as stored."""
        return (
            self.data_dir / "models" / self.signed.model_id / "levels" / str(level)
        ).read_bytes()


@asynccontextmanager
async def live_node(root: Path, socket_dir: Path) -> AsyncIterator[Live]:
    """A started node with its API (unix socket in ``socket_dir``); stopped on exit."""
    data_dir = root / "store"
    _, signed = publish_sample(data_dir)
    (root / "outside").mkdir()
    (root / "outside" / "canary").write_text("must stay as it is\n")
    config = parse_config(
        {
            "node": {"name": "victim", "data_dir": str(data_dir), "listen": "127.0.0.1:0"},
            "api": {"socket": str(socket_dir / "api.sock")},
            "trust": {"publishers": [PUB]},
            "peers": {
                "bootstrap": [f"http://127.0.0.1:{free_port()}"],
                "announce_interval": 0.5,
                "have_poll_interval": 0.2,
                "max_peers": 16,
            },
            "models": {"want": ["later"]},
            "limits": {"request_timeout": 2.0, "max_request_bytes": 65536},
        }
    )
    node = Node(config)
    await node.start()
    api = ApiServer(node)
    try:
        await api.start()
        await _decode(api)
        yield Live(node, api, signed, root, data_dir)
    finally:
        await api.stop()
        await node.stop()


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` (relative path → size, mtime) except sockets."""
    out = {}
    for folder, _, files in os.walk(root):
        for f in files:
            p = Path(folder) / f
            st = p.lstat()
            if not p.is_socket():
                out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


async def _decode(api: ApiServer) -> None:
    """Have the node build the decoded level that ``best`` serves (derived data, written
    into the store at the first request), so that the store stays as it is afterwards."""
    import aiohttp

    connector = aiohttp.UnixConnector(path=str(api.socket_path))
    url = "http://localhost/v1/models/tiny/best?min_level=max"
    async with aiohttp.ClientSession(connector=connector) as s, s.get(url) as resp:
        assert resp.status == 200, resp.status
        await resp.read()


def loops_alive(node: Node) -> bool:
    """Whether the node's background loops (announce, resolve) still run."""
    return {"announce", "resolve"} <= {t.get_name() for t in node.background_tasks()}
