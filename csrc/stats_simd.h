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

static inline void kiln_stats_f32(const float *x, ptrdiff_t n, float *lo, float *hi, ptrdiff_t *bad) {
    const __m128 abs_mask = _mm_castsi128_ps(_mm_set1_epi32(0x7fffffff));
    const __m128 pos_inf = _mm_set1_ps(INFINITY);
    const __m128 neg_inf = _mm_set1_ps(-INFINITY);
    const __m128i one = _mm_set1_epi32(1);
    __m128 lo0 = pos_inf, lo1 = pos_inf, hi0 = neg_inf, hi1 = neg_inf;
    __m128i bad0 = _mm_setzero_si128();
    ptrdiff_t i = 0, nbad = 0;
    float l, h, lanes_lo[4], lanes_hi[4];
    int lanes_bad[4], k;
    /* At most 2**30 values per call keeps each lane's int32 count far from overflow. */
    for (; i + 8 <= n; i += 8) {
        __m128 a = _mm_loadu_ps(x + i), b = _mm_loadu_ps(x + i + 4);
        /* |v| < inf is false for inf and NaN */
        __m128 fa = _mm_cmplt_ps(_mm_and_ps(a, abs_mask), pos_inf);
        __m128 fb = _mm_cmplt_ps(_mm_and_ps(b, abs_mask), pos_inf);
        bad0 = _mm_add_epi32(bad0, _mm_andnot_si128(_mm_castps_si128(fa), one));
        bad0 = _mm_add_epi32(bad0, _mm_andnot_si128(_mm_castps_si128(fb), one));
        lo0 = _mm_min_ps(_mm_or_ps(_mm_and_ps(fa, a), _mm_andnot_ps(fa, pos_inf)), lo0);
        lo1 = _mm_min_ps(_mm_or_ps(_mm_and_ps(fb, b), _mm_andnot_ps(fb, pos_inf)), lo1);
        hi0 = _mm_max_ps(_mm_or_ps(_mm_and_ps(fa, a), _mm_andnot_ps(fa, neg_inf)), hi0);
        hi1 = _mm_max_ps(_mm_or_ps(_mm_and_ps(fb, b), _mm_andnot_ps(fb, neg_inf)), hi1);
    }
    _mm_storeu_ps(lanes_lo, _mm_min_ps(lo0, lo1));
    _mm_storeu_ps(lanes_hi, _mm_max_ps(hi0, hi1));
    _mm_storeu_si128((__m128i *)lanes_bad, bad0);
    l = *lo;
    h = *hi;
    for (k = 0; k < 4; k++) {
        if (lanes_lo[k] < l) l = lanes_lo[k];
        if (lanes_hi[k] > h) h = lanes_hi[k];
        nbad += lanes_bad[k];
    }
    *lo = l;
    *hi = h;
    *bad += nbad;
    kiln_stats_f32_scalar(x + i, n - i, lo, hi, bad);
}

#else

static inline void kiln_stats_f32(const float *x, ptrdiff_t n, float *lo, float *hi, ptrdiff_t *bad) {
    kiln_stats_f32_scalar(x, n, lo, hi, bad);
}

#endif
#endif
