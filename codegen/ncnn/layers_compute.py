"""Lowering of the compute ops: convolution, gemm, elementwise, activations, pooling, normalization.

Each ``lower_*`` takes the :class:`~kiln.codegen.ncnn.lower.Lowering` and one node and
appends ncnn layers; shapes are ncnn's (batch dropped), see :mod:`kiln.codegen.ncnn.lower`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from kiln.codegen.ncnn.lower import Lowering, Shape, ints, unsupported
from kiln.codegen.ncnn.param import ParamValue
from kiln.codegen.ncnn.weights import Blob
from kiln.ir.core import Node, Value
from kiln.ops.kiln_dialect import activation_params

# ncnn's fused activation_type for Convolution / InnerProduct (src/layer/fused_activation.h).
FUSED_ACT = {"Relu": 1, "LeakyRelu": 2, "Clip": 3, "Sigmoid": 4, "Mish": 5, "HardSwish": 6}

_BINARY = {"Add": 0, "Sub": 1, "Mul": 2, "Div": 3, "Max": 4, "Min": 5, "Pow": 6}
_REVERSED = {0: 0, 1: 7, 2: 2, 3: 8, 4: 4, 5: 5, 6: 9}
UNARY_OPS = {"Abs": 0, "Neg": 1, "Floor": 2, "Ceil": 3, "Sqrt": 5, "Exp": 7, "Log": 8, "Sin": 9, "Cos": 10,
          "Tan": 11, "Asin": 12, "Acos": 13, "Atan": 14, "Reciprocal": 15, "Round": 18}
REDUCE_OPS = {"ReduceSum": 0, "ReduceL1": 7, "ReduceSumSquare": 2, "ReduceMean": 3, "ReduceMax": 4,
           "ReduceMin": 5, "ReduceProd": 6, "ReduceL2": 8, "ReduceLogSum": 9, "ReduceLogSumExp": 10}
# Ops whose outputs are input values (or their max): a quantized input stays on its grid.
_GRID_PRESERVING = frozenset({"MaxPool", "GlobalMaxPool", "Relu", "Reshape", "Transpose", "Flatten", "Squeeze",
                              "Unsqueeze", "Identity"})


# ---------------------------------------------------------------------- activations


def act_layer(act: str, params: list[float], node: Node, slope: np.ndarray | None = None) -> tuple[str, dict, list]:
    """A standalone ncnn activation layer: (type, params, weights)."""
    if act == "Relu":
        return "ReLU", {}, []
    if act == "LeakyRelu":
        return "ReLU", {0: float(params[0])}, []
    if act == "Clip":
        return "Clip", {0: float(params[0]), 1: float(params[1])}, []
    if act == "Sigmoid":
        return "Sigmoid", {}, []
    if act == "Tanh":
        return "TanH", {}, []
    if act == "HardSigmoid":
        return "HardSigmoid", {0: float(params[0]), 1: float(params[1])}, []
    if act == "HardSwish":
        return "HardSwish", {0: 1.0 / 6.0, 1: 0.5}, []
    if act == "Mish":
        return "Mish", {}, []
    if act == "Elu":
        return "ELU", {0: float(params[0])}, []
    if act == "Swish":
        if float(params[0]) != 1.0:
            raise unsupported(node, f"Swish with alpha {params[0]} (ncnn's Swish has alpha 1)")
        return "Swish", {}, []
    if act == "Gelu":
        return "GELU", {0: 1 if node.attr("approximate", "none") == "tanh" else 0}, []
    if act == "PRelu":
        if slope is None:
            raise unsupported(node, "PRelu with a slope that is not a constant")
        flat = slope.reshape(-1).astype(np.float32)
        return "PReLU", {0: int(flat.size)}, [Blob(flat)]
    raise unsupported(node, f"activation {act}")


def fused_activation(node: Node) -> tuple[str, list[float]] | None:
    """The activation of a kiln.ConvAct / ConvTransposeAct / GemmAct, or ``None``."""
    if node.domain != "kiln" or node.op not in ("ConvAct", "ConvTransposeAct", "GemmAct"):
        return None
    return activation_params(node)


def standalone_activation(lw: Lowering, node: Node, params: dict[int, ParamValue],
                          act: tuple[str, list[float]] | None, fusable: bool = True) -> tuple[str, dict, list] | None:
    """Fuses ``act`` into ``params`` (activation_type) where ncnn's Convolution/InnerProduct can;
    otherwise returns the separate activation layer (type, params, weights) to follow it."""
    if act is None:
        return None
    name, values = act
    if fusable and name in FUSED_ACT:
        params[9] = FUSED_ACT[name]
        if name == "LeakyRelu":
            params[10] = [float(values[0])]
        elif name == "Clip":
            params[10] = [float(values[0]), float(values[1])]
        elif name == "HardSwish":
            params[10] = [1.0 / 6.0, 0.5]
        return None
    slope = lw.const(node.input(3)) if name == "PRelu" else None
    return act_layer(name, values, node, slope)


# ---------------------------------------------------------------------- int8 helpers


def _int8_input(lw: Lowering, x: Value | None) -> float | None:
    """ncnn's bottom_blob_int8_scale (1 / ONNX scale) when ``x`` is DQ(Q(.)) with a constant scale."""
    if not lw.int8 or x is None:
        return None
    # The quantize pass moves pairs above ops that keep values on the int8 grid.
    while x.producer is not None and x.producer.domain == "" and x.producer.op in _GRID_PRESERVING:
        x = x.producer.inputs[0]
        if x is None:
            return None
    if x.producer is None or not x.producer.is_op("DequantizeLinear"):
        return None
    q = x.producer.inputs[0]
    if q is None or q.producer is None or not q.producer.is_op("QuantizeLinear"):
        return None
    scale = lw.const(q.producer.input(1))
    if scale is None or scale.size != 1 or float(scale.reshape(-1)[0]) <= 0:
        return None
    return 1.0 / float(scale.reshape(-1)[0])


def _int8_weight(lw: Lowering, w: Value | None, axis: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(int8 weight, per-output scales along ``axis``) of DQ(int8 W); ``None`` when not that form."""
    if not lw.int8 or w is None or w.producer is None or not w.producer.is_op("DequantizeLinear"):
        return None
    node = w.producer
    wq = node.inputs[0]
    if wq is None or not wq.is_constant:
        return None
    q = wq.numpy()
    if q.dtype != np.int8:
        return None
    zp = node.input(2)
    if zp is not None and np.any(zp.numpy() != 0):
        return None
    scale = node.inputs[1].numpy().astype(np.float64).reshape(-1)  # type: ignore[union-attr]
    n = q.shape[axis]
    if scale.size == 1:
        scale = np.full(n, scale[0])
    elif scale.size != n or int(node.attr("axis", 1)) % q.ndim != axis % q.ndim:
        return None
    return q, scale


def _ncnn_scales(scale: np.ndarray) -> np.ndarray:
    """ONNX dequantize scales -> ncnn's quantize scales (1/s).

    A channel whose scale is zero or too small to invert holds only zeros (its int8
    weights dequantize to nothing); it gets scale 1 so ncnn never divides by zero.
    """
    scale = np.asarray(scale, dtype=np.float64)
    ok = scale > 1e-30
    inv = np.ones_like(scale)
    inv[ok] = 1.0 / scale[ok]
    inv[~np.isfinite(inv) | (inv > 3e38)] = 1.0
    return inv.astype(np.float32)


# ---------------------------------------------------------------------- convolution


# ncnn's param ids of the spatial attributes, per axis from the innermost (w, then h, then d); the 1-D, 2-D and
# 3-D layers of a family share them (Convolution1D/Convolution/Convolution3D, Deconvolution*, Pooling*).
_CONV_KEYS: dict[str, tuple[int, ...]] = {"kernel": (1, 11, 21), "dilation": (2, 12, 22), "stride": (3, 13, 23), "pad_begin": (4, 14, 24),
              "pad_end": (15, 16, 17), "output_pad": (18, 19, 20)}
_POOL_KEYS: dict[str, tuple[int, ...]] = {"kernel": (1, 11, 21), "stride": (2, 12, 22), "pad_begin": (3, 13, 23), "pad_end": (14, 15, 16),
              "out": (8, 18, 28)}
_RANK_SUFFIX = {1: "1D", 2: "", 3: "3D"}


def _spatial_params(keys: Mapping[str, tuple[int, ...]], **values: list[int]) -> dict[int, ParamValue]:
    """``values`` per attribute in ONNX axis order (d, h, w), as ncnn param ids (``keys``, w first)."""
    params: dict[int, ParamValue] = {}
    for name, axes in values.items():
        params.update(zip(keys[name], (int(v) for v in reversed(axes))))
    return params


def _explicit_pads(node: Node, spatial: Shape, kernel: list[int], strides: list[int], dil: list[int]) -> list[int]:
    """ONNX pads [begins..., ends...] of a conv or pool of any rank, auto_pad resolved from static shapes."""
    rank = len(spatial)
    auto = node.attr("auto_pad", "NOTSET") or "NOTSET"
    if auto == "NOTSET":
        return ints(node.attr("pads") or [0] * (2 * rank))
    pads = [0] * (2 * rank)
    if auto == "VALID":
        return pads
    for i in range(rank):
        out = -(-spatial[i] // strides[i])
        total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dil[i] + 1 - spatial[i])
        small, big = total // 2, total - total // 2
        pads[i], pads[i + rank] = (small, big) if auto == "SAME_UPPER" else (big, small)
    return pads


def _spatial_rank(lw: Lowering, node: Node, bottom: str, rank: int, what: str) -> None:
    if rank not in _RANK_SUFFIX:
        raise unsupported(node, f"a {rank}-D {what} (ncnn has 1-D, 2-D and 3-D ones)")
    if len(lw.nshape[bottom]) != rank + 1:
        raise unsupported(node, f"a {rank}-D {what} of a {len(lw.nshape[bottom])}-D blob")


def _grouped(type_: str, group: int, params: dict[int, ParamValue]) -> str:
    """ncnn's layer type for ``group`` (Convolution1D -> ConvolutionDepthWise1D ...), with its group param."""
    if group == 1:
        return type_
    params[7] = group
    return type_.replace("olution", "olutionDepthWise", 1)


def _weight_blobs(weight: np.ndarray, bias: np.ndarray | None, out_c: int) -> list[Blob]:
    """The float weight (tagged: fp16 storage may apply) and the bias broadcast to ``out_c``."""
    blobs = [Blob(np.ascontiguousarray(weight).astype(np.float32), tagged=True)]
    if bias is not None:
        blobs.append(Blob(np.broadcast_to(bias.reshape(-1), (out_c,)).astype(np.float32)))
    return blobs


def lower_conv(lw: Lowering, node: Node) -> None:
    """Conv over [N, C, *spatial] -> ncnn Convolution[DepthWise] (1D, 2-D or 3D) on the [C, *spatial] blob.

    ncnn has int8 forms of the 2-D layers only: a quantized 1-D or 3-D convolution runs in float (its Q/DQ
    pairs are looked through)."""
    x, w, b = node.input(0), node.input(1), node.input(2)
    weight = lw.const(w)
    if weight is None:
        raise unsupported(node, "a convolution whose weight is not a constant")
    assert x is not None
    bottom = lw.blob(x, node)
    rank = weight.ndim - 2
    _spatial_rank(lw, node, bottom, rank, "convolution")
    out_c = int(weight.shape[0])
    group = int(node.attr("group", 1))
    kernel = [int(k) for k in weight.shape[2:]]
    strides = ints(node.attr("strides") or [1] * rank)
    dil = ints(node.attr("dilations") or [1] * rank)
    pads = _explicit_pads(node, lw.nshape[bottom][1:], kernel, strides, dil)
    bias = lw.const(b)
    params = {0: out_c, 5: int(bias is not None), 6: int(weight.size),
              **_spatial_params(_CONV_KEYS, kernel=kernel, dilation=dil, stride=strides, pad_begin=pads[:rank],
                                pad_end=pads[rank:])}
    type_ = _grouped("Convolution" + _RANK_SUFFIX[rank], group, params)
    weights = _weight_blobs(weight, bias, out_c)
    if rank == 2:
        _conv_int8(lw, node, x, w, group, out_c, weight, params, weights)
    _emit_with_act(lw, node, type_, [bottom], params, weights)


def _conv_int8(lw: Lowering, node: Node, x: Value, w: Value | None, group: int, out_c: int,
               weight: np.ndarray, params: dict[int, ParamValue], weights: list[Blob]) -> None:
    """Turns a float conv into ncnn's int8 form when its input and weight are quantized."""
    in_scale = _int8_input(lw, x)
    qw = _int8_weight(lw, w, 0)
    if in_scale is None or qw is None:
        return
    q, scale = qw
    if group > 1 and group != out_c:
        # ncnn's grouped int8 conv takes one scale per group: requantize per group.
        per_group = np.abs(weight.reshape(group, -1)).max(axis=1)
        scale = np.where(per_group > 0, per_group / 127.0, 0.0)
        grouped = weight.reshape(group, -1) / np.where(scale > 0, scale, 1.0)[:, None]
        q = np.clip(np.rint(grouped), -127, 127).astype(np.int8).reshape(weight.shape)
        params[8] = 1
    else:
        params[8] = 1 if group > 1 else 2
    weights[0] = Blob(q.astype(np.int8), tagged=True)
    weights.append(Blob(_ncnn_scales(scale)))
    weights.append(Blob(np.array([in_scale], dtype=np.float32)))
    lw.int8_layers += 1


def _emit_with_act(lw: Lowering, node: Node, type_: str, bottoms: list[str], params: dict[int, ParamValue],
                   weights: list[Blob], out_shape: Shape | None = None, post_reshape: Shape | None = None) -> None:
    out = node.outputs[0]
    final_shape = out_shape if out_shape is not None else lw.shape_of(out, node)
    layer_shape = post_reshape if post_reshape is not None else final_shape
    top = lw.new_blob(out.name + ("_2d" if post_reshape is not None else ""), layer_shape)
    act = fused_activation(node)
    # Gemm carries no activation; the 1-D deconvolutions apply activation_type 1-4 only.
    fusable = type_ != "Gemm" and (not type_.startswith("Deconvolution") or not type_.endswith("1D")
                                   or act is None or act[0] in ("Relu", "LeakyRelu", "Clip", "Sigmoid"))
    extra = standalone_activation(lw, node, params, act, fusable=fusable)
    if extra is None:
        lw.add(type_, lw.layer_name(node), bottoms, [top], params, weights)
    else:
        mid = lw.new_blob(out.name + "_pre", layer_shape)
        lw.add(type_, lw.layer_name(node), bottoms, [mid], params, weights)
        atype, aparams, aweights = extra
        lw.add(atype, lw.layer_name(node, "_act"), [mid], [top], aparams, aweights)
    last = top
    if post_reshape is not None:
        last = lw.reshape(top, final_shape, node, "_nd")
    lw.blob_of[out] = last


def lower_conv_transpose(lw: Lowering, node: Node) -> None:
    """ConvTranspose -> ncnn Deconvolution[DepthWise] (1D, 2-D or 3D)."""
    x, w, b = node.input(0), node.input(1), node.input(2)
    weight = lw.const(w)
    if weight is None:
        raise unsupported(node, "a transposed convolution whose weight is not a constant")
    if (node.attr("auto_pad", "NOTSET") or "NOTSET") not in ("NOTSET", "VALID") or node.attr("output_shape"):
        raise unsupported(node, "a transposed convolution with auto_pad or output_shape")
    bottom = lw.blob(x, node)
    rank = weight.ndim - 2
    _spatial_rank(lw, node, bottom, rank, "transposed convolution")
    group = int(node.attr("group", 1))
    cin, cout_g = int(weight.shape[0]), int(weight.shape[1])
    kernel = [int(k) for k in weight.shape[2:]]
    out_c = cout_g * group
    # ONNX [Cin, Cout/g, *k] -> ncnn [g][Cout/g][Cin/g][*k]
    wt = weight.reshape(group, cin // group, cout_g, *kernel).transpose(0, 2, 1, *range(3, 3 + rank))
    pads = ints(node.attr("pads") or [0] * (2 * rank))
    bias = lw.const(b)
    params = {0: out_c, 5: int(bias is not None), 6: int(weight.size),
              **_spatial_params(_CONV_KEYS, kernel=kernel, dilation=ints(node.attr("dilations") or [1] * rank),
                                stride=ints(node.attr("strides") or [1] * rank), pad_begin=pads[:rank],
                                pad_end=pads[rank:], output_pad=ints(node.attr("output_padding") or [0] * rank))}
    _emit_with_act(lw, node, _grouped("Deconvolution" + _RANK_SUFFIX[rank], group, params), [bottom], params,
                   _weight_blobs(wt, bias, out_c))


# ---------------------------------------------------------------------- gemm / matmul


def lower_gemm(lw: Lowering, node: Node) -> None:
    a, b, c = node.input(0), node.input(1), node.input(2)
    assert a is not None and b is not None
    is_matmul = node.op == "MatMul"
    trans_a = 0 if is_matmul else int(node.attr("transA", 0))
    trans_b = 0 if is_matmul else int(node.attr("transB", 0))
    alpha = 1.0 if is_matmul else float(node.attr("alpha", 1.0))
    beta = 1.0 if is_matmul else float(node.attr("beta", 1.0))
    bw = lw.const(b)
    if bw is None or bw.ndim != 2 or trans_a or lw.const(a) is not None:
        if node.domain == "" and is_matmul:
            return lower_matmul(lw, node)
        raise unsupported(node, "a Gemm whose B is not a constant matrix (or with transA)")
    weight = (bw if trans_b else bw.T).astype(np.float32) * np.float32(alpha)  # [N, K]
    n, k = weight.shape
    bias = lw.const(c)
    if c is not None and bias is None:
        raise unsupported(node, "a Gemm bias that is not a constant")
    if bias is not None:
        if bias.size not in (1, n):
            raise unsupported(node, f"a bias of shape {bias.shape} (InnerProduct takes one per output)")
        bias = np.broadcast_to(bias.reshape(-1) * np.float32(beta), (n,)).astype(np.float32)
    bottom = lw.blob(a, node)
    in_shape = lw.nshape[bottom]
    if in_shape[-1] != k:
        raise unsupported(node, f"an input of shape {in_shape} for a {k}x{n} weight")
    out_shape = lw.shape_of(node.outputs[0], node)
    post: Shape | None = None
    if len(in_shape) > 2:
        rows = int(np.prod(in_shape[:-1]))
        bottom = lw.reshape(bottom, (rows, k), node, "_2d")
        post = (rows, n)
    in_scale = _int8_input(lw, a)
    qw = _int8_weight(lw, b, 0 if trans_b else 1)
    # Rows of a 2-D blob (tokens, or a channels-last image) stay float in ncnn's Gemm even when quantized:
    # ncnn's int8 InnerProduct runs them one row at a time, 3.6x (convnext_tiny) to 4.1x (vit_small) slower
    # than the float Gemm at 1 thread; a single row (a classifier head) goes int8.
    int8 = in_scale is not None and qw is not None and alpha == 1.0 and len(lw.nshape[bottom]) != 2
    if len(lw.nshape[bottom]) == 2 and not int8:
        # Rows of a 2-D blob: ncnn's Gemm with a constant B (transposed, [N, K]) and a
        # per-column C runs these several times faster than InnerProduct does.
        rows = lw.nshape[bottom][0]
        params = {2: 0, 3: 1, 4: 0, 5: 1, 6: 1, 7: int(rows), 8: int(n), 9: int(k), 10: 4 if bias is not None else -1}
        weights = [Blob(weight, tagged=True)] + ([Blob(bias, tagged=True)] if bias is not None else [])
        _emit_with_act(lw, node, "Gemm", [bottom], params, weights, out_shape, post)
        return
    params: dict[int, ParamValue] = {0: int(n), 1: int(bias is not None), 2: int(weight.size)}
    weights = [Blob(weight, tagged=True)]
    if bias is not None:
        weights.append(Blob(bias))
    if int8:
        q, scale = qw  # type: ignore[misc]
        weights[0] = Blob(np.ascontiguousarray(q if trans_b else q.T).astype(np.int8), tagged=True)
        weights.append(Blob(_ncnn_scales(scale)))
        weights.append(Blob(np.array([in_scale], dtype=np.float32)))
        params[8] = 2
        lw.int8_layers += 1
    _emit_with_act(lw, node, "InnerProduct", [bottom], params, weights, out_shape, post)


def lower_matmul(lw: Lowering, node: Node) -> None:
    """MatMul of two activations: ncnn's MatMul (numpy semantics on the batch-less blobs)."""
    a, b = node.input(0), node.input(1)
    assert a is not None and b is not None
    out = node.outputs[0]
    out_shape = lw.shape_of(out, node)
    bottoms = []
    for v in (a, b):
        data = lw.const(v)
        if data is not None:
            bottoms.append(lw.memory_data(data, v.name, node))
        else:
            bottoms.append(lw.blob(v, node))
    lw.add("MatMul", lw.layer_name(node), bottoms, [lw.bind(out, node, out_shape)], {0: 0})


# ---------------------------------------------------------------------- elementwise


def _operand(lw: Lowering, v: Value, out_rank: int, node: Node) -> tuple[str | None, float | None]:
    """A binary operand as a blob of the output's ncnn rank, or a scalar."""
    data = lw.const(v)
    if data is not None:
        if data.size == 1:
            return None, float(data.reshape(-1)[0])
        shape = (1,) * (out_rank - data.ndim) + tuple(data.shape)
        if shape[0] != 1:
            raise unsupported(node, f"a constant operand of shape {data.shape} that broadcasts over the batch")
        return lw.memory_data(data.reshape(shape[1:]), v.name, node), None
    blob = lw.blob(v, node)
    onnx = lw.onnx_shape(v, node)
    if len(onnx) < out_rank:
        padded = (1,) * (out_rank - len(onnx)) + onnx
        if len(onnx) == 0:
            raise unsupported(node, f"a scalar activation operand {v.name!r}")
        return lw.reshape(blob, padded[1:], node, "_bcast"), None
    return blob, None


def lower_binary(lw: Lowering, node: Node, op: str | None = None) -> None:
    op = op or node.op
    a, b = node.input(0), node.input(1)
    assert a is not None and b is not None
    out = node.outputs[0]
    out_rank = len(lw.onnx_shape(out, node))
    op_type = _BINARY[op]
    ba, sa = _operand(lw, a, out_rank, node)
    bb, sb = _operand(lw, b, out_rank, node)
    if ba is None and bb is None:
        raise unsupported(node, "two constant operands (fold the graph first)")
    if bb is None:
        params: dict[int, ParamValue] = {0: op_type, 1: 1, 2: float(sb)}  # type: ignore[arg-type]
        lw.add("BinaryOp", lw.layer_name(node), [ba], [lw.bind(out, node)], params)  # type: ignore[list-item]
    elif ba is None:
        params = {0: _REVERSED[op_type], 1: 1, 2: float(sa)}  # type: ignore[arg-type]
        lw.add("BinaryOp", lw.layer_name(node), [bb], [lw.bind(out, node)], params)
    else:
        lw.add("BinaryOp", lw.layer_name(node), [ba, bb], [lw.bind(out, node)], {0: op_type})


def lower_sum(lw: Lowering, node: Node) -> None:
    """Sum / Mean of N inputs: one Eltwise when the shapes agree, else a chain of broadcasting adds."""
    ins = [v for v in node.inputs if v is not None]
    out = node.outputs[0]
    out_shape = lw.onnx_shape(out, node)
    if len(ins) == 1:
        return lw.alias(out, ins[0], node)
    if all(lw.const(v) is None and lw.onnx_shape(v, node) == out_shape for v in ins):
        blobs = [lw.blob(v, node) for v in ins]
        coeffs: dict[int, ParamValue] = {1: [1.0 / len(ins)] * len(ins)} if node.op == "Mean" else {}
        lw.add("Eltwise", lw.layer_name(node), blobs, [lw.bind(out, node)], {0: 1, **coeffs})
        return
    if node.op == "Mean":
        raise unsupported(node, "a Mean of operands that broadcast")
    rank = len(out_shape)
    acc, _ = _operand(lw, ins[0], rank, node)
    for i, v in enumerate(ins[1:], start=1):
        other, scalar = _operand(lw, v, rank, node)
        if acc is None:
            raise unsupported(node, "a Sum whose first operand is a scalar constant")
        last = i == len(ins) - 1
        shape = out_shape[1:] if last else tuple(np.broadcast_shapes(lw.nshape[acc], lw.nshape.get(other, ())))
        top = lw.bind(out, node) if last else lw.new_blob(f"{out.name}_sum{i}", shape)
        if other is None:
            lw.add("BinaryOp", lw.layer_name(node, f"_{i}"), [acc], [top], {0: 0, 1: 1, 2: float(scalar)})
        else:
            lw.add("BinaryOp", lw.layer_name(node, f"_{i}"), [acc, other], [top], {0: 0})
        acc = top
    return None


def lower_unary(lw: Lowering, node: Node) -> None:
    x = node.input(0)
    out = node.outputs[0]
    bottom = lw.blob(x, node)
    op = node.op
    if node.domain == "kiln" and op in ("Gelu", "Swish", "HardSwish"):
        params = [float(node.attr("alpha", 1.0))] if op == "Swish" else []
        type_, p, weights = act_layer(op, params, node)
    elif op in UNARY_OPS:
        type_, p, weights = "UnaryOp", {0: UNARY_OPS[op]}, []
    elif op == "Erf":
        type_, p, weights = "Erf", {}, []
    elif op == "Softplus":
        type_, p, weights = "Softplus", {}, []
    elif op == "Clip":
        lo, hi = lw.const(node.input(1)), lw.const(node.input(2))
        if (node.input(1) is not None and lo is None) or (node.input(2) is not None and hi is None):
            raise unsupported(node, "a Clip with bounds that are not constants")
        lo_v = float(lo.reshape(-1)[0]) if lo is not None else float(node.attr("min", -3.4028234663852886e38))
        hi_v = float(hi.reshape(-1)[0]) if hi is not None else float(node.attr("max", 3.4028234663852886e38))
        type_, p, weights = "Clip", {0: lo_v, 1: hi_v}, []
    elif op == "PRelu":
        type_, p, weights = act_layer("PRelu", [], node, lw.const(node.input(1)))
    else:
        names = {"Relu": "Relu", "LeakyRelu": "LeakyRelu", "Sigmoid": "Sigmoid", "Tanh": "Tanh",
                 "HardSigmoid": "HardSigmoid", "HardSwish": "HardSwish", "Mish": "Mish", "Elu": "Elu",
                 "Gelu": "Gelu"}
        act = names[op]
        defaults = {"LeakyRelu": [float(node.attr("alpha", 0.01))],
                    "HardSigmoid": [float(node.attr("alpha", 0.2)), float(node.attr("beta", 0.5))],
                    "Elu": [float(node.attr("alpha", 1.0))]}
        type_, p, weights = act_layer(act, defaults.get(act, []), node)
    lw.add(type_, lw.layer_name(node), [bottom], [lw.bind(out, node)], p, weights)


def lower_pow(lw: Lowering, node: Node) -> None:
    if lw.const(node.input(1)) is None:
        return lower_binary(lw, node)
    exponent = lw.const(node.input(1))
    assert exponent is not None
    if exponent.size != 1:
        return lower_binary(lw, node)
    e = float(exponent.reshape(-1)[0])
    out = node.outputs[0]
    bottom = lw.blob(node.input(0), node)
    if e == 2.0:
        lw.add("UnaryOp", lw.layer_name(node), [bottom], [lw.bind(out, node)], {0: 4})
    elif e == 0.5:
        lw.add("UnaryOp", lw.layer_name(node), [bottom], [lw.bind(out, node)], {0: 5})
    else:
        lw.add("BinaryOp", lw.layer_name(node), [bottom], [lw.bind(out, node)], {0: 6, 1: 1, 2: e})


# ---------------------------------------------------------------------- pooling and normalization


def lower_pool(lw: Lowering, node: Node) -> None:
    """Max/Average/global pooling -> ncnn Pooling (1D, 2-D or 3D)."""
    out = node.outputs[0]
    bottom = lw.blob(node.input(0), node)
    rank = len(lw.nshape[bottom]) - 1
    _spatial_rank(lw, node, bottom, rank, "pooling")
    type_ = "Pooling" + _RANK_SUFFIX[rank]
    kind = 0 if "Max" in node.op else 1
    if node.op.startswith("Global"):
        # Adaptive to 1 per axis keeps ONNX's [C, 1, ...] (global pooling would flatten to [C]).
        lw.add(type_, lw.layer_name(node), [bottom], [lw.bind(out, node)],
               {0: kind, 7: 1, **_spatial_params(_POOL_KEYS, out=[1] * rank)})
        return
    if len(node.outputs) > 1 and node.outputs[1].uses:
        raise unsupported(node, "MaxPool's Indices output")
    kernel = ints(node.attr("kernel_shape"))
    strides = ints(node.attr("strides") or [1] * rank)
    if ints(node.attr("dilations") or [1] * rank) != [1] * rank:
        raise unsupported(node, "dilated pooling")
    pads = _explicit_pads(node, lw.nshape[bottom][1:], kernel, strides, [1] * rank)
    params = {0: kind, 5: 0 if int(node.attr("ceil_mode", 0)) else 1,
              **_spatial_params(_POOL_KEYS, kernel=kernel, stride=strides, pad_begin=pads[:rank],
                                pad_end=pads[rank:])}
    if kind == 1:
        params[6] = int(node.attr("count_include_pad", 0))
    lw.add(type_, lw.layer_name(node), [bottom], [lw.bind(out, node, lw.shape_of(out, node))], params)


def lower_batchnorm(lw: Lowering, node: Node) -> None:
    vals = [lw.const(node.input(i)) for i in range(1, 5)]
    if any(v is None for v in vals):
        raise unsupported(node, "a BatchNormalization with non-constant statistics")
    scale, bias, mean, var = (v.reshape(-1).astype(np.float32) for v in vals)  # type: ignore[union-attr]
    out = node.outputs[0]
    params = {0: int(scale.size), 1: float(node.attr("epsilon", 1e-5))}
    lw.add("BatchNorm", lw.layer_name(node), [lw.blob(node.input(0), node)], [lw.bind(out, node)], params,
           [Blob(scale), Blob(mean), Blob(var), Blob(bias)])


def lower_layernorm(lw: Lowering, node: Node) -> None:
    x = node.input(0)
    assert x is not None
    if any(o.uses for o in node.outputs[1:]):
        raise unsupported(node, "LayerNormalization's Mean / InvStdDev outputs")
    bottom = lw.blob(x, node)
    shape = lw.nshape[bottom]
    rank = len(shape) + 1
    axis = int(node.attr("axis", -1)) % rank
    norm = shape[axis - 1:]
    if axis == 0 or len(norm) > 2 or (len(norm) == 2 and len(shape) != 3):
        raise unsupported(node, f"normalizing over ONNX axes {axis}.. of a rank-{rank} tensor")
    size = int(np.prod(norm))
    gamma = lw.const(node.input(1))
    beta = lw.const(node.input(2))
    if (node.input(1) is not None and gamma is None) or (node.input(2) is not None and beta is None):
        raise unsupported(node, "a LayerNorm scale or bias that is not a constant")
    g = np.broadcast_to(gamma, norm).reshape(-1) if gamma is not None else np.ones(size, np.float32)
    b = np.broadcast_to(beta, norm).reshape(-1) if beta is not None else np.zeros(size, np.float32)
    params = {0: size, 1: float(node.attr("epsilon", 1e-5)), 2: 1}
    lw.add("LayerNorm", lw.layer_name(node), [bottom], [lw.bind(node.outputs[0], node)], params,
           [Blob(g.astype(np.float32)), Blob(b.astype(np.float32))])


def lower_instancenorm(lw: Lowering, node: Node) -> None:
    gamma, beta = lw.const(node.input(1)), lw.const(node.input(2))
    if gamma is None or beta is None:
        raise unsupported(node, "an InstanceNormalization with non-constant scale or bias")
    params = {0: int(gamma.size), 1: float(node.attr("epsilon", 1e-5)), 2: 1}
    lw.add("InstanceNorm", lw.layer_name(node), [lw.blob(node.input(0), node)], [lw.bind(node.outputs[0], node)],
           params, [Blob(gamma.reshape(-1).astype(np.float32)), Blob(beta.reshape(-1).astype(np.float32))])


def lower_lrn(lw: Lowering, node: Node) -> None:
    params = {0: 0, 1: int(node.attr("size")), 2: float(node.attr("alpha", 1e-4)),
              3: float(node.attr("beta", 0.75)), 4: float(node.attr("bias", 1.0))}
    lw.add("LRN", lw.layer_name(node), [lw.blob(node.input(0), node)], [lw.bind(node.outputs[0], node)], params)


def _axes(lw: Lowering, node: Node, rank: int) -> list[int] | None:
    axes = node.attr("axes")
    if axes is None and node.input(1) is not None:
        data = lw.const(node.input(1))
        if data is None:
            raise unsupported(node, "axes that are not constants")
        axes = data.reshape(-1).tolist()
    return None if axes is None else sorted(int(a) % rank for a in axes)


def lower_reduce(lw: Lowering, node: Node) -> None:
    x = node.input(0)
    assert x is not None
    out = node.outputs[0]
    rank = len(lw.onnx_shape(x, node))
    axes = _axes(lw, node, rank)
    keep = int(node.attr("keepdims", 1))
    if axes is None:
        if int(node.attr("noop_with_empty_axes", 0)):
            return lw.alias(out, x, node)
        axes = list(range(rank))
    axes = [a for a in axes if a != 0 or not keep]
    if 0 in axes:
        raise unsupported(node, "a reduction over the batch axis that drops it")
    bottom = lw.blob(x, node)
    if node.op in ("ReduceMean", "ReduceMax") and keep and rank == 4 and axes == [2, 3]:
        params: dict[int, ParamValue] = {0: 1 if node.op == "ReduceMean" else 0, 7: 1, 8: 1, 18: 1}
        lw.add("Pooling", lw.layer_name(node), [bottom], [lw.bind(out, node)], params)
        return
    params = {0: REDUCE_OPS[node.op], 1: 0, 3: [a - 1 for a in axes], 4: keep, 5: 1}
    lw.add("Reduction", lw.layer_name(node), [bottom], [lw.bind(out, node)], params)


def lower_softmax(lw: Lowering, node: Node) -> None:
    x = node.input(0)
    assert x is not None
    out = node.outputs[0]
    onnx = lw.onnx_shape(x, node)
    rank = len(onnx)
    axis = int(node.attr("axis", -1 if (node.version or 13) >= 13 else 1)) % rank
    if axis == 0:
        raise unsupported(node, "a softmax over the batch axis")
    bottom = lw.blob(x, node)
    legacy = (node.version or 13) < 13 and axis != rank - 1
    if legacy:
        # Before opset 13 softmax runs over everything from axis on, flattened.
        flat = onnx[1:axis] + (int(np.prod(onnx[axis:])),)
        bottom = lw.reshape(bottom, flat, node, "_flat")
        mid = lw.new_blob(out.name + "_flat", flat)
        lw.add("Softmax", lw.layer_name(node), [bottom], [mid], {0: len(flat) - 1, 1: 1})
        lw.blob_of[out] = lw.reshape(mid, lw.shape_of(out, node), node, "_unflat")
        return
    lw.add("Softmax", lw.layer_name(node), [bottom], [lw.bind(out, node)], {0: axis - 1, 1: 1})
