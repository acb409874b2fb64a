"""Bundled reference model for the demo and the tests (numpy only, no torch).

See :mod:`peerprog.reference.digits`: a small CNN on scikit-learn's digits, with its held-out
test split, a numpy forward pass and :func:`evaluate` (accuracy and agreement with the full
model).
"""

from __future__ import annotations

from peerprog.reference.digits import (
    MODEL_NAME,
    TENSOR_SHAPES,
    Evaluation,
    evaluate,
    load_state_dict,
    load_test_split,
    model_path,
    predict,
)

__all__ = [
    "MODEL_NAME",
    "TENSOR_SHAPES",
    "Evaluation",
    "evaluate",
    "load_state_dict",
    "load_test_split",
    "model_path",
    "predict",
]
