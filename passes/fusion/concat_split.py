"""``fuse-concat-split``: Split and Concat cancelled, Concats flattened, per-piece ops hoisted above a Split.

- ``split-of-concat``: ``Split(Concat(a₁..aₙ, axis), axis)`` whose pieces fall on the Concat's
  boundaries -> each piece is its ``aᵢ`` (or a Concat of the run of ``aᵢ`` it covers, when at
  most one piece needs one); ``slice-of-concat``: a Slice that takes exactly one ``aᵢ`` -> ``aᵢ``.
- ``concat-of-split``: a run of inputs of a Concat that are all the outputs of one Split along the
  same axis, in order -> the Split's input (``Concat(Split(x)) = x``).
- ``flatten-concat``: ``Concat(.., Concat(b, c), ..)`` on one axis, the inner read only there ->
  one Concat.
- ``hoist-unary-above-split``: when every output of a Split feeds (only) the same unary
  elementwise op (Relu, Sigmoid, Clip with the same bounds ...) -> that op once, before the Split.
- ``hoist-affine-above-split``: when every output ``pᵢ`` feeds (only) ``Add|Mul|Sub|Div(pᵢ, cᵢ)``
  with constants ``cᵢ`` that do not widen it -> one op with the ``cᵢ`` concatenated along the
  split axis, before the Split.  (The biases of merged Q/K/V projections, the activations of
  merged Convs, see ``fuse-sibling-conv``/``fuse-sibling-matmul``.)

All exact: they move data or apply the same elementwise op to the same elements.  Each leaves
fewer nodes.  Static sizes along the concat/split axis are required.
"""

from __future__ import annotations

import numpy as np
from kiln.ir.core import Node, Value
from kiln.passes.fusion._affine import const_array, fits_into
from kiln.passes.fusion._match import escaping, one_use, replace_and_erase, slice_params, split_sizes
from kiln.passmanager.registry import register_pass
from kiln.rewrite import P, RewritePattern, Rewriter, RuleSet, attrs_of, rule

UNARY_ELEMENTWISE = frozenset({
    "Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Softplus",
    "Softsign", "Mish", "Gelu", "Erf", "Exp", "Log", "Neg", "Abs", "Sqrt", "Reciprocal", "Floor", "Ceil",
    "Round", "Sign", "Sin", "Cos", "Not", "Cast", "Clip", "ThresholdedRelu", "Swish",
})
"""Ops applied element by element that take one tensor (Clip's bounds must be the same constants)."""


def _axis(node: Node, rank: int) -> int:
    return int(node.attr("axis", 0)) % rank


def _sizes_along(values: tuple[Value | None, ...] | list[Value], axis: int) -> list[int] | None:
    sizes = []
    for v in values:
        if v is None or v.shape is None or not isinstance(v.shape[axis], int):
            return None
        sizes.append(int(v.shape[axis]))  # type: ignore[arg-type]
    return sizes


# --------------------------------------------------------------------------- Split(Concat), Slice(Concat)


def _split_groups(cat: Node, split: Node) -> list[list[int]] | str:
    joined = cat.outputs[0]
    if joined.shape is None:
        return "the Concat's rank is unknown"
    rank = len(joined.shape)
    axis = _axis(cat, rank)
    if _axis(split, rank) != axis:
        return "the Split and Concat axes differ"
    sizes, pieces = _sizes_along(cat.inputs, axis), split_sizes(split)
    if sizes is None or pieces is None:
        return "sizes along the axis are not static"
    if 0 in sizes or 0 in pieces:
        return "an empty piece"
    groups: list[list[int]] = []
    i = 0
    for piece in pieces:
        group, total = [], 0
        while total < piece and i < len(sizes):
            group.append(i)
            total += sizes[i]
            i += 1
        if total != piece:
            return "a piece does not fall on the Concat's boundaries"
        groups.append(group)
    if i != len(sizes):
        return "a piece does not fall on the Concat's boundaries"
    if sum(1 for g in groups if len(g) > 1) > (0 if len(joined.uses) > 1 else 1):
        return "more than one piece would need a new Concat"
    return groups


class SplitOfConcat(RewritePattern):
    """``split-of-concat`` for any number of outputs (a declarative pattern fixes the count)."""

    name = "split-of-concat"
    roots = ("Split",)

    def match_and_rewrite(self, node: Node, rewriter: Rewriter) -> bool:
        cat = node.inputs[0].producer if node.inputs[0] is not None else None
        if cat is None or not cat.is_op("Concat"):
            return rewriter.refuse("the Split does not read a Concat")
        groups = _split_groups(cat, node)
        if isinstance(groups, str):
            return rewriter.refuse(groups)
        graph = node.graph
        assert graph is not None
        op = rewriter.builder(graph, before=node, fused_from=[node, cat])
        news = []
        for group in groups:
            parts = [cat.inputs[i] for i in group]
            news.append(parts[0] if len(parts) == 1 else op.Concat(*parts, **attrs_of(cat)))
        olds = list(node.outputs)
        if any(not rewriter.can_replace(o, n) for o, n in zip(olds, news)):
            for made in reversed(op.created):
                graph.remove_node(made, force=True)
            return rewriter.refuse("a piece is a graph output that a Concat input cannot stand for")
        for old, new in zip(olds, news):
            rewriter.replace_value(old, new)
        rewriter.erase_dead([node, cat])
        return True


@rule("slice-of-concat")
def slice_of_concat(op):
    """Slice(Concat(a...)) taking exactly one a -> that a."""
    return op.Slice(op.Concat(P.variadic("parts"), _node="cat"), P.variadic(), _node="sl")


def _sliced_part(cat: Node, sl: Node) -> int | str:
    joined = cat.outputs[0]
    params = slice_params(sl)
    if params is None or joined.shape is None or len(params.axes) != 1 or params.steps != [1]:
        return "not a constant one-axis Slice with step 1"
    axis = _axis(cat, len(joined.shape))
    if params.axes[0] != axis:
        return "the Slice and Concat axes differ"
    sizes = _sizes_along(cat.inputs, axis)
    if sizes is None:
        return "sizes along the axis are not static"
    total = sum(sizes)
    start, end = params.starts[0], params.ends[0]
    start = min(max(start + total if start < 0 else start, 0), total)
    end = min(max(end + total if end < 0 else end, 0), total)
    offset = 0
    for i, size in enumerate(sizes):
        if start == offset and end == offset + size and size > 0:
            return i
        offset += size
    return "the Slice does not take exactly one Concat input"


@slice_of_concat.check
def _(ctx, cat: Node, sl: Node) -> bool | str:
    found = _sliced_part(cat, sl)
    return found if isinstance(found, str) else True


@slice_of_concat.replace
def _(op, cat: Node, sl: Node, parts: tuple) -> Value:
    found = _sliced_part(cat, sl)
    assert isinstance(found, int)
    return parts[found]


# --------------------------------------------------------------------------- Concat(Split), nested Concat


def _split_run(values: list[Value | None], start: int, axis: int, rank: int) -> tuple[Node, int] | None:
    """If ``values[start:]`` begins with all the outputs of one Split on ``axis``, in order: ``(split, n)``."""
    first = values[start]
    split = first.producer if first is not None else None
    if split is None or not split.is_op("Split") or first.output_index != 0:  # type: ignore[union-attr]
        return None
    x = split.inputs[0]
    if x is None or x.shape is None or len(x.shape) != rank or _axis(split, rank) != axis:
        return None
    n = len(split.outputs)
    if values[start:start + n] != split.outputs or any(v is None for v in values[start:start + n]):
        return None
    return split, n


def _collapsed(cat: Node) -> list[Value] | str:
    """``cat``'s inputs with each run of a whole Split's outputs replaced by the Split's input."""
    shape = cat.outputs[0].shape
    if shape is None:
        return "the Concat's rank is unknown"
    rank = len(shape)
    axis = _axis(cat, rank)
    values = list(cat.inputs)
    out: list[Value] = []
    i, changed = 0, False
    while i < len(values):
        run = _split_run(values, i, axis, rank)
        if run is not None:
            out.append(run[0].inputs[0])  # type: ignore[arg-type]
            i += run[1]
            changed = True
        else:
            out.append(values[i])  # type: ignore[arg-type]
            i += 1
    return out if changed else "no run of a whole Split's outputs"


def _flattened(cat: Node) -> list[Value] | str:
    """``cat``'s inputs with each nested Concat on the same axis (read only here) inlined."""
    shape = cat.outputs[0].shape
    if shape is None:
        return "the Concat's rank is unknown"
    rank = len(shape)
    axis = _axis(cat, rank)
    out: list[Value] = []
    changed = False
    for v in cat.inputs:
        inner = v.producer if v is not None else None
        if inner is not None and inner.is_op("Concat") and one_use(v) and _axis(inner, rank) == axis:  # type: ignore[arg-type]
            out.extend(inner.inputs)  # type: ignore[arg-type]
            changed = True
        else:
            out.append(v)  # type: ignore[arg-type]
    return out if changed else "no nested Concat on the same axis read only here"


class _ConcatRewrite(RewritePattern):
    """A Concat whose input list a function rewrites; the producers left unused are erased."""

    roots = ("Concat",)

    def inputs(self, cat: Node) -> list[Value] | str:
        raise NotImplementedError

    def match_and_rewrite(self, node: Node, rewriter: Rewriter) -> bool:
        values = self.inputs(node)
        if isinstance(values, str):
            return rewriter.refuse(values)
        graph = node.graph
        assert graph is not None
        old = node.outputs[0]
        if len(values) == 1:
            new = values[0]
            if not rewriter.can_replace(old, new):
                return rewriter.refuse("the Concat is a graph output that its only input cannot stand for")
        else:
            op = rewriter.builder(graph, before=node, fused_from=[node])
            new = op.Concat(*values, **attrs_of(node))
        producers = [v.producer for v in node.inputs if v is not None and v.producer is not None]
        replace_and_erase(rewriter, node, [old], [new], [node, *producers])
        return True


class ConcatOfSplit(_ConcatRewrite):
    """``Concat(.., Split(x)₀, .., Split(x)ₙ₋₁, ..)`` -> ``Concat(.., x, ..)``."""

    name = "concat-of-split"

    def inputs(self, cat: Node) -> list[Value] | str:
        return _collapsed(cat)


class FlattenConcat(_ConcatRewrite):
    """``Concat(.., Concat(b, c), ..)`` on one axis -> ``Concat(.., b, c, ..)``."""

    name = "flatten-concat"

    def inputs(self, cat: Node) -> list[Value] | str:
        return _flattened(cat)


# --------------------------------------------------------------------------- ops hoisted above a Split


def _consumers(split: Node) -> list[Node] | None:
    """The one consumer of each Split output, or ``None`` when an output has no or several."""
    users = []
    for out in split.outputs:
        if not one_use(out) or out.uses[0].node.graph is not split.graph:
            return None
        users.append(out.uses[0].node)
    return users


def _same_unary(users: list[Node]) -> bool:
    first = users[0]
    if first.domain != "" or first.op not in UNARY_ELEMENTWISE:
        return False
    for u in users:
        if u.op != first.op or u.domain != first.domain or u.attrs != first.attrs or u.inputs[0] is None:
            return False
        if len(u.inputs) != len(first.inputs) or len(u.outputs) != 1:
            return False
        for a, b in zip(u.inputs[1:], first.inputs[1:]):
            if a is b:
                continue
            da, db = const_array(a), const_array(b)
            if da is None or db is None or da.shape != db.shape or not np.array_equal(da, db):
                return False
    return True


class HoistUnary(RewritePattern):
    """``op(Split(x)ᵢ)`` for every output ``i`` -> ``Split(op(x))ᵢ``."""

    name = "hoist-unary-above-split"
    roots = ("Split",)

    def match_and_rewrite(self, node: Node, rewriter: Rewriter) -> bool:
        users = _consumers(node)
        if users is None or not users:
            return rewriter.refuse("an output has no or several users")
        if any(u.inputs[0] is not out for u, out in zip(users, node.outputs)) or not _same_unary(users):
            return rewriter.refuse("the outputs do not all feed the same unary elementwise op")
        graph = node.graph
        assert graph is not None
        op = rewriter.builder(graph, before=node, fused_from=[node, *users])
        first = users[0]
        x = op.op(first.op, node.inputs[0], *first.inputs[1:], **attrs_of(first))
        outs = op.op("Split", x, *node.inputs[1:], _outputs=len(node.outputs), **attrs_of(node))
        outs = outs if isinstance(outs, tuple) else (outs,)
        for u, new in zip(users, outs):
            rewriter.replace_value(u.outputs[0], new)
        rewriter.erase_dead([*users, node])
        return True


_AFFINE_OPS = ("Add", "Mul", "Sub", "Div")


def _hoisted_constant(split: Node, users: list[Node]) -> np.ndarray | str:
    """The per-piece constants concatenated along the split axis (each broadcast to its piece)."""
    x = split.inputs[0]
    if x is None or x.shape is None:
        return "the Split input's rank is unknown"
    rank = len(x.shape)
    axis = _axis(split, rank)
    pieces = split_sizes(split)
    if pieces is None:
        return "piece sizes are not static"
    consts = []
    kind = users[0].op
    for u, out in zip(users, split.outputs):
        if u.domain != "" or u.op != kind or len(u.inputs) != 2:
            return "the outputs do not all feed the same Add/Mul/Sub/Div"
        if u.inputs[0] is out:
            c = u.inputs[1]
        elif kind in ("Add", "Mul") and u.inputs[1] is out:
            c = u.inputs[0]
        else:
            return "the constant is the left operand of a Sub/Div"
        data = const_array(c)
        if data is None or c.dtype != x.dtype or out.shape is None or not fits_into(tuple(data.shape), out.shape):  # type: ignore[union-attr]
            return "an operand is not a constant that broadcasts into its piece"
        consts.append(data.reshape((1,) * (rank - data.ndim) + tuple(data.shape)))
    target: list[int] = []
    for a in range(rank):
        if a == axis:
            target.append(0)  # each piece's own size
            continue
        dims = {c.shape[a] for c in consts} - {1}
        if len(dims) > 1:
            return "the constants differ in shape along another axis"
        target.append(dims.pop() if dims else 1)
    blocks = []
    for c, size in zip(consts, pieces):
        shape = [size if a == axis else target[a] for a in range(rank)]
        blocks.append(np.broadcast_to(c, shape))
    return np.concatenate(blocks, axis=axis)


class HoistAffine(RewritePattern):
    """``Add|Mul|Sub|Div(Split(x)ᵢ, cᵢ)`` for every output -> ``Split(op(x, concat(cᵢ)))``."""

    name = "hoist-affine-above-split"
    roots = ("Split",)

    def match_and_rewrite(self, node: Node, rewriter: Rewriter) -> bool:
        users = _consumers(node)
        if users is None or not users or users[0].op not in _AFFINE_OPS:
            return rewriter.refuse("the outputs do not each feed one Add/Mul/Sub/Div")
        data = _hoisted_constant(node, users)
        if isinstance(data, str):
            return rewriter.refuse(data)
        graph = node.graph
        assert graph is not None
        if escaping([node], node) is not None:
            return rewriter.refuse("a piece is a graph output")
        op = rewriter.builder(graph, before=node, fused_from=[node, *users])
        x = node.inputs[0]
        assert x is not None and x.dtype is not None
        y = op.op(users[0].op, x, op.const(data.astype(x.dtype.numpy), "hoisted"))
        if y.shape != x.shape:
            for made in reversed(op.created):
                graph.remove_node(made, force=True)
            return rewriter.refuse("the concatenated constant widens the input")
        outs = op.op("Split", y, *node.inputs[1:], _outputs=len(node.outputs), **attrs_of(node))
        outs = outs if isinstance(outs, tuple) else (outs,)
        for u, new in zip(users, outs):
            rewriter.replace_value(u.outputs[0], new)
        rewriter.erase_dead([*users, node])
        return True


HOIST_RULES = RuleSet([HoistUnary(), HoistAffine()], name="hoist-above-split")
"""The two hoists alone (the sibling fusions run them after merging)."""

CONCAT_SPLIT_RULES = RuleSet(
    [SplitOfConcat(), slice_of_concat, ConcatOfSplit(), FlattenConcat(), HOIST_RULES], name="fuse-concat-split"
)

FuseConcatSplit = register_pass(
    CONCAT_SPLIT_RULES.as_pass(
        "fuse-concat-split",
        "Cancels Split(Concat) and Concat(Split), flattens nested Concats, hoists per-piece ops above a Split.",
    )
)

__all__ = [
    "CONCAT_SPLIT_RULES",
    "HOIST_RULES",
    "UNARY_ELEMENTWISE",
    "ConcatOfSplit",
    "FlattenConcat",
    "FuseConcatSplit",
    "HoistAffine",
    "HoistUnary",
    "SplitOfConcat",
]
