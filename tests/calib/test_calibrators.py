"""Calibrators: minmax, entropy, percentile, mse on known distributions, and the tables they feed."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from kiln.calib import CalibrationResult, LayerInfo, TensorRange, WeightScales, read_json
from kiln.calib.calibrators import (
    CALIBRATORS,
    ENTROPY_FLOOR_DB,
    compute_ranges,
    entropy_threshold,
    guarded_entropy_threshold,
    histogram_sqnr_db,
    threshold,
)
from kiln.calib.histogram import CalibrationStats, TensorHistogram
from kiln.errors import UsageError


def _hist(x: np.ndarray) -> TensorHistogram:
    h = TensorHistogram()
    h.observe(x.astype(np.float32))
    return h


def test_minmax_is_absmax():
    h = _hist(np.array([-3.5, 1.0, 2.0]))
    assert threshold(h, "minmax") == 3.5


def test_percentile_of_uniform():
    x = np.random.default_rng(0).uniform(-10, 10, 1_000_000)
    h = _hist(x)
    assert threshold(h, "percentile", percentile=90.0) == pytest.approx(9.0, rel=2e-3)
    assert threshold(h, "percentile", percentile=100.0) == pytest.approx(10.0, rel=1e-3)
    assert threshold(h, "percentile") <= h.absmax


def test_mse_clips_heavy_tails_but_not_uniform():
    rng = np.random.default_rng(1)
    uniform = _hist(rng.uniform(-1, 1, 500_000))
    assert threshold(uniform, "mse") > 0.95
    laplace = _hist(rng.laplace(size=500_000))
    t = threshold(laplace, "mse")
    assert 3 < t < 0.8 * laplace.absmax  # clips the sparse tail, keeps the bulk


def test_mse_minimizes_the_measured_error():
    """The chosen threshold's real quantization MSE is close to the best of a brute-force sweep."""
    x = np.random.default_rng(2).laplace(size=200_000).astype(np.float32)
    h = _hist(x)
    t = threshold(h, "mse")

    def mse(T: float) -> float:
        s = T / 127
        return float(np.mean((np.clip(np.rint(x / s), -127, 127) * s - x) ** 2))

    best = min(mse(T) for T in np.linspace(1, float(np.abs(x).max()), 400))
    assert mse(t) <= best * 1.05


def _int8_sqnr_db(x: np.ndarray, t: float) -> float:
    s = t / 127
    q = np.clip(np.rint(x / s), -127, 127) * s
    return float(10 * np.log10(np.sum(x.astype(np.float64) ** 2) / np.sum((x - q).astype(np.float64) ** 2)))


def _spiky(seed: int = 3) -> np.ndarray:
    """Most values in a narrow spike at zero, the energy in a few hundred large ones: where KL clips the signal
    away (a HardSwish output's shape)."""
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(0, 0.01, 100_000), rng.normal(0, 5, 300)]).astype(np.float32)


def test_histogram_sqnr_matches_quantizing_the_data():
    for x in (_spiky(), np.random.default_rng(4).laplace(size=200_000).astype(np.float32)):
        h = _hist(x)
        hist, width = h.analysis()
        for t in (0.5, 2.0, 0.5 * h.absmax, h.absmax):
            assert histogram_sqnr_db(hist, width, t) == pytest.approx(_int8_sqnr_db(x, t), abs=1.0)
    assert histogram_sqnr_db(np.zeros(2048), 0.1, 1.0) == float("inf")


def test_entropy_guard_takes_the_mse_threshold_where_kl_clips_the_signal_away():
    x = _spiky()
    h = _hist(x)
    kl = entropy_threshold(h)
    assert _int8_sqnr_db(x, kl) < 5  # TensorRT's search alone keeps the spike and clips the energy
    t, method = guarded_entropy_threshold(h)
    assert method == "mse" and t == pytest.approx(threshold(h, "mse"))
    assert _int8_sqnr_db(x, t) > _int8_sqnr_db(x, kl) + 10
    assert threshold(h, "entropy") == t
    # floor 0: TensorRT's search alone
    assert guarded_entropy_threshold(h, 0.0) == (kl, None)
    assert threshold(h, "entropy", entropy_floor=0) == kl
    # a floor under the KL threshold's SQNR leaves it alone
    assert guarded_entropy_threshold(h, _int8_sqnr_db(x, kl) - 2)[1] is None


@pytest.mark.parametrize("make", [lambda r: r.normal(size=200_000), lambda r: r.laplace(size=200_000),
                                  lambda r: np.maximum(r.normal(size=200_000), 0)])
def test_entropy_guard_leaves_ordinary_tensors_to_the_kl_search(make):
    h = _hist(make(np.random.default_rng(5)).astype(np.float32))
    hist, width = h.analysis()
    assert histogram_sqnr_db(hist, width, entropy_threshold(h)) > ENTROPY_FLOOR_DB
    assert guarded_entropy_threshold(h) == (entropy_threshold(h), None)


def test_compute_ranges_records_which_tensors_the_guard_moved():
    stats = CalibrationStats()
    stats.observe("spiky", _spiky())
    stats.observe("normal", np.random.default_rng(6).normal(size=100_000).astype(np.float32))
    ranges = compute_ranges(stats, "entropy")
    assert ranges["spiky"].method == "mse" and ranges["normal"].method is None
    assert compute_ranges(stats, "entropy", entropy_floor=0)["spiky"].method is None
    assert compute_ranges(stats, "mse")["spiky"].method is None
    with pytest.raises(UsageError, match="entropy floor"):
        compute_ranges(stats, "entropy", entropy_floor=-1)
    r = CalibrationResult("entropy", 1, dict(ranges), output_sqnr=20.0)
    assert "1 of 2 activations took the mse threshold" in r.report()


@pytest.mark.parametrize("calibrator", CALIBRATORS)
def test_all_zero_and_positive_thresholds(calibrator):
    assert threshold(_hist(np.zeros(100)), calibrator) == 1.0
    h = _hist(np.random.default_rng(3).standard_normal(50_000))
    t = threshold(h, calibrator)
    assert 0 < t <= h.absmax


def test_unknown_calibrator():
    with pytest.raises(ValueError, match="unknown calibrator"):
        threshold(_hist(np.ones(3)), "kl")


def test_compute_ranges_threads_agree():
    stats = CalibrationStats()
    rng = np.random.default_rng(4)
    for i in range(6):
        stats.observe(f"t{i}", rng.laplace(size=10_000) * (i + 1))
    one = compute_ranges(stats, "entropy", threads=1)
    many = compute_ranges(stats, "entropy", threads=4)
    assert one == many and set(one) == {f"t{i}" for i in range(6)}
    assert compute_ranges(stats, "minmax", names=["t1"]).keys() == {"t1"}


def _result() -> CalibrationResult:
    r = CalibrationResult("entropy", 12)
    r.ranges["x"] = TensorRange(2.54, -1.0, 3.0, 100)
    r.ranges["conv1_out"] = TensorRange(1.27, 0.0, 5.0, 100, "mse")
    r.weights["w1"] = WeightScales(0, (0.01, 0.02))
    r.layers["conv1"] = LayerInfo("Conv", ("x",), "w1")
    r.sensitivity["conv1"] = 31.5
    return r


def test_json_round_trip(tmp_path):
    r = _result()
    path = tmp_path / "m.calib.json"
    path.write_text(r.to_json())
    doc = json.loads(path.read_text())
    assert doc["format"] == "kiln-calibration" and doc["activations"]["x"]["scale"] == pytest.approx(2.54 / 127)
    back = read_json(path)
    assert back.ranges == r.ranges and back.weights == r.weights and back.calibrator == "entropy"


def test_json_refuses_other_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"activations": {}}')
    with pytest.raises(UsageError, match="not a kiln calibration table"):
        read_json(bad)
    bad.write_text('{"format": "kiln-calibration", "version": 1, "calibrator": "x", "samples": 1, '
                   '"activations": {"t": {"threshold": -1, "min": 0, "max": 0, "count": 0}}}')
    with pytest.raises(UsageError, match="malformed"):
        read_json(bad)


def test_tensorrt_cache_format():
    text = _result().to_tensorrt_cache()
    lines = text.splitlines()
    assert lines[0] == "TRT-100000-EntropyCalibration2"
    entries = dict(line.split(": ") for line in lines[1:])
    assert struct.unpack(">f", bytes.fromhex(entries["x"]))[0] == pytest.approx(2.54 / 127)
    r = _result()
    r.calibrator = "minmax"
    assert r.to_tensorrt_cache().startswith("TRT-100000-MinMaxCalibration\n")


def test_ncnn_table_format():
    lines = _result().to_ncnn_table().splitlines()
    assert lines[0].split() == ["conv1_param_0", "100.000000", "50.000000"]
    name, scale = lines[1].split()
    assert name == "conv1" and float(scale) == pytest.approx(127 / 2.54, rel=1e-6)
