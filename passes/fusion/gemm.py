"""``fuse-gemm``: 2-D MatMul with a bias or transposed operands raised to ``Gemm``.

- ``matmul-add-to-gemm``: ``Add(MatMul(a, b), c)`` -> ``Gemm(a, b, c)`` (and a Gemm without C
  likewise) for 2-D ``a``, ``b`` and a
  *non-constant* ``c`` that broadcasts into ``[M, N]`` without widening it (Gemm's C broadcasts
  the same way).  A constant ``c`` is ``fuse-bias``'s (``fold-add-into-linear``), which also
  merges it into an existing bias; an N-D MatMul keeps its Add (Gemm is 2-D only).
- ``transpose-a-into-gemm`` / ``transpose-b-into-gemm``: ``MatMul(Transpose(a), b)``,
  ``MatMul(a, Transpose(b))`` (2-D, the Transpose read by nothing else) -> ``Gemm`` with
  ``transA``/``transB``; likewise a Transpose before an existing Gemm flips its flag.

Both are exact (Gemm with alpha = beta = 1 is the same sum of products), float types only.
"""

from __future__ import annotations

from kiln.ir.core import Node, Value
from kiln.passes.fusion._affine import fits_into, rank_of
from kiln.passes.fusion._match import is_float, onnx_opset
from kiln.passmanager.registry import register_pass
from kiln.rewrite import RuleSet, attrs_of, rule


@rule("matmul-add-to-gemm")
def matmul_add(op, a, b, c):
    """Add(MatMul(a, b) | Gemm(a, b), c) -> Gemm(a, b, c) (2-D, c not constant)."""
    return op.Add(op.op({"MatMul", "Gemm"}, a, b, _node="mm", _outputs=["prod"], _one_use=True), c, _outputs=["y"])


@matmul_add.check
def _(ctx, a: Value, b: Value, c: Value, mm: Node, prod: Value, y: Value) -> bool | str:
    if c.const is not None:
        return "a constant bias is fuse-bias's (fold-add-into-linear)"
    if onnx_opset(ctx.graph) < 7:
        return "Gemm broadcasts C only from opset 7"
    if rank_of(a) != 2 or rank_of(b) != 2:
        return "not a 2-D product"
    if not is_float(prod) or c.dtype != prod.dtype:
        return "Gemm needs float operands of one type"
    if c.shape is None or not fits_into(tuple(c.shape), prod.shape) or y.shape != prod.shape:
        return "the bias widens the product or its shape is unknown"
    return True


@matmul_add.replace
def _(op, a: Value, b: Value, c: Value, mm: Node) -> Value:
    attrs = attrs_of(mm, drop=("beta",)) if mm.op == "Gemm" else {}
    return op.Gemm(a, b, c, **attrs)


def _transposable(mm: Node, t: Node) -> bool | str:
    x = t.inputs[0]
    perm = t.attr("perm")
    if rank_of(x) != 2 or (perm is not None and [int(p) for p in perm] != [1, 0]):
        return "not the transpose of a 2-D tensor"
    if rank_of(mm.inputs[0]) != 2 or rank_of(mm.inputs[1]) != 2 or not is_float(mm.outputs[0]):
        return "not a 2-D float product"
    if mm.op == "MatMul" and onnx_opset(mm.graph) < 11:
        return "Gemm's C is optional only from opset 11"
    return True


def _flipped(op, mm: Node, index: int, x: Value) -> Value:
    attrs = dict(attrs_of(mm)) if mm.op == "Gemm" else {}
    key = "transA" if index == 0 else "transB"
    attrs[key] = 1 - int(mm.attr(key, 0)) if mm.op == "Gemm" else 1  # type: ignore[assignment]
    inputs = list(mm.inputs)
    inputs[index] = x
    return op.Gemm(*inputs, **attrs)


@rule("transpose-a-into-gemm")
def transpose_a(op, x, b):
    """MatMul|Gemm(Transpose(x), b, ...) -> Gemm(x, b, ..., transA flipped)."""
    return op.op({"MatMul", "Gemm"}, op.Transpose(x, _node="t", _one_use=True), b, _allow_other_inputs=True, _node="mm")


@transpose_a.check
def _(ctx, mm: Node, t: Node) -> bool | str:
    return _transposable(mm, t)


@transpose_a.replace
def _(op, mm: Node, x: Value) -> Value:
    return _flipped(op, mm, 0, x)


@rule("transpose-b-into-gemm")
def transpose_b(op, a, x):
    """MatMul|Gemm(a, Transpose(x), ...) -> Gemm(a, x, ..., transB flipped)."""
    return op.op({"MatMul", "Gemm"}, a, op.Transpose(x, _node="t", _one_use=True), _allow_other_inputs=True, _node="mm")


@transpose_b.check
def _(ctx, mm: Node, t: Node) -> bool | str:
    return _transposable(mm, t)


@transpose_b.replace
def _(op, mm: Node, x: Value) -> Value:
    return _flipped(op, mm, 1, x)


GEMM_RULES = RuleSet([matmul_add, transpose_a, transpose_b], name="fuse-gemm")


FuseGemm = register_pass(
    GEMM_RULES.as_pass("fuse-gemm", "Raises 2-D MatMul + Add (runtime bias) and MatMul/Gemm of a Transpose to Gemm.")
)


__all__ = ["GEMM_RULES", "FuseGemm"]
