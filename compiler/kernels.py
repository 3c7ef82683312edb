"""Numeric kernels: the Cython build (``kiln._kernels``) or its numpy twin.

Every kernel has the same signature in both forms, and the tests check they
agree.  ``KILN_NO_KERNELS=1`` forces the numpy fallback (for those tests, and
for platforms where the extension did not build).
"""

from __future__ import annotations

import math
import os
import threading

import numpy as np


def _numpy_per_channel_absmax(array: np.ndarray, axis: int = 0) -> np.ndarray:
    """Max |x| over every axis but ``axis``, as float64 (NaN propagates)."""
    arr = np.asarray(array)
    if arr.ndim == 0:
        return np.array([abs(float(arr))], dtype=np.float64)
    moved = np.moveaxis(arr, axis, 0).reshape(arr.shape[axis], -1).astype(np.float64)
    if moved.shape[1] == 0:
        return np.zeros(moved.shape[0], dtype=np.float64)
    return np.max(np.abs(moved), axis=1)


def _load_native():  # type: ignore[no-untyped-def]
    if os.environ.get("KILN_NO_KERNELS"):
        return None
    try:
        from kiln import _kernels
    except ImportError:
        return None
    return _kernels


_native = _load_native()

NATIVE = _native is not None
"""Whether the Cython kernels are in use."""


def per_channel_absmax(array: np.ndarray, axis: int = 0) -> np.ndarray:
    """Max |x| per slice along ``axis`` (weights: per output channel), float64."""
    arr = np.asarray(array)
    if _native is not None and arr.dtype.kind in "fiu" and arr.dtype.itemsize <= 8:
        return _native.per_channel_absmax(arr, axis)
    return _numpy_per_channel_absmax(arr, axis)


# --------------------------------------------------------------------------- calibration kernels


def _flat_real(x: np.ndarray) -> np.ndarray:
    """``x`` as a contiguous 1-D float32 or float64 array (float16/bfloat16/ints widened)."""
    arr = np.asarray(x)
    if arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float64 if arr.dtype.kind in "iu" and arr.dtype.itemsize >= 4 else np.float32)
    return np.ascontiguousarray(arr).reshape(-1)


def _numpy_array_stats(x: np.ndarray) -> tuple[float, float, float, int, int]:
    flat = _flat_real(x)
    finite = flat[np.isfinite(flat)]
    bad = int(flat.size - finite.size)
    if finite.size == 0:
        return float("inf"), float("-inf"), 0.0, 0, bad
    lo, hi = float(finite.min()), float(finite.max())
    return lo, hi, max(abs(lo), abs(hi)), int(finite.size), bad


def _numpy_hist_add(hist: np.ndarray, x: np.ndarray, exponent: int, used: int = 0) -> None:
    flat = _flat_real(x)
    mag = np.abs(flat[np.isfinite(flat)]).astype(np.float64)
    # Clamped before the cast: a product past int64's range would wrap around.
    bins = np.floor(np.minimum(mag * np.ldexp(1.0, -exponent), hist.shape[0] - 1)).astype(np.int64)
    counts = np.bincount(bins)  # as long as the highest bin reached (``used`` is only a hint here)
    hist[: counts.size] += counts


def _numpy_hist_coarsen(hist: np.ndarray, shift: int) -> None:
    if shift <= 0:
        return
    n = hist.shape[0]
    if shift >= 62 or (1 << shift) >= n:
        total = hist.sum()
        hist[:] = 0
        hist[0] = total
        return
    group = 1 << shift
    merged = hist[: (n // group) * group].reshape(-1, group).sum(axis=1)
    hist[:] = 0
    hist[: merged.size] = merged


KL_NOISE = 1e-12
"""KL >= 0: a divergence below this is rounding noise (Q equal to P) and reads as exactly 0 in both twins,
so ties break the same way (the first such candidate wins)."""


def _smooth(d: np.ndarray, eps: float) -> np.ndarray:
    zeros = d == 0
    nz = d.size - int(zeros.sum())
    eps1 = eps * (d.size - nz) / nz
    return np.where(zeros, d + eps, d - eps1)


def _numpy_kl_divergences(hist: np.ndarray, num_levels: int = 128, start: int = 128) -> np.ndarray:
    h = np.ascontiguousarray(hist, dtype=np.float64)
    n = h.shape[0]
    if start < 1 or num_levels < 1 or start < num_levels:
        raise ValueError("need 1 <= num_levels <= start")
    if n < start:
        return np.zeros(0, dtype=np.float64)
    suffix = np.concatenate([np.cumsum(h[::-1])[::-1], [0.0]])
    total = suffix[0]
    out = np.empty(n - start + 1, dtype=np.float64)
    eps = 1e-4
    for i in range(start, n + 1):
        p = h[:i].copy()
        p[i - 1] += suffix[i]
        level = (np.arange(i) * num_levels) // i
        nonzero = p != 0
        qsum = np.bincount(level, weights=h[:i], minlength=num_levels)
        nz = np.bincount(level, weights=nonzero, minlength=num_levels)
        qval = np.divide(qsum, nz, out=np.zeros(num_levels), where=nz > 0)
        q = np.where(nonzero, qval[level], 0.0)
        nzp = int(nonzero.sum())
        nzq = int((q != 0).sum())
        if nzp == 0 or nzq == 0:
            out[i - start] = np.inf
            continue
        ps = _smooth(p, eps)
        qs = _smooth(q, eps)
        if (ps <= 0).any() or (qs <= 0).any():
            out[i - start] = np.inf
            continue
        pn = ps / total
        qn = qs / qsum.sum()
        kl = float(np.sum(pn * np.log(pn / qn)))
        out[i - start] = 0.0 if kl < KL_NOISE else kl
    return out


def _numpy_mse_errors(hist: np.ndarray, bin_width: float, qmax: int = 127, start: int = 1) -> np.ndarray:
    h = np.ascontiguousarray(hist, dtype=np.float64)
    n = h.shape[0]
    if start < 1:
        raise ValueError("start must be >= 1")
    if n < start:
        return np.zeros(0, dtype=np.float64)
    used = np.nonzero(h)[0]
    counts = h[used]
    centres = (used + 0.5) * bin_width
    total = h.sum()
    out = np.empty(n - start + 1, dtype=np.float64)
    for i in range(start, n + 1):
        s = (i * bin_width) / qmax
        q = np.minimum(np.rint(centres / s), qmax)
        err = centres - q * s
        out[i - start] = float(np.sum(counts * err * err)) / total if total > 0 else 0.0
    return out


def array_stats(x: np.ndarray) -> tuple[float, float, float, int, int]:
    """(min, max, absmax, finite count, non-finite count) over the finite values of ``x``."""
    flat = _flat_real(x)
    if flat.size:
        # numpy's min/max reductions are SIMD (several times faster than a loop that tests every value for
        # finiteness); NaN or inf anywhere shows in their result, and only then do the careful kernels run.
        lo, hi = float(np.minimum.reduce(flat)), float(np.maximum.reduce(flat))
        if math.isfinite(lo) and math.isfinite(hi):
            lo, hi = lo + 0.0, hi + 0.0  # -0.0 -> 0.0: which signed zero a SIMD reduction returns may vary
            return lo, hi, max(abs(lo), abs(hi)), int(flat.size), 0
    if _native is not None:
        return _native.array_stats(flat)  # type: ignore[no-any-return]
    return _numpy_array_stats(flat)


def hist_add(hist: np.ndarray, x: np.ndarray, exponent: int, used: int = 0) -> None:
    """Adds every finite ``|x|`` to ``hist`` (int64) at bin ``floor(|x| / 2**exponent)``, in place.

    ``used``: an upper bound on the bins ``x`` reaches (0: unknown), which keeps the scratch space small.
    """
    flat = _flat_real(x)
    if _native is not None:
        _native.hist_add(hist, flat, int(exponent), int(used))
    else:
        _numpy_hist_add(hist, flat, int(exponent), int(used))


def exponent_for(absmax: float, num_bins: int, min_exponent: int) -> int:
    """The smallest ``e`` with ``absmax < num_bins * 2**e`` (at least ``min_exponent``)."""
    if not absmax > 0 or not math.isfinite(absmax):
        return min_exponent
    _, k = math.frexp(absmax / num_bins)  # absmax / num_bins = m * 2**k, 0.5 <= m < 1
    return max(k, min_exponent)


def _numpy_hist_observe(hist: np.ndarray, flat: np.ndarray, exponent: int,
                        min_exponent: int) -> tuple[int, float, float, int, int]:
    """The twin of the native one-pass kernel: statistics, growth, then counting, each over the whole array
    (``hist_add`` is itself native when the kernels are built)."""
    lo, hi, absmax, finite, bad = array_stats(flat)
    if finite == 0:
        return exponent, math.inf, -math.inf, 0, bad
    grown = exponent_for(absmax, hist.shape[0], min_exponent)
    if grown > exponent:
        hist_coarsen(hist, grown - exponent)
        exponent = grown
    used = min(hist.shape[0], int(math.ldexp(absmax, -exponent)) + 1)
    hist_add(hist, flat, exponent, used)
    return exponent, lo, hi, finite, bad


_SCRATCH = threading.local()


def _scratch(num_bins: int) -> np.ndarray:
    """This thread's four zeroed int32 sub-histograms for ``num_bins`` bins (the kernel leaves them zeroed)."""
    buf = getattr(_SCRATCH, "buf", None)
    if buf is None or buf.shape[1] != num_bins + 1:
        buf = _SCRATCH.buf = np.zeros((4, num_bins + 1), dtype=np.int32)
    return buf


def hist_observe(hist: np.ndarray, x: np.ndarray, exponent: int,
                 min_exponent: int) -> tuple[int, float, float, int, int]:
    """Adds every finite ``|x|`` to ``hist`` (int64, bin width ``2**exponent``), first coarsening it (in place)
    to the smallest exponent, at least ``exponent``, that covers the largest ``|x|``.

    Returns:
        (the exponent now, min, max, finite count, non-finite count) over ``x``; min and max of no finite
        value are inf and -inf, and a zero min or max is +0.0.
    """
    flat = _flat_real(x)
    if _native is not None and flat.dtype == np.float32 and exponent > min_exponent:
        e, lo, hi, finite, bad = _native.hist_observe(hist, flat, int(exponent), int(min_exponent),
                                                      _scratch(hist.shape[0]))
    else:
        # A histogram's first data (or float64): statistics over the whole array first (numpy's SIMD min/max),
        # so that the width is set once; block after block it would widen a few times, each a flush and a
        # coarsening of every bin.
        e, lo, hi, finite, bad = _numpy_hist_observe(hist, flat, int(exponent), int(min_exponent))
    if finite == 0:
        return int(e), math.inf, -math.inf, 0, int(bad)
    return int(e), float(lo) + 0.0, float(hi) + 0.0, int(finite), int(bad)


def hist_coarsen(hist: np.ndarray, shift: int) -> None:
    """Merges each ``2**shift`` consecutive bins of ``hist`` (int64) into one, in place."""
    if _native is not None:
        _native.hist_coarsen(hist, int(shift))
    else:
        _numpy_hist_coarsen(hist, int(shift))


def kl_divergences(hist: np.ndarray, num_levels: int = 128, start: int = 128) -> np.ndarray:
    """TensorRT's KL(P || Q) for every candidate bin ``start .. len(hist)`` (see :mod:`kiln.calib.kl`)."""
    h = np.ascontiguousarray(hist, dtype=np.float64)
    if _native is not None:
        return _native.kl_divergences(h, int(num_levels), int(start))  # type: ignore[no-any-return]
    return _numpy_kl_divergences(h, num_levels, start)


def mse_errors(hist: np.ndarray, bin_width: float, qmax: int = 127, start: int = 1) -> np.ndarray:
    """Expected symmetric-quantization MSE at thresholds ``i * bin_width``, ``i = start .. len(hist)``."""
    h = np.ascontiguousarray(hist, dtype=np.float64)
    if _native is not None:
        return _native.mse_errors(h, float(bin_width), int(qmax), int(start))  # type: ignore[no-any-return]
    return _numpy_mse_errors(h, float(bin_width), qmax, start)
