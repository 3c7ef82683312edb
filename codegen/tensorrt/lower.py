"""Lowering of kiln IR to the body of a TensorRT network-definition program.

Every node becomes one or a few ``network.add_*`` calls in Python source; the
weights go to a dictionary of numpy arrays (written beside the program as an
``.npz``) and the source refers to them by key.  The program is what TensorRT
users write by hand (the TensorRT 10/11 Python API, strongly typed, explicit
quantization), so it can be read, edited and run on any TensorRT machine.

Rules the lowering follows (TensorRT's, not ONNX's):

* elementwise layers, matrix multiply, normalization and attention need inputs
  of the same rank: a lower-rank operand is reshaped with leading 1s
  (constants are simply stored with the padded shape);
* convolution weights are ``trt.Weights`` when the IR has a float constant and
  the kernel input (``set_input(1, ...)``) when they come through a
  ``DequantizeLinear`` (explicit quantization: an int8 constant, its
  per-channel scales on axis 0 for Conv and 1 for ConvTranspose);
* ``QuantizeLinear``/``DequantizeLinear`` map to ``add_quantize``/``add_dequantize``
  with a constant scale (0-d per tensor, 1-d with ``axis`` per channel); the
  zero point must be 0, as kiln's ``quantize`` pass makes it;
* axes given as bit masks (reduce, softmax, normalization) are built from the
  ONNX axes after making them non-negative;
* ``IAttention`` does not scale ``Q K^T``: the query is multiplied by the
  scale before it (TensorRT's own advice), then the layer runs softmax and the
  second product; it may be decomposed when no fused kernel fits.

float64 constants are stored as float32; int64 ones stay int64 (shape
arithmetic on ``add_shape`` outputs is int64 in TensorRT 10/11).  Names from the model only appear inside string literals
(``repr``), never as code or file names.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from kiln.errors import UnsupportedOpError
from kiln.ir.core import Graph, Node, Value
from kiln.ir.dtypes import DType

_DTYPES = {
    DType.FLOAT: "trt.float32",
    DType.FLOAT16: "trt.float16",
    DType.BFLOAT16: "trt.bfloat16",
    DType.INT8: "trt.int8",
    DType.UINT8: "trt.uint8",
    DType.INT32: "trt.int32",
    DType.INT64: "trt.int64",
    DType.BOOL: "trt.bool",
}

_ELEMENTWISE = {
    "Add": "SUM", "Sub": "SUB", "Mul": "PROD", "Div": "DIV", "Pow": "POW", "Max": "MAX", "Min": "MIN",
    "Sum": "SUM", "Equal": "EQUAL", "Greater": "GREATER", "Less": "LESS", "And": "AND", "Or": "OR",
}
_UNARY = {
    "Sqrt": "SQRT", "Exp": "EXP", "Log": "LOG", "Abs": "ABS", "Neg": "NEG", "Reciprocal": "RECIP",
    "Erf": "ERF", "Floor": "FLOOR", "Ceil": "CEIL", "Sin": "SIN", "Cos": "COS", "Not": "NOT",
}
_REDUCE = {
    "ReduceMean": "AVG", "ReduceSum": "SUM", "ReduceMax": "MAX", "ReduceMin": "MIN", "ReduceProd": "PROD",
}
# ONNX activation -> (TensorRT ActivationType, the ONNX attributes giving alpha and beta, their defaults).
_ACTIVATIONS: dict[str, tuple[str, tuple[float, ...]]] = {
    "Relu": ("RELU", ()),
    "Sigmoid": ("SIGMOID", ()),
    "Tanh": ("TANH", ()),
    "LeakyRelu": ("LEAKY_RELU", (0.01,)),
    "Elu": ("ELU", (1.0,)),
    "HardSigmoid": ("HARD_SIGMOID", (0.2, 0.5)),
    "Softplus": ("SOFTPLUS", (1.0, 1.0)),
}
_FLOAT_MAX = float(np.finfo(np.float32).max)


class Lowering:
    """Turns one graph into program lines and a weights dictionary."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.lines: list[str] = []
        self.weights: dict[str, np.ndarray] = {}
        self._tensors: dict[int, str] = {}
        self._consts: dict[tuple[int, int | None, str], str] = {}
        self._count = 0
        self._layer_names: set[str] = set()

    # ------------------------------------------------------------------ emission helpers

    def _fresh(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}{self._count}"

    def emit(self, line: str) -> None:
        self.lines.append(line)

    def weight(self, array: np.ndarray) -> str:
        """Stores ``array`` and returns the key expression ``w['w7']``."""
        array = np.ascontiguousarray(array)
        if array.dtype == np.float64:
            array = array.astype(np.float32)
        key = f"w{len(self.weights)}"
        self.weights[key] = array
        return f"w[{key!r}]"

    def layer(self, call: str, node: Node | None) -> str:
        """Emits ``lN = network.<call>`` (named after ``node``) and returns ``lN``."""
        var = self._fresh("l")
        self.emit(f"{var} = network.{call}")
        if node is not None and (node.name or node.outputs):
            self.emit(f"{var}.name = {self.layer_name(node)!r}")
        return var

    def layer_name(self, node: Node) -> str:
        """The node's name, made unique when a node becomes several layers (``conv/1``)."""
        base = node.name or node.outputs[0].name
        name, k = base, 0
        while name in self._layer_names:
            k += 1
            name = f"{base}/{k}"
        self._layer_names.add(name)
        return name

    def output(self, layer: str, index: int = 0) -> str:
        var = self._fresh("t")
        self.emit(f"{var} = {layer}.get_output({index})")
        return var

    def bind(self, value: Value, tensor: str) -> None:
        self._tensors[id(value)] = tensor

    def constant(self, array: np.ndarray, shape: Sequence[int] | None = None) -> str:
        """An ``add_constant`` tensor of ``array`` (reshaped to ``shape``)."""
        data = np.asarray(array)
        if shape is not None:
            data = data.reshape(tuple(shape))
        key = self.weight(data)
        layer = self.layer(f"add_constant({_dims(data.shape)}, trt.Weights({key}))", None)
        return self.output(layer)

    def tensor(self, value: Value | None, node: Node, rank: int | None = None) -> str:
        """The ITensor expression of ``value``, with leading 1s up to ``rank``."""
        if value is None:
            raise UnsupportedOpError("an optional input this lowering needs is missing", node=node)
        shape = _shape(value)
        if value.is_constant:
            data = value.numpy()
            target = data.shape if rank is None or data.ndim >= rank else (1,) * (rank - data.ndim) + data.shape
            key = (id(value), rank, "c")
            if key not in self._consts:
                self._consts[key] = self.constant(data, target)
            return self._consts[key]
        base = self._tensors.get(id(value))
        if base is None:
            raise UnsupportedOpError(f"value {value.name!r} is used before it is defined", node=node)
        if rank is None or shape is None or len(shape) >= rank:
            return base
        key = (id(value), rank, "r")
        if key not in self._consts:
            self._consts[key] = self.reshape(base, (1,) * (rank - len(shape)) + _static(shape, value, node), None)
        return self._consts[key]

    def reshape(self, tensor: str, dims: Sequence[int], node: Node | None, zero_copies: bool = True) -> str:
        layer = self.layer(f"add_shuffle({tensor})", node)
        self.emit(f"{layer}.reshape_dims = {_dims(dims)}")
        if not zero_copies:
            self.emit(f"{layer}.zero_is_placeholder = False")
        return self.output(layer)

    def transpose(self, tensor: str, perm: Sequence[int], node: Node | None) -> str:
        layer = self.layer(f"add_shuffle({tensor})", node)
        self.emit(f"{layer}.first_transpose = trt.Permutation({list(perm)!r})")
        return self.output(layer)

    def elementwise(self, a: str, b: str, op: str, node: Node | None) -> str:
        return self.output(self.layer(f"add_elementwise({a}, {b}, trt.ElementWiseOperation.{op})", node))

    def scalar(self, value: float, rank: int, dtype: np.dtype) -> str:
        return self.constant(np.full((1,) * rank, value, dtype=dtype))

    def activation(self, tensor: str, act: str, params: Sequence[float], node: Node | None, value_dtype: Any,
                   rank: int) -> str:
        """``act(tensor)`` for a kiln/ONNX activation name with its parameters."""
        dtype = np.dtype(value_dtype) if value_dtype is not None else np.dtype(np.float32)
        if act in _ACTIVATIONS:
            kind, defaults = _ACTIVATIONS[act]
            values = list(params) + list(defaults[len(params):])
            layer = self.layer(f"add_activation({tensor}, trt.ActivationType.{kind})", node)
            if values:
                self.emit(f"{layer}.alpha = {_float(values[0])}")
            if len(values) > 1:
                self.emit(f"{layer}.beta = {_float(values[1])}")
            return self.output(layer)
        if act == "Clip":
            lo = params[0] if params else -_FLOAT_MAX
            hi = params[1] if len(params) > 1 else _FLOAT_MAX
            layer = self.layer(f"add_activation({tensor}, trt.ActivationType.CLIP)", node)
            self.emit(f"{layer}.alpha = {_float(lo)}")
            self.emit(f"{layer}.beta = {_float(hi)}")
            return self.output(layer)
        if act == "Gelu":
            kind = "GELU_TANH" if params and params[0] == 1.0 else "GELU_ERF"
            return self.output(self.layer(f"add_activation({tensor}, trt.ActivationType.{kind})", node))
        if act == "HardSwish":
            gate = self.activation(tensor, "HardSigmoid", (1.0 / 6.0, 0.5), None, value_dtype, rank)
            return self.elementwise(tensor, gate, "PROD", node)
        if act == "Swish":
            alpha = params[0] if params else 1.0
            scaled = tensor if alpha == 1.0 else self.elementwise(tensor, self.scalar(alpha, rank, dtype), "PROD", None)
            gate = self.activation(scaled, "Sigmoid", (), None, value_dtype, rank)
            return self.elementwise(tensor, gate, "PROD", node)
        if act == "Mish":
            soft = self.activation(tensor, "Softplus", (1.0, 1.0), None, value_dtype, rank)
            return self.elementwise(tensor, self.activation(soft, "Tanh", (), None, value_dtype, rank), "PROD", node)
        raise UnsupportedOpError(f"activation {act!r} has no TensorRT lowering", node=node)

    # ------------------------------------------------------------------ the graph

    def run(self) -> None:
        for value in self.graph.inputs:
            ttype = value.tensor_type
            if ttype is None or ttype.shape is None:
                raise UnsupportedOpError(f"graph input {value.name!r} has no known rank")
            dims = [d if isinstance(d, int) else -1 for d in ttype.shape]
            var = self._fresh("t")
            self.emit(f"{var} = network.add_input({value.name!r}, {_trt_dtype(ttype.dtype, value.name)}, {_dims(dims)})")
            self.bind(value, var)
        for node in self.graph:
            self.lower(node)
        for value in self.graph.outputs:
            tensor = self.tensor(value, _no_node(value))
            if value.is_constant or value.is_graph_input:
                tensor = self.output(self.layer(f"add_identity({tensor})", None))
            self.emit(f"{tensor}.name = {value.name!r}")
            self.emit(f"network.mark_output({tensor})")

    def lower(self, node: Node) -> None:
        handler = _HANDLERS.get(node.op_id)
        if handler is None:
            raise UnsupportedOpError(f"{node.op_id} has no TensorRT lowering", node=node)
        outs = handler(self, node)
        for value, tensor in zip(node.outputs, outs):
            if tensor is not None:
                self.bind(value, tensor)


# ---------------------------------------------------------------------- small helpers


def _dims(dims: Sequence[int]) -> str:
    return f"trt.Dims({[int(d) for d in dims]!r})"


def _float(x: float) -> str:
    return repr(float(np.float32(x))) if math.isfinite(x) else repr(_FLOAT_MAX if x > 0 else -_FLOAT_MAX)


def _shape(value: Value | None) -> tuple | None:
    return None if value is None else value.shape


def _rank(value: Value | None, node: Node) -> int:
    shape = _shape(value)
    if shape is None:
        raise UnsupportedOpError("an input of unknown rank cannot be lowered to TensorRT", node=node)
    return len(shape)


def _static(shape: Sequence[Any], value: Value, node: Node | None) -> tuple[int, ...]:
    if any(not isinstance(d, int) for d in shape):
        raise UnsupportedOpError(f"{value.name!r} needs a static shape here, has {list(shape)}", node=node)
    return tuple(int(d) for d in shape)


def _trt_dtype(dtype: DType | None, name: str) -> str:
    if dtype not in _DTYPES:
        raise UnsupportedOpError(f"{name!r} has type {dtype}, which TensorRT has no tensors of")
    return _DTYPES[dtype]


def _no_node(value: Value) -> Node:
    return value.producer if value.producer is not None else Node("Output")


def _const_input(node: Node, index: int) -> np.ndarray | None:
    value = node.input(index) if index < len(node.inputs) else None
    if value is None:
        return None
    if not value.is_constant:
        raise UnsupportedOpError(f"input {index} ({value.name!r}) must be a constant for TensorRT", node=node)
    return value.numpy()


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _mask(axes: Sequence[int], rank: int) -> int:
    return sum(1 << a for a in {_axis(int(a), rank) for a in axes})


def _out_rank(node: Node) -> int:
    return _rank(node.outputs[0], node)


# ---------------------------------------------------------------------- handlers


def _conv_common(lw: Lowering, node: Node, layer: str, spatial: int) -> None:
    strides = list(node.attr("strides") or [1] * spatial)
    dilations = list(node.attr("dilations") or [1] * spatial)
    pads = list(node.attr("pads") or [0] * (2 * spatial))
    auto_pad = node.attr("auto_pad", "NOTSET")
    lw.emit(f"{layer}.stride_nd = {_dims(strides)}")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        lw.emit(f"{layer}.padding_mode = trt.PaddingMode.{auto_pad}")
    elif auto_pad in ("NOTSET", "", None):
        lw.emit(f"{layer}.pre_padding = {_dims(pads[:spatial])}")
        lw.emit(f"{layer}.post_padding = {_dims(pads[spatial:])}")
    if any(d != 1 for d in dilations):
        lw.emit(f"{layer}.dilation_nd = {_dims(dilations)}")
    group = int(node.attr("group", 1) or 1)
    if group != 1:
        lw.emit(f"{layer}.num_groups = {group}")


def _kernel(lw: Lowering, node: Node) -> tuple[str, str | None, tuple[int, ...]]:
    """The kernel as ``trt.Weights`` (a float constant) or a tensor through Q/DQ; its shape."""
    w = node.input(1)
    if w is None or w.shape is None:
        raise UnsupportedOpError("the weight needs a known shape", node=node)
    shape = _static(w.shape, w, node)
    if w.is_constant:
        return f"trt.Weights({lw.weight(w.numpy())})", None, shape
    return "trt.Weights()", lw.tensor(w, node), shape


def _bias_weights(lw: Lowering, node: Node, index: int) -> tuple[str, str | None]:
    b = node.input(index) if len(node.inputs) > index else None
    if b is None:
        return "", None
    if b.is_constant:
        return f", trt.Weights({lw.weight(b.numpy().reshape(-1))})", None
    return "", lw.tensor(b, node)


def _finish_conv(lw: Lowering, node: Node, out: str, late_bias: str | None) -> list[str]:
    rank = _out_rank(node)
    if late_bias is not None:
        b = lw.reshape(late_bias, [1, -1] + [1] * (rank - 2), None)
        out = lw.elementwise(out, b, "SUM", None)
    if node.op == "ConvAct":
        out = _fused_activation(lw, node, out, rank)
    return [out]


def _fused_activation(lw: Lowering, node: Node, out: str, rank: int) -> str:
    from kiln.ops.kiln_dialect import activation_params

    act, params = activation_params(node)
    dtype = node.outputs[0].dtype.numpy if node.outputs[0].dtype is not None else np.float32
    if act == "PRelu":
        slope = node.inputs[-1]
        return lw.output(lw.layer(f"add_parametric_relu({out}, {lw.tensor(slope, node, rank)})", node))
    if act == "Gelu":
        params = [1.0 if node.attr("approximate", "none") == "tanh" else 0.0]
    return lw.activation(out, act, params, node, dtype, rank)


def _conv(lw: Lowering, node: Node) -> list[str]:
    x = lw.tensor(node.input(0), node)
    kernel, kernel_tensor, wshape = _kernel(lw, node)
    bias, late_bias = _bias_weights(lw, node, 2)
    spatial = len(wshape) - 2
    kshape = list(node.attr("kernel_shape") or wshape[2:])
    layer = lw.layer(f"add_convolution_nd({x}, {wshape[0]}, {_dims(kshape)}, {kernel}{bias})", node)
    if kernel_tensor is not None:
        lw.emit(f"{layer}.set_input(1, {kernel_tensor})")
    _conv_common(lw, node, layer, spatial)
    return _finish_conv(lw, node, lw.output(layer), late_bias)


def _conv_transpose(lw: Lowering, node: Node) -> list[str]:
    if any(int(p) for p in node.attr("output_padding") or []) or node.attr("output_shape"):
        raise UnsupportedOpError("ConvTranspose with output_padding/output_shape has no TensorRT lowering", node=node)
    x = lw.tensor(node.input(0), node)
    kernel, kernel_tensor, wshape = _kernel(lw, node)
    bias, late_bias = _bias_weights(lw, node, 2)
    group = int(node.attr("group", 1) or 1)
    kshape = list(node.attr("kernel_shape") or wshape[2:])
    layer = lw.layer(f"add_deconvolution_nd({x}, {wshape[1] * group}, {_dims(kshape)}, {kernel}{bias})", node)
    if kernel_tensor is not None:
        lw.emit(f"{layer}.set_input(1, {kernel_tensor})")
    _conv_common(lw, node, layer, len(wshape) - 2)
    return _finish_conv(lw, node, lw.output(layer), late_bias)


def _activation_node(lw: Lowering, node: Node) -> list[str]:
    x = lw.tensor(node.input(0), node)
    rank = _out_rank(node)
    dtype = node.outputs[0].dtype.numpy if node.outputs[0].dtype is not None else np.float32
    op = node.op
    if op == "Clip":
        lo = _const_input(node, 1)
        hi = _const_input(node, 2)
        params = [float(lo) if lo is not None else float(node.attr("min", -_FLOAT_MAX)),
                  float(hi) if hi is not None else float(node.attr("max", _FLOAT_MAX))]
        return [lw.activation(x, "Clip", params, node, dtype, rank)]
    if op == "PRelu":
        return [lw.output(lw.layer(f"add_parametric_relu({x}, {lw.tensor(node.input(1), node, rank)})", node))]
    if op == "Gelu":
        return [lw.activation(x, "Gelu", [1.0 if node.attr("approximate", "none") == "tanh" else 0.0], node, dtype, rank)]
    if op == "Swish":
        return [lw.activation(x, "Swish", [float(node.attr("alpha", 1.0))], node, dtype, rank)]
    names = {"LeakyRelu": ("alpha",), "Elu": ("alpha",), "HardSigmoid": ("alpha", "beta")}
    params = [float(node.attr(a)) for a in names.get(op, ()) if node.attr(a) is not None]
    if op == "HardSigmoid" and node.attr("alpha") is None:
        params = [0.2, float(node.attr("beta", 0.5))]
    return [lw.activation(x, op, params, node, dtype, rank)]


def _binary(lw: Lowering, node: Node) -> list[str]:
    rank = _out_rank(node)
    op = _ELEMENTWISE[node.op]
    values = [v for v in node.inputs]
    out = lw.tensor(values[0], node, rank)
    for value in values[1:]:
        out = lw.elementwise(out, lw.tensor(value, node, rank), op, node if value is values[-1] else None)
    return [out]


def _unary(lw: Lowering, node: Node) -> list[str]:
    x = lw.tensor(node.input(0), node)
    return [lw.output(lw.layer(f"add_unary({x}, trt.UnaryOperation.{_UNARY[node.op]})", node))]


def _matmul(lw: Lowering, node: Node) -> list[str]:
    a, b = node.input(0), node.input(1)
    ra, rb = _rank(a, node), _rank(b, node)
    if ra == 1 or rb == 1:
        ops = ("VECTOR" if ra == 1 else "NONE", "VECTOR" if rb == 1 else "NONE")
        ta, tb = lw.tensor(a, node), lw.tensor(b, node)
    else:
        rank = max(ra, rb)
        ops = ("NONE", "NONE")
        ta, tb = lw.tensor(a, node, rank), lw.tensor(b, node, rank)
    call = f"add_matrix_multiply({ta}, trt.MatrixOperation.{ops[0]}, {tb}, trt.MatrixOperation.{ops[1]})"
    return [lw.output(lw.layer(call, node))]


def _gemm(lw: Lowering, node: Node) -> list[str]:
    a, b, c = node.input(0), node.input(1), node.input(2) if len(node.inputs) > 2 else None
    rank = max(_rank(a, node), _rank(b, node))
    dtype = node.outputs[0].dtype.numpy if node.outputs[0].dtype is not None else np.float32
    ops = ["TRANSPOSE" if node.attr("transA", 0) else "NONE", "TRANSPOSE" if node.attr("transB", 0) else "NONE"]
    call = (f"add_matrix_multiply({lw.tensor(a, node, rank)}, trt.MatrixOperation.{ops[0]}, "
            f"{lw.tensor(b, node, rank)}, trt.MatrixOperation.{ops[1]})")
    out = lw.output(lw.layer(call, node))
    alpha = float(node.attr("alpha", 1.0))
    beta = float(node.attr("beta", 1.0))
    if alpha != 1.0:
        out = lw.elementwise(out, lw.scalar(alpha, rank, dtype), "PROD", None)
    if c is not None and beta != 0.0:
        if c.is_constant:
            data = c.numpy() * np.asarray(beta, dtype=c.numpy().dtype)
            cshape = (1,) * (rank - data.ndim) + data.shape
            bias = lw.constant(data, cshape)
        else:
            bias = lw.tensor(c, node, rank)
            if beta != 1.0:
                bias = lw.elementwise(bias, lw.scalar(beta, rank, dtype), "PROD", None)
        out = lw.elementwise(out, bias, "SUM", None)
    if node.op == "GemmAct":
        out = _fused_activation(lw, node, out, rank)
    return [out]


def _pool(lw: Lowering, node: Node) -> list[str]:
    x = lw.tensor(node.input(0), node)
    kind = "MAX" if node.op == "MaxPool" else "AVERAGE"
    kernel = list(node.attr("kernel_shape"))
    spatial = len(kernel)
    if any(int(d) != 1 for d in node.attr("dilations") or []):
        raise UnsupportedOpError("pooling with dilations has no TensorRT lowering", node=node)
    layer = lw.layer(f"add_pooling_nd({x}, trt.PoolingType.{kind}, {_dims(kernel)})", node)
    lw.emit(f"{layer}.stride_nd = {_dims(node.attr('strides') or [1] * spatial)}")
    auto_pad = node.attr("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        lw.emit(f"{layer}.padding_mode = trt.PaddingMode.{auto_pad}")
    else:
        pads = list(node.attr("pads") or [0] * (2 * spatial))
        lw.emit(f"{layer}.pre_padding = {_dims(pads[:spatial])}")
        lw.emit(f"{layer}.post_padding = {_dims(pads[spatial:])}")
        if int(node.attr("ceil_mode", 0) or 0):
            lw.emit(f"{layer}.padding_mode = trt.PaddingMode.EXPLICIT_ROUND_UP")
    if kind == "AVERAGE":
        excludes = not int(node.attr("count_include_pad", 0) or 0)
        lw.emit(f"{layer}.average_count_excludes_padding = {excludes}")
    return [lw.output(layer)]


def _global_pool(lw: Lowering, node: Node) -> list[str]:
    x = lw.tensor(node.input(0), node)
    rank = _rank(node.input(0), node)
    op = "MAX" if node.op == "GlobalMaxPool" else "AVG"
    mask = _mask(range(2, rank), rank)
    return [lw.output(lw.layer(f"add_reduce({x}, trt.ReduceOperation.{op}, {mask}, True)", node))]


def _reduce(lw: Lowering, node: Node) -> list[str]:
    x = lw.tensor(node.input(0), node)
    rank = _rank(node.input(0), node)
    axes = node.attr("axes")
    if axes is None and len(node.inputs) > 1 and node.input(1) is not None:
        axes = [int(a) for a in np.asarray(_const_input(node, 1)).reshape(-1)]
    if not axes:
        if int(node.attr("noop_with_empty_axes", 0) or 0):
            return [x]
        axes = list(range(rank))
    keep = bool(int(node.attr("keepdims", 1)))
    call = f"add_reduce({x}, trt.ReduceOperation.{_REDUCE[node.op]}, {_mask(axes, rank)}, {keep})"
    return [lw.output(lw.layer(call, node))]


def _shape_of(lw: Lowering, node: Node) -> list[str]:
    """ONNX ``Shape`` (with ``start``/``end``): ``add_shape``, sliced when asked."""
    src = node.input(0)
    rank = _rank(src, node)
    out = lw.output(lw.layer(f"add_shape({lw.tensor(src, node)})", node))
    start = _axis(int(node.attr("start", 0)), rank)
    end = node.attr("end")
    stop = rank if end is None else min(_axis(int(end), rank), rank)
    if (start, stop) != (0, rank):
        out = _slice_layer(lw, out, node, [start], [max(stop - start, 0)], [1])
    return [out]


def _reshape(lw: Lowering, node: Node) -> list[str]:
    x = lw.tensor(node.input(0), node)
    target = node.input(1)
    if target is not None and not target.is_constant:
        # A shape computed at run time (dynamic inputs): the shuffle's second input.
        layer = lw.layer(f"add_shuffle({x})", node)
        lw.emit(f"{layer}.set_input(1, {lw.tensor(target, node)})")
        if int(node.attr("allowzero", 0) or 0):
            lw.emit(f"{layer}.zero_is_placeholder = False")
        return [lw.output(layer)]
    shape = [int(d) for d in np.asarray(_const_input(node, 1)).reshape(-1)]
    allowzero = bool(int(node.attr("allowzero", 0) or 0))
    return [lw.reshape(x, shape, node, zero_copies=not allowzero or 0 not in shape)]


def _to_output_shape(lw: Lowering, node: Node) -> list[str]:
    """Flatten/Squeeze/Unsqueeze: a reshape to the output's shape (one dynamic dim at most)."""
    x = lw.tensor(node.input(0), node)
    out = _shape(node.outputs[0])
    if out is None:
        raise UnsupportedOpError("the output's rank is unknown", node=node)
    dims = [d if isinstance(d, int) else -1 for d in out]
    if dims.count(-1) > 1:
        src = _shape(node.input(0)) or ()
        # A dim copied from the same position of the input is a placeholder 0.
        dims = [0 if not isinstance(d, int) and i < len(src) and src[i] == d else (d if isinstance(d, int) else -1)
                for i, d in enumerate(out)]
        if dims.count(-1) > 1:
            raise UnsupportedOpError(f"cannot express the shape {list(out)} as one TensorRT reshape", node=node)
    return [lw.reshape(x, dims, node)]


def _transpose(lw: Lowering, node: Node) -> list[str]:
    x = lw.tensor(node.input(0), node)
    rank = _rank(node.input(0), node)
    perm = node.attr("perm") or list(reversed(range(rank)))
    return [lw.transpose(x, [int(p) for p in perm], node)]


def _concat(lw: Lowering, node: Node) -> list[str]:
    rank = _out_rank(node)
    parts = [lw.tensor(v, node, rank) for v in node.inputs if v is not None]
    layer = lw.layer(f"add_concatenation([{', '.join(parts)}])", node)
    lw.emit(f"{layer}.axis = {_axis(int(node.attr('axis')), rank)}")
    return [lw.output(layer)]


def _slice_layer(lw: Lowering, x: str, node: Node | None, start: list[int], size: list[int], step: list[int]) -> str:
    return lw.output(lw.layer(f"add_slice({x}, {_dims(start)}, {_dims(size)}, {_dims(step)})", node))


def _dynamic_size(lw: Lowering, x: str, rank: int, axis: int, size: int) -> str:
    """The shape of ``x`` with ``size`` at ``axis``, as a run-time shape tensor."""
    shape = lw.output(lw.layer(f"add_shape({x})", None))
    pieces = []
    if axis > 0:
        pieces.append(_slice_layer(lw, shape, None, [0], [axis], [1]))
    pieces.append(lw.constant(np.array([size], dtype=np.int64)))
    if axis < rank - 1:
        pieces.append(_slice_layer(lw, shape, None, [axis + 1], [rank - axis - 1], [1]))
    layer = lw.layer(f"add_concatenation([{', '.join(pieces)}])", None)
    lw.emit(f"{layer}.axis = 0")
    return lw.output(layer)


def _split(lw: Lowering, node: Node) -> list[str]:
    src = node.input(0)
    x = lw.tensor(src, node)
    shape = list(_shape(src) or ())
    rank = len(shape)
    axis = _axis(int(node.attr("axis", 0)), rank)
    outs: list[str] = []
    offset = 0
    static = all(isinstance(d, int) for d in shape)
    for value in node.outputs:
        out_shape = _shape(value) or ()
        length = out_shape[axis] if len(out_shape) > axis else None
        if not isinstance(length, int):
            raise UnsupportedOpError(f"{value.name!r} needs a static size on the split axis", node=node)
        start = [0] * rank
        start[axis] = offset
        if static:
            outs.append(_slice_layer(lw, x, node, start, [int(d) for d in out_shape], [1] * rank))
        else:  # other dims are dynamic: the slice's size comes from the input's shape at run time
            size = [int(d) if isinstance(d, int) else 0 for d in shape]
            size[axis] = length
            runtime_size = _dynamic_size(lw, x, rank, axis, length)
            layer = lw.layer(f"add_slice({x}, {_dims(start)}, {_dims(size)}, {_dims([1] * rank)})", node)
            lw.emit(f"{layer}.set_input(2, {runtime_size})")
            outs.append(lw.output(layer))
        offset += length
    return outs


def _slice(lw: Lowering, node: Node) -> list[str]:
    src = node.input(0)
    x = lw.tensor(src, node)
    shape = list(_static(_shape(src) or (), src, node)) if src is not None else []
    rank = len(shape)
    starts = [int(v) for v in np.asarray(_const_input(node, 1)).reshape(-1)]
    ends = [int(v) for v in np.asarray(_const_input(node, 2)).reshape(-1)]
    axes_in = _const_input(node, 3) if len(node.inputs) > 3 else None
    steps_in = _const_input(node, 4) if len(node.inputs) > 4 else None
    axes = [int(a) for a in np.asarray(axes_in).reshape(-1)] if axes_in is not None else list(range(len(starts)))
    steps = [int(s) for s in np.asarray(steps_in).reshape(-1)] if steps_in is not None else [1] * len(starts)
    start, size, stride = [0] * rank, list(shape), [1] * rank
    for s, e, a, st in zip(starts, ends, axes, steps):
        a = _axis(a, rank)
        lo, hi, step = slice(s, e, st).indices(shape[a])
        count = len(range(lo, hi, step))
        start[a], size[a], stride[a] = (lo if count else 0), count, step
    return [_slice_layer(lw, x, node, start, size, stride)]


def _gather(lw: Lowering, node: Node) -> list[str]:
    src, idx = node.input(0), node.input(1)
    rank = _rank(src, node)
    axis = _axis(int(node.attr("axis", 0)), rank)
    x = lw.tensor(src, node)
    if idx is not None and idx.is_constant:
        data = idx.numpy().astype(np.int64)
        dim = (_shape(src) or ())[axis]
        if isinstance(dim, int):
            data = np.where(data < 0, data + dim, data)
        indices = lw.constant(data.astype(np.int32))
    else:
        indices = lw.tensor(idx, node)
    return [lw.output(lw.layer(f"add_gather({x}, {indices}, {axis})", node))]


def _softmax(lw: Lowering, node: Node) -> list[str]:
    src = node.input(0)
    x = lw.tensor(src, node)
    rank = _rank(src, node)
    default = -1 if (node.version or 13) >= 13 else 1
    axis = _axis(int(node.attr("axis", default)), rank)
    if (node.version or 13) < 13 and axis != rank - 1:
        # Before opset 13 softmax runs over the input flattened to 2-D at ``axis``.
        shape = _static(_shape(src) or (), src, node)
        flat = lw.reshape(x, [int(np.prod(shape[:axis])), int(np.prod(shape[axis:]))], None)
        layer = lw.layer(f"add_softmax({flat})", node)
        lw.emit(f"{layer}.axes = {1 << 1}")
        return [lw.reshape(lw.output(layer), list(shape), None)]
    layer = lw.layer(f"add_softmax({x})", node)
    lw.emit(f"{layer}.axes = {1 << axis}")
    return [lw.output(layer)]


def _layer_norm(lw: Lowering, node: Node) -> list[str]:
    src = node.input(0)
    rank = _rank(src, node)
    axis = _axis(int(node.attr("axis", -1)), rank)
    x = lw.tensor(src, node)
    shape = _shape(src) or ()
    norm_shape = _static(shape[axis:], src, node)
    dtype = src.dtype.numpy if src is not None and src.dtype is not None else np.float32
    full = (1,) * axis + norm_shape

    def param(index: int, fill: float) -> str:
        value = node.input(index) if len(node.inputs) > index else None
        if value is None:
            return lw.constant(np.full(full, fill, dtype=dtype))
        if value.is_constant:
            return lw.constant(np.broadcast_to(value.numpy(), norm_shape), full)
        return lw.tensor(value, node, rank)

    scale, bias = param(1, 1.0), param(2, 0.0)
    layer = lw.layer(f"add_normalization({x}, {scale}, {bias}, {_mask(range(axis, rank), rank)})", node)
    lw.emit(f"{layer}.epsilon = {_float(float(node.attr('epsilon', 1e-5)))}")
    return [lw.output(layer)]


def _rms_norm(lw: Lowering, node: Node) -> list[str]:
    src = node.input(0)
    rank = _rank(src, node)
    axis = _axis(int(node.attr("axis", -1)), rank)
    dtype = src.dtype.numpy if src is not None and src.dtype is not None else np.float32
    x = lw.tensor(src, node)
    square = lw.elementwise(x, x, "PROD", None)
    mean = lw.output(lw.layer(f"add_reduce({square}, trt.ReduceOperation.AVG, {_mask(range(axis, rank), rank)}, True)",
                              None))
    eps = lw.scalar(float(node.attr("epsilon", 1e-5)), rank, dtype)
    root = lw.output(lw.layer(f"add_unary({lw.elementwise(mean, eps, 'SUM', None)}, trt.UnaryOperation.SQRT)", None))
    out = lw.elementwise(x, root, "DIV", None)
    if len(node.inputs) > 1 and node.input(1) is not None:
        out = lw.elementwise(out, lw.tensor(node.input(1), node, rank), "PROD", node)
    return [out]


def _resize(lw: Lowering, node: Node) -> list[str]:
    src, out = node.input(0), node.outputs[0]
    x = lw.tensor(src, node)
    mode = {"nearest": "NEAREST", "linear": "LINEAR", "cubic": "CUBIC"}.get(str(node.attr("mode", "nearest")))
    if mode is None:
        raise UnsupportedOpError(f"Resize mode {node.attr('mode')!r} has no TensorRT lowering", node=node)
    layer = lw.layer(f"add_resize({x})", node)
    out_shape = _shape(out)
    if out_shape is not None and all(isinstance(d, int) for d in out_shape):
        lw.emit(f"{layer}.shape = {_dims(out_shape)}")
    else:
        scales = _const_input(node, 2) if len(node.inputs) > 2 else None
        if scales is None or scales.size == 0:
            raise UnsupportedOpError("Resize to a dynamic shape needs constant scales", node=node)
        lw.emit(f"{layer}.scales = {[float(s) for s in scales.reshape(-1)]!r}")
    lw.emit(f"{layer}.resize_mode = trt.InterpolationMode.{mode}")
    transform = str(node.attr("coordinate_transformation_mode", "half_pixel"))
    mapped = {"half_pixel": "HALF_PIXEL", "pytorch_half_pixel": "HALF_PIXEL", "asymmetric": "ASYMMETRIC",
              "align_corners": "ALIGN_CORNERS"}.get(transform)
    if mapped is None:
        raise UnsupportedOpError(f"Resize coordinate transformation {transform!r} has no TensorRT lowering", node=node)
    lw.emit(f"{layer}.coordinate_transformation = trt.ResizeCoordinateTransformation.{mapped}")
    if transform == "pytorch_half_pixel":
        lw.emit(f"{layer}.selector_for_single_pixel = trt.ResizeSelector.UPPER")
    if mode == "NEAREST":
        rounding = {"round_prefer_floor": "HALF_DOWN", "round_prefer_ceil": "HALF_UP", "floor": "FLOOR",
                    "ceil": "CEIL"}[str(node.attr("nearest_mode", "round_prefer_floor"))]
        lw.emit(f"{layer}.nearest_rounding = trt.ResizeRoundMode.{rounding}")
    if mode == "CUBIC":
        lw.emit(f"{layer}.cubic_coeff = {_float(float(node.attr('cubic_coeff_a', -0.75)))}")
    if int(node.attr("exclude_outside", 0) or 0):
        lw.emit(f"{layer}.exclude_outside = True")
    return [lw.output(layer)]


def _lrn(lw: Lowering, node: Node) -> list[str]:
    x = lw.tensor(node.input(0), node)
    call = (f"add_lrn({x}, {int(node.attr('size'))}, {_float(float(node.attr('alpha', 1e-4)))}, "
            f"{_float(float(node.attr('beta', 0.75)))}, {_float(float(node.attr('bias', 1.0)))})")
    return [lw.output(lw.layer(call, node))]


def _cast(lw: Lowering, node: Node) -> list[str]:
    x = lw.tensor(node.input(0), node)
    to = _trt_dtype(node.outputs[0].dtype, node.outputs[0].name)
    return [lw.output(lw.layer(f"add_cast({x}, {to})", node))]


def _identity(lw: Lowering, node: Node) -> list[str]:
    return [lw.tensor(node.input(0), node)]


def _check_zero_point(node: Node) -> None:
    zp = _const_input(node, 2) if len(node.inputs) > 2 else None
    if zp is not None and np.any(zp != 0):
        raise UnsupportedOpError("TensorRT quantization is symmetric: the zero point must be 0", node=node)


def _qdq(lw: Lowering, node: Node) -> list[str]:
    _check_zero_point(node)
    x = lw.tensor(node.input(0), node)
    scale = _const_input(node, 1)
    assert scale is not None
    # One scale is per tensor (a 0-d constant), even when the IR lists it per channel of a 1-channel weight.
    scale_t = lw.constant(scale.reshape(-1) if scale.size > 1 else scale.reshape(()))
    if node.op == "QuantizeLinear":
        to = _trt_dtype(node.outputs[0].dtype, node.outputs[0].name)
        layer = lw.layer(f"add_quantize({x}, {scale_t}, {to})", node)
    else:
        to = _trt_dtype(node.outputs[0].dtype, node.outputs[0].name)
        layer = lw.layer(f"add_dequantize({x}, {scale_t}, {to})", node)
    if scale.size > 1:
        lw.emit(f"{layer}.axis = {_axis(int(node.attr('axis', 1)), _rank(node.input(0), node))}")
    return [lw.output(layer)]


def _attention(lw: Lowering, node: Node) -> list[str]:
    q, k, v = node.input(0), node.input(1), node.input(2)
    mask = node.input(3) if len(node.inputs) > 3 else None
    rank = _rank(q, node)
    dtype = q.dtype.numpy if q is not None and q.dtype is not None else np.float32
    tq, tk, tv = lw.tensor(q, node), lw.tensor(k, node), lw.tensor(v, node)
    if rank == 3:
        hq, hkv = node.attr("q_num_heads"), node.attr("kv_num_heads")
        if hq is None or hkv is None:
            raise UnsupportedOpError("a 3-D attention needs q_num_heads and kv_num_heads", node=node)

        def heads(t: str, n: int) -> str:
            layer = lw.layer(f"add_shuffle({t})", None)
            lw.emit(f"{layer}.reshape_dims = {_dims([0, 0, int(n), -1])}")
            lw.emit(f"{layer}.second_transpose = trt.Permutation([0, 2, 1, 3])")
            return lw.output(layer)

        tq, tk, tv = heads(tq, hq), heads(tk, hkv), heads(tv, hkv)
        head_dim = (_shape(q) or (0, 0, None))[2]
        head_dim = head_dim // int(hq) if isinstance(head_dim, int) else None
    elif rank == 4:
        head_dim = (_shape(q) or (None,) * 4)[3]
    else:
        raise UnsupportedOpError(f"attention of rank {rank} has no TensorRT lowering", node=node)
    scale = node.attr("scale")
    if scale is None:
        if not isinstance(head_dim, int):
            raise UnsupportedOpError("attention without a scale needs a static head size", node=node)
        scale = 1.0 / math.sqrt(head_dim)
    # IAttention computes softmax(Q K^T + mask) V: the scale goes on Q first.
    tq = lw.elementwise(tq, lw.scalar(float(scale), 4, dtype), "PROD", None)
    call = f"add_attention({tq}, {tk}, {tv}, trt.AttentionNormalizationOp.SOFTMAX, False)"
    # tensorrt-stubs 10.13 predates IAttention (TensorRT 10.14); the bindings of 10.14+ and 11 have it.
    var = lw._fresh("l")
    lw.emit(f"{var} = network.{call}  # type: ignore[attr-defined]")
    lw.emit(f"{var}.name = {lw.layer_name(node)!r}")
    lw.emit(f"{var}.decomposable = True")
    if mask is not None:
        lw.emit(f"{var}.mask = {lw.tensor(mask, node, 4)}")
    out = lw.output(var)
    if rank == 3:
        layer = lw.layer(f"add_shuffle({out})", None)
        lw.emit(f"{layer}.first_transpose = trt.Permutation([0, 2, 1, 3])")
        lw.emit(f"{layer}.reshape_dims = {_dims([0, 0, -1])}")
        out = lw.output(layer)
    return [out]


def _channel_shuffle(lw: Lowering, node: Node) -> list[str]:
    src = node.input(0)
    shape = _static(_shape(src) or (), src, node)
    group = int(node.attr("group"))
    x = lw.tensor(src, node)
    layer = lw.layer(f"add_shuffle({x})", node)
    lw.emit(f"{layer}.reshape_dims = {_dims([shape[0], group, shape[1] // group, -1])}")
    lw.emit(f"{layer}.second_transpose = trt.Permutation([0, 2, 1, 3])")
    return [lw.reshape(lw.output(layer), list(shape), None)]


_HANDLERS: dict[str, Any] = {
    "onnx.Conv": _conv,
    "kiln.ConvAct": _conv,
    "onnx.ConvTranspose": _conv_transpose,
    "onnx.MatMul": _matmul,
    "onnx.Gemm": _gemm,
    "kiln.GemmAct": _gemm,
    "onnx.MaxPool": _pool,
    "onnx.AveragePool": _pool,
    "onnx.GlobalAveragePool": _global_pool,
    "onnx.GlobalMaxPool": _global_pool,
    "onnx.Reshape": _reshape,
    "onnx.Shape": _shape_of,
    "onnx.Flatten": _to_output_shape,
    "onnx.Squeeze": _to_output_shape,
    "onnx.Unsqueeze": _to_output_shape,
    "onnx.Transpose": _transpose,
    "onnx.Concat": _concat,
    "onnx.Split": _split,
    "onnx.Slice": _slice,
    "onnx.Gather": _gather,
    "onnx.Softmax": _softmax,
    "onnx.LayerNormalization": _layer_norm,
    "kiln.LayerNorm": _layer_norm,
    "kiln.RMSNorm": _rms_norm,
    "onnx.RMSNormalization": _rms_norm,
    "onnx.Resize": _resize,
    "onnx.LRN": _lrn,
    "onnx.Cast": _cast,
    "onnx.Identity": _identity,
    "onnx.Dropout": _identity,
    "onnx.QuantizeLinear": _qdq,
    "onnx.DequantizeLinear": _qdq,
    "kiln.Attention": _attention,
    "kiln.ChannelShuffle": _channel_shuffle,
    "kiln.Gelu": _activation_node,
    "kiln.Swish": _activation_node,
    "kiln.HardSwish": _activation_node,
    "onnx.Gelu": _activation_node,
    "onnx.HardSwish": _activation_node,
    "onnx.Clip": _activation_node,
    "onnx.PRelu": _activation_node,
    "onnx.Softplus": _activation_node,
    "onnx.Mish": _activation_node,
}
for _op in ("Relu", "Sigmoid", "Tanh", "LeakyRelu", "Elu", "HardSigmoid"):
    _HANDLERS[f"onnx.{_op}"] = _activation_node
for _op in _ELEMENTWISE:
    _HANDLERS[f"onnx.{_op}"] = _binary
for _op in _UNARY:
    _HANDLERS[f"onnx.{_op}"] = _unary
for _op in _REDUCE:
    _HANDLERS[f"onnx.{_op}"] = _reduce


def supported_ops() -> list[str]:
    """Every ``domain.op`` the lowering handles, sorted."""
    return sorted(_HANDLERS)


def lower(graph: Graph) -> Lowering:
    """Lowers ``graph``; the result holds the program lines and the weights."""
    from kiln.ops.decompose import decompose_unhandled

    decompose_unhandled(graph, lambda n: n.op_id in _HANDLERS)  # a kiln op with no TensorRT layer: its parts
    lowering = Lowering(graph)
    lowering.run()
    return lowering
