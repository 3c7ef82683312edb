"""``raise-attention``: scaled dot-product attention raised to ``Attention`` (opset >= 23) or ``kiln.Attention``.

The core, rooted at the last MatMul::

    s = (a·Q) @ (b·Kᵀ) · c  [+ mask]        scalar scales anywhere (Mul or Div by a constant)
    y = Softmax(s, axis=-1) @ V             ->  Attention(Q, K, V, [mask], scale=a·b·c)

with ``Q [B, H, S, D]``, ``V [B, H, L, Dv]`` and ``Kᵀ [B, H, D, L]`` the last two axes of
``K [B, H, L, D]`` swapped (a Transpose, or the Reshape -> 3-D Transpose -> Reshape that the
dynamo exporter writes).  The additive mask must broadcast into the scores without widening
them; it is added after the scale, as in ONNX Attention.

The head split and merge join the op when all of them are there (the 3-D form, ``q_num_heads``
= ``kv_num_heads`` = H):

- ``Q = Transpose(Reshape(q [B, S, H·D] -> [B, S, H, D]), [0, 2, 1, 3])`` (K likewise, or with
  perm ``[0, 2, 3, 1]`` giving ``Kᵀ`` directly; V likewise);
- a packed projection: ``Transpose(Reshape(qkv [B, S, n·H·D] -> [B, S, n, H, D]), [2, 0, 3, 1, 4])``
  taken apart along axis 0 (Split + Squeeze, Slice + Squeeze, or Gather): the pieces become one
  ``Split(qkv, axis=-1)`` into ``n`` parts of ``H·D``;
- ``Reshape(Transpose(y, [0, 2, 1, 3]) -> [B, S, H·Dv])`` after the root.

Otherwise the 4-D form replaces the core alone (a Transpose is added for ``K`` when only ``Kᵀ``
exists).  The reshapes are checked on the inferred shapes: they must split (merge) only the last
axis, with static head counts and sizes.  The scores, Softmax and scale nodes must be read only
inside the pattern; pieces of the head split that other nodes read stay.  The result equals the
pattern up to the rounding of the folded scale.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from kiln.ir.core import Node, Value
from kiln.passes.fusion._affine import fits_into
from kiln.passes.fusion._match import (
    escaping,
    ints_of,
    is_float,
    make_split,
    merges_last_axes,
    one_use,
    product_of,
    replace_and_erase,
    slice_params,
    split_sizes,
    splits_last_axis,
    squeeze_axes,
)
from kiln.passes.fusion._raise import RaisePass, raise_to
from kiln.passmanager.registry import register_pass
from kiln.rewrite import RewritePattern, Rewriter, RuleSet


def _op(value: Value | None, *ops: str) -> Node | None:
    node = value.producer if value is not None else None
    return node if node is not None and node.domain == "" and node.op in ops else None


def _perm(node: Node | None) -> list[int] | None:
    if node is None:
        return None
    perm = node.attr("perm")
    return [int(p) for p in perm] if perm is not None else None


@dataclass
class Heads:
    """A ``[B, H, S, D]`` operand seen as the head split of a 3-D tensor.

    Attributes:
        source: the 3-D ``[B, S, n·H·D]`` tensor (n = 1 unless packed).
        heads: H.
        index, parts: which of the ``n`` packed pieces (0 of 1 when not packed).
        nodes: the split's nodes.
    """

    source: Value
    heads: int
    index: int = 0
    parts: int = 1
    nodes: list[Node] = field(default_factory=list)


def _piece_index(node: Node, t: Value) -> tuple[int, list[Node]] | None:
    """``node`` takes piece ``i`` of ``t`` along axis 0 and drops that axis: ``(i, nodes)``."""
    if node.op == "Gather" and node.inputs[0] is t and int(node.attr("axis", 0)) == 0:
        idx = ints_of(node.input(1))
        if idx is None or len(idx) != 1 or node.input(1).shape != ():  # type: ignore[union-attr]
            return None
        i = idx[0]
        if i < 0 and t.shape is not None and isinstance(t.shape[0], int):
            i += t.shape[0]
        return (i, [node]) if i >= 0 else None
    if node.op != "Squeeze" or squeeze_axes(node) != [0]:
        return None
    inner = node.inputs[0]
    taker = inner.producer if inner is not None else None
    if taker is None or taker.inputs[0] is not t:
        return None
    if taker.op == "Split" and int(taker.attr("axis", 0)) == 0:
        sizes = split_sizes(taker)
        if sizes is None or any(s != 1 for s in sizes):
            return None
        return inner.output_index, [node, taker]  # type: ignore[union-attr]
    if taker.op == "Slice":
        params = slice_params(taker)
        if params is None or params.axes != [0] or params.steps != [1] or params.ends[0] != params.starts[0] + 1:
            return None
        if params.starts[0] < 0:
            return None
        return params.starts[0], [node, taker]
    return None


def split_heads(value: Value, perm: list[int]) -> Heads | None:
    """``value`` as ``Transpose(Reshape(x -> [B, S, H, D]), perm)`` or a piece of a packed projection."""
    t = _op(value, "Transpose")
    if t is not None and _perm(t) == perm:
        r = _op(t.inputs[0], "Reshape")
        if r is None:
            return None
        dims = splits_last_axis(r.inputs[0], r.outputs[0], 2)
        if dims is None:
            return None
        return Heads(r.inputs[0], dims[0], nodes=[t, r])  # type: ignore[arg-type]
    if perm != [0, 2, 1, 3]:
        return None
    taker = value.producer
    if taker is None or taker.domain != "" or taker.op not in ("Squeeze", "Gather"):
        return None
    packed = taker.inputs[0]
    if taker.op == "Squeeze":
        inner = packed.producer if packed is not None else None
        packed = inner.inputs[0] if inner is not None else None
    t = _op(packed, "Transpose")
    if t is None or _perm(t) != [2, 0, 3, 1, 4]:
        return None
    r = _op(t.inputs[0], "Reshape")
    if r is None:
        return None
    dims = splits_last_axis(r.inputs[0], r.outputs[0], 3)
    found = _piece_index(taker, t.outputs[0])
    if dims is None or found is None or not 0 <= found[0] < dims[0]:
        return None
    return Heads(r.inputs[0], dims[1], found[0], dims[0], [*found[1], t, r])  # type: ignore[arg-type]


def untranspose(kt: Value) -> tuple[Value, list[Node]] | None:
    """``K`` such that ``kt`` is ``K`` with its last two axes swapped, and the nodes that swap them."""
    t = _op(kt, "Transpose")
    if t is not None and _perm(t) == [0, 1, 3, 2]:
        return t.inputs[0], [t]  # type: ignore[return-value]
    r2 = _op(kt, "Reshape")
    t = _op(r2.inputs[0], "Transpose") if r2 is not None else None
    r1 = _op(t.inputs[0], "Reshape") if t is not None else None
    if r2 is None or t is None or r1 is None or _perm(t) != [0, 2, 1]:
        return None
    k = r1.inputs[0]
    ks, r1s, r2s = (k.shape if k is not None else None), r1.outputs[0].shape, r2.outputs[0].shape
    if ks is None or r1s is None or r2s is None or len(ks) != 4 or len(r1s) != 3 or len(r2s) != 4:
        return None
    if not (tuple(r1s[1:]) == tuple(ks[2:]) and tuple(r2s) == (ks[0], ks[1], ks[3], ks[2])):
        return None
    if not all(isinstance(d, int) for d in ks[1:]):
        return None
    return k, [r2, t, r1]  # type: ignore[return-value]


@dataclass
class AttentionMatch:
    q: Value
    k: Value | None  # [B, H, L, D]; None when only Kᵀ exists
    kt: Value
    v: Value
    mask: Value | None
    scale: float
    core: list[Node]
    k_nodes: list[Node]


def _scores(s: Value) -> tuple[Value, Value, Value, float, list[Node]] | None:
    """``s = c · (a·q) @ (b·kt)``: ``(q, kt, mm_out, a·b·c, nodes)``."""
    prod = product_of(s)
    t = prod.only()
    mm = _op(t, "MatMul")
    if mm is None:
        return None
    qp, kp = product_of(mm.inputs[0]), product_of(mm.inputs[1])  # type: ignore[arg-type]
    q, kt = qp.only(), kp.only()
    if q is None or kt is None:
        return None
    return q, kt, t, prod.coef * qp.coef * kp.coef, [*prod.nodes, mm, *qp.nodes, *kp.nodes]  # type: ignore[return-value]


def match_core(root: Node) -> AttentionMatch | str:
    """``Softmax(scale · Q Kᵀ [+ mask]) @ V`` rooted at the MatMul ``root``, or why not."""
    p, v = root.inputs[0], root.inputs[1]
    sm = _op(p, "Softmax")
    if sm is None or v is None:
        return "the MatMul does not read a Softmax"
    s = sm.inputs[0]
    assert s is not None
    rank = len(s.shape) if s.shape is not None else None
    if rank != 4 or int(sm.attr("axis", -1)) % 4 != 3:
        return "the Softmax is not over the last axis of 4-D scores"
    mask = None
    found = None
    add = _op(s, "Add")
    if add is not None:
        for i in (0, 1):
            found = _scores(add.inputs[i])  # type: ignore[arg-type]
            if found is not None:
                mask = add.inputs[1 - i]
                break
    if found is None:
        found = _scores(s)
        add = None
    if found is None:
        return "the Softmax does not read scaled Q @ Kᵀ"
    q, kt, scores, scale, nodes = found
    core = list(dict.fromkeys([root, sm, *([add] if add is not None else []), *nodes]))
    leak = escaping(core, root)
    if leak is not None:
        return f"%{leak.name} is read outside the pattern"
    for x in (q, kt, v):
        if x.shape is None or len(x.shape) != 4 or not is_float(x) or x.dtype != q.dtype:
            return "Q, Kᵀ and V are not 4-D float tensors of one type"
    if mask is not None and (mask.shape is None or scores.shape is None or not fits_into(tuple(mask.shape), scores.shape)):
        return "the mask does not broadcast into the scores"
    if mask is not None and mask.dtype != q.dtype:
        return "the mask's type differs from the scores'"
    k = untranspose(kt)
    if k is not None and any(n.graph is not root.graph for n in k[1]):
        k = None
    return AttentionMatch(q, k[0] if k else None, kt, v, mask, scale, core, k[1] if k else [])


def _merge_heads(root: Node) -> tuple[Value, list[Node]] | None:
    """The Reshape(Transpose(y, [0, 2, 1, 3]) -> [B, S, H·Dv]) after ``root``, and its nodes."""
    y = root.outputs[0]
    if not one_use(y):
        return None
    t = y.uses[0].node
    if t.domain != "" or t.op != "Transpose" or _perm(t) != [0, 2, 1, 3] or not one_use(t.outputs[0]):
        return None
    r = t.outputs[0].uses[0].node
    if r.domain != "" or r.op != "Reshape" or not merges_last_axes(t.outputs[0], r.outputs[0], 2):
        return None
    if t.graph is not root.graph or r.graph is not root.graph:
        return None
    return r.outputs[0], [t, r]


class RaiseAttention(RewritePattern):
    """``Softmax(Q Kᵀ · scale [+ mask]) V`` (with head split/merge) -> one Attention op."""

    name = "raise-attention"
    roots = ("MatMul",)

    def match_and_rewrite(self, node: Node, rewriter: Rewriter) -> bool:
        found = match_core(node)
        if isinstance(found, str):
            return rewriter.refuse(found)
        graph = node.graph
        assert graph is not None
        where = raise_to(self.pass_ctx, graph, "Attention", 23)
        if where not in ("onnx", "kiln"):
            return rewriter.refuse(where)
        qh = split_heads(found.q, [0, 2, 1, 3])
        kh = split_heads(found.k, [0, 2, 1, 3]) if found.k is not None else split_heads(found.kt, [0, 2, 3, 1])
        vh = split_heads(found.v, [0, 2, 1, 3])
        if any(n.graph is not graph for h in (qh, kh, vh) if h is not None for n in h.nodes):
            qh = None  # a head split in an enclosing graph stays there (the 4-D form reads its result)
        merged = _merge_heads(node)
        three_d = (
            qh is not None and kh is not None and vh is not None and merged is not None
            and qh.heads == kh.heads == vh.heads
        )
        domain = "" if where == "onnx" else "kiln"
        attrs: dict[str, object] = {"scale": found.scale}
        matched = [*found.core]
        if three_d:
            assert qh is not None and kh is not None and vh is not None and merged is not None
            op = rewriter.builder(graph, before=merged[1][-1], fused_from=[*found.core, *merged[1]])
            sources = self._sources(op, [qh, kh, vh])
            attrs.update(q_num_heads=qh.heads, kv_num_heads=kh.heads)
            inputs = [*sources, found.mask]
            old = merged[0]
            matched += [*merged[1], *found.k_nodes, *qh.nodes, *kh.nodes, *vh.nodes]
        else:
            op = rewriter.builder(graph, before=node, fused_from=found.core)
            k = found.k if found.k is not None else op.Transpose(found.kt, perm=[0, 1, 3, 2])
            inputs = [found.q, k, found.v, found.mask]
            old = node.outputs[0]
            matched += found.k_nodes
        while inputs and inputs[-1] is None:
            inputs.pop()
        y = op.op("Attention", *inputs, _domain=domain, **attrs)
        replace_and_erase(rewriter, node, [old], [y], list(dict.fromkeys(matched)))
        return True

    @staticmethod
    def _sources(op, sides: list[Heads]) -> list[Value]:
        """The 3-D Q, K, V: the sources, or pieces of one Split per packed projection."""
        splits: dict[int, tuple[Value, ...]] = {}
        out = []
        for h in sides:
            if h.parts == 1:
                out.append(h.source)
                continue
            key = id(h.source)
            if key not in splits:
                width = h.source.shape[-1] // h.parts  # type: ignore[index, operator]
                splits[key] = make_split(op, h.source, [width] * h.parts, -1)
            out.append(splits[key][h.index])
        return out


ATTENTION_RULES = RuleSet([RaiseAttention()], name="raise-attention")


@register_pass
@dataclass(frozen=True)
class RaiseAttentionPass(RaisePass):
    """Raises softmax(Q Kᵀ · scale + mask) V, with its head split/merge, to Attention / kiln.Attention."""

    name: ClassVar[str] = "raise-attention"
    rules: ClassVar[RuleSet] = ATTENTION_RULES


__all__ = [
    "ATTENTION_RULES",
    "AttentionMatch",
    "Heads",
    "RaiseAttention",
    "RaiseAttentionPass",
    "match_core",
    "split_heads",
    "untranspose",
]
