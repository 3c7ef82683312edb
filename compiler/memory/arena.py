"""Arena planning: an offset for every buffer in one arena, as small as we can make it.

The problem: buffers with a size and a live interval ``[first, last]`` (steps,
inclusive); two buffers whose intervals meet must not share bytes.  The arena
is the largest ``offset + size``.  It can never be below the lower bound (the
most bytes live at one step) and never needs to be above the naive sum.

Two placements from Pisarchyk & Lee, "Efficient Memory Management for Deep
Neural Net Inference" (2020), section 4 ("offset calculation"):

* **greedy by size**: buffers in non-increasing size; each goes into the
  smallest gap, between the buffers already placed whose intervals meet its
  own, that it fits (best fit), or above the highest of them when none fits.
* **greedy by breadth**: steps in non-increasing breadth (bytes live there);
  at each step, the buffers live there and not yet placed, in non-increasing
  size, placed the same way.  A buffer is therefore placed at the widest
  step of its interval, which is what :func:`greedy_by_breadth` sorts by
  (a range-minimum query over the steps' ranks), so both share one placer.

The better of the two is kept, then improved locally (each step only ever
lowers the arena, and all stop as soon as it equals the lower bound):

1. *compaction*: every buffer, in increasing offset, drops to the lowest
   offset where it fits (first fit), given where the others are;
2. *lowering the top*: the buffers that reach the top of the arena are taken
   out and put back at the lowest offsets where they fit; kept when the top
   came down;
3. *repacking the top*: the buffers at the top and the largest buffers live
   beside them (:data:`WINDOW` in all) are taken out and put back in every
   order (best fit and lowest fit), the rest staying put; the first order
   that brings the top down is kept.  This is what closes the gap greedy
   placement leaves on chains of growing concatenations (DenseNet);
4. *promotion*: greedy by size again, with the buffers that reached the top
   moved to the front of the order (a few rounds, on plans of up to
   :data:`PROMOTE_LIMIT` buffers), kept when better.

Finding the placed buffers whose intervals meet a new one uses a time index:
buckets of ``2**shift`` steps each listing the buffers that touch them.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from kiln.memory.liveness import live_profile

logger = logging.getLogger(__name__)

PROMOTE_ROUNDS = 12
"""Rounds of the promotion step."""

PROMOTE_LIMIT = 20000
"""The promotion step runs on plans of at most this many buffers."""

WINDOW = 6
"""Buffers re-placed together by :func:`repack_top`."""

WINDOW_ORDERS = 720
"""Orders of a window :func:`repack_top` tries (6! = 720: every order of a full window)."""

_SHIFT = 4


@dataclass
class ArenaResult:
    """Offsets of a placement.

    Attributes:
        offsets: per buffer.
        arena: the largest ``offset + size`` (0 when there are no buffers).
        algorithm: which placement won, plus ``+improved`` when the local steps lowered it.
        candidates: the arena each algorithm gave before improvement.
    """

    offsets: list[int]
    arena: int
    algorithm: str
    candidates: dict[str, int]


class _TimeIndex:
    """Buckets of steps, each listing the buffers whose interval touches it."""

    def __init__(self, steps: int) -> None:
        self.buckets: list[list[int]] = [[] for _ in range((steps >> _SHIFT) + 1)]

    def add(self, i: int, f: int, l: int) -> None:
        buckets = self.buckets
        for b in range(f >> _SHIFT, (l >> _SHIFT) + 1):
            buckets[b].append(i)

    def remove(self, i: int, f: int, l: int) -> None:
        buckets = self.buckets
        for b in range(f >> _SHIFT, (l >> _SHIFT) + 1):
            buckets[b].remove(i)


def _busy(
    i: int,
    f: int,
    l: int,
    index: _TimeIndex,
    first: Sequence[int],
    last: Sequence[int],
    offsets: Sequence[int],
    size: Sequence[int],
    mark: list[int],
) -> list[tuple[int, int]]:
    """``(offset, end)`` of the indexed buffers other than ``i`` whose intervals meet ``[f, l]``, sorted."""
    busy = []
    buckets = index.buckets
    for b in range(f >> _SHIFT, (l >> _SHIFT) + 1):
        for j in buckets[b]:
            if mark[j] == i or j == i:
                continue
            mark[j] = i
            if first[j] <= l and last[j] >= f:
                o = offsets[j]
                busy.append((o, o + size[j]))
    busy.sort()
    return busy


def place(order: Sequence[int], first: Sequence[int], last: Sequence[int], size: Sequence[int]) -> list[int]:
    """Best-fit placement of the buffers in ``order`` (Pisarchyk & Lee's offset calculation)."""
    n = len(size)
    offsets = [0] * n
    steps = (max(last) + 1) if n else 0
    index = _TimeIndex(steps)
    mark = [-1] * n
    for i in order:
        s = size[i]
        if s == 0:
            continue
        f, l = first[i], last[i]
        offsets[i] = _best_fit(_busy(i, f, l, index, first, last, offsets, size, mark), s)
        index.add(i, f, l)
    return offsets


def arena_size(offsets: Sequence[int], size: Sequence[int]) -> int:
    return max((o + s for o, s in zip(offsets, size)), default=0)


def size_order(first: Sequence[int], size: Sequence[int]) -> list[int]:
    """Buffers by non-increasing size, then by first step."""
    return sorted(range(len(size)), key=lambda i: (-size[i], first[i], i))


def breadth_order(first: Sequence[int], last: Sequence[int], size: Sequence[int]) -> list[int]:
    """Buffers in the order greedy by breadth places them (see the module docstring)."""
    n = len(size)
    if n == 0:
        return []
    steps = max(last) + 1
    profile = live_profile(first, last, size, steps)
    # rank of each step: widest first, earlier first among equals
    by_breadth = np.lexsort((np.arange(steps), -profile))
    rank = np.empty(steps, dtype=np.int64)
    rank[by_breadth] = np.arange(steps)
    f = np.asarray(first, dtype=np.int64)
    l = np.asarray(last, dtype=np.int64)
    key = _range_min(rank, f, l)
    return sorted(range(n), key=lambda i: (int(key[i]), -size[i], i))


def _range_min(values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``min(values[lo[i]:hi[i]+1])`` for every ``i`` (a sparse table)."""
    table = [values]
    width = 1
    while 2 * width <= len(values):
        prev = table[-1]
        table.append(np.minimum(prev[: len(prev) - width], prev[width:]))
        width *= 2
    length = hi - lo + 1
    level = np.floor(np.log2(length)).astype(np.int64)
    out = np.empty(len(lo), dtype=np.int64)
    for k in np.unique(level):
        sel = level == k
        t = table[k]
        a, b = lo[sel], hi[sel] - (1 << int(k)) + 1
        out[sel] = np.minimum(t[a], t[b])
    return out


def compact(offsets: list[int], first: Sequence[int], last: Sequence[int], size: Sequence[int]) -> list[int]:
    """Drops every buffer, in increasing offset, to the lowest offset where it fits."""
    n = len(size)
    out = list(offsets)
    if n == 0:
        return out
    index = _TimeIndex(max(last) + 1)
    for i in range(n):
        if size[i]:
            index.add(i, first[i], last[i])
    mark = [-1] * n
    for i in sorted(range(n), key=lambda i: (out[i], i)):
        s = size[i]
        if s == 0:
            continue
        out[i] = _lowest_fit(_busy(i, first[i], last[i], index, first, last, out, size, mark), s)
    return out


def _lowest_fit(busy: list[tuple[int, int]], s: int) -> int:
    pos = 0
    for o, e in busy:
        if o - pos >= s:
            break
        pos = max(pos, e)
    return pos


def lower_top(
    offsets: list[int],
    first: Sequence[int],
    last: Sequence[int],
    size: Sequence[int],
    bound: int,
    rounds: int = 64,
) -> list[int]:
    """Repeatedly re-places the buffers at the top of the arena lower, while that lowers it."""
    out = list(offsets)
    n = len(size)
    if n == 0:
        return out
    for _ in range(rounds):
        top = arena_size(out, size)
        if top <= bound:
            break
        lifted = [i for i in range(n) if size[i] and out[i] + size[i] == top]
        trial = list(out)
        index = _TimeIndex(max(last) + 1)
        gone = set(lifted)
        for i in range(n):
            if size[i] and i not in gone:
                index.add(i, first[i], last[i])
        mark = [-1] * n
        for i in sorted(lifted, key=lambda i: (-size[i], first[i], i)):
            trial[i] = _lowest_fit(
                _busy(i, first[i], last[i], index, first, last, trial, size, mark), size[i]
            )
            index.add(i, first[i], last[i])
        if arena_size(trial, size) >= top:
            break
        out = compact(trial, first, last, size)
    return out


def repack_top(
    offsets: list[int],
    first: Sequence[int],
    last: Sequence[int],
    size: Sequence[int],
    bound: int,
    *,
    window: int = WINDOW,
    rounds: int = 64,
) -> list[int]:
    """Re-places the buffers at the top of the arena together with their neighbours, in every order.

    The window is the buffers that reach the top plus the largest buffers live
    at the same time as one of them (``window`` buffers in all); the others
    stay where they are.  Orders of the window (all of them up to
    :data:`WINDOW_ORDERS`) are tried with best fit and with lowest fit; the
    first that brings the top down is kept and compacted, and the search goes
    on from there.
    """
    out = list(offsets)
    n = len(size)
    if n == 0:
        return out
    index = _TimeIndex(max(last) + 1)
    for i in range(n):
        if size[i]:
            index.add(i, first[i], last[i])
    for _ in range(rounds):
        top = arena_size(out, size)
        if top <= bound:
            break
        tops = [i for i in range(n) if size[i] and out[i] + size[i] == top]
        if len(tops) > window:
            break
        near = {j for i in tops for j in _meeting(i, index, first, last)}.difference(tops)
        chosen = tops + sorted(near, key=lambda j: (-size[j], first[j], j))[: window - len(tops)]
        trial = _repack(out, chosen, top, index, first, last, size)
        if trial is None:
            break
        out = compact(trial, first, last, size)
    return out


def _meeting(i: int, index: _TimeIndex, first: Sequence[int], last: Sequence[int]) -> list[int]:
    """The indexed buffers other than ``i`` whose intervals meet ``i``'s."""
    f, l = first[i], last[i]
    seen: set[int] = {i}
    ids = []
    for b in range(f >> _SHIFT, (l >> _SHIFT) + 1):
        for j in index.buckets[b]:
            if j not in seen:
                seen.add(j)
                if first[j] <= l and last[j] >= f:
                    ids.append(j)
    return ids


def _repack(
    offsets: list[int],
    chosen: list[int],
    top: int,
    index: _TimeIndex,
    first: Sequence[int],
    last: Sequence[int],
    size: Sequence[int],
) -> list[int] | None:
    """Offsets with ``chosen`` re-placed so that the arena is below ``top``, or ``None``."""
    inside = set(chosen)
    others_top = max(
        (offsets[j] + size[j] for j in range(len(size)) if j not in inside and size[j]), default=0
    )
    if others_top >= top:
        return None
    fixed: dict[int, list[tuple[int, int]]] = {}
    meets: dict[int, list[int]] = {}
    for i in chosen:
        ids = _meeting(i, index, first, last)
        fixed[i] = [(offsets[j], offsets[j] + size[j]) for j in ids if j not in inside and size[j]]
        meets[i] = [j for j in ids if j in inside]
    for order in itertools.islice(itertools.permutations(chosen), WINDOW_ORDERS):
        for fit in (_best_fit, _lowest_fit):
            placed: dict[int, int] = {}
            high = others_top
            for i in order:
                busy = fixed[i] + [(placed[j], placed[j] + size[j]) for j in meets[i] if j in placed]
                busy.sort()
                o = fit(busy, size[i])
                placed[i] = o
                high = max(high, o + size[i])
                if high >= top:
                    break
            else:
                trial = list(offsets)
                for i, o in placed.items():
                    trial[i] = o
                return trial
    return None


def _best_fit(busy: list[tuple[int, int]], s: int) -> int:
    """Pisarchyk & Lee's choice: the smallest gap that fits, else above everything."""
    best, best_gap, prev = -1, -1, 0
    for o, e in busy:
        gap = o - prev
        if gap >= s and (best < 0 or gap < best_gap):
            best, best_gap = prev, gap
        prev = max(prev, e)
    return prev if best < 0 else best


def plan_arena(first: Sequence[int], last: Sequence[int], size: Sequence[int], bound: int) -> ArenaResult:
    """Offsets for buffers ``[first, last]`` of ``size`` bytes: best greedy placement, then improved.

    Args:
        first / last / size: the buffers (steps inclusive; sizes already aligned).
        bound: the most bytes live at one step; the search stops when it gets there.
    """
    by_size = place(size_order(first, size), first, last, size)
    by_breadth = place(breadth_order(first, last, size), first, last, size)
    candidates = {
        "greedy-by-size": arena_size(by_size, size),
        "greedy-by-breadth": arena_size(by_breadth, size),
    }
    if candidates["greedy-by-breadth"] < candidates["greedy-by-size"]:
        algorithm, offsets = "greedy-by-breadth", by_breadth
    else:
        algorithm, offsets = "greedy-by-size", by_size
    best = candidates[algorithm]
    if best > bound:
        improved = lower_top(compact(offsets, first, last, size), first, last, size, bound)
        improved = repack_top(improved, first, last, size, bound)
        offsets, best = _keep_better(offsets, best, improved, size)
    if best > bound and len(size) <= PROMOTE_LIMIT:
        offsets, best = _promote(offsets, best, first, last, size, bound)
    if best < min(candidates.values()):
        algorithm += "+improved"
    logger.debug("arena %d (bound %d): %s, candidates %s", best, bound, algorithm, candidates)
    return ArenaResult(offsets, best, algorithm, candidates)


def _keep_better(
    offsets: list[int], arena: int, trial: list[int], size: Sequence[int]
) -> tuple[list[int], int]:
    a = arena_size(trial, size)
    return (trial, a) if a < arena else (offsets, arena)


def _promote(
    offsets: list[int], arena: int, first: Sequence[int], last: Sequence[int], size: Sequence[int], bound: int
) -> tuple[list[int], int]:
    base = size_order(first, size)
    promoted: list[int] = []
    current = offsets
    for _ in range(PROMOTE_ROUNDS):
        top = arena_size(current, size)
        lifted = sorted(
            (i for i in range(len(size)) if size[i] and current[i] + size[i] == top and i not in promoted),
            key=lambda i: (-size[i], i),
        )
        if not lifted:
            break
        promoted += lifted
        chosen = set(promoted)
        order = promoted + [i for i in base if i not in chosen]
        current = lower_top(
            compact(place(order, first, last, size), first, last, size), first, last, size, bound
        )
        offsets, arena = _keep_better(offsets, arena, current, size)
        if arena <= bound:
            break
    return offsets, arena


def check_placement(
    offsets: Sequence[int], first: Sequence[int], last: Sequence[int], size: Sequence[int]
) -> tuple[int, int] | None:
    """A pair of buffers that are live at once and overlap in bytes, or ``None`` (a sweep over steps)."""
    events = sorted(range(len(size)), key=lambda i: first[i])
    active: list[int] = []
    for i in events:
        if not size[i]:
            continue
        active = [j for j in active if last[j] >= first[i]]
        for j in active:
            if offsets[i] < offsets[j] + size[j] and offsets[j] < offsets[i] + size[i]:
                return (j, i)
        active.append(i)
    return None
