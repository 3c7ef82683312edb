"""Symmetric int8 quantization of weights (per output channel) and activations (per tensor).

``scale = max|w| / 127`` over each slice along ``axis`` (all of ``w`` for
``axis=None``), zero point 0, ``q = clip(rint(w / scale), -127, 127)``: the
symmetric, narrow-range int8 that TensorRT, TFLite and ncnn expect.  A slice
that is all zeros gets scale 1 (it quantizes to zeros exactly; a zero scale
is refused by TensorRT).
"""

from __future__ import annotations

import numpy as np
from kiln import kernels

QMAX = 127


def weight_scales(w: np.ndarray, axis: int | None) -> np.ndarray:
    """float32 scales: one per slice along ``axis`` (a 1-element array for ``axis=None``)."""
    arr = np.asarray(w)
    if axis is None:
        absmax = np.array([float(np.max(np.abs(arr))) if arr.size else 0.0])
    else:
        absmax = kernels.per_channel_absmax(arr, axis % arr.ndim)
    scales = absmax / QMAX
    scales = np.where(np.isfinite(scales) & (scales > 0), scales, 1.0)
    return scales.astype(np.float32)


def _broadcast(scales: np.ndarray, ndim: int, axis: int | None) -> np.ndarray:
    if axis is None:
        return scales.reshape(())
    shape = [1] * ndim
    shape[axis % ndim] = scales.shape[0]
    return scales.reshape(shape)


def quantize_weight(w: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(int8 weights, float32 scales) of ``w``, per channel along ``axis`` or per tensor."""
    arr = np.asarray(w, dtype=np.float32)
    scales = weight_scales(arr, axis)
    q = np.clip(np.rint(arr / _broadcast(scales, arr.ndim, axis)), -QMAX, QMAX)
    return q.astype(np.int8), scales


def fake_quantize(w: np.ndarray, axis: int | None) -> np.ndarray:
    """``w`` quantized and dequantized again (float32), as a DequantizeLinear of the int8 weight gives."""
    arr = np.asarray(w, dtype=np.float32)
    q, scales = quantize_weight(arr, axis)
    return (q.astype(np.float32) * _broadcast(scales, arr.ndim, axis)).astype(np.float32)


def quantize_activation(x: np.ndarray, scale: float) -> np.ndarray:
    """QuantizeLinear then DequantizeLinear with a per-tensor ``scale`` and zero point 0 (int8, saturating)."""
    s = np.float32(scale)
    return (np.clip(np.rint(np.asarray(x, dtype=np.float32) / s), -128, 127) * s).astype(np.float32)
