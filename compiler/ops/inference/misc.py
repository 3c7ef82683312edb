"""Inference of control flow (If, Loop, Scan) from the types of their subgraphs' outputs.

The subgraphs are inferred first (``infer_graph`` walks them before their
owner); these functions only read the resulting output types.
"""

from __future__ import annotations

from kiln.ir.types import OptionalType, SequenceType, TensorType, Type
from kiln.ops.inference import infers
from kiln.ops.inference._context import InferContext
from kiln.ops.inference._util import fail, norm_axis


def join_types(a: Type | None, b: Type | None) -> Type | None:
    """The most precise type true of both ``a`` and ``b`` (a value that may be either)."""
    if a == b:
        return a
    if a is None or b is None:
        return None
    if a.__class__ is TensorType and b.__class__ is TensorType:
        if a.dtype != b.dtype:
            return None
        if a.shape is None or b.shape is None or len(a.shape) != len(b.shape):
            return TensorType(a.dtype, None)
        return TensorType(a.dtype, tuple(x if x == y else None for x, y in zip(a.shape, b.shape)))
    if a.__class__ is b.__class__ and isinstance(a, (SequenceType, OptionalType)):
        return type(a)(join_types(a.elem, b.elem))
    return None


def _graph_attr(ctx: InferContext, name: str):
    a = ctx.node.attrs.get(name)
    return None if a is None else a.value


@infers("If")
def infer_if(ctx: InferContext) -> list:
    then_g, else_g = _graph_attr(ctx, "then_branch"), _graph_attr(ctx, "else_branch")
    n = ctx.num_outputs
    if then_g is None or else_g is None:
        return [None] * n
    if len(then_g.outputs) != n or len(else_g.outputs) != n:
        raise fail(
            ctx, f"branches have {len(then_g.outputs)} and {len(else_g.outputs)} outputs, node has {n}"
        )
    return [join_types(t.type, e.type) for t, e in zip(then_g.outputs, else_g.outputs)]


@infers("Loop")
def infer_loop(ctx: InferContext) -> list:
    body = _graph_attr(ctx, "body")
    n = ctx.num_outputs
    if body is None:
        return [None] * n
    carried = ctx.num_inputs - 2
    outs: list = []
    for i in range(n):
        if i < carried:
            # A carried value may change shape between iterations: keep what the
            # initial value and the body's output agree on.
            body_t = body.outputs[1 + i].type if 1 + i < len(body.outputs) else None
            outs.append(join_types(ctx.type(2 + i), body_t))
        else:
            k = 1 + i
            t = body.outputs[k].type if k < len(body.outputs) else None
            if t.__class__ is TensorType:
                outs.append(TensorType(t.dtype, None if t.shape is None else (None,) + t.shape))
            else:
                outs.append(None)
    return outs


@infers("Scan")
def infer_scan(ctx: InferContext) -> list:
    body = _graph_attr(ctx, "body")
    n = ctx.num_outputs
    if body is None or ctx.version < 9:
        return [None] * n
    m = ctx.attr("num_scan_inputs")
    states = ctx.num_inputs - m
    in_axes = ctx.attr("scan_input_axes") or [0] * m
    out_axes = ctx.attr("scan_output_axes") or [0] * (n - states)
    length = None
    s = ctx.shape(states) if m else None
    if s is not None:
        length = s[norm_axis(ctx, in_axes[0], len(s))]
    outs: list = []
    for i in range(n):
        t = body.outputs[i].type if i < len(body.outputs) else None
        if i < states:
            outs.append(join_types(ctx.type(i), t))
        elif t.__class__ is TensorType:
            if t.shape is None:
                outs.append(TensorType(t.dtype, None))
            else:
                r = len(t.shape) + 1
                a = norm_axis(ctx, out_axes[i - states], r)
                outs.append(TensorType(t.dtype, t.shape[:a] + (length,) + t.shape[a:]))
        else:
            outs.append(None)
    return outs
