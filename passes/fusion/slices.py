"""``merge-slices``: chains of Slices merged into one, sibling Slices that tile an axis into one Split.

- ``merge-slice-chain``: ``Slice(Slice(x))`` (constant operands, positive steps, the inner read
  only by the outer) -> one Slice.  Axes sliced by one of them are copied; on an axis both
  slice, with the input dim ``d`` static, the first selects ``a₁, a₁+s₁, ..`` (``n₁`` indices)
  and the second picks positions ``a₂, a₂+s₂, ..`` (``n₂``) among those: together
  ``a₁ + s₁·a₂`` with step ``s₁·s₂``, ``n₂`` elements.
- ``slices-to-split``: Slices of one ``x`` along one axis with step 1 whose ranges (clamped to the
  static dim) tile ``[0, d)`` exactly -> one ``Split(x)`` (what the dynamo exporter writes for
  ``qkv.unbind(0)``, three Slices, becomes the TorchScript exporter's one Split).

Both exact (they select the same elements).  Slice with operands as inputs (opset 10+) only.
"""

from __future__ import annotations

import numpy as np
from kiln.ir.core import Node, Value
from kiln.passes.fusion._match import SliceParams, make_split, slice_params
from kiln.passmanager.registry import register_pass
from kiln.rewrite import P, RewritePattern, Rewriter, RuleSet, rule


def _clamped(start: int, end: int, step: int, dim: int) -> tuple[int, int]:
    """``(first index, count)`` a Slice selects along an axis of size ``dim`` (``step > 0``)."""
    start = start + dim if start < 0 else start
    end = end + dim if end < 0 else end
    start, end = min(max(start, 0), dim), min(max(end, 0), dim)
    count = max(0, -(-(end - start) // step))
    return start, count


def _compose(outer: SliceParams, inner: SliceParams, dims: tuple) -> SliceParams | str:
    per_axis: dict[int, tuple[int, int, int]] = {}
    for p in (inner, outer):
        if any(s <= 0 for s in p.steps):
            return "a step is not positive"
    for a, s, e, st in zip(inner.axes, inner.starts, inner.ends, inner.steps):
        per_axis[a] = (s, e, st)
    for a, s2, e2, st2 in zip(outer.axes, outer.starts, outer.ends, outer.steps):
        if a not in per_axis:
            per_axis[a] = (s2, e2, st2)
            continue
        d = dims[a]
        if not isinstance(d, int):
            return "an axis both Slices cut has no static size"
        s1, e1, st1 = per_axis[a]
        a1, n1 = _clamped(s1, e1, st1, d)
        a2, n2 = _clamped(s2, e2, st2, n1)
        start, step = a1 + st1 * a2, st1 * st2
        end = start + step * (n2 - 1) + 1 if n2 > 0 else start
        per_axis[a] = (start, end, step)
    axes = sorted(per_axis)
    starts, ends, steps = ([per_axis[a][i] for a in axes] for i in range(3))
    return SliceParams(axes, starts, ends, steps)


@rule("merge-slice-chain")
def slice_chain(op, x):
    """Slice(Slice(x, ...), ...) -> Slice(x, ...)."""
    inner = op.Slice(x, P.variadic(), _node="inner", _one_use=True)
    return op.Slice(inner, P.variadic(), _node="outer")


def _merged(x: Value, inner: Node, outer: Node) -> SliceParams | str:
    pi, po = slice_params(inner), slice_params(outer)
    if pi is None or po is None or x.shape is None:
        return "a Slice's operands are not constants (or the rank is unknown)"
    return _compose(po, pi, tuple(x.shape))


@slice_chain.check
def _(ctx, x: Value, inner: Node, outer: Node) -> bool | str:
    found = _merged(x, inner, outer)
    return found if isinstance(found, str) else True


def _ints(op, values: list[int], name: str) -> Value:
    return op.const(np.array(values, dtype=np.int64), name)


@slice_chain.replace
def _(op, x: Value, inner: Node, outer: Node) -> Value:
    p = _merged(x, inner, outer)
    assert not isinstance(p, str)
    return op.Slice(x, _ints(op, p.starts, "starts"), _ints(op, p.ends, "ends"), _ints(op, p.axes, "axes"),
                    _ints(op, p.steps, "steps"))


class SlicesToSplit(RewritePattern):
    """Sibling Slices tiling one axis of ``x`` -> ``Split(x)``."""

    name = "slices-to-split"
    roots = ("Slice",)

    def match_and_rewrite(self, node: Node, rewriter: Rewriter) -> bool:
        x = node.inputs[0]
        mine = slice_params(node)
        if x is None or x.shape is None or mine is None or len(mine.axes) != 1 or mine.steps != [1]:
            return rewriter.refuse("not a constant one-axis Slice with step 1")
        axis = mine.axes[0]
        dim = x.shape[axis]
        if not isinstance(dim, int):
            return rewriter.refuse("the sliced axis has no static size")
        by_start: dict[int, tuple[int, Node]] = {}  # start -> (count, the first Slice found there)
        for user in x.users():
            if user.graph is not node.graph or not user.is_op("Slice") or user.inputs[0] is not x:
                continue
            p = slice_params(user)
            if p is None or p.axes != [axis] or p.steps != [1]:
                continue
            start, count = _clamped(p.starts[0], p.ends[0], 1, dim)
            if count > 0 and (start not in by_start or user is node):
                by_start[start] = (count, user)
        pieces: list[Node] = []
        sizes: list[int] = []
        offset = 0
        while offset in by_start:
            count, piece = by_start[offset]
            pieces.append(piece)
            sizes.append(count)
            offset += count
        if offset != dim or len(pieces) < 2 or node not in pieces:
            return rewriter.refuse("the sibling Slices do not tile the axis")
        graph = node.graph
        assert graph is not None
        position = graph.position()
        first = min(pieces, key=lambda n: position[n])
        op = rewriter.builder(graph, before=first, fused_from=pieces)
        outs = make_split(op, x, sizes, axis)
        for piece, out in zip(pieces, outs):
            rewriter.replace_value(piece.outputs[0], out)
        rewriter.erase_dead(pieces)
        return True


SLICE_RULES = RuleSet([slice_chain, SlicesToSplit()], name="merge-slices")

MergeSlices = register_pass(
    SLICE_RULES.as_pass(
        "merge-slices", "Merges Slice chains into one Slice and sibling Slices that tile an axis into a Split."
    )
)

__all__ = ["SLICE_RULES", "MergeSlices", "SlicesToSplit"]
