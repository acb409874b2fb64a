"""Peer-protocol messages (msgpack bodies) and their validation.

Everything that arrives from a peer is parsed here into frozen dataclasses; a malformed
message raises :class:`PeerFault`, never anything else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from peerprog.errors import PeerFault
from peerprog.manifest import valid_model_id, valid_name
from peerprog.manifest.canonical import pack, unpack
from peerprog.swarm import Bitfield, ModelRef
from peerprog.swarm.havelog import HaveDelta
from peerprog.urls import valid_url

PREFIX = "/p2p/v1"
MAX_ANNOUNCE_MODELS = 256
MAX_EXCHANGED_PEERS = 64
MAX_EPOCH = 64
"""Longest epoch of a have stream (a node's is 16 hex digits)."""


@dataclass(frozen=True)
class PeerRef:
    node: str
    url: str
    reachable: bool | None = None
    """Whether the node passing it on could dial it (None: not said)."""


@dataclass(frozen=True)
class Announce:
    """``POST /p2p/v1/announce`` body, and (with peers) its answer: peer exchange."""

    node: str
    url: str
    models: tuple[ModelRef, ...]
    peers: tuple[PeerRef, ...] = ()
    reachable: bool | None = None
    """Whether peers can dial the sender at ``url``, as far as it knows (None: not known)."""
    dial_back: bool | None = None
    """In an answer: whether the answering node could dial the announcer's ``url``."""

    def encode(self) -> bytes:
        extra = {
            k: v
            for k, v in (("reachable", self.reachable), ("dial_back", self.dial_back))
            if v is not None
        }
        return pack(
            extra
            | {
                "node": self.node,
                "url": self.url,
                "models": [
                    {
                        "name": m.name,
                        "model_id": m.model_id,
                        "version": m.version,
                        "complete": m.complete,
                        "origin": m.origin,
                    }
                    for m in self.models
                ],
                "peers": [_peer_ref(p) for p in self.peers],
            }
        )


def _peer_ref(p: PeerRef) -> dict[str, Any]:
    ref: dict[str, Any] = {"node": p.node, "url": p.url}
    if p.reachable is not None:
        ref["reachable"] = p.reachable
    return ref


def _flag(d: dict[str, Any], key: str) -> bool | None:
    v = d.get(key)
    if v is not None and not isinstance(v, bool):
        raise PeerFault(f"announce: {key} must be true or false")
    return v


def _str(d: dict[str, Any], key: str, limit: int = 256) -> str:
    v = d.get(key)
    if not isinstance(v, str) or len(v) > limit:
        raise PeerFault(f"announce: {key} must be a string of at most {limit} characters")
    return v


def decode_announce(data: bytes) -> Announce:
    """Parse an announce body or answer; unknown fields are ignored, bad ones refused."""
    d = unpack(data, "announce")
    if not isinstance(d, dict):
        raise PeerFault("announce: body is not a map")
    node = _str(d, "node", 128)
    url = _str(d, "url")
    if url and not valid_url(url):
        raise PeerFault("announce: url is not an http(s) URL")
    raw_models = d.get("models", [])
    raw_peers = d.get("peers", [])
    if not isinstance(raw_models, list) or not isinstance(raw_peers, list):
        raise PeerFault("announce: models and peers must be lists")
    models = []
    for m in raw_models[:MAX_ANNOUNCE_MODELS]:
        if not isinstance(m, dict):
            raise PeerFault("announce: a model entry is not a map")
        name, mid, version = m.get("name"), m.get("model_id"), m.get("version")
        if not (
            isinstance(name, str)
            and valid_name(name)
            and isinstance(mid, str)
            and valid_model_id(mid)
            and isinstance(version, int)
            and not isinstance(version, bool)
            and version >= 0
        ):
            raise PeerFault("announce: a model entry is malformed")
        models.append(ModelRef(name, mid, version, bool(m.get("complete")), bool(m.get("origin"))))
    peers = []
    for p in raw_peers[:MAX_EXCHANGED_PEERS]:
        if isinstance(p, dict) and valid_url(p.get("url")) and isinstance(p.get("node"), str):
            reachable = p.get("reachable")
            peers.append(
                PeerRef(
                    str(p["node"])[:128],
                    str(p["url"]),
                    reachable if isinstance(reachable, bool) else None,
                )
            )
    return Announce(
        node,
        url,
        tuple(models),
        tuple(peers),
        reachable=_flag(d, "reachable"),
        dial_back=_flag(d, "dial_back"),
    )


def encode_have(have: Bitfield) -> bytes:
    """``GET /have`` body: ``{count, bitfield}``."""
    return pack({"count": len(have), "bitfield": have.to_bytes()})


def decode_have(data: bytes, count: int) -> Bitfield:
    """Parse a ``have`` body for a model of ``count`` chunks."""
    d = unpack(data, "have")
    if (
        not isinstance(d, dict)
        or d.get("count") != count
        or not isinstance(d.get("bitfield"), bytes)
    ):
        raise PeerFault("have: malformed bitfield message")
    return Bitfield.from_bytes(count, d["bitfield"])


def valid_epoch(epoch: str) -> bool:
    """Is ``epoch`` a have-stream epoch as this protocol writes them (may be empty)?"""
    return len(epoch) <= MAX_EPOCH and all(
        c.isascii() and (c.isalnum() or c in "._-") for c in epoch
    )


def have_delta_limit(count: int) -> int:
    """Largest body of a ``have?since=`` answer for a model of ``count`` chunks (every
    index as a 5-byte msgpack integer, or the bitfield, plus the envelope)."""
    return 5 * count + 512


def encode_have_delta(delta: HaveDelta) -> bytes:
    """``GET /have?since=`` body: ``{epoch, seq, added}``, or ``{epoch, seq, count,
    bitfield}`` when the asked ``since`` could not be resumed."""
    if delta.full is not None:
        return pack(
            {
                "epoch": delta.epoch,
                "seq": delta.seq,
                "count": len(delta.full),
                "bitfield": delta.full.to_bytes(),
            }
        )
    return pack({"epoch": delta.epoch, "seq": delta.seq, "added": list(delta.added)})


def _count_of(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def decode_have_delta(data: bytes, count: int) -> HaveDelta:
    """Parse a ``have?since=`` answer for a model of ``count`` chunks. A plain ``have``
    body (a peer that ignores ``since``) is read as a full answer of epoch ``""``."""
    d = unpack(data, "have")
    if not isinstance(d, dict):
        raise PeerFault("have: body is not a map")
    if "epoch" not in d:
        return HaveDelta("", 0, full=decode_have(data, count))
    epoch, seq = d.get("epoch"), _count_of(d.get("seq"))
    if not isinstance(epoch, str) or not valid_epoch(epoch):
        raise PeerFault("have: epoch must be a short string of letters, digits, '.', '_', '-'")
    if seq is None or seq < 0:
        raise PeerFault("have: seq must be an integer >= 0")
    if "bitfield" in d:
        bits = d["bitfield"]
        if _count_of(d.get("count")) != count or not isinstance(bits, bytes):
            raise PeerFault(f"have: the full answer must be {count} chunks' bitfield")
        return HaveDelta(epoch, seq, full=Bitfield.from_bytes(count, bits))
    added = d.get("added")
    if not isinstance(added, list) or len(added) > count:
        raise PeerFault(f"have: added must be a list of at most {count} chunk indices")
    for i in added:
        if _count_of(i) is None or not 0 <= i < count:
            raise PeerFault(f"have: added holds {i!r}, not a chunk index below {count}")
    if len(added) > seq:
        raise PeerFault(f"have: {len(added)} chunks added but the stream is at {seq}")
    return HaveDelta(epoch, seq, tuple(added))
