"""``lift-1d``: 1-D convolutions and pools as 2-D ones over a height of 1, for targets with only 2-D kernels.

TFLite has CONV_2D, DEPTHWISE_CONV_2D, TRANSPOSE_CONV and 2-D pools but no 1-D
forms (its own converter lifts them the same way).  Over ``x[N, C, W]``:

    y = Reshape(Op2d(Reshape(x, [N, C, 1, W]), W4), [N, C', W'])

where ``Op2d`` is the op with every spatial attribute given a leading entry
for the new height axis (kernel 1, stride 1, dilation 1, pads 0,
output_padding 0) and ``W4`` the weight ``[O, I, K]`` reshaped to
``[O, I, 1, K]``.  Exact: a height-1 window over a height-1 input computes the
1-D op.  ``auto_pad`` SAME_* stays as it is (a height-1 kernel needs no
padding).  Fused ``kiln.ConvAct``/``kiln.ConvTransposeAct`` keep their
activation.  Shapes must be static (the targets that need this pass require
it).  Chains of lifted ops leave ``Reshape -> Reshape`` pairs between them,
which ``remove-noops`` cancels when the shapes agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from kiln.ir.core import Graph, Node, Value
from kiln.ops.builder import OpBuilder
from kiln.passmanager.base import Pass, PassContext
from kiln.passmanager.registry import register_pass

LIFTED = {
    ("", "Conv"), ("kiln", "ConvAct"), ("", "ConvTranspose"), ("kiln", "ConvTransposeAct"),
    ("", "MaxPool"), ("", "AveragePool"), ("", "LpPool"),
}
_WEIGHTED = {"Conv", "ConvAct", "ConvTranspose", "ConvTransposeAct"}
# attribute -> what the new height axis gets (pads: one begin and one end).
_SPATIAL = {"kernel_shape": 1, "strides": 1, "dilations": 1, "output_padding": 0}


def _static(shape: tuple | None) -> tuple[int, ...] | None:
    if shape is None or not all(isinstance(d, int) and d > 0 for d in shape):
        return None
    return tuple(int(d) for d in shape)


def _lifted_attrs(node: Node) -> dict[str, Any]:
    attrs: dict[str, Any] = {name: attr.plain() for name, attr in node.attrs.items()}
    for name, fill in _SPATIAL.items():
        if name in attrs:
            attrs[name] = [fill, *attrs[name]]
    if "pads" in attrs:
        begin, end = attrs["pads"]
        attrs["pads"] = [0, begin, 0, end]
    if "output_shape" in attrs:
        attrs["output_shape"] = [1, *attrs["output_shape"]]
    return attrs


def _as_2d(weight: np.ndarray) -> np.ndarray:
    return weight.reshape(weight.shape[0], weight.shape[1], 1, weight.shape[2])


def _lifted_weight(graph: Graph, b: OpBuilder, w: Value | None) -> Value | None:
    """The ``[O, I, 1, K]`` form of a constant 1-D weight, or of ``DequantizeLinear(int8 constant)`` as the
    quantize pass leaves it (the per-channel axis, 0 or 1, is unchanged); ``None`` for anything else."""
    if w is None:
        return None
    if w.const is not None:
        weight = w.numpy()
        return graph.add_constant(f"{w.name}_2d", _as_2d(weight)) if weight.ndim == 3 else None
    dq = w.producer
    if dq is None or dq.op != "DequantizeLinear" or dq.input(0) is None or dq.input(0).const is None:
        return None
    q = dq.input(0).numpy()
    if q.ndim != 3:
        return None
    attrs = {name: attr.plain() for name, attr in dq.attrs.items()}
    return b.DequantizeLinear(graph.add_constant(f"{dq.input(0).name}_2d", _as_2d(q)), *dq.inputs[1:], **attrs)


def lift(graph: Graph, node: Node) -> bool:
    """Rewrites one 1-D ``node`` as its 2-D form; ``False`` (and nothing done) when it is not a static 1-D op."""
    x, y = node.input(0), node.outputs[0]
    in_shape, out_shape = _static(x.shape if x is not None else None), _static(y.shape)
    if x is None or in_shape is None or out_shape is None or len(in_shape) != 3 or len(out_shape) != 3:
        return False
    if any(out.uses or graph.is_output(out) for out in node.outputs[1:]):
        return False  # MaxPool's Indices are positions in the 1-D input: they would change meaning
    inputs = list(node.inputs)
    b = OpBuilder(graph, before=node, loc=node.loc)
    if node.op in _WEIGHTED:
        lifted_weight = _lifted_weight(graph, b, node.input(1))
        if lifted_weight is None:
            return False
        inputs[1] = lifted_weight
    if node.op in ("ConvAct", "ConvTransposeAct") and len(inputs) > 3 and inputs[3] is not None:
        # A PRelu slope broadcasts from the right: [C, 1] over [N, C, W] must become [C, 1, 1] over [N, C, 1, W].
        slope = inputs[3]
        if slope.const is None:
            return False
        data = slope.numpy()
        if data.ndim >= 2:
            inputs[3] = graph.add_constant(f"{slope.name}_2d", data.reshape(*data.shape[:-1], 1, data.shape[-1]))
    n, c, width = in_shape
    inputs[0] = b.Reshape(x, b.const(np.array([n, c, 1, width], dtype=np.int64), "lift_shape"))
    lifted = b.op(node.op, *inputs, _domain=node.domain, _name=node.name, **_lifted_attrs(node))
    flat = b.Reshape(lifted, b.const(np.array(out_shape, dtype=np.int64), "unlift_shape"))
    y.replace_all_uses_with(flat)
    graph.remove_node(node)
    return True


@register_pass
@dataclass(frozen=True)
class Lift1d(Pass):
    """1-D Conv/ConvTranspose/pools as 2-D ones over a height of 1 (for targets without 1-D kernels)."""

    name: ClassVar[str] = "lift-1d"

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        count = sum(lift(graph, node) for node in list(graph) if (node.domain, node.op) in LIFTED)
        ctx.bump("lift-1d.lifted", count)
        return count > 0
