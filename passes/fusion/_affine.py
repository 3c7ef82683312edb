"""Shared math of the fusion passes: linear ops and per-channel affine maps.

A *linear op* here is a node whose output is linear in one constant weight,
with an optional constant bias, and whose output has a *channel axis* along
which a per-channel scale can be moved into the weight:

================  =========================  ==============  ==================
op                weight (constant)          output channel  bias
================  =========================  ==============  ==================
Conv              W [Cout, Cin/g, k...]      axis 1          B [Cout]
ConvTranspose     W [Cin, Cout/g, k...]      axis 1          B [Cout]
Gemm              B [K, N] (transB: [N, K])  axis 1 (N)      beta * C
MatMul (B const)  B [K, N]                   last axis       --
MatMul (A const)  A [M, K]                   second to last  --
================  =========================  ==============  ==================

An affine map ``y * s + t`` after such an op, with ``s`` and ``t`` per output
channel, folds exactly (up to rounding) into it: ``W' = W * s`` along the
weight's output-channel axis and ``B' = B * s + t``.  Before a Conv/Gemm/MatMul,
``x * s + t`` with ``s`` and ``t`` per *input* channel folds as ``W' = W * s``
along the input-channel axis and ``B' = B + W · t`` -- exact for Conv only
when it pads nothing (a zero pad would meet ``t`` at the borders).

All arithmetic is done in float64 and rounded once to the weight's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from kiln.ir.core import Node, Value
from kiln.ir.dtypes import DType
from kiln.rewrite import RewriteBuilder, RewriteRefused, attrs_of

T = TypeVar("T")

FLOAT_DTYPES = frozenset({DType.FLOAT, DType.FLOAT16, DType.DOUBLE})
LINEAR_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


def must(found: T | str) -> T:
    """``found`` unless it is a reason (a string): then the replacement declines with it."""
    if isinstance(found, str):
        raise RewriteRefused(found)
    return found


def const_array(value: Value | None) -> np.ndarray | None:
    """The data of a constant value, or ``None``."""
    if value is None or value.const is None:
        return None
    return value.const.numpy()


def rank_of(value: Value | None) -> int | None:
    shape = value.shape if value is not None else None
    return None if shape is None else len(shape)


def per_channel(c: np.ndarray, rank: int, axis: int, channels: int) -> np.ndarray | None:
    """``c`` as a float64 vector of ``channels`` entries along ``axis`` of a rank-``rank`` tensor.

    ``None`` when ``c`` varies along another axis, has more axes than the
    tensor (broadcasting would widen it), or its channel extent is neither 1
    nor ``channels``.
    """
    if c.dtype == object or c.ndim > rank or c.size == 0:
        return None
    shape = (1,) * (rank - c.ndim) + tuple(c.shape)
    for i, d in enumerate(shape):
        if i == axis:
            if d not in (1, channels):
                return None
        elif d != 1:
            return None
    return np.broadcast_to(c.astype(np.float64).reshape(-1), (channels,)).copy()


def fits_into(c_shape: tuple, out_shape: tuple | None) -> bool:
    """Whether a constant of ``c_shape`` broadcasts into ``out_shape`` without widening it."""
    if out_shape is None or len(c_shape) > len(out_shape):
        return False
    for d, o in zip(reversed(c_shape), reversed(out_shape)):
        if d != 1 and d != o:
            return False
    return True


def _conv_has_pads(node: Node) -> bool:
    auto_pad = node.attr("auto_pad", "NOTSET") or "NOTSET"
    if auto_pad not in ("NOTSET", "VALID"):
        return True
    pads = node.attr("pads")
    return bool(pads) and any(int(p) != 0 for p in pads)


@dataclass
class Linear:
    """A linear op whose weight and bias are constants (see the module docstring).

    Attributes:
        node: the op.
        kind: ``conv``, ``convt``, ``gemm``, ``matmul_b`` or ``matmul_a``.
        weight_index: the input holding the constant weight.
        weight: its data.
        out_rank: the output's rank.
        axis: the output's channel axis (non-negative).
        channels: the number of output channels.
        bias: the effective bias (broadcastable to the output), or ``None``.
    """

    node: Node
    kind: str
    weight_index: int
    weight: np.ndarray
    out_rank: int
    axis: int
    channels: int
    bias: np.ndarray | None

    @property
    def data_input(self) -> Value:
        v = self.node.input(1 if self.kind == "matmul_a" else 0)
        assert v is not None
        return v


def linear_of(node: Node) -> Linear | str:
    """The :class:`Linear` view of ``node``, or the reason it has none."""
    op = node.op
    if node.domain != "" or op not in LINEAR_OPS:
        return f"{node.op_id} is not a linear op"
    out = node.outputs[0]
    if out.dtype not in FLOAT_DTYPES:
        return f"{node.op_id} output is {out.dtype}, not a float type"
    if op in ("Conv", "ConvTranspose"):
        w = const_array(node.input(1))
        if w is None or w.ndim < 3:
            return f"{node.op_id} weight is not a constant"
        b_value = node.input(2)
        b = const_array(b_value)
        if b_value is not None and b is None:
            return f"{node.op_id} bias is not a constant"
        group = int(node.attr("group", 1) or 1)
        channels = int(w.shape[0]) if op == "Conv" else int(w.shape[1]) * group
        if op == "ConvTranspose" and w.shape[0] % group:
            return "ConvTranspose weight does not split into its groups"
        bias = None if b is None else b.astype(np.float64).reshape(-1)
        return Linear(node, "conv" if op == "Conv" else "convt", 1, w, w.ndim, 1, channels, bias)
    if op == "Gemm":
        w = const_array(node.input(1))
        if w is None or w.ndim != 2:
            return "Gemm B is not a 2-D constant"
        c_value = node.input(2)
        c = const_array(c_value)
        if c_value is not None and c is None:
            return "Gemm C is not a constant"
        channels = int(w.shape[0] if node.attr("transB", 0) else w.shape[1])
        beta = float(node.attr("beta", 1.0))
        bias = None if c is None else c.astype(np.float64) * beta
        return Linear(node, "gemm", 1, w, 2, 1, channels, bias)
    # MatMul
    b = const_array(node.input(1))
    a_rank = rank_of(node.input(0))
    if b is not None and b.ndim == 2 and a_rank is not None and a_rank >= 2:
        return Linear(node, "matmul_b", 1, b, a_rank, a_rank - 1, int(b.shape[1]), None)
    a = const_array(node.input(0))
    b_rank = rank_of(node.input(1))
    if a is not None and a.ndim == 2 and b_rank is not None and b_rank >= 2:
        return Linear(node, "matmul_a", 0, a, b_rank, b_rank - 2, int(a.shape[0]), None)
    return "MatMul has no 2-D constant operand (or an operand of unknown rank)"


# --------------------------------------------------------------------------- output side


def scale_output_channels(lin: Linear, s: np.ndarray) -> np.ndarray:
    """The weight scaled so that the op's output channel ``c`` is multiplied by ``s[c]`` (float64)."""
    w = lin.weight.astype(np.float64)
    if lin.kind == "conv":
        return w * s.reshape((-1,) + (1,) * (w.ndim - 1))
    if lin.kind == "convt":
        group = int(lin.node.attr("group", 1) or 1)
        cin, cout_g = w.shape[0], w.shape[1]
        k = w.shape[2:]
        grouped = w.reshape((group, cin // group, cout_g) + k)
        scale = s.reshape((group, 1, cout_g) + (1,) * len(k))
        return (grouped * scale).reshape(w.shape)
    if lin.kind == "gemm":
        return w * (s[:, None] if lin.node.attr("transB", 0) else s[None, :])
    if lin.kind == "matmul_b":
        return w * s[None, :]
    return w * s[:, None]  # matmul_a: rows of A are output rows


def fold_output_affine(
    op: RewriteBuilder, lin: Linear, s: np.ndarray | None, t: np.ndarray | None
) -> Value | None:
    """Builds ``lin`` with ``y * s + t`` folded in; ``None`` when the result would not be one op.

    ``s`` and ``t`` are per-channel float64 vectors (or ``None`` for 1 and 0).
    An N-D MatMul given a shift stays MatMul, followed by one Add.
    """
    node = lin.node
    dtype = lin.weight.dtype
    w_value = node.input(lin.weight_index)
    assert w_value is not None
    new_w = w_value if s is None else op.const(scale_output_channels(lin, s).astype(dtype), w_value.name)
    bias = lin.bias
    if bias is not None and s is not None:
        bias = bias * s  # the bias broadcasts along the output's last axes, where the channel axis is
    if t is not None:
        bias = t if bias is None else bias + t
    out_dtype = node.outputs[0].dtype
    assert out_dtype is not None
    np_dtype = out_dtype.numpy
    if lin.kind in ("conv", "convt"):
        inputs: list[Value | None] = [node.input(0), new_w]
        if bias is not None:
            inputs.append(op.const(bias.astype(np_dtype), _bias_name(node)))
        return op.op(node.op, *inputs, **attrs_of(node))
    if lin.kind == "gemm":
        inputs = [node.input(0), new_w]
        if bias is not None:
            inputs.append(op.const(bias.astype(np_dtype), _bias_name(node)))
        return op.Gemm(*inputs, **attrs_of(node, drop=("beta",)))
    a, b = (node.input(0), new_w) if lin.kind == "matmul_b" else (new_w, node.input(1))
    if bias is None:
        return op.MatMul(a, b)
    if lin.kind == "matmul_b" and lin.out_rank == 2:
        return op.Gemm(a, b, op.const(bias.astype(np_dtype), _bias_name(node)))
    shaped = bias if lin.kind == "matmul_b" else bias.reshape(-1, 1)
    return op.Add(op.MatMul(a, b), op.const(shaped.astype(np_dtype), _bias_name(node)))


def _bias_name(node: Node) -> str:
    return f"{node.name}_bias" if node.name else "bias"


# --------------------------------------------------------------------------- input side


def input_channel_axis(lin: Linear) -> tuple[int, int, int] | str:
    """``(rank, axis, channels)`` of the data input's channel axis the weight consumes, or why none."""
    node = lin.node
    if lin.kind == "conv":
        group = int(node.attr("group", 1) or 1)
        return lin.weight.ndim, 1, int(lin.weight.shape[1]) * group
    if lin.kind == "gemm":
        if node.attr("transA", 0):
            return "Gemm transposes A: its channel axis is not K"
        k = lin.weight.shape[1] if node.attr("transB", 0) else lin.weight.shape[0]
        return 2, 1, int(k)
    if lin.kind == "matmul_b":
        rank = rank_of(node.input(0))
        assert rank is not None
        return rank, rank - 1, int(lin.weight.shape[0])
    return f"{lin.kind} has no input-side fold"


def fold_input_affine(
    op: RewriteBuilder, lin: Linear, x: Value, s: np.ndarray | None, t: np.ndarray | None
) -> Value | str:
    """Builds ``lin`` reading ``x`` where it read ``x * s + t`` (``s``, ``t`` per input channel).

    Returns the new output, or why the fold is not possible.
    """
    node = lin.node
    w = lin.weight.astype(np.float64)
    np_dtype = lin.weight.dtype
    out_dtype = node.outputs[0].dtype
    assert out_dtype is not None
    if lin.kind == "conv":
        if t is not None and _conv_has_pads(node):
            return "the Conv pads with zeros: a shift before it is not exact at the borders"
        group = int(node.attr("group", 1) or 1)
        cout, cin_g = w.shape[0], w.shape[1]
        rows = np.arange(cout) // (cout // group)
        spatial = (1,) * (w.ndim - 2)
        new_w = w if s is None else w * s.reshape(group, cin_g)[rows].reshape((cout, cin_g) + spatial)
        bias = lin.bias
        if t is not None:
            shift = (w * t.reshape(group, cin_g)[rows].reshape((cout, cin_g) + spatial)).sum(
                axis=tuple(range(1, w.ndim))
            )
            bias = shift if bias is None else bias + shift
        inputs: list[Value | None] = [x, _weight(op, node, 1, new_w, s is None, np_dtype)]
        if bias is not None:
            inputs.append(op.const(bias.astype(out_dtype.numpy), _bias_name(node)))
        return op.Conv(*inputs, **attrs_of(node))
    if lin.kind == "gemm":
        trans_b = bool(node.attr("transB", 0))
        k_by_n = w.T if trans_b else w
        new_kn = k_by_n if s is None else k_by_n * s[:, None]
        bias = lin.bias
        if t is not None:
            shift = float(node.attr("alpha", 1.0)) * (t @ k_by_n)
            bias = shift if bias is None else bias + shift
        new_w = new_kn.T if trans_b else new_kn
        inputs = [x, _weight(op, node, 1, new_w, s is None, np_dtype)]
        if bias is not None:
            inputs.append(op.const(bias.astype(out_dtype.numpy), _bias_name(node)))
        return op.Gemm(*inputs, **attrs_of(node, drop=("beta",)))
    if lin.kind == "matmul_b":
        new_w = w if s is None else w * s[:, None]
        b = _weight(op, node, 1, new_w, s is None, np_dtype)
        if t is None:
            return op.MatMul(x, b)
        if lin.out_rank != 2:
            return "a shift before an N-D MatMul would need an Add after it: no gain"
        return op.Gemm(x, b, op.const((t @ w).astype(out_dtype.numpy), _bias_name(node)))
    return f"{lin.kind} has no input-side fold"


def _weight(op: RewriteBuilder, node: Node, index: int, data: np.ndarray, same: bool, dtype: np.dtype) -> Value:
    value = node.input(index)
    assert value is not None
    return value if same else op.const(data.astype(dtype), value.name)


# --------------------------------------------------------------------------- batch norm


def batchnorm_affine(bn: Node) -> tuple[np.ndarray, np.ndarray] | str:
    """``(s, t)`` with ``BN(x) = x * s + t`` per channel (float64), or why not (non-constant, training)."""
    if bn.attr("training_mode", 0):
        return "BatchNormalization is in training mode"
    if bn.attr("spatial", 1) != 1:
        return "BatchNormalization has spatial=0 (per-activation statistics)"
    if any(o.uses or (o.graph is not None and o.graph.is_output(o)) for o in bn.outputs[1:]):
        return "BatchNormalization's running statistics outputs are used"
    params = [const_array(bn.input(i)) for i in range(1, 5)]
    if any(p is None for p in params):
        return "BatchNormalization parameters are not all constants"
    scale, bias, mean, var = (np.asarray(p, dtype=np.float64).reshape(-1) for p in params)  # type: ignore[arg-type]
    eps = float(bn.attr("epsilon", 1e-5))
    s = scale / np.sqrt(var + eps)
    return s, bias - mean * s


__all__ = [
    "FLOAT_DTYPES",
    "LINEAR_OPS",
    "Linear",
    "batchnorm_affine",
    "const_array",
    "fits_into",
    "fold_input_affine",
    "fold_output_affine",
    "input_channel_axis",
    "linear_of",
    "must",
    "per_channel",
    "rank_of",
    "scale_output_channels",
]
