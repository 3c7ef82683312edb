"""Accuracy metrics for quantized models."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np


def sqnr_db(reference: np.ndarray | Iterable[np.ndarray], test: np.ndarray | Iterable[np.ndarray]) -> float:
    """Signal-to-quantization-noise ratio ``10 log10(sum ref^2 / sum (ref - test)^2)`` in dB.

    Takes one pair of arrays or two sequences of arrays (summed over all of
    them); ``inf`` when they are equal.
    """
    refs = [reference] if isinstance(reference, np.ndarray) else list(reference)
    tests = [test] if isinstance(test, np.ndarray) else list(test)
    if len(refs) != len(tests):
        raise ValueError(f"{len(refs)} reference arrays but {len(tests)} test arrays")
    signal = noise = 0.0
    for r, t in zip(refs, tests):
        r64 = np.asarray(r, dtype=np.float64)
        t64 = np.asarray(t, dtype=np.float64)
        signal += float(np.sum(r64 * r64))
        noise += float(np.sum((r64 - t64) ** 2))
    return power_ratio_db(signal, noise)


def power_ratio_db(signal: float, noise: float) -> float:
    """``10 log10(signal / noise)``: ``inf`` without noise, ``-inf`` without signal."""
    if noise <= 0:
        return math.inf
    if signal <= 0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)
