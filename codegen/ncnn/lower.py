"""IR -> ncnn layers: the :class:`Lowering` walk and the op table.

The per-op functions live in :mod:`.layers_compute` (convolution, gemm, elementwise,
activations, pooling, normalization) and :mod:`.layers_data` (reshape, permute, concat,
slice, pad, resize, attention), one function per op family.

Layout: ncnn runs one sample; a blob is an ONNX activation with its batch dim (which
must be 1) dropped, so ONNX ``[1, C, H, W]`` is ncnn ``c,h,w`` and ``[1, S, D]`` is
``h,w``.  Every shape below is such an ncnn shape in numpy order (outermost first), and
an ONNX axis ``a`` is ncnn axis ``a - 1``.  Constants used as layer inputs become
``MemoryData`` layers with the same convention (a leading 1 is the batch).

Quantized graphs (after the ``quantize`` pass) carry ``DequantizeLinear(QuantizeLinear(x))``
on activations and ``DequantizeLinear(int8 W)`` on weights.  Convolution and
InnerProduct that read both become ncnn int8 layers (ncnn's scales are the reciprocals of
ONNX's); every other Q/DQ pair is looked through, so the rest runs in float, as
``ncnn2int8`` leaves it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
from kiln.codegen.ncnn.param import Layer, ParamValue, fresh_name
from kiln.codegen.ncnn.weights import Blob
from kiln.errors import UnsupportedOpError, UsageError
from kiln.ir.core import Graph, Node, Value

Shape = tuple[int, ...]

# Permute order_type: the output's (w, h[, d], c) spelled as input axis letters.
_PERMUTE_2D = ("WH", "HW")
_PERMUTE_3D = ("WHC", "HWC", "WCH", "CWH", "HCW", "CHW")
_PERMUTE_4D = ("WHDC", "HWDC", "WDHC", "DWHC", "HDWC", "DHWC", "WHCD", "HWCD", "WCHD", "CWHD", "HCWD", "CHWD",
               "WDCH", "DWCH", "WCDH", "CWDH", "DCWH", "CDWH", "HDCW", "DHCW", "HCDW", "CHDW", "DCHW", "CDHW")

_NAME_OK = re.compile(r"[^A-Za-z0-9_.:/\-]")


@dataclass
class IOBlob:
    """A graph input or output: its ONNX name, ncnn blob name and ONNX shape.

    ``feed`` says how the runtime fills an input's float blob: ``float32``
    (the values, integers included: exact below 2**24), or ``int32`` (the
    int32 bit patterns, which ncnn's Embed reads as its word indices).
    """

    name: str
    blob: str
    shape: Shape
    feed: str = "float32"


@dataclass
class Lowered:
    """The result of lowering: layers in order, and the graph interface."""

    layers: list[Layer]
    inputs: list[IOBlob]
    outputs: list[IOBlob]
    blob_count: int = 0
    int8_layers: int = 0


def unsupported(node: Node, why: str) -> UnsupportedOpError:
    return UnsupportedOpError(f"ncnn cannot express {node.op_id}: {why}", node=node)


def ints(values: Any) -> list[int]:
    return [int(v) for v in values]


class Lowering:
    """Walks the graph once and builds the ncnn layer list."""

    def __init__(self, graph: Graph, int8: bool = False) -> None:
        self.graph = graph
        self.int8 = int8
        self.layers: list[Layer] = []
        self.blob_of: dict[Value, str] = {}
        self.nshape: dict[str, Shape] = {}
        self._names: set[str] = set()
        self._blobs: set[str] = set()
        self.batchless: dict[Value, Shape] = {}
        self.int8_layers = 0
        self.int32_inputs: set[Value] = set()

    # ------------------------------------------------------------------ names and values

    def _unique(self, base: str, taken: set[str]) -> str:
        return fresh_name(_NAME_OK.sub("_", base)[:120] or "x", taken)

    def layer_name(self, node: Node | None, suffix: str = "") -> str:
        base = (node.name or (node.outputs[0].name if node.outputs else node.op)) if node is not None else "layer"
        return self._unique(f"{base}{suffix}", self._names)

    def new_blob(self, base: str, shape: Shape) -> str:
        name = self._unique(base, self._blobs)
        self.nshape[name] = shape
        return name

    def add(self, type_: str, name: str, inputs: list[str], outputs: list[str],
            params: dict[int, ParamValue] | None = None, weights: list[Blob] | None = None) -> Layer:
        layer = Layer(type_, name, inputs, outputs, dict(params or {}), list(weights or []))
        self.layers.append(layer)
        return layer

    @staticmethod
    def source(v: Value) -> Value:
        """``v`` with activation Q/DQ pairs looked through."""
        while v.producer is not None and v.producer.op in ("QuantizeLinear", "DequantizeLinear") \
                and v.producer.domain == "" and not _const_chain(v.producer.inputs[0]):
            v = v.producer.inputs[0]  # type: ignore[assignment]
        return v

    def const(self, v: Value | None) -> np.ndarray | None:
        """The float value of a constant, or of a dequantized int8 constant; else ``None``."""
        if v is None:
            return None
        return _const_value(v)

    def onnx_shape(self, v: Value, node: Node) -> Shape:
        shape = v.shape
        if shape is None or not all(isinstance(d, int) for d in shape):
            raise UsageError(f"value {v.name!r} has a dynamic shape {shape}; give --input-shape to fix it",
                             node=node)
        return tuple(int(d) for d in shape)

    def shape_of(self, v: Value, node: Node) -> Shape:
        """The ncnn shape of an activation (its ONNX shape without the batch dim)."""
        shape = self.onnx_shape(v, node)
        if not shape:
            raise unsupported(node, f"value {v.name!r} is a scalar; ncnn blobs have a batch dim to drop")
        if shape[0] != 1:
            raise UsageError(f"value {v.name!r} has shape {shape}: ncnn runs batch 1 (the leading dim is dropped)",
                             node=node)
        if len(shape) > 5:
            raise unsupported(node, f"value {v.name!r} has rank {len(shape)}; ncnn blobs have at most 4 dims")
        return shape[1:]

    def blob(self, v: Value | None, node: Node) -> str:
        """The blob holding ``v``; a constant becomes a MemoryData layer."""
        if v is None:
            raise unsupported(node, "an omitted input it needs")
        v = self.source(v)
        if v in self.blob_of:
            return self.blob_of[v]
        data = self.const(v)
        if data is None:
            raise unsupported(node, f"input {v.name!r} is not produced by anything ncnn runs")
        shape = tuple(data.shape)
        if len(shape) >= 2 and shape[0] == 1:
            shape = shape[1:]
        name = self.memory_data(data.reshape(shape), v.name, node)
        self.blob_of[v] = name
        return name

    def memory_data(self, data: np.ndarray, base: str, node: Node) -> str:
        shape = tuple(int(d) for d in data.shape) or (1,)
        if len(shape) > 4:
            raise unsupported(node, f"constant {base!r} has rank {len(shape)}; ncnn holds at most 4 dims")
        blob = self.new_blob(base, shape)
        keys = {1: (0,), 2: (1, 0), 3: (2, 1, 0), 4: (2, 11, 1, 0)}[len(shape)]
        params = {k: d for k, d in zip(keys, shape)}
        self.add("MemoryData", self._unique(f"{base}_data", self._names), [], [blob], params,
                 [Blob(data.astype(np.float32))])
        return blob

    def bind(self, v: Value, node: Node, shape: Shape | None = None) -> str:
        """Names the blob of a node output (its ncnn shape from the IR unless given)."""
        blob = self.new_blob(v.name, shape if shape is not None else self.shape_of(v, node))
        self.blob_of[v] = blob
        return blob

    def alias(self, out: Value, inp: Value, node: Node) -> None:
        self.blob_of[out] = self.blob(inp, node)

    def reshape(self, blob: str, shape: Shape, node: Node, suffix: str = "_reshape") -> str:
        """A Reshape layer to ``shape`` (ncnn order); the blob itself when it already has it."""
        if self.nshape[blob] == shape:
            return blob
        out = self.new_blob(blob + suffix, shape)
        self.add("Reshape", self.layer_name(node, suffix), [blob], [out], reshape_params(shape, node))
        return out

    # ------------------------------------------------------------------ driver

    def run(self) -> Lowered:
        inputs: list[IOBlob] = []
        for v in self.graph.inputs:
            feed = _input_feed(v)
            if feed == "int32":
                self.int32_inputs.add(v)
            shape = v.shape
            if shape is None or not all(isinstance(d, int) for d in shape):
                raise UsageError(f"input {v.name!r} has a dynamic shape {shape}; give --input-shape "
                                 f"{v.name}:1,... to compile for ncnn")
            if not shape or shape[0] != 1:
                raise UsageError(f"input {v.name!r} has shape {tuple(shape)}: ncnn runs batch 1 "
                                 f"(give --input-shape {v.name}:1,...)")
            nshape = tuple(int(d) for d in shape[1:])
            if not nshape or len(nshape) > 4:
                raise UsageError(f"input {v.name!r} has rank {len(shape)}; ncnn inputs have rank 2 to 5")
            blob = self.new_blob(v.name, nshape)
            self.blob_of[v] = blob
            self.add("Input", self._unique(v.name, self._names), [], [blob], reshape_params(nshape, None))
            inputs.append(IOBlob(v.name, blob, tuple(int(d) for d in shape), feed))
        for node in self.graph:
            lower_node(self, node)
        outputs: list[IOBlob] = []
        for v in self.graph.outputs:
            src = self.source(v)
            if src not in self.blob_of or src.is_graph_input:
                raise UnsupportedOpError(f"ncnn cannot express graph output {v.name!r}: it is a graph input "
                                         "or a constant")
            outputs.append(IOBlob(v.name, self.blob_of[src], self.onnx_shape(v, v.producer)))  # type: ignore[arg-type]
        return Lowered(self.layers, inputs, outputs, int8_layers=self.int8_layers)


def _input_feed(v: Value) -> str:
    """How an input reaches ncnn (see :class:`IOBlob`): float inputs as they are; integer inputs as int32
    bits where every consumer is an Embed (a Gather from a constant table), else as float values."""
    if v.dtype is None or v.dtype.numpy == np.float32:
        return "float32"
    if not (v.dtype.is_integer or v.dtype.numpy == np.bool_):
        raise UsageError(f"input {v.name!r} is {v.dtype.name.lower()}; ncnn inputs are float32 (or integer ids)")
    uses = list(v.uses)
    if uses and all(u.node.op == "Gather" and u.node.domain == "" and u.index == 1 and
                    _const_chain(u.node.inputs[0]) for u in uses):
        return "int32"
    return "float32"


def _const_chain(v: Value | None) -> bool:
    return v is not None and _const_value(v) is not None


def _const_value(v: Value) -> np.ndarray | None:
    if v.is_constant:
        return v.numpy()
    node = v.producer
    if node is None or node.domain != "":
        return None
    if node.op == "DequantizeLinear" and node.inputs[0] is not None and node.inputs[0].is_constant:
        q = node.inputs[0].numpy().astype(np.float32)
        scale = node.inputs[1].numpy().astype(np.float32)  # type: ignore[union-attr]
        zp = node.input(2)
        zero = zp.numpy().astype(np.float32) if zp is not None else np.float32(0)
        if scale.size > 1:
            axis = int(node.attr("axis", 1)) % q.ndim
            view = [1] * q.ndim
            view[axis] = -1
            scale = scale.reshape(view)
            zero = np.asarray(zero).reshape(view) if np.asarray(zero).size > 1 else zero
        return ((q - zero) * scale).astype(np.float32)
    return None


def reshape_params(shape: Shape, node: Node | None) -> dict[int, ParamValue]:
    """Reshape / Input / MemoryData params for an ncnn shape: w=0, h=1, d=11, c=2."""
    keys = {1: (0,), 2: (1, 0), 3: (2, 1, 0), 4: (2, 11, 1, 0)}.get(len(shape))
    if keys is None:
        where = f" at {node.op_id}" if node is not None else ""
        raise UnsupportedOpError(f"ncnn blobs have 1 to 4 dims, not {len(shape)}{where}", node=node)
    return {k: int(d) for k, d in zip(keys, shape)}


def permute_order(perm: list[int], node: Node) -> int:
    """ncnn's Permute order_type for a permutation of ncnn axes (outermost first)."""
    rank = len(perm)
    letters = {2: "HW", 3: "CHW", 4: "CDHW"}.get(rank)
    table = {2: _PERMUTE_2D, 3: _PERMUTE_3D, 4: _PERMUTE_4D}.get(rank)
    if letters is None or table is None:
        raise unsupported(node, f"a transpose of {rank} dims")
    spelled = "".join(letters[p] for p in reversed(perm))
    return table.index(spelled)


# ---------------------------------------------------------------------- dispatch

@cache
def op_tables() -> tuple[dict[str, Callable[[Lowering, Node], None]], dict[str, Callable[[Lowering, Node], None]]]:
    """(ONNX op -> lowering, kiln op -> lowering); imported here, as the layer modules import this one."""
    from kiln.codegen.ncnn.layers_compute import (
        REDUCE_OPS,
        UNARY_OPS,
        lower_batchnorm,
        lower_binary,
        lower_conv,
        lower_conv_transpose,
        lower_gemm,
        lower_instancenorm,
        lower_layernorm,
        lower_lrn,
        lower_pool,
        lower_pow,
        lower_reduce,
        lower_softmax,
        lower_sum,
        lower_unary,
    )
    from kiln.codegen.ncnn.layers_data import (
        lower_attention,
        lower_concat,
        lower_depth_to_space,
        lower_gather,
        lower_identity,
        lower_pad,
        lower_qdq,
        lower_reshape,
        lower_resize,
        lower_shuffle,
        lower_slice,
        lower_split,
        lower_transpose,
    )

    onnx_ops: dict[str, Callable[[Lowering, Node], None]] = {
        "Conv": lower_conv,
        "ConvTranspose": lower_conv_transpose,
        "Gemm": lower_gemm,
        "MatMul": lower_gemm,
        "Add": lower_binary,
        "Sub": lower_binary,
        "Mul": lower_binary,
        "Div": lower_binary,
        "Max": lower_binary,
        "Min": lower_binary,
        "Pow": lower_pow,
        "Sum": lower_sum,
        "Mean": lower_sum,
        "MaxPool": lower_pool,
        "AveragePool": lower_pool,
        "GlobalAveragePool": lower_pool,
        "GlobalMaxPool": lower_pool,
        "BatchNormalization": lower_batchnorm,
        "LayerNormalization": lower_layernorm,
        "InstanceNormalization": lower_instancenorm,
        "LRN": lower_lrn,
        "Softmax": lower_softmax,
        "Reshape": lower_reshape,
        "Flatten": lower_reshape,
        "Squeeze": lower_reshape,
        "Unsqueeze": lower_reshape,
        "Transpose": lower_transpose,
        "Concat": lower_concat,
        "Split": lower_split,
        "Slice": lower_slice,
        "Gather": lower_gather,
        "Pad": lower_pad,
        "Resize": lower_resize,
        "Upsample": lower_resize,
        "DepthToSpace": lower_depth_to_space,
        "Identity": lower_identity,
        "Dropout": lower_identity,
        "Cast": lower_identity,
        "QuantizeLinear": lower_qdq,
        "DequantizeLinear": lower_qdq,
        "Clip": lower_unary,
        "PRelu": lower_unary,
        "Erf": lower_unary,
        "Softplus": lower_unary,
        **{op: lower_unary for op in ("Relu", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Mish",
                                      "Elu", "Gelu")},
        **{op: lower_unary for op in UNARY_OPS},
        **{op: lower_reduce for op in REDUCE_OPS},
    }

    kiln_ops: dict[str, Callable[[Lowering, Node], None]] = {
        "ConvAct": lower_conv,
        "ConvTransposeAct": lower_conv_transpose,
        "GemmAct": lower_gemm,
        "LayerNorm": lower_layernorm,
        "Gelu": lower_unary,
        "Swish": lower_unary,
        "HardSwish": lower_unary,
        "ChannelShuffle": lower_shuffle,
        "Attention": lower_attention,
    }
    return onnx_ops, kiln_ops


def lower_node(lw: Lowering, node: Node) -> None:
    """Lowers one node, or raises :class:`UnsupportedOpError` naming it."""
    if node.subgraphs():
        raise unsupported(node, "control flow (If/Loop/Scan)")
    onnx_ops, kiln_ops = op_tables()
    table = onnx_ops if node.domain == "" else kiln_ops if node.domain == "kiln" else {}
    fn = table.get(node.op)
    if fn is None:
        raise unsupported(node, "no ncnn layer computes it")
    fn(lw, node)
