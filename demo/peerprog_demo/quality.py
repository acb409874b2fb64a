"""How good an approximate model is, compared with the full one.

For the digits CNN (any file holding its tensors): accuracy on the bundled test split and
agreement with the full model's predictions. For any other model no task is known, so the
quality is the relative RMS error of all float weights against the full model's. Both are
measured for the digits CNN too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from peerprog.codec import dtype
from peerprog.formats import read_model
from peerprog.reference import digits

Arrays = Mapping[str, npt.NDArray[np.generic]]


@dataclass(frozen=True)
class Quality:
    """One model's quality; ``accuracy`` and ``agreement`` only for the digits CNN."""

    accuracy: float | None
    """Fraction of the bundled test split classified correctly."""
    agreement: float | None
    """Fraction of test images whose predicted class equals the full model's."""
    rel_rms_error: float
    """``‖w − w_full‖ / ‖w_full‖`` over the float tensors (0 for the exact model)."""

    def to_json(self) -> dict[str, float | None]:
        """The fields as a JSON object."""
        return {
            "accuracy": self.accuracy,
            "agreement": self.agreement,
            "rel_rms_error": self.rel_rms_error,
        }


def is_digits_model(tensors: Arrays) -> bool:
    """Does ``tensors`` hold every tensor of the digits CNN, with its shapes?"""
    return all(
        name in tensors and tuple(tensors[name].shape) == shape
        for name, shape in digits.TENSOR_SHAPES.items()
    )


def as_float(arrays: Arrays, dtypes: Mapping[str, str]) -> dict[str, npt.NDArray[np.generic]]:
    """``arrays`` with bfloat16 tensors (``uint16`` bit patterns) turned into float32."""
    out: dict[str, npt.NDArray[np.generic]] = {}
    for name, arr in arrays.items():
        if dtypes.get(name) == "bfloat16":
            out[name] = (arr.astype(np.uint32) << 16).view(np.float32)
        else:
            out[name] = arr
    return out


class Judge:
    """Scores approximate models against a full model read from ``full_path``."""

    def __init__(self, full_path: Path) -> None:
        raw = read_model(full_path)
        self.full = digits.load_state_dict(full_path)
        self.floats = [n for n, t in raw.items() if dtype(t.dtype).is_float]
        """The float tensors: the weights the error is measured on."""
        self.is_digits = is_digits_model(self.full)
        self._full_pred: npt.NDArray[np.intp] | None = None
        if self.is_digits:
            x, _ = digits.load_test_split()
            self._full_pred = np.argmax(digits.predict(self.full, x), axis=1)
        squares = (float(np.sum(np.square(self.full[n], dtype=np.float64))) for n in self.floats)
        self._norm = math.sqrt(sum(squares))

    @property
    def metric(self) -> str:
        """The headline metric: ``accuracy`` or ``rel_rms_error``."""
        return "accuracy" if self.is_digits else "rel_rms_error"

    def __call__(self, tensors: Arrays) -> Quality:
        """The quality of ``tensors`` (a state dict with the full model's names)."""
        err = 0.0
        for name in self.floats:
            ref = self.full[name]
            got = tensors.get(name)
            if got is None or got.shape != ref.shape or got.dtype.kind not in "fiu":
                err += float(np.sum(np.square(ref, dtype=np.float64)))
            else:
                diff = got.astype(np.float64) - ref.astype(np.float64)
                err += float(np.sum(np.square(diff)))
        rel = math.sqrt(err) / self._norm if self._norm > 0 else math.sqrt(err)
        if not self.is_digits or not is_digits_model(tensors):
            return Quality(None, None, rel)
        ev = digits.evaluate(tensors, self._full_pred)
        return Quality(ev.accuracy, ev.agreement, rel)
