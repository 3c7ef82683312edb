"""The pattern language: value and node patterns, and the builder that makes them.

A pattern is written with the same call-per-op style as the replacement
(:class:`~kiln.ops.builder.OpBuilder`), but it builds a tree of
:class:`NodePattern` and :class:`ValuePattern` objects instead of nodes::

    op.Relu(op.Conv(x, w, _allow_other_inputs=True, _outputs=["conv"]))

Value patterns:

* :class:`Var` -- any present value, captured under a name; a name used twice
  must match the very same value both times.
* :class:`AnyValue` (``P.any()``) -- any present value, not captured.
* :class:`ConstPattern` (``P.const()``, ``P.scalar(v)``) -- a constant, with
  optional dtype/rank/size/predicate checks; captured as the constant
  :class:`~kiln.ir.core.Value` (``.numpy()`` gives the data).
* :class:`OptionalPattern` (``P.optional(p)``) -- an omitted input (captured
  as ``None``) or whatever ``p`` matches.
* :class:`Variadic` (``P.variadic(name)``) -- as the last input: all the
  remaining inputs, captured as a tuple (possibly empty).
* :class:`NodeOutput` -- output ``i`` of a node matching a :class:`NodePattern`.
* ``None`` as an input -- the input must be omitted.

Node patterns match ``domain.op`` (one op name or a set of them), an exact
number of inputs unless ``_allow_other_inputs``, attribute constraints and,
for Add/Mul/And/Or/Xor/Max/Min/Sum/Equal, either input order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from kiln.ir.core import canonical_domain, domain_text
from kiln.ir.dtypes import DType

COMMUTATIVE_OPS = frozenset(
    {"Add", "Mul", "And", "Or", "Xor", "Max", "Min", "Sum", "Mean", "Equal",
     "BitwiseAnd", "BitwiseOr", "BitwiseXor"}
)
"""ONNX ops whose inputs may come in any order; their patterns try every order (up to 3 inputs)."""


class ValuePattern:
    """Base of the patterns that match one value (an input of a node)."""

    name: str | None = None

    def named(self, name: str) -> ValuePattern:
        """This pattern, captured under ``name`` (a fresh copy for unnamed patterns)."""
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.describe()


@dataclass(eq=False, repr=False)
class Var(ValuePattern):
    """Any present value, captured as ``name``."""

    name: str | None

    def named(self, name: str) -> Var:
        return Var(name)

    def describe(self) -> str:
        return self.name or "_"


@dataclass(eq=False, repr=False)
class AnyValue(ValuePattern):
    """Any present value (not captured, unless given a name)."""

    name: str | None = None

    def named(self, name: str) -> AnyValue:
        return AnyValue(name)

    def describe(self) -> str:
        return self.name or "?"


@dataclass(eq=False, repr=False)
class ConstPattern(ValuePattern):
    """A constant value.

    Attributes:
        name: capture name (the constant ``Value`` is captured).
        value: when set, every element must equal it (``P.scalar``).
        scalar: the constant must hold exactly one element.
        dtype: required element type.
        max_rank: the constant's rank must not exceed it.
        check: a predicate on the numpy data.
    """

    name: str | None = None
    value: float | int | bool | None = None
    scalar: bool = False
    dtype: DType | None = None
    max_rank: int | None = None
    check: Callable[[np.ndarray], bool] | None = None

    def named(self, name: str) -> ConstPattern:
        return ConstPattern(name, self.value, self.scalar, self.dtype, self.max_rank, self.check)

    def describe(self) -> str:
        what = "scalar" if self.scalar else "const"
        arg = "" if self.value is None else repr(self.value)
        return f"{self.name + '=' if self.name else ''}{what}({arg})"

    def refuse(self, data: np.ndarray, dtype: DType | None) -> str | None:
        """Why ``data`` does not fit (``None`` when it does)."""
        if self.dtype is not None and dtype != self.dtype:
            return f"dtype {dtype} is not {self.dtype}"
        if self.scalar and data.size != 1:
            return f"{data.size} elements, not a scalar"
        if self.max_rank is not None and data.ndim > self.max_rank:
            return f"rank {data.ndim} > {self.max_rank}"
        if self.value is not None:
            if data.size == 0 or data.dtype == object:
                return "empty or non-numeric"
            if isinstance(self.value, float) and math.isnan(self.value):
                if not bool(np.all(np.isnan(data))):
                    return "not NaN"
            elif not bool(np.all(data == self.value)):
                return f"value is not {self.value!r}"
        if self.check is not None and not self.check(data):
            return "constant refused by its predicate"
        return None


@dataclass(eq=False, repr=False)
class OptionalPattern(ValuePattern):
    """An omitted input (captured as ``None``) or a value matching ``inner``."""

    inner: ValuePattern

    @property
    def name(self) -> str | None:  # type: ignore[override]
        return self.inner.name

    def named(self, name: str) -> OptionalPattern:
        return OptionalPattern(self.inner.named(name))

    def describe(self) -> str:
        return f"optional({self.inner.describe()})"


@dataclass(eq=False, repr=False)
class Variadic(ValuePattern):
    """The remaining inputs of a node (last position only), captured as a tuple."""

    name: str | None = None

    def named(self, name: str) -> Variadic:
        return Variadic(name)

    def describe(self) -> str:
        return f"*{self.name or ''}"


@dataclass(eq=False, repr=False)
class AttrCapture:
    """An attribute constraint that captures the attribute's effective value as ``name``."""

    name: str
    check: Callable[[Any], bool] | None = None


@dataclass(eq=False, repr=False)
class NodeOutput(ValuePattern):
    """Output ``index`` of a node matching ``node``; captured as ``name`` when set."""

    node: NodePattern
    index: int = 0
    name: str | None = None

    def named(self, name: str) -> NodeOutput:
        raise TypeError("name a node's outputs with _outputs=[...] in the op call")

    def describe(self) -> str:
        return f"{self.node.describe()}[{self.index}]" if len(self.node.outputs) > 1 else self.node.describe()


@dataclass(eq=False, repr=False)
class NodePattern:
    """One node: op name(s), domain, input patterns, attribute constraints.

    Attributes:
        ops: the op names it matches.
        domain: canonical domain (``""`` for ONNX).
        inputs: input patterns (``None``: the input must be omitted).
        attrs: attribute name -> exact value, set of values, predicate, or
            :class:`AttrCapture`; compared with the attribute's effective
            value (the schema default when it is absent).
        allow_other_inputs: more inputs than patterns are fine (ignored).
        outputs: the output patterns (their ``name`` is the capture).
        capture: capture name for the node itself.
        commute: try every input order (defaults to the op being commutative).
        one_use: the matched node's outputs must each have one use (not for the root).
    """

    ops: frozenset[str]
    domain: str
    inputs: tuple[ValuePattern | None, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    allow_other_inputs: bool = False
    outputs: list[NodeOutput] = field(default_factory=list)
    capture: str | None = None
    commute: bool = False
    one_use: bool = False

    def describe(self) -> str:
        ops = "|".join(sorted(self.ops))
        return f"{domain_text(self.domain)}.{ops}"

    def __repr__(self) -> str:
        return f"NodePattern({self.describe()})"

    def walk(self) -> Iterable[NodePattern]:
        """This pattern and every node pattern below it (each once)."""
        seen: set[int] = set()
        stack: list[NodePattern] = [self]
        while stack:
            np_ = stack.pop()
            if id(np_) in seen:
                continue
            seen.add(id(np_))
            yield np_
            for inp in np_.inputs:
                inner = inp.inner if isinstance(inp, OptionalPattern) else inp
                if isinstance(inner, NodeOutput):
                    stack.append(inner.node)


def _to_pattern(value: Any) -> ValuePattern | None:
    if value is None or isinstance(value, ValuePattern):
        return value
    if isinstance(value, (bool, int, float, np.integer, np.floating)):
        return ConstPattern(value=value.item() if isinstance(value, np.generic) else value, scalar=True)
    raise TypeError(f"a pattern input must be a pattern, None or a number, not {type(value).__name__}")


class PatternBuilder:
    """The ``op`` a pattern function receives: ``op.Conv(x, w, group=1)`` builds a node pattern.

    Reserved keywords: ``_domain``, ``_allow_other_inputs``, ``_outputs`` (a
    count or a list of capture names, ``None`` for an uncaptured output),
    ``_node`` (capture name for the node), ``_commute``, ``_one_use``.
    """

    def __init__(self, domain: str = "") -> None:
        self.default_domain = domain

    def op(
        self,
        op: str | Iterable[str],
        *inputs: Any,
        _domain: str | None = None,
        _allow_other_inputs: bool = False,
        _outputs: int | list[str | None] = 1,
        _node: str | None = None,
        _commute: bool | None = None,
        _one_use: bool = False,
        **attrs: Any,
    ) -> Any:
        """A node pattern for ``op`` (a name or a set of names); returns its output pattern(s)."""
        ops = frozenset([op] if isinstance(op, str) else op)
        if not ops:
            raise ValueError("a node pattern needs at least one op name")
        domain = canonical_domain(self.default_domain if _domain is None else _domain)
        pats = tuple(_to_pattern(v) for v in inputs)
        for i, p in enumerate(pats):
            if isinstance(p, Variadic) and i != len(pats) - 1:
                raise ValueError("P.variadic() must be the last input of a node pattern")
        commute = _commute if _commute is not None else (domain == "" and ops <= COMMUTATIVE_OPS)
        node = NodePattern(ops, domain, pats, dict(attrs), _allow_other_inputs, [], _node, commute, _one_use)
        names: list[str | None] = [None] * _outputs if isinstance(_outputs, int) else list(_outputs)
        if not names:
            raise ValueError("a node pattern needs at least one output")
        node.outputs = [NodeOutput(node, i, n) for i, n in enumerate(names)]
        return node.outputs[0] if len(names) == 1 else tuple(node.outputs)

    def __getattr__(self, op: str) -> Any:
        if not op[:1].isupper():
            raise AttributeError(op)

        def make(*inputs: Any, **attrs: Any) -> Any:
            return self.op(op, *inputs, **attrs)

        return make


class P:
    """Pattern helpers: ``P.any()``, ``P.const()``, ``P.scalar(1.0)``, ``P.optional(x)``, ..."""

    @staticmethod
    def var(name: str) -> Var:
        """A captured value (what a pattern function's parameters are)."""
        return Var(name)

    @staticmethod
    def any(name: str | None = None) -> AnyValue:
        """Any present value."""
        return AnyValue(name)

    @staticmethod
    def const(
        name: str | None = None,
        *,
        dtype: DType | None = None,
        max_rank: int | None = None,
        check: Callable[[np.ndarray], bool] | None = None,
    ) -> ConstPattern:
        """A constant (captured as its Value); ``check`` is a predicate on its numpy data."""
        return ConstPattern(name, None, False, dtype, max_rank, check)

    @staticmethod
    def scalar(value: float | bool | None = None, name: str | None = None) -> ConstPattern:
        """A one-element constant, equal to ``value`` when given."""
        return ConstPattern(name, value, True)

    @staticmethod
    def optional(inner: ValuePattern | None = None) -> OptionalPattern:
        """An input that may be omitted (captured as ``None`` then)."""
        return OptionalPattern(inner if inner is not None else AnyValue())

    @staticmethod
    def variadic(name: str | None = None) -> Variadic:
        """All the remaining inputs (last position only), captured as a tuple."""
        return Variadic(name)

    @staticmethod
    def attr(name: str, check: Callable[[Any], bool] | None = None) -> AttrCapture:
        """As an attribute constraint: captures the attribute's effective value as ``name``."""
        return AttrCapture(name, check)


def capture_names(root: NodePattern) -> list[str]:
    """Every capture name a pattern binds, in a stable order."""
    names: list[str] = []

    def add(name: str | None) -> None:
        if name and name not in names:
            names.append(name)

    for node in root.walk():
        add(node.capture)
        for out in node.outputs:
            add(out.name)
        for constraint in node.attrs.values():
            if isinstance(constraint, AttrCapture):
                add(constraint.name)
        for inp in node.inputs:
            if inp is not None and not isinstance(inp, NodeOutput):
                add(inp.name)
    return names


__all__ = [
    "COMMUTATIVE_OPS",
    "AnyValue",
    "AttrCapture",
    "ConstPattern",
    "NodeOutput",
    "NodePattern",
    "OptionalPattern",
    "P",
    "PatternBuilder",
    "ValuePattern",
    "Var",
    "Variadic",
    "capture_names",
]
