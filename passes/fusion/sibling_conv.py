"""``fuse-sibling-conv``: sibling Convs that read the same input merged into one wider Conv plus a Split.

    Conv(x, W₁, B₁), .., Conv(x, Wₙ, Bₙ)  ->  Split(Conv(x, [W₁; ..; Wₙ], [B₁; ..; Bₙ]), axis=1)

for Convs with constant weights (and biases, a missing one being zeros), ``group = 1``, and the
same kernel, strides, pads, dilations and ``auto_pad``: output channel ``j`` of the wide Conv is
output channel ``j`` of the Conv whose block it falls in, computed by the same sum of products,
so the result is exact in real arithmetic (a runtime may sum in another order for the wider
Conv: last-bit differences).  The Split's pieces then meet what each Conv fed: the hoists of
``fuse-concat-split`` (run here too) move an activation or bias that follows every piece above
the Split, and a Concat of the pieces in order cancels it.

``n`` Convs become 2 nodes, so with ``min-siblings=3`` (or with what the hoists then save) the
graph gets smaller; whether the wide Conv runs faster depends on the runtime (one bigger
GEMM against a copy for the Split): see ``kiln.passmanager.presets`` for the measurements.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from kiln.ir.core import Node, Value
from kiln.passes.fusion._affine import FLOAT_DTYPES, const_array
from kiln.passes.fusion._match import make_split
from kiln.passes.fusion.concat_split import HOIST_RULES
from kiln.passmanager.registry import register_pass
from kiln.rewrite import RewritePattern, Rewriter, RuleSet, RulesPass, attrs_of

_KEY_ATTRS = ("auto_pad", "dilations", "kernel_shape", "pads", "strides")


def _conv_key(conv: Node) -> tuple | None:
    """What two Convs must share to merge, or ``None`` when this one cannot."""
    if conv.domain != "" or conv.op != "Conv" or int(conv.attr("group", 1)) != 1 or len(conv.outputs) != 1:
        return None
    w = conv.input(1)
    data = const_array(w)
    if data is None or w.dtype not in FLOAT_DTYPES:  # type: ignore[union-attr]
        return None
    b = conv.input(2)
    if b is not None and const_array(b) is None:
        return None
    kernel = tuple(data.shape[2:])
    attrs = []
    for name in _KEY_ATTRS:
        value = conv.attr(name)
        if name == "kernel_shape" and value is None:
            value = list(kernel)
        if name == "auto_pad":
            value = value or "NOTSET"
        if name in ("dilations", "strides") and value is None:
            value = [1] * len(kernel)
        if name == "pads" and value is None:
            value = [0] * (2 * len(kernel))
        attrs.append((name, tuple(value) if isinstance(value, list) else value))
    return (w.dtype, data.shape[1:], tuple(attrs))  # type: ignore[union-attr]


def siblings(conv: Node) -> list[Node]:
    """The Convs that read ``conv``'s input and can merge with it (``conv`` included), in use order."""
    key = _conv_key(conv)
    x = conv.inputs[0]
    if key is None or x is None:
        return []
    return [
        u for u in x.users()
        if u.graph is conv.graph and u.input(0) is x and u.input(1) is not x and _conv_key(u) == key
    ]


class MergeSiblingConvs(RewritePattern):
    """Sibling Convs with one configuration -> one Conv + Split along the channels."""

    name = "merge-sibling-convs"
    roots = ("Conv",)

    def __init__(self, min_siblings: int = 2) -> None:
        self.min_siblings = min_siblings

    def match_and_rewrite(self, node: Node, rewriter: Rewriter) -> bool:
        group = siblings(node)
        if len(group) < max(2, self.min_siblings):
            return rewriter.refuse(f"{len(group)} mergeable sibling Convs (at least {max(2, self.min_siblings)} wanted)")
        graph = node.graph
        assert graph is not None
        position = graph.position()
        group.sort(key=lambda n: position[n])
        weights = [const_array(c.inputs[1]) for c in group]
        sizes = [int(w.shape[0]) for w in weights]  # type: ignore[union-attr]
        dtype = weights[0].dtype  # type: ignore[union-attr]
        biases = []
        for c, n in zip(group, sizes):
            b = const_array(c.input(2))
            biases.append(np.zeros(n, dtype) if b is None else b.reshape(-1).astype(dtype))
        has_bias = any(c.input(2) is not None for c in group)
        op = rewriter.builder(graph, before=group[0], fused_from=group)
        w = op.const(np.concatenate(weights, axis=0), f"{group[0].inputs[1].name}_merged")  # type: ignore[union-attr, arg-type]
        inputs: list[Value | None] = [group[0].inputs[0], w]
        if has_bias:
            inputs.append(op.const(np.concatenate(biases), "bias_merged"))
        wide = op.Conv(*inputs, **attrs_of(group[0]))
        outs = make_split(op, wide, sizes, 1)
        for conv, out in zip(group, outs):
            rewriter.replace_value(conv.outputs[0], out)
        rewriter.erase_dead(group)
        return True


@register_pass
@dataclass(frozen=True)
class FuseSiblingConv(RulesPass):
    """Merges sibling Convs that read the same input (same kernel/stride/pad, group 1) into one Conv + Split."""

    name: ClassVar[str] = "fuse-sibling-conv"

    min_siblings: int = field(default=2, metadata={"doc": "merge groups of at least this many Convs"})

    def rule_set(self) -> RuleSet:
        return RuleSet([MergeSiblingConvs(self.min_siblings), HOIST_RULES], name=self.name)


__all__ = ["FuseSiblingConv", "MergeSiblingConvs", "siblings"]
