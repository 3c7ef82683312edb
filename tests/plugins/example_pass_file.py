"""A pass defined in a plain file, for ``kiln compile --load-pass example_pass_file.py``.

No packaging needed: ``load_pass_file`` runs this file as a module and
registers every Pass subclass it defines (``@register_pass`` is optional).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from kiln.ir import Graph
from kiln.passmanager import Pass, PassContext


@dataclass(frozen=True)
class RenameNodes(Pass):
    """Gives every unnamed node a name <prefix><index> (handy before printing or exporting)."""

    name: ClassVar[str] = "name-nodes"
    prefix: str = field(default="n", metadata={"doc": "the name prefix"})

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        changed = False
        for index, node in enumerate(graph):
            if not node.name:
                node.name = f"{self.prefix}{index}"
                changed = True
        return changed
