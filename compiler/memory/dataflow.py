"""The dataflow facts memory planning works on: nodes, dependencies, arena tensors, sizes.

:func:`build_dataflow` reads a root graph once and numbers everything, so the
liveness, the scheduler, the arena planner and the stream analysis work on
plain integer lists rather than on IR objects.

What lives in the arena
-----------------------
Every output of a node of the root graph, except the graph's outputs.  Graph
inputs, constants and graph outputs are outside the arena: the caller owns
their buffers.  Values inside ``If``/``Loop``/``Scan`` bodies are the
runtime's business and are not planned; a body reading a value of the root
graph counts as a read by the node that owns the body, so that value stays
live (and the node stays after its producer) until that node has run.

Sizes
-----
``ceil(numel * bits / 8)`` bytes (``TensorType.nbytes``; a string element
counts as a 64-bit pointer), rounded up to the alignment (64 bytes by
default).  Every offset the planner gives is then a multiple of the
alignment.  A size is fixed only when every dim is a known integer; an
arena value whose size is not is a :class:`MemoryPlanError` naming it, since
a plan cannot place what it cannot measure (give the input shapes).

In-place reuse
--------------
An output ``y`` of a node ``n`` may be written over an input ``x`` of ``n``
(``y`` takes ``x``'s buffer, so the two count once at ``n``) exactly when:

1. ``n`` is an ``onnx``-domain elementwise op of :data:`ELEMENTWISE` (``x``
   one of the inputs listed there for it), a ``kiln`` activation of
   :data:`KILN_ELEMENTWISE` (``x`` its input 0), or a view op of
   :data:`VIEWS` (``y`` its first output, ``x`` its input 0);
2. ``x`` and ``y`` are both arena tensors, so neither is a graph input, a
   constant or a graph output;
3. for an elementwise op, ``x`` has ``y``'s shape and element width (no
   broadcast of ``x``, no narrowing or widening cast); for a view,
   ``x`` and ``y`` have the same byte size;
4. ``n`` is the last reader of ``x`` in the schedule (every other reader
   ran before ``n``), so nothing reads ``x`` after ``y`` overwrote it;
5. ``x`` is not already taken by another output of ``n``, and ``n`` has no
   subgraph.

Conditions 1-3 and 5 are static (:attr:`Dataflow.inplace` lists the
candidate pairs of each node in priority order: outputs in order, inputs in
order); condition 4 depends on the schedule and is checked by the liveness
and, state by state, by the scheduler.  Reading element ``i`` of every input
before writing element ``i`` of the output is what makes an elementwise op
safe in place, even when ``x`` is read twice (``Add(x, x)``); a view writes
nothing, it relabels ``x``'s bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kiln.errors import KilnError
from kiln.ir.core import Graph, Node, Value
from kiln.ir.types import TensorType, format_type

DEFAULT_ALIGNMENT = 64
"""Bytes every arena buffer's size and offset are a multiple of."""


class MemoryPlanError(KilnError):
    """Memory cannot be planned: a value of unknown size, a bad option, a missing plotting package."""


_UNARY = (
    "Abs", "Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "Cast", "Ceil", "Celu", "Cos", "Cosh",
    "Elu", "Erf", "Exp", "Floor", "Gelu", "HardSigmoid", "HardSwish", "IsInf", "IsNaN", "LeakyRelu",
    "Log", "Mish", "Neg", "Not", "Reciprocal", "Relu", "Round", "Selu", "Shrink", "Sigmoid", "Sign",
    "Sin", "Sinh", "Softplus", "Softsign", "Sqrt", "Swish", "Tan", "Tanh", "ThresholdedRelu",
    "BitwiseNot",
)  # fmt: skip
_BINARY = (
    "Add", "And", "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "Div", "Equal", "Greater",
    "GreaterOrEqual", "Less", "LessOrEqual", "Mod", "Mul", "Or", "Pow", "Sub", "Xor",
)  # fmt: skip
_VARIADIC = ("Max", "Mean", "Min", "Sum")

ALL_INPUTS = -1
"""In :data:`ELEMENTWISE`: every input may be overwritten."""

ELEMENTWISE: dict[str, tuple[int, ...]] = {
    **{op: (0,) for op in _UNARY},
    **{op: (0, 1) for op in _BINARY},
    **{op: (ALL_INPUTS,) for op in _VARIADIC},
    "Clip": (0,),
    "PRelu": (0,),
    "BatchNormalization": (0,),  # inference form: per-channel scale and shift
    "Where": (1, 2),
    "DequantizeLinear": (0,),
    "QuantizeLinear": (0,),
}
"""ONNX elementwise op -> the inputs its output may overwrite (same shape and width only)."""

VIEWS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout")
"""Ops whose first output is input 0's bytes under another shape (Dropout: at inference)."""

KILN_ELEMENTWISE = ("Gelu", "HardSwish", "Mish", "Swish")
"""kiln-dialect activations that are elementwise on input 0."""


@dataclass
class Dataflow:
    """A root graph's nodes and arena tensors, numbered.

    Node ``i`` is ``nodes[i]``, in the graph's order when it was read.
    Tensor ``t`` is ``values[t]``, an arena tensor.

    Attributes:
        graph: the graph read.
        alignment: the alignment sizes were rounded to.
        nodes: the root graph's nodes, in order.
        preds / succs: distinct producer / consumer node indices of each node
            (reads inside a node's subgraphs count as the node's reads).
        values: the arena tensors.
        size: each tensor's bytes rounded up to ``alignment``.
        nbytes: each tensor's exact bytes.
        producer: each tensor's producing node.
        consumers: each tensor's distinct reading nodes, in graph order.
        outputs: each node's arena tensors (unused outputs included).
        inputs: each node's distinct arena tensors read.
        inplace: each node's candidate ``(output, input)`` pairs for in-place reuse.
    """

    graph: Graph
    alignment: int
    nodes: list[Node]
    preds: list[list[int]]
    succs: list[list[int]]
    values: list[Value] = field(default_factory=list)
    size: list[int] = field(default_factory=list)
    nbytes: list[int] = field(default_factory=list)
    producer: list[int] = field(default_factory=list)
    consumers: list[list[int]] = field(default_factory=list)
    outputs: list[list[int]] = field(default_factory=list)
    inputs: list[list[int]] = field(default_factory=list)
    inplace: list[list[tuple[int, int]]] = field(default_factory=list)

    @property
    def num_nodes(self) -> int:
        return len(self.nodes)

    @property
    def num_tensors(self) -> int:
        return len(self.values)

    def label(self, node: int) -> str:
        """A node's name for reports: its first output's name, else ``#index``."""
        outs = self.nodes[node].outputs
        return outs[0].name if outs else f"#{node}"


def align_up(nbytes: int, alignment: int) -> int:
    return -(-nbytes // alignment) * alignment


def value_nbytes(value: Value) -> int:
    """A value's exact byte size; :class:`MemoryPlanError` naming it when not static."""
    t = value.type
    n = t.nbytes() if isinstance(t, TensorType) else None
    if n is None:
        raise MemoryPlanError(
            f"value %{value.name} has type {format_type(t)}, whose size is not known; memory planning needs "
            "static shapes (give the input shapes: --input-shape NAME:D,D,... or "
            "kiln.load(..., input_shapes=...))",
            node=value.producer,
        )
    return n


def _outer_reads(node: Node, graph: Graph) -> list[Value]:
    """Values of ``graph`` that the subgraphs of ``node`` read (or return)."""
    found: dict[int, Value] = {}
    for sub in node.subgraphs():
        for g in sub.all_graphs():
            for inner in g:
                for v in inner.inputs:
                    if v is not None and v.graph is graph:
                        found.setdefault(id(v), v)
            for v in g.outputs:
                if v.graph is graph:
                    found.setdefault(id(v), v)
    return list(found.values())


def build_dataflow(graph: Graph, alignment: int = DEFAULT_ALIGNMENT) -> Dataflow:
    """Numbers ``graph``'s nodes and arena tensors and finds the in-place candidates.

    Raises:
        MemoryPlanError: ``alignment`` is not positive, or an arena value's size is not static.
    """
    if not isinstance(alignment, int) or isinstance(alignment, bool) or alignment <= 0:
        raise MemoryPlanError(f"alignment must be a positive number of bytes, not {alignment!r}")
    nodes = list(graph)
    index = {node: i for i, node in enumerate(nodes)}
    outputs_of_graph = {id(v) for v in graph.outputs}
    flow = Dataflow(graph, alignment, nodes, [[] for _ in nodes], [[] for _ in nodes])
    values, nbytes, size, producer, consumers = (
        flow.values,
        flow.nbytes,
        flow.size,
        flow.producer,
        flow.consumers,
    )
    tensor_of: dict[int, int] = {}
    by_type: dict[object, int] = {}  # types are shared, immutable objects: size each once
    for i, node in enumerate(nodes):
        outs: list[int] = []
        for v in node.outputs:
            if id(v) in outputs_of_graph:
                continue
            try:
                n = by_type[v.type]
            except (KeyError, TypeError):
                n = value_nbytes(v)
                by_type[v.type] = n
            t = len(values)
            tensor_of[id(v)] = t
            outs.append(t)
            values.append(v)
            nbytes.append(n)
            size.append(-(-n // alignment) * alignment)
            producer.append(i)
            consumers.append([])
        flow.outputs.append(outs)
    preds, succs = flow.preds, flow.succs
    for i, node in enumerate(nodes):
        reads = node.inputs
        if node.subgraphs():
            reads += tuple(_outer_reads(node, graph))
        mine = preds[i]
        ins: list[int] = []
        for v in reads:
            if v is None:
                continue
            p = v.producer
            if p is None or p.graph is not graph:
                continue
            j = index[p]
            if j not in mine:
                mine.append(j)
                succs[j].append(i)
            read = tensor_of.get(id(v))
            if read is not None and read not in ins:
                ins.append(read)
                consumers[read].append(i)
        flow.inputs.append(ins)
        flow.inplace.append(_inplace_pairs(node, tensor_of, nbytes))
    return flow


def _inplace_pairs(node: Node, tensor_of: dict[int, int], nbytes: list[int]) -> list[tuple[int, int]]:
    """Conditions 1-3 and 5 of the in-place rule (module docstring), as (output, input) pairs."""
    op, domain = node.op, node.domain
    view = False
    if domain == "":
        if op in VIEWS:
            view, allowed = True, (0,)
        else:
            allowed = ELEMENTWISE.get(op, ())  # type: ignore[assignment]
    elif domain == "kiln" and op in KILN_ELEMENTWISE:
        allowed = (0,)
    else:
        return []
    if not allowed or not node.outputs or node.subgraphs():
        return []
    ins = node.inputs
    positions = range(len(ins)) if allowed == (ALL_INPUTS,) else [k for k in allowed if k < len(ins)]
    outs = node.outputs[:1] if view else node.outputs
    pairs: list[tuple[int, int]] = []
    for y in outs:
        ty = tensor_of.get(id(y))
        if ty is None:
            continue
        for k in positions:
            x = ins[k]
            tx = None if x is None else tensor_of.get(id(x))
            if tx is None or nbytes[tx] != nbytes[ty]:
                continue
            if not view:
                xt, yt = x.tensor_type, y.tensor_type  # type: ignore[union-attr]
                if xt is None or yt is None or xt.shape != yt.shape:
                    continue
                if xt.dtype.itemsize_bits != yt.dtype.itemsize_bits:
                    continue
            if (ty, tx) not in pairs:
                pairs.append((ty, tx))
    return pairs
