"""Value types: tensors with static or symbolic dims, sequences and optionals.

A dim is an ``int`` (static), a ``str`` (a named symbol such as ``N`` or
``seq``) or ``None`` (unknown, unnamed).  A shape of ``None`` means the rank
itself is unknown.  Types are immutable and compare by value.

Text form (used by the IR printer and parser)::

    f32[N,3,224,224]    tensor, symbolic batch
    i64[]               scalar
    f16[?,128]          first dim unknown
    f32[...]            rank unknown
    f32["2*s0",3]       a symbol that is not an identifier is quoted (JSON escapes)
    seq<f32[3]>         sequence of tensors
    opt<i64[2]>         optional tensor
    ?                   nothing known
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Union

from kiln.ir.dtypes import DType

Dim = Union[int, str, None]
Shape = tuple[Dim, ...]


@dataclass(frozen=True, slots=True)
class TensorType:
    """A tensor's element type and shape (``shape=None``: rank unknown)."""

    dtype: DType
    shape: Shape | None = None

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    @property
    def is_static(self) -> bool:
        """True when every dim is a known integer."""
        return self.shape is not None and all(isinstance(d, int) for d in self.shape)

    def numel(self) -> int | None:
        """Element count, or ``None`` when a dim is not static."""
        if not self.is_static:
            return None
        return math.prod(self.shape)  # type: ignore[arg-type]

    def nbytes(self) -> int | None:
        """Bytes of a dense buffer holding this tensor, or ``None`` if not static."""
        n = self.numel()
        if n is None:
            return None
        return (n * self.dtype.itemsize_bits + 7) // 8

    def with_shape(self, shape: Shape | None) -> "TensorType":
        return TensorType(self.dtype, shape)

    def with_dtype(self, dtype: DType) -> "TensorType":
        return TensorType(dtype, self.shape)

    def __str__(self) -> str:
        if self.shape is None:
            return f"{self.dtype.short}[...]"
        return f"{self.dtype.short}[{','.join(format_dim(d) for d in self.shape)}]"


@dataclass(frozen=True, slots=True)
class SequenceType:
    """An ONNX sequence whose elements have type ``elem`` (or unknown)."""

    elem: "Type | None"

    def __str__(self) -> str:
        return f"seq<{self.elem if self.elem is not None else '?'}>"


@dataclass(frozen=True, slots=True)
class OptionalType:
    """An ONNX optional wrapping ``elem``."""

    elem: "Type | None"

    def __str__(self) -> str:
        return f"opt<{self.elem if self.elem is not None else '?'}>"


Type = Union[TensorType, SequenceType, OptionalType]


_SYMBOL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def format_dim(dim: Dim) -> str:
    if dim is None:
        return "?"
    if isinstance(dim, str) and not _SYMBOL.fullmatch(dim):
        return json.dumps(dim, ensure_ascii=not dim.isprintable())
    return str(dim)


def _split_dims(body: str) -> list[str]:
    """Splits a shape body at the commas that are not inside a quoted symbol."""
    if '"' not in body:
        return body.split(",")
    parts: list[str] = []
    start, quoted, escaped = 0, False, False
    for i, c in enumerate(body):
        if escaped:
            escaped = False
        elif quoted and c == "\\":
            escaped = True
        elif c == '"':
            quoted = not quoted
        elif c == "," and not quoted:
            parts.append(body[start:i])
            start = i + 1
    parts.append(body[start:])
    return parts


def format_type(t: "Type | None") -> str:
    return "?" if t is None else str(t)


def parse_type(text: str) -> "Type | None":
    """Parses the text form above; raises ``ValueError`` on malformed text."""
    text = text.strip()
    if text == "?":
        return None
    for prefix, cls in (("seq<", SequenceType), ("opt<", OptionalType)):
        if text.startswith(prefix):
            if not text.endswith(">"):
                raise ValueError(f"malformed type {text!r}")
            return cls(parse_type(text[len(prefix) : -1]))
    lb = text.find("[")
    if lb < 0 or not text.endswith("]"):
        raise ValueError(f"malformed type {text!r}")
    dtype = DType.from_short(text[:lb])
    body = text[lb + 1 : -1]
    if body == "...":
        return TensorType(dtype, None)
    if body == "":
        return TensorType(dtype, ())
    dims: list[Dim] = []
    for part in _split_dims(body):
        part = part.strip()
        if part.startswith('"'):
            try:
                sym = json.loads(part)
            except ValueError:
                raise ValueError(f"malformed dim {part!r} in type {text!r}") from None
            if not isinstance(sym, str):
                raise ValueError(f"malformed dim {part!r} in type {text!r}")
            dims.append(sym)
        elif part == "?":
            dims.append(None)
        elif part.lstrip("-").isdigit():
            dims.append(int(part))
        elif _SYMBOL.fullmatch(part):
            dims.append(part)
        else:
            raise ValueError(f"malformed dim {part!r} in type {text!r}")
    return TensorType(dtype, tuple(dims))
