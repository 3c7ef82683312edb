"""TEST DOUBLE of the ``tensorrt`` module: a numpy interpreter of the TensorRT layers kiln emits.

This is not TensorRT and builds no engine.  It implements, with numpy and
from TensorRT's documented semantics, the subset of the TensorRT 10/11 Python
API that kiln's generated ``<stem>.trt.py`` programs call, so the tests can run
a program's ``populate`` and then evaluate the network on inputs, checking
weight layouts, padding, axes masks, broadcasting rules and Q/DQ scales
against onnxruntime.  It is strict where TensorRT is: layer attributes that do
not exist are errors, elementwise and matrix-multiply operands must have the
same rank, and (strongly typed) elementwise operands must have the same type.

    import trt_double
    with trt_double.installed():          # sys.modules["tensorrt"] is this double
        module = trt_double.load_program(path)
    network = trt_double.INetworkDefinition()
    module.populate(network, module.load_weights(weights))
    outputs = trt_double.execute(network, {"x": x})
"""

from __future__ import annotations

import contextlib
import enum
import importlib.util
import math
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

# ---------------------------------------------------------------------------------------------- types and enums


class DataType(enum.Enum):
    FLOAT = "float32"
    HALF = "float16"
    BF16 = "bfloat16"
    INT8 = "int8"
    UINT8 = "uint8"
    INT32 = "int32"
    INT64 = "int64"
    BOOL = "bool"


float32, float16, bfloat16 = DataType.FLOAT, DataType.HALF, DataType.BF16
int8, uint8, int32, int64 = DataType.INT8, DataType.UINT8, DataType.INT32, DataType.INT64
bool = DataType.BOOL


def _np(dtype: DataType) -> np.dtype:
    return np.dtype(dtype.value)


ActivationType = enum.Enum("ActivationType", "RELU SIGMOID TANH LEAKY_RELU ELU SELU SOFTSIGN SOFTPLUS CLIP "
                                             "HARD_SIGMOID SCALED_TANH THRESHOLDED_RELU GELU_ERF GELU_TANH")
ElementWiseOperation = enum.Enum("ElementWiseOperation", "SUM PROD MAX MIN SUB DIV POW FLOOR_DIV AND OR XOR "
                                                         "EQUAL GREATER LESS")
UnaryOperation = enum.Enum("UnaryOperation", "EXP LOG SQRT RECIP ABS NEG SIN COS ERF FLOOR CEIL NOT")
ReduceOperation = enum.Enum("ReduceOperation", "SUM PROD MAX MIN AVG")
PoolingType = enum.Enum("PoolingType", "MAX AVERAGE MAX_AVERAGE_BLEND")
PaddingMode = enum.Enum("PaddingMode", "EXPLICIT_ROUND_DOWN EXPLICIT_ROUND_UP SAME_UPPER SAME_LOWER")
MatrixOperation = enum.Enum("MatrixOperation", "NONE TRANSPOSE VECTOR")
InterpolationMode = enum.Enum("InterpolationMode", "NEAREST LINEAR CUBIC")
ResizeCoordinateTransformation = enum.Enum("ResizeCoordinateTransformation", "ALIGN_CORNERS ASYMMETRIC HALF_PIXEL")
ResizeSelector = enum.Enum("ResizeSelector", "FORMULA UPPER")
ResizeRoundMode = enum.Enum("ResizeRoundMode", "HALF_UP HALF_DOWN FLOOR CEIL")
AttentionNormalizationOp = enum.Enum("AttentionNormalizationOp", "NONE SOFTMAX")
MemoryPoolType = enum.Enum("MemoryPoolType", "WORKSPACE")


class NetworkDefinitionCreationFlag(enum.IntEnum):
    STRONGLY_TYPED = 1


class Dims(tuple):
    def __new__(cls, dims: Sequence[int] = ()) -> Dims:  # noqa: PYI034
        return super().__new__(cls, [int(d) for d in dims])


class Permutation(tuple):
    def __new__(cls, perm: Sequence[int] = ()) -> Permutation:  # noqa: PYI034
        return super().__new__(cls, [int(p) for p in perm])


class Weights:
    def __init__(self, a: Any = None) -> None:
        self.array = np.asarray(a) if isinstance(a, np.ndarray) else None


# ---------------------------------------------------------------------------------------------- network


class ITensor:
    def __init__(self, layer: Layer | None, index: int, name: str = "") -> None:
        self.layer, self.index, self.name = layer, index, name


_ATTRS: dict[str, dict[str, Any]] = {
    "convolution": {"stride_nd": None, "pre_padding": None, "post_padding": None, "dilation_nd": None,
                    "num_groups": 1, "padding_mode": PaddingMode.EXPLICIT_ROUND_DOWN, "kernel_size_nd": None},
    "activation": {"alpha": 0.0, "beta": 0.0},
    "pooling": {"stride_nd": None, "pre_padding": None, "post_padding": None,
                "padding_mode": PaddingMode.EXPLICIT_ROUND_DOWN, "average_count_excludes_padding": True},
    "shuffle": {"first_transpose": None, "reshape_dims": None, "second_transpose": None,
                "zero_is_placeholder": True},
    "concatenation": {"axis": None},
    "softmax": {"axes": None},
    "normalization": {"epsilon": 1e-5, "num_groups": 1},
    "resize": {"shape": None, "scales": None, "resize_mode": InterpolationMode.NEAREST,
               "coordinate_transformation": ResizeCoordinateTransformation.ASYMMETRIC,
               "selector_for_single_pixel": ResizeSelector.FORMULA, "nearest_rounding": ResizeRoundMode.FLOOR,
               "cubic_coeff": -0.75, "exclude_outside": False},
    "quantize": {"axis": -1},
    "dequantize": {"axis": -1},
    "attention": {"decomposable": False, "mask": None},
}
_ATTRS["deconvolution"] = dict(_ATTRS["convolution"])


class Layer:
    """One layer: its kind, inputs, fixed parameters and the attributes TensorRT lets one set."""

    def __init__(self, kind: str, inputs: Sequence[ITensor | None], outputs: int = 1, **params: Any) -> None:
        object.__setattr__(self, "_state", {"kind": kind, "inputs": list(inputs), "params": params,
                                            "attrs": dict(_ATTRS.get(kind, {})), "name": ""})
        self._state["outputs"] = [ITensor(self, i) for i in range(outputs)]

    def __getattr__(self, name: str) -> Any:
        state = object.__getattribute__(self, "_state")
        if name in state["attrs"]:
            return state["attrs"][name]
        raise AttributeError(f"{state['kind']} layer has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "name":
            self._state["name"] = value
            return
        if name not in self._state["attrs"]:
            raise AttributeError(f"{self._state['kind']} layer has no attribute {name!r} (test double of TensorRT)")
        self._state["attrs"][name] = value

    def get_output(self, index: int) -> ITensor:
        return self._state["outputs"][index]

    def set_input(self, index: int, tensor: ITensor) -> None:
        inputs = self._state["inputs"]
        while len(inputs) <= index:
            inputs.append(None)
        inputs[index] = tensor


class INetworkDefinition:
    def __init__(self, flags: int = 0) -> None:
        self.flags = flags
        self.layers: list[Layer] = []
        self.inputs: list[tuple[str, DataType, Dims, ITensor]] = []
        self.outputs: list[ITensor] = []

    def _add(self, kind: str, inputs: Sequence[ITensor | None], outputs: int = 1, **params: Any) -> Layer:
        for t in inputs:
            if t is not None and not isinstance(t, ITensor):
                raise TypeError(f"{kind}: expected an ITensor, got {type(t).__name__}")
        layer = Layer(kind, inputs, outputs, **params)
        self.layers.append(layer)
        return layer

    def add_input(self, name: str, dtype: DataType, shape: Dims) -> ITensor:
        tensor = ITensor(None, 0, name)
        self.inputs.append((name, dtype, Dims(shape), tensor))
        return tensor

    def mark_output(self, tensor: ITensor) -> None:
        self.outputs.append(tensor)

    def add_constant(self, shape: Dims, weights: Weights) -> Layer:
        assert weights.array is not None
        return self._add("constant", [], array=weights.array.reshape(tuple(shape)))

    def add_convolution_nd(self, input: ITensor, num_output_maps: int, kernel_shape: Dims, kernel: Weights,
                           bias: Weights | None = None) -> Layer:
        return self._add("convolution", [input], maps=num_output_maps, kshape=tuple(kernel_shape),
                         kernel=kernel.array, bias=None if bias is None else bias.array)

    def add_deconvolution_nd(self, input: ITensor, num_output_maps: int, kernel_shape: Dims, kernel: Weights,
                             bias: Weights | None = None) -> Layer:
        return self._add("deconvolution", [input], maps=num_output_maps, kshape=tuple(kernel_shape),
                         kernel=kernel.array, bias=None if bias is None else bias.array)

    def add_activation(self, input: ITensor, type: Any) -> Layer:
        return self._add("activation", [input], op=ActivationType[type.name])

    def add_parametric_relu(self, input: ITensor, slopes: ITensor) -> Layer:
        return self._add("prelu", [input, slopes])

    def add_elementwise(self, input1: ITensor, input2: ITensor, op: Any) -> Layer:
        return self._add("elementwise", [input1, input2], op=ElementWiseOperation[op.name])

    def add_unary(self, input: ITensor, op: Any) -> Layer:
        return self._add("unary", [input], op=UnaryOperation[op.name])

    def add_matrix_multiply(self, input0: ITensor, op0: Any, input1: ITensor, op1: Any) -> Layer:
        return self._add("matmul", [input0, input1], ops=(op0, op1))

    def add_pooling_nd(self, input: ITensor, type: Any, window_size: Dims) -> Layer:
        return self._add("pooling", [input], op=type, window=tuple(window_size))

    def add_reduce(self, input: ITensor, op: Any, axes: int, keep_dims: Any) -> Layer:
        return self._add("reduce", [input], op=op, axes=axes, keep=keep_dims)

    def add_shape(self, input: ITensor) -> Layer:
        return self._add("shape", [input])

    def add_shuffle(self, input: ITensor) -> Layer:
        return self._add("shuffle", [input])

    def add_concatenation(self, inputs: list[ITensor]) -> Layer:
        return self._add("concatenation", list(inputs))

    def add_slice(self, input: ITensor, start: Dims, shape: Dims, stride: Dims) -> Layer:
        return self._add("slice", [input], start=tuple(start), shape=tuple(shape), stride=tuple(stride))

    def add_softmax(self, input: ITensor) -> Layer:
        return self._add("softmax", [input])

    def add_normalization(self, input: ITensor, scale: ITensor, bias: ITensor, axesMask: int) -> Layer:
        return self._add("normalization", [input, scale, bias], axes=axesMask)

    def add_resize(self, input: ITensor) -> Layer:
        return self._add("resize", [input])

    def add_gather(self, input: ITensor, indices: ITensor, axis: int) -> Layer:
        return self._add("gather", [input, indices], axis=axis)

    def add_lrn(self, input: ITensor, window: int, alpha: float, beta: float, k: float) -> Layer:
        return self._add("lrn", [input], window=window, alpha=alpha, beta=beta, k=k)

    def add_cast(self, input: ITensor, to_type: DataType) -> Layer:
        return self._add("cast", [input], to=to_type)

    def add_identity(self, input: ITensor) -> Layer:
        return self._add("identity", [input])

    def add_quantize(self, input: ITensor, scale: ITensor, output_type: DataType) -> Layer:
        return self._add("quantize", [input, scale], to=output_type)

    def add_dequantize(self, input: ITensor, scale: ITensor, output_type: DataType) -> Layer:
        return self._add("dequantize", [input, scale], to=output_type)

    def add_attention(self, query: ITensor, key: ITensor, value: ITensor, norm_op: Any, causal: Any) -> Layer:
        assert norm_op is AttentionNormalizationOp.SOFTMAX and not causal
        return self._add("attention", [query, key, value])


# ---------------------------------------------------------------------------------------------- builder side


class Logger:
    ERROR, WARNING, INFO, VERBOSE = range(4)

    def __init__(self, severity: int = 1) -> None:
        self.severity = severity


class IOptimizationProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple[Dims, Dims, Dims]] = {}

    def set_shape(self, input: str, min: Dims, opt: Dims, max: Dims) -> None:
        self.shapes[input] = (Dims(min), Dims(opt), Dims(max))


class ITimingCache:
    def __init__(self, data: bytes) -> None:
        self.data = bytes(data) or b"kiln-trt-double-timing-cache"

    def serialize(self) -> bytes:
        return self.data


class IBuilderConfig:
    def __init__(self) -> None:
        self.profiles: list[IOptimizationProfile] = []
        self.pools: dict[Any, int] = {}
        self.builder_optimization_level = 3
        self.max_aux_streams = -1
        self.timing_cache: ITimingCache | None = None

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def set_memory_pool_limit(self, pool: Any, pool_size: int) -> None:
        self.pools[pool] = int(pool_size)

    def create_timing_cache(self, serialized_timing_cache: bytes) -> ITimingCache:
        return ITimingCache(serialized_timing_cache)

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: Any) -> Any:
        self.timing_cache = cache
        return True


class Builder:
    last: Builder | None = None

    def __init__(self, logger: Logger) -> None:
        self.logger = logger
        self.network: INetworkDefinition | None = None
        self.config: IBuilderConfig | None = None
        Builder.last = self

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        self.network = INetworkDefinition(flags)
        return self.network

    def create_builder_config(self) -> IBuilderConfig:
        self.config = IBuilderConfig()
        return self.config

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> bytes:
        """Not an engine: a short text naming the layer kinds, so tests can see a build happened."""
        kinds = ",".join(layer._state["kind"] for layer in network.layers)
        return f"kiln trt_double plan: {len(network.layers)} layers: {kinds}\n".encode()


# ---------------------------------------------------------------------------------------------- evaluation


def _spatial_pads(layer: Layer, spatial_in: Sequence[int], kernel: Sequence[int], stride: Sequence[int],
                  dilation: Sequence[int]) -> tuple[list[int], list[int], bool]:
    attrs = layer._state["attrs"]
    n = len(kernel)
    mode = attrs["padding_mode"]
    if mode in (PaddingMode.SAME_UPPER, PaddingMode.SAME_LOWER):
        pre, post = [], []
        for size, k, s, d in zip(spatial_in, kernel, stride, dilation):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            small, big = total // 2, total - total // 2
            pre.append(small if mode is PaddingMode.SAME_UPPER else big)
            post.append(big if mode is PaddingMode.SAME_UPPER else small)
        return pre, post, False
    pre = list(attrs["pre_padding"] or [0] * n)
    post = list(attrs["post_padding"] or [0] * n)
    return pre, post, mode is PaddingMode.EXPLICIT_ROUND_UP


def _windows(x: np.ndarray, kernel: Sequence[int], stride: Sequence[int], dilation: Sequence[int]) -> np.ndarray:
    """[N, C, *out, *kernel] views of x (already padded)."""
    n = len(kernel)
    span = [(k - 1) * d + 1 for k, d in zip(kernel, dilation)]
    view = np.lib.stride_tricks.sliding_window_view(x, span, axis=tuple(range(2, 2 + n)))
    index = tuple([slice(None), slice(None)] + [slice(None, None, s) for s in stride]
                  + [slice(None, None, d) for d in dilation])
    return view[index]


def _conv(layer: Layer, ins: list[np.ndarray]) -> np.ndarray:
    p, a = layer._state["params"], layer._state["attrs"]
    x = ins[0]
    kernel = ins[1] if len(ins) > 1 and ins[1] is not None else p["kernel"]
    assert kernel is not None, "convolution without a kernel"
    assert x.dtype == kernel.dtype, f"strongly typed: convolution input {x.dtype} and kernel {kernel.dtype}"
    kshape = p["kshape"]
    n = len(kshape)
    kernel = kernel.reshape((p["maps"], -1) + tuple(kshape))
    stride = list(a["stride_nd"] or [1] * n)
    dilation = list(a["dilation_nd"] or [1] * n)
    pre, post, _ = _spatial_pads(layer, x.shape[2:], kshape, stride, dilation)
    x = np.pad(x, [(0, 0), (0, 0)] + list(zip(pre, post)))
    win = _windows(x, kshape, stride, dilation)  # N, C, *out, *k
    groups = int(a["num_groups"])
    cin = x.shape[1] // groups
    cout = p["maps"] // groups
    outs = []
    sp = "".join("hwd"[i] for i in range(n))
    ks = "".join("klm"[i] for i in range(n))
    for g in range(groups):
        wg = win[:, g * cin:(g + 1) * cin]
        kg = kernel[g * cout:(g + 1) * cout]
        outs.append(np.einsum(f"nc{sp}{ks},oc{ks}->no{sp}", wg.astype(np.float64), kg.astype(np.float64),
                              optimize=True))
    y = np.concatenate(outs, axis=1)
    if p["bias"] is not None:
        y = y + p["bias"].reshape((1, -1) + (1,) * n)
    return y.astype(x.dtype)


def _deconv(layer: Layer, ins: list[np.ndarray]) -> np.ndarray:
    p, a = layer._state["params"], layer._state["attrs"]
    x = ins[0]
    kernel = ins[1] if len(ins) > 1 and ins[1] is not None else p["kernel"]
    kshape = p["kshape"]
    n = len(kshape)
    assert n == 2, "the test double's deconvolution is 2-D"
    groups = int(a["num_groups"])
    cin = x.shape[1] // groups
    cout = p["maps"] // groups
    kernel = kernel.reshape((x.shape[1], cout) + tuple(kshape))
    stride = list(a["stride_nd"] or [1] * n)
    dilation = list(a["dilation_nd"] or [1] * n)
    pre = list(a["pre_padding"] or [0] * n)
    post = list(a["post_padding"] or [0] * n)
    h, w = x.shape[2:]
    full = [(s - 1) * st + (k - 1) * d + 1 for s, st, k, d in zip((h, w), stride, kshape, dilation)]
    y = np.zeros((x.shape[0], p["maps"], *full), dtype=np.float64)
    for g in range(groups):
        xg = x[:, g * cin:(g + 1) * cin].astype(np.float64)
        for i in range(kshape[0]):
            for j in range(kshape[1]):
                contrib = np.einsum("nchw,co->nohw", xg, kernel[g * cin:(g + 1) * cin, :, i, j])
                hi, wj = i * dilation[0], j * dilation[1]
                y[:, g * cout:(g + 1) * cout, hi:hi + (h - 1) * stride[0] + 1:stride[0],
                  wj:wj + (w - 1) * stride[1] + 1:stride[1]] += contrib
    y = y[:, :, pre[0]:full[0] - post[0], pre[1]:full[1] - post[1]]
    if p["bias"] is not None:
        y = y + p["bias"].reshape(1, -1, 1, 1)
    return y.astype(x.dtype)


def _activation(layer: Layer, ins: list[np.ndarray]) -> np.ndarray:
    x = ins[0]
    op = layer._state["params"]["op"]
    alpha, beta = layer.alpha, layer.beta
    xf = x.astype(np.float64)
    if op is ActivationType.RELU:
        y = np.maximum(xf, 0)
    elif op is ActivationType.SIGMOID:
        y = 1 / (1 + np.exp(-xf))
    elif op is ActivationType.TANH:
        y = np.tanh(xf)
    elif op is ActivationType.LEAKY_RELU:
        y = np.where(xf >= 0, xf, alpha * xf)
    elif op is ActivationType.ELU:
        y = np.where(xf >= 0, xf, alpha * (np.exp(xf) - 1))
    elif op is ActivationType.SOFTPLUS:
        y = alpha * np.log1p(np.exp(beta * xf))
    elif op is ActivationType.CLIP:
        y = np.clip(xf, alpha, beta)
    elif op is ActivationType.HARD_SIGMOID:
        y = np.clip(alpha * xf + beta, 0, 1)
    elif op is ActivationType.GELU_ERF:
        y = 0.5 * xf * (1 + _erf(xf / math.sqrt(2)))
    elif op is ActivationType.GELU_TANH:
        y = 0.5 * xf * (1 + np.tanh(math.sqrt(2 / math.pi) * (xf + 0.044715 * xf ** 3)))
    else:
        raise NotImplementedError(f"test double: activation {op}")
    return y.astype(x.dtype)


def _erf(x: np.ndarray) -> np.ndarray:
    try:
        from scipy.special import erf
    except ImportError:
        return np.vectorize(math.erf)(x)
    return erf(x)


def _same_rank(kind: str, a: np.ndarray, b: np.ndarray) -> None:
    assert a.ndim == b.ndim, f"TensorRT {kind}: operands of rank {a.ndim} and {b.ndim}"
    for da, db in zip(a.shape, b.shape):
        assert da == db or da == 1 or db == 1, f"TensorRT {kind}: shapes {a.shape} and {b.shape} do not broadcast"


def _elementwise(layer: Layer, ins: list[np.ndarray]) -> np.ndarray:
    a, b = ins
    _same_rank("elementwise", a, b)
    assert a.dtype == b.dtype, f"strongly typed: elementwise operands {a.dtype} and {b.dtype}"
    op = layer._state["params"]["op"]
    fns = {"SUM": np.add, "PROD": np.multiply, "MAX": np.maximum, "MIN": np.minimum, "SUB": np.subtract,
           "DIV": np.divide, "POW": np.power, "FLOOR_DIV": np.floor_divide, "AND": np.logical_and,
           "OR": np.logical_or, "XOR": np.logical_xor, "EQUAL": np.equal, "GREATER": np.greater, "LESS": np.less}
    y = fns[op.name](a, b)
    return y if y.dtype == np.bool_ else y.astype(a.dtype)


def _unary(layer: Layer, ins: list[np.ndarray]) -> np.ndarray:
    x = ins[0]
    op = layer._state["params"]["op"].name
    if op == "ERF":
        return _erf(x.astype(np.float64)).astype(x.dtype)
    fns = {"EXP": np.exp, "LOG": np.log, "SQRT": np.sqrt, "RECIP": np.reciprocal, "ABS": np.abs,
           "NEG": np.negative, "SIN": np.sin, "COS": np.cos, "FLOOR": np.floor, "CEIL": np.ceil,
           "NOT": np.logical_not}
    return fns[op](x).astype(x.dtype)


def _matmul(layer: Layer, ins: list[np.ndarray]) -> np.ndarray:
    a, b = ins
    op0, op1 = (o.name for o in layer._state["params"]["ops"])
    assert a.dtype == b.dtype, f"strongly typed: matrix multiply operands {a.dtype} and {b.dtype}"
    if op0 != "VECTOR" and op1 != "VECTOR":
        assert a.ndim == b.ndim, f"TensorRT matrix multiply: ranks {a.ndim} and {b.ndim}"
    if op0 == "TRANSPOSE":
        a = np.swapaxes(a, -1, -2)
    if op1 == "TRANSPOSE":
        b = np.swapaxes(b, -1, -2)
    return np.matmul(a.astype(np.float64), b.astype(np.float64)).astype(ins[0].dtype)


def _pooling(layer: Layer, ins: list[np.ndarray]) -> np.ndarray:
    p, a = layer._state["params"], layer._state["attrs"]
    x = ins[0]
    window = p["window"]
    n = len(window)
    stride = list(a["stride_nd"] or [1] * n)
    pre, post, round_up = _spatial_pads(layer, x.shape[2:], window, stride, [1] * n)
    if round_up:  # extra padding at the end so the last partial window counts
        post = list(post)
        for i, (size, k, s) in enumerate(zip(x.shape[2:], window, stride)):
            padded = size + pre[i] + post[i]
            out = math.ceil((padded - k) / s) + 1
            if (out - 1) * s >= size + pre[i]:
                out -= 1
            post[i] += max((out - 1) * s + k - padded, 0)
    is_max = p["op"] is PoolingType.MAX
    fill = -np.inf if is_max else 0.0
    xp = np.pad(x.astype(np.float64), [(0, 0), (0, 0)] + list(zip(pre, post)), constant_values=fill)
    win = _windows(xp, window, stride, [1] * n)
    axes = tuple(range(-n, 0))
    if is_max:
        return win.max(axis=axes).astype(x.dtype)
    total = win.sum(axis=axes)
    if a["average_count_excludes_padding"]:
        ones = np.pad(np.ones((1, 1) + x.shape[2:]), [(0, 0), (0, 0)] + list(zip(pre, post)))
        count = _windows(ones, window, stride, [1] * n).sum(axis=axes)
    else:
        ones = np.pad(np.ones((1, 1) + tuple(s + lo + hi for s, lo, hi in zip(x.shape[2:], pre, post))),
                      [(0, 0), (0, 0)] + [(0, 0)] * n)
        count = _windows(ones, window, stride, [1] * n).sum(axis=axes)
    return (total / count).astype(x.dtype)


def _axes(mask: int, rank: int) -> tuple[int, ...]:
    assert 0 < mask < (1 << rank), f"axes mask {mask} for rank {rank}"
    return tuple(i for i in range(rank) if mask >> i & 1)


def _reduce(layer: Layer, ins: list[np.ndarray]) -> np.ndarray:
    p = layer._state["params"]
    x = ins[0]
    axes = _axes(p["axes"], x.ndim)
    fns = {"SUM": np.sum, "PROD": np.prod, "MAX": np.max, "MIN": np.min, "AVG": np.mean}
    return fns[p["op"].name](x.astype(np.float64), axis=axes, keepdims=builtins_bool(p["keep"])).astype(x.dtype)


def builtins_bool(x: Any) -> Any:
    return x is True or x == 1


def _reshape_dims(shape: tuple[int, ...], dims: Sequence[int], zero_copies: Any) -> tuple[int, ...]:
    out = [shape[i] if d == 0 and zero_copies else d for i, d in enumerate(dims)]
    if -1 in out:
        known = int(np.prod([d for d in out if d != -1]))
        out[out.index(-1)] = int(np.prod(shape)) // known
    return tuple(out)


def _shuffle(layer: Layer, ins: list[np.ndarray]) -> np.ndarray:
    a = layer._state["attrs"]
    x = ins[0]
    if a["first_transpose"] is not None:
        x = np.transpose(x, tuple(a["first_transpose"]))
    dims = ins[1] if len(ins) > 1 and ins[1] is not None else a["reshape_dims"]
    if dims is not None:
        x = x.reshape(_reshape_dims(x.shape, [int(d) for d in np.asarray(dims).reshape(-1)],
                                    a["zero_is_placeholder"]))
    if a["second_transpose"] is not None:
        x = np.transpose(x, tuple(a["second_transpose"]))
    return x


def _concat(layer: Layer, ins: list[np.ndarray]) -> np.ndarray:
    axis = layer.axis
    assert axis is not None and all(t.ndim == ins[0].ndim for t in ins)
    return np.concatenate(ins, axis=axis)


def _slice(layer: Layer, ins: list[np.ndarray]) -> np.ndarray:
    p = layer._state["params"]
    x = ins[0]
    index = []
    shape = [int(d) for d in ins[2]] if len(ins) > 2 and ins[2] is not None else p["shape"]
    for dim, (st, size, step) in enumerate(zip(p["start"], shape, p["stride"])):
        idx = st + step * np.arange(size)
        assert size == 0 or (0 <= idx.min() and idx.max() < x.shape[dim]), "slice out of bounds"
        index.append(idx)
    return x[np.ix_(*index)]


def _softmax(layer: Layer, ins: list[np.ndarray]) -> np.ndarray:
    x = ins[0]
    (axis,) = _axes(layer.axes, x.ndim)
    xf = x.astype(np.float64)
    e = np.exp(xf - xf.max(axis=axis, keepdims=True))
    return (e / e.sum(axis=axis, keepdims=True)).astype(x.dtype)


def _normalization(layer: Layer, ins: list[np.ndarray]) -> np.ndarray:
    x, scale, bias = ins
    _same_rank("normalization", x, scale)
    axes = _axes(layer._state["params"]["axes"], x.ndim)
    xf = x.astype(np.float64)
    mean = xf.mean(axis=axes, keepdims=True)
    var = ((xf - mean) ** 2).mean(axis=axes, keepdims=True)
    return ((xf - mean) / np.sqrt(var + layer.epsilon) * scale + bias).astype(x.dtype)


def _resize_axis(x: np.ndarray, axis: int, out: int, a: dict[str, Any], scale: float | None) -> np.ndarray:
    n = x.shape[axis]
    if out == n and scale in (None, 1.0):
        return x
    s = scale if scale is not None else out / n
    pos = np.arange(out, dtype=np.float64)
    ct = a["coordinate_transformation"]
    if ct is ResizeCoordinateTransformation.ALIGN_CORNERS:
        coord = pos * (n - 1) / (out - 1) if out > 1 else np.zeros(out)
    elif ct is ResizeCoordinateTransformation.ASYMMETRIC:
        coord = pos / s
    else:
        coord = (pos + 0.5) / s - 0.5
        if out == 1 and a["selector_for_single_pixel"] is ResizeSelector.UPPER:
            coord = np.zeros(1)
    if a["resize_mode"] is InterpolationMode.NEAREST:
        r = a["nearest_rounding"]
        idx = {ResizeRoundMode.FLOOR: np.floor, ResizeRoundMode.CEIL: np.ceil,
               ResizeRoundMode.HALF_UP: lambda c: np.floor(c + 0.5),
               ResizeRoundMode.HALF_DOWN: lambda c: np.ceil(c - 0.5)}[r](coord)
        return np.take(x, np.clip(idx, 0, n - 1).astype(np.int64), axis=axis)
    if a["resize_mode"] is InterpolationMode.LINEAR:
        c = np.clip(coord, 0, n - 1)
        lo = np.floor(c).astype(np.int64)
        hi = np.minimum(lo + 1, n - 1)
        w = (c - lo).reshape([-1 if i == axis else 1 for i in range(x.ndim)])
        return np.take(x, lo, axis=axis) * (1 - w) + np.take(x, hi, axis=axis) * w
    raise NotImplementedError("test double: cubic resize")


def _resize(layer: Layer, ins: list[np.ndarray]) -> np.ndarray:
    a = layer._state["attrs"]
    x = ins[0].astype(np.float64)
    if a["shape"] is not None:
        shape, scales = tuple(a["shape"]), [None] * x.ndim
    else:
        scales = list(a["scales"])
        shape = tuple(math.floor(d * s) for d, s in zip(x.shape, scales))
    for axis in range(x.ndim):
        x = _resize_axis(x, axis, shape[axis], a, scales[axis])
    return x.astype(ins[0].dtype)


def _lrn(layer: Layer, ins: list[np.ndarray]) -> np.ndarray:
    p = layer._state["params"]
    x = ins[0].astype(np.float64)
    size = p["window"]
    sq = np.pad(x ** 2, [(0, 0), ((size - 1) // 2, size // 2)] + [(0, 0)] * (x.ndim - 2))
    total = sum(sq[:, i:i + x.shape[1]] for i in range(size))
    return (x / (p["k"] + p["alpha"] / size * total) ** p["beta"]).astype(ins[0].dtype)


def _per_axis(scale: np.ndarray, x: np.ndarray, axis: int) -> np.ndarray:
    if scale.ndim == 0 or scale.size == 1:
        assert scale.ndim == 0, "a per-tensor scale is a 0-d tensor"
        return scale
    assert scale.ndim == 1 and scale.shape[0] == x.shape[axis], "per-channel scale vs quantization axis"
    return scale.reshape([-1 if i == axis else 1 for i in range(x.ndim)])


def _quantize(layer: Layer, ins: list[np.ndarray]) -> np.ndarray:
    x, scale = ins
    assert x.dtype == scale.dtype, "strongly typed: quantize input and scale types differ"
    s = _per_axis(scale, x, layer.axis)
    q = np.rint(x.astype(np.float64) / s)
    return np.clip(q, -128, 127).astype(_np(layer._state["params"]["to"]))


def _dequantize(layer: Layer, ins: list[np.ndarray]) -> np.ndarray:
    x, scale = ins
    s = _per_axis(scale, x, layer.axis)
    return (x.astype(np.float64) * s).astype(_np(layer._state["params"]["to"]))


def _attention(layer: Layer, ins: list[np.ndarray]) -> np.ndarray:
    q, k, v = ins
    assert q.ndim == k.ndim == v.ndim == 4, "IAttention takes [B, H, S, D] tensors"
    scores = np.matmul(q.astype(np.float64), np.swapaxes(k.astype(np.float64), -1, -2))
    mask = layer.mask
    if mask is not None:
        m = _VALUES[id(mask)]
        scores = np.where(m, scores, -np.inf) if m.dtype == np.bool_ else scores + m
    e = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return np.matmul(e / e.sum(axis=-1, keepdims=True), v.astype(np.float64)).astype(q.dtype)


_EVAL = {
    "constant": lambda layer, ins: layer._state["params"]["array"],
    "convolution": _conv,
    "deconvolution": _deconv,
    "activation": _activation,
    "prelu": lambda layer, ins: np.where(ins[0] >= 0, ins[0], ins[0] * ins[1]).astype(ins[0].dtype),
    "elementwise": _elementwise,
    "unary": _unary,
    "matmul": _matmul,
    "pooling": _pooling,
    "reduce": _reduce,
    "shuffle": _shuffle,
    "shape": lambda layer, ins: np.array(ins[0].shape, dtype=np.int64),
    "concatenation": _concat,
    "slice": _slice,
    "softmax": _softmax,
    "normalization": _normalization,
    "resize": _resize,
    "gather": lambda layer, ins: np.take(ins[0], ins[1], axis=layer._state["params"]["axis"]),
    "lrn": _lrn,
    "cast": lambda layer, ins: ins[0].astype(_np(layer._state["params"]["to"])),
    "identity": lambda layer, ins: ins[0],
    "quantize": _quantize,
    "dequantize": _dequantize,
    "attention": _attention,
}
_VALUES: dict[int, np.ndarray] = {}


def execute(network: INetworkDefinition, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Evaluates ``network`` layer by layer on ``feeds``; returns the marked outputs by name."""
    _VALUES.clear()
    try:
        for name, dtype, dims, tensor in network.inputs:
            x = np.asarray(feeds[name])
            assert x.dtype == _np(dtype), f"input {name}: {x.dtype} for {dtype}"
            assert len(dims) == x.ndim and all(d in (-1, s) for d, s in zip(dims, x.shape)), f"input {name} shape"
            _VALUES[id(tensor)] = x
        for layer in network.layers:
            state = layer._state
            ins = [None if t is None else _VALUES[id(t)] for t in state["inputs"]]
            out = _EVAL[state["kind"]](layer, ins)
            _VALUES[id(state["outputs"][0])] = np.asarray(out)
        return {t.name: _VALUES[id(t)] for t in network.outputs}
    finally:
        _VALUES.clear()


# ---------------------------------------------------------------------------------------------- program loading


@contextlib.contextmanager
def installed() -> Iterator[Any]:
    """``sys.modules["tensorrt"]`` is this double inside the block."""
    saved = sys.modules.get("tensorrt")
    sys.modules["tensorrt"] = sys.modules[__name__]
    try:
        yield sys.modules[__name__]
    finally:
        if saved is None:
            sys.modules.pop("tensorrt", None)
        else:
            sys.modules["tensorrt"] = saved


def load_program(path: str | Path) -> Any:
    """Imports a generated ``.trt.py`` with this double standing in for ``tensorrt``."""
    spec = importlib.util.spec_from_file_location(f"kiln_trt_program_{abs(hash(str(path)))}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    with installed():
        spec.loader.exec_module(module)
    return module


def run_program(path: str | Path, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Loads the program, populates a network with its weights and evaluates it."""
    module = load_program(path)
    network = INetworkDefinition()
    module.populate(network, module.load_weights(Path(path).with_name(module.WEIGHTS)))
    return execute(network, feeds)
