"""A model's tensor count costs linear work: publishing a file, parsing its manifest and
building a decoded level of N tensors (mixture-of-experts checkpoints carry 10^4–10^5, many
of them empty) do not do work that grows with N² (a lookup that scanned every tensor per
tensor once made 200,000 empty tensors take over ten minutes).

The work is counted, not timed: the lines of peerprog's own code that run (in every thread)
for N, 2N and 4N tensors. Line counts do not depend on the machine or its load; a linear
pipeline adds the same count for every tensor added, so the count added by the third run
per tensor is the second's, where a quadratic term would double it. (Work done in C —
numpy, zstd, msgpack — is not counted, only what peerprog's Python does.)

The faster paths taken for many small tensors give what the plain ones gave, to the bit (a
manifest, so a model id, must not change for the same file): the rate analysis against a
plane-by-plane reference, the quality figures' level-by-level decode, canonical packing.
"""

from __future__ import annotations

import itertools
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import msgpack
import numpy as np
import pytest

import peerprog
from peerprog.codec import get_codec, quality
from peerprog.codec import groupplane as gp
from peerprog.codec.base import EncodedTensor, RawTensor
from peerprog.codec.dtypes import DTYPES, dtype
from peerprog.codec.groupplane import format as gpf
from peerprog.codec.groupplane import numpy_kernels as gpn
from peerprog.codec.groupplane import rate
from peerprog.formats import write_safetensors
from peerprog.manifest.canonical import _canon, pack, unpack
from peerprog.store import Store, build_level
from peerprog.store.publish import publish_file
from tests.unit.samples import KEY

PACKAGE = str(Path(peerprog.__file__).parent)
N = 100


def count_lines(work: Callable[[], object]) -> int:
    """The lines of peerprog's code that ``work()`` runs, in this thread and the threads
    it starts."""
    counter = itertools.count()  # next() is atomic: threads may count at once

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line":
            next(counter)
        return local

    def start(frame: FrameType, event: str, arg: Any) -> Any:
        return local if frame.f_code.co_filename.startswith(PACKAGE) else None

    sys.settrace(start)
    threading.settrace(start)
    try:
        work()
    finally:
        sys.settrace(None)
        threading.settrace(None)
    return next(counter)


def model(n: int) -> dict[str, RawTensor]:
    """n empty tensors, n small ones (whole in level 0) and n/10 with planes, interleaved
    (the same mix at every n, so that the plan gives the same levels)."""
    tensors: dict[str, RawTensor] = {}
    for i in range(n):
        rng = np.random.default_rng(i)
        tensors[f"layers.{i}.experts.empty"] = RawTensor("bfloat16", np.zeros((0, 8), np.uint16))
        small = rng.integers(0x3C00, 0x3D00, 16, dtype=np.uint16)
        tensors[f"layers.{i}.norm"] = RawTensor("bfloat16", small)
        if i % 10 == 0:
            w = rng.integers(0x3C00, 0x3D00, (16, 64), dtype=np.uint16)
            tensors[f"layers.{i}.proj"] = RawTensor("bfloat16", w)
    return tensors


def work_for(tmp_path: Path, n: int) -> int:
    """Lines run to publish, parse and build the last level of a model of ``n``."""
    folder = tmp_path / str(n)
    folder.mkdir()
    source = folder / "model.safetensors"
    tensors = model(n)
    write_safetensors(source, tensors)
    store = Store(folder / "store")
    out = folder / "decoded.safetensors"

    def work() -> None:
        result = publish_file(source, name="many", key=KEY, store=store)
        signed = store.load_manifest(result.signed.model_id, None)  # the body parsed
        assert len(signed.manifest.tensors) == len(tensors)
        with store.open_files(signed) as files:
            last = len(signed.manifest.levels) - 1
            build_level(signed.manifest, signed.model_id, files, files.recorded(), last, out)

    lines = count_lines(work)
    assert out.stat().st_size > 0
    return lines


def test_work_grows_linearly_with_the_tensor_count(tmp_path: Path) -> None:
    base, double, quadruple = (work_for(tmp_path, k * N) for k in (1, 2, 4))
    first = (double - base) / N  # lines per tensor added, from N to 2N
    second = (quadruple - double) / (2 * N)  # and from 2N to 4N
    # linear: the same, to a line (threads vary the count by ~0.1%); a term in N² makes
    # the second larger (a lookup scanning the file's tensors per tensor read: 1.39 times)
    assert first > 0
    assert second < 1.1 * first, (base, double, quadruple, first, second)


# --- the fast paths are exact: manifests and decodes stay the same to the bit -------------


def reference_analyse(name: str, tensor: RawTensor, params: dict[str, Any]) -> gp.TensorStats:
    """:func:`gp.analyse` as it was written first: plane by plane, with the codec's own
    kernels (its figures decide the plan, so the fast version must give the same floats)."""
    s = gp.settings(params)
    dt = dtype(tensor.dtype)
    flat = np.ascontiguousarray(tensor.array).reshape(-1)
    if gp.is_whole(dt, tensor.array.shape, s):
        return gp.TensorStats(name, dt.name, flat.size, True, whole_bytes=flat.size * dt.itemsize)
    geo = gpf.geometry(dt, s.max_planes)
    gsize = gp.group_size(tensor.array.shape, s.group)
    ngroups = -(-flat.size // gsize)
    v = gpf.to_f32(geo, gpf.padded(flat, ngroups * gsize)).reshape(ngroups, gsize)
    take = max(1, min(ngroups, gp.SAMPLE_ELEMENTS // gsize))
    sv = v[np.linspace(0, ngroups - 1, take).astype(np.int64)]
    scale = ngroups / take
    exps = gpn.group_exponents(geo, sv)
    kmax = geo.max_planes
    q = gpn.magnitudes(sv, exps, kmax)
    neg = np.signbit(sv)
    x = np.where(np.isfinite(sv), sv, 0).astype(np.float64)
    sq_norm = float(np.sum(x * x)) * scale
    plane_bits = [0.0]
    errs = [float(np.sum(x * x)) * scale]
    for k in range(1, kmax + 1):
        qk = q >> np.uint32(kmax - k)
        was = (q >> np.uint32(kmax - k + 1)) != 0
        insig_bits = (qk & np.uint32(1))[~was]
        n_sig, n_new = int(np.count_nonzero(was)), int(np.count_nonzero(insig_bits))
        bits = float(n_sig)
        if insig_bits.size:
            p1 = n_new / insig_bits.size
            bits += insig_bits.size * rate._h(p1) + n_new
        plane_bits.append(plane_bits[-1] + bits * scale)
        approx = gpn.midpoints(geo, qk, neg, exps, k).astype(np.float64)
        errs.append(float(np.sum((approx - x) ** 2)) * scale)
    return gp.TensorStats(
        name,
        dt.name,
        flat.size,
        False,
        scale_bytes=ngroups * 0.4,
        plane_bytes=tuple(b / 8 for b in plane_bits),
        sq_error=tuple(errs),
        sq_norm=sq_norm,
        extra={"group": gsize},
    )


def awkward(rng: np.random.Generator, name: str, shape: tuple[int, ...], kind: int) -> RawTensor:
    """Values of every scale, zeros, ±0, non-finite values, subnormals and the extremes."""
    n = int(np.prod(shape))
    x = rng.standard_normal(n).astype(np.float32) * np.float32(10.0 ** rng.integers(-30, 30))
    big = np.float32(65504 if name == "float16" else 3.3e38)
    if kind == 1:
        x[rng.integers(0, n, n // 3)] = 0
        x[::7] = -0.0
    if kind == 2:
        x[::5] = np.inf
        x[1::9] = np.nan
        x[2::3] = np.float32(1e-45)
        x[3::11] = -big
    if kind == 3:
        x[:] = 0
    if name == "bfloat16":
        return RawTensor(
            name, (x.view(np.uint32) >> np.uint32(16)).astype(np.uint16).reshape(shape)
        )
    with np.errstate(over="ignore"):
        return RawTensor(name, x.astype(DTYPES[name].storage).reshape(shape))


def test_analyse_gives_the_figures_of_the_plane_by_plane_reference() -> None:
    rng = np.random.default_rng(7)
    shapes = [(16, 64), (33, 65), (5, 3000), (2100,), (3, 5, 7, 11), (4096, 17), (1400, 64)]
    params = [
        gp.default_params(),
        {**gp.default_params(), "max_planes": 23, "group": 32},
        {**gp.default_params(), "max_planes": 3, "group": 128, "vector_elements": 10},
    ]
    for name in ("bfloat16", "float32", "float16"):
        for shape in shapes:
            for kind in range(4):
                t = awkward(rng, name, shape, kind)
                for p in params:
                    assert gp.analyse("t", t, p) == reference_analyse("t", t, p), (name, shape)


def test_decode_levels_gives_decode_tensor_level_by_level() -> None:
    rng = np.random.default_rng(3)
    codec = get_codec("groupplane")
    tensors = {
        f"{name}.{shape}.{kind}": awkward(rng, name, shape, kind)
        for name in ("bfloat16", "float32")
        for shape in [(16, 64), (40, 100), (8,), (0, 4)]
        for kind in range(3)
    }
    before = gp.backend()
    try:
        for backend in gp.backends():
            gp.set_backend(backend)
            encoded = codec.encode(tensors)
            for layout in encoded.tensors:
                pieces = [
                    bytes(memoryview(data)[s.offset : s.offset + s.length])
                    for data, s in zip(encoded.levels, layout.segments, strict=True)
                ]
                alone = quality._alone(layout)
                prior = None
                for n, fast in enumerate(
                    gp.decode_levels(
                        encoded.params, layout.dtype, layout.shape, layout.params, pieces
                    )
                ):
                    prior = codec.decode_tensor(encoded.params, alone, pieces[: n + 1], prior)
                    assert fast.dtype == prior.dtype and fast.shape == prior.shape
                    assert fast.tobytes() == prior.tobytes(), (backend, layout.name, n)
                assert n == len(pieces) - 1
    finally:
        gp.set_backend(before)


def test_packing_gives_the_canonical_bytes_and_errors() -> None:
    body = {
        "tensors": [{"name": "w", "shape": (2, 3), "segments": [[0, 5], (5, 0)], "b": True}],
        "a": None,
        "z": {"y": [b"x", -1, 2**40], "x": ()},
    }
    assert pack(body) == msgpack.packb(_canon(body, "$"), use_bin_type=True)
    assert unpack(pack(body), canonical=True) == unpack(
        msgpack.packb(_canon(body, "$"), use_bin_type=True)
    )
    with pytest.raises(TypeError, match=r"\$\.z\.y\[1\]: floats"):
        pack({"z": {"y": [1, 1.5]}})
    with pytest.raises(TypeError, match="map key 1 is not a string"):
        pack({"a": {1: 2, "b": 3}})


def test_quality_figures_of_small_tensors_are_those_level_by_level(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = np.random.default_rng(11)
    codec = get_codec("groupplane")
    tensors = {
        f"{name}.{shape}.{kind}": awkward(rng, name, shape, kind)
        for name in ("bfloat16", "float32", "float16")
        for shape in [(16, 64), (40, 100), (8,)]
        for kind in range(3)
    }
    encoded = codec.encode(tensors)

    def figures() -> tuple[list[dict[str, int]], list[float]]:
        meter = quality.QualityMeter(len(encoded.levels))
        for layout in encoded.tensors:
            pieces = tuple(
                [memoryview(data)[s.offset : s.offset + s.length]]
                for data, s in zip(encoded.levels, layout.segments, strict=True)
            )
            alone = EncodedTensor(layout.params, pieces)
            meter.add(codec, encoded.params, quality._alone(layout), tensors[layout.name], alone)
        return [meter.level(n) for n in range(len(encoded.levels))], meter._sq_err

    together, sums = figures()
    monkeypatch.setattr(quality, "_TOGETHER", 0)  # every tensor level by level
    apart, sums_apart = figures()
    assert together == apart
    assert sums == pytest.approx(sums_apart, rel=1e-12)
