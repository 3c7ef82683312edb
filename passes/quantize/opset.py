"""Upgrading a graph's default-domain opset in place (11 or 12 -> 13 and later).

Per-channel DequantizeLinear (the ``axis`` attribute) needs opset 13, and the
PP-OCR models are at 11 and 12, so quantization first upgrades them.  Between
opset 11 and 13 most ops changed only in the types they accept; the ones whose
meaning or signature changed are rewritten:

* ``Softmax``/``LogSoftmax``/``Hardmax`` (13: over one axis instead of the
  input coerced to 2-D at ``axis``): kept when ``axis`` is the last axis (the
  same computation), else rewritten as ``Flatten(axis) -> op(axis=1) ->
  Reshape(Shape(x))``;
* ``Split`` (``split``), ``Squeeze``/``Unsqueeze`` (``axes``), ``ReduceSum``
  (``axes``): the attribute becomes an int64 constant input;
* ``Dropout`` (12: ``ratio`` became an input): the attribute is moved to a
  constant input;
* ``Resize`` with ``coordinate_transformation_mode=tf_half_pixel_for_nn``
  (removed in 13) is refused.

Graphs below opset 11 are refused with a clear error (their Clip, Pad,
Slice, Upsample ... changed too); convert them first (for example with
``onnx.version_converter``).  Every node of the default domain, subgraphs
included, gets the new version.
"""

from __future__ import annotations

import numpy as np
from kiln.errors import UnsupportedOpError
from kiln.ir.core import Graph, Node
from kiln.ops.builder import OpBuilder
from kiln.ops.inference import infer_node

MIN_SOURCE_OPSET = 11

_ATTR_TO_INPUT = {"Split": ("split", 1), "Squeeze": ("axes", 1), "Unsqueeze": ("axes", 1), "ReduceSum": ("axes", 1)}
_SOFTMAX = ("Softmax", "LogSoftmax", "Hardmax")


def upgrade_opset(graph: Graph, target: int = 13) -> bool:
    """Raises the default-domain opset of ``graph`` (a root graph) to ``target``; returns whether it changed.

    Raises:
        UnsupportedOpError: the graph is below opset 11, or a node cannot be upgraded.
    """
    current = graph.opsets.get("", None)
    if current is None or current >= target:
        return False
    if current < MIN_SOURCE_OPSET:
        raise UnsupportedOpError(
            f"quantization needs opset {target} (per-channel DequantizeLinear) and kiln upgrades from opset "
            f"{MIN_SOURCE_OPSET} or later; this model is at opset {current}: convert it first "
            f"(onnx.version_converter.convert_version(model, {target}))",
            file=graph.model.source_path,
        )
    nodes = [n for n in graph.walk() if n.domain == ""]
    for node in nodes:
        _check(node, graph)
    for node in nodes:
        if node.version is not None and node.version >= target:
            continue
        if node.op in _SOFTMAX:
            _upgrade_softmax(node)
        elif node.op in _ATTR_TO_INPUT:
            _attr_to_input(node, *_ATTR_TO_INPUT[node.op])
        elif node.op == "Dropout" and "ratio" in node.attrs:
            _attr_to_input(node, "ratio", 1, dtype=np.float32, scalar=True)
        node.version = target
    graph.opsets[""] = target
    for g in graph.all_graphs():
        for node in g:
            if node.domain == "" and (node.version is None or node.version < target):
                node.version = target
    return True


def _check(node: Node, graph: Graph) -> None:
    if node.op == "Resize" and node.attr("coordinate_transformation_mode") == "tf_half_pixel_for_nn":
        raise UnsupportedOpError(
            "Resize with coordinate_transformation_mode=tf_half_pixel_for_nn does not exist at opset 13; "
            "cannot upgrade the model for quantization",
            node=node,
            file=graph.model.source_path,
        )
    if node.op in _SOFTMAX:
        x = node.input(0)
        rank = len(x.shape) if x is not None and x.shape is not None else None
        axis = int(node.attr("axis", 1))
        if rank is None and axis != -1:
            raise UnsupportedOpError(
                f"{node.op} before opset 13 flattens its input at axis {axis}; its input's rank is unknown, "
                "so kiln cannot upgrade it (set the input shapes with --input-shape)",
                node=node,
                file=graph.model.source_path,
            )


def _upgrade_softmax(node: Node) -> None:
    x = node.input(0)
    assert x is not None
    rank = len(x.shape) if x.shape is not None else None
    axis = int(node.attr("axis", 1))
    if rank is None:  # axis == -1 (checked): already the last axis
        return
    axis = axis % rank if rank else 0
    if axis == rank - 1:
        node.set_attr("axis", -1)
        return
    graph = node.graph
    assert graph is not None
    b = OpBuilder(graph, before=node, loc=node.loc)
    shape = b.Shape(x)
    node.set_input(0, b.Flatten(x, axis=axis))
    node.set_attr("axis", 1)
    out = node.outputs[0]
    original = out.type
    out.type = infer_node(node)[0]
    uses = list(out.uses)
    reshaped = OpBuilder(graph, before=node.next, loc=node.loc).Reshape(out, shape)
    reshaped.type = original
    for use in uses:
        use.node.set_input(use.index, reshaped)
    if graph.is_output(out):
        name = out.name
        graph.rename_value(out, graph.fresh_name(name + "_2d"), claimed=True)
        graph.rename_value(reshaped, name, claimed=True)
        graph.outputs[:] = [reshaped if o is out else o for o in graph.outputs]


def _attr_to_input(node: Node, attr: str, index: int, dtype: type = np.int64, scalar: bool = False) -> None:
    if attr not in node.attrs:
        return
    value = node.attr(attr)
    del node.attrs[attr]
    graph = node.graph
    assert graph is not None
    data: np.ndarray = np.asarray(value, dtype=dtype)
    if scalar:
        data = data.reshape(())
    const = graph.add_constant(f"{node.name or node.op}_{attr}", data)
    inputs = list(node.inputs)
    while len(inputs) < index:
        inputs.append(None)
    if len(inputs) == index:
        inputs.append(const)
    else:
        inputs[index] = const
    node.set_inputs(inputs)
