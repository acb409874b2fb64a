"""The operator's and the app developer's day with real daemons: why nothing happens is
said where they look (status, fetch, the client), an unknown name is not wanted forever,
and a model can be removed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from peerprog.api.errors import UnknownModel
from peerprog.manifest import generate_key_file
from tests.integration.cluster import REFERENCE_NAME, Cluster, wait_until

NAME = REFERENCE_NAME


def peerprog(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "peerprog", *args], capture_output=True, text=True, timeout=timeout
    )


def test_an_untrusted_publisher_is_named_by_status_and_fetch(tmp_path: Path) -> None:
    with Cluster(tmp_path) as c:
        c.publish()
        seed = c.start(c.seed())
        other = generate_key_file(tmp_path / "other.pem")
        edge = c.start(c.node("edge", want=[NAME], bootstrap=[seed], trust=[other]))

        def problem() -> str | None:
            doc = edge.client().status(NAME)
            return doc.get("problem")

        said = wait_until(problem, 30, "a problem to be named")
        assert "is not trusted (add its key to trust.publishers" in said, said
        status = peerprog("status", "--socket", str(edge.socket))
        assert status.returncode == 0 and said in status.stdout, status.stdout
        fetch = peerprog("fetch", NAME, "--socket", str(edge.socket), "--wait", "3")
        assert fetch.returncode == 1
        assert said in fetch.stderr.strip().splitlines()[-1], fetch.stderr


def test_fetch_of_an_unknown_name_gives_up_and_leaves_no_want(tmp_path: Path) -> None:
    with Cluster(tmp_path) as c:
        c.publish()
        seed = c.start(c.seed())
        edge = c.start(c.node("edge", bootstrap=[seed]))
        proc = peerprog("fetch", "nosuchmodel", "--socket", str(edge.socket), "--find-timeout", "3")
        assert proc.returncode == 1, proc.stdout + proc.stderr
        last = proc.stderr.strip().splitlines()[-1]
        assert "nosuchmodel" in last and "no source knows it" in last, last
        assert "nosuchmodel" not in edge.client().node_status()["wanted"]
        with pytest.raises(UnknownModel):
            edge.client().status("nosuchmodel")


def test_remove_deletes_the_model_and_keep_data_only_unwants(tmp_path: Path) -> None:
    with Cluster(tmp_path) as c:
        pub = c.publish()
        seed = c.start(c.seed())
        edge = c.start(c.node("edge", bootstrap=[seed]))
        edge.client().want(NAME)  # asked by an app, not by the config
        edge.client().best(NAME, min_level="max", wait=60)
        folder = edge.data_dir / "models" / pub["model_id"]
        assert folder.is_dir()

        kept = peerprog("remove", NAME, "--keep-data", "--socket", str(edge.socket), "--json")
        assert kept.returncode == 0, kept.stderr
        assert json.loads(kept.stdout)["kept_data"] is True
        assert NAME not in edge.client().node_status()["wanted"] and folder.is_dir()
        assert edge.client().status(NAME)["complete"]  # held and served still

        gone = peerprog("remove", NAME, "--socket", str(edge.socket), "--json")
        assert gone.returncode == 0, gone.stderr
        assert json.loads(gone.stdout)["removed"] == [pub["model_id"]]
        wait_until(lambda: not folder.exists(), 10, "the model's folder to go")
        with pytest.raises(UnknownModel):
            edge.client().status(NAME)
        assert edge.request("DELETE", f"/v1/models/{NAME}").status == 404
        # not fetched again after a restart: the want is gone for good
        c.stop(edge)
        c.start(edge)
        with pytest.raises(UnknownModel):
            edge.client().status(NAME)
        again = peerprog("remove", NAME, "--socket", str(edge.socket))
        assert again.returncode == 1 and NAME in again.stderr


def test_progress_counts_levels_one_way_with_an_eta(tmp_path: Path) -> None:
    with Cluster(tmp_path) as c:
        levels_total = len(c.publish()["levels"])
        seed = c.start(c.seed())
        edge = c.start(c.node("edge", want=[NAME], bootstrap=[seed], download_bytes_per_s=150_000))
        wait_until(lambda: edge.client().status(NAME)["level"] >= 0, 30, "level 0")
        status = peerprog("status", "--socket", str(edge.socket))
        assert status.returncode == 0
        lines = status.stdout.splitlines()
        header = next(row for row in lines if row.startswith("model"))
        line = next(row for row in lines if row.startswith(NAME))
        assert "-1" not in line and "?" not in line, line
        doc = edge.client().status(NAME)
        assert doc["levels_total"] == levels_total
        # levels counted, the same way as the client, the headers and the metrics count
        assert "levels" in header and f"/{levels_total} " in line, line
        fetch = peerprog("fetch", NAME, "--socket", str(edge.socket), "--wait", "60")
        assert fetch.returncode == 0, fetch.stderr
        assert f"{levels_total}/{levels_total} levels" in fetch.stderr, fetch.stderr
