"""``fold-if``: an ``If`` whose condition is a constant becomes the branch it takes.

The chosen branch's nodes and constants move into the enclosing graph just
before the If (they already read outer values directly), its outputs replace
the If's outputs, and the If goes with the branch that can never run.
Exporters emit such Ifs for shape-dependent code (ONNX functions such as
AffineGrid branch on the input's rank), and once shapes fold the condition
is known.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from kiln.ir.core import Graph, Node
from kiln.passmanager.base import Pass, PassContext
from kiln.passmanager.registry import register_pass


def _taken_branch(node: Node) -> Graph | None:
    cond = node.input(0)
    if cond is None or cond.const is None:
        return None
    data = cond.const.numpy()
    if data.size != 1:
        return None
    return node.attr("then_branch") if bool(data.reshape(-1)[0]) else node.attr("else_branch")


def inline_branch(graph: Graph, node: Node, branch: Graph) -> bool:
    """Moves ``branch`` into ``graph`` in place of ``node``; ``False`` if the interface forbids it."""
    if len(branch.outputs) != len(node.outputs):
        return False
    for out, replacement in zip(node.outputs, branch.outputs):
        if graph.is_output(out) and (replacement.is_graph_input or replacement.graph is not branch):
            return False  # the If's output name is the model's interface; keep the If
    for value in list(branch.constants.values()):
        del branch.constants[value.name]
        graph.constants[value.name] = value
        value.graph = graph
    for inner in list(branch):
        graph.adopt_node(inner, before=node)
    for out, replacement in zip(node.outputs, branch.outputs):
        if replacement.type is None:
            replacement.type = out.type
        out.replace_all_uses_with(replacement)
    branch.outputs = []
    graph.remove_node(node)
    return True


def fold_ifs(graph: Graph) -> int:
    folded = 0
    for g in list(graph.all_graphs()):
        for node in g:
            if node.graph is g and node.is_op("If"):
                branch = _taken_branch(node)
                if branch is not None and inline_branch(g, node, branch):
                    folded += 1
    return folded


@register_pass
@dataclass(frozen=True)
class FoldIf(Pass):
    """Replaces an If with a constant condition by the branch it takes."""

    name: ClassVar[str] = "fold-if"

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        folded = fold_ifs(graph)
        ctx.bump("fold-if.nodes", folded)
        return folded > 0
