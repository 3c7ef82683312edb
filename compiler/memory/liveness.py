"""Liveness over a schedule: each arena tensor's interval, in-place buffers, the lower bound.

A schedule is a list of node indices (:class:`~kiln.memory.dataflow.Dataflow`
numbering); the node at position ``s`` runs at *step* ``s``.  A tensor is live
from the step of its producer (``first``) to the step of its last reader
(``last``), both included: a node reads its inputs while it writes its
outputs, so they may not share bytes, unless the in-place rule
(``kiln.memory.dataflow``) lets an output take over a dying input.  An output
nothing reads is live at its producer's step only.

Tensors joined by in-place reuse form one *buffer*: the first tensor's
interval, extended by each tensor that took it over; the arena places buffers,
and each tensor's offset is its buffer's.  At a step, the bytes live are the
sizes of the buffers live there; the largest such sum over the schedule is the
**lower bound** (no placement of these buffers can use less: they are all live
at once there), and the sum of every tensor's size is the **naive** arena
(every tensor its own bytes, nothing reused).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from kiln.memory.dataflow import Dataflow


@dataclass
class Liveness:
    """Intervals and buffers of one schedule.

    Attributes:
        order: the schedule (node indices).
        first / last: per tensor, the steps it is live from and to (inclusive).
        shares: per tensor, the tensor whose buffer it took over in place, or -1.
        buffer: per tensor, its buffer.
        buf_first / buf_last / buf_size: per buffer, its interval and bytes.
        profile: bytes live at each step (buffers).
        bound: the most bytes live at one step (0 for an empty schedule).
        peak_step: the first step where ``bound`` bytes are live (-1 when empty).
        naive: the sum of every tensor's size.
    """

    order: list[int]
    first: list[int]
    last: list[int]
    shares: list[int]
    buffer: list[int]
    buf_first: list[int]
    buf_last: list[int]
    buf_size: list[int]
    profile: np.ndarray
    bound: int
    peak_step: int
    naive: int

    def live_at(self, step: int) -> list[int]:
        """The tensors live at ``step``, in order of first step."""
        return sorted(
            (t for t in range(len(self.first)) if self.first[t] <= step <= self.last[t]),
            key=lambda t: (self.first[t], t),
        )


def compute_liveness(flow: Dataflow, order: Sequence[int], *, inplace: bool = True) -> Liveness:
    """Intervals, in-place buffers, profile and bound of ``flow`` run in ``order``."""
    order = list(order)
    n_nodes, n_tensors = flow.num_nodes, flow.num_tensors
    if sorted(order) != list(range(n_nodes)):
        raise ValueError("the schedule must list every node exactly once")
    step = [0] * n_nodes
    for s, node in enumerate(order):
        step[node] = s
    first = [step[p] for p in flow.producer]
    last = [max([step[c] for c in cs]) if cs else first[t] for t, cs in enumerate(flow.consumers)]
    shares = [-1] * n_tensors
    buffer = [-1] * n_tensors
    buf_first: list[int] = []
    buf_last: list[int] = []
    buf_size: list[int] = []
    size = flow.size
    for s, node in enumerate(order):
        if inplace and flow.inplace[node]:
            taken: set[int] = set()
            for y, x in flow.inplace[node]:
                if buffer[y] != -1 or x in taken or last[x] != s:
                    continue
                taken.add(x)
                shares[y] = x
                b = buffer[x]
                buffer[y] = b
                buf_last[b] = max(buf_last[b], last[y])
        for y in flow.outputs[node]:
            if buffer[y] == -1:
                buffer[y] = len(buf_first)
                buf_first.append(first[y])
                buf_last.append(last[y])
                buf_size.append(size[y])
    profile = live_profile(buf_first, buf_last, buf_size, len(order))
    bound = int(profile.max()) if len(profile) else 0
    peak = int(np.argmax(profile)) if len(profile) else -1
    return Liveness(
        order, first, last, shares, buffer, buf_first, buf_last, buf_size, profile, bound, peak, sum(size)
    )


def live_profile(first: Sequence[int], last: Sequence[int], size: Sequence[int], steps: int) -> np.ndarray:
    """Bytes live at each of ``steps`` steps, for intervals ``[first, last]`` of ``size`` bytes."""
    diff = np.zeros(steps + 1, dtype=np.int64)
    if len(first):
        sizes = np.asarray(size, dtype=np.int64)
        np.add.at(diff, np.asarray(first, dtype=np.int64), sizes)
        np.add.at(diff, np.asarray(last, dtype=np.int64) + 1, -sizes)
    return np.cumsum(diff[:steps])


def schedule_peak(flow: Dataflow, order: Sequence[int], *, inplace: bool = True) -> int:
    """The lower bound (most bytes live at once) of ``order``; cheaper than full liveness."""
    return compute_liveness(flow, order, inplace=inplace).bound
