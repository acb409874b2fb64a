"""``api.socket_group``: the members of a group may use the API socket, nobody else (real
daemon; the access check drops to an unprivileged user, so it needs root)."""

from __future__ import annotations

import grp
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.integration.cluster import Cluster

CONNECT = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except PermissionError:
    sys.exit(3)
"""


def a_group() -> grp.struct_group:
    """A group this process may hand files to."""
    if os.geteuid() == 0:
        return (
            grp.getgrnam("daemon")
            if "daemon" in [g.gr_name for g in grp.getgrall()]
            else grp.getgrgid(0)
        )
    return grp.getgrgid(os.getgroups()[0])


def test_socket_group_gets_the_socket_mode_0660(tmp_path: Path) -> None:
    group = a_group()
    folder = Path(tempfile.mkdtemp(prefix="pp-g-"))
    os.chmod(folder, 0o755)
    try:
        with Cluster(tmp_path) as c:
            extra = {"api": {"socket_group": group.gr_name}}
            node = c.start(c.node("edge", socket_path=folder / "api.sock", extra=extra))
            st = os.stat(node.socket)
            assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == group.gr_gid
            python = shutil.which("python3", path="/usr/bin:/bin")
            if os.geteuid() != 0 or python is None:
                pytest.skip("checking who may connect needs root and a system python3")
            nobody = 65534

            def connect(groups: list[int]) -> int:
                return subprocess.run(
                    [python, "-c", CONNECT, str(node.socket)],
                    user=nobody, group=nobody, extra_groups=groups, timeout=30,
                ).returncode  # fmt: skip

            assert connect([group.gr_gid]) == 0
            assert connect([]) == 3
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_unknown_socket_group_is_refused_at_start(tmp_path: Path) -> None:
    with Cluster(tmp_path) as c:
        node = c.node("edge", extra={"api": {"socket_group": "no-such-group-here"}})
        c.start(node, wait=False)
        assert node.proc is not None and node.proc.wait(30) == 1
        assert "api.socket_group 'no-such-group-here': no such group" in c.logs(node)
        assert not node.data_dir.exists()
