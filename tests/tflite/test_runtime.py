"""kiln.runtime.litert: ONNX names and layout in and out, int8 I/O, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert.interpreter", reason="ai-edge-litert is not installed")

from kiln.codegen.tflite.flatbuffer import ModelBuilder, Quant
from kiln.errors import ModelLoadError, UsageError
from kiln.runtime import litert

RNG = np.random.default_rng(11)
TO_NHWC = [0, 2, 3, 1]


@pytest.fixture(autouse=True)
def _no_runtime_warnings(capfd: pytest.CaptureFixture[str]):
    """LiteRT loads and runs every well-formed file without a warning or error on stderr."""
    yield
    err = capfd.readouterr().err
    assert not [line for line in err.splitlines() if "WARN" in line.upper() or "ERROR" in line.upper()], err


def _nhwc_model(path: Path, layout: dict | None) -> Path:
    """x (NHWC 1x4x5x3) -> MEAN over H,W keeping dims -> ADD x: y (NHWC), plus z = MEAN (1x1x1x3)."""
    meta = {} if layout is None else {"kiln_io_layout": json.dumps(layout)}
    b = ModelBuilder(metadata=meta)
    x = b.add_tensor("x_nhwc", (1, 4, 5, 3), "float32")
    axes = b.add_tensor("axes", (2,), "int32", data=[1, 2])
    m = b.add_tensor("m", (1, 1, 1, 3), "float32")
    y = b.add_tensor("y_nhwc", (1, 4, 5, 3), "float32")
    b.add_operator("MEAN", [x, axes], [m], {"keep_dims": True})
    b.add_operator("SUB", [x, m], [y])
    b.set_io([x], [y, m], ["input:0"], ["zz_centered", "mean"])
    path.write_bytes(b.finish())
    return path


def test_layout_mapping(tmp_path: Path) -> None:
    layout = {"input:0": {"perm": TO_NHWC}, "zz_centered": {"perm": TO_NHWC}, "mean": {"perm": TO_NHWC}}
    path = _nhwc_model(tmp_path / "m.tflite", layout)
    x = RNG.standard_normal((1, 3, 4, 5)).astype(np.float32)  # NCHW, as ONNX has it
    out = litert.run(path, {"input:0": x})
    mean = x.mean(axis=(2, 3), keepdims=True)
    assert out["zz_centered"].shape == (1, 3, 4, 5) and out["mean"].shape == (1, 3, 1, 1)
    np.testing.assert_allclose(out["zz_centered"], x - mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["mean"], mean, rtol=1e-5, atol=1e-6)


def test_no_layout_metadata_means_identity(tmp_path: Path) -> None:
    path = _nhwc_model(tmp_path / "m.tflite", None)
    x = RNG.standard_normal((1, 4, 5, 3)).astype(np.float64)  # cast to float32 on the way in
    out = litert.run(path, {"input:0": x, "unused": np.zeros(1)})
    assert list(out) == ["zz_centered", "mean"]  # the declared order, not LiteRT's sorted one
    want = x - x.mean(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(out["zz_centered"], want, rtol=1e-5, atol=1e-6)


def test_int8_io_quantized_and_dequantized(tmp_path: Path) -> None:
    """int8 input and output tensors: the bridge quantizes floats in and dequantizes out."""
    s_in, z_in, s_out, z_out = 0.05, 10, 0.1, -20
    b = ModelBuilder()
    x = b.add_tensor("x", (2, 8), "int8", quant=Quant(np.array([s_in]), np.array([z_in])))
    f = b.add_tensor("f", (2, 8), "float32")
    g = b.add_tensor("g", (2, 8), "float32")
    y = b.add_tensor("y", (2, 8), "int8", quant=Quant(np.array([s_out]), np.array([z_out])))
    b.add_operator("DEQUANTIZE", [x], [f])
    b.add_operator("TANH", [f], [g])
    b.add_operator("QUANTIZE", [g], [y])
    b.set_io([x], [y], ["x"], ["y"])
    path = tmp_path / "q.tflite"
    path.write_bytes(b.finish())
    xv = RNG.uniform(-6, 6, (2, 8)).astype(np.float32)
    got = litert.run(path, {"x": xv})["y"]
    assert got.dtype == np.float32
    xq = (np.clip(np.round(xv / s_in) + z_in, -128, 127) - z_in) * s_in
    np.testing.assert_allclose(got, np.tanh(xq), atol=s_out * 0.51 + 1e-6)
    # An int8 array goes in untouched.
    raw = np.full((2, 8), z_in, np.int8)
    np.testing.assert_allclose(litert.run(path, {"x": raw})["y"], np.zeros((2, 8)), atol=s_out * 0.51)


def test_session_reuse_threads_and_dynamic_batch(tmp_path: Path) -> None:
    w = RNG.standard_normal((3, 4)).astype(np.float32)
    b = ModelBuilder()
    x = b.add_tensor("x", (1, 4), "float32", shape_signature=(-1, 4))
    wt = b.add_tensor("w", (3, 4), "float32", data=w)
    y = b.add_tensor("y", (1, 3), "float32", shape_signature=(-1, 3))
    b.add_operator("FULLY_CONNECTED", [x, wt, -1], [y])
    b.set_io([x], [y], ["x"], ["y"])
    path = tmp_path / "fc.tflite"
    path.write_bytes(b.finish())
    sess = litert.session(path, num_threads=2)
    assert sess.input_names == ["x"] and sess.output_names == ["y"]
    for batch in (1, 3, 3, 2):
        xv = RNG.standard_normal((batch, 4)).astype(np.float32)
        np.testing.assert_allclose(sess.run({"x": xv})["y"], xv @ w.T, rtol=1e-5, atol=1e-5)
    with pytest.raises(UsageError, match=r"has shape \[2, 5\], the model takes \[-1, 4\]"):
        sess.run({"x": np.zeros((2, 5), np.float32)})


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_errors_are_one_line(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(UsageError) as exc:
        litert.run(tmp_path / "missing.tflite", {})
    assert "missing.tflite" in _one_line(exc) and "no such file" in _one_line(exc)

    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelLoadError, match="not a TFLite flatbuffer") as exc:
        litert.run(junk, {})
    _one_line(exc)

    truncated = tmp_path / "cut.tflite"
    truncated.write_bytes(_nhwc_model(tmp_path / "m.tflite", None).read_bytes()[:60])
    with pytest.raises(ModelLoadError) as exc:
        litert.run(truncated, {})
    _one_line(exc)

    path = _nhwc_model(tmp_path / "m.tflite", {"input:0": {"perm": TO_NHWC}})
    with pytest.raises(UsageError, match="no value for input 'input:0'") as exc:
        litert.run(path, {"x": np.zeros((1, 3, 4, 5), np.float32)})
    _one_line(exc)
    with pytest.raises(UsageError, match=r"shape \[1, 3, 5, 4\], the model takes \[1, 3, 4, 5\]"):
        litert.run(path, {"input:0": np.zeros((1, 3, 5, 4), np.float32)})
    with pytest.raises(UsageError, match="rank 3"):
        litert.run(path, {"input:0": np.zeros((3, 4, 5), np.float32)})

    bad = _nhwc_model(tmp_path / "bad.tflite", {"input:0": {"perm": [0, 0, 1, 2]}})
    with pytest.raises(ModelLoadError, match="not a permutation"):
        litert.session(bad)
    capfd.readouterr()  # LiteRT's own complaints about the broken files
