"""Rules: declarative (pattern + check + replacement) and imperative, and rule sets.

A declarative :class:`Rule` is three functions over named captures::

    @rule("fold-mul-mul")
    def mul_mul(op, x, a=P.const(), b=P.const()):   # the pattern; parameters are captures
        return op.Mul(op.Mul(x, a, _outputs=["inner"]), b)

    @mul_mul.check
    def _(ctx, inner):                                # True/None: go on; a string: why not
        return len(inner.uses) == 1 or "the inner Mul has other users"

    @mul_mul.replace
    def _(op, x, a, b):                               # builds the replacement
        return op.Mul(x, op.const(a.numpy() * b.numpy()))

The check and the replacement declare the captures they want as parameters
(``**captures`` takes all).  The replacement's result (a value, or one per
pattern output) replaces the root's outputs; the matched nodes that are left
without users are erased.  New nodes get ``Location.fused`` of the matched
nodes and the rule's name.

An imperative rule subclasses :class:`RewritePattern` and implements
``match_and_rewrite(node, rewriter) -> bool`` for rewrites that need analysis.
A :class:`RuleSet` holds rules of both kinds, indexed by root op; sets
compose with ``+``.
"""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from kiln.ir.core import Attr, Graph, Node, Value, canonical_domain
from kiln.rewrite.matcher import Match, Matcher
from kiln.rewrite.pattern import NodeOutput, NodePattern, PatternBuilder, ValuePattern, Var, capture_names
from kiln.rewrite.rewriter import Rewriter, RewriteRefused

if TYPE_CHECKING:
    from kiln.passmanager.base import Pass, PassContext

_RULE_NAME = re.compile(r"[a-z][a-z0-9]*(?:[-.][a-z0-9]+)*\Z")


def attrs_of(node: Node, *, drop: Iterable[str] = ()) -> dict[str, Attr]:
    """``node``'s attributes (typed, ready for ``op.X(..., **attrs_of(node))``), minus ``drop``."""
    dropped = set(drop)
    return {k: a for k, a in node.attrs.items() if k not in dropped}


@dataclass
class MatchContext:
    """What a check function sees besides the captures.

    Attributes:
        root: the node the pattern's root matched.
        nodes: every matched node, root first.
        graph: the graph of the root.
        pass_ctx: the pass context (target, stats ...), or ``None``.
        captures: all captures by name.
    """

    root: Node
    nodes: list[Node]
    graph: Graph
    pass_ctx: PassContext | None
    captures: dict[str, Any]

    def is_output(self, value: Value) -> bool:
        """Whether ``value`` is an output of its graph."""
        return value.graph is not None and value.graph.is_output(value)

    def one_use(self, value: Value) -> bool:
        """Exactly one use, and not a graph output."""
        return len(value.uses) == 1 and not self.is_output(value)


class RuleBase:
    """What the driver needs of a rule: a name, the root ops, and ``try_apply``."""

    name: str = ""

    def root_ops(self) -> list[tuple[str, str]] | None:
        """``(domain, op)`` pairs the rule can be rooted at; ``None``: every node."""
        raise NotImplementedError

    def try_apply(self, node: Node, rewriter: Rewriter, ctx: PassContext | None, explain: bool) -> bool:
        """Rewrites at ``node`` and returns ``True``, or records why not in ``rewriter.last_reason``."""
        raise NotImplementedError


def _call_with_captures(fn: Callable[..., Any], first: Any, captures: dict[str, Any], wanted: list[str] | None) -> Any:
    if wanted is None:
        return fn(first, **captures)
    return fn(first, **{k: captures.get(k) for k in wanted})


def _wanted(fn: Callable[..., Any], available: list[str], rule: str, what: str) -> list[str] | None:
    """The capture names ``fn`` takes after its first parameter (``None``: it takes ``**captures``)."""
    params = list(inspect.signature(fn).parameters.values())
    if not params:
        raise TypeError(f"rule {rule!r}: the {what} must take the builder/context as its first parameter")
    wanted: list[str] = []
    for p in params[1:]:
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            return None
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            raise TypeError(f"rule {rule!r}: the {what} cannot take *args; name the captures it wants")
        if p.name not in available and p.default is inspect.Parameter.empty:
            raise TypeError(
                f"rule {rule!r}: the {what} takes {p.name!r}, which the pattern does not capture "
                f"(captures: {', '.join(available) or 'none'})"
            )
        if p.name in available:
            wanted.append(p.name)
    return wanted


class Rule(RuleBase):
    """A declarative rewrite: pattern function, check, replacement.

    Args:
        name: kebab-case rule name (statistics, ``--debug-rules``, fused locations).
        pattern: ``fn(op, *captures)``; parameters after ``op`` are captures,
            a parameter's default may be a value pattern (``a=P.const()``).
        replacement: ``fn(op, **captures)`` -> the new value(s).
        check: ``fn(ctx, **captures)`` -> ``True``/``None`` to accept, ``False``
            or a string (the reason) to refuse.
        one_use: every matched node but the root must have its outputs used
            exactly once (so the rewrite never duplicates work).
        domain: default domain of the pattern's ops.
    """

    def __init__(
        self,
        name: str,
        pattern: Callable[..., Any],
        replacement: Callable[..., Any] | None = None,
        check: Callable[..., Any] | None = None,
        *,
        one_use: bool = False,
        domain: str = "",
    ) -> None:
        if not isinstance(name, str) or not _RULE_NAME.match(name):
            raise ValueError(f"rule name {name!r} must be kebab-case (fuse-conv-relu)")
        self.name = name
        self.pattern_fn = pattern
        self.one_use = one_use
        self.root, self.outputs = self._build(pattern, domain)
        self.captures = capture_names(self.root)
        self.matcher = Matcher(self.root, self.outputs, rule_one_use=one_use)
        self._check: Callable[..., Any] | None = None
        self._check_args: list[str] | None = []
        self._replace: Callable[..., Any] | None = None
        self._replace_args: list[str] | None = []
        if check is not None:
            self.check(check)
        if replacement is not None:
            self.replace(replacement)
        self.__doc__ = pattern.__doc__

    def _build(self, fn: Callable[..., Any], domain: str) -> tuple[NodePattern, list[NodeOutput]]:
        params = list(inspect.signature(fn).parameters.values())
        if not params:
            raise TypeError(f"rule {self.name!r}: a pattern function takes the pattern builder first")
        args: list[ValuePattern] = []
        for p in params[1:]:
            if p.kind not in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
                raise TypeError(f"rule {self.name!r}: pattern parameters are plain names (captures), not {p}")
            default = p.default
            if default is inspect.Parameter.empty:
                args.append(Var(p.name))
            elif isinstance(default, ValuePattern):
                args.append(default if default.name else default.named(p.name))
            else:
                raise TypeError(f"rule {self.name!r}: the default of {p.name!r} must be a pattern (P.const() ...)")
        result = fn(PatternBuilder(domain), *args)
        outs = list(result) if isinstance(result, (tuple, list)) else [result]
        if not outs or not all(isinstance(o, NodeOutput) for o in outs):
            raise TypeError(f"rule {self.name!r}: a pattern function must return the output(s) of an op pattern")
        root = outs[0].node
        if any(o.node is not root for o in outs):
            raise TypeError(f"rule {self.name!r}: all returned outputs must come from one (root) op pattern")
        return root, outs

    # ---- decorators

    def check(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Decorator: sets the check (``fn(ctx, **captures)``); returns ``fn``."""
        self._check_args = _wanted(fn, self.captures, self.name, "check")
        self._check = fn
        return fn

    def replace(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Decorator: sets the replacement (``fn(op, **captures)``); returns ``fn``."""
        self._replace_args = _wanted(fn, self.captures, self.name, "replacement")
        self._replace = fn
        return fn

    # ---- driver interface

    def root_ops(self) -> list[tuple[str, str]]:
        return [(self.root.domain, op) for op in sorted(self.root.ops)]

    def matches(self, node: Node, *, explain: bool = False) -> Iterator[Match]:
        """Every structural match at ``node`` (before the check)."""
        return self.matcher.matches(node, explain=explain)

    def try_apply(self, node: Node, rewriter: Rewriter, ctx: PassContext | None, explain: bool) -> bool:
        if self._replace is None:
            raise TypeError(f"rule {self.name!r} has no replacement (decorate one with @{self.pattern_fn.__name__}.replace)")
        reason = ""
        for match in self.matcher.matches(node, explain=explain):
            if self._check is not None:
                mctx = MatchContext(node, match.nodes, node.graph, ctx, match.captures)  # type: ignore[arg-type]
                verdict = _call_with_captures(self._check, mctx, match.captures, self._check_args)
                if verdict is not None and verdict is not True:
                    reason = verdict if isinstance(verdict, str) else "refused by the check"
                    continue
            done, why = self._rewrite(match, rewriter)
            if done:
                return True
            reason = why
        rewriter.last_reason = reason or self.matcher.reason
        return False

    def _rewrite(self, match: Match, rewriter: Rewriter) -> tuple[bool, str]:
        root = match.root
        graph = root.graph
        assert graph is not None and self._replace is not None
        op = rewriter.builder(graph, before=root, fused_from=match.nodes)
        start = len(rewriter.created_now)
        try:
            result = _call_with_captures(self._replace, op, match.captures, self._replace_args)
        except RewriteRefused as exc:
            _undo(op.created, op.constants, graph)
            del rewriter.created_now[start:]
            return False, str(exc) or "the replacement declined"
        if result is None:
            _undo(op.created, op.constants, graph)
            del rewriter.created_now[start:]
            return False, "the replacement declined"
        news = list(result) if isinstance(result, (tuple, list)) else [result]
        if len(news) != len(match.outputs):
            raise ValueError(
                f"rule {self.name!r}: the replacement gave {len(news)} values for {len(match.outputs)} pattern outputs"
            )
        if not op.created and all(old is new for old, new in zip(match.outputs, news)):
            return False, "the replacement returned the matched value itself"
        for old, new in zip(match.outputs, news):
            if not isinstance(new, Value):
                raise TypeError(f"rule {self.name!r}: the replacement returned {type(new).__name__}, not a Value")
            if not rewriter.can_replace(old, new):
                _undo(op.created, op.constants, graph)
                del rewriter.created_now[start:]
                return False, f"%{old.name} is a graph output and %{new.name} cannot take its name"
        _name_created(op.created, root, news)
        for old, new in zip(match.outputs, news):
            rewriter.replace_value(old, new)
        rewriter.erase_dead(match.nodes)
        _inherit_names(graph, match.outputs, news, op.created)
        rewriter.applied(root, match.nodes)
        return True, ""

    def __repr__(self) -> str:
        return f"<Rule {self.name}: {self.root.describe()}>"


def _undo(created: list[Node], constants: list[Value], graph: Graph) -> None:
    for node in reversed(created):
        if node.graph is not None:
            node.graph.remove_node(node, force=True)
    for value in constants:
        if value.graph is not None and not value.uses:
            value.graph.remove_constant(value)


def _inherit_names(graph: Graph, olds: list[Value], news: list[Value], created: list[Node]) -> None:
    """A new value takes the name of the value it replaced, once that one is gone (readable output)."""
    made = {id(n) for n in created}
    for old, new in zip(olds, news):
        if old.graph is not None or new.producer is None or id(new.producer) not in made or graph.is_output(new):
            continue
        try:
            graph.rename_value(new, old.name)
        except ValueError:
            pass  # the name was taken again meanwhile


def _name_created(created: list[Node], root: Node, news: list[Value]) -> None:
    """The node that stands for the root takes its name; other new nodes get derived ones."""
    main = news[0].producer if news else None
    for node in created:
        if node.name:
            continue
        if node is main or len(created) == 1:
            node.name = root.name
        elif root.name:
            node.name = f"{root.name}/{node.op.lower()}"


def rule(name: str, *, one_use: bool = False, domain: str = "") -> Callable[[Callable[..., Any]], Rule]:
    """Decorator: the function is the pattern of a new :class:`Rule` named ``name``.

    Add the replacement with ``@<rule>.replace`` and a check with ``@<rule>.check``.
    """

    def make(fn: Callable[..., Any]) -> Rule:
        return Rule(name, fn, one_use=one_use, domain=domain)

    return make


class RewritePattern(RuleBase):
    """An imperative rule: subclass, set ``name`` and ``roots``, implement ``match_and_rewrite``.

    ``roots`` lists the ops (in ``domain``) the rule is tried on; empty means
    every node.  ``match_and_rewrite`` makes its changes through the
    ``rewriter`` and returns ``True``, or ``return rewriter.refuse("why")``::

        class DropDoubleNeg(RewritePattern):
            name = "drop-double-neg"
            roots = ("Neg",)

            def match_and_rewrite(self, node, rewriter):
                inner = node.input(0).producer
                if inner is None or not inner.is_op("Neg"):
                    return rewriter.refuse("input is not a Neg")
                rewriter.replace_value(node.outputs[0], inner.input(0))
                rewriter.erase_dead([node, inner])
                return True
    """

    name: ClassVar[str] = ""  # type: ignore[misc]
    roots: ClassVar[tuple[str, ...]] = ()
    domain: ClassVar[str] = ""

    def root_ops(self) -> list[tuple[str, str]] | None:
        if not self.roots:
            return None
        d = canonical_domain(self.domain)
        return [(d, op) for op in self.roots]

    def match_and_rewrite(self, node: Node, rewriter: Rewriter) -> bool:
        raise NotImplementedError

    def try_apply(self, node: Node, rewriter: Rewriter, ctx: PassContext | None, explain: bool) -> bool:
        rewriter.last_reason = ""
        self.pass_ctx = ctx
        try:
            done = bool(self.match_and_rewrite(node, rewriter))
        except RewriteRefused as exc:
            rewriter.last_reason = str(exc)
            return False
        if done:
            rewriter.applied(node, [node])
        elif not rewriter.last_reason:
            rewriter.last_reason = "no match"
        return done

    def __repr__(self) -> str:
        return f"<RewritePattern {self.name}>"


class RuleSet:
    """An ordered collection of rules, indexed by root op; ``a + b`` concatenates.

    Earlier rules are tried first at a node.  Two different rules with one
    name are an error (statistics are kept by name).
    """

    def __init__(self, rules: Iterable[RuleBase | RuleSet] = (), *, name: str = "") -> None:
        flat: list[RuleBase] = []
        for r in rules:
            if isinstance(r, RuleSet):
                flat.extend(r.rules)
            elif isinstance(r, RuleBase):
                flat.append(r)
            else:
                raise TypeError(f"a RuleSet holds rules, not {type(r).__name__}")
        seen: dict[str, RuleBase] = {}
        unique: list[RuleBase] = []
        for r in flat:
            if not r.name:
                raise ValueError(f"{r!r} has no name")
            other = seen.get(r.name)
            if other is r:
                continue
            if other is not None:
                raise ValueError(f"two different rules are named {r.name!r}: {other!r} and {r!r}")
            seen[r.name] = r
            unique.append(r)
        self.rules: tuple[RuleBase, ...] = tuple(unique)
        self.name = name
        self._index: dict[tuple[str, str], list[RuleBase]] | None = None
        self._any: list[RuleBase] = []

    def __add__(self, other: RuleSet | RuleBase | Sequence[RuleBase]) -> RuleSet:
        if isinstance(other, RuleBase):
            return RuleSet([*self.rules, other])
        if isinstance(other, RuleSet):
            return RuleSet([*self.rules, *other.rules])
        return RuleSet([*self.rules, *other])

    def __iter__(self) -> Iterator[RuleBase]:
        return iter(self.rules)

    def __len__(self) -> int:
        return len(self.rules)

    def __getitem__(self, name: str) -> RuleBase:
        for r in self.rules:
            if r.name == name:
                return r
        raise KeyError(name)

    def names(self) -> list[str]:
        return [r.name for r in self.rules]

    def candidates(self, node: Node) -> list[RuleBase]:
        """The rules to try at ``node``, in order (an index lookup by ``(domain, op)``)."""
        index = self._index
        if index is None:
            index = self._build_index()
        key = (node.domain, node.op)
        found = index.get(key)
        if found is None:
            if not self._any:
                return []
            found = index[key] = list(self._any)
        return found

    def _build_index(self) -> dict[tuple[str, str], list[RuleBase]]:
        """(domain, op) -> rules rooted there, wildcard rules merged in, in set order."""
        keyed: dict[tuple[str, str], set[int]] = {}
        self._any = []
        for r in self.rules:
            roots = r.root_ops()
            if roots is None:
                self._any.append(r)
                continue
            for key in roots:
                keyed.setdefault(key, set()).add(id(r))
        index: dict[tuple[str, str], list[RuleBase]] = {}
        for key, ids in keyed.items():
            index[key] = [r for r in self.rules if id(r) in ids or r.root_ops() is None]
        self._index = index
        return index

    def apply(self, graph: Graph, ctx: PassContext | None = None, **options: Any) -> int:
        """Runs the greedy driver to a fixed point; returns the number of rewrites.

        ``options`` go to :class:`~kiln.rewrite.driver.GreedyRewriteDriver`.
        """
        from kiln.rewrite.driver import GreedyRewriteDriver

        return GreedyRewriteDriver(self, ctx, **options).run(graph)

    def as_pass(self, name: str, summary: str = "", *, doc: str | None = None) -> type[Pass]:
        """A Pass class (not yet registered) that applies this set: ``register_pass(RULES.as_pass("x", "..."))``."""
        from kiln.rewrite.passes import rules_pass

        module = sys._getframe(1).f_globals.get("__name__", __name__)
        return rules_pass(name, self, summary, doc=doc, module=module)

    def __repr__(self) -> str:
        return f"RuleSet({', '.join(self.names())})"


__all__ = ["MatchContext", "RewritePattern", "Rule", "RuleBase", "RuleSet", "attrs_of", "rule"]
