"""``kiln compile -t ncnn`` and ``kiln verify`` through the command line, bad input included."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from kiln.driver.cli import main
from ncnn_helpers import make_model, weights
from onnx import helper

pytest.importorskip("ncnn")
N = helper.make_node


def _conv_model(batch="N", height="H"):
    nodes = [N("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3]), N("HardSwish", ["c"], ["y"])]
    return make_model(nodes, {"x": (batch, 3, height, 8)}, {"y": None}, {"w": weights((4, 3, 3, 3))}, opset=14)


def _run(capsys, *args):
    rc = main([str(a) for a in args])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_compile_and_verify(tmp_path, capsys):
    model = tmp_path / "net.onnx"
    onnx.save(_conv_model(), model)
    out = tmp_path / "out"
    rc, _, err = _run(capsys, "compile", model, "-t", "ncnn", "-o", out, "--input-shape", "x:1,3,9,8")
    assert rc == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["net.bin", "net.ncnn.json", "net.param"]
    assert "9=6" in (out / "net.param").read_text()  # HardSwish fused into the Convolution
    rc, text, err = _run(capsys, "verify", model, out / "net.param", "--input-shape", "x:1,3,9,8")
    assert rc == 0, text + err
    assert "y" in text


def _assert_refused(capsys, tmp_path, model, *extra, needle):
    path = tmp_path / "bad.onnx"
    onnx.save(model, path)
    out = tmp_path / "out"
    rc, _, err = _run(capsys, "compile", path, "-t", "ncnn", "-o", out, *extra)
    assert rc == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], err
    assert "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


def test_dynamic_shape_refused(tmp_path, capsys):
    _assert_refused(capsys, tmp_path, _conv_model(), needle="--input-shape")


def test_batch_above_one_refused(tmp_path, capsys):
    _assert_refused(capsys, tmp_path, _conv_model(), "--input-shape", "x:2,3,9,8", needle="batch 1")


def test_unsupported_op_refused(tmp_path, capsys):
    nodes = [N("Relu", ["x"], ["r"]), N("TopK", ["r", "k"], ["y", "i"], axis=-1)]
    model = make_model(nodes, {"x": (1, 3, 8)}, {"y": None}, {"k": np.array([2], np.int64)})
    model.graph.output.append(helper.make_tensor_value_info("i", onnx.TensorProto.INT64, None))
    _assert_refused(capsys, tmp_path, model, needle="onnx.TopK")


def test_foreign_option_refused(tmp_path, capsys):
    model = make_model([N("Relu", ["x"], ["y"])], {"x": (1, 3, 4, 4)}, {"y": None})
    _assert_refused(capsys, tmp_path, model, "--nhwc-io", needle="--nhwc-io")
