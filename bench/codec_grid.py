"""A data-free study of a finer quantisation grid for ``groupplane``: a simulation of the
quantiser in numpy (float64), not the codec's byte format, on EfficientNet-Lite1 and the
byte-level LM (fp32 and bf16), scored with the full quantised model.

Per tensor (the planed ones as ``groupplane`` picks them; the others stay exact and count
their raw bytes / 3, as :func:`groupplane.plan` does) the weights are quantised with k = 1..8
planes (bf16: 7) under each grid variant, each tensor's squared error and estimated bits are
measured on :func:`groupplane.analyse`'s sample of groups, planes are allocated by
``groupplane.plan``'s greedy rule (relative squared error per estimated byte) at 2.5 .. 5
bits/weight, and the quantised model is scored. Bits are an order-0 estimate of what would
be sent: per plane the significance entropy of the weights still zero, a sign per new
non-zero weight, a raw refinement bit for the others (as ``analyse`` counts them); per group
the power-of-two exponent at 0.4 bytes (the codec's figure for zstd; the measured zstd size
of the exponent bytes is printed beside it) plus whatever a variant adds.

Variants (combinable):

* ``pow2`` — the codec: scale 2**E, the smallest power of two above the group's max |x|;
  step 2**E / 2**k; the midpoint ``(q + 1/2) * step`` (0 for q = 0).
* ``sN`` — a scale with N more mantissa bits: ``2**(E-1) * m / 2**N``, m in 2**N .. 2**(N+1),
  the smallest such scale ≥ the group's max |x| (q clamped to 2**k - 1); N raw bits a group.
* ``cm`` — reconstruction at the conditional mean: per tensor, per plane count and per
  magnitude bucket (q = 1, 2, 3, ≥ 4) the mean offset of |x|/step - q in its interval,
  sent as one byte per bucket: 4 bytes per tensor per plane count (counted).
* ``rot`` — an integer rotation: each group's values as integers in fixed point (scale
  2**(E - P), P = 48 for fp32, 32 for bf16, E the group's exponent), fixed ±1 signs, then a
  Walsh–Hadamard transform over blocks of B (the largest power of two dividing the group
  size, at most 64) made of 45° lifting rotations (three integer lifting steps each, so
  exactly invertible and orthonormal up to rounding), quantised in the rotated domain with
  the variant's scales and grid, rounded back to the fixed point, inverse-transformed. Costs
  the rotated group's exponent as an offset from E (its order-0 entropy, per group) on top
  of E. The lossless effect is measured separately: the estimated bits of the rotated
  against the unrotated integer words, coded plane by plane to the last bit.

Some variants are also scored on pow2's allocation ("(pow2's planes)": their grid and bits,
pow2's planes per tensor), which separates the grid from the change of allocation that its
estimates bring. The LM is scored at 11 targets (2.5 .. 5 by 0.25), EfficientNet (17-35 s a
scoring on this machine) at 3, 4 and 5 and for five of the variants; every target and
variant gets the data-free figures (the plan's objective, and the bits/weight each variant
needs per tensor for pow2's error after k planes).

Reference: symmetric round-to-nearest with an fp16 absmax scale per group (4-bit g128, 3-bit
and 5-bit g64, bits counted as bits + 16/g, groups as ``groupplane.group_size``; 4-bit g128
and 3-bit g64 also after a real Hadamard rotation), on the same tensors. Check: the codec's
own plan (``analyse`` + ``plan``, default params) decoded by this simulation (bit-identical
to the codec's levels, the midpoints being exact) against the figures of BENCHMARKS.md.

    nice -n 10 python -m bench.codec_grid            # JSON on stdout
    nice -n 10 python -m bench.codec_grid --write    # and the section of bench/CODEC_NOTES.md
    nice -n 10 python -m bench.codec_grid --data-free --models effnet   # no scoring, ~10 s
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench import models
from bench.report import machine, table, write_section
from peerprog.codec import groupplane as gp
from peerprog.codec import zstd
from peerprog.codec.base import RawTensor
from peerprog.codec.dtypes import DType
from peerprog.codec.dtypes import dtype as dtype_of
from peerprog.codec.groupplane.format import geometry

NOTES = Path(__file__).resolve().parent / "CODEC_NOTES.md"
F64 = np.ndarray[Any, np.dtype[np.float64]]
I64 = np.ndarray[Any, np.dtype[np.int64]]
Arr = np.ndarray[Any, Any]

TARGETS = (2.5, 3.0, 3.5, 4.0, 4.5, 5.0)
MAX_K = 8
EXP_BYTES = 0.4  # a power-of-two exponent per group after zstd (groupplane.analyse's figure)
CM_BUCKETS = 4  # q = 1, 2, 3, >= 4
CM_BYTES = CM_BUCKETS  # one byte per bucket, per tensor and plane count
LOSSLESS_SAMPLE = 1 << 14
# 45° rotation by three lifting steps: [[c, -s], [s, c]] = L(p) U(u) L(p)
LIFT_P = -math.tan(math.pi / 8)
LIFT_U = math.sin(math.pi / 4)
SIGNS = np.where(np.random.default_rng(20261201).random(64) < 0.5, -1, 1).astype(np.int64)
RTN = ((4, 128, False), (3, 64, False), (5, 64, False), (4, 128, True), (3, 64, True))
# Which targets are scored (an EfficientNet scoring is ~5-30 s here, an LM one ~1-2 s; every
# target gets the data-free figures), and which codec levels the check scores (EfficientNet:
# levels 1-3 are the allocations of targets 3-5, scored anyway).
SCORED: dict[str, tuple[float, ...]] = {
    "lm": tuple(2.5 + 0.25 * i for i in range(11)),
    "effnet": (3.0, 4.0, 5.0),
}
# EfficientNet: the variants scored (the others get the data-free figures only).
SCORED_VARIANTS: dict[str, tuple[str, ...] | None] = {
    "lm": None,
    "effnet": ("pow2", "s2", "pow2+cm", "rot+pow2", "s2+cm"),
}
# The variants also scored on pow2's allocation (their grid, pow2's planes per tensor): the
# grid's effect without the change of allocation that its different estimates bring.
FIXED_PLANES: dict[str, tuple[str, ...]] = {
    "lm": ("s2", "s3", "rot+pow2"),
    "effnet": ("s2",),
}
CHECK_LEVELS: dict[str, tuple[int, ...]] = {"lm": (0, 1, 2, 3, 4), "effnet": (1, 2, 3, 4)}
# The groupplane rows of BENCHMARKS.md ("Codec on real models", commit 82c8326):
# (level, measured bits/weight, top-1 agreement, logit cosine) for levels 0-4.
REFERENCE: dict[tuple[str, str], list[tuple[int, float, float, float]]] = {
    ("effnet", "float32"): [
        (0, 2.39, 0.0, 0.01077),
        (1, 3.41, 0.2578, 0.40465),
        (2, 4.38, 0.6172, 0.80652),
        (3, 5.38, 0.7422, 0.95474),
        (4, 6.45, 0.8750, 0.99077),
    ],
    ("effnet", "bfloat16"): [
        (0, 2.16, 0.0, 0.01744),
        (1, 3.14, 0.4531, 0.49403),
        (2, 4.17, 0.5391, 0.82050),
        (3, 5.16, 0.7656, 0.95742),
        (4, 6.16, 0.8672, 0.98895),
    ],
    ("lm", "float32"): [
        (0, 2.12, 0.6766, 0.99767),
        (1, 3.09, 0.8910, 0.99941),
        (2, 4.07, 0.9531, 0.99989),
        (3, 5.09, 0.9753, 0.99997),
        (4, 6.14, 0.9893, 0.99999),
    ],
    ("lm", "bfloat16"): [
        (0, 2.06, 0.6779, 0.99766),
        (1, 3.02, 0.8935, 0.99941),
        (2, 4.09, 0.9539, 0.99989),
        (3, 5.02, 0.9746, 0.99998),
        (4, 6.07, 0.9880, 0.99999),
    ],
}


@dataclass(frozen=True)
class Variant:
    """A quantisation grid: extra scale mantissa bits (0: power of two), conditional-mean
    reconstruction, integer rotation."""

    scale_bits: int = 0
    cmean: bool = False
    rotate: bool = False

    @property
    def name(self) -> str:
        parts = ["rot"] if self.rotate else []
        parts.append(f"s{self.scale_bits}" if self.scale_bits else "pow2")
        if self.cmean:
            parts.append("cm")
        return "+".join(parts)

    @staticmethod
    def parse(text: str) -> Variant:
        parts = text.split("+")
        s = next((int(p[1:]) for p in parts if p[:1] == "s" and p[1:].isdigit()), 0)
        known = {"rot", "cm", "pow2", f"s{s}"}
        if any(p not in known for p in parts):
            raise SystemExit(f"unknown variant {text!r}")
        return Variant(s, "cm" in parts, "rot" in parts)


DEFAULT_VARIANTS = "pow2,s1,s2,s3,pow2+cm,rot+pow2,s2+cm,rot+s2"


# ---------------------------------------------------------------------------- rotation


def _round(y: F64) -> I64:
    out: I64 = np.floor(y + 0.5).astype(np.int64)
    return out


def lift_forward(w: I64) -> I64:
    """The integer rotation of the last axis (a power of two ≤ 64): fixed signs, then the
    Walsh–Hadamard butterflies, each a 45° rotation by three integer lifting steps."""
    b = w.shape[-1]
    x = (w * SIGNS[:b]).astype(np.int64)
    h = 1
    while h < b:
        v = x.reshape(*x.shape[:-1], b // (2 * h), 2, h)
        lo, hi = v[..., 0, :].copy(), v[..., 1, :].copy()
        lo += _round(LIFT_P * hi.astype(np.float64))
        hi += _round(LIFT_U * lo.astype(np.float64))
        lo += _round(LIFT_P * hi.astype(np.float64))
        x = np.stack([lo, hi], axis=-2).reshape(w.shape)
        h *= 2
    return x


def lift_inverse(r: I64) -> I64:
    """The exact inverse of :func:`lift_forward`."""
    b = r.shape[-1]
    x = r.astype(np.int64)
    h = b // 2
    while h >= 1:
        v = x.reshape(*x.shape[:-1], b // (2 * h), 2, h)
        lo, hi = v[..., 0, :].copy(), v[..., 1, :].copy()
        lo -= _round(LIFT_P * hi.astype(np.float64))
        hi -= _round(LIFT_U * lo.astype(np.float64))
        lo -= _round(LIFT_P * hi.astype(np.float64))
        x = np.stack([lo, hi], axis=-2).reshape(r.shape)
        h //= 2
    out: I64 = x * SIGNS[:b]
    return out


def hadamard(b: int) -> F64:
    """The real orthonormal matrix that :func:`lift_forward` approximates (rows: outputs)."""
    m = np.eye(b)
    cols = [lift_forward_real(m[i]) for i in range(b)]
    return np.stack(cols, axis=1)


def lift_forward_real(w: F64) -> F64:
    b = w.shape[-1]
    x = w * SIGNS[:b]
    c = s = math.sqrt(0.5)
    h = 1
    while h < b:
        v = x.reshape(*x.shape[:-1], b // (2 * h), 2, h)
        lo, hi = v[..., 0, :], v[..., 1, :]
        x = np.stack([c * lo - s * hi, s * lo + c * hi], axis=-2).reshape(w.shape)
        h *= 2
    return x


def lift_inverse_real(r: F64) -> F64:
    """The inverse (transpose) of :func:`lift_forward_real`."""
    b = r.shape[-1]
    x = r
    c = s = math.sqrt(0.5)
    h = b // 2
    while h >= 1:
        v = x.reshape(*x.shape[:-1], b // (2 * h), 2, h)
        lo, hi = v[..., 0, :], v[..., 1, :]
        x = np.stack([c * lo + s * hi, -s * lo + c * hi], axis=-2).reshape(r.shape)
        h //= 2
    out: F64 = x * SIGNS[:b]
    return out


def lift_check() -> dict[str, Any]:
    """Exact inversion on random int32 rows, and the distance to the real transform."""
    rng = np.random.default_rng(1)
    out: dict[str, Any] = {}
    for b in (2, 8, 64):
        w = rng.integers(-(2**31), 2**31, size=(4096, b), dtype=np.int64)
        r = lift_forward(w)
        back = lift_inverse(r)
        h = hadamard(b)
        ideal = w.astype(np.float64) @ h.T
        real = lift_forward_real(w.astype(np.float64))
        out[f"B={b}"] = {
            "hadamard": bool(np.allclose(np.abs(h), b**-0.5) and np.allclose(h @ h.T, np.eye(b))),
            "real_inverse_max_error": float(np.abs(lift_inverse_real(real) - w).max()),
            "rows": w.shape[0],
            "exact_inverse": bool(np.array_equal(back, w)),
            "max_abs_dev_from_orthonormal": float(np.abs(r - ideal).max()),
            "norm_ratio": float(np.linalg.norm(r.astype(np.float64)) / np.linalg.norm(w)),
        }
        if not out[f"B={b}"]["exact_inverse"]:
            raise AssertionError(f"integer lifting does not invert exactly (B={b})")
    return out


# ---------------------------------------------------------------------------- tensors


def _bitlen(q: Arr) -> Arr:
    return np.frexp(q.astype(np.float64))[1]


def _h(p: float) -> float:
    if p <= 0 or p >= 1:
        return 0.0
    return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def _entropy(values: Arr) -> float:
    """Order-0 entropy in bits of all the values together."""
    _, counts = np.unique(values, return_counts=True)
    p = counts / counts.sum()
    return float(-(counts * np.log2(p)).sum())


def round_to(dt: DType, v: F64) -> F64:
    """float64 values rounded to the dtype (bf16: round to nearest even), as float64."""
    f = v.astype(np.float32)
    if dt.name == "bfloat16":
        f = (models.bf16_bits(f).astype(np.uint32) << np.uint32(16)).view(np.float32)
    out: F64 = f.astype(np.float64)
    return out


def to_storage(dt: DType, v: F64, shape: tuple[int, ...]) -> RawTensor:
    f = v.astype(np.float32).reshape(shape)
    if dt.name == "bfloat16":
        return RawTensor("bfloat16", models.bf16_bits(f))
    return RawTensor(dt.name, f.astype(dt.storage))


@dataclass
class Planed:
    """A planed tensor: its groups (padded) and the sample of groups ``analyse`` takes."""

    name: str
    dt: DType
    shape: tuple[int, ...]
    numel: int
    group: int
    x: F64  # (ngroups, group), zero-padded
    sample: I64  # rows of x in the sample
    kmax: int
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def ngroups(self) -> int:
        return int(self.x.shape[0])

    @property
    def block(self) -> int:
        """The rotation block: the largest power of two dividing the group, at most 64."""
        return min(self.group & -self.group, 64)


def planed_tensors(model: models.Model) -> tuple[list[Planed], float, int]:
    """(planed tensors, bytes of the whole ones as ``plan`` counts them, total weights)."""
    s = gp.settings(None)
    out, whole = [], 0.0
    for name, t in model.tensors.items():
        dt = dtype_of(t.dtype)
        shape = tuple(int(d) for d in t.array.shape)
        numel = int(t.array.size)
        if gp.is_whole(dt, shape, s):
            whole += numel * dt.itemsize / 3
            continue
        g = gp.group_size(shape, s.group)
        ng = -(-numel // g)
        flat = models.to_float32(t).reshape(-1).astype(np.float64)
        x = np.zeros(ng * g)
        x[:numel] = np.where(np.isfinite(flat), flat, 0)
        take = max(1, min(ng, gp.SAMPLE_ELEMENTS // g))
        rows = np.linspace(0, ng - 1, take).astype(np.int64) if take < ng else np.arange(ng)
        kmax = min(MAX_K, dt.mantissa_bits)
        out.append(Planed(name, dt, shape, numel, g, x.reshape(ng, g), rows, kmax))
    return out, whole, model.numel


# ---------------------------------------------------------------------------- quantiser


@dataclass
class Domain:
    """What is quantised (the values, or their rotation) and how to come back."""

    values: F64  # (n, g) values to quantise
    back: Callable[[F64], F64]  # quantised values → the tensor's values (n, g)
    extra_bits: float  # per group, beyond the exponent: the rotated exponent's offset


def domain(t: Planed, rows: I64 | None, rotate: bool) -> Domain:
    x = t.x if rows is None else t.x[rows]
    if not rotate or t.block < 2:
        return Domain(x, lambda v: v, 0.0)
    geo = geometry(t.dt, gp.settings(None).max_planes)
    p = 48 if t.dt.name == "float32" else 32
    e = _exponents(np.abs(x).max(axis=1), geo.e_floor, geo.e_ceil)
    unit = np.ldexp(1.0, e - p)[:, None]  # the fixed point's lsb per group
    w = np.rint(x / unit).astype(np.int64)
    b = t.block
    r = lift_forward(w.reshape(x.shape[0], -1, b)).reshape(x.shape)
    rv: F64 = r.astype(np.float64) * unit
    er = _exponents(np.abs(rv).max(axis=1), geo.e_floor, geo.e_ceil)
    offset_bits = _entropy(er - e) / max(len(e), 1)

    def back(v: F64) -> F64:
        wq = np.rint(v / unit).astype(np.int64)
        w_back = lift_inverse(wq.reshape(v.shape[0], -1, b)).reshape(v.shape)
        out: F64 = w_back.astype(np.float64) * unit
        return out

    return Domain(rv, back, offset_bits)


def _exponents(amax: F64, e_floor: int, e_ceil: int) -> I64:
    """The codec's group exponent: the smallest E with max|x| < 2**E, clamped."""
    _, e = np.frexp(amax)
    out: I64 = np.clip(np.where(amax > 0, e, e_floor), e_floor, e_ceil).astype(np.int64)
    return out


def group_scales(t: Planed, v: F64, scale_bits: int) -> F64:
    """Per group: 2**E (power of two), or the smallest 2**(E-1) * m / 2**s ≥ max|v|."""
    geo = geometry(t.dt, gp.settings(None).max_planes)
    amax = np.abs(v).max(axis=1)
    e = _exponents(amax, geo.e_floor, geo.e_ceil)
    if not scale_bits:
        out: F64 = np.ldexp(1.0, e)
        return out
    unit = np.ldexp(1.0, e - 1 - scale_bits)
    m = np.maximum(np.ceil(amax / unit), 1.0)
    return np.where(amax > 0, m * unit, np.ldexp(1.0, e))


@dataclass
class Quantiser:
    """A variant applied to one tensor's values (the sample or the whole tensor)."""

    t: Planed
    var: Variant
    dom: Domain
    scale: F64  # per group
    kmax: int
    qk: I64  # magnitudes after kmax planes (n, g)
    u: F64  # |v| / scale

    @classmethod
    def make(cls, t: Planed, var: Variant, rows: I64 | None, kmax: int = 0) -> Quantiser:
        dom = domain(t, rows, var.rotate)
        scale = group_scales(t, dom.values, var.scale_bits)
        u = np.abs(dom.values) / scale[:, None]
        kmax = kmax or t.kmax
        top = (1 << kmax) - 1
        qk = np.minimum(np.floor(u * (1 << kmax)), top).astype(np.int64)
        return cls(t, var, dom, scale, kmax, qk, u)

    def offsets(self, k: int) -> F64:
        """Reconstruction offsets in the interval for buckets q = 1, 2, 3, ≥ 4 (index 0
        unused): 1/2, or the bucket's mean quantised to a byte."""
        c = np.full(CM_BUCKETS + 1, 0.5)
        if not self.var.cmean:
            return c
        q = self.qk >> (self.kmax - k)
        frac = np.minimum(self.u * (1 << k) - q, 1.0)
        bucket = np.minimum(q, CM_BUCKETS)
        sums = np.bincount(bucket.reshape(-1), frac.reshape(-1), CM_BUCKETS + 1)
        counts = np.bincount(bucket.reshape(-1), minlength=CM_BUCKETS + 1)
        mean = np.where(counts > 0, sums / np.maximum(counts, 1), 0.5)
        out: F64 = np.minimum(np.rint(mean * 256), 255) / 256
        return out

    def values(self, k: int, offsets: F64 | None = None) -> F64:
        """The tensor's values (n, g) after k planes, rounded to its dtype."""
        q = self.qk >> (self.kmax - k)
        c = self.offsets(k) if offsets is None else offsets
        step = self.scale[:, None] / (1 << k)
        mag = np.where(q > 0, (q + c[np.minimum(q, CM_BUCKETS)]) * step, 0.0)
        v = self.dom.back(np.copysign(mag, self.dom.values))
        return round_to(self.t.dt, v)

    def plane_bits(self) -> list[float]:
        """Cumulative estimated bits of planes 1..k (index k), as ``analyse`` counts them."""
        kmax = self.kmax
        lengths = np.bincount(_bitlen(self.qk).reshape(-1), minlength=kmax + 2)
        above = np.cumsum(lengths[::-1])[::-1]
        bits, out = 0.0, [0.0]
        n = self.qk.size
        for k in range(1, kmax + 1):
            n_sig = int(above[kmax - k + 2])
            n_new = int(lengths[kmax - k + 1])
            n_insig = n - n_sig
            bits += n_sig
            if n_insig:
                bits += n_insig * _h(n_new / n_insig) + n_new
            out.append(bits)
        return out


@dataclass
class Stats:
    name: str
    numel: int
    base_bytes: float  # scales, counted once
    plane_bytes: list[float]  # cumulative, index k (0: 0)
    sq_error: list[float]  # index k (0: the squared norm)


def tensor_stats(t: Planed, var: Variant) -> Stats:
    """Estimated bytes and squared errors by planes on ``analyse``'s sample, scaled up."""
    qz = Quantiser.make(t, var, t.sample)
    x = t.x[t.sample]
    scale = t.ngroups / len(t.sample)
    bits = qz.plane_bits()
    cm_bytes = CM_BYTES if var.cmean else 0
    pb = [b / 8 * scale + cm_bytes * k for k, b in enumerate(bits)]
    errs = [float((x * x).sum()) * scale]
    for k in range(1, t.kmax + 1):
        d = qz.values(k) - x
        errs.append(float((d * d).sum()) * scale)
    per_group = EXP_BYTES * 8 + var.scale_bits + qz.dom.extra_bits
    return Stats(t.name, t.numel, t.ngroups * per_group / 8, pb, errs)


def allocate(
    stats: Sequence[Stats], whole_bytes: float, total: int, targets: Sequence[float]
) -> list[tuple[float, dict[str, int]]]:
    """``groupplane.plan``'s greedy rule (relative weighting): every tensor starts at one
    plane, then plane steps by error reduction over its norm per byte until the estimated
    size passes each target. Returns (estimated bytes, planes by tensor) per target."""
    import heapq

    planes = {t.name: 1 for t in stats}
    cum = whole_bytes + sum(t.base_bytes + t.plane_bytes[1] for t in stats)
    heap: list[tuple[float, int, int]] = []

    def push(i: int) -> None:
        t = stats[i]
        k = planes[t.name]
        if k >= len(t.plane_bytes) - 1:
            return
        cost = max(t.plane_bytes[k + 1] - t.plane_bytes[k], 1e-9)
        w = 1.0 / t.sq_error[0] if t.sq_error[0] > 0 else 0.0
        heapq.heappush(heap, (-(t.sq_error[k] - t.sq_error[k + 1]) * w / cost, i, k))

    for i in range(len(stats)):
        push(i)
    out = []
    for target in targets:
        budget = target / 8 * total
        while heap and cum < budget:
            _, i, k = heapq.heappop(heap)
            t = stats[i]
            planes[t.name] = k + 1
            cum += t.plane_bytes[k + 1] - t.plane_bytes[k]
            push(i)
        out.append((cum, dict(planes)))
    return out


def approx_model(
    model: models.Model, tensors: Sequence[Planed], var: Variant, planes: Mapping[str, int]
) -> dict[str, RawTensor]:
    """The model with every planed tensor quantised (whole tensor, offsets of the whole
    tensor) at its planes."""
    out = dict(model.tensors)
    for t in tensors:
        k = planes[t.name]
        kmax = max(k, t.kmax)
        key = f"{var.name}:{kmax}"
        qz = t.cache.get(key)
        if qz is None:
            t.cache.clear()  # one quantiser of the whole tensor at a time
            qz = Quantiser.make(t, var, None, kmax)
            t.cache[key] = qz
        v = qz.values(k).reshape(-1)[: t.numel]
        out[t.name] = to_storage(t.dt, v, t.shape)
    return out


# ---------------------------------------------------------------------------- reference


def rtn_model(
    model: models.Model,
    tensors: Sequence[Planed],
    whole_bytes: float,
    bits: int,
    group: int,
    rotate: bool = False,
) -> tuple[dict[str, RawTensor], float]:
    """Symmetric round-to-nearest, fp16 absmax scale per group, optionally in the rotated
    domain (the real orthonormal transform over blocks of the largest power of two dividing
    the group, at most 64: a lossy reference needs no integer lifting); (model, bits/weight)."""
    out = dict(model.tensors)
    nbits = whole_bytes * 8
    top = (1 << (bits - 1)) - 1
    for t in tensors:
        g = gp.group_size(t.shape, group)
        ng = -(-t.numel // g)
        flat = np.zeros(ng * g)
        flat[: t.numel] = t.x.reshape(-1)[: t.numel]
        x: F64 = flat.reshape(ng, g)
        b = min(g & -g, 64) if rotate else 1
        if b > 1:
            x = lift_forward_real(x.reshape(ng, -1, b)).reshape(ng, g)
        scale = (np.abs(x).max(axis=1) / top).astype(np.float16).astype(np.float64)
        scale = np.where(scale > 0, scale, 1.0)[:, None]
        v = np.clip(np.rint(x / scale), -top, top) * scale
        if b > 1:
            v = lift_inverse_real(v.reshape(ng, -1, b)).reshape(ng, g)
        out[t.name] = to_storage(t.dt, round_to(t.dt, v).reshape(-1)[: t.numel], t.shape)
        nbits += t.numel * bits + ng * 16
    return out, nbits / model.numel


# ---------------------------------------------------------------------------- lossless


def plane_entropy_bits(m: I64) -> float:
    """Estimated bits to send integer magnitudes ``m`` (n, g) exactly, plane by plane from
    each group's top bit to bit 0: significance (order-0 per plane), a sign at
    significance, refinement bits (order-0 per plane); the group's top bit position is not
    counted (the exponent)."""
    mu = m.astype(np.uint64)
    top = _bitlen(m.max(axis=1))[:, None]  # planes per group
    width = int(top.max()) if top.size else 0
    bits = 0.0
    for j in range(1, width + 1):
        valid = top >= j
        shift = np.maximum(top - j, 0).astype(np.uint64)
        bit = ((mu >> shift) & np.uint64(1)).astype(bool) & valid
        was = (mu >> (shift + np.uint64(1))) != 0
        insig = valid & ~was
        sig = valid & was
        n_ins, n_sig = int(insig.sum()), int(sig.sum())
        new = int((bit & insig).sum())
        if n_ins:
            bits += n_ins * _h(new / n_ins) + new
        if n_sig:
            bits += n_sig * _h(int((bit & sig).sum()) / n_sig)
    return bits


def lossless(tensors: Sequence[Planed]) -> dict[str, Any]:
    """Estimated exact bits of the fixed-point integer words, unrotated and rotated, on a
    sample of groups of the rotated tensors; and how many weights the fixed point holds
    exactly."""
    unrot = rot = 0.0
    n = inexact = 0
    rotated_weights = sum(t.numel for t in tensors if t.block >= 2)
    for t in tensors:
        if t.block < 2:
            continue
        take = max(1, min(t.ngroups, LOSSLESS_SAMPLE // t.group))
        rows = np.linspace(0, t.ngroups - 1, take).astype(np.int64)
        geo = geometry(t.dt, gp.settings(None).max_planes)
        x = t.x[rows]
        p = 48 if t.dt.name == "float32" else 32
        e = _exponents(np.abs(x).max(axis=1), geo.e_floor, geo.e_ceil)
        unit = np.ldexp(1.0, e - p)[:, None]
        w = np.rint(x / unit).astype(np.int64)
        inexact += int((w * unit != x).sum())
        r = lift_forward(w.reshape(take, -1, t.block)).reshape(x.shape)
        scale = t.ngroups / take
        unrot += plane_entropy_bits(np.abs(w)) * scale
        rot += plane_entropy_bits(np.abs(r)) * scale
        n += x.size
    return {
        "rotated_weights": rotated_weights,
        "unrotated_bpw": unrot / max(rotated_weights, 1),
        "rotated_bpw": rot / max(rotated_weights, 1),
        "sampled_weights": n,
        "inexact_in_fixed_point": inexact,
    }


# ---------------------------------------------------------------------------- per model


class Scorer:
    """The model's scorer, remembering the score of each (variant, allocation)."""

    def __init__(self, model: models.Model, tensors: Sequence[Planed]) -> None:
        self.model, self.tensors = model, tensors
        self.memo: dict[tuple[str, tuple[int, ...]], dict[str, float]] = {}
        self.calls = 0

    def __call__(self, var: Variant, planes: Mapping[str, int]) -> dict[str, float]:
        key = (var.name, tuple(planes[t.name] for t in self.tensors))
        hit = self.memo.get(key)
        if hit is None:
            hit = self.raw(approx_model(self.model, self.tensors, var, planes))
            self.memo[key] = hit
        return hit

    def raw(self, approx: Mapping[str, RawTensor]) -> dict[str, float]:
        self.calls += 1
        return {k: round(v, 6) for k, v in self.model.score(approx).items()}


def check_codec_plan(
    model: models.Model,
    tensors: Sequence[Planed],
    score: Scorer,
    ref: list[tuple[int, float, float, float]],
    levels: Sequence[int],
) -> list[dict[str, Any]]:
    """The codec's own plan (default params) decoded by this simulation, scored, beside
    BENCHMARKS.md's rows."""
    stats = [gp.analyse(k, t) for k, t in model.tensors.items()]
    pl = gp.plan(None, stats)
    rows = []
    for level, bpw_ref, agree_ref, cos_ref in ref:
        if level not in levels:
            continue
        planes = {t.name: _planes(pl.tensors[t.name])[level] for t in tensors}
        rows.append(
            {
                "level": level,
                "estimated_bpw": pl.estimated_bytes[level] * 8 / model.numel,
                "benchmarks_bpw": bpw_ref,
                "benchmarks_agreement": agree_ref,
                "benchmarks_cosine": cos_ref,
                **score(Variant(), planes),
            }
        )
    return rows


def _planes(tp: Mapping[str, Any]) -> list[int]:
    """A planed tensor's ``planes`` in a plan's tensor params."""
    ks = tp["planes"]
    assert isinstance(ks, list)
    return [int(k) for k in ks]


def exponent_bytes(tensors: Sequence[Planed]) -> dict[str, float]:
    """The zstd size of the exponent bytes (as the codec's level 0 sends them) against
    0.4 bytes per group."""
    real = groups = 0
    for t in tensors:
        geo = geometry(t.dt, gp.settings(None).max_planes)
        e = _exponents(np.abs(t.x).max(axis=1), geo.e_floor, geo.e_ceil)
        real += len(zstd.compress((e - geo.e_floor).astype(np.uint8).tobytes()))
        groups += t.ngroups
    return {"groups": groups, "zstd_bytes_per_group": real / max(groups, 1)}


def whole_bytes_encoded(model: models.Model) -> int:
    """What the codec's level 0 takes for the tensors it sends whole (shuffled, zstd)."""
    s = gp.settings(None)
    params = {**gp.default_params(), "levels": 2}
    n = 0
    for name, t in model.tensors.items():
        if gp.is_whole(dtype_of(t.dtype), t.array.shape, s):
            _, pieces = gp.encode_tensor(t, {"whole": True}, params, name)
            n += len(pieces[0])
    return n


def objective(stats: Sequence[Stats], planes: Mapping[str, int]) -> dict[str, float]:
    """The plan's objective at an allocation: the mean over planed tensors of squared error
    over squared norm (dB), and the squared error over the squared norm of all of them."""
    rel = [s.sq_error[planes[s.name]] / s.sq_error[0] for s in stats if s.sq_error[0] > 0]
    err = sum(s.sq_error[planes[s.name]] for s in stats)
    norm = sum(s.sq_error[0] for s in stats)
    return {
        "mean_rel_err_db": 10 * math.log10(sum(rel) / len(rel)),
        "nmse_db": 10 * math.log10(err / norm),
    }


def equal_error_bits(
    base: Sequence[Stats], other: Sequence[Stats], ks: Sequence[int]
) -> dict[str, float]:
    """Per tensor, the bits/weight ``other`` needs for ``base``'s relative error after k
    planes (interpolated in log error along its own planes), minus base's bits; averaged
    over the tensors weighted by their weights. Negative: ``other`` is cheaper."""
    out = {}
    for k in ks:
        num = den = 0.0
        for b, o in zip(base, other, strict=True):
            if k >= len(b.plane_bytes) or b.sq_error[0] <= 0:
                continue
            bb = (b.base_bytes + b.plane_bytes[k]) * 8 / b.numel
            target = math.log(max(b.sq_error[k], 1e-300))
            pts = [
                ((o.base_bytes + o.plane_bytes[j]) * 8 / o.numel, math.log(max(e, 1e-300)))
                for j, e in enumerate(o.sq_error)
                if j >= 1
            ]
            at = None
            for (b0, e0), (b1, e1) in itertools.pairwise(pts):
                if e1 <= target <= e0 and e0 != e1:
                    at = b0 + (e0 - target) * (b1 - b0) / (e0 - e1)
                    break
            if at is not None:
                num += (at - bb) * b.numel
                den += b.numel
        out[str(k)] = num / den if den else float("nan")
    return out


def run_model(
    name: str,
    dt: str,
    variants: Sequence[Variant],
    scored: Sequence[float],
    check_levels: Sequence[int],
    log: Callable[[str], None],
    score_all: bool = False,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    model = models.LOADERS[name](dt)
    tensors, whole, total = planed_tensors(model)
    score = Scorer(model, tensors)
    out: dict[str, Any] = {
        "model": model.name,
        "key": name,
        "dtype": dt,
        "weights": total,
        "planed_weights": sum(t.numel for t in tensors),
        "whole_bytes_estimate": whole,
        "whole_bytes_encoded": whole_bytes_encoded(model),
        "rotated_block_weights": {
            str(b): sum(t.numel for t in tensors if t.block == b)
            for b in sorted({t.block for t in tensors})
        },
        "exponents": exponent_bytes(tensors),
        "scored_targets": list(scored),
    }
    if scored:
        full = model.score(model.tensors)
        if "perplexity" in full:
            out["full_perplexity"] = full["perplexity"]
    log(f"{name} {dt}: loaded in {time.perf_counter() - t0:.0f} s")
    out["variants"] = []
    base_stats: list[Stats] = []
    base_planes: list[dict[str, int]] = []
    targets = sorted({*TARGETS, *scored})
    pick = SCORED_VARIANTS[name]
    for var in variants:
        t1 = time.perf_counter()
        stats = [tensor_stats(t, var) for t in tensors]
        base_stats = base_stats or stats
        t_stats = time.perf_counter() - t1
        allocs = allocate(stats, whole, total, targets)
        base_planes = base_planes or [planes for _, planes in allocs]
        runs = [(var.name, allocs, pick is None or var.name in pick or score_all)]
        if var != Variant() and var.name in FIXED_PLANES[name]:
            # the variant's grid on pow2's planes: its own bits, no allocation of its own
            fixed = [
                (whole + sum(s.base_bytes + s.plane_bytes[planes[s.name]] for s in stats), planes)
                for planes in base_planes
            ]
            runs.append((f"{var.name} (pow2's planes)", fixed, True))
        for label, alloc, scoring in runs:
            points = []
            for target, (est, planes) in zip(targets, alloc, strict=True):
                pt: dict[str, Any] = {"target": target, "bpw": est * 8 / total}
                pt.update(objective(stats, planes))
                if target in scored and scoring:
                    pt.update(score(var, planes))
                points.append(pt)
            entry = {
                "variant": label,
                "points": points,
                "equal_error_bits": equal_error_bits(base_stats, stats, range(2, 7)),
            }
            out["variants"].append(entry)
            log(
                f"{name} {dt} {label}: stats {t_stats:.0f} s, all "
                f"{time.perf_counter() - t1:.0f} s: "
                + ", ".join(
                    f"{p['bpw']:.2f}:{p['mean_rel_err_db']:.2f}dB:"
                    f"{p.get('agreement', math.nan):.4f}/{p.get('cosine', math.nan):.4f}"
                    for p in points
                )
                + f"; equal-error bits {entry['equal_error_bits']}"
            )
        for t in tensors:
            t.cache.clear()
    if check_levels:
        out["check"] = check_codec_plan(model, tensors, score, REFERENCE[(name, dt)], check_levels)
        for t in tensors:
            t.cache.clear()
        log(f"{name} {dt}: codec plan checked ({time.perf_counter() - t0:.0f} s)")
    out["rtn"] = []
    for bits, group, rot in RTN if scored else ():
        approx, bpw = rtn_model(model, tensors, whole, bits, group, rot)
        res = {"bits": bits, "group": group, "rotated": rot, "bpw": bpw}
        out["rtn"].append({**res, **score.raw(approx)})
    t1 = time.perf_counter()
    out["lossless"] = lossless(tensors)
    out["scorings"] = score.calls
    out["seconds"] = time.perf_counter() - t0
    log(
        f"{name} {dt}: lossless {time.perf_counter() - t1:.0f} s; {score.calls} scorings; "
        f"total {out['seconds']:.0f} s"
    )
    return out


# ---------------------------------------------------------------------------- report


def metric(doc_model: Mapping[str, Any]) -> str:
    """The discriminating score: next-byte agreement on the LM, logit cosine on EfficientNet
    (its top-1 on these images flips under bf16 rounding alone)."""
    return "agreement" if doc_model["key"] == "lm" else "cosine"


def bpw_at(points: Sequence[Mapping[str, Any]], key: str, value: float) -> float | None:
    """Bits/weight at which a variant's curve reaches ``value`` (linear between points;
    None outside)."""
    pts = sorted((p["bpw"], p[key]) for p in points)
    for (b0, v0), (b1, v1) in itertools.pairwise(pts):
        if min(v0, v1) <= value <= max(v0, v1) and v1 != v0:
            return float(b0 + (value - v0) * (b1 - b0) / (v1 - v0))
    return None


def _fit(points: Sequence[Mapping[str, Any]], key: str) -> tuple[float, float, float]:
    """Least squares log(1 - score) = a + b * bits/weight over the scored points:
    (a, b, the residuals' standard deviation)."""
    pts = [(p["bpw"], math.log(max(1 - p[key], 1e-7))) for p in points if key in p]
    if len(pts) < 2:
        return math.nan, math.nan, math.nan
    x = np.array([q[0] for q in pts])
    y = np.array([q[1] for q in pts])
    b, a = np.polyfit(x, y, 1)
    resid = y - (a + b * x)
    dof = max(len(pts) - 2, 1)
    return float(a), float(b), float(math.sqrt(float((resid**2).sum()) / dof))


def fit_gap(
    base: Sequence[Mapping[str, Any]], other: Sequence[Mapping[str, Any]], key: str
) -> dict[str, float]:
    """The mean horizontal distance (bits/weight) from base's fitted curve of
    log(1 - score) against bits/weight to other's, over base's scored range (negative:
    other reaches the same score with fewer bits), and the fits' noise in bits/weight (the
    residual standard deviations over the slope, combined)."""
    a0, b0, r0 = _fit(base, key)
    a1, b1, r1 = _fit(other, key)
    if math.isnan(a0) or math.isnan(a1):
        return {"bpw": math.nan, "noise_bpw": math.nan}
    xs = np.linspace(
        min(p["bpw"] for p in base if key in p), max(p["bpw"] for p in base if key in p), 50
    )
    gap = ((a0 + b0 * xs - a1) / b1 - xs).mean()
    noise = math.hypot(r0 / abs(b0), r1 / abs(b1))
    return {"bpw": float(gap), "noise_bpw": noise}


def _cell(p: Mapping[str, Any]) -> str:
    if "agreement" not in p:
        return f"{p['bpw']:.2f} · {p['mean_rel_err_db']:.2f} dB"
    return f"{p['bpw']:.2f} · {p['agreement']:.1%} · {p['cosine']:.4f}"


def markdown(doc: Mapping[str, Any], command: str) -> str:
    parts = [f"Reproduce: `{command}` (machine: {doc['machine']})\n"]
    chk = doc["lift_check"]
    parts.append(
        "Integer lifting check (random int32 rows, forward then inverse): "
        + "; ".join(
            f"{b}: {c['rows']} rows, exact inverse {c['exact_inverse']}, largest deviation "
            f"from the real orthonormal transform {c['max_abs_dev_from_orthonormal']:.2f} "
            f"(that transform a Hadamard matrix / sqrt(B): {c['hadamard']})"
            for b, c in chk.items()
        )
        + ".\n"
    )
    for m in doc["models"]:
        key = metric(m)
        total = m["weights"]
        exp = m["exponents"]
        extra = f", full perplexity {m['full_perplexity']:.3f}" if "full_perplexity" in m else ""
        parts.append(
            f"**{m['model']} {m['dtype']}** ({total:,} weights, {m['planed_weights']:,} planed"
            f"{extra}; {m['scorings']} scorings, {m['seconds']:.0f} s).\n"
        )
        if "check" in m:
            fix = (
                m["whole_bytes_encoded"]
                - m["whole_bytes_estimate"]
                + exp["groups"] * (exp["zstd_bytes_per_group"] - EXP_BYTES)
            )
            rows = [
                [
                    c["level"],
                    f"{c['estimated_bpw']:.2f}",
                    f"{c['estimated_bpw'] + fix * 8 / total:.2f}",
                    f"{c['benchmarks_bpw']:.2f}",
                    f"{c['agreement']:.2%} · {c['cosine']:.5f}",
                    f"{c['benchmarks_agreement']:.2%} · {c['benchmarks_cosine']:.5f}",
                ]
                for c in m["check"]
            ]
            parts.append(
                "Check: the codec's own plan (default params) decoded by this simulation, "
                "against BENCHMARKS.md. The second column replaces the plan's guesses for the "
                f"whole tensors (raw / 3: {m['whole_bytes_estimate']:,.0f} bytes; encoded: "
                f"{m['whole_bytes_encoded']:,}) and the exponents ({EXP_BYTES} bytes/group; "
                f"zstd: {exp['zstd_bytes_per_group']:.2f}) by what the codec makes of them; "
                "the rest of the gap is zstd over the order-0 entropy of the planes.\n\n"
                + table(
                    [
                        "level",
                        "plan's estimate b/w",
                        "… whole and exponents as encoded",
                        "BENCHMARKS b/w",
                        "simulated agreement · cosine",
                        "BENCHMARKS agreement · cosine",
                    ],
                    rows,
                )
                + "\n"
            )
        rows = [
            [v["variant"], *[_cell(p) for p in v["points"] if p["target"] in TARGETS]]
            for v in m["variants"]
        ]
        for r in m["rtn"]:
            rows.append(
                [
                    f"{'rot+' if r['rotated'] else ''}rtn{r['bits']}-g{r['group']} (reference)",
                    f"{r['bpw']:.2f} · {r['agreement']:.1%} · {r['cosine']:.4f}",
                    *([""] * (len(TARGETS) - 1)),
                ]
            )
        parts.append(
            "Estimated bits/weight · top-1 agreement · logit cosine at each target of the "
            "allocation (unscored targets: · the plan's objective, the mean relative squared "
            "error of the planed tensors):\n\n"
            + table(["variant", *[f"target {t}" for t in TARGETS]], rows)
            + "\n"
        )
        base = m["variants"][0]
        rows = []
        ks = list(base["equal_error_bits"])
        for v in m["variants"][1:]:
            cells = [f"{v['equal_error_bits'][k]:+.3f}" for k in ks]
            fg = fit_gap(base["points"], v["points"], key)
            cells.append(
                "—" if math.isnan(fg["bpw"]) else f"{fg['bpw']:+.2f} ± {fg['noise_bpw']:.2f}"
            )
            for bp, vp in zip(base["points"], v["points"], strict=True):
                if bp["target"] not in TARGETS:
                    continue
                d_obj = vp["mean_rel_err_db"] - bp["mean_rel_err_db"]
                if key not in bp or key not in vp:
                    cells.append(f"{d_obj:+.2f} dB")
                    continue
                at = bpw_at([p for p in v["points"] if key in p], key, bp[key])
                d_q = vp[key] - bp[key]
                q_txt = f"{d_q:+.1%}" if key == "agreement" else f"{d_q:+.4f}"
                cells.append(
                    (f"{at - bp['bpw']:+.2f} b/w" if at is not None else "—")
                    + f" ({q_txt}, {d_obj:+.2f} dB)"
                )
            rows.append([v["variant"], *cells])
        parts.append(
            "Against pow2. Data-free (k=…): the bits/weight a variant needs per tensor for "
            "pow2's relative error after k planes (mean over the planed tensors, weighted by "
            "their weights; negative is cheaper). Model (fit): the mean horizontal distance "
            f"between the fits of log(1 − {key}) against bits/weight over the "
            f"{len(m['scored_targets'])} scored targets (± the fits' residual noise in "
            f"bits/weight). At each target: the bits/weight the variant needs for pow2's {key}"
            " (interpolated between its own scored points; — outside them), in brackets its "
            f"own {key} and plan objective minus pow2's (dB: negative is better):\n\n"
            + table(
                ["variant", *[f"k={k}" for k in ks], "fit", *[f"target {t}" for t in TARGETS]],
                rows,
            )
            + "\n"
        )
        ll = m["lossless"]
        parts.append(
            f"Lossless effect of the rotation ({ll['rotated_weights']:,} weights in blocks "
            f"of 2 or more; weights by block size: {m['rotated_block_weights']}): the "
            "fixed-point words coded plane by plane to the last bit (order-0 per plane) take "
            f"{ll['unrotated_bpw']:.2f} bits/weight unrotated and {ll['rotated_bpw']:.2f} "
            f"rotated ({ll['rotated_bpw'] - ll['unrotated_bpw']:+.2f}); "
            f"{ll['inexact_in_fixed_point']} of {ll['sampled_weights']:,} sampled weights are "
            "not exact in the fixed point.\n"
        )
    return "\n".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", default="lm,effnet")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--variants", default=DEFAULT_VARIANTS)
    ap.add_argument("--no-check", action="store_true", help="skip the codec-plan check")
    ap.add_argument("--score-all", action="store_true", help="score every target")
    ap.add_argument("--data-free", action="store_true", help="score nothing (no --write)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for scoring")
    ap.add_argument("--json", type=Path)
    ap.add_argument(
        "--from-json",
        help="comma-separated JSON files of earlier runs: merge their models and write the "
        "section from them (nothing is measured)",
    )
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    variants = [Variant.parse(v) for v in args.variants.split(",")]
    if variants[0] != Variant():
        variants.insert(0, Variant())

    def log(msg: str) -> None:
        import sys

        print(msg, file=sys.stderr, flush=True)

    if args.from_json:
        docs = [json.loads(Path(f).read_text()) for f in args.from_json.split(",")]
        merged = {**docs[0], "models": [m for d in docs for m in d["models"]]}
        runs = []
        for f, d in zip(args.from_json.split(","), docs, strict=True):
            names = ",".join(dict.fromkeys(m["key"] for m in d["models"]))
            dts = ",".join(dict.fromkeys(m["dtype"] for m in d["models"]))
            runs.append(
                f"nice -n 10 python -m bench.codec_grid --models {names} --dtypes {dts}"
                f" --json {Path(f).name}"
            )
        cmd = "`, `".join(runs) + "`, then `python -m bench.codec_grid --from-json "
        cmd += ",".join(Path(f).name for f in args.from_json.split(",")) + " --write"
        write_section("grid", markdown(merged, cmd), NOTES)
        return
    doc: dict[str, Any] = {"machine": machine(), "lift_check": lift_check()}
    log(f"lift check: {doc['lift_check']}")
    doc["models"] = [
        run_model(
            m,
            d,
            variants,
            ()
            if args.data_free
            else sorted({*TARGETS, *SCORED[m]})
            if args.score_all
            else SCORED[m],
            () if args.no_check or args.data_free else CHECK_LEVELS[m],
            log,
            args.score_all,
        )
        for m in args.models.split(",")
        for d in args.dtypes.split(",")
    ]
    text = json.dumps(doc, indent=1, default=str)
    print(text)
    if args.json:
        args.json.write_text(text)
    if args.write and not args.data_free:
        cmd = "nice -n 10 python -m bench.codec_grid --write"
        if args.variants != DEFAULT_VARIANTS:
            cmd += f" --variants {args.variants}"
        if args.score_all:
            cmd += " --score-all"
        if args.models != "lm,effnet" or args.dtypes != "float32,bfloat16":
            cmd += f" --models {args.models} --dtypes {args.dtypes}"
        write_section("grid", markdown(doc, cmd), NOTES)


if __name__ == "__main__":
    main()
