"""A small writer of TFLite flatbuffers (schema version 3, file identifier ``TFL3``).

It stands on the ``flatbuffers`` package and the schema bindings that ship in
``ai_edge_litert/schema_py_generated.py``; the lowering builds one subgraph with
:class:`ModelBuilder` and gets the file's bytes from :meth:`ModelBuilder.finish`::

    b = ModelBuilder("kiln 0.1", metadata={"kiln_pipeline": "O2,tflite-layout"})
    x = b.add_tensor("x", (1, 8, 8, 3), "float32")
    w = b.add_tensor("w", (4, 3, 3, 3), "float32", data=weights)      # OHWI
    y = b.add_tensor("y", (1, 8, 8, 4), "float32")
    b.add_operator("CONV_2D", [x, w, -1], [y], {"padding": "SAME", "fused_activation_function": "RELU"})
    b.set_io([x], [y], ["x"], ["y"])
    data = b.finish()

API:

- ``Quant(scale, zero_point, axis=0)``: affine quantization of a tensor; one scale
  per tensor, or one per slice along ``axis`` (per channel).
- ``ModelBuilder(description="", metadata=None)``; metadata entries (name -> text)
  are stored as buffers named by Model.metadata, in name order.
- ``add_tensor(name, shape, dtype, data=None, quant=None, shape_signature=None) -> int``:
  ``dtype`` is a numpy dtype or one of float32, float16, int8, uint8, int16, int32,
  int64, bool.  ``data`` makes the tensor a constant; constants with the same bytes
  share one buffer (hash, then byte compare), and every buffer's data starts on a
  16-byte boundary of the file.  ``shape_signature`` (``-1`` for a dynamic dim) is
  written only when given.
- ``add_operator(op, inputs, outputs, options=None) -> int``: ``op`` is a
  BuiltinOperator name ("CONV_2D"); ``-1`` in ``inputs`` is an absent optional input.
  ``options`` holds the fields of the op's builtin options table in snake_case
  (``fused_activation_function``), enums by name ("SAME", "RELU6", "float32").
  Fields the schema leaves at a useless zero get working defaults: strides 1,
  Softmax ``beta`` 1.0, and the split/pack counts from the operand lists.
  CONV_2D and DEPTHWISE_CONV_2D without a bias get a zero one (LiteRT refuses an
  absent bias there; int8 convs get an int32 bias scaled input scale x weight scale),
  and DEPTHWISE_CONV_2D's ``depth_multiplier`` defaults to filter / input channels.
  Operator codes are shared per op; an op's version is the highest its uses need,
  by the rules of TFLite's ``tools/versioning/op_version.cc`` (int8 CONV_2D is 3,
  int8 FULLY_CONNECTED 4, a FULLY_CONNECTED without bias 6, per-channel int8
  DEQUANTIZE 5 ...).  ``deprecated_builtin_code`` is ``min(code, 127)`` (127 is
  PLACEHOLDER_FOR_GREATER_OP_CODES) and ``builtin_code`` the real code.
- ``tensor(index) -> TensorInfo``: a declared tensor's name, shape, dtype name ("int8"),
  quantization and whether it is a constant.
- ``set_io(inputs, outputs, signature_inputs, signature_outputs)``: the subgraph's
  inputs and outputs, and one SignatureDef "serving_default" naming them.
- ``finish() -> bytes``: the same calls give the same bytes.  Constant data above
  :data:`INLINE_LIMIT` bytes in all goes after the flatbuffer (Buffer.offset/size,
  16-byte aligned), as the TFLite converter does for models over 2 GB.

Misuse (an unknown op or option field, a bad tensor index, an unsupported dtype)
is a ``ValueError``: a bug in the caller.  The lowering reports what the user can
cause (an op TFLite lacks) as :class:`kiln.errors.UnsupportedOpError` before.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as fb

__all__ = ["ALIGNMENT", "INLINE_LIMIT", "SCHEMA_VERSION", "ModelBuilder", "Quant", "TensorInfo", "type_name"]

SCHEMA_VERSION = 3
FILE_IDENTIFIER = b"TFL3"
ALIGNMENT = 16
# A flatbuffer cannot pass 2 GiB; leave room for the tables beside the weights.
INLINE_LIMIT = 2**31 - 2**26
SIGNATURE_KEY = "serving_default"

# BuiltinOperator codes from 127 on live in builtin_code only; the old byte field says 127.
_PLACEHOLDER_FOR_GREATER_OP_CODES = 127

_DTYPES: dict[str, int] = {
    "float32": fb.TensorType.FLOAT32,
    "float16": fb.TensorType.FLOAT16,
    "int8": fb.TensorType.INT8,
    "uint8": fb.TensorType.UINT8,
    "int16": fb.TensorType.INT16,
    "int32": fb.TensorType.INT32,
    "int64": fb.TensorType.INT64,
    "bool": fb.TensorType.BOOL,
}
_TYPE_NAMES = {code: name for name, code in _DTYPES.items()}


def _enum_values(cls: type) -> dict[str, int]:
    return {k: v for k, v in vars(cls).items() if not k.startswith("_") and isinstance(v, int)}


_OPERATORS = _enum_values(fb.BuiltinOperator)
_OPTION_UNIONS = _enum_values(fb.BuiltinOptions)
_OPTION_UNIONS_BY_KEY = {name.lower(): name for name in _OPTION_UNIONS if name != "NONE"}

# Ops whose options table is not named after the op.
_OPTIONS_OVERRIDE = {
    "AVERAGE_POOL_2D": "Pool2DOptions",
    "MAX_POOL_2D": "Pool2DOptions",
    "L2_POOL_2D": "Pool2DOptions",
    "MEAN": "ReducerOptions",
    "SUM": "ReducerOptions",
    "REDUCE_MAX": "ReducerOptions",
    "REDUCE_MIN": "ReducerOptions",
    "REDUCE_PROD": "ReducerOptions",
    "REDUCE_ANY": "ReducerOptions",
    "REDUCE_ALL": "ReducerOptions",
    "MAXIMUM": "MaximumMinimumOptions",
    "MINIMUM": "MaximumMinimumOptions",
    "UNIDIRECTIONAL_SEQUENCE_RNN": "SequenceRNNOptions",
    "LOCAL_RESPONSE_NORMALIZATION": "LocalResponseNormalizationOptions",
    "L2_NORMALIZATION": "L2NormOptions",
    "SELECT": "SelectOptions",
}

# Option fields holding an enum, so that callers may name the value.
_ENUM_FIELDS: dict[str, dict[str, int]] = {
    "padding": _enum_values(fb.Padding),
    "fused_activation_function": _enum_values(fb.ActivationFunctionType),
    "weights_format": _enum_values(fb.FullyConnectedOptionsWeightsFormat),
    "mode": _enum_values(fb.MirrorPadMode),
}
_TYPE_FIELDS = {"in_data_type", "out_data_type", "output_type", "idx_out_type", "quantized_bias_type"}

# Working defaults where the schema's zero would break the kernel.
_DEFAULTS: dict[str, dict[str, Any]] = {
    "Conv2DOptions": {"stride_w": 1, "stride_h": 1},
    "DepthwiseConv2DOptions": {"stride_w": 1, "stride_h": 1},
    "TransposeConvOptions": {"stride_w": 1, "stride_h": 1},
    "Pool2DOptions": {"stride_w": 1, "stride_h": 1},
    "SoftmaxOptions": {"beta": 1.0},
}


@dataclass(frozen=True)
class Quant:
    """Affine quantization ``real = scale * (q - zero_point)``; per channel along ``axis``."""

    scale: np.ndarray
    zero_point: np.ndarray
    axis: int = 0


@dataclass(frozen=True)
class TensorInfo:
    """A tensor as declared to :meth:`ModelBuilder.add_tensor`; ``constant`` when it has data."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    quant: Quant | None
    constant: bool


@dataclass
class _Tensor:
    name: str
    shape: tuple[int, ...]
    type: int
    buffer: int
    quant: Quant | None
    shape_signature: tuple[int, ...] | None


class ModelBuilder:
    """Collects one subgraph's tensors and operators and writes the TFLite file."""

    def __init__(self, description: str = "", metadata: Mapping[str, str] | None = None):
        self._description = description
        self._metadata = dict(metadata or {})
        # Buffer 0 is the empty buffer every non-constant tensor points at.
        self._buffers: list[bytes] = [b""]
        self._buffer_index: dict[bytes, list[int]] = {}
        self._tensors: list[_Tensor] = []
        self._opcodes: dict[int, int] = {}  # builtin code -> opcode index
        self._opcode_list: list[list[int]] = []  # [builtin code, version]
        self._operators: list[fb.OperatorT] = []
        self._io: tuple[list[int], list[int], list[str], list[str]] = ([], [], [], [])

    # -- tensors -------------------------------------------------------------------------------

    def add_tensor(
        self,
        name: str,
        shape: Sequence[int],
        dtype: Any,
        data: Any = None,
        quant: Quant | None = None,
        shape_signature: Sequence[int] | None = None,
    ) -> int:
        """Adds a tensor (a constant when ``data`` is given); returns its index."""
        type_code, np_dtype = _tensor_type(dtype)
        dims = tuple(int(d) for d in shape)
        if any(d < 0 for d in dims):
            raise ValueError(f"tensor {name!r}: shape {dims} has a negative dim; use shape_signature")
        if shape_signature is not None:
            shape_signature = tuple(int(d) for d in shape_signature)
            if len(shape_signature) != len(dims):
                raise ValueError(f"tensor {name!r}: shape_signature {shape_signature} and shape {dims} "
                                 "differ in rank")
        buffer = 0
        if data is not None:
            array = np.asarray(data)
            if array.size != math.prod(dims):
                raise ValueError(f"tensor {name!r}: {array.size} values for shape {dims}")
            raw = np.ascontiguousarray(array.astype(np_dtype.newbyteorder("<"), copy=False)).tobytes()
            buffer = self._add_buffer(raw)
        self._tensors.append(_Tensor(name, dims, type_code, buffer, quant, shape_signature))
        return len(self._tensors) - 1

    def tensor(self, index: int) -> TensorInfo:
        """What was declared for tensor ``index``: name, shape, dtype name, quantization."""
        t = self._tensors[index]
        return TensorInfo(t.name, t.shape, _TYPE_NAMES[t.type], t.quant, t.buffer != 0)

    def _add_buffer(self, raw: bytes) -> int:
        # Keyed by a digest, confirmed by comparing the bytes, so a collision cannot merge weights.
        digest = hashlib.sha256(raw).digest()
        for index in self._buffer_index.get(digest, ()):
            if self._buffers[index] == raw:
                return index
        self._buffers.append(raw)
        self._buffer_index.setdefault(digest, []).append(len(self._buffers) - 1)
        return len(self._buffers) - 1

    # -- operators -----------------------------------------------------------------------------

    def add_operator(
        self, op: str, inputs: Sequence[int], outputs: Sequence[int], options: Mapping[str, Any] | None = None
    ) -> int:
        """Adds an operator in execution order; returns its index in the subgraph."""
        if op not in _OPERATORS or op in ("CUSTOM", "DELEGATE", "PLACEHOLDER_FOR_GREATER_OP_CODES"):
            raise ValueError(f"{op!r} is not a TFLite builtin operator")
        ins = [int(i) for i in inputs]
        outs = [int(i) for i in outputs]
        count = len(self._tensors)
        bad = [i for i in ins if not -1 <= i < count] + [i for i in outs if not 0 <= i < count]
        if bad:
            raise ValueError(f"{op}: tensor index {bad[0]} does not exist")
        options = dict(options or {})
        if op in ("CONV_2D", "DEPTHWISE_CONV_2D") and len(ins) >= 2:
            ins = self._conv_operands(op, ins, options)
        union_name = _options_union(op)
        if union_name is None and options:
            raise ValueError(f"{op} takes no options, got {sorted(options)}")
        table = None
        values: dict[str, Any] = {}
        if union_name is not None:
            filled = _with_defaults(op, union_name, options, len(ins), len(outs))
            table = _options_table(op, union_name, filled)
            # The version rules read the final values (enums as numbers), by snake_case name.
            values = {_snake(attr): value for attr, value in vars(table).items()}
        version = _op_version(op, [self._tensors[i] if i >= 0 else None for i in ins],
                              [self._tensors[i] for i in outs], values)
        operator = fb.OperatorT()
        operator.opcodeIndex = self._opcode(_OPERATORS[op], version)
        operator.inputs = np.asarray(ins, dtype=np.int32)
        operator.outputs = np.asarray(outs, dtype=np.int32)
        if union_name is not None:
            operator.builtinOptionsType = _OPTION_UNIONS[union_name]
            operator.builtinOptions = table
        self._operators.append(operator)
        return len(self._operators) - 1

    def _conv_operands(self, op: str, ins: list[int], options: dict[str, Any]) -> list[int]:
        """Fills what LiteRT's conv kernels insist on: a bias tensor, and the depth multiplier."""
        x, w = self._tensors[ins[0]], self._tensors[ins[1]]
        if op == "DEPTHWISE_CONV_2D" and "depth_multiplier" not in options and x.shape and w.shape:
            options["depth_multiplier"] = max(w.shape[-1] // max(x.shape[-1], 1), 1)
        if len(ins) >= 3 and ins[2] >= 0:
            return ins
        # Both kernels refuse an absent (-1) bias at prepare time, so give them zeros.
        channels = w.shape[0] if op == "CONV_2D" else w.shape[-1]
        quant = None
        dtype = "float32"
        if w.type == _DTYPES["int8"] and w.quant is not None and x.quant is not None:
            x_scale = np.asarray(x.quant.scale, np.float64).reshape(-1)[0]
            scale = np.broadcast_to(x_scale * np.asarray(w.quant.scale, np.float64).reshape(-1), (channels,))
            quant, dtype = Quant(scale.astype(np.float32), np.zeros(channels, np.int64), 0), "int32"
        bias = self.add_tensor(f"{w.name}_zero_bias", (channels,), dtype, data=np.zeros(channels),
                               quant=quant)
        return [*ins[:2], bias]

    def _opcode(self, code: int, version: int) -> int:
        index = self._opcodes.get(code)
        if index is None:
            index = self._opcodes[code] = len(self._opcode_list)
            self._opcode_list.append([code, version])
        else:
            entry = self._opcode_list[index]
            entry[1] = max(entry[1], version)
        return index

    def set_io(
        self,
        inputs: Sequence[int],
        outputs: Sequence[int],
        signature_inputs: Sequence[str],
        signature_outputs: Sequence[str],
    ) -> None:
        """Sets the subgraph inputs/outputs and the "serving_default" signature names."""
        if len(inputs) != len(signature_inputs) or len(outputs) != len(signature_outputs):
            raise ValueError("set_io: one signature name per input and per output")
        for index in [*inputs, *outputs]:
            if not 0 <= index < len(self._tensors):
                raise ValueError(f"set_io: tensor index {index} does not exist")
        self._io = ([int(i) for i in inputs], [int(i) for i in outputs],
                    list(signature_inputs), list(signature_outputs))

    # -- writing -------------------------------------------------------------------------------

    def finish(self) -> bytes:
        """The TFLite file: deterministic bytes for the same sequence of calls."""
        meta_names = sorted(self._metadata)
        buffers = self._buffers + [self._metadata[k].encode("utf-8") for k in meta_names]
        total = sum(len(b) for b in buffers)
        if total <= INLINE_LIMIT:
            return self._pack(buffers, meta_names, None)
        # Out-of-line data: offsets depend on the flatbuffer's size, which does not depend on their
        # values (each Buffer keeps its fixed-size offset/size fields), so one trial pass sizes it.
        trial = self._pack(buffers, meta_names, [1] * len(buffers))
        offsets, position = [], _align(len(trial))
        for raw in buffers:
            offsets.append(position if raw else 0)
            position = _align(position + len(raw)) if raw else position
        head = self._pack(buffers, meta_names, offsets)
        if len(head) != len(trial):
            raise AssertionError("flatbuffer size changed between passes")
        out = bytearray(head)
        for raw, offset in zip(buffers, offsets):
            if raw:
                out.extend(b"\0" * (offset - len(out)))
                out.extend(raw)
        return bytes(out)

    def _pack(self, buffers: list[bytes], meta_names: list[str], offsets: list[int] | None) -> bytes:
        model = fb.ModelT()
        model.version = SCHEMA_VERSION
        model.description = self._description
        model.operatorCodes = [_opcode_table(code, version) for code, version in self._opcode_list]
        model.subgraphs = [self._subgraph()]
        model.buffers = [_Buffer(raw, None if offsets is None else offsets[i])
                         for i, raw in enumerate(buffers)]
        first_meta = len(self._buffers)
        model.metadata = [_metadata_table(name, first_meta + i) for i, name in enumerate(meta_names)] or None
        model.signatureDefs = [self._signature()]
        inline = sum(len(b) for b in buffers) if offsets is None else 0
        builder = flatbuffers.Builder(inline + 65536 + 256 * (len(self._tensors) + len(self._operators)))
        builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
        return bytes(builder.Output())

    def _subgraph(self) -> fb.SubGraphT:
        graph = fb.SubGraphT()
        graph.tensors = [_tensor_table(t) for t in self._tensors]
        graph.inputs = np.asarray(self._io[0], dtype=np.int32)
        graph.outputs = np.asarray(self._io[1], dtype=np.int32)
        graph.operators = self._operators
        graph.name = "main"
        return graph

    def _signature(self) -> fb.SignatureDefT:
        inputs, outputs, in_names, out_names = self._io
        sig = fb.SignatureDefT()
        sig.signatureKey = SIGNATURE_KEY
        sig.subgraphIndex = 0
        sig.inputs = [_tensor_map(name, index) for name, index in zip(in_names, inputs)]
        sig.outputs = [_tensor_map(name, index) for name, index in zip(out_names, outputs)]
        return sig


class _Buffer(fb.BufferT):
    """A Buffer whose data vector starts on an :data:`ALIGNMENT` boundary (the schema's force_align)."""

    def __init__(self, raw: bytes, offset: int | None):
        super().__init__()
        self.raw = raw
        self.out_of_line = offset

    def Pack(self, builder: flatbuffers.Builder) -> int:
        data = None
        if self.raw and self.out_of_line is None:
            builder.StartVector(1, len(self.raw), ALIGNMENT)
            builder.head = builder.head - len(self.raw)
            builder.Bytes[builder.head : builder.head + len(self.raw)] = self.raw
            data = builder.EndVector()
        fb.BufferStart(builder)
        if data is not None:
            fb.BufferAddData(builder, data)
        if self.raw and self.out_of_line is not None:
            # Both non-zero, so always written: both passes of finish() give tables of one size.
            fb.BufferAddOffset(builder, self.out_of_line)
            fb.BufferAddSize(builder, len(self.raw))
        return fb.BufferEnd(builder)


def _align(n: int) -> int:
    return (n + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


def _tensor_type(dtype: Any) -> tuple[int, np.dtype]:
    try:
        np_dtype = np.dtype(dtype)
    except TypeError:
        raise ValueError(f"unknown dtype {dtype!r}") from None
    name = "bool" if np_dtype == np.bool_ else np_dtype.name
    if name not in _DTYPES:
        raise ValueError(f"dtype {name} has no TFLite tensor type here (have: {', '.join(_DTYPES)})")
    return _DTYPES[name], np_dtype


def _tensor_table(t: _Tensor) -> fb.TensorT:
    table = fb.TensorT()
    table.name = t.name
    table.shape = np.asarray(t.shape, dtype=np.int32)
    table.type = t.type
    table.buffer = t.buffer
    table.hasRank = True
    if t.shape_signature is not None:
        table.shapeSignature = np.asarray(t.shape_signature, dtype=np.int32)
    if t.quant is not None:
        q = fb.QuantizationParametersT()
        q.scale = np.asarray(t.quant.scale, dtype=np.float32).reshape(-1)
        q.zeroPoint = np.asarray(t.quant.zero_point, dtype=np.int64).reshape(-1)
        q.quantizedDimension = int(t.quant.axis)
        table.quantization = q
    return table


def _opcode_table(code: int, version: int) -> fb.OperatorCodeT:
    table = fb.OperatorCodeT()
    table.deprecatedBuiltinCode = min(code, _PLACEHOLDER_FOR_GREATER_OP_CODES)
    table.builtinCode = code
    table.version = version
    return table


def _metadata_table(name: str, buffer: int) -> fb.MetadataT:
    table = fb.MetadataT()
    table.name = name
    table.buffer = buffer
    return table


def _tensor_map(name: str, index: int) -> fb.TensorMapT:
    table = fb.TensorMapT()
    table.name = name
    table.tensorIndex = index
    return table


# -- builtin options ---------------------------------------------------------------------------


def _options_union(op: str) -> str | None:
    if op in _OPTIONS_OVERRIDE:
        return _OPTIONS_OVERRIDE[op]
    return _OPTION_UNIONS_BY_KEY.get(op.replace("_", "").lower() + "options")


def _camel(field: str) -> str:
    head, *rest = field.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _snake(attr: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", attr).lower()


def _with_defaults(
    op: str, union_name: str, options: dict[str, Any], n_in: int, n_out: int
) -> dict[str, Any]:
    merged = {**_DEFAULTS.get(union_name, {}), **options}
    if op in ("SPLIT", "SPLIT_V", "UNPACK"):
        merged.setdefault("num_splits" if op != "UNPACK" else "num", n_out)
    if op == "PACK":
        merged.setdefault("values_count", n_in)
    return merged


def _options_table(op: str, union_name: str, options: Mapping[str, Any]) -> Any:
    table = getattr(fb, union_name + "T")()
    known = vars(table)
    for field, value in sorted(options.items()):
        attr = _camel(field)
        if attr not in known:
            fields = ", ".join(sorted(_snake(a) for a in known))
            raise ValueError(f"{op}: {union_name} has no field {field!r} (fields: {fields})")
        setattr(table, attr, _option_value(op, field, value))
    return table


def _option_value(op: str, field: str, value: Any) -> Any:
    if field in _ENUM_FIELDS and isinstance(value, str):
        names = _ENUM_FIELDS[field]
        if value.upper() not in names:
            raise ValueError(f"{op}: {field} {value!r} is not one of {', '.join(names)}")
        return names[value.upper()]
    if field in _TYPE_FIELDS and not isinstance(value, (int, np.integer)):
        return _tensor_type(value)[0]
    if isinstance(value, (list, tuple, np.ndarray)):
        return np.asarray(value, dtype=np.int32)
    if isinstance(value, np.generic):
        return value.item()
    return value


# -- operator versions (TFLite tools/versioning/op_version.cc) --------------------------------

_F32, _F16, _I8, _U8, _I16, _I32, _I64, _BOOL = (
    _DTYPES[k] for k in ("float32", "float16", "int8", "uint8", "int16", "int32", "int64", "bool"))


class _Sig:
    """What op_version.cc's OpSignature knows of one operator use: operand types, ranks, options."""

    def __init__(self, ins: list[_Tensor | None], outs: list[_Tensor], options: Mapping[str, Any]):
        self.ins, self.outs, self.options = ins, outs, options

    def t(self, i: int = 0) -> int | None:
        tensor = self.ins[i] if i < len(self.ins) else None
        return tensor.type if tensor is not None else None

    def out(self, i: int = 0) -> int | None:
        return self.outs[i].type if i < len(self.outs) else None

    def rank(self, i: int = 0) -> int:
        tensor = self.ins[i] if i < len(self.ins) else None
        return len(tensor.shape) if tensor is not None else 0

    def opt(self, name: str, default: Any = 0) -> Any:
        return self.options.get(name, default)

    @property
    def hybrid(self) -> bool:
        """Float activations with int8 weights (dequantized in the kernel)."""
        return self.t(0) == _F32 and self.t(1) == _I8 and self.out() == _F32

    def all_int(self, dtype: int) -> bool:
        return self.t(0) == dtype and self.t(1) == dtype and self.out() == dtype

    @staticmethod
    def per_channel(tensor: _Tensor | None) -> bool:
        return tensor is not None and tensor.quant is not None and np.asarray(tensor.quant.scale).size > 1

    def broadcast_over_4d(self) -> bool:
        shapes = [x.shape for x in self.ins[:2] if x is not None]
        return len(shapes) == 2 and shapes[0] != shapes[1] and max(len(s) for s in shapes) > 4

    def first_scale(self, tensor: _Tensor | None) -> float | None:
        if tensor is None or tensor.quant is None:
            return None
        return float(np.asarray(tensor.quant.scale).reshape(-1)[0])


def _ladder(s: _Sig, i16: int = 3, i8: int = 2) -> int:
    """The common rule: int16 operands give ``i16``, int8 ones ``i8``, anything else 1."""
    return i16 if s.t(0) == _I16 else i8 if s.t(0) == _I8 else 1


def _conv_2d(s: _Sig) -> int:
    x, w = s.ins[0], s.ins[1]
    if x is not None and w is not None and x.shape and w.shape and x.shape[-1] != w.shape[-1]:
        return 6  # grouped convolution
    if s.all_int(_I16):
        return 4
    if s.all_int(_I8):
        return 3
    if s.hybrid:
        return 5 if s.per_channel(w) else 2
    return 1


def _depthwise_conv_2d(s: _Sig) -> int:
    if s.all_int(_I16):
        return 5
    if s.hybrid:
        return 6 if s.per_channel(s.ins[1]) else 4
    if s.all_int(_I8):
        return 3
    return 2 if s.opt("dilation_w_factor", 1) != 1 or s.opt("dilation_h_factor", 1) != 1 else 1


def _fully_connected(s: _Sig) -> int:
    if s.hybrid and s.per_channel(s.ins[1]):
        return 12
    if s.all_int(_I16):
        return 7
    if len(s.ins) == 2:  # no bias operand at all; an absent (-1) bias still counts as one
        return 6
    if s.opt("keep_num_dims", False):
        return 5
    if s.all_int(_I8):
        return 4
    if s.hybrid:
        return 9 if s.opt("asymmetric_quantize_inputs", False) else 3
    return 2 if s.opt("weights_format") else 1


def _transpose_conv(s: _Sig) -> int:
    if s.opt("fused_activation_function"):
        return 4
    if len(s.ins) == 4 and s.ins[3] is not None:
        return 3
    return 2 if s.t(1) == _I8 else 1


def _mul(s: _Sig) -> int:
    if s.t(0) == _I64:
        return 5
    if s.t(0) == _I16:
        return 4
    scales = [s.first_scale(x) for x in (*s.ins[:2], *s.outs[:1])]
    s1, s2, so = (scales + [None, None, None])[:3]
    if s.t(0) == _I8 and s1 is not None and s2 is not None and so and s1 * s2 / so >= 1.0:
        return 3  # an output rescale of 1 or more
    return 2 if s.t(0) == _I8 else 1


def _dequantize(s: _Sig) -> int:
    if s.t(0) in (_I16, _F16):
        return 3
    if s.t(0) == _I8:
        return 5 if s.per_channel(s.ins[0]) else 2
    return 1


def _with_rank(s: _Sig, rank_over_4: int, rule: int) -> int:
    return rank_over_4 if s.rank() > 4 else rule


_VERSION_RULES: dict[str, Callable[[_Sig], int]] = {
    "CONV_2D": _conv_2d,
    "DEPTHWISE_CONV_2D": _depthwise_conv_2d,
    "FULLY_CONNECTED": _fully_connected,
    "TRANSPOSE_CONV": _transpose_conv,
    "MUL": _mul,
    "DEQUANTIZE": _dequantize,
    "QUANTIZE": lambda s: 3 if s.per_channel(s.outs[0]) else 2 if s.out() == _I16 else 1,
    "ADD": lambda s: 4 if s.t(0) == _I64 else 3 if (s.t(0) == _I16 and not s.opt("pot_scale_int16", True))
    else 2 if s.t(0) == _I8 else 1,
    "SUB": lambda s: 4 if s.t(0) == _I64 else 3 if s.broadcast_over_4d() else 2 if s.t(0) == _I8 else 1,
    "DIV": lambda s: 2 if s.broadcast_over_4d() else 1,
    "MAXIMUM": lambda s: 4 if s.t(0) == _I16 else 3 if s.broadcast_over_4d() else 2 if s.t(0) == _I8 else 1,
    "MINIMUM": lambda s: 4 if s.t(0) == _I16 else 3 if s.broadcast_over_4d() else 2 if s.t(0) == _I8 else 1,
    "TRANSPOSE": lambda s: 6 if s.rank() > 5 else 5 if s.t(0) == _I16 else 4 if s.rank() > 4
    else 3 if s.t(0) == _BOOL else 2 if s.t(0) == _I8 else 1,
    "STRIDED_SLICE": lambda s: 8 if s.opt("offset", False)
    else 6 if (s.opt("ellipsis_mask") or s.opt("new_axis_mask"))
    else 4 if s.rank() > 4 else 3 if s.t(0) == _BOOL else 2 if s.t(0) == _I8 else 1,
    "SLICE": lambda s: _with_rank(s, 5, _ladder(s, i16=4)),
    "PAD": lambda s: _with_rank(s, 4, _ladder(s)),
    "PADV2": lambda s: _with_rank(s, 4, _ladder(s)),
    "GATHER": lambda s: 6 if s.t(1) == _I16 else 5 if s.opt("batch_dims") else 4 if s.t(0) == _I16
    else 3 if s.t(0) == _BOOL else 2 if s.t(0) == _I8 else 1,
    "SPLIT": lambda s: 4 if s.t(1) == _I16 else 3 if s.t(1) == _I32 else 2 if s.t(1) == _I8 else 1,
    "RESIZE_BILINEAR": lambda s: 4 if s.t(0) == _I16 else 3 if s.opt("half_pixel_centers", False)
    else 2 if s.t(0) == _I8 else 1,
    "RESIZE_NEAREST_NEIGHBOR": lambda s: 4 if s.t(0) == _I16
    else 3 if (s.opt("half_pixel_centers", False) or s.opt("align_corners", False))
    else 2 if s.t(0) == _I8 else 1,
    "CAST": lambda s: 5 if _F16 in (s.t(0), s.out()) else 3 if _I8 in (s.t(0), s.out()) else 1,
    "BATCH_MATMUL": lambda s: _ladder(s) if s.t(0) in (_I16, _I8)
    else 4 if s.hybrid and s.opt("asymmetric_quantize_inputs", False) else 1,
    "LEAKY_RELU": lambda s: 2 if s.t(0) == _I16 else 1,
    "RELU": lambda s: 3 if s.t(0) == _I16 else 2 if s.t(0) in (_I8, _U8) else 1,
    "ARG_MAX": lambda s: 3 if s.t(0) == _BOOL else 2 if s.t(0) == _I8 else 1,
    "ARG_MIN": lambda s: 3 if s.t(0) == _BOOL else 2 if s.t(0) == _I8 else 1,
    "PACK": lambda s: 2 if s.t(0) == _I8 else 3 if s.t(0) == _I16 else 1,
    "UNPACK": lambda s: 2 if s.t(0) in (_I8, _U8) else 3 if s.t(0) == _BOOL else 4 if s.t(0) == _I16 else 1,
    "TILE": lambda s: 3 if s.t(0) == _I8 else 1,
    "BROADCAST_TO": lambda s: 3 if s.t(0) in (_I8, _I16) else 2,  # version 1 was withdrawn
    "SPACE_TO_BATCH_ND": lambda s: 4 if s.t(0) == _I16 else 3 if s.rank() != 4 else 2 if s.t(0) == _I8 else 1,
    "BATCH_TO_SPACE_ND": lambda s: 4 if s.t(0) == _I16 else 3 if s.rank() != 4 else 2 if s.t(0) == _I8 else 1,
    "SELECT": lambda s: 3 if 5 in (s.rank(0), s.rank(1), s.rank(2)) else 2 if s.t(0) == _I8 else 1,
    "RANGE": lambda s: 2 if s.t(0) == _I64 else 1,
    "WHERE": lambda s: 1 if s.t(0) == _BOOL else 2,
}
for _op in ("TANH", "LOGISTIC", "MAX_POOL_2D", "AVERAGE_POOL_2D", "CONCATENATION", "SOFTMAX", "MEAN",
            "MIRROR_PAD", "REDUCE_MAX", "REDUCE_MIN", "RELU6", "RSQRT", "LESS", "GREATER_EQUAL"):
    _VERSION_RULES[_op] = _ladder
for _op in ("SPLIT_V", "SUM", "LOG_SOFTMAX", "GREATER", "LESS_EQUAL", "SQUARED_DIFFERENCE", "DEPTH_TO_SPACE",
            "SPACE_TO_DEPTH", "TOPK_V2"):
    _VERSION_RULES[_op] = lambda s: 2 if s.t(0) == _I8 else 1
for _op in ("EXP", "LOG", "REDUCE_PROD"):
    _VERSION_RULES[_op] = lambda s: 2 if s.t(0) in (_I8, _I16) else 1
_VERSION_RULES["GELU"] = lambda s: 2 if s.t(0) in (_I8, _U8) else 1
_VERSION_RULES["EQUAL"] = lambda s: 4 if s.t(0) == _I16 else 2 if s.t(0) == _I8 else 1


def _op_version(op: str, ins: list[_Tensor | None], outs: list[_Tensor], options: Mapping[str, Any]) -> int:
    """The lowest version of ``op`` whose kernel accepts these operand types and options."""
    rule = _VERSION_RULES.get(op)
    return rule(_Sig(ins, outs, options)) if rule is not None else 1


def type_name(code: int) -> str:
    """The dtype name of a TensorType code ("float32" ...), for messages and new tensors."""
    return _TYPE_NAMES.get(code, str(code))
