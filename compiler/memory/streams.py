"""Multi-stream analysis: how many nodes could run at once, and which stream runs each.

Two nodes may run concurrently when neither depends on the other (no path
between them).  The most nodes pairwise independent is the graph's *width*,
the size of its widest antichain, and by Dilworth's theorem also the fewest
chains (sequences of nodes each depending on the one before) that cover the
graph.  Giving every chain of such a cover its own stream is an assignment of
independent branches to streams: a stream runs its nodes in schedule order,
and an edge between streams is an event to wait on.

The scheduler's cuts split the work (:func:`kiln.memory.schedule.cuts`): a
cut is comparable to every node, so no antichain holds it and another node;
the width is the largest width of the regions between cuts, and chains are
found region by region.

Per region of at most :data:`EXACT_LIMIT` nodes, the width is exact: a
maximum matching in the comparability graph (reachability as bitsets, Kuhn's
augmenting paths) gives a minimum chain cover, and König's theorem turns the
matching into a widest antichain.  Larger regions get a lower bound (the
largest set of nodes at the same longest-path depth, which are pairwise
independent) and a greedy chain cover; the report says which.

The stream count is the width capped at ``max_streams``; chains beyond it share
streams round-robin.  TensorRT takes ``streams - 1`` as its auxiliary stream
count (``IBuilderConfig.max_aux_streams``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kiln.memory.dataflow import Dataflow
from kiln.memory.schedule import cuts

EXACT_LIMIT = 2000
"""Regions of at most this many nodes get an exact width."""

MAX_STREAMS = 8
"""Default cap on the number of streams."""

_REPORTED = 3


@dataclass(frozen=True)
class StreamPlan:
    """Concurrency of a scheduled graph.

    Attributes:
        width: the size of the widest antichain found (the most nodes that could run at once).
        exact: whether ``width`` is exact (every region small enough), else a lower bound.
        antichains: the widest antichains found, widest first (at most three, each from
            another region), as node labels (a node's first output name).
        streams: streams to use: ``width`` capped at ``max_streams`` (at least 1).
        aux_streams: ``streams - 1``, TensorRT's ``max_aux_streams``.
        assignment: the stream of each node, by schedule step.
        cross_stream_edges: dependencies between nodes on different streams (events).
    """

    width: int
    exact: bool
    antichains: tuple[tuple[str, ...], ...]
    streams: int
    aux_streams: int
    assignment: tuple[int, ...]
    cross_stream_edges: int


def analyze_streams(flow: Dataflow, order: Sequence[int], max_streams: int = MAX_STREAMS) -> StreamPlan:
    """Width, widest antichains and a stream per node of ``flow`` scheduled in ``order``."""
    order = list(order)
    n = len(order)
    assignment = [0] * n
    if n == 0:
        return StreamPlan(0, True, (), 1, 0, (), 0)
    streams_cap = max(1, max_streams)
    sep = cuts(flow, order)
    found: list[tuple[int, int, list[int]]] = []  # (width, start, antichain nodes)
    exact = True
    widest = 1
    i = 0
    while i < n:
        if sep[i]:
            i += 1
            continue
        j = i
        while j < n and not sep[j]:
            j += 1
        region = order[i:j]
        if len(region) <= EXACT_LIMIT:
            width, antichain, chains = _exact(flow, region)
        else:
            width, antichain, chains = _approximate(flow, region)
            exact = False
        widest = max(widest, width)
        found.append((width, i, antichain))
        step_of = {node: i + k for k, node in enumerate(region)}
        cap = min(streams_cap, max(width, 1))
        for c, chain in enumerate(sorted(chains, key=lambda ch: (-len(ch), step_of[ch[0]]))):
            for node in chain:
                assignment[step_of[node]] = c % cap
        i = j
    found.sort(key=lambda item: (-item[0], item[1]))
    step_of_node = {node: step for step, node in enumerate(order)}
    antichains = tuple(
        tuple(flow.label(v) for v in sorted(a, key=step_of_node.__getitem__))
        for w, _, a in found[:_REPORTED]
        if w > 1
    )
    if not antichains:
        antichains = ((flow.label(order[0]),),)
    streams = min(widest, streams_cap)
    stream_of = [0] * flow.num_nodes
    for step, node in enumerate(order):
        stream_of[node] = assignment[step]
    cross = sum(1 for v in range(flow.num_nodes) for u in flow.preds[v] if stream_of[u] != stream_of[v])
    return StreamPlan(widest, exact, antichains, streams, streams - 1, tuple(assignment), cross)


def _exact(flow: Dataflow, region: list[int]) -> tuple[int, list[int], list[list[int]]]:
    """(width, a widest antichain, a minimum chain cover) of a region, by Dilworth and König."""
    m = len(region)
    local = {node: k for k, node in enumerate(region)}
    succ = [sorted(local[s] for s in flow.succs[node] if s in local) for node in region]
    reach = [0] * m  # bit v set: local node v depends on local node u (strict)
    for u in range(m - 1, -1, -1):
        bits = 0
        for v in succ[u]:
            bits |= (1 << v) | reach[v]
        reach[u] = bits
    match_l = [-1] * m  # u -> the node after it in its chain
    match_r = [-1] * m  # v -> the node before it
    for u in range(m):  # a greedy start: an immediate successor
        for v in succ[u]:
            if match_r[v] == -1:
                match_l[u], match_r[v] = v, u
                break
    for u in range(m):
        if match_l[u] == -1:
            _augment(u, reach, match_l, match_r)
    # König: left nodes reachable from unmatched left nodes by alternating paths
    z_left = [match_l[u] == -1 for u in range(m)]
    z_right = 0
    frontier = [u for u in range(m) if z_left[u]]
    while frontier:
        nxt = []
        for u in frontier:
            cand = reach[u] & ~z_right
            z_right |= cand
            while cand:
                low = cand & -cand
                cand ^= low
                w = match_r[low.bit_length() - 1]
                if w != -1 and not z_left[w]:
                    z_left[w] = True
                    nxt.append(w)
        frontier = nxt
    antichain = [region[x] for x in range(m) if z_left[x] and not (z_right >> x) & 1]
    chains = []
    for start in range(m):
        if match_r[start] == -1:
            chain = [region[start]]
            u = start
            while match_l[u] != -1:
                u = match_l[u]
                chain.append(region[u])
            chains.append(chain)
    assert len(antichain) == len(chains), (len(antichain), len(chains))
    return len(chains), antichain, chains


def _augment(root: int, reach: list[int], match_l: list[int], match_r: list[int]) -> bool:
    """Kuhn's augmenting path from left node ``root`` (iterative depth-first search)."""
    visited = 0
    stack_u = [root]
    stack_c = [reach[root]]
    chosen: list[int] = []
    while stack_u:
        cand = stack_c[-1] & ~visited
        if not cand:
            stack_u.pop()
            stack_c.pop()
            if chosen:
                chosen.pop()
            continue
        low = cand & -cand
        v = low.bit_length() - 1
        visited |= low
        stack_c[-1] = cand ^ low
        chosen.append(v)
        w = match_r[v]
        if w == -1:
            for u, vv in zip(stack_u, chosen):
                match_l[u] = vv
                match_r[vv] = u
            return True
        stack_u.append(w)
        stack_c.append(reach[w])
    return False


def _approximate(flow: Dataflow, region: list[int]) -> tuple[int, list[int], list[list[int]]]:
    """(a lower bound of the width, an antichain of that size, a greedy chain cover)."""
    local = {node: k for k, node in enumerate(region)}
    depth = [0] * len(region)
    for k, node in enumerate(region):
        depth[k] = max((depth[local[p]] + 1 for p in flow.preds[node] if p in local), default=0)
    levels: dict[int, list[int]] = {}
    for k, d in enumerate(depth):
        levels.setdefault(d, []).append(region[k])
    antichain = max(levels.values(), key=len)
    tail_of: dict[int, list[int]] = {}  # node -> the chain it ends
    chains: list[list[int]] = []
    for node in region:
        chain = None
        for p in sorted(flow.preds[node], key=lambda p: local.get(p, -1)):
            if p in tail_of:
                chain = tail_of.pop(p)
                break
        if chain is None:
            chain = []
            chains.append(chain)
        chain.append(node)
        tail_of[node] = chain
    return len(antichain), antichain, chains
