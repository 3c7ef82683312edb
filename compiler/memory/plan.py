"""The memory plan of a graph: schedule, arena offsets, bounds and streams, as typed data.

:func:`plan_memory` computes a :class:`MemoryPlan` without touching the graph;
:func:`apply_memory_plan` also puts the graph's nodes in the planned order
(through ``Graph.move_before``) and records the plan: the whole plan in
``graph.meta["memory_plan"]`` and each arena tensor's offset, an ``int``, in
``value.meta["arena_offset"]`` (which the text IR prints as ``offset=N``).

The plan names tensors and nodes by value name (a node by its first
output's), so it stays meaningful after the graph is saved and reloaded.  It
describes the graph as it was planned: a pass that changes the graph later
makes it stale, which :func:`current_plan` detects.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from kiln.ir.core import Graph, Node
from kiln.ir.gcpause import paused_gc
from kiln.memory.arena import ArenaResult, plan_arena
from kiln.memory.dataflow import DEFAULT_ALIGNMENT, Dataflow, MemoryPlanError, build_dataflow
from kiln.memory.liveness import Liveness, compute_liveness
from kiln.memory.schedule import EXACT_STATES, ScheduleResult, is_topological, schedule
from kiln.memory.streams import MAX_STREAMS, StreamPlan, analyze_streams

logger = logging.getLogger(__name__)

PLAN_KEY = "memory_plan"
"""``graph.meta`` key of the :class:`MemoryPlan`."""

OFFSET_KEY = "arena_offset"
"""``value.meta`` key of an arena tensor's offset (an ``int``)."""


@dataclass(frozen=True)
class TensorPlan:
    """Where one arena tensor lives and when.

    Attributes:
        name: the value's name.
        offset: its first byte in the arena (a multiple of the alignment).
        size: the bytes reserved (its bytes rounded up to the alignment).
        nbytes: its exact bytes.
        first / last: the steps it is live from and to, both included.
        shares: the tensor whose bytes it took over in place, or ``None``.
    """

    name: str
    offset: int
    size: int
    nbytes: int
    first: int
    last: int
    shares: str | None = None

    @property
    def end(self) -> int:
        return self.offset + self.size


@dataclass(frozen=True)
class ScheduleStats:
    """What the scheduler did (see :mod:`kiln.memory.schedule`).

    Attributes:
        regions: regions of two or more nodes between cuts (where the order is free).
        exact / heuristic: regions solved exactly / by the beam search.
        improved: regions given a new order (a strictly lower peak).
        states: sets the searches visited.
        largest_region: nodes in the largest region.
        moved: nodes whose step changed.
        fixed_bytes: the most bytes live at a cut's step (a node every order runs at
            the same step with the same tensors live): no order goes below it.
        branchy_input_bytes / branchy_bytes: the most bytes live at a step inside a
            region, in the input order and in the planned one.
        gains: the regions given a new order, largest saving first.
    """

    regions: int
    exact: int
    heuristic: int
    improved: int
    states: int
    largest_region: int
    moved: int
    fixed_bytes: int
    branchy_input_bytes: int
    branchy_bytes: int
    gains: tuple[RegionGain, ...] = ()


@dataclass(frozen=True)
class RegionGain:
    """One region the scheduler reordered.

    Attributes:
        first: the label of its first node in the input order.
        nodes: its node count.
        input_bytes / bytes: its peak in the input order and in the planned one.
    """

    first: str
    nodes: int
    input_bytes: int
    bytes: int


@dataclass(frozen=True)
class MemoryPlan:
    """A graph's activation memory plan.

    Attributes:
        alignment: bytes every size and offset is a multiple of.
        inplace: whether in-place reuse was allowed.
        arena_bytes: the arena: the largest ``offset + size``.
        lower_bound_bytes: the most bytes live at one step of the planned order.
        naive_bytes: every tensor's size added up (no reuse).
        input_lower_bound_bytes / input_arena_bytes: the same two for the order the
            graph came in (its ONNX order), for comparison.
        algorithm: the placement kept (``greedy-by-size``, ``greedy-by-breadth``,
            ``+improved`` when the local steps lowered it).
        candidates: each placement's arena before improvement.
        schedule: node labels (first output names) in the planned order.
        reordered: whether the planned order differs from the input order.
        tensors: every arena tensor, in order of first step.
        peak_step: the first step where ``lower_bound_bytes`` are live (-1: no tensors).
        peak_tensors: the tensors live there.
        scheduler: what the scheduler did (``None`` when it did not run).
        streams: the multi-stream analysis (``None`` when not asked for).
    """

    alignment: int
    inplace: bool
    arena_bytes: int
    lower_bound_bytes: int
    naive_bytes: int
    input_lower_bound_bytes: int
    input_arena_bytes: int
    algorithm: str
    candidates: tuple[tuple[str, int], ...]
    schedule: tuple[str, ...]
    reordered: bool
    tensors: tuple[TensorPlan, ...]
    peak_step: int
    peak_tensors: tuple[str, ...]
    scheduler: ScheduleStats | None = None
    streams: StreamPlan | None = None
    seconds: float = field(default=0.0, compare=False)

    @property
    def ratio(self) -> float:
        """Arena over lower bound (1.0 when both are 0)."""
        return self.arena_bytes / self.lower_bound_bytes if self.lower_bound_bytes else 1.0

    @property
    def aux_streams(self) -> int:
        """TensorRT's auxiliary stream count (0 without a stream analysis)."""
        return self.streams.aux_streams if self.streams is not None else 0

    def tensor(self, name: str) -> TensorPlan:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)

    def offsets(self) -> dict[str, int]:
        return {t.name: t.offset for t in self.tensors}

    def overlaps(self) -> Iterator[tuple[TensorPlan, TensorPlan]]:
        """Pairs of tensors live at one step whose bytes overlap, other than in-place pairs (none, if sound)."""
        by_first = sorted(self.tensors, key=lambda t: (t.first, t.name))
        active: list[TensorPlan] = []
        for t in by_first:
            if not t.size:
                continue
            active = [a for a in active if a.last >= t.first]
            for a in active:
                if t.offset < a.end and a.offset < t.end and not _shared(a, t, self):
                    yield a, t
            active.append(t)


def _shared(a: TensorPlan, b: TensorPlan, plan: MemoryPlan) -> bool:
    """Whether ``b`` took over ``a``'s bytes in place (or the reverse), directly."""
    return (b.shares == a.name and a.last == b.first) or (a.shares == b.name and b.last == a.first)


@dataclass
class _Computed:
    plan: MemoryPlan
    flow: Dataflow
    order: list[int]


def plan_memory(
    graph: Graph,
    *,
    alignment: int = DEFAULT_ALIGNMENT,
    reorder: bool = True,
    inplace: bool = True,
    exact_states: int = EXACT_STATES,
    streams: bool = True,
    max_streams: int = MAX_STREAMS,
) -> MemoryPlan:
    """Plans ``graph``'s activation memory; the graph is not changed.

    Args:
        graph: a root graph whose node outputs all have static shapes.
        alignment: bytes every buffer's size and offset are rounded to.
        reorder: let the scheduler reorder independent branches (else plan the current order).
        inplace: let outputs take over dying inputs (the rule is in :mod:`kiln.memory.dataflow`).
        exact_states: budget of the scheduler's exact search per region.
        streams: run the multi-stream analysis.
        max_streams: the most streams it may assign.

    Raises:
        MemoryPlanError: a value's size is not static, or an option is out of range.
    """
    with paused_gc():
        return _compute(graph, alignment, reorder, inplace, exact_states, streams, max_streams).plan


def apply_memory_plan(
    graph: Graph,
    *,
    alignment: int = DEFAULT_ALIGNMENT,
    reorder: bool = True,
    inplace: bool = True,
    exact_states: int = EXACT_STATES,
    streams: bool = True,
    max_streams: int = MAX_STREAMS,
) -> tuple[MemoryPlan, bool]:
    """Plans ``graph``'s memory, puts its nodes in the planned order and records the plan.

    Returns the plan and whether anything changed: the node order, an
    offset, or what the plan recorded before decides (:func:`_layout`).
    Planning a graph that carries a current plan again keeps that plan when
    the new one decides the same (nothing changed); otherwise, with the same
    alignment and in-place setting, the new plan keeps the old one's
    comparison with the order the graph had before it was first planned.
    Arguments are :func:`plan_memory`'s.
    """
    previous = current_plan(graph)
    with paused_gc():
        computed = _compute(graph, alignment, reorder, inplace, exact_states, streams, max_streams)
    plan, flow = computed.plan, computed.flow
    if previous is not None and _layout(previous) == _layout(plan):
        return previous, False  # planned already, the same way
    if previous is not None and (previous.alignment, previous.inplace) == (plan.alignment, plan.inplace):
        # the graph is in the order ``previous`` gave it: keep comparing with the order before that
        plan = dataclasses.replace(
            plan,
            input_lower_bound_bytes=previous.input_lower_bound_bytes,
            input_arena_bytes=previous.input_arena_bytes,
        )
    moved = _reorder(graph, [flow.nodes[i] for i in computed.order])
    offsets = {t.name: t.offset for t in plan.tensors}
    changed = moved > 0 or previous is None
    for node in flow.nodes:
        for v in node.outputs:
            want = offsets.get(v.name)
            if v.meta.get(OFFSET_KEY) != want:
                changed = True
                if want is None:
                    del v.meta[OFFSET_KEY]
                else:
                    v.meta[OFFSET_KEY] = want
    for v in list(graph.inputs) + list(graph.constants.values()):
        if OFFSET_KEY in v.meta:
            del v.meta[OFFSET_KEY]
            changed = True
    if previous is not None and _layout(previous) != _layout(plan):
        changed = True
    graph.meta[PLAN_KEY] = plan
    return plan, changed


def _layout(plan: MemoryPlan) -> tuple[Any, ...]:
    """What a plan decides: the order, every tensor's place and time, the options that shape them."""
    return (plan.alignment, plan.inplace, plan.schedule, plan.tensors, plan.streams)


def current_plan(graph: Graph) -> MemoryPlan | None:
    """The plan recorded on ``graph`` if it still describes it, else ``None``.

    It does when the graph's nodes are in the plan's order (by first output
    name) and every planned tensor is there with its offset and byte size.
    """
    plan = graph.meta.get(PLAN_KEY)
    if not isinstance(plan, MemoryPlan):
        return None
    if tuple(_label(node, i) for i, node in enumerate(graph)) != plan.schedule:
        return None
    values = {v.name: v for node in graph for v in node.outputs}
    for t in plan.tensors:
        v = values.get(t.name)
        if v is None or v.meta.get(OFFSET_KEY) != t.offset:
            return None
        tt = v.tensor_type
        if tt is None or tt.nbytes() != t.nbytes:
            return None
    return plan


def aux_stream_count(graph: Graph) -> int | None:
    """TensorRT's ``max_aux_streams`` from the graph's current plan, or ``None`` when there is none."""
    plan = current_plan(graph)
    if plan is None or plan.streams is None:
        return None
    return plan.streams.aux_streams


def _label(node: Node, index: int) -> str:
    return node.outputs[0].name if node.outputs else f"#{index}"


def _reorder(graph: Graph, order: list[Node]) -> int:
    """Puts the graph's nodes in ``order`` with ``Graph.move_before``; returns how many moved."""
    moved = 0
    cursor = next(iter(graph), None)
    for node in order:
        if node is cursor:
            cursor = cursor.next
            continue
        assert cursor is not None
        graph.move_before(node, cursor)
        moved += 1
    return moved


def _compute(
    graph: Graph,
    alignment: int,
    reorder: bool,
    inplace: bool,
    exact_states: int,
    streams: bool,
    max_streams: int,
) -> _Computed:
    start = time.perf_counter()
    if isinstance(exact_states, bool) or not isinstance(exact_states, int) or exact_states < 0:
        raise MemoryPlanError(f"exact_states must be a non-negative integer, not {exact_states!r}")
    if isinstance(max_streams, bool) or not isinstance(max_streams, int) or max_streams < 1:
        raise MemoryPlanError(f"max_streams must be a positive integer, not {max_streams!r}")
    flow = build_dataflow(graph, alignment)
    identity = list(range(flow.num_nodes))
    input_live = compute_liveness(flow, identity, inplace=inplace)
    sched: ScheduleResult | None = None
    order = identity
    if reorder:
        sched = schedule(flow, inplace=inplace, exact_states=exact_states, input_profile=input_live.profile)
        if sched.order != identity:
            if not is_topological(flow, sched.order):  # pragma: no cover - a scheduler bug
                raise AssertionError("the scheduler produced an order that is not topological")
            order = sched.order
    live = compute_liveness(flow, order, inplace=inplace) if order is not identity else input_live
    arena = plan_arena(live.buf_first, live.buf_last, live.buf_size, live.bound)
    input_arena = arena.arena
    if order is not identity:
        input_arena = plan_arena(
            input_live.buf_first, input_live.buf_last, input_live.buf_size, input_live.bound
        ).arena
    stream_plan = analyze_streams(flow, order, max_streams) if streams else None
    plan = _make_plan(flow, order, live, arena, input_live, input_arena, sched, stream_plan, inplace, start)
    logger.debug(
        "memory plan: arena %d, bound %d (input order %d), naive %d, %s",
        plan.arena_bytes,
        plan.lower_bound_bytes,
        plan.input_lower_bound_bytes,
        plan.naive_bytes,
        plan.algorithm,
    )
    return _Computed(plan, flow, order)


def _make_plan(
    flow: Dataflow,
    order: list[int],
    live: Liveness,
    arena: ArenaResult,
    input_live: Liveness,
    input_arena: int,
    sched: ScheduleResult | None,
    stream_plan: StreamPlan | None,
    inplace: bool,
    start: float,
) -> MemoryPlan:
    names = [v.name for v in flow.values]
    tensors = tuple(
        TensorPlan(
            name=names[t],
            offset=arena.offsets[live.buffer[t]],
            size=flow.size[t],
            nbytes=flow.nbytes[t],
            first=live.first[t],
            last=live.last[t],
            shares=names[live.shares[t]] if live.shares[t] >= 0 else None,
        )
        for t in sorted(range(flow.num_tensors), key=lambda t: (live.first[t], t))
    )
    peak_tensors = tuple(names[t] for t in live.live_at(live.peak_step)) if live.peak_step >= 0 else ()
    stats = None
    if sched is not None:
        stats = ScheduleStats(
            regions=sched.regions,
            exact=sched.exact,
            heuristic=sched.heuristic,
            improved=sched.improved,
            states=sched.states,
            largest_region=sched.largest_region,
            moved=sum(1 for i, node in enumerate(order) if node != i),
            fixed_bytes=sched.fixed_peak,
            branchy_input_bytes=sched.branchy_input_peak,
            branchy_bytes=sched.branchy_peak,
            gains=tuple(
                RegionGain(flow.label(first), nodes, before, after)  # input order: position == node
                for first, nodes, before, after in sorted(sched.gains, key=lambda g: (g[3] - g[2], g[0]))
            ),
        )
    return MemoryPlan(
        alignment=flow.alignment,
        inplace=inplace,
        arena_bytes=arena.arena,
        lower_bound_bytes=live.bound,
        naive_bytes=live.naive,
        input_lower_bound_bytes=input_live.bound,
        input_arena_bytes=input_arena,
        algorithm=arena.algorithm,
        candidates=tuple(arena.candidates.items()),
        schedule=tuple(flow.label(i) for i in order),
        reordered=order != list(range(flow.num_nodes)),
        tensors=tensors,
        peak_step=live.peak_step,
        peak_tensors=peak_tensors,
        scheduler=stats,
        streams=stream_plan,
        seconds=time.perf_counter() - start,
    )


def plan_json(plan: MemoryPlan) -> dict[str, Any]:
    """The plan as JSON-ready data (what ``kiln inspect --memory --json`` prints under ``memory``)."""
    out: dict[str, Any] = {
        "arena_bytes": plan.arena_bytes,
        "lower_bound_bytes": plan.lower_bound_bytes,
        "naive_bytes": plan.naive_bytes,
        "ratio": round(plan.ratio, 6),
        "input_order": {
            "lower_bound_bytes": plan.input_lower_bound_bytes,
            "arena_bytes": plan.input_arena_bytes,
        },
        "alignment": plan.alignment,
        "inplace": plan.inplace,
        "algorithm": plan.algorithm,
        "candidates": dict(plan.candidates),
        "reordered": plan.reordered,
        "steps": len(plan.schedule),
        "schedule": list(plan.schedule),
        "peak": {"step": plan.peak_step, "tensors": list(plan.peak_tensors)},
        "tensors": [
            {
                "name": t.name,
                "offset": t.offset,
                "size": t.size,
                "nbytes": t.nbytes,
                "first": t.first,
                "last": t.last,
                "shares": t.shares,
            }
            for t in plan.tensors
        ],
    }
    if plan.scheduler is not None:
        s = plan.scheduler
        out["scheduler"] = {
            "regions": s.regions,
            "exact": s.exact,
            "heuristic": s.heuristic,
            "improved": s.improved,
            "states": s.states,
            "largest_region": s.largest_region,
            "moved": s.moved,
            "fixed_bytes": s.fixed_bytes,
            "branchy_input_bytes": s.branchy_input_bytes,
            "branchy_bytes": s.branchy_bytes,
            "gains": [
                {"first": g.first, "nodes": g.nodes, "input_bytes": g.input_bytes, "bytes": g.bytes}
                for g in s.gains
            ],
        }
    if plan.streams is not None:
        st = plan.streams
        out["streams"] = {
            "width": st.width,
            "exact": st.exact,
            "antichains": [list(a) for a in st.antichains],
            "streams": st.streams,
            "aux_streams": st.aux_streams,
            "cross_stream_edges": st.cross_stream_edges,
            "assignment": list(st.assignment),
        }
    return out
