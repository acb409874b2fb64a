"""Security checks beyond the hostile peers: key files, listener settings, impostor
publishers, and a store damaged on disk — no app ever receives data from a manifest that
failed verification.

Also checked elsewhere (cited in RELIABILITY.md): the API socket is 0600 and the TCP
listener refuses requests without the token (``tests/integration/test_api.py``); ``keygen``
writes 0600 and ``publish`` refuses a key readable by others
(``tests/integration/test_cli_local.py``); no request makes the node touch a file outside
its store (``tests/faults/test_fuzz_live.py``).
"""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path

import numpy as np
import pytest

from peerprog.config import parse_config
from peerprog.errors import InputError
from peerprog.manifest import generate_key_file, load_key_file
from peerprog.store import Store
from tests.faults.harness import (
    assert_bit_exact,
    check_store,
    hostile_peer,
    model_doc,
    transfer,
    wait_complete,
)
from tests.integration.cluster import REFERENCE_NAME, Cluster, run_cli, wait_until
from tests.storetools import chunk_bytes, chunk_range, damage_chunk

NAME = REFERENCE_NAME


def test_keygen_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        generate_key_file(tmp_path / "k.pem")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k.pem").stat().st_mode) == 0o600


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602, 0o660, 0o644, 0o700])
def test_a_key_others_can_touch_is_refused(tmp_path: Path, mode: int) -> None:
    key = tmp_path / "k.pem"
    generate_key_file(key)
    key.chmod(mode)
    if mode & 0o077:
        with pytest.raises(InputError, match="accessible by others"):
            load_key_file(key)
    else:
        load_key_file(key)


@pytest.mark.parametrize(
    "api",
    [
        {"listen_tcp": "127.0.0.1:7080"},  # no token
        {"listen_tcp": "127.0.0.1:7080", "token": ""},
        {"listen_tcp": "0.0.0.0:7080", "token": "t"},  # not loopback
        {"listen_tcp": "192.168.1.2:7080", "token": "t"},
    ],
)
def test_tcp_listener_settings_that_would_expose_the_api_are_refused(api: dict[str, str]) -> None:
    with pytest.raises(InputError, match="listen_tcp"):
        parse_config({"api": api})


def impostor_model(path: Path) -> Path:
    rng = np.random.default_rng(7)
    np.savez(path, w=rng.standard_normal((64, 64)).astype(np.float32))
    return path


def test_impostor_publisher_is_refused_and_the_trusted_model_served(tmp_path: Path) -> None:
    """Another key publishes the same name, with higher versions, from a peer the victim
    asks first: the victim refuses it and ends with the trusted model."""
    with Cluster(tmp_path) as c:
        pub = c.publish()
        seed = c.start(c.seed())
        fake_key = tmp_path / "impostor.pem"
        run_cli("keygen", str(fake_key))
        fake_store = tmp_path / "impostor-store"
        source = impostor_model(tmp_path / "impostor.npz")
        for _ in range(2):  # versions 1 and 2: 2 is newer than the trusted one
            run_cli("publish", str(source), "--name", NAME, "--key", str(fake_key),
                    "--store", str(fake_store), "--chunk-size", "4096")  # fmt: skip
        fake_id = (fake_store / "names" / NAME).read_text().strip()
        with hostile_peer(c, "honest", store=fake_store) as impostor:
            edge = c.start(c.node("edge", want=[NAME], bootstrap=[impostor.url, seed]))
            wait_complete(edge, NAME)
            served = impostor.served()
        assert any(fake_id in line for line in served)  # it was asked, and refused
        assert "not trusted" in c.logs(edge)
        assert_bit_exact(edge, NAME, pub["model_id"])
        ids = {m["model_id"] for m in edge.request("GET", "/v1/models").json()}
        assert ids == {pub["model_id"]}
        assert not (edge.data_dir / "models" / fake_id).exists()


def test_damaged_store_is_never_served_and_is_repaired(tmp_path: Path) -> None:
    """A manifest and a chunk damaged on disk while the node was down: at start the model
    is refused (apps get no data from it, peers neither), and once a source is back the
    manifest is repaired and only the damaged chunk is fetched again."""
    with Cluster(tmp_path) as c:
        pub = c.publish()
        mid = pub["model_id"]
        seed = c.start(c.seed())
        edge = c.start(c.node("edge", want=[NAME], bootstrap=[seed]))
        wait_complete(edge, NAME)
        c.stop(edge)
        c.stop(seed)
        damaged = chunk_bytes(edge.data_dir, mid, 3)
        damage_chunk(edge.data_dir, mid, 3)
        folder = edge.data_dir / "models" / mid
        manifest = folder / "manifest.msgpack"
        data = bytearray(manifest.read_bytes())
        data[len(data) // 3] ^= 0x10
        manifest.write_bytes(bytes(data))

        c.start(edge)  # no source: the damaged model must not be served at all
        wait_until(lambda: "ignoring model" in c.logs(edge), 10, "the refusal")
        assert model_doc(edge, NAME)["model_id"] is None
        best = edge.request("GET", f"/v1/models/{NAME}/best?wait=0.5")
        assert best.status == 503 and not best.body.startswith(b"\x00")
        import urllib.error
        import urllib.request

        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{edge.url}/p2p/v1/models/{mid}/manifest.msgpack", timeout=5)
        assert e.value.code == 404

        c.start(seed)  # a source again: repaired, and only chunk 3 is fetched
        wait_complete(edge, NAME)
        assert_bit_exact(edge, NAME, mid)
        t = transfer(edge, mid)
        assert sum(t["bytes_by_source"].values()) == len(damaged)
        chunks = len(Store(c.seed_store).load_manifest(mid, None).manifest.chunks)
        assert t["chunks_from_disk"] == chunks - 1
        c.stop(edge, signal.SIGKILL)
        check_store(edge.data_dir, {c.public_key})
        c.start(edge)
        assert transfer(edge, mid)["chunks_from_disk"] == chunks
        assert c.logs(edge).count("ignoring model") == 1  # only while it was damaged
        # damaged while the node runs: never sent to a peer
        damage_chunk(edge.data_dir, mid, 5, at=-1)
        path, headers = chunk_range(edge.data_dir, mid, 5)
        req = urllib.request.Request(f"{edge.url}/p2p/v1{path}", headers=headers)
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=5)
        assert e.value.code == 416
        assert "not serving chunk 5" in c.logs(edge)
