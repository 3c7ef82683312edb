"""Numpy reference of DeformConv: a float convolution whose kernel taps read
the input at learned, fractional offsets (deformable convolution v1/v2).

Computed in float32 (float64 stays float64) and cast back to the input's dtype.
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
    return inputs[i] if i < len(inputs) else None


def _req(inputs: Inputs, i: int) -> np.ndarray:
    a = _arg(inputs, i)
    if a is None:
        raise ValueError(f"required input {i} is missing")
    return a


# --------------------------------------------------------------------------- DeformConv


def _bilinear(x: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Samples ``x`` ``(N, C, *in)`` at ``pos`` ``(N, C, *rest, nd)`` with N-linear
    interpolation; neighbours outside the input count as zero."""
    n, c = x.shape[:2]
    size = x.shape[2:]
    nd = len(size)
    base = np.floor(pos)
    frac = pos - base
    base = base.astype(np.int64)
    lead = (slice(None), None) + (None,) * (pos.ndim - 3)
    n_idx = np.arange(n)[lead]
    c_idx = np.arange(c)[(None, slice(None)) + (None,) * (pos.ndim - 3)]
    out = np.zeros(pos.shape[:-1], dtype=x.dtype)
    for corner in itertools.product((0, 1), repeat=nd):
        weight = np.ones(pos.shape[:-1], dtype=x.dtype)
        valid = np.ones(pos.shape[:-1], dtype=bool)
        index = []
        for d, bit in enumerate(corner):
            i = base[..., d] + bit
            weight = weight * (frac[..., d] if bit else 1 - frac[..., d])
            valid &= (i >= 0) & (i < size[d])
            index.append(np.clip(i, 0, size[d] - 1))
        values = x[(n_idx, c_idx, *index)]
        out += np.where(valid, weight * values, 0)
    return out


@reference("DeformConv")
def deform_conv_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """Deformable convolution (v2 with a mask).

    Kernel tap ``k`` of output position ``o`` reads the input at
    ``o * stride - pad_begin + k * dilation + offset`` (the offsets for each
    offset group, tap and spatial axis come from ``offset``), interpolated
    N-linearly with zeros outside the input, scaled by ``mask``; the taps are
    then combined with ``W`` as in a grouped convolution, plus ``B``.
    """
    x, w, offset = _req(inputs, 0), _req(inputs, 1), _req(inputs, 2)
    bias, mask = _arg(inputs, 3), _arg(inputs, 4)
    dtype = x.dtype
    cdt = np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)
    xc, wc = x.astype(cdt), w.astype(cdt)
    kernel = list(attrs.get("kernel_shape") or w.shape[2:])
    nd = len(kernel)
    strides = attrs.get("strides") or [1] * nd
    dilations = attrs.get("dilations") or [1] * nd
    pads = attrs.get("pads") or [0] * (2 * nd)
    group, offset_group = attrs.get("group", 1), attrs.get("offset_group", 1)
    n, c = x.shape[:2]
    out = [
        (x.shape[2 + d] + pads[d] + pads[d + nd] - (kernel[d] - 1) * dilations[d] - 1) // strides[d] + 1
        for d in range(nd)
    ]
    taps = math.prod(kernel)
    # Regular sampling grid: (K, *out, nd).
    grid = np.zeros([taps, *out, nd], dtype=cdt)
    for t, tap in enumerate(itertools.product(*(range(k) for k in kernel))):
        for d in range(nd):
            shape = [1] * nd
            shape[d] = out[d]
            coord = np.arange(out[d]) * strides[d] - pads[d] + tap[d] * dilations[d]
            grid[(t, ..., d)] = coord.reshape(shape)
    # offset: (N, G*K*nd, *out) -> (N, G, K, *out, nd)
    off = offset.astype(cdt).reshape([n, offset_group, taps, nd, *out])
    off = np.moveaxis(off, 3, -1)
    pos = grid[None, None] + off  # (N, G, K, *out, nd)
    per_channel = np.repeat(pos, c // offset_group, axis=1)  # (N, C, K, *out, nd)
    cols = _bilinear(xc, per_channel)  # (N, C, K, *out)
    if mask is not None:
        m = mask.astype(cdt).reshape([n, offset_group, taps, *out])
        cols = cols * np.repeat(m, c // offset_group, axis=1)
    m_out = w.shape[0]
    cg, mg = c // group, m_out // group
    cols = cols.reshape([n, group, cg * taps, math.prod(out)])
    wmat = wc.reshape(group, mg, cg * taps)
    y = np.matmul(wmat[None], cols).reshape([n, m_out, *out])
    if bias is not None:
        y = y + bias.astype(cdt).reshape((1, -1) + (1,) * nd)
    return [y.astype(dtype)]
