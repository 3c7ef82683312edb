"""The float32-island search shared by the float16 weight storage of NCNN and TFLite."""

from __future__ import annotations

import kiln
import numpy as np
from kiln.quant.islands import fewest_sensitive, onnxruntime_islands
from onnx import TensorProto, helper, numpy_helper


def test_nothing_kept_when_all_float16_is_within_budget() -> None:
    assert fewest_sensitive(range(5), lambda fp16: 1e-4 * len(fp16), budget=1e-3) == set()


def test_the_fewest_most_sensitive_are_kept() -> None:
    cost = {0: 1e-4, 1: 5e-2, 2: 2e-4, 3: 3e-2, 4: 1e-4}  # additive errors; 1 and 3 spoil the output
    calls = []

    def error(fp16: set[int]) -> float:
        calls.append(frozenset(fp16))
        return sum(cost[i] for i in fp16)

    assert fewest_sensitive(sorted(cost), error, budget=1e-3) == {1, 3}
    assert fewest_sensitive([], error) == set()


def test_all_kept_when_nothing_else_helps() -> None:
    assert fewest_sensitive([0, 1], lambda fp16: 1.0 if fp16 else 0.0, budget=1e-3) == {0, 1}


def test_onnxruntime_finds_the_weight_that_float16_spoils() -> None:
    """y = (x @ A) - (x @ B) with A and B equal up to below float16's resolution: rounding one of them alone
    turns the tiny difference into noise, so one of the two is kept; a third, harmless weight is not."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((8, 8)).astype(np.float32)
    b = a + np.float32(1e-4) * rng.standard_normal((8, 8)).astype(np.float32)
    c = np.ones((8,), np.float32)
    nodes = [helper.make_node("MatMul", ["x", "a"], ["p"]), helper.make_node("MatMul", ["x", "b"], ["q"]),
             helper.make_node("Sub", ["p", "q"], ["d"]), helper.make_node("Mul", ["d", "c"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])],
                              [numpy_helper.from_array(v, n) for n, v in (("a", a), ("b", b), ("c", c))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    kept = onnxruntime_islands(kiln.load(model))
    assert len(kept) in (1, 2) and kept <= {"a", "b"}


def test_ppocr_det_needs_float32_weights(caplog) -> None:
    """PP-OCRv4 det does not tolerate float16 weights (all of them rounded: rel err 0.19 on a text page, pnnx's
    fp16 file gives 1.0): the search keeps what it needs and says how much, in one warning."""
    import logging

    import zoo

    graph = kiln.load(str(zoo.get_model("ppocr_det")), input_shapes={"x": (1, 3, 320, 320)})
    kiln.optimize(graph, pipeline="O2")
    with caplog.at_level(logging.WARNING, logger="kiln"):
        kept = onnxruntime_islands(graph)
    assert kept
    assert any("stay float32" in r.getMessage() and "of 135 weight tensors" in r.getMessage() for r in caplog.records)
