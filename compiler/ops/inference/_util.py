"""Shared helpers of kiln's inference functions: dims, broadcasting, symbolic values.

Everything here works on plain tuples of dims (``int``, ``str`` symbol or
``None`` unknown) and never touches ``onnx``: these run once per node after
every rewrite, on graphs of 100k nodes.

Dim rules used throughout:

* a static dim is exact; a symbol is a fixed but unknown size shared by every
  dim of that name; ``None`` is unknown and unrelated to anything;
* arithmetic on a symbol is kept only when it is the identity (``N * 1``,
  ``N + 0``); anything else becomes ``None`` (kiln has no symbolic
  expressions).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from kiln.ir.dtypes import DType
from kiln.ir.types import Dim, TensorType, format_dim
from kiln.ops.inference._context import InferContext, InferenceError

INT64 = DType.INT64
BOOL = DType.BOOL
FLOAT = DType.FLOAT

# A Slice end at or beyond this (or a start at or below its negation) is read
# as "to the end of the axis" even when the axis length is symbolic: no axis
# of a real tensor has 2**31 elements, and exporters use INT32_MAX/INT64_MAX.
TO_END = 2**31 - 1

_INT_TYPES = frozenset(
    (DType.INT64, DType.INT32, DType.INT16, DType.INT8, DType.UINT8, DType.UINT16, DType.UINT32, DType.UINT64)
)


def fmt_shape(shape: Sequence[Dim] | None) -> str:
    if shape is None:
        return "[...]"
    return "[" + ",".join(format_dim(d) for d in shape) + "]"


def fail(ctx: InferContext, message: str) -> InferenceError:
    """An :class:`InferenceError` naming the op (the caller adds the node's location)."""
    return InferenceError(f"{ctx.node.op}: {message}")


# --------------------------------------------------------------------------- dims


def broadcast_dim(a: Dim, b: Dim) -> Dim:
    """One dim of a numpy-style broadcast; raises ``ValueError`` on static mismatch."""
    if a == b:
        return a
    if a == 1:
        return b
    if b == 1:
        return a
    if a.__class__ is int:
        if b.__class__ is int:
            raise ValueError
        return a  # b is a symbol or unknown: it must be 1 or a at run time
    if b.__class__ is int:
        return b
    return None  # two different symbols, or a symbol and an unknown


def broadcast_shapes(a: tuple | None, b: tuple | None) -> tuple | None:
    """Multidirectional broadcast of two shapes; ``None`` when either rank is unknown.

    Raises ``ValueError`` (with a message) when two static dims clash.
    """
    if a is None or b is None:
        return None
    if a == b:
        return a
    la, lb = len(a), len(b)
    pa = (1,) * (lb - la) + a if la < lb else a
    pb = (1,) * (la - lb) + b if lb < la else b
    try:
        return tuple([broadcast_dim(x, y) for x, y in zip(pa, pb)])
    except ValueError:
        raise ValueError(f"cannot broadcast {fmt_shape(a)} with {fmt_shape(b)}") from None


def broadcast_many(ctx: InferContext, shapes: Iterable[tuple | None]) -> tuple | None:
    result: tuple | None = ()
    first = True
    for s in shapes:
        if s is None:
            return None
        if first:
            result, first = s, False
            continue
        try:
            result = broadcast_shapes(result, s)
        except ValueError as exc:
            raise fail(ctx, str(exc)) from None
    return result


_CONFLICT = object()


def unify_dim(a: Dim, b: Dim) -> Dim:
    """Two dims that must be equal: the more precise one; ``_CONFLICT`` if static and different."""
    if a == b or b is None:
        return a
    if a is None:
        return b
    if a.__class__ is int:
        return _CONFLICT if b.__class__ is int else a
    if b.__class__ is int:
        return b
    return a  # two symbols said to be equal: either name is right


def unify(ctx: InferContext, a: Dim, b: Dim, what) -> Dim:
    """:func:`unify_dim`, raising on a conflict; ``what`` is a message or a callable making it."""
    d = unify_dim(a, b)
    if d is _CONFLICT:
        raise fail(ctx, f"{what() if callable(what) else what}: {a} != {b}")
    return d


def dim_mul(a: Dim, b: Dim) -> Dim:
    if a.__class__ is int and b.__class__ is int:
        return a * b
    if a == 1:
        return b
    if b == 1:
        return a
    if a == 0 or b == 0:
        return 0
    return None


def dim_add(a: Dim, b: Dim) -> Dim:
    if a.__class__ is int and b.__class__ is int:
        return a + b
    if a == 0:
        return b
    if b == 0:
        return a
    return None


def dim_prod(dims: Iterable[Dim]) -> Dim:
    """Product of dims: an int, a lone symbol (times 1s), or ``None``."""
    total = 1
    sym: Dim = 1
    for d in dims:
        if d.__class__ is int:
            total *= d
        elif d is None or sym != 1:
            sym = None
        else:
            sym = d
    if total == 0:
        return 0
    if sym == 1:
        return total
    if sym is None or total != 1:
        return None
    return sym


def norm_axis(ctx: InferContext, axis: int, rank: int, what: str = "axis") -> int:
    if axis < -rank or axis >= rank:
        raise fail(ctx, f"{what} {axis} is out of range for rank {rank}")
    return axis + rank if axis < 0 else axis


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


# --------------------------------------------------------------------------- types


def tensor_or_none(dtype: DType | None, shape: tuple | None) -> TensorType | None:
    return None if dtype is None else TensorType(dtype, shape)


def common_dtype(ctx: InferContext, indices: Iterable[int]) -> DType | None:
    """The dtype shared by the inputs at ``indices``; raises when two known dtypes differ."""
    found: DType | None = None
    for i in indices:
        t = ctx.input_types[i] if i < len(ctx.input_types) else None
        if t is None or t.__class__ is not TensorType:
            continue
        if found is None:
            found = t.dtype
        elif t.dtype != found:
            raise fail(ctx, f"input {i} has element type {t.dtype.short}, expected {found.short}")
    return found


def is_int_dtype(dtype: DType | None) -> bool:
    return dtype in _INT_TYPES


# --------------------------------------------------------------------------- symbolic values


def set_sym(ctx: InferContext, index: int, value: tuple | None) -> None:
    """Records the known elements of output ``index`` (see ``InferContext.sym_values``)."""
    ctx.set_sym_value(index, value)


def sym_int(ctx: InferContext, index: int) -> Dim:
    """Input ``index`` as one dim, when it holds a single element (scalar or [1])."""
    v = ctx.sym_value(index)
    if v is None or len(v) != 1:
        return None
    return v[0]


def sym_arith(op: str, a: Dim, b: Dim) -> Dim:
    """``a op b`` on known elements of integer tensors (symbols only through identities)."""
    if a.__class__ is int and b.__class__ is int:
        if op == "Add":
            return a + b
        if op == "Sub":
            return a - b
        if op == "Mul":
            return a * b
        if op == "Div":
            if b == 0:
                return None
            q = abs(a) // abs(b)
            return q if (a >= 0) == (b >= 0) else -q
        if op == "Mod":
            return None if b == 0 else a % b
        if op == "Max":
            return max(a, b)
        if op == "Min":
            return min(a, b)
        return None
    if op == "Add":
        return dim_add(a, b)
    if op == "Sub":
        return a if b == 0 else (0 if a == b and a is not None else None)
    if op == "Mul":
        return dim_mul(a, b)
    if op == "Div":
        if b == 1:
            return a
        return 1 if a == b and a is not None else None
    if op in ("Max", "Min"):
        return a if a == b else None
    return None


def elementwise_sym(a: tuple, b: tuple, fn) -> tuple | None:
    """Applies ``fn`` to two known-element tuples with scalar broadcasting."""
    if len(a) == len(b):
        return tuple(fn(x, y) for x, y in zip(a, b))
    if len(a) == 1:
        return tuple(fn(a[0], y) for y in b)
    if len(b) == 1:
        return tuple(fn(x, b[0]) for x in a)
    return None
