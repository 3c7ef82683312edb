"""The int8 report (tensor, layer and output SQNR on calibration samples), ``min-sqnr`` mixed precision, and
reusing a table that kept layers in float."""

from __future__ import annotations

import json
import logging

import kiln
import numpy as np
import onnxruntime as ort
import pytest
from calib_models import conv_net, one_conv, samples
from kiln.calib import CalibrationConfig, read_json
from kiln.calib.calibrators import TensorRange
from kiln.calib.table import CalibrationResult, LayerInfo
from kiln.driver.cli import main
from kiln.ir import print_ir
from kiln.passmanager import PassContext, PassManager
from kiln.quant import fake_quantize, quantize_activation, sqnr_db


def quantized(pipeline: str, data=None, model=None):
    g = kiln.load(model or conv_net())
    ctx = PassContext(calibration=data if data is not None else CalibrationConfig(samples(32)))
    PassManager(pipeline).run(g, ctx)
    return g, ctx.extra["calibration"]


def run(model, x: np.ndarray) -> np.ndarray:
    blob = kiln.to_onnx(model).SerializeToString() if isinstance(model, kiln.ir.Graph) else model.SerializeToString()
    sess = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def test_report_covers_every_quantized_layer_and_tensor():
    g, result = quantized("quantize")
    assert set(result.layer_sqnr) == set(result.layers)
    quantized_inputs = {t for info in result.layers.values() for t in info.inputs}
    assert quantized_inputs <= set(result.tensor_sqnr)
    assert all(np.isfinite(v) and v > 10 for v in result.layer_sqnr.values())
    assert result.layer_samples == 8 and result.probe_samples == 8
    # The output SQNR is the written model's, on the first 8 calibration samples (32 with min-sqnr).
    first = samples(32)[:8]
    assert result.output_sqnr == pytest.approx(sqnr_db(run(conv_net(), first), run(g, first)), abs=0.05)
    text = result.report()
    assert "output SQNR" in text and f"the {min(10, len(result.layers))} worst layers" in text
    worst = result.worst_layers(3)
    assert [db for _, db in worst] == sorted(db for _, db in worst)
    assert text.index(worst[0][0]) < text.index(worst[1][0])


def test_layer_and_tensor_sqnr_equal_a_numpy_simulation():
    """One Conv: the report's figures are numpy's SQNR of fake-quantized input and weight, on the same samples."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((4, 2, 1, 1)).astype(np.float32)
    model = one_conv(w)
    data = (rng.standard_normal((8, 2, 3, 3)) * np.array([1, 5], np.float32)[None, :, None, None]).astype(np.float32)
    _, result = quantized("quantize{calibrator=percentile percentile=90}", CalibrationConfig(data), model)
    scale = np.float32(result.ranges["x"].scale)
    xq = quantize_activation(data, scale)
    want_tensor = sqnr_db(data, xq)
    y = np.einsum("nchw,oc->nohw", data, w[:, :, 0, 0])
    yq = np.einsum("nchw,oc->nohw", xq, fake_quantize(w, 0)[:, :, 0, 0])
    assert result.tensor_sqnr["x"] == pytest.approx(want_tensor, abs=0.05)
    assert result.layer_sqnr["conv"] == pytest.approx(sqnr_db(y, yq), abs=0.05)
    assert result.output_sqnr == pytest.approx(sqnr_db(y, yq), abs=0.05)
    assert result.tensor_sqnr["x"] < 30  # 90th percentile clips: the figure must show it


def test_weights_alone_equal_a_numpy_simulation():
    """The weights-alone figure: the output with only the int8 weights (per-channel absmax/127), x in float."""
    rng = np.random.default_rng(4)
    w = rng.standard_normal((4, 2, 1, 1)).astype(np.float32)
    w[0, 0, 0, 0] = 40.0  # one large weight: that channel's scale leaves its other weight coarse
    model = one_conv(w)
    data = rng.standard_normal((8, 2, 3, 3)).astype(np.float32)
    _, result = quantized("quantize", CalibrationConfig(data), model)
    y = np.einsum("nchw,oc->nohw", data, w[:, :, 0, 0])
    yw = np.einsum("nchw,oc->nohw", data, fake_quantize(w, 0)[:, :, 0, 0])
    assert result.weights_sqnr == pytest.approx(sqnr_db(y, yw), abs=0.05)
    assert result.output_sqnr < result.weights_sqnr  # quantizing x as well only adds noise here
    assert json.loads(result.to_json())["weights_sqnr_db"] == pytest.approx(result.weights_sqnr)
    assert f"int8 weights alone (every activation float): {result.weights_sqnr:.1f} dB on 8 samples" in \
        result.report()


def test_poor_weights_are_named_in_the_warning(caplog):
    """When the weights alone are already poor, the warning says so and points at mixed precision, not at
    another calibrator."""
    w = np.full((2, 2, 1, 1), 0.4, np.float32)
    w[:, 0] = 100.0  # each channel's scale (100/127) rounds its 0.4 weight to 1 step: 0.79
    data = np.random.default_rng(5).standard_normal((8, 2, 3, 3)).astype(np.float32) * np.float32([0.01, 1])[
        None, :, None, None]
    with caplog.at_level(logging.WARNING, logger="kiln"):
        _, result = quantized("quantize", CalibrationConfig(data), one_conv(w))
    assert result.weights_sqnr < 20
    assert "the int8 weights alone, every activation float, give" in caplog.text
    assert "--min-sqnr DB or --skip-layers" in caplog.text and "Try another --calibrator" not in caplog.text


@pytest.mark.parametrize("opset", [13, 18])  # ReduceMax takes its axes as an attribute, then as an input
def test_channel_spread_is_the_widest_input_channel_over_the_median(opset):
    rng = np.random.default_rng(2)
    w = rng.standard_normal((4, 4, 1, 1)).astype(np.float32)
    model = one_conv(w)
    model.opset_import[0].version = opset
    scales = np.array([1, 2, 3, 40], np.float32)
    data = (rng.standard_normal((8, 4, 3, 3)) * scales[None, :, None, None]).astype(np.float32)
    _, result = quantized("quantize", CalibrationConfig(data), model)
    per_channel = np.abs(data).max(axis=(0, 2, 3))
    assert result.channel_spread["x"] == pytest.approx(per_channel.max() / np.median(per_channel), rel=1e-5)
    assert result.channel_spread["x"] > 8
    text = result.report()
    assert "ch spread" in text and "conv (" in text.splitlines()[-1] and "--min-sqnr" in text.splitlines()[-1]
    assert json.loads(result.to_json())["activations"]["x"]["channel_spread"] == pytest.approx(
        result.channel_spread["x"])
    _, even = quantized("quantize", CalibrationConfig(rng.standard_normal((8, 4, 3, 3)).astype(np.float32)), model)
    assert even.channel_spread["x"] < 2 and "ch spread:" not in even.report()


def test_channel_spread_of_a_matmul_is_over_its_features():
    """MatMul reduces over its first input's last axis: the spread is across features, not time steps."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    w = rng.standard_normal((6, 5)).astype(np.float32)
    model = helper.make_model(helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "m",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 7, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 7, 5])],
        [numpy_helper.from_array(w, "w")]), opset_imports=[helper.make_opsetid("", 13)])
    data = (rng.standard_normal((8, 7, 6)) * np.array([1, 1, 1, 1, 1, 30], np.float32)).astype(np.float32)
    _, result = quantized("quantize", CalibrationConfig(data), model)
    per_feature = np.abs(data).max(axis=(0, 1))
    assert result.channel_spread["x"] == pytest.approx(per_feature.max() / np.median(per_feature), rel=1e-5)


def test_channel_spread_leaves_out_dead_channels():
    from kiln.passes.quantize.sensitivity import channel_spread

    assert channel_spread(np.array([0.0, 0.0, 2.0, 4.0, 6.0])) == pytest.approx(1.5)
    assert channel_spread(np.array([0.0, 3.0])) is None


def test_worst_layers_and_report_order():
    result = CalibrationResult("entropy", 4, output_sqnr=12.5, probe_samples=4)
    for name, db in (("a", 30.0), ("b", 3.0), ("c", 17.0)):
        result.layers[name] = LayerInfo("Conv", (f"{name}_in",), None)
        result.ranges[f"{name}_in"] = TensorRange(1.0, -1.0, 2.0, 10)
        result.layer_sqnr[name] = db
        result.tensor_sqnr[f"{name}_in"] = db + 1
    assert [n for n, _ in result.worst_layers(2)] == ["b", "c"]
    lines = result.report().splitlines()
    assert "output SQNR 12.5 dB" in lines[0] and "3 layers quantized" in lines[0]
    assert [line.split()[0] for line in lines[3:]] == ["b", "c", "a"]
    assert json.loads(result.to_json())["layers"]["b"]["sqnr_db"] == 3.0
    assert CalibrationResult("entropy", 4).report() == ""  # nothing measured: no report


def test_poor_output_warns_with_the_worst_layers(caplog):
    data = samples(32)
    cfg = CalibrationConfig(data)
    with caplog.at_level(logging.WARNING, logger="kiln"):
        # 50th percentile clips half of every activation: the output is far from float.
        _, result = quantized("quantize{calibrator=percentile percentile=50}", cfg)
    assert result.output_sqnr < 20
    message = " ".join(r.getMessage() for r in caplog.records)
    assert "int8: output SQNR" in message and result.worst_layers(1)[0][0] in message


def test_min_sqnr_keeps_the_fewest_most_sensitive_layers():
    _, full = quantized("quantize{calibrator=minmax}")
    _, full32 = quantized("quantize{calibrator=minmax sensitivity-samples=32}")
    target = full32.output_sqnr + 6
    _g, result = quantized(f"quantize{{calibrator=minmax min-sqnr={target:.2f}}}")
    assert result.kept_float and len(result.kept_float) < len(result.sensitivity)
    assert result.output_sqnr >= target and result.probe_samples == 32 and result.layer_samples == 8
    ranking = sorted(result.sensitivity, key=lambda k: (result.sensitivity[k], k))
    assert set(result.kept_float) == set(ranking[: len(result.kept_float)])
    assert set(result.kept_float).isdisjoint(result.layers)
    # One fewer float layer misses the target: the set is the smallest prefix of the ranking that reaches it.
    probe_g = kiln.load(conv_net())
    from kiln.passes.quantize.placement import plan_quantization
    from kiln.passes.quantize.sensitivity import QuantProbe

    plan = plan_quantization(probe_g)
    ranges = kiln.calib.calibrate(probe_g, samples(32), "minmax").ranges
    probe = QuantProbe(probe_g, ranges, CalibrationConfig(samples(32)), check_samples=32)
    # The patched copies quantize as the written model does: the same figure for the same layers.
    assert probe.output_sqnr(plan.layers) == pytest.approx(full.output_sqnr, abs=0.01)  # both on 8 samples
    fewer = set(ranking[: len(result.kept_float) - 1])
    assert probe.output_sqnr([layer for layer in plan.layers if layer.name not in fewer], check=True) < target
    # A target the fully quantized model already meets keeps nothing in float.
    _, easy = quantized(f"quantize{{calibrator=minmax min-sqnr={full32.output_sqnr - 3:.2f}}}")
    assert easy.kept_float == [] and set(easy.layers) == set(full.layers)


def test_min_sqnr_out_of_reach_keeps_everything_float_and_says_so(caplog):
    with caplog.at_level(logging.WARNING, logger="kiln"):
        g, result = quantized("quantize{min-sqnr=150}")
    assert len(result.kept_float) == 7 and not result.layers
    assert not [n for n in g if n.op == "QuantizeLinear"]
    assert "keeps all 7 layers in float" in caplog.text


def test_min_sqnr_option_errors():
    with pytest.raises(kiln.errors.KilnError, match="not both"):
        quantized("quantize{keep-float=1 min-sqnr=30}")
    _, table = quantized("quantize")
    with pytest.raises(kiln.errors.KilnError, match="calibration table is not enough"):
        quantized("quantize{min-sqnr=30}", table)


def test_reused_table_keeps_the_same_layers_in_float(tmp_path):
    g1, result = quantized("quantize{calibrator=minmax keep-float=2}")
    result.write(tmp_path, "net")
    table = read_json(tmp_path / "net.calib.json")
    assert table.kept_float == result.kept_float
    g2, reused = quantized("quantize", table)
    assert print_ir(g2) == print_ir(g1)
    assert reused.kept_float == result.kept_float and reused.output_sqnr is None  # no data: nothing measured


# ---- the command


def test_compile_prints_the_report_and_min_sqnr_reaches_its_target(setup, capsys):
    tmp, model = setup
    calib = str(tmp / "calib.npy")
    assert main(["compile", str(model), "-o", str(tmp / "a"), "--int8", "--calib", calib]) == 0
    err = capsys.readouterr().err
    assert "int8 report (entropy calibration" in err and "worst layers" in err
    full = json.loads((tmp / "a" / "net.calib.json").read_text())["output_sqnr_db"]
    assert main(["compile", str(model), "-o", str(tmp / "b"), "--int8", "--calib", calib, "--calibrator", "minmax",
                 "--min-sqnr", f"{full + 6:.1f}", "-q"]) == 0
    assert capsys.readouterr().err == ""  # -q: no report
    table = json.loads((tmp / "b" / "net.calib.json").read_text())
    assert table["kept_float"] and table["output_sqnr_db"] >= full + 6


def test_calib_table_reuses_ranges_and_float_layers(setup, capsys):
    tmp, model = setup
    calib = str(tmp / "calib.npy")
    assert main(["compile", str(model), "-o", str(tmp / "a"), "--int8", "--calib", calib, "--keep-float", "1",
                 "-q"]) == 0
    table = tmp / "a" / "net.calib.json"
    assert main(["compile", str(model), "-o", str(tmp / "b"), "--int8", "--calib-table", str(table), "-q"]) == 0
    assert (tmp / "b" / "net.onnx").read_bytes() == (tmp / "a" / "net.onnx").read_bytes()
    assert json.loads((tmp / "b" / "net.calib.json").read_text())["kept_float"] == \
        json.loads(table.read_text())["kept_float"]


def test_pipeline_text_of_the_command_options():
    from kiln.calib.cli import quantize_step

    assert quantize_step({"report": False, "min_sqnr": 25.0, "calibrator": "entropy"}) == \
        "quantize{report=false min-sqnr=25.0}"
    assert quantize_step({"entropy_floor": 0.0, "percentile": 99.99}) == "quantize{entropy-floor=0.0}"
    _, result = quantized(quantize_step({"report": False}))
    assert result.output_sqnr is None and result.layer_sqnr == {}
    _, result = quantized(quantize_step({"report": False, "keep_float": 1}))  # measures sensitivities only
    assert len(result.kept_float) == 1 and result.output_sqnr is None and result.layer_sqnr == {}


def test_channel_spread_axis_comes_from_the_first_layer_that_reduces_across_channels():
    """A tensor read by a MaxPool (channel by channel) and then by a Conv takes the Conv's input-channel axis."""
    from kiln.passes.quantize.placement import plan_quantization
    from kiln.passes.quantize.sensitivity import reduction_axis
    from onnx import TensorProto, helper, numpy_helper

    w = np.ones((2, 3, 1, 1), np.float32)
    model = helper.make_model(helper.make_graph(
        [helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[2, 2], name="pool"),
         helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], "m",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, [1, 3, 2, 2]),
         helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])],
        [numpy_helper.from_array(w, "w")]), opset_imports=[helper.make_opsetid("", 13)])
    plan = plan_quantization(kiln.load(model))
    assert [layer.name for layer in plan.layers] == ["pool", "conv"]
    assert reduction_axis(plan, plan.activations()[0]) == 1
    pool_only = plan_quantization(kiln.load(model), skip_layers=("conv",))
    assert reduction_axis(pool_only, pool_only.activations()[0]) is None
