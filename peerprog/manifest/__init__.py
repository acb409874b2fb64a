"""Manifests: dataclasses, canonical msgpack, chunk hashing, Ed25519 signing and verifying."""

from __future__ import annotations

from peerprog.manifest.chunking import chunk_data, chunk_size_for, cut_levels
from peerprog.manifest.envelope import SignedManifest, open_envelope, seal, verify_chunk
from peerprog.manifest.model import (
    FORMAT_VERSION,
    Chunk,
    Level,
    Manifest,
    model_id_of,
    parse_body,
    valid_model_id,
    valid_name,
)
from peerprog.manifest.signing import (
    generate_key_file,
    load_key_file,
    parse_public_key,
    public_key_string,
)

__all__ = [
    "FORMAT_VERSION",
    "Chunk",
    "Level",
    "Manifest",
    "SignedManifest",
    "chunk_data",
    "chunk_size_for",
    "cut_levels",
    "generate_key_file",
    "load_key_file",
    "model_id_of",
    "open_envelope",
    "parse_body",
    "parse_public_key",
    "public_key_string",
    "seal",
    "valid_model_id",
    "valid_name",
    "verify_chunk",
]
