"""``raise-gelu``: decomposed GELU raised to ``Gelu`` (opset >= 20) or ``kiln.Gelu``.

The product at the root is read as ``C · x · (α·g + β)`` (:func:`~._match.product_of`: single-use
Mul, Div by a constant, in any operand order), with ``g`` one of

- ``erf(k·x)``, ``k = 1/√2`` (written ``x / 1.4142135`` or ``x · 0.70710677``): exact GELU;
- ``tanh(k·(x + c·x³))``, ``k = √(2/π)``, ``c = 0.044715``, the cube as ``Pow(x, 3)`` or
  ``x·x·x``: GELU with ``approximate="tanh"``.

Since ``C·x·(α·g + β) = 2Cβ · x·(1 + g)/2`` when ``α = β``, the pattern is ``2Cβ · Gelu(x)``:
the textbook ``0.5·x·(1 + erf(x/√2))`` (``C = 0.5, α = β = 1``), the form in which a bias-folding
pass distributed the half over the sum (``x·(0.5·erf + 0.5)``), and the form whose half was
already folded into the next MatMul (``x·(1 + erf)``, a factor 2 that stays as one Mul) all
raise.  Constants are compared to 1e-5 relative (float32 spellings of 1/√2 and √(2/π)).  The
intermediates must be read only inside the pattern.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from kiln.ir.core import Node, Value
from kiln.passes.fusion._match import (
    close,
    const_rtol,
    escaping,
    is_float,
    product_continues,
    product_of,
    replace_and_erase,
    same_rank,
    scalar_of,
)
from kiln.passes.fusion._raise import RaisePass, raise_to
from kiln.passmanager.registry import register_pass
from kiln.rewrite import RewritePattern, Rewriter, RuleSet

INV_SQRT2 = 1.0 / math.sqrt(2.0)
TANH_K = math.sqrt(2.0 / math.pi)
TANH_C = 0.044715


@dataclass
class GeluMatch:
    """``factor · Gelu(x; approximate)``, made of ``nodes``."""

    x: Value
    approximate: str
    factor: float
    nodes: list[Node]


def _gate(e: Value, x: Value, rtol: float) -> tuple[str, list[Node]] | str:
    """``e = erf(x/√2)`` or ``tanh(√(2/π)·(x + 0.044715·x³))``: ``(approximate, nodes)``."""
    node = e.producer
    if node is None or node.domain != "" or node.op not in ("Erf", "Tanh"):
        return "the sum's other term is not Erf or Tanh of x"
    arg = product_of(node.inputs[0])  # type: ignore[arg-type]
    if node.op == "Erf":
        if arg.only() is not x or not close(arg.coef, INV_SQRT2, rtol):
            return "the Erf argument is not x/√2"
        return "none", [node, *arg.nodes]
    p = arg.only()
    add = p.producer if p is not None else None
    if add is None or add.op != "Add" or not close(arg.coef, TANH_K, rtol):
        return "the Tanh argument is not √(2/π)·(x + c·x³)"
    for i in (0, 1):
        if add.input(i) is not x:
            continue
        cube = product_of(add.inputs[1 - i])  # type: ignore[arg-type]
        if len(cube.terms) == 3 and all(t is x for t in cube.terms) and close(cube.coef, TANH_C, rtol):
            return "tanh", [node, *arg.nodes, add, *cube.nodes]
    return "the Tanh argument is not √(2/π)·(x + 0.044715·x³)"


def _sum(s: Value, x: Value, rtol: float) -> tuple[str, float, list[Node]] | str:
    """``s = α·g + β`` with ``α = β``: ``(approximate, β, nodes)``."""
    add = s.producer
    if add is None or add.domain != "" or add.op != "Add":
        return "no (1 + erf(...)) factor"
    for i in (0, 1):
        beta = scalar_of(add.input(1 - i))
        if beta is None:
            continue
        inner = product_of(add.inputs[i])  # type: ignore[arg-type]
        e = inner.only()
        if e is None or not close(inner.coef, beta, rtol):
            return "the sum is not β·(1 + g)"
        gate = _gate(e, x, rtol)
        if isinstance(gate, str):
            return gate
        approximate, nodes = gate
        return approximate, beta, [add, *inner.nodes, *nodes]
    return "the sum adds no scalar constant"


def match_gelu(root: Node) -> GeluMatch | str:
    """A decomposed GELU whose last op is ``root``, or why not."""
    if product_continues(root.outputs[0]):
        return "the product goes on in the next node (matched there)"
    prod = product_of(root.outputs[0])
    if len(prod.terms) != 2:
        return f"the product has {len(prod.terms)} non-constant factors, GELU two"
    reason = "no GELU factors"
    for x, s in (prod.terms, reversed(prod.terms)):
        found = _sum(s, x, const_rtol(x))
        if isinstance(found, str):
            reason = found
            continue
        approximate, beta, nodes = found
        matched = list(dict.fromkeys([root, *prod.nodes, *nodes]))
        leak = escaping(matched, root)
        if leak is not None:
            return f"%{leak.name} is read outside the pattern"
        if not is_float(x) or not same_rank(x, root.outputs[0]):
            return "x is not a float tensor of the result's rank"
        return GeluMatch(x, approximate, 2.0 * prod.coef * beta, matched)
    return reason


class RaiseGelu(RewritePattern):
    """``C·x·(α·erf(x/√2) + β)`` and the tanh form -> ``2Cβ · Gelu(x)``."""

    name = "raise-gelu"
    roots = ("Mul", "Div")

    def match_and_rewrite(self, node: Node, rewriter: Rewriter) -> bool:
        found = match_gelu(node)
        if isinstance(found, str):
            return rewriter.refuse(found)
        graph = node.graph
        assert graph is not None
        where = raise_to(self.pass_ctx, graph, "Gelu", 20)
        if where not in ("onnx", "kiln"):
            return rewriter.refuse(where)
        op = rewriter.builder(graph, before=node, fused_from=found.nodes)
        attrs = {"approximate": found.approximate} if found.approximate != "none" else {}
        y = op.Gelu(found.x, **attrs) if where == "onnx" else op.op("Gelu", found.x, _domain="kiln", **attrs)
        if not close(found.factor, 1.0, const_rtol(found.x)):
            y = op.Mul(y, op.const_like(found.factor, found.x, "gelu_scale"))
        replace_and_erase(rewriter, node, [node.outputs[0]], [y], found.nodes)
        return True


GELU_RULES = RuleSet([RaiseGelu()], name="raise-gelu")


@register_pass
@dataclass(frozen=True)
class RaiseGeluPass(RaisePass):
    """Raises decomposed GELU (erf and tanh forms, any operand order) to Gelu / kiln.Gelu."""

    name: ClassVar[str] = "raise-gelu"
    rules: ClassVar[RuleSet] = GELU_RULES


__all__ = ["GELU_RULES", "GeluMatch", "RaiseGelu", "RaiseGeluPass", "match_gelu"]
