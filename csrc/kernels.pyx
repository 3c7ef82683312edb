# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""kiln._kernels: native loops for constant statistics and (later) calibration.

Every function here has a numpy twin in ``kiln.kernels`` with the same
signature; ``kiln.kernels`` picks this module when it was built.
"""

import numpy as np
cimport numpy as cnp
from libc.math cimport fabs, isnan

cnp.import_array()


def per_channel_absmax(cnp.ndarray array not None, int axis=0):
    """Max |x| over every axis but ``axis``, as float64 (NaN propagates).

    Used by the IR's constant statistics and, later, by weight quantization
    (scale = absmax / 127 per output channel).
    """
    cdef cnp.ndarray[cnp.float64_t, ndim=2] flat
    cdef Py_ssize_t channels, inner, c, i
    cdef double best, v
    if array.ndim == 0:
        return np.array([abs(float(array))], dtype=np.float64)
    if axis < 0:
        axis += array.ndim
    moved = np.moveaxis(array, axis, 0)
    channels = moved.shape[0]
    flat = np.ascontiguousarray(moved.reshape(channels, -1), dtype=np.float64)
    inner = flat.shape[1]
    out = np.zeros(channels, dtype=np.float64)
    cdef double[::1] out_view = out
    with nogil:
        for c in range(channels):
            best = 0.0
            for i in range(inner):
                v = fabs(flat[c, i])
                if isnan(v):
                    best = v
                    break
                if v > best:
                    best = v
            out_view[c] = best
    return out


# --------------------------------------------------------------------------- calibration
#
# The calibration hot loop: per-batch statistics, histogram accumulation with
# power-of-two bin widths (so histograms merge exactly, see kiln.calib.histogram),
# and the threshold searches (TensorRT's KL divergence, expected MSE).  Each
# releases the GIL around its loop.  The numpy twins are in kiln.kernels.

from libc.math cimport floor, log, log1p, nearbyint, ldexp, isfinite, INFINITY

ctypedef fused real_t:
    float
    double


def array_stats(real_t[::1] x):
    """(min, max, absmax, finite count, non-finite count) of ``x``'s finite values.

    An array with no finite value gives (inf, -inf, 0.0, 0, n).
    """
    cdef Py_ssize_t i, n = x.shape[0], bad = 0
    cdef double v, lo = INFINITY, hi = -INFINITY
    with nogil:
        for i in range(n):
            v = x[i]
            if not isfinite(v):
                bad += 1
                continue
            if v < lo:
                lo = v
            if v > hi:
                hi = v
    absmax = 0.0
    if n - bad > 0:
        absmax = max(abs(lo), abs(hi))
    return lo, hi, absmax, n - bad, bad


def hist_add(cnp.int64_t[::1] hist, real_t[::1] x, int exponent):
    """Counts every finite ``|x|`` into bin ``floor(|x| * 2**-exponent)`` of ``hist`` (in place).

    ``|x| * 2**-exponent`` is exact in double precision (a power-of-two scale),
    so the bin of a value does not depend on how the data was batched.  A bin
    past the end (the caller grows the exponent first, so only rounding at
    the very top could cause it) is clamped to the last bin.
    """
    cdef Py_ssize_t i, n = x.shape[0], nbins = hist.shape[0], b
    cdef double scale = ldexp(1.0, -exponent), v, top = <double>nbins
    # Branch-free in the common case (random signs and ReLU zeros defeat branch prediction);
    # two interleaved histograms halve the store-to-load stalls of runs of equal bins (zeros).
    spare_arr = np.zeros(nbins, dtype=np.int64)
    cdef cnp.int64_t[::1] spare = spare_arr
    with nogil:
        for i in range(n):
            v = fabs(x[i]) * scale
            if not v < top:  # past the end (rounding at the very top), inf, or NaN: rare
                if v != v or v == INFINITY:
                    continue
                v = top - 1
            b = <Py_ssize_t>v  # truncation is floor for v >= 0
            if i & 1:
                spare[b] += 1
            else:
                hist[b] += 1
        for i in range(nbins):
            hist[i] += spare[i]


def hist_coarsen(cnp.int64_t[::1] hist, int shift):
    """Merges every ``2**shift`` consecutive bins into one, in place (the tail is zeroed).

    Bin ``j`` of the result holds bins ``j * 2**shift .. (j + 1) * 2**shift - 1``
    of the input: the histogram of the same data at a bin width ``2**shift``
    times larger.
    """
    cdef Py_ssize_t nbins = hist.shape[0], j, k, group
    cdef cnp.int64_t total
    if shift <= 0:
        return
    with nogil:
        if shift >= 62 or (<Py_ssize_t>1 << shift) >= nbins:
            total = 0
            for k in range(nbins):
                total += hist[k]
                hist[k] = 0
            hist[0] = total
        else:
            group = <Py_ssize_t>1 << shift
            for j in range(nbins // group):
                total = 0
                for k in range(j * group, (j + 1) * group):
                    total += hist[k]
                hist[j] = total
            for j in range(nbins // group, nbins):
                hist[j] = 0


def kl_divergences(double[::1] hist, int num_levels=128, int start=128):
    """TensorRT's KL-divergence curve over a histogram of ``|x|``.

    For every candidate ``i`` in ``start .. len(hist)``: the reference P is
    ``hist[:i]`` with the outliers ``hist[i:]`` added to ``P[i-1]``; Q is
    ``hist[:i]`` merged into ``num_levels`` levels of equal width (bin ``j``
    is in level ``j * num_levels // i``) and expanded back evenly over the
    bins where P is non-zero; both are smoothed (zeros get ``eps = 1e-4``,
    non-zeros lose ``eps * zeros / nonzeros``, which keeps the sum) and
    normalized; the result is KL(P || Q) (``inf`` where Q is empty or a
    smoothed entry is not positive).  See :mod:`kiln.calib.kl` for the
    reference and the sources.

    Level sums and non-zero counts come from prefix sums (O(levels) per
    candidate); ``log(h - eps1)`` is ``log(h) + log1p(-eps1 / h)`` with
    ``log(h)`` computed once per bin, so the inner loop has no ``log`` call
    for the usual tiny ``eps1 / h``.

    Returns:
        float64 array of ``len(hist) - start + 1`` divergences (index 0 is ``i = start``).
    """
    cdef Py_ssize_t n = hist.shape[0], i, j, k, lo, hi, nz, nzp, nzq, L = num_levels
    cdef double eps = 1e-4
    cdef double total, sum_p, sum_q, qsum, pj, qj, qlog, eps1p, eps1q, kl, logsp, p_last, x, lp
    cdef bint bad
    if start < 1 or num_levels < 1 or start < num_levels:
        raise ValueError("need 1 <= num_levels <= start")
    if n < start:
        return np.zeros(0, dtype=np.float64)
    out = np.empty(n - start + 1, dtype=np.float64)
    cdef double[::1] res = out
    suffix_arr = np.zeros(n + 1, dtype=np.float64)
    prefix_arr = np.zeros(n + 1, dtype=np.float64)
    nzpre_arr = np.zeros(n + 1, dtype=np.int64)
    logh_arr = np.zeros(n, dtype=np.float64)
    cdef double[::1] suffix = suffix_arr
    cdef double[::1] prefix = prefix_arr
    cdef cnp.int64_t[::1] nzpre = nzpre_arr
    cdef double[::1] logh = logh_arr
    lev_sum_arr = np.zeros(num_levels, dtype=np.float64)
    lev_nz_arr = np.zeros(num_levels, dtype=np.int64)
    cdef double[::1] lev_sum = lev_sum_arr
    cdef cnp.int64_t[::1] lev_nz = lev_nz_arr
    with nogil:
        for j in range(n - 1, -1, -1):
            suffix[j] = suffix[j + 1] + hist[j]
        for j in range(n):
            prefix[j + 1] = prefix[j] + hist[j]
            nzpre[j + 1] = nzpre[j] + (1 if hist[j] != 0 else 0)
            logh[j] = log(hist[j]) if hist[j] > 0 else 0.0
        total = suffix[0]
        for i in range(start, n + 1):
            p_last = hist[i - 1] + suffix[i]
            nzp = 0
            nzq = 0
            for k in range(num_levels):
                lo = (k * i + L - 1) // L
                hi = ((k + 1) * i + L - 1) // L
                qsum = prefix[hi] - prefix[lo]
                nz = nzpre[hi] - nzpre[lo]
                if hi == i:
                    nz = nz - (1 if hist[i - 1] != 0 else 0) + (1 if p_last != 0 else 0)
                lev_sum[k] = qsum
                lev_nz[k] = nz
                nzp += nz
                if qsum != 0:
                    nzq += nz
            sum_p = total
            sum_q = prefix[i]
            if nzp == 0 or nzq == 0:
                res[i - start] = INFINITY
                continue
            eps1p = eps * (i - nzp) / nzp
            eps1q = eps * (i - nzq) / nzq
            logsp = log(sum_p)
            # Bins where P is zero: P' = Q' = eps, each adding (eps/Sp) log(Sq/Sp).
            kl = (i - nzp) * (eps / sum_p) * log(sum_q / sum_p)
            bad = False
            for k in range(num_levels):
                if lev_nz[k] == 0:
                    continue
                lo = (k * i + L - 1) // L
                hi = ((k + 1) * i + L - 1) // L
                # Q' on this level's non-zero-P bins: the level's share, or eps when the level is empty.
                qj = lev_sum[k] / lev_nz[k] - eps1q if lev_sum[k] != 0 else eps
                if qj <= 0:
                    bad = True
                    break
                qlog = log(qj / sum_q)
                for j in range(lo, hi):
                    if j == i - 1:
                        pj = p_last
                        if pj == 0:
                            continue
                        if pj - eps1p <= 0:
                            bad = True
                            break
                        lp = log(pj - eps1p)
                    else:
                        pj = hist[j]
                        if pj == 0:
                            continue
                        x = eps1p / pj
                        if x >= 1.0:
                            bad = True
                            break
                        if x < 1e-4:
                            lp = logh[j] - x * (1.0 + x * (0.5 + x * (1.0 / 3.0)))
                        else:
                            lp = logh[j] + log1p(-x)
                    kl = kl + ((pj - eps1p) / sum_p) * (lp - logsp - qlog)
                if bad:
                    break
            res[i - start] = INFINITY if bad else kl
    return out


def mse_errors(double[::1] hist, double bin_width, int qmax=127, int start=1):
    """Expected squared error of symmetric quantization at every candidate threshold.

    Candidate ``i`` (``start .. len(hist)``) is the threshold ``T = i * bin_width``
    with step ``s = T / qmax``; every bin's mass sits at its centre ``c``, which
    quantizes to ``min(rint(c / s), qmax) * s``.  Returns the mean squared
    error per candidate (float64, index 0 is ``i = start``).
    """
    cdef Py_ssize_t n = hist.shape[0], i, j, m = 0
    cdef double total = 0.0, t, inv_s, s, c, q, err, acc
    if start < 1:
        raise ValueError("start must be >= 1")
    if n < start:
        return np.zeros(0, dtype=np.float64)
    out = np.empty(n - start + 1, dtype=np.float64)
    cdef double[::1] res = out
    centre_arr = np.empty(n, dtype=np.float64)
    count_arr = np.empty(n, dtype=np.float64)
    cdef double[::1] centre = centre_arr
    cdef double[::1] count = count_arr
    with nogil:
        for j in range(n):
            if hist[j] != 0:
                centre[m] = (j + 0.5) * bin_width
                count[m] = hist[j]
                total = total + hist[j]
                m += 1
        for i in range(start, n + 1):
            t = i * bin_width
            s = t / qmax
            acc = 0.0
            for j in range(m):
                c = centre[j]
                q = nearbyint(c / s)
                if q > qmax:
                    q = qmax
                err = c - q * s
                acc = acc + count[j] * err * err
            res[i - start] = acc / total if total > 0 else 0.0
    return out
