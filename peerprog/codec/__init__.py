"""Progressive codecs: split a state dict into significance levels, merge any prefix back.

Pure (numpy and zstd only). ``bitplane`` is the default and lossless; ``paper`` is the
yardstick from Lee et al. 2021 (per-tensor min-max 16-bit codes cut into 2-bit pieces);
``rowplane`` (lossless) codes fixed-point magnitude bit planes with significance coding and
gives better quality per byte than both in its early levels.
"""

from __future__ import annotations

from peerprog.codec.base import Codec, Decoder, Encoded, EncodedTensor, RawTensor
from peerprog.codec.bitplane import BitplaneCodec
from peerprog.codec.dtypes import DTYPES, DType, dtype
from peerprog.codec.groupplane_codec import GroupplaneCodec
from peerprog.codec.layout import ParamValue, Segment, TensorLayout
from peerprog.codec.paper import PaperCodec
from peerprog.codec.rowplane import RowplaneCodec
from peerprog.errors import InputError

DEFAULT_CODEC = "bitplane"

CODECS: dict[str, Codec] = {
    c.name: c for c in (GroupplaneCodec(), BitplaneCodec(), PaperCodec(), RowplaneCodec())
}


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
    "RowplaneCodec",
    "Segment",
    "TensorLayout",
    "dtype",
    "exact_at",
    "get_codec",
]
