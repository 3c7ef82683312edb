"""``kiln.load``: an ONNX model file (or ``ModelProto``) to a kiln :class:`Graph`.

What it does, in order:

1. Reads the file with ``onnx.load(path, load_external_data=False)``; any
   read or parse failure, or a message that is not an ONNX model, becomes a
   :class:`ModelLoadError` naming the file.
2. Converts every graph level iteratively (no recursion in the node count;
   subgraph nesting is bounded by protobuf's own nesting limit): initializers
   and ``Constant`` nodes become constants (lazy data), graph inputs that have
   an initializer of the same name (the IR < 4 style) become constants too,
   model-local functions are inlined, nodes are put in topological order
   (the file's order when it already is one) and checked: no dangling input,
   one producer per name, no cycle, only ops the opset defines (default and
   ``kiln`` domains).  Each problem is one line naming the file and the node.
3. Types: ``input_shapes`` overrides first, then ONNX's shape inference (C++,
   with data propagation) on a light copy of the model, then kiln's per-node
   inference (``kiln.ops.inference.infer_node``) for whatever is still
   untyped.  Inference never makes loading fail, except for a real type
   error, reported for its node.

Dims keep the model's symbol names; ``?`` and ONNX's generated ``unk__N``
names become unknown (``None``), see :mod:`kiln.frontend.convert`.
"""

from __future__ import annotations

import heapq
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from kiln.errors import ModelLoadError
from kiln.frontend.convert import (
    TensorDataError,
    attr_from_proto,
    sparse_tensor_from_proto,
    tensor_from_proto,
    type_from_proto,
)
from kiln.frontend.functions import FunctionInliner, InlineError, Item, iter_graph_names
from kiln.frontend.shapes import TypeTable, collect_types, infer_types
from kiln.ir.core import (
    Attr,
    AttrKind,
    Graph,
    Location,
    ModelInfo,
    Node,
    Value,
    canonical_domain,
    domain_text,
)
from kiln.ir.dtypes import DType
from kiln.ir.gcpause import paused_gc
from kiln.ir.tensor import Tensor
from kiln.ir.types import Dim, TensorType, Type
from kiln.ops.registry import lookup, newest_onnx_opset

logger = logging.getLogger(__name__)

MIN_OPSET = 7
MAX_SUBGRAPH_DEPTH = 64


def load(
    path_or_model: str | os.PathLike[str] | onnx.ModelProto,
    *,
    input_shapes: Mapping[str, Sequence[int | str | None]] | None = None,
    infer: bool = True,
) -> Graph:
    """Loads an ONNX model into a kiln graph.

    Args:
        path_or_model: a model file, or an already parsed ``ModelProto`` (whose
            external data, if any, cannot be resolved: there is no folder).
        input_shapes: new shapes for graph inputs, by input name; a dim is an
            int, a symbol name, or ``None``/``-1`` for unknown.
        infer: resolve value types (ONNX inference, then kiln's); with
            ``False`` only the types the file declares are used.

    Returns:
        The graph, with ``graph.model`` (ir_version, producer, metadata, doc,
        source path) and ``graph.opsets`` filled.

    Raises:
        ModelLoadError: the file is missing, unreadable, not ONNX, malformed or
            hostile; the message names the file and, where there is one, the node.
    """
    if isinstance(path_or_model, onnx.ModelProto):
        model = path_or_model
        label = None
        loader = _Loader(model, label=label, loc_file=None, model_dir=None, source_path=None)
    else:
        path = os.fspath(path_or_model)
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        model = _read(path)
        loader = _Loader(
            model,
            label=path,
            loc_file=os.path.basename(path),
            model_dir=os.path.dirname(os.path.abspath(path)),
            source_path=os.path.abspath(path),
        )
    with paused_gc():  # loading creates no garbage cycles; the collector's passes would dominate big graphs
        return loader.run(input_shapes or {}, infer)


# --------------------------------------------------------------------------- reading


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[-1].strip() if text else type(exc).__name__
    return line[:200]


def _read(path: str) -> onnx.ModelProto:
    if "\0" in path:
        raise ModelLoadError("not a valid path", file=repr(path))
    if not os.path.exists(path):
        raise ModelLoadError("file not found", file=path)
    if not os.path.isfile(path):
        raise ModelLoadError("not a file", file=path)
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf and onnx raise assorted errors; all mean "unreadable"
        size = os.path.getsize(path)
        hint = " (a file over 2 GB must keep its weights as external data)" if size >= 2**31 else ""
        raise ModelLoadError(
            f"not a readable ONNX model: {type(exc).__name__}: {_short(exc)}{hint}", file=path
        ) from None
    if not isinstance(model, onnx.ModelProto):
        raise ModelLoadError("not an ONNX ModelProto", file=path)
    return model


# --------------------------------------------------------------------------- the loader


def _node_text(proto: onnx.NodeProto, index: int, context: str) -> str:
    op_id = f"{domain_text(canonical_domain(proto.domain))}.{proto.op_type}"
    name = f" {proto.name!r}" if proto.name else ""
    return f"node #{index}{name} ({op_id}){context}"


def _free_names(graph: onnx.GraphProto) -> set[str]:
    """Names a subgraph (with its own subgraphs) reads but does not define."""
    used: set[str] = set()
    defined: set[str] = set()
    stack = [graph]
    while stack:
        g = stack.pop()
        defined.update(v.name for v in g.input)
        defined.update(t.name for t in g.initializer)
        defined.update(s.values.name for s in g.sparse_initializer)
        used.update(v.name for v in g.output)
        for n in g.node:
            used.update(n.input)
            defined.update(n.output)
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    stack.append(a.g)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    stack.extend(a.graphs)
    used.discard("")
    return used - defined


def _has_subgraph(proto: onnx.NodeProto) -> bool:
    for a in proto.attribute:
        if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
            return True
    return False


class _Loader:
    def __init__(
        self,
        model: onnx.ModelProto,
        *,
        label: str | None,
        loc_file: str | None,
        model_dir: str | None,
        source_path: str | None,
    ) -> None:
        self.model = model
        self.label = label
        self.loc_file = loc_file
        self.model_dir = model_dir
        self.source_path = source_path
        self.opsets: dict[str, int] = {}
        self.inliner: FunctionInliner | None = None
        # (value, graph path or None, ONNX name): values whose type inference gives
        self.records: list[tuple[Value, tuple | None, str]] = []
        self.overrides: dict[str, tuple[Dim, ...]] = {}
        self._known_ops: set[tuple[str, str, int | None]] = set()
        self.root_order: list[int] | None = None

    # ---- errors

    def error(self, message: str) -> ModelLoadError:
        return ModelLoadError(message, file=self.label or "<ModelProto>")

    # ---- entry

    def run(self, input_shapes: Mapping[str, Sequence[Any]], infer: bool) -> Graph:
        model = self.model
        self._check_model()
        try:
            self.inliner = FunctionInliner(model.functions, _LazyNames(model.graph))
            self.inliner.check_size(model.graph)
        except InlineError as exc:
            raise self.error(str(exc)) from None
        graph = Graph(model.graph.name or "main")
        graph.opsets = self.opsets
        graph.doc_string = model.graph.doc_string
        graph.model = ModelInfo(
            ir_version=int(model.ir_version),
            producer_name=model.producer_name,
            producer_version=model.producer_version,
            model_version=int(model.model_version),
            doc_string=model.doc_string,
            metadata={p.key: p.value for p in model.metadata_props},
            source_path=self.source_path,
            functions=[],
        )
        if model.domain:
            graph.meta["onnx_domain"] = model.domain
        self.overrides = self._check_overrides(input_shapes)
        self._convert_graph(model.graph, graph, [], (), "", (), 0)
        for domain, version in self.inliner.extra_domains.items():
            self.opsets.setdefault(domain, version)
        self._assign_types(graph, infer)
        return graph

    def _check_model(self) -> None:
        model = self.model
        if model.ir_version <= 0 or not model.HasField("graph"):
            raise self.error("not an ONNX model (no ir_version or no graph)")
        opsets: dict[str, int] = {}
        for imp in model.opset_import:
            domain = canonical_domain(imp.domain)
            opsets[domain] = int(imp.version)
        if not model.opset_import and model.ir_version < 3:
            opsets[""] = 1
        default = opsets.get("")
        if default is not None:
            newest = newest_onnx_opset()
            if default < MIN_OPSET:
                raise self.error(
                    f"opset {default} is older than {MIN_OPSET}, the oldest kiln reads "
                    f"(onnx.version_converter.convert_version(model, {MIN_OPSET}) can upgrade it)"
                )
            if default > newest:
                raise self.error(
                    f"opset {default} is newer than {newest}, the newest the installed onnx knows"
                )
        self.opsets = opsets

    def _check_overrides(self, input_shapes: Mapping[str, Sequence[Any]]) -> dict[str, tuple[Dim, ...]]:
        if not input_shapes:
            return {}
        g = self.model.graph
        init = {t.name for t in g.initializer} | {s.values.name for s in g.sparse_initializer}
        real = {vi.name: vi for vi in g.input if vi.name not in init}
        result: dict[str, tuple[Dim, ...]] = {}
        for name, dims in input_shapes.items():
            if name not in real:
                names = ", ".join(repr(n) for n in real) or "none"
                raise self.error(f"input_shapes names {name!r}, which is not a graph input (inputs: {names})")
            if isinstance(dims, (str, bytes)):
                raise self.error(f"input_shapes[{name!r}] must be a list of dims, not {dims!r}")
            try:
                parsed = tuple(_override_dim(d) for d in dims)
            except (TypeError, ValueError) as exc:
                raise self.error(f"input_shapes[{name!r}]: {exc}") from None
            declared = type_from_proto(real[name].type)
            if not isinstance(declared, TensorType):
                raise self.error(
                    f"input {name!r} is not a tensor with a known element type; its shape cannot be set"
                )
            if declared.shape is not None and len(declared.shape) != len(parsed):
                raise self.error(
                    f"input_shapes[{name!r}] has {len(parsed)} dims but input {name!r} has rank {len(declared.shape)}"
                )
            result[name] = parsed
        return result

    # ---- graphs

    def _convert_graph(
        self,
        gp: onnx.GraphProto,
        kg: Graph,
        scopes: list[dict[str, Value]],
        path: tuple | None,
        context: str,
        chain: tuple,
        depth: int,
    ) -> None:
        if depth > MAX_SUBGRAPH_DEPTH:
            raise self.error(f"subgraphs nested deeper than {MAX_SUBGRAPH_DEPTH} levels{context}")
        local: dict[str, Value] = {}
        where = context.removeprefix(" ") or "main graph"
        for t in gp.initializer:
            self._add_constant(
                kg,
                local,
                t.name,
                lambda t=t: tensor_from_proto(t, model_dir=self.model_dir, what=f"initializer {t.name!r}"),
                where,
            )
        for s in gp.sparse_initializer:
            self._add_constant(
                kg,
                local,
                s.values.name,
                lambda s=s: sparse_tensor_from_proto(
                    s, model_dir=self.model_dir, what=f"sparse initializer {s.values.name!r}"
                ),
                where,
            )
        inputs_seen: set[str] = set()
        for vi in gp.input:
            name = vi.name
            if name in inputs_seen:
                raise self.error(f"graph input {name!r} is listed twice ({where})")
            inputs_seen.add(name)
            if name in local:
                continue  # IR < 4 style: the initializer makes it a constant
            if not name:
                raise self.error(f"a graph input has no name ({where})")
            t = type_from_proto(vi.type)
            if depth == 0 and name in self.overrides and isinstance(t, TensorType):
                t = TensorType(t.dtype, self.overrides[name])
            v = kg.add_input(name, t)
            local[name] = v
            if depth > 0:
                self.records.append((v, path, name))
        assert self.inliner is not None
        try:
            items = self.inliner.expand(gp.node, chain)
        except InlineError as exc:
            raise self.error(f"{exc}{context}") from None
        ins = [list(item.proto.input) for item in items]
        outs = [list(item.proto.output) for item in items]
        order = self._order(items, ins, outs, local, scopes, context)
        if depth == 0 and not isinstance(order, range):
            self.root_order = list(dict.fromkeys(items[k].pos for k in order))
        for k in order:
            self._convert_node(items[k], ins[k], outs[k], kg, local, scopes, path, context, depth)
        for vi in gp.output:
            v = local.get(vi.name)
            if v is None:
                v = _resolve(vi.name, scopes)
            if v is None:
                raise self.error(
                    f"graph output {vi.name!r} is not produced by any node, input or initializer ({where})"
                )
            kg.outputs.append(v)

    def _add_constant(self, kg: Graph, local: dict[str, Value], name: str, make: Any, where: str) -> Value:
        if not name:
            raise self.error(f"an initializer has no name ({where})")
        if name in local:
            raise self.error(f"initializer {name!r} is defined twice ({where})")
        try:
            tensor = make()
        except TensorDataError as exc:
            raise self.error(str(exc)) from None
        v = kg.add_constant(name, tensor)
        local[name] = v
        return v

    def _order(
        self,
        items: Sequence[Item],
        ins: Sequence[list[str]],
        outs: Sequence[list[str]],
        local: Mapping[str, Value],
        scopes: Sequence[Mapping[str, Value]],
        context: str,
    ) -> Sequence[int]:
        """A topological order of ``items`` (the given one when it is one); checks names on the way."""
        producer: dict[str, int] = {}
        for k, names in enumerate(outs):
            for name in names:
                if not name:
                    continue
                if name in producer:
                    j = producer[name]
                    first = _node_text(items[j].proto, items[j].pos, "")
                    raise self.error(
                        f"{_node_text(items[k].proto, items[k].pos, context)}: output {name!r} is also produced by {first}"
                    )
                if name in local:
                    raise self.error(
                        f"{_node_text(items[k].proto, items[k].pos, context)}: output {name!r} is also a graph "
                        "input or initializer"
                    )
                producer[name] = k
        deps: list[list[str]] = []
        in_order = True
        get = producer.get
        for k, item in enumerate(items):
            names = ins[k]
            proto = item.proto
            if len(proto.attribute) and _has_subgraph(proto):
                free: set[str] = set()
                for a in proto.attribute:
                    if a.type == onnx.AttributeProto.GRAPH:
                        free |= _free_names(a.g)
                    elif a.type == onnx.AttributeProto.GRAPHS:
                        for g in a.graphs:
                            free |= _free_names(g)
                names = names + sorted(free)
            deps.append(names)
            for name in names:
                if not name:
                    continue
                at = get(name)
                if at is None:
                    if name not in local and _resolve(name, scopes) is None:
                        raise self.error(
                            f"{_node_text(proto, item.pos, context)}: input {name!r} is not produced by any node, "
                            "graph input or initializer"
                        )
                elif at >= k:
                    in_order = False
        if in_order:
            return range(len(items))
        return self._sort(items, deps, producer, context)

    def _sort(
        self, items: Sequence[Item], deps: Sequence[Iterable[str]], producer: Mapping[str, int], context: str
    ) -> list[int]:
        n = len(items)
        indegree = [0] * n
        consumers: list[list[int]] = [[] for _ in range(n)]
        for k in range(n):
            for name in deps[k]:
                j = producer.get(name) if name else None
                if j is not None:
                    indegree[k] += 1
                    consumers[j].append(k)
        ready = [k for k in range(n) if indegree[k] == 0]
        heapq.heapify(ready)
        order: list[int] = []
        while ready:
            k = heapq.heappop(ready)
            order.append(k)
            for c in consumers[k]:
                indegree[c] -= 1
                if indegree[c] == 0:
                    heapq.heappush(ready, c)
        if len(order) == n:
            return order
        # A cycle: walk back along unresolved inputs from a stuck node until a node repeats.
        stuck = min(k for k in range(n) if indegree[k] > 0)
        seen: dict[int, int] = {}
        walk: list[int] = []
        k = stuck
        while k not in seen:
            seen[k] = len(walk)
            walk.append(k)
            k = next(
                producer[name]
                for name in deps[k]
                if name and name in producer and indegree[producer[name]] > 0
            )
        cycle = walk[seen[k] :]
        first = min(cycle)
        names = " <- ".join(repr(items[c].proto.name or items[c].proto.output[0]) for c in cycle[:6])
        more = " ..." if len(cycle) > 6 else ""
        raise self.error(
            f"{_node_text(items[first].proto, items[first].pos, context)}: is part of a cycle ({names}{more})"
        )

    # ---- nodes

    def _convert_node(
        self,
        item: Item,
        in_names: list[str],
        out_names: list[str],
        kg: Graph,
        local: dict[str, Value],
        scopes: list[dict[str, Value]],
        path: tuple | None,
        context: str,
        depth: int,
    ) -> None:
        proto = item.proto
        d = proto.domain
        domain = "" if d == "" or d == "ai.onnx" else d
        op = proto.op_type
        version = self.opsets.get(domain)
        if version is None and self.inliner is not None:
            version = self.inliner.extra_domains.get(domain)
        if domain == "" or domain == "kiln":
            key = (domain, op, version)
            if key not in self._known_ops:
                if domain == "" and version is None:
                    raise self.error(
                        f"{_node_text(proto, item.pos, context)}: the model imports no default-domain opset"
                    )
                if lookup(domain, op, version) is None:
                    what = f"opset {version}" if domain == "" else "the kiln dialect"
                    raise self.error(
                        f"{_node_text(proto, item.pos, context)}: unknown op {op!r} (not in {what})"
                    )
                self._known_ops.add(key)
            if op == "Constant" and domain == "":
                self._convert_constant(item, kg, local, context)
                return
        inputs: list[Value | None] = []
        for name in in_names:
            if not name:
                inputs.append(None)
                continue
            v = local.get(name)
            if v is None:
                v = _resolve(name, scopes)
            inputs.append(v)
        call = item.call
        node_name = proto.name
        loc = Location(self.loc_file, item.pos, (call.name if call is not None else node_name) or None)
        attrs: dict[str, Attr] = {}
        if len(proto.attribute):
            for a in proto.attribute:
                if a.name in attrs:
                    raise self.error(
                        f"{_node_text(proto, item.pos, context)}: attribute {a.name!r} is given twice"
                    )
                try:
                    if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                        attrs[a.name] = self._convert_graph_attr(
                            item, a, kg, local, scopes, path, context, depth
                        )
                    else:
                        attrs[a.name] = attr_from_proto(
                            a, model_dir=self.model_dir, what=f"attribute {a.name!r}"
                        )
                except TensorDataError as exc:
                    raise self.error(f"{_node_text(proto, item.pos, context)}: {exc}") from None
        while out_names and not out_names[-1]:
            out_names.pop()
        outputs: list[Value] = []
        for name in out_names:
            if name:
                outputs.append(Value(name))
            else:
                placeholder = Value(f"{(node_name or op).lower()}_unused")
                placeholder.meta["omitted"] = True
                outputs.append(placeholder)
        node = Node(op, inputs, outputs, attrs, domain=domain, version=version, name=node_name, loc=loc)
        kg.insert_node(node)
        tpath = path if call is None else None
        records = self.records
        for name, v in zip(out_names, outputs):
            if name:
                local[name] = v
                records.append((v, tpath, name))

    def _convert_graph_attr(
        self,
        item: Item,
        a: onnx.AttributeProto,
        kg: Graph,
        local: dict[str, Value],
        scopes: list[dict[str, Value]],
        path: tuple | None,
        context: str,
        depth: int,
    ) -> Attr:
        graphs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
        subs: list[Graph] = []
        owner = _node_text(item.proto, item.pos, "")
        for k, gp in enumerate(graphs):
            sub = kg.new_subgraph(gp.name or a.name)
            sub_path = path + (item.pos, a.name, k) if (path is not None and item.call is None) else None
            sub_context = f" in {a.name!r} of {owner}{context}"
            self._convert_graph(gp, sub, [local, *scopes], sub_path, sub_context, item.chain, depth + 1)
            subs.append(sub)
        if a.type == onnx.AttributeProto.GRAPH:
            return Attr(AttrKind.GRAPH, subs[0])
        return Attr(AttrKind.GRAPHS, tuple(subs))

    def _convert_constant(self, item: Item, kg: Graph, local: dict[str, Value], context: str) -> None:
        proto = item.proto
        where = _node_text(proto, item.pos, context)
        if len(proto.output) != 1 or not proto.output[0]:
            raise self.error(f"{where}: a Constant must have exactly one output")
        if len(proto.attribute) != 1:
            raise self.error(f"{where}: a Constant must have exactly one value attribute")
        a = proto.attribute[0]
        try:
            tensor = _constant_tensor(a, self.model_dir)
        except TensorDataError as exc:
            raise self.error(f"{where}: {exc}") from None
        name = proto.output[0]
        local[name] = kg.add_constant(name, tensor)

    # ---- types

    def _assign_types(self, graph: Graph, infer: bool) -> None:
        table: TypeTable | None = None
        if infer:
            table, type_error = infer_types(self.model, self.overrides, self.root_order)
            if type_error is not None:
                raise self._type_error(graph, *type_error)
        stripped = False
        if table is None:
            table = collect_types(self.model.graph)
            stripped = bool(self.overrides)  # declared shapes may no longer hold: keep element types only
        empty: dict[str, onnx.TypeProto] = {}
        cache: dict[bytes, Type | None] = {}
        untyped: list[Value] = []
        for value, path, name in self.records:
            tp = table.get(path, empty).get(name) if path is not None else None
            if tp is not None:
                key = tp.SerializeToString()
                t = cache.get(key, _MISSING)
                if t is _MISSING:
                    t = cache[key] = type_from_proto(tp)
                if t is not None and stripped and isinstance(t, TensorType):
                    t = TensorType(t.dtype, None)
                if t is not None:
                    value.type = t  # type: ignore[assignment]
                    continue
            if value.producer is not None:
                untyped.append(value)
        if infer and untyped:
            self._kiln_inference(untyped)
        if infer:
            self._check_with_kiln(graph)

    def _check_with_kiln(self, graph: Graph) -> None:
        """One pass of kiln's own inference over the typed graph.

        ONNX's inference only warns about shapes that can never work (a
        Reshape of 4 elements into 15); kiln refuses such a model here, naming
        the node, instead of failing in the middle of a pass.  It also records
        the dims integer tensors are known to hold, for shape folding.
        """
        from kiln.errors import InferenceFailure
        from kiln.ops.inference import infer_graph

        try:
            infer_graph(graph)
        except InferenceFailure as exc:
            raise ModelLoadError(exc.message, node=exc.node, file=self.label) from None

    def _type_error(self, graph: Graph, op: str, name: str, message: str) -> ModelLoadError:
        """The ModelLoadError for a type error ONNX reported by op type and node name."""
        candidates = [n for n in graph.walk() if n.op == op and (n.name == name or not name)]
        node = candidates[0] if len(candidates) == 1 else None
        if node is None:
            for candidate in candidates:
                try:
                    _onnx_type_check(candidate, self.label)
                except ModelLoadError as exc:
                    return exc
            node = candidates[0] if candidates else None
        if node is None:
            return self.error(f"node {name!r} ({op}): type error: {message}")
        return ModelLoadError(f"type error: {message}", node=node, file=self.label)

    def _kiln_inference(self, untyped: list[Value]) -> None:
        """kiln's per-node inference for the producers of ``untyped``, in conversion order."""
        from kiln.ops.inference import InferenceError, infer_node

        done: set[int] = set()
        for value in untyped:
            node = value.producer
            if node is None or id(node) in done or value.type is not None:
                continue
            done.add(id(node))
            try:
                types = infer_node(node)
            except InferenceError as exc:
                raise ModelLoadError(str(exc), node=node, file=self.label) from None
            except Exception as exc:  # noqa: BLE001 - an incomplete inference function must not stop loading
                logger.debug("kiln inference failed for %s: %s", node.op_id, exc)
                types = [None] * len(node.outputs)
            if all(t is None for t in types):
                _onnx_type_check(node, self.label)
            for out, t in zip(node.outputs, types):
                if out.type is None and t is not None:
                    out.type = t


_MISSING: Any = object()


def _onnx_type_check(node: Node, label: str | None) -> None:
    """Asks ONNX's per-node inference whether a fully typed node is valid at all.

    Only for default-domain nodes without subgraphs whose inputs all have
    types: then an ONNX type error is a real one (onnxruntime would refuse
    the model too) and becomes a :class:`ModelLoadError` naming the node.
    """
    if node.domain != "" or node.subgraphs() or node.version is None:
        return
    if any(v is not None and not isinstance(v.type, TensorType) for v in node.inputs):
        return
    import onnx.defs
    import onnx.shape_inference
    from kiln.exporter.convert import node_to_proto
    from kiln.frontend.convert import type_to_proto

    try:
        schema = onnx.defs.get_schema(node.op, max_inclusive_version=node.version, domain="")
        proto = node_to_proto(node)
    except Exception:  # noqa: BLE001
        return
    types = {v.name: type_to_proto(v.type) for v in node.inputs if v is not None}
    try:
        onnx.shape_inference.infer_node_outputs(schema, proto, types)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ModelLoadError(f"type error: {_short(exc)}", node=node, file=label) from None
    except Exception:  # noqa: BLE001 - anything else is not a verdict on the model
        return


# --------------------------------------------------------------------------- helpers


class _LazyNames:
    """All value names of a graph, computed only when the inliner first needs one."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter_graph_names(self.graph)


def _resolve(name: str, scopes: Sequence[Mapping[str, Value]]) -> Value | None:
    for scope in scopes:
        v = scope.get(name)
        if v is not None:
            return v
    return None


def _override_dim(d: Any) -> Dim:
    if d is None:
        return None
    if isinstance(d, bool):
        raise TypeError(f"dim {d!r} is not an int or a name")
    if isinstance(d, (int, np.integer)):
        d = int(d)
        if d < -1:
            raise ValueError(f"dim {d} is negative")
        return None if d == -1 else d
    if isinstance(d, str):
        text = d.strip()
        if not text or text == "?":
            return None
        if text.lstrip("-").isdigit():
            return _override_dim(int(text))
        return text
    raise TypeError(f"dim {d!r} is not an int or a name")


def _constant_tensor(a: onnx.AttributeProto, model_dir: str | None) -> Tensor:
    """The value of a ``Constant`` node's single attribute, in any of its forms."""
    name = a.name
    if a.ref_attr_name:
        raise TensorDataError(f"attribute {name!r} refers to {a.ref_attr_name!r} outside a function")
    if name == "value":
        return tensor_from_proto(a.t, model_dir=model_dir, what="value")
    if name == "sparse_value":
        return sparse_tensor_from_proto(a.sparse_tensor, model_dir=model_dir, what="sparse_value")
    if name == "value_float":
        return Tensor.from_numpy(np.array(a.f, dtype=np.float32))
    if name == "value_floats":
        return Tensor.from_numpy(np.array(list(a.floats), dtype=np.float32))
    if name == "value_int":
        return Tensor.from_numpy(np.array(a.i, dtype=np.int64))
    if name == "value_ints":
        return Tensor.from_numpy(np.array(list(a.ints), dtype=np.int64))
    if name in ("value_string", "value_strings"):
        items = [a.s] if name == "value_string" else list(a.strings)
        arr = np.empty(len(items), dtype=object)
        for i, s in enumerate(items):
            arr[i] = s.decode("utf-8", "surrogateescape")
        data = arr.reshape(()) if name == "value_string" else arr
        return Tensor(DType.STRING, data.shape, array=data)
    raise TensorDataError(f"unknown Constant attribute {name!r}")


__all__ = ["MIN_OPSET", "load"]
