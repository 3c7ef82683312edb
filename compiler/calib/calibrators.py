"""Calibrators: from a tensor's statistics to the threshold ``T`` of symmetric int8.

Every calibrator maps a :class:`~kiln.calib.histogram.TensorHistogram` to a
threshold ``T > 0``; the tensor is then quantized with scale ``T / 127`` and
zero point 0 (values beyond ``T`` saturate).

* ``minmax``: ``T = max |x|``.
* ``entropy``: TensorRT's KL-divergence search on the 2048-bin histogram of
  ``|x|`` (:mod:`kiln.calib.kl`).
* ``percentile``: the ``p``-th percentile of ``|x|`` (default 99.99), read
  from the stored histogram with linear interpolation inside the bin.
* ``mse``: the candidate ``T = i * bin_width`` (``i = 1 .. 2048``) that
  minimizes the expected squared quantization error over the 2048-bin
  histogram, each bin's mass at its centre (:func:`kiln.kernels.mse_errors`).

Thresholds never exceed ``max |x|`` (a search on the analysis histogram can
land a little above it) and are never zero: a tensor that is all zeros gets
``T = 1``, which represents it exactly.

Weights are not calibrated: they are quantized per output channel with
``scale = max |w| / 127`` (:mod:`kiln.quant.weights`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from kiln import kernels
from kiln.calib.histogram import ANALYSIS_BINS, CalibrationStats, TensorHistogram
from kiln.calib.kl import kl_threshold
from kiln.errors import UsageError

QMAX = 127
DEFAULT_PERCENTILE = 99.99

CALIBRATORS = ("minmax", "entropy", "percentile", "mse")
"""The calibrator names, as ``--calibrator`` and the ``quantize`` pass spell them."""


@dataclass(frozen=True)
class TensorRange:
    """The calibrated range of one activation tensor.

    Attributes:
        threshold: ``T``: the int8 scale is ``T / 127``.
        min, max: the finite extremes seen.
        count: finite values seen.
    """

    threshold: float
    min: float
    max: float
    count: int

    @property
    def scale(self) -> float:
        return self.threshold / QMAX

    @property
    def absmax(self) -> float:
        return max(abs(self.min), abs(self.max)) if self.count else 0.0


def minmax_threshold(h: TensorHistogram) -> float:
    return h.absmax


def entropy_threshold(h: TensorHistogram, num_bins: int = ANALYSIS_BINS) -> float:
    hist, width = h.analysis(num_bins)
    threshold, _ = kl_threshold(hist, width)
    return threshold


def percentile_threshold(h: TensorHistogram, percentile: float = DEFAULT_PERCENTILE) -> float:
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], not {percentile}")
    used = h.used_bins()
    if used == 0:
        return 0.0
    counts = h.bins[:used].astype(np.float64)
    cdf = np.cumsum(counts)
    target = cdf[-1] * percentile / 100.0
    j = int(np.searchsorted(cdf, target, side="left"))
    j = min(j, used - 1)
    below = cdf[j - 1] if j > 0 else 0.0
    frac = (target - below) / counts[j] if counts[j] > 0 else 1.0
    return (j + min(max(frac, 0.0), 1.0)) * h.bin_width


def mse_threshold(h: TensorHistogram, num_bins: int = ANALYSIS_BINS) -> float:
    hist, width = h.analysis(num_bins)
    if not hist.any():
        return 0.0
    errors = kernels.mse_errors(hist, width, QMAX, 1)
    return (int(np.argmin(errors)) + 1) * width


def threshold(h: TensorHistogram, calibrator: str, *, percentile: float = DEFAULT_PERCENTILE,
              num_bins: int = ANALYSIS_BINS) -> float:
    """The threshold ``calibrator`` picks for ``h`` (clamped to ``(0, max |x|]``)."""
    if calibrator == "minmax":
        t = minmax_threshold(h)
    elif calibrator == "entropy":
        t = entropy_threshold(h, num_bins)
    elif calibrator == "percentile":
        t = percentile_threshold(h, percentile)
    elif calibrator == "mse":
        t = mse_threshold(h, num_bins)
    else:
        raise ValueError(f"unknown calibrator {calibrator!r} (choose from {', '.join(CALIBRATORS)})")
    absmax = h.absmax
    t = min(t, absmax) if absmax > 0 else 0.0
    if not (t > 0 and math.isfinite(t)):
        t = absmax if absmax > 0 else 1.0
    return float(t)


def compute_ranges(stats: CalibrationStats, calibrator: str = "entropy", *,
                   percentile: float = DEFAULT_PERCENTILE, num_bins: int = ANALYSIS_BINS,
                   names: Iterable[str] | None = None, threads: int | None = None) -> dict[str, TensorRange]:
    """The range of every tensor in ``stats`` (or only ``names``), by name.

    The searches release the GIL, so they run on ``threads`` threads
    (default: one per core).
    """
    if calibrator not in CALIBRATORS:
        raise ValueError(f"unknown calibrator {calibrator!r} (choose from {', '.join(CALIBRATORS)})")
    if not stats.histograms and calibrator != "minmax":
        raise UsageError(f"the {calibrator} calibrator needs histograms; these statistics were collected "
                         "for minmax (min and max only)")
    wanted = [n for n in (stats.tensors if names is None else names) if n in stats.tensors]

    def one(name: str) -> TensorRange:
        h = stats.tensors[name]
        t = threshold(h, calibrator, percentile=percentile, num_bins=num_bins)
        return TensorRange(t, h.min if h.count else 0.0, h.max if h.count else 0.0, h.count)

    workers = threads or os.cpu_count() or 1
    if workers <= 1 or len(wanted) < 2 or calibrator in ("minmax", "percentile"):
        return {name: one(name) for name in wanted}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(zip(wanted, pool.map(one, wanted)))
