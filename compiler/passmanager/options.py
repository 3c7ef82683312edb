"""Typed pass options: how a dataclass field reads from and prints to a pipeline string.

A pass's options are its dataclass ``init`` fields.  Each field's annotation
decides how its value is written inside ``{...}`` in a pipeline string:

==========================  ==========================  ====================
annotation                  written as                  example
==========================  ==========================  ====================
``bool``                    ``true`` / ``false``        ``per-channel=true``
``int``                     decimal (``0x`` accepted)   ``limit=1024``
``float``                   Python float literal        ``percentile=99.99``
``str``                     bare, or ``"quoted"``       ``calibrator=entropy``
``Literal["a", "b"]``       one of the choices          ``mode=a``
an ``enum.Enum``            the member's value or name  ``layout=nhwc``
``list[T]``/``tuple[T, ...]`` items joined by ``,``     ``ops=Relu,Clip``
``T | None``                ``none`` for ``None``       ``max-iter=none``
==========================  ==========================  ====================

A value that contains a space, a comma, a brace, a parenthesis, ``=``,
``"`` or ``\\`` (or is empty) is written in double quotes with ``\\"`` and
``\\\\`` escapes.  An empty list is written as nothing (``ops=``).  The
field's ``metadata["doc"]`` is its help text.  Anything else (arrays,
calibration data, the target) belongs on :class:`~kiln.passmanager.base.PassContext`.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

MISSING: Any = dataclasses.MISSING


class _Required:
    """The default of an option that has none (``dataclasses.MISSING`` cannot be a field default)."""

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()

_NEEDS_QUOTES = frozenset(' \t\r\n{}(),"=\\')


class RawItem(NamedTuple):
    """One comma-separated piece of an option value as the pipeline lexer saw it."""

    text: str
    quoted: bool
    pos: int


class OptionValueError(ValueError):
    """A value that does not fit its option's type; ``pos`` is where in the pipeline text."""

    def __init__(self, message: str, pos: int) -> None:
        super().__init__(message)
        self.pos = pos


def quote(text: str) -> str:
    """``text`` as a pipeline value: bare when it can be, else double-quoted."""
    if text and not any(c in _NEEDS_QUOTES or c.isspace() or not c.isprintable() for c in text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --------------------------------------------------------------------------- scalar kinds


@dataclass(frozen=True)
class _Scalar:
    """How one scalar type parses and prints."""

    name: str
    parse: Callable[[str], Any]
    format: Callable[[Any], str]


def _parse_bool(text: str) -> bool:
    if text in ("true", "1"):
        return True
    if text in ("false", "0"):
        return False
    raise ValueError(text)


def _parse_int(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        return int(text, 10)  # "010" is ten, not an error


_BOOL = _Scalar("bool", _parse_bool, lambda v: "true" if v else "false")
_INT = _Scalar("int", _parse_int, lambda v: str(int(v)))
_FLOAT = _Scalar("float", float, lambda v: repr(float(v)))
_STR = _Scalar("str", str, lambda v: quote(str(v)))


def _choice_kind(choices: tuple[Any, ...]) -> _Scalar:
    by_text = {str(c): c for c in choices}

    def parse(text: str) -> Any:
        return by_text[text]

    return _Scalar("one of " + "|".join(by_text), parse, lambda v: quote(str(v)))


def _enum_kind(cls: type[enum.Enum]) -> _Scalar:
    by_text: dict[str, enum.Enum] = {}
    for member in cls:
        by_text.setdefault(
            str(member.value) if isinstance(member.value, str) else member.name.lower(), member
        )
    for member in cls:
        by_text.setdefault(member.name, member)
        by_text.setdefault(str(member.value), member)

    def parse(text: str) -> Any:
        return by_text[text]

    def fmt(member: Any) -> str:
        return quote(member.value if isinstance(member.value, str) else member.name.lower())

    shown = [t for t, m in by_text.items() if fmt(m) == quote(t)]
    return _Scalar("one of " + "|".join(shown), parse, fmt)


def _scalar_kind(tp: Any) -> _Scalar | None:
    if tp is bool:
        return _BOOL
    if tp is int:
        return _INT
    if tp is float:
        return _FLOAT
    if tp is str:
        return _STR
    if typing.get_origin(tp) is Literal:
        choices = typing.get_args(tp)
        if all(isinstance(c, (str, int)) and not isinstance(c, bool) for c in choices):
            return _choice_kind(choices)
        return None
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _enum_kind(tp)
    return None


# --------------------------------------------------------------------------- option specs


@dataclass(frozen=True)
class OptionSpec:
    """One pass option: its field, pipeline key, type and help.

    Attributes:
        name: the dataclass field name (``per_channel``).
        key: how pipelines spell it (``per-channel``).
        kind: the scalar type (of the items, for lists).
        container: ``list`` or ``tuple`` for list options, else ``None``.
        nullable: whether ``none`` is accepted (``T | None``).
        default: the default value, or ``REQUIRED``.
        doc: the help text (``field(metadata={"doc": ...})``).
    """

    name: str
    key: str
    kind: _Scalar
    container: type | None = None
    nullable: bool = False
    default: Any = REQUIRED
    doc: str = ""

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def type_text(self) -> str:
        """The expected type in words, as error messages and ``kiln passes`` show it."""
        text = f"list of {self.kind.name} (a,b,c)" if self.container is not None else self.kind.name
        return text + " or none" if self.nullable else text

    def convert(self, items: Sequence[RawItem], pos: int) -> Any:
        """The typed value of ``items`` (the value split at unquoted commas).

        Raises:
            OptionValueError: the value does not fit; its ``pos`` points at the bad item.
        """
        if self.container is not None:
            if len(items) == 1 and self.nullable and _is_none(items[0]):
                return None
            values = []
            for item in items:
                if not item.text and not item.quoted:
                    raise OptionValueError(f"expects {self.type_text()}, got an empty item", item.pos)
                values.append(self._scalar(item))
            return self.container(values)
        if len(items) != 1:
            if not items:
                if self.kind is _STR:
                    return ""
                raise OptionValueError(f"expects {self.type_text()}, got an empty value", pos)
            hint = ""
            if any("=" in item.text and not item.quoted for item in items[1:]):
                hint = "; options are separated by spaces, not commas: {a=1 b=2}"
            elif self.kind is _STR:
                hint = '; quote a value that contains commas: "a,b"'
            raise OptionValueError(
                f"expects one {self.type_text()}, got {len(items)} comma-separated items{hint}", items[1].pos
            )
        item = items[0]
        if self.nullable and _is_none(item):
            return None
        return self._scalar(item)

    def _scalar(self, item: RawItem) -> Any:
        try:
            return self.kind.parse(item.text)
        except (KeyError, ValueError):
            raise OptionValueError(f"expects {self.type_text()}, got {quote(item.text)}", item.pos) from None

    def format(self, value: Any) -> str:
        """The canonical text of ``value`` (what follows ``key=``)."""
        if value is None and self.nullable:
            return "none"
        if self.container is not None:
            return ",".join(self._format_item(v) for v in value)
        return self._format_item(value)

    def _format_item(self, value: Any) -> str:
        text = self.kind.format(value)
        if text == "none" and self.nullable:
            return '"none"'
        return text


def _is_none(item: RawItem) -> bool:
    return item.text == "none" and not item.quoted


def kebab(name: str) -> str:
    """``per_channel`` -> ``per-channel``."""
    return name.replace("_", "-")


def _spec_for(field: dataclasses.Field, tp: Any, owner: str) -> OptionSpec:
    nullable = False
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(members) == 1 and len(typing.get_args(tp)) == 2:
            nullable, tp = True, members[0]
            origin = typing.get_origin(tp)
    container: type | None = None
    if origin in (list, tuple, Sequence):
        args: tuple[Any, ...] = typing.get_args(tp)
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            args = ()
        if args:
            container, tp = (list if origin is list else tuple), args[0]
    kind = _scalar_kind(tp)
    if kind is None:
        raise TypeError(
            f"option {field.name!r} of {owner} has type {tp!r}, which a pipeline string cannot carry "
            "(use bool, int, float, str, Literal, an Enum, list/tuple of those, or T | None; "
            "put anything else on the PassContext)"
        )
    if field.default is not MISSING:
        default = field.default
    elif field.default_factory is not MISSING:
        default = field.default_factory()  # type: ignore[misc,operator]
    else:
        default = REQUIRED
    return OptionSpec(
        name=field.name,
        key=kebab(field.name),
        kind=kind,
        container=container,
        nullable=nullable,
        default=default,
        doc=str(field.metadata.get("doc", "")),
    )


@functools.cache
def option_specs(cls: type) -> tuple[OptionSpec, ...]:
    """The options of pass class ``cls``, in declaration order.

    Raises:
        TypeError: an option's annotation cannot be resolved or is not a pipeline type.
    """
    if not dataclasses.is_dataclass(cls):
        return ()
    fields = [f for f in dataclasses.fields(cls) if f.init]
    if not fields:
        return ()
    owner = f"pass {getattr(cls, 'name', '') or cls.__qualname__!r}"
    unresolved: Exception | None = None
    try:
        hints = typing.get_type_hints(cls)
    except Exception as exc:  # noqa: BLE001 - NameError and friends from string annotations
        hints, unresolved = {}, exc
    specs = []
    for f in fields:
        tp = hints.get(f.name, f.type)
        if isinstance(tp, str):
            raise TypeError(
                f"cannot resolve the annotation {tp!r} of option {f.name!r} of {owner}: {unresolved}"
            )
        specs.append(_spec_for(f, tp, owner))
    return tuple(specs)


def describe_default(spec: OptionSpec) -> str:
    """The default as pipeline text, or ``required``."""
    if spec.required:
        return "required"
    value = spec.default
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    text = spec.format(value)
    if not text:
        return "(empty)" if spec.container is not None else '""'
    return text
