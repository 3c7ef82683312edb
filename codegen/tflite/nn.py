"""TFLite lowering of the channels-last layer ops: convolutions, pooling, Resize, LRN, norms, shuffles.

Padding: ONNX pads ``[top, left, bottom, right]`` become ``SAME`` where they are
exactly TensorFlow's SAME split (total ``(ceil(in/s)-1)*s + (k-1)*d + 1 - in``,
the smaller half first), ``VALID`` where they are zero, and otherwise an explicit
``PAD`` (``PADV2`` with the lowest float for max pooling) followed by ``VALID``.

Weights stay OIHW in the IR; CONV_2D wants OHWI, DEPTHWISE_CONV_2D ``1HW(C*M)``
and TRANSPOSE_CONV ``OHWI`` from ONNX's ``[C_in, C_out, kH, kW]``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from kiln.codegen.tflite.lower import Lowerer, lowers
from kiln.ir.core import Node

F32_LOWEST = float(np.finfo(np.float32).min)


def _same(size: int, k: int, s: int, d: int) -> tuple[int, int]:
    eff = (k - 1) * d + 1
    total = max((math.ceil(size / s) - 1) * s + eff - size, 0)
    return total // 2, total - total // 2


def onnx_pads(node: Node, spatial: tuple[int, int], kernel: tuple[int, int], strides: tuple[int, int],
              dilations: tuple[int, int]) -> list[int]:
    """Explicit ``[top, left, bottom, right]`` from ``pads`` or ``auto_pad``."""
    auto = node.attr("auto_pad", "NOTSET") or "NOTSET"
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pairs = [_same(spatial[i], kernel[i], strides[i], dilations[i]) for i in range(2)]
        if auto == "SAME_LOWER":
            pairs = [(b, a) for a, b in pairs]
        return [pairs[0][0], pairs[1][0], pairs[0][1], pairs[1][1]]
    if auto == "VALID":
        return [0, 0, 0, 0]
    pads = node.attr("pads") or [0, 0, 0, 0]
    return [int(p) for p in pads]


def _window(node: Node, kernel: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    strides = tuple(int(s) for s in (node.attr("strides") or [1, 1]))
    dilations = tuple(int(d) for d in (node.attr("dilations") or [1, 1]))
    return strides, dilations  # type: ignore[return-value]


def padded_input(lw: Lowerer, node: Node, x: int, shape: tuple[int, ...], pads: list[int],
                 kernel: tuple[int, int], strides: tuple[int, int], dilations: tuple[int, int],
                 fill: float | None = None) -> tuple[int, str]:
    """(input tensor, padding) for a windowed op: SAME/VALID, or an explicit PAD then VALID."""
    if not any(pads):
        return x, "VALID"
    same = [_same(shape[1 + i], kernel[i], strides[i], dilations[i]) for i in range(2)]
    if pads == [same[0][0], same[1][0], same[0][1], same[1][1]]:
        return x, "SAME"
    t, left, b, r = pads
    paddings = lw.ints([[0, 0], [t, b], [left, r], [0, 0]], "paddings")
    out_shape = (shape[0], shape[1] + t + b, shape[2] + left + r, shape[3])
    _, dtype, quant = lw.facts[x]
    padded = lw.new("padded", out_shape, dtype, quant)
    if fill is None:
        lw.op("PAD", [x, paddings], [padded])
    else:
        value = fill
        if quant is not None:  # the lowest int8 for a quantized max pool
            lw.op("PADV2", [x, paddings, lw.const(np.array(-128, np.int8), "pad_value", weight=False)], [padded])
            return padded, "VALID"
        lw.op("PADV2", [x, paddings, lw.scalar(value, "pad_value")], [padded])
    return padded, "VALID"


@lowers("kiln.NhwcConv", "kiln.NhwcConvAct")
def conv(lw: Lowerer, node: Node) -> None:
    xv = node.inputs[0]
    assert xv is not None
    shape = lw.shape(xv)
    w = lw.weights(node, 1)
    if w.ndim != 4:
        raise lw.unsupported(node, "only 2-D convolutions")
    out_ch, in_per_group, kh, kw = w.shape
    group = int(node.attr("group", 1))
    strides, dilations = _window(node, (kh, kw))
    pads = onnx_pads(node, (shape[1], shape[2]), (kh, kw), strides, dilations)
    x, padding = padded_input(lw, node, lw.value(xv), shape, pads, (kh, kw), strides, dilations)
    bias = lw.bias(node, 2, out_ch)
    raw, final, act = lw.conv_output(node)
    options: dict[str, Any] = {"padding": padding, "stride_h": strides[0], "stride_w": strides[1],
                               "dilation_h_factor": dilations[0], "dilation_w_factor": dilations[1],
                               "fused_activation_function": act}
    channels = shape[3]
    if group == channels and in_per_group == 1 and group > 1:
        weights = lw.weight_tensor(node, 1, lambda a: a.transpose(1, 2, 3, 0), axis=3)
        options["depth_multiplier"] = out_ch // channels
        lw.op("DEPTHWISE_CONV_2D", [x, weights, bias], [raw], options)
    else:
        # grouped: CONV_2D infers groups = input channels / filter channels (every kernel runs it)
        weights = lw.weight_tensor(node, 1, lambda a: a.transpose(0, 2, 3, 1), axis=0)
        lw.op("CONV_2D", [x, weights, bias], [raw], options)
    if raw != final:
        lw.finish_act(node, raw, final, lw.shape(node.outputs[0]))


@lowers("kiln.NhwcConvTranspose")
def conv_transpose(lw: Lowerer, node: Node) -> None:
    xv = node.inputs[0]
    assert xv is not None
    shape = lw.shape(xv)
    w = lw.weights(node, 1)
    if w.ndim != 4 or int(node.attr("group", 1)) != 1:
        raise lw.unsupported(node, "only 2-D ungrouped transposed convolutions")
    if any(int(d) != 1 for d in (node.attr("dilations") or [1, 1])):
        raise lw.unsupported(node, "dilated transposed convolution")
    _, cout, kh, kw = w.shape
    sh, sw = (int(s) for s in (node.attr("strides") or [1, 1]))
    full = (shape[0], (shape[1] - 1) * sh + kh, (shape[2] - 1) * sw + kw, cout)
    out_v = node.outputs[0]
    out_shape = lw.shape(out_v)
    pads = [int(p) for p in (node.attr("pads") or [0, 0, 0, 0])]
    if node.attr("auto_pad", "NOTSET") not in ("NOTSET", "VALID", None):
        total = [full[1] - out_shape[1], full[2] - out_shape[2]]
        pads = [total[0] // 2, total[1] // 2, total[0] - total[0] // 2, total[1] - total[1] // 2]
    # ONNX's output is the full transposed convolution cropped by the begin pads, then cut to its size or,
    # with output_padding, extended by rows and columns that only the bias reaches: TRANSPOSE_CONV makes
    # those itself when its output_shape asks for them (less than a stride more, as ONNX allows).
    begin = [0, pads[0], pads[1], 0]
    full = (full[0], max(full[1], begin[1] + out_shape[1]), max(full[2], begin[2] + out_shape[2]), cout)
    if full[1] - ((shape[1] - 1) * sh + kh) >= sh or full[2] - ((shape[2] - 1) * sw + kw) >= sw:
        raise lw.unsupported(node, "output_padding of a stride or more")
    final = lw.define(out_v)
    needs_crop = tuple(out_shape) != full or any(begin)
    raw = lw.new(out_v.name + "_full", full, np.float32) if needs_crop else final
    weights = lw.const(w.transpose(1, 2, 3, 0), node.inputs[1].name if node.inputs[1] is not None else "tconv_weights")
    bias = lw.const(lw.bias_data(node, 2, cout), node.inputs[2].name if node.input(2) is not None else "tconv_bias")
    lw.op("TRANSPOSE_CONV", [lw.ints(full, "output_shape"), weights, lw.value(xv), bias], [raw],
          {"padding": "VALID", "stride_h": sh, "stride_w": sw})
    if needs_crop:
        lw.op("SLICE", [raw, lw.ints(begin, "begin"), lw.ints(out_shape, "size")], [final])


def _pool_geometry(node: Node, shape: tuple[int, ...], out_shape: tuple[int, ...]) -> tuple[
        tuple[int, int], tuple[int, int], list[int]]:
    kernel = tuple(int(k) for k in node.attr("kernel_shape"))
    strides = tuple(int(s) for s in (node.attr("strides") or [1, 1]))
    pads = onnx_pads(node, (shape[1], shape[2]), kernel, strides, (1, 1))  # type: ignore[arg-type]
    # ceil_mode: the last window may start in the input and run past the end padding
    for i in range(2):
        extra = (out_shape[1 + i] - 1) * strides[i] + kernel[i] - (shape[1 + i] + pads[i] + pads[2 + i])
        if extra > 0:
            pads[2 + i] += extra
    return kernel, strides, pads  # type: ignore[return-value]


@lowers("kiln.NhwcMaxPool", "kiln.NhwcAveragePool")
def pool(lw: Lowerer, node: Node) -> None:
    xv = node.inputs[0]
    assert xv is not None
    if any(int(d) != 1 for d in (node.attr("dilations") or [1, 1])):
        raise lw.unsupported(node, "dilated pooling")
    shape, out_shape = lw.shape(xv), lw.shape(node.outputs[0])
    declared = onnx_pads(node, (shape[1], shape[2]), tuple(node.attr("kernel_shape")),  # type: ignore[arg-type]
                         tuple(node.attr("strides") or [1, 1]), (1, 1))  # type: ignore[arg-type]
    kernel, strides, pads = _pool_geometry(node, shape, out_shape)
    x = lw.value(xv)
    is_max = node.op == "NhwcMaxPool"
    same = [_same(shape[1 + i], kernel[i], strides[i], 1) for i in range(2)]
    is_same = pads == [same[0][0], same[1][0], same[0][1], same[1][1]]
    if is_max:
        x, padding = padded_input(lw, node, x, shape, pads, kernel, strides, (1, 1), fill=F32_LOWEST)
    elif not any(pads):
        padding = "VALID"
    elif is_same and not (node.attr("count_include_pad", 0) and any(declared)):
        # TFLite's SAME average excludes the padding, as ONNX does without count_include_pad
        # (and as it always does for the ceil_mode overhang)
        padding = "SAME"
    else:
        return _average_with_divisor(lw, node, x, shape, out_shape, kernel, strides, pads, declared)
    out = lw.define(node.outputs[0])
    lw.op("MAX_POOL_2D" if is_max else "AVERAGE_POOL_2D", [x], [out],
          {"padding": padding, "stride_h": strides[0], "stride_w": strides[1],
           "filter_height": kernel[0], "filter_width": kernel[1]})


def _average_with_divisor(lw: Lowerer, node: Node, x: int, shape: tuple[int, ...], out_shape: tuple[int, ...],
                          kernel: tuple[int, int], strides: tuple[int, int], pads: list[int],
                          declared: list[int]) -> None:
    """An average pool whose divisor is not TFLite's: zero PAD, VALID AVERAGE_POOL_2D, then MUL by area/count.

    The count is the number of input elements in each window (``count_include_pad=0``), or of
    elements inside the declared padding (``count_include_pad=1``; the ceil_mode overhang never
    counts), so the result is exactly ONNX's.
    """
    t, left, b, r = pads
    padded = lw.new("padded", (shape[0], shape[1] + t + b, shape[2] + left + r, shape[3]), np.float32)
    lw.op("PAD", [x, lw.ints([[0, 0], [t, b], [left, r], [0, 0]], "paddings")], [padded])
    mask = np.zeros((shape[1] + t + b, shape[2] + left + r), np.float64)
    if node.attr("count_include_pad", 0):
        mask[t - declared[0]:t + shape[1] + declared[2], left - declared[1]:left + shape[2] + declared[3]] = 1.0
    else:
        mask[t:t + shape[1], left:left + shape[2]] = 1.0
    counts = np.array([[mask[i * strides[0]:i * strides[0] + kernel[0], j * strides[1]:j * strides[1] + kernel[1]].sum()
                        for j in range(out_shape[2])] for i in range(out_shape[1])])
    factor = (kernel[0] * kernel[1]) / np.maximum(counts, 1.0)
    out = lw.define(node.outputs[0])
    options = {"padding": "VALID", "stride_h": strides[0], "stride_w": strides[1],
               "filter_height": kernel[0], "filter_width": kernel[1]}
    if np.all(factor == 1.0):
        lw.op("AVERAGE_POOL_2D", [padded], [out], options)
        return
    pooled = lw.new("pooled", out_shape, np.float32)
    lw.op("AVERAGE_POOL_2D", [padded], [pooled], options)
    lw.op("MUL", [pooled, lw.const(factor.reshape(1, out_shape[1], out_shape[2], 1).astype(np.float32),
                                   "pool_divisor")], [out])


@lowers("kiln.NhwcGlobalAveragePool", "kiln.NhwcGlobalMaxPool")
def global_pool(lw: Lowerer, node: Node) -> None:
    xv = node.inputs[0]
    out = lw.define(node.outputs[0])
    name = "MEAN" if node.op == "NhwcGlobalAveragePool" else "REDUCE_MAX"
    lw.op(name, [lw.value(xv), lw.ints([1, 2], "axes")], [out], {"keep_dims": True})


@lowers("kiln.NhwcResize", "kiln.NhwcUpsample")
def resize(lw: Lowerer, node: Node) -> None:
    xv = node.inputs[0]
    assert xv is not None
    shape, out_shape = lw.shape(xv), lw.shape(node.outputs[0])
    if out_shape[0] != shape[0] or out_shape[3] != shape[3]:
        raise lw.unsupported(node, "resizing the batch or channel axis")
    mode = str(node.attr("mode", "nearest")).lower()
    opset = lw.graph.opsets.get("", 11)
    default_ctm = "half_pixel" if node.op == "NhwcResize" and opset >= 11 else "asymmetric"
    ctm = str(node.attr("coordinate_transformation_mode", default_ctm))
    nearest_mode = str(node.attr("nearest_mode", "round_prefer_floor"))
    if ctm == "pytorch_half_pixel" and min(out_shape[1:3]) > 1:
        ctm = "half_pixel"
    scales = [out_shape[i] / shape[i] for i in (1, 2)]
    integer_up = all(s >= 1 and float(s).is_integer() for s in scales)
    options: dict[str, Any] = {"align_corners": ctm == "align_corners", "half_pixel_centers": ctm == "half_pixel"}
    if mode in ("linear", "bilinear"):
        if ctm not in ("half_pixel", "align_corners", "asymmetric"):
            raise lw.unsupported(node, f"linear Resize with coordinate_transformation_mode {ctm}")
        name = "RESIZE_BILINEAR"
    elif mode == "nearest":
        ok = (
            (ctm == "asymmetric" and (nearest_mode == "floor" or nearest_mode == "round_prefer_floor"
                                      and all(s in (1.0, 2.0) for s in scales)))
            or (ctm == "half_pixel" and (nearest_mode == "round_prefer_ceil" or integer_up))
            or (ctm == "align_corners" and nearest_mode == "round_prefer_ceil")
        )
        if not ok:
            raise lw.unsupported(node, f"nearest Resize with {ctm} coordinates and nearest_mode {nearest_mode}")
        name = "RESIZE_NEAREST_NEIGHBOR"
    else:
        raise lw.unsupported(node, f"Resize mode {mode}")
    out = lw.define(node.outputs[0])
    lw.op(name, [lw.value(xv), lw.ints(out_shape[1:3], "size")], [out], options)


@lowers("kiln.NhwcLRN")
def lrn(lw: Lowerer, node: Node) -> None:
    size = int(node.attr("size"))
    out = lw.define(node.outputs[0])
    lw.op("LOCAL_RESPONSE_NORMALIZATION", [lw.value(node.inputs[0])], [out],
          {"radius": (size - 1) // 2, "bias": float(node.attr("bias", 1.0)),
           "alpha": float(node.attr("alpha", 1e-4)) / size, "beta": float(node.attr("beta", 0.75))})


@lowers("kiln.NhwcBatchNormalization")
def batch_norm(lw: Lowerer, node: Node) -> None:
    scale, bias, mean, var = (lw.require_const(node, i, name).astype(np.float64)
                              for i, name in ((1, "scale"), (2, "bias"), (3, "mean"), (4, "var")))
    mul = scale / np.sqrt(var + float(node.attr("epsilon", 1e-5)))
    add = bias - mean * mul
    out_v = node.outputs[0]
    shape = lw.shape(out_v)
    scaled = lw.new(out_v.name + "_scaled", shape, np.float32)
    lw.op("MUL", [lw.value(node.inputs[0]), lw.const(mul.astype(np.float32), "bn_mul")], [scaled])
    lw.op("ADD", [scaled, lw.const(add.astype(np.float32), "bn_add")], [lw.define(out_v)])


@lowers("kiln.NhwcDepthToSpace", "kiln.NhwcSpaceToDepth")
def depth_space(lw: Lowerer, node: Node) -> None:
    if node.op == "NhwcDepthToSpace" and str(node.attr("mode", "DCR")) != "DCR":
        raise lw.unsupported(node, "DepthToSpace in CRD mode")
    name = "DEPTH_TO_SPACE" if node.op == "NhwcDepthToSpace" else "SPACE_TO_DEPTH"
    lw.op(name, [lw.value(node.inputs[0])], [lw.define(node.outputs[0])], {"block_size": int(node.attr("blocksize"))})


@lowers("kiln.NhwcChannelShuffle")
def channel_shuffle(lw: Lowerer, node: Node) -> None:
    """ShuffleNet's channel shuffle as one GATHER of the channel axis, not Reshape-Transpose-Reshape: the
    body of a CNN keeps no TRANSPOSE.  Output channel j reads input channel (j % g) * (C / g) + j // g."""
    xv = node.inputs[0]
    assert xv is not None
    c = lw.shape(xv)[3]
    group = int(node.attr("group"))
    order = [(j % group) * (c // group) + j // group for j in range(c)]
    lw.op("GATHER", [lw.value(xv), lw.ints(order, "shuffle_order")], [lw.define(node.outputs[0])], {"axis": 3})
