"""The artifact formats: text/binary param, storage tags, fp16, C headers, the name map, determinism."""

from __future__ import annotations

import json
import struct

import numpy as np
import onnx
import pytest
from kiln.codegen.ncnn.param import Layer, param_text
from kiln.codegen.ncnn.weights import TAG_FP16, TAG_INT8, Blob, encode
from kiln.driver.compile import compile as kiln_compile
from ncnn_helpers import compile_and_compare, make_model, weights
from onnx import helper

ncnn = pytest.importorskip("ncnn")
N = helper.make_node


def _net():
    nodes = [N("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]), N("Relu", ["c"], ["r"]),
             N("GlobalAveragePool", ["r"], ["g"]), N("Flatten", ["g"], ["f"]), N("Gemm", ["f", "fw"], ["y"], transB=1)]
    consts = {"w": weights((8, 3, 3, 3)), "b": weights((8,), 1), "fw": weights((5, 8), 2)}
    return make_model(nodes, {"x": (1, 3, 10, 12)}, {"y": None}, consts)


def test_weight_tags():
    data = np.array([1.5, -2.0, 1e-42], np.float32)
    raw = encode(Blob(data, tagged=True), fp16=False)
    assert struct.unpack("<I3f", raw) == (0, 1.5, -2.0, 0.0)  # denormal flushed
    half = encode(Blob(data[:2], tagged=True), fp16=True)
    assert struct.unpack("<I", half[:4])[0] == TAG_FP16 and len(half) == 8
    assert np.array_equal(np.frombuffer(half[4:], "<f2"), data[:2].astype(np.float16))
    odd = encode(Blob(data, tagged=True), fp16=True)
    assert len(odd) == 12  # 4 + 6 bytes, padded to a multiple of 4
    q = encode(Blob(np.array([1, -2, 3], np.int8), tagged=True), fp16=True)
    assert struct.unpack("<I", q[:4])[0] == TAG_INT8 and q[4:] == b"\x01\xfe\x03\x00"
    assert encode(Blob(data[:2]), fp16=True) == data[:2].astype("<f4").tobytes()  # untagged stays fp32


def test_param_text_arrays_and_floats():
    layer = Layer("Slice", "s", ["a"], ["b", "c"], {0: [2, -233], 1: 0})
    act = Layer("Clip", "k", ["b"], ["d"], {0: 0.0, 1: 6.0})
    text = param_text([layer, act], 4)
    lines = text.splitlines()
    assert lines[:2] == ["7767517", "2 4"]
    assert lines[2].split()[-2:] == ["-23300=2,2,-233", "1=0"]
    assert lines[3].split()[-2:] == ["0=0.0", "1=6.0"]


def test_all_forms_load_and_agree(tmp_path):
    err, param = compile_and_compare(_net(), tmp_path, options={"param_bin": True, "c_header": True})
    assert err < 1e-5
    out = param.parent
    names = sorted(p.name for p in out.iterdir())
    assert names == ["m.bin", "m.id.h", "m.mem.h", "m.ncnn.json", "m.param", "m.param.bin"]
    # The binary param loads in ncnn and gives the same result as the text one.
    x = np.random.default_rng(1).standard_normal((3, 10, 12)).astype(np.float32)
    results = []
    for binary in (False, True):
        net = ncnn.Net()
        net.opt.use_vulkan_compute = False
        if binary:
            assert net.load_param_bin(str(out / "m.param.bin")) == 0
        else:
            assert net.load_param(str(param)) == 0
        assert net.load_model(str(out / "m.bin")) == 0
        ex = net.create_extractor()
        if binary:
            ex.input(0, ncnn.Mat(x).clone())
            layers = (out / "m.id.h").read_text()
            index = int(layers.split("BLOB_y = ")[1].split(";")[0])
            ret, mat = ex.extract(index)
        else:
            ex.input("x", ncnn.Mat(x).clone())
            ret, mat = ex.extract("y")
        assert ret == 0
        results.append(np.array(mat))
    assert np.array_equal(results[0], results[1])
    header = (out / "m.mem.h").read_text()
    assert "static const unsigned char m_param_bin[]" in header and "static const unsigned char m_bin[]" in header
    io = json.loads((out / "m.ncnn.json").read_text())
    assert io["inputs"] == [{"blob": "x", "name": "x", "shape": [1, 3, 10, 12]}]
    assert io["outputs"][0]["name"] == "y" and io["outputs"][0]["shape"] == [1, 5]


def test_fp16_storage(tmp_path):
    err32, p32 = compile_and_compare(_net(), tmp_path / "a")
    err16, p16 = compile_and_compare(_net(), tmp_path / "b", fp16=True)
    assert err32 < 1e-5 and 1e-6 < err16 < 1e-2
    bin16 = (p16.parent / "m.bin").read_bytes()
    assert struct.unpack("<I", bin16[:4])[0] == TAG_FP16
    assert len(bin16) < len((p32.parent / "m.bin").read_bytes())
    assert p16.read_text() == p32.read_text()  # same layers; only the storage differs


def test_byte_identical_rerun(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_net(), path)
    for fp16 in (False, True):
        first = kiln_compile(path, "ncnn", tmp_path / f"a{fp16}", fp16=fp16, options={"param_bin": True})
        second = kiln_compile(path, "ncnn", tmp_path / f"b{fp16}", fp16=fp16, options={"param_bin": True})
        assert [p.name for p in first.artifacts] == [p.name for p in second.artifacts]
        for a, b in zip(first.artifacts, second.artifacts):
            assert a.read_bytes() == b.read_bytes(), a.name


def test_fp16_keeps_sensitive_weights_in_fp32(tmp_path):
    # y = conv(x, 1000 w + d) - conv(x, 1000 w): float16 rounding of the first weight loses d
    # entirely, so those weights must stay float32 for the result to be right.
    w = weights((4, 3, 3, 3))
    delta = weights((4, 3, 3, 3), 7, 0.05)
    nodes = [N("Conv", ["x", "wa"], ["a"], kernel_shape=[3, 3]), N("Conv", ["x", "wb"], ["b"], kernel_shape=[3, 3]),
             N("Sub", ["a", "b"], ["y"])]
    consts = {"wa": (1000 * w + delta).astype(np.float32), "wb": (1000 * w).astype(np.float32)}
    model = make_model(nodes, {"x": (1, 3, 8, 8)}, {"y": None}, consts)
    err, param = compile_and_compare(model, tmp_path, fp16=True)
    assert err < 1e-2
    raw = (param.parent / "m.bin").read_bytes()
    assert struct.unpack("<I", raw[:4])[0] == 0  # the first conv's weight kept as float32
