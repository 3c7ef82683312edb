"""Memory planning: liveness, memory-aware scheduling, arena planning, multi-stream analysis.

The compile-time side of what TensorRT calls dynamic tensor memory and
multi-stream execution::

    from kiln.memory import plan_memory

    plan = plan_memory(graph)                      # the graph is not changed
    print(plan.arena_bytes, plan.lower_bound_bytes, plan.naive_bytes)
    for t in plan.tensors:                          # name, offset, size, first, last
        ...

Modules:

* :mod:`kiln.memory.dataflow`: what is in the arena, sizes, alignment, the in-place rule;
* :mod:`kiln.memory.liveness`: intervals over a schedule, buffers, the lower bound;
* :mod:`kiln.memory.schedule`: the memory-aware scheduler (exact DP, beam beyond);
* :mod:`kiln.memory.arena`: offsets by greedy by size / by breadth, then local improvement;
* :mod:`kiln.memory.streams`: widest antichains and a stream per node;
* :mod:`kiln.memory.plan`: the typed plan, :func:`plan_memory`, :func:`apply_memory_plan`;
* :mod:`kiln.memory.report` / :mod:`kiln.memory.plot`: the plan as text and as a PNG timeline.

The ``plan-memory`` pass (``kiln.passes.memory``) applies the plan to a graph:
it reorders the nodes and records the plan in ``graph.meta["memory_plan"]``
and each offset in ``value.meta["arena_offset"]``.
"""

from kiln.memory.dataflow import DEFAULT_ALIGNMENT, MemoryPlanError
from kiln.memory.plan import (
    OFFSET_KEY,
    PLAN_KEY,
    MemoryPlan,
    RegionGain,
    ScheduleStats,
    TensorPlan,
    apply_memory_plan,
    aux_stream_count,
    current_plan,
    plan_json,
    plan_memory,
)
from kiln.memory.streams import StreamPlan

__all__ = [
    "DEFAULT_ALIGNMENT",
    "OFFSET_KEY",
    "PLAN_KEY",
    "MemoryPlan",
    "MemoryPlanError",
    "RegionGain",
    "ScheduleStats",
    "StreamPlan",
    "TensorPlan",
    "apply_memory_plan",
    "aux_stream_count",
    "current_plan",
    "plan_json",
    "plan_memory",
]
