"""Repositories without daemons: scanning a folder, publishing it, the manifest's file list
(and its refusals), rebuilding every level as a folder, and the client's directory stage."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from peerprog.api.errors import ApiError
from peerprog.api.tree import DirStage, parse_tree
from peerprog.codec.base import RawTensor
from peerprog.dirswap import swap_dir
from peerprog.errors import FormatError, InputError, VerificationError
from peerprog.formats import write_safetensors
from peerprog.manifest.model import parse_body
from peerprog.manifest.tree import MARKER, parse_files, path_problem
from peerprog.store import Store, publish_file, publish_repo
from peerprog.store.scan import kept, scan_repo

KEY = Ed25519PrivateKey.generate()


def bf16(a: np.ndarray) -> np.ndarray:
    return (a.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)


def make_repo(root: Path, seed: int = 0) -> Path:
    """A small sharded repository: configs, a module subfolder, two shards and the index."""
    rng = np.random.default_rng(seed)
    (root / "1_Pooling").mkdir(parents=True)
    (root / "config.json").write_text('{"model_type": "toy"}')
    (root / "1_Pooling" / "config.json").write_text('{"pooling_mode": "mean"}')
    a = {
        "w": RawTensor("float32", rng.standard_normal((64, 128)).astype(np.float32)),
        "b": RawTensor("float32", rng.standard_normal(64).astype(np.float32)),
    }
    b = {
        "emb": RawTensor("bfloat16", bf16(rng.standard_normal((48, 256)))),
        "empty": RawTensor("float32", np.zeros((0, 4), np.float32)),
    }
    write_safetensors(root / "model-00001-of-00002.safetensors", a, {"format": "pt"})
    write_safetensors(root / "model-00002-of-00002.safetensors", b)
    weight_map = {n: "model-00001-of-00002.safetensors" for n in a}
    weight_map |= {n: "model-00002-of-00002.safetensors" for n in b}
    (root / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return root


def sha(path: Path) -> bytes:
    return hashlib.sha256(path.read_bytes()).digest()


def tree_of(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): sha(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MARKER
    }


def test_every_level_is_a_whole_folder_and_the_last_is_byte_identical(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    store = Store(tmp_path / "store")
    result = publish_repo(repo, name="toy", key=KEY, store=store)
    m = result.signed.manifest
    assert parse_body(m.to_body()) == m
    assert [f.path for f in m.files] == sorted(tree_of(repo))
    assert {f.path for f in m.files if f.coded} == {
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    }
    source = tree_of(repo)
    assert all(f.sha256 == source[f.path] for f in m.files)
    prior = None
    errors = []
    for level in range(m.levels_total):
        out = tmp_path / f"level{level}"
        store.decode(result.signed, level, out, prior=prior)
        got = tree_of(out)
        assert set(got) == set(source)
        whole = [f.path for f in m.files if not f.coded]
        assert all(got[p] == source[p] for p in whole)  # configs exact from level 0 on
        marker = json.loads((out / MARKER).read_text())
        assert marker["level"] == level and marker["model_id"] == result.signed.model_id
        with open(out / "model-00001-of-00002.safetensors", "rb") as f:
            (hlen,) = struct.unpack("<Q", f.read(8))
            f.seek(8 + hlen)
            w = np.frombuffer(f.read(64 * 128 * 4), np.float32)
        ref = np.frombuffer(
            (repo / "model-00001-of-00002.safetensors").read_bytes()[8 + hlen :], np.float32
        )[: 64 * 128]
        errors.append(float(np.abs(w - ref).max()))
        prior = out
    assert got == source  # the last level: every file byte for byte
    assert errors[-1] == 0 and errors[0] > errors[-2] >= 0


def test_hf_cache_snapshot_of_symlinks_publishes_like_the_folder(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    blobs = tmp_path / "cache" / "blobs"
    snap = tmp_path / "cache" / "snapshots" / "abc123"
    blobs.mkdir(parents=True)
    for p in repo.rglob("*"):
        if p.is_file():
            blob = blobs / hashlib.sha256(p.read_bytes()).hexdigest()
            blob.write_bytes(p.read_bytes())
            link = snap / p.relative_to(repo)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
    plain = scan_repo(repo)
    linked = scan_repo(snap)
    assert [(f.path, f.size) for f in plain.files] == [(f.path, f.size) for f in linked.files]
    a = publish_repo(repo, name="a", key=KEY, store=Store(tmp_path / "s1")).signed.manifest
    b = publish_repo(snap, name="a", key=KEY, store=Store(tmp_path / "s2")).signed.manifest
    assert [(f.path, f.sha256) for f in a.files] == [(f.path, f.sha256) for f in b.files]


def test_include_exclude_as_huggingface_cli(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    (repo / ".git").mkdir()
    (repo / ".git" / "HEAD").write_text("ref")
    (repo / "pytorch_model.bin").write_bytes(b"x" * 100)
    (repo / "onnx").mkdir()
    (repo / "onnx" / "model.onnx").write_bytes(b"y" * 10)
    scan = scan_repo(repo)
    paths = [f.path for f in scan.files]
    assert ".git/HEAD" not in paths and "pytorch_model.bin" in paths
    assert set(scan.duplicates) == {"pytorch_model.bin", "onnx/model.onnx"}
    slim = scan_repo(repo, exclude=["*.bin", "onnx/"])
    assert {f.path for f in slim.files} == set(paths) - {"pytorch_model.bin", "onnx/model.onnx"}
    assert slim.excluded == scan.excluded + 2
    only = scan_repo(repo, include=["*.json", "*.safetensors"])
    assert all(f.path.endswith((".json", ".safetensors")) for f in only.files)
    assert kept("a/b.txt", ["a/"], []) and not kept("b.txt", ["a/"], [])
    assert not kept(MARKER, [], [])


def test_an_index_naming_a_missing_shard_is_refused_naming_it(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    (repo / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(InputError, match=r"model-00002-of-00002\.safetensors"):
        scan_repo(repo)
    repo2 = make_repo(tmp_path / "repo2")
    with pytest.raises(InputError, match="model-00002-of-00002"):
        scan_repo(repo2, exclude=["model-00002*"])


def test_an_index_naming_a_tensor_its_shard_lacks_is_refused(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    index = json.loads((repo / "model.safetensors.index.json").read_text())
    index["weight_map"]["ghost"] = "model-00001-of-00002.safetensors"
    (repo / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(InputError, match="ghost"):
        publish_repo(repo, name="toy", key=KEY, store=Store(tmp_path / "store"))


def test_a_corrupt_shard_is_named_and_nothing_is_stored(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    shard = repo / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-10])
    store = Store(tmp_path / "store")
    with pytest.raises(FormatError, match=r"model-00002-of-00002\.safetensors"):
        publish_repo(repo, name="toy", key=KEY, store=store)
    assert store.model_ids() == [] and store.resolve("toy") is None


def test_a_folder_without_safetensors_is_refused(tmp_path: Path) -> None:
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.json").write_text("{}")
    with pytest.raises(InputError, match=r"no \.safetensors"):
        publish_repo(tmp_path / "r", name="x", key=KEY, store=Store(tmp_path / "s"))


def test_too_many_files_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import peerprog.store.scan as repo_mod

    monkeypatch.setattr(repo_mod, "MAX_FILES", 50)
    repo = make_repo(tmp_path / "repo")
    for i in range(60):
        (repo / f"tiny{i}.txt").write_text(str(i))
    with pytest.raises(InputError, match="more than 50 files"):
        scan_repo(repo)


def header_file(path: Path, header: dict[str, object], body: bytes) -> Path:
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + body)
    return path


def test_safetensors_with_overlapping_data_or_a_gap_is_refused(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    entry = {"dtype": "F32", "shape": [4]}
    overlap = {"a": {**entry, "data_offsets": [0, 16]}, "b": {**entry, "data_offsets": [8, 24]}}
    with pytest.raises(FormatError, match="overlaps"):
        publish_file(
            header_file(tmp_path / "o.safetensors", overlap, bytes(24)),
            name="o",
            key=KEY,
            store=store,
        )
    gap = {"a": {**entry, "data_offsets": [0, 16]}, "b": {**entry, "data_offsets": [20, 36]}}
    with pytest.raises(FormatError, match="gap"):
        publish_file(
            header_file(tmp_path / "g.safetensors", gap, bytes(36)), name="g", key=KEY, store=store
        )
    assert store.model_ids() == []


def test_safetensors_metadata_that_is_not_strings_is_refused(tmp_path: Path) -> None:
    header = {
        "__metadata__": {"epochs": 3},
        "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
    }
    with pytest.raises(FormatError, match="not a string"):
        publish_file(
            header_file(tmp_path / "m.safetensors", header, bytes(4)),
            name="m",
            key=KEY,
            store=Store(tmp_path / "store"),
        )


@pytest.mark.parametrize(
    "path",
    ["/etc/passwd", "../x", "a/../../x", "a\\b", "a\x00b", "", "a//b", "./a", "a/", MARKER],
)
def test_unsafe_paths_in_a_manifest_are_refused(path: str) -> None:
    assert path_problem(path) is not None
    entry = {
        "path": path,
        "kind": "whole",
        "size": 1,
        "sha256": bytes(32),
        "blob": [0, 1],
        "tensors": [0, 0],
    }
    with pytest.raises(VerificationError):
        parse_files([entry], 10, 0)


def test_a_manifest_with_a_file_inside_another_or_twice_is_refused() -> None:
    def whole(path: str) -> dict[str, object]:
        return {
            "path": path,
            "kind": "whole",
            "size": 1,
            "sha256": bytes(32),
            "blob": [0, 1],
            "tensors": [0, 0],
        }

    with pytest.raises(VerificationError, match="inside"):
        parse_files([whole("a"), whole("a/b")], 10, 0)
    with pytest.raises(VerificationError, match="twice"):
        parse_files([whole("a"), whole("a")], 10, 0)
    with pytest.raises(VerificationError, match="outside level 0"):
        parse_files([{**whole("a"), "blob": [10, 1]}], 10, 0)


def test_the_client_never_writes_outside_its_destination(tmp_path: Path) -> None:
    doc = {
        "name": "m",
        "model_id": "0" * 64,
        "version": 1,
        "level": 0,
        "levels_total": 2,
        "exact": False,
        "files": [{"path": "../evil", "size": 1, "sha256": "", "coded": False}],
    }
    with pytest.raises(ApiError, match="path"):
        parse_tree(doc, {})


def test_the_client_refuses_a_folder_it_did_not_write(tmp_path: Path) -> None:
    mine = tmp_path / "app"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    doc = {
        "name": "m",
        "model_id": "0" * 64,
        "version": 1,
        "level": 0,
        "levels_total": 2,
        "exact": False,
        "files": [],
    }
    with pytest.raises(ApiError, match="did not write"):
        DirStage(mine, parse_tree(doc, {}))
    assert (mine / "notes.txt").read_text() == "keep me"


def test_a_directory_swap_replaces_the_whole_folder(tmp_path: Path) -> None:
    old, new = tmp_path / "dest", tmp_path / "new"
    old.mkdir()
    (old / "a").write_text("old")
    (old / "only-old").write_text("x")
    new.mkdir()
    (new / "a").write_text("new")
    swap_dir(new, old)
    assert sorted(p.name for p in old.iterdir()) == ["a"] and (old / "a").read_text() == "new"
    assert not new.exists()


async def test_a_repository_level_stays_served_until_the_one_after_next(tmp_path: Path) -> None:
    """An app writing level n as a directory finishes it though level n+1 is built
    meanwhile; once n+2 is built, level n's files are 410 (and nothing is built for them)."""
    from peerprog.api.context import ApiContext
    from peerprog.api.errors import LevelGone
    from peerprog.api.query import BestQuery
    from tests.unit.test_api_support import FakeNode

    store = Store(tmp_path / "store")
    signed = publish_repo(make_repo(tmp_path / "repo"), name="toy", key=KEY, store=store).signed
    node = FakeNode(store)
    state = node.add(signed, levels=1)
    ctx = ApiContext(node)
    assert (await ctx.resolve_best("toy", BestQuery()))[0].level == 0
    assert ctx.served_level("toy", signed.model_id, 0).path.is_dir()
    for level in (1, 2):
        node.receive(state, level)
        assert (await ctx.resolve_best("toy", BestQuery()))[0].level == level
    assert ctx.served_level("toy", signed.model_id, 1).level == 1  # the one before: kept
    assert (ctx.served_level("toy", "", 2).path / "config.json").read_text()
    with pytest.raises(LevelGone, match="no longer served"):
        ctx.served_level("toy", signed.model_id, 0)
    assert not (store.decoded_dir(signed.model_id) / "0").exists()
    with pytest.raises(LevelGone):
        ctx.served_level("toy", "f" * 64, 2)


def test_a_tree_of_more_files_than_open_descriptors_is_built(tmp_path: Path) -> None:
    import resource

    repo = make_repo(tmp_path / "repo")
    (repo / "many").mkdir()
    for i in range(600):
        (repo / "many" / f"{i}.txt").write_text(str(i))
    store = Store(tmp_path / "store")
    signed = publish_repo(repo, name="toy", key=KEY, store=store).signed
    out = tmp_path / "out"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    spare = 100  # descriptors left to the build: fewer than the tree's 600 files
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + spare, hard))
    try:
        store.decode(signed, signed.manifest.levels_total - 1, out)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert tree_of(out) == tree_of(repo)
