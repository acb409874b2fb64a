"""zstd framing shared by the codecs: compress, and decompress untrusted frames safely."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import numpy.typing as npt
import zstandard

from peerprog.errors import FormatError

# Generic data (integer tensors, small floats): a normal level, matches matter here.
_GENERAL = zstandard.ZstdCompressionParameters.from_level(3)
# Low-entropy symbol streams without long repeats (float exponents): long minimum matches
# and a tiny hash table make zstd mostly a Huffman coder. Measured on normal(0, 0.05)
# float32 exponents: 2.59 bits/exponent at ~380 MB/s (level 3: 3.25 bits at 75 MB/s, and
# its many short matches decode at only ~120 MB/s).
_SYMBOLS = zstandard.ZstdCompressionParameters(
    compression_level=1, strategy=zstandard.STRATEGY_FAST, min_match=7, hash_log=6
)
# Dense byte planes (whole tensors, the remainder's words): zstd level 9 measured 0.07 points
# of the source smaller than level 3 on EfficientNet-Lite1 bf16 (level 19 no better); only
# the encoder's choice, any frame decodes.
_DENSE = zstandard.ZstdCompressionParameters.from_level(9)


REUSE_BYTES = 1 << 18
"""Streams up to this size use the thread's (de)compressor; a larger one gets its own,
freed after (a context keeps the tables of the largest stream it saw, tens of megabytes
at level 9 for a large tensor, for the thread's life; at 1 MiB publishing 16 MiB tensors
peaked 10 MB higher than with a context per call, at 256 KiB 2 MB)."""


class _Contexts(threading.local):
    """This thread's compressors and decompressor. A (de)compressor is not thread-safe,
    and making one per call cost more than (de)compressing a small tensor's stream; a
    compressor used again gives the same frames as a new one (each ``compress`` is a
    frame of its own)."""

    def __init__(self) -> None:
        self.compressors: dict[zstandard.ZstdCompressionParameters, zstandard.ZstdCompressor] = {}
        self.decompressor = zstandard.ZstdDecompressor()


_local = _Contexts()


def compressor(params: zstandard.ZstdCompressionParameters, size: int) -> zstandard.ZstdCompressor:
    """A compressor with ``params`` (one of the module-level parameter sets) for ``size``
    bytes: this thread's for a small stream (each set used keeps its compressor for the
    thread's life), a new one for a large one."""
    if size > REUSE_BYTES:
        return zstandard.ZstdCompressor(compression_params=params)
    c = _local.compressors.get(params)
    if c is None:
        c = _local.compressors[params] = zstandard.ZstdCompressor(compression_params=params)
    return c


def compress(data: Any, symbols: bool = False) -> bytes:
    """One zstd frame (with its content size) of the bytes-like ``data``.

    ``symbols`` selects settings for a stream of small symbols with little repetition.
    """
    size = memoryview(data).nbytes
    out: bytes = compressor(_SYMBOLS if symbols else _GENERAL, size).compress(data)
    return out


def compress_dense(data: Any) -> bytes:
    """One zstd frame of dense bytes (byte planes of float words), at a higher level."""
    out: bytes = compressor(_DENSE, memoryview(data).nbytes).compress(data)
    return out


def declared(frame: Any, limit: int, what: str) -> int:
    """The content size a zstd frame declares, checked to be at most ``limit`` bytes
    (FormatError naming ``what`` otherwise)."""
    try:
        size: int = zstandard.frame_content_size(frame)
    except zstandard.ZstdError as e:
        raise FormatError(f"{what}: not a zstd frame ({e})") from None
    if not 0 <= size <= limit:
        raise FormatError(f"{what}: zstd frame declares {size} bytes, at most {limit}")
    return size


def decompress_exact(frame: Any, size: int, what: str) -> npt.NDArray[np.uint8]:
    """Decompress one zstd frame that must hold exactly ``size`` bytes and nothing after.

    The frame header's content size is checked before anything is allocated, so a
    malicious frame cannot make us allocate more than ``size`` bytes. ``what`` names the
    data in the :class:`FormatError` raised on any problem.
    """
    try:
        declared = zstandard.frame_content_size(frame)
    except zstandard.ZstdError as e:
        raise FormatError(f"{what}: not a zstd frame ({e})") from None
    if declared != size:
        raise FormatError(f"{what}: zstd frame declares {declared} bytes, expected {size}")
    dctx = _local.decompressor if size <= REUSE_BYTES else zstandard.ZstdDecompressor()
    try:  # one call into a buffer of the declared size: twice as fast as a decompressobj
        out = dctx.decompress(frame, max_output_size=size, allow_extra_data=False)
    except zstandard.ZstdError as e:
        raise FormatError(
            f"{what}: zstd frame is corrupt, truncated or followed by junk ({e})"
        ) from None
    if len(out) != size:
        raise FormatError(f"{what}: zstd frame holds {len(out)} bytes, declares {size}")
    return np.frombuffer(out, np.uint8)
