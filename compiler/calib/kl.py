"""TensorRT's entropy calibration: the KL-divergence threshold search.

The algorithm of Szymon Migacz, "8-bit Inference with TensorRT" (NVIDIA,
GTC 2017), slides 30-40, for one activation tensor:

1. Build a histogram of ``|x|`` with 2048 bins over the calibration set
   (kiln: :meth:`kiln.calib.histogram.TensorHistogram.analysis`).
2. For every candidate ``i`` from 128 to 2048 (bins, inclusive at 2048, as
   NVIDIA's pytorch-quantization iterates ``range(128, len(bin_edges))``;
   the slides write ``range(128, 2048)``):

   * the reference distribution ``P = hist[:i]``, with the outliers
     ``sum(hist[i:])`` added to its last bin ``P[i-1]``;
   * the candidate ``Q``: the bins ``hist[:i]`` (without the outliers:
     "quantize [bin[0], ..., bin[i-1]] into 128 levels") merged into 128
     levels of equal width, bin ``j`` into level ``j * 128 // i`` (each level
     holds ``i / 128`` bins, rounded), then expanded back to ``i`` bins: each
     level's count is spread evenly over the bins of the level where ``P`` is
     non-zero (bins where ``P`` is zero get zero);
   * both smoothed so no entry is zero: zero entries get ``eps = 1e-4``, the
     others lose ``eps * zeros / nonzeros`` (the sum is unchanged), as in
     MXNet's and onnxruntime's ports; then normalized;
   * ``divergence[i] = KL(P || Q) = sum P log(P / Q)``.  A candidate whose
     ``Q`` is empty, or whose smoothed entries are not all positive, gets
     ``inf``.

3. ``m = argmin divergence`` (the first minimum), and the threshold is
   ``(m + 0.5) * bin_width`` (the slides' formula).  The int8 scale is
   ``threshold / 127``.

Two choices the slides leave open, made as NVIDIA's own calibration library
(pytorch-quantization, ``_compute_amax_entropy``) makes them:

* Equal-width levels.  MXNet's and onnxruntime's ports merge ``i // 128``
  bins per level and put the remainder into the last level, so for
  ``i < 256`` the first 127 levels are single bins (Q equals P there) and the
  last level spans up to 128 bins: the divergence then prefers ``i`` just
  under 256 whatever the data (on PP-OCR's ReLU outputs it clipped at 13% of
  ``max|x|``, and the cls model fell from 32 to 7 dB SQNR).
* The zero bin is set to its neighbour's count (``bins[0] = bins[1]``)
  before the search.  Exact zeros (20-60% of a ReLU output) are represented
  exactly at any scale, but as one huge bin they dominate the divergence and
  push the threshold down.  :func:`kl_threshold` does this unless
  ``neutral_zero=False``.

With both ports' choices, PP-OCR's ReLU outputs were clipped at 13-20% of
``max|x|`` and the quantized cls model's output SQNR was 7 dB; with these it
is 26 dB (64 synthetic text lines, ``benchmarks/bench_calib.py``).

The loop is :func:`kiln.kernels.kl_divergences` (Cython, GIL released; a
numpy twin where the extension is not built).  It costs ``O(candidates x
levels)`` additions per tensor, not ``O(2048**2)``, and one ``log`` per
distinct level range rather than per level and candidate (prefix sums and a
per-histogram table of level terms; see the kernel's docstring): about
0.65 ms, where the numpy twin takes 90 ms and onnxruntime's Python loop
0.6 s (``benchmarks/bench_kernels.py``).
``tests/calib/test_kl.py`` checks it against a slow, literal transcription
of the steps above on known distributions.
"""

from __future__ import annotations

import numpy as np
from kiln import kernels

NUM_LEVELS = 128
"""Quantization levels of the candidate distribution (int8's positive half)."""

START_BIN = 128
"""The first candidate bin."""


def kl_threshold(hist: np.ndarray, bin_width: float, *, num_levels: int = NUM_LEVELS,
                 start: int = START_BIN, neutral_zero: bool = True) -> tuple[float, np.ndarray]:
    """The entropy threshold of a histogram of ``|x|``, and the divergence curve.

    Args:
        hist: bin counts (2048 of them for TensorRT's setting).
        bin_width: the width of one bin.
        num_levels: quantization levels (128).
        start: the first candidate bin (128).
        neutral_zero: replace the zero bin's count by bin 1's (see above).

    Returns:
        ``((m + 0.5) * bin_width, divergences)``; a histogram with fewer than
        ``start`` bins, or with every candidate infinite, gives the top of
        the last non-empty bin.
    """
    h = np.array(hist, dtype=np.float64)
    if neutral_zero and h.size > 1:
        h[0] = h[1]
    div = kernels.kl_divergences(h, num_levels, start) if h.size >= start else np.zeros(0)
    if div.size == 0 or not np.isfinite(div).any():
        nz = np.flatnonzero(h)
        return (float(nz[-1] + 1) * bin_width if nz.size else 0.0), div
    m = int(np.argmin(div)) + start
    return (m + 0.5) * bin_width, div
