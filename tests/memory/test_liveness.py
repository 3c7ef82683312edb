"""Liveness: what is in the arena, sizes and alignment, intervals, the in-place rule, the lower bound."""

from __future__ import annotations

import pytest
from kiln.ir import parse_ir
from kiln.memory import MemoryPlanError, plan_memory
from kiln.memory.dataflow import build_dataflow
from kiln.memory.liveness import compute_liveness


def graph(body: str, inputs: str = "%x: f32[1,64]", outputs: str = "%y: f32[1,64]") -> object:
    ret = ", ".join(part.split(":")[0].strip() for part in outputs.split(", ") if part)
    return parse_ir(f"graph @g({inputs}) -> ({outputs}) opsets(onnx=17) {{\n{body}\n  return {ret}\n}}\n")


def live(g, **kw):
    flow = build_dataflow(g, **kw)
    return flow, compute_liveness(flow, range(flow.num_nodes))


def by_name(flow, lv):
    return {v.name: (lv.first[t], lv.last[t], flow.size[t], lv.shares[t]) for t, v in enumerate(flow.values)}


def test_only_node_outputs_that_are_not_graph_outputs_are_in_the_arena():
    g = graph(
        """
  %w = const f32[64,64] #sha1=00000000
  %a: f32[1,64] = onnx.MatMul(%x, %w)
  %y: f32[1,64] = onnx.Sigmoid(%a)"""
    )
    flow, lv = live(g)
    assert [v.name for v in flow.values] == ["a"]  # not %x (input), %w (constant), %y (output)
    assert lv.naive == 256 and lv.bound == 256


def test_sizes_are_rounded_up_to_the_alignment():
    g = graph(
        """
  %a: f32[3] = onnx.Shape(%x)
  %b: u4[3] = onnx.Cast(%a) {to=21}
  %c: bool[5] = onnx.Cast(%b) {to=9}
  %y: f32[1,64] = onnx.Foo(%x, %c)""",
    )
    flow, _ = live(g)
    assert flow.nbytes == [12, 2, 5]
    assert flow.size == [64, 64, 64]
    flow, _ = live(g, alignment=4)
    assert flow.size == [12, 4, 8]
    with pytest.raises(MemoryPlanError, match="alignment"):
        build_dataflow(g, alignment=0)


def test_unknown_size_is_an_error_naming_the_value():
    g = graph(
        "  %a: f32[N,64] = onnx.Relu(%x)\n  %y: f32[N,64] = onnx.Relu(%a)", "%x: f32[N,64]", "%y: f32[N,64]"
    )
    with pytest.raises(MemoryPlanError) as info:
        plan_memory(g)
    assert "%a" in str(info.value) and "f32[N,64]" in str(info.value) and "--input-shape" in str(info.value)
    assert info.value.exit_code == 2


def test_intervals_run_from_producer_to_last_reader_and_unused_outputs_live_one_step():
    g = graph(
        """
  %a: f32[1,64] = onnx.Exp(%x)
  %b: f32[1,64], %mask: bool[1,64] = onnx.Dropout(%a)
  %c: f32[1,64] = onnx.Concat(%x, %x) {axis=0}
  %y: f32[1,64] = onnx.Sum(%a, %b, %c)""",
    )
    flow, lv = live(g, alignment=64)
    names = by_name(flow, lv)
    assert names["a"][:2] == (0, 3)
    assert names["mask"][:2] == (1, 1)  # nothing reads it
    assert names["b"][:2] == (1, 3) and names["c"][:2] == (2, 3)


def test_elementwise_output_takes_over_an_input_dying_at_it():
    g = graph(
        """
  %a: f32[1,64] = onnx.Exp(%x)
  %b: f32[1,64] = onnx.Relu(%a)
  %y: f32[1,64] = onnx.Tanh(%b)""",
    )
    flow, lv = live(g)
    names = by_name(flow, lv)
    assert names["b"][3] == flow.values.index(next(v for v in flow.values if v.name == "a"))
    assert lv.buffer[0] == lv.buffer[1] and lv.bound == 256  # one buffer, 256 bytes, at every step
    assert plan_memory(g).tensor("b").shares == "a"
    off = plan_memory(g, inplace=False)
    assert off.tensor("b").shares is None and off.lower_bound_bytes == 512


def test_no_in_place_when_the_input_is_read_later():
    g = graph(
        """
  %a: f32[1,64] = onnx.Exp(%x)
  %b: f32[1,64] = onnx.Relu(%a)
  %y: f32[1,64] = onnx.Add(%a, %b)""",
    )
    plan = plan_memory(g)
    assert plan.tensor("b").shares is None
    assert plan.tensor("a").offset != plan.tensor("b").offset


def test_no_in_place_over_a_broadcast_input_or_a_cast_of_another_width():
    g = graph(
        """
  %s: f32[1,1] = onnx.ReduceMax(%x) {axes=[1]}
  %a: f32[1,64] = onnx.Exp(%x)
  %b: f32[1,64] = onnx.Add(%s, %a)
  %h: f16[1,64] = onnx.Cast(%b) {to=10}
  %i: i32[1,64] = onnx.Cast(%x) {to=6}
  %j: f32[1,64] = onnx.Cast(%i) {to=1}
  %y: f32[1,64] = onnx.Foo(%h, %j)""",
    )
    plan = plan_memory(g, reorder=False)
    assert plan.tensor("b").shares == "a"  # input 1 has the output's shape; input 0 is broadcast
    assert plan.tensor("h").shares is None  # f32 -> f16 changes the element width
    assert plan.tensor("j").shares == "i"  # i32 -> f32 does not


def test_views_share_their_input_and_graph_outputs_never_do():
    g = graph(
        """
  %a: f32[1,64] = onnx.Exp(%x)
  %shape = const i64[2] dense<[8,8]>
  %b: f32[8,8] = onnx.Reshape(%a, %shape)
  %c: f32[64] = onnx.Flatten(%b) {axis=0}
  %y: f32[64] = onnx.Relu(%c)""",
        outputs="%y: f32[64]",
    )
    plan = plan_memory(g)
    assert plan.tensor("b").shares == "a" and plan.tensor("c").shares == "b"
    assert {t.offset for t in plan.tensors} == {0} and plan.arena_bytes == 256
    assert "y" not in {t.name for t in plan.tensors}


def test_reads_inside_a_subgraph_keep_the_outer_value_live():
    text = """graph @main(%x: f32[4], %c: bool[]) -> (%o: f32[4]) opsets(onnx=17) {
  %a: f32[4] = onnx.Exp(%x)
  %b: f32[4] = onnx.Neg(%x)
  %o: f32[4] = onnx.If(%c) {else_branch=graph @else_b() -> (%b2: f32[4]) {
    %b2: f32[4] = onnx.Identity(%b)
    return %b2
  }, then_branch=graph @then_b() -> (%a: f32[4]) {
    return %a
  }}
  return %o
}
"""
    g = parse_ir(text)
    flow, lv = live(g)
    names = by_name(flow, lv)
    assert names["a"][:2] == (0, 2) and names["b"][:2] == (1, 2)
    assert sorted(flow.preds[2]) == [0, 1]  # the If depends on both, though it reads neither directly
    plan = plan_memory(g)
    assert plan.tensor("a").offset != plan.tensor("b").offset


def test_bound_is_the_widest_step():
    g = graph(
        """
  %a: f32[1,64] = onnx.Exp(%x)
  %b: f32[1,128] = onnx.Concat(%a, %a) {axis=1}
  %c: f32[1,64] = onnx.Slice(%b)
  %y: f32[1,64] = onnx.Add(%c, %a)""",
    )
    _, lv = live(g)
    # step 1: a (256) + b (512); step 2: a + b + c (256); step 3: a + c
    assert list(lv.profile) == [256, 768, 1024, 512]
    assert lv.bound == 1024 and lv.peak_step == 2 and lv.naive == 1024
    plan = plan_memory(g)
    assert plan.peak_step == 2 and set(plan.peak_tensors) == {"a", "b", "c"}
