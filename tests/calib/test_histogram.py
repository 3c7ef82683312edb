"""Histograms with power-of-two range growth merge exactly: across batches, orders and processes."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
from kiln.calib.histogram import MIN_EXPONENT, CalibrationStats, TensorHistogram, exponent_for, merge_all


def _batches(seed: int = 0) -> list[np.ndarray]:
    """Batches whose magnitudes grow and shrink, so the range grows several times mid-stream."""
    rng = np.random.default_rng(seed)
    scales = [1e-3, 0.5, 40.0, 3.0, 1e4, 0.01, 250.0]
    out = [(rng.standard_normal(int(rng.integers(1, 5000))) * s).astype(np.float32) for s in scales]
    out.append(np.zeros(10, dtype=np.float32))
    out.append(np.array([np.nan, np.inf, 7.0], dtype=np.float32))
    return out


def _one_shot(batches: list[np.ndarray], num_bins: int = 1 << 14) -> TensorHistogram:
    """The histogram computed directly at the final exponent, from all the data at once."""
    data = np.concatenate([b.astype(np.float64) for b in batches])
    finite = data[np.isfinite(data)]
    h = TensorHistogram(num_bins)
    e = exponent_for(float(np.abs(finite).max()), num_bins)
    idx = np.floor(np.abs(finite) / 2.0**e).astype(np.int64)
    h.bins[:] = np.bincount(idx, minlength=num_bins)
    h.exponent, h.min, h.max, h.count = e, float(finite.min()), float(finite.max()), finite.size
    h.nonfinite = int(data.size - finite.size)
    return h


def test_exponent_for():
    assert exponent_for(0.0) == MIN_EXPONENT
    for absmax in (1e-30, 0.3, 1.0, 16384.0, 16383.9, 3e9):
        e = exponent_for(absmax)
        assert absmax < 16384 * 2.0**e and not absmax < 16384 * 2.0 ** (e - 1)


def test_streaming_equals_one_shot():
    batches = _batches()
    h = TensorHistogram()
    for b in batches:
        h.observe(b)
    assert h == _one_shot(batches)
    assert h.nonfinite == 2 and h.count == sum(np.isfinite(b).sum() for b in batches)


@pytest.mark.parametrize("seed", range(5))
def test_order_and_split_do_not_matter(seed):
    batches = _batches(seed)
    rng = np.random.default_rng(100 + seed)
    reference = TensorHistogram()
    for b in batches:
        reference.observe(b)
    # Re-split the same data at random points, in a random order, over 3 partial histograms.
    data = np.concatenate(batches)
    cuts = np.sort(rng.choice(data.size, size=6, replace=False))
    pieces = np.split(data, cuts)
    rng.shuffle(pieces)
    parts = [TensorHistogram() for _ in range(3)]
    for i, piece in enumerate(pieces):
        parts[i % 3].observe(piece)
    merged = parts[2].copy().merge(parts[0]).merge(parts[1])
    assert merged == reference
    assert parts[0].copy().merge(parts[1]).merge(parts[2]) == reference


def test_coarsening_is_the_floor_identity():
    """floor(floor(|x| / 2**e) / 2**d) == floor(|x| / 2**(e + d)): regrouping never moves a value."""
    rng = np.random.default_rng(7)
    x = np.abs(rng.standard_normal(100_000) * 100).astype(np.float32)
    fine = TensorHistogram(1 << 12)
    fine.observe(x)
    for d in (1, 2, 5):
        coarse = fine.copy()
        coarse.grow(fine.exponent + d)
        direct = np.bincount(np.floor(x.astype(np.float64) / 2.0 ** (fine.exponent + d)).astype(np.int64),
                             minlength=1 << 12)
        np.testing.assert_array_equal(coarse.bins, direct)


def _shard_state(args: tuple[int, int]) -> dict:
    shard, shards = args
    stats = CalibrationStats()
    for i, b in enumerate(_batches(3)):
        if i % shards == shard:
            stats.observe("t", b)
            stats.observe("u", b * 2 + 1)
    stats.samples = 1
    return stats.state()


def test_exact_merge_across_processes():
    whole = CalibrationStats()
    for b in _batches(3):
        whole.observe("t", b)
        whole.observe("u", b * 2 + 1)
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        states = list(pool.map(_shard_state, [(0, 2), (1, 2)]))
    merged = merge_all(CalibrationStats.from_state(s) for s in states)
    assert merged.samples == 2
    for name in ("t", "u"):
        assert merged[name] == whole[name]


def test_state_and_npz_round_trip(tmp_path):
    stats = CalibrationStats()
    for b in _batches(1):
        stats.observe("a/b:0", b)
    stats.observe("empty", np.array([np.nan], dtype=np.float32))
    stats.samples = 9
    again = CalibrationStats.from_state(stats.state())
    assert again["a/b:0"] == stats["a/b:0"] and again.samples == 9
    stats.save(str(tmp_path / "s.npz"))
    loaded = CalibrationStats.load(str(tmp_path / "s.npz"))
    assert loaded["a/b:0"] == stats["a/b:0"] and loaded["empty"].nonfinite == 1 and loaded.samples == 9


def test_analysis_histogram_is_exact_regrouping():
    h = TensorHistogram()
    x = np.random.default_rng(0).standard_normal(100_000).astype(np.float32)
    h.observe(x)
    hist, width = h.analysis(2048)
    assert hist.shape == (2048,) and hist.sum() == h.count
    group = width / h.bin_width
    assert group == int(group) and group >= 1
    assert 2048 * width > h.absmax >= 0.8 * 2048 * width - width  # at least 80% of the bins are in range


def test_merge_refuses_different_bin_counts():
    with pytest.raises(ValueError):
        TensorHistogram(1024).merge(TensorHistogram(2048))
    with pytest.raises(ValueError):
        TensorHistogram(1000)
