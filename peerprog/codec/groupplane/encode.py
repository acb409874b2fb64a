"""Encoding one tensor into its pieces, one per level, under its plan."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from peerprog.codec import zstd
from peerprog.codec.base import RawTensor
from peerprog.codec.dtypes import dtype
from peerprog.codec.groupplane import classes, format, rans
from peerprog.codec.groupplane.format import Array
from peerprog.codec.groupplane.kernels import Kernels
from peerprog.codec.groupplane.params import (
    flat_array,
    settings,
    tensor_settings,
)
from peerprog.codec.groupplane.selection import default_kernels
from peerprog.codec.layout import ParamValue
from peerprog.errors import FormatError


def encode_tensor(
    tensor: RawTensor,
    tensor_params: Mapping[str, ParamValue],
    params: Mapping[str, ParamValue],
    name: str = "",
    kernels: Kernels | None = None,
) -> tuple[dict[str, ParamValue], list[Any]]:
    """One tensor's pieces, one per level (``b""`` where a level does not refine it), under
    its params from the plan (returned, as they go in the manifest). ``kernels``: those to
    use (default: :func:`~peerprog.codec.groupplane.selection.default_kernels`).

    A plan of row classes (``{"group", "rows", "row_classes"}``: one class byte per row)
    encodes each class's rows as a tensor of its own (:mod:`.classes`); the manifest's
    params leave ``row_classes`` out (level 0 carries them)."""
    if "row_classes" in tensor_params:
        return _encode_classes(tensor, tensor_params, params, name, kernels)
    s = settings(params)
    dt = dtype(tensor.dtype)
    flat = flat_array(name, dt, tensor)
    nlevels = s.levels or 1
    ts = tensor_settings(s, dt, tensor.array.shape, tensor_params, name)
    if ts.whole:
        return {"whole": True}, [format.encode_whole(dt, flat, s.layout), *([b""] * (nlevels - 1))]
    geo = format.geometry(dt, s.max_planes)
    steps = [step for level in format.plane_steps(ts.planes) for step in level]
    k = kernels or default_kernels()
    streams = k.encode(geo, flat.view(dt.word), ts.group, ts.planes[-1], steps, s.layout == 2)
    symbols = [
        rans.encode_symbols(codes, b - a) if s.layout == 2 else zstd.compress(codes, symbols=True)
        for (a, b), (codes, _) in zip(steps, streams.steps, strict=True)
    ]
    pieces = format.write_pieces(ts.planes, streams, symbols, s.layout, dt.itemsize)
    return {"group": ts.group, "planes": list(ts.planes)}, pieces


def _encode_classes(
    tensor: RawTensor,
    plan: Mapping[str, ParamValue],
    params: Mapping[str, ParamValue],
    name: str,
    kernels: Kernels | None,
) -> tuple[dict[str, ParamValue], list[Any]]:
    tp = {k: v for k, v in plan.items() if k != "row_classes"}
    ladders = classes.ladders(tp, name)
    raw = plan["row_classes"]
    shape = tensor.array.shape
    if not isinstance(raw, bytes) or len(shape) < 2 or len(raw) != shape[0]:
        raise FormatError(f"tensor {name!r}: 'row_classes' must be a byte per row")
    cls = np.frombuffer(raw, np.uint8)
    if int(cls.max()) != len(ladders) - 1 or not np.bincount(cls).all():
        raise FormatError(f"tensor {name!r}: 'row_classes' must use each of the ladders")

    def encode_class(rows: Array, ladder: list[int]) -> list[Any]:
        sub = {"group": tp["group"], "planes": list[ParamValue](ladder)}
        return encode_tensor(RawTensor(tensor.dtype, rows), sub, params, name, kernels)[1]

    return tp, classes.encode(tensor.array, cls, ladders, encode_class)
