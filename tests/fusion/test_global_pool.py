"""fuse-global-pool: a global pool + Flatten/Reshape to [N, C] becomes one ReduceMean/ReduceMax."""

from __future__ import annotations

import pytest
from rewrite_helpers import check_rewrite, model_text

SIG = "(float[2,8,5,5] x) => (float[2,8] y)"
SHAPE = "int64[2] shape = {2, 8}"


@pytest.mark.parametrize(
    "body, opset, op",
    [
        ("p = GlobalAveragePool(x)\ny = Flatten(p)", 17, "onnx.ReduceMean"),
        ("p = GlobalMaxPool(x)\ny = Reshape(p, shape)", 13, "onnx.ReduceMax"),
        ("p = AveragePool<kernel_shape=[5,5]>(x)\ny = Reshape(p, shape)", 9, "onnx.ReduceMean"),
        ("p = MaxPool<kernel_shape=[5,5]>(x)\ny = Flatten(p)", 12, "onnx.ReduceMax"),
        ("p = ReduceMean<axes=[2,3]>(x)\ny = Flatten(p)", 13, "onnx.ReduceMean"),
        ("p = ReduceMean(x, axes)\ny = Reshape(p, shape)", 18, "onnx.ReduceMean"),
    ],
)
def test_pool_and_flatten_become_one_reduction(body: str, opset: int, op: str) -> None:
    inits = [SHAPE, "int64[2] axes = {-2, -1}"]
    g, _ = check_rewrite(model_text(SIG, inits, body, opset=opset), "fuse-global-pool",
                         fired_exactly={"global-pool-flatten-to-reduce": 1}, ops=[op])
    node = next(iter(g))
    assert node.attr("keepdims") == 0


@pytest.mark.parametrize(
    "body, why",
    [
        ("p = AveragePool<kernel_shape=[3,3]>(x)\ny = Flatten(p)", "a window, not the whole input"),
        ("p = AveragePool<kernel_shape=[5,5], pads=[1,1,1,1]>(x)\nz = Flatten(p)\ny = Slice(z, s0, s1, s2)",
         "padded: the mean would count zeros"),
        ("p = ReduceMean<axes=[3]>(x)\nz = Flatten(p)\ny = Slice(z, s0, s3, s2)", "not every spatial axis"),
        ("p = GlobalAveragePool(x)\nq = Flatten(p)\nr = Relu(p)\nf = Flatten(r)\ny = Add(q, f)", "pool read twice"),
    ],
)
def test_near_misses_stay(body: str, why: str) -> None:
    inits = [SHAPE, "int64[1] s0 = {0}", "int64[1] s1 = {8}", "int64[1] s2 = {1}", "int64[1] s3 = {40}"]
    text = model_text(SIG, inits, body, opset=13)
    check_rewrite(text, "fuse-global-pool", fired_exactly={})


def test_refusal_reason_is_given(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    import kiln
    from kiln.passmanager import PassContext
    from rewrite_helpers import parse_model

    text = model_text(SIG, [SHAPE], "p = AveragePool<kernel_shape=[3,3], strides=[5,5]>(x)\ny = Flatten(p)", opset=13)
    graph = kiln.load(parse_model(text))
    ctx = PassContext(debug_rules=True)
    with caplog.at_level(logging.INFO):
        kiln.optimize(graph, pipeline="fuse-global-pool", ctx=ctx)
    assert "the pool's kernel is not the whole unpadded input" in caplog.text
    assert [n.op for n in graph] == ["AveragePool", "Flatten"]
