"""Element types: every ONNX tensor dtype, with its numpy twin and short text name.

The enum's values are ONNX's ``TensorProto.DataType`` numbers, so converting
between the two is the identity.  Narrow float and int formats (bfloat16,
float8, int4, ...) map onto ``ml_dtypes`` numpy types.
"""

from __future__ import annotations

import enum

import ml_dtypes
import numpy as np


class DType(enum.IntEnum):
    """An ONNX tensor element type."""

    UNDEFINED = 0
    FLOAT = 1
    UINT8 = 2
    INT8 = 3
    UINT16 = 4
    INT16 = 5
    INT32 = 6
    INT64 = 7
    STRING = 8
    BOOL = 9
    FLOAT16 = 10
    DOUBLE = 11
    UINT32 = 12
    UINT64 = 13
    COMPLEX64 = 14
    COMPLEX128 = 15
    BFLOAT16 = 16
    FLOAT8E4M3FN = 17
    FLOAT8E4M3FNUZ = 18
    FLOAT8E5M2 = 19
    FLOAT8E5M2FNUZ = 20
    UINT4 = 21
    INT4 = 22
    FLOAT4E2M1 = 23
    FLOAT8E8M0 = 24
    UINT2 = 25
    INT2 = 26
    FLOAT6E2M3 = 27
    FLOAT6E3M2 = 28

    @property
    def short(self) -> str:
        """The name used in kiln's text IR (``f32``, ``i64``, ``bf16`` ...)."""
        return _SHORT[self]

    @property
    def numpy(self) -> np.dtype:
        """The numpy dtype that holds one element (object for strings)."""
        try:
            return _NUMPY[self]
        except KeyError:
            raise TypeError(f"dtype {self.name} has no numpy equivalent") from None

    @property
    def itemsize_bits(self) -> int:
        return _BITS[self]

    @property
    def is_float(self) -> bool:
        return self in _FLOATS

    @property
    def is_integer(self) -> bool:
        return self in _INTS

    @staticmethod
    def from_short(text: str) -> "DType":
        try:
            return _FROM_SHORT[text]
        except KeyError:
            raise ValueError(f"unknown element type {text!r}") from None

    @staticmethod
    def from_numpy(dtype: np.dtype | type) -> "DType":
        dt = np.dtype(dtype)
        if dt.kind in ("U", "S", "O"):
            return DType.STRING
        try:
            return _FROM_NUMPY[dt]
        except KeyError:
            raise TypeError(f"numpy dtype {dt} has no ONNX equivalent") from None


_SHORT = {
    DType.UNDEFINED: "undef",
    DType.FLOAT: "f32",
    DType.UINT8: "u8",
    DType.INT8: "i8",
    DType.UINT16: "u16",
    DType.INT16: "i16",
    DType.INT32: "i32",
    DType.INT64: "i64",
    DType.STRING: "str",
    DType.BOOL: "bool",
    DType.FLOAT16: "f16",
    DType.DOUBLE: "f64",
    DType.UINT32: "u32",
    DType.UINT64: "u64",
    DType.COMPLEX64: "c64",
    DType.COMPLEX128: "c128",
    DType.BFLOAT16: "bf16",
    DType.FLOAT8E4M3FN: "f8e4m3fn",
    DType.FLOAT8E4M3FNUZ: "f8e4m3fnuz",
    DType.FLOAT8E5M2: "f8e5m2",
    DType.FLOAT8E5M2FNUZ: "f8e5m2fnuz",
    DType.UINT4: "u4",
    DType.INT4: "i4",
    DType.FLOAT4E2M1: "f4e2m1",
    DType.FLOAT8E8M0: "f8e8m0",
    DType.UINT2: "u2",
    DType.INT2: "i2",
    DType.FLOAT6E2M3: "f6e2m3",
    DType.FLOAT6E3M2: "f6e3m2",
}
_FROM_SHORT = {v: k for k, v in _SHORT.items()}


def _ml(name: str) -> np.dtype | None:
    scalar = getattr(ml_dtypes, name, None)
    return np.dtype(scalar) if scalar is not None else None


_NUMPY_CANDIDATES: dict[DType, np.dtype | None] = {
    DType.FLOAT: np.dtype(np.float32),
    DType.UINT8: np.dtype(np.uint8),
    DType.INT8: np.dtype(np.int8),
    DType.UINT16: np.dtype(np.uint16),
    DType.INT16: np.dtype(np.int16),
    DType.INT32: np.dtype(np.int32),
    DType.INT64: np.dtype(np.int64),
    DType.STRING: np.dtype(object),
    DType.BOOL: np.dtype(np.bool_),
    DType.FLOAT16: np.dtype(np.float16),
    DType.DOUBLE: np.dtype(np.float64),
    DType.UINT32: np.dtype(np.uint32),
    DType.UINT64: np.dtype(np.uint64),
    DType.COMPLEX64: np.dtype(np.complex64),
    DType.COMPLEX128: np.dtype(np.complex128),
    DType.BFLOAT16: _ml("bfloat16"),
    DType.FLOAT8E4M3FN: _ml("float8_e4m3fn"),
    DType.FLOAT8E4M3FNUZ: _ml("float8_e4m3fnuz"),
    DType.FLOAT8E5M2: _ml("float8_e5m2"),
    DType.FLOAT8E5M2FNUZ: _ml("float8_e5m2fnuz"),
    DType.UINT4: _ml("uint4"),
    DType.INT4: _ml("int4"),
    DType.FLOAT4E2M1: _ml("float4_e2m1fn"),
    DType.FLOAT8E8M0: _ml("float8_e8m0fnu"),
    DType.UINT2: _ml("uint2"),
    DType.INT2: _ml("int2"),
    DType.FLOAT6E2M3: _ml("float6_e2m3fn"),
    DType.FLOAT6E3M2: _ml("float6_e3m2fn"),
}
_NUMPY: dict[DType, np.dtype] = {k: v for k, v in _NUMPY_CANDIDATES.items() if v is not None}
_FROM_NUMPY: dict[np.dtype, DType] = {v: k for k, v in _NUMPY.items() if k != DType.STRING}

_BITS = {
    DType.UNDEFINED: 0,
    DType.FLOAT: 32,
    DType.UINT8: 8,
    DType.INT8: 8,
    DType.UINT16: 16,
    DType.INT16: 16,
    DType.INT32: 32,
    DType.INT64: 64,
    DType.STRING: 64,  # a pointer's worth; strings have no fixed size
    DType.BOOL: 8,
    DType.FLOAT16: 16,
    DType.DOUBLE: 64,
    DType.UINT32: 32,
    DType.UINT64: 64,
    DType.COMPLEX64: 64,
    DType.COMPLEX128: 128,
    DType.BFLOAT16: 16,
    DType.FLOAT8E4M3FN: 8,
    DType.FLOAT8E4M3FNUZ: 8,
    DType.FLOAT8E5M2: 8,
    DType.FLOAT8E5M2FNUZ: 8,
    DType.UINT4: 4,
    DType.INT4: 4,
    DType.FLOAT4E2M1: 4,
    DType.FLOAT8E8M0: 8,
    DType.UINT2: 2,
    DType.INT2: 2,
    DType.FLOAT6E2M3: 6,
    DType.FLOAT6E3M2: 6,
}

_FLOATS = frozenset(
    {
        DType.FLOAT,
        DType.FLOAT16,
        DType.DOUBLE,
        DType.BFLOAT16,
        DType.FLOAT8E4M3FN,
        DType.FLOAT8E4M3FNUZ,
        DType.FLOAT8E5M2,
        DType.FLOAT8E5M2FNUZ,
        DType.FLOAT4E2M1,
        DType.FLOAT8E8M0,
        DType.FLOAT6E2M3,
        DType.FLOAT6E3M2,
    }
)
_INTS = frozenset(
    {
        DType.UINT8,
        DType.INT8,
        DType.UINT16,
        DType.INT16,
        DType.INT32,
        DType.INT64,
        DType.UINT32,
        DType.UINT64,
        DType.UINT4,
        DType.INT4,
        DType.UINT2,
        DType.INT2,
    }
)
