"""Numeric kernels: the Cython build (``kiln._kernels``) or its numpy twin.

Every kernel has the same signature in both forms, and the tests check they
agree.  ``KILN_NO_KERNELS=1`` forces the numpy fallback (for those tests, and
for platforms where the extension did not build).
"""

from __future__ import annotations

import os

import numpy as np


def _numpy_per_channel_absmax(array: np.ndarray, axis: int = 0) -> np.ndarray:
    """Max |x| over every axis but ``axis``, as float64 (NaN propagates)."""
    arr = np.asarray(array)
    if arr.ndim == 0:
        return np.array([abs(float(arr))], dtype=np.float64)
    moved = np.moveaxis(arr, axis, 0).reshape(arr.shape[axis], -1).astype(np.float64)
    if moved.shape[1] == 0:
        return np.zeros(moved.shape[0], dtype=np.float64)
    return np.max(np.abs(moved), axis=1)


def _load_native():  # type: ignore[no-untyped-def]
    if os.environ.get("KILN_NO_KERNELS"):
        return None
    try:
        from kiln import _kernels
    except ImportError:
        return None
    return _kernels


_native = _load_native()

NATIVE = _native is not None
"""Whether the Cython kernels are in use."""


def per_channel_absmax(array: np.ndarray, axis: int = 0) -> np.ndarray:
    """Max |x| per slice along ``axis`` (weights: per output channel), float64."""
    arr = np.asarray(array)
    if _native is not None and arr.dtype.kind in "fiu" and arr.dtype.itemsize <= 8:
        return _native.per_channel_absmax(arr, axis)
    return _numpy_per_channel_absmax(arr, axis)
