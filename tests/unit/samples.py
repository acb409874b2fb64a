"""Small manifests for tests of the manifest and the store."""

from __future__ import annotations

import random

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from peerprog.codec.layout import Segment, TensorLayout
from peerprog.manifest import Manifest, cut_levels, public_key_string

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PUB = public_key_string(KEY.public_key())


def make_manifest(chunk_size: int = 1024) -> tuple[Manifest, list[bytes]]:
    rng = random.Random(1)
    levels = [rng.randbytes(3000), rng.randbytes(1500), rng.randbytes(2048)]
    table, chunks = cut_levels(levels, chunk_size, [{"rel_rmse_ppm": 100}, {}, {}])
    t = TensorLayout("w", "float32", (10, 10), (Segment(0, 400), Segment(0, 400), Segment(0, 400)))
    m = Manifest(
        name="tiny",
        version=3,
        codec="bitplane",
        codec_params={"mantissa_bits": [3, 4, 16]},
        chunk_size=chunk_size,
        tensors=(t,),
        levels=table,
        chunks=chunks,
        source_bytes=400,
        created=1700000000,
        metadata={"source": "x.safetensors"},
    )
    return m, levels
