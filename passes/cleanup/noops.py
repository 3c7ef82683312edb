"""``remove-noops``: removes nodes that do not change their input.

Cases handled (each only when provably exact from the types and constants):

- ``Identity``; ``Dropout`` in inference (training_mode absent or false) when
  its mask is unused; single-input ``Concat``, ``Sum``, ``Max``, ``Min``,
  ``Mean``; one-output ``Split``;
- ``Cast``/``CastLike`` to the dtype the input already has; a round trip
  ``Cast(Cast(x, T2), T1)`` back to x's type when T2 holds every value of x
  (a lossless widening, or int32 for dims coming from ``Shape``);
- ``Reshape``, ``Expand``, ``Flatten``, ``Squeeze``, ``Unsqueeze``, ``Tile``,
  ``Slice``, ``Pad`` whose output type equals the input type (a same-shape
  reshape, an expand to its own shape, all-ones repeats, a full slice, zero
  pads);
- ``Transpose`` by the identity permutation; ``Transpose`` of a ``Transpose``
  becomes one ``Transpose`` with the composed permutation (or nothing);
- ``Reshape`` of a ``Reshape`` reads the first one's input directly (exact when
  the outer shape has no ``0`` that would copy a dim from its input);
- ``Squeeze(Unsqueeze(x, a), a)`` and ``Unsqueeze(Squeeze(x, a), a)`` -> ``x``;
- ``Add``/``Sub`` of zeros, ``Mul``/``Div`` by ones, ``Pow`` by one, when the
  output type equals the input type (no broadcast widening, no dtype change).

Where the node's output is a graph output and its input is a graph input, the
node stays: removing it would rename the model's interface.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

import numpy as np

from kiln.ir.core import Graph, Node, Value
from kiln.ir.dtypes import DType
from kiln.ir.types import TensorType
from kiln.passmanager.base import Pass, PassContext
from kiln.passmanager.registry import register_pass

Rule = Callable[[Node, Graph], "Value | None"]
"""A rule returns the value the node's first output can be replaced by, or ``None``."""


def _same_type(a: Value | None, b: Value) -> bool:
    """Both types fully known (no unknown dims) and equal."""
    if a is None:
        return False
    ta, tb = a.type, b.type
    if not isinstance(ta, TensorType) or not isinstance(tb, TensorType):
        return False
    if ta.shape is None or any(d is None for d in ta.shape):
        return False
    return ta == tb


def _const(v: Value | None) -> np.ndarray | None:
    return None if v is None or v.const is None else v.const.numpy()


def _all_equal(v: Value | None, scalar: float) -> bool:
    data = _const(v)
    if data is None or data.dtype == object or data.size == 0 or data.size > 4096:
        return False
    return bool(np.all(data == scalar))


def _passthrough(node: Node, graph: Graph) -> Value | None:
    return node.input(0)


def _dropout(node: Node, graph: Graph) -> Value | None:
    if len(node.outputs) > 1 and (node.outputs[1].uses or graph.is_output(node.outputs[1])):
        return None
    training = node.input(2)
    if training is not None:
        data = _const(training)
        if data is None or bool(data.reshape(-1)[0]):
            return None
    return node.input(0)


def _single_input(node: Node, graph: Graph) -> Value | None:
    present = [v for v in node.inputs if v is not None]
    return present[0] if len(present) == 1 and len(node.inputs) == 1 else None


def _same_type_passthrough(node: Node, graph: Graph) -> Value | None:
    x = node.input(0)
    return x if _same_type(x, node.outputs[0]) else None


def _cast(node: Node, graph: Graph) -> Value | None:
    x = node.input(0)
    if x is None or x.dtype is None:
        return None
    if node.op == "Cast":
        return x if node.attr("to") == int(x.dtype) else None
    like = node.input(1)
    return x if like is not None and like.dtype == x.dtype else None


# Casts that lose nothing: every value of the first type survives the second.
_LOSSLESS_WIDENING = {
    DType.INT8: {DType.INT16, DType.INT32, DType.INT64, DType.FLOAT, DType.DOUBLE, DType.FLOAT16},
    DType.UINT8: {DType.INT16, DType.UINT16, DType.INT32, DType.UINT32, DType.INT64, DType.UINT64,
                  DType.FLOAT, DType.DOUBLE, DType.FLOAT16},
    DType.INT16: {DType.INT32, DType.INT64, DType.FLOAT, DType.DOUBLE},
    DType.UINT16: {DType.INT32, DType.UINT32, DType.INT64, DType.UINT64, DType.FLOAT, DType.DOUBLE},
    DType.INT32: {DType.INT64, DType.DOUBLE},
    DType.UINT32: {DType.INT64, DType.UINT64, DType.DOUBLE},
    DType.FLOAT16: {DType.FLOAT, DType.DOUBLE},
    DType.BFLOAT16: {DType.FLOAT, DType.DOUBLE},
    DType.FLOAT: {DType.DOUBLE},
    DType.BOOL: {DType.INT8, DType.UINT8, DType.INT16, DType.INT32, DType.INT64, DType.FLOAT, DType.DOUBLE},
}


def _holds_dims(value: Value) -> bool:
    """Whether ``value`` holds tensor dims (from Shape/Size), which always fit in int32."""
    producer = value.producer
    return producer is not None and producer.domain == "" and producer.op in ("Shape", "Size")


def _round_trip_cast(node: Node, graph: Graph) -> Value | None:
    """Cast(Cast(x, T2), T1) with x of type T1 is x when T2 holds every value of x."""
    inner = node.input(0)
    if inner is None or inner.producer is None or not inner.producer.is_op("Cast"):
        return None
    x = inner.producer.input(0)
    if x is None or x.dtype is None or inner.dtype is None or node.attr("to") != int(x.dtype):
        return None
    middle = inner.dtype
    if middle in _LOSSLESS_WIDENING.get(x.dtype, ()):
        return x
    if x.dtype == DType.INT64 and middle == DType.INT32 and _holds_dims(x):
        return x
    return None


_MOVEMENT_OPS = frozenset({"Slice", "Gather", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Flatten"})


def _cast_through_movement(graph: Graph, node: Node) -> bool:
    """Cast(M(Cast(x, T2)), T1) -> M(x) for a data-movement op M and x of type T1.

    Exporters round-trip shape values through int32 around a Slice or Gather;
    moving elements commutes with casting them, so the casts cancel whenever
    the inner one loses nothing (see :func:`_round_trip_cast`).
    """
    moved = node.input(0)
    mover = moved.producer if moved is not None else None
    if mover is None or mover.domain != "" or mover.op not in _MOVEMENT_OPS or len(moved.uses) != 1:
        return False
    if graph.is_output(moved):
        return False
    inner = mover.input(0)
    if inner is None or inner.producer is None or not inner.producer.is_op("Cast"):
        return False
    x = inner.producer.input(0)
    if x is None or x.dtype is None or inner.dtype is None or node.attr("to") != int(x.dtype):
        return False
    if not (inner.dtype in _LOSSLESS_WIDENING.get(x.dtype, ()) or
            (x.dtype == DType.INT64 and inner.dtype == DType.INT32 and _holds_dims(x))):
        return False
    out = node.outputs[0]
    if not out.can_replace_all_uses_with(moved):
        return False
    mover.set_input(0, x)
    if isinstance(moved.type, TensorType):
        moved.type = moved.type.with_dtype(x.dtype)
    out.replace_all_uses_with(moved)
    graph.remove_node(node)
    return True


def _split(node: Node, graph: Graph) -> Value | None:
    return node.input(0) if len(node.outputs) == 1 and _same_type(node.input(0), node.outputs[0]) else None


def _identity_transpose(node: Node, graph: Graph) -> Value | None:
    perm = node.attr("perm")
    x = node.input(0)
    if perm is None:
        # Default perm reverses the axes: a no-op only for rank <= 1.
        return x if x is not None and x.shape is not None and len(x.shape) <= 1 else None
    return x if list(perm) == list(range(len(perm))) else None


def _neutral_binary(node: Node, graph: Graph) -> Value | None:
    a, b = node.input(0), node.input(1)
    out = node.outputs[0]
    neutral = {"Add": 0.0, "Sub": 0.0, "Mul": 1.0, "Div": 1.0, "Pow": 1.0}[node.op]
    if _all_equal(b, neutral) and _same_type(a, out):
        return a
    if node.op in ("Add", "Mul") and _all_equal(a, neutral) and _same_type(b, out):
        return b
    return None


def _squeeze_axes(node: Node) -> list[int] | None:
    if (node.version or 13) >= 13:
        axes_value = node.input(1)
        if axes_value is None:
            return None
        data = _const(axes_value)
        return None if data is None else [int(a) for a in data.reshape(-1)]
    axes = node.attr("axes")
    return None if axes is None else [int(a) for a in axes]


def _squeeze_pair(node: Node, graph: Graph) -> Value | None:
    """Squeeze(Unsqueeze(x, a), a) and Unsqueeze(Squeeze(x, a), a) are x."""
    inner = node.input(0)
    if inner is None or inner.producer is None:
        return None
    producer = inner.producer
    partner = {"Squeeze": "Unsqueeze", "Unsqueeze": "Squeeze"}[node.op]
    if producer.op != partner or producer.domain != "":
        return None
    x = producer.input(0)
    outer_axes, inner_axes = _squeeze_axes(node), _squeeze_axes(producer)
    if x is None or outer_axes is None or inner_axes is None:
        return None
    rank_out = node.outputs[0].shape
    rank_x = x.shape
    if rank_out is None or rank_x is None or len(rank_out) != len(rank_x):
        return None
    # Normalise negative axes against the rank each op sees.
    unsq_rank = len(rank_x) + len(inner_axes) if producer.op == "Unsqueeze" else len(rank_x)
    def norm(axes: list[int]) -> list[int]:
        return sorted(a % unsq_rank for a in axes)
    if norm(outer_axes) != norm(inner_axes):
        return None
    return x if _same_type(x, node.outputs[0]) else None


NOOP_RULES: dict[str, Rule] = {
    "Identity": _passthrough,
    "Dropout": _dropout,
    "Concat": _single_input,
    "Sum": _single_input,
    "Max": _single_input,
    "Min": _single_input,
    "Mean": _single_input,
    "Split": _split,
    "Cast": _cast,
    "CastLike": _cast,
    "Reshape": _same_type_passthrough,
    "Expand": _same_type_passthrough,
    "Flatten": _same_type_passthrough,
    "Tile": _same_type_passthrough,
    "Slice": _same_type_passthrough,
    "Pad": _same_type_passthrough,
    "Transpose": _identity_transpose,
    "Add": _neutral_binary,
    "Sub": _neutral_binary,
    "Mul": _neutral_binary,
    "Div": _neutral_binary,
    "Pow": _neutral_binary,
}
SQUEEZE_RULES: dict[str, Rule] = {"Squeeze": _squeeze_pair, "Unsqueeze": _squeeze_pair}


def _rule_for(node: Node) -> list[Rule]:
    if node.domain != "":
        return []
    rules = []
    if node.op in NOOP_RULES:
        rules.append(NOOP_RULES[node.op])
    if node.op == "Cast":
        rules.append(_round_trip_cast)
    if node.op in SQUEEZE_RULES:
        rules.append(SQUEEZE_RULES[node.op])
        rules.append(_same_type_passthrough)
    return rules


def _slice_is_full(node: Node) -> bool:
    # Same-type check alone would accept a reversing slice (steps -1) of equal shape.
    if (node.version or 10) < 10:
        return True
    steps = _const(node.input(4))
    return steps is None and node.input(4) is None or steps is not None and bool(np.all(steps == 1))


def _pad_is_zero(node: Node) -> bool:
    if (node.version or 11) < 11:
        return all(p == 0 for p in node.attr("pads", []))
    pads = _const(node.input(1))
    return pads is not None and bool(np.all(pads == 0))


def _forward(graph: Graph, node: Node, replacement: Value) -> bool:
    """Replaces the node's first output by ``replacement`` and removes the node."""
    out = node.outputs[0]
    if replacement is out or not out.can_replace_all_uses_with(replacement):
        return False
    if any(o.uses or graph.is_output(o) for o in node.outputs[1:]):
        return False
    out.replace_all_uses_with(replacement)
    graph.remove_node(node)
    return True


def _compose_transposes(graph: Graph, node: Node) -> bool:
    """Transpose(Transpose(x, p1), p2) -> Transpose(x, p1[p2]) or x."""
    inner = node.input(0)
    if inner is None or inner.producer is None or not inner.producer.is_op("Transpose"):
        return False
    first = inner.producer
    p1, p2 = first.attr("perm"), node.attr("perm")
    if p1 is None or p2 is None or len(p1) != len(p2):
        return False
    composed = [int(p1[i]) for i in p2]
    x = first.input(0)
    assert x is not None
    if composed == list(range(len(composed))):
        return _forward(graph, node, x)
    node.set_input(0, x)
    node.set_attr("perm", composed)
    return True


def _collapse_reshapes(graph: Graph, node: Node) -> bool:
    """Reshape(Reshape(x, s1), s2) -> Reshape(x, s2) when s2 copies no dim (no 0)."""
    inner = node.input(0)
    if inner is None or inner.producer is None or not inner.producer.is_op("Reshape"):
        return False
    shape = _const(node.input(1))
    if shape is None or (node.attr("allowzero", 0) == 0 and bool(np.any(shape == 0))):
        return False
    x = inner.producer.input(0)
    assert x is not None
    node.set_input(0, x)
    return True


def remove_noops(graph: Graph) -> int:
    removed = 0
    for g in list(graph.all_graphs()):
        for node in g:
            if node.graph is not g or not node.outputs:
                continue
            if node.is_op("Transpose") and _compose_transposes(g, node):
                removed += 1
                if node.graph is not g:
                    continue
            if node.is_op("Cast") and _cast_through_movement(g, node):
                removed += 1
                continue
            if node.is_op("Reshape") and _collapse_reshapes(g, node):
                removed += 1
            if node.is_op("Slice") and not _slice_is_full(node):
                continue
            if node.is_op("Pad") and not _pad_is_zero(node):
                continue
            for rule in _rule_for(node):
                replacement = rule(node, g)
                if replacement is not None and _forward(g, node, replacement):
                    removed += 1
                    break
    return removed


@register_pass
@dataclass(frozen=True)
class RemoveNoops(Pass):
    """Removes ops that leave their input unchanged (Identity, same-type Cast, full Slice, ...)."""

    name: ClassVar[str] = "remove-noops"

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        removed = remove_noops(graph)
        ctx.bump("remove-noops.removed", removed)
        return removed > 0
