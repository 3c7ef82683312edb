"""``fuse-bias``: folds elementwise ops with constants into linear ops and into each other.

With ``y = op(x)`` a Conv, ConvTranspose, Gemm or MatMul with constant
weight ``W`` and bias ``B`` (see ``_affine``), and ``c`` a constant:

- ``fold-add-into-linear``: ``y + c`` -> ``B' = B + c`` for ``c`` per output
  channel (Conv/ConvTranspose), any ``c`` that broadcasts into the output
  (Gemm: ``C' = β·C + c``, ``β' = 1``).  ``MatMul(a, b) + c`` becomes
  ``Gemm(a, b, c)`` when ``a`` and ``b`` are 2-D (the Gemm bias broadcasts
  exactly like the Add); an N-D MatMul keeps its Add (Gemm is 2-D only, and
  Reshapes around it would cost more nodes than they save).
- ``fold-mul-into-linear``: ``y · c`` -> ``W' = W·c`` along the output-channel
  axis, ``B' = B·c``; ``fold-div-into-linear``: ``y / c`` the same with
  ``1/c`` (rounded like any weight fold, so no less exact than BN folding).
- ``fold-mul-into-next-linear`` / ``fold-add-into-next-linear``: a Conv or
  Gemm (or MatMul) reading ``x·c`` or ``x + c`` with ``c`` per *input* channel
  reads ``x``: ``W' = W·c`` along the input-channel axis; ``B' = B + Σ W·c``.
  A shift before a Conv is exact only if the Conv pads nothing (zero padding
  would have to become ``c`` at the borders), so a padded Conv keeps its Add;
  a scale is exact either way (``0·c = 0``).  ``fold-scale-through-shift``:
  before a padded Conv, ``(x·s + t)`` is rewritten ``(x + t/s)·s`` (``s``
  nowhere 0) so that the scale still folds and only one Add stays.
- ``merge-mul-mul``: ``(x·a)·b`` -> ``x·(a·b)``; ``merge-add-add``:
  ``(x + a) + b`` -> ``x + (a + b)``; ``distribute-mul-over-add``:
  ``(x + a)·b`` -> ``x·b + a·b``, which moves the Mul towards what can absorb
  it (a linear op or another Mul) and the Add towards the next Add.  Each
  needs ``a`` and ``b`` to broadcast into ``x`` without widening it and the
  inner op to have no other user.
- ``sub-to-add``: ``x − c`` -> ``x + (−c)`` (exact in IEEE arithmetic), so the
  rules above see one op.
- ``div-to-mul``: ``x / c`` -> ``x · (1/c)`` **only when every element of c
  is ± a power of two** (and 1/c is a normal number): then ``x/c`` and
  ``x·(1/c)`` are the same correctly rounded value, so the rewrite is exact.
  Other divisors stay divisions: ``x/3`` and ``x·0.333…`` differ in the last
  bit, and an optimizing compiler should not change results that it does
  not have to.  (A Div right after a linear op still folds, see above.)

Float types only for the linear folds and the distribution; the merges also
take integer types, where they are exact (modular arithmetic).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from kiln.ir.core import Node, Value
from kiln.ir.dtypes import DType
from kiln.passes.fusion._affine import (
    FLOAT_DTYPES,
    LINEAR_OPS,
    Linear,
    const_array,
    fits_into,
    fold_input_affine,
    fold_output_affine,
    input_channel_axis,
    linear_of,
    must,
    per_channel,
    rank_of,
)
from kiln.passmanager.registry import register_pass
from kiln.rewrite import P, RuleSet, attrs_of, rule

_INT_DTYPES = frozenset(
    {DType.INT8, DType.INT16, DType.INT32, DType.INT64, DType.UINT8, DType.UINT16, DType.UINT32, DType.UINT64}
)
_LINEAR = set(LINEAR_OPS)


# --------------------------------------------------------------------------- after a linear op


def _output_vector(y: Value, c: Value) -> tuple[Linear, np.ndarray] | str:
    """The linear view of ``y``'s producer and ``c`` as a vector over its output channels."""
    assert y.producer is not None
    lin = linear_of(y.producer)
    if isinstance(lin, str):
        return lin
    data = const_array(c)
    assert data is not None
    if c.dtype != y.dtype:
        return f"constant is {c.dtype}, the output {y.dtype}"
    vec = per_channel(data, lin.out_rank, lin.axis, lin.channels)
    if vec is None:
        return f"constant %{c.name} {tuple(data.shape)} is not per-channel along {lin.node.op}'s channel axis"
    return lin, vec


@rule("fold-add-into-linear")
def add_after_linear(op):
    """Add(Conv|ConvTranspose|Gemm|MatMul(...), c) -> the op with c in its bias."""
    return op.Add(op.op(_LINEAR, P.variadic(), _outputs=["y"], _one_use=True), P.const("c"))


def _matmul_to_gemm(y: Value, c: Value) -> bool | str:
    node = y.producer
    assert node is not None
    if rank_of(node.input(0)) != 2 or rank_of(node.input(1)) != 2:
        return "an N-D MatMul keeps its Add (Gemm is 2-D)"
    if y.dtype not in FLOAT_DTYPES or c.dtype != y.dtype:
        return f"Gemm needs a float type, not {y.dtype}"
    data = const_array(c)
    assert data is not None
    return fits_into(tuple(data.shape), y.shape) or f"constant {tuple(data.shape)} widens the output {y.shape}"


@add_after_linear.check
def _(ctx, y: Value, c: Value) -> bool | str:
    node = y.producer
    assert node is not None
    if node.op == "MatMul":
        return _matmul_to_gemm(y, c)
    if node.op == "Gemm":
        lin = linear_of(node)
        if isinstance(lin, str):
            return lin
        data = const_array(c)
        assert data is not None
        if c.dtype != y.dtype:
            return f"constant is {c.dtype}, the output {y.dtype}"
        return fits_into(tuple(data.shape), y.shape) or f"constant {tuple(data.shape)} widens the output {y.shape}"
    found = _output_vector(y, c)
    return found if isinstance(found, str) else True


@add_after_linear.replace
def _(op, y: Value, c: Value) -> Value | None:
    node = y.producer
    assert node is not None
    if node.op == "MatMul":
        return op.Gemm(node.input(0), node.input(1), c)
    if node.op == "Gemm":
        lin = must(linear_of(node))
        assert y.dtype is not None
        data = np.asarray(const_array(c), dtype=np.float64)
        bias = data if lin.bias is None else lin.bias + data
        inputs = [node.input(0), node.input(1), op.const(bias.astype(y.dtype.numpy), c.name)]
        return op.Gemm(*inputs, **attrs_of(node, drop=("beta",)))
    lin, vec = must(_output_vector(y, c))
    return fold_output_affine(op, lin, None, vec)


@rule("fold-mul-into-linear")
def mul_after_linear(op):
    """Mul(Conv|ConvTranspose|Gemm|MatMul(...), c) -> the op with scaled weights."""
    return op.Mul(op.op(_LINEAR, P.variadic(), _outputs=["y"], _one_use=True), P.const("c"))


@mul_after_linear.check
def _(ctx, y: Value, c: Value) -> bool | str:
    found = _output_vector(y, c)
    return found if isinstance(found, str) else True


@mul_after_linear.replace
def _(op, y: Value, c: Value) -> Value | None:
    lin, vec = must(_output_vector(y, c))
    return fold_output_affine(op, lin, vec, None)


@rule("fold-div-into-linear")
def div_after_linear(op):
    """Div(Conv|ConvTranspose|Gemm|MatMul(...), c) -> the op with weights divided by c."""
    return op.Div(op.op(_LINEAR, P.variadic(), _outputs=["y"], _one_use=True), P.const("c"))


@div_after_linear.check
def _(ctx, y: Value, c: Value) -> bool | str:
    found = _output_vector(y, c)
    if isinstance(found, str):
        return found
    return bool(np.all(found[1] != 0)) or "the divisor has zeros"


@div_after_linear.replace
def _(op, y: Value, c: Value) -> Value | None:
    lin, vec = must(_output_vector(y, c))
    return fold_output_affine(op, lin, 1.0 / vec, None)


# --------------------------------------------------------------------------- before a linear op


def _input_vector(lin_node: Node, x: Value, c: Value) -> tuple[Linear, np.ndarray] | str:
    lin = linear_of(lin_node)
    if isinstance(lin, str):
        return lin
    where = input_channel_axis(lin)
    if isinstance(where, str):
        return where
    rank, axis, channels = where
    if rank_of(x) != rank:
        return "the elementwise op's input has another rank"
    data = const_array(c)
    assert data is not None
    if c.dtype != x.dtype:
        return f"constant is {c.dtype}, the input {x.dtype}"
    vec = per_channel(data, rank, axis, channels)
    if vec is None:
        return f"constant %{c.name} {tuple(data.shape)} is not per-channel along the axis {lin_node.op} reduces"
    return lin, vec


@rule("fold-mul-into-next-linear")
def mul_before_linear(op, x):
    """Conv|Gemm|MatMul(Mul(x, c), ...) -> the op reading x, with c in its weights."""
    return op.op({"Conv", "Gemm", "MatMul"}, op.Mul(x, P.const("c")), P.variadic(), _node="lin")


@mul_before_linear.check
def _(ctx, x: Value, c: Value, lin: Node) -> bool | str:
    found = _input_vector(lin, x, c)
    return found if isinstance(found, str) else True


@mul_before_linear.replace
def _(op, x: Value, c: Value, lin: Node) -> Value:
    view, vec = must(_input_vector(lin, x, c))
    return must(fold_input_affine(op, view, x, vec, None))


@rule("fold-add-into-next-linear")
def add_before_linear(op, x):
    """Conv (no pads)|Gemm|MatMul(Add(x, c), ...) -> the op reading x, with W·c in its bias."""
    return op.op({"Conv", "Gemm", "MatMul"}, op.Add(x, P.const("c")), P.variadic(), _node="lin")


@add_before_linear.check
def _(ctx, x: Value, c: Value, lin: Node) -> bool | str:
    found = _input_vector(lin, x, c)
    return found if isinstance(found, str) else True


@add_before_linear.replace
def _(op, x: Value, c: Value, lin: Node) -> Value:
    view, vec = must(_input_vector(lin, x, c))
    return must(fold_input_affine(op, view, x, None, vec))


@rule("fold-scale-through-shift")
def affine_before_linear(op, x):
    """Conv|Gemm|MatMul(Add(Mul(x, s), t)) -> the op, scaled by s, reading Add(x, t/s)."""
    scaled = op.Mul(x, P.const("s"), _outputs=["m"], _one_use=True)
    shifted = op.Add(scaled, P.const("t"), _outputs=["a"], _one_use=True)
    return op.op({"Conv", "Gemm", "MatMul"}, shifted, P.variadic(), _node="lin")


@affine_before_linear.check
def _(ctx, x: Value, s: Value, t: Value, m: Value, lin: Node) -> bool | str:
    found = _input_vector(lin, x, s)
    if isinstance(found, str):
        return found
    if not bool(np.all(found[1] != 0)):
        return "the scale has zeros"
    tv = const_array(t)
    assert tv is not None
    if t.dtype != x.dtype or not fits_into(tuple(tv.shape), x.shape) or m.shape != x.shape:
        return "the shift does not broadcast into the input"
    return True


@affine_before_linear.replace
def _(op, x: Value, s: Value, t: Value, lin: Node) -> Value:
    view, vec = must(_input_vector(lin, x, s))
    rank = rank_of(x)
    assert rank is not None and x.dtype is not None
    _, axis, _ = must(input_channel_axis(view))
    shape = [1] * rank
    shape[axis] = -1
    tv = np.asarray(const_array(t), dtype=np.float64)
    shift = op.const((tv / vec.reshape(shape)).astype(x.dtype.numpy), t.name)
    return must(fold_input_affine(op, view, op.Add(x, shift), vec, None))


# --------------------------------------------------------------------------- chains of elementwise ops


def _chain_ok(x: Value, a: Value, b: Value, out: Value, *, ints: bool) -> bool | str:
    allowed = FLOAT_DTYPES | _INT_DTYPES if ints else FLOAT_DTYPES
    if x.dtype not in allowed:
        return f"{x.dtype} is not a supported type"
    if a.dtype != x.dtype or b.dtype != x.dtype:
        return "the constants' dtypes differ from the input's"
    shape = x.shape
    if shape is None or out.shape != shape:
        return "the input's shape is unknown or differs from the output's"
    for c in (a, b):
        assert c.const is not None
        if not fits_into(tuple(c.const.shape), shape):
            return f"constant %{c.name} {tuple(c.const.shape)} widens the input {shape}"
    return True


def _combine(a: Value, b: Value, fn: Callable[[np.ndarray, np.ndarray], np.ndarray], dtype: DType) -> np.ndarray:
    da, db = const_array(a), const_array(b)
    assert da is not None and db is not None
    if dtype in FLOAT_DTYPES:
        result = fn(da.astype(np.float64), db.astype(np.float64))
    else:
        with np.errstate(over="ignore"):
            result = fn(da, db)
    return np.asarray(result).astype(dtype.numpy)


@rule("merge-mul-mul")
def mul_mul(op, x):
    """Mul(Mul(x, a), b) -> Mul(x, a·b)."""
    return op.Mul(op.Mul(x, P.const("a"), _outputs=["inner"], _one_use=True), P.const("b"), _outputs=["out"])


@mul_mul.check
def _(ctx, x: Value, a: Value, b: Value, out: Value) -> bool | str:
    return _chain_ok(x, a, b, out, ints=True)


@mul_mul.replace
def _(op, x: Value, a: Value, b: Value) -> Value:
    assert x.dtype is not None
    return op.Mul(x, op.const(_combine(a, b, np.multiply, x.dtype), a.name))


@rule("merge-add-add")
def add_add(op, x):
    """Add(Add(x, a), b) -> Add(x, a + b)."""
    return op.Add(op.Add(x, P.const("a"), _outputs=["inner"], _one_use=True), P.const("b"), _outputs=["out"])


@add_add.check
def _(ctx, x: Value, a: Value, b: Value, out: Value) -> bool | str:
    return _chain_ok(x, a, b, out, ints=True)


@add_add.replace
def _(op, x: Value, a: Value, b: Value) -> Value:
    assert x.dtype is not None
    return op.Add(x, op.const(_combine(a, b, np.add, x.dtype), a.name))


@rule("distribute-mul-over-add")
def mul_add(op, x):
    """Mul(Add(x, a), b) -> Add(Mul(x, b), a·b)."""
    return op.Mul(op.Add(x, P.const("a"), _outputs=["inner"], _one_use=True), P.const("b"), _outputs=["out"])


@mul_add.check
def _(ctx, x: Value, a: Value, b: Value, out: Value) -> bool | str:
    return _chain_ok(x, a, b, out, ints=False)


@mul_add.replace
def _(op, x: Value, a: Value, b: Value) -> Value:
    assert x.dtype is not None
    return op.Add(op.Mul(x, b), op.const(_combine(a, b, np.multiply, x.dtype), a.name))


# --------------------------------------------------------------------------- canonical forms


@rule("sub-to-add")
def sub_const(op, x):
    """Sub(x, c) -> Add(x, -c)."""
    return op.Sub(x, P.const("c"))


@sub_const.check
def _(ctx, x: Value, c: Value) -> bool | str:
    if c.dtype not in FLOAT_DTYPES or x.dtype != c.dtype:
        return f"{c.dtype} is not a float type"
    return True


@sub_const.replace
def _(op, c: Value, x: Value) -> Value:
    data = const_array(c)
    assert data is not None
    return op.Add(x, op.const(np.negative(data), c.name))


def _exact_reciprocal(data: np.ndarray) -> np.ndarray | None:
    """``1/data`` when every element is ± a power of two whose reciprocal is a normal number."""
    if data.dtype.kind != "f" or data.size == 0:
        return None
    if not np.all(np.isfinite(data)) or np.any(data == 0):
        return None
    mantissa, _ = np.frexp(data.astype(np.float64))
    if not np.all(np.abs(mantissa) == 0.5):
        return None
    with np.errstate(all="ignore"):
        inv = np.reciprocal(data)
    info = np.finfo(data.dtype)
    if not np.all(np.isfinite(inv)) or np.any(np.abs(inv) < info.tiny):
        return None
    return inv


@rule("div-to-mul")
def div_const(op, x):
    """Div(x, c) -> Mul(x, 1/c) when c is ± powers of two (exact)."""
    return op.Div(x, P.const("c"))


@div_const.check
def _(ctx, x: Value, c: Value) -> bool | str:
    if c.dtype not in FLOAT_DTYPES or x.dtype != c.dtype:
        return f"{c.dtype} is not a float type"
    data = const_array(c)
    assert data is not None
    if _exact_reciprocal(data) is None:
        return "the divisor is not all powers of two: x/c and x·(1/c) would round differently"
    return True


@div_const.replace
def _(op, x: Value, c: Value) -> Value:
    data = const_array(c)
    assert data is not None
    return op.Mul(x, op.const(_exact_reciprocal(data), c.name))


BIAS_RULES = RuleSet(
    [
        add_after_linear,
        mul_after_linear,
        div_after_linear,
        mul_before_linear,
        add_before_linear,
        affine_before_linear,
        mul_mul,
        add_add,
        mul_add,
        sub_const,
        div_const,
    ],
    name="fuse-bias",
)

FuseBias = register_pass(
    BIAS_RULES.as_pass(
        "fuse-bias",
        "Folds Add/Mul/Div by constants into Conv/Gemm/MatMul weights and bias, and merges constant chains.",
    )
)

__all__ = ["BIAS_RULES", "FuseBias"]
