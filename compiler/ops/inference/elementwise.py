"""Inference of elementwise ops: unary, binary with broadcasting, variadic, logic, casts.

These are the ops that dominate real graphs, so each function does the least
work it can: a unary op returns its input's (immutable) type object as is.
"""

from __future__ import annotations

from kiln.ir.dtypes import DType
from kiln.ir.types import TensorType
from kiln.ops.inference import infers
from kiln.ops.inference._context import InferContext
from kiln.ops.inference._util import (
    BOOL,
    FLOAT,
    broadcast_many,
    broadcast_shapes,
    common_dtype,
    elementwise_sym,
    fail,
    is_int_dtype,
    set_sym,
    sym_arith,
)

# Same type and shape as input 0.
_SAME_AS_INPUT = (
    "Abs", "Floor", "Ceil", "Round", "Sqrt", "Reciprocal", "Exp", "Log", "Sigmoid", "Tanh",
    "Relu", "LeakyRelu", "Elu", "Selu", "Celu", "ThresholdedRelu", "HardSigmoid", "HardSwish",
    "Softplus", "Softsign", "Mish", "Gelu", "Erf", "Sin", "Cos", "Tan", "Asin", "Acos", "Atan",
    "Sinh", "Cosh", "Asinh", "Acosh", "Atanh", "Sign", "Clip", "Not", "BitwiseNot", "Shrink",
    "Swish", "LpNormalization", "MeanVarianceNormalization", "LRN", "Softmax", "LogSoftmax",
    "Hardmax", "Trilu", "CumSum", "CumProd", "InstanceNormalization", "GroupNormalization",
    "ReverseSequence", "Scatter", "ScatterND", "ScatterElements", "TensorScatter",
)  # fmt: skip


@infers(*_SAME_AS_INPUT)
def infer_same_as_input(ctx: InferContext) -> list:
    types = ctx.input_types
    return [types[0] if types else None]


@infers("Identity")
def infer_identity(ctx: InferContext) -> list:
    sym = ctx.sym_value(0)
    if sym is not None:
        set_sym(ctx, 0, sym)
    types = ctx.input_types
    return [types[0] if types else None]


@infers("Neg")
def infer_neg(ctx: InferContext) -> list:
    t = ctx.input_types[0] if ctx.input_types else None
    if t.__class__ is TensorType and is_int_dtype(t.dtype):
        sym = ctx.sym_value(0)
        if sym is not None:
            set_sym(ctx, 0, tuple(-d if d.__class__ is int else None for d in sym))
    return [t]


_ARITH = ("Add", "Sub", "Mul", "Div", "Mod")
_LOGICAL = ("And", "Or", "Xor")
_BINARY_SAME = _ARITH + ("BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "And", "Or", "Xor")


def _broadcast2(ctx: InferContext) -> tuple:
    types = ctx.input_types
    a = types[0] if types else None
    b = types[1] if len(types) > 1 else None
    sa = a.shape if a.__class__ is TensorType else None
    sb = b.shape if b.__class__ is TensorType else None
    if sa is None or sb is None:
        return None
    if sa == sb:
        return sa
    try:
        return broadcast_shapes(sa, sb)
    except ValueError as exc:
        raise fail(ctx, str(exc)) from None


@infers(*_BINARY_SAME)
def infer_binary(ctx: InferContext) -> list:
    types = ctx.input_types
    a = types[0] if types else None
    b = types[1] if len(types) > 1 else None
    if a.__class__ is TensorType and b.__class__ is TensorType:
        if a.dtype != b.dtype:
            raise fail(ctx, f"inputs have different element types {a.dtype.short} and {b.dtype.short}")
        if a.dtype is not BOOL and ctx.node.op in _LOGICAL:
            raise fail(ctx, f"inputs must be bool, are {a.dtype.short}")
        if a.shape == b.shape:
            out = a
        else:
            try:
                out = TensorType(a.dtype, broadcast_shapes(a.shape, b.shape))
            except ValueError as exc:
                raise fail(ctx, str(exc)) from None
    else:
        t = a if a.__class__ is TensorType else b
        if t.__class__ is not TensorType:
            return [None]
        out = TensorType(t.dtype, None)
    if ctx.node.op in _ARITH and is_int_dtype(out.dtype):
        _arith_sym(ctx, ctx.node.op)
    return [out]


def _arith_sym(ctx: InferContext, op: str) -> None:
    a = ctx.sym_value(0)
    if a is None:
        return
    b = ctx.sym_value(1)
    if b is None:
        return
    set_sym(ctx, 0, elementwise_sym(a, b, lambda x, y: sym_arith(op, x, y)))


@infers("Pow", "PRelu")
def infer_pow(ctx: InferContext) -> list:
    dtype = ctx.dtype(0)
    if ctx.node.op == "PRelu":
        dtype = common_dtype(ctx, (0, 1))
    shape = _broadcast2(ctx)
    return [None if dtype is None else TensorType(dtype, shape)]


@infers("Max", "Min", "Sum", "Mean")
def infer_variadic(ctx: InferContext) -> list:
    n = ctx.num_inputs
    dtype = common_dtype(ctx, range(n))
    if dtype is None:
        return [None]
    shape = broadcast_many(ctx, (ctx.shape(i) for i in range(n)))
    if n == 1:
        sym = ctx.sym_value(0)
        if sym is not None:
            set_sym(ctx, 0, sym)
    elif n == 2 and ctx.node.op in ("Max", "Min") and is_int_dtype(dtype):
        _arith_sym(ctx, ctx.node.op)
    return [TensorType(dtype, shape)]


@infers("Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual")
def infer_compare(ctx: InferContext) -> list:
    common_dtype(ctx, (0, 1))
    shape = _broadcast2(ctx)
    if ctx.node.op == "Equal":
        a = ctx.sym_value(0)
        if a is not None:
            b = ctx.sym_value(1)
            if b is not None:
                set_sym(ctx, 0, elementwise_sym(a, b, _sym_equal))
    return [TensorType(BOOL, shape)]


def _sym_equal(a, b):
    if a == b:
        return None if a is None else 1
    if a.__class__ is int and b.__class__ is int:
        return 0
    # A symbol is a size, never negative.
    if (
        a.__class__ is str
        and b.__class__ is int
        and b < 0
        or b.__class__ is str
        and a.__class__ is int
        and a < 0
    ):
        return 0
    return None


@infers("IsNaN", "IsInf")
def infer_is_special(ctx: InferContext) -> list:
    return [TensorType(BOOL, ctx.shape(0)) if ctx.tensor(0) is not None else TensorType(BOOL, None)]


@infers("Where")
def infer_where(ctx: InferContext) -> list:
    cond = ctx.dtype(0)
    if cond is not None and cond != BOOL:
        raise fail(ctx, f"condition must be bool, is {cond.short}")
    dtype = common_dtype(ctx, (1, 2))
    if dtype is None:
        return [None]
    shape = broadcast_many(ctx, (ctx.shape(0), ctx.shape(1), ctx.shape(2)))
    c = ctx.sym_value(0)
    if c is not None and is_int_dtype(dtype):
        x = ctx.sym_value(1)
        y = ctx.sym_value(2) if x is not None else None
        if y is not None:
            n = max(len(c), len(x), len(y))
            if all(len(t) in (1, n) for t in (c, x, y)):
                out = []
                for i in range(n):
                    ci = c[0] if len(c) == 1 else c[i]
                    out.append(
                        None
                        if ci is None
                        else (x[0] if len(x) == 1 else x[i])
                        if ci
                        else (y[0] if len(y) == 1 else y[i])
                    )
                set_sym(ctx, 0, tuple(out))
    return [TensorType(dtype, shape)]


@infers("Cast")
def infer_cast(ctx: InferContext) -> list:
    to = ctx.attr("to")
    if to is None:
        raise fail(ctx, "missing attribute 'to'")
    dtype = DType(int(to))
    if is_int_dtype(dtype):
        sym = ctx.sym_value(0)
        if sym is not None and is_int_dtype(ctx.dtype(0)):
            set_sym(ctx, 0, sym)
    t = ctx.tensor(0)
    return [TensorType(dtype, t.shape if t is not None else None)]


@infers("CastLike")
def infer_cast_like(ctx: InferContext) -> list:
    dtype = ctx.dtype(1)
    if dtype is None:
        return [None]
    if is_int_dtype(dtype) and is_int_dtype(ctx.dtype(0)):
        sym = ctx.sym_value(0)
        if sym is not None:
            set_sym(ctx, 0, sym)
    return [TensorType(dtype, ctx.shape(0))]


@infers("Dropout")
def infer_dropout(ctx: InferContext) -> list:
    t = ctx.tensor(0)
    if t is None:
        return [None, None]
    mask = BOOL if ctx.version >= 10 else t.dtype
    return [t, TensorType(mask, t.shape)]


@infers("QuantizeLinear")
def infer_quantize(ctx: InferContext) -> list:
    dtype = None
    if ctx.has_input(2):
        dtype = ctx.dtype(2)
    out_dtype = ctx.attr("output_dtype", 0)
    if out_dtype:
        if dtype is not None and dtype != DType(out_dtype):
            raise fail(ctx, f"output_dtype {DType(out_dtype).short} does not match zero point {dtype.short}")
        dtype = DType(out_dtype)
    if dtype is None:
        if ctx.has_input(2):
            return [None]
        dtype = DType.UINT8
    return [TensorType(dtype, ctx.shape(0))]


@infers("DequantizeLinear")
def infer_dequantize(ctx: InferContext) -> list:
    out_dtype = ctx.attr("output_dtype", 0)
    if out_dtype:
        dtype = DType(out_dtype)
    elif ctx.version >= 19:
        dtype = ctx.dtype(1)
        if dtype is None:
            return [None]
    else:
        dtype = FLOAT
    return [TensorType(dtype, ctx.shape(0))]


@infers("DynamicQuantizeLinear")
def infer_dynamic_quantize(ctx: InferContext) -> list:
    u8 = DType.UINT8
    return [TensorType(u8, ctx.shape(0)), TensorType(FLOAT, ()), TensorType(u8, ())]


@infers("Bernoulli", "RandomNormalLike", "RandomUniformLike")
def infer_random_like(ctx: InferContext) -> list:
    dtype = ctx.attr("dtype")
    dtype = DType(dtype) if dtype is not None else ctx.dtype(0)
    return [None if dtype is None else TensorType(dtype, ctx.shape(0))]


@infers("RandomNormal", "RandomUniform")
def infer_random(ctx: InferContext) -> list:
    shape = ctx.attr("shape")
    return [TensorType(DType(ctx.attr("dtype", 1)), None if shape is None else tuple(int(d) for d in shape))]
