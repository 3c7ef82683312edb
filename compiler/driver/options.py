"""Parsing and checking of the driver's option values: shapes, sizes, files.

All raise :class:`kiln.errors.UsageError` naming the flag, so a typo costs
one clear line, not a traceback.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from kiln.errors import UsageError

InputShapes = dict[str, tuple[int | str, ...]]
DimRange = tuple[int, int, int]
"""``(min, opt, max)`` of one dim, from ``MIN..MAX`` or ``MIN..OPT..MAX`` (TensorRT profiles)."""
ShapeRanges = dict[str, tuple[int | str | DimRange, ...]]

_SYMBOL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_SIZE = re.compile(r"(\d+)\s*([kmgt]?)(i?b)?\Z", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_input_shape(text: str, flag: str = "--input-shape") -> tuple[str, tuple[int | str, ...]]:
    """Parses ``NAME:D,D,...``; each D is a non-negative int or a symbol name.

    The name is split at the last ``:`` so names such as ``input:0`` work.
    """
    name, sep, body = text.rpartition(":")
    if not sep or not name:
        raise UsageError(f"{flag} {text!r}: expected NAME:D,D,... (for example x:1,3,224,224)")
    if not body.strip():
        raise UsageError(f"{flag} {text!r}: no dims after {name!r}:")
    dims: list[int | str] = []
    for part in body.split(","):
        part = part.strip()
        if ".." in part:
            raise UsageError(f"{flag} {text!r}: dim {part!r} is a range; ranges (MIN..MAX) are only for -t tensorrt")
        if part.isdigit():
            dims.append(int(part))
        elif _SYMBOL.match(part):
            dims.append(part)
        else:
            raise UsageError(f"{flag} {text!r}: dim {part!r} is neither a non-negative integer nor a symbol name")
    return name, tuple(dims)


def parse_input_shapes(texts: Iterable[str] | None, flag: str = "--input-shape") -> InputShapes:
    """Parses every ``--input-shape`` value; a name given twice is an error."""
    return _parse_each(texts, flag, parse_input_shape)


def _parse_each(texts: Iterable[str] | None, flag: str, parse_one: Callable[[str, str], tuple[str, Any]]) -> dict:
    shapes: dict[str, Any] = {}
    for text in texts or ():
        name, dims = parse_one(text, flag)
        if name in shapes:
            raise UsageError(f"{flag}: input {name!r} is given twice")
        shapes[name] = dims
    return shapes


def parse_input_shape_range(text: str, flag: str = "--input-shape") -> tuple[str, tuple[int | str | DimRange, ...]]:
    """Parses ``NAME:D,D,...`` where a D may also be ``MIN..MAX`` or ``MIN..OPT..MAX``.

    ``opt`` is ``max`` unless given; ``1..8`` becomes ``(1, 8, 8)``.  A range
    whose ends are equal is that int.  Plain dims parse as in
    :func:`parse_input_shape`.
    """
    name, sep, body = text.rpartition(":")
    if not sep or not name or not body.strip():
        raise UsageError(f"{flag} {text!r}: expected NAME:D,D,... (for example x:1..8,3,224,224)")
    dims: list[int | str | DimRange] = []
    for part in body.split(","):
        part = part.strip()
        if ".." not in part:
            dims.extend(parse_input_shape(f"{name}:{part}", flag)[1])
            continue
        ends = part.split("..")
        if len(ends) not in (2, 3) or not all(e.strip().isdigit() for e in ends):
            raise UsageError(f"{flag} {text!r}: range {part!r} must be MIN..MAX or MIN..OPT..MAX of integers")
        values = [int(e) for e in ends]
        lo, opt, hi = (values[0], values[1], values[1]) if len(values) == 2 else tuple(values)
        if not 1 <= lo <= opt <= hi:
            raise UsageError(f"{flag} {text!r}: range {part!r} needs 1 <= MIN <= OPT <= MAX")
        dims.append(lo if lo == hi else (lo, opt, hi))
    return name, tuple(dims)


def parse_input_shape_ranges(texts: Iterable[str] | None, flag: str = "--input-shape") -> ShapeRanges:
    """Every ``--input-shape`` value with ranges allowed (the tensorrt target); a name given twice is an error."""
    return _parse_each(texts, flag, parse_input_shape_range)


def shapes_for_load(ranges: ShapeRanges) -> InputShapes:
    """The shapes to load a model with: each range dim becomes a symbol (``x_0``), so it stays dynamic."""
    shapes: InputShapes = {}
    for name, dims in ranges.items():
        stem = re.sub(r"[^A-Za-z0-9_]", "_", name)
        stem = stem if _SYMBOL.match(stem) else f"in_{stem}"
        shapes[name] = tuple(f"{stem}_{i}" if isinstance(d, tuple) else d for i, d in enumerate(dims))
    return shapes


def parse_size(text: str, flag: str = "--fold-limit") -> int:
    """Parses a byte count: ``1048576``, ``64K``, ``64M``, ``1G``, ``1GiB``, ``2gb``.

    Suffixes are binary (``M`` is 2**20 bytes), as for every kiln size.
    """
    m = _SIZE.match(text.strip())
    if m is None:
        raise UsageError(f"{flag} {text!r}: expected a byte count such as 1048576, 64M or 1G")
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


def format_size(nbytes: int) -> str:
    """``97.8 MB`` style (binary units, like the size suffixes kiln accepts)."""
    size = float(nbytes)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def require_file(path: str | os.PathLike[str], flag: str | None = None) -> Path:
    """Checks that ``path`` is a readable file; a :class:`UsageError` naming it otherwise."""
    p = Path(path)
    label = f"{flag} {os.fspath(path)}" if flag else os.fspath(path)
    if not p.exists():
        raise UsageError(f"{label}: no such file")
    if p.is_dir():
        raise UsageError(f"{label}: is a directory, not a file")
    try:
        with open(p, "rb"):
            pass
    except OSError as exc:
        raise UsageError(f"{label}: cannot read it ({exc.strerror or exc})") from None
    return p
