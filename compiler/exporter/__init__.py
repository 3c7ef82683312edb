"""The ONNX exporter: ``to_onnx(graph)`` builds a ``ModelProto``, ``save(graph, path)`` writes a file.

See :mod:`kiln.exporter.convert` for how the IR maps onto ONNX (kiln ops as
local functions, output names, ir_version) and :mod:`kiln.exporter.writer`
for external data and atomic, deterministic writing.
"""

from kiln.exporter.convert import Emit, KilnLowering, node_to_proto, tensor_to_proto, to_onnx
from kiln.exporter.writer import save

__all__ = ["Emit", "KilnLowering", "node_to_proto", "save", "tensor_to_proto", "to_onnx"]
