"""Small helpers the reference modules share (input access, compute dtype, attribute text)."""

from __future__ import annotations

from typing import Any

import numpy as np

Inputs = list["np.ndarray | None"]


def arg(inputs: Inputs, i: int) -> np.ndarray | None:
    """Input ``i``, or ``None`` when it is omitted or beyond the inputs given."""
    return inputs[i] if i < len(inputs) else None


def req(inputs: Inputs, i: int) -> np.ndarray:
    """Input ``i``, which the op requires."""
    a = arg(inputs, i)
    if a is None:
        raise ValueError(f"required input {i} is missing")
    return a


def compute_dtype(dtype: np.dtype) -> np.dtype:
    """float64 stays float64; every other float is computed in float32 and rounded once."""
    return np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)


def text(v: Any) -> str:
    """A STRING attribute as ``str`` (ONNX may hand over bytes)."""
    return v.decode() if isinstance(v, bytes) else str(v)
