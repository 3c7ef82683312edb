"""Numpy references of ONNX neural-network ops: convolutions, pooling, normalisations.

Convolutions are vectorised: a strided window view of the padded input (the
"im2col" matrix) is multiplied with the weights by one matmul per batch
entry; transposed convolutions and Col2Im scatter-add one strided slice per
kernel offset.  Pooling reduces over the same window view.

Floats are computed in float32 (float64 stays float64; float16 and bfloat16
are widened to float32) and cast back, so each output has the input's dtype.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
from kiln.ops.reference._registry import RefContext, reference
from numpy.lib.stride_tricks import as_strided

Inputs = list["np.ndarray | None"]
Attrs = dict[str, Any]


# --------------------------------------------------------------------------- helpers


def _arg(inputs: Inputs, i: int) -> np.ndarray | None:
    return inputs[i] if i < len(inputs) else None


def _req(inputs: Inputs, i: int) -> np.ndarray:
    """The ``i``-th input, which the op requires."""
    a = inputs[i] if i < len(inputs) else None
    if a is None:
        raise ValueError(f"required input {i} is missing")
    return a


def _compute_dtype(dtype: np.dtype) -> np.dtype:
    """float64 stays float64; every other float is computed in float32."""
    return np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)


def _geometry(
    in_shape: tuple[int, ...],
    kernel: list[int],
    attrs: Attrs,
    ceil_mode: bool = False,
) -> tuple[list[int], list[int], list[int]]:
    """Pads (begin, end) and output shape of a convolution or pooling window.

    ``auto_pad`` SAME_UPPER/SAME_LOWER give ``ceil(in / stride)`` outputs, the
    odd padding pixel going at the end (UPPER) or the beginning (LOWER);
    VALID pads nothing.  A SAME padding total that would come out negative
    (stride larger than the kernel) is 0, as in TensorFlow (onnxruntime crops
    the input there instead, inconsistently between its Conv and pools).
    With ``ceil_mode`` the output size rounds up, but a last window that would
    start in the end padding is dropped.
    """
    nd = len(kernel)
    strides = attrs.get("strides") or [1] * nd
    dilations = attrs.get("dilations") or [1] * nd
    auto_pad = attrs.get("auto_pad", "NOTSET")
    pads = attrs.get("pads") or [0] * (2 * nd)
    begin, end, out = [], [], []
    for i in range(nd):
        size, s = in_shape[i], strides[i]
        extent = (kernel[i] - 1) * dilations[i] + 1
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            o = -(-size // s)
            total = max((o - 1) * s + extent - size, 0)
            b = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
            begin.append(b)
            end.append(total - b)
            out.append(o)
            continue
        b, e = (0, 0) if auto_pad == "VALID" else (pads[i], pads[i + nd])
        span = size + b + e - extent
        if ceil_mode:
            o = -(-span // s) + 1
            if (o - 1) * s >= size + b:
                o -= 1
        else:
            o = span // s + 1
        begin.append(b)
        end.append(e)
        out.append(max(o, 0))
    return begin, end, out


def _windows(
    xp: np.ndarray, kernel: list[int], strides: list[int], dilations: list[int], out: list[int]
) -> np.ndarray:
    """Read-only view ``(*lead, *out, *kernel)`` of the windows over the trailing dims."""
    nd = len(kernel)
    lead = xp.ndim - nd
    st = xp.strides
    shape = xp.shape[:lead] + tuple(out) + tuple(kernel)
    steps = st[:lead] + tuple(st[lead + i] * strides[i] for i in range(nd))
    steps += tuple(st[lead + i] * dilations[i] for i in range(nd))
    return as_strided(xp, shape=shape, strides=steps, writeable=False)


def _pad_spatial(x: np.ndarray, begin: list[int], end: list[int], value: Any) -> np.ndarray:
    """Pads the trailing ``len(begin)`` dims with ``value``; negative amounts crop."""
    lead = x.ndim - len(begin)
    if min(begin + end, default=0) < 0:
        keep = [slice(max(-b, 0), x.shape[lead + i] - max(-e, 0)) for i, (b, e) in enumerate(zip(begin, end))]
        x = x[(slice(None),) * lead + tuple(keep)]
        begin, end = [max(b, 0) for b in begin], [max(e, 0) for e in end]
    if not any(begin) and not any(end):
        return x
    return np.pad(x, [(0, 0)] * lead + list(zip(begin, end)), mode="constant", constant_values=value)


def _crop_spatial(x: np.ndarray, begin: list[int], end: list[int]) -> np.ndarray:
    """Removes ``begin``/``end`` from the trailing dims; negative amounts zero-extend."""
    return _pad_spatial(x, [-b for b in begin], [-e for e in end], 0)


def _col2im(cols: np.ndarray, size: list[int], strides: list[int], dilations: list[int]) -> np.ndarray:
    """Scatter-adds ``cols`` ``(N, C, *kernel, *blocks)`` into an ``(N, C, *size)`` image."""
    nd = len(size)
    kernel = cols.shape[2 : 2 + nd]
    blocks = cols.shape[2 + nd :]
    out = np.zeros(cols.shape[:2] + tuple(size), dtype=cols.dtype)
    for offset in itertools.product(*(range(k) for k in kernel)):
        index = [slice(None), slice(None)]
        for i in range(nd):
            start = offset[i] * dilations[i]
            index.append(slice(start, start + (blocks[i] - 1) * strides[i] + 1, strides[i]))
        out[tuple(index)] += cols[(slice(None), slice(None)) + offset]
    return out


# --------------------------------------------------------------------------- convolutions


def _conv(x: np.ndarray, w: np.ndarray, attrs: Attrs) -> np.ndarray:
    """Grouped N-D convolution of ``x`` ``(N, C, *in)`` with ``w`` ``(M, C/g, *k)``."""
    kernel = list(w.shape[2:])
    nd = len(kernel)
    group = attrs.get("group", 1)
    strides = attrs.get("strides") or [1] * nd
    dilations = attrs.get("dilations") or [1] * nd
    begin, end, out = _geometry(x.shape[2:], kernel, attrs)
    xp = _pad_spatial(x, begin, end, 0)
    n, c = x.shape[:2]
    m = w.shape[0]
    cg, mg = c // group, m // group
    k_total, p_total = math.prod(kernel), math.prod(out)
    wmat = w.reshape(group, mg, cg * k_total).transpose(0, 2, 1)  # (g, Cg*K, Mg)
    result = np.empty((n, m, p_total), dtype=x.dtype)
    for b in range(n):
        win = _windows(xp[b].reshape((group, cg) + xp.shape[2:]), kernel, strides, dilations, out)
        # (g, Cg, *out, *k) -> (g, *out, Cg, *k) -> (g, P, Cg*K)
        order = (0,) + tuple(range(2, 2 + nd)) + (1,) + tuple(range(2 + nd, 2 + 2 * nd))
        cols = win.transpose(order).reshape(group, p_total, cg * k_total)
        result[b] = np.matmul(cols, wmat).transpose(0, 2, 1).reshape(m, p_total)
    return result.reshape((n, m) + tuple(out))


@reference("Conv")
def conv_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    x, w, bias = _req(inputs, 0), _req(inputs, 1), _arg(inputs, 2)
    cdt = _compute_dtype(x.dtype)
    y = _conv(x.astype(cdt, copy=False), w.astype(cdt, copy=False), attrs)
    if bias is not None:
        y += bias.astype(cdt).reshape((1, -1) + (1,) * (y.ndim - 2))
    return [y.astype(x.dtype, copy=False)]


@reference("ConvInteger")
def conv_integer_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """``(x - x_zero_point) * (w - w_zero_point)`` convolved exactly into int32;
    ``w_zero_point`` may hold one value per output channel."""
    x, w = _req(inputs, 0), _req(inputs, 1)
    xz, wz = _arg(inputs, 2), _arg(inputs, 3)
    xs = x.astype(np.int64) - (0 if xz is None else np.asarray(xz).astype(np.int64).reshape(()))
    ws = w.astype(np.int64)
    if wz is not None:
        wz = np.asarray(wz).astype(np.int64)
        ws = ws - (wz.reshape((-1,) + (1,) * (w.ndim - 1)) if wz.size > 1 else wz.reshape(()))
    # Products of 8-bit values summed in float64 stay exact integers well past any real K.
    y = _conv(xs.astype(np.float64), ws.astype(np.float64), attrs)
    return [np.rint(y).astype(np.int32)]


@reference("ConvTranspose")
def conv_transpose_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """Transposed convolution; ``w`` is ``(C, M/g, *k)``.

    The full output is ``(in - 1) * s + (k - 1) * d + 1 + output_padding``; the
    pads are then cut off.  With ``output_shape`` (or SAME auto_pad, giving
    ``in * s``) the pads are derived: ``total = full - output_shape``, split
    with the odd pixel at the start unless ``auto_pad`` is SAME_UPPER.
    """
    x, w, bias = _req(inputs, 0), _req(inputs, 1), _arg(inputs, 2)
    cdt = _compute_dtype(x.dtype)
    xc, wc = x.astype(cdt, copy=False), w.astype(cdt, copy=False)
    kernel = list(attrs.get("kernel_shape") or w.shape[2:])
    nd = len(kernel)
    group = attrs.get("group", 1)
    strides = attrs.get("strides") or [1] * nd
    dilations = attrs.get("dilations") or [1] * nd
    out_pad = attrs.get("output_padding") or [0] * nd
    auto_pad = attrs.get("auto_pad", "NOTSET")
    in_shape = x.shape[2:]
    full = [
        (in_shape[i] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 + out_pad[i] for i in range(nd)
    ]
    target = attrs.get("output_shape")
    if target is not None:
        target = list(target)[-nd:]
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        target = [in_shape[i] * strides[i] for i in range(nd)]
    if target is not None:
        totals = [full[i] - target[i] for i in range(nd)]
        if auto_pad == "SAME_UPPER":
            begin = [t // 2 for t in totals]
        else:
            begin = [t - t // 2 for t in totals]
        end = [t - b for t, b in zip(totals, begin)]
    elif auto_pad == "VALID":
        begin, end = [0] * nd, [0] * nd
    else:
        pads = attrs.get("pads") or [0] * (2 * nd)
        begin, end = list(pads[:nd]), list(pads[nd:])
    n, c = x.shape[:2]
    cg, mg = c // group, w.shape[1]
    k_total, p_total = math.prod(kernel), math.prod(in_shape)
    wmat = wc.reshape(group, cg, mg * k_total).transpose(0, 2, 1)  # (g, Mg*K, Cg)
    cols = np.matmul(wmat, xc.reshape(n, group, cg, p_total))  # (N, g, Mg*K, P)
    cols = cols.reshape((n, group * mg) + tuple(kernel) + tuple(in_shape))
    y = _crop_spatial(_col2im(cols, full, strides, dilations), begin, end)
    if bias is not None:
        y = y + bias.astype(cdt).reshape((1, -1) + (1,) * nd)
    return [np.ascontiguousarray(y).astype(x.dtype, copy=False)]


@reference("Col2Im")
def col2im_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """Sums the columns ``(N, C*prod(block), L)`` back into ``(N, C, *image_shape)``."""
    x = _req(inputs, 0)
    image = [int(v) for v in np.asarray(_req(inputs, 1)).reshape(-1)]
    block = [int(v) for v in np.asarray(_req(inputs, 2)).reshape(-1)]
    nd = len(image)
    strides = attrs.get("strides") or [1] * nd
    dilations = attrs.get("dilations") or [1] * nd
    pads = attrs.get("pads") or [0] * (2 * nd)
    blocks = [
        (image[i] + pads[i] + pads[i + nd] - (block[i] - 1) * dilations[i] - 1) // strides[i] + 1
        for i in range(nd)
    ]
    n = x.shape[0]
    c = x.shape[1] // math.prod(block)
    cols = x.reshape((n, c) + tuple(block) + tuple(blocks))
    padded = [image[i] + pads[i] + pads[i + nd] for i in range(nd)]
    y = _col2im(cols, padded, strides, dilations)
    return [np.ascontiguousarray(_crop_spatial(y, list(pads[:nd]), list(pads[nd:])))]


# --------------------------------------------------------------------------- pooling


def _pool_windows(
    x: np.ndarray, attrs: Attrs, fill: Any
) -> tuple[np.ndarray, list[int], list[int], list[int], list[int], list[int]]:
    """Pads ``x`` (with ``fill``, also over any ceil-mode overhang) and returns
    the window view plus begin pads, end pads, overhang, kernel and output shape."""
    kernel = list(attrs["kernel_shape"])
    nd = len(kernel)
    strides = attrs.get("strides") or [1] * nd
    dilations = attrs.get("dilations") or [1] * nd
    begin, end, out = _geometry(x.shape[2:], kernel, attrs, bool(attrs.get("ceil_mode", 0)))
    over = [
        max(
            (out[i] - 1) * strides[i]
            + (kernel[i] - 1) * dilations[i]
            + 1
            - (x.shape[2 + i] + begin[i] + end[i]),
            0,
        )
        for i in range(nd)
    ]
    xp = _pad_spatial(x, begin, [e + o for e, o in zip(end, over)], fill)
    return _windows(xp, kernel, strides, dilations, out), begin, end, over, kernel, out


def _reduce_axes(nd: int) -> tuple[int, ...]:
    return tuple(range(-nd, 0))


@reference("AveragePool")
def average_pool_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """Window mean.  ``count_include_pad`` counts the explicit pads in the
    divisor; the ceil-mode overhang past the end pad is never counted."""
    x = _req(inputs, 0)
    cdt = _compute_dtype(x.dtype)
    xc = x.astype(cdt, copy=False)
    win, begin, end, over, kernel, out = _pool_windows(xc, attrs, 0)
    nd = len(kernel)
    sums = win.sum(axis=_reduce_axes(nd))
    if attrs.get("count_include_pad", 0):
        ones = np.ones([s + b + e for s, b, e in zip(x.shape[2:], begin, end)], dtype=cdt)
        mask = _pad_spatial(ones, [0] * nd, over, 0)
    else:
        ones = np.ones(x.shape[2:], dtype=cdt)
        mask = _pad_spatial(ones, begin, [e + o for e, o in zip(end, over)], 0)
    counts = _windows(mask, kernel, attrs.get("strides") or [1] * nd, attrs.get("dilations") or [1] * nd, out)
    counts = counts.sum(axis=_reduce_axes(nd))
    with np.errstate(invalid="ignore", divide="ignore"):
        y = sums / counts
    return [y.astype(x.dtype)]


@reference("LpPool")
def lp_pool_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """``(sum |x|^p)^(1/p)`` over each window; pads contribute zero."""
    x = _req(inputs, 0)
    p = float(attrs.get("p", 2))
    cdt = _compute_dtype(x.dtype)
    win, *_rest, kernel, _out = _pool_windows(np.abs(x.astype(cdt)), attrs, 0)
    y = np.power(np.power(win, p).sum(axis=_reduce_axes(len(kernel))), 1.0 / p)
    return [y.astype(x.dtype)]


def _lowest(dtype: np.dtype) -> Any:
    if dtype.kind in "iu":
        return np.iinfo(dtype).min
    return -np.inf


@reference("MaxPool")
def max_pool_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """Window max; the optional ``Indices`` output holds flat positions in the
    unpadded input (row-major, or column-major spatially with ``storage_order``)."""
    x = _req(inputs, 0)
    exact = x.dtype.kind in "iu" or x.dtype in (np.float32, np.float64)
    work = x if exact else x.astype(np.float32)
    win, begin, _end, _over, kernel, out = _pool_windows(work, attrs, _lowest(work.dtype))
    nd = len(kernel)
    y = win.max(axis=_reduce_axes(nd)).astype(x.dtype)
    if ctx.num_outputs < 2:
        return [y]
    strides = attrs.get("strides") or [1] * nd
    dilations = attrs.get("dilations") or [1] * nd
    flat = win.reshape(win.shape[: 2 + nd] + (-1,))
    offsets = np.unravel_index(flat.argmax(axis=-1), kernel)
    spatial = x.shape[2:]
    positions = []
    for i in range(nd):
        shape = [1] * (2 + nd)
        shape[2 + i] = out[i]
        start = (np.arange(out[i]) * strides[i] - begin[i]).reshape(shape)
        positions.append(start + offsets[i] * dilations[i])
    if attrs.get("storage_order", 0):
        index = np.zeros_like(positions[0])
        for i in reversed(range(nd)):
            index = index * spatial[i] + positions[i]
    else:
        index = np.zeros_like(positions[0])
        for i in range(nd):
            index = index * spatial[i] + positions[i]
    n, c = x.shape[:2]
    base = (np.arange(n * c).reshape(n, c) * math.prod(spatial)).reshape((n, c) + (1,) * nd)
    return [y, (index + base).astype(np.int64)]


@reference("MaxUnpool")
def max_unpool_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """Places ``X`` at the flat ``I`` positions of a zero tensor shaped
    ``(in - 1) * stride + kernel - pads`` (what MaxPool's indices refer to);
    an ``output_shape`` input then zero-extends (or cuts) that at the end."""
    x, idx, shape = _req(inputs, 0), _req(inputs, 1), _arg(inputs, 2)
    kernel = list(attrs["kernel_shape"])
    nd = len(kernel)
    strides = attrs.get("strides") or [1] * nd
    pads = attrs.get("pads") or [0] * (2 * nd)
    spatial = [(x.shape[2 + i] - 1) * strides[i] + kernel[i] - pads[i] - pads[i + nd] for i in range(nd)]
    default = tuple(x.shape[:2]) + tuple(spatial)
    y = np.zeros(math.prod(default), dtype=x.dtype)
    y[np.asarray(idx).astype(np.int64).reshape(-1)] = x.reshape(-1)
    y = y.reshape(default)
    if shape is not None:
        target = [int(v) for v in np.asarray(shape).reshape(-1)][-nd:]
        y = _crop_spatial(y, [0] * nd, [d - t for d, t in zip(spatial, target)])
    return [np.ascontiguousarray(y)]


def _global(x: np.ndarray, how: str, p: float = 2.0) -> np.ndarray:
    axes = tuple(range(2, x.ndim))
    if how == "max":
        return x.max(axis=axes, keepdims=True)
    xc = x.astype(_compute_dtype(x.dtype))
    if how == "avg":
        return xc.mean(axis=axes, keepdims=True).astype(x.dtype)
    return np.power(np.power(np.abs(xc), p).sum(axis=axes, keepdims=True), 1.0 / p).astype(x.dtype)


@reference("GlobalAveragePool")
def global_average_pool_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    return [_global(_req(inputs, 0), "avg")]


@reference("GlobalMaxPool")
def global_max_pool_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    return [_global(_req(inputs, 0), "max")]


@reference("GlobalLpPool")
def global_lp_pool_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    return [_global(_req(inputs, 0), "lp", float(attrs.get("p", 2)))]


# --------------------------------------------------------------------------- normalisations


def _per_channel(p: np.ndarray, rank: int, dtype: np.dtype) -> np.ndarray:
    """Broadcasts a per-channel ``(C,)`` vector (or ``(C, *spatial)``) against ``(N, C, ...)``."""
    p = np.asarray(p).astype(dtype)
    if p.ndim == 1:
        return p.reshape((1, -1) + (1,) * (rank - 2))
    return p[None]


@reference("BatchNormalization")
def batch_normalization_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """Inference: ``(x - mean) / sqrt(var + eps) * scale + B``.

    With ``training_mode`` (opset 14+) the batch statistics normalise and the
    running statistics ``stat * momentum + batch_stat * (1 - momentum)`` are
    the extra outputs (population variance).  Training outputs of opsets
    before 14 are not supported.
    """
    x, scale, bias, mean, var = (_req(inputs, i) for i in range(5))
    eps = attrs.get("epsilon", 1e-5)
    cdt = _compute_dtype(x.dtype)
    xc = x.astype(cdt)
    training = ctx.version >= 14 and bool(attrs.get("training_mode", 0))
    if ctx.num_outputs > 1 and not training:
        raise NotImplementedError("BatchNormalization training outputs before opset 14")
    if training:
        axes = (0,) + tuple(range(2, x.ndim))
        cur_mean, cur_var = xc.mean(axis=axes), xc.var(axis=axes)
    else:
        cur_mean, cur_var = mean.astype(cdt), var.astype(cdt)
    norm = (xc - _per_channel(cur_mean, x.ndim, cdt)) / np.sqrt(
        _per_channel(cur_var, x.ndim, cdt) + cdt.type(eps)
    )
    y = (norm * _per_channel(scale, x.ndim, cdt) + _per_channel(bias, x.ndim, cdt)).astype(x.dtype)
    if not training:
        return [y]
    momentum = cdt.type(attrs.get("momentum", 0.9))
    run_mean = mean.astype(cdt) * momentum + cur_mean * (1 - momentum)
    run_var = var.astype(cdt) * momentum + cur_var * (1 - momentum)
    return [y, run_mean.astype(mean.dtype), run_var.astype(var.dtype)][: ctx.num_outputs]


@reference("InstanceNormalization")
def instance_normalization_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """Normalises each (batch, channel) over its spatial dims, then scale + B per channel."""
    x, scale, bias = (_req(inputs, i) for i in range(3))
    cdt = _compute_dtype(x.dtype)
    xc = x.astype(cdt)
    axes = tuple(range(2, x.ndim))
    mean = xc.mean(axis=axes, keepdims=True)
    var = xc.var(axis=axes, keepdims=True)
    y = (xc - mean) / np.sqrt(var + cdt.type(attrs.get("epsilon", 1e-5)))
    y = y * _per_channel(scale, x.ndim, cdt) + _per_channel(bias, x.ndim, cdt)
    return [y.astype(x.dtype)]


def _stash_dtype(attrs: Attrs, x: np.ndarray) -> np.dtype:
    """``stash_type`` (default 1 = float32) is the precision of the statistics."""
    from onnx.helper import tensor_dtype_to_np_dtype

    stash = attrs.get("stash_type", 1)
    return np.dtype(tensor_dtype_to_np_dtype(stash)) if stash != 1 else np.dtype(np.float32)


@reference("LayerNormalization")
def layer_normalization_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """Normalises over dims ``axis..`` (default -1); extra outputs ``Mean`` and
    ``InvStdDev`` keep the reduced dims as 1 and have the stash type."""
    x, scale, bias = _req(inputs, 0), _req(inputs, 1), _arg(inputs, 2)
    axis = attrs.get("axis", -1)
    axis = axis + x.ndim if axis < 0 else axis
    cdt = _stash_dtype(attrs, x)
    xc = x.astype(cdt)
    axes = tuple(range(axis, x.ndim))
    mean = xc.mean(axis=axes, keepdims=True)
    var = ((xc - mean) ** 2).mean(axis=axes, keepdims=True)
    inv = 1 / np.sqrt(var + cdt.type(attrs.get("epsilon", 1e-5)))
    y = (xc - mean) * inv * scale.astype(cdt)
    if bias is not None:
        y = y + bias.astype(cdt)
    return [y.astype(x.dtype), mean, inv.astype(cdt)][: max(ctx.num_outputs, 1)]


@reference("GroupNormalization")
def group_normalization_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """Normalises channel groups; ``scale``/``bias`` hold one value per channel
    (opset 21) or per group (opset 18), recognised by their length."""
    x, scale, bias = (_req(inputs, i) for i in range(3))
    groups = attrs["num_groups"]
    cdt = _stash_dtype(attrs, x)
    n, c = x.shape[:2]
    xg = x.astype(cdt).reshape(n, groups, -1)
    mean = xg.mean(axis=-1, keepdims=True)
    var = xg.var(axis=-1, keepdims=True)
    norm = ((xg - mean) / np.sqrt(var + cdt.type(attrs.get("epsilon", 1e-5)))).reshape(x.shape)
    scale, bias = np.asarray(scale).reshape(-1), np.asarray(bias).reshape(-1)
    if scale.size != c:
        scale, bias = np.repeat(scale, c // groups), np.repeat(bias, c // groups)
    y = norm * _per_channel(scale, x.ndim, cdt) + _per_channel(bias, x.ndim, cdt)
    return [y.astype(x.dtype)]


@reference("RMSNormalization")
def rms_normalization_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """``x / sqrt(mean(x^2 over axis..) + eps) * scale``."""
    x, scale = _req(inputs, 0), _req(inputs, 1)
    axis = attrs.get("axis", -1)
    axis = axis + x.ndim if axis < 0 else axis
    cdt = _stash_dtype(attrs, x)
    xc = x.astype(cdt)
    ms = (xc * xc).mean(axis=tuple(range(axis, x.ndim)), keepdims=True)
    y = xc / np.sqrt(ms + cdt.type(attrs.get("epsilon", 1e-5))) * scale.astype(cdt)
    return [y.astype(x.dtype)]


@reference("LpNormalization")
def lp_normalization_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """``x / ||x||_p`` along ``axis`` (default -1, p default 2); a zero norm gives 0."""
    x = _req(inputs, 0)
    p = attrs.get("p", 2)
    cdt = _compute_dtype(x.dtype)
    xc = x.astype(cdt)
    axis = attrs.get("axis", -1)
    if p == 1:
        norm = np.abs(xc).sum(axis=axis, keepdims=True)
    else:
        norm = np.sqrt((xc * xc).sum(axis=axis, keepdims=True))
    safe = np.where(norm == 0, 1, norm)
    return [np.where(norm == 0, 0, xc / safe).astype(x.dtype)]


@reference("MeanVarianceNormalization")
def mean_variance_normalization_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """ONNX's function body: ``(x - E[x]) / (sqrt(E[x^2] - E[x]^2) + 1e-9)`` over ``axes``
    (default [0, 2, 3])."""
    x = _req(inputs, 0)
    cdt = _compute_dtype(x.dtype)
    xc = x.astype(cdt)
    axes = tuple(attrs.get("axes", [0, 2, 3]))
    mean = xc.mean(axis=axes, keepdims=True)
    var = (xc * xc).mean(axis=axes, keepdims=True) - mean * mean
    return [((xc - mean) / (np.sqrt(var) + cdt.type(1e-9))).astype(x.dtype)]


@reference("LRN")
def lrn_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """``x / (bias + alpha / size * sum(x^2 over nearby channels)) ** beta``; the
    channel window spans ``floor((size-1)/2)`` before and ``ceil((size-1)/2)`` after."""
    x = _req(inputs, 0)
    size = attrs["size"]
    alpha, beta, bias = attrs.get("alpha", 1e-4), attrs.get("beta", 0.75), attrs.get("bias", 1.0)
    cdt = _compute_dtype(x.dtype)
    xc = x.astype(cdt)
    sq = xc * xc
    before, after = (size - 1) // 2, size - 1 - (size - 1) // 2
    padded = np.pad(sq, [(0, 0), (before, after)] + [(0, 0)] * (x.ndim - 2))
    csum = np.concatenate([np.zeros_like(padded[:, :1]), np.cumsum(padded, axis=1)], axis=1)
    c = x.shape[1]
    window = csum[:, size : size + c] - csum[:, :c]
    y = xc / np.power(cdt.type(bias) + cdt.type(alpha / size) * window, cdt.type(beta))
    return [y.astype(x.dtype)]


# --------------------------------------------------------------------------- detection


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one corner box ``[y1, x1, y2, x2]`` (sorted) with each of ``others``."""
    y1 = np.maximum(box[0], others[:, 0])
    x1 = np.maximum(box[1], others[:, 1])
    y2 = np.minimum(box[2], others[:, 2])
    x2 = np.minimum(box[3], others[:, 3])
    inter = np.clip(y2 - y1, 0, None) * np.clip(x2 - x1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    union = area + areas - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


@reference("NonMaxSuppression")
def non_max_suppression_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """Greedy per batch and class: boxes by descending score (ties by index),
    scores not above ``score_threshold`` dropped (strictly, as onnxruntime and
    TensorFlow do), a box suppressed when its IoU with a kept one is strictly
    above ``iou_threshold``.  Output rows
    ``[batch, class, box]`` (int64), at most ``max_output_boxes_per_class`` (default 0) each."""
    boxes, scores = _req(inputs, 0).astype(np.float64), _req(inputs, 1).astype(np.float64)
    limit_in, iou_in, score_in = _arg(inputs, 2), _arg(inputs, 3), _arg(inputs, 4)
    limit = 0 if limit_in is None or limit_in.size == 0 else int(np.asarray(limit_in).reshape(-1)[0])
    iou_t = 0.0 if iou_in is None or iou_in.size == 0 else float(np.asarray(iou_in).reshape(-1)[0])
    score_t = None if score_in is None or score_in.size == 0 else float(np.asarray(score_in).reshape(-1)[0])
    if attrs.get("center_point_box", 0):
        xc, yc, w, h = (boxes[..., i] for i in range(4))
        corners = np.stack([yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2], axis=-1)
    else:
        corners = np.stack(
            [
                np.minimum(boxes[..., 0], boxes[..., 2]),
                np.minimum(boxes[..., 1], boxes[..., 3]),
                np.maximum(boxes[..., 0], boxes[..., 2]),
                np.maximum(boxes[..., 1], boxes[..., 3]),
            ],
            axis=-1,
        )
    selected: list[tuple[int, int, int]] = []
    for b in range(scores.shape[0]):
        for c in range(scores.shape[1]):
            cls = scores[b, c]
            order = np.argsort(-cls, kind="stable")
            if score_t is not None:
                order = order[cls[order] > score_t]
            kept: list[int] = []
            for i in order:
                if len(kept) >= limit:
                    break
                if kept and np.any(_iou(corners[b, i], corners[b, kept]) > iou_t):
                    continue
                kept.append(int(i))
            selected.extend((b, c, i) for i in kept)
    return [np.array(selected, dtype=np.int64).reshape(-1, 3)]
