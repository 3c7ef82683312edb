"""Memory-aware scheduling: an execution order with a lower peak, the same results.

The peak of an order is the lower bound of :mod:`kiln.memory.liveness`: the
most arena bytes live at one step.  Every topological order computes the same
values; the scheduler picks one whose peak is low.

The state space
---------------
After the nodes of a set ``S`` have run (``S`` closed under predecessors), the
bytes held are fixed by ``S`` alone: ``mem(S)`` = the tensors produced in
``S`` that some node outside ``S`` still reads.  Running a ready node ``n``
then costs, at its step, ``mem(S) + out(n) - inplace(S, n)``: everything held,
plus all of ``n``'s outputs, less the inputs an output takes over in place
(an input dying at ``n``; the rule is in :mod:`kiln.memory.dataflow`).  So the
least peak to reach ``S`` obeys::

    best(S + n) = min over ready n of max(best(S), step(S, n))

a dynamic program over the scheduled sets, which are in one-to-one
correspondence with their *ready sets* (the nodes not in ``S`` whose
predecessors all are; ``S`` is everything not reachable from them), as in
Serenity (Ahn et al., "Ordering Chaos: Memory-Aware Scheduling of Irregularly
Wired Neural Networks for Edge Devices", MLSys 2020).

One dominance rule prunes it: a ready node ``n`` whose step stays within
``max(best(S), floor)`` (``floor``: a peak no order of the region avoids) and
that does not add to the bytes held is a *free move*, and some optimal order
takes it next.  (Moved to the front of any optimal continuation, ``n`` adds
at most ``mem(S + n) - mem(S) <= 0`` bytes to every step it jumps over, as
the inputs it finishes only die sooner, and its own step is within the
peak.)  A set with a free move is expanded by that move alone, which folds
in-place activations and narrowing layers into their producers.

Cuts
----
A node comparable to every other node (no edge jumps over it, no *sink*, a
node nothing reads, comes before it, and no *source*, a node that reads
nothing of the arena, comes after it) is a *cut*: every order runs the same
nodes before it, and what is live after it is its own outputs only.  So the
problem splits there into independent *regions*, the runs of nodes between
cuts, and orders are searched region by region.  The cuts and the regions
are the same in every topological order, so planning a planned graph again
finds nothing to change.

Exact where small, heuristic beyond
-----------------------------------
Each region is first solved exactly by the dynamic program above, layer by
layer (a layer: the sets of ``k`` nodes), as long as it visits at most
``exact_states`` sets; that covers regions whose fan-out is small (an
inception block of four branches of a few nodes each has a few hundred sets).
Past that budget, a beam search over the same states keeps, at each layer,
the ``beam`` sets with the lowest (peak, bytes held).  A region keeps its
input order unless the new order's peak is strictly lower, so the schedule is
never worse than the input order and an unchanged region is not reordered.

Of the orders with the peak found, the one kept is the first in
lexicographic order of input positions (a depth-first search that tries the
earliest ready node first and remembers dead ends), so the result is
deterministic and moves as few nodes as it can.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from kiln.memory.dataflow import Dataflow
from kiln.memory.liveness import compute_liveness

logger = logging.getLogger(__name__)

EXACT_STATES = 200_000
"""Default budget of the exact search, in sets visited per region."""

EXACT_TOTAL = 2_000_000
"""Sets the exact searches of one graph may visit in all; later regions get the beam search."""

SOFT_ROUNDS = 3
"""Exact searches per region with a bisected limit (see ``_exact``)."""

BEAM_WIDTH = 1024
"""Most sets a layer of the beam search keeps."""

BEAM_WORK = 400_000
"""The beam narrows on large regions so that width x nodes stays near this."""


@dataclass
class ScheduleResult:
    """A schedule and how it was found.

    Attributes:
        order: node indices in execution order.
        peak: its peak (bytes live at once, in-place reuse counted).
        input_peak: the input order's peak.
        regions: regions (runs of nodes between cuts).
        exact: regions solved by the exact search.
        heuristic: regions the beam search handled (the exact search ran out of budget).
        improved: regions whose peak the new order lowers.
        states: sets the searches visited, in all.
        largest_region: nodes in the largest region.
        fixed_peak: the most bytes live at a cut's step, the same in every order: no
            schedule has a lower peak.
        branchy_input_peak / branchy_peak: the most bytes live at a step inside a
            region (where the order is free), for the input order and for this one.
        gains: per region whose peak the new order lowers: (its first position,
            its node count, its peak in the input order, its new peak).
    """

    order: list[int]
    peak: int
    input_peak: int
    regions: int = 0
    exact: int = 0
    heuristic: int = 0
    improved: int = 0
    states: int = 0
    largest_region: int = 0
    fixed_peak: int = 0
    branchy_input_peak: int = 0
    branchy_peak: int = 0
    gains: list[tuple[int, int, int, int]] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.order != sorted(self.order)


class _Region:
    """One run of nodes between cuts, numbered locally 0..m-1 (bit ``i`` = local node ``i``)."""

    def __init__(self, flow: Dataflow, nodes: list[int], inplace: bool, pos: Sequence[int]) -> None:
        self.nodes = nodes
        local = {n: i for i, n in enumerate(nodes)}
        end = pos[nodes[-1]]
        size = flow.size
        self.pred_mask: list[int] = []
        self.succ: list[list[int]] = []
        self.out_all: list[int] = []
        self.kept: list[int] = []
        self.reads: list[list[tuple[int, int, int]]] = []  # (tensor, size, reader mask or -1: stays)
        self.pairs: list[list[tuple[int, int]]] = []
        reader_mask: dict[int, int] = {}
        for n in nodes:
            for t in flow.inputs[n]:
                if t in reader_mask:
                    continue
                mask = 0
                for c in flow.consumers[t]:
                    j = local.get(c)
                    if j is None and pos[c] > end:
                        mask = -1
                        break
                    if j is not None:
                        mask |= 1 << j
                reader_mask[t] = mask
        for n in nodes:
            pm = 0
            for p in flow.preds[n]:
                j = local.get(p)
                if j is not None:
                    pm |= 1 << j
            self.pred_mask.append(pm)
            self.succ.append([local[s] for s in flow.succs[n] if s in local])
            outs = flow.outputs[n]
            self.out_all.append(sum(size[t] for t in outs))
            self.kept.append(sum(size[t] for t in outs if flow.consumers[t]))
            self.reads.append([(t, size[t], reader_mask[t]) for t in flow.inputs[n]])
            self.pairs.append(list(flow.inplace[n]) if inplace else [])
        self.entering = {t for t in reader_mask if flow.producer[t] not in local}
        self.through = sum(size[t] for t in self.entering if reader_mask[t] == -1)
        self._floor = -1
        self.initial_ready = 0
        for i, pm in enumerate(self.pred_mask):
            if pm == 0:
                self.initial_ready |= 1 << i

    def step(self, done: int, n: int, mem: int) -> tuple[int, int]:
        """(bytes live while ``n`` runs, bytes held after it), ``done`` including ``n``."""
        freed = 0
        dying: dict[int, int] = {}
        for t, s, mask in self.reads[n]:
            if mask != -1 and done & mask == mask:
                freed += s
                dying[t] = s
        saved = 0
        if dying and self.pairs[n]:
            written: set[int] = set()
            for y, x in self.pairs[n]:
                if y not in written and x in dying:
                    saved += dying.pop(x)
                    written.add(y)
        return mem + self.out_all[n] - saved, mem + self.kept[n] - freed

    def floor(self) -> int:
        """A peak no order of the region can go below (computed once).

        At its step a node holds its inputs and its outputs, less what its
        outputs could take over in place, and every tensor that enters the
        region and is read after it is held at every step.
        """
        if self._floor >= 0:
            return self._floor
        best = 0
        for n, reads in enumerate(self.reads):
            need = self.out_all[n] + self.through
            sizes: dict[int, int] = {}
            for t, s, mask in reads:
                sizes[t] = s
                if mask != -1 or t not in self.entering:
                    need += s
            saving: dict[int, int] = {}
            for y, x in self.pairs[n]:
                if x in sizes:
                    saving[y] = max(saving.get(y, 0), sizes[x])
            best = max(best, need - sum(saving.values()))
        self._floor = best
        return best

    def newly_ready(self, done: int, n: int) -> int:
        bits = 0
        pred_mask = self.pred_mask
        for v in self.succ[n]:
            pm = pred_mask[v]
            if done & pm == pm:
                bits |= 1 << v
        return bits

    def simulate(self, local_order: Sequence[int], mem: int) -> int:
        """The peak of running the region in ``local_order`` from ``mem`` bytes held."""
        done = 0
        peak = 0
        for n in local_order:
            done |= 1 << n
            at, mem = self.step(done, n, mem)
            peak = max(peak, at)
        return peak

    def search(
        self, mem0: int, limit: int, width: int | None, budget: int
    ) -> tuple[int, list[int], int] | None:
        """The best order whose peak is below ``limit``: (peak, local order, sets visited).

        Exact when ``width`` is None (giving up, ``(-1, [], visited)``, past
        ``budget`` sets), else a beam of that width.  ``None`` when no order
        the search saw has a peak below ``limit``.
        """
        m = len(self.nodes)
        floor = self.floor()
        step = self.step
        layer: dict[int, tuple[int, int, int]] = {0: (0, mem0, self.initial_ready)}
        parent: dict[int, tuple[int, int]] = {}
        visited = 1
        for _ in range(m):
            nxt: dict[int, tuple[int, int, int]] = {}
            for done, (peak, mem, ready) in layer.items():
                base = max(floor, peak)
                moves = []
                r = ready
                while r:
                    low = r & -r
                    r ^= low
                    n = low.bit_length() - 1
                    at, mem2 = step(done | low, n, mem)
                    if at <= base and mem2 <= mem:  # a free move: taking it now loses nothing
                        moves = [(low, n, at, mem2)]
                        break
                    moves.append((low, n, at, mem2))
                for low, n, at, mem2 in moves:
                    peak2 = max(peak, at)
                    if peak2 >= limit:
                        continue
                    done2 = done | low
                    cur = nxt.get(done2)
                    if cur is None or peak2 < cur[0]:
                        nxt[done2] = (peak2, mem2, (ready ^ low) | self.newly_ready(done2, n))
                        parent[done2] = (done, n)
            visited += len(nxt)
            if not nxt:
                return None
            if width is None:
                if visited > budget:
                    return -1, [], visited
            elif len(nxt) > width:
                keep = sorted(nxt.items(), key=lambda kv: (kv[1][0], kv[1][1]))[:width]
                nxt = dict(keep)
            layer = nxt
        ((full, (peak, _, _)),) = layer.items()
        order: list[int] = []
        done = full
        while done:
            done, n = parent[done]
            order.append(n)
        order.reverse()
        return peak, order, visited

    def first_order(self, mem0: int, limit: int, budget: int) -> list[int] | None:
        """The lexicographically first order (by input position) whose peak is below ``limit``.

        A depth-first search that always tries the earliest ready node first and
        remembers the sets from which no order stays below ``limit`` (whether one
        can depends on the set alone).  ``None`` when there is no such order or
        the search visits more than ``budget`` sets.
        """
        m = len(self.nodes)
        full = (1 << m) - 1
        dead: set[int] = set()
        path: list[int] = []
        stack: list[list[int]] = [
            [0, mem0, 0, self.initial_ready, self.initial_ready]
        ]  # done, mem, peak, ready, untried
        visited = 0
        while stack:
            top = stack[-1]
            done, mem, peak, ready, untried = top
            if not untried:
                dead.add(done)
                stack.pop()
                if path:
                    path.pop()
                continue
            low = untried & -untried
            top[4] = untried ^ low
            n = low.bit_length() - 1
            done2 = done | low
            if done2 in dead:
                continue
            at, mem2 = self.step(done2, n, mem)
            peak2 = max(peak, at)
            if peak2 >= limit:
                continue
            path.append(n)
            if done2 == full:
                return path
            visited += 1
            if visited > budget:
                return None
            ready2 = (ready ^ low) | self.newly_ready(done2, n)
            stack.append([done2, mem2, peak2, ready2, ready2])
        return None


def cuts(flow: Dataflow, order: Sequence[int]) -> list[bool]:
    """Per position of ``order``: whether the node there is a cut (see the module docstring).

    A cut is comparable to every other node: no edge jumps over it, no sink
    comes before it and no source after it.  Which nodes are cuts, and where,
    is the same in every topological order.
    """
    n = len(order)
    pos = [0] * flow.num_nodes
    for i, node in enumerate(order):
        pos[node] = i
    out = [True] * n
    furthest, sink_seen = -1, False  # the furthest position a node before i feeds
    for i, node in enumerate(order):
        succs = flow.succs[node]
        if furthest > i or sink_seen or (not succs and i < n - 1):  # a sink precedes no node
            out[i] = False
        if succs:
            furthest = max(furthest, max([pos[s] for s in succs]))
        else:
            sink_seen = True
    source_seen = False
    for i in range(n - 1, -1, -1):
        source = not flow.preds[order[i]]
        if source_seen or (source and i > 0):  # a source follows no node
            out[i] = False
        source_seen = source_seen or source
    return out


def schedule(
    flow: Dataflow,
    *,
    inplace: bool = True,
    exact_states: int = EXACT_STATES,
    beam: int = BEAM_WIDTH,
    input_profile: Sequence[int] | None = None,
) -> ScheduleResult:
    """A topological order of ``flow``'s nodes whose peak is as low as the search finds.

    Args:
        flow: the graph, whose current order is the input order.
        inplace: count in-place reuse (as the liveness does).
        exact_states: budget of the exact search per region (sets visited); 0 skips it.
        beam: the beam search's widest layer.
        input_profile: the bytes live at each step of the input order, when the
            caller has them (``compute_liveness(flow, range(n)).profile``).
    """
    n = flow.num_nodes
    base = list(range(n))
    profile = [int(v) for v in input_profile] if input_profile is not None else _profile(flow, base, inplace)
    result = ScheduleResult(order=list(base), peak=0, input_peak=max(profile, default=0))
    held_after = _held_after(flow, base, base)
    is_cut = cuts(flow, base)
    result.fixed_peak = max((profile[i] for i in range(n) if is_cut[i]), default=0)  # the same in every order
    result.peak = result.fixed_peak
    for i, j in _regions(is_cut):
        nodes = base[i:j]
        region = _Region(flow, nodes, inplace, base)
        mem0 = held_after[i - 1] if i else 0
        input_peak = max(profile[i:j])
        result.regions += 1
        result.largest_region = max(result.largest_region, len(nodes))
        peak, local = _solve(region, mem0, input_peak, exact_states, beam, result)
        result.order[i:j] = [nodes[k] for k in local]
        result.branchy_input_peak = max(result.branchy_input_peak, input_peak)
        result.branchy_peak = max(result.branchy_peak, peak)
        result.peak = max(result.peak, peak)
        if peak < input_peak:
            result.improved += 1
            result.gains.append((i, j - i, input_peak, peak))
    return result


def _profile(flow: Dataflow, order: Sequence[int], inplace: bool) -> list[int]:
    return [int(v) for v in compute_liveness(flow, order, inplace=inplace).profile]


def _regions(is_cut: Sequence[bool]) -> list[tuple[int, int]]:
    """``[i, j)`` position spans of the runs of non-cut nodes: the regions."""
    spans = []
    i, n = 0, len(is_cut)
    while i < n:
        if is_cut[i]:
            i += 1
            continue
        j = i
        while j < n and not is_cut[j]:
            j += 1
        spans.append((i, j))
        i = j
    return spans


def _solve(
    region: _Region, mem0: int, input_peak: int, exact_states: int, beam: int, result: ScheduleResult
) -> tuple[int, list[int]]:
    """The region's best order found, as (peak, local order); the input order unless strictly better."""
    m = len(region.nodes)
    keep = input_peak, list(range(m))
    floor = region.floor()
    if floor >= input_peak:  # some node alone needs the input order's peak
        result.exact += 1
        return keep
    status, found = _exact(region, mem0, floor, input_peak, exact_states, result)
    if status == "unknown":
        result.heuristic += 1
        width = max(1, min(beam, BEAM_WORK // m))
        logger.debug("region of %d nodes: beam search, width %d", m, width)
        found = region.search(mem0, input_peak, width, 0)
        if found is not None:
            result.states += found[2]
    else:
        result.exact += 1
    if found is None:
        return keep
    peak, local = found[0], found[1]
    # among the orders as good, the one closest to the input order (fewest moves)
    straight = region.first_order(mem0, peak + 1, max(exact_states, 1000))
    if straight is not None:
        local = straight
    return peak, local


def _exact(
    region: _Region, mem0: int, floor: int, input_peak: int, budget: int, result: ScheduleResult
) -> tuple[str, tuple[int, list[int], int] | None]:
    """``("found", (peak, order, sets))`` for the optimal order if its peak is below ``input_peak``,
    ``("none", None)`` if no order's is, ``("unknown", None)`` if the budget ran out first.

    The search with limit ``tau`` visits only the sets reached with a peak
    below ``tau``, and is exact about them: it finds the optimal order when
    the optimum is below ``tau``, and proves that none is when it ends empty.
    When the sets below the input order's peak are too many for ``budget``,
    ``tau`` is bisected between the floor (no order can go below it) and that
    peak, so a lower limit prunes more (Serenity's "adaptive soft budgeting").
    """
    if budget <= 0 or result.states >= EXACT_TOTAL:
        return "unknown", None
    lo, hi = floor, input_peak  # the optimum is >= lo; below hi the sets are too many (or not yet known)
    tau = input_peak
    for _ in range(SOFT_ROUNDS):
        found = region.search(mem0, tau, None, budget)
        if found is None:
            lo = tau
        else:
            result.states += found[2]
            if found[0] >= 0:
                return "found", found
            hi = tau
        if lo >= input_peak:
            return "none", None
        tau = (lo + hi + 1) // 2
        if tau <= lo or tau >= hi:
            break
    return "unknown", None


def _held_after(flow: Dataflow, order: Sequence[int], pos: Sequence[int]) -> list[int]:
    """Bytes held after each step of ``order`` (tensors some later node still reads)."""
    n = flow.num_nodes
    diff = [0] * (n + 1)
    for t, cs in enumerate(flow.consumers):
        if cs:
            diff[pos[flow.producer[t]]] += flow.size[t]
            diff[max(pos[c] for c in cs)] -= flow.size[t]
    held = []
    total = 0
    for s in range(n):
        total += diff[s]
        held.append(total)
    return held


def is_topological(flow: Dataflow, order: Sequence[int]) -> bool:
    """Whether ``order`` lists every node once, each after all its predecessors."""
    if len(order) != flow.num_nodes or sorted(order) != list(range(flow.num_nodes)):
        return False
    pos = [0] * flow.num_nodes
    for i, node in enumerate(order):
        pos[node] = i
    return all(pos[p] < pos[v] for v in range(flow.num_nodes) for p in flow.preds[v])
