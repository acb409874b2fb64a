"""Progressive codecs: split a state dict into significance levels, merge any prefix back.

Pure (numpy and zstd; groupplane's optional C kernels need only the CPython headers).
``groupplane`` is the default and lossless: a scale per group of weights, magnitude bit planes
most significant first, the exact remainder last. ``bitplane`` (lossless) cuts the float bits
themselves into levels; ``paper`` is the yardstick from Lee et al. 2021 (per-tensor min-max
16-bit codes cut into 2-bit pieces, lossy).
"""

from __future__ import annotations

from peerprog.codec.base import Codec, Decoder, Encoded, EncodedTensor, RawTensor
from peerprog.codec.bitplane import BitplaneCodec
from peerprog.codec.dtypes import DTYPES, DType, dtype
from peerprog.codec.groupplane import GroupplaneCodec
from peerprog.codec.layout import ParamValue, Segment, TensorLayout
from peerprog.codec.paper import PaperCodec
from peerprog.errors import InputError

DEFAULT_CODEC = "groupplane"

CODECS: dict[str, Codec] = {c.name: c for c in (GroupplaneCodec(), BitplaneCodec(), PaperCodec())}


def get_codec(name: str) -> Codec:
    """The registered codec called ``name``; :class:`InputError` naming the choices if none."""
    try:
        return CODECS[name]
    except KeyError:
        choices = ", ".join(sorted(CODECS))
        raise InputError(f"unknown codec {name!r} (choose from: {choices})") from None


def exact_at(codec: str, level: int, levels_total: int) -> bool:
    """Whether a model of ``codec`` decoded to ``level`` is bit for bit the original."""
    return level == levels_total - 1 and get_codec(codec).lossless


__all__ = [
    "CODECS",
    "DEFAULT_CODEC",
    "DTYPES",
    "BitplaneCodec",
    "Codec",
    "DType",
    "Decoder",
    "Encoded",
    "EncodedTensor",
    "PaperCodec",
    "ParamValue",
    "RawTensor",
    "Segment",
    "TensorLayout",
    "dtype",
    "exact_at",
    "get_codec",
]
