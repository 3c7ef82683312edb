"""Upgrading a graph's default-domain opset in place (9 to 12 -> 13 and later).

Per-channel DequantizeLinear (the ``axis`` attribute) needs opset 13; the
PP-OCR models are at 11 and 12 and the ONNX model-zoo graphs at 9, so
quantization first upgrades them.  Between opset 9 and 13 most ops changed
only in the types they accept or gained negative axes (a superset); the ones
whose meaning or signature changed are rewritten:

* ``Softmax``/``LogSoftmax``/``Hardmax`` (13: over one axis instead of the
  input coerced to 2-D at ``axis``): kept when ``axis`` is the last axis (the
  same computation), else rewritten as ``Flatten(axis) -> op(axis=1) ->
  Reshape(Shape(x))``;
* ``Split`` (``split``), ``Squeeze``/``Unsqueeze`` (``axes``), ``ReduceSum``
  (``axes``): the attribute becomes an int64 constant input;
* ``Dropout`` (12: ``ratio`` became an input): the attribute is moved to a
  constant input;
* ``Clip`` (11: ``min``/``max``), ``Pad`` (11: ``pads``, ``value``),
  ``Slice`` (10: ``starts``/``ends``/``axes``), ``TopK`` (10: ``k``): the
  attributes become constant inputs;
* ``Resize`` with ``coordinate_transformation_mode=tf_half_pixel_for_nn``
  (removed in 13) is refused, and so are ``Upsample`` and opset-10
  ``Resize`` (replaced by a Resize whose coordinate rules differ) and
  ``Scatter``: convert such a model first (``onnx.version_converter``).

Graphs below opset 9 are refused with a clear error.  Every node of the
default domain, subgraphs included, gets the new version.
"""

from __future__ import annotations

import numpy as np
from kiln.errors import UnsupportedOpError
from kiln.ir.core import Graph, Node
from kiln.ops.builder import OpBuilder
from kiln.ops.inference import infer_node

MIN_SOURCE_OPSET = 9

_ATTR_TO_INPUT = {"Split": ("split", 1), "Squeeze": ("axes", 1), "Unsqueeze": ("axes", 1), "ReduceSum": ("axes", 1)}
_SOFTMAX = ("Softmax", "LogSoftmax", "Hardmax")
# op -> (the opset where its attributes became inputs, [(attribute, input index, dtype: None = the data's)])
_ATTRS_BECAME_INPUTS: dict[str, tuple[int, list[tuple[str, int, type | None]]]] = {
    "Clip": (11, [("min", 1, None), ("max", 2, None)]),
    "Pad": (11, [("pads", 1, np.int64), ("value", 2, None)]),
    "Slice": (10, [("starts", 1, np.int64), ("ends", 2, np.int64), ("axes", 3, np.int64)]),
    "TopK": (10, [("k", 1, np.int64)]),
}
# ops whose replacement computes something else unless rewritten with care: (opset they changed at, why)
_REFUSED_BELOW = {
    "Upsample": (99, "Upsample was replaced by Resize"),
    "Resize": (11, "opset-10 Resize has other coordinate rules than Resize-11"),
    "Scatter": (99, "Scatter was replaced by ScatterElements"),
}


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
        _check(node, graph, current)
    for node in nodes:
        if node.version is not None and node.version >= target:
            continue
        version = node.version if node.version is not None else current
        if node.op in _ATTRS_BECAME_INPUTS and version < _ATTRS_BECAME_INPUTS[node.op][0]:
            _attrs_to_inputs(node, _ATTRS_BECAME_INPUTS[node.op][1])
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


def _check(node: Node, graph: Graph, current: int) -> None:
    version = node.version if node.version is not None else current
    if node.op in _REFUSED_BELOW and version < _REFUSED_BELOW[node.op][0]:
        raise UnsupportedOpError(
            f"{node.op} at opset {version} cannot be upgraded to opset 13 for quantization "
            f"({_REFUSED_BELOW[node.op][1]}); convert the model first (onnx.version_converter)",
            node=node,
            file=graph.model.source_path,
        )
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
    # The upgrade runs after folding: a static shape goes in as a constant so no Shape op is left for a
    # target that cannot compute shapes (ncnn).
    static = x.shape is not None and all(isinstance(d, int) for d in x.shape)
    shape = graph.add_constant(f"{node.name or node.op}_shape", np.asarray(x.shape, np.int64)) if static \
        else b.Shape(x)
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


def _attrs_to_inputs(node: Node, attrs: list[tuple[str, int, type | None]]) -> None:
    """Moves attributes to constant inputs, in input order; an absent one stays an absent (empty) input."""
    x = node.input(0)
    data_dtype = x.dtype.numpy if x is not None and x.dtype is not None else np.float32
    if node.op == "TopK" and "k" in node.attrs:
        node.set_attr("k", [int(node.attr("k"))])  # the input is a 1-D tensor of one element
    for attr, index, dtype in attrs:
        if attr in node.attrs:
            _attr_to_input(node, attr, index, dtype=dtype or data_dtype, scalar=dtype is None)


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
        inputs.append(None)  # an absent optional input, as ONNX's empty name
    if len(inputs) == index:
        inputs.append(const)
    else:
        inputs[index] = const
    node.set_inputs(inputs)
