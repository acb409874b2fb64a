"""The ``groupplane`` codec (lossless): per-group power-of-two scales, fixed-point magnitude
bit planes most significant first, entropy-coded, a rate-allocated ladder of levels, and the
exact bits last. Streams one tensor at a time.

API (pure functions; the store/publish side wires them in)::

    analyse(name, tensor, params=None) -> TensorStats          # cheap pass, every tensor
    plan(params, stats) -> Plan                                # rate allocation
    encode_tensor(tensor, tensor_params, params=None) -> (tensor_params, pieces)
    decode_tensor(params, dtype, shape, tensor_params, pieces, prior=None) -> ndarray

* ``params`` are the codec params (:func:`default_params`, stored in the manifest);
  :class:`Plan` gives the final codec params (``levels``) and each tensor's params. Every
  value is canonical msgpack (ints, strs, bools, lists, dicts: no floats).
* ``encode_tensor`` returns one bytes-like piece per level (``b""`` where the level does not
  refine the tensor); a level's stream is its tensors' pieces in manifest order.
* ``decode_tensor(..., pieces[0..n], prior)`` returns the tensor at level n as an array of
  its storage dtype (bfloat16: uint16 bit patterns) and shape. ``prior`` is the result for
  level n-1 (or None: then levels 0..n are all decoded). With a prior only level 0's scales
  and level n's piece are read, so adding a level costs about its size plus one pass over
  the tensor. When level n does not refine the tensor, ``prior`` itself is returned.
  Malformed pieces raise :class:`peerprog.errors.FormatError`; nothing is allocated beyond
  the tensor's own size (known from the manifest) and the lengths the pieces must have.

Format of a float tensor (float32, bfloat16, float16) with at least
``small_tensor_elements`` elements, and, if it has fewer than two dimensions, at least
``vector_elements`` (biases and norm statistics are few bytes and sensitive: on
EfficientNet-Lite1, BatchNorm vectors given planes cost more quality than they saved bytes);
any other tensor travels whole in level 0 (raw bytes, zstd; float words byte-shuffled first,
most significant bytes together: 5% smaller on EfficientNet-Lite1 bf16's whole tensors)
with ``{"whole": True}``:

* Groups: the flat tensor cut into groups of ``g`` consecutive weights (the last one
  zero-padded), ``g`` the largest divisor of the row length (the last axes) in ``G/2+1..G``
  (``G`` = codec param ``group``) so that groups do not cross rows, else the row length if
  it is at most ``G``, else ``G``. Tensor param ``group``.
* Framing: every piece is a sequence of parts, each ``[u32 little-endian length][part]``,
  and nothing else. Level 0: the scales, then one part per plane step; a plane level: one
  part per plane step (a level's planes are cut into steps of at most 7, so that a step's
  symbols fit in a byte); the last level: one part, the remainder.
* Scale: group exponent ``E``, the smallest with every finite |x| < 2**E, clamped to
  ``e_floor..e_ceil`` of the dtype (:func:`~peerprog.codec.groupplane_planes.geometry`);
  level 0's first part is a zstd frame of ``E - e_floor``, one byte per group.
* Magnitudes ``q = floor(|x| / 2**(E - k))`` after k planes: exact bit fields, nothing is
  rounded. Tensor param ``planes`` lists the planes known after each level but the last
  (non-decreasing, at least 1, at most ``max_planes`` and the dtype's mantissa bits).
* A plane step (k0 → k1 planes, r = k1 - k0 ≤ 7): ``[u32 length][zstd frame of the
  symbols of the weights with q = 0 so far]`` then the raw r-bit refinement fields of the
  others, both in index order. A symbol is the weight's r new bits with its sign (sent once,
  when the weight first becomes non-zero), packed base ``2**(r+1) - 1`` as many per byte as
  fit, so that zstd's Huffman stage codes several sparse symbols per byte.
* Decoded value: ``±(2q + 1) * 2**(E - k - 1)``, the midpoint of the interval left open
  (0 for q = 0, whose sign is unknown). With a power-of-two scale and k ≤ mantissa bits
  these have at most k+1 significant bits and sit at or above the smallest subnormal, so
  they are exact in the dtype: the decoder recovers q and the sign from the prior alone.
* The remainder: ``[u32 length][zstd frame of the byte planes of the words whose prior is
  0]`` (tiny weights, ±0, NaN, ±Inf, subnormals below the scale) then the low bits of the
  other words (the midpoint marker, the prior's lowest set bit, and below: its width varies
  per weight and is known from the prior), packed MSB first by :mod:`varbits`, in index
  order: the exact float bits' remainder.

Choices, measured on EfficientNet-Lite1 and a byte-level transformer (fp32 and bf16; tables
and commands in ``bench/CODEC_NOTES.md``): G = 64; power-of-two scales (as good per bit as
real-valued fp16 scales, and they make every intermediate value exact); zstd as the entropy
coder (1–4% above the order-0 entropy, ~10× faster to decode than an exact ANS coder).

Implementation: two backends with byte-identical streams and identical decodes (each decodes
the other's; property-tested). ``"c"``: the extension :mod:`peerprog.codec._groupplane`
(``_groupplane.c``, compiled by ``setup.py`` at ``pip install``; optional, skipped with a
warning where there is no compiler), one fused pass over the tensor per plane step and per
remainder (:mod:`~peerprog.codec.groupplane_native`); ``"numpy"``: the reference kernels of
:mod:`~peerprog.codec.groupplane_planes` and :mod:`~peerprog.codec.varbits`, many passes
per level, ~10-30x slower. The C backend is used when the extension imports (and was built
for this interface version), else numpy; the environment variable ``PEERPROG_GROUPPLANE``
(``c`` / ``numpy``) or :func:`set_backend` forces one (:func:`backends`, :func:`backend`).
``analyse`` and ``plan`` and the whole tensors are numpy/zstd in both.

Rate allocation (:func:`plan`): every tensor starts with 1 plane; then plane steps are taken
greedily by estimated error reduction per byte, the error of a tensor being its squared
error over its squared norm (``weighting`` ``"relative"``: each tensor's signal-to-noise
counts alike) or its plain squared error (``"absolute"``); with the publisher's sensitivity
(:mod:`~peerprog.codec.sensitivity`) each weight's squared error is weighted by it and the
sums compare as they are. :func:`analyse` estimates them from a sample of groups. Levels
close when the estimated cumulative size passes each of ``targets_mbpw`` (milli-bits per
weight, over all elements); then one level takes every tensor to its maximum planes, and
the remainder makes it exact. No level is empty.
"""

from __future__ import annotations

import heapq
import itertools
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from peerprog.codec import groupplane_native as native
from peerprog.codec import zstd
from peerprog.codec.base import RawTensor
from peerprog.codec.dtypes import DType, dtype
from peerprog.codec.groupplane_planes import (
    Array,
    Buffer,
    Geometry,
    compress_dense,
    decode_first_level,
    decode_plane_level,
    decode_remainder,
    decode_scales,
    encode_plane_level,
    encode_remainder,
    encode_scales,
    from_f32,
    geometry,
    group_exponents,
    magnitudes,
    midpoints,
    padded,
    shuffle,
    split_u32,
    to_f32,
    unshuffle,
    with_u32,
)
from peerprog.codec.layout import ParamValue
from peerprog.codec.sensitivity import matrix_shape
from peerprog.errors import FormatError

NAME = "groupplane"
PLANE_DTYPES = ("float32", "bfloat16", "float16")
MAX_LEVELS = 32
MAX_GROUP = 1 << 16
SAMPLE_ELEMENTS = 1 << 16
MAX_STEP = 7  # planes per symbol: 2**(r+1) - 1 values fit in a byte
_DEFAULTS: dict[str, ParamValue] = {
    "group": 64,
    "max_planes": 12,
    "small_tensor_elements": 1024,
    "vector_elements": 1 << 16,
    "targets_mbpw": [2000, 3000, 4000, 5000, 6000, 8000],
    "weighting": "relative",
}


# ---------------------------------------------------------------------------- backends


def backends() -> tuple[str, ...]:
    """The kernels available here: ``"c"`` (when the extension is built) and ``"numpy"``."""
    return ("c", "numpy") if native.ext is not None else ("numpy",)


def backend() -> str:
    """The kernels in use (see the module docstring)."""
    return _backend


def set_backend(name: str) -> None:
    """Use the ``"c"`` or the ``"numpy"`` kernels from now on (ValueError if unavailable)."""
    global _backend
    if name not in backends():
        raise ValueError(f"groupplane backend {name!r} is not available (have {backends()})")
    _backend = name


def _initial_backend() -> str:
    want = os.environ.get("PEERPROG_GROUPPLANE", "")
    if want in ("", "auto"):
        return backends()[0]
    if want not in backends():
        raise RuntimeError(f"PEERPROG_GROUPPLANE={want!r}: available are {backends()}")
    return want


_backend = _initial_backend()


def _c() -> bool:
    return _backend == "c"


def default_params() -> dict[str, ParamValue]:
    """The codec params used when the publisher gives none (before :func:`plan` adds
    ``levels``)."""
    return {k: list(v) if isinstance(v, list) else v for k, v in _DEFAULTS.items()}


@dataclass(frozen=True)
class Settings:
    group: int
    max_planes: int
    small: int
    vector: int
    targets: tuple[int, ...]
    weighting: str
    levels: int | None


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
    for key, value in (params or {}).items():
        if key not in _DEFAULTS and key != "levels":
            raise FormatError(f"unknown {NAME} codec param {key!r}")
        p[key] = value
    targets = p["targets_mbpw"]
    if not isinstance(targets, list) or len(targets) > MAX_LEVELS - 3:
        raise FormatError(f"codec param 'targets_mbpw' must be a list of ≤ {MAX_LEVELS - 3}")
    if p["weighting"] not in ("relative", "absolute"):
        raise FormatError("codec param 'weighting' must be 'relative' or 'absolute'")
    levels = p.get("levels")
    return Settings(
        _int(p, "group", 1, MAX_GROUP),
        _int(p, "max_planes", 1, 23),
        _int(p, "small_tensor_elements", 0, 1 << 62),
        _int(p, "vector_elements", 0, 1 << 62),
        tuple(_int({"t": t}, "t", 1, 1 << 20) for t in targets),
        str(p["weighting"]),
        None if levels is None else _int(p, "levels", 1, MAX_LEVELS),
    )


def _int(p: Mapping[str, ParamValue], key: str, lo: int, hi: int) -> int:
    v = p.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise FormatError(f"{NAME} param {key!r} must be an integer in {lo}..{hi}, got {v!r}")
    return v


# ---------------------------------------------------------------------------- shapes


def is_whole(dt: DType, shape: Sequence[int], s: Settings) -> bool:
    """Whether a tensor travels whole in level 0: not a float of :data:`PLANE_DTYPES`, empty,
    smaller than ``small_tensor_elements``, or a vector (fewer than two dimensions) smaller
    than ``vector_elements`` (biases and norm statistics: few bytes, much sensitivity)."""
    numel = math.prod(shape)
    return (
        dt.name not in PLANE_DTYPES
        or numel == 0
        or numel < s.small
        or (len(shape) < 2 and numel < s.vector)
    )


def group_size(shape: Sequence[int], group: int) -> int:
    """The tensor's group size (see the module docstring)."""
    numel = math.prod(shape)
    cols = numel // shape[0] if len(shape) >= 2 and shape[0] else numel
    if cols <= group:
        return max(cols, 1)
    for d in range(group, group // 2, -1):
        if cols % d == 0:
            return d
    return group


def _geometry(dt: DType, s: Settings) -> Geometry:
    return geometry(dt, s.max_planes)


# ---------------------------------------------------------------------------- analyse


@dataclass(frozen=True)
class TensorStats:
    """What :func:`plan` needs of one tensor: sizes, and estimated bytes and errors by
    number of planes (index k: after k planes), scaled from a sample to the whole tensor."""

    name: str
    dtype: str
    numel: int
    whole: bool
    whole_bytes: int = 0
    scale_bytes: float = 0.0
    plane_bytes: tuple[float, ...] = ()  # cumulative bytes of planes 1..k, index k
    sq_error: tuple[float, ...] = ()  # squared error after k planes, index k
    sq_norm: float = 0.0
    weighted: bool = False  # errors weighted by the publisher's sensitivity
    extra: dict[str, Any] = field(default_factory=dict)


def analyse(
    name: str,
    tensor: RawTensor,
    params: Mapping[str, ParamValue] | None = None,
    sensitivity: Array | None = None,
) -> TensorStats:
    """Estimate a tensor's bytes and errors per plane from a sample of its groups.

    ``sensitivity``: weights of the squared errors, a matrix broadcastable to the tensor's
    ``(rows, cols)`` (:func:`peerprog.codec.sensitivity.as_matrix`); the errors are then
    ``Σ s_i (x̂_i - x_i)²`` and :func:`plan` compares them as they are."""
    s = settings(params)
    dt = dtype(tensor.dtype)
    flat = _flat(name, dt, tensor)
    if is_whole(dt, tensor.array.shape, s):
        return TensorStats(name, dt.name, flat.size, True, whole_bytes=flat.size * dt.itemsize)
    geo = _geometry(dt, s)
    gsize = group_size(tensor.array.shape, s.group)
    ngroups = -(-flat.size // gsize)
    take = max(1, min(ngroups, SAMPLE_ELEMENTS // gsize))
    words = padded(flat, ngroups * gsize).reshape(ngroups, gsize)
    picked = np.arange(ngroups, dtype=np.int64)
    if take < ngroups:  # (linspace over every group gives every group)
        picked = np.linspace(0, ngroups - 1, take).astype(np.int64)
        words = words[picked]
    weights = None
    if sensitivity is not None:
        weights = _sample_weights(tensor.array.shape, sensitivity, picked, gsize, flat.size)
    sv = to_f32(geo, np.ascontiguousarray(words).reshape(-1)).reshape(take, gsize)
    scale = ngroups / take
    kmax = geo.max_planes
    # What group_exponents, magnitudes and midpoints would give, in fewer passes over the
    # sample (a small tensor is analysed whole: its passes are the cost of a publish of
    # many tensors). Every value below is exact, so the figures are the same to the bit:
    # |x| and its scalings by powers of two in float64, (midpoint - |x|)², the magnitudes'
    # bit lengths; and each plane count's errors are summed as np.sum sums them.
    ax = np.abs(np.where(np.isfinite(sv), sv, 0).astype(np.float64))
    amax = ax.max(axis=1)
    _, e = np.frexp(amax)
    exps = np.clip(np.where(amax > 0, e, geo.e_floor), geo.e_floor, geo.e_ceil)
    u = ax * np.ldexp(1.0, kmax - exps)[:, None]  # |x| / 2**(E - kmax) < 2**kmax
    q = u.astype(np.uint32)  # floor: the magnitudes after kmax planes
    _, bitlen = np.frexp(q.astype(np.float32))
    lengths = np.bincount(bitlen.reshape(-1), minlength=kmax + 2)
    above = np.cumsum(lengths[::-1])[::-1]  # above[b]: magnitudes of bit length ≥ b
    plane_bits = [0.0]
    errs: list[float] = []
    # a few plane counts at a time (temporaries near SAMPLE_ELEMENTS elements); 0 planes
    # leave every magnitude 0, and the squared errors x²: the squared norm
    per = max(1, SAMPLE_ELEMENTS // q.size)
    for k0 in range(0, kmax + 1, per):
        ks = np.arange(k0, min(k0 + per, kmax + 1))
        qk = q[None] >> (kmax - ks.astype(np.uint32))[:, None, None]  # after k planes
        odd = qk << np.uint32(1)
        odd |= qk != 0  # 2q + 1, or 0 where q = 0
        sq = odd.astype(np.float64)
        sq *= np.ldexp(1.0, exps[None, :] - ks[:, None] - 1)[:, :, None]  # the midpoints
        sq -= ax  # ± (approx - x): the sign of x is the midpoint's
        sq *= sq
        if weights is not None:
            sq *= weights
        sums = sq.reshape(len(ks), -1).sum(axis=1)  # each row as np.sum(row)
        for j, k in enumerate(ks.tolist()):
            errs.append(float(sums[j]) * scale)
            if k == 0:
                continue
            n_sig = int(above[kmax - k + 2])  # non-zero after k - 1 planes
            n_new = int(lengths[kmax - k + 1])  # non-zero after k planes, not before
            n_insig = q.size - n_sig
            bits = float(n_sig)
            if n_insig:
                p1 = n_new / n_insig
                bits += n_insig * _h(p1) + n_new  # significance, then the sign
            plane_bits.append(plane_bits[-1] + bits * scale)
    sq_norm = errs[0]
    return TensorStats(
        name,
        dt.name,
        flat.size,
        False,
        scale_bytes=ngroups * 0.4,  # a few bits per group after zstd, measured
        plane_bytes=tuple(b / 8 for b in plane_bits),
        sq_error=tuple(errs),
        sq_norm=sq_norm,
        weighted=weights is not None,
        extra={"group": gsize},
    )


def _sample_weights(
    shape: Sequence[int], sensitivity: Array, picked: Array, gsize: int, numel: int
) -> Array:
    """The sensitivity of each weight of the sampled groups, shaped (groups, gsize); the
    padding after the last weight weighs 0."""
    cols = matrix_shape(shape)[1]
    idx = picked[:, None] * gsize + np.arange(gsize, dtype=np.int64)[None, :]
    inside = idx < numel
    idx = np.minimum(idx, max(numel - 1, 0))
    r = idx // cols if sensitivity.shape[0] > 1 else np.zeros_like(idx)
    c = idx % cols if sensitivity.shape[1] > 1 else np.zeros_like(idx)
    out: Array = sensitivity[r, c] * inside
    return out


def _h(p: float) -> float:
    if p <= 0 or p >= 1:
        return 0.0
    return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def _flat(name: str, dt: DType, tensor: RawTensor) -> Array:
    arr = tensor.array
    if not isinstance(arr, np.ndarray) or arr.dtype != dt.storage:
        got = getattr(arr, "dtype", type(arr).__name__)
        raise FormatError(f"tensor {name!r}: array of {got}, {dt.name} needs {dt.storage}")
    return np.ascontiguousarray(arr).reshape(-1)


# ---------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Plan:
    """The result of rate allocation: the codec params to store (with ``levels``), each
    tensor's params (by name), and the estimated cumulative bytes at each level's end."""

    params: dict[str, ParamValue]
    tensors: dict[str, dict[str, ParamValue]]
    estimated_bytes: tuple[int, ...]


def plan(params: Mapping[str, ParamValue] | None, stats: Sequence[TensorStats]) -> Plan:
    """Rate allocation over all tensors (see the module docstring)."""
    s = settings(params)
    total_weights = sum(t.numel for t in stats)
    prog = [t for t in stats if not t.whole]
    base = sum(t.whole_bytes / 3 for t in stats if t.whole)  # zstd of small floats, roughly
    base += sum(t.scale_bytes + t.plane_bytes[1] for t in prog)
    planes = {t.name: 1 for t in prog}
    kmax = {t.name: len(t.plane_bytes) - 1 for t in prog}
    schedule: list[list[int]] = []  # per level, planes per progressive tensor (in order)

    def weight(t: TensorStats) -> float:
        if t.weighted:  # the publisher's sensitivity: errors compare as they are
            return 1.0
        if s.weighting == "relative":
            return 1.0 / t.sq_norm if t.sq_norm > 0 else 0.0
        return 1.0

    heap: list[tuple[float, int, int]] = []

    def push(i: int) -> None:
        t = prog[i]
        k = planes[t.name]
        if k >= kmax[t.name]:
            return
        cost = max(t.plane_bytes[k + 1] - t.plane_bytes[k], 1e-9)
        gain = (t.sq_error[k] - t.sq_error[k + 1]) * weight(t)
        heapq.heappush(heap, (-gain / cost, i, k))

    for i in range(len(prog)):
        push(i)
    cum = base
    est: list[int] = []
    for target in s.targets:
        budget = target / 8000 * total_weights
        if cum >= budget and schedule:
            continue
        while heap and cum < budget:
            _, i, k = heapq.heappop(heap)
            t = prog[i]
            planes[t.name] = k + 1
            cum += t.plane_bytes[k + 1] - t.plane_bytes[k]
            push(i)
        row = [planes[t.name] for t in prog]
        if not schedule or row != schedule[-1]:
            schedule.append(row)
            est.append(round(cum))
        if not heap:
            break
    if not schedule:
        schedule.append([planes[t.name] for t in prog])
        est.append(round(cum))
    top = [kmax[t.name] for t in prog]
    if top != schedule[-1]:
        schedule.append(top)
        est.append(round(base + sum(t.plane_bytes[-1] - t.plane_bytes[1] for t in prog)))
    if not prog:
        schedule = []
    nlevels = len(schedule) + 1 if prog else 1
    tensors: dict[str, dict[str, ParamValue]] = {}
    for t in stats:
        if t.whole:
            tensors[t.name] = {"whole": True}
    for j, t in enumerate(prog):
        tensors[t.name] = {"group": int(t.extra["group"]), "planes": [row[j] for row in schedule]}
    out = default_params()
    out.update({k: v for k, v in (params or {}).items() if k != "levels"})
    out["levels"] = nlevels
    est.append(-1)  # the exact level: not estimated
    return Plan(out, tensors, tuple(est))


# ---------------------------------------------------------------------------- encode


def _tensor_settings(
    s: Settings, dt: DType, shape: Sequence[int], tp: Mapping[str, ParamValue], name: str
) -> tuple[bool, int, list[int]]:
    """(whole, group size, planes) of a tensor's params, checked against the codec params."""
    nlevels = s.levels
    if nlevels is None:
        raise FormatError(f"{NAME}: codec params lack 'levels'")
    if is_whole(dt, shape, s):
        if dict(tp) != {"whole": True}:
            raise FormatError(f"tensor {name!r}: params must be {{'whole': True}}")
        return True, 0, []
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
    ks = [int(k) for k in planes]  # type: ignore[arg-type]
    if ks and (ks[0] < 1 or ks[-1] > kmax or any(a > b for a, b in itertools.pairwise(ks))):
        raise FormatError(f"tensor {name!r}: 'planes' must rise from ≥ 1 to ≤ {kmax}")
    if nlevels < 2:
        raise FormatError(f"tensor {name!r}: a planed tensor needs at least 2 levels")
    return False, gsize, ks


def encode_tensor(
    tensor: RawTensor,
    tensor_params: Mapping[str, ParamValue],
    params: Mapping[str, ParamValue],
    name: str = "",
) -> tuple[dict[str, ParamValue], list[Any]]:
    """One tensor's pieces, one per level, under its :func:`plan` params (returned, as they
    go in the manifest)."""
    s = settings(params)
    dt = dtype(tensor.dtype)
    flat = _flat(name, dt, tensor)
    shape = tuple(tensor.array.shape)
    nlevels = s.levels or 1
    whole, gsize, ks = _tensor_settings(s, dt, shape, tensor_params, name)
    if whole:
        data = shuffle(flat.view(dt.word)) if dt.is_float else flat.view(np.uint8)
        return {"whole": True}, [compress_dense(data.data), *([b""] * (nlevels - 1))]
    geo = _geometry(dt, s)
    if _c():
        levels = [_substeps(a, b) for a, b in itertools.pairwise([0, *ks])]
        pieces_c = native.encode(geo, flat.view(dt.word), gsize, ks, levels)
        return {"group": gsize, "planes": list(ks)}, list(pieces_c)
    ngroups = -(-flat.size // gsize)
    words = padded(flat.view(dt.word), ngroups * gsize)
    v = to_f32(geo, words).reshape(ngroups, gsize)
    exps = group_exponents(geo, v)
    top = ks[-1]
    q = magnitudes(v, exps, top).reshape(-1)
    neg = np.signbit(v).reshape(-1)
    pieces: list[Any] = []
    prev = 0
    for n, k in enumerate(ks):
        parts: list[Any] = [encode_scales(geo, exps)] if n == 0 else []
        for a, b in _substeps(prev, k):
            parts.append(b"".join(encode_plane_level(q, neg, top, a, b)))
        pieces.append(b"".join(b"".join(with_u32(p)) for p in parts))
        prev = k
    prior = from_f32(geo, midpoints(geo, q.reshape(v.shape), neg.reshape(v.shape), exps, top))
    rem = b"".join(encode_remainder(geo, words, prior.reshape(-1).view(dt.word)))
    pieces.append(b"".join(with_u32(rem)))
    return {"group": gsize, "planes": list(ks)}, pieces


def _substeps(k0: int, k1: int) -> list[tuple[int, int]]:
    """A level's planes ``k0 .. k1`` in steps of at most :data:`MAX_STEP` (a step's
    symbols must fit in a byte)."""
    return [(a, min(a + MAX_STEP, k1)) for a in range(k0, k1, MAX_STEP)]


def _parts(piece: Buffer, count: int, what: str) -> list[memoryview]:
    """A piece made of ``count`` ``[u32 length][part]`` parts, and nothing else."""
    out = []
    rest: Buffer = piece
    for _ in range(count):
        part, rest = split_u32(rest, what)
        out.append(part)
    if len(memoryview(rest)):
        raise FormatError(f"{what}: {len(memoryview(rest))} bytes of junk after the data")
    return out


# ---------------------------------------------------------------------------- decode


def decode_tensor(
    params: Mapping[str, ParamValue],
    dtype_name: str,
    shape: Sequence[int],
    tensor_params: Mapping[str, ParamValue],
    pieces: Sequence[Buffer],
    prior: Array | None = None,
    name: str = "",
) -> Array:
    """The tensor at level ``len(pieces) - 1`` (see the module docstring)."""
    s = settings(params)
    dt = dtype(dtype_name)
    shape = tuple(int(d) for d in shape)
    if any(d < 0 for d in shape) or math.prod(shape) * dt.itemsize > 1 << 46:
        raise FormatError(f"tensor {name!r}: bad shape {shape}")
    nlevels = s.levels or 1
    n = len(pieces) - 1
    if not 0 <= n < nlevels:
        raise FormatError(f"tensor {name!r}: {len(pieces)} pieces, the model has {nlevels} levels")
    whole, gsize, ks = _tensor_settings(s, dt, shape, tensor_params, name)
    what = f"tensor {name!r} level {n}"
    if whole:
        if prior is not None and n > 0:
            if any(len(memoryview(p)) for p in pieces[1:]):
                raise FormatError(f"{what}: a whole tensor has data only in level 0")
            return prior
        numel = math.prod(shape)
        raw = zstd.decompress_exact(pieces[0], numel * dt.itemsize, what)
        if dt.is_float:
            return unshuffle(raw, numel, dt.word).view(dt.storage).reshape(shape)
        return raw.view(dt.storage).reshape(shape).copy()
    geo = _geometry(dt, s)
    numel = math.prod(shape)
    ngroups = -(-numel // gsize)
    if prior is not None:
        if n == 0:
            raise FormatError(f"{what}: level 0 has no prior")
        if not isinstance(prior, np.ndarray) or prior.dtype != dt.storage or prior.size != numel:
            raise ValueError(f"prior of tensor {name!r} is not a {dt.name} array of {numel}")
        return _next_level(geo, ks, gsize, ngroups, numel, shape, pieces, n, prior, what)
    if _c() and n > 0:
        fused = _scratch_c(geo, ks, gsize, ngroups, numel, shape, pieces, n, name)
        if fused is not None:
            return fused
    out: Array | None = None
    for m in range(n + 1):
        wm = f"tensor {name!r} level {m}"
        if out is None and _c():
            words = _first_c(geo, ks, gsize, ngroups, pieces[0], wm)
            out = words[:numel].view(dt.storage).reshape(shape)
        elif out is None:
            v0 = _first(geo, ks, gsize, ngroups, pieces[0], wm)[1]
            out = from_f32(geo, v0.reshape(-1)[:numel]).reshape(shape)
        else:
            out = _next_level(geo, ks, gsize, ngroups, numel, shape, pieces[: m + 1], m, out, wm)
    assert out is not None
    return out


def decode_levels(
    params: Mapping[str, ParamValue],
    dtype_name: str,
    shape: Sequence[int],
    tensor_params: Mapping[str, ParamValue],
    pieces: Sequence[Buffer],
    name: str = "",
) -> Iterator[Array]:
    """The tensor at every level ``0 .. len(pieces) - 1`` in turn: the arrays that
    :func:`decode_tensor` gives level by level, each from the one before (the same checks
    and errors), with the tensor's settings and scales read once rather than per level
    (the quality figures of a publish decode every level of the tensors they measure)."""
    if not pieces:
        return
    prior = decode_tensor(params, dtype_name, shape, tensor_params, pieces[:1], None, name)
    yield prior
    if len(pieces) == 1:
        return
    s = settings(params)
    dt = dtype(dtype_name)
    shp = tuple(int(d) for d in shape)
    whole, gsize, ks = _tensor_settings(s, dt, shp, tensor_params, name)  # checked above
    nlevels = s.levels or 1
    if whole:  # the same array at every level; the later pieces must be empty
        for m in range(1, len(pieces)):
            if m >= nlevels:
                raise FormatError(
                    f"tensor {name!r}: {m + 1} pieces, the model has {nlevels} levels"
                )
            if len(memoryview(pieces[m])):
                raise FormatError(
                    f"tensor {name!r} level {m}: a whole tensor has data only in level 0"
                )
            yield prior
        return
    if not _c():
        for m in range(1, len(pieces)):
            prior = decode_tensor(
                params, dtype_name, shape, tensor_params, pieces[: m + 1], prior, name
            )
            yield prior
        return
    geo = _geometry(dt, s)
    numel = math.prod(shp)
    ngroups = -(-numel // gsize)
    cache: list[Array] = []
    for m in range(1, len(pieces)):
        if m >= nlevels:
            raise FormatError(f"tensor {name!r}: {m + 1} pieces, the model has {nlevels} levels")
        what = f"tensor {name!r} level {m}"
        prior = _next_level(geo, ks, gsize, ngroups, numel, shp, pieces, m, prior, what, cache)
        yield prior


def _scratch_c(
    geo: Geometry,
    ks: list[int],
    gsize: int,
    ngroups: int,
    numel: int,
    shape: tuple[int, ...],
    pieces: Sequence[Buffer],
    n: int,
    name: str,
) -> Array | None:
    """Levels 0..n from scratch by the C kernels in one pass (the same checks as level by
    level); None when the streams are too large for that (see native.levels)."""
    w0 = f"tensor {name!r} level 0"
    first = _substeps(0, ks[0])
    parts = _parts(pieces[0], 1 + len(first), w0)
    scale_bytes = native.scales(geo, parts[0], ngroups, w0)
    if len(split_u32(parts[1], w0)[1]):
        raise FormatError(f"{w0}: junk after level 0's symbols")
    steps: list[native.Step] = [
        (b, b - a, i == 0, part, w0)
        for i, ((a, b), part) in enumerate(zip(first, parts[1:], strict=True))
    ]
    rem: tuple[Buffer, str] | None = None
    for m in range(1, n + 1):
        wm = f"tensor {name!r} level {m}"
        if m == len(ks):
            (part,) = _parts(pieces[m], 1, wm)
            rem = (part, wm)
            continue
        sub = _substeps(ks[m - 1], ks[m])
        if not sub and len(memoryview(pieces[m])):
            raise FormatError(f"{wm}: data in a level that does not refine the tensor")
        level = _parts(pieces[m], len(sub), wm) if sub else []
        steps += [
            (b, b - a, i == 0, p, wm) for i, ((a, b), p) in enumerate(zip(sub, level, strict=True))
        ]
    out = np.empty(ngroups * gsize, geo.word)
    if not native.levels(geo, out, numel, scale_bytes, gsize, steps, rem):
        return None
    return out[:numel].view(geo.dt.storage).reshape(shape)


def _first_c(
    geo: Geometry, ks: list[int], gsize: int, ngroups: int, piece: Buffer, what: str
) -> Array:
    """Level 0 by the C kernels: flat words, padded to whole groups."""
    steps = _substeps(0, ks[0])
    parts = _parts(piece, 1 + len(steps), what)
    scale_bytes = native.scales(geo, parts[0], ngroups, what)
    if len(split_u32(parts[1], what)[1]):
        raise FormatError(f"{what}: junk after level 0's symbols")
    out = np.empty(ngroups * gsize, geo.word)
    native.plane_steps(geo, None, 0, out, scale_bytes, gsize, steps, parts[1:], what)
    return out


def _first(
    geo: Geometry, ks: list[int], gsize: int, ngroups: int, piece: Buffer, what: str
) -> tuple[Array, Array]:
    """(group exponents, level-0 values as float32, padded (ngroups, gsize))."""
    steps = _substeps(0, ks[0])
    parts = _parts(piece, 1 + len(steps), what)
    exps = decode_scales(geo, parts[0], ngroups, what)
    (a, b), *more = steps
    frame, refine = split_u32(parts[1], what)
    if len(refine):
        raise FormatError(f"{what}: junk after level 0's symbols")
    v = decode_first_level(geo, exps, gsize, b, frame, what)
    for (a, b), part in zip(more, parts[2:], strict=True):
        v = decode_plane_level(geo, v, exps, a, b, part, what)
    return exps, v


def _next_level(
    geo: Geometry,
    ks: list[int],
    gsize: int,
    ngroups: int,
    numel: int,
    shape: tuple[int, ...],
    pieces: Sequence[Buffer],
    n: int,
    prior: Array,
    what: str,
    scale_cache: list[Array] | None = None,
) -> Array:
    """Level ``n`` from the prior (level n - 1). ``scale_cache``: level 0's scales as the C
    kernels take them, kept across the levels of one tensor (empty until first needed)."""
    piece = pieces[n]
    last = n == len(ks)
    k0 = ks[n - 1] if not last else ks[-1]
    k1 = ks[n] if not last else ks[-1]
    if not last and k1 == k0:
        if len(memoryview(piece)):
            raise FormatError(f"{what}: data in a level that does not refine the tensor")
        return prior
    scales, _ = split_u32(pieces[0], f"{what} (level 0)")
    if _c():
        if scale_cache:
            scale_bytes = scale_cache[0]
        else:
            scale_bytes = native.scales(geo, scales, ngroups, f"{what} (level 0)")
            if scale_cache is not None:
                scale_cache.append(scale_bytes)
        pw = np.ascontiguousarray(prior).reshape(-1).view(geo.word)
        out = np.empty(ngroups * gsize, geo.word)
        if last:
            (part,) = _parts(piece, 1, what)
            native.remainder(geo, pw, out, part, what)
        else:
            steps = _substeps(k0, k1)
            parts = _parts(piece, len(steps), what)
            native.plane_steps(geo, pw, numel, out, scale_bytes, gsize, steps, parts, what)
        return out[:numel].view(geo.dt.storage).reshape(shape)
    exps = decode_scales(geo, scales, ngroups, f"{what} (level 0)")
    words = padded(np.ascontiguousarray(prior).reshape(-1).view(geo.word), ngroups * gsize)
    if last:
        (part,) = _parts(piece, 1, what)
        exact = decode_remainder(geo, words, part, what)
        return exact[:numel].view(geo.dt.storage).reshape(shape)
    v = to_f32(geo, words).reshape(ngroups, gsize)
    steps = _substeps(k0, k1)
    for (a, b), part in zip(steps, _parts(piece, len(steps), what), strict=True):
        v = decode_plane_level(geo, v, exps, a, b, part, what)
    return from_f32(geo, v.reshape(-1)[:numel]).reshape(shape)
