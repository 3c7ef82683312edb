"""Types for a loaded model: ONNX's own shape inference, run on a light copy.

``onnx.shape_inference.infer_shapes`` (C++) is fast, but it serializes the
whole model, weights included.  It runs here on a *skeleton*: the same graph
and functions with every initializer and ``Constant`` that shape inference
has no use for (weights, external data) turned into a typed graph input, so
a multi-gigabyte model costs what its graph costs.  Integer tensors up to
4096 elements and any tensor up to 16 stay, so ``data_prop`` still follows
shape computations (Shape -> Gather -> Concat -> Reshape, Resize scales).

Types are collected per graph *path*: ``()`` for the main graph and
``path + (node_index, attribute, k)`` for a subgraph, where ``node_index`` is
the node's position in its ONNX graph.  Nested graphs are walked with a
stack, not recursion.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence

import onnx
import onnx.shape_inference
from kiln.ir.dtypes import DType
from kiln.ir.types import Dim

logger = logging.getLogger(__name__)

Path = tuple
TypeTable = dict[Path, dict[str, onnx.TypeProto]]

SHAPE_LIKE_ELEMENTS = 4096
"""Integer tensors up to this many elements stay in the skeleton: they may be shapes, axes, pads."""
SMALL_ELEMENTS = 16
"""Any tensor up to this many elements stays (Resize scales, Range bounds, Clip limits)."""

_INTEGER_TYPES = frozenset(int(d) for d in DType if d.is_integer or d == DType.BOOL)
_KNOWN_TYPES = frozenset(int(d) for d in DType if d != DType.UNDEFINED)


def _keeps(dims: Sequence[int], data_type: int, external: bool) -> bool:
    """Whether a tensor goes into the skeleton with its data (only what shape inference may read)."""
    if external or data_type not in _KNOWN_TYPES:
        return False
    count = math.prod(dims)
    return count <= SMALL_ELEMENTS or (data_type in _INTEGER_TYPES and count <= SHAPE_LIKE_ELEMENTS)


def _fill_value_info(vi: onnx.ValueInfoProto, name: str, data_type: int, dims: Sequence[int]) -> None:
    vi.name = name
    tt = vi.type.tensor_type
    tt.elem_type = data_type
    tt.shape.SetInParent()
    for d in dims:
        tt.shape.dim.add().dim_value = int(d)


def _stripped_constant(node: onnx.NodeProto) -> tuple[int, Sequence[int]] | None:
    """For a Constant node whose tensor inference need not see: its ``(data_type, dims)``."""
    if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or len(node.output) != 1:
        return None
    for a in node.attribute:
        if a.name == "value" and a.HasField("t"):
            t = a.t
            if not _keeps(t.dims, t.data_type, t.data_location == onnx.TensorProto.EXTERNAL):
                return t.data_type, t.dims
        if a.name == "sparse_value" and a.HasField("sparse_tensor"):
            sp = a.sparse_tensor
            return sp.values.data_type, sp.dims
    return None


def _override_dims(vi: onnx.ValueInfoProto, dims: Sequence[Dim]) -> onnx.ValueInfoProto:
    new = onnx.ValueInfoProto()
    new.CopyFrom(vi)
    shape = new.type.tensor_type.shape
    shape.SetInParent()
    del shape.dim[:]
    for d in dims:
        dim = shape.dim.add()
        if isinstance(d, int):
            dim.dim_value = d
        elif isinstance(d, str):
            dim.dim_param = d
    return new


def _strip_shape(vi: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
    new = onnx.ValueInfoProto()
    new.CopyFrom(vi)
    if new.type.HasField("tensor_type"):
        new.type.tensor_type.ClearField("shape")
    return new


def build_skeleton(
    model: onnx.ModelProto, overrides: Mapping[str, Sequence[Dim]], order: Sequence[int] | None = None
) -> tuple[onnx.ModelProto, list[int]]:
    """The light copy of ``model`` that inference runs on, and its node index map.

    ``index_map[j]`` is the position in ``model.graph.node`` of the skeleton's
    node ``j`` (large Constants are left out; ``order``, when given, is the
    topological order to write the nodes in).  With ``overrides`` the
    model's own intermediate shapes are dropped, since they may no longer hold.
    """
    src = model.graph
    sk = onnx.ModelProto()
    sk.ir_version = max(4, min(int(model.ir_version), int(onnx.IR_VERSION)))
    sk.opset_import.extend(model.opset_import)
    sk.functions.extend(model.functions)
    g = sk.graph
    g.name = src.name
    input_names = set()
    for vi in src.input:
        input_names.add(vi.name)
        g.input.append(_override_dims(vi, overrides[vi.name]) if vi.name in overrides else vi)
    for t in src.initializer:
        if _keeps(t.dims, t.data_type, t.data_location == onnx.TensorProto.EXTERNAL) and not t.HasField(
            "segment"
        ):
            g.initializer.append(t)
        elif t.name not in input_names:
            _fill_value_info(g.input.add(), t.name, t.data_type, t.dims)
            input_names.add(t.name)
    for sp in src.sparse_initializer:
        if sp.values.name not in input_names:
            _fill_value_info(g.input.add(), sp.values.name, sp.values.data_type, sp.dims)
            input_names.add(sp.values.name)
    index_map: list[int] = []
    nodes = src.node
    kept = g.node
    for j in order if order is not None else range(len(nodes)):
        node = nodes[j]
        stripped = _stripped_constant(node) if node.op_type == "Constant" else None
        if stripped is not None:
            _fill_value_info(g.input.add(), node.output[0], *stripped)
            continue
        kept.append(node)
        index_map.append(j)
    if overrides:
        g.output.extend(_strip_shape(vi) for vi in src.output)
    else:
        g.value_info.extend(src.value_info)
        g.output.extend(src.output)
    return sk, index_map


def collect_types(graph: onnx.GraphProto, index_map: Sequence[int] | None = None) -> TypeTable:
    """Every typed name of ``graph`` and its subgraphs, by graph path (iterative)."""
    table: TypeTable = {}
    stack: list[tuple[onnx.GraphProto, Path, Sequence[int] | None]] = [(graph, (), index_map)]
    while stack:
        g, path, imap = stack.pop()
        names = table.setdefault(path, {})
        for group in (g.input, g.value_info, g.output):
            for vi in group:
                names[vi.name] = vi.type
        for j, node in enumerate(g.node):
            index = imap[j] if imap is not None else j
            for a in node.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    stack.append((a.g, path + (index, a.name, 0), None))
                elif a.type == onnx.AttributeProto.GRAPHS:
                    for k, sub in enumerate(a.graphs):
                        stack.append((sub, path + (index, a.name, k), None))
    return table


def _needs_skeleton(model: onnx.ModelProto) -> bool:
    """Whether the model holds tensors that inference need not see (weights, external data)."""
    src = model.graph
    if len(src.sparse_initializer):
        return True
    for t in src.initializer:
        if not _keeps(t.dims, t.data_type, t.data_location == onnx.TensorProto.EXTERNAL):
            return True
    for node in src.node:
        if node.op_type == "Constant" and _stripped_constant(node) is not None:
            return True
    return False


_ERROR_SITE = re.compile(r"\(op_type:([^,)]*)(?:, node name: ([^)]*))?\):\s*(.*)")


def _type_error(text: str) -> tuple[str, str, str] | None:
    """``(op_type, node name, message)`` of the first *type* error in ONNX's strict-mode report.

    Shape disagreements are not fatal (onnxruntime only warns about them);
    element-type errors are, since no runtime would accept the model.
    """
    for line in text.splitlines():
        m = _ERROR_SITE.search(line)
        if m is None:
            continue
        message = m.group(3).strip()
        if "expected to have type but instead is null" in message:
            continue  # missing information, not a contradiction
        if "TypeInferenceError" in message or "inconsistent type" in message or "Type Error" in message:
            message = re.sub(r"\[\w+\]\s*", "", message).strip()
            return m.group(1).strip(), (m.group(2) or "").strip(), message
    return None


def _prepare(
    model: onnx.ModelProto, overrides: Mapping[str, Sequence[Dim]], order: Sequence[int] | None
) -> tuple[onnx.ModelProto, list[int] | None]:
    if order is not None or _needs_skeleton(model):
        return build_skeleton(model, overrides, order)
    skeleton = model
    if overrides or model.ir_version < 4 or model.ir_version > onnx.IR_VERSION:
        skeleton = onnx.ModelProto()
        skeleton.CopyFrom(model)
        skeleton.ir_version = max(4, min(int(model.ir_version), int(onnx.IR_VERSION)))
        g = skeleton.graph
        if overrides:
            for k, vi in enumerate(g.input):
                if vi.name in overrides:
                    g.input[k].CopyFrom(_override_dims(vi, overrides[vi.name]))
            del g.value_info[:]
            for vi in g.output:
                if vi.type.HasField("tensor_type"):
                    vi.type.tensor_type.ClearField("shape")
    return skeleton, None


def infer_types(
    model: onnx.ModelProto, overrides: Mapping[str, Sequence[Dim]], order: Sequence[int] | None = None
) -> tuple[TypeTable | None, tuple[str, str, str] | None]:
    """Runs ONNX shape inference (with data propagation) on the skeleton.

    Returns the type table (``None`` when inference failed) and the first
    element-type error ONNX found, as ``(op_type, node name, message)``.
    Inference runs in strict mode first, so a type error is noticed; when
    strict mode stops on anything else, it runs again leniently for types.
    A model without large tensors is handed over as it is (or as a plain
    copy when input shapes are overridden), which saves copying every node.
    ``order``: the main graph's topological order, when the file's is not one.
    """
    try:
        skeleton, index_map = _prepare(model, overrides, order)
    except Exception as exc:  # noqa: BLE001 - a malformed header: kiln's own inference takes over
        logger.info("cannot prepare the model for ONNX shape inference: %s", _last_line(exc))
        return None, None
    try:
        inferred = onnx.shape_inference.infer_shapes(
            skeleton, check_type=True, strict_mode=True, data_prop=True
        )
    except Exception as strict_exc:  # noqa: BLE001
        found = _type_error(str(strict_exc))
        if found is not None:
            return None, found
        try:
            inferred = onnx.shape_inference.infer_shapes(
                skeleton, check_type=False, strict_mode=False, data_prop=True
            )
        except Exception as exc:  # noqa: BLE001 - inference is best effort; kiln's own inference takes over
            logger.info("ONNX shape inference failed (%s); using kiln's per-node inference", _last_line(exc))
            return None, None
    return collect_types(inferred.graph, index_map), None


def _last_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[-1] if lines else type(exc).__name__
