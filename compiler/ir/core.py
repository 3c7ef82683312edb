"""The kiln IR: Value, Node and Graph, with live use-lists and a mutation API.

Every tensor is a :class:`Value` with exactly one producer (a :class:`Node`,
or nothing for graph inputs and constants) and an ordered list of uses.  A
:class:`Graph` keeps its nodes in a doubly linked list that is always a valid
topological order; iteration is safe while nodes are inserted or removed.

Passes never edit lists by hand: they call ``Graph.create_node``,
``Graph.remove_node``, ``Node.set_input`` and ``Value.replace_all_uses_with``,
which keep use-lists, order and names consistent.  ``verify(graph)`` checks
the invariants after each pass.
"""

from __future__ import annotations

import contextlib
import enum
import itertools
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, NamedTuple, Sequence

import numpy as np

from kiln.ir.dtypes import DType
from kiln.ir.tensor import Tensor
from kiln.ir.types import TensorType, Type

ONNX_DOMAIN = ""
KILN_DOMAIN = "kiln"


def canonical_domain(domain: str) -> str:
    """ONNX spells the default domain both ``""`` and ``"ai.onnx"``; kiln uses ``""``."""
    return "" if domain in ("", "ai.onnx") else domain


def domain_text(domain: str) -> str:
    """The domain as the text IR writes it (``onnx`` for the default domain)."""
    return "onnx" if domain == "" else domain


# --------------------------------------------------------------------------- locations


@dataclass(frozen=True, slots=True)
class Location:
    """Where a node came from: the ONNX file, its index there, and its name.

    A fused node lists the locations of the nodes it replaced in ``fused_from``
    and the rule that fused them in ``rule`` (MLIR's ``FusedLoc``).
    """

    file: str | None = None
    index: int | None = None
    name: str | None = None
    fused_from: tuple["Location", ...] = ()
    rule: str | None = None

    @staticmethod
    def fused(locations: Iterable["Location"], rule: str) -> "Location":
        flat: list[Location] = []
        for loc in locations:
            flat.extend(loc.fused_from if loc.fused_from else (loc,))
        return Location(fused_from=tuple(flat), rule=rule)

    def describe(self) -> str:
        """Human form used in error messages: ``model.onnx node #12 'conv1'``."""
        if self.fused_from:
            inner = ", ".join(loc.describe() for loc in self.fused_from[:4])
            more = f" and {len(self.fused_from) - 4} more" if len(self.fused_from) > 4 else ""
            return f"fused by {self.rule or '?'} from [{inner}{more}]"
        parts = []
        if self.file:
            parts.append(self.file)
        if self.index is not None:
            parts.append(f"node #{self.index}")
        if self.name:
            parts.append(repr(self.name))
        return " ".join(parts) if parts else "<unknown location>"


UNKNOWN_LOCATION = Location()


# --------------------------------------------------------------------------- attributes


class AttrKind(enum.IntEnum):
    """Attribute kinds, numbered as ONNX's ``AttributeProto.AttributeType``."""

    FLOAT = 1
    INT = 2
    STRING = 3
    TENSOR = 4
    GRAPH = 5
    FLOATS = 6
    INTS = 7
    STRINGS = 8
    TENSORS = 9
    GRAPHS = 10
    SPARSE_TENSOR = 11
    SPARSE_TENSORS = 12
    TYPE_PROTO = 13
    TYPE_PROTOS = 14


class Attr(NamedTuple):
    """A typed attribute value.

    Values: FLOAT ``float``; INT ``int``; STRING ``str``; TENSOR ``Tensor``;
    GRAPH ``Graph``; the plural kinds tuples of those; TYPE_PROTO a kiln type;
    SPARSE_TENSOR the serialized ``SparseTensorProto`` bytes (kept opaque).
    """

    kind: AttrKind
    value: Any

    @staticmethod
    def infer(value: Any) -> "Attr":
        """Builds an attribute from a plain Python value, guessing its kind."""
        if isinstance(value, Attr):
            return value
        if isinstance(value, bool):
            return Attr(AttrKind.INT, int(value))
        if isinstance(value, (int, np.integer)):
            return Attr(AttrKind.INT, int(value))
        if isinstance(value, (float, np.floating)):
            return Attr(AttrKind.FLOAT, float(value))
        if isinstance(value, str):
            return Attr(AttrKind.STRING, value)
        if isinstance(value, Tensor):
            return Attr(AttrKind.TENSOR, value)
        if isinstance(value, np.ndarray):
            return Attr(AttrKind.TENSOR, Tensor.from_numpy(value))
        if isinstance(value, Graph):
            return Attr(AttrKind.GRAPH, value)
        if isinstance(value, (list, tuple)):
            items = list(value)
            if not items:
                return Attr(AttrKind.INTS, ())
            if all(isinstance(v, (bool, int, np.integer)) for v in items):
                return Attr(AttrKind.INTS, tuple(int(v) for v in items))
            if all(isinstance(v, (int, float, np.integer, np.floating)) for v in items):
                return Attr(AttrKind.FLOATS, tuple(float(v) for v in items))
            if all(isinstance(v, str) for v in items):
                return Attr(AttrKind.STRINGS, tuple(items))
            if all(isinstance(v, (Tensor, np.ndarray)) for v in items):
                return Attr(AttrKind.TENSORS, tuple(Tensor.from_numpy(v) if isinstance(v, np.ndarray) else v for v in items))
            if all(isinstance(v, Graph) for v in items):
                return Attr(AttrKind.GRAPHS, tuple(items))
        raise TypeError(f"cannot make an attribute from {type(value).__name__}")

    def plain(self) -> Any:
        """The value as references and rules like it: lists, numpy arrays."""
        if self.kind == AttrKind.TENSOR:
            return self.value.numpy()
        if self.kind == AttrKind.TENSORS:
            return [t.numpy() for t in self.value]
        if self.kind in (AttrKind.INTS, AttrKind.FLOATS, AttrKind.STRINGS, AttrKind.GRAPHS, AttrKind.TYPE_PROTOS):
            return list(self.value)
        return self.value


# --------------------------------------------------------------------------- values


class Use(NamedTuple):
    """One use of a value: ``node.inputs[index]``."""

    node: "Node"
    index: int


class UseList:
    """A value's uses in the order they were added, with O(1) add and remove.

    Iterates as :class:`Use` tuples and indexes like a list; removal by
    ``(node, index)`` is constant time, so a constant shared by 100k nodes
    does not make every rewrite near it quadratic.
    """

    __slots__ = ("_uses",)

    def __init__(self) -> None:
        self._uses: dict[tuple[int, int], Use] = {}

    def add(self, use: "Use") -> None:
        self._uses[(id(use.node), use.index)] = use

    append = add

    def discard(self, node: "Node", index: int) -> bool:
        return self._uses.pop((id(node), index), None) is not None

    def has(self, node: "Node", index: int) -> bool:
        use = self._uses.get((id(node), index))
        return use is not None and use.node is node

    def __iter__(self) -> Iterator["Use"]:
        return iter(list(self._uses.values()))

    def __len__(self) -> int:
        return len(self._uses)

    def __bool__(self) -> bool:
        return bool(self._uses)

    def __getitem__(self, i: int) -> "Use":
        if i == 0 and self._uses:
            return next(iter(self._uses.values()))
        return list(self._uses.values())[i]

    def __repr__(self) -> str:
        return f"UseList({list(self._uses.values())!r})"


class Value:
    """One SSA value: a graph input, a constant, or a node's output."""

    __slots__ = ("name", "type", "producer", "output_index", "uses", "const", "graph", "meta", "__weakref__")

    def __init__(self, name: str, type: Type | None = None, *, const: Tensor | None = None) -> None:
        self.name = name
        self.type = type
        self.producer: Node | None = None
        self.output_index = 0
        self.uses = UseList()
        self.const = const
        self.graph: Graph | None = None
        self.meta: dict[str, Any] = {}

    # Identity comparison and hashing (the default) is what we want: two values
    # with the same name in different graphs are different values.

    @property
    def is_constant(self) -> bool:
        return self.const is not None

    @property
    def is_graph_input(self) -> bool:
        return self.producer is None and self.const is None

    @property
    def tensor_type(self) -> TensorType | None:
        return self.type if isinstance(self.type, TensorType) else None

    @property
    def dtype(self) -> DType | None:
        t = self.tensor_type
        return t.dtype if t is not None else None

    @property
    def shape(self) -> tuple | None:
        t = self.tensor_type
        return t.shape if t is not None else None

    def numpy(self) -> np.ndarray:
        """The constant's data; raises ``ValueError`` for a non-constant."""
        if self.const is None:
            raise ValueError(f"value %{self.name} is not a constant")
        return self.const.numpy()

    def users(self) -> list["Node"]:
        """Distinct consumer nodes, in use order."""
        seen: dict[int, Node] = {}
        for use in self.uses:
            seen.setdefault(id(use.node), use.node)
        return list(seen.values())

    def replace_all_uses_with(self, new: "Value") -> None:
        """Makes every user of this value (and the graph outputs) read ``new``.

        When this value is a graph output and ``new`` is an ordinary node
        output, the two swap names, so the model keeps its interface names.
        """
        if new is self:
            return
        if not self.can_replace_all_uses_with(new):
            raise ValueError(
                f"replacing graph output %{self.name} by %{new.name} would lose the output's name"
            )
        for use in list(self.uses):
            use.node.set_input(use.index, new)
        graph = self.graph
        if graph is None:
            return
        root_outputs = graph.outputs
        if any(o is self for o in root_outputs):
            if not (new.is_graph_input or any(o is new for o in root_outputs)):
                old_name = self.name
                graph.rename_value(self, graph.fresh_name(old_name + "_replaced"), claimed=True)
                graph.rename_value(new, old_name, claimed=True)
            for i, out in enumerate(root_outputs):
                if out is self:
                    root_outputs[i] = new

    def can_replace_all_uses_with(self, new: "Value") -> bool:
        """Whether :meth:`replace_all_uses_with` keeps the graph's interface intact.

        A graph output can be replaced only by a value of the same graph that
        can take over its name: not a graph input (whose name is interface
        too), not a value that already is an output.
        """
        graph = self.graph
        if graph is None or not any(o is self for o in graph.outputs):
            return True
        if new is self:
            return True
        return new.graph is graph and not new.is_graph_input and not any(o is new for o in graph.outputs)

    def __repr__(self) -> str:
        return f"%{self.name}"


# --------------------------------------------------------------------------- nodes


class Node:
    """One operation ``domain.op`` at an opset ``version`` with ordered inputs and outputs."""

    __slots__ = (
        "domain",
        "op",
        "version",
        "_inputs",
        "outputs",
        "attrs",
        "name",
        "loc",
        "meta",
        "graph",
        "_prev",
        "_next",
        "__weakref__",
    )

    def __init__(
        self,
        op: str,
        inputs: Sequence[Value | None] = (),
        outputs: Sequence[Value] = (),
        attrs: dict[str, Attr] | None = None,
        *,
        domain: str = "",
        version: int | None = None,
        name: str = "",
        loc: Location = UNKNOWN_LOCATION,
    ) -> None:
        self.domain = canonical_domain(domain)
        self.op = op
        self.version = version
        self._inputs: list[Value | None] = []
        self.outputs: list[Value] = []
        self.attrs: dict[str, Attr] = dict(attrs or {})
        self.name = name
        self.loc = loc
        self.meta: dict[str, Any] = {}
        self.graph: Graph | None = None
        self._prev: Node | None = None
        self._next: Node | None = None
        for value in inputs:
            self._append_input(value)
        for i, out in enumerate(outputs):
            if out.producer is not None:
                raise ValueError(f"value %{out.name} already has a producer")
            out.producer = self
            out.output_index = i
            self.outputs.append(out)

    # ---- identity

    @property
    def op_id(self) -> str:
        """``onnx.Conv``, ``kiln.ConvAct``, ``com.microsoft.FusedConv``."""
        return f"{domain_text(self.domain)}.{self.op}"

    def is_op(self, op: str, domain: str = "") -> bool:
        return self.op == op and self.domain == canonical_domain(domain)

    # ---- inputs

    @property
    def inputs(self) -> tuple[Value | None, ...]:
        """The inputs (``None`` where an optional input is omitted); read-only."""
        return tuple(self._inputs)

    def input(self, index: int) -> Value | None:
        """Input ``index``, or ``None`` when it is absent or omitted."""
        return self._inputs[index] if index < len(self._inputs) else None

    def _append_input(self, value: Value | None) -> None:
        index = len(self._inputs)
        self._inputs.append(value)
        if value is not None:
            value.uses.append(Use(self, index))

    def set_input(self, index: int, value: Value | None) -> None:
        """Replaces input ``index``, keeping both values' use-lists right."""
        old = self._inputs[index]
        if old is value:
            return
        if old is not None:
            _remove_use(old, self, index)
        self._inputs[index] = value
        if value is not None:
            value.uses.append(Use(self, index))

    def set_inputs(self, values: Sequence[Value | None]) -> None:
        """Replaces the whole input list."""
        self._drop_input_uses()
        self._inputs = []
        for value in values:
            self._append_input(value)

    def _drop_input_uses(self) -> None:
        for index, value in enumerate(self._inputs):
            if value is not None:
                _remove_use(value, self, index)

    # ---- attributes

    def attr(self, name: str, default: Any = None) -> Any:
        """An attribute's plain value (see :meth:`Attr.plain`) or ``default``."""
        a = self.attrs.get(name)
        return default if a is None else a.plain()

    def set_attr(self, name: str, value: Any) -> None:
        self.attrs[name] = Attr.infer(value)

    def subgraphs(self) -> list["Graph"]:
        """Graphs held by GRAPH/GRAPHS attributes (If branches, Loop and Scan bodies)."""
        found: list[Graph] = []
        for a in self.attrs.values():
            if a.kind == AttrKind.GRAPH:
                found.append(a.value)
            elif a.kind == AttrKind.GRAPHS:
                found.extend(a.value)
        return found

    # ---- order

    @property
    def next(self) -> "Node | None":
        n = self._next
        return None if n is None or n._is_sentinel() else n

    @property
    def prev(self) -> "Node | None":
        n = self._prev
        return None if n is None or n._is_sentinel() else n

    def _is_sentinel(self) -> bool:
        return self.graph is not None and self is self.graph._head

    def __repr__(self) -> str:
        outs = ", ".join(f"%{o.name}" for o in self.outputs)
        ins = ", ".join("_" if v is None else f"%{v.name}" for v in self._inputs)
        return f"<{outs} = {self.op_id}({ins})>"


def _drop_nested_uses(node: Node) -> None:
    """Drops the uses that nodes inside ``node``'s subgraphs hold on any value.

    A removed If/Loop/Scan must not leave its body's reads of outer values in
    those values' use-lists.
    """
    for sub in node.subgraphs():
        for inner in sub.walk():
            inner._drop_input_uses()
            inner._inputs = []


def _remove_use(value: Value, node: Node, index: int) -> None:
    if not value.uses.discard(node, index):
        raise AssertionError(f"use-list of %{value.name} lacks {node!r} input {index}")


# --------------------------------------------------------------------------- graphs


class NameAuthority:
    """Hands out unique names: ``base``, then ``base_1``, ``base_2`` ...

    Graphs use one to keep value names unique across a graph and all its
    subgraphs (ONNX requires it); the ONNX importer and exporter use their own
    for the names they make up.
    """

    __slots__ = ("taken", "_counters")

    def __init__(self, taken: Iterable[str] = ()) -> None:
        self.taken: set[str] = set(taken)
        self._counters: dict[str, itertools.count] = {}

    def claim(self, name: str) -> None:
        self.taken.add(name)

    def release(self, name: str) -> None:
        self.taken.discard(name)

    def fresh(self, base: str) -> str:
        base = base or "v"
        if base not in self.taken:
            self.taken.add(base)
            return base
        counter = self._counters.setdefault(base, itertools.count(1))
        while True:
            candidate = f"{base}_{next(counter)}"
            if candidate not in self.taken:
                self.taken.add(candidate)
                return candidate


@dataclass
class ModelInfo:
    """Model-level facts the exporter writes back (root graphs only)."""

    ir_version: int = 8
    producer_name: str = ""
    producer_version: str = ""
    model_version: int = 0
    doc_string: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    source_path: str | None = None
    functions: list[Any] = field(default_factory=list)
    """``onnx.FunctionProto`` of functions kept as calls (those not inlined)."""


class Graph:
    """An ordered list of nodes with inputs, outputs and constants.

    A root graph carries ``opsets`` (domain -> version) and ``model`` info; a
    subgraph (If branch, Loop/Scan body) has ``parent`` set to the node that
    owns it and shares the root's opsets and name authority.
    """

    def __init__(self, name: str = "main", *, parent: "Node | None" = None, names: NameAuthority | None = None):
        self.name = name
        self.parent = parent
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.constants: dict[str, Value] = {}
        self.opsets: dict[str, int] = {}
        self.model = ModelInfo()
        self.doc_string = ""
        self.meta: dict[str, Any] = {}
        self._names = names if names is not None else NameAuthority()
        self._head = Node("<sentinel>")
        self._head.graph = self
        self._head._prev = self._head
        self._head._next = self._head
        self._len = 0
        self._insert_before: Node | None = None  # None: append at the end

    # ---- names

    def fresh_name(self, base: str) -> str:
        """A value name not used anywhere in this graph or its relatives."""
        return self._names.fresh(base)

    def rename_value(self, value: Value, name: str, *, claimed: bool = False) -> None:
        """Renames ``value``; ``claimed`` means ``name`` came from :meth:`fresh_name`."""
        if name == value.name:
            return
        if not claimed and name in self._names.taken:
            raise ValueError(f"value name {name!r} is already taken")
        if value.const is not None and value.graph is self:
            del self.constants[value.name]
            self.constants[name] = value
        if value.name != name:
            self._names.release(value.name)
        self._names.claim(name)
        value.name = name

    def _claim(self, value: Value) -> None:
        if value.name in self._names.taken:
            value.name = self._names.fresh(value.name)
        else:
            self._names.claim(value.name)
        value.graph = self

    def new_subgraph(self, name: str, parent: Node | None = None) -> "Graph":
        """An empty graph nested in this one, sharing names and opsets."""
        sub = Graph(name, parent=parent, names=self._names)
        sub.opsets = self.opsets
        return sub

    @property
    def root(self) -> "Graph":
        g = self
        while g.parent is not None and g.parent.graph is not None:
            g = g.parent.graph
        return g

    # ---- inputs, outputs, constants

    def add_input(self, name: str, type: Type | None) -> Value:
        value = Value(name, type)
        self._claim(value)
        self.inputs.append(value)
        return value

    def add_constant(self, name: str, data: "Tensor | np.ndarray | Any", type: Type | None = None) -> Value:
        """A new constant value (name made unique) holding ``data``."""
        tensor = data if isinstance(data, Tensor) else Tensor.from_numpy(np.asarray(data))
        if type is None:
            type = TensorType(tensor.dtype, tensor.shape)
        value = Value(name, type, const=tensor)
        self._claim(value)
        self.constants[value.name] = value
        return value

    def remove_constant(self, value: Value) -> None:
        if value.uses:
            raise ValueError(f"constant %{value.name} still has {len(value.uses)} uses")
        if any(o is value for o in self.outputs):
            raise ValueError(f"constant %{value.name} is a graph output")
        del self.constants[value.name]
        self._names.release(value.name)
        value.graph = None

    def is_output(self, value: Value) -> bool:
        return any(o is value for o in self.outputs)

    # ---- nodes: iteration

    def __iter__(self) -> Iterator[Node]:
        """Nodes in order; safe while the loop body inserts or removes nodes.

        A node removed before the loop reaches it is skipped; nodes inserted
        after the current one are visited.
        """
        head = self._head
        node = head._next
        while node is not None and node is not head:
            nxt = node._next
            if node.graph is self:
                yield node
            # A removed node keeps its _next, so iteration continues from there.
            node = nxt
            while node is not None and node is not head and node.graph is not self:
                node = node._next

    @property
    def nodes(self) -> Iterator[Node]:
        return iter(self)

    def __len__(self) -> int:
        return self._len

    def reversed(self) -> Iterator[Node]:
        head = self._head
        node = head._prev
        while node is not None and node is not head:
            prv = node._prev
            if node.graph is self:
                yield node
            node = prv
            while node is not None and node is not head and node.graph is not self:
                node = node._prev

    def walk(self) -> Iterator[Node]:
        """Every node of this graph and, depth-first, of its subgraphs (no recursion)."""
        stack: list[Iterator[Node]] = [iter(self)]
        while stack:
            try:
                node = next(stack[-1])
            except StopIteration:
                stack.pop()
                continue
            yield node
            subs = node.subgraphs()
            for sub in reversed(subs):
                stack.append(iter(sub))

    def all_graphs(self) -> Iterator["Graph"]:
        """This graph and every nested subgraph."""
        yield self
        for node in self.walk():
            yield from node.subgraphs()

    # ---- nodes: insertion

    @contextlib.contextmanager
    def inserting_before(self, node: Node | None) -> Iterator[None]:
        """New nodes go before ``node`` (``None``: at the end) inside the block."""
        saved = self._insert_before
        self._insert_before = node
        try:
            yield
        finally:
            self._insert_before = saved

    @contextlib.contextmanager
    def inserting_after(self, node: Node) -> Iterator[None]:
        nxt = node._next
        with self.inserting_before(None if nxt is self._head else nxt):
            yield

    def _link_before(self, node: Node, anchor: Node) -> None:
        prev = anchor._prev
        assert prev is not None
        node._prev = prev
        node._next = anchor
        prev._next = node
        anchor._prev = node

    def insert_node(self, node: Node, before: Node | None = None) -> Node:
        """Links an unattached node into this graph before ``before`` (or the insertion point)."""
        if node.graph is not None:
            raise ValueError(f"{node!r} already belongs to a graph")
        anchor = before if before is not None else (self._insert_before or self._head)
        if anchor is not self._head and anchor.graph is not self:
            raise ValueError("insertion anchor is not in this graph")
        node.graph = self
        self._link_before(node, anchor)
        self._len += 1
        for out in node.outputs:
            self._claim(out)
        for sub in node.subgraphs():
            sub.parent = node
        return node

    def create_node(
        self,
        op: str,
        inputs: Sequence[Value | None] = (),
        attrs: dict[str, Any] | None = None,
        *,
        domain: str = "",
        version: int | None = None,
        num_outputs: int = 1,
        output_names: Sequence[str] | None = None,
        output_types: Sequence[Type | None] | None = None,
        name: str = "",
        loc: Location = UNKNOWN_LOCATION,
        before: Node | None = None,
    ) -> Node:
        """Creates a node with fresh outputs and inserts it (at the insertion point).

        ``attrs`` takes plain Python values or :class:`Attr`; ``version`` defaults
        to the graph's opset for ``domain``.
        """
        domain = canonical_domain(domain)
        if output_names is not None:
            num_outputs = len(output_names)
        names = list(output_names) if output_names is not None else [f"{(name or op).lower()}_out"] * num_outputs
        types = list(output_types) if output_types is not None else [None] * num_outputs
        outputs = [Value(n, t) for n, t in zip(names, types)]
        if version is None:
            version = self.opsets.get(domain)
        node = Node(
            op,
            inputs,
            outputs,
            {k: Attr.infer(v) for k, v in (attrs or {}).items()},
            domain=domain,
            version=version,
            name=name,
            loc=loc,
        )
        return self.insert_node(node, before)

    def adopt_node(self, node: Node, before: Node) -> None:
        """Moves ``node`` from a graph nested in this one to just before ``before``.

        Names stay as they are (relatives share one name authority); used to
        inline an If branch or a Loop body that runs once.
        """
        source = node.graph
        if source is None or source._names is not self._names:
            raise ValueError(f"{node!r} does not belong to a graph related to this one")
        source._unlink(node)
        node.graph = self
        self._link_before(node, before)
        self._len += 1
        for out in node.outputs:
            out.graph = self

    def move_before(self, node: Node, anchor: Node) -> None:
        """Moves ``node`` (already in this graph) to just before ``anchor``."""
        self._unlink(node)
        node.graph = self
        self._link_before(node, anchor)
        self._len += 1

    def _unlink(self, node: Node) -> None:
        prev, nxt = node._prev, node._next
        assert prev is not None and nxt is not None
        prev._next = nxt
        nxt._prev = prev
        # Keep node._next so an iterator standing on this node can go on.
        node.graph = None
        self._len -= 1

    def remove_node(self, node: Node, *, force: bool = False) -> None:
        """Removes ``node``; its outputs must be unused unless ``force``.

        The node's input uses are dropped, so producers upstream may become
        dead in turn (dead-code elimination relies on that).
        """
        if node.graph is not self:
            raise ValueError(f"{node!r} is not in this graph")
        if not force:
            for out in node.outputs:
                if out.uses:
                    raise ValueError(f"cannot remove {node!r}: %{out.name} still has {len(out.uses)} uses")
                if self.is_output(out):
                    raise ValueError(f"cannot remove {node!r}: %{out.name} is a graph output")
        node._drop_input_uses()
        node._inputs = []
        _drop_nested_uses(node)
        self._unlink(node)
        for out in node.outputs:
            self._names.release(out.name)
            out.graph = None

    def replace_node(self, old: Node, new_outputs: Sequence[Value]) -> None:
        """Redirects every use of ``old``'s outputs to ``new_outputs`` and removes ``old``."""
        if len(new_outputs) != len(old.outputs):
            raise ValueError(f"{old!r} has {len(old.outputs)} outputs, {len(new_outputs)} replacements given")
        for out, new in zip(old.outputs, new_outputs):
            out.replace_all_uses_with(new)
        self.remove_node(old)

    # ---- misc

    def value_by_name(self) -> dict[str, Value]:
        """Every value visible in this graph (inputs, constants, node outputs), by name."""
        table: dict[str, Value] = {v.name: v for v in self.inputs}
        table.update(self.constants)
        for node in self:
            for out in node.outputs:
                table[out.name] = out
        return table

    def position(self) -> dict[Node, int]:
        """Node -> index in the current order (recomputed on each call)."""
        return {node: i for i, node in enumerate(self)}

    def __repr__(self) -> str:
        return f"<Graph {self.name}: {len(self)} nodes, {len(self.inputs)} inputs, {len(self.outputs)} outputs>"
