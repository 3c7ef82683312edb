"""The memory-aware scheduler on graphs built to need it, and the streams it leaves."""

from __future__ import annotations

from pathlib import Path

import kiln
import numpy as np
import pytest
from kiln.memory import apply_memory_plan, plan_memory
from kiln.memory.dataflow import build_dataflow
from kiln.memory.liveness import compute_liveness
from kiln.memory.schedule import cuts, is_topological, schedule
from memory_helpers import check_plan, fanout_model, inception_ir, write_fanout

SHAPES = {"input": (1, 16, 32, 32)}


@pytest.fixture(scope="module")
def fanout_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fanout(tmp_path_factory.mktemp("fanout") / "fanout.onnx")


def load(path: Path) -> kiln.ir.Graph:
    return kiln.load(str(path), input_shapes=SHAPES)


def test_fanout_needs_the_scheduler(fanout_path):
    plan = plan_memory(load(fanout_path))
    check_plan(plan)
    # breadth first, all six 96-channel tensors (384 KiB each) are live at once; branch by branch, one is
    assert plan.input_lower_bound_bytes == 2424832
    assert plan.lower_bound_bytes == 622592
    assert plan.arena_bytes == plan.lower_bound_bytes
    assert plan.input_arena_bytes >= plan.input_lower_bound_bytes
    s = plan.scheduler
    assert s is not None and s.regions == 3 and s.exact == 3 and s.heuristic == 0 and s.improved == 3
    assert plan.reordered and s.moved > 0
    # the planned order runs one branch to its end before starting the next
    steps = {name: i for i, name in enumerate(plan.schedule)}
    assert steps["s0b0_narrow"] < steps["s0b1_wide"]


def test_an_order_that_is_already_best_is_left_alone(tmp_path):
    g = load(write_fanout(tmp_path / "depth_first.onnx", breadth_first=False))
    plan = plan_memory(g)
    assert not plan.reordered and plan.scheduler is not None and plan.scheduler.moved == 0
    assert plan.lower_bound_bytes == plan.input_lower_bound_bytes == 622592


def test_heuristic_alone_also_finds_it(fanout_path):
    plan = plan_memory(load(fanout_path), exact_states=0)
    assert plan.scheduler is not None and plan.scheduler.heuristic == 3 and plan.scheduler.exact == 0
    assert plan.lower_bound_bytes == 622592


def test_reordering_keeps_the_results(fanout_path, tmp_path):
    import onnxruntime as ort

    g = load(fanout_path)
    _, changed = apply_memory_plan(g)
    assert changed
    out = tmp_path / "planned.onnx"
    kiln.save(g, str(out))
    x = np.random.default_rng(0).standard_normal((1, 16, 32, 32)).astype(np.float32)
    ref = ort.InferenceSession(str(fanout_path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[
        0
    ]
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    import onnx

    names = [n.output[0] for n in onnx.load(str(out)).graph.node]
    assert tuple(names) == g.meta["memory_plan"].schedule  # the file is written in the planned order


def test_cuts_of_a_chain_and_of_a_fork():
    g = inception_ir(1, width=1, depth=1)
    flow = build_dataflow(g)
    assert all(cuts(flow, range(flow.num_nodes)))
    g = inception_ir(1, width=3, depth=1)
    flow = build_dataflow(g)
    is_cut = cuts(flow, range(flow.num_nodes))
    assert (
        not any(is_cut[:-2]) and is_cut[-1] and is_cut[-2]
    )  # the branches are free; Concat and Conv are cuts


def test_schedule_is_deterministic_and_valid_on_many_blocks():
    g = inception_ir(40)
    flow = build_dataflow(g)
    first, second = schedule(flow), schedule(flow)
    assert first.order == second.order and is_topological(flow, first.order)
    assert first.peak == compute_liveness(flow, first.order).bound <= first.input_peak
    assert first.exact == first.regions == 40 and first.heuristic == 0


def test_fanout_model_is_valid_onnx():
    fanout_model(branches=2, stages=1)  # the builder runs the checker


def test_a_node_nothing_reads_moves_to_where_memory_is_low():
    from kiln.ir import parse_ir

    g = parse_ir(
        """graph @g(%x: f32[256]) -> (%y: f32[256], %h: f32[1])
    opsets(onnx=17) {
  %a: f32[256] = test.A(%x) v=1
  %b: f32[1024] = test.B(%a) v=1
  %h: f32[1], %scratch: f32[512] = test.Head(%a) v=1
  %c: f32[256] = test.C(%b) v=1
  %y: f32[256] = test.D(%c) v=1
  return %y, %h
}
"""
    )
    plan = plan_memory(g)
    # the head (a graph output, plus 2 KiB nothing reads) runs before %b is made, not beside it
    assert plan.input_lower_bound_bytes == 1024 + 4096 + 2048
    assert plan.schedule[:3] == ("a", "h", "b") and plan.lower_bound_bytes == 1024 + 4096
