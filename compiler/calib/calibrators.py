"""Calibrators: from a tensor's statistics to the threshold ``T`` of symmetric int8.

Every calibrator maps a :class:`~kiln.calib.histogram.TensorHistogram` to a
threshold ``T > 0``; the tensor is then quantized with scale ``T / 127`` and
zero point 0 (values beyond ``T`` saturate).

* ``minmax``: ``T = max |x|``.
* ``entropy``: TensorRT's KL-divergence search on the 2048-bin histogram of
  ``|x|`` (:mod:`kiln.calib.kl`), with one guard (``entropy_floor``, below).
* ``percentile``: the ``p``-th percentile of ``|x|`` (default 99.99), read
  from the stored histogram with linear interpolation inside the bin.
* ``mse``: the candidate ``T = i * bin_width`` (``i = 1 .. 2048``) that
  minimizes the expected squared quantization error over the 2048-bin
  histogram, each bin's mass at its centre (:func:`kiln.kernels.mse_errors`).

The entropy guard.  KL divergence compares the *shapes* of the clipped and
quantized distributions, not the energy lost: on a tensor whose mass sits in a
spike near zero while sparse large values carry the signal (after HardSwish,
in squeeze-and-excitation gates, in PP-OCRv4 rec's attention blocks) the
search can pick a threshold that clips nearly all of the signal.  PP-OCRv4 rec
has a tensor whose KL threshold leaves it at 3.6 dB (the whole model: 2.9 dB).
So a tensor whose KL threshold leaves it below ``entropy_floor`` dB
(:data:`ENTROPY_FLOOR_DB`, the tensor's own SQNR estimated on its histogram)
takes the ``mse`` threshold instead, when that is at least
:data:`FALLBACK_GAIN_DB` better; its :class:`TensorRange` records
``method="mse"`` and the int8 report counts them.  ``entropy_floor=0`` is
TensorRT's search alone.  Measured output SQNR on held-out inputs, floor 0 ->
25 dB: PP-OCRv4 rec 2.9 -> 11.5, cls 27.2 -> 39.6, det 15.7 -> 16.1, timm
mobilenetv3_large 2.2 -> 13.4, efficientnet_b0 15.6 -> 21.6; resnet50 and
mobilenetv2 unchanged (no tensor falls back).

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

ENTROPY_FLOOR_DB = 25.0
"""The entropy calibrator's guard (see the module doc): a KL threshold that leaves its tensor below this SQNR
gives way to the mse threshold.  25 dB is where the guard helped every model measured; 20 did less (rec 10.8,
cls 32.6, mobilenetv3 11.7 dB) and 30 began to trade KL's useful clipping away (cls 29.3 dB)."""

FALLBACK_GAIN_DB = 3.0
"""How much better (dB) the mse threshold must be for the guard to take it: a tensor that no threshold
represents well keeps the KL search's choice."""

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
    method: str | None = None
    """The calibrator whose threshold this is, where not the table's own: ``"mse"`` for a tensor the entropy
    guard moved."""

    @property
    def scale(self) -> float:
        return self.threshold / QMAX

    @property
    def absmax(self) -> float:
        return max(abs(self.min), abs(self.max)) if self.count else 0.0


def minmax_threshold(h: TensorHistogram) -> float:
    return h.absmax


def entropy_threshold(h: TensorHistogram, num_bins: int = ANALYSIS_BINS) -> float:
    """TensorRT's KL search alone (no guard)."""
    return guarded_entropy_threshold(h, 0.0, num_bins)[0]


def histogram_sqnr_db(hist: np.ndarray, bin_width: float, threshold: float) -> float:
    """The expected SQNR (dB) of symmetric int8 with ``threshold`` on a tensor with this histogram of ``|x|``
    (each bin's mass at its centre, as in the mse search); +inf for a tensor without energy."""
    h = np.asarray(hist, dtype=np.float64)
    centres = (np.arange(h.shape[0], dtype=np.float64) + 0.5) * bin_width
    signal = float(np.dot(h, centres * centres))
    if not signal > 0:
        return math.inf
    s = threshold / QMAX
    err = centres - np.minimum(np.rint(centres / s), QMAX) * s
    noise = float(np.dot(h, err * err))
    return 10.0 * math.log10(signal / noise) if noise > 0 else math.inf


def guarded_entropy_threshold(h: TensorHistogram, floor_db: float = ENTROPY_FLOOR_DB,
                              num_bins: int = ANALYSIS_BINS) -> tuple[float, str | None]:
    """The KL threshold, or the mse threshold where the KL one leaves the tensor below ``floor_db`` and the
    mse one is :data:`FALLBACK_GAIN_DB` better; and ``"mse"`` when it fell back (else ``None``)."""
    hist, width = h.analysis(num_bins)
    t, _ = kl_threshold(hist, width)
    if floor_db <= 0 or not t > 0:
        return t, None
    at_kl = histogram_sqnr_db(hist, width, t)
    if at_kl >= floor_db:
        return t, None
    best = _mse_best(hist, width)  # only for the few tensors below the floor
    if histogram_sqnr_db(hist, width, best) >= at_kl + FALLBACK_GAIN_DB:
        return best, "mse"
    return t, None


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
    return _mse_best(hist, width) if hist.any() else 0.0


def _mse_best(hist: np.ndarray, width: float) -> float:
    """The candidate ``i * width`` with the least expected quantization MSE over ``hist``."""
    return (int(np.argmin(kernels.mse_errors(hist, width, QMAX, 1))) + 1) * width


def threshold(h: TensorHistogram, calibrator: str, *, percentile: float = DEFAULT_PERCENTILE,
              num_bins: int = ANALYSIS_BINS, entropy_floor: float = ENTROPY_FLOOR_DB) -> float:
    """The threshold ``calibrator`` picks for ``h`` (clamped to ``(0, max |x|]``)."""
    return choose_threshold(h, calibrator, percentile=percentile, num_bins=num_bins,
                            entropy_floor=entropy_floor)[0]


def choose_threshold(h: TensorHistogram, calibrator: str, *, percentile: float = DEFAULT_PERCENTILE,
                     num_bins: int = ANALYSIS_BINS, entropy_floor: float = ENTROPY_FLOOR_DB
                     ) -> tuple[float, str | None]:
    """:func:`threshold`, and the calibrator that gave it where not ``calibrator`` (the entropy guard's
    ``"mse"``)."""
    method = None
    if calibrator == "minmax":
        t = minmax_threshold(h)
    elif calibrator == "entropy":
        t, method = guarded_entropy_threshold(h, entropy_floor, num_bins)
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
    return float(t), method


def compute_ranges(stats: CalibrationStats, calibrator: str = "entropy", *,
                   percentile: float = DEFAULT_PERCENTILE, num_bins: int = ANALYSIS_BINS,
                   names: Iterable[str] | None = None, threads: int | None = None,
                   entropy_floor: float = ENTROPY_FLOOR_DB) -> dict[str, TensorRange]:
    """The range of every tensor in ``stats`` (or only ``names``), by name.  ``entropy_floor``: the entropy
    guard (module doc; 0: TensorRT's search alone).

    The searches release the GIL, so they run on ``threads`` threads
    (default: one per core).
    """
    if calibrator not in CALIBRATORS:
        raise ValueError(f"unknown calibrator {calibrator!r} (choose from {', '.join(CALIBRATORS)})")
    if not (entropy_floor >= 0 and math.isfinite(entropy_floor)):
        raise UsageError(f"entropy floor {entropy_floor}: expected decibels >= 0 (0: no guard)")
    if not stats.histograms and calibrator != "minmax":
        raise UsageError(f"the {calibrator} calibrator needs histograms; these statistics were collected "
                         "for minmax (min and max only)")
    wanted = [n for n in (stats.tensors if names is None else names) if n in stats.tensors]

    def one(name: str) -> TensorRange:
        h = stats.tensors[name]
        t, method = choose_threshold(h, calibrator, percentile=percentile, num_bins=num_bins,
                                     entropy_floor=entropy_floor)
        return TensorRange(t, h.min if h.count else 0.0, h.max if h.count else 0.0, h.count, method)

    workers = threads or os.cpu_count() or 1
    if workers <= 1 or len(wanted) < 2 or calibrator in ("minmax", "percentile"):
        return {name: one(name) for name in wanted}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(zip(wanted, pool.map(one, wanted)))
