"""The bundled reference model: a small CNN trained on scikit-learn's 8x8 digits.

numpy only — apps and the demo need no torch. The weights (``data/digits_cnn.safetensors``)
and the held-out test split (``data/digits_test.npz``) are package data, written by
``scripts/train_reference.py``. The forward pass here must stay in step with ``DigitsCNN``
in that script:

    conv 1→32 3x3 pad 1 · ReLU · conv 32→64 3x3 pad 1 · ReLU · maxpool 2
    · flatten (C, H, W order) · linear 1024→256 · ReLU · linear 256→10

Quality of an approximate model is reported two ways (see :func:`evaluate`): accuracy on the
test split, and agreement with the full model's predictions.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from peerprog.errors import InputError
from peerprog.formats import read_model

MODEL_NAME = "digits-cnn"

#: Every tensor the forward pass needs, with its shape (PyTorch layout).
TENSOR_SHAPES: dict[str, tuple[int, ...]] = {
    "conv1.weight": (32, 1, 3, 3),
    "conv1.bias": (32,),
    "conv2.weight": (64, 32, 3, 3),
    "conv2.bias": (64,),
    "fc1.weight": (256, 1024),
    "fc1.bias": (256,),
    "fc2.weight": (10, 256),
    "fc2.bias": (10,),
}

_DATA = Path(__file__).resolve().parent / "data"
_PIXEL_MAX = np.float32(16.0)  # the digits' pixels are 0..16

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Evaluation:
    """How good a (possibly approximate) model is on the bundled test split."""

    accuracy: float
    """Fraction of test images classified correctly."""
    agreement: float
    """Fraction of test images whose predicted class equals the full model's."""


def model_path() -> Path:
    """The bundled safetensors file holding the full model's float32 weights."""
    return _DATA / "digits_cnn.safetensors"


def load_state_dict(path: Path | None = None) -> dict[str, F32]:
    """Read a state dict as writable float32 arrays.

    ``path`` defaults to the bundled full model; any file :func:`peerprog.formats.read_model`
    reads (``.safetensors``, ``.pt``, ``.npz``) works, e.g. an approximate model fetched from
    the daemon. float16/bfloat16/float64 tensors are converted to float32.
    """
    tensors = read_model(model_path() if path is None else path)
    out: dict[str, F32] = {}
    for name, t in tensors.items():
        if t.dtype == "bfloat16":  # uint16 bit patterns: the high half of a float32
            out[name] = (t.array.astype(np.uint32) << 16).view(np.float32)
        else:
            out[name] = t.array.astype(np.float32)
    return out


def load_test_split() -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """The held-out test split: pixels ``(N, 8, 8)`` uint8 in 0..16, and labels ``(N,)``."""
    x, y = _test_split()
    return x.copy(), y.copy()


def predict(state_dict: Mapping[str, npt.NDArray[np.generic]], x: npt.ArrayLike) -> F32:
    """Logits ``(N, 10)`` for images ``x`` of shape ``(N, 8, 8)`` holding raw pixels 0..16.

    ``state_dict`` maps the names of :data:`TENSOR_SHAPES` to arrays of any real dtype (cast
    to float32; extra entries are ignored). Raises :class:`InputError` naming a tensor that
    is missing or has the wrong shape, or if ``x`` has the wrong shape.
    """
    p = _params(state_dict)
    images = np.asarray(x)
    if images.ndim != 3 or images.shape[1:] != (8, 8):
        raise InputError(f"images must have shape (N, 8, 8), got {images.shape}")
    n = images.shape[0]
    h = (images.astype(np.float32) / _PIXEL_MAX)[..., None]  # NHWC: (N, 8, 8, 1)
    h = _conv3x3_relu(h, p["conv1.weight"], p["conv1.bias"])  # (N, 8, 8, 32)
    h = _conv3x3_relu(h, p["conv2.weight"], p["conv2.bias"])  # (N, 8, 8, 64)

    # maxpool 2 → (N, 4, 4, 64); flatten in torch's (C, H, W) order.
    pooled = h.reshape(n, 4, 2, 4, 2, 64).max(axis=(2, 4))
    flat = pooled.transpose(0, 3, 1, 2).reshape(n, 1024)
    hidden = np.maximum(flat @ p["fc1.weight"].T + p["fc1.bias"], 0)
    logits: F32 = hidden @ p["fc2.weight"].T + p["fc2.bias"]
    return logits


def evaluate(
    state_dict: Mapping[str, npt.NDArray[np.generic]],
    reference_predictions: npt.ArrayLike | None = None,
) -> Evaluation:
    """Accuracy and agreement of ``state_dict`` on the bundled test split.

    Agreement compares predicted classes with ``reference_predictions`` (one class per test
    image), by default the full bundled model's (computed once and cached).
    """
    x, y = _test_split()
    pred = predict(state_dict, x).argmax(axis=1)
    if reference_predictions is None:
        ref = _full_predictions()
    else:
        ref = np.asarray(reference_predictions)
        if ref.shape != y.shape:
            raise InputError(
                f"reference_predictions must have shape {y.shape} (one per test image), "
                f"got {ref.shape}"
            )
    return Evaluation(
        accuracy=float(np.mean(pred == y)),
        agreement=float(np.mean(pred == ref)),
    )


def _conv3x3_relu(h: F32, weight: F32, bias: F32) -> F32:
    """ReLU of a 3x3 convolution, padding 1, of NHWC activations (im2col and one matmul).

    ``weight`` is in PyTorch layout ``(out, in, 3, 3)``.
    """
    n, height, width, c_in = h.shape
    padded = np.pad(h, ((0, 0), (1, 1), (1, 1), (0, 0)))
    cols = np.empty((n, height, width, 3, 3, c_in), np.float32)
    for i in range(3):
        for j in range(3):
            cols[:, :, :, i, j, :] = padded[:, i : i + height, j : j + width, :]
    kernel = weight.transpose(2, 3, 1, 0).reshape(9 * c_in, -1)  # (ky, kx, in) x out
    out: F32 = cols.reshape(n * height * width, 9 * c_in) @ kernel + bias
    return np.maximum(out, 0).reshape(n, height, width, -1)


def _params(state_dict: Mapping[str, npt.NDArray[np.generic]]) -> dict[str, F32]:
    out: dict[str, F32] = {}
    for name, shape in TENSOR_SHAPES.items():
        if name not in state_dict:
            raise InputError(f"state dict is missing tensor {name!r}")
        arr = np.asarray(state_dict[name])
        if arr.shape != shape:
            raise InputError(f"tensor {name!r} has shape {arr.shape}, expected {shape}")
        if arr.dtype.kind not in "fiu":
            raise InputError(f"tensor {name!r} has dtype {arr.dtype}, expected a real number")
        out[name] = arr.astype(np.float32, copy=False)
    return out


@functools.cache
def _test_split() -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    with np.load(_DATA / "digits_test.npz", allow_pickle=False) as npz:
        x = np.asarray(npz["x"], dtype=np.uint8)
        y = np.asarray(npz["y"], dtype=np.uint8)
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


@functools.cache
def _full_predictions() -> npt.NDArray[np.intp]:
    x, _ = _test_split()
    pred: npt.NDArray[np.intp] = np.argmax(predict(load_state_dict(), x), axis=1)
    pred.flags.writeable = False
    return pred
