"""Inlining of model-local functions (``ModelProto.functions``) on import.

kiln has no call op: every call of a model-local function is replaced by a
copy of the function's body, on ``NodeProto`` level, before the nodes are
converted.  The expansion is iterative (an explicit stack), so a function that
calls another function that calls a third costs no Python recursion; a
function that calls itself, directly or through other functions or through a
subgraph of its body, is refused, and so is an expansion that would grow past
``max_nodes`` (2^k-fold nesting in a hostile file).

Per call:
  * formal inputs and outputs are renamed to the call's actual names (a
    missing optional actual input becomes ``""``);
  * every other name the body defines gets a fresh name, unique in the whole
    model, built from the call's name (``call/name``);
  * attributes that refer to the function's attributes (``ref_attr_name``)
    are replaced by the call's attribute, else the function's default, else
    dropped, in the body and in subgraphs nested in the body.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

import onnx
from kiln.ir.core import NameAuthority, canonical_domain

FunctionKey = tuple[str, str, str]


class InlineError(ValueError):
    """A function call cannot be inlined (recursion, missing names, blow-up)."""


class Item(NamedTuple):
    """One node after expansion.

    ``call`` is the outermost call node the node was inlined from (``None``
    for a node of the graph itself), ``pos`` the position of that node (or
    of the call) in the graph, ``chain`` the functions being expanded.
    """

    proto: onnx.NodeProto
    call: onnx.NodeProto | None
    pos: int
    chain: tuple[FunctionKey, ...]


def function_key(domain: str, name: str, overload: str = "") -> FunctionKey:
    return (canonical_domain(domain), name, overload)


def iter_graph_names(graph: onnx.GraphProto) -> Iterator[str]:
    """Every value name a graph and its nested subgraphs define or use (iterative)."""
    stack = [graph]
    while stack:
        g = stack.pop()
        for v in g.input:
            yield v.name
        for v in g.output:
            yield v.name
        for t in g.initializer:
            yield t.name
        for s in g.sparse_initializer:
            yield s.values.name
        for n in g.node:
            yield from n.input
            yield from n.output
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    stack.append(a.g)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    stack.extend(a.graphs)


def _nested_graphs(nodes: Iterable[onnx.NodeProto]) -> Iterator[onnx.GraphProto]:
    """Every graph nested (at any depth) in ``nodes``' attributes."""
    stack: list[onnx.GraphProto] = []
    for n in nodes:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                stack.append(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                stack.extend(a.graphs)
    while stack:
        g = stack.pop()
        yield g
        for n in g.node:
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    stack.append(a.g)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    stack.extend(a.graphs)


class FunctionInliner:
    """Expands calls of model-local functions in node lists."""

    def __init__(
        self,
        functions: Sequence[onnx.FunctionProto],
        taken: Iterable[str] = (),
        *,
        max_nodes: int = 5_000_000,
    ) -> None:
        self.functions: dict[FunctionKey, onnx.FunctionProto] = {}
        for f in functions:
            key = function_key(f.domain, f.name, f.overload)
            if key in self.functions:
                raise InlineError(f"model-local function {_key_text(key)} is defined twice")
            self.functions[key] = f
        self._names: NameAuthority | None = None
        self._initial_taken = taken
        self.max_nodes = max_nodes
        self.expanded = 0
        self.extra_domains: dict[str, int] = {}

    def __bool__(self) -> bool:
        return bool(self.functions)

    def lookup(self, node: onnx.NodeProto) -> onnx.FunctionProto | None:
        if not self.functions:
            return None
        return self.functions.get(function_key(node.domain, node.op_type, node.overload))

    # ---- size

    def _count(self, nodes: Iterable[onnx.NodeProto]) -> tuple[int, list[FunctionKey]]:
        """Plain nodes (nested graphs included) and the calls among ``nodes``."""
        plain = 0
        calls: list[FunctionKey] = []
        stack: list[Iterable[onnx.NodeProto]] = [nodes]
        while stack:
            for n in stack.pop():
                f = self.lookup(n)
                if f is not None:
                    calls.append(function_key(f.domain, f.name, f.overload))
                else:
                    plain += 1
                for a in n.attribute:
                    if a.type == onnx.AttributeProto.GRAPH:
                        stack.append(a.g.node)
                    elif a.type == onnx.AttributeProto.GRAPHS:
                        stack.extend(g.node for g in a.graphs)
        return plain, calls

    def expanded_size(self, graph: onnx.GraphProto) -> int:
        """How many nodes ``graph`` has once every call is inlined (computed, not expanded).

        Raises:
            InlineError: a function calls itself, directly or not.
        """
        direct = {key: self._count(f.node) for key, f in self.functions.items()}
        size: dict[FunctionKey, int] = {}
        for start in self.functions:
            if start in size:
                continue
            path: list[FunctionKey] = [start]
            on_path = {start}
            while path:
                key = path[-1]
                pending = next((c for c in direct[key][1] if c not in size), None)
                if pending is None:
                    plain, calls = direct[key]
                    size[key] = plain + sum(size[c] for c in calls)
                    path.pop()
                    on_path.discard(key)
                elif pending in on_path:
                    raise InlineError(f"model-local function {_key_text(pending)} calls itself")
                else:
                    path.append(pending)
                    on_path.add(pending)
        plain, calls = self._count(graph.node)
        return plain + sum(size[c] for c in calls)

    def check_size(self, graph: onnx.GraphProto) -> None:
        """Refuses a model whose inlined form would exceed ``max_nodes`` nodes."""
        if self.functions and self.expanded_size(graph) > self.max_nodes:
            raise InlineError(f"inlining model-local functions would create more than {self.max_nodes} nodes")

    # ---- names

    def _fresh(self, base: str) -> str:
        if self._names is None:  # built on first use: most models have no functions to inline
            self._names = NameAuthority(self._initial_taken)
        return self._names.fresh(base)

    # ---- expansion

    def expand(self, nodes: Sequence[onnx.NodeProto], chain: tuple[FunctionKey, ...] = ()) -> list[Item]:
        """The node list with every call replaced by the function's body, in order."""
        if not self.functions:
            return [Item(n, None, i, chain) for i, n in enumerate(nodes)]
        out: list[Item] = []
        stack: list[Item] = [Item(n, None, i, chain) for i, n in enumerate(nodes)]
        stack.reverse()
        while stack:
            item = stack.pop()
            f = self.lookup(item.proto)
            if f is None:
                out.append(item)
                continue
            key = function_key(f.domain, f.name, f.overload)
            if key in item.chain:
                raise InlineError(f"model-local function {_key_text(key)} calls itself")
            body = self._instantiate(f, item.proto)
            self.expanded += len(body)
            if self.expanded > self.max_nodes:
                raise InlineError(
                    f"inlining model-local functions would create more than {self.max_nodes} nodes"
                )
            call = item.call if item.call is not None else item.proto
            new_chain = item.chain + (key,)
            for b in reversed(body):
                stack.append(Item(b, call, item.pos, new_chain))
        return out

    def _instantiate(self, f: onnx.FunctionProto, call: onnx.NodeProto) -> list[onnx.NodeProto]:
        for imp in f.opset_import:
            domain = canonical_domain(imp.domain)
            self.extra_domains.setdefault(domain, imp.version)
        rename: dict[str, str] = {}
        for k, formal in enumerate(f.input):
            rename[formal] = call.input[k] if k < len(call.input) else ""
        for k, formal in enumerate(f.output):
            if k < len(call.output) and call.output[k]:
                rename[formal] = call.output[k]
        prefix = call.name or (call.output[0] if len(call.output) and call.output[0] else f.name)
        for n in f.node:
            for name in n.output:
                if name and name not in rename:
                    rename[name] = self._fresh(f"{prefix}/{name}")
        call_attrs = {a.name: a for a in call.attribute}
        defaults = {a.name: a for a in f.attribute_proto}
        body: list[onnx.NodeProto] = []
        for n in f.node:
            copy = onnx.NodeProto()
            copy.CopyFrom(n)
            for i, name in enumerate(copy.input):
                if name:
                    if name not in rename:
                        raise InlineError(
                            f"node {n.name!r} ({n.op_type}) in function {f.name!r} reads {name!r}, "
                            "which the function does not define"
                        )
                    copy.input[i] = rename[name]
            for i, name in enumerate(copy.output):
                if name:
                    copy.output[i] = rename[name]
            if n.name:
                copy.name = f"{prefix}/{n.name}"
            _substitute_attrs(copy, call_attrs, defaults)
            for g in _nested_graphs([copy]):
                _rename_graph(g, rename)
                for inner in g.node:
                    _substitute_attrs(inner, call_attrs, defaults)
            body.append(copy)
        return body


def _substitute_attrs(
    node: onnx.NodeProto,
    call_attrs: dict[str, onnx.AttributeProto],
    defaults: dict[str, onnx.AttributeProto],
) -> None:
    if not any(a.ref_attr_name for a in node.attribute):
        return
    kept: list[onnx.AttributeProto] = []
    for a in node.attribute:
        if not a.ref_attr_name:
            kept.append(a)
            continue
        source = call_attrs.get(a.ref_attr_name) or defaults.get(a.ref_attr_name)
        if source is None:
            continue
        new = onnx.AttributeProto()
        new.CopyFrom(source)
        new.name = a.name
        new.ref_attr_name = ""
        kept.append(new)
    copies = []
    for a in kept:
        c = onnx.AttributeProto()
        c.CopyFrom(a)
        copies.append(c)
    del node.attribute[:]
    node.attribute.extend(copies)


def _rename_graph(g: onnx.GraphProto, rename: dict[str, str]) -> None:
    """Renames the names of one nested graph (not its own nested graphs) through ``rename``."""
    for v in list(g.input) + list(g.output) + list(g.value_info):
        if v.name in rename:
            v.name = rename[v.name]
    for t in g.initializer:
        if t.name in rename:
            t.name = rename[t.name]
    for n in g.node:
        for i, name in enumerate(n.input):
            if name in rename:
                n.input[i] = rename[name]
        for i, name in enumerate(n.output):
            if name in rename:
                n.output[i] = rename[name]


def _key_text(key: FunctionKey) -> str:
    domain, name, overload = key
    text = f"{domain or 'onnx'}.{name}"
    return f"{text}:{overload}" if overload else text
