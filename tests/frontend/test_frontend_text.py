"""Small models in ONNX text syntax: control flow, functions, constants, dims, overrides."""

from __future__ import annotations

import kiln
import numpy as np
import onnx
import onnx.helper as oh
import pytest
from frontend_helpers import assert_same_outputs, parse, run
from kiln.errors import ModelLoadError
from kiln.ir import verify
from kiln.ir.types import TensorType

IF_MODEL = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N,3] x, bool c) => (float[N,3] y) {
  two = Constant <value = float {2.0}> ()
  sq = Mul(x, x)
  y = If (c) <
    then_branch = then_g () => (float[N,3] a) { a = Mul(sq, two) },
    else_branch = else_g () => (float[N,3] b) { b = Add(x, two) }
  >
}
"""

LOOP_MODEL = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2] x, int64 n) => (float[2] out, float[K,2] scan) {
  one = Constant <value_float = 1.0> ()
  cond = Constant <value = bool {1}> ()
  out, scan = Loop (n, cond, x) <
    body = body_g (int64 i, bool c, float[2] acc) => (bool c2, float[2] acc2, float[2] s) {
      acc2 = Add(acc, one)
      s = Mul(acc2, x)
      c2 = Identity(c)
    }
  >
}
"""

FUNCTION_MODEL = """
<ir_version: 9, opset_import: ["" : 17, "local" : 1]>
g (float[N,4] x) => (float[N,4] y) {
  t = local.ScaleAdd <alpha = 3.0> (x, x)
  y = local.Twice (t, x)
}
<domain: "local", opset_import: ["" : 17]>
ScaleAdd <alpha> (a, b) => (c) {
  s = Constant <value_float: float = @alpha> ()
  m = Mul(a, s)
  c = Add(m, b)
}
<domain: "local", opset_import: ["" : 17, "local" : 1]>
Twice (a, b) => (c) {
  h = local.ScaleAdd <alpha = 0.5> (a, b)
  c = local.ScaleAdd <alpha = 1.0> (h, b)
}
"""


def test_if_with_outer_scope_references() -> None:
    model = parse(IF_MODEL)
    graph = kiln.load(model)
    verify(graph)
    if_node = next(n for n in graph if n.op == "If")
    then_g = if_node.attrs["then_branch"].value
    else_g = if_node.attrs["else_branch"].value
    sq = next(n for n in graph if n.op == "Mul").outputs[0]
    # the branches read the outer Values themselves, not copies
    then_mul = next(iter(then_g))
    assert then_mul.inputs[0] is sq and then_mul.inputs[1] is graph.constants["two"]
    assert next(iter(else_g)).inputs[0] is graph.inputs[0]
    assert then_g.parent is if_node and then_g.root is graph
    assert str(if_node.outputs[0].type) == "f32[N,3]"
    exported = kiln.to_onnx(graph)
    onnx.checker.check_model(exported)
    x = np.random.default_rng(0).random((2, 3), dtype=np.float32)
    for c in (True, False):
        assert_same_outputs(model, exported, {"x": x, "c": np.array(c)})


def test_loop_with_outer_scope_and_scan_output() -> None:
    model = parse(LOOP_MODEL)
    graph = kiln.load(model)
    verify(graph)
    loop = next(iter(graph))
    body = loop.attrs["body"].value
    assert [v.name for v in body.inputs] == ["i", "c", "acc"]
    mul = next(n for n in body if n.op == "Mul")
    assert mul.inputs[1] is graph.inputs[0]
    exported = kiln.to_onnx(graph)
    onnx.checker.check_model(exported)
    assert_same_outputs(model, exported, {"x": np.array([1.0, 2.0], np.float32), "n": np.array(3)})


def test_model_local_functions_are_inlined() -> None:
    model = parse(FUNCTION_MODEL)
    graph = kiln.load(model)
    verify(graph)
    ops = [n.op for n in graph]
    assert ops == ["Mul", "Add", "Mul", "Add", "Mul", "Add"]
    assert graph.model.functions == []
    # inlined nodes carry the call's location; internal names are unique
    assert [n.loc.index for n in graph] == [0, 0, 1, 1, 1, 1]
    names = [o.name for n in graph for o in n.outputs]
    assert len(set(names)) == len(names)
    assert graph.outputs[0].name == "y"
    # attribute references were substituted
    assert sorted(float(v.numpy()) for v in graph.constants.values()) == [0.5, 1.0, 3.0]
    assert all(o.type is not None for n in graph for o in n.outputs)
    exported = kiln.to_onnx(graph)
    x = np.random.default_rng(1).random((3, 4), dtype=np.float32)
    # onnxruntime runs the original (with functions) and the inlined export alike
    assert_same_outputs(model, exported, {"x": x})


def test_function_attribute_default_is_used() -> None:
    model = parse(FUNCTION_MODEL)
    f = next(f for f in model.functions if f.name == "ScaleAdd")
    f.attribute_proto.append(oh.make_attribute("alpha", 2.0))
    del f.attribute[:]
    twice = next(f for f in model.functions if f.name == "Twice")
    del twice.node[1].attribute[:]  # this call now relies on the default
    graph = kiln.load(model)
    assert sorted(float(v.numpy()) for v in graph.constants.values()) == [0.5, 2.0, 3.0]
    exported = kiln.to_onnx(graph)
    x = np.random.default_rng(2).random((2, 4), dtype=np.float32)
    assert_same_outputs(model, exported, {"x": x})


def test_recursive_function_is_refused() -> None:
    model = parse(FUNCTION_MODEL)
    twice = next(f for f in model.functions if f.name == "Twice")
    twice.node[1].op_type = "Twice"
    with pytest.raises(ModelLoadError, match="calls itself"):
        kiln.load(model)


def test_exponential_function_blowup_is_refused() -> None:
    functions = []
    for level in range(1, 40):
        body = [
            oh.make_node(
                f"F{level - 1}" if level > 1 else "Relu", ["a"], ["h"], domain="local" if level > 1 else ""
            ),
            oh.make_node(
                f"F{level - 1}" if level > 1 else "Relu", ["h"], ["c"], domain="local" if level > 1 else ""
            ),
        ]
        functions.append(
            oh.make_function(
                "local",
                f"F{level}",
                ["a"],
                ["c"],
                body,
                [oh.make_opsetid("", 17), oh.make_opsetid("local", 1)],
            )
        )
    graph = oh.make_graph(
        [oh.make_node("F39", ["x"], ["y"], domain="local")],
        "g",
        [oh.make_tensor_value_info("x", 1, [2])],
        [oh.make_tensor_value_info("y", 1, [2])],
    )
    model = oh.make_model(
        graph, functions=functions, opset_imports=[oh.make_opsetid("", 17), oh.make_opsetid("local", 1)]
    )
    with pytest.raises(ModelLoadError, match="more than"):
        kiln.load(model)


def test_constant_node_forms_become_constants() -> None:
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[3] x) => (float[3] y, int64[2] i, float f, string[2] s, int64 k) {
      a = Constant <value = float[3] {1.0, 2.0, 3.0}> ()
      b = Constant <value_floats = [0.5, 0.5, 0.5]> ()
      f = Constant <value_float = 4.0> ()
      i = Constant <value_ints = [7, 8]> ()
      k = Constant <value_int = 9> ()
      s = Constant <value_strings = ["ab", "c"]> ()
      t = Add(x, a)
      y = Mul(t, b)
    }
    """)
    sparse = oh.make_sparse_tensor(
        oh.make_tensor("v", onnx.TensorProto.FLOAT, [2], [5.0, 6.0]),
        oh.make_tensor("idx", onnx.TensorProto.INT64, [2], [0, 2]),
        [3],
    )
    model.graph.node.insert(0, oh.make_node("Constant", [], ["sp"], sparse_value=sparse))
    model.graph.node[-1].input[1] = "sp"
    graph = kiln.load(model)
    verify(graph)
    assert [n.op for n in graph] == ["Add", "Mul"]
    assert set(graph.constants) == {"a", "b", "f", "i", "k", "s", "sp"}
    assert graph.constants["f"].numpy().shape == () and graph.constants["f"].numpy().dtype == np.float32
    assert graph.constants["i"].numpy().tolist() == [7, 8]
    assert graph.constants["s"].numpy().tolist() == ["ab", "c"]
    assert not graph.constants["sp"].const.loaded  # densified only when used
    assert graph.constants["sp"].numpy().tolist() == [5.0, 0.0, 6.0]
    exported = kiln.to_onnx(graph)
    onnx.checker.check_model(exported)
    # constants that are graph outputs keep their output names (through an Identity)
    assert [o.name for o in exported.graph.output] == ["y", "i", "f", "s", "k"]
    assert_same_outputs(model, exported, {"x": np.array([1, 2, 3], np.float32)})


SYMBOLIC = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N,C,H,W] x, int64[3] shape) => (float[N,C,?] y, float[?,?,?] r) {
  p = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (x)
  y = ReduceMean <axes = [3], keepdims = 0> (p)
  r = Reshape(x, shape)
}
"""


def test_symbolic_dims_stay_symbolic_and_generated_names_become_unknown() -> None:
    graph = kiln.load(parse(SYMBOLIC))
    assert graph.inputs[0].type.shape == ("N", "C", "H", "W")
    pool = next(iter(graph))
    assert pool.outputs[0].type.shape[:2] == ("N", "C")
    # ONNX inference names the pooled dims unk__0.. ; kiln keeps them unknown
    assert pool.outputs[0].type.shape[2:] == (None, None)
    reshape = next(n for n in graph if n.op == "Reshape")
    assert reshape.outputs[0].type == TensorType(reshape.outputs[0].type.dtype, (None, None, None))


def test_input_shape_override_propagates() -> None:
    graph = kiln.load(parse(SYMBOLIC), input_shapes={"x": [2, 3, 8, 8]})
    assert graph.inputs[0].type.shape == (2, 3, 8, 8)
    pool, mean = list(graph)[:2]
    assert pool.outputs[0].type.shape == (2, 3, 4, 4)
    assert mean.outputs[0].type.shape == (2, 3, 4)
    symbolic = kiln.load(parse(SYMBOLIC), input_shapes={"x": ["B", 3, -1, "W"]})
    assert symbolic.inputs[0].type.shape == ("B", 3, None, "W")


def test_input_shape_override_errors() -> None:
    with pytest.raises(ModelLoadError, match=r"'z'.*inputs: 'x', 'shape'"):
        kiln.load(parse(SYMBOLIC), input_shapes={"z": [1]})
    with pytest.raises(ModelLoadError, match="rank 4"):
        kiln.load(parse(SYMBOLIC), input_shapes={"x": [1, 3, 8]})


def test_unsorted_graph_is_sorted_and_keeps_indices() -> None:
    model = parse(SYMBOLIC)
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(reversed(nodes))
    graph = kiln.load(model)
    verify(graph)
    assert [n.op for n in graph] == ["Reshape", "MaxPool", "ReduceMean"]
    assert [n.loc.index for n in graph] == [0, 2, 1]
    # ONNX inference saw the nodes in topological order too
    assert [str(n.outputs[0].type) for n in graph] == ["f32[?,?,?]", "f32[N,C,?,?]", "f32[N,C,?]"]


def test_omitted_optional_outputs_round_trip() -> None:
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2,1,3] x, float[1,8,3] w, float[1,8,2] r) => (float[1,1,2] h) {
      "", h = LSTM <hidden_size = 2> (x, w, r)
    }
    """)
    graph = kiln.load(model)
    lstm = next(iter(graph))
    assert len(lstm.outputs) == 2 and lstm.outputs[0].meta.get("omitted")
    exported = kiln.to_onnx(graph)
    assert list(exported.graph.node[0].output) == ["", "h"]
    rng = np.random.default_rng(3)
    feeds = {
        k: rng.random(s, dtype=np.float32) for k, s in (("x", (2, 1, 3)), ("w", (1, 8, 3)), ("r", (1, 8, 2)))
    }
    assert_same_outputs(model, exported, feeds)


def test_infer_false_keeps_declared_types_only() -> None:
    graph = kiln.load(parse(SYMBOLIC), infer=False)
    pool = next(iter(graph))
    assert pool.outputs[0].type is None
    assert str(graph.outputs[0].type) == "f32[N,C,?]"


def test_value_info_and_output_names_in_export() -> None:
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x) => (float[2] x, float[2] y, float[2] y2) {
      t = Relu(x)
      y = Neg(t)
      y2 = Identity(y)
    }
    """)
    graph = kiln.load(model)
    # make the graph list the same value twice
    graph.outputs[2] = graph.outputs[1]
    exported = kiln.to_onnx(graph)
    onnx.checker.check_model(exported)
    names = [o.name for o in exported.graph.output]
    assert names[:2] == ["x", "y"] and names[2] not in ("x", "y")
    assert "t" in {vi.name for vi in exported.graph.value_info}
    out = run(exported, {"x": np.array([1.0, -2.0], np.float32)})
    np.testing.assert_array_equal(out[names[2]], out["y"])
    np.testing.assert_array_equal(out["x"], [1.0, -2.0])


def test_subgraph_outputs_that_are_outer_values_get_identities() -> None:
    # onnxruntime refuses the original ("Subgraph output (x) is an outer scope value being returned
    # directly"); the export puts an Identity in front of each such output, and of a repeated one
    model = parse(
        """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x, bool c) => (float[2] y, float[2] w) {
      k = Constant <value = float[2] {5.0, 6.0}> ()
      y, w = If (c) <
        then_branch = t () => (float[2] x, float[2] k) { },
        else_branch = e () => (float[2] b, float[2] b) { b = Neg(x) }
      >
    }
    """,
        check=False,
    )
    exported = kiln.to_onnx(kiln.load(model))
    onnx.checker.check_model(exported)
    branches = {a.name: a.g for a in exported.graph.node[0].attribute}
    assert [n.op_type for n in branches["then_branch"].node] == ["Identity", "Identity"]
    assert [n.op_type for n in branches["else_branch"].node] == ["Neg", "Identity"]
    x = np.array([1.0, 2.0], np.float32)
    out = run(exported, {"x": x, "c": np.array(True)})
    np.testing.assert_array_equal(out["w"], [5.0, 6.0])
    out = run(exported, {"x": x, "c": np.array(False)})
    np.testing.assert_array_equal(out["y"], -x)
    np.testing.assert_array_equal(out["w"], -x)


@pytest.mark.parametrize("opset", [7, 11, 13, 18, onnx.defs.onnx_opset_version()])
def test_opsets_from_7_to_newest(opset: int) -> None:
    model = parse(f"""
    <ir_version: 3, opset_import: ["" : {opset}]>
    g (float[2,3] x) => (float[2,3] y) {{
      s = Add(x, x)
      t = Sigmoid(s)
      y = Mul(t, x)
    }}
    """)
    graph = kiln.load(model)
    assert graph.opsets == {"": opset} and {n.version for n in graph} == {opset}
    exported = kiln.to_onnx(graph)
    assert exported.ir_version >= 4 and exported.opset_import[0].version == opset
    if opset <= 21:  # what the installed onnxruntime runs
        assert_same_outputs(model, exported, {"x": np.arange(6, dtype=np.float32).reshape(2, 3)})
