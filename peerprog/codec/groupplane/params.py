"""What the manifest says about a groupplane model: the codec params (:func:`settings`) and
each tensor's params (:func:`tensor_settings`), checked, and the rules that derive from
them: which tensors travel whole (:func:`is_whole`) and a tensor's group size
(:func:`group_size`).

Every value is canonical msgpack (ints, strs, bools, lists, dicts: no floats).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np
import numpy.typing as npt

from peerprog.codec.base import RawTensor
from peerprog.codec.dtypes import DType
from peerprog.codec.layout import ParamValue
from peerprog.errors import FormatError

NAME = "groupplane"
PLANE_DTYPES = ("float32", "bfloat16", "float16")
MAX_LEVELS = 32
LAYOUTS = (1, 2)
"""The stream layouts (codec param ``format``, :mod:`.format`): 1 for manifests without the
param, 2 for those published since."""
MAX_GROUP = 1 << 16
_DEFAULTS: dict[str, ParamValue] = {
    "group": 64,
    "max_planes": 12,
    "small_tensor_elements": 1024,
    "vector_elements": 1 << 16,
    "targets_mbpw": [2000, 3000, 4000, 5000, 6000, 8000],
    "weighting": "relative",
    "format": 2,
}


def default_params() -> dict[str, ParamValue]:
    """The codec params used when the publisher gives none (before the plan adds
    ``levels``). A manifest without ``format`` is of format 1 (published before format 2
    existed), not of the default."""
    return {k: list(v) if isinstance(v, list) else v for k, v in _DEFAULTS.items()}


@dataclass(frozen=True)
class Settings:
    """Checked codec params."""

    group: int
    """``G``: the largest group size (a tensor's is :func:`group_size`)."""
    max_planes: int
    """Planes the plane levels may carry at most (and at most the dtype's mantissa bits)."""
    small: int
    """Float tensors with fewer elements travel whole."""
    vector: int
    """Tensors of fewer than two dimensions with fewer elements travel whole."""
    targets: tuple[int, ...]
    """The rate allocation's cumulative targets, milli-bits per weight."""
    weighting: str
    """``relative`` (each tensor's squared error over its squared norm) or ``absolute``."""
    levels: int | None
    """The model's levels (set by the plan; None before)."""
    layout: int = 2
    """The stream layout, codec param ``format`` (:data:`LAYOUTS`)."""
    row_classes: bool = False
    """With the publisher's sensitivity, plan a tensor's rows in classes of their own
    (:mod:`.classes`); optional param, off unless given (measured: it helps the LM below
    3.5 bits/weight and hurts EfficientNet-Lite1, BENCHMARKS.md)."""


def settings(params: Mapping[str, ParamValue] | None) -> Settings:
    """Checked codec params (defaults filled in); FormatError on bad ones.

    Valid results are cached by the params' values and types (every tensor of a model has
    the same params, and checking them cost more than decoding a small tensor)."""
    key = _settings_key(params)
    hit = _SETTINGS.get(key) if key is not None else None
    if hit is not None:
        return hit
    out = _settings(params)
    if key is not None and len(_SETTINGS) < 64:
        _SETTINGS[key] = out
    return out


_SETTINGS: dict[bytes, Settings] = {}


def _settings_key(params: Mapping[str, ParamValue] | None) -> bytes | None:
    """The params as msgpack (exact: True is not 1, 1 is not 1.0), or None if they are not
    msgpack values."""
    try:
        key: bytes = msgpack.packb(dict(params or {}))
    except (TypeError, ValueError, OverflowError):
        return None
    return key


def _settings(params: Mapping[str, ParamValue] | None) -> Settings:
    p: dict[str, ParamValue] = default_params()
    p["format"] = 1  # a manifest from before the param
    for key, value in (params or {}).items():
        if key not in _DEFAULTS and key not in ("levels", "row_classes"):
            raise FormatError(f"unknown {NAME} codec param {key!r}")
        p[key] = value
    targets = p["targets_mbpw"]
    if not isinstance(targets, list) or len(targets) > MAX_LEVELS - 3:
        raise FormatError(f"codec param 'targets_mbpw' must be a list of ≤ {MAX_LEVELS - 3}")
    if p["weighting"] not in ("relative", "absolute"):
        raise FormatError("codec param 'weighting' must be 'relative' or 'absolute'")
    levels = p.get("levels")
    if p["format"] not in LAYOUTS or isinstance(p["format"], bool):
        raise FormatError(f"codec param 'format' must be one of {list(LAYOUTS)}")
    row_classes = p.get("row_classes", False)
    if not isinstance(row_classes, bool):
        raise FormatError("codec param 'row_classes' must be true or false")
    return Settings(
        _int(p, "group", 1, MAX_GROUP),
        _int(p, "max_planes", 1, 23),
        _int(p, "small_tensor_elements", 0, 1 << 62),
        _int(p, "vector_elements", 0, 1 << 62),
        tuple(_int({"t": t}, "t", 1, 1 << 20) for t in targets),
        str(p["weighting"]),
        None if levels is None else _int(p, "levels", 1, MAX_LEVELS),
        int(p["format"]),
        row_classes,
    )


def _int(p: Mapping[str, ParamValue], key: str, lo: int, hi: int) -> int:
    v = p.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise FormatError(f"{NAME} param {key!r} must be an integer in {lo}..{hi}, got {v!r}")
    return v


def is_whole(dt: DType, shape: Sequence[int], s: Settings) -> bool:
    """Whether a tensor travels whole in level 0: not a float of :data:`PLANE_DTYPES`, empty,
    smaller than ``small_tensor_elements``, or a vector (fewer than two dimensions) smaller
    than ``vector_elements`` (biases and norm statistics: few bytes, much sensitivity; on
    EfficientNet-Lite1, BatchNorm vectors given planes cost more quality than they saved
    bytes)."""
    numel = math.prod(shape)
    return (
        dt.name not in PLANE_DTYPES
        or numel == 0
        or numel < s.small
        or (len(shape) < 2 and numel < s.vector)
    )


def group_size(shape: Sequence[int], group: int) -> int:
    """The tensor's group size: the largest divisor of the row length (the last axes) in
    ``group/2+1 .. group``, so that groups do not cross rows, else the row length if it is
    at most ``group``, else ``group``."""
    numel = math.prod(shape)
    cols = numel // shape[0] if len(shape) >= 2 and shape[0] else numel
    if cols <= group:
        return max(cols, 1)
    for d in range(group, group // 2, -1):
        if cols % d == 0:
            return d
    return group


@dataclass(frozen=True)
class TensorSettings:
    """A tensor's checked params: whole, or planed with a group size and a plane ladder."""

    whole: bool
    group: int = 0
    planes: tuple[int, ...] = ()
    """Planes known after each level but the last (non-decreasing, from ≥ 1)."""


def tensor_settings(
    s: Settings, dt: DType, shape: Sequence[int], tp: Mapping[str, ParamValue], name: str
) -> TensorSettings:
    """A tensor's params, checked against the codec params; FormatError if they are bad.

    Valid results are cached by the params' values and types, with the dtype and shape
    (decoding a small tensor level by level checked them once a level)."""
    key = _settings_key(tp)
    if key is not None:
        full = (s, dt.name, tuple(shape), key)
        hit = _TENSOR_SETTINGS.get(full)
        if hit is not None:
            return hit
    out = _tensor_settings(s, dt, shape, tp, name)
    if key is not None:
        if len(_TENSOR_SETTINGS) >= 4096:
            _TENSOR_SETTINGS.clear()
        _TENSOR_SETTINGS[full] = out
    return out


_TENSOR_SETTINGS: dict[tuple[Settings, str, tuple[int, ...], bytes], TensorSettings] = {}


def _tensor_settings(
    s: Settings, dt: DType, shape: Sequence[int], tp: Mapping[str, ParamValue], name: str
) -> TensorSettings:
    nlevels = s.levels
    if nlevels is None:
        raise FormatError(f"{NAME}: codec params lack 'levels'")
    if is_whole(dt, shape, s):
        if dict(tp) != {"whole": True}:
            raise FormatError(f"tensor {name!r}: params must be {{'whole': True}}")
        return TensorSettings(True)
    if set(tp) != {"group", "planes"}:
        raise FormatError(f"tensor {name!r}: params must be exactly 'group' and 'planes'")
    gsize = _int(tp, "group", 1, MAX_GROUP)
    planes = tp["planes"]
    kmax = min(s.max_planes, dt.mantissa_bits)
    if (
        not isinstance(planes, list)
        or len(planes) != nlevels - 1
        or not all(isinstance(k, int) and not isinstance(k, bool) for k in planes)
    ):
        raise FormatError(f"tensor {name!r}: 'planes' must be {nlevels - 1} integers")
    ks = tuple(int(k) for k in planes)  # type: ignore[arg-type]
    if ks and (ks[0] < 1 or ks[-1] > kmax or any(a > b for a, b in itertools.pairwise(ks))):
        raise FormatError(f"tensor {name!r}: 'planes' must rise from ≥ 1 to ≤ {kmax}")
    if nlevels < 2:
        raise FormatError(f"tensor {name!r}: a planed tensor needs at least 2 levels")
    return TensorSettings(False, gsize, ks)


def flat_array(name: str, dt: DType, tensor: RawTensor) -> npt.NDArray[Any]:
    """A tensor's array, flat, after checking that it is of the dtype's storage."""
    arr = tensor.array
    if not isinstance(arr, np.ndarray) or arr.dtype != dt.storage:
        got = getattr(arr, "dtype", type(arr).__name__)
        raise FormatError(f"tensor {name!r}: array of {got}, {dt.name} needs {dt.storage}")
    return np.ascontiguousarray(arr).reshape(-1)
