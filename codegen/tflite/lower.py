"""Lowering of a channels-last kiln graph to TFLite operators, through ``ModelBuilder``.

The graph reaching here went through ``to-nhwc``: layout-sensitive ops are
``kiln.Nhwc<Op>`` on NHWC data with their weights still in the ONNX layout, and
every other op is an ONNX op (or a kiln op) on the data as stored.  Each node
becomes one or a few builtin operators, in the graph's (scheduled) order; the
op-family modules (:mod:`.nn`, :mod:`.basic`) register a handler per op with
:func:`lowers`.  kiln ops without a handler are first replaced by their
decomposition.

Constants are written where first used, in the layout the consumer wants
(OHWI for CONV_2D weights ...).  With ``fp16`` every float32 constant of more
than one element is stored as float16 and turned back into float32 by a
DEQUANTIZE operator, as the TFLite converter's float16 mode does, so the file
runs on the CPU kernels (which take float32) as well as on XNNPACK.

A graph with QuantizeLinear/DequantizeLinear (``--int8``) is lowered with
:mod:`.quant` attached: layers between int8 tensors become int8 operators,
the rest float between DEQUANTIZE and QUANTIZE.

Errors: an op (or attribute) TFLite cannot express is an
:class:`~kiln.errors.UnsupportedOpError` naming the node; a dynamic shape is a
:class:`~kiln.errors.UsageError` asking for ``--input-shape``.  Both are raised
before anything is written.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from kiln.errors import UnsupportedOpError, UsageError
from kiln.ir.core import KILN_DOMAIN, Graph, Node, Value
from kiln.ir.types import TensorType

Handler = Callable[["Lowerer", Node], None]
HANDLERS: dict[str, Handler] = {}


def lowers(*op_ids: str) -> Callable[[Handler], Handler]:
    """Registers a function as the lowering of ``op_ids`` (``onnx.Add``, ``kiln.NhwcConv`` ...)."""

    def register(fn: Handler) -> Handler:
        for op_id in op_ids:
            if op_id in HANDLERS:
                raise ValueError(f"tflite lowering of {op_id} registered twice")
            HANDLERS[op_id] = fn
        return fn

    return register


class Lowerer:
    """Turns one graph into the tensors and operators of a ``ModelBuilder``."""

    def __init__(self, graph: Graph, builder: Any, *, fp16: bool = False, source: str | None = None,
                 keep_fp32: set[str] | None = None) -> None:
        self.graph = graph
        self.b = builder
        self.fp16 = fp16
        self.keep_fp32 = keep_fp32 or set()  # constants (by name) that float16 would cost too much accuracy
        self.source = source
        self.index: dict[Value, int] = {}
        self._const_cache: dict[tuple[int, str], int] = {}
        self._names: set[str] = set()
        self.node: Node | None = None
        self.skip: set[Node] = set()  # activations already fused into their producer
        self.inputs: list[int] = []
        self.facts: dict[int, tuple[tuple[int, ...], np.dtype, Any]] = {}  # tensor -> (shape, dtype, quant)
        self.q: Any = None  # the int8 lowering (kiln.codegen.tflite.quant), when the graph is quantized

    # ---- errors and facts

    def unsupported(self, node: Node, why: str) -> UnsupportedOpError:
        return UnsupportedOpError(f"target tflite cannot express {node.op_id}: {why}", node=node, file=self.source)

    def shape(self, v: Value) -> tuple[int, ...]:
        t = v.type
        if not isinstance(t, TensorType) or t.shape is None or not all(isinstance(d, int) for d in t.shape):
            raise UsageError(
                f"value {v.name!r} has a dynamic shape {getattr(t, 'shape', None)}; TFLite needs static shapes, "
                "give them with --input-shape NAME:D1,D2,...",
                node=v.producer, file=self.source,
            )
        return tuple(int(d) for d in t.shape)  # type: ignore[arg-type]

    def dtype(self, v: Value) -> np.dtype:
        if v.dtype is None:
            raise UsageError(f"value {v.name!r} has no known element type", node=v.producer, file=self.source)
        return np.dtype(v.dtype.numpy)

    def const_of(self, v: Value | None) -> np.ndarray | None:
        return None if v is None or v.const is None else v.numpy()

    def require_const(self, node: Node, i: int, what: str) -> np.ndarray:
        data = self.const_of(node.input(i))
        if data is None:
            raise self.unsupported(node, f"{what} (input {i}) must be a constant")
        return data

    # ---- tensors

    def _name(self, base: str) -> str:
        name, k = base, 1
        while name in self._names:
            name = f"{base}_{k}"
            k += 1
        self._names.add(name)
        return name

    def add(self, base: str, shape: Sequence[int], dtype: Any, data: Any = None, quant: Any = None) -> int:
        """A tensor (constant when ``data`` is given); its shape, dtype and quantization are remembered."""
        index = int(self.b.add_tensor(self._name(base), [int(d) for d in shape], np.dtype(dtype), data=data,
                                      quant=quant))
        self.facts[index] = (tuple(int(d) for d in shape), np.dtype(dtype), quant)
        return index

    def new(self, base: str, shape: Sequence[int], dtype: Any, quant: Any = None) -> int:
        """A fresh non-constant tensor."""
        return self.add(base, shape, dtype, quant=quant)

    def define(self, v: Value, quant: Any = None) -> int:
        """The tensor of a node output (made on first call)."""
        if v not in self.index:
            self.index[v] = self.new(v.name, self.shape(v), self.dtype(v), quant)
        return self.index[v]

    def alias(self, v: Value, tensor: int) -> None:
        self.index[v] = tensor

    def const(self, data: Any, base: str, dtype: Any = None, *, weight: bool = True) -> int:
        """A constant tensor; float32 weights go through float16 + DEQUANTIZE in fp16 mode."""
        arr = np.asarray(data, dtype=dtype)
        if arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        if self.fp16 and weight and arr.dtype == np.float32 and arr.size > 1 and base not in self.keep_fp32:
            half = self.add(base + "_fp16", arr.shape, np.float16, data=arr.astype(np.float16))
            full = self.new(base, arr.shape, np.float32)
            self.b.add_operator("DEQUANTIZE", [half], [full])
            return full
        return self.add(base, arr.shape, arr.dtype, data=arr)

    def ints(self, values: Sequence[int] | np.ndarray, base: str) -> int:
        """An int32 constant (shapes, axes, perms, paddings)."""
        return self.const(np.asarray(values, dtype=np.int32), base, weight=False)

    def value(self, v: Value | None) -> int:
        """The tensor holding ``v`` (a constant is written on first use)."""
        if v is None:
            return -1
        if v in self.index:
            return self.index[v]
        if self.q is not None:
            made = self.q.materialize(v)
            if made is not None:
                return int(made)
        if v.const is not None:
            key = (id(v), "plain")
            if key not in self._const_cache:
                self._const_cache[key] = self.const(v.numpy(), v.name)
            return self._const_cache[key]
        raise AssertionError(f"value {v.name} used before it was lowered")

    def op(self, name: str, inputs: Sequence[int], outputs: Sequence[int], options: Mapping[str, Any] | None = None) -> None:
        self.b.add_operator(name, list(inputs), list(outputs), dict(options) if options else None)

    def unary(self, name: str, x: int, out: int, options: Mapping[str, Any] | None = None) -> None:
        self.op(name, [x], [out], options)

    def scalar(self, value: float, base: str, dtype: Any = np.float32) -> int:
        return self.const(np.array(value, dtype=dtype), base, weight=False)

    def tensor_shape(self, t: int) -> tuple[int, ...]:
        return self.facts[t][0]

    # ---- weights (float, float16 or int8 per channel)

    def quantized(self, node: Node) -> bool:
        """Whether ``node`` is lowered as an int8 op (its data input and weights come dequantized)."""
        return self.q is not None and self.q.is_int8_op(node)

    def weights(self, node: Node, i: int) -> np.ndarray:
        """The float weights of input ``i`` (dequantized when they are int8 in the graph)."""
        if self.q is not None:
            data = self.q.float_weights(node, i)
            if data is not None:
                return data
        return self.require_const(node, i, "the weights")

    def weight_tensor(self, node: Node, i: int, layout: Callable[[np.ndarray], np.ndarray], axis: int) -> int:
        """The weights of input ``i`` rearranged by ``layout``; per-channel scales along ``axis`` for int8."""
        if self.quantized(node):
            return self.q.weight_tensor(node, i, layout, axis)  # type: ignore[union-attr]
        return self.const(layout(self.weights(node, i)), (node.input(i) or node.outputs[0]).name)

    def bias_data(self, node: Node, i: int, n: int) -> np.ndarray:
        data = self.const_of(node.input(i))
        if node.input(i) is not None and data is None:
            raise self.unsupported(node, f"the bias (input {i}) must be a constant")
        return np.zeros(n, np.float32) if data is None else data.reshape(-1).astype(np.float32)

    def bias(self, node: Node, i: int, n: int) -> int:
        """The bias tensor (zeros when absent); int32 at scale ``in_scale * w_scale`` for int8."""
        if self.quantized(node):
            return self.q.bias_tensor(node, i, n, self.bias_data(node, i, n))  # type: ignore[union-attr]
        return self.const(self.bias_data(node, i, n), (node.input(i) or node.outputs[0]).name)

    # ---- activations

    def activation(self, node: Node, act: str, params: Sequence[float], x: int, out: int,
                   shape: Sequence[int], slope: Value | None = None, approximate: str = "none") -> None:
        """``out = act(x)`` with builtin operators."""
        if act == "Relu":
            return self.unary("RELU", x, out)
        if act == "Clip":
            lo, hi = float(params[0]), float(params[1])
            named = {(0.0, 6.0): "RELU6", (-1.0, 1.0): "RELU_N1_TO_1", (0.0, 1.0): "RELU_0_TO_1"}.get((lo, hi))
            if named:
                return self.unary(named, x, out)
            if lo == 0.0 and hi >= 3.0e38:
                return self.unary("RELU", x, out)
            cur = x
            if lo > -3.0e38:
                nxt = out if hi >= 3.0e38 else self.new("clip_lo", shape, np.float32)
                self.op("MAXIMUM", [cur, self.scalar(lo, "clip_min")], [nxt])
                cur = nxt
            if hi < 3.0e38:
                self.op("MINIMUM", [cur, self.scalar(hi, "clip_max")], [out])
            elif cur == x:
                self.op("RESHAPE", [x, self.ints(shape, "shape")], [out], {"new_shape": list(shape)})
            return None
        if act == "LeakyRelu":
            return self.unary("LEAKY_RELU", x, out, {"alpha": float(params[0])})
        if act == "Sigmoid":
            return self.unary("LOGISTIC", x, out)
        if act == "Tanh":
            return self.unary("TANH", x, out)
        if act == "HardSwish":
            return self.unary("HARD_SWISH", x, out)
        if act == "HardSigmoid":
            scaled = self.new("hsig_mul", shape, np.float32)
            self.op("MUL", [x, self.scalar(params[0], "hsig_alpha")], [scaled])
            shifted = self.new("hsig_add", shape, np.float32)
            self.op("ADD", [scaled, self.scalar(params[1], "hsig_beta")], [shifted])
            return self.unary("RELU_0_TO_1", shifted, out)
        if act == "Swish":
            gate_in = x
            if float(params[0]) != 1.0:
                gate_in = self.new("swish_in", shape, np.float32)
                self.op("MUL", [x, self.scalar(params[0], "swish_alpha")], [gate_in])
            gate = self.new("swish_gate", shape, np.float32)
            self.unary("LOGISTIC", gate_in, gate)
            return self.op("MUL", [x, gate], [out])
        if act == "Elu":
            if float(params[0]) != 1.0:
                raise self.unsupported(node, f"Elu with alpha {params[0]} (TFLite's ELU has alpha 1)")
            return self.unary("ELU", x, out)
        if act == "Gelu":
            return self.unary("GELU", x, out, {"approximate": approximate == "tanh"})
        if act == "PRelu":
            if slope is None:
                raise self.unsupported(node, "PRelu without a slope")
            nhwc = self.node is not None and self.node.op.startswith("Nhwc")
            return self.op("PRELU", [x, self.prelu_slope(slope, len(shape), nhwc)], [out])
        if act == "Mish":
            # x * tanh(softplus(x)), softplus(x) = log(1 + exp(x))
            e = self.new("mish_exp", shape, np.float32)
            self.unary("EXP", x, e)
            p = self.new("mish_1p", shape, np.float32)
            self.op("ADD", [e, self.scalar(1.0, "one")], [p])
            sp = self.new("mish_softplus", shape, np.float32)
            self.unary("LOG", p, sp)
            t = self.new("mish_tanh", shape, np.float32)
            self.unary("TANH", sp, t)
            return self.op("MUL", [x, t], [out])
        raise self.unsupported(node, f"activation {act}")

    def prelu_slope(self, slope: Value, rank: int, nhwc: bool = False) -> int:
        """PRELU's alpha; ``nhwc``: the slope broadcasts against the NCHW output of a kiln.Nhwc op."""
        data = self.const_of(slope)
        if data is None:
            return self.value(slope)
        data = data.reshape((1,) * (rank - data.ndim) + data.shape) if data.ndim < rank else data
        if nhwc and data.ndim == 4:
            data = data.transpose(0, 2, 3, 1)
        while data.ndim > 1 and data.shape[0] == 1:  # PRELU broadcasts alpha from the right
            data = data.reshape(data.shape[1:])
        return self.const(data.astype(np.float32), slope.name)

    def fused(self, node: Node) -> tuple[str, bool]:
        """The fused activation of a kiln ConvAct/GemmAct/AddAct that TFLite fuses: (name, whether it is fused)."""
        name = fused_activation(node)
        return (name, True) if name is not None else ("NONE", False)

    def finish_act(self, node: Node, raw_out: int, out: int, shape: Sequence[int]) -> None:
        """Applies a kiln op's unfused activation: ``out = act(raw_out)``."""
        from kiln.ops.kiln_dialect import activation_params, activation_slope

        act, p = activation_params(node)
        slope = activation_slope(node)
        self.activation(node, act, p, raw_out, out, shape, slope, node.attr("approximate", "none") or "none")

    def conv_output(self, node: Node) -> tuple[int, int, str]:
        """(tensor the conv writes, final tensor, fused activation) for Conv/ConvAct/GemmAct."""
        out_v = node.outputs[0]
        final = self.define(out_v)
        if node.domain != KILN_DOMAIN or "activation" not in node.attrs:
            return final, final, "NONE"
        name, is_fused = self.fused(node)
        if is_fused:
            return final, final, name
        return self.new(out_v.name + "_pre", self.shape(out_v), self.dtype(out_v)), final, "NONE"

    # ---- the walk

    def lower(self) -> None:
        graph = self.graph
        if self.q is not None:
            self.inputs = self.q.inputs()
        else:
            self.inputs = [self.define(v) for v in graph.inputs]
        for node in graph:
            if node.subgraphs():
                raise self.unsupported(node, "control flow (If/Loop/Scan) is not lowered to TFLite")
            if self.q is not None and node.op in ("QuantizeLinear", "DequantizeLinear") and node.domain == "":
                self.node = node
                self.q.quantize(node) if node.op == "QuantizeLinear" else self.q.dequantize(node)
                continue
            handler = HANDLERS.get(node.op_id)
            if handler is None:
                raise self.unsupported(node, "no TFLite lowering for this op")
            for out in node.outputs:
                if out.uses or graph.is_output(out):
                    self.shape(out)
            self.node = node
            if self.q is not None and self.q.try_int8(node, handler):
                continue
            handler(self, node)
        self.node = None

    def outputs(self) -> list[int]:
        if self.q is not None:
            return list(self.q.outputs())
        return [self.value(v) for v in self.graph.outputs]


# ------------------------------------------------------------------------------- graph preparation


def check_static(graph: Graph, source: str | None) -> None:
    """Every graph input must have a static shape (else: use --input-shape)."""
    for v in graph.inputs:
        t = v.type
        if not isinstance(t, TensorType) or t.shape is None or not all(isinstance(d, int) for d in t.shape):
            dims = t.shape if isinstance(t, TensorType) and t.shape is not None else None
            shown = "?" if dims is None else "x".join("?" if d is None else str(d) for d in dims)
            raise UsageError(
                f"input {v.name!r} has a dynamic shape {shown}; TFLite needs static shapes: "
                f"give --input-shape {v.name}:D1,D2,...", file=source,
            )


def fused_activation(node: Node) -> str | None:
    """The ``fused_activation_function`` that computes a kiln fused op's activation (RELU, RELU6,
    RELU_N1_TO_1), or ``None`` when TFLite's fused clamp cannot (the activation is then an op of its own)."""
    from kiln.ops.kiln_dialect import activation_params

    act, p = activation_params(node)
    if act == "Relu":
        return "RELU"
    if act == "Clip":
        lo, hi = float(p[0]), float(p[1])
        named = {(0.0, 6.0): "RELU6", (-1.0, 1.0): "RELU_N1_TO_1"}.get((lo, hi))
        if named:
            return named
        if lo == 0.0 and hi >= 3.0e38:
            return "RELU"
    return None


def decompose_kiln_ops(graph: Graph) -> None:
    """Replaces kiln ops that have no TFLite handler (or whose handler does not apply) by their decomposition."""
    from kiln.ops.decompose import decompose_unhandled

    quantized = any(n.is_op("QuantizeLinear") for n in graph)
    decompose_unhandled(graph, lambda n: n.op_id in HANDLERS and _direct(n, quantized))


def _direct(node: Node, quantized: bool = False) -> bool:
    """Whether a kiln op with a handler takes the direct route (GemmAct needs constant 2-D weights; AddAct an
    activation ADD's fused clamp computes, in a float graph: the int8 lowering takes the Add and its
    activation apart)."""
    if node.op == "AddAct":
        return not quantized and fused_activation(node) is not None
    if node.op == "GemmAct":
        w = node.input(1)
        if node.attr("transA", 0) or w is None or w.shape is None or len(w.shape) != 2:
            return False
        return w.const is not None or (w.producer is not None and w.producer.is_op("DequantizeLinear")
                                       and w.producer.inputs[0] is not None and w.producer.inputs[0].const is not None)
    return True


def io_layout(graph: Graph, nhwc_io: bool) -> dict[str, dict[str, list[int]]]:
    """ONNX name -> {"perm": ONNX layout -> TFLite tensor layout} for every input and output."""
    layout: dict[str, dict[str, list[int]]] = {}
    for v in [*graph.inputs, *graph.outputs]:
        rank = len(v.shape) if v.shape is not None else 0
        perm = [0, 2, 3, 1] if nhwc_io and rank == 4 else list(range(rank))
        layout[v.name] = {"perm": perm}
    return layout


def build(graph: Graph, *, fp16: bool, nhwc_io: bool, pipeline: str, source: str | None = None,
          int8_io: bool = False) -> bytes:
    """The .tflite bytes of ``graph`` (channels-last already)."""
    import kiln
    from kiln.codegen.tflite import basic, nn, quant  # noqa: F401  (register the handlers)
    from kiln.codegen.tflite.flatbuffer import ModelBuilder

    check_static(graph, source)
    keep_fp32 = float16_islands(graph) if fp16 else set()
    decompose_kiln_ops(graph)
    metadata = {
        "kiln_version": kiln.__version__,
        "kiln_pipeline": pipeline,
        "kiln_io_layout": json.dumps(io_layout(graph, nhwc_io), sort_keys=True),
    }
    builder = ModelBuilder(description=f"kiln {kiln.__version__}", metadata=metadata)
    lowerer = Lowerer(graph, builder, fp16=fp16, source=source, keep_fp32=keep_fp32)
    quant.QuantLowering.attach(lowerer, int8_io=int8_io)
    lowerer.lower()
    builder.set_io(lowerer.inputs, lowerer.outputs(), [v.name for v in graph.inputs], [v.name for v in graph.outputs])
    return bytes(builder.finish())


def float16_islands(graph: Graph) -> set[str]:
    """The weights to keep in float32 in a float16 file: measured on onnxruntime (the file dequantizes its
    float16 weights at load, so the IR with rounded weights computes what LiteRT will), see
    :mod:`kiln.quant.islands`.  Without onnxruntime every weight goes to float16."""
    try:
        from kiln.quant.islands import onnxruntime_islands

        return onnxruntime_islands(graph)
    except ImportError:
        logging.getLogger(__name__).warning("onnxruntime is not importable: every weight stored in float16 "
                                            "without checking its error")
        return set()


def prod(values: Sequence[int]) -> int:
    return int(math.prod(values))
