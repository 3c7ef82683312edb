"""The interface every type/shape inference function sees.

An inference function takes an :class:`InferContext` and returns one type
per node output (``None`` where nothing can be said).  It may read input
types, attributes (with schema defaults applied) and the data of constant
inputs (Reshape's shape, Slice's starts, ...).  It must never raise on
unknown information: unknown dims become ``None``, unknown rank a shape of
``None``.  It raises :class:`InferenceError` only for inputs that can never
be valid (mismatched static dims, wrong input dtype).

Symbolic values: a small integer tensor whose elements are known dims (what
``Shape`` produces, and what ``Reshape``/``Expand``/``Tile`` consume) carries
them as ``value.meta["sym_value"]``, a flat tuple of dims in row-major order.
:meth:`InferContext.sym_value` reads them (from a constant's data too), and an
inference function reports its outputs' through ``ctx.sym_values``, one tuple
or ``None`` per output, which ``infer_and_update`` stores on the outputs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from kiln.ir.dtypes import DType
from kiln.ir.types import Dim, TensorType, Type

if TYPE_CHECKING:
    from kiln.ir.core import Node
    from kiln.ops.registry import OpSchema


class InferenceError(ValueError):
    """The node's inputs can never be valid for its op (named by the caller)."""


class InferContext:
    """What an inference function may know about one node."""

    __slots__ = ("_symbols", "input_types", "node", "schema", "sym_values")

    def __init__(self, node: Node, schema: OpSchema | None, input_types: list[Type | None] | None = None):
        self.node = node
        self.schema = schema
        if input_types is None:
            input_types = [None if v is None else v.type for v in node.inputs]
        self.input_types = input_types
        self._symbols = 0
        self.sym_values: list[tuple | None] | None = None
        """Set by an inference function: the known elements of each output (or None)."""

    # ---- node facts

    @property
    def version(self) -> int:
        return self.node.version if self.node.version is not None else 10_000

    @property
    def num_inputs(self) -> int:
        return len(self.input_types)

    @property
    def num_outputs(self) -> int:
        return len(self.node.outputs)

    def has_input(self, index: int) -> bool:
        return index < len(self.input_types) and self.node.input(index) is not None

    def attr(self, name: str, default: Any = None) -> Any:
        """The attribute's plain value, else the schema default, else ``default``."""
        a = self.node.attrs.get(name)
        if a is not None:
            return a.plain()
        if self.schema is not None:
            d = self.schema.attr_default(name)
            if d is not None:
                return d
        return default

    # ---- input facts

    def type(self, index: int) -> Type | None:
        return self.input_types[index] if index < len(self.input_types) else None

    def tensor(self, index: int) -> TensorType | None:
        t = self.type(index)
        return t if isinstance(t, TensorType) else None

    def dtype(self, index: int) -> DType | None:
        t = self.tensor(index)
        return t.dtype if t is not None else None

    def shape(self, index: int) -> tuple[Dim, ...] | None:
        t = self.tensor(index)
        return t.shape if t is not None else None

    def rank(self, index: int) -> int | None:
        s = self.shape(index)
        return None if s is None else len(s)

    def const(self, index: int) -> np.ndarray | None:
        """The data of input ``index`` if it is a constant (small or not), else ``None``."""
        v = self.node.input(index)
        if v is None:
            return None
        if v.const is not None:
            return v.const.numpy()
        known = v.meta.get("known_value")
        return known if isinstance(known, np.ndarray) else None

    def const_ints(self, index: int) -> list[int] | None:
        data = self.const(index)
        if data is None:
            return None
        return [int(x) for x in np.asarray(data).reshape(-1)]

    def sym_value(self, index: int) -> tuple | None:
        """The elements of input ``index`` as a flat tuple of dims, when known.

        Known means a small (at most 64 elements, rank 0 or 1) integer or bool
        constant, or a value whose producer's inference recorded
        ``meta["sym_value"]`` (elements may be symbols or ``None`` there).
        """
        v = self.node.input(index)
        if v is None:
            return None
        c = v.const
        if c is not None:
            shape = c.shape
            if c.dtype in _SYM_DTYPES and (not shape or (len(shape) == 1 and shape[0] <= _SYM_MAX)):
                return tuple(c.numpy().reshape(-1).tolist())
            return None
        sym = v.meta.get("sym_value")
        if sym is not None:
            return sym
        known = v.meta.get("known_value")
        if (
            isinstance(known, np.ndarray)
            and known.ndim <= 1
            and known.size <= _SYM_MAX
            and known.dtype.kind in "iub"
        ):
            return tuple(known.reshape(-1).tolist())
        return None

    def set_sym_value(self, index: int, value: tuple | None) -> None:
        """Reports the known elements of output ``index`` (flat, row-major); ``None``: unknown."""
        if value is None:
            return
        if self.sym_values is None:
            self.sym_values = [None] * len(self.node.outputs)
        if index < len(self.sym_values):
            self.sym_values[index] = tuple(value)


_SYM_MAX = 64
_SYM_DTYPES = frozenset(
    (
        DType.INT64,
        DType.INT32,
        DType.INT16,
        DType.INT8,
        DType.UINT8,
        DType.UINT16,
        DType.UINT32,
        DType.UINT64,
        DType.BOOL,
    )
)
