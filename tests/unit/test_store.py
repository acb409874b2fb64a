"""The on-disk store: layout, atomic writes, verification on load, path safety."""

from __future__ import annotations

from pathlib import Path

import pytest

from peerprog.errors import InputError, VerificationError
from peerprog.manifest import chunk_data, seal
from peerprog.store import Store
from peerprog.store.atomic import write_atomic
from tests.unit.samples import KEY, PUB, make_manifest


def filled_store(tmp_path: Path) -> tuple[Store, str]:
    m, levels = make_manifest()
    signed = seal(m, KEY)
    store = Store(tmp_path / "s")
    store.make_model_dir(signed.model_id)
    for i, data in enumerate(chunk_data(levels, m.chunk_size)):
        store.write_chunk(signed.model_id, i, data)
    store.put_manifest(signed)
    store.set_name(m.name, signed.model_id)
    return store, signed.model_id


def test_layout_matches_design(tmp_path: Path) -> None:
    store, mid = filled_store(tmp_path)
    root = tmp_path / "s"
    assert (root / "names" / "tiny").read_text().strip() == mid
    assert (root / "models" / mid / "manifest.msgpack").is_file()
    assert sorted(p.name for p in (root / "models" / mid / "chunks").iterdir()) == [
        str(i) for i in range(7)
    ]
    assert store.resolve("tiny") == mid and store.names() == {"tiny": mid}
    assert store.load_manifest(mid, {PUB}).manifest.name == "tiny"


def test_interrupted_write_leaves_no_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "f"

    def pieces():  # type: ignore[no-untyped-def]
        yield b"abc"
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        write_atomic(target, pieces())
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_scan_drops_tampered_and_truncated_chunks(tmp_path: Path) -> None:
    store, mid = filled_store(tmp_path)
    m = store.load_manifest(mid, None).manifest
    p = store.chunk_path(mid, 1)
    data = bytearray(p.read_bytes())
    data[0] ^= 1
    p.write_bytes(bytes(data))
    store.chunk_path(mid, 4).write_bytes(b"short")
    (store.chunk_path(mid, 0).parent / ".tmp-0.dead").write_bytes(b"partial")
    assert store.scan(mid, m) == [0, 2, 3, 5, 6]
    assert not store.has_chunk(mid, 1)
    assert not (store.chunk_path(mid, 0).parent / ".tmp-0.dead").exists()


def test_tampered_manifest_is_refused(tmp_path: Path) -> None:
    store, mid = filled_store(tmp_path)
    p = store.manifest_path(mid)
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 4
    p.write_bytes(bytes(data))
    with pytest.raises(VerificationError, match="stored manifest"):
        store.load_manifest(mid, None)


@pytest.mark.parametrize("bad", ["../x", "a/b", "", ".hidden", "x" * 200, "a\0b", ".."])
def test_path_components_are_validated(tmp_path: Path, bad: str) -> None:
    store = Store(tmp_path / "s")
    with pytest.raises(InputError):
        store.name_path(bad)
    with pytest.raises(InputError):
        store.model_dir(bad)
    with pytest.raises(InputError):
        store.chunk_path("0" * 64, -1)
