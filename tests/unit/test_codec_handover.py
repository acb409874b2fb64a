"""``take_tensors`` hands the decoder's arrays over: same values, decoder spent."""

from __future__ import annotations

import numpy as np
import pytest

from peerprog.codec import RawTensor, get_codec


@pytest.mark.parametrize("name", ["groupplane", "bitplane", "paper"])
@pytest.mark.parametrize("prefix", ["all", "first"])
def test_take_equals_tensors_and_spends_decoder(name: str, prefix: str) -> None:
    rng = np.random.default_rng(5)
    model = {
        "w": RawTensor("float32", rng.standard_normal((64, 100), dtype=np.float32)),
        "b": RawTensor("float32", rng.standard_normal(10, dtype=np.float32)),
        "n": RawTensor("int64", np.arange(7, dtype=np.int64)),
    }
    codec = get_codec(name)
    enc = codec.encode(model)
    dec = codec.decoder(enc.params, enc.tensors)
    levels = enc.levels if prefix == "all" else enc.levels[:1]
    for n, data in enumerate(levels):
        dec.add_level(n, data)
    want = dec.tensors()
    got = dec.take_tensors()
    assert got.keys() == want.keys()
    for k in want:
        assert got[k].dtype == want[k].dtype
        assert np.array_equal(got[k].array.view(np.uint8), want[k].array.view(np.uint8))
    if name == "bitplane" and prefix == "all":
        assert np.array_equal(got["w"].array, model["w"].array)
    with pytest.raises(ValueError):
        dec.tensors()
    with pytest.raises(Exception):  # noqa: B017 - spent: any refusal will do
        dec.add_level(len(levels), enc.levels[-1])
