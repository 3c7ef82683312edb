"""Hostile and broken files: each is one ModelLoadError naming the file (and the node), never a crash."""

from __future__ import annotations

import os
import sys

import kiln
import numpy as np
import onnx
import onnx.helper as oh
import pytest
from frontend_helpers import parse
from kiln.errors import ModelLoadError
from kiln.ir import verify

GOOD = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[4] x) => (float[4] y) {
  a = Relu(x)
  b = Neg(a)
  y = Abs(b)
}
"""


def _write(tmp_path, model: onnx.ModelProto, name: str = "model.onnx") -> str:
    path = str(tmp_path / name)
    onnx.save(model, path)
    return path


def _load_error(path_or_model, **kwargs) -> str:
    with pytest.raises(ModelLoadError) as info:
        kiln.load(path_or_model, **kwargs)
    text = str(info.value)
    assert "\n" not in text and "Traceback" not in text
    return text


def _with_weights() -> onnx.ModelProto:
    model = parse(GOOD)
    w = np.arange(4096, dtype=np.float32)
    model.graph.initializer.append(onnx.numpy_helper.from_array(w, "w"))
    model.graph.node[1].input.append("w")
    model.graph.node[1].op_type = "Add"
    return model


def test_missing_file(tmp_path) -> None:
    path = str(tmp_path / "nope.onnx")
    assert _load_error(path) == f"{path}: file not found"


def test_truncated_file(tmp_path) -> None:
    path = _write(tmp_path, _with_weights())
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    text = _load_error(path)
    assert text.startswith(f"{path}: ") and "not a readable ONNX model" in text


@pytest.mark.parametrize(
    "blob", [b"hello, this is not a model\n", bytes(range(256)) * 3, b"\x08\x07\x3a\xff\xff\xff\xff\x0f"]
)
def test_garbage_bytes(tmp_path, blob: bytes) -> None:
    path = str(tmp_path / "garbage.onnx")
    with open(path, "wb") as f:
        f.write(blob)
    assert _load_error(path).startswith(f"{path}: ")


def test_not_a_model_proto(tmp_path) -> None:
    path = str(tmp_path / "tensor.onnx")
    with open(path, "wb") as f:
        f.write(onnx.numpy_helper.from_array(np.ones((3, 3), np.float32), "t").SerializeToString())
    assert _load_error(path).startswith(f"{path}: not")
    path = str(tmp_path / "graph.onnx")
    with open(path, "wb") as f:
        f.write(parse(GOOD).graph.SerializeToString())
    assert _load_error(path).startswith(f"{path}: not")


def test_folder_instead_of_file(tmp_path) -> None:
    assert _load_error(str(tmp_path)) == f"{tmp_path}: not a file"


def test_cycle(tmp_path) -> None:
    model = parse(GOOD)
    model.graph.node[0].input[0] = "b"  # a = Relu(b), b = Neg(a)
    model.graph.node[0].name = "relu0"
    text = _load_error(_write(tmp_path, model))
    assert "model.onnx: node #0 'relu0' (onnx.Relu)" in text and "cycle" in text


def test_dangling_input(tmp_path) -> None:
    model = parse(GOOD)
    model.graph.node[1].input[0] = "ghost"
    model.graph.node[1].name = "neg"
    text = _load_error(_write(tmp_path, model))
    assert "node #1 'neg' (onnx.Neg): input 'ghost' is not produced" in text


def test_dangling_input_in_subgraph(tmp_path) -> None:
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x, bool c) => (float[2] y) {
      y = If (c) <then_branch = t () => (float[2] a) { a = Neg(x) }, else_branch = e () => (float[2] b) { b = Abs(x) }>
    }
    """)
    model.graph.node[0].attribute[0].g.node[0].input[0] = "nowhere"
    text = _load_error(_write(tmp_path, model))
    assert "node #0 (onnx.If): input 'nowhere' is not produced" in text


def test_duplicate_producers(tmp_path) -> None:
    model = parse(GOOD)
    model.graph.node[1].output[0] = "a"
    text = _load_error(_write(tmp_path, model))
    assert "node #1 (onnx.Neg): output 'a' is also produced by node #0 (onnx.Relu)" in text


@pytest.mark.parametrize("op", ["NoSuchOp", "Gelu"])  # Gelu exists only from opset 20
def test_unknown_op(tmp_path, op: str) -> None:
    model = parse(GOOD)
    model.graph.node[2].op_type = op
    model.graph.node[2].name = "mystery"
    text = _load_error(_write(tmp_path, model))
    assert text.endswith(f"model.onnx: node #2 'mystery' (onnx.{op}): unknown op {op!r} (not in opset 17)")


def test_custom_domain_ops_are_allowed(tmp_path) -> None:
    model = parse(GOOD)
    model.graph.node[2].domain = "com.example"
    model.opset_import.append(oh.make_opsetid("com.example", 1))
    graph = kiln.load(_write(tmp_path, model))
    assert [n.op_id for n in graph][-1] == "com.example.Abs"


@pytest.mark.parametrize("opset", [5, 99])
def test_unsupported_opset(tmp_path, opset: int) -> None:
    model = parse(GOOD)
    model.opset_import[0].version = opset
    assert "opset" in _load_error(_write(tmp_path, model))


def test_huge_declared_shapes_do_not_allocate(tmp_path) -> None:
    huge = [1 << 20, 1 << 20]  # 2^40 elements
    # an initializer that claims 2^40 floats but holds 4 bytes
    model = parse(GOOD)
    t = onnx.TensorProto(name="w", data_type=onnx.TensorProto.FLOAT, dims=huge, raw_data=b"\0\0\0\0")
    model.graph.initializer.append(t)
    text = _load_error(_write(tmp_path, model))
    assert "initializer 'w'" in text and "holds 4 bytes" in text
    # a Constant node doing the same
    model = parse(GOOD)
    model.graph.node.insert(0, oh.make_node("Constant", [], ["k"], value=t, name="big"))
    text = _load_error(_write(tmp_path, model, "const.onnx"))
    assert "const.onnx: node #0 'big' (onnx.Constant)" in text
    # declared input shapes and a ConstantOfShape are only types: they load, nothing is evaluated
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1048576,1048576] x) => (float[1048576,1048576] y, float[?,?] z) {
      s = Constant <value = int64[2] {1048576, 1048576}> ()
      z = ConstantOfShape <value = float[1] {1.0}> (s)
      y = Relu(x)
    }
    """)
    graph = kiln.load(_write(tmp_path, model, "types.onnx"))
    assert graph.inputs[0].type.shape == (1 << 20, 1 << 20)


def _nested_ifs(levels: int) -> onnx.ModelProto:
    leaf = oh.make_graph(
        [oh.make_node("Identity", ["x"], ["y0"])], "g0", [], [oh.make_tensor_value_info("y0", 1, [1])]
    )
    inner = leaf
    for level in range(1, levels + 1):
        node = oh.make_node("If", ["c"], [f"y{level}"], then_branch=inner, else_branch=leaf)
        inner = oh.make_graph([node], f"g{level}", [], [oh.make_tensor_value_info(f"y{level}", 1, [1])])
    inputs = [
        oh.make_tensor_value_info("x", 1, [1]),
        oh.make_tensor_value_info("c", onnx.TensorProto.BOOL, []),
    ]
    graph = oh.make_graph(inner.node, "main", inputs, list(inner.output))
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    key, n, size = number << 3 | 2, len(payload), b""
    while True:
        size += bytes([n & 0x7F | (0x80 if n > 0x7F else 0)])
        n >>= 7
        if not n:
            break
    return bytes([key]) + size + payload


def test_deep_subgraph_nesting(tmp_path) -> None:
    # as deep as protobuf lets a message be built: loads and exports without recursion trouble
    model = _nested_ifs(28)
    graph = kiln.load(model)
    verify(graph)
    kiln.to_onnx(graph)
    # deeper than protobuf parses: written by hand, refused cleanly
    graph_bytes = _field(1, _field(4, b"Identity"))
    for _ in range(300):
        attr = _field(1, b"then_branch") + _field(6, graph_bytes) + bytes([0xA0, 0x01, 5])  # type = GRAPH
        graph_bytes = _field(1, _field(1, b"c") + _field(4, b"If") + _field(5, attr))
    blob = bytes([0x08, 8]) + _field(7, graph_bytes) + _field(8, bytes([0x10, 17]))
    path = tmp_path / "deep.onnx"
    path.write_bytes(blob)
    assert _load_error(str(path)).startswith(f"{path}: not a readable ONNX model")


def test_long_chain_has_no_recursion_limit(tmp_path) -> None:
    n = 20_000
    nodes = [
        oh.make_node("Neg" if i % 2 else "Relu", [f"t{i - 1}" if i else "x"], [f"t{i}"]) for i in range(n)
    ]
    graph = oh.make_graph(
        nodes,
        "chain",
        [oh.make_tensor_value_info("x", 1, ["N", 8])],
        [oh.make_tensor_value_info(f"t{n - 1}", 1, None)],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(200)
    try:
        g = kiln.load(_write(tmp_path, model))
        verify(g)
        exported = kiln.to_onnx(g)
    finally:
        sys.setrecursionlimit(limit)
    assert len(g) == n and len(exported.graph.node) == n
    assert str(g.outputs[0].type) == "f32[N,8]"


@pytest.fixture()
def external_model(tmp_path):
    """A model folder with one external tensor; returns a function that writes it with a given location."""

    def write(location: str, *, offset: int = 0, length: int | None = 16, dims=(4,)) -> str:
        model = parse(GOOD)
        t = onnx.TensorProto(name="w", data_type=onnx.TensorProto.FLOAT, dims=list(dims))
        t.data_location = onnx.TensorProto.EXTERNAL
        entries = [("location", location), ("offset", str(offset))]
        if length is not None:
            entries.append(("length", str(length)))
        for key, value in entries:
            t.external_data.add(key=key, value=value)
        model.graph.initializer.append(t)
        model.graph.node[1].op_type = "Add"
        model.graph.node[1].input.append("w")
        folder = tmp_path / "model_dir"
        folder.mkdir(exist_ok=True)
        path = str(folder / "model.onnx")
        onnx.save(model, path)
        return path

    return write


def test_external_data_outside_the_folder_is_refused(tmp_path, external_model) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\1" * 64)
    for location in ("../secret.bin", str(secret), "sub/../../secret.bin"):
        path = external_model(location)
        text = _load_error(path)
        assert text.startswith(f"{path}: initializer 'w'"), text
    os.symlink(secret, tmp_path / "model_dir" / "link.bin")
    path = external_model("link.bin")
    assert "outside the model's folder" in _load_error(path)


def test_external_data_missing_or_short(tmp_path, external_model) -> None:
    path = external_model("absent.bin")
    assert "not found" in _load_error(path)
    (tmp_path / "model_dir" / "short.bin").write_bytes(b"\0" * 8)
    path = external_model("short.bin")
    assert "holds 8 bytes" in _load_error(path)
    path = external_model("short.bin", dims=(1 << 20, 1 << 20), length=None)
    assert "holds 8 bytes" in _load_error(path)


def test_external_data_of_a_model_proto_without_folder(external_model) -> None:
    model = onnx.load(external_model("w.bin"), load_external_data=False)
    assert "without a folder" in _load_error(model)


def test_type_errors_name_the_node(tmp_path) -> None:
    model = parse(
        """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x, int64[2] y) => (z) {
      a = Relu(x)
      z = Add(a, y)
    }
    """,
        check=False,
    )
    model.graph.node[1].name = "adder"
    text = _load_error(_write(tmp_path, model))
    assert text.endswith(
        "model.onnx node #1 'adder' (onnx.Add): type error: B has inconsistent type tensor(int64)"
    )
    model = parse(
        """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x, float[3] y) => (z) {
      z = Add(x, y)
    }
    """,
        check=False,
    )
    assert "node #0 (onnx.Add)" in _load_error(_write(tmp_path, model, "shapes.onnx"))
