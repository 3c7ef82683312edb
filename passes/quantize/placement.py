"""Where Q/DQ go: TensorRT's explicit-quantization placement, and moving pairs where exact.

Placement (NVIDIA, "Q/DQ layer-placement recommendations", TensorRT
developer guide): quantize the *inputs* of the layers that compute in int8,
never their outputs, so the target fuses ``DQ -> layer -> Q`` chains itself.

==========================================  ==========================================
layer                                       inputs quantized
==========================================  ==========================================
Conv, ConvTranspose, kiln.ConvAct           X per tensor; W per output channel (axis 0;
                                            axis 1 for ConvTranspose)
Gemm, kiln.GemmAct, MatMul                  activations per tensor; a constant B per
                                            output column (axis 1, or 0 with transB);
                                            a constant A per tensor
MaxPool, AveragePool, GlobalAveragePool,    X per tensor
GlobalMaxPool
Concat                                      every activation input per tensor
Add, kiln.AddAct with two activation        both inputs per tensor
inputs (residual)
==========================================  ==========================================

Only float32 values are quantized; biases stay float (TensorRT folds them).
A layer is skipped when its op (``Conv`` or ``onnx.Conv``) is in
``skip_ops`` or one of its names is in ``skip_layers`` (the node's name, the
name it had in the ONNX file, or, for a fused node, any original's name).

Moving pairs (:func:`propagate`).  A pair on ``t = op(u)`` for ``op`` in
Reshape, Transpose, Flatten, Squeeze, Unsqueeze, MaxPool, Relu moves to ``u``
when every reader of ``t`` reads the pair (so no float reader sees a
difference) and ``t`` is not a graph output:

* if ``u`` is quantized already, ``op`` reads ``u``'s pair and ``t``'s readers
  read ``t`` directly: one pair fewer, the op runs on int8 values;
* else, for the data-movement ops and MaxPool, when ``op`` is ``u``'s only
  reader, the pair moves to ``u`` with ``t``'s scale.

Both are exact: with a per-tensor scale ``s`` and zero point 0,
``op(DQ(Q(u))) == DQ(Q(op(u)))`` because these ops only move, select or
take the maximum of values (and Relu is ``max(., 0)``), and rounding and
saturation are monotone with ``Q(0) == 0``.  (Relu moves only onto an
already quantized input: putting a new pair between a convolution and its
Relu would stop TensorRT fusing them.)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from kiln.ir.core import Graph, Node, Value
from kiln.ir.dtypes import DType

WEIGHTED_CONV = {"onnx.Conv": 0, "kiln.ConvAct": 0, "onnx.ConvTranspose": 1, "kiln.ConvTransposeAct": 1}
"""op -> the weight's output-channel axis."""
WEIGHTED_GEMM = ("onnx.Gemm", "kiln.GemmAct", "onnx.MatMul")
POOLING = ("onnx.MaxPool", "onnx.AveragePool", "onnx.GlobalAveragePool", "onnx.GlobalMaxPool")
DATA_MOVEMENT = ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze")
MOVABLE = DATA_MOVEMENT + ("MaxPool", "Relu")


@dataclass(frozen=True)
class WeightSite:
    """A constant weight read by a layer: ``node.inputs[index]``, per channel along ``axis`` (``None``: per tensor)."""

    node: Node
    index: int
    value: Value
    axis: int | None


@dataclass
class Layer:
    """One layer whose inputs are quantized."""

    node: Node
    name: str
    acts: list[tuple[int, Value]] = field(default_factory=list)
    weights: list[WeightSite] = field(default_factory=list)


@dataclass
class Plan:
    """The layers to quantize, in graph order."""

    layers: list[Layer] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def activations(self) -> list[Value]:
        """Every activation value some layer quantizes, in first-use order."""
        seen: dict[int, Value] = {}
        for layer in self.layers:
            for _, v in layer.acts:
                seen.setdefault(id(v), v)
        return list(seen.values())


def layer_name(node: Node) -> str:
    """The name a layer goes by in tables and ``--skip-layers``: the node's, else its first output's."""
    return node.name or (node.outputs[0].name if node.outputs else node.op)


def node_names(node: Node) -> set[str]:
    names = {node.name, node.loc.name, layer_name(node)}
    names.update(loc.name for loc in node.loc.fused_from)
    return {n for n in names if n}


def is_activation(v: Value | None) -> bool:
    return v is not None and v.const is None and v.dtype == DType.FLOAT


def is_weight(v: Value | None) -> bool:
    return v is not None and v.const is not None and v.dtype == DType.FLOAT


def _rank(v: Value) -> int | None:
    return len(v.shape) if v.shape is not None else None


def layer_for(node: Node, per_channel: bool = True) -> Layer | None:
    """The quantization of ``node``'s inputs the placement rules ask for, or ``None``."""
    op = node.op_id
    layer = Layer(node, layer_name(node))
    if op in WEIGHTED_CONV:
        x, w = node.input(0), node.input(1)
        if is_activation(x):
            layer.acts.append((0, x))  # type: ignore[arg-type]
        if is_weight(w):
            layer.weights.append(WeightSite(node, 1, w, WEIGHTED_CONV[op] if per_channel else None))  # type: ignore[arg-type]
        elif is_activation(w):
            layer.acts.append((1, w))  # type: ignore[arg-type]
    elif op in WEIGHTED_GEMM:
        for index in (0, 1):
            v = node.input(index)
            if is_activation(v):
                layer.acts.append((index, v))  # type: ignore[arg-type]
            elif is_weight(v):
                assert v is not None
                layer.weights.append(WeightSite(node, index, v, _gemm_axis(node, index, v) if per_channel else None))
    elif op in POOLING:
        x = node.input(0)
        if is_activation(x):
            layer.acts.append((0, x))  # type: ignore[arg-type]
    elif op == "onnx.Concat":
        layer.acts.extend((i, v) for i, v in enumerate(node.inputs) if is_activation(v))  # type: ignore[misc]
    elif op in ("onnx.Add", "kiln.AddAct"):
        a, b = node.input(0), node.input(1)
        if is_activation(a) and is_activation(b) and a is not b:
            layer.acts.extend([(0, a), (1, b)])  # type: ignore[list-item]
    else:
        return None
    if not layer.acts and not layer.weights:
        return None
    return layer


def _gemm_axis(node: Node, index: int, v: Value) -> int | None:
    """The output-channel axis of a constant Gemm/MatMul operand (``None``: per tensor)."""
    rank = _rank(v)
    if index != 1 or rank is None or rank < 2:
        return None
    if node.op == "MatMul":
        return rank - 1
    return rank - 2 if node.attr("transB", 0) else rank - 1


def plan_quantization(graph: Graph, *, skip_layers: Iterable[str] = (), skip_ops: Iterable[str] = (),
                      per_channel: bool = True) -> Plan:
    """The layers of ``graph`` (root graph only) whose inputs get Q/DQ."""
    skip_names = {s for s in skip_layers if s}
    ops = {s for s in skip_ops if s}
    plan = Plan()
    for node in graph:
        layer = layer_for(node, per_channel)
        if layer is None:
            continue
        if node.op in ops or node.op_id in ops or node_names(node) & skip_names:
            plan.skipped.append(layer.name)
            continue
        plan.layers.append(layer)
    return plan


def quantized_uses(plan: Plan) -> dict[Value, list[tuple[Node, int]]]:
    """Activation value -> the (node, input index) uses that read its Q/DQ pair."""
    uses: dict[Value, list[tuple[Node, int]]] = {}
    for layer in plan.layers:
        for index, v in layer.acts:
            uses.setdefault(v, []).append((layer.node, index))
    return uses


def propagate(graph: Graph, uses: dict[Value, list[tuple[Node, int]]],
              thresholds: dict[Value, float], moved_from: dict[Value, Value] | None = None) -> int:
    """Moves pairs upstream where exact (see the module doc); returns how many moved.

    ``uses`` and ``thresholds`` (by value) are updated in place; ``moved_from``
    receives, for each value that got a pair it did not have, the value whose
    calibrated range it took.
    """
    moved = 0
    changed = True
    while changed:
        changed = False
        for t in list(uses):
            if t not in uses:
                continue
            p = t.producer
            if p is None or p.domain != "" or p.op not in MOVABLE or p.outputs[0] is not t:
                continue
            if p.op == "MaxPool" and len(p.outputs) > 1 and p.outputs[1].uses:
                continue
            u = p.input(0)
            if not is_activation(u) or graph.is_output(t):
                continue
            assert u is not None
            if len(t.uses) != len(uses[t]):
                continue  # a float reader of t would see the change
            if u in uses:
                if (p, 0) not in uses[u]:
                    uses[u].append((p, 0))
            elif p.op != "Relu" and len(u.uses) == 1 and not graph.is_output(u):
                uses[u] = [(p, 0)]
                thresholds[u] = thresholds[t]
                if moved_from is not None:
                    moved_from[u] = moved_from.pop(t, t)
            else:
                continue
            del uses[t]
            thresholds.pop(t, None)
            moved += 1
            changed = True
    return moved
