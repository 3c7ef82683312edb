"""``--onnx-contrib``: kiln ops written as onnxruntime's ``com.microsoft`` fused ops.

onnxruntime runs these contrib ops natively (their schemas ship in onnxruntime,
``onnxruntime.capi.onnxruntime_pybind11_state.get_all_operator_schema()``):

=====================================  ==========================================================
kiln op                                written as
=====================================  ==========================================================
``ConvAct`` (Relu, Tanh, Sigmoid,      ``FusedConv(X, W, [B])`` with ``activation`` and
LeakyRelu, Clip, HardSigmoid)          ``activation_params`` (its MLAS activations)
``GemmAct``, 2-D, same activations     ``FusedGemm(A, B, [C])`` with ``activation_alpha/beta``
``GemmAct`` N-D with Gelu              ``MatMul`` then ``BiasGelu(y, c)`` (a 1-D bias ``c``),
                                       ``Gelu`` (no bias), or ``FastGelu(y, [c])`` (tanh form)
``GemmAct`` N-D with Swish             ``MatMul`` [+ ``Add``] then ``QuickGelu(alpha)``
``Gelu``                               ``Gelu``, or ``FastGelu`` for ``approximate=tanh``
``Swish``                              ``QuickGelu(alpha)`` (``x * sigmoid(alpha * x)``)
``LayerNorm`` (below opset 17)         ``LayerNormalization``: onnxruntime registers it in the ONNX
                                       domain from opset 1 (a contrib kernel)
``Attention``, 3-D, one head count     ``MultiHeadAttention(Q, K, V, attention_bias=mask)``
                                       (``num_heads``, ``scale``), the mask expanded to
                                       ``[B|1, H|1, S, L]`` as the op requires
=====================================  ==========================================================

Everything else keeps the exporter's default (a standard op where the opset has
one, else a model-local function).  Only float32 nodes are lowered: the CPU
kernels of FusedConv, FusedGemm, BiasGelu and QuickGelu are float32 only.
"""

from __future__ import annotations

import numpy as np
import onnx
from kiln.exporter import Emit
from kiln.ir.core import Node, Value
from kiln.ir.dtypes import DType
from kiln.ops.kiln_dialect import activation_params

DOMAIN = "com.microsoft"
OPSET = 1

MLAS_ACTIVATIONS = frozenset({"Relu", "Tanh", "Sigmoid", "LeakyRelu", "Clip", "HardSigmoid"})
"""What FusedConv and FusedGemm apply (onnxruntime's MLAS activation kinds)."""

_CONV_ATTRS = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")


def _node(op: str, inputs: list[str], outputs: list[str], domain: str = DOMAIN, **attrs: object) -> onnx.NodeProto:
    while inputs and not inputs[-1]:
        inputs = inputs[:-1]
    return onnx.helper.make_node(op, inputs, outputs, domain=domain, **{k: v for k, v in sorted(attrs.items())})


def _float32(node: Node) -> bool:
    return all(v is None or v.dtype == DType.FLOAT for v in (*node.inputs, *node.outputs))


def _rank(v: Value | None) -> int | None:
    return len(v.shape) if v is not None and v.shape is not None else None


def _conv_act(node: Node, emit: Emit) -> list[onnx.NodeProto] | None:
    act, params = activation_params(node)
    if act not in MLAS_ACTIVATIONS or len(emit.inputs) > 3:
        return None
    attrs = {k: node.attrs[k].value for k in _CONV_ATTRS if k in node.attrs}
    if params:
        attrs["activation_params"] = params
    return [_node("FusedConv", emit.inputs[:3], emit.outputs, activation=act, **attrs)]


def _fused_gemm(node: Node, emit: Emit, act: str, params: list[float]) -> list[onnx.NodeProto] | None:
    if act not in MLAS_ACTIVATIONS or act == "Clip":  # FusedGemm's functors have no Clip
        return None
    attrs = {k: node.attrs[k].value for k in ("alpha", "beta", "transA", "transB") if k in node.attrs}
    if params:
        attrs["activation_alpha"] = params[0]
    if len(params) > 1:
        attrs["activation_beta"] = params[1]
    return [_node("FusedGemm", emit.inputs[:3], emit.outputs, activation=act, **attrs)]


def _gemm_act(node: Node, emit: Emit) -> list[onnx.NodeProto] | None:
    act, params = activation_params(node)
    a, b, c = node.input(0), node.input(1), node.input(2)
    if len(emit.inputs) > 3:
        return None
    if _rank(a) == 2 and _rank(b) == 2:
        return _fused_gemm(node, emit, act, params)
    plain = all(float(node.attr(k, 1.0)) == 1.0 for k in ("alpha", "beta")) and not any(
        int(node.attr(k, 0)) for k in ("transA", "transB")
    )
    if not plain or act not in ("Gelu", "Swish"):
        return None
    y = emit.fresh(f"{emit.outputs[0]}_matmul")
    nodes = [_node("MatMul", emit.inputs[:2], [y], domain="")]
    bias = emit.inputs[2] if c is not None else ""
    if act == "Gelu":
        tanh = (node.attr("approximate", "none") or "none") == "tanh"
        if tanh:
            return [*nodes, _node("FastGelu", [y, bias], emit.outputs)]
        if bias and _rank(c) == 1:
            return [*nodes, _node("BiasGelu", [y, bias], emit.outputs)]
        if bias:
            nodes.append(_node("Add", [y, bias], [z := emit.fresh(f"{emit.outputs[0]}_biased")], domain=""))
            y = z
        return [*nodes, _node("Gelu", [y], emit.outputs)]
    if bias:
        nodes.append(_node("Add", [y, bias], [z := emit.fresh(f"{emit.outputs[0]}_biased")], domain=""))
        y = z
    return [*nodes, _node("QuickGelu", [y], emit.outputs, alpha=params[0])]


def _gelu(node: Node, emit: Emit) -> list[onnx.NodeProto]:
    tanh = (node.attr("approximate", "none") or "none") == "tanh"
    return [_node("FastGelu" if tanh else "Gelu", emit.inputs[:1], emit.outputs)]


def _swish(node: Node, emit: Emit) -> list[onnx.NodeProto]:
    return [_node("QuickGelu", emit.inputs[:1], emit.outputs, alpha=float(node.attr("alpha", 1.0)))]


def _attention(node: Node, emit: Emit) -> list[onnx.NodeProto] | None:
    q, k, v, mask = node.input(0), node.input(1), node.input(2), node.input(3)
    heads, kv_heads = node.attr("q_num_heads"), node.attr("kv_num_heads")
    if _rank(q) != 3 or heads is None or heads != kv_heads or q is None or k is None or v is None:
        return None
    attrs: dict[str, object] = {"num_heads": int(heads)}
    if node.attr("scale") is not None:
        attrs["scale"] = float(node.attr("scale"))
    nodes: list[onnx.NodeProto] = []
    bias = ""
    if mask is not None:
        # MultiHeadAttention's attention_bias is [B|1, H|1, S, L]: a [.., 1, L] padding mask is expanded
        s, l = q.shape[1], k.shape[1]  # type: ignore[index]
        if mask.shape is None or len(mask.shape) != 4 or not isinstance(s, int) or not isinstance(l, int):
            return None
        m0, m1 = mask.shape[0], mask.shape[1]
        if mask.dtype != q.dtype or m0 not in (1, q.shape[0]) or m1 not in (1, int(heads)):  # type: ignore[index]
            return None
        bias = emit.inputs[3]
        if tuple(mask.shape[2:]) != (s, l):
            if mask.shape[2] not in (1, s) or mask.shape[3] not in (1, l):
                return None
            if not isinstance(m0, int) or not isinstance(m1, int):
                return None
            key = ("attention_bias", emit.inputs[3], (m0, m1, s, l))  # one Expand per mask, shared by the layers
            if key not in emit.memo:
                shape = emit.constant(np.array([m0, m1, s, l], dtype=np.int64), "attention_bias_shape")
                emit.memo[key] = emit.fresh(f"{emit.inputs[3]}_expanded")
                nodes.append(_node("Expand", [emit.inputs[3], shape], [emit.memo[key]], domain=""))
            bias = emit.memo[key]
    inputs = [*emit.inputs[:3], "", "", bias]
    return [*nodes, _node("MultiHeadAttention", inputs, emit.outputs, **attrs)]


def _layer_norm(node: Node, emit: Emit) -> list[onnx.NodeProto] | None:
    """Below opset 17: onnxruntime's own LayerNormalization kernel, registered in the ONNX domain from 1."""
    x = node.input(0)
    axis = int(node.attr("axis", -1))
    inputs = list(emit.inputs)
    if node.input(1) is None:
        if x is None or x.shape is None:
            return None
        dims = list(x.shape[axis % len(x.shape):])
        if not all(isinstance(d, int) for d in dims):
            return None
        inputs = [inputs[0], emit.constant(np.ones(dims, np.float32), "layernorm_scale"), *inputs[2:]]
    return [_node("LayerNormalization", inputs, emit.outputs, domain="", axis=axis,
                  epsilon=float(node.attr("epsilon", 1e-5)))]


_LOWERINGS = {
    "LayerNorm": _layer_norm,
    "ConvAct": _conv_act,
    "GemmAct": _gemm_act,
    "Gelu": _gelu,
    "Swish": _swish,
    "Attention": _attention,
}


def lower(node: Node, emit: Emit) -> list[onnx.NodeProto] | None:
    """The ``com.microsoft`` form of a float32 kiln node, or ``None`` to keep the exporter's default."""
    fn = _LOWERINGS.get(node.op)
    if fn is None or not _float32(node):
        return None
    return fn(node, emit)


__all__ = ["DOMAIN", "MLAS_ACTIVATIONS", "lower"]
