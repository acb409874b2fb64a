"""The bundled reference model: numpy forward vs torch, accuracy, agreement, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from peerprog.codec.base import RawTensor
from peerprog.errors import InputError
from peerprog.formats import write_safetensors
from peerprog.reference import (
    MODEL_NAME,
    TENSOR_SHAPES,
    evaluate,
    load_state_dict,
    load_test_split,
    model_path,
    predict,
)

State = dict[str, npt.NDArray[np.float32]]


@pytest.fixture(scope="module")
def full() -> State:
    return load_state_dict()


def test_bundled_files() -> None:
    assert MODEL_NAME == "digits-cnn"
    assert model_path().is_file()
    x, y = load_test_split()
    assert x.dtype == np.uint8 and y.dtype == np.uint8
    assert x.shape == (len(y), 8, 8) and 300 <= len(y) <= 400
    assert x.max() <= 16 and set(np.unique(y)) == set(range(10))


def test_state_dict_is_float32_of_expected_shapes(full: State) -> None:
    assert {k: v.shape for k, v in full.items()} == TENSOR_SHAPES
    assert all(v.dtype == np.float32 for v in full.values())
    nbytes = sum(v.nbytes for v in full.values())
    assert 1_000_000 <= nbytes <= 2_000_000


def test_numpy_forward_matches_torch(full: State) -> None:
    torch = pytest.importorskip("torch")
    f = torch.nn.functional
    x, _ = load_test_split()
    w = {k: torch.from_numpy(v) for k, v in full.items()}
    with torch.no_grad():
        h = torch.from_numpy(x.astype(np.float32)[:, None] / 16.0)
        h = f.relu(f.conv2d(h, w["conv1.weight"], w["conv1.bias"], padding=1))
        h = f.relu(f.conv2d(h, w["conv2.weight"], w["conv2.bias"], padding=1))
        h = torch.flatten(f.max_pool2d(h, 2), 1)
        h = f.relu(f.linear(h, w["fc1.weight"], w["fc1.bias"]))
        expected = f.linear(h, w["fc2.weight"], w["fc2.bias"]).numpy()
    got = predict(full, x)
    assert got.dtype == np.float32 and got.shape == (len(x), 10)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


def test_full_model_accuracy_and_self_agreement(full: State) -> None:
    ev = evaluate(full)
    assert ev.accuracy >= 0.95
    assert ev.agreement == 1.0


def test_low_precision_weights_are_accepted(full: State) -> None:
    for dtype in (np.float16, np.float64):
        ev = evaluate({k: v.astype(dtype) for k, v in full.items()})
        assert ev.agreement >= 0.99


def test_perturbed_model_agrees_less(full: State) -> None:
    rng = np.random.default_rng(0)
    noisy = {k: v + rng.normal(0, 3 * float(v.std()), v.shape) for k, v in full.items()}
    ev = evaluate(noisy)
    assert ev.agreement < 0.9
    assert ev.accuracy < evaluate(full).accuracy


def test_explicit_reference_predictions(full: State) -> None:
    _, y = load_test_split()
    ev = evaluate(full, reference_predictions=y)
    assert ev.agreement == ev.accuracy
    with pytest.raises(InputError, match="reference_predictions"):
        evaluate(full, reference_predictions=y[:10])


def test_missing_tensor_raises(full: State) -> None:
    partial = {k: v for k, v in full.items() if k != "fc1.bias"}
    with pytest.raises(InputError, match=r"fc1\.bias"):
        predict(partial, load_test_split()[0])


def test_wrong_shape_raises(full: State) -> None:
    bad = dict(full, **{"conv2.weight": np.zeros((64, 32, 5, 5), np.float32)})
    with pytest.raises(InputError, match=r"conv2\.weight"):
        evaluate(bad)


def test_wrong_image_shape_raises(full: State) -> None:
    with pytest.raises(InputError, match="images"):
        predict(full, np.zeros((4, 64), np.uint8))


def test_package_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, peerprog.reference as r; r.evaluate(r.load_state_dict()); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_load_state_dict_from_a_half_precision_file(full: State, tmp_path: Path) -> None:
    bf16 = {
        k: RawTensor("bfloat16", (v.view(np.uint32) >> 16).astype(np.uint16))
        for k, v in full.items()
    }
    f16 = {k: RawTensor("float16", v.astype(np.float16)) for k, v in full.items()}
    for name, tensors in (("bf16", bf16), ("f16", f16)):
        path = tmp_path / f"{name}.safetensors"
        write_safetensors(path, tensors)
        loaded = load_state_dict(path)
        assert all(v.dtype == np.float32 for v in loaded.values())
        np.testing.assert_allclose(loaded["fc1.weight"], full["fc1.weight"], rtol=1e-2, atol=1e-3)
        assert evaluate(loaded).agreement >= 0.99
