"""A publish into a running seed's store is served without a restart (real daemons): the
seed notices it by itself, or at once when ``publish --socket`` tells it; edges follow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.integration.cluster import (
    REFERENCE_MODEL,
    REFERENCE_NAME,
    Cluster,
    Daemon,
    run_cli,
    wait_until,
)


def publish_args(c: Cluster, socket: Path) -> list[str]:
    """``peerprog publish`` of the reference model into the seed store, telling ``socket``."""
    return [
        "publish", str(REFERENCE_MODEL), "--name", REFERENCE_NAME, "--key", str(c.key_path),
        "--store", str(c.seed_store), "--socket", str(socket),
    ]  # fmt: skip


def served_version(node: Daemon) -> int:
    doc: dict[str, Any] = node.request("GET", f"/v1/models/{REFERENCE_NAME}").json()
    return int(doc.get("version", 0)) if doc.get("level", -1) >= 0 else 0


def test_seed_notices_a_new_version_by_itself_and_edges_follow(tmp_path: Path) -> None:
    with Cluster(tmp_path) as c:
        c.publish()
        seed = c.start(c.seed(extra={"models": {"rescan_interval": 0.5}}))
        edge = c.start(c.node("edge", want=[REFERENCE_NAME], bootstrap=[seed]))
        wait_until(lambda: served_version(edge) == 1, 60, "v1 at the edge")
        v2 = c.publish()
        assert v2["version"] == 2
        wait_until(lambda: served_version(seed) == 2, 30, "the seed to serve v2")
        wait_until(lambda: served_version(edge) == 2, 60, "v2 at the edge")
        assert "published: digits-cnn v2" in c.logs(seed)


def test_publish_socket_tells_the_node_at_once(tmp_path: Path) -> None:
    with Cluster(tmp_path) as c:
        c.publish()
        seed = c.start(c.seed(extra={"models": {"rescan_interval": 0}}))
        assert served_version(seed) == 1
        out = run_cli(*publish_args(c, seed.socket))
        assert "serves it now" in out
        assert served_version(seed) == 2  # no wait: told before publish returned


def test_publish_socket_to_no_node_warns_and_still_publishes(tmp_path: Path) -> None:
    with Cluster(tmp_path) as c:
        c.publish()
        args = publish_args(c, tmp_path / "nobody.sock")
        proc = subprocess.run(
            [sys.executable, "-m", "peerprog", *args, "--json"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        assert "could not tell the node" in proc.stderr
        doc = json.loads(proc.stdout)
        assert doc["version"] == 2 and doc["node_told"] is False
