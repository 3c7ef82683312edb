"""Inference through the ONNX package for ops kiln has no function of its own for."""

from __future__ import annotations

import logging

import onnx
import onnx.defs
import onnx.shape_inference

from kiln.ir.core import Node
from kiln.ir.types import Type
from kiln.ops.inference._context import InferContext, InferenceError

logger = logging.getLogger(__name__)


def infer_with_onnx(node: Node, ctx: InferContext) -> list[Type | None]:
    """Runs ``onnx.shape_inference.infer_node_outputs`` on a one-node proto."""
    from kiln.frontend.convert import type_from_proto, type_to_proto
    from kiln.exporter.convert import node_to_proto

    try:
        schema = onnx.defs.get_schema(node.op, max_inclusive_version=ctx.version, domain=node.domain)
    except onnx.defs.SchemaError:
        return [None] * len(node.outputs)
    if node.subgraphs():
        return [None] * len(node.outputs)
    proto = node_to_proto(node)
    input_types = {}
    input_data = {}
    for i, value in enumerate(node.inputs):
        if value is None:
            continue
        t = ctx.type(i)
        if t is not None:
            input_types[value.name] = type_to_proto(t)
        data = ctx.const(i)
        if data is not None and data.size <= 1024:
            input_data[value.name] = onnx.numpy_helper.from_array(data)
    try:
        inferred = onnx.shape_inference.infer_node_outputs(schema, proto, input_types, input_data)
    except onnx.shape_inference.InferenceError as exc:
        raise InferenceError(str(exc).strip().splitlines()[-1]) from exc
    except Exception as exc:  # noqa: BLE001 - ONNX raises assorted errors; inference is best effort
        logger.debug("onnx inference failed for %s: %s", node.op_id, exc)
        return [None] * len(node.outputs)
    return [type_from_proto(inferred[o.name]) if o.name in inferred else None for o in node.outputs]
