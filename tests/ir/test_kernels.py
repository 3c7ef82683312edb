"""The Cython kernels and their numpy twins agree."""

import numpy as np
import pytest

from kiln import kernels
from kiln.ir.stats import constant_stats
from kiln.ir.tensor import Tensor


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, np.int8, np.int32, np.uint8])
@pytest.mark.parametrize("shape,axis", [((16, 3, 3, 3), 0), ((5, 7), 1), ((4,), 0), ((2, 0, 3), 0), ((3, 1, 1, 9), 3)])
def test_native_matches_numpy(dtype, shape, axis):
    rng = np.random.default_rng(0)
    arr = (rng.standard_normal(shape) * 50).astype(dtype)
    expected = kernels._numpy_per_channel_absmax(arr, axis)
    got = kernels.per_channel_absmax(arr, axis)
    np.testing.assert_array_equal(got, expected)


def test_native_kernel_is_built():
    # The package is built with its extension in every supported install; if
    # this fails, setup.py's Cython build silently fell back.
    assert kernels.NATIVE, "kiln._kernels was not built (is Cython installed at build time?)"


def test_nan_propagates():
    arr = np.array([[1.0, np.nan], [2.0, -3.0]], dtype=np.float32)
    got = kernels.per_channel_absmax(arr, 0)
    assert np.isnan(got[0]) and got[1] == 3.0
    assert np.isnan(kernels._numpy_per_channel_absmax(arr, 0)[0])


def test_constant_stats_counts_zero_channels():
    w = np.ones((4, 2, 3, 3), dtype=np.float32)
    w[1] = 0
    w[3] *= -7
    stats = constant_stats(Tensor.from_numpy(w))
    assert stats is not None
    assert stats.zero_channels == 1 and stats.absmax == 7.0 and stats.channel_absmax_min == 0.0
