"""TFLite lowering of elementwise, shape, reduction and matrix ops (on data as stored, NHWC or not).

- Add/Sub/Mul/Div/Pow/Max/Min/comparisons broadcast as ONNX does; n-ary Sum/Max/Min
  are chains; a Relu/Relu6 that is the only reader of an ADD/SUB/MUL/DIV is fused into
  it (``fused_activation_function``); ``kiln.AddAct`` (``fuse-add-act``, which the
  target's pipeline runs) is an ADD with its activation fused the same way.
- Softmax over the last axis is SOFTMAX; opset < 13 Softmax over the axes from
  ``axis`` on is a RESHAPE to 2-D around it; a single inner axis a TRANSPOSE around it.
- MatMul by a constant 2-D matrix and Gemm are FULLY_CONNECTED (keep_num_dims), other
  MatMuls BATCH_MATMUL.
- Reshape/Flatten/Squeeze/Unsqueeze are RESHAPE to the static output shape.
- LayerNormalization is MEAN, SUB, MUL, MEAN, ADD, RSQRT, MUL (+ scale, + bias).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from kiln.codegen.tflite.lower import Lowerer, lowers, prod
from kiln.ir.core import Node, Value

BINARY = {"Add": "ADD", "Sub": "SUB", "Mul": "MUL", "Div": "DIV", "Pow": "POW", "Equal": "EQUAL", "Greater": "GREATER", "Less": "LESS",
          "GreaterOrEqual": "GREATER_EQUAL", "LessOrEqual": "LESS_EQUAL", "And": "LOGICAL_AND",
          "Or": "LOGICAL_OR", "Mod": "FLOOR_MOD"}
FUSES_ACT = ("ADD", "SUB", "MUL", "DIV")
UNARY = {"Relu": "RELU", "Sigmoid": "LOGISTIC", "Tanh": "TANH", "Exp": "EXP", "Log": "LOG", "Sqrt": "SQRT",
         "Neg": "NEG", "Abs": "ABS", "Floor": "FLOOR", "Ceil": "CEIL", "Round": "ROUND", "Sin": "SIN",
         "Cos": "COS", "Not": "LOGICAL_NOT", "Sign": "SIGN", "HardSwish": "HARD_SWISH"}
REDUCE = {"ReduceMean": "MEAN", "ReduceSum": "SUM", "ReduceMax": "REDUCE_MAX", "ReduceMin": "REDUCE_MIN",
          "ReduceProd": "REDUCE_PROD"}


def _fusable_relu(lw: Lowerer, node: Node) -> tuple[str, Node | None]:
    """A Relu/Clip(0,6) reading only this node's output, to fuse into it (int8: they fuse the same)."""
    out = node.outputs[0]
    users = out.users()
    if len(users) != 1 or lw.graph.is_output(out) or lw.q is not None:
        return "NONE", None
    user = users[0]
    if user.is_op("Relu"):
        return "RELU", user
    if user.is_op("Clip"):
        lo, hi = _clip_bounds(lw, user)
        named = {(0.0, 6.0): "RELU6", (-1.0, 1.0): "RELU_N1_TO_1"}.get((lo, hi))
        if named:
            return named, user
    return "NONE", None


def _clip_bounds(lw: Lowerer, node: Node) -> tuple[float, float]:
    if "min" in node.attrs or "max" in node.attrs:
        return float(node.attr("min", -3.4028234663852886e38)), float(node.attr("max", 3.4028234663852886e38))
    lo, hi = lw.const_of(node.input(1)), lw.const_of(node.input(2))
    if (node.input(1) is not None and lo is None) or (node.input(2) is not None and hi is None):
        raise lw.unsupported(node, "Clip bounds must be constants")
    return (float(lo) if lo is not None else -3.4028234663852886e38,
            float(hi) if hi is not None else 3.4028234663852886e38)


def operand(lw: Lowerer, node: Node, i: int) -> int:
    """Input ``i`` of an elementwise op; a float constant there gets the other input's dtype."""
    v = node.inputs[i]
    assert v is not None
    return lw.value(v)


@lowers(*(f"onnx.{op}" for op in BINARY))
def binary(lw: Lowerer, node: Node) -> None:
    name = BINARY[node.op]
    a, b = node.inputs[0], node.inputs[1]
    assert a is not None and b is not None
    if name == "POW":
        exponent = lw.const_of(b)
        if exponent is not None and exponent.size == 1 and float(exponent.reshape(-1)[0]) in (2.0, 0.5, 1.0):
            e = float(exponent.reshape(-1)[0])
            out = lw.define(node.outputs[0])
            x = lw.value(a)
            if e == 2.0:
                return lw.op("MUL", [x, x], [out])
            if e == 0.5:
                return lw.op("SQRT", [x], [out])
    options: dict[str, Any] = {}
    fuse, relu = ("NONE", None)
    if name in FUSES_ACT:
        fuse, relu = _fusable_relu(lw, node)
        options["fused_activation_function"] = fuse
    out = lw.define(relu.outputs[0]) if relu is not None else lw.define(node.outputs[0])
    lw.op(name, [operand(lw, node, 0), operand(lw, node, 1)], [out], options)
    if relu is not None:
        lw.alias(node.outputs[0], out)
        lw.skip.add(relu)


@lowers("kiln.AddAct")
def add_act(lw: Lowerer, node: Node) -> None:
    """An ADD whose fused clamp is the activation (decompose_kiln_ops takes the other activations apart)."""
    fuse, is_fused = lw.fused(node)
    assert is_fused, node
    lw.op("ADD", [operand(lw, node, 0), operand(lw, node, 1)], [lw.define(node.outputs[0])],
          {"fused_activation_function": fuse})


@lowers("onnx.Sum", "onnx.Max", "onnx.Min", "onnx.Mean")
def nary(lw: Lowerer, node: Node) -> None:
    name = {"Sum": "ADD", "Max": "MAXIMUM", "Min": "MINIMUM", "Mean": "ADD"}[node.op]
    ins = [lw.value(v) for v in node.inputs if v is not None]
    out_v = node.outputs[0]
    out = lw.define(out_v)
    shape = lw.shape(out_v)
    if len(ins) == 1:
        return lw.op("RESHAPE", [ins[0], lw.ints(shape, "shape")], [out], {"new_shape": list(shape)})
    acc = ins[0]
    for k, t in enumerate(ins[1:]):
        last = k == len(ins) - 2 and node.op != "Mean"
        nxt = out if last else lw.new(out_v.name + "_acc", shape, lw.dtype(out_v))
        lw.op(name, [acc, t], [nxt])
        acc = nxt
    if node.op == "Mean":
        lw.op("MUL", [acc, lw.scalar(1.0 / len(ins), "mean_scale")], [out])


@lowers("onnx.Where")
def where(lw: Lowerer, node: Node) -> None:
    lw.op("SELECT_V2", [lw.value(v) for v in node.inputs], [lw.define(node.outputs[0])])


@lowers("onnx.PRelu")
def prelu(lw: Lowerer, node: Node) -> None:
    x, slope = node.inputs
    assert x is not None and slope is not None
    lw.op("PRELU", [lw.value(x), lw.prelu_slope(slope, len(lw.shape(x)))], [lw.define(node.outputs[0])])


@lowers(*(f"onnx.{op}" for op in UNARY), "kiln.HardSwish")
def unary(lw: Lowerer, node: Node) -> None:
    if node in lw.skip:
        return
    lw.unary(UNARY[node.op], lw.value(node.inputs[0]), lw.define(node.outputs[0]))


@lowers("onnx.Clip", "onnx.LeakyRelu", "onnx.HardSigmoid", "onnx.Elu", "onnx.Gelu", "kiln.Gelu",
        "onnx.Mish", "kiln.Swish", "onnx.Reciprocal", "onnx.Softplus", "onnx.Erf")
def activation(lw: Lowerer, node: Node) -> None:
    if node in lw.skip:
        return
    x = lw.value(node.inputs[0])
    out_v = node.outputs[0]
    out = lw.define(out_v)
    shape = lw.shape(out_v)
    op = node.op
    if op == "Clip":
        lo, hi = _clip_bounds(lw, node)
        return lw.activation(node, "Clip", [lo, hi], x, out, shape)
    if op == "LeakyRelu":
        return lw.activation(node, op, [float(node.attr("alpha", 0.01))], x, out, shape)
    if op == "HardSigmoid":
        return lw.activation(node, op, [float(node.attr("alpha", 0.2)), float(node.attr("beta", 0.5))], x, out, shape)
    if op == "Elu":
        return lw.activation(node, op, [float(node.attr("alpha", 1.0))], x, out, shape)
    if op == "Gelu":
        return lw.activation(node, "Gelu", [], x, out, shape, approximate=str(node.attr("approximate", "none")))
    if op == "Swish":
        return lw.activation(node, "Swish", [float(node.attr("alpha", 1.0))], x, out, shape)
    if op == "Mish":
        return lw.activation(node, "Mish", [], x, out, shape)
    if op == "Reciprocal":
        return lw.op("DIV", [lw.scalar(1.0, "one"), x], [out])
    if op == "Softplus":
        e = lw.new("softplus_exp", shape, np.float32)
        lw.unary("EXP", x, e)
        p = lw.new("softplus_1p", shape, np.float32)
        lw.op("ADD", [e, lw.scalar(1.0, "one")], [p])
        return lw.unary("LOG", p, out)
    raise lw.unsupported(node, "TFLite has no builtin for it")


@lowers("onnx.Identity", "onnx.Dropout")
def identity(lw: Lowerer, node: Node) -> None:
    x = node.inputs[0]
    assert x is not None
    out_v = node.outputs[0]
    if lw.graph.is_output(out_v) and (x.is_graph_input or x.const is not None or lw.graph.is_output(x)):
        shape = lw.shape(out_v)
        return lw.op("RESHAPE", [lw.value(x), lw.ints(shape, "shape")], [lw.define(out_v)], {"new_shape": list(shape)})
    lw.alias(out_v, lw.value(x))


@lowers("onnx.Cast")
def cast(lw: Lowerer, node: Node) -> None:
    x = node.inputs[0]
    assert x is not None
    out_v = node.outputs[0]
    lw.op("CAST", [lw.value(x)], [lw.define(out_v)], {"in_data_type": lw.dtype(x).name,
                                                      "out_data_type": lw.dtype(out_v).name})


# ------------------------------------------------------------------------------------ softmax


@lowers("onnx.Softmax", "onnx.LogSoftmax")
def softmax(lw: Lowerer, node: Node) -> None:
    xv = node.inputs[0]
    assert xv is not None
    shape = lw.shape(xv)
    rank = len(shape)
    name = "SOFTMAX" if node.op == "Softmax" else "LOG_SOFTMAX"
    options = {"beta": 1.0} if name == "SOFTMAX" else {}
    opset = node.version or 13
    axis = int(node.attr("axis", 1 if opset < 13 else -1)) % rank
    x, out = lw.value(xv), lw.define(node.outputs[0])
    dtype = lw.dtype(xv)
    if axis == rank - 1:
        return lw.op(name, [x], [out], options)
    if opset < 13:  # softmax over the flattened axes axis..rank-1
        flat = (prod(shape[:axis]), prod(shape[axis:]))
        a = lw.new("softmax_2d", flat, dtype)
        lw.op("RESHAPE", [x, lw.ints(flat, "shape")], [a], {"new_shape": list(flat)})
        s = lw.new("softmax_2d_out", flat, dtype)
        lw.op(name, [a], [s], options)
        return lw.op("RESHAPE", [s, lw.ints(shape, "shape")], [out], {"new_shape": list(shape)})
    perm = list(range(rank))
    perm[axis], perm[-1] = perm[-1], perm[axis]
    moved = tuple(shape[p] for p in perm)
    a = lw.new("softmax_moved", moved, dtype)
    lw.op("TRANSPOSE", [x, lw.ints(perm, "perm")], [a])
    s = lw.new("softmax_moved_out", moved, dtype)
    lw.op(name, [a], [s], options)
    lw.op("TRANSPOSE", [s, lw.ints(perm, "perm")], [out])


# ------------------------------------------------------------------------------------ matrices


def _fully_connected(lw: Lowerer, node: Node, a: Value, weights: int, bias: int, act: str, out: int) -> None:
    lw.op("FULLY_CONNECTED", [lw.value(a), weights, bias], [out],
          {"fused_activation_function": act, "keep_num_dims": True})


@lowers("onnx.MatMul")
def matmul(lw: Lowerer, node: Node) -> None:
    a, b = node.inputs
    assert a is not None and b is not None
    out_v = node.outputs[0]
    w = lw.const_of(b)
    if lw.q is not None and lw.q.float_weights(node, 1) is not None:
        w = lw.q.float_weights(node, 1)
    if w is not None and w.ndim == 2:
        weights = lw.weight_tensor(node, 1, lambda m: np.ascontiguousarray(m.T), axis=0)
        bias = lw.bias(node, 99, w.shape[1]) if lw.quantized(node) else -1
        return _fully_connected(lw, node, a, weights, bias, "NONE", lw.define(out_v))
    lw.op("BATCH_MATMUL", [lw.value(a), lw.value(b)], [lw.define(out_v)], {"adj_x": False, "adj_y": False})


@lowers("onnx.Gemm", "kiln.GemmAct")
def gemm(lw: Lowerer, node: Node) -> None:
    a, b, c = node.input(0), node.input(1), node.input(2)
    assert a is not None and b is not None
    if node.attr("transA", 0):
        raise lw.unsupported(node, "Gemm with transA")
    alpha, beta = float(node.attr("alpha", 1.0)), float(node.attr("beta", 1.0))
    w = lw.weights(node, 1)
    trans_b = bool(node.attr("transB", 0))
    n = w.shape[0] if trans_b else w.shape[1]

    def layout(m: np.ndarray) -> np.ndarray:
        m = m if trans_b else m.T
        return np.ascontiguousarray(m * alpha if alpha != 1.0 and m.dtype.kind == "f" else m)

    if alpha != 1.0 and lw.quantized(node):
        raise lw.unsupported(node, "int8 Gemm with alpha != 1")
    weights = lw.weight_tensor(node, 1, layout, axis=0)
    c_data = lw.const_of(c)
    if c is not None and (c_data is None or c_data.size not in (1, n)):
        raise lw.unsupported(node, "Gemm with a C that is not a constant vector")
    bias_values = None if c_data is None else np.broadcast_to(c_data.reshape(-1) * beta, (n,)).astype(np.float32)
    if lw.quantized(node):
        bias = lw.q.bias_tensor(node, 2, n, bias_values if bias_values is not None else np.zeros(n, np.float32))
    else:
        bias = -1 if bias_values is None else lw.const(bias_values, c.name if c is not None else "fc_bias")
    raw, final, act = lw.conv_output(node)
    _fully_connected(lw, node, a, weights, bias, act, raw)
    if raw != final:
        lw.finish_act(node, raw, final, lw.shape(node.outputs[0]))


# ------------------------------------------------------------------------------------ shapes


@lowers("onnx.Reshape", "onnx.Flatten", "onnx.Squeeze", "onnx.Unsqueeze")
def reshape(lw: Lowerer, node: Node) -> None:
    out_v = node.outputs[0]
    shape = lw.shape(out_v)
    lw.op("RESHAPE", [lw.value(node.inputs[0]), lw.ints(shape, "shape")], [lw.define(out_v)],
          {"new_shape": list(shape)})


@lowers("onnx.Transpose")
def transpose(lw: Lowerer, node: Node) -> None:
    x = node.inputs[0]
    assert x is not None
    rank = len(lw.shape(x))
    perm = node.attr("perm") or list(reversed(range(rank)))
    lw.op("TRANSPOSE", [lw.value(x), lw.ints(perm, "perm")], [lw.define(node.outputs[0])])


@lowers("onnx.Concat")
def concat(lw: Lowerer, node: Node) -> None:
    out_v = node.outputs[0]
    rank = len(lw.shape(out_v))
    ins = [lw.value(v) for v in node.inputs if v is not None and prod(lw.shape(v)) > 0]
    lw.op("CONCATENATION", ins, [lw.define(out_v)], {"axis": int(node.attr("axis")) % rank})


@lowers("onnx.Split")
def split(lw: Lowerer, node: Node) -> None:
    x = node.inputs[0]
    assert x is not None
    rank = len(lw.shape(x))
    axis = int(node.attr("axis", 0)) % rank
    sizes = [lw.shape(o)[axis] for o in node.outputs]
    outs = [lw.define(o) for o in node.outputs]
    lw.op("SPLIT_V", [lw.value(x), lw.ints(sizes, "size_splits"), lw.ints(np.array(axis), "axis")], outs,
          {"num_splits": len(outs)})


@lowers("onnx.Slice")
def slice_(lw: Lowerer, node: Node) -> None:
    x = node.inputs[0]
    assert x is not None
    shape = lw.shape(x)
    rank = len(shape)
    if "starts" in node.attrs:
        starts, ends = list(node.attr("starts")), list(node.attr("ends"))
        axes = list(node.attr("axes") or range(len(starts)))
        steps = [1] * len(starts)
    else:
        starts = [int(v) for v in lw.require_const(node, 1, "starts").reshape(-1)]
        ends = [int(v) for v in lw.require_const(node, 2, "ends").reshape(-1)]
        axes_c = lw.const_of(node.input(3))
        if node.input(3) is not None and axes_c is None:
            raise lw.unsupported(node, "axes must be a constant")
        axes = [int(a) for a in axes_c.reshape(-1)] if axes_c is not None else list(range(len(starts)))
        steps_c = lw.const_of(node.input(4))
        if node.input(4) is not None and steps_c is None:
            raise lw.unsupported(node, "steps must be a constant")
        steps = [int(s) for s in steps_c.reshape(-1)] if steps_c is not None else [1] * len(starts)
    begin, end, stride = [0] * rank, list(shape), [1] * rank
    end_mask = 0
    for s, e, a, st in zip(starts, ends, axes, steps):
        a %= rank
        b_, e_, st_ = slice(s, e, st).indices(shape[a])
        begin[a], end[a], stride[a] = b_, e_, st_
        if st_ < 0 and e_ < 0:
            end_mask |= 1 << a
    out_v = node.outputs[0]
    lw.op("STRIDED_SLICE", [lw.value(x), lw.ints(begin, "begin"), lw.ints(end, "end"), lw.ints(stride, "strides")],
          [lw.define(out_v)], {"end_mask": end_mask})


@lowers("onnx.Pad")
def pad(lw: Lowerer, node: Node) -> None:
    x = node.inputs[0]
    assert x is not None
    rank = len(lw.shape(x))
    if "pads" in node.attrs:
        pads = [int(p) for p in node.attr("pads")]
        value = float(node.attr("value", 0.0))
    else:
        pads = [int(p) for p in lw.require_const(node, 1, "pads").reshape(-1)]
        v = lw.const_of(node.input(2))
        if node.input(2) is not None and v is None:
            raise lw.unsupported(node, "the pad value must be a constant")
        value = float(v.reshape(-1)[0]) if v is not None and v.size else 0.0
    if node.input(3) is not None:
        raise lw.unsupported(node, "Pad with axes")
    if any(p < 0 for p in pads):
        raise lw.unsupported(node, "negative pads")
    paddings = lw.ints([[pads[i], pads[rank + i]] for i in range(rank)], "paddings")
    mode = str(node.attr("mode", "constant"))
    out = lw.define(node.outputs[0])
    if mode == "reflect":
        return lw.op("MIRROR_PAD", [lw.value(x), paddings], [out], {"mode": "REFLECT"})
    if mode != "constant":
        raise lw.unsupported(node, f"Pad mode {mode}")
    if value == 0.0:
        return lw.op("PAD", [lw.value(x), paddings], [out])
    lw.op("PADV2", [lw.value(x), paddings, lw.const(np.array(value, lw.dtype(x)), "pad_value", weight=False)], [out])


@lowers("onnx.Gather")
def gather(lw: Lowerer, node: Node) -> None:
    x, idx = node.inputs
    assert x is not None and idx is not None
    rank = len(lw.shape(x))
    axis = int(node.attr("axis", 0)) % rank
    data = lw.const_of(idx)
    if data is not None:
        data = np.where(data < 0, data + lw.shape(x)[axis], data).astype(np.int32)
        indices = lw.const(data, "indices", weight=False)
    else:
        indices = lw.value(idx)
    lw.op("GATHER", [lw.value(x), indices], [lw.define(node.outputs[0])], {"axis": axis})


@lowers("onnx.Expand")
def expand(lw: Lowerer, node: Node) -> None:
    out_v = node.outputs[0]
    lw.op("BROADCAST_TO", [lw.value(node.inputs[0]), lw.ints(lw.shape(out_v), "shape")], [lw.define(out_v)])


@lowers("onnx.Tile")
def tile(lw: Lowerer, node: Node) -> None:
    reps = lw.require_const(node, 1, "repeats").astype(np.int32)
    lw.op("TILE", [lw.value(node.inputs[0]), lw.ints(reps, "multiples")], [lw.define(node.outputs[0])])


@lowers("onnx.Shape")
def shape_of(lw: Lowerer, node: Node) -> None:
    x = node.inputs[0]
    assert x is not None
    dims = np.array(lw.shape(x), dtype=np.int64)
    start, end = node.attr("start"), node.attr("end")
    dims = dims[slice(start, end)]
    lw.alias(node.outputs[0], lw.const(dims, "shape", weight=False))


# ------------------------------------------------------------------------------------ reductions


def _axes(lw: Lowerer, node: Node, rank: int) -> list[int]:
    if "axes" in node.attrs:
        return sorted(int(a) % rank for a in node.attr("axes"))
    if node.input(1) is not None:
        return sorted(int(a) % rank for a in lw.require_const(node, 1, "axes").reshape(-1))
    return list(range(rank))


@lowers(*(f"onnx.{op}" for op in REDUCE))
def reduce(lw: Lowerer, node: Node) -> None:
    x = node.inputs[0]
    assert x is not None
    rank = len(lw.shape(x))
    axes = _axes(lw, node, rank)
    lw.op(REDUCE[node.op], [lw.value(x), lw.ints(axes, "axes")], [lw.define(node.outputs[0])],
          {"keep_dims": bool(node.attr("keepdims", 1))})


@lowers("onnx.ArgMax", "onnx.ArgMin")
def arg(lw: Lowerer, node: Node) -> None:
    x = node.inputs[0]
    assert x is not None
    shape = lw.shape(x)
    axis = int(node.attr("axis", 0)) % len(shape)
    if node.attr("select_last_index", 0):
        raise lw.unsupported(node, "select_last_index")
    out_v = node.outputs[0]
    name = "ARG_MAX" if node.op == "ArgMax" else "ARG_MIN"
    dropped = tuple(d for i, d in enumerate(shape) if i != axis)
    if not node.attr("keepdims", 1):
        return lw.op(name, [lw.value(x), lw.ints(np.array([axis]), "axis")], [lw.define(out_v)],
                     {"output_type": lw.dtype(out_v).name})
    raw = lw.new(out_v.name + "_arg", dropped, lw.dtype(out_v))
    lw.op(name, [lw.value(x), lw.ints(np.array([axis]), "axis")], [raw], {"output_type": lw.dtype(out_v).name})
    out_shape = lw.shape(out_v)
    lw.op("RESHAPE", [raw, lw.ints(out_shape, "shape")], [lw.define(out_v)], {"new_shape": list(out_shape)})


# ------------------------------------------------------------------------------------ normalization


@lowers("onnx.LayerNormalization", "kiln.LayerNorm")
def layer_norm(lw: Lowerer, node: Node) -> None:
    xv = node.inputs[0]
    assert xv is not None
    shape = lw.shape(xv)
    rank = len(shape)
    axis = int(node.attr("axis", -1)) % rank
    eps = float(node.attr("epsilon", 1e-5))
    axes = lw.ints(list(range(axis, rank)), "axes")
    kept = tuple(shape[:axis]) + (1,) * (rank - axis)
    x = lw.value(xv)
    f32 = np.float32
    mean = lw.new("ln_mean", kept, f32)
    lw.op("MEAN", [x, axes], [mean], {"keep_dims": True})
    diff = lw.new("ln_diff", shape, f32)
    lw.op("SUB", [x, mean], [diff])
    sq = lw.new("ln_sq", shape, f32)
    lw.op("MUL", [diff, diff], [sq])
    var = lw.new("ln_var", kept, f32)
    lw.op("MEAN", [sq, axes], [var], {"keep_dims": True})
    var_eps = lw.new("ln_var_eps", kept, f32)
    lw.op("ADD", [var, lw.scalar(eps, "ln_eps")], [var_eps])
    inv = lw.new("ln_rsqrt", kept, f32)
    lw.unary("RSQRT", var_eps, inv)
    scale, bias = node.input(1), node.input(2)
    out = lw.define(node.outputs[0])
    normed = out if scale is None and bias is None else lw.new("ln_normed", shape, f32)
    lw.op("MUL", [diff, inv], [normed])
    if scale is not None:
        scaled = out if bias is None else lw.new("ln_scaled", shape, f32)
        lw.op("MUL", [normed, lw.value(scale)], [scaled])
        normed = scaled
    if bias is not None:
        lw.op("ADD", [normed, lw.value(bias)], [out])
