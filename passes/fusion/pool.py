"""``fuse-global-pool``: a global pool and the Flatten/Reshape after it become one Reduce op.

    pool(x [N, C, d1..dk]) -> Flatten(axis=1) | Reshape(-> [N, C])
    ->  ReduceMean|ReduceMax(x, axes=[2..k+1], keepdims=0)

``pool`` is one that reduces every spatial axis and keeps them as 1s: GlobalAveragePool /
GlobalMaxPool, an AveragePool / MaxPool whose kernel is the whole unpadded input (the
ONNX model zoo's ResNet), or ReduceMean / ReduceMax with keepdims over axes 2.. (the dynamo
exporter's).  A CNN classifier's head pools to ``[N, C, 1, 1]`` and flattens to ``[N, C]``
for its Gemm; one reduction without kept dims gives ``[N, C]`` directly.  Exact: the same
mean (or max) over the same elements.  The pool's output must feed only the Flatten/Reshape,
and the result must be ``[N, C]`` on the inferred shapes.  In the ``O3`` preset: fewer nodes,
the same work.
"""

from __future__ import annotations

import numpy as np
from kiln.ir.core import Node, Value
from kiln.passes.fusion._match import onnx_opset, reduce_axes
from kiln.passmanager.registry import register_pass
from kiln.rewrite import P, RuleSet, rule

_REDUCE = {"GlobalAveragePool": "ReduceMean", "GlobalMaxPool": "ReduceMax", "AveragePool": "ReduceMean",
           "MaxPool": "ReduceMax", "ReduceMean": "ReduceMean", "ReduceMax": "ReduceMax"}


def _whole_input(pool: Node, x: Value) -> bool | str:
    """Whether ``pool`` reduces every spatial axis of ``x`` (and nothing else), keeping them as 1s."""
    rank = len(x.shape)  # type: ignore[arg-type]
    if pool.op in ("ReduceMean", "ReduceMax"):
        return reduce_axes(pool) == list(range(2, rank)) or "the reduction is not over every spatial axis"
    if pool.op in ("AveragePool", "MaxPool"):
        if len(pool.outputs) > 1 and pool.outputs[1].uses:
            return "the MaxPool's indices are read"
        kernel = [int(k) for k in (pool.attr("kernel_shape") or [])]
        pads = [int(p) for p in (pool.attr("pads") or [0] * (2 * (rank - 2)))]
        dilations = [int(d) for d in (pool.attr("dilations") or [1] * (rank - 2))]
        if kernel != list(x.shape[2:]) or any(pads) or any(d != 1 for d in dilations):  # type: ignore[index]
            return "the pool's kernel is not the whole unpadded input"
        if (pool.attr("auto_pad", "NOTSET") or "NOTSET") not in ("NOTSET", "VALID"):
            return "the pool pads"
    return True


@rule("global-pool-flatten-to-reduce")
def pool_flatten(op, x):
    """Flatten|Reshape(global pool(x)) -> ReduceMean|ReduceMax(x, keepdims=0)."""
    pooled = op.op(set(_REDUCE), x, P.variadic("pool_args"), _node="pool", _outputs=["pooled"], _one_use=True)
    return op.op({"Flatten", "Reshape"}, pooled, P.variadic("rest"), _node="flat", _outputs=["y"])


@pool_flatten.check
def _(ctx, x: Value, pool: Node, flat: Node, y: Value) -> bool | str:
    xs, ys = x.shape, y.shape
    if xs is None or ys is None or len(xs) < 3:
        return "the pooled input's shape is unknown or has no spatial axes"
    if flat.op == "Flatten" and int(flat.attr("axis", 1)) != 1:
        return "the Flatten does not keep [N, C]"
    if len(ys) != 2 or ys[0] != xs[0] or ys[1] != xs[1] or not isinstance(xs[1], int):
        return f"the result {list(ys)} is not the [N, C] of the input {list(xs)}"
    if flat.op == "Reshape" and int(flat.attr("allowzero", 0)) and 0 in xs:
        return "a Reshape with allowzero over an empty tensor"
    return _whole_input(pool, x)


@pool_flatten.replace
def _(op, x: Value, pool: Node) -> Value:
    axes = list(range(2, len(x.shape)))  # type: ignore[arg-type]
    reduce = _REDUCE[pool.op]
    if onnx_opset(op.graph) >= 18:
        return op.op(reduce, x, op.const(np.array(axes, dtype=np.int64), "axes"), keepdims=0)
    return op.op(reduce, x, axes=axes, keepdims=0)


POOL_RULES = RuleSet([pool_flatten], name="fuse-global-pool")

FuseGlobalPool = register_pass(
    POOL_RULES.as_pass(
        "fuse-global-pool", "A global pool + Flatten/Reshape to [N, C] -> ReduceMean/ReduceMax without kept dims (O3)."
    )
)

__all__ = ["POOL_RULES", "FuseGlobalPool"]
