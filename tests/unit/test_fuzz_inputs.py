"""Fuzzing of everything a peer or a user hands the node as data (hypothesis, no sockets).

Each parser has one error type for bad input and must never raise another:
``parse_config``/``load_config`` raise :class:`InputError`; the peer messages (announce,
have) raise :class:`PeerFault`; manifests raise :class:`VerificationError`, even when the
body is signed by a trusted key (a publisher's bug must not crash an edge).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import string
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from peerprog.config import Config, load_config, parse_config
from peerprog.errors import InputError, PeerFault, VerificationError
from peerprog.manifest import open_envelope, parse_body, seal, valid_model_id, valid_name
from peerprog.manifest.canonical import pack, unpack
from peerprog.node.protocol import decode_announce, decode_have
from peerprog.store import Store
from peerprog.swarm import Bitfield, PeerTableConfig, VersionConfig
from tests.unit.samples import KEY, PUB, make_manifest

# --- values ------------------------------------------------------------------------------

TEXT = st.text(max_size=20)
NASTY_TEXT = st.sampled_from(
    ["", ".", "..", "../x", "a/b", "a\x00b", "x\n", "\n", "-a", "a" * 300, "é", "%2e%2e", " "]
)


def toml_values() -> st.SearchStrategy[Any]:
    """Anything a TOML document can hold."""
    scalars = st.one_of(
        st.booleans(),
        st.integers(-(2**63), 2**63 - 1),
        st.floats(allow_nan=True),
        st.sampled_from([0, 1, -1, 0.0, float("nan"), float("inf"), 1e308]),
        TEXT,
        NASTY_TEXT,
        st.datetimes(),
        st.dates(),
        st.times(),
    )
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
        max_leaves=12,
    )


def msgpack_values() -> st.SearchStrategy[Any]:
    """Anything msgpack carries (maps with string keys, as our unpacker demands)."""
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**64 - 1),
        TEXT,
        NASTY_TEXT,
        st.binary(max_size=40),
    )
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=5) | st.dictionaries(TEXT, inner, max_size=5),
        max_leaves=20,
    )


TOML_VALUES = toml_values()
MSGPACK_VALUES = msgpack_values()


# --- config ------------------------------------------------------------------------------

SECTIONS = {
    f.name: [k.name for k in dataclasses.fields(f.default_factory())]  # type: ignore[misc]
    for f in dataclasses.fields(Config)
}


@st.composite
def config_docs(draw: st.DrawFn) -> dict[str, Any]:
    """Config documents near the real shape (known sections and keys, any values)."""
    doc: dict[str, Any] = {}
    for section in draw(st.lists(st.sampled_from([*SECTIONS, "bogus"]), max_size=4)):
        keys = SECTIONS.get(section, ["x"])
        table = draw(st.dictionaries(st.sampled_from([*keys, "unknown"]), TOML_VALUES, max_size=4))
        doc[section] = draw(st.one_of(st.just(table), TOML_VALUES))
    return doc


def check_usable(cfg: Config) -> None:
    """What an accepted config promises the node: numbers it can run with, paths it can
    open, names and URLs that are valid."""
    assert cfg.limits.max_in_flight >= 1
    assert cfg.limits.upload_slots >= 1 and cfg.limits.upload_queue >= 0
    assert isinstance(cfg.swarm.super_seeding, bool)
    assert 0 < cfg.limits.request_timeout < float("inf")
    assert 0 < cfg.peers.announce_interval < float("inf")
    assert 0 < cfg.peers.have_poll_interval < float("inf")
    for path in (cfg.node.data_dir, cfg.api.socket):
        assert "\x00" not in path
    assert all(valid_name(n) for n in cfg.models.want)
    assert isinstance(cfg.peers, PeerTableConfig) and isinstance(cfg.peers, VersionConfig)


@settings(deadline=None)
@given(config_docs())
@example({"node": {"name": "\U00010000"}})  # beyond U+FFFF: JSON's escape is a surrogate pair
@example({"node": {"name": 'a"b\\c\x7f\x01\u00e9'}})
def test_an_accepted_config_round_trips_through_to_toml(doc: dict[str, Any]) -> None:
    try:
        cfg = parse_config(doc)
    except InputError:
        return
    assert parse_config(tomllib.loads(cfg.to_toml("a comment\nof two lines"))) == cfg


@settings(deadline=None)
@given(config_docs())
def test_parse_config_raises_only_input_error(doc: dict[str, Any]) -> None:
    try:
        cfg = parse_config(doc)
    except InputError as e:
        assert str(e).startswith("config:"), e
        return
    check_usable(cfg)


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("limits", "max_in_flight", 0),
        ("limits", "request_timeout", 0),
        ("limits", "request_timeout", float("nan")),
        ("limits", "request_timeout", float("inf")),
        ("peers", "announce_interval", float("nan")),
        ("peers", "have_poll_interval", float("inf")),
        ("node", "data_dir", "a\x00b"),
        ("api", "socket", "/tmp/a\x00b"),
        ("models", "want", ["ok", "bad\n"]),
        ("peers", "bootstrap", ["http://"]),
        ("peers", "bootstrap", ["http://a b:1"]),
        ("node", "listen", "127.0.0.1:-1"),
        ("peers", "max_failures", 0),
        ("peers", "max_candidates_per_peer", 0),  # a second base class's own check
        ("peers", "max_candidates_per_name", 0),
    ],
)
def test_values_the_node_cannot_run_with_are_refused(section: str, key: str, value: Any) -> None:
    with pytest.raises(InputError, match=key):
        parse_config({section: {key: value}})


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode)))
def test_load_config_of_garbage_files_raises_only_input_error(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "node.toml"
    path.write_bytes(data)
    with contextlib.suppress(InputError):
        check_usable(load_config(path))


def test_load_config_of_deeply_nested_or_unreadable_files(tmp_path: Path) -> None:
    path = tmp_path / "deep.toml"
    path.write_text("x = " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(InputError):
        load_config(path)
    with pytest.raises(InputError):
        load_config(tmp_path)  # a folder
    with pytest.raises(InputError):
        load_config(tmp_path / "missing.toml")


# --- peer messages -----------------------------------------------------------------------


@st.composite
def announce_bodies(draw: st.DrawFn) -> bytes:
    """Announce bodies: garbage, truncated, or the right shape with hostile values."""
    good = {
        "node": "n",
        "url": "http://127.0.0.1:1",
        "models": [{"name": "m", "model_id": "a" * 64, "version": 1}],
        "peers": [{"node": "p", "url": "http://127.0.0.1:2"}],
    }
    kind = draw(st.sampled_from(["garbage", "value", "mutated", "truncated"]))
    if kind == "garbage":
        return draw(st.binary(max_size=200))
    if kind == "value":
        return pack(draw(MSGPACK_VALUES))
    body = pack(good)
    if kind == "truncated":
        return body[: draw(st.integers(0, len(body) - 1))]
    doc: dict[str, Any] = unpack(body)
    target = draw(st.sampled_from(["node", "url", "models", "peers", "model", "peer"]))
    value = draw(MSGPACK_VALUES)
    if target == "model":
        doc["models"][0][draw(st.sampled_from(["name", "model_id", "version", "x"]))] = value
    elif target == "peer":
        doc["peers"][0][draw(st.sampled_from(["node", "url"]))] = value
    else:
        doc[target] = value
    return pack(doc)


@settings(deadline=None)
@given(announce_bodies())
def test_decode_announce_raises_only_peer_fault(body: bytes) -> None:
    try:
        ann = decode_announce(body)
    except PeerFault:
        return
    # What is accepted is safe to use as names, ids and URLs.
    assert valid_url_or_empty(ann.url)
    for m in ann.models:
        assert valid_name(m.name) and valid_model_id(m.model_id) and m.version >= 0
    for p in ann.peers:
        assert valid_url_or_empty(p.url) and p.url


def valid_url_or_empty(url: str) -> bool:
    from peerprog.node.protocol import valid_url

    return url == "" or valid_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "http://",
        "http:///x",
        "http://" + "a" * 64 + ":1",  # a host label over 63 characters: idna refuses it
        "http://a b:1",
        "http://a\nb:1",
        "http://a:99999",
        "http://[::1",
        "http://a\x00:1",
        "ftp://a:1",
    ],
)
def test_urls_a_client_cannot_use_are_refused(url: str) -> None:
    from peerprog.node.protocol import valid_url

    assert not valid_url(url)
    with pytest.raises(PeerFault):
        decode_announce(pack({"node": "n", "url": url, "models": []}))


@settings(deadline=None)
@given(
    count=st.integers(0, 100),
    body=st.one_of(
        st.binary(max_size=40),
        MSGPACK_VALUES.map(pack),
        st.builds(
            lambda c, b: pack({"count": c, "bitfield": b}),
            st.integers(-2, 102) | st.booleans(),
            st.binary(max_size=16),
        ),
    ),
)
def test_decode_have_raises_only_peer_fault(count: int, body: bytes) -> None:
    try:
        have = decode_have(body, count)
    except PeerFault:
        return
    assert isinstance(have, Bitfield) and len(have) == count
    assert all(0 <= i < count for i in have.indices())


# --- manifests ---------------------------------------------------------------------------

BODY_KEYS = [
    "format", "name", "version", "codec", "codec_params", "chunk_size", "tensors", "levels",
    "chunks", "source_bytes", "created", "metadata",
]  # fmt: skip


@st.composite
def signed_hostile_bodies(draw: st.DrawFn) -> bytes:
    """An envelope signed by a *trusted* key around a malformed body."""
    m, _ = make_manifest()
    doc: dict[str, Any] = unpack(m.to_body())
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(["top", "level", "tensor", "chunk", "segment"]))
        value = draw(MSGPACK_VALUES)
        if where == "top":
            key = draw(st.sampled_from([*BODY_KEYS, "extra"]))
            if draw(st.booleans()):
                doc.pop(key, None)
            else:
                doc[key] = value
        elif where == "level" and isinstance(doc.get("levels"), list) and doc["levels"]:
            lv = doc["levels"][draw(st.integers(0, len(doc["levels"]) - 1))]
            if isinstance(lv, dict):
                lv[draw(st.sampled_from(sorted(lv) or ["x"]))] = value
        elif where == "tensor" and isinstance(doc.get("tensors"), list) and doc["tensors"]:
            t = doc["tensors"][0]
            if isinstance(t, dict):
                t[draw(st.sampled_from(sorted(t) or ["x"]))] = value
        elif where == "chunk" and isinstance(doc.get("chunks"), list) and doc["chunks"]:
            doc["chunks"][draw(st.integers(0, len(doc["chunks"]) - 1))] = value
        elif where == "segment":
            with contextlib.suppress(Exception):
                doc["tensors"][0]["segments"][0] = value
    try:
        body = pack(doc)
    except TypeError:
        assume(False)
    from peerprog.manifest import signing

    return pack({"body": body, "publisher": PUB, "signature": signing.sign(KEY, body)})


@settings(deadline=None)
@given(signed_hostile_bodies())
def test_signed_but_malformed_manifests_raise_only_verification_error(envelope: bytes) -> None:
    try:
        signed = open_envelope(envelope, {PUB})
    except VerificationError:
        return
    m = signed.manifest
    assert valid_name(m.name) and len(m.chunks) == sum(lv.chunk_count for lv in m.levels)


@settings(deadline=None)
@given(st.one_of(st.binary(max_size=400), MSGPACK_VALUES.map(pack)))
def test_garbage_envelopes_raise_only_verification_error(envelope: bytes) -> None:
    with contextlib.suppress(VerificationError):
        open_envelope(envelope, {PUB})
    with contextlib.suppress(VerificationError):
        parse_body(envelope)


def test_the_sample_envelope_opens() -> None:
    m, _ = make_manifest()
    assert open_envelope(seal(m, KEY).envelope, {PUB}).manifest == m


# --- path components -----------------------------------------------------------------------

PATH_TEXT = st.one_of(
    NASTY_TEXT,
    st.text(alphabet=string.printable + "\x00é/\\", max_size=80),
    st.builds(lambda s: s + "\n", st.sampled_from(["tiny", "a" * 64])),
)


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=PATH_TEXT, index=st.integers(-3, 3))
def test_store_paths_never_leave_the_store(tmp_path: Path, name: str, index: int) -> None:
    store = Store(tmp_path / "s")
    root = store.root.resolve()
    for make in (
        lambda: store.name_path(name),
        lambda: store.model_dir(name),
        lambda: store.level_path(name, index),
        lambda: store.level_path("a" * 64, index),
    ):
        try:
            path = make()
        except InputError:
            continue
        resolved = path.resolve()
        assert resolved.is_relative_to(root), (name, path)
        assert "\n" not in str(path) and "\x00" not in str(path)
        assert len(path.name) <= 128


def test_names_and_ids_are_whole_matches() -> None:
    assert not valid_name("tiny\n") and not valid_model_id("a" * 64 + "\n")
    assert valid_name("tiny") and valid_model_id("a" * 64)


def test_time_values_in_config_are_refused() -> None:
    with pytest.raises(InputError, match="request_timeout"):
        parse_config({"limits": {"request_timeout": datetime.time(1, 2)}})


@pytest.mark.parametrize("text", ["²", "٣", "¹²"])
def test_digits_that_int_refuses_or_that_are_not_ascii(text: str, tmp_path: Path) -> None:
    from peerprog.api.events import parse_event_id

    assert parse_event_id(f"{'a' * 64}.{text}") is None
    with pytest.raises(InputError, match=r"node\.listen"):
        parse_config({"node": {"listen": f"127.0.0.1:{text}"}})
    # a first-layout chunk file named so is not a chunk: the migration leaves it out
    store = Store(tmp_path / "s")
    m, _ = make_manifest()
    signed = seal(m, KEY)
    store.put_manifest(signed)
    folder = store.model_dir(signed.model_id) / "chunks"
    folder.mkdir()
    (folder / text.strip()).write_bytes(b"x")
    Store(tmp_path / "s")
    assert store.held(signed).count() == 0
