"""Numpy references of the quantized linear ops QLinearMatMul and QLinearConv.

The quantized ops accumulate ``(a - a_zero_point) * (b - b_zero_point)``
exactly in integers, scale the sum by ``a_scale * b_scale / y_scale`` in
float64, round half to even, add ``y_zero_point`` and saturate to its type.
QLinearConv runs its integer convolution through kiln's ``ConvInteger``
reference, so both share one convolution geometry (pads, strides,
dilations, groups, auto_pad).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from kiln.ops.reference._registry import RefContext, get_reference, reference

Inputs = list["np.ndarray | None"]
Attrs = dict[str, Any]


def _arg(inputs: Inputs, i: int) -> np.ndarray | None:
    return inputs[i] if i < len(inputs) else None


def _req(inputs: Inputs, i: int) -> np.ndarray:
    a = _arg(inputs, i)
    if a is None:
        raise ValueError(f"required input {i} is missing")
    return a


def _requantize(acc: np.ndarray, multiplier: np.ndarray, zero_point: np.ndarray) -> np.ndarray:
    """``saturate(round_half_even(acc * multiplier) + zero_point)`` in ``zero_point``'s dtype."""
    dtype = zero_point.dtype
    info = np.iinfo(dtype)
    y = np.rint(acc.astype(np.float64) * multiplier) + zero_point.astype(np.float64)
    return np.clip(y, info.min, info.max).astype(dtype)


# --------------------------------------------------------------------------- QLinearMatMul


def _per_row(p: np.ndarray, operand: np.ndarray) -> np.ndarray:
    """A 1-D per-row parameter of a 2-D ``a`` becomes a column ``(M, 1)``."""
    p = np.asarray(p)
    if p.ndim == 1 and p.size > 1 and operand.ndim == 2:
        return p.reshape(-1, 1)
    return p.reshape(()) if p.size == 1 and p.ndim <= 1 else p


def _per_column(p: np.ndarray) -> np.ndarray:
    p = np.asarray(p)
    return p.reshape(()) if p.size == 1 and p.ndim <= 1 else p


@reference("QLinearMatMul")
def qlinear_matmul_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """Quantized ``numpy.matmul``; scales and zero points per tensor, per row of
    ``a`` or per column of ``b``."""
    a, a_scale, a_zero = _req(inputs, 0), _req(inputs, 1), _req(inputs, 2)
    b, b_scale, b_zero = _req(inputs, 3), _req(inputs, 4), _req(inputs, 5)
    y_scale, y_zero = _req(inputs, 6), _req(inputs, 7)
    a_int = a.astype(np.int64) - _per_row(a_zero, a).astype(np.int64)
    b_int = b.astype(np.int64) - _per_column(b_zero).astype(np.int64)
    acc = np.matmul(a_int, b_int)
    multiplier = (
        _per_row(a_scale, a).astype(np.float64)
        * _per_column(b_scale).astype(np.float64)
        / np.asarray(y_scale, dtype=np.float64).reshape(())
    )
    return [_requantize(acc, multiplier, np.asarray(y_zero).reshape(()))]


# --------------------------------------------------------------------------- QLinearConv


@reference("QLinearConv")
def qlinear_conv_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """Quantized convolution; ``w_scale``/``w_zero_point`` may be per output
    channel; the int32 bias ``B`` is added to the integer accumulator."""
    x, x_scale, x_zero = _req(inputs, 0), _req(inputs, 1), _req(inputs, 2)
    w, w_scale, w_zero = _req(inputs, 3), _req(inputs, 4), _req(inputs, 5)
    y_scale, y_zero, bias = _req(inputs, 6), _req(inputs, 7), _arg(inputs, 8)
    conv_integer = get_reference("", "ConvInteger")
    assert conv_integer is not None
    (acc,) = conv_integer([x, w, x_zero, w_zero], attrs, RefContext(version=10))
    acc = acc.astype(np.int64)
    spatial = (1,) * (acc.ndim - 2)
    if bias is not None:
        acc = acc + bias.astype(np.int64).reshape((1, -1) + spatial)
    flat_ws = np.asarray(w_scale, dtype=np.float64).reshape(-1)
    ws = flat_ws.reshape((1, -1) + spatial) if flat_ws.size > 1 else flat_ws.reshape(())
    multiplier = float(np.asarray(x_scale).reshape(-1)[0]) * ws / float(np.asarray(y_scale).reshape(-1)[0])
    return [_requantize(acc, multiplier, np.asarray(y_zero).reshape(-1)[:1].reshape(()))]
