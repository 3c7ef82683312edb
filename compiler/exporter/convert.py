"""``to_onnx``: a kiln graph (any IR state) to an ONNX ``ModelProto``.

* Nodes are written in graph order, constants as initializers (never also
  listed as inputs, so ``ir_version >= 4``), every typed intermediate value as
  ``value_info``, outputs with their types, ``opset_import`` from
  ``graph.opsets`` (plus ``kiln`` where used), subgraphs, model info and
  metadata.
* ``ir_version``: the model's own when it is 4 or more, raised to what the
  graph needs (its opsets, the element types it uses, local functions).
* Every output keeps its name.  An output that is a constant is written as
  ``Identity(<constant renamed>)`` under the constant's name; a value listed
  twice gets an ``Identity`` with a fresh name the second time; a root graph
  input that is also an output stays as ONNX allows (same name).  In
  subgraphs, any output not produced inside the subgraph goes through an
  ``Identity``.
* kiln-dialect ops (``domain="kiln"``) are written as calls of model-local
  functions (``FunctionProto`` in domain ``kiln``), one per distinct
  signature: op, attributes (baked into the body), which inputs are present,
  output count and input types (a decomposition may read static shapes, so
  two nodes share a function only when their input types agree).  With
  ``kiln_ops="inline"`` the decomposition is expanded in place instead.
  Either way onnxruntime can run the result.
* ``lower``: a hook a target gives (the onnx target's ``--onnx-contrib``) that
  writes a kiln op as other ops, e.g. onnxruntime's ``com.microsoft`` fused
  ops: called with the node and an :class:`Emit`; it returns the NodeProtos
  to write, or ``None`` to leave the node to the ``kiln_ops`` rule.

Output is deterministic: the same graph gives the same ``ModelProto``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import onnx
from kiln.errors import ExportError
from kiln.frontend.convert import is_packed, packed_nbytes, type_to_proto
from kiln.ir.core import KILN_DOMAIN, Attr, AttrKind, Graph, NameAuthority, Node, Value
from kiln.ir.dtypes import DType
from kiln.ir.gcpause import paused_gc
from kiln.ir.tensor import Tensor
from kiln.ir.types import OptionalType, SequenceType, TensorType, Type
from kiln.ops.registry import KILN_OPSET_VERSION, lookup, newest_onnx_opset

__all__ = ["TensorSink", "attr_to_proto", "node_to_proto", "pack_bits", "tensor_to_proto", "to_onnx"]

_DTYPE_IR = {
    DType.BFLOAT16: 4,
    DType.FLOAT8E4M3FN: 9,
    DType.FLOAT8E4M3FNUZ: 9,
    DType.FLOAT8E5M2: 9,
    DType.FLOAT8E5M2FNUZ: 9,
    DType.INT4: 10,
    DType.UINT4: 10,
    DType.FLOAT4E2M1: 11,
    DType.FLOAT8E8M0: 12,
    DType.INT2: 13,
    DType.UINT2: 13,
    DType.FLOAT6E2M3: 14,
    DType.FLOAT6E3M2: 14,
}
_MAX_INLINE_DEPTH = 32

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- tensors


class TensorSink(Protocol):
    """Where tensor bytes go when they do not go into the protobuf (external data)."""

    def place(self, proto: onnx.TensorProto, tensor: Tensor) -> bool:
        """Writes ``tensor``'s bytes elsewhere and fills ``proto``'s external data; ``False`` keeps it inline."""
        ...


def pack_bits(array: np.ndarray, dtype: DType) -> np.ndarray:
    """ONNX's packed layout of a sub-byte dtype (one element per byte in ``array``) as ``uint8``."""
    flat = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    count = flat.size
    nbytes = packed_nbytes(dtype, count)
    if dtype in (DType.FLOAT6E2M3, DType.FLOAT6E3M2):
        groups = (count + 3) // 4
        padded = np.zeros(groups * 4, dtype=np.uint8)
        padded[:count] = flat & 0x3F
        v0, v1, v2, v3 = padded[0::4], padded[1::4], padded[2::4], padded[3::4]
        out = np.empty((groups, 3), dtype=np.uint8)
        out[:, 0] = v0 | ((v1 & 0x03) << 6)
        out[:, 1] = (v1 >> 2) | ((v2 & 0x0F) << 4)
        out[:, 2] = (v2 >> 4) | (v3 << 2)
        return out.reshape(-1)[:nbytes]
    per = 2 if dtype in (DType.INT4, DType.UINT4, DType.FLOAT4E2M1) else 4
    bits = 8 // per
    mask = (1 << bits) - 1
    padded = np.zeros(nbytes * per, dtype=np.uint8)
    padded[:count] = flat & mask
    lanes = padded.reshape(nbytes, per)
    out = np.zeros(nbytes, dtype=np.uint8)
    for k in range(per):
        out |= lanes[:, k] << (k * bits)
    return out


def tensor_bytes(tensor: Tensor) -> bytes | memoryview:
    """The tensor's data in ONNX's ``raw_data`` layout (little-endian, sub-byte types packed)."""
    dtype = tensor.dtype
    arr = np.asarray(tensor.numpy())
    if arr.size != tensor.numel:
        raise ExportError(
            f"tensor data holds {arr.size} elements, its shape {list(tensor.shape)} says {tensor.numel}"
        )
    if is_packed(dtype):
        if arr.dtype != dtype.numpy:
            arr = arr.astype(dtype.numpy)
        return pack_bits(arr, dtype).tobytes()
    if dtype == DType.BOOL:
        return np.ascontiguousarray(arr, dtype=np.bool_).view(np.uint8).tobytes()
    target = dtype.numpy
    if arr.dtype != target:
        arr = arr.astype(target)
    if sys.byteorder == "big" or arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    base = arr.base
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, bytes) and arr.flags.c_contiguous and arr.nbytes == len(base):
        return base  # viewed from a file's raw_data: no copy
    if arr.flags.c_contiguous and arr.size:
        return arr.reshape(-1).view(np.uint8).data  # a memoryview: no copy; writers take buffers
    return np.ascontiguousarray(arr).tobytes()


def tensor_to_proto(
    tensor: Tensor | np.ndarray,
    name: str = "",
    *,
    sink: TensorSink | None = None,
    out: onnx.TensorProto | None = None,
) -> onnx.TensorProto:
    """An ONNX ``TensorProto`` for a kiln tensor (raw data, or external through ``sink``).

    ``out`` is filled in place when given (saves a copy of the data).
    """
    if isinstance(tensor, np.ndarray):
        tensor = Tensor.from_numpy(tensor)
    proto = out if out is not None else onnx.TensorProto()
    if name:
        proto.name = name
    proto.data_type = int(tensor.dtype)
    proto.dims.extend(tensor.shape)
    if tensor.dtype == DType.STRING:
        for item in np.asarray(tensor.numpy(), dtype=object).reshape(-1):
            proto.string_data.append(
                item if isinstance(item, bytes) else str(item).encode("utf-8", "surrogateescape")
            )
        return proto
    if sink is not None and sink.place(proto, tensor):
        return proto
    data = tensor_bytes(tensor)
    proto.raw_data = bytes(data) if isinstance(data, memoryview) else data
    return proto


# --------------------------------------------------------------------------- attributes


GraphToProto = Callable[[Graph], onnx.GraphProto]


def attr_to_proto(
    name: str, attr: Attr, *, graph_fn: GraphToProto | None = None, kind: AttrKind | None = None
) -> onnx.AttributeProto:
    """An ``AttributeProto``; ``kind`` (the schema's) turns INT(S) into FLOAT(S) where the op wants floats."""
    a = onnx.AttributeProto()
    a.name = name
    k, value = attr
    if kind == AttrKind.FLOAT and k == AttrKind.INT:
        k, value = AttrKind.FLOAT, float(value)
    elif kind == AttrKind.FLOATS and k == AttrKind.INTS:
        k, value = AttrKind.FLOATS, tuple(float(v) for v in value)
    a.type = int(k)  # type: ignore[assignment]
    K = AttrKind
    if k == K.FLOAT:
        a.f = float(value)
    elif k == K.INT:
        a.i = int(value)
    elif k == K.STRING:
        a.s = value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogateescape")
    elif k == K.FLOATS:
        a.floats.extend(float(v) for v in value)
    elif k == K.INTS:
        a.ints.extend(int(v) for v in value)
    elif k == K.STRINGS:
        a.strings.extend(
            v if isinstance(v, bytes) else str(v).encode("utf-8", "surrogateescape") for v in value
        )
    elif k == K.TENSOR:
        a.t.CopyFrom(tensor_to_proto(value))
    elif k == K.TENSORS:
        a.tensors.extend(tensor_to_proto(t) for t in value)
    elif k in (K.GRAPH, K.GRAPHS):
        if graph_fn is None:
            graph_fn = lambda g: _Exporter(g.root).graph_to_proto(g)
        if k == K.GRAPH:
            a.g.CopyFrom(graph_fn(value))
        else:
            a.graphs.extend(graph_fn(g) for g in value)
    elif k == K.SPARSE_TENSOR:
        a.sparse_tensor.ParseFromString(value)
    elif k == K.SPARSE_TENSORS:
        for blob in value:
            a.sparse_tensors.add().ParseFromString(blob)
    elif k == K.TYPE_PROTO:
        a.tp.CopyFrom(type_to_proto(value))
    elif k == K.TYPE_PROTOS:
        a.type_protos.extend(type_to_proto(t) for t in value)
    else:  # pragma: no cover - AttrKind is closed
        raise ExportError(f"attribute {name!r} has unsupported kind {k!r}")
    return a


def _attr_kinds(node: Node) -> dict[str, AttrKind]:
    schema = lookup(node.domain, node.op, node.version) if node.domain in ("", "ai.onnx.ml") else None
    if schema is None:
        return {}
    return {name: spec.kind for name, spec in schema.attrs.items()}


def _is_omitted(v: Value) -> bool:
    meta = v.meta
    if not meta or not meta.get("omitted"):
        return False
    return not v.uses and not (v.graph is not None and v.graph.is_output(v))


def node_to_proto(
    node: Node,
    *,
    name_of: Callable[[Value], str] | None = None,
    graph_fn: GraphToProto | None = None,
) -> onnx.NodeProto:
    """The ``NodeProto`` of one node: op, domain, name, input/output names, attributes sorted by name.

    Subgraph attributes are exported with their own initializers and value_info
    (through ``graph_fn``; by default a fresh exporter for the node's graph).
    """
    return _fill_node(onnx.NodeProto(), node, name_of or _value_name, graph_fn)


def _fill_node(
    proto: onnx.NodeProto, node: Node, name_of: Callable[[Value], str], graph_fn: GraphToProto | None
) -> onnx.NodeProto:
    proto.op_type = node.op
    if node.domain:
        proto.domain = node.domain
    if node.name:
        proto.name = node.name
    proto.input.extend(["" if v is None else name_of(v) for v in node.inputs])
    proto.output.extend(["" if _is_omitted(v) else name_of(v) for v in node.outputs])
    if node.attrs:
        kinds = _attr_kinds(node)
        for name in sorted(node.attrs):
            proto.attribute.append(
                attr_to_proto(name, node.attrs[name], graph_fn=graph_fn, kind=kinds.get(name))
            )
    return proto


def _value_name(v: Value) -> str:
    return v.name


# --------------------------------------------------------------------------- the exporter


@dataclass
class Emit:
    """What a ``lower`` hook gets besides the node: the names the exporter gives values.

    ``inputs``/``outputs`` are the node's ONNX names (``""`` for an absent one), ``fresh(base)``
    invents an unused value name, ``constant(array, base)`` adds an initializer (a Constant node
    inside a function body) and returns its name, and ``memo`` is per graph body.
    """

    inputs: list[str]
    outputs: list[str]
    fresh: Callable[[str], str]
    constant: Callable[[np.ndarray, str], str]
    memo: dict[Any, Any]
    """Shared by every call for one graph body: a hook may reuse a value it made for an earlier node."""


KilnLowering = Callable[[Node, Emit], "list[onnx.NodeProto] | None"]
"""``lower(node, emit)``: NodeProtos standing for the kiln node, or ``None`` to keep the default."""


def to_onnx(graph: Graph, *, kiln_ops: str = "functions", lower: KilnLowering | None = None) -> onnx.ModelProto:
    """The ONNX model of ``graph``; kiln ops as local functions (``"functions"``) or expanded (``"inline"``).

    ``lower`` may write a kiln op as other ops first (see the module doc).

    Raises:
        ExportError: a kiln op without decomposition, or a graph ONNX cannot hold.
    """
    with paused_gc():
        return _Exporter(graph, kiln_ops=kiln_ops, lower=lower).model()


@dataclass
class _Body:
    """Where one graph body (a graph, or a function) is written: the proto's own repeated fields."""

    nodes: Any
    initializers: Any = None
    value_info: Any = None

    @property
    def in_function(self) -> bool:
        return self.initializers is None


def _attr_key(a: Attr) -> Any:
    kind, value = a
    if kind == AttrKind.TENSOR:
        return (kind, value.dtype, value.shape, value.checksum())
    if kind == AttrKind.TENSORS:
        return (kind, tuple((t.dtype, t.shape, t.checksum()) for t in value))
    if kind in (AttrKind.GRAPH, AttrKind.GRAPHS):
        return (kind, id(value))
    if kind in (AttrKind.TYPE_PROTO, AttrKind.TYPE_PROTOS):
        return (kind, repr(value))
    return (kind, value)


class _Exporter:
    def __init__(
        self, graph: Graph, *, kiln_ops: str = "functions", sink: TensorSink | None = None,
        lower: KilnLowering | None = None,
    ) -> None:
        if kiln_ops not in ("functions", "inline"):
            raise ExportError(f"kiln_ops must be 'functions' or 'inline', not {kiln_ops!r}")
        self.root = graph
        self.kiln_ops = kiln_ops
        self.lower = lower
        self._lower_memo: dict[int, dict[Any, Any]] = {}
        self.sink = sink
        self.rename: dict[Value, str] = {}
        self._names: NameAuthority | None = None
        self.functions: list[onnx.FunctionProto] = []
        self._function_by_key: dict[Any, str] = {}
        self._function_count: dict[str, int] = {}
        self._building: set[Any] = set()
        self.domain_versions: dict[str, int] = {}
        self.min_ir = 4
        self._inline_depth = 0
        self._type_protos: dict[Type, onnx.TypeProto] = {}
        self._node_names = NameAuthority()

    # ---- names

    def name(self, v: Value) -> str:
        return self.rename.get(v, v.name)

    def fresh(self, base: str) -> str:
        if self._names is None:  # built on first use: most exports invent no names
            taken: set[str] = set()
            for g in self.root.all_graphs():
                taken.update(v.name for v in g.inputs)
                taken.update(g.constants)
                for node in g:
                    taken.update(o.name for o in node.outputs)
            self._names = NameAuthority(taken)
        return self._names.fresh(base)

    def node_name(self, name: str) -> str:
        """``name``, or a numbered variant when another node already has it (onnxruntime wants them unique)."""
        return self._node_names.fresh(name)

    # ---- facts the model header needs

    def note_type(self, t: Type | None) -> None:
        while t is not None:
            if isinstance(t, TensorType):
                need = _DTYPE_IR.get(t.dtype)
                if need is not None and need > self.min_ir:
                    self.min_ir = need
                return
            if isinstance(t, OptionalType):
                self.min_ir = max(self.min_ir, 8)
            t = t.elem if isinstance(t, (SequenceType, OptionalType)) else None

    def note_domain(self, node: Node) -> None:
        domain = node.domain
        if domain == KILN_DOMAIN:
            self.domain_versions[domain] = KILN_OPSET_VERSION
            return
        version = node.version
        known = self.domain_versions.get(domain)
        if version is not None and (known is None or version > known):
            self.domain_versions[domain] = version
        elif known is None:
            self.domain_versions[domain] = 0

    def tensor(self, tensor: Tensor, name: str, out: onnx.TensorProto) -> onnx.TensorProto:
        need = _DTYPE_IR.get(tensor.dtype)
        if need is not None and need > self.min_ir:
            self.min_ir = need
        try:
            return tensor_to_proto(tensor, name, sink=self.sink, out=out)
        except ExportError:
            raise
        except Exception as exc:
            raise ExportError(f"constant {name!r} cannot be written: {exc}") from exc

    # ---- model

    def model(self) -> onnx.ModelProto:
        g = self.root
        m = onnx.ModelProto()
        self.graph_to_proto(g, target=m.graph)
        info = g.model
        opsets = self._opsets()
        ir = max(info.ir_version, 4)
        ir = max(ir, self.min_ir)
        try:
            ids = [onnx.helper.make_opsetid(d, v) for d, v in opsets.items() if d != KILN_DOMAIN]
            ir = max(ir, onnx.helper.find_min_ir_version_for(ids, ignore_unknown=True))
        except Exception as exc:  # noqa: BLE001 - an opset the installed onnx does not know
            logger.debug("no minimum ir_version known for %s: %s", opsets, exc)
        if self.functions or info.functions:
            ir = max(ir, 8)
        m.ir_version = ir
        m.producer_name = info.producer_name or "kiln"
        if info.producer_version:
            m.producer_version = info.producer_version
        if info.model_version:
            m.model_version = info.model_version
        if info.doc_string:
            m.doc_string = info.doc_string
        domain = g.meta.get("onnx_domain")
        if isinstance(domain, str) and domain:
            m.domain = domain
        for domain_name, version in opsets.items():
            m.opset_import.add(domain=domain_name, version=version)
        for key, value in info.metadata.items():
            m.metadata_props.add(key=str(key), value=str(value))
        m.functions.extend(self.functions)
        for f in info.functions:
            m.functions.append(f)
        return m

    def _opsets(self) -> dict[str, int]:
        opsets: dict[str, int] = {}
        declared = self.root.opsets
        for domain, version in declared.items():
            opsets[domain] = version
        for domain, version in self.domain_versions.items():
            if domain not in opsets:
                opsets[domain] = version if version > 0 else (newest_onnx_opset() if domain == "" else 1)
        if self.functions:
            opsets[KILN_DOMAIN] = KILN_OPSET_VERSION
        return dict(sorted(opsets.items(), key=lambda kv: (kv[0] != "", kv[0])))

    # ---- graphs

    def graph_to_proto(self, g: Graph, *, target: onnx.GraphProto | None = None) -> onnx.GraphProto:
        gp = target if target is not None else onnx.GraphProto()
        gp.name = g.name
        if g.doc_string:
            gp.doc_string = g.doc_string
        is_root = g.parent is None
        for v in g.inputs:
            self.note_type(v.type)
            self.value_info(gp.input.add(), self.name(v), v.type)
        out_names = self.emit_body(g, _Body(gp.node, gp.initializer, gp.value_info), None if is_root else [])
        for v, name in zip(g.outputs, out_names):
            self.note_type(v.type)
            self.value_info(gp.output.add(), name, v.type)
        return gp

    def value_info(self, vi: onnx.ValueInfoProto, name: str, t: Type | None) -> None:
        vi.name = name
        if t is not None:
            cached = self._type_protos.get(t)
            if cached is None:
                cached = self._type_protos[t] = type_to_proto(t)
            vi.type.CopyFrom(cached)

    def emit_body(self, g: Graph, body: _Body, fixed: list[str] | None) -> list[str]:
        """Writes ``g``'s constants and nodes into ``body``; returns the output names.

        ``fixed=None``: the root graph (outputs keep their names); ``[]``: a
        subgraph or function (outputs not produced here get an Identity with a
        fresh name); a list of names: outputs must get exactly those names.
        """
        # 1. decide output names before anything is written, since that may rename values
        plan: list[tuple[Value, str, bool]] = []  # (value, output name, needs Identity)
        seen: set[int] = set()
        for i, v in enumerate(g.outputs):
            first = id(v) not in seen
            seen.add(id(v))
            produced_here = v.producer is not None and v.producer.graph is g
            if fixed:
                want = fixed[i]
                if produced_here and first and v not in self.rename:
                    self.rename[v] = want
                    plan.append((v, want, False))
                else:
                    plan.append((v, want, True))
            elif fixed is None and first and (produced_here or (v.is_graph_input and v.graph is g)):
                plan.append((v, self.name(v), False))
            elif fixed is None and first and v.is_constant and v.graph is g:
                out_name = self.name(v)
                self.rename[v] = self.fresh(f"{out_name}_value")
                plan.append((v, out_name, True))
            elif fixed is not None and not fixed and first and produced_here:
                plan.append((v, self.name(v), False))
            else:
                plan.append((v, self.fresh(f"{self.name(v)}_out"), True))
        # 2. constants
        for v in g.constants.values():
            name = self.name(v)
            assert v.const is not None
            if body.in_function:
                node = body.nodes.add()
                node.op_type = "Constant"
                node.output.append(name)
                attr = node.attribute.add()
                attr.name = "value"
                attr.type = onnx.AttributeProto.TENSOR
                tensor_to_proto(v.const, out=attr.t)
                self.note_type(v.type)
            else:
                self.tensor(v.const, name, body.initializers.add())
        # 3. nodes
        out_ids = {id(v) for v in g.outputs}
        value_info = body.value_info
        for node in g:
            if node.domain == KILN_DOMAIN:
                self.emit_kiln(node, body)
            else:
                self.note_domain(node)
                proto = _fill_node(body.nodes.add(), node, self.name, self.graph_to_proto)
                if node.name:
                    proto.name = self.node_name(node.name)
            for out in node.outputs:
                t = out.type
                if t is None:
                    continue
                self.note_type(t)
                if value_info is not None and id(out) not in out_ids and not _is_omitted(out):
                    self.value_info(value_info.add(), self.name(out), t)
        # 4. identities for outputs that need one
        for v, name, needs in plan:
            if needs:
                node = body.nodes.add()
                node.op_type = "Identity"
                node.input.append(self.name(v))
                node.output.append(name)
                self.domain_versions.setdefault("", 0)
        return [name for _, name, _ in plan]

    # ---- kiln ops

    def emit_kiln(self, node: Node, body: _Body) -> None:
        if self.lower is not None and self._lowered(node, body):
            return
        if self.kiln_ops == "inline":
            self._inline(node, body)
            return
        fname = self._function_for(node)
        proto = body.nodes.add()
        proto.op_type = fname
        proto.domain = KILN_DOMAIN
        if node.name:
            proto.name = self.node_name(node.name)
        proto.input.extend("" if v is None else self.name(v) for v in node.inputs)
        proto.output.extend("" if _is_omitted(v) else self.name(v) for v in node.outputs)
        self.domain_versions[KILN_DOMAIN] = KILN_OPSET_VERSION

    def _lowered(self, node: Node, body: _Body) -> bool:
        """Writes what the ``lower`` hook makes of ``node``; ``False`` when it declines."""

        def constant(array: np.ndarray, base: str) -> str:
            name = self.fresh(base)
            tensor = Tensor.from_numpy(np.ascontiguousarray(array))
            if body.in_function:
                proto = body.nodes.add(op_type="Constant", output=[name])
                attr = proto.attribute.add(name="value", type=onnx.AttributeProto.TENSOR)
                tensor_to_proto(tensor, out=attr.t)
            else:
                self.tensor(tensor, name, body.initializers.add())
            return name

        emit = Emit(
            ["" if v is None else self.name(v) for v in node.inputs],
            ["" if _is_omitted(v) else self.name(v) for v in node.outputs],
            self.fresh,
            constant,
            self._lower_memo.setdefault(id(body.nodes), {}),
        )
        assert self.lower is not None
        protos = self.lower(node, emit)
        if protos is None:
            return False
        for i, proto in enumerate(protos):
            if node.name:
                proto.name = self.node_name(node.name if len(protos) == 1 else f"{node.name}/{i}")
            body.nodes.append(proto)
            domain = proto.domain if proto.domain != "ai.onnx" else ""
            if domain not in self.domain_versions:
                self.domain_versions[domain] = 1 if domain else 0
        return True

    def _decompose(self, node: Node) -> Graph:
        """The decomposition of one kiln node, built in a private graph whose inputs stand for the node's."""
        from kiln.ops.builder import OpBuilder

        schema = lookup(node.domain, node.op, node.version)
        if schema is None or schema.decompose is None:
            raise ExportError(f"kiln op {node.op_id} has no decomposition", node=node)
        tmp = Graph(f"{node.op}_body")
        tmp.opsets = dict(self.root.opsets)
        tmp.opsets.setdefault("", newest_onnx_opset())
        inputs = [None if v is None else tmp.add_input(f"X{i}", v.type) for i, v in enumerate(node.inputs)]
        outputs = [Value(f"Y{i}", o.type) for i, o in enumerate(node.outputs)]
        clone = Node(
            node.op,
            inputs,
            outputs,
            dict(node.attrs),
            domain=node.domain,
            version=node.version,
            name=node.name,
            loc=node.loc,
        )
        tmp.insert_node(clone)
        builder = OpBuilder(tmp, before=clone, loc=node.loc)
        try:
            result = schema.decompose(builder, clone)
        except ExportError:
            raise
        except Exception as exc:
            raise ExportError(
                f"decomposition of {node.op_id} failed: {type(exc).__name__}: {exc}", node=node
            ) from exc
        outs = [result] if isinstance(result, Value) else list(result)
        if len(outs) != len(node.outputs):
            raise ExportError(
                f"decomposition of {node.op_id} gave {len(outs)} values for {len(node.outputs)} outputs",
                node=node,
            )
        if any(o.uses for o in clone.outputs) or any(any(o is x for x in outs) for o in clone.outputs):
            raise ExportError(f"decomposition of {node.op_id} uses the node it replaces", node=node)
        tmp.remove_node(clone)
        tmp.outputs = outs
        return tmp

    def _function_for(self, node: Node) -> str:
        key = (
            node.op,
            node.version,
            tuple(sorted((k, _attr_key(a)) for k, a in node.attrs.items())),
            tuple(v is not None for v in node.inputs),
            len(node.outputs),
            tuple(None if v is None else v.type for v in node.inputs),
        )
        known = self._function_by_key.get(key)
        if known is not None:
            return known
        if key in self._building:
            raise ExportError(f"the decomposition of {node.op_id} contains {node.op_id} itself", node=node)
        self._building.add(key)
        try:
            tmp = self._decompose(node)
            count = self._function_count.get(node.op, 0) + 1
            self._function_count[node.op] = count
            fname = node.op if count == 1 else f"{node.op}_{count}"
            f = onnx.FunctionProto()
            f.name = fname
            f.domain = KILN_DOMAIN
            saved_versions = self.domain_versions
            self.domain_versions = {}
            try:
                out_names = self.emit_body(tmp, _Body(f.node), [])
                used = self.domain_versions
            finally:
                self.domain_versions = saved_versions
            f.input.extend(f"X{i}" for i in range(len(node.inputs)))
            f.output.extend(out_names)
            imports = {d: v for d, v in used.items()}
            imports[""] = self.root.opsets.get("", 0) or tmp.opsets[""]
            for domain, version in sorted(imports.items(), key=lambda kv: (kv[0] != "", kv[0])):
                if domain not in saved_versions and domain != KILN_DOMAIN:
                    saved_versions[domain] = version
                f.opset_import.add(
                    domain=domain, version=version if version > 0 else self.root.opsets.get(domain, 1)
                )
            if node.name:
                f.doc_string = f"decomposition of kiln.{node.op}"
            self.functions.append(f)
            self._function_by_key[key] = fname
            return fname
        finally:
            self._building.discard(key)

    def _inline(self, node: Node, body: _Body) -> None:
        if self._inline_depth >= _MAX_INLINE_DEPTH:
            raise ExportError(
                f"decompositions of {node.op_id} nest deeper than {_MAX_INLINE_DEPTH} levels", node=node
            )
        tmp = self._decompose(node)
        for i, v in enumerate(node.inputs):
            if v is not None:
                inner = next(x for x in tmp.inputs if x.name == f"X{i}")
                self.rename[inner] = self.name(v)
        for v in tmp.constants.values():
            self.rename[v] = self.fresh(f"{node.name or node.op}/{v.name}")
        for inner_node in tmp:
            for out in inner_node.outputs:
                self.rename[out] = self.fresh(f"{node.name or node.op}/{out.name}")
        wanted = [self.name(o) for o in node.outputs]
        for o in tmp.outputs:  # the final names come from the plan in emit_body
            if o.producer is not None and o.producer.graph is tmp:
                self.rename.pop(o, None)
        self._inline_depth += 1
        try:
            self.emit_body(tmp, body, wanted)
        finally:
            self._inline_depth -= 1
