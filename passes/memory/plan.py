"""``plan-memory``: schedule the graph for a low peak and give every activation an arena offset.

What it does (the details live in :mod:`kiln.memory`):

1. liveness over the schedule: each activation (every node output that is not
   a graph output) is live from its producer's step to its last reader's,
   its size ``ceil(numel * bits / 8)`` rounded up to ``alignment``; outputs
   of elementwise ops and views may take over an input that dies at them
   (the exact rule: :mod:`kiln.memory.dataflow`);
2. with ``reorder``, the memory-aware scheduler reorders independent branches
   to lower the peak (the most bytes live at once): exactly by dynamic
   programming over ready sets where the fan-out is small, by a beam search
   beyond; the nodes are moved with ``Graph.move_before``, and the order is
   the one targets emit in;
3. the arena planner places every buffer (greedy by size and greedy by
   breadth, the better kept, then improved locally);
4. the multi-stream analysis finds the widest antichains and assigns a
   stream to every node (``streams - 1`` is TensorRT's aux-stream count).

The plan is stored in ``graph.meta["memory_plan"]`` (a
:class:`kiln.memory.MemoryPlan`) and each offset in
``value.meta["arena_offset"]``, which the text IR prints as ``offset=N``.
Run it last: a pass that changes the graph afterwards makes the plan stale
(:func:`kiln.memory.current_plan` then answers ``None``).

It reports a change when it moved a node, set or changed an offset, or
recorded a plan different from the one already there; running it twice
changes nothing the second time.  Every node output must have a static
shape (a clear error names the first that has not).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from kiln.ir.core import Graph
from kiln.memory import DEFAULT_ALIGNMENT, apply_memory_plan
from kiln.memory.schedule import EXACT_STATES
from kiln.memory.streams import MAX_STREAMS
from kiln.passmanager.base import Pass, PassContext
from kiln.passmanager.registry import register_pass


@register_pass
@dataclass(frozen=True)
class PlanMemory(Pass):
    """Reorders for a low memory peak and plans every activation's offset in one arena."""

    name: ClassVar[str] = "plan-memory"
    alignment: int = field(
        default=DEFAULT_ALIGNMENT, metadata={"doc": "bytes every size and offset is a multiple of"}
    )
    reorder: bool = field(default=True, metadata={"doc": "reorder independent branches to lower the peak"})
    inplace: bool = field(
        default=True, metadata={"doc": "let elementwise ops and views overwrite a dying input"}
    )
    exact_states: int = field(
        default=EXACT_STATES, metadata={"doc": "sets the scheduler's exact search may visit per region"}
    )
    max_streams: int = field(
        default=MAX_STREAMS, metadata={"doc": "most streams the stream analysis assigns"}
    )

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        plan, changed = apply_memory_plan(
            graph,
            alignment=self.alignment,
            reorder=self.reorder,
            inplace=self.inplace,
            exact_states=self.exact_states,
            max_streams=self.max_streams,
        )
        ctx.bump("plan-memory.arena_bytes", plan.arena_bytes)
        if plan.scheduler is not None:
            ctx.bump("plan-memory.moved", plan.scheduler.moved)
        return changed
