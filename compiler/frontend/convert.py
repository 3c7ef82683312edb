"""Conversions from ONNX protobuf pieces to kiln's IR: types, tensors and attributes.

Tensors are converted lazily where that saves work: ``raw_data`` is taken out
of the protobuf once (protobuf hands out a copy of its bytes) and viewed with
``np.frombuffer`` only when the data is first asked for; external data is
memory-mapped on first use, after its location has been checked with
:func:`kiln.ir.tensor.safe_external_path`.  The typed fields (``float_data``,
``int32_data`` ...) are converted at once, which numpy does at memcpy speed.

Every element count is checked against the bytes actually present before
anything is allocated, so a declared shape of 2^40 elements costs nothing:
it is refused with a :class:`TensorDataError` naming the mismatch.

Symbolic dims keep the model's ``dim_param`` names, except two kinds of names
that carry no meaning and become ``None`` (unknown): ``"?"`` and the
``unk__N`` names that ONNX's shape inference invents for dims it cannot name.
The latter are numbered per model run, so keeping them would make the IR
depend on how often inference ran; a ``None`` dim prints as ``?``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Sequence

import numpy as np
import onnx
from kiln.ir.core import Attr, AttrKind, Graph
from kiln.ir.dtypes import DType
from kiln.ir.tensor import ExternalLocation, Tensor, safe_external_path
from kiln.ir.types import Dim, OptionalType, SequenceType, TensorType, Type

__all__ = [
    "TensorDataError",
    "attr_from_proto",
    "dim_from_proto",
    "is_packed",
    "packed_nbytes",
    "sparse_tensor_from_proto",
    "tensor_from_proto",
    "tensor_type_of",
    "type_from_proto",
    "type_to_proto",
    "unpack_bits",
]


class TensorDataError(ValueError):
    """A tensor's data is missing, truncated, unreadable or outside the model's folder."""


# --------------------------------------------------------------------------- types

_GENERATED_DIM = re.compile(r"unk__\d+\Z")


def dim_from_proto(dim: onnx.TensorShapeProto.Dimension) -> Dim:
    """A dim as kiln writes it: ``int`` (>= 0), a symbol name, or ``None`` (unknown)."""
    which = dim.WhichOneof("value")
    if which == "dim_value":
        value = dim.dim_value
        return value if value >= 0 else None
    if which == "dim_param":
        name = dim.dim_param
        if not name or name == "?" or _GENERATED_DIM.match(name):
            return None
        return name
    return None


def _dtype_or_none(elem_type: int) -> DType | None:
    if elem_type == 0:
        return None
    try:
        return DType(elem_type)
    except ValueError:
        return None


def type_from_proto(proto: onnx.TypeProto) -> Type | None:
    """The kiln type of an ONNX ``TypeProto``; ``None`` when nothing usable is known.

    Tensor types keep static dims as ints and named dims as symbols; maps,
    sparse tensors and opaque types have no kiln equivalent and give ``None``.
    Nested sequence/optional types are unwrapped with a loop, not recursion.
    """
    wrappers: list[type] = []
    t: onnx.TypeProto | None = proto
    inner: Type | None = None
    while t is not None:
        which = t.WhichOneof("value")
        if which == "tensor_type":
            tt = t.tensor_type
            dtype = _dtype_or_none(tt.elem_type)
            if dtype is not None:
                shape = tuple(dim_from_proto(d) for d in tt.shape.dim) if tt.HasField("shape") else None
                inner = TensorType(dtype, shape)
            break
        if which == "sequence_type":
            wrappers.append(SequenceType)
            st = t.sequence_type
            t = st.elem_type if st.HasField("elem_type") else None
        elif which == "optional_type":
            wrappers.append(OptionalType)
            ot = t.optional_type
            t = ot.elem_type if ot.HasField("elem_type") else None
        else:
            # map, sparse tensor, opaque: kiln has no type for them.
            if wrappers:
                inner = None
                break
            return None
    for cls in reversed(wrappers):
        inner = cls(inner)
    return inner


def type_to_proto(t: Type | None) -> onnx.TypeProto:
    """The ONNX ``TypeProto`` of a kiln type (an empty one for ``None``)."""
    proto = onnx.TypeProto()
    target = proto
    while t is not None:
        if isinstance(t, TensorType):
            tt = target.tensor_type
            tt.elem_type = int(t.dtype)
            if t.shape is not None:
                shape = tt.shape
                shape.SetInParent()
                for d in t.shape:
                    dim = shape.dim.add()
                    if isinstance(d, int):
                        dim.dim_value = d
                    elif isinstance(d, str):
                        dim.dim_param = d
            break
        if isinstance(t, SequenceType):
            target.sequence_type.SetInParent()
            if t.elem is None:
                break
            target = target.sequence_type.elem_type
            t = t.elem
        elif isinstance(t, OptionalType):
            target.optional_type.SetInParent()
            if t.elem is None:
                break
            target = target.optional_type.elem_type
            t = t.elem
        else:
            raise TypeError(f"not a kiln type: {t!r}")
    return proto


# --------------------------------------------------------------------------- packed data

_PACKED_PER_BYTE = {
    DType.INT4: 2,
    DType.UINT4: 2,
    DType.FLOAT4E2M1: 2,
    DType.INT2: 4,
    DType.UINT2: 4,
}
_SIX_BIT = frozenset({DType.FLOAT6E2M3, DType.FLOAT6E3M2})


def packed_nbytes(dtype: DType, count: int) -> int:
    """Bytes ONNX uses to store ``count`` elements of ``dtype`` in ``raw_data``."""
    bits = dtype.itemsize_bits
    if bits >= 8:
        return count * (bits // 8)
    per = _PACKED_PER_BYTE.get(dtype)
    if per is not None:
        return (count + per - 1) // per
    if dtype in _SIX_BIT:
        return (count * 6 + 7) // 8
    return count * (dtype.itemsize_bits // 8)


def unpack_bits(data: np.ndarray, dtype: DType, shape: tuple[int, ...]) -> np.ndarray:
    """Unpacks ONNX's packed sub-byte layout (``uint8`` bytes) into one element per byte."""
    count = math.prod(shape)
    data = np.asarray(data, dtype=np.uint8).reshape(-1)
    per = _PACKED_PER_BYTE.get(dtype)
    if per is not None:
        bits = 8 // per
        mask = (1 << bits) - 1
        out = np.empty((data.size, per), dtype=np.uint8)
        for k in range(per):
            out[:, k] = (data >> (k * bits)) & mask
        flat = out.reshape(-1)[:count]
    elif dtype in _SIX_BIT:
        groups = (count + 3) // 4
        padded = np.zeros(groups * 3, dtype=np.uint8)
        padded[: min(data.size, groups * 3)] = data[: groups * 3]
        b0, b1, b2 = padded[0::3], padded[1::3], padded[2::3]
        out = np.empty((groups, 4), dtype=np.uint8)
        out[:, 0] = b0 & 0x3F
        out[:, 1] = (b0 >> 6) | ((b1 & 0x0F) << 2)
        out[:, 2] = (b1 >> 4) | ((b2 & 0x03) << 4)
        out[:, 3] = b2 >> 2
        flat = out.reshape(-1)[:count]
    else:
        raise TypeError(f"{dtype.name} is not a packed type")
    if flat.size < count:
        raise TensorDataError(f"packed {dtype.name} data holds {flat.size} elements, {count} declared")
    return np.ascontiguousarray(flat).view(dtype.numpy).reshape(shape)


def is_packed(dtype: DType) -> bool:
    return dtype in _PACKED_PER_BYTE or dtype in _SIX_BIT


# --------------------------------------------------------------------------- tensors


def _shape_of(dims: Sequence[int], what: str) -> tuple[int, ...]:
    shape = tuple(dims)
    if shape and min(shape) < 0:
        raise TensorDataError(f"{what} has a negative dim in {list(shape)}")
    return shape


_USABLE_DTYPES: dict[int, DType] = {}


def _dtype_of(data_type: int, what: str) -> DType:
    dtype = _USABLE_DTYPES.get(data_type)
    if dtype is not None:
        return dtype
    dtype = _dtype_or_none(data_type)
    if dtype is None:
        raise TensorDataError(f"{what} has unknown element type {data_type}")
    try:
        dtype.numpy  # noqa: B018 - raises when ml_dtypes lacks the type
    except TypeError:
        raise TensorDataError(f"{what} has element type {dtype.name}, which numpy cannot hold here") from None
    _USABLE_DTYPES[data_type] = dtype
    return dtype


def _raw_loader(raw: bytes, dtype: DType, shape: tuple[int, ...]) -> Callable[[], np.ndarray]:
    if is_packed(dtype):
        return lambda: unpack_bits(np.frombuffer(raw, dtype=np.uint8), dtype, shape)
    if dtype == DType.BOOL:
        return lambda: np.frombuffer(raw, dtype=np.uint8).reshape(shape) != 0
    np_dtype = dtype.numpy
    return lambda: np.frombuffer(raw, dtype=np_dtype).reshape(shape)


def _typed_array(proto: onnx.TensorProto, dtype: DType, shape: tuple[int, ...], what: str) -> np.ndarray:
    """Reads the typed ``*_data`` fields, checking the count before allocating."""
    count = math.prod(shape)
    D = DType

    def field(values: object, expected: int, name: str, np_dtype: type) -> np.ndarray:
        n = len(values)  # type: ignore[arg-type]
        if n != expected:
            raise TensorDataError(
                f"{what} declares {count} elements of {dtype.name} but {name} holds {n} values"
            )
        return np.array(values, dtype=np_dtype)

    if dtype == D.STRING:
        values = proto.string_data
        if len(values) != count:
            raise TensorDataError(f"{what} declares {count} strings but holds {len(values)}")
        arr = np.empty(count, dtype=object)
        for i, s in enumerate(values):
            arr[i] = s.decode("utf-8", "surrogateescape")
        return arr.reshape(shape)
    if dtype == D.FLOAT:
        return field(proto.float_data, count, "float_data", np.float32).reshape(shape)
    if dtype == D.COMPLEX64:
        return field(proto.float_data, 2 * count, "float_data", np.float32).view(np.complex64).reshape(shape)
    if dtype == D.DOUBLE:
        return field(proto.double_data, count, "double_data", np.float64).reshape(shape)
    if dtype == D.COMPLEX128:
        return (
            field(proto.double_data, 2 * count, "double_data", np.float64).view(np.complex128).reshape(shape)
        )
    if dtype == D.INT64:
        return field(proto.int64_data, count, "int64_data", np.int64).reshape(shape)
    if dtype in (D.UINT64, D.UINT32):
        return field(proto.uint64_data, count, "uint64_data", np.uint64).astype(dtype.numpy).reshape(shape)
    if dtype in _PACKED_PER_BYTE:
        nbytes = packed_nbytes(dtype, count)
        data = field(proto.int32_data, nbytes, "int32_data", np.int64).astype(np.uint8)
        return unpack_bits(data, dtype, shape)
    ints = field(proto.int32_data, count, "int32_data", np.int64)
    if dtype == D.BOOL:
        return (ints != 0).reshape(shape)
    if dtype in (D.FLOAT16, D.BFLOAT16):
        return ints.astype(np.uint16).view(dtype.numpy).reshape(shape)
    if dtype in _SIX_BIT:
        return (ints.astype(np.uint8) & 0x3F).view(dtype.numpy).reshape(shape)
    if dtype.itemsize_bits == 8 and dtype.is_float:
        return ints.astype(np.uint8).view(dtype.numpy).reshape(shape)
    if dtype in (D.INT32, D.INT16, D.INT8, D.UINT16, D.UINT8):
        return ints.astype(dtype.numpy).reshape(shape)
    raise TensorDataError(f"{what} of element type {dtype.name} has no data")


def _external_tensor(
    proto: onnx.TensorProto, dtype: DType, shape: tuple[int, ...], model_dir: str | None, what: str
) -> Tensor:
    info = {e.key: e.value for e in proto.external_data}
    location = info.get("location", "")
    if model_dir is None:
        raise TensorDataError(
            f"{what} keeps its data in {location!r}, but the model was given without a folder"
        )
    if dtype == DType.STRING:
        raise TensorDataError(f"{what}: string tensors cannot use external data")
    try:
        path = safe_external_path(model_dir, location)
    except ValueError as exc:
        raise TensorDataError(f"{what}: {exc}") from None
    try:
        offset = int(info.get("offset", "0") or 0)
        length = int(info["length"]) if info.get("length") else None
    except ValueError:
        raise TensorDataError(f"{what}: malformed external data offset/length") from None
    if offset < 0 or (length is not None and length < 0):
        raise TensorDataError(f"{what}: negative external data offset/length")
    count = math.prod(shape)
    nbytes = packed_nbytes(dtype, count)
    if length is not None and length != nbytes:
        raise TensorDataError(
            f"{what}: external data length {length} does not match {nbytes} bytes of {dtype.name}{list(shape)}"
        )
    try:
        size = os.path.getsize(path) if os.path.isfile(path) else None
    except OSError:
        size = None
    if size is None:
        raise TensorDataError(f"{what}: external data file {location!r} not found")
    if offset + nbytes > size:
        raise TensorDataError(
            f"{what}: external data file {location!r} holds {size} bytes, {offset + nbytes} needed"
        )
    ext = ExternalLocation(path, offset, length)
    if not is_packed(dtype) and dtype != DType.BOOL:
        return Tensor.from_external(dtype, shape, ext)

    def load() -> np.ndarray:
        if count == 0:
            return np.zeros(shape, dtype=dtype.numpy)
        raw = np.memmap(path, dtype=np.uint8, mode="r", offset=offset, shape=(nbytes,))
        if dtype == DType.BOOL:
            return np.asarray(raw).reshape(shape) != 0
        return unpack_bits(raw, dtype, shape)

    return Tensor(dtype, shape, loader=load, external=ext)


def tensor_from_proto(
    proto: onnx.TensorProto, *, model_dir: str | None = None, what: str | None = None
) -> Tensor:
    """A kiln :class:`Tensor` for an ONNX ``TensorProto`` (lazy for raw and external data).

    Args:
        proto: the tensor.
        model_dir: folder external data is resolved against (``None``: external data is refused).
        what: how error messages name the tensor (default: ``tensor 'name'``).

    Raises:
        TensorDataError: the data is missing, has the wrong size, or lies outside ``model_dir``.
    """
    if what is None:
        what = f"tensor {proto.name!r}"
    if proto.HasField("segment"):
        raise TensorDataError(f"{what} is segmented, which kiln does not read")
    dtype = _dtype_of(proto.data_type, what)
    shape = _shape_of(proto.dims, what)
    if proto.data_location == onnx.TensorProto.EXTERNAL:
        return _external_tensor(proto, dtype, shape, model_dir, what)
    count = math.prod(shape)
    if proto.HasField("raw_data") and dtype != DType.STRING:
        raw = proto.raw_data
        expected = packed_nbytes(dtype, count)
        if len(raw) != expected:
            raise TensorDataError(
                f"{what} declares {dtype.name}{list(shape)} ({expected} bytes) but holds {len(raw)} bytes"
            )
        return Tensor(dtype, shape, loader=_raw_loader(raw, dtype, shape))
    return Tensor(dtype, shape, array=_typed_array(proto, dtype, shape, what))


def sparse_tensor_from_proto(
    proto: onnx.SparseTensorProto, *, model_dir: str | None = None, what: str | None = None
) -> Tensor:
    """A dense kiln Tensor for a ``SparseTensorProto``; densified on first use.

    The indices are validated (count, range) when the tensor is converted, so a
    hostile shape fails here; the dense array is only built by ``numpy()``.
    """
    what = what or f"sparse tensor {proto.values.name!r}"
    shape = _shape_of(proto.dims, what)
    values = tensor_from_proto(proto.values, model_dir=model_dir, what=what + " values")
    indices = tensor_from_proto(proto.indices, model_dir=model_dir, what=what + " indices").numpy()
    if values.dtype == DType.STRING:
        raise TensorDataError(f"{what}: sparse string tensors are not supported")
    nnz = values.numel
    if len(values.shape) != 1:
        raise TensorDataError(f"{what}: values must be 1-D, not {list(values.shape)}")
    count = math.prod(shape)
    indices = np.asarray(indices, dtype=np.int64)
    if indices.shape == (nnz,):
        flat = indices
    elif indices.shape == (nnz, len(shape)):
        if nnz and ((indices < 0).any() or (indices >= np.asarray(shape, dtype=np.int64)).any()):
            raise TensorDataError(f"{what}: index out of range for {list(shape)}")
        flat = np.ravel_multi_index(indices.T, shape) if nnz else np.zeros(0, dtype=np.int64)
    else:
        raise TensorDataError(f"{what}: indices of shape {list(indices.shape)} do not fit {nnz} values")
    if nnz and (flat.min() < 0 or flat.max() >= count):
        raise TensorDataError(f"{what}: index out of range for {list(shape)}")
    dtype = values.dtype

    def load() -> np.ndarray:
        dense = np.zeros(count, dtype=dtype.numpy)
        dense[flat] = values.numpy()
        return dense.reshape(shape)

    return Tensor(dtype, shape, loader=load)


def tensor_type_of(proto: onnx.TensorProto) -> TensorType | None:
    """The type of a tensor proto from its header alone (no data read)."""
    dtype = _dtype_or_none(proto.data_type)
    if dtype is None:
        return None
    return TensorType(dtype, tuple(int(d) for d in proto.dims))


# --------------------------------------------------------------------------- attributes

GraphConverter = Callable[[onnx.GraphProto], Graph]

_KIND_BY_FIELD = (
    ("floats", AttrKind.FLOATS),
    ("ints", AttrKind.INTS),
    ("strings", AttrKind.STRINGS),
    ("tensors", AttrKind.TENSORS),
    ("graphs", AttrKind.GRAPHS),
    ("sparse_tensors", AttrKind.SPARSE_TENSORS),
    ("type_protos", AttrKind.TYPE_PROTOS),
)
_KIND_BY_SINGLE = (
    ("f", AttrKind.FLOAT),
    ("i", AttrKind.INT),
    ("s", AttrKind.STRING),
    ("t", AttrKind.TENSOR),
    ("g", AttrKind.GRAPH),
    ("sparse_tensor", AttrKind.SPARSE_TENSOR),
    ("tp", AttrKind.TYPE_PROTO),
)


def attr_kind(proto: onnx.AttributeProto) -> AttrKind:
    """The attribute's kind; guessed from the filled field for IR-1 files that lack ``type``."""
    if proto.type != 0:
        try:
            return AttrKind(proto.type)
        except ValueError:
            raise TensorDataError(f"attribute {proto.name!r} has unknown type {proto.type}") from None
    for name, kind in _KIND_BY_SINGLE:
        if proto.HasField(name):
            return kind
    for name, kind in _KIND_BY_FIELD:
        if len(getattr(proto, name)):
            return kind
    raise TensorDataError(f"attribute {proto.name!r} has no value")


def _decode(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def attr_from_proto(
    proto: onnx.AttributeProto,
    *,
    convert_graph: GraphConverter | None = None,
    model_dir: str | None = None,
    what: str = "",
) -> Attr:
    """A kiln :class:`Attr` for an ONNX ``AttributeProto``.

    GRAPH attributes need ``convert_graph``, which turns a ``GraphProto`` into
    a kiln subgraph with its outer-scope references resolved (the loader
    passes one); SPARSE_TENSOR values stay serialized bytes, as ``Attr`` says.
    """
    if proto.ref_attr_name:
        raise TensorDataError(
            f"attribute {proto.name!r} refers to {proto.ref_attr_name!r} outside a function"
        )
    kind = attr_kind(proto)
    label = what or f"attribute {proto.name!r}"
    K = AttrKind
    if kind == K.FLOAT:
        return Attr(kind, float(proto.f))
    if kind == K.INT:
        return Attr(kind, int(proto.i))
    if kind == K.STRING:
        return Attr(kind, _decode(proto.s))
    if kind == K.FLOATS:
        return Attr(kind, tuple(float(v) for v in proto.floats))
    if kind == K.INTS:
        return Attr(kind, tuple(int(v) for v in proto.ints))
    if kind == K.STRINGS:
        return Attr(kind, tuple(_decode(v) for v in proto.strings))
    if kind == K.TENSOR:
        return Attr(kind, tensor_from_proto(proto.t, model_dir=model_dir, what=label))
    if kind == K.TENSORS:
        return Attr(kind, tuple(tensor_from_proto(t, model_dir=model_dir, what=label) for t in proto.tensors))
    if kind in (K.GRAPH, K.GRAPHS):
        if convert_graph is None:
            raise TensorDataError(f"{label}: graph attributes need a graph converter")
        if kind == K.GRAPH:
            return Attr(kind, convert_graph(proto.g))
        return Attr(kind, tuple(convert_graph(g) for g in proto.graphs))
    if kind == K.SPARSE_TENSOR:
        return Attr(kind, proto.sparse_tensor.SerializeToString(deterministic=True))
    if kind == K.SPARSE_TENSORS:
        return Attr(kind, tuple(s.SerializeToString(deterministic=True) for s in proto.sparse_tensors))
    if kind == K.TYPE_PROTO:
        return Attr(kind, type_from_proto(proto.tp))
    if kind == K.TYPE_PROTOS:
        return Attr(kind, tuple(type_from_proto(t) for t in proto.type_protos))
    raise TensorDataError(f"{label} has unsupported kind {kind.name}")
