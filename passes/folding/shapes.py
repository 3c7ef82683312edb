"""``fold-shapes``: folds the shape computations that exporters leave behind.

PyTorch and TensorFlow exporters emit ``Shape -> Gather -> Unsqueeze ->
Concat -> Reshape`` chains that compute, at run time, shapes that are known
at compile time.  This pass replaces by constants:

- ``Shape`` (with ``start``/``end``) of a value whose dims in that range are
  static, and ``Size`` of a value with a static shape;
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


def fold_shapes(graph: Graph) -> int:
    folded = 0
    for g in list(graph.all_graphs()):
        for node in g:
            if node.graph is not g or node.subgraphs():
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
