/* kiln: min, max and the non-finite count of a float32 block, four lanes at a time.
 *
 * The calibration histogram reads every activation value once per batch; these statistics come first
 * (they decide the bin width) and are computed on a block while it is in cache, right before the block
 * is counted.  SSE2 is part of every x86-64 CPU, so this needs no build flag and no runtime dispatch;
 * other CPUs take the scalar loop below, which gives the same result.
 *
 * Semantics (both paths): *lo and *hi are running values (start them at +inf and -inf) updated with the
 * finite values of x[0..n); *bad is incremented once per NaN or infinity.  A zero's sign may differ
 * between the paths: callers normalize -0.0 to 0.0.
 */
#ifndef KILN_STATS_SIMD_H
#define KILN_STATS_SIMD_H

#include <math.h>
#include <stddef.h>

/* The scalar loop: other CPUs, and the tail of a block on x86-64. */
static inline void kiln_stats_f32_scalar(const float *x, ptrdiff_t n, float *lo, float *hi, ptrdiff_t *bad) {
    float l = *lo, h = *hi;
    ptrdiff_t i, nbad = 0;
    for (i = 0; i < n; i++) {
        float v = x[i];
        if (!(fabsf(v) < INFINITY)) {
            nbad++;
            continue;
        }
        if (v < l) l = v;
        if (v > h) h = v;
    }
    *lo = l;
    *hi = h;
    *bad += nbad;
}

#if defined(__SSE2__) || defined(_M_X64)
#include <emmintrin.h>

/* Finite data (the usual case) takes four operations per four values: min and max (MINPS/MAXPS return
 * their second operand when the first is NaN, so a NaN never enters them) and an unordered compare that
 * notes any NaN.  A block whose result shows an infinity or a NaN is taken again by the scalar loop,
 * which counts them and leaves them out. */
static inline void kiln_stats_f32(const float *x, ptrdiff_t n, float *lo, float *hi, ptrdiff_t *bad) {
    __m128 lo0 = _mm_set1_ps(INFINITY), lo1 = lo0, hi0 = _mm_set1_ps(-INFINITY), hi1 = hi0;
    __m128 nan0 = _mm_setzero_ps(), nan1 = nan0;
    ptrdiff_t i = 0;
    float l, h, lanes_lo[4], lanes_hi[4];
    int k;
    for (; i + 8 <= n; i += 8) {
        __m128 a = _mm_loadu_ps(x + i), b = _mm_loadu_ps(x + i + 4);
        lo0 = _mm_min_ps(a, lo0);
        lo1 = _mm_min_ps(b, lo1);
        hi0 = _mm_max_ps(a, hi0);
        hi1 = _mm_max_ps(b, hi1);
        nan0 = _mm_or_ps(nan0, _mm_cmpunord_ps(a, a));
        nan1 = _mm_or_ps(nan1, _mm_cmpunord_ps(b, b));
    }
    _mm_storeu_ps(lanes_lo, _mm_min_ps(lo0, lo1));
    _mm_storeu_ps(lanes_hi, _mm_max_ps(hi0, hi1));
    l = INFINITY;
    h = -INFINITY;
    for (k = 0; k < 4; k++) {
        if (lanes_lo[k] < l) l = lanes_lo[k];
        if (lanes_hi[k] > h) h = lanes_hi[k];
    }
    if (_mm_movemask_ps(_mm_or_ps(nan0, nan1)) != 0 || l == -INFINITY || h == INFINITY) {
        kiln_stats_f32_scalar(x, n, lo, hi, bad);  /* inf or NaN in the block: the careful loop, from the start */
        return;
    }
    if (l < *lo) *lo = l;
    if (h > *hi) *hi = h;
    kiln_stats_f32_scalar(x + i, n - i, lo, hi, bad);
}

#else

static inline void kiln_stats_f32(const float *x, ptrdiff_t n, float *lo, float *hi, ptrdiff_t *bad) {
    kiln_stats_f32_scalar(x, n, lo, hi, bad);
}

#endif
#endif
