"""Inference of reductions: Reduce*, ArgMax/ArgMin and TopK."""

from __future__ import annotations

from kiln.ir.types import TensorType
from kiln.ops.inference import infers
from kiln.ops.inference._context import InferContext
from kiln.ops.inference._util import INT64, fail, fmt_shape, norm_axis, sym_int

_REDUCE = (
    "ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
    "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare",
)  # fmt: skip


def _axes_from_input(ctx: InferContext) -> bool:
    """Whether this op version takes ``axes`` as an input (ReduceSum 13+, the others 18+)."""
    return ctx.version >= (13 if ctx.node.op == "ReduceSum" else 18)


@infers(*_REDUCE)
def infer_reduce(ctx: InferContext) -> list:
    t = ctx.tensor(0)
    if t is None:
        return [None]
    shape = t.shape
    keepdims = ctx.attr("keepdims", 1)
    if _axes_from_input(ctx):
        if ctx.has_input(1):
            axes = ctx.sym_value(1)
            if axes is None or any(a.__class__ is not int for a in axes):
                if shape is None:
                    return [t if keepdims else TensorType(t.dtype, None)]
                if keepdims:
                    return [TensorType(t.dtype, tuple(1 if d == 1 else None for d in shape))]
                n = ctx.shape(1)
                if n is not None and len(n) == 1 and n[0].__class__ is int:
                    return [TensorType(t.dtype, (None,) * (len(shape) - n[0]))]
                return [TensorType(t.dtype, None)]
        else:
            axes = ()
        noop = ctx.attr("noop_with_empty_axes", 0)
    else:
        axes = ctx.attr("axes") or ()
        noop = 0
    if not axes and noop:
        return [t]
    if shape is None:
        return [TensorType(t.dtype, None)]
    r = len(shape)
    reduced = set(range(r)) if not axes else {norm_axis(ctx, a, r) for a in axes}
    if keepdims:
        out = tuple(1 if i in reduced else d for i, d in enumerate(shape))
    else:
        out = tuple(d for i, d in enumerate(shape) if i not in reduced)
    return [TensorType(t.dtype, out)]


@infers("ArgMax", "ArgMin")
def infer_arg(ctx: InferContext) -> list:
    shape = ctx.shape(0)
    if shape is None:
        return [TensorType(INT64, None)]
    axis = norm_axis(ctx, ctx.attr("axis", 0), len(shape))
    if ctx.attr("keepdims", 1):
        out = shape[:axis] + (1,) + shape[axis + 1 :]
    else:
        out = shape[:axis] + shape[axis + 1 :]
    return [TensorType(INT64, out)]


@infers("TopK")
def infer_topk(ctx: InferContext) -> list:
    t = ctx.tensor(0)
    if t is None:
        return [None, None]
    shape = t.shape
    if shape is None:
        return [TensorType(t.dtype, None), TensorType(INT64, None)]
    axis = norm_axis(ctx, ctx.attr("axis", -1), len(shape))
    if ctx.version >= 10:
        k = sym_int(ctx, 1)
        if k.__class__ is not int and k.__class__ is not str:
            c = ctx.const(1)
            k = int(c.reshape(-1)[0]) if c is not None and c.size == 1 else None
    else:
        k = ctx.attr("k")
    if k.__class__ is int:
        if k < 0:
            raise fail(ctx, f"k is {k}")
        d = shape[axis]
        if d.__class__ is int and k > d:
            raise fail(ctx, f"k={k} is larger than axis {axis} of {fmt_shape(shape)}")
    out = shape[:axis] + (k,) + shape[axis + 1 :]
    return [TensorType(t.dtype, out), TensorType(INT64, out)]
