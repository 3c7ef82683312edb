"""The calibration kernels: Cython (kiln._kernels) and numpy twins agree, and the fallback works."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from kiln import kernels

native = pytest.mark.skipif(not kernels.NATIVE, reason="kiln._kernels is not built")


def _data(kind: str, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "normal":
        return rng.standard_normal(n)
    if kind == "relu":
        return np.maximum(rng.standard_normal(n), 0)
    if kind == "laplace":
        return rng.laplace(size=n)
    if kind == "bimodal":
        return np.concatenate([rng.normal(-3, 0.3, n // 2), rng.normal(5, 1, n - n // 2)])
    if kind == "spiky":
        x = np.zeros(n)
        x[:: 97] = rng.uniform(0, 100, x[::97].shape)
        return x
    raise AssertionError(kind)


@native
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_array_stats_twins(dtype):
    x = (_data("normal", 10_001) * 7).astype(dtype)
    x[5], x[17], x[99] = np.nan, np.inf, -np.inf
    assert kernels._native.array_stats(x) == kernels._numpy_array_stats(x)
    lo, hi, absmax, finite, bad = kernels.array_stats(x)
    assert (finite, bad) == (9998, 3) and absmax == max(-lo, hi)
    empty = kernels.array_stats(np.array([np.nan], dtype=dtype))
    assert empty[2:] == (0.0, 0, 1)


@native
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("exponent", [-12, -3, 0, 4])
def test_hist_add_twins(dtype, exponent):
    x = (_data("laplace", 50_000, 3) * 2.0**(exponent + 8)).astype(dtype)
    x[::1000] = np.nan
    a = np.zeros(4096, dtype=np.int64)
    b = np.zeros(4096, dtype=np.int64)
    kernels._native.hist_add(a, x, exponent)
    kernels._numpy_hist_add(b, x, exponent)
    np.testing.assert_array_equal(a, b)
    assert a.sum() == np.isfinite(x).sum()


@native
@pytest.mark.parametrize("shift", [0, 1, 3, 11, 12, 40, 70])
def test_hist_coarsen_twins(shift):
    rng = np.random.default_rng(shift)
    h = rng.integers(0, 1000, 4096).astype(np.int64)
    a, b = h.copy(), h.copy()
    kernels._native.hist_coarsen(a, shift)
    kernels._numpy_hist_coarsen(b, shift)
    np.testing.assert_array_equal(a, b)
    assert a.sum() == h.sum()


@native
@pytest.mark.parametrize("kind", ["normal", "relu", "laplace", "bimodal", "spiky"])
def test_kl_and_mse_twins(kind):
    x = np.abs(_data(kind, 200_000, 1))
    hist = np.histogram(x, bins=2048, range=(0, x.max()))[0].astype(np.float64)
    a = kernels._native.kl_divergences(hist, 128, 128)
    b = kernels._numpy_kl_divergences(hist, 128, 128)
    assert a.shape == b.shape == (2048 - 128 + 1,)
    finite = np.isfinite(b)
    np.testing.assert_array_equal(np.isfinite(a), finite)
    np.testing.assert_allclose(a[finite], b[finite], rtol=1e-9, atol=1e-13)
    assert np.argmin(a) == np.argmin(b)
    width = x.max() / 2048
    m1 = kernels._native.mse_errors(hist, width, 127, 1)
    m2 = kernels._numpy_mse_errors(hist, width, 127, 1)
    np.testing.assert_allclose(m1, m2, rtol=1e-9, atol=1e-18)
    assert np.argmin(m1) == np.argmin(m2)


def test_numpy_fallback_in_a_fresh_process():
    """KILN_NO_KERNELS=1 gives the numpy twins, and calibration still works with them."""
    code = (
        "import numpy as np\n"
        "from kiln import kernels\n"
        "from kiln.calib.histogram import TensorHistogram\n"
        "from kiln.calib.calibrators import threshold\n"
        "assert not kernels.NATIVE\n"
        "h = TensorHistogram(); h.observe(np.random.default_rng(0).standard_normal(100000).astype('f4'))\n"
        "print(repr(h.exponent), h.bins.sum(), *(threshold(h, c) for c in ('minmax', 'entropy', 'percentile', 'mse')))\n"
    )
    env = dict(os.environ, KILN_NO_KERNELS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    from kiln.calib.calibrators import threshold
    from kiln.calib.histogram import TensorHistogram

    h = TensorHistogram()
    h.observe(np.random.default_rng(0).standard_normal(100000).astype("f4"))
    here = [repr(h.exponent), str(h.bins.sum())] + [str(threshold(h, c)) for c in ("minmax", "entropy", "percentile", "mse")]
    assert out.split() == here


def _analysis(x: np.ndarray, bins: int = 2048) -> np.ndarray:
    x = np.abs(x)
    return np.histogram(x, bins=bins, range=(0, x.max()))[0].astype(np.float64)


@native
@pytest.mark.parametrize("case", ["dense", "sparse", "few-values", "fractional", "tiny-counts", "huge-counts",
                                  "small-fractions", "negative"])
@pytest.mark.parametrize("levels,start", [(128, 128), (32, 32), (128, 300), (7, 64)])
def test_kl_prefix_sum_form_matches_the_bin_by_bin_twin(case, levels, start):
    """The O(levels) kernel against the numpy twin, which builds P and Q for every candidate.  The kernel has
    three ways to sum a candidate's levels: the level table (TensorRT's 128 levels: widths up to 32 bins),
    level by level with one log each (wider levels, or Q's smoothing too large for the table's series), and
    bin by bin (P's smoothing too large for its series, or negative counts); the cases reach all three."""
    rng = np.random.default_rng(7)
    if case == "small-fractions":  # counts far below eps1: bin by bin
        hist = _analysis(rng.standard_normal(2000)) * 1e-3
    elif case == "negative":  # no table; bin by bin past the negative count
        hist = _analysis(rng.standard_normal(50_000))
        hist[200] = -3.0
    elif case == "dense":
        hist = _analysis(rng.laplace(size=500_000))
    elif case == "sparse":  # most bins empty: eps1/p is large and candidates go bin by bin
        hist = _analysis(np.concatenate([rng.standard_normal(3000), rng.uniform(0, 40, 30)]))
    elif case == "few-values":  # Q equals P for many candidates: divergences at rounding noise, read as 0
        hist = _analysis(np.round(rng.standard_normal(3000) * 3))
    elif case == "fractional":
        hist = _analysis(rng.standard_normal(200_000)) * 0.37 + 0.01
    elif case == "tiny-counts":
        hist = _analysis(rng.standard_normal(400))
    else:
        hist = _analysis(rng.standard_normal(100_000)) * 1e7
    a = kernels._native.kl_divergences(hist, levels, start)
    b = kernels._numpy_kl_divergences(hist, levels, start)
    assert a.shape == b.shape
    np.testing.assert_array_equal(np.isfinite(a), np.isfinite(b))
    finite = np.isfinite(b)
    np.testing.assert_allclose(a[finite], b[finite], rtol=1e-9, atol=1e-12)
    assert np.argmin(a) == np.argmin(b)


@native
@pytest.mark.parametrize("qmax", [1, 7, 127])
@pytest.mark.parametrize("start", [1, 5, 300])
@pytest.mark.parametrize("case", ["relu", "spiky", "fractional", "huge-total"])
def test_mse_level_sums_match_the_bin_by_bin_twin(qmax, start, case):
    """Integer counts take the O(qmax) level-sum path, others the bin-by-bin loop; both equal the twin."""
    rng = np.random.default_rng(qmax + start)
    x = np.maximum(rng.standard_normal(300_000), 0) if case != "spiky" else np.abs(_data("spiky", 100_000, 2))
    hist = _analysis(x, 1024)
    if case == "fractional":
        hist = hist * 0.5 + 0.25
    elif case == "huge-total":  # past the exact int64 range: the bin-by-bin loop
        hist = hist * 1e13
    width = float(x.max()) / 1024
    a = kernels._native.mse_errors(hist, width, qmax, start)
    b = kernels._numpy_mse_errors(hist, width, qmax, start)
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=0)
    assert np.argmin(a) == np.argmin(b)


@native
def test_hist_add_used_is_only_a_hint():
    """Values past the ``used`` scratch still land in their bins (the careful loop), and so do inf/NaN neighbours."""
    rng = np.random.default_rng(3)
    x = (rng.laplace(size=10_001) * 100).astype(np.float32)
    x[7] = np.inf
    expected = np.zeros(1 << 14, dtype=np.int64)
    kernels._numpy_hist_add(expected, x, -2)
    for used in (0, 1, 5, 300, 1 << 14, 1 << 20):
        got = np.zeros(1 << 14, dtype=np.int64)
        kernels._native.hist_add(got, x, -2, used)
        np.testing.assert_array_equal(got, expected)


def test_array_stats_fast_path_matches_the_kernels():
    x = (np.random.default_rng(5).standard_normal(4097) * 3).astype(np.float32)
    assert kernels.array_stats(x) == kernels._numpy_array_stats(x)
    x[100] = np.nan
    assert kernels.array_stats(x) == kernels._numpy_array_stats(x)
    zeros = np.array([-0.0, 0.0, -0.0], dtype=np.float32)
    lo, hi, absmax, finite, bad = kernels.array_stats(zeros)
    assert (lo, hi, absmax, finite, bad) == (0.0, 0.0, 0.0, 3, 0) and str(lo) == "0.0"


@native
@pytest.mark.parametrize("size", [3, 500, 70_000])  # straight into the histogram, and through the scratch
@pytest.mark.parametrize("exponent", [-135, -128, -127, -20, 0, 100, 112])
def test_hist_add_float32_paths(size, exponent):
    """float32 data is binned in float32 (vectorized) where 2**-exponent is a normal float32, in double
    elsewhere; small arrays count straight into the histogram.  Every way gives the numpy twin's bins,
    with inf/NaN skipped, values past ``used`` placed, and products that overflow float32 clamped."""
    rng = np.random.default_rng(size + abs(exponent))
    x = (rng.laplace(size=size) * 2.0 ** (exponent + 10)).astype(np.float32)
    x[:: max(1, size // 3)] = np.float32(np.ldexp(4095.5, exponent))  # the last bin's edge
    if size > 3:
        x[0], x[1], x[2] = np.finfo(np.float32).max, np.nan, -np.inf  # |x| * scale may overflow float32
    expected = np.zeros(4096, dtype=np.int64)
    kernels._numpy_hist_add(expected, x, exponent)
    for used in (0, 64, 4096):
        got = np.zeros(4096, dtype=np.int64)
        kernels._native.hist_add(got, x, exponent, used)
        np.testing.assert_array_equal(got, expected)
    assert expected.sum() == np.isfinite(x).sum()


def _observe_cases():
    """(name, data, starting exponent, starting histogram) cases for the one-pass kernel."""
    rng = np.random.default_rng(11)
    big = 8 * 4096 + 5000  # past the scratch threshold for 4096 bins
    growing = np.concatenate([rng.laplace(size=big // 4) * 0.01 * 10.0 ** k for k in range(4)]).astype(np.float32)
    special = (rng.standard_normal(big) * 3).astype(np.float32)
    special[[7, 9000, 20_000, 33_000]] = [np.nan, np.inf, -np.inf, np.finfo(np.float32).max]
    tiny = (rng.standard_normal(20_000) * 2.0 ** -130).astype(np.float32)  # subnormal: a double-precision width
    zeros = np.zeros(50_000, dtype=np.float32)
    zeros[::3] = -0.0
    relu = np.maximum(rng.standard_normal(big), 0).astype(np.float32)
    prior = np.zeros(4096, dtype=np.int64)
    prior[:3000] = rng.integers(0, 50, 3000)
    return [
        ("growing blocks", growing, -160, None),
        ("inf, nan, float32 max", special, -160, None),
        ("subnormals", tiny, -160, None),
        ("subnormals then growth", np.concatenate([tiny, growing]), -160, None),
        ("signed zeros", zeros, -160, None),
        ("relu, small", relu[:1000], -160, None),
        ("relu into a coarser histogram", relu, 3, prior),
        ("relu into a finer histogram", relu, -20, prior),
        ("all nan", np.full(100, np.nan, dtype=np.float32), -5, prior),
        ("float64", growing.astype(np.float64), -160, None),
    ]


@pytest.mark.parametrize("case", _observe_cases(), ids=lambda c: c[0])
def test_hist_observe_twins(case):
    """The one-pass kernel (statistics and counting per cached block, growing the width mid-array) leaves the
    bins, exponent and statistics of the twin, which takes statistics, grows, then counts the whole array;
    so does kernels.hist_observe, which gives a histogram's first data to the twin's order."""
    _, x, exponent, start = case
    flat = kernels._flat_real(x)
    want_hist = np.zeros(4096, dtype=np.int64) if start is None else start.copy()
    e, lo, hi, finite, bad = kernels._numpy_hist_observe(want_hist, flat, exponent, -160)
    ways = {"hist_observe": lambda h: kernels.hist_observe(h, x, exponent, -160)}
    if kernels.NATIVE and flat.dtype == np.float32:
        ways["native kernel"] = lambda h: kernels._native.hist_observe(h, flat, exponent, -160, kernels._scratch(4096))
    for way, observe in ways.items():
        hist = np.zeros(4096, dtype=np.int64) if start is None else start.copy()
        got = observe(hist)
        assert got[0] == e and tuple(got[3:]) == (finite, bad), way
        if finite:
            assert (got[1] + 0.0, got[2] + 0.0) == (lo, hi), way
            if way == "hist_observe":
                assert str(got[1]) != "-0.0" and str(got[2]) != "-0.0"
        np.testing.assert_array_equal(hist, want_hist, err_msg=way)
        assert hist.sum() == finite + (0 if start is None else start.sum())
        assert not kernels._scratch(4096).any(), way  # the scratch is left zeroed for the next call


def test_stats_header_scalar_and_sse2_paths_agree(tmp_path):
    """csrc/stats_simd.h compiled as on x86-64 (SSE2) and as on other CPUs (its scalar loop): the same min, max
    and non-finite count on data with NaN, infinities and a length that leaves a tail."""
    import shutil
    import sysconfig
    from pathlib import Path

    cc = sysconfig.get_config_var("CC") or "cc"
    if shutil.which(cc.split()[0]) is None:
        pytest.skip(f"no C compiler ({cc}) to build the header's test program")
    header = Path(__file__).resolve().parents[2] / "csrc"
    program = tmp_path / "stats.c"
    program.write_text(
        '#include <stdio.h>\n#include "stats_simd.h"\n'
        "int main(void) {\n"
        "  float x[1003]; ptrdiff_t bad = 0; float lo = INFINITY, hi = -INFINITY; int i;\n"
        "  for (i = 0; i < 1003; i++) x[i] = (float)((i * 7919) % 2003) - 1001.5f;\n"
        "  x[5] = NAN; x[600] = INFINITY; x[1001] = -INFINITY; x[1002] = -2000.25f;\n"
        "  kiln_stats_f32(x, 1003, &lo, &hi, &bad);\n"
        '  printf("%.9g %.9g %td\\n", lo, hi, bad);\n  return 0;\n}\n'
    )
    outputs = []
    for flags in ([], ["-U__SSE2__", "-U_M_X64"]):
        exe = tmp_path / f"stats{len(outputs)}"
        subprocess.run([*cc.split(), "-O2", f"-I{header}", *flags, str(program), "-o", str(exe), "-lm"], check=True)
        outputs.append(subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split())
    assert outputs[0] == outputs[1] == ["-2000.25", "1000.5", "3"]
