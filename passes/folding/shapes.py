"""``fold-shapes``: folds the shape computations that exporters leave behind.

PyTorch and TensorFlow exporters emit ``Shape -> Gather -> Unsqueeze ->
Concat -> Reshape`` chains that compute, at run time, shapes that are known
at compile time.  This pass replaces by constants:

- ``Shape`` (with ``start``/``end``) of a value whose dims in that range are
  static, and ``Size`` of a value with a static shape;
- pieces of a ``Reshape``'s shape that copy the Reshape input's own dims
  at the same positions, by zeros (``allowzero=0`` copies them);
- ``Slice`` of a ``Shape`` by a ``Shape`` with ``start``/``end`` (one node
  instead of two);
- any integer tensor whose value inference has worked out entirely
  (``value.meta["sym_value"]``, set by ``kiln.ops.inference`` when it
  propagates dims through Gather, Slice, Concat, arithmetic and casts).

The rest of the chain then folds with ``fold``.  Symbolic dims stay: a shape
that still names ``N`` is not a constant and is left for run time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from kiln.ir.core import Graph, Node, Value
from kiln.ir.types import TensorType
from kiln.ops.inference import infer_graph
from kiln.passmanager.base import Pass, PassContext
from kiln.passmanager.registry import register_pass


def _shape_slice(node: Node, dims: tuple) -> tuple:
    rank = len(dims)
    start = int(node.attr("start", 0))
    end = node.attr("end")
    start = min(max(start + rank if start < 0 else start, 0), rank)
    stop = rank if end is None else int(end)
    stop = min(max(stop + rank if stop < 0 else stop, 0), rank)
    return dims[start:stop]


def static_result(node: Node) -> np.ndarray | None:
    """The constant a Shape/Size node (or a fully known integer value) stands for."""
    x = node.input(0)
    if node.domain == "" and node.op in ("Shape", "Size") and x is not None:
        shape = x.shape
        if shape is None:
            return None
        if node.op == "Size":
            if all(isinstance(d, int) for d in shape):
                return np.array(int(np.prod(shape, dtype=np.int64)), dtype=np.int64)
            return None
        dims = _shape_slice(node, shape)
        if all(isinstance(d, int) for d in dims):
            return np.array(dims, dtype=np.int64)
        return None
    if len(node.outputs) == 1:
        return _known_value(node.outputs[0])
    return None


def _known_value(value: Value) -> np.ndarray | None:
    sym = value.meta.get("sym_value")
    t = value.type
    if sym is None or not isinstance(t, TensorType) or t.dtype.numpy.kind not in "iu":
        return None
    if not all(isinstance(d, int) and not isinstance(d, bool) for d in sym):
        return None
    rank = t.rank
    if rank == 0 and len(sym) == 1:
        return np.array(sym[0], dtype=t.dtype.numpy)
    if rank == 1 and t.shape is not None and t.shape[0] in (len(sym), None):
        return np.array(sym, dtype=t.dtype.numpy)
    return None


def _slice_of_shape(graph: Graph, node: Node) -> bool:
    """Slice(Shape(x), [a], [b]) -> Shape(x, start=a, end=b) (opset 15+, step 1, axis 0)."""
    if not node.is_op("Slice") or (node.version or 0) < 10:
        return False
    data = node.input(0)
    shape_node = data.producer if data is not None else None
    if shape_node is None or not shape_node.is_op("Shape") or (shape_node.version or 0) < 15:
        return False
    if shape_node.attrs or data is None or data.shape is None:
        return False
    consts = [node.input(i) for i in range(1, 5)]
    values = [None if c is None else (c.const.numpy().reshape(-1) if c.const is not None else False) for c in consts]
    starts, ends, axes, steps = values
    if starts is None or ends is None or starts is False or ends is False or axes is False or steps is False:
        return False
    if len(starts) != 1 or (axes is not None and int(axes[0]) not in (0, -1)) or (steps is not None and int(steps[0]) != 1):
        return False
    rank = data.shape[0]
    if not isinstance(rank, int):
        return False
    start, end = int(starts[0]), int(ends[0])
    start = max(0, min(rank, start + rank if start < 0 else start))
    end = max(0, min(rank, end + rank if end < 0 else end))
    x = shape_node.input(0)
    with graph.inserting_before(node):
        new = graph.create_node(
            "Shape", [x], {"start": start, "end": end}, version=shape_node.version,
            output_types=[node.outputs[0].type], loc=node.loc,
        )
    out = node.outputs[0]
    if not out.can_replace_all_uses_with(new.outputs[0]):
        graph.remove_node(new)
        return False
    out.replace_all_uses_with(new.outputs[0])
    graph.remove_node(node)
    return True


def _copied_dims(piece: Value, data: Value) -> tuple[int, int] | None:
    """If ``piece`` is dims ``[k, k+n)`` of ``Shape(data)``, returns ``(k, n)``."""
    producer = piece.producer
    if producer is None or producer.domain != "":
        return None
    if producer.op == "Shape" and producer.input(0) is data:
        rank = len(data.shape) if data.shape is not None else None
        if rank is None:
            return None
        dims = _shape_slice(producer, tuple(range(rank)))
        return (dims[0], len(dims)) if dims and list(dims) == list(range(dims[0], dims[0] + len(dims))) else None
    source = producer.input(0)
    if source is None or source.producer is None or not source.producer.is_op("Shape"):
        return None
    inner = _copied_dims(source, data)
    if inner is None or inner[0] != 0:
        return None
    consts = [producer.input(i) for i in range(1, len(producer.inputs))]
    if any(c is None or c.const is None for c in consts[:2]):
        return None
    if producer.op == "Gather" and producer.attr("axis", 0) == 0:
        idx = consts[0].const.numpy()  # type: ignore[union-attr]
        if idx.ndim == 1 and idx.size == 1 and int(idx[0]) >= 0:
            return (int(idx[0]), 1)
    if producer.op == "Slice" and (producer.version or 0) >= 10 and len(consts) >= 2:
        start, end = (int(c.const.numpy().reshape(-1)[0]) for c in consts[:2])  # type: ignore[union-attr]
        rest = [c.const.numpy().reshape(-1) if c is not None and c.const is not None else None for c in consts[2:]]
        if any(r is None for r in rest[: len(consts) - 2]) or any(len(r) != 1 for r in rest if r is not None):
            return None
        if (rest and int(rest[0][0]) != 0) or (len(rest) > 1 and int(rest[1][0]) != 1):
            return None
        if 0 <= start < end <= inner[1]:
            return (start, end - start)
    return None


def _reshape_copies_dims(graph: Graph, node: Node) -> bool:
    """Reshape(x, Concat(..., Shape(x)[i:i+n] at position i, ...)) -> that piece becomes zeros.

    With ``allowzero=0`` a 0 in Reshape's shape copies the input's dim at the
    same position, so a piece that reads exactly those dims of the Reshape's
    own input is a constant; once every piece is, the Concat folds away.
    """
    if not node.is_op("Reshape") or node.attr("allowzero", 0) != 0:
        return False
    data, shape = node.input(0), node.input(1)
    if data is None or shape is None or shape.producer is None or not shape.producer.is_op("Concat"):
        return False
    concat = shape.producer
    changed = False
    position = 0
    for index, piece in enumerate(concat.inputs):
        if piece is None or piece.shape is None or len(piece.shape) != 1 or not isinstance(piece.shape[0], int):
            return changed
        length = piece.shape[0]
        if piece.const is None:
            copied = _copied_dims(piece, data)
            if copied == (position, length):
                zeros = graph.add_constant(f"{piece.name}_as_zero", np.zeros(length, dtype=np.int64))
                concat.set_input(index, zeros)
                changed = True
        position += length
    return changed


def fold_shapes(graph: Graph) -> int:
    # Value inference records the dims that integer tensors are known to hold
    # (meta["sym_value"]); refresh it, since earlier passes changed the graph.
    # Known dims only ever start at a Shape or Size node: without one there
    # is nothing for this pass to find, and a 100k-node CNN skips the walk.
    if not any(node.domain == "" and node.op in ("Shape", "Size") for node in graph.walk()):
        return 0
    infer_graph(graph)
    folded = 0
    for g in list(graph.all_graphs()):
        for node in g:
            if node.graph is not g or node.subgraphs():
                continue
            if _reshape_copies_dims(g, node):
                folded += 1
            if _slice_of_shape(g, node):
                folded += 1
                continue
            if all(v is None or v.const is not None for v in node.inputs) and node.op not in ("Shape", "Size"):
                continue  # plain constant folding handles these
            data = static_result(node)
            if data is None:
                continue
            out = node.outputs[0]
            const = g.add_constant(out.name + "_shape", data)
            was_output = g.is_output(out)
            out.replace_all_uses_with(const)
            g.remove_node(node)
            if not was_output and const.uses:
                g.rename_value(const, out.name)
            folded += 1
    return folded


@register_pass
@dataclass(frozen=True)
class FoldShapes(Pass):
    """Replaces Shape/Size of static dims, and integer values known at compile time, by constants."""

    name: ClassVar[str] = "fold-shapes"

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        folded = fold_shapes(graph)
        ctx.bump("fold-shapes.nodes", folded)
        return folded > 0
