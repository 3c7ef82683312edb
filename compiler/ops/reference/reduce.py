"""Numpy references of ONNX's reductions, scans, normalisations and linear algebra.

Reduce* (all versions), ArgMax/ArgMin, CumSum/CumProd, Softmax/LogSoftmax/
Hardmax, TopK, Einsum, MatMul, MatMulInteger, Gemm, Det and Trilu.

As in ``elementwise``, narrow floats are accumulated in float32 and rounded
back once; integer reductions accumulate in their own dtype (numpy would
otherwise widen int8/int32 sums to int64).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from kiln.ops.reference._registry import RefContext, reference
from kiln.ops.reference.elementwise import _opt, _req, _text, is_float, is_int, widen

Inputs = list["np.ndarray | None"]
Attrs = dict[str, Any]


def _norm_axis(axis: int, rank: int) -> int:
    if not -max(rank, 1) <= axis < max(rank, 1):
        raise ValueError(f"axis {axis} out of range for rank {rank}")
    return axis % rank if rank else 0


# ---------------------------------------------------------------------------
# Reduce*
# ---------------------------------------------------------------------------


def _reduce_axes(inputs: Inputs, attrs: Attrs, ctx: RefContext, since: int) -> tuple[int, ...] | None:
    """The axes to reduce: ``None`` means all of them, ``()`` means none.

    From opset ``since`` on, ``axes`` is an optional input and an empty one
    reduces everything unless ``noop_with_empty_axes`` is set; before that it
    is an attribute and its absence reduces everything.
    """
    rank = _req(inputs, 0).ndim
    if ctx.version >= since:
        given = _opt(inputs, 1)
        axes = [] if given is None else [int(a) for a in np.asarray(given).ravel()]
        noop = bool(attrs.get("noop_with_empty_axes", 0))
    else:
        axes, noop = list(attrs.get("axes", [])), False
    if not axes:
        return () if noop else None
    return tuple(sorted({_norm_axis(a, rank) for a in axes}))


def _acc(dt: np.dtype) -> np.dtype:
    """Accumulator dtype: float32 for narrow floats, the dtype itself otherwise."""
    return np.dtype(np.float32) if dt == np.float16 or (is_float(dt) and dt.kind != "f") else dt


def _as_real(x: np.ndarray) -> np.ndarray:
    """Input to float math: ints become float64, narrow floats float32."""
    w = widen(x)
    return w.astype(np.float64) if w.dtype.kind in "iub" else w


def _extreme(dt: np.dtype, largest: bool) -> Any:
    """The identity of max (``largest=False`` -> lowest value) or min reductions."""
    if dt == np.bool_:
        return largest
    if dt.kind == "f":
        return np.inf if largest else -np.inf
    info = np.iinfo(dt)
    return info.max if largest else info.min


def _sum(x: np.ndarray, axes: Any, keep: bool) -> np.ndarray:
    return np.sum(widen(x), axis=axes, keepdims=keep, dtype=_acc(x.dtype))


def _r_max(x: np.ndarray, axes: Any, keep: bool) -> np.ndarray:
    w = widen(x)
    return np.max(w, axis=axes, keepdims=keep, initial=_extreme(w.dtype, largest=False))


def _r_min(x: np.ndarray, axes: Any, keep: bool) -> np.ndarray:
    w = widen(x)
    return np.min(w, axis=axes, keepdims=keep, initial=_extreme(w.dtype, largest=True))


def _r_mean(x: np.ndarray, axes: Any, keep: bool) -> np.ndarray:
    """Sum divided by the number of reduced elements (NaN over an empty set)."""
    w = _as_real(x)
    reduced = range(w.ndim) if axes is None else axes
    count = math.prod(w.shape[a] for a in reduced)
    return np.sum(w, axis=axes, keepdims=keep) / count


def _log_sum_exp(x: np.ndarray, axes: Any, keep: bool) -> np.ndarray:
    """``log(sum(exp(x)))`` computed stably by factoring out the maximum."""
    w = _as_real(x)
    m = np.max(w, axis=axes, keepdims=True, initial=-np.inf)
    m = np.where(np.isfinite(m), m, 0)
    out = np.log(np.sum(np.exp(w - m), axis=axes, keepdims=True)) + m
    if not keep:
        out = out.reshape(np.sum(w, axis=axes, keepdims=False).shape)
    return out


_REDUCERS: dict[str, tuple[int, Callable[[np.ndarray, Any, bool], np.ndarray]]] = {
    # op: (first opset where axes is an input, implementation)
    "ReduceSum": (13, _sum),
    "ReduceMean": (18, _r_mean),
    "ReduceMax": (18, _r_max),
    "ReduceMin": (18, _r_min),
    "ReduceProd": (18, lambda x, a, k: np.prod(widen(x), axis=a, keepdims=k, dtype=_acc(x.dtype))),
    "ReduceL1": (18, lambda x, a, k: np.sum(np.abs(widen(x)), axis=a, keepdims=k, dtype=_acc(x.dtype))),
    "ReduceL2": (18, lambda x, a, k: np.sqrt(np.sum(np.square(_as_real(x)), axis=a, keepdims=k))),
    "ReduceLogSum": (18, lambda x, a, k: np.log(np.sum(_as_real(x), axis=a, keepdims=k))),
    "ReduceLogSumExp": (18, _log_sum_exp),
    "ReduceSumSquare": (
        18,
        lambda x, a, k: np.sum(np.square(widen(x)), axis=a, keepdims=k, dtype=_acc(x.dtype)),
    ),
}


def _make_reduce(since: int, fn: Callable[[np.ndarray, Any, bool], np.ndarray]) -> Callable[..., list]:
    def ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
        x = _req(inputs, 0)
        axes = _reduce_axes(inputs, attrs, ctx, since)
        keep = bool(attrs.get("keepdims", 1))
        with np.errstate(all="ignore"):
            out = np.asarray(fn(x, axes, keep))
            if is_int(x.dtype) and out.dtype.kind == "f":
                out = np.trunc(np.where(np.isfinite(out), out, 0))
            return [out.astype(x.dtype)]

    return ref


for _name, (_since, _fn) in _REDUCERS.items():
    reference(_name)(_make_reduce(_since, _fn))


# ---------------------------------------------------------------------------
# ArgMax / ArgMin, CumSum / CumProd
# ---------------------------------------------------------------------------


def _arg_extreme(largest: bool) -> Callable[..., list]:
    def ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
        """Index of the first (or, with ``select_last_index``, last) extreme along ``axis``."""
        x = widen(_req(inputs, 0))
        axis = _norm_axis(attrs.get("axis", 0), x.ndim)
        pick = np.argmax if largest else np.argmin
        if attrs.get("select_last_index", 0):
            idx = x.shape[axis] - 1 - pick(np.flip(x, axis), axis=axis)
        else:
            idx = pick(x, axis=axis)
        if attrs.get("keepdims", 1):
            idx = np.expand_dims(idx, axis)
        return [np.asarray(idx, dtype=np.int64)]

    return ref


reference("ArgMax")(_arg_extreme(largest=True))
reference("ArgMin")(_arg_extreme(largest=False))


def _cumulative(ufunc: np.ufunc, identity: int) -> Callable[..., list]:
    def ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
        """Running sum/product along the ``axis`` input; ``exclusive`` and ``reverse`` attributes."""
        x = _req(inputs, 0)
        axis = _norm_axis(int(np.asarray(_req(inputs, 1)).ravel()[0]), x.ndim)
        reverse = bool(attrs.get("reverse", 0))
        w = widen(x)
        if reverse:
            w = np.flip(w, axis)
        with np.errstate(all="ignore"):
            out = ufunc.accumulate(w, axis=axis, dtype=_acc(x.dtype))
        if attrs.get("exclusive", 0):
            shifted = np.full_like(out, identity)
            src, dst = [slice(None)] * x.ndim, [slice(None)] * x.ndim
            src[axis], dst[axis] = slice(0, -1), slice(1, None)
            shifted[tuple(dst)] = out[tuple(src)]
            out = shifted
        if reverse:
            out = np.flip(out, axis)
        return [out.astype(x.dtype)]

    return ref


reference("CumSum")(_cumulative(np.add, 0))
reference("CumProd")(_cumulative(np.multiply, 1))


# ---------------------------------------------------------------------------
# Softmax family
# ---------------------------------------------------------------------------


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def _log_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    shifted = x - np.max(x, axis=axis, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


def _hardmax(x: np.ndarray, axis: int) -> np.ndarray:
    """One-hot of the first maximum along ``axis``."""
    out = np.zeros_like(x)
    if x.size:
        idx = np.expand_dims(np.argmax(x, axis=axis), axis)
        np.put_along_axis(out, idx, 1, axis=axis)
    return out


def _softmax_like(fn: Callable[[np.ndarray, int], np.ndarray]) -> Callable[..., list]:
    def ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
        """Before opset 13 the input is flattened to 2-D at ``axis`` (default 1) and the
        op runs over the second dimension; from 13 on it runs along ``axis`` (default -1)."""
        x = _req(inputs, 0)
        w = widen(x)
        with np.errstate(all="ignore"):
            if ctx.version < 13:
                axis = _norm_axis(attrs.get("axis", 1), x.ndim)
                rows = math.prod(x.shape[:axis])
                out = fn(w.reshape(rows, math.prod(x.shape[axis:])), 1).reshape(x.shape)
            else:
                out = fn(w, _norm_axis(attrs.get("axis", -1), x.ndim))
        return [out.astype(x.dtype)]

    return ref


reference("Softmax")(_softmax_like(_softmax))
reference("LogSoftmax")(_softmax_like(_log_softmax))
reference("Hardmax")(_softmax_like(_hardmax))


@reference("TopK")
def top_k(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """The ``k`` largest (or smallest) values along ``axis`` and their int64 indices.

    ``k`` is an attribute before opset 10 and an input after; ``largest`` and
    ``sorted`` exist from opset 11.  Equal values keep ascending index order,
    and the output is always sorted (which ``sorted=0`` permits).
    """
    x = _req(inputs, 0)
    k = int(attrs["k"]) if ctx.version < 10 else int(np.asarray(_req(inputs, 1)).ravel()[0])
    axis = _norm_axis(attrs.get("axis", -1), x.ndim)
    w = widen(x)
    if attrs.get("largest", 1):
        # A stable ascending sort of the reversed axis, read backwards, is a
        # descending sort that breaks ties by the lower original index.
        order = np.flip(np.argsort(np.flip(w, axis), axis=axis, kind="stable"), axis)
        order = x.shape[axis] - 1 - order
    else:
        order = np.argsort(w, axis=axis, kind="stable")
    idx = np.take(order, np.arange(k), axis=axis)
    return [np.take_along_axis(x, idx, axis=axis), idx.astype(np.int64)]


# ---------------------------------------------------------------------------
# linear algebra
# ---------------------------------------------------------------------------


@reference("Einsum")
def einsum(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """numpy einsum on the equation with whitespace removed; output in the inputs' dtype."""
    equation = _text(attrs["equation"]).replace(" ", "")
    operands = [widen(a) for a in inputs if a is not None]
    return [np.asarray(np.einsum(equation, *operands)).astype(_req(inputs, 0).dtype)]


@reference("MatMul")
def matmul(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """numpy.matmul semantics (1-D operands are promoted then squeezed, batch dims broadcast)."""
    a, b = _req(inputs, 0), _req(inputs, 1)
    return [np.asarray(np.matmul(widen(a), widen(b))).astype(a.dtype)]


@reference("MatMulInteger")
def matmul_integer(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """``(A - a_zero_point) @ (B - b_zero_point)`` in int32.

    ``a_zero_point`` is a scalar or per row of A (an M-vector or [..., M, 1]);
    ``b_zero_point`` is a scalar or per column of B (an N-vector or [..., 1, N]).
    """
    a, b = _req(inputs, 0).astype(np.int32), _req(inputs, 1).astype(np.int32)
    a_zp, b_zp = _opt(inputs, 2), _opt(inputs, 3)
    if a_zp is not None:
        a_zp = a_zp.astype(np.int32)
        if a_zp.ndim == 1 and a.ndim >= 2 and a_zp.size == a.shape[-2] and a_zp.size > 1:
            a_zp = a_zp.reshape(-1, 1)
        a = a - a_zp
    if b_zp is not None:
        b = b - b_zp.astype(np.int32)
    return [np.matmul(a, b).astype(np.int32)]


@reference("Gemm")
def gemm(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """``alpha * A' @ B' + beta * C`` with optional transposes and a broadcast, optional C."""
    a, b, c = _req(inputs, 0), _req(inputs, 1), _opt(inputs, 2)
    alpha, beta = attrs.get("alpha", 1.0), attrs.get("beta", 1.0)
    wa, wb = widen(a), widen(b)
    if attrs.get("transA", 0):
        wa = wa.T
    if attrs.get("transB", 0):
        wb = wb.T
    with np.errstate(all="ignore"):
        y = np.matmul(wa, wb)
        if alpha != 1.0:
            y = alpha * y
        if c is not None and beta != 0.0:
            wc = widen(c)
            y = y + (wc if beta == 1.0 else beta * wc)
        return [np.asarray(y).astype(a.dtype)]


@reference("Det")
def det(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """Determinant of each square matrix in the last two dimensions."""
    x = _req(inputs, 0)
    w = widen(x)
    if w.dtype.kind != "f":
        w = w.astype(np.float64)
    return [np.asarray(np.linalg.det(w)).astype(x.dtype)]


@reference("Trilu")
def trilu(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """Keeps the upper (``upper=1``, default) or lower triangle of the last two dims.

    The optional ``k`` input shifts the diagonal: with ``upper`` elements with
    ``j - i >= k`` are kept, otherwise those with ``j - i <= k``.
    """
    x = _req(inputs, 0)
    k_in = _opt(inputs, 1)
    k = int(np.asarray(k_in).ravel()[0]) if k_in is not None and np.size(k_in) else 0
    rows, cols = x.shape[-2], x.shape[-1]
    if attrs.get("upper", 1):
        keep = ~np.tri(rows, cols, k - 1, dtype=np.bool_)
    else:
        keep = np.tri(rows, cols, k, dtype=np.bool_)
    return [np.where(keep, x, np.zeros_like(x))]
