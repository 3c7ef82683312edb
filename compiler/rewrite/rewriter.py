"""The :class:`Rewriter`: every mutation a rule makes goes through it.

Rules (declarative or imperative) never edit the graph directly: they create
nodes with :meth:`Rewriter.builder`, redirect uses with
:meth:`Rewriter.replace_value`, drop nodes with :meth:`Rewriter.erase_node`
and edit a node in place with :meth:`Rewriter.set_input` /
:meth:`Rewriter.set_attr`.  Each of those notifies the listeners
(MLIR's ``RewriterBase::Listener``), which is how the driver refills its
worklist, how per-rule statistics reach ``ctx.stats`` and how
``--debug-rules`` shows what happened.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from kiln.ir.core import Graph, Location, Node, Value
from kiln.ops.builder import OpBuilder
from kiln.ops.inference import merge_types

logger = logging.getLogger(__name__)


class RewriteListener:
    """Hooks called by the :class:`Rewriter`; every method is optional."""

    def node_created(self, node: Node) -> None:
        """``node`` was inserted into a graph."""

    def node_erased(self, node: Node, inputs: Sequence[Value | None]) -> None:
        """``node`` was removed; ``inputs`` are what it read."""

    def node_modified(self, node: Node) -> None:
        """``node``'s inputs or attributes changed in place."""

    def value_replaced(self, old: Value, new: Value) -> None:
        """Every use of ``old`` now reads ``new``."""

    def rule_applied(self, rule: str, root: Node, matched: Sequence[Node]) -> None:
        """``rule`` rewrote the subgraph rooted at ``root``."""

    def rule_refused(self, rule: str, root: Node, reason: str) -> None:
        """``rule`` was tried at ``root`` and did not apply, for ``reason``."""


class RewriteRefused(Exception):
    """Raised by a replacement (or an imperative rule) to decline with a reason."""


class RewriteBuilder(OpBuilder):
    """The ``op`` a replacement function receives.

    It creates nodes before the root of the match, gives them the fused
    location of the matched nodes, and tells the rewriter about each one.
    """

    def __init__(self, rewriter: Rewriter, graph: Graph, *, before: Node | None, loc: Location) -> None:
        super().__init__(graph, before=before, loc=loc)
        self.rewriter = rewriter
        self.constants: list[Value] = []

    def op(self, op: str, *inputs: Value | None, **kwargs: Any) -> Any:  # type: ignore[override]
        before = len(self.created)
        result = super().op(op, *inputs, **kwargs)
        for node in self.created[before:]:
            self.rewriter._created(node)
        return result

    def const(self, data: Any, name: str = "const", dtype: Any = None) -> Value:
        value = super().const(data, name, dtype)
        self.constants.append(value)
        return value

    def const_like(self, data: Any, like: Value, name: str = "const") -> Value:
        """A constant holding ``data`` in ``like``'s numpy dtype."""
        dt = like.dtype.numpy if like.dtype is not None else None
        return self.const(np.asarray(data, dtype=dt), name)

    def refuse(self, reason: str) -> None:
        """Declines the rewrite (raises :class:`RewriteRefused`); nodes made so far are dropped."""
        raise RewriteRefused(reason)


class Rewriter:
    """Applies mutations and notifies listeners; one per driver run.

    Attributes:
        listeners: notified of every change, in order.
        rule: the name of the rule being applied (for statistics and messages).
        changes: the number of mutations made through this rewriter.
    """

    def __init__(self, listeners: Iterable[RewriteListener] = ()) -> None:
        self.listeners: list[RewriteListener] = list(listeners)
        self.rule = ""
        self.changes = 0
        self.last_reason = ""
        self.created_now: list[Node] = []

    # ---- creating

    def builder(
        self,
        graph: Graph,
        *,
        before: Node | None = None,
        fused_from: Sequence[Node] = (),
        loc: Location | None = None,
    ) -> RewriteBuilder:
        """A builder inserting before ``before``; nodes made get ``Location.fused(fused_from, rule)``."""
        if loc is None:
            loc = Location.fused([n.loc for n in fused_from], self.rule or "rewrite") if fused_from else (
                before.loc if before is not None else Location(rule=self.rule or None)
            )
        return RewriteBuilder(self, graph, before=before, loc=loc)

    def _created(self, node: Node) -> None:
        self.changes += 1
        self.created_now.append(node)
        for listener in self.listeners:
            listener.node_created(node)

    # ---- replacing

    def can_replace(self, old: Value, new: Value) -> bool:
        """Whether every use of ``old`` (graph outputs included) can read ``new``."""
        return old.can_replace_all_uses_with(new)

    def replace_value(self, old: Value, new: Value) -> None:
        """Makes every user of ``old`` read ``new`` (graph outputs keep their names).

        ``new`` takes over what is known of ``old``'s type where its own is less precise.

        Raises:
            ValueError: ``old`` is a graph output that ``new`` cannot stand for.
        """
        if old is new:
            return
        if not old.can_replace_all_uses_with(new):
            raise ValueError(f"%{old.name} is a graph output and %{new.name} cannot take its name")
        if old.type is not None:
            new.type = merge_types(new.type, old.type)
        if "sym_value" in old.meta and "sym_value" not in new.meta:
            new.meta["sym_value"] = old.meta["sym_value"]
        old.replace_all_uses_with(new)
        self.changes += 1
        for listener in self.listeners:
            listener.value_replaced(old, new)

    # ---- erasing

    def erase_node(self, node: Node) -> None:
        """Removes ``node`` (its outputs must be unused)."""
        graph = node.graph
        if graph is None:
            return
        inputs = node.inputs
        graph.remove_node(node)
        self.changes += 1
        for listener in self.listeners:
            listener.node_erased(node, inputs)
        for value in inputs:
            if value is not None and value.const is not None and not value.uses:
                owner = value.graph
                if owner is not None and value.name in owner.constants and not owner.is_output(value):
                    owner.remove_constant(value)

    def is_dead(self, node: Node) -> bool:
        graph = node.graph
        return graph is not None and not any(o.uses or graph.is_output(o) for o in node.outputs)

    def erase_dead(self, nodes: Iterable[Node]) -> int:
        """Erases those of ``nodes`` left without users (repeatedly, so chains go too); returns how many."""
        pending = [n for n in nodes if n.graph is not None]
        erased = 0
        progress = True
        while progress and pending:
            progress = False
            keep: list[Node] = []
            for node in pending:
                if node.graph is None:
                    continue
                if self.is_dead(node):
                    self.erase_node(node)
                    erased += 1
                    progress = True
                else:
                    keep.append(node)
            pending = keep
        return erased

    # ---- editing in place

    def set_input(self, node: Node, index: int, value: Value | None) -> None:
        """Replaces input ``index`` of ``node``."""
        old = node.input(index)
        if old is value:
            return
        node.set_input(index, value)
        self.changes += 1
        self._modified(node)
        if old is not None and old.const is not None and not old.uses:
            owner = old.graph
            if owner is not None and old.name in owner.constants and not owner.is_output(old):
                owner.remove_constant(old)

    def set_attr(self, node: Node, name: str, value: Any) -> None:
        """Sets (or, with ``None``, removes) attribute ``name`` of ``node``."""
        if value is None:
            if name not in node.attrs:
                return
            del node.attrs[name]
        else:
            node.set_attr(name, value)
        self.changes += 1
        self._modified(node)

    def _modified(self, node: Node) -> None:
        for listener in self.listeners:
            listener.node_modified(node)

    def notify_modified(self, node: Node) -> None:
        """Tells the listeners ``node`` changed in a way the rewriter did not see."""
        self.changes += 1
        self._modified(node)

    # ---- rule outcomes (called by the driver and the rules)

    def refuse(self, reason: str) -> bool:
        """For imperative rules: ``return rewriter.refuse("why")`` records the reason and returns ``False``."""
        self.last_reason = reason
        return False

    def applied(self, root: Node, matched: Sequence[Node]) -> None:
        for listener in self.listeners:
            listener.rule_applied(self.rule, root, matched)

    def refused(self, root: Node, reason: str) -> None:
        for listener in self.listeners:
            listener.rule_refused(self.rule, root, reason)


__all__ = ["RewriteBuilder", "RewriteListener", "RewriteRefused", "Rewriter"]
