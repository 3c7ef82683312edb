"""``dce``: dead-code elimination.

A node is dead when none of its outputs is used or is a graph output.  Going
through the graph backwards, removing a dead node drops its uses of its
inputs, so a whole dead chain goes in one sweep.  Every op kiln knows is free
of side effects.  Unused constants are dropped too; graph inputs stay, they
are the model's interface.  Subgraph bodies are cleaned as well.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from kiln.ir.core import Graph, Node
from kiln.passmanager.base import Pass, PassContext
from kiln.passmanager.registry import register_pass


def is_dead(node: Node, graph: Graph) -> bool:
    for out in node.outputs:
        if out.uses or graph.is_output(out):
            return False
    return True


def eliminate_dead_code(graph: Graph) -> int:
    """Removes dead nodes and unused constants from ``graph`` and its subgraphs; returns the count."""
    removed = 0
    for g in list(graph.all_graphs()):
        for node in list(g.reversed()):
            if node.graph is g and is_dead(node, g):
                g.remove_node(node)
                removed += 1
        for value in list(g.constants.values()):
            if not value.uses and not g.is_output(value):
                g.remove_constant(value)
                removed += 1
    return removed


@register_pass
@dataclass(frozen=True)
class DeadCodeElimination(Pass):
    """Removes nodes whose results nothing uses, and unused constants."""

    name: ClassVar[str] = "dce"

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        removed = eliminate_dead_code(graph)
        ctx.bump("dce.removed", removed)
        return removed > 0
