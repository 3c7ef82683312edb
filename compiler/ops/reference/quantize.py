"""Numpy references of ONNX's linear quantization ops.

QuantizeLinear, DequantizeLinear and DynamicQuantizeLinear, with per-tensor,
per-axis and blocked scales, and integer (8/16-bit, 4-bit, 2-bit), float8,
float4 and float6 quantized types.

Quantizing rounds half to even and saturates to the target's range; float8
targets follow Cast's ``saturate`` tables (see ``elementwise.to_float8``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from kiln.ops.reference._registry import RefContext, reference
from kiln.ops.reference.elementwise import (
    E8M0,
    FLOAT8_DTYPES,
    NARROW_INTS,
    _opt,
    _req,
    cast_array,
    int_range,
    is_int,
    onnx_dtype,
    to_float8,
    widen,
)

Inputs = list["np.ndarray | None"]
Attrs = dict[str, Any]


def _expand(param: np.ndarray, x_shape: tuple[int, ...], axis: int, block_size: int) -> np.ndarray:
    """Broadcasts a scale or zero point to ``x_shape``.

    A scalar (or one-element 1-D tensor) is per-tensor; a 1-D tensor is per-axis
    along ``axis``; with ``block_size > 0`` the parameter has ``x``'s rank and
    each of its entries along ``axis`` covers ``block_size`` consecutive elements.
    """
    rank = len(x_shape)
    if block_size > 0:
        if param.ndim != rank:
            raise ValueError("blocked quantization needs a scale of the input's rank")
        axis = axis % rank
        return np.repeat(param, block_size, axis=axis).take(np.arange(x_shape[axis]), axis=axis)
    if param.ndim == 0 or (param.ndim == 1 and param.size == 1):
        return param.reshape(())
    if param.ndim == 1:
        axis = axis % rank
        if param.shape[0] != x_shape[axis]:
            raise ValueError(f"per-axis parameter of length {param.shape[0]} does not match axis {axis}")
        shape = [1] * rank
        shape[axis] = param.shape[0]
        return param.reshape(shape)
    return param


def _to_real(a: np.ndarray) -> np.ndarray:
    """Quantized or scale values as float32 (int32 and wider integers as float64)."""
    w = widen(a)
    if w.dtype.kind in "iu" and w.dtype.itemsize >= 4:
        return w.astype(np.float64)
    return w.astype(np.float32) if w.dtype != np.float64 else w


def saturate_round(
    values: np.ndarray, to: np.dtype, *, saturate: bool = True, version: int = 28
) -> np.ndarray:
    """Rounds real values half-to-even and saturates them into quantized dtype ``to``."""
    if to in FLOAT8_DTYPES:
        return to_float8(values, to, saturate, version)
    if is_int(to):
        lo, hi = int_range(to)
        r = np.clip(np.rint(values), lo, hi)
        r = np.where(np.isnan(r), 0, r)
        store = np.int64 if to in NARROW_INTS else to
        return r.astype(store).astype(to)
    return cast_array(values, to, saturate=saturate, version=version)  # float4 / float6 saturate


@reference("QuantizeLinear")
def quantize_linear(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """``y = saturate(round(x / y_scale) + y_zero_point)``.

    The output type is the zero point's, else ``output_dtype`` (opset 21+),
    else uint8.  The division runs in the precision of ``y_scale`` unless the
    ``precision`` attribute (opset 23+) names another float type.
    """
    x, scale, zero_point = _req(inputs, 0), _req(inputs, 1), _opt(inputs, 2)
    if zero_point is not None:
        to = zero_point.dtype
    elif attrs.get("output_dtype", 0):
        to = onnx_dtype(attrs["output_dtype"])
    else:
        to = np.dtype(np.uint8)
    axis, block = attrs.get("axis", 1), attrs.get("block_size", 0)
    precision = onnx_dtype(attrs["precision"]) if attrs.get("precision", 0) else scale.dtype
    if precision == E8M0 or precision.kind in "iu":
        precision = np.dtype(np.float32)  # power-of-two or integer scales divide exactly in float32
    work = np.dtype(np.float64) if precision == np.float64 else np.dtype(np.float32)

    def in_precision(a: np.ndarray) -> np.ndarray:
        return widen(a).astype(precision).astype(work)

    with np.errstate(all="ignore"):
        q = in_precision(x) / _expand(in_precision(scale), x.shape, axis, block)
        q = q.astype(precision).astype(work)
        if is_int(to):
            q = np.rint(q)
        if zero_point is not None:
            q = q + _expand(widen(zero_point).astype(work), x.shape, axis, block)
        y = saturate_round(q, to, saturate=bool(attrs.get("saturate", 1)), version=ctx.version)
    return [y]


@reference("DequantizeLinear")
def dequantize_linear(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """``y = (x - x_zero_point) * x_scale`` in the output type.

    The output type is ``output_dtype`` (opset 23+) if given, else the
    scale's type (float32 for a FLOAT8E8M0 scale).
    """
    x, scale, zero_point = _req(inputs, 0), _req(inputs, 1), _opt(inputs, 2)
    axis, block = attrs.get("axis", 1), attrs.get("block_size", 0)
    if attrs.get("output_dtype", 0):
        out = onnx_dtype(attrs["output_dtype"])
    else:
        out = np.dtype(np.float32) if scale.dtype == E8M0 else scale.dtype

    with np.errstate(all="ignore"):
        if is_int(x.dtype):
            diff = widen(x).astype(np.int64)
            if zero_point is not None:
                diff = diff - _expand(widen(zero_point).astype(np.int64), x.shape, axis, block)
        else:
            diff = widen(x).astype(np.float32)
            if zero_point is not None:
                diff = diff - _expand(widen(zero_point).astype(np.float32), x.shape, axis, block)
        compute = np.float64 if out == np.float64 else np.float32
        y = diff.astype(compute) * _expand(widen(scale).astype(compute), x.shape, axis, block)
    return [np.asarray(y).astype(out)]


@reference("DynamicQuantizeLinear")
def dynamic_quantize_linear(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """uint8 quantization with scale and zero point derived from the data.

    ``scale = (max(0, max x) - min(0, min x)) / 255``,
    ``zero_point = saturate(round(-min(0, min x) / scale))``,
    ``y = saturate(round(x / scale) + zero_point)``; all in float32.  An
    all-zero (or empty) input would give scale 0; like onnxruntime, scale 1 is
    used instead, so ``y`` and the zero point are 0 rather than NaN-derived.
    """
    x = widen(_req(inputs, 0)).astype(np.float32)
    lo = np.float32(min(0.0, float(x.min()) if x.size else 0.0))
    hi = np.float32(max(0.0, float(x.max()) if x.size else 0.0))
    scale = np.float32((hi - lo) / np.float32(255)) if hi != lo else np.float32(1)
    with np.errstate(all="ignore"):
        zero_point = np.uint8(np.clip(np.rint(np.float32(0) - lo / scale), 0, 255))
        y = np.clip(np.rint(x / scale) + np.float32(zero_point), 0, 255).astype(np.uint8)
    return [y, np.array(scale, dtype=np.float32), np.array(zero_point, dtype=np.uint8)]
