"""Manifest: canonical msgpack, chunking, Ed25519 envelope, verification errors."""

from __future__ import annotations

import contextlib
import hashlib
import random

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from peerprog.errors import UntrustedPublisher, VerificationError
from peerprog.manifest import (
    chunk_data,
    open_envelope,
    parse_body,
    seal,
    verify_chunk,
)
from peerprog.manifest.canonical import pack, unpack
from tests.unit.samples import KEY, PUB, make_manifest


def test_canonical_is_independent_of_key_order() -> None:
    a = pack({"b": 1, "a": [1, {"z": b"x", "y": "s"}]})
    b = pack({"a": [1, {"y": "s", "z": b"x"}], "b": 1})
    assert a == b
    assert unpack(a, canonical=True) == {"a": [1, {"y": "s", "z": b"x"}], "b": 1}


def test_canonical_refuses_floats_and_non_canonical_bytes() -> None:
    with pytest.raises(TypeError, match="float"):
        pack({"x": 1.5})
    unsorted = msgpack.packb({"b": 1, "a": 2})
    with pytest.raises(VerificationError, match="canonical"):
        unpack(unsorted, canonical=True)


def test_body_round_trip_and_model_id() -> None:
    m, _ = make_manifest()
    body = m.to_body()
    assert parse_body(body) == m
    signed = seal(m, KEY)
    assert signed.model_id == hashlib.sha256(body).hexdigest()
    opened = open_envelope(signed.envelope, {PUB}, expect_id=signed.model_id)
    assert opened.manifest == m and opened.publisher == PUB


def test_chunks_follow_level_order_and_sizes() -> None:
    m, levels = make_manifest()
    assert [lv.chunk_count for lv in m.levels] == [3, 2, 2]
    assert [c.length for c in m.chunks] == [1024, 1024, 952, 1024, 476, 1024, 1024]
    for i, data in enumerate(chunk_data(levels, m.chunk_size)):
        verify_chunk(m, i, data)
    assert m.level_of_chunk(4) == 1


def test_flipped_bit_anywhere_in_envelope_is_rejected() -> None:
    m, _ = make_manifest()
    env = bytearray(seal(m, KEY).envelope)
    rng = random.Random(7)
    positions = [*sorted(rng.sample(range(len(env)), 60)), len(env) - 1]
    for pos in positions:
        bad = bytearray(env)
        bad[pos] ^= 1 << rng.randrange(8)
        with pytest.raises(VerificationError):
            open_envelope(bytes(bad), {PUB})


def test_flipped_bit_in_a_chunk_is_rejected() -> None:
    m, levels = make_manifest()
    data = bytearray(chunk_data(levels, m.chunk_size)[2])
    data[17] ^= 0x10
    with pytest.raises(VerificationError, match="chunk 2: SHA-256"):
        verify_chunk(m, 2, data)
    with pytest.raises(VerificationError, match="bytes"):
        verify_chunk(m, 2, bytes(data[:-1]))
    with pytest.raises(VerificationError, match="not in the manifest"):
        verify_chunk(m, 99, b"")


def test_untrusted_publisher_is_rejected() -> None:
    m, _ = make_manifest()
    other = Ed25519PrivateKey.generate()
    env = seal(m, other).envelope
    with pytest.raises(UntrustedPublisher, match="not trusted"):
        open_envelope(env, {PUB})


def test_signature_by_other_key_under_trusted_name_is_rejected() -> None:
    m, _ = make_manifest()
    forged = msgpack.unpackb(seal(m, Ed25519PrivateKey.generate()).envelope)
    forged["publisher"] = PUB
    with pytest.raises(VerificationError, match="signature"):
        open_envelope(pack(forged), {PUB})


def test_wrong_expected_id_is_rejected() -> None:
    m, _ = make_manifest()
    with pytest.raises(VerificationError, match="is not the id"):
        open_envelope(seal(m, KEY).envelope, {PUB}, expect_id="0" * 64)


def test_inconsistent_body_is_refused_with_the_field_named() -> None:
    m, _ = make_manifest()
    doc = unpack(m.to_body())
    doc["levels"][1]["bytes"] += 1
    with pytest.raises(VerificationError, match=r"levels\[1\] bytes"):
        parse_body(pack(doc))
    doc = unpack(m.to_body())
    doc["tensors"][0]["segments"][2] = [2000, 100]
    with pytest.raises(VerificationError, match="segment of level 2"):
        parse_body(pack(doc))
    doc = unpack(m.to_body())
    doc["name"] = "../etc"
    with pytest.raises(VerificationError, match="not a valid model name"):
        parse_body(pack(doc))


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_bodies_never_raise_anything_else(data: st.DataObject) -> None:
    m, _ = make_manifest()
    body = bytearray(m.to_body())
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(body) - 1))
        body[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(body)))
    with contextlib.suppress(VerificationError):
        parse_body(bytes(body[:cut]))
