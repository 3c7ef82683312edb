"""Calibrators: minmax, entropy, percentile, mse on known distributions, and the tables they feed."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from kiln.calib import CalibrationResult, LayerInfo, TensorRange, WeightScales, read_json
from kiln.calib.calibrators import CALIBRATORS, compute_ranges, threshold
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
    r.ranges["conv1_out"] = TensorRange(1.27, 0.0, 5.0, 100)
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
