"""``fold``: constant folding with kiln's numpy references.

A node whose inputs are all constants (or omitted) is evaluated with the
reference registered for its op (``kiln.ops.reference``), and its outputs
become constants.  Going in graph order, a folded node's consumers see
constant inputs in the same sweep, so a whole constant subgraph folds at once.

Not folded: ops without a reference, non-deterministic ops, nodes with
subgraphs, custom domains, and any node whose outputs would exceed ``limit``
bytes (``--fold-limit``, default 1 GiB): folding a ``ConstantOfShape`` or an
``Expand`` can turn a few bytes into gigabytes.  The default folds weights
that graphs generate at run time (the light model zoo builds VGG-19's 411 MB
fc6 weight with ConstantOfShape) as onnxsim and onnxslim do; lower it to keep
such models small on disk.
The output size is checked from the inferred type before evaluating, so an
absurd shape (2^40 elements) is refused without allocating.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from kiln.ir.core import Graph, Node
from kiln.ir.types import TensorType
from kiln.ops.reference import RefContext, get_reference
from kiln.ops.registry import lookup
from kiln.passmanager.base import Pass, PassContext
from kiln.passmanager.registry import register_pass

logger = logging.getLogger(__name__)

FOLDABLE_DOMAINS = frozenset({"", "ai.onnx.ml", "ai.onnx.preview.training"})
"""Domains whose ops kiln's references implement per the ONNX spec."""

DEFAULT_FOLD_LIMIT = 1 << 30  # 1 GiB, as PassContext.fold_limit


def _declared_nbytes(node: Node) -> int | None:
    """Bytes of the outputs as typed, or ``None`` when a shape is not static."""
    total = 0
    for out in node.outputs:
        t = out.type
        if not isinstance(t, TensorType) or not t.is_static:
            return None
        total += (math.prod(t.shape) * max(t.dtype.itemsize_bits, 8) + 7) // 8  # type: ignore[arg-type]
    return total


def _input_nbytes(node: Node) -> int:
    return sum(v.const.nbytes for v in node.inputs if v is not None and v.const is not None)


def can_fold(node: Node) -> bool:
    if node.domain not in FOLDABLE_DOMAINS or node.subgraphs():
        return False
    if any(v is not None and v.const is None for v in node.inputs):
        return False
    schema = lookup(node.domain, node.op, node.version)
    if schema is None or not schema.deterministic:
        return False
    return get_reference(node.domain, node.op) is not None


def fold_node(graph: Graph, node: Node, limit: int) -> bool:
    """Evaluates ``node`` and replaces it by constants; ``False`` if it must stay."""
    declared = _declared_nbytes(node)
    if declared is not None and declared > limit:
        return False
    if declared is None and _input_nbytes(node) > limit:
        return False
    reference = get_reference(node.domain, node.op)
    assert reference is not None
    inputs = [None if v is None else v.const.numpy() for v in node.inputs]  # type: ignore[union-attr]
    attrs = {name: a.plain() for name, a in node.attrs.items()}
    ctx = RefContext(version=node.version or 1, num_outputs=len(node.outputs))
    try:
        with np.errstate(all="ignore"):
            results = reference(inputs, attrs, ctx)
    except Exception as exc:  # noqa: BLE001 - a reference that cannot evaluate leaves the node alone
        logger.debug("not folding %s (%s): %s", node.op_id, node.loc.describe(), exc)
        return False
    if len(results) < len(node.outputs):
        return False
    if sum(np.asarray(r).nbytes for r in results) > limit:
        return False
    replacements = []
    for out, result in zip(node.outputs, results):
        arr = np.asarray(result)
        if isinstance(out.type, TensorType) and out.type.dtype.numpy != arr.dtype and arr.dtype != object:
            logger.debug("reference of %s gave %s, type says %s", node.op_id, arr.dtype, out.type.dtype)
            return False
        replacements.append(arr)
    renames = []
    for out, arr in zip(node.outputs, replacements):
        const = graph.add_constant(out.name + "_folded", arr)
        was_output = graph.is_output(out)
        out.replace_all_uses_with(const)  # a graph output's name passes to the constant
        if not was_output:
            renames.append((const, out.name))
    graph.remove_node(node)
    for const, name in renames:
        # The constant takes the folded value's name, so initializers keep familiar names.
        if const.uses or graph.is_output(const):
            graph.rename_value(const, name)
    return True


def fold_constants(graph: Graph, limit: int = DEFAULT_FOLD_LIMIT) -> int:
    folded = 0
    for g in list(graph.all_graphs()):
        for node in g:
            if node.graph is g and can_fold(node) and fold_node(g, node, limit):
                folded += 1
    return folded


@register_pass
@dataclass(frozen=True)
class FoldConstants(Pass):
    """Evaluates nodes whose inputs are all constants, within a byte budget."""

    name: ClassVar[str] = "fold"
    limit: int = field(default=0, metadata={"doc": "largest folded output in bytes (0: the context's --fold-limit)"})

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        folded = fold_constants(graph, self.limit or ctx.fold_limit)
        ctx.bump("fold.nodes", folded)
        return folded > 0
