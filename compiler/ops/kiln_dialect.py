"""The kiln dialect: compound ops that fusion creates, each with inference and a decomposition.

``kiln.ConvAct(X, W, [B], [slope])``
    ``act(Conv(X, W, B))``.  Conv's attributes (``auto_pad``, ``dilations``,
    ``group``, ``kernel_shape``, ``pads``, ``strides``) plus the activation.
``kiln.GemmAct(A, B, [C], [slope])``
    ``act(alpha * A' @ B' + beta * C)`` where ``A'``/``B'`` swap their last two
    axes when ``transA``/``transB`` is set.  With 2-D ``A`` and ``B`` this is
    ONNX ``Gemm``; with more axes it is ``MatMul`` (broadcast batch axes) plus
    the scaled bias, so it also stands for a fused ``MatMul + Add + act``.

The activation is named by ``activation`` (ONNX op spelling, matched without
regard to case) with its parameters in ``activation_params``, as
onnxruntime's ``FusedConv`` does:

==============  =======================  ==============================
activation      activation_params        meaning
==============  =======================  ==============================
``Relu``        --                       max(x, 0)
``Clip``        min, max                 min(max(x, min), max)
``LeakyRelu``   alpha (0.01)             x if x >= 0 else alpha * x
``Sigmoid``     --                       1 / (1 + exp(-x))
``HardSigmoid`` alpha (0.2), beta (0.5)  max(0, min(1, alpha * x + beta))
``HardSwish``   --                       x * HardSigmoid(x; 1/6, 1/2)
``Swish``       alpha (1.0)              x * sigmoid(alpha * x) (SiLU)
``Mish``        --                       x * tanh(softplus(x))
``Tanh``        --                       tanh(x)
``Elu``         alpha (1.0)              x if x > 0 else alpha * (exp(x) - 1)
``Gelu``        --                       ``approximate`` = ``none`` / ``tanh``
``PRelu``       --                       x if x >= 0 else slope * x
                                         (slope is the last input)
==============  =======================  ==============================

Whether ``kiln.ConvAct`` stays in ONNX output: the ONNX preset (``O2``) does
not create these ops.  On the ONNX target a kiln op is written as a call of a
model-local function (its decomposition), which onnxruntime runs fine but
which counts as one more node to inline and gains nothing there (onnxruntime
fuses Conv + activation itself).  Activation fusion is for the NCNN, TFLite
and TensorRT targets, whose legalization pipelines run ``fuse-act``; an ONNX
model optimized with ``fuse-act`` in its pipeline is still valid and runnable.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
from kiln.ir.core import AttrKind, Node, Value
from kiln.ir.types import TensorType
from kiln.ops.registry import AttrSpec, kiln_op

if TYPE_CHECKING:
    from kiln.ir.types import Type
    from kiln.ops.builder import OpBuilder
    from kiln.ops.inference import InferContext

FLOAT_MAX = 3.4028234663852886e38
"""Clip bounds that are absent are written as -FLOAT_MAX / FLOAT_MAX."""

ACTIVATIONS: dict[str, tuple[float, ...]] = {
    "Relu": (),
    "Clip": (-FLOAT_MAX, FLOAT_MAX),
    "LeakyRelu": (0.01,),
    "Sigmoid": (),
    "HardSigmoid": (0.2, 0.5),
    "HardSwish": (),
    "Swish": (1.0,),
    "Mish": (),
    "Tanh": (),
    "Elu": (1.0,),
    "Gelu": (),
    "PRelu": (),
}
"""Activation name -> default parameters (their count is the number of parameters)."""

_BY_LOWER = {name.lower(): name for name in ACTIVATIONS}


def canonical_activation(name: str) -> str:
    """The canonical spelling of an activation name (``relu`` -> ``Relu``); ``ValueError`` if unknown."""
    found = _BY_LOWER.get(str(name).lower())
    if found is None:
        raise ValueError(f"unknown fused activation {name!r}; known: {', '.join(ACTIVATIONS)}")
    return found


def activation_params(node: Node) -> tuple[str, list[float]]:
    """``(activation, params)`` of a ConvAct/GemmAct node, defaults filled in."""
    act = canonical_activation(node.attr("activation", "Relu"))
    given = [float(v) for v in (node.attr("activation_params") or [])]
    defaults = list(ACTIVATIONS[act])
    return act, given + defaults[len(given):]


_ACT_ATTRS = {
    "activation": AttrSpec("activation", AttrKind.STRING, required=True),
    "activation_params": AttrSpec("activation_params", AttrKind.FLOATS, default=()),
    "approximate": AttrSpec("approximate", AttrKind.STRING, default="none"),
}


def _opset(b: OpBuilder) -> int:
    from kiln.ops.registry import newest_onnx_opset

    return b.graph.opsets.get("", 0) or newest_onnx_opset()


def _scalar(b: OpBuilder, value: float, like: Value, name: str) -> Value:
    dtype = like.dtype.numpy if like.dtype is not None else np.float32
    return b.const(np.array(value, dtype=dtype), name)


def emit_activation(b: OpBuilder, y: Value, node: Node, slope: Value | None) -> Value:
    """Applies ``node``'s fused activation to ``y`` with plain ONNX ops at the builder graph's opset."""
    act, p = activation_params(node)
    v = _opset(b)
    if act == "Relu":
        return b.Relu(y)
    if act == "Clip":
        if v >= 11:
            return b.Clip(y, _scalar(b, p[0], y, "clip_min"), _scalar(b, p[1], y, "clip_max"))
        return b.Clip(y, min=p[0], max=p[1])
    if act == "LeakyRelu":
        return b.LeakyRelu(y, alpha=p[0])
    if act == "Sigmoid":
        return b.Sigmoid(y)
    if act == "Tanh":
        return b.Tanh(y)
    if act == "HardSigmoid":
        return b.HardSigmoid(y, alpha=p[0], beta=p[1])
    if act == "HardSwish":
        if v >= 14:
            return b.HardSwish(y)
        return b.Mul(y, b.HardSigmoid(y, alpha=1.0 / 6.0, beta=0.5))
    if act == "Swish":
        gate_in = y if p[0] == 1.0 else b.Mul(y, _scalar(b, p[0], y, "swish_alpha"))
        return b.Mul(y, b.Sigmoid(gate_in))
    if act == "Mish":
        if v >= 18:
            return b.Mish(y)
        return b.Mul(y, b.Tanh(b.Softplus(y)))
    if act == "Elu":
        return b.Elu(y, alpha=p[0])
    if act == "Gelu":
        approximate = node.attr("approximate", "none") or "none"
        if v >= 20:
            return b.Gelu(y, approximate=approximate)
        half = b.Mul(y, _scalar(b, 0.5, y, "half"))
        if approximate == "tanh":
            cube = b.Mul(b.Mul(y, y), y)
            inner = b.Add(y, b.Mul(cube, _scalar(b, 0.044715, y, "gelu_c")))
            t = b.Tanh(b.Mul(inner, _scalar(b, math.sqrt(2.0 / math.pi), y, "gelu_k")))
        else:
            t = b.Erf(b.Mul(y, _scalar(b, 1.0 / math.sqrt(2.0), y, "inv_sqrt2")))
        return b.Mul(half, b.Add(t, _scalar(b, 1.0, y, "one")))
    if act == "PRelu":
        if slope is None:
            raise ValueError("a fused PRelu needs its slope as the last input")
        return b.PRelu(y, slope)
    raise AssertionError(act)


def _trimmed(values: list[Value | None]) -> list[Value | None]:
    while values and values[-1] is None:
        values.pop()
    return values


# --------------------------------------------------------------------------- ConvAct

_CONV_ATTRS = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")


def _infer_conv_act(ctx: InferContext) -> list[Type | None]:
    from kiln.ops.inference.nn import infer_conv

    return infer_conv(ctx)


def _decompose_conv_act(b: OpBuilder, node: Node) -> list[Value]:
    conv_attrs: dict[str, Any] = {k: node.attrs[k] for k in _CONV_ATTRS if k in node.attrs}
    y = b.Conv(*_trimmed(list(node.inputs[:3])), **conv_attrs)
    return [emit_activation(b, y, node, node.input(3))]


kiln_op(
    "ConvAct",
    inputs=(2, 4),
    attrs={
        "auto_pad": AttrSpec("auto_pad", AttrKind.STRING, default="NOTSET"),
        "dilations": AttrSpec("dilations", AttrKind.INTS),
        "group": AttrSpec("group", AttrKind.INT, default=1),
        "kernel_shape": AttrSpec("kernel_shape", AttrKind.INTS),
        "pads": AttrSpec("pads", AttrKind.INTS),
        "strides": AttrSpec("strides", AttrKind.INTS),
        **_ACT_ATTRS,
    },
    decompose=_decompose_conv_act,
    infer=_infer_conv_act,
    doc="act(Conv(X, W, B)): a convolution with a fused activation (inputs X, W, [B], [PRelu slope])",
)


# --------------------------------------------------------------------------- GemmAct


def _rank(t: Type | None) -> int | None:
    return len(t.shape) if isinstance(t, TensorType) and t.shape is not None else None


def _swap_last(shape: tuple | None) -> tuple | None:
    if shape is None or len(shape) < 2:
        return shape
    return shape[:-2] + (shape[-1], shape[-2])


def _infer_gemm_act(ctx: InferContext) -> list[Type | None]:
    from kiln.ops.inference._util import broadcast_shapes, common_dtype, fail, fmt_shape
    from kiln.ops.inference.nn import _matmul_shape, infer_gemm

    if ctx.rank(0) == 2 and ctx.rank(1) == 2:
        return infer_gemm(ctx)
    dtype = common_dtype(ctx, (0, 1))
    if dtype is None:
        return [None]
    a, b = ctx.shape(0), ctx.shape(1)
    if ctx.attr("transA", 0):
        a = _swap_last(a)
    if ctx.attr("transB", 0):
        b = _swap_last(b)
    out = _matmul_shape(ctx, a, b)
    c = ctx.shape(2) if ctx.has_input(2) else None
    if out is not None and c is not None:
        try:
            out = broadcast_shapes(out, c)
        except ValueError:
            raise fail(ctx, f"C {fmt_shape(c)} does not broadcast to the output {fmt_shape(out)}") from None
    return [TensorType(dtype, out)]


def _transpose_last(b: OpBuilder, x: Value) -> Value:
    rank = _rank(x.type)
    if rank is None:
        raise ValueError("GemmAct with transA/transB needs inputs of known rank")
    perm = list(range(rank))
    perm[-1], perm[-2] = perm[-2], perm[-1]
    return b.Transpose(x, perm=perm)


def _decompose_gemm_act(b: OpBuilder, node: Node) -> list[Value]:
    a, w, c = node.input(0), node.input(1), node.input(2)
    assert a is not None and w is not None
    alpha = float(node.attr("alpha", 1.0))
    beta = float(node.attr("beta", 1.0))
    ta, tb = int(node.attr("transA", 0)), int(node.attr("transB", 0))
    if _rank(a.type) == 2 and _rank(w.type) == 2:
        gemm_attrs: dict[str, Any] = {k: node.attrs[k] for k in ("alpha", "beta", "transA", "transB") if k in node.attrs}
        y = b.Gemm(*_trimmed([a, w, c]), **gemm_attrs)
    else:
        if ta:
            a = _transpose_last(b, a)
        if tb:
            w = _transpose_last(b, w)
        y = b.MatMul(a, w)
        if alpha != 1.0:
            y = b.Mul(y, _scalar(b, alpha, y, "alpha"))
        if c is not None:
            if beta != 1.0:
                c = b.Mul(c, _scalar(b, beta, c, "beta"))
            y = b.Add(y, c)
    return [emit_activation(b, y, node, node.input(3))]


kiln_op(
    "GemmAct",
    inputs=(2, 4),
    attrs={
        "alpha": AttrSpec("alpha", AttrKind.FLOAT, default=1.0),
        "beta": AttrSpec("beta", AttrKind.FLOAT, default=1.0),
        "transA": AttrSpec("transA", AttrKind.INT, default=0),
        "transB": AttrSpec("transB", AttrKind.INT, default=0),
        **_ACT_ATTRS,
    },
    decompose=_decompose_gemm_act,
    infer=_infer_gemm_act,
    doc="act(alpha * A @ B + beta * C): Gemm (2-D) or MatMul (N-D) with a fused bias and activation",
)


__all__ = ["ACTIVATIONS", "FLOAT_MAX", "activation_params", "canonical_activation", "emit_activation"]
