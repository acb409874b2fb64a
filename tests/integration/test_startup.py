"""Start-up mistakes of an operator, with real daemons: each is refused with one line that
names the config key, and a refused start leaves nothing behind."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.integration.cluster import Cluster, Daemon, wait_until


def exit_of(c: Cluster, node: Daemon) -> tuple[int, str]:
    c.start(node, wait=False)
    assert node.proc is not None
    code = node.proc.wait(30)
    return code, c.logs(node)


def test_port_in_use_names_node_listen_and_creates_no_data_dir(tmp_path: Path) -> None:
    with Cluster(tmp_path) as c, socket.socket() as squatter:
        node = c.node("edge", store=tmp_path / "never-made")
        squatter.bind(("127.0.0.1", node.port))
        squatter.listen()
        code, log = exit_of(c, node)
        assert code == 1
        errors = [line for line in log.splitlines() if "error" in line.lower()]
        assert len(errors) == 1, log
        assert f"node.listen = 127.0.0.1:{node.port}: cannot listen" in errors[0]
        assert "Unclosed" not in log and "Traceback" not in log
        assert not (tmp_path / "never-made").exists()
        assert not node.socket.exists()


def test_api_tcp_port_in_use_names_api_listen_tcp(tmp_path: Path) -> None:
    with Cluster(tmp_path) as c, socket.socket() as squatter:
        node = c.node("edge", api_tcp=True)
        assert node.tcp_port is not None
        squatter.bind(("127.0.0.1", node.tcp_port))
        squatter.listen()
        code, log = exit_of(c, node)
        assert code == 1
        assert f"api.listen_tcp = 127.0.0.1:{node.tcp_port}: cannot listen" in log
        assert not node.data_dir.exists()
        assert not node.socket.exists()


def test_second_daemon_on_one_data_dir_is_refused_naming_the_first(tmp_path: Path) -> None:
    with Cluster(tmp_path) as c:
        c.publish()
        first = c.start(c.seed())
        second = c.node("again", store=c.seed_store)
        code, log = exit_of(c, second)
        assert code == 1
        assert f"is in use by another peerprog daemon (pid {first.pid})" in log
        assert "node.data_dir" in log
        assert first.running
        assert (c.seed_store / "models").is_dir()  # the first one's store is untouched
        c.stop(first)
        c.start(second)  # the lock goes with its holder
        assert second.running


def test_lock_of_a_killed_daemon_does_not_block(tmp_path: Path) -> None:
    import signal

    with Cluster(tmp_path) as c:
        node = c.start(c.node("edge"))
        c.stop(node, signal.SIGKILL)
        c.start(node)
        assert node.running


def test_empty_store_and_no_wants_is_warned(tmp_path: Path) -> None:
    with Cluster(tmp_path) as c:
        node = c.start(c.node("seed", store=tmp_path / "typo-store"))
        wait_until(lambda: "holds no models" in c.logs(node), 10, "the warning")
        assert "WARNING" in c.logs(node)
        assert "node.data_dir" in c.logs(node)


def test_port_in_use_keeps_an_existing_store(tmp_path: Path) -> None:
    with Cluster(tmp_path) as c, socket.socket() as squatter:
        c.publish()
        node = c.seed()
        squatter.bind(("127.0.0.1", node.port))
        squatter.listen()
        code, _ = exit_of(c, node)
        assert code == 1
        assert any((c.seed_store / "models").iterdir())
