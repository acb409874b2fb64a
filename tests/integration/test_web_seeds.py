"""Web seeds of every kind: a static server of a published store is a source, whatever it
does with ``Range`` — nginx (206, gzip on for everything), ``python -m http.server`` (200,
the whole file), and servers that compress anyway, cut answers short, send garbage (banned,
with a warning naming it) or refuse ranges (416). Real daemons on loopback."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.harness import assert_bit_exact, transfer, wait_complete
from tests.integration.cluster import REFERENCE_NAME, Cluster, free_port, wait_until

NAME = REFERENCE_NAME


@contextlib.contextmanager
def web_seed(c: Cluster, mode: str) -> Iterator[tuple[str, Path]]:
    """A test web seed of the seed store; yields its URL and its request log."""
    port = free_port()
    log = c.root / f"webseed-{mode}-{port}.log"
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "tests.integration.webseed", "--root", str(c.seed_store)),
            *("--port", str(port), "--mode", mode, "--log", str(log)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: _listening(port, proc), 20, f"the {mode} web seed")
        yield f"http://127.0.0.1:{port}", log
    finally:
        proc.kill()
        proc.wait()


def _listening(port: int, proc: subprocess.Popen[bytes]) -> bool:
    if proc.poll() is not None:
        raise RuntimeError(f"web seed exited with {proc.returncode}")
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def delivered(c: Cluster, seeds: list[str], pub: dict[str, object], name: str = "edge") -> None:
    edge = c.start(c.node(name, want=[NAME], web_seeds=seeds))
    wait_complete(edge, NAME, timeout=60)
    assert_bit_exact(edge, NAME, str(pub["model_id"]))
    assert "Traceback" not in c.logs(edge)


@pytest.mark.parametrize("mode", ["range", "whole", "gzip", "short"])
def test_a_web_seed_alone_delivers_the_model(tmp_path: Path, mode: str) -> None:
    with Cluster(tmp_path) as c:
        pub = c.publish()
        with web_seed(c, mode) as (url, log):
            delivered(c, [url], pub)
            t = transfer(c.nodes["edge"], str(pub["model_id"]))
            assert t["bytes_by_source"]["web_seed"] == pub["total_bytes"]
            levels = [line for line in log.read_text().splitlines() if "/levels/" in line]
            if mode == "whole":  # a whole level per answer, not one per chunk asked
                nlevels = len(pub["levels"])  # type: ignore[arg-type]
                assert len(levels) <= 3 * nlevels, levels


@pytest.mark.parametrize("mode", ["garbage", "refuse"])
def test_a_bad_web_seed_is_named_and_an_honest_one_delivers(tmp_path: Path, mode: str) -> None:
    with Cluster(tmp_path) as c:
        pub = c.publish()
        with web_seed(c, mode) as (bad, _), web_seed(c, "range") as (good, _):
            delivered(c, [bad, good], pub)
            logs = c.logs(c.nodes["edge"])
            t = transfer(c.nodes["edge"], str(pub["model_id"]))
            if mode == "garbage":
                assert f"banned webseed:{bad}" in logs, logs
                assert t["peers_banned"] == [f"webseed:{bad}"]
            assert t["bytes_by_source"]["web_seed"] == pub["total_bytes"]


NGINX_CONF = """
{user}
worker_processes 1;
daemon off;
error_log {root}/error.log;
pid {root}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    access_log {root}/access.log;
    client_body_temp_path {root}/tmp; proxy_temp_path {root}/tmp;
    fastcgi_temp_path {root}/tmp; uwsgi_temp_path {root}/tmp; scgi_temp_path {root}/tmp;
    default_type application/octet-stream;
    gzip on; gzip_types *; gzip_min_length 0;
    sendfile on;
    server {{ listen 127.0.0.1:{port}; root {store}; }}
}}
"""


def test_nginx_with_gzip_for_everything_is_a_web_seed(tmp_path: Path) -> None:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        pytest.skip("nginx is not installed (apt-get install nginx-light)")
    with Cluster(tmp_path) as c:
        pub = c.publish()
        root = tmp_path / "nginx"
        (root / "tmp").mkdir(parents=True)
        port = free_port()
        conf = root / "nginx.conf"
        user = "user root;" if os.geteuid() == 0 else ""  # its workers read the test's folders
        conf.write_text(NGINX_CONF.format(user=user, root=root, port=port, store=c.seed_store))
        proc = subprocess.Popen(
            [nginx, "-c", str(conf), "-p", str(root)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_until(lambda: _listening(port, proc), 20, "nginx")
            delivered(c, [f"http://127.0.0.1:{port}"], pub)
            assert " 206 " in (root / "access.log").read_text()
        finally:
            proc.terminate()
            proc.wait()
