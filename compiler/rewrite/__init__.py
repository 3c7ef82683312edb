"""``kiln.rewrite``: pattern rewriting, the language kiln's fusions and plugins are written in.

A rule is a pattern function and a replacement function over the same op
builder, with named captures, plus a check that returns *why* a match was
refused.  A whole fusion, registered as a pass::

    from kiln.passmanager import register_pass
    from kiln.rewrite import P, RuleSet, attrs_of, rule

    @rule("fuse-conv-relu")
    def conv_relu(op, x, w):                    # the pattern: op builds patterns, parameters are captures
        return op.Relu(op.Conv(x, w, _allow_other_inputs=True, _outputs=["conv"]))

    @conv_relu.check
    def _(ctx, conv):                           # True, or a string: the reason it was refused
        return ctx.one_use(conv) or "the Conv output has other users"

    @conv_relu.replace
    def _(op, conv):                            # op is an OpBuilder placed before the matched Relu
        return op.op("ConvAct", *conv.producer.inputs, _domain="kiln", activation="Relu", **attrs_of(conv.producer))

    FuseConvRelu = register_pass(RuleSet([conv_relu]).as_pass("fuse-conv-relu", "Conv + Relu -> kiln.ConvAct."))

Patterns (:mod:`kiln.rewrite.pattern`): ``op.Conv(x, w, group=1)`` matches
an op with exact attribute values (schema defaults count), sets of values or
predicates (``strides=lambda s: max(s) == 1``); ``_allow_other_inputs``,
``P.optional(p)`` and ``P.variadic("rest")`` for optional and variadic inputs;
``_outputs=["y"]`` / ``_node="n"`` capture the outputs / the node;
``P.const()``, ``P.scalar(1.0)`` match constants (a parameter default works
too: ``def pat(op, x, c=P.const())``); Add/Mul/And/Or/Max/Min/Sum/Equal try
both input orders; ``_one_use=True`` (or ``rule(..., one_use=True)``) demands
single-use intermediates.  A check or replacement names the captures it
wants as parameters.  New nodes get ``Location.fused([...], rule)``.

For rewrites that need analysis, subclass :class:`RewritePattern` and write
``match_and_rewrite(node, rewriter) -> bool``; ``return rewriter.refuse("why")``
to decline.  Rules go into a :class:`RuleSet` (``a + b`` composes), applied by
the greedy worklist driver (:mod:`kiln.rewrite.driver`) to a fixed point,
with a ping-pong guard, per-rule statistics in ``ctx.stats``
(``rules.<rule>``) and ``--debug-rules`` (``PassContext.debug_rules``): each
rule tried at each node is logged on ``kiln.rewrite``, applied or refused
with the reason.  All mutations go through one :class:`Rewriter`.
"""

from kiln.rewrite.driver import GreedyRewriteDriver, RewriteLoopError, apply_rules
from kiln.rewrite.matcher import Match, Matcher
from kiln.rewrite.passes import RulesPass, rules_pass
from kiln.rewrite.pattern import COMMUTATIVE_OPS, P, PatternBuilder
from kiln.rewrite.rewriter import RewriteBuilder, RewriteListener, Rewriter, RewriteRefused
from kiln.rewrite.rule import MatchContext, RewritePattern, Rule, RuleBase, RuleSet, attrs_of, rule

Pattern = P
"""Alias: ``from kiln.rewrite import Pattern as P``."""

__all__ = [
    "COMMUTATIVE_OPS",
    "GreedyRewriteDriver",
    "Match",
    "MatchContext",
    "Matcher",
    "P",
    "Pattern",
    "PatternBuilder",
    "RewriteBuilder",
    "RewriteListener",
    "RewriteLoopError",
    "RewritePattern",
    "RewriteRefused",
    "Rewriter",
    "Rule",
    "RuleBase",
    "RuleSet",
    "RulesPass",
    "apply_rules",
    "attrs_of",
    "rule",
    "rules_pass",
]
