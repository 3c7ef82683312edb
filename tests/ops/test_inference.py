"""kiln's own type/shape inference: hand-written symbolic cases and a differential test.

(a) Hand-written cases with symbolic dims: broadcasting, Reshape with -1 and
    0, Conv/Pool output sizes (auto_pad, ceil_mode), Slice with negative
    steps, the Shape -> Gather -> Concat -> Reshape propagation, merging.
(b) Every ONNX backend node test case whose model is a single node of an op
    kiln has its own inference for: inputs typed as the model declares them,
    the node inferred with ``infer_node``, each output's dtype and shape
    compared with the expected output arrays.  The shape-dependent ops are
    run a second time with their inputs made constants, where the output
    shape must come out exact.  None of this goes through the ONNX fallback.
"""

from __future__ import annotations

import time
import warnings
import zlib
from typing import Any

import numpy as np
import onnx
import pytest
from kiln.errors import InferenceFailure
from kiln.ir import Attr, AttrKind, DType, Graph, Tensor, TensorType
from kiln.ir.types import parse_type
from kiln.ops.inference import (
    InferenceError,
    has_inference,
    infer_and_update,
    infer_graph,
    infer_node,
    merge_types,
)
from onnx import helper, numpy_helper

F32 = DType.FLOAT
I64 = DType.INT64


def T(text: str) -> TensorType:
    t = parse_type(text)
    assert isinstance(t, TensorType)
    return t


def _graph(opset: int = 18) -> Graph:
    g = Graph()
    g.opsets = {"": opset}
    return g


def infer1(op: str, inputs: list, attrs: dict | None = None, *, opset: int = 18, outputs: int = 1) -> Any:
    """Infers one node; ``inputs`` are type texts, numpy arrays (constants) or None."""
    g = _graph(opset)
    values = []
    for i, spec in enumerate(inputs):
        if spec is None:
            values.append(None)
        elif isinstance(spec, str):
            values.append(g.add_input(f"in{i}", parse_type(spec)))
        else:
            values.append(g.add_constant(f"c{i}", np.asarray(spec)))
    node = g.create_node(op, values, attrs or {}, num_outputs=outputs)
    types = infer_node(node)
    return types[0] if outputs == 1 else types


def shape_of(op: str, inputs: list, attrs: dict | None = None, **kw: Any) -> tuple | None:
    t = infer1(op, inputs, attrs, **kw)
    return t.shape


# =========================================================================== (a) hand-written


class TestBroadcast:
    def test_symbols(self) -> None:
        assert infer1("Add", ["f32[N,3,4]", "f32[1,N,1,4]"]) == T("f32[1,N,3,4]")
        assert shape_of("Mul", ["f32[N,1]", "f32[1,M]"]) == ("N", "M")
        assert shape_of("Sub", ["f32[N,5]", "f32[M,5]"]) == (None, 5)  # two different symbols
        assert shape_of("Div", ["f32[N,1]", "f32[7,1]"]) == (7, 1)  # int beats a symbol
        assert shape_of("Add", ["f32[1,4]", "f32[N,4]"]) == ("N", 4)
        assert shape_of("Add", ["f32[?,4]", "f32[3,4]"]) == (3, 4)
        assert shape_of("Add", ["f32[?,4]", "f32[N,4]"]) == (None, 4)
        assert shape_of("Add", ["f32[...]", "f32[N,4]"]) is None
        assert shape_of("Add", ["f32[]", "f32[N,4]"]) == ("N", 4)

    def test_incompatible_raises(self) -> None:
        with pytest.raises(InferenceError, match=r"cannot broadcast \[1,3,4\] with \[1,5,4\]"):
            infer1("Add", ["f32[1,3,4]", "f32[1,5,4]"])
        with pytest.raises(InferenceError, match="element type"):
            infer1("Add", ["f32[3]", "i64[3]"])

    def test_variadic_where_compare(self) -> None:
        assert shape_of("Max", ["f32[N,1,1]", "f32[1,C,1]", "f32[1,1,W]"]) == ("N", "C", "W")
        assert infer1("Where", ["bool[N,1]", "f32[1,M]", "f32[]"]) == T("f32[N,M]")
        assert infer1("Equal", ["i64[N]", "i64[1]"]) == T("bool[N]")
        assert infer1("Cast", ["f32[N,3]"], {"to": int(DType.FLOAT16)}) == T("f16[N,3]")
        assert infer1("CastLike", ["f32[N,3]", "bf16[]"]) == T("bf16[N,3]")
        assert infer1("Dropout", ["f32[N,3]"], outputs=2) == [T("f32[N,3]"), T("bool[N,3]")]
        assert infer1("Relu", ["f16[B,S,D]"]) == T("f16[B,S,D]")

    def test_matmul_gemm(self) -> None:
        assert shape_of("MatMul", ["f32[B,S,64]", "f32[64,128]"]) == ("B", "S", 128)
        assert shape_of("MatMul", ["f32[B,1,S,64]", "f32[H,64,S]"]) == ("B", "H", "S", "S")
        assert shape_of("MatMul", ["f32[64]", "f32[B,64,7]"]) == ("B", 7)
        assert shape_of("MatMul", ["f32[B,S,64]", "f32[64]"]) == ("B", "S")
        with pytest.raises(InferenceError, match="inner dims"):
            infer1("MatMul", ["f32[2,3]", "f32[4,5]"])
        assert shape_of("Gemm", ["f32[K,N]", "f32[M,K]", "f32[M]"], {"transA": 1, "transB": 1}) == ("N", "M")


class TestReshape:
    def test_minus_one_and_zero(self) -> None:
        x = "f32[N,S,768]"
        assert shape_of("Reshape", [x, np.array([0, 0, 12, 64])]) == ("N", "S", 12, 64)
        assert shape_of("Reshape", [x, np.array([0, -1, 12, 64])]) == ("N", "S", 12, 64)
        assert shape_of("Reshape", [x, np.array([-1, 768])]) == (None, 768)  # N*S is no single symbol
        assert shape_of("Reshape", ["f32[N,3,4]", np.array([0, -1])]) == ("N", 12)
        assert shape_of("Reshape", ["f32[2,3,4]", np.array([-1])]) == (24,)
        assert shape_of("Reshape", ["f32[2,3,4]", np.array([4, 0, -1])]) == (4, 3, 2)
        with pytest.raises(InferenceError, match="cannot reshape"):
            infer1("Reshape", ["f32[2,3,4]", np.array([5, -1])])
        with pytest.raises(InferenceError, match="cannot reshape"):
            infer1("Reshape", ["f32[2,3,4]", np.array([5, 5])])

    def test_allowzero(self) -> None:
        assert shape_of("Reshape", ["f32[0,3]", np.array([3, 0])], {"allowzero": 1}) == (3, 0)
        assert shape_of("Reshape", ["f32[N,3]", np.array([0, 3])], {"allowzero": 0}) == ("N", 3)

    def test_unknown_target(self) -> None:
        assert shape_of("Reshape", ["f32[N,3]", "i64[3]"]) == (None, None, None)
        assert shape_of("Reshape", ["f32[N,3]", "i64[?]"]) is None

    def test_flatten_squeeze_unsqueeze(self) -> None:
        assert shape_of("Flatten", ["f32[N,3,4,5]"], {"axis": 1}) == ("N", 60)
        assert shape_of("Flatten", ["f32[N,3,4,5]"], {"axis": 0}) == (1, None)
        assert shape_of("Squeeze", ["f32[N,1,4]", np.array([1])]) == ("N", 4)
        assert shape_of("Squeeze", ["f32[N,1,4]"], {"axes": [-2]}, opset=11) == ("N", 4)
        assert shape_of("Squeeze", ["f32[N,1,4]"]) is None  # N might be 1
        assert shape_of("Squeeze", ["f32[3,1,4]"]) == (3, 4)
        with pytest.raises(InferenceError, match="cannot squeeze"):
            infer1("Squeeze", ["f32[N,2,4]", np.array([1])])
        assert shape_of("Unsqueeze", ["f32[N,4]", np.array([0, -1])]) == (1, "N", 4, 1)
        assert shape_of("Unsqueeze", ["f32[N,4]"], {"axes": [1]}, opset=11) == ("N", 1, 4)


class TestWindows:
    def test_conv(self) -> None:
        w = "f32[16,3,3,3]"
        assert shape_of("Conv", ["f32[N,3,H,W]", w], {"pads": [1, 1, 1, 1]}) == ("N", 16, "H", "W")
        assert shape_of("Conv", ["f32[N,3,H,W]", w]) == ("N", 16, None, None)
        assert shape_of("Conv", ["f32[N,3,224,224]", w], {"strides": [2, 2], "pads": [1, 1, 1, 1]}) == (
            "N",
            16,
            112,
            112,
        )
        assert shape_of("Conv", ["f32[1,3,7,8]", w], {"auto_pad": "SAME_UPPER", "strides": [2, 2]}) == (
            1,
            16,
            4,
            4,
        )
        assert shape_of("Conv", ["f32[1,3,H,W]", w], {"auto_pad": "SAME_LOWER"}) == (1, 16, "H", "W")
        assert shape_of("Conv", ["f32[1,3,7,8]", w], {"auto_pad": "VALID"}) == (1, 16, 5, 6)
        assert shape_of("Conv", ["f32[1,3,9,9]", w], {"dilations": [2, 2]}) == (1, 16, 5, 5)
        assert shape_of("Conv", ["f32[1,6,9,9]", "f32[8,3,3,3]"], {"group": 2}) == (1, 8, 7, 7)
        with pytest.raises(InferenceError, match="channels"):
            infer1("Conv", ["f32[1,4,9,9]", w])
        with pytest.raises(InferenceError, match="does not fit"):
            infer1("Conv", ["f32[1,3,2,2]", w])

    def test_conv_transpose(self) -> None:
        w = "f32[3,8,3,3]"
        assert shape_of("ConvTranspose", ["f32[N,3,5,5]", w], {"strides": [2, 2]}) == ("N", 8, 11, 11)
        assert shape_of(
            "ConvTranspose",
            ["f32[N,3,5,5]", w],
            {"strides": [2, 2], "output_padding": [1, 1], "pads": [1, 1, 1, 1]},
        ) == ("N", 8, 10, 10)
        assert shape_of("ConvTranspose", ["f32[N,3,5,5]", w], {"output_shape": [10, 12]}) == ("N", 8, 10, 12)
        assert shape_of("ConvTranspose", ["f32[N,3,H,5]", w], {"auto_pad": "SAME_UPPER", "strides": [2, 2]}) == (
            "N", 8, None, 10)  # fmt: skip
        assert shape_of("ConvTranspose", ["f32[N,3,H,W]", w], {"pads": [1, 1, 1, 1]}) == ("N", 8, "H", "W")

    def test_pool(self) -> None:
        x = "f32[N,C,5,5]"
        assert shape_of("MaxPool", [x], {"kernel_shape": [2, 2], "strides": [2, 2]}) == ("N", "C", 2, 2)
        assert shape_of("MaxPool", [x], {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}) == (
            "N",
            "C",
            3,
            3,
        )
        # ceil_mode never starts a window inside the end padding
        assert shape_of(
            "AveragePool",
            ["f32[1,1,4,4]"],
            {"kernel_shape": [2, 2], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1},
        ) == (1, 1, 3, 3)
        assert shape_of("AveragePool", [x], {"kernel_shape": [3, 3], "auto_pad": "SAME_UPPER", "strides": [2, 2]}) == (
            "N", "C", 3, 3)  # fmt: skip
        assert shape_of("MaxPool", ["f32[N,C,H,W]"], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}) == (
            "N",
            "C",
            "H",
            "W",
        )
        assert shape_of("LpPool", [x], {"kernel_shape": [3, 3], "auto_pad": "VALID"}) == ("N", "C", 3, 3)
        types = infer1("MaxPool", [x], {"kernel_shape": [2, 2]}, outputs=2)
        assert types[1] == T("i64[N,C,4,4]")
        assert shape_of("GlobalAveragePool", ["f32[N,C,H,W]"]) == ("N", "C", 1, 1)


class TestSlice:
    def test_static(self) -> None:
        x = "f32[10,20,N]"
        big = 2**63 - 1
        assert shape_of("Slice", [x, np.array([1, 0]), np.array([8, -1]), np.array([0, 1])]) == (7, 19, "N")
        # negative steps: reverse, every other from the end, empty, clamped
        assert shape_of(
            "Slice", [x, np.array([-1]), np.array([-big - 1]), np.array([0]), np.array([-1])]
        ) == (10, 20, "N")
        assert shape_of(
            "Slice", [x, np.array([-1]), np.array([-big - 1]), np.array([0]), np.array([-3])]
        ) == (4, 20, "N")
        assert shape_of("Slice", [x, np.array([20]), np.array([0]), np.array([1]), np.array([-1])]) == (
            10,
            19,
            "N",
        )
        assert shape_of("Slice", [x, np.array([2]), np.array([5]), np.array([0]), np.array([-1])]) == (
            0,
            20,
            "N",
        )
        assert shape_of("Slice", [x, np.array([-100]), np.array([100]), np.array([0])]) == (10, 20, "N")

    def test_symbolic(self) -> None:
        x = "f32[10,20,N]"
        big = 2**63 - 1
        assert shape_of("Slice", [x, np.array([0]), np.array([big]), np.array([2])]) == (10, 20, "N")
        assert shape_of(
            "Slice", [x, np.array([-1]), np.array([-big - 1]), np.array([-1]), np.array([-1])]
        ) == (10, 20, "N")
        assert shape_of("Slice", [x, np.array([1]), np.array([big]), np.array([2])]) == (10, 20, None)
        assert shape_of("Slice", [x, "i64[1]", np.array([5]), np.array([1])]) == (10, None, "N")
        with pytest.raises(InferenceError, match="step is 0"):
            infer1("Slice", [x, np.array([0]), np.array([5]), np.array([0]), np.array([0])])

    def test_opset1_attrs(self) -> None:
        assert shape_of("Slice", ["f32[10,20]"], {"starts": [2], "ends": [-2], "axes": [1]}, opset=9) == (
            10,
            16,
        )


class TestSymbolicValues:
    def test_shape_gather_concat_reshape(self) -> None:
        g = _graph(18)
        x = g.add_input("x", T("f32[N,S,768]"))
        shape = g.create_node("Shape", [x])
        first = g.create_node(
            "Gather", [shape.outputs[0], g.add_constant("i", np.array(0, np.int64))], {"axis": 0}
        )
        unsq = g.create_node("Unsqueeze", [first.outputs[0], g.add_constant("ax", np.array([0], np.int64))])
        cat = g.create_node(
            "Concat", [unsq.outputs[0], g.add_constant("rest", np.array([-1, 64], np.int64))], {"axis": 0}
        )
        reshape = g.create_node("Reshape", [x, cat.outputs[0]])
        assert infer_graph(g) == 5
        assert shape.outputs[0].meta["sym_value"] == ("N", "S", 768)
        assert first.outputs[0].type == T("i64[]") and first.outputs[0].meta["sym_value"] == ("N",)
        assert cat.outputs[0].meta["sym_value"] == ("N", -1, 64)
        assert reshape.outputs[0].type == T("f32[N,?,64]")
        assert infer_graph(g) == 0  # one pass reaches the fixed point

    def test_shape_slice_concat_reshape(self) -> None:
        """Reshape(x, Concat(Shape(x)[0:1], [-1])), as exporters write flatten."""
        g = _graph(13)
        x = g.add_input("x", T("f32[N,C,7,7]"))
        shape = g.create_node("Shape", [x])
        head = g.create_node(
            "Slice", [shape.outputs[0], g.add_constant("s", np.array([0])), g.add_constant("e", np.array([1]))]
        )
        cat = g.create_node("Concat", [head.outputs[0], g.add_constant("m", np.array([-1]))], {"axis": 0})
        reshape = g.create_node("Reshape", [x, cat.outputs[0]])
        infer_graph(g)
        assert cat.outputs[0].type == T("i64[2]") and cat.outputs[0].meta["sym_value"] == ("N", -1)
        assert reshape.outputs[0].type == T("f32[N,?]")  # C*49 is no single symbol
        x.type = T("f32[N,64,7,7]")
        infer_graph(g)
        assert reshape.outputs[0].type == T("f32[N,3136]")

    def test_slice_arith_expand_tile_range(self) -> None:
        g = _graph(18)
        x = g.add_input("x", T("f32[B,S,4]"))
        y = g.add_input("y", T("f32[S]"))
        shape = g.create_node("Shape", [x])
        bs = g.create_node(
            "Slice",
            [shape.outputs[0], g.add_constant("s", np.array([0])), g.add_constant("e", np.array([2]))],
        )
        two = g.create_node("Mul", [bs.outputs[0], g.add_constant("one", np.array([1, 2]))])
        same = g.create_node("Mul", [bs.outputs[0], g.add_constant("ones", np.array([1]))])
        exp = g.create_node("Expand", [y, same.outputs[0]])
        exp2 = g.create_node("Expand", [y, two.outputs[0]])  # S against an unknown: unknown (S may be 1)
        ones = g.create_node("Div", [bs.outputs[0], bs.outputs[0]])
        reps = g.create_node("Concat", [ones.outputs[0], g.add_constant("three", np.array([3]))], {"axis": 0})
        tile = g.create_node("Tile", [x, reps.outputs[0]])
        seq = g.create_node("Gather", [shape.outputs[0], g.add_constant("k", np.array(1))])
        rng = g.create_node(
            "Range", [g.add_constant("z", np.array(0)), seq.outputs[0], g.add_constant("d", np.array(1))]
        )
        cos = g.create_node("ConstantOfShape", [bs.outputs[0]], {"value": np.array([0], np.int64)})
        start = g.create_node("Shape", [x], {"start": -2})
        infer_graph(g)
        assert bs.outputs[0].meta["sym_value"] == ("B", "S")
        assert two.outputs[0].meta["sym_value"] == ("B", None)
        assert exp.outputs[0].type == T("f32[B,S]")
        assert exp2.outputs[0].type == T("f32[B,?]")
        assert reps.outputs[0].meta["sym_value"] == (1, 1, 3)
        assert tile.outputs[0].type == T("f32[B,S,12]")
        assert rng.outputs[0].type == T("i64[S]")
        assert cos.outputs[0].type == T("i64[B,S]")
        assert start.outputs[0].meta["sym_value"] == ("S", 4)

    def test_cast_size_and_where_equal(self) -> None:
        g = _graph(18)
        x = g.add_input("x", T("f32[N,4]"))
        shape = g.create_node("Shape", [x])
        cast = g.create_node("Cast", [shape.outputs[0]], {"to": int(DType.INT64)})
        eq = g.create_node("Equal", [cast.outputs[0], g.add_constant("m", np.array([-1, -1]))])
        where = g.create_node(
            "Where", [eq.outputs[0], g.add_constant("ones", np.array([1, 1])), cast.outputs[0]]
        )
        out = g.create_node("Expand", [g.add_input("v", T("f32[4]")), where.outputs[0]])
        size = g.create_node("Size", [x])
        infer_graph(g)
        assert where.outputs[0].meta["sym_value"] == ("N", 4)
        assert out.outputs[0].type == T("f32[N,4]")
        assert "sym_value" not in size.outputs[0].meta or size.outputs[0].meta["sym_value"] == (None,)

    def test_constant_inputs_give_static_shapes(self) -> None:
        assert shape_of("ConstantOfShape", [np.array([2, 3])]) == (2, 3)
        assert shape_of(
            "Range", [np.array(1.0, np.float32), np.array(2.0, np.float32), np.array(0.3, np.float32)]
        ) == (4,)
        assert shape_of("Tile", ["f32[2,N]", np.array([3, 1])]) == (6, "N")
        assert shape_of("Expand", ["f32[3,1]", np.array([2, 1, 6])]) == (2, 3, 6)
        assert shape_of("Pad", ["f32[N,3]", np.array([0, 1, 0, 2])]) == ("N", 6)
        assert shape_of("OneHot", ["i64[N]", np.array(10), "f32[2]"]) == ("N", 10)
        assert shape_of("Resize", ["f32[N,3,8,8]", None, np.array([1, 1, 2, 0.5], np.float32)]) == (
            "N",
            3,
            16,
            4,
        )
        assert shape_of("Resize", ["f32[N,3,8,8]", None, None, np.array([1, 3, 5, 6])]) == (1, 3, 5, 6)
        assert infer1("TopK", ["f32[N,10]", np.array([3])], outputs=2) == [T("f32[N,3]"), T("i64[N,3]")]
        split = infer1("Split", ["f32[N,10]", np.array([3, 7])], {"axis": 1}, outputs=2)
        assert [t.shape for t in split] == [("N", 3), ("N", 7)]
        split = infer1("Split", ["f32[N,10]"], {"axis": 1, "num_outputs": 3}, outputs=3)
        assert [t.shape for t in split] == [("N", 4), ("N", 4), ("N", 2)]


class TestMisc:
    def test_reduce(self) -> None:
        x = "f32[N,C,H,W]"
        assert shape_of("ReduceMean", [x, np.array([2, 3])]) == ("N", "C", 1, 1)
        assert shape_of("ReduceMean", [x, np.array([-1])], {"keepdims": 0}) == ("N", "C", "H")
        assert shape_of("ReduceMean", [x], {"axes": [1], "keepdims": 0}, opset=13) == ("N", "H", "W")
        assert shape_of("ReduceSum", [x], {"keepdims": 0}) == ()
        assert shape_of("ReduceSum", [x], {"noop_with_empty_axes": 1}) == ("N", "C", "H", "W")
        assert shape_of("ReduceMax", [x, "i64[2]"], {"keepdims": 0}) == (None, None)
        assert infer1("ArgMax", [x], {"axis": 1, "keepdims": 0}) == T("i64[N,H,W]")

    def test_norms_softmax(self) -> None:
        types = infer1("LayerNormalization", ["f16[B,S,D]", "f16[D]", "f16[D]"], {"axis": -1}, outputs=3)
        assert types == [T("f16[B,S,D]"), T("f32[B,S,1]"), T("f32[B,S,1]")]
        assert infer1("BatchNormalization", ["f32[N,C,H,W]", "f32[C]", "f32[C]", "f32[C]", "f32[C]"]) == T(
            "f32[N,C,H,W]"
        )
        assert infer1("Softmax", ["f32[N,S]"]) == T("f32[N,S]")

    def test_einsum_and_gathers(self) -> None:
        assert shape_of("Einsum", ["f32[B,I,K]", "f32[B,K,J]"], {"equation": "bik,bkj->bij"}) == (
            "B",
            "I",
            "J",
        )
        assert shape_of("Einsum", ["f32[N,3,4]", "f32[4,5]"], {"equation": "...ij,jk"}) == ("N", 3, 5)
        assert shape_of("Gather", ["f32[V,D]", "i64[B,S]"]) == ("B", "S", "D")
        assert shape_of("GatherND", ["f32[N,4,5]", "i64[N,2,1]"], {"batch_dims": 1}) == ("N", 2, 5)
        assert infer1("NonZero", ["f32[N,4]"]) == T("i64[2,?]")
        assert shape_of("DepthToSpace", ["f32[N,16,H,4]"], {"blocksize": 2}) == ("N", 4, None, 8)
        assert shape_of("Transpose", ["f32[N,C,H,W]"], {"perm": [0, 2, 3, 1]}) == ("N", "H", "W", "C")
        assert shape_of("Concat", ["f32[N,3]", "f32[N,S]", "f32[?,3]"], {"axis": 0}) == (None, 3)
        with pytest.raises(InferenceError, match="3 != 2"):
            infer1("Concat", ["f32[N,3]", "f32[N,2]"], {"axis": 0})
        assert shape_of("Concat", ["f32[N,3]", "f32[N,4]"], {"axis": 1}) == ("N", 7)

    def test_quantize(self) -> None:
        assert infer1("QuantizeLinear", ["f32[N,4]", "f32[]", "i8[]"]) == T("i8[N,4]")
        assert infer1("QuantizeLinear", ["f32[N,4]", "f32[]"]) == T("u8[N,4]")
        assert infer1("DequantizeLinear", ["i8[N,4]", "f16[]", "i8[]"], opset=21) == T("f16[N,4]")
        assert infer1("DequantizeLinear", ["i8[N,4]", "f32[]"], opset=13) == T("f32[N,4]")


class TestUpdate:
    def test_merge_types(self) -> None:
        assert merge_types(T("f32[N,3]"), T("f32[?,3]")) == T("f32[N,3]")
        assert merge_types(T("f32[N,?]"), T("f32[?,3]")) == T("f32[N,3]")
        assert merge_types(T("f32[1,3]"), T("f32[N,3]")) == T("f32[1,3]")
        assert merge_types(T("f32[...]"), T("f32[2]")) == T("f32[2]")
        assert merge_types(T("f32[2]"), T("f32[...]")) == T("f32[2]")
        assert merge_types(None, T("f32[2]")) == T("f32[2]")
        assert merge_types(T("f32[2]"), None) == T("f32[2]")
        assert merge_types(T("f32[2]"), T("f16[2]")) == T("f16[2]")  # contradiction: the new one wins
        old = T("f32[N,3]")
        assert merge_types(old, T("f32[?,3]")) is old

    def test_infer_and_update(self) -> None:
        g = _graph(18)
        x = g.add_input("x", T("f32[N,3]"))
        node = g.create_node("Relu", [x], output_types=[T("f32[?,3]")])
        assert infer_and_update(node) is True
        assert node.outputs[0].type == T("f32[N,3]")
        assert infer_and_update(node) is False
        node.outputs[0].type = T("f32[2,3]")  # more precise facts are kept
        assert infer_and_update(node) is False and node.outputs[0].type == T("f32[2,3]")
        assert infer_and_update(node, merge=False) is True and node.outputs[0].type == T("f32[N,3]")

    def test_infer_graph_error_names_node(self) -> None:
        g = _graph(18)
        a = g.add_input("a", T("f32[2,3]"))
        b = g.add_input("b", T("f32[4,3]"))
        g.create_node("Add", [a, b], name="bad_add")
        with pytest.raises(InferenceFailure, match="bad_add.*cannot broadcast"):
            infer_graph(g)

    def test_subgraphs_are_inferred(self) -> None:
        g = _graph(18)
        x = g.add_input("x", T("f32[N,3]"))
        cond = g.add_input("c", T("bool[]"))
        then_g = g.new_subgraph("then")
        then_n = then_g.create_node("Relu", [x])
        then_g.outputs.append(then_n.outputs[0])
        else_g = g.new_subgraph("else")
        else_n = else_g.create_node("Tile", [x, g.add_constant("r", np.array([1, 2]))])
        else_g.outputs.append(else_n.outputs[0])
        node = g.create_node("If", [cond], {"then_branch": then_g, "else_branch": else_g})
        infer_graph(g)  # the branches first, then the If from their outputs
        assert then_n.outputs[0].type == T("f32[N,3]") and else_n.outputs[0].type == T("f32[N,6]")
        assert node.outputs[0].type == T("f32[N,?]")

    def test_loop(self) -> None:
        g = _graph(18)
        x = g.add_input("x", T("f32[N,3]"))
        body = g.new_subgraph("body")
        body.add_input("i", T("i64[]"))
        c_in = body.add_input("cond_in", T("bool[]"))
        v = body.add_input("v", None)
        grow = body.create_node("Concat", [v, x], {"axis": 0})  # the carried value grows
        step = body.create_node("Relu", [x])
        body.outputs.extend([c_in, grow.outputs[0], step.outputs[0]])
        loop = g.create_node(
            "Loop", [g.add_constant("m", np.array(4)), None, x], {"body": body}, num_outputs=2
        )
        infer_graph(g)
        assert grow.outputs[0].type == T("f32[?,3]")
        assert [o.type for o in loop.outputs] == [T("f32[?,3]"), T("f32[?,N,3]")]


def test_speed() -> None:
    """Per-node inference stays in the microseconds (these run after every rewrite)."""
    g = _graph(18)
    x = g.add_input("x", T("f32[N,64,56,56]"))
    w = g.add_constant("w", np.zeros((64, 64, 3, 3), np.float32))
    conv = g.create_node("Conv", [x, w], {"pads": [1, 1, 1, 1], "strides": [1, 1], "kernel_shape": [3, 3]})
    add = g.create_node("Add", [x, x])
    relu = g.create_node("Relu", [x])
    timings = {}
    for node in (conv, add, relu):
        infer_node(node)
        n = 2000
        t0 = time.perf_counter()
        for _ in range(n):
            infer_node(node)
        timings[node.op] = (time.perf_counter() - t0) / n * 1e6
    print("microseconds per node:", {k: round(v, 2) for k, v in timings.items()})
    assert timings["Relu"] < 50 and timings["Add"] < 50 and timings["Conv"] < 200


# =========================================================================== (b) ONNX backend cases

# Ops whose output shape depends on input values: checked for exactness only
# when their inputs are constants.
VALUE_DEPENDENT = {
    "Reshape", "Slice", "Expand", "Tile", "Range", "ConstantOfShape", "Resize", "Upsample", "Pad",
    "Squeeze", "Unsqueeze", "Split", "TopK", "OneHot", "ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin",
    "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare",
    "CenterCropPad", "MaxUnpool", "AffineGrid", "Col2Im",
}  # fmt: skip
# With constant inputs every one of them must come out exact.
CONST_EXACT = VALUE_DEPENDENT
# Output sizes that depend on the data itself: never exact.
DATA_DEPENDENT = {"NonZero", "Unique", "Compress", "NonMaxSuppression"}


def _collect() -> list[Any]:
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = collect_testcases()
    out = []
    for c in cases:
        if c.model is None or len(c.model.graph.node) != 1:
            continue
        node = c.model.graph.node[0]
        if node.domain not in ("", "ai.onnx") or not has_inference("", node.op_type):
            continue
        out.append(c)
    return out


CASES = _collect()


def _opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    raise AssertionError("no default-domain opset")


def _type_from_proto(tp: onnx.TypeProto) -> TensorType | None:
    if tp.WhichOneof("value") != "tensor_type":
        return None
    tt = tp.tensor_type
    if not tt.HasField("shape"):
        return TensorType(DType(tt.elem_type), None)
    dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim)
    return TensorType(DType(tt.elem_type), dims)


def _attr(a: onnx.AttributeProto) -> Attr:
    kind = AttrKind(int(a.type))
    value = helper.get_attribute_value(a)
    if kind == AttrKind.STRING:
        value = value.decode("utf-8")
    elif kind == AttrKind.STRINGS:
        value = tuple(v.decode("utf-8") for v in value)
    elif kind == AttrKind.TENSOR:
        value = Tensor.from_numpy(numpy_helper.to_array(value))
    elif kind in (AttrKind.INTS, AttrKind.FLOATS):
        value = tuple(value)
    elif kind == AttrKind.TYPE_PROTO or kind == AttrKind.GRAPH:
        pytest.skip(f"attribute kind {kind.name}")
    return Attr(kind, value)


def _expected(value: Any) -> tuple[DType | None, tuple]:
    """An expected output's dtype and shape (arrays, or TensorProtos for the narrow types)."""
    if isinstance(value, onnx.TensorProto):
        return DType(value.data_type), tuple(value.dims)
    if isinstance(value, np.ndarray) or np.isscalar(value):
        arr = np.asarray(value)
        return DType.from_numpy(arr.dtype), arr.shape
    return None, ()


def _degrade(t: TensorType, rng: np.random.Generator) -> TensorType:
    """A less precise but still true type: dims become symbols named after their size, or unknown."""
    if t.shape is None or rng.random() < 0.1:
        return TensorType(t.dtype, None)
    dims = []
    for d in t.shape:
        r = rng.random()
        dims.append(f"s{d}" if r < 0.5 else None if r < 0.75 else d)
    return TensorType(t.dtype, tuple(dims))


def _build(case: Any, as_constants: bool, degrade: int | None = None) -> tuple[Graph, Any]:
    model = case.model
    proto = model.graph.node[0]
    g = Graph()
    g.opsets = {"": _opset(model)}
    inputs_data, _ = case.data_sets[0]
    by_name = {}
    for i, vi in enumerate(model.graph.input):
        t = _type_from_proto(vi.type)
        if t is None:
            pytest.skip("non-tensor input")
        if degrade is not None:
            t = _degrade(t, np.random.default_rng(zlib.crc32(f"{case.name}/{degrade}/{i}".encode())))
        if as_constants:
            data = inputs_data[i]
            arr = numpy_helper.to_array(data) if isinstance(data, onnx.TensorProto) else np.asarray(data)
            if arr.dtype != t.dtype.numpy:
                arr = arr.astype(t.dtype.numpy)
            by_name[vi.name] = g.add_constant(vi.name, arr)
        else:
            by_name[vi.name] = g.add_input(vi.name, t)
    inputs = [by_name[n] if n else None for n in proto.input]
    outputs = list(proto.output)
    while outputs and not outputs[-1]:
        outputs.pop()
    node = g.create_node(
        proto.op_type,
        inputs,
        {a.name: _attr(a) for a in proto.attribute},
        output_names=[n or f"unused{i}" for i, n in enumerate(outputs)],
    )
    return g, node


def _check(case: Any, as_constants: bool) -> tuple[int, int]:
    """Compares inferred with expected outputs; returns (outputs checked, outputs exact)."""
    _, node = _build(case, as_constants)

    op = node.op
    types = infer_node(node)
    _, expected = case.data_sets[0]
    names = [n for n in case.model.graph.node[0].output if n]
    checked = exact = 0
    for i, name in enumerate(case.model.graph.node[0].output):
        if not name:
            continue
        idx = names.index(name)
        exp_dtype, exp_shape = _expected(expected[idx])
        if exp_dtype is None:
            continue
        t = types[i]
        assert t is not None, f"output {i}: no type inferred"
        assert isinstance(t, TensorType)
        assert t.dtype == exp_dtype, f"output {i}: dtype {t.dtype.short}, expected {exp_dtype.short}"
        checked += 1
        if t.shape is None:
            assert op in VALUE_DEPENDENT | DATA_DEPENDENT and not (as_constants and op in CONST_EXACT), (
                f"output {i}: rank unknown, expected {exp_shape}"
            )
            continue
        assert len(t.shape) == len(exp_shape), f"output {i}: shape {t}, expected {exp_shape}"
        for d, e in zip(t.shape, exp_shape):
            assert d is None or isinstance(d, str) or d == e, f"output {i}: shape {t}, expected {exp_shape}"
        if t.shape == exp_shape:
            exact += 1
        elif op in DATA_DEPENDENT:
            pass
        elif as_constants:
            assert op not in CONST_EXACT, (
                f"output {i}: shape {t} not exact with constant inputs, expected {exp_shape}"
            )
        else:
            assert op in VALUE_DEPENDENT, f"output {i}: shape {t} not exact, expected {exp_shape}"
    return checked, exact


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_backend_case(case: Any) -> None:
    _check(case, as_constants=False)


CONST_CASES = [c for c in CASES if c.model.graph.node[0].op_type in CONST_EXACT]


@pytest.mark.parametrize("case", CONST_CASES, ids=[c.name for c in CONST_CASES])
def test_backend_case_constant_inputs(case: Any) -> None:
    _check(case, as_constants=True)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_backend_case_symbolic(case: Any) -> None:
    """Soundness with symbolic and unknown dims: the inputs' dims are replaced by symbols named
    after their size (``s3``) or by unknowns; every dim inferred must still be true."""
    for variant in range(2):
        _, node = _build(case, False, degrade=variant)
        types = infer_node(node)
        _, expected = case.data_sets[0]
        names = [n for n in case.model.graph.node[0].output if n]
        for i, name in enumerate(case.model.graph.node[0].output):
            if not name:
                continue
            exp_dtype, exp_shape = _expected(expected[names.index(name)])
            t = types[i]
            if exp_dtype is None or t is None:
                continue
            assert t.dtype == exp_dtype, f"output {i}: dtype {t.dtype.short}, expected {exp_dtype.short}"
            if t.shape is None:
                continue
            assert len(t.shape) == len(exp_shape), (
                f"output {i}: {t} for inputs {[v.type for v in node.inputs if v]}"
            )
            for d, e in zip(t.shape, exp_shape):
                assert d is None or d == e or d == f"s{e}", (
                    f"output {i}: {t} is not true of {exp_shape}; inputs {[str(v.type) for v in node.inputs if v]}"
                )


def _collect_graphs() -> list[Any]:
    """Multi-node backend cases (function-expanded ops, mostly) made only of covered ops."""
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = collect_testcases()
    return [
        c
        for c in cases
        if c.model is not None
        and len(c.model.graph.node) > 1
        and not c.model.functions
        and all(n.domain in ("", "ai.onnx") and has_inference("", n.op_type) for n in c.model.graph.node)
        and not any(
            a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
            for n in c.model.graph.node
            for a in n.attribute
        )
        and all(vi.type.WhichOneof("value") == "tensor_type" for vi in c.model.graph.input)
    ]


GRAPH_CASES = _collect_graphs()


def test_backend_graphs_with_infer_graph() -> None:
    """``infer_graph`` over whole multi-node models (shape subgraphs through Constant nodes
    included): every graph output's type is true, and nearly all are exact."""
    exact = total = 0
    for variant in (None, 0):
        for case in GRAPH_CASES:
            g = Graph()
            g.opsets = {"": _opset(case.model)}
            values: dict[str, Any] = {}
            for i, vi in enumerate(case.model.graph.input):
                t = _type_from_proto(vi.type)
                if variant is not None:
                    t = _degrade(t, np.random.default_rng(zlib.crc32(f"{case.name}/g/{i}".encode())))
                values[vi.name] = g.add_input(vi.name, t)
            for proto in case.model.graph.node:
                node = g.create_node(
                    proto.op_type,
                    [values[n] if n else None for n in proto.input],
                    {a.name: _attr(a) for a in proto.attribute},
                    output_names=[n or "unused" for n in proto.output],
                )
                values.update(zip(proto.output, node.outputs))
            infer_graph(g)
            _, expected = case.data_sets[0]
            for vi, exp in zip(case.model.graph.output, expected):
                exp_dtype, exp_shape = _expected(exp)
                t = values[vi.name].type
                if exp_dtype is None:
                    continue
                assert t is not None and t.dtype == exp_dtype, (
                    f"{case.name}: {vi.name} is {t}, expected {exp_dtype}"
                )
                if variant is None:
                    total += 1
                    exact += t.shape == exp_shape
                if t.shape is None:
                    continue
                assert len(t.shape) == len(exp_shape) and all(
                    d is None or d == e or d == f"s{e}" for d, e in zip(t.shape, exp_shape)
                ), f"{case.name}: {vi.name} is {t}, not true of {exp_shape}"
    print(f"graphs: {len(GRAPH_CASES)}, outputs exact {exact}/{total}")
    assert len(GRAPH_CASES) >= 300 and exact >= 450


def test_backend_coverage() -> None:
    """Most single-node backend cases of the covered ops are inferred exactly."""
    ops = {c.model.graph.node[0].op_type for c in CASES}
    assert len(ops) >= 120, sorted(ops)
    assert len(CASES) >= 900
