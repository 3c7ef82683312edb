"""Channels-last (NHWC) forms of the layout-sensitive ops, made by the ``to-nhwc`` pass.

``kiln.Nhwc<Op>(X, ...)`` is ``Transpose(<Op>(Transpose(X, [0, 3, 1, 2]), ...), [0, 2, 3, 1])``:
the same op with the same attributes and the same other inputs (weights stay in
their ONNX layout, OIHW for a Conv), reading and writing its first input and
output channels-last.  Only 4-D (2-D spatial) inputs take this form.

``<Op>`` is one of :data:`NHWC_OPS`: ONNX ``Conv``, ``ConvTranspose``,
``MaxPool``, ``AveragePool``, ``GlobalAveragePool``, ``GlobalMaxPool``,
``LpPool``, ``Resize``, ``Upsample``, ``LRN``, ``BatchNormalization``,
``InstanceNormalization``, ``DepthToSpace``, ``SpaceToDepth`` and kiln's
``ConvAct`` and ``ChannelShuffle``.  The decomposition is the definition above,
so ``kiln.to_onnx`` of a channels-last graph still runs on onnxruntime and the
layout pass is tested differentially like any other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kiln.ir.core import KILN_DOMAIN, Node, Value
from kiln.ir.types import TensorType
from kiln.ops.registry import AttrSpec, OpSchema, kiln_op, lookup, newest_onnx_opset

if TYPE_CHECKING:
    from kiln.ir.types import Type
    from kiln.ops.builder import OpBuilder
    from kiln.ops.inference import InferContext

TO_NCHW = (0, 3, 1, 2)
TO_NHWC = (0, 2, 3, 1)

NHWC_OPS: dict[str, str] = {
    "Conv": "",
    "ConvTranspose": "",
    "MaxPool": "",
    "AveragePool": "",
    "GlobalAveragePool": "",
    "GlobalMaxPool": "",
    "LpPool": "",
    "Resize": "",
    "Upsample": "",
    "LRN": "",
    "BatchNormalization": "",
    "InstanceNormalization": "",
    "DepthToSpace": "",
    "SpaceToDepth": "",
    "ConvAct": KILN_DOMAIN,
    "ChannelShuffle": KILN_DOMAIN,
}
"""Op -> its domain, for every op that has a ``kiln.Nhwc<Op>`` form."""


def nhwc_name(op: str) -> str:
    return "Nhwc" + op


def inner_op(node: Node) -> tuple[str, str]:
    """``(op, domain)`` of the channels-first op a ``kiln.Nhwc<Op>`` node stands for."""
    op = node.op.removeprefix("Nhwc")
    return op, NHWC_OPS[op]


def is_nhwc_op(node: Node) -> bool:
    return node.domain == KILN_DOMAIN and node.op.startswith("Nhwc") and node.op[4:] in NHWC_OPS


def _permuted(t: Type | None, perm: tuple[int, ...]) -> Type | None:
    if not isinstance(t, TensorType) or t.shape is None or len(t.shape) != len(perm):
        return t if not isinstance(t, TensorType) or t.shape is None else TensorType(t.dtype, None)
    return TensorType(t.dtype, tuple(t.shape[p] for p in perm))


def _infer(ctx: InferContext) -> list[Type | None]:
    """The channels-first op's inference on the input seen channels-first, its output seen channels-last."""
    from kiln.ops.inference import infer_node

    node = ctx.node
    types = list(ctx.input_types)
    if types:
        types[0] = _permuted(types[0], TO_NCHW)
    op, domain = inner_op(node)
    saved = (node.op, node.domain, node.version)
    # The channels-first op's inference reads the node's attributes and constant
    # inputs; it runs on this very node, seen for the moment as that op.
    node.op, node.domain = op, domain
    node.version = node.graph.root.opsets.get(domain) if node.graph is not None and domain == "" else None
    try:
        out = infer_node(node, types)
    finally:
        node.op, node.domain, node.version = saved
    return [_permuted(t, TO_NHWC) if i == 0 else t for i, t in enumerate(out)]


def _decompose(b: OpBuilder, node: Node) -> list[Value]:
    op, domain = inner_op(node)
    x = node.inputs[0]
    assert x is not None
    rest = list(node.inputs[1:])
    y = b.op(op, b.Transpose(x, perm=list(TO_NCHW)), *rest, _domain=domain, **dict(node.attrs))
    return [b.Transpose(y, perm=list(TO_NHWC))]


def _all_versions(op: str, domain: str) -> list[OpSchema]:
    """The op's schemas over every opset (attributes come and go: BatchNormalization's ``spatial``)."""
    if domain == KILN_DOMAIN:
        schema = lookup(domain, op, None)
        return [schema] if schema is not None else []
    found: dict[int, OpSchema] = {}
    for version in range(1, newest_onnx_opset() + 1):
        schema = lookup(domain, op, version)
        if schema is not None:
            found.setdefault(schema.since_version, schema)
    return [found[v] for v in sorted(found)]


def _register() -> None:
    for op, domain in NHWC_OPS.items():
        schemas = _all_versions(op, domain)
        assert schemas, op
        attrs: dict[str, AttrSpec] = {}
        for schema in schemas:
            for name, spec in schema.attrs.items():
                attrs[name] = AttrSpec(name, spec.kind, False, spec.default)
        kiln_op(
            nhwc_name(op),
            inputs=(min(s.min_inputs for s in schemas), max(s.max_inputs for s in schemas)),
            attrs=attrs,
            decompose=_decompose,
            infer=_infer,
            doc=f"{domain or 'onnx'}.{op} on a channels-last (NHWC) input and output",
        )


_register()
