"""Rule sets as passes: :class:`RulesPass` and :func:`rules_pass`.

One line turns a rule set into a registered pass::

    FuseAct = register_pass(ACT_RULES.as_pass("fuse-act", "Fuses activations into their producer."))

A pass that picks its rules from its options subclasses :class:`RulesPass`
and overrides :meth:`RulesPass.rule_set`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from kiln.ir.core import Graph
from kiln.passmanager.base import Pass, PassContext
from kiln.rewrite.driver import DEFAULT_MAX_REWRITES_PER_NODE, GreedyRewriteDriver
from kiln.rewrite.rule import RuleSet


@dataclass(frozen=True)
class RulesPass(Pass):
    """Applies a rule set with the greedy driver to a fixed point."""

    name: ClassVar[str] = ""
    rules: ClassVar[RuleSet | None] = None

    max_rewrites_per_node: int = field(
        default=DEFAULT_MAX_REWRITES_PER_NODE,
        metadata={"doc": "ping-pong guard: rewrites in a row of one node and what replaced it"},
    )

    def rule_set(self) -> RuleSet:
        """The rules this pass applies (``rules`` unless a subclass picks them from its options)."""
        if self.rules is None:
            raise TypeError(f"pass {self.name!r} has no rules")
        return self.rules

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        driver = GreedyRewriteDriver(
            self.rule_set(), ctx, pass_name=self.name, max_rewrites_per_node=self.max_rewrites_per_node
        )
        return driver.run(graph) > 0


def _class_name(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("-")) + "Pass"


def rules_pass(name: str, rules: RuleSet, summary: str = "", *, doc: str | None = None, module: str | None = None) -> type[RulesPass]:
    """A :class:`RulesPass` subclass named ``name`` applying ``rules`` (register it with ``register_pass``).

    Args:
        name: the kebab-case pass name.
        rules: the rule set.
        summary: the one-line help (``kiln passes``); defaults to the rule names.
        doc: a longer docstring (its first line should be the summary).
        module: the module the class says it comes from (the caller's by default).
    """
    if module is None:
        import sys

        module = sys._getframe(1).f_globals.get("__name__", __name__)
    text = doc or summary or f"Applies the rewrite rules {', '.join(rules.names())}."
    qualname = _class_name(name)
    cls: type[RulesPass] = type(
        qualname,
        (RulesPass,),
        {"__doc__": text, "__module__": module, "__qualname__": qualname, "__annotations__": {}},
    )
    cls.name = name
    cls.rules = rules
    dataclass(frozen=True)(cls)  # a new frozen dataclass (no new fields): decorating returns cls itself
    return cls


__all__ = ["RulesPass", "rules_pass"]
