"""``kiln compile --int8 --calib ...``: the Q/DQ model and the calibration tables beside it."""

from __future__ import annotations

import json

import onnx
import onnxruntime as ort
import pytest
from calib_models import samples
from kiln.driver.cli import main
from kiln.quant import sqnr_db


def _run(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def test_compile_int8_writes_model_and_tables(setup, capsys):
    tmp, model = setup
    out = tmp / "out"
    code = main(["compile", str(model), "-t", "onnx", "-o", str(out), "--int8", "--calib", str(tmp / "calib.npy"),
                 "--calibrator", "entropy", "--calib-count", "16", "--calib-workers", "1", "--skip-ops", "Concat"])
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["net.calib.json", "net.ncnn.table", "net.onnx", "net.trt.cache"]
    assert "(+3 files)" in capsys.readouterr().out
    proto = onnx.load(str(out / "net.onnx"))
    assert proto.opset_import[0].version >= 13
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizeLinear") >= 4 and "Concat" in ops
    table = json.loads((out / "net.calib.json").read_text())
    assert table["calibrator"] == "entropy" and table["samples"] == 16 and "concat1" in table["skipped"]
    assert (out / "net.trt.cache").read_text().startswith("TRT-")
    test = samples(32, seed=3)
    assert sqnr_db(_run(model, test), _run(out / "net.onnx", test)) > 20


def test_reuse_table_and_determinism(setup, capsys):
    tmp, model = setup
    calib = str(tmp / "calib.npy")
    for name in ("a", "b"):
        assert main(["compile", str(model), "-o", str(tmp / name), "--int8", "--calib", calib, "-q"]) == 0
    assert (tmp / "a" / "net.onnx").read_bytes() == (tmp / "b" / "net.onnx").read_bytes()
    assert (tmp / "a" / "net.calib.json").read_text() == (tmp / "b" / "net.calib.json").read_text()
    assert main(["compile", str(model), "-o", str(tmp / "c"), "--int8", "--calib", str(tmp / "a" / "net.calib.json"),
                 "-q"]) == 0
    assert (tmp / "c" / "net.onnx").read_bytes() == (tmp / "a" / "net.onnx").read_bytes()


def test_workers_give_the_same_model(setup):
    tmp, model = setup
    calib = str(tmp / "calib.npy")
    assert main(["compile", str(model), "-o", str(tmp / "one"), "--int8", "--calib", calib, "-q"]) == 0
    assert main(["compile", str(model), "-o", str(tmp / "two"), "--int8", "--calib", calib, "-q",
                 "--calib-workers", "2", "--calib-batch", "4"]) == 0
    assert (tmp / "one" / "net.onnx").read_bytes() == (tmp / "two" / "net.onnx").read_bytes()


@pytest.mark.parametrize("argv,message", [
    (["--int8"], "--int8 needs calibration data"),
    (["--calib", "x.npy"], "--calib is only used with --int8"),
    (["--int8", "--calib", "missing.npy"], "no such file"),
    (["--int8", "--calib", "random", "--calib-count", "0"], "--calib-count 0"),
    (["--int8", "--calib", "random", "--calibrator", "kl"], "invalid choice"),
    (["--int8", "--calib", "random", "--calib-size", "48"], "--calib-size"),
    (["--int8", "--calib", "random", "--calib-table", "t.calib.json"], "not both"),
    (["--int8", "--calib-table", "calib.npy"], "expected a .calib.json"),
    (["--calib-table", "t.calib.json"], "--calib-table is only used with --int8"),
    (["--int8", "--calib", "random", "--keep-float", "1", "--min-sqnr", "30"], "not both"),
    (["--int8", "--calib", "random", "--min-sqnr", "-3"], "--min-sqnr -3.0"),
    (["--int8", "--calib", "random", "--probe-samples", "0"], "--probe-samples 0"),
    (["--int8", "--calib", "random", "--entropy-floor", "-1"], "--entropy-floor -1.0"),
])
def test_usage_errors(setup, capsys, argv, message):
    tmp, model = setup
    assert main(["compile", str(model), "-o", str(tmp / "bad"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp / "bad").exists()


def test_random_calibration_warns(setup, capsys):
    tmp, model = setup
    assert main(["compile", str(model), "-o", str(tmp / "r"), "--int8", "--calib", "random:4"]) == 0
    assert "smoke runs only" in capsys.readouterr().err
