"""Analysis helpers shared by the raising and tensor-fusion passes.

- constants: :func:`scalar_of`, :func:`ints_of`, :func:`close`;
- opset-dependent operands: :func:`reduce_axes` (ReduceMean/ReduceSum/ReduceMax axes, attribute
  or input), :func:`squeeze_axes`, :func:`slice_params`, :func:`split_sizes`, and
  :func:`make_split`, which writes the form of the graph's opset;
- :func:`product_of`: a value read as ``c * t1 * t2 * ...`` through single-use Mul, Div by a
  constant and Pow by a small integer, so a pattern is matched whatever order its exporter
  multiplied its factors in (``x * 0.5 * (1 + erf(...))`` and ``(x * (1 + erf(...))) * 0.5`` are
  the same product);
- shape facts: :func:`same_rank`, :func:`splits_last_axis`, :func:`merges_last_axes`;
- match hygiene: :func:`escaping` (an intermediate read outside the match), :func:`product_continues`,
  and :func:`replace_and_erase`, the end of an imperative rewrite.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from kiln.ir.core import Graph, Node, Value
from kiln.ir.dtypes import DType
from kiln.ops.registry import newest_onnx_opset
from kiln.passes.fusion._affine import FLOAT_DTYPES, const_array

__all__ = [
    "FLOAT_DTYPES",
    "Product",
    "close",
    "const_rtol",
    "escaping",
    "ints_of",
    "is_float",
    "make_split",
    "merges_last_axes",
    "one_use",
    "onnx_opset",
    "product_continues",
    "product_of",
    "reduce_axes",
    "replace_and_erase",
    "same_rank",
    "scalar_of",
    "slice_params",
    "split_sizes",
    "splits_last_axis",
    "squeeze_axes",
]


def onnx_opset(graph: Graph | None) -> int:
    """The ONNX opset of ``graph``'s model (the newest known when it has none)."""
    if graph is None:
        return newest_onnx_opset()
    return graph.root.opsets.get("", 0) or newest_onnx_opset()


def is_float(value: Value | None) -> bool:
    return value is not None and value.dtype in FLOAT_DTYPES


def one_use(value: Value) -> bool:
    """Exactly one use and not a graph output."""
    graph = value.graph
    return len(value.uses) == 1 and not (graph is not None and graph.is_output(value))


def scalar_of(value: Value | None) -> float | None:
    """The number a one-element float or integer constant holds, else ``None``."""
    data = const_array(value)
    if data is None or data.size != 1 or data.dtype.kind not in "fiu":
        return None
    return float(data.reshape(-1)[0])


def ints_of(value: Value | None) -> list[int] | None:
    """The elements of an integer constant, else ``None``."""
    data = const_array(value)
    if data is None or data.dtype.kind not in "iu":
        return None
    return [int(v) for v in data.reshape(-1)]


def close(a: float, b: float, rtol: float = 1e-5) -> bool:
    """``a`` and ``b`` agree to ``rtol`` (how float32 constants of one formula may differ)."""
    return math.isclose(a, b, rel_tol=rtol, abs_tol=rtol * 1e-3)


def const_rtol(value: Value | None) -> float:
    """How closely constants of ``value``'s type spell a real number: 2e-3 for float16, else 1e-5."""
    return 2e-3 if value is not None and value.dtype == DType.FLOAT16 else 1e-5


def _normalized(axes: Sequence[int], rank: int | None) -> list[int] | None:
    if rank is None:
        return list(axes) if all(a >= 0 for a in axes) else None
    out = []
    for a in axes:
        if not -rank <= a < rank:
            return None
        out.append(a % rank)
    return sorted(out)


def reduce_axes(node: Node) -> list[int] | None:
    """The axes a ReduceMean/ReduceSum/ReduceMax/... node reduces, non-negative and sorted.

    ``None`` when they are not constant or the node keeps no dims (``keepdims=0``), or reduces
    nothing (``noop_with_empty_axes``).  Axes are an input from opset 18 (ReduceSum: 13).
    """
    if not node.attr("keepdims", 1):
        return None
    rank = len(node.inputs[0].shape) if node.inputs and node.inputs[0] is not None and node.inputs[0].shape is not None else None
    axes_input = node.input(1)
    if axes_input is not None:
        axes = ints_of(axes_input)
        if axes is None:
            return None
    else:
        axes = node.attr("axes")
        if axes is None:
            if node.attr("noop_with_empty_axes", 0):
                return None
            return list(range(rank)) if rank is not None else None
    if not axes:
        return None if node.attr("noop_with_empty_axes", 0) else (list(range(rank)) if rank is not None else None)
    return _normalized([int(a) for a in axes], rank)


def squeeze_axes(node: Node) -> list[int] | None:
    """The axes a Squeeze/Unsqueeze node names (attribute before opset 13, input after), normalized."""
    axes = ints_of(node.input(1)) if node.input(1) is not None else node.attr("axes")
    if axes is None:
        return None
    x = node.input(0) if node.op == "Squeeze" else node.outputs[0]
    rank = len(x.shape) if x is not None and x.shape is not None else None
    return _normalized([int(a) for a in axes], rank)


@dataclass
class SliceParams:
    """A Slice with constant operands: per sliced axis ``(start, end, step)``, axes non-negative."""

    axes: list[int]
    starts: list[int]
    ends: list[int]
    steps: list[int]


def slice_params(node: Node) -> SliceParams | None:
    """The constant operands of a Slice (opset 10+: inputs), axes normalized; else ``None``."""
    if node.version is not None and node.version < 10:
        return None
    x = node.input(0)
    rank = len(x.shape) if x is not None and x.shape is not None else None
    starts, ends = ints_of(node.input(1)), ints_of(node.input(2))
    if starts is None or ends is None or len(starts) != len(ends):
        return None
    axes: list[int] | None = list(range(len(starts))) if node.input(3) is None else ints_of(node.input(3))
    steps: list[int] | None = [1] * len(starts) if node.input(4) is None else ints_of(node.input(4))
    if axes is None or steps is None or len(axes) != len(starts) or len(steps) != len(starts):
        return None
    if rank is None:
        return None
    norm = []
    for a in axes:
        if not -rank <= a < rank:
            return None
        norm.append(a % rank)
    if len(set(norm)) != len(norm):
        return None
    return SliceParams(norm, starts, ends, steps)


def split_sizes(node: Node) -> list[int] | None:
    """The piece sizes of a Split along its axis (even split resolved from the static input dim)."""
    x = node.input(0)
    if x is None or x.shape is None:
        return None
    axis = int(node.attr("axis", 0)) % len(x.shape)
    sizes = ints_of(node.input(1)) if node.input(1) is not None else node.attr("split")
    if sizes:
        return [int(s) for s in sizes]
    dim = x.shape[axis]
    n = len(node.outputs)
    if not isinstance(dim, int):
        return None
    chunk = -(-dim // n)
    sizes = [chunk] * (n - 1) + [dim - chunk * (n - 1)]
    return sizes if sizes[-1] >= 0 else None


def make_split(op, x: Value, sizes: Sequence[int], axis: int) -> tuple[Value, ...]:
    """``Split(x, sizes, axis)`` in the form of the graph's opset (sizes an input from 13)."""
    version = onnx_opset(op.graph)
    if version >= 13:
        outs = op.Split(x, op.const(np.array(list(sizes), dtype=np.int64), "split"), axis=axis, _outputs=len(sizes))
    else:
        outs = op.Split(x, axis=axis, split=list(sizes), _outputs=len(sizes))
    return outs if isinstance(outs, tuple) else (outs,)


# --------------------------------------------------------------------------- products


@dataclass
class Product:
    """A value read as ``coef * terms[0] * terms[1] * ...``.

    Attributes:
        coef: the product of the scalar constant factors (divisors inverted).
        terms: the other factors, in the order met.
        nodes: the Mul/Div/Pow nodes walked through (the root first).
    """

    coef: float = 1.0
    terms: list[Value] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)

    def only(self) -> Value | None:
        """The single non-constant factor, or ``None``."""
        return self.terms[0] if len(self.terms) == 1 else None


def product_of(value: Value, *, max_nodes: int = 8) -> Product:
    """Reads ``value`` as a product (see :class:`Product`).

    The walk enters ``value``'s own producer, and below it only nodes whose
    output has one use (their work disappears with the match).  Scalar float
    constants multiply ``coef``; ``Div(a, c)`` divides it; ``Pow(a, n)`` with a
    small positive integer ``n`` repeats ``a``; ``Neg`` negates.  Other values
    are terms.
    """
    result = Product()
    stack: list[tuple[Value, bool]] = [(value, True)]
    while stack:
        v, is_root = stack.pop()
        node = v.producer
        if node is None or node.domain != "" or len(result.nodes) >= max_nodes or not (is_root or one_use(v)):
            result.terms.append(v)
            continue
        if node.op == "Mul" and len(node.inputs) == 2:
            result.nodes.append(node)
            for inp in reversed(node.inputs):
                assert inp is not None
                s = scalar_of(inp) if is_float(inp) else None
                if s is not None:
                    result.coef *= s
                else:
                    stack.append((inp, False))
            continue
        if node.op == "Div":
            s = scalar_of(node.input(1)) if is_float(node.input(1)) else None
            if s is not None and s != 0.0:
                result.nodes.append(node)
                result.coef /= s
                stack.append((node.inputs[0], False))  # type: ignore[arg-type]
                continue
        if node.op == "Pow":
            n = scalar_of(node.input(1))
            if n is not None and n in (2.0, 3.0):
                result.nodes.append(node)
                for _ in range(int(n)):
                    stack.append((node.inputs[0], False))  # type: ignore[arg-type]
                continue
        if node.op == "Neg":
            result.nodes.append(node)
            result.coef = -result.coef
            stack.append((node.inputs[0], False))  # type: ignore[arg-type]
            continue
        result.terms.append(v)
    return result


# --------------------------------------------------------------------------- shapes


def _same_leading(a: Sequence, b: Sequence) -> bool:
    """Two dim lists that must be equal: equal where known, at most one position unknown.

    Used on the two sides of a Reshape, where the element counts agree: if all
    dims but one are the same known values (or the same symbols), the last one
    is the same too.
    """
    if len(a) != len(b):
        return False
    unknown = 0
    for x, y in zip(a, b):
        if x is not None and x == y:
            continue
        unknown += 1
    return unknown <= 1


def splits_last_axis(src: Value | None, dst: Value | None, parts: int) -> tuple[int, ...] | None:
    """If ``dst = Reshape(src)`` splits only the last axis of ``src`` into ``parts`` static dims, those dims."""
    if src is None or dst is None or src.shape is None or dst.shape is None:
        return None
    s, d = src.shape, dst.shape
    if len(d) != len(s) - 1 + parts or not s:
        return None
    tail = d[len(s) - 1:]
    if not all(isinstance(t, int) for t in tail) or not isinstance(s[-1], int):
        return None
    if math.prod(tail) != s[-1]:  # type: ignore[arg-type]
        return None
    return tuple(tail) if _same_leading(s[:-1], d[: len(s) - 1]) else None  # type: ignore[return-value]


def merges_last_axes(src: Value | None, dst: Value | None, parts: int) -> bool:
    """Whether ``dst = Reshape(src)`` merges only the last ``parts`` axes of ``src`` (static) into one."""
    if src is None or dst is None or src.shape is None or dst.shape is None:
        return False
    s, d = src.shape, dst.shape
    if len(s) != len(d) - 1 + parts or not d:
        return False
    tail = s[len(s) - parts:]
    if not all(isinstance(t, int) for t in tail):
        return False
    if d[-1] != math.prod(tail):  # type: ignore[arg-type]
        return False
    return _same_leading(s[: len(s) - parts], d[:-1])


def same_rank(a: Value | None, b: Value | None) -> bool:
    """Both ranks known and equal (a product of ``a`` with scalars then never widened it)."""
    return a is not None and b is not None and a.shape is not None and b.shape is not None and len(a.shape) == len(b.shape)


def escaping(nodes: Sequence[Node], root: Node) -> Value | None:
    """An output of a matched node (not the root) read outside the match or a graph output, else ``None``.

    A match whose intermediates are all private disappears entirely with the
    rewrite; one with an escaping value would keep (part of) its work alive.  A
    matched node of another graph (the enclosing one, seen from an If branch or a
    Loop body) counts as escaping too: raising would move its work into the body.
    """
    inside = {id(n) for n in nodes}
    for node in nodes:
        if node is root:
            continue
        if node.graph is not root.graph:  # a match reaching into an enclosing graph: its work would move
            return node.outputs[0]
        graph = node.graph
        for out in node.outputs:
            if graph is not None and graph.is_output(out):
                return out
            if any(id(use.node) not in inside for use in out.uses):
                return out
    return None


def replace_and_erase(rewriter, root: Node, olds: Sequence[Value], news: Sequence[Value], matched: Sequence[Node]) -> None:
    """The end of an imperative rewrite: ``olds`` read as ``news``, dead matched nodes erased.

    Like a declarative rule's: a node this rewrite created for ``news`` takes ``root``'s name
    when it has none, and its value the name of the value it replaced once that one is gone.
    """
    created = {id(n) for n in rewriter.created_now}
    fresh = [new.producer is not None and id(new.producer) in created for new in news]
    for old, new, made in zip(olds, news, fresh):
        if made and not new.producer.name and root.name:  # type: ignore[union-attr]
            new.producer.name = root.name  # type: ignore[union-attr]
        rewriter.replace_value(old, new)
    rewriter.erase_dead(matched)
    for old, new, made in zip(olds, news, fresh):
        graph = new.graph
        if not made or graph is None or old.graph is not None or graph.is_output(new):
            continue
        try:
            graph.rename_value(new, old.name)
        except ValueError:
            pass


def product_continues(value: Value) -> bool:
    """Whether ``value``'s only user scales it by a scalar constant (Mul, or Div as the dividend).

    A rule that reads a product rooted at ``value`` then leaves it to the user,
    whose product includes this one: the constant factor joins the match
    rather than staying behind as one more Mul.
    """
    if not one_use(value):
        return False
    user = value.uses[0].node
    if user.domain != "" or user.op not in ("Mul", "Div") or len(user.inputs) != 2:
        return False
    other = user.inputs[1 - value.uses[0].index]
    if user.op == "Div" and value.uses[0].index != 0:
        return False
    return is_float(other) and scalar_of(other) is not None
