"""``fuse-bn``: folds inference BatchNormalization into its neighbours.

In inference ``BN(x) = (x - μ) / σ · γ + β`` with ``σ = sqrt(var + ε)``, an
affine map per channel (axis 1): ``BN(x) = x · s + t``, ``s = γ/σ``,
``t = β − μ·s``.  Rules, tried in this order:

- ``fuse-bn-into-linear``: BN after Conv, ConvTranspose, Gemm or MatMul with a
  constant weight (whose output the BN alone reads) folds into it:
  ``W' = W·γ/σ`` along the weight's output-channel axis (axis 0 of a Conv
  weight, axis 1 of a ConvTranspose weight ``[Cin, Cout/g, k...]`` within each
  group, the N axis of Gemm's B, transposed or not) and
  ``B' = (B − μ)·γ/σ + β``.  A MatMul without bias becomes Gemm when 2-D, else
  MatMul + Add of the bias.
- ``fuse-bn-into-next-linear``: BN before a Conv (or a 2-D Gemm/MatMul)
  folds into it: ``W' = W·s`` along the input-channel axis, ``B' = B + Σ W·t``.
  For a Conv that is exact only when the Conv pads nothing: with zero
  padding, the padded border would have to hold ``t``, not 0, so a padded
  Conv is refused (the Mul half still folds later, see ``fuse-bias``).
- ``fuse-mul-into-bn`` / ``fuse-add-into-bn``: a Mul/Add by a per-channel
  constant ``c`` right after a BN: ``γ' = γ·c, β' = β·c`` / ``β' = β + c``.
- ``fuse-bn-after-mul`` / ``fuse-bn-after-add``: the same before the BN:
  ``BN(x·c)``: ``γ' = γ·c, μ' = μ/c`` (``c`` nowhere 0); ``BN(x + c)``: ``μ' = μ − c``.

Then, once nothing above applies (a second round of the driver):

- ``fuse-bn-standalone`` (``standalone=mul-add``, the default): a BN left
  alone becomes ``Mul(x, s) + t`` with per-channel constants: two cheap
  elementwise ops instead of four, which every runtime fuses and which
  ``fuse-bias`` merges into neighbouring Mul/Add/Conv ops.  ``standalone=keep``
  leaves it.

Only inference BNs fold: ``training_mode`` unset or 0, ``spatial`` 1, the
running-statistics outputs unused, and all four parameters constant.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np
from kiln.ir.core import Node, Value
from kiln.passes.fusion._affine import (
    FLOAT_DTYPES,
    batchnorm_affine,
    const_array,
    fold_input_affine,
    fold_output_affine,
    input_channel_axis,
    linear_of,
    must,
    per_channel,
    rank_of,
)
from kiln.passmanager.registry import register_pass
from kiln.rewrite import P, RewriteBuilder, RuleSet, RulesPass, attrs_of, rule

_INFERENCE = {"training_mode": lambda v: not v}


def _bn(op, x, **kw):
    """A BatchNormalization pattern over ``x`` with any four parameters."""
    return op.BatchNormalization(x, P.any(), P.any(), P.any(), P.any(), _node="bn", **_INFERENCE, **kw)


# --------------------------------------------------------------------------- into the producer


@rule("fuse-bn-into-linear")
def bn_after_linear(op):
    """BN(Conv|ConvTranspose|Gemm|MatMul(...)) -> the op with scaled weights and bias."""
    return _bn(op, op.op({"Conv", "ConvTranspose", "Gemm", "MatMul"}, P.variadic(), _outputs=["y"], _one_use=True))


@bn_after_linear.check
def _(ctx, bn: Node, y: Value) -> bool | str:
    affine = batchnorm_affine(bn)
    if isinstance(affine, str):
        return affine
    assert y.producer is not None
    lin = linear_of(y.producer)
    if isinstance(lin, str):
        return lin
    if lin.axis != 1:
        return f"the BN channel axis 1 is not {lin.node.op}'s output channel axis {lin.axis}"
    if lin.channels != len(affine[0]):
        return f"{lin.channels} output channels, the BN has {len(affine[0])}"
    return True


@bn_after_linear.replace
def _(op, bn: Node, y: Value) -> Value | None:
    s, t = must(batchnorm_affine(bn))
    assert y.producer is not None
    return fold_output_affine(op, must(linear_of(y.producer)), s, t)


# --------------------------------------------------------------------------- into the consumer


@rule("fuse-bn-into-next-linear")
def bn_before_linear(op, x):
    """Conv|Gemm|MatMul(BN(x), ...) -> the op reading x, with scaled weights and shifted bias."""
    return op.op({"Conv", "Gemm", "MatMul"}, _bn(op, x), P.variadic(), _node="lin")


@bn_before_linear.check
def _(ctx, bn: Node, lin: Node) -> bool | str:
    affine = batchnorm_affine(bn)
    if isinstance(affine, str):
        return affine
    view = linear_of(lin)
    if isinstance(view, str):
        return view
    where = input_channel_axis(view)
    if isinstance(where, str):
        return where
    rank, axis, channels = where
    if axis != 1 or rank_of(bn.input(0)) != rank:
        return f"the BN channel axis 1 is not the axis {lin.op} reduces over"
    if channels != len(affine[0]):
        return f"{lin.op} reads {channels} channels, the BN has {len(affine[0])}"
    return True


@bn_before_linear.replace
def _(op, x: Value, bn: Node, lin: Node) -> Value:
    s, t = must(batchnorm_affine(bn))
    return must(fold_input_affine(op, must(linear_of(lin)), x, s, t))


# --------------------------------------------------------------------------- neighbouring Mul/Add


def _bn_params(bn: Node) -> list[np.ndarray]:
    return [np.asarray(const_array(bn.input(i)), dtype=np.float64).reshape(-1) for i in range(1, 5)]


def _rebuilt_bn(op: RewriteBuilder, bn: Node, x: Value, *params: np.ndarray) -> Value:
    """``bn`` over ``x`` with new scale, bias, mean and var (in the old parameters' dtype)."""
    consts = []
    for i, data in zip(range(1, 5), params):
        old = bn.input(i)
        assert old is not None and old.const is not None
        consts.append(op.const(np.asarray(data).astype(old.const.numpy().dtype), old.name))
    return op.BatchNormalization(x, *consts, **attrs_of(bn))


def _bn_channel_vector(bn: Node, value: Value, c: Value) -> np.ndarray | str:
    affine = batchnorm_affine(bn)
    if isinstance(affine, str):
        return affine
    rank = rank_of(value)
    data = const_array(c)
    if rank is None or data is None:
        return "the BN input has unknown rank"
    if value.dtype not in FLOAT_DTYPES:
        return f"{value.dtype} is not a float type"
    vec = per_channel(data, rank, 1, len(affine[0]))
    if vec is None:
        return f"constant %{c.name} {tuple(data.shape)} is not per-channel along axis 1"
    return vec


@rule("fuse-mul-into-bn")
def mul_after_bn(op, x):
    """Mul(BN(x), c) -> BN(x) with γ·c, β·c."""
    return op.Mul(_bn(op, x, _outputs=["y"], _one_use=True), P.const("c"))


@mul_after_bn.check
def _(ctx, bn: Node, y: Value, c: Value) -> bool | str:
    vec = _bn_channel_vector(bn, y, c)
    return vec if isinstance(vec, str) else True


@mul_after_bn.replace
def _(op, x: Value, bn: Node, y: Value, c: Value) -> Value:
    vec = must(_bn_channel_vector(bn, y, c))
    scale, bias, mean, var = _bn_params(bn)
    return _rebuilt_bn(op, bn, x, scale * vec, bias * vec, mean, var)


@rule("fuse-add-into-bn")
def add_after_bn(op, x):
    """Add(BN(x), c) -> BN(x) with β + c."""
    return op.Add(_bn(op, x, _outputs=["y"], _one_use=True), P.const("c"))


@add_after_bn.check
def _(ctx, bn: Node, y: Value, c: Value) -> bool | str:
    vec = _bn_channel_vector(bn, y, c)
    return vec if isinstance(vec, str) else True


@add_after_bn.replace
def _(op, x: Value, bn: Node, y: Value, c: Value) -> Value:
    vec = must(_bn_channel_vector(bn, y, c))
    scale, bias, mean, var = _bn_params(bn)
    return _rebuilt_bn(op, bn, x, scale, bias + vec, mean, var)


@rule("fuse-bn-after-mul")
def bn_after_mul(op, x):
    """BN(Mul(x, c)) -> BN(x) with γ·c, μ/c (c nowhere zero)."""
    return _bn(op, op.Mul(x, P.const("c"), _outputs=["m"], _one_use=True))


@bn_after_mul.check
def _(ctx, bn: Node, m: Value, c: Value) -> bool | str:
    vec = _bn_channel_vector(bn, m, c)
    if isinstance(vec, str):
        return vec
    return bool(np.all(vec != 0)) or "the constant has zeros"


@bn_after_mul.replace
def _(op, x: Value, bn: Node, m: Value, c: Value) -> Value:
    vec = must(_bn_channel_vector(bn, m, c))
    scale, bias, mean, var = _bn_params(bn)
    return _rebuilt_bn(op, bn, x, scale * vec, bias, mean / vec, var)


@rule("fuse-bn-after-add")
def bn_after_add(op, x):
    """BN(Add(x, c)) -> BN(x) with μ − c."""
    return _bn(op, op.Add(x, P.const("c"), _outputs=["a"], _one_use=True))


@bn_after_add.check
def _(ctx, bn: Node, a: Value, c: Value) -> bool | str:
    vec = _bn_channel_vector(bn, a, c)
    return vec if isinstance(vec, str) else True


@bn_after_add.replace
def _(op, x: Value, bn: Node, a: Value, c: Value) -> Value:
    vec = must(_bn_channel_vector(bn, a, c))
    scale, bias, mean, var = _bn_params(bn)
    return _rebuilt_bn(op, bn, x, scale, bias, mean - vec, var)


# --------------------------------------------------------------------------- standalone


@rule("fuse-bn-standalone")
def bn_standalone(op, x):
    """BN(x) -> Add(Mul(x, s), t) with per-channel constants."""
    return _bn(op, x)


@bn_standalone.check
def _(ctx, x: Value, bn: Node) -> bool | str:
    affine = batchnorm_affine(bn)
    if isinstance(affine, str):
        return affine
    rank = rank_of(x)
    if rank is None or rank < 2:
        return "the BN input has unknown rank"
    return x.dtype in FLOAT_DTYPES or f"{x.dtype} is not a float type"


@bn_standalone.replace
def _(op, x: Value, bn: Node) -> Value:
    s, t = must(batchnorm_affine(bn))
    rank = rank_of(x)
    assert rank is not None and x.dtype is not None
    shape = (-1,) + (1,) * (rank - 2)
    dtype = x.dtype.numpy
    name = bn.name or "bn"
    scaled = op.Mul(x, op.const(s.reshape(shape).astype(dtype), f"{name}_scale"))
    return op.Add(scaled, op.const(t.reshape(shape).astype(dtype), f"{name}_shift"))


BN_RULES = RuleSet(
    [bn_after_linear, bn_before_linear, mul_after_bn, add_after_bn, bn_after_mul, bn_after_add],
    name="fuse-bn",
)
"""The rules that fold a BN into a neighbour (round one of ``fuse-bn``)."""

BN_STANDALONE_RULES = RuleSet([bn_standalone], name="fuse-bn-standalone")
"""Round two: what is left becomes Mul + Add."""


@register_pass
@dataclass(frozen=True)
class FuseBatchNorm(RulesPass):
    """Folds inference BatchNormalization into neighbouring Conv/Gemm/MatMul/Mul/Add, else into Mul + Add."""

    name: ClassVar[str] = "fuse-bn"
    rules: ClassVar[RuleSet] = BN_RULES

    standalone: Literal["mul-add", "keep"] = field(
        default="mul-add", metadata={"doc": "a BN nothing absorbs: mul-add (per-channel Mul + Add) or keep"}
    )

    def run(self, graph, ctx) -> bool:
        changed = super().run(graph, ctx)
        if self.standalone == "mul-add":
            changed = BN_STANDALONE_RULES.apply(
                graph, ctx, pass_name=self.name, max_rewrites_per_node=self.max_rewrites_per_node
            ) > 0 or changed
        return changed


__all__ = ["BN_RULES", "BN_STANDALONE_RULES", "FuseBatchNorm"]
