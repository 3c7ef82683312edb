"""The ONNX frontend: ``load(path)`` turns an ONNX model into a kiln graph.

See :mod:`kiln.frontend.loader` for what loading checks and how types are
resolved, and :mod:`kiln.frontend.convert` for the conversion of types,
tensors and attributes.
"""

from kiln.frontend.convert import type_from_proto, type_to_proto
from kiln.frontend.loader import load

__all__ = ["load", "type_from_proto", "type_to_proto"]
