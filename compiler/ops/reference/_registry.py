"""Registry of kiln's numpy reference implementations of ONNX ops.

Constant folding evaluates a node through the reference registered for its
``(domain, op)``.  A reference receives the node's input arrays (``None`` for
an omitted optional input), its attributes as plain Python values, and a
:class:`RefContext` that carries the node's opset version and how many
outputs the node declares.  It returns one array per output.

Attribute values arrive as: INT -> ``int``, FLOAT -> ``float``, STRING ->
``str``, INTS -> ``list[int]``, FLOATS -> ``list[float]``, STRINGS ->
``list[str]``, TENSOR -> ``numpy.ndarray``.  Only attributes present on the
node are passed; each reference applies the ONNX defaults itself.

Ops that are non-deterministic (RandomNormal, Bernoulli, ...) or that need a
subgraph have no reference, so folding leaves them alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np


@dataclass(frozen=True)
class RefContext:
    """What a reference may need to know about the node besides its values."""

    version: int
    """The opset version of the node's domain."""
    num_outputs: int = 1
    """How many outputs the node declares (Split, TopK, Dropout, ...)."""


RefFn = Callable[[list["np.ndarray | None"], dict[str, Any], RefContext], list[np.ndarray]]

_REFERENCES: dict[tuple[str, str], RefFn] = {}


def reference(*ops: str, domain: str = "") -> Callable[[RefFn], RefFn]:
    """Registers a function as the numpy reference of one or more ops."""

    def register(fn: RefFn) -> RefFn:
        for op in ops:
            key = (domain, op)
            if key in _REFERENCES:
                raise ValueError(f"reference for {domain or 'ai.onnx'}.{op} registered twice")
            _REFERENCES[key] = fn
        return fn

    return register


def get_reference(domain: str, op: str) -> RefFn | None:
    """Returns the reference for ``domain.op`` or ``None`` if kiln has none."""
    _load_all()
    return _REFERENCES.get((_canonical_domain(domain), op))


def has_reference(domain: str, op: str) -> bool:
    return get_reference(domain, op) is not None


def registered_ops() -> list[tuple[str, str]]:
    _load_all()
    return sorted(_REFERENCES)


def _canonical_domain(domain: str) -> str:
    return "" if domain in ("", "ai.onnx") else domain


_loaded = False


def _load_all() -> None:
    """Imports every reference module once, so their decorators run."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    import importlib
    import pkgutil

    from kiln.ops import reference as package

    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package.__name__}.{info.name}")
