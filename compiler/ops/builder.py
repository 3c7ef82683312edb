"""``OpBuilder``: creates nodes with a call per op, for passes and decompositions.

    b = OpBuilder(graph, before=node, loc=node.loc)
    y = b.Conv(x, w, bias, kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    top, idx = b.TopK(y, b.const(np.array([5])), _outputs=2)
    act = b.op("ConvAct", x, w, domain="kiln", activation="relu")

Attributes are keyword arguments; ``_outputs``, ``_domain``, ``_name`` and
``_types`` are reserved.  New nodes inherit the builder's location, and their
output types are inferred right away when ``infer=True`` (the default).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from kiln.ir.core import Graph, Location, Node, UNKNOWN_LOCATION, Value
from kiln.ir.types import Type


class OpBuilder:
    """Builds nodes at one insertion point of a graph."""

    def __init__(
        self,
        graph: Graph,
        *,
        before: Node | None = None,
        loc: Location = UNKNOWN_LOCATION,
        infer: bool = True,
    ) -> None:
        self.graph = graph
        self.before = before
        self.loc = loc
        self.infer = infer
        self.created: list[Node] = []

    def const(self, data: Any, name: str = "const", dtype: Any = None) -> Value:
        """A new constant in the graph (``dtype`` forces the numpy dtype)."""
        arr = np.asarray(data, dtype=dtype)
        return self.graph.add_constant(name, arr)

    def op(
        self,
        op: str,
        *inputs: Value | None,
        _domain: str = "",
        _outputs: int = 1,
        _name: str = "",
        _types: Sequence[Type | None] | None = None,
        _version: int | None = None,
        **attrs: Any,
    ) -> Any:
        """Creates ``_domain.op`` and returns its output (a tuple if ``_outputs > 1``)."""
        attrs = {k: v for k, v in attrs.items() if v is not None}
        node = self.graph.create_node(
            op,
            list(inputs),
            attrs,
            domain=_domain,
            version=_version,
            num_outputs=_outputs,
            output_types=_types,
            name=_name,
            loc=self.loc,
            before=self.before,
        )
        self.created.append(node)
        if self.infer and _types is None:
            from kiln.ops.inference import infer_node

            for out, t in zip(node.outputs, infer_node(node)):
                out.type = t
        return node.outputs[0] if _outputs == 1 else tuple(node.outputs)

    def __getattr__(self, op: str) -> Any:
        if not op[:1].isupper():
            raise AttributeError(op)

        def make(*inputs: Value | None, **attrs: Any) -> Any:
            return self.op(op, *inputs, **attrs)

        return make
