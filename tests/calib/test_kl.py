"""TensorRT's KL search (kiln.calib.kl) against a slow, literal transcription of its documented steps."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from kiln import kernels
from kiln.calib.kl import kl_threshold


def slow_reference(hist: np.ndarray, num_levels: int = 128, start: int = 128) -> list[float]:
    """The algorithm of kiln.calib.kl's docstring, one step per line, in plain Python loops."""
    eps = 1e-4
    hist = [float(v) for v in hist]
    n = len(hist)
    out = []
    for i in range(start, n + 1):
        p = hist[:i]
        p[i - 1] += sum(hist[i:])
        levels = [[] for _ in range(num_levels)]
        for j in range(i):
            levels[j * num_levels // i].append(j)
        q = [0.0] * i
        for members in levels:
            total = sum(hist[j] for j in members)
            nonzero = [j for j in members if p[j] != 0]
            for j in nonzero:
                q[j] = total / len(nonzero)

        def smooth(d: list[float]) -> list[float] | None:
            zeros = sum(1 for v in d if v == 0)
            nonzeros = len(d) - zeros
            if nonzeros == 0:
                return None
            eps1 = eps * zeros / nonzeros
            return [v + eps if v == 0 else v - eps1 for v in d]

        ps, qs = smooth(p), smooth(q)
        if ps is None or qs is None or min(ps) <= 0 or min(qs) <= 0:
            out.append(math.inf)
            continue
        sp, sq = sum(ps), sum(qs)
        out.append(sum((a / sp) * math.log((a / sp) / (b / sq)) for a, b in zip(ps, qs)))
    return out


def _hist(x: np.ndarray, bins: int) -> np.ndarray:
    x = np.abs(x)
    return np.histogram(x, bins=bins, range=(0, x.max()))[0].astype(np.float64)


DISTRIBUTIONS = {
    "normal": lambda r: r.standard_normal(20_000),
    "laplace": lambda r: r.laplace(size=20_000),
    "relu": lambda r: np.maximum(r.standard_normal(20_000), 0),
    "uniform": lambda r: r.uniform(-1, 1, 20_000),
    "outliers": lambda r: np.concatenate([r.standard_normal(20_000), [60.0, -80.0]]),
    "sparse": lambda r: r.standard_normal(40),
}


@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
def test_matches_slow_reference(name):
    """Small histograms (256 bins, 32 levels, from bin 32) keep the pure-Python reference fast."""
    hist = _hist(DISTRIBUTIONS[name](np.random.default_rng(0)), 256)
    want = np.array(slow_reference(hist, 32, 32))
    for got in (kernels.kl_divergences(hist, 32, 32), kernels._numpy_kl_divergences(hist, 32, 32)):
        np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want))
        fin = np.isfinite(want)
        np.testing.assert_allclose(got[fin], want[fin], rtol=1e-9, atol=1e-14)
        assert int(np.argmin(got)) == int(np.argmin(want))


def test_matches_slow_reference_at_tensorrt_size():
    """2048 bins, 128 levels, candidates 128..2048: the full TensorRT setting, on a heavy-tailed sample."""
    hist = _hist(np.random.default_rng(1).laplace(size=50_000), 2048)
    want = np.array(slow_reference(hist[:640].copy(), 128, 128))  # the first 513 candidates of a 640-bin cut
    got = kernels.kl_divergences(hist[:640], 128, 128)
    np.testing.assert_allclose(got, want, rtol=1e-9)


def test_thresholds_on_known_distributions():
    rng = np.random.default_rng(2)
    # Uniform data has nothing to clip: the threshold is (near) the maximum.
    x = rng.uniform(-1, 1, 200_000)
    t, _ = kl_threshold(_hist(x, 2048), 1 / 2048)
    assert t > 0.97
    # A Gaussian with two far outliers: the threshold ignores them (TensorRT clips at ~3-5 sigma).
    x = np.concatenate([rng.standard_normal(200_000), [100.0, -120.0]])
    width = 120 / 2048
    t, div = kl_threshold(_hist(x, 2048), width)
    assert 2.5 < t < 12 and div.shape == (1921,)
    # Threshold is (m + 0.5) * bin_width for m the first minimum.
    m = int(np.argmin(div)) + 128
    assert t == pytest.approx((m + 0.5) * width)


def test_neutral_zero_bin():
    """A ReLU output's zeros must not drag the threshold down (kiln.calib.kl, choice 2)."""
    rng = np.random.default_rng(3)
    x = np.maximum(rng.standard_normal(200_000) * 2, 0)
    x[: 100_000] = 0  # 75% zeros
    hist = _hist(x, 2048)
    width = x.max() / 2048
    with_fix, _ = kl_threshold(hist, width)
    without, _ = kl_threshold(hist, width, neutral_zero=False)
    assert with_fix > without and with_fix > 0.4 * x.max()


def test_degenerate_histograms():
    assert kl_threshold(np.zeros(2048), 1.0)[0] == 0.0
    short = np.zeros(100)
    short[10] = 5
    assert kl_threshold(short, 0.5)[0] == pytest.approx(5.5)
    single = np.zeros(2048)
    single[1000] = 7
    t, _ = kl_threshold(single, 1.0)
    assert t > 0


def test_faster_than_onnxruntime():
    """onnxruntime's Python loop takes ~0.63 s per tensor at 2048 bins (PEERS.md); kiln's must be far faster."""
    hist = _hist(np.random.default_rng(4).standard_normal(100_000), 2048)
    kernels.kl_divergences(hist)
    start = time.perf_counter()
    for _ in range(5):
        kernels.kl_divergences(hist)
    per = (time.perf_counter() - start) / 5
    assert per < (0.063 if kernels.NATIVE else 0.63)
