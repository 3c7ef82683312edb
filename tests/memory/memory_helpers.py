"""Graphs for the memory-planning tests: a fan-out model that needs the scheduler, IR builders, checks.

(A module of its own, not ``conftest``: other test folders have conftests too.)
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from kiln.ir import DType, Graph, TensorType, Value
from kiln.memory import MemoryPlan
from onnx import TensorProto, helper


def fanout_model(
    branches: int = 6,
    stages: int = 3,
    *,
    breadth_first: bool = True,
    channels: int = 16,
    wide: int = 96,
    narrow: int = 8,
    hw: int = 32,
) -> onnx.ModelProto:
    """A graph built to need memory-aware scheduling.

    Each stage fans its input out into ``branches`` branches, each a 1x1 Conv
    that widens (``channels`` -> ``wide``), a Relu, a 1x1 Conv that narrows
    (``wide`` -> ``narrow``) and a Relu; a Concat joins them and a 1x1 Conv
    brings the channels back.  ``breadth_first`` writes the nodes layer by
    layer (every branch's wide Conv, then every Relu, ...), the order a
    careless exporter might give, in which every wide tensor is live at once;
    run branch by branch, only one is.
    """
    rng = np.random.default_rng(7)
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def weight(name: str, shape: tuple[int, ...]) -> str:
        arr = (rng.standard_normal(shape) * np.sqrt(2.0 / shape[1])).astype(np.float32)
        inits.append(helper.make_tensor(name, TensorProto.FLOAT, shape, arr.tobytes(), raw=True))
        return name

    x = "input"
    for s in range(stages):
        layers: list[list[onnx.NodeProto]] = [[], [], [], []]
        outs = []
        for b in range(branches):
            p = f"s{s}b{b}"
            layers[0].append(
                helper.make_node("Conv", [x, weight(f"{p}_w1", (wide, channels, 1, 1))], [f"{p}_wide"])
            )
            layers[1].append(helper.make_node("Relu", [f"{p}_wide"], [f"{p}_wide_relu"]))
            layers[2].append(
                helper.make_node(
                    "Conv", [f"{p}_wide_relu", weight(f"{p}_w2", (narrow, wide, 1, 1))], [f"{p}_narrow"]
                )
            )
            layers[3].append(helper.make_node("Relu", [f"{p}_narrow"], [f"{p}_out"]))
            outs.append(f"{p}_out")
        if breadth_first:
            for layer in layers:
                nodes.extend(layer)
        else:
            for b in range(branches):
                nodes.extend(layer[b] for layer in layers)
        nodes.append(helper.make_node("Concat", outs, [f"s{s}_cat"], axis=1))
        y = "output" if s == stages - 1 else f"s{s}_out"
        nodes.append(
            helper.make_node(
                "Conv", [f"s{s}_cat", weight(f"s{s}_w3", (channels, narrow * branches, 1, 1))], [y]
            )
        )
        x = y
    graph = helper.make_graph(
        nodes,
        "fanout",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", channels, hw, hw])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", channels, hw, hw])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="kiln-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_fanout(path: Path, **kwargs: object) -> Path:
    onnx.save(fanout_model(**kwargs), path)  # type: ignore[arg-type]
    return path


# ------------------------------------------------------------------------------------------- IR builders


def add_node(
    g: Graph,
    op: str,
    inputs: Sequence[Value],
    shapes: Sequence[tuple[int, ...]],
    *,
    domain: str = "",
    dtype: DType = DType.FLOAT,
    **attrs: object,
) -> list[Value]:
    """A node whose outputs get the given static types (no inference: the planner reads only types)."""
    node = g.create_node(
        op,
        list(inputs),
        attrs,
        domain=domain,
        num_outputs=len(shapes),
        output_types=[TensorType(dtype, tuple(s)) for s in shapes],
        version=1 if domain else None,
    )
    return list(node.outputs)


def inception_ir(blocks: int, *, width: int = 4, depth: int = 3, seed: int = 0) -> Graph:
    """``blocks`` inception-like blocks, each ``width`` branches of up to ``depth`` Conv+Relu and a Concat.

    About ``blocks * (width * (depth + 1) + 2)`` nodes; sizes vary by branch so order matters.  The
    convolutions are ``test.Conv`` nodes (weights left out: the planner reads only types).
    """
    rng = random.Random(seed)
    g = Graph("inception")
    g.opsets[""] = 17
    x = g.add_input("x", TensorType(DType.FLOAT, (1, 16, 16, 16)))
    for _ in range(blocks):
        outs = []
        for b in range(width):
            t = x
            for _ in range(1 + rng.randrange(depth)):
                c = rng.choice((4, 8, 16, 32, 64))
                (t,) = add_node(g, "Conv", [t], [(1, c, 16, 16)], domain="test")
                (t,) = add_node(g, "Relu", [t], [(1, c, 16, 16)])
            outs.append(t)
        channels = sum(v.shape[1] for v in outs)  # type: ignore[index]
        (cat,) = add_node(g, "Concat", outs, [(1, channels, 16, 16)], axis=1)
        (x,) = add_node(g, "Conv", [cat], [(1, 16, 16, 16)], domain="test")
    g.outputs.append(x)
    return g


# ------------------------------------------------------------------------------------------- checks


def check_plan(plan: MemoryPlan) -> None:
    """The plan's own promises, checked from its tensor list alone (as a user of --json could)."""
    assert list(plan.overlaps()) == [], list(plan.overlaps())[:3]
    for t in plan.tensors:
        assert t.offset % plan.alignment == 0 and t.size % plan.alignment == 0
        assert t.size >= t.nbytes and t.first <= t.last and t.end <= plan.arena_bytes
        if t.shares is not None:
            src = plan.tensor(t.shares)
            assert src.offset == t.offset and src.last == t.first and src.size == t.size
    assert plan.lower_bound_bytes <= plan.arena_bytes <= plan.naive_bytes or plan.arena_bytes == 0
    assert plan.lower_bound_bytes == bound_from_tensors(plan)
    assert plan.lower_bound_bytes <= plan.input_lower_bound_bytes


def bound_from_tensors(plan: MemoryPlan) -> int:
    """The most bytes live at one step, recomputed from the tensor list (in-place chains counted once)."""
    steps = len(plan.schedule)
    live = [0] * (steps + 1)
    root: dict[str, str] = {}
    spans: dict[str, list[int]] = {}
    for t in plan.tensors:  # in order of first step
        r = root.get(t.shares, t.shares) if t.shares else t.name
        root[t.name] = r
        span = spans.setdefault(r, [t.first, t.last, t.size])
        span[1] = max(span[1], t.last)
    for first, last, size in spans.values():
        for s in range(first, last + 1):
            live[s] += size
    return max(live, default=0)


# ------------------------------------------------------------------------------------------- random DAGs

_SIZES = (1, 4, 16, 64, 100, 256, 1000)


def random_dag(draw, *, max_nodes: int = 30, single_sink: bool = False) -> Graph:
    """A random DAG (hypothesis ``draw``) of elementwise ops, views, concats and opaque ops.

    Shapes are ``(n,)`` for ``n`` in :data:`_SIZES` (f32), so elementwise
    nodes and views are in-place candidates when their input dies there.
    Graph outputs are the last value and up to three others, so sinks and
    sources can sit anywhere; with ``single_sink``, only node 0 reads the
    graph input and one last node reads every value nothing else reads.
    """
    from hypothesis import strategies as st

    n = draw(st.integers(1, max_nodes))
    g = Graph("random")
    g.opsets[""] = 17
    x = g.add_input("x", TensorType(DType.FLOAT, (draw(st.sampled_from(_SIZES)),)))
    values: list[Value] = [x]
    for i in range(n):
        pool = values if not single_sink or i == 0 else values[1:]
        if not pool:
            pool = values
        near = draw(st.booleans())
        lo = max(0, len(pool) - 4) if near else 0
        picks = draw(st.lists(st.integers(lo, len(pool) - 1), min_size=1, max_size=3))
        ins = [pool[k] for k in picks]
        kind = draw(st.sampled_from(("relu", "add", "reshape", "concat", "op", "op2")))
        first = ins[0].shape[0]  # type: ignore[index]
        if kind == "relu":
            outs = add_node(g, "Relu", ins[:1], [(first,)])
        elif kind == "add":
            outs = add_node(g, "Add", [ins[0], ins[-1]], [(first,)])
        elif kind == "reshape":
            outs = add_node(g, "Reshape", ins[:1], [(1, first)])
        elif kind == "concat":
            total = sum(int(v.type.numel()) for v in ins)  # type: ignore[union-attr]
            outs = add_node(g, "Concat", ins, [(total,)], axis=0)
        elif kind == "op":
            outs = add_node(g, "Op", ins, [(draw(st.sampled_from(_SIZES)),)], domain="test")
        else:
            outs = add_node(
                g,
                "Op2",
                ins,
                [(draw(st.sampled_from(_SIZES)),), (draw(st.sampled_from(_SIZES)),)],
                domain="test",
            )
        values.extend(outs)
    produced = values[1:]
    if single_sink:
        unread = [v for v in produced if not v.uses]
        (out,) = add_node(g, "Join", unread, [(1,)], domain="test")
        g.outputs.append(out)
        return g
    g.outputs.append(produced[-1])
    extra = draw(st.lists(st.sampled_from(produced), max_size=3, unique_by=id))
    for v in extra:
        if not g.is_output(v):
            g.outputs.append(v)
    return g


def flat_shape(v: Value) -> int:
    return int(v.type.numel())  # type: ignore[union-attr]
