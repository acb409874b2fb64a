"""A model as a BitTorrent torrent: bencoding, the hashes of a level file, the torrent
publish writes (the same bytes libtorrent makes for the same files), its signature, and
the torrent a node builds from a model's level files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from peerprog.codec import RawTensor
from peerprog.errors import InputError, VerificationError
from peerprog.manifest import bencode, public_key_string
from peerprog.manifest.bencode import BencodeError
from peerprog.manifest.torrent import (
    FileHasher,
    Torrent,
    hash_file,
    parse_torrent,
)
from peerprog.store import Store, publish_tensors
from peerprog.store.torrents import model_torrent, stored_torrent
from tests.unit.samples import KEY, PUB
from tests.unit.test_api_support import sample_tensors

# --- bencoding -----------------------------------------------------------------------------


def test_bencode_writes_canonical_bytes_and_reads_them_back() -> None:
    value = {"b": [1, -2, b"x"], "a": {"z": 0, "y": "é"}, b"c": b""}
    data = bencode.encode(value)
    assert data == b"d1:ad1:y2:\xc3\xa91:zi0ee1:bli1ei-2e1:xe1:c0:e"
    assert bencode.decode(data) == {
        b"a": {b"y": "é".encode(), b"z": 0},
        b"b": [1, -2, b"x"],
        b"c": b"",
    }


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"i01e", "not canonical"),
        (b"i-0e", "not canonical"),
        (b"ie", "not an integer"),
        (b"i1", "without its end"),
        (b"d1:bi1e1:ai2ee", "out of order"),
        (b"d1:ai1e1:ai2ee", "out of order or repeated"),
        (b"di1ei2ee", "not a string"),
        (b"5:abc", "longer than what follows"),
        (b"i1ei2e", "after the value"),
        (b"l" * 100 + b"e" * 100, "nested too deeply"),
        (b"x", "unexpected byte"),
        (b"", "ends early"),
        (b"l", "without its end"),
    ],
)
def test_bencode_refuses_what_is_not_one_canonical_value(data: bytes, why: str) -> None:
    with pytest.raises(BencodeError, match=why):
        bencode.decode(data)


@settings(max_examples=40, deadline=None)
@given(
    st.recursive(
        st.integers(-(2**63), 2**63 - 1) | st.binary(max_size=20),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.binary(max_size=6), inner, max_size=4)
        ),
        max_leaves=20,
    )
)
def test_bencode_round_trips(value: object) -> None:
    assert bencode.decode(bencode.encode(value)) == value


# --- a level file's hashes -----------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(
    size=st.integers(0, 200_000),
    cuts=st.lists(st.integers(0, 200_000), max_size=6),
    piece=st.sampled_from([16384, 32768, 65536]),
)
def test_hashes_do_not_depend_on_how_the_bytes_are_fed(
    size: int, cuts: list[int], piece: int
) -> None:
    data = np.random.default_rng(size).bytes(size)
    hasher = FileHasher(piece)
    last = 0
    for cut in [*sorted(c for c in cuts if c <= size), size]:
        hasher.update(data[last:cut])
        last = cut
    got = hasher.finish()
    assert got == hash_file(data, piece)
    pieces = -(-size // piece)
    assert len(got.v1) == 20 * pieces
    if size:  # v1: SHA-1 of each piece, the last padded with zeros
        tail = data[(pieces - 1) * piece :]
        assert got.v1[-20:] == hashlib.sha1(tail + bytes(piece - len(tail))).digest()
    assert len(got.layer) == (32 * pieces if size > piece else 0)


def test_a_piece_length_must_be_a_power_of_two_of_16_kib_or_more() -> None:
    for bad in (8192, 3 * 16384, 0):
        with pytest.raises(ValueError, match="piece length"):
            FileHasher(bad)


# --- the torrent of a published model ------------------------------------------------------


def model_tensors() -> dict[str, RawTensor]:
    """The API tests' sample, and a matrix large enough for levels of several pieces."""
    rng = np.random.default_rng(7)
    big = (rng.standard_normal((256, 256)) * 0.02).astype(np.float32)
    return {**sample_tensors(), "big": RawTensor("float32", big)}


def published(root: Path, chunk: int = 16384, seeds: tuple[str, ...] = ()) -> tuple[Store, str]:
    store = Store(root)
    result = publish_tensors(
        model_tensors(), name="tiny", key=KEY, store=store, chunk_size=chunk, web_seeds=seeds
    )
    return store, result.signed.model_id


def test_publish_writes_a_signed_torrent_of_the_level_files(tmp_path: Path) -> None:
    store, mid = published(tmp_path / "s", seeds=("http://mirror.example/models/",))
    signed = store.load_manifest(mid, [PUB])
    torrent = stored_torrent(store, signed)
    assert torrent is not None and torrent.attestation is not None
    assert torrent.attestation.publisher == PUB
    assert torrent.web_seeds == ("http://mirror.example/models/",)
    info = bencode.decode(torrent.info)
    assert isinstance(info, dict) and info[b"name"] == mid.encode()
    assert info[b"piece length"] == 16384 and info[b"meta version"] == 2
    m = signed.manifest
    tree = info[b"file tree"]
    assert isinstance(tree, dict)
    levels = tree[b"levels"]
    assert isinstance(levels, dict) and len(levels) == m.levels_total
    for lv in m.levels:
        data = store.level_path(mid, lv.level).read_bytes()
        want = hash_file(data, 16384)
        entry = levels[str(lv.level).encode()]
        assert entry == {b"": {b"length": lv.bytes, b"pieces root": want.root}}
        # each v2 piece is one chunk: its hash covers the chunk's bytes
        assert -(-lv.bytes // 16384) == lv.chunk_count
        if lv.bytes > 16384:
            assert torrent.piece_layers[want.root] == want.layer
    assert len(torrent.piece_layers) >= 2
    assert torrent.magnet().startswith(f"magnet:?xt=urn:btih:{torrent.info_hash_v1.hex()}&")
    assert f"&xt=urn:btmh:1220{torrent.info_hash.hex()}&dn={mid}" in torrent.magnet()


def test_the_info_dictionary_is_libtorrents_for_the_same_files(tmp_path: Path) -> None:
    lt = pytest.importorskip("libtorrent", reason="the bittorrent extra (libtorrent) is missing")
    store, mid = published(tmp_path / "s")
    signed = store.load_manifest(mid, [PUB])
    ours = stored_torrent(store, signed)
    assert ours is not None
    entries = [
        lt.create_file_entry(f"{mid}/levels/{lv.level}", lv.bytes) for lv in signed.manifest.levels
    ]
    ct = lt.create_torrent(entries, 16384)
    lt.set_piece_hashes(ct, str(tmp_path / "s" / "models"))
    theirs = bencode.decode(lt.bencode(ct.generate()))
    assert isinstance(theirs, dict)
    assert bencode.encode(theirs[b"info"]) == ours.info
    info = lt.torrent_info(ours.to_bytes())  # and libtorrent reads ours
    assert str(info.info_hashes().v2) == ours.info_hash.hex()
    assert str(info.info_hashes().v1) == ours.info_hash_v1.hex()
    assert info.num_files() == 2 * signed.manifest.levels_total  # each level, and its pad


def test_a_node_builds_the_same_torrent_from_the_level_files(tmp_path: Path) -> None:
    store, mid = published(tmp_path / "s")
    signed = store.load_manifest(mid, [PUB])
    publishers = stored_torrent(store, signed)
    assert publishers is not None
    store.torrent_path(mid).unlink()  # as a node that fetched the model holds it
    files = store.open_files(signed)
    try:
        part = files.recorded()
        part.clear(len(signed.manifest.chunks) - 1)
        assert model_torrent(store, signed, files, part) is None  # not held whole: none yet
        assert not store.torrent_path(mid).exists()
        built = model_torrent(store, signed, files, files.recorded())
    finally:
        files.close()
    assert built is not None and built.attestation is None
    assert built.info == publishers.info and built.piece_layers == publishers.piece_layers
    again = stored_torrent(store, signed)
    assert again is not None and again.to_bytes() == built.to_bytes()


def test_a_damaged_level_file_gives_no_torrent(tmp_path: Path) -> None:
    store, mid = published(tmp_path / "s")
    signed = store.load_manifest(mid, [PUB])
    store.torrent_path(mid).unlink()
    path = store.level_path(mid, 0)
    data = bytearray(path.read_bytes())
    data[10] ^= 1
    path.write_bytes(bytes(data))
    files = store.open_files(signed)
    try:
        assert model_torrent(store, signed, files, files.recorded()) is None
    finally:
        files.close()


def test_no_torrent_where_the_chunk_size_is_not_a_piece_length(tmp_path: Path) -> None:
    store, mid = published(tmp_path / "s", chunk=20000)
    assert not store.torrent_path(mid).exists()
    with pytest.raises(InputError, match="not a BitTorrent v2 piece length"):
        published(tmp_path / "t", chunk=20000, seeds=("http://x.example/models/",))
    with pytest.raises(InputError, match="not an http"):
        published(tmp_path / "u", seeds=("ftp://x.example/",))


def _torrent(tmp_path: Path) -> tuple[Store, str, Torrent]:
    store, mid = published(tmp_path / "s")
    torrent = stored_torrent(store, store.load_manifest(mid, [PUB]))
    assert torrent is not None
    return store, mid, torrent


def test_a_torrent_not_the_models_or_not_its_publishers_is_refused(tmp_path: Path) -> None:
    store, mid, torrent = _torrent(tmp_path)
    m = store.load_manifest(mid, [PUB]).manifest
    good = torrent.to_bytes()
    assert parse_torrent(good, m, mid, PUB, signed_only=True) == torrent

    def refused(data: bytes, why: str, **kw: bool) -> None:
        with pytest.raises(VerificationError, match=why):
            parse_torrent(data, m, mid, PUB, **kw)

    doc = bencode.decode(good)
    assert isinstance(doc, dict)
    info = doc[b"info"]
    assert isinstance(info, dict)
    # another piece length, name, or file size: not the model's
    for key, value, why in [
        (b"piece length", 32768, "not model"),
        (b"name", b"0" * 64, "not model"),
        (b"pieces", b"x" * 20, "SHA-1 hashes"),
    ]:
        refused(bencode.encode({**doc, b"info": {**info, key: value}}), why)
    v2only = {k: v for k, v in info.items() if k not in (b"files", b"pieces")}
    refused(bencode.encode({**doc, b"info": v2only}), "SHA-1 hashes")
    # a piece layer that does not hash to its file's root
    layers = doc[b"piece layers"]
    assert isinstance(layers, dict) and layers
    root, layer = next(iter(layers.items()))
    assert isinstance(layer, bytes)
    bad = {**layers, root: bytes([layer[0] ^ 1]) + layer[1:]}
    refused(bencode.encode({**doc, b"piece layers": bad}), "does not hash to its root")
    # signatures: flipped, by another key, absent when one is required
    att = doc[b"peerprog"]
    assert isinstance(att, dict)
    sig = att[b"signature"]
    assert isinstance(sig, bytes)
    flipped = {**att, b"signature": bytes([sig[0] ^ 1]) + sig[1:]}
    refused(bencode.encode({**doc, b"peerprog": flipped}), "does not verify")
    other = Ed25519PrivateKey.generate()
    by_other = torrent.signed(other).to_bytes()
    refused(by_other, "another key")
    unsigned = bencode.encode({k: v for k, v in doc.items() if k != b"peerprog"})
    assert parse_torrent(unsigned, m, mid, PUB).attestation is None
    refused(unsigned, "not signed", signed_only=True)
    refused(b"d4:infoi1ee", "no info dictionary")
    refused(b"garbage", "torrent: bencode")
    # web seeds lie outside what is signed
    more = torrent.with_web_seeds(["http://node.example:7070/p2p/v1/models/"]).to_bytes()
    got = parse_torrent(more, m, mid, PUB, signed_only=True)
    assert got.web_seeds == ("http://node.example:7070/p2p/v1/models/",)
    assert public_key_string(other.public_key()) != PUB
