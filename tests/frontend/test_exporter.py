"""The exporter: kiln ops as local functions or inlined, ir_version, determinism, atomic saving."""

from __future__ import annotations

import os
import subprocess
import sys

import kiln
import ml_dtypes
import numpy as np
import onnx
import pytest
from frontend_helpers import parse, run
from kiln.errors import ExportError
from kiln.ir import Tensor, verify

BASE = """
<ir_version: 8, opset_import: ["" : 17], producer_name: "unit", producer_version: "1.2">
g (float[2,3] x, float[2,3] z) => (float[2,3] y) {
  y = Relu(x)
}
"""


def _with_kiln_ops(op: str) -> kiln.ir.Graph:
    """y = Relu(S(S(S(S(x, z, 2), z, 2), z, 3), alpha=0.5)) with S = kiln op ``op``."""
    model = parse(BASE)
    model.metadata_props.add(key="author", value="kiln tests")
    graph = kiln.load(model)
    x, z = graph.inputs
    relu = next(iter(graph))
    current = x
    with graph.inserting_before(relu):
        for alpha, second in ((2.0, z), (2.0, z), (3.0, z), (0.5, None)):
            inputs = [current, second] if second is not None else [current]
            node = graph.create_node(
                op, inputs, {"alpha": alpha}, domain="kiln", output_types=[x.type], name=f"s{alpha}"
            )
            current = node.outputs[0]
    relu.set_input(0, current)
    verify(graph)
    return graph


def _expected(x: np.ndarray, z: np.ndarray) -> np.ndarray:
    return np.maximum((((x * 2 + z) * 2 + z) * 3 + z) * 0.5, 0)


FEEDS = {
    "x": np.array([[1, -2, 3], [0.5, -0.25, 4]], np.float32),
    "z": np.array([[0.1, 0.2, -5], [1, 2, 3]], np.float32),
}


def test_kiln_ops_become_local_functions(kiln_test_op: str) -> None:
    graph = _with_kiln_ops(kiln_test_op)
    model = kiln.to_onnx(graph)
    onnx.checker.check_model(model)
    assert model.ir_version >= 8
    assert {(o.domain, o.version) for o in model.opset_import} == {("", 17), ("kiln", 1)}
    # one function per signature: (alpha=2, two inputs) shared; alpha=3; one input
    names = [f.name for f in model.functions]
    assert names == [kiln_test_op, f"{kiln_test_op}_2", f"{kiln_test_op}_3"]
    assert all(f.domain == "kiln" for f in model.functions)
    calls = [(n.domain, n.op_type) for n in model.graph.node]
    assert calls == [
        ("kiln", names[0]),
        ("kiln", names[0]),
        ("kiln", names[1]),
        ("kiln", names[2]),
        ("", "Relu"),
    ]
    out = run(model, FEEDS)
    np.testing.assert_allclose(out["y"], _expected(**FEEDS), rtol=1e-6)


def test_kiln_ops_inline(kiln_test_op: str) -> None:
    graph = _with_kiln_ops(kiln_test_op)
    model = kiln.to_onnx(graph, kiln_ops="inline")
    onnx.checker.check_model(model)
    assert not model.functions and {o.domain for o in model.opset_import} == {""}
    assert [n.op_type for n in model.graph.node] == ["Mul", "Add", "Mul", "Add", "Mul", "Add", "Mul", "Relu"]
    # the kiln nodes' output names survive as the outputs of their decompositions
    produced = {o for n in model.graph.node for o in n.output}
    assert {n.outputs[0].name for n in graph if n.domain == "kiln"} <= produced
    out = run(model, FEEDS)
    np.testing.assert_allclose(out["y"], _expected(**FEEDS), rtol=1e-6)
    # the graph itself is untouched
    assert sum(n.domain == "kiln" for n in graph) == 4


def test_model_info_survives(kiln_test_op: str) -> None:
    model = kiln.to_onnx(_with_kiln_ops(kiln_test_op))
    assert (model.producer_name, model.producer_version) == ("unit", "1.2")
    assert {p.key: p.value for p in model.metadata_props} == {"author": "kiln tests"}


def test_failing_decomposition_is_an_export_error(broken_kiln_op: str) -> None:
    model = parse(BASE)
    graph = kiln.load(model)
    relu = next(iter(graph))
    with graph.inserting_before(relu):
        node = graph.create_node(broken_kiln_op, [graph.inputs[0]], domain="kiln", name="bad")
    relu.set_input(0, node.outputs[0])
    with pytest.raises(ExportError, match="decomposition of kiln.FrontendTestBroken failed"):
        kiln.to_onnx(graph)


def test_save_is_atomic(tmp_path, broken_kiln_op: str) -> None:
    graph = kiln.load(parse(BASE))
    path = tmp_path / "model.onnx"
    kiln.save(graph, path)
    before = path.read_bytes()
    relu = next(iter(graph))
    with graph.inserting_before(relu):
        node = graph.create_node(broken_kiln_op, [graph.inputs[0]], domain="kiln")
    relu.set_input(0, node.outputs[0])
    for external in (False, True):
        with pytest.raises(ExportError):
            kiln.save(graph, path, external_data=external)
        assert os.listdir(tmp_path) == ["model.onnx"]  # no temporary or half-written file left
        assert path.read_bytes() == before
    with pytest.raises(ExportError):
        kiln.save(graph, tmp_path / "fresh.onnx", external_data=True, size_threshold=0)
    assert os.listdir(tmp_path) == ["model.onnx"]


def test_save_into_missing_folder(tmp_path) -> None:
    with pytest.raises(ExportError, match="does not exist"):
        kiln.save(kiln.load(parse(BASE)), tmp_path / "missing" / "m.onnx")


def test_output_is_deterministic(tmp_path, kiln_test_op: str) -> None:
    a = kiln.to_onnx(_with_kiln_ops(kiln_test_op)).SerializeToString()
    b = kiln.to_onnx(_with_kiln_ops(kiln_test_op)).SerializeToString()
    assert a == b
    graph = _with_kiln_ops(kiln_test_op)
    rng = np.random.default_rng(0)
    graph.add_constant("w", rng.standard_normal((64, 64)).astype(np.float32))
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        kiln.save(graph, tmp_path / name / "m.onnx", external_data=True)
    for file in ("m.onnx", "m.data"):
        assert (tmp_path / "one" / file).read_bytes() == (tmp_path / "two" / file).read_bytes()


def test_saved_file_permissions_follow_umask(tmp_path) -> None:
    path = tmp_path / "m.onnx"
    kiln.save(kiln.load(parse(BASE)), path)
    mask = os.umask(0)
    os.umask(mask)
    assert (path.stat().st_mode & 0o777) == 0o666 & ~mask


@pytest.mark.parametrize(
    ("np_dtype", "ir"),
    [
        (ml_dtypes.bfloat16, 8),
        (ml_dtypes.float8_e4m3fn, 9),
        (ml_dtypes.int4, 10),
        (ml_dtypes.float4_e2m1fn, 11),
    ],
)
def test_ir_version_is_raised_by_element_types(np_dtype, ir: int) -> None:
    graph = kiln.load(parse(BASE))
    graph.add_constant("c", np.array([1, 2, 3], dtype=np.float32).astype(np_dtype))
    model = kiln.to_onnx(graph)
    assert model.ir_version == ir
    data = onnx.numpy_helper.to_array(model.graph.initializer[0])
    assert data.dtype == np.dtype(np_dtype) and data.astype(np.float32).tolist() == [1, 2, 3]


def test_constant_built_in_memory_round_trips(tmp_path) -> None:
    graph = kiln.load(parse(BASE))
    values = np.array([[-8, 7, 0], [1, -1, 3]], dtype=ml_dtypes.int4)
    graph.add_constant("q", Tensor.from_numpy(values))
    kiln.save(graph, tmp_path / "q.onnx", external_data=True, size_threshold=0)
    back = kiln.load(tmp_path / "q.onnx").constants["q"]
    assert not back.const.loaded
    np.testing.assert_array_equal(back.numpy(), values)


def test_import_kiln_is_lazy() -> None:
    code = (
        "import sys, kiln\n"
        "assert 'onnx' not in sys.modules and 'kiln.frontend' not in sys.modules\n"
        "assert callable(kiln.load) and callable(kiln.save) and callable(kiln.to_onnx)\n"
        "assert kiln.ir.Graph is not None and 'onnx' in sys.modules\n"
        "assert {'load', 'save', 'to_onnx', 'ir', 'Pipeline', 'Pass', 'PassContext', 'optimize', 'compile'} <= set(dir(kiln))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_exported_kiln_functions_load_back_inlined(tmp_path, kiln_test_op: str) -> None:
    path = tmp_path / "k.onnx"
    kiln.save(_with_kiln_ops(kiln_test_op), path)
    graph = kiln.load(path)
    verify(graph)
    assert all(n.domain == "" for n in graph)
    assert [n.loc.index for n in graph if n.op == "Relu"] == [4]
    np.testing.assert_allclose(run(kiln.to_onnx(graph), FEEDS)["y"], _expected(**FEEDS), rtol=1e-6)


def test_model_header_round_trips(tmp_path) -> None:
    model = parse(BASE)
    model.doc_string = "a model"
    model.model_version = 7
    model.domain = "org.example"
    model.graph.doc_string = "the graph"
    path = tmp_path / "h.onnx"
    onnx.save(model, str(path))
    graph = kiln.load(path)
    info = graph.model
    assert (info.ir_version, info.producer_name, info.producer_version) == (8, "unit", "1.2")
    assert (info.doc_string, info.model_version, info.source_path) == ("a model", 7, str(path))
    out = kiln.to_onnx(graph)
    assert (out.doc_string, out.model_version, out.domain, out.graph.doc_string) == (
        "a model",
        7,
        "org.example",
        "the graph",
    )
    assert out.graph.name == "g"
