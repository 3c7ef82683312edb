"""``verify(graph)``: the IR's invariants, checked after every pass by default.

Checked: one producer per value (SSA), every input defined before its use in
this graph or an enclosing one, use-lists that match the inputs exactly,
graph outputs that exist, known ops with legal arity and attribute kinds.
Runs in time linear in the graph's size, without recursion.
"""

from __future__ import annotations

from kiln.errors import VerificationError
from kiln.ir.core import AttrKind, Graph, Node, Value
from kiln.ops.registry import lookup


def verify(graph: Graph, *, check_schemas: bool = True) -> None:
    """Raises :class:`VerificationError` naming the first broken invariant."""
    _verify_graph(graph, outer_defined=set(), check_schemas=check_schemas)


def _fail(node: Node | None, message: str) -> VerificationError:
    return VerificationError(message, node=node)


def _verify_graph(graph: Graph, outer_defined: set[int], check_schemas: bool) -> None:
    # Iterative over nested graphs: a stack of (graph, defined-set) pairs.
    stack: list[tuple[Graph, set[int]]] = [(graph, outer_defined)]
    while stack:
        g, outer = stack.pop()
        defined = set(outer)
        for v in g.inputs:
            _check_owner(g, v, None)
            _check_uses(None, v)
            defined.add(id(v))
        for name, v in g.constants.items():
            if v.name != name:
                raise _fail(None, f"constant table key {name!r} does not match value name {v.name!r}")
            if v.const is None:
                raise _fail(None, f"constant %{v.name} has no data")
            _check_uses(None, v)
            defined.add(id(v))
        count = 0
        for node in g:
            count += 1
            if node.graph is not g:
                raise _fail(node, "node's graph pointer does not match the graph that lists it")
            for index, value in enumerate(node.inputs):
                if value is None:
                    continue
                if id(value) not in defined:
                    where = "is produced later" if value.producer is not None and value.producer.graph is g else "is not defined"
                    raise _fail(node, f"input {index} %{value.name} {where}")
                if not value.uses.has(node, index):
                    raise _fail(node, f"input {index} %{value.name} is missing from its use-list")
            for i, out in enumerate(node.outputs):
                if out.producer is not node or out.output_index != i:
                    raise _fail(node, f"output {i} %{out.name} does not point back at its producer")
                if id(out) in defined:
                    raise _fail(node, f"output %{out.name} is defined twice")
                _check_uses(node, out)
            if check_schemas:
                _check_schema(node)
            for sub in node.subgraphs():
                if sub.parent is not node:
                    raise _fail(node, f"subgraph {sub.name!r} does not point back at its node")
                stack.append((sub, set(defined)))
            for out in node.outputs:
                defined.add(id(out))
        if count != len(g):
            raise _fail(None, f"graph {g.name!r} counts {len(g)} nodes but lists {count}")
        for out in g.outputs:
            if id(out) not in defined:
                raise _fail(None, f"graph output %{out.name} is not produced")


def _check_owner(graph: Graph, value: Value, node: Node | None) -> None:
    if value.graph is not graph:
        raise _fail(node, f"value %{value.name} does not belong to graph {graph.name!r}")


def _check_uses(node: Node | None, value: Value) -> None:
    for use in value.uses:
        user = use.node
        if use.index >= len(user.inputs) or user.inputs[use.index] is not value:
            raise _fail(node, f"use-list of %{value.name} names {user!r} input {use.index}, which reads something else")
        if user.graph is None:
            raise _fail(node, f"use-list of %{value.name} names removed node {user!r}")


def _check_schema(node: Node) -> None:
    schema = lookup(node.domain, node.op, node.version)
    if schema is None:
        if node.domain in ("", "kiln"):
            raise _fail(node, f"unknown op {node.op_id} at opset {node.version}")
        return  # custom domains are allowed through; targets decide what they accept
    n_in = len(node.inputs)
    while n_in and node.inputs[n_in - 1] is None:
        n_in -= 1
    if n_in < schema.min_inputs or n_in > schema.max_inputs:
        raise _fail(node, f"{node.op_id} takes {schema.min_inputs}..{schema.max_inputs} inputs, has {n_in}")
    n_out = len(node.outputs)
    if n_out < schema.min_outputs or n_out > schema.max_outputs:
        raise _fail(node, f"{node.op_id} gives {schema.min_outputs}..{schema.max_outputs} outputs, has {n_out}")
    for name, attr in node.attrs.items():
        spec = schema.attrs.get(name)
        if spec is None:
            raise _fail(node, f"{node.op_id} has no attribute {name!r}")
        if spec.kind != attr.kind and not (spec.kind == AttrKind.FLOATS and attr.kind == AttrKind.INTS):
            raise _fail(node, f"attribute {name!r} of {node.op_id} must be {spec.kind.name}, is {attr.kind.name}")
    for name, spec in schema.attrs.items():
        if spec.required and name not in node.attrs:
            raise _fail(node, f"{node.op_id} lacks required attribute {name!r}")
