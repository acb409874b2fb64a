"""The signed envelope ``{body, publisher, signature}`` and the rule for accepting one.

A node accepts a manifest only if its publisher is trusted and the signature verifies; it
accepts a chunk only if its SHA-256 matches the manifest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from peerprog.errors import UntrustedPublisher, VerificationError
from peerprog.manifest import signing
from peerprog.manifest.canonical import gc_paused, pack, unpack
from peerprog.manifest.model import Manifest, model_id_of, parse_body

MAX_ENVELOPE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class SignedManifest:
    """A verified manifest, with the envelope bytes it came in (as stored and served)."""

    manifest: Manifest
    model_id: str
    publisher: str
    envelope: bytes


def seal(manifest: Manifest, key: Ed25519PrivateKey) -> SignedManifest:
    """Sign ``manifest`` with ``key`` and wrap it in an envelope."""
    with gc_paused():  # (a body of many tensors: many objects, all kept until packed)
        body = manifest.to_body()
    publisher = signing.public_key_string(key.public_key())
    envelope = pack({"body": body, "publisher": publisher, "signature": signing.sign(key, body)})
    return SignedManifest(manifest, model_id_of(body), publisher, envelope)


def open_envelope(
    envelope: bytes, trusted: Collection[str] | None, expect_id: str | None = None
) -> SignedManifest:
    """Verify an envelope; returns the manifest or raises :class:`VerificationError`.

    ``trusted`` lists the accepted publisher keys (``None`` accepts any valid signature:
    only for inspecting one's own store). ``expect_id`` checks the body's hash.
    """
    if len(envelope) > MAX_ENVELOPE_BYTES:
        raise VerificationError("manifest envelope is too large")
    env = unpack(envelope, "manifest envelope")
    if not isinstance(env, dict) or set(env) != {"body", "publisher", "signature"}:
        raise VerificationError("manifest envelope must be a map of body, publisher, signature")
    body, publisher, signature = env["body"], env["publisher"], env["signature"]
    if not isinstance(body, bytes) or not isinstance(signature, bytes):
        raise VerificationError("manifest envelope: body and signature must be bytes")
    if not isinstance(publisher, str):
        raise VerificationError("manifest envelope: publisher must be a string")
    model_id = model_id_of(body)
    if expect_id is not None and model_id != expect_id:
        raise VerificationError(f"manifest hash {model_id[:16]}… is not the id {expect_id[:16]}…")
    if trusted is not None and publisher not in trusted:
        raise UntrustedPublisher(f"manifest publisher {publisher:.60} is not trusted")
    signing.verify(publisher, body, signature)
    with gc_paused():  # (the manifest's objects all live on)
        manifest = parse_body(body)
    return SignedManifest(manifest, model_id, publisher, envelope)


def verify_chunk(manifest: Manifest, index: int, data: bytes | memoryview) -> None:
    """Check chunk ``index`` against the manifest; :class:`VerificationError` if it fails."""
    if not 0 <= index < len(manifest.chunks):
        raise VerificationError(f"chunk {index} is not in the manifest")
    want = manifest.chunks[index]
    if len(data) != want.length:
        raise VerificationError(f"chunk {index}: {len(data)} bytes, manifest says {want.length}")
    if hashlib.sha256(data).digest() != want.sha256:
        raise VerificationError(f"chunk {index}: SHA-256 does not match the manifest")
