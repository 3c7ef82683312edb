"""Hostile and broken models through the command: one clear line, exit 2, nothing written.

Each model is built here with onnx.helper.  The promise (DESIGN section 9):
a clear error or a correct result in bounded memory, never a traceback, a
crash or a hang, and an OUTDIR left empty when compilation fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper


def _kiln(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kiln", *args], capture_output=True, text=True, timeout=timeout
    )


def _save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def _model(nodes, inputs, outputs, initializers=(), opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


X = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
Y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])


def cycle(tmp: Path) -> Path:
    nodes = [
        helper.make_node("Add", ["x", "b"], ["a"], name="first"),
        helper.make_node("Relu", ["a"], ["b"], name="second"),
        helper.make_node("Identity", ["b"], ["y"], name="out"),
    ]
    return _save(_model(nodes, [X], [Y]), tmp / "cycle.onnx")


def dangling(tmp: Path) -> Path:
    nodes = [helper.make_node("Add", ["x", "nobody_makes_me"], ["y"], name="adder")]
    return _save(_model(nodes, [X], [Y]), tmp / "dangling.onnx")


def unknown_op(tmp: Path) -> Path:
    nodes = [helper.make_node("Frobnicate", ["x"], ["y"], name="weird")]
    return _save(_model(nodes, [X], [Y]), tmp / "unknown.onnx")


def truncated(tmp: Path) -> Path:
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="r")]
    data = _model(nodes, [X], [Y]).SerializeToString()
    (tmp / "trunc.onnx").write_bytes(data[: len(data) // 2])
    return tmp / "trunc.onnx"


def garbage(tmp: Path) -> Path:
    (tmp / "garbage.onnx").write_bytes(os.urandom(4096))
    return tmp / "garbage.onnx"


def external_outside(tmp: Path) -> Path:
    model_dir = tmp / "model"
    model_dir.mkdir()
    (tmp / "secret.bin").write_bytes(np.ones(4, np.float32).tobytes())
    w = numpy_helper.from_array(np.zeros(4, np.float32), "w")
    w.ClearField("float_data")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "../secret.bin"), ("offset", "0"), ("length", "16")):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    nodes = [helper.make_node("Add", ["x", "w"], ["y"], name="add_w")]
    return _save(_model(nodes, [X], [Y], [w]), model_dir / "escape.onnx")


def external_absolute(tmp: Path) -> Path:
    path = external_outside(tmp)
    model = onnx.load(str(path), load_external_data=False)
    model.graph.initializer[0].external_data[0].value = str(tmp / "secret.bin")
    return _save(model, path)


def wrong_rank_reshape(tmp: Path) -> Path:
    shape = numpy_helper.from_array(np.array([3, 5], np.int64), "s")
    nodes = [helper.make_node("Reshape", ["x", "s"], ["y"], name="bad_reshape")]
    return _save(_model(nodes, [X], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [shape]),
                 tmp / "reshape.onnx")


CASES = {
    "cycle": (cycle, ["cycle.onnx"]),
    "dangling": (dangling, ["nobody_makes_me"]),
    "unknown_op": (unknown_op, ["Frobnicate"]),
    "truncated": (truncated, ["trunc.onnx"]),
    "garbage": (garbage, ["garbage.onnx"]),
    "external_outside": (external_outside, ["escape.onnx", "secret.bin"]),
    "external_absolute": (external_absolute, ["escape.onnx"]),
    "wrong_rank_reshape": (wrong_rank_reshape, ["reshape.onnx"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_model_gives_one_line_and_exit_2(case: str, tmp_path: Path) -> None:
    make, must_mention = CASES[case]
    model = make(tmp_path)
    out = tmp_path / "out"
    run = _kiln("compile", str(model), "-o", str(out))
    assert run.returncode == 2, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, run.stderr
    assert "Traceback" not in run.stderr
    assert lines[0].startswith("kiln: error:")
    for word in must_mention:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    assert not out.exists() or not any(out.iterdir())


def test_absurd_shape_is_not_allocated(tmp_path: Path) -> None:
    """A ConstantOfShape asking for 2^40 floats stays a node; nothing is allocated."""
    shape = numpy_helper.from_array(np.array([1 << 20, 1 << 20], np.int64), "s")
    nodes = [
        helper.make_node("ConstantOfShape", ["s"], ["big"], name="huge"),
        helper.make_node("ReduceMax", ["big"], ["m"], name="reduce", keepdims=0),
        helper.make_node("Add", ["x", "m"], ["y"], name="add"),
    ]
    model = _save(_model(nodes, [X], [Y], [shape]), tmp_path / "absurd.onnx")
    out = tmp_path / "out"
    run = _kiln("compile", str(model), "-o", str(out), timeout=120)
    assert run.returncode in (0, 2), run.stderr
    assert "Traceback" not in run.stderr
    if run.returncode == 0:
        result = onnx.load(str(out / "absurd.onnx"))
        assert any(n.op_type == "ConstantOfShape" for n in result.graph.node)


def test_debug_rules_explains_refusals(tmp_path: Path) -> None:
    """--debug-rules logs, per node, the rules tried and why they were refused."""
    from kiln.examples import example_path

    run = _kiln("compile", str(example_path("resnet50")), "-o", str(tmp_path / "out"), "--debug-rules")
    assert run.returncode == 0, run.stderr
    assert "refused:" in run.stderr and "applied" in run.stderr
    assert "is not onnx.BatchNormalization" in run.stderr
