"""``count-ops``: records the graph's op histogram in ``ctx.stats``.

For every op the graph uses (If/Loop/Scan bodies included unless
``subgraphs=false``) it sets ``ctx.stats["<prefix>.<domain>.<op>"]`` to the
number of nodes, after dropping the counters an earlier run with the same
prefix left.  It never changes the graph, so it can sit anywhere in a
pipeline to show what the passes before it did::

    count-ops{prefix=before},O2,count-ops{prefix=after}
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import ClassVar

from kiln.ir import Graph
from kiln.passmanager import Pass, PassContext, register_pass


@register_pass
@dataclass(frozen=True)
class CountOps(Pass):
    """Records how many nodes of each op the graph has in ctx.stats (changes nothing)."""

    name: ClassVar[str] = "count-ops"
    prefix: str = field(default="ops", metadata={"doc": "counter names are <prefix>.<domain>.<op>"})
    subgraphs: bool = field(default=True, metadata={"doc": "count the nodes of If/Loop/Scan bodies too"})

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        nodes = graph.walk() if self.subgraphs else iter(graph)
        counts = Counter(node.op_id for node in nodes)
        stale = [key for key in ctx.stats if key.startswith(self.prefix + ".")]
        for key in stale:
            del ctx.stats[key]
        for op_id, count in sorted(counts.items()):
            ctx.stats[f"{self.prefix}.{op_id}"] = count
        return False
