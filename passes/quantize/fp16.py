"""``fp16``: float32 computation to float16, with float32 islands where values overflow.

A node runs in float16 when its op is on the list of ops that compute well in
half precision (:data:`FP16_OPS`: convolutions, matrix products, pooling,
element-wise arithmetic and activations, normalization, data movement) and
none of its float values is too large for float16: neither a float output nor
a constant float input has ``|x| * headroom > 65504``.  Output magnitudes come
from calibration when ``PassContext.calibration`` holds data or statistics
(the streaming executor records every float tensor's ``max|x|``); without it
only constants are checked, and a note says so.  Everything else (Q/DQ pairs,
Cast, shape arithmetic, ops not on the list, and the overflowing nodes) stays
float32: an island.

Float32 constants read by float16 nodes become float16 copies; at every edge
between the two precisions one shared ``Cast`` is inserted.  The model's
inputs and outputs keep float32, through a Cast after each input and before
each output, so callers feed and read what they did before.
Resize's ``roi`` and ``scales`` stay float32, as ONNX requires.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from kiln.ir.core import UNKNOWN_LOCATION, Graph, Node, Value
from kiln.ir.dtypes import DType
from kiln.ir.types import TensorType
from kiln.ops.builder import OpBuilder
from kiln.passmanager.base import Pass, PassContext
from kiln.passmanager.registry import register_pass

logger = logging.getLogger(__name__)

FP16_MAX = 65504.0

FP16_OPS = frozenset({
    "Conv", "ConvTranspose", "Gemm", "MatMul", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
    "Add", "Sub", "Mul", "Div", "Neg", "Abs", "Sqrt", "Pow", "Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid",
    "HardSigmoid", "HardSwish", "Tanh", "Erf", "Softmax", "BatchNormalization", "InstanceNormalization",
    "Concat", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Slice", "Split", "Resize", "Pad",
    "Identity", "ReduceMean", "ReduceMax", "ReduceMin", "Gather", "Expand", "Tile",
})
"""Default-domain ops converted to float16 (kiln.ConvAct, kiln.GemmAct and kiln.AddAct too)."""

KILN_FP16_OPS = frozenset({"ConvAct", "GemmAct", "AddAct"})

KEEP_FP32_INPUTS = {"Resize": frozenset({1, 2})}
"""Inputs that stay float32 whatever the node's precision (op -> input indices)."""


def _is_f32(v: Value | None) -> bool:
    return v is not None and v.dtype == DType.FLOAT


@register_pass
@dataclass(frozen=True)
class Float16(Pass):
    """Converts float32 computation to float16, keeping float32 where values would overflow."""

    name: ClassVar[str] = "fp16"
    headroom: float = field(default=2.0, metadata={"doc": "keep float32 where max|x| * headroom > 65504"})

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        limit = FP16_MAX / max(self.headroom, 1.0)
        absmax = self._magnitudes(graph, ctx)
        half = [n for n in list(graph) if self._can_be_half(n, absmax, limit)]
        if not half:
            return False
        chosen = set(half)
        islands = sum(1 for n in graph if n.domain == "" and n.op in FP16_OPS and n not in chosen)
        changed = self._rewrite(graph, chosen)
        ctx.bump("fp16.nodes", len(half))
        ctx.bump("fp16.fp32-islands", islands)
        return changed

    # ---- deciding

    def _magnitudes(self, graph: Graph, ctx: PassContext) -> dict[str, float]:
        from kiln.calib import CalibrationConfig, CalibrationStats

        cal = ctx.calibration
        if isinstance(cal, CalibrationConfig):
            stats = cal.collect(graph)
        elif isinstance(cal, CalibrationStats):
            stats = cal
        else:
            logger.info("fp16: no calibration data; only constants are checked for overflow")
            return {}
        return {name: h.absmax for name, h in stats.tensors.items()}

    def _can_be_half(self, node: Node, absmax: dict[str, float], limit: float) -> bool:
        if node.domain == "":
            if node.op not in FP16_OPS:
                return False
        elif not (node.domain == "kiln" and node.op in KILN_FP16_OPS):
            return False
        floats = [v for v in (*node.inputs, *node.outputs) if _is_f32(v)]
        if not floats or not any(_is_f32(o) for o in node.outputs):
            return False
        for out in node.outputs:
            if _is_f32(out) and absmax.get(out.name, 0.0) > limit:
                return False
        for v in node.inputs:
            if _is_f32(v) and v is not None and v.const is not None:
                data = v.numpy()
                if data.size and float(np.max(np.abs(data))) > limit:
                    return False
        return True

    # ---- rewriting

    def _rewrite(self, graph: Graph, half: set[Node]) -> bool:
        to16: dict[Value, Value] = {}
        to32: dict[Value, Value] = {}
        consts16: dict[Value, Value] = {}
        halved: set[Value] = set()  # values now float16

        def cast(v: Value, dtype: DType, cache: dict[Value, Value]) -> Value:
            if v in cache:
                return cache[v]
            producer = v.producer
            before = producer.next if producer is not None else next(iter(graph), None)
            b = OpBuilder(graph, before=before, loc=producer.loc if producer is not None else UNKNOWN_LOCATION)
            out = b.Cast(v, to=int(dtype), _name=f"{v.name}_to_{'fp16' if dtype == DType.FLOAT16 else 'fp32'}")
            cache[v] = out
            return out  # type: ignore[no-any-return]

        for node in list(graph):
            if node in half:
                keep = KEEP_FP32_INPUTS.get(node.op, frozenset())
                for i, v in enumerate(node.inputs):
                    if i in keep or v is None or not _is_f32(v):
                        continue
                    if v.const is not None:
                        if v not in consts16:
                            consts16[v] = graph.add_constant(f"{v.name}_fp16", v.numpy().astype(np.float16))
                        node.set_input(i, consts16[v])
                    else:
                        node.set_input(i, cast(v, DType.FLOAT16, to16))
                for out in node.outputs:
                    if _is_f32(out):
                        t = out.tensor_type
                        assert t is not None
                        out.type = TensorType(DType.FLOAT16, t.shape)
                        halved.add(out)
            else:
                for i, v in enumerate(node.inputs):
                    if v is not None and v in halved:
                        node.set_input(i, cast(v, DType.FLOAT, to32))
        for i, out in enumerate(list(graph.outputs)):
            if out in halved:
                back = cast(out, DType.FLOAT, to32)
                name = out.name
                graph.rename_value(out, graph.fresh_name(name + "_fp16"), claimed=True)
                graph.rename_value(back, name, claimed=True)
                graph.outputs[i] = back
        for v in list(consts16):
            if not v.uses and not graph.is_output(v) and v.graph is graph:
                graph.remove_constant(v)
        return True
