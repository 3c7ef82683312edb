"""Matching a pattern against the graph, rooted at one node.

:class:`Matcher` walks the pattern from its root node pattern up through the
producers of the matched node's inputs.  It enumerates every way the pattern
fits (commutative ops try each input order) with a trail of bindings that is
undone on backtracking, so a rule's check can refuse one match and the next
one is tried.  The walk follows the pattern, never the graph, so its depth is
the pattern's depth whatever the graph's size.

When ``explain`` is on (``--debug-rules``) the matcher keeps the reason the
last attempt failed (``input 0 of onnx.Relu: producer is onnx.MaxPool, not
onnx.Conv``); otherwise it records nothing, which keeps matching cheap.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from kiln.ir.core import Node, Value
from kiln.ops.registry import lookup
from kiln.rewrite.pattern import (
    AnyValue,
    AttrCapture,
    ConstPattern,
    NodeOutput,
    NodePattern,
    OptionalPattern,
    ValuePattern,
    Var,
    Variadic,
)

_UNSET = object()


@dataclass
class Match:
    """One way a pattern fits the graph.

    Attributes:
        root: the node the pattern's root matched.
        nodes: every matched node, root first, each once.
        captures: capture name -> Value, Node, tuple of Values, attribute value or ``None``.
        outputs: the root outputs the pattern's result stands for.
    """

    root: Node
    nodes: list[Node]
    captures: dict[str, Any]
    outputs: list[Value]


def _node_text(node: Node) -> str:
    return f"{node.op_id}{' ' + repr(node.name) if node.name else ''}"


def _normalize_attr(value: Any) -> Any:
    """Lists for tuples, and floats rounded to float32 (how ONNX stores FLOAT attributes)."""
    if isinstance(value, (tuple, list)):
        return [_normalize_attr(v) for v in value]
    if isinstance(value, float):
        return float(np.float32(value))
    return value


class Matcher:
    """Enumerates the matches of one pattern at a root node."""

    def __init__(self, root: NodePattern, outputs: list[NodeOutput], *, rule_one_use: bool = False) -> None:
        self.root = root
        self.result_outputs = outputs
        self.rule_one_use = rule_one_use
        self.explain = False
        self.reason = "no match"
        self._bind: dict[str, Any] = {}
        self._nodes: dict[int, tuple[NodePattern, Node]] = {}
        self._order: list[Node] = []
        self._graph: Any = None
        self._progress = 0
        self._best = -1

    # ---- reasons

    def _fail(self, where: str, why: str) -> None:
        """Records why the current attempt failed (callers guard with ``if self.explain``).

        Of all the failed attempts (input orders), the one that matched the most
        pattern items before failing gives the reason: it is the informative one.
        """
        if self._progress > self._best:
            self._best = self._progress
            self.reason = f"{where}: {why}" if where else why

    # ---- entry point

    def matches(self, node: Node, *, explain: bool = False) -> Iterator[Match]:
        """Every match rooted at ``node`` (a generator; stop it once one is used)."""
        self.explain = explain
        self.reason = "no match"
        self._progress = 0
        self._best = -1
        self._bind = {}
        self._nodes = {}
        self._order = []
        self._graph = node.graph
        for _ in self._match_node(self.root, node, "", is_root=True):
            outputs = [node.outputs[o.index] for o in self.result_outputs]
            nodes = list(dict.fromkeys(self._order))  # a node two patterns matched counts once
            yield Match(node, nodes, dict(self._bind), outputs)

    # ---- binding with undo

    def _bind_name(self, name: str | None, value: Any) -> bool | None:
        """Binds ``name``; ``True`` if newly bound, ``None`` if already bound to it, ``False`` on a clash."""
        if not name:
            return None
        old = self._bind.get(name, _UNSET)
        if old is _UNSET:
            self._bind[name] = value
            return True
        if old is value:
            return None
        return False

    def _unbind(self, name: str | None, fresh: bool | None) -> None:
        if fresh and name:
            del self._bind[name]

    # ---- nodes

    def _match_node(self, pat: NodePattern, node: Node, where: str, *, is_root: bool = False) -> Iterator[None]:
        if node.op not in pat.ops or node.domain != pat.domain:
            if self.explain:
                self._fail(where, f"{_node_text(node)} is not {pat.describe()}")
            return
        known = self._nodes.get(id(pat))
        if known is not None:
            if known[1] is node:
                yield
            else:
                if self.explain:
                    self._fail(where, f"{_node_text(node)} is not the node matched before")
            return
        if not is_root and node.graph is not self._graph:
            if self.explain:
                self._fail(where, f"{_node_text(node)} is in another graph")
            return
        if not self._outputs_ok(pat, node, where, is_root):
            return
        pending = self._attrs_ok(pat, node, where) if pat.attrs else []
        if pending is None:
            return
        fresh_attrs: list[str] = []
        for name, value in pending:
            fresh = self._bind_name(name, value)
            if fresh is False:
                for n in fresh_attrs:
                    del self._bind[n]
                if self.explain:
                    self._fail(where, f"attribute capture {name!r} differs from its earlier binding")
                return
            if fresh:
                fresh_attrs.append(name)
        fresh_node = self._bind_name(pat.capture, node)
        if fresh_node is False:
            for n in fresh_attrs:
                del self._bind[n]
            if self.explain:
                self._fail(where, f"capture {pat.capture!r} is bound to another node")
            return
        self._nodes[id(pat)] = (pat, node)
        self._order.append(node)
        self._progress += 1
        fresh_outs: list[str] = []
        clash = False
        for out_pat in pat.outputs:
            if out_pat.name:
                fresh = self._bind_name(out_pat.name, node.outputs[out_pat.index])
                if fresh is False:
                    clash = True
                    break
                if fresh:
                    fresh_outs.append(out_pat.name)
        try:
            if clash:
                if self.explain:
                    self._fail(where, "an output capture is bound to another value")
            else:
                yield from self._match_inputs(pat, node, where)
        finally:
            for n in fresh_outs:
                del self._bind[n]
            self._order.pop()
            self._progress -= 1
            del self._nodes[id(pat)]
            self._unbind(pat.capture, fresh_node)
            for n in fresh_attrs:
                del self._bind[n]

    def _outputs_ok(self, pat: NodePattern, node: Node, where: str, is_root: bool) -> bool:
        n_pat = len(pat.outputs)
        if len(node.outputs) < n_pat:
            if self.explain:
                self._fail(where, f"{_node_text(node)} has {len(node.outputs)} outputs, the pattern {n_pat}")
            return False
        graph = node.graph
        for extra in node.outputs[n_pat:]:
            if extra.uses or (graph is not None and graph.is_output(extra)):
                if self.explain:
                    self._fail(where, f"{_node_text(node)} output %{extra.name} is used (the pattern ignores it)")
                return False
        if not is_root and (pat.one_use or self.rule_one_use):
            for out in node.outputs[:n_pat]:
                if len(out.uses) != 1 or (graph is not None and graph.is_output(out)):
                    users = len(out.uses) + (1 if graph is not None and graph.is_output(out) else 0)
                    if self.explain:
                        self._fail(where, f"{_node_text(node)} output %{out.name} has {users} users, the rule needs one")
                    return False
        return True

    def _attr_value(self, node: Node, name: str) -> Any:
        a = node.attrs.get(name)
        if a is not None:
            return a.plain()
        schema = lookup(node.domain, node.op, node.version)
        return None if schema is None else schema.attr_default(name)

    def _attrs_ok(self, pat: NodePattern, node: Node, where: str) -> list[tuple[str, Any]] | None:
        """The attribute captures to bind, or ``None`` when a constraint fails."""
        pending: list[tuple[str, Any]] = []
        for name, constraint in pat.attrs.items():
            value = self._attr_value(node, name)
            if isinstance(constraint, AttrCapture):
                if constraint.check is not None and not constraint.check(value):
                    if self.explain:
                        self._fail(where, f"{_node_text(node)} attribute {name}={value!r} refused by its predicate")
                    return None
                pending.append((constraint.name, value))
                continue
            if callable(constraint):
                ok = bool(constraint(value))
            elif isinstance(constraint, (set, frozenset)):
                norm = _normalize_attr(value)
                key = tuple(norm) if isinstance(norm, list) else norm
                ok = any(key == (tuple(c) if isinstance(c, list) else c) for c in map(_normalize_attr, constraint))
            else:
                ok = _normalize_attr(value) == _normalize_attr(constraint)
            if not ok:
                if self.explain:
                    self._fail(where, f"{_node_text(node)} attribute {name}={value!r} does not fit {constraint!r}")
                return None
        return pending

    # ---- inputs

    def _match_inputs(self, pat: NodePattern, node: Node, where: str) -> Iterator[None]:
        values = list(node.inputs)
        while values and values[-1] is None:
            values.pop()
        pats = list(pat.inputs)
        variadic = pats.pop() if pats and isinstance(pats[-1], Variadic) else None
        if variadic is None and not pat.allow_other_inputs and len(values) > len(pats):
            if self.explain:
                self._fail(where, f"{_node_text(node)} has {len(values)} inputs, the pattern {len(pats)}")
            return
        head = values[: len(pats)] + [None] * max(0, len(pats) - len(values))
        orders: list[tuple[int, ...]] = [tuple(range(len(pats)))]
        if pat.commute and 2 <= len(pats) <= 3 and variadic is None and len(values) == len(pats):
            orders = list(itertools.permutations(range(len(pats))))
        for order in orders:
            ordered = [head[i] for i in order]
            if variadic is not None:
                rest = tuple(values[len(pats):])
                fresh = self._bind_name(variadic.name, rest)
                if fresh is False:
                    if self.explain:
                        self._fail(where, f"capture {variadic.name!r} differs from its earlier binding")
                    continue
                try:
                    yield from self._match_list(pats, ordered, node, where, 0, order)
                finally:
                    self._unbind(variadic.name, fresh)
            else:
                yield from self._match_list(pats, ordered, node, where, 0, order)

    def _match_list(
        self,
        pats: list[ValuePattern | None],
        values: list[Value | None],
        node: Node,
        where: str,
        i: int,
        order: tuple[int, ...],
    ) -> Iterator[None]:
        if i == len(pats):
            yield
            return
        here = f"{where}{'/' if where else ''}input {order[i]} of {node.op_id}" if self.explain else ""
        for _ in self._match_value(pats[i], values[i], here):
            self._progress += 1
            try:
                yield from self._match_list(pats, values, node, where, i + 1, order)
            finally:
                self._progress -= 1

    # ---- values

    def _match_value(self, pat: ValuePattern | None, value: Value | None, where: str) -> Iterator[None]:
        if pat is None:
            if value is None:
                yield
            else:
                if self.explain:
                    self._fail(where, f"%{value.name} is present, the pattern wants it omitted")
            return
        if isinstance(pat, OptionalPattern):
            if value is None:
                fresh = self._bind_name(pat.inner.name, None)
                if fresh is False:
                    if self.explain:
                        self._fail(where, f"capture {pat.inner.name!r} differs from its earlier binding")
                    return
                try:
                    yield
                finally:
                    self._unbind(pat.inner.name, fresh)
                return
            yield from self._match_value(pat.inner, value, where)
            return
        if value is None:
            if self.explain:
                self._fail(where, f"the input is omitted, the pattern wants {pat.describe()}")
            return
        if isinstance(pat, NodeOutput):
            producer = value.producer
            if producer is None:
                kind = "a constant" if value.const is not None else "a graph input"
                if self.explain:
                    self._fail(where, f"%{value.name} is {kind}, not the output of {pat.node.describe()}")
                return
            if value.output_index != pat.index:
                if self.explain:
                    self._fail(where, f"%{value.name} is output {value.output_index}, the pattern wants {pat.index}")
                return
            yield from self._match_node(pat.node, producer, where)
            return
        if isinstance(pat, ConstPattern):
            const = value.const
            if const is None:
                if self.explain:
                    self._fail(where, f"%{value.name} is not a constant")
                return
            if pat.value is not None or pat.check is not None or pat.scalar or pat.max_rank is not None or pat.dtype:
                if pat.scalar and const.numel != 1:
                    if self.explain:
                        self._fail(where, f"constant %{value.name} has {const.numel} elements, not a scalar")
                    return
                why = pat.refuse(const.numpy(), const.dtype)
                if why is not None:
                    if self.explain:
                        self._fail(where, f"constant %{value.name}: {why}")
                    return
        elif not isinstance(pat, (Var, AnyValue)):
            raise TypeError(f"unknown value pattern {pat!r}")
        fresh = self._bind_name(pat.name, value)
        if fresh is False:
            if self.explain:
                self._fail(where, f"%{value.name} is not the value {pat.name!r} matched before")
            return
        try:
            yield
        finally:
            self._unbind(pat.name, fresh)


__all__ = ["Match", "Matcher"]
