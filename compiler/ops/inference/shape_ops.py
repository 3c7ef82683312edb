"""Inference of shape-manipulating ops, with symbolic value propagation.

Shape subgraphs (``Shape -> Gather -> Concat -> Reshape``) are followed
through ``sym_value`` (see :mod:`kiln.ops.inference._context`): ``Shape``,
``Size``, ``Gather``/``Slice``/``Concat``/``Split``/``(Un)Squeeze``/``Reshape``
of small integer tensors, ``ConstantOfShape`` and ``Range`` produce known
elements; ``Reshape``, ``Expand``, ``Tile``, ``ConstantOfShape``, ``Range``,
``Pad``, ``Slice`` and ``OneHot`` consume them.
"""

from __future__ import annotations

import math

from kiln.ir.dtypes import DType
from kiln.ir.types import TensorType
from kiln.ops.inference import infers
from kiln.ops.inference._context import InferContext
from kiln.ops.inference._util import (
    INT64,
    TO_END,
    broadcast_dim,
    ceil_div,
    dim_add,
    dim_mul,
    dim_prod,
    fail,
    fmt_shape,
    is_int_dtype,
    norm_axis,
    set_sym,
    sym_int,
    unify,
)


def _axes_of(ctx: InferContext, input_index: int, attr: str = "axes") -> tuple[bool, list[int] | None]:
    """Axes given as an input (newer opsets) or an attribute (older): (given, values or None)."""
    if ctx.has_input(input_index):
        v = ctx.sym_value(input_index)
        if v is None or any(a.__class__ is not int for a in v):
            return True, None
        return True, list(v)
    a = ctx.attr(attr)
    if a is None:
        return False, None
    return True, [int(x) for x in a]


def _pass_sym(ctx: InferContext, out_shape: tuple | None) -> None:
    """Output 0 holds input 0's elements, rearranged: keep them when the output is 0-D or 1-D."""
    if out_shape is not None and len(out_shape) <= 1:
        sym = ctx.sym_value(0)
        if sym is not None:
            set_sym(ctx, 0, sym)


# --------------------------------------------------------------------------- Shape, Size


@infers("Shape")
def infer_shape(ctx: InferContext) -> list:
    shape = ctx.shape(0)
    if shape is None:
        return [TensorType(INT64, (None,))]
    r = len(shape)
    start = ctx.attr("start", 0)
    end = ctx.attr("end")
    start = min(max(start + r if start < 0 else start, 0), r)
    end = r if end is None else min(max(end + r if end < 0 else end, 0), r)
    dims = shape[start:end] if start < end else ()
    set_sym(ctx, 0, dims)
    return [TensorType(INT64, (len(dims),))]


@infers("Size")
def infer_size(ctx: InferContext) -> list:
    shape = ctx.shape(0)
    if shape is not None:
        n = dim_prod(shape)
        if n is not None:
            set_sym(ctx, 0, (n,))
    return [TensorType(INT64, ())]


# --------------------------------------------------------------------------- Reshape family


def reshape_dims(ctx: InferContext, in_shape: tuple | None, target: tuple, allowzero: bool) -> tuple:
    """The output shape of a Reshape from the known target elements (ints, symbols, None)."""
    out: list = []
    minus_one = -1
    for i, t in enumerate(target):
        if t.__class__ is int:
            if t == 0 and not allowzero:
                out.append(in_shape[i] if in_shape is not None and i < len(in_shape) else None)
                if in_shape is not None and i >= len(in_shape):
                    raise fail(ctx, f"shape element {i} is 0 (copy) but the input has rank {len(in_shape)}")
                continue
            if t == -1:
                if minus_one >= 0:
                    raise fail(ctx, "shape has more than one -1")
                minus_one = i
                out.append(None)
                continue
            if t < -1:
                raise fail(ctx, f"shape element {i} is {t}")
        out.append(t)
    if in_shape is None:
        return tuple(out)
    # Element counts as (static product, multiset of symbols); None anywhere: unknown.
    in_n, in_syms = _factor(in_shape)
    if minus_one >= 0:
        rest = out[:minus_one] + out[minus_one + 1 :]
        out_n, out_syms = _factor(rest)
        if in_n is not None and out_n is not None:
            remaining = list(in_syms)
            ok = True
            for s in out_syms:
                if s in remaining:
                    remaining.remove(s)
                else:
                    ok = False
                    break
            if ok:
                if out_n == 0:
                    if not remaining and in_n != 0:
                        raise fail(ctx, f"cannot reshape {fmt_shape(in_shape)} to {fmt_shape(target)}")
                elif in_n % out_n:
                    if not remaining:
                        raise fail(ctx, f"cannot reshape {fmt_shape(in_shape)} to {fmt_shape(target)}")
                elif not remaining:
                    out[minus_one] = in_n // out_n
                elif len(remaining) == 1 and in_n == out_n:
                    out[minus_one] = remaining[0]
    elif in_n is not None and not in_syms:
        out_n, out_syms = _factor(out)
        if out_n is not None and not out_syms and out_n != in_n:
            raise fail(
                ctx, f"cannot reshape {fmt_shape(in_shape)} ({in_n} elements) to {fmt_shape(tuple(out))}"
            )
    return tuple(out)


def _factor(dims) -> tuple:
    n = 1
    syms: list = []
    for d in dims:
        if d.__class__ is int:
            n *= d
        elif d is None:
            return None, None
        else:
            syms.append(d)
    return n, syms


@infers("Reshape")
def infer_reshape(ctx: InferContext) -> list:
    t = ctx.tensor(0)
    if t is None:
        return [None]
    in_shape = t.shape
    if ctx.has_input(1):
        target = ctx.sym_value(1)
        if target is None:
            ts = ctx.shape(1)
            if ts is not None and len(ts) == 1 and ts[0].__class__ is int:
                return [TensorType(t.dtype, (None,) * ts[0])]
            return [TensorType(t.dtype, None)]
    else:  # opset 1-4: shape attribute
        a = ctx.attr("shape")
        if a is None:
            return [TensorType(t.dtype, None)]
        target = tuple(int(x) for x in a)
    allowzero = bool(ctx.attr("allowzero", 0)) if ctx.version >= 14 else False
    out = reshape_dims(ctx, in_shape, target, allowzero)
    _pass_sym(ctx, out)
    return [TensorType(t.dtype, out)]


@infers("Flatten")
def infer_flatten(ctx: InferContext) -> list:
    t = ctx.tensor(0)
    if t is None:
        return [None]
    shape = t.shape
    if shape is None:
        return [TensorType(t.dtype, (None, None))]
    r = len(shape)
    axis = ctx.attr("axis", 1)
    if axis < -r or axis > r:
        raise fail(ctx, f"axis {axis} is out of range for rank {r}")
    if axis < 0:
        axis += r
    return [TensorType(t.dtype, (dim_prod(shape[:axis]), dim_prod(shape[axis:])))]


@infers("Squeeze")
def infer_squeeze(ctx: InferContext) -> list:
    t = ctx.tensor(0)
    if t is None:
        return [None]
    shape = t.shape
    given, axes = _axes_of(ctx, 1)
    if shape is None:
        return [TensorType(t.dtype, None)]
    r = len(shape)
    if given and axes is None:
        n = ctx.shape(1)
        if n is not None and len(n) == 1 and n[0].__class__ is int:
            return [TensorType(t.dtype, (None,) * (r - n[0]))]
        return [TensorType(t.dtype, None)]
    if not given or not axes:
        if any(d.__class__ is not int for d in shape if d != 1):
            return [TensorType(t.dtype, None)]
        out = tuple(d for d in shape if d != 1)
    else:
        drop = set()
        for a in axes:
            a = norm_axis(ctx, a, r)
            d = shape[a]
            if d.__class__ is int and d != 1:
                raise fail(ctx, f"cannot squeeze axis {a} of size {d} in {fmt_shape(shape)}")
            drop.add(a)
        out = tuple(d for i, d in enumerate(shape) if i not in drop)
    _pass_sym(ctx, out)
    return [TensorType(t.dtype, out)]


@infers("Unsqueeze")
def infer_unsqueeze(ctx: InferContext) -> list:
    t = ctx.tensor(0)
    if t is None:
        return [None]
    shape = t.shape
    _, axes = _axes_of(ctx, 1)
    if shape is None:
        return [TensorType(t.dtype, None)]
    if axes is None:
        n = ctx.shape(1)
        if n is not None and len(n) == 1 and n[0].__class__ is int:
            return [TensorType(t.dtype, (None,) * (len(shape) + n[0]))]
        return [TensorType(t.dtype, None)]
    r = len(shape) + len(axes)
    norm = set()
    for a in axes:
        a = norm_axis(ctx, a, r)
        if a in norm:
            raise fail(ctx, f"axis {a} given twice")
        norm.add(a)
    it = iter(shape)
    out = tuple(1 if i in norm else next(it) for i in range(r))
    _pass_sym(ctx, out)
    return [TensorType(t.dtype, out)]


@infers("Transpose")
def infer_transpose(ctx: InferContext) -> list:
    t = ctx.tensor(0)
    if t is None:
        return [None]
    shape = t.shape
    perm = ctx.attr("perm")
    if shape is None:
        return [TensorType(t.dtype, None if perm is None else (None,) * len(perm))]
    if perm is None:
        return [TensorType(t.dtype, shape[::-1])]
    if len(perm) != len(shape) or sorted(perm) != list(range(len(shape))):
        raise fail(
            ctx, f"perm {list(perm)} is not a permutation of the {len(shape)} axes of {fmt_shape(shape)}"
        )
    return [TensorType(t.dtype, tuple(shape[p] for p in perm))]


# --------------------------------------------------------------------------- Expand, Tile, Concat, Split


def _shape_operand(ctx: InferContext, index: int) -> tuple | None:
    """A 1-D shape operand's known elements, or a tuple of ``None`` of its static length."""
    v = ctx.sym_value(index)
    if v is not None:
        return v
    s = ctx.shape(index)
    if s is not None and len(s) == 1 and s[0].__class__ is int:
        return (None,) * s[0]
    return None


@infers("Expand")
def infer_expand(ctx: InferContext) -> list:
    t = ctx.tensor(0)
    if t is None:
        return [None]
    target = _shape_operand(ctx, 1)
    shape = t.shape
    if target is None or shape is None:
        return [TensorType(t.dtype, None)]
    n = max(len(shape), len(target))
    a = (1,) * (n - len(shape)) + shape
    b = (1,) * (n - len(target)) + target
    out = []
    for x, y in zip(a, b):
        try:
            out.append(broadcast_dim(x, y))
        except ValueError:
            raise fail(ctx, f"cannot expand {fmt_shape(shape)} to {fmt_shape(target)}") from None
    return [TensorType(t.dtype, tuple(out))]


@infers("Tile")
def infer_tile(ctx: InferContext) -> list:
    t = ctx.tensor(0)
    if t is None:
        return [None]
    shape = t.shape
    reps = _shape_operand(ctx, 1)
    if shape is None:
        return [TensorType(t.dtype, None if reps is None else (None,) * len(reps))]
    if reps is None:
        return [TensorType(t.dtype, (None,) * len(shape))]
    if len(reps) != len(shape):
        raise fail(ctx, f"repeats has {len(reps)} elements for input {fmt_shape(shape)}")
    return [TensorType(t.dtype, tuple(dim_mul(d, r) for d, r in zip(shape, reps)))]


@infers("Concat")
def infer_concat(ctx: InferContext) -> list:
    types = ctx.input_types
    dtype = None
    shapes = []
    for i, t in enumerate(types):
        if t is None or t.__class__ is not TensorType:
            shapes.append(None)
            continue
        if dtype is None:
            dtype = t.dtype
        elif t.dtype != dtype:
            raise fail(ctx, f"input {i} has element type {t.dtype.short}, expected {dtype.short}")
        shapes.append(t.shape)
    if dtype is None:
        return [None]
    axis = ctx.attr("axis")
    if axis is None:
        if ctx.version >= 4:
            raise fail(ctx, "missing attribute 'axis'")
        axis = 1
    known = [s for s in shapes if s is not None]
    if not known:
        return [TensorType(dtype, None)]
    r = len(known[0])
    axis = norm_axis(ctx, axis, r)
    out = list(known[0])
    total = 0
    for s in shapes:
        if s is None:
            total = None
            continue
        if len(s) != r:
            raise fail(ctx, f"inputs have different ranks: {fmt_shape(known[0])} and {fmt_shape(s)}")
        for i in range(r):
            if i == axis:
                total = dim_add(total, s[i])
            elif s is not known[0]:
                out[i] = unify(
                    ctx,
                    out[i],
                    s[i],
                    lambda i=i, s=s: (
                        f"dim {i} differs between inputs {fmt_shape(known[0])} and {fmt_shape(s)}"
                    ),
                )
    out[axis] = total
    if r == 1 and is_int_dtype(dtype):
        parts = []
        for i in range(len(types)):
            v = ctx.sym_value(i)
            if v is None:
                parts = None
                break
            parts.extend(v)
        if parts is not None:
            set_sym(ctx, 0, parts)
    return [TensorType(dtype, tuple(out))]


@infers("Split")
def infer_split(ctx: InferContext) -> list:
    t = ctx.tensor(0)
    n = ctx.num_outputs
    if t is None:
        return [None] * n
    shape = t.shape
    if shape is None:
        return [TensorType(t.dtype, None)] * n
    r = len(shape)
    axis = norm_axis(ctx, ctx.attr("axis", 0), r)
    dim = shape[axis]
    sizes: list | None = None
    if ctx.has_input(1):
        sizes = ctx.sym_value(1)
        if sizes is None:
            sizes = [None] * n
        elif not sizes:  # an empty split: equal parts
            sizes = None
    elif ctx.attr("split") is not None:
        sizes = [int(s) for s in ctx.attr("split")]
    if sizes is not None:
        if len(sizes) != n:
            raise fail(ctx, f"split has {len(sizes)} sizes for {n} outputs")
        if dim.__class__ is int and all(s.__class__ is int for s in sizes) and sum(sizes) != dim:
            raise fail(ctx, f"split sizes {list(sizes)} do not add up to dim {axis} of {fmt_shape(shape)}")
    else:
        num = ctx.attr("num_outputs")
        if num is not None and num != n:
            raise fail(ctx, f"num_outputs is {num} but the node has {n} outputs")
        if dim.__class__ is int:
            if num is not None:
                chunk = ceil_div(dim, n)
                sizes = [chunk] * (n - 1) + [dim - chunk * (n - 1)]
                if sizes[-1] < 0:
                    raise fail(ctx, f"cannot split dim {dim} into {n} chunks")
            else:
                if dim % n:
                    raise fail(ctx, f"dim {axis} of {fmt_shape(shape)} does not split evenly into {n}")
                sizes = [dim // n] * n
        else:
            sizes = [dim if n == 1 else None] * n
    outs = []
    for s in sizes:
        out = list(shape)
        out[axis] = s
        outs.append(TensorType(t.dtype, tuple(out)))
    if r == 1 and all(s.__class__ is int for s in sizes):
        v = ctx.sym_value(0)
        if v is not None and len(v) == sum(sizes):
            pos = 0
            for i, s in enumerate(sizes):
                set_sym(ctx, i, v[pos : pos + s])
                pos += s
    return outs


# --------------------------------------------------------------------------- Slice


def slice_dim(d, start: int, end: int, step: int):
    """Length of one sliced axis of size ``d`` (int, symbol or None)."""
    if d.__class__ is int:
        s, e = _clamp(d, start, end, step)
        if step > 0:
            return max(0, ceil_div(e - s, step))
        return max(0, ceil_div(s - e, -step))
    if step == 1 and start == 0 and end >= TO_END:
        return d
    if step == -1 and (start == -1 or start >= TO_END) and end <= -TO_END - 1:
        return d
    return None


def _clamp(d: int, start: int, end: int, step: int) -> tuple[int, int]:
    if start < 0:
        start += d
    if end < 0:
        end += d
    if step > 0:
        start = min(max(start, 0), d)
        end = min(max(end, 0), d)
    else:
        start = min(max(start, 0), d - 1)
        end = min(max(end, -1), d - 1)
    return start, end


@infers("Slice")
def infer_slice(ctx: InferContext) -> list:
    t = ctx.tensor(0)
    if t is None:
        return [None]
    shape = t.shape
    if ctx.version < 10:
        starts, ends, axes = ctx.attr("starts"), ctx.attr("ends"), ctx.attr("axes")
        steps = None
        if starts is None or ends is None:
            raise fail(ctx, "missing attribute 'starts' or 'ends'")
    else:
        starts = ctx.sym_value(1)
        ends = ctx.sym_value(2)
        given_axes, axes = _axes_of(ctx, 3)
        steps = ctx.sym_value(4) if ctx.has_input(4) else None
        if given_axes and axes is None or ctx.has_input(4) and steps is None:
            return [TensorType(t.dtype, None if shape is None else (None,) * len(shape))]
    if shape is None:
        return [TensorType(t.dtype, None)]
    r = len(shape)
    if (
        starts is None
        or ends is None
        or any(x.__class__ is not int for x in starts)
        or any(x.__class__ is not int for x in ends)
        or steps is not None
        and any(x.__class__ is not int for x in steps)
    ):
        if axes is None:
            return [TensorType(t.dtype, (None,) * r)]
        out = list(shape)
        for a in axes:
            out[norm_axis(ctx, a, r)] = None
        return [TensorType(t.dtype, tuple(out))]
    if len(starts) != len(ends):
        raise fail(ctx, f"starts has {len(starts)} elements and ends {len(ends)}")
    if axes is None:
        axes = range(len(starts))
    elif len(axes) != len(starts):
        raise fail(ctx, f"axes has {len(axes)} elements and starts {len(starts)}")
    if steps is None:
        steps = (1,) * len(starts)
    elif len(steps) != len(starts):
        raise fail(ctx, f"steps has {len(steps)} elements and starts {len(starts)}")
    out = list(shape)
    seen = set()
    plan = []
    for a, s, e, st in zip(axes, starts, ends, steps):
        a = norm_axis(ctx, a, r)
        if a in seen:
            raise fail(ctx, f"axis {a} is sliced twice")
        seen.add(a)
        if st == 0:
            raise fail(ctx, "step is 0")
        out[a] = slice_dim(shape[a], s, e, st)
        plan.append((s, e, st))
    if r == 1 and len(plan) == 1:
        v = ctx.sym_value(0)
        if v is not None:
            s, e, st = plan[0]
            s, e = _clamp(len(v), s, e, st)
            set_sym(ctx, 0, tuple(v[i] for i in range(s, e, st)))
    return [TensorType(t.dtype, tuple(out))]


# --------------------------------------------------------------------------- gather / scatter


@infers("Gather")
def infer_gather(ctx: InferContext) -> list:
    t = ctx.tensor(0)
    if t is None:
        return [None]
    shape = t.shape
    ishape = ctx.shape(1)
    if shape is None or ishape is None:
        return [TensorType(t.dtype, None)]
    r = len(shape)
    if r == 0:
        raise fail(ctx, "data must have rank >= 1")
    axis = norm_axis(ctx, ctx.attr("axis", 0), r)
    out = shape[:axis] + ishape + shape[axis + 1 :]
    if r == 1 and len(ishape) <= 1:
        v = ctx.sym_value(0)
        if v is not None:
            idx = ctx.sym_value(1)
            if idx is not None and all(i.__class__ is int and -len(v) <= i < len(v) for i in idx):
                set_sym(ctx, 0, tuple(v[i] for i in idx))
    return [TensorType(t.dtype, out)]


@infers("GatherElements")
def infer_gather_elements(ctx: InferContext) -> list:
    dtype = ctx.dtype(0)
    if dtype is None:
        return [None]
    shape, ishape = ctx.shape(0), ctx.shape(1)
    if shape is not None and ishape is not None and len(shape) != len(ishape):
        raise fail(ctx, f"data {fmt_shape(shape)} and indices {fmt_shape(ishape)} differ in rank")
    return [
        TensorType(
            dtype, ishape if ishape is not None else (None,) * len(shape) if shape is not None else None
        )
    ]


@infers("GatherND")
def infer_gather_nd(ctx: InferContext) -> list:
    dtype = ctx.dtype(0)
    if dtype is None:
        return [None]
    shape, ishape = ctx.shape(0), ctx.shape(1)
    if shape is None or ishape is None or not ishape or ishape[-1].__class__ is not int:
        return [TensorType(dtype, None)]
    b = ctx.attr("batch_dims", 0)
    k = ishape[-1]
    if b + k > len(shape):
        raise fail(ctx, f"indices {fmt_shape(ishape)} index more dims than data {fmt_shape(shape)} has")
    return [TensorType(dtype, ishape[:-1] + shape[b + k :])]


@infers("Compress")
def infer_compress(ctx: InferContext) -> list:
    t = ctx.tensor(0)
    if t is None:
        return [None]
    axis = ctx.attr("axis")
    if axis is None:
        return [TensorType(t.dtype, (None,))]
    shape = t.shape
    if shape is None:
        return [TensorType(t.dtype, None)]
    out = list(shape)
    out[norm_axis(ctx, axis, len(shape))] = None
    return [TensorType(t.dtype, tuple(out))]


@infers("NonZero")
def infer_nonzero(ctx: InferContext) -> list:
    r = ctx.rank(0)
    return [TensorType(INT64, (r, None))]


@infers("Unique")
def infer_unique(ctx: InferContext) -> list:
    t = ctx.tensor(0)
    if t is None:
        return [None] * ctx.num_outputs
    axis = ctx.attr("axis")
    shape = t.shape
    if axis is None:
        y = TensorType(t.dtype, (None,))
        inverse = dim_prod(shape) if shape is not None else None
    elif shape is None:
        y, inverse = TensorType(t.dtype, None), None
    else:
        a = norm_axis(ctx, axis, len(shape))
        out = list(shape)
        out[a] = None
        y, inverse = TensorType(t.dtype, tuple(out)), shape[a]
    return [y, TensorType(INT64, (None,)), TensorType(INT64, (inverse,)), TensorType(INT64, (None,))]


# --------------------------------------------------------------------------- Pad, ConstantOfShape, Range


@infers("Pad")
def infer_pad(ctx: InferContext) -> list:
    t = ctx.tensor(0)
    if t is None:
        return [None]
    shape = t.shape
    if ctx.has_input(1):
        pads = ctx.sym_value(1)
    else:
        pads = ctx.attr("pads", ctx.attr("paddings"))
    if shape is None:
        return [TensorType(t.dtype, None)]
    r = len(shape)
    given, axes = _axes_of(ctx, 3, attr="<none>")
    if given and axes is None:
        return [TensorType(t.dtype, (None,) * r)]
    axes = list(range(r)) if axes is None else [norm_axis(ctx, a, r) for a in axes]
    if pads is None or any(p.__class__ is not int for p in pads):
        out = list(shape)
        for a in axes:
            out[a] = None
        return [TensorType(t.dtype, tuple(out))]
    n = len(axes)
    if len(pads) != 2 * n:
        raise fail(ctx, f"pads has {len(pads)} elements for {n} axes")
    out = list(shape)
    for i, a in enumerate(axes):
        d = dim_add(dim_add(out[a], pads[i]), pads[i + n])
        if d.__class__ is int and d < 0:
            raise fail(ctx, f"pads {list(pads)} make axis {a} of {fmt_shape(shape)} negative")
        out[a] = d
    return [TensorType(t.dtype, tuple(out))]


@infers("ConstantOfShape")
def infer_constant_of_shape(ctx: InferContext) -> list:
    value = ctx.attr("value")
    dtype = DType.from_numpy(value.dtype) if value is not None else DType.FLOAT
    target = _shape_operand(ctx, 0)
    if target is None:
        return [TensorType(dtype, None)]
    for d in target:
        if d.__class__ is int and d < 0:
            raise fail(ctx, f"negative dim in shape {fmt_shape(target)}")
    if value is not None and is_int_dtype(dtype) and len(target) <= 1:
        n = target[0] if target else 1
        if n.__class__ is int and n <= 64:
            set_sym(ctx, 0, (int(value.reshape(-1)[0]),) * n)
    return [TensorType(dtype, tuple(target))]


@infers("Range")
def infer_range(ctx: InferContext) -> list:
    dtype = None
    for i in range(3):
        d = ctx.dtype(i)
        if d is None:
            continue
        if dtype is None:
            dtype = d
        elif d != dtype:
            raise fail(ctx, f"start, limit and delta must share a type ({dtype.short} vs {d.short})")
    if dtype is None:
        return [None]
    n = None
    if is_int_dtype(dtype):
        start, limit, delta = sym_int(ctx, 0), sym_int(ctx, 1), sym_int(ctx, 2)
        if start.__class__ is int and limit.__class__ is int and delta.__class__ is int:
            if delta == 0:
                raise fail(ctx, "delta is 0")
            n = max(ceil_div(limit - start, delta), 0)
            if n <= 64:
                set_sym(ctx, 0, tuple(range(start, limit, delta)))
        elif start == 0 and delta == 1 and limit.__class__ is str:
            n = limit
    else:
        vals = [ctx.const(i) for i in range(3)]
        if all(v is not None and v.size == 1 for v in vals):
            start, limit, delta = (float(v.reshape(-1)[0]) for v in vals)
            if delta == 0:
                raise fail(ctx, "delta is 0")
            n = max(math.ceil((limit - start) / delta), 0)
    return [TensorType(dtype, (n,))]


# --------------------------------------------------------------------------- OneHot, DepthToSpace, EyeLike


@infers("OneHot")
def infer_one_hot(ctx: InferContext) -> list:
    dtype = ctx.dtype(2)
    if dtype is None:
        return [None]
    ishape = ctx.shape(0)
    if ishape is None:
        return [TensorType(dtype, None)]
    depth = None
    dv = ctx.sym_value(1)
    if dv is not None and len(dv) == 1:
        depth = dv[0]
    else:
        c = ctx.const(1)
        if c is not None and c.size == 1:
            depth = int(c.reshape(-1)[0])
    r = len(ishape) + 1
    axis = norm_axis(ctx, ctx.attr("axis", -1), r)
    out = ishape[:axis] + (depth,) + ishape[axis:]
    return [TensorType(dtype, out)]


@infers("DepthToSpace", "SpaceToDepth")
def infer_depth_space(ctx: InferContext) -> list:
    t = ctx.tensor(0)
    if t is None:
        return [None]
    shape = t.shape
    if shape is None:
        return [TensorType(t.dtype, (None,) * 4)]
    if len(shape) != 4:
        raise fail(ctx, f"input must have rank 4, has shape {fmt_shape(shape)}")
    b = ctx.attr("blocksize")
    if b is None:
        raise fail(ctx, "missing attribute 'blocksize'")
    n, c, h, w = shape
    bb = b * b
    if ctx.node.op == "DepthToSpace":
        if c.__class__ is int and c % bb:
            raise fail(ctx, f"channels {c} are not divisible by blocksize^2 = {bb}")
        out = (n, c // bb if c.__class__ is int else None, dim_mul(h, b), dim_mul(w, b))
    else:
        for d in (h, w):
            if d.__class__ is int and d % b:
                raise fail(ctx, f"spatial dims of {fmt_shape(shape)} are not divisible by blocksize {b}")
        out = (
            n,
            dim_mul(c, bb),
            h // b if h.__class__ is int else None,
            w // b if w.__class__ is int else None,
        )
    return [TensorType(t.dtype, out)]


@infers("EyeLike")
def infer_eye_like(ctx: InferContext) -> list:
    dtype = ctx.attr("dtype")
    dtype = DType(dtype) if dtype is not None else ctx.dtype(0)
    if dtype is None:
        return [None]
    return [TensorType(dtype, ctx.shape(0))]


@infers("CenterCropPad")
def infer_center_crop_pad(ctx: InferContext) -> list:
    t = ctx.tensor(0)
    if t is None:
        return [None]
    shape = t.shape
    if shape is None:
        return [TensorType(t.dtype, None)]
    r = len(shape)
    target = ctx.sym_value(1)
    axes = ctx.attr("axes")
    axes = list(range(r)) if axes is None else [norm_axis(ctx, a, r) for a in axes]
    out = list(shape)
    for i, a in enumerate(axes):
        out[a] = target[i] if target is not None and i < len(target) else None
    return [TensorType(t.dtype, tuple(out))]


@infers("Constant")
def infer_constant(ctx: InferContext) -> list:
    attrs = ctx.node.attrs
    if "value" in attrs:
        arr = ctx.attr("value")
        if arr.ndim <= 1 and arr.size <= 64 and arr.dtype.kind in "iu":
            set_sym(ctx, 0, tuple(arr.reshape(-1).tolist()))
        return [TensorType(DType.from_numpy(arr.dtype), tuple(arr.shape))]
    for name, dtype, scalar in (
        ("value_float", DType.FLOAT, True),
        ("value_int", INT64, True),
        ("value_string", DType.STRING, True),
        ("value_floats", DType.FLOAT, False),
        ("value_ints", INT64, False),
        ("value_strings", DType.STRING, False),
    ):
        if name in attrs:
            v = ctx.attr(name)
            if dtype == INT64:
                set_sym(ctx, 0, (int(v),) if scalar else tuple(int(x) for x in v))
            return [TensorType(dtype, () if scalar else (len(v),))]
    return [None]
