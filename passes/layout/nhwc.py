"""``to-nhwc``: channels-first (NCHW) graphs to channels-last (NHWC), keeping Transposes at the boundary.

Every value gets a *layout*: the permutation ``p`` with ``stored = transpose(logical, p)``,
where *logical* is the tensor the ONNX graph means and *stored* what the rewritten graph
holds.  Nodes are visited in order; each reads its inputs in a layout it can work in and
says the layout of its outputs:

- layout-sensitive 4-D ops (Conv, ConvAct, ConvTranspose, pools, Resize, LRN,
  BatchNormalization, channel shuffle ...) become ``kiln.Nhwc<Op>`` and want NHWC,
  ``p = (0, 2, 3, 1)``;
- elementwise ops (unary, and broadcasting binary ones) take the layout most of their
  inputs have; constants are broadcast to full rank and permuted (no node);
- ops with axes follow their input: Concat, Split, Softmax (opset < 13 over the suffix
  of axes, which stays a suffix when the layout keeps those axes last, squeezenet's
  Softmax over ``[N, 1000, 1, 1]``), reductions and ArgMax/ArgMin (``keepdims=0``
  drops axes and keeps the order of the rest), Pad, Slice, LayerNormalization over
  axes that stay last, per-channel Quantize/DequantizeLinear;
- a Transpose vanishes: its output is its input read in a composed layout
  (transpose sinking and cancellation in one);
- Reshape, Flatten, Squeeze, Unsqueeze run on the stored data when every group of
  axes they merge or split is contiguous and in order in the stored layout (unit axes
  move freely); a Flatten to ``[N, C*H*W]`` read only by Gemm/MatMul with constant
  weights flattens the NHWC data and permutes the weight rows instead;
- any other op reads its inputs in the ONNX layout (identity).

A value is converted from one layout to another where a consumer wants it (once per
layout); a conversion that moves only unit axes is a Reshape, and one of a constant is
done on the data.  Graph outputs get back their ONNX layout, and inputs keep theirs,
so the Transposes left are at the boundary; with ``nhwc-io`` 4-D inputs and outputs are
NHWC and even those go.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from kiln.ir.core import KILN_DOMAIN, Graph, Node, Value
from kiln.ir.types import TensorType
from kiln.ops.builder import OpBuilder
from kiln.ops.layout_dialect import NHWC_OPS, TO_NHWC, nhwc_name
from kiln.passmanager.base import Pass, PassContext
from kiln.passmanager.registry import register_pass

logger = logging.getLogger(__name__)

Perm = tuple[int, ...]

UNARY = frozenset({
    "Relu", "Sigmoid", "Tanh", "Clip", "HardSigmoid", "HardSwish", "LeakyRelu", "Elu", "Selu", "Celu", "Exp",
    "Log", "Sqrt", "Reciprocal", "Neg", "Abs", "Erf", "Softplus", "Softsign", "Cast", "Identity", "Dropout",
    "Floor", "Ceil", "Round", "Sign", "Not", "Mish", "Gelu", "IsNaN", "IsInf", "Sin", "Cos", "ThresholdedRelu",
    "Shrink", "QuantizeLinear", "DequantizeLinear",
})
"""ONNX ops that map each element of input 0 on its own (other inputs are scalars or per-axis)."""

BROADCAST = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu", "Equal", "Greater", "Less",
    "GreaterOrEqual", "LessOrEqual", "And", "Or", "Xor", "Where", "Mod",
})
"""ONNX ops whose inputs broadcast against each other."""

KILN_UNARY = frozenset({"Gelu", "Swish", "HardSwish"})
RESHAPES = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze"})
REDUCES = frozenset({
    "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
    "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare",
})


def identity(rank: int) -> Perm:
    return tuple(range(rank))


def conversion(src: Perm, dst: Perm) -> Perm:
    """The Transpose perm that turns data stored in layout ``src`` into layout ``dst``."""
    return tuple(src.index(d) for d in dst)


def _static(t: object) -> tuple[int, ...] | None:
    if isinstance(t, TensorType) and t.shape is not None and all(isinstance(d, int) for d in t.shape):
        return tuple(int(d) for d in t.shape)  # type: ignore[arg-type]
    return None


def _rank(t: object) -> int | None:
    return len(t.shape) if isinstance(t, TensorType) and t.shape is not None else None


def _permute_type(t: object, perm: Perm) -> object:
    if not isinstance(t, TensorType) or t.shape is None or len(t.shape) != len(perm):
        return t
    return TensorType(t.dtype, tuple(t.shape[p] for p in perm))


def _moves_only_units(shape: tuple[int, ...], perm: Perm) -> bool:
    big = [a for a in range(len(shape)) if shape[a] != 1]
    return [a for a in perm if shape[a] != 1] == big


def reshape_layout(src: tuple[int, ...], dst: tuple[int, ...], perm: Perm) -> Perm | None:
    """The layout of ``reshape(x, dst)`` computed on x stored in ``perm``, or ``None`` if it can't be.

    The reshape is seen as groups of non-unit input axes becoming groups of
    non-unit output axes (equal products); each input group must be contiguous
    and in order in the stored layout, and the output groups then follow the
    stored order of their input groups.  Unit output axes are placed after the
    axis before them, so an order that is already the identity stays so.
    """
    ins = [a for a in range(len(src)) if src[a] != 1]
    outs = [a for a in range(len(dst)) if dst[a] != 1]
    groups: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(ins) or j < len(outs):
        gi, go = [], []
        pi = po = 1
        while True:
            if pi <= po and i < len(ins):
                pi *= src[ins[i]]
                gi.append(ins[i])
                i += 1
            elif j < len(outs):
                po *= dst[outs[j]]
                go.append(outs[j])
                j += 1
            else:
                return None
            if pi == po and gi and go:
                break
        groups.append((gi, go))
    stored = [a for a in perm if src[a] != 1]
    order: list[int] = []
    for gi, go in sorted(groups, key=lambda g: stored.index(g[0][0])):
        start = stored.index(gi[0])
        if stored[start:start + len(gi)] != gi:
            return None
        order.extend(go)
    for unit in (a for a in range(len(dst)) if dst[a] == 1):
        order.insert(order.index(unit - 1) + 1 if unit > 0 else 0, unit)
    return tuple(order)


@dataclass
class _Rewriter:
    graph: Graph
    nhwc_io: bool
    env: dict[Value, tuple[Value, Perm]] = field(default_factory=dict)
    logical: dict[Value, object] = field(default_factory=dict)
    cache: dict[tuple[int, Perm], Value] = field(default_factory=dict)
    stale: list[Node] = field(default_factory=list)
    pinned: set[Value] = field(default_factory=set)
    current: Node | None = None
    changed: bool = False

    # ---- layouts and conversions

    def perm(self, v: Value) -> Perm | None:
        if v in self.env:
            return self.env[v][1]
        rank = _rank(self.logical.get(v, v.type))
        return None if rank is None else identity(rank)

    def stored(self, v: Value) -> Value:
        return self.env[v][0] if v in self.env else v

    def builder(self) -> OpBuilder:
        """Builds before the node being visited (at the end while outputs are finished)."""
        node = self.current
        if node is None:
            return OpBuilder(self.graph)
        return OpBuilder(self.graph, before=node, loc=node.loc)

    def get(self, v: Value, want: Perm | None) -> Value:
        """``v`` stored in layout ``want`` (converted, once, when it is in another)."""
        stored, have = self.stored(v), self.perm(v)
        if want is None or have is None or have == want:
            return stored
        key = (id(v), want)
        if key in self.cache:
            return self.cache[key]
        perm = conversion(have, want)
        if stored.const is not None:
            new = self.graph.add_constant(stored.name + "_nhwc", np.ascontiguousarray(np.transpose(stored.numpy(), perm)))
        else:
            b = self.builder()
            shape = _static(stored.type)
            if shape is not None and _moves_only_units(shape, perm):
                target = np.array([shape[p] for p in perm], dtype=np.int64)
                new = b.Reshape(stored, b.const(target, "layout_shape"))
            else:
                new = b.Transpose(stored, perm=list(perm))
        self.cache[key] = new
        self.changed = True
        return new

    def const_broadcast(self, v: Value, rank: int, perm: Perm) -> Value:
        """A constant broadcast to ``rank`` (leading unit axes) and permuted to ``perm``."""
        key = (id(v), (-1 - rank,) + perm)
        if key not in self.cache:
            data = v.numpy()
            data = data.reshape((1,) * (rank - data.ndim) + data.shape)
            self.cache[key] = self.graph.add_constant(v.name + "_nhwc", np.ascontiguousarray(np.transpose(data, perm)))
        return self.cache[key]

    def set_output(self, node: Node, index: int, value: Value, perm: Perm | None) -> None:
        orig = node.outputs[index]
        if value is orig and perm is not None:
            orig.type = _permute_type(self.logical.get(orig, orig.type), perm)  # type: ignore[assignment]
        self.env[orig] = (value, perm if perm is not None else identity(_rank(orig.type) or 0))

    # ---- handlers

    def keep(self, node: Node) -> None:
        """Any op: inputs in the ONNX layout, outputs in it too."""
        for i, v in enumerate(node.inputs):
            if v is not None:
                rank = _rank(self.logical.get(v, v.type))
                node.set_input(i, self.get(v, identity(rank) if rank is not None else None))
        for i, out in enumerate(node.outputs):
            rank = _rank(out.type)
            self.env[out] = (out, identity(rank) if rank is not None else ())

    def elementwise(self, node: Node, data: tuple[int, ...]) -> None:
        rank = _rank(node.outputs[0].type)
        present = [i for i in data if node.input(i) is not None]
        full = [i for i in present if node.inputs[i].const is None and self.perm(node.inputs[i]) is not None  # type: ignore[union-attr]
                and len(self.perm(node.inputs[i])) == rank]  # type: ignore[union-attr, arg-type]
        if rank is None or rank < 2 or not full:
            return self.keep(node)
        votes = Counter(self.perm(node.inputs[i]) for i in full)  # type: ignore[union-attr]
        best = max(votes.values())
        perm = next(self.perm(node.inputs[i]) for i in full if votes[self.perm(node.inputs[i])] == best)  # type: ignore[union-attr]
        assert perm is not None
        if perm == identity(rank):
            return self.keep(node)
        for i in present:
            v = node.inputs[i]
            assert v is not None
            vr = _rank(v.type)
            if v.const is not None:
                node.set_input(i, self.const_broadcast(v, rank, perm))
            elif vr == rank:
                node.set_input(i, self.get(v, perm))
            else:
                shape = _static(v.type)
                if shape is None or vr is None or self.perm(v) != identity(vr):
                    return self.keep(node)
                b = self.builder()
                full_shape = np.array((1,) * (rank - vr) + shape, dtype=np.int64)
                widened = b.Reshape(self.stored(v), b.const(full_shape, "broadcast_shape"))
                node.set_input(i, b.Transpose(widened, perm=list(perm)) if not _moves_only_units(
                    tuple(int(d) for d in full_shape), perm) else b.Reshape(
                    widened, b.const(np.array([full_shape[p] for p in perm], np.int64), "layout_shape")))
        for i in range(len(node.inputs)):
            if i not in data and node.inputs[i] is not None:
                node.set_input(i, self.stored(node.inputs[i]))  # type: ignore[arg-type]
        if node.op in ("QuantizeLinear", "DequantizeLinear") and "axis" in node.attrs:
            node.set_attr("axis", perm.index(int(node.attr("axis")) % rank))
        for k in range(len(node.outputs)):
            self.set_output(node, k, node.outputs[k], perm)
        self.changed = True

    def axis_op(self, node: Node, remap: Callable[[Node, Perm, int], Perm | None]) -> None:
        """An op on input 0 whose axes ``remap`` rewrites (returns the output layout, or None: keep)."""
        x = node.input(0)
        perm = self.perm(x) if x is not None else None
        rank = len(perm) if perm is not None else None
        if x is None or perm is None or rank is None or perm == identity(rank) or x.const is not None:
            return self.keep(node)
        out_perm = remap(node, perm, rank)
        if out_perm is None:
            return self.keep(node)
        node.set_input(0, self.stored(x))
        for k in range(len(node.outputs)):
            self.set_output(node, k, node.outputs[k], out_perm)
        self.changed = True

    def concat(self, node: Node) -> None:
        rank = _rank(node.outputs[0].type)
        perms = [self.perm(v) for v in node.inputs if v is not None and v.const is None]
        if rank is None or not perms or any(p is None or len(p) != rank for p in perms):
            return self.keep(node)
        votes = Counter(perms)
        perm = max(votes, key=lambda p: (votes[p], p != identity(rank)))
        assert perm is not None
        if perm == identity(rank):
            return self.keep(node)
        for i, v in enumerate(node.inputs):
            if v is not None:
                node.set_input(i, self.get(v, perm))
        node.set_attr("axis", perm.index(int(node.attr("axis")) % rank))
        self.set_output(node, 0, node.outputs[0], perm)
        self.changed = True

    def transpose(self, node: Node) -> None:
        x = node.inputs[0]
        perm = self.perm(x) if x is not None else None
        if x is None or perm is None:
            return self.keep(node)
        t = node.attr("perm") or list(reversed(range(len(perm))))
        out = node.outputs[0]
        src, dst = _static(self.logical.get(x, x.type)), _static(out.type)
        if src is not None and dst is not None and _moves_only_units(src, tuple(t)):
            return self.reshape(node, force=True)  # moves only unit axes: a Reshape, whatever the layout
        self.env[out] = (self.stored(x), tuple(int(t.index(p)) for p in perm))
        # A consumer that wants the output in its own ONNX layout reads this very node
        # (kept only then), so a boundary Transpose survives a second run unchanged.
        self.cache[(id(out), identity(len(perm)))] = out
        self.stale.append(node)

    def reshape(self, node: Node, force: bool = False) -> None:
        x, out = node.inputs[0], node.outputs[0]
        perm = self.perm(x) if x is not None else None
        src, dst = _static(self.logical.get(x)) if x is not None else None, _static(out.type)
        if x is None or perm is None or src is None or dst is None or (perm == identity(len(perm)) and not force):
            return self.keep(node)
        out_perm = reshape_layout(src, dst, perm)
        if out_perm is None:
            if self.flatten_into_fc(node, src, dst, perm):
                return None
            return self.keep(node)
        b = self.builder()
        stored_shape = np.array([dst[p] for p in out_perm], dtype=np.int64)
        new = b.Reshape(self.stored(x), b.const(stored_shape, "nhwc_shape"))
        self.env[out] = (new, out_perm)
        self.stale.append(node)
        self.changed = True
        return None

    def flatten_into_fc(self, node: Node, src: tuple[int, ...], dst: tuple[int, ...], perm: Perm) -> bool:
        """``[N, C, H, W] -> [N, K]`` read only by Gemm/MatMul with constant weights: permute the weights."""
        out = node.outputs[0]
        if len(dst) != 2 or perm[0] != 0 or dst[0] != src[0] or self.graph.is_output(out) or out in self.pinned:
            return False
        users = list(out.uses)
        for use in users:
            user = use.node
            w = user.input(1)
            ok = use.index == 0 and w is not None and w.const is not None and len(w.shape or ()) == 2
            if user.is_op("Gemm") or user.is_op("GemmAct", KILN_DOMAIN):
                ok = ok and not user.attr("transA", 0)
            elif not user.is_op("MatMul"):
                ok = False
            if not ok:
                return False
        inner = list(src[1:])
        order = [p - 1 for p in perm[1:]]  # the stored order of C, H, W
        for use in users:
            user = use.node
            w = user.inputs[1]
            assert w is not None
            data = w.numpy()
            if user.attr("transB", 0):  # [N, K]: K runs over C, H, W
                n = data.shape[0]
                data = data.reshape([n, *inner]).transpose([0, *(o + 1 for o in order)]).reshape(n, -1)
            else:  # [K, N]
                n = data.shape[1]
                data = data.reshape([*inner, n]).transpose([*order, len(inner)]).reshape(-1, n)
            user.set_input(1, self.graph.add_constant(w.name + "_nhwc", np.ascontiguousarray(data)))
        b = self.builder()
        new = b.Reshape(self.stored(node.inputs[0]), b.const(np.array(dst, dtype=np.int64), "flat_shape"))  # type: ignore[arg-type]
        self.env[out] = (new, (0, 1))
        self.stale.append(node)
        self.changed = True
        return True

    def nhwc_op(self, node: Node) -> None:
        x = node.inputs[0]
        if (x is None or _rank(self.logical.get(x, x.type)) != 4 or _rank(node.outputs[0].type) != 4
                or any(o.uses or self.graph.is_output(o) for o in node.outputs[1:])):
            return self.keep(node)
        op = node.op
        inputs = [self.get(x, TO_NHWC)] + [None if v is None else self.get(v, identity(_rank(v.type) or 0))
                                             for v in node.inputs[1:]]
        b = self.builder()
        new = b.op(nhwc_name(op), *inputs, _domain=KILN_DOMAIN, **dict(node.attrs))
        self.env[node.outputs[0]] = (new, TO_NHWC)
        for out in node.outputs[1:]:
            self.env[out] = (out, identity(_rank(out.type) or 0))
        self.stale.append(node)
        self.changed = True

    # ---- the walk

    def run(self) -> bool:
        graph = self.graph
        for v in list(graph.inputs) + list(graph.constants.values()):
            self.logical[v] = v.type
        nodes = list(graph)
        for node in nodes:
            for out in node.outputs:
                self.logical[out] = out.type
            for sub in node.subgraphs():
                for inner in sub.walk():
                    self.pinned.update(v for v in inner.inputs if v is not None and v.graph is graph)
        if self.nhwc_io:
            for v in graph.inputs:
                if _rank(v.type) == 4 and v not in self.pinned:
                    v.type = _permute_type(v.type, TO_NHWC)  # type: ignore[assignment]
                    self.env[v] = (v, TO_NHWC)
                    self.changed = True
        before = _signature(graph)
        for node in nodes:
            self.current = node
            self.visit(node)
        self.current = None
        self.finish_outputs()
        for node in self.stale:  # kept Transposes read their input in its ONNX layout
            x = node.inputs[0] if node.inputs else None
            if node.is_op("Transpose") and x is not None and (node.outputs[0].uses or graph.is_output(node.outputs[0])):
                self.current = node
                node.set_input(0, self.get(x, identity(len(self.perm(x) or ()))))
        self.current = None
        for node in reversed(self.stale):
            if node.graph is graph and not any(o.uses or graph.is_output(o) for o in node.outputs):
                graph.remove_node(node)
        return self.changed or _signature(graph) != before

    def visit(self, node: Node) -> None:
        if any(o in self.pinned for o in node.outputs) or node.subgraphs():
            return self.keep(node)
        op, domain = node.op, node.domain
        if domain == "" and op in NHWC_OPS and NHWC_OPS[op] == "" or domain == KILN_DOMAIN and op in NHWC_OPS:
            return self.nhwc_op(node)
        if domain == "":
            if op in UNARY:
                return self.elementwise(node, (0,))
            if op in BROADCAST:
                return self.elementwise(node, tuple(range(len(node.inputs))))
            if op == "Concat":
                return self.concat(node)
            if op == "Transpose":
                return self.transpose(node)
            if op in RESHAPES:
                return self.reshape(node)
            handler = _AXIS_OPS.get(op) or (_reduce if op in REDUCES else None)
            if handler is not None:
                return self.axis_op(node, lambda n, p, r: handler(self, n, p, r))
            if op == "LayerNormalization":
                return self.axis_op(node, _layer_norm)
        elif domain == KILN_DOMAIN:
            if op in KILN_UNARY:
                return self.elementwise(node, (0,))
            if op == "LayerNorm":
                return self.axis_op(node, _layer_norm)
        return self.keep(node)

    def finish_outputs(self) -> None:
        graph = self.graph
        for i, orig in enumerate(list(graph.outputs)):
            rank = _rank(self.logical.get(orig, orig.type))
            if rank is None or orig not in self.env:
                continue
            want = TO_NHWC if self.nhwc_io and rank == 4 else identity(rank)
            self.current = None
            value = self.get(orig, want)
            if value is orig:
                continue
            if value.is_graph_input or value.const is not None or any(o is value for o in graph.outputs):
                value = OpBuilder(graph).Identity(value)
            name = orig.name
            graph.rename_value(orig, graph.fresh_name(name + "_stored"), claimed=True)
            graph.rename_value(value, name, claimed=True)
            graph.outputs[i] = value
            self.changed = True


# ---- axis remapping, one function per op family: (rewriter, node, input layout, rank) -> output layout


def _axes_value(rw: _Rewriter, node: Node, index: int, axes: list[int]) -> None:
    node.set_input(index, rw.graph.add_constant("nhwc_axes", np.array(axes, dtype=np.int64)))


def _softmax(rw: _Rewriter, node: Node, perm: Perm, rank: int) -> Perm | None:
    axis = int(node.attr("axis", 1 if (node.version or 13) < 13 else -1)) % rank
    if (node.version or 13) >= 13:
        node.set_attr("axis", perm.index(axis))
        return perm
    suffix = {perm.index(a) for a in range(axis, rank)}
    if suffix != set(range(rank - len(suffix), rank)):
        return None
    node.set_attr("axis", rank - len(suffix))
    return perm


def _split(rw: _Rewriter, node: Node, perm: Perm, rank: int) -> Perm | None:
    node.set_attr("axis", perm.index(int(node.attr("axis", 0)) % rank))
    return perm


def _reduced(perm: Perm, axes: list[int], keep: bool) -> Perm:
    if keep:
        return perm
    rest = sorted(a for a in perm if a not in axes)
    return tuple(rest.index(a) for a in perm if a not in axes)


def _reduce(rw: _Rewriter, node: Node, perm: Perm, rank: int) -> Perm | None:
    keep = bool(node.attr("keepdims", 1))
    if "axes" in node.attrs:
        axes = [int(a) % rank for a in node.attr("axes")]
        node.set_attr("axes", sorted(perm.index(a) for a in axes))
    elif node.input(1) is not None:
        const = node.inputs[1].const  # type: ignore[union-attr]
        if const is None:
            return None
        axes = [int(a) % rank for a in const.numpy().reshape(-1)]
        if not axes:
            return None
        _axes_value(rw, node, 1, sorted(perm.index(a) for a in axes))
    else:
        if node.attr("noop_with_empty_axes", 0):
            return None
        axes = list(range(rank))
    return _reduced(perm, axes, keep)


def _arg(rw: _Rewriter, node: Node, perm: Perm, rank: int) -> Perm | None:
    axis = int(node.attr("axis", 0)) % rank
    node.set_attr("axis", perm.index(axis))
    return _reduced(perm, [axis], bool(node.attr("keepdims", 1)))


def _pad(rw: _Rewriter, node: Node, perm: Perm, rank: int) -> Perm | None:
    if node.input(3) is not None:
        return None
    if "pads" in node.attrs:
        pads = [int(p) for p in node.attr("pads")]
    else:
        pv = node.input(1)
        if pv is None or pv.const is None:
            return None
        pads = [int(p) for p in pv.numpy().reshape(-1)]
    new = [pads[p] for p in perm] + [pads[rank + p] for p in perm]
    if "pads" in node.attrs:
        node.set_attr("pads", new)
    else:
        node.set_input(1, rw.graph.add_constant("nhwc_pads", np.array(new, dtype=np.int64)))
    return perm


def _slice(rw: _Rewriter, node: Node, perm: Perm, rank: int) -> Perm | None:
    if "starts" in node.attrs:  # opset < 10
        axes = node.attr("axes") or list(range(len(node.attr("starts"))))
        node.set_attr("axes", [perm.index(int(a) % rank) for a in axes])
        return perm
    starts, axes_v = node.input(1), node.input(3)
    if starts is None or starts.shape is None or not isinstance(starts.shape[0], int):
        return None
    if axes_v is None:
        axes = list(range(starts.shape[0]))
    elif axes_v.const is not None:
        axes = [int(a) for a in axes_v.numpy().reshape(-1)]
    else:
        return None
    while len(node.inputs) < 4:
        node.set_inputs(list(node.inputs) + [None])
    _axes_value(rw, node, 3, [perm.index(a % rank) for a in axes])
    return perm


def _layer_norm(node: Node, perm: Perm, rank: int) -> Perm | None:
    axis = int(node.attr("axis", -1)) % rank
    return perm if perm[axis:] == tuple(range(axis, rank)) else None


_AXIS_OPS: dict[str, Callable[[_Rewriter, Node, Perm, int], Perm | None]] = {
    "Softmax": _softmax,
    "LogSoftmax": _softmax,
    "Hardmax": _softmax,
    "Split": _split,
    "ArgMax": _arg,
    "ArgMin": _arg,
    "Pad": _pad,
    "Slice": _slice,
}


def _signature(graph: Graph) -> list[object]:
    """What the pass may change, cheaply: ops, attributes, operands and types (constants by identity)."""
    sig: list[object] = [tuple(id(v) for v in graph.outputs), tuple(str(v.type) for v in graph.inputs)]
    for n in graph:
        sig.append((n.op_id, tuple(sorted((k, repr(a.value)) for k, a in n.attrs.items())),
                    tuple(id(v) for v in n.inputs), tuple(str(o.type) for o in n.outputs)))
    return sig


def interior_transposes(graph: Graph) -> int:
    """Transposes that neither read a graph input nor make a graph output."""
    inputs = set(graph.inputs)
    return sum(1 for n in graph if n.is_op("Transpose")
               and n.inputs[0] not in inputs and not any(graph.is_output(o) for o in n.outputs))


def to_nhwc(graph: Graph, nhwc_io: bool = False) -> bool:
    """Rewrites ``graph`` channels-last in place; returns whether anything changed."""
    return _Rewriter(graph, nhwc_io).run()


@register_pass
@dataclass(frozen=True)
class ToNhwc(Pass):
    """NCHW -> NHWC: layout-sensitive ops channels-last, Transposes sunk and cancelled to the boundary."""

    name: ClassVar[str] = "to-nhwc"
    nhwc_io: bool = field(default=False, metadata={"doc": "4-D graph inputs and outputs in NHWC too"})

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        changed = to_nhwc(graph, self.nhwc_io)
        ctx.bump("to-nhwc.interior-transposes", interior_transposes(graph))
        return changed
