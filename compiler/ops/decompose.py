"""Decomposing the kiln ops a target has no lowering for.

Every kiln op carries its decomposition into standard ops (``kiln.ops.kiln_dialect``), so a target
lowers the kiln ops it has a layer for and hands the others back as what they were made of: a graph
optimized with a pass that this target's pipeline does not run (``fuse-add-act`` before NCNN, say)
still compiles, to the same layers the pass's absence would have given.
"""

from __future__ import annotations

from collections.abc import Callable

from kiln.ir.core import KILN_DOMAIN, Graph, Node

MAX_ROUNDS = 8
"""A decomposition may make kiln ops of its own (an activation's kiln.Gelu): rounds to a fixed point."""


def decompose_unhandled(graph: Graph, handles: Callable[[Node], bool]) -> int:
    """Replaces every kiln op of ``graph`` for which ``handles(node)`` is false by its decomposition.

    Returns:
        how many nodes were decomposed.
    """
    from kiln.ops.builder import OpBuilder
    from kiln.ops.registry import lookup

    done = 0
    for _ in range(MAX_ROUNDS):
        todo = [(n, lookup(n.domain, n.op, n.version)) for n in graph if n.domain == KILN_DOMAIN and not handles(n)]
        todo = [(n, schema) for n, schema in todo if schema is not None and schema.decompose is not None]
        if not todo:
            break
        for node, schema in todo:
            b = OpBuilder(graph, before=node, loc=node.loc)
            outs = schema.decompose(b, node)
            for old, new in zip(node.outputs, outs):
                old.replace_all_uses_with(new)
            graph.remove_node(node)
            done += 1
    return done
