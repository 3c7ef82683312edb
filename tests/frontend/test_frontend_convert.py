"""Type, tensor and attribute conversion between ONNX protobuf and kiln's IR."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import pytest
from kiln.exporter.convert import attr_to_proto, tensor_to_proto
from kiln.frontend.convert import (
    TensorDataError,
    attr_from_proto,
    sparse_tensor_from_proto,
    tensor_from_proto,
    type_from_proto,
    type_to_proto,
)
from kiln.ir.core import Attr, AttrKind
from kiln.ir.dtypes import DType
from kiln.ir.tensor import Tensor
from kiln.ir.types import OptionalType, SequenceType, TensorType

NUMERIC = [d for d in DType if d not in (DType.UNDEFINED, DType.STRING)]


def _sample(dtype: DType, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    count = int(np.prod(shape))
    np_dtype = dtype.numpy
    if dtype == DType.BOOL:
        return rng.random(shape) > 0.5
    if dtype in (DType.COMPLEX64, DType.COMPLEX128):
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np_dtype)
    if dtype.is_integer:
        info = ml_dtypes.iinfo(np_dtype) if dtype.itemsize_bits < 8 else np.iinfo(np_dtype)
        return (
            rng.integers(
                int(info.min),
                int(info.max),
                size=count,
                endpoint=True,
                dtype=np.uint64 if info.min >= 0 else np.int64,
            )
            .astype(np_dtype)
            .reshape(shape)
        )
    values = rng.standard_normal(count).astype(np.float32)
    if dtype == DType.FLOAT8E8M0:
        values = np.abs(values) + 0.5
    return values.astype(np_dtype).reshape(shape)


def _same(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


# --------------------------------------------------------------------------- types


def test_tensor_types_round_trip() -> None:
    for t in (
        TensorType(DType.FLOAT, (1, "N", None, 224)),
        TensorType(DType.INT64, ()),
        TensorType(DType.BFLOAT16, None),
        SequenceType(TensorType(DType.FLOAT16, ("seq",))),
        OptionalType(SequenceType(TensorType(DType.INT8, (2,)))),
        SequenceType(None),
    ):
        assert type_from_proto(type_to_proto(t)) == t


def test_meaningless_dim_names_become_unknown() -> None:
    proto = oh.make_tensor_type_proto(onnx.TensorProto.FLOAT, ["unk__12", "?", "batch", -1, 3])
    proto.tensor_type.shape.dim[3].dim_value = -1
    assert type_from_proto(proto) == TensorType(DType.FLOAT, (None, None, "batch", None, 3))
    assert type_from_proto(onnx.TypeProto()) is None
    assert (
        type_from_proto(oh.make_map_type_proto(onnx.TensorProto.INT64, oh.make_tensor_type_proto(1, [1])))
        is None
    )


# --------------------------------------------------------------------------- tensors


@pytest.mark.parametrize("dtype", NUMERIC, ids=lambda d: d.name)
def test_tensor_raw_round_trip_matches_onnx(dtype: DType) -> None:
    arr = _sample(dtype, (3, 5))
    proto = tensor_to_proto(Tensor.from_numpy(arr), "t")
    assert proto.data_type == int(dtype)
    _same(onh.to_array(proto), arr)  # onnx reads what kiln writes
    back = tensor_from_proto(onh.from_array(arr, "t"))  # kiln reads what onnx writes
    assert not back.loaded and back.dtype == dtype and back.shape == (3, 5)
    _same(back.numpy(), arr)


@pytest.mark.parametrize(
    "dtype", [d for d in NUMERIC if d not in (DType.COMPLEX64, DType.COMPLEX128)], ids=lambda d: d.name
)
def test_tensor_typed_fields(dtype: DType) -> None:
    arr = _sample(dtype, (7,), seed=1)
    proto = oh.make_tensor("t", int(dtype), [7], arr, raw=False)
    assert not proto.HasField("raw_data")
    _same(tensor_from_proto(proto).numpy(), onh.to_array(proto))


def test_complex_and_string_tensors() -> None:
    c = np.array([1 + 2j, 3 - 4j], np.complex64)
    proto = oh.make_tensor("c", onnx.TensorProto.COMPLEX64, [2], c, raw=False)
    _same(tensor_from_proto(proto).numpy(), c)
    s = np.array([["a", "bé"], ["", "xyz"]], dtype=object)
    proto = tensor_to_proto(Tensor(DType.STRING, (2, 2), array=s))
    assert onh.to_array(proto).tolist() == s.tolist()
    assert tensor_from_proto(proto).numpy().tolist() == s.tolist()


def test_raw_data_is_viewed_without_copy() -> None:
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    tensor = tensor_from_proto(onh.from_array(arr))
    view = tensor.numpy()
    assert not view.flags.writeable
    base = view.base
    while isinstance(base, np.ndarray):
        base = base.base
    assert isinstance(base, bytes)
    # written back without another copy of the bytes
    from kiln.exporter.convert import tensor_bytes

    assert tensor_bytes(tensor) is base


def test_size_mismatches_are_refused_before_allocating() -> None:
    proto = onnx.TensorProto(name="w", data_type=onnx.TensorProto.FLOAT, dims=[1 << 30, 1 << 30])
    proto.float_data.extend([1.0, 2.0])
    with pytest.raises(TensorDataError, match="holds 2 values"):
        tensor_from_proto(proto)
    proto = onnx.TensorProto(name="w", data_type=onnx.TensorProto.INT4, dims=[5], raw_data=b"\x12\x34")
    with pytest.raises(TensorDataError, match="3 bytes"):
        tensor_from_proto(proto)
    proto = onnx.TensorProto(name="w", data_type=onnx.TensorProto.FLOAT, dims=[-1])
    with pytest.raises(TensorDataError, match="negative"):
        tensor_from_proto(proto)
    proto = onnx.TensorProto(name="w", data_type=99, dims=[1])
    with pytest.raises(TensorDataError, match="unknown element type"):
        tensor_from_proto(proto)


def test_sparse_tensor_both_index_layouts() -> None:
    values = oh.make_tensor("v", onnx.TensorProto.FLOAT, [3], [1.0, 2.0, 3.0])
    flat = oh.make_tensor("i", onnx.TensorProto.INT64, [3], [0, 4, 5])
    coords = oh.make_tensor("i", onnx.TensorProto.INT64, [3, 2], [0, 0, 1, 1, 1, 2])
    for idx in (flat, coords):
        t = sparse_tensor_from_proto(oh.make_sparse_tensor(values, idx, [2, 3]))
        assert not t.loaded
        assert t.numpy().tolist() == [[1.0, 0.0, 0.0], [0.0, 2.0, 3.0]]
    bad = oh.make_tensor("i", onnx.TensorProto.INT64, [3], [0, 4, 6])
    with pytest.raises(TensorDataError, match="out of range"):
        sparse_tensor_from_proto(oh.make_sparse_tensor(values, bad, [2, 3]))


# --------------------------------------------------------------------------- attributes


@pytest.mark.parametrize(
    "value",
    [
        1.5,
        7,
        "text",
        [1.0, 2.5],
        [1, 2, 3],
        ["a", "b"],
        onh.from_array(np.arange(6, dtype=np.int32).reshape(2, 3)),
        [onh.from_array(np.zeros(2, np.float32)), onh.from_array(np.ones(1, np.int64))],
    ],
    ids=["float", "int", "string", "floats", "ints", "strings", "tensor", "tensors"],
)
def test_attributes_round_trip(value) -> None:
    proto = oh.make_attribute("a", value)
    attr = attr_from_proto(proto)
    assert int(attr.kind) == proto.type
    again = attr_to_proto("a", attr)
    assert again.type == proto.type
    if attr.kind == AttrKind.TENSOR:
        _same(onh.to_array(again.t), onh.to_array(proto.t))
    elif attr.kind == AttrKind.TENSORS:
        for got, want in zip(again.tensors, proto.tensors):
            _same(onh.to_array(got), onh.to_array(want))
    else:
        assert again.SerializeToString() == proto.SerializeToString()


def test_attribute_kinds_without_type_field_and_schema_coercion() -> None:
    proto = oh.make_attribute("alpha", 0.25)
    proto.ClearField("type")  # IR-1 style files lack it
    assert attr_from_proto(proto) == Attr(AttrKind.FLOAT, 0.25)
    # an INT where the op's schema wants a FLOAT is written as FLOAT
    written = attr_to_proto("alpha", Attr(AttrKind.INT, 1), kind=AttrKind.FLOAT)
    assert written.type == onnx.AttributeProto.FLOAT and written.f == 1.0
    tp = attr_from_proto(oh.make_attribute("dtype", oh.make_tensor_type_proto(onnx.TensorProto.FLOAT, [2])))
    assert tp == Attr(AttrKind.TYPE_PROTO, TensorType(DType.FLOAT, (2,)))
