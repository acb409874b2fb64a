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
from peerprog.urls import valid_url

PREFIX = "/p2p/v1"
MAX_ANNOUNCE_MODELS = 256
MAX_EXCHANGED_PEERS = 64


@dataclass(frozen=True)
class PeerRef:
    node: str
    url: str


@dataclass(frozen=True)
class Announce:
    """``POST /p2p/v1/announce`` body, and (with peers) its answer: peer exchange."""

    node: str
    url: str
    models: tuple[ModelRef, ...]
    peers: tuple[PeerRef, ...] = ()

    def encode(self) -> bytes:
        return pack(
            {
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
                "peers": [{"node": p.node, "url": p.url} for p in self.peers],
            }
        )


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
            peers.append(PeerRef(str(p["node"])[:128], str(p["url"])))
    return Announce(node, url, tuple(models), tuple(peers))


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
