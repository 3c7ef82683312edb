"""Opset 11/12 -> 13 upgrade for per-channel Q/DQ: same numbers on onnxruntime, clear refusals."""

from __future__ import annotations

import kiln
import numpy as np
import onnxruntime as ort
import pytest
from calib_models import conv_net, squeeze_net
from kiln.errors import UnsupportedOpError
from kiln.passes.quantize.opset import upgrade_opset
from onnx import TensorProto, helper


def run(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


@pytest.mark.parametrize("opset", [11, 12])
def test_upgrade_keeps_the_numbers(opset):
    model = squeeze_net(opset)
    g = kiln.load(model)
    assert upgrade_opset(g, 13)
    assert g.opsets[""] == 13 and all(n.version == 13 for n in g)
    out = kiln.to_onnx(g)
    assert out.opset_import[0].version == 13
    x = np.random.default_rng(0).standard_normal((1, 2, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(run(out, x), run(model, x), rtol=1e-6, atol=1e-7)
    ops = {n.op: n for n in g}
    assert "axes" not in ops["Squeeze"].attrs and ops["Squeeze"].input(1).numpy().tolist() == [1]
    assert "split" not in ops["Split"].attrs and "Flatten" in ops  # Softmax over axis 2 of 4: flattened
    assert not upgrade_opset(g, 13)


def test_last_axis_softmax_is_kept():
    g = kiln.load(conv_net(11))
    upgrade_opset(g, 13)
    softmax = next(n for n in g if n.op == "Softmax")
    assert softmax.attr("axis") == -1 and softmax.input(0).name == "logits"


def test_old_opsets_are_refused():
    model = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "m",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]), opset_imports=[helper.make_opsetid("", 9)])
    with pytest.raises(UnsupportedOpError, match="opset 9.*convert it first"):
        upgrade_opset(kiln.load(model), 13)


def test_removed_resize_mode_is_refused():
    model = helper.make_model(helper.make_graph(
        [helper.make_node("Resize", ["x", "", "s"], ["y"], mode="nearest",
                          coordinate_transformation_mode="tf_half_pixel_for_nn")], "m",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [helper.make_tensor("s", TensorProto.FLOAT, [4], [1, 1, 2, 2])]), opset_imports=[helper.make_opsetid("", 11)])
    with pytest.raises(UnsupportedOpError, match="tf_half_pixel_for_nn"):
        upgrade_opset(kiln.load(model), 13)
