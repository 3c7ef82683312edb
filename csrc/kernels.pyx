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
