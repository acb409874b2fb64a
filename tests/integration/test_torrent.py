"""Every published model is a BitTorrent torrent: real daemons serve it at
``GET /p2p/v1/models/<id>/torrent`` (the publisher's, signed; or one an edge built from the
levels it fetched: the same info-hashes), and a stock libtorrent client fetches every level
file from a node's peer port as a BEP 19 web seed."""

from __future__ import annotations

import dataclasses
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from peerprog.formats import parse_safetensors, read_model
from peerprog.manifest.torrent import parse_torrent
from peerprog.reference import digits
from peerprog.store import Store
from tests.bt import Seeder, download, libtorrent, mirror_without_levels
from tests.integration.cluster import Cluster, Daemon, free_port, run_cli, wait_until

NAME = digits.MODEL_NAME


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with Cluster(tmp_path) as c:
        yield c


def get_torrent(node: Daemon, model_id: str) -> bytes:
    url = f"{node.url}/p2p/v1/models/{model_id}/torrent"
    with urllib.request.urlopen(url, timeout=30) as resp:
        assert resp.headers["Content-Type"] == "application/x-bittorrent"
        data: bytes = resp.read()
    return data


def test_nodes_serve_the_torrent_and_a_stock_client_fetches_it_from_a_web_seed(
    cluster: Cluster, tmp_path: Path
) -> None:
    libtorrent()
    doc = cluster.publish()  # 16 KiB chunks: pad files shorter than a block after each level
    mid = doc["model_id"]
    assert doc["torrent"]["magnet"].endswith(f"&dn={mid}")
    seed = cluster.start(cluster.seed())
    edge = cluster.start(cluster.node("edge", bootstrap=[seed]))
    edge.client().want(NAME)
    wait_until(lambda: edge.client().status(NAME).get("complete"), 120, "the edge to complete")

    store = Store(cluster.seed_store, create=False)
    signed = store.load_manifest(mid, [cluster.public_key])
    m = signed.manifest
    from_seed = parse_torrent(get_torrent(seed, mid), m, mid, signed.publisher, signed_only=True)
    assert from_seed.web_seeds == (f"{seed.url}/p2p/v1/models/",)
    # the edge got the publisher's torrent with the manifest
    from_edge = parse_torrent(get_torrent(edge, mid), m, mid, signed.publisher, signed_only=True)
    assert from_edge.info == from_seed.info
    assert from_edge.info_hash.hex() in doc["torrent"]["magnet"]
    # its web seeds: the seed's (as the seed sent it), then its own
    assert from_edge.web_seeds == (f"{seed.url}/p2p/v1/models/", f"{edge.url}/p2p/v1/models/")

    only_edge = dataclasses.replace(from_edge, web_seeds=(f"{edge.url}/p2p/v1/models/",))
    got = download(only_edge.to_bytes(), tmp_path / "bt")
    assert got.seeding, got
    assert not got.alerts, got.alerts  # no hash failure, no web seed dropped
    for lv in m.levels:
        want = (edge.data_dir / "models" / mid / "levels" / str(lv.level)).read_bytes()
        assert (tmp_path / "bt" / mid / "levels" / str(lv.level)).read_bytes() == want

    shown = run_cli("inspect", NAME, "--store", str(edge.data_dir))
    assert f"torrent    {from_edge.magnet()}  (signed by the publisher)" in shown


def test_a_lost_torrent_is_built_again_and_an_unknown_model_has_none(cluster: Cluster) -> None:
    doc = cluster.publish()
    mid = doc["model_id"]
    (cluster.seed_store / "models" / mid / "torrent").unlink()
    seed = cluster.start(cluster.seed())
    edge = cluster.start(cluster.node("edge", bootstrap=[seed]))
    edge.client().want(NAME)
    wait_until(lambda: edge.client().status(NAME).get("complete"), 120, "the edge to complete")
    signed = Store(cluster.seed_store, create=False).load_manifest(mid, [cluster.public_key])
    # both hold it whole and build it from their levels: the same torrent, unsigned
    from_seed = parse_torrent(get_torrent(seed, mid), signed.manifest, mid, signed.publisher)
    from_edge = parse_torrent(get_torrent(edge, mid), signed.manifest, mid, signed.publisher)
    assert from_seed.attestation is None and from_edge.attestation is None
    assert from_seed.info == from_edge.info
    assert from_seed.info_hash.hex() in doc["torrent"]["magnet"]
    assert "refused a torrent" not in cluster.logs(edge)
    with pytest.raises(urllib.error.HTTPError) as e:
        get_torrent(seed, "0" * 64)
    assert e.value.code == 404


BITTORRENT = {"bittorrent": {"enabled": True, "listen": "127.0.0.1:0", "dht": False}}


def test_a_node_seeds_the_models_it_holds_into_bittorrent(cluster: Cluster, tmp_path: Path) -> None:
    libtorrent()
    mid = cluster.publish()["model_id"]
    seed = cluster.start(cluster.seed(extra=BITTORRENT))

    def seeding() -> dict[str, int] | None:
        bt: dict[str, int] | None = seed.request("GET", "/v1/status").json()["bittorrent"]
        return bt if bt is not None and bt["torrents"] == 1 else None

    port = wait_until(seeding, 30, "the seed to seed its model")["listen_port"]
    signed = Store(cluster.seed_store, create=False).load_manifest(mid, [cluster.public_key])
    torrent = parse_torrent(get_torrent(seed, mid), signed.manifest, mid, signed.publisher)
    bare = dataclasses.replace(torrent, web_seeds=())  # the node as a BitTorrent peer only
    got = download(bare.to_bytes(), tmp_path / "bt", peers=[("127.0.0.1", port)])
    assert got.seeding and not got.alerts, got
    for lv in signed.manifest.levels:
        want = (cluster.seed_store / "models" / mid / "levels" / str(lv.level)).read_bytes()
        assert (tmp_path / "bt" / mid / "levels" / str(lv.level)).read_bytes() == want
    total = signed.manifest.total_bytes
    sent = wait_until(
        lambda: (bt := seeding()) is not None and bt["bytes_uploaded"] >= total, 10, "the count"
    )
    assert sent
    metrics = seed.request("GET", "/metrics").body.decode()
    assert "peerprog_bittorrent_torrents 1" in metrics
    assert "BitTorrent session listening" in cluster.logs(seed)


def test_a_busy_node_makes_a_web_seed_client_wait_and_declines_peers(cluster: Cluster) -> None:
    """Upload slots full: a client that is no peerprog node (no ``Peerprog-Node``, as a
    BitTorrent client using the node as a web seed) waits for its turn; a node gets 503."""
    doc = cluster.publish()
    mid, last = doc["model_id"], len(doc["levels"]) - 1  # its last level: over 600 KB
    assert doc["levels"][last]["bytes"] >= 600_000
    limits = {"upload_slots": 1, "upload_queue": 0}
    seed = cluster.start(cluster.seed(upload_bytes_per_s=400_000, extra={"limits": limits}))
    url = f"{seed.url}/p2p/v1/models/{mid}/levels/{last}"

    def get(headers: dict[str, str]) -> int:
        request = urllib.request.Request(url, headers={"Range": "bytes=0-599999", **headers})
        try:
            with urllib.request.urlopen(request, timeout=60) as resp:
                resp.read()
                return int(resp.status)
        except urllib.error.HTTPError as e:
            return e.code

    with ThreadPoolExecutor(4) as pool:  # 600 KB each at 400 KB/s: 1.5 s each, one at a time
        plain = [pool.submit(get, {}) for _ in range(3)]
        time.sleep(0.75)
        node = get({"Peerprog-Node": "http://127.0.0.1:9/"})
        assert [f.result() for f in plain] == [206, 206, 206]
    assert node == 503


@pytest.fixture
def static_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``python -m http.server`` over a new folder: its URL and the folder."""
    root = tmp_path / "mirror"
    root.mkdir()
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(url), 10, "http.server to answer")
        yield url, root
    finally:
        proc.terminate()
        proc.wait(10)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except (OSError, urllib.error.HTTPError):
        return False


@pytest.mark.parametrize("liar", [False, True], ids=["one seeder", "and a lying one"])
def test_an_edge_fetches_from_stock_bittorrent_seeders_alone(
    cluster: Cluster, tmp_path: Path, static_server: tuple[str, Path], liar: bool
) -> None:
    """The edge's only source of chunks is a stock libtorrent seeder (the manifest and the
    torrent come from a static mirror that holds no level); with ``liar``, another seeder
    sends corrupt data for every piece and is banned, and the model still completes."""
    libtorrent()
    mid = cluster.publish()["model_id"]
    url, root = static_server
    mirror_without_levels(cluster.seed_store, NAME, mid, root)
    torrent = (cluster.seed_store / "models" / mid / "torrent").read_bytes()
    seeders = []
    if liar:
        bad = tmp_path / "bad"
        shutil.copytree(cluster.seed_store / "models" / mid / "levels", bad / mid / "levels")
        for level in (bad / mid / "levels").iterdir():
            data = bytearray(level.read_bytes())
            for i in range(0, len(data), 4096):
                data[i] ^= 0xFF
            level.write_bytes(bytes(data))
        seeders.append(Seeder(torrent, bad, lying=True, host="127.0.0.2"))
    # with a liar, the honest seeder is slow: the edge asks both for pieces
    seeders.append(Seeder(torrent, cluster.seed_store / "models", upload_rate=300_000 * liar))
    try:
        bt = {"enabled": True, "listen": "127.0.0.1:0", "dht": False}
        bt["peers"] = [s.address for s in seeders]
        edge = cluster.start(
            cluster.node("edge", want=[NAME], web_seeds=[url], extra={"bittorrent": bt})
        )
        wait_until(lambda: edge.client().status(NAME).get("complete"), 120, "the edge")
    finally:
        for s in seeders:
            s.close()
    t = edge.request("GET", "/v1/status").json()["transfers"][mid]
    total = Store(cluster.seed_store, create=False).load_manifest(mid, None).manifest.total_bytes
    assert t["bytes_by_source"]["bittorrent"] == total, t["bytes_by_source"]
    assert t["chunks_failed"] == 0
    reached = {int(k): v for k, v in t["level_complete_at"].items()}
    answer = edge.request("GET", f"/v1/models/{NAME}/best?min_level=max")
    assert answer.status == 200 and answer.headers["Peerprog-Level"] == str(len(reached) - 1)
    got, _ = parse_safetensors(answer.body)
    want = read_model(digits.model_path())
    assert all(got[k].array.tobytes() == want[k].array.tobytes() for k in want)
    logs = cluster.logs(edge)
    assert "Traceback" not in logs
    if liar:
        assert "BitTorrent hash failed" in logs and "BitTorrent peer banned" in logs
    # whole now: its partial torrent and scratch files are gone, and it seeds from the store
    wait_until(lambda: not any((edge.data_dir / "bittorrent").glob("*/levels/*")), 20, "cleanup")


def test_an_edge_killed_while_fetching_over_bittorrent_resumes_and_ends_exact(
    cluster: Cluster, tmp_path: Path, static_server: tuple[str, Path]
) -> None:
    """SIGKILL mid-fetch (pieces in libtorrent's scratch folder, some chunks recorded): the
    restarted edge fetches the rest over BitTorrent, and its store is the model's."""
    libtorrent()
    mid = cluster.publish()["model_id"]
    url, root = static_server
    mirror_without_levels(cluster.seed_store, NAME, mid, root)
    torrent = (cluster.seed_store / "models" / mid / "torrent").read_bytes()
    seeder = Seeder(torrent, cluster.seed_store / "models", upload_rate=200_000)  # ~5 s
    try:
        bt = {"enabled": True, "listen": "127.0.0.1:0", "dht": False, "peers": [seeder.address]}
        edge = cluster.node("edge", want=[NAME], web_seeds=[url], extra={"bittorrent": bt})
        cluster.start(edge)

        def some_chunks() -> bool:
            t = edge.request("GET", "/v1/status").json()["transfers"].get(mid)
            return bool(t and t["bytes_by_source"].get("bittorrent", 0) > 100_000)

        wait_until(some_chunks, 60, "chunks over BitTorrent")
        cluster.stop(edge, signal.SIGKILL)
        assert any((edge.data_dir / "bittorrent").glob("*/levels/*"))  # its scratch files
        cluster.start(edge)
        wait_until(lambda: edge.client().status(NAME).get("complete"), 120, "the edge")
    finally:
        seeder.close()
    answer = edge.request("GET", f"/v1/models/{NAME}/best?min_level=max")
    got, _ = parse_safetensors(answer.body)
    want = read_model(digits.model_path())
    assert all(got[k].array.tobytes() == want[k].array.tobytes() for k in want)
    for lv in Store(cluster.seed_store, create=False).load_manifest(mid, None).manifest.levels:
        path = f"models/{mid}/levels/{lv.level}"
        assert (edge.data_dir / path).read_bytes() == (cluster.seed_store / path).read_bytes()
    assert "Traceback" not in cluster.logs(edge)
