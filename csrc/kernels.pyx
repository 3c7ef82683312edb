# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""kiln._kernels: native loops for constant statistics and calibration (histograms, the KL and MSE searches).

Every function here has a numpy twin in ``kiln.kernels`` (the same signature,
less ``hist_observe``'s scratch argument); ``kiln.kernels`` picks this module
when it was built.  ``stats_simd.h`` holds the one loop written with SIMD
intrinsics (SSE2, with a scalar fallback for other CPUs).
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

from libc.math cimport floor, frexp, log, log1p, nearbyint, ldexp, isfinite, fabsf, INFINITY

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


cdef Py_ssize_t HIST_CHUNK = 1 << 30  # elements per flush of the int32 sub-histograms (cannot overflow)


cdef enum:
    HIST_BLOCK = 512  # float32 values whose bins are computed (vectorized) before they are counted
    SCRATCH_MIN_VALUES_PER_BIN = 8  # below this, counting into scratch costs more than it saves


cdef Py_ssize_t _count_float32(const float* x, Py_ssize_t n, float scale, Py_ssize_t width, int* sub,
                               cnp.int64_t* hist) noexcept nogil:
    """Counts ``x`` by bin ``floor(|x| * scale)``: into four int32 sub-histograms of ``width + 1`` counters
    (``sub``, rows of ``width + 1``; the last counter of a row takes what lands at or past ``width``), or,
    with ``sub`` NULL, straight into ``hist``.  Returns how many values were at or past ``width`` (or inf/NaN):
    the caller places those.

    Block by block: first every bin of the block (a loop without branches, which the compiler vectorizes),
    then the increments.  ``|x| * scale`` is exact in float32 (``scale`` is a normal power of two), so the
    bins are those of the double-precision loop."""
    cdef int bins[HIST_BLOCK]
    cdef Py_ssize_t b0, k, m, row = width + 1, spill = 0
    cdef float top = <float>width, v
    cdef int* s1 = sub + row
    cdef int* s2 = sub + 2 * row
    cdef int* s3 = sub + 3 * row
    b0 = 0
    while b0 < n:
        m = min(<Py_ssize_t>HIST_BLOCK, n - b0)
        for k in range(m):
            v = fabsf(x[b0 + k]) * scale
            v = v if v < top else top  # NaN fails the comparison too
            bins[k] = <int>v
        if sub == NULL:
            for k in range(m):
                if bins[k] < width:
                    hist[bins[k]] += 1
                else:
                    spill += 1
        else:
            k = 0
            # Four counters round-robin: runs of equal bins (ReLU zeros) do not wait on one counter's last store.
            while k + 4 <= m:
                sub[bins[k]] += 1
                s1[bins[k + 1]] += 1
                s2[bins[k + 2]] += 1
                s3[bins[k + 3]] += 1
                k += 4
            while k < m:
                sub[bins[k]] += 1
                k += 1
        b0 += m
    if sub != NULL:
        spill = sub[width] + s1[width] + s2[width] + s3[width]
        sub[width] = 0
        s1[width] = 0
        s2[width] = 0
        s3[width] = 0
    return spill


cdef void _flush(int* sub, Py_ssize_t row, cnp.int64_t* hist, Py_ssize_t used) noexcept nogil:
    """Adds the four int32 sub-histograms' first ``used`` bins to ``hist`` and zeroes them."""
    cdef Py_ssize_t j
    for j in range(used):
        hist[j] += <cnp.int64_t>sub[j] + sub[row + j] + sub[2 * row + j] + sub[3 * row + j]
        sub[j] = 0
        sub[row + j] = 0
        sub[2 * row + j] = 0
        sub[3 * row + j] = 0


def hist_add(cnp.int64_t[::1] hist, real_t[::1] x, int exponent, Py_ssize_t used=0):
    """Counts every finite ``|x|`` into bin ``floor(|x| * 2**-exponent)`` of ``hist`` (in place).

    ``|x| * 2**-exponent`` is exact in double precision (a power-of-two scale),
    so the bin of a value does not depend on how the data was batched.  A bin
    past the end (the caller grows the exponent first, so only rounding at
    the very top could cause it) is clamped to the last bin.  ``used``
    (optional) is an upper bound on the bins the data can reach (from its
    ``max |x|``): only those are scratch space to clear and add back.
    """
    cdef Py_ssize_t i, n = x.shape[0], nbins = hist.shape[0], n4, lo, hi, width, spill
    cdef double scale = ldexp(1.0, -exponent), v0, v1, v2, v3, top = <double>nbins
    cdef bint float32_path = False, scratch
    width = nbins if used <= 0 or used > nbins else used
    # Many values per bin: four int32 sub-histograms, filled round-robin and summed at the end, so that runs
    # of equal bins (ReLU zeros) do not wait on the previous increment of the same counter.  Few (a small
    # tensor over many bins): clearing and adding back the scratch would cost more than the counting, so
    # the values go straight into ``hist``.
    scratch = n >= SCRATCH_MIN_VALUES_PER_BIN * width
    sub_arr = np.zeros((4 if scratch else 1, width + 1 if scratch else 1), dtype=np.int32)
    cdef int[:, ::1] sub = sub_arr
    cdef int* sub_ptr = NULL
    if scratch:
        sub_ptr = &sub[0, 0]
    if real_t is float:
        float32_path = -126 <= -exponent <= 127
    with nogil:
        lo = 0
        while lo < n:
            hi = min(n, lo + HIST_CHUNK)
            i = lo
            if real_t is float:
                if float32_path:
                    spill = _count_float32(&x[lo], hi - lo, <float>scale, width, sub_ptr, &hist[0])
                    i = hi
                    if spill > 0:  # values past the scratch, or inf/NaN: placed as the careful loop does
                        for i in range(lo, hi):
                            v0 = fabs(x[i]) * scale
                            if v0 < width:
                                continue
                            if not v0 < top:
                                if v0 != v0 or v0 == INFINITY:
                                    continue
                                v0 = top - 1
                            hist[<Py_ssize_t>v0] += 1
                        i = hi
            if scratch:
                n4 = i + (hi - i) - (hi - i) % 4
                while i < n4:
                    v0 = fabs(x[i]) * scale
                    v1 = fabs(x[i + 1]) * scale
                    v2 = fabs(x[i + 2]) * scale
                    v3 = fabs(x[i + 3]) * scale
                    if not (v0 < width and v1 < width and v2 < width and v3 < width):
                        break  # a value past the scratch (or inf/NaN): the careful loop takes the rest
                    sub[0, <Py_ssize_t>v0] += 1  # truncation is floor for v >= 0
                    sub[1, <Py_ssize_t>v1] += 1
                    sub[2, <Py_ssize_t>v2] += 1
                    sub[3, <Py_ssize_t>v3] += 1
                    i += 4
            while i < hi:
                v0 = fabs(x[i]) * scale
                i += 1
                if not v0 < top:  # past the end (rounding at the very top), inf, or NaN: rare
                    if v0 != v0 or v0 == INFINITY:
                        continue
                    v0 = top - 1
                if scratch and v0 < width:
                    sub[0, <Py_ssize_t>v0] += 1
                else:
                    hist[<Py_ssize_t>v0] += 1
            if scratch:
                _flush(sub_ptr, width + 1, &hist[0], width)
            lo = hi


cdef void _coarsen(cnp.int64_t* hist, Py_ssize_t nbins, int shift) noexcept nogil:
    cdef Py_ssize_t j, k, group
    cdef cnp.int64_t total
    if shift <= 0:
        return
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


def hist_coarsen(cnp.int64_t[::1] hist, int shift):
    """Merges every ``2**shift`` consecutive bins into one, in place (the tail is zeroed).

    Bin ``j`` of the result holds bins ``j * 2**shift .. (j + 1) * 2**shift - 1``
    of the input: the histogram of the same data at a bin width ``2**shift``
    times larger.
    """
    if shift <= 0:
        return
    with nogil:
        _coarsen(&hist[0], hist.shape[0], shift)


cdef extern from "stats_simd.h" nogil:
    void kiln_stats_f32(const float* x, Py_ssize_t n, float* lo, float* hi, Py_ssize_t* bad)


cdef enum:
    OBSERVE_BLOCK = 8192  # float32 values (32 KiB) whose statistics are taken and that are counted while in cache


def hist_observe(cnp.int64_t[::1] hist, const float[::1] x, int exponent, int min_exponent, int[:, ::1] scratch):
    """Adds float32 ``x`` to ``hist`` (bin width ``2**exponent``), growing the width as the data needs.

    One pass over ``x``, a block at a time: the block's min, max and non-finite
    count (SIMD, ``stats_simd.h``), then, if its largest ``|x|`` is past the
    last bin, the histogram coarsened to the smallest exponent that covers it
    (exact, as ``hist_coarsen``), then the block counted while it is still in
    cache.  The result is the twin's (``array_stats``, grow, ``hist_add`` over the
    whole array) bit for bit: the final exponent covers the largest ``|x|``
    either way, and a value counted before a growth lands where the growth
    moves its bin.

    ``scratch``: four zeroed int32 rows of ``len(hist) + 1`` counters (left
    zeroed), used when ``x`` is large; any other shape means none.

    Returns:
        (exponent, min, max, finite count, non-finite count).
    """
    cdef Py_ssize_t n = x.shape[0], nbins = hist.shape[0], row = nbins + 1
    cdef Py_ssize_t b0, m, i, spill, bad = 0, bad_b, since_flush = 0
    cdef float lo = INFINITY, hi = -INFINITY, blo, bhi
    cdef double am, amax = 0.0, scale, v0, top = <double>nbins
    cdef int e = exponent, enew, k
    cdef bint f32
    cdef int* sub = NULL
    if scratch.shape[0] == 4 and scratch.shape[1] == row and n >= SCRATCH_MIN_VALUES_PER_BIN * nbins:
        sub = &scratch[0, 0]
    with nogil:
        scale = ldexp(1.0, -e)
        f32 = -126 <= -e <= 127
        b0 = 0
        while b0 < n:
            m = min(<Py_ssize_t>OBSERVE_BLOCK, n - b0)
            blo = INFINITY
            bhi = -INFINITY
            bad_b = 0
            kiln_stats_f32(&x[b0], m, &blo, &bhi, &bad_b)
            bad += bad_b
            if bad_b < m:
                if blo < lo:
                    lo = blo
                if bhi > hi:
                    hi = bhi
                am = fabs(blo) if fabs(blo) > fabs(bhi) else fabs(bhi)
                if am > amax:
                    amax = am
                if not am < ldexp(top, e):  # past the last bin: grow to the smallest exponent covering it
                    frexp(am / top, &k)
                    enew = k if k > min_exponent else min_exponent
                    if enew > e:
                        if sub != NULL:
                            _flush(sub, row, &hist[0], nbins)
                            since_flush = 0
                        _coarsen(&hist[0], nbins, enew - e)
                        e = enew
                        scale = ldexp(1.0, -e)
                        f32 = -126 <= -e <= 127
                if f32:
                    spill = _count_float32(&x[b0], m, <float>scale, nbins, sub, &hist[0])
                    if spill > 0:  # rounding at the very top, or inf/NaN: placed as hist_add's careful loop does
                        for i in range(b0, b0 + m):
                            v0 = fabs(x[i]) * scale
                            if v0 < top or v0 != v0 or v0 == INFINITY:
                                continue
                            hist[nbins - 1] += 1
                else:  # a bin width float32 cannot scale by (tiny or huge data): the double-precision loop
                    for i in range(b0, b0 + m):
                        v0 = fabs(x[i]) * scale
                        if v0 != v0 or v0 == INFINITY:
                            continue
                        if not v0 < top:
                            v0 = top - 1
                        hist[<Py_ssize_t>v0] += 1
                since_flush += m
                if sub != NULL and since_flush >= HIST_CHUNK:
                    _flush(sub, row, &hist[0], nbins)
                    since_flush = 0
            b0 += m
        if sub != NULL:
            am = amax * scale
            _flush(sub, row, &hist[0], nbins if am >= top else <Py_ssize_t>am + 1)
    return e, lo, hi, n - bad, bad


# Taylor coefficients of (1 - x) log(1 - x) = -x + sum_{k>=2} x**k / (k (k - 1)), k = 2 .. 9.
cdef double[8] _SERIES = [1.0 / 2, 1.0 / 6, 1.0 / 12, 1.0 / 20, 1.0 / 30, 1.0 / 42, 1.0 / 56, 1.0 / 72]
# The series replaces log(p - eps1) when eps1 / p <= this for every bin (truncation error < 1e-19 p).
cdef double SERIES_MAX_X = 0.01
cdef enum:
    NUM_POWERS = 8


cdef double KL_NOISE = 1e-12

# The level table (see kl_divergences) holds the series of log(1 - x) for Q's smoothing up to x**TABLE_TERMS;
# it is used while x <= TABLE_MAX_X on every level (truncation < x**5 / 5 <= 2e-16 of a level's mass).
cdef double TABLE_MAX_X = 1e-3
cdef enum:
    TABLE_TERMS = 4
    TABLE_FIELDS = 6       # S log(S/c), c log(S/c), c**m / S**(m-1) for m = 2 .. TABLE_TERMS + 1
    TABLE_MAX_WIDTH = 32   # widest level (bins) the table covers; wider settings sum level by level


cdef inline double _clamp_noise(double kl) noexcept nogil:
    """KL >= 0; a divergence below rounding noise (Q equal to P) is exactly 0, so ties break the same way
    in both twins (the first such candidate wins)."""
    return 0.0 if kl < KL_NOISE else kl


cdef double _kl_exact(double[::1] hist, Py_ssize_t i, Py_ssize_t L, double p_last, double eps1p,
                      double eps1q, double logsp, double sum_q, double sum_p, double[::1] lev_sum,
                      cnp.int64_t[::1] lev_nz, cnp.int64_t[::1] bound, double[::1] logh) noexcept nogil:
    """The level sums of candidate ``i`` bin by bin (when the series cannot be used); adds no constant term."""
    cdef Py_ssize_t k, j, lo, hi
    cdef double kl = 0.0, qj, qlog, pj, x, lp, eps = 1e-4
    for k in range(L):
        if lev_nz[k] == 0:
            continue
        lo = bound[k]
        hi = bound[k + 1]
        qj = lev_sum[k] / lev_nz[k] - eps1q if lev_sum[k] != 0 else eps
        if qj <= 0:
            return INFINITY
        qlog = log(qj / sum_q)
        for j in range(lo, hi):
            if j == i - 1:
                pj = p_last
                if pj == 0:
                    continue
                if pj - eps1p <= 0:
                    return INFINITY
                lp = log(pj - eps1p)
            else:
                pj = hist[j]
                if pj == 0:
                    continue
                x = eps1p / pj
                if x >= 1.0:
                    return INFINITY
                if x < 1e-4:
                    lp = logh[j] - x * (1.0 + x * (0.5 + x * (1.0 / 3.0)))
                else:
                    lp = logh[j] + log1p(-x)
            kl = kl + ((pj - eps1p) / sum_p) * (lp - logsp - qlog)
    return kl


cdef inline void _fill_levels(double[::1] hist, double[::1] prefix, cnp.int64_t[::1] nzpre, Py_ssize_t i,
                              Py_ssize_t L, double p_last, cnp.int64_t[::1] bound, double[::1] lev_sum,
                              cnp.int64_t[::1] lev_nz, Py_ssize_t* nzp_out, Py_ssize_t* nzq_out) noexcept nogil:
    """Candidate ``i``'s level bounds, sums and non-zero counts, and P's and Q's non-zero bin counts."""
    cdef Py_ssize_t k, lo, hi, nz, nzp = 0, nzq = 0
    cdef Py_ssize_t step_q = i // L, step_r = i % L, acc_q = 0, acc_r = 0
    cdef double qsum
    # Level k holds bins ceil(k i / L) .. ceil((k+1) i / L) - 1; the bounds by increments (no division).
    for k in range(L + 1):
        bound[k] = acc_q + (1 if acc_r > 0 else 0)
        acc_q += step_q
        acc_r += step_r
        if acc_r >= L:
            acc_r -= L
            acc_q += 1
    for k in range(L):
        lo = bound[k]
        hi = bound[k + 1]
        qsum = prefix[hi] - prefix[lo]
        nz = nzpre[hi] - nzpre[lo]
        if hi == i:
            nz = nz - (1 if hist[i - 1] != 0 else 0) + (1 if p_last != 0 else 0)
        lev_sum[k] = qsum
        lev_nz[k] = nz
        nzp += nz
        if qsum != 0:
            nzq += nz
    nzp_out[0] = nzp
    nzq_out[0] = nzq


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

    O(levels) per candidate, not O(bins).  Over P's non-zero bins, with
    ``e`` P's smoothing ``eps1``, ``Sp * KL = F - log(Sp) W - sum_levels
    log(Q'_level / Sq) W_level`` where ``F = sum (p - e) log(p - e)`` and
    ``W = sum (p - e)`` (Q' is constant over a level).  With ``x = e / p``,
    ``(p - e) log(p - e) = p log p - e log p - e + sum_k e**k / (k (k-1)
    p**(k-1))``, so F comes from prefix sums of ``p log p``, ``log p`` and
    ``p**-m`` (m = 1..8): exact to rounding while ``x <= 0.01`` for every
    bin (the usual case: ``e`` is ``1e-4`` times the ratio of zero to
    non-zero bins, and counts are >= 1).  A candidate where some bin has a
    larger ``x`` is summed bin by bin.  P's last bin (with the outliers) is
    always added on its own.

    The level sum ``sum_levels log(Q'_level) W_level`` needs one ``log`` per
    level and candidate if done directly (2048 bins: 246k logs, most of the
    time).  But a level is a range ``[lo, lo + w)`` of bins, and all the
    candidates' levels are only ~20k distinct ranges (``w`` is ``i / 128``
    rounded, at most 16 bins).  With ``S`` and ``c`` a level's count and
    non-zero bins, ``Q' = S / c - e_q`` and ``W = S - c e``; for
    ``x = e_q c / S <= TABLE_MAX_X``, ``W log Q'`` is ``S log(S/c) - e c
    log(S/c) - sum_m e_q**m / m (c**m S**(1-m) - e c**(m+1) S**-m)``, four
    terms of the series exact to 2e-16 of the level's mass.  Those six
    per-range quantities are tabulated once per histogram (one ``log`` per
    range), and a candidate's levels but the last are six table sums.  Where
    ``x`` is larger (very sparse histograms) the candidate takes the
    level-by-level loop.  A negative count makes P not positive: ``inf``.

    Returns:
        float64 array of ``len(hist) - start + 1`` divergences (index 0 is ``i = start``).
    """
    cdef Py_ssize_t n = hist.shape[0], i, j, k, m, lo, hi, b, nz, nzp, nzq, cnt, L = num_levels
    cdef double eps = 1e-4
    cdef double total, sum_p, sum_q, qsum, qj, qlog, eps1p, eps1q, kl, logsp, p_last, e, inv, pw
    cdef double f, w, w_k, poly, sz
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
    plogp_arr = np.zeros(n + 1, dtype=np.float64)
    logpre_arr = np.zeros(n + 1, dtype=np.float64)
    # powers[j, m]: prefix sums of p**-(m+1) over the non-zero bins before j (a row is one cache line).
    powers_arr = np.zeros((n + 1, NUM_POWERS), dtype=np.float64)
    minpre_arr = np.full(n + 1, INFINITY, dtype=np.float64)
    cdef double[::1] suffix = suffix_arr
    cdef double[::1] prefix = prefix_arr
    cdef cnp.int64_t[::1] nzpre = nzpre_arr
    cdef double[::1] logh = logh_arr
    cdef double[::1] plogp = plogp_arr
    cdef double[::1] logpre = logpre_arr
    cdef double[:, ::1] powers = powers_arr
    cdef double[::1] minpre = minpre_arr
    lev_sum_arr = np.zeros(num_levels, dtype=np.float64)
    lev_nz_arr = np.zeros(num_levels, dtype=np.int64)
    bound_arr = np.zeros(num_levels + 1, dtype=np.int64)
    cdef double[::1] lev_sum = lev_sum_arr
    cdef cnp.int64_t[::1] lev_nz = lev_nz_arr
    cdef cnp.int64_t[::1] bound = bound_arr
    cdef Py_ssize_t step_q, step_r, acc_q, acc_r, wd, wmin, wmax, lo_last, nz_last
    cdef double qsum_last, ta, tb, t2, t3, t4, t5, Lk, r, c, eq, sum_nl, nz_nl, poly_q
    cdef bint negative = False, use_table, fast
    # The level table: for every level width wd a candidate can have and every start bin lo, the terms of the
    # level [lo, lo + wd) (see the docstring).  Only widths up to TABLE_MAX_WIDTH (TensorRT's setting has 16).
    wmin = start // L
    wmax = (n + L - 1) // L
    use_table = wmax <= TABLE_MAX_WIDTH
    offset_arr = np.zeros(TABLE_MAX_WIDTH + 2, dtype=np.int64)
    cdef cnp.int64_t[::1] offset = offset_arr
    if use_table:
        for wd in range(wmin, wmax + 1):
            offset[wd + 1] = offset[wd] + max(0, min(n - wd + 1, (wd + 1) * L - wd))
        for wd in range(wmax + 1, TABLE_MAX_WIDTH + 2):
            offset[wd] = offset[wmax + 1]
    table_arr = np.zeros((offset[TABLE_MAX_WIDTH + 1] if use_table else 0, TABLE_FIELDS), dtype=np.float64)
    cdef double[:, ::1] table = table_arr
    logn_arr = np.zeros(TABLE_MAX_WIDTH + 1, dtype=np.float64)
    cdef double[::1] logn = logn_arr
    with nogil:
        for j in range(n - 1, -1, -1):
            suffix[j] = suffix[j + 1] + hist[j]
        for j in range(n):
            prefix[j + 1] = prefix[j] + hist[j]
            nzpre[j + 1] = nzpre[j] + (1 if hist[j] != 0 else 0)
            plogp[j + 1] = plogp[j]
            logpre[j + 1] = logpre[j]
            minpre[j + 1] = minpre[j]
            for m in range(NUM_POWERS):
                powers[j + 1, m] = powers[j, m]
            if hist[j] > 0:
                logh[j] = log(hist[j])
                plogp[j + 1] += hist[j] * logh[j]
                logpre[j + 1] += logh[j]
                if hist[j] < minpre[j + 1]:
                    minpre[j + 1] = hist[j]
                inv = 1.0 / hist[j]
                pw = inv
                for m in range(NUM_POWERS):
                    powers[j + 1, m] += pw
                    pw = pw * inv
            elif hist[j] < 0:
                minpre[j + 1] = -INFINITY  # a negative count: every candidate past it is infinite
                negative = True
        total = suffix[0]
        use_table = use_table and not negative
        if use_table:
            for m in range(1, TABLE_MAX_WIDTH + 1):
                logn[m] = log(<double>m)
            for wd in range(wmin, wmax + 1):
                for lo in range(offset[wd + 1] - offset[wd]):
                    cnt = nzpre[lo + wd] - nzpre[lo]
                    if cnt == 0:
                        continue  # an empty level: every term is 0
                    qsum = prefix[lo + wd] - prefix[lo]
                    c = <double>cnt
                    Lk = (logh[lo] if wd == 1 else log(qsum)) - logn[cnt]
                    r = c / qsum
                    b = offset[wd] + lo
                    table[b, 0] = qsum * Lk
                    table[b, 1] = c * Lk
                    table[b, 2] = c * r
                    table[b, 3] = table[b, 2] * r
                    table[b, 4] = table[b, 3] * r
                    table[b, 5] = table[b, 4] * r
        for i in range(start, n + 1):
            p_last = hist[i - 1] + suffix[i]
            step_q = i // L
            step_r = i % L
            # With no negative counts a level's sum is non-zero exactly where it has a non-zero bin (but the
            # last level, whose P bin holds the outliers): P's and Q's non-zero counts need no level loop.
            fast = use_table
            if fast:
                lo_last = ((L - 1) * i + L - 1) // L
                nz = (1 if hist[i - 1] != 0 else 0)
                nzp = nzpre[i] - nz + (1 if p_last != 0 else 0)
                qsum_last = prefix[i] - prefix[lo_last]
                nz_last = nzpre[i] - nzpre[lo_last] - nz + (1 if p_last != 0 else 0)
                nzq = nzp - (nz_last if qsum_last == 0 else 0)
            else:
                _fill_levels(hist, prefix, nzpre, i, L, p_last, bound, lev_sum, lev_nz, &nzp, &nzq)
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
            e = eps1p
            if minpre[i - 1] == -INFINITY:  # a negative count in P: its smoothed entry is not positive
                res[i - start] = INFINITY
                continue
            if not (minpre[i - 1] > 0 and e <= SERIES_MAX_X * minpre[i - 1]):
                if fast:
                    _fill_levels(hist, prefix, nzpre, i, L, p_last, bound, lev_sum, lev_nz, &nzp, &nzq)
                res[i - start] = _clamp_noise(kl + _kl_exact(hist, i, L, p_last, eps1p, eps1q, logsp, sum_q,
                                                             sum_p, lev_sum, lev_nz, bound, logh))
                continue
            if p_last != 0 and p_last - e <= 0:
                res[i - start] = INFINITY
                continue
            # F and W over all non-zero bins below i - 1 from the prefix sums, then P's last bin.
            b = i - 1
            cnt = nzpre[b]
            poly = 0.0
            for m in range(NUM_POWERS - 1, -1, -1):
                poly = (poly + _SERIES[m] * powers[b, m]) * e
            f = plogp[b] - e * logpre[b] - cnt * e + e * poly
            w = prefix[b] - cnt * e
            if p_last != 0:
                f = f + (p_last - e) * log(p_last - e)
                w = w + (p_last - e)
            # sum over levels of log(Q'/Sq) * W_level (W_level: the level's sum of P - e over non-zero bins).
            if fast and eps1q <= TABLE_MAX_X * minpre[i - 1]:
                # Every level but the last from the table: with a = S/c its mean non-zero count and
                # x = eps1q / a <= TABLE_MAX_X, (S - c e) log(a - eps1q) is S log a - e c log a
                # - sum_m eps1q**m / m * (c**m / S**(m-1) - e c**(m+1) / S**m).
                ta = 0.0
                tb = 0.0
                t2 = 0.0
                t3 = 0.0
                t4 = 0.0
                t5 = 0.0
                acc_q = 0
                acc_r = 0
                lo = 0
                for k in range(L - 1):
                    acc_q += step_q
                    acc_r += step_r
                    if acc_r >= L:
                        acc_r -= L
                        acc_q += 1
                    hi = acc_q + (1 if acc_r > 0 else 0)
                    j = offset[hi - lo] + lo
                    ta += table[j, 0]
                    tb += table[j, 1]
                    t2 += table[j, 2]
                    t3 += table[j, 3]
                    t4 += table[j, 4]
                    t5 += table[j, 5]
                    lo = hi
                eq = eps1q
                nz_nl = <double>(nzpre[lo_last])
                sum_nl = prefix[lo_last]
                poly_q = (eq * (nz_nl - e * t2) + eq * eq / 2.0 * (t2 - e * t3)
                          + eq * eq * eq / 3.0 * (t3 - e * t4) + eq * eq * eq * eq / 4.0 * (t4 - e * t5))
                sz = ta - e * tb - poly_q - log(sum_q) * (sum_nl - e * nz_nl)
                if nz_last > 0:
                    qj = qsum_last / nz_last - eps1q if qsum_last != 0 else eps
                    if qj <= 0:
                        res[i - start] = INFINITY
                        continue
                    sz = sz + log(qj / sum_q) * (qsum_last - nz_last * e + suffix[i])
                res[i - start] = _clamp_noise(kl + (f - logsp * w - sz) / sum_p)
                continue
            if fast:
                _fill_levels(hist, prefix, nzpre, i, L, p_last, bound, lev_sum, lev_nz, &nzp, &nzq)
            sz = 0.0
            for k in range(num_levels):
                if lev_nz[k] == 0:
                    continue
                qj = lev_sum[k] / lev_nz[k] - eps1q if lev_sum[k] != 0 else eps
                if qj <= 0:
                    sz = INFINITY
                    break
                w_k = lev_sum[k] - lev_nz[k] * e
                if bound[k + 1] == i:
                    w_k = w_k + suffix[i]
                sz = sz + log(qj / sum_q) * w_k
            if sz == INFINITY:
                res[i - start] = INFINITY
                continue
            res[i - start] = _clamp_noise(kl + (f - logsp * w - sz) / sum_p)
    return out


def mse_errors(double[::1] hist, double bin_width, int qmax=127, int start=1):
    """Expected squared error of symmetric quantization at every candidate threshold.

    Candidate ``i`` (``start .. len(hist)``) is the threshold ``T = i * bin_width``
    with step ``s = T / qmax``; every bin's mass sits at its centre ``c``, which
    quantizes to ``min(rint(c / s), qmax) * s``.  Returns the mean squared
    error per candidate (float64, index 0 is ``i = start``).

    Integer counts (every histogram kiln builds) take the O(qmax) path per
    candidate: in half-bin units a centre is the odd integer ``v = 2j + 1``
    and level ``q`` is ``2 q s`` = ``d``, so a level's error is ``S2 - 2 d S1
    + d**2 S0`` from exact int64 prefix sums of ``count * v**k`` (bins join
    levels by integer arithmetic; a centre exactly between two levels has
    the same error either way, so tie rounding does not matter).  Other
    histograms are summed bin by bin.
    """
    cdef Py_ssize_t n = hist.shape[0], i, j, m = 0, q, lo, hi, K, D, qq, rr, sq, sr
    cdef double total = 0.0, t, s, c, qv, err, acc, d, s0, s1, s2
    cdef bint integral = True
    if start < 1:
        raise ValueError("start must be >= 1")
    if qmax < 1:
        raise ValueError("qmax must be >= 1")
    if n < start:
        return np.zeros(0, dtype=np.float64)
    out = np.empty(n - start + 1, dtype=np.float64)
    cdef double[::1] res = out
    centre_arr = np.empty(n, dtype=np.float64)
    count_arr = np.empty(n, dtype=np.float64)
    cdef double[::1] centre = centre_arr
    cdef double[::1] count = count_arr
    p0_arr = np.zeros(n + 1, dtype=np.int64)
    p1_arr = np.zeros(n + 1, dtype=np.int64)
    p2_arr = np.zeros(n + 1, dtype=np.int64)
    cdef cnp.int64_t[::1] p0 = p0_arr
    cdef cnp.int64_t[::1] p1 = p1_arr
    cdef cnp.int64_t[::1] p2 = p2_arr
    # int64 prefix sums of count * (2n+1)**2 stay exact below this many counts in all.
    cdef double limit = 4.0e18 / ((2.0 * n + 1.0) * (2.0 * n + 1.0))
    with nogil:
        for j in range(n):
            if hist[j] != 0:
                centre[m] = (j + 0.5) * bin_width
                count[m] = hist[j]
                total = total + hist[j]
                m += 1
            if not (hist[j] >= 0 and hist[j] == floor(hist[j])):
                integral = False
        if not total < limit:
            integral = False
        if integral:
            for j in range(n):
                p0[j + 1] = p0[j] + <cnp.int64_t>hist[j]
                p1[j + 1] = p1[j] + <cnp.int64_t>hist[j] * (2 * j + 1)
                p2[j + 1] = p2[j] + <cnp.int64_t>hist[j] * (2 * j + 1) * (2 * j + 1)
            D = 2 * qmax
            for i in range(start, n + 1):
                # Bin j joins level floor(((2j+1) qmax + i) / (2i)) (rint, ties up), so level q starts at
                # bin ceil((2iq - i - qmax) / D): tracked as a quotient and remainder of the numerator
                # shifted by K*D (keeps it >= 0), stepped by 2i per level (no division in the loop).
                K = (i + qmax) // D + 1
                qq = (K * D - i - qmax + D - 1) // D
                rr = (K * D - i - qmax + D - 1) % D
                sq = (2 * i) // D
                sr = (2 * i) % D
                acc = 0.0
                lo = 0
                for q in range(qmax + 1):
                    # the start of level q + 1 (level qmax takes every bin from its start on)
                    qq += sq
                    rr += sr
                    if rr >= D:
                        rr -= D
                        qq += 1
                    hi = qq - K if q < qmax else n
                    if hi > n:
                        hi = n
                    if hi < lo:
                        hi = lo
                    if hi > lo and p0[hi] != p0[lo]:
                        d = 2.0 * q * i / qmax
                        s0 = <double>(p0[hi] - p0[lo])
                        s1 = <double>(p1[hi] - p1[lo])
                        s2 = <double>(p2[hi] - p2[lo])
                        acc = acc + ((s2 - d * s1) - d * (s1 - d * s0))
                    lo = hi
                    if lo >= n:
                        break
                res[i - start] = (acc * 0.25 * bin_width * bin_width) / total if total > 0 else 0.0
        else:
            for i in range(start, n + 1):
                t = i * bin_width
                s = t / qmax
                acc = 0.0
                for j in range(m):
                    c = centre[j]
                    qv = nearbyint(c / s)
                    if qv > qmax:
                        qv = qmax
                    err = c - qv * s
                    acc = acc + count[j] * err * err
                res[i - start] = acc / total if total > 0 else 0.0
    return out
