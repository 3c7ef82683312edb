"""Numpy references of ONNX ops, used by constant folding (see ``_registry``)."""

from kiln.ops.reference._registry import RefContext, get_reference, has_reference, reference, registered_ops

__all__ = ["RefContext", "get_reference", "has_reference", "reference", "registered_ops"]
