"""Repositories end to end on real daemons: a sentence-transformers model and a bf16 Llama,
built by transformers and saved in shards, published as folders by the seed, fetched level
by level by an edge over a capped link, and handed to the apps as directories that
``SentenceTransformer(dir)`` and ``from_pretrained(dir)`` load at every level — outputs
approaching the full model's, every file byte for byte the source at the last level."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from peerprog.api.errors import BadRequest
from peerprog.manifest.tree import MARKER
from tests.integration.cluster import Cluster, run_cli, wait_until
from tests.repos import embed, llama_repo, load_hf, sentence_transformer_repo

RATE = 150_000  # bytes/s: a few hundred KB per repository, so several levels arrive apart


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with Cluster(tmp_path) as c:
        yield c


def digests(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MARKER
    }


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    num = (a * b).sum(1)
    return float(np.mean(num / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


def logits(folder: Path) -> np.ndarray:
    model = load_hf(folder)  # raises on missing or unexpected keys
    ids = torch.arange(1, 17).reshape(1, 16)
    with torch.no_grad():
        out = model(input_ids=ids).logits
    return out.float().numpy()


def test_apps_load_a_repository_directory_at_every_level(cluster: Cluster, tmp_path: Path) -> None:
    st = sentence_transformer_repo(tmp_path / "src" / "st")
    llama = llama_repo(tmp_path / "src" / "llama")
    published = {
        "st": cluster.publish(st, name="st", chunk_size=4096),
        "llama": cluster.publish(llama, name="llama", chunk_size=4096),
    }
    assert {f["path"] for f in published["st"]["files"]} == set(digests(st))
    seed = cluster.start(cluster.seed())
    edge = cluster.start(
        cluster.node("edge", bootstrap=[seed], want=["st"], download_bytes_per_s=RATE)
    )
    client = edge.client(timeout=60)
    full_emb = embed(st)
    full_logits = logits(llama)

    seen: dict[str, list[tuple[int, float]]] = {"st": [], "llama": []}
    for d in client.watch("st", dest=tmp_path / "app" / "st", wait=60):
        assert json.loads((d.path / MARKER).read_text())["level"] == d.level
        load_hf(d.path)  # the transformer loads with no missing or unexpected key
        seen["st"].append((d.level, cosine(embed(d.path), full_emb)))
    client.want("llama")  # after the first: each arrives over the capped link in turn
    for d in client.watch("llama", dest=tmp_path / "app" / "llama", wait=60):
        seen["llama"].append((d.level, cosine(logits(d.path), full_logits)))

    for name, src in (("st", st), ("llama", llama)):
        levels = [lv for lv, _ in seen[name]]
        assert levels == sorted(set(levels)) and levels[-1] == len(published[name]["levels"]) - 1
        assert len(levels) >= 2, f"{name}: levels {levels} came all at once"
        quality = [q for _, q in seen[name]]
        assert quality[-1] > 1 - 1e-6 and quality[-1] >= quality[0]
        assert all(np.isfinite(quality))
        assert digests(tmp_path / "app" / name) == digests(src)  # byte for byte at the last

    # a single-file request names the directory calls; the status counts the files
    with pytest.raises(BadRequest, match="repository"):
        client.best("st")
    status = client.status("st")
    assert status["files"] == len(digests(st)) and status["complete"]
    assert "st" in edge.request("GET", "/metrics").body.decode()


def test_cli_fetch_reconstruct_inspect_and_a_new_version(cluster: Cluster, tmp_path: Path) -> None:
    st = sentence_transformer_repo(tmp_path / "src" / "st")
    cluster.publish(st, name="st", chunk_size=4096)
    seed = cluster.start(cluster.seed())
    edge = cluster.start(cluster.node("edge", bootstrap=[seed]))
    out = tmp_path / "fetched"
    doc = json.loads(
        run_cli("fetch", "st", "--socket", str(edge.socket), "--out", str(out), "--json")
    )
    assert doc["exact"] and digests(out) == digests(st)
    embed(out)

    first = tmp_path / "level0"
    run_cli("reconstruct", "st", "--store", str(cluster.seed_store), "--level", "0",
            "--out", str(first))  # fmt: skip
    assert set(digests(first)) == set(digests(st))
    assert np.isfinite(embed(first)).all()
    text = run_cli("inspect", "st", "--store", str(cluster.seed_store))
    assert "files" in text and "coded safetensors" in text
    assert "st" in run_cli("ls", "--store", str(cluster.seed_store))

    # a second version replaces the first on the edge, and the app's folder follows
    (st / "config_sentence_transformers.json").write_text(
        (st / "config_sentence_transformers.json").read_text().replace("{", '{"v2": 1,', 1)
    )
    doc2 = cluster.publish(st, name="st", chunk_size=4096)
    assert doc2["version"] == 2
    run_cli("publish", str(st), "--name", "other", "--key", str(cluster.key_path),
            "--store", str(cluster.seed_store), "--socket", str(seed.socket))  # fmt: skip
    client = edge.client()
    wait_until(
        lambda: (doc := client.status("st"))["version"] == 2 and doc["complete"],
        60,
        "version 2 exact on the edge",
    )
    got = client.best_dir("st", out, min_level="max", wait=60)
    assert got.version == 2 and digests(out) == digests(st)
    client.remove("st")
    assert not any(m["name"] == "st" for m in client.models())
