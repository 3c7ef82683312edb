"""The kiln dialect: compound ops that fusion creates, each with inference and a decomposition.

``kiln.ConvAct(X, W, [B], [slope])``
    ``act(Conv(X, W, B))``.  Conv's attributes (``auto_pad``, ``dilations``,
    ``group``, ``kernel_shape``, ``pads``, ``strides``) plus the activation.
``kiln.ConvTransposeAct(X, W, [B], [slope])``
    ``act(ConvTranspose(X, W, B))`` with ConvTranspose's attributes (NCNN's
    Deconvolution carries the activation; ``fuse-convtranspose-act`` makes it).
``kiln.GemmAct(A, B, [C], [slope])``
    ``act(alpha * A' @ B' + beta * C)`` where ``A'``/``B'`` swap their last two
    axes when ``transA``/``transB`` is set.  With 2-D ``A`` and ``B`` this is
    ONNX ``Gemm``; with more axes it is ``MatMul`` (broadcast batch axes) plus
    the scaled bias, so it also stands for a fused ``MatMul + Add + act``.
``kiln.AddAct(A, B, [slope])``
    ``act(A + B)`` with ONNX broadcasting: a residual Add and the activation
    after it (TFLite's ADD carries the Relu family; ``fuse-add-act`` makes it).

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

Ops that raising (``raise-patterns``) and tensor fusion create where the
model's opset has no standard op for the pattern (each decomposes into the
ops the pattern was made of, or into the ONNX op when the opset has it):

``kiln.LayerNorm(X, [Scale], [B])``
    ONNX ``LayerNormalization`` (``axis``, ``epsilon``) with optional scale:
    ``(X - mean) / sqrt(var + epsilon) * Scale + B`` over axes ``axis..rank-1``.
``kiln.RMSNorm(X, [Scale])``
    ONNX ``RMSNormalization``: ``X / sqrt(mean(X^2) + epsilon) * Scale``.
``kiln.Gelu(X)``
    ONNX ``Gelu`` (``approximate`` = ``none`` / ``tanh``).
``kiln.Swish(X)``
    ONNX ``Swish``: ``X * sigmoid(alpha * X)`` (SiLU for ``alpha`` = 1).
``kiln.HardSwish(X)``
    ONNX ``HardSwish``: ``X * max(0, min(1, X / 6 + 1/2))``.
``kiln.Attention(Q, K, V, [mask])``
    ONNX ``Attention`` (opset 23) without caches, causal masking or softcap:
    ``softmax(Q @ K^T * scale + mask) @ V`` per head.  4-D inputs are
    ``[B, H, S, D]``; 3-D inputs are ``[B, S, H * D]`` with
    ``q_num_heads``/``kv_num_heads`` (the head split and merge included).
``kiln.ChannelShuffle(X)``
    ``Reshape(N, group, C / group, ...) -> Transpose(0, 2, 1, ...) -> Reshape(N, C, ...)``
    (ShuffleNet), one layer on NCNN (``ShuffleChannel``) and TensorRT.

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
    """``(activation, params)`` of a ConvAct/GemmAct/AddAct node, defaults filled in."""
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
        return hard_swish(b, y)
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
        return gelu(b, y, node.attr("approximate", "none") or "none")
    if act == "PRelu":
        if slope is None:
            raise ValueError("a fused PRelu needs its slope as the last input")
        return b.PRelu(y, slope)
    raise AssertionError(act)


def _trimmed(values: list[Value | None]) -> list[Value | None]:
    while values and values[-1] is None:
        values.pop()
    return values


# --------------------------------------------------------------------------- ConvAct, ConvTransposeAct

_CONV_ATTR_SPECS = {
    "auto_pad": AttrSpec("auto_pad", AttrKind.STRING, default="NOTSET"),
    "dilations": AttrSpec("dilations", AttrKind.INTS),
    "group": AttrSpec("group", AttrKind.INT, default=1),
    "kernel_shape": AttrSpec("kernel_shape", AttrKind.INTS),
    "pads": AttrSpec("pads", AttrKind.INTS),
    "strides": AttrSpec("strides", AttrKind.INTS),
}
_CONV_TRANSPOSE_ATTR_SPECS = {
    **_CONV_ATTR_SPECS,
    "output_padding": AttrSpec("output_padding", AttrKind.INTS),
    "output_shape": AttrSpec("output_shape", AttrKind.INTS),
}


def _register_conv_with_activation(name: str, onnx_op: str, specs: dict[str, AttrSpec], infer: Any,
                                   what: str) -> None:
    """``kiln.<name>(X, W, [B], [slope])`` = act(<onnx_op>(X, W, B)) with the ONNX op's own attributes."""

    def decompose(b: OpBuilder, node: Node) -> list[Value]:
        attrs: dict[str, Any] = {k: node.attrs[k] for k in specs if k in node.attrs}
        y = getattr(b, onnx_op)(*_trimmed(list(node.inputs[:3])), **attrs)
        return [emit_activation(b, y, node, node.input(3))]

    kiln_op(
        name,
        inputs=(2, 4),
        attrs={**specs, **_ACT_ATTRS},
        decompose=decompose,
        infer=infer,
        doc=f"act({onnx_op}(X, W, B)): {what} with a fused activation (inputs X, W, [B], [PRelu slope])",
    )


def _infer_conv_act(ctx: InferContext) -> list[Type | None]:
    from kiln.ops.inference.nn import infer_conv

    return infer_conv(ctx)


def _infer_conv_transpose_act(ctx: InferContext) -> list[Type | None]:
    from kiln.ops.inference.nn import infer_conv_transpose

    return infer_conv_transpose(ctx)


_register_conv_with_activation("ConvAct", "Conv", _CONV_ATTR_SPECS, _infer_conv_act, "a convolution")
_register_conv_with_activation("ConvTransposeAct", "ConvTranspose", _CONV_TRANSPOSE_ATTR_SPECS,
                               _infer_conv_transpose_act, "a transposed convolution")


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


def activation_slope(node: Node) -> Value | None:
    """The PRelu slope of a fused op: its last input (``kiln.AddAct``'s third, the others' fourth)."""
    return node.input(2 if node.op == "AddAct" else 3)


# --------------------------------------------------------------------------- AddAct


def _infer_add_act(ctx: InferContext) -> list[Type | None]:
    from kiln.ops.inference.elementwise import infer_binary

    return infer_binary(ctx)


def _decompose_add_act(b: OpBuilder, node: Node) -> list[Value]:
    y = b.Add(node.input(0), node.input(1))
    return [emit_activation(b, y, node, node.input(2))]


kiln_op(
    "AddAct",
    inputs=(2, 3),
    attrs=dict(_ACT_ATTRS),
    decompose=_decompose_add_act,
    infer=_infer_add_act,
    doc="act(A + B): an Add (ONNX broadcasting) with a fused activation (inputs A, B, [PRelu slope])",
)


# --------------------------------------------------------------------------- shared by the ops below


def _same_type(ctx: InferContext) -> list[Type | None]:
    return [ctx.tensor(0)]


def reduce_mean(b: OpBuilder, x: Value, axes: list[int]) -> Value:
    """``ReduceMean(x, axes, keepdims=1)`` in the form of the builder graph's opset (axes an input from 18)."""
    if _opset(b) >= 18:
        return b.ReduceMean(x, b.const(np.array(axes, dtype=np.int64), "axes"), keepdims=1)
    return b.ReduceMean(x, axes=axes, keepdims=1)


def _norm_axes(x: Value, axis: int) -> list[int]:
    """The axes ``axis..rank-1`` (negative when the rank is unknown and ``axis`` is negative)."""
    rank = _rank(x.type)
    if rank is None:
        if axis >= 0:
            raise ValueError("a normalization over a positive axis needs an input of known rank")
        return list(range(axis, 0))
    start = axis % rank if rank else 0
    return list(range(start, rank))


def _ones_scale(b: OpBuilder, x: Value, axes: list[int]) -> Value | None:
    """A constant of ones over the normalized axes of ``x``, or ``None`` when their sizes are not static."""
    shape = x.shape
    if shape is None:
        return None
    dims = [shape[a] for a in axes]
    if not all(isinstance(d, int) for d in dims):
        return None
    dtype = x.dtype.numpy if x.dtype is not None else np.float32
    return b.const(np.ones(dims, dtype=dtype), "ones")


def gelu(b: OpBuilder, x: Value, approximate: str) -> Value:
    """GELU of ``x`` at the builder graph's opset (ONNX ``Gelu`` from 20, else its formula)."""
    if _opset(b) >= 20:
        return b.Gelu(x, approximate=approximate)
    half = b.Mul(x, _scalar(b, 0.5, x, "half"))
    if approximate == "tanh":
        cube = b.Mul(b.Mul(x, x), x)
        inner = b.Add(x, b.Mul(cube, _scalar(b, 0.044715, x, "gelu_c")))
        t = b.Tanh(b.Mul(inner, _scalar(b, math.sqrt(2.0 / math.pi), x, "gelu_k")))
    else:
        t = b.Erf(b.Mul(x, _scalar(b, 1.0 / math.sqrt(2.0), x, "inv_sqrt2")))
    return b.Mul(half, b.Add(t, _scalar(b, 1.0, x, "one")))


def hard_swish(b: OpBuilder, x: Value) -> Value:
    """HardSwish of ``x`` (ONNX ``HardSwish`` from opset 14, else ``x * HardSigmoid(x; 1/6, 1/2)``)."""
    if _opset(b) >= 14:
        return b.HardSwish(x)
    return b.Mul(x, b.HardSigmoid(x, alpha=1.0 / 6.0, beta=0.5))


def swish(b: OpBuilder, x: Value, alpha: float) -> Value:
    """``x * sigmoid(alpha * x)`` (ONNX ``Swish`` from opset 24)."""
    if _opset(b) >= 24:
        return b.Swish(x, alpha=alpha)
    gate_in = x if alpha == 1.0 else b.Mul(x, _scalar(b, alpha, x, "swish_alpha"))
    return b.Mul(x, b.Sigmoid(gate_in))


# --------------------------------------------------------------------------- LayerNorm, RMSNorm


def _decompose_layer_norm(b: OpBuilder, node: Node) -> list[Value]:
    x, scale, bias = node.input(0), node.input(1), node.input(2)
    assert x is not None
    axis = int(node.attr("axis", -1))
    eps = float(node.attr("epsilon", 1e-5))
    axes = _norm_axes(x, axis)
    if _opset(b) >= 17:
        full_scale = scale if scale is not None else _ones_scale(b, x, axes)
        if full_scale is not None:
            return [b.LayerNormalization(*_trimmed([x, full_scale, bias]), axis=axis, epsilon=eps)]
    d = b.Sub(x, reduce_mean(b, x, axes))
    var = reduce_mean(b, b.Mul(d, d), axes)
    y = b.Div(d, b.Sqrt(b.Add(var, _scalar(b, eps, x, "epsilon"))))
    if scale is not None:
        y = b.Mul(y, scale)
    if bias is not None:
        y = b.Add(y, bias)
    return [y]


kiln_op(
    "LayerNorm",
    inputs=(1, 3),
    attrs={
        "axis": AttrSpec("axis", AttrKind.INT, default=-1),
        "epsilon": AttrSpec("epsilon", AttrKind.FLOAT, default=1e-5),
    },
    decompose=_decompose_layer_norm,
    infer=_same_type,
    doc="LayerNormalization with an optional scale: (X - mean) / sqrt(var + epsilon) * Scale + B",
)


def _decompose_rms_norm(b: OpBuilder, node: Node) -> list[Value]:
    x, scale = node.input(0), node.input(1)
    assert x is not None
    axis = int(node.attr("axis", -1))
    eps = float(node.attr("epsilon", 1e-5))
    axes = _norm_axes(x, axis)
    if _opset(b) >= 23:
        full_scale = scale if scale is not None else _ones_scale(b, x, axes)
        if full_scale is not None:
            return [b.RMSNormalization(x, full_scale, axis=axis, epsilon=eps)]
    ms = reduce_mean(b, b.Mul(x, x), axes)
    y = b.Div(x, b.Sqrt(b.Add(ms, _scalar(b, eps, x, "epsilon"))))
    return [b.Mul(y, scale) if scale is not None else y]


kiln_op(
    "RMSNorm",
    inputs=(1, 2),
    attrs={
        "axis": AttrSpec("axis", AttrKind.INT, default=-1),
        "epsilon": AttrSpec("epsilon", AttrKind.FLOAT, default=1e-5),
    },
    decompose=_decompose_rms_norm,
    infer=_same_type,
    doc="RMSNormalization with an optional scale: X / sqrt(mean(X^2) + epsilon) * Scale",
)


# --------------------------------------------------------------------------- Gelu, Swish, HardSwish

kiln_op(
    "Gelu",
    inputs=(1, 1),
    attrs={"approximate": AttrSpec("approximate", AttrKind.STRING, default="none")},
    decompose=lambda b, node: [gelu(b, node.inputs[0], node.attr("approximate", "none") or "none")],  # type: ignore[arg-type]
    infer=_same_type,
    doc="GELU: x/2 * (1 + erf(x/sqrt(2))), or with approximate=tanh its tanh form",
)

kiln_op(
    "Swish",
    inputs=(1, 1),
    attrs={"alpha": AttrSpec("alpha", AttrKind.FLOAT, default=1.0)},
    decompose=lambda b, node: [swish(b, node.inputs[0], float(node.attr("alpha", 1.0)))],  # type: ignore[arg-type]
    infer=_same_type,
    doc="Swish: x * sigmoid(alpha * x) (SiLU for alpha = 1)",
)

kiln_op(
    "HardSwish",
    inputs=(1, 1),
    attrs={},
    decompose=lambda b, node: [hard_swish(b, node.inputs[0])],  # type: ignore[arg-type]
    infer=_same_type,
    doc="HardSwish: x * max(0, min(1, x/6 + 1/2))",
)


# --------------------------------------------------------------------------- Attention


def _infer_attention(ctx: InferContext) -> list[Type | None]:
    from kiln.ops.inference._util import common_dtype, dim_prod

    dtype = common_dtype(ctx, (0, 1, 2))
    if dtype is None:
        return [None]
    q, v = ctx.shape(0), ctx.shape(2)
    if q is None or v is None or len(q) != len(v) or len(q) not in (3, 4):
        return [TensorType(dtype, None)]
    if len(q) == 4:
        return [TensorType(dtype, (q[0], q[1], q[2], v[3]))]
    hq, hkv = ctx.attr("q_num_heads"), ctx.attr("kv_num_heads")
    dv = v[2] // int(hkv) if isinstance(v[2], int) and hkv else None
    return [TensorType(dtype, (q[0], q[1], dim_prod([int(hq), dv]) if hq and dv is not None else None))]


def _split_heads(b: OpBuilder, x: Value, heads: int, perm: list[int]) -> Value:
    """``[B, S, H*D]`` -> ``Transpose(Reshape(x, [B, S, H, D]), perm)``."""
    shape = b.const(np.array([0, 0, heads, -1], dtype=np.int64), "heads")
    return b.Transpose(b.Reshape(x, shape), perm=perm)


def _decompose_attention(b: OpBuilder, node: Node) -> list[Value]:
    q, k, v, mask = node.input(0), node.input(1), node.input(2), node.input(3)
    assert q is not None and k is not None and v is not None
    rank = _rank(q.type)
    hq, hkv = node.attr("q_num_heads"), node.attr("kv_num_heads")
    if _opset(b) >= 23:
        attrs: dict[str, Any] = {a: node.attrs[a] for a in ("scale", "q_num_heads", "kv_num_heads") if a in node.attrs}
        return [b.Attention(*_trimmed([q, k, v, mask]), **attrs)]
    if hq is not None and hkv is not None and int(hq) != int(hkv):
        raise ValueError(f"kiln.Attention with {hq} query and {hkv} key/value heads (GQA) has no decomposition below opset 23")
    three_d = rank == 3
    if three_d:
        if hq is None:
            raise ValueError("a 3-D kiln.Attention needs q_num_heads and kv_num_heads")
        heads = int(hq)
        q4 = _split_heads(b, q, heads, [0, 2, 1, 3])
        kt = _split_heads(b, k, heads, [0, 2, 3, 1])
        v4 = _split_heads(b, v, heads, [0, 2, 1, 3])
    else:
        q4, v4 = q, v
        kt = _transpose_last(b, k)
    scale = node.attr("scale")
    if scale is None:
        d = q4.shape[-1] if q4.shape is not None else None
        if not isinstance(d, int):
            raise ValueError("kiln.Attention without a scale needs a static head size")
        scale = 1.0 / math.sqrt(d)
    scores = b.Mul(b.MatMul(q4, kt), _scalar(b, float(scale), q, "scale"))
    if mask is not None:
        if mask.dtype is not None and mask.dtype.numpy == np.bool_:
            lowest = np.finfo(q.dtype.numpy if q.dtype is not None else np.float32).min
            scores = b.Where(mask, scores, _scalar(b, float(lowest), q, "masked"))
        else:
            scores = b.Add(scores, mask)
    y = b.MatMul(b.Softmax(scores, axis=-1), v4)
    if three_d:
        y = b.Reshape(b.Transpose(y, perm=[0, 2, 1, 3]), b.const(np.array([0, 0, -1], dtype=np.int64), "merged"))
    return [y]


kiln_op(
    "Attention",
    inputs=(3, 4),
    attrs={
        "scale": AttrSpec("scale", AttrKind.FLOAT),
        "q_num_heads": AttrSpec("q_num_heads", AttrKind.INT),
        "kv_num_heads": AttrSpec("kv_num_heads", AttrKind.INT),
    },
    decompose=_decompose_attention,
    infer=_infer_attention,
    doc="scaled dot-product attention softmax(Q K^T * scale + mask) V (ONNX Attention-23 without caches)",
)


# --------------------------------------------------------------------------- ChannelShuffle


def _decompose_channel_shuffle(b: OpBuilder, node: Node) -> list[Value]:
    x = node.inputs[0]
    assert x is not None
    group = int(node.attr("group"))
    c = x.shape[1] if x.shape is not None and len(x.shape) >= 2 else None
    if not isinstance(c, int) or c % group:
        raise ValueError(f"kiln.ChannelShuffle needs a static channel count divisible by {group}")
    grouped = b.Reshape(x, b.const(np.array([0, group, c // group, -1], dtype=np.int64), "grouped"))
    return [b.Reshape(b.Transpose(grouped, perm=[0, 2, 1, 3]), b.Shape(x))]


kiln_op(
    "ChannelShuffle",
    inputs=(1, 1),
    attrs={"group": AttrSpec("group", AttrKind.INT, required=True)},
    decompose=_decompose_channel_shuffle,
    infer=_same_type,
    doc="ShuffleNet channel shuffle: channels viewed as [group, C/group], transposed, flattened back",
)


__all__ = [
    "ACTIVATIONS",
    "FLOAT_MAX",
    "activation_params",
    "canonical_activation",
    "emit_activation",
    "gelu",
    "hard_swish",
    "reduce_mean",
    "swish",
]

from kiln.ops import layout_dialect as _layout_dialect  # noqa: F401  (registers the kiln.Nhwc<Op> forms)
