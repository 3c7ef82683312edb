"""Type and shape inference for ONNX and kiln ops.

kiln's own inference functions live in this package, one module per op
family, registered with :func:`infers`.  For an ONNX op kiln has no function
for, :func:`infer_node` falls back to the ONNX package's per-node inference
(``onnx.shape_inference.infer_node_outputs``), so no op of the spec is left
without types.  kiln ops infer through their schema's ``infer`` or, failing
that, by running their decomposition.

:func:`infer_node` is pure; :func:`infer_and_update` writes the result onto
the node's outputs (merging with what was known, see :func:`merge_types`)
together with the symbolic values of shape subgraphs; :func:`infer_graph`
does that for a whole graph.
"""

from __future__ import annotations

import functools
import importlib
import logging
import pkgutil
from collections.abc import Callable, Iterator

from kiln.ir.core import Graph, Node
from kiln.ir.types import Dim, OptionalType, SequenceType, TensorType, Type
from kiln.ops.inference._context import InferContext, InferenceError
from kiln.ops.registry import InferFn, OpSchema, lookup

logger = logging.getLogger(__name__)

_FUNCTIONS: dict[tuple[str, str], InferFn] = {}


def infers(*ops: str, domain: str = "") -> Callable[[InferFn], InferFn]:
    """Registers a function as the type/shape inference of ``ops``."""

    def register(fn: InferFn) -> InferFn:
        for op in ops:
            key = (domain, op)
            if key in _FUNCTIONS:
                raise ValueError(f"inference for {domain or 'onnx'}.{op} registered twice")
            _FUNCTIONS[key] = fn
        return fn

    return register


@functools.cache
def _load_all() -> None:
    package = importlib.import_module(__name__)
    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


def has_inference(domain: str, op: str) -> bool:
    _load_all()
    return (domain, op) in _FUNCTIONS


def _run(node: Node, input_types: list[Type | None] | None) -> tuple[list[Type | None], InferContext]:
    _load_all()
    schema = lookup(node.domain, node.op, node.version)
    ctx = InferContext(node, schema, input_types)
    fn = _FUNCTIONS.get((node.domain, node.op))
    if fn is None and schema is not None and schema.infer is not None:
        fn = schema.infer
    if fn is not None:
        result = fn(ctx)
    elif node.domain == "" or schema is not None and node.domain != "kiln":
        from kiln.ops.inference._onnx_fallback import infer_with_onnx

        result = infer_with_onnx(node, ctx)
    else:
        result = [None] * len(node.outputs)
    n = len(node.outputs)
    if len(result) != n:
        result = (list(result) + [None] * n)[:n]
    return result, ctx


def infer_node(node: Node, input_types: list[Type | None] | None = None) -> list[Type | None]:
    """Output types of ``node`` from its inputs; ``None`` entries where unknown.

    Raises :class:`InferenceError` when the inputs can never be valid.
    Pure: the node and its values are not touched (see :func:`infer_and_update`).
    """
    return list(_run(node, input_types)[0])


# --------------------------------------------------------------------------- updating the IR


def _merge_dim(old: Dim, new: Dim) -> Dim:
    if old == new or old is None:
        return new
    if new is None:
        return old
    if new.__class__ is int:
        return new  # a static dim beats a symbol; two different static dims: the newer wins
    if old.__class__ is int:
        return old
    return old  # two symbols for one dim: keep the name already in use


def merge_types(old: Type | None, new: Type | None) -> Type | None:
    """The more precise of two types known for one value.

    Both are taken as true facts about the same value: per dim, a static
    size beats a symbol and a symbol beats unknown; a known rank beats an
    unknown one.  Where they contradict each other (different dtypes, ranks
    or static dims) the ``new`` one wins.  Returns ``old`` itself when it is
    already at least as precise, so callers can test for change with ``is``.
    """
    if new is None or old == new:
        return old if old is not None else new
    if old is None:
        return new
    if old.__class__ is TensorType and new.__class__ is TensorType:
        if old.dtype != new.dtype:
            return new
        so, sn = old.shape, new.shape
        if sn is None:
            return old
        if so is None or len(so) != len(sn):
            return new
        dims = tuple([_merge_dim(a, b) for a, b in zip(so, sn)])
        if dims == so:
            return old
        return new if dims == sn else TensorType(new.dtype, dims)
    if old.__class__ is new.__class__ and isinstance(old, (SequenceType, OptionalType)):
        elem = merge_types(old.elem, new.elem)
        return old if elem == old.elem else type(old)(elem)
    return new


def _merge_sym(old: tuple | None, new: tuple | None) -> tuple | None:
    if new is None:
        return old
    if old is None or old == new or len(old) != len(new):
        return new
    return tuple(_merge_dim(a, b) for a, b in zip(old, new))


def infer_and_update(node: Node, *, merge: bool = True) -> bool:
    """Infers ``node`` and writes the results onto its outputs; returns whether anything changed.

    Each output's ``type`` becomes ``merge_types(old, inferred)`` (with
    ``merge=False``: the inferred type, where it is not ``None``), and its
    ``meta["sym_value"]`` the known elements the inference reported (kept,
    likewise, when nothing new is known and ``merge`` is on).  Raises
    :class:`InferenceError` when the inputs can never be valid.
    """
    types, ctx = _run(node, None)
    syms = ctx.sym_values
    changed = False
    for i, out in enumerate(node.outputs):
        new = types[i]
        old = out.type
        t = merge_types(old, new) if merge else (new if new is not None else old)
        if t is not old and t != old:
            out.type = t
            changed = True
        sym = syms[i] if syms is not None and i < len(syms) else None
        meta = out.meta
        old_sym = meta.get("sym_value")
        if sym is None and old_sym is None:
            continue
        if merge:
            sym = _merge_sym(old_sym, sym)
        if sym != old_sym:
            if sym is None:
                del meta["sym_value"]
            else:
                meta["sym_value"] = sym
            changed = True
    return changed


def infer_graph(graph: Graph, *, merge: bool = True) -> int:
    """Infers every node of ``graph`` and its subgraphs in order; returns how many changed.

    One forward pass reaches the fixed point: nodes are in topological order,
    and a node holding subgraphs (If/Loop/Scan) is inferred after its
    subgraphs' nodes, which may read only values defined before it.  The
    walk uses an explicit stack, not recursion.  An input combination that
    can never be valid raises :class:`kiln.errors.InferenceFailure` naming
    the node.  Pass ``merge=False`` after making a shape less specific (a
    static input made symbolic), so stale static dims are not kept.
    """
    from kiln.errors import InferenceFailure

    changed = 0
    stack: list[tuple[Iterator[Node], Node | None]] = [(iter(graph), None)]
    while stack:
        it, owner = stack[-1]
        node = next(it, None)
        if node is None:
            stack.pop()
            if owner is None:
                continue
            node = owner
        else:
            subs = node.subgraphs()
            if subs:
                stack.append((iter(()), node))
                for sub in reversed(subs):
                    stack.append((iter(sub), None))
                continue
        try:
            if infer_and_update(node, merge=merge):
                changed += 1
        except InferenceError as exc:
            if _in_branch(node):
                # An If branch may be one that can never run for these inputs
                # (ONNX functions guard shape-specific code that way): its
                # types stay unknown rather than failing the whole graph.
                continue
            raise InferenceFailure(str(exc), node=node) from exc
    return changed


def _in_branch(node: Node) -> bool:
    """Whether ``node`` sits (at any depth) inside an If's then/else branch."""
    graph = node.graph
    while graph is not None and graph.parent is not None:
        if graph.parent.is_op("If"):
            return True
        graph = graph.parent.graph
    return False


__all__ = [
    "InferContext",
    "InferenceError",
    "OpSchema",
    "has_inference",
    "infer_and_update",
    "infer_graph",
    "infer_node",
    "infers",
    "merge_types",
]
