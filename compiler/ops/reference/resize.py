"""Numpy references of ONNX resampling ops: Resize, Upsample, GridSample, AffineGrid, RoiAlign.

Resize is separable: each resized axis gets an ``(out, in)`` weight matrix (a
one-hot selection for ``nearest``; linear, cubic or antialiased filter taps
otherwise) that is contracted with the data along that axis.  Applying the
axes one after the other equals the N-linear / N-cubic tensor-product
interpolation ONNX specifies.

Floats are computed in float32 (float64 stays float64) or, for sampling
coordinates, float64, and cast back to the input's dtype.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
from kiln.ops.reference._registry import RefContext, reference

Inputs = list["np.ndarray | None"]
Attrs = dict[str, Any]


def _arg(inputs: Inputs, i: int) -> np.ndarray | None:
    """The ``i``-th input; ``None`` when omitted, past the end, or empty (opset 11 placeholders)."""
    a = inputs[i] if i < len(inputs) else None
    return None if a is None or a.size == 0 else a


def _req(inputs: Inputs, i: int) -> np.ndarray:
    """The ``i``-th input, which the op requires."""
    a = inputs[i] if i < len(inputs) else None
    if a is None:
        raise ValueError(f"required input {i} is missing")
    return a


def _compute_dtype(dtype: np.dtype) -> np.dtype:
    return np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)


def _cast_back(y: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Casts a float result to ``dtype``, rounding and saturating for integers."""
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(np.rint(y), info.min, info.max).astype(dtype)
    return y.astype(dtype)


def _cubic(t: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution kernel with coefficient ``a``."""
    t = np.abs(t)
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


def _linear(t: np.ndarray) -> np.ndarray:
    return np.maximum(0.0, 1.0 - np.abs(t))


# --------------------------------------------------------------------------- Resize


def _source_coords(
    out_len: int, in_len: int, scale: float, extent: float, mode: str, roi: tuple[float, float]
) -> np.ndarray:
    """Maps output positions to (fractional) input positions along one axis.

    Computed in float32 in the order runtimes use, so that positions landing
    exactly on a rounding tie (nearest mode) round the same way.  ``extent`` is
    the resized length before flooring (``in * scale`` when scales are given):
    ONNX's align_corners divides by ``extent - 1``, not ``out_len - 1`` (as
    onnxruntime does; the two differ only when ``in * scale`` is fractional).
    """
    f = np.float32
    x = np.arange(out_len, dtype=f)
    s, n_in, half = f(scale), f(in_len), f(0.5)
    if mode == "half_pixel":
        return (x + half) / s - half
    if mode == "half_pixel_symmetric":
        adjustment = f(out_len) / (s * n_in)
        offset = n_in / f(2) * (f(1) - adjustment)
        return offset + (x + half) / s - half
    if mode == "pytorch_half_pixel":
        return (x + half) / s - half if out_len > 1 else np.zeros_like(x)
    if mode == "align_corners":
        return x * (n_in - f(1)) / (f(extent) - f(1)) if extent != 1 else np.zeros_like(x)
    if mode == "asymmetric":
        return x / s
    if mode == "tf_half_pixel_for_nn":
        return (x + half) / s
    if mode == "tf_crop_and_resize":
        start, end = f(roi[0]), f(roi[1])
        if out_len > 1:
            return start * (n_in - f(1)) + x * (end - start) * (n_in - f(1)) / f(out_len - 1)
        return np.full_like(x, half * (start + end) * (n_in - f(1)))
    raise ValueError(f"Resize: unknown coordinate_transformation_mode {mode!r}")


def _nearest_index(coords: np.ndarray, rule: str, in_len: int, scale: float) -> np.ndarray:
    """Rounds source positions to input indices, clamped into range.

    ``simple`` is the pre-opset-11 rule (as onnxruntime applies it): truncate
    when upsampling, round up when downsampling.
    """
    if rule == "round_prefer_floor":
        idx = np.ceil(coords - 0.5)
    elif rule == "round_prefer_ceil":
        idx = np.floor(coords + 0.5)
    elif rule == "floor":
        idx = np.floor(coords)
    elif rule == "ceil":
        idx = np.ceil(coords)
    elif rule == "simple":
        idx = np.ceil(coords) if scale < 1 else np.trunc(coords)
    else:
        raise ValueError(f"Resize: unknown nearest_mode {rule!r}")
    return np.clip(idx, 0, in_len - 1).astype(np.int64)


def _filter_matrix(
    coords: np.ndarray,
    in_len: int,
    mode: str,
    scale: float,
    cubic_a: float,
    exclude_outside: bool,
    antialias: bool,
) -> np.ndarray:
    """``(out, in)`` interpolation weights for linear or cubic resampling.

    With ``antialias`` and a downscale the filter is stretched by ``1 / scale``
    so more inputs contribute.  Taps past the edges reuse the edge pixel, or
    get weight 0 with ``exclude_outside``; each row is normalised to sum 1.
    """
    stretch = min(scale, 1.0) if antialias else 1.0
    support = (1.0 if mode == "linear" else 2.0) / stretch
    reach = math.ceil(support)
    taps = np.floor(coords)[:, None] + np.arange(-reach + 1, reach + 1)[None, :]
    dist = (taps - coords[:, None]) * stretch
    weights = _linear(dist) if mode == "linear" else _cubic(dist, cubic_a)
    if exclude_outside:
        weights = np.where((taps < 0) | (taps > in_len - 1), 0.0, weights)
    total = weights.sum(axis=1, keepdims=True)
    weights = weights / np.where(total == 0, 1.0, total)
    matrix = np.zeros((coords.size, in_len), dtype=np.float64)
    rows = np.broadcast_to(np.arange(coords.size)[:, None], taps.shape)
    np.add.at(matrix, (rows, np.clip(taps, 0, in_len - 1).astype(np.int64)), weights)
    return matrix


def _resize(
    x: np.ndarray,
    out_shape: list[int],
    scales: list[float],
    extents: list[float],
    roi: list[tuple[float, float]],
    attrs: Attrs,
    legacy: bool,
) -> np.ndarray:
    """Resamples every axis whose size or scale changes (all axes for tf_crop_and_resize)."""
    mode = attrs.get("mode", "nearest")
    ctm = "asymmetric" if legacy else attrs.get("coordinate_transformation_mode", "half_pixel")
    rule = "simple" if legacy else attrs.get("nearest_mode", "round_prefer_floor")
    cubic_a = float(attrs.get("cubic_coeff_a", -0.75))
    exclude = bool(attrs.get("exclude_outside", 0))
    antialias = bool(attrs.get("antialias", 0))
    if mode not in ("nearest", "linear", "cubic"):
        raise ValueError(f"Resize: unknown mode {mode!r}")
    y = x if mode == "nearest" else x.astype(_compute_dtype(x.dtype))
    outside: list[tuple[int, np.ndarray]] = []
    for axis, (in_len, out_len) in enumerate(zip(x.shape, out_shape)):
        if ctm != "tf_crop_and_resize" and in_len == out_len and scales[axis] == 1.0:
            continue
        coords = _source_coords(out_len, in_len, scales[axis], extents[axis], ctm, roi[axis]).astype(
            np.float64
        )
        if ctm == "tf_crop_and_resize":
            outside.append((axis, (coords < 0) | (coords > in_len - 1)))
        if mode == "nearest":
            y = np.take(y, _nearest_index(coords, rule, in_len, scales[axis]), axis=axis)
        else:
            matrix = _filter_matrix(coords, in_len, mode, scales[axis], cubic_a, exclude, antialias)
            y = np.moveaxis(np.tensordot(matrix.astype(y.dtype), y, axes=([1], [axis])), 0, axis)
    if outside:
        y = y.copy()
        fill = np.asarray(attrs.get("extrapolation_value", 0.0)).astype(y.dtype)
        for axis, mask in outside:
            index: list[Any] = [slice(None)] * y.ndim
            index[axis] = mask
            y[tuple(index)] = fill
    return _cast_back(y, x.dtype) if mode != "nearest" else np.ascontiguousarray(y)


def _scaled_size(in_len: int, scale: float) -> int:
    """``floor(in * scale)``, the product taken in float32 as runtimes do."""
    return int(np.floor(np.float32(in_len) * np.float32(scale)))


@reference("Resize")
def resize_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """Opset 10: ``(X, scales)``, asymmetric coordinates, nearest/linear.
    Opset 11+: ``(X, roi, scales, sizes)`` with coordinate modes and cubic;
    opset 18 adds ``axes``, ``antialias`` and ``keep_aspect_ratio_policy``.

    Sizes from scales are ``floor(in * scale)`` (times the roi extent for
    tf_crop_and_resize); with ``sizes`` the scale is ``out / in``, or with a
    ``keep_aspect_ratio_policy`` the one scale shared by the resized axes.
    """
    x = _req(inputs, 0)
    rank = x.ndim
    if ctx.version < 11:
        scales = [float(s) for s in np.asarray(_req(inputs, 1)).astype(np.float32).reshape(-1)]
        out = [_scaled_size(d, s) for d, s in zip(x.shape, scales)]
        extents = [d * s for d, s in zip(x.shape, scales)]
        return [_resize(x, out, scales, extents, [(0.0, 1.0)] * rank, attrs, legacy=True)]
    roi_in, scales_in, sizes_in = _arg(inputs, 1), _arg(inputs, 2), _arg(inputs, 3)
    axes = [a + rank if a < 0 else a for a in attrs.get("axes", range(rank))]
    roi = [(0.0, 1.0)] * rank
    ctm = attrs.get("coordinate_transformation_mode", "half_pixel")
    if roi_in is not None and ctm == "tf_crop_and_resize":
        flat = [float(v) for v in np.asarray(roi_in).reshape(-1)]
        for i, axis in enumerate(axes):
            roi[axis] = (flat[i], flat[i + len(axes)])
    out = list(x.shape)
    scales = [1.0] * rank
    extents = [float(d) for d in x.shape]
    if sizes_in is not None:
        sizes = [int(v) for v in np.asarray(sizes_in).reshape(-1)]
        policy = attrs.get("keep_aspect_ratio_policy", "stretch")
        common: float | None = None
        if policy != "stretch":
            ratios = [float(np.float32(sizes[i]) / np.float32(x.shape[axis])) for i, axis in enumerate(axes)]
            common = min(ratios) if policy == "not_larger" else max(ratios)
            sizes = [math.floor(common * x.shape[axis] + 0.5) for axis in axes]
        for i, axis in enumerate(axes):
            out[axis] = sizes[i]
            extents[axis] = float(sizes[i])
            if common is not None:  # the shared scale, as onnxruntime uses it
                scales[axis] = common
            elif x.shape[axis]:
                scales[axis] = float(np.float32(sizes[i]) / np.float32(x.shape[axis]))
    elif scales_in is not None:
        given = np.asarray(scales_in).astype(np.float32).reshape(-1)
        for i, axis in enumerate(axes):
            scales[axis] = float(given[i])
            crop = roi[axis][1] - roi[axis][0] if ctm == "tf_crop_and_resize" else 1.0
            out[axis] = _scaled_size(x.shape[axis], float(given[i]) * crop)
            extents[axis] = x.shape[axis] * float(given[i])
    else:
        raise ValueError("Resize needs scales or sizes")
    return [_resize(x, out, scales, extents, roi, attrs, legacy=False)]


@reference("Upsample")
def upsample_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """``scales`` is an attribute (opset 7) or input (opset 9); coordinates are
    asymmetric; output size ``floor(in * scale)``."""
    x = _req(inputs, 0)
    raw = attrs["scales"] if ctx.version < 9 else _req(inputs, 1)
    scales = [float(s) for s in np.asarray(raw, dtype=np.float32).reshape(-1)]
    out = [_scaled_size(d, s) for d, s in zip(x.shape, scales)]
    extents = [d * s for d, s in zip(x.shape, scales)]
    return [_resize(x, out, scales, extents, [(0.0, 1.0)] * x.ndim, attrs, legacy=True)]


# --------------------------------------------------------------------------- GridSample / AffineGrid


def _reflect(coords: np.ndarray, low: float, high: float) -> np.ndarray:
    """Reflects coordinates into ``[low, high]`` as many times as needed."""
    span = high - low
    if span <= 0:
        return np.zeros_like(coords)
    shifted = np.abs(coords - low)
    period = np.floor(shifted / span)
    rest = shifted - period * span
    return np.where(period % 2 == 0, low + rest, high - rest)


@reference("GridSample")
def grid_sample_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """Samples ``X`` ``(N, C, *in)`` at the normalised ``grid`` ``(N, *out, nd)``
    positions, whose last dim is ordered (x, y, z) = innermost axis first.

    ``align_corners`` maps -1/1 to the centres (else the outer edges) of the
    corner pixels.  Modes linear/nearest/cubic (opset 16 names bilinear/bicubic);
    ``padding_mode`` zeros, border (clamp) or reflection (mirror at the edges).
    Linear and nearest pad the sampling position; cubic pads each of its 4
    taps instead.  Nearest rounds half to even; cubic uses ``a = -0.75``.
    """
    x, grid = _req(inputs, 0), _req(inputs, 1)
    mode = {"bilinear": "linear", "bicubic": "cubic"}.get(
        attrs.get("mode", "linear"), attrs.get("mode", "linear")
    )
    padding = attrs.get("padding_mode", "zeros")
    align = bool(attrs.get("align_corners", 0))
    n, c = x.shape[:2]
    spatial = x.shape[2:]
    nd = len(spatial)
    out_sp = grid.shape[1:-1]
    cdt = _compute_dtype(x.dtype)
    g = grid.astype(np.float64)

    def fix_index(idx: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Integer taps -> (in-range index, validity) under the padding mode."""
        if padding == "zeros":
            return np.clip(idx, 0, size - 1), (idx >= 0) & (idx <= size - 1)
        if padding == "reflection":
            low, high = (0.0, size - 1.0) if align else (-0.5, size - 0.5)
            idx = _reflect(idx, low, high)
        return np.clip(idx, 0, size - 1), np.ones(idx.shape, dtype=bool)

    taps_per_dim = []  # per spatial dim: list of (index, weight) arrays of shape (N, *out)
    for i, size in enumerate(spatial):
        norm = g[..., nd - 1 - i]
        pos = (norm + 1) / 2 * (size - 1) if align else ((norm + 1) * size - 1) / 2
        if mode == "cubic":
            pass  # cubic keeps the raw position; only its taps are padded (below)
        elif padding == "border":
            pos = np.clip(pos, 0, size - 1)
        elif padding == "reflection":
            low, high = (0.0, size - 1.0) if align else (-0.5, size - 0.5)
            pos = np.clip(_reflect(pos, low, high), 0, size - 1)
        if mode == "nearest":
            taps = [(np.rint(pos), np.ones_like(pos))]
        elif mode == "linear":
            base = np.floor(pos)
            frac = pos - base
            taps = [(base, 1 - frac), (base + 1, frac)]
        elif mode == "cubic":
            base = np.floor(pos)
            taps = [(base + k, _cubic(base + k - pos, -0.75)) for k in (-1, 0, 1, 2)]
        else:
            raise ValueError(f"GridSample: unknown mode {mode!r}")
        taps_per_dim.append([(*fix_index(t, size), w) for t, w in taps])

    xc = x.astype(cdt)
    batch = np.arange(n).reshape((n,) + (1,) * len(out_sp))
    y = np.zeros((n,) + tuple(out_sp) + (c,), dtype=np.float64)
    for combo in itertools.product(*taps_per_dim):
        weight = np.ones(g.shape[:-1], dtype=np.float64)
        index: list[np.ndarray] = [batch]
        for idx, valid, w in combo:
            weight = weight * w * valid
            index.append(np.rint(idx).astype(np.int64))
        gathered = xc[(index[0], slice(None)) + tuple(index[1:])]  # (N, *out, C)
        y += gathered * weight[..., None]
    return [_cast_back(np.moveaxis(y, -1, 1), x.dtype)]


@reference("AffineGrid")
def affine_grid_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """Grid ``(N, *size[2:], nd)`` of ``theta @ [x, y, (z), 1]`` over normalised
    pixel coordinates (pixel centres, or corners-to-corners with ``align_corners``)."""
    theta, size = _req(inputs, 0), [int(v) for v in np.asarray(_req(inputs, 1)).reshape(-1)]
    align = bool(attrs.get("align_corners", 0))
    spatial = size[2:]
    nd = len(spatial)
    axes_coords = []
    for length in spatial:
        i = np.arange(length, dtype=np.float64)
        if align:
            axes_coords.append(i * 2 / (length - 1) - 1 if length > 1 else np.zeros(1))
        else:
            axes_coords.append((2 * i + 1) / length - 1)
    mesh = np.meshgrid(*axes_coords, indexing="ij")  # outermost spatial axis first
    base = np.stack(list(reversed(mesh)) + [np.ones(spatial)], axis=-1)  # (*spatial, nd + 1) as (x, y, z, 1)
    cdt = _compute_dtype(theta.dtype)
    grid = np.einsum("...k,njk->n...j", base.astype(cdt), theta.astype(cdt))
    return [grid.reshape((theta.shape[0],) + tuple(spatial) + (nd,)).astype(theta.dtype)]


# --------------------------------------------------------------------------- RoiAlign


def _roi_taps(start: float, bin_size: float, bins: int, grid: int, size: int) -> tuple[np.ndarray, ...]:
    """Bilinear taps of the ``bins * grid`` sample points along one axis.

    Follows onnxruntime: a sample below -1 or beyond ``size`` contributes
    nothing; others are clamped to 0 and to the last pixel.  Returns
    (low index, high index, low weight, high weight), each ``(bins, grid)``.
    """
    pos = start + np.arange(bins)[:, None] * bin_size + (np.arange(grid)[None, :] + 0.5) * bin_size / grid
    valid = (pos >= -1.0) & (pos <= size)
    pos = np.maximum(pos, 0.0)
    low = np.floor(pos).astype(np.int64)
    at_end = low >= size - 1
    low = np.where(at_end, size - 1, low)
    high = np.where(at_end, size - 1, low + 1)
    pos = np.where(at_end, low, pos)
    frac = pos - low
    return low, high, (1 - frac) * valid, frac * valid


@reference("RoiAlign")
def roi_align_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """Pools each ROI ``[x1, y1, x2, y2]`` (scaled by ``spatial_scale``) into an
    ``output_height x output_width`` grid of bins, each sampling
    ``sampling_ratio`` (or ``ceil(roi / bins)``) bilinear points per axis.

    ``half_pixel`` (opset 16 default) shifts the ROI by -0.5; the older
    ``output_half_pixel`` does not but makes the ROI at least 1x1.  ``max``
    mode takes, as onnxruntime does, the largest weighted corner term.
    """
    x, rois, batch_indices = _req(inputs, 0), _req(inputs, 1), _req(inputs, 2)
    mode = attrs.get("mode", "avg")
    out_h, out_w = attrs.get("output_height", 1), attrs.get("output_width", 1)
    ratio = attrs.get("sampling_ratio", 0)
    scale = attrs.get("spatial_scale", 1.0)
    default_ctm = "half_pixel" if ctx.version >= 16 else "output_half_pixel"
    half_pixel = attrs.get("coordinate_transformation_mode", default_ctm) == "half_pixel"
    offset = 0.5 if half_pixel else 0.0
    _n, c, height, width = x.shape
    xc = x.astype(np.float64)
    y = np.zeros((rois.shape[0], c, out_h, out_w), dtype=np.float64)
    for r in range(rois.shape[0]):
        x1, y1, x2, y2 = (float(v) * scale - offset for v in rois[r])
        roi_w, roi_h = x2 - x1, y2 - y1
        if not half_pixel:
            roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
        grid_h = ratio if ratio > 0 else math.ceil(roi_h / out_h)
        grid_w = ratio if ratio > 0 else math.ceil(roi_w / out_w)
        ylo, yhi, wylo, wyhi = _roi_taps(y1, roi_h / out_h, out_h, grid_h, height)
        xlo, xhi, wxlo, wxhi = _roi_taps(x1, roi_w / out_w, out_w, grid_w, width)
        image = xc[int(batch_indices[r])]
        if mode == "avg":
            rows = np.zeros((out_h, height))
            cols = np.zeros((out_w, width))
            bins_h = np.broadcast_to(np.arange(out_h)[:, None], ylo.shape)
            bins_w = np.broadcast_to(np.arange(out_w)[:, None], xlo.shape)
            np.add.at(rows, (bins_h, ylo), wylo / grid_h)
            np.add.at(rows, (bins_h, yhi), wyhi / grid_h)
            np.add.at(cols, (bins_w, xlo), wxlo / grid_w)
            np.add.at(cols, (bins_w, xhi), wxhi / grid_w)
            y[r] = np.einsum("ph,chw,qw->cpq", rows, image, cols)
        elif mode == "max":
            # One (C, out_h, grid_h, out_w, grid_w) term per bilinear corner.
            terms = [
                image[:, yi[:, :, None, None], xi[None, None, :, :]]
                * (wy[:, :, None, None] * wx[None, None, :, :])
                for yi, wy in ((ylo, wylo), (yhi, wyhi))
                for xi, wx in ((xlo, wxlo), (xhi, wxhi))
            ]
            y[r] = np.maximum.reduce(terms).max(axis=(2, 4))
        else:
            raise ValueError(f"RoiAlign: unknown mode {mode!r}")
    return [y.astype(x.dtype)]
