"""Numpy references of ONNX shape, layout, indexing and constant-producing ops.

These ops move, select or create elements without arithmetic on them (Range
and OneHot aside), so each output keeps the dtype ONNX gives it exactly: the
input's element type, ``int64`` for shapes and indices, or the type named by
an attribute.  Attribute-vs-input changes across opsets (Reshape, Slice, Pad,
Split, Squeeze/Unsqueeze, Tile, Dropout) are decided on ``ctx.version``.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
from kiln.ops.reference._registry import RefContext, reference

Inputs = list["np.ndarray | None"]
Attrs = dict[str, Any]


# --------------------------------------------------------------------------- helpers


def _arg(inputs: Inputs, i: int) -> np.ndarray | None:
    """The ``i``-th input, or ``None`` when it is omitted or past the end."""
    return inputs[i] if i < len(inputs) else None


def _req(inputs: Inputs, i: int) -> np.ndarray:
    """The ``i``-th input, which the op requires."""
    a = inputs[i] if i < len(inputs) else None
    if a is None:
        raise ValueError(f"required input {i} is missing")
    return a


def _ints(values: Any) -> list[int]:
    """A 1-D int list from an attribute list or an int tensor (any rank)."""
    return [int(v) for v in np.asarray(values).reshape(-1)]


def _axis(axis: int, rank: int) -> int:
    """Normalises a possibly negative axis into ``[0, rank)``."""
    if not -rank <= axis < max(rank, 1):
        raise ValueError(f"axis {axis} out of range for rank {rank}")
    return axis + rank if axis < 0 else axis


def _wrap_indices(indices: np.ndarray, dim: Any) -> np.ndarray:
    """Maps negative indices ``i`` onto ``i + dim`` (``dim`` may broadcast)."""
    idx = np.asarray(indices).astype(np.int64, copy=False)
    return np.where(idx < 0, idx + np.asarray(dim, dtype=np.int64), idx)


def _onnx_dtype(code: int) -> np.dtype:
    """The numpy dtype of an ONNX ``TensorProto.DataType`` number."""
    from onnx.helper import tensor_dtype_to_np_dtype

    return np.dtype(tensor_dtype_to_np_dtype(code))


# --------------------------------------------------------------------------- shapes


@reference("Shape")
def shape_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """``start``/``end`` (opset 15) select dims with Python slice clamping."""
    dims = _req(inputs, 0).shape
    start = attrs.get("start", 0)
    end = attrs.get("end", len(dims))
    return [np.array(dims[start:end], dtype=np.int64)]


@reference("Size")
def size_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    return [np.array(_req(inputs, 0).size, dtype=np.int64)]


@reference("Reshape")
def reshape_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """A 0 copies the input dim unless ``allowzero`` (opset 14); -1 is inferred."""
    x = _req(inputs, 0)
    target = attrs["shape"] if ctx.version < 5 else _ints(_req(inputs, 1))
    allowzero = attrs.get("allowzero", 0)
    dims = [x.shape[i] if d == 0 and not allowzero else d for i, d in enumerate(target)]
    return [x.reshape(dims)]


@reference("Flatten")
def flatten_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    x = _req(inputs, 0)
    axis = attrs.get("axis", 1)
    if axis < 0:
        axis += x.ndim
    outer = math.prod(x.shape[:axis])
    return [x.reshape(outer, math.prod(x.shape[axis:]))]


@reference("Squeeze")
def squeeze_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """Axes are an attribute before opset 13, an optional input after; none = all 1-dims."""
    x = _req(inputs, 0)
    raw = attrs.get("axes") if ctx.version < 13 else _arg(inputs, 1)
    if raw is None:
        axes = tuple(i for i, d in enumerate(x.shape) if d == 1)
    else:
        axes = tuple(_axis(a, x.ndim) for a in _ints(raw))
    return [np.squeeze(x, axis=axes)]


@reference("Unsqueeze")
def unsqueeze_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """Axes (attribute before opset 13) index the output, negatives from its end."""
    x = _req(inputs, 0)
    axes = _ints(attrs["axes"] if ctx.version < 13 else _req(inputs, 1))
    rank = x.ndim + len(axes)
    return [np.expand_dims(x, tuple(sorted(_axis(a, rank) for a in axes)))]


@reference("Transpose")
def transpose_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    x = _req(inputs, 0)
    perm = attrs.get("perm", list(range(x.ndim))[::-1])
    return [np.transpose(x, perm)]


@reference("Expand")
def expand_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """Bidirectional broadcast: a 1 in ``shape`` keeps the input's dim."""
    x = _req(inputs, 0)
    out_shape = np.broadcast_shapes(x.shape, tuple(_ints(_req(inputs, 1))))
    return [np.broadcast_to(x, out_shape).copy()]


@reference("Tile")
def tile_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """Opset 1 takes scalar ``tiles`` and ``axis`` inputs; later a ``repeats`` vector."""
    x = _req(inputs, 0)
    if ctx.version < 6:
        reps = [1] * x.ndim
        reps[_axis(_ints(_req(inputs, 2))[0], x.ndim)] = _ints(_req(inputs, 1))[0]
    else:
        reps = _ints(_req(inputs, 1))
    return [np.tile(x, reps)]


@reference("Concat")
def concat_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    parts = [a for a in inputs if a is not None]
    axis = _axis(attrs.get("axis", 1), parts[0].ndim)  # the default (1) exists only in opset 1
    return [np.concatenate(parts, axis=axis)]


@reference("Split")
def split_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """Sizes come from the ``split`` input (opsets 1, 13+) or attribute (1-12).

    Without sizes the axis is cut into ``num_outputs`` (attribute, opset 18) or
    as many parts as the node has outputs; from opset 18 the last part may be
    smaller (parts of ``ceil(dim / n)``).
    """
    x = _req(inputs, 0)
    axis = _axis(attrs.get("axis", 0), x.ndim)
    dim = x.shape[axis]
    raw = _arg(inputs, 1)
    if raw is None:
        raw = attrs.get("split")
    if raw is not None:
        sizes = _ints(raw)
    else:
        n = attrs.get("num_outputs", ctx.num_outputs)
        if "num_outputs" in attrs:
            chunk = -(-dim // n)
            sizes = [min(chunk, max(dim - i * chunk, 0)) for i in range(n)]
        else:
            if dim % n:
                raise ValueError(f"Split: dim {dim} does not divide into {n} equal parts")
            sizes = [dim // n] * n
    if sum(sizes) != dim:
        raise ValueError(f"Split: sizes {sizes} do not sum to {dim}")
    offsets = np.cumsum([0] + sizes)
    outs = []
    for begin, end in itertools.pairwise(offsets):
        index = [slice(None)] * x.ndim
        index[axis] = slice(int(begin), int(end))
        outs.append(x[tuple(index)])
    return outs


@reference("Slice")
def slice_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """Attributes ``starts/ends/axes`` before opset 10, inputs (with ``steps``) after.

    Negative starts/ends count from the end; they are then clamped to
    ``[0, dim]`` for positive steps and ``[-1, dim - 1]`` for negative ones.
    """
    x = _req(inputs, 0)
    if ctx.version < 10:
        starts, ends = list(attrs["starts"]), list(attrs["ends"])
        axes: list[int] | None = attrs.get("axes")
        steps: list[int] | None = None
    else:
        starts, ends = _ints(_req(inputs, 1)), _ints(_req(inputs, 2))
        raw_axes, raw_steps = _arg(inputs, 3), _arg(inputs, 4)
        axes = None if raw_axes is None else _ints(raw_axes)
        steps = None if raw_steps is None else _ints(raw_steps)
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    index = [slice(None)] * x.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps):
        if step == 0:
            raise ValueError("Slice: step must not be 0")
        axis = _axis(axis, x.ndim)
        dim = x.shape[axis]
        start = start + dim if start < 0 else start
        end = end + dim if end < 0 else end
        if step > 0:
            start, end = min(max(start, 0), dim), min(max(end, 0), dim)
        else:
            start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
        index[axis] = slice(start, end if end >= 0 else None, step)
    return [x[tuple(index)]]


# --------------------------------------------------------------------------- gather / scatter


@reference("Gather")
def gather_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    x, indices = _req(inputs, 0), _req(inputs, 1)
    axis = _axis(attrs.get("axis", 0), x.ndim)
    return [np.take(x, _wrap_indices(indices, x.shape[axis]), axis=axis)]


def _elements_index(indices: np.ndarray, axis: int, dim: int) -> tuple[np.ndarray, ...]:
    """Index tuple addressing ``data[..., indices[i], ...]`` at every position ``i``."""
    grids: list[np.ndarray] = list(np.indices(indices.shape, sparse=True))
    grids[axis] = _wrap_indices(indices, dim)
    return tuple(grids)


@reference("GatherElements")
def gather_elements_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    x, indices = _req(inputs, 0), _req(inputs, 1)
    axis = _axis(attrs.get("axis", 0), x.ndim)
    return [x[_elements_index(indices, axis, x.shape[axis])]]


@reference("GatherND")
def gather_nd_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """The first ``batch_dims`` dims of data and indices pair up; each index row
    of length ``k`` addresses a slice of the remaining data dims."""
    x, indices = _req(inputs, 0), np.asarray(_req(inputs, 1))
    b = attrs.get("batch_dims", 0)
    k = indices.shape[-1]
    batch = math.prod(x.shape[:b])
    data = x.reshape((batch,) + x.shape[b:])
    rows = _wrap_indices(indices.reshape(batch, -1, k), np.array(x.shape[b : b + k]))
    picked = data[(np.arange(batch)[:, None],) + tuple(rows[..., j] for j in range(k))]
    return [picked.reshape(indices.shape[:-1] + x.shape[b + k :])]


_SCATTER_UFUNCS = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}


def _scatter(out: np.ndarray, index: tuple[np.ndarray, ...], updates: np.ndarray, reduction: str) -> None:
    """Writes ``updates`` at ``index`` in place, combining duplicates by ``reduction``."""
    if reduction == "none":
        out[index] = updates
    elif reduction in _SCATTER_UFUNCS:
        _SCATTER_UFUNCS[reduction].at(out, index, updates)
    else:
        raise ValueError(f"unknown scatter reduction {reduction!r}")


@reference("ScatterElements", "Scatter")
def scatter_elements_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """Scatter (opsets 9-10) is ScatterElements without ``reduction``."""
    x, indices, updates = _req(inputs, 0), _req(inputs, 1), _req(inputs, 2)
    axis = _axis(attrs.get("axis", 0), x.ndim)
    out = x.copy()
    _scatter(out, _elements_index(indices, axis, x.shape[axis]), updates, attrs.get("reduction", "none"))
    return [out]


@reference("ScatterND")
def scatter_nd_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    x, indices, updates = _req(inputs, 0), np.asarray(_req(inputs, 1)), _req(inputs, 2)
    k = indices.shape[-1]
    rows = _wrap_indices(indices.reshape(-1, k), np.array(x.shape[:k]))
    out = x.copy()
    values = updates.reshape((rows.shape[0],) + x.shape[k:])
    _scatter(out, tuple(rows[:, j] for j in range(k)), values, attrs.get("reduction", "none"))
    return [out]


# --------------------------------------------------------------------------- padding and cropping


def _pad(x: np.ndarray, pads: list[tuple[int, int]], mode: str, value: Any) -> np.ndarray:
    """Pads (or, for negative amounts, crops) each axis by ``(begin, end)``.

    Crops are applied first, so reflect/edge/wrap see the cropped tensor.
    """
    crop = tuple(slice(max(-b, 0), d - max(-e, 0)) for (b, e), d in zip(pads, x.shape))
    x = x[crop]
    grow = [(max(b, 0), max(e, 0)) for b, e in pads]
    if not any(b or e for b, e in grow):
        return x.copy()
    if mode == "constant":
        shape = tuple(d + b + e for d, (b, e) in zip(x.shape, grow))
        out = np.full(shape, np.asarray(value).astype(x.dtype), dtype=x.dtype)
        out[tuple(slice(b, b + d) for d, (b, _) in zip(x.shape, grow))] = x
        return out
    if mode not in ("reflect", "edge", "wrap"):
        raise ValueError(f"Pad: unknown mode {mode!r}")
    return np.pad(x, grow, mode=mode)  # type: ignore[call-overload]  # mode checked above


@reference("Pad")
def pad_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """``paddings`` attr (opset 1), ``pads``/``value`` attrs (2-10), inputs (11+),
    optional ``axes`` input (18+).  Modes: constant, reflect, edge, wrap (19)."""
    x = _req(inputs, 0)
    mode = attrs.get("mode", "constant")
    axes = list(range(x.ndim))
    if ctx.version < 11:
        flat = list(attrs["paddings"] if ctx.version < 2 else attrs["pads"])
        value: Any = attrs.get("value", 0.0)
    else:
        flat = _ints(_req(inputs, 1))
        given = _arg(inputs, 2)
        if given is None or given.size == 0:
            value = "" if x.dtype == object else 0
        else:
            value = given.reshape(-1)[0]
        raw_axes = _arg(inputs, 3)
        if raw_axes is not None:
            axes = [_axis(a, x.ndim) for a in _ints(raw_axes)]
    n = len(axes)
    if len(flat) != 2 * n:
        raise ValueError(f"Pad: {len(flat)} pads for {n} axes")
    pads = [(0, 0)] * x.ndim
    for i, axis in enumerate(axes):
        pads[axis] = (flat[i], flat[i + n])
    return [_pad(x, pads, mode, value)]


@reference("CenterCropPad")
def center_crop_pad_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """Crops centred (start rounded down) or zero-pads centred (odd pixel on the right)."""
    x = _req(inputs, 0)
    target = _ints(_req(inputs, 1))
    axes = [_axis(a, x.ndim) for a in attrs.get("axes", range(x.ndim))]
    pads = [(0, 0)] * x.ndim
    for axis, size in zip(axes, target):
        diff = size - x.shape[axis]
        if diff < 0:
            begin = (-diff) // 2
            pads[axis] = (-begin, diff + begin)
        else:
            pads[axis] = (diff // 2, diff - diff // 2)
    return [_pad(x, pads, "constant", 0)]


# --------------------------------------------------------------------------- constants


@reference("Constant")
def constant_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """One of ``value`` (tensor), ``sparse_value``, ``value_float(s)`` (float32),
    ``value_int(s)`` (int64), ``value_string(s)`` (object strings)."""
    if "value" in attrs:
        return [np.asarray(attrs["value"])]
    if "sparse_value" in attrs:
        return [_densify(attrs["sparse_value"])]
    if "value_float" in attrs:
        return [np.array(attrs["value_float"], dtype=np.float32)]
    if "value_floats" in attrs:
        return [np.array(attrs["value_floats"], dtype=np.float32).reshape(-1)]
    if "value_int" in attrs:
        return [np.array(attrs["value_int"], dtype=np.int64)]
    if "value_ints" in attrs:
        return [np.array(attrs["value_ints"], dtype=np.int64).reshape(-1)]
    if "value_string" in attrs:
        return [np.array(attrs["value_string"], dtype=object)]
    if "value_strings" in attrs:
        out = np.empty(len(attrs["value_strings"]), dtype=object)
        out[:] = list(attrs["value_strings"])
        return [out]
    raise ValueError("Constant node has no value attribute")


def _densify(sparse: Any) -> np.ndarray:
    """A dense array from an ``onnx.SparseTensorProto`` (values + flat or N-D indices)."""
    if isinstance(sparse, np.ndarray):
        return sparse
    from onnx import numpy_helper

    values = numpy_helper.to_array(sparse.values)
    indices = numpy_helper.to_array(sparse.indices).astype(np.int64)
    dims = tuple(sparse.dims)
    out = np.zeros(math.prod(dims), dtype=values.dtype)
    if indices.ndim == 2:
        indices = np.ravel_multi_index(tuple(indices.T), dims)
    out[indices.reshape(-1)] = values.reshape(-1)
    return out.reshape(dims)


@reference("ConstantOfShape")
def constant_of_shape_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """Fills with ``value`` (a 1-element tensor, default float32 0)."""
    value = np.asarray(attrs.get("value", np.zeros(1, dtype=np.float32))).reshape(-1)
    return [np.full(tuple(_ints(_req(inputs, 0))), value[0], dtype=value.dtype)]


@reference("Range")
def range_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """``max(ceil((limit - start) / delta), 0)`` elements ``start + i * delta``."""
    start, limit, delta = (np.asarray(_req(inputs, i)).reshape(()) for i in range(3))
    dtype = start.dtype
    if dtype.kind in "iu":
        s, l, d = int(start), int(limit), int(delta)
        n = max(-((s - l) // d), 0)
        return [(s + np.arange(n, dtype=np.int64) * d).astype(dtype)]
    fs, fl, fd = float(start), float(limit), float(delta)
    n = max(math.ceil((fl - fs) / fd), 0)
    return [(fs + np.arange(n, dtype=np.float64) * fd).astype(dtype)]


@reference("EyeLike")
def eye_like_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """Ones on diagonal ``k`` of a 2-D tensor shaped like the input; ``dtype`` overrides."""
    x = _req(inputs, 0)
    dtype = _onnx_dtype(attrs["dtype"]) if "dtype" in attrs else x.dtype
    rows, cols = x.shape
    return [np.eye(rows, cols, k=attrs.get("k", 0), dtype=np.bool_).astype(dtype)]


@reference("OneHot")
def one_hot_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """A new ``depth`` axis at ``axis`` (default -1) holding ``values[1]`` at the
    index and ``values[0]`` elsewhere; negative indices wrap, others off range match nothing."""
    indices, depth, values = _req(inputs, 0), _req(inputs, 1), _req(inputs, 2)
    depth_n = int(np.asarray(depth).reshape(-1)[0])
    axis = _axis(attrs.get("axis", -1), indices.ndim + 1)
    idx = _wrap_indices(np.asarray(indices).astype(np.int64), depth_n)
    hot = idx[..., None] == np.arange(depth_n, dtype=np.int64)
    values = np.asarray(values).reshape(-1)
    out = np.where(hot, values[1:2], values[0:1])
    return [np.moveaxis(out, -1, axis)]


# --------------------------------------------------------------------------- selections


@reference("NonZero")
def non_zero_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """Indices of the non-zero elements as an int64 ``[rank, count]`` tensor."""
    x = np.asarray(_req(inputs, 0))
    if x.ndim == 0:
        return [np.zeros((0, int(bool(x))), dtype=np.int64)]
    return [np.array(np.nonzero(x.astype(np.bool_)), dtype=np.int64).reshape(x.ndim, -1)]


@reference("Compress")
def compress_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """Keeps slices where ``condition`` is true; without ``axis`` the input is flattened."""
    x, cond = _req(inputs, 0), np.asarray(_req(inputs, 1)).astype(np.bool_).reshape(-1)
    if "axis" not in attrs:
        return [np.compress(cond, x.reshape(-1))]
    return [np.compress(cond, x, axis=_axis(attrs["axis"], x.ndim))]


@reference("Unique")
def unique_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """Outputs ``Y, indices (first occurrence), inverse_indices, counts``.

    With ``sorted=0`` the unique values keep the order of their first occurrence.
    Without ``axis`` the input is flattened; with it, whole slices are compared.
    """
    x = _req(inputs, 0)
    axis = attrs.get("axis")
    if axis is None:
        data, axis_n = x.reshape(-1), 0
    else:
        data, axis_n = x, _axis(axis, x.ndim)
    uniq, first, inverse, counts = np.unique(
        data,
        return_index=True,
        return_inverse=True,
        return_counts=True,
        axis=None if axis is None else axis_n,
    )
    inverse = inverse.reshape(-1)
    if not attrs.get("sorted", 1):
        order = np.argsort(first, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        uniq = np.take(uniq, order, axis=axis_n)
        first, counts, inverse = first[order], counts[order], rank[inverse]
    outs = [uniq, first.astype(np.int64), inverse.astype(np.int64), counts.astype(np.int64)]
    return outs[: max(ctx.num_outputs, 1)]


# --------------------------------------------------------------------------- rearrangements


@reference("DepthToSpace")
def depth_to_space_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """``DCR`` (default) splits channels as (bh, bw, c), ``CRD`` as (c, bh, bw)."""
    x = _req(inputs, 0)
    b = attrs["blocksize"]
    n, c, h, w = x.shape
    if attrs.get("mode", "DCR") == "CRD":
        tmp = x.reshape(n, c // (b * b), b, b, h, w).transpose(0, 1, 4, 2, 5, 3)
    else:
        tmp = x.reshape(n, b, b, c // (b * b), h, w).transpose(0, 3, 4, 1, 5, 2)
    return [tmp.reshape(n, c // (b * b), h * b, w * b)]


@reference("SpaceToDepth")
def space_to_depth_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """Inverse of DepthToSpace; ``mode`` (opset 28, default ``DCR``) orders the channels."""
    x = _req(inputs, 0)
    b = attrs["blocksize"]
    n, c, h, w = x.shape
    tmp = x.reshape(n, c, h // b, b, w // b, b)
    if attrs.get("mode", "DCR") == "CRD":
        tmp = tmp.transpose(0, 1, 3, 5, 2, 4)
    else:
        tmp = tmp.transpose(0, 3, 5, 1, 2, 4)
    return [tmp.reshape(n, c * b * b, h // b, w // b)]


@reference("ReverseSequence")
def reverse_sequence_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """Reverses the first ``sequence_lens[b]`` steps along ``time_axis`` (default 0)
    of each batch entry ``b`` along ``batch_axis`` (default 1)."""
    x, lens = _req(inputs, 0), np.asarray(_req(inputs, 1)).astype(np.int64)
    batch_axis, time_axis = attrs.get("batch_axis", 1), attrs.get("time_axis", 0)
    moved = np.moveaxis(x, (batch_axis, time_axis), (0, 1))
    steps = np.arange(moved.shape[1], dtype=np.int64)[None, :]
    source = np.where(steps < lens[:, None], lens[:, None] - 1 - steps, steps)
    out = moved[np.arange(moved.shape[0])[:, None], source]
    return [np.ascontiguousarray(np.moveaxis(out, (0, 1), (batch_axis, time_axis)))]


@reference("Dropout")
def dropout_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """Inference Dropout: ``output = data``, ``mask`` all true.

    From opset 12 ``ratio`` and ``training_mode`` are inputs; training with a
    non-zero ratio is random and raises ``NotImplementedError`` (not foldable).
    Before opset 12 the op is taken as inference (what runtimes do).  The mask
    is bool from opset 10, the data's type before.
    """
    x = _req(inputs, 0)
    if ctx.version >= 12:
        training = _arg(inputs, 2)
        ratio = _arg(inputs, 1)
        ratio_v = 0.5 if ratio is None else float(np.asarray(ratio).reshape(-1)[0])
        if training is not None and bool(np.asarray(training).reshape(-1)[0]) and ratio_v != 0.0:
            raise NotImplementedError("Dropout in training mode with a non-zero ratio is random")
    outs = [x.copy()]
    if ctx.num_outputs > 1:
        mask_dtype = np.bool_ if ctx.version >= 10 else x.dtype
        outs.append(np.ones(x.shape, dtype=mask_dtype))
    return outs
