"""int8 lowering from the Q/DQ form the ``quantize`` pass leaves (zero point 0, per-tensor activation
scales, per-channel int8 weight constants).

``DequantizeLinear(QuantizeLinear(x, s))`` is an int8 tensor with scale ``s``.  A layer whose data
inputs are such tensors and whose only reader is a ``QuantizeLinear`` is lowered as the int8 TFLite op
writing straight into that quantized tensor:

- CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED: int8 weights with the per-channel scales along the
  output channel (axis 0 of OHWI and of FC weights, axis 3 of 1HWC), int32 bias with scale
  ``in_scale * w_scale[c]``; a Relu/Relu6 activation fuses, any other keeps the layer in float;
- pools, global average (MEAN), ADD/MUL of two quantized tensors, CONCATENATION, RESHAPE,
  TRANSPOSE, PAD, RESIZE: the float lowering on int8 tensors (TFLite rescales between the scales).

Everything else runs in float between a DEQUANTIZE of its int8 inputs (made once, where first read)
and a QUANTIZE of its output.  Inputs and outputs are float with QUANTIZE/DEQUANTIZE at the boundary
by default, int8 tensors with their scales with ``int8_io``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from kiln.codegen.tflite.flatbuffer import Quant
from kiln.ir.core import Node, Value

INT8_LAYERS = frozenset({"kiln.NhwcConv", "kiln.NhwcConvAct", "onnx.Gemm", "kiln.GemmAct", "onnx.MatMul"})
INT8_PASSTHROUGH = frozenset({
    "kiln.NhwcMaxPool", "kiln.NhwcGlobalAveragePool", "kiln.NhwcGlobalMaxPool", "onnx.Add", "onnx.Mul",
    "onnx.Concat", "onnx.Reshape", "onnx.Flatten", "onnx.Squeeze", "onnx.Unsqueeze", "onnx.Transpose",
    "kiln.NhwcResize", "kiln.NhwcAveragePool",
})


COPIES = frozenset({"onnx.Transpose", "onnx.Reshape", "onnx.Flatten", "onnx.Squeeze", "onnx.Unsqueeze"})
"""Pure data moves: int8 in, int8 out at the same scale."""
RESCALING = frozenset({"onnx.Add", "onnx.Mul", "kiln.NhwcGlobalAveragePool"})
"""Int8 kernels that rescale; the others (copies, max, average pool, resize) need one scale in and out."""


def _scalar(v: Value | None) -> float | None:
    if v is None or v.const is None:
        return None
    data = v.numpy().reshape(-1)
    return float(data[0]) if data.size == 1 else None


def _quant(scale: float | np.ndarray, axis: int = 0) -> Quant:
    s = np.asarray(scale, dtype=np.float32).reshape(-1)
    return Quant(scale=s, zero_point=np.zeros(s.shape, np.int64), axis=axis)


def _output_axis(node: Node) -> int:
    """The axis of the ONNX weights that holds the output channels (where per-channel scales must be)."""
    if node.op == "MatMul" or (node.op in ("Gemm", "GemmAct") and not node.attr("transB", 0)):
        return 1
    return 0


class QuantLowering:
    """The int8 side of one lowering: which values are int8 tensors, and the int8 forms of layers."""

    def __init__(self, lowerer: Any, int8_io: bool) -> None:
        self.lw = lowerer
        self.int8_io = int8_io
        self.int8: dict[Value, tuple[int, float]] = {}  # value -> (int8 tensor, scale)
        self.active: Node | None = None
        self.stats = {"int8": 0, "float": 0}

    @staticmethod
    def attach(lowerer: Any, *, int8_io: bool = False) -> QuantLowering | None:
        """The int8 lowering for a graph with Q/DQ nodes (``None`` for a float graph)."""
        if not any(n.is_op("QuantizeLinear") for n in lowerer.graph):
            return None
        q = QuantLowering(lowerer, int8_io)
        lowerer.q = q
        return q

    # ---- what the float lowering asks

    def is_int8_op(self, node: Node) -> bool:
        return node is self.active

    def dq_weight(self, node: Node, i: int) -> tuple[np.ndarray, np.ndarray, int | None] | None:
        """(int8 data, scales, axis) when input ``i`` is DequantizeLinear of an int8 constant."""
        v = node.input(i)
        dq = v.producer if v is not None else None
        if dq is None or not dq.is_op("DequantizeLinear") or dq.inputs[0] is None or dq.inputs[0].const is None:
            return None
        scale = dq.inputs[1]
        if scale is None or scale.const is None:
            return None
        axis = dq.attr("axis", 1) if scale.numpy().size > 1 else None
        return dq.inputs[0].numpy(), scale.numpy().astype(np.float32).reshape(-1), axis

    def float_weights(self, node: Node, i: int) -> np.ndarray | None:
        found = self.dq_weight(node, i)
        if found is None:
            return None
        data, scales, axis = found
        if axis is None:
            return (data.astype(np.float32) * scales[0]).astype(np.float32)
        shape = [1] * data.ndim
        shape[axis % data.ndim] = -1
        return (data.astype(np.float32) * scales.reshape(shape)).astype(np.float32)

    def weight_tensor(self, node: Node, i: int, layout: Callable[[np.ndarray], np.ndarray], axis: int) -> int:
        data, scales, _ = self.dq_weight(node, i)  # type: ignore[misc]
        arranged = np.ascontiguousarray(layout(data))
        if scales.size == 1:
            scales = np.full(arranged.shape[axis], scales[0], np.float32)
        name = node.inputs[i].name  # type: ignore[union-attr]
        return int(self.lw.add(name, arranged.shape, np.int8, data=arranged, quant=_quant(scales, axis)))

    def bias_tensor(self, node: Node, i: int, n: int, values: np.ndarray) -> int:
        x = node.inputs[0]
        assert x is not None
        in_scale = self.int8[x][1]
        w_scales = self.dq_weight(node, 1)[1]  # type: ignore[index]
        w_scales = np.broadcast_to(w_scales, (n,)) if w_scales.size == 1 else w_scales
        scales = (in_scale * w_scales.astype(np.float64)).astype(np.float32)
        q = np.clip(np.rint(values.astype(np.float64) / scales), -(2**31), 2**31 - 1).astype(np.int32)
        return int(self.lw.add("bias_int32", [n], np.int32, data=q, quant=_quant(scales, 0)))

    def materialize(self, v: Value) -> int | None:
        """A float tensor for ``v``: DEQUANTIZE of its int8 tensor, or a dequantized weight constant."""
        if v in self.int8:
            t = self.int8[v][0]
            out = self.lw.new(v.name, self.lw.shape(v), np.float32)
            self.lw.op("DEQUANTIZE", [t], [out])
            self.lw.index[v] = out
            return out
        producer = v.producer
        if producer is not None and producer.is_op("DequantizeLinear") and producer.inputs[0] is not None \
                and producer.inputs[0].const is not None:
            w = producer.inputs[0].numpy().astype(np.float32)
            s = producer.inputs[1].numpy().astype(np.float32).reshape(-1)  # type: ignore[union-attr]
            if s.size > 1:
                shape = [1] * w.ndim
                shape[int(producer.attr("axis", 1)) % w.ndim] = -1
                data = w * s.reshape(shape)
            else:
                data = w * s[0]
            out = self.lw.const(data.astype(np.float32), v.name)
            self.lw.index[v] = out
            return out
        return None

    # ---- Q / DQ nodes

    def quantize(self, node: Node) -> None:
        x, out = node.inputs[0], node.outputs[0]
        assert x is not None
        if out in self.int8:  # the layer before wrote it already
            return
        scale = _scalar(node.input(1))
        if scale is None:
            raise self.lw.unsupported(node, "QuantizeLinear with a per-axis or non-constant scale")
        t = self.lw.new(out.name, self.lw.shape(out), np.int8, _quant(scale))
        src = self.int8[x][0] if x in self.int8 else self.lw.value(x)
        self.lw.op("QUANTIZE", [src], [t])
        self.int8[out] = (t, scale)

    def dequantize(self, node: Node) -> None:
        x, out = node.inputs[0], node.outputs[0]
        assert x is not None
        if x.const is not None:
            return  # a weight: its readers take it as int8 data or a float constant
        if x not in self.int8:
            raise self.lw.unsupported(node, "DequantizeLinear of a tensor that is not quantized")
        self.int8[out] = self.int8[x]

    # ---- int8 layers

    def try_int8(self, node: Node, handler: Callable[[Any, Node], None]) -> bool:
        """Lowers ``node`` in int8 when its inputs are int8 and a QuantizeLinear alone reads it."""
        op_id = node.op_id
        if op_id not in INT8_LAYERS and op_id not in INT8_PASSTHROUGH:
            return False
        out = node.outputs[0]
        users = out.users()
        if len(node.outputs) != 1 or len(users) != 1 or not users[0].is_op("QuantizeLinear") \
                or self.lw.graph.is_output(out):
            return self._copy_int8(node, handler)
        q_node = users[0]
        scale = _scalar(q_node.input(1))
        if scale is None:
            return False
        if op_id in INT8_LAYERS:
            x = node.inputs[0]
            found = self.dq_weight(node, 1)
            if x not in self.int8 or found is None or found[2] not in (None, _output_axis(node)):
                return False
            if node.domain == "kiln" and "activation" in node.attrs and not self.lw.fused(node)[1]:
                return False
            if node.op in ("Gemm", "GemmAct") and (node.attr("transA", 0) or float(node.attr("alpha", 1.0)) != 1.0):
                return False
            if node.op == "MatMul" and self.dq_weight(node, 1)[0].ndim != 2:  # type: ignore[index]
                return False
            data_inputs = [x]
        else:
            if node.op == "NhwcAveragePool" and (any(node.attr("pads") or []) or node.attr("ceil_mode", 0)
                                                 or node.attr("auto_pad", "NOTSET") not in ("NOTSET", "VALID")):
                return False
            data_inputs = [v for v in node.inputs[:1 if op_id not in ("onnx.Add", "onnx.Mul", "onnx.Concat") else None]
                           if v is not None]
            if not data_inputs or any(v not in self.int8 for v in data_inputs):
                return False
        t = self.lw.new(q_node.outputs[0].name, self.lw.shape(out), np.int8, _quant(scale))
        written = t
        if op_id in INT8_PASSTHROUGH and op_id not in RESCALING:
            in_scales = {self.int8[v][1] for v in data_inputs}
            if len(in_scales) != 1:
                return False
            in_scale = in_scales.pop()
            if in_scale != scale:  # the op keeps its input's scale; a QUANTIZE rescales after it
                written = self.lw.new(out.name, self.lw.shape(out), np.int8, _quant(in_scale))
        saved = {v: self.lw.index.get(v) for v in data_inputs}
        for v in data_inputs:
            self.lw.index[v] = self.int8[v][0]
        self.lw.index[out] = written
        self.active = node
        try:
            handler(self.lw, node)
        finally:
            self.active = None
            for v, old in saved.items():
                if old is None:
                    self.lw.index.pop(v, None)
                else:
                    self.lw.index[v] = old
            self.lw.index.pop(out, None)
        if written != t:
            self.lw.op("QUANTIZE", [written], [t])
        self.int8[q_node.outputs[0]] = (t, scale)
        self.stats["int8"] += 1
        return True

    def _copy_int8(self, node: Node, handler: Callable[[Any, Node], None]) -> bool:
        """A data move (Transpose, Reshape ...) of an int8 tensor with no QuantizeLinear after it stays int8
        at its input's scale (the boundary Transpose between the input's QUANTIZE and the first Conv)."""
        x, out = node.inputs[0], node.outputs[0]
        if node.op_id not in COPIES or x not in self.int8 or len(node.outputs) != 1:
            return False
        t_in, scale = self.int8[x]
        t = self.lw.new(out.name, self.lw.shape(out), np.int8, _quant(scale))
        saved = self.lw.index.get(x)
        self.lw.index[x], self.lw.index[out] = t_in, t
        try:
            handler(self.lw, node)
        finally:
            if saved is None:
                self.lw.index.pop(x, None)
            else:
                self.lw.index[x] = saved
            self.lw.index.pop(out, None)
        self.int8[out] = (t, scale)
        return True

    # ---- the boundary

    def inputs(self) -> list[int]:
        """Graph input tensors: int8 with ``int8_io`` where a QuantizeLinear alone reads them."""
        tensors = []
        for v in self.lw.graph.inputs:
            users = v.users()
            if self.int8_io and len(users) == 1 and users[0].is_op("QuantizeLinear") \
                    and _scalar(users[0].input(1)) is not None:
                q_node = users[0]
                scale = _scalar(q_node.input(1))
                t = self.lw.new(v.name, self.lw.shape(v), np.int8, _quant(scale))  # type: ignore[arg-type]
                self.int8[q_node.outputs[0]] = (t, scale)  # type: ignore[assignment]
                self.lw.index[v] = t
            else:
                self.lw.define(v)
            tensors.append(self.lw.index[v])
        return tensors

    def outputs(self) -> list[int]:
        tensors = []
        for v in self.lw.graph.outputs:
            if self.int8_io and v in self.int8:
                tensors.append(self.int8[v][0])
            else:
                tensors.append(self.lw.value(v))
        return tensors
