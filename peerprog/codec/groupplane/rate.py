"""groupplane's plan: a cheap look at every tensor (:func:`analyse`), then the rate allocation
over all of them (:func:`plan`), which gives the codec params to publish (``levels``) and
each tensor's params (its group size and plane ladder, or whole).

Rate allocation: every tensor starts with 1 plane; then plane steps are taken greedily by
estimated error reduction per byte, the error of a tensor being its squared error over its
squared norm (``weighting`` ``"relative"``: each tensor's signal-to-noise counts alike) or
its plain squared error (``"absolute"``); with the publisher's sensitivity
(:mod:`~peerprog.codec.sensitivity`) each weight's squared error is weighted by it and the
sums compare as they are. :func:`analyse` estimates the bytes and errors from a sample of
groups. A tensor planed by row classes (:mod:`.classes`) comes as one item per class, each
allocated as a tensor of its own. Levels close when the estimated cumulative size passes each
of ``targets_mbpw`` (milli-bits per weight, over all elements); then one level takes every
tensor to its maximum planes, and the remainder makes it exact. No level is empty.

Choices, measured on EfficientNet-Lite1 and a byte-level transformer (fp32 and bf16; tables
and commands in ``bench/CODEC_NOTES.md``): G = 64; power-of-two scales (as good per bit as
real-valued fp16 scales, and they make every intermediate value exact); zstd as the entropy
coder (1–4% above the order-0 entropy, ~10× faster to decode than an exact ANS coder).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from peerprog.codec.base import RawTensor
from peerprog.codec.dtypes import dtype
from peerprog.codec.groupplane.format import Array, geometry, padded, to_f32
from peerprog.codec.groupplane.params import (
    default_params,
    flat_array,
    group_size,
    is_whole,
    settings,
)
from peerprog.codec.layout import ParamValue
from peerprog.codec.sensitivity import matrix_shape

SAMPLE_ELEMENTS = 1 << 16
"""Weights :func:`analyse` looks at per tensor (whole groups spread over the tensor)."""


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
    row_class: int = -1  # of a tensor planed by row classes (:mod:`.classes`): this class
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
    flat = flat_array(name, dt, tensor)
    if is_whole(dt, tensor.array.shape, s):
        return TensorStats(name, dt.name, flat.size, True, whole_bytes=flat.size * dt.itemsize)
    geo = geometry(dt, s.max_planes)
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
    planes = [1] * len(prog)
    kmax = [len(t.plane_bytes) - 1 for t in prog]
    schedule: list[list[int]] = []  # per level, planes per progressive item (in order)

    def weight(t: TensorStats) -> float:
        if t.weighted:  # the publisher's sensitivity: errors compare as they are
            return 1.0
        if s.weighting == "relative":
            return 1.0 / t.sq_norm if t.sq_norm > 0 else 0.0
        return 1.0

    heap: list[tuple[float, int, int]] = []

    def push(i: int) -> None:
        t = prog[i]
        k = planes[i]
        if k >= kmax[i]:
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
            planes[i] = k + 1
            cum += t.plane_bytes[k + 1] - t.plane_bytes[k]
            push(i)
        if not schedule or planes != schedule[-1]:
            schedule.append(list(planes))
            est.append(round(cum))
        if not heap:
            break
    if not schedule:
        schedule.append(list(planes))
        est.append(round(cum))
    if kmax != schedule[-1]:
        schedule.append(list(kmax))
        est.append(round(base + sum(t.plane_bytes[-1] - t.plane_bytes[1] for t in prog)))
    if not prog:
        schedule = []
    nlevels = len(schedule) + 1 if prog else 1
    tensors: dict[str, dict[str, ParamValue]] = {}
    for t in stats:
        if t.whole:
            tensors[t.name] = {"whole": True}
    for j, t in enumerate(prog):
        ladder: list[ParamValue] = [row[j] for row in schedule]
        if t.row_class < 0:
            tensors[t.name] = {"group": int(t.extra["group"]), "planes": ladder}
            continue
        entry = tensors.setdefault(t.name, {"group": int(t.extra["group"]), "rows": []})
        rows = entry["rows"]
        assert isinstance(rows, list) and len(rows) == t.row_class  # classes in order
        rows.append(ladder)
    out = default_params()
    out.update({k: v for k, v in (params or {}).items() if k != "levels"})
    out["levels"] = nlevels
    est.append(-1)  # the exact level: not estimated
    return Plan(out, tensors, tuple(est))
