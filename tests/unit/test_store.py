"""The on-disk store (layout 2): level files, the record of verified chunks (durable after
the data, checked against tampering), atomic writes, the migration of a first-layout
store, and path safety."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from peerprog.errors import InputError, VerificationError
from peerprog.manifest import SignedManifest, chunk_data, seal
from peerprog.store import ModelFiles, Store
from peerprog.store.atomic import write_atomic
from peerprog.swarm import Bitfield
from tests.unit.samples import KEY, PUB, make_manifest


def filled_store(tmp_path: Path, *, record: bool = True) -> tuple[Store, SignedManifest]:
    m, levels = make_manifest()
    signed = seal(m, KEY)
    store = Store(tmp_path / "s")
    store.put_manifest(signed)
    with store.open_files(signed) as files:
        have = Bitfield(len(m.chunks))
        for i, data in enumerate(chunk_data(levels, m.chunk_size)):
            files.write_chunk(i, data)
            have.set(i)
        if record:
            files.record(have)
    store.set_name(m.name, signed.model_id)
    return store, signed


def test_layout_matches_design(tmp_path: Path) -> None:
    store, signed = filled_store(tmp_path)
    mid, m = signed.model_id, signed.manifest
    root = tmp_path / "s"
    assert (root / "names" / "tiny").read_text().strip() == mid
    assert (root / "models" / mid / "manifest.msgpack").is_file()
    levels = root / "models" / mid / "levels"
    assert sorted(p.name for p in levels.iterdir()) == [str(lv.level) for lv in m.levels]
    assert [(levels / str(lv.level)).stat().st_size for lv in m.levels] == [
        lv.bytes for lv in m.levels
    ]
    _, level_bytes = make_manifest()
    assert (levels / "1").read_bytes() == level_bytes[1]  # chunk k at its offset
    assert store.resolve("tiny") == mid and store.names() == {"tiny": mid}
    assert store.load_manifest(mid, {PUB}).manifest.name == "tiny"
    assert store.held(signed) == Bitfield.full(len(m.chunks))
    # a few files per model, whatever its chunk count
    assert len(list((root / "models" / mid).rglob("*"))) == 3 + len(m.levels)


def test_interrupted_write_leaves_no_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "f"

    def pieces():  # type: ignore[no-untyped-def]
        yield b"abc"
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        write_atomic(target, pieces())
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_a_crash_between_the_data_and_the_record_loses_only_unrecorded_chunks(
    tmp_path: Path,
) -> None:
    store, signed = filled_store(tmp_path, record=False)
    assert store.held(signed).count() == 0  # written, never recorded (until resume)
    m = signed.manifest
    with store.open_files(signed) as files:
        half = Bitfield(len(m.chunks))
        for i in range(3):
            half.set(i)
        files.record(half)
    assert store.held(signed) == half


def partly_recorded(tmp_path: Path) -> tuple[Store, SignedManifest, list[bytes]]:
    """A store whose record names level 0 (chunks 0-2), whose level files also hold chunks
    3 and 5, written after that record (a node killed before the next one), and nothing of
    chunks 4 and 6."""
    m, levels = make_manifest()
    signed = seal(m, KEY)
    chunks = chunk_data(levels, m.chunk_size)
    store = Store(tmp_path / "s")
    store.put_manifest(signed)
    with store.open_files(signed) as files:
        have = Bitfield(len(chunks))
        for i in m.levels[0].chunks:
            files.write_chunk(i, chunks[i])
            have.set(i)
        files.record(have)
        for i in (3, 5):
            files.write_chunk(i, chunks[i])
    return store, signed, chunks


def test_chunks_written_but_not_recorded_are_recorded_when_the_model_is_opened_again(
    tmp_path: Path,
) -> None:
    store, signed, _ = partly_recorded(tmp_path)
    assert sorted(store.held(signed).indices()) == [0, 1, 2]
    with store.open_files(signed) as files:
        found = files.resume()
    assert sorted(found.indices()) == [0, 1, 2, 3, 5]
    assert store.held(signed) == found  # recorded durably, not merely found
    with store.open_files(signed) as files:
        assert files.resume() == found


def test_a_wrong_chunk_on_disk_is_not_recorded_when_the_model_is_opened_again(
    tmp_path: Path,
) -> None:
    """Chunk 3's span holds other bytes (a write cut short, another chunk's data); chunk 5's
    holds zeros (reserved, never written, on a file system that cannot tell): neither
    verifies, neither is recorded, both are fetched again."""
    store, signed, chunks = partly_recorded(tmp_path)
    with store.open_files(signed) as files:
        for i, data in ((3, bytes(chunks[4])), (5, b"")):
            level, offset, length = files.span(i)
            with open(files.level_path(level), "r+b") as f:
                f.seek(offset)
                f.write(data[:length].ljust(length, b"\0"))
    with store.open_files(signed) as files:
        found = files.resume()
    assert sorted(found.indices()) == [0, 1, 2]
    assert sorted(store.held(signed).indices()) == [0, 1, 2]


def test_a_model_opened_for_the_first_time_reads_none_of_its_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Level files just created hold nothing: nothing is hashed, however large the model,
    whatever the file system says of their (reserved) blocks."""
    m, _ = make_manifest()
    signed = seal(m, KEY)
    store = Store(tmp_path / "s")
    store.put_manifest(signed)
    read: list[int] = []
    monkeypatch.setattr(ModelFiles, "verify_chunk", lambda self, i: read.append(i) or False)
    with store.open_files(signed) as files:
        assert files.resume().count() == 0
    assert read == []


def test_chunks_changed_on_disk_while_down_are_checked_again(tmp_path: Path) -> None:
    store, signed = filled_store(tmp_path)
    m = signed.manifest
    with store.open_files(signed) as files:
        level, offset, _ = files.span(4)
    path = store.level_path(signed.model_id, level)
    data = bytearray(path.read_bytes())
    data[offset] ^= 1
    path.write_bytes(bytes(data))
    held = store.held(signed)
    assert 4 not in held and held.count() == len(m.chunks) - 1


def test_a_chunk_damaged_while_open_is_never_usable(tmp_path: Path) -> None:
    store, signed = filled_store(tmp_path)
    with store.open_files(signed) as files:
        held = files.recorded()
        level, offset, _ = files.span(2)
        assert files.usable([2, 3], held)
        fd = os.open(files.level_path(level), os.O_RDWR)
        os.pwrite(fd, b"\xff", offset)
        os.close(fd)
        assert not files.usable([2], held) and 2 in files.damaged
        files.record(held)
    assert 2 not in store.held(signed)  # left out of the next record: fetched again


def test_tampered_manifest_is_refused(tmp_path: Path) -> None:
    store, signed = filled_store(tmp_path)
    p = store.manifest_path(signed.model_id)
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 4
    p.write_bytes(bytes(data))
    with pytest.raises(VerificationError, match="stored manifest"):
        store.load_manifest(signed.model_id, None)


def first_layout(tmp_path: Path) -> tuple[Path, SignedManifest, list[bytes]]:
    """A store of the first layout: a ``chunks/<index>`` file per chunk."""
    m, levels = make_manifest()
    signed = seal(m, KEY)
    root = tmp_path / "old"
    folder = root / "models" / signed.model_id
    (folder / "chunks").mkdir(parents=True)
    (root / "names").mkdir()
    (folder / "manifest.msgpack").write_bytes(signed.envelope)
    chunks = [bytes(c) for c in chunk_data(levels, m.chunk_size)]
    for i, data in enumerate(chunks):
        (folder / "chunks" / str(i)).write_bytes(data)
    (root / "names" / "tiny").write_text(signed.model_id + "\n")
    return root, signed, chunks


def test_a_first_layout_store_is_migrated_on_open(tmp_path: Path) -> None:
    root, signed, chunks = first_layout(tmp_path)
    folder = root / "models" / signed.model_id
    (folder / "chunks" / "2").write_bytes(b"damaged")  # not verified: left out
    (folder / "chunks" / "5").unlink()  # never fetched
    store = Store(root)
    assert not (folder / "chunks").exists()
    held = store.held(signed)
    assert held.indices() == [i for i in range(len(chunks)) if i not in (2, 5)]
    with store.open_files(signed) as files:
        assert all(files.read_chunk(i) == chunks[i] for i in held.indices())
    assert store.resolve("tiny") == signed.model_id


def test_a_migration_interrupted_part_way_resumes(tmp_path: Path) -> None:
    root, signed, chunks = first_layout(tmp_path)
    folder = root / "models" / signed.model_id
    (folder / ".tmp-migrate" / "levels").mkdir(parents=True)  # a crash while copying
    (folder / ".tmp-migrate" / "levels" / "0").write_bytes(b"partial")
    store = Store(root)
    assert store.held(signed).count() == len(chunks)
    assert not (folder / ".tmp-migrate").exists()


def test_an_interrupted_publish_is_removed_but_one_in_progress_is_not(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    dead = store.root / "models" / ".tmp-publish-dead"
    (dead / "levels").mkdir(parents=True)
    with store.staging() as live:
        Store(tmp_path / "s")  # another process opens the store meanwhile
        assert live.is_dir() and not dead.exists()
    assert live.is_dir()  # not committed, but the block ended without error
    Store(tmp_path / "s")
    assert not live.exists()


@pytest.mark.parametrize("bad", ["../x", "a/b", "", ".hidden", "x" * 200, "a\0b", ".."])
def test_path_components_are_validated(tmp_path: Path, bad: str) -> None:
    store = Store(tmp_path / "s")
    with pytest.raises(InputError):
        store.name_path(bad)
    with pytest.raises(InputError):
        store.model_dir(bad)
    with pytest.raises(InputError):
        store.level_path("0" * 64, -1)


def test_a_batch_of_chunks_is_one_write_per_run_of_adjacent_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``write_chunks`` lands adjacent chunks of a level in one ``pwritev`` (the fetch lands
    a request's chunks in batches), a gap or a level boundary starts another; the bytes
    are those of ``write_chunk`` one by one."""
    m, levels = make_manifest()
    signed = seal(m, KEY)
    chunks = chunk_data(levels, m.chunk_size)
    store = Store(tmp_path / "s")
    store.put_manifest(signed)
    writes: list[int] = []
    real = os.pwritev

    def counted(fd: int, buffers: list[memoryview], offset: int) -> int:
        writes.append(offset)
        return real(fd, buffers, offset)

    monkeypatch.setattr(os, "pwritev", counted)
    assert [list(lv.chunks) for lv in m.levels[:2]] == [[0, 1, 2], [3, 4]]
    with store.open_files(signed) as files:
        # pieces of uneven sizes, as a body arrives; chunk 3 opens the next level's file
        files.write_chunks([(0, [chunks[0][:5], chunks[0][5:]]), (1, [chunks[1]]), (3, chunks[3])])
        assert len(writes) == 2
        files.write_chunks([(0, [chunks[0]]), (2, [chunks[2]])])  # chunk 1 between: a gap
        assert len(writes) == 4
        files.write_chunks([(4, [chunks[4]])])

        for i in range(5):
            assert files.read_chunk(i) == chunks[i]
        with pytest.raises(ValueError, match="is not"):
            files.write_chunks([(5, [chunks[5][:-1]])])
