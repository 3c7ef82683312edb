"""Numpy references of ONNX's elementwise ops.

Covers arithmetic (Add ... Pow), unary math (Sqrt, Exp, Erf, trigonometry),
variadic Max/Min/Sum/Mean, bitwise and logical ops, comparisons, Where,
IsNaN/IsInf, Clip, the activation functions, and the conversions Identity,
Cast, CastLike and BitCast.

Conventions every reference here follows:

* The result has exactly the dtype ONNX specifies.  Narrow floats (float16,
  bfloat16, float8, float4, ...) are computed in float32 and rounded back once
  at the end; float32 stays float32 and float64 stays float64.  Integer
  arithmetic wraps like two's complement (numpy semantics), and Python scalars
  from attributes never widen an array's dtype.
* Binary ops broadcast numpy-style from opset 7 on; before that they follow the
  legacy ``broadcast``/``axis`` attributes (``B`` aligned to ``A`` at ``axis``).
* Inputs are never modified in place.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import ml_dtypes
import numpy as np
from kiln.ops.reference._registry import RefContext, reference

Inputs = list["np.ndarray | None"]
Attrs = dict[str, Any]

# ---------------------------------------------------------------------------
# dtype helpers (shared with quantize.py)
# ---------------------------------------------------------------------------

ONNX_DTYPES: dict[int, np.dtype] = {
    1: np.dtype(np.float32),
    2: np.dtype(np.uint8),
    3: np.dtype(np.int8),
    4: np.dtype(np.uint16),
    5: np.dtype(np.int16),
    6: np.dtype(np.int32),
    7: np.dtype(np.int64),
    8: np.dtype(object),
    9: np.dtype(np.bool_),
    10: np.dtype(np.float16),
    11: np.dtype(np.float64),
    12: np.dtype(np.uint32),
    13: np.dtype(np.uint64),
    14: np.dtype(np.complex64),
    15: np.dtype(np.complex128),
    16: np.dtype(ml_dtypes.bfloat16),
    17: np.dtype(ml_dtypes.float8_e4m3fn),
    18: np.dtype(ml_dtypes.float8_e4m3fnuz),
    19: np.dtype(ml_dtypes.float8_e5m2),
    20: np.dtype(ml_dtypes.float8_e5m2fnuz),
    21: np.dtype(ml_dtypes.uint4),
    22: np.dtype(ml_dtypes.int4),
    23: np.dtype(ml_dtypes.float4_e2m1fn),
    24: np.dtype(ml_dtypes.float8_e8m0fnu),
    25: np.dtype(ml_dtypes.uint2),
    26: np.dtype(ml_dtypes.int2),
    27: np.dtype(ml_dtypes.float6_e2m3fn),
    28: np.dtype(ml_dtypes.float6_e3m2fn),
}

FLOAT8_DTYPES = frozenset(ONNX_DTYPES[c] for c in (17, 18, 19, 20))
"""The float8 types whose conversion follows the ``saturate`` tables of Cast."""
_FNUZ = frozenset(ONNX_DTYPES[c] for c in (18, 20))
E8M0 = ONNX_DTYPES[24]
_SMALL_FLOATS = frozenset(ONNX_DTYPES[c] for c in (23, 27, 28))  # no inf/NaN: always saturate
NARROW_FLOATS = FLOAT8_DTYPES | _SMALL_FLOATS | {ONNX_DTYPES[16], E8M0}
NARROW_INTS: dict[np.dtype, tuple[int, bool]] = {
    ONNX_DTYPES[21]: (4, False),
    ONNX_DTYPES[22]: (4, True),
    ONNX_DTYPES[25]: (2, False),
    ONNX_DTYPES[26]: (2, True),
}
"""Sub-byte integer dtypes -> (bit width, signed)."""


def onnx_dtype(code: int) -> np.dtype:
    """The numpy dtype of an ONNX ``TensorProto.DataType`` number."""
    try:
        return ONNX_DTYPES[int(code)]
    except KeyError:
        raise NotImplementedError(f"ONNX element type {code} has no numpy equivalent") from None


def is_float(dt: np.dtype) -> bool:
    return dt.kind == "f" or dt in NARROW_FLOATS


def is_int(dt: np.dtype) -> bool:
    return dt.kind in "iu" or dt in NARROW_INTS


def int_range(dt: np.dtype) -> tuple[int, int]:
    """Smallest and largest value of an integer dtype (sub-byte types included)."""
    if dt in NARROW_INTS:
        bits, signed = NARROW_INTS[dt]
        return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    info = np.iinfo(dt)
    return int(info.min), int(info.max)


def widen(x: np.ndarray) -> np.ndarray:
    """Converts narrow floats/ints to a dtype numpy computes with exactly.

    float16 and the ml_dtypes floats become float32 (exact), sub-byte ints
    become int8/uint8; every other dtype is returned unchanged.
    """
    dt = x.dtype
    if dt == np.float16 or dt in NARROW_FLOATS:
        return x.astype(np.float32)
    if dt in NARROW_INTS:
        return x.astype(np.int8 if NARROW_INTS[dt][1] else np.uint8)
    return x


def _same_dtype(fn: Callable[..., Any], *arrays: np.ndarray) -> np.ndarray:
    """Applies ``fn`` to widened operands and rounds back to the first one's dtype."""
    with np.errstate(all="ignore"):
        out = np.asarray(fn(*(widen(a) for a in arrays)))
        return out.astype(arrays[0].dtype, copy=False)


def _as_float(fn: Callable[..., Any], *arrays: np.ndarray) -> np.ndarray:
    """Like :func:`_same_dtype` but also computes integer inputs in float64.

    Used for ops whose formula involves float attributes (Shrink, Clip with
    float bounds, ...); the result is cast back to the input's dtype.
    """

    def run(*ops: np.ndarray) -> Any:
        return fn(*(o.astype(np.float64) if o.dtype.kind in "iub" else o for o in ops))

    return _same_dtype(run, *arrays)


def _opt(inputs: Inputs, i: int) -> np.ndarray | None:
    """Input ``i``, or ``None`` when it is omitted or past the end."""
    return inputs[i] if i < len(inputs) else None


def _req(inputs: Inputs, i: int) -> np.ndarray:
    """Input ``i``, which the op requires."""
    x = _opt(inputs, i)
    if x is None:
        raise ValueError(f"required input {i} is missing")
    return x


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _legacy_broadcast(a: np.ndarray, b: np.ndarray, attrs: Attrs, ctx: RefContext) -> np.ndarray:
    """Before opset 7, ``broadcast=1`` aligns B to A starting at ``axis`` (default: suffix)."""
    if ctx.version >= 7 or not attrs.get("broadcast", 0) or b.ndim >= a.ndim:
        return b
    axis = attrs.get("axis", a.ndim - b.ndim)
    axis = axis + a.ndim if axis < 0 else axis
    return b.reshape(b.shape + (1,) * (a.ndim - axis - b.ndim))


# ---------------------------------------------------------------------------
# arithmetic
# ---------------------------------------------------------------------------


def _binary(fn: Callable[[np.ndarray, np.ndarray], Any]) -> Callable[[Inputs, Attrs, RefContext], list]:
    def ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
        a, b = _req(inputs, 0), _req(inputs, 1)
        return [_same_dtype(fn, a, _legacy_broadcast(a, b, attrs, ctx))]

    return ref


reference("Add")(_binary(np.add))
reference("Sub")(_binary(np.subtract))
reference("Mul")(_binary(np.multiply))


def _trunc_divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Integer division rounding toward zero (C semantics); x / 0 gives 0."""
    zero = b == 0
    safe = np.where(zero, 1, b).astype(b.dtype)
    q = np.floor_divide(a, safe)
    r = a - q * safe
    if a.dtype.kind == "i":
        q = q + ((r != 0) & ((a < 0) != (safe < 0))).astype(q.dtype)  # floor -> trunc
    return np.where(zero, 0, q).astype(a.dtype)


@reference("Div")
def div(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """Float division, or integer division truncated toward zero."""
    a = _req(inputs, 0)
    b = _legacy_broadcast(a, _req(inputs, 1), attrs, ctx)
    if is_int(a.dtype):
        return [_same_dtype(_trunc_divide, a, b)]
    return [_same_dtype(np.divide, a, b)]


@reference("Mod")
def mod(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """``fmod=0``: sign of the divisor (floor); ``fmod=1``: sign of the dividend (C fmod).

    Integer modulo by zero gives 0; float special cases follow IEEE / numpy,
    which match the opset-28 table (x % +-inf, +-0 % y, inf % y = NaN, ...).
    """
    fn = np.fmod if attrs.get("fmod", 0) else np.mod
    return [_same_dtype(fn, _req(inputs, 0), _req(inputs, 1))]


def _int_power(base: np.ndarray, exp: np.ndarray) -> np.ndarray:
    """Integer power; a negative exponent gives 1 / base**-e truncated toward zero."""
    signed = base.dtype.kind == "i"
    b = base.astype(np.int64 if signed else np.uint64)
    e = exp.astype(np.int64)
    neg = e < 0
    out = np.power(b, np.where(neg, 0, e).astype(b.dtype))
    if np.any(neg):
        inv = (b == 1).astype(b.dtype)  # 1 / b**k truncates to 0 unless |b| == 1
        if signed:
            inv = np.where(b == -1, np.where(e % 2 == 1, -1, 1), inv)
        out = np.where(neg, inv, out)
    return out


@reference("Pow")
def pow_(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """``x ** y``; the result always has the dtype of the base ``x`` (opset >= 12 mixes types)."""
    x, y = _req(inputs, 0), _legacy_broadcast(_req(inputs, 0), _req(inputs, 1), attrs, ctx)
    with np.errstate(all="ignore"):
        if is_int(x.dtype) and is_int(y.dtype):
            out = _int_power(widen(x), widen(y))
        elif is_int(x.dtype):
            out = np.power(widen(x).astype(np.float64), widen(y).astype(np.float64))
            out = np.where(np.isfinite(out), np.trunc(out), 0)
        else:
            wx = widen(x)
            out = np.power(wx, widen(y).astype(wx.dtype))
        return [np.asarray(out).astype(x.dtype)]


# ---------------------------------------------------------------------------
# unary math
# ---------------------------------------------------------------------------

_erf_scalar = np.frompyfunc(math.erf, 1, 1)


def erf(x: np.ndarray) -> np.ndarray:
    """Exact (libm) error function, elementwise, in float64."""
    return np.asarray(_erf_scalar(x.astype(np.float64)), dtype=np.float64)


def _unary(fn: Callable[[np.ndarray], Any]) -> Callable[[Inputs, Attrs, RefContext], list]:
    def ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
        return [_same_dtype(fn, _req(inputs, 0))]

    return ref


_UNARY: dict[str, Callable[[np.ndarray], Any]] = {
    "Neg": np.negative,
    "Abs": np.abs,
    "Reciprocal": np.reciprocal,
    "Sqrt": np.sqrt,
    "Exp": np.exp,
    "Log": np.log,
    "Floor": np.floor,
    "Ceil": np.ceil,
    "Round": np.rint,  # round half to even
    "Sign": np.sign,
    "Erf": erf,
    "Sin": np.sin,
    "Cos": np.cos,
    "Tan": np.tan,
    "Asin": np.arcsin,
    "Acos": np.arccos,
    "Atan": np.arctan,
    "Sinh": np.sinh,
    "Cosh": np.cosh,
    "Asinh": np.arcsinh,
    "Acosh": np.arccosh,
    "Atanh": np.arctanh,
    "Tanh": np.tanh,
    "Relu": lambda x: np.maximum(x, 0),
    "Softsign": lambda x: x / (1 + np.abs(x)),
    "Softplus": lambda x: np.logaddexp(0, x),
    "Mish": lambda x: x * np.tanh(np.logaddexp(0, x)),
    "BitwiseNot": np.invert,
    "Not": np.logical_not,
}
for _name, _fn in _UNARY.items():
    reference(_name)(_unary(_fn))


# ---------------------------------------------------------------------------
# variadic ops
# ---------------------------------------------------------------------------


def _fold(fn: Callable[[np.ndarray, np.ndarray], np.ndarray], arrays: list[np.ndarray]) -> np.ndarray:
    out = arrays[0]
    for a in arrays[1:]:
        out = fn(out, a)
    return out


@reference("Max")
def max_(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """Elementwise maximum of all inputs (NaN propagates)."""
    arrays = [a for a in inputs if a is not None]
    return [_same_dtype(lambda *xs: _fold(np.maximum, list(xs)), *arrays)]


@reference("Min")
def min_(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    arrays = [a for a in inputs if a is not None]
    return [_same_dtype(lambda *xs: _fold(np.minimum, list(xs)), *arrays)]


@reference("Sum")
def sum_(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    arrays = [a for a in inputs if a is not None]
    return [_same_dtype(lambda *xs: _fold(np.add, list(xs)), *arrays)]


@reference("Mean")
def mean(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    arrays = [a for a in inputs if a is not None]
    return [_same_dtype(lambda *xs: _fold(np.add, list(xs)) / len(xs), *arrays)]


# ---------------------------------------------------------------------------
# bitwise, logical, comparison
# ---------------------------------------------------------------------------


@reference("BitShift")
def bit_shift(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """Logical/arithmetic shift (opset 28 semantics for signed types).

    A shift amount that is negative or >= the bit width yields only the sign
    fill: -1 for a right shift of a negative value, 0 otherwise.
    """
    x, y = np.broadcast_arrays(_req(inputs, 0), _req(inputs, 1))
    bits = x.dtype.itemsize * 8
    valid = (y >= 0) & (y < bits)
    amount = np.where(valid, y, 0).astype(x.dtype)
    right = _text(attrs.get("direction", "RIGHT")).upper() == "RIGHT"
    shifted = np.right_shift(x, amount) if right else np.left_shift(x, amount)
    if right and x.dtype.kind == "i":
        fill = np.where(x < 0, -1, 0).astype(x.dtype)
    else:
        fill = np.zeros_like(x)
    return [np.where(valid, shifted, fill).astype(x.dtype)]


def _logical(fn: Callable[..., Any]) -> Callable[[Inputs, Attrs, RefContext], list]:
    """A binary op returning bool (logic and comparisons); strings compare as objects."""

    def ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
        a = widen(_req(inputs, 0))
        b = widen(_legacy_broadcast(_req(inputs, 0), _req(inputs, 1), attrs, ctx))
        return [np.asarray(fn(a, b)).astype(np.bool_)]

    return ref


_BOOL_BINARY: dict[str, Callable[..., Any]] = {
    "And": np.logical_and,
    "Or": np.logical_or,
    "Xor": np.logical_xor,
    "Equal": np.equal,
    "Greater": np.greater,
    "GreaterOrEqual": np.greater_equal,
    "Less": np.less,
    "LessOrEqual": np.less_equal,
}
for _name, _fn in _BOOL_BINARY.items():
    reference(_name)(_logical(_fn))

reference("BitwiseAnd")(_binary(np.bitwise_and))
reference("BitwiseOr")(_binary(np.bitwise_or))
reference("BitwiseXor")(_binary(np.bitwise_xor))


@reference("Where")
def where(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    cond, x, y = _req(inputs, 0), _req(inputs, 1), _req(inputs, 2)
    return [np.where(cond.astype(np.bool_), x, y).astype(x.dtype, copy=False)]


@reference("IsNaN")
def is_nan(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    return [np.isnan(widen(_req(inputs, 0)))]


@reference("IsInf")
def is_inf(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """``detect_positive``/``detect_negative`` (both default 1) select which infinities count."""
    x = widen(_req(inputs, 0))
    pos = np.isposinf(x) if attrs.get("detect_positive", 1) else np.zeros(x.shape, np.bool_)
    neg = np.isneginf(x) if attrs.get("detect_negative", 1) else np.zeros(x.shape, np.bool_)
    return [pos | neg]


@reference("Clip")
def clip(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """``min(max(x, lo), hi)``: bounds are attributes before opset 11, optional inputs after.

    When ``lo > hi`` every element becomes ``hi``, as ONNX specifies.
    """
    x = _req(inputs, 0)
    if ctx.version < 11:
        lo: Any = attrs.get("min")
        hi: Any = attrs.get("max")
    else:
        lo, hi = _opt(inputs, 1), _opt(inputs, 2)
    if lo is not None and np.size(lo) == 0:
        lo = None
    if hi is not None and np.size(hi) == 0:
        hi = None

    def run(v: np.ndarray) -> np.ndarray:
        if lo is not None:
            v = np.maximum(v, widen(np.asarray(lo)).astype(v.dtype) if isinstance(lo, np.ndarray) else lo)
        if hi is not None:
            v = np.minimum(v, widen(np.asarray(hi)).astype(v.dtype) if isinstance(hi, np.ndarray) else hi)
        return v

    return [_same_dtype(run, x)]


# ---------------------------------------------------------------------------
# activations
# ---------------------------------------------------------------------------


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """Overflow-free logistic function."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


reference("Sigmoid")(_unary(_sigmoid))


@reference("LeakyRelu")
def leaky_relu(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    alpha = attrs.get("alpha", 0.01)
    return [_as_float(lambda x: np.where(x < 0, alpha * x, x), _req(inputs, 0))]


@reference("PRelu")
def prelu(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """``x < 0 ? slope * x : x`` with ``slope`` broadcast to ``x``."""
    x, slope = _req(inputs, 0), _req(inputs, 1)
    return [_same_dtype(lambda v, s: np.where(v < 0, s * v, v), x, slope)]


@reference("HardSigmoid")
def hard_sigmoid(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    alpha, beta = attrs.get("alpha", 0.2), attrs.get("beta", 0.5)
    return [_as_float(lambda x: np.clip(alpha * x + beta, 0, 1), _req(inputs, 0))]


@reference("HardSwish")
def hard_swish(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """``x * HardSigmoid(x)`` with alpha = 1/6, beta = 0.5."""
    return [_as_float(lambda x: x * np.clip(x / 6 + 0.5, 0, 1), _req(inputs, 0))]


@reference("Elu")
def elu(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    alpha = attrs.get("alpha", 1.0)
    return [_as_float(lambda x: np.where(x < 0, alpha * np.expm1(np.minimum(x, 0)), x), _req(inputs, 0))]


@reference("Selu")
def selu(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    alpha = attrs.get("alpha", 1.67326319217681884765625)
    gamma = attrs.get("gamma", 1.05070102214813232421875)
    return [
        _as_float(lambda x: gamma * np.where(x <= 0, alpha * np.expm1(np.minimum(x, 0)), x), _req(inputs, 0))
    ]


@reference("Celu")
def celu(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """``max(0, x) + min(0, alpha * (exp(x / alpha) - 1))``."""
    alpha = attrs.get("alpha", 1.0)
    return [
        _as_float(lambda x: np.maximum(x, 0) + np.minimum(0, alpha * np.expm1(x / alpha)), _req(inputs, 0))
    ]


@reference("ThresholdedRelu")
def thresholded_relu(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    alpha = attrs.get("alpha", 1.0)
    return [_as_float(lambda x: np.where(x > alpha, x, 0), _req(inputs, 0))]


@reference("Gelu")
def gelu(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """Exact ``0.5 x (1 + erf(x / sqrt 2))`` or, with ``approximate="tanh"``, the tanh form."""
    if _text(attrs.get("approximate", "none")) == "tanh":
        c = math.sqrt(2 / math.pi)
        return [_as_float(lambda x: 0.5 * x * (1 + np.tanh(c * (x + 0.044715 * x**3))), _req(inputs, 0))]
    return [_as_float(lambda x: 0.5 * x * (1 + erf(x / math.sqrt(2))), _req(inputs, 0))]


@reference("Swish")
def swish(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    alpha = attrs.get("alpha", 1.0)
    return [_as_float(lambda x: x * _sigmoid(alpha * x), _req(inputs, 0))]


@reference("Shrink")
def shrink(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """``x < -lambd ? x + bias : x > lambd ? x - bias : 0``."""
    bias, lambd = attrs.get("bias", 0.0), attrs.get("lambd", 0.5)
    return [
        _as_float(lambda x: np.where(x < -lambd, x + bias, np.where(x > lambd, x - bias, 0)), _req(inputs, 0))
    ]


# ---------------------------------------------------------------------------
# conversions
# ---------------------------------------------------------------------------


@reference("Identity")
def identity(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[Any]:
    """Returns its input unchanged (tensors, sequences and optionals alike)."""
    return [inputs[0]]


def _format_number(v: Any, dt: np.dtype) -> str:
    """Number -> string as Cast does: plain float text, ``NaN``, ``INF``, ``-INF``."""
    if dt == np.bool_:
        return "1" if v else "0"
    if is_int(dt):
        return str(int(v))
    f = float(v)
    if math.isnan(f):
        return "NaN"
    if math.isinf(f):
        return "INF" if f > 0 else "-INF"
    return str(v if dt.kind == "f" else np.float32(v))


def _parse_float(s: Any) -> float:
    """String -> float; accepts plain/scientific notation and INF/+INF/-INF/NaN (any case)."""
    return float(_text(s).strip())


def _parse_int(s: Any) -> int:
    """String -> integer; a float literal is truncated toward zero (non-finite -> 0)."""
    text = _text(s).strip()
    try:
        return int(text)
    except ValueError:
        f = float(text)
        return int(f) if math.isfinite(f) else 0


def _float_to_int(v: np.ndarray, to: np.dtype) -> np.ndarray:
    """Float -> integer: truncate toward zero, then wrap to the target width.

    ONNX leaves out-of-range results undefined; wrapping (NaN/inf -> 0) keeps
    the result deterministic and matches what the conformance data expects.
    """
    with np.errstate(all="ignore"):
        t = np.trunc(v.astype(np.float64))
        t = np.where(np.isfinite(t), t, 0.0)
        if to == np.uint64:
            big = t >= 2.0**63
            low = np.clip(t, -(2.0**63), 2.0**63 - 1024).astype(np.int64).astype(np.uint64)
            return np.where(big, np.clip(t, 0, 2.0**64 - 2048).astype(np.uint64), low)
        return np.clip(t, -(2.0**63), 2.0**63 - 1024).astype(np.int64).astype(to)


def _to_narrow_int(x: np.ndarray, to: np.dtype) -> np.ndarray:
    """Casts to int4/uint4/int2/uint2 by keeping the low bits (two's complement)."""
    bits, signed = NARROW_INTS[to]
    v = _float_to_int(x, np.dtype(np.int64)) if x.dtype.kind == "f" else x.astype(np.int64)
    v = v & ((1 << bits) - 1)
    if signed:
        v = v - ((v >> (bits - 1)) & 1) * (1 << bits)
    return v.astype(to)


def to_float8(x: np.ndarray, to: np.dtype, saturate: bool, version: int) -> np.ndarray:
    """Float -> float8 with round-to-nearest-even and Cast's ``saturate`` tables.

    With ``saturate``, out-of-range values and infinities become +-FLT_MAX
    (for the FNUZ types, infinities became NaN before opset 24).  Without it,
    E4M3FN/FNUZ overflow to NaN and E5M2 to +-inf.
    """
    v = widen(x)
    if v.dtype.kind != "f":
        v = v.astype(np.float64)
    with np.errstate(all="ignore"):
        r = v.astype(to)
    if not saturate:
        return r
    rf = r.astype(np.float32)
    overflow = ~np.isfinite(rf) & ~np.isnan(v)
    if to in _FNUZ and version < 24:
        overflow &= np.isfinite(v)
    fmax = float(ml_dtypes.finfo(to).max)
    return np.where(overflow, np.copysign(fmax, v), rf).astype(to)


def to_e8m0(x: np.ndarray, saturate: bool, round_mode: str) -> np.ndarray:
    """Float -> FLOAT8E8M0 (a bare power-of-two exponent, bias 127, 0xFF = NaN).

    ``round_mode``: ``up`` (away from zero), ``down`` (toward zero) or
    ``nearest`` (ties up).  With ``saturate``, values outside
    [2^-127, 2^127] (including 0 and inf) clamp to the nearest end; without
    it they become NaN.  Negative inputs are undefined in ONNX; their
    magnitude is used.
    """
    v = np.abs(widen(x).astype(np.float64))
    mant, exp = np.frexp(v)  # v = mant * 2**exp, mant in [0.5, 1)
    frac, k = 2 * mant, exp.astype(np.int64) - 1  # v = frac * 2**k, frac in [1, 2)
    if round_mode == "up":
        k = k + (frac > 1)
    elif round_mode == "nearest":
        k = k + (frac >= 1.5)
    elif round_mode != "down":
        raise ValueError(f"unknown round_mode {round_mode!r}")
    biased = k + 127
    if saturate:
        biased = np.clip(biased, 0, 254)
        biased = np.where(np.isinf(v), 254, np.where(v == 0, 0, biased))
    else:
        biased = np.where((biased < 0) | (biased > 254) | np.isinf(v) | (v == 0), 255, biased)
    biased = np.where(np.isnan(v), 255, biased)
    return biased.astype(np.uint8).view(E8M0)


def cast_array(
    x: np.ndarray, to: np.dtype, *, saturate: bool = True, round_mode: str = "up", version: int = 28
) -> np.ndarray:
    """Converts ``x`` to dtype ``to`` following ONNX Cast (see the module for the rules).

    * float -> int truncates toward zero, int -> int wraps, anything -> bool is ``!= 0``;
    * float8 targets honour ``saturate``; FLOAT8E8M0 honours ``round_mode``;
    * float4/float6 targets (no inf/NaN) always saturate;
    * strings parse as numbers (``INF``, ``NaN`` ...) and numbers format as
      plain text.
    """
    to = np.dtype(to)
    if x.dtype == to:
        return x.copy()
    if to == object:
        out = np.empty(x.shape, dtype=object)
        for idx, v in np.ndenumerate(x):
            out[idx] = v if x.dtype == object else _format_number(v, x.dtype)
        return out
    if x.dtype == object:
        if is_int(to):  # parse exactly, keep the low 64 bits, wrap below
            bits = [_parse_int(s) & 0xFFFFFFFFFFFFFFFF for s in x.ravel()]
            parsed = np.array(bits, dtype=np.uint64).view(np.int64)
        else:
            parsed = np.array([_parse_float(s) for s in x.ravel()], dtype=np.float64)
        x = parsed.reshape(x.shape)
    x = widen(x)
    if to == np.bool_:
        return x != 0
    if to in FLOAT8_DTYPES:
        return to_float8(x, to, saturate, version)
    if to == E8M0:
        return to_e8m0(x, saturate, round_mode)
    if to in _SMALL_FLOATS:
        v = x.astype(np.float64)
        fmax = float(ml_dtypes.finfo(to).max)
        with np.errstate(all="ignore"):
            return np.where(np.isnan(v), v, np.clip(v, -fmax, fmax)).astype(to)
    if to in NARROW_INTS:
        return _to_narrow_int(x, to)
    if to.kind in "iu" and x.dtype.kind == "f":
        return _float_to_int(x, to)
    with np.errstate(all="ignore"):
        if to in NARROW_FLOATS and x.dtype.kind in "iub":
            return x.astype(np.float64).astype(to)
        return x.astype(to)


@reference("Cast")
def cast(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """Cast to ``to``; ``saturate`` (opset 19+, default 1) and ``round_mode`` (opset 24+, default up)."""
    to = attrs["to"]
    to_dtype = onnx_dtype(to) if isinstance(to, int) else np.dtype(to)
    return [
        cast_array(
            _req(inputs, 0),
            to_dtype,
            saturate=bool(attrs.get("saturate", 1)),
            round_mode=_text(attrs.get("round_mode", "up")),
            version=ctx.version,
        )
    ]


@reference("CastLike")
def cast_like(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """Cast ``input`` to the dtype of ``target_type``, with Cast's ``saturate``/``round_mode``."""
    return [
        cast_array(
            _req(inputs, 0),
            _req(inputs, 1).dtype,
            saturate=bool(attrs.get("saturate", 1)),
            round_mode=_text(attrs.get("round_mode", "up")),
            version=ctx.version,
        )
    ]


@reference("BitCast")
def bit_cast(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """Reinterprets the bytes of each element as dtype ``to`` (same bit width required)."""
    x, to = _req(inputs, 0), onnx_dtype(attrs["to"])
    if x.dtype.itemsize != to.itemsize or x.dtype == object or to == object:
        raise ValueError(f"BitCast from {x.dtype} to {to} changes the element size")
    return [x.copy(order="C").view(to)]
