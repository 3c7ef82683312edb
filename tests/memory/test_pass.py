"""The plan-memory pass: the plan on the graph, offsets in the text IR, changed only on change, streams."""

from __future__ import annotations

import kiln
import pytest
from kiln.errors import ParseError
from kiln.ir import parse_ir, print_ir, verify
from kiln.memory import MemoryPlan, aux_stream_count, current_plan
from kiln.memory.dataflow import build_dataflow
from kiln.memory.streams import analyze_streams
from kiln.passmanager.manager import PassManager
from kiln.passmanager.registry import available_passes
from memory_helpers import check_plan, inception_ir, write_fanout

TEXT = """graph @g(%x: f32[1,64]) -> (%y: f32[1,64])
    opsets(onnx=17) {
  %a: f32[1,256] = test.Widen(%x) v=1
  %b: f32[1,64] = test.Narrow(%a) v=1
  %c: f32[1,256] = test.Widen(%x) v=1
  %d: f32[1,64] = test.Narrow(%c) v=1
  %e: f32[1,64] = onnx.Relu(%d)
  %y: f32[1,64] = onnx.Add(%b, %e)
  return %y
}
"""


def run(g, pipeline="plan-memory"):
    return PassManager(pipeline).run(g)


def test_the_pass_is_registered_with_its_options():
    info = next(i for i in available_passes() if i.name == "plan-memory")
    keys = {o.key for o in info.options()}
    assert {"alignment", "reorder", "inplace", "exact-states", "max-streams"} <= keys


def test_plan_on_the_graph_and_offsets_on_the_values():
    g = parse_ir(TEXT)
    report = run(g)
    assert report.changed
    plan = g.meta["memory_plan"]
    assert isinstance(plan, MemoryPlan) and current_plan(g) is plan
    check_plan(plan)
    for node in g:
        for v in node.outputs:
            if v.name == "y":
                assert "arena_offset" not in v.meta  # graph outputs are outside the arena
            else:
                assert v.meta["arena_offset"] == plan.tensor(v.name).offset
    # the first wide tensor is narrowed before the second is made: a, b, c, d, e, y already is the best order
    assert [n.outputs[0].name for n in g] == ["a", "b", "c", "d", "e", "y"]
    # widest while %d is made: %b (256 B), %c (1024 B) and %d (256 B)
    assert plan.lower_bound_bytes == 1536 and plan.arena_bytes == plan.lower_bound_bytes
    assert plan.peak_tensors == ("b", "c", "d") and plan.tensor("e").shares == "d"


def test_changed_only_when_something_changed():
    g = parse_ir(TEXT)
    assert run(g).changed
    plan = g.meta["memory_plan"]
    assert not run(g).changed and g.meta["memory_plan"] is plan
    assert run(g, "plan-memory{alignment=256}").changed
    assert g.meta["memory_plan"].alignment == 256 and g.meta["memory_plan"] is not plan
    assert not run(g, "plan-memory{alignment=256}").changed


def test_reorder_false_plans_the_order_as_it_is(tmp_path):
    g = kiln.load(str(write_fanout(tmp_path / "f.onnx")), input_shapes={"input": (1, 16, 32, 32)})
    before = [n.outputs[0].name for n in g]
    run(g, "plan-memory{reorder=false}")
    assert [n.outputs[0].name for n in g] == before
    plan = g.meta["memory_plan"]
    assert plan.scheduler is None and not plan.reordered
    assert plan.lower_bound_bytes == plan.input_lower_bound_bytes == 2424832
    run(g, "plan-memory")
    assert [n.outputs[0].name for n in g] != before
    plan = g.meta["memory_plan"]
    verify(g)
    # planned once in the ONNX order already: the comparison stays with that order
    assert plan.lower_bound_bytes == 622592 and plan.input_lower_bound_bytes == 2424832


def test_offsets_print_and_parse_back():
    g = parse_ir(TEXT)
    run(g)
    text = print_ir(g)
    assert "%a: f32[1,256] offset=" in text and "%y: f32[1,64] = onnx.Add" in text
    again = parse_ir(text)
    assert print_ir(again) == text
    for node in again:
        for v in node.outputs:
            if v.name != "y":
                assert v.meta["arena_offset"] == g.meta["memory_plan"].tensor(v.name).offset
    # the plan itself is not in the text, so the parsed graph has none, and current_plan says so
    assert current_plan(again) is None


@pytest.mark.parametrize(
    "text, message",
    [
        ("graph @g(%x: f32[1] offset=0) -> (%x: f32[1]) {\n  return %x\n}\n", "expected"),
        (
            "graph @g() -> (%c: f32[1]) {\n  %c offset=0 = const f32[1] dense<1.0>\n  return %c\n}\n",
            "a constant has no arena offset",
        ),
        (
            "graph @g(%x: f32[1]) -> (%y: f32[1]) {\n  %y: f32[1] offset=-64 = onnx.Relu(%x)\n  return %y\n}\n",
            "cannot be negative",
        ),
    ],
)
def test_offset_syntax_errors(text, message):
    with pytest.raises(ParseError, match=message):
        parse_ir(text)


def test_untyped_and_multi_output_offsets_round_trip():
    text = """graph @g(%x: f32[4]) -> (%z)
    opsets(onnx=17) {
  %a offset=0, %b: f32[2] offset=64 = onnx.Split(%x)
  %z = onnx.Concat(%a, %b) {axis=0}
  return %z
}
"""
    g = parse_ir(text)
    assert [v.meta for v in next(iter(g)).outputs] == [{"arena_offset": 0}, {"arena_offset": 64}]
    assert print_ir(g) == text


def test_a_stale_plan_is_detected():
    g = parse_ir(TEXT)
    run(g)
    assert current_plan(g) is not None
    nodes = list(g)
    first, third = nodes[0], nodes[2]  # the two independent Widen nodes
    g.move_before(third, first)
    assert current_plan(g) is None and aux_stream_count(g) is None


def test_streams_of_a_fork_and_the_tensorrt_aux_stream_count():
    g = inception_ir(3, width=4, depth=2)
    run(g)
    plan = g.meta["memory_plan"]
    assert plan.streams is not None and plan.streams.exact
    assert plan.streams.width == 4 and plan.streams.streams == 4
    assert aux_stream_count(g) == 3 == plan.aux_streams
    assert all(len(a) == 4 for a in plan.streams.antichains)
    g2 = inception_ir(3, width=4, depth=2)
    run(g2, "plan-memory{max-streams=2}")
    assert g2.meta["memory_plan"].streams.streams == 2 and aux_stream_count(g2) == 1


def test_a_chain_has_one_stream():
    g = inception_ir(5, width=1, depth=2)
    flow = build_dataflow(g)
    streams = analyze_streams(flow, range(flow.num_nodes))
    assert streams.width == 1 and streams.aux_streams == 0 and streams.cross_stream_edges == 0
    assert set(streams.assignment) == {0}


def test_ir_in_plan_out():
    """IR in, ``plan-memory``, IR out: the breadth-first order is fixed and every offset printed."""
    source = """graph @g(%x: f32[1,64]) -> (%y: f32[1,64])
    opsets(onnx=17) {
  %a: f32[1,256] = test.Widen(%x) v=1
  %c: f32[1,256] = test.Widen(%x) v=1
  %b: f32[1,64] = test.Narrow(%a) v=1
  %d: f32[1,64] = test.Narrow(%c) v=1
  %e: f32[1,64] = onnx.Relu(%d)
  %y: f32[1,64] = onnx.Add(%b, %e)
  return %y
}
"""
    expected = """graph @g(%x: f32[1,64]) -> (%y: f32[1,64])
    opsets(onnx=17) {
  %a: f32[1,256] offset=0 = test.Widen(%x) v=1
  %b: f32[1,64] offset=1024 = test.Narrow(%a) v=1
  %c: f32[1,256] offset=0 = test.Widen(%x) v=1
  %d: f32[1,64] offset=1280 = test.Narrow(%c) v=1
  %e: f32[1,64] offset=1280 = onnx.Relu(%d)
  %y: f32[1,64] = onnx.Add(%b, %e)
  return %y
}
"""
    g = parse_ir(source)
    assert run(g).changed
    assert print_ir(g) == expected
    plan = g.meta["memory_plan"]
    assert plan.input_lower_bound_bytes == 2048 + 256 and plan.lower_bound_bytes == 1536
