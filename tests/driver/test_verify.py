"""``kiln verify``, its metrics, and the onnxruntime bridge."""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest

from driver_helpers import TINY_OFF, assert_clean_error, kiln_subprocess, write_model
from kiln.driver.verify import compare
from kiln.errors import ModelLoadError, UsageError
from kiln.runtime import onnxruntime as ort_bridge

# ---- metrics


def test_equal_outputs():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    d = compare(a, a.copy())
    assert (d.max_abs, d.max_rel, d.sqnr_db) == (0.0, 0.0, math.inf)


def test_known_error():
    a = np.array([1.0, -2.0, 4.0], dtype=np.float32)
    b = np.array([1.0, -2.0, 4.5], dtype=np.float32)
    d = compare(a, b)
    assert d.max_abs == pytest.approx(0.5)
    assert d.max_rel == pytest.approx(0.5 / 4.0)
    assert d.sqnr_db == pytest.approx(10 * math.log10((1 + 4 + 16) / 0.25))


def test_nan_handling():
    a = np.array([np.nan, 1.0])
    assert compare(a, a.copy()).max_abs == 0.0
    d = compare(a, np.array([0.0, 1.0]))
    assert d.max_abs == math.inf and d.sqnr_db == -math.inf


def test_zero_reference():
    z = np.zeros(3)
    assert compare(z, z).max_rel == 0.0
    assert compare(z, np.ones(3)).max_rel == math.inf


def test_shape_mismatch_is_a_difference():
    d = compare(np.zeros((2, 3)), np.zeros((3, 2)))
    assert d.max_rel == math.inf and "shape" in d.note


def test_ints_and_bools_compare():
    assert compare(np.array([1, 2], np.int64), np.array([1, 2], np.int32)).max_abs == 0.0
    assert compare(np.array([True, False]), np.array([True, True])).max_abs == 1.0


# ---- the onnxruntime bridge


def test_random_inputs_are_deterministic_with_notes(tiny):
    notes: list[str] = []
    a = ort_bridge.random_inputs(str(tiny), 7, None, notes=notes)
    b = ort_bridge.random_inputs(str(tiny), 7, None)
    assert a.keys() == {"x"} and a["x"].shape == (1, 4) and a["x"].dtype == np.float32
    np.testing.assert_array_equal(a["x"], b["x"])
    assert len(notes) == 1 and "'N'" in notes[0] and "--input-shape" in notes[0]
    c = ort_bridge.random_inputs(str(tiny), 8, None)
    assert not np.array_equal(a["x"], c["x"])


def test_random_inputs_take_input_shapes(tiny):
    notes: list[str] = []
    inputs = ort_bridge.random_inputs(tiny.read_bytes(), 0, {"x": (3, 4)}, notes=notes)
    assert inputs["x"].shape == (3, 4) and notes == []


def test_symbols_bind_across_inputs(tmp_path):
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    two (float[N, 2] a, int64[N] b) => (float[N, 2] y) { y = Identity(a) }
    """
    path = write_model(tmp_path / "two.onnx", text)
    inputs = ort_bridge.random_inputs(str(path), 0, {"a": (5, 2)})
    assert inputs["b"].shape == (5,) and inputs["b"].dtype == np.int64
    assert inputs["b"].min() >= 0


def test_random_inputs_check_names_and_rank(tiny):
    with pytest.raises(UsageError, match="'z'"):
        ort_bridge.random_inputs(str(tiny), 0, {"z": (1,)})
    with pytest.raises(UsageError, match="rank"):
        ort_bridge.random_inputs(str(tiny), 0, {"x": (1, 2, 3)})


def test_run(tiny):
    x = np.array([[-10.0, 0.0, 1.0, -8.5]], dtype=np.float32)
    out = ort_bridge.run(str(tiny), {"x": x})
    np.testing.assert_allclose(out["y"], np.maximum(x + np.array([2, 4, 6, 8], np.float32), 0))


def test_run_garbage(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="bad.onnx"):
        ort_bridge.run(str(bad), {})


# ---- the command (model against itself and against a changed copy: no compiler needed)


def test_verify_same_model_json(kiln_main, tiny):
    run = kiln_main("verify", tiny, tiny, "--json")
    assert run.rc == 0, run.err
    report = json.loads(run.out)
    assert report == {"ok": True, "outputs": {"y": {"max_abs": 0.0, "max_rel": 0.0, "sqnr_db": math.inf}}}
    assert "note" in run.err and "'N'" in run.err  # the symbolic batch defaulted to 1, and it says so


def test_verify_table_and_quiet(kiln_main, tiny):
    run = kiln_main("verify", tiny, tiny, "--input-shape", "x:2,4", "--quiet")
    assert run.rc == 0 and run.err == ""
    lines = run.out.splitlines()
    assert lines[0].split() == ["output", "shape", "max_abs", "max_rel", "sqnr_db"]
    assert lines[1].split()[:2] == ["y", "2x4"] and lines[1].split()[-1] == "ok"
    assert "within rtol" in lines[-1]


def test_verify_detects_a_difference(kiln_main, tiny, tmp_path):
    off = write_model(tmp_path / "off.onnx", TINY_OFF)
    run = kiln_main("verify", tiny, off, "--json", "--seed", "3")
    assert run.rc == 1
    report = json.loads(run.out)
    assert report["ok"] is False and report["outputs"]["y"]["max_abs"] > 0
    loose = kiln_main("verify", tiny, off, "--json", "--rtol", "10")
    assert loose.rc == 0 and json.loads(loose.out)["ok"] is True


def test_verify_with_inputs_file(kiln_main, tiny, tmp_path):
    npz = tmp_path / "in.npz"
    np.savez(npz, x=np.ones((2, 4), np.float32))
    run = kiln_main("verify", tiny, tiny, "--inputs", npz, "--json")
    assert run.rc == 0 and run.err == ""
    np.savez(npz, other=np.ones((2, 4), np.float32))
    assert_clean_error(kiln_main("verify", tiny, tiny, "--inputs", npz), "'x'")


def test_verify_refuses_pickles(kiln_main, tiny, tmp_path):
    npz = tmp_path / "in.npz"
    np.savez(npz, x=np.array([{"a": 1}], dtype=object))
    assert_clean_error(kiln_main("verify", tiny, tiny, "--inputs", npz), "--inputs")


def test_verify_subprocess_json(tiny):
    run = kiln_subprocess("verify", tiny, tiny, "--json", "-q")
    assert run.rc == 0 and run.err == ""
    assert json.loads(run.out)["ok"] is True


def test_verify_error_paths(kiln_main, tiny, tmp_path):
    assert_clean_error(kiln_main("verify", tiny, tmp_path / "nope.onnx"), "nope.onnx", "no such file")
    weird = tmp_path / "model.xyz"
    weird.write_text("7767517")
    assert_clean_error(kiln_main("verify", tiny, weird), ".xyz", "no runtime runs")
    bad = tmp_path / "garbage.onnx"
    bad.write_bytes(b"\x08\x07garbage\xff" * 30)
    assert_clean_error(kiln_main("verify", bad, tiny), "garbage.onnx")
    assert_clean_error(kiln_main("verify", tiny, tiny, "--input-shape", "x:1,b c"), "--input-shape")
    assert_clean_error(kiln_main("verify", tiny, tiny, "--input-shape", "q:1,4"), "'q'")


def test_verify_missing_output(kiln_main, tiny, tmp_path):
    other = write_model(
        tmp_path / "renamed.onnx",
        '<ir_version: 8, opset_import: ["" : 17]>\nr (float[N, 4] x) => (float[N, 4] z) { z = Relu(x) }',
    )
    assert_clean_error(kiln_main("verify", tiny, other), "'y'")


def test_negative_dims_are_unknown(tmp_path):
    # Paddle exports write dim_value -1 for dynamic dims.
    import onnx.helper as oh

    x = oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [-1, 3])
    y = oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [-1, 3])
    model = oh.make_model(oh.make_graph([oh.make_node("Relu", ["x"], ["y"])], "g", [x], [y]),
                          opset_imports=[oh.make_opsetid("", 17)])
    notes: list[str] = []
    inputs = ort_bridge.random_inputs(model, 0, None, notes=notes)
    assert inputs["x"].shape == (1, 3) and "unknown" in notes[0]
