"""The greedy worklist driver: applies a rule set until nothing matches.

Every node of the graph (subgraph bodies included) starts on a FIFO worklist
in graph order.  A node taken off the list is offered to the rules indexed
under its ``(domain, op)`` (a dict lookup: a node no rule is rooted at costs
nothing more), in rule-set order; the first rule that applies wins.  The
rewriter's listener puts back on the list what a change may have made
matchable: new nodes, the users of a replaced value, a node edited in place
and its users, and, for an erased node, the producers of its inputs and the
users of an input left with a single use (one-use checks may pass now).  The
driver stops when the list is empty: a fixed point.  Nothing recurses over
the graph, and each change re-queues a bounded number of nodes, so a 100k-node
graph costs time linear in its size and in the number of rewrites.

Ping-pong guard: each rewrite rooted at a node gives the nodes it creates
(and the root, if it survives) a generation one higher than the root's.  Rules
that undo each other keep raising it; past ``max_rewrites_per_node`` the
driver raises :class:`RewriteLoopError` naming the rules involved (or, with
``on_loop="warn"``, logs a warning and stops).  ``max_rewrites`` caps the
total as a second guard.

``PassContext.debug_rules`` (``--debug-rules``): every rule tried at a node is
logged on the ``kiln.rewrite`` logger at INFO level (enabled for the run)
with its outcome, applied or refused and why.  A refused match is not an
error.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from kiln.errors import KilnError
from kiln.ir.core import Graph, Node, Value
from kiln.rewrite.rewriter import RewriteListener, Rewriter

if TYPE_CHECKING:
    from kiln.passmanager.base import PassContext
    from kiln.rewrite.rule import RuleSet

logger = logging.getLogger("kiln.rewrite")

DEFAULT_MAX_REWRITES_PER_NODE = 64


class RewriteLoopError(KilnError):
    """Rules kept rewriting the same spot (they undo each other), or too many rewrites in all."""


def describe_node(node: Node) -> str:
    """``onnx.Relu 'relu1' (model.onnx node #3)`` for messages."""
    name = f" {node.name!r}" if node.name else ""
    loc = node.loc.describe()
    where = "" if loc == "<unknown location>" else f" ({loc})"
    return f"{node.op_id}{name}{where}"


class _Worklist(RewriteListener):
    """Refills the FIFO worklist from the rewriter's notifications."""

    def __init__(self) -> None:
        self.queue: deque[Node] = deque()
        self.queued: set[Node] = set()

    def push(self, node: Node | None) -> None:
        if node is not None and node not in self.queued and node.graph is not None:
            self.queued.add(node)
            self.queue.append(node)

    def pop(self) -> Node:
        node = self.queue.popleft()
        self.queued.discard(node)
        return node

    def push_users(self, value: Value) -> None:
        for use in value.uses:
            self.push(use.node)

    def node_created(self, node: Node) -> None:
        self.push(node)

    def node_modified(self, node: Node) -> None:
        self.push(node)
        for out in node.outputs:
            self.push_users(out)

    def value_replaced(self, old: Value, new: Value) -> None:
        self.push_users(new)
        self.push(new.producer)

    def node_erased(self, node: Node, inputs: Sequence[Value | None]) -> None:
        for value in inputs:
            if value is None:
                continue
            self.push(value.producer)
            if len(value.uses) == 1:
                self.push(value.uses[0].node)


OPS_MADE_KEY = "rewrite.ops_made"
"""``ctx.extra[OPS_MADE_KEY]``: rule -> {op id -> nodes that rule created}, over every rewrite run
with that context (``kiln inspect --fusions`` reports it beside the rule metadata of the nodes left)."""


class _Stats(RewriteListener):
    """Counts applications per rule into ``ctx.stats`` (``rules.<rule>``), and the ops each rule made."""

    def __init__(self, ctx: PassContext | None, prefix: str) -> None:
        self.ctx = ctx
        self.prefix = prefix
        self.applied: dict[str, int] = {}
        self._pending: list[str] = []  # ops created by the rule now running, until it applies or refuses

    def begin(self) -> None:
        """A rule is about to be tried: what an earlier, refused try created is not its."""
        self._pending.clear()

    def node_created(self, node: Node) -> None:
        self._pending.append(node.op_id)

    def rule_applied(self, rule: str, root: Node, matched: Sequence[Node]) -> None:
        self.applied[rule] = self.applied.get(rule, 0) + 1
        made, self._pending = self._pending, []
        if self.ctx is not None:
            self.ctx.bump(f"rules.{rule}")
            if self.prefix:
                self.ctx.bump(f"{self.prefix}.rewrites")
            counts = self.ctx.extra.setdefault(OPS_MADE_KEY, {}).setdefault(rule, {})
            for op_id in made:
                counts[op_id] = counts.get(op_id, 0) + 1


class _Debug(RewriteListener):
    """``--debug-rules``: logs what was tried at each node, applied or refused, and why."""

    def __init__(self, pass_name: str) -> None:
        self.pass_name = pass_name or "rewrite"

    def rule_applied(self, rule: str, root: Node, matched: Sequence[Node]) -> None:
        logger.info(
            "%s: %s: rule %s applied (%d node%s matched)",
            self.pass_name, describe_node(root), rule, len(matched), "" if len(matched) == 1 else "s",
        )

    def rule_refused(self, rule: str, root: Node, reason: str) -> None:
        logger.info("%s: %s: rule %s refused: %s", self.pass_name, describe_node(root), rule, reason)


class GreedyRewriteDriver:
    """Applies a :class:`~kiln.rewrite.rule.RuleSet` to a graph until no rule applies.

    Args:
        rules: the rule set.
        ctx: the pass context (statistics, ``debug_rules``); optional.
        pass_name: prefix for statistics (``<pass>.rewrites``) and debug lines.
        max_rewrites_per_node: the ping-pong guard (see the module docstring).
        max_rewrites: cap on rewrites in one run (default: 16 per node + 1024).
        on_loop: ``"error"`` raises :class:`RewriteLoopError`; ``"warn"`` logs and stops.
        listeners: extra listeners (tests, instruments).
    """

    def __init__(
        self,
        rules: RuleSet,
        ctx: PassContext | None = None,
        *,
        pass_name: str = "",
        max_rewrites_per_node: int = DEFAULT_MAX_REWRITES_PER_NODE,
        max_rewrites: int | None = None,
        on_loop: Literal["error", "warn"] = "error",
        listeners: Sequence[RewriteListener] = (),
    ) -> None:
        if on_loop not in ("error", "warn"):
            raise ValueError(f"on_loop must be 'error' or 'warn', not {on_loop!r}")
        self.rules = rules
        self.ctx = ctx
        self.pass_name = pass_name
        self.max_per_node = max_rewrites_per_node
        self.max_rewrites = max_rewrites
        self.on_loop = on_loop
        self.extra_listeners = list(listeners)
        self.applied: dict[str, int] = {}

    def run(self, graph: Graph) -> int:
        """Rewrites ``graph`` in place; returns the number of rewrites applied."""
        debug = bool(self.ctx is not None and self.ctx.debug_rules)
        saved_level = logger.level
        if debug and not logger.isEnabledFor(logging.INFO):
            logger.setLevel(logging.INFO)
        try:
            return self._run(graph, debug)
        finally:
            if debug:
                logger.setLevel(saved_level)

    def _run(self, graph: Graph, debug: bool) -> int:
        worklist = _Worklist()
        stats = _Stats(self.ctx, self.pass_name)
        listeners: list[RewriteListener] = [worklist, stats, *self.extra_listeners]
        if debug:
            listeners.append(_Debug(self.pass_name))
        rewriter = Rewriter(listeners)
        total_nodes = 0
        for node in graph.walk():
            worklist.push(node)
            total_nodes += 1
        cap = self.max_rewrites if self.max_rewrites is not None else 16 * total_nodes + 1024
        generation: dict[Node, tuple[int, tuple[str, ...]]] = {}
        rules = self.rules
        ctx = self.ctx
        done = 0
        while worklist.queue:
            node = worklist.pop()
            if node.graph is None:
                continue
            candidates = rules.candidates(node)
            if not candidates:
                continue
            for r in candidates:
                rewriter.rule = r.name
                rewriter.created_now = []
                stats.begin()
                if not r.try_apply(node, rewriter, ctx, debug):
                    if debug:
                        rewriter.refused(node, rewriter.last_reason or "no match")
                    continue
                done += 1
                gen, history = generation.get(node, (0, ()))
                gen += 1
                history = (*history[-7:], r.name)
                for created in rewriter.created_now:
                    generation[created] = (gen, history)
                if node.graph is not None:
                    generation[node] = (gen, history)
                if (gen > self.max_per_node or done > cap) and self._loop(node, gen, history, done, cap):
                    self.applied = dict(stats.applied)
                    return done
                break
        self.applied = dict(stats.applied)
        return done

    def _loop(self, node: Node, gen: int, history: tuple[str, ...], done: int, cap: int) -> bool:
        """Reports a rewrite loop; returns ``True`` when the driver must stop (warn mode)."""
        if gen > self.max_per_node:
            rules = " -> ".join(history)
            message = (
                f"rewrite rules rewrote {describe_node(node)} and what replaced it {gen} times in a row "
                f"(limit {self.max_per_node}); the last rules were {rules}: they probably undo each other (ping-pong)"
            )
        else:
            message = f"more than {cap} rewrites in one run of {self.pass_name or 'the rewrite driver'}; stopping"
        if self.on_loop == "error":
            raise RewriteLoopError(message, node=node)
        logger.warning("kiln: %s", message)
        return True


def apply_rules(graph: Graph, rules: RuleSet, ctx: PassContext | None = None, **options: Any) -> int:
    """Applies ``rules`` to ``graph`` to a fixed point; returns the number of rewrites."""
    return GreedyRewriteDriver(rules, ctx, **options).run(graph)


__all__ = ["DEFAULT_MAX_REWRITES_PER_NODE", "GreedyRewriteDriver", "RewriteLoopError", "apply_rules", "describe_node"]
