"""Opset 9..12 -> 13 upgrade for per-channel Q/DQ: same numbers on onnxruntime, clear refusals."""

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
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]), opset_imports=[helper.make_opsetid("", 8)])
    with pytest.raises(UnsupportedOpError, match="opset 8.*convert it first"):
        upgrade_opset(kiln.load(model), 13)


def _attrs_net(opset: int):
    """Clip, Pad, Slice and TopK with their pre-opset-11 attributes (TopK's k and Slice's as attributes below 10)."""
    nodes = [
        helper.make_node("Clip", ["x"], ["c"], min=-0.5, max=0.75),
        helper.make_node("Clip", ["c"], ["c2"], max=0.5),  # min absent: an empty input
        helper.make_node("Pad", ["c2"], ["p"], pads=[0, 0, 1, 2, 0, 0, 2, 1], value=0.25),
        helper.make_node("Slice", ["p"], ["s"], starts=[1, 0], ends=[6, 100], axes=[2, 3]) if opset < 10 else
        helper.make_node("Identity", ["p"], ["s"]),
        helper.make_node("Flatten", ["s"], ["f"], axis=1),
        helper.make_node("TopK", ["f"], ["y", "i"], k=5, axis=1) if opset < 10 else helper.make_node("Neg", ["f"], ["y"]),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    return helper.make_model(helper.make_graph(
        nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])], outputs),
        opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("opset", [9, 10])
def test_attributes_that_became_inputs_keep_the_numbers(opset):
    model = _attrs_net(opset)
    g = kiln.load(model)
    assert upgrade_opset(g, 13)
    for node in g:
        assert not {"min", "max", "pads", "value", "starts", "ends", "axes", "k"} & set(node.attrs), node
    clips = [n for n in g if n.op == "Clip"]
    assert clips[1].inputs[1] is None and clips[1].input(2).numpy() == np.float32(0.5)
    out = kiln.to_onnx(g)
    x = np.random.default_rng(0).standard_normal((1, 2, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(run(out, x), run(model, x), rtol=0, atol=0)


@pytest.mark.parametrize("op,inputs,attrs", [
    ("Upsample", ["x", "s"], {"mode": "nearest"}),
    ("Resize", ["x", "s"], {"mode": "nearest"}),
])
def test_ops_replaced_by_other_semantics_are_refused(op, inputs, attrs):
    model = helper.make_model(helper.make_graph(
        [helper.make_node(op, inputs, ["y"], name="up", **attrs)], "m",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [helper.make_tensor("s", TensorProto.FLOAT, [4], [1, 1, 2, 2])]), opset_imports=[helper.make_opsetid("", 10)])
    with pytest.raises(UnsupportedOpError, match=f"{op} at opset 10 cannot be upgraded.*version_converter"):
        upgrade_opset(kiln.load(model), 13)


def test_a_light_zoo_graph_upgrades_and_quantizes(tmp_path):
    """The ONNX model-zoo graphs are opset 9: --int8 upgrades them and the Q/DQ ONNX runs."""
    import subprocess
    import sys

    from zoo import example_inputs, get_model

    path = get_model("light_squeezenet")
    feed = example_inputs("light_squeezenet", seed=1)
    np.save(tmp_path / "calib.npy", np.concatenate([example_inputs("light_squeezenet", seed=s)["data_0"]
                                                     for s in range(2, 6)]))
    proc = subprocess.run([sys.executable, "-m", "kiln", "compile", str(path), "-o", str(tmp_path / "out"), "-q",
                           "--int8", "--calib", str(tmp_path / "calib.npy"), "--calibrator", "minmax"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out" / "light_squeezenet.onnx"
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in __import__("onnx").load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    got = sess.run(None, feed)[0]
    assert got.shape == ref.shape and np.isfinite(got).all()


def test_removed_resize_mode_is_refused():
    model = helper.make_model(helper.make_graph(
        [helper.make_node("Resize", ["x", "", "s"], ["y"], mode="nearest",
                          coordinate_transformation_mode="tf_half_pixel_for_nn")], "m",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [helper.make_tensor("s", TensorProto.FLOAT, [4], [1, 1, 2, 2])]), opset_imports=[helper.make_opsetid("", 11)])
    with pytest.raises(UnsupportedOpError, match="tf_half_pixel_for_nn"):
        upgrade_opset(kiln.load(model), 13)
