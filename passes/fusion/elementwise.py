"""``fold-elementwise``: consecutive elementwise ops with constants folded into one (what fuse-bias leaves).

``fuse-bias`` already merges ``(x·a)·b``, ``(x + a) + b``, distributes ``(x + a)·b``, turns
``x − c`` into ``x + (−c)`` and ``x / 2ᵏ`` into a Mul.  This pass adds, with ``a``, ``b``, ``c``
constants that broadcast into ``x`` without widening it (the inner op read only by the outer):

- ``merge-div-div``: ``(x / a) / b`` -> ``x / (a·b)``; ``merge-mul-div``: ``(x·a) / b`` ->
  ``x · (a/b)``; ``merge-div-mul``: ``(x / a)·b`` -> ``x · (b/a)`` (float; one rounding of the
  folded constant, as ``merge-mul-mul``);
- ``fold-neg``: ``−(−x)`` -> ``x``; ``(−x)·c``, ``(−x)/c``, ``−(x·c)`` -> ``x·(−c)``,
  ``x/(−c)``; ``(−x) + c`` -> ``c − x`` (exact: negation is exact);
- ``merge-rsub-add``: ``(c − x) + d`` -> ``(c + d) − x``;
- ``merge-clip-clip``: ``clip(clip(x, a, b), c, d)`` -> ``clip(x, clamp(a, c, d), clamp(b, c, d))``,
  a Relu counting as ``clip(·, 0, ∞)``; ``Relu(Relu(x))`` -> ``Relu(x)`` (exact: the composition
  of two clamps is a clamp; bounds must be constant scalars).
"""

from __future__ import annotations

import math

import numpy as np
from kiln.ir.core import Node, Value
from kiln.passes.fusion._affine import FLOAT_DTYPES, const_array, fits_into
from kiln.passes.fusion._match import onnx_opset, scalar_of
from kiln.passmanager.registry import register_pass
from kiln.rewrite import P, RuleSet, rule


def _fits(x: Value, out: Value, *consts: Value) -> bool | str:
    if x.dtype not in FLOAT_DTYPES:
        return f"{x.dtype} is not a float type"
    if x.shape is None or out.shape != x.shape:
        return "the shapes are unknown or the constants widen x"
    for c in consts:
        data = const_array(c)
        if data is None or c.dtype != x.dtype or not fits_into(tuple(data.shape), x.shape):
            return f"%{c.name} is not a constant that broadcasts into x"
    return True


def _fold(op, x: Value, a: Value, b: Value, fn) -> Value:
    assert x.dtype is not None
    da, db = const_array(a), const_array(b)
    with np.errstate(all="ignore"):
        data = fn(np.asarray(da, np.float64), np.asarray(db, np.float64))
    return op.const(np.asarray(data).astype(x.dtype.numpy), a.name)


@rule("merge-div-div")
def div_div(op, x):
    """Div(Div(x, a), b) -> Div(x, a·b)."""
    return op.Div(op.Div(x, P.const("a"), _one_use=True), P.const("b"), _outputs=["out"])


@div_div.check
def _(ctx, x: Value, a: Value, b: Value, out: Value) -> bool | str:
    return _fits(x, out, a, b)


@div_div.replace
def _(op, x: Value, a: Value, b: Value) -> Value:
    return op.Div(x, _fold(op, x, a, b, np.multiply))


@rule("merge-mul-div")
def mul_div(op, x):
    """Div(Mul(x, a), b) -> Mul(x, a/b)."""
    return op.Div(op.Mul(x, P.const("a"), _one_use=True), P.const("b"), _outputs=["out"])


@mul_div.check
def _(ctx, x: Value, a: Value, b: Value, out: Value) -> bool | str:
    ok = _fits(x, out, a, b)
    return ok if ok is not True else (bool(np.all(const_array(b) != 0)) or "the divisor has zeros")


@mul_div.replace
def _(op, x: Value, a: Value, b: Value) -> Value:
    return op.Mul(x, _fold(op, x, a, b, np.divide))


@rule("merge-div-mul")
def div_mul(op, x):
    """Mul(Div(x, a), b) -> Mul(x, b/a)."""
    return op.Mul(op.Div(x, P.const("a"), _one_use=True), P.const("b"), _outputs=["out"])


@div_mul.check
def _(ctx, x: Value, a: Value, b: Value, out: Value) -> bool | str:
    ok = _fits(x, out, a, b)
    return ok if ok is not True else (bool(np.all(const_array(a) != 0)) or "the divisor has zeros")


@div_mul.replace
def _(op, x: Value, a: Value, b: Value) -> Value:
    return op.Mul(x, _fold(op, x, b, a, np.divide))


# --------------------------------------------------------------------------- negation


@rule("fold-neg-neg")
def neg_neg(op, x):
    """Neg(Neg(x)) -> x."""
    return op.Neg(op.Neg(x, _one_use=True))


@neg_neg.replace
def _(op, x: Value) -> Value:
    return x


def _negated(op, c: Value) -> Value:
    return op.const(np.negative(const_array(c)), c.name)


@rule("fold-neg-into-const")
def neg_scaled(op, x):
    """Mul|Div(Neg(x), c) -> Mul|Div(x, -c)."""
    return op.op({"Mul", "Div"}, op.Neg(x, _one_use=True), P.const("c"), _node="outer", _outputs=["out"])


@neg_scaled.check
def _(ctx, x: Value, c: Value, out: Value) -> bool | str:
    return _fits(x, out, c)


@neg_scaled.replace
def _(op, x: Value, c: Value, outer: Node) -> Value:
    return op.op(outer.op, x, _negated(op, c))


@rule("fold-const-into-neg")
def scaled_neg(op, x):
    """Neg(Mul(x, c)) -> Mul(x, -c)."""
    return op.Neg(op.Mul(x, P.const("c"), _one_use=True), _outputs=["out"])


@scaled_neg.check
def _(ctx, x: Value, c: Value, out: Value) -> bool | str:
    return _fits(x, out, c)


@scaled_neg.replace
def _(op, x: Value, c: Value) -> Value:
    return op.Mul(x, _negated(op, c))


@rule("fold-neg-add")
def neg_add(op, x):
    """Add(Neg(x), c) -> Sub(c, x)."""
    return op.Add(op.Neg(x, _one_use=True), P.const("c"), _outputs=["out"])


@neg_add.check
def _(ctx, x: Value, c: Value, out: Value) -> bool | str:
    return _fits(x, out, c)


@neg_add.replace
def _(op, x: Value, c: Value) -> Value:
    return op.Sub(c, x)


@rule("merge-rsub-add")
def rsub_add(op, x):
    """Add(Sub(c, x), d) -> Sub(c + d, x)."""
    return op.Add(op.Sub(P.const("c"), x, _one_use=True), P.const("d"), _outputs=["out"])


@rsub_add.check
def _(ctx, x: Value, c: Value, d: Value, out: Value) -> bool | str:
    return _fits(x, out, c, d)


@rsub_add.replace
def _(op, x: Value, c: Value, d: Value) -> Value:
    return op.Sub(_fold(op, x, c, d, np.add), x)


# --------------------------------------------------------------------------- clamps


def _bounds(node: Node) -> tuple[float, float] | None:
    """A Relu's or a Clip's constant scalar bounds (absent: ∓∞)."""
    if node.op == "Relu":
        return 0.0, math.inf
    if (node.version or 11) < 11:
        return float(node.attr("min", -math.inf)), float(node.attr("max", math.inf))
    lo = -math.inf if node.input(1) is None else scalar_of(node.input(1))
    hi = math.inf if node.input(2) is None else scalar_of(node.input(2))
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return None
    return lo, hi


@rule("merge-clip-clip")
def clip_clip(op, x):
    """Clip|Relu(Clip|Relu(x)) -> one Clip (or Relu)."""
    inner = op.op({"Clip", "Relu"}, x, P.variadic(), _node="inner", _one_use=True)
    return op.op({"Clip", "Relu"}, inner, P.variadic(), _node="outer", _outputs=["out"])


@clip_clip.check
def _(ctx, x: Value, inner: Node, outer: Node) -> bool | str:
    first, second = _bounds(inner), _bounds(outer)
    if first is None or second is None:
        return "a bound is not a constant scalar"
    if first[0] > first[1] or second[0] > second[1]:
        return "an empty clip interval (min > max)"
    if x.dtype is None or x.dtype.numpy.kind not in "iuf":
        return "not a numeric type"
    return True


@clip_clip.replace
def _(op, x: Value, inner: Node, outer: Node) -> Value:
    (a, b), (c, d) = _bounds(inner), _bounds(outer)  # type: ignore[misc]
    lo, hi = min(max(a, c), d), min(max(b, c), d)
    if lo == 0.0 and hi == math.inf:
        return op.Relu(x)
    if onnx_opset(op.graph) < 11:
        return op.Clip(x, min=lo, max=hi)
    assert x.dtype is not None
    lo_v = None if lo == -math.inf else op.const_like(lo, x, "clip_min")
    hi_v = None if hi == math.inf else op.const_like(hi, x, "clip_max")
    return op.Clip(x, lo_v, hi_v) if hi_v is not None else (op.Clip(x, lo_v) if lo_v is not None else op.Clip(x))


ELEMENTWISE_RULES = RuleSet(
    [div_div, mul_div, div_mul, neg_neg, neg_scaled, scaled_neg, neg_add, rsub_add, clip_clip],
    name="fold-elementwise",
)

FoldElementwise = register_pass(
    ELEMENTWISE_RULES.as_pass(
        "fold-elementwise", "Folds Div/Neg/Sub/Clip chains with constants into one op (the chains fuse-bias leaves)."
    )
)

__all__ = ["ELEMENTWISE_RULES", "FoldElementwise"]
