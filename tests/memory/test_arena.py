"""The arena planner: greedy by size, greedy by breadth, local improvement, validity."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from kiln.memory.arena import (
    arena_size,
    breadth_order,
    check_placement,
    compact,
    place,
    plan_arena,
    repack_top,
    size_order,
)
from kiln.memory.liveness import live_profile


def bound(first, last, size):
    return int(live_profile(first, last, size, max(last) + 1).max()) if size else 0


def test_greedy_by_size_fills_the_best_gap():
    # A (256 B) lives 0..2, B 0..0, C 2..3, D (128 B) 3..3: D reuses A's bytes, B and C sit above A
    first, last, size = [0, 0, 2, 3], [2, 0, 3, 3], [256, 64, 64, 128]
    assert size_order(first, size) == [0, 3, 1, 2]
    offsets = place(size_order(first, size), first, last, size)
    assert offsets == [0, 256, 256, 0]
    assert check_placement(offsets, first, last, size) is None
    assert arena_size(offsets, size) == bound(first, last, size) == 320


def test_greedy_by_breadth_places_the_widest_step_first():
    first, last, size = [0, 1, 2, 2], [1, 2, 3, 3], [64, 192, 64, 128]
    order = breadth_order(first, last, size)
    # step 2 is the widest (192 + 64 + 128): its buffers come first, largest first
    assert order[:3] == [1, 3, 2]
    offsets = place(order, first, last, size)
    assert check_placement(offsets, first, last, size) is None


def test_improvement_reaches_the_bound_where_both_greedy_placements_miss_it():
    # the DenseNet-121 concat chain around its widest step (light_densenet121 at -O2, steps 23..56)
    first = [23, 29, 30, 31, 34, 36, 37, 38, 41, 43, 44, 48, 49, 50]
    last = [30, 30, 37, 34, 36, 37, 44, 41, 43, 44, 48, 49, 56, 53]
    size = [
        2007040,
        401408,
        2408448,
        2408448,
        1605632,
        401408,
        2809856,
        2809856,
        1605632,
        401408,
        3211264,
        1605632,
        401408,
        401408,
    ]
    lower = bound(first, last, size)
    by_size = arena_size(place(size_order(first, size), first, last, size), size)
    by_breadth = arena_size(place(breadth_order(first, last, size), first, last, size), size)
    assert min(by_size, by_breadth) > lower
    result = plan_arena(first, last, size, lower)
    assert result.arena == lower and result.algorithm.endswith("+improved")
    assert check_placement(result.offsets, first, last, size) is None
    assert result.candidates == {"greedy-by-size": by_size, "greedy-by-breadth": by_breadth}


def test_compaction_and_repacking_never_raise_the_arena():
    first, last, size = [0, 0, 1, 2], [1, 0, 2, 2], [64, 64, 64, 64]
    spread = [0, 512, 1024, 2048]
    assert check_placement(spread, first, last, size) is None
    packed = compact(spread, first, last, size)
    assert arena_size(packed, size) == bound(first, last, size) == 128
    assert repack_top(packed, first, last, size, 128) == packed


def test_empty_and_zero_sized():
    assert plan_arena([], [], [], 0).arena == 0
    result = plan_arena([0, 0], [1, 1], [0, 64], 64)
    assert result.arena == 64 and result.offsets[0] == 0


def test_check_placement_finds_an_overlap():
    assert check_placement([0, 32], [0, 1], [1, 2], [64, 64]) == (0, 1)
    assert check_placement([0, 0], [0, 2], [1, 3], [64, 64]) is None  # never live together


@st.composite
def intervals(draw):
    n = draw(st.integers(1, 40))
    steps = draw(st.integers(1, 30))
    first = [draw(st.integers(0, steps - 1)) for _ in range(n)]
    last = [f + draw(st.integers(0, steps - 1 - f)) for f in first]
    size = [64 * draw(st.sampled_from([0, 1, 2, 3, 5, 8, 13, 40])) for _ in range(n)]
    return first, last, size


@settings(max_examples=150, deadline=None)
@given(intervals())
def test_placements_are_valid_and_between_bound_and_naive(case):
    first, last, size = case
    lower = bound(first, last, size)
    result = plan_arena(first, last, size, lower)
    assert check_placement(result.offsets, first, last, size) is None
    assert lower <= result.arena <= sum(size)
    assert result.arena == arena_size(result.offsets, size)
    assert result.arena <= min(result.candidates.values())
