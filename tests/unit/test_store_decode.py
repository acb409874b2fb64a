"""Building a decoded level from an earlier level's file: every level since in one pass, to
the same bytes as from scratch (a node that received several levels at once does not decode
them one by one); a prior file of another level than said is refused, never refined into
nonsense."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from peerprog.codec import RawTensor
from peerprog.errors import FormatError
from peerprog.formats import write_safetensors
from peerprog.manifest import SignedManifest
from peerprog.store import Store
from peerprog.store.publish import publish_file
from tests.unit.samples import KEY


def _model() -> dict[str, RawTensor]:
    rng = np.random.default_rng(3)
    w = (rng.standard_normal((64, 300)) * 0.02).astype(np.float32)
    u = rng.standard_normal((40, 70)).astype(np.float16)
    b = (rng.standard_normal((128, 96)) * 0.1).astype(np.float32).view(np.uint32)
    return {
        "w": RawTensor("float32", w),
        "u": RawTensor("float16", u),
        "b": RawTensor("bfloat16", (b >> np.uint32(16)).astype(np.uint16)),
        "n": RawTensor("int64", np.arange(10, dtype=np.int64)),
    }


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> tuple[Store, SignedManifest, Path]:
    root = tmp_path_factory.mktemp("decode")
    source = root / "model.safetensors"
    write_safetensors(source, _model())
    store = Store(root / "store")
    result = publish_file(
        source,
        name="m",
        key=KEY,
        store=store,
        params={"small_tensor_elements": 0, "targets_mbpw": [2000, 4000, 8000]},
    )
    return store, result.signed, root


def test_a_level_from_any_earlier_level_is_the_level_from_scratch(
    published: tuple[Store, SignedManifest, Path],
) -> None:
    store, signed, root = published
    levels = len(signed.manifest.levels)
    assert levels >= 4
    scratch = []
    for n in range(levels):
        out = root / f"scratch{n}.safetensors"
        store.decode(signed, n, out)
        scratch.append(out.read_bytes())
    for m in range(levels - 1):
        prior = root / f"scratch{m}.safetensors"
        for n in range(m + 1, levels):
            out = root / f"from{m}to{n}.safetensors"
            store.decode(signed, n, out, prior=prior, prior_level=m)
            assert out.read_bytes() == scratch[n], (m, n)


def test_a_prior_of_another_level_than_said_is_refused(
    published: tuple[Store, SignedManifest, Path],
) -> None:
    store, signed, root = published
    levels = len(signed.manifest.levels)
    first = root / "first.safetensors"
    store.decode(signed, 0, first)
    with pytest.raises(FormatError, match="midpoints"):
        # level 0's file, said to be level 1's
        store.decode(signed, levels - 1, root / "bad.safetensors", prior=first, prior_level=1)
    with pytest.raises(ValueError):
        store.decode(signed, 1, root / "bad.safetensors", prior=first, prior_level=1)
