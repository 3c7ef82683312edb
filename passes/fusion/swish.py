"""``raise-swish``: decomposed SiLU/Swish, HardSwish and HardSigmoid raised to one op.

The product at the root is read as ``C · x · g`` (:func:`~._match.product_of`: single-use Mul,
Div by a constant, any operand order):

- ``raise-swish``: ``g = Sigmoid(α·x)`` -> ``C · Swish(x; α)``: ONNX ``Swish`` from opset 24,
  else ``kiln.Swish`` (SiLU is ``α = 1``);
- ``raise-hardswish``: ``g = HardSigmoid(x; 1/6, 1/2)``, or ``g = relu6(x + 3)`` (``Clip(·, 0, 6)``,
  ``Min(Max(·, 0), 6)``, ``Min(Relu(·), 6)``) -> ``C · HardSwish(x)`` resp. ``6C · HardSwish(x)``:
  ONNX ``HardSwish`` from opset 14, else ``kiln.HardSwish``; with ``onnx-only`` below opset 14,
  the relu6 form becomes ``x · HardSigmoid(x; 1/6, 1/2)`` (2 ONNX nodes for 4);
- ``raise-hardsigmoid``: ``C · relu6(x + 3)`` alone -> ``6C · HardSigmoid(x; 1/6, 1/2)`` (ONNX
  since opset 6), so ``relu6(x + 3) / 6`` is one node (and a later ``x ·`` it a HardSwish).

A constant factor that is not 1 stays as one Mul.  ``x·relu6(x+3)/6`` and ``x·clip(x/6+1/2, 0, 1)``
agree up to rounding.  The intermediates must be read only inside the pattern, and the result
must have ``x``'s rank (no broadcasting by the constants).

In target pipelines run ``fuse-act`` first: it fuses ``y·Sigmoid(y)`` and ``y·HardSigmoid(y)``
after a Conv/Gemm into ``kiln.ConvAct``/``kiln.GemmAct`` itself, and does not know kiln.Swish.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from kiln.ir.core import Node, Value
from kiln.passes.fusion._match import (
    Product,
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


def _op(value: Value | None, *ops: str) -> Node | None:
    node = value.producer if value is not None else None
    return node if node is not None and node.domain == "" and node.op in ops else None


def _clip_bounds(node: Node) -> tuple[float | None, float | None]:
    if (node.version or 11) < 11:
        return node.attr("min"), node.attr("max")
    lo = scalar_of(node.input(1)) if node.input(1) is not None else None
    hi = scalar_of(node.input(2)) if node.input(2) is not None else None
    return lo, hi


def relu6_of(g: Value) -> tuple[Value, list[Node]] | None:
    """``g = min(max(s, 0), 6)`` in one of its spellings: ``(s, nodes)``."""
    clip = _op(g, "Clip")
    if clip is not None:
        lo, hi = _clip_bounds(clip)
        return (clip.inputs[0], [clip]) if lo == 0.0 and hi == 6.0 else None  # type: ignore[return-value]
    outer = _op(g, "Min", "Max")
    if outer is None or len(outer.inputs) != 2:
        return None
    bound = 6.0 if outer.op == "Min" else 0.0
    for i in (0, 1):
        if scalar_of(outer.input(1 - i)) != bound:
            continue
        inner_value = outer.input(i)
        relu = _op(inner_value, "Relu")
        if outer.op == "Min" and relu is not None:
            return relu.inputs[0], [outer, relu]  # type: ignore[return-value]
        inner = _op(inner_value, "Max" if outer.op == "Min" else "Min")
        if inner is None or len(inner.inputs) != 2:
            return None
        other = 0.0 if outer.op == "Min" else 6.0
        for j in (0, 1):
            if scalar_of(inner.input(1 - j)) == other:
                return inner.inputs[j], [outer, inner]  # type: ignore[return-value]
    return None


def _plus_three(s: Value) -> tuple[Value, Node] | None:
    """``s = x + 3``: ``(x, add)``."""
    add = _op(s, "Add")
    if add is None:
        return None
    for i in (0, 1):
        if scalar_of(add.input(1 - i)) == 3.0:
            return add.inputs[i], add  # type: ignore[return-value]
    return None


@dataclass
class GateMatch:
    """``factor · kind(x)`` (kind: Swish, HardSwish, HardSigmoid), made of ``nodes``."""

    kind: str
    x: Value
    factor: float
    nodes: list[Node]
    alpha: float = 1.0


def _gated(prod: Product, x: Value, g: Value) -> GateMatch | str:
    sig = _op(g, "Sigmoid")
    if sig is not None:
        arg = product_of(sig.inputs[0])  # type: ignore[arg-type]
        if arg.only() is not x:
            return "the Sigmoid does not read α·x"
        return GateMatch("Swish", x, prod.coef, [sig, *arg.nodes], alpha=arg.coef)
    hsig = _op(g, "HardSigmoid")
    if hsig is not None:
        if hsig.inputs[0] is not x:
            return "the HardSigmoid does not read x"
        if not (close(float(hsig.attr("alpha", 0.2)), 1.0 / 6.0) and float(hsig.attr("beta", 0.5)) == 0.5):
            return "the HardSigmoid is not HardSwish's (alpha 1/6, beta 1/2)"
        return GateMatch("HardSwish", x, prod.coef, [hsig])
    relu6 = relu6_of(g)
    if relu6 is None:
        return "the gate is not Sigmoid, HardSigmoid or relu6(x + 3)"
    shifted = _plus_three(relu6[0])
    if shifted is None or shifted[0] is not x:
        return "the relu6 does not read x + 3"
    return GateMatch("HardSwish", x, 6.0 * prod.coef, [*relu6[1], shifted[1]])


def match_gate(root: Node) -> GateMatch | str:
    """``C·x·gate(x)`` or ``C·relu6(x + 3)`` ending at ``root``, or why not."""
    if product_continues(root.outputs[0]):
        return "the product goes on in the next node (matched there)"
    prod = product_of(root.outputs[0])
    found: GateMatch | str
    if len(prod.terms) == 1:
        relu6 = relu6_of(prod.terms[0])
        shifted = _plus_three(relu6[0]) if relu6 is not None else None
        if relu6 is None or shifted is None or not prod.nodes:
            return "not relu6(x + 3) times a constant"
        found = GateMatch("HardSigmoid", shifted[0], 6.0 * prod.coef, [*relu6[1], shifted[1]])
    elif len(prod.terms) == 2:
        found = "no gate"
        for x, g in (prod.terms, reversed(prod.terms)):
            found = _gated(prod, x, g)
            if not isinstance(found, str):
                break
        if isinstance(found, str):
            return found
    else:
        return f"the product has {len(prod.terms)} non-constant factors"
    found.nodes = list(dict.fromkeys([root, *prod.nodes, *found.nodes]))
    leak = escaping(found.nodes, root)
    if leak is not None:
        return f"%{leak.name} is read outside the pattern"
    if not is_float(found.x) or not same_rank(found.x, root.outputs[0]):
        return "x is not a float tensor of the result's rank"
    return found


_SINCE = {"Swish": 24, "HardSwish": 14, "HardSigmoid": 6}


class RaiseGate(RewritePattern):
    """``C·x·σ(αx)`` -> Swish; ``C·x·hardsigmoid(x)``, ``C·x·relu6(x+3)`` -> HardSwish; ``C·relu6(x+3)`` -> HardSigmoid."""

    name = "raise-swish"
    roots = ("Mul", "Div")
    kinds: ClassVar[tuple[str, ...]] = ("Swish",)

    def match_and_rewrite(self, node: Node, rewriter: Rewriter) -> bool:
        found = match_gate(node)
        if isinstance(found, str):
            return rewriter.refuse(found)
        if found.kind not in self.kinds:
            return rewriter.refuse(f"a {found.kind} (another rule's)")
        graph = node.graph
        assert graph is not None
        where = raise_to(self.pass_ctx, graph, found.kind, _SINCE[found.kind])
        unit = close(found.factor, 1.0, const_rtol(found.x))
        if where not in ("onnx", "kiln"):
            # Below opset 14, onnx-only: x · HardSigmoid(x) is still fewer nodes than the relu6 form.
            if found.kind != "HardSwish" or len(found.nodes) <= (2 if unit else 3):
                return rewriter.refuse(where)
            where = "hardsigmoid"
        op = rewriter.builder(graph, before=node, fused_from=found.nodes)
        attrs: dict[str, float] = {}
        if found.kind == "Swish" and found.alpha != 1.0:
            attrs["alpha"] = found.alpha
        if found.kind == "HardSigmoid":
            attrs = {"alpha": 1.0 / 6.0, "beta": 0.5}
        if where == "hardsigmoid":
            y = op.Mul(found.x, op.HardSigmoid(found.x, alpha=1.0 / 6.0, beta=0.5))
        elif where == "onnx":
            y = op.op(found.kind, found.x, **attrs)
        else:
            y = op.op(found.kind, found.x, _domain="kiln", **attrs)
        if not unit:
            y = op.Mul(y, op.const_like(found.factor, found.x, "gate_scale"))
        replace_and_erase(rewriter, node, [node.outputs[0]], [y], found.nodes)
        return True


class RaiseHardSwish(RaiseGate):
    name = "raise-hardswish"
    kinds = ("HardSwish",)


class RaiseHardSigmoid(RaiseGate):
    name = "raise-hardsigmoid"
    kinds = ("HardSigmoid",)


SWISH_RULES = RuleSet([RaiseGate(), RaiseHardSwish(), RaiseHardSigmoid()], name="raise-swish")


@register_pass
@dataclass(frozen=True)
class RaiseSwishPass(RaisePass):
    """Raises decomposed SiLU/Swish, HardSwish and HardSigmoid (relu6 forms) to one op each."""

    name: ClassVar[str] = "raise-swish"
    rules: ClassVar[RuleSet] = SWISH_RULES


__all__ = [
    "SWISH_RULES",
    "GateMatch",
    "RaiseGate",
    "RaiseHardSigmoid",
    "RaiseHardSwish",
    "RaiseSwishPass",
    "match_gate",
    "relu6_of",
]
