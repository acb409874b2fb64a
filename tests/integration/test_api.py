"""The local API of real daemons, over their real unix socket (and TCP listener).

One seed and one edge that fetched the reference model run for the whole module; the
tests read every endpoint, status code and header of DESIGN.md "Local API".
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy

from peerprog.api.client import Client
from peerprog.api.errors import BadRequest, DaemonNotRunning, LevelTimeout, UnknownModel
from peerprog.config import load_config
from peerprog.formats import read_model
from peerprog.reference import digits
from tests.integration.cluster import TOKEN, Cluster, Daemon, run_cli

NAME = digits.MODEL_NAME
BEST_HEADERS = (
    "Peerprog-Model-Id",
    "Peerprog-Level",
    "Peerprog-Levels-Total",
    "Peerprog-Bytes-Received",
    "Peerprog-Bytes-Total",
)


class Setup:
    def __init__(self, cluster: Cluster, publish: dict[str, Any], seed: Daemon, edge: Daemon):
        self.cluster = cluster
        self.publish = publish
        self.seed = seed
        self.edge = edge
        self.model_id: str = publish["model_id"]
        self.levels_total = len(publish["levels"])


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    with Cluster(tmp_path_factory.mktemp("api")) as c:
        doc = c.publish()
        seed = c.start(c.seed())
        edge = c.start(
            c.node("edge", want=[NAME], bootstrap=[seed], api_tcp=True,
                   cors_origins=["http://localhost:3000"])
        )  # fmt: skip
        edge.client().best(NAME, min_level="max", wait=60)
        yield Setup(c, doc, seed, edge)


def error_json(answer: Any, status: int, code: str) -> dict[str, str]:
    assert answer.status == status, (answer.status, answer.body[:300])
    assert answer.headers["Content-Type"].startswith("application/json")
    doc: dict[str, str] = answer.json()
    assert set(doc) == {"error", "detail"} and doc["error"] == code, doc
    assert "Traceback" not in doc["detail"]
    return doc


# --- JSON endpoints --------------------------------------------------------------------------

STATUS_FIELDS = {
    "name", "model_id", "version", "codec", "level", "levels_total", "bytes_received",
    "bytes_total", "complete", "peers", "problem", "files",
}  # fmt: skip


def test_models_list_and_status(setup: Setup) -> None:
    edge = setup.edge
    answer = edge.request("GET", "/v1/models")
    assert answer.status == 200 and answer.headers["Content-Type"].startswith("application/json")
    (doc,) = [d for d in answer.json() if d["name"] == NAME]
    assert set(doc) == STATUS_FIELDS
    assert doc["name"] == NAME and doc["model_id"] == setup.model_id and doc["version"] == 1
    assert doc["codec"] == "groupplane" and doc["complete"] is True
    assert doc["level"] == setup.levels_total - 1 == doc["levels_total"] - 1
    assert doc["bytes_received"] == doc["bytes_total"] == setup.publish["total_bytes"]
    assert doc["peers"] >= 1
    one = edge.request("GET", f"/v1/models/{NAME}")
    assert one.status == 200 and one.json() == doc

    status = edge.request("GET", "/v1/status").json()
    assert status["node"] == "edge" and doc in status["models"]
    assert NAME in status["wanted"] and status["peers"] >= 1
    assert status["bytes_received_by_source"]["seed"] == setup.publish["total_bytes"]
    seed_doc = setup.seed.client().status(NAME)
    assert seed_doc["complete"] and seed_doc["model_id"] == setup.model_id


def test_put_starts_fetching_an_unknown_name(setup: Setup) -> None:
    edge = setup.edge
    answer = edge.request("PUT", "/v1/models/not-published")
    assert answer.status == 202
    doc = answer.json()
    assert set(doc) == STATUS_FIELDS
    assert doc["name"] == "not-published" and doc["model_id"] is None and doc["level"] == -1

    def sans_problem(d: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in d.items() if k != "problem"}  # it may change meanwhile

    again = edge.request("GET", "/v1/models/not-published").json()
    assert sans_problem(again) == sans_problem(doc)
    assert sans_problem(doc) in [sans_problem(d) for d in edge.request("GET", "/v1/models").json()]
    # wanted but found nowhere: best waits, then 503 with Retry-After
    answer = edge.request("GET", "/v1/models/not-published/best?wait=0.2")
    error_json(answer, 503, "level not reached")
    assert int(answer.headers["Retry-After"]) >= 1


def test_metrics(setup: Setup) -> None:
    answer = setup.edge.request("GET", "/metrics")
    assert answer.status == 200
    assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = answer.body.decode()
    labels = f'name="{NAME}",version="1",model_id="{setup.model_id}"'
    total = setup.publish["total_bytes"]
    assert f'peerprog_received_bytes_total{{{labels},source="seed"}} {total}' in text
    assert f'peerprog_received_bytes_total{{{labels},source="peer"}} 0' in text
    assert f'peerprog_received_bytes_total{{{labels},source="web_seed"}} 0' in text
    assert f"peerprog_model_level{{{labels}}} {setup.levels_total - 1}" in text
    chunks = re.search(rf"peerprog_chunks_verified_total\{{{labels}\}} (\d+)", text)
    assert chunks and int(chunks.group(1)) > 0
    assert f"peerprog_chunks_failed_total{{{labels}}} 0" in text
    assert re.search(r"^peerprog_peers [1-9]", text, re.M)
    seed_text = setup.seed.client().metrics()
    assert re.search(rf"peerprog_model_uploaded_bytes_total\{{{labels}\}} [1-9]", seed_text)


def test_errors_are_json_with_the_right_status(setup: Setup) -> None:
    edge = setup.edge
    error_json(edge.request("GET", "/v1/models/nope"), 404, "unknown model")
    error_json(edge.request("GET", "/v1/models/nope/best?wait=1"), 404, "unknown model")
    error_json(edge.request("GET", "/v1/models/nope/events"), 404, "unknown model")
    error_json(edge.request("GET", "/v1/models/bad%20name"), 400, "bad request")
    error_json(edge.request("PUT", "/v1/models/bad%20name"), 400, "bad request")
    error_json(edge.request("GET", "/v2/whatever"), 404, "not found")
    error_json(edge.request("DELETE", "/v1/models/x"), 404, "unknown model")
    answer = edge.request("POST", "/v1/models/x")
    error_json(answer, 405, "method not allowed")
    assert "GET" in answer.headers["Allow"] and "DELETE" in answer.headers["Allow"]
    for query in ("min_level=-1", "min_level=x", "min_level=99", "wait=-1", "wait=x",
                  "level=1", "min_level=1&min_level=2"):  # fmt: skip
        error_json(edge.request("GET", f"/v1/models/{NAME}/best?{query}"), 400, "bad request")


# --- best ------------------------------------------------------------------------------------


def test_best_is_the_reconstruct_file_with_headers(setup: Setup, tmp_path: Path) -> None:
    edge = setup.edge
    last = setup.levels_total - 1
    answer = edge.request("GET", f"/v1/models/{NAME}/best")
    assert answer.status == 200
    h = answer.headers
    assert h["Content-Type"] == "application/octet-stream"
    assert int(h["Content-Length"]) == len(answer.body)
    assert h["ETag"] == f'"{setup.model_id}.{last}"'
    assert [h[k] for k in BEST_HEADERS] == [
        setup.model_id, str(last), str(setup.levels_total),
        str(setup.publish["total_bytes"]), str(setup.publish["total_bytes"]),
    ]  # fmt: skip
    loaded = safetensors.numpy.load(answer.body)
    out = tmp_path / "exact.safetensors"
    run_cli("reconstruct", NAME, "--store", str(edge.data_dir), "--level", "max",
            "--out", str(out))  # fmt: skip
    expect = read_model(out)
    original = read_model(digits.model_path())
    assert loaded.keys() == expect.keys() == original.keys()
    for k in expect:
        assert loaded[k].dtype == expect[k].array.dtype == np.float32
        assert np.array_equal(loaded[k], expect[k].array)
        assert loaded[k].tobytes() == original[k].array.tobytes()  # lossless at the last level
    (n,) = np.frombuffer(answer.body[:8], "<u8")
    meta = json.loads(answer.body[8 : 8 + int(n)])["__metadata__"]
    assert meta["peerprog.model_id"] == setup.model_id
    assert meta["peerprog.level"] == str(last)
    assert meta["peerprog.levels_total"] == str(setup.levels_total)
    assert meta["peerprog.bytes_received"] == h["Peerprog-Bytes-Received"]
    assert meta["peerprog.bytes_total"] == h["Peerprog-Bytes-Total"]
    assert meta["peerprog.name"] == NAME and meta["peerprog.version"] == "1"
    assert meta["peerprog.exact"] == "true"


def test_best_min_level_max_etag_and_head(setup: Setup) -> None:
    edge = setup.edge
    full = edge.request("GET", f"/v1/models/{NAME}/best?min_level=max&wait=1")
    assert full.status == 200
    etag = full.headers["ETag"]
    again = edge.request("GET", f"/v1/models/{NAME}/best", {"If-None-Match": etag})
    assert again.status == 304 and again.body == b"" and again.headers["ETag"] == etag
    assert again.headers["Peerprog-Level"] == full.headers["Peerprog-Level"]
    other = edge.request("GET", f"/v1/models/{NAME}/best", {"If-None-Match": '"x.0"'})
    assert other.status == 200 and other.body == full.body
    head = edge.request("HEAD", f"/v1/models/{NAME}/best")
    assert head.status == 200 and head.body == b"" and head.headers["ETag"] == etag
    # the seed serves its own exact model the same way
    seed_best = setup.seed.request("GET", f"/v1/models/{NAME}/best?min_level=max")
    assert seed_best.status == 200 and seed_best.body == full.body


def test_concurrent_exact_requests_share_one_snapshot(setup: Setup) -> None:
    before = setup.edge.client().node_status()["api"]["snapshots_built"]
    from concurrent.futures import ThreadPoolExecutor

    client = setup.edge.client()
    with ThreadPoolExecutor(8) as pool:
        models = list(pool.map(lambda _: client.best(NAME), range(16)))
    assert {m.etag for m in models} == {models[0].etag}
    assert client.node_status()["api"]["snapshots_built"] == before


# --- the clients -----------------------------------------------------------------------------


def test_client_best_and_errors(setup: Setup) -> None:
    client = setup.edge.client()
    model = client.best(NAME, min_level="max", wait=5)
    assert model.level == setup.levels_total - 1 and model.last and model.exact
    assert model.model_id == setup.model_id and model.levels_total == setup.levels_total
    original = read_model(digits.model_path())
    for k, t in original.items():
        assert model.dtypes[k] == "float32" and np.array_equal(model.tensors[k], t.array)
    assert model.tensors["fc1.weight"].flags.writeable
    assert NAME in [m["name"] for m in client.models()]
    with pytest.raises(UnknownModel, match="nope"):
        client.best("nope")
    with pytest.raises(UnknownModel):
        client.status("nope")
    with pytest.raises(BadRequest, match="min_level"):
        client.best(NAME, min_level=99)
    with pytest.raises(BadRequest):
        client.best(NAME, min_level=-1)
    client.want("never-published")
    with pytest.raises(LevelTimeout) as timeout:
        client.best("never-published", wait=0.1)
    assert timeout.value.retry_after >= 1
    gone = setup.cluster.root / "no-daemon.sock"
    with pytest.raises(DaemonNotRunning, match=re.escape(str(gone))):
        Client(gone).best(NAME)
    with pytest.raises(DaemonNotRunning, match=re.escape(str(gone))):
        Client(gone).models()


async def test_async_client(setup: Setup) -> None:
    from peerprog import AsyncClient

    async with AsyncClient(setup.edge.socket) as client:
        model = await client.best(NAME, min_level="max")
        assert model.last and model.model_id == setup.model_id
        assert (await client.status(NAME))["complete"] is True
        assert "peerprog_model_level{" in await client.metrics()
        got = [m async for m in client.watch(NAME)]
        assert [m.level for m in got] == [setup.levels_total - 1]
        events = [e async for e in client.events(NAME)]
        assert [e.event for e in events] == ["level", "complete"]
        assert events[0].data["level"] == setup.levels_total - 1
        with pytest.raises(UnknownModel):
            await client.best("nope")
    async with AsyncClient(setup.cluster.root / "none.sock") as client:
        with pytest.raises(DaemonNotRunning, match=r"none\.sock"):
            await client.models()


def test_load_into_gives_the_accuracy_of_each_level(setup: Setup, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    x, y = digits.load_test_split()
    inputs = torch.from_numpy(x.astype(np.float32)[:, None] / 16.0)
    net = DigitsCNN(torch)
    client = setup.edge.client()
    model = client.load_into(net, NAME, min_level="max")
    assert model.last
    with torch.no_grad():
        pred = net(inputs).argmax(1).numpy()
    full = digits.evaluate(digits.load_state_dict())
    assert abs(float(np.mean(pred == y)) - full.accuracy) <= 1 / len(y)
    tensors = client.best_torch(NAME)
    assert tensors["fc1.weight"].dtype == torch.float32
    assert torch.equal(tensors["fc2.bias"], net.fc2.bias.detach())
    # each level (as reconstruct writes it) gives the same accuracy through torch
    for level in range(setup.levels_total):
        out = tmp_path / f"l{level}.safetensors"
        run_cli("reconstruct", NAME, "--store", str(setup.edge.data_dir), "--level",
                str(level), "--out", str(out))  # fmt: skip
        expect = digits.evaluate(digits.load_state_dict(out))
        net.load_state_dict(
            {k: torch.from_numpy(v) for k, v in digits.load_state_dict(out).items()}
        )
        with torch.no_grad():
            acc = float(np.mean(net(inputs).argmax(1).numpy() == y))
        assert abs(acc - expect.accuracy) <= 1 / len(y), level


def DigitsCNN(torch: Any) -> Any:
    """The reference model's torch module (as in scripts/train_reference.py)."""
    nn = torch.nn

    class Net(nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(1, 32, kernel_size=3, padding=1)
            self.conv2 = nn.Conv2d(32, 64, kernel_size=3, padding=1)
            self.pool = nn.MaxPool2d(2)
            self.fc1 = nn.Linear(64 * 4 * 4, 256)
            self.fc2 = nn.Linear(256, 10)

        def forward(self, x: Any) -> Any:
            x = torch.relu(self.conv1(x))
            x = torch.relu(self.conv2(x))
            x = torch.flatten(self.pool(x), 1)
            return self.fc2(torch.relu(self.fc1(x)))

    return Net()


# --- the socket and the TCP listener ---------------------------------------------------------


def test_socket_is_0600_in_its_folder(setup: Setup) -> None:
    st = os.stat(setup.edge.socket)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600


def test_a_live_socket_is_refused_a_stale_one_replaced(setup: Setup, tmp_path: Path) -> None:
    c = setup.cluster
    clash = c.node("clash", store=tmp_path / "store")
    text = clash.config_path.read_text().replace(str(clash.socket), str(setup.edge.socket))
    clash.config_path.write_text(text)
    c.start(clash, wait=False)
    assert clash.proc is not None and clash.proc.wait(30) == 1
    assert "another peerprog daemon is serving its local API" in c.logs(clash)
    assert setup.edge.client().models()  # the live daemon is untouched

    stale = c.node("stale", store=tmp_path / "store2")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(stale.socket))  # a socket file nobody listens on
    c.start(stale)
    assert stale.client().models() == []
    assert "stale API socket" in c.logs(stale)
    assert c.stop(stale) == 0
    assert not stale.socket.exists()


def test_tcp_listener_needs_the_token(setup: Setup) -> None:
    import urllib.error
    import urllib.request

    url = setup.edge.tcp_url + f"/v1/models/{NAME}"

    def get(headers: dict[str, str], method: str = "GET") -> tuple[int, Any, bytes]:
        req = urllib.request.Request(url, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read()

    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        status, h, body = get(headers)
        assert status == 401 and json.loads(body)["error"] == "unauthorized"
        assert h["WWW-Authenticate"].startswith("Bearer")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    status, h, body = get(auth)
    assert status == 200 and json.loads(body)["model_id"] == setup.model_id
    assert "Access-Control-Allow-Origin" not in h
    # CORS: only for the listed origin; a preflight needs no token
    ok = "http://localhost:3000"
    status, h, body = get({**auth, "Origin": ok})
    assert status == 200 and h["Access-Control-Allow-Origin"] == ok
    assert "Peerprog-Level" in h["Access-Control-Expose-Headers"]
    status, h, body = get({"Origin": ok})
    assert status == 401 and h["Access-Control-Allow-Origin"] == ok
    status, h, body = get({**auth, "Origin": "http://evil.example"})
    assert status == 403 and json.loads(body)["error"] == "origin not allowed"
    assert "Access-Control-Allow-Origin" not in h
    pre = {"Origin": ok, "Access-Control-Request-Method": "GET"}
    status, h, body = get(pre, method="OPTIONS")
    assert status == 204 and h["Access-Control-Allow-Origin"] == ok
    assert "Authorization" in h["Access-Control-Allow-Headers"]
    status, h, body = get({**pre, "Origin": "http://evil.example"}, method="OPTIONS")
    assert status == 403
    # best over TCP
    req = urllib.request.Request(url + "/best", headers=auth)
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.headers["Peerprog-Model-Id"] == setup.model_id
        assert safetensors.numpy.load(resp.read()).keys() == read_model(digits.model_path()).keys()


def test_tcp_listener_is_off_by_default(setup: Setup) -> None:
    assert load_config(setup.seed.config_path).api.listen_tcp == ""
    assert setup.seed.client().node_status()["api"]["listen_tcp"] == ""
    assert "bearer token required" not in setup.cluster.logs(setup.seed)
    assert "bearer token required" in setup.cluster.logs(setup.edge)
