"""``fuse-sibling-matmul``: sibling MatMul/Gemm with constant weights on one input merged (Q/K/V projections).

    MatMul(x, W₁), .., MatMul(x, Wₙ)  ->  Split(MatMul(x, [W₁ W₂ .. Wₙ]), axis=-1)
    Gemm(x, W₁, C₁), .., Gemm(x, Wₙ, Cₙ)  ->  Split(Gemm(x, [W₁ .. Wₙ], [C₁ .. Cₙ]), axis=1)

``Wᵢ`` are 2-D constants ``[K, Nᵢ]`` (Gemm: ``[Nᵢ, K]`` with ``transB``, transposed first when the
siblings disagree); Gemm siblings share ``alpha``, ``beta``, ``transA`` and have per-column
constant ``Cᵢ`` (or none: zeros).  Column ``j`` of the wide product is column ``j`` of the
product it came from, the same sum of products: exact in real arithmetic (a BLAS may block a
wider product differently: onnxruntime's results moved by 2e-6 on 768-wide projections).  The
per-projection bias Adds that follow a MatMul then move above the Split as one Add
(``hoist-affine-above-split``, run here too), and ``fuse-bias`` turns a 2-D ``MatMul + Add``
into a Gemm.

``n`` products become 2 nodes, plus whatever the hoists save.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from kiln.ir.core import Node, Value
from kiln.passes.fusion._affine import FLOAT_DTYPES, const_array, per_channel
from kiln.passes.fusion._match import make_split
from kiln.passes.fusion.concat_split import HOIST_RULES
from kiln.passmanager.registry import register_pass
from kiln.rewrite import RewritePattern, Rewriter, RuleSet, RulesPass, attrs_of


def _weight_kn(node: Node) -> np.ndarray | None:
    """The constant weight as ``[K, N]``, or ``None``."""
    w = const_array(node.input(1))
    if w is None or w.ndim != 2 or node.inputs[1].dtype not in FLOAT_DTYPES:  # type: ignore[union-attr]
        return None
    return w.T if node.op == "Gemm" and int(node.attr("transB", 0)) else w


def _key(node: Node) -> tuple | None:
    """What sibling products must share to merge, or ``None``."""
    if node.domain != "" or node.op not in ("MatMul", "Gemm") or len(node.outputs) != 1:
        return None
    w = _weight_kn(node)
    x = node.input(0)
    if w is None or x is None or x.shape is None:
        return None
    if node.op == "MatMul":
        return ("MatMul", node.inputs[1].dtype, w.shape[0])  # type: ignore[union-attr]
    c = node.input(2)
    if c is not None and (const_array(c) is None or per_channel(const_array(c), 2, 1, w.shape[1]) is None):  # type: ignore[arg-type]
        return None
    return ("Gemm", node.inputs[1].dtype, w.shape[0], float(node.attr("alpha", 1.0)), float(node.attr("beta", 1.0)),
            int(node.attr("transA", 0)))  # type: ignore[union-attr]


def siblings(node: Node) -> list[Node]:
    key = _key(node)
    x = node.input(0)
    if key is None or x is None:
        return []
    return [u for u in x.users() if u.graph is node.graph and u.input(0) is x and u.input(1) is not x and _key(u) == key]


class MergeSiblingProducts(RewritePattern):
    """Sibling MatMul/Gemm with constant weights -> one wide product + Split."""

    name = "merge-sibling-matmuls"
    roots = ("MatMul", "Gemm")

    def __init__(self, min_siblings: int = 2) -> None:
        self.min_siblings = min_siblings

    def match_and_rewrite(self, node: Node, rewriter: Rewriter) -> bool:
        group = siblings(node)
        if len(group) < max(2, self.min_siblings):
            return rewriter.refuse(f"{len(group)} mergeable sibling products (at least {max(2, self.min_siblings)} wanted)")
        graph = node.graph
        assert graph is not None
        position = graph.position()
        group.sort(key=lambda n: position[n])
        weights = [_weight_kn(n) for n in group]
        sizes = [int(w.shape[1]) for w in weights]  # type: ignore[union-attr]
        dtype = weights[0].dtype  # type: ignore[union-attr]
        op = rewriter.builder(graph, before=group[0], fused_from=group)
        first = group[0]
        x = first.inputs[0]
        assert x is not None
        all_trans = first.op == "Gemm" and all(int(n.attr("transB", 0)) for n in group)
        wide: np.ndarray = np.concatenate(weights, axis=1)  # type: ignore[arg-type]
        w = op.const(np.ascontiguousarray(wide.T if all_trans else wide), f"{first.inputs[1].name}_merged")  # type: ignore[union-attr]
        if first.op == "MatMul":
            y = op.MatMul(x, w)
        else:
            inputs: list[Value | None] = [x, w]
            if any(n.input(2) is not None for n in group):
                cols = []
                for n, size in zip(group, sizes):
                    c = const_array(n.input(2))
                    cols.append(np.zeros(size, dtype) if c is None else per_channel(c, 2, 1, size).astype(dtype))  # type: ignore[union-attr]
                inputs.append(op.const(np.concatenate(cols), "bias_merged"))
            attrs = attrs_of(first, drop=("transB",))
            y = op.Gemm(*inputs, transB=1 if all_trans else 0, **attrs)
        outs = make_split(op, y, sizes, -1 if first.op == "MatMul" else 1)
        for n, out in zip(group, outs):
            rewriter.replace_value(n.outputs[0], out)
        rewriter.erase_dead(group)
        return True


@register_pass
@dataclass(frozen=True)
class FuseSiblingMatMul(RulesPass):
    """Merges sibling MatMul/Gemm with constant weights on one input (Q/K/V) into one product + Split."""

    name: ClassVar[str] = "fuse-sibling-matmul"

    min_siblings: int = field(default=2, metadata={"doc": "merge groups of at least this many products"})

    def rule_set(self) -> RuleSet:
        return RuleSet([MergeSiblingProducts(self.min_siblings), HOIST_RULES], name=self.name)


__all__ = ["FuseSiblingMatMul", "MergeSiblingProducts", "siblings"]
