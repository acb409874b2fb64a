"""The plain-download baselines every delivery benchmark measures in the same run: nginx
(``sendfile on``) serving a folder on loopback, and ``curl`` of its files to disk then
``sync`` (what a user gets) or to /dev/null (the network's limit)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from tests.integration.cluster import free_port, wait_until

NGINX_CONF = """
{user}
worker_processes 1;
daemon off;
error_log {root}/error.log;
pid {root}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {root}/tmp; proxy_temp_path {root}/tmp;
    fastcgi_temp_path {root}/tmp; uwsgi_temp_path {root}/tmp; scgi_temp_path {root}/tmp;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    server {{ listen 127.0.0.1:{port}; root {docs}; }}
}}
"""


class Nginx:
    """nginx serving a folder on a free loopback port, as a web server would."""

    def __init__(self, docs: Path, work: Path) -> None:
        exe = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(exe).exists():
            raise SystemExit("nginx is not installed (apt-get install -y nginx-light)")
        work.mkdir(parents=True)
        (work / "tmp").mkdir()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        user = "user root;" if os.geteuid() == 0 else ""  # its workers read our folders
        conf = work / "nginx.conf"
        conf.write_text(NGINX_CONF.format(user=user, root=work, port=self.port, docs=docs))
        self.proc = subprocess.Popen(
            [exe, "-c", str(conf), "-p", str(work)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_until(self._up, 20, "nginx")
        except BaseException:
            self.close()
            raise

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"nginx exited {self.proc.returncode}")
        return subprocess.run(["curl", "-sfI", self.url + "/"], capture_output=True).returncode in (
            0,
            22,
        )

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def __enter__(self) -> Nginx:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def curl_files(base: str, paths: list[str], out: Path | None, rate: int = 0) -> dict[str, float]:
    """One curl of every file in turn (one connection): to ``out`` then ``sync`` of the
    files and the folder, or to /dev/null with ``out`` None. Seconds: ``curl_s``, and with
    ``out`` ``synced_s`` (curl and sync)."""
    args = ["curl", "-sf", "--create-dirs"]
    if rate:
        args += ["--limit-rate", str(rate)]
    for p in paths:
        args += [f"{base}/{p}", "-o", str(out / p) if out else "/dev/null"]
    t0 = time.perf_counter()
    subprocess.run(args, check=True)
    curl_s = time.perf_counter() - t0
    if out is None:
        return {"curl_s": curl_s}
    subprocess.run(["sync", *(str(out / p) for p in paths), str(out)], check=True)
    return {"curl_s": curl_s, "synced_s": time.perf_counter() - t0}


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user and system, all threads) process ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def aiohttp_null(url: str) -> float:
    """Seconds for one GET of ``url`` read by an aiohttp client (as peerprog's peer client
    reads, ``readany`` with a 1 MiB buffer) and dropped: the ceiling of that transport."""
    import asyncio

    import aiohttp

    async def get() -> float:
        async with aiohttp.ClientSession(read_bufsize=1 << 20) as session:
            t0 = time.perf_counter()
            async with session.get(url) as resp:
                resp.raise_for_status()
                while await resp.content.readany():
                    pass
            return time.perf_counter() - t0

    return asyncio.run(get())
