"""Encoding one tensor into its pieces, one per level, under its plan."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from peerprog.codec.base import RawTensor
from peerprog.codec.dtypes import dtype
from peerprog.codec.groupplane import format
from peerprog.codec.groupplane.kernels import Kernels
from peerprog.codec.groupplane.params import (
    flat_array,
    settings,
    tensor_settings,
)
from peerprog.codec.groupplane.selection import default_kernels
from peerprog.codec.layout import ParamValue


def encode_tensor(
    tensor: RawTensor,
    tensor_params: Mapping[str, ParamValue],
    params: Mapping[str, ParamValue],
    name: str = "",
    kernels: Kernels | None = None,
) -> tuple[dict[str, ParamValue], list[Any]]:
    """One tensor's pieces, one per level (``b""`` where a level does not refine it), under
    its params from the plan (returned, as they go in the manifest). ``kernels``: those to
    use (default: :func:`~peerprog.codec.groupplane.selection.default_kernels`)."""
    s = settings(params)
    dt = dtype(tensor.dtype)
    flat = flat_array(name, dt, tensor)
    nlevels = s.levels or 1
    ts = tensor_settings(s, dt, tensor.array.shape, tensor_params, name)
    if ts.whole:
        return {"whole": True}, [format.encode_whole(dt, flat), *([b""] * (nlevels - 1))]
    geo = format.geometry(dt, s.max_planes)
    steps = [step for level in format.plane_steps(ts.planes) for step in level]
    k = kernels or default_kernels()
    streams = k.encode(geo, flat.view(dt.word), ts.group, ts.planes[-1], steps)
    return {"group": ts.group, "planes": list(ts.planes)}, format.write_pieces(ts.planes, streams)
