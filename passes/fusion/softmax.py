"""``raise-softmax``: ``Exp / ReduceSum(Exp)`` raised to ``Softmax``.

    e = exp(x)                or  e = exp(x - ReduceMax(x, a))
    y = e / ReduceSum(e, a)   or  y = e · Reciprocal(ReduceSum(e, a))
    ->  y = Softmax(x, axis=a)

over one axis ``a`` (keepdims on the reductions, the max over the same axis).  Before opset 13
Softmax flattens the axes from ``a`` on, so there ``a`` must be the last axis.  With the max
subtracted the result is the same up to rounding; without it the original overflows to NaN
where ``exp(x)`` does (``x`` > 88 in float32) and Softmax does not: the rewrite only removes
those NaNs.  The Exp and the sums must be read only inside the pattern.
"""

from __future__ import annotations

from kiln.ir.core import Node, Value
from kiln.passes.fusion._match import (
    escaping,
    is_float,
    onnx_opset,
    reduce_axes,
    replace_and_erase,
    scalar_of,
)
from kiln.passmanager.registry import register_pass
from kiln.rewrite import RewritePattern, Rewriter, RuleSet


def _op(value: Value | None, *ops: str) -> Node | None:
    node = value.producer if value is not None else None
    return node if node is not None and node.domain == "" and node.op in ops else None


def _exp_and_sum(root: Node) -> tuple[Node, Node, list[Node]] | None:
    """``root = e / sum`` or ``e · (1 / sum)``: ``(exp, reducesum, extra nodes)``."""
    if root.op == "Div":
        exp, rsum = _op(root.input(0), "Exp"), _op(root.input(1), "ReduceSum")
        return (exp, rsum, []) if exp is not None and rsum is not None else None
    for i in (0, 1):
        exp, rec = _op(root.input(i), "Exp"), _op(root.input(1 - i), "Reciprocal", "Div")
        if exp is None or rec is None:
            continue
        if rec.op == "Div" and scalar_of(rec.input(0)) != 1.0:
            continue
        rsum = _op(rec.inputs[-1], "ReduceSum")
        if rsum is not None:
            return exp, rsum, [rec]
    return None


class RaiseSoftmax(RewritePattern):
    """``exp(x [- max]) / sum(exp(...))`` -> ``Softmax(x)``."""

    name = "raise-softmax"
    roots = ("Div", "Mul")

    def match_and_rewrite(self, node: Node, rewriter: Rewriter) -> bool:
        found = _exp_and_sum(node)
        if found is None:
            return rewriter.refuse("not Exp divided by its ReduceSum")
        exp, rsum, extra = found
        e = exp.outputs[0]
        if rsum.inputs[0] is not e:
            return rewriter.refuse("the ReduceSum does not read the Exp")
        axes = reduce_axes(rsum)
        x = exp.inputs[0]
        assert x is not None
        if axes is None or len(axes) != 1 or x.shape is None:
            return rewriter.refuse("the sum is not over one constant axis (keepdims) of a known rank")
        axis, rank = axes[0], len(x.shape)
        nodes = [node, exp, rsum, *extra]
        sub = _op(x, "Sub")
        if sub is not None:
            rmax = _op(sub.input(1), "ReduceMax")
            if rmax is not None and rmax.inputs[0] is sub.inputs[0] and reduce_axes(rmax) == axes:
                x = sub.inputs[0]
                assert x is not None
                nodes += [sub, rmax]
        if not is_float(x) or node.outputs[0].shape is None or len(node.outputs[0].shape) != rank:
            return rewriter.refuse("not a float tensor of the result's rank")
        graph = node.graph
        assert graph is not None
        if onnx_opset(graph) < 13 and axis != rank - 1:
            return rewriter.refuse("before opset 13 Softmax flattens the axes after its axis: only the last axis")
        leak = escaping(nodes, node)
        if leak is not None:
            return rewriter.refuse(f"%{leak.name} is read outside the pattern")
        op = rewriter.builder(graph, before=node, fused_from=nodes)
        y = op.Softmax(x, axis=axis if onnx_opset(graph) >= 13 else -1)
        replace_and_erase(rewriter, node, [node.outputs[0]], [y], nodes)
        return True


SOFTMAX_RULES = RuleSet([RaiseSoftmax()], name="raise-softmax")


RaiseSoftmaxPass = register_pass(
    SOFTMAX_RULES.as_pass("raise-softmax", "Raises Exp / ReduceSum(Exp) (with or without the max subtracted) to Softmax.")
)


__all__ = ["SOFTMAX_RULES", "RaiseSoftmax", "RaiseSoftmaxPass"]
